//! Reading: one content reader from a file's [`Content`] to its bytes,
//! over a [`BlobReader`].
//!
//! [`Reader`] is the seam the filesystem backends and `ocifs cat` read
//! through; [`ContentReader`] is its implementation, once for every kind
//! of content: a whole blob is a range of the blob; a zip entry is its
//! local header and data, inflated and CRC-checked; a file of a tar stream
//! (a package's or an image layer's) is decoded from the seek point before
//! it, fetching only the compressed bytes from there to the first point
//! past the range. Decoded entries and spans are kept in a memory LRU;
//! decoders of single-frame zstd streams are parked between reads; a zstd
//! image layer's decoded copy is kept in the cache given with
//! [`ContentReader::keeping_copies_in`].
//!
//! Every byte comes through the blob reader, so `--verify` holds as for
//! any blob.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use lru::LruCache;

use crate::blob::{BlobReader, Stats};
use crate::cache::ChunkCache;
use crate::codec::input::{BlobRead, Bounded, reader_error, with_stream};
use crate::codec::zip::{self, DECODE_WHOLE_MAX};
use crate::codec::zstd::Zstd;
use crate::codec::{OVERRUN, Tee, decoded_limit, decoder, gzip, zstd};
use crate::content::{
    ChunkedFile, ChunkedLayer, Compression, Content, FileChunk, FramePoint, SeekPoints, TarFile,
    TarStream, ZipMethod,
};
use crate::digest::Digest;
use crate::error::{Error, Result, cause};
use crate::manifest::Descriptor;

/// Reads file contents.
#[async_trait]
pub trait Reader: Send + Sync + fmt::Debug {
    /// Exactly `min(len, size - offset)` bytes of `content` from `offset`,
    /// checked as the blob reader's [`crate::Verify`] mode says.
    async fn read(&self, content: &Content, offset: u64, len: u64) -> Result<Bytes>;

    /// The counters so far.
    fn stats(&self) -> Stats;

    /// The bytes that arrived from each host so far ([`crate::Source::wire`]).
    fn wire(&self) -> Vec<crate::HostBytes> {
        Vec::new()
    }
}

/// Memory for decoded entries and spans.
pub const DECODED_BUDGET: u64 = 256 << 20;

type Key = (Digest, u64);

/// The one [`Reader`]: reads every kind of [`Content`] through a
/// [`BlobReader`], keeping decoded entries in memory.
pub struct ContentReader {
    blobs: Arc<dyn BlobReader>,
    /// Where zstd layers' decoded copies are kept, if anywhere.
    copies: Option<ChunkCache>,
    decoded: Mutex<Decoded>,
    /// One decode per entry at a time: later readers wait and find it done.
    decoding: OnePerKey<Key>,
    /// Decoders of tar streams parked between reads.
    cursors: Cursors,
    /// See [`Stats::decoded_bytes`].
    decoded_bytes: std::sync::atomic::AtomicU64,
}

struct Decoded {
    entries: LruCache<Key, Bytes>,
    used: u64,
    budget: u64,
}

impl fmt::Debug for ContentReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, used) = self
            .decoded
            .lock()
            .map_or((0, 0), |d| (d.entries.len(), d.used));
        f.debug_struct("ContentReader")
            .field("blobs", &self.blobs)
            .field("decoded_entries", &n)
            .field("decoded_bytes", &used)
            .finish()
    }
}

impl ContentReader {
    /// A reader of contents whose blobs `blobs` reads.
    pub fn new(blobs: Arc<dyn BlobReader>) -> Self {
        ContentReader {
            blobs,
            copies: None,
            decoded: Mutex::new(Decoded {
                entries: LruCache::unbounded(),
                used: 0,
                budget: DECODED_BUDGET,
            }),
            decoding: OnePerKey::default(),
            cursors: Cursors::default(),
            decoded_bytes: Default::default(),
        }
    }

    /// Counts `n` bytes decoded.
    fn count_decoded(&self, n: u64) {
        self.decoded_bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// A reader of contents over `cache`, keeping zstd layers' decoded
    /// copies in it too.
    pub fn over_cache(cache: &ChunkCache) -> Self {
        Self::new(Arc::new(cache.clone())).keeping_copies_in(cache.clone())
    }

    /// Keeps the decoded copy of a zstd image layer (named by its diff ID,
    /// [`TarStream::decoded`]) in `cache`, made the first time one of its
    /// files is read: most zstd layers are a single frame, which can only
    /// be decoded from its start.
    pub fn keeping_copies_in(mut self, cache: ChunkCache) -> Self {
        self.copies = cache.store().is_some().then_some(cache);
        self
    }

    /// Where chunked layers' decoded chunks are kept: the copies' cache,
    /// if its chunks come over a network (a local layout's are at hand).
    fn kept_chunks(&self) -> Option<ChunkCache> {
        self.copies
            .as_ref()
            .filter(|c| c.source().is_remote())
            .cloned()
    }

    /// The blob reader below.
    pub fn blobs(&self) -> &Arc<dyn BlobReader> {
        &self.blobs
    }

    fn cached(&self, key: &Key) -> Option<Bytes> {
        self.decoded
            .lock()
            .ok()
            .and_then(|mut d| d.entries.get(key).cloned())
    }

    /// The decoded entry `key`, decoding it with `decode` if no one has.
    async fn whole<F, Fut>(&self, key: Key, decode: F) -> Result<Bytes>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        if let Some(b) = self.cached(&key) {
            return Ok(b);
        }
        let _turn = self.decoding.turn(&key).await;
        if let Some(b) = self.cached(&key) {
            return Ok(b);
        }
        let result = decode().await;
        if let Ok(bytes) = &result
            && let Ok(mut d) = self.decoded.lock()
        {
            let n = bytes.len() as u64;
            if n <= d.budget {
                if let Some(old) = d.entries.put(key.clone(), bytes.clone()) {
                    d.used -= old.len() as u64;
                }
                d.used += n;
                while d.used > d.budget {
                    match d.entries.pop_lru() {
                        Some((_, old)) => d.used -= old.len() as u64,
                        None => break,
                    }
                }
            }
        }
        result
    }

    /// Bytes `offset..offset + len` of zip entry `e` (inside it).
    async fn read_zip(&self, e: &crate::content::ZipEntry, offset: u64, len: u64) -> Result<Bytes> {
        let blobs = &self.blobs;
        if e.method() == ZipMethod::Stored && e.size() > DECODE_WHOLE_MAX {
            return zip::read_stored_range(blobs, e, offset, len).await;
        }
        if e.size() > DECODE_WHOLE_MAX {
            return zip::read_deflated_range(blobs, e, offset, len).await;
        }
        let key = (e.blob().digest.clone(), e.header_offset());
        let whole = self
            .whole(key, || async { zip::read_whole(blobs, e).await })
            .await?;
        Ok(whole.slice(offset as usize..(offset + len) as usize))
    }
}

#[async_trait]
impl Reader for ContentReader {
    async fn read(&self, content: &Content, offset: u64, len: u64) -> Result<Bytes> {
        let size = content.size();
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        match content {
            Content::Blob(d) => self.blobs.read_blob(d, offset, end - offset).await,
            Content::Zip(e) => self.read_zip(e, offset, end - offset).await,
            Content::Tar(f) => self.read_tar(f, offset, end - offset).await,
            Content::Chunked(f) => self.read_chunked(f, offset, end - offset).await,
        }
    }

    fn wire(&self) -> Vec<crate::HostBytes> {
        self.blobs.wire()
    }

    fn stats(&self) -> Stats {
        Stats {
            decoded_bytes: self
                .decoded_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            ..self.blobs.stats()
        }
    }
}

/// Spans between seek points up to this size are decoded whole and kept
/// (for reads of files too large to keep whole).
const SPAN_MAX: u64 = 16 << 20;
/// Marks a decoded span's key apart from a decoded file's (tar data
/// offsets are multiples of 512, far below this bit).
const SPAN_KEY: u64 = 1 << 63;

impl ContentReader {
    /// Bytes `offset..offset + len` of `f` (inside it: the caller clamps).
    /// Files of compressed streams up to [`DECODE_WHOLE_MAX`] are decoded
    /// whole and kept; larger ones are read span by span.
    async fn read_tar(&self, f: &TarFile, offset: u64, len: u64) -> Result<Bytes> {
        let Some(map) = &f.sparse else {
            return self.read_stored(f, offset, len).await;
        };
        // A sparse file: its stored ranges are a file of their own in the
        // stream; holes are zeros, and a read of a hole reads nothing.
        let stored = TarFile {
            stream: f.stream.clone(),
            offset: f.offset,
            size: map.stored_len(),
            sparse: None,
        };
        let end = offset + len;
        let mut pieces = map.within(offset, end).peekable();
        if let Some(x) = pieces.peek()
            && x.offset == offset
            && x.len == len
        {
            return self.read_stored(&stored, x.stored, x.len).await;
        }
        let mut out = vec![0u8; len as usize];
        for x in pieces {
            let bytes = self.read_stored(&stored, x.stored, x.len).await?;
            if bytes.len() as u64 != x.len {
                return Err(Error::ShortRead {
                    digest: f.stream.blob.digest.to_string(),
                    offset: f.offset + x.stored,
                    expected: x.len,
                    got: bytes.len() as u64,
                });
            }
            let at = (x.offset - offset) as usize;
            out[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(Bytes::from(out))
    }

    /// Bytes `offset..offset + len` of `f`'s data as the stream stores it.
    async fn read_stored(&self, f: &TarFile, offset: u64, len: u64) -> Result<Bytes> {
        let stream = &f.stream;
        if stream.compression == Compression::None {
            return self
                .blobs
                .read_blob(&stream.blob, f.offset + offset, len)
                .await;
        }
        if stream.compression == Compression::Zstd {
            if let Some(bytes) = self.read_decoded(stream, f.offset + offset, len).await {
                return Ok(bytes);
            }
            // Frames are few (often one): a decoder carries on from where the
            // last read left it.
            if f.size <= DECODE_WHOLE_MAX {
                let key = (stream.blob.digest.clone(), f.offset);
                let whole = self
                    .whole(key, || self.read_on(stream, f.offset, f.size))
                    .await?;
                let end = (offset + len).min(whole.len() as u64);
                return Ok(whole.slice(offset as usize..end as usize));
            }
            return self.read_on(stream, f.offset + offset, len).await;
        }
        // gzip: a decoded span between two seek points serves every small file
        // in it.
        self.read_spans(stream, f.offset + offset, len).await
    }
}

/// Marks a decoded chunk's key apart from a tar file's and a span's.
const CHUNK_KEY: u64 = 1 << 62;

impl ContentReader {
    /// Bytes `offset..offset + len` of a chunked layer's file (inside it):
    /// each chunk it covers fetched alone, decoded, and checked against its
    /// digest before a byte of it is served.
    async fn read_chunked(&self, f: &ChunkedFile, offset: u64, len: u64) -> Result<Bytes> {
        let end = offset + len;
        let first = f.chunks.partition_point(|c| c.offset + c.size <= offset);
        let mut out = BytesMut::with_capacity(len as usize);
        for c in f.chunks[first..].iter().take_while(|c| c.offset < end) {
            let bytes = self.chunk(&f.layer, c).await?;
            let a = (offset.max(c.offset) - c.offset) as usize;
            let b = ((end.min(c.offset + c.size) - c.offset) as usize).min(bytes.len());
            if out.is_empty() && c.offset <= offset && c.offset + c.size >= end {
                return Ok(bytes.slice(a..b));
            }
            out.extend_from_slice(&bytes[a..b]);
        }
        if out.len() as u64 != len {
            return Err(Error::ShortRead {
                digest: f.layer.blob.digest.to_string(),
                offset,
                expected: len,
                got: out.len() as u64,
            });
        }
        Ok(out.freeze())
    }

    /// Chunk `c` of `layer`, decoded and checked (kept in the decoded
    /// memory while there is room).
    async fn chunk(&self, layer: &Arc<ChunkedLayer>, c: &FileChunk) -> Result<Bytes> {
        let decode = || async {
            // The decoded chunk is named by its digest: kept, it serves
            // every layer and image whose TOC names it.
            let kept = self.kept_chunks().map(|cache| (cache, chunk_digest(c)));
            if let Some((cache, digest)) = &kept
                && let Some(bytes) = cache.read_kept(digest, Some(c.size), c.size).await
            {
                return Ok(bytes);
            }
            let compressed = self
                .blobs
                .read_piece(&layer.blob, c.start, c.end - c.start)
                .await?;
            let (layer, c) = (layer.clone(), *c);
            let bytes = tokio::task::spawn_blocking(move || {
                let bytes = decode_chunk(&layer, &c, &compressed)?;
                // Checked, so kept (hashed again as it is stored).
                if let Some((cache, digest)) = kept
                    && let Err(e) = cache.keep(&digest, &bytes)
                {
                    tracing::debug!(%digest, error = %e, "not keeping a decoded chunk");
                }
                Ok::<_, Error>(bytes)
            })
            .await
            .map_err(|e| Error::io("decoding a chunk", io::Error::other(e.to_string())))??;
            self.decoded_bytes
                .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(bytes)
        };
        if c.inner == 0 && c.start < CHUNK_KEY {
            self.whole((layer.blob.digest.clone(), CHUNK_KEY | c.start), decode)
                .await
        } else {
            decode().await
        }
    }
}

/// The digest of chunk `c` decoded.
fn chunk_digest(c: &FileChunk) -> Digest {
    Digest::sha256(c.digest)
}

/// Decodes chunk `c` of `layer` from its compressed bytes and checks it.
fn decode_chunk(layer: &ChunkedLayer, c: &FileChunk, compressed: &[u8]) -> Result<Bytes> {
    use sha2::Digest as _;
    let what = || {
        format!(
            "the chunk at {} of layer {} ({} bytes decoded)",
            c.start, layer.blob.digest, c.size
        )
    };
    let mut d = decoder(compressed, layer.compression, c.inner + c.size);
    let skipped = io::copy(&mut (&mut d).take(c.inner), &mut io::sink());
    let mut out = Vec::with_capacity(c.size.min(DECODE_WHOLE_MAX) as usize);
    let read = skipped.and_then(|_| (&mut d).take(c.size).read_to_end(&mut out));
    if let Err(e) = read {
        return Err(Error::Malformed {
            what: what(),
            detail: format!("it does not decode: {e}"),
            source: None,
        });
    }
    if out.len() as u64 != c.size {
        return Err(Error::Malformed {
            what: what(),
            detail: format!("it decodes to {} bytes", out.len()),
            source: None,
        });
    }
    let actual: [u8; 32] = sha2::Sha256::digest(&out).into();
    if actual != c.digest {
        return Err(Error::digest_mismatch(
            what(),
            format!("sha256:{}", hex::encode(c.digest)),
            format!("sha256:{}", hex::encode(actual)),
        ));
    }
    Ok(Bytes::from(out))
}

/// One holder at a time per key: who comes while a key is held waits for
/// its turn (and then finds the work done). A key is forgotten when its
/// last holder or waiter leaves.
struct OnePerKey<K> {
    locks: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for OnePerKey<K> {
    fn default() -> Self {
        OnePerKey {
            locks: Mutex::new(HashMap::new()),
        }
    }
}

/// A turn of [`OnePerKey`], held until dropped.
struct Turn<'a, K: Eq + std::hash::Hash + Clone> {
    keys: &'a OnePerKey<K>,
    key: K,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<K: Eq + std::hash::Hash + Clone> OnePerKey<K> {
    /// Waits for `key`'s turn.
    async fn turn(&self, key: &K) -> Turn<'_, K> {
        let lock = self
            .locks
            .lock()
            .map(|mut m| m.entry(key.clone()).or_default().clone())
            .unwrap_or_default();
        let guard = lock.clone().lock_owned().await;
        Turn {
            keys: self,
            key: key.clone(),
            lock,
            guard: Some(guard),
        }
    }
}

impl<K: Eq + std::hash::Hash + Clone> Drop for Turn<'_, K> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if let Ok(mut m) = self.keys.locks.lock()
            // The map's and this turn's: no one else waits.
            && Arc::strong_count(&self.lock) == 2
            && m.get(&self.key).is_some_and(|l| Arc::ptr_eq(l, &self.lock))
        {
            m.remove(&self.key);
        }
    }
}

/// Decoders parked where their last read ended, per layer: a read at or a
/// little past one carries on decoding rather than starting over from a
/// seek point (a single-frame zstd layer has only one, at its start).
#[derive(Default)]
struct Cursors {
    parked: Mutex<HashMap<Digest, Vec<Cursor>>>,
    /// One decoded copy of a layer made at a time.
    making: OnePerKey<Digest>,
    /// Layers whose decoded copy could not be made (a stream that does not
    /// decode, a full disk): not tried again by this reader, which decodes
    /// them per read from their seek points.
    failed: Mutex<std::collections::HashSet<Digest>>,
    /// The decoded copy this reader found recorded for each layer: a read
    /// then checks only that the copy is still there.
    proven: Mutex<HashMap<Digest, Descriptor>>,
}

impl fmt::Debug for Cursors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self
            .parked
            .lock()
            .map_or(0, |p| p.values().map(Vec::len).sum());
        f.debug_struct("Cursors").field("parked", &n).finish()
    }
}

struct Cursor {
    /// Where in the uncompressed stream the next byte comes from.
    pos: u64,
    decoder: Box<dyn Read + Send>,
}

/// Decoders kept per layer.
const CURSORS_PER_LAYER: usize = 4;
/// How far a parked decoder is run forward rather than a new one started
/// at a seek point.
const CURSOR_REACH: u64 = 512 << 20;

impl Cursors {
    /// The parked decoder of `digest` best placed for a read at `at`.
    fn take(&self, digest: &Digest, at: u64, point: u64) -> Option<Cursor> {
        let mut parked = self.parked.lock().ok()?;
        let list = parked.get_mut(digest)?;
        let best = list
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pos <= at && at - c.pos <= CURSOR_REACH && c.pos >= point)
            .max_by_key(|(_, c)| c.pos)?
            .0;
        Some(list.swap_remove(best))
    }

    fn park(&self, digest: Digest, cursor: Cursor) {
        if let Ok(mut parked) = self.parked.lock() {
            let list = parked.entry(digest).or_default();
            if list.len() >= CURSORS_PER_LAYER {
                // The one furthest behind goes.
                if let Some((i, _)) = list.iter().enumerate().min_by_key(|(_, c)| c.pos) {
                    list.swap_remove(i);
                }
            }
            list.push(cursor);
        }
    }
}

impl ContentReader {
    /// Bytes `at..at + len` of a zstd stream, from a parked decoder or one
    /// started at the last frame at or before `at`.
    async fn read_on(&self, stream: &TarStream, at: u64, len: u64) -> Result<Bytes> {
        let SeekPoints::Zstd(points) = &stream.points else {
            return self.decode(stream, at, len).await;
        };
        let point = zstd::point_before(points, at)
            .copied()
            .unwrap_or(FramePoint {
                compressed: 0,
                uncompressed: 0,
            });
        let digest = stream.blob.digest.clone();
        let parked = self.cursors.take(&digest, at, point.uncompressed);
        let blob = stream.blob.clone();
        let cursor = parked.unwrap_or_else(|| {
            // A megabyte at a time, as decoding asks (no read-ahead: the
            // cache's own reads ahead for sequential reading).
            let input = BlobRead::new(
                self.blobs.clone(),
                Arc::new(blob.clone()),
                point.compressed..blob.size,
                Some(1 << 20),
            );
            Cursor {
                pos: point.uncompressed,
                decoder: Box::new(Bounded::new(
                    Zstd::new(input),
                    decoded_limit(stream.uncompressed_size).saturating_sub(point.uncompressed),
                    OVERRUN,
                )),
            }
        });
        let from = cursor.pos;
        let done = tokio::task::spawn_blocking(move || -> Result<(Bytes, Cursor)> {
            let mut cursor = cursor;
            let fail = |e: io::Error| {
                // The blob reader's own error (network, integrity) if it is one.
                reader_error(&e).unwrap_or_else(|| Error::Layer {
                    layer: blob.digest.to_string(),
                    entry: None,
                    reason: format!("reading at offset {at} of the uncompressed stream: {e}"),
                    source: cause(e),
                })
            };
            let skip = at - cursor.pos;
            let skipped =
                io::copy(&mut (&mut cursor.decoder).take(skip), &mut io::sink()).map_err(fail)?;
            let mut out = Vec::with_capacity(len.min(DECODE_WHOLE_MAX) as usize);
            (&mut cursor.decoder)
                .take(len)
                .read_to_end(&mut out)
                .map_err(fail)?;
            if skipped < skip || (out.len() as u64) < len {
                return Err(Error::Layer {
                    layer: blob.digest.to_string(),
                    entry: None,
                    reason: format!(
                        "the stream ends at {}, before offset {}",
                        cursor.pos + skipped + out.len() as u64,
                        at + len
                    ),
                    source: None,
                });
            }
            cursor.pos = at + len;
            Ok((Bytes::from(out), cursor))
        })
        .await
        .map_err(|e| Error::io("decoding a layer", io::Error::other(e)))?;
        let (bytes, cursor) = done?;
        self.count_decoded(at + len - from);
        self.cursors.park(digest, cursor);
        Ok(bytes)
    }

    /// Bytes `at..at + len` of a gzip stream, through decoded spans kept
    /// in memory where spans are small enough.
    async fn read_spans(&self, stream: &TarStream, at: u64, len: u64) -> Result<Bytes> {
        let SeekPoints::Gzip(points) = &stream.points else {
            return self.decode(stream, at, len).await;
        };
        let end = at + len;
        let mut out = BytesMut::with_capacity(len as usize);
        let mut pos = at;
        while pos < end {
            let i = points.partition_point(|p| p.uncompressed <= pos);
            let start = i.checked_sub(1).map_or(0, |i| points[i].uncompressed);
            let stop = points
                .get(i)
                .map_or(stream.uncompressed_size, |p| p.uncompressed);
            if stop <= pos || stop - start > SPAN_MAX {
                out.extend_from_slice(&self.decode(stream, pos, end - pos).await?);
                break;
            }
            let key = (stream.blob.digest.clone(), start | SPAN_KEY);
            let span = self
                .whole(key, || self.decode(stream, start, stop - start))
                .await?;
            let from = (pos - start) as usize;
            let to = ((end.min(stop)) - start) as usize;
            out.extend_from_slice(&span[from..to.min(span.len())]);
            pos = stop;
        }
        Ok(out.freeze())
    }

    /// Bytes `at..at + len` of the uncompressed `stream`, decoded from the
    /// last seek point at or before `at`.
    async fn decode(&self, stream: &TarStream, at: u64, len: u64) -> Result<Bytes> {
        let from = match &stream.points {
            SeekPoints::Gzip(points) => gzip::point_before(points, at).map(|p| p.uncompressed),
            SeekPoints::Zstd(points) => zstd::point_before(points, at).map(|p| p.uncompressed),
            SeekPoints::None => None,
        };
        let bytes = self.decode_from_point(stream, at, len).await?;
        self.count_decoded(at + bytes.len() as u64 - from.unwrap_or(0));
        Ok(bytes)
    }

    /// [`ContentReader::decode`], uncounted.
    async fn decode_from_point(&self, stream: &TarStream, at: u64, len: u64) -> Result<Bytes> {
        let blob = stream.blob.clone();
        let limit = decoded_limit(stream.uncompressed_size);
        let digest = blob.digest.to_string();
        let fail = move |e: io::Error| Error::Layer {
            layer: digest.clone(),
            entry: None,
            reason: format!("reading at offset {at} of the uncompressed stream: {e}"),
            source: cause(e),
        };
        let capacity = len.min(DECODE_WHOLE_MAX) as usize;
        let blobs = &self.blobs;
        match &stream.points {
            SeekPoints::Gzip(points) if let Some(p) = gzip::point_before(points, at) => {
                let p = p.clone();
                let end = gzip::compressed_end(points, at + len, blob.size);
                with_stream(blobs, &blob, p.input_start()..end, move |r| {
                    let mut out = Vec::with_capacity(capacity);
                    gzip::inflate_from(&p, r, at - p.uncompressed, &mut out, len, limit)
                        .map_err(fail)?;
                    Ok(Bytes::from(out))
                })
                .await
            }
            SeekPoints::Zstd(points) if let Some(p) = zstd::point_before(points, at) => {
                let p = *p;
                let end = zstd::compressed_end(points, at + len, blob.size);
                with_stream(blobs, &blob, p.compressed..end, move |r| {
                    let mut out = Vec::with_capacity(capacity);
                    zstd::decode_from(&p, r, at - p.uncompressed, &mut out, len, limit)
                        .map_err(fail)?;
                    Ok(Bytes::from(out))
                })
                .await
            }
            _ => {
                // No seek points: from the start of the stream.
                let compression = stream.compression;
                with_stream(blobs, &blob, 0..blob.size, move |r| {
                    let mut d = decoder(r, compression, limit);
                    let skipped =
                        io::copy(&mut (&mut d).take(at), &mut io::sink()).map_err(&fail)?;
                    let mut out = Vec::with_capacity(capacity);
                    (&mut d).take(len).read_to_end(&mut out).map_err(&fail)?;
                    if skipped < at || (out.len() as u64) < len {
                        return Err(fail(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the stream ends at {}", skipped + out.len() as u64),
                        )));
                    }
                    Ok(Bytes::from(out))
                })
                .await
            }
        }
    }

    /// Bytes `at..at + len` of a zstd layer's stream from its decoded copy
    /// in the cache, making the copy first if it is not there (once per
    /// layer at a time); `None` where there is no copy to be had (no cache
    /// to keep it in, a failure, which is logged): the caller decodes.
    async fn read_decoded(&self, stream: &TarStream, at: u64, len: u64) -> Option<Bytes> {
        if !stream.keep_decoded {
            return None;
        }
        let cache = self.copies.as_ref()?;
        let store = cache.store()?.clone();
        let layer = &stream.blob.digest;
        let failed = || self.cursors.failed.lock().is_ok_and(|f| f.contains(layer));
        // The copy is the layer's only where decoding the layer was seen to
        // give it: the record names it (read once per reader).
        let proven = |s: &crate::cache::DiskStore| -> Option<Descriptor> {
            let known = self
                .cursors
                .proven
                .lock()
                .ok()
                .and_then(|p| p.get(layer).cloned());
            let copy = match known {
                Some(d) => d,
                None => {
                    let (digest, size) = s.decoded_of(layer)?;
                    let d = decoded_descriptor(digest, size.unwrap_or(stream.uncompressed_size));
                    if let Ok(mut p) = self.cursors.proven.lock() {
                        p.insert(layer.clone(), d.clone());
                    }
                    d
                }
            };
            s.has_complete(&copy.digest).then_some(copy)
        };
        let copy = match proven(&store) {
            Some(copy) => copy,
            None => {
                if failed() {
                    return None;
                }
                let _turn = self.cursors.making.turn(layer).await;
                if failed() {
                    return None;
                }
                if let Ok(mut p) = self.cursors.proven.lock() {
                    p.remove(layer);
                }
                match proven(&store) {
                    Some(copy) => copy,
                    None => match materialize(cache, stream).await {
                        Ok(copy) => {
                            self.count_decoded(copy.size);
                            if let Ok(mut p) = self.cursors.proven.lock() {
                                p.insert(layer.clone(), copy.clone());
                            }
                            copy
                        }
                        Err(e) => {
                            // Once: a layer that cannot be decoded into the
                            // cache is decoded per read, not streamed whole
                            // again for each.
                            if let Ok(mut f) = self.cursors.failed.lock() {
                                f.insert(layer.clone());
                            }
                            tracing::warn!(layer = %layer, error = %e, "decoding the layer into the cache failed; decoding it per read from now on");
                            return None;
                        }
                    },
                }
            }
        };
        match cache.read_blob(&copy, at, len).await {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::debug!(layer = %layer, error = %e, "the decoded layer is gone");
                None
            }
        }
    }
}

/// The descriptor of a layer's decoded copy (a plain tar).
pub(crate) fn decoded_descriptor(digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest,
        size,
        annotations: Default::default(),
        platform: None,
        artifact_type: None,
        urls: Vec::new(),
    }
}

/// Streams a zstd layer once (verified) and keeps its decoded stream in
/// the cache under its own digest, recorded as the layer's; the copy.
async fn materialize(cache: &ChunkCache, stream: &TarStream) -> Result<Descriptor> {
    let store = cache
        .store()
        .ok_or_else(|| Error::io("decoding a layer", io::Error::other("no cache")))?
        .clone();
    let (tmp, file) = store.temp_file()?;
    let blob = stream.blob.clone();
    let chunk_size = cache.chunk_size();
    let limit = decoded_limit(stream.uncompressed_size);
    let scanned = cache
        .scan(&stream.blob, move |r| {
            let d = Bounded::new(Zstd::new(r), limit, OVERRUN);
            let mut tee = Tee::new(d, file, chunk_size);
            io::copy(&mut tee, &mut io::sink())
                .and_then(|_| tee.finish())
                .map_err(|e| Error::Layer {
                    layer: blob.digest.to_string(),
                    entry: None,
                    reason: format!("unreadable stream: {e}"),
                    source: cause(e),
                })
        })
        .await;
    match scanned {
        Ok(s) => {
            let d = s.value;
            let kept = cache
                .adopt(&tmp, &d.digest, d.len, Some((d.chunk_size, d.table)))
                .and_then(|()| store.put_decoded(&stream.blob.digest, &d.digest, d.len));
            if kept.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            kept.map(|()| decoded_descriptor(d.digest, d.len))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

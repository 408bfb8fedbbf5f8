//! Reading a file of an image: a range of a layer's uncompressed stream,
//! decoded from the nearest seek point before it, fetching only the
//! compressed bytes from that point to the first point past the range.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::{ImageLayer, LayerFile, SeekPoints, gzip, zstd};
use crate::archive::{
    Bounded, Compression, DECODE_WHOLE_MAX, EntryReader, MAX_RATIO, Zstd, decoder, with_stream,
};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reader::Reader;
use crate::view::Content;

/// Spans between seek points up to this size are decoded whole and kept
/// (for reads of files too large to keep whole).
const SPAN_MAX: u64 = 16 << 20;
/// Marks a decoded span's key apart from a decoded file's (tar data
/// offsets are multiples of 512, far below this bit).
const SPAN_KEY: u64 = 1 << 63;

/// Bytes `offset..offset + len` of `f` (inside it: the caller clamps).
/// Files of compressed layers up to [`DECODE_WHOLE_MAX`] are decoded whole
/// and kept by `entries`; larger ones are read span by span.
pub(crate) async fn read(
    entries: &EntryReader,
    blobs: &dyn Reader,
    f: &LayerFile,
    offset: u64,
    len: u64,
) -> Result<Bytes> {
    let layer = &f.layer;
    if layer.compression == Compression::None {
        let blob = Content::Blob(std::sync::Arc::new(layer.blob.clone()));
        return blobs.read(&blob, f.offset + offset, len).await;
    }
    if layer.compression == Compression::Zstd {
        if let Some(bytes) = read_decoded(entries, blobs, layer, f.offset + offset, len).await {
            return Ok(bytes);
        }
        // Frames are few (often one): a decoder carries on from where the
        // last read left it.
        if f.size <= DECODE_WHOLE_MAX {
            let key = (layer.blob.digest.clone(), f.offset);
            let whole = entries
                .whole(key, || read_on(entries, blobs, &f.layer, f.offset, f.size))
                .await?;
            let end = (offset + len).min(whole.len() as u64);
            return Ok(whole.slice(offset as usize..end as usize));
        }
        return read_on(entries, blobs, &f.layer, f.offset + offset, len).await;
    }
    // gzip: a decoded span between two seek points serves every small file
    // in it.
    read_spans(entries, blobs, layer, f.offset + offset, len).await
}

/// Decoders parked where their last read ended, per layer: a read at or a
/// little past one carries on decoding rather than starting over from a
/// seek point (a single-frame zstd layer has only one, at its start).
#[derive(Default)]
pub(crate) struct Cursors {
    parked: Mutex<HashMap<Digest, Vec<Cursor>>>,
    making: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
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

    /// The lock held while a layer's decoded copy is made.
    fn decoding(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        self.making
            .lock()
            .map(|mut m| m.entry(digest.clone()).or_default().clone())
            .unwrap_or_default()
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

/// A blob read through a reader from a blocking thread, piece by piece.
struct RangeRead {
    reader: Arc<dyn Reader>,
    content: Content,
    pos: u64,
    size: u64,
    buf: Bytes,
    handle: tokio::runtime::Handle,
}

impl Read for RangeRead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf.is_empty() {
            if self.pos >= self.size || out.is_empty() {
                return Ok(0);
            }
            let read = self.reader.read(&self.content, self.pos, 1 << 20);
            self.buf = self.handle.block_on(read).map_err(io::Error::other)?;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = self.buf.len().min(out.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Bytes `at..at + len` of a zstd layer's stream, from a parked decoder
/// or one started at the last frame at or before `at`.
async fn read_on(
    entries: &EntryReader,
    blobs: &dyn Reader,
    layer: &Arc<ImageLayer>,
    at: u64,
    len: u64,
) -> Result<Bytes> {
    let (Some(shared), SeekPoints::Zstd(points)) = (blobs.shared(), &layer.points) else {
        return decode(blobs, layer, at, len).await;
    };
    let point = zstd::point_before(points, at)
        .copied()
        .unwrap_or(super::FramePoint {
            compressed: 0,
            uncompressed: 0,
        });
    let digest = layer.blob.digest.clone();
    let parked = entries.cursors.take(&digest, at, point.uncompressed);
    let blob = layer.blob.clone();
    let handle = tokio::runtime::Handle::current();
    let done = tokio::task::spawn_blocking(move || -> Result<(Bytes, Cursor)> {
        let limit = blob.size.saturating_mul(MAX_RATIO).max(1 << 20);
        let mut cursor = parked.unwrap_or_else(|| Cursor {
            pos: point.uncompressed,
            decoder: Box::new(Bounded::new(
                Zstd::new(RangeRead {
                    reader: shared,
                    content: Content::Blob(std::sync::Arc::new(blob.clone())),
                    pos: point.compressed,
                    size: blob.size,
                    buf: Bytes::new(),
                    handle,
                }),
                limit.saturating_sub(point.uncompressed),
                "the zstd stream inflates to over 1000 times its compressed size",
            )),
        });
        let fail = |e: io::Error| {
            // The reader's own error (network, integrity) if it is one.
            match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
                Some(inner) => inner.clone(),
                None => Error::Layer {
                    layer: blob.digest.to_string(),
                    entry: None,
                    reason: format!("reading at offset {at} of the uncompressed stream: {e}"),
                },
            }
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
            });
        }
        cursor.pos = at + len;
        Ok((Bytes::from(out), cursor))
    })
    .await
    .map_err(|e| Error::io("decoding a layer", io::Error::other(e.to_string())))?;
    let (bytes, cursor) = done?;
    entries.cursors.park(digest, cursor);
    Ok(bytes)
}

/// Bytes `at..at + len` of a layer's stream, through decoded spans kept by
/// `entries` where spans are small enough.
async fn read_spans(
    entries: &EntryReader,
    blobs: &dyn Reader,
    layer: &ImageLayer,
    at: u64,
    len: u64,
) -> Result<Bytes> {
    let SeekPoints::Gzip(points) = &layer.points else {
        return decode(blobs, layer, at, len).await;
    };
    let end = at + len;
    let mut out = BytesMut::with_capacity(len as usize);
    let mut pos = at;
    while pos < end {
        let i = points.partition_point(|p| p.uncompressed <= pos);
        let start = i.checked_sub(1).map_or(0, |i| points[i].uncompressed);
        let stop = points
            .get(i)
            .map_or(layer.uncompressed_size, |p| p.uncompressed);
        if stop <= pos || stop - start > SPAN_MAX {
            out.extend_from_slice(&decode(blobs, layer, pos, end - pos).await?);
            break;
        }
        let key = (layer.blob.digest.clone(), start | SPAN_KEY);
        let span = entries
            .whole(key, || decode(blobs, layer, start, stop - start))
            .await?;
        let from = (pos - start) as usize;
        let to = ((end.min(stop)) - start) as usize;
        out.extend_from_slice(&span[from..to.min(span.len())]);
        pos = stop;
    }
    Ok(out.freeze())
}

/// Bytes `at..at + len` of the uncompressed stream of `layer`, decoded from
/// the last seek point at or before `at`.
async fn decode(blobs: &dyn Reader, layer: &ImageLayer, at: u64, len: u64) -> Result<Bytes> {
    let blob = layer.blob.clone();
    let limit = blob.size.saturating_mul(MAX_RATIO).max(1 << 20);
    let digest = blob.digest.to_string();
    let fail = move |e: io::Error| Error::Layer {
        layer: digest.clone(),
        entry: None,
        reason: format!("reading at offset {at} of the uncompressed stream: {e}"),
    };
    let capacity = len.min(DECODE_WHOLE_MAX) as usize;
    match &layer.points {
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
            let (b, compression) = (blob.clone(), layer.compression);
            with_stream(blobs, &blob, 0..blob.size, move |r| {
                let mut d = decoder(r, compression, &b)?;
                let skipped = io::copy(&mut (&mut d).take(at), &mut io::sink()).map_err(&fail)?;
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

/// Bytes `at..at + len` of a zstd layer's stream from its decoded copy in
/// the cache, making the copy first if it is not there (once per layer at a
/// time); `None` where there is no copy to be had (no cache, no diff ID,
/// a failure, which is logged): the caller decodes.
async fn read_decoded(
    entries: &EntryReader,
    blobs: &dyn Reader,
    layer: &ImageLayer,
    at: u64,
    len: u64,
) -> Option<Bytes> {
    let decoded = layer.decoded.as_ref()?;
    let cache = blobs.as_cache()?;
    let store = cache.store()?.clone();
    if !store.has_complete(&decoded.digest) {
        let lock = entries.cursors.decoding(&layer.blob.digest);
        let _guard = lock.lock().await;
        if !store.has_complete(&decoded.digest)
            && let Err(e) = materialize(cache, layer, decoded).await
        {
            tracing::warn!(layer = %layer.blob.digest, error = %e, "decoding the layer into the cache failed; decoding it per read");
            return None;
        }
    }
    match cache
        .read(
            &Content::Blob(std::sync::Arc::new(decoded.clone())),
            at,
            len,
        )
        .await
    {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::debug!(layer = %layer.blob.digest, error = %e, "the decoded layer is gone");
            None
        }
    }
}

/// Streams a zstd layer once (verified) and keeps its decoded stream in
/// the cache under its diff ID, if it hashes to it.
async fn materialize(
    cache: &crate::ChunkCache,
    layer: &ImageLayer,
    decoded: &crate::Descriptor,
) -> Result<()> {
    let store = cache
        .store()
        .ok_or_else(|| Error::io("decoding a layer", io::Error::other("no cache")))?
        .clone();
    let (tmp, file) = store.temp_file()?;
    let blob = layer.blob.clone();
    let chunk_size = cache.chunk_size();
    let limit = blob.size.saturating_mul(MAX_RATIO).max(1 << 20);
    let scanned = cache
        .scan(&layer.blob, move |r| {
            let d = Bounded::new(
                Zstd::new(r),
                limit,
                "the zstd stream inflates to over 1000 times its compressed size",
            );
            let mut tee = super::Tee::new(d, file, chunk_size);
            io::copy(&mut tee, &mut io::sink())
                .and_then(|_| tee.finish())
                .map_err(|e| Error::Layer {
                    layer: blob.digest.to_string(),
                    entry: None,
                    reason: format!("unreadable stream: {e}"),
                })
        })
        .await;
    match scanned {
        Ok(s) if s.value.digest == decoded.digest && s.value.len == decoded.size => {
            let d = s.value;
            cache.adopt(
                &tmp,
                &decoded.digest,
                decoded.size,
                Some((d.chunk_size, d.table)),
            )
        }
        Ok(s) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::Layer {
                layer: layer.blob.digest.to_string(),
                entry: None,
                reason: format!(
                    "decodes to {} ({} bytes), not the diff ID {} ({} bytes) the image config names",
                    s.value.digest, s.value.len, decoded.digest, decoded.size
                ),
            })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

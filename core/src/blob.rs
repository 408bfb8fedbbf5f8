//! Verified blobs: `(blob, offset, len)` in, bytes checked against the
//! digest chain out.
//!
//! [`BlobReader`] is the seam between the decoders above (which know what a
//! file is) and where blob bytes come from; it knows nothing of files. The
//! chunk cache ([`crate::cache::ChunkCache`]) is the blob reader for real
//! use; [`DirectReader`] reads a source with no cache at all.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt as _;
use serde::Serialize;

use crate::digest::{BlobHasher, ChunkHash, ChunkTable, Digest};
use crate::error::{Error, Result};
use crate::manifest::Descriptor;
use crate::source::Source;

/// When bytes are checked against their digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    /// Bytes reach a caller only after the whole blob (or, with a chunk
    /// digest table, the chunk) checked out. The default.
    #[default]
    Strict,
    /// Bytes are served as they arrive; the blob is checked once complete,
    /// and dropped (failing further reads) on a mismatch. For browsing over
    /// a trusted link.
    Lazy,
}

impl std::str::FromStr for Verify {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "strict" => Ok(Verify::Strict),
            "lazy" => Ok(Verify::Lazy),
            other => Err(format!("unknown verify mode {other:?} (strict or lazy)")),
        }
    }
}

/// Counters of a reader, for `--stats`, `ocifs stats` and tests.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Chunk reads answered from memory.
    pub memory_hits: u64,
    /// Chunk reads answered from the disk cache.
    pub disk_hits: u64,
    /// Chunk reads that needed the source.
    pub misses: u64,
    /// Bytes read from the disk cache's files (its own reads, served or
    /// checked; not the kernel's of a passthrough file).
    pub disk_bytes_read: u64,
    /// Requests made to the source.
    pub requests: u64,
    /// Bytes received from the source.
    pub bytes_fetched: u64,
    /// Blobs whose digest checked out.
    pub blobs_verified: u64,
    /// Blobs or chunks whose digest did not.
    pub verify_failures: u64,
    /// Bytes of compressed tar streams (gzip, zstd) decoded to serve
    /// reads, those decoded only to reach a read's offset included (a
    /// content reader's count; 0 from a blob reader).
    pub decoded_bytes: u64,
}

/// Atomic counters behind [`Stats`].
#[derive(Debug, Default)]
pub struct Counters {
    /// See [`Stats::memory_hits`].
    pub memory_hits: AtomicU64,
    /// See [`Stats::disk_hits`].
    pub disk_hits: AtomicU64,
    /// See [`Stats::misses`].
    pub misses: AtomicU64,
    /// See [`Stats::disk_bytes_read`].
    pub disk_bytes_read: AtomicU64,
    /// See [`Stats::requests`].
    pub requests: AtomicU64,
    /// See [`Stats::bytes_fetched`].
    pub bytes_fetched: AtomicU64,
    /// See [`Stats::blobs_verified`].
    pub blobs_verified: AtomicU64,
    /// See [`Stats::verify_failures`].
    pub verify_failures: AtomicU64,
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            memory_hits: g(&self.memory_hits),
            disk_hits: g(&self.disk_hits),
            misses: g(&self.misses),
            disk_bytes_read: g(&self.disk_bytes_read),
            requests: g(&self.requests),
            bytes_fetched: g(&self.bytes_fetched),
            blobs_verified: g(&self.blobs_verified),
            verify_failures: g(&self.verify_failures),
            decoded_bytes: 0,
        }
    }
}

/// Reads blobs, verified.
#[async_trait]
pub trait BlobReader: Send + Sync + fmt::Debug {
    /// Exactly `min(len, blob.size - offset)` bytes of `blob` from
    /// `offset`, checked as the reader's [`Verify`] mode says.
    async fn read_blob(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes>;

    /// Like [`BlobReader::read_blob`], for bytes read once in a pass over
    /// the blob (a package's directory, a stream walked to index it): a
    /// reader with a memory cache does not keep them in it.
    async fn scan_blob(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        self.read_blob(blob, offset, len).await
    }

    /// Bytes of `blob` that the caller checks itself, against a digest
    /// the reference reaches (a chunked layer's chunk, whose decoded
    /// sha256 its table of contents gives): fetched as lazy mode fetches,
    /// whatever the mode, and not served to other readers as checked. A
    /// reader that cannot fetch part of a blob reads it checked.
    async fn read_unchecked(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        self.read_blob(blob, offset, len).await
    }

    /// Like [`BlobReader::read_unchecked`], for a piece the caller checks
    /// itself as a whole (a chunk, a table of contents): exactly these
    /// bytes are fetched where they are not in the reader's cache already,
    /// not the whole cache chunks around them, and they are not kept (the
    /// caller keeps what it made of them, once checked, by its digest).
    async fn read_piece(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        self.read_unchecked(blob, offset, len).await
    }

    /// The counters so far.
    fn stats(&self) -> Stats;

    /// The bytes that arrived from each host of the source so far.
    fn wire(&self) -> Vec<crate::HostBytes> {
        Vec::new()
    }
}

/// Reads straight from a source, without caching. In strict mode the whole
/// blob is hashed once (streamed, not kept) before its first byte is
/// served, taking the digest of each chunk on the way; every later read is
/// widened to whole chunks and each is checked against those digests, so
/// a layout file rewritten after its check is never served: right for a
/// local layout directory, which is already on disk.
#[derive(Debug)]
pub struct DirectReader {
    source: Arc<dyn Source>,
    verify: Verify,
    tables: Mutex<HashMap<Digest, Arc<ChunkTable>>>,
    counters: Counters,
}

/// The chunk size of [`DirectReader`]'s checks.
const DIRECT_CHUNK: u64 = 1 << 20;

impl DirectReader {
    /// A reader over `source`.
    pub fn new(source: Arc<dyn Source>, verify: Verify) -> Self {
        DirectReader {
            source,
            verify,
            tables: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    /// The blob's chunk table, taken by hashing it whole the first time
    /// (strict mode only).
    async fn table(&self, blob: &Descriptor) -> Result<Option<Arc<ChunkTable>>> {
        if self.verify == Verify::Lazy {
            return Ok(None);
        }
        if let Some(t) = self
            .tables
            .lock()
            .ok()
            .and_then(|t| t.get(&blob.digest).cloned())
        {
            return Ok(Some(t));
        }
        let table = Arc::new(
            verify_stream(self.source.as_ref(), blob, &self.counters, DIRECT_CHUNK).await?,
        );
        if let Ok(mut t) = self.tables.lock() {
            t.insert(blob.digest.clone(), table.clone());
        }
        Ok(Some(table))
    }

    /// `[offset, offset+len)` of a blob, read as whole chunks that are each
    /// checked against `table`.
    async fn read_checked(
        &self,
        blob: &Descriptor,
        table: &ChunkTable,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        let end = offset.saturating_add(len).min(blob.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let start = offset / DIRECT_CHUNK * DIRECT_CHUNK;
        let stop = end
            .div_ceil(DIRECT_CHUNK)
            .saturating_mul(DIRECT_CHUNK)
            .min(blob.size);
        let bytes = self.source.read_range(blob, start, stop - start).await?;
        for (i, chunk) in bytes.chunks(DIRECT_CHUNK as usize).enumerate() {
            let n = start / DIRECT_CHUNK + i as u64;
            if let Err(e) = crate::digest::check_chunk(table, &blob.digest, n, chunk) {
                Counters::bump(&self.counters.verify_failures);
                return Err(e);
            }
        }
        let from = (offset - start) as usize;
        Ok(bytes.slice(from..(from + (end - offset) as usize).min(bytes.len())))
    }
}

/// Streams `blob` from `source` whole and checks its digest; gives back
/// the digest of each `chunk_size` chunk, taken on the way (for checking
/// later reads of the same bytes).
pub async fn verify_stream(
    source: &dyn Source,
    blob: &Descriptor,
    counters: &Counters,
    chunk_size: u64,
) -> Result<ChunkTable> {
    let mut stream = source.stream(blob).await?;
    let mut hasher = BlobHasher::new(chunk_size, ChunkHash::AT_REST);
    while let Some(chunk) = stream.try_next().await? {
        hasher.update(&chunk);
        if hasher.len() > blob.size {
            break;
        }
    }
    let len = hasher.len();
    let (actual, table) = hasher.finish();
    if len != blob.size || actual != blob.digest {
        Counters::bump(&counters.verify_failures);
        return Err(Error::blob_mismatch(
            &blob.digest,
            format_args!(
                "in {} ({len} bytes read, {} expected)",
                source.name(),
                blob.size
            ),
            actual,
        ));
    }
    Counters::bump(&counters.blobs_verified);
    Ok(table)
}

#[async_trait]
impl BlobReader for DirectReader {
    async fn read_blob(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        let table = self.table(blob).await?;
        Counters::bump(&self.counters.requests);
        let bytes = match &table {
            Some(t) => self.read_checked(blob, t, offset, len).await?,
            None => self.source.read_range(blob, offset, len).await?,
        };
        self.counters
            .bytes_fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

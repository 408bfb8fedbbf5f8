//! Readers: turn `(content, offset, len)` into verified bytes.
//!
//! [`Reader`] is the seam between a view (what a file is) and where its bytes
//! come from. The filesystem backends and `ocifs cat` read through it. The
//! chunk cache ([`crate::cache::ChunkCache`]) is the reader for real use;
//! [`DirectReader`] reads a source with no cache at all.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt as _;
use serde::Serialize;

use crate::archive::EntryReader;
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::manifest::Descriptor;
use crate::source::Source;
use crate::view::Content;

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
    /// Requests made to the source.
    pub requests: u64,
    /// Bytes received from the source.
    pub bytes_fetched: u64,
    /// Blobs whose digest checked out.
    pub blobs_verified: u64,
    /// Blobs or chunks whose digest did not.
    pub verify_failures: u64,
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
            requests: g(&self.requests),
            bytes_fetched: g(&self.bytes_fetched),
            blobs_verified: g(&self.blobs_verified),
            verify_failures: g(&self.verify_failures),
        }
    }
}

/// Reads file contents.
#[async_trait]
pub trait Reader: Send + Sync + fmt::Debug {
    /// Exactly `min(len, size - offset)` bytes of `content` from `offset`,
    /// checked as the reader's [`Verify`] mode says.
    async fn read(&self, content: &Content, offset: u64, len: u64) -> Result<Bytes>;

    /// The counters so far.
    fn stats(&self) -> Stats;

    /// An owned handle on this reader, for work that outlives a call (a
    /// decoder kept between reads); `None` if it has none.
    fn shared(&self) -> Option<Arc<dyn Reader>> {
        None
    }

    /// This reader as the chunk cache, if it is one.
    fn as_cache(&self) -> Option<&crate::ChunkCache> {
        None
    }
}

/// Reads straight from a source, without caching. In strict mode the whole
/// blob is hashed once (streamed, not kept) before its first byte is served,
/// and remembered as verified for the life of the reader: right for a local
/// layout directory, which is already on disk.
#[derive(Debug)]
pub struct DirectReader {
    source: Arc<dyn Source>,
    verify: Verify,
    verified: Mutex<HashSet<Digest>>,
    counters: Counters,
    entries: EntryReader,
}

impl DirectReader {
    /// A reader over `source`.
    pub fn new(source: Arc<dyn Source>, verify: Verify) -> Self {
        DirectReader {
            source,
            verify,
            verified: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            entries: EntryReader::default(),
        }
    }

    fn is_verified(&self, d: &Digest) -> bool {
        self.verified.lock().is_ok_and(|v| v.contains(d))
    }

    async fn ensure_verified(&self, blob: &Descriptor) -> Result<()> {
        if self.verify == Verify::Lazy || self.is_verified(&blob.digest) {
            return Ok(());
        }
        verify_stream(self.source.as_ref(), blob, &self.counters).await?;
        if let Ok(mut v) = self.verified.lock() {
            v.insert(blob.digest.clone());
        }
        Ok(())
    }
}

/// Streams `blob` from `source` and checks its size and digest.
pub async fn verify_stream(
    source: &dyn Source,
    blob: &Descriptor,
    counters: &Counters,
) -> Result<()> {
    let mut stream = source.stream(blob).await?;
    let mut hasher = Hasher::new();
    while let Some(chunk) = stream.try_next().await? {
        hasher.update(&chunk);
        if hasher.len() > blob.size {
            break;
        }
    }
    let len = hasher.len();
    let actual = hasher.finish();
    if len != blob.size || actual != blob.digest {
        Counters::bump(&counters.verify_failures);
        return Err(Error::DigestMismatch {
            what: format!(
                "blob {} in {} ({len} bytes read, {} expected)",
                blob.digest,
                source.name(),
                blob.size
            ),
            expected: blob.digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Counters::bump(&counters.blobs_verified);
    Ok(())
}

#[async_trait]
impl Reader for DirectReader {
    async fn read(&self, content: &Content, offset: u64, len: u64) -> Result<Bytes> {
        match content {
            Content::Blob(blob) => {
                self.ensure_verified(blob).await?;
                Counters::bump(&self.counters.requests);
                let bytes = self.source.read_range(blob, offset, len).await?;
                self.counters
                    .bytes_fetched
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(bytes)
            }
            Content::Zip(_) | Content::Tar(_) | Content::Layer(_) => {
                self.entries.read(self, content, offset, len).await
            }
        }
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

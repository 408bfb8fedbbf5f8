//! Streaming a whole blob once, verified, to a consumer (the layer indexer),
//! keeping it in the cache as a complete blob once it checked out; and the
//! chunk digest tables taken on the way, which let strict mode serve chunks
//! of that blob without fetching all of it.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{ChunkCache, Inner, join_error};
use crate::blob::{BlobReader as _, Counters};
use crate::digest::{BlobHasher, ChunkHash, ChunkTable};
use crate::error::{Error, Result};
use crate::manifest::Descriptor;

/// What [`ChunkCache::scan`] gives back.
#[derive(Debug)]
pub struct Scanned<T> {
    /// The consumer's result.
    pub value: T,
    /// The size of the chunks `chunk_digests` are of (the cache's).
    pub chunk_size: u64,
    /// The sha256 of each chunk of the blob.
    pub chunk_digests: Vec<[u8; 32]>,
}

/// A `Read` that hashes what passes (the whole, and each chunk) and, if
/// it has a copy to make, writes it there too.
struct Hashing<R> {
    inner: R,
    hasher: BlobHasher,
    copy: Option<io::BufWriter<std::fs::File>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(copy) = &mut self.copy
            && let Err(e) = io::Write::write_all(copy, &buf[..n])
        {
            // A full disk costs the copy, not the scan.
            tracing::debug!(error = %e, "not keeping the scanned blob");
            self.copy = None;
        }
        Ok(n)
    }
}

impl<R> Hashing<R> {
    /// The copy, flushed and synced; `None` if there is none or it failed.
    fn finish_copy(&mut self) -> Option<()> {
        let copy = self.copy.take()?;
        let file = copy.into_inner().ok()?;
        file.sync_all().ok()
    }
}

impl ChunkCache {
    /// Streams the whole of `blob` once through `consume` (on a blocking
    /// thread), checking its digest, and takes the digest of each chunk.
    /// A complete copy already in the cache is read, else the source is
    /// streamed (resumed where it breaks) and, where there is a disk tier
    /// and the blob fits its budget, written beside the consumer and kept
    /// as a complete blob once its digest checked out.
    ///
    /// If the blob fails its digest, that is the error, whatever `consume`
    /// made of the bytes (so a stream that stops early is still read to
    /// its end). With strict verification, nothing `consume` returns was
    /// made of unverified bytes that reach the caller: the value is
    /// returned only once the whole blob checked out.
    pub async fn scan<T, F>(&self, blob: &Descriptor, consume: F) -> Result<Scanned<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Read) -> Result<T> + Send + 'static,
    {
        let chunk_size = self.inner.options.chunk_size;
        // A blob streamed whole is kept, once verified, as a complete blob
        // like any other (under the budget): a layer indexed on its first
        // mount is not fetched again for its files.
        let copy = match &self.inner.store {
            Some(store)
                if !self.inner.options.copies_only
                    && blob.size <= self.inner.options.disk_budget
                    && !store.has_complete(&blob.digest) =>
            {
                store.temp_file().ok()
            }
            _ => None,
        };
        let (tmp, file) = copy.map_or((None, None), |(t, f)| (Some(t), Some(f)));
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let consumer = tokio::task::spawn_blocking(move || {
            let mut r = Hashing {
                inner: StreamRead::new(rx),
                hasher: BlobHasher::new(chunk_size, ChunkHash::Sha256),
                copy: file.map(|f| io::BufWriter::with_capacity(1 << 20, f)),
            };
            let value = consume(&mut r);
            // The digest is of the whole blob, whatever the consumer read.
            let drained = io::copy(&mut r, &mut io::sink());
            let copied = drained.is_ok() && r.finish_copy().is_some();
            let len = r.hasher.len();
            (value, len, r.hasher.finish(), copied)
        });
        let produced = self.inner.clone().produce(blob, tx).await;
        let outcome = consumer
            .await
            .map_err(join_error)
            .and_then(|joined| produced.map(|()| joined));
        // The copy becomes the complete blob only if the blob checked out.
        let kept = match (&outcome, &tmp) {
            (Ok((_, len, (actual, table), true)), Some(tmp))
                if *len == blob.size && *actual == blob.digest =>
            {
                let adopted = self.adopt(
                    tmp,
                    &blob.digest,
                    blob.size,
                    Some((chunk_size, table.clone())),
                );
                if let Err(e) = &adopted {
                    tracing::debug!(digest = %blob.digest, error = %e, "not keeping the scanned blob");
                }
                adopted.is_ok()
            }
            _ => false,
        };
        if !kept && let Some(tmp) = &tmp {
            let _ = std::fs::remove_file(tmp);
        }
        let (value, len, (actual, chunk_digests), _) = outcome?;
        let verified = len == blob.size && actual == blob.digest;
        if !verified {
            Counters::bump(&self.inner.counters.verify_failures);
            return Err(Error::blob_mismatch(
                &blob.digest,
                format_args!(
                    "in {} ({len} bytes read, {} expected)",
                    self.inner.source.name(),
                    blob.size
                ),
                actual,
            ));
        }
        Counters::bump(&self.inner.counters.blobs_verified);
        if self.inner.store.is_none()
            && let Ok(mut v) = self.inner.verified_local.lock()
        {
            // A local layout's blob, hashed in place just now.
            v.insert(blob.digest.clone());
        }
        Ok(Scanned {
            value: value?,
            chunk_size,
            chunk_digests: chunk_digests.digests,
        })
    }

    /// Gives the cache the digest of each `chunk_size` chunk of `blob`,
    /// taken from verified bytes: from now on its chunks are checked
    /// against them when fetched, and strict mode serves a chunk once it
    /// checked out rather than after the whole blob did. A table of
    /// another chunk size, or of the wrong length, is not used.
    pub fn set_chunk_digests(
        &self,
        blob: &Descriptor,
        chunk_size: u64,
        digests: Vec<[u8; 32]>,
    ) -> bool {
        let cs = self.inner.options.chunk_size;
        if chunk_size != cs || digests.len() as u64 != blob.size.div_ceil(cs) {
            tracing::debug!(digest = %blob.digest, chunk_size, "chunk digest table not used");
            return false;
        }
        if let Ok(mut t) = self.inner.tables.lock() {
            t.insert(blob.digest.clone(), Arc::new(ChunkTable::sha256(digests)));
        }
        if let Ok(mut u) = self.inner.untrusted.lock() {
            u.remove(&blob.digest);
        }
        true
    }

    /// As [`ChunkCache::set_chunk_digests`], for a table nothing binds to
    /// the reference (a referrer's): in lazy mode only, each chunk fetched
    /// is checked against it, and should one disagree, the whole blob is
    /// fetched to decide: the table is dropped if the blob checks out.
    /// Strict mode does not take one.
    pub fn set_untrusted_chunk_digests(
        &self,
        blob: &Descriptor,
        chunk_size: u64,
        digests: Vec<[u8; 32]>,
    ) {
        if self.inner.options.verify == crate::blob::Verify::Strict {
            return;
        }
        if self.set_chunk_digests(blob, chunk_size, digests)
            && let Ok(mut u) = self.inner.untrusted.lock()
        {
            u.insert(blob.digest.clone());
        }
    }

    /// The disk tier, for a remote source.
    pub fn store(&self) -> Option<&Arc<super::DiskStore>> {
        self.inner.store.as_ref()
    }

    /// Adopts `tmp`, a temporary file of the store holding `size` bytes
    /// the caller hashed to `digest`, as that complete blob (counted in the
    /// budget like any other).
    /// `table` is its chunk table, if the caller took one on the way (else
    /// the first reader of the blob hashes it whole to take one).
    pub fn adopt(
        &self,
        tmp: &std::path::Path,
        digest: &crate::Digest,
        size: u64,
        table: Option<(u64, ChunkTable)>,
    ) -> Result<()> {
        let Some(store) = &self.inner.store else {
            let _ = std::fs::remove_file(tmp);
            return Ok(());
        };
        if let Some((chunk_size, table)) = &table {
            store.put_table(digest, *chunk_size, size, table)?;
        }
        store.adopt(tmp, digest)?;
        self.inner.disk_usage.fetch_add(size, Ordering::Relaxed);
        self.inner.maybe_evict();
        Ok(())
    }

    /// When bytes are checked.
    pub fn verify(&self) -> crate::blob::Verify {
        self.inner.options.verify
    }

    /// The cache's chunk size.
    pub fn chunk_size(&self) -> u64 {
        self.inner.options.chunk_size
    }
}

impl Inner {
    /// Sends the bytes of `blob` down `tx` until the end or until the
    /// receiver is gone.
    async fn produce(self: Arc<Self>, blob: &Descriptor, tx: mpsc::Sender<Bytes>) -> Result<()> {
        const PIECE: u64 = 1 << 20;
        if self
            .store
            .as_ref()
            .is_some_and(|s| s.has_complete(&blob.digest))
        {
            let cache = ChunkCache {
                inner: self.clone(),
            };
            let mut offset = 0;
            while offset < blob.size {
                let bytes = cache.read_blob(blob, offset, PIECE).await?;
                if bytes.is_empty() {
                    break;
                }
                offset += bytes.len() as u64;
                if tx.send(bytes).await.is_err() {
                    break;
                }
            }
            return Ok(());
        }
        let mut stream = super::resume::Resuming::new(
            self.source.as_ref(),
            blob,
            &self.counters,
            0,
            self.options.chunk_size,
        );
        let mut pos = 0u64;
        while let Some(bytes) = stream.next().await? {
            pos += bytes.len() as u64;
            if tx.send(bytes).await.is_err() || pos > blob.size {
                // The consumer has what it needs; or the blob is longer
                // than it should be, which the digest check fails.
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The consuming end of a channel of pieces: a `Read` that ends when the
/// sender is gone.
#[derive(Debug)]
struct StreamRead {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl StreamRead {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        StreamRead {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for StreamRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use bytes::Buf as _;
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

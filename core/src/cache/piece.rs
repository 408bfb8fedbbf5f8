//! Pieces: exact ranges of a blob for a caller that checks each itself as
//! a whole (a chunked layer's chunk, its table of contents), fetched as
//! they are rather than in whole cache chunks; and what the caller makes
//! of them once checked (a decoded chunk, a TOC), kept as complete blobs
//! under their own digest, for any layer or image that names it.
//!
//! A piece's raw bytes are not kept: they are worth nothing until checked,
//! and what they check out to is kept instead, checked at rest as every
//! complete blob is.

use super::*;

/// The result every waiter of one piece's fetch gets.
pub(super) type PieceFlight = watch::Receiver<Option<Result<Bytes>>>;

impl Inner {
    /// `[offset, offset+len)` of `blob`: from the cache where it holds all
    /// of it (the complete blob, or every cache chunk the range touches),
    /// else exactly that range from the source, once however many readers
    /// ask for it at a time. Not checked: the caller checks it.
    pub(super) async fn read_piece(
        self: &Arc<Self>,
        blob: &Descriptor,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        let end = offset.saturating_add(len).min(blob.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        if let Some(e) = self.known_bad(&blob.digest) {
            return Err(e);
        }
        // A local layout is read in place; a source that may not be asked
        // (offline) has only what the cache holds.
        if self.store.is_none() || !self.source.can_fetch() || self.holds(blob, offset, end) {
            return self
                .read_blob(blob, offset, end - offset, false, false)
                .await;
        }
        let key = (blob.digest.clone(), offset, end);
        let (mut rx, leader) = {
            let mut pieces = self.pieces.lock().map_err(|_| poisoned())?;
            match pieces.get(&key) {
                Some(rx) => (rx.clone(), None),
                None => {
                    let (tx, rx) = watch::channel(None);
                    pieces.insert(key.clone(), rx.clone());
                    (rx, Some(tx))
                }
            }
        };
        if let Some(tx) = leader {
            // In a task of its own: a reader that goes away does not take
            // the fetch the others wait for with it.
            let inner = self.clone();
            let blob = blob.clone();
            tokio::spawn(async move {
                let result = inner.fetch_piece(&blob, offset, end).await;
                if let Ok(mut pieces) = inner.pieces.lock() {
                    pieces.remove(&key);
                }
                let _ = tx.send(Some(result));
            });
        }
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_else(|| Ok(Bytes::new())),
            Err(_) => Err(Error::io(
                "a fetch task ended without a result",
                std::io::Error::other("task aborted"),
            )),
        }
    }

    /// Whether the cache holds all of `[offset, end)` of `blob` already.
    fn holds(&self, blob: &Descriptor, offset: u64, end: u64) -> bool {
        if self
            .store
            .as_ref()
            .is_some_and(|s| s.has_complete(&blob.digest))
        {
            return true;
        }
        let cs = self.options.chunk_size;
        if (offset / cs..=(end - 1) / cs).all(|n| self.memory.get(&blob.digest, n).is_some()) {
            return true;
        }
        self.partials
            .lock()
            .ok()
            .and_then(|p| p.get(&blob.digest).cloned())
            .is_some_and(|p| !p.is_gone() && p.chunks_covering(offset, end).all(|n| p.has(n)))
    }

    /// One range request for exactly `[offset, end)`, under the request
    /// limit and the source's retry policy, counted as fetched.
    async fn fetch_piece(
        self: &Arc<Self>,
        blob: &Descriptor,
        offset: u64,
        end: u64,
    ) -> Result<Bytes> {
        let _permit = self
            .requests
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| poisoned())?;
        Counters::bump(&self.counters.requests);
        Counters::bump(&self.counters.misses);
        let len = end - offset;
        // Bounded here as well as in the source: a read must end even if a
        // source never times out on its own.
        let bytes = self
            .source
            .retry_policy()
            .resumption()
            .within(
                &format!("reading {len} bytes at {offset} of {}", blob.digest),
                self.source.read_range(blob, offset, len),
            )
            .await??;
        self.counters
            .bytes_fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() as u64 != len {
            return Err(Error::ShortRead {
                digest: blob.digest.to_string(),
                offset,
                expected: len,
                got: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }
}

impl ChunkCache {
    /// Keeps `bytes`, which the caller checked against a digest the
    /// reference reaches, as the complete blob `digest` (where there is a
    /// disk tier, and they fit its budget). They are hashed again here and
    /// refused, never stored, unless they are `digest`'s. Whether they are
    /// kept. Blocking.
    pub fn keep(&self, digest: &Digest, bytes: &[u8]) -> Result<bool> {
        let Some(store) = &self.inner.store else {
            return Ok(false);
        };
        if bytes.len() as u64 > self.inner.options.disk_budget / 16 {
            return Ok(false);
        }
        if store.has_complete(digest) {
            return Ok(true);
        }
        let actual = Digest::of(bytes);
        if &actual != digest {
            Counters::bump(&self.inner.counters.verify_failures);
            return Err(Error::blob_mismatch(
                digest,
                format_args!("(a piece to keep, {} bytes)", bytes.len()),
                actual,
            ));
        }
        store.put_piece(digest, bytes)?;
        self.inner
            .disk_usage
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.inner.maybe_evict();
        Ok(true)
    }

    /// The complete blob `digest` if the cache holds it (kept by
    /// [`ChunkCache::keep`], or any other), read whole and checked against
    /// `digest` before it is given back; never fetched. `size`: the
    /// blob's, if known, else the stored file's; either at most `limit`.
    /// `None` where it is not there, or failed its check (it is dropped,
    /// and the caller makes it again from checked bytes).
    pub async fn read_kept(&self, digest: &Digest, size: Option<u64>, limit: u64) -> Option<Bytes> {
        let store = self.inner.store.clone()?;
        if !store.has_complete(digest) {
            return None;
        }
        let inner = self.inner.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || {
            let file = store.open_complete(&digest).ok()??;
            let path = store.blob_path(&digest);
            let stored = file.metadata().ok()?.len();
            let size = size.unwrap_or(stored);
            if size > limit || size == 0 {
                return None;
            }
            let bytes = DiskStore::read_at(&file, &path, 0, size as usize).ok();
            inner.read_from_disk(bytes.as_ref().map_or(0, Vec::len));
            let actual = bytes.as_deref().map(Digest::of);
            if stored != size || actual.as_ref() != Some(&digest) {
                Counters::bump(&inner.counters.verify_failures);
                tracing::warn!(%digest, path = %path.display(), "a kept piece in the cache is damaged; dropped");
                drop(file);
                store.remove(&digest);
                return None;
            }
            Counters::bump(&inner.counters.disk_hits);
            bytes.map(Bytes::from)
        })
        .await
        .ok()
        .flatten()
    }
}

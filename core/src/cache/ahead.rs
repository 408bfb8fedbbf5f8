//! Reading ahead: the next chunks of a sequential reader, and the rest of
//! small blobs read lazily, completed in the background.

use super::*;

impl Inner {
    /// In lazy mode, a blob whose chunks are all present is checked now.
    pub(super) fn after_lazy_fetch(
        self: &Arc<Self>,
        store: &Arc<DiskStore>,
        blob: &Descriptor,
        partial: &Arc<Partial>,
    ) {
        let (p, p2) = (partial.clone(), partial.clone());
        let inner = self.clone();
        let store = store.clone();
        let blob = blob.clone();
        tokio::spawn(async move {
            let complete = tokio::task::spawn_blocking(move || p.is_complete())
                .await
                .unwrap_or(false);
            if !complete {
                return;
            }
            let key = (blob.digest.clone(), WHOLE);
            let (i2, b2) = (inner.clone(), blob.clone());
            let result = inner
                .single_flight(key, async move { i2.promote(&store, &b2, p2).await })
                .await;
            if let Err(e @ Error::DigestMismatch { .. }) = result
                && let Ok(mut bad) = inner.bad.lock()
            {
                bad.insert(blob.digest.clone(), e);
            }
        });
    }

    /// Records a small blob whose chunks this process fetches unchecked
    /// (lazy mode), to be completed or dropped.
    pub(super) fn note_lazy_small(&self, blob: &Descriptor) {
        let max = self.options.background_fetch_max;
        if self.options.verify == Verify::Lazy
            && max > 0
            && blob.size <= max
            && let Ok(mut l) = self.lazy_small.lock()
        {
            l.entry(blob.digest.clone()).or_insert(false);
        }
    }

    /// Fetches the rest of a small blob read lazily, in the background (once
    /// at a time per blob), so the whole-blob check runs soon: a blob that
    /// fails it is dropped with every chunk it had.
    pub(super) fn complete_in_background(self: &Arc<Self>, blob: &Descriptor) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let start = self
            .lazy_small
            .lock()
            .is_ok_and(|mut l| match l.get_mut(&blob.digest) {
                Some(running) if !*running => {
                    *running = true;
                    true
                }
                _ => false,
            });
        if !start {
            return;
        }
        let inner = self.clone();
        let blob = blob.clone();
        tokio::spawn(async move {
            let _pin = inner.pin(&blob.digest);
            let result: Result<()> = async {
                if store.has_complete(&blob.digest) || inner.closed.load(Ordering::Acquire) {
                    return Ok(());
                }
                let partial = inner.partial(&store, &blob)?;
                let wanted =
                    partial.missing(0..=blob.size.div_ceil(partial.chunk_size).saturating_sub(1));
                // A few chunks at a time: a reader that wants one of them
                // waits for a short request, not for the whole blob.
                for batch in wanted.chunks(BACKGROUND_BATCH) {
                    if inner.closed.load(Ordering::Acquire) {
                        return Ok(());
                    }
                    inner.fetch_chunks(&blob, &partial, batch.to_vec()).await?;
                }
                inner.after_lazy_fetch(&store, &blob, &partial);
                Ok(())
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(digest = %blob.digest, error = %e, "background completion failed");
            }
            if let Ok(mut l) = inner.lazy_small.lock()
                && let Some(running) = l.get_mut(&blob.digest)
            {
                *running = false;
            }
        });
    }

    /// Drops the partial chunks of the small blobs this process read lazily
    /// and did not complete: they were never checked, and must not outlive
    /// the process that fetched them (a later process would serve them).
    pub(super) fn drop_unchecked_small(&self) {
        self.closed.store(true, Ordering::Release);
        let (Some(store), Ok(mut small)) = (&self.store, self.lazy_small.lock()) else {
            return;
        };
        for (digest, _) in small.drain() {
            if !store.has_complete(&digest) {
                tracing::debug!(%digest, "dropping the unchecked chunks of a small blob not completed");
                store.drop_partial(&digest);
            }
        }
    }

    /// Sequential reads grow a read-ahead window, fetched in the background.
    pub(super) fn read_ahead(self: &Arc<Self>, blob: &Descriptor, offset: u64, end: u64) {
        let cs = self.options.chunk_size;
        let window = {
            let Ok(mut seqs) = self.sequences.lock() else {
                return;
            };
            let seq = seqs.entry(blob.digest.clone()).or_insert(Sequence {
                next: u64::MAX,
                run: 0,
                window: 0,
            });
            // Sequential: at or a little past where the last read ended
            // (several FUSE threads may deliver neighbours out of order).
            let sequential = seq.next != u64::MAX && offset >= seq.next && offset - seq.next < cs;
            seq.run = if sequential {
                seq.run + (end - offset)
            } else {
                end - offset
            };
            // Read ahead only once a run covers a chunk: a few small reads
            // of a header are not a stream.
            seq.window = if sequential && seq.run >= cs {
                (seq.window * 2).clamp(2 * cs, self.options.readahead_max.max(cs))
            } else {
                0
            };
            seq.next = end;
            seq.window
        };
        if window == 0 || end >= blob.size {
            return;
        }
        let Some(store) = self.store.clone() else {
            return;
        };
        let inner = self.clone();
        let blob = blob.clone();
        tokio::spawn(async move {
            let Ok(partial) = inner.partial(&store, &blob) else {
                return;
            };
            let ahead_end = end.saturating_add(window).min(blob.size);
            let wanted = partial.missing(partial.chunks_covering(end, ahead_end));
            if wanted.is_empty() {
                return;
            }
            let _pin = inner.pin(&blob.digest);
            if let Err(e) = inner.fetch_chunks(&blob, &partial, wanted).await {
                tracing::debug!(digest = %blob.digest, error = %e, "read-ahead failed");
            } else {
                inner.after_lazy_fetch(&store, &blob, &partial);
            }
        });
    }
}

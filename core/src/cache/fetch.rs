//! Lazy fetches: the missing chunks of a read, in one range request per
//! run, written under their locks and marked once synced.

use super::*;

impl Inner {
    /// Fetches the missing chunks `wanted` (partial-blob chunk numbers) of a
    /// remote blob into its partial store.
    pub(super) async fn fetch_chunks(
        self: &Arc<Self>,
        blob: &Descriptor,
        partial: &Arc<Partial>,
        wanted: Vec<u64>,
    ) -> Result<()> {
        let per_request = (self.options.max_request / partial.chunk_size).max(1);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for n in wanted {
            match runs.last_mut() {
                Some((first, last)) if *last + 1 == n && n - *first < per_request => *last = n,
                _ => runs.push((n, n)),
            }
        }
        let flights = runs.into_iter().map(|(first, last)| {
            let inner = self.clone();
            let blob = blob.clone();
            let partial = partial.clone();
            async move {
                // Each run is one flight, keyed by its first chunk; readers
                // of other chunks of the run find them present afterwards.
                let key = (blob.digest.clone(), first);
                let work_inner = inner.clone();
                inner
                    .single_flight(key, async move {
                        work_inner.fetch_run(blob, partial, first, last).await
                    })
                    .await
            }
        });
        let results: Vec<Result<()>> = futures_util::stream::iter(flights)
            .buffer_unordered(self.options.parallel_per_blob.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// One range request for chunks `first..=last`, under their chunk lock.
    pub(super) async fn fetch_run(
        self: Arc<Self>,
        blob: Descriptor,
        partial: Arc<Partial>,
        first: u64,
        last: u64,
    ) -> Result<()> {
        let _permit = self
            .requests
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| poisoned())?;
        let locking = partial.clone();
        let store = self.store.clone();
        let digest = blob.digest.clone();
        let (locks, missing) = tokio::task::spawn_blocking(move || -> Result<_> {
            let locks = match locking.lock_chunks(first, last) {
                Ok(lock) => Some(lock),
                // Dropped by another process: nothing to fetch into;
                // the reader looks again (complete now, or a new
                // generation).
                Err(_) if locking.is_gone() => return Ok((None, Vec::new())),
                Err(e) => return Err(e),
            };
            // Complete: another process promoted the file this partial
            // writes into; not a byte more goes into it.
            if store.is_some_and(|s| s.has_complete(&digest)) {
                return Ok((locks, Vec::new()));
            }
            // Another process may have fetched some while we waited.
            let missing = locking.missing(first..=last);
            Ok((locks, missing))
        })
        .await
        .map_err(join_error)??;
        let mut i = 0;
        while i < missing.len() {
            let a = missing[i];
            let mut b = a;
            while i + 1 < missing.len() && missing[i + 1] == b + 1 {
                i += 1;
                b = missing[i];
            }
            i += 1;
            let offset = a * partial.chunk_size;
            let end = ((b + 1) * partial.chunk_size).min(blob.size);
            Counters::bump(&self.counters.requests);
            // Bounded here as well as in the source: a read must end even
            // if a source never times out on its own.
            let bytes = self
                .source
                .retry_policy()
                .resumption()
                .within(
                    &format!(
                        "reading {} bytes at {offset} of {}",
                        end - offset,
                        blob.digest
                    ),
                    self.source.read_range(&blob, offset, end - offset),
                )
                .await??;
            self.counters
                .bytes_fetched
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if let Some(table) = self.rest_table(&blob)
                && partial.chunk_size == self.options.chunk_size
            {
                for (i, piece) in bytes.chunks(partial.chunk_size as usize).enumerate() {
                    if let Err(e) = check_chunk(&table, &blob.digest, a + i as u64, piece) {
                        Counters::bump(&self.counters.verify_failures);
                        return Err(e);
                    }
                }
            }
            if self.closed.load(Ordering::Acquire) {
                // Closed: whatever is fetched now would outlive the drop of
                // the unchecked chunks.
                return Ok(());
            }
            let written = self
                .with_room(&blob, end - offset, || {
                    let (writing, bytes) = (partial.clone(), bytes.clone());
                    async move {
                        tokio::task::spawn_blocking(move || writing.write_chunks(a, &bytes, true))
                            .await
                            .map_err(join_error)?
                    }
                })
                .await;
            if let Err(e) = written {
                // The partial blob may have been promoted by another process.
                if self
                    .store
                    .as_ref()
                    .is_some_and(|s| s.has_complete(&blob.digest))
                {
                    return Ok(());
                }
                // Its directory may have been removed: start afresh next time.
                self.forget_partial(&blob.digest);
                if partial.is_gone() && !is_disk_full(&e) {
                    // Removed under this write (promoted by another process
                    // and then evicted, or evicted): nothing was marked, and
                    // the read looks again, in a new generation.
                    tracing::debug!(digest = %blob.digest, "partial blob removed while writing into it");
                    return Ok(());
                }
                return Err(e);
            }
            self.disk_usage.fetch_add(end - offset, Ordering::Relaxed);
        }
        drop(locks);
        self.maybe_evict();
        Ok(())
    }
}

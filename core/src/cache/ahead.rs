//! Reading ahead: the next chunks of a sequential reader (by range, or,
//! once a lazy reader's run is long, as one stream that serves its readers
//! as it lands), and the rest of small blobs read lazily, completed in the
//! background.

use super::*;

/// How far a lazy stream runs past what its readers want.
pub(super) const AHEAD_LEAD: u64 = 32 << 20;

/// How long a lazy stream waits for its readers to want more before it
/// stops (they stopped reading on; what they read is kept).
pub(super) const AHEAD_IDLE: Duration = Duration::from_secs(2);

/// A lazy sequential run this long over a large blob switches from range
/// requests to one stream of the rest.
const STREAM_AFTER: u64 = 16 << 20;

/// A lazy read waits for the stream (rather than asking for its own
/// range) when the stream's next byte is at most this far before it.
const WAIT_WITHIN: u64 = 64 << 20;

/// [`WAIT_WITHIN`] for the stream of a small blob (`Inner::stream_small`):
/// a read far into it (a zip's directory at its end) asks for its range.
const SMALL_WAIT_WITHIN: u64 = 8 << 20;

/// How far before the furthest read of a run a read may end and still
/// belong to it (reads of one sequential stream finish out of order).
const REORDERED: u64 = 8 << 20;

/// How a stream into a partial blob ended.
pub(super) enum Streamed {
    /// At the blob's end, with the hasher it was given.
    End(Option<Box<BlobHasher>>),
    /// Another process completed the blob meanwhile.
    Complete,
    /// A lazy stream whose readers wanted no more, or whose cache closed.
    Stopped,
}

/// A lazy reader's stream of a blob (one per blob in a process): where it
/// has got to, and how far its readers want it.
pub(super) struct StreamAhead {
    /// The end of what the stream wrote, synced and marked (`u64::MAX`
    /// until it knows where it starts). Dropped when the stream ends, which
    /// ends every wait on it.
    pub(super) written: watch::Sender<u64>,
    /// The furthest end a reader wants.
    demand: watch::Sender<u64>,
    /// How far before a read the stream's next byte may be for the read to
    /// wait for it, rather than ask for its own range.
    wait_within: u64,
    /// Why the stream ended early, for the reads that waited for it: they
    /// fail with it (a stalled registry fails a read within its timeout,
    /// not once per stream a read would start anew).
    failed: Arc<std::sync::OnceLock<Error>>,
}

impl StreamAhead {
    /// A stream about to start: written up to `written` (`u64::MAX` until
    /// it knows where it starts), wanted up to `demand`.
    fn new(written: u64, demand: u64, wait_within: u64) -> Arc<Self> {
        Arc::new(StreamAhead {
            written: watch::channel(written).0,
            demand: watch::channel(demand).0,
            wait_within,
            failed: Arc::default(),
        })
    }

    pub(super) fn demand(&self) -> u64 {
        *self.demand.borrow()
    }

    fn want(&self, end: u64) {
        self.demand.send_if_modified(|d| {
            let further = end > *d;
            if further {
                *d = end;
            }
            further
        });
    }

    /// Waits until readers want bytes within [`AHEAD_LEAD`] of `reach`;
    /// false after [`AHEAD_IDLE`] without.
    pub(super) async fn wait_for_demand(&self, reach: u64) -> bool {
        let mut demand = self.demand.subscribe();
        let wanted = demand.wait_for(|&d| reach < d.saturating_add(AHEAD_LEAD));
        matches!(tokio::time::timeout(AHEAD_IDLE, wanted).await, Ok(Ok(_)))
    }
}

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
        // A stream of it completes it.
        if self
            .aheads
            .lock()
            .is_ok_and(|a| a.contains_key(&blob.digest))
        {
            return;
        }
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

    /// In lazy mode, a long sequential run over a large blob that has no
    /// chunk table: the rest of the blob comes as one stream, which its
    /// readers are served from as it lands (range requests of a few MiB
    /// each, each written and synced before it is served, run at a
    /// fraction of one stream's rate). The stream follows the readers
    /// ([`AHEAD_LEAD`]) and stops when they stop ([`AHEAD_IDLE`]), so a
    /// lazy reader still fetches about what it reads; one that reads to the
    /// end gets the blob checked whole and promoted. Whether a stream
    /// serves this run now.
    fn stream_for(
        self: &Arc<Self>,
        store: &Arc<DiskStore>,
        blob: &Descriptor,
        run: u64,
        end: u64,
        window: u64,
    ) -> bool {
        let Ok(mut aheads) = self.aheads.lock() else {
            return false;
        };
        // A small blob's stream too: what it will bring is not asked for
        // again by range.
        if let Some(a) = aheads.get(&blob.digest) {
            a.want(end.saturating_add(window));
            return true;
        }
        if !self.may_stream_lazily(blob)
            || blob.size <= self.options.background_fetch_max.max(2 * AHEAD_LEAD)
            || run < STREAM_AFTER
            || store.has_complete(&blob.digest)
        {
            return false;
        }
        let ahead = StreamAhead::new(u64::MAX, end.saturating_add(window), WAIT_WITHIN);
        aheads.insert(blob.digest.clone(), ahead.clone());
        drop(aheads);
        tracing::debug!(digest = %blob.digest, from = end, "a lazy sequential run: streaming the rest");
        self.spawn_stream(store, blob, end, ahead);
        true
    }

    /// Whether a lazy stream may fetch `blob`: lazy mode, and no chunk
    /// table to check its chunks against (range requests check each).
    fn may_stream_lazily(&self, blob: &Descriptor) -> bool {
        self.options.verify == Verify::Lazy
            && self.table(blob).is_none()
            && self.rest_table(blob).is_none()
    }

    /// In lazy mode, a small blob (up to
    /// [`CacheOptions::background_fetch_max`]) that a read missed is
    /// completed in the background anyway: all of it that is missing comes
    /// as one stream, started now, which its readers are served from as it
    /// lands, rather than as range requests of a few chunks each (16
    /// readers of 32 MiB blobs made about 180 requests, which cost the
    /// registry 3 × the CPU time of 16 streams). A read more than
    /// [`SMALL_WAIT_WITHIN`] past where the stream has got still asks for
    /// its own range. A stream that failed a moment ago fails the read.
    pub(super) fn stream_small(
        self: &Arc<Self>,
        store: &Arc<DiskStore>,
        blob: &Descriptor,
    ) -> Result<()> {
        let max = self.options.background_fetch_max;
        if max == 0 || blob.size > max || !self.may_stream_lazily(blob) {
            return Ok(());
        }
        let Ok(mut aheads) = self.aheads.lock() else {
            return Ok(());
        };
        if aheads.contains_key(&blob.digest) || store.has_complete(&blob.digest) {
            return Ok(());
        }
        // One that failed a moment ago fails this read too (the kernel
        // asks again at once for a read that failed).
        if let Some(e) = self.recent_failure(&(blob.digest.clone(), STREAM)) {
            return Err(e);
        }
        // Written from 0 on (it may find a later start once the range
        // requests under way have landed); wanted whole, whatever its
        // readers want: it is completed to be checked.
        let ahead = StreamAhead::new(0, blob.size, SMALL_WAIT_WITHIN);
        aheads.insert(blob.digest.clone(), ahead.clone());
        drop(aheads);
        tracing::debug!(digest = %blob.digest, "a lazy read of a small blob: streaming what it lacks");
        self.spawn_stream(store, blob, 0, ahead);
        Ok(())
    }

    /// Runs `ahead`'s stream of `blob` from its first missing chunk at or
    /// after `from`, in a task of its own that leaves the map of streams
    /// when it ends.
    fn spawn_stream(
        self: &Arc<Self>,
        store: &Arc<DiskStore>,
        blob: &Descriptor,
        from: u64,
        ahead: Arc<StreamAhead>,
    ) {
        let (inner, store, blob) = (self.clone(), store.clone(), blob.clone());
        tokio::spawn(async move {
            let _pin = inner.pin(&blob.digest);
            let result = inner.stream_ahead(&store, &blob, from, &ahead).await;
            if let Err(e) = &result {
                let _ = ahead.failed.set(e.clone());
            }
            inner.note_outcome(&(blob.digest.clone(), STREAM), &result);
            if let Ok(mut aheads) = inner.aheads.lock()
                && aheads
                    .get(&blob.digest)
                    .is_some_and(|a| Arc::ptr_eq(a, &ahead))
            {
                aheads.remove(&blob.digest);
            }
            match result {
                Ok(()) => tracing::debug!(digest = %blob.digest, "a lazy stream ended"),
                Err(e) => {
                    tracing::debug!(digest = %blob.digest, error = %e, "a lazy stream ended early")
                }
            }
        });
    }

    /// The rest of `blob` from its first missing chunk at or after `from`,
    /// as one stream (see [`Self::stream_for`]); a blob it completes is
    /// checked whole and promoted.
    async fn stream_ahead(
        self: &Arc<Self>,
        store: &Arc<DiskStore>,
        blob: &Descriptor,
        from: u64,
        ahead: &Arc<StreamAhead>,
    ) -> Result<()> {
        // The read-ahead's range requests still under way land first: the
        // stream starts after them, not over them again.
        let landing: Vec<_> = self.flights.lock().map_or_else(
            |_| Vec::new(),
            |f| {
                f.iter()
                    .filter(|((d, n), _)| *d == blob.digest && *n != WHOLE)
                    .map(|(_, rx)| rx.clone())
                    .collect()
            },
        );
        for mut rx in landing {
            let _ = rx.wait_for(Option::is_some).await;
        }
        let partial = self.partial(store, blob)?;
        let p = partial.clone();
        let start = tokio::task::spawn_blocking(move || {
            let cs = p.chunk_size;
            let rest = from / cs..=p.size.div_ceil(cs).saturating_sub(1);
            p.missing(rest).first().map(|n| n * cs)
        })
        .await
        .map_err(join_error)?;
        let Some(start) = start else {
            // Nothing left to fetch: checked now, if it is all there.
            self.after_lazy_fetch(store, blob, &partial);
            return Ok(());
        };
        ahead.written.send_replace(start);
        if let Streamed::End(_) = self
            .stream_into(store, blob, &partial, start, None, Some(ahead))
            .await?
        {
            self.after_lazy_fetch(store, blob, &partial);
        }
        Ok(())
    }

    /// A lazy read of `[offset, end)` that this process's stream of the
    /// blob is about to write waits for it, rather than asking for the
    /// same bytes by range; whether it waited (the caller looks again). A
    /// stream that failed before it got there fails the read.
    pub(super) async fn wait_for_stream(
        &self,
        blob: &Descriptor,
        offset: u64,
        end: u64,
    ) -> Result<bool> {
        let (mut written, failed) = {
            let Ok(aheads) = self.aheads.lock() else {
                return Ok(false);
            };
            let Some(a) = aheads.get(&blob.digest) else {
                return Ok(false);
            };
            let at = *a.written.borrow();
            if at == u64::MAX || offset < at || offset - at >= a.wait_within {
                return Ok(false);
            }
            a.want(end);
            (a.written.subscribe(), a.failed.clone())
        };
        // Ends when the stream got there, or ended (its sender dropped).
        let got_there = written
            .wait_for(|&w| w != u64::MAX && w >= end)
            .await
            .is_ok();
        match failed.get() {
            Some(e) if !got_there => Err(e.clone()),
            _ => Ok(true),
        }
    }

    /// Sequential reads grow a read-ahead window, fetched in the background.
    pub(super) fn read_ahead(self: &Arc<Self>, blob: &Descriptor, offset: u64, end: u64) {
        let cs = self.options.chunk_size;
        let (window, run) = {
            let Ok(mut seqs) = self.sequences.lock() else {
                return;
            };
            let seq = seqs.entry(blob.digest.clone()).or_insert(Sequence {
                next: u64::MAX,
                run: 0,
                window: 0,
            });
            // Sequential: at or a little past where the furthest read so
            // far ended, or a little before it: the kernel's read-ahead
            // has several reads of one stream in flight at once, and they
            // finish (and get here) in any order.
            let sequential = seq.next != u64::MAX
                && offset <= seq.next.saturating_add(cs)
                && offset.saturating_add(REORDERED) >= seq.next;
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
            seq.next = if sequential { seq.next.max(end) } else { end };
            (seq.window, seq.run)
        };
        if window == 0 || end >= blob.size {
            return;
        }
        let Some(store) = self.store.clone() else {
            return;
        };
        if self.stream_for(&store, blob, run, end, window) {
            return;
        }
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

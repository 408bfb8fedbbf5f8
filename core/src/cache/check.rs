//! Bytes at rest, checked: the chunk digest tables a blob's chunks are
//! checked against, which chunks this process checked, and the reads of
//! complete blobs from disk that check them.

use super::*;
use std::collections::VecDeque;

/// How many chunks past a sequential reader of a complete blob are checked
/// ahead of it (`Inner::check_ahead`).
pub(super) const CHECK_AHEAD: u64 = 4;

/// How long a thread checking ahead that caught up with its reader waits
/// for it to read on before it stops (and what it kept for it is let go).
const LINGER: Duration = Duration::from_millis(50);

/// How many chunks a thread checking ahead keeps for its reader: as far
/// as it runs ahead, twice over (the kernel has a few reads of one stream
/// in flight at once, each moving the thread on).
const READY: usize = 2 * CHECK_AHEAD as usize;

/// A thread checking chunks ahead of a reader (`Inner::check_ahead`).
pub(super) struct AheadCheck {
    /// Where it is, changed only under this lock.
    state: Mutex<AheadState>,
    /// Told each time it checked a chunk, and when it stops.
    moved: std::sync::Condvar,
    /// The chunks it checked that its reader has not yet read to their
    /// end, as read from disk: the reader is served these, rather than
    /// reading the same bytes from the file a second time. At most
    /// [`READY`] of them, in order.
    ready: Mutex<VecDeque<(u64, Bytes)>>,
}

#[derive(Clone, Copy)]
struct AheadState {
    /// The chunk it checks next.
    next: u64,
    /// Where it stops, moved on by the reader.
    until: u64,
    /// It stopped.
    done: bool,
}

impl AheadCheck {
    fn state(&self) -> Option<AheadState> {
        self.state.lock().ok().map(|s| *s)
    }

    fn update(&self, f: impl FnOnce(&mut AheadState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
        self.moved.notify_all();
    }

    /// Waits up to `linger` for the reader to move the end past `n`:
    /// whether it did.
    fn wait_moved(&self, n: u64, linger: Duration) -> bool {
        let Ok(state) = self.state.lock() else {
            return false;
        };
        self.moved
            .wait_timeout_while(state, linger, |s| s.until <= n)
            .is_ok_and(|(s, _)| s.until > n)
    }

    /// Keeps chunk `n`, checked, for its reader.
    fn keep(&self, n: u64, bytes: Bytes) {
        if let Ok(mut ready) = self.ready.lock() {
            // A reader that went back (or jumped) leaves chunks it will not
            // read: the oldest go first.
            while ready.len() >= READY {
                ready.pop_front();
            }
            ready.push_back((n, bytes));
        }
    }

    /// `[offset, end)` of the blob, if every chunk of it is among those
    /// kept (`cs`: the chunk size); the chunks it reads to their end are
    /// let go. One chunk's bytes are a slice of it, not a copy.
    fn take(&self, cs: u64, offset: u64, end: u64) -> Option<Bytes> {
        let mut ready = self.ready.lock().ok()?;
        let (c0, c1) = (offset / cs, (end - 1) / cs);
        let chunk = |n: u64| ready.iter().find(|(k, _)| *k == n).map(|(_, b)| b);
        let bytes = if c0 == c1 {
            let b = chunk(c0)?;
            let start = (offset - c0 * cs) as usize;
            let stop = ((end - c0 * cs) as usize).min(b.len());
            (start < stop).then(|| b.slice(start..stop))?
        } else {
            let mut out = BytesMut::with_capacity((end - offset) as usize);
            for n in c0..=c1 {
                let b = chunk(n)?;
                let start = offset.saturating_sub(n * cs) as usize;
                let stop = ((end - n * cs) as usize).min(b.len());
                out.extend_from_slice(b.get(start..stop)?);
            }
            out.freeze()
        };
        if bytes.len() as u64 != end - offset {
            return None;
        }
        ready.retain(|(k, b)| k * cs + b.len() as u64 > end);
        Some(bytes)
    }
}

impl Inner {
    /// Whether a strict read of `blob` needs the whole blob first: no
    /// chunk table reached from the reference checks its chunks alone.
    pub(super) fn whole_first(&self, blob: &Descriptor) -> bool {
        self.options.verify == Verify::Strict && self.table(blob).is_none()
    }

    /// The chunk digest table a layer index gave for a blob, if any.
    pub(super) fn table(&self, blob: &Descriptor) -> Option<Arc<ChunkTable>> {
        self.tables.lock().ok()?.get(&blob.digest).cloned()
    }

    /// The chunk digest table to check a blob's bytes against, in this
    /// cache's chunk size, if there is one: taken in this process, stored
    /// beside the complete blob (a stored table of another chunk size is
    /// not used), or given. The cache's own tables come first: they are of
    /// BLAKE3, a quarter of the cost of a given table's sha256.
    pub(super) fn rest_table(&self, blob: &Descriptor) -> Option<Arc<ChunkTable>> {
        if let Some(t) = self.own_tables.lock().ok()?.get(&blob.digest).cloned() {
            return Some(t);
        }
        let stored = self
            .store
            .as_ref()
            .and_then(|s| s.get_table(&blob.digest, blob.size))
            .filter(|(chunk_size, _)| *chunk_size == self.options.chunk_size);
        let Some((_, table)) = stored else {
            return self.table(blob);
        };
        let table = Arc::new(table);
        self.own_tables
            .lock()
            .ok()?
            .insert(blob.digest.clone(), table.clone());
        Some(table)
    }

    /// Keeps a table taken from bytes that hashed to the blob's digest, if
    /// it is in this cache's chunk size.
    pub(super) fn keep_table(&self, blob: &Descriptor, chunk_size: u64, table: ChunkTable) {
        if chunk_size == self.options.chunk_size
            && table.len() as u64 == blob.size.div_ceil(chunk_size)
            && let Ok(mut t) = self.own_tables.lock()
        {
            t.insert(blob.digest.clone(), Arc::new(table));
        }
    }

    /// Whether chunk `n` of a complete blob was checked in this process.
    pub(super) fn is_checked(&self, digest: &Digest, n: u64) -> bool {
        self.checked.lock().is_ok_and(|c| bit_set(c.get(digest), n))
    }

    /// The chunks of a complete blob this process has not checked yet.
    pub(super) fn unchecked(&self, blob: &Descriptor) -> Vec<u64> {
        let chunks = blob.size.div_ceil(self.options.chunk_size);
        let Ok(c) = self.checked.lock() else {
            return (0..chunks).collect();
        };
        let bits = c.get(&blob.digest);
        (0..chunks).filter(|&n| !bit_set(bits, n)).collect()
    }

    /// Records chunks `chunks` of a complete blob as checked.
    pub(super) fn mark_checked(&self, blob: &Descriptor, chunks: std::ops::Range<u64>) {
        let words = blob.size.div_ceil(self.options.chunk_size).div_ceil(64) as usize;
        if let Ok(mut c) = self.checked.lock() {
            let bits = c
                .entry(blob.digest.clone())
                .or_insert_with(|| vec![0; words]);
            for n in chunks {
                if let Some(w) = bits.get_mut((n / 64) as usize) {
                    *w |= 1 << (n % 64);
                }
            }
        }
    }

    pub(super) fn forget_checked(&self, digest: &Digest) {
        if let Ok(mut c) = self.checked.lock() {
            c.remove(digest);
        }
    }

    /// A complete blob whose bytes on disk failed their check: dropped. Its
    /// table, taken from verified bytes, stays (on disk and in memory):
    /// chunks fetched again are checked against it.
    pub(super) fn drop_corrupt_complete(&self, store: &DiskStore, blob: &Descriptor, e: &Error) {
        Counters::bump(&self.counters.verify_failures);
        tracing::error!(digest = %blob.digest, error = %e, "a complete blob in the cache failed its check on disk; dropped");
        self.forget_handle(&blob.digest);
        self.forget_checked(&blob.digest);
        self.memory.remove_blob(&blob.digest);
        store.remove_complete(&blob.digest);
    }

    /// Lets go of the handle of a complete blob being dropped, and of any
    /// being opened meanwhile ([`Inner::complete_handle`]).
    pub(super) fn forget_handle(&self, digest: &Digest) {
        if let Ok(mut h) = self.handles.lock() {
            self.drops.fetch_add(1, Ordering::AcqRel);
            h.pop(digest);
        }
    }

    pub(super) fn known_bad(&self, digest: &Digest) -> Option<Error> {
        self.bad.lock().ok().and_then(|b| b.get(digest).cloned())
    }

    /// Chunk `n` (in the cache's chunk size) from disk, if it is there and
    /// may be served.
    pub(super) fn chunk_from_disk(
        &self,
        store: &DiskStore,
        blob: &Descriptor,
        n: u64,
        checked: bool,
    ) -> Result<Option<Bytes>> {
        let cs = self.options.chunk_size;
        let offset = n * cs;
        let len = (cs.min(blob.size - offset)) as usize;
        if let Some(f) = self.complete_handle(store, &blob.digest)? {
            return self.checked_from_complete(store, blob, &f, n, Some(&f));
        }
        let table = self.table(blob);
        if checked && self.options.verify == Verify::Strict && table.is_none() {
            return Ok(None);
        }
        let partial = match self
            .partials
            .lock()
            .ok()
            .and_then(|p| p.get(&blob.digest).cloned())
        {
            Some(p) => p,
            None => return Ok(None),
        };
        if partial
            .missing(partial.chunks_covering(offset, offset + len as u64))
            .is_empty()
        {
            let bytes = partial.read(offset, len)?;
            self.read_from_disk(bytes.len());
            if let Some(table) = table
                && let Err(e) = check_chunk(&table, &blob.digest, n, &bytes)
            {
                // Written unchecked (by a lazy reader of another chunk
                // size, or damaged on disk): never served, fetched afresh.
                Counters::bump(&self.counters.verify_failures);
                store.drop_partial(&blob.digest);
                self.forget_partial(&blob.digest);
                return Err(e);
            }
            return Ok(Some(Bytes::from(bytes)));
        }
        Ok(None)
    }

    /// Chunk `n` of a complete blob, checked against the blob's table the
    /// first time this process reads it (a blob with no table yet, from an
    /// older cache, is hashed whole once to take one). A chunk that fails,
    /// or is cut short, drops the blob: `None`, so the read fetches it
    /// again, or, with no network to fetch from, the error naming the blob.
    ///
    /// `handle` is the cached handle `f` came from, if it did: another
    /// reader may drop the blob and a fetch put a new file in its place
    /// (whose chunks it marks checked) while this one still reads the old
    /// file through it. The marks are trusted only while the handle is
    /// still the one cached, read after them; a chunk of a handle no longer
    /// cached that fails is read again through the current one, and drops
    /// nothing.
    pub(super) fn checked_from_complete(
        &self,
        store: &DiskStore,
        blob: &Descriptor,
        f: &File,
        n: u64,
        handle: Option<&Arc<File>>,
    ) -> Result<Option<Bytes>> {
        let cs = self.options.chunk_size;
        let (offset, len) = (n * cs, cs.min(blob.size - n * cs) as usize);
        let path = store.blob_path(&blob.digest);
        let current = || {
            handle.is_none_or(|h| {
                self.handles
                    .lock()
                    .is_ok_and(|c| c.peek(&blob.digest).is_some_and(|c| Arc::ptr_eq(c, h)))
            })
        };
        let read = DiskStore::read_at(f, &path, offset, len);
        if let Ok(bytes) = &read {
            self.read_from_disk(bytes.len());
        }
        let read = match read {
            // The mark first, then the handle: a mark set for a file that
            // replaced this one was set after this handle left the cache.
            Ok(bytes) if self.is_checked(&blob.digest, n) && current() => {
                return Ok(Some(Bytes::from(bytes)));
            }
            read => read,
        };
        let table = match self.rest_table(blob) {
            Some(t) => t,
            None => match self.take_table(store, blob, f)? {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        let damaged = |detail: String| {
            Error::digest_mismatch(
                format!(
                    "chunk {n} of blob {} in the cache at {} ({detail}; dropped)",
                    blob.digest,
                    path.display()
                ),
                table
                    .digests
                    .get(n as usize)
                    .map_or_else(|| "no such chunk".into(), hex::encode),
                detail,
            )
        };
        let outcome = match read {
            Ok(bytes) => check_chunk(&table, &blob.digest, n, &bytes).map(|()| bytes),
            Err(Error::ShortRead { got, .. }) => {
                Err(damaged(format!("cut short: {got} of {len} bytes")))
            }
            Err(e) => return Err(e),
        };
        match outcome {
            Ok(bytes) => {
                self.mark_checked(blob, n..n + 1);
                Ok(Some(Bytes::from(bytes)))
            }
            Err(_) if !current() => {
                // A file another reader already dropped: read the chunk
                // again through the handle cached now, if there is one.
                match self.complete_handle(store, &blob.digest)? {
                    Some(now) if handle.is_some_and(|h| !Arc::ptr_eq(h, &now)) => {
                        self.checked_from_complete(store, blob, &now, n, Some(&now))
                    }
                    _ => Ok(None),
                }
            }
            Err(e) => {
                self.drop_corrupt_complete(store, blob, &e);
                if self.source.can_fetch() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Whether chunks `c0..=c1` of a complete blob were all checked in
    /// this process.
    pub(super) fn all_checked(&self, digest: &Digest, c0: u64, c1: u64) -> bool {
        self.checked.lock().is_ok_and(|c| {
            let bits = c.get(digest);
            (c0..=c1).all(|n| bit_set(bits, n))
        })
    }

    /// Keeps the next [`CHECK_AHEAD`] chunks of a complete blob read in
    /// sequence (chunks `c0..=c1` now, and the one before or the first of
    /// them checked already) checked ahead of the reader, by one blocking
    /// thread per blob that follows the reader as long as it reads on. The
    /// reader then finds them checked, and in the page cache: reading and
    /// hashing overlap, on two cores, instead of taking turns. A chunk that
    /// fails is handled as the reader's own check would
    /// (`checked_from_complete`: the blob is dropped), and the thread stops
    /// there.
    pub(super) fn check_ahead(self: &Arc<Self>, blob: &Descriptor, c0: u64, c1: u64) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let chunks = blob.size.div_ceil(self.options.chunk_size);
        let until = (c1 + 1 + CHECK_AHEAD).min(chunks);
        // Only a complete blob this process has open (its first read opened
        // it): a partial one has no bytes at rest to check.
        let open = self
            .handles
            .lock()
            .is_ok_and(|h| h.peek(&blob.digest).is_some());
        if c1 + 1 >= until || !open || self.closed.load(Ordering::Acquire) {
            return;
        }
        let first = {
            let Ok(c) = self.checked.lock() else {
                return;
            };
            let bits = c.get(&blob.digest);
            let sequential = c0 == 0 || bit_set(bits, c0 - 1) || bit_set(bits, c0);
            if !sequential {
                return;
            }
            match (c1 + 1..until).find(|&n| !bit_set(bits, n)) {
                Some(n) => n,
                None => return,
            }
        };
        let ahead = {
            let Ok(mut running) = self.checking.lock() else {
                return;
            };
            if let Some(ahead) = running.get(&blob.digest) {
                // Already following this reader: it goes on further.
                ahead.update(|s| s.until = s.until.max(until));
                return;
            }
            let ahead = Arc::new(AheadCheck {
                state: Mutex::new(AheadState {
                    next: first,
                    until,
                    done: false,
                }),
                moved: std::sync::Condvar::new(),
                ready: Mutex::new(VecDeque::new()),
            });
            running.insert(blob.digest.clone(), ahead.clone());
            ahead
        };
        let inner = self.clone();
        let blob = blob.clone();
        tokio::task::spawn_blocking(move || {
            let _pin = inner.pin(&blob.digest);
            // Where the kernel was last advised to read up to.
            #[cfg(unix)]
            let mut advised = 0u64;
            while let Some(AheadState { next: n, until, .. }) = ahead.state() {
                if n >= until {
                    // Caught up with the reader: it usually moves the end
                    // on within a read or two.
                    if ahead.wait_moved(n, LINGER) {
                        continue;
                    }
                    // Stop, unless the reader moved the end meanwhile (it
                    // does so under this lock).
                    let Ok(mut running) = inner.checking.lock() else {
                        break;
                    };
                    if ahead.state().is_some_and(|s| s.until > n) {
                        continue;
                    }
                    running.remove(&blob.digest);
                    drop(running);
                    ahead.update(|s| s.done = true);
                    return;
                }
                if inner.closed.load(Ordering::Acquire) {
                    break;
                }
                if !inner.is_checked(&blob.digest, n) {
                    // Only a complete blob with a table: one without is
                    // hashed whole by the reader's first read, not here.
                    if inner.rest_table(&blob).is_none() {
                        break;
                    }
                    let Ok(Some(f)) = inner.complete_handle(&store, &blob.digest) else {
                        break;
                    };
                    // The kernel reads the next chunks in while this one is
                    // hashed: the disk and the hashing overlap too.
                    #[cfg(unix)]
                    if advised.max(n + 1) < until {
                        let cs = inner.options.chunk_size;
                        let (start, end) = (advised.max(n + 1) * cs, (until * cs).min(blob.size));
                        advised = until;
                        let advised = rustix::fs::fadvise(
                            &*f,
                            start,
                            std::num::NonZeroU64::new(end - start),
                            rustix::fs::Advice::WillNeed,
                        );
                        if let Err(e) = advised {
                            tracing::trace!(error = %e, "fadvise");
                        }
                    }
                    match inner.checked_from_complete(&store, &blob, &f, n, Some(&f)) {
                        Ok(Some(bytes)) => ahead.keep(n, bytes),
                        _ => break,
                    }
                }
                ahead.update(|s| s.next = n + 1);
            }
            if let Ok(mut running) = inner.checking.lock() {
                running.remove(&blob.digest);
            }
            ahead.update(|s| s.done = true);
        });
    }

    /// Counts bytes read from the cache's files.
    pub(super) fn read_from_disk(&self, bytes: usize) {
        self.counters
            .disk_bytes_read
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `[offset, end)` of a blob from the chunks the thread checking ahead
    /// of its reader read and checked, if it has them all.
    pub(super) fn checked_ahead(&self, digest: &Digest, offset: u64, end: u64) -> Option<Bytes> {
        let ahead = self.checking.lock().ok()?.get(digest).cloned()?;
        ahead.take(self.options.chunk_size, offset, end)
    }

    /// Waits while the thread checking ahead of a reader has chunks
    /// `c0..=c1` of a blob still to check: whether they are all checked
    /// now. Returns at once, false, when no such thread has them all in
    /// hand.
    pub(super) fn wait_checked(&self, digest: &Digest, c0: u64, c1: u64) -> bool {
        let ahead = self
            .checking
            .lock()
            .ok()
            .and_then(|running| running.get(digest).cloned());
        let Some(ahead) = ahead else {
            return self.all_checked(digest, c0, c1);
        };
        let Ok(mut state) = ahead.state.lock() else {
            return false;
        };
        loop {
            if self.all_checked(digest, c0, c1) {
                return true;
            }
            let AheadState { next, until, done } = *state;
            let in_hand = self.checked.lock().is_ok_and(|c| {
                let bits = c.get(digest);
                (c0..=c1).all(|n| bit_set(bits, n) || (next..until).contains(&n))
            });
            if done || !in_hand {
                return false;
            }
            // Told after each chunk; the timeout only bounds a wait on a
            // thread that is stuck on its disk.
            state = match ahead.moved.wait_timeout(state, Duration::from_secs(1)) {
                Ok((s, timeout)) if !timeout.timed_out() => s,
                _ => return self.all_checked(digest, c0, c1),
            };
        }
    }

    /// Takes the table of a complete blob that has none (a cache written by
    /// an older ocifs, a blob adopted whole, a table of another chunk size)
    /// by hashing the file whole: stored if the blob checks out, else the
    /// blob is dropped (`None`, or the error with no network).
    pub(super) fn take_table(
        &self,
        store: &DiskStore,
        blob: &Descriptor,
        f: &File,
    ) -> Result<Option<Arc<ChunkTable>>> {
        let cs = self.options.chunk_size;
        let path = store.blob_path(&blob.digest);
        let hasher = store::hash_file(f, cs, blob.size, ChunkHash::AT_REST)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let len = hasher.len();
        self.read_from_disk(len as usize);
        let (actual, digests) = hasher.finish();
        if len != blob.size || actual != blob.digest {
            let e = Error::blob_mismatch(
                &blob.digest,
                format_args!(
                    "in the cache at {} ({len} bytes, {} expected; dropped)",
                    path.display(),
                    blob.size
                ),
                actual,
            );
            self.drop_corrupt_complete(store, blob, &e);
            return if self.source.can_fetch() {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if let Err(e) = store.put_table(&blob.digest, cs, blob.size, &digests) {
            tracing::warn!(digest = %blob.digest, error = %e, "cannot store the chunk digest table");
        }
        self.keep_table(blob, cs, digests);
        self.mark_checked(blob, 0..blob.size.div_ceil(cs));
        Ok(self.rest_table(blob))
    }
}

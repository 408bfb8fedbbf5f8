//! Whole blobs: strict mode's one stream of a blob, hashed whole and chunk
//! by chunk as it is written, and the promotion of a blob that checked out
//! into `blobs/` (with its chunk table beside it).

use super::*;
use store::ChunkLock;

impl Inner {
    /// Makes the blob complete and verified on disk (remote) or verified in
    /// place (local).
    pub(super) async fn ensure_complete(self: &Arc<Self>, blob: &Descriptor) -> Result<()> {
        let Some(store) = self.store.clone() else {
            if self
                .verified_local
                .lock()
                .is_ok_and(|v| v.contains(&blob.digest))
            {
                return Ok(());
            }
            let inner = self.clone();
            let b = blob.clone();
            return self
                .single_flight((blob.digest.clone(), WHOLE), async move {
                    let cs = inner.options.chunk_size;
                    let table =
                        verify_stream(inner.source.as_ref(), &b, &inner.counters, cs).await?;
                    // Every later read of the layout's file is checked
                    // against this: its owner may rewrite it in place.
                    inner.keep_table(&b, cs, table);
                    if let Ok(mut v) = inner.verified_local.lock() {
                        v.insert(b.digest.clone());
                    }
                    Ok(())
                })
                .await;
        };
        if store.has_complete(&blob.digest) || self.promoting_file(&blob.digest).is_some() {
            return Ok(());
        }
        let inner = self.clone();
        let b = blob.clone();
        self.single_flight((blob.digest.clone(), WHOLE), async move {
            if store.has_complete(&b.digest) || inner.promoting_file(&b.digest).is_some() {
                return Ok(());
            }
            let result = inner
                .with_room(&b, b.size, || inner.clone().stream_locked(store.clone(), b.clone()))
                .await;
            match &result {
                Ok(()) => Counters::bump(&inner.counters.blobs_verified),
                Err(e @ Error::DigestMismatch { .. }) => {
                    Counters::bump(&inner.counters.verify_failures);
                    inner.memory.remove_blob(&b.digest);
                    tracing::error!(digest = %b.digest, error = %e, "blob failed verification; dropped from the cache");
                }
                Err(_) => {}
            }
            inner.maybe_evict();
            result
        })
        .await
    }

    /// Streams `blob` whole into the cache under its stream lock: one process
    /// streams a blob at a time, and another waiting here finds it complete
    /// when it gets the lock. A blob that checked out is served from here
    /// on; it is synced and moved into place behind its readers, the lock
    /// held until it is (`promote_behind`).
    pub(super) async fn stream_locked(
        self: Arc<Self>,
        store: Arc<DiskStore>,
        blob: Descriptor,
    ) -> Result<()> {
        let partial = self.partial(&store, &blob)?;
        let locking = partial.clone();
        let lock = tokio::task::spawn_blocking(move || locking.lock_stream())
            .await
            .map_err(join_error)??;
        let streamed = if store.has_complete(&blob.digest) {
            Ok(None)
        } else {
            self.stream_whole(&store, &blob, &partial).await
        };
        match streamed {
            Ok(Some(table)) => {
                self.promote_behind(&store, &blob, &partial, lock, table)
                    .await
            }
            other => {
                drop(lock);
                self.forget_partial(&blob.digest);
                other.map(|_| ())
            }
        }
    }

    /// Syncs a partial blob that checked out (`table`: its chunk table)
    /// and moves it into place, on a blocking thread of its own, while its
    /// readers are served from the file it was written to (which becomes
    /// the complete blob): a strict reader waits for the hash, not for the
    /// disk. The stream lock is held until the blob is in place, so
    /// another process waiting for it finds it complete. A blob that
    /// cannot be moved into place (the disk failed) is still served from
    /// its file in this process, every chunk read checked against its
    /// table; a later process finds it partial, with every chunk, and
    /// hashes it again.
    async fn promote_behind(
        self: &Arc<Self>,
        store: &Arc<DiskStore>,
        blob: &Descriptor,
        partial: &Arc<Partial>,
        lock: Option<ChunkLock>,
        table: ChunkTable,
    ) -> Result<()> {
        let (s, d, p) = (store.clone(), blob.digest.clone(), partial.clone());
        let promote = move || {
            let r = s.promote_verified(&p, &d, &table);
            drop(lock);
            r
        };
        let file = match partial.open_verified() {
            Ok(f) => Arc::new(f),
            Err(e) => {
                // No second handle: in place first, then served.
                tracing::debug!(error = %e, "promoting in line");
                let r = tokio::task::spawn_blocking(promote)
                    .await
                    .map_err(join_error)
                    .and_then(|r| r);
                if r.is_ok() {
                    self.forget_partial(&blob.digest);
                }
                return r;
            }
        };
        let (done, waiting) = watch::channel(None);
        if let Ok(mut m) = self.promoting.lock() {
            m.insert(
                blob.digest.clone(),
                Promoting {
                    file,
                    done: waiting,
                },
            );
        }
        let inner = self.clone();
        let digest = blob.digest.clone();
        // Blocking threads the runtime started are run to their end when it
        // shuts down: a process that ends meanwhile leaves it in place.
        tokio::task::spawn_blocking(move || {
            let result = promote();
            match &result {
                Ok(()) => inner.forget_partial(&digest),
                // Kept, every chunk marked: later reads in this process are
                // served from it, not fetched again.
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "a blob that checked out could not be moved into place in the cache; served from its partial file");
                    if let Ok(mut failed) = inner.promote_failed.lock() {
                        failed.insert(digest.clone(), e.clone());
                    }
                }
            }
            // Out of the map once in place (or failed): a handle looked
            // for now is the complete blob's.
            if let Ok(mut m) = inner.promoting.lock() {
                m.remove(&digest);
            }
            let _ = done.send(Some(result));
        });
        Ok(())
    }

    /// The file of a blob that checked out in this process and is being
    /// moved into place, if there is one.
    pub(super) fn promoting_file(&self, digest: &Digest) -> Option<Arc<File>> {
        self.promoting
            .lock()
            .ok()?
            .get(digest)
            .map(|p| p.file.clone())
    }

    /// Waits until a blob that checked out in this process is in place in
    /// the cache (at once if none is being moved): whether it could be.
    pub(super) async fn promoted(&self, digest: &Digest) -> Result<()> {
        let waiting = self
            .promoting
            .lock()
            .ok()
            .and_then(|m| m.get(digest).map(|p| p.done.clone()));
        if let Some(mut done) = waiting {
            // Its thread ended without a word (the runtime shut down).
            let _ = done.wait_for(Option::is_some).await;
        }
        // Said once, by whichever looks first.
        match self
            .promote_failed
            .lock()
            .ok()
            .and_then(|mut f| f.remove(digest))
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Fetches the rest of a blob with one streaming request from its first
    /// missing chunk, hashing as the bytes arrive (the present prefix is
    /// hashed from disk first), and promotes it if the digest checks out. A
    /// broken stream resumes where it broke ([`resume::Resuming`]).
    pub(super) async fn stream_whole(
        self: &Arc<Self>,
        store: &Arc<DiskStore>,
        blob: &Descriptor,
        partial: &Arc<Partial>,
    ) -> Result<Option<ChunkTable>> {
        let p = partial.clone();
        let (start, hasher) = tokio::task::spawn_blocking(move || -> Result<_> {
            let start = p.first_missing().map_or(p.size, |n| n * p.chunk_size);
            Ok((start, p.hash_prefix(start)?))
        })
        .await
        .map_err(join_error)??;
        if start >= blob.size {
            return self.finish_stream(store, blob, hasher);
        }
        match self
            .stream_into(store, blob, partial, start, Some(hasher), None)
            .await?
        {
            Streamed::End(Some(hasher)) => self.finish_stream(store, blob, *hasher),
            Streamed::End(None) | Streamed::Complete | Streamed::Stopped => Ok(None),
        }
    }

    /// The loop behind every stream of a blob into its partial: one
    /// request from `start` on (resumed where it breaks), written in
    /// batches of whole chunks under their locks, each batch hashed into
    /// `hasher` (when there is one) while it is written.
    ///
    /// With `ahead` (a lazy reader's stream, `Inner::stream_ahead`) each
    /// batch is synced before it is marked, as every chunk a lazy read may
    /// serve is, and announced to the readers waiting for it
    /// ([`Writeback`]); the stream
    /// keeps at most [`AHEAD_LEAD`] past what they want, and stops when
    /// they want no more for [`AHEAD_IDLE`] or the cache closes.
    pub(super) async fn stream_into(
        self: &Arc<Self>,
        store: &Arc<DiskStore>,
        blob: &Descriptor,
        partial: &Arc<Partial>,
        start: u64,
        mut hasher: Option<BlobHasher>,
        ahead: Option<&Arc<StreamAhead>>,
    ) -> Result<Streamed> {
        /// Bytes written per blocking write (whole chunks).
        const BATCH: u64 = 4 << 20;
        let cs = partial.chunk_size;
        let hashing = hasher.is_some();
        let lazy = ahead.is_some();
        let mut stream =
            resume::Resuming::new(self.source.as_ref(), blob, &self.counters, start, cs);
        let writeback = Writeback::start(partial, blob.size - start, ahead.cloned());
        type Writing = tokio::task::JoinHandle<(Option<BlobHasher>, Result<bool>)>;
        // The batch being written: its task, first chunk and length.
        let mut writing: Option<(Writing, u64, u64)> = None;
        let mut pos = start;
        // What arrived and is not yet written, as it came off the socket.
        let mut pending = Pieces::default();
        // Waits for the batch being written; `Some(hasher)` to go on.
        macro_rules! settle {
            ($batch:expr) => {{
                let (handle, first, len): (Writing, u64, u64) = $batch;
                let (h, written) = handle.await.map_err(join_error)?;
                if written? {
                    // Another process promoted the blob: complete.
                    return Ok(Streamed::Complete);
                }
                writeback.wrote(first, len);
                h
            }};
        }
        loop {
            if let Some(a) = ahead {
                if self.closed.load(Ordering::Acquire) {
                    return Ok(Streamed::Stopped);
                }
                let reach = pos + pending.len;
                if reach >= a.demand().saturating_add(AHEAD_LEAD) {
                    if let Some(batch) = writing.take() {
                        hasher = settle!(batch);
                    }
                    if !a.wait_for_demand(reach).await {
                        return Ok(Streamed::Stopped);
                    }
                }
            }
            let next = match stream.next().await {
                Ok(next) => next,
                Err(e) => {
                    if let Some((last, ..)) = writing.take() {
                        let _ = last.await;
                    }
                    return Err(e);
                }
            };
            let end_of_stream = next.is_none();
            if let Some(bytes) = next {
                if pos + pending.len + bytes.len() as u64 > blob.size {
                    store.drop_partial(&blob.digest);
                    return Err(Error::blob_mismatch(
                        &blob.digest,
                        format_args!(
                            "(the registry sent more than its {} bytes; dropped)",
                            blob.size
                        ),
                        "a longer blob",
                    ));
                }
                pending.push(bytes);
            }
            // Write whole chunks (and the short last one at the end).
            let reached_end = pos + pending.len == blob.size;
            let whole = if reached_end {
                pending.len
            } else {
                pending.len / cs * cs
            };
            if whole > 0 && (whole >= BATCH || reached_end) {
                let bytes = pending.take(whole);
                // One batch is hashed and written while the next one
                // arrives; the hasher passes from batch to batch.
                if let Some(batch) = writing.take() {
                    hasher = settle!(batch);
                }
                let (p, mut h) = (
                    partial.clone(),
                    hasher
                        .take()
                        .or_else(|| hashing.then(|| BlobHasher::new(cs, ChunkHash::AT_REST))),
                );
                let (s, d) = (store.clone(), blob.digest.clone());
                let first = pos / cs;
                self.counters
                    .misses
                    .fetch_add(whole.div_ceil(cs), Ordering::Relaxed);
                writing = Some((
                    tokio::task::spawn_blocking(move || {
                        let r = write_batch(&s, &d, &p, first, &bytes, h.as_mut(), lazy);
                        (h, r)
                    }),
                    first,
                    whole,
                ));
                pos += whole;
                self.disk_usage.fetch_add(whole, Ordering::Relaxed);
            }
            if end_of_stream {
                break;
            }
        }
        if let Some(batch) = writing.take() {
            hasher = settle!(batch);
        }
        if lazy {
            // Every chunk marked before the caller looks for a whole blob.
            writeback.finish().await?;
        }
        Ok(Streamed::End(hasher.map(Box::new)))
    }

    /// Checks a streamed blob's digest; one that checks out has its chunk
    /// table kept, and its chunks count as checked in this process (hashed
    /// here on the way in): the table to promote it with.
    pub(super) fn finish_stream(
        &self,
        store: &Arc<DiskStore>,
        blob: &Descriptor,
        hasher: BlobHasher,
    ) -> Result<Option<ChunkTable>> {
        let len = hasher.len();
        let chunk_size = hasher.chunk_size();
        let (actual, table) = hasher.finish();
        if len != blob.size || actual != blob.digest {
            store.drop_partial(&blob.digest);
            return Err(Error::blob_mismatch(
                &blob.digest,
                format_args!(
                    "in {} ({len} bytes, {} expected; dropped from the cache)",
                    self.source.name(),
                    blob.size
                ),
                actual,
            ));
        }
        // Hashed here on the way in, chunk by chunk: checked in this process.
        self.keep_table(blob, chunk_size, table.clone());
        if chunk_size == self.options.chunk_size {
            self.mark_checked(blob, 0..blob.size.div_ceil(chunk_size));
        }
        Ok(Some(table))
    }

    pub(super) async fn promote(
        self: &Arc<Self>,
        store: &Arc<DiskStore>,
        blob: &Descriptor,
        partial: Arc<Partial>,
    ) -> Result<()> {
        let s = store.clone();
        let digest = blob.digest.clone();
        let result = tokio::task::spawn_blocking(move || s.promote(&partial, &digest))
            .await
            .map_err(join_error)?;
        self.forget_partial(&blob.digest);
        match result {
            Ok(hashed) => {
                Counters::bump(&self.counters.blobs_verified);
                // This promotion hashed the file whole and took its table
                // from those bytes: every chunk is checked in this process.
                if hashed && self.rest_table(blob).is_some() {
                    self.mark_checked(blob, 0..blob.size.div_ceil(self.options.chunk_size));
                }
                Ok(())
            }
            Err(e) => {
                if matches!(e, Error::DigestMismatch { .. }) {
                    Counters::bump(&self.counters.verify_failures);
                    self.memory.remove_blob(&blob.digest);
                    tracing::error!(digest = %blob.digest, error = %e, "blob failed verification; dropped from the cache");
                }
                Err(e)
            }
        }
    }

    /// Runs `attempt`, a write of `blob`'s bytes into the cache. When the
    /// cache's filesystem is full (or over quota), evicts what is not in use
    /// until `room` more bytes would fit and runs it once more; one that
    /// still finds it full drops the blob's partial chunks (they would only
    /// keep the disk full) and is an error naming the blob and the fix.
    pub(super) async fn with_room<F: Future<Output = Result<()>>>(
        self: &Arc<Self>,
        blob: &Descriptor,
        room: u64,
        mut attempt: impl FnMut() -> F,
    ) -> Result<()> {
        let first = attempt().await;
        let Some(store) = self.store.clone() else {
            return first;
        };
        match first {
            Err(e) if is_disk_full(&e) => {
                tracing::warn!(digest = %blob.digest, "the cache's filesystem is full; evicting and trying again");
                self.evict_for(&store, room).await;
            }
            done => return done,
        }
        match attempt().await {
            Err(e) if is_disk_full(&e) => {
                store.drop_partial(&blob.digest);
                Err(disk_full(&store, blob, &e))
            }
            done => done,
        }
    }
}

/// A blob that checked out in this process, being synced and moved into
/// place (`Inner::promote_behind`).
pub(super) struct Promoting {
    /// Its verified bytes, in the file they were written to (which becomes
    /// the complete blob), held with a shared lock.
    file: Arc<File>,
    /// The promotion's outcome, once it ended.
    done: watch::Receiver<Option<Result<()>>>,
}

/// Bytes of a stream not yet written, in the pieces they arrived in.
#[derive(Default)]
struct Pieces {
    pieces: std::collections::VecDeque<Bytes>,
    len: u64,
}

impl Pieces {
    fn push(&mut self, bytes: Bytes) {
        self.len += bytes.len() as u64;
        self.pieces.push_back(bytes);
    }

    /// The first `n` bytes (at most what there is), as pieces: a piece
    /// that straddles the end is split, not copied.
    fn take(&mut self, mut n: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        while n > 0 {
            let Some(mut piece) = self.pieces.pop_front() else {
                break;
            };
            if piece.len() as u64 > n {
                let head = piece.split_to(n as usize);
                self.pieces.push_front(piece);
                piece = head;
            }
            n -= piece.len() as u64;
            self.len -= piece.len() as u64;
            out.push(piece);
        }
        out
    }
}

/// Writes a stream's bytes out to disk behind it, on a thread of its own.
/// Without it the kernel keeps a large blob dirty in memory until the sync
/// before promotion, which then waits for all of it at the end (2 s a GiB
/// on the benchmark's machine); with it, writeback overlaps the stream and
/// that sync waits only for the tail. A strict stream depends on it for
/// nothing (promotion syncs the file whole). For a lazy stream it is also
/// what makes chunks servable: it marks the chunks it synced, and tells
/// the readers waiting for them ([`StreamAhead::written`]).
pub(super) struct Writeback {
    wrote: Option<std::sync::mpsc::Sender<(u64, u64)>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Writeback {
    /// Bytes a strict stream writes between two syncs.
    const EVERY: u64 = 32 << 20;

    /// A writeback thread for a stream of `len` more bytes into `p` (none
    /// for a strict stream too short to need one), marking and announcing
    /// what it synced for a lazy stream's `ahead`.
    pub(super) fn start(p: &Arc<Partial>, len: u64, ahead: Option<Arc<StreamAhead>>) -> Self {
        if ahead.is_none() && len < 2 * Self::EVERY {
            return Self {
                wrote: None,
                thread: None,
            };
        }
        let (wrote, written) = std::sync::mpsc::channel::<(u64, u64)>();
        let p = p.clone();
        let spawned = std::thread::Builder::new()
            .name("ocifs-writeback".into())
            .spawn(move || -> Result<()> {
                let mut dirty = 0;
                // Ends when the stream drops its sender.
                while let Ok(first) = written.recv() {
                    let batches: Vec<(u64, u64)> =
                        std::iter::once(first).chain(written.try_iter()).collect();
                    dirty += batches.iter().map(|(_, len)| len).sum::<u64>();
                    let Some(ahead) = &ahead else {
                        if dirty >= Self::EVERY {
                            dirty = 0;
                            p.write_back()?;
                        }
                        continue;
                    };
                    p.write_back()?;
                    for &(chunk, len) in &batches {
                        p.mark(chunk, len)?;
                    }
                    if let Some(&(chunk, len)) = batches.last() {
                        ahead.written.send_replace(chunk * p.chunk_size + len);
                    }
                }
                Ok(())
            });
        match spawned {
            Ok(thread) => Self {
                wrote: Some(wrote),
                thread: Some(thread),
            },
            Err(_) => Self {
                wrote: None,
                thread: None,
            },
        }
    }

    /// The `len` bytes from chunk `first` on are in the file.
    pub(super) fn wrote(&self, first: u64, len: u64) {
        if let Some(w) = &self.wrote {
            let _ = w.send((first, len));
        }
    }

    /// Waits until everything written is synced (and marked).
    pub(super) async fn finish(mut self) -> Result<()> {
        self.wrote = None;
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(join_error)?
            .unwrap_or_else(|_| {
                Err(Error::io(
                    "writing a stream back",
                    std::io::Error::other("the writeback thread panicked"),
                ))
            })
    }
}

/// Writes a batch of whole chunks of a stream into `p`, under their
/// chunk lock, and hashes what the blob on disk holds for them: the
/// streamed bytes where they are written, the bytes already there where
/// another writer (a lazy reader of another process) was first. Nothing is
/// written once the blob is complete: another process promoted the file
/// this partial wrote into, and it is the verified blob now. Returns
/// whether the blob was found complete.
///
/// With every writer following these rules (chunks written under their
/// lock, present chunks never rewritten, nothing written once complete),
/// the bytes a promotion hashed are the bytes of the blob it promotes, and
/// stay so.
pub(super) fn write_batch(
    store: &DiskStore,
    digest: &Digest,
    p: &Partial,
    first: u64,
    pieces: &[Bytes],
    hasher: Option<&mut BlobHasher>,
    defer_marks: bool,
) -> Result<bool> {
    let cs = p.chunk_size as usize;
    let len: usize = pieces.iter().map(Bytes::len).sum();
    let count = len.div_ceil(cs) as u64;
    if count == 0 {
        return Ok(false);
    }
    let last = first + count - 1;
    let _lock = match p.lock_chunks(first, last) {
        Ok(lock) => lock,
        // Evicted or promoted by another process meanwhile: this
        // stream ends; the reader looks again (a complete blob, or a
        // new generation to stream into).
        Err(_) if p.is_gone() => return Ok(true),
        Err(e) => return Err(e),
    };
    if store.has_complete(digest) {
        return Ok(true);
    }
    let missing = p.missing(first..=last);
    let gone = |e: Error| if p.is_gone() { Ok(true) } else { Err(e) };
    let write = |n: u64, bytes: &[u8]| {
        if defer_marks {
            p.write_unmarked(n, bytes)
        } else {
            p.write_chunks(n, bytes, false)
        }
    };
    if missing.len() as u64 == count {
        // The common case: the whole batch is new: written as it came off
        // the socket, piece by piece (no copy into one buffer), and marked
        // once, on a thread of its own while the pieces are hashed.
        let written = std::thread::scope(|s| {
            let writing = s.spawn(|| {
                p.write_pieces(first, pieces)?;
                if defer_marks {
                    Ok(())
                } else {
                    p.mark(first, len as u64)
                }
            });
            if let Some(h) = hasher {
                for piece in pieces {
                    h.update(piece);
                }
            }
            writing.join()
        });
        return match written {
            Ok(w) => w.map(|()| false).or_else(gone),
            Err(_) => Err(Error::io(
                "writing a batch of chunks",
                std::io::Error::other("the writing thread panicked"),
            )),
        };
    }
    // Another writer was first for some chunks: chunk by chunk, from one
    // buffer (rare: two processes streaming one blob).
    let bytes: Vec<u8> = pieces.concat();
    let mut hasher = hasher;
    for (n, chunk) in (first..).zip(bytes.chunks(cs)) {
        if missing.binary_search(&n).is_err() {
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&p.read(n * p.chunk_size, chunk.len())?);
            }
        } else {
            if let Some(h) = hasher.as_deref_mut() {
                h.update(chunk);
            }
            if let Err(e) = write(n, chunk) {
                return gone(e);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_batch_is_taken_from_its_pieces_split_where_it_ends_and_never_joined() {
        let mut p = Pieces::default();
        for piece in [&b"abc"[..], b"defgh", b"ij"] {
            p.push(Bytes::copy_from_slice(piece));
        }
        let batch = p.take(4);
        assert_eq!(
            batch,
            vec![Bytes::from_static(b"abc"), Bytes::from_static(b"d")]
        );
        assert_eq!(p.len, 6);
        let rest = p.take(100);
        assert_eq!(rest.concat(), b"efghij");
        assert_eq!(p.len, 0);
        assert!(p.take(1).is_empty());
    }
}

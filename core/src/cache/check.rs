//! Bytes at rest, checked: the chunk digest tables a blob's chunks are
//! checked against, which chunks this process checked, and the reads of
//! complete blobs from disk that check them.

use super::*;

impl Inner {
    /// The chunk digest table a layer index gave for a blob, if any.
    pub(super) fn table(&self, blob: &Descriptor) -> Option<Arc<Vec<[u8; 32]>>> {
        self.tables.lock().ok()?.get(&blob.digest).cloned()
    }

    /// The chunk digest table to check a blob's bytes against, in this
    /// cache's chunk size, if there is one: given, taken in this process,
    /// or stored beside the complete blob (a stored table of another chunk
    /// size is not used).
    pub(super) fn rest_table(&self, blob: &Descriptor) -> Option<Arc<Vec<[u8; 32]>>> {
        if let Some(t) = self.table(blob) {
            return Some(t);
        }
        if let Some(t) = self.own_tables.lock().ok()?.get(&blob.digest).cloned() {
            return Some(t);
        }
        let (chunk_size, digests) = self.store.as_ref()?.get_table(&blob.digest, blob.size)?;
        if chunk_size != self.options.chunk_size {
            return None;
        }
        let table = Arc::new(digests);
        self.own_tables
            .lock()
            .ok()?
            .insert(blob.digest.clone(), table.clone());
        Some(table)
    }

    /// Keeps a table taken from bytes that hashed to the blob's digest, if
    /// it is in this cache's chunk size.
    pub(super) fn keep_table(&self, blob: &Descriptor, chunk_size: u64, digests: Vec<[u8; 32]>) {
        if chunk_size == self.options.chunk_size
            && digests.len() as u64 == blob.size.div_ceil(chunk_size)
            && let Ok(mut t) = self.own_tables.lock()
        {
            t.insert(blob.digest.clone(), Arc::new(digests));
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
        if let Ok(mut h) = self.handles.lock() {
            h.pop(&blob.digest);
        }
        self.forget_checked(&blob.digest);
        self.memory.remove_blob(&blob.digest);
        store.remove_complete(&blob.digest);
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
    ) -> Result<Option<Bytes>> {
        let cs = self.options.chunk_size;
        let offset = n * cs;
        let len = (cs.min(blob.size - offset)) as usize;
        if let Some(f) = self.complete_handle(store, &blob.digest)? {
            return self.checked_from_complete(store, blob, &f, n, Some(&f));
        }
        let table = self.table(blob);
        if self.options.verify == Verify::Strict && table.is_none() {
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
        let read = match DiskStore::read_at(f, &path, offset, len) {
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

    /// Takes the table of a complete blob that has none (a cache written by
    /// an older ocifs, a blob adopted whole, a table of another chunk size)
    /// by hashing the file whole: stored if the blob checks out, else the
    /// blob is dropped (`None`, or the error with no network).
    pub(super) fn take_table(
        &self,
        store: &DiskStore,
        blob: &Descriptor,
        f: &File,
    ) -> Result<Option<Arc<Vec<[u8; 32]>>>> {
        let cs = self.options.chunk_size;
        let path = store.blob_path(&blob.digest);
        let hasher = store::hash_file(f, cs, blob.size)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let len = hasher.len();
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

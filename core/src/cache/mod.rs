//! The chunked read cache: the core of "fetch on first read".
//!
//! Blobs are read in fixed-size chunks. A read looks in memory
//! ([`MemoryTier`]), then on disk ([`DiskStore`], shared by every ocifs
//! process), then fetches what is missing: the missing chunks of one read are
//! merged into as few range requests as possible, each chunk is fetched once
//! however many readers wait for it (in this process by a single-flight map,
//! across processes by chunk lock files), sequential reads are followed by a
//! growing read-ahead window, and a semaphore bounds the requests in flight.
//!
//! Verification ([`Verify`]):
//! - strict (default): without a per-chunk digest table a range cannot be
//!   checked on its own, so the first read of a blob fetches the whole blob,
//!   checks its sha256, and moves it under `blobs/`; only then are bytes
//!   served. A blob that fails is dropped and the read fails.
//! - lazy: chunks are served as they arrive; once all are present the blob
//!   is checked, and on a mismatch dropped, with every later read failing.
//!
//! A local source (an OCI layout directory) is not copied to disk: in strict
//! mode each blob is hashed once in place, then read with positional reads.

mod memory;
mod offline;
mod scan;
mod store;
mod table;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use lru::LruCache;
use tokio::sync::{Semaphore, watch};

pub use memory::MemoryTier;
pub use offline::CachedSource;
pub use scan::Scanned;
pub use store::{DiskStore, Partial, StoredBlob};

use crate::blob::{BlobReader, Counters, Stats, Verify, verify_stream};
use crate::digest::{BlobHasher, Digest, check_chunk};
use crate::error::{Error, Result};
use crate::manifest::Descriptor;
use crate::source::Source;

/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;

/// How the cache behaves.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Chunk size in bytes (power of two, at least 4 KiB).
    pub chunk_size: u64,
    /// Memory tier budget in bytes.
    pub memory_budget: u64,
    /// Disk budget in bytes; least-recently-used blobs are evicted beyond it.
    pub disk_budget: u64,
    /// When bytes are checked.
    pub verify: Verify,
    /// The largest single range request.
    pub max_request: u64,
    /// The largest read-ahead window.
    pub readahead_max: u64,
    /// Range requests in flight at once, across all blobs.
    pub parallel_requests: usize,
    /// Range requests in flight at once for one blob being completed.
    pub parallel_per_blob: usize,
    /// In lazy mode, a blob up to this size is fetched whole in the
    /// background after its first read, so it gets its whole-blob check
    /// soon; one the process could not complete is dropped when the
    /// process ends, so no unchecked chunk of it outlives the process.
    /// 0 turns both off.
    pub background_fetch_max: u64,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            memory_budget: 256 << 20,
            disk_budget: 10 << 30,
            verify: Verify::Strict,
            max_request: 16 << 20,
            readahead_max: 8 << 20,
            parallel_requests: 8,
            parallel_per_blob: 4,
            background_fetch_max: 64 << 20,
        }
    }
}

/// The default cache directory: `$OCIFS_CACHE`, else `$XDG_CACHE_HOME/ocifs`,
/// else `~/.cache/ocifs` (root on a node might prefer `/var/cache/ocifs`).
pub fn default_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("OCIFS_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("ocifs")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/ocifs")))
        .or_else(|| env("LOCALAPPDATA").map(|d| d.join("ocifs")))
}

/// The result every waiter of one fetch gets.
type Flight = watch::Receiver<Option<Result<()>>>;

/// Follows one blob's reads to spot sequential access.
#[derive(Clone, Copy, Debug)]
struct Sequence {
    next: u64,
    run: u64,
    window: u64,
}

struct Inner {
    source: Arc<dyn Source>,
    store: Option<Arc<DiskStore>>,
    memory: MemoryTier,
    options: CacheOptions,
    counters: Counters,
    flights: Mutex<HashMap<(Digest, u64), Flight>>,
    failed: Mutex<HashMap<(Digest, u64), (Instant, Error)>>,
    partials: Mutex<HashMap<Digest, Arc<Partial>>>,
    handles: Mutex<LruCache<Digest, Arc<File>>>,
    pins: Mutex<HashMap<Digest, usize>>,
    verified_local: Mutex<HashSet<Digest>>,
    bad: Mutex<HashMap<Digest, Error>>,
    sequences: Mutex<HashMap<Digest, Sequence>>,
    /// Chunk digest tables given by a layer index
    /// (`ChunkCache::set_chunk_digests`): strict reads of such a blob go
    /// chunk by chunk, each fetched chunk checked.
    tables: Mutex<HashMap<Digest, Arc<Vec<[u8; 32]>>>>,
    /// Chunk digest tables this cache took itself, while it hashed a blob
    /// whole, or read from beside a complete blob: for checking bytes at
    /// rest (and fetched chunks), not for skipping the whole-blob fetch.
    own_tables: Mutex<HashMap<Digest, Arc<Vec<[u8; 32]>>>>,
    /// The chunks of complete blobs this process has read from disk and
    /// checked against their table (a bitmap per blob).
    checked: Mutex<HashMap<Digest, Vec<u64>>>,
    /// Small blobs this process fetched chunks of in lazy mode (see
    /// `CacheOptions::background_fetch_max`), and whether their background
    /// completion is running.
    lazy_small: Mutex<HashMap<Digest, bool>>,
    /// Set by `ChunkCache::close`: no chunk is written after it (a
    /// background completion still running must not leave unchecked
    /// chunks behind the drop).
    closed: AtomicBool,
    requests: Arc<Semaphore>,
    disk_usage: AtomicU64,
    evicting: AtomicBool,
}

/// The chunked read cache; a [`BlobReader`].
#[derive(Clone)]
pub struct ChunkCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkCache")
            .field("source", &self.inner.source.name())
            .field(
                "store",
                &self.inner.store.as_ref().map(|s| s.root().to_path_buf()),
            )
            .field("options", &self.inner.options)
            .finish()
    }
}

/// Keeps a blob from eviction while held.
struct Pin {
    inner: Arc<Inner>,
    digest: Digest,
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Ok(mut pins) = self.inner.pins.lock()
            && let Some(n) = pins.get_mut(&self.digest)
        {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.digest);
            }
        }
    }
}

/// Chunks a background completion fetches in one go.
const BACKGROUND_BATCH: usize = 4;

/// Whole-blob flights use this key in place of a chunk number.
const WHOLE: u64 = u64::MAX;

/// How long a fetch that failed for a transient reason, its retries spent,
/// answers a new read with the same error at once rather than being tried
/// again. The kernel follows a failed readahead with a synchronous read of
/// the same page straight away: without this, a read of a stalled registry
/// would wait out the whole `--timeout` twice.
const FAILED_FETCH_GRACE: Duration = Duration::from_secs(1);

impl Drop for Inner {
    fn drop(&mut self) {
        self.drop_unchecked_small();
    }
}

impl ChunkCache {
    /// Ends this process's use of the cache: the small blobs it read
    /// lazily and could not complete are dropped (see
    /// [`CacheOptions::background_fetch_max`]). Also done when the last
    /// handle on the cache is dropped.
    pub fn close(&self) {
        self.inner.drop_unchecked_small();
    }

    /// A cache over `source`. `store` is the disk tier; it is used only for
    /// remote sources (a local layout is already on disk).
    pub fn new(
        source: Arc<dyn Source>,
        store: Option<Arc<DiskStore>>,
        options: CacheOptions,
    ) -> Result<Self> {
        if options.chunk_size < 4096 || !options.chunk_size.is_power_of_two() {
            return Err(Error::InvalidOption {
                option: "chunk size".into(),
                value: options.chunk_size.to_string(),
                reason: "it must be a power of two of at least 4096".into(),
            });
        }
        let store = store.filter(|_| source.is_remote());
        let mut options = options;
        // Never a budget the filesystem cannot hold: at most nine tenths of
        // what the cache holds plus what is free.
        if let Some(s) = &store
            && let Some(free) = s.available()
        {
            let room = s.usage()?.saturating_add(free);
            let cap = room - room / 10;
            if cap < options.disk_budget {
                tracing::info!(
                    budget = options.disk_budget,
                    cap,
                    "cache budget capped by the filesystem's free space"
                );
                options.disk_budget = cap;
            }
        }
        let disk_usage = match &store {
            // Over budget (processes that ended while their blobs were in
            // use could not evict them): trimmed now, before anything of
            // this process is in use.
            Some(s) if s.usage()? > options.disk_budget => {
                let target = options.disk_budget - options.disk_budget / 10;
                if let Err(e) = s.evict_to(target, &|_| false) {
                    tracing::warn!(error = %e, "cache eviction failed");
                }
                s.usage()?
            }
            Some(s) => s.usage()?,
            None => 0,
        };
        let requests = Arc::new(Semaphore::new(options.parallel_requests.max(1)));
        Ok(ChunkCache {
            inner: Arc::new(Inner {
                source,
                store,
                memory: MemoryTier::new(options.memory_budget),
                options,
                counters: Counters::default(),
                flights: Mutex::new(HashMap::new()),
                failed: Mutex::new(HashMap::new()),
                partials: Mutex::new(HashMap::new()),
                handles: Mutex::new(LruCache::new(
                    NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
                )),
                pins: Mutex::new(HashMap::new()),
                verified_local: Mutex::new(HashSet::new()),
                bad: Mutex::new(HashMap::new()),
                sequences: Mutex::new(HashMap::new()),
                tables: Mutex::new(HashMap::new()),
                own_tables: Mutex::new(HashMap::new()),
                checked: Mutex::new(HashMap::new()),
                lazy_small: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                requests,
                disk_usage: AtomicU64::new(disk_usage),
                evicting: AtomicBool::new(false),
            }),
        })
    }

    /// The source behind the cache.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.inner.source
    }

    /// Fetches and verifies the whole blob (whatever the verify mode), so
    /// later reads need no network. For `ocifs prefetch`.
    pub async fn prefetch(&self, blob: &Descriptor) -> Result<()> {
        let _pin = self.inner.pin(&blob.digest);
        self.inner.ensure_complete(blob).await
    }

    /// An open file holding exactly the verified bytes of `blob`, if there
    /// is one yet: the complete copy in the cache (held with a shared lock, so
    /// no ocifs process evicts it while the file is open). For handing a file
    /// to the kernel (FUSE passthrough), which then reads it without ocifs.
    /// A local layout's files are never handed over: they are not ours, and
    /// could be rewritten in place after they were checked.
    ///
    /// Only a file whose every chunk this process has checked against the
    /// blob's table is handed over: the chunks not checked yet are read
    /// and checked now (a blob that fails is dropped, and there is no
    /// backing file). The kernel then trusts the file as it is on disk.
    pub fn backing_file(&self, blob: &Descriptor) -> Option<File> {
        let inner = &self.inner;
        let store = inner.store.as_ref()?;
        let file = store.open_complete(&blob.digest).ok().flatten()?;
        if file.metadata().ok()?.len() != blob.size {
            return None;
        }
        for n in inner.unchecked(blob) {
            if !matches!(
                inner.checked_from_complete(store, blob, &file, n),
                Ok(Some(_))
            ) {
                return None;
            }
        }
        Some(file)
    }

    /// Drops every copy of `blob` (memory, disk): for a caller that found
    /// it corrupt itself.
    pub fn discard(&self, blob: &Descriptor) {
        self.inner.memory.remove_blob(&blob.digest);
        self.inner.forget_partial(&blob.digest);
        self.inner.forget_checked(&blob.digest);
        if let Some(store) = &self.inner.store {
            store.remove(&blob.digest);
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }
}

impl Inner {
    fn pin(self: &Arc<Self>, digest: &Digest) -> Pin {
        if let Ok(mut pins) = self.pins.lock() {
            *pins.entry(digest.clone()).or_default() += 1;
        }
        Pin {
            inner: self.clone(),
            digest: digest.clone(),
        }
    }

    fn is_pinned(&self, digest: &Digest) -> bool {
        self.pins.lock().is_ok_and(|p| p.contains_key(digest))
    }

    /// The chunk digest table a layer index gave for a blob, if any.
    fn table(&self, blob: &Descriptor) -> Option<Arc<Vec<[u8; 32]>>> {
        self.tables.lock().ok()?.get(&blob.digest).cloned()
    }

    /// The chunk digest table to check a blob's bytes against, in this
    /// cache's chunk size, if there is one: given, taken in this process,
    /// or stored beside the complete blob (a stored table of another chunk
    /// size is not used).
    fn rest_table(&self, blob: &Descriptor) -> Option<Arc<Vec<[u8; 32]>>> {
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
    fn keep_table(&self, blob: &Descriptor, chunk_size: u64, digests: Vec<[u8; 32]>) {
        if chunk_size == self.options.chunk_size
            && digests.len() as u64 == blob.size.div_ceil(chunk_size)
            && let Ok(mut t) = self.own_tables.lock()
        {
            t.insert(blob.digest.clone(), Arc::new(digests));
        }
    }

    /// Whether chunk `n` of a complete blob was checked in this process.
    fn is_checked(&self, digest: &Digest, n: u64) -> bool {
        self.checked.lock().is_ok_and(|c| bit_set(c.get(digest), n))
    }

    /// The chunks of a complete blob this process has not checked yet.
    fn unchecked(&self, blob: &Descriptor) -> Vec<u64> {
        let chunks = blob.size.div_ceil(self.options.chunk_size);
        let Ok(c) = self.checked.lock() else {
            return (0..chunks).collect();
        };
        let bits = c.get(&blob.digest);
        (0..chunks).filter(|&n| !bit_set(bits, n)).collect()
    }

    /// Records chunks `chunks` of a complete blob as checked.
    fn mark_checked(&self, blob: &Descriptor, chunks: std::ops::Range<u64>) {
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

    fn forget_checked(&self, digest: &Digest) {
        if let Ok(mut c) = self.checked.lock() {
            c.remove(digest);
        }
    }

    /// A complete blob whose bytes on disk failed their check: dropped. Its
    /// table, taken from verified bytes, stays (on disk and in memory):
    /// chunks fetched again are checked against it.
    fn drop_corrupt_complete(&self, store: &DiskStore, blob: &Descriptor, e: &Error) {
        Counters::bump(&self.counters.verify_failures);
        tracing::error!(digest = %blob.digest, error = %e, "a complete blob in the cache failed its check on disk; dropped");
        if let Ok(mut h) = self.handles.lock() {
            h.pop(&blob.digest);
        }
        self.forget_checked(&blob.digest);
        self.memory.remove_blob(&blob.digest);
        store.remove_complete(&blob.digest);
    }

    fn known_bad(&self, digest: &Digest) -> Option<Error> {
        self.bad.lock().ok().and_then(|b| b.get(digest).cloned())
    }

    /// Runs `work` once per key: the first caller runs it in a task of its
    /// own (so a cancelled reader does not cancel the fetch others wait
    /// for); the others wait for its result.
    async fn single_flight<F>(self: &Arc<Self>, key: (Digest, u64), work: F) -> Result<()>
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        if let Some(e) = self.recent_failure(&key) {
            return Err(e);
        }
        let (mut rx, leader) = {
            let mut flights = self.flights.lock().map_err(|_| poisoned())?;
            match flights.get(&key) {
                Some(rx) => (rx.clone(), None),
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key.clone(), rx.clone());
                    (rx, Some(tx))
                }
            }
        };
        if let Some(tx) = leader {
            let inner = self.clone();
            tokio::spawn(async move {
                let result = work.await;
                if let Ok(mut failed) = inner.failed.lock() {
                    failed.retain(|_, (at, _)| at.elapsed() < FAILED_FETCH_GRACE);
                    match &result {
                        Err(e) if e.is_transient() => {
                            failed.insert(key.clone(), (Instant::now(), e.clone()));
                        }
                        _ => {
                            failed.remove(&key);
                        }
                    }
                }
                if let Ok(mut flights) = inner.flights.lock() {
                    flights.remove(&key);
                }
                let _ = tx.send(Some(result));
            });
        }
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or(Ok(())),
            Err(_) => Err(Error::io(
                "a fetch task ended without a result",
                std::io::Error::other("task aborted"),
            )),
        }
    }

    /// The error of a fetch of `key` that failed within the grace period.
    fn recent_failure(&self, key: &(Digest, u64)) -> Option<Error> {
        let failed = self.failed.lock().ok()?;
        let (at, e) = failed.get(key)?;
        (at.elapsed() < FAILED_FETCH_GRACE).then(|| e.clone())
    }

    fn partial(&self, store: &DiskStore, blob: &Descriptor) -> Result<Arc<Partial>> {
        let mut partials = self.partials.lock().map_err(|_| poisoned())?;
        // A generation another process dropped is of no more use: the
        // next one is opened (or made).
        if let Some(p) = partials.get(&blob.digest).filter(|p| !p.is_gone()) {
            return Ok(p.clone());
        }
        let p = Arc::new(store.partial(&blob.digest, blob.size, self.options.chunk_size)?);
        partials.insert(blob.digest.clone(), p.clone());
        Ok(p)
    }

    fn forget_partial(&self, digest: &Digest) {
        if let Ok(mut p) = self.partials.lock() {
            p.remove(digest);
        }
    }

    fn complete_handle(&self, store: &DiskStore, digest: &Digest) -> Result<Option<Arc<File>>> {
        if let Some(f) = self
            .handles
            .lock()
            .ok()
            .and_then(|mut h| h.get(digest).cloned())
        {
            return Ok(Some(f));
        }
        let Some(f) = store.open_complete(digest)? else {
            return Ok(None);
        };
        let f = Arc::new(f);
        if let Ok(mut h) = self.handles.lock() {
            h.put(digest.clone(), f.clone());
        }
        Ok(Some(f))
    }

    /// Fetches the missing chunks `wanted` (partial-blob chunk numbers) of a
    /// remote blob into its partial store.
    async fn fetch_chunks(
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

    /// One range request for chunks `first..=last`, under their chunk locks.
    async fn fetch_run(
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
            let mut locks = Vec::new();
            for n in first..=last {
                match locking.lock_chunk(n) {
                    Ok(lock) => locks.push(lock),
                    // Dropped by another process: nothing to fetch into;
                    // the reader looks again (complete now, or a new
                    // generation).
                    Err(_) if locking.is_gone() => return Ok((Vec::new(), Vec::new())),
                    Err(e) => return Err(e),
                }
            }
            // Complete: another process promoted the file this partial
            // writes into; not a byte more goes into it.
            if store.is_some_and(|s| s.has_complete(&digest)) {
                return Ok((locks, Vec::new()));
            }
            // Another process may have fetched some while we waited.
            let missing: Vec<u64> = (first..=last).filter(|n| !locking.has(*n)).collect();
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

    /// Makes the blob complete and verified on disk (remote) or verified in
    /// place (local).
    async fn ensure_complete(self: &Arc<Self>, blob: &Descriptor) -> Result<()> {
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
        if store.has_complete(&blob.digest) {
            return Ok(());
        }
        let inner = self.clone();
        let b = blob.clone();
        self.single_flight((blob.digest.clone(), WHOLE), async move {
            if store.has_complete(&b.digest) {
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
    /// when it gets the lock.
    async fn stream_locked(self: Arc<Self>, store: Arc<DiskStore>, blob: Descriptor) -> Result<()> {
        let partial = self.partial(&store, &blob)?;
        let locking = partial.clone();
        let lock = tokio::task::spawn_blocking(move || locking.lock_stream())
            .await
            .map_err(join_error)??;
        let streamed = if store.has_complete(&blob.digest) {
            Ok(())
        } else {
            self.stream_whole(&store, &blob, &partial).await
        };
        drop(lock);
        self.forget_partial(&blob.digest);
        streamed
    }

    /// Fetches the rest of a blob with one streaming request from its first
    /// missing chunk, hashing as the bytes arrive (the present prefix is
    /// hashed from disk first), and promotes it if the digest checks out. A
    /// broken stream resumes from the new first missing chunk, under the
    /// source's retry policy counted from the last progress: a download of
    /// any length goes on while it advances, and fails once it went the
    /// policy's whole time without a byte (a stall), or broke its attempts
    /// over without a new chunk.
    async fn stream_whole(
        self: &Arc<Self>,
        store: &Arc<DiskStore>,
        blob: &Descriptor,
        partial: &Arc<Partial>,
    ) -> Result<()> {
        /// Bytes written per blocking write (whole chunks).
        const BATCH: u64 = 4 << 20;
        let cs = partial.chunk_size;
        let mut retry = self.source.retry_policy().resumption();
        let what = format!("blob {} from {}", blob.digest, self.source.name());
        loop {
            let p = partial.clone();
            let (start, hasher) = tokio::task::spawn_blocking(move || -> Result<_> {
                let start = p.first_missing().map_or(p.size, |n| n * p.chunk_size);
                Ok((start, p.hash_prefix(start)?))
            })
            .await
            .map_err(join_error)??;
            if start >= blob.size {
                return self.finish_stream(store, blob, partial, hasher).await;
            }
            Counters::bump(&self.counters.requests);
            self.counters
                .misses
                .fetch_add((blob.size - start).div_ceil(cs), Ordering::Relaxed);
            let opened = retry
                .within(&what, self.source.stream_from(blob, start))
                .await
                .and_then(|r| r);
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(e) if retry.again(&what, &e).await => continue,
                Err(e) => return Err(e),
            };
            let mut hasher = Some(hasher);
            let mut writing: Option<tokio::task::JoinHandle<(BlobHasher, Result<bool>)>> = None;
            let mut pos = start;
            let mut pending = BytesMut::new();
            let broke = loop {
                // Silence is bounded here too: not every source times out
                // an idle stream itself.
                let next = match retry.within(&what, stream.next()).await {
                    Ok(next) => next,
                    Err(e) => Some(Err(e)),
                };
                let end_of_stream = next.is_none();
                match next {
                    Some(Ok(bytes)) => {
                        retry.alive();
                        if pos + pending.len() as u64 + bytes.len() as u64 > blob.size {
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
                        self.counters
                            .bytes_fetched
                            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        pending.extend_from_slice(&bytes);
                    }
                    Some(Err(e)) => break Some(e),
                    None => {}
                }
                // Write whole chunks (and the short last one at the end).
                let reached_end = pos + pending.len() as u64 == blob.size;
                let whole = if reached_end {
                    pending.len() as u64
                } else {
                    pending.len() as u64 / cs * cs
                };
                if whole > 0 && (whole >= BATCH || reached_end || end_of_stream) {
                    let bytes = pending.split_to(whole as usize).freeze();
                    // One batch is hashed and written while the next one
                    // arrives; the hasher passes from batch to batch.
                    if let Some(previous) = writing.take() {
                        match Self::batch_done(previous).await? {
                            Some(h) => hasher = Some(h),
                            None => return Ok(()),
                        }
                    }
                    let (p, mut h) = (
                        partial.clone(),
                        hasher.take().unwrap_or_else(|| BlobHasher::new(cs)),
                    );
                    let (s, d) = (store.clone(), blob.digest.clone());
                    let first = pos / cs;
                    writing = Some(tokio::task::spawn_blocking(move || {
                        let r = write_batch(&s, &d, &p, first, &bytes, &mut h);
                        (h, r)
                    }));
                    pos += whole;
                    self.disk_usage.fetch_add(whole, Ordering::Relaxed);
                }
                if end_of_stream {
                    break (pos < blob.size).then(|| Error::ShortRead {
                        digest: blob.digest.to_string(),
                        offset: start,
                        expected: blob.size - start,
                        got: pos - start,
                    });
                }
            };
            if let Some(last) = writing.take() {
                match Self::batch_done(last).await? {
                    Some(h) => hasher = Some(h),
                    None => return Ok(()),
                }
            }
            match broke {
                None => {
                    return self
                        .finish_stream(
                            store,
                            blob,
                            partial,
                            hasher.unwrap_or_else(|| BlobHasher::new(cs)),
                        )
                        .await;
                }
                Some(e) => {
                    if pos > start {
                        retry.progress();
                    }
                    if !retry.again(&what, &e).await {
                        return Err(e);
                    }
                    tracing::debug!(digest = %blob.digest, at = pos, error = %e, "blob stream broke; resuming");
                }
            }
        }
    }

    /// Waits for a batch write; gives the hasher back, or `None` if the
    /// blob turned out complete already (another process promoted it).
    async fn batch_done(
        handle: tokio::task::JoinHandle<(BlobHasher, Result<bool>)>,
    ) -> Result<Option<BlobHasher>> {
        let (hasher, written) = handle.await.map_err(join_error)?;
        written.map(|complete| (!complete).then_some(hasher))
    }

    async fn finish_stream(
        &self,
        store: &Arc<DiskStore>,
        blob: &Descriptor,
        partial: &Arc<Partial>,
        hasher: BlobHasher,
    ) -> Result<()> {
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
        let (s, d, p) = (store.clone(), blob.digest.clone(), partial.clone());
        let digests = table.clone();
        tokio::task::spawn_blocking(move || s.promote_verified(&p, &d, &digests))
            .await
            .map_err(join_error)??;
        // Hashed here on the way in, chunk by chunk: checked in this process.
        self.keep_table(blob, chunk_size, table);
        if chunk_size == self.options.chunk_size {
            self.mark_checked(blob, 0..blob.size.div_ceil(chunk_size));
        }
        Ok(())
    }

    async fn promote(
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
            Ok(()) => {
                Counters::bump(&self.counters.blobs_verified);
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
    async fn with_room<F: Future<Output = Result<()>>>(
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

    /// Evicts what is not in use (partial blobs first) until `room` more
    /// bytes would fit in the budget: after the filesystem said it is full.
    async fn evict_for(self: &Arc<Self>, store: &Arc<DiskStore>, room: u64) {
        let inner = self.clone();
        let s = store.clone();
        let target = self.options.disk_budget.saturating_sub(room);
        let done = tokio::task::spawn_blocking(move || {
            let freed = s.evict_to(target, &|d| inner.is_pinned(d));
            inner
                .disk_usage
                .store(s.usage().unwrap_or(0), Ordering::Relaxed);
            freed
        })
        .await;
        match done {
            Ok(Ok(freed)) => tracing::info!(freed, "evicted for room"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cache eviction failed"),
            Err(e) => tracing::warn!(error = %e, "cache eviction task failed"),
        }
    }

    fn maybe_evict(self: &Arc<Self>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let budget = self.options.disk_budget;
        if self.disk_usage.load(Ordering::Relaxed) <= budget
            || self.evicting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        // Our own cached handles hold shared locks, which would keep the
        // evictor off every blob this process ever read: let go of those
        // not in use (they reopen on demand).
        if let Ok(mut handles) = self.handles.lock() {
            let idle: Vec<Digest> = handles
                .iter()
                .map(|(d, _)| d.clone())
                .filter(|d| !self.is_pinned(d))
                .collect();
            for d in idle {
                handles.pop(&d);
            }
        }
        let inner = self.clone();
        tokio::task::spawn_blocking(move || {
            // Down to 90%, so that eviction does not run on every chunk.
            let target = budget - budget / 10;
            match store.evict_to(target, &|d| inner.is_pinned(d)) {
                Ok(freed) => tracing::debug!(freed, "cache eviction"),
                Err(e) => tracing::warn!(error = %e, "cache eviction failed"),
            }
            inner
                .disk_usage
                .store(store.usage().unwrap_or(0), Ordering::Relaxed);
            inner.evicting.store(false, Ordering::Release);
        });
    }

    /// Chunk `n` (in the cache's chunk size) from disk, if it is there and
    /// may be served.
    fn chunk_from_disk(
        &self,
        store: &DiskStore,
        blob: &Descriptor,
        n: u64,
    ) -> Result<Option<Bytes>> {
        let cs = self.options.chunk_size;
        let offset = n * cs;
        let len = (cs.min(blob.size - offset)) as usize;
        if let Some(f) = self.complete_handle(store, &blob.digest)? {
            return self.checked_from_complete(store, blob, &f, n);
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
            .chunks_covering(offset, offset + len as u64)
            .all(|c| partial.has(c))
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
    fn checked_from_complete(
        &self,
        store: &DiskStore,
        blob: &Descriptor,
        f: &File,
        n: u64,
    ) -> Result<Option<Bytes>> {
        let cs = self.options.chunk_size;
        let (offset, len) = (n * cs, cs.min(blob.size - n * cs) as usize);
        let path = store.blob_path(&blob.digest);
        let read = match DiskStore::read_at(f, &path, offset, len) {
            Ok(bytes) if self.is_checked(&blob.digest, n) => return Ok(Some(Bytes::from(bytes))),
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
    fn take_table(
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

    async fn read_blob(
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
        let _pin = self.pin(&blob.digest);
        // Strict without a chunk digest table: the whole blob first.
        let whole_first = self.options.verify == Verify::Strict && self.table(blob).is_none();
        if whole_first {
            self.ensure_complete(blob).await?;
        }
        let cs = self.options.chunk_size;
        let (c0, c1) = (offset / cs, (end - 1) / cs);
        let mut chunks: Vec<Option<Bytes>> = (c0..=c1)
            .map(|n| self.memory.get(&blob.digest, n))
            .collect();
        self.counters.memory_hits.fetch_add(
            chunks.iter().filter(|c| c.is_some()).count() as u64,
            Ordering::Relaxed,
        );
        // Under eviction pressure from other processes, chunks fetched for
        // this read can be evicted before it reads them: it tries again.
        for attempt in 0..8 {
            if chunks.iter().all(Option::is_some) {
                break;
            }
            let missing: Vec<u64> = (c0..=c1)
                .zip(&chunks)
                .filter(|(_, c)| c.is_none())
                .map(|(n, _)| n)
                .collect();
            let found = self.chunks_from_storage(blob, &missing).await?;
            for (n, bytes) in found {
                if attempt == 0 {
                    Counters::bump(if self.store.is_some() {
                        &self.counters.disk_hits
                    } else {
                        &self.counters.misses
                    });
                }
                self.memory.put(&blob.digest, n, bytes.clone());
                chunks[(n - c0) as usize] = Some(bytes);
            }
            if chunks.iter().all(Option::is_some) {
                break;
            }
            // Still missing: only a remote blob in lazy mode gets here (or a
            // strict one whose complete copy vanished: complete it again).
            let Some(store) = self.store.clone() else {
                break;
            };
            if whole_first {
                self.ensure_complete(blob).await?;
                continue;
            }
            let partial = self.partial(&store, blob)?;
            let still: Vec<u64> = (c0..=c1)
                .zip(&chunks)
                .filter(|(_, c)| c.is_none())
                .map(|(n, _)| n)
                .collect();
            let mut wanted: Vec<u64> = still
                .iter()
                .flat_map(|n| partial.chunks_covering(n * cs, ((n + 1) * cs).min(blob.size)))
                .filter(|c| !partial.has(*c))
                .collect();
            wanted.dedup();
            self.counters
                .misses
                .fetch_add(still.len() as u64, Ordering::Relaxed);
            self.note_lazy_small(blob);
            self.fetch_chunks(blob, &partial, wanted).await?;
            self.after_lazy_fetch(&store, blob, &partial);
            self.complete_in_background(blob);
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (n, chunk) in (c0..=c1).zip(chunks) {
            let chunk = chunk.ok_or_else(|| Error::ShortRead {
                digest: blob.digest.to_string(),
                offset: n * cs,
                expected: cs,
                got: 0,
            })?;
            let start = offset.saturating_sub(n * cs) as usize;
            let stop = ((end - n * cs) as usize).min(chunk.len());
            out.extend_from_slice(&chunk[start..stop]);
        }
        if !whole_first && self.store.is_some() {
            self.read_ahead(blob, offset, end);
        }
        Ok(out.freeze())
    }

    /// Chunks of `missing` that the disk (remote) or the layout (local) has.
    async fn chunks_from_storage(
        self: &Arc<Self>,
        blob: &Descriptor,
        missing: &[u64],
    ) -> Result<Vec<(u64, Bytes)>> {
        let cs = self.options.chunk_size;
        match self.store.clone() {
            Some(store) => {
                let inner = self.clone();
                let blob = blob.clone();
                let missing = missing.to_vec();
                tokio::task::spawn_blocking(move || {
                    let mut found = Vec::new();
                    for n in missing {
                        if let Some(b) = inner.chunk_from_disk(&store, &blob, n)? {
                            found.push((n, b));
                        }
                    }
                    Ok(found)
                })
                .await
                .map_err(join_error)?
            }
            None => {
                if self.options.verify == Verify::Strict {
                    self.ensure_complete(blob).await?;
                }
                let mut found = Vec::new();
                // One read for the whole run: the layout is a local file.
                let (first, last) = (missing[0], missing[missing.len() - 1]);
                let start = first * cs;
                let bytes = self
                    .source
                    .read_range(blob, start, ((last + 1) * cs).min(blob.size) - start)
                    .await?;
                // Checked after every read from the layout: its files are
                // not ours, and may be rewritten in place at any time.
                let table = self.rest_table(blob);
                for &n in missing {
                    let a = ((n - first) * cs) as usize;
                    let b = (a + cs as usize).min(bytes.len());
                    if a < b {
                        let chunk = bytes.slice(a..b);
                        if let Some(table) = &table
                            && let Err(e) = check_chunk(table, &blob.digest, n, &chunk)
                        {
                            Counters::bump(&self.counters.verify_failures);
                            return Err(e);
                        }
                        found.push((n, chunk));
                    }
                }
                Ok(found)
            }
        }
    }

    /// In lazy mode, a blob whose chunks are all present is checked now.
    fn after_lazy_fetch(
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
    fn note_lazy_small(&self, blob: &Descriptor) {
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
    fn complete_in_background(self: &Arc<Self>, blob: &Descriptor) {
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
                let wanted: Vec<u64> = (0..blob.size.div_ceil(partial.chunk_size))
                    .filter(|c| !partial.has(*c))
                    .collect();
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
    fn drop_unchecked_small(&self) {
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
    fn read_ahead(self: &Arc<Self>, blob: &Descriptor, offset: u64, end: u64) {
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
            let mut wanted: Vec<u64> = partial
                .chunks_covering(end, ahead_end)
                .filter(|c| !partial.has(*c))
                .collect();
            wanted.dedup();
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

/// Writes a batch of whole chunks of a stream into `p`, each under its
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
fn write_batch(
    store: &DiskStore,
    digest: &Digest,
    p: &Partial,
    first: u64,
    bytes: &[u8],
    hasher: &mut BlobHasher,
) -> Result<bool> {
    let cs = p.chunk_size as usize;
    let count = bytes.len().div_ceil(cs) as u64;
    let mut locks = Vec::with_capacity(count as usize);
    for n in first..first + count {
        match p.lock_chunk(n) {
            Ok(lock) => locks.push(lock),
            // Evicted or promoted by another process meanwhile: this
            // stream ends; the reader looks again (a complete blob, or a
            // new generation to stream into).
            Err(_) if p.is_gone() => return Ok(true),
            Err(e) => return Err(e),
        }
    }
    if store.has_complete(digest) {
        return Ok(true);
    }
    for (n, chunk) in (first..).zip(bytes.chunks(cs)) {
        if p.has(n) {
            hasher.update(&p.read(n * p.chunk_size, chunk.len())?);
        } else {
            hasher.update(chunk);
            match p.write_chunks(n, chunk, false) {
                Ok(()) => {}
                Err(_) if p.is_gone() => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(false)
}

fn poisoned() -> Error {
    Error::io(
        "cache state",
        std::io::Error::other("a lock was poisoned by a panic"),
    )
}

/// Whether bit `n` of a bitmap is set (no bitmap: none is).
fn bit_set(bits: Option<&Vec<u64>>, n: u64) -> bool {
    bits.and_then(|b| b.get((n / 64) as usize))
        .is_some_and(|w| w & (1 << (n % 64)) != 0)
}

/// Whether an error is the cache's filesystem being full (or over quota).
fn is_disk_full(e: &Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(e, Error::Io { source, .. } if matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT)))
        || matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
}

/// The error for a blob that does not fit in the cache's filesystem even
/// after eviction: names the blob, the filesystem's room and what to do.
fn disk_full(store: &DiskStore, blob: &crate::manifest::Descriptor, e: &Error) -> Error {
    let source = match e {
        Error::Io { source, .. } => source.clone(),
        _ => Arc::new(std::io::Error::from(std::io::ErrorKind::StorageFull)),
    };
    let free = store
        .available()
        .map_or_else(|| "unknown".to_owned(), |b| format!("{} MiB", b >> 20));
    Error::Io {
        context: format!(
            "caching blob {} ({} bytes) in {}: the cache's filesystem is full even after \
             evicting what is not in use ({free} free); give a cache with more room \
             (--cache-dir) or a smaller --cache-max-size",
            blob.digest,
            blob.size,
            store.root().display()
        ),
        source,
    }
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::io("a cache task failed", std::io::Error::other(e))
}

#[async_trait]
impl BlobReader for ChunkCache {
    async fn read_blob(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        self.inner.read_blob(blob, offset, len).await
    }

    fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }
}

#[cfg(test)]
mod tests;

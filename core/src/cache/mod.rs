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

mod ahead;
mod check;
#[cfg(test)]
use check::CHECK_AHEAD;
mod evict;
mod fetch;
mod flight;
mod memory;
mod offline;
mod piece;
mod resume;
mod scan;
mod store;
pub(crate) mod table;
mod whole;
#[cfg(test)]
use ahead::AHEAD_IDLE;
use ahead::{AHEAD_LEAD, StreamAhead, Streamed};

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
use crate::digest::{BlobHasher, ChunkHash, ChunkTable, Digest, check_chunk};
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
    /// A cache that keeps only what is made of its source's blobs (zstd
    /// layers' decoded copies), never the blobs themselves, even a blob
    /// streamed whole ([`ChunkCache::scan`]): for a local layout, whose
    /// blobs are read in place (without this, a cache over a local source
    /// has no disk tier).
    pub copies_only: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            memory_budget: 32 << 20,
            disk_budget: 10 << 30,
            verify: Verify::Strict,
            max_request: 16 << 20,
            readahead_max: 8 << 20,
            parallel_requests: 8,
            parallel_per_blob: 4,
            background_fetch_max: 64 << 20,
            copies_only: false,
        }
    }
}

/// The default cache directory: `$OCIFS_CACHE`; else, on Windows,
/// `%LOCALAPPDATA%\ocifs`; else `$XDG_CACHE_HOME/ocifs`, else
/// `~/.cache/ocifs` (root on a node might prefer `/var/cache/ocifs`).
///
/// Windows puts `%LOCALAPPDATA%` first because a Windows process may well
/// inherit `HOME` or `XDG_CACHE_HOME` (from Git for Windows or MSYS2; Wine
/// passes a Linux `XDG_CACHE_HOME` through): the cache belongs where Windows
/// keeps per-user, per-machine data all the same.
pub fn default_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let local_app_data = || env("LOCALAPPDATA").map(|d| d.join("ocifs"));
    let first = env("OCIFS_CACHE");
    #[cfg(windows)]
    let first = first.or_else(local_app_data);
    first
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("ocifs")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/ocifs")))
        .or_else(local_app_data)
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

/// A test's other reader (`Inner::after_open`).
#[cfg(test)]
type AfterOpen = Box<dyn FnOnce(&Inner) + Send>;

struct Inner {
    source: Arc<dyn Source>,
    store: Option<Arc<DiskStore>>,
    memory: MemoryTier,
    options: CacheOptions,
    counters: Counters,
    flights: Mutex<HashMap<(Digest, u64), Flight>>,
    /// Fetches of exact ranges (`BlobReader::read_piece`) under way, by
    /// blob, start and end.
    pieces: Mutex<HashMap<(Digest, u64, u64), piece::PieceFlight>>,
    failed: Mutex<HashMap<(Digest, u64), (Instant, Error)>>,
    partials: Mutex<HashMap<Digest, Arc<Partial>>>,
    handles: Mutex<LruCache<Digest, Arc<File>>>,
    /// Complete blobs dropped as damaged, counted under the `handles`
    /// lock: a handle opened before a drop is never kept (it may be of the
    /// damaged file, and the marks a refetch then sets would vouch for it).
    drops: AtomicU64,
    /// Run once between a complete blob's open and its handle being kept
    /// (a test's other reader, dropping the blob there).
    #[cfg(test)]
    after_open: Mutex<Option<AfterOpen>>,
    pins: Mutex<HashMap<Digest, usize>>,
    verified_local: Mutex<HashSet<Digest>>,
    bad: Mutex<HashMap<Digest, Error>>,
    sequences: Mutex<HashMap<Digest, Sequence>>,
    /// Chunk digest tables given by a layer index
    /// (`ChunkCache::set_chunk_digests`): strict reads of such a blob go
    /// chunk by chunk, each fetched chunk checked.
    tables: Mutex<HashMap<Digest, Arc<ChunkTable>>>,
    /// Those of `tables` nothing binds to the reference (a referrer's, in
    /// lazy mode): a chunk that disagrees with one has the whole blob
    /// decide which is wrong.
    untrusted: Mutex<HashSet<Digest>>,
    /// Chunk digest tables this cache took itself, while it hashed a blob
    /// whole (of BLAKE3, `ChunkHash::AT_REST`), or read from beside a
    /// complete blob: for checking bytes at rest (and fetched chunks), not
    /// for skipping the whole-blob fetch.
    own_tables: Mutex<HashMap<Digest, Arc<ChunkTable>>>,
    /// The chunks of complete blobs this process has read from disk and
    /// checked against their table (a bitmap per blob).
    checked: Mutex<HashMap<Digest, Vec<u64>>>,
    /// Complete blobs whose chunks a thread is checking ahead of a
    /// sequential reader (`Inner::check_ahead`).
    checking: Mutex<HashMap<Digest, Arc<check::AheadCheck>>>,
    /// Small blobs this process fetched chunks of in lazy mode (see
    /// `CacheOptions::background_fetch_max`), and whether their background
    /// completion is running.
    lazy_small: Mutex<HashMap<Digest, bool>>,
    /// Lazy readers' streams of large blobs, under way (`Inner::stream_for`).
    aheads: Mutex<HashMap<Digest, Arc<ahead::StreamAhead>>>,
    /// Blobs that checked out in this process and are being made durable
    /// and moved into place, behind their readers (`Inner::promote_behind`).
    promoting: Mutex<HashMap<Digest, whole::Promoting>>,
    /// Why a blob that checked out could not be put in place, until a
    /// `prefetch` or `settle` reports it (its promotion may end before
    /// they look).
    promote_failed: Mutex<HashMap<Digest, Error>>,
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

/// The key of a lazy stream of a blob (`ahead.rs`) among the fetches that
/// failed recently: a read does not start another within the grace period.
const STREAM: u64 = u64::MAX - 1;

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
        let store = store.filter(|_| source.is_remote() || options.copies_only);
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
                pieces: Mutex::new(HashMap::new()),
                failed: Mutex::new(HashMap::new()),
                partials: Mutex::new(HashMap::new()),
                handles: Mutex::new(LruCache::new(
                    NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
                )),
                drops: AtomicU64::new(0),
                #[cfg(test)]
                after_open: Mutex::new(None),
                pins: Mutex::new(HashMap::new()),
                verified_local: Mutex::new(HashSet::new()),
                bad: Mutex::new(HashMap::new()),
                sequences: Mutex::new(HashMap::new()),
                tables: Mutex::new(HashMap::new()),
                untrusted: Mutex::new(HashSet::new()),
                own_tables: Mutex::new(HashMap::new()),
                checked: Mutex::new(HashMap::new()),
                checking: Mutex::new(HashMap::new()),
                lazy_small: Mutex::new(HashMap::new()),
                aheads: Mutex::new(HashMap::new()),
                promoting: Mutex::new(HashMap::new()),
                promote_failed: Mutex::new(HashMap::new()),
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
        self.ensure_verified(blob).await?;
        // In the cache, durable, when this returns.
        self.inner.promoted(&blob.digest).await
    }

    /// Fetches and verifies the whole blob, as [`ChunkCache::prefetch`]
    /// does, but returns as soon as it checked out: its reads are served
    /// from then on, while it is still being synced and moved into place
    /// ([`ChunkCache::settle`] waits for that).
    pub async fn ensure_verified(&self, blob: &Descriptor) -> Result<()> {
        let _pin = self.inner.pin(&blob.digest);
        self.inner.ensure_complete(blob).await
    }

    /// Waits until every blob that checked out in this process is synced
    /// and in place in the cache: for a process about to end. The first
    /// that could not be, if any, is the error.
    pub async fn settle(&self) -> Result<()> {
        let mut digests: Vec<Digest> = self
            .inner
            .promoting
            .lock()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        if let Ok(failed) = self.inner.promote_failed.lock() {
            let more: Vec<Digest> = failed
                .keys()
                .filter(|d| !digests.contains(d))
                .cloned()
                .collect();
            digests.extend(more);
        }
        let mut first = Ok(());
        for d in digests {
            let r = self.inner.promoted(&d).await;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Whether a read of `blob` would wait for the whole blob first:
    /// strict mode with no chunk table for it, and not complete in this
    /// cache yet. (A local layout's blobs, read in place, never do.)
    pub fn reads_wait_for_whole(&self, blob: &Descriptor) -> bool {
        let inner = &self.inner;
        inner.whole_first(blob)
            && inner.promoting_file(&blob.digest).is_none()
            && inner
                .store
                .as_ref()
                .is_some_and(|s| !s.has_complete(&blob.digest))
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
        self.checked_file(blob).ok().flatten()
    }

    /// [`ChunkCache::backing_file`], saying why there is none when a chunk
    /// failed its check and the blob cannot be fetched again (no network):
    /// the error naming the blob. The file is at its start, for a reader
    /// that reads it in order (`cat` copies it to stdout). Blocking.
    pub fn checked_file(&self, blob: &Descriptor) -> Result<Option<File>> {
        let inner = &self.inner;
        let Some(store) = inner.store.as_ref() else {
            return Ok(None);
        };
        let file = match inner.promoting_file(&blob.digest) {
            Some(f) => Some(f.try_clone().map_err(|e| {
                Error::io(
                    format!("reading {}", store.blob_path(&blob.digest).display()),
                    e,
                )
            })?),
            None => store.open_complete(&blob.digest)?,
        };
        let Some(file) = file else {
            return Ok(None);
        };
        let len = file
            .metadata()
            .map_err(|e| {
                Error::io(
                    format!("reading {}", store.blob_path(&blob.digest).display()),
                    e,
                )
            })?
            .len();
        if len != blob.size {
            // Cut short or grown: the chunk reads find it and drop it.
            return Ok(None);
        }
        for n in inner.unchecked(blob) {
            if inner
                .checked_from_complete(store, blob, &file, n, None)?
                .is_none()
            {
                return Ok(None);
            }
        }
        // On Windows a positional read moves the file's position (see
        // `fsutil`): after the checks above it would be at the end, and a
        // reader in order would find nothing to read.
        let mut file = file;
        std::io::Seek::rewind(&mut file).map_err(|e| {
            Error::io(
                format!("reading {}", store.blob_path(&blob.digest).display()),
                e,
            )
        })?;
        Ok(Some(file))
    }

    /// Drops every copy of `blob` (memory, disk): for a caller that found
    /// it corrupt itself.
    pub fn discard(&self, blob: &Descriptor) {
        self.inner.memory.remove_blob(&blob.digest);
        self.inner.forget_partial(&blob.digest);
        self.inner.forget_handle(&blob.digest);
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
        // A blob dropped as damaged between the open and the keep is looked
        // for again: what was opened may be the damaged file.
        for _ in 0..8 {
            let drops = self.drops.load(Ordering::Acquire);
            if let Some(f) = self
                .handles
                .lock()
                .ok()
                .and_then(|mut h| h.get(digest).cloned())
            {
                return Ok(Some(f));
            }
            // Checked out in this process, and being moved into place.
            let f = match self.promoting_file(digest) {
                Some(f) => f,
                None => match store.open_complete(digest)? {
                    Some(f) => Arc::new(f),
                    None => return Ok(None),
                },
            };
            #[cfg(test)]
            if let Some(other) = self.after_open.lock().ok().and_then(|mut h| h.take()) {
                other(self);
            }
            let Ok(mut h) = self.handles.lock() else {
                return Err(poisoned());
            };
            if self.drops.load(Ordering::Acquire) == drops {
                h.put(digest.clone(), f.clone());
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// A read; should its bytes disagree with an untrusted chunk table,
    /// the whole blob is fetched and checked against its digest: if it
    /// checks out, the table was wrong and is dropped (the read is served
    /// from the complete blob), else the blob was, and the read fails.
    async fn read_settling(
        self: &Arc<Self>,
        blob: &Descriptor,
        offset: u64,
        len: u64,
        keep: bool,
    ) -> Result<Bytes> {
        match self.read_blob(blob, offset, len, keep, true).await {
            Err(e @ Error::DigestMismatch { .. }) if self.distrust(&blob.digest) => {
                tracing::warn!(
                    digest = %blob.digest,
                    "bytes disagree with the chunk table a referrer gave ({e}); the whole blob decides"
                );
                if let Ok(mut t) = self.tables.lock() {
                    t.remove(&blob.digest);
                }
                self.ensure_complete(blob).await?;
                tracing::warn!(
                    digest = %blob.digest,
                    "the blob checked out whole: the referrer's chunk table is wrong and no longer used"
                );
                self.read_blob(blob, offset, len, keep, true).await
            }
            other => other,
        }
    }

    /// Whether `digest`'s chunk table came from an untrusted source. It
    /// stays so after the table is dropped: reads running at once (a
    /// `cat` reads ahead) that each met the wrong table all let the whole
    /// blob decide, not only the first.
    fn distrust(&self, digest: &Digest) -> bool {
        self.untrusted.lock().is_ok_and(|u| u.contains(digest))
    }

    /// `keep`: whether chunks read from disk or fetched go into the memory
    /// tier (not for a scan, read once). `checked`: whether the bytes are
    /// checked as the mode says; else they are fetched as in lazy mode, for
    /// a caller that checks them itself (`read_unchecked`).
    async fn read_blob(
        self: &Arc<Self>,
        blob: &Descriptor,
        offset: u64,
        len: u64,
        keep: bool,
        checked: bool,
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
        let whole_first = checked && self.whole_first(blob);
        if whole_first {
            self.ensure_complete(blob).await?;
        }
        let cs = self.options.chunk_size;
        let (c0, c1) = (offset / cs, (end - 1) / cs);
        self.check_ahead(blob, c0, c1);
        // A complete blob whose chunks here this process checked already:
        // straight from its file, in one read (the kernel's page cache is
        // the cache of these; the memory tier would only copy them again).
        if let Some(bytes) = self.read_checked(blob, offset, end).await? {
            self.counters
                .disk_hits
                .fetch_add(c1 - c0 + 1, Ordering::Relaxed);
            return Ok(bytes);
        }
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
            let found = self.chunks_from_storage(blob, &missing, checked).await?;
            for (n, bytes) in found {
                if attempt == 0 {
                    Counters::bump(if self.store.is_some() {
                        &self.counters.disk_hits
                    } else {
                        &self.counters.misses
                    });
                }
                if keep {
                    self.memory.put(&blob.digest, n, bytes.clone());
                }
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
            // From the first chunk still missing: a read whose first chunks
            // a stream wrote a moment ago waits for the rest of it too.
            let from = still.first().map_or(c0, |n| *n) * cs;
            self.note_lazy_small(blob);
            self.stream_small(&store, blob)?;
            if self.wait_for_stream(blob, from, end).await? {
                continue;
            }
            self.fetch_chunks(blob, &partial, wanted).await?;
            self.after_lazy_fetch(&store, blob, &partial);
            self.complete_in_background(blob);
        }
        let mut pieces = Vec::with_capacity(chunks.len());
        for (n, chunk) in (c0..=c1).zip(chunks) {
            let chunk = chunk.ok_or_else(|| Error::ShortRead {
                digest: blob.digest.to_string(),
                offset: n * cs,
                expected: cs,
                got: 0,
            })?;
            let start = offset.saturating_sub(n * cs) as usize;
            let stop = ((end - n * cs) as usize).min(chunk.len());
            pieces.push(chunk.slice(start..stop));
        }
        if !whole_first && self.store.is_some() {
            self.read_ahead(blob, offset, end);
        }
        // A read within one chunk is a slice of it; only a read across
        // chunks is joined.
        Ok(match <[Bytes; 1]>::try_from(pieces) {
            Ok([one]) => one,
            Err(pieces) => {
                let mut out = BytesMut::with_capacity((end - offset) as usize);
                for piece in pieces {
                    out.extend_from_slice(&piece);
                }
                out.freeze()
            }
        })
    }

    /// `[offset, end)` of a complete blob in the store, if every chunk of it
    /// was checked by this process: one read of the file.
    async fn read_checked(
        self: &Arc<Self>,
        blob: &Descriptor,
        offset: u64,
        end: u64,
    ) -> Result<Option<Bytes>> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let cs = self.options.chunk_size;
        let (c0, c1) = (offset / cs, (end - 1) / cs);
        if !self.all_checked(&blob.digest, c0, c1) {
            let ahead = self
                .checking
                .lock()
                .is_ok_and(|running| running.contains_key(&blob.digest));
            if !ahead {
                return Ok(None);
            }
            // A thread checking ahead may have them in hand: waiting for it
            // costs less than reading and hashing them a second time.
            let inner = self.clone();
            let digest = blob.digest.clone();
            let waited = tokio::task::spawn_blocking(move || inner.wait_checked(&digest, c0, c1))
                .await
                .map_err(join_error)?;
            if !waited {
                return Ok(None);
            }
        }
        // Read and checked by that thread a moment ago: served as it read
        // them, not read from the file again.
        if let Some(bytes) = self.checked_ahead(&blob.digest, offset, end) {
            return Ok(Some(bytes));
        }
        let Some(file) = self.complete_handle(store, &blob.digest)? else {
            return Ok(None);
        };
        let path = store.blob_path(&blob.digest);
        let len = (end - offset) as usize;
        match tokio::task::spawn_blocking(move || DiskStore::read_at(&file, &path, offset, len))
            .await
            .map_err(join_error)?
        {
            Ok(bytes) => {
                self.read_from_disk(bytes.len());
                Ok(Some(Bytes::from(bytes)))
            }
            // Cut short under us: the chunk path checks it and drops it.
            Err(Error::ShortRead { .. }) => {
                self.forget_checked(&blob.digest);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Chunks of `missing` that the disk (remote) or the layout (local) has.
    async fn chunks_from_storage(
        self: &Arc<Self>,
        blob: &Descriptor,
        missing: &[u64],
        checked: bool,
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
                        if let Some(b) = inner.chunk_from_disk(&store, &blob, n, checked)? {
                            found.push((n, b));
                        }
                    }
                    Ok(found)
                })
                .await
                .map_err(join_error)?
            }
            None => {
                if checked && self.options.verify == Verify::Strict {
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
        self.inner.read_settling(blob, offset, len, true).await
    }

    async fn scan_blob(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        self.inner.read_settling(blob, offset, len, false).await
    }

    async fn read_unchecked(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        self.inner.read_blob(blob, offset, len, false, false).await
    }

    async fn read_piece(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        self.inner.read_piece(blob, offset, len).await
    }

    fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    fn wire(&self) -> Vec<crate::HostBytes> {
        self.source().wire()
    }
}

#[cfg(test)]
mod tests;

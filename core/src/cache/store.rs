//! The on-disk content store, shared by any number of ocifs processes.
//!
//! ```text
//! ROOT/ocifs-cache.json                  {"format":2}: the layout below
//! ROOT/oci-layout                        so other tools can read ROOT as a layout
//! ROOT/blobs/sha256/<hex>                complete blobs, verified before they got there
//! ROOT/chunks/sha256/<hex>               the chunk digest table of a complete blob
//! ROOT/partial/sha256/<hex>/v2-<gen>/data  a sparse file of the blob's size
//! ROOT/partial/sha256/<hex>/v2-<gen>/meta  {"size":…, "chunkSize":…}
//! ROOT/partial/sha256/<hex>/v2-<gen>/map   one byte a chunk: 1 once the chunk is
//!                                          written (and synced); byte-range locks on
//!                                          it are the chunk locks
//! ROOT/partial/sha256/<hex>/stream.lock  held by the one process streaming the blob whole
//! ROOT/refs/<registry>/<repository>/<tag>  the digest a tag last resolved to
//! ROOT/tmp/                              temp files, renamed into place when complete
//! ```
//!
//! Invariants that make sharing and crashes safe:
//! - a name under `blobs/` only ever appears by `rename` of a file whose
//!   digest was checked, so it never holds half-written or wrong bytes;
//! - a chunk is present only once its byte in the map is set, and that
//!   byte is written after the chunk's bytes were written (and, for a
//!   chunk served before the whole blob is checked, synced), so a crash
//!   mid-write leaves the chunk absent, never half-present. One byte a
//!   chunk, not one bit: two processes marking neighbouring chunks never
//!   read-modify-write each other's marks;
//! - a chunk is written by whoever holds its lock: an open file
//!   description lock (`F_OFD_SETLKW`) on the chunk's byte of the map, one
//!   call for a run of chunks, taken on a descriptor of its own so threads
//!   of one process exclude each other too; others wait and then find the
//!   chunk marked, so two processes fetch it once. (Where the system has
//!   no such locks, the whole map is locked: one writer a blob at a time);
//! - a blob is streamed whole by whoever holds its stream lock, which is
//!   the blob's (beside its generations): racing makers may each hold a
//!   different generation, yet only one downloads;
//! - readers hold a shared lock on a complete blob while they use it; the
//!   evictor takes an exclusive lock without waiting and skips what it cannot
//!   lock;
//! - a partial blob is a *generation*: a directory with a name never used
//!   again, which appears whole (made in `tmp/`, renamed into place) and
//!   whose `data` is never replaced. A process that opened a generation
//!   keeps using its files; once the generation is dropped (promoted,
//!   evicted, found corrupt) and a new one made, the old handle's marks
//!   can no longer be taken for the new file's, nor the reverse.
//!
//! Format 1 (before `ocifs-cache.json`) kept a file per chunk marker and per
//! chunk lock (`g<gen>/have/<n>`, `g<gen>/lock/<n>`): 2,048 files made per GiB
//! fetched. A format 1 cache is migrated when it is opened: its complete
//! blobs, tables, indexes and refs are the same in both formats and kept,
//! its partial downloads are dropped (fetched again when read), and a
//! warning says so. An older ocifs still running on it never sees a
//! format 2 partial (it looks for `g*` generations only), and a format 2
//! process never uses one of its partials and says so: they share complete,
//! verified blobs only. A cache in a format this code does not know is
//! refused, never misread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::table;
use crate::digest::Digest;
use crate::digest::{BlobHasher, ChunkHash, ChunkTable};
use crate::error::{Error, Result};
use crate::fsutil::{read_full_at, write_all_at};
use crate::reference::RegistryRef;

/// The cache format this code reads and writes (see the module docs).
pub const FORMAT: u64 = 2;

/// The file naming the format, at the root.
const FORMAT_FILE: &str = "ocifs-cache.json";

/// The prefix of a format 2 generation's directory name.
const GENERATION: &str = "v2-";

/// The prefix of a format 1 generation's directory name.
const V1_GENERATION: &str = "g";

/// The byte of the map whose lock is the promotion lock (past any chunk).
const PROMOTE_BYTE: u64 = 1 << 62;

/// The store's own directories.
const STORE_DIRS: [&str; 6] = [
    "blobs/sha256",
    "chunks/sha256",
    "partial/sha256",
    "index/sha256",
    "refs",
    "tmp",
];

/// `mkdir -p` with mode 0700 for what it creates.
fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Refuses a directory that others could write to (see [`DiskStore::open`]).
#[cfg(unix)]
fn check_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let unsafe_dir = |detail: String| Error::UnsafeCache {
        path: dir.display().to_string(),
        detail,
    };
    let meta = fs::metadata(dir).map_err(io_err(|| {
        format!("checking cache directory {}", dir.display())
    }))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "is owned by uid {}, not by you (uid {me}) or root: its owner decides what ocifs \
             serves from it; use a cache of your own (--cache-dir), or chown -R {me} {}",
            meta.uid(),
            dir.display()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "is writable by {} (mode {mode:04o}): whoever can write there decides what ocifs \
             serves; chmod 700 {}",
            if mode & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_dir: &Path) -> Result<()> {
    Ok(())
}

/// A partial blob younger than this is never evicted: a fetch may be writing it.
const PARTIAL_GRACE: Duration = Duration::from_secs(60);

fn io_err(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::io(context(), e)
}

/// The on-disk store.
#[derive(Debug)]
pub struct DiskStore {
    root: PathBuf,
    tmp_counter: AtomicU64,
    /// Whether this process said that an older ocifs shares the cache.
    warned_old: std::sync::atomic::AtomicBool,
}

/// What opening a format 1 cache did to it.
#[derive(Debug, Default)]
struct Migration {
    /// Partial downloads dropped.
    partials: u64,
    /// Bytes they held.
    bytes: u64,
}

/// What one blob occupies in the store, for `ocifs cache ls`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredBlob {
    /// The blob's digest.
    pub digest: Digest,
    /// `complete` or `partial`.
    pub state: &'static str,
    /// The blob's size.
    pub size: u64,
    /// Bytes present on disk.
    pub present: u64,
    /// Last use, seconds since the epoch.
    pub last_used: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct PartialMeta {
    size: u64,
    chunk_size: u64,
}

/// A partial blob, open for writing chunks.
#[derive(Debug)]
pub struct Partial {
    dir: PathBuf,
    data: File,
    /// One byte a chunk: 1 once present.
    map: File,
    /// The blob's size.
    pub size: u64,
    /// The chunk size this partial blob was created with (it may differ from
    /// the reading process's).
    pub chunk_size: u64,
}

/// A held chunk lock (released on drop).
#[derive(Debug)]
pub struct ChunkLock {
    _file: File,
}

impl DiskStore {
    /// Opens (creating if needed) the store at `root`.
    ///
    /// Whoever can write to the cache decides what ocifs serves from it
    /// (at rest, bytes are trusted once checked against their table): the
    /// directories are made `0700`, and a cache directory, or one of its
    /// own, that is writable by group or others, or owned by a user other
    /// than the caller or root, is refused naming the path and the fix.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in STORE_DIRS {
            create_private_dir(&root.join(sub)).map_err(io_err(|| {
                format!("creating cache directory {}", root.join(sub).display())
            }))?;
        }
        check_private(&root)?;
        for sub in STORE_DIRS {
            let mut dir = root.clone();
            for part in Path::new(sub).components() {
                dir.push(part);
                check_private(&dir)?;
            }
        }
        let store = DiskStore {
            root,
            tmp_counter: AtomicU64::new(0),
            warned_old: std::sync::atomic::AtomicBool::new(false),
        };
        store.check_format()?;
        let marker = store.root.join("oci-layout");
        if !marker.exists() {
            store.write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        store.sweep_emptied_partials();
        Ok(store)
    }

    /// Removes the empty directories a dropped or promoted partial blob can
    /// leave behind. On Windows a file still open in some process is only
    /// marked for deletion, so the `remove_dir_all` after a promotion (the
    /// promoting process still holds the generation's `map` and `data`)
    /// empties the generation's directory but cannot remove it, nor the
    /// blob's; once the files are closed the empty directories stay, one
    /// pair a blob fetched. Only empty directories go (`remove_dir`): a
    /// generation always appears whole, so an empty one is never in use,
    /// and a maker racing this finds its blob's directory gone and tries
    /// again (see [`DiskStore::partial`]).
    fn sweep_emptied_partials(&self) {
        let partials = self.root.join("partial/sha256");
        for blob in fs::read_dir(&partials).into_iter().flatten().flatten() {
            for generation in fs::read_dir(blob.path()).into_iter().flatten().flatten() {
                let _ = fs::remove_dir(generation.path());
            }
            let _ = fs::remove_dir(blob.path());
        }
    }

    /// Reads the cache's format, refusing one this code does not know and
    /// migrating a format 1 cache (see the module docs). A new cache gets
    /// its format file before anything else, so a process racing to open
    /// it never takes it for an old one.
    fn check_format(&self) -> Result<()> {
        let path = self.root.join(FORMAT_FILE);
        let refuse = |detail: String| Error::CacheFormat {
            path: self.root.display().to_string(),
            detail,
        };
        match fs::read(&path) {
            Ok(bytes) => {
                #[derive(Deserialize)]
                struct Format {
                    format: u64,
                }
                match serde_json::from_slice::<Format>(&bytes) {
                    Ok(f) if f.format == FORMAT => Ok(()),
                    Ok(f) => Err(refuse(format!(
                        "it is in cache format {}, and this ocifs reads format {FORMAT} \
                         (it was made by {} ocifs); use that ocifs, or give this one \
                         another --cache-dir",
                        f.format,
                        if f.format > FORMAT {
                            "a newer"
                        } else {
                            "another"
                        }
                    ))),
                    Err(e) => Err(refuse(format!(
                        "its format file {} is unreadable ({e}); if nothing else uses the \
                         cache, remove the directory (it is only a cache)",
                        path.display()
                    ))),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.root.join("oci-layout").exists() {
                    let m = self.migrate_v1();
                    tracing::warn!(
                        cache = %self.root.display(),
                        "the cache was written by an older ocifs (cache format 1) and is now \
                         format {FORMAT}: its complete blobs are kept; {} partial downloads \
                         ({} bytes) were dropped and are fetched again when read; an older \
                         ocifs still using this cache shares only complete blobs with this one",
                        m.partials,
                        m.bytes
                    );
                }
                self.write_atomic(&path, format!("{{\"format\":{FORMAT}}}").as_bytes())
            }
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Drops the partial downloads of a format 1 cache (the rest of it is
    /// the same in format 2).
    fn migrate_v1(&self) -> Migration {
        let mut m = Migration::default();
        let partials = self.root.join("partial/sha256");
        for blob in fs::read_dir(&partials).into_iter().flatten().flatten() {
            for generation in fs::read_dir(blob.path()).into_iter().flatten().flatten() {
                if !generation
                    .file_name()
                    .to_string_lossy()
                    .starts_with(V1_GENERATION)
                {
                    continue;
                }
                m.bytes += v1_present(&generation.path());
                if fs::remove_dir_all(generation.path()).is_ok() {
                    m.partials += 1;
                }
            }
        }
        m
    }

    /// Says, once a process, that an older ocifs is writing partial
    /// downloads into this cache (`found`, one of its generations).
    fn warn_old_generation(&self, found: &Path) {
        if !self.warned_old.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %found.display(),
                "an ocifs older than cache format {FORMAT} is using this cache: its partial \
                 downloads are not used here, nor ours there (only complete, verified blobs \
                 are shared); give it its own --cache-dir, or upgrade it"
            );
        }
    }

    /// Bytes free for an unprivileged user on the store's filesystem, where
    /// that can be known.
    pub fn available(&self) -> Option<u64> {
        #[cfg(unix)]
        {
            let st = rustix::fs::statvfs(&self.root).ok()?;
            Some(st.f_bavail.saturating_mul(st.f_frsize))
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a complete blob lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The directory of the partial generations of `digest`.
    fn partial_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("partial/sha256").join(digest.hex())
    }

    /// The usable generation of a partial blob: the first by name whose
    /// meta is for `size` and whose data and map are still there.
    fn open_generation(&self, container: &Path, size: u64) -> Option<Partial> {
        let mut gens: Vec<PathBuf> = Vec::new();
        for e in fs::read_dir(container).ok()?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(GENERATION) {
                gens.push(e.path());
            } else if name.starts_with(V1_GENERATION) {
                self.warn_old_generation(&e.path());
            }
        }
        gens.sort();
        gens.into_iter().find_map(|dir| {
            let meta = read_meta(&dir)?;
            if meta.size != size || meta.chunk_size == 0 {
                return None;
            }
            // Never created here: a generation whose data is gone was
            // promoted or is being removed.
            let open = |name: &str| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(dir.join(name))
                    .ok()
            };
            let (data, map) = (open("data")?, open("map")?);
            let count = size.div_ceil(meta.chunk_size);
            (data.metadata().ok()?.len() == size && map.metadata().ok()?.len() == count).then_some(
                Partial {
                    dir,
                    data,
                    map,
                    size,
                    chunk_size: meta.chunk_size,
                },
            )
        })
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        self.root
            .join("tmp")
            .join(format!("{}-{n}-{nanos}", std::process::id()))
    }

    /// Recreates the store's directories (someone removed the cache under
    /// a running process).
    fn ensure_dirs(&self) {
        for sub in STORE_DIRS {
            let _ = create_private_dir(&self.root.join(sub));
        }
    }

    /// Writes `bytes` to `path` atomically: temp file, sync, rename.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp_path();
        let ctx = || format!("writing {}", path.display());
        let result = (|| {
            let mut f = match File::create(&tmp) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.ensure_dirs();
                    File::create(&tmp)?
                }
                r => r?,
            };
            io::Write::write_all(&mut f, bytes)?;
            f.sync_all()?;
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io_err(ctx))
    }

    /// Opens a complete blob for reading, holding a shared lock on it so the
    /// evictor of any process leaves it alone. `None` if it is not complete.
    ///
    /// A name under `blobs/` that is not a regular file (a symlink put
    /// there, say) is removed and taken as absent: it is fetched again.
    pub fn open_complete(&self, digest: &Digest) -> Result<Option<File>> {
        let path = self.blob_path(digest);
        let mut options = OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(
            &mut options,
            (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
        );
        let opened = options
            .open(&path)
            .and_then(|f| f.metadata().map(|m| (f, m.is_file())));
        let opened = match opened {
            Ok((_, false)) => {
                tracing::warn!(path = %path.display(), "not a regular file in the cache; removed");
                self.remove(digest);
                return Ok(None);
            }
            Ok((f, true)) => Ok(f),
            #[cfg(unix)]
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                tracing::warn!(path = %path.display(), "a symlink in the cache; removed");
                self.remove(digest);
                return Ok(None);
            }
            Err(e) => Err(e),
        };
        match opened {
            Ok(f) => {
                f.lock_shared()
                    .map_err(io_err(|| format!("locking {}", path.display())))?;
                // Its mtime is its last use, for LRU eviction.
                let _ = f.set_modified(SystemTime::now());
                Ok(Some(f))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("opening {}", path.display()), e)),
        }
    }

    /// Where the chunk digest table of a complete blob lives.
    fn table_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("chunks/sha256").join(digest.hex())
    }

    /// Stores the chunk digest table of `digest` (a blob of `size` bytes),
    /// taken from bytes that hashed to it.
    pub fn put_table(
        &self,
        digest: &Digest,
        chunk_size: u64,
        size: u64,
        table: &ChunkTable,
    ) -> Result<()> {
        self.write_atomic(
            &self.table_path(digest),
            &table::encode(chunk_size, size, table),
        )
    }

    /// The stored chunk digest table of `digest` (a blob of `size` bytes):
    /// its chunk size and digests, if there is one, whole and undamaged.
    pub fn get_table(&self, digest: &Digest, size: u64) -> Option<(u64, ChunkTable)> {
        let f = File::open(self.table_path(digest)).ok()?;
        let mut buf = Vec::new();
        f.take(table::MAX_ENCODED).read_to_end(&mut buf).ok()?;
        table::decode(&buf, size)
    }

    /// A sha256 chunk table of complete blob `digest` (of `size` bytes), to
    /// publish: the stored one if it is of sha256, else one of `chunk_size`
    /// chunks taken by hashing the file, if the file still hashes to
    /// `digest` (the cache's own tables are of BLAKE3, which other readers
    /// do not take).
    pub fn sha256_table(
        &self,
        digest: &Digest,
        size: u64,
        chunk_size: u64,
    ) -> Option<(u64, ChunkTable)> {
        let f = self.open_complete(digest).ok()??;
        if let Some((cs, t)) = self.get_table(digest, size)
            && t.hash == ChunkHash::Sha256
        {
            return Some((cs, t));
        }
        let hasher = hash_file(&f, chunk_size, size, ChunkHash::Sha256).ok()?;
        if hasher.len() != size {
            return None;
        }
        let (actual, table) = hasher.finish();
        (actual == *digest).then_some((chunk_size, table))
    }

    /// Where the index of layer `digest` lives (`index/sha256/<hex>`):
    /// derived data, small, rebuilt if lost.
    pub fn index_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("index/sha256").join(digest.hex())
    }

    /// The stored index of layer `digest`, if any (at most `limit` bytes).
    pub fn get_index(&self, digest: &Digest, limit: u64) -> Option<Vec<u8>> {
        let f = File::open(self.index_path(digest)).ok()?;
        let mut buf = Vec::new();
        f.take(limit).read_to_end(&mut buf).ok()?;
        Some(buf)
    }

    /// Stores the index of layer `digest` (atomically: a reader sees the
    /// old file or the new one).
    pub fn put_index(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        self.write_atomic(&self.index_path(digest), bytes)
    }

    /// Records that decoding the complete blob `of` gives the complete blob
    /// `decoded` of `size` bytes: the caller decoded `of` (verified) and
    /// hashed the result. A decoded copy is found only by this record
    /// (an image config's diff ID may name another blob, or none).
    pub fn put_decoded(&self, of: &Digest, decoded: &Digest, size: u64) -> Result<()> {
        self.write_atomic(
            &self.decoded_path(of),
            format!("{decoded} {size}").as_bytes(),
        )
    }

    /// What decoding blob `of` was found to give, if recorded: the digest
    /// and the size (`None` in a record an older ocifs wrote).
    pub fn decoded_of(&self, of: &Digest) -> Option<(Digest, Option<u64>)> {
        let record = fs::read_to_string(self.decoded_path(of)).ok()?;
        let mut words = record.split_whitespace();
        let digest = words.next()?.parse().ok()?;
        let size = match words.next() {
            Some(w) => Some(w.parse().ok()?),
            None => None,
        };
        Some((digest, size))
    }

    fn decoded_path(&self, of: &Digest) -> PathBuf {
        self.root.join("decoded/sha256").join(of.hex())
    }

    /// A new temporary file in the store, for a blob made here (a layer's
    /// decoded stream): hand it to [`DiskStore::adopt`] once its digest is
    /// known, or remove it.
    pub fn temp_file(&self) -> Result<(PathBuf, File)> {
        let path = self.tmp_path();
        let file = match File::create(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure_dirs();
                File::create(&path)
            }
            r => r,
        }
        .map_err(io_err(|| format!("creating {}", path.display())))?;
        Ok((path, file))
    }

    /// Stores `bytes`, which the caller hashed to `digest`, as that
    /// complete blob: for small pieces made of checked bytes (a chunked
    /// layer's decoded chunk, its table of contents), each read back whole
    /// and hashed before use. Not synced, there may be thousands: a piece
    /// cut short by a crash fails that check and is dropped.
    pub fn put_piece(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let path = self.blob_path(digest);
        if path.is_file() {
            return Ok(());
        }
        self.write_unsynced(&path, bytes)
    }

    /// Writes `bytes` to `path` by a temporary file renamed into place.
    fn write_unsynced(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let (tmp, mut f) = self.temp_file()?;
        let written = io::Write::write_all(&mut f, bytes)
            .and_then(|()| {
                drop(f);
                match path.parent() {
                    Some(parent) => fs::create_dir_all(parent),
                    None => Ok(()),
                }
            })
            .and_then(|()| fs::rename(&tmp, path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(io_err(|| format!("writing {}", path.display())))
    }

    /// Renames a temporary file whose content the caller hashed to
    /// `digest` into place as that complete blob.
    pub fn adopt(&self, tmp: &Path, digest: &Digest) -> Result<()> {
        move_into_place(tmp, &self.blob_path(digest))
    }

    /// Whether a complete blob exists.
    pub fn has_complete(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Stores small content (a manifest) as a complete blob after checking it.
    pub fn put_small(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        digest.verify(bytes, || format!("manifest {digest}"))?;
        let path = self.blob_path(digest);
        if path.is_file() {
            return Ok(());
        }
        self.write_atomic(&path, bytes)
    }

    /// Reads a small complete blob (a manifest), bounded by `limit`.
    pub fn get_small(&self, digest: &Digest, limit: u64) -> Result<Option<Vec<u8>>> {
        let path = self.blob_path(digest);
        let mut buf = Vec::new();
        match File::open(&path) {
            Ok(f) => {
                f.take(limit + 1)
                    .read_to_end(&mut buf)
                    .map_err(io_err(|| format!("reading {}", path.display())))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        }
        // Never trust the disk more than the network.
        if buf.len() as u64 > limit || Digest::of(&buf) != *digest {
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        Ok(Some(buf))
    }

    /// Opens the partial blob of `digest`, making a new generation if there
    /// is no usable one.
    pub fn partial(&self, digest: &Digest, size: u64, chunk_size: u64) -> Result<Partial> {
        let container = self.partial_dir(digest);
        let ctx = || format!("opening partial blob {}", container.display());
        self.ensure_dirs();
        let mut last = None;
        for _ in 0..3 {
            if let Some(p) = self.open_generation(&container, size) {
                return Ok(p);
            }
            // A new generation, whole before it is visible. Racing makers
            // each add theirs; every one then takes the first by name.
            let tmp = self.tmp_path();
            let made = (|| -> io::Result<()> {
                fs::create_dir_all(&tmp)?;
                let meta = PartialMeta { size, chunk_size };
                fs::write(
                    tmp.join("meta"),
                    serde_json::to_vec(&meta).unwrap_or_default(),
                )?;
                File::create(tmp.join("data"))?.set_len(size)?;
                File::create(tmp.join("map"))?.set_len(size.div_ceil(chunk_size))?;
                fs::create_dir_all(&container)?;
                let name = tmp
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                fs::rename(&tmp, container.join(format!("{GENERATION}{name}")))
            })();
            if let Err(e) = made {
                let _ = fs::remove_dir_all(&tmp);
                last = Some(e);
            }
        }
        Err(Error::io(
            ctx(),
            last.unwrap_or_else(|| io::Error::other("the partial blob keeps vanishing")),
        ))
    }

    /// Reads `[offset, offset+len)` of a complete blob from an open handle.
    pub fn read_at(
        file: &File,
        path_for_errors: &Path,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        let buf = crate::fsutil::read_vec_at(file, offset, len)
            .map_err(io_err(|| format!("reading {}", path_for_errors.display())))?;
        let got = buf.len();
        if got < len {
            return Err(Error::ShortRead {
                digest: path_for_errors.display().to_string(),
                offset,
                expected: len as u64,
                got: got as u64,
            });
        }
        Ok(buf)
    }

    /// Verifies a complete partial blob and moves it under `blobs/`. On a
    /// mismatch the partial blob is deleted, so nothing of it stays cached.
    /// True if this call hashed the bytes (false: another process promoted
    /// the blob first).
    pub fn promote(&self, p: &Partial, digest: &Digest) -> Result<bool> {
        let final_path = self.blob_path(digest);
        if final_path.is_file() {
            return Ok(false);
        }
        let _lock = match p.lock_range(PROMOTE_BYTE, 1) {
            Ok(lock) => Some(lock),
            // The generation is gone: another process promoted (or dropped) it.
            Err(_) if final_path.is_file() => return Ok(false),
            // Dropped (evicted by another process): its bytes are still in
            // the open file, checked and placed below; no other process
            // promotes this generation any more.
            Err(_) if p.is_gone() => None,
            Err(e) => return Err(e),
        };
        if final_path.is_file() {
            return Ok(false);
        }
        let data_path = p.dir.join("data");
        let hasher = hash_file(&p.data, p.chunk_size, p.size, ChunkHash::AT_REST)
            .map_err(io_err(|| format!("reading {}", data_path.display())))?;
        let len = hasher.len();
        let (actual, digests) = hasher.finish();
        if len != p.size || &actual != digest {
            let _ = fs::remove_dir_all(&p.dir);
            return Err(Error::blob_mismatch(
                digest,
                format_args!(
                    "({len} bytes fetched, {} expected; dropped from the cache)",
                    p.size
                ),
                actual,
            ));
        }
        p.data
            .sync_all()
            .map_err(io_err(|| format!("syncing {}", data_path.display())))?;
        self.put_table(digest, p.chunk_size, p.size, &digests)?;
        self.place(p, &final_path)?;
        let _ = fs::remove_dir_all(self.partial_dir(digest));
        Ok(true)
    }

    /// Moves a partial blob whose digest the caller computed and checked
    /// while writing it under `blobs/`, without hashing it again; `table`
    /// is its chunk digest table (in the partial's chunk size), taken on
    /// the way, stored first: a complete blob always has its table.
    pub fn promote_verified(&self, p: &Partial, digest: &Digest, table: &ChunkTable) -> Result<()> {
        let final_path = self.blob_path(digest);
        if final_path.is_file() {
            return Ok(());
        }
        let data_path = p.dir.join("data");
        p.data
            .sync_all()
            .map_err(io_err(|| format!("syncing {}", data_path.display())))?;
        let placed = self
            .put_table(digest, p.chunk_size, p.size, table)
            .and_then(|()| self.place(p, &final_path));
        if placed.is_err() {
            // Checked and synced, but not in place: it stays a partial
            // blob with every chunk marked, which is then served without
            // being fetched again (however far the stream's own marks got).
            let _ = p.mark(0, p.size);
        }
        placed?;
        let _ = fs::remove_dir_all(self.partial_dir(digest));
        Ok(())
    }

    /// Renames `p`'s checked data into place at `final_path`. If its
    /// generation was dropped meanwhile (evicted by another process) and no
    /// copy is there, the bytes just checked are still in the open file:
    /// they are copied into place instead (no reader gets an error for it).
    fn place(&self, p: &Partial, final_path: &Path) -> Result<()> {
        let data_path = p.dir.join("data");
        match fs::rename(&data_path, final_path) {
            Ok(()) => Ok(()),
            Err(_) if final_path.is_file() => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(path = %data_path.display(), "the partial blob was dropped while promoted; copying it into place");
                let (tmp, mut out) = self.temp_file()?;
                let copied = (|| -> io::Result<()> {
                    use std::io::Seek as _;
                    let mut src = p.data.try_clone()?;
                    src.seek(io::SeekFrom::Start(0))?;
                    let n = io::copy(&mut src.take(p.size), &mut out)?;
                    if n != p.size {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{n} of {} bytes", p.size),
                        ));
                    }
                    out.sync_all()
                })();
                drop(out);
                let placed = copied
                    .map_err(io_err(|| {
                        format!("copying {} into place", data_path.display())
                    }))
                    .and_then(|()| move_into_place(&tmp, final_path));
                if placed.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                placed
            }
            Err(e) => Err(Error::io(
                format!("moving {} into place", data_path.display()),
                e,
            )),
        }
    }

    /// Drops a partial blob (after a failed check).
    pub fn drop_partial(&self, digest: &Digest) {
        let _ = fs::remove_dir_all(self.partial_dir(digest));
    }

    /// Removes the complete copy of `digest` only (found damaged: its
    /// table and partial chunks stay).
    pub fn remove_complete(&self, digest: &Digest) {
        let _ = fs::remove_file(self.blob_path(digest));
    }

    /// Removes whatever is stored for `digest` (complete and partial).
    pub fn remove(&self, digest: &Digest) {
        let _ = fs::remove_file(self.blob_path(digest));
        let _ = fs::remove_file(self.table_path(digest));
        let _ = fs::remove_dir_all(self.partial_dir(digest));
    }

    fn ref_path(&self, r: &RegistryRef, tag: &str) -> PathBuf {
        // ':' (a port) is not allowed in Windows file names.
        let registry = r.registry.replace(':', "%3A");
        let mut p = self.root.join("refs").join(registry);
        for c in r.repository.split('/') {
            p.push(c);
        }
        p.push(tag);
        p
    }

    /// Remembers that `tag` of `r` resolved to `digest`.
    pub fn put_ref(&self, r: &RegistryRef, tag: &str, digest: &Digest) -> Result<()> {
        self.write_atomic(&self.ref_path(r, tag), digest.to_string().as_bytes())
    }

    /// The digest `tag` of `r` last resolved to, if remembered.
    pub fn get_ref(&self, r: &RegistryRef, tag: &str) -> Option<Digest> {
        fs::read_to_string(self.ref_path(r, tag))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every blob in the store, complete and partial.
    pub fn list(&self) -> Result<Vec<StoredBlob>> {
        let mut out = Vec::new();
        let secs = |m: &fs::Metadata| {
            m.modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs())
        };
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs)
            .map_err(io_err(|| format!("listing {}", blobs.display())))?
            .flatten()
        {
            let Ok(digest) =
                format!("sha256:{}", entry.file_name().to_string_lossy()).parse::<Digest>()
            else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            out.push(StoredBlob {
                digest,
                state: "complete",
                size: meta.len(),
                present: meta.len(),
                last_used: secs(&meta),
            });
        }
        let partials = self.root.join("partial/sha256");
        for entry in fs::read_dir(&partials)
            .map_err(io_err(|| format!("listing {}", partials.display())))?
            .flatten()
        {
            let Ok(digest) =
                format!("sha256:{}", entry.file_name().to_string_lossy()).parse::<Digest>()
            else {
                continue;
            };
            // Every generation counts (racing makers may leave two).
            let mut found: Option<StoredBlob> = None;
            for generation in fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                let dir = generation.path();
                let Some(meta) = read_meta(&dir) else {
                    continue;
                };
                let used = fs::metadata(dir.join("data"))
                    .map(|m| secs(&m))
                    .unwrap_or(0);
                // An older ocifs's generation counts too: it takes room.
                let present = if generation
                    .file_name()
                    .to_string_lossy()
                    .starts_with(V1_GENERATION)
                {
                    v1_present(&dir)
                } else {
                    map_present(&dir, meta)
                };
                let b = found.get_or_insert(StoredBlob {
                    digest: digest.clone(),
                    state: "partial",
                    size: meta.size,
                    present: 0,
                    last_used: 0,
                });
                b.present += present;
                b.last_used = b.last_used.max(used);
            }
            out.extend(found);
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest).then(a.state.cmp(b.state)));
        Ok(out)
    }

    /// Bytes the store holds (complete blobs plus chunks of partial ones).
    pub fn usage(&self) -> Result<u64> {
        Ok(self.list()?.iter().map(|b| b.present).sum())
    }

    /// Deletes least-recently-used blobs until the store holds at most
    /// `budget` bytes. Blobs in `pinned`, blobs another reader holds a lock
    /// on, and partial blobs written in the last minute are kept. Returns the
    /// bytes freed.
    pub fn evict_to(&self, budget: u64, pinned: &dyn Fn(&Digest) -> bool) -> Result<u64> {
        let mut blobs = self.list()?;
        let mut total: u64 = blobs.iter().map(|b| b.present).sum();
        if total <= budget {
            return Ok(0);
        }
        let before = total;
        // First what is of no use: the partial blob of a complete blob
        // (nothing is written into it once the blob is there).
        blobs.retain(|b| {
            if b.state == "partial"
                && self.has_complete(&b.digest)
                && fs::remove_dir_all(self.partial_dir(&b.digest)).is_ok()
            {
                total -= b.present;
                return false;
            }
            true
        });
        let freed_first = before - total;
        if total <= budget {
            return Ok(freed_first);
        }
        // Partial blobs first (they are of no use until complete), then
        // complete ones, least recently used first.
        blobs.sort_by_key(|b| (b.state != "partial", b.last_used));
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut freed = freed_first;
        for b in blobs {
            if total <= budget {
                break;
            }
            if pinned(&b.digest) {
                continue;
            }
            let removed = if b.state == "complete" {
                let path = self.blob_path(&b.digest);
                match File::open(&path) {
                    Ok(f) if f.try_lock().is_ok() => {
                        let _ = fs::remove_file(self.table_path(&b.digest));
                        fs::remove_file(&path).is_ok()
                    }
                    _ => false,
                }
            } else if now.saturating_sub(b.last_used) >= PARTIAL_GRACE.as_secs() {
                fs::remove_dir_all(self.partial_dir(&b.digest)).is_ok()
            } else {
                false
            };
            if removed {
                tracing::debug!(digest = %b.digest, bytes = b.present, state = b.state, "evicted");
                total -= b.present;
                freed += b.present;
            }
        }
        Ok(freed)
    }

    /// Re-hashes every complete blob; removes and returns the bad ones, and
    /// takes the chunk table of a good one that has none.
    pub fn verify_all(&self, mut progress: impl FnMut(&Digest, bool)) -> Result<Vec<Digest>> {
        let mut bad = Vec::new();
        for b in self.list()?.into_iter().filter(|b| b.state == "complete") {
            let path = self.blob_path(&b.digest);
            // Hashed in the default chunk size, so a blob that has no
            // table yet (an older cache's) gets one on the way.
            let cs = super::DEFAULT_CHUNK_SIZE;
            let checked = File::open(&path)
                .and_then(|f| hash_file(&f, cs, b.size, ChunkHash::AT_REST))
                .ok()
                .filter(|h| h.len() == b.size)
                .map(BlobHasher::finish)
                .filter(|(d, _)| *d == b.digest);
            let ok = checked.is_some();
            if let Some((_, table)) = checked
                && self.get_table(&b.digest, b.size).is_none()
                && let Err(e) = self.put_table(&b.digest, cs, b.size, &table)
            {
                tracing::warn!(digest = %b.digest, error = %e, "cannot store the chunk digest table");
            }
            progress(&b.digest, ok);
            if !ok {
                self.remove(&b.digest);
                bad.push(b.digest);
            }
        }
        // Partial blobs whose chunk records are unreadable are dropped too.
        Ok(bad)
    }

    /// Settles every partial blob not written to in the last minute (one
    /// being fetched right now is left alone): one with all its chunks is
    /// hashed and promoted, or dropped on a mismatch; one with chunks
    /// missing is dropped, since its chunks were never checked. `report`
    /// is told each blob and what became of it.
    pub fn settle_partials(&self, mut report: impl FnMut(&Digest, &str)) -> Result<()> {
        let now = SystemTime::now();
        for b in self.list()?.into_iter().filter(|b| b.state == "partial") {
            let container = self.partial_dir(&b.digest);
            if self.has_complete(&b.digest) {
                let _ = fs::remove_dir_all(&container);
                report(&b.digest, "partial copy of a complete blob, removed");
                continue;
            }
            let recent = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(b.last_used)
                < PARTIAL_GRACE.as_secs();
            if recent {
                report(
                    &b.digest,
                    "partial, in use (written in the last minute), left",
                );
                continue;
            }
            match self.open_generation(&container, b.size) {
                Some(p) if p.is_complete() => match self.promote(&p, &b.digest) {
                    Ok(_) => report(
                        &b.digest,
                        "partial with every chunk, verified and completed",
                    ),
                    Err(e) => report(&b.digest, &format!("partial, dropped: {e}")),
                },
                _ => {
                    let _ = fs::remove_dir_all(&container);
                    report(
                        &b.digest,
                        &format!(
                            "partial, dropped: {} of {} bytes present, never checked",
                            b.present, b.size
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Deletes everything (`cache prune --all`), except blobs in use.
    pub fn clear(&self) -> Result<u64> {
        let freed = self.evict_to(0, &|_| false)?;
        // Layer indexes are derived from blobs: rebuilt when needed.
        let _ = fs::remove_dir_all(self.root.join("index"));
        let _ = fs::remove_dir_all(self.root.join("chunks"));
        Ok(freed)
    }
}

/// A generation's meta, if readable.
fn read_meta(dir: &Path) -> Option<PartialMeta> {
    let meta = fs::read(dir.join("meta")).ok()?;
    serde_json::from_slice(&meta).ok()
}

/// Bytes present in a format 2 generation, from its map.
fn map_present(dir: &Path, meta: PartialMeta) -> u64 {
    let Ok(map) = fs::read(dir.join("map")) else {
        return 0;
    };
    let cs = meta.chunk_size.max(1);
    (0..)
        .zip(&map)
        .filter(|(_, m)| **m == 1)
        .map(|(n, _)| ((n + 1) * cs).min(meta.size).saturating_sub(n * cs))
        .sum()
}

/// Bytes present in a format 1 generation, from its chunk markers.
fn v1_present(dir: &Path) -> u64 {
    let Some(meta) = read_meta(dir) else {
        return 0;
    };
    let have = fs::read_dir(dir.join("have"))
        .map(|d| d.flatten().count() as u64)
        .unwrap_or(0);
    (have * meta.chunk_size).min(meta.size)
}

/// Takes a write lock on `[start, start+len)` of `file`, waiting for it:
/// an open file description lock, so it belongs to this open of the file
/// (not to the process), is released when the file is closed, and
/// excludes other opens in this process as in any other.
#[cfg(target_os = "linux")]
fn lock_range(file: &File, start: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, fcntl};
    use nix::libc;
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: i64::try_from(start).map_err(io::Error::other)?,
        l_len: i64::try_from(len).map_err(io::Error::other)?,
        l_pid: 0,
    };
    loop {
        match fcntl(file, FcntlArg::F_OFD_SETLKW(&lock)) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Without byte-range locks: the whole file, one holder at a time.
#[cfg(not(target_os = "linux"))]
fn lock_range(file: &File, _start: u64, _len: u64) -> io::Result<()> {
    file.lock()
}

/// Hashes a file from its start, whole and in chunks of `chunk_size` (a
/// table of `hash`), reading at most one buffer past `size` (a longer file
/// then fails the caller's length check without being read to its end).
pub(crate) fn hash_file(
    file: &File,
    chunk_size: u64,
    size: u64,
    hash: ChunkHash,
) -> io::Result<BlobHasher> {
    let mut hasher = BlobHasher::new(chunk_size, hash);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos <= size {
        let n = read_full_at(file, &mut buf, pos)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(hasher)
}

/// Renames a partial blob's data into place; if another process promoted
/// the same blob first (the data is gone, the blob is there), that is as
/// good.
fn move_into_place(data: &Path, blob: &Path) -> Result<()> {
    match fs::rename(data, blob) {
        Ok(()) => Ok(()),
        Err(_) if blob.is_file() => Ok(()),
        Err(e) => Err(Error::io(
            format!("moving {} into place", data.display()),
            e,
        )),
    }
}

impl Partial {
    /// The chunks (in this partial blob's chunk size) covering `[offset, end)`.
    pub fn chunks_covering(&self, offset: u64, end: u64) -> std::ops::RangeInclusive<u64> {
        let last = end.saturating_sub(1).max(offset);
        offset / self.chunk_size..=last / self.chunk_size
    }

    /// The number of chunks.
    fn count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }

    /// The map's bytes for chunks `first..first+len` (a map cut short
    /// reads as absent chunks).
    fn marks(&self, first: u64, len: u64) -> Vec<u8> {
        let len = len.min(self.count().saturating_sub(first));
        let mut buf = vec![0u8; len as usize];
        let got = read_full_at(&self.map, &mut buf, first).unwrap_or(0);
        buf.truncate(got);
        buf
    }

    /// Whether chunk `n` is present.
    pub fn has(&self, n: u64) -> bool {
        self.missing(n..=n).is_empty()
    }

    /// The chunks of `chunks` that are not present.
    pub fn missing(&self, chunks: std::ops::RangeInclusive<u64>) -> Vec<u64> {
        let (first, last) = (*chunks.start(), *chunks.end());
        if last < first {
            return Vec::new();
        }
        let marks = self.marks(first, last - first + 1);
        (first..=last)
            .filter(|n| marks.get((n - first) as usize) != Some(&1))
            .collect()
    }

    /// Whether this generation was dropped (promoted, evicted, found
    /// corrupt): nothing more can be written or marked in it.
    pub fn is_gone(&self) -> bool {
        // Removal (eviction, promotion by another process) takes the
        // directory apart in no set order: either half gone is gone.
        !self.dir.join("data").exists() || !self.dir.join("map").exists()
    }

    /// Whether every chunk is present.
    pub fn is_complete(&self) -> bool {
        self.first_missing().is_none() && !self.is_gone()
    }

    /// Locks `[start, start+len)` of this generation's map on a descriptor
    /// of its own (see the module docs). Blocking.
    fn lock_range(&self, start: u64, len: u64) -> Result<ChunkLock> {
        let path = self.dir.join("map");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(|| format!("opening {}", path.display())))?;
        lock_range(&file, start, len).map_err(io_err(|| format!("locking {}", path.display())))?;
        Ok(ChunkLock { _file: file })
    }

    /// Takes the lock of chunks `first..=last`, waiting for other writers
    /// of any of them to finish. Blocking: call from a blocking context.
    pub fn lock_chunks(&self, first: u64, last: u64) -> Result<ChunkLock> {
        self.lock_range(first, last.saturating_sub(first) + 1)
    }

    /// Writes chunks starting at chunk `first` (bytes must start at its
    /// offset and cover whole chunks, the last one possibly short at the end
    /// of the blob), then marks them present. With `sync`, the bytes reach
    /// the disk before the marks (lazy mode serves chunks from here);
    /// without, a power loss may leave a mark over lost bytes, which the
    /// whole-blob check before promotion catches (strict mode serves nothing
    /// before it). A process crash loses nothing either way.
    pub fn write_chunks(&self, first: u64, bytes: &[u8], sync: bool) -> Result<()> {
        self.write_unmarked(first, bytes)?;
        if sync {
            self.write_back()?;
        }
        self.mark(first, bytes.len() as u64)
    }

    /// Writes chunks as [`Self::write_chunks`] does, but leaves them
    /// unmarked: the caller marks them ([`Self::mark`]) once it synced them
    /// ([`Self::write_back`]), off its own path.
    pub fn write_unmarked(&self, first: u64, bytes: &[u8]) -> Result<()> {
        let offset = first * self.chunk_size;
        write_all_at(&self.data, bytes, offset).map_err(io_err(|| {
            format!("writing {}", self.dir.join("data").display())
        }))
    }

    /// A new read-only handle on the data file, held with a shared lock
    /// as a complete blob's is ([`DiskStore::open_complete`]): for serving
    /// a blob that checked out while it is moved into place (the same
    /// file becomes the complete blob).
    pub fn open_verified(&self) -> Result<File> {
        let path = self.dir.join("data");
        let mut options = OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(
            &mut options,
            rustix::fs::OFlags::NOFOLLOW.bits() as i32,
        );
        let f = options
            .open(&path)
            .map_err(io_err(|| format!("opening {}", path.display())))?;
        f.lock_shared()
            .map_err(io_err(|| format!("locking {}", path.display())))?;
        Ok(f)
    }

    /// Writes pieces that follow one another from chunk `first` on, as
    /// [`Self::write_unmarked`] writes them joined.
    pub fn write_pieces(&self, first: u64, pieces: &[bytes::Bytes]) -> Result<()> {
        let mut offset = first * self.chunk_size;
        for piece in pieces {
            write_all_at(&self.data, piece, offset).map_err(io_err(|| {
                format!("writing {}", self.dir.join("data").display())
            }))?;
            offset += piece.len() as u64;
        }
        Ok(())
    }

    /// Marks present the chunks of the `len` bytes written from chunk
    /// `first` on (whole chunks only; a short piece at the end of the blob
    /// is whole).
    pub fn mark(&self, first: u64, len: u64) -> Result<()> {
        let end = first * self.chunk_size + len;
        let whole = if end >= self.size {
            self.count().saturating_sub(first)
        } else {
            len / self.chunk_size
        };
        if whole > 0 {
            let marks = vec![1u8; whole as usize];
            write_all_at(&self.map, &marks, first).map_err(io_err(|| {
                format!("marking chunks in {}", self.dir.join("map").display())
            }))?;
        }
        Ok(())
    }

    /// Writes what is dirty of the data file out to disk now, so that the
    /// sync before promotion has only the tail left to wait for. Called
    /// off the stream's path, by [`Writeback`]; correctness never depends
    /// on it (promotion syncs the file whole).
    pub fn write_back(&self) -> Result<()> {
        self.data.sync_data().map_err(io_err(|| {
            format!("syncing {}", self.dir.join("data").display())
        }))
    }

    /// The first chunk not present, if any.
    pub fn first_missing(&self) -> Option<u64> {
        let count = self.count();
        (count > 0)
            .then(|| self.missing(0..=count - 1).first().copied())
            .flatten()
    }

    /// Hashes `[0, end)` of the data file (chunks already present).
    pub fn hash_prefix(&self, end: u64) -> Result<BlobHasher> {
        let mut hasher = BlobHasher::new(self.chunk_size, ChunkHash::AT_REST);
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            let got = read_full_at(&self.data, &mut buf[..n], pos)
                .map_err(io_err(|| format!("reading {}", self.dir.display())))?;
            if got < n {
                return Err(Error::ShortRead {
                    digest: self.dir.display().to_string(),
                    offset: pos,
                    expected: n as u64,
                    got: got as u64,
                });
            }
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        Ok(hasher)
    }

    /// Takes the lock that makes one process at a time stream this blob
    /// whole. It is the blob's, beside its generations, not this
    /// generation's: two processes that raced to make a generation each may
    /// hold a different one, and must still not both download. None if the
    /// blob's partial directory is gone (promoted or dropped meanwhile: the
    /// caller looks again). Blocking: call from a blocking context.
    pub fn lock_stream(&self) -> Result<Option<ChunkLock>> {
        let container = self.dir.parent().unwrap_or(&self.dir);
        let path = container.join("stream.lock");
        let file = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(|| format!("opening {}", path.display()))(e)),
        };
        file.lock()
            .map_err(io_err(|| format!("locking {}", path.display())))?;
        Ok(Some(ChunkLock { _file: file }))
    }

    /// Reads `[offset, offset+len)`; the caller checked the chunks are present.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        DiskStore::read_at(&self.data, &self.dir.join("data"), offset, len)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Writes `blob` into `p` one chunk at a time, each under its lock,
    /// synced where `sync` says.
    fn write_each_chunk(p: &Partial, blob: &[u8], sync: impl Fn(u64) -> bool) {
        let cs = p.chunk_size as usize;
        for (n, chunk) in (0u64..).zip(blob.chunks(cs)) {
            let _lock = p.lock_chunks(n, n).unwrap();
            p.write_chunks(n, chunk, sync(n)).unwrap();
        }
    }

    fn store() -> (tempfile::TempDir, DiskStore) {
        let d = tempfile::tempdir().unwrap();
        let s = DiskStore::open(d.path().join("cache")).unwrap();
        (d, s)
    }

    #[test]
    fn chunks_promote_after_verification() {
        let (_d, s) = store();
        let blob: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&blob);
        let p = s.partial(&digest, blob.len() as u64, 4096).unwrap();
        assert!(!p.has(0));
        p.write_chunks(1, &blob[4096..8192], true).unwrap();
        assert!(p.has(1) && !p.has(0) && !p.is_complete());
        assert_eq!(p.read(4096, 10).unwrap(), &blob[4096..4106]);
        p.write_chunks(2, &blob[8192..], false).unwrap();
        p.write_chunks(0, &blob[..4096], true).unwrap();
        assert!(p.is_complete());
        s.promote(&p, &digest).unwrap();
        assert_eq!(fs::read(s.blob_path(&digest)).unwrap(), blob);
        assert!(!s.partial_dir(&digest).exists());
        assert_eq!(s.usage().unwrap(), blob.len() as u64);
    }

    #[test]
    fn racing_generations_share_one_stream_lock() {
        // Two makers that raced each end up with their own generation (the
        // second here sorts first, as a maker that started earlier would):
        // they must still not stream the blob at the same time.
        let (_d, s) = store();
        let digest = Digest::of(b"racing");
        let first = s.partial(&digest, 6, 4).unwrap();
        let container = s.partial_dir(&digest);
        let other = container.join(format!("{GENERATION}0"));
        fs::create_dir_all(&other).unwrap();
        fs::copy(first.dir.join("meta"), other.join("meta")).unwrap();
        File::create(other.join("data"))
            .unwrap()
            .set_len(6)
            .unwrap();
        File::create(other.join("map")).unwrap().set_len(2).unwrap();
        let second = s.partial(&digest, 6, 4).unwrap();
        assert_ne!(first.dir, second.dir, "the test needs two generations");
        let held = first.lock_stream().unwrap().expect("a lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let lock = second.lock_stream();
            tx.send(()).unwrap();
            lock.map(|l| l.is_some())
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the other generation's streamer got the lock while it was held"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the lock was not handed on");
        assert!(waiter.join().unwrap().unwrap());
        // Once the blob's partial directory is gone, there is nothing to
        // lock: the caller looks again.
        fs::remove_dir_all(&container).unwrap();
        assert!(first.lock_stream().unwrap().is_none());
    }

    #[test]
    fn a_bad_blob_is_dropped_not_promoted() {
        let (_d, s) = store();
        let blob = vec![7u8; 5000];
        let digest = Digest::of(&blob);
        let p = s.partial(&digest, 5000, 4096).unwrap();
        let mut bad = blob.clone();
        bad[4500] ^= 1;
        p.write_chunks(0, &bad, true).unwrap();
        let err = s.promote(&p, &digest).unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!s.has_complete(&digest));
        assert!(s.list().unwrap().is_empty());
    }

    /// Regression: a process holding a partial blob that another process
    /// dropped (a failed check, eviction) took the chunks a new partial
    /// blob at the same path marked for its own, and read zeros from its
    /// older file; and what it wrote showed as present in the new one.
    #[test]
    fn a_handle_on_a_dropped_partial_never_mixes_with_its_successor() {
        let (_d, s) = store();
        let blob: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
        let digest = Digest::of(&blob);
        let old = s.partial(&digest, 20_000, 4096).unwrap();
        old.write_chunks(0, &blob[..4096], true).unwrap();
        s.drop_partial(&digest);
        let new = s.partial(&digest, 20_000, 4096).unwrap();
        new.write_chunks(1, &blob[4096..8192], true).unwrap();
        assert!(
            !old.has(1) || old.read(4096, 4096).unwrap() == blob[4096..8192],
            "the old handle reads a chunk it does not have"
        );
        // Garbage through the old handle (it may fail: its directory is gone).
        let _ = old.write_chunks(2, &[0xee; 4096], true);
        let fresh = s.partial(&digest, 20_000, 4096).unwrap();
        for p in [&new, &fresh] {
            for n in 0..5u64 {
                if p.has(n) {
                    let (a, b) = ((n * 4096) as usize, ((n + 1) * 4096).min(20_000) as usize);
                    assert_eq!(p.read(a as u64, b - a).unwrap(), &blob[a..b], "chunk {n}");
                }
            }
        }
        assert!(fresh.has(1) && !fresh.has(2));
        // A stale handle cannot promote the new data either.
        write_each_chunk(&fresh, &blob, |_| true);
        assert!(s.promote(&old, &digest).is_err() || s.has_complete(&digest));
        s.promote(&fresh, &digest).unwrap();
        assert_eq!(fs::read(s.blob_path(&digest)).unwrap(), blob);
    }

    #[test]
    fn partial_last_chunk_is_not_marked_until_whole() {
        let (_d, s) = store();
        let digest = Digest::of(b"x");
        let p = s.partial(&digest, 10_000, 4096).unwrap();
        p.write_chunks(2, &[0u8; 100], true).unwrap();
        assert!(!p.has(2));
        p.write_chunks(2, &[0u8; 10_000 - 8192], true).unwrap();
        assert!(p.has(2));
    }

    #[test]
    fn eviction_is_lru_and_skips_locked_and_pinned() {
        let (_d, s) = store();
        let mut digests = Vec::new();
        for i in 0..4u8 {
            let blob = vec![i; 1000];
            let d = Digest::of(&blob);
            s.write_atomic(&s.blob_path(&d), &blob).unwrap();
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + u64::from(i));
            File::options()
                .write(true)
                .open(s.blob_path(&d))
                .unwrap()
                .set_modified(t)
                .unwrap();
            digests.push(d);
        }
        // Oldest is 0: pinned. Next is 1: locked by a reader.
        let _reader = s.open_complete(&digests[1]).unwrap().unwrap();
        // open_complete touched 1, making it newest; re-age it.
        File::options()
            .write(true)
            .open(s.blob_path(&digests[1]))
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        let pinned = digests[0].clone();
        let freed = s.evict_to(2000, &|d| d == &pinned).unwrap();
        assert_eq!(freed, 2000);
        assert!(s.has_complete(&digests[0]) && s.has_complete(&digests[1]));
        assert!(!s.has_complete(&digests[2]) && !s.has_complete(&digests[3]));
    }

    #[test]
    fn a_fresh_partial_of_a_complete_blob_is_evicted() {
        let (_d, s) = store();
        let blob = vec![3u8; 8192];
        let d = Digest::of(&blob);
        let p = s.partial(&d, 8192, 4096).unwrap();
        p.write_chunks(0, &blob[..4096], true).unwrap();
        let young = Digest::of(b"young");
        s.partial(&young, 8192, 4096)
            .unwrap()
            .write_chunks(0, &[0; 4096], true)
            .unwrap();
        s.write_atomic(&s.blob_path(&d), &blob).unwrap();
        assert_eq!(s.usage().unwrap(), 8192 + 4096 + 4096);
        s.evict_to(8192 + 4096, &|_| false).unwrap();
        // The young partial of an incomplete blob stays (a fetch may be
        // writing it); the one of the complete blob goes.
        assert!(s.has_complete(&d));
        assert_eq!(s.usage().unwrap(), 8192 + 4096);
        assert!(
            s.list()
                .unwrap()
                .iter()
                .all(|b| b.digest != d || b.state == "complete")
        );
    }

    #[test]
    fn verify_all_removes_corrupt_blobs() {
        let (_d, s) = store();
        let good = b"good".to_vec();
        let d_good = Digest::of(&good);
        s.write_atomic(&s.blob_path(&d_good), &good).unwrap();
        let d_bad = Digest::of(b"bad");
        s.write_atomic(&s.blob_path(&d_bad), b"BAD").unwrap();
        let bad = s.verify_all(|_, _| {}).unwrap();
        assert_eq!(bad, vec![d_bad.clone()]);
        assert!(s.has_complete(&d_good) && !s.has_complete(&d_bad));
        // The good one, from "an older cache", has its table now.
        assert!(s.get_table(&d_good, 4).is_some());
        assert!(s.get_table(&d_bad, 3).is_none());
    }

    #[test]
    fn a_partial_dropped_by_another_process_while_promoted_still_lands_whole() {
        // Another process evicts the generation (its directory goes) after
        // this one opened it complete: the checked bytes are still in the
        // open file, and are copied into place rather than failing a read.
        let (_d, s) = store();
        let blob: Vec<u8> = (0..(5 * 4096 + 7) as u32)
            .map(|i| (i % 241) as u8)
            .collect();
        let digest = Digest::of(&blob);
        let p = s.partial(&digest, blob.len() as u64, 4096).unwrap();
        write_each_chunk(&p, &blob, |_| true);
        fs::remove_dir_all(s.partial_dir(&digest)).unwrap();
        assert!(s.promote(&p, &digest).unwrap());
        assert_eq!(fs::read(s.blob_path(&digest)).unwrap(), blob);
        let tmp = fs::read_dir(s.root.join("tmp")).map_or(0, |d| d.count());
        assert_eq!(tmp, 0, "a temporary file was left behind");
    }

    #[test]
    fn a_partial_is_three_files_whatever_its_chunk_count() {
        // Format 1 made two files a chunk (a marker and a lock): 2,048 a GiB.
        let (_d, s) = store();
        let blob: Vec<u8> = (0..(64 * 4096 + 10) as u32)
            .map(|i| (i % 249) as u8)
            .collect();
        let digest = Digest::of(&blob);
        let p = s.partial(&digest, blob.len() as u64, 4096).unwrap();
        write_each_chunk(&p, &blob, |n| n % 2 == 0);
        let mut files: Vec<String> = fs::read_dir(&p.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["data", "map", "meta"]);
        assert!(p.is_complete());
        assert_eq!(s.usage().unwrap(), blob.len() as u64);
        s.promote(&p, &digest).unwrap();
        assert_eq!(fs::read(s.blob_path(&digest)).unwrap(), blob);
    }

    #[test]
    fn chunk_locks_exclude_overlapping_runs_even_within_one_process() {
        let (_d, s) = store();
        let digest = Digest::of(b"locks");
        let p = Arc::new(s.partial(&digest, 10 * 4096, 4096).unwrap());
        let held = p.lock_chunks(2, 5).unwrap();
        // A run that does not overlap is not held up.
        drop(p.lock_chunks(6, 9).unwrap());
        drop(p.lock_chunks(1, 1).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || {
                let lock = p.lock_chunks(5, 7).unwrap();
                tx.send(()).unwrap();
                drop(lock);
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "another thread took chunk 5 while it was held"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the lock was not handed on");
        waiter.join().unwrap();
    }

    /// Lays out a format 1 cache as ocifs before format 2 left it: a
    /// complete blob with its table, and a partial download with a chunk
    /// marker and a chunk lock file.
    fn format1_cache(root: &Path, complete: &[u8], partial: &[u8]) -> (Digest, Digest) {
        let (c, p) = (Digest::of(complete), Digest::of(partial));
        for sub in STORE_DIRS {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        #[cfg(unix)]
        for e in walk(root) {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&e, fs::Permissions::from_mode(0o700)).unwrap();
        }
        fs::write(
            root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        fs::write(root.join("blobs/sha256").join(c.hex()), complete).unwrap();
        let mut h = BlobHasher::new(4096, ChunkHash::AT_REST);
        h.update(complete);
        let (_, digests) = h.finish();
        fs::write(
            root.join("chunks/sha256").join(c.hex()),
            table::encode(4096, complete.len() as u64, &digests),
        )
        .unwrap();
        let g = root.join("partial/sha256").join(p.hex()).join("g123-0-0");
        fs::create_dir_all(g.join("have")).unwrap();
        fs::create_dir_all(g.join("lock")).unwrap();
        fs::write(
            g.join("meta"),
            format!(r#"{{"size":{},"chunkSize":4096}}"#, partial.len()),
        )
        .unwrap();
        let mut data = partial.to_vec();
        data[4096..].fill(0);
        fs::write(g.join("data"), &data).unwrap();
        File::create(g.join("have/0")).unwrap();
        File::create(g.join("lock/0")).unwrap();
        (c, p)
    }

    fn walk(root: &Path) -> Vec<PathBuf> {
        let mut out = vec![root.to_path_buf()];
        let mut i = 0;
        while i < out.len() {
            if let Ok(d) = fs::read_dir(&out[i]) {
                out.extend(d.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
            i += 1;
        }
        out
    }

    #[test]
    fn a_format1_cache_is_migrated_keeping_its_complete_blobs() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cache");
        let complete = vec![5u8; 9000];
        let partial: Vec<u8> = (0..12_000u32).map(|i| (i % 241) as u8).collect();
        let (c, p) = format1_cache(&root, &complete, &partial);
        assert!(!root.join(FORMAT_FILE).exists());
        let s = DiskStore::open(&root).unwrap();
        // The format is written, the complete blob and its table kept.
        assert_eq!(
            fs::read_to_string(root.join(FORMAT_FILE)).unwrap(),
            r#"{"format":2}"#
        );
        assert!(s.open_complete(&c).unwrap().is_some());
        assert!(s.get_table(&c, 9000).is_some());
        // The partial download is dropped: never read in the new format
        // (and its emptied directory swept).
        let container = s.partial_dir(&p);
        assert!(!container.exists());
        let fresh = s.partial(&p, partial.len() as u64, 4096).unwrap();
        assert!(!fresh.has(0));
        assert_eq!(s.usage().unwrap(), 9000);
        // Opening again is a no-op.
        drop(DiskStore::open(&root).unwrap());
        assert!(s.has_complete(&c));
    }

    #[test]
    fn an_older_ocifs_partial_appearing_later_is_never_used() {
        // An ocifs of format 1 still running on a migrated cache writes its
        // own generations: this one must not take its markers for chunks.
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cache");
        let partial: Vec<u8> = (0..12_000u32).map(|i| (i % 239) as u8).collect();
        let s = DiskStore::open(&root).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let (_, p) = format1_cache(scratch.path(), b"x", &partial);
        let from = scratch.path().join("partial/sha256").join(p.hex());
        let to = s.partial_dir(&p);
        fs::create_dir_all(&to).unwrap();
        fs::rename(from.join("g123-0-0"), to.join("g123-0-0")).unwrap();
        let mine = s.partial(&p, partial.len() as u64, 4096).unwrap();
        assert!(
            mine.dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(GENERATION)
        );
        assert!(!mine.has(0), "took an older ocifs's marker for a chunk");
        // It still counts against the budget, and eviction may remove it.
        assert_eq!(s.usage().unwrap(), 4096);
    }

    #[test]
    fn a_cache_in_an_unknown_format_is_refused_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cache");
        drop(DiskStore::open(&root).unwrap());
        fs::write(root.join(FORMAT_FILE), br#"{"format":3}"#).unwrap();
        let err = DiskStore::open(&root).unwrap_err().to_string();
        assert!(
            err.contains("cache format 3")
                && err.contains("reads format 2")
                && err.contains(&root.display().to_string()),
            "{err}"
        );
        fs::write(root.join(FORMAT_FILE), b"{garbage").unwrap();
        let err = DiskStore::open(&root).unwrap_err().to_string();
        assert!(
            err.contains("unreadable") && err.contains(FORMAT_FILE),
            "{err}"
        );
    }

    #[test]
    fn emptied_partial_directories_are_swept_when_the_store_is_opened() {
        let (dir, store) = store();
        let kept = Digest::of(b"kept");
        let p = store.partial(&kept, 4, 1).expect("partial");
        // What a promotion on Windows leaves: an empty generation in an
        // otherwise empty blob directory.
        let root = dir.path().join("cache");
        let emptied = root.join("partial/sha256").join("ab".repeat(32));
        std::fs::create_dir_all(emptied.join(format!("{GENERATION}1-2-3"))).expect("mkdir");
        drop(store);
        let store = DiskStore::open(&root).expect("reopen");
        assert!(!emptied.exists(), "the emptied partial directories stayed");
        assert!(p.dir.join("data").is_file(), "a live generation was swept");
        let again = store.partial(&kept, 4, 1).expect("partial");
        assert_eq!(again.dir, p.dir);
    }

    #[test]
    fn refs_round_trip() {
        let (_d, s) = store();
        let r = RegistryRef::parse("127.0.0.1:5000/a/b:v1").unwrap();
        let d = Digest::of(b"m");
        assert_eq!(s.get_ref(&r, "v1"), None);
        s.put_ref(&r, "v1", &d).unwrap();
        assert_eq!(s.get_ref(&r, "v1"), Some(d));
    }
}

//! The on-disk content store, shared by any number of ocifs processes.
//!
//! ```text
//! ROOT/oci-layout                        so other tools can read ROOT as a layout
//! ROOT/blobs/sha256/<hex>                complete blobs, verified before they got there
//! ROOT/chunks/sha256/<hex>               the chunk digest table of a complete blob
//! ROOT/partial/sha256/<hex>/<gen>/data         a sparse file of the blob's size
//! ROOT/partial/sha256/<hex>/<gen>/meta         {"size":…, "chunkSize":…}
//! ROOT/partial/sha256/<hex>/<gen>/have/<n>     empty marker: chunk n of data is written and synced
//! ROOT/partial/sha256/<hex>/<gen>/lock/<n>     lock file of chunk n (held while fetching it)
//! ROOT/partial/sha256/<hex>/<gen>/promote.lock held while verifying and promoting the blob
//! ROOT/refs/<registry>/<repository>/<tag>  the digest a tag last resolved to
//! ROOT/tmp/                              temp files, renamed into place when complete
//! ```
//!
//! Invariants that make sharing and crashes safe:
//! - a name under `blobs/` only ever appears by `rename` of a file whose
//!   digest was checked, so it never holds half-written or wrong bytes;
//! - a chunk is present only once its marker exists, and the marker is made
//!   (by rename) after the chunk's bytes were written and synced, so a crash
//!   mid-write leaves the chunk absent, never half-present;
//! - a chunk is fetched by whoever holds its lock file; others wait on the
//!   lock and then find the marker, so two processes fetch it once;
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
//!   evicted, found corrupt) and a new one made, the old handle's markers
//!   can no longer be taken for the new file's, nor the reverse. (With one
//!   shared directory, a handle on a dropped partial read the chunks a new
//!   one marked from its own, older file: zeros.)

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::table;
use crate::digest::BlobHasher;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsutil::{read_full_at, write_all_at};
use crate::reference::RegistryRef;

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
        let marker = root.join("oci-layout");
        if !marker.exists() {
            let store = DiskStore {
                root: root.clone(),
                tmp_counter: AtomicU64::new(0),
            };
            store.write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(DiskStore {
            root,
            tmp_counter: AtomicU64::new(0),
        })
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
    /// meta is for `size` and whose data is still there.
    fn open_generation(&self, container: &Path, size: u64) -> Option<Partial> {
        let mut gens: Vec<PathBuf> = fs::read_dir(container)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('g'))
            .map(|e| e.path())
            .collect();
        gens.sort();
        gens.into_iter().find_map(|dir| {
            let meta = fs::read(dir.join("meta")).ok()?;
            let meta: PartialMeta = serde_json::from_slice(&meta).ok()?;
            if meta.size != size || meta.chunk_size == 0 {
                return None;
            }
            // Never created here: a generation whose data is gone was
            // promoted or is being removed.
            let data = OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join("data"))
                .ok()?;
            (data.metadata().ok()?.len() == size).then_some(Partial {
                dir,
                data,
                size,
                chunk_size: meta.chunk_size,
            })
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
        digests: &[[u8; 32]],
    ) -> Result<()> {
        self.write_atomic(
            &self.table_path(digest),
            &table::encode(chunk_size, size, digests),
        )
    }

    /// The stored chunk digest table of `digest` (a blob of `size` bytes):
    /// its chunk size and digests, if there is one, whole and undamaged.
    pub fn get_table(&self, digest: &Digest, size: u64) -> Option<(u64, Vec<[u8; 32]>)> {
        let f = File::open(self.table_path(digest)).ok()?;
        let mut buf = Vec::new();
        f.take(table::MAX_ENCODED).read_to_end(&mut buf).ok()?;
        table::decode(&buf, size)
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
                fs::create_dir_all(tmp.join("have"))?;
                fs::create_dir_all(tmp.join("lock"))?;
                let meta = PartialMeta { size, chunk_size };
                fs::write(
                    tmp.join("meta"),
                    serde_json::to_vec(&meta).unwrap_or_default(),
                )?;
                File::create(tmp.join("data"))?.set_len(size)?;
                fs::create_dir_all(&container)?;
                let name = tmp
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                fs::rename(&tmp, container.join(format!("g{name}")))
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
        let mut buf = vec![0; len];
        let got = read_full_at(file, &mut buf, offset)
            .map_err(io_err(|| format!("reading {}", path_for_errors.display())))?;
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
    pub fn promote(&self, p: &Partial, digest: &Digest) -> Result<()> {
        let final_path = self.blob_path(digest);
        if final_path.is_file() {
            return Ok(());
        }
        let lock_path = p.dir.join("promote.lock");
        let lock = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(f) => f,
            // The generation is gone: another process promoted (or dropped) it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return if final_path.is_file() {
                    Ok(())
                } else {
                    Err(Error::io(format!("promoting {digest}"), e))
                };
            }
            Err(e) => return Err(Error::io(format!("promoting {digest}"), e)),
        };
        lock.lock()
            .map_err(io_err(|| format!("locking {}", lock_path.display())))?;
        if final_path.is_file() {
            return Ok(());
        }
        let data_path = p.dir.join("data");
        let hasher = hash_file(&p.data, p.chunk_size, p.size)
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
        move_into_place(&data_path, &final_path)?;
        let _ = fs::remove_dir_all(self.partial_dir(digest));
        Ok(())
    }

    /// Moves a partial blob whose digest the caller computed and checked
    /// while writing it under `blobs/`, without hashing it again; `digests`
    /// is its chunk digest table (in the partial's chunk size), taken on
    /// the way, stored first: a complete blob always has its table.
    pub fn promote_verified(
        &self,
        p: &Partial,
        digest: &Digest,
        digests: &[[u8; 32]],
    ) -> Result<()> {
        let final_path = self.blob_path(digest);
        if final_path.is_file() {
            return Ok(());
        }
        let data_path = p.dir.join("data");
        p.data
            .sync_all()
            .map_err(io_err(|| format!("syncing {}", data_path.display())))?;
        self.put_table(digest, p.chunk_size, p.size, digests)?;
        move_into_place(&data_path, &final_path)?;
        let _ = fs::remove_dir_all(self.partial_dir(digest));
        Ok(())
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
                let Ok(meta) = fs::read(dir.join("meta"))
                    .map_err(|_| ())
                    .and_then(|b| serde_json::from_slice::<PartialMeta>(&b).map_err(|_| ()))
                else {
                    continue;
                };
                let have = fs::read_dir(dir.join("have"))
                    .map(|d| d.flatten().count() as u64)
                    .unwrap_or(0);
                let used = fs::metadata(dir.join("data"))
                    .map(|m| secs(&m))
                    .unwrap_or(0);
                let present = (have * meta.chunk_size).min(meta.size);
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
                .and_then(|f| hash_file(&f, cs, b.size))
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
                    Ok(()) => report(
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

/// Hashes a file from its start, whole and in chunks of `chunk_size`,
/// reading at most one buffer past `size` (a longer file then fails the
/// caller's length check without being read to its end).
pub(crate) fn hash_file(file: &File, chunk_size: u64, size: u64) -> io::Result<BlobHasher> {
    let mut hasher = BlobHasher::new(chunk_size);
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

    /// Whether chunk `n` is present.
    pub fn has(&self, n: u64) -> bool {
        self.dir.join("have").join(n.to_string()).exists()
    }

    /// Whether this generation was dropped (promoted, evicted, found
    /// corrupt): nothing more can be written or marked in it.
    pub fn is_gone(&self) -> bool {
        // Removal (eviction, promotion by another process) takes the
        // directory apart in no set order: either half gone is gone.
        !self.dir.join("data").exists() || !self.dir.join("lock").is_dir()
    }

    /// Whether every chunk is present.
    pub fn is_complete(&self) -> bool {
        let count = self.size.div_ceil(self.chunk_size);
        match fs::read_dir(self.dir.join("have")) {
            Ok(d) => d.flatten().count() as u64 >= count && (0..count).all(|n| self.has(n)),
            Err(_) => false,
        }
    }

    /// Takes the lock of chunk `n`, waiting for another fetcher to finish.
    /// Blocking: call from a blocking context.
    pub fn lock_chunk(&self, n: u64) -> Result<ChunkLock> {
        let path = self.dir.join("lock").join(n.to_string());
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(|| format!("opening {}", path.display())))?;
        file.lock()
            .map_err(io_err(|| format!("locking {}", path.display())))?;
        Ok(ChunkLock { _file: file })
    }

    /// Writes chunks starting at chunk `first` (bytes must start at its
    /// offset and cover whole chunks, the last one possibly short at the end
    /// of the blob), then marks them present. With `sync`, the bytes reach
    /// the disk before the markers exist (lazy mode serves chunks from here);
    /// without, a power loss may leave a marker over lost bytes, which the
    /// whole-blob check before promotion catches (strict mode serves nothing
    /// before it). A process crash loses nothing either way.
    pub fn write_chunks(&self, first: u64, bytes: &[u8], sync: bool) -> Result<()> {
        let offset = first * self.chunk_size;
        let ctx = || format!("writing {}", self.dir.join("data").display());
        write_all_at(&self.data, bytes, offset).map_err(io_err(ctx))?;
        if sync {
            self.data.sync_data().map_err(io_err(ctx))?;
        }
        let end = offset + bytes.len() as u64;
        let mut n = first;
        while n * self.chunk_size < end {
            let chunk_end = ((n + 1) * self.chunk_size).min(self.size);
            if chunk_end > end {
                break; // not whole: leave it absent
            }
            let marker = self.dir.join("have").join(n.to_string());
            File::create(&marker).map_err(io_err(|| format!("marking {}", marker.display())))?;
            n += 1;
        }
        Ok(())
    }

    /// The first chunk not present, if any.
    pub fn first_missing(&self) -> Option<u64> {
        (0..self.size.div_ceil(self.chunk_size)).find(|n| !self.has(*n))
    }

    /// Hashes `[0, end)` of the data file (chunks already present).
    pub fn hash_prefix(&self, end: u64) -> Result<BlobHasher> {
        let mut hasher = BlobHasher::new(self.chunk_size);
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
    use super::*;

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
        let other = container.join("g0");
        fs::create_dir_all(other.join("have")).unwrap();
        fs::create_dir_all(other.join("lock")).unwrap();
        fs::copy(first.dir.join("meta"), other.join("meta")).unwrap();
        File::create(other.join("data"))
            .unwrap()
            .set_len(6)
            .unwrap();
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
        for n in 0..5u64 {
            let (a, b) = ((n * 4096) as usize, ((n + 1) * 4096).min(20_000) as usize);
            fresh.write_chunks(n, &blob[a..b], true).unwrap();
        }
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
    fn refs_round_trip() {
        let (_d, s) = store();
        let r = RegistryRef::parse("127.0.0.1:5000/a/b:v1").unwrap();
        let d = Digest::of(b"m");
        assert_eq!(s.get_ref(&r, "v1"), None);
        s.put_ref(&r, "v1", &d).unwrap();
        assert_eq!(s.get_ref(&r, "v1"), Some(d));
    }
}

//! FUSE passthrough: for each open of a file, whether the kernel reads it
//! itself from a backing file or asks ocifs (the page-cache path).
//!
//! The kernel has two rules for the open handles of one inode: they are
//! all in one I/O mode (a passthrough open while a cached one is open, or
//! the other way round, fails with EIO at open), and every passthrough open
//! names the same backing file. [`Passthrough::open`] decides each open by
//! them and by what the [`BackingFiles`] have; [`Passthrough::release`]
//! undoes it when the handle is closed.
//!
//! Nothing here talks to the kernel: registering a backing file (fuser's
//! `ReplyOpen::open_backing`) is a closure given to each open, and the id
//! it returns is any `B` (fuser's `BackingId`, which closes itself when
//! dropped). The cases are unit tests below.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ocifs_core::Content;
use ocifs_core::Ino;

use crate::options::{BackingFiles, MountOptions};

/// How one open of a file is answered.
#[derive(Debug)]
pub(crate) enum OpenMode<B> {
    /// Through ocifs and the page cache.
    Cached,
    /// By the kernel, from the backing file registered as this id.
    Passthrough(Arc<B>),
}

/// The I/O mode of the open handles of one inode. The kernel refuses (with
/// EIO at open) to mix passthrough and cached opens of one inode, and wants
/// every passthrough open of it to name the same backing file.
#[derive(Debug)]
struct InodeIo<B> {
    /// Open handles on the page-cache path.
    cached: usize,
    /// Open passthrough handles.
    passthrough: usize,
    /// The backing id they all name; held while `passthrough` is not 0.
    backing: Option<Arc<B>>,
}

impl<B> Default for InodeIo<B> {
    fn default() -> Self {
        InodeIo {
            cached: 0,
            passthrough: 0,
            backing: None,
        }
    }
}

/// The passthrough decisions of one mount, where passthrough was asked for
/// and backing files given; `B` is the kernel's backing id.
pub(crate) struct Passthrough<B> {
    /// Where complete blobs are.
    files: Arc<dyn BackingFiles>,
    /// Cleared when the kernel refuses backing files altogether.
    usable: AtomicBool,
    /// The I/O mode of every inode with a handle open.
    inodes: Mutex<HashMap<Ino, InodeIo<B>>>,
}

impl<B> Passthrough<B> {
    /// Passthrough as `options` ask: none unless they ask for it and say
    /// where the backing files are.
    pub(crate) fn new(options: &MountOptions) -> Option<Self> {
        match (&options.backing_files, options.passthrough) {
            (Some(files), true) => Some(Passthrough {
                files: Arc::clone(files),
                usable: AtomicBool::new(true),
                inodes: Mutex::default(),
            }),
            (None, true) => {
                tracing::warn!(
                    "passthrough asked for without backing files; every read goes through ocifs"
                );
                None
            }
            _ => None,
        }
    }

    /// What an open of `content` waits for first ([`BackingFiles::whole_first`]),
    /// while the kernel accepts backing files at all.
    pub(crate) fn whole_first(&self, content: &Content) -> Option<crate::options::WholeFirst> {
        if !self.usable.load(Ordering::Relaxed) {
            return None;
        }
        self.files.whole_first(content)
    }

    /// The modes of open inodes, locked.
    fn inodes(&self) -> MutexGuard<'_, HashMap<Ino, InodeIo<B>>> {
        // Counts hold no invariant a panicking holder could break halfway.
        self.inodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides between the page-cache path and passthrough for one open of
    /// `ino`, whose bytes are `content`, keeping every inode in one mode
    /// while any handle is open. The handle counts until
    /// [`release`](Self::release).
    ///
    /// An inode with a passthrough handle open gets its backing id again,
    /// without asking the backing files; one with a cached handle open is
    /// cached. Otherwise a backing file of exactly the content's size is
    /// handed to `register` (outside the lock: it may be slow), and an open
    /// that another open of the same inode decided meanwhile wins. A
    /// registration the kernel refuses for every file turns passthrough off
    /// for the mount. `path` names `ino` in the log.
    pub(crate) fn open(
        &self,
        ino: Ino,
        content: &Content,
        path: impl FnOnce() -> String,
        register: impl FnOnce(&File) -> io::Result<B>,
    ) -> OpenMode<B> {
        {
            let mut inodes = self.inodes();
            let io = inodes.entry(ino).or_default();
            if let Some(backing) = &io.backing {
                io.passthrough += 1;
                return OpenMode::Passthrough(Arc::clone(backing));
            }
            if io.cached > 0 || !self.usable.load(Ordering::Relaxed) {
                io.cached += 1;
                return OpenMode::Cached;
            }
        }
        // Outside the lock: the callback may touch the disk.
        let backing = self.backing_id(ino, content, path, register);
        let mut inodes = self.inodes();
        let io = inodes.entry(ino).or_default();
        // Another open of this inode may have been decided meanwhile.
        if let Some(existing) = &io.backing {
            io.passthrough += 1;
            return OpenMode::Passthrough(Arc::clone(existing));
        }
        match backing {
            Some(id) if io.cached == 0 => {
                let id = Arc::new(id);
                io.backing = Some(Arc::clone(&id));
                io.passthrough += 1;
                OpenMode::Passthrough(id)
            }
            _ => {
                io.cached += 1;
                OpenMode::Cached
            }
        }
    }

    /// Undoes one [`open`](Self::open) of `ino` that was answered in
    /// passthrough mode if `passthrough`, cached otherwise. The last
    /// passthrough handle drops the backing id.
    pub(crate) fn release(&self, ino: Ino, passthrough: bool) {
        let mut inodes = self.inodes();
        let Some(io) = inodes.get_mut(&ino) else {
            return;
        };
        if passthrough {
            io.passthrough = io.passthrough.saturating_sub(1);
            if io.passthrough == 0 {
                // Closes the backing id; the kernel keeps the file for
                // handles it still has.
                io.backing = None;
            }
        } else {
            io.cached = io.cached.saturating_sub(1);
        }
        if io.cached == 0 && io.passthrough == 0 {
            inodes.remove(&ino);
        }
    }

    /// The backing file of `content`, registered with `register`; `None`
    /// when there is none, it is not the blob, or the kernel refuses it.
    fn backing_id(
        &self,
        ino: Ino,
        content: &Content,
        path: impl FnOnce() -> String,
        register: impl FnOnce(&File) -> io::Result<B>,
    ) -> Option<B> {
        let file = self.files.backing_file(content)?;
        let path = path();
        match file.metadata() {
            Ok(m) if m.is_file() && m.len() == content.size() => {}
            Ok(m) => {
                tracing::warn!(ino, %path, size = m.len(), expected = content.size(), "backing file is not the blob; reading through ocifs");
                return None;
            }
            Err(e) => {
                tracing::warn!(ino, %path, "backing file unusable: {e}; reading through ocifs");
                return None;
            }
        }
        match register(&file) {
            Ok(id) => Some(id),
            Err(e) => {
                if refuses_every_file(&e) {
                    if self.usable.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            "the kernel refuses FUSE passthrough ({e}); every read goes through ocifs"
                        );
                    }
                } else {
                    tracing::info!(ino, %path, "no passthrough for this file: {e}");
                }
                None
            }
        }
    }
}

/// Whether a refused registration holds for every file. EPERM: the kernel
/// did not enable passthrough at init, or we lack CAP_SYS_ADMIN; the others:
/// no passthrough in this kernel. Other errors (ELOOP: the backing file's
/// filesystem is itself stacked) are about one file only.
fn refuses_every_file(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS)
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, AtomicUsize};

    use super::*;

    /// Bytes in the test blob.
    const SIZE: u64 = 4096;

    /// A backing id the fake kernel handed out; counts itself closed when
    /// dropped, as fuser's `BackingId` closes itself.
    #[derive(Debug)]
    struct Id {
        /// Which registration it came from, from 1.
        n: u32,
        /// Ids of the fixture dropped so far.
        closed: Arc<AtomicUsize>,
    }

    impl Drop for Id {
        fn drop(&mut self) {
            self.closed.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A blob's content of `size` bytes.
    fn blob(size: u64) -> Content {
        let descriptor = serde_json::json!({
            "mediaType": "application/octet-stream",
            "digest": format!("sha256:{}", "0".repeat(64)),
            "size": size,
        });
        Content::Blob(Arc::new(
            serde_json::from_value(descriptor).expect("a descriptor"),
        ))
    }

    /// A file of `len` zero bytes.
    fn file_of(len: u64) -> File {
        let file = tempfile::tempfile().expect("a temporary file");
        file.set_len(len).expect("set_len");
        file
    }

    /// One mount's passthrough over backing files that hold whatever
    /// `disk` holds, and a fake kernel that registers every file.
    struct Fixture {
        pt: Passthrough<Id>,
        /// The backing file handed out for any content (`None`: not
        /// complete on disk).
        disk: Arc<Mutex<Option<File>>>,
        /// Times the backing files were asked.
        asked: Arc<AtomicUsize>,
        /// Registrations so far.
        registered: AtomicU32,
        /// Ids dropped so far.
        closed: Arc<AtomicUsize>,
    }

    impl Fixture {
        /// Passthrough with the blob complete on disk.
        fn new() -> Self {
            let fx = Self::incomplete();
            fx.complete(file_of(SIZE));
            fx
        }

        /// Passthrough with nothing on disk yet.
        fn incomplete() -> Self {
            let disk = Arc::new(Mutex::new(None::<File>));
            let asked = Arc::new(AtomicUsize::new(0));
            let files = {
                let disk = Arc::clone(&disk);
                let asked = Arc::clone(&asked);
                move |_: &Content| {
                    asked.fetch_add(1, Ordering::SeqCst);
                    let file = disk.lock().expect("disk");
                    file.as_ref().map(|f| f.try_clone().expect("try_clone"))
                }
            };
            let options = MountOptions {
                passthrough: true,
                backing_files: Some(Arc::new(files)),
                ..MountOptions::default()
            };
            Fixture {
                pt: Passthrough::new(&options).expect("passthrough"),
                disk,
                asked,
                registered: AtomicU32::new(0),
                closed: Arc::new(AtomicUsize::new(0)),
            }
        }

        /// Puts `file` on disk as the backing file.
        fn complete(&self, file: File) {
            *self.disk.lock().expect("disk") = Some(file);
        }

        /// Takes the backing file off disk (say, evicted).
        fn evict(&self) {
            *self.disk.lock().expect("disk") = None;
        }

        /// A new id from the fake kernel.
        fn register(&self) -> io::Result<Id> {
            Ok(Id {
                n: self.registered.fetch_add(1, Ordering::SeqCst) + 1,
                closed: Arc::clone(&self.closed),
            })
        }

        /// Opens `ino`, the kernel registering every file.
        fn open(&self, ino: Ino) -> OpenMode<Id> {
            self.open_with(ino, |_| self.register())
        }

        /// Opens `ino`, the kernel answering registrations with `register`.
        fn open_with(
            &self,
            ino: Ino,
            register: impl FnOnce(&File) -> io::Result<Id>,
        ) -> OpenMode<Id> {
            self.pt
                .open(ino, &blob(SIZE), || format!("/file{ino}"), register)
        }

        /// Opens `ino`, the kernel refusing registrations with `errno`.
        fn open_refused(&self, ino: Ino, errno: i32) -> OpenMode<Id> {
            self.open_with(ino, |_| Err(io::Error::from_raw_os_error(errno)))
        }

        fn asked(&self) -> usize {
            self.asked.load(Ordering::SeqCst)
        }

        fn registered(&self) -> u32 {
            self.registered.load(Ordering::SeqCst)
        }

        fn closed(&self) -> usize {
            self.closed.load(Ordering::SeqCst)
        }

        /// Inodes with open handles.
        fn open_inodes(&self) -> usize {
            self.pt.inodes().len()
        }
    }

    /// The registration an open was answered with; `None` for cached.
    fn id(mode: &OpenMode<Id>) -> Option<u32> {
        match mode {
            OpenMode::Cached => None,
            OpenMode::Passthrough(id) => Some(id.n),
        }
    }

    #[test]
    fn without_backing_files_or_unasked_there_is_no_passthrough() {
        let files: Arc<dyn BackingFiles> = Arc::new(|_: &Content| None);
        for (passthrough, backing_files) in [
            (true, None),
            (false, Some(Arc::clone(&files))),
            (false, None),
        ] {
            let options = MountOptions {
                passthrough,
                backing_files,
                ..MountOptions::default()
            };
            assert!(
                Passthrough::<Id>::new(&options).is_none(),
                "{passthrough} {}",
                options.backing_files.is_some()
            );
        }
    }

    #[test]
    fn the_first_open_of_a_complete_blob_is_passthrough() {
        let fx = Fixture::new();
        assert_eq!(id(&fx.open(1)), Some(1));
        assert_eq!((fx.asked(), fx.registered()), (1, 1));
    }

    #[test]
    fn later_opens_of_the_inode_reuse_its_backing_id_without_asking() {
        let fx = Fixture::new();
        let first = fx.open(1);
        // Not on disk any more: the open handle's backing file still is.
        fx.evict();
        let second = fx.open(1);
        match (&first, &second) {
            (OpenMode::Passthrough(a), OpenMode::Passthrough(b)) => assert!(Arc::ptr_eq(a, b)),
            other => panic!("{other:?}"),
        }
        assert_eq!((fx.asked(), fx.registered()), (1, 1));
    }

    #[test]
    fn every_inode_has_a_backing_id_of_its_own() {
        let fx = Fixture::new();
        assert_eq!(id(&fx.open(1)), Some(1));
        assert_eq!(id(&fx.open(2)), Some(2));
        assert_eq!(id(&fx.open(1)), Some(1));
    }

    #[test]
    fn the_last_passthrough_release_closes_the_backing_id() {
        let fx = Fixture::new();
        let (a, b) = (fx.open(1), fx.open(1));
        drop((a, b));
        fx.pt.release(1, true);
        assert_eq!(fx.closed(), 0, "a handle is still open");
        fx.pt.release(1, true);
        assert_eq!(fx.closed(), 1);
        assert_eq!(fx.open_inodes(), 0);
        // The next open asks and registers afresh.
        assert_eq!(id(&fx.open(1)), Some(2));
        assert_eq!(fx.asked(), 2);
    }

    #[test]
    fn a_blob_not_on_disk_is_cached_and_keeps_its_inode_cached() {
        let fx = Fixture::incomplete();
        assert_eq!(id(&fx.open(1)), None);
        // On disk now, but a cached handle is open: the kernel would refuse
        // a passthrough open of the inode, so the files are not even asked.
        fx.complete(file_of(SIZE));
        assert_eq!(id(&fx.open(1)), None);
        assert_eq!((fx.asked(), fx.registered()), (1, 0));
        // Other inodes are free to go passthrough.
        assert_eq!(id(&fx.open(2)), Some(1));
        // Once every cached handle is released, passthrough.
        fx.pt.release(1, false);
        assert_eq!(id(&fx.open(1)), None, "one cached handle is still open");
        fx.pt.release(1, false);
        fx.pt.release(1, false);
        assert_eq!(id(&fx.open(1)), Some(2));
    }

    #[test]
    fn a_backing_file_that_is_not_the_blob_is_not_registered() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for (what, file) in [
            ("short", file_of(SIZE - 1)),
            ("long", file_of(SIZE + 1)),
            ("a directory", File::open(dir.path()).expect("open dir")),
        ] {
            let fx = Fixture::new();
            fx.complete(file);
            assert_eq!(id(&fx.open(1)), None, "{what}");
            assert_eq!(fx.registered(), 0, "{what}");
            // Cached, so the inode stays cached while the handle is open...
            fx.complete(file_of(SIZE));
            assert_eq!(id(&fx.open(1)), None, "{what}");
            // ...and passthrough is still on for the rest.
            assert_eq!(id(&fx.open(2)), Some(1), "{what}");
        }
    }

    #[test]
    fn a_kernel_refusing_passthrough_turns_it_off_for_every_file() {
        for errno in [libc::EPERM, libc::EOPNOTSUPP, libc::ENOTTY, libc::ENOSYS] {
            let fx = Fixture::new();
            assert_eq!(id(&fx.open_refused(1, errno)), None, "{errno}");
            // Not asked again, for this inode or any other, even once
            // nothing is open.
            fx.pt.release(1, false);
            assert_eq!(id(&fx.open(2)), None, "{errno}");
            assert_eq!(id(&fx.open(1)), None, "{errno}");
            assert_eq!((fx.asked(), fx.registered()), (1, 0), "{errno}");
        }
    }

    #[test]
    fn a_refusal_of_one_file_is_about_that_file_only() {
        let fx = Fixture::new();
        assert_eq!(id(&fx.open_refused(1, libc::ELOOP)), None);
        // The inode is cached while that handle is open; others are not.
        assert_eq!(id(&fx.open(1)), None);
        assert_eq!(id(&fx.open(2)), Some(1));
        // Once it is closed, the file is tried again.
        fx.pt.release(1, false);
        fx.pt.release(1, false);
        assert_eq!(id(&fx.open(1)), Some(2));
    }

    #[test]
    fn a_passthrough_open_decided_meanwhile_wins() {
        let fx = Fixture::new();
        // Another open of the inode is decided while this one registers.
        let mut inner = None;
        let outer = fx.open_with(1, |_| {
            inner = Some(fx.open(1));
            fx.register()
        });
        let inner = inner.expect("the inner open ran");
        match (&inner, &outer) {
            (OpenMode::Passthrough(a), OpenMode::Passthrough(b)) => assert!(Arc::ptr_eq(a, b)),
            other => panic!("{other:?}"),
        }
        assert_eq!(id(&outer), Some(1));
        // The outer open's own registration is closed at once.
        assert_eq!((fx.registered(), fx.closed()), (2, 1));
        // Both count: the id lives until both are released.
        drop((inner, outer));
        fx.pt.release(1, true);
        assert_eq!(fx.closed(), 1);
        fx.pt.release(1, true);
        assert_eq!(fx.closed(), 2);
        assert_eq!(fx.open_inodes(), 0);
    }

    #[test]
    fn a_cached_open_decided_meanwhile_makes_this_one_cached() {
        let fx = Fixture::new();
        let mut inner = None;
        let outer = fx.open_with(1, |_| {
            // Evicted meanwhile: the inner open finds nothing on disk.
            fx.evict();
            inner = Some(fx.open(1));
            fx.register()
        });
        assert_eq!(id(&inner.expect("the inner open ran")), None);
        assert_eq!(id(&outer), None);
        // The registration is not used, and closed at once.
        assert_eq!((fx.registered(), fx.closed()), (1, 1));
        fx.pt.release(1, false);
        assert_eq!(fx.open_inodes(), 1, "one cached handle is still open");
        fx.pt.release(1, false);
        assert_eq!(fx.open_inodes(), 0);
    }

    #[test]
    fn releasing_what_is_not_open_changes_nothing() {
        let fx = Fixture::new();
        fx.pt.release(7, true);
        fx.pt.release(7, false);
        assert_eq!(fx.open_inodes(), 0);
        let open = fx.open(1);
        // A cached release of a passthrough inode leaves its handle counted.
        fx.pt.release(1, false);
        assert_eq!(fx.open_inodes(), 1);
        assert_eq!(fx.closed(), 0);
        drop(open);
        fx.pt.release(1, true);
        assert_eq!((fx.open_inodes(), fx.closed()), (0, 1));
    }
}

//! The `fuser::Filesystem`: kernel requests answered from a `Tree` and a
//! `Reader`, read-only.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuser::{
    AccessFlags, BackingId, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle,
    FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use ocifs_core::{Ino, Tree};
use ocifs_core::{Node, NodeKind, SpecialKind};
use serde::Serialize;

use crate::options::MountOptions;
use crate::passthrough::{OpenMode, Passthrough};
use crate::server::Server;
use crate::session::{Counters, MountStats, PendingRead, State};

/// The name of the hidden statistics file at the root of every mount.
///
/// It is not listed by `readdir`, but `lookup` finds it (unless the artifact
/// has a file of that name, which wins). Each `open` takes a snapshot: one
/// JSON object holding the reader's [`Stats`](ocifs_core::Stats) fields and
/// the [`MountStats`] fields side by side, and, for a mount whose process
/// ends with it ([`MountOptions::server_process`]), `"server"`: its `pid`
/// and `start` time. Its size shows as 0 and it is read
/// with direct I/O, so `cat` and `std::fs::read` see the whole snapshot.
pub const STATS_FILE: &str = ".ocifs-stats";

/// The block size shown by stat and statfs.
const BLOCK: u64 = 4096;
/// Session requests that may wait in the kernel for a reply at once (reads
/// and readahead among them). fuser's default of 16 is low for requests
/// that each wait on the network.
const MAX_BACKGROUND: u16 = 64;

fn lock_handles(handles: &Mutex<Handles>) -> MutexGuard<'_, Handles> {
    // Handles hold no invariant a panicking holder could break halfway.
    handles.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Answers an open of `ino` (`content`) on a mount with passthrough: a
/// handle of the inode's mode, the backing file handed to the kernel where
/// there is one (counted).
fn answer_open(
    pt: &Passthrough<BackingId>,
    handles: &Mutex<Handles>,
    state: &State,
    ino: Ino,
    content: &ocifs_core::Content,
    reply: ReplyOpen,
) {
    let path = || state.tree.path_of(ino);
    match pt.open(ino, content, path, |file| reply.open_backing(file)) {
        OpenMode::Cached => {
            let fh = lock_handles(handles).insert(OpenFile::File {
                ino,
                passthrough: false,
            });
            reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE);
        }
        OpenMode::Passthrough(backing) => {
            let fh = lock_handles(handles).insert(OpenFile::File {
                ino,
                passthrough: true,
            });
            Counters::bump(&state.counters.passthrough_opens);
            // The kernel looks the backing id up when it reads this
            // reply; `pt` keeps `backing` until the last release.
            // No FOPEN_KEEP_CACHE: the kernel fails a passthrough open
            // with EIO for any flag beyond DIRECT_IO and NOFLUSH.
            reply.opened_passthrough(fh, FopenFlags::empty(), &backing);
        }
    }
}

/// The errno for a request that failed in core, logged with the operation,
/// inode and path. Every core error reaches the kernel through here.
fn errno(op: &'static str, tree: &Tree, ino: Ino, err: &ocifs_core::Error) -> Errno {
    let code = err.errno();
    tracing::warn!(op, ino, path = %tree.path_of(ino), errno = code, "{err}");
    Errno::from_i32(code)
}

/// One open file handle.
#[derive(Debug)]
enum OpenFile {
    /// The stats file, with the snapshot taken at open.
    Stats(Bytes),
    /// An artifact file; `passthrough` says in which I/O mode it was opened.
    File { ino: Ino, passthrough: bool },
}

/// The open file handles that need a record: the stats file's, and every
/// file's while passthrough is on.
#[derive(Debug, Default)]
struct Handles {
    /// The last handle given out (handles start at 1; 0 is the stateless
    /// handle of a file opened without passthrough).
    next: u64,
    /// What each handle is open on.
    open: HashMap<u64, OpenFile>,
}

impl Handles {
    /// Records `handle` under a new file handle.
    fn insert(&mut self, handle: OpenFile) -> FileHandle {
        self.next += 1;
        self.open.insert(self.next, handle);
        FileHandle(self.next)
    }
}

/// The filesystem of one mount, as the session's threads see it.
pub(crate) struct OciFs {
    /// What it shares with its `Mount`.
    state: Arc<State>,
    /// Where reads that fetch run.
    runtime: tokio::runtime::Handle,
    /// How long the kernel may cache attributes and names.
    ttl: Duration,
    /// The owner shown for files without one of their own.
    uid: u32,
    /// The group shown for files without one of their own.
    gid: u32,
    /// Inode of the stats file: one past the tree, so never a tree inode.
    stats_ino: Ino,
    /// Link counts by inode (directories: 2 + subdirectories).
    nlinks: Vec<u32>,
    /// Total size of all files, in blocks, for statfs.
    blocks: u64,
    /// Passthrough, if asked for and not refused by the kernel at init.
    passthrough: Option<Arc<Passthrough<BackingId>>>,
    /// The open file handles with a record.
    handles: Arc<Mutex<Handles>>,
    /// This process, if it ends with the mount
    /// ([`MountOptions::server_process`]): named in the stats file.
    server: Option<Server>,
}

impl OciFs {
    /// The filesystem serving `state`'s tree as `options` say, its reads
    /// on `runtime`.
    pub(crate) fn new(
        state: Arc<State>,
        options: &MountOptions,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let tree = &state.tree;
        let mut nlinks = vec![1; tree.len()];
        let mut bytes = 0u64;
        for (i, nlink) in nlinks.iter_mut().enumerate() {
            let ino = i as Ino + 1;
            match tree.node(ino) {
                Some(n) if n.is_dir() => {
                    let subdirs = tree
                        .children(ino)
                        .filter(|(_, c)| tree.node(*c).is_some_and(Node::is_dir))
                        .count();
                    *nlink = 2 + u32::try_from(subdirs).unwrap_or(u32::MAX - 2);
                }
                Some(n) => bytes = bytes.saturating_add(n.size()),
                None => {}
            }
        }
        OciFs {
            stats_ino: tree.len() as Ino + 1,
            nlinks,
            blocks: bytes.div_ceil(BLOCK),
            state,
            runtime,
            ttl: options.attr_ttl,
            uid: options.uid,
            gid: options.gid,
            passthrough: Passthrough::new(options).map(Arc::new),
            handles: Arc::new(Mutex::new(Handles::default())),
            server: options.server_process.then(Server::this).flatten(),
        }
    }

    fn tree(&self) -> &Tree {
        &self.state.tree
    }

    fn handles(&self) -> MutexGuard<'_, Handles> {
        lock_handles(&self.handles)
    }

    fn attr(&self, ino: Ino, node: &Node) -> FileAttr {
        let kind = file_type(node);
        let size = node.size();
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm: (node.mode & 0o7777) as u16,
            nlink: self.nlinks.get((ino - 1) as usize).copied().unwrap_or(1),
            // An image's owners are its own; an artifact's, the mounter's.
            uid: node.owner.map_or(self.uid, |o| o.0),
            gid: node.owner.map_or(self.gid, |o| o.1),
            rdev: match node.kind {
                NodeKind::Special {
                    kind: SpecialKind::CharDevice | SpecialKind::BlockDevice,
                    major,
                    minor,
                } => libc::makedev(major, minor) as u32,
                _ => 0,
            },
            blksize: BLOCK as u32,
            flags: 0,
        }
    }

    fn stats_attr(&self) -> FileAttr {
        let now = SystemTime::now();
        FileAttr {
            ino: INodeNo(self.stats_ino),
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind: FileType::RegularFile,
            perm: 0o444,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK as u32,
            flags: 0,
        }
    }

    /// The attributes of any inode this mount knows.
    fn attr_of(&self, ino: Ino) -> Option<FileAttr> {
        if ino == self.stats_ino {
            return Some(self.stats_attr());
        }
        self.tree().node(ino).map(|n| self.attr(ino, n))
    }

    fn stats_json(&self) -> Bytes {
        #[derive(Serialize)]
        struct Snapshot {
            #[serde(flatten)]
            reader: ocifs_core::Stats,
            #[serde(flatten)]
            mount: MountStats,
            wire: Vec<ocifs_core::HostBytes>,
            #[serde(skip_serializing_if = "Option::is_none")]
            server: Option<Server>,
        }
        let snapshot = Snapshot {
            reader: self.state.reader.stats(),
            mount: self.state.counters.snapshot(),
            wire: self.state.reader.wire(),
            server: self.server,
        };
        let mut json = serde_json::to_vec_pretty(&snapshot).unwrap_or_default();
        json.push(b'\n');
        Bytes::from(json)
    }

    fn read_stats(&self, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        let bytes = match self.handles().open.get(&fh.0) {
            Some(OpenFile::Stats(b)) => b.clone(),
            _ => return reply.error(Errno::EBADF),
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        reply.data(&bytes[start..end]);
    }
}

impl Filesystem for OciFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Optional capabilities: take what the kernel offers.
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        if self.passthrough.is_some() {
            match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                // Depth 1: backing files on a plain filesystem (ext4, xfs,
                // btrfs) work and this mount can still be an overlayfs lower
                // layer. A backing file on overlayfs gets ELOOP at open and
                // that file is read through ocifs instead.
                Ok(()) => {
                    let _ = config.set_max_stack_depth(1);
                }
                Err(_) => {
                    tracing::warn!(
                        "this kernel has no FUSE passthrough (Linux 6.9+); every read goes through ocifs"
                    );
                    self.passthrough = None;
                }
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.state.ended.send_replace(true);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        Counters::bump(&self.state.counters.lookups);
        let tree = self.tree();
        let Some(parent_node) = tree.node(parent.0) else {
            return reply.error(Errno::ENOENT);
        };
        if !parent_node.is_dir() {
            return reply.error(Errno::ENOTDIR);
        }
        let found = name.to_str().and_then(|n| tree.lookup(parent.0, n));
        match found.and_then(|ino| Some((ino, tree.node(ino)?))) {
            Some((ino, node)) => reply.entry(&self.ttl, &self.attr(ino, node), Generation(0)),
            None if parent.0 == Tree::ROOT && name == STATS_FILE => {
                reply.entry_with_ttls(
                    &Duration::ZERO,
                    &self.ttl,
                    &self.stats_attr(),
                    Generation(0),
                );
            }
            // A negative entry (inode 0) that the kernel may cache as long as
            // a positive one: the tree never changes.
            None => {
                let mut negative = self.stats_attr();
                negative.ino = INodeNo(0);
                reply.entry(&self.ttl, &negative, Generation(0));
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Some(attr) if ino.0 == self.stats_ino => reply.attr(&Duration::ZERO, &attr),
            Some(attr) => reply.attr(&self.ttl, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        if ino.0 == self.stats_ino {
            let fh = self.handles().insert(OpenFile::Stats(self.stats_json()));
            // Direct I/O: reads are not cut at the (zero) size.
            return reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
        }
        let Some(node) = self.tree().node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let content = match &node.kind {
            NodeKind::File(content) => content,
            NodeKind::Dir(_) => return reply.error(Errno::EISDIR),
            // The kernel follows symlinks itself and never opens one.
            NodeKind::Symlink(_) => return reply.error(Errno::from_i32(libc::ELOOP)),
            // The mount is nodev: the kernel opens neither devices nor FIFOs here.
            NodeKind::Special { .. } => return reply.error(Errno::EACCES),
        };
        Counters::bump(&self.state.counters.opens);
        let Some(pt) = &self.passthrough else {
            // Stateless: reads need only the inode.
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
        };
        // A file whose first read would wait for the whole blob (strict,
        // no chunk table) waits for it here, in a task (no FUSE thread is
        // held), and is then handed to the kernel like a warm one: every
        // read of it goes to the disk, none through ocifs.
        if let Some(whole) = pt.whole_first(content) {
            let (pt, handles, state) = (
                Arc::clone(pt),
                Arc::clone(&self.handles),
                Arc::clone(&self.state),
            );
            let mut cancel = state.cancel.subscribe();
            self.runtime.spawn(async move {
                let done = tokio::select! {
                    done = whole => done,
                    _ = cancel.wait_for(|c| *c) => return reply.error(Errno::EIO),
                };
                let Some(NodeKind::File(content)) = state.tree.node(ino.0).map(|n| &n.kind) else {
                    return reply.error(Errno::ENOENT);
                };
                if let Err(e) = done {
                    Counters::bump(&state.counters.read_errors);
                    return reply.error(errno("open", &state.tree, ino.0, &e));
                }
                answer_open(&pt, &handles, &state, ino.0, content, reply);
            });
            return;
        }
        answer_open(pt, &self.handles, &self.state, ino.0, content, reply);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        Counters::bump(&self.state.counters.reads);
        if ino.0 == self.stats_ino {
            return self.read_stats(fh, offset, size, reply);
        }
        let file_size = match self.tree().node(ino.0).map(|n| &n.kind) {
            Some(NodeKind::File(c)) => c.size(),
            Some(NodeKind::Dir(_)) => return reply.error(Errno::EISDIR),
            Some(NodeKind::Symlink(_) | NodeKind::Special { .. }) => {
                return reply.error(Errno::EINVAL);
            }
            None => return reply.error(Errno::ENOENT),
        };
        if offset >= file_size {
            return reply.data(&[]);
        }
        let want = u64::from(size).min(file_size - offset);
        let state = Arc::clone(&self.state);
        let mut cancel = state.cancel.subscribe();
        if *cancel.borrow() {
            Counters::bump(&state.counters.read_errors);
            return reply.error(Errno::EIO);
        }
        // A fetch never holds a FUSE thread: the read continues in a task,
        // and whoever finishes first (the task, or an unmount) replies.
        let pending = PendingRead::new(state, reply);
        self.runtime.spawn(async move {
            let state = pending.state();
            let Some(NodeKind::File(content)) = state.tree.node(ino.0).map(|n| &n.kind) else {
                return; // unreachable: the tree is immutable; `pending` answers EIO
            };
            let result = tokio::select! {
                r = state.reader.read(content, offset, want) => r,
                // The unmount answered (or `pending` will): drop the fetch.
                _ = cancel.wait_for(|c| *c) => return,
            };
            let Some(reply) = pending.take_reply() else {
                return; // answered by the unmount meanwhile
            };
            match result {
                Ok(bytes) if bytes.len() as u64 == want => reply.data(&bytes),
                Ok(bytes) => {
                    // A short read would reach the reader as zeros.
                    Counters::bump(&state.counters.read_errors);
                    let err = ocifs_core::Error::ShortRead {
                        digest: content.blob().digest.to_string(),
                        offset,
                        expected: want,
                        got: bytes.len() as u64,
                    };
                    reply.error(errno("read", &state.tree, ino.0, &err));
                }
                Err(e) => {
                    Counters::bump(&state.counters.read_errors);
                    reply.error(errno("read", &state.tree, ino.0, &e));
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let closed = self.handles().open.remove(&fh.0);
        if let Some(OpenFile::File { ino, passthrough }) = closed
            && let Some(pt) = &self.passthrough
        {
            pt.release(ino, passthrough);
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree().node(ino.0) {
            // The listing never changes: let the kernel keep it.
            Some(n) if n.is_dir() => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let tree = self.tree();
        let Some(node) = tree.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if !node.is_dir() {
            return reply.error(Errno::ENOTDIR);
        }
        for (i, (name, child)) in entries(tree, ino.0, node).enumerate().skip(offset as usize) {
            let kind = tree.node(child).map_or(FileType::RegularFile, file_type);
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let tree = self.tree();
        let Some(node) = tree.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if !node.is_dir() {
            return reply.error(Errno::ENOTDIR);
        }
        for (i, (name, child)) in entries(tree, ino.0, node).enumerate().skip(offset as usize) {
            let Some(attr) = tree.node(child).map(|n| self.attr(child, n)) else {
                continue;
            };
            if reply.add(
                INodeNo(child),
                i as u64 + 1,
                name,
                &self.ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.tree().len() as u64;
        reply.statfs(self.blocks, 0, 0, files, 0, BLOCK as u32, 255, BLOCK as u32);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if self.attr_of(ino.0).is_none() {
            reply.error(Errno::ENOENT);
        } else if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let tree = self.tree();
        let value = tree
            .node(ino.0)
            .and_then(|n| n.xattrs.as_ref())
            .and_then(|x| x.iter().find(|(k, _)| OsStr::new(k) == name));
        match value {
            Some((_, v)) => reply_xattr(reply, size, v),
            None => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let tree = self.tree();
        let mut names = Vec::new();
        if let Some(x) = tree.node(ino.0).and_then(|n| n.xattrs.as_ref()) {
            for (k, _) in x.iter() {
                names.extend_from_slice(k.as_bytes());
                names.push(0);
            }
        }
        reply_xattr(reply, size, &names);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree().node(ino.0).map(|n| &n.kind) {
            Some(NodeKind::Symlink(target)) => reply.data(target.as_bytes()),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    // Everything below changes the tree: refused. With the `ro` mount flag
    // the kernel refuses most of these itself; these answer whatever gets
    // through (a remount rw, a future kernel).

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The destination is on this mount too, so this is a write.
        reply.error(Errno::EROFS);
    }
}

/// The file type of a node.
fn file_type(node: &Node) -> FileType {
    match node.kind {
        NodeKind::Dir(_) => FileType::Directory,
        NodeKind::File(_) => FileType::RegularFile,
        NodeKind::Symlink(_) => FileType::Symlink,
        NodeKind::Special { kind, .. } => match kind {
            SpecialKind::CharDevice => FileType::CharDevice,
            SpecialKind::BlockDevice => FileType::BlockDevice,
            SpecialKind::Fifo => FileType::NamedPipe,
        },
    }
}

/// Answers a getxattr or listxattr with `value`: its size if `size` is 0,
/// ERANGE if it does not fit.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}

/// `.`, `..` and the children of directory `ino`, in readdir order.
fn entries<'a>(
    tree: &'a Tree,
    ino: Ino,
    node: &'a Node,
) -> impl Iterator<Item = (&'a str, Ino)> + 'a {
    [(".", ino), ("..", node.parent)]
        .into_iter()
        .chain(tree.children(ino))
}

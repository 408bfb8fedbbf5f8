//! Mounting, the background session, and unmounting.

use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::BackgroundSession;
use ocifs_core::{Error, Reader, Result, Tree};

use crate::fs::OciFs;
use crate::options::{FS_TYPE, MountOptions};
use crate::server::{Server, wait_for_end};
use crate::session::{MountStats, State};
use crate::sys;

/// How long [`Mount::unmount`] waits for the session to end after a busy
/// mount was detached and its reads failed, before leaving it to end on its
/// own when the last open file is closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// How long [`unmount`] waits for the process that served a mount to end.
pub const SERVER_WAIT: Duration = Duration::from_secs(60);

/// A mounted artifact: a FUSE session serving it from background threads.
///
/// Dropping it unmounts, as [`Mount::unmount`] does.
#[derive(Debug)]
pub struct Mount {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    /// `st_dev` of the mount, to tell it from whatever may later be mounted
    /// at the same path, and to find its fusectl connection.
    dev: Option<u64>,
    state: Arc<State>,
}

/// Mounts `tree` read-only at `mountpoint` (an existing directory) and
/// serves it from background threads until the returned [`Mount`] is
/// unmounted or dropped. File reads run as tasks on `runtime`, through
/// `reader`.
///
/// Fails with an [`Error::Io`] naming the mount point when there is no
/// `/dev/fuse`, the mount point is not a directory, or the kernel or
/// `fusermount3` refuse the mount.
pub fn mount(
    tree: Arc<Tree>,
    reader: Arc<dyn Reader>,
    mountpoint: &Path,
    options: MountOptions,
    runtime: tokio::runtime::Handle,
) -> Result<Mount> {
    let context = || format!("cannot mount at {}", mountpoint.display());
    let mountpoint = mountpoint
        .canonicalize()
        .map_err(|e| Error::io(context(), e))?;
    if !mountpoint.is_dir() {
        return Err(Error::io(
            context(),
            io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::io(
            format!(
                "{}: /dev/fuse is missing (load the fuse module; in a container, pass the device in)",
                context()
            ),
            io::Error::from(io::ErrorKind::NotFound),
        ));
    }
    if options.allow_other && sys::euid() != 0 && !sys::users_may_allow_other() {
        return Err(Error::io(
            format!(
                "{}: allow_other is for root only unless /etc/fuse.conf has a line \
                 user_allow_other (an administrator adds it; fusermount3 refuses otherwise)",
                context()
            ),
            io::Error::from_raw_os_error(libc::EPERM),
        ));
    }
    let state = Arc::new(State::new(tree, reader));
    let config = options.fuser_config();
    let fs = OciFs::new(Arc::clone(&state), &options, runtime);
    let session = fuser::Session::new(fs, &mountpoint, &config).map_err(|e| {
        let hint = match (e.kind(), e.raw_os_error()) {
            // Users other than root mount through the setuid helper.
            (io::ErrorKind::NotFound, _) => " (is fusermount3, from the fuse3 package, installed?)",
            // fuser opens /dev/fuse before it considers fusermount3.
            (io::ErrorKind::PermissionDenied, Some(_)) => {
                " (is /dev/fuse readable and writable for this user?)"
            }
            // fusermount3 says what is wrong itself.
            _ => "",
        };
        Error::io(format!("{}{hint}", context()), e)
    })?;
    let session = session.spawn().map_err(|e| Error::io(context(), e))?;
    // Answered by the session just started.
    let dev = std::fs::metadata(&mountpoint).map(|m| m.dev()).ok();
    tracing::debug!(mountpoint = %mountpoint.display(), ?dev, "mounted");
    if let (Some(bytes), Some(dev)) = (options.read_ahead, dev) {
        set_read_ahead(dev, bytes);
    }
    Ok(Mount {
        session: Some(session),
        mountpoint,
        dev,
        state,
    })
}

/// Sets the read-ahead of the mount whose device is `dev` (the kernel
/// takes at most 128 KiB at FUSE's init; its backing device's sysfs knob
/// takes more). Without the right to (not root), the kernel's stays.
fn set_read_ahead(dev: u64, bytes: u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&knob, (bytes / 1024).max(4).to_string()) {
        Ok(()) => tracing::debug!(%knob, bytes, "read-ahead set"),
        Err(e) => tracing::debug!(%knob, error = %e, "read-ahead left as the kernel set it"),
    }
}

impl Mount {
    /// The (canonical) mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The mount's counters so far.
    pub fn stats(&self) -> MountStats {
        self.state.counters.snapshot()
    }

    /// Whether the session still runs (false once the kernel has unmounted).
    pub fn is_mounted(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
            && !*self.state.ended.borrow()
    }

    /// Resolves when the session has ended: the kernel unmounted the
    /// filesystem (`umount`, `fusermount3 -u`, [`unmount()`]) and the last
    /// file open in it was closed. For `select!` against a signal.
    pub async fn unmounted(&self) {
        let mut ended = self.state.ended.subscribe();
        // An error means the session is gone with its sender: ended too.
        let _ = ended.wait_for(|e| *e).await;
    }

    /// Waits, blocking, until the session ends (see [`Mount::unmounted`]).
    pub fn join(mut self) -> Result<()> {
        match self.session.take() {
            Some(session) => self.session_end(session.join()),
            None => Ok(()),
        }
    }

    /// Unmounts and waits for the session to end.
    ///
    /// A busy mount (a process has a file open or its working directory
    /// there) is detached instead: reads in flight and later reads fail with
    /// `EIO`, and, where fusectl is mounted, the connection is aborted so
    /// that nothing waits on this process. The session is given a few
    /// seconds to drain, then left to end when the last file is closed.
    ///
    /// This blocks (as dropping does); from async code, call it in
    /// `spawn_blocking`. Reads in flight are answered from the calling
    /// thread, so it works even when the runtime is busy or gone.
    pub fn unmount(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let mut busy = false;
        if !session.guard.is_finished() && self.is_ours_on_top() {
            match self.detach() {
                Ok(b) => busy = b,
                Err(e) => {
                    self.session = Some(session);
                    return Err(e);
                }
            }
        }
        self.state.cancel_reads();
        if busy && let Some(dev) = self.dev {
            sys::abort_connection(sys::connection_id(dev));
        }
        self.drain(session)
    }

    /// Whether the topmost mount at the mount point is still this one, so
    /// that unmounting the path cannot hit a later mount there.
    fn is_ours_on_top(&self) -> bool {
        match (sys::find_mount(&self.mountpoint), self.dev) {
            (Ok(Some(m)), Some(dev)) => {
                m.dev == format!("{}:{}", libc::major(dev), libc::minor(dev))
            }
            (Ok(Some(m)), None) => m.fs_type == FS_TYPE,
            (Ok(None), _) => false,
            // No mount table to check: trust the path.
            (Err(_), _) => true,
        }
    }

    /// Unmounts the mount point, detaching it if busy; returns whether it was.
    fn detach(&self) -> Result<bool> {
        let mp = &self.mountpoint;
        match unmount_path(mp, false) {
            Ok(()) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                tracing::info!(mountpoint = %mp.display(), "busy: detaching it; reads in flight fail");
                unmount_path(mp, true).map_err(|e| unmount_error(mp, e))?;
                Ok(true)
            }
            // Unmounted from outside meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(unmount_error(mp, e)),
        }
    }

    /// Waits for the session to end.
    fn drain(&self, session: BackgroundSession) -> Result<()> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !session.guard.is_finished() {
            if Instant::now() >= deadline {
                tracing::warn!(
                    mountpoint = %self.mountpoint.display(),
                    "files stay open in the detached mount; its session ends when they are closed"
                );
                // Dropping the session would try to unmount the path again,
                // where something else may be mounted by now.
                std::mem::forget(session);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.session_end(session.join())
    }

    /// How the session ended. A session whose connection was aborted, by a
    /// busy unmount of this process or by the kernel tearing down a
    /// detached mount once its last file closed, ends with `ECONNABORTED`
    /// where it would otherwise end with `ENODEV`: both are the end of an
    /// unmounted mount, not errors.
    fn session_end(&self, ended: io::Result<()>) -> Result<()> {
        match ended {
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            r => r.map_err(|e| self.session_error(e)),
        }
    }

    fn session_error(&self, e: io::Error) -> Error {
        Error::io(format!("FUSE session of {}", self.mountpoint.display()), e)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(mountpoint = %self.mountpoint.display(), "{e}");
            // Leave nothing mounted behind a dropped Mount.
            if let Some(session) = self.session.take() {
                let _ = unmount_path(&self.mountpoint, true);
                self.state.cancel_reads();
                std::mem::forget(session);
            }
        }
    }
}

/// Unmounts the ocifs mount at `mountpoint`, from any process (for
/// `ocifs umount`). `lazy` detaches it even while files are open in it;
/// they keep working until closed.
///
/// Refuses paths that are not ocifs mounts. A busy mount without `lazy` is
/// an [`Error::Io`] with `EBUSY` saying so. Works on mounts whose server is
/// gone. Users other than root go through `fusermount3 -u`.
///
/// Unless `lazy`, when the mount is served by a process that ends with it
/// ([`MountOptions::server_process`], an `ocifs mount` daemon), waits for
/// that process to end, at most [`SERVER_WAIT`]: it settles its cache on
/// the way out, and whoever unmounts may remove or reuse that cache next.
/// One that takes longer is left to finish, with a warning.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let path = sys::absolute_mount_point(mountpoint)
        .map_err(|e| Error::io(format!("cannot unmount {}", mountpoint.display()), e))?;
    let entry = sys::find_mount(&path).map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    match entry {
        Some(m) if m.fs_type == FS_TYPE => {}
        Some(m) => {
            return Err(Error::io(
                format!(
                    "{} is a {} mount, not an ocifs one; not unmounting it",
                    path.display(),
                    m.fs_type
                ),
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        None => {
            return Err(Error::io(
                format!("{} is not a mount point", path.display()),
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
    }
    // Asked before the unmount, while it still answers; watched from
    // before it, so its pid cannot be taken over meanwhile.
    let server = if lazy {
        None
    } else {
        Server::of_mount(&path.join(crate::STATS_FILE)).and_then(|s| Some((s, s.watch()?)))
    };
    unmount_path(&path, lazy).map_err(|e| unmount_error(&path, e))?;
    if let Some((server, pidfd)) = server
        && !wait_for_end(&pidfd, SERVER_WAIT)
    {
        tracing::warn!(
            pid = server.pid,
            "unmounted; the process that served the mount is still finishing (settling its cache)"
        );
    }
    Ok(())
}

/// umount2 as root, `fusermount3 -u` otherwise.
fn unmount_path(path: &Path, lazy: bool) -> io::Result<()> {
    match sys::umount(path, lazy) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => sys::fusermount_unmount(path, lazy),
        other => other,
    }
}

fn unmount_error(path: &Path, e: io::Error) -> Error {
    let context = match e.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "cannot unmount {}: a process has a file open or its working directory there \
             (close it, or unmount lazily to detach it now)",
            path.display()
        ),
        Some(libc::EINVAL) => format!("cannot unmount {}: not mounted", path.display()),
        _ => format!("cannot unmount {}", path.display()),
    };
    Error::io(context, e)
}

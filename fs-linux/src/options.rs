//! How to mount: [`MountOptions`], the [`BackingFiles`] they may name, and
//! the fuser configuration they make.

use std::fmt;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use ocifs_core::Content;

use crate::sys;

/// The filesystem subtype: mounts show as `fuse.ocifs` in the mount table,
/// and [`unmount()`](crate::unmount) touches nothing else.
pub(crate) const SUBTYPE: &str = "ocifs";
/// The filesystem type of an ocifs mount in the mount table: `fuse.` and
/// [`SUBTYPE`].
pub(crate) const FS_TYPE: &str = "fuse.ocifs";

/// Where complete blobs are on local disk, for FUSE passthrough.
///
/// A cache that holds a whole, verified blob in one file returns that file,
/// opened for reading; the kernel then reads it directly, and those reads
/// never reach ocifs (nor its counters, nor its verification: the file must
/// already be checked). `None` means "not complete here": the file is read
/// through the [`Reader`](ocifs_core::Reader) instead. A file whose length
/// is not the blob's size is not used.
///
/// Any `Fn(&Content) -> Option<File> + Send + Sync` is one.
pub trait BackingFiles: Send + Sync {
    /// The file holding exactly the bytes of `content`, if there is one.
    fn backing_file(&self, content: &Content) -> Option<File>;

    /// What an open of `content` waits for before it is answered, if
    /// anything: a content whose first read would wait for the whole blob
    /// anyway (strict mode, no chunk table) makes the open wait for it, so
    /// that the open can hand the kernel the checked file and every read
    /// of it goes straight to the disk. `None`: answer at once.
    fn whole_first(&self, _content: &Content) -> Option<WholeFirst> {
        None
    }
}

/// The wait of an open for its whole blob ([`BackingFiles::whole_first`]).
pub type WholeFirst =
    std::pin::Pin<Box<dyn std::future::Future<Output = ocifs_core::Result<()>> + Send>>;

impl<F> BackingFiles for F
where
    F: Fn(&Content) -> Option<File> + Send + Sync,
{
    fn backing_file(&self, content: &Content) -> Option<File> {
        self(content)
    }
}

/// How to mount.
#[derive(Clone)]
pub struct MountOptions {
    /// Let users other than the one who mounted use the mount (`allow_other`;
    /// for users other than root this needs `user_allow_other` in
    /// `/etc/fuse.conf`).
    pub allow_other: bool,
    /// Let the kernel check permissions against the modes shown
    /// (`default_permissions`). Without it, anyone allowed to use the mount
    /// may read every file.
    pub default_permissions: bool,
    /// The source shown in the mount table (`fsname=`), e.g. the reference.
    /// Commas become `_` (they would split the option list of fusermount3).
    pub fs_name: String,
    /// Hand blobs that [`backing_files`](Self::backing_files) has on disk to
    /// the kernel (FUSE passthrough, Linux 6.9+, needs CAP_SYS_ADMIN). Falls
    /// back to reading through ocifs, per file or altogether, wherever the
    /// kernel refuses.
    pub passthrough: bool,
    /// Where complete blobs are, for [`passthrough`](Self::passthrough).
    pub backing_files: Option<Arc<dyn BackingFiles>>,
    /// The owner shown for every file.
    pub uid: u32,
    /// The group shown for every file.
    pub gid: u32,
    /// How long the kernel may cache attributes and names (and their
    /// absence). The content never changes while mounted, so long is right.
    pub attr_ttl: Duration,
    /// The kernel's read-ahead for the mount, in bytes (its
    /// `/sys/class/bdi/…/read_ahead_kb`, which only root may set; the
    /// kernel's 128 KiB otherwise). A sequential reader then asks for a
    /// chunk at a time, in requests of up to 1 MiB.
    pub read_ahead: Option<u64>,
    /// This process serves the mount and ends when it does (the `ocifs
    /// mount` daemon): the stats file names it, and [`unmount`](crate::unmount)
    /// from another process waits for it to end, so that its cache is
    /// settled when the unmount returns. Off for a mount that is one part of
    /// a longer-lived process.
    pub server_process: bool,
}

impl Default for MountOptions {
    /// Private to the current user, kernel permission checks, the process's
    /// effective ids, a one-day TTL, no passthrough.
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            default_permissions: true,
            fs_name: SUBTYPE.to_owned(),
            passthrough: false,
            backing_files: None,
            uid: sys::euid(),
            gid: sys::egid(),
            attr_ttl: Duration::from_secs(24 * 60 * 60),
            read_ahead: None,
            server_process: false,
        }
    }
}

impl fmt::Debug for MountOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountOptions")
            .field("allow_other", &self.allow_other)
            .field("default_permissions", &self.default_permissions)
            .field("fs_name", &self.fs_name)
            .field("passthrough", &self.passthrough)
            .field("backing_files", &self.backing_files.as_ref().map(|_| ".."))
            .field("read_ahead", &self.read_ahead)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("attr_ttl", &self.attr_ttl)
            .finish()
    }
}

impl MountOptions {
    /// The fuser session configuration for these options: a read-only,
    /// nosuid, nodev, noatime mount of subtype [`SUBTYPE`], open to its
    /// owner or to all, served by a few session threads.
    pub(crate) fn fuser_config(&self) -> fuser::Config {
        let mut options = vec![
            MountOption::RO,
            MountOption::NoSuid,
            MountOption::NoDev,
            MountOption::NoAtime,
            MountOption::FSName(self.fs_name.replace(',', "_")),
            // Not MountOption::Subtype: fuser drops that when it mounts with
            // mount(2) itself (as root); a plain option reaches the kernel
            // and fusermount3 alike.
            MountOption::CUSTOM(format!("subtype={SUBTYPE}")),
        ];
        if self.default_permissions {
            options.push(MountOption::DefaultPermissions);
        }
        let mut config = fuser::Config::default();
        config.mount_options = options;
        config.acl = if self.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        // Reads never wait on a session thread (they are answered from tokio
        // tasks), so a few threads, each with its own /dev/fuse fd, suffice.
        config.n_threads = Some(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 8),
        );
        config.clone_fd = true;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_table_type_is_fuse_and_the_subtype() {
        assert_eq!(FS_TYPE, format!("fuse.{SUBTYPE}"));
    }
}

//! ocifs-fs-windows: the Windows backend of ocifs, a Projected File System
//! (ProjFS) provider.
//!
//! [`mount`] makes a directory a ProjFS virtualization root and answers the
//! kernel's requests from the same core [`Tree`] and [`Reader`] as the Linux
//! backend; [`Mount::stop`] ([`Mount::unmount`], or dropping the [`Mount`])
//! stops virtualizing.
//! What the provider does for each ProjFS callback is platform-neutral code
//! in public modules, built and unit-tested everywhere:
//!
//! - [`names`]: Windows name order (`PrjFileNameCompare`), case-insensitive
//!   equality, name validity and path splitting;
//! - [`wildcard`]: search expressions (`PrjFileNameMatch`, with the DOS
//!   wildcards `<`, `>` and `"`);
//! - [`projection`]: the [`Tree`] as Windows sees it: per-directory
//!   listings in Windows order, case-insensitive lookup, what happens to
//!   names that differ only in case, attributes and times;
//! - [`enumeration`]: directory enumeration sessions (resume after a full
//!   buffer, restart scan, captured search expression);
//! - [`transfer`]: splitting a file-data request into aligned writes,
//!   reading them through the [`Reader`], and the asynchronous commands in
//!   flight;
//! - [`notification`]: the operations the read-only projection refuses;
//! - [`hresult`]: the answers, and the one mapping from core errors.
//!
//! Only the glue that calls ProjFS is `cfg(windows)`.
//!
//! ```
//! use ocifs_fs_windows::{names, wildcard};
//!
//! // Windows lists names ignoring case, by UTF-16 code unit…
//! let mut listing = vec!["b.txt", "README", "a.TXT", "_notes"];
//! listing.sort_by(|a, b| names::compare(a, b));
//! assert_eq!(listing, ["a.TXT", "b.txt", "README", "_notes"]);
//! // …and filters them with its own wildcards: `<` is `*` up to the last dot.
//! assert!(wildcard::is_match("initrd.img", "*.IMG"));
//! assert!(wildcard::is_match("vmlinuz-6.1.0.efi", "vmlinuz<efi"));
//! assert!(!wildcard::is_match("vmlinuz", "?"));
//! ```
//!
//! # Why the `windows` crate and not `windows-projfs`
//!
//! ocifs fetches bytes on first read, so a read may wait on the network for
//! seconds. The `windows-projfs` binding runs every callback under one
//! `Mutex<ProjectionContext>` and its file-data callback holds that lock
//! while it reads the source, so one slow fetch would stall every listing
//! and every other read; it has no asynchronous completion; and it is
//! GPL-2.0, which the MIT/Apache-2.0 workspace cannot take. This crate
//! calls ProjFS through Microsoft's `windows` crate (MIT/Apache-2.0) instead:
//! a file-data request returns `ERROR_IO_PENDING` at once and a tokio task
//! completes it with `PrjCompleteCommand`, so listings, lookups and cached
//! reads never wait behind a fetch.
//!
//! # Limits of ProjFS
//!
//! ProjFS keeps what it projects on disk, in the virtualization root, and
//! has no streaming mode: the first read of any byte of a file asks the
//! provider for the whole file (in pieces of at most 4 GiB), and the read
//! completes when all of it is written. So on Windows ocifs is lazy per
//! file, not per byte: listing an artifact fetches nothing, reading one
//! file fetches that file. The provider streams each piece through the
//! [`Reader`] in [`MountOptions::max_transfer`] writes, so memory stays
//! bounded, and [`Mount::stop`] removes the hydrated copies again.
//!
//! `ProjectedFSLib.dll` is loaded at run time (from System32 only) rather
//! than linked, so that `ocifs.exe` starts on machines without the ProjFS
//! optional feature, and `mount` there says how to enable it
//! ([`ENABLE_PROJFS`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ocifs_core::{Reader, Result, Tree};

pub mod enumeration;
pub mod hresult;
pub mod names;
pub mod notification;
pub mod projection;
pub mod transfer;
pub mod wildcard;

#[cfg(windows)]
mod projfs;
#[cfg(test)]
mod testutil;

pub use enumeration::{Session, Sessions};
pub use projection::{BasicInfo, Projection};
pub use wildcard::Pattern;

/// The command that enables ProjFS, for an elevated PowerShell.
pub const ENABLE_PROJFS: &str = "Enable-WindowsOptionalFeature -Online -FeatureName Client-ProjFS";

/// How to mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// The most bytes read from the [`Reader`] and written to ProjFS at once
    /// (rounded down to the device's write alignment). Default 1 MiB, the
    /// core chunk size.
    pub max_transfer: u32,
    /// ProjFS threads that wait for requests (`PoolThreadCount`); 0 lets
    /// ProjFS choose (twice the concurrent count).
    pub pool_threads: u32,
    /// ProjFS threads that may run callbacks at once
    /// (`ConcurrentThreadCount`); 0 lets ProjFS choose (one per processor).
    /// Callbacks never wait for the network, so few are needed.
    pub concurrent_threads: u32,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            max_transfer: 1 << 20,
            pool_threads: 0,
            concurrent_threads: 0,
        }
    }
}

/// A running ProjFS projection. Dropping it stops it, as [`Mount::stop`] does.
pub struct Mount {
    root: PathBuf,
    #[cfg_attr(not(windows), allow(dead_code))]
    inner: Inner,
}

enum Inner {
    #[cfg(windows)]
    ProjFs(projfs::Instance),
}

impl Mount {
    /// The virtualization root, as an absolute path.
    pub fn mountpoint(&self) -> &Path {
        &self.root
    }

    /// The same as [`Mount::stop`], under the Linux backend's name.
    pub fn unmount(self) -> Result<()> {
        self.stop()
    }

    /// Stops the projection: requests in flight end with
    /// `ERROR_OPERATION_ABORTED`, the files ProjFS cached in the root are
    /// removed (so the directory can be mounted again, with any artifact),
    /// and virtualization stops (`PrjStopVirtualizing`). Blocks until done;
    /// inside a multi-threaded tokio runtime it does so with
    /// `block_in_place`.
    pub fn stop(self) -> Result<()> {
        match self.inner {
            #[cfg(windows)]
            Inner::ProjFs(mut instance) => instance.stop(),
        }
    }
}

impl fmt::Debug for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mount").field("root", &self.root).finish()
    }
}

/// Projects `tree` into the directory `root` with ProjFS, reading file
/// contents through `reader` on tasks spawned on `runtime`.
///
/// `root` must not exist, be an empty directory, or be the root of an
/// earlier ocifs mount (whose leftovers are removed first). On a machine
/// without the ProjFS optional feature this fails with a message that says
/// how to enable it; on other platforms than Windows it always fails.
pub fn mount(
    tree: Arc<Tree>,
    reader: Arc<dyn Reader>,
    root: &Path,
    options: MountOptions,
    runtime: tokio::runtime::Handle,
) -> Result<Mount> {
    #[cfg(windows)]
    {
        let instance = projfs::Instance::start(tree, reader, root, &options, runtime)?;
        Ok(Mount {
            root: instance.root().to_path_buf(),
            inner: Inner::ProjFs(instance),
        })
    }
    #[cfg(not(windows))]
    {
        let _ = (tree, reader, options, runtime);
        Err(ocifs_core::Error::io(
            format!("cannot mount {}", root.display()),
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the ProjFS backend runs on Windows only",
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(windows))]
    #[tokio::test]
    async fn mount_elsewhere_than_windows_says_so() {
        let tree = testutil::tree(&[("f", b"x")]);
        let reader: Arc<dyn Reader> = Arc::new(testutil::MemReader::new(&[b"x"]));
        let err = mount(
            tree,
            reader,
            Path::new("mnt"),
            MountOptions::default(),
            tokio::runtime::Handle::current(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("Windows only"), "{msg}");
        assert!(msg.contains("mnt"), "{msg}");
    }

    #[test]
    fn the_enable_hint_is_the_documented_command() {
        assert!(ENABLE_PROJFS.contains("Client-ProjFS"));
        assert_eq!(MountOptions::default().max_transfer, 1 << 20);
    }
}

//! ocifs-fs-linux: the Linux FUSE backend of ocifs.
//!
//! [`mount()`] serves an immutable [`Tree`](ocifs_core::Tree) read-only at a
//! directory and answers file reads through a [`Reader`](ocifs_core::Reader),
//! so bytes are fetched on first read. It returns a [`Mount`]: a background
//! FUSE session with several request threads, which ends with
//! [`Mount::unmount`], when the `Mount` is dropped, or when the kernel
//! unmounts it (`umount`, `fusermount3 -u`, or [`unmount()`] from another
//! process), which [`Mount::join`] and [`Mount::unmounted`] wait for.
//!
//! [`MountOptions`] say who may use the mount, whose files they are and how
//! long the kernel may cache attributes. A read that misses the cache never
//! blocks a FUSE thread: it is answered from a tokio task on the runtime given
//! to [`mount()`]. With [`MountOptions::passthrough`], a [`BackingFiles`]
//! hands blobs that are complete on local disk straight to the kernel (FUSE
//! passthrough, Linux 6.9+), so warm reads never reach this process.
//!
//! The root holds a hidden file, [`STATS_FILE`] (`.ocifs-stats`), not listed
//! but openable: JSON of the reader's [`Stats`](ocifs_core::Stats) and the
//! mount's [`MountStats`], taken when it is opened.
//!
//! On platforms other than Linux the crate is empty.
//!
//! ```no_run
//! # #[cfg(target_os = "linux")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use ocifs_core::{ContentReader, DirectReader, LayoutSource, Reference, Tree, Verify, ViewOptions};
//! use ocifs_fs_linux::{MountOptions, mount};
//!
//! let runtime = tokio::runtime::Runtime::new()?;
//! let source = Arc::new(LayoutSource::open("examples/hello")?);
//! let reference: Reference = "oci:examples/hello:v1".parse()?;
//! let resolution = runtime.block_on(ocifs_core::resolve(source.as_ref(), &reference, None))?;
//! let tree = Arc::new(Tree::from_artifact(&resolution.manifest, &ViewOptions::default())?);
//! let reader = Arc::new(ContentReader::new(Arc::new(DirectReader::new(source, Verify::Strict))));
//!
//! let options = MountOptions { fs_name: "oci:examples/hello:v1".into(), ..MountOptions::default() };
//! let mount = mount(tree, reader, "/mnt/hello".as_ref(), options, runtime.handle().clone())?;
//! for entry in std::fs::read_dir("/mnt/hello")? {
//!     println!("{}", entry?.file_name().to_string_lossy());
//! }
//! mount.unmount()?;
//! # Ok(())
//! # }
//! # #[cfg(not(target_os = "linux"))]
//! # fn main() {}
//! ```

// Each module uses only those below it: mount (the session), fs (the
// kernel's requests), then session (what a mount and its session share),
// passthrough (the I/O mode of each open), options, server (the process
// that serves a mount, to wait for) and sys.
#[cfg(target_os = "linux")]
mod fs;
#[cfg(target_os = "linux")]
mod mount;
#[cfg(target_os = "linux")]
mod options;
#[cfg(target_os = "linux")]
mod passthrough;
#[cfg(target_os = "linux")]
mod server;
#[cfg(target_os = "linux")]
mod session;
#[cfg(target_os = "linux")]
mod sys;

#[cfg(target_os = "linux")]
pub use fs::STATS_FILE;
#[cfg(target_os = "linux")]
pub use mount::{Mount, SERVER_WAIT, mount, unmount};
#[cfg(target_os = "linux")]
pub use options::{BackingFiles, MountOptions, WholeFirst};
#[cfg(target_os = "linux")]
pub use session::MountStats;
#[cfg(target_os = "linux")]
pub use sys::one_heap;

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn public_types_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<crate::Mount>();
        send_sync::<crate::MountOptions>();
        send_sync::<crate::MountStats>();
    }
}

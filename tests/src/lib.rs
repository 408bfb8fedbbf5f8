//! The end-to-end test harness of ocifs: a real registry, real third-party
//! clients to fill it, a counting proxy to watch the wire, and the `ocifs`
//! binary to test.
//!
//! - [`Registry`] runs CNCF distribution (`/usr/bin/docker-registry`) on a
//!   free loopback port with its own storage, optionally behind htpasswd or
//!   token authentication ([`RegistryAuth`]); for token auth it also runs a
//!   small token server that signs JWTs the registry accepts.
//! - [`CountingProxy`] sits between a client and a [`Registry`] and records
//!   every request: what was asked, the status, and how many body bytes went
//!   back. This is where tests count network traffic, and where they inject
//!   faults: a [`ProxyHook`] gives each request a [`Disposition`] (an error
//!   status, a reset or truncation mid-body, a stall, flipped bits, an
//!   ignored `Range`), [`RandomFaults`] a reproducible random mix of them.
//! - [`BlobHost`] serves blobs like the storage a registry redirects blob
//!   downloads to, and records the headers each request carried.
//! - [`oras_push`] pushes files with oras-py (from the [`PythonEnv`]
//!   virtualenv), [`skopeo_copy`] copies images and layouts with skopeo, and
//!   [`OciLayoutBuilder`] writes OCI image layouts (multi-platform indexes,
//!   artifacts) that skopeo can push. ocifs itself never produces test content.
//! - [`ocifs`] and [`run_ocifs`] run the binary under test in a hermetic
//!   environment and give back an [`Output`] with assertion helpers;
//!   [`Mounted`] is a live `ocifs mount --daemon`.
//! - [`Wine`] runs the Windows build of ocifs (`ocifs.exe`) under Debian's
//!   `wine64`, in one Wine prefix made once and shared by every test.
//! - [`rootfs_image`] is the container-image fixture: a Debian minbase
//!   root filesystem (debootstrap) under two crafted layers, assembled by
//!   umoci and pushed by skopeo (gzip or zstd); [`walk()`] rows a tree (a
//!   mount, or `umoci unpack`'s) and [`walk::diff`] compares two walks.
//!   [`TarWriter`] writes tar streams byte by byte, hostile ones too.
//!
//! Everything binds `127.0.0.1:0` and lives in its own temp dir, so tests run
//! in parallel without fixed ports or paths.
//!
//! ```
//! use ocifs_tests::{OciLayoutBuilder, Platform};
//!
//! let dir = tempfile::tempdir()?;
//! let mut layout = OciLayoutBuilder::new(dir.path());
//! let file = layout.file("hello.txt", b"hello\n");
//! let amd64 = layout.image_manifest(&Platform::new("linux", "amd64"), &[file]);
//! let index = layout.index(&[amd64]);
//! layout.add(&index, Some("v1"));
//! assert!(dir.path().join("index.json").is_file());
//! assert!(dir.path().join("blobs/sha256").join(index.hex()).is_file());
//! # Ok::<(), std::io::Error>(())
//! ```

mod blobs;
pub mod chunked;
mod containerd;
mod layout;
mod mounts;
mod nginx;
mod proxy;
mod registry;
pub mod rootfs;
mod server;
pub mod tarfile;
mod token;
mod tools;
mod util;
pub mod walk;
mod wine;

pub use blobs::{BlobHost, HostRequest};
pub use containerd::{Containerd, STARGZ_SNAPSHOTTER, stargz_grpc_bin};
pub use layout::{Descriptor, OciLayoutBuilder, Platform, media_type};
pub use mounts::{Mounted, daemon_pid, is_mounted, mount_options, peak_rss_mib};
pub use nginx::{SliceCache, slice_cache_config};
pub use proxy::{
    CountingProxy, Disposition, Fault, HookFn, ProxyHook, RandomFaults, RequestInfo, RequestRecord,
    ThrottleBlobs,
};
pub use registry::{Registry, RegistryAuth};
pub use rootfs::{
    BLOCK_SLACK, CHUNK, LayerCompression, RootfsImage, SEEK_SPACING, SeekSpan, minbase_image,
    rootfs_image,
};
pub use tarfile::{TarHeader, TarKind, TarWriter};
pub use token::TokenRequest;
pub use tools::{
    Output, PushFile, PushOptions, PythonEnv, ocifs, ocifs_bin, oras_pull, oras_push, qemu_boot,
    run, run_ocifs, run_with_stdin, skopeo_copy, target_dir, workspace_dir,
};
pub use util::{closed_port, random_bytes, sha256_digest, sha256_hex, temp_dir};
pub use walk::walk;
pub use wine::{Wine, ocifs_exe, windows_path};

//! ocifs-core: everything of ocifs that is not a kernel interface.
//!
//! A [`Reference`] names an artifact in a registry or an OCI layout
//! directory. A [`Source`] ([`RegistrySource`], [`LayoutSource`]) serves its
//! manifests and blob ranges. [`resolve()`] walks indexes to one manifest for a
//! [`Platform`], checking every digest on the way, and a [`Tree`] is the
//! directory view of that manifest, which the CLI lists and the filesystem
//! backends mount.
//!
//! ```
//! use ocifs_core::{Platform, Reference};
//!
//! let r: Reference = "alpine".parse().unwrap();
//! assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
//! let p: Platform = "linux/arm64".parse().unwrap();
//! assert!(p.matches(&"linux/aarch64/v8".parse().unwrap()));
//! ```

pub mod archive;
pub mod auth;
pub mod cache;
pub mod digest;
pub mod error;
mod fsutil;
pub mod image;
pub mod manifest;
pub mod platform;
pub mod reader;
pub mod reference;
pub mod resolve;
pub mod retry;
pub mod source;
pub mod view;

#[cfg(test)]
mod testutil;

pub use cache::{CacheOptions, CachedSource, ChunkCache, DiskStore};
pub use digest::Digest;
pub use error::{Error, Result};
pub use manifest::{Descriptor, Index, Manifest};
pub use platform::Platform;
pub use reader::{DirectReader, Reader, Stats, Verify};
pub use reference::{LayoutRef, Reference, RegistryRef};
pub use resolve::{Resolution, resolve};
pub use retry::{Resumption, RetryPolicy};
pub use source::{Credentials, LayoutSource, RegistryOptions, RegistrySource, Selector, Source};
pub use view::{Content, Expand, Ino, Tree, ViewOptions};

//! ocifs-core: everything of ocifs that is not a kernel interface.
//!
//! A [`Reference`] names an artifact in a registry or an OCI layout
//! directory. A [`Source`] ([`RegistrySource`], [`LayoutSource`]) serves its
//! manifests and blob ranges. [`resolve()`] walks indexes to one manifest for a
//! [`Platform`], checking every digest on the way. A [`View`] builds the
//! [`Tree`] of that manifest, which the CLI lists and the filesystem
//! backends mount; a [`ContentReader`] reads its files.
//!
//! The crate is layered; each layer uses only those below it (a test,
//! `tests/layers.rs`, holds the code to it):
//!
//! ```text
//!  reading        read       ContentReader: the one Reader, Content → bytes
//!  tree builders  view       View (the policy), artifacts, Tree::build
//!                 published  indexes a publisher bound to a manifest
//!                 image      image indexes, LayerIndex, overlay merge
//!                 package    zip and tar packages as directories
//!  decoding       codec      blob → blocking Read, gzip/zstd seek points,
//!                            the one tar walker, zip entries
//!  blobs          cache      ChunkCache: single-flight, fetch, stream, evict
//!                 blob       BlobReader (descriptor, offset, len → verified
//!                            bytes), DirectReader, Verify, Stats
//!  sources        resolve    reference → (index →)* manifest
//!                 source     registry (distribution API), layout (beneath)
//!                 credentials, retry
//!  vocabulary     tree       Tree, Node: paths, no I/O
//!                 content    Content: where a file's bytes are
//!                 manifest, reference, digest, platform, error
//! ```
//!
//! A FUSE read of a file inside a gzip image layer runs one way down:
//! backend → [`ContentReader`] → codec (inflate from a seek point) →
//! [`BlobReader`] ([`ChunkCache`]) → [`Source`].
//!
//! ```
//! use ocifs_core::{Platform, Reference};
//!
//! let r: Reference = "alpine".parse().unwrap();
//! assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
//! let p: Platform = "linux/arm64".parse().unwrap();
//! assert!(p.matches(&"linux/aarch64/v8".parse().unwrap()));
//! ```

mod blob;
mod cache;
mod codec;
mod content;
mod credentials;
mod digest;
mod error;
mod fsutil;
mod hosts;
mod image;
mod manifest;
mod package;
mod platform;
mod published;
mod read;
mod reference;
mod resolve;
mod retry;
mod source;
mod tree;
mod view;

#[cfg(test)]
mod testutil;

pub use blob::{BlobReader, Counters, DirectReader, Stats, Verify};
pub use cache::{
    CacheOptions, CachedSource, ChunkCache, DEFAULT_CHUNK_SIZE, DiskStore, MemoryTier, Partial,
    Scanned, StoredBlob, default_dir,
};
pub use content::{
    Compression, Content, Extent, FramePoint, GzipPoint, SeekPoints, SparseMap, TarFile, TarStream,
    ZipEntry, ZipMethod, ZipTable,
};
pub use credentials::{Credentials, lookup as lookup_credentials};
pub use digest::{Digest, Hasher};
pub use error::{Cause, Error, Kind, Result, exit_code, printable};
pub use hosts::{Capabilities, Endpoint, RegistriesConf, hosts_toml_for, parse_hosts_toml};
pub use image::{ImageOptions, LayerIndex, is_image};
pub use manifest::{
    Descriptor, Index, MAX_MANIFEST_SIZE, Manifest, Parsed, annotation, media_type,
    parse as parse_manifest,
};
pub use package::Format;
pub use platform::Platform;
pub use published::{
    ARTIFACT_TYPE as INDEX_ARTIFACT_TYPE, Artifact as IndexArtifact, Found as FoundIndex,
    How as IndexHow, INDEX_ANNOTATION, LayerSource, Part as IndexPart, artifact as index_artifact,
    at_hand as index_at_hand, bind as bind_index, find as find_index, layer_source,
    make as make_index,
};
pub use read::{ContentReader, DECODED_BUDGET, Reader};
pub use reference::{DOCKER_HUB, LayoutRef, Reference, RegistryRef};
pub use resolve::{IndexStep, Resolution, resolve};
pub use retry::{Resumption, RetryPolicy};
pub use source::{
    DOWN_FOR, HostBytes, LayoutSource, MIRROR_TIMEOUT, MirroredSource, RegistryOptions,
    RegistrySource, Selector, Source,
};
pub use tree::{Children, Ino, Node, NodeKind, Row, SpecialKind, Tree, Xattrs, format_time};
pub use view::{Expand, View, ViewOptions};

/// What only the fuzz targets, benchmarks and memory tests reach into:
/// the decoders, the layer index format and the overlay merge, the package
/// indexer. Not a stable interface.
#[doc(hidden)]
pub mod internals {
    pub use crate::codec::{MAX_TRAILING, decoded_limit, gzip, tar, zstd};
    pub use crate::digest::{ChunkHash, ChunkTable, check_chunk};
    pub use crate::image::{
        build as build_image, chunked, format, layer_compression, layer_index, overlay,
    };
    pub use crate::package::{
        Item, ItemKind, Items, Listing, MAX_ENTRIES, ZipItems, list as list_package,
    };
}

//! Container images: the root filesystem a runtime would see, merged from
//! tar, tar+gzip and tar+zstd layers and read lazily.
//!
//! - [`toc`]: a layer's table of contents ([`TocEntry`]), walked from its
//!   uncompressed tar stream.
//! - [`gzip`]: seek points in a gzip stream (the zran technique): where
//!   inflating can resume, with the 32 KiB window it needs.
//! - [`zstd`]: frame boundaries of a zstd stream as seek points.
//! - [`format`]: the on-disk [`LayerIndex`] (table of contents, seek points,
//!   compressed-chunk digests), compact, versioned and checked.
//! - [`overlay`]: layers merged bottom-up (whiteouts, opaque directories,
//!   hardlinks) into a [`crate::Tree`].

pub mod format;
pub mod gzip;
pub mod toc;
pub mod zstd;

pub use toc::{EntryKind, TocEntry};

use crate::archive::Compression;
use crate::digest::Digest;

/// A point in a gzip stream where inflating can resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GzipPoint {
    /// Offset in the compressed stream of the first byte inflating reads
    /// from here on (if `bits` is not 0, the byte before it holds `bits`
    /// bits of input that belong to this point too).
    pub compressed: u64,
    /// Bits (0 to 7) of the byte at `compressed - 1` that are still input.
    pub bits: u8,
    /// Offset in the uncompressed stream this point decodes from.
    pub uncompressed: u64,
    /// The last (up to) 32 KiB of uncompressed output before this point:
    /// the dictionary inflate needs to resume. Empty at the start of a
    /// gzip member.
    pub window: Vec<u8>,
}

/// A zstd frame: a point where decoding can start afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramePoint {
    /// Offset of the frame's first byte in the compressed stream.
    pub compressed: u64,
    /// Offset in the uncompressed stream of the frame's first byte of output.
    pub uncompressed: u64,
}

/// Where decoding can start inside a layer's stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SeekPoints {
    /// An uncompressed tar: every offset is one.
    #[default]
    None,
    /// A gzip stream's points, in increasing order; the first is at 0.
    Gzip(Vec<GzipPoint>),
    /// A zstd stream's frames, in increasing order; the first is at 0.
    Zstd(Vec<FramePoint>),
}

/// What ocifs keeps of a layer once it streamed it: enough to list it and
/// to read any file of it without reading the layer again from its start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerIndex {
    /// The layer blob's digest.
    pub digest: Digest,
    /// The layer blob's size (compressed).
    pub size: u64,
    /// How the layer is compressed.
    pub compression: Compression,
    /// The length of the uncompressed tar stream.
    pub uncompressed_size: u64,
    /// The entries, in archive order.
    pub entries: Vec<TocEntry>,
    /// Entries left out, each with the reason (`entry "NAME": REASON`).
    pub problems: Vec<String>,
    /// Where decoding can resume.
    pub points: SeekPoints,
    /// The size of the compressed chunks `chunk_digests` are of.
    pub chunk_size: u64,
    /// The sha256 of each `chunk_size` piece of the layer blob (the last
    /// one may be shorter), taken from verified bytes: chunks fetched later
    /// are checked against these. Empty if not recorded.
    pub chunk_digests: Vec<[u8; 32]>,
}

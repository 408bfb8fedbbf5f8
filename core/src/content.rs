//! Where a file's bytes are: the vocabulary the tree builders write and the
//! content reader reads, with no I/O of its own.
//!
//! A file of a view is a [`Content`]: a whole blob, an entry of a zip, or a
//! range of a tar stream ([`TarFile`]): a package's `.tar`/`.tgz`/`.tar.zst`
//! and an image layer alike, read from the [`SeekPoints`] recorded when the
//! stream was walked.

use std::sync::Arc;

use crate::manifest::Descriptor;

/// What a file's bytes are.
// `Blob` is the common case and matched on everywhere, so it stays unboxed;
// zip entries share their (larger) records through an `Arc`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A whole blob.
    Blob(Arc<Descriptor>),
    /// An entry of a zip layer: its local header and data are read when
    /// it is.
    Zip(ZipEntry),
    /// A range of a tar stream: a file of a tar package (plain, gzip or
    /// zstd) or of a container image's root filesystem.
    Tar(TarFile),
    /// A file of a chunked layer (eStargz, zstd:chunked): chunks that are
    /// each compressed on their own, with the sha256 of each decoded.
    Chunked(ChunkedFile),
}

impl Content {
    /// The file size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Content::Blob(d) => d.size,
            Content::Zip(e) => e.size(),
            Content::Tar(f) => f.size,
            Content::Chunked(f) => f.size,
        }
    }

    /// The blob the bytes are in (for a package entry, the package's).
    pub fn blob(&self) -> &Descriptor {
        match self {
            Content::Blob(d) => d,
            Content::Zip(e) => e.blob(),
            Content::Tar(f) => &f.stream.blob,
            Content::Chunked(f) => &f.layer.blob,
        }
    }
}

/// A chunked layer: a blob whose files' chunks are compressed one by one
/// (a gzip member or a zstd frame each), found through its table of
/// contents, which the layer's descriptor names by digest.
#[derive(Debug, PartialEq, Eq)]
pub struct ChunkedLayer {
    /// The layer blob.
    pub blob: Descriptor,
    /// How each chunk is compressed (gzip: eStargz; zstd: zstd:chunked).
    pub compression: Compression,
}

/// One chunk of a [`ChunkedFile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileChunk {
    /// Where it starts in the file.
    pub offset: u64,
    /// Its decoded length.
    pub size: u64,
    /// Where its compressed bytes start in the blob (a gzip member's or a
    /// zstd frame's start).
    pub start: u64,
    /// Where they end (exclusive).
    pub end: u64,
    /// Decoded bytes before the chunk's, from `start` (eStargz's
    /// `innerOffset`; 0 otherwise).
    pub inner: u64,
    /// The sha256 of its decoded bytes.
    pub digest: [u8; 32],
}

/// A file of a chunked layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedFile {
    /// The layer (one allocation shared by all its files).
    pub layer: Arc<ChunkedLayer>,
    /// The file's size: the chunks' sizes, back to back.
    pub size: u64,
    /// Its chunks, in order, each starting where the one before ended.
    pub chunks: Arc<[FileChunk]>,
}

/// How the bytes of a tar stream are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`.tar.gz`, `.tgz`, `tar+gzip` layers).
    Gzip,
    /// zstd (`.tar.zst`, `tar+zstd` layers).
    Zstd,
}

/// What the central directory of one zip layer says of its files: about
/// 40 bytes an entry, and their names kept in one string (a million
/// entries are one table, not a million allocations).
#[derive(Debug, PartialEq, Eq)]
pub struct ZipTable {
    /// The zip layer.
    pub blob: Descriptor,
    records: Vec<ZipRecord>,
    names: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ZipRecord {
    header_offset: u64,
    compressed_size: u64,
    size: u64,
    crc32: u32,
    name_at: u32,
    name_len: u16,
    method: ZipMethod,
}

impl ZipTable {
    /// An empty table of `blob`'s entries.
    pub(crate) fn new(blob: Descriptor) -> Self {
        ZipTable {
            blob,
            records: Vec::new(),
            names: String::new(),
        }
    }

    /// Adds an entry (its name at most 64 KiB, as a zip's are): its index.
    pub(crate) fn push(
        &mut self,
        name: &str,
        header_offset: u64,
        compressed_size: u64,
        size: u64,
        method: ZipMethod,
        crc32: u32,
    ) -> u32 {
        let at = self.names.len();
        self.names.push_str(name);
        self.records.push(ZipRecord {
            header_offset,
            compressed_size,
            size,
            crc32,
            name_at: u32::try_from(at).unwrap_or(u32::MAX),
            name_len: u16::try_from(name.len()).unwrap_or(u16::MAX),
            method,
        });
        (self.records.len() - 1) as u32
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Frees what the table grew into and did not use.
    pub(crate) fn shrink(&mut self) {
        self.records.shrink_to_fit();
        self.names.shrink_to_fit();
    }

    fn record(&self, index: u32) -> ZipRecord {
        self.records
            .get(index as usize)
            .copied()
            .unwrap_or(ZipRecord {
                header_offset: 0,
                compressed_size: 0,
                size: 0,
                crc32: 0,
                name_at: 0,
                name_len: 0,
                method: ZipMethod::Stored,
            })
    }

    /// Where entry `index`'s local header is.
    pub(crate) fn header_offset(&self, index: u32) -> u64 {
        self.record(index).header_offset
    }

    /// The name of entry `index`, as the archive has it.
    pub fn name(&self, index: u32) -> &str {
        let r = self.record(index);
        let at = r.name_at as usize;
        self.names.get(at..at + r.name_len as usize).unwrap_or("")
    }
}

/// A file in a zip layer: where its local header is and what the central
/// directory says of it (an entry of its layer's [`ZipTable`]).
#[derive(Clone, Debug)]
pub struct ZipEntry {
    table: Arc<ZipTable>,
    index: u32,
}

impl PartialEq for ZipEntry {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index
            && (Arc::ptr_eq(&self.table, &other.table) || self.table == other.table)
    }
}

impl Eq for ZipEntry {}

impl ZipEntry {
    /// Entry `index` of `table`.
    pub(crate) fn new(table: Arc<ZipTable>, index: u32) -> Self {
        ZipEntry { table, index }
    }

    /// The zip layer.
    pub fn blob(&self) -> &Descriptor {
        &self.table.blob
    }

    /// The entry's name in the archive.
    pub fn name(&self) -> &str {
        self.table.name(self.index)
    }

    /// Offset of its local file header in the blob.
    pub fn header_offset(&self) -> u64 {
        self.table.record(self.index).header_offset
    }

    /// Its size compressed, as the central directory says.
    pub fn compressed_size(&self) -> u64 {
        self.table.record(self.index).compressed_size
    }

    /// Its size, as the central directory says.
    pub fn size(&self) -> u64 {
        self.table.record(self.index).size
    }

    /// How it is compressed.
    pub fn method(&self) -> ZipMethod {
        self.table.record(self.index).method
    }

    /// Its CRC-32, as the central directory says.
    pub fn crc32(&self) -> u32 {
        self.table.record(self.index).crc32
    }
}

/// The zip compression methods ocifs reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZipMethod {
    /// Stored as is.
    Stored,
    /// Deflate (RFC 1951).
    Deflated,
}

/// A tar stream in a blob, as reading its files needs it: a tar package or
/// an image layer.
#[derive(Debug, PartialEq, Eq)]
pub struct TarStream {
    /// The blob.
    pub blob: Descriptor,
    /// How it is compressed.
    pub compression: Compression,
    /// The length of its uncompressed tar stream.
    pub uncompressed_size: u64,
    /// Where decoding can resume.
    pub points: SeekPoints,
    /// Whether its decoded stream is kept in the cache as a blob of its
    /// own (a zstd image layer read from a registry: a zstd stream can only
    /// be decoded from the start of a frame, and most zstd layers are a
    /// single frame). The copy is named by its own digest, found by the
    /// record the cache keeps of what decoding the (verified) layer gave.
    pub keep_decoded: bool,
}

/// A file in a tar stream: bytes `offset..offset + size` of the stream's
/// uncompressed bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarFile {
    /// The stream (one allocation shared by all its files).
    pub stream: Arc<TarStream>,
    /// Where the file's data starts in the uncompressed stream.
    pub offset: u64,
    /// Its size (a sparse file's whole size, holes included).
    pub size: u64,
    /// A sparse file's map: which ranges of it are stored (back to back
    /// from `offset`); the rest reads as zeros. `None` for a file stored
    /// whole.
    pub sparse: Option<Arc<SparseMap>>,
}

impl TarFile {
    /// How many bytes of the stream the file's data takes: its size, or
    /// for a sparse file the bytes of its stored ranges.
    pub fn stored_len(&self) -> u64 {
        self.sparse.as_ref().map_or(self.size, |m| m.stored_len())
    }
}

/// The most stored ranges a sparse file may have.
pub const MAX_SPARSE_EXTENTS: usize = 1 << 20;

/// One stored range of a sparse file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Where the range starts in the file.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Where its bytes start in the file's stored data.
    pub stored: u64,
}

/// Which ranges of a sparse file are stored (GNU sparse maps: the old `S`
/// type's and PAX 0.0, 0.1 and 1.0): in increasing order, not
/// overlapping, none empty, all inside the file. Everything else is a hole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseMap {
    extents: Vec<Extent>,
    stored: u64,
    size: u64,
}

impl SparseMap {
    /// The map of a file of `size` bytes from its `(offset, length)` pairs
    /// as an archive lists them; empty ranges are dropped (GNU tar ends a
    /// map with one at the file's end). The reason a map is not one.
    pub fn new(pairs: &[(u64, u64)], size: u64) -> Result<SparseMap, String> {
        if pairs.len() > MAX_SPARSE_EXTENTS {
            return Err(format!(
                "a sparse map of {} ranges (the limit is {MAX_SPARSE_EXTENTS})",
                pairs.len()
            ));
        }
        let mut extents = Vec::with_capacity(pairs.len());
        let (mut end, mut stored) = (0u64, 0u64);
        for &(offset, len) in pairs {
            let past = offset
                .checked_add(len)
                .filter(|p| *p <= size)
                .ok_or_else(|| {
                    format!("a sparse range {offset}+{len} past the file's size {size}")
                })?;
            if offset < end {
                return Err(format!(
                    "sparse ranges out of order or overlapping (at offset {offset})"
                ));
            }
            if len == 0 {
                continue;
            }
            extents.push(Extent {
                offset,
                len,
                stored,
            });
            stored += len;
            end = past;
        }
        Ok(SparseMap {
            extents,
            stored,
            size,
        })
    }

    /// The file's size, holes included.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The stored ranges, in order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// The bytes stored: the sum of the ranges' lengths.
    pub fn stored_len(&self) -> u64 {
        self.stored
    }

    /// The stored ranges that meet `offset..end` of the file, cut to it.
    pub fn within(&self, offset: u64, end: u64) -> impl Iterator<Item = Extent> + '_ {
        let first = self.extents.partition_point(|e| e.offset + e.len <= offset);
        self.extents[first..]
            .iter()
            .take_while(move |e| e.offset < end)
            .map(move |e| {
                let from = e.offset.max(offset);
                let to = (e.offset + e.len).min(end);
                Extent {
                    offset: from,
                    len: to - from,
                    stored: e.stored + (from - e.offset),
                }
            })
    }
}

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

/// Where decoding can start inside a tar stream.
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

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
pub mod overlay;
mod read;
pub mod toc;
pub mod zstd;

pub use toc::{EntryKind, TocEntry};

pub(crate) use read::{Cursors, read};

use std::sync::Arc;

use crate::archive::Compression;
use crate::digest::Digest;
use crate::manifest::Descriptor;

/// A layer of a mounted image: what reading its files needs.
#[derive(Debug, PartialEq, Eq)]
pub struct ImageLayer {
    /// The layer blob.
    pub blob: Descriptor,
    /// How it is compressed.
    pub compression: Compression,
    /// The length of its uncompressed tar stream.
    pub uncompressed_size: u64,
    /// Where decoding can resume.
    pub points: SeekPoints,
    /// For a zstd layer read from a registry: its decoded stream, kept in
    /// the cache as a blob of its own (named by the layer's diff ID), since
    /// a zstd stream can only be decoded from the start of a frame and
    /// most zstd layers are a single frame.
    pub decoded: Option<Descriptor>,
}

/// A file of an image's root filesystem: bytes `offset..offset + size` of
/// a layer's uncompressed tar stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerFile {
    /// The layer.
    pub layer: Arc<ImageLayer>,
    /// Where the file's data starts in the uncompressed stream.
    pub offset: u64,
    /// Its size.
    pub size: u64,
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

/// The media types of image configurations.
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// How a layer of this media type is compressed, if it is a tar layer.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// Whether `manifest` is a container image: an image configuration and
/// tar layers only, none titled (a layer with an
/// `org.opencontainers.image.title` is a file of an artifact, whatever its
/// media type). Its view is then its root filesystem ([`build`]).
pub fn is_image(manifest: &crate::Manifest) -> bool {
    CONFIG_TYPES.contains(&manifest.config.media_type.as_str())
        && manifest
            .layers
            .iter()
            .all(|l| layer_compression(&l.media_type).is_some() && l.title().is_none())
}

/// The layers of a layer index file read, at most.
const MAX_INDEX_FILE: u64 = 512 << 20;
/// Layers indexed at once.
const PARALLEL_LAYERS: usize = 3;

/// Limits on the images ocifs shows.
#[derive(Clone, Copy, Debug)]
pub struct ImageOptions {
    /// The most entries one layer may have.
    pub max_entries: usize,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            max_entries: toc::MAX_LAYER_ENTRIES,
        }
    }
}

/// The root filesystem of image `manifest`: each layer's index (from the
/// cache, else built by streaming the layer once), merged.
pub async fn build(
    manifest: &crate::Manifest,
    cache: &crate::ChunkCache,
    options: &ImageOptions,
) -> crate::Result<crate::Tree> {
    use futures_util::{StreamExt as _, TryStreamExt as _};
    let diff_ids = diff_ids(manifest, cache).await;
    let layers: Vec<overlay::MergeLayer> = futures_util::stream::iter(manifest.layers.iter())
        .enumerate()
        .map(|(i, l)| layer(cache, l, options, diff_ids.get(i).cloned()))
        .buffered(PARALLEL_LAYERS)
        .try_collect()
        .await?;
    Ok(overlay::merge(layers))
}

/// One layer, indexed, ready to merge.
async fn layer(
    cache: &crate::ChunkCache,
    blob: &Descriptor,
    options: &ImageOptions,
    diff_id: Option<crate::Digest>,
) -> crate::Result<overlay::MergeLayer> {
    // A zstd layer's decoded copy, where there is a cache to keep it.
    let diff_id = diff_id.filter(|_| {
        layer_compression(&blob.media_type) == Some(Compression::Zstd) && cache.store().is_some()
    });
    let index = layer_index(cache, blob, options, diff_id.as_ref()).await?;
    let LayerIndex {
        compression,
        uncompressed_size,
        entries,
        problems,
        points,
        chunk_size,
        chunk_digests,
        ..
    } = index;
    if !chunk_digests.is_empty() {
        cache.set_chunk_digests(blob, chunk_size, chunk_digests);
    }
    Ok(overlay::MergeLayer {
        layer: Arc::new(ImageLayer {
            blob: blob.clone(),
            compression,
            uncompressed_size,
            points,
            decoded: diff_id.map(|digest| Descriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                digest,
                size: uncompressed_size,
                annotations: Default::default(),
                platform: None,
                artifact_type: None,
                urls: Vec::new(),
            }),
        }),
        entries,
        problems,
    })
}

fn layer_error(blob: &Descriptor, reason: impl Into<String>) -> crate::Error {
    crate::Error::Layer {
        layer: blob.digest.to_string(),
        entry: None,
        reason: reason.into(),
    }
}

/// The index of layer `blob`: the cache's, else built (and stored).
pub async fn layer_index(
    cache: &crate::ChunkCache,
    blob: &Descriptor,
    options: &ImageOptions,
    keep_decoded: Option<&crate::Digest>,
) -> crate::Result<LayerIndex> {
    let max_entries = options.max_entries;
    let compression = layer_compression(&blob.media_type).ok_or_else(|| {
        layer_error(
            blob,
            format!("media type {} is not a tar layer", blob.media_type),
        )
    })?;
    let store = cache.store().cloned();
    let strict = cache.verify() == crate::Verify::Strict;
    if let Some(store) = &store
        && let Some(bytes) = store.get_index(&blob.digest, MAX_INDEX_FILE)
    {
        match format::decode(&bytes) {
            // Strict mode trusts only an index made from verified bytes
            // (one that has chunk digests).
            Ok(ix) if strict && ix.chunk_digests.is_empty() => {}
            Ok(ix)
                if ix.digest == blob.digest
                    && ix.size == blob.size
                    && ix.compression == compression =>
            {
                return Ok(ix);
            }
            Ok(_) => {
                tracing::warn!(layer = %blob.digest, "the stored index is of another layer; rebuilding it")
            }
            Err(e) => {
                tracing::warn!(layer = %blob.digest, "the stored index is unreadable ({e}); rebuilding it")
            }
        }
    }
    let index = if compression == Compression::None && !strict {
        // Lazy, uncompressed: the headers alone, read in place.
        let (c, b) = (cache.clone(), blob.clone());
        let handle = tokio::runtime::Handle::current();
        let toc = tokio::task::spawn_blocking(move || {
            let mut input = RangeInput {
                cache: c,
                content: crate::Content::Blob(std::sync::Arc::new(b.clone())),
                size: b.size,
                pos: 0,
                buf: bytes::Bytes::new(),
                handle,
            };
            toc::walk(&mut input, max_entries).map_err(|e| match e {
                toc::WalkError::Io(e) => {
                    input_error(e).unwrap_or_else(|e| layer_error(&b, e.to_string()))
                }
                e => layer_error(&b, e.to_string()),
            })
        })
        .await
        .map_err(|e| {
            crate::Error::io("indexing a layer", std::io::Error::other(e.to_string()))
        })??;
        LayerIndex {
            digest: blob.digest.clone(),
            size: blob.size,
            compression,
            uncompressed_size: blob.size,
            entries: toc.entries,
            problems: toc.problems,
            points: SeekPoints::None,
            chunk_size: cache.chunk_size(),
            chunk_digests: Vec::new(),
        }
    } else {
        let b = blob.clone();
        // The decoded stream of a zstd layer goes to a temporary file as
        // it passes, adopted once it hashed to the layer's diff ID.
        let copy = match (keep_decoded, cache.store()) {
            (Some(_), Some(store)) => Some(store.temp_file()?),
            _ => None,
        };
        let chunk_size = cache.chunk_size();
        let (tmp, file) = copy.map_or((None, None), |(p, f)| (Some(p), Some((f, chunk_size))));
        let scanned = cache
            .scan(blob, move |r| {
                index_stream(r, &b, compression, max_entries, file)
            })
            .await;
        let scanned = match scanned {
            Ok(s) => s,
            Err(e) => {
                if let Some(tmp) = &tmp {
                    let _ = std::fs::remove_file(tmp);
                }
                return Err(e);
            }
        };
        let (toc, points, uncompressed_size, decoded) = scanned.value;
        if let (Some(tmp), Some(want)) = (&tmp, keep_decoded) {
            match decoded {
                Some(d) if d.digest == *want => {
                    if let Err(e) = cache.adopt(tmp, want, d.len, Some((d.chunk_size, d.table))) {
                        tracing::warn!(layer = %blob.digest, error = %e, "keeping the decoded layer failed");
                    }
                }
                other => {
                    let _ = std::fs::remove_file(tmp);
                    tracing::warn!(layer = %blob.digest, decoded = ?other.map(|o| o.digest.to_string()), diff_id = %want,
                        "the decoded layer is not the diff ID the image config names; not kept");
                }
            }
        }
        LayerIndex {
            digest: blob.digest.clone(),
            size: blob.size,
            compression,
            uncompressed_size,
            entries: toc.entries,
            problems: toc.problems,
            points,
            chunk_size: scanned.chunk_size,
            chunk_digests: scanned.chunk_digests,
        }
    };
    if let Some(store) = store {
        let bytes = format::encode(&index);
        let digest = blob.digest.clone();
        let stored = tokio::task::spawn_blocking(move || store.put_index(&digest, &bytes)).await;
        if let Ok(Err(e)) = stored {
            tracing::warn!(layer = %blob.digest, error = %e, "storing the layer index failed");
        }
    }
    Ok(index)
}

/// What walking a layer's stream gives: its table of contents, its seek
/// points, its uncompressed length, and the digest and length of the
/// decoded copy made on the way, if one was.
type Indexed = (toc::Toc, SeekPoints, u64, Option<Decoded>);

/// Walks a layer's stream (on a blocking thread): its table of contents,
/// its seek points and its uncompressed length.
fn index_stream(
    r: &mut dyn std::io::Read,
    blob: &Descriptor,
    compression: Compression,
    max_entries: usize,
    copy: Option<(std::fs::File, u64)>,
) -> crate::Result<Indexed> {
    let walk_error = |e: toc::WalkError| layer_error(blob, e.to_string());
    let io_error = |e: std::io::Error| layer_error(blob, format!("unreadable stream: {e}"));
    let limit = blob
        .size
        .saturating_mul(crate::archive::MAX_RATIO)
        .max(1 << 20);
    match compression {
        Compression::None => {
            let toc = toc::walk(&mut toc::Stream(&mut *r), max_entries).map_err(walk_error)?;
            // The rest (end-of-archive padding) counts in the length.
            let rest = std::io::copy(r, &mut std::io::sink()).map_err(io_error)?;
            let len = toc.len + rest;
            Ok((toc, SeekPoints::None, len, None))
        }
        Compression::Gzip => {
            let mut g =
                gzip::GzipIndexer::new(r, gzip::DEFAULT_SPACING, limit).map_err(io_error)?;
            let toc = toc::walk(&mut toc::Stream(&mut g), max_entries).map_err(walk_error)?;
            let (points, len) = g.finish().map_err(io_error)?;
            // Windows beyond a twentieth of the layer are thinned out.
            let points = gzip::thin(points, (blob.size / 20).max(256 << 10));
            Ok((toc, SeekPoints::Gzip(points), len, None))
        }
        Compression::Zstd => {
            let mut z = zstd::ZstdIndexer::new(r, zstd::DEFAULT_SPACING, limit);
            let (toc, decoded) = match copy {
                Some((file, chunk_size)) => {
                    let mut tee = Tee::new(&mut z, file, chunk_size);
                    let toc =
                        toc::walk(&mut toc::Stream(&mut tee), max_entries).map_err(walk_error)?;
                    std::io::copy(&mut tee, &mut std::io::sink()).map_err(io_error)?;
                    (toc, Some(tee.finish().map_err(io_error)?))
                }
                None => (
                    toc::walk(&mut toc::Stream(&mut z), max_entries).map_err(walk_error)?,
                    None,
                ),
            };
            let (points, len) = z.finish().map_err(io_error)?;
            Ok((toc, SeekPoints::Zstd(points), len, decoded))
        }
    }
}

/// An uncompressed layer read in place through the cache, for walking its
/// headers: data is skipped, not read (on a blocking thread).
struct RangeInput {
    cache: crate::ChunkCache,
    content: crate::Content,
    size: u64,
    pos: u64,
    buf: bytes::Bytes,
    handle: tokio::runtime::Handle,
}

/// Bytes read through the cache at a time while walking headers.
const HEADER_READ: u64 = 64 << 10;

impl toc::TarInput for RangeInput {
    fn read_full(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        use crate::Reader as _;
        let mut got = 0;
        while got < out.len() {
            if self.buf.is_empty() {
                if self.pos >= self.size {
                    break;
                }
                let read = self.cache.read(&self.content, self.pos, HEADER_READ);
                self.buf = self.handle.block_on(read).map_err(std::io::Error::other)?;
                if self.buf.is_empty() {
                    break;
                }
            }
            let n = self.buf.len().min(out.len() - got);
            out[got..got + n].copy_from_slice(&self.buf[..n]);
            self.buf = self.buf.slice(n..);
            self.pos += n as u64;
            got += n;
        }
        Ok(got)
    }

    fn skip(&mut self, n: u64) -> std::io::Result<u64> {
        let n = n.min(self.size - self.pos);
        if n as usize <= self.buf.len() {
            self.buf = self.buf.slice(n as usize..);
        } else {
            self.buf = bytes::Bytes::new();
        }
        self.pos += n;
        Ok(n)
    }
}

/// The cache's own error, if an I/O error carries one.
fn input_error(e: std::io::Error) -> Result<crate::Error, std::io::Error> {
    match e.into_inner() {
        Some(inner) => match inner.downcast::<crate::Error>() {
            Ok(e) => Ok(*e),
            Err(other) => Err(std::io::Error::other(other)),
        },
        None => Err(std::io::Error::other("read failed")),
    }
}

/// A `Read` that copies what passes to a file, hashing it whole and in
/// chunks of the cache's size (the chunk table the copy is kept with).
pub(crate) struct Tee<R> {
    inner: R,
    out: std::io::BufWriter<std::fs::File>,
    hasher: crate::digest::BlobHasher,
}

/// What a [`Tee`] wrote: the copy's digest, length and chunk table.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub digest: crate::Digest,
    pub len: u64,
    pub chunk_size: u64,
    pub table: Vec<[u8; 32]>,
}

impl<R: std::io::Read> Tee<R> {
    pub(crate) fn new(inner: R, file: std::fs::File, chunk_size: u64) -> Self {
        Tee {
            inner,
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: crate::digest::BlobHasher::new(chunk_size),
        }
    }

    /// Flushes and syncs the file: what passed.
    pub(crate) fn finish(self) -> std::io::Result<Decoded> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let len = self.hasher.len();
        let chunk_size = self.hasher.chunk_size();
        let (digest, table) = self.hasher.finish();
        Ok(Decoded {
            digest,
            len,
            chunk_size,
            table,
        })
    }
}

impl<R: std::io::Read> std::io::Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        std::io::Write::write_all(&mut self.out, &buf[..n])?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The largest image config read.
const MAX_CONFIG: u64 = 4 << 20;

/// The diff IDs (digests of the uncompressed layers) the image config
/// lists, when there are zstd layers to keep decoded copies of; empty if
/// the config cannot be read or has none.
async fn diff_ids(manifest: &crate::Manifest, cache: &crate::ChunkCache) -> Vec<crate::Digest> {
    use crate::Reader as _;
    let zstd = manifest
        .layers
        .iter()
        .any(|l| layer_compression(&l.media_type) == Some(Compression::Zstd));
    if !zstd || cache.store().is_none() || manifest.config.size > MAX_CONFIG {
        return Vec::new();
    }
    let config = crate::Content::Blob(std::sync::Arc::new(manifest.config.clone()));
    let bytes = match cache.read(&config, 0, manifest.config.size).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "the image config is unreadable; zstd layers are decoded from their frames");
            return Vec::new();
        }
    };
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: Option<RootFs>,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    let ids: Vec<crate::Digest> = serde_json::from_slice::<Config>(&bytes)
        .ok()
        .and_then(|c| c.rootfs)
        .map(|r| r.diff_ids.iter().filter_map(|d| d.parse().ok()).collect())
        .unwrap_or_default();
    if ids.len() != manifest.layers.len() {
        tracing::warn!(
            "the image config lists {} diff IDs for {} layers; zstd layers are decoded from their frames",
            ids.len(),
            manifest.layers.len()
        );
        return Vec::new();
    }
    ids
}

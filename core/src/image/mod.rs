//! Container images (a tree builder): the root filesystem a runtime would
//! see, merged from tar, tar+gzip and tar+zstd layers and read lazily.
//!
//! Each layer is walked once by the one tar walker ([`crate::codec::tar`])
//! into its table of contents, recording where decoding can resume; what
//! that gives is kept in the cache as the layer's index:
//!
//! - [`format`]: the on-disk [`LayerIndex`] (table of contents, seek points,
//!   compressed-chunk digests), compact, versioned and checked.
//! - [`overlay`]: layers merged bottom-up (whiteouts, opaque directories,
//!   hardlinks) into a [`Tree`].

pub mod format;
pub mod overlay;

use crate::codec::tar::TocEntry;

pub mod chunked;

use std::collections::HashMap;
use std::sync::Arc;

use crate::blob::{BlobReader, Verify};
use crate::cache::ChunkCache;
use crate::codec::input::{BlobRead, reader_error};
use crate::codec::tar::{self as toc, Names};
use crate::codec::{layer_error, walk_stream};
use crate::content::{ChunkedLayer, Compression, SeekPoints, TarStream};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Manifest};
use crate::tree::Tree;

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
pub fn is_image(manifest: &Manifest) -> bool {
    CONFIG_TYPES.contains(&manifest.config.media_type.as_str())
        && manifest
            .layers
            .iter()
            .all(|l| layer_compression(&l.media_type).is_some() && l.title().is_none())
}

/// The annotation that marks an eStargz layer (its TOC's digest).
const ESTARGZ_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

/// The files eStargz adds at the root of a layer: its table of contents
/// and the prefetch landmarks.
const ESTARGZ_SIDE_FILES: [&str; 3] = [
    "stargz.index.json",
    ".prefetch.landmark",
    ".no.prefetch.landmark",
];

/// Whether `layer` is an eStargz layer (by the annotation its converter
/// writes).
fn is_estargz(layer: &Descriptor) -> bool {
    layer.annotations.contains_key(ESTARGZ_TOC_DIGEST)
}

/// The layers of a layer index file read, at most.
pub(crate) const MAX_INDEX_FILE: u64 = 512 << 20;
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
///
/// `given` are layer indexes found elsewhere (a publisher's, bound to the
/// manifest): a layer with one is not streamed.
pub async fn build(
    manifest: &Manifest,
    cache: &ChunkCache,
    options: &ImageOptions,
    mut given: HashMap<Digest, LayerIndex>,
) -> Result<Tree> {
    use futures_util::{StreamExt as _, TryStreamExt as _};
    let diff_ids = diff_ids(manifest, cache).await;
    let planned: Vec<(&Descriptor, Option<LayerIndex>)> = manifest
        .layers
        .iter()
        .map(|l| (l, given.remove(&l.digest)))
        .collect();
    let layers: Vec<overlay::MergeLayer> = futures_util::stream::iter(planned)
        .enumerate()
        .map(|(i, (l, ix))| layer(cache, l, options, diff_ids.get(i).cloned(), ix))
        .buffered(PARALLEL_LAYERS)
        .try_collect()
        .await?;
    Ok(overlay::merge(layers))
}

/// One layer, indexed, ready to merge.
async fn layer(
    cache: &ChunkCache,
    blob: &Descriptor,
    options: &ImageOptions,
    diff_id: Option<Digest>,
    given: Option<LayerIndex>,
) -> Result<overlay::MergeLayer> {
    // A zstd layer's decoded copy: made as the layer is indexed where
    // there is a cache to keep it in, else on its first read by a reader
    // that keeps copies somewhere (a local layout's, in the cache
    // directory).
    let keep_decoded = layer_compression(&blob.media_type) == Some(Compression::Zstd);
    let decoding = (keep_decoded && cache.store().is_some()).then_some(Decoding {
        diff_id: diff_id.as_ref(),
    });
    if given.is_none()
        && let Some((entries, problems, chunked)) = chunked_layer(cache, blob, options).await
    {
        return Ok(overlay::MergeLayer {
            layer: Arc::new(TarStream {
                blob: blob.clone(),
                compression: chunked.compression,
                uncompressed_size: 0,
                points: SeekPoints::None,
                keep_decoded: false,
            }),
            entries: without_side_files(blob, entries),
            problems,
            chunked: Some(chunked),
        });
    }
    // A given index's chunk digests are the cache's already, with the
    // trust their source has.
    let given_table = given.is_some();
    let index = match given {
        Some(ix) => ix,
        None => layer_index(cache, blob, options, decoding).await?,
    };
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
    if !chunk_digests.is_empty() && !given_table {
        cache.set_chunk_digests(blob, chunk_size, chunk_digests);
    }
    let entries = without_side_files(blob, entries);
    Ok(overlay::MergeLayer {
        layer: Arc::new(TarStream {
            blob: blob.clone(),
            compression,
            uncompressed_size,
            points,
            keep_decoded,
        }),
        entries,
        problems,
        chunked: None,
    })
}

/// A chunked layer's entries from its table of contents alone, if the
/// layer is one (eStargz, zstd:chunked) and its TOC checks out against the
/// digest its descriptor names; a TOC that does not is warned of, and the
/// layer is then read as any other.
async fn chunked_layer(
    cache: &ChunkCache,
    blob: &Descriptor,
    options: &ImageOptions,
) -> Option<(Vec<TocEntry>, Vec<String>, Arc<ChunkedLayer>)> {
    let refused = |e: String| {
        tracing::warn!(layer = %blob.digest, "its table of contents is refused ({e}); the layer is streamed instead");
    };
    let flavour = match chunked::flavour(blob)? {
        Ok(f) => f,
        Err(e) => {
            refused(e);
            return None;
        }
    };
    match read_toc(cache, blob, &flavour, options).await {
        Ok(found) => Some(found),
        Err(e) => {
            refused(e);
            None
        }
    }
}

async fn read_toc(
    cache: &ChunkCache,
    blob: &Descriptor,
    flavour: &chunked::Flavour,
    options: &ImageOptions,
) -> std::result::Result<(Vec<TocEntry>, Vec<String>, Arc<ChunkedLayer>), String> {
    // Exactly the footer's and the TOC's bytes, checked here.
    let fetch = |offset: u64, len: u64| async move {
        cache
            .read_piece(blob, offset, len)
            .await
            .map_err(|e| e.to_string())
    };
    // A TOC that checked out is kept by its digest, and read from there
    // (checked again) by the next mount.
    let keep = |digest: Digest, bytes: Vec<u8>| {
        let cache = cache.clone();
        async move {
            let kept = tokio::task::spawn_blocking(move || cache.keep(&digest, &bytes)).await;
            if let Ok(Err(e)) = kept {
                tracing::debug!(error = %e, "not keeping a table of contents");
            }
        }
    };
    let (json, data_end, compression) = match flavour {
        chunked::Flavour::Estargz { toc_digest } => {
            let footer = chunked::ESTARGZ_FOOTER;
            if blob.size < footer {
                return Err(format!(
                    "the blob is {} bytes, shorter than a footer",
                    blob.size
                ));
            }
            let tail = fetch(blob.size - footer, footer).await?;
            let toc_offset = chunked::estargz_footer(&tail)?;
            let toc_end = blob.size - footer;
            if toc_offset >= toc_end || toc_end - toc_offset > chunked::MAX_TOC {
                return Err(format!(
                    "the footer puts the TOC at {toc_offset}, {} bytes before the footer",
                    toc_end.saturating_sub(toc_offset)
                ));
            }
            let json = match cache.read_kept(toc_digest, None, chunked::MAX_TOC).await {
                Some(json) => json.to_vec(),
                None => {
                    let region = fetch(toc_offset, toc_end - toc_offset).await?;
                    let expected = toc_digest.clone();
                    let json = tokio::task::spawn_blocking(move || {
                        chunked::estargz_toc(&region, &expected)
                    })
                    .await
                    .map_err(|e| e.to_string())??;
                    keep(toc_digest.clone(), json.clone()).await;
                    json
                }
            };
            (json, toc_offset, Compression::Gzip)
        }
        chunked::Flavour::ZstdChunked {
            checksum,
            offset,
            len,
            decoded_len,
        } => {
            let compressed = match cache
                .read_kept(checksum, Some(*len), chunked::MAX_TOC)
                .await
            {
                Some(compressed) => compressed,
                None => {
                    let compressed = fetch(*offset, *len).await?;
                    // Checked against the annotation before it is kept.
                    if Digest::of(&compressed) == *checksum {
                        keep(checksum.clone(), compressed.to_vec()).await;
                    }
                    compressed
                }
            };
            let (checksum, decoded_len) = (checksum.clone(), *decoded_len);
            let json = tokio::task::spawn_blocking(move || {
                chunked::zstd_chunked_toc(&compressed, &checksum, decoded_len)
            })
            .await
            .map_err(|e| e.to_string())??;
            // The TOC's skippable frame header is the 8 bytes before it.
            (json, offset.saturating_sub(8), Compression::Zstd)
        }
    };
    let zstd = compression == Compression::Zstd;
    let max = options.max_entries;
    let (entries, problems) =
        tokio::task::spawn_blocking(move || chunked::entries(&json, zstd, data_end, max))
            .await
            .map_err(|e| e.to_string())??;
    Ok((
        entries,
        problems,
        Arc::new(ChunkedLayer {
            blob: blob.clone(),
            compression,
        }),
    ))
}

/// `entries` without eStargz's own files, which are not the image's
/// (stargz-snapshotter hides them too); `--layers` still shows the layer
/// whole.
fn without_side_files(blob: &Descriptor, entries: Vec<TocEntry>) -> Vec<TocEntry> {
    if !is_estargz(blob) {
        return entries;
    }
    entries
        .into_iter()
        .filter(|e| !ESTARGZ_SIDE_FILES.contains(&e.path.as_str()))
        .collect()
}

/// A zstd layer whose decoded stream is kept while it is indexed.
#[derive(Clone, Copy, Debug)]
pub struct Decoding<'a> {
    /// What the image config says the decoded stream is (warned of if it
    /// is not).
    pub diff_id: Option<&'a Digest>,
}

/// The index of layer `blob`: the cache's, else built (and stored).
pub async fn layer_index(
    cache: &ChunkCache,
    blob: &Descriptor,
    options: &ImageOptions,
    keep_decoded: Option<Decoding<'_>>,
) -> Result<LayerIndex> {
    let max_entries = options.max_entries;
    let compression = layer_compression(&blob.media_type).ok_or_else(|| {
        layer_error(
            blob,
            format!("media type {} is not a tar layer", blob.media_type),
        )
    })?;
    let store = cache.store().cloned();
    let strict = cache.verify() == Verify::Strict;
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
            Err(_) if format::older(&bytes) => {
                tracing::info!(layer = %blob.digest, "the stored index is of an older format; rebuilding it")
            }
            Err(e) => {
                tracing::warn!(layer = %blob.digest, "the stored index is unreadable ({e}); rebuilding it")
            }
        }
    }
    let index = if compression == Compression::None && !strict {
        // Lazy, uncompressed: the headers alone, read in place.
        let blobs: Arc<dyn BlobReader> = Arc::new(cache.clone());
        let b = Arc::new(blob.clone());
        let mut input = BlobRead::new(blobs, b.clone(), 0..b.size, Some(HEADER_READ));
        let toc = tokio::task::spawn_blocking(move || {
            toc::walk(&mut input, max_entries).map_err(|e| match &e {
                toc::WalkError::Io(io) => {
                    reader_error(io).unwrap_or_else(|| layer_error(&b, e.to_string()))
                }
                toc::WalkError::Bad(_) => layer_error(&b, e.to_string()),
            })
        })
        .await
        .map_err(|e| Error::io("indexing a layer", std::io::Error::other(e.to_string())))??;
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
        // it passes, adopted under the digest it hashed to once the layer's
        // own digest checked out.
        let copy = match (keep_decoded, cache.store()) {
            (Some(_), Some(store)) => Some(store.temp_file()?),
            _ => None,
        };
        let chunk_size = cache.chunk_size();
        let (tmp, file) = copy.map_or((None, None), |(p, f)| (Some(p), Some((f, chunk_size))));
        let scanned = cache
            .scan(blob, move |r| {
                let mut toc = toc::Toc::default();
                let walked = walk_stream(
                    r,
                    compression,
                    b.size,
                    max_entries,
                    Names::Layer,
                    file,
                    |entry| match entry {
                        Ok(e) => toc.entries.push(e),
                        Err(problem) => toc.problems.push(problem),
                    },
                )
                .map_err(|e| layer_error(&b, e.to_string()))?;
                Ok((toc, walked))
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
        let (toc, walked) = scanned.value;
        let (points, uncompressed_size, decoded) = (walked.points, walked.len, walked.copy);
        if let (Some(tmp), Some(decoding)) = (&tmp, keep_decoded) {
            match decoded {
                Some(d) => {
                    if let Some(want) = decoding.diff_id
                        && d.digest != *want
                    {
                        // The layer's own digest checked out, so its decoded
                        // bytes are what they are: the config is wrong.
                        tracing::warn!(layer = %blob.digest, decoded = %d.digest, diff_id = %want,
                            "the decoded layer is not the diff ID the image config names; its decoded copy is kept under its own digest");
                    }
                    let (digest, len) = (d.digest.clone(), d.len);
                    let kept = cache
                        .adopt(tmp, &digest, len, Some((d.chunk_size, d.table)))
                        .and_then(|()| match cache.store() {
                            Some(store) => store.put_decoded(&blob.digest, &digest, len),
                            None => Ok(()),
                        });
                    if let Err(e) = kept {
                        let _ = std::fs::remove_file(tmp);
                        tracing::warn!(layer = %blob.digest, error = %e, "keeping the decoded layer failed");
                    }
                }
                None => {
                    let _ = std::fs::remove_file(tmp);
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

/// Bytes read through the cache at a time while walking the headers of
/// an uncompressed layer in place.
const HEADER_READ: u64 = 64 << 10;

/// The largest image config read.
const MAX_CONFIG: u64 = 4 << 20;

/// The diff IDs (digests of the uncompressed layers) the image config
/// lists, when there are zstd layers to keep decoded copies of; empty if
/// the config cannot be read or has none.
async fn diff_ids(manifest: &Manifest, cache: &ChunkCache) -> Vec<Digest> {
    let zstd = manifest
        .layers
        .iter()
        .any(|l| layer_compression(&l.media_type) == Some(Compression::Zstd));
    if !zstd || cache.store().is_none() || manifest.config.size > MAX_CONFIG {
        return Vec::new();
    }
    let bytes = match cache
        .read_blob(&manifest.config, 0, manifest.config.size)
        .await
    {
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
    let ids: Vec<Digest> = serde_json::from_slice::<Config>(&bytes)
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

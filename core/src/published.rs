//! Indexes a publisher pushed beside an artifact (`ocifs index`): for each
//! blob of a manifest, the sha256 of each chunk (a chunk table) and, for an
//! image's tar layers, the layer index ocifs builds itself (table of
//! contents, seek points, chunk digests: [`crate::image::format`]).
//!
//! They travel as one OCI artifact (artifact type [`ARTIFACT_TYPE`], one
//! blob per indexed blob, each naming the blob it indexes in
//! [`BLOB_ANNOTATION`]). *Bound* to a manifest, it is named by the
//! manifest's own annotation [`INDEX_ANNOTATION`]: the manifest's digest
//! covers the index's digest, which covers each table, so a table found
//! this way is in the chain of digests that starts at the reference, and
//! strict mode serves a chunk once it matches its digest there, without
//! fetching the whole blob first. Anything that does not check out (a
//! digest, a size, a table of another blob or chunk size) is left out with
//! a problem naming it, and that blob is read as if there were no index.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::blob::BlobReader as _;
use crate::cache::{ChunkCache, table};
use crate::digest::{ChunkHash, ChunkTable, Digest};
use crate::error::{Error, Result};
use crate::image::{self, ImageOptions, LayerIndex, format};
use crate::manifest::{self, Descriptor, Manifest, Parsed};
use crate::source::Selector;

/// The manifest annotation that binds an index: its manifest's digest.
pub const INDEX_ANNOTATION: &str = "io.ocifs.index";
/// The artifact type of an index.
pub const ARTIFACT_TYPE: &str = "application/vnd.ocifs.index.v1";
/// A blob's chunk table ([`crate::cache::table`]'s stored form).
pub const CHUNK_TABLE_TYPE: &str = "application/vnd.ocifs.chunk-table.v1";
/// An image layer's index ([`crate::image::format`], version 2).
pub const LAYER_INDEX_TYPE: &str = "application/vnd.ocifs.layer-index.v2";
/// The annotation on each part of an index: the digest of the blob it
/// indexes.
pub const BLOB_ANNOTATION: &str = "io.ocifs.blob";

/// The empty config of an index (OCI's empty descriptor).
const EMPTY_CONFIG: &[u8] = b"{}";
const EMPTY_CONFIG_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// The largest part of an index read.
const MAX_PART: u64 = 512 << 20;

/// One part of an index: what it indexes and its bytes.
#[derive(Clone, Debug)]
pub struct Part {
    /// The blob it indexes.
    pub of: Descriptor,
    /// [`CHUNK_TABLE_TYPE`] or [`LAYER_INDEX_TYPE`].
    pub media_type: &'static str,
    /// Its stored form.
    pub bytes: Bytes,
}

/// Computes the parts of the index of `manifest`, reading each blob once
/// through `cache` (which must verify strictly: every table is taken from
/// bytes whose digest checked out).
pub async fn make(
    manifest: &Manifest,
    cache: &ChunkCache,
    options: &ImageOptions,
) -> Result<Vec<Part>> {
    let as_image = image::is_image(manifest);
    let mut parts: Vec<Part> = Vec::new();
    for layer in &manifest.layers {
        if parts.iter().any(|p| p.of.digest == layer.digest) {
            continue;
        }
        let part = if as_image {
            let ix = image::layer_index(cache, layer, options, None).await?;
            if ix.chunk_digests.is_empty() {
                return Err(Error::Malformed {
                    what: format!("the index of layer {}", layer.digest),
                    detail: "it has no chunk digests (index with --verify strict)".into(),
                    source: None,
                });
            }
            Part {
                of: layer.clone(),
                media_type: LAYER_INDEX_TYPE,
                bytes: format::encode(&ix).into(),
            }
        } else {
            let scanned = cache.scan(layer, |_| Ok(())).await?;
            Part {
                of: layer.clone(),
                media_type: CHUNK_TABLE_TYPE,
                bytes: table::encode(
                    scanned.chunk_size,
                    layer.size,
                    &ChunkTable::sha256(scanned.chunk_digests),
                )
                .into(),
            }
        };
        parts.push(part);
    }
    Ok(parts)
}

/// The parts of `manifest`'s index that `cache` holds already, without a
/// fetch (for a node that publishes what it built, `ocifs mount
/// --publish-index`): each image layer's stored index that has chunk
/// digests (the ones made from bytes whose digest checked out) and each
/// other blob's chunk table, where that blob is complete in the cache.
/// A layer or blob with neither is left out: readers read it as if there
/// were no index.
///
/// A complete blob's stored table is the cache's own, of BLAKE3: the
/// published one, of sha256, is taken by hashing the blob's file (which
/// must still hash to its digest), so this may read blobs whole.
pub fn at_hand(manifest: &Manifest, cache: &ChunkCache) -> Vec<Part> {
    let Some(store) = cache.store() else {
        return Vec::new();
    };
    let as_image = image::is_image(manifest);
    let mut parts: Vec<Part> = Vec::new();
    for layer in &manifest.layers {
        if parts.iter().any(|p| p.of.digest == layer.digest) {
            continue;
        }
        let part = if as_image {
            store
                .get_index(&layer.digest, image::MAX_INDEX_FILE)
                .and_then(|bytes| format::decode(&bytes).ok())
                .filter(|ix| {
                    ix.digest == layer.digest
                        && ix.size == layer.size
                        && !ix.chunk_digests.is_empty()
                })
                .map(|ix| Part {
                    of: layer.clone(),
                    media_type: LAYER_INDEX_TYPE,
                    bytes: format::encode(&ix).into(),
                })
        } else {
            store
                .sha256_table(&layer.digest, layer.size, cache.chunk_size())
                .map(|(chunk_size, table)| Part {
                    of: layer.clone(),
                    media_type: CHUNK_TABLE_TYPE,
                    bytes: table::encode(chunk_size, layer.size, &table).into(),
                })
        };
        parts.extend(part);
    }
    parts
}

/// An index ready to push: its blobs (the empty config among them) and
/// its manifest.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// Every blob the manifest names, with its digest.
    pub blobs: Vec<(Digest, Bytes)>,
    /// The manifest's bytes (an OCI image manifest).
    pub manifest: Bytes,
    /// Its digest.
    pub digest: Digest,
}

/// The artifact of `parts`; with `subject`, a referrer of that manifest.
/// The same parts give the same bytes.
pub fn artifact(parts: &[Part], subject: Option<&Descriptor>) -> Artifact {
    let config = Digest::of(EMPTY_CONFIG);
    let mut blobs = vec![(config.clone(), Bytes::from_static(EMPTY_CONFIG))];
    let layers: Vec<Value> = parts
        .iter()
        .map(|p| {
            let digest = Digest::of(&p.bytes);
            blobs.push((digest.clone(), p.bytes.clone()));
            json!({
                "mediaType": p.media_type,
                "digest": digest.to_string(),
                "size": p.bytes.len(),
                "annotations": { BLOB_ANNOTATION: p.of.digest.to_string() },
            })
        })
        .collect();
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": manifest::media_type::OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": EMPTY_CONFIG_TYPE,
            "digest": config.to_string(),
            "size": EMPTY_CONFIG.len(),
        },
        "layers": layers,
    });
    if let Some(s) = subject {
        m["subject"] = json!({
            "mediaType": s.media_type,
            "digest": s.digest.to_string(),
            "size": s.size,
        });
    }
    let bytes = Bytes::from(serde_json::to_vec(&m).unwrap_or_default());
    Artifact {
        blobs,
        digest: Digest::of(&bytes),
        manifest: bytes,
    }
}

/// A copy of manifest `raw` whose annotations name `index` (everything
/// else as it was). Only an image manifest can carry one: an index of
/// manifests is refused.
pub fn bind(raw: &[u8], index: &Digest) -> Result<Vec<u8>> {
    let refused = |detail: &str| Error::Malformed {
        what: "the manifest to bind an index to".into(),
        detail: detail.into(),
        source: None,
    };
    let mut m: Value =
        serde_json::from_slice(raw).map_err(|e| refused(&format!("not JSON: {e}")))?;
    let object = m
        .as_object_mut()
        .ok_or_else(|| refused("not a JSON object"))?;
    if object.contains_key("manifests") || !object.contains_key("layers") {
        return Err(refused(
            "it is an index of manifests, not one manifest (give --platform, or the manifest's digest)",
        ));
    }
    let annotations = object
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| refused("its annotations are not an object"))?;
    annotations.insert(INDEX_ANNOTATION.into(), Value::String(index.to_string()));
    serde_json::to_vec(&m).map_err(|e| refused(&e.to_string()))
}

/// How an index was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Named by the manifest's own annotation: in the chain of digests
    /// from the reference.
    Bound,
    /// A referrer of the manifest (`subject`), listed by the registry:
    /// trusted only if the user said so (`--trust-referrers`).
    Referrer {
        /// Whether the user trusts the repository's referrers.
        trusted: bool,
    },
}

/// What was found of a manifest's index.
#[derive(Debug, Default)]
pub struct Found {
    /// The index's digest, if one was found.
    pub index: Option<Digest>,
    /// How it was found.
    pub how: Option<How>,
    /// The layer indexes that checked out, by layer digest.
    pub layers: HashMap<Digest, LayerIndex>,
    /// Per blob of the manifest that has a part that checked out, which
    /// kind ([`CHUNK_TABLE_TYPE`] or [`LAYER_INDEX_TYPE`]).
    pub parts: HashMap<Digest, &'static str>,
    /// What did not check out, each naming what was wrong.
    pub problems: Vec<String>,
}

/// Finds the index of `manifest` (whose digest is `subject`, if known) and
/// reads it through `cache`, handing its chunk tables to the cache; its
/// layer indexes are in what is returned, for the image builder.
///
/// The manifest's own annotation comes first: such an index is bound to
/// the reference. Else a referrer of the manifest is looked for, which
/// anyone who can push to the repository can add, and a registry can make
/// up: in strict mode only if `trust_referrers` (it then counts as
/// bound), in lazy mode always, its chunk tables then checking each chunk
/// as it arrives until a whole blob proves one wrong.
pub async fn find(
    manifest: &Manifest,
    subject: Option<&Digest>,
    cache: &ChunkCache,
    trust_referrers: bool,
) -> Found {
    let mut found = Found::default();
    let (digest, how) = match (manifest.annotations.get(INDEX_ANNOTATION), subject) {
        (Some(value), _) => match value.parse::<Digest>() {
            Ok(d) => (d, How::Bound),
            Err(_) => {
                found.problems.push(format!(
                    "the manifest's annotation {INDEX_ANNOTATION} is not a digest ({value:?}); no index used"
                ));
                return found;
            }
        },
        (None, Some(subject)) if trust_referrers || cache.verify() == crate::blob::Verify::Lazy => {
            match cache.source().referrers(subject, ARTIFACT_TYPE).await {
                Ok(list) => match list.last() {
                    Some(d) => (
                        d.digest.clone(),
                        How::Referrer {
                            trusted: trust_referrers,
                        },
                    ),
                    None => return found,
                },
                Err(e) => {
                    found.problems.push(format!(
                        "the referrers of {subject} could not be listed ({e}); no index used"
                    ));
                    return found;
                }
            }
        }
        (None, _) => return found,
    };
    found.index = Some(digest.clone());
    found.how = Some(how);
    if let Err(e) = read_index(manifest, subject, cache, &digest, how, &mut found).await {
        found.problems.push(format!("index {digest} not used: {e}"));
    }
    found
}

async fn read_index(
    manifest: &Manifest,
    subject: Option<&Digest>,
    cache: &ChunkCache,
    digest: &Digest,
    how: How,
    found: &mut Found,
) -> Result<()> {
    let what = format!("index {digest}");
    let fetched = cache
        .source()
        .manifest(&Selector::Digest(digest.clone()))
        .await?;
    let actual = Digest::of(&fetched.bytes);
    if &actual != digest {
        return Err(Error::digest_mismatch(what, digest, actual));
    }
    let malformed = |detail: String| Error::Malformed {
        what: what.clone(),
        detail,
        source: None,
    };
    let index = match manifest::parse(&fetched.bytes, fetched.media_type.as_deref(), &what)? {
        Parsed::Manifest(m) => m,
        Parsed::Index(_) => return Err(malformed("it is an index of manifests".into())),
    };
    // OCI: without `artifactType`, the config's media type is the type.
    let artifact_type = index
        .artifact_type
        .as_deref()
        .unwrap_or(&index.config.media_type);
    if artifact_type != ARTIFACT_TYPE {
        return Err(malformed(format!(
            "its artifact type is {artifact_type}, not {ARTIFACT_TYPE}"
        )));
    }
    if let (How::Referrer { .. }, Some(subject)) = (how, subject) {
        let raw: Value = serde_json::from_slice(&fetched.bytes).unwrap_or_default();
        let named = raw["subject"]["digest"].as_str().unwrap_or("none");
        if named != subject.to_string() {
            return Err(malformed(format!(
                "listed as a referrer of {subject}, its subject is {named}"
            )));
        }
    }
    let trusted = !matches!(how, How::Referrer { trusted: false });
    for part in &index.layers {
        if let Err(problem) = read_part(manifest, cache, part, trusted, found).await {
            found.problems.push(format!(
                "part {} of index {digest} not used: {problem}",
                part.digest
            ));
        }
    }
    Ok(())
}

/// Reads one part of an index and, if it checks out, uses it.
async fn read_part(
    manifest: &Manifest,
    cache: &ChunkCache,
    part: &Descriptor,
    trusted: bool,
    found: &mut Found,
) -> std::result::Result<(), String> {
    let of: Digest = part
        .annotations
        .get(BLOB_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no blob digest in its annotation {BLOB_ANNOTATION}"))?;
    let blob = manifest
        .layers
        .iter()
        .find(|l| l.digest == of)
        .ok_or_else(|| format!("it indexes {of}, which the manifest does not name"))?;
    if found.parts.contains_key(&of) {
        return Err(format!("a second part for {of}"));
    }
    let kind = match part.media_type.as_str() {
        CHUNK_TABLE_TYPE => CHUNK_TABLE_TYPE,
        LAYER_INDEX_TYPE => LAYER_INDEX_TYPE,
        other => return Err(format!("media type {other} is not one this ocifs reads")),
    };
    if part.size > MAX_PART {
        return Err(format!(
            "{} bytes, more than the {MAX_PART} read",
            part.size
        ));
    }
    let bytes = cache
        .read_blob(part, 0, part.size)
        .await
        .map_err(|e| e.to_string())?;
    let chunk_size = cache.chunk_size();
    let (table_chunk, digests) = if kind == CHUNK_TABLE_TYPE {
        published_table(&bytes, blob)?
    } else {
        let ix = format::decode(&bytes)?;
        if ix.digest != blob.digest || ix.size != blob.size {
            return Err(format!(
                "a layer index of {} ({} bytes), not of {of}",
                ix.digest, ix.size
            ));
        }
        if Some(ix.compression) != image::layer_compression(&blob.media_type) {
            return Err(format!(
                "a layer index of a {:?} layer; {of} is {}",
                ix.compression, blob.media_type
            ));
        }
        let table = (ix.chunk_size, ix.chunk_digests.clone());
        found.layers.insert(of.clone(), ix);
        table
    };
    found.parts.insert(of.clone(), kind);
    if table_chunk != chunk_size || digests.len() as u64 != blob.size.div_ceil(chunk_size) {
        // A layer index's listing and seek points still serve; its
        // chunks are checked as if there were no table.
        return Err(format!(
            "its chunk table is of {table_chunk}-byte chunks, this cache reads {chunk_size}-byte ones"
        ));
    }
    if trusted {
        cache.set_chunk_digests(blob, table_chunk, digests);
    } else {
        cache.set_untrusted_chunk_digests(blob, table_chunk, digests);
    }
    Ok(())
}

/// A published chunk table's chunk size and digests, if `bytes` is one of
/// `blob`: of sha256 digests only (the cache's own tables, of BLAKE3, never
/// leave a node).
fn published_table(
    bytes: &[u8],
    blob: &Descriptor,
) -> std::result::Result<(u64, Vec<[u8; 32]>), String> {
    match table::decode(bytes, blob.size) {
        Some((cs, t)) if t.hash == ChunkHash::Sha256 => Ok((cs, t.digests)),
        Some((_, t)) => Err(format!(
            "a chunk table of {} digests; a published one is of sha256",
            t.hash.name()
        )),
        None => Err(format!(
            "not a chunk table of {} ({} bytes)",
            blob.digest, blob.size
        )),
    }
}

/// Where a blob's listing and the checks of its chunks come from, in the
/// order a view looks: what `ocifs inspect` names per layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerSource {
    /// A part of a found index ([`crate::published`]): a layer index
    /// (listing, seek points, chunk digests) or a chunk table.
    Index {
        /// A layer index, not only a chunk table.
        layer_index: bool,
    },
    /// Its eStargz table of contents, named by its descriptor.
    Estargz,
    /// Its zstd:chunked table of contents, named by its descriptor.
    ZstdChunked,
    /// A chunked layer whose TOC annotations are refused.
    Refused(String),
    /// This cache's layer index, made when the layer was streamed whole
    /// and checked.
    CachedIndex,
    /// This cache's complete blob, with its chunk table.
    CachedBlob,
    /// Nothing yet: the blob is fetched whole and checked before its first
    /// strict read (a tar layer, to list it), or in chunks in lazy mode.
    None {
        /// An image tar layer.
        tar: bool,
    },
}

impl std::fmt::Display for LayerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerSource::Index { layer_index: true } => {
                f.write_str("the index's layer index (listing, seek points, chunk digests)")
            }
            LayerSource::Index { layer_index: false } => f.write_str("the index's chunk table"),
            LayerSource::Estargz => f.write_str(
                "its eStargz table of contents (listing, chunk digests), checked against the toc.digest annotation",
            ),
            LayerSource::ZstdChunked => f.write_str(
                "its zstd:chunked table of contents (listing, chunk digests), checked against the manifest-checksum annotation",
            ),
            LayerSource::Refused(why) => write!(
                f,
                "none: its table of contents is refused ({why}); streamed whole in strict mode"
            ),
            LayerSource::CachedIndex => {
                f.write_str("this cache's layer index (made when the layer was streamed and checked)")
            }
            LayerSource::CachedBlob => {
                f.write_str("this cache's complete blob (its chunk table checks each read)")
            }
            LayerSource::None { tar: true } => {
                f.write_str("none yet: streamed whole and checked once to list it")
            }
            LayerSource::None { tar: false } => f.write_str(
                "none yet: fetched whole and checked before its first read (strict), in chunks (lazy)",
            ),
        }
    }
}

/// Where `blob`'s listing and checks come from, given the index `found`
/// for its manifest: the order `image::build` and the cache look in. Reads only
/// the cache's own files, never the registry.
pub fn layer_source(blob: &Descriptor, found: &Found, cache: &ChunkCache) -> LayerSource {
    if let Some(kind) = found.parts.get(&blob.digest) {
        return LayerSource::Index {
            layer_index: *kind == LAYER_INDEX_TYPE,
        };
    }
    let tar = crate::image::layer_compression(&blob.media_type).is_some();
    if tar {
        match crate::image::chunked::flavour(blob) {
            Some(Ok(crate::image::chunked::Flavour::Estargz { .. })) => {
                return LayerSource::Estargz;
            }
            Some(Ok(crate::image::chunked::Flavour::ZstdChunked { .. })) => {
                return LayerSource::ZstdChunked;
            }
            Some(Err(why)) => return LayerSource::Refused(why),
            None => {}
        }
    }
    let Some(store) = cache.store() else {
        return LayerSource::None { tar };
    };
    if tar
        && let Some(bytes) = store.get_index(&blob.digest, crate::image::MAX_INDEX_FILE)
        && let Ok(ix) = crate::image::format::decode(&bytes)
        && ix.digest == blob.digest
        && (cache.verify() == crate::blob::Verify::Lazy || !ix.chunk_digests.is_empty())
    {
        return LayerSource::CachedIndex;
    }
    if store.has_complete(&blob.digest) {
        return LayerSource::CachedBlob;
    }
    LayerSource::None { tar }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_bytes() -> Vec<u8> {
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[],"annotations":{"a":"b"}}"#.to_vec()
    }

    #[test]
    fn binding_adds_one_annotation_and_keeps_the_rest() {
        let index = Digest::of(b"index");
        let bound = bind(&manifest_bytes(), &index).unwrap();
        let before: Value = serde_json::from_slice(&manifest_bytes()).unwrap();
        let mut after: Value = serde_json::from_slice(&bound).unwrap();
        assert_eq!(after["annotations"][INDEX_ANNOTATION], index.to_string());
        after["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(INDEX_ANNOTATION);
        assert_eq!(before, after);
        // Bound again: the newer index wins, nothing else changes.
        let other = Digest::of(b"other");
        let again: Value = serde_json::from_slice(&bind(&bound, &other).unwrap()).unwrap();
        assert_eq!(again["annotations"][INDEX_ANNOTATION], other.to_string());
        assert_eq!(again["annotations"]["a"], "b");
    }

    #[test]
    fn an_index_of_manifests_or_junk_cannot_be_bound() {
        let index = Digest::of(b"index");
        for bad in [
            &br#"{"schemaVersion":2,"manifests":[]}"#[..],
            b"[]",
            b"not json",
            br#"{"schemaVersion":2,"layers":[],"annotations":[]}"#,
        ] {
            let e = bind(bad, &index).unwrap_err().to_string();
            assert!(e.contains("bind"), "{e}");
        }
    }

    #[test]
    fn a_published_chunk_table_is_of_sha256_and_of_its_blob() {
        let blob = vec![5u8; 3000];
        let of = Descriptor {
            media_type: "application/octet-stream".into(),
            digest: Digest::of(&blob),
            size: blob.len() as u64,
            annotations: Default::default(),
            platform: None,
            artifact_type: None,
            urls: Vec::new(),
        };
        let take = |hash: ChunkHash| ChunkTable {
            hash,
            digests: blob.chunks(1024).map(|c| hash.of(c)).collect(),
        };
        let sha = take(ChunkHash::Sha256);
        assert_eq!(
            published_table(&table::encode(1024, 3000, &sha), &of),
            Ok((1024, sha.digests.clone()))
        );
        let e =
            published_table(&table::encode(1024, 3000, &take(ChunkHash::Blake3)), &of).unwrap_err();
        assert!(e.contains("blake3") && e.contains("sha256"), "{e}");
        let e = published_table(&table::encode(1024, 2999, &sha), &of).unwrap_err();
        assert!(
            e.contains("not a chunk table") && e.contains(&of.digest.to_string()),
            "{e}"
        );
    }

    #[test]
    fn the_same_parts_make_the_same_artifact() {
        let of = Descriptor {
            media_type: "application/octet-stream".into(),
            digest: Digest::of(b"blob"),
            size: 4,
            annotations: Default::default(),
            platform: None,
            artifact_type: None,
            urls: Vec::new(),
        };
        let parts = vec![Part {
            of: of.clone(),
            media_type: CHUNK_TABLE_TYPE,
            bytes: table::encode(1 << 20, 4, &ChunkTable::sha256(vec![[7u8; 32]])).into(),
        }];
        let a = artifact(&parts, None);
        let b = artifact(&parts, None);
        assert_eq!(a.digest, b.digest);
        let m = match manifest::parse(&a.manifest, None, "test").unwrap() {
            Parsed::Manifest(m) => m,
            Parsed::Index(_) => panic!("an index"),
        };
        assert_eq!(m.artifact_type.as_deref(), Some(ARTIFACT_TYPE));
        assert_eq!(
            m.layers[0].annotations[BLOB_ANNOTATION],
            of.digest.to_string()
        );
        assert_eq!(a.blobs.len(), 2);
        let referrer = artifact(&parts, Some(&of));
        assert_ne!(referrer.digest, a.digest);
        let v: Value = serde_json::from_slice(&referrer.manifest).unwrap();
        assert_eq!(v["subject"]["digest"], of.digest.to_string());
    }
}

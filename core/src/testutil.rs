//! Builds small OCI layouts in a temp dir for unit tests.

use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::manifest::{Descriptor, annotation, media_type};
use crate::source::LayoutSource;

pub(crate) struct LayoutBuilder {
    dir: tempfile::TempDir,
    root: Vec<serde_json::Value>,
}

impl LayoutBuilder {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).expect("mkdir");
        LayoutBuilder {
            dir,
            root: Vec::new(),
        }
    }

    pub(crate) fn blob(&mut self, media_type: &str, bytes: &[u8]) -> Descriptor {
        let digest = Digest::of(bytes);
        std::fs::write(
            self.dir.path().join("blobs/sha256").join(digest.hex()),
            bytes,
        )
        .expect("write blob");
        Descriptor {
            media_type: media_type.into(),
            digest,
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            urls: Vec::new(),
        }
    }

    /// An ORAS-style artifact: one titled layer per file.
    pub(crate) fn artifact(&mut self, files: &[(&str, &[u8])]) -> Descriptor {
        let config = self.blob(media_type::OCI_EMPTY, b"{}");
        let layers: Vec<serde_json::Value> = files
            .iter()
            .map(|(name, bytes)| {
                let d = self.blob("application/octet-stream", bytes);
                serde_json::json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size,
                                   "annotations": {annotation::TITLE: name}})
            })
            .collect();
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
            "artifactType": "application/vnd.test", "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
            "layers": layers});
        self.blob(media_type::OCI_MANIFEST, m.to_string().as_bytes())
    }

    pub(crate) fn index(&mut self, entries: &[(Descriptor, Option<&str>)]) -> Descriptor {
        let manifests: Vec<serde_json::Value> =
            entries.iter().map(|(d, p)| entry(d, *p, None)).collect();
        let i = serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": manifests});
        self.blob(media_type::OCI_INDEX, i.to_string().as_bytes())
    }

    pub(crate) fn tag(&mut self, tag: &str, d: &Descriptor) {
        self.root.push(entry(d, None, Some(tag)));
    }

    pub(crate) fn root(&mut self, d: &Descriptor, platform: Option<&str>) {
        self.root.push(entry(d, platform, None));
    }

    pub(crate) fn finish(self) -> (tempfile::TempDir, LayoutSource) {
        let p = self.dir.path();
        std::fs::write(p.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": self.root});
        std::fs::write(p.join("index.json"), index.to_string()).expect("write");
        let source = LayoutSource::open(p).expect("open layout");
        (self.dir, source)
    }
}

fn entry(d: &Descriptor, platform: Option<&str>, tag: Option<&str>) -> serde_json::Value {
    let mut v = serde_json::json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size});
    if let Some(p) = platform {
        let p: crate::platform::Platform = p.parse().expect("platform");
        v["platform"] = serde_json::to_value(p).expect("json");
    }
    if let Some(t) = tag {
        v["annotations"] = serde_json::json!({annotation::REF_NAME: t});
    }
    v
}

/// Blobs in memory, counting what is read.
#[derive(Debug, Default)]
pub(crate) struct MemBlobs {
    blobs: std::collections::HashMap<Digest, bytes::Bytes>,
    /// Blob bytes read so far.
    bytes_read: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl crate::blob::BlobReader for MemBlobs {
    async fn read_blob(
        &self,
        d: &Descriptor,
        offset: u64,
        len: u64,
    ) -> crate::error::Result<bytes::Bytes> {
        let blob = self
            .blobs
            .get(&d.digest)
            .ok_or_else(|| crate::error::Error::BlobNotFound {
                digest: d.digest.to_string(),
                source_name: "memory".into(),
            })?;
        let start = (offset as usize).min(blob.len());
        let end = (offset.saturating_add(len) as usize).min(blob.len());
        self.bytes_read
            .fetch_add((end - start) as u64, std::sync::atomic::Ordering::SeqCst);
        Ok(blob.slice(start..end))
    }

    fn stats(&self) -> crate::blob::Stats {
        crate::blob::Stats::default()
    }
}

/// A content reader over blobs in memory ([`MemBlobs`]).
#[derive(Debug)]
pub(crate) struct MemReader {
    mem: std::sync::Arc<MemBlobs>,
    blobs: std::sync::Arc<dyn crate::blob::BlobReader>,
    content: crate::read::ContentReader,
}

impl MemReader {
    /// A reader holding `blobs`; returns it and their descriptors.
    pub(crate) fn new(blobs: &[(&str, &[u8])]) -> (Self, Vec<Descriptor>) {
        let mut mem = MemBlobs::default();
        let mut descriptors = Vec::new();
        for (title, bytes) in blobs {
            let digest = Digest::of(bytes);
            mem.blobs
                .insert(digest.clone(), bytes::Bytes::copy_from_slice(bytes));
            let mut annotations = BTreeMap::new();
            if !title.is_empty() {
                annotations.insert(annotation::TITLE.to_owned(), (*title).to_owned());
            }
            descriptors.push(Descriptor {
                media_type: "application/octet-stream".into(),
                digest,
                size: bytes.len() as u64,
                annotations,
                platform: None,
                artifact_type: None,
                urls: Vec::new(),
            });
        }
        let mem = std::sync::Arc::new(mem);
        let blobs: std::sync::Arc<dyn crate::blob::BlobReader> = mem.clone();
        let content = crate::read::ContentReader::new(blobs.clone());
        (
            MemReader {
                mem,
                blobs,
                content,
            },
            descriptors,
        )
    }

    /// The blob reader below, for the tree builders.
    pub(crate) fn blobs(&self) -> &std::sync::Arc<dyn crate::blob::BlobReader> {
        &self.blobs
    }

    pub(crate) fn read_so_far(&self) -> u64 {
        self.mem
            .bytes_read
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl crate::read::Reader for MemReader {
    async fn read(
        &self,
        content: &crate::content::Content,
        offset: u64,
        len: u64,
    ) -> crate::error::Result<bytes::Bytes> {
        self.content.read(content, offset, len).await
    }

    fn stats(&self) -> crate::blob::Stats {
        crate::blob::Stats::default()
    }
}

/// Writes zip archives byte by byte, independently of the reader under
/// test, so that tests can make any archive, hostile ones included.
#[derive(Debug, Default)]
pub(crate) struct RawZip {
    out: Vec<u8>,
    central: Vec<u8>,
    count: u64,
}

/// One entry for [`RawZip`]: every field as it will be written.
#[derive(Clone, Debug)]
pub(crate) struct RawEntry {
    pub(crate) name: String,
    /// The data as stored (compressed already, for deflate).
    pub(crate) data: Vec<u8>,
    pub(crate) method: u16,
    pub(crate) flags: u16,
    pub(crate) crc: u32,
    /// The uncompressed size the central directory declares.
    pub(crate) size: u64,
    /// Sizes (size, compressed) the local header declares, if not the central ones.
    pub(crate) local_sizes: Option<(u64, u64)>,
    /// Unix mode bits (file type included), if "made by" Unix.
    pub(crate) unix_mode: Option<u32>,
}

impl RawEntry {
    /// A file, deflated or stored.
    pub(crate) fn file(name: &str, contents: &[u8], deflate: bool, mode: u32) -> Self {
        let data = if deflate {
            use std::io::Write as _;
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(contents).expect("deflate");
            e.finish().expect("deflate")
        } else {
            contents.to_vec()
        };
        RawEntry {
            name: name.to_owned(),
            data,
            method: if deflate { 8 } else { 0 },
            flags: 0,
            crc: crc32fast::hash(contents),
            size: contents.len() as u64,
            local_sizes: None,
            unix_mode: Some(0o100000 | mode),
        }
    }

    pub(crate) fn dir(name: &str, mode: u32) -> Self {
        RawEntry {
            unix_mode: Some(0o040000 | mode),
            ..RawEntry::file(name, b"", false, 0)
        }
    }

    pub(crate) fn symlink(name: &str, target: &str) -> Self {
        RawEntry {
            unix_mode: Some(0o120777),
            ..RawEntry::file(name, target.as_bytes(), false, 0)
        }
    }
}

impl RawZip {
    /// Appends the local header and data of `e`, and its central record;
    /// returns where its local header is.
    pub(crate) fn add(&mut self, e: &RawEntry) -> u64 {
        let offset = self.out.len() as u64;
        let (size, csize) = e.local_sizes.unwrap_or((e.size, e.data.len() as u64));
        let mut h = Vec::new();
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&20u16.to_le_bytes());
        h.extend_from_slice(&e.flags.to_le_bytes());
        h.extend_from_slice(&e.method.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&0x21u16.to_le_bytes());
        h.extend_from_slice(&e.crc.to_le_bytes());
        h.extend_from_slice(&(csize as u32).to_le_bytes());
        h.extend_from_slice(&(size as u32).to_le_bytes());
        h.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(e.name.as_bytes());
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(&e.data);
        self.central_only(e, offset);
        offset
    }

    /// A central record for `e` pointing at `offset`, with no local header
    /// of its own (for overlapping entries).
    pub(crate) fn central_only(&mut self, e: &RawEntry, offset: u64) {
        let c = &mut self.central;
        c.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        let made_by: u16 = if e.unix_mode.is_some() {
            3 << 8 | 20
        } else {
            20
        };
        c.extend_from_slice(&made_by.to_le_bytes());
        c.extend_from_slice(&20u16.to_le_bytes());
        c.extend_from_slice(&e.flags.to_le_bytes());
        c.extend_from_slice(&e.method.to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&0x21u16.to_le_bytes());
        c.extend_from_slice(&e.crc.to_le_bytes());
        c.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        c.extend_from_slice(&(e.size as u32).to_le_bytes());
        c.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&(e.unix_mode.unwrap_or(0) << 16).to_le_bytes());
        c.extend_from_slice(&(offset as u32).to_le_bytes());
        c.extend_from_slice(e.name.as_bytes());
        self.count += 1;
    }

    /// The archive: data, central directory, end records (zip64 ones too
    /// if asked).
    pub(crate) fn finish(mut self, zip64: bool) -> Vec<u8> {
        let cd_offset = self.out.len() as u64;
        let cd_size = self.central.len() as u64;
        self.out.extend_from_slice(&self.central);
        let o = &mut self.out;
        if zip64 {
            let record = o.len() as u64;
            o.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
            o.extend_from_slice(&44u64.to_le_bytes());
            o.extend_from_slice(&45u16.to_le_bytes());
            o.extend_from_slice(&45u16.to_le_bytes());
            o.extend_from_slice(&0u32.to_le_bytes());
            o.extend_from_slice(&0u32.to_le_bytes());
            o.extend_from_slice(&self.count.to_le_bytes());
            o.extend_from_slice(&self.count.to_le_bytes());
            o.extend_from_slice(&cd_size.to_le_bytes());
            o.extend_from_slice(&cd_offset.to_le_bytes());
            o.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
            o.extend_from_slice(&0u32.to_le_bytes());
            o.extend_from_slice(&record.to_le_bytes());
            o.extend_from_slice(&1u32.to_le_bytes());
        }
        o.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        let (n, size, offset) = if zip64 {
            (0xffff, u32::MAX, u32::MAX)
        } else {
            (self.count as u16, cd_size as u32, cd_offset as u32)
        };
        o.extend_from_slice(&n.to_le_bytes());
        o.extend_from_slice(&n.to_le_bytes());
        o.extend_from_slice(&size.to_le_bytes());
        o.extend_from_slice(&offset.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        self.out
    }
}

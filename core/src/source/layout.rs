//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`), read
//! in place with positional reads. Nothing is copied or cached: the layout is
//! already local.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{BlobStream, FetchedManifest, Selector, Source, nearby_tags};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsutil::{read_bounded, read_full_at};
use crate::manifest::{self, Descriptor, Index, MAX_MANIFEST_SIZE};

const STREAM_BUF: usize = 256 * 1024;

/// An OCI image layout directory.
#[derive(Debug)]
pub struct LayoutSource {
    root: PathBuf,
    index: Index,
}

impl LayoutSource {
    /// Opens the layout at `root`: checks `oci-layout` and parses `index.json`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let layout_err = |detail: String| Error::Layout {
            path: root.display().to_string(),
            detail,
        };
        let marker = root.join("oci-layout");
        let text = read_bounded(&marker, 64 * 1024).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound if !root.exists() => layout_err("no such directory".into()),
            io::ErrorKind::NotFound => {
                layout_err("no oci-layout file (is this an OCI image layout?)".into())
            }
            _ => layout_err(format!("cannot read oci-layout: {e}")),
        })?;
        let version: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| layout_err(format!("oci-layout is not JSON: {e}")))?;
        match version.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(v) if v.starts_with("1.") => {}
            other => {
                return Err(layout_err(format!(
                    "unsupported imageLayoutVersion {other:?} (expected 1.x)"
                )));
            }
        }
        let index_path = root.join("index.json");
        let bytes = read_bounded(&index_path, MAX_MANIFEST_SIZE)
            .map_err(|e| layout_err(format!("cannot read index.json: {e}")))?;
        let index = match manifest::parse(
            &bytes,
            Some(manifest::media_type::OCI_INDEX),
            &format!("{}", index_path.display()),
        )? {
            manifest::Parsed::Index(i) => i,
            manifest::Parsed::Manifest(_) => {
                return Err(layout_err("index.json is a manifest, not an index".into()));
            }
        };
        Ok(LayoutSource { root, index })
    }

    /// The layout directory.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// The path of a blob inside the layout. The digest is validated hex, so
    /// this cannot leave `blobs/sha256`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    fn read_manifest_blob(
        &self,
        digest: &Digest,
        media_type: Option<String>,
    ) -> Result<FetchedManifest> {
        let path = self.blob_path(digest);
        let bytes = read_bounded(&path, MAX_MANIFEST_SIZE).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::ManifestNotFound {
                reference: format!("{}@{digest}", self.name()),
                nearby: Vec::new(),
            },
            io::ErrorKind::FileTooLarge => Error::TooLarge {
                what: format!("manifest {digest}"),
                size: MAX_MANIFEST_SIZE + 1,
                limit: MAX_MANIFEST_SIZE,
            },
            _ => Error::io(format!("reading {}", path.display()), e),
        })?;
        digest.verify(&bytes, || format!("manifest {digest} in {}", self.name()))?;
        Ok(FetchedManifest {
            bytes: Bytes::from(bytes),
            digest: digest.clone(),
            media_type,
        })
    }
}

#[async_trait]
impl Source for LayoutSource {
    fn name(&self) -> String {
        format!("oci:{}", self.root.display())
    }

    fn is_remote(&self) -> bool {
        false
    }

    async fn manifest(&self, selector: &Selector) -> Result<FetchedManifest> {
        match selector {
            Selector::Digest(d) => {
                let media_type = self
                    .index
                    .manifests
                    .iter()
                    .find(|m| &m.digest == d)
                    .map(|m| m.media_type.clone());
                self.read_manifest_blob(d, media_type)
            }
            Selector::Tag(tag) => {
                let hits: Vec<&Descriptor> = self
                    .index
                    .manifests
                    .iter()
                    .filter(|m| m.ref_name() == Some(tag.as_str()))
                    .collect();
                match hits.as_slice() {
                    [one] => self.read_manifest_blob(&one.digest, Some(one.media_type.clone())),
                    [] => Err(Error::ManifestNotFound {
                        reference: format!("{}:{tag}", self.name()),
                        nearby: nearby_tags(tag, &self.tags().await?),
                    }),
                    many => Err(Error::Ambiguous {
                        reference: format!("{}:{tag}", self.name()),
                        reason: "index.json has several entries with this tag".into(),
                        candidates: many.iter().map(|m| m.digest.to_string()).collect(),
                    }),
                }
            }
        }
    }

    async fn read_range(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        let want = len.min(blob.size.saturating_sub(offset));
        if want == 0 {
            return Ok(Bytes::new());
        }
        let path = self.blob_path(&blob.digest);
        let digest = blob.digest.clone();
        let name = self.name();
        tokio::task::spawn_blocking(move || {
            let file = File::open(&path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::BlobNotFound {
                    digest: digest.to_string(),
                    source_name: name,
                },
                _ => Error::io(format!("opening {}", path.display()), e),
            })?;
            let mut buf = BytesMut::zeroed(want as usize);
            let got = read_full_at(&file, &mut buf, offset)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if (got as u64) < want {
                return Err(Error::ShortRead {
                    digest: digest.to_string(),
                    offset,
                    expected: want,
                    got: got as u64,
                });
            }
            Ok(buf.freeze())
        })
        .await
        .map_err(|e| Error::io("layout read task", io::Error::other(e)))?
    }

    async fn stream(&self, blob: &Descriptor) -> Result<BlobStream> {
        let path = self.blob_path(&blob.digest);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::BlobNotFound {
                    digest: blob.digest.to_string(),
                    source_name: self.name(),
                },
                _ => Error::io(format!("opening {}", path.display()), e),
            })?;
        let stream =
            futures_util::stream::try_unfold((file, path), |(mut file, path)| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = BytesMut::zeroed(STREAM_BUF);
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some((buf.freeze(), (file, path))))
            });
        Ok(Box::pin(stream))
    }

    async fn tags(&self) -> Result<Vec<String>> {
        let mut tags: Vec<String> = self
            .index
            .manifests
            .iter()
            .filter_map(|m| m.ref_name().map(str::to_owned))
            .collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    fn local_path(&self, blob: &Descriptor) -> Option<PathBuf> {
        Some(self.blob_path(&blob.digest))
    }

    async fn root_index(&self) -> Result<Option<Index>> {
        Ok(Some(self.index.clone()))
    }
}

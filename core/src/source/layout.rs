//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`), read
//! in place with positional reads. Nothing is copied or cached: the layout is
//! already local.
//!
//! Every file is opened beneath the layout directory without following a
//! symlink ([`Beneath`]), and a blob once opened is read through that same
//! open file for the life of the source: a name renamed over later is not
//! followed to the new file. (Bytes rewritten in place are caught by the
//! cache's chunk checks in strict mode.)

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::beneath::{Beneath, is_refusal};
use super::{BlobStream, FetchedManifest, Selector, Source, nearby_tags};
use crate::digest::Digest;
use crate::error::{Cause, Error, Result, cause};
use crate::fsutil::{read_bounded, read_full_at};
use crate::manifest::{self, Descriptor, Index, MAX_MANIFEST_SIZE};

const STREAM_BUF: usize = 256 * 1024;

/// Blob files kept open, most recently used.
const OPEN_BLOBS: usize = 64;

/// An OCI image layout directory.
#[derive(Debug)]
pub struct LayoutSource {
    root: PathBuf,
    dir: Beneath,
    index: Index,
    open: Mutex<LruCache<Digest, Arc<File>>>,
}

impl LayoutSource {
    /// Opens the layout at `root`: checks `oci-layout` and parses `index.json`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let layout_err = |detail: String, source: Option<Cause>| Error::Layout {
            path: root.display().to_string(),
            detail,
            source,
        };
        let dir = Beneath::open(&root).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => layout_err("no such directory".into(), None),
            _ => layout_err(format!("cannot open the directory: {e}"), cause(e)),
        })?;
        let text = dir
            .open_file(Path::new("oci-layout"))
            .and_then(|f| read_bounded(&f, 64 * 1024))
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => layout_err(
                    "no oci-layout file (is this an OCI image layout?)".into(),
                    None,
                ),
                _ if is_refusal(&e) => layout_err(e.to_string(), cause(e)),
                _ => layout_err(format!("cannot read oci-layout: {e}"), cause(e)),
            })?;
        let version: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| layout_err(format!("oci-layout is not JSON: {e}"), cause(e)))?;
        match version.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(v) if v.starts_with("1.") => {}
            other => {
                return Err(layout_err(
                    format!("unsupported imageLayoutVersion {other:?} (expected 1.x)"),
                    None,
                ));
            }
        }
        let index_path = root.join("index.json");
        let bytes = dir
            .open_file(Path::new("index.json"))
            .and_then(|f| read_bounded(&f, MAX_MANIFEST_SIZE))
            .map_err(|e| match e {
                e if is_refusal(&e) => layout_err(e.to_string(), cause(e)),
                e => layout_err(format!("cannot read index.json: {e}"), cause(e)),
            })?;
        let index = match manifest::parse(
            &bytes,
            Some(manifest::media_type::OCI_INDEX),
            &format!("{}", index_path.display()),
        )? {
            manifest::Parsed::Index(i) => i,
            manifest::Parsed::Manifest(_) => {
                return Err(layout_err(
                    "index.json is a manifest, not an index".into(),
                    None,
                ));
            }
        };
        Ok(LayoutSource {
            root,
            dir,
            index,
            open: Mutex::new(LruCache::new(
                NonZeroUsize::new(OPEN_BLOBS).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    /// The layout directory.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// The path of a blob inside the layout, relative to it. The digest is
    /// validated hex, so this cannot leave `blobs/sha256`.
    fn blob_rel(digest: &Digest) -> PathBuf {
        Path::new("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    /// Opens a blob beneath the layout, without following symlinks.
    fn open_blob_file(&self, digest: &Digest) -> io::Result<File> {
        self.dir.open_file(&Self::blob_rel(digest))
    }

    /// The blob's open file: opened once (beneath the layout, no symlinks,
    /// a regular file of the descriptor's size) and kept, so every read of
    /// it reads the same file.
    fn blob_file(&self, blob: &Descriptor) -> Result<Arc<File>> {
        if let Some(f) = self
            .open
            .lock()
            .ok()
            .and_then(|mut o| o.get(&blob.digest).cloned())
        {
            return Ok(f);
        }
        let path = self.root.join(Self::blob_rel(&blob.digest));
        let file = self
            .open_blob_file(&blob.digest)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::BlobNotFound {
                    digest: blob.digest.to_string(),
                    source_name: self.name(),
                },
                _ if is_refusal(&e) => Error::Layout {
                    path: self.root.display().to_string(),
                    detail: format!("blob {}: {e}", blob.digest),
                    source: cause(e),
                },
                _ => Error::io(format!("opening {}", path.display()), e),
            })?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .len();
        if len != blob.size {
            return Err(Error::Layout {
                path: self.root.display().to_string(),
                detail: format!(
                    "blob {} is {len} bytes, its descriptor says {}",
                    blob.digest, blob.size
                ),
                source: None,
            });
        }
        let file = Arc::new(file);
        if let Ok(mut open) = self.open.lock() {
            open.put(blob.digest.clone(), file.clone());
        }
        Ok(file)
    }

    fn read_manifest_blob(
        &self,
        digest: &Digest,
        media_type: Option<String>,
    ) -> Result<FetchedManifest> {
        let path = self.root.join(Self::blob_rel(digest));
        let read = self
            .open_blob_file(digest)
            .and_then(|f| read_bounded(&f, MAX_MANIFEST_SIZE));
        let bytes = read.map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::ManifestNotFound {
                reference: format!("{}@{digest}", self.name()),
                nearby: Vec::new(),
            },
            io::ErrorKind::FileTooLarge => Error::TooLarge {
                what: format!("manifest {digest}"),
                size: MAX_MANIFEST_SIZE + 1,
                limit: MAX_MANIFEST_SIZE,
            },
            _ if is_refusal(&e) => Error::Layout {
                path: self.root.display().to_string(),
                detail: format!("manifest {digest}: {e}"),
                source: cause(e),
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
        let file = self.blob_file(blob)?;
        let path = self.root.join(Self::blob_rel(&blob.digest));
        let digest = blob.digest.clone();
        tokio::task::spawn_blocking(move || {
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
        let path = self.root.join(Self::blob_rel(&blob.digest));
        let file = self.blob_file(blob)?;
        let stream =
            futures_util::stream::try_unfold((file, path, 0u64), |(file, path, pos)| async move {
                let (file, path, read) = tokio::task::spawn_blocking(move || {
                    let mut buf = BytesMut::zeroed(STREAM_BUF);
                    let read = read_full_at(&file, &mut buf, pos).map(|n| {
                        buf.truncate(n);
                        buf.freeze()
                    });
                    (file, path, read)
                })
                .await
                .map_err(|e| Error::io("layout read task", io::Error::other(e)))?;
                let bytes =
                    read.map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                if bytes.is_empty() {
                    return Ok(None);
                }
                let next = pos + bytes.len() as u64;
                Ok(Some((bytes, (file, path, next))))
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

    async fn root_index(&self) -> Result<Option<Index>> {
        Ok(Some(self.index.clone()))
    }
}

//! Trees and readers for the unit tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ocifs_core::Content;
use ocifs_core::{Descriptor, Manifest, annotation, media_type};
use ocifs_core::{Digest, Error, Reader, Result, Stats, Tree, ViewOptions};

fn descriptor(title: Option<&str>, body: &[u8]) -> Descriptor {
    let mut annotations = BTreeMap::new();
    if let Some(t) = title {
        annotations.insert(annotation::TITLE.to_owned(), t.to_owned());
    }
    Descriptor {
        media_type: "application/octet-stream".into(),
        digest: Digest::of(body),
        size: body.len() as u64,
        annotations,
        platform: None,
        artifact_type: None,
        urls: Vec::new(),
    }
}

/// The tree of an ORAS-style artifact with one titled file per entry,
/// created 2024-02-29T12:00:00Z.
pub(crate) fn tree(files: &[(&str, &[u8])]) -> Arc<Tree> {
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.into()),
        artifact_type: None,
        config: descriptor(None, b"{}"),
        layers: files.iter().map(|(t, b)| descriptor(Some(t), b)).collect(),
        annotations: BTreeMap::from([(
            annotation::CREATED.to_owned(),
            "2024-02-29T12:00:00Z".to_owned(),
        )]),
    };
    Arc::new(Tree::from_artifact(&manifest, &ViewOptions::default()).expect("test tree"))
}

/// A reader over blobs in memory, counting reads, optionally slow or failing.
#[derive(Debug, Default)]
pub(crate) struct MemReader {
    blobs: HashMap<Digest, Bytes>,
    /// How long each read waits before answering.
    pub(crate) delay: Option<Duration>,
    /// Answer every read with this error.
    pub(crate) fail: Option<Error>,
    /// Bytes cut from the end of every answer (a short read).
    pub(crate) short_by: usize,
    /// Reads so far.
    pub(crate) reads: AtomicU64,
}

impl MemReader {
    pub(crate) fn new(blobs: &[&[u8]]) -> Self {
        MemReader {
            blobs: blobs
                .iter()
                .map(|b| (Digest::of(b), Bytes::copy_from_slice(b)))
                .collect(),
            ..MemReader::default()
        }
    }
}

#[async_trait]
impl Reader for MemReader {
    async fn read(&self, content: &Content, offset: u64, len: u64) -> Result<Bytes> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        let d = content.blob();
        let blob = self
            .blobs
            .get(&d.digest)
            .ok_or_else(|| Error::BlobNotFound {
                digest: d.digest.to_string(),
                source_name: "memory".into(),
            })?;
        let start = (offset as usize).min(blob.len());
        let end = (offset.saturating_add(len) as usize).min(blob.len());
        let end = end.saturating_sub(self.short_by).max(start);
        Ok(blob.slice(start..end))
    }

    fn stats(&self) -> Stats {
        Stats::default()
    }
}

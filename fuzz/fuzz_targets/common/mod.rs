//! What the package targets share: one blob in memory behind a [`BlobReader`],
//! and a current-thread runtime to drive core's async archive readers.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use ocifs_core::internals::{ItemKind, list_package};
use ocifs_core::{
    BlobReader, ContentReader, Descriptor, Digest, Error, Format, Reader, Result, Stats,
};

/// One blob in memory: its exact bytes, read as a [`BlobReader`]; a fresh
/// [`ContentReader`] over it per input (so nothing is cached from one
/// input to the next).
#[derive(Debug)]
pub struct MemBlob {
    pub blob: Descriptor,
    bytes: Bytes,
}

impl MemBlob {
    pub fn new(bytes: &[u8]) -> Self {
        let blob = Descriptor {
            media_type: "application/octet-stream".into(),
            // Nothing checks it here; the cache would (and the entry
            // cache is keyed by it, which a fresh reader per input makes
            // moot).
            digest: Digest::of(b""),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            urls: Vec::new(),
        };
        MemBlob {
            blob,
            bytes: Bytes::copy_from_slice(bytes),
        }
    }
}

#[async_trait]
impl BlobReader for MemBlob {
    async fn read_blob(&self, d: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        if *d != self.blob {
            return Err(Error::BlobNotFound {
                digest: d.digest.to_string(),
                source_name: "memory".into(),
            });
        }
        let start = offset.min(d.size) as usize;
        let end = offset.saturating_add(len).min(d.size) as usize;
        Ok(self.bytes.slice(start..end))
    }

    fn stats(&self) -> Stats {
        Stats::default()
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

/// Indexes `bytes` as a package of `format`, then reads every file it
/// lists: whole, and from its middle to past its end. Errors are fine;
/// a read that succeeds returns exactly the bytes the `Reader` contract
/// says (`min(len, size - offset)`).
pub fn index_and_read(bytes: &[u8], format: Format) {
    let mem = Arc::new(MemBlob::new(bytes));
    let blob = mem.blob.clone();
    let blobs: Arc<dyn BlobReader> = mem;
    let reader = ContentReader::new(blobs.clone());
    runtime().block_on(async {
        let Ok(index) = list_package(&blobs, &blob, format).await else {
            return;
        };
        for item in index.items.iter() {
            let ItemKind::File(content) = &item.kind else {
                continue;
            };
            let size = content.size();
            for (offset, len) in [(0, size), (size / 2, size)] {
                if let Ok(got) = reader.read(content, offset, len).await {
                    let want = len.min(size - offset);
                    assert_eq!(
                        got.len() as u64,
                        want,
                        "{format} entry {:?}: {len} bytes at {offset} of {size}",
                        item.path
                    );
                }
            }
        }
    });
}

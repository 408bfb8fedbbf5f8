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

//! Writing OCI image layouts for tests, independent of ocifs-core: blobs,
//! artifact and image manifests, indexes with platforms, `index.json` with
//! tags, and `oci-layout`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::util::{sha256_digest, sha256_hex};

/// Media types used in layouts.
pub mod media_type {
    /// An OCI image manifest.
    pub const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An OCI image index.
    pub const IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An OCI image config.
    pub const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// The empty descriptor (`{}`), the config of artifacts.
    pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
    /// An uncompressed tar layer; also what oras uses for plain files.
    pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// A gzip-compressed tar layer.
    pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
}

/// The annotation that names a layer's file.
const TITLE: &str = "org.opencontainers.image.title";
/// The annotation that tags an `index.json` entry.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A platform of an index entry or image config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v8`, `v7`, …
    pub variant: Option<String>,
    /// `os.version`, e.g. `10.0.17763.1`.
    pub os_version: Option<String>,
}

impl Platform {
    /// `os/architecture` with no variant and no os.version.
    pub fn new(os: &str, architecture: &str) -> Self {
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
            os_version: None,
        }
    }

    /// With `variant`.
    pub fn variant(mut self, variant: &str) -> Self {
        self.variant = Some(variant.to_owned());
        self
    }

    /// With `os.version`.
    pub fn os_version(mut self, os_version: &str) -> Self {
        self.os_version = Some(os_version.to_owned());
        self
    }

    /// The `platform` object of a descriptor.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("architecture".into(), json!(self.architecture));
        m.insert("os".into(), json!(self.os));
        if let Some(v) = &self.os_version {
            m.insert("os.version".into(), json!(v));
        }
        if let Some(v) = &self.variant {
            m.insert("variant".into(), json!(v));
        }
        Value::Object(m)
    }
}

impl std::fmt::Display for Platform {
    /// `os/arch[/variant][:os.version]`, the `--platform` syntax.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        if let Some(v) = &self.os_version {
            write!(f, ":{v}")?;
        }
        Ok(())
    }
}

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// The media type of the content.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// The size in bytes.
    pub size: u64,
    /// Annotations (a layer's title, an entry's tag, …).
    pub annotations: BTreeMap<String, String>,
    /// The platform, for index entries.
    pub platform: Option<Platform>,
    /// The artifact type, for index entries of artifacts.
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }

    /// With one more annotation.
    pub fn with_annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    /// With `platform`.
    pub fn with_platform(mut self, platform: Platform) -> Self {
        self.platform = Some(platform);
        self
    }

    /// The descriptor as JSON.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("mediaType".into(), json!(self.media_type));
        m.insert("digest".into(), json!(self.digest));
        m.insert("size".into(), json!(self.size));
        if let Some(t) = &self.artifact_type {
            m.insert("artifactType".into(), json!(t));
        }
        if !self.annotations.is_empty() {
            m.insert("annotations".into(), json!(self.annotations));
        }
        if let Some(p) = &self.platform {
            m.insert("platform".into(), p.to_json());
        }
        Value::Object(m)
    }
}

/// Writes an OCI image layout in a directory.
///
/// Blobs and manifests are written as they are made; [`add`](Self::add)
/// puts a manifest or index in `index.json` (rewritten each time), with a
/// tag or without.
#[derive(Debug)]
pub struct OciLayoutBuilder {
    dir: PathBuf,
    entries: Vec<Value>,
}

/// # Panics
///
/// Every method panics if it cannot write a file.
impl OciLayoutBuilder {
    /// A new, empty layout in `dir` (created if needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)
            .unwrap_or_else(|e| panic!("creating {}: {e}", blobs.display()));
        write(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        );
        let builder = Self {
            dir,
            entries: Vec::new(),
        };
        builder.write_index();
        builder
    }

    /// The layout's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `bytes` as a blob.
    pub fn blob(&mut self, media_type: &str, bytes: &[u8]) -> Descriptor {
        write(
            &self.dir.join("blobs/sha256").join(sha256_hex(bytes)),
            bytes,
        );
        Descriptor {
            media_type: media_type.to_owned(),
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
        }
    }

    /// Writes `value` as a JSON blob.
    pub fn json_blob(&mut self, media_type: &str, value: &Value) -> Descriptor {
        let bytes = serde_json::to_vec(value).expect("serializing JSON");
        self.blob(media_type, &bytes)
    }

    /// A layer that is the file `title` with `content`, as oras pushes files.
    pub fn file(&mut self, title: &str, content: &[u8]) -> Descriptor {
        self.blob(media_type::LAYER_TAR, content)
            .with_annotation(TITLE, title)
    }

    /// An artifact manifest: `artifactType`, the empty config, `layers`.
    pub fn artifact_manifest(
        &mut self,
        artifact_type: &str,
        layers: &[Descriptor],
        annotations: &BTreeMap<String, String>,
    ) -> Descriptor {
        let config = self.blob(media_type::EMPTY, b"{}");
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::IMAGE_MANIFEST,
            "artifactType": artifact_type,
            "config": config.to_json(),
            "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        if !annotations.is_empty() {
            manifest["annotations"] = json!(annotations);
        }
        let mut d = self.json_blob(media_type::IMAGE_MANIFEST, &manifest);
        d.artifact_type = Some(artifact_type.to_owned());
        d
    }

    /// An image manifest for `platform`: an image config naming the platform,
    /// then `layers`. The descriptor carries the platform, ready for an index.
    pub fn image_manifest(&mut self, platform: &Platform, layers: &[Descriptor]) -> Descriptor {
        let mut config = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>(),
            },
            "config": {},
        });
        if let Some(v) = &platform.variant {
            config["variant"] = json!(v);
        }
        if let Some(v) = &platform.os_version {
            config["os.version"] = json!(v);
        }
        let config = self.json_blob(media_type::IMAGE_CONFIG, &config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::IMAGE_MANIFEST,
            "config": config.to_json(),
            "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        self.json_blob(media_type::IMAGE_MANIFEST, &manifest)
            .with_platform(platform.clone())
    }

    /// An image index of `manifests` (their platforms included).
    pub fn index(&mut self, manifests: &[Descriptor]) -> Descriptor {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type::IMAGE_INDEX,
            "manifests": manifests.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        self.json_blob(media_type::IMAGE_INDEX, &index)
    }

    /// Adds `descriptor` to `index.json`, tagged `tag` if given
    /// (`org.opencontainers.image.ref.name`).
    pub fn add(&mut self, descriptor: &Descriptor, tag: Option<&str>) -> &mut Self {
        let mut d = descriptor.clone();
        if let Some(tag) = tag {
            d = d.with_annotation(REF_NAME, tag);
        }
        self.entries.push(d.to_json());
        self.write_index();
        self
    }

    fn write_index(&self) {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type::IMAGE_INDEX,
            "manifests": self.entries,
        });
        let bytes = serde_json::to_vec_pretty(&index).expect("serializing index.json");
        write(&self.dir.join("index.json"), &bytes);
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_json_lists_tagged_entries() {
        let dir = crate::temp_dir();
        let mut layout = OciLayoutBuilder::new(dir.path());
        let f = layout.file("a.txt", b"a");
        let m = layout.artifact_manifest("application/vnd.test", &[f], &BTreeMap::new());
        layout.add(&m, Some("v1")).add(&m, None);
        let index: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("index.json")).expect("index.json"),
        )
        .expect("json");
        let entries = index["manifests"].as_array().expect("manifests");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["annotations"][REF_NAME], "v1");
        assert!(entries[1].get("annotations").is_none());
        assert_eq!(entries[0]["digest"], m.digest.as_str());
        let manifest =
            std::fs::read(dir.path().join("blobs/sha256").join(m.hex())).expect("manifest blob");
        assert_eq!(sha256_digest(&manifest), m.digest);
    }

    #[test]
    fn platform_display_is_the_cli_syntax() {
        let p = Platform::new("linux", "arm64")
            .variant("v8")
            .os_version("1.0");
        assert_eq!(p.to_string(), "linux/arm64/v8:1.0");
        assert_eq!(p.to_json()["os.version"], "1.0");
    }
}

//! Manifests and indexes (OCI and Docker schema 2), parsed strictly and
//! bounded in size.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Cause, Error, Result, cause};
use crate::platform::Platform;

/// Manifests and indexes larger than this are refused (the distribution
/// registry itself refuses to store manifests over 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// Media type names.
pub mod media_type {
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Every manifest type ocifs reads, for `Accept` headers.
    pub const ALL_MANIFESTS: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];
    /// OCI empty config of artifacts.
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
}

/// Annotation keys ocifs reads.
pub mod annotation {
    /// A layer's file name (ORAS).
    pub const TITLE: &str = "org.opencontainers.image.title";
    /// Creation time, RFC 3339.
    pub const CREATED: &str = "org.opencontainers.image.created";
    /// A tag in an OCI layout's `index.json`.
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
    /// ORAS: a `tar+gzip` layer that is a directory.
    pub const ORAS_UNPACK: &str = "io.deis.oras.content.unpack";
}

/// A content descriptor: what a manifest says about a blob or a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The artifact type (index entries of artifacts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Other places the content may be fetched from; ocifs does not use
    /// them (they would be a way to send requests to arbitrary hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

impl Descriptor {
    /// The `org.opencontainers.image.title` annotation.
    pub fn title(&self) -> Option<&str> {
        self.annotations.get(annotation::TITLE).map(String::as_str)
    }

    /// A tag from `org.opencontainers.image.ref.name` (OCI layouts).
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations
            .get(annotation::REF_NAME)
            .map(String::as_str)
    }
}

/// An image or artifact manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact type, if the manifest declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or Docker manifest list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The entries.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest or index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// An index or manifest list.
    Index(Index),
    /// An image or artifact manifest.
    Manifest(Box<Manifest>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<serde_json::Value>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    layers: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    config: Option<serde::de::IgnoredAny>,
}

/// Parses a manifest or index. `declared` is the media type the registry or
/// the referring descriptor gave; `what` names the content in errors.
pub fn parse(bytes: &[u8], declared: Option<&str>, what: &str) -> Result<Parsed> {
    if bytes.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            size: bytes.len() as u64,
            limit: MAX_MANIFEST_SIZE,
        });
    }
    let malformed = |detail: String, source: Option<Cause>| Error::Malformed {
        what: what.to_owned(),
        detail,
        source,
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(malformed("not a JSON object".into(), None));
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("not a JSON object: {e}"), cause(e)))?;
    match probe.schema_version.as_ref().and_then(|v| v.as_u64()) {
        Some(2) => {}
        Some(1) => {
            return Err(Error::UnsupportedMediaType {
                media_type: "docker schema 1".into(),
                what: what.to_owned(),
                expected:
                    "an OCI or Docker schema 2 manifest (schema 1 is deprecated: re-push the image)"
                        .into(),
            });
        }
        _ => return Err(malformed("schemaVersion is missing or not 2".into(), None)),
    }
    // The embedded media type is authoritative; a registry's Content-Type
    // may be generic (application/json, text/plain) for artifacts.
    let declared = declared.filter(|d| media_type::ALL_MANIFESTS.contains(d));
    let kind = match probe.media_type.as_deref().or(declared) {
        Some(t @ (media_type::OCI_INDEX | media_type::DOCKER_LIST)) => Some((t, true)),
        Some(t @ (media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST)) => Some((t, false)),
        Some(other) => {
            return Err(Error::UnsupportedMediaType {
                media_type: other.to_owned(),
                what: what.to_owned(),
                expected: media_type::ALL_MANIFESTS.join(", "),
            });
        }
        None => None,
    };
    let is_index = match kind {
        Some((_, is_index)) => is_index,
        // The OCI spec allows mediaType to be absent; the shape decides.
        None => match (
            probe.manifests.is_some(),
            probe.layers.is_some() || probe.config.is_some(),
        ) {
            (true, false) => true,
            (false, true) => false,
            _ => {
                return Err(malformed(
                    "no mediaType and neither a manifest nor an index by shape".into(),
                    None,
                ));
            }
        },
    };
    if let (Some(embedded), Some(declared)) = (probe.media_type.as_deref(), declared)
        && embedded != declared
    {
        return Err(malformed(
            format!("mediaType {embedded} disagrees with the descriptor's {declared}"),
            None,
        ));
    }
    if is_index {
        let index: Index =
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string(), cause(e)))?;
        Ok(Parsed::Index(index))
    } else {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string(), cause(e)))?;
        Ok(Parsed::Manifest(Box::new(manifest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn manifest_json(media_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{D}","size":2}},
               "layers":[{{"mediaType":"application/octet-stream","digest":"{D}","size":5,"annotations":{{"org.opencontainers.image.title":"a.txt"}}}}]}}"#
        )
    }

    #[test]
    fn parses_artifact_manifest() {
        let Parsed::Manifest(m) = parse(
            manifest_json(media_type::OCI_MANIFEST).as_bytes(),
            None,
            "m",
        )
        .unwrap() else {
            panic!("not a manifest")
        };
        assert_eq!(m.layers[0].title(), Some("a.txt"));
        assert_eq!(m.layers[0].size, 5);
    }

    #[test]
    fn parses_index_by_shape() {
        let j = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{D}","size":3,"platform":{{"os":"linux","architecture":"arm64","variant":"v8","os.version":"1.0"}}}}]}}"#,
            media_type::OCI_MANIFEST
        );
        let Parsed::Index(i) = parse(j.as_bytes(), None, "i").unwrap() else {
            panic!()
        };
        let p = i.manifests[0].platform.as_ref().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8:1.0");
    }

    #[test]
    fn rejects_what_it_cannot_trust() {
        let cases: Vec<(String, &str)> = vec![
            ("[]".into(), "not a json object"),
            (r#"{"schemaVersion":1}"#.into(), "schema 1"),
            (
                r#"{"schemaVersion":2,"mediaType":"text/html"}"#.into(),
                "unsupported media type",
            ),
            (
                manifest_json(media_type::OCI_MANIFEST).replace(D, "sha256:1234"),
                "malformed",
            ),
            (
                manifest_json(media_type::OCI_MANIFEST).replace("\"size\":5", "\"size\":-5"),
                "malformed",
            ),
            (r#"{"schemaVersion":2}"#.into(), "neither"),
        ];
        for (json, want) in cases {
            let err = parse(json.as_bytes(), None, "m").unwrap_err().to_string();
            assert!(err.to_lowercase().contains(want), "{json}: {err}");
        }
        let big = vec![b' '; MAX_MANIFEST_SIZE as usize + 1];
        assert!(matches!(
            parse(&big, None, "m"),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn descriptor_and_embedded_type_must_agree() {
        let err = parse(
            manifest_json(media_type::OCI_MANIFEST).as_bytes(),
            Some(media_type::OCI_INDEX),
            "m",
        )
        .unwrap_err();
        assert!(err.to_string().contains("disagrees"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse(&bytes, None, "fuzz");
        }
    }
}

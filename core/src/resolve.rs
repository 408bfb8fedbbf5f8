//! Resolution: from a reference to one manifest, through indexes, choosing
//! entries by platform.
//!
//! Every manifest fetched is checked against the digest and size of the
//! descriptor that named it, so the chosen manifest chains to the reference.

use futures_util::TryStreamExt;
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{self, Descriptor, Index, Manifest, Parsed};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::source::{Selector, Source};

/// Nested indexes deeper than this are refused (a loop guard).
const MAX_DEPTH: usize = 4;
/// A config blob read to learn a platform is never larger than this.
const MAX_CONFIG_SIZE: u64 = 1024 * 1024;

/// One index passed through on the way to the manifest.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexStep {
    /// The index's digest (`None` for a layout's `index.json`).
    pub digest: Option<Digest>,
    /// Its media type.
    pub media_type: String,
    /// Its entries.
    pub entries: Vec<Descriptor>,
    /// The digest of the entry chosen.
    pub chosen: Digest,
}

/// The outcome of resolution.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolution {
    /// The reference as given.
    pub reference: String,
    /// The indexes passed through, outermost first.
    pub path: Vec<IndexStep>,
    /// The chosen manifest's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// The manifest.
    pub manifest: Manifest,
}

impl Resolution {
    /// The artifact type: the manifest's `artifactType`, else its config's media type.
    pub fn artifact_type(&self) -> &str {
        self.manifest
            .artifact_type
            .as_deref()
            .unwrap_or(&self.manifest.config.media_type)
    }
}

/// Resolves `reference` in `source`. `platform` is what `--platform` said;
/// without it, indexes are resolved for the host's platform.
pub async fn resolve(
    source: &dyn Source,
    reference: &Reference,
    platform: Option<&Platform>,
) -> Result<Resolution> {
    let (tag, digest) = match reference {
        Reference::Registry(r) => (r.tag.clone(), r.digest.clone()),
        Reference::Layout(l) => (l.tag.clone(), l.digest.clone()),
    };
    let mut path = Vec::new();
    let (mut fetched, mut declared, mut expected_size) = match (digest, tag) {
        (Some(d), _) => (source.manifest(&Selector::Digest(d)).await?, None, None),
        (None, Some(t)) => (source.manifest(&Selector::Tag(t)).await?, None, None),
        (None, None) => {
            let index = source
                .root_index()
                .await?
                .ok_or_else(|| Error::InvalidReference {
                    input: reference.to_string(),
                    reason: "no tag or digest".into(),
                })?;
            let chosen = choose_root(source, reference, &index, platform).await?;
            path.push(IndexStep {
                digest: None,
                media_type: manifest::media_type::OCI_INDEX.into(),
                entries: index.manifests.clone(),
                chosen: chosen.digest.clone(),
            });
            (
                source
                    .manifest(&Selector::Digest(chosen.digest.clone()))
                    .await?,
                Some(chosen.media_type),
                Some(chosen.size),
            )
        }
    };
    let wanted = platform.cloned().unwrap_or_else(Platform::host);
    for _ in 0..=MAX_DEPTH {
        let what = format!("manifest {}", fetched.digest);
        if let Some(size) = expected_size
            && size != fetched.bytes.len() as u64
        {
            return Err(Error::Malformed {
                what,
                detail: format!(
                    "descriptor says {size} bytes, the content has {}",
                    fetched.bytes.len()
                ),
                source: None,
            });
        }
        let declared_type = declared.clone().or(fetched.media_type.clone());
        match manifest::parse(&fetched.bytes, declared_type.as_deref(), &what)? {
            Parsed::Manifest(m) => {
                let media_type = m
                    .media_type
                    .clone()
                    .or(declared_type)
                    .unwrap_or_else(|| manifest::media_type::OCI_MANIFEST.into());
                return Ok(Resolution {
                    reference: reference.to_string(),
                    path,
                    digest: fetched.digest,
                    media_type,
                    size: fetched.bytes.len() as u64,
                    manifest: *m,
                });
            }
            Parsed::Index(index) => {
                let chosen = choose_in_index(
                    reference,
                    &fetched.digest,
                    &index,
                    &wanted,
                    platform.is_some(),
                )?;
                path.push(IndexStep {
                    digest: Some(fetched.digest.clone()),
                    media_type: index
                        .media_type
                        .clone()
                        .unwrap_or_else(|| manifest::media_type::OCI_INDEX.into()),
                    entries: index.manifests.clone(),
                    chosen: chosen.digest.clone(),
                });
                declared = Some(chosen.media_type.clone());
                expected_size = Some(chosen.size);
                fetched = source
                    .manifest(&Selector::Digest(chosen.digest.clone()))
                    .await?;
            }
        }
    }
    Err(Error::Malformed {
        what: reference.to_string(),
        detail: format!("indexes nested more than {MAX_DEPTH} deep"),
        source: None,
    })
}

fn describe(d: &Descriptor) -> String {
    let mut s = String::new();
    if let Some(tag) = d.ref_name() {
        s.push_str(&format!("tag {tag}  "));
    }
    s.push_str(&d.digest.to_string());
    if let Some(p) = &d.platform {
        s.push_str(&format!("  {p}"));
    }
    if let Some(t) = &d.artifact_type {
        s.push_str(&format!("  {t}"));
    }
    s
}

fn platform_list(entries: &[&Descriptor]) -> Vec<String> {
    let mut v: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| !p.is_unknown())
        .map(|p| p.to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn choose_in_index(
    reference: &Reference,
    digest: &Digest,
    index: &Index,
    wanted: &Platform,
    explicit: bool,
) -> Result<Descriptor> {
    let entries: Vec<&Descriptor> = index.manifests.iter().collect();
    let what = format!("{reference} (index {digest})");
    if entries.is_empty() {
        return Err(Error::Malformed {
            what,
            detail: "the index has no entries".into(),
            source: None,
        });
    }
    let with_platform: Vec<&Descriptor> = entries
        .iter()
        .copied()
        .filter(|d| d.platform.as_ref().is_some_and(|p| !p.is_unknown()))
        .collect();
    if with_platform.is_empty() {
        // An index of artifacts without platforms: only a single entry is unambiguous.
        return match entries.as_slice() {
            [one] => Ok((*one).clone()),
            many => Err(Error::Ambiguous {
                reference: what,
                reason: "the index has several entries and none carries a platform".into(),
                candidates: many.iter().map(|d| describe(d)).collect(),
            }),
        };
    }
    let mut matches: Vec<&Descriptor> = with_platform
        .iter()
        .copied()
        .filter(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p)))
        .collect();
    if matches.is_empty() {
        return Err(Error::PlatformNotFound {
            reference: reference.to_string(),
            wanted: format!(
                "{wanted}{}",
                if explicit {
                    ""
                } else {
                    " (the host's; choose another with --platform)"
                }
            ),
            available: platform_list(&with_platform),
        });
    }
    if matches.len() > 1 && wanted.variant.is_empty() {
        let defaults: Vec<&Descriptor> = matches
            .iter()
            .copied()
            .filter(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| wanted.is_default_variant_of(p))
            })
            .collect();
        if !defaults.is_empty() {
            matches = defaults;
        }
    }
    if matches.len() > 1 {
        let first = matches[0]
            .platform
            .as_ref()
            .map(|p| p.os_version.clone())
            .unwrap_or_default();
        if matches
            .iter()
            .any(|d| d.platform.as_ref().map(|p| &p.os_version) != Some(&first))
        {
            return Err(Error::Ambiguous {
                reference: what,
                reason: format!(
                    "several entries match {wanted} and differ in os.version; add it to --platform, e.g. {wanted}:<os.version>"
                ),
                candidates: matches.iter().map(|d| describe(d)).collect(),
            });
        }
    }
    Ok(matches[0].clone())
}

/// The platform of a manifest entry that does not state one, from its config.
async fn platform_from_config(source: &dyn Source, entry: &Descriptor) -> Result<Option<Platform>> {
    let fetched = source
        .manifest(&Selector::Digest(entry.digest.clone()))
        .await?;
    let Parsed::Manifest(m) = manifest::parse(
        &fetched.bytes,
        Some(&entry.media_type),
        &format!("manifest {}", entry.digest),
    )?
    else {
        return Ok(None);
    };
    if m.config.size > MAX_CONFIG_SIZE || !m.config.media_type.contains("config") {
        return Ok(None);
    }
    let mut stream = source.stream(&m.config).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > MAX_CONFIG_SIZE {
            return Ok(None);
        }
    }
    m.config
        .digest
        .verify(&bytes, || format!("config {}", m.config.digest))?;
    let platform: Option<Platform> = serde_json::from_slice(&bytes).ok();
    Ok(platform.filter(|p| !p.os.is_empty() && !p.architecture.is_empty()))
}

/// Chooses among the entries of a layout's `index.json` when no tag or
/// digest was given: a single entry, or the single one `--platform` picks.
async fn choose_root(
    source: &dyn Source,
    reference: &Reference,
    index: &Index,
    platform: Option<&Platform>,
) -> Result<Descriptor> {
    let entries = &index.manifests;
    match (entries.as_slice(), platform) {
        ([], _) => {
            return Err(Error::Layout {
                path: reference.to_string(),
                detail: "index.json has no entries".into(),
                source: None,
            });
        }
        ([one], _) => return Ok(one.clone()),
        _ => {}
    }
    let candidates: Vec<String> = entries.iter().map(describe).collect();
    let Some(wanted) = platform else {
        return Err(Error::Ambiguous {
            reference: reference.to_string(),
            reason: format!(
                "index.json has {} entries; name one with :tag or @digest, or narrow with --platform",
                entries.len()
            ),
            candidates,
        });
    };
    let mut matching = Vec::new();
    let mut seen = Vec::new();
    for entry in entries {
        let platforms: Vec<Platform> = match &entry.platform {
            Some(p) => vec![p.clone()],
            None if is_index_type(&entry.media_type) => {
                let fetched = source
                    .manifest(&Selector::Digest(entry.digest.clone()))
                    .await?;
                match manifest::parse(
                    &fetched.bytes,
                    Some(&entry.media_type),
                    &format!("index {}", entry.digest),
                )? {
                    Parsed::Index(i) => {
                        i.manifests.into_iter().filter_map(|d| d.platform).collect()
                    }
                    Parsed::Manifest(_) => Vec::new(),
                }
            }
            None => platform_from_config(source, entry)
                .await?
                .into_iter()
                .collect(),
        };
        if platforms.iter().any(|p| wanted.matches(p)) {
            matching.push(entry);
        }
        seen.extend(
            platforms
                .into_iter()
                .filter(|p| !p.is_unknown())
                .map(|p| p.to_string()),
        );
    }
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            seen.sort();
            seen.dedup();
            Err(Error::PlatformNotFound {
                reference: reference.to_string(),
                wanted: wanted.to_string(),
                available: seen,
            })
        }
        many => Err(Error::Ambiguous {
            reference: reference.to_string(),
            reason: format!(
                "{} entries of index.json match {wanted}; name one with :tag or @digest",
                many.len()
            ),
            candidates: many.iter().map(|d| describe(d)).collect(),
        }),
    }
}

fn is_index_type(media_type: &str) -> bool {
    media_type == manifest::media_type::OCI_INDEX || media_type == manifest::media_type::DOCKER_LIST
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::LayoutBuilder;

    fn plat(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn picks_by_platform_and_os_version() {
        let mut b = LayoutBuilder::new();
        let amd = b.artifact(&[("a.txt", b"amd64")]);
        let arm1 = b.artifact(&[("a.txt", b"arm 1.0")]);
        let arm2 = b.artifact(&[("a.txt", b"arm 2.0")]);
        let win = b.artifact(&[("a.txt", b"win")]);
        let index = b.index(&[
            (amd.clone(), Some("linux/amd64")),
            (arm1.clone(), Some("linux/arm64/v8:1.0")),
            (arm2.clone(), Some("linux/arm64/v8:2.0")),
            (win.clone(), Some("windows/amd64:10.0.17763.1")),
        ]);
        b.tag("multi", &index);
        let (_dir, source) = b.finish();
        let r = |s: &str| {
            Reference::parse(&format!("oci:{}:multi", source.root_dir().display()))
                .map(|r| (r, s.to_owned()))
                .unwrap()
        };

        for (p, want) in [
            ("linux/amd64", &amd),
            ("linux/arm64:2.0", &arm2),
            ("linux/arm64/v8:1.0", &arm1),
            ("windows/amd64", &win),
        ] {
            let (reference, p) = r(p);
            let res = resolve(&source, &reference, Some(&plat(&p))).await.unwrap();
            assert_eq!(&res.digest, &want.digest, "{p}");
            assert_eq!(res.path.len(), 1);
        }

        let (reference, _) = r("");
        let err = resolve(&source, &reference, Some(&plat("linux/arm64")))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("os.version") && err.contains("1.0") && err.contains("2.0"),
            "{err}"
        );

        let err = resolve(&source, &reference, Some(&plat("linux/s390x")))
            .await
            .unwrap_err();
        let Error::PlatformNotFound { available, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(
            available,
            &[
                "linux/amd64",
                "linux/arm64/v8:1.0",
                "linux/arm64/v8:2.0",
                "windows/amd64:10.0.17763.1"
            ]
        );
    }

    #[tokio::test]
    async fn untagged_layouts() {
        let mut b = LayoutBuilder::new();
        let one = b.artifact(&[("x", b"1")]);
        b.root(&one, None);
        let (_d, source) = b.finish();
        let reference = Reference::parse(&format!("oci:{}", source.root_dir().display())).unwrap();
        assert_eq!(
            resolve(&source, &reference, None).await.unwrap().digest,
            one.digest
        );

        let mut b = LayoutBuilder::new();
        let amd = b.artifact(&[("x", b"amd")]);
        let arm = b.artifact(&[("x", b"arm")]);
        b.root(&amd, Some("linux/amd64"));
        b.root(&arm, Some("linux/arm64"));
        let (_d, source) = b.finish();
        let reference = Reference::parse(&format!("oci:{}", source.root_dir().display())).unwrap();
        assert_eq!(
            resolve(&source, &reference, Some(&plat("linux/arm64")))
                .await
                .unwrap()
                .digest,
            arm.digest
        );
        let err = resolve(&source, &reference, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&amd.digest.to_string())
                && err.contains(&arm.digest.to_string())
                && err.contains("linux/arm64"),
            "{err}"
        );
    }
}

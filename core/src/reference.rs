//! References: what the user names on the command line.
//!
//! - `host[:port]/repo[:tag][@sha256:…]`, with Docker Hub short names
//!   (`alpine` → `docker.io/library/alpine:latest`);
//! - `oci:DIR[:tag|@sha256:…]`, an OCI image layout directory (also given as
//!   the oras-style `--oci-layout DIR[:tag|@digest]`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The registry Docker Hub short names resolve to.
pub const DOCKER_HUB: &str = "docker.io";
const MAX_REPOSITORY_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A reference to a manifest (or index) in a registry or a layout directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// Something in a registry.
    Registry(RegistryRef),
    /// Something in an OCI image layout directory.
    Layout(LayoutRef),
}

/// A reference into a registry. At least one of `tag` and `digest` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host[:port]`, `docker.io` for Docker Hub.
    pub registry: String,
    /// The repository path, e.g. `library/alpine`.
    pub repository: String,
    /// The tag, if given (or implied `latest`).
    pub tag: Option<String>,
    /// The digest, if given; it wins over the tag, which is then informative.
    pub digest: Option<Digest>,
}

/// A reference into an OCI image layout directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutRef {
    /// The layout directory.
    pub path: PathBuf,
    /// The `org.opencontainers.image.ref.name` to select, if any.
    pub tag: Option<String>,
    /// The digest to select, if any.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference as typed on the command line.
    pub fn parse(input: &str) -> Result<Self> {
        if let Some(rest) = input.strip_prefix("oci:") {
            return Ok(Reference::Layout(LayoutRef::parse(rest).map_err(
                |e| match e {
                    Error::InvalidReference { reason, .. } => Error::InvalidReference {
                        input: input.to_owned(),
                        reason,
                    },
                    other => other,
                },
            )?));
        }
        Ok(Reference::Registry(RegistryRef::parse(input)?))
    }

    /// The digest the reference pins, if any.
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            Reference::Registry(r) => r.digest.as_ref(),
            Reference::Layout(l) => l.digest.as_ref(),
        }
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Registry(r) => r.fmt(f),
            Reference::Layout(l) => l.fmt(f),
        }
    }
}

fn invalid(input: &str, reason: impl Into<String>) -> Error {
    Error::InvalidReference {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// Refuses `user:password@host/…`: a reference is shown in messages, logs
/// and the process list, so it must carry no secret. The error shows the
/// reference with the credentials cut out.
fn refuse_userinfo(input: &str) -> Result<()> {
    let first = input.split('/').next().unwrap_or(input);
    let Some((userinfo, after)) = first.split_once('@') else {
        return Ok(());
    };
    // `name@sha256:…` (a Docker Hub short name by digest) is no userinfo.
    if first.len() == input.len() && after.parse::<Digest>().is_ok() {
        return Ok(());
    }
    let shown = format!("…@{}", &input[userinfo.len() + 1..]);
    Err(invalid(
        &shown,
        "credentials in a reference (user:password@host) are not accepted: they would show in \
         messages and the process list; give --username with --password-stdin, or log in \
         with a docker or podman config",
    ))
}

/// Splits a trailing `@digest` off.
fn split_digest(input: &str) -> Result<(&str, Option<Digest>)> {
    match input.rsplit_once('@') {
        Some((rest, digest)) => {
            let digest = digest.parse::<Digest>().map_err(|_| {
                invalid(
                    input,
                    format!("{digest:?} is not a digest (expected sha256:<64 hex digits>)"),
                )
            })?;
            Ok((rest, Some(digest)))
        }
        None => Ok((input, None)),
    }
}

fn is_valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() || b == b'_' => {}
        _ => return false,
    }
    tag.len() <= MAX_TAG_LEN && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A repository path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-"+; each must be followed by
        // an alphanumeric (guaranteed at the end by the last-byte check).
        let start = i;
        match ch {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !b.get(i).is_some_and(|c| c.is_ascii_alphanumeric()) {
            return false;
        }
    }
    true
}

fn looks_like_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn is_valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        // An IPv6 literal in brackets carries colons of its own.
        Some((n, p)) if !p.contains(']') => (n, Some(p)),
        _ => (host, None),
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl RegistryRef {
    /// Parses `host[:port]/repo[:tag][@digest]` or a Docker Hub short name.
    pub fn parse(input: &str) -> Result<Self> {
        if input.is_empty() {
            return Err(invalid(input, "empty reference"));
        }
        refuse_userinfo(input)?;
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(input, "contains whitespace or control characters"));
        }
        let (rest, digest) = split_digest(input)?;
        // The tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !is_valid_tag(tag) {
                    return Err(invalid(
                        input,
                        format!("{tag:?} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})"),
                    ));
                }
                (&rest[..last_slash + i], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if looks_like_host(first) => (first.to_owned(), path.to_owned()),
            Some(_) => (DOCKER_HUB.to_owned(), name.to_owned()),
            None => (DOCKER_HUB.to_owned(), format!("library/{name}")),
        };
        // Docker Hub has three spellings; keep one so credentials and cache keys agree.
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !is_valid_host(&registry) {
            return Err(invalid(
                input,
                format!("{registry:?} is not a valid registry host"),
            ));
        }
        if repository.len() > MAX_REPOSITORY_LEN {
            return Err(invalid(
                input,
                format!("repository is longer than {MAX_REPOSITORY_LEN} characters"),
            ));
        }
        if let Some(bad) = repository.split('/').find(|c| !is_valid_component(c)) {
            return Err(invalid(
                input,
                format!(
                    "repository component {bad:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
                ),
            ));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (tag, _) => tag,
        };
        Ok(RegistryRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository, pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> Self {
        RegistryRef {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl LayoutRef {
    /// Parses `DIR[:tag|@digest]` (the part after `oci:`, or the value of
    /// `--oci-layout`). A suffix after the last `:` is a tag only when it is a
    /// valid tag, so `C:\images\x` and `./a:b/c` stay paths.
    pub fn parse(input: &str) -> Result<Self> {
        let (rest, digest) = if input.contains("@sha256:") || input.contains('@') {
            match input.rsplit_once('@') {
                Some((p, d)) if d.starts_with("sha256:") || !d.contains(['/', '\\']) => {
                    let digest = d.parse::<Digest>().map_err(|_| {
                        invalid(
                            input,
                            format!("{d:?} is not a digest (expected sha256:<64 hex digits>)"),
                        )
                    })?;
                    (p, Some(digest))
                }
                _ => (input, None),
            }
        } else {
            (input, None)
        };
        let (path, tag) = match rest.rsplit_once(':') {
            Some((p, t)) if !p.is_empty() && is_valid_tag(t) && digest.is_none() => {
                (p, Some(t.to_owned()))
            }
            _ => (rest, None),
        };
        if path.is_empty() {
            return Err(invalid(input, "empty layout directory"));
        }
        if path.contains('\0') {
            return Err(invalid(input, "NUL in layout path"));
        }
        Ok(LayoutRef {
            path: PathBuf::from(path),
            tag,
            digest,
        })
    }
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci:{}", self.path.display())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_a_reference_are_refused_without_echoing_them() {
        for input in [
            "carol:s3cret@localhost:5000/repo:v1",
            "carol:s3cret@registry.example/repo",
            "carol:s3cret@registry.example",
            "s3cret@registry.example/repo@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let err = Reference::parse(input).expect_err(input).to_string();
            assert!(!err.contains("s3cret"), "{input}: {err}");
            assert!(err.contains("credentials in a reference"), "{input}: {err}");
        }
        // A short name by digest is not userinfo.
        let by_digest =
            "ubuntu@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        Reference::parse(by_digest).expect(by_digest);
    }

    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn reg(s: &str) -> RegistryRef {
        match Reference::parse(s) {
            Ok(Reference::Registry(r)) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn docker_hub_short_names() {
        let r = reg("alpine");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/alpine", Some("latest"))
        );
        assert_eq!(reg("user/app:1.0").repository, "user/app");
        assert_eq!(reg("index.docker.io/alpine").repository, "library/alpine");
        assert_eq!(reg("index.docker.io/alpine").registry, "docker.io");
    }

    #[test]
    fn hosts_ports_tags_digests() {
        let r = reg("127.0.0.1:5000/a/b:v1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v1"));

        let r = reg(&format!("localhost:5000/x@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().map(|d| d.to_string()).as_deref(), Some(D));

        let r = reg(&format!("localhost/x:t@{D}"));
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert!(r.digest.is_some());
        assert_eq!(r.to_string(), format!("localhost/x:t@{D}"));

        let r = reg("[::1]:5000/x");
        assert_eq!(r.registry, "[::1]:5000");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "UPPER/case",
            "host:5000/repo:bad tag",
            "host:5000/repo:-tag",
            "host:5000/repo@sha256:abc",
            "host:notaport/x",
            "a//b",
            "repo/",
            "x/../y",
            "x\ny",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn oci_layouts() {
        let l = |s: &str| match Reference::parse(s) {
            Ok(Reference::Layout(l)) => l,
            other => panic!("{s}: {other:?}"),
        };
        let x = l("oci:examples/hello");
        assert_eq!((x.path.to_str(), x.tag), (Some("examples/hello"), None));
        let x = l("oci:examples/hello:v1");
        assert_eq!(
            (x.path.to_str(), x.tag.as_deref()),
            (Some("examples/hello"), Some("v1"))
        );
        let x = l(&format!("oci:/tmp/x@{D}"));
        assert_eq!(x.path.to_str(), Some("/tmp/x"));
        assert!(x.digest.is_some());
        let x = l(r"oci:C:\images\x");
        assert_eq!((x.path.to_str(), x.tag), (Some(r"C:\images\x"), None));
        assert!(Reference::parse("oci:").is_err());
        assert!(Reference::parse("oci:dir@sha256:zz").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = Reference::parse(&s);
        }

        #[test]
        fn display_round_trips(
            host in "(localhost|[a-z]{1,8}\\.[a-z]{2,3})(:[0-9]{1,5})?",
            repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
            tag in "[a-z0-9][a-z0-9._-]{0,10}",
        ) {
            let s = format!("{host}/{repo}:{tag}");
            let r = Reference::parse(&s).unwrap();
            proptest::prop_assert_eq!(r.to_string(), s);
        }
    }
}

//! Where a registry's repositories are reached: its mirrors, in order, and
//! the origin last — read from the files nodes already have.
//!
//! - containerd's `hosts.toml` (`DIR/<registry>/hosts.toml`, `DIR` being
//!   `/etc/containerd/certs.d` or `--hosts-dir`; `DIR/_default/hosts.toml`
//!   for registries without their own): `server` (the origin),
//!   `[host."URL"]` tables in file order with `capabilities`,
//!   `skip_verify`, `ca`, `override_path` and `[host."URL".header]`;
//! - containers' `registries.conf` (and `registries.conf.d/*.conf`):
//!   `[[registry]]` with `prefix`, `location`, `insecure`, `blocked` and
//!   `[[registry.mirror]]` with `location`, `insecure`, `pull-from-mirror`.
//!
//! A key ocifs does not know, a URL it cannot use or a value of the wrong
//! type is an error naming the file and the line: a mirror silently
//! dropped would send a fleet to the origin.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use toml::Spanned;

use crate::error::{Error, Result};

/// What a host may be asked (hosts.toml's `capabilities`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Blobs, and manifests by digest.
    pub pull: bool,
    /// Manifests by tag.
    pub resolve: bool,
}

impl Capabilities {
    /// Both.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
    };
}

/// One host a repository is reached through: a mirror, or the origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP (an `http://` URL).
    pub plain_http: bool,
    /// HTTPS first, then plain HTTP if that fails (registries.conf's
    /// `insecure`, for a location without a scheme).
    pub http_fallback: bool,
    /// Where the API answers on the host (`/v2`, or a mirror's prefix).
    pub api_root: String,
    /// The repository on this host, when it differs from the reference's
    /// (a registries.conf location with a namespace).
    pub repository: Option<String>,
    /// What it may be asked.
    pub capabilities: Capabilities,
    /// Accept any TLS certificate.
    pub skip_verify: bool,
    /// Certificate authorities trusted for it, beside the system's.
    pub ca_files: Vec<PathBuf>,
    /// Headers sent with each request to it.
    pub headers: Vec<(String, String)>,
    /// The origin (the last host, never skipped).
    pub origin: bool,
    /// How long a connection to it may take (hosts.toml's `dial_timeout`;
    /// without one, a mirror gets the mirror timeout, 3 s).
    pub dial_timeout: Option<std::time::Duration>,
    /// The file that named it, for messages.
    pub file: Option<PathBuf>,
}

impl Endpoint {
    /// The origin of `registry` as ocifs reaches it without a file.
    pub fn origin(registry: &str, plain_http: bool) -> Endpoint {
        Endpoint {
            host: registry.to_owned(),
            plain_http,
            http_fallback: false,
            api_root: "/v2".into(),
            repository: None,
            capabilities: Capabilities::ALL,
            skip_verify: false,
            ca_files: Vec::new(),
            headers: Vec::new(),
            origin: true,
            dial_timeout: None,
            file: None,
        }
    }

    /// A mirror given by URL alone (`[scheme://]host[:port][/path]`, as a
    /// hosts.toml `[host]` key; `https` by default), asked for everything.
    pub fn mirror(url: &str) -> std::result::Result<Endpoint, String> {
        let (plain_http, host, path) = parse_host_url(url)?;
        let api_root = if path.ends_with("/v2") {
            path
        } else {
            format!("{path}/v2")
        };
        Ok(Endpoint {
            plain_http,
            api_root,
            origin: false,
            ..Endpoint::origin(&host, plain_http)
        })
    }

    /// `host/api-root` with its scheme, for messages and `--stats`.
    pub fn url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}{}", self.host, self.api_root)
    }
}

fn config_error(
    file: &Path,
    text: &str,
    at: Option<std::ops::Range<usize>>,
    detail: String,
) -> Error {
    Error::Config {
        file: file.display().to_string(),
        line: at.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
        detail,
    }
}

fn parse<'a, T: Deserialize<'a>>(file: &Path, text: &'a str) -> Result<T> {
    toml::from_str(text)
        .map_err(|e| config_error(file, text, e.span(), e.message().replace("field", "key")))
}

/// A string or a list of them (hosts.toml's `ca`, a header's value).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A table's entries in file order (toml's `preserve_order`), with the
/// span of each key.
#[derive(Debug)]
struct Ordered<V>(Vec<(Spanned<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

/// What hosts.toml says of one host (the file's top level says it of the
/// server).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFields {
    capabilities: Option<Vec<Spanned<String>>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    client: Option<Spanned<toml::Value>>,
    override_path: Option<bool>,
    header: Option<Ordered<OneOrMany>>,
    dial_timeout: Option<Spanned<String>>,
}

/// A hosts.toml: the server's fields at the top level, beside `server`
/// and the `[host]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    server: Option<Spanned<String>>,
    host: Option<Ordered<HostFields>>,
    capabilities: Option<Vec<Spanned<String>>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    client: Option<Spanned<toml::Value>>,
    override_path: Option<bool>,
    header: Option<Ordered<OneOrMany>>,
    dial_timeout: Option<Spanned<String>>,
}

/// `URL` as hosts.toml writes a host: `[scheme://]host[:port][/path]`.
fn parse_host_url(url: &str) -> std::result::Result<(bool, String, String), String> {
    let (plain_http, rest) = if let Some(r) = url.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (false, r)
    } else if url.contains("://") {
        return Err(format!(
            "{url:?}: only http:// and https:// hosts can be used"
        ));
    } else {
        (false, url)
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let parsed = reqwest::Url::parse(&format!("http://{host}/"))
        .map_err(|e| format!("{url:?} is not a usable URL: {e}"))?;
    if host.is_empty()
        || parsed.host_str().is_none()
        || host.contains(['@', '?', '#'])
        || path.contains(['?', '#'])
    {
        return Err(format!("{url:?} is not a usable host URL"));
    }
    Ok((
        plain_http,
        host.to_ascii_lowercase(),
        path.trim_end_matches('/').to_owned(),
    ))
}

impl HostFields {
    fn endpoint(
        self,
        url: &str,
        origin: bool,
        file: &Path,
        dir: &Path,
        text: &str,
        span: std::ops::Range<usize>,
    ) -> Result<Endpoint> {
        let fail =
            |at: std::ops::Range<usize>, detail: String| config_error(file, text, Some(at), detail);
        let (plain_http, host, path) = parse_host_url(url).map_err(|d| fail(span.clone(), d))?;
        if let Some(c) = &self.client {
            return Err(fail(
                c.span(),
                "client certificates (`client`) are not supported by ocifs yet".into(),
            ));
        }
        let dial_timeout = match &self.dial_timeout {
            None => None,
            Some(t) => Some(parse_duration(t.get_ref()).ok_or_else(|| {
                fail(
                    t.span(),
                    format!(
                        "dial_timeout {:?} is not a duration such as \"3s\" or \"500ms\"",
                        t.get_ref()
                    ),
                )
            })?),
        };
        let mut capabilities = Capabilities {
            pull: false,
            resolve: false,
        };
        match self.capabilities {
            None => capabilities = Capabilities::ALL,
            Some(list) => {
                for c in list {
                    match c.get_ref().as_str() {
                        "pull" => capabilities.pull = true,
                        "resolve" => capabilities.resolve = true,
                        "push" => {}
                        other => {
                            return Err(fail(
                                c.span(),
                                format!("unknown capability {other:?}: pull, resolve or push"),
                            ));
                        }
                    }
                }
            }
        }
        let api_root = if self.override_path.unwrap_or(false) || path.ends_with("/v2") {
            path
        } else {
            format!("{path}/v2")
        };
        let ca_files = self
            .ca
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let p = PathBuf::from(p);
                if p.is_absolute() { p } else { dir.join(p) }
            })
            .collect();
        let mut headers = Vec::new();
        for (name, values) in self.header.map(|h| h.0).unwrap_or_default() {
            if reqwest::header::HeaderName::from_bytes(name.get_ref().as_bytes()).is_err() {
                return Err(fail(
                    name.span(),
                    format!("{:?} is not an HTTP header name", name.get_ref()),
                ));
            }
            for v in values.into_vec() {
                if reqwest::header::HeaderValue::from_str(&v).is_err() {
                    return Err(fail(
                        name.span(),
                        format!("the value of header {:?} cannot be sent", name.get_ref()),
                    ));
                }
                headers.push((name.get_ref().clone(), v));
            }
        }
        Ok(Endpoint {
            host,
            plain_http,
            http_fallback: false,
            api_root,
            repository: None,
            capabilities,
            skip_verify: self.skip_verify.unwrap_or(false),
            ca_files,
            headers,
            origin,
            dial_timeout,
            file: Some(file.to_owned()),
        })
    }
}

/// A duration as containerd writes one in hosts.toml: a number of seconds
/// (`"3s"`, `"1.5s"`) or milliseconds (`"500ms"`), above zero and at most a
/// day.
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let (number, scale) = match text.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (text.strip_suffix('s')?, 1.0),
    };
    let secs = number.trim().parse::<f64>().ok()? * scale;
    (secs > 0.0 && secs <= 86_400.0).then(|| std::time::Duration::from_secs_f64(secs))
}

/// The hosts a `hosts.toml` names for `registry`: its `[host]` tables in
/// order, then the server (by default `https://REGISTRY`, Docker Hub's
/// API host for `docker.io`), which is the origin.
pub fn parse_hosts_toml(registry: &str, file: &Path, text: &str) -> Result<Vec<Endpoint>> {
    let parsed: HostsFile = parse(file, text)?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (url, fields) in parsed.host.map(|h| h.0).unwrap_or_default() {
        let span = url.span();
        out.push(fields.endpoint(url.get_ref(), false, file, dir, text, span)?);
    }
    let (server, span) = match &parsed.server {
        Some(s) => (s.get_ref().clone(), s.span()),
        None if registry == crate::reference::DOCKER_HUB => {
            ("https://registry-1.docker.io".into(), 0..0)
        }
        None => (format!("https://{registry}"), 0..0),
    };
    let top = HostFields {
        capabilities: parsed.capabilities,
        skip_verify: parsed.skip_verify,
        ca: parsed.ca,
        client: parsed.client,
        override_path: parsed.override_path,
        header: parsed.header,
        dial_timeout: parsed.dial_timeout,
    };
    let mut origin = top.endpoint(&server, true, file, dir, text, span)?;
    // The origin is asked whatever its capabilities say: it is the last
    // resort, as containerd's server is.
    origin.capabilities = Capabilities::ALL;
    out.push(origin);
    Ok(out)
}

/// The `hosts.toml` for `registry` under `dir`, if there is one: its own
/// directory (`host:port`, or `host_port_` as containerd spells a port on
/// Windows), else `_default`.
pub fn hosts_toml_for(dir: &Path, registry: &str) -> Result<Option<Vec<Endpoint>>> {
    let mut names = vec![registry.to_owned()];
    if let Some((h, p)) = registry.rsplit_once(':') {
        names.push(format!("{h}_{p}_"));
    }
    names.push("_default".into());
    for name in names {
        let file = dir.join(&name).join("hosts.toml");
        match std::fs::read_to_string(&file) {
            Ok(text) => return parse_hosts_toml(registry, &file, &text).map(Some),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) => {}
            Err(e) => {
                return Err(Error::Io {
                    context: format!("reading {}", file.display()),
                    source: std::sync::Arc::new(e),
                });
            }
        }
    }
    Ok(None)
}

/// When a registries.conf mirror is asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum PullFromMirror {
    #[default]
    All,
    DigestOnly,
    TagOnly,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MirrorFile {
    location: Spanned<String>,
    insecure: Option<bool>,
    pull_from_mirror: Option<PullFromMirror>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RegistryFile {
    prefix: Option<Spanned<String>>,
    location: Option<Spanned<String>>,
    insecure: Option<bool>,
    blocked: Option<bool>,
    mirror_by_digest_only: Option<bool>,
    #[serde(default)]
    mirror: Vec<MirrorFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RegistriesFile {
    #[serde(default)]
    registry: Vec<RegistryFile>,
    // Read by the containers tools for short names; ocifs takes fully
    // qualified references only, so these are accepted and not used.
    #[allow(dead_code)]
    unqualified_search_registries: Option<Vec<String>>,
    #[allow(dead_code)]
    short_name_mode: Option<String>,
    #[allow(dead_code)]
    credential_helpers: Option<Vec<String>>,
    #[allow(dead_code)]
    aliases: Option<toml::Table>,
    #[allow(dead_code)]
    additional_layer_store_auth_helper: Option<String>,
}

/// One `[[registry]]` of a registries.conf, ready to match references.
#[derive(Clone, Debug)]
pub struct RegistryEntry {
    prefix: String,
    location: String,
    insecure: bool,
    blocked: bool,
    mirrors: Vec<(String, bool, bool, bool)>, // location, insecure, digests, tags
    file: PathBuf,
}

/// The `[[registry]]` entries of registries.conf files, later files'
/// entries winning for the same prefix.
#[derive(Clone, Debug, Default)]
pub struct RegistriesConf {
    entries: Vec<RegistryEntry>,
}

fn check_location(file: &Path, text: &str, l: &Spanned<String>) -> Result<String> {
    let s = l.get_ref().trim_end_matches('/');
    if s.is_empty() || s.contains("://") || s.contains(['@', ' ', '?', '#']) {
        return Err(config_error(
            file,
            text,
            Some(l.span()),
            format!(
                "{:?} is not a location (host[:port][/namespace], no scheme)",
                l.get_ref()
            ),
        ));
    }
    let host = s.split('/').next().unwrap_or_default();
    parse_host_url(host).map_err(|d| config_error(file, text, Some(l.span()), d))?;
    Ok(s.to_owned())
}

impl RegistriesConf {
    /// Adds one file's entries.
    pub fn add(&mut self, file: &Path, text: &str) -> Result<()> {
        let parsed: RegistriesFile = parse(file, text)?;
        for r in parsed.registry {
            let location = r
                .location
                .as_ref()
                .map(|l| check_location(file, text, l))
                .transpose()?;
            let prefix = match (&r.prefix, &location) {
                (Some(p), _) => {
                    let p = p.get_ref().trim_end_matches('/').to_owned();
                    if p.is_empty() {
                        return Err(config_error(
                            file,
                            text,
                            r.prefix.as_ref().map(|p| p.span()),
                            "an empty prefix".into(),
                        ));
                    }
                    p
                }
                (None, Some(l)) => l.clone(),
                (None, None) => {
                    return Err(config_error(
                        file,
                        text,
                        None,
                        "a [[registry]] without prefix or location".into(),
                    ));
                }
            };
            let digest_only = r.mirror_by_digest_only.unwrap_or(false);
            let mut mirrors = Vec::new();
            for m in &r.mirror {
                let loc = check_location(file, text, &m.location)?;
                let when = m.pull_from_mirror.unwrap_or_default();
                let digests = when != PullFromMirror::TagOnly;
                let tags = when != PullFromMirror::DigestOnly && !digest_only;
                mirrors.push((loc, m.insecure.unwrap_or(false), digests, tags));
            }
            let entry = RegistryEntry {
                location: location.unwrap_or_else(|| prefix.clone()),
                prefix,
                insecure: r.insecure.unwrap_or(false),
                blocked: r.blocked.unwrap_or(false),
                mirrors,
                file: file.to_owned(),
            };
            self.entries.retain(|e| e.prefix != entry.prefix);
            self.entries.push(entry);
        }
        Ok(())
    }

    /// Reads `file` and, beside it, `registries.conf.d/*.conf` in name
    /// order; a file that does not exist is skipped.
    pub fn load(file: &Path) -> Result<RegistriesConf> {
        let mut conf = RegistriesConf::default();
        let mut files = vec![file.to_owned()];
        if let Some(dir) = file.parent() {
            let mut more: Vec<PathBuf> = std::fs::read_dir(dir.join("registries.conf.d"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            more.sort();
            files.extend(more);
        }
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => conf.add(&f, &text)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Io {
                        context: format!("reading {}", f.display()),
                        source: std::sync::Arc::new(e),
                    });
                }
            }
        }
        Ok(conf)
    }

    /// The hosts for `registry/repository`, mirrors first, if an entry's
    /// prefix matches it (the longest one wins); `None` otherwise. A
    /// blocked registry is an error.
    pub fn endpoints(&self, registry: &str, repository: &str) -> Result<Option<Vec<Endpoint>>> {
        let name = format!("{registry}/{repository}");
        let matches = |prefix: &str| -> Option<usize> {
            if let Some(domain) = prefix.strip_prefix("*.") {
                let host = registry.split(':').next().unwrap_or(registry);
                return host.ends_with(&format!(".{domain}")).then_some(0);
            }
            (name == prefix || name.starts_with(&format!("{prefix}/")) || registry == prefix)
                .then_some(prefix.len())
        };
        let Some(entry) = self
            .entries
            .iter()
            .filter_map(|e| matches(&e.prefix).map(|n| (n, e)))
            .max_by_key(|(n, _)| *n)
            .map(|(_, e)| e)
        else {
            return Ok(None);
        };
        if entry.blocked {
            return Err(Error::Config {
                file: entry.file.display().to_string(),
                line: None,
                detail: format!("{name} is blocked (prefix {:?})", entry.prefix),
            });
        }
        let rest = if entry.prefix.starts_with("*.") {
            repository.to_owned()
        } else {
            name.strip_prefix(&entry.prefix)
                .unwrap_or("")
                .trim_start_matches('/')
                .to_owned()
        };
        let endpoint = |location: &str, insecure: bool, caps: Capabilities, origin: bool| {
            let (host, namespace) = location.split_once('/').unwrap_or((location, ""));
            let repo = match (namespace, rest.as_str()) {
                ("", r) => r.to_owned(),
                (n, "") => n.to_owned(),
                (n, r) => format!("{n}/{r}"),
            };
            let host = if origin && host == crate::reference::DOCKER_HUB {
                "registry-1.docker.io"
            } else {
                host
            };
            Endpoint {
                host: host.to_ascii_lowercase(),
                plain_http: false,
                http_fallback: insecure,
                api_root: "/v2".into(),
                repository: (repo != repository).then_some(repo),
                capabilities: caps,
                skip_verify: insecure,
                ca_files: Vec::new(),
                headers: Vec::new(),
                origin,
                dial_timeout: None,
                file: Some(entry.file.clone()),
            }
        };
        let mut out: Vec<Endpoint> = entry
            .mirrors
            .iter()
            .map(|(loc, insecure, digests, tags)| {
                endpoint(
                    loc,
                    *insecure,
                    Capabilities {
                        pull: *digests,
                        resolve: *tags,
                    },
                    false,
                )
            })
            .collect();
        // A wildcard entry without a location of its own keeps the
        // registry the reference names.
        let origin = if entry.location.starts_with("*.") {
            registry
        } else {
            &entry.location
        };
        out.push(endpoint(origin, entry.insecure, Capabilities::ALL, true));
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(text: &str) -> Result<Vec<Endpoint>> {
        parse_hosts_toml(
            "registry.example:5000",
            Path::new("/etc/h/registry.example:5000/hosts.toml"),
            text,
        )
    }

    #[test]
    fn hosts_toml_names_mirrors_in_file_order_then_the_server() {
        let e = hosts(
            r#"server = "https://registry.example:5000"
ca = "/etc/ca-origin.pem"

[host."http://zeta.mirror:5001"]
  capabilities = ["pull", "resolve"]
  dial_timeout = "500ms"

[host."https://alpha.mirror/cache/path"]
  capabilities = ["pull"]
  skip_verify = true
  ca = ["ca.pem", "/abs/ca2.pem"]
  override_path = true
  [host."https://alpha.mirror/cache/path".header]
    x-dragonfly-registry = "https://registry.example:5000"
    x-two = ["a", "b"]

[host."beta.mirror:443/v2"]
  dial_timeout = "1.5s"
"#,
        )
        .unwrap();
        let names: Vec<_> = e.iter().map(Endpoint::url).collect();
        assert_eq!(
            names,
            [
                "http://zeta.mirror:5001/v2",
                "https://alpha.mirror/cache/path",
                "https://beta.mirror:443/v2",
                "https://registry.example:5000/v2"
            ]
        );
        assert_eq!(e[0].capabilities, Capabilities::ALL);
        assert_eq!(
            e[1].capabilities,
            Capabilities {
                pull: true,
                resolve: false
            }
        );
        assert!(e[1].skip_verify && !e[0].skip_verify);
        assert_eq!(
            e[1].ca_files,
            [
                PathBuf::from("/etc/h/registry.example:5000/ca.pem"),
                PathBuf::from("/abs/ca2.pem")
            ]
        );
        assert_eq!(
            e[1].headers,
            [
                (
                    "x-dragonfly-registry".to_owned(),
                    "https://registry.example:5000".to_owned()
                ),
                ("x-two".to_owned(), "a".to_owned()),
                ("x-two".to_owned(), "b".to_owned())
            ]
        );
        assert_eq!(
            e[2].capabilities,
            Capabilities::ALL,
            "no capabilities: all of them"
        );
        assert!(e[3].origin && !e[0].origin);
        assert_eq!(e[3].ca_files, [PathBuf::from("/etc/ca-origin.pem")]);
        let dials: Vec<_> = e.iter().map(|h| h.dial_timeout).collect();
        assert_eq!(
            dials,
            [
                Some(std::time::Duration::from_millis(500)),
                None,
                Some(std::time::Duration::from_millis(1500)),
                None
            ]
        );
    }

    #[test]
    fn hosts_toml_without_a_server_reaches_the_registry_itself() {
        let e =
            parse_hosts_toml("docker.io", Path::new("h.toml"), "[host.\"http://m:1\"]\n").unwrap();
        assert_eq!(e.last().unwrap().url(), "https://registry-1.docker.io/v2");
        let e = hosts("").unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].url(), "https://registry.example:5000/v2");
    }

    #[test]
    fn bad_hosts_files_are_errors_naming_the_file_and_line() {
        for (text, line, says) in [
            (
                "server = \"https://r\"\n[host.\"http://m\"]\n  capabilites = [\"pull\"]\n",
                3,
                "unknown key `capabilites`",
            ),
            ("\n[host.\"ftp://m\"]\n", 2, "only http:// and https://"),
            (
                "[host.\"http://m\"]\ncapabilities = [\"pull\", \"fetch\"]\n",
                2,
                "unknown capability \"fetch\"",
            ),
            ("[host.\"http://\"]\n", 1, "not a usable"),
            (
                "[host.\"http://m\"]\nskip_verify = \"yes\"\n",
                2,
                "invalid type",
            ),
            (
                "[host.\"http://m\"]\nclient = [\"c.pem\"]\n",
                2,
                "client certificates",
            ),
            (
                "[host.\"http://m\".header]\n\"bad header\" = \"v\"\n",
                2,
                "not an HTTP header name",
            ),
            ("server = \"gopher://r\"\n", 1, "only http:// and https://"),
            (
                "[host.\"http://m\"]\ndial_timeout = \"soon\"\n",
                2,
                "not a duration",
            ),
            (
                "[host.\"http://m\"]\ndial_timeout = \"0s\"\n",
                2,
                "not a duration",
            ),
        ] {
            let e = hosts(text).expect_err(text).to_string();
            assert!(
                e.starts_with(&format!(
                    "/etc/h/registry.example:5000/hosts.toml: line {line}: "
                )) && e.contains(says),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn hosts_dir_lookup_takes_the_registry_then_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("r.example:5000")).unwrap();
        std::fs::create_dir_all(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("r.example:5000/hosts.toml"),
            "[host.\"http://own:1\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "[host.\"http://any:1\"]\n",
        )
        .unwrap();
        let own = hosts_toml_for(dir.path(), "r.example:5000")
            .unwrap()
            .unwrap();
        assert_eq!(own[0].host, "own:1");
        let other = hosts_toml_for(dir.path(), "q.example").unwrap().unwrap();
        assert_eq!(other[0].host, "any:1");
        assert_eq!(other[1].host, "q.example");
        std::fs::remove_dir_all(dir.path().join("_default")).unwrap();
        assert!(hosts_toml_for(dir.path(), "q.example").unwrap().is_none());
    }

    fn conf(text: &str) -> Result<RegistriesConf> {
        let mut c = RegistriesConf::default();
        c.add(Path::new("/etc/containers/registries.conf"), text)?;
        Ok(c)
    }

    #[test]
    fn registries_conf_mirrors_rewrite_the_repository_and_keep_the_origin_last() {
        let c = conf(
            r#"unqualified-search-registries = ["docker.io"]
short-name-mode = "enforcing"

[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "mirror.local:5000/hub"
insecure = true

[[registry.mirror]]
location = "second.local"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "docker.io/library/special"
location = "internal.local/special"
blocked = false

[[registry]]
location = "blocked.example"
blocked = true

[[registry]]
prefix = "*.wild.example"
[[registry.mirror]]
location = "wildmirror.local"
pull-from-mirror = "tag-only"
"#,
        )
        .unwrap();
        let e = c.endpoints("docker.io", "library/alpine").unwrap().unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].host, "mirror.local:5000");
        assert_eq!(e[0].repository.as_deref(), Some("hub/library/alpine"));
        assert!(e[0].http_fallback && e[0].skip_verify);
        assert_eq!(e[1].repository, None);
        assert_eq!(
            e[1].capabilities,
            Capabilities {
                pull: true,
                resolve: false
            }
        );
        assert_eq!(e[2].host, "registry-1.docker.io");
        assert!(e[2].origin);
        // The longest prefix wins; its location replaces the origin.
        let e = c
            .endpoints("docker.io", "library/special/x")
            .unwrap()
            .unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].host.as_str(), e[0].repository.as_deref()),
            ("internal.local", Some("special/x"))
        );
        let err = c
            .endpoints("blocked.example", "a/b")
            .unwrap_err()
            .to_string();
        assert!(err.contains("blocked.example/a/b is blocked"), "{err}");
        let e = c.endpoints("r.wild.example", "a").unwrap().unwrap();
        assert_eq!(
            e[0].capabilities,
            Capabilities {
                pull: false,
                resolve: true
            }
        );
        assert_eq!(e[1].host, "r.wild.example");
        assert!(c.endpoints("quay.io", "a/b").unwrap().is_none());
    }

    #[test]
    fn bad_registries_conf_is_an_error_naming_the_file_and_line() {
        for (text, line, says) in [
            (
                "[[registry]]\nlocation = \"r\"\nmirrors = []\n",
                Some(3),
                "unknown key `mirrors`",
            ),
            (
                "[[registry]]\nlocation = \"https://r\"\n",
                Some(2),
                "no scheme",
            ),
            (
                "[[registry]]\nlocation = \"r\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"sometimes\"\n",
                Some(5),
                "unknown variant",
            ),
            (
                "[[registry]]\ninsecure = true\n",
                None,
                "without prefix or location",
            ),
            ("mirror = 1\n", Some(1), "unknown key `mirror`"),
        ] {
            let e = conf(text).expect_err(text).to_string();
            let at = line.map(|l| format!(": line {l}")).unwrap_or_default();
            assert!(
                e.starts_with(&format!("/etc/containers/registries.conf{at}: "))
                    && e.contains(says),
                "{text:?}: {e}"
            );
        }
    }
}

//! A repository in an OCI distribution registry, over its HTTP API.
//!
//! Every request is a direct GET with reqwest: the auth handshake, manifests
//! (cut off at [`MAX_MANIFEST_SIZE`], so a hostile registry cannot answer
//! with gigabytes; the registry's `Content-Type` is kept), blob ranges and
//! streams, and the tag list. A `401` is answered by one new handshake with
//! the challenge it carried (a token expired, or the resource wants another
//! scope), then the request is tried again.
//!
//! Where credentials go:
//! - to the registry host itself, as HTTP Basic when it asks for it;
//! - to the token service a `Bearer` challenge names (its *realm*) only if
//!   that service is on the registry's own host, or is HTTPS in the
//!   registry's own domain (`registry-1.docker.io` → `auth.docker.io`,
//!   `registry.gitlab.com` → `gitlab.com`), or is a host listed in
//!   `$OCIFS_TRUSTED_REALMS` (comma-separated); never over plain HTTP when
//!   the registry is reached over HTTPS. Any other realm is asked for an
//!   anonymous token (the scope only); a realm that is not an `http(s)` URL
//!   is refused;
//! - never along a redirect to another host: reqwest drops `Authorization`
//!   and `Cookie` when a redirect leaves the origin (blob downloads are
//!   often redirected to a storage service); `Range` is kept.
//!
//! Secrets never reach a log line, an error or a `Debug` output: header
//! values holding them are marked sensitive, and the types holding them
//! print `<redacted>`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, HeaderValue, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::{Response, Url};

use super::{BlobStream, FetchedManifest, Selector, Source, nearby_tags, skip_bytes};
use crate::credentials::Credentials;
use crate::digest::Digest;
use crate::error::{Error, Result, cause};
use crate::manifest::{Descriptor, MAX_MANIFEST_SIZE, media_type};
use crate::reference::{DOCKER_HUB, RegistryRef};
use crate::retry::RetryPolicy;

/// Where Docker Hub's registry API answers.
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// The environment variable listing token-service hosts that may receive
/// credentials although they are outside the registry's domain.
pub const TRUSTED_REALMS_ENV: &str = "OCIFS_TRUSTED_REALMS";

/// The largest token-service answer or tag list read.
const MAX_SMALL_BODY: u64 = 4 << 20;

/// How to talk to a registry.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Plain HTTP instead of HTTPS.
    pub plain_http: bool,
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// Credentials, if any (anonymous otherwise).
    pub credentials: Option<Credentials>,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Longest silence on a connection before an attempt is abandoned.
    pub read_timeout: Duration,
    /// Longest wait for a TCP/TLS connection.
    pub connect_timeout: Duration,
    /// Ask for push access as well as pull (`ocifs index`).
    pub push: bool,
    /// Where the API answers on the host, when not at `/v2` (a mirror's
    /// path prefix, from hosts.toml): requests go to `ROOT/REPO/…`.
    pub api_root: Option<String>,
    /// Headers sent with every request (hosts.toml's `[host."…".header]`).
    pub headers: Vec<(String, String)>,
    /// PEM files of certificate authorities trusted beside the system's.
    pub ca_files: Vec<std::path::PathBuf>,
    /// A host in front of the origin (a mirror): a `200` with the whole
    /// blob to a request for part of one is [`Error::RangeIgnored`]
    /// rather than read through to the offset.
    pub mirror: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            plain_http: false,
            insecure: false,
            credentials: None,
            retry: RetryPolicy::default(),
            read_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            push: false,
            api_root: None,
            headers: Vec::new(),
            ca_files: Vec::new(),
            mirror: false,
        }
    }
}

/// The `Authorization` value sent to the registry. `Debug` hides it.
#[derive(Clone, Default)]
struct AuthHeader(Option<HeaderValue>);

impl fmt::Debug for AuthHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(<redacted>)"
        } else {
            "None"
        })
    }
}

/// A header value that holds a secret: marked sensitive, so that no
/// `Debug` of a request or header map shows it.
fn secret_header(value: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value).map_err(|_| Error::Credentials {
        detail: "the credentials hold characters an HTTP header cannot carry".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// What a `WWW-Authenticate` header asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Challenge {
    /// A token from the service at `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
    /// HTTP Basic credentials, sent to the registry itself.
    Basic,
}

/// The first challenge ocifs can answer in a `WWW-Authenticate` value
/// (`Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`).
fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (mut realm, mut service) = (None, None);
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (val, after) = if let Some(quoted) = after.strip_prefix('"') {
            // A quoted string; `\` escapes the next character.
            let mut val = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => val.push(c),
                }
            }
            (val, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(val),
            "service" => service = Some(val),
            _ => {}
        }
        rest = after.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
    })
}

/// Whether the registry's credentials may go to a token service.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RealmTrust {
    /// Yes.
    Credentials,
    /// No: the token request goes without them, for the reason given.
    Withheld(String),
}

/// The host part of `host[:port]` (IPv6 in brackets), lowercase.
fn host_only(host_port: &str) -> String {
    let h = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    h.to_ascii_lowercase()
}

/// Whether `realm_host` is in the domain of `registry_host`: the registry
/// host without its first label (`registry-1.docker.io` → `docker.io`), if
/// that still has two labels, and the realm is it or under it.
fn same_domain(registry_host: &str, realm_host: &str) -> bool {
    if registry_host.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    let Some((_, parent)) = registry_host.split_once('.') else {
        return false;
    };
    parent.contains('.') && (realm_host == parent || realm_host.ends_with(&format!(".{parent}")))
}

/// The credential rule for token services (see the module docs). `Err` is
/// a realm that is refused altogether.
fn realm_trust(
    registry_scheme: &str,
    registry_host: &str,
    realm: &Url,
    trusted: &[String],
) -> std::result::Result<RealmTrust, String> {
    if !matches!(realm.scheme(), "http" | "https") {
        return Err(format!(
            "the registry named a token service at a {}: URL; only http and https are used",
            realm.scheme()
        ));
    }
    let realm_host = realm.host_str().unwrap_or_default().to_ascii_lowercase();
    let realm_host = realm_host.trim_start_matches('[').trim_end_matches(']');
    let registry_host = host_only(registry_host);
    if registry_scheme == "https" && realm.scheme() == "http" {
        return Ok(RealmTrust::Withheld(format!(
            "the token service {realm_host} is plain HTTP, the registry HTTPS"
        )));
    }
    if realm_host == registry_host
        || trusted.iter().any(|t| t.eq_ignore_ascii_case(realm_host))
        || (realm.scheme() == "https" && same_domain(&registry_host, realm_host))
    {
        return Ok(RealmTrust::Credentials);
    }
    Ok(RealmTrust::Withheld(format!(
        "the token service {realm_host} is another host than the registry {registry_host}{}; \
         list it in ${TRUSTED_REALMS_ENV} if you trust it with these credentials",
        if realm.scheme() == "https" {
            ", outside its domain"
        } else {
            ", over plain HTTP"
        }
    )))
}

/// A repository in a registry.
pub struct RegistrySource {
    reference: RegistryRef,
    host: String,
    scheme: &'static str,
    http: reqwest::Client,
    auth: RwLock<AuthHeader>,
    trusted_realms: Vec<String>,
    options: RegistryOptions,
    api_root: String,
    wire: Arc<AtomicU64>,
}

impl fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySource")
            .field("reference", &self.reference.to_string())
            .field("host", &self.host)
            .field("auth", &self.auth_header())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The error chain of a reqwest error, which its Display alone hides.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}

/// The most characters of a registry's error body an error message shows.
const MAX_ECHOED_BODY: usize = 300;

/// Redirects followed for one request before giving up.
const MAX_REDIRECTS: usize = 10;

/// Follows redirects to http and https URLs only: any other scheme (ftp:,
/// file:) fails at once, naming it, instead of being retried as a transfer
/// error until the timeout.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let scheme = attempt.url().scheme().to_owned();
        if !matches!(scheme.as_str(), "http" | "https") {
            let to = crate::error::printable(scheme.as_bytes(), 32);
            attempt.error(format!(
                "redirected to a {to}: URL; only http and https redirects are followed"
            ))
        } else if attempt.previous().len() >= MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// At most `limit` bytes of a body; `Err` with the size seen once over.
async fn read_bounded(response: Response, limit: u64) -> std::result::Result<Bytes, BodyError> {
    let mut body = BytesMut::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Transfer)?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(BodyError::TooLarge((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

enum BodyError {
    Transfer(reqwest::Error),
    TooLarge(u64),
}

/// The start of a `Content-Range: bytes a-b/n` value.
fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let range = v.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

impl RegistrySource {
    /// Connects to the repository of `reference` and authenticates.
    pub async fn connect(reference: &RegistryRef, options: RegistryOptions) -> Result<Self> {
        install_crypto_provider();
        let host = if reference.registry == DOCKER_HUB {
            DOCKER_HUB_HOST.to_owned()
        } else {
            reference.registry.clone()
        };
        let scheme = if options.plain_http { "http" } else { "https" };
        let mut builder = reqwest::Client::builder()
            .danger_accept_invalid_certs(options.insecure)
            .read_timeout(options.read_timeout)
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("ocifs/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect_policy());
        if !options.headers.is_empty() {
            let mut headers = HeaderMap::new();
            for (name, value) in &options.headers {
                let bad = |what: &str| Error::InvalidOption {
                    option: "header".into(),
                    value: format!("{name:?}"),
                    reason: format!("not a valid HTTP header {what}"),
                };
                let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad("name"))?;
                let value = HeaderValue::from_str(value).map_err(|_| bad("value"))?;
                headers.append(name, value);
            }
            builder = builder.default_headers(headers);
        }
        for file in &options.ca_files {
            let pem = std::fs::read(file).map_err(|e| Error::Io {
                context: format!("reading the CA file {}", file.display()),
                source: Arc::new(e),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::InvalidOption {
                    option: "ca".into(),
                    value: file.display().to_string(),
                    reason: format!("not PEM certificates: {}", chain(&e)),
                })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| Error::Unreachable {
            registry: host.clone(),
            detail: format!("cannot set up the HTTP client: {}", chain(&e)),
            source: cause(e),
        })?;
        let api_root = options
            .api_root
            .as_deref()
            .map(|r| r.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| "/v2".to_owned());
        let trusted_realms = std::env::var(TRUSTED_REALMS_ENV)
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let source = RegistrySource {
            reference: reference.clone(),
            host,
            scheme,
            http,
            auth: RwLock::new(AuthHeader::default()),
            trusted_realms,
            options,
            api_root,
            wire: Arc::new(AtomicU64::new(0)),
        };
        source
            .options
            .retry
            .run(&format!("authenticating to {}", source.host), || {
                source.authenticate(None)
            })
            .await?;
        Ok(source)
    }

    /// The reference this source was opened for.
    pub fn reference(&self) -> &RegistryRef {
        &self.reference
    }

    fn auth_header(&self) -> AuthHeader {
        self.auth.read().map(|a| a.clone()).unwrap_or_default()
    }

    fn set_auth(&self, value: Option<HeaderValue>) {
        if let Ok(mut a) = self.auth.write() {
            *a = AuthHeader(value);
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}://{}{}/{}/{path}",
            self.scheme, self.host, self.api_root, self.reference.repository
        )
    }

    /// The bytes of manifests and blobs that arrived from this host,
    /// whether kept or not (those skipped to reach an offset too).
    pub fn wire_bytes(&self) -> u64 {
        self.wire.load(Ordering::Relaxed)
    }

    /// The host and port requests go to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The handshake: answers `challenge` (from a `401`), or the one `GET
    /// /v2/` brings, and remembers the `Authorization` value to send.
    async fn authenticate(&self, challenge: Option<HeaderValue>) -> Result<()> {
        if let Some(Credentials::Token(t)) = &self.options.credentials {
            self.set_auth(Some(secret_header(&format!("Bearer {t}"))?));
            return Ok(());
        }
        let challenge = match challenge {
            Some(c) => c,
            None => {
                let what = format!("the API root of {}", self.host);
                let response = self
                    .http
                    .get(format!("{}://{}{}/", self.scheme, self.host, self.api_root))
                    .send()
                    .await
                    .map_err(|e| self.map_reqwest(e, &what))?;
                let status = response.status().as_u16();
                if (200..300).contains(&status) {
                    // Open: no header until a 401 says otherwise.
                    self.set_auth(None);
                    return Ok(());
                }
                if status != 401 {
                    return Err(self.status_error(status, &what, response).await);
                }
                match response.headers().get(WWW_AUTHENTICATE) {
                    Some(c) => c.clone(),
                    None => {
                        return Err(self.auth_error("it answered 401 with no challenge".into()));
                    }
                }
            }
        };
        let text = challenge.to_str().unwrap_or_default();
        match parse_challenge(text) {
            Some(Challenge::Bearer { realm, service }) => {
                let token = self.token(&realm, service.as_deref()).await?;
                self.set_auth(Some(secret_header(&format!("Bearer {token}"))?));
            }
            Some(Challenge::Basic) => match &self.options.credentials {
                Some(Credentials::Basic { username, password }) => {
                    use base64::Engine as _;
                    let encoded = base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"));
                    self.set_auth(Some(secret_header(&format!("Basic {encoded}"))?));
                }
                _ => self.set_auth(None),
            },
            None => {
                let scheme = text.split_whitespace().next().unwrap_or_default();
                return Err(self.auth_error(format!(
                    "it asks for {scheme:?} authentication, which ocifs does not speak"
                )));
            }
        }
        Ok(())
    }

    /// A pull token for the repository from the token service at `realm`.
    async fn token(&self, realm: &str, service: Option<&str>) -> Result<String> {
        let mut url = Url::parse(realm).map_err(|e| {
            self.auth_error(format!(
                "it named a token service that is not a URL ({realm:?}: {e})"
            ))
        })?;
        let trust = realm_trust(self.scheme, &self.host, &url, &self.trusted_realms)
            .map_err(|reason| self.auth_error(reason))?;
        let actions = if self.options.push {
            "pull,push"
        } else {
            "pull"
        };
        url.query_pairs_mut().append_pair(
            "scope",
            &format!("repository:{}:{actions}", self.reference.repository),
        );
        if let Some(service) = service {
            url.query_pairs_mut().append_pair("service", service);
        }
        let origin = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        let mut request = self.http.get(url);
        let mut withheld = None;
        if let Some(Credentials::Basic { username, password }) = &self.options.credentials {
            match trust {
                RealmTrust::Credentials => request = request.basic_auth(username, Some(password)),
                RealmTrust::Withheld(reason) => {
                    tracing::warn!(
                        registry = %self.host,
                        "credentials not sent to the token service: {reason}; asking for an anonymous token"
                    );
                    withheld = Some(reason);
                }
            }
        }
        let what = format!("a token from {origin}");
        let response = request
            .send()
            .await
            .map_err(|e| self.map_reqwest(e, &what))?;
        let status = response.status().as_u16();
        if status != 200 {
            if status == 429 || status >= 500 {
                return Err(self.status_error(status, &what, response).await);
            }
            let mut detail = format!("the token service {origin} answered {status}");
            if let Some(reason) = withheld {
                detail.push_str(&format!(" to a request without credentials ({reason})"));
            }
            return Err(match &self.options.credentials {
                None => Error::AuthRequired {
                    registry: self.reference.registry.clone(),
                },
                Some(_) => Error::AuthFailed {
                    registry: self.reference.registry.clone(),
                    detail,
                },
            });
        }
        let body = match read_bounded(response, MAX_SMALL_BODY).await {
            Ok(b) => b,
            Err(BodyError::Transfer(e)) => return Err(self.map_body(e, &what)),
            Err(BodyError::TooLarge(size)) => {
                return Err(Error::TooLarge {
                    what,
                    size,
                    limit: MAX_SMALL_BODY,
                });
            }
        };
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| Error::Malformed {
            what: format!("the answer of the token service {origin}"),
            detail: e.to_string(),
            source: cause(e),
        })?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Malformed {
                what: format!("the answer of the token service {origin}"),
                detail: "no token in it".into(),
                source: None,
            })
    }

    /// A GET to the registry with its `Authorization`; a `401` brings one
    /// new handshake with the challenge it carried, then one more try.
    async fn get(&self, url: &str, headers: HeaderMap, what: &str) -> Result<Response> {
        self.send(reqwest::Method::GET, url, headers, None, what)
            .await
    }

    /// A request to the registry, with its `Authorization` only if `url`
    /// is on the registry's own origin (an upload location may be
    /// elsewhere); a `401` brings one new handshake, then one more try.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
        what: &str,
    ) -> Result<Response> {
        let own = self.is_own_origin(url);
        let mut reauthed = false;
        loop {
            let mut request = self
                .http
                .request(method.clone(), url)
                .headers(headers.clone());
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            if own && let Some(v) = self.auth_header().0 {
                request = request.header(AUTHORIZATION, v);
            }
            let response = request
                .send()
                .await
                .map_err(|e| self.map_reqwest(e, what))?;
            if response.status().as_u16() == 401 && !reauthed && own {
                reauthed = true;
                let challenge = response.headers().get(WWW_AUTHENTICATE).cloned();
                if challenge.is_some() {
                    self.authenticate(challenge).await?;
                    continue;
                }
            }
            return Ok(response);
        }
    }

    /// Whether `url` is on the registry's scheme, host and port.
    fn is_own_origin(&self, url: &str) -> bool {
        let own = format!("{}://{}/", self.scheme, self.host);
        match (Url::parse(url), Url::parse(&own)) {
            (Ok(a), Ok(b)) => a.origin() == b.origin(),
            _ => false,
        }
    }

    fn auth_error(&self, detail: String) -> Error {
        match self.options.credentials {
            None => Error::AuthRequired {
                registry: self.reference.registry.clone(),
            },
            Some(_) => Error::AuthFailed {
                registry: self.reference.registry.clone(),
                detail,
            },
        }
    }

    /// The error for an unexpected status, with the start of the body.
    async fn status_error(&self, status: u16, what: &str, response: Response) -> Error {
        if matches!(status, 401 | 403) {
            return self.auth_error(format!("the registry answered {status} for {what}"));
        }
        // A registry's words go to a terminal: control characters (escape
        // sequences among them) are shown escaped, and only the start.
        let detail = match read_bounded(response, 64 << 10).await {
            Ok(body) => crate::error::printable(&body, MAX_ECHOED_BODY),
            Err(_) => String::new(),
        };
        Error::Registry {
            registry: self.host.clone(),
            status,
            what: what.to_owned(),
            detail,
            source: None,
        }
    }

    fn map_reqwest(&self, e: reqwest::Error, what: &str) -> Error {
        if e.is_redirect() {
            // Refused by the redirect policy: not transient, never retried.
            Error::Malformed {
                what: format!("redirect of {what} from {}", self.host),
                detail: chain(&e),
                source: cause(e),
            }
        } else if e.is_timeout() {
            Error::Timeout {
                what: format!("{what} from {}", self.host),
                after: self.options.read_timeout,
            }
        } else if e.is_connect() {
            Error::Unreachable {
                registry: self.host.clone(),
                detail: chain(&e),
                source: cause(e),
            }
        } else if let Some(status) = e.status() {
            Error::Registry {
                registry: self.host.clone(),
                status: status.as_u16(),
                what: what.to_owned(),
                detail: chain(&e),
                source: cause(e),
            }
        } else {
            Error::Transfer {
                registry: self.host.clone(),
                what: what.to_owned(),
                detail: chain(&e),
                source: cause(e),
            }
        }
    }

    /// An error while reading a body: it broke off, or went silent.
    fn map_body(&self, e: reqwest::Error, what: &str) -> Error {
        if e.is_timeout() {
            Error::Timeout {
                what: format!("{what} from {}", self.host),
                after: self.options.read_timeout,
            }
        } else {
            Error::Transfer {
                registry: self.host.clone(),
                what: what.to_owned(),
                detail: chain(&e),
                source: cause(e),
            }
        }
    }

    fn manifest_url(&self, selector: &Selector) -> String {
        let reference = match selector {
            Selector::Tag(t) => t.clone(),
            Selector::Digest(d) => d.to_string(),
        };
        self.url(&format!("manifests/{reference}"))
    }

    async fn manifest_once(&self, selector: &Selector) -> Result<FetchedManifest> {
        let what = format!("manifest {}{selector}", self.reference.name());
        let mut headers = HeaderMap::new();
        if let Ok(accept) = HeaderValue::from_str(&media_type::ALL_MANIFESTS.join(", ")) {
            headers.insert(ACCEPT, accept);
        }
        let response = self
            .get(&self.manifest_url(selector), headers, &what)
            .await?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            404 => {
                let nearby = match selector {
                    Selector::Tag(t) => nearby_tags(t, &self.tags().await.unwrap_or_default()),
                    Selector::Digest(_) => Vec::new(),
                };
                return Err(Error::ManifestNotFound {
                    reference: format!("{}{selector}", self.reference.name()),
                    nearby,
                });
            }
            _ => return Err(self.status_error(status, &what, response).await),
        }
        let headers = response.headers().clone();
        if let Some(len) = response.content_length()
            && len > MAX_MANIFEST_SIZE
        {
            return Err(Error::TooLarge {
                what,
                size: len,
                limit: MAX_MANIFEST_SIZE,
            });
        }
        let bytes = match read_bounded(response, MAX_MANIFEST_SIZE).await {
            Ok(b) => b,
            Err(BodyError::Transfer(e)) => return Err(self.map_body(e, &what)),
            Err(BodyError::TooLarge(size)) => {
                return Err(Error::TooLarge {
                    what,
                    size,
                    limit: MAX_MANIFEST_SIZE,
                });
            }
        };
        self.wire.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let digest = Digest::of(&bytes);
        if let Selector::Digest(expected) = selector
            && expected != &digest
        {
            return Err(Error::digest_mismatch(what, expected, digest));
        }
        // A registry that states a digest must state the true one.
        if let Some(claimed) = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && let Ok(claimed) = claimed.parse::<Digest>()
            && claimed != digest
        {
            return Err(Error::digest_mismatch(
                format!("{what} (Docker-Content-Digest header)"),
                claimed,
                digest,
            ));
        }
        let media_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        Ok(FetchedManifest {
            bytes,
            digest,
            media_type,
        })
    }

    /// One request for `blob` from `offset` (to `offset + len` if given):
    /// the body as a stream that starts at `offset`, whether the registry
    /// honoured the range (`206`) or sent the whole blob (`200`).
    async fn open_blob(
        &self,
        blob: &Descriptor,
        offset: u64,
        len: Option<u64>,
    ) -> Result<BlobStream> {
        let digest = blob.digest.to_string();
        let what = format!("blob {digest}");
        let range = match len {
            Some(len) => format!("bytes={offset}-{}", offset + len.max(1) - 1),
            None => format!("bytes={offset}-"),
        };
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&range) {
            headers.insert(RANGE, v);
        }
        let response = self
            .get(&self.url(&format!("blobs/{digest}")), headers, &what)
            .await?;
        let status = response.status().as_u16();
        let skip = match status {
            206 => {
                let start = content_range_start(response.headers());
                if start != Some(offset) {
                    return Err(Error::Transfer {
                        registry: self.host.clone(),
                        what,
                        detail: format!(
                            "asked for {range}, the answer is {}",
                            response
                                .headers()
                                .get(CONTENT_RANGE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("without a Content-Range")
                        ),
                        source: None,
                    });
                }
                0
            }
            // A mirror that ignores Range is not read through to the
            // offset: the caller asks another host.
            200 if self.options.mirror && (offset > 0 || len.is_some()) => {
                return Err(Error::RangeIgnored {
                    registry: self.host.clone(),
                    what,
                });
            }
            // The registry ignored Range and sends the whole blob.
            200 => offset,
            404 => {
                return Err(Error::BlobNotFound {
                    digest,
                    source_name: self.reference.name(),
                });
            }
            _ => return Err(self.status_error(status, &what, response).await),
        };
        let host = self.host.clone();
        let timeout = self.options.read_timeout;
        let wire = self.wire.clone();
        let body = response.bytes_stream().inspect_ok(move |piece| {
            wire.fetch_add(piece.len() as u64, Ordering::Relaxed);
        });
        let stream: BlobStream = Box::pin(body.map_err(move |e| {
            if e.is_timeout() {
                Error::Timeout {
                    what: format!("{what} from {host}"),
                    after: timeout,
                }
            } else {
                Error::Transfer {
                    registry: host.clone(),
                    what: what.clone(),
                    detail: chain(&e),
                    source: cause(e),
                }
            }
        }));
        Ok(skip_bytes(stream, skip))
    }

    async fn read_range_once(&self, blob: &Descriptor, offset: u64, want: u64) -> Result<Bytes> {
        let mut stream = self.open_blob(blob, offset, Some(want)).await?;
        let mut out = BytesMut::with_capacity(want as usize);
        while (out.len() as u64) < want {
            let Some(chunk) = stream.try_next().await? else {
                break;
            };
            let room = (want - out.len() as u64) as usize;
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if (out.len() as u64) < want {
            return Err(Error::ShortRead {
                digest: blob.digest.to_string(),
                offset,
                expected: want,
                got: out.len() as u64,
            });
        }
        Ok(out.freeze())
    }
}

#[async_trait]
impl Source for RegistrySource {
    fn name(&self) -> String {
        self.reference.name()
    }

    fn is_remote(&self) -> bool {
        true
    }

    async fn manifest(&self, selector: &Selector) -> Result<FetchedManifest> {
        let what = format!("fetching manifest {}{selector}", self.reference.name());
        self.options
            .retry
            .run(&what, || self.manifest_once(selector))
            .await
    }

    async fn read_range(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        let want = len.min(blob.size.saturating_sub(offset));
        if want == 0 {
            return Ok(Bytes::new());
        }
        let what = format!("reading {want} bytes at {offset} of {}", blob.digest);
        self.options
            .retry
            .run(&what, || self.read_range_once(blob, offset, want))
            .await
    }

    async fn stream(&self, blob: &Descriptor) -> Result<BlobStream> {
        self.stream_from(blob, 0).await
    }

    async fn stream_from(&self, blob: &Descriptor, offset: u64) -> Result<BlobStream> {
        let what = format!("opening blob {} from byte {offset}", blob.digest);
        self.options
            .retry
            .run(&what, || self.open_blob(blob, offset, None))
            .await
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.options.retry
    }

    fn wire(&self) -> Vec<super::HostBytes> {
        vec![super::HostBytes {
            host: format!("{}://{}{}", self.scheme, self.host, self.api_root),
            received: self.wire_bytes(),
        }]
    }

    async fn referrers(&self, subject: &Digest, artifact_type: &str) -> Result<Vec<Descriptor>> {
        let what = format!("listing the referrers of {subject}");
        self.options
            .retry
            .run(&what, || self.referrers_once(subject, artifact_type))
            .await
    }

    async fn tags(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let what = format!("the tag list of {}", self.reference.name());
        self.options
            .retry
            .run(&what, || async {
                let response = self
                    .get(&self.url("tags/list"), HeaderMap::new(), &what)
                    .await?;
                let status = response.status().as_u16();
                if status != 200 {
                    return Err(self.status_error(status, &what, response).await);
                }
                let body = match read_bounded(response, MAX_SMALL_BODY).await {
                    Ok(b) => b,
                    Err(BodyError::Transfer(e)) => return Err(self.map_body(e, &what)),
                    Err(BodyError::TooLarge(size)) => {
                        return Err(Error::TooLarge {
                            what: what.clone(),
                            size,
                            limit: MAX_SMALL_BODY,
                        });
                    }
                };
                let list: TagList =
                    serde_json::from_slice(&body).map_err(|e| Error::Malformed {
                        what: what.clone(),
                        detail: e.to_string(),
                        source: cause(e),
                    })?;
                Ok(list.tags.unwrap_or_default())
            })
            .await
    }
}

/// The tag under which a registry without the referrers API keeps the
/// referrers of `subject` (OCI distribution spec 1.1).
fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// Pushing, for `ocifs index`: blobs by monolithic upload, manifests by
/// tag or digest. Nothing else in ocifs writes to a registry.
impl RegistrySource {
    /// Whether the repository holds blob `digest`.
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let what = format!("checking for blob {digest}");
        let url = self.url(&format!("blobs/{digest}"));
        let response = self
            .send(reqwest::Method::HEAD, &url, HeaderMap::new(), None, &what)
            .await?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(self.status_error(status, &what, response).await),
        }
    }

    /// Uploads `bytes` as blob `digest` (their sha256), unless the
    /// repository has it already.
    pub async fn push_blob(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        if self.has_blob(digest).await? {
            return Ok(());
        }
        let what = format!("starting the upload of blob {digest}");
        let response = self
            .send(
                reqwest::Method::POST,
                &self.url("blobs/uploads/"),
                HeaderMap::new(),
                Some(Bytes::new()),
                &what,
            )
            .await?;
        let status = response.status().as_u16();
        if status != 202 {
            return Err(self.status_error(status, &what, response).await);
        }
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Malformed {
                what: what.clone(),
                detail: "the registry answered 202 without a Location".into(),
                source: None,
            })?;
        let base = Url::parse(&format!("{}://{}/", self.scheme, self.host)).map_err(|e| {
            Error::Malformed {
                what: what.clone(),
                detail: e.to_string(),
                source: cause(e),
            }
        })?;
        let mut url = base.join(location).map_err(|e| Error::Malformed {
            what: what.clone(),
            detail: format!("the upload location {location:?} is not a URL: {e}"),
            source: cause(e),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Malformed {
                what,
                detail: format!("the upload location {location:?} is not http(s)"),
                source: None,
            });
        }
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let what = format!("uploading blob {digest}");
        let response = self
            .send(
                reqwest::Method::PUT,
                url.as_str(),
                headers,
                Some(bytes),
                &what,
            )
            .await?;
        match response.status().as_u16() {
            201 | 204 => Ok(()),
            status => Err(self.status_error(status, &what, response).await),
        }
    }

    /// Puts manifest `bytes` of `media_type` under `reference` (a tag, or
    /// its digest); returns its digest.
    pub async fn push_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest> {
        Ok(self.put_manifest(reference, media_type, bytes).await?.0)
    }

    /// Pushes `manifest` (an OCI image manifest with a `subject`, of
    /// `artifact_type`) as a referrer of manifest `subject`: by its digest,
    /// and, where the registry does not keep referrers itself (its answer
    /// has no `OCI-Subject`), into the fallback tag's index
    /// (`sha256-<hex>` of the subject). Returns whether the registry keeps
    /// them itself.
    pub async fn push_referrer(
        &self,
        manifest: Bytes,
        subject: &Digest,
        artifact_type: &str,
    ) -> Result<bool> {
        let size = manifest.len() as u64;
        let (digest, api) = self
            .put_manifest(
                &Digest::of(&manifest).to_string(),
                media_type::OCI_MANIFEST,
                manifest,
            )
            .await?;
        if api {
            return Ok(true);
        }
        let tag = fallback_tag(subject);
        let what = format!("the referrers tag {tag}");
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(media_type::OCI_INDEX));
        let response = self
            .get(&self.url(&format!("manifests/{tag}")), headers, &what)
            .await?;
        let mut index: serde_json::Value = match response.status().as_u16() {
            200 => {
                let body = self.small_body(response, &what, MAX_MANIFEST_SIZE).await?;
                serde_json::from_slice(&body).map_err(|e| Error::Malformed {
                    what: what.clone(),
                    detail: e.to_string(),
                    source: cause(e),
                })?
            }
            404 => serde_json::json!({
                "schemaVersion": 2,
                "mediaType": media_type::OCI_INDEX,
                "manifests": [],
            }),
            status => return Err(self.status_error(status, &what, response).await),
        };
        let entries = index
            .get_mut("manifests")
            .and_then(|m| m.as_array_mut())
            .ok_or_else(|| Error::Malformed {
                what: what.clone(),
                detail: "not an index (no manifests list)".into(),
                source: None,
            })?;
        let named = digest.to_string();
        if !entries
            .iter()
            .any(|e| e["digest"].as_str() == Some(named.as_str()))
        {
            entries.push(serde_json::json!({
                "mediaType": media_type::OCI_MANIFEST,
                "digest": named,
                "size": size,
                "artifactType": artifact_type,
            }));
        }
        let bytes = Bytes::from(serde_json::to_vec(&index).unwrap_or_default());
        self.put_manifest(&tag, media_type::OCI_INDEX, bytes)
            .await?;
        Ok(false)
    }

    /// A body of at most `limit` bytes.
    async fn small_body(&self, response: Response, what: &str, limit: u64) -> Result<Bytes> {
        match read_bounded(response, limit).await {
            Ok(b) => Ok(b),
            Err(BodyError::Transfer(e)) => Err(self.map_body(e, what)),
            Err(BodyError::TooLarge(size)) => Err(Error::TooLarge {
                what: what.to_owned(),
                size,
                limit,
            }),
        }
    }

    /// The referrers of `subject` of `artifact_type`: the registry's
    /// referrers API, else its fallback tag.
    async fn referrers_once(
        &self,
        subject: &Digest,
        artifact_type: &str,
    ) -> Result<Vec<Descriptor>> {
        let what = format!("the referrers of {subject}");
        let mut url = Url::parse(&self.url(&format!("referrers/{subject}"))).map_err(|e| {
            Error::Malformed {
                what: what.clone(),
                detail: e.to_string(),
                source: cause(e),
            }
        })?;
        url.query_pairs_mut()
            .append_pair("artifactType", artifact_type);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(media_type::OCI_INDEX));
        let response = self.get(url.as_str(), headers.clone(), &what).await?;
        let body = match response.status().as_u16() {
            200 => self.small_body(response, &what, MAX_MANIFEST_SIZE).await?,
            404 => {
                // No referrers API (distribution 2.8): the fallback tag.
                let tag = fallback_tag(subject);
                let what = format!("the referrers tag {tag}");
                let response = self
                    .get(&self.url(&format!("manifests/{tag}")), headers, &what)
                    .await?;
                match response.status().as_u16() {
                    200 => self.small_body(response, &what, MAX_MANIFEST_SIZE).await?,
                    404 => return Ok(Vec::new()),
                    status => return Err(self.status_error(status, &what, response).await),
                }
            }
            status => return Err(self.status_error(status, &what, response).await),
        };
        let index: crate::manifest::Index =
            serde_json::from_slice(&body).map_err(|e| Error::Malformed {
                what,
                detail: e.to_string(),
                source: cause(e),
            })?;
        Ok(index
            .manifests
            .into_iter()
            .filter(|d| d.artifact_type.as_deref() == Some(artifact_type))
            .collect())
    }

    async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(Digest, bool)> {
        let digest = Digest::of(&bytes);
        let what = format!("pushing manifest {}:{reference}", self.reference.name());
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(media_type).map_err(|_| Error::Malformed {
            what: what.clone(),
            detail: format!("media type {media_type:?} cannot be a header"),
            source: None,
        })?;
        headers.insert(CONTENT_TYPE, value);
        let response = self
            .send(
                reqwest::Method::PUT,
                &self.url(&format!("manifests/{reference}")),
                headers,
                Some(bytes),
                &what,
            )
            .await?;
        let api = response.headers().contains_key("oci-subject");
        match response.status().as_u16() {
            201 | 200 | 204 => Ok((digest, api)),
            status => Err(self.status_error(status, &what, response).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer service="a,b" , realm="http://h/t\"x""#),
            Some(Challenge::Bearer {
                realm: "http://h/t\"x".into(),
                service: Some("a,b".into()),
            })
        );
        assert_eq!(
            parse_challenge("Bearer realm=http://h/token"),
            Some(Challenge::Bearer {
                realm: "http://h/token".into(),
                service: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(""), None);
    }

    fn trust(scheme: &str, registry: &str, realm: &str) -> std::result::Result<RealmTrust, String> {
        realm_trust(scheme, registry, &Url::parse(realm).unwrap(), &[])
    }

    #[test]
    fn credentials_go_to_the_registry_host_or_its_domain_over_https() {
        use RealmTrust::Credentials as Yes;
        for (scheme, registry, realm) in [
            // Docker Hub, GitLab (hosted and self-hosted), a token service
            // beside the registry, and one on the registry's host.
            (
                "https",
                "registry-1.docker.io",
                "https://auth.docker.io/token",
            ),
            (
                "https",
                "registry.gitlab.com",
                "https://gitlab.com/jwt/auth",
            ),
            (
                "https",
                "registry.example.com",
                "https://gitlab.example.com/jwt/auth",
            ),
            ("https", "ghcr.io", "https://ghcr.io/token"),
            (
                "https",
                "myreg.azurecr.io",
                "https://myreg.azurecr.io/oauth2/token",
            ),
            (
                "https",
                "Registry.Example.com:5000",
                "https://registry.example.com/token",
            ),
            ("http", "127.0.0.1:5000", "http://127.0.0.1:5001/token"),
            ("http", "[::1]:5000", "http://[::1]:5001/token"),
        ] {
            assert_eq!(
                trust(scheme, registry, realm),
                Ok(Yes),
                "{registry} → {realm}"
            );
        }
    }

    #[test]
    fn credentials_are_withheld_from_other_hosts_and_from_cleartext() {
        for (scheme, registry, realm) in [
            // Another host over plain HTTP, even in the same domain.
            ("http", "127.0.0.1:5000", "http://localhost:5001/token"),
            (
                "http",
                "registry.example.com",
                "http://auth.example.com/token",
            ),
            // HTTPS, but outside the registry's domain.
            (
                "https",
                "registry.example.com",
                "https://auth.evil.example.net/token",
            ),
            ("https", "ghcr.io", "https://evil.io/token"),
            ("https", "10.0.0.1:5000", "https://10.0.0.2/token"),
            ("https", "example.com", "https://com.evil/token"),
            // The registry's own host, but the registry is HTTPS and the
            // token service is not.
            (
                "https",
                "registry.example.com",
                "http://registry.example.com/token",
            ),
        ] {
            assert!(
                matches!(trust(scheme, registry, realm), Ok(RealmTrust::Withheld(_))),
                "{registry} → {realm}: {:?}",
                trust(scheme, registry, realm)
            );
        }
        let trusted = ["auth.evil.example.net".to_owned()];
        let realm = Url::parse("https://auth.evil.example.net/token").unwrap();
        assert_eq!(
            realm_trust("https", "registry.example.com", &realm, &trusted),
            Ok(RealmTrust::Credentials)
        );
    }

    #[test]
    fn a_realm_that_is_not_http_is_refused() {
        for realm in [
            "file:///etc/passwd",
            "ftp://h/token",
            "data:,x",
            "gopher://h/",
        ] {
            assert!(trust("https", "r.example.com", realm).is_err(), "{realm}");
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let t = Credentials::Token("tok-secret".into());
        assert!(!format!("{t:?}").contains("tok-secret"));
        let h = AuthHeader(Some(secret_header("Basic aHVudGVyMg==").unwrap()));
        assert!(!format!("{h:?}").contains("aHVudGVyMg"));
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, secret_header("Bearer tok-secret").unwrap());
        assert!(!format!("{headers:?}").contains("tok-secret"));
    }

    #[test]
    fn content_range_starts_parse() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_RANGE,
            HeaderValue::from_static("bytes 100-199/1000"),
        );
        assert_eq!(content_range_start(&h), Some(100));
        h.insert(CONTENT_RANGE, HeaderValue::from_static("bytes */1000"));
        assert_eq!(content_range_start(&h), None);
        assert_eq!(content_range_start(&HeaderMap::new()), None);
    }
}

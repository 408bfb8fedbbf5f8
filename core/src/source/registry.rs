//! A repository in an OCI distribution registry.
//!
//! Authentication and blob range reads go through `oci-client`. Manifests are
//! fetched with a direct GET that carries the same credentials, because
//! oci-client reads a manifest body whole and unbounded: a hostile registry
//! could answer with gigabytes. Here the body is cut off at
//! [`MAX_MANIFEST_SIZE`], and the registry's `Content-Type` is kept.
//!
//! Credentials are only ever sent to the registry host itself: oci-client
//! drops them for other hosts, and reqwest strips `Authorization` and
//! `Cookie` when a redirect leaves the origin.

use std::fmt;
use std::sync::Once;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol, LayerDescriptor};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use tokio::sync::RwLock;

use super::{BlobStream, FetchedManifest, Selector, Source, nearby_tags, skip_bytes};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, MAX_MANIFEST_SIZE, media_type};
use crate::reference::RegistryRef;
use crate::retry::RetryPolicy;

/// Credentials for one registry. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP basic, also used to obtain bearer tokens.
    Basic {
        /// The user name.
        username: String,
        /// The password or access token.
        password: String,
    },
    /// A registry bearer token used as is.
    Token(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

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
        }
    }
}

/// The `Authorization` value for manifest requests. `Debug` hides it.
struct AuthHeader(Option<String>);

impl fmt::Debug for AuthHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(<redacted>)"
        } else {
            "None"
        })
    }
}

/// A repository in a registry.
pub struct RegistrySource {
    reference: RegistryRef,
    oci_ref: oci_client::Reference,
    host: String,
    scheme: &'static str,
    client: Client,
    http: reqwest::Client,
    auth: RegistryAuth,
    auth_header: RwLock<AuthHeader>,
    options: RegistryOptions,
}

impl fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySource")
            .field("reference", &self.reference.to_string())
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

impl RegistrySource {
    /// Connects to the repository of `reference` and authenticates.
    pub async fn connect(reference: &RegistryRef, options: RegistryOptions) -> Result<Self> {
        install_crypto_provider();
        let oci_ref = oci_client::Reference::with_tag(
            reference.registry.clone(),
            reference.repository.clone(),
            reference.tag.clone().unwrap_or_else(|| "latest".into()),
        );
        let host = oci_ref.resolve_registry().to_owned();
        let scheme = if options.plain_http { "http" } else { "https" };
        let (plain_http, insecure) = (options.plain_http, options.insecure);
        let (read_timeout, connect_timeout) = (options.read_timeout, options.connect_timeout);
        let client_host = host.clone();
        let make_client = move || {
            let config = ClientConfig {
                protocol: if plain_http {
                    ClientProtocol::Http
                } else {
                    ClientProtocol::Https
                },
                accept_invalid_certificates: insecure,
                read_timeout: Some(read_timeout),
                connect_timeout: Some(connect_timeout),
                platform_resolver: None,
                ..ClientConfig::default()
            };
            Client::try_from(config).map_err(|e| Error::Unreachable {
                registry: client_host.clone(),
                detail: format!("cannot set up the HTTP client: {}", chain(&e)),
            })
        };
        let client = make_client()?;
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(options.insecure)
            .read_timeout(options.read_timeout)
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("ocifs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Unreachable {
                registry: host.clone(),
                detail: format!("cannot set up the HTTP client: {}", chain(&e)),
            })?;
        let auth = match &options.credentials {
            None => RegistryAuth::Anonymous,
            Some(Credentials::Basic { username, password }) => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Some(Credentials::Token(t)) => RegistryAuth::Bearer(t.clone()),
        };
        let mut source = RegistrySource {
            reference: reference.clone(),
            oci_ref,
            host,
            scheme,
            client,
            http,
            auth,
            auth_header: RwLock::new(AuthHeader(None)),
            options,
        };
        source.authenticate().await?;
        if source.auth == RegistryAuth::Anonymous && source.auth_header.read().await.0.is_none() {
            // An open registry: a client with no credentials stored skips the
            // `GET /v2/` probe oci-client otherwise makes before every request.
            source.client = make_client()?;
        }
        Ok(source)
    }

    /// The reference this source was opened for.
    pub fn reference(&self) -> &RegistryRef {
        &self.reference
    }

    /// Runs the registry's auth handshake and remembers the header to send.
    async fn authenticate(&self) -> Result<()> {
        let token = self
            .options
            .retry
            .run(&format!("authenticating to {}", self.host), || async {
                self.client
                    .auth(&self.oci_ref, &self.auth, RegistryOperation::Pull)
                    .await
                    .map_err(|e| self.map_oci(e, "the auth handshake"))
            })
            .await?;
        let header = match (token, &self.auth) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, RegistryAuth::Basic(u, p)) => {
                use base64::Engine as _;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ))
            }
            (None, RegistryAuth::Bearer(t)) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Anonymous) => None,
        };
        *self.auth_header.write().await = AuthHeader(header);
        Ok(())
    }

    fn auth_error(&self, detail: String) -> Error {
        match self.auth {
            RegistryAuth::Anonymous => Error::AuthRequired {
                registry: self.reference.registry.clone(),
            },
            _ => Error::AuthFailed {
                registry: self.reference.registry.clone(),
                detail,
            },
        }
    }

    fn map_reqwest(&self, e: &reqwest::Error, what: &str) -> Error {
        if e.is_timeout() {
            Error::Timeout {
                what: format!("{what} from {}", self.host),
                after: self.options.read_timeout,
            }
        } else if e.is_connect() {
            Error::Unreachable {
                registry: self.host.clone(),
                detail: chain(e),
            }
        } else if let Some(status) = e.status() {
            Error::Registry {
                registry: self.host.clone(),
                status: status.as_u16(),
                what: what.to_owned(),
                detail: chain(e),
            }
        } else {
            Error::Transfer {
                registry: self.host.clone(),
                what: what.to_owned(),
                detail: chain(e),
            }
        }
    }

    fn map_oci(&self, e: OciDistributionError, what: &str) -> Error {
        match e {
            OciDistributionError::AuthenticationFailure(detail) => {
                self.auth_error(detail.trim().to_owned())
            }
            OciDistributionError::UnauthorizedError { .. } => {
                self.auth_error("the registry answered 401 Unauthorized".into())
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.contains(&&OciErrorCode::BlobUnknown) {
                    Error::BlobNotFound {
                        digest: what.to_owned(),
                        source_name: self.reference.name(),
                    }
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    self.auth_error(envelope.to_string())
                } else {
                    let status = if codes.contains(&&OciErrorCode::Toomanyrequests) {
                        429
                    } else {
                        400
                    };
                    Error::Registry {
                        registry: self.host.clone(),
                        status,
                        what: what.to_owned(),
                        detail: envelope.to_string(),
                    }
                }
            }
            OciDistributionError::ServerError { code: 404, .. } => Error::BlobNotFound {
                digest: what.to_owned(),
                source_name: self.reference.name(),
            },
            OciDistributionError::ServerError {
                code: 401 | 403,
                message,
                ..
            } => self.auth_error(message),
            OciDistributionError::ServerError { code, message, .. } => Error::Registry {
                registry: self.host.clone(),
                status: code,
                what: what.to_owned(),
                detail: message.chars().take(512).collect(),
            },
            OciDistributionError::RequestError(re) => self.map_reqwest(&re, what),
            OciDistributionError::IoError(io) => Error::Transfer {
                registry: self.host.clone(),
                what: what.to_owned(),
                detail: io.to_string(),
            },
            OciDistributionError::DigestError(d) => Error::DigestMismatch {
                what: what.to_owned(),
                expected: what.to_owned(),
                actual: d.to_string(),
            },
            other => Error::Registry {
                registry: self.host.clone(),
                status: 0,
                what: what.to_owned(),
                detail: other.to_string(),
            },
        }
    }

    fn manifest_url(&self, selector: &Selector) -> String {
        let reference = match selector {
            Selector::Tag(t) => t.clone(),
            Selector::Digest(d) => d.to_string(),
        };
        format!(
            "{}://{}/v2/{}/manifests/{reference}",
            self.scheme, self.host, self.reference.repository
        )
    }

    async fn manifest_once(
        &self,
        selector: &Selector,
        reauthed: &mut bool,
    ) -> Result<FetchedManifest> {
        let what = format!("manifest {}{selector}", self.reference.name());
        let mut request = self
            .http
            .get(self.manifest_url(selector))
            .header(ACCEPT, media_type::ALL_MANIFESTS.join(", "));
        if let Some(h) = &self.auth_header.read().await.0 {
            request = request.header(AUTHORIZATION, h);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.map_reqwest(&e, &what))?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            401 if !*reauthed && !matches!(self.auth, RegistryAuth::Anonymous) => {
                // A bearer token may have expired: one new handshake, then retry.
                *reauthed = true;
                self.authenticate().await?;
                return Box::pin(self.manifest_once(selector, reauthed)).await;
            }
            401 | 403 => {
                return Err(self.auth_error(format!("the registry answered {status} for {what}")));
            }
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
            _ => {
                let body: String = response
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(512)
                    .collect();
                return Err(Error::Registry {
                    registry: self.host.clone(),
                    status,
                    what,
                    detail: body,
                });
            }
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
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.map_reqwest(&e, &what))?;
            if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_SIZE {
                return Err(Error::TooLarge {
                    what,
                    size: (body.len() + chunk.len()) as u64,
                    limit: MAX_MANIFEST_SIZE,
                });
            }
            body.extend_from_slice(&chunk);
        }
        let bytes = body.freeze();
        let digest = Digest::of(&bytes);
        if let Selector::Digest(expected) = selector
            && expected != &digest
        {
            return Err(Error::DigestMismatch {
                what,
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
        // A registry that states a digest must state the true one.
        if let Some(claimed) = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && let Ok(claimed) = claimed.parse::<Digest>()
            && claimed != digest
        {
            return Err(Error::DigestMismatch {
                what: format!("{what} (Docker-Content-Digest header)"),
                expected: claimed.to_string(),
                actual: digest.to_string(),
            });
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

    async fn read_range_once(&self, blob: &Descriptor, offset: u64, want: u64) -> Result<Bytes> {
        let digest = blob.digest.to_string();
        let layer = LayerDescriptor {
            digest: &digest,
            urls: &None,
        };
        let response = self
            .client
            .pull_blob_stream_partial(&self.oci_ref, &layer, offset, Some(want))
            .await
            .map_err(|e| self.map_oci(e, &digest))?;
        // A server that ignores Range answers 200 with the whole blob: skip
        // to the offset and take what was asked for, no more.
        let (mut stream, mut skip) = match response {
            BlobResponse::Partial(s) => (s.stream, 0u64),
            BlobResponse::Full(s) => (s.stream, offset),
        };
        let mut out = BytesMut::with_capacity(want as usize);
        while (out.len() as u64) < want {
            let Some(chunk) = stream.try_next().await.map_err(|e| Error::Transfer {
                registry: self.host.clone(),
                what: format!("blob {digest}"),
                detail: e.to_string(),
            })?
            else {
                break;
            };
            let mut chunk = chunk;
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                skip -= n;
                chunk = chunk.slice(n as usize..);
            }
            let room = (want - out.len() as u64) as usize;
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if (out.len() as u64) < want {
            return Err(Error::ShortRead {
                digest,
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
            .run(&what, || async {
                let mut reauthed = false;
                self.manifest_once(selector, &mut reauthed).await
            })
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
        let digest = blob.digest.to_string();
        let what = format!("blob {digest} from byte {offset}");
        let response = self
            .options
            .retry
            .run(&format!("opening {what}"), || async {
                let layer = LayerDescriptor {
                    digest: &digest,
                    urls: &None,
                };
                self.client
                    .pull_blob_stream_partial(&self.oci_ref, &layer, offset, None)
                    .await
                    .map_err(|e| self.map_oci(e, &digest))
            })
            .await?;
        let host = self.host.clone();
        let (stream, skip) = match response {
            BlobResponse::Partial(s) => (s.stream, 0),
            // The registry ignored Range: skip to the offset ourselves.
            BlobResponse::Full(s) => (s.stream, offset),
        };
        let stream: BlobStream = Box::pin(stream.map_err(move |e| Error::Transfer {
            registry: host.clone(),
            what: what.clone(),
            detail: e.to_string(),
        }));
        Ok(skip_bytes(stream, skip))
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.options.retry
    }

    async fn tags(&self) -> Result<Vec<String>> {
        let response = self
            .options
            .retry
            .run("listing tags", || async {
                self.client
                    .list_tags(&self.oci_ref, &self.auth, None, None)
                    .await
                    .map_err(|e| self.map_oci(e, "the tag list"))
            })
            .await?;
        Ok(response.tags)
    }
}

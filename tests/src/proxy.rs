//! A counting reverse proxy in front of a registry: the point where tests
//! see what a client really asked for and how many bytes it got.

use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::server::{BackgroundServer, Body, BoxError, Handler, text_response};

/// What the proxy does with one request. The seam for fault injection:
/// later variants (answer 500, reset, stall, flip bits) go here, chosen per
/// request by a [`ProxyHook`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// Forward the request upstream and stream the response back unchanged.
    #[default]
    Forward,
    /// Forward it, but send the response body no faster than this many bytes
    /// per second (for tests that must act during a transfer).
    Throttle {
        /// The pace.
        bytes_per_second: u64,
    },
}

/// A hook that throttles every blob `GET` to `bytes_per_second`.
#[derive(Debug)]
pub struct ThrottleBlobs(pub u64);

impl ProxyHook for ThrottleBlobs {
    fn on_request(&self, request: &RequestInfo) -> Disposition {
        if request.is_blob_get() {
            Disposition::Throttle {
                bytes_per_second: self.0,
            }
        } else {
            Disposition::Forward
        }
    }
}

/// The request a [`ProxyHook`] decides about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// 0 for the first request the proxy saw (since the last reset), then 1, …
    pub seq: usize,
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The URL path, e.g. `/v2/repo/blobs/sha256:…`.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
}

impl RequestInfo {
    /// A `GET` of a blob.
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.path.contains("/blobs/sha256:")
    }
}

/// Decides, per request, what the proxy does with it.
pub trait ProxyHook: Send + Sync + fmt::Debug {
    /// The disposition of `request`.
    fn on_request(&self, request: &RequestInfo) -> Disposition;
}

/// One request the proxy forwarded, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The URL path.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// Whether the request carried an `Authorization` header.
    pub authorization: bool,
    /// The status sent back (502 if the upstream could not be reached; 0 if
    /// no response has been sent yet).
    pub status: u16,
    /// Response body bytes handed to the client connection so far.
    pub body_bytes: u64,
}

impl RequestRecord {
    /// A `GET` of a blob (`…/blobs/sha256:…`).
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.path.contains("/blobs/sha256:")
    }

    /// A `GET` of a manifest (`…/manifests/…`).
    pub fn is_manifest_get(&self) -> bool {
        self.method == "GET" && self.path.contains("/manifests/")
    }
}

impl fmt::Display for RequestRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let query = self
            .query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        write!(
            f,
            "{} {}{query} -> {} ({} bytes)",
            self.method, self.path, self.status, self.body_bytes
        )
    }
}

#[derive(Debug)]
struct Record {
    method: String,
    path: String,
    query: Option<String>,
    authorization: bool,
    status: AtomicU16,
    body_bytes: AtomicU64,
}

impl Record {
    fn snapshot(&self) -> RequestRecord {
        RequestRecord {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            authorization: self.authorization,
            status: self.status.load(Ordering::SeqCst),
            body_bytes: self.body_bytes.load(Ordering::SeqCst),
        }
    }
}

struct ProxyState {
    upstream: String,
    own_host: String,
    client: Client<HttpConnector, Incoming>,
    records: Mutex<Vec<Arc<Record>>>,
    hook: Mutex<Option<Arc<dyn ProxyHook>>>,
}

impl fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyState")
            .field("upstream", &self.upstream)
            .field("own_host", &self.own_host)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock leaves valid data behind.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Headers that describe one connection, not the message: never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

impl ProxyState {
    /// Points `Location` and a `WWW-Authenticate` realm that name the
    /// upstream at the proxy instead; those that name another host (the token
    /// server) are left alone.
    fn rewrite_upstream_urls(&self, headers: &mut HeaderMap) {
        let from = format!("//{}", self.upstream);
        let to = format!("//{}", self.own_host);
        for name in [header::LOCATION, header::WWW_AUTHENTICATE] {
            let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            if !values
                .iter()
                .any(|v| v.to_str().is_ok_and(|s| s.contains(&from)))
            {
                continue;
            }
            headers.remove(&name);
            for v in values {
                let v = match v.to_str() {
                    Ok(s) => HeaderValue::from_str(&s.replace(&from, &to)).unwrap_or(v),
                    Err(_) => v,
                };
                headers.append(&name, v);
            }
        }
    }

    async fn forward(&self, request: Request<Incoming>, record: &Arc<Record>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = match format!("http://{}{path_and_query}", self.upstream).parse::<Uri>() {
            Ok(uri) => uri,
            Err(e) => {
                return text_response(StatusCode::BAD_REQUEST, format!("bad request URI: {e}"));
            }
        };
        // The `Host` header stays the proxy's, so the registry builds the
        // URLs it hands out (upload locations) with the proxy's address.
        strip_hop_by_hop(&mut parts.headers);
        let response = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err(e) => {
                record.status.store(502, Ordering::SeqCst);
                return text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("upstream {}: {e}", self.upstream),
                );
            }
        };
        let (mut parts, body) = response.into_parts();
        record.status.store(parts.status.as_u16(), Ordering::SeqCst);
        strip_hop_by_hop(&mut parts.headers);
        self.rewrite_upstream_urls(&mut parts.headers);
        let counter = Arc::clone(record);
        let body = body
            .map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    counter
                        .body_bytes
                        .fetch_add(data.len() as u64, Ordering::SeqCst);
                }
                frame
            })
            .map_err(BoxError::from)
            .boxed_unsync();
        Response::from_parts(parts, body)
    }
}

impl Handler for ProxyState {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let record = Arc::new(Record {
            method: request.method().as_str().to_owned(),
            path: request.uri().path().to_owned(),
            query: request.uri().query().map(str::to_owned),
            authorization: request.headers().contains_key(header::AUTHORIZATION),
            status: AtomicU16::new(0),
            body_bytes: AtomicU64::new(0),
        });
        let seq = {
            let mut records = lock(&self.records);
            records.push(Arc::clone(&record));
            records.len() - 1
        };
        let hook = lock(&self.hook).clone();
        let disposition = hook.map_or_else(Disposition::default, |h| {
            h.on_request(&RequestInfo {
                seq,
                method: record.method.clone(),
                path: record.path.clone(),
                query: record.query.clone(),
            })
        });
        match disposition {
            Disposition::Forward => self.forward(request, &record).await,
            Disposition::Throttle { bytes_per_second } => {
                use futures_util::StreamExt as _;
                let (parts, body) = self.forward(request, &record).await.into_parts();
                let rate = bytes_per_second.max(1);
                let paced = http_body_util::BodyStream::new(body).then(move |frame| async move {
                    if let Ok(data) = frame.as_ref().map(|f| f.data_ref().map_or(0, |d| d.len())) {
                        let pause = std::time::Duration::from_secs_f64(data as f64 / rate as f64);
                        tokio::time::sleep(pause).await;
                    }
                    frame
                });
                Response::from_parts(parts, http_body_util::StreamBody::new(paced).boxed_unsync())
            }
        }
    }
}

/// An HTTP/1.1 reverse proxy on `127.0.0.1:0` in front of a registry that
/// records every request. Dropping it stops it.
///
/// Point the client at [`host`](Self::host) instead of the registry's.
#[derive(Debug)]
pub struct CountingProxy {
    state: Arc<ProxyState>,
    server: BackgroundServer,
}

impl CountingProxy {
    /// Starts a proxy that forwards to `upstream_host` (`HOST:PORT`).
    ///
    /// # Panics
    ///
    /// If no port can be bound or the server thread cannot start.
    pub fn start(upstream_host: &str) -> Self {
        let listener = BackgroundServer::bind().expect("binding the proxy's port");
        let own_host = listener
            .local_addr()
            .map(|a| a.to_string())
            .expect("the proxy's address");
        let state = Arc::new(ProxyState {
            upstream: upstream_host.to_owned(),
            own_host,
            client: Client::builder(TokioExecutor::new()).build_http(),
            records: Mutex::new(Vec::new()),
            hook: Mutex::new(None),
        });
        let server = BackgroundServer::start("ocifs-test-proxy", listener, Arc::clone(&state))
            .expect("starting the proxy");
        Self { state, server }
    }

    /// `127.0.0.1:PORT`, for references: `format!("{}/repo:tag", proxy.host())`.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// The host the proxy forwards to.
    pub fn upstream(&self) -> &str {
        &self.state.upstream
    }

    /// Every request since the start or the last [`reset`](Self::reset), in
    /// the order they arrived.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.state.records)
            .iter()
            .map(|r| r.snapshot())
            .collect()
    }

    /// Forgets the requests seen so far.
    pub fn reset(&self) {
        lock(&self.state.records).clear();
    }

    /// Sets (or with `None` removes) the hook that decides what happens to
    /// each request from now on.
    pub fn set_hook(&self, hook: Option<Arc<dyn ProxyHook>>) {
        *lock(&self.state.hook) = hook;
    }

    /// The `GET`s of blobs.
    pub fn blob_gets(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(RequestRecord::is_blob_get)
            .collect()
    }

    /// The body bytes sent back for blob `GET`s.
    pub fn blob_bytes(&self) -> u64 {
        self.blob_gets().iter().map(|r| r.body_bytes).sum()
    }

    /// The `GET`s of manifests.
    pub fn manifest_gets(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(RequestRecord::is_manifest_get)
            .collect()
    }

    /// The requests, one per line, for assertion messages.
    pub fn describe(&self) -> String {
        self.requests().iter().map(|r| format!("  {r}\n")).collect()
    }
}

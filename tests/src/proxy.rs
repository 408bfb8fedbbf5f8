//! A counting reverse proxy in front of a registry: the point where tests
//! see what a client really asked for and how many bytes it got, and where
//! they inject faults (see [`Disposition`]).

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::server::{BackgroundServer, Body, BoxError, Connection, Handler, text_response};

/// What the proxy does with one request: forward it, or inject a fault.
/// Chosen per request by a [`ProxyHook`].
///
/// Positions in a body (`after_bytes`, `at`) are taken modulo the body's
/// length when the upstream states it (so a fault always fires on a
/// non-empty body); a fault that fires is recorded in
/// [`RequestRecord::fault`] under its [`kind`](Self::kind).
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
    /// Answer this status without asking upstream, with an OCI error body
    /// (`TOOMANYREQUESTS` for 429, `UNAVAILABLE` otherwise).
    Status(u16),
    /// Wait this long, then forward.
    Delay(Duration),
    /// Never answer: no status, no headers, until the client gives up.
    Stall,
    /// Send the headers and `after_bytes` of the body, then nothing more
    /// until the client gives up.
    StallMidBody {
        /// Body bytes sent before the silence.
        after_bytes: u64,
    },
    /// Send `after_bytes` of the body, then reset the connection (TCP RST).
    ResetMidBody {
        /// Body bytes sent before the reset (a reset may overtake the last
        /// of them).
        after_bytes: u64,
    },
    /// Send `after_bytes` of the body, then close the connection, though
    /// `Content-Length` promised more.
    Truncate {
        /// Body bytes sent before the close.
        after_bytes: u64,
    },
    /// A well-formed but short answer: `Content-Length` says `after_bytes`
    /// and that many bytes come (`Content-Range`, if any, still claims the
    /// range asked for).
    ShortBody {
        /// The body's length.
        after_bytes: u64,
    },
    /// Forward, with the bits of `mask` flipped in the body byte at `at`.
    FlipBits {
        /// The byte's position in the body.
        at: u64,
        /// The bits to flip (non-zero).
        mask: u8,
    },
    /// Forward without the `Range` header: the registry answers `200` with
    /// the whole blob.
    IgnoreRange,
    /// Answer `307 Temporary Redirect` to this URL without asking upstream,
    /// as a registry does that keeps its blobs in a storage service.
    Redirect(String),
    /// Answer this status with this body, as a hostile registry might.
    Answer {
        /// The status.
        status: u16,
        /// The body, sent as it is.
        body: String,
    },
}

impl Disposition {
    /// The name faults of this kind are counted under: `status-503`,
    /// `reset-mid-body`, `flip-bits`, … (`forward` and `throttle` are not
    /// faults).
    pub fn kind(&self) -> String {
        match self {
            Disposition::Forward => "forward".into(),
            Disposition::Throttle { .. } => "throttle".into(),
            Disposition::Status(code) => format!("status-{code}"),
            Disposition::Delay(_) => "delay".into(),
            Disposition::Stall => "stall".into(),
            Disposition::StallMidBody { .. } => "stall-mid-body".into(),
            Disposition::ResetMidBody { .. } => "reset-mid-body".into(),
            Disposition::Truncate { .. } => "truncate".into(),
            Disposition::ShortBody { .. } => "short-body".into(),
            Disposition::FlipBits { .. } => "flip-bits".into(),
            Disposition::IgnoreRange => "ignore-range".into(),
            Disposition::Redirect(_) => "redirect".into(),
            Disposition::Answer { status, .. } => format!("answer-{status}"),
        }
    }
}

/// A kind of fault for [`RandomFaults`], whose positions it draws at random.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// [`Disposition::Status`] with this code.
    Status(u16),
    /// [`Disposition::Delay`] of up to this many milliseconds.
    Delay(u64),
    /// [`Disposition::Stall`].
    Stall,
    /// [`Disposition::StallMidBody`].
    StallMidBody,
    /// [`Disposition::ResetMidBody`].
    ResetMidBody,
    /// [`Disposition::Truncate`].
    Truncate,
    /// [`Disposition::ShortBody`].
    ShortBody,
    /// [`Disposition::FlipBits`] (one bit).
    FlipBits,
    /// [`Disposition::IgnoreRange`].
    IgnoreRange,
}

impl Fault {
    /// The faults a client is expected to ride out by retrying (no stalls,
    /// which cost a client its whole timeout, and no bit flips, which only
    /// a digest can catch).
    pub const TRANSIENT: [Fault; 8] = [
        Fault::Status(500),
        Fault::Status(503),
        Fault::Status(429),
        Fault::Delay(300),
        Fault::ResetMidBody,
        Fault::Truncate,
        Fault::ShortBody,
        Fault::IgnoreRange,
    ];

    fn disposition(self, mut random: impl FnMut() -> u64) -> Disposition {
        // Positions are reduced modulo the body length by the proxy.
        match self {
            Fault::Status(code) => Disposition::Status(code),
            Fault::Delay(max_ms) => {
                Disposition::Delay(Duration::from_millis(random() % (max_ms + 1)))
            }
            Fault::Stall => Disposition::Stall,
            Fault::StallMidBody => Disposition::StallMidBody {
                after_bytes: random(),
            },
            Fault::ResetMidBody => Disposition::ResetMidBody {
                after_bytes: random(),
            },
            Fault::Truncate => Disposition::Truncate {
                after_bytes: random(),
            },
            Fault::ShortBody => Disposition::ShortBody {
                after_bytes: random(),
            },
            Fault::FlipBits => Disposition::FlipBits {
                at: random(),
                mask: 1 << (random() % 8),
            },
            Fault::IgnoreRange => Disposition::IgnoreRange,
        }
    }
}

/// A hook that gives a share of blob `GET`s a fault drawn from a list, the
/// rest being forwarded: reproducible from its seed (the n-th blob `GET` it
/// sees gets the n-th draw, so the share is exact over any run of blob
/// `GET`s, whichever requests race for a place).
#[derive(Debug)]
pub struct RandomFaults {
    seed: u64,
    rate: f64,
    faults: Vec<Fault>,
    drawn: AtomicU64,
}

impl RandomFaults {
    /// Faults from `faults` for a `rate` (0.0–1.0) share of blob `GET`s.
    pub fn new(seed: u64, rate: f64, faults: &[Fault]) -> Self {
        Self {
            seed,
            rate,
            faults: faults.to_vec(),
            drawn: AtomicU64::new(0),
        }
    }
}

impl ProxyHook for RandomFaults {
    fn on_request(&self, request: &RequestInfo) -> Disposition {
        if !request.is_blob_get() || self.faults.is_empty() {
            return Disposition::Forward;
        }
        let n = self.drawn.fetch_add(1, Ordering::SeqCst);
        let mut state = self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut random = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            crate::util::splitmix(state)
        };
        let roll = (random() >> 11) as f64 / (1u64 << 53) as f64;
        if roll >= self.rate {
            return Disposition::Forward;
        }
        let fault = self.faults[(random() % self.faults.len() as u64) as usize];
        fault.disposition(random)
    }
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

/// A [`ProxyHook`] made of a closure: `Arc::new(HookFn(|r: &RequestInfo| …))`.
pub struct HookFn<F>(pub F);

impl<F> fmt::Debug for HookFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HookFn")
    }
}

impl<F> ProxyHook for HookFn<F>
where
    F: Fn(&RequestInfo) -> Disposition + Send + Sync,
{
    fn on_request(&self, request: &RequestInfo) -> Disposition {
        (self.0)(request)
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
    /// Whether the request carried a `Cookie` header.
    pub cookie: bool,
    /// The `Range` header the client sent, if any.
    pub range: Option<String>,
    /// The `X-…` headers the client sent (name in lower case, value), as a
    /// mirror routed by header sees them.
    pub x_headers: Vec<(String, String)>,
    /// The status sent back (502 if the upstream could not be reached; 0 if
    /// no response has been sent yet).
    pub status: u16,
    /// Response body bytes handed to the client connection so far.
    pub body_bytes: u64,
    /// The [kind](Disposition::kind) of the fault injected into this
    /// exchange, once it fired.
    pub fault: Option<String>,
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
        )?;
        if let Some(range) = &self.range {
            write!(f, " [{range}]")?;
        }
        if let Some(fault) = &self.fault {
            write!(f, " fault: {fault}")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Record {
    method: String,
    path: String,
    query: Option<String>,
    authorization: bool,
    cookie: bool,
    range: Option<String>,
    x_headers: Vec<(String, String)>,
    status: AtomicU16,
    body_bytes: AtomicU64,
    fault: Mutex<Option<String>>,
}

impl Record {
    fn snapshot(&self) -> RequestRecord {
        RequestRecord {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            authorization: self.authorization,
            cookie: self.cookie,
            range: self.range.clone(),
            x_headers: self.x_headers.clone(),
            status: self.status.load(Ordering::SeqCst),
            body_bytes: self.body_bytes.load(Ordering::SeqCst),
            fault: lock(&self.fault).clone(),
        }
    }

    fn fired(&self, disposition: &Disposition) {
        *lock(&self.fault) = Some(disposition.kind());
    }
}

struct ProxyState {
    upstream: String,
    own_host: String,
    client: Client<HttpConnector, Incoming>,
    records: Mutex<Vec<Arc<Record>>>,
    hook: Mutex<Option<Arc<dyn ProxyHook>>>,
    realm: Mutex<Option<String>>,
    cookie: Mutex<Option<String>>,
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
        strip_hop_by_hop(&mut parts.headers);
        self.rewrite_upstream_urls(&mut parts.headers);
        if let Some(realm) = lock(&self.realm).clone() {
            replace_realm(&mut parts.headers, &realm);
        }
        Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
    }
}

impl ProxyState {
    /// The response, with the cookie of [`CountingProxy::set_cookie`].
    fn with_cookie(&self, mut response: Response<Body>) -> Response<Body> {
        if let Some(v) = lock(&self.cookie)
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
        response
    }
}

/// Points the realm of every `Bearer` challenge in `headers` at `realm`.
fn replace_realm(headers: &mut HeaderMap, realm: &str) {
    let values: Vec<HeaderValue> = headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .cloned()
        .collect();
    headers.remove(header::WWW_AUTHENTICATE);
    for v in values {
        let replaced = v.to_str().ok().and_then(|s| {
            let start = s.find("realm=\"")? + "realm=\"".len();
            let end = start + s[start..].find('"')?;
            HeaderValue::from_str(&format!("{}{realm}{}", &s[..start], &s[end..])).ok()
        });
        headers.append(header::WWW_AUTHENTICATE, replaced.unwrap_or(v));
    }
}

/// A response body as a stream of its data.
type DataStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

fn data_stream(body: Body) -> DataStream {
    Box::pin(
        http_body_util::BodyStream::new(body)
            .try_filter_map(|frame| std::future::ready(Ok(frame.into_data().ok()))),
    )
}

fn stream_body(stream: DataStream) -> Body {
    http_body_util::StreamBody::new(stream.map_ok(Frame::data)).boxed_unsync()
}

/// What happens to a body cut short.
enum AfterCut {
    /// The body ends (the connection closes if `Content-Length` said more).
    End,
    /// The connection is reset.
    Reset(Connection),
    /// Nothing more is sent.
    Stall,
}

/// Passes the first `after` bytes of `stream`, then does what `then` says;
/// `fired` is called once when the cut is reached.
fn cut(
    stream: DataStream,
    after: u64,
    then: AfterCut,
    fired: impl Fn() + Send + 'static,
) -> DataStream {
    struct State<F> {
        inner: DataStream,
        left: u64,
        then: Option<AfterCut>,
        fired: F,
    }
    let state = State {
        inner: stream,
        left: after,
        then: Some(then),
        fired,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        move |mut st| async move {
            if st.left == 0 {
                let then = st.then.take()?;
                if after == 0 {
                    (st.fired)();
                }
                // Let the bytes before the cut leave first: hyper drops what it
                // has buffered when a body ends short of its length or fails.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return match then {
                    AfterCut::End => None,
                    AfterCut::Reset(connection) => {
                        connection.reset_on_close();
                        Some((Err(BoxError::from("injected connection reset")), st))
                    }
                    AfterCut::Stall => {
                        std::future::pending::<()>().await;
                        None
                    }
                };
            }
            match st.inner.next().await? {
                Ok(bytes) => {
                    let n = (bytes.len() as u64).min(st.left);
                    st.left -= n;
                    if st.left == 0 {
                        // Recorded now: a client told `Content-Length` bytes
                        // stops polling once they are all there.
                        (st.fired)();
                    }
                    Some((Ok(bytes.slice(..n as usize)), st))
                }
                Err(e) => {
                    st.then = None;
                    Some((Err(e), st))
                }
            }
        },
    ))
}

/// Flips the bits of `mask` in the byte at `at` of `stream`.
fn flip(stream: DataStream, at: u64, mask: u8, fired: impl Fn() + Send + 'static) -> DataStream {
    let mut pos = 0u64;
    Box::pin(stream.map_ok(move |bytes| {
        let start = pos;
        pos += bytes.len() as u64;
        if (start..pos).contains(&at) {
            fired();
            let mut flipped = BytesMut::from(&bytes[..]);
            flipped[(at - start) as usize] ^= mask;
            flipped.freeze()
        } else {
            bytes
        }
    }))
}

/// Counts the body bytes handed to the client.
fn counted(stream: DataStream, record: &Arc<Record>) -> DataStream {
    let record = Arc::clone(record);
    Box::pin(stream.inspect_ok(move |bytes| {
        record
            .body_bytes
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
    }))
}

/// An answer with an OCI error envelope, as a registry would send it.
fn error_response(status: u16) -> Response<Body> {
    let code = if status == 429 {
        "TOOMANYREQUESTS"
    } else {
        "UNAVAILABLE"
    };
    let body = format!(
        r#"{{"errors":[{{"code":"{code}","message":"fault injected by the ocifs test proxy","detail":null}}]}}"#
    );
    let mut response = text_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    );
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl Handler for ProxyState {
    async fn handle(self: Arc<Self>, mut request: Request<Incoming>) -> Response<Body> {
        let record = Arc::new(Record {
            method: request.method().as_str().to_owned(),
            path: request.uri().path().to_owned(),
            query: request.uri().query().map(str::to_owned),
            authorization: request.headers().contains_key(header::AUTHORIZATION),
            cookie: request.headers().contains_key(header::COOKIE),
            range: request
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            x_headers: request
                .headers()
                .iter()
                .filter(|(n, _)| n.as_str().starts_with("x-"))
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            status: AtomicU16::new(0),
            body_bytes: AtomicU64::new(0),
            fault: Mutex::new(None),
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
        let connection = request
            .extensions()
            .get::<Connection>()
            .cloned()
            .unwrap_or_default();
        // Faults before (or instead of) asking upstream.
        match &disposition {
            Disposition::Status(code) => {
                record.fired(&disposition);
                record.status.store(*code, Ordering::SeqCst);
                return error_response(*code);
            }
            Disposition::Stall => {
                record.fired(&disposition);
                std::future::pending::<()>().await;
            }
            Disposition::Delay(pause) => {
                record.fired(&disposition);
                tokio::time::sleep(*pause).await;
            }
            Disposition::Answer { status, body } => {
                record.fired(&disposition);
                record.status.store(*status, Ordering::SeqCst);
                return text_response(
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    body.clone(),
                );
            }
            Disposition::Redirect(location) => {
                record.fired(&disposition);
                record.status.store(307, Ordering::SeqCst);
                let mut response = text_response(StatusCode::TEMPORARY_REDIRECT, "");
                if let Ok(v) = HeaderValue::from_str(location) {
                    response.headers_mut().insert(header::LOCATION, v);
                }
                return self.with_cookie(response);
            }
            Disposition::IgnoreRange if request.headers_mut().remove(header::RANGE).is_some() => {
                record.fired(&disposition);
            }
            _ => {}
        }
        let (mut parts, body) = self.forward(request, &record).await.into_parts();
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // A position in the body: modulo its length, so that it is in it.
        let position = |p: u64| length.filter(|l| *l > 0).map_or(p, |l| p % l);
        let fired = {
            let record = Arc::clone(&record);
            let disposition = disposition.clone();
            move || record.fired(&disposition)
        };
        let mut stream = data_stream(body);
        match disposition {
            Disposition::Throttle { bytes_per_second } => {
                let rate = bytes_per_second.max(1);
                stream = Box::pin(stream.then(move |data| async move {
                    if let Ok(bytes) = &data {
                        let pause = Duration::from_secs_f64(bytes.len() as f64 / rate as f64);
                        tokio::time::sleep(pause).await;
                    }
                    data
                }));
            }
            Disposition::StallMidBody { after_bytes } => {
                stream = cut(stream, position(after_bytes), AfterCut::Stall, fired);
            }
            Disposition::ResetMidBody { after_bytes } => {
                let after = position(after_bytes);
                stream = cut(stream, after, AfterCut::Reset(connection), fired);
            }
            Disposition::Truncate { after_bytes } => {
                stream = cut(stream, position(after_bytes), AfterCut::End, fired);
            }
            Disposition::ShortBody { after_bytes } => {
                let after = position(after_bytes);
                if length.is_some_and(|l| l > after) {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(after));
                    stream = cut(stream, after, AfterCut::End, fired);
                }
            }
            Disposition::FlipBits { at, mask } => {
                stream = flip(stream, position(at), mask, fired);
            }
            _ => {}
        }
        record.status.store(parts.status.as_u16(), Ordering::SeqCst);
        self.with_cookie(Response::from_parts(
            parts,
            stream_body(counted(stream, &record)),
        ))
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
            realm: Mutex::new(None),
            cookie: Mutex::new(None),
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

    /// From now on, the realm of every `Bearer` challenge the registry
    /// sends is replaced by `realm` (`None`: left alone), as a registry
    /// would send that names a token service elsewhere.
    pub fn set_realm(&self, realm: Option<&str>) {
        *lock(&self.state.realm) = realm.map(str::to_owned);
    }

    /// From now on, every response carries `Set-Cookie: cookie` (`None`:
    /// no cookie).
    pub fn set_cookie(&self, cookie: Option<&str>) {
        *lock(&self.state.cookie) = cookie.map(str::to_owned);
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

    /// How many faults of each [kind](Disposition::kind) fired.
    pub fn faults(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for record in self.requests() {
            if let Some(kind) = record.fault {
                *counts.entry(kind).or_default() += 1;
            }
        }
        counts
    }

    /// The requests, one per line, for assertion messages.
    pub fn describe(&self) -> String {
        self.requests().iter().map(|r| format!("  {r}\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;

    use super::*;
    use crate::blobs::BlobHost;
    use crate::util::{random_bytes, sha256_digest};

    /// What a raw HTTP/1.1 client saw: status, head, the body bytes that
    /// came, and how the connection ended (`None`: a clean end of stream).
    struct Seen {
        status: u16,
        head: String,
        body: Vec<u8>,
        ended_by: Option<std::io::ErrorKind>,
    }

    fn get(host: &str, path: &str, range: Option<&str>) -> Seen {
        let mut stream = TcpStream::connect(host).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{range}\r\n"
        )
        .expect("send");
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 << 10];
        let ended_by = loop {
            match stream.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e.kind()),
            }
        };
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(raw.len(), |p| p + 4);
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Seen {
            status,
            head: head.to_ascii_lowercase(),
            body: raw[split..].to_vec(),
            ended_by,
        }
    }

    struct Setup {
        blob: Vec<u8>,
        path: String,
        host: BlobHost,
        proxy: CountingProxy,
    }

    fn setup(disposition: Disposition) -> Setup {
        let blob = random_bytes(100_000, 5);
        let host = BlobHost::start(&[&blob]);
        let proxy = CountingProxy::start(&host.host());
        proxy.set_hook(Some(Arc::new(HookFn(move |_: &RequestInfo| {
            disposition.clone()
        }))));
        let path = format!("/v2/r/blobs/{}", sha256_digest(&blob));
        Setup {
            blob,
            path,
            host,
            proxy,
        }
    }

    fn faults(proxy: &CountingProxy) -> Vec<(String, u64)> {
        proxy.faults().into_iter().collect()
    }

    #[test]
    fn forward_and_ranges_pass_unchanged() {
        let s = setup(Disposition::Forward);
        let seen = get(&s.proxy.host(), &s.path, None);
        assert_eq!((seen.status, seen.ended_by), (200, None));
        assert!(seen.body == s.blob);
        let seen = get(&s.proxy.host(), &s.path, Some("bytes=10-19"));
        assert_eq!(seen.status, 206);
        assert_eq!(seen.body, s.blob[10..20]);
        assert_eq!(s.proxy.requests()[1].range.as_deref(), Some("bytes=10-19"));
        assert!(faults(&s.proxy).is_empty());
    }

    #[test]
    fn status_answers_without_asking_upstream() {
        let s = setup(Disposition::Status(503));
        let seen = get(&s.proxy.host(), &s.path, None);
        assert_eq!(seen.status, 503);
        assert!(String::from_utf8_lossy(&seen.body).contains("UNAVAILABLE"));
        assert!(s.host.requests().is_empty());
        assert_eq!(faults(&s.proxy), [("status-503".into(), 1)]);
        let s = setup(Disposition::Status(429));
        assert!(
            String::from_utf8_lossy(&get(&s.proxy.host(), &s.path, None).body)
                .contains("TOOMANYREQUESTS")
        );
    }

    #[test]
    fn ignore_range_fetches_the_whole_blob() {
        let s = setup(Disposition::IgnoreRange);
        let seen = get(&s.proxy.host(), &s.path, Some("bytes=10-19"));
        assert_eq!(seen.status, 200);
        assert!(seen.body == s.blob);
        assert_eq!(s.host.requests()[0].header("range"), None);
        assert_eq!(faults(&s.proxy), [("ignore-range".into(), 1)]);
    }

    #[test]
    fn flip_bits_changes_one_byte() {
        let s = setup(Disposition::FlipBits {
            at: 70_000,
            mask: 0x10,
        });
        let seen = get(&s.proxy.host(), &s.path, None);
        let diff: Vec<usize> = (0..s.blob.len())
            .filter(|&i| seen.body[i] != s.blob[i])
            .collect();
        assert_eq!(diff, [70_000]);
        assert_eq!(seen.body[70_000] ^ s.blob[70_000], 0x10);
        // A position past the end wraps into the body.
        let s = setup(Disposition::FlipBits {
            at: 100_005,
            mask: 1,
        });
        let seen = get(&s.proxy.host(), &s.path, None);
        assert_ne!(seen.body[5], s.blob[5]);
        assert_eq!(faults(&s.proxy), [("flip-bits".into(), 1)]);
    }

    #[test]
    fn short_body_is_well_formed_and_short() {
        let s = setup(Disposition::ShortBody { after_bytes: 1000 });
        let seen = get(&s.proxy.host(), &s.path, None);
        assert_eq!((seen.status, seen.ended_by), (200, None));
        assert!(
            seen.head.contains("content-length: 1000\r\n"),
            "{}",
            seen.head
        );
        assert_eq!(seen.body, s.blob[..1000]);
        assert_eq!(faults(&s.proxy), [("short-body".into(), 1)]);
    }

    #[test]
    fn truncate_closes_before_the_promised_length() {
        let s = setup(Disposition::Truncate { after_bytes: 1000 });
        let seen = get(&s.proxy.host(), &s.path, None);
        assert!(
            seen.head.contains("content-length: 100000\r\n"),
            "{}",
            seen.head
        );
        assert_eq!(seen.ended_by, None);
        assert_eq!(seen.body, s.blob[..1000]);
        assert_eq!(faults(&s.proxy), [("truncate".into(), 1)]);
    }

    #[test]
    fn reset_mid_body_resets_the_connection() {
        let s = setup(Disposition::ResetMidBody { after_bytes: 1000 });
        let seen = get(&s.proxy.host(), &s.path, None);
        assert_eq!(seen.ended_by, Some(std::io::ErrorKind::ConnectionReset));
        assert!(seen.body.len() <= 1000 && seen.body[..] == s.blob[..seen.body.len()]);
        assert_eq!(faults(&s.proxy), [("reset-mid-body".into(), 1)]);
    }

    #[test]
    fn stalls_send_nothing_more() {
        let s = setup(Disposition::StallMidBody { after_bytes: 1000 });
        let seen = get(&s.proxy.host(), &s.path, None);
        assert_eq!(seen.status, 200);
        assert_eq!(seen.body, s.blob[..1000]);
        assert!(matches!(
            seen.ended_by,
            Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ));
        let s = setup(Disposition::Stall);
        let seen = get(&s.proxy.host(), &s.path, None);
        assert_eq!(seen.status, 0);
        assert!(seen.ended_by.is_some());
        assert!(s.host.requests().is_empty());
        assert_eq!(faults(&s.proxy), [("stall".into(), 1)]);
    }

    #[test]
    fn redirect_answers_307_with_the_cookie() {
        let s = setup(Disposition::Redirect(
            "http://elsewhere.invalid/blob".into(),
        ));
        s.proxy.set_cookie(Some("session=abc"));
        let seen = get(&s.proxy.host(), &s.path, None);
        assert_eq!(seen.status, 307);
        assert!(
            seen.head
                .contains("location: http://elsewhere.invalid/blob\r\n"),
            "{}",
            seen.head
        );
        assert!(
            seen.head.contains("set-cookie: session=abc\r\n"),
            "{}",
            seen.head
        );
        assert!(s.host.requests().is_empty());
    }

    #[test]
    fn realms_are_replaced_in_bearer_challenges() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="http://a/token",service="s""#),
        );
        replace_realm(&mut headers, "file:///etc/passwd");
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            r#"Bearer realm="file:///etc/passwd",service="s""#
        );
    }

    #[test]
    fn random_faults_are_reproducible_and_hit_their_rate() {
        let request = |seq| RequestInfo {
            seq,
            method: "GET".into(),
            path: "/v2/r/blobs/sha256:00".into(),
            query: None,
        };
        let draw = |hook: &RandomFaults| -> Vec<Disposition> {
            // Only blob GETs draw.
            let manifest = RequestInfo {
                path: "/v2/r/manifests/v1".into(),
                ..request(0)
            };
            assert_eq!(hook.on_request(&manifest), Disposition::Forward);
            (0..1000)
                .map(|seq| hook.on_request(&request(seq)))
                .collect()
        };
        let a = draw(&RandomFaults::new(1, 0.1, &Fault::TRANSIENT));
        assert_eq!(a, draw(&RandomFaults::new(1, 0.1, &Fault::TRANSIENT)));
        assert_ne!(a, draw(&RandomFaults::new(2, 0.1, &Fault::TRANSIENT)));
        let faulty = a.iter().filter(|d| **d != Disposition::Forward).count();
        assert!((60..=140).contains(&faulty), "{faulty} of 1000");
        let kinds: std::collections::BTreeSet<String> = a.iter().map(Disposition::kind).collect();
        assert_eq!(kinds.len(), Fault::TRANSIENT.len() + 1, "{kinds:?}");
        let all = RandomFaults::new(3, 1.0, &[Fault::Stall]);
        assert!(draw(&all).iter().all(|d| *d == Disposition::Stall));
        let manifest = RequestInfo {
            path: "/v2/r/manifests/v1".into(),
            ..request(0)
        };
        assert_eq!(all.on_request(&manifest), Disposition::Forward);
    }
}

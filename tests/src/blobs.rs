//! A plain HTTP server of blobs by digest, as a storage backend a registry
//! redirects blob downloads to (S3, a CDN) would be: it honours `Range` and
//! records the headers of every request, so that tests can see what a
//! client sent to a host that is not the registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::server::{BackgroundServer, Body, Handler, full, text_response};
use crate::util::sha256_digest;

/// One request a [`BlobHost`] answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRequest {
    /// The path and query.
    pub path_and_query: String,
    /// Every header, names in lowercase, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The status answered.
    pub status: u16,
}

impl HostRequest {
    /// The value of header `name` (lowercase), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct HostState {
    blobs: Mutex<HashMap<String, Bytes>>,
    requests: Mutex<Vec<HostRequest>>,
}

/// A server of blobs on `127.0.0.1:0`: `GET` of any path whose last segment
/// is a digest it holds (`…/sha256:<hex>`) answers the blob, `206` for a
/// single `Range`. Dropping it stops it.
#[derive(Debug)]
pub struct BlobHost {
    state: Arc<HostState>,
    server: BackgroundServer,
}

impl BlobHost {
    /// Starts a host serving `blobs`.
    ///
    /// # Panics
    ///
    /// If no port can be bound or the server thread cannot start.
    pub fn start(blobs: &[&[u8]]) -> Self {
        let state = Arc::new(HostState::default());
        for blob in blobs {
            state
                .blobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(sha256_digest(blob), Bytes::copy_from_slice(blob));
        }
        let listener = BackgroundServer::bind().expect("binding the blob host's port");
        let server = BackgroundServer::start("ocifs-test-blobs", listener, Arc::clone(&state))
            .expect("starting the blob host");
        Self { state, server }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<HostRequest> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// `bytes=a-b` or `bytes=a-` of a blob of `len` bytes, as `start..end`.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end = match b.trim() {
        "" => len,
        b => b.parse::<u64>().ok()?.saturating_add(1).min(len),
    };
    (start < end).then_some((start, end))
}

impl HostState {
    fn answer(&self, request: &Request<Incoming>) -> Response<Body> {
        if request.method() != http::Method::GET {
            return text_response(StatusCode::METHOD_NOT_ALLOWED, "GET only");
        }
        let digest = request.uri().path().rsplit('/').next().unwrap_or("");
        let Some(blob) = self
            .blobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned()
        else {
            return text_response(StatusCode::NOT_FOUND, "no such blob");
        };
        let len = blob.len() as u64;
        let range = request
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok());
        let (status, body, content_range) = match range {
            None => (StatusCode::OK, blob, None),
            Some(r) => match parse_range(r, len) {
                Some((start, end)) => (
                    StatusCode::PARTIAL_CONTENT,
                    blob.slice(start as usize..end as usize),
                    Some(format!("bytes {start}-{}/{len}", end - 1)),
                ),
                None => {
                    let mut response =
                        text_response(StatusCode::RANGE_NOT_SATISFIABLE, "bad range");
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                        response.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return response;
                }
            },
        };
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Some(v) = content_range.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(header::CONTENT_RANGE, v);
        }
        response
    }
}

impl Handler for HostState {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let response = self.answer(&request);
        let record = HostRequest {
            path_and_query: request
                .uri()
                .path_and_query()
                .map_or_else(String::new, ToString::to_string),
            headers: request
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            status: response.status().as_u16(),
        };
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_clamp() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=90-200", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=-5", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}

//! A repository reached through mirrors, in order, with the origin last.
//!
//! Each host is a [`RegistrySource`] of its own, connected on first use
//! with its own credentials (looked up for its own host: a mirror never
//! gets the origin's). A request goes to the first host that may be asked
//! it (its [`Capabilities`]), and on to the next when that host fails:
//!
//! - a host that is unreachable, times out or answers `5xx` is skipped for
//!   [`DOWN_FOR`] and asked again after; a mirror gets one attempt (the
//!   next host is the retry) with a short connect timeout
//!   ([`MIRROR_TIMEOUT`], for its silence too), so a dead or hung mirror
//!   costs a read that much and no more;
//! - a host that answers a request for part of a blob with the whole blob
//!   (`200`, as a pull-through cache does for a blob it has not cached)
//!   is not read through to the offset: the read goes to the next host at
//!   once, and that host is used for whole-blob streams only from then on;
//! - a stream that breaks off on one host goes on from the byte it reached
//!   on the next;
//! - a mirror that has not got the manifest or blob, or refuses us, sends
//!   the request on; only the origin's answer is final.
//!
//! What arrives is checked as from any source: a mirror is trusted no more
//! than the origin (bytes against digests, manifests by digest).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{BlobStream, FetchedManifest, RegistryOptions, RegistrySource, Selector, Source};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::hosts::Endpoint;
use crate::manifest::Descriptor;
use crate::reference::RegistryRef;
use crate::retry::RetryPolicy;

/// How long a host that failed is skipped before it is asked again.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

/// One host of the chain.
struct Host {
    endpoint: Endpoint,
    reference: RegistryRef,
    options: RegistryOptions,
    source: tokio::sync::Mutex<Option<Arc<RegistrySource>>>,
    down_until: Mutex<Option<Instant>>,
    whole_only: AtomicBool,
}

impl Host {
    fn is_down(&self) -> bool {
        let mut d = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        match *d {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *d = None;
                false
            }
            None => false,
        }
    }

    fn mark_down(&self, why: &Error) {
        tracing::warn!(host = %self.endpoint.url(), "{why}; skipping this host for {}s", DOWN_FOR.as_secs());
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + DOWN_FOR);
    }

    async fn connect(&self) -> Result<Arc<RegistrySource>> {
        let mut slot = self.source.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let mut options = self.options.clone();
        let source = match RegistrySource::connect(&self.reference, options.clone()).await {
            Err(e) if self.endpoint.http_fallback && !options.plain_http => {
                tracing::debug!(host = %self.endpoint.host, error = %e, "HTTPS failed; trying plain HTTP (insecure)");
                options.plain_http = true;
                RegistrySource::connect(&self.reference, options).await?
            }
            other => other?,
        };
        let source = Arc::new(source);
        *slot = Some(source.clone());
        Ok(source)
    }

    /// What arrived from the host (nothing if it is being connected to
    /// just now, or never was).
    fn wire_bytes(&self) -> u64 {
        self.source
            .try_lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.wire_bytes()))
            .unwrap_or(0)
    }
}

/// What a request needs of a host.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A manifest by tag, a tag list, referrers.
    Resolve,
    /// A manifest by digest, or a whole blob.
    Pull,
    /// Part of a blob: not from a host that sends whole blobs only.
    Range,
}

/// The bytes that arrived from one host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostBytes {
    /// The host's URL.
    pub host: String,
    /// Bytes of manifests and blobs received, kept or not.
    pub received: u64,
}

/// A repository through its mirrors and then its origin.
pub struct MirroredSource {
    chain: Arc<Chain>,
}

struct Chain {
    reference: RegistryRef,
    hosts: Vec<Host>,
}

impl fmt::Debug for MirroredSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self.chain.hosts.iter().map(|h| h.endpoint.url()).collect();
        f.debug_struct("MirroredSource")
            .field("reference", &self.chain.reference.to_string())
            .field("hosts", &hosts)
            .finish()
    }
}

/// How long a mirror may take to connect, and to say anything once it
/// has, before the next host is asked.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(3);

impl MirroredSource {
    /// The chain for `reference` over `hosts` (the last one the origin),
    /// each with its options (its credentials among them). Nothing is
    /// connected yet.
    pub fn new(reference: &RegistryRef, hosts: Vec<(Endpoint, RegistryOptions)>) -> Self {
        let hosts = hosts
            .into_iter()
            .map(|(endpoint, mut options)| {
                let mut reference = reference.clone();
                reference.registry = endpoint.host.clone();
                if let Some(r) = &endpoint.repository {
                    reference.repository = r.clone();
                }
                options.plain_http = endpoint.plain_http;
                options.insecure |= endpoint.skip_verify;
                options.api_root = Some(endpoint.api_root.clone());
                options.headers = endpoint.headers.clone();
                options.ca_files = endpoint.ca_files.clone();
                if let Some(t) = endpoint.dial_timeout {
                    options.connect_timeout = t;
                }
                if !endpoint.origin {
                    options.mirror = true;
                    options.connect_timeout = endpoint
                        .dial_timeout
                        .unwrap_or(options.connect_timeout.min(MIRROR_TIMEOUT));
                    options.read_timeout = options.read_timeout.min(MIRROR_TIMEOUT);
                    // The next host is the retry.
                    options.retry = RetryPolicy {
                        max_attempts: 1,
                        ..options.retry
                    };
                }
                Host {
                    endpoint,
                    reference,
                    options,
                    source: tokio::sync::Mutex::new(None),
                    down_until: Mutex::new(None),
                    whole_only: AtomicBool::new(false),
                }
            })
            .collect();
        MirroredSource {
            chain: Arc::new(Chain {
                reference: reference.clone(),
                hosts,
            }),
        }
    }

    /// The bytes received from each host so far, in chain order.
    pub fn wire(&self) -> Vec<HostBytes> {
        self.chain
            .hosts
            .iter()
            .map(|h| HostBytes {
                host: h.endpoint.url(),
                received: h.wire_bytes(),
            })
            .collect()
    }
}

impl Chain {
    fn nobody(&self, what: &str) -> Error {
        Error::Unreachable {
            registry: self.reference.registry.clone(),
            detail: format!("no host may be asked for {what}"),
            source: None,
        }
    }

    /// The hosts that may be asked for `need`, in order: those skipped for
    /// a while are left out, but the origin never is.
    fn candidates(&self, need: Need) -> Vec<&Host> {
        self.hosts
            .iter()
            .filter(|h| {
                let caps = h.endpoint.capabilities;
                h.endpoint.origin
                    || (!h.is_down()
                        && match need {
                            Need::Resolve => caps.resolve,
                            Need::Pull => caps.pull,
                            Need::Range => caps.pull && !h.whole_only.load(Ordering::Relaxed),
                        })
            })
            .collect()
    }

    /// `op` on each candidate in turn until one answers; the last one's
    /// error if none does.
    async fn first<T, F, Fut>(&self, need: Need, what: &str, op: F) -> Result<T>
    where
        F: Fn(Arc<RegistrySource>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let candidates = self.candidates(need);
        let mut last = None;
        for host in candidates {
            let attempt = match host.connect().await {
                Ok(source) => op(source).await,
                Err(e) => Err(e),
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(e) if host.endpoint.origin => return Err(e),
                Err(e) => {
                    self.passed_over(host, &e, what);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| self.nobody(what)))
    }

    /// A mirror that failed `what` with `e`: remembered as it deserves.
    fn passed_over(&self, host: &Host, e: &Error, what: &str) {
        match e {
            Error::RangeIgnored { .. } => {
                tracing::info!(host = %host.endpoint.url(), "{e}; it serves whole blobs only from now on");
                host.whole_only.store(true, Ordering::Relaxed);
            }
            e if e.is_transient() || matches!(e, Error::Registry { .. }) => host.mark_down(e),
            e => {
                tracing::debug!(host = %host.endpoint.url(), error = %e, "{what}: asking the next host")
            }
        }
    }
}

#[async_trait]
impl Source for MirroredSource {
    fn name(&self) -> String {
        self.chain.reference.name()
    }

    fn is_remote(&self) -> bool {
        true
    }

    async fn manifest(&self, selector: &Selector) -> Result<FetchedManifest> {
        let need = match selector {
            Selector::Tag(_) => Need::Resolve,
            Selector::Digest(_) => Need::Pull,
        };
        self.chain
            .first(need, &format!("manifest {selector}"), |s| async move {
                s.manifest(selector).await
            })
            .await
    }

    async fn read_range(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        self.chain
            .first(
                Need::Range,
                &format!("blob {}", blob.digest),
                |s| async move { s.read_range(blob, offset, len).await },
            )
            .await
    }

    async fn stream(&self, blob: &Descriptor) -> Result<BlobStream> {
        self.stream_from(blob, 0).await
    }

    /// The blob from `offset`, from the first host that answers; if the
    /// stream breaks off on a mirror, it goes on from the byte it reached
    /// on the next host.
    async fn stream_from(&self, blob: &Descriptor, offset: u64) -> Result<BlobStream> {
        let (index, stream) = self.chain.open_stream(blob, offset, None).await?;
        let me = ChainStream {
            chain: self.chain.clone(),
            blob: blob.clone(),
            at: offset,
            index,
            stream,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            me,
            ChainStream::next,
        )))
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.chain
            .hosts
            .last()
            .map(|h| h.options.retry)
            .unwrap_or_default()
    }

    async fn tags(&self) -> Result<Vec<String>> {
        self.chain
            .first(
                Need::Resolve,
                "the tag list",
                |s| async move { s.tags().await },
            )
            .await
    }

    async fn referrers(&self, subject: &Digest, artifact_type: &str) -> Result<Vec<Descriptor>> {
        self.chain
            .first(
                Need::Resolve,
                &format!("the referrers of {subject}"),
                |s| async move { s.referrers(subject, artifact_type).await },
            )
            .await
    }

    fn wire(&self) -> Vec<HostBytes> {
        MirroredSource::wire(self)
    }
}

impl Chain {
    /// A stream of `blob` from `offset` on the first candidate after
    /// `after` in the chain (from the start with `None`), with its index.
    async fn open_stream(
        &self,
        blob: &Descriptor,
        offset: u64,
        after: Option<usize>,
    ) -> Result<(usize, BlobStream)> {
        let need = if offset > 0 { Need::Range } else { Need::Pull };
        let what = format!("blob {} from byte {offset}", blob.digest);
        let candidates = self.candidates(need);
        let mut last = None;
        for (i, host) in self.hosts.iter().enumerate() {
            if after.is_some_and(|a| i <= a) || !candidates.iter().any(|c| std::ptr::eq(*c, host)) {
                continue;
            }
            let attempt = match host.connect().await {
                Ok(source) => source.stream_from(blob, offset).await,
                Err(e) => Err(e),
            };
            match attempt {
                Ok(s) => return Ok((i, s)),
                Err(e) if host.endpoint.origin => return Err(e),
                Err(e) => {
                    self.passed_over(host, &e, &what);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| self.nobody(&what)))
    }
}

/// A blob stream that goes on on the next host when a mirror's breaks off.
struct ChainStream {
    chain: Arc<Chain>,
    blob: Descriptor,
    at: u64,
    index: usize,
    stream: BlobStream,
}

impl ChainStream {
    async fn next(mut self) -> Option<(Result<Bytes>, ChainStream)> {
        loop {
            match self.stream.next().await {
                None => return None,
                Some(Ok(piece)) => {
                    self.at += piece.len() as u64;
                    return Some((Ok(piece), self));
                }
                Some(Err(e)) => {
                    let host = &self.chain.hosts[self.index];
                    if host.endpoint.origin || self.at >= self.blob.size {
                        return Some((Err(e), self));
                    }
                    self.chain.passed_over(host, &e, "a blob stream");
                    match self
                        .chain
                        .open_stream(&self.blob, self.at, Some(self.index))
                        .await
                    {
                        Ok((index, stream)) => {
                            tracing::info!(
                                from = %host.endpoint.url(),
                                to = %self.chain.hosts[index].endpoint.url(),
                                at = self.at,
                                "the stream of {} goes on on the next host", self.blob.digest
                            );
                            self.index = index;
                            self.stream = stream;
                        }
                        Err(e2) => {
                            tracing::debug!(error = %e2, "no host to go on with");
                            return Some((Err(e), self));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_dial_timeout_bounds_its_connections_and_mirrors_get_a_short_one_without() {
        let reference = RegistryRef::parse("origin.example/repo:v1").unwrap();
        let mut dialled = Endpoint::mirror("http://fast.mirror").unwrap();
        dialled.dial_timeout = Some(Duration::from_millis(250));
        let plain = Endpoint::mirror("http://other.mirror").unwrap();
        let mut origin = Endpoint::origin("origin.example", false);
        origin.dial_timeout = Some(Duration::from_secs(20));
        let options = RegistryOptions {
            connect_timeout: Duration::from_secs(10),
            ..RegistryOptions::default()
        };
        let m = MirroredSource::new(
            &reference,
            vec![
                (dialled, options.clone()),
                (plain, options.clone()),
                (origin, options),
            ],
        );
        let connects: Vec<_> = m
            .chain
            .hosts
            .iter()
            .map(|h| h.options.connect_timeout)
            .collect();
        assert_eq!(
            connects,
            [
                Duration::from_millis(250),
                MIRROR_TIMEOUT,
                Duration::from_secs(20)
            ]
        );
    }
}

//! A registry source that remembers: every manifest it fetches is stored in
//! the cache (it is a blob like any other) and every tag's resolution is
//! recorded, so the same reference resolves with no network at all when the
//! registry is unreachable or `--offline` forbids asking it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::DiskStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, MAX_MANIFEST_SIZE};
use crate::reference::RegistryRef;
use crate::retry::RetryPolicy;
use crate::source::{BlobStream, FetchedManifest, Selector, Source};

/// A registry source backed by the cache's records, or the records alone.
pub struct CachedSource {
    inner: Option<Arc<dyn Source>>,
    store: Arc<DiskStore>,
    reference: RegistryRef,
    why_offline: String,
}

impl fmt::Debug for CachedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedSource")
            .field("reference", &self.reference.to_string())
            .field("online", &self.inner.is_some())
            .finish()
    }
}

/// Errors after which the cache may stand in for the registry.
fn is_unreachable(e: &Error) -> bool {
    matches!(
        e,
        Error::Unreachable { .. } | Error::Timeout { .. } | Error::Transfer { .. }
    ) || matches!(e, Error::Registry { status, .. } if *status >= 500 || *status == 0)
}

impl CachedSource {
    /// Online: asks `inner` and records what it answers.
    pub fn online(inner: Arc<dyn Source>, store: Arc<DiskStore>, reference: RegistryRef) -> Self {
        CachedSource {
            inner: Some(inner),
            store,
            reference,
            why_offline: String::new(),
        }
    }

    /// Offline: answers from the records only; `why` ends the "not in the
    /// cache, and …" error (e.g. "--offline forbids the network").
    pub fn offline(store: Arc<DiskStore>, reference: RegistryRef, why: impl Into<String>) -> Self {
        CachedSource {
            inner: None,
            store,
            reference,
            why_offline: why.into(),
        }
    }

    fn answer_from_cache(&self, selector: &Selector, why: &str) -> Result<FetchedManifest> {
        let not_cached = || Error::NotCached {
            what: format!("manifest {}{selector}", self.reference.name()),
            why: why.to_owned(),
        };
        let digest = match selector {
            Selector::Digest(d) => d.clone(),
            Selector::Tag(t) => self
                .store
                .get_ref(&self.reference, t)
                .ok_or_else(not_cached)?,
        };
        let bytes = self
            .store
            .get_small(&digest, MAX_MANIFEST_SIZE)?
            .ok_or_else(not_cached)?;
        tracing::info!(manifest = %digest, "manifest served from the cache");
        Ok(FetchedManifest {
            bytes: Bytes::from(bytes),
            digest,
            media_type: None,
        })
    }

    fn no_network(&self, what: String) -> Error {
        Error::NotCached {
            what,
            why: self.why_offline.clone(),
        }
    }
}

#[async_trait]
impl Source for CachedSource {
    fn name(&self) -> String {
        self.reference.name()
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn can_fetch(&self) -> bool {
        self.inner.is_some()
    }

    async fn manifest(&self, selector: &Selector) -> Result<FetchedManifest> {
        let Some(inner) = &self.inner else {
            return self.answer_from_cache(selector, &self.why_offline);
        };
        match inner.manifest(selector).await {
            Ok(m) => {
                // Recording is best effort: a full disk must not fail a read.
                if let Err(e) = self.store.put_small(&m.digest, &m.bytes) {
                    tracing::warn!(error = %e, "cannot record the manifest in the cache");
                }
                if let Selector::Tag(t) = selector
                    && let Err(e) = self.store.put_ref(&self.reference, t, &m.digest)
                {
                    tracing::warn!(error = %e, "cannot record the tag in the cache");
                }
                Ok(m)
            }
            Err(e) if is_unreachable(&e) => {
                tracing::warn!(error = %e, "registry unreachable; trying the cache");
                self.answer_from_cache(selector, &format!("the registry failed: {e}"))
            }
            Err(e) => Err(e),
        }
    }

    async fn read_range(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        match &self.inner {
            Some(inner) => inner.read_range(blob, offset, len).await,
            None => Err(self.no_network(format!("blob {}", blob.digest))),
        }
    }

    async fn stream(&self, blob: &Descriptor) -> Result<BlobStream> {
        match &self.inner {
            Some(inner) => inner.stream(blob).await,
            None => Err(self.no_network(format!("blob {}", blob.digest))),
        }
    }

    async fn stream_from(&self, blob: &Descriptor, offset: u64) -> Result<BlobStream> {
        match &self.inner {
            Some(inner) => inner.stream_from(blob, offset).await,
            None => Err(self.no_network(format!("blob {}", blob.digest))),
        }
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.inner
            .as_ref()
            .map_or_else(RetryPolicy::none, |inner| inner.retry_policy())
    }

    fn wire(&self) -> Vec<crate::source::HostBytes> {
        self.inner.as_ref().map(|i| i.wire()).unwrap_or_default()
    }

    async fn tags(&self) -> Result<Vec<String>> {
        match &self.inner {
            Some(inner) => inner.tags().await,
            None => Ok(Vec::new()),
        }
    }

    async fn referrers(&self, subject: &Digest, artifact_type: &str) -> Result<Vec<Descriptor>> {
        match &self.inner {
            Some(inner) => inner.referrers(subject, artifact_type).await,
            None => Ok(Vec::new()),
        }
    }
}

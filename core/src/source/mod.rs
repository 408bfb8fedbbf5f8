//! Sources: where manifests and blob bytes come from.
//!
//! A [`Source`] answers three questions: the manifest under a tag or digest,
//! a byte range of a blob, and the whole blob as a stream. It does not verify
//! blob bytes (the cache and readers do: a range cannot be checked on its
//! own); it does verify manifests fetched by digest.
//!
//! Short-read rule: [`Source::read_range`] returns exactly
//! `min(len, size - offset)` bytes or an error; never fewer without saying so.

mod beneath;
mod layout;
mod mirror;
mod registry;

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

pub use layout::LayoutSource;
pub use mirror::{DOWN_FOR, HostBytes, MIRROR_TIMEOUT, MirroredSource};
pub use registry::{RegistryOptions, RegistrySource};

use crate::digest::Digest;
use crate::error::Result;
use crate::manifest::{Descriptor, Index};
use crate::retry::RetryPolicy;

/// A stream of blob bytes, in order, unverified.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// Which manifest of a repository or layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// By tag.
    Tag(String),
    /// By digest.
    Digest(Digest),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Tag(t) => write!(f, ":{t}"),
            Selector::Digest(d) => write!(f, "@{d}"),
        }
    }
}

/// A manifest's bytes as served, with their (computed) digest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// The raw bytes; the digest is over exactly these.
    pub bytes: Bytes,
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// The media type the source declared (Content-Type, or the descriptor's).
    pub media_type: Option<String>,
}

/// Where an artifact's manifests and blobs come from.
#[async_trait]
pub trait Source: Send + Sync + fmt::Debug {
    /// A human-readable name for messages (`registry/repo` or `oci:DIR`).
    fn name(&self) -> String;

    /// Whether bytes come over a network (and so are worth caching).
    fn is_remote(&self) -> bool;

    /// Whether a blob can be fetched (again) at all: false for a cache
    /// standing in for a registry it may not ask (`--offline`).
    fn can_fetch(&self) -> bool {
        true
    }

    /// The manifest or index under `selector`. A manifest fetched by digest
    /// is checked against it; one fetched by tag is returned with its
    /// computed digest.
    async fn manifest(&self, selector: &Selector) -> Result<FetchedManifest>;

    /// Exactly `min(len, blob.size - offset)` bytes of `blob` from `offset`.
    async fn read_range(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes>;

    /// The whole blob as a stream, unverified.
    async fn stream(&self, blob: &Descriptor) -> Result<BlobStream>;

    /// The blob from `offset` to its end as a stream, unverified: one
    /// request, for fetching a whole blob or resuming one. The default
    /// streams the whole blob and drops the first `offset` bytes.
    async fn stream_from(&self, blob: &Descriptor, offset: u64) -> Result<BlobStream> {
        Ok(skip_bytes(self.stream(blob).await?, offset))
    }

    /// How the source retries its transient failures: the budget for
    /// callers that resume its streams themselves (a broken
    /// [`stream_from`](Self::stream_from) opened again further on).
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }

    /// The tags the source knows, for error messages and listings. Sources
    /// that cannot list return an empty list.
    async fn tags(&self) -> Result<Vec<String>>;

    /// The manifests that name manifest `subject` as theirs (OCI
    /// referrers) and are of `artifact_type`; none where the source keeps
    /// no such list. What it says is not bound to the reference: a caller
    /// checks each manifest it fetches by its digest, and trusts it only
    /// as far as it trusts whoever can push to the repository.
    async fn referrers(&self, subject: &Digest, artifact_type: &str) -> Result<Vec<Descriptor>> {
        let _ = (subject, artifact_type);
        Ok(Vec::new())
    }

    /// The bytes that arrived from each host so far, kept or not: what
    /// crossed the wire, beside what the cache counts as fetched.
    fn wire(&self) -> Vec<HostBytes> {
        Vec::new()
    }

    /// The layout's `index.json`, for sources that have one.
    async fn root_index(&self) -> Result<Option<Index>> {
        Ok(None)
    }
}

/// Drops the first `n` bytes of a stream.
pub fn skip_bytes(stream: BlobStream, mut n: u64) -> BlobStream {
    use futures_util::TryStreamExt as _;
    if n == 0 {
        return stream;
    }
    Box::pin(stream.try_filter_map(move |chunk| {
        let out = if n >= chunk.len() as u64 {
            n -= chunk.len() as u64;
            None
        } else {
            let rest = chunk.slice(n as usize..);
            n = 0;
            Some(rest)
        };
        futures_util::future::ready(Ok(out))
    }))
}

/// Tags that look like `wanted`, best first, for "did you mean" hints.
pub fn nearby_tags(wanted: &str, tags: &[String]) -> Vec<String> {
    let wanted_l = wanted.to_ascii_lowercase();
    let mut scored: Vec<(usize, &String)> = tags
        .iter()
        .filter_map(|t| {
            let tl = t.to_ascii_lowercase();
            let d = edit_distance(&wanted_l, &tl);
            let close = d <= 2.max(wanted.len() / 3)
                || tl.starts_with(&wanted_l)
                || wanted_l.starts_with(&tl);
            close.then_some((d, t))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, t)| t.clone()).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn skip_bytes_drops_a_prefix_across_chunks() {
        use futures_util::TryStreamExt as _;
        let chunks = ["abc", "defg", "h"].map(|c| Ok(Bytes::from_static(c.as_bytes())));
        for (n, want) in [
            (0, "abcdefgh"),
            (2, "cdefgh"),
            (3, "defgh"),
            (6, "gh"),
            (8, ""),
            (9, ""),
        ] {
            let s: BlobStream = Box::pin(futures_util::stream::iter(chunks.clone()));
            let got: Vec<Bytes> = skip_bytes(s, n).try_collect().await.unwrap();
            assert_eq!(got.concat(), want.as_bytes(), "skip {n}");
        }
    }

    #[test]
    fn nearby_tags_finds_typos_and_prefixes() {
        let tags: Vec<String> = ["v1.6.20", "v1.6.21", "latest", "v2.0.0"]
            .map(String::from)
            .to_vec();
        assert_eq!(nearby_tags("v1.6.2", &tags), vec!["v1.6.20", "v1.6.21"]);
        assert_eq!(nearby_tags("lates", &tags), vec!["latest"]);
        assert!(nearby_tags("zzzzzzzzzz", &tags).is_empty());
    }
}

//! A blob streamed from its source, resumed where it breaks: the one loop
//! behind the strict whole-blob stream and the scan.

use bytes::Bytes;
use futures_util::StreamExt as _;

use crate::blob::Counters;
use crate::error::{Error, Result};
use crate::manifest::Descriptor;
use crate::retry::Resumption;
use crate::source::{BlobStream, Source};

/// The bytes of a blob from an offset on, one piece at a time. A stream
/// that breaks, stalls or ends short is opened again where it stopped,
/// under the source's retry policy counted from the last progress: a
/// download of any length goes on while it advances, and fails once it
/// went the policy's whole time without a byte (a stall), or broke its
/// attempts over without a byte. A request after a break starts at a
/// multiple of the chunk size (as the first missing chunk would, and as a
/// slicing cache in front of the registry stores ranges); what it sends
/// again of the bytes already passed on is dropped here.
pub(super) struct Resuming<'a> {
    source: &'a dyn Source,
    blob: &'a Descriptor,
    counters: &'a Counters,
    retry: Resumption,
    what: String,
    /// The offset of the next byte.
    pos: u64,
    /// Where the open request started.
    opened_at: u64,
    /// Requests after a break start at a multiple of this.
    align: u64,
    /// Bytes the open request sends again, to drop.
    again: u64,
    /// Whether a request broke (the next one is a resumption).
    broke: bool,
    stream: Option<BlobStream>,
}

impl<'a> Resuming<'a> {
    /// `blob` from offset `from`, requests and bytes counted in `counters`,
    /// resumed at multiples of `align`.
    pub(super) fn new(
        source: &'a dyn Source,
        blob: &'a Descriptor,
        counters: &'a Counters,
        from: u64,
        align: u64,
    ) -> Self {
        Resuming {
            source,
            blob,
            counters,
            retry: source.retry_policy().resumption(),
            what: format!("blob {} from {}", blob.digest, source.name()),
            pos: from,
            opened_at: from,
            align: align.max(1),
            again: 0,
            broke: false,
            stream: None,
        }
    }

    /// The next piece, `None` at the blob's end. A source that sends more
    /// than the blob's size has it passed on: the caller's digest check
    /// fails it.
    pub(super) async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => {
                    if self.pos >= self.blob.size {
                        return Ok(None);
                    }
                    Counters::bump(&self.counters.requests);
                    let at = if self.broke {
                        self.pos / self.align * self.align
                    } else {
                        self.pos
                    };
                    let opened = self
                        .retry
                        .within(&self.what, self.source.stream_from(self.blob, at))
                        .await
                        .and_then(|r| r);
                    match opened {
                        Ok(stream) => {
                            self.again = self.pos - at;
                            self.opened_at = self.pos;
                            self.stream.insert(stream)
                        }
                        Err(e) if self.retry.again(&self.what, &e).await => continue,
                        Err(e) => return Err(e),
                    }
                }
            };
            // Silence is bounded here too: not every source times out an
            // idle stream itself.
            let next = match self.retry.within(&self.what, stream.next()).await {
                Ok(next) => next,
                Err(e) => Some(Err(e)),
            };
            let broke = match next {
                Some(Ok(mut bytes)) => {
                    self.retry.alive();
                    let n = bytes.len() as u64;
                    self.counters
                        .bytes_fetched
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    if self.again > 0 {
                        let drop = self.again.min(n);
                        self.again -= drop;
                        bytes = bytes.slice(drop as usize..);
                        if bytes.is_empty() {
                            continue;
                        }
                    }
                    self.pos += bytes.len() as u64;
                    return Ok(Some(bytes));
                }
                None if self.pos >= self.blob.size => return Ok(None),
                None => Error::ShortRead {
                    digest: self.blob.digest.to_string(),
                    offset: self.opened_at,
                    expected: self.blob.size - self.opened_at,
                    got: self.pos - self.opened_at,
                },
                Some(Err(e)) => e,
            };
            self.stream = None;
            self.broke = true;
            if self.pos > self.opened_at {
                self.retry.progress();
            }
            if !self.retry.again(&self.what, &broke).await {
                return Err(broke);
            }
            tracing::debug!(digest = %self.blob.digest, at = self.pos, error = %broke, "blob stream broke; resuming");
        }
    }
}

//! The one bridge from verified blobs to the decoders, which are
//! synchronous: [`BlobRead`], a range of a blob as a blocking `Read` (and
//! as a [`TarInput`] that skips without reading), run on a blocking thread
//! by [`with_stream`] or parked between reads in a decoder that outlives
//! a call.

use std::io::{self, Read};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::tar::TarInput;
use crate::blob::BlobReader;
use crate::error::{Error, Result};
use crate::manifest::Descriptor;

/// How much is read through the blob reader at a time.
const PIECE: u64 = 1 << 20;
/// Ranges up to this long are read at once.
const SHORT: u64 = 8 << 20;

/// A range of a blob, read through a [`BlobReader`] from a blocking
/// thread: a piece at a time, the next piece asked for while the decoder
/// works on this one. A range up to 8 MiB (a span between two seek points)
/// is one read: the chunks it needs and no more (pieces would look
/// sequential to the cache, which would read ahead past the range).
///
/// A read that fails gives an `io::Error` carrying the blob reader's own
/// [`Error`] ([`reader_error`] gets it back).
pub(crate) struct BlobRead {
    blobs: Arc<dyn BlobReader>,
    blob: Arc<Descriptor>,
    /// The next byte [`Read::read`] gives.
    pos: u64,
    end: u64,
    piece: u64,
    /// Whether the next piece is asked for while this one is decoded (not
    /// for a walk of headers, which skips most of what it passes).
    ahead: bool,
    /// Bytes from `pos` on, already read.
    buf: Bytes,
    /// The read of the piece after `buf`, under way.
    next: Option<(u64, JoinHandle<Result<Bytes>>)>,
    handle: Handle,
    /// What the last failed blob read failed with.
    failure: Option<Error>,
}

impl BlobRead {
    /// Bytes `range` of `blob` (cut at its end), read `piece` bytes at a
    /// time (by default as the type says, reading ahead). Must be made
    /// where a tokio runtime is current; read from a blocking thread.
    pub(crate) fn new(
        blobs: Arc<dyn BlobReader>,
        blob: Arc<Descriptor>,
        range: Range<u64>,
        piece: Option<u64>,
    ) -> Self {
        let end = range.end.min(blob.size);
        let len = end.saturating_sub(range.start);
        let ahead = piece.is_none();
        let piece = piece.unwrap_or(if len <= SHORT { len.max(1) } else { PIECE });
        BlobRead {
            blobs,
            blob,
            pos: range.start,
            end,
            piece,
            ahead,
            buf: Bytes::new(),
            next: None,
            handle: Handle::current(),
            failure: None,
        }
    }

    fn spawn(&self, at: u64) -> Option<(u64, JoinHandle<Result<Bytes>>)> {
        if at >= self.end {
            return None;
        }
        let (blobs, blob) = (self.blobs.clone(), self.blob.clone());
        let len = self.piece.min(self.end - at);
        let task = self
            .handle
            .spawn(async move { blobs.scan_blob(&blob, at, len).await });
        Some((at, task))
    }

    /// Fills `buf` with the piece at `pos`, if there is one.
    fn fill(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() || self.pos >= self.end {
            return Ok(());
        }
        let task = match self.next.take() {
            Some((at, task)) if at == self.pos => task,
            other => {
                if let Some((_, stale)) = other {
                    stale.abort();
                }
                match self.spawn(self.pos) {
                    Some((_, task)) => task,
                    None => return Ok(()),
                }
            }
        };
        let bytes = match self.handle.block_on(task) {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                self.failure = Some(e.clone());
                return Err(io::Error::other(e));
            }
            Err(e) => return Err(io::Error::other(format!("a blob read failed: {e}"))),
        };
        if bytes.is_empty() {
            return Err(io::Error::other(Error::ShortRead {
                digest: self.blob.digest.to_string(),
                offset: self.pos,
                expected: self.piece.min(self.end - self.pos),
                got: 0,
            }));
        }
        self.buf = bytes;
        // Sequential reading: the next piece while this one is decoded.
        if self.ahead && self.end - self.pos > self.piece {
            self.next = self.spawn(self.pos + self.buf.len() as u64);
        }
        Ok(())
    }
}

impl Drop for BlobRead {
    fn drop(&mut self) {
        if let Some((_, task)) = self.next.take() {
            task.abort();
        }
    }
}

impl Read for BlobRead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        self.fill()?;
        let n = self.buf.len().min(out.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        self.pos += n as u64;
        Ok(n)
    }
}

impl TarInput for BlobRead {
    fn read_full(&mut self, out: &mut [u8]) -> io::Result<usize> {
        super::tar::read_full(self, out)
    }

    /// Skips without reading what is not already read.
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let n = n.min(self.end.saturating_sub(self.pos));
        if n <= self.buf.len() as u64 {
            self.buf = self.buf.slice(n as usize..);
        } else {
            self.buf = Bytes::new();
        }
        self.pos += n;
        Ok(n)
    }
}

/// The blob reader's own error, if `e` carries one (a read of a
/// [`BlobRead`] that failed: network, integrity, offline).
pub(crate) fn reader_error(e: &io::Error) -> Option<Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .cloned()
}

/// Runs `consume` on a blocking thread over bytes `range` of `blob`.
///
/// The result is `consume`'s if it succeeds, even if the rest of the range
/// could not be read; if it fails and reading failed, the read error (the
/// cause) is returned.
pub(crate) async fn with_stream<T, F>(
    blobs: &Arc<dyn BlobReader>,
    blob: &Descriptor,
    range: Range<u64>,
    consume: F,
) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut BlobRead) -> Result<T> + Send + 'static,
{
    let mut input = BlobRead::new(blobs.clone(), Arc::new(blob.clone()), range, None);
    tokio::task::spawn_blocking(move || {
        consume(&mut input).map_err(|e| input.failure.take().unwrap_or(e))
    })
    .await
    .map_err(|e| {
        Error::io(
            "decoding a blob",
            io::Error::other(format!("the decoder task failed: {e}")),
        )
    })?
}

/// A `Read` that fails once more than `limit` bytes came through it.
#[derive(Debug)]
pub(crate) struct Bounded<R> {
    inner: R,
    left: u64,
    what: &'static str,
}

impl<R: Read> Bounded<R> {
    pub(crate) fn new(inner: R, limit: u64, what: &'static str) -> Self {
        Bounded {
            inner,
            left: limit,
            what,
        }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(n)
            }
            None => Err(io::Error::new(io::ErrorKind::InvalidData, self.what)),
        }
    }
}

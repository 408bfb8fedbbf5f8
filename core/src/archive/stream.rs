//! A blob range as a blocking `Read`, for the decoders (gzip, zstd, deflate,
//! tar headers), which are synchronous.
//!
//! The range is read through the [`Reader`] in pieces by the calling task
//! and handed over a small channel to a blocking thread that runs the
//! decoder; a decoder that has what it needs stops reading, and the
//! remaining pieces are not fetched.

use std::io::{self, Read};
use std::ops::Range;

use bytes::{Buf as _, Bytes};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::manifest::Descriptor;
use crate::reader::Reader;
use crate::view::Content;

/// How much is read through the reader at a time.
const PIECE: u64 = 1 << 20;
/// Ranges up to this long are read at once.
const SHORT: u64 = 8 << 20;

/// Runs `consume` on a blocking thread over bytes `range` of `blob`.
///
/// The result is `consume`'s if it succeeds, even if the rest of the range
/// could not be read; if it fails and reading failed first, the read error
/// (the cause) is returned.
pub(crate) async fn with_stream<T, F>(
    reader: &dyn Reader,
    blob: &Descriptor,
    range: Range<u64>,
    consume: F,
) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut StreamRead) -> Result<T> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let consumer = tokio::task::spawn_blocking(move || {
        let mut r = StreamRead {
            rx,
            current: Bytes::new(),
        };
        consume(&mut r)
    });
    let content = Content::Blob(std::sync::Arc::new(blob.clone()));
    let producer = async move {
        let end = range.end.min(blob.size);
        let mut offset = range.start;
        // A short range (a span between two seek points) is one read: the
        // chunks it needs and no more (pieces would look sequential to the
        // cache, which would read ahead past the range).
        let piece = if end.saturating_sub(offset) <= SHORT {
            end.saturating_sub(offset).max(1)
        } else {
            PIECE
        };
        while offset < end {
            let bytes = reader
                .read(&content, offset, piece.min(end - offset))
                .await?;
            if bytes.is_empty() {
                return Err(Error::ShortRead {
                    digest: blob.digest.to_string(),
                    offset,
                    expected: piece.min(end - offset),
                    got: 0,
                });
            }
            offset += bytes.len() as u64;
            if tx.send(bytes).await.is_err() {
                break; // the consumer has what it needs
            }
        }
        Ok(())
    };
    let (produced, consumed) = tokio::join!(producer, consumer);
    let consumed = consumed.map_err(|e| {
        Error::io(
            "decoding a package",
            io::Error::other(format!("the decoder task failed: {e}")),
        )
    })?;
    match (consumed, produced) {
        (Ok(t), _) => Ok(t),
        (Err(_), Err(read)) => Err(read),
        (Err(e), Ok(())) => Err(e),
    }
}

/// The consuming end of [`with_stream`]: a `Read` that ends where the range
/// does.
#[derive(Debug)]
pub(crate) struct StreamRead {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl StreamRead {
    /// The reading end of a channel of pieces.
    pub(crate) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        StreamRead {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for StreamRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
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

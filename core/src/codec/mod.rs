//! Decoding, synchronous: what turns verified blob bytes into files.
//!
//! - [`input`]: the one bridge from a [`crate::blob::BlobReader`] to a
//!   blocking `Read` (and a tar input that skips without reading), and
//!   the byte bound a decoder may not grow past.
//! - [`gzip`]: seek points in a gzip stream (the zran technique), and
//!   inflating from one.
//! - [`zstd`]: a multi-frame zstd decoder, and frames as seek points.
//! - [`tar`]: the one tar walker: packages and image layers alike.
//! - [`zip`]: a zip entry's local header and data, decoded and checked.
//!
//! Nothing here knows of views or caches: a decoder reads a stream, and the
//! layers above decide where the stream comes from.

pub mod gzip;
pub(crate) mod input;
pub(crate) mod names;
pub mod tar;
pub(crate) mod zip;
pub mod zstd;

use std::io::{self, Read};

use crate::content::{Compression, SeekPoints};
use crate::digest::{BlobHasher, Digest};
use crate::error::{Error, Result, cause};
use crate::manifest::Descriptor;

/// The largest ratio of a decoded stream's (or a zip entry's) size to its
/// compressed size: beyond it, a decompression bomb is assumed.
pub const MAX_RATIO: u64 = 1000;

/// What a decoder may give of a compressed stream of `compressed` bytes,
/// at most: [`MAX_RATIO`] times as much (and at least 1 MiB, for tiny
/// streams of zeros).
pub fn inflate_limit(compressed: u64) -> u64 {
    compressed.saturating_mul(MAX_RATIO).max(1 << 20)
}

/// The message of a stream that grew past [`inflate_limit`].
pub(crate) const BOMB: &str =
    "the stream decompresses to over 1000 times its compressed size (a decompression bomb?)";

/// The decompressed stream of `r`, bounded by [`inflate_limit`] of `blob`.
pub(crate) fn decoder<'a, R: Read + 'a>(
    r: R,
    compression: Compression,
    blob: &Descriptor,
) -> Box<dyn Read + 'a> {
    let limit = inflate_limit(blob.size);
    match compression {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(input::Bounded::new(
            flate2::read::MultiGzDecoder::new(r),
            limit,
            BOMB,
        )),
        Compression::Zstd => Box::new(input::Bounded::new(zstd::Zstd::new(r), limit, BOMB)),
    }
}

/// How a package is named in messages: its title, else its digest.
pub(crate) fn package_name(blob: &Descriptor) -> String {
    blob.title()
        .map_or_else(|| blob.digest.to_string(), str::to_owned)
}

/// An [`Error::Archive`] about package `blob` (and an entry of it).
pub(crate) fn archive_error(
    blob: &Descriptor,
    entry: Option<&str>,
    reason: impl Into<String>,
) -> Error {
    Error::Archive {
        package: package_name(blob),
        entry: entry.map(str::to_owned),
        reason: reason.into(),
        source: None,
    }
}

/// An [`archive_error`] that another error (a read, a decoder) caused: it is
/// kept as the source.
pub(crate) fn archive_error_from(
    blob: &Descriptor,
    entry: Option<&str>,
    reason: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Archive {
        package: package_name(blob),
        entry: entry.map(str::to_owned),
        reason: reason.into(),
        source: cause(source),
    }
}

/// An [`Error::Layer`] about image layer `blob`.
pub(crate) fn layer_error(blob: &Descriptor, reason: impl Into<String>) -> Error {
    Error::Layer {
        layer: blob.digest.to_string(),
        entry: None,
        reason: reason.into(),
        source: None,
    }
}

/// What walking a tar stream with [`walk_stream`] gave besides its entries.
#[derive(Debug)]
pub(crate) struct Walked {
    /// Where decoding can resume.
    pub points: SeekPoints,
    /// The length of the uncompressed stream.
    pub len: u64,
    /// The decoded copy made on the way, if one was asked for.
    pub copy: Option<Copied>,
}

/// Walks the tar stream in `r` (compressed as `compression`, `compressed`
/// bytes long), handing each entry to `sink` ([`tar::walk_each`]) and
/// recording where decoding can resume: gzip seek points (their windows
/// thinned to a twentieth of the stream), zstd frames. With `copy`, the
/// decoded stream is written to that file as it passes (zstd only).
/// Decoding is bounded by [`inflate_limit`].
pub(crate) fn walk_stream(
    r: &mut dyn Read,
    compression: Compression,
    compressed: u64,
    max_entries: usize,
    names: tar::Names,
    copy: Option<(std::fs::File, u64)>,
    sink: impl FnMut(Result<tar::TocEntry, String>),
) -> Result<Walked, tar::WalkError> {
    use tar::{Stream, walk_each};
    let limit = inflate_limit(compressed);
    match compression {
        Compression::None => {
            let walked = walk_each(&mut Stream(&mut *r), max_entries, names, sink)?;
            // The rest (end-of-archive padding) counts in the length.
            let rest = io::copy(r, &mut io::sink())?;
            Ok(Walked {
                points: SeekPoints::None,
                len: walked + rest,
                copy: None,
            })
        }
        Compression::Gzip => {
            let mut g = gzip::GzipIndexer::new(r, gzip::DEFAULT_SPACING, limit)?;
            walk_each(&mut Stream(&mut g), max_entries, names, sink)?;
            let (points, len) = g.finish()?;
            // Windows beyond a twentieth of the stream are thinned out.
            let points = gzip::thin(points, (compressed / 20).max(256 << 10));
            Ok(Walked {
                points: SeekPoints::Gzip(points),
                len,
                copy: None,
            })
        }
        Compression::Zstd => {
            let mut z = zstd::ZstdIndexer::new(r, zstd::DEFAULT_SPACING, limit);
            let copy = match copy {
                Some((file, chunk_size)) => {
                    let mut tee = Tee::new(&mut z, file, chunk_size);
                    walk_each(&mut Stream(&mut tee), max_entries, names, sink)?;
                    io::copy(&mut tee, &mut io::sink())?;
                    Some(tee.finish()?)
                }
                None => {
                    walk_each(&mut Stream(&mut z), max_entries, names, sink)?;
                    None
                }
            };
            let (points, len) = z.finish()?;
            Ok(Walked {
                points: SeekPoints::Zstd(points),
                len,
                copy,
            })
        }
    }
}

/// A `Read` that copies what passes to a file, hashing it whole and in
/// chunks of the cache's size (the chunk table the copy is kept with).
pub(crate) struct Tee<R> {
    inner: R,
    out: std::io::BufWriter<std::fs::File>,
    hasher: BlobHasher,
}

/// What a [`Tee`] wrote: the copy's digest, length and chunk table.
#[derive(Debug)]
pub(crate) struct Copied {
    pub digest: Digest,
    pub len: u64,
    pub chunk_size: u64,
    pub table: Vec<[u8; 32]>,
}

impl<R: std::io::Read> Tee<R> {
    pub(crate) fn new(inner: R, file: std::fs::File, chunk_size: u64) -> Self {
        Tee {
            inner,
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: BlobHasher::new(chunk_size),
        }
    }

    /// Flushes and syncs the file: what passed.
    pub(crate) fn finish(self) -> std::io::Result<Copied> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let len = self.hasher.len();
        let chunk_size = self.hasher.chunk_size();
        let (digest, table) = self.hasher.finish();
        Ok(Copied {
            digest,
            len,
            chunk_size,
            table,
        })
    }
}

impl<R: std::io::Read> std::io::Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        std::io::Write::write_all(&mut self.out, &buf[..n])?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

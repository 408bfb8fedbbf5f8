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
use crate::digest::{BlobHasher, ChunkHash, ChunkTable, Digest};
use crate::error::{Error, Result, cause};
use crate::manifest::Descriptor;

/// Decoded bytes a layer's or package's stream may have past the end of
/// its tar (tools pad the archive to a record: 10 KiB for GNU tar); more is
/// refused. What bounds decoding is what the tar headers declare, not the
/// ratio to the compressed size: a layer of zero-filled disk images
/// legitimately compresses over 1000:1, and a stream is consumed as it is
/// decoded, so memory stays bounded whatever it inflates to.
pub const MAX_TRAILING: u64 = 1 << 20;

/// What a decoder may give of a stream whose walk found it `declared`
/// bytes long (its tar to the end-of-archive marker): that, and
/// [`MAX_TRAILING`] more.
pub fn decoded_limit(declared: u64) -> u64 {
    declared.saturating_add(MAX_TRAILING)
}

/// The message of a stream that decoded past [`decoded_limit`].
pub(crate) const OVERRUN: &str =
    "the stream decodes to more than its tar declares (trailing data, or a decompression bomb)";

/// The decompressed stream of `r`, bounded by `limit` ([`decoded_limit`]).
pub(crate) fn decoder<'a, R: Read + 'a>(
    r: R,
    compression: Compression,
    limit: u64,
) -> Box<dyn Read + 'a> {
    match compression {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(input::Bounded::new(
            flate2::read::MultiGzDecoder::new(r),
            limit,
            OVERRUN,
        )),
        Compression::Zstd => Box::new(input::Bounded::new(zstd::Zstd::new(r), limit, OVERRUN)),
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
/// Decoding past the end of the tar is bounded by [`decoded_limit`].
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
            let mut g = gzip::GzipIndexer::new(r, gzip::DEFAULT_SPACING, u64::MAX)?;
            let walked = walk_each(&mut Stream(&mut g), max_entries, names, sink)?;
            g.set_limit(decoded_limit(walked));
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
            let mut z = zstd::ZstdIndexer::new(r, zstd::DEFAULT_SPACING, u64::MAX);
            let copy = match copy {
                Some((file, chunk_size)) => {
                    let mut tee = Tee::new(&mut z, file, chunk_size);
                    let walked = walk_each(&mut Stream(&mut tee), max_entries, names, sink)?;
                    tee.inner.set_limit(decoded_limit(walked));
                    io::copy(&mut tee, &mut io::sink())?;
                    Some(tee.finish()?)
                }
                None => {
                    let walked = walk_each(&mut Stream(&mut z), max_entries, names, sink)?;
                    z.set_limit(decoded_limit(walked));
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
    pub table: ChunkTable,
}

impl<R: std::io::Read> Tee<R> {
    pub(crate) fn new(inner: R, file: std::fs::File, chunk_size: u64) -> Self {
        Tee {
            inner,
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: BlobHasher::new(chunk_size, ChunkHash::AT_REST),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of one zero-filled file of `size` bytes, then `trailing`
    /// zero bytes past its end-of-archive marker.
    fn zero_tar(size: usize, trailing: usize) -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        let mut h = ::tar::Header::new_ustar();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "disk.img", io::repeat(0).take(size as u64))
            .unwrap();
        let mut tar = b.into_inner().unwrap();
        tar.resize(tar.len() + trailing, 0);
        tar
    }

    fn walk(tar: &[u8], compression: Compression) -> Result<Vec<tar::TocEntry>, String> {
        let stream = match compression {
            Compression::Gzip => gzip::tests::gzip(tar, 9),
            Compression::Zstd => {
                ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest)
            }
            Compression::None => tar.to_vec(),
        };
        let mut entries = Vec::new();
        walk_stream(
            &mut &stream[..],
            compression,
            stream.len() as u64,
            10,
            tar::Names::Layer,
            None,
            |e| entries.push(e.unwrap()),
        )
        .map_err(|e| e.to_string())?;
        Ok(entries)
    }

    #[test]
    fn a_zero_filled_layer_is_walked_whatever_its_ratio() {
        let tar = zero_tar(20 << 20, 0);
        for compression in [Compression::Gzip, Compression::Zstd] {
            let entries = walk(&tar, compression).unwrap();
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].size, 20 << 20);
        }
        // Over 1000:1 indeed.
        assert!(gzip::tests::gzip(&tar, 9).len() * 1000 < tar.len());
    }

    #[test]
    fn output_past_the_end_of_the_tar_is_bounded() {
        // A little padding past the end-of-archive marker is what tools write.
        let padded = zero_tar(1 << 20, 10 << 10);
        let far = zero_tar(1 << 20, 4 << 20);
        for compression in [Compression::Gzip, Compression::Zstd] {
            assert!(walk(&padded, compression).is_ok(), "{compression:?}");
            let e = walk(&far, compression).unwrap_err();
            assert!(
                e.contains("more than its tar declares"),
                "{compression:?}: {e}"
            );
        }
    }
}

//! A zip entry's bytes: its local header checked against what the central
//! directory said, its data inflated and checked against its size and
//! CRC-32.

use std::io::Read as _;
use std::sync::Arc;

use bytes::Bytes;

use super::input::{Bounded, with_stream};
use super::{archive_error, archive_error_from, package_name};
use crate::blob::BlobReader;
use crate::content::{ZipEntry, ZipMethod};
use crate::error::{Error, Result};

/// Entries up to this size are decoded whole on first read (and kept by
/// the content reader); larger ones are read range by range.
pub const DECODE_WHOLE_MAX: u64 = 128 << 20;

/// The fixed part of a local file header.
pub(crate) const LOCAL_HEADER: u64 = 30;
pub(crate) const LOCAL_SIGNATURE: u32 = 0x0403_4b50;
/// General purpose flags: encrypted, sizes in a data descriptor.
pub(crate) const FLAG_ENCRYPTED: u16 = 1;
pub(crate) const FLAG_DATA_DESCRIPTOR: u16 = 1 << 3;
/// How much of a local header's name and extra field is read along with
/// its fixed part, so that one request usually gets header and data.
pub(crate) const LOCAL_SLACK: u64 = 256;

/// Where an entry's data starts, from its local header, after checking the
/// header against the central directory.
struct Local {
    /// Offset of the data from the header's start.
    data_start: u64,
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

/// Reads the local header of `e` (whose first bytes may be in `first`) and
/// checks it against what the central directory said.
async fn local_header(
    blobs: &Arc<dyn BlobReader>,
    e: &ZipEntry,
    first: Option<Bytes>,
) -> Result<Local> {
    let bad = |reason: String| archive_error(e.blob(), Some(e.name()), reason);
    let mut head = match first {
        Some(b) => b,
        None => {
            blobs
                .read_blob(
                    e.blob(),
                    e.header_offset(),
                    LOCAL_HEADER + e.name().len() as u64 + LOCAL_SLACK,
                )
                .await?
        }
    };
    if (head.len() as u64) < LOCAL_HEADER || le32(&head, 0) != LOCAL_SIGNATURE {
        return Err(bad(format!(
            "no local file header at offset {}",
            e.header_offset()
        )));
    }
    let (flags, method) = (le16(&head, 6), le16(&head, 8));
    let (crc, csize, size) = (le32(&head, 14), le32(&head, 18), le32(&head, 22));
    let (n, m) = (u64::from(le16(&head, 26)), u64::from(le16(&head, 28)));
    let header_len = LOCAL_HEADER + n + m;
    if (head.len() as u64) < header_len {
        head = blobs
            .read_blob(e.blob(), e.header_offset(), header_len)
            .await?;
        if (head.len() as u64) < header_len {
            return Err(bad(
                "its local header is cut off by the end of the archive".into()
            ));
        }
    }
    if flags & FLAG_ENCRYPTED != 0 {
        return Err(bad("encrypted (not supported)".into()));
    }
    let central_method = match e.method() {
        ZipMethod::Stored => 0,
        ZipMethod::Deflated => 8,
    };
    if method != central_method {
        return Err(bad(format!(
            "its local header says compression method {method}, the central directory {central_method}"
        )));
    }
    let name = &head[LOCAL_HEADER as usize..(LOCAL_HEADER + n) as usize];
    if e.name().is_ascii() && name != e.name().as_bytes() {
        return Err(bad(format!(
            "its local header names it {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    if flags & FLAG_DATA_DESCRIPTOR == 0 {
        let extra = &head[(LOCAL_HEADER + n) as usize..header_len as usize];
        let (mut local_size, mut local_csize) = (u64::from(size), u64::from(csize));
        if size == u32::MAX || csize == u32::MAX {
            match zip64_sizes(extra) {
                Some((s, c)) => (local_size, local_csize) = (s, c),
                None => {
                    return Err(bad(
                        "its local header has zip64 sizes but no zip64 extra field".into(),
                    ));
                }
            }
        }
        if local_size != e.size() || local_csize != e.compressed_size() {
            return Err(bad(format!(
                "sizes disagree: the central directory says {} bytes ({} compressed), the local header {} ({} compressed)",
                e.size(),
                e.compressed_size(),
                local_size,
                local_csize
            )));
        }
        if crc != e.crc32() {
            return Err(bad(format!(
                "CRC-32 disagrees: the central directory says {:08x}, the local header {crc:08x}",
                e.crc32()
            )));
        }
    }
    if e.header_offset()
        .checked_add(header_len)
        .and_then(|x| x.checked_add(e.compressed_size()))
        .is_none_or(|end| end > e.blob().size)
    {
        return Err(bad("its data extends past the end of the archive".into()));
    }
    Ok(Local {
        data_start: header_len,
    })
}

/// The zip64 extra field of a local header: (size, compressed size).
fn zip64_sizes(mut extra: &[u8]) -> Option<(u64, u64)> {
    while extra.len() >= 4 {
        let (id, len) = (le16(extra, 0), usize::from(le16(extra, 2)));
        let body = extra.get(4..4 + len)?;
        if id == 0x0001 && body.len() >= 16 {
            return Some((le64(body, 0), le64(body, 8)));
        }
        extra = &extra[4 + len..];
    }
    None
}

/// The whole entry, decoded and checked against its size and CRC-32.
pub(crate) async fn read_whole(blobs: &Arc<dyn BlobReader>, e: &ZipEntry) -> Result<Bytes> {
    // One request for header and data, usually: the header's name and extra
    // field are about as long as the central directory's.
    let guess = LOCAL_HEADER + e.name().len() as u64 + LOCAL_SLACK;
    let first = blobs
        .read_blob(
            e.blob(),
            e.header_offset(),
            guess.saturating_add(e.compressed_size()),
        )
        .await?;
    let local = local_header(blobs, e, Some(first.clone())).await?;
    let start = local.data_start;
    let end = start + e.compressed_size();
    let data = if end <= first.len() as u64 {
        first.slice(start as usize..end as usize)
    } else {
        let got = blobs
            .read_blob(e.blob(), e.header_offset() + start, e.compressed_size())
            .await?;
        if got.len() as u64 != e.compressed_size() {
            return Err(archive_error(
                e.blob(),
                Some(e.name()),
                "its data is cut off by the end of the archive",
            ));
        }
        got
    };
    let entry = e.clone();
    tokio::task::spawn_blocking(move || decode(&entry, data))
        .await
        .map_err(|err| Error::io(format!("decoding {}", e.name()), std::io::Error::other(err)))?
}

fn decode(e: &ZipEntry, data: Bytes) -> Result<Bytes> {
    let out = match e.method() {
        ZipMethod::Stored => data,
        ZipMethod::Deflated => {
            let mut out = Vec::with_capacity(e.size().min(DECODE_WHOLE_MAX) as usize);
            flate2::read::DeflateDecoder::new(&data[..])
                .take(e.size().saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|err| {
                    let reason = format!("corrupt deflate data: {err}");
                    archive_error_from(e.blob(), Some(e.name()), reason, err)
                })?;
            Bytes::from(out)
        }
    };
    check_decoded(e, out.len() as u64, crc32fast::hash(&out))?;
    Ok(out)
}

fn check_decoded(e: &ZipEntry, len: u64, crc: u32) -> Result<()> {
    if len > e.size() {
        return Err(archive_error(
            e.blob(),
            Some(e.name()),
            format!(
                "it decompresses to more than the {} bytes the central directory declares",
                e.size()
            ),
        ));
    }
    if len < e.size() {
        return Err(archive_error(
            e.blob(),
            Some(e.name()),
            format!(
                "it decompresses to {len} bytes; the central directory declares {}",
                e.size()
            ),
        ));
    }
    if crc != e.crc32() {
        return Err(Error::digest_mismatch(
            format!(
                "entry {:?} of package {} (CRC-32)",
                e.name(),
                package_name(e.blob())
            ),
            format_args!("{:08x}", e.crc32()),
            format_args!("{crc:08x}"),
        ));
    }
    Ok(())
}

/// A range of a large stored entry, read in place (its CRC-32 cannot be
/// checked piecewise; the blob's digest still is, as `--verify` says).
pub(crate) async fn read_stored_range(
    blobs: &Arc<dyn BlobReader>,
    e: &ZipEntry,
    offset: u64,
    len: u64,
) -> Result<Bytes> {
    let local = local_header(blobs, e, None).await?;
    blobs
        .read_blob(e.blob(), e.header_offset() + local.data_start + offset, len)
        .await
}

/// A range of a large deflated entry: inflated from the entry's start (no
/// seek points). A read that reaches the end checks the CRC-32.
pub(crate) async fn read_deflated_range(
    blobs: &Arc<dyn BlobReader>,
    e: &ZipEntry,
    offset: u64,
    len: u64,
) -> Result<Bytes> {
    let local = local_header(blobs, e, None).await?;
    let start = e.header_offset() + local.data_start;
    let entry = e.clone();
    with_stream(
        blobs,
        e.blob(),
        start..start + e.compressed_size(),
        move |r| {
            let bad = |reason: String| archive_error(entry.blob(), Some(entry.name()), reason);
            let inflate = flate2::read::DeflateDecoder::new(r);
            let mut d = Bounded::new(
                inflate,
                entry.size(),
                "decompresses to more than its declared size",
            );
            let mut hasher = crc32fast::Hasher::new();
            // Grown as bytes come: the size is only what the directory
            // declares, and a hostile one would otherwise be allocated
            // before a byte is inflated.
            let mut out = Vec::with_capacity(len.min(1 << 20) as usize);
            let mut pos = 0u64;
            let mut buf = vec![0u8; 64 << 10];
            let to_end = offset + len >= entry.size();
            loop {
                let n = d.read(&mut buf).map_err(|err| {
                    let reason = format!("corrupt deflate data: {err}");
                    archive_error_from(entry.blob(), Some(entry.name()), reason, err)
                })?;
                if n == 0 {
                    break;
                }
                let chunk = &buf[..n];
                hasher.update(chunk);
                let (a, b) = (pos, pos + n as u64);
                let (from, to) = (a.max(offset), b.min(offset + len));
                if from < to {
                    out.extend_from_slice(&chunk[(from - a) as usize..(to - a) as usize]);
                }
                pos = b;
                if !to_end && pos >= offset + len {
                    break;
                }
            }
            if to_end {
                check_decoded(&entry, pos, hasher.finalize())?;
            } else if (out.len() as u64) < len {
                return Err(bad(format!(
                    "it decompresses to {pos} bytes; the central directory declares {}",
                    entry.size()
                )));
            }
            Ok(Bytes::from(out))
        },
    )
    .await
}

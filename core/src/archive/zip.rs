//! zip packages, read lazily: the central directory when the view is built,
//! an entry's local header and data when the entry is read.

use std::collections::HashMap;
use std::io::Read as _;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use rc_zip::fsm::{ArchiveFsm, FsmResult};
use rc_zip::parse::{Method, Mode};
use rc_zip::{Archive, EntryKind};

use super::names::{check_target, entry_components};
use super::stream::{Bounded, with_stream};
use super::{
    Index, Item, ItemKind, MAX_CENTRAL_DIRECTORY, MAX_ENTRIES, MAX_NAME, MAX_RATIO, ZipEntry,
    ZipMethod, archive_error, problem,
};
use crate::error::{Error, Result};
use crate::manifest::Descriptor;
use crate::reader::Reader;
use crate::view::Content;

/// The fixed part of a local file header.
const LOCAL_HEADER: u64 = 30;
const LOCAL_SIGNATURE: u32 = 0x0403_4b50;
/// General purpose flags: encrypted, sizes in a data descriptor.
const FLAG_ENCRYPTED: u16 = 1;
const FLAG_DATA_DESCRIPTOR: u16 = 1 << 3;
/// How much of a local header's name and extra field is read along with
/// its fixed part, so that one request usually gets header and data.
const LOCAL_SLACK: u64 = 256;

/// Reads the central directory of `blob` into an index.
pub(super) async fn index(reader: &dyn Reader, blob: &Descriptor) -> Result<Index> {
    refuse_too_many(reader, blob).await?;
    let archive = central_directory(reader, blob).await?;
    let shared = std::sync::Arc::new(blob.clone());
    let entries: Vec<&rc_zip::Entry> = archive.entries().collect();
    let mut bad: Vec<Option<String>> = vec![None; entries.len()];
    let mut paths: Vec<Vec<String>> = vec![Vec::new(); entries.len()];

    for (i, e) in entries.iter().enumerate() {
        bad[i] = check_entry(blob, e).err();
        match entry_components(&e.name) {
            Ok(p) => paths[i] = p,
            Err(reason) => bad[i] = Some(reason),
        }
    }

    // Entries whose bytes overlap: a zip bomb's trick (one compressed
    // kernel referenced many times), or a confused writer. Neither is shown.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].header_offset);
    let mut reach: Option<(u64, usize)> = None;
    for &i in &order {
        let e = entries[i];
        if let Some((end, j)) = reach
            && e.header_offset < end
        {
            let (a, b) = (entries[j].name.clone(), e.name.clone());
            bad[i].get_or_insert_with(|| format!("its data overlaps entry {a:?}'s"));
            bad[j].get_or_insert_with(|| format!("its data overlaps entry {b:?}'s"));
        }
        let end = e
            .header_offset
            .saturating_add(LOCAL_HEADER)
            .saturating_add(e.compressed_size);
        if reach.is_none_or(|(r, _)| end > r) {
            reach = Some((end, i));
        }
    }

    // Two entries of one name: which one a reader gets would depend on the
    // tool; show neither. Directories may repeat.
    let mut seen: HashMap<&[String], usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.kind() != EntryKind::Directory && bad[i].is_none() {
            *seen.entry(paths[i].as_slice()).or_default() += 1;
        }
    }
    for (i, e) in entries.iter().enumerate() {
        if e.kind() != EntryKind::Directory
            && bad[i].is_none()
            && seen.get(paths[i].as_slice()).copied().unwrap_or(0) > 1
        {
            bad[i] = Some("more than one entry has this name".into());
        }
    }

    let mut index = Index::default();
    for (i, e) in entries.iter().enumerate() {
        if let Some(reason) = &bad[i] {
            index.problems.push(problem(&e.name, reason));
            continue;
        }
        let mtime = u64::try_from(e.modified.timestamp())
            .ok()
            .filter(|s| *s > 0)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        let mode = Some(e.mode.0 & 0o777).filter(|m| *m != 0);
        let kind = match e.kind() {
            EntryKind::Directory => ItemKind::Dir,
            EntryKind::File => {
                ItemKind::File(Content::Zip(std::sync::Arc::new(zip_entry(&shared, e))))
            }
            EntryKind::Symlink => match symlink_target(reader, &shared, e).await {
                Ok(target) => ItemKind::Symlink(target),
                Err(Error::Archive { reason, .. }) => {
                    index.problems.push(problem(&e.name, reason));
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        index.items.push(Item {
            path: std::mem::take(&mut paths[i]),
            kind,
            mode,
            mtime,
        });
    }
    Ok(index)
}

/// What the central directory alone says is wrong with an entry.
fn check_entry(blob: &Descriptor, e: &rc_zip::Entry) -> Result<(), String> {
    if e.flags & FLAG_ENCRYPTED != 0 {
        return Err("encrypted (not supported)".into());
    }
    if e.mode.has(Mode::DEVICE)
        || e.mode.has(Mode::NAMED_PIPE)
        || e.mode.has(Mode::SOCKET)
        || e.mode.has(Mode::IRREGULAR)
    {
        return Err("not a regular file, directory or symlink".into());
    }
    if e.kind() == EntryKind::Directory {
        return Ok(());
    }
    match e.method {
        Method::Store if e.compressed_size != e.uncompressed_size => {
            return Err(format!(
                "stored, but its size ({}) and compressed size ({}) differ",
                e.uncompressed_size, e.compressed_size
            ));
        }
        Method::Store | Method::Deflate => {}
        other => {
            return Err(format!(
                "compression method {} ({other:?}) is not supported (only stored and deflate)",
                u16::from(other)
            ));
        }
    }
    if u128::from(e.uncompressed_size)
        > u128::from(e.compressed_size.max(1)) * u128::from(MAX_RATIO)
    {
        return Err(format!(
            "{} bytes compressed to {}: a ratio over {MAX_RATIO}:1 (a zip bomb?)",
            e.uncompressed_size, e.compressed_size
        ));
    }
    let end = e
        .header_offset
        .checked_add(LOCAL_HEADER)
        .and_then(|x| x.checked_add(e.compressed_size));
    if end.is_none_or(|end| end > blob.size) {
        return Err("its data would extend past the end of the archive".into());
    }
    Ok(())
}

fn zip_entry(blob: &std::sync::Arc<Descriptor>, e: &rc_zip::Entry) -> ZipEntry {
    ZipEntry {
        blob: blob.clone(),
        name: e.name.clone(),
        header_offset: e.header_offset,
        compressed_size: e.compressed_size,
        size: e.uncompressed_size,
        method: if e.method == Method::Deflate {
            ZipMethod::Deflated
        } else {
            ZipMethod::Stored
        },
        crc32: e.crc32,
    }
}

async fn symlink_target(
    reader: &dyn Reader,
    blob: &std::sync::Arc<Descriptor>,
    e: &rc_zip::Entry,
) -> Result<String> {
    let bad = |reason: String| archive_error(blob, Some(&e.name), reason);
    if e.uncompressed_size > MAX_NAME as u64 {
        return Err(bad(format!("symlink target longer than {MAX_NAME} bytes")));
    }
    let entry = zip_entry(blob, e);
    let bytes = read_whole(reader, &entry).await?;
    let target =
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("symlink target is not UTF-8".into()))?;
    check_target(&target).map_err(bad)?;
    Ok(target)
}

/// Finds and parses the central directory with range reads: the last 65 KiB
/// (the end records, zip64 too), then the directory itself, bounded.
/// The end of central directory record's signature, and the zip64 one's
/// locator's.
const EOCD_SIGNATURE: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIGNATURE: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIGNATURE: u32 = 0x0606_4b50;
/// The end record's fixed size, and the most a comment can add.
const EOCD_LEN: u64 = 22;
const MAX_COMMENT: u64 = 65_535;

/// Refuses a zip whose end record declares more than [`MAX_ENTRIES`]
/// entries, before its directory is read (a million empty entries would
/// otherwise be parsed into memory first). A zip whose end record cannot
/// be found is left to the directory reader, which says what is wrong.
async fn refuse_too_many(reader: &dyn Reader, blob: &Descriptor) -> Result<()> {
    let content = Content::Blob(std::sync::Arc::new(blob.clone()));
    // The record, with a comment length that reaches exactly the end.
    let find = |tail: &[u8]| {
        (0..tail.len().saturating_sub(EOCD_LEN as usize - 1))
            .rev()
            .find(|&i| {
                le32(tail, i) == EOCD_SIGNATURE
                    && usize::from(le16(tail, i + 20)) == tail.len() - i - EOCD_LEN as usize
            })
    };
    // Most zips have no comment: the record is the last 22 bytes (and
    // 20 more for a zip64 locator). Else the whole place a comment can be.
    let mut tail_len = blob.size.min(EOCD_LEN + 20);
    let mut tail = reader
        .read(&content, blob.size - tail_len, tail_len)
        .await?;
    if find(&tail).is_none() {
        tail_len = blob.size.min(EOCD_LEN + MAX_COMMENT);
        tail = reader
            .read(&content, blob.size - tail_len, tail_len)
            .await?;
    }
    let Some(at) = find(&tail) else {
        return Ok(());
    };
    let mut declared = u64::from(le16(&tail, at + 10));
    if declared == 0xffff && at >= 20 && le32(&tail, at - 20) == ZIP64_LOCATOR_SIGNATURE {
        let record_at = u64::from_le_bytes(tail[at - 12..at - 4].try_into().unwrap_or([0; 8]));
        if record_at
            .checked_add(56)
            .is_some_and(|end| end <= blob.size)
        {
            let record = reader.read(&content, record_at, 56).await?;
            if record.len() == 56 && le32(&record, 0) == ZIP64_EOCD_SIGNATURE {
                declared = u64::from_le_bytes(record[32..40].try_into().unwrap_or([0; 8]));
            }
        }
    }
    if declared > MAX_ENTRIES as u64 {
        return Err(archive_error(
            blob,
            None,
            format!("its directory declares {declared} entries, over the limit of {MAX_ENTRIES}"),
        ));
    }
    Ok(())
}

async fn central_directory(reader: &dyn Reader, blob: &Descriptor) -> Result<Archive> {
    let content = Content::Blob(std::sync::Arc::new(blob.clone()));
    let bad = |reason: String| archive_error(blob, None, reason);
    let mut fsm = ArchiveFsm::new(blob.size);
    let mut fed: u64 = 0;
    loop {
        if let Some(offset) = fsm.wants_read() {
            if offset >= blob.size {
                return Err(bad(format!(
                    "not a readable zip: its directory would be at offset {offset}, past its end ({} bytes)",
                    blob.size
                )));
            }
            let want = (fsm.space().len() as u64).min(blob.size - offset);
            if want == 0 {
                return Err(bad(
                    "not a readable zip: a directory record is too large".into()
                ));
            }
            let bytes = reader.read(&content, offset, want).await?;
            if bytes.is_empty() {
                return Err(Error::ShortRead {
                    digest: blob.digest.to_string(),
                    offset,
                    expected: want,
                    got: 0,
                });
            }
            fed += bytes.len() as u64;
            if fed > MAX_CENTRAL_DIRECTORY + (1 << 20) {
                return Err(bad(format!(
                    "its central directory is over the {MAX_CENTRAL_DIRECTORY}-byte limit"
                )));
            }
            let space = fsm.space();
            let n = bytes.len().min(space.len());
            space[..n].copy_from_slice(&bytes[..n]);
            fsm.fill(n);
        }
        fsm = match fsm.process() {
            Ok(FsmResult::Continue(fsm)) => fsm,
            Ok(FsmResult::Done(archive)) => return Ok(archive),
            Err(e) => return Err(bad(format!("not a readable zip: {e}"))),
        };
    }
}

/// Where an entry's data starts, from its local header, after checking the
/// header against the central directory.
struct Local {
    /// Offset of the data from the header's start.
    data_start: u64,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
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
async fn local_header(reader: &dyn Reader, e: &ZipEntry, first: Option<Bytes>) -> Result<Local> {
    let bad = |reason: String| archive_error(&e.blob, Some(&e.name), reason);
    let content = Content::Blob(std::sync::Arc::new((*e.blob).clone()));
    let mut head = match first {
        Some(b) => b,
        None => {
            reader
                .read(
                    &content,
                    e.header_offset,
                    LOCAL_HEADER + e.name.len() as u64 + LOCAL_SLACK,
                )
                .await?
        }
    };
    if (head.len() as u64) < LOCAL_HEADER || le32(&head, 0) != LOCAL_SIGNATURE {
        return Err(bad(format!(
            "no local file header at offset {}",
            e.header_offset
        )));
    }
    let (flags, method) = (le16(&head, 6), le16(&head, 8));
    let (crc, csize, size) = (le32(&head, 14), le32(&head, 18), le32(&head, 22));
    let (n, m) = (u64::from(le16(&head, 26)), u64::from(le16(&head, 28)));
    let header_len = LOCAL_HEADER + n + m;
    if (head.len() as u64) < header_len {
        head = reader.read(&content, e.header_offset, header_len).await?;
        if (head.len() as u64) < header_len {
            return Err(bad(
                "its local header is cut off by the end of the archive".into()
            ));
        }
    }
    if flags & FLAG_ENCRYPTED != 0 {
        return Err(bad("encrypted (not supported)".into()));
    }
    let central_method = match e.method {
        ZipMethod::Stored => 0,
        ZipMethod::Deflated => 8,
    };
    if method != central_method {
        return Err(bad(format!(
            "its local header says compression method {method}, the central directory {central_method}"
        )));
    }
    let name = &head[LOCAL_HEADER as usize..(LOCAL_HEADER + n) as usize];
    if e.name.is_ascii() && name != e.name.as_bytes() {
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
        if local_size != e.size || local_csize != e.compressed_size {
            return Err(bad(format!(
                "sizes disagree: the central directory says {} bytes ({} compressed), the local header {} ({} compressed)",
                e.size, e.compressed_size, local_size, local_csize
            )));
        }
        if crc != e.crc32 {
            return Err(bad(format!(
                "CRC-32 disagrees: the central directory says {:08x}, the local header {crc:08x}",
                e.crc32
            )));
        }
    }
    if e.header_offset
        .checked_add(header_len)
        .and_then(|x| x.checked_add(e.compressed_size))
        .is_none_or(|end| end > e.blob.size)
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
pub(super) async fn read_whole(reader: &dyn Reader, e: &ZipEntry) -> Result<Bytes> {
    let content = Content::Blob(std::sync::Arc::new((*e.blob).clone()));
    // One request for header and data, usually: the header's name and extra
    // field are about as long as the central directory's.
    let guess = LOCAL_HEADER + e.name.len() as u64 + LOCAL_SLACK;
    let first = reader
        .read(
            &content,
            e.header_offset,
            guess.saturating_add(e.compressed_size),
        )
        .await?;
    let local = local_header(reader, e, Some(first.clone())).await?;
    let start = local.data_start;
    let end = start + e.compressed_size;
    let data = if end <= first.len() as u64 {
        first.slice(start as usize..end as usize)
    } else {
        let got = reader
            .read(&content, e.header_offset + start, e.compressed_size)
            .await?;
        if got.len() as u64 != e.compressed_size {
            return Err(archive_error(
                &e.blob,
                Some(&e.name),
                "its data is cut off by the end of the archive",
            ));
        }
        got
    };
    let entry = e.clone();
    tokio::task::spawn_blocking(move || decode(&entry, data))
        .await
        .map_err(|err| {
            Error::io(
                format!("decoding {}", e.name),
                std::io::Error::other(err.to_string()),
            )
        })?
}

fn decode(e: &ZipEntry, data: Bytes) -> Result<Bytes> {
    let bad = |reason: String| archive_error(&e.blob, Some(&e.name), reason);
    let out = match e.method {
        ZipMethod::Stored => data,
        ZipMethod::Deflated => {
            let mut out = Vec::with_capacity(e.size.min(super::DECODE_WHOLE_MAX) as usize);
            flate2::read::DeflateDecoder::new(&data[..])
                .take(e.size.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|err| bad(format!("corrupt deflate data: {err}")))?;
            Bytes::from(out)
        }
    };
    check_decoded(e, out.len() as u64, crc32fast::hash(&out))?;
    Ok(out)
}

fn check_decoded(e: &ZipEntry, len: u64, crc: u32) -> Result<()> {
    if len > e.size {
        return Err(archive_error(
            &e.blob,
            Some(&e.name),
            format!(
                "it decompresses to more than the {} bytes the central directory declares",
                e.size
            ),
        ));
    }
    if len < e.size {
        return Err(archive_error(
            &e.blob,
            Some(&e.name),
            format!(
                "it decompresses to {len} bytes; the central directory declares {}",
                e.size
            ),
        ));
    }
    if crc != e.crc32 {
        return Err(Error::DigestMismatch {
            what: format!(
                "entry {:?} of package {} (CRC-32)",
                e.name,
                super::package_name(&e.blob)
            ),
            expected: format!("{:08x}", e.crc32),
            actual: format!("{crc:08x}"),
        });
    }
    Ok(())
}

/// A range of a large stored entry, read in place (its CRC-32 cannot be
/// checked piecewise; the blob's digest still is, as `--verify` says).
pub(super) async fn read_stored_range(
    reader: &dyn Reader,
    e: &ZipEntry,
    offset: u64,
    len: u64,
) -> Result<Bytes> {
    let local = local_header(reader, e, None).await?;
    let content = Content::Blob(std::sync::Arc::new((*e.blob).clone()));
    reader
        .read(&content, e.header_offset + local.data_start + offset, len)
        .await
}

/// A range of a large deflated entry: inflated from the entry's start (no
/// seek points). A read that reaches the end checks the CRC-32.
pub(super) async fn read_deflated_range(
    reader: &dyn Reader,
    e: &ZipEntry,
    offset: u64,
    len: u64,
) -> Result<Bytes> {
    let local = local_header(reader, e, None).await?;
    let start = e.header_offset + local.data_start;
    let entry = e.clone();
    with_stream(
        reader,
        &e.blob,
        start..start + e.compressed_size,
        move |r| {
            let bad = |reason: String| archive_error(&entry.blob, Some(&entry.name), reason);
            let inflate = flate2::read::DeflateDecoder::new(r);
            let mut d = Bounded::new(
                inflate,
                entry.size,
                "decompresses to more than its declared size",
            );
            let mut hasher = crc32fast::Hasher::new();
            let mut out = Vec::with_capacity(len as usize);
            let mut pos = 0u64;
            let mut buf = vec![0u8; 64 << 10];
            let to_end = offset + len >= entry.size;
            loop {
                let n = d
                    .read(&mut buf)
                    .map_err(|err| bad(format!("corrupt deflate data: {err}")))?;
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
                    entry.size
                )));
            }
            Ok(Bytes::from(out))
        },
    )
    .await
}

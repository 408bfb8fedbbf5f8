//! zip packages, read lazily: the central directory when the view is built,
//! an entry's local header and data when the entry is read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rc_zip::fsm::{ArchiveFsm, FsmResult};
use rc_zip::parse::{Method, Mode};
use rc_zip::{Archive, EntryKind};

use super::{Item, ItemKind, Listing, MAX_CENTRAL_DIRECTORY, MAX_ENTRIES, problem};
use crate::blob::BlobReader;
use crate::codec::names::{check_target, entry_components};
use crate::codec::tar::MAX_NAME;
use crate::codec::zip::{FLAG_ENCRYPTED, LOCAL_HEADER, le16, le32, read_whole};
use crate::codec::{archive_error, archive_error_from};
use crate::content::{Content, ZipEntry, ZipMethod};
use crate::error::{Error, Result};
use crate::manifest::Descriptor;

/// Reads the central directory of `blob` into an index.
pub(super) async fn list(blobs: &Arc<dyn BlobReader>, blob: &Descriptor) -> Result<Listing> {
    refuse_too_many(blobs, blob).await?;
    let archive = central_directory(blobs, blob).await?;
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

    let mut index = Listing::default();
    for (i, e) in entries.iter().enumerate() {
        if let Some(reason) = &bad[i] {
            index.problems.push(problem(&e.name, reason));
            continue;
        }
        let mtime = u64::try_from(e.modified.timestamp())
            .ok()
            .filter(|s| *s > 0)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        // Shown as the attributes say, setuid, setgid and sticky bits too
        // (a mount is nosuid whatever they say).
        let special = [
            (Mode::SETUID, 0o4000),
            (Mode::SETGID, 0o2000),
            (Mode::STICKY, 0o1000),
        ]
        .into_iter()
        .filter(|(flag, _)| e.mode.has(*flag))
        .fold(0, |bits, (_, bit)| bits | bit);
        let mode = Some((e.mode.0 & 0o777) | special).filter(|m| *m != 0);
        let kind = match e.kind() {
            EntryKind::Directory => ItemKind::Dir,
            EntryKind::File => {
                ItemKind::File(Content::Zip(std::sync::Arc::new(zip_entry(&shared, e))))
            }
            EntryKind::Symlink => match symlink_target(blobs, &shared, e).await {
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
    // A FIFO is what Info-ZIP records for data it read from stdin
    // (`… | zip - -`); unzip and Python extract a regular file, and so is
    // it shown.
    if e.mode.has(Mode::DEVICE) || e.mode.has(Mode::SOCKET) || e.mode.has(Mode::IRREGULAR) {
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
    // No bound on the ratio: a zero-filled file deflates over 1000:1
    // legitimately, and the entry's declared size bounds what its reader
    // inflates.
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
    blobs: &Arc<dyn BlobReader>,
    blob: &std::sync::Arc<Descriptor>,
    e: &rc_zip::Entry,
) -> Result<String> {
    let bad = |reason: String| archive_error(blob, Some(&e.name), reason);
    if e.uncompressed_size > MAX_NAME as u64 {
        return Err(bad(format!("symlink target longer than {MAX_NAME} bytes")));
    }
    let entry = zip_entry(blob, e);
    let bytes = read_whole(blobs, &entry).await?;
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
async fn refuse_too_many(blobs: &Arc<dyn BlobReader>, blob: &Descriptor) -> Result<()> {
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
    let mut tail = blobs
        .read_blob(blob, blob.size - tail_len, tail_len)
        .await?;
    if find(&tail).is_none() {
        tail_len = blob.size.min(EOCD_LEN + MAX_COMMENT);
        tail = blobs
            .read_blob(blob, blob.size - tail_len, tail_len)
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
            let record = blobs.read_blob(blob, record_at, 56).await?;
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

async fn central_directory(blobs: &Arc<dyn BlobReader>, blob: &Descriptor) -> Result<Archive> {
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
            let bytes = blobs.read_blob(blob, offset, want).await?;
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
            Err(e) => {
                let reason = format!("not a readable zip: {e}");
                return Err(archive_error_from(blob, None, reason, e));
            }
        };
    }
}

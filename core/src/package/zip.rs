//! zip packages, read lazily: the central directory when the view is built,
//! an entry's local header and data when the entry is read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rc_zip::encoding::Encoding;
use rc_zip::parse::{CentralDirectoryFileHeader, EntryKind, Method, Mode};
use winnow::Partial;
use winnow::error::ErrMode;

use super::{
    Item, ItemKind, Items, Listing, MAX_CENTRAL_DIRECTORY, MAX_ENTRIES, joined, problem, repeated,
};
use crate::blob::BlobReader;
use crate::codec::names::{check_target, entry_components};
use crate::codec::tar::MAX_NAME;
use crate::codec::zip::{FLAG_ENCRYPTED, LOCAL_HEADER, le16, le32, le64, read_whole};
use crate::codec::{archive_error, archive_error_from};
use crate::content::{Content, ZipEntry, ZipMethod, ZipTable};
use crate::error::{Error, Result};
use crate::manifest::Descriptor;

/// Reads the central directory of `blob` into an index: the directory is
/// read in pieces and each header made into a row of the layer's
/// [`ZipTable`] as it is parsed, so that a million entries cost the table
/// (about 50 bytes each) and a few bytes more while they are checked.
pub(super) async fn list(blobs: &Arc<dyn BlobReader>, blob: &Descriptor) -> Result<Listing> {
    let end = end_record(blobs, blob).await?;
    let mut parsed = match read_directory(blobs, blob, &end, None).await? {
        Pass::Done(parsed) => parsed,
        Pass::Encoding(encoding) => {
            match read_directory(blobs, blob, &end, Some(encoding)).await? {
                Pass::Done(parsed) => parsed,
                // A pass given the encoding does not look for one again.
                Pass::Encoding(_) => {
                    return Err(archive_error(
                        blob,
                        None,
                        "not a readable zip: the encoding of its names is not settled",
                    ));
                }
            }
        }
    };
    let n = parsed.shared.len();

    // Entries whose bytes overlap: a zip bomb's trick (one compressed
    // kernel referenced many times), or a confused writer. Neither is shown.
    let shared = parsed.shared.clone();
    let entry = |i: usize| ZipEntry::new(shared.clone(), i as u32);
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by_key(|&i| shared.header_offset(i));
    let mut reach: Option<(u64, usize)> = None;
    for &i in &order {
        let (i, e) = (i as usize, entry(i as usize));
        if let Some((end, j)) = reach
            && e.header_offset() < end
        {
            let (a, b) = (entry(j).name().to_owned(), e.name().to_owned());
            parsed
                .bad
                .entry(i as u32)
                .or_insert_with(|| format!("its data overlaps entry {a:?}'s"));
            parsed
                .bad
                .entry(j as u32)
                .or_insert_with(|| format!("its data overlaps entry {b:?}'s"));
        }
        let end = e
            .header_offset()
            .saturating_add(LOCAL_HEADER)
            .saturating_add(e.compressed_size());
        if reach.is_none_or(|(r, _)| end > r) {
            reach = Some((end, i));
        }
    }
    drop(order);

    // Two entries of one name: which one a reader gets would depend on the
    // tool; show neither. Directories may repeat.
    let candidates: Vec<u32> = (0..n as u32)
        .filter(|&i| {
            parsed.rows[i as usize].kind != EntryKind::Directory && !parsed.bad.contains_key(&i)
        })
        .collect();
    let twice = repeated(candidates.into_iter(), |i| {
        entry_components(shared.name(i)).unwrap_or_default()
    });
    for i in twice {
        parsed
            .bad
            .insert(i, "more than one entry has this name".into());
    }

    let mut index = Listing::default();
    let mut targets = HashMap::new();
    let mut rows = std::mem::take(&mut parsed.rows);
    let mut keep = vec![true; rows.len()];
    for (i, row) in rows.iter().enumerate() {
        let e = entry(i);
        if let Some(reason) = parsed.bad.get(&(i as u32)) {
            index.problems.push(problem(e.name(), reason));
            keep[i] = false;
            continue;
        }
        if row.kind == EntryKind::Symlink {
            match symlink_target(blobs, &e).await {
                Ok(target) => {
                    targets.insert(i as u32, target);
                }
                Err(Error::Archive { reason, .. }) => {
                    index.problems.push(problem(e.name(), reason));
                    keep[i] = false;
                }
                Err(err) => return Err(err),
            }
        }
    }
    // In place: a second list beside the first would cost as much again.
    let mut kept = keep.into_iter();
    rows.retain(|_| kept.next().unwrap_or(false));
    rows.shrink_to_fit();
    index.items = Items::Zip(ZipItems {
        table: parsed.shared,
        shown: rows,
        targets,
    });
    Ok(index)
}

/// What the directory says of an entry besides where its bytes are.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shown {
    /// Its row in the table.
    index: u32,
    kind: EntryKind,
    /// Permission bits, 0 for none.
    mode: u32,
    /// Seconds since the epoch, 0 for none (a zip's times end in 2107).
    mtime: u32,
}

/// The entries of a zip that can be shown, made into [`Item`]s as they are
/// taken.
#[derive(Debug)]
pub struct ZipItems {
    table: Arc<ZipTable>,
    shown: Vec<Shown>,
    targets: HashMap<u32, String>,
}

impl ZipItems {
    pub(super) fn len(&self) -> usize {
        self.shown.len()
    }

    pub(super) fn item(&self, s: &Shown) -> Item {
        let e = ZipEntry::new(self.table.clone(), s.index);
        let kind = match s.kind {
            EntryKind::Directory => ItemKind::Dir,
            EntryKind::File => ItemKind::File(Content::Zip(e.clone())),
            EntryKind::Symlink => {
                ItemKind::Symlink(self.targets.get(&s.index).cloned().unwrap_or_default())
            }
        };
        Item {
            // Checked when the directory was read.
            path: joined(&entry_components(e.name()).unwrap_or_default()),
            kind,
            mode: Some(s.mode).filter(|m| *m != 0),
            mtime: Some(s.mtime)
                .filter(|s| *s > 0)
                .map(|s| UNIX_EPOCH + Duration::from_secs(u64::from(s))),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = Item> + '_ {
        self.shown.iter().map(|s| self.item(s))
    }

    pub(super) fn into_iter(self) -> impl Iterator<Item = Item> {
        let ZipItems {
            table,
            shown,
            targets,
        } = self;
        let this = ZipItems {
            table,
            shown: Vec::new(),
            targets,
        };
        shown.into_iter().map(move |s| this.item(&s))
    }
}

/// What the central directory alone says is wrong with an entry.
fn check_entry(blob: &Descriptor, e: &rc_zip::Entry, header_offset: u64) -> Result<(), String> {
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
    let end = header_offset
        .checked_add(LOCAL_HEADER)
        .and_then(|x| x.checked_add(e.compressed_size));
    if end.is_none_or(|end| end > blob.size) {
        return Err("its data would extend past the end of the archive".into());
    }
    Ok(())
}

async fn symlink_target(blobs: &Arc<dyn BlobReader>, entry: &ZipEntry) -> Result<String> {
    let bad = |reason: String| archive_error(entry.blob(), Some(entry.name()), reason);
    if entry.size() > MAX_NAME as u64 {
        return Err(bad(format!("symlink target longer than {MAX_NAME} bytes")));
    }
    let bytes = read_whole(blobs, entry).await?;
    let target =
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("symlink target is not UTF-8".into()))?;
    check_target(&target).map_err(bad)?;
    Ok(target)
}

/// The end of central directory record's signature, and the zip64 one's
/// locator's.
const EOCD_SIGNATURE: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIGNATURE: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIGNATURE: u32 = 0x0606_4b50;
/// The end record's fixed size, and the most a comment can add.
const EOCD_LEN: u64 = 22;
const MAX_COMMENT: u64 = 65_535;
/// How much of the central directory is read at a time.
const DIRECTORY_PIECE: u64 = 1 << 20;

/// What the end records say of the central directory.
struct End {
    /// Where the directory starts in the blob.
    offset: u64,
    /// How many entries it declares.
    declared: u64,
    /// Bytes before the archive proper (a self-extracting stub): added to
    /// every header offset.
    global_offset: i64,
}

/// Finds the end of central directory record (and the zip64 one) with
/// range reads of the blob's tail. A zip whose records declare more than
/// [`MAX_ENTRIES`] entries is refused here, before its directory is read.
async fn end_record(blobs: &Arc<dyn BlobReader>, blob: &Descriptor) -> Result<End> {
    let bad = |reason: &str| archive_error(blob, None, format!("not a readable zip: {reason}"));
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
    let at = find(&tail).ok_or_else(|| bad("no end of central directory record"))?;
    let record_at = blob.size - tail_len + at as u64;
    let (mut declared, mut size, mut offset) = (
        u64::from(le16(&tail, at + 10)),
        u64::from(le32(&tail, at + 12)),
        u64::from(le32(&tail, at + 16)),
    );
    // Where the directory's end was found: the zip64 record if there is
    // one, else this record.
    let mut located = record_at;
    if at >= 20 && le32(&tail, at - 20) == ZIP64_LOCATOR_SIGNATURE {
        let zip64_at = le64(&tail, at - 12);
        if zip64_at.checked_add(56).is_none_or(|end| end > blob.size) {
            return Err(bad("its zip64 end record would be past its end"));
        }
        let record = blobs.read_blob(blob, zip64_at, 56).await?;
        if record.len() < 56 || le32(&record, 0) != ZIP64_EOCD_SIGNATURE {
            return Err(bad("its zip64 end record is not where its locator says"));
        }
        declared = le64(&record, 32);
        size = le64(&record, 40);
        offset = le64(&record, 48);
        located = zip64_at;
    }
    if declared > MAX_ENTRIES as u64 {
        return Err(archive_error(
            blob,
            None,
            format!("its directory declares {declared} entries, over the limit of {MAX_ENTRIES}"),
        ));
    }
    // Data before the archive (a stub) moves the directory from where the
    // record says to where its end was found.
    let mut global_offset = 0i64;
    if let Some(computed) = located.checked_sub(size)
        && computed < blob.size
        && computed != offset
    {
        global_offset = computed as i64 - offset as i64;
        offset = computed;
    }
    if offset >= blob.size {
        return Err(bad(&format!(
            "its directory would be at offset {offset}, past its end ({} bytes)",
            blob.size
        )));
    }
    Ok(End {
        offset,
        declared,
        global_offset,
    })
}

/// One pass over the directory: what it holds, or (a first pass that met
/// a name not in UTF-8) the encoding its names are in, for a second pass.
enum Pass {
    Done(Parsed),
    Encoding(Encoding),
}

/// The directory, read.
struct Parsed {
    /// The table, shared by the entries.
    shared: Arc<ZipTable>,
    /// Kind, mode and time of each row.
    rows: Vec<Shown>,
    /// The rows that cannot be shown, and why.
    bad: HashMap<u32, String>,
}

/// Reads the central directory at `end.offset` in pieces, each header
/// parsed (rc-zip's parser and its reading of extra fields, times and
/// modes) and kept as a table row as soon as it is complete. With no
/// `encoding`, names are taken as UTF-8 until one is not; then the pass
/// only finds the archive's encoding, as rc-zip would, from the names
/// that are not.
async fn read_directory(
    blobs: &Arc<dyn BlobReader>,
    blob: &Descriptor,
    end: &End,
    encoding: Option<Encoding>,
) -> Result<Pass> {
    let unreadable =
        |reason: String| archive_error(blob, None, format!("not a readable zip: {reason}"));
    let mut table = ZipTable::new(blob.clone());
    let mut rows: Vec<Shown> = Vec::new();
    let mut bad: HashMap<u32, String> = HashMap::new();
    let mut detect = Detect::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    let mut next = end.offset;
    let mut count: u64 = 0;
    loop {
        let mut input = Partial::new(&buf[pos..]);
        match CentralDirectoryFileHeader::parser(&mut input) {
            Ok(header) => {
                let used = buf.len() - pos - input.len();
                count += 1;
                if count > MAX_ENTRIES as u64 {
                    return Err(archive_error(
                        blob,
                        None,
                        format!("more than {MAX_ENTRIES} entries"),
                    ));
                }
                if encoding.is_none() && header.is_non_utf8() {
                    detect.all_utf8 = false;
                }
                if !detect.all_utf8 {
                    // Only finding the encoding now.
                    if header.is_non_utf8() && !detect.feed(&header.name, &header.comment) {
                        break;
                    }
                    pos += used;
                    continue;
                }
                let e = header
                    .as_entry(
                        encoding.unwrap_or(Encoding::Utf8),
                        end.global_offset.max(0) as u64,
                    )
                    .map_err(|e| {
                        archive_error_from(blob, None, format!("not a readable zip: {e}"), e)
                    })?;
                let header_offset = if end.global_offset < 0 {
                    e.header_offset
                        .saturating_sub(end.global_offset.unsigned_abs())
                } else {
                    e.header_offset
                };
                let index = table.push(
                    &e.name,
                    header_offset,
                    e.compressed_size,
                    e.uncompressed_size,
                    if e.method == Method::Deflate {
                        ZipMethod::Deflated
                    } else {
                        ZipMethod::Stored
                    },
                    e.crc32,
                );
                let reason = check_entry(blob, &e, header_offset)
                    .and_then(|()| entry_components(&e.name).map(drop))
                    .err();
                if let Some(reason) = reason {
                    bad.insert(index, reason);
                }
                rows.push(Shown {
                    index,
                    kind: e.kind(),
                    mode: mode_of(&e),
                    mtime: u32::try_from(e.modified.timestamp()).unwrap_or(0),
                });
                pos += used;
            }
            Err(ErrMode::Incomplete(_)) => {
                // A header runs past what was read: read on.
                if next >= blob.size {
                    return Err(unreadable("its central directory is cut short".into()));
                }
                if next - end.offset > MAX_CENTRAL_DIRECTORY + (1 << 20) {
                    return Err(archive_error(
                        blob,
                        None,
                        format!(
                            "its central directory is over the {MAX_CENTRAL_DIRECTORY}-byte limit"
                        ),
                    ));
                }
                buf.drain(..pos);
                pos = 0;
                let want = DIRECTORY_PIECE.min(blob.size - next);
                let piece = blobs.scan_blob(blob, next, want).await?;
                if piece.is_empty() {
                    return Err(Error::ShortRead {
                        digest: blob.digest.to_string(),
                        offset: next,
                        expected: want,
                        got: 0,
                    });
                }
                next += piece.len() as u64;
                buf.extend_from_slice(&piece);
            }
            // Not a directory header: the directory ended.
            Err(_) => break,
        }
    }
    if !detect.all_utf8 {
        return Ok(Pass::Encoding(detect.guess()));
    }
    // As rc-zip (and Info-ZIP) do: a count over 65,535 without zip64
    // wraps in its 16-bit field.
    if count as u16 != end.declared as u16 {
        return Err(unreadable(format!(
            "its directory holds {count} entries, its end record says {}",
            end.declared
        )));
    }
    table.shrink();
    rows.shrink_to_fit();
    Ok(Pass::Done(Parsed {
        shared: Arc::new(table),
        rows,
        bad,
    }))
}

/// The permission bits an entry's attributes give, setuid, setgid and
/// sticky too (a mount is nosuid whatever they say); 0 for none.
fn mode_of(e: &rc_zip::Entry) -> u32 {
    let special = [
        (Mode::SETUID, 0o4000),
        (Mode::SETGID, 0o2000),
        (Mode::STICKY, 0o1000),
    ]
    .into_iter()
    .filter(|(flag, _)| e.mode.has(*flag))
    .fold(0, |bits, (_, bit)| bits | bit);
    (e.mode.0 & 0o777) | special
}

/// Finding the encoding of names not in UTF-8, as rc-zip does: chardetng
/// over the first 4 KiB of them, with Shift-JIS taken only when a name has
/// a byte no DOS name would (CP437's box drawing range).
struct Detect {
    all_utf8: bool,
    detector: chardetng::EncodingDetector,
    fed: usize,
    suspicious: bool,
}

impl Default for Detect {
    fn default() -> Self {
        Detect {
            all_utf8: true,
            detector: chardetng::EncodingDetector::new(),
            fed: 0,
            suspicious: false,
        }
    }
}

impl Detect {
    /// Feeds a name and comment; false once enough was fed.
    fn feed(&mut self, name: &[u8], comment: &[u8]) -> bool {
        for part in [name, comment] {
            self.detector.feed(part, false);
            self.suspicious |= part.iter().any(|b| (0xB0..=0xDF).contains(b));
            self.fed += part.len();
            if self.fed >= 4096 {
                return false;
            }
        }
        true
    }

    fn guess(self) -> Encoding {
        let guess = self.detector.guess(None, true);
        if guess == encoding_rs::SHIFT_JIS {
            if self.suspicious {
                Encoding::ShiftJis
            } else {
                Encoding::Cp437
            }
        } else if guess == encoding_rs::UTF_8 {
            Encoding::Utf8
        } else {
            Encoding::Cp437
        }
    }
}

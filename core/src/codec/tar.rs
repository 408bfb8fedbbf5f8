//! The one tar walker: a tar stream walked once, headers only (ustar, GNU
//! long names and links, PAX records), into a table of contents. Image
//! layers and tar packages both go through it; they differ only in what
//! an entry name may be ([`Names`]).

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;

use crate::content::{MAX_SPARSE_EXTENTS, SparseMap};

/// What an entry of a layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (`TocEntry::link` is its target).
    Symlink,
    /// A hard link (`TocEntry::link` is the path of the file it links to).
    Hardlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A FIFO.
    Fifo,
}

/// One entry of a layer's tar stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocEntry {
    /// The path from the layer's root: components joined by `/`, without a
    /// leading `/`, `.` or `..` components; empty for the layer's root
    /// directory itself (`./`). Whiteouts (`.wh.NAME`, `.wh..wh..opq`) are entries
    /// too: the overlay merge interprets them.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// A file's size; 0 for the others.
    pub size: u64,
    /// Where a file's data starts in the uncompressed stream; 0 for the
    /// others.
    pub offset: u64,
    /// A symlink's target, or the path a hard link links to (normalised as
    /// `path` is); empty for the others.
    pub link: String,
    /// A device's major and minor numbers; 0 for the others.
    pub major: u32,
    /// See `major`.
    pub minor: u32,
    /// Extended attributes (PAX `SCHILY.xattr.NAME`), in archive order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// A sparse file's map (`size` is then its whole size, and its
    /// stored ranges lie back to back from `offset`); `None` otherwise.
    pub sparse: Option<Arc<SparseMap>>,
    /// A file of a chunked layer (eStargz, zstd:chunked): its chunks
    /// (`offset` is then unused); `None` for a file of a tar stream.
    pub chunks: Option<Arc<[crate::content::FileChunk]>>,
}

/// The most entries one layer may have, by default.
pub const MAX_LAYER_ENTRIES: usize = 1_000_000;
/// The longest path (Linux's `PATH_MAX`, with its NUL).
pub const PATH_MAX: usize = 4095;
/// The longest path component.
pub const NAME_MAX: usize = 255;
/// The mode of a package's entry whose header has none that parses (the
/// view gives it its own); never a real mode, which fits in `0o7777`.
pub const UNKNOWN_MODE: u32 = u32::MAX;
/// The longest entry name (and symlink target) of a package.
pub const MAX_NAME: usize = PATH_MAX;
/// The most sparse ranges one archive may list, all its files together.
const MAX_WALK_EXTENTS: usize = 4 * MAX_SPARSE_EXTENTS;
/// The longest number in a 1.0 sparse map (`u64::MAX` has 20 digits).
const MAX_MAP_DIGITS: usize = 20;
/// The largest PAX extended header read.
const MAX_PAX: u64 = 1 << 20;
const BLOCK: u64 = 512;

/// Where the walker reads a tar stream from: a stream (data is read and
/// dropped) or range reads (data is skipped without being read).
pub trait TarInput {
    /// Fills `buf` as far as the stream goes; the count read.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Skips `n` bytes; the count skipped (short at the end of the stream).
    fn skip(&mut self, n: u64) -> io::Result<u64>;
}

/// Any `Read` as a [`TarInput`] that reads what it skips.
#[derive(Debug)]
pub struct Stream<R>(pub R);

/// Fills `buf` from `r` as far as it goes; the count read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl<R: Read> TarInput for Stream<R> {
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_full(&mut self.0, buf)
    }

    fn skip(&mut self, n: u64) -> io::Result<u64> {
        io::copy(&mut (&mut self.0).take(n), &mut io::sink())
    }
}

/// Why a walk stopped: the stream failed, or it is not a readable tar.
#[derive(Debug)]
pub enum WalkError {
    /// Reading (or decompressing) failed.
    Io(io::Error),
    /// The stream is not a tar ocifs can read; the reason.
    Bad(String),
}

impl From<io::Error> for WalkError {
    fn from(e: io::Error) -> Self {
        WalkError::Io(e)
    }
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalkError::Io(e) => write!(f, "unreadable stream: {e}"),
            WalkError::Bad(reason) => f.write_str(reason),
        }
    }
}

/// What a walk found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Toc {
    /// The entries, in archive order.
    pub entries: Vec<TocEntry>,
    /// Entries left out, each with the reason (`entry "NAME": REASON`).
    pub problems: Vec<String>,
    /// Bytes of the stream walked (to its end-of-archive marker).
    pub len: u64,
}

/// What PAX and GNU extension headers say of the next entry.
#[derive(Default)]
struct Pending {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<i64>,
    uid: Option<u32>,
    gid: Option<u32>,
    xattrs: Vec<(String, Vec<u8>)>,
    sparse: PaxSparse,
}

/// What PAX records say of a GNU sparse file.
#[derive(Default)]
struct PaxSparse {
    /// `GNU.sparse.major` (1: the map is at the start of the data).
    major: Option<u64>,
    /// `GNU.sparse.name`: the file's real name (1.0).
    name: Option<Vec<u8>>,
    /// `GNU.sparse.size` (0.0, 0.1) or `GNU.sparse.realsize` (1.0).
    size: Option<u64>,
    /// The map of 0.1 (`GNU.sparse.map`) or of 0.0 (each
    /// `GNU.sparse.offset` then `GNU.sparse.numbytes`), in order.
    numbers: Vec<u64>,
    /// Whether 0.0's or 0.1's records were seen.
    pax_map: bool,
}

/// A sparse map as an archive lists it: `(offset, length)` pairs, and the
/// file's real size.
type RawMap = (Vec<(u64, u64)>, u64);

/// Pairs `offset, length` from a flat list of numbers.
fn pairs(numbers: &[u64]) -> Result<Vec<(u64, u64)>, String> {
    if !numbers.len().is_multiple_of(2) {
        return Err("a sparse map with an offset and no length".into());
    }
    Ok(numbers.chunks(2).map(|p| (p[0], p[1])).collect())
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

struct Walker<'a, I: TarInput + ?Sized> {
    input: &'a mut I,
    pos: u64,
}

impl<I: TarInput + ?Sized> Walker<'_, I> {
    /// The next 512-byte block; `None` at the end of the stream.
    fn block(&mut self) -> Result<Option<[u8; 512]>, WalkError> {
        let mut block = [0u8; 512];
        let got = self.input.read_full(&mut block)?;
        self.pos += got as u64;
        match got {
            0 => Ok(None),
            512 => Ok(Some(block)),
            _ => Err(WalkError::Bad(format!(
                "the stream ends inside the header at offset {}",
                self.pos - got as u64
            ))),
        }
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), WalkError> {
        let skipped = self
            .input
            .skip(n)
            .map_err(|e| WalkError::Bad(format!("unreadable stream inside {what}: {e}")))?;
        self.pos += skipped;
        if skipped < n {
            return Err(WalkError::Bad(format!(
                "the stream ends inside {what} (truncated layer?)"
            )));
        }
        Ok(())
    }

    /// An extension header's data (of a size already bounded), then its
    /// padding.
    fn data(&mut self, size: u64) -> Result<Vec<u8>, WalkError> {
        let mut out = vec![0u8; size as usize];
        let got = self.input.read_full(&mut out)?;
        self.pos += got as u64;
        if got < out.len() {
            return Err(WalkError::Bad(
                "the stream ends inside an extension header".into(),
            ));
        }
        self.skip(padding(size), "an extension header")?;
        Ok(out)
    }
}

/// Normalises a layer entry's name as a runtime would: a leading `/` and
/// `.` components are dropped and `..` is resolved; a name that climbs out
/// of the root, is too long, or holds NUL is refused.
pub fn normalize(name: &str) -> Result<String, String> {
    if name.len() > PATH_MAX {
        return Err(format!("the name is longer than {PATH_MAX} bytes"));
    }
    if name.contains('\0') {
        return Err("NUL in the name".into());
    }
    let mut out: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err("the name climbs out of the root (\"..\")".into());
                }
            }
            c if c.len() > NAME_MAX => {
                return Err(format!("a path component is longer than {NAME_MAX} bytes"));
            }
            c => out.push(c),
        }
    }
    Ok(out.join("/"))
}

/// Walks a tar stream into its table of contents.
///
/// Entries a runtime would not create (a name climbing out of the root or
/// too long, a GNU sparse file, an unknown type) are left out with a
/// problem; a stream that cannot be walked (a bad header checksum, a size
/// past the end, too many entries, a read error) is an error.
pub fn walk<I: TarInput + ?Sized>(input: &mut I, max_entries: usize) -> Result<Toc, WalkError> {
    let mut toc = Toc::default();
    toc.len = walk_each(input, max_entries, Names::Layer, |entry| match entry {
        Ok(e) => toc.entries.push(e),
        Err(problem) => toc.problems.push(problem),
    })?;
    Ok(toc)
}

/// What an entry name may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Names {
    /// As a container runtime unpacks a layer: a leading `/` and `.`
    /// components are dropped and `..` is resolved ([`normalize`]).
    Layer,
    /// As a package shown as a directory: anything that could land outside
    /// it or that no filesystem shows is refused (absolute paths, `..`,
    /// backslashes, drive prefixes).
    Package,
}

impl Names {
    fn path(self, name: &str) -> Result<String, String> {
        match self {
            Names::Layer => normalize(name),
            Names::Package => super::names::entry_components(name).map(|c| c.join("/")),
        }
    }
}

/// Walks a tar stream, handing each entry to `sink` as it is found (an
/// entry left out as its problem line, `entry "NAME": REASON`), so that a
/// caller keeps only what it needs of each. The length of the stream
/// walked (to its end-of-archive marker); errors as [`walk`].
pub fn walk_each<I: TarInput + ?Sized>(
    input: &mut I,
    max_entries: usize,
    names: Names,
    mut sink: impl FnMut(Result<TocEntry, String>),
) -> Result<u64, WalkError> {
    let mut w = Walker { input, pos: 0 };
    let mut found = 0usize;
    let mut pending = Pending::default();
    let mut headers = 0usize;
    let mut sparse_extents = 0usize;
    while let Some(block) = w.block()? {
        if block.iter().all(|b| *b == 0) {
            break; // the end-of-archive marker
        }
        headers += 1;
        // Extension headers count too: each entry has a few at most.
        if headers > max_entries.saturating_mul(4) {
            return Err(WalkError::Bad(format!(
                "more than {max_entries} entries (the limit)"
            )));
        }
        let header_at = w.pos - BLOCK;
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(&block);
        check_sum(&block, &header, header_at)?;
        let bad_field = |what: &str| {
            WalkError::Bad(format!("the header at offset {header_at} has a bad {what}"))
        };
        let header_size = header.entry_size().map_err(|_| bad_field("size"))?;
        let kind = header.entry_type();
        if kind.is_gnu_longname() || kind.is_gnu_longlink() {
            if header_size > PATH_MAX as u64 + 1 {
                return Err(WalkError::Bad(format!(
                    "a GNU long name at offset {header_at} is over {PATH_MAX} bytes"
                )));
            }
            let v = trim_nul(w.data(header_size)?);
            if kind.is_gnu_longname() {
                pending.name = Some(v);
            } else {
                pending.link = Some(v);
            }
            continue;
        }
        if kind.is_pax_local_extensions() || kind.is_pax_global_extensions() {
            if header_size > MAX_PAX {
                return Err(WalkError::Bad(format!(
                    "a PAX header at offset {header_at} is over {MAX_PAX} bytes"
                )));
            }
            let data = w.data(header_size)?;
            if kind.is_pax_local_extensions() {
                pax(&data, &mut pending).map_err(|r| {
                    WalkError::Bad(format!("the PAX header at offset {header_at}: {r}"))
                })?;
            }
            continue;
        }
        let p = std::mem::take(&mut pending);
        let raw_name = p
            .sparse
            .name
            .or(p.name)
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let shown = shown_name(&raw_name);
        let kind_byte = kind.as_byte();
        // A v7 tar has no directory type: a regular file's name ending in
        // `/` is a directory, as every tar reader takes it.
        let dir_by_name = matches!(kind_byte, 0 | b'0') && raw_name.ends_with(b"/");
        let old_sparse = kind.is_gnu_sparse() && !dir_by_name;
        let is_file = (kind.is_file() || kind.is_contiguous() || kind_byte == 0 || old_sparse)
            && !dir_by_name;
        // Only regular files carry data (a hard link's size field is
        // sometimes set; its data is not in the stream).
        let stored = p.size.unwrap_or(header_size);
        let data_len = if is_file || dir_by_name || kind_byte > b'7' {
            stored
        } else {
            0
        };
        let what = format!("entry {shown:?}");
        let mut physical = data_len
            .checked_add(padding(data_len))
            .ok_or_else(|| bad_field("size"))?;
        // A sparse file's map: in the header and the blocks after it (the
        // old `S` type), in PAX records (0.0, 0.1), or at the start of the
        // data (1.0). `(map, real size)`, or why it is no map.
        let mut map_len = 0u64;
        let sparse: Option<Result<RawMap, String>> = if old_sparse {
            Some(old_gnu_map(&mut w, &header, &what)?)
        } else if is_file && p.sparse.major == Some(1) {
            let (map, read) = map_in_data(&mut w, physical, &what)?;
            map_len = read;
            Some(map.and_then(|m| {
                let size = p
                    .sparse
                    .size
                    .ok_or("a sparse file without GNU.sparse.realsize")?;
                Ok((m, size))
            }))
        } else if is_file && p.sparse.pax_map {
            Some(pairs(&p.sparse.numbers).and_then(|m| {
                let size = p
                    .sparse
                    .size
                    .ok_or("a sparse file without GNU.sparse.size")?;
                Ok((m, size))
            }))
        } else {
            None
        };
        physical -= map_len;
        let data_at = w.pos;
        let sparse = sparse.map(|r| {
            r.and_then(|(pairs, size)| {
                sparse_extents += pairs.len();
                if sparse_extents > MAX_WALK_EXTENTS {
                    return Err(format!(
                        "more than {MAX_WALK_EXTENTS} sparse ranges in the archive (the limit)"
                    ));
                }
                let map = SparseMap::new(&pairs, size)?;
                let there = data_len.saturating_sub(map_len);
                if map.stored_len() > there {
                    return Err(format!(
                        "its sparse map lists {} bytes of data; the entry stores {there}",
                        map.stored_len()
                    ));
                }
                Ok(map)
            })
        });
        w.skip(physical, &what)?;

        // Packages show no owners: a tool that leaves the fields empty
        // makes a readable package still.
        let owner = |id: io::Result<u64>, what: &str| -> Result<u32, String> {
            match id {
                Ok(id) => u32::try_from(id).map_err(|_| format!("a {what} over 2^32")),
                Err(_) if names == Names::Package => Ok(0),
                Err(_) => Err(format!("a bad {what}")),
            }
        };
        let entry = (|| -> Result<TocEntry, String> {
            let sparse = sparse.transpose()?;
            let name = std::str::from_utf8(&raw_name).map_err(|_| "the name is not UTF-8")?;
            let path = names.path(name)?;
            let link = p
                .link
                .or_else(|| header.link_name_bytes().map(|l| l.into_owned()))
                .unwrap_or_default();
            let link = String::from_utf8(link).map_err(|_| "the link target is not UTF-8")?;
            let (kind, link) = if is_file {
                (EntryKind::File, String::new())
            } else if kind.is_dir() || dir_by_name {
                (EntryKind::Dir, String::new())
            } else if kind.is_symlink() {
                if link.is_empty() || link.len() > PATH_MAX || link.contains('\0') {
                    return Err("a symlink with an empty, over-long or NUL target".into());
                }
                (EntryKind::Symlink, link)
            } else if kind.is_hard_link() {
                let to = names
                    .path(&link)
                    .map_err(|r| format!("hard link target: {r}"))?;
                if to.is_empty() {
                    return Err("a hard link to the root".into());
                }
                (EntryKind::Hardlink, to)
            } else if kind.is_character_special() {
                (EntryKind::CharDevice, String::new())
            } else if kind.is_block_special() {
                (EntryKind::BlockDevice, String::new())
            } else if kind.is_fifo() {
                (EntryKind::Fifo, String::new())
            } else {
                return Err(format!(
                    "unsupported entry type {:?}",
                    char::from(kind_byte)
                ));
            };
            if path.is_empty() && kind != EntryKind::Dir {
                return Err("the root is not a directory".into());
            }
            let device = matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice);
            let number = |n: io::Result<Option<u32>>| n.ok().flatten().unwrap_or(0);
            Ok(TocEntry {
                path,
                kind,
                mode: match header.mode() {
                    Ok(m) => m & 0o7777,
                    // A package's files get the view's mode instead.
                    Err(_) if names == Names::Package => UNKNOWN_MODE,
                    Err(_) => return Err("a bad mode".into()),
                },
                uid: match p.uid {
                    Some(u) => u,
                    None => owner(header.uid(), "uid")?,
                },
                gid: match p.gid {
                    Some(g) => g,
                    None => owner(header.gid(), "gid")?,
                },
                mtime: p
                    .mtime
                    .or_else(|| header.mtime().ok().and_then(|t| i64::try_from(t).ok()))
                    .unwrap_or(0),
                size: match (&sparse, is_file) {
                    (Some(m), _) => m.size(),
                    (None, true) => stored,
                    (None, false) => 0,
                },
                offset: if is_file { data_at } else { 0 },
                link,
                major: if device {
                    number(header.device_major())
                } else {
                    0
                },
                minor: if device {
                    number(header.device_minor())
                } else {
                    0
                },
                xattrs: p.xattrs,
                sparse: sparse.map(Arc::new),
                chunks: None,
            })
        })();
        found += 1;
        if found > max_entries {
            return Err(WalkError::Bad(format!(
                "more than {max_entries} entries (the limit)"
            )));
        }
        sink(entry.map_err(|reason| format!("entry {shown:?}: {reason}")));
    }
    Ok(w.pos)
}

/// The map of an old GNU sparse file (type `S`): four ranges in the
/// header, then 21 in each extension block that follows while the one
/// before says another does. An error if the stream cannot be walked on;
/// the inner `Err` if only this entry is unreadable.
fn old_gnu_map<I: TarInput + ?Sized>(
    w: &mut Walker<'_, I>,
    header: &tar::Header,
    what: &str,
) -> Result<Result<RawMap, String>, WalkError> {
    let Some(gnu) = header.as_gnu() else {
        return Err(WalkError::Bad(format!(
            "{what} is an old GNU sparse file without a GNU header"
        )));
    };
    let mut map = Vec::new();
    let mut bad = None;
    let mut take = |s: &[tar::GnuSparseHeader], map: &mut Vec<(u64, u64)>| {
        for s in s.iter().filter(|s| !s.is_empty()) {
            match (s.offset(), s.length()) {
                (Ok(o), Ok(l)) if map.len() < MAX_SPARSE_EXTENTS => map.push((o, l)),
                (Ok(_), Ok(_)) => {
                    bad.get_or_insert(format!(
                        "a sparse map of over {MAX_SPARSE_EXTENTS} ranges (the limit)"
                    ));
                }
                _ => {
                    bad.get_or_insert("a sparse map with a bad number".to_owned());
                }
            }
        }
    };
    take(&gnu.sparse, &mut map);
    let size = gnu.real_size();
    let mut extended = gnu.is_extended();
    let mut blocks = 0usize;
    while extended {
        blocks += 1;
        if blocks > MAX_SPARSE_EXTENTS / 21 + 1 {
            return Err(WalkError::Bad(format!(
                "{what} has more sparse map blocks than any map of {MAX_SPARSE_EXTENTS} ranges"
            )));
        }
        let block = w.block()?.ok_or_else(|| {
            WalkError::Bad(format!("the stream ends inside the sparse map of {what}"))
        })?;
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.as_mut_bytes().copy_from_slice(&block);
        take(ext.sparse(), &mut map);
        extended = ext.is_extended();
    }
    Ok(match (bad, size) {
        (Some(bad), _) => Err(bad),
        (None, Err(_)) => Err("a sparse file with a bad real size".into()),
        (None, Ok(size)) => Ok((map, size)),
    })
}

/// The map at the start of a 1.0 sparse file's data: decimal numbers, a
/// line each (the count of ranges, then each range's offset and length),
/// padded to a block. Reads whole blocks of the data's `physical` bytes
/// until the map is complete; the map (or why it is none) and the bytes
/// read.
#[allow(clippy::type_complexity)]
fn map_in_data<I: TarInput + ?Sized>(
    w: &mut Walker<'_, I>,
    physical: u64,
    what: &str,
) -> Result<(Result<Vec<(u64, u64)>, String>, u64), WalkError> {
    let mut read = 0u64;
    let mut numbers: Vec<u64> = Vec::new();
    let mut count: Option<usize> = None;
    let mut digits = String::new();
    loop {
        if count.is_some_and(|c| numbers.len() == 2 * c) {
            return Ok((pairs(&numbers), read));
        }
        if read + BLOCK > physical {
            return Ok((
                Err("its sparse map runs past the entry's data".into()),
                read,
            ));
        }
        let block = w.block()?.ok_or_else(|| {
            WalkError::Bad(format!("the stream ends inside the sparse map of {what}"))
        })?;
        read += BLOCK;
        for &b in block.iter() {
            if count.is_some_and(|c| numbers.len() == 2 * c) {
                break; // the rest of the block is padding
            }
            match b {
                b'0'..=b'9' if digits.len() < MAX_MAP_DIGITS => digits.push(char::from(b)),
                b'\n' if !digits.is_empty() => {
                    let Ok(n) = digits.parse::<u64>() else {
                        return Ok((Err("a sparse map with a number over 2^64".into()), read));
                    };
                    digits.clear();
                    match count {
                        None => match usize::try_from(n) {
                            Ok(c) if c <= MAX_SPARSE_EXTENTS => count = Some(c),
                            _ => {
                                return Ok((
                                    Err(format!(
                                        "a sparse map of {n} ranges (the limit is {MAX_SPARSE_EXTENTS})"
                                    )),
                                    read,
                                ));
                            }
                        },
                        Some(_) => numbers.push(n),
                    }
                }
                _ => return Ok((Err("a malformed sparse map".into()), read)),
            }
        }
    }
}

/// A name as messages show it: lossy UTF-8, cut at 200 characters (a
/// hostile PAX name can be a megabyte).
fn shown_name(raw: &[u8]) -> String {
    let name = String::from_utf8_lossy(raw);
    match name.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.into_owned(),
    }
}

fn check_sum(block: &[u8; 512], header: &tar::Header, at: u64) -> Result<(), WalkError> {
    let rest = block[..148].iter().chain(&block[156..]);
    let unsigned: u32 = rest.clone().map(|b| u32::from(*b)).sum::<u32>() + 8 * 32;
    // Some old tars summed signed bytes.
    let signed: i64 = rest.map(|b| i64::from(*b as i8)).sum::<i64>() + 8 * 32;
    match header.cksum() {
        Ok(sum) if sum == unsigned || i64::from(sum) == signed => Ok(()),
        _ => Err(WalkError::Bad(format!(
            "the header at offset {at} fails its checksum (not a tar, or corrupt)"
        ))),
    }
}

/// Applies a PAX extended header's records.
fn pax(data: &[u8], pending: &mut Pending) -> Result<(), String> {
    let number = |v: &[u8], what: &str| -> Result<u64, String> {
        std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("a bad {what}"))
    };
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.map_err(|e| format!("a malformed record: {e}"))?;
        let value = ext.value_bytes();
        let key = ext.key_bytes();
        match key {
            b"path" => pending.name = Some(value.to_vec()),
            b"linkpath" => pending.link = Some(value.to_vec()),
            b"size" => pending.size = Some(number(value, "size")?),
            b"GNU.sparse.major" => pending.sparse.major = Some(number(value, "sparse major")?),
            b"GNU.sparse.name" => pending.sparse.name = Some(value.to_vec()),
            b"GNU.sparse.size" | b"GNU.sparse.realsize" => {
                pending.sparse.size = Some(number(value, "sparse size")?)
            }
            b"GNU.sparse.map" => {
                let s = &mut pending.sparse;
                s.pax_map = true;
                s.numbers.clear();
                for n in value.split(|b| *b == b',').filter(|n| !n.is_empty()) {
                    if s.numbers.len() >= 2 * MAX_SPARSE_EXTENTS {
                        return Err("a sparse map over the limit".into());
                    }
                    s.numbers.push(number(n, "sparse map")?);
                }
            }
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                let s = &mut pending.sparse;
                s.pax_map = true;
                // 0.0: each offset, then its length, in order.
                if (key == b"GNU.sparse.offset") != s.numbers.len().is_multiple_of(2) {
                    return Err("sparse offsets and lengths out of turn".into());
                }
                if s.numbers.len() >= 2 * MAX_SPARSE_EXTENTS {
                    return Err("a sparse map over the limit".into());
                }
                s.numbers.push(number(value, "sparse map")?);
            }
            b"uid" => {
                pending.uid =
                    Some(u32::try_from(number(value, "uid")?).map_err(|_| "a uid over 2^32")?)
            }
            b"gid" => {
                pending.gid =
                    Some(u32::try_from(number(value, "gid")?).map_err(|_| "a gid over 2^32")?)
            }
            b"mtime" => {
                // Seconds, maybe negative, maybe with a fraction.
                let v = std::str::from_utf8(value).map_err(|_| "a bad mtime")?;
                pending.mtime = v.split('.').next().and_then(|s| s.parse().ok());
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    let name = String::from_utf8(name.to_vec())
                        .map_err(|_| "an xattr name that is not UTF-8")?;
                    if name.is_empty() || name.len() > NAME_MAX || value.len() > 64 << 10 {
                        return Err(format!("an xattr {name:?} too long or empty"));
                    }
                    pending.xattrs.push((name, value.to_vec()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar made with the `tar` crate's builder.
    fn build(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_mtime(1_700_000_000);
        h
    }

    fn walk_bytes(b: &[u8]) -> Result<Toc, WalkError> {
        walk(&mut Stream(b), MAX_LAYER_ENTRIES)
    }

    #[test]
    fn every_kind_with_its_metadata() {
        let long = format!("{}/file", "d".repeat(200));
        let tar = build(|b| {
            let mut h = header(tar::EntryType::Directory, 0, 0o755);
            b.append_data(&mut h, "./", &[][..]).unwrap();
            let mut h = header(tar::EntryType::Regular, 5, 0o4755);
            b.append_data(&mut h, "./bin/su", &b"hello"[..]).unwrap();
            let mut h = header(tar::EntryType::Regular, 3, 0o644);
            b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
            let mut h = header(tar::EntryType::Symlink, 0, 0o777);
            b.append_link(&mut h, "lib", "usr/lib").unwrap();
            let mut h = header(tar::EntryType::Link, 0, 0o755);
            b.append_link(&mut h, "bin/su2", "./bin/su").unwrap();
            let mut h = header(tar::EntryType::Char, 0, 0o666);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            b.append_data(&mut h, "dev/null", &[][..]).unwrap();
            let mut h = header(tar::EntryType::Block, 0, 0o660);
            h.set_device_major(8).unwrap();
            h.set_device_minor(1).unwrap();
            b.append_data(&mut h, "dev/sda1", &[][..]).unwrap();
            let mut h = header(tar::EntryType::Fifo, 0, 0o600);
            b.append_data(&mut h, "run/fifo", &[][..]).unwrap();
        });
        let toc = walk_bytes(&tar).unwrap();
        assert!(toc.problems.is_empty(), "{:?}", toc.problems);
        let kinds: Vec<(&str, EntryKind)> = toc
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("", EntryKind::Dir),
                ("bin/su", EntryKind::File),
                (long.as_str(), EntryKind::File),
                ("lib", EntryKind::Symlink),
                ("bin/su2", EntryKind::Hardlink),
                ("dev/null", EntryKind::CharDevice),
                ("dev/sda1", EntryKind::BlockDevice),
                ("run/fifo", EntryKind::Fifo),
            ]
        );
        let su = &toc.entries[1];
        assert_eq!((su.mode, su.uid, su.gid, su.size), (0o4755, 1000, 100, 5));
        assert_eq!(su.mtime, 1_700_000_000);
        let at = su.offset as usize;
        assert_eq!(&tar[at..at + 5], b"hello");
        let l = &toc.entries[2];
        assert_eq!(&tar[l.offset as usize..l.offset as usize + 3], b"abc");
        assert_eq!(toc.entries[3].link, "usr/lib");
        assert_eq!(toc.entries[4].link, "bin/su");
        assert_eq!((toc.entries[5].major, toc.entries[5].minor), (1, 3));
        assert_eq!((toc.entries[6].major, toc.entries[6].minor), (8, 1));
    }

    #[test]
    fn a_v7_name_ending_in_a_slash_is_a_directory() {
        let tar = build(|b| {
            for (name, kind, data) in [
                (&b"d/"[..], 0u8, &b""[..]),
                (b"d/f", 0, b"abc"),
                (b"d/e/", b'0', b""),
                (b"d/e/g", b'0', b"xy"),
            ] {
                let mut h = tar::Header::new_old();
                h.as_old_mut().name[..name.len()].copy_from_slice(name);
                h.set_entry_type(tar::EntryType::new(kind));
                h.set_size(data.len() as u64);
                h.set_mode(0o755);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(1_700_000_000);
                h.set_cksum();
                b.append(&h, data).unwrap();
            }
        });
        let toc = walk_bytes(&tar).unwrap();
        assert!(toc.problems.is_empty(), "{:?}", toc.problems);
        let kinds: Vec<(&str, EntryKind, u64)> = toc
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind, e.size))
            .collect();
        assert_eq!(
            kinds,
            [
                ("d", EntryKind::Dir, 0),
                ("d/f", EntryKind::File, 3),
                ("d/e", EntryKind::Dir, 0),
                ("d/e/g", EntryKind::File, 2),
            ]
        );
    }

    #[test]
    fn pax_records_override_the_header() {
        let tar = build(|b| {
            let path = format!("x/{}", "p".repeat(150));
            b.append_pax_extensions([
                ("path", path.as_bytes()),
                ("uid", &b"4294967294"[..]),
                ("gid", &b"70000"[..]),
                ("mtime", &b"1600000000.5"[..]),
                ("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02"[..]),
                ("SCHILY.xattr.user.note", &b"hi"[..]),
            ])
            .unwrap();
            let mut h = header(tar::EntryType::Regular, 2, 0o644);
            b.append_data(&mut h, "short", &b"ok"[..]).unwrap();
        });
        let toc = walk_bytes(&tar).unwrap();
        let e = &toc.entries[0];
        assert_eq!(e.path, format!("x/{}", "p".repeat(150)));
        assert_eq!(
            (e.uid, e.gid, e.mtime),
            (4_294_967_294, 70000, 1_600_000_000)
        );
        assert_eq!(
            e.xattrs,
            [
                (
                    "security.capability".to_owned(),
                    b"\x01\x00\x00\x02".to_vec()
                ),
                ("user.note".to_owned(), b"hi".to_vec())
            ]
        );
    }

    /// The ranges of a sparse test file, its size, and its stored data
    /// (the `i`th range filled with byte `i + 1`).
    fn sparse_file(ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut data = Vec::new();
        for (i, (_, len)) in ranges.iter().enumerate() {
            data.extend(std::iter::repeat_n(i as u8 + 1, *len as usize));
        }
        data
    }

    fn padded(mut v: Vec<u8>) -> Vec<u8> {
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    /// An old GNU sparse entry (type `S`): four ranges in the header, the
    /// rest in extension blocks.
    fn old_gnu_sparse(name: &str, ranges: &[(u64, u64)], size: u64) -> Vec<u8> {
        let data = sparse_file(ranges);
        let mut h = header(tar::EntryType::GNUSparse, data.len() as u64, 0o644);
        h.set_path(name).unwrap();
        let gnu = h.as_gnu_mut().unwrap();
        for (s, (o, l)) in gnu.sparse.iter_mut().zip(ranges) {
            s.set_offset(*o);
            s.set_length(*l);
        }
        gnu.set_real_size(size);
        let rest: Vec<_> = ranges.iter().skip(4).collect();
        gnu.set_is_extended(!rest.is_empty());
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        let blocks: Vec<_> = rest.chunks(21).collect();
        for (i, chunk) in blocks.iter().enumerate() {
            let mut ext = tar::GnuExtSparseHeader::new();
            for (s, (o, l)) in ext.sparse_mut().iter_mut().zip(chunk.iter()) {
                s.set_offset(*o);
                s.set_length(*l);
            }
            ext.set_is_extended(i + 1 < blocks.len());
            out.extend_from_slice(ext.as_bytes());
        }
        out.extend(padded(data));
        out
    }

    /// An entry's PAX records, its header's name and its data.
    type PaxEntry<'a> = (Vec<(&'a str, &'a [u8])>, String, Vec<u8>);

    /// A PAX sparse entry: 0.0, 0.1 or 1.0.
    fn pax_sparse(version: &str, name: &str, ranges: &[(u64, u64)], size: u64) -> Vec<u8> {
        let data = sparse_file(ranges);
        let size_s = size.to_string();
        let count = ranges.len().to_string();
        let map: Vec<String> = ranges
            .iter()
            .flat_map(|(o, l)| [o.to_string(), l.to_string()])
            .collect();
        let joined = map.join(",");
        let mut in_data = format!("{count}\n");
        for n in &map {
            in_data.push_str(n);
            in_data.push('\n');
        }
        build(|b| {
            let (records, header_name, body): PaxEntry<'_> = match version {
                "0.0" => {
                    let mut r: Vec<(&str, &[u8])> = vec![
                        ("GNU.sparse.size", size_s.as_bytes()),
                        ("GNU.sparse.numblocks", count.as_bytes()),
                    ];
                    for pair in map.chunks(2) {
                        r.push(("GNU.sparse.offset", pair[0].as_bytes()));
                        r.push(("GNU.sparse.numbytes", pair[1].as_bytes()));
                    }
                    (r, name.to_owned(), data.clone())
                }
                "0.1" => (
                    vec![
                        ("GNU.sparse.size", size_s.as_bytes()),
                        ("GNU.sparse.numblocks", count.as_bytes()),
                        ("GNU.sparse.map", joined.as_bytes()),
                    ],
                    name.to_owned(),
                    data.clone(),
                ),
                _ => {
                    let mut body = padded(in_data.clone().into_bytes());
                    body.extend_from_slice(&data);
                    (
                        vec![
                            ("GNU.sparse.major", b"1"),
                            ("GNU.sparse.minor", b"0"),
                            ("GNU.sparse.name", name.as_bytes()),
                            ("GNU.sparse.realsize", size_s.as_bytes()),
                        ],
                        format!("GNUSparseFile.0/{}", name.rsplit('/').next().unwrap()),
                        body,
                    )
                }
            };
            b.append_pax_extensions(records).unwrap();
            let mut h = header(tar::EntryType::Regular, body.len() as u64, 0o644);
            b.append_data(&mut h, header_name, &body[..]).unwrap();
        })
    }

    /// The file an entry shows, read from the tar's bytes by its map.
    fn expand(tar: &[u8], e: &TocEntry) -> Vec<u8> {
        let mut out = vec![0u8; e.size as usize];
        let map = e.sparse.as_ref().expect("a sparse entry");
        for x in map.extents() {
            let from = (e.offset + x.stored) as usize;
            out[x.offset as usize..(x.offset + x.len) as usize]
                .copy_from_slice(&tar[from..from + x.len as usize]);
        }
        out
    }

    fn after() -> Vec<u8> {
        build(|b| {
            let mut h = header(tar::EntryType::Regular, 5, 0o644);
            b.append_data(&mut h, "after", &b"after"[..]).unwrap();
        })
    }

    #[test]
    fn every_gnu_sparse_format_shows_the_file_at_its_name_and_size() {
        // Six ranges: the old format's header holds four, an extension
        // block the rest. A hole at the start, between, and at the end.
        let ranges = [
            (4096, 100),
            (8192, 512),
            (1 << 20, 5000),
            (2 << 20, 1),
            ((2 << 20) + 4096, 700),
            (3 << 20, 4096),
        ];
        let size = (4 << 20) + 17;
        let mut want = vec![0u8; size as usize];
        for (i, (o, l)) in ranges.iter().enumerate() {
            want[*o as usize..(*o + *l) as usize].fill(i as u8 + 1);
        }
        for version in ["S", "0.0", "0.1", "1.0"] {
            let mut tar = match version {
                "S" => old_gnu_sparse("d/disk.img", &ranges, size),
                v => {
                    let mut t = pax_sparse(v, "d/disk.img", &ranges, size);
                    t.truncate(t.len() - 1024); // the end marker
                    t
                }
            };
            tar.extend(after());
            let toc = walk_bytes(&tar).unwrap();
            assert!(toc.problems.is_empty(), "{version}: {:?}", toc.problems);
            let paths: Vec<_> = toc.entries.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(paths, ["d/disk.img", "after"], "{version}");
            let e = &toc.entries[0];
            assert_eq!((e.kind, e.size), (EntryKind::File, size), "{version}");
            assert_eq!(e.sparse.as_ref().unwrap().extents().len(), 6, "{version}");
            assert!(expand(&tar, e) == want, "{version}: the bytes differ");
            let a = &toc.entries[1];
            assert_eq!(&tar[a.offset as usize..a.offset as usize + 5], b"after");
        }
    }

    #[test]
    fn a_sparse_map_that_lies_leaves_out_its_entry_and_the_walk_goes_on() {
        let size = 1 << 20;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "out of order",
                pax_sparse("0.1", "f", &[(8192, 10), (0, 10)], size),
                "out of order",
            ),
            (
                "past the end",
                pax_sparse("0.0", "f", &[(size - 5, 10)], size),
                "past the file's size",
            ),
            (
                "overlapping",
                pax_sparse("1.0", "f", &[(0, 100), (50, 100)], size),
                "overlapping",
            ),
            (
                "more than stored",
                {
                    // The map lists 600 bytes; the entry stores 512.
                    let mut h = header(tar::EntryType::Regular, 512, 0o644);
                    build(|b| {
                        b.append_pax_extensions([
                            ("GNU.sparse.size", &b"4096"[..]),
                            ("GNU.sparse.map", &b"0,600"[..]),
                        ])
                        .unwrap();
                        b.append_data(&mut h, "f", &[7u8; 512][..]).unwrap();
                    })
                },
                "lists 600 bytes",
            ),
            (
                "a 1.0 map with too many ranges",
                {
                    let mut body = padded(b"99999999999\n".to_vec());
                    body.extend([0u8; 512]);
                    let mut h = header(tar::EntryType::Regular, body.len() as u64, 0o644);
                    build(|b| {
                        b.append_pax_extensions([
                            ("GNU.sparse.major", &b"1"[..]),
                            ("GNU.sparse.name", &b"f"[..]),
                            ("GNU.sparse.realsize", &b"4096"[..]),
                        ])
                        .unwrap();
                        b.append_data(&mut h, "GNUSparseFile.0/f", &body[..])
                            .unwrap();
                    })
                },
                "the limit",
            ),
            (
                "a 1.0 map that never ends",
                {
                    // 300 ranges announced, 127 in the one block there is.
                    let mut body = b"300\n".to_vec();
                    body.extend(b"1\n".repeat(254));
                    let mut h = header(tar::EntryType::Regular, body.len() as u64, 0o644);
                    build(|b| {
                        b.append_pax_extensions([
                            ("GNU.sparse.major", &b"1"[..]),
                            ("GNU.sparse.name", &b"f"[..]),
                            ("GNU.sparse.realsize", &b"4096"[..]),
                        ])
                        .unwrap();
                        b.append_data(&mut h, "GNUSparseFile.0/f", &body[..])
                            .unwrap();
                    })
                },
                "runs past the entry's data",
            ),
            (
                "a 1.0 map that is not numbers",
                {
                    let body = padded(b"2\nzero\n".to_vec());
                    let mut h = header(tar::EntryType::Regular, body.len() as u64, 0o644);
                    build(|b| {
                        b.append_pax_extensions([
                            ("GNU.sparse.major", &b"1"[..]),
                            ("GNU.sparse.name", &b"f"[..]),
                            ("GNU.sparse.realsize", &b"4096"[..]),
                        ])
                        .unwrap();
                        b.append_data(&mut h, "GNUSparseFile.0/f", &body[..])
                            .unwrap();
                    })
                },
                "malformed sparse map",
            ),
            (
                "no real size",
                build(|b| {
                    b.append_pax_extensions([("GNU.sparse.map", &b"0,5"[..])])
                        .unwrap();
                    let mut h = header(tar::EntryType::Regular, 5, 0o644);
                    b.append_data(&mut h, "f", &b"12345"[..]).unwrap();
                }),
                "without GNU.sparse.size",
            ),
        ];
        for (what, mut tar, reason) in cases {
            tar.truncate(tar.len() - 1024);
            tar.extend(after());
            let toc = walk_bytes(&tar).unwrap_or_else(|e| panic!("{what}: {e}"));
            let paths: Vec<_> = toc.entries.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(paths, ["after"], "{what}");
            assert_eq!(toc.problems.len(), 1, "{what}: {:?}", toc.problems);
            assert!(
                toc.problems[0].contains(reason),
                "{what}: {:?}",
                toc.problems
            );
        }
        // An offset without its length is a broken PAX header.
        let tar = build(|b| {
            b.append_pax_extensions([("GNU.sparse.numbytes", &b"5"[..])])
                .unwrap();
            let mut h = header(tar::EntryType::Regular, 5, 0o644);
            b.append_data(&mut h, "f", &b"12345"[..]).unwrap();
        });
        let err = walk_bytes(&tar).unwrap_err().to_string();
        assert!(err.contains("out of turn"), "{err}");
    }

    #[test]
    fn names_are_normalised_and_escapes_left_out() {
        assert_eq!(normalize("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(normalize("./a/./b/../c/").unwrap(), "a/c");
        assert_eq!(normalize("./").unwrap(), "");
        assert!(normalize("../etc/passwd").unwrap_err().contains(".."));
        assert!(normalize("a/../../b").is_err());
        assert!(
            normalize(&"a/".repeat(3000))
                .unwrap_err()
                .contains("longer")
        );
        assert!(
            normalize(&"n".repeat(256))
                .unwrap_err()
                .contains("component")
        );

        let mut raw = Vec::new();
        for name in ["../escape", "ok"] {
            let mut h = header(tar::EntryType::Regular, 1, 0o644);
            // set_path refuses "..": write the name field directly.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            raw.extend_from_slice(h.as_bytes());
            raw.extend_from_slice(&[b'x'; 512]);
        }
        raw.extend_from_slice(&[0; 1024]);
        let toc = walk_bytes(&raw).unwrap();
        assert_eq!(toc.entries.len(), 1);
        assert_eq!(toc.entries[0].path, "ok");
        assert!(toc.problems[0].contains("../escape"), "{:?}", toc.problems);
    }

    #[test]
    fn broken_streams_are_errors_not_panics() {
        let tar = build(|b| {
            let mut h = header(tar::EntryType::Regular, 5000, 0o644);
            b.append_data(&mut h, "big", &[7u8; 5000][..]).unwrap();
        });
        // Truncated inside the data, inside a header.
        for cut in [700, 100, 5000] {
            match walk_bytes(&tar[..cut]) {
                Err(WalkError::Bad(r)) => assert!(r.contains("ends inside"), "{cut}: {r}"),
                other => panic!("{cut}: {other:?}"),
            }
        }
        // A size beyond the layer.
        let mut h = header(tar::EntryType::Regular, 1 << 40, 0o644);
        h.set_path("huge").unwrap();
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&[0; 2048]);
        let e = walk_bytes(&raw).unwrap_err().to_string();
        assert!(e.contains("\"huge\""), "{e}");
        // A corrupt header.
        let mut bad = tar.clone();
        bad[10] ^= 0x55;
        assert!(
            walk_bytes(&bad)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
    }

    #[test]
    fn more_entries_than_the_limit_is_an_error() {
        let tar = build(|b| {
            for i in 0..11 {
                let mut h = header(tar::EntryType::Regular, 0, 0o644);
                b.append_data(&mut h, format!("f{i}"), &[][..]).unwrap();
            }
        });
        assert_eq!(walk(&mut Stream(&tar[..]), 11).unwrap().entries.len(), 11);
        let e = walk(&mut Stream(&tar[..]), 10).unwrap_err().to_string();
        assert!(e.contains("more than 10 entries"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let _ = walk_bytes(&bytes);
        }

        #[test]
        fn damaged_tars_never_panic(at in 0usize..3072, v in proptest::num::u8::ANY) {
            let mut tar = build(|b| {
                let mut h = header(tar::EntryType::Regular, 600, 0o644);
                b.append_data(&mut h, "a", &[1u8; 600][..]).unwrap();
                let mut h = header(tar::EntryType::Symlink, 0, 0o777);
                b.append_link(&mut h, "l", "a").unwrap();
            });
            if at < tar.len() {
                tar[at] = v;
            }
            let _ = walk_bytes(&tar);
        }
    }
}

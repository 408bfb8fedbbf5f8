//! The one tar walker: a tar stream walked once, headers only (ustar, GNU
//! long names and links, PAX records), into a table of contents. Image
//! layers and tar packages both go through it; they differ only in what
//! an entry name may be ([`Names`]).

use std::fmt;
use std::io::{self, Read};

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
        let raw_name = p.name.unwrap_or_else(|| header.path_bytes().into_owned());
        let shown = shown_name(&raw_name);
        let kind_byte = kind.as_byte();
        // A v7 tar has no directory type: a regular file's name ending in
        // `/` is a directory, as every tar reader takes it.
        let dir_by_name = matches!(kind_byte, 0 | b'0') && raw_name.ends_with(b"/");
        let is_file = (kind.is_file() || kind.is_contiguous() || kind_byte == 0) && !dir_by_name;
        // Only regular files carry data (a hard link's size field is
        // sometimes set; its data is not in the stream).
        let stored = p.size.unwrap_or(header_size);
        let data_len = if is_file || dir_by_name || kind.is_gnu_sparse() || kind_byte > b'7' {
            stored
        } else {
            0
        };
        let data_at = w.pos;
        let what = format!("entry {shown:?}");
        w.skip(
            data_len
                .checked_add(padding(data_len))
                .ok_or_else(|| bad_field("size"))?,
            &what,
        )?;

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
            } else if kind.is_gnu_sparse() {
                return Err("a GNU sparse file (not supported)".into());
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
                size: if is_file { stored } else { 0 },
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

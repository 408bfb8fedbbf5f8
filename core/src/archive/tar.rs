//! tar packages (plain, gzip, zstd): the stream is walked once when the view
//! is built; an entry is read in place (plain) or by decoding the stream up
//! to it (compressed).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;

use super::names::{check_target, entry_components};
use super::stream::{Bounded, with_stream};
use super::{
    Compression, Index, Item, ItemKind, MAX_ENTRIES, MAX_NAME, MAX_RATIO, TarEntry, archive_error,
    problem,
};
use crate::error::{Error, Result};
use crate::manifest::Descriptor;
use crate::reader::Reader;
use crate::view::Content;

const BLOCK: u64 = 512;
/// The largest PAX extended header read.
const MAX_PAX: u64 = 1 << 20;
const BOMB: &str =
    "the stream decompresses to over 1000 times its compressed size (a decompression bomb?)";

/// Walks the tar stream of `blob` into an index.
pub(super) async fn index(
    reader: &dyn Reader,
    blob: &Descriptor,
    compression: Compression,
) -> Result<Index> {
    let b = blob.clone();
    with_stream(reader, blob, 0..blob.size, move |r| {
        let mut walker = Walker {
            r: decoder(r, compression, &b)?,
            pos: 0,
        };
        walk(&mut walker, &b, compression).map_err(|e| match e {
            Walk::Io(e) => io_error(&b, e),
            Walk::Bad(reason) => archive_error(&b, None, reason),
        })
    })
    .await
}

/// Bytes `offset..offset + len` of entry `e`, decoding the stream from its
/// start.
pub(super) async fn read_range(
    reader: &dyn Reader,
    e: &TarEntry,
    offset: u64,
    len: u64,
) -> Result<Bytes> {
    let entry = e.clone();
    with_stream(reader, &e.blob, 0..e.blob.size, move |r| {
        let mut d = decoder(r, entry.compression, &entry.blob)?;
        let at = entry.offset + offset;
        let skipped = io::copy(&mut (&mut d).take(at), &mut io::sink())
            .map_err(|err| io_error(&entry.blob, err))?;
        let mut out = Vec::with_capacity(len as usize);
        (&mut d)
            .take(len)
            .read_to_end(&mut out)
            .map_err(|err| io_error(&entry.blob, err))?;
        if skipped < at || (out.len() as u64) < len {
            return Err(archive_error(
                &entry.blob,
                Some(&entry.name),
                "the stream ends before the entry does",
            ));
        }
        Ok(Bytes::from(out))
    })
    .await
}

fn io_error(blob: &Descriptor, e: io::Error) -> Error {
    archive_error(blob, None, format!("unreadable stream: {e}"))
}

/// The decompressed stream, bounded in how far it may grow.
pub(crate) fn decoder<'a, R: Read + 'a>(
    r: R,
    compression: Compression,
    blob: &Descriptor,
) -> Result<Box<dyn Read + 'a>> {
    let limit = blob.size.saturating_mul(MAX_RATIO).max(1 << 20);
    Ok(match compression {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(Bounded::new(
            flate2::read::MultiGzDecoder::new(r),
            limit,
            BOMB,
        )),
        Compression::Zstd => Box::new(Bounded::new(Zstd::new(r), limit, BOMB)),
    })
}

/// A zstd stream of one or more frames.
pub(crate) struct Zstd<R: Read> {
    state: ZstdState<R>,
}

enum ZstdState<R: Read> {
    Between(BufReader<R>),
    Frame(Box<ruzstd::decoding::StreamingDecoder<BufReader<R>, ruzstd::decoding::FrameDecoder>>),
    Done,
}

impl<R: Read> Zstd<R> {
    pub(crate) fn new(r: R) -> Self {
        Zstd {
            state: ZstdState::Between(BufReader::new(r)),
        }
    }
}

impl<R: Read> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match std::mem::replace(&mut self.state, ZstdState::Done) {
                ZstdState::Done => return Ok(0),
                ZstdState::Between(mut r) => {
                    if r.fill_buf()?.is_empty() {
                        return Ok(0);
                    }
                    let frame = ruzstd::decoding::StreamingDecoder::new(r).map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
                    })?;
                    self.state = ZstdState::Frame(Box::new(frame));
                }
                ZstdState::Frame(mut frame) => {
                    let n = frame.read(buf)?;
                    if n > 0 || buf.is_empty() {
                        self.state = ZstdState::Frame(frame);
                        return Ok(n);
                    }
                    self.state = ZstdState::Between(frame.into_inner());
                }
            }
        }
    }
}

struct Walker<R> {
    r: R,
    /// Position in the uncompressed stream.
    pos: u64,
}

enum Walk {
    Io(io::Error),
    Bad(String),
}

impl From<io::Error> for Walk {
    fn from(e: io::Error) -> Self {
        Walk::Io(e)
    }
}

impl<R: Read> Walker<R> {
    /// The next 512-byte block; `None` at the end of the stream.
    fn block(&mut self) -> Result<Option<[u8; 512]>, Walk> {
        let mut block = [0u8; 512];
        let mut got = 0;
        while got < block.len() {
            match self.r.read(&mut block[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.pos += got as u64;
        match got {
            0 => Ok(None),
            512 => Ok(Some(block)),
            _ => Err(Walk::Bad("the stream ends inside a header".into())),
        }
    }

    fn skip(&mut self, n: u64) -> Result<(), Walk> {
        let skipped = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        self.pos += skipped;
        if skipped < n {
            return Err(Walk::Bad("the stream ends inside an entry".into()));
        }
        Ok(())
    }

    /// An entry's data (of a size already bounded), then its padding.
    fn data(&mut self, size: u64) -> Result<Vec<u8>, Walk> {
        let mut out = Vec::with_capacity(size as usize);
        (&mut self.r).take(size).read_to_end(&mut out)?;
        self.pos += out.len() as u64;
        if (out.len() as u64) < size {
            return Err(Walk::Bad("the stream ends inside an entry".into()));
        }
        self.skip(padding(size))?;
        Ok(out)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// What PAX and GNU extension headers say of the next entry.
#[derive(Default)]
struct Pending {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<u64>,
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn walk<R: Read>(
    w: &mut Walker<R>,
    blob: &Descriptor,
    compression: Compression,
) -> Result<Index, Walk> {
    let files_hasher = std::collections::hash_map::RandomState::new();
    let mut index = Index::default();
    let mut pending = Pending::default();
    // Where the files are, for hard links: a hash of the path to the items
    // of that hash (a few bytes an entry, not a copy of each path).
    let mut files: HashMap<u64, Vec<usize>> = HashMap::new();
    let path_hash = |p: &[String]| {
        use std::hash::BuildHasher as _;
        files_hasher.hash_one(p)
    };
    let mut headers = 0usize;
    let shared = Arc::new(blob.clone());
    while let Some(block) = w.block()? {
        if block.iter().all(|b| *b == 0) {
            break; // the end-of-archive marker
        }
        headers += 1;
        // Stopped here, while walking: an entry may take a PAX or GNU
        // header besides its own, so headers count up to twice.
        if index.items.len() + index.problems.len() >= MAX_ENTRIES || headers > MAX_ENTRIES * 3 {
            return Err(Walk::Bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let header_at = w.pos - BLOCK;
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(&block);
        let sum: u32 = block[..148]
            .iter()
            .chain(&block[156..])
            .map(|b| u32::from(*b))
            .sum::<u32>()
            + 8 * 32;
        if header.cksum().ok() != Some(sum) {
            return Err(Walk::Bad(format!(
                "the header at offset {header_at} fails its checksum"
            )));
        }
        let bad_field =
            |what: &str| Walk::Bad(format!("the header at offset {header_at} has a bad {what}"));
        let header_size = header.entry_size().map_err(|_| bad_field("size"))?;
        let kind = header.entry_type();
        if kind.is_gnu_longname() || kind.is_gnu_longlink() {
            if header_size > MAX_NAME as u64 + 1 {
                return Err(Walk::Bad(format!(
                    "a long name at offset {header_at} is over {MAX_NAME} bytes"
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
                return Err(Walk::Bad(format!(
                    "a PAX header at offset {header_at} is over {MAX_PAX} bytes"
                )));
            }
            let data = w.data(header_size)?;
            if kind.is_pax_local_extensions() {
                pax(&data, &mut pending)
                    .map_err(|r| Walk::Bad(format!("the PAX header at offset {header_at}: {r}")))?;
            }
            continue;
        }
        let p = std::mem::take(&mut pending);
        let size = p.size.unwrap_or(header_size);
        let data_at = w.pos;
        let raw_name = p.name.unwrap_or_else(|| header.path_bytes().into_owned());
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let link = p
            .link
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let mtime = p
            .mtime
            .or_else(|| header.mtime().ok())
            .filter(|s| *s > 0)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        let mode = header.mode().ok().map(|m| m & 0o777);
        w.skip(
            size.checked_add(padding(size))
                .ok_or_else(|| bad_field("size"))?,
        )?;

        let path = match std::str::from_utf8(&raw_name) {
            Err(_) => Err("the name is not UTF-8".to_owned()),
            Ok(n) => entry_components(n),
        };
        let path = match path {
            Ok(p) => p,
            Err(reason) => {
                index.problems.push(problem(&name, reason));
                continue;
            }
        };
        let item = |kind| Item {
            path: path.clone(),
            kind,
            mode,
            mtime,
        };
        let link_target = || -> Result<String, String> {
            let l = link.clone().unwrap_or_default();
            let l = String::from_utf8(l).map_err(|_| "the link target is not UTF-8".to_owned())?;
            check_target(&l)?;
            Ok(l)
        };
        let kind_byte = kind.as_byte();
        let result: Result<Item, String> =
            if kind.is_file() || kind.is_contiguous() || kind_byte == 0 {
                let content = Content::Tar(Arc::new(TarEntry {
                    blob: shared.clone(),
                    name: name.clone(),
                    compression,
                    offset: data_at,
                    size,
                }));
                files
                    .entry(path_hash(&path))
                    .or_default()
                    .push(index.items.len());
                Ok(item(ItemKind::File(content)))
            } else if kind.is_dir() {
                Ok(item(ItemKind::Dir))
            } else if kind.is_symlink() {
                link_target().map(|t| item(ItemKind::Symlink(t)))
            } else if kind.is_hard_link() {
                link_target().and_then(|t| {
                    let to = entry_components(&t)?;
                    let earlier = files.get(&path_hash(&to)).and_then(|candidates| {
                        candidates
                            .iter()
                            .rev()
                            .find_map(|&i| match &index.items[i] {
                                Item {
                                    path,
                                    kind: ItemKind::File(content),
                                    ..
                                } if *path == to => Some(content.clone()),
                                _ => None,
                            })
                    });
                    match earlier {
                        Some(content) => Ok(item(ItemKind::File(content))),
                        None => Err(format!(
                            "a hard link to {t:?}, which is not an earlier file"
                        )),
                    }
                })
            } else if kind.is_gnu_sparse() {
                Err("a GNU sparse file (not supported)".into())
            } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                Err("a device or FIFO (not shown)".into())
            } else {
                Err(format!(
                    "unsupported entry type {:?}",
                    char::from(kind_byte)
                ))
            };
        match result {
            Ok(item) => index.items.push(item),
            Err(reason) => index.problems.push(problem(&name, reason)),
        }
    }
    dedupe(&mut index);
    Ok(index)
}

/// Applies a PAX extended header's `path`, `linkpath`, `size` and `mtime`.
fn pax(data: &[u8], pending: &mut Pending) -> Result<(), String> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.map_err(|e| format!("malformed record: {e}"))?;
        let value = ext.value_bytes();
        match ext.key_bytes() {
            b"path" => pending.name = Some(value.to_vec()),
            b"linkpath" => pending.link = Some(value.to_vec()),
            b"size" => {
                let v = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or("a bad size")?;
                pending.size = Some(v);
            }
            b"mtime" => {
                // Seconds, maybe with a fraction.
                let v = std::str::from_utf8(value).map_err(|_| "a bad mtime")?;
                let secs = v.split('.').next().unwrap_or_default();
                pending.mtime = secs.parse().ok();
            }
            _ => {}
        }
    }
    Ok(())
}

/// Entries that share a name (but for directories, which merge) are left
/// out, all of them: which one a reader gets would depend on the tool.
fn dedupe(index: &mut Index) {
    let mut count: HashMap<Vec<String>, usize> = HashMap::new();
    for item in &index.items {
        if item.kind != ItemKind::Dir {
            *count.entry(item.path.clone()).or_default() += 1;
        }
    }
    let items = std::mem::take(&mut index.items);
    for item in items {
        if item.kind != ItemKind::Dir && count.get(&item.path).copied().unwrap_or(0) > 1 {
            index.problems.push(problem(
                &item.path.join("/"),
                "more than one entry has this name",
            ));
        } else {
            index.items.push(item);
        }
    }
}

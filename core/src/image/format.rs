//! The on-disk [`LayerIndex`]: what ocifs keeps of a layer once it walked
//! it, so that a later mount lists it and reads any file without reading
//! the layer from its start.
//!
//! Layout (integers are LEB128 varints unless stated; `bytes` is a varint
//! length then that many bytes):
//!
//! ```text
//! "OCIFSIDX"  u32 LE format version (2)
//! digest (32 raw bytes)  size  compression (u8)  uncompressed_size
//! entries: count, then each:
//!     flags (u8: kind in bits 0-2, 7 for a sparse file; 3 link, 4 device numbers, 5 xattrs,
//!            6 same owner as the entry before, 7 data offset and size)
//!     path: bytes shared with the previous path, then the rest as bytes
//!     mode  [uid gid]  mtime (zigzag, minus the previous entry's)
//!     [size, offset (zigzag, minus the end of the previous data)]
//!     [link bytes]  [major minor]  [xattr count, then name bytes, value bytes]
//!     [a sparse file: range count, then each range's offset (minus the
//!      end of the range before) and length]
//! problems: count, then bytes each
//! points: u8 (0 none, 1 gzip, 2 zstd), count, then each
//!     gzip: compressed and uncompressed (minus the previous point's),
//!           bits (u8), window length;
//!           then every window, concatenated and deflated: bytes
//!     zstd: compressed and uncompressed (minus the previous point's)
//! chunk_size  chunk digest count, then 32 raw bytes each
//! sha256 of everything above (32 raw bytes)
//! ```
//!
//! Decoding trusts nothing: every count is checked against the bytes left
//! before anything is allocated, lengths are capped, the windows inflate
//! to at most the length they declare, and any damage fails the checksum.

use std::io::{Read as _, Write as _};

use sha2::{Digest as _, Sha256};

use super::LayerIndex;
use std::sync::Arc;

use crate::codec::tar::{EntryKind, MAX_LAYER_ENTRIES, NAME_MAX, PATH_MAX, TocEntry};
use crate::content::{
    Compression, FramePoint, GzipPoint, MAX_SPARSE_EXTENTS, SeekPoints, SparseMap,
};
use crate::digest::Digest;

/// The first bytes of an index file.
pub const MAGIC: &[u8; 8] = b"OCIFSIDX";
/// The format version this ocifs writes and reads.
/// Version 1 had no sparse files (an index it made shows them wrong: it
/// is rebuilt).
pub const VERSION: u32 = 2;

/// The largest xattr value kept.
const MAX_XATTR_VALUE: usize = 64 << 10;
/// The largest window a gzip point has.
const MAX_WINDOW: usize = crate::codec::gzip::WINDOW;
/// Paths are prefix-compressed, so a few bytes can stand for a long
/// path: their total is capped at this many times the input (plus
/// `PATH_SLACK`), far above any real layer's.
const PATH_RATIO: usize = 64;
const PATH_SLACK: usize = 16 << 20;

/// The most items allocated for ahead of decoding them: a count is only
/// checked against the bytes left, which may still not hold that many.
const PREALLOCATE: usize = 1 << 16;

const HEADER: usize = MAGIC.len() + 4;
const CHECKSUM: usize = 32;

const F_LINK: u8 = 1 << 3;
const F_DEVICE: u8 = 1 << 4;
const F_XATTRS: u8 = 1 << 5;
const F_SAME_OWNER: u8 = 1 << 6;
const F_DATA: u8 = 1 << 7;
/// The kind code of a file with a sparse map.
const SPARSE_FILE: u8 = 7;

// ---------------------------------------------------------------------------
// Encoding.

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn kind_code(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
        EntryKind::Symlink => 2,
        EntryKind::Hardlink => 3,
        EntryKind::CharDevice => 4,
        EntryKind::BlockDevice => 5,
        EntryKind::Fifo => 6,
    }
}

fn kind_of(code: u8) -> Option<EntryKind> {
    Some(match code {
        0 => EntryKind::File,
        1 => EntryKind::Dir,
        2 => EntryKind::Symlink,
        3 => EntryKind::Hardlink,
        4 => EntryKind::CharDevice,
        5 => EntryKind::BlockDevice,
        6 => EntryKind::Fifo,
        _ => return None,
    })
}

fn compression_code(c: Compression) -> u8 {
    match c {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Zstd => 2,
    }
}

fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Encodes `index` (whose entries and points are as the walker and the
/// indexers make them; anything else may not decode).
pub fn encode(index: &LayerIndex) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + index.entries.len() * 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let mut digest = [0u8; 32];
    // A Digest is 64 hex digits by construction.
    hex::decode_to_slice(index.digest.hex(), &mut digest).unwrap_or_default();
    out.extend_from_slice(&digest);
    put_varint(&mut out, index.size);
    out.push(compression_code(index.compression));
    put_varint(&mut out, index.uncompressed_size);

    put_varint(&mut out, index.entries.len() as u64);
    let mut prev_path: &[u8] = &[];
    let (mut prev_uid, mut prev_gid, mut prev_mtime, mut data_end) = (0u32, 0u32, 0i64, 0u64);
    for e in &index.entries {
        let mut flags = match (&e.sparse, e.kind) {
            (Some(_), EntryKind::File) => SPARSE_FILE,
            _ => kind_code(e.kind),
        };
        if !e.link.is_empty() {
            flags |= F_LINK;
        }
        if e.major != 0 || e.minor != 0 {
            flags |= F_DEVICE;
        }
        if !e.xattrs.is_empty() {
            flags |= F_XATTRS;
        }
        if (e.uid, e.gid) == (prev_uid, prev_gid) {
            flags |= F_SAME_OWNER;
        }
        if e.size != 0 || e.offset != 0 {
            flags |= F_DATA;
        }
        out.push(flags);
        let path = e.path.as_bytes();
        let shared = shared_prefix(prev_path, path);
        put_varint(&mut out, shared as u64);
        put_bytes(&mut out, &path[shared..]);
        prev_path = path;
        put_varint(&mut out, u64::from(e.mode));
        if flags & F_SAME_OWNER == 0 {
            put_varint(&mut out, u64::from(e.uid));
            put_varint(&mut out, u64::from(e.gid));
            (prev_uid, prev_gid) = (e.uid, e.gid);
        }
        put_varint(&mut out, zigzag(e.mtime.wrapping_sub(prev_mtime)));
        prev_mtime = e.mtime;
        if flags & F_DATA != 0 {
            put_varint(&mut out, e.size);
            put_varint(&mut out, zigzag(e.offset.wrapping_sub(data_end) as i64));
            data_end = e.offset.wrapping_add(e.size);
        }
        if flags & F_LINK != 0 {
            put_bytes(&mut out, e.link.as_bytes());
        }
        if flags & F_DEVICE != 0 {
            put_varint(&mut out, u64::from(e.major));
            put_varint(&mut out, u64::from(e.minor));
        }
        if flags & F_XATTRS != 0 {
            put_varint(&mut out, e.xattrs.len() as u64);
            for (name, value) in &e.xattrs {
                put_bytes(&mut out, name.as_bytes());
                put_bytes(&mut out, value);
            }
        }
        if flags & 7 == SPARSE_FILE
            && let Some(map) = &e.sparse
        {
            put_varint(&mut out, map.extents().len() as u64);
            let mut end = 0;
            for x in map.extents() {
                put_varint(&mut out, x.offset - end);
                put_varint(&mut out, x.len);
                end = x.offset + x.len;
            }
        }
    }

    put_varint(&mut out, index.problems.len() as u64);
    for p in &index.problems {
        put_bytes(&mut out, p.as_bytes());
    }

    match &index.points {
        SeekPoints::None => out.push(0),
        SeekPoints::Gzip(points) => {
            out.push(1);
            put_varint(&mut out, points.len() as u64);
            let (mut c, mut u) = (0u64, 0u64);
            for p in points {
                put_varint(&mut out, p.compressed.wrapping_sub(c));
                put_varint(&mut out, p.uncompressed.wrapping_sub(u));
                out.push(p.bits);
                put_varint(&mut out, p.window.len() as u64);
                (c, u) = (p.compressed, p.uncompressed);
            }
            let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            for p in points {
                // Writing to a Vec does not fail.
                let _ = z.write_all(&p.window);
            }
            put_bytes(&mut out, &z.finish().unwrap_or_default());
        }
        SeekPoints::Zstd(points) => {
            out.push(2);
            put_varint(&mut out, points.len() as u64);
            let (mut c, mut u) = (0u64, 0u64);
            for p in points {
                put_varint(&mut out, p.compressed.wrapping_sub(c));
                put_varint(&mut out, p.uncompressed.wrapping_sub(u));
                (c, u) = (p.compressed, p.uncompressed);
            }
        }
    }

    put_varint(&mut out, index.chunk_size);
    put_varint(&mut out, index.chunk_digests.len() as u64);
    for d in &index.chunk_digests {
        out.extend_from_slice(d);
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

// ---------------------------------------------------------------------------
// Decoding.

/// The body of an index, read from the front.
struct Body<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Body<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn at(&self, what: &str) -> String {
        format!("{what} (at byte {})", HEADER + self.pos)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| self.at(&format!("the index ends inside {what}")))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.left() {
            return Err(self.at(&format!("{what} runs past the end of the index")));
        }
        let b = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.at(&format!("{what} overflows 64 bits")))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let v = self.varint(what)?;
        u32::try_from(v).map_err(|_| self.at(&format!("{what} {v} is over 2^32")))
    }

    /// A count of items of at least `min_size` bytes each, checked against
    /// the bytes left and against `max`.
    fn count(&mut self, what: &str, min_size: usize, max: usize) -> Result<usize, String> {
        let n = self.varint(what)?;
        let fits = self.left() / min_size.max(1);
        match usize::try_from(n) {
            Ok(n) if n <= max && n <= fits => Ok(n),
            _ => Err(self.at(&format!("{what} {n} is more than the index can hold"))),
        }
    }

    /// A length-prefixed byte string of at most `max` bytes.
    fn bytes(&mut self, what: &str, max: usize) -> Result<&'a [u8], String> {
        let n = self.varint(what)?;
        match usize::try_from(n) {
            Ok(n) if n <= max => self.take(n, what),
            _ => Err(self.at(&format!("{what} of {n} bytes is longer than {max}"))),
        }
    }

    fn string(&mut self, what: &str, max: usize) -> Result<String, String> {
        let b = self.bytes(what, max)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.at(&format!("{what} is not UTF-8")))
    }
}

/// A path as the walker makes them: `/`-joined components, none empty,
/// `.` or `..`, none longer than `NAME_MAX`, no NUL.
fn normalised(path: &str) -> bool {
    path.is_empty()
        || path.split('/').all(|c| {
            !c.is_empty() && c != "." && c != ".." && c.len() <= NAME_MAX && !c.contains('\0')
        })
}

/// The start of a long string, for a message.
fn shorten(s: &str) -> &str {
    match s.char_indices().nth(100) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// Whether `bytes` are an index an older ocifs wrote (in a format before
/// this one's): not damage, only work to do again.
pub fn older(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER
        && &bytes[..MAGIC.len()] == MAGIC
        && u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) < VERSION
}

/// Decodes an index; the reason if it is not one this ocifs can use (the
/// caller then rebuilds it).
pub fn decode(bytes: &[u8]) -> Result<LayerIndex, String> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not an ocifs layer index (no OCIFSIDX magic)".into());
    }
    if bytes.len() < HEADER + CHECKSUM {
        return Err(format!("a truncated layer index ({} bytes)", bytes.len()));
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[MAGIC.len()..HEADER]);
    let version = u32::from_le_bytes(version);
    if version != VERSION {
        return Err(format!(
            "index format version {version}; this ocifs reads {VERSION}"
        ));
    }
    let (content, sum) = bytes.split_at(bytes.len() - CHECKSUM);
    if Sha256::digest(content).as_slice() != sum {
        return Err("the layer index fails its checksum (truncated or damaged)".into());
    }
    let mut b = Body {
        bytes: &content[HEADER..],
        pos: 0,
    };
    let index = body(&mut b, bytes.len())?;
    if b.left() != 0 {
        return Err(b.at(&format!("{} bytes after the index's end", b.left())));
    }
    Ok(index)
}

fn body(b: &mut Body<'_>, input_len: usize) -> Result<LayerIndex, String> {
    let digest = hex::encode(b.take(32, "the digest")?);
    let digest: Digest = format!("sha256:{digest}")
        .parse()
        .map_err(|_| "a bad digest".to_owned())?;
    let size = b.varint("the layer size")?;
    let compression = match b.u8("the compression")? {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Zstd,
        c => return Err(b.at(&format!("an unknown compression {c}"))),
    };
    let uncompressed_size = b.varint("the uncompressed size")?;

    // flags, shared length, suffix length, mode, mtime: 5 bytes at least.
    let n = b.count("the entry count", 5, MAX_LAYER_ENTRIES)?;
    let mut entries = Vec::with_capacity(n.min(PREALLOCATE));
    let mut state = EntryState {
        path_budget: input_len
            .saturating_mul(PATH_RATIO)
            .saturating_add(PATH_SLACK),
        ..EntryState::default()
    };
    for i in 0..n {
        entries.push(entry(b, &mut state).map_err(|e| format!("entry {i}: {e}"))?);
    }

    let n = b.count("the problem count", 1, usize::MAX)?;
    let mut problems = Vec::with_capacity(n.min(PREALLOCATE));
    for i in 0..n {
        problems.push(b.string(&format!("problem {i}"), usize::MAX)?);
    }

    let points = match b.u8("the seek point kind")? {
        0 => SeekPoints::None,
        1 => SeekPoints::Gzip(gzip_points(b)?),
        2 => SeekPoints::Zstd(zstd_points(b)?),
        k => return Err(b.at(&format!("an unknown seek point kind {k}"))),
    };

    let chunk_size = b.varint("the chunk size")?;
    let n = b.count("the chunk digest count", 32, usize::MAX)?;
    let mut chunk_digests = Vec::with_capacity(n.min(PREALLOCATE));
    for _ in 0..n {
        let mut d = [0u8; 32];
        d.copy_from_slice(b.take(32, "a chunk digest")?);
        chunk_digests.push(d);
    }

    Ok(LayerIndex {
        digest,
        size,
        compression,
        uncompressed_size,
        entries,
        problems,
        points,
        chunk_size,
        chunk_digests,
    })
}

/// What an entry is encoded relative to: the entry before it.
#[derive(Default)]
struct EntryState {
    path: Vec<u8>,
    uid: u32,
    gid: u32,
    mtime: i64,
    data_end: u64,
    /// Path bytes still allowed.
    path_budget: usize,
}

fn entry(b: &mut Body<'_>, prev: &mut EntryState) -> Result<TocEntry, String> {
    let flags = b.u8("flags")?;
    let sparse_file = flags & 7 == SPARSE_FILE;
    let kind = if sparse_file {
        EntryKind::File
    } else {
        kind_of(flags & 7).ok_or_else(|| b.at("an unknown kind"))?
    };
    let shared = b.varint("the path")?;
    let shared = usize::try_from(shared)
        .ok()
        .filter(|s| *s <= prev.path.len())
        .ok_or_else(|| b.at("a shared path length past the previous path"))?;
    let suffix = b.bytes("the path", PATH_MAX)?;
    let len = shared + suffix.len();
    if len > PATH_MAX {
        return Err(b.at(&format!("a path of {len} bytes, longer than {PATH_MAX}")));
    }
    prev.path_budget = prev
        .path_budget
        .checked_sub(len)
        .ok_or_else(|| b.at("the paths add up to more than an index this size can hold"))?;
    prev.path.truncate(shared);
    prev.path.extend_from_slice(suffix);
    let path = std::str::from_utf8(&prev.path).map_err(|_| b.at("a path that is not UTF-8"))?;
    if !normalised(path) {
        return Err(b.at(&format!("the path {:?} is not normalised", shorten(path))));
    }
    let path = path.to_owned();
    let mode = b.u32("the mode")?;
    if flags & F_SAME_OWNER == 0 {
        prev.uid = b.u32("the uid")?;
        prev.gid = b.u32("the gid")?;
    }
    prev.mtime = prev.mtime.wrapping_add(unzigzag(b.varint("the mtime")?));
    let (size, offset) = if flags & F_DATA != 0 {
        let size = b.varint("the size")?;
        let offset = prev
            .data_end
            .wrapping_add(unzigzag(b.varint("the offset")?) as u64);
        prev.data_end = offset.wrapping_add(size);
        (size, offset)
    } else {
        (0, 0)
    };
    let link = if flags & F_LINK != 0 {
        let link = b.string("the link", PATH_MAX)?;
        let ok = match kind {
            EntryKind::Hardlink => !link.is_empty() && normalised(&link),
            _ => !link.contains('\0'),
        };
        if !ok {
            return Err(b.at(&format!("the link {:?} is malformed", shorten(&link))));
        }
        link
    } else {
        String::new()
    };
    let (major, minor) = if flags & F_DEVICE != 0 {
        (b.u32("the major number")?, b.u32("the minor number")?)
    } else {
        (0, 0)
    };
    let xattrs = if flags & F_XATTRS != 0 {
        // A name of one byte at least and a value length: 3 bytes.
        let n = b.count("the xattr count", 3, usize::MAX)?;
        let mut xattrs = Vec::with_capacity(n);
        for _ in 0..n {
            let name = b.string("an xattr name", NAME_MAX)?;
            if name.is_empty() {
                return Err(b.at("an empty xattr name"));
            }
            let value = b.bytes("an xattr value", MAX_XATTR_VALUE)?.to_vec();
            xattrs.push((name, value));
        }
        xattrs
    } else {
        Vec::new()
    };
    let sparse = if sparse_file {
        // Two varints a range.
        let n = b.count("the sparse range count", 2, MAX_SPARSE_EXTENTS)?;
        let mut pairs = Vec::with_capacity(n.min(PREALLOCATE));
        let mut end = 0u64;
        for _ in 0..n {
            let offset = end
                .checked_add(b.varint("a sparse range")?)
                .ok_or_else(|| b.at("a sparse range past 2^64"))?;
            let len = b.varint("a sparse range")?;
            end = offset
                .checked_add(len)
                .ok_or_else(|| b.at("a sparse range past 2^64"))?;
            pairs.push((offset, len));
        }
        let map = SparseMap::new(&pairs, size).map_err(|e| b.at(&e))?;
        Some(Arc::new(map))
    } else {
        None
    };
    Ok(TocEntry {
        path,
        kind,
        mode,
        uid: prev.uid,
        gid: prev.gid,
        mtime: prev.mtime,
        size,
        offset,
        link,
        major,
        minor,
        xattrs,
        sparse,
        chunks: None,
    })
}

/// The next point's offsets: the previous ones plus deltas, which must not
/// overflow (points are in increasing order).
fn next_offsets(b: &mut Body<'_>, prev: (u64, u64), what: &str) -> Result<(u64, u64), String> {
    let c = b.varint(what)?;
    let u = b.varint(what)?;
    match (prev.0.checked_add(c), prev.1.checked_add(u)) {
        (Some(c), Some(u)) => Ok((c, u)),
        _ => Err(b.at(&format!("{what} overflows"))),
    }
}

fn gzip_points(b: &mut Body<'_>) -> Result<Vec<GzipPoint>, String> {
    // Two offsets, bits and a window length: 4 bytes at least.
    let n = b.count("the gzip point count", 4, usize::MAX)?;
    let mut points = Vec::with_capacity(n.min(PREALLOCATE));
    let mut total = 0usize;
    let mut prev = (0, 0);
    for i in 0..n {
        let (compressed, uncompressed) = next_offsets(b, prev, "a gzip point")?;
        prev = (compressed, uncompressed);
        let bits = b.u8("a gzip point")?;
        let window = b.varint("a gzip point")?;
        if bits > 7 || window > MAX_WINDOW as u64 || (bits > 0 && compressed == 0) {
            return Err(b.at(&format!("gzip point {i} is malformed")));
        }
        total += window as usize;
        points.push((compressed, bits, uncompressed, window as usize));
    }
    let deflated = b.bytes("the gzip windows", usize::MAX)?;
    // Inflate no more than the windows declare (at most 32 KiB a point,
    // and at most deflate's 1032:1 of their bytes here).
    let mut windows = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .take(total as u64 + 1)
        .read_to_end(&mut windows)
        .map_err(|e| b.at(&format!("the gzip windows do not inflate: {e}")))?;
    if windows.len() != total {
        return Err(b.at(&format!(
            "the gzip windows inflate to {}{} bytes, not the {total} their points add up to",
            windows.len().min(total),
            if windows.len() > total { "+" } else { "" }
        )));
    }
    let mut rest = &windows[..];
    Ok(points
        .into_iter()
        .map(|(compressed, bits, uncompressed, len)| {
            let (window, tail) = rest.split_at(len);
            rest = tail;
            GzipPoint {
                compressed,
                bits,
                uncompressed,
                window: window.to_vec(),
            }
        })
        .collect())
}

fn zstd_points(b: &mut Body<'_>) -> Result<Vec<FramePoint>, String> {
    let n = b.count("the zstd point count", 2, usize::MAX)?;
    let mut points = Vec::with_capacity(n.min(PREALLOCATE));
    let mut prev = (0, 0);
    for _ in 0..n {
        let (compressed, uncompressed) = next_offsets(b, prev, "a zstd point")?;
        prev = (compressed, uncompressed);
        points.push(FramePoint {
            compressed,
            uncompressed,
        });
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An index body wrapped in its header and checksum.
    fn seal(body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(body);
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "usr",
                "lib",
                "bin",
                "etc",
                "python3.12",
                "libc.so.6",
                "é"
            ])
            .prop_map(str::to_owned),
            "[a-z0-9_.é-]{1,12}".prop_filter("not . or ..", |c| c != "." && c != ".."),
        ]
    }

    fn path(min: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(component(), min..6).prop_map(|c| c.join("/"))
    }

    fn entry() -> impl Strategy<Value = TocEntry> {
        let kind = prop::sample::select(vec![
            EntryKind::File,
            EntryKind::Dir,
            EntryKind::Symlink,
            EntryKind::Hardlink,
            EntryKind::CharDevice,
            EntryKind::BlockDevice,
            EntryKind::Fifo,
        ]);
        let owner = prop_oneof![Just(0u32), Just(1000), any::<u32>()];
        let data = prop_oneof![
            Just((0u64, 0u64)),
            (0u64..1 << 20, 0u64..1 << 30),
            any::<(u64, u64)>()
        ];
        let xattrs = prop::collection::vec(
            ("[a-z.]{1,20}", prop::collection::vec(any::<u8>(), 0..40)),
            0..3,
        );
        (
            (
                path(0),
                kind,
                0u32..=0o7777,
                owner.clone(),
                owner,
                any::<i64>(),
            ),
            (data, "[^\u{0}]{1,40}", path(1), any::<(u32, u32)>(), xattrs),
            prop::option::of(prop::collection::vec((0u64..1 << 20, 1u64..1 << 20), 0..8)),
        )
            .prop_map(
                |(
                    (path, kind, mode, uid, gid, mtime),
                    ((size, offset), target, to, dev, xattrs),
                    ranges,
                )| {
                    // A file may be sparse: ranges after gaps, and a hole
                    // at the end maybe.
                    let (size, sparse) = match ranges {
                        Some(ranges) if kind == EntryKind::File => {
                            let (mut end, mut pairs) = (0u64, Vec::new());
                            for (gap, len) in ranges {
                                pairs.push((end + gap, len));
                                end += gap + len;
                            }
                            let size = end + size % 4096;
                            let map = SparseMap::new(&pairs, size).expect("a valid map");
                            (size, Some(Arc::new(map)))
                        }
                        _ => (size, None),
                    };
                    let link = match kind {
                        EntryKind::Symlink => target,
                        EntryKind::Hardlink => to,
                        _ => String::new(),
                    };
                    let device = matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice);
                    let (major, minor) = if device { dev } else { (0, 0) };
                    TocEntry {
                        path,
                        kind,
                        mode,
                        uid,
                        gid,
                        mtime,
                        size,
                        offset,
                        link,
                        major,
                        minor,
                        xattrs,
                        sparse,
                        chunks: None,
                    }
                },
            )
    }

    fn points() -> impl Strategy<Value = SeekPoints> {
        let gzip = prop::collection::vec(
            (
                1u64..1 << 40,
                0u8..8,
                0u64..1 << 40,
                prop::collection::vec(any::<u8>(), 0..300),
            ),
            0..8,
        )
        .prop_map(|deltas| {
            let (mut c, mut u) = (0, 0);
            let points = deltas
                .into_iter()
                .map(|(dc, bits, du, window)| {
                    (c, u) = (c + dc, u + du);
                    GzipPoint {
                        compressed: c,
                        bits,
                        uncompressed: u,
                        window,
                    }
                })
                .collect();
            SeekPoints::Gzip(points)
        });
        let zstd = prop::collection::vec((0u64..1 << 40, 0u64..1 << 40), 0..8).prop_map(|deltas| {
            let (mut c, mut u) = (0, 0);
            let points = deltas
                .into_iter()
                .map(|(dc, du)| {
                    (c, u) = (c + dc, u + du);
                    FramePoint {
                        compressed: c,
                        uncompressed: u,
                    }
                })
                .collect();
            SeekPoints::Zstd(points)
        });
        prop_oneof![Just(SeekPoints::None), gzip, zstd]
    }

    fn layer_index() -> impl Strategy<Value = LayerIndex> {
        let compression = prop::sample::select(vec![
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
        ]);
        (
            (
                prop::array::uniform32(any::<u8>()),
                any::<u64>(),
                compression,
                any::<u64>(),
            ),
            prop::collection::vec(entry(), 0..30),
            prop::collection::vec(".{0,60}", 0..3),
            points(),
            (
                any::<u64>(),
                prop::collection::vec(prop::array::uniform32(any::<u8>()), 0..4),
            ),
        )
            .prop_map(
                |(
                    (d, size, compression, uncompressed_size),
                    entries,
                    problems,
                    points,
                    (chunk_size, chunk_digests),
                )| {
                    LayerIndex {
                        digest: Digest::of(&d),
                        size,
                        compression,
                        uncompressed_size,
                        entries,
                        problems,
                        points,
                        chunk_size,
                        chunk_digests,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn every_index_round_trips(index in layer_index()) {
            let bytes = encode(&index);
            prop_assert_eq!(decode(&bytes), Ok(index));
        }

        #[test]
        fn hostile_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..3000)) {
            let bytes = seal(&body);
            if let Ok(index) = decode(&bytes) {
                prop_assert_eq!(decode(&encode(&index)), Ok(index));
            }
        }

        #[test]
        fn damaged_bodies_never_panic(index in layer_index(), at in any::<prop::sample::Index>(), v in any::<u8>()) {
            let bytes = encode(&index);
            let mut body = bytes[HEADER..bytes.len() - CHECKSUM].to_vec();
            let at = at.index(body.len());
            body[at] = v;
            if let Ok(again) = decode(&seal(&body)) {
                prop_assert_eq!(decode(&encode(&again)), Ok(again));
            }
        }
    }

    /// A layer as images have them: directories of many files, owned by
    /// root, of one mtime, laid out one after the other.
    fn typical(n: usize) -> LayerIndex {
        let mut entries = Vec::with_capacity(n);
        let mut offset = 1024;
        let mut i = 0;
        'outer: for pkg in 0.. {
            for dir in 0..5 {
                let base = format!("usr/lib/python3.12/site-packages/package_{pkg:04}/module{dir}");
                for (kind, path, size) in
                    std::iter::once((EntryKind::Dir, base.clone(), 0)).chain((0..20).map(|f| {
                        (
                            EntryKind::File,
                            format!("{base}/file_{f:02}.py"),
                            100 + (f * 7919 + pkg * 31) as u64 % 30_000,
                        )
                    }))
                {
                    if i == n {
                        break 'outer;
                    }
                    i += 1;
                    let is_file = kind == EntryKind::File;
                    entries.push(TocEntry {
                        path,
                        kind,
                        mode: if is_file { 0o644 } else { 0o755 },
                        uid: 0,
                        gid: 0,
                        mtime: 1_700_000_000 + (i % 3) as i64,
                        size,
                        offset: if is_file { offset } else { 0 },
                        link: String::new(),
                        major: 0,
                        minor: 0,
                        xattrs: vec![],
                        sparse: None,
                        chunks: None,
                    });
                    offset += 512 + size.div_ceil(512) * 512;
                }
            }
        }
        LayerIndex {
            digest: Digest::of(b"layer"),
            size: offset / 3,
            compression: Compression::Gzip,
            uncompressed_size: offset + 1024,
            entries,
            problems: vec![],
            points: SeekPoints::None,
            chunk_size: 0,
            chunk_digests: vec![],
        }
    }

    #[test]
    fn a_typical_index_is_small() {
        let index = typical(100_000);
        let naive: usize = index.entries.iter().map(|e| e.path.len() + 8 * 8).sum();
        let bytes = encode(&index);
        let per_entry = bytes.len() as f64 / 100_000.0;
        assert!(per_entry < 20.0, "{per_entry:.1} bytes an entry");
        assert!(bytes.len() * 5 < naive, "{} vs naive {naive}", bytes.len());
        assert_eq!(decode(&bytes).unwrap(), index);
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_fails() {
        let mut index = typical(40);
        index
            .problems
            .push("entry \"../x\": the name climbs out of the root".into());
        index.points = SeekPoints::Gzip(vec![
            GzipPoint {
                compressed: 10,
                bits: 0,
                uncompressed: 0,
                window: vec![],
            },
            GzipPoint {
                compressed: 9000,
                bits: 5,
                uncompressed: 40_000,
                window: b"window ".repeat(100),
            },
        ]);
        index.chunk_size = 1 << 20;
        index.chunk_digests = vec![[7; 32], [9; 32]];
        let bytes = encode(&index);
        assert_eq!(decode(&bytes).unwrap(), index);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "{cut}");
        }
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad).is_err(), "{bit}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn full_windows_round_trip() {
        let mut index = typical(3);
        let window: Vec<u8> = (0..MAX_WINDOW).map(|i| (i * 7 % 251) as u8).collect();
        index.points = SeekPoints::Gzip(vec![
            GzipPoint {
                compressed: 10,
                bits: 0,
                uncompressed: 0,
                window: vec![],
            },
            GzipPoint {
                compressed: 900,
                bits: 7,
                uncompressed: 1 << 22,
                window: window.clone(),
            },
            GzipPoint {
                compressed: 1900,
                bits: 1,
                uncompressed: 1 << 23,
                window,
            },
        ]);
        let bytes = encode(&index);
        assert!(bytes.len() < 2 * MAX_WINDOW, "{}", bytes.len());
        assert_eq!(decode(&bytes).unwrap(), index);
    }

    #[test]
    fn another_version_says_so() {
        let mut bytes = encode(&typical(3));
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            decode(&bytes).unwrap_err(),
            "index format version 3; this ocifs reads 2"
        );
        assert!(!older(&bytes));
        // Version 1 had no sparse files: its indexes are rebuilt, quietly.
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(decode(&bytes).is_err());
        assert!(older(&bytes));
        assert!(!older(&encode(&typical(3))));
        assert!(
            decode(b"not an index at all, but long enough")
                .unwrap_err()
                .contains("magic")
        );
        assert!(decode(b"OCIFSIDX").unwrap_err().contains("truncated"));
    }

    /// A body: digest, size, compression, uncompressed size, then `rest`.
    fn body(rest: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 32];
        b.extend_from_slice(&[5, 1, 9]);
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn lying_counts_and_lengths_are_refused_before_allocating() {
        let err = |rest: &[u8]| decode(&seal(&body(rest))).unwrap_err();
        // A billion entries, xattrs, problems.
        let e = err(&[0x80, 0x94, 0xeb, 0xdc, 0x03]);
        assert!(e.contains("entry count"), "{e}");
        let e = err(&[
            1, 0x20, 0, 1, b'a', 0, 0, 0, 0, 0x80, 0x94, 0xeb, 0xdc, 0x03,
        ]);
        assert!(e.contains("xattr count"), "{e}");
        let e = err(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(e.contains("problem count"), "{e}");
        // A path longer than PATH_MAX; one built from a shared prefix.
        let mut long = vec![1, 0, 0, 0xa0, 0x20];
        long.extend(std::iter::repeat_n(b'a', 4096));
        assert!(err(&long).contains("longer than"));
        // Overlong varints.
        let e = err(&[0xff; 11]);
        assert!(e.contains("overflows"), "{e}");
        // Not normalised, not UTF-8.
        for path in [&b".."[..], b"/etc", b"a//b", b"a/./b", b"a\0b"] {
            let mut rest = vec![1, 1, 0, path.len() as u8];
            rest.extend_from_slice(path);
            rest.extend_from_slice(&[0, 0, 0]);
            let e = err(&rest);
            assert!(e.contains("normalised"), "{e}");
        }
        assert!(err(&[1, 1, 0, 1, 0xff, 0, 0, 0]).contains("UTF-8"));
    }

    #[test]
    fn prefix_compressed_paths_cannot_blow_up() {
        // One 4000-byte path, then entries that each repeat it whole with
        // one more byte: 4 bytes of input for 4 KB of output.
        let n = 60_000usize;
        let mut rest = Vec::new();
        put_varint(&mut rest, n as u64);
        rest.extend_from_slice(&[1, 0]);
        put_varint(&mut rest, 4000);
        let long = format!("{}/", "a".repeat(199)).repeat(20);
        rest.extend_from_slice(&long.as_bytes()[..3999]);
        rest.push(b'b');
        rest.extend_from_slice(&[0, 0, 0, 0]);
        for _ in 1..n {
            rest.push(1 | F_SAME_OWNER);
            put_varint(&mut rest, 3999);
            rest.extend_from_slice(&[1, b'c', 0, 0]);
        }
        let e = decode(&seal(&body(&rest))).unwrap_err();
        assert!(e.contains("paths add up"), "{e}");
    }

    #[test]
    fn window_bombs_are_bounded() {
        // Two points declaring 1-byte windows, with 1 MB deflated in.
        let mut rest = vec![0, 0, 1, 2, 1, 0, 1, 1];
        rest.extend_from_slice(&[1, 1, 0, 1]);
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&vec![0; 1 << 20]).unwrap();
        put_bytes(&mut rest, &z.finish().unwrap());
        rest.extend_from_slice(&[0, 0]);
        let e = decode(&seal(&body(&rest))).unwrap_err();
        assert!(e.contains("inflate to 2+ bytes, not the 2"), "{e}");
        // A window over 32 KiB.
        let mut rest = vec![0, 0, 1, 1, 1, 1, 0];
        put_varint(&mut rest, MAX_WINDOW as u64 + 1);
        let e = decode(&seal(&body(&rest))).unwrap_err();
        assert!(e.contains("malformed"), "{e}");
    }
}

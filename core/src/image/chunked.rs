//! Chunked layers: eStargz (stargz-snapshotter) and zstd:chunked
//! (containers/storage). Each file's content is compressed in chunks of
//! its own (gzip members, zstd frames), and a table of contents (TOC)
//! lists every entry with where its chunks lie in the blob and the sha256
//! of each decoded. The layer descriptor names the TOC by digest (eStargz:
//! `containerd.io/snapshot/stargz/toc.digest`, of the JSON; zstd:chunked:
//! `io.github.containers.zstd-chunked.manifest-checksum`, of the compressed
//! TOC at `…manifest-position`), so the chain of digests runs reference →
//! manifest → TOC → chunk: the layer is listed from its TOC alone and each
//! chunk served once it matches its digest, in strict mode too, without a
//! first full stream of the layer.
//!
//! Everything here is parsed from bytes a registry sent before they were
//! checked, then checked: bounded reads, a refused TOC rather than a
//! panic, entries that do not make sense left out with a problem.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use crate::codec::tar::{EntryKind, TocEntry, normalize};
use crate::content::FileChunk;
use crate::digest::Digest;
use crate::manifest::Descriptor;

/// The eStargz annotation: the sha256 of the TOC's JSON.
pub const ESTARGZ_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The zstd:chunked annotations: the sha256 of the compressed TOC, and
/// `offset:length:uncompressed length:type` of it in the blob.
pub const ZSTD_CHUNKED_CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
/// See [`ZSTD_CHUNKED_CHECKSUM`].
pub const ZSTD_CHUNKED_POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
/// The names both had before containers/storage renamed them (November
/// 2022), which podman 4.3 still writes.
const ZSTD_CHUNKED_OLD: [&str; 2] = [
    "io.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-position",
];

/// The eStargz footer's length (an empty gzip member naming the TOC).
pub const ESTARGZ_FOOTER: u64 = 51;
/// The largest TOC read (compressed, and decoded): containers/storage
/// refuses more than 150 MiB too.
pub const MAX_TOC: u64 = 150 << 20;
/// The most chunks one layer's files may have.
const MAX_CHUNKS: usize = 4 << 20;

/// Which chunked format a layer is in, and where its TOC is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// eStargz: the TOC is found through the footer.
    Estargz {
        /// The sha256 of the TOC's JSON.
        toc_digest: Digest,
    },
    /// zstd:chunked: the compressed TOC's digest and place.
    ZstdChunked {
        /// The sha256 of the compressed TOC.
        checksum: Digest,
        /// Where it starts in the blob.
        offset: u64,
        /// Its compressed length.
        len: u64,
        /// Its decoded length.
        decoded_len: u64,
    },
}

/// The chunked format `layer`'s annotations declare, if any; an annotation
/// that does not parse is an error naming it.
pub fn flavour(layer: &Descriptor) -> Option<Result<Flavour, String>> {
    let a = &layer.annotations;
    if let Some(d) = a.get(ESTARGZ_TOC_DIGEST) {
        return Some(
            d.parse()
                .map(|toc_digest| Flavour::Estargz { toc_digest })
                .map_err(|_| {
                    format!("its annotation {ESTARGZ_TOC_DIGEST} is not a digest ({d:?})")
                }),
        );
    }
    let (checksum, position) = match (a.get(ZSTD_CHUNKED_CHECKSUM), a.get(ZSTD_CHUNKED_POSITION)) {
        (Some(c), Some(p)) => (c, p),
        _ => (a.get(ZSTD_CHUNKED_OLD[0])?, a.get(ZSTD_CHUNKED_OLD[1])?),
    };
    Some((|| {
        let checksum: Digest = checksum.parse().map_err(|_| {
            format!("its annotation {ZSTD_CHUNKED_CHECKSUM} is not a digest ({checksum:?})")
        })?;
        let bad = || {
            format!(
                "its annotation {ZSTD_CHUNKED_POSITION} is not offset:length:length:1 ({position:?})"
            )
        };
        let n: Vec<u64> = position
            .split(':')
            .map(|p| p.parse::<u64>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let [offset, len, decoded_len, kind] = n[..] else {
            return Err(bad());
        };
        if kind != 1 {
            return Err(format!(
                "its TOC is of type {kind}, not 1 (the only one known)"
            ));
        }
        if len > MAX_TOC || decoded_len > MAX_TOC {
            return Err(format!(
                "its TOC is {len} bytes ({decoded_len} decoded), more than the {MAX_TOC} read"
            ));
        }
        if offset.checked_add(len).is_none_or(|end| end > layer.size) {
            return Err(format!(
                "its TOC at {offset}+{len} lies past the blob's {} bytes",
                layer.size
            ));
        }
        Ok(Flavour::ZstdChunked {
            checksum,
            offset,
            len,
            decoded_len,
        })
    })())
}

/// The TOC's offset from an eStargz footer (the blob's last 51 bytes), or
/// a legacy stargz one (its last 47).
pub fn estargz_footer(tail: &[u8]) -> Result<u64, String> {
    const GZIP: [u8; 4] = [0x1f, 0x8b, 0x08, 0x04];
    let parse_hex = |hex: &[u8]| -> Result<u64, String> {
        let s = std::str::from_utf8(hex)
            .map_err(|_| "the footer's TOC offset is not hex".to_owned())?;
        u64::from_str_radix(s, 16).map_err(|_| format!("the footer's TOC offset {s:?} is not hex"))
    };
    if tail.len() >= 51 {
        let f = &tail[tail.len() - 51..];
        if f[..4] == GZIP && f[10..16] == [26, 0, b'S', b'G', 22, 0] && &f[32..38] == b"STARGZ" {
            return parse_hex(&f[16..32]);
        }
    }
    if tail.len() >= 47 {
        let f = &tail[tail.len() - 47..];
        if f[..4] == GZIP && f[10..12] == [22, 0] && &f[28..34] == b"STARGZ" {
            return parse_hex(&f[12..28]);
        }
    }
    Err("no eStargz footer at the blob's end".into())
}

/// The TOC's JSON from the bytes between the TOC offset and the footer (a
/// gzip member holding a tar of `stargz.index.json`), checked against
/// `expected`.
pub fn estargz_toc(region: &[u8], expected: &Digest) -> Result<Vec<u8>, String> {
    let mut gz = flate2::read::GzDecoder::new(region);
    let mut header = [0u8; 512];
    gz.read_exact(&mut header)
        .map_err(|e| format!("the TOC does not decode: {e}"))?;
    let name_end = header[..100].iter().position(|b| *b == 0).unwrap_or(100);
    if &header[..name_end] != b"stargz.index.json" {
        return Err(format!(
            "the TOC's tar entry is {:?}, not stargz.index.json",
            String::from_utf8_lossy(&header[..name_end])
        ));
    }
    let size_field = std::str::from_utf8(&header[124..136])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u64::from_str_radix(s, 8).ok())
        .ok_or("the TOC's tar header has no size")?;
    if size_field > MAX_TOC {
        return Err(format!(
            "the TOC is {size_field} bytes, more than the {MAX_TOC} read"
        ));
    }
    let mut json = Vec::with_capacity(size_field.min(1 << 20) as usize);
    gz.take(size_field)
        .read_to_end(&mut json)
        .map_err(|e| format!("the TOC does not decode: {e}"))?;
    if json.len() as u64 != size_field {
        return Err(format!(
            "the TOC is cut short ({} of {size_field} bytes)",
            json.len()
        ));
    }
    check(&json, expected, "the TOC's JSON")?;
    Ok(json)
}

/// The zstd:chunked TOC's JSON from its compressed bytes, checked against
/// `checksum` (of the compressed bytes) and `decoded_len`.
pub fn zstd_chunked_toc(
    compressed: &[u8],
    checksum: &Digest,
    decoded_len: u64,
) -> Result<Vec<u8>, String> {
    check(compressed, checksum, "the compressed TOC")?;
    let mut json = Vec::with_capacity(decoded_len.min(1 << 20) as usize);
    crate::codec::zstd::Zstd::new(compressed)
        .take(decoded_len + 1)
        .read_to_end(&mut json)
        .map_err(|e| format!("the TOC does not decode: {e}"))?;
    if json.len() as u64 != decoded_len {
        return Err(format!(
            "the TOC decodes to {} bytes, its annotation says {decoded_len}",
            json.len()
        ));
    }
    Ok(json)
}

fn check(bytes: &[u8], expected: &Digest, what: &str) -> Result<(), String> {
    let actual = Digest::of(bytes);
    if &actual != expected {
        return Err(format!(
            "{what} is {actual}, the layer's annotation says {expected}"
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct Toc {
    #[serde(default)]
    entries: Vec<Entry>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Entry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    size: u64,
    modtime: Option<String>,
    link_name: String,
    mode: u64,
    uid: u32,
    gid: u32,
    dev_major: u32,
    dev_minor: u32,
    xattrs: HashMap<String, String>,
    digest: String,
    offset: u64,
    end_offset: u64,
    inner_offset: u64,
    chunk_offset: u64,
    chunk_size: u64,
    chunk_digest: String,
}

/// The entries of a TOC's JSON, as a tar walk would give them, each file
/// with its chunks. `data_end` is where the chunks' compressed bytes end
/// at the latest (the TOC's offset). Entries that do not make sense are
/// left out, each with a problem; a TOC that does not parse, or has more
/// than `max_entries` entries, is an error.
pub fn entries(
    json: &[u8],
    zstd: bool,
    data_end: u64,
    max_entries: usize,
) -> Result<(Vec<TocEntry>, Vec<String>), String> {
    let toc: Toc =
        serde_json::from_slice(json).map_err(|e| format!("the TOC is not JSON of a TOC: {e}"))?;
    if toc.entries.len() > max_entries {
        return Err(format!(
            "the TOC lists {} entries, more than the {max_entries} allowed (--max-layer-entries)",
            toc.entries.len()
        ));
    }
    let raw = toc.entries;
    // eStargz: a chunk's compressed bytes end where the next entry that
    // starts a member does (or at the TOC).
    let mut next_start = vec![data_end; raw.len()];
    let mut after = data_end;
    for (i, e) in raw.iter().enumerate().rev() {
        next_start[i] = after;
        if e.offset != 0 && e.inner_offset == 0 {
            after = e.offset;
        }
    }
    let mut out: Vec<TocEntry> = Vec::new();
    let mut problems = Vec::new();
    let mut chunks_total = 0usize;
    let mut i = 0;
    while i < raw.len() {
        let e = &raw[i];
        // A file's `chunk` entries follow it.
        let mut j = i + 1;
        while j < raw.len() && raw[j].kind == "chunk" {
            j += 1;
        }
        let result = entry(
            &raw[i..j],
            &next_start[i..j],
            zstd,
            data_end,
            &mut chunks_total,
        );
        match result {
            Ok(Some(t)) => out.push(t),
            Ok(None) => {}
            Err(reason) => problems.push(format!("entry {:?}: {reason}", e.name)),
        }
        i = j;
    }
    Ok((out, problems))
}

fn sha256_field(s: &str, what: &str) -> Result<[u8; 32], String> {
    let hex = s
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("its {what} {s:?} is not a sha256 digest"))?;
    let mut d = [0u8; 32];
    hex::decode_to_slice(hex, &mut d)
        .map_err(|_| format!("its {what} {s:?} is not a sha256 digest"))?;
    Ok(d)
}

/// One entry (with its `chunk` entries, `group[1..]`).
fn entry(
    group: &[Entry],
    next_start: &[u64],
    zstd: bool,
    data_end: u64,
    chunks_total: &mut usize,
) -> Result<Option<TocEntry>, String> {
    let e = &group[0];
    let kind = match e.kind.as_str() {
        "dir" => EntryKind::Dir,
        "reg" => EntryKind::File,
        "symlink" => EntryKind::Symlink,
        "hardlink" => EntryKind::Hardlink,
        "char" => EntryKind::CharDevice,
        "block" => EntryKind::BlockDevice,
        "fifo" => EntryKind::Fifo,
        "chunk" => return Err("a chunk entry with no file before it".into()),
        other => return Err(format!("type {other:?} is not one a TOC has")),
    };
    if kind != EntryKind::File && group.len() > 1 {
        return Err("chunk entries after an entry that is not a file".into());
    }
    let path = normalize(&e.name)?;
    let link = match kind {
        EntryKind::Symlink => {
            crate::codec::names::check_target(&e.link_name)?;
            e.link_name.clone()
        }
        EntryKind::Hardlink => normalize(&e.link_name)?,
        _ => String::new(),
    };
    let mtime = match e.modtime.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => {
            let at = crate::tree::parse_rfc3339(t)
                .ok_or_else(|| format!("its modtime {t:?} is not RFC 3339"))?;
            match at.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => -(e.duration().as_secs() as i64),
            }
        }
        None => 0,
    };
    let mut xattrs = Vec::new();
    let mut names: Vec<&String> = e.xattrs.keys().collect();
    names.sort();
    for name in names {
        let value = base64::engine::general_purpose::STANDARD
            .decode(&e.xattrs[name])
            .map_err(|_| format!("its xattr {name:?} is not base64"))?;
        xattrs.push((name.clone(), value));
    }
    let size = if kind == EntryKind::File { e.size } else { 0 };
    let chunks = if kind == EntryKind::File && size > 0 {
        Some(file_chunks(
            group,
            next_start,
            zstd,
            data_end,
            chunks_total,
        )?)
    } else {
        None
    };
    Ok(Some(TocEntry {
        path,
        kind,
        mode: (e.mode & 0o7777) as u32,
        uid: e.uid,
        gid: e.gid,
        mtime,
        size,
        offset: 0,
        link,
        major: e.dev_major,
        minor: e.dev_minor,
        xattrs,
        sparse: None,
        chunks,
    }))
}

/// The chunks of a file entry and its `chunk` entries, checked to cover the
/// file back to back, each a compressed range inside the layer's data.
fn file_chunks(
    group: &[Entry],
    next_start: &[u64],
    zstd: bool,
    data_end: u64,
    chunks_total: &mut usize,
) -> Result<Arc<[FileChunk]>, String> {
    let file = &group[0];
    let size = file.size;
    let mut chunks = Vec::with_capacity(group.len());
    let mut at = 0u64;
    for (k, c) in group.iter().enumerate() {
        let offset = if k == 0 { 0 } else { c.chunk_offset };
        if offset != at {
            return Err(format!(
                "chunk {k} starts at {offset}, the one before ended at {at}"
            ));
        }
        let len = if c.chunk_size == 0 {
            size - offset
        } else {
            c.chunk_size
        };
        if len == 0 || offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(format!(
                "chunk {k} ({offset}+{len}) lies outside the file's {size} bytes"
            ));
        }
        let digest = match (c.chunk_digest.is_empty(), k) {
            (false, _) => sha256_field(&c.chunk_digest, "chunk digest")?,
            // zstd:chunked's one-chunk files give only the file's digest.
            (true, 0) if len == size => sha256_field(&file.digest, "digest")?,
            (true, _) => return Err(format!("chunk {k} has no digest")),
        };
        let start = c.offset;
        let end = if zstd {
            match group.get(k + 1) {
                Some(n) => n.offset,
                None => file.end_offset,
            }
        } else {
            next_start[k]
        };
        if start == 0 || start >= end || end > data_end {
            return Err(format!(
                "chunk {k}'s compressed bytes {start}..{end} lie outside the layer's data (0..{data_end})"
            ));
        }
        if !zstd && c.inner_offset > MAX_TOC {
            return Err(format!(
                "chunk {k}'s inner offset {} is too large",
                c.inner_offset
            ));
        }
        chunks.push(FileChunk {
            offset,
            size: len,
            start,
            end,
            inner: if zstd { 0 } else { c.inner_offset },
            digest,
        });
        at = offset + len;
    }
    if at != size {
        return Err(format!("its chunks cover {at} of its {size} bytes"));
    }
    *chunks_total += chunks.len();
    if *chunks_total > MAX_CHUNKS {
        return Err(format!(
            "the layer's files have more than {MAX_CHUNKS} chunks"
        ));
    }
    Ok(chunks.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer(offset: u64) -> Vec<u8> {
        let mut f = vec![
            0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
        ];
        f.extend_from_slice(format!("{offset:016x}STARGZ").as_bytes());
        f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(f.len(), 51);
        f
    }

    #[test]
    fn footers_of_both_generations_name_the_toc_and_junk_is_refused() {
        assert_eq!(estargz_footer(&footer(0x1234)), Ok(0x1234));
        let mut tail = vec![7u8; 100];
        tail.extend(footer(99));
        assert_eq!(estargz_footer(&tail), Ok(99));
        // Legacy stargz: 47 bytes, no SG subfield header.
        let mut legacy = vec![0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 22, 0];
        legacy.extend_from_slice(format!("{:016x}STARGZ", 77u64).as_bytes());
        legacy.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(estargz_footer(&legacy), Ok(77));
        let mut bad = footer(5);
        bad[20] = b'z';
        assert!(estargz_footer(&bad).is_err());
        assert!(estargz_footer(&[]).is_err());
        assert!(estargz_footer(&[0u8; 51]).is_err());
    }

    #[test]
    fn chunks_are_laid_out_from_the_toc_and_lies_are_left_out() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let json = serde_json::json!({"version": 1, "entries": [
            {"name": "./etc/", "type": "dir", "mode": 0o40755},
            {"name": "etc/a", "type": "reg", "size": 10, "offset": 100, "chunkDigest": d, "digest": d, "modtime": "2020-01-02T03:04:05Z", "mode": 0o644},
            {"name": "etc/big", "type": "reg", "size": 10, "offset": 200, "chunkSize": 4, "chunkDigest": d},
            {"name": "etc/big", "type": "chunk", "offset": 300, "chunkOffset": 4, "chunkDigest": d},
            {"name": "etc/link", "type": "hardlink", "linkName": "./etc/a"},
            {"name": "etc/gap", "type": "reg", "size": 10, "offset": 400, "chunkSize": 4, "chunkDigest": d},
            {"name": "etc/gap", "type": "chunk", "offset": 500, "chunkOffset": 5, "chunkDigest": d},
            {"name": "etc/past", "type": "reg", "size": 3, "offset": 5000, "chunkDigest": d},
            {"name": "../up", "type": "reg", "size": 0},
            {"name": "etc/empty", "type": "reg", "size": 0},
        ]});
        let bytes = serde_json::to_vec(&json).unwrap();
        let (entries, problems) = entries(&bytes, false, 1000, 100).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["etc", "etc/a", "etc/big", "etc/link", "etc/empty"]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        let a = entries[1].chunks.as_ref().unwrap();
        assert_eq!((a[0].start, a[0].end, a[0].size), (100, 200, 10));
        assert_eq!(entries[1].mode, 0o644);
        assert_eq!(entries[1].mtime, 1_577_934_245);
        let big = entries[2].chunks.as_ref().unwrap();
        assert_eq!(big.len(), 2);
        assert_eq!(
            (big[0].start, big[0].end, big[1].start, big[1].end),
            (200, 300, 300, 400)
        );
        assert_eq!((big[1].offset, big[1].size), (4, 6));
        assert_eq!(entries[3].link, "etc/a");
        assert!(entries[4].chunks.is_none());
        // Too many entries, or not a TOC: an error.
        assert!(super::entries(&bytes, false, 1000, 3).is_err());
        assert!(super::entries(b"[1,2]", false, 1000, 3).is_err());
    }

    #[test]
    fn zstd_chunked_ranges_end_at_the_next_chunk_or_the_end_offset() {
        let d = format!("sha256:{}", "cd".repeat(32));
        let json = serde_json::json!({"version": 1, "entries": [
            {"name": "one", "type": "reg", "size": 5, "offset": 10, "endOffset": 20, "digest": d},
            {"name": "two", "type": "reg", "size": 8, "offset": 30, "endOffset": 60, "chunkSize": 3, "chunkDigest": d},
            {"name": "two", "type": "chunk", "offset": 45, "chunkOffset": 3, "chunkSize": 5, "chunkDigest": d},
        ]});
        let bytes = serde_json::to_vec(&json).unwrap();
        let (entries, problems) = entries(&bytes, true, 100, 100).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let one = entries[0].chunks.as_ref().unwrap();
        assert_eq!((one[0].start, one[0].end), (10, 20));
        let two = entries[1].chunks.as_ref().unwrap();
        assert_eq!(
            (two[0].start, two[0].end, two[1].start, two[1].end),
            (30, 45, 45, 60)
        );
    }

    #[test]
    fn a_position_annotation_that_lies_is_refused() {
        let mut layer = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            digest: Digest::of(b"x"),
            size: 1000,
            annotations: Default::default(),
            platform: None,
            artifact_type: None,
            urls: Vec::new(),
        };
        layer
            .annotations
            .insert(ZSTD_CHUNKED_CHECKSUM.into(), Digest::of(b"t").to_string());
        for (position, ok) in [
            ("10:20:30:1", true),
            ("990:20:30:1", false),
            ("1:2:3", false),
            ("1:2:3:2", false),
            ("a:b:c:1", false),
        ] {
            layer
                .annotations
                .insert(ZSTD_CHUNKED_POSITION.into(), position.into());
            assert_eq!(flavour(&layer).unwrap().is_ok(), ok, "{position}");
        }
    }
}

//! Packages: zip and tar layers shown as directories.
//!
//! A layer that is a zip, a tar, a tar.gz or a tar.zst can be shown as the
//! directory it packs ([`crate::view::Expand`]), and an ORAS directory layer
//! (a `tar+gzip` marked `io.deis.oras.content.unpack`) always is. [`index`]
//! reads a package once, when the view is built, into [`Item`]s: the
//! entries' paths, kinds, modes and times, and for each file a
//! [`Content::Zip`] or [`Content::Tar`] that says where its bytes are.
//! [`EntryReader`] turns those into bytes when a file is read.
//!
//! - **zip**, lazily: the end-of-central-directory record (zip64 too) and the
//!   central directory are found with range reads through the [`Reader`]
//!   (rc-zip's sans-IO `ArchiveFsm`); an entry's local header and data are
//!   read only when the entry is. Stored and deflate entries; anything else
//!   (another method, encryption) is left out of the view with a problem
//!   naming the entry.
//! - **tar** (plain, gzip, zstd): the layer is streamed once through the
//!   reader and its headers walked (GNU long names, PAX). Without a seek
//!   index for gzip or zstd, reading a compressed tar's entry inflates the
//!   stream from its start up to the entry: fine for packages, which are
//!   small; a decoded entry is kept in memory for the reads that follow.
//!
//! Every read goes through the [`Reader`], so `--verify` holds as for any
//! file: strict mode checks the whole package blob before its first byte is
//! used; lazy mode reads only the central directory and the entry, and
//! checks each zip entry it decodes against its CRC-32 as well.
//!
//! Hostile packages are bounded everywhere: central directory size, entry
//! count, name length, declared versus actual sizes, compression ratio.
//! A bad entry is left out and reported ([`Index::problems`]); a package
//! that cannot be read at all is an [`Error::Archive`].

mod names;
mod stream;
mod tar;
mod zip;

pub(crate) use stream::{Bounded, StreamRead, with_stream};
pub(crate) use tar::{Zstd, decoder};

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use lru::LruCache;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, annotation};
use crate::reader::Reader;
use crate::view::Content;

/// Entries in one package, at most: refused as soon as it is known (a
/// zip's end record declares its count; a tar stops being walked there).
pub const MAX_ENTRIES: usize = 1_000_000;
/// Problems (entries left out) listed one by one; the rest are counted.
pub const MAX_PROBLEMS: usize = 1000;
/// The largest zip central directory read.
pub const MAX_CENTRAL_DIRECTORY: u64 = 64 << 20;
/// The largest ratio of an entry's (or a compressed tar's) size to its
/// compressed size: beyond it, a decompression bomb is assumed.
pub const MAX_RATIO: u64 = 1000;
/// The longest entry name, and the longest symlink target.
pub const MAX_NAME: usize = 4096;
/// Compressed entries up to this size are decoded whole on first read and
/// kept in memory; larger ones are decoded from their start on every read.
pub const DECODE_WHOLE_MAX: u64 = 128 << 20;
/// Memory for decoded entries.
pub const DECODED_BUDGET: u64 = 256 << 20;

/// How the bytes of a tar stream are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`.tar.gz`, `.tgz`).
    Gzip,
    /// zstd (`.tar.zst`).
    Zstd,
}

/// What a package layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// A zip archive.
    Zip,
    /// A tar stream.
    Tar(Compression),
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Zip => "zip",
            Format::Tar(Compression::None) => "tar",
            Format::Tar(Compression::Gzip) => "tar.gz",
            Format::Tar(Compression::Zstd) => "tar.zst",
        })
    }
}

impl Format {
    /// The format a file name says, and the name without its extension:
    /// `.zip`, `.tar`, `.tar.gz`, `.tgz`, `.tar.zst`, `.tzst` (any case).
    pub fn of_name(name: &str) -> Option<(Format, &str)> {
        const EXTENSIONS: &[(&str, Format)] = &[
            (".tar.gz", Format::Tar(Compression::Gzip)),
            (".tgz", Format::Tar(Compression::Gzip)),
            (".tar.zst", Format::Tar(Compression::Zstd)),
            (".tar.zstd", Format::Tar(Compression::Zstd)),
            (".tzst", Format::Tar(Compression::Zstd)),
            (".tar", Format::Tar(Compression::None)),
            (".zip", Format::Zip),
        ];
        EXTENSIONS.iter().find_map(|(ext, format)| {
            let cut = name.len().checked_sub(ext.len())?;
            let stem = name.get(..cut)?;
            let tail = name.get(cut..)?;
            (tail.eq_ignore_ascii_case(ext) && !stem.is_empty() && !stem.ends_with('/'))
                .then_some((*format, stem))
        })
    }
}

/// Whether `layer` is an ORAS directory: a tar+gzip marked for unpacking.
pub fn is_oras_directory(layer: &Descriptor) -> bool {
    layer
        .annotations
        .get(annotation::ORAS_UNPACK)
        .is_some_and(|v| v == "true")
        && matches!(
            layer.media_type.as_str(),
            "application/vnd.oci.image.layer.v1.tar+gzip"
                | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        )
}

/// How a package is named in messages: its title, else its digest.
pub(crate) fn package_name(blob: &Descriptor) -> String {
    blob.title()
        .map_or_else(|| blob.digest.to_string(), str::to_owned)
}

/// A file in a zip layer: where its local header is and what the central
/// directory says of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZipEntry {
    /// The zip layer (one allocation shared by all its entries).
    pub blob: Arc<Descriptor>,
    /// The entry's name in the archive.
    pub name: String,
    /// Offset of its local file header in the blob.
    pub header_offset: u64,
    /// Its size compressed, as the central directory says.
    pub compressed_size: u64,
    /// Its size, as the central directory says.
    pub size: u64,
    /// How it is compressed.
    pub method: ZipMethod,
    /// Its CRC-32, as the central directory says.
    pub crc32: u32,
}

/// The compression methods ocifs reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZipMethod {
    /// Stored as is.
    Stored,
    /// Deflate (RFC 1951).
    Deflated,
}

/// A file in a tar layer: where its bytes are in the uncompressed stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    /// The tar layer (one allocation shared by all its entries).
    pub blob: Arc<Descriptor>,
    /// The entry's name in the archive.
    pub name: String,
    /// How the stream is compressed.
    pub compression: Compression,
    /// Offset of the entry's data in the uncompressed stream.
    pub offset: u64,
    /// Its size.
    pub size: u64,
}

/// One entry of a package, as the view shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Path components from the package's directory (empty: the directory
    /// itself).
    pub path: Vec<String>,
    /// What it is.
    pub kind: ItemKind,
    /// Permission bits from the archive, if it has them.
    pub mode: Option<u32>,
    /// Modification time from the archive, if it has one.
    pub mtime: Option<SystemTime>,
}

/// The kind of an [`Item`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemKind {
    /// A directory.
    Dir,
    /// A regular file.
    File(Content),
    /// A symbolic link to this target.
    Symlink(String),
}

/// What [`index`] found in a package.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// The entries that can be shown, in archive order.
    pub items: Vec<Item>,
    /// The entries left out, each with the reason.
    pub problems: Vec<String>,
}

/// Reads the directory of package `blob` through `reader`.
///
/// Entries that cannot be shown are left out and described in
/// [`Index::problems`]; a package that cannot be read at all is an
/// [`Error::Archive`] (other errors are the reader's: network, integrity).
pub async fn index(reader: &dyn Reader, blob: &Descriptor, format: Format) -> Result<Index> {
    let index = match format {
        Format::Zip => zip::index(reader, blob).await?,
        Format::Tar(compression) => tar::index(reader, blob, compression).await?,
    };
    if index.items.len() > MAX_ENTRIES {
        return Err(archive_error(
            blob,
            None,
            format!("more than {MAX_ENTRIES} entries"),
        ));
    }
    let mut index = index;
    if index.problems.len() > MAX_PROBLEMS {
        let more = index.problems.len() - MAX_PROBLEMS;
        index.problems.truncate(MAX_PROBLEMS);
        index
            .problems
            .push(format!("and {more} more entries left out"));
    }
    Ok(index)
}

/// An [`Error::Archive`] about `blob` (and an entry of it).
pub(crate) fn archive_error(
    blob: &Descriptor,
    entry: Option<&str>,
    reason: impl Into<String>,
) -> Error {
    Error::Archive {
        package: package_name(blob),
        entry: entry.map(str::to_owned),
        reason: reason.into(),
    }
}

/// A problem line: `entry "NAME": REASON`.
pub(crate) fn problem(name: &str, reason: impl fmt::Display) -> String {
    format!("entry {name:?}: {reason}")
}

type Key = (Digest, u64);

/// Reads the files of packages ([`Content::Zip`], [`Content::Tar`]) through
/// a [`Reader`] of their blobs, keeping decoded entries in memory.
pub struct EntryReader {
    decoded: Mutex<Decoded>,
    /// One decode per entry at a time: later readers wait and find it done.
    decoding: Mutex<std::collections::HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    /// Decoders of image layers parked between reads.
    pub(crate) cursors: crate::image::Cursors,
}

struct Decoded {
    entries: LruCache<Key, Bytes>,
    used: u64,
    budget: u64,
}

impl fmt::Debug for EntryReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, used) = self
            .decoded
            .lock()
            .map_or((0, 0), |d| (d.entries.len(), d.used));
        f.debug_struct("EntryReader")
            .field("decoded_entries", &n)
            .field("decoded_bytes", &used)
            .finish()
    }
}

impl Default for EntryReader {
    fn default() -> Self {
        Self::new(DECODED_BUDGET)
    }
}

impl EntryReader {
    /// A reader keeping up to `budget` bytes of decoded entries.
    pub fn new(budget: u64) -> Self {
        EntryReader {
            decoded: Mutex::new(Decoded {
                entries: LruCache::unbounded(),
                used: 0,
                budget,
            }),
            decoding: Mutex::new(std::collections::HashMap::new()),
            cursors: crate::image::Cursors::default(),
        }
    }

    /// Bytes `offset..offset + len` of a package file (at most to its end),
    /// its blob read through `blobs`. `Content::Blob` is read as is.
    pub async fn read(
        &self,
        blobs: &dyn Reader,
        content: &Content,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        let size = content.size();
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        match content {
            Content::Blob(_) => blobs.read(content, offset, len).await,
            Content::Zip(e) => {
                if e.method == ZipMethod::Stored && e.size > DECODE_WHOLE_MAX {
                    return zip::read_stored_range(blobs, e, offset, end - offset).await;
                }
                if e.size > DECODE_WHOLE_MAX {
                    return zip::read_deflated_range(blobs, e, offset, end - offset).await;
                }
                let key = (e.blob.digest.clone(), e.header_offset);
                let whole = self
                    .whole(key, || async { zip::read_whole(blobs, e).await })
                    .await?;
                Ok(whole.slice(offset as usize..end as usize))
            }
            Content::Tar(e) => {
                if e.compression == Compression::None {
                    let blob = Content::Blob(std::sync::Arc::new((*e.blob).clone()));
                    return blobs.read(&blob, e.offset + offset, end - offset).await;
                }
                if e.size > DECODE_WHOLE_MAX {
                    return tar::read_range(blobs, e, offset, end - offset).await;
                }
                let key = (e.blob.digest.clone(), e.offset);
                let whole = self
                    .whole(key, || async { tar::read_range(blobs, e, 0, e.size).await })
                    .await?;
                Ok(whole.slice(offset as usize..end as usize))
            }
            Content::Layer(f) => crate::image::read(self, blobs, f, offset, end - offset).await,
        }
    }

    fn cached(&self, key: &Key) -> Option<Bytes> {
        self.decoded
            .lock()
            .ok()
            .and_then(|mut d| d.entries.get(key).cloned())
    }

    /// The decoded entry `key`, decoding it with `decode` if no one has.
    pub(crate) async fn whole<F, Fut>(&self, key: Key, decode: F) -> Result<Bytes>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        if let Some(b) = self.cached(&key) {
            return Ok(b);
        }
        let lock = self
            .decoding
            .lock()
            .map(|mut m| m.entry(key.clone()).or_default().clone())
            .unwrap_or_default();
        let _guard = lock.lock().await;
        if let Some(b) = self.cached(&key) {
            return Ok(b);
        }
        let result = decode().await;
        if let Ok(bytes) = &result
            && let Ok(mut d) = self.decoded.lock()
        {
            let n = bytes.len() as u64;
            if n <= d.budget {
                if let Some(old) = d.entries.put(key.clone(), bytes.clone()) {
                    d.used -= old.len() as u64;
                }
                d.used += n;
                while d.used > d.budget {
                    match d.entries.pop_lru() {
                        Some((_, old)) => d.used -= old.len() as u64,
                        None => break,
                    }
                }
            }
        }
        if let Ok(mut m) = self.decoding.lock() {
            m.remove(&key);
        }
        result
    }
}

#[cfg(test)]
mod tests;

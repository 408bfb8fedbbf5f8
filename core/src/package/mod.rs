//! Packages: zip and tar layers shown as directories (a tree builder).
//!
//! A layer that is a zip, a tar, a tar.gz or a tar.zst can be shown as the
//! directory it packs ([`crate::view::Expand`]), and an ORAS directory layer
//! (a `tar+gzip` marked `io.deis.oras.content.unpack`) always is. [`index`]
//! reads a package once, when the view is built, into [`Item`]s: the
//! entries' paths, kinds, modes and times, and for each file a
//! [`Content::Zip`] or [`Content::Tar`] that says where its bytes are.
//! [`crate::read::ContentReader`] turns those into bytes when a file is
//! read.
//!
//! - **zip**, lazily: the end-of-central-directory record (zip64 too) and the
//!   central directory are found with range reads through the [`BlobReader`]
//!   (rc-zip's sans-IO `ArchiveFsm`); an entry's local header and data are
//!   read only when the entry is. Stored and deflate entries; anything else
//!   (another method, encryption) is left out of the view with a problem
//!   naming the entry.
//! - **tar** (plain, gzip, zstd): the layer is streamed once through the
//!   blob reader and its headers walked by the one tar walker
//!   ([`crate::codec::tar`], as image layers are), recording gzip seek
//!   points or zstd frames on the way: a file from the middle of a `.tgz`
//!   is inflated from the seek point before it, not from the start.
//!
//! Every read goes through the [`BlobReader`], so `--verify` holds as for any
//! file: strict mode checks the whole package blob before its first byte is
//! used; lazy mode reads only the central directory and the entry, and
//! checks each zip entry it decodes against its CRC-32 as well.
//!
//! Hostile packages are bounded everywhere: central directory size, entry
//! count, name length, declared versus actual sizes, compression ratio.
//! A bad entry is left out and reported ([`Listing::problems`]); a package
//! that cannot be read at all is an [`crate::Error::Archive`].

mod tar;
mod zip;

pub use zip::ZipItems;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::blob::BlobReader;
use crate::codec::archive_error;
pub(crate) use crate::codec::package_name;
use crate::content::{Compression, Content};
use crate::error::Result;
use crate::manifest::{Descriptor, annotation};

/// Entries in one package, at most: refused as soon as it is known (a
/// zip's end record declares its count; a tar stops being walked there).
pub const MAX_ENTRIES: usize = 1_000_000;
/// Problems (entries left out) listed one by one; the rest are counted.
pub const MAX_PROBLEMS: usize = 1000;
/// The largest zip central directory read.
pub const MAX_CENTRAL_DIRECTORY: u64 = 64 << 20;

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

/// One entry of a package, as the view shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Its path from the package's directory, its components joined by
    /// `/` (empty: the directory itself). One string, not one a component:
    /// a million items are a million allocations, not three million.
    pub path: Box<str>,
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
#[derive(Debug, Default)]
pub struct Listing {
    /// The entries that can be shown, in archive order.
    pub items: Items,
    /// The entries left out, each with the reason.
    pub problems: Vec<String>,
}

/// The entries of a package that can be shown, in archive order: a tar's
/// as [`Item`]s, a zip's in its table ([`crate::ZipTable`]), each made
/// into an [`Item`] only as it is taken (a million entries cost the table,
/// not a million items beside the tree they go into).
#[derive(Debug)]
pub enum Items {
    /// Items, made as the archive was walked.
    List(Vec<Item>),
    /// A zip's entries.
    Zip(zip::ZipItems),
}

impl Default for Items {
    fn default() -> Self {
        Items::List(Vec::new())
    }
}

impl Items {
    /// How many there are.
    pub fn len(&self) -> usize {
        match self {
            Items::List(items) => items.len(),
            Items::Zip(z) => z.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each one, made anew.
    pub fn iter(&self) -> Box<dyn Iterator<Item = Item> + '_> {
        match self {
            Items::List(items) => Box::new(items.iter().cloned()),
            Items::Zip(z) => Box::new(z.iter()),
        }
    }
}

impl IntoIterator for Items {
    type Item = Item;
    type IntoIter = Box<dyn Iterator<Item = Item> + Send>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Items::List(items) => Box::new(items.into_iter()),
            Items::Zip(z) => Box::new(z.into_iter()),
        }
    }
}

/// Reads the directory of package `blob` through `blobs`.
///
/// Entries that cannot be shown are left out and described in
/// [`Listing::problems`]; a package that cannot be read at all is an
/// [`crate::Error::Archive`] (other errors are the blob reader's: network,
/// integrity).
pub async fn list(
    blobs: &Arc<dyn BlobReader>,
    blob: &Descriptor,
    format: Format,
) -> Result<Listing> {
    let index = match format {
        Format::Zip => zip::list(blobs, blob).await?,
        Format::Tar(compression) => tar::list(blobs, blob, compression).await?,
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

impl Item {
    /// Its path's components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').filter(|c| !c.is_empty())
    }
}

/// A path as [`Item::path`] holds it.
pub(crate) fn joined<S: AsRef<str>>(components: &[S]) -> Box<str> {
    let mut out = String::new();
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(c.as_ref());
    }
    out.into_boxed_str()
}

/// Of the entries `candidates`, those whose path another of them has too.
/// Found by sorting a keyed hash of each path and comparing the paths of
/// equal hashes: a few bytes an entry, not a copy of every path.
pub(crate) fn repeated<P: std::hash::Hash + Eq>(
    candidates: impl Iterator<Item = u32>,
    path: impl Fn(u32) -> P,
) -> Vec<u32> {
    use std::hash::BuildHasher as _;
    let hasher = std::collections::hash_map::RandomState::new();
    let mut by_path: Vec<(u64, u32)> = candidates.map(|i| (hasher.hash_one(path(i)), i)).collect();
    by_path.sort_unstable();
    let mut twice = Vec::new();
    for run in by_path.chunk_by(|a, b| a.0 == b.0).filter(|r| r.len() > 1) {
        let paths: Vec<P> = run.iter().map(|&(_, i)| path(i)).collect();
        for (k, &(_, i)) in run.iter().enumerate() {
            if paths
                .iter()
                .enumerate()
                .any(|(l, p)| l != k && *p == paths[k])
            {
                twice.push(i);
            }
        }
    }
    twice
}

/// A problem line: `entry "NAME": REASON`.
pub(crate) fn problem(name: &str, reason: impl fmt::Display) -> String {
    format!("entry {name:?}: {reason}")
}

#[cfg(test)]
mod tests;

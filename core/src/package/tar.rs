//! tar packages (plain, gzip, zstd): the stream is walked once when the
//! view is built, by the same walker as image layers, recording where
//! decoding can resume; a file is then read as a range of the stream
//! ([`Content::Tar`]), decoded from the seek point before it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::{Item, ItemKind, Listing, MAX_ENTRIES, problem};
use crate::blob::BlobReader;
use crate::codec::input::with_stream;
use crate::codec::names::check_target;
use crate::codec::tar::{EntryKind, Names, TocEntry, UNKNOWN_MODE, WalkError};
use crate::codec::{archive_error, archive_error_from, walk_stream};
use crate::content::{Compression, Content, SeekPoints, TarFile, TarStream};
use crate::error::Result;
use crate::manifest::Descriptor;

/// Walks the tar stream of `blob` into an index.
pub(super) async fn list(
    blobs: &Arc<dyn BlobReader>,
    blob: &Descriptor,
    compression: Compression,
) -> Result<Listing> {
    let b = blob.clone();
    with_stream(blobs, blob, 0..blob.size, move |r| {
        let mut items = Items::new(&b, compression);
        let walked = walk_stream(
            r,
            compression,
            b.size,
            MAX_ENTRIES,
            Names::Package,
            None,
            |entry| items.add(entry),
        )
        .map_err(|e| match e {
            WalkError::Io(e) => archive_error_from(&b, None, format!("unreadable stream: {e}"), e),
            WalkError::Bad(reason) => archive_error(&b, None, reason),
        })?;
        Ok(items.finish(walked.points, walked.len))
    })
    .await
}

/// A package's items, made as the walker finds its entries.
struct Items {
    index: Listing,
    /// Where the files are, for hard links: a hash of the path to the items
    /// of that hash (a few bytes an entry, not a copy of each path).
    files: HashMap<u64, Vec<usize>>,
    hasher: std::collections::hash_map::RandomState,
    /// The stream every file is in; its seek points are known only once
    /// the walk is done ([`Items::finish`] puts in the real one).
    placeholder: Arc<TarStream>,
}

impl Items {
    fn new(blob: &Descriptor, compression: Compression) -> Self {
        Items {
            index: Listing::default(),
            files: HashMap::new(),
            hasher: std::collections::hash_map::RandomState::new(),
            placeholder: Arc::new(TarStream {
                blob: blob.clone(),
                compression,
                uncompressed_size: 0,
                points: SeekPoints::None,
                keep_decoded: false,
            }),
        }
    }

    fn path_hash(&self, p: &[String]) -> u64 {
        use std::hash::BuildHasher as _;
        self.hasher.hash_one(p)
    }

    fn add(&mut self, entry: std::result::Result<TocEntry, String>) {
        let e = match entry {
            Ok(e) => e,
            Err(problem) => return self.index.problems.push(problem),
        };
        let components = |p: &str| -> Vec<String> {
            p.split('/')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let path = components(&e.path);
        let kind = match e.kind {
            EntryKind::File => {
                let content = Content::Tar(TarFile {
                    stream: self.placeholder.clone(),
                    offset: e.offset,
                    size: e.size,
                    sparse: e.sparse.clone(),
                });
                let h = self.path_hash(&path);
                self.files
                    .entry(h)
                    .or_default()
                    .push(self.index.items.len());
                Ok(ItemKind::File(content))
            }
            EntryKind::Dir => Ok(ItemKind::Dir),
            EntryKind::Symlink => check_target(&e.link).map(|()| ItemKind::Symlink(e.link.clone())),
            EntryKind::Hardlink => {
                let to = components(&e.link);
                let earlier = self.files.get(&self.path_hash(&to)).and_then(|candidates| {
                    candidates
                        .iter()
                        .rev()
                        .find_map(|&i| match &self.index.items[i] {
                            Item {
                                path,
                                kind: ItemKind::File(content),
                                ..
                            } if *path == to => Some(content.clone()),
                            _ => None,
                        })
                });
                earlier.map(ItemKind::File).ok_or_else(|| {
                    format!("a hard link to {:?}, which is not an earlier file", e.link)
                })
            }
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                Err("a device or FIFO (not shown)".into())
            }
        };
        match kind {
            Ok(kind) => self.index.items.push(Item {
                path,
                kind,
                mode: (e.mode != UNKNOWN_MODE).then_some(e.mode & 0o7777),
                mtime: u64::try_from(e.mtime)
                    .ok()
                    .filter(|s| *s > 0)
                    .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            }),
            Err(reason) => self.index.problems.push(problem(&e.path, reason)),
        }
    }

    /// The index, every file pointing at the stream with its seek points.
    fn finish(self, points: SeekPoints, uncompressed_size: u64) -> Listing {
        let mut index = self.index;
        let stream = Arc::new(TarStream {
            blob: self.placeholder.blob.clone(),
            compression: self.placeholder.compression,
            uncompressed_size,
            points,
            // A single-frame zstd package decodes only from its start: its
            // decoded copy is kept where the reader keeps copies.
            keep_decoded: self.placeholder.compression == Compression::Zstd,
        });
        for item in &mut index.items {
            if let ItemKind::File(Content::Tar(f)) = &mut item.kind {
                f.stream = stream.clone();
            }
        }
        dedupe(&mut index);
        index
    }
}

/// Entries that share a name (but for directories, which merge) are left
/// out, all of them: which one a reader gets would depend on the tool.
fn dedupe(index: &mut Listing) {
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

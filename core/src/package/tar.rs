//! tar packages (plain, gzip, zstd): the stream is walked once when the
//! view is built, by the same walker as image layers, recording where
//! decoding can resume; a file is then read as a range of the stream
//! ([`Content::Tar`]), decoded from the seek point before it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::{Item, ItemKind, Items, Listing, MAX_ENTRIES, joined, problem};
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
        let mut items = Walked::new(&b, compression);
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
struct Walked {
    items: Vec<Item>,
    problems: Vec<String>,
    /// Where the files are, for hard links: a hash of the path to the last
    /// item of that hash (a few bytes an entry, not a copy of each path).
    files: HashMap<u64, u32>,
    hasher: std::collections::hash_map::RandomState,
    /// The stream every file is in; its seek points are known only once
    /// the walk is done ([`Walked::finish`] puts in the real one).
    placeholder: Arc<TarStream>,
}

impl Walked {
    fn new(blob: &Descriptor, compression: Compression) -> Self {
        Walked {
            items: Vec::new(),
            problems: Vec::new(),
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

    fn path_hash(&self, p: &str) -> u64 {
        use std::hash::BuildHasher as _;
        self.hasher.hash_one(p)
    }

    fn add(&mut self, entry: std::result::Result<TocEntry, String>) {
        let e = match entry {
            Ok(e) => e,
            Err(problem) => return self.problems.push(problem),
        };
        let normal = |p: &str| -> Box<str> {
            joined(&p.split('/').filter(|c| !c.is_empty()).collect::<Vec<_>>())
        };
        let path = normal(&e.path);
        let kind = match e.kind {
            EntryKind::File => {
                let content = Content::Tar(TarFile {
                    stream: self.placeholder.clone(),
                    offset: e.offset,
                    size: e.size,
                    sparse: e.sparse.clone(),
                });
                let h = self.path_hash(&path);
                self.files.insert(h, self.items.len() as u32);
                Ok(ItemKind::File(content))
            }
            EntryKind::Dir => Ok(ItemKind::Dir),
            EntryKind::Symlink => check_target(&e.link).map(|()| ItemKind::Symlink(e.link.clone())),
            EntryKind::Hardlink => {
                let to = normal(&e.link);
                // The last file of that path (a different path of the
                // same hash is not it: the link is then refused).
                let earlier = self.files.get(&self.path_hash(&to)).and_then(|&i| {
                    match self.items.get(i as usize) {
                        Some(Item {
                            path,
                            kind: ItemKind::File(content),
                            ..
                        }) if *path == to => Some(content.clone()),
                        _ => None,
                    }
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
            Ok(kind) => self.items.push(Item {
                path,
                kind,
                mode: (e.mode != UNKNOWN_MODE).then_some(e.mode & 0o7777),
                mtime: u64::try_from(e.mtime)
                    .ok()
                    .filter(|s| *s > 0)
                    .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            }),
            Err(reason) => self.problems.push(problem(&e.path, reason)),
        }
    }

    /// The index, every file pointing at the stream with its seek points.
    fn finish(self, points: SeekPoints, uncompressed_size: u64) -> Listing {
        let mut index = Walked {
            items: self.items,
            problems: self.problems,
            ..Walked::new(&self.placeholder.blob, self.placeholder.compression)
        };
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
        Listing {
            items: Items::List(index.items),
            problems: index.problems,
        }
    }
}

/// Entries that share a name (but for directories, which merge) are left
/// out, all of them: which one a reader gets would depend on the tool.
/// Found by sorting a keyed hash of each path, then comparing the paths of
/// equal hashes (not a copy of every path).
fn dedupe(index: &mut Walked) {
    use std::hash::BuildHasher as _;
    let hasher = std::collections::hash_map::RandomState::new();
    let mut by_path: Vec<(u64, u32)> = index
        .items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.kind != ItemKind::Dir)
        .map(|(i, item)| (hasher.hash_one(&item.path), i as u32))
        .collect();
    by_path.sort_unstable();
    let mut twice = vec![false; index.items.len()];
    for run in by_path.chunk_by(|a, b| a.0 == b.0).filter(|r| r.len() > 1) {
        for &(_, i) in run {
            let path = &index.items[i as usize].path;
            twice[i as usize] = run
                .iter()
                .any(|&(_, j)| j != i && index.items[j as usize].path == *path);
        }
    }
    drop(by_path);
    if !twice.contains(&true) {
        return;
    }
    let items = std::mem::take(&mut index.items);
    for (item, twice) in items.into_iter().zip(twice) {
        if twice {
            index
                .problems
                .push(problem(&item.path, "more than one entry has this name"));
        } else {
            index.items.push(item);
        }
    }
}

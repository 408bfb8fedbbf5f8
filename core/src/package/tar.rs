//! tar packages (plain, gzip, zstd): the stream is walked once when the
//! view is built, by the same walker as image layers, recording where
//! decoding can resume; a file is then read as a range of the stream
//! ([`Content::Tar`]), decoded from the seek point before it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::{Item, ItemKind, Items, Listing, MAX_ENTRIES, joined, problem, repeated};
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
        let Walked {
            mut items,
            mut problems,
            placeholder,
            ..
        } = self;
        let stream = Arc::new(TarStream {
            blob: placeholder.blob.clone(),
            compression: placeholder.compression,
            uncompressed_size,
            points,
            // A single-frame zstd package decodes only from its start: its
            // decoded copy is kept where the reader keeps copies.
            keep_decoded: placeholder.compression == Compression::Zstd,
        });
        for item in &mut items {
            if let ItemKind::File(Content::Tar(f)) = &mut item.kind {
                f.stream = stream.clone();
            }
        }
        // Entries that share a name (but for directories, which merge) are
        // left out, all of them: which one a reader gets would depend on the
        // tool.
        let files = (0..items.len() as u32).filter(|&i| items[i as usize].kind != ItemKind::Dir);
        let mut twice = vec![false; items.len()];
        for i in repeated(files, |i| &*items[i as usize].path) {
            twice[i as usize] = true;
        }
        let mut kept = Vec::with_capacity(items.len());
        for (item, twice) in items.into_iter().zip(twice) {
            if twice {
                problems.push(problem(&item.path, "more than one entry has this name"));
            } else {
                kept.push(item);
            }
        }
        Listing {
            items: Items::List(kept),
            problems,
        }
    }
}

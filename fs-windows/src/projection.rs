//! The [`Tree`] as Windows sees it: per-directory listings in
//! `PrjFileNameCompare` order, case-insensitive path lookup, and the
//! attributes and times of each entry.
//!
//! OCI content comes from case-sensitive file systems, NTFS is not: a
//! directory may hold `README` and `readme`, which Windows cannot show
//! side by side. The rule: of names that differ only in case, the one that
//! sorts first in byte order (the [`Tree`]'s order, where uppercase comes
//! first) is shown and the others are hidden, with a warning at mount time.
//! Names Windows cannot represent at all ([`names::invalid_reason`]) are
//! hidden the same way. A hidden entry cannot be listed or opened.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ocifs_core::{Error, Ino, Kind, Result, Tree};
use ocifs_core::{Node, NodeKind};

use crate::names;

/// `FILE_ATTRIBUTE_READONLY`.
pub const FILE_ATTRIBUTE_READONLY: u32 = 0x0000_0001;
/// `FILE_ATTRIBUTE_DIRECTORY`.
pub const FILE_ATTRIBUTE_DIRECTORY: u32 = 0x0000_0010;
/// `FILE_ATTRIBUTE_ARCHIVE`: the attribute of an ordinary file.
pub const FILE_ATTRIBUTE_ARCHIVE: u32 = 0x0000_0020;

/// 100-ns intervals from 1601-01-01 (the `FILETIME` epoch) to 1970-01-01.
const FILETIME_UNIX_EPOCH: i64 = 116_444_736_000_000_000;

/// The basic information of an entry (`PRJ_FILE_BASIC_INFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BasicInfo {
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// `FILE_ATTRIBUTE_*` bits: read-only, and directory or archive.
    pub attributes: u32,
    /// Creation, last-write, change and last-access time, as a `FILETIME`.
    pub time: i64,
}

impl BasicInfo {
    /// The information of a node: everything read-only, times from its mtime.
    pub fn of(node: &Node) -> Self {
        let is_dir = node.is_dir();
        let kind = if is_dir {
            FILE_ATTRIBUTE_DIRECTORY
        } else {
            FILE_ATTRIBUTE_ARCHIVE
        };
        BasicInfo {
            is_dir,
            size: node.size(),
            attributes: FILE_ATTRIBUTE_READONLY | kind,
            time: filetime(node.mtime),
        }
    }
}

/// A time as a Windows `FILETIME`: 100-ns intervals since 1601-01-01 UTC.
/// Times before 1601 become 0 (which ProjFS would replace with "now", so
/// they are 1 instead); times past the year 30828 saturate.
pub fn filetime(t: SystemTime) -> i64 {
    let ticks = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos() / 100)
            .unwrap_or(i64::MAX)
            .saturating_add(FILETIME_UNIX_EPOCH),
        Err(before) => {
            FILETIME_UNIX_EPOCH
                - i64::try_from(before.duration().as_nanos() / 100)
                    .unwrap_or(i64::MAX)
                    .min(FILETIME_UNIX_EPOCH)
        }
    };
    ticks.max(1)
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    /// The name as stored in the artifact.
    pub name: String,
    /// The name in UTF-16, NUL-terminated, for `PrjFillDirEntryBuffer`.
    pub wide: Vec<u16>,
    /// The upcased name ([`names::key`]), which the listing is sorted by.
    pub key: Vec<u16>,
    /// The inode.
    pub ino: Ino,
    /// Its basic information.
    pub info: BasicInfo,
}

/// The entries of one directory in Windows order, without hidden names.
#[derive(Debug, Default)]
pub struct Listing {
    entries: Vec<DirEntry>,
}

impl Listing {
    /// The entries, sorted by [`names::compare`].
    pub fn entries(&self) -> &[DirEntry] {
        &self.entries
    }

    /// The entry named `name`, in any case.
    pub fn find(&self, name: &str) -> Option<&DirEntry> {
        let key = names::key(name);
        self.entries
            .binary_search_by(|e| e.key.as_slice().cmp(&key))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// Why an entry of the tree is not shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HiddenReason {
    /// Another entry has the same name but for case.
    CaseCollision {
        /// The name that is shown instead.
        shown: String,
    },
    /// Windows cannot represent the name.
    InvalidName(&'static str),
    /// A symbolic link (from a package): not projected.
    Symlink {
        /// Where it points.
        target: String,
    },
}

/// An entry of the tree that the projection does not show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hidden {
    /// The path of its directory, `/`-separated (empty for the root).
    pub dir: String,
    /// Its name.
    pub name: String,
    /// Why it is hidden.
    pub reason: HiddenReason,
}

/// A path resolved case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The inode it names.
    pub ino: Ino,
    /// The path with each component spelled as in the artifact, joined with
    /// `\`: the name to create the placeholder under.
    pub path: String,
}

/// The Windows view of a [`Tree`], built once per mount.
#[derive(Debug)]
pub struct Projection {
    tree: Arc<Tree>,
    listings: HashMap<Ino, Arc<Listing>>,
    hidden: Vec<Hidden>,
}

impl Projection {
    /// Builds every directory's listing, and logs each hidden name.
    pub fn new(tree: Arc<Tree>) -> Self {
        let mut listings = HashMap::new();
        let mut hidden = Vec::new();
        let mut dirs = vec![Tree::ROOT];
        while let Some(dir) = dirs.pop() {
            let listing = build_listing(&tree, dir, &mut hidden);
            dirs.extend(
                listing
                    .entries
                    .iter()
                    .filter(|e| e.info.is_dir)
                    .map(|e| e.ino),
            );
            listings.insert(dir, Arc::new(listing));
        }
        for h in &hidden {
            match &h.reason {
                HiddenReason::CaseCollision { shown } => tracing::warn!(
                    dir = %h.dir, name = %h.name, shown = %shown,
                    "hidden on Windows: the name differs from another only in case"
                ),
                HiddenReason::InvalidName(why) => tracing::warn!(
                    dir = %h.dir, name = %h.name, "hidden on Windows: the name has {why}"
                ),
                HiddenReason::Symlink { target } => tracing::warn!(
                    dir = %h.dir, name = %h.name, %target, "hidden on Windows: symbolic links are not projected"
                ),
            }
        }
        Projection {
            tree,
            listings,
            hidden,
        }
    }

    /// The tree.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The listing of directory `dir`.
    pub fn listing(&self, dir: Ino) -> Option<&Arc<Listing>> {
        self.listings.get(&dir)
    }

    /// The entries that are not shown, and why.
    pub fn hidden(&self) -> &[Hidden] {
        &self.hidden
    }

    /// Resolves a path relative to the root (`\`- or `/`-separated, any
    /// case). A missing name is [`Error::PathNotFound`]; a file where a
    /// directory is needed, or a `..` component, is [`Error::WrongKind`] or
    /// not found: ProjFS never sends either.
    pub fn resolve(&self, path: &str) -> Result<Resolved> {
        let mut ino = Tree::ROOT;
        let mut canonical = String::new();
        for component in names::split_path(path) {
            let Some(listing) = self.listings.get(&ino) else {
                return Err(Error::WrongKind {
                    path: path.to_owned(),
                    kind: Kind::NotDirectory,
                });
            };
            let entry = listing.find(component).ok_or_else(|| Error::PathNotFound {
                path: path.to_owned(),
            })?;
            if !canonical.is_empty() {
                canonical.push('\\');
            }
            canonical.push_str(&entry.name);
            ino = entry.ino;
        }
        Ok(Resolved {
            ino,
            path: canonical,
        })
    }

    /// The basic information of `ino`.
    pub fn info(&self, ino: Ino) -> Option<BasicInfo> {
        self.tree.node(ino).map(BasicInfo::of)
    }
}

fn build_listing(tree: &Tree, dir: Ino, hidden: &mut Vec<Hidden>) -> Listing {
    let dir_path = || tree.path_of(dir);
    let mut entries: Vec<DirEntry> = Vec::new();
    // The tree lists in byte order, so of names equal but for case the
    // first seen is the one to keep, and a stable sort keeps it first.
    for (name, ino) in tree.children(dir) {
        if let Some(why) = names::invalid_reason(name) {
            hidden.push(Hidden {
                dir: dir_path(),
                name: name.to_owned(),
                reason: HiddenReason::InvalidName(why),
            });
            continue;
        }
        let Some(node) = tree.node(ino) else { continue };
        if let NodeKind::Symlink(target) = &node.kind {
            hidden.push(Hidden {
                dir: dir_path(),
                name: name.to_owned(),
                reason: HiddenReason::Symlink {
                    target: target.clone(),
                },
            });
            continue;
        }
        entries.push(DirEntry {
            name: name.to_owned(),
            wide: names::to_wide_nul(name),
            key: names::key(name),
            ino,
            info: BasicInfo::of(node),
        });
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let mut kept: Vec<DirEntry> = Vec::with_capacity(entries.len());
    for e in entries {
        match kept.last() {
            Some(shown) if shown.key == e.key => hidden.push(Hidden {
                dir: dir_path(),
                name: e.name,
                reason: HiddenReason::CaseCollision {
                    shown: shown.name.clone(),
                },
            }),
            _ => kept.push(e),
        }
    }
    Listing { entries: kept }
}

/// The content of `ino`, if it is a regular file.
pub fn file_content(tree: &Tree, ino: Ino) -> Option<&ocifs_core::Content> {
    if let NodeKind::File(content) = &tree.node(ino)?.kind {
        Some(content)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testutil;

    fn names_of(listing: &Listing) -> Vec<&str> {
        listing.entries().iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn listings_are_in_windows_order() {
        let tree = testutil::tree(&[
            ("b.txt", b"b"),
            ("C.txt", b"c"),
            ("a.txt", b"a"),
            ("_x", b"_"),
            ("Zeta/inner", b"z"),
        ]);
        let p = Projection::new(tree);
        let root = p.listing(Tree::ROOT).unwrap();
        assert_eq!(
            names_of(root),
            vec!["a.txt", "b.txt", "C.txt", "Zeta", "_x"]
        );
        assert!(p.hidden().is_empty());
    }

    #[test]
    fn case_collisions_show_the_first_in_byte_order() {
        let tree = testutil::tree(&[
            ("readme", b"lower"),
            ("README", b"upper"),
            ("ReadMe", b"mixed"),
            ("docs/a", b"1"),
            ("DOCS", b"a file named like a directory"),
        ]);
        let p = Projection::new(tree.clone());
        let root = p.listing(Tree::ROOT).unwrap();
        // Byte order puts uppercase first: "DOCS" < "README" < "ReadMe" < "docs" < "readme".
        assert_eq!(names_of(root), vec!["DOCS", "README"]);
        let hidden: Vec<(&str, &HiddenReason)> = p
            .hidden()
            .iter()
            .map(|h| (h.name.as_str(), &h.reason))
            .collect();
        let collision = |shown: &str| HiddenReason::CaseCollision {
            shown: shown.to_owned(),
        };
        assert_eq!(
            hidden,
            vec![
                ("docs", &collision("DOCS")),
                ("ReadMe", &collision("README")),
                ("readme", &collision("README")),
            ]
        );
        // The hidden ones cannot be reached in any case; the shown one in every case.
        let shown = p.resolve("readme").unwrap();
        assert_eq!(shown.path, "README");
        assert_eq!(shown.ino, tree.resolve_path("README").unwrap());
        assert!(matches!(p.resolve("docs\\a"), Err(Error::WrongKind { .. })));
    }

    #[test]
    fn names_windows_cannot_show_are_hidden() {
        let tree = testutil::tree(&[
            ("ok.txt", b"1"),
            ("a:b", b"2"),
            ("what?", b"3"),
            ("trailing.", b"4"),
        ]);
        let p = Projection::new(tree);
        assert_eq!(names_of(p.listing(Tree::ROOT).unwrap()), vec!["ok.txt"]);
        assert_eq!(p.hidden().len(), 3);
        assert!(
            p.hidden()
                .iter()
                .all(|h| matches!(h.reason, HiddenReason::InvalidName(_)))
        );
        assert!(p.resolve("a:b").is_err());
    }

    #[test]
    fn paths_resolve_in_any_case_and_spell_the_artifact_names() {
        let tree = testutil::tree(&[("Boot/EFI/BOOTX64.efi", b"efi"), ("vmlinuz", b"k")]);
        let p = Projection::new(tree.clone());
        let r = p.resolve("boot\\efi\\bootx64.EFI").unwrap();
        assert_eq!(r.path, "Boot\\EFI\\BOOTX64.efi");
        assert_eq!(r.ino, tree.resolve_path("Boot/EFI/BOOTX64.efi").unwrap());
        assert_eq!(p.resolve("boot/efi").unwrap().path, "Boot\\EFI");
        let root = p.resolve("").unwrap();
        assert_eq!((root.ino, root.path.as_str()), (Tree::ROOT, ""));
        assert!(matches!(
            p.resolve("boot\\nope"),
            Err(Error::PathNotFound { .. })
        ));
        assert!(matches!(
            p.resolve("vmlinuz\\x"),
            Err(Error::WrongKind { .. })
        ));
        assert!(p.resolve("boot\\..\\vmlinuz").is_err());
    }

    #[test]
    fn attributes_are_read_only() {
        let tree = testutil::tree(&[("dir/file", b"12345")]);
        let p = Projection::new(tree.clone());
        let dir = p.info(tree.resolve_path("dir").unwrap()).unwrap();
        let file = p.info(tree.resolve_path("dir/file").unwrap()).unwrap();
        assert!(dir.is_dir);
        assert_eq!(dir.size, 0);
        assert_eq!(
            dir.attributes,
            FILE_ATTRIBUTE_READONLY | FILE_ATTRIBUTE_DIRECTORY
        );
        assert!(!file.is_dir);
        assert_eq!(file.size, 5);
        assert_eq!(
            file.attributes,
            FILE_ATTRIBUTE_READONLY | FILE_ATTRIBUTE_ARCHIVE
        );
        // testutil's manifest was created 2024-02-29T12:00:00Z.
        assert_eq!(file.time, 133_536_816_000_000_000);
    }

    #[test]
    fn filetimes_count_from_1601() {
        assert_eq!(filetime(UNIX_EPOCH), 116_444_736_000_000_000);
        assert_eq!(
            filetime(UNIX_EPOCH + Duration::from_secs(1_709_208_000)),
            133_536_816_000_000_000
        );
        assert_eq!(
            filetime(UNIX_EPOCH + Duration::from_nanos(250)),
            116_444_736_000_000_002
        );
        // 1601-01-01 itself, and anything before, is the smallest time ProjFS keeps.
        let y1601 = UNIX_EPOCH - Duration::from_secs(11_644_473_600);
        assert_eq!(filetime(y1601), 1);
        assert_eq!(filetime(y1601 - Duration::from_secs(86_400)), 1);
        assert_eq!(
            filetime(UNIX_EPOCH - Duration::from_secs(1)),
            116_444_736_000_000_000 - 10_000_000
        );
    }

    #[test]
    fn file_content_is_only_for_files() {
        let tree = testutil::tree(&[("d/f", b"abc")]);
        let f = tree.resolve_path("d/f").unwrap();
        assert_eq!(file_content(&tree, f).map(|c| c.size()), Some(3));
        assert!(file_content(&tree, tree.resolve_path("d").unwrap()).is_none());
        assert!(file_content(&tree, 999).is_none());
    }
}

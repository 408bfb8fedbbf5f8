//! Layers merged bottom-up into one root filesystem, as a runtime unpacks
//! them (the OCI image spec's changeset rules).
//!
//! For each layer, its whiteouts are applied first, to what the lower
//! layers made: `.wh.NAME` removes `NAME`, `.wh..wh..opq` empties its
//! directory. Then its entries are added in archive order: missing parents
//! are made (0755, root), a directory over a directory keeps the lower
//! one's entries and takes the new metadata, anything else replaces what
//! was there (a file over a directory and the reverse). Parents that are
//! symlinks are followed, inside the root, as a runtime resolving a path
//! in its rootfs would. A hard link becomes a second name for what its
//! target is at that moment (same content, mode and owner). An entry that
//! cannot be placed (a parent that is a file, a hard link to nothing or to
//! a directory) is left out with a problem naming layer and entry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::codec::tar::{EntryKind, TocEntry};
use crate::content::{ChunkedFile, ChunkedLayer, Content, TarFile, TarStream};
use crate::tree::{Children, Ino, Node, NodeKind, SpecialKind, Tree, Xattrs};

/// Symlinks followed on the way to one entry, at most (Linux's limit).
const MAX_HOPS: u32 = 40;

#[derive(Clone)]
enum Kind {
    Dir(BTreeMap<String, usize>),
    File(TarFile),
    Chunked(ChunkedFile),
    Symlink(String),
    Special(SpecialKind, u32, u32),
}

#[derive(Clone)]
struct MNode {
    kind: Kind,
    mode: u32,
    owner: (u32, u32),
    mtime: i64,
    xattrs: Option<Xattrs>,
}

/// The merge in progress: an arena of nodes, the root at 0. Removed
/// subtrees are unlinked and left behind; [`Merge::into_tree`] keeps what
/// the root reaches.
struct Merge {
    nodes: Vec<MNode>,
    problems: Vec<String>,
}

/// One layer to merge: what reading its files needs, and its entries.
#[derive(Debug)]
pub struct MergeLayer {
    /// The layer.
    pub layer: Arc<TarStream>,
    /// Its table of contents, in archive order.
    pub entries: Vec<TocEntry>,
    /// Entries its indexer already left out.
    pub problems: Vec<String>,
    /// A chunked layer's (eStargz, zstd:chunked): its entries' files are
    /// read chunk by chunk from it.
    pub chunked: Option<Arc<ChunkedLayer>>,
}

/// Merges `layers`, the bottom one first, into one tree.
pub fn merge(layers: Vec<MergeLayer>) -> Tree {
    let mut m = Merge {
        nodes: vec![MNode {
            kind: Kind::Dir(BTreeMap::new()),
            mode: 0o755,
            owner: (0, 0),
            mtime: 0,
            xattrs: None,
        }],
        problems: Vec::new(),
    };
    for l in layers {
        let name = l.layer.blob.digest.to_string();
        for p in l.problems {
            m.problems.push(format!("layer {name}: {p}; left out"));
        }
        for e in l.entries.iter().filter(|e| is_whiteout(&e.path)) {
            if let Err(reason) = m.whiteout(&e.path) {
                m.problems.push(format!(
                    "layer {name}: entry {:?}: {reason}; left out",
                    e.path
                ));
            }
        }
        for e in l.entries {
            if is_whiteout(&e.path) {
                continue;
            }
            if let Err(reason) = m.add(&l.layer, l.chunked.as_ref(), &e) {
                m.problems.push(format!(
                    "layer {name}: entry {:?}: {reason}; left out",
                    e.path
                ));
            }
        }
    }
    m.into_tree()
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", path),
    }
}

fn is_whiteout(path: &str) -> bool {
    split(path).1.starts_with(".wh.")
}

fn time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

impl Merge {
    fn children(&self, i: usize) -> Option<&BTreeMap<String, usize>> {
        match &self.nodes[i].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    fn children_mut(&mut self, i: usize) -> Option<&mut BTreeMap<String, usize>> {
        match &mut self.nodes[i].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    fn push(&mut self, node: MNode) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The directory at `path` from `start`, following symlinks (inside
    /// the root: `..` stops there, absolute targets start there); with
    /// `create`, missing directories are made.
    fn dir(
        &mut self,
        start: usize,
        path: &str,
        create: bool,
        hops: &mut u32,
    ) -> Result<usize, String> {
        let mut at = start;
        let mut trail: Vec<usize> = Vec::new();
        for c in path.split('/') {
            match c {
                "" | "." => continue,
                ".." => {
                    at = trail.pop().unwrap_or(0);
                    continue;
                }
                _ => {}
            }
            let child = self.children(at).and_then(|ch| ch.get(c).copied());
            let next = match child {
                Some(i) => match &self.nodes[i].kind {
                    Kind::Dir(_) => i,
                    Kind::Symlink(target) => {
                        *hops += 1;
                        if *hops > MAX_HOPS {
                            return Err("too many levels of symbolic links on the way".into());
                        }
                        let target = target.clone();
                        let from = if target.starts_with('/') { 0 } else { at };
                        self.dir(from, &target, create, hops)?
                    }
                    _ => return Err(format!("{c:?} on the way is not a directory")),
                },
                None if create => {
                    let i = self.push(MNode {
                        kind: Kind::Dir(BTreeMap::new()),
                        mode: 0o755,
                        owner: (0, 0),
                        mtime: 0,
                        xattrs: None,
                    });
                    if let Some(ch) = self.children_mut(at) {
                        ch.insert(c.to_owned(), i);
                    }
                    i
                }
                None => return Err(format!("{c:?} on the way does not exist")),
            };
            trail.push(at);
            at = next;
        }
        Ok(at)
    }

    fn whiteout(&mut self, path: &str) -> Result<(), String> {
        let (dir, name) = split(path);
        // Nothing below to hide: fine.
        let Ok(d) = self.dir(0, dir, false, &mut 0) else {
            return Ok(());
        };
        let Some(children) = self.children_mut(d) else {
            return Ok(());
        };
        if name == ".wh..wh..opq" {
            children.clear();
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err("a whiteout of nothing".into());
            }
            children.remove(hidden);
        }
        Ok(())
    }

    fn add(
        &mut self,
        layer: &Arc<TarStream>,
        chunked: Option<&Arc<ChunkedLayer>>,
        e: &TocEntry,
    ) -> Result<(), String> {
        let xattrs = (!e.xattrs.is_empty()).then(|| Arc::new(e.xattrs.clone()));
        if e.path.is_empty() {
            // The layer's root directory: its metadata.
            let root = &mut self.nodes[0];
            (root.mode, root.owner, root.mtime, root.xattrs) =
                (e.mode, (e.uid, e.gid), e.mtime, xattrs);
            return Ok(());
        }
        let (dir, name) = split(&e.path);
        let parent = self.dir(0, dir, true, &mut 0)?;
        let existing = self.children(parent).and_then(|c| c.get(name).copied());
        let node = match e.kind {
            EntryKind::Hardlink => {
                let (tdir, tname) = split(&e.link);
                let target = self
                    .dir(0, tdir, false, &mut 0)
                    .ok()
                    .and_then(|d| self.children(d)?.get(tname).copied())
                    .ok_or_else(|| format!("a hard link to {:?}, which does not exist", e.link))?;
                let t = self.nodes[target].clone();
                if matches!(t.kind, Kind::Dir(_)) {
                    return Err(format!("a hard link to {:?}, a directory", e.link));
                }
                if existing == Some(target) {
                    return Ok(()); // a link to itself: nothing changes
                }
                t
            }
            _ => MNode {
                kind: match e.kind {
                    EntryKind::Dir => Kind::Dir(BTreeMap::new()),
                    EntryKind::File => match (&e.chunks, chunked) {
                        (Some(chunks), Some(chunked)) => Kind::Chunked(ChunkedFile {
                            layer: chunked.clone(),
                            size: e.size,
                            chunks: chunks.clone(),
                        }),
                        _ => Kind::File(TarFile {
                            stream: layer.clone(),
                            offset: e.offset,
                            size: e.size,
                            sparse: e.sparse.clone(),
                        }),
                    },
                    EntryKind::Symlink => Kind::Symlink(e.link.clone()),
                    EntryKind::CharDevice => {
                        Kind::Special(SpecialKind::CharDevice, e.major, e.minor)
                    }
                    EntryKind::BlockDevice => {
                        Kind::Special(SpecialKind::BlockDevice, e.major, e.minor)
                    }
                    EntryKind::Fifo => Kind::Special(SpecialKind::Fifo, 0, 0),
                    EntryKind::Hardlink => unreachable!("handled above"),
                },
                mode: e.mode,
                owner: (e.uid, e.gid),
                mtime: e.mtime,
                xattrs,
            },
        };
        if let Some(i) = existing
            && matches!(self.nodes[i].kind, Kind::Dir(_))
            && matches!(node.kind, Kind::Dir(_))
        {
            // A directory over a directory: merged.
            let old = &mut self.nodes[i];
            (old.mode, old.owner, old.mtime, old.xattrs) =
                (node.mode, node.owner, node.mtime, node.xattrs);
            return Ok(());
        }
        let i = self.push(node);
        if let Some(children) = self.children_mut(parent) {
            children.insert(name.to_owned(), i);
        }
        Ok(())
    }

    /// The tree of what the root reaches, numbered breadth first.
    fn into_tree(self) -> Tree {
        let Merge { nodes, problems } = self;
        let node_of = |m: &MNode| Node::new(m.mode, time(m.mtime), Some(m.owner), m.xattrs.clone());
        let mut tree = Tree::empty(time(nodes[0].mtime), nodes[0].mode);
        *tree.node_mut(Tree::ROOT) = node_of(&nodes[0]);
        // (merge node, its inode), in the order numbered.
        let mut order: std::collections::VecDeque<(usize, Ino)> =
            std::collections::VecDeque::from([(0, Tree::ROOT)]);
        while let Some((at, ino)) = order.pop_front() {
            let Kind::Dir(children) = &nodes[at].kind else {
                continue;
            };
            for (name, &child) in children {
                let m = &nodes[child];
                let kind = match &m.kind {
                    Kind::Dir(_) => NodeKind::Dir(Children::default()),
                    Kind::File(f) => NodeKind::File(Content::Tar(f.clone())),
                    Kind::Chunked(f) => NodeKind::File(Content::Chunked(f.clone())),
                    Kind::Symlink(t) => NodeKind::Symlink(t.clone()),
                    Kind::Special(kind, major, minor) => NodeKind::Special {
                        kind: *kind,
                        major: *major,
                        minor: *minor,
                    },
                };
                let new = tree.push(ino, name, kind, &node_of(m));
                order.push_back((child, new));
            }
        }
        tree.set_rootfs(problems);
        tree.finish();
        tree
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Compression;
    use crate::manifest::Descriptor;

    fn layer(n: u8) -> Arc<TarStream> {
        Arc::new(TarStream {
            blob: Descriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                digest: crate::Digest::of(&[n]),
                size: 1,
                annotations: Default::default(),
                platform: None,
                artifact_type: None,
                urls: Vec::new(),
            },
            compression: Compression::None,
            uncompressed_size: 0,
            points: Default::default(),
            keep_decoded: false,
        })
    }

    fn entry(path: &str, kind: EntryKind) -> TocEntry {
        TocEntry {
            path: path.into(),
            kind,
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 1,
            size: 0,
            offset: 0,
            link: String::new(),
            major: 0,
            minor: 0,
            xattrs: Vec::new(),
            sparse: None,
            chunks: None,
        }
    }

    fn file(path: &str, offset: u64) -> TocEntry {
        TocEntry {
            offset,
            size: 10,
            ..entry(path, EntryKind::File)
        }
    }

    fn link(path: &str, kind: EntryKind, to: &str) -> TocEntry {
        TocEntry {
            link: to.into(),
            ..entry(path, kind)
        }
    }

    fn merged(layers: Vec<Vec<TocEntry>>) -> Tree {
        merge(
            layers
                .into_iter()
                .enumerate()
                .map(|(i, entries)| MergeLayer {
                    layer: layer(i as u8),
                    entries,
                    problems: Vec::new(),
                    chunked: None,
                })
                .collect(),
        )
    }

    /// `path kind [layer:offset | -> target]`, sorted.
    fn listing(tree: &Tree) -> Vec<String> {
        tree.walk(Tree::ROOT)
            .into_iter()
            .map(|e| {
                let ino = tree.resolve_path(&e.path).unwrap();
                let what = match &tree.node(ino).unwrap().kind {
                    NodeKind::File(Content::Tar(f)) => format!(
                        " {}:{}",
                        f.stream.blob.digest.hex().get(..4).unwrap_or_default(),
                        f.offset
                    ),
                    NodeKind::Symlink(t) => format!(" -> {t}"),
                    _ => String::new(),
                };
                format!("{} {}{what}", e.path, e.kind)
            })
            .collect()
    }

    fn layer_tag(n: u8) -> String {
        layer(n).blob.digest.hex()[..4].to_owned()
    }

    #[test]
    fn whiteouts_opaque_directories_and_replacements() {
        let base = vec![
            entry("etc", EntryKind::Dir),
            file("etc/passwd", 100),
            file("etc/gone", 200),
            entry("var", EntryKind::Dir),
            entry("var/cache", EntryKind::Dir),
            file("var/cache/a", 300),
            entry("var/cache/sub", EntryKind::Dir),
            file("var/cache/sub/b", 400),
            entry("old", EntryKind::Dir),
            file("old/x", 500),
            entry("dir-to-file", EntryKind::Dir),
            file("dir-to-file/inner", 600),
            file("file-to-dir", 700),
        ];
        let upper = vec![
            file("etc/.wh.gone", 0),
            file("var/cache/.wh..wh..opq", 0),
            file("var/cache/new", 10),
            file(".wh.old", 0),
            file("etc/passwd", 20),
            file("dir-to-file", 30),
            entry("file-to-dir", EntryKind::Dir),
            file("file-to-dir/y", 40),
        ];
        let tree = merged(vec![base, upper]);
        let (a, b) = (layer_tag(0), layer_tag(1));
        assert_eq!(
            listing(&tree),
            [
                format!("dir-to-file file {b}:30"),
                "etc dir".into(),
                format!("etc/passwd file {b}:20"),
                "file-to-dir dir".into(),
                format!("file-to-dir/y file {b}:40"),
                "var dir".into(),
                "var/cache dir".into(),
                format!("var/cache/new file {b}:10"),
            ],
            "{a}"
        );
        assert!(tree.problems().is_empty(), "{:?}", tree.problems());
    }

    #[test]
    fn an_opaque_directory_keeps_its_own_layers_entries() {
        // Whiteouts apply to lower layers only, wherever the marker is in
        // the archive.
        let tree = merged(vec![
            vec![entry("d", EntryKind::Dir), file("d/lower", 1)],
            vec![
                entry("d", EntryKind::Dir),
                file("d/upper", 2),
                file("d/.wh..wh..opq", 0),
            ],
        ]);
        let b = layer_tag(1);
        assert_eq!(
            listing(&tree),
            ["d dir".to_owned(), format!("d/upper file {b}:2")]
        );
    }

    #[test]
    fn hard_links_take_their_targets_content_and_metadata() {
        let mut suid = file("bin/su", 7);
        suid.mode = 0o4755;
        suid.uid = 0;
        let tree = merged(vec![
            vec![entry("bin", EntryKind::Dir), suid, file("bin/lower", 9)],
            vec![
                link("bin/su2", EntryKind::Hardlink, "bin/su"),
                link("bin/lower2", EntryKind::Hardlink, "bin/lower"),
                link("bin/self", EntryKind::Hardlink, "bin/self"),
                link("bin/nothing", EntryKind::Hardlink, "no/such"),
                link("bin/dir", EntryKind::Hardlink, "bin"),
                // Replacing the target afterwards leaves the link alone.
                file("bin/su", 99),
            ],
        ]);
        let a = layer_tag(0);
        let b = layer_tag(1);
        assert_eq!(
            listing(&tree),
            [
                "bin dir".to_owned(),
                format!("bin/lower file {a}:9"),
                format!("bin/lower2 file {a}:9"),
                format!("bin/su file {b}:99"),
                format!("bin/su2 file {a}:7"),
            ]
        );
        let su2 = tree.resolve_path("bin/su2").unwrap();
        assert_eq!(tree.node(su2).unwrap().mode, 0o4755);
        let problems = tree.problems().join("\n");
        for bad in ["bin/self", "bin/nothing", "bin/dir"] {
            assert!(problems.contains(bad), "{bad}: {problems}");
        }
        assert!(
            problems.contains(&layer(1).blob.digest.to_string()),
            "{problems}"
        );
    }

    #[test]
    fn parents_are_made_and_followed_through_symlinks() {
        let tree = merged(vec![
            vec![
                entry("usr", EntryKind::Dir),
                entry("usr/lib", EntryKind::Dir),
                link("lib", EntryKind::Symlink, "usr/lib"),
                link("abs", EntryKind::Symlink, "/usr/lib"),
                file("plain", 1),
            ],
            vec![
                file("lib/a.so", 2),
                file("abs/b.so", 3),
                file("made/on/the/way", 4),
                file("plain/under-a-file", 5),
            ],
        ]);
        let b = layer_tag(1);
        let l = listing(&tree);
        assert!(l.contains(&format!("usr/lib/a.so file {b}:2")), "{l:?}");
        assert!(l.contains(&format!("usr/lib/b.so file {b}:3")), "{l:?}");
        assert!(l.contains(&format!("made/on/the/way file {b}:4")), "{l:?}");
        let made = tree.resolve_path("made/on").unwrap();
        assert_eq!(tree.node(made).unwrap().mode, 0o755);
        assert!(tree.problems().join("\n").contains("plain/under-a-file"));
        // Absolute symlinks resolve inside the root filesystem.
        let ino = tree.resolve_follow("abs/b.so").unwrap();
        assert_eq!(tree.path_of(ino), "usr/lib/b.so");
    }

    #[test]
    fn a_symlink_loop_on_the_way_is_a_problem_not_a_hang() {
        let tree = merged(vec![
            vec![
                link("a", EntryKind::Symlink, "b"),
                link("b", EntryKind::Symlink, "a"),
            ],
            vec![file("a/x", 1)],
        ]);
        assert!(tree.problems().join("\n").contains("too many levels"));
    }

    #[test]
    fn devices_owners_and_xattrs_are_kept() {
        let mut null = entry("dev/null", EntryKind::CharDevice);
        (null.major, null.minor, null.mode) = (1, 3, 0o666);
        let mut f = file("home/u/f", 1);
        (f.uid, f.gid) = (1000, 100);
        f.xattrs = vec![("user.k".into(), b"v".to_vec())];
        let tree = merged(vec![vec![null, entry("run/fifo", EntryKind::Fifo), f]]);
        let e = tree.row(tree.resolve_path("dev/null").unwrap());
        assert_eq!(
            (e.kind, e.major, e.minor, e.mode),
            ("char", Some(1), Some(3), 0o666)
        );
        assert_eq!(
            tree.row(tree.resolve_path("run/fifo").unwrap()).kind,
            "fifo"
        );
        let n = tree.node(tree.resolve_path("home/u/f").unwrap()).unwrap();
        assert_eq!(n.owner, Some((1000, 100)));
        assert_eq!(
            n.xattrs.as_deref().map(Vec::as_slice),
            Some(&[("user.k".to_owned(), b"v".to_vec())][..])
        );
        assert!(tree.is_rootfs());
    }
}

//! Trees: the directory an artifact is shown as, with no I/O.
//!
//! A [`Tree`] is an immutable inode table: directories, files (each with
//! the [`Content`] that says where its bytes are), symlinks and, in
//! container images, devices and FIFOs. The tree builders
//! ([`crate::view`], [`crate::image`]) make one; the backends and the CLI
//! look paths up in it, list it and hand its files' contents to the
//! content reader. [`Tree::subtree`] re-roots a tree at one of its
//! directories.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::content::Content;
use crate::error::{Error, Kind, Result};

/// An inode number. The root is [`Tree::ROOT`].
pub type Ino = u64;

/// The kind of a node, with what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory: its entries (by name, through [`Tree::lookup`] and
    /// [`Tree::children`]).
    Dir(Children),
    /// A regular file.
    File(Content),
    /// A symbolic link (from a package) to this target, which may point
    /// anywhere: it is only shown.
    Symlink(String),
    /// A device or a FIFO of a container image: shown with its type and
    /// numbers, never opened (mounts are `nodev`).
    Special {
        /// Which.
        kind: SpecialKind,
        /// The device's major number (0 for a FIFO).
        major: u32,
        /// The device's minor number (0 for a FIFO).
        minor: u32,
    },
}

/// The kind of a [`NodeKind::Special`] node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialKind {
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A FIFO.
    Fifo,
}

/// A directory's entries: their inode numbers, sorted by name once the
/// tree is built (8 bytes an entry: the names are the nodes' own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Children(Vec<Ino>);

impl Children {
    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Extended attributes: (name, value), as the archive lists them.
pub type Xattrs = Arc<Vec<(String, Vec<u8>)>>;

/// Where a node's name is in its tree's names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Name {
    at: u32,
    len: u32,
}

/// One inode. Its name is the tree's to tell ([`Tree::name`]): the names
/// of a tree are kept together, not one allocation each.
#[derive(Clone, Debug)]
pub struct Node {
    name: Name,
    /// Its parent (the root is its own parent).
    pub parent: Ino,
    /// What it is.
    pub kind: NodeKind,
    /// Permission bits with setuid, setgid and sticky (without the
    /// file-type bits).
    pub mode: u32,
    /// Modification time.
    pub mtime: SystemTime,
    /// Owner and group, as the image says; `None` (artifacts): the user
    /// who mounts.
    pub owner: Option<(u32, u32)>,
    /// Extended attributes, as the image says.
    pub xattrs: Option<Xattrs>,
}

impl Node {
    /// A node to copy attributes from ([`Tree::push`]): a directory.
    pub(crate) fn new(
        mode: u32,
        mtime: SystemTime,
        owner: Option<(u32, u32)>,
        xattrs: Option<Xattrs>,
    ) -> Self {
        Node {
            name: Name::default(),
            parent: Tree::ROOT,
            kind: NodeKind::Dir(Children::default()),
            mode,
            mtime,
            owner,
            xattrs,
        }
    }

    /// Size in bytes (0 for directories; a symlink's is its target's length).
    pub fn size(&self) -> u64 {
        match &self.kind {
            NodeKind::File(c) => c.size(),
            NodeKind::Dir(_) => 0,
            NodeKind::Symlink(target) => target.len() as u64,
            NodeKind::Special { .. } => 0,
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir(_))
    }

    /// Whether this is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        matches!(self.kind, NodeKind::Symlink(_))
    }
}

/// An immutable tree of inodes.
///
/// What it costs matters at a million entries (a package, a root
/// filesystem): a node is about 100 bytes, its name is kept in one string
/// of all the names, and a directory holds 8 bytes an entry. While a
/// builder adds nodes, a hash table finds an entry by parent and name; at
/// [`Tree::finish`] each directory's entries are sorted by name and the
/// table is dropped, lookups then search the sorted entries.
#[derive(Clone, Debug)]
pub struct Tree {
    nodes: Vec<Node>,
    names: String,
    /// (parent, name) → inode, while the tree is being built.
    building: Option<Building>,
    pub(crate) problems: Vec<String>,
    /// A root filesystem: absolute symlinks resolve from the root.
    rootfs: bool,
}

/// The lookup table of a tree being built.
#[derive(Clone, Default)]
struct Building {
    table: hashbrown::HashTable<Ino>,
    hasher: std::collections::hash_map::RandomState,
}

impl fmt::Debug for Building {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Building")
            .field("entries", &self.table.len())
            .finish()
    }
}

impl Building {
    fn hash(&self, parent: Ino, name: &str) -> u64 {
        use std::hash::BuildHasher as _;
        self.hasher.hash_one((parent, name))
    }
}

/// The name `name` in `names`.
fn name_in(names: &str, name: Name) -> &str {
    names
        .get(name.at as usize..(name.at as usize + name.len as usize))
        .unwrap_or("")
}

/// One row of a listing, for `ls --json` and tests.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// The path from the root, `/`-separated, without a leading `/`.
    pub path: String,
    /// `file`, `dir`, `symlink`, `char`, `block` or `fifo`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// The blob, for files that are whole blobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The blob's media type, for files that are whole blobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The owner, in an image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The group, in an image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// A device's major number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major: Option<u32>,
    /// A device's minor number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor: Option<u32>,
}

impl Tree {
    /// The root's inode number.
    pub const ROOT: Ino = 1;

    pub(crate) fn empty(mtime: SystemTime, dir_mode: u32) -> Self {
        Tree {
            nodes: vec![Node {
                name: Name::default(),
                parent: Self::ROOT,
                kind: NodeKind::Dir(Children::default()),
                mode: dir_mode,
                mtime,
                owner: None,
                xattrs: None,
            }],
            names: String::new(),
            building: Some(Building::default()),
            problems: Vec::new(),
            rootfs: false,
        }
    }

    /// Marks this tree a container image's root filesystem.
    pub(crate) fn set_rootfs(&mut self, problems: Vec<String>) {
        self.rootfs = true;
        self.problems = problems;
    }

    /// Ends the building: each directory's entries sorted by name, the
    /// lookup table dropped. Every builder calls it before it hands the
    /// tree out; it may be called again.
    pub(crate) fn finish(&mut self) {
        if self.building.take().is_none() {
            return;
        }
        let Tree { nodes, names, .. } = self;
        for i in 0..nodes.len() {
            let mut entries = match &mut nodes[i].kind {
                NodeKind::Dir(Children(entries)) => std::mem::take(entries),
                _ => continue,
            };
            entries.sort_by(|&a, &b| {
                let name = |ino: Ino| name_in(names, nodes[(ino - 1) as usize].name);
                name(a).cmp(name(b))
            });
            entries.shrink_to_fit();
            nodes[i].kind = NodeKind::Dir(Children(entries));
        }
        nodes.shrink_to_fit();
        names.shrink_to_fit();
    }

    /// Whether this is a container image's root filesystem.
    pub fn is_rootfs(&self) -> bool {
        self.rootfs
    }

    /// What could not be shown, one line each: left-out package entries,
    /// packages shown as files.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The view of directory `path` alone, as the root of a tree of its
    /// own (`ocifs mount --root`). Symlinks on the way are followed.
    pub fn subtree(&self, path: &str) -> Result<Tree> {
        let top = self.resolve_follow(path)?;
        let Some(root) = self.node(top).filter(|n| n.is_dir()) else {
            return Err(Error::WrongKind {
                path: path.to_owned(),
                kind: Kind::NotDirectory,
            });
        };
        let mut tree = Tree::empty(root.mtime, root.mode);
        let new_root = tree.node_mut(Self::ROOT);
        new_root.owner = root.owner;
        new_root.xattrs = root.xattrs.clone();
        // Breadth first, the new root first: (old inode, its new parent).
        let mut order: std::collections::VecDeque<(Ino, Ino)> = self
            .children(top)
            .map(|(_, child)| (child, Self::ROOT))
            .collect();
        while let Some((old, parent)) = order.pop_front() {
            let Some(n) = self.node(old) else {
                continue;
            };
            let kind = match &n.kind {
                NodeKind::Dir(_) => NodeKind::Dir(Children::default()),
                other => other.clone(),
            };
            let ino = tree.push(parent, self.name(old), kind, n);
            order.extend(self.children(old).map(|(_, child)| (child, ino)));
        }
        tree.problems = self.problems.clone();
        tree.rootfs = self.rootfs;
        tree.finish();
        Ok(tree)
    }

    /// Adds a node under `parent`, named `name`, with `like`'s attributes
    /// and `kind`, not looking for another entry of that name (the caller
    /// knows there is none): its inode number. The parent's entries are in
    /// the order of adding until [`Tree::finish`].
    pub(crate) fn push(&mut self, parent: Ino, name: &str, kind: NodeKind, like: &Node) -> Ino {
        let ino = self.nodes.len() as Ino + 1;
        let name = self.add_name(name);
        if let NodeKind::Dir(Children(entries)) = &mut self.node_mut(parent).kind {
            entries.push(ino);
        }
        self.nodes.push(Node {
            name,
            parent,
            kind,
            mode: like.mode,
            mtime: like.mtime,
            owner: like.owner,
            xattrs: like.xattrs.clone(),
        });
        let Tree {
            nodes,
            names,
            building,
            ..
        } = self;
        if let Some(b) = building {
            let hash = b.hash(parent, name_in(names, name));
            let Building { table, hasher } = b;
            table.insert_unique(hash, ino, |&i| {
                use std::hash::BuildHasher as _;
                let n = &nodes[(i - 1) as usize];
                hasher.hash_one((n.parent, name_in(names, n.name)))
            });
        }
        ino
    }

    fn add_name(&mut self, name: &str) -> Name {
        let at = self.names.len();
        self.names.push_str(name);
        // Names are at most 255 bytes, and 4 GiB of them is far past any
        // limit on entries: the offsets fit, else the name reads as empty.
        Name {
            at: u32::try_from(at).unwrap_or(u32::MAX),
            len: name.len() as u32,
        }
    }

    /// Makes room for `additional` more nodes (a package whose entries
    /// are about to be added), so that the table and the node list do not
    /// grow by steps, each step holding the old beside the new.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.nodes.reserve(additional);
        let Tree {
            nodes,
            names,
            building,
            ..
        } = self;
        if let Some(Building { table, hasher }) = building {
            table.reserve(additional, |&i| {
                use std::hash::BuildHasher as _;
                let n = &nodes[(i - 1) as usize];
                hasher.hash_one((n.parent, name_in(names, n.name)))
            });
        }
    }

    /// The name of `ino` in its parent (empty for the root).
    pub fn name(&self, ino: Ino) -> &str {
        self.node(ino).map_or("", |n| name_in(&self.names, n.name))
    }

    pub(crate) fn insert(
        &mut self,
        parent: Ino,
        name: &str,
        kind: NodeKind,
        mode: u32,
        mtime: SystemTime,
    ) -> Result<Ino, String> {
        if !self.node(parent).is_some_and(Node::is_dir) {
            return Err("a parent path is a file".into());
        }
        if self.lookup(parent, name).is_some() {
            return Err(format!("another layer already has the name {name:?}"));
        }
        let like = Node {
            name: Name::default(),
            parent,
            kind: NodeKind::Dir(Children::default()),
            mode,
            mtime,
            owner: None,
            xattrs: None,
        };
        Ok(self.push(parent, name, kind, &like))
    }

    pub(crate) fn ensure_dir(
        &mut self,
        parent: Ino,
        name: &str,
        mtime: SystemTime,
        mode: u32,
    ) -> Result<Ino, String> {
        match self.lookup(parent, name) {
            Some(ino) if self.node(ino).is_some_and(Node::is_dir) => Ok(ino),
            Some(_) => Err(format!("{name:?} is both a file and a directory")),
            None => self.insert(
                parent,
                name,
                NodeKind::Dir(Children::default()),
                mode,
                mtime,
            ),
        }
    }

    pub(crate) fn node_mut(&mut self, ino: Ino) -> &mut Node {
        &mut self.nodes[(ino - 1) as usize]
    }

    /// The node of `ino`.
    pub fn node(&self, ino: Ino) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    /// The entry `name` of directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &str) -> Option<Ino> {
        let NodeKind::Dir(Children(entries)) = &self.node(parent)?.kind else {
            return None;
        };
        match &self.building {
            Some(b) => b
                .table
                .find(b.hash(parent, name), |&i| {
                    self.node(i)
                        .is_some_and(|n| n.parent == parent && name_in(&self.names, n.name) == name)
                })
                .copied(),
            None => entries
                .binary_search_by(|&i| self.name(i).cmp(name))
                .ok()
                .map(|at| entries[at]),
        }
    }

    /// The entries of directory `ino`, sorted by name.
    pub fn children(&self, ino: Ino) -> impl Iterator<Item = (&str, Ino)> {
        let entries: &[Ino] = match self.node(ino).map(|n| &n.kind) {
            Some(NodeKind::Dir(Children(c))) => c,
            _ => &[],
        };
        entries.iter().map(move |&i| (self.name(i), i))
    }

    /// The number of inodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree holds only its root.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// The inode at `path` (`/`-separated, leading `/` optional; `""` and
    /// `/` are the root). Symlinks on the way are followed; a symlink at the
    /// end is not (it is the inode returned).
    pub fn resolve_path(&self, path: &str) -> Result<Ino> {
        self.resolve_from(Self::ROOT, path, false, &mut 0, path)
    }

    /// Like [`Tree::resolve_path`], but a symlink at the end is followed too.
    /// Only relative targets that stay in the view can be.
    pub fn resolve_follow(&self, path: &str) -> Result<Ino> {
        self.resolve_from(Self::ROOT, path, true, &mut 0, path)
    }

    fn resolve_from(
        &self,
        start: Ino,
        path: &str,
        follow_last: bool,
        hops: &mut u32,
        asked: &str,
    ) -> Result<Ino> {
        let components: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let mut ino = start;
        for (i, c) in components.iter().enumerate() {
            if *c == ".." {
                ino = self.node(ino).map_or(Self::ROOT, |n| n.parent);
                continue;
            }
            if !self.node(ino).is_some_and(Node::is_dir) {
                return Err(Error::WrongKind {
                    path: asked.to_owned(),
                    kind: Kind::NotDirectory,
                });
            }
            let child = self.lookup(ino, c).ok_or_else(|| Error::PathNotFound {
                path: asked.to_owned(),
            })?;
            let last = i + 1 == components.len();
            match self.node(child).map(|n| &n.kind) {
                Some(NodeKind::Symlink(target)) if !last || follow_last => {
                    *hops += 1;
                    if *hops > 40 {
                        return Err(Error::WrongKind {
                            path: asked.to_owned(),
                            kind: Kind::SymlinkLoop,
                        });
                    }
                    if target.starts_with('/') && self.rootfs {
                        ino = self.resolve_from(Self::ROOT, target, true, hops, asked)?;
                        continue;
                    }
                    if target.starts_with('/') {
                        return Err(Error::WrongKind {
                            path: asked.to_owned(),
                            kind: Kind::AbsoluteSymlink,
                        });
                    }
                    ino = self.resolve_from(ino, target, true, hops, asked)?;
                }
                _ => ino = child,
            }
        }
        Ok(ino)
    }

    /// The path of `ino` from the root, without a leading `/`.
    pub fn path_of(&self, mut ino: Ino) -> String {
        let mut parts = Vec::new();
        while ino != Self::ROOT {
            let Some(n) = self.node(ino) else { break };
            parts.push(name_in(&self.names, n.name));
            ino = n.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Every entry under `ino` (not `ino` itself), depth first, sorted.
    pub fn walk(&self, ino: Ino) -> Vec<Row> {
        let mut out = Vec::new();
        let mut stack: Vec<Ino> = self.children(ino).map(|(_, i)| i).collect();
        stack.reverse();
        while let Some(i) = stack.pop() {
            out.push(self.row(i));
            let mut kids: Vec<Ino> = self.children(i).map(|(_, c)| c).collect();
            kids.reverse();
            stack.extend(kids);
        }
        out
    }

    /// The listing row of `ino`.
    pub fn row(&self, ino: Ino) -> Row {
        let Some(n) = self.node(ino) else {
            return Row {
                path: String::new(),
                kind: "dir",
                size: 0,
                mode: 0,
                digest: None,
                media_type: None,
                target: None,
                uid: None,
                gid: None,
                major: None,
                minor: None,
            };
        };
        let mut numbers = None;
        let (kind, digest, media_type, target) = match &n.kind {
            NodeKind::Dir(_) => ("dir", None, None, None),
            NodeKind::File(Content::Blob(d)) => (
                "file",
                Some(d.digest.to_string()),
                Some(d.media_type.clone()),
                None,
            ),
            NodeKind::File(_) => ("file", None, None, None),
            NodeKind::Symlink(t) => ("symlink", None, None, Some(t.clone())),
            NodeKind::Special { kind, major, minor } => {
                if *kind != SpecialKind::Fifo {
                    numbers = Some((*major, *minor));
                }
                let name = match kind {
                    SpecialKind::CharDevice => "char",
                    SpecialKind::BlockDevice => "block",
                    SpecialKind::Fifo => "fifo",
                };
                (name, None, None, None)
            }
        };
        Row {
            path: self.path_of(ino),
            kind,
            size: n.size(),
            mode: n.mode,
            digest,
            media_type,
            target,
            uid: n.owner.map(|o| o.0),
            gid: n.owner.map(|o| o.1),
            major: numbers.map(|d| d.0),
            minor: numbers.map(|d| d.1),
        }
    }
}

/// Formats a time as `YYYY-MM-DD HH:MM` in UTC, for listings.
pub fn format_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Parses an RFC 3339 timestamp (`2024-01-02T03:04:05.5+01:00`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut n: u32 = 0;
        for (i, c) in frac[..digits].bytes().enumerate().take(9) {
            n += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
        }
        nanos = n;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .map(|t| t + Duration::from_nanos(u64::from(nanos)))
    }
}

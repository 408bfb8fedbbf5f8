//! Views: the directory tree an artifact is shown as.
//!
//! A [`Tree`] is an immutable inode table built once from a manifest. In an
//! ORAS artifact each layer titled with `org.opencontainers.image.title` is a
//! file of that name (a `/` in a title makes directories); a layer without a
//! title is shown as `sha256-<hex>` rather than hidden. Titles that could
//! escape the root, clash or cannot be names fail the build, naming the layer.
//!
//! [`Tree::build`] also shows packages as directories, reading them through
//! a [`Reader`] ([`crate::archive`]): an ORAS directory layer always, and
//! with [`Expand`] a zip or tar layer as a directory named by its title
//! without the extension, holding the package's files (with their modes,
//! times and symlinks). Entries that cannot be shown are left out and listed
//! in [`Tree::problems`]; a package that cannot be read at all stays a file,
//! with a problem saying why. [`Tree::subtree`] re-roots a view at one of
//! its directories.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::archive::{self, Compression, Format, Item, ItemKind, TarEntry, ZipEntry};
use crate::error::{Error, Result};
use crate::image::LayerFile;
use crate::manifest::{Descriptor, Manifest, annotation};
use crate::reader::Reader;

/// An inode number. The root is [`Tree::ROOT`].
pub type Ino = u64;

/// What a file's bytes are.
// `Blob` is the common case and matched on everywhere, so it stays unboxed;
// package entries share their (larger) records through an `Arc`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A whole blob.
    Blob(Arc<Descriptor>),
    /// An entry of a zip layer: its local header and data are read when
    /// it is.
    Zip(Arc<ZipEntry>),
    /// An entry of a tar layer (plain, gzip or zstd).
    Tar(Arc<TarEntry>),
    /// A file of a container image's root filesystem: a range of one
    /// layer's uncompressed tar stream.
    Layer(LayerFile),
}

impl Content {
    /// The file size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Content::Blob(d) => d.size,
            Content::Zip(e) => e.size,
            Content::Tar(e) => e.size,
            Content::Layer(f) => f.size,
        }
    }

    /// The blob the bytes are in (for a package entry, the package's).
    pub fn blob(&self) -> &Descriptor {
        match self {
            Content::Blob(d) => d,
            Content::Zip(e) => &e.blob,
            Content::Tar(e) => &e.blob,
            Content::Layer(f) => &f.layer.blob,
        }
    }
}

/// The kind of a node, with what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory: its entries by name.
    Dir(BTreeMap<String, Ino>),
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

/// Extended attributes: (name, value), as the archive lists them.
pub type Xattrs = Arc<Vec<(String, Vec<u8>)>>;

/// One inode.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its name in its parent (empty for the root).
    pub name: String,
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

/// Which zip and tar layers are shown as directories.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expand {
    /// None (ORAS directory layers still are).
    #[default]
    Off,
    /// Each one whose title ends in `.zip`, `.tar`, `.tar.gz`, `.tgz` or
    /// `.tar.zst`, beside the archive file itself.
    Keep,
    /// The same, in place of the archive file.
    Replace,
}

impl std::str::FromStr for Expand {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "keep" => Ok(Expand::Keep),
            "replace" => Ok(Expand::Replace),
            "off" | "no" => Ok(Expand::Off),
            other => Err(format!("unknown expand mode {other:?} (keep or replace)")),
        }
    }
}

/// How to build a view.
#[derive(Clone, Copy, Debug)]
pub struct ViewOptions {
    /// Mode of files that carry none of their own (ORAS files).
    pub file_mode: u32,
    /// Mode of directories that carry none of their own.
    pub dir_mode: u32,
    /// Which packages are shown as directories ([`Tree::build`] only).
    pub expand: Expand,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            file_mode: 0o444,
            dir_mode: 0o555,
            expand: Expand::Off,
        }
    }
}

/// An immutable tree of inodes.
#[derive(Clone, Debug)]
pub struct Tree {
    nodes: Vec<Node>,
    problems: Vec<String>,
    /// A root filesystem: absolute symlinks resolve from the root.
    rootfs: bool,
}

/// One row of a listing, for `ls --json` and tests.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
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

/// How a package layer is shown.
enum Shape {
    /// An ORAS directory: its tar holds the directory itself, named as the
    /// title's last component.
    Oras,
    /// An archive shown as a directory, beside its file or not.
    Archive { keep_file: bool },
}

impl Tree {
    /// The root's inode number.
    pub const ROOT: Ino = 1;

    fn empty(mtime: SystemTime, dir_mode: u32) -> Self {
        Tree {
            nodes: vec![Node {
                name: String::new(),
                parent: Self::ROOT,
                kind: NodeKind::Dir(BTreeMap::new()),
                mode: dir_mode,
                mtime,
                owner: None,
                xattrs: None,
            }],
            problems: Vec::new(),
            rootfs: false,
        }
    }

    /// A tree of `nodes` (the root first; inode numbers are positions from
    /// 1; every directory's children are nodes of the tree).
    pub(crate) fn from_nodes(nodes: Vec<Node>, problems: Vec<String>, rootfs: bool) -> Self {
        Tree {
            nodes,
            problems,
            rootfs,
        }
    }

    /// Whether this is a container image's root filesystem.
    pub fn is_rootfs(&self) -> bool {
        self.rootfs
    }

    /// Builds the view of an artifact manifest without reading any blob:
    /// one file per layer (no package is shown as a directory; see
    /// [`Tree::build`]).
    pub fn from_artifact(manifest: &Manifest, options: &ViewOptions) -> Result<Self> {
        let mtime = manifest_time(manifest);
        let mut tree = Tree::empty(mtime, options.dir_mode);
        for layer in &manifest.layers {
            let components = layer_components(layer)?;
            tree.add_layer_file(layer, &components, options, mtime)?;
        }
        Ok(tree)
    }

    /// Builds the view of an artifact manifest, reading the packages it
    /// shows as directories through `reader`: ORAS directory layers always,
    /// zip and tar layers as `options.expand` says.
    ///
    /// An entry that cannot be shown is left out, and a package that cannot
    /// be read at all is shown as its file; both are listed in
    /// [`Tree::problems`]. Errors of the reader itself (network, integrity,
    /// offline) fail the build.
    pub async fn build(
        manifest: &Manifest,
        options: &ViewOptions,
        reader: &dyn Reader,
    ) -> Result<Self> {
        Self::build_toward(manifest, options, reader, "").await
    }

    /// Like [`Tree::build`], for a view that will be used only at or under
    /// `path` (`--root`, the file `cat` writes): only the packages on the
    /// way to `path` or under it are read; the others are shown as empty
    /// directories. With `""` every package is read.
    pub async fn build_toward(
        manifest: &Manifest,
        options: &ViewOptions,
        reader: &dyn Reader,
        path: &str,
    ) -> Result<Self> {
        let toward: Option<Vec<&str>> = {
            let c: Vec<&str> = path
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            // `..` could lead anywhere: read everything.
            (!c.contains(&"..")).then_some(c)
        };
        let wanted = |dir: &[String]| {
            toward
                .as_ref()
                .is_none_or(|t| dir.iter().zip(t.iter()).all(|(a, b)| a == b))
        };
        let mtime = manifest_time(manifest);
        let mut tree = Tree::empty(mtime, options.dir_mode);
        for layer in &manifest.layers {
            let components = layer_components(layer)?;
            let Some((format, dir, shape)) = package_plan(layer, &components, options) else {
                tree.add_layer_file(layer, &components, options, mtime)?;
                continue;
            };
            if !wanted(&dir) {
                if let Shape::Archive { keep_file: true } = shape {
                    tree.add_layer_file(layer, &components, options, mtime)?;
                }
                let index = archive::Index::default();
                tree.add_package(layer, &dir, &shape, index, options, mtime)?;
                continue;
            }
            match archive::index(reader, layer, format).await {
                Ok(index) => {
                    if let Shape::Archive { keep_file: true } = shape {
                        tree.add_layer_file(layer, &components, options, mtime)?;
                    }
                    tree.add_package(layer, &dir, &shape, index, options, mtime)?;
                }
                Err(e @ Error::Archive { .. }) => {
                    tracing::debug!(digest = %layer.digest, "{e}");
                    tree.problems.push(format!("{e}; shown as a file"));
                    tree.add_layer_file(layer, &components, options, mtime)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(tree)
    }

    /// What could not be shown, one line each: left-out package entries,
    /// packages shown as files.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    fn add_layer_file(
        &mut self,
        layer: &Descriptor,
        components: &[String],
        options: &ViewOptions,
        mtime: SystemTime,
    ) -> Result<()> {
        let bad = |reason: &str| invalid_title(layer, reason);
        let (name, dirs) = components.split_last().ok_or_else(|| bad("empty"))?;
        let mut parent = Self::ROOT;
        for dir in dirs {
            parent = self
                .ensure_dir(parent, dir, mtime, options.dir_mode)
                .map_err(|r| bad(&r))?;
        }
        self.insert(
            parent,
            name,
            NodeKind::File(Content::Blob(std::sync::Arc::new(layer.clone()))),
            options.file_mode,
            mtime,
        )
        .map_err(|r| bad(&r))?;
        Ok(())
    }

    /// Adds the directory `dir` of package `layer` with the entries of `index`.
    fn add_package(
        &mut self,
        layer: &Descriptor,
        dir: &[String],
        shape: &Shape,
        index: archive::Index,
        options: &ViewOptions,
        mtime: SystemTime,
    ) -> Result<()> {
        let bad = |reason: &str| invalid_title(layer, reason);
        let (name, parents) = dir.split_last().ok_or_else(|| bad("empty"))?;
        let mut parent = Self::ROOT;
        for d in parents {
            parent = self
                .ensure_dir(parent, d, mtime, options.dir_mode)
                .map_err(|r| bad(&r))?;
        }
        let root = self
            .insert(
                parent,
                name,
                NodeKind::Dir(BTreeMap::new()),
                options.dir_mode,
                mtime,
            )
            .map_err(|r| bad(&r))?;
        let package = archive::package_name(layer);
        for p in index.problems {
            self.problems
                .push(format!("package {package}: {p}; left out"));
        }
        for item in index.items {
            let Item {
                mut path,
                kind,
                mode,
                mtime: item_mtime,
            } = item;
            if let Shape::Oras = shape {
                // The tar holds the directory itself: `name/…`.
                if path.first() != Some(name) {
                    self.problems.push(format!(
                        "package {package}: entry {:?}: outside the directory {name:?} the layer is titled; left out",
                        path.join("/")
                    ));
                    continue;
                }
                path.remove(0);
            }
            if let Err(reason) = self.add_item(root, &path, kind, mode, item_mtime, options, mtime)
            {
                self.problems.push(format!(
                    "package {package}: entry {:?}: {reason}; left out",
                    path.join("/")
                ));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn add_item(
        &mut self,
        root: Ino,
        path: &[String],
        kind: ItemKind,
        mode: Option<u32>,
        item_mtime: Option<SystemTime>,
        options: &ViewOptions,
        mtime: SystemTime,
    ) -> Result<(), String> {
        let Some((leaf, dirs)) = path.split_last() else {
            // The package's directory itself.
            return match kind {
                ItemKind::Dir => {
                    self.set_meta(root, mode, item_mtime);
                    Ok(())
                }
                _ => Err("a file where the package's directory is".into()),
            };
        };
        let mut at = root;
        for d in dirs {
            at = self.ensure_dir(at, d, mtime, options.dir_mode)?;
        }
        let taken =
            |_| "another entry already has this name, or a parent path is a file".to_owned();
        match kind {
            ItemKind::Dir => {
                let ino = self.ensure_dir(at, leaf, mtime, options.dir_mode)?;
                self.set_meta(ino, mode, item_mtime);
            }
            ItemKind::File(content) => {
                self.insert(
                    at,
                    leaf,
                    NodeKind::File(content),
                    mode.unwrap_or(options.file_mode),
                    item_mtime.unwrap_or(mtime),
                )
                .map_err(taken)?;
            }
            ItemKind::Symlink(target) => {
                self.insert(
                    at,
                    leaf,
                    NodeKind::Symlink(target),
                    0o777,
                    item_mtime.unwrap_or(mtime),
                )
                .map_err(taken)?;
            }
        }
        Ok(())
    }

    fn set_meta(&mut self, ino: Ino, mode: Option<u32>, mtime: Option<SystemTime>) {
        let node = self.node_mut(ino);
        if let Some(m) = mode {
            node.mode = m;
        }
        if let Some(t) = mtime {
            node.mtime = t;
        }
    }

    /// The view of directory `path` alone, as the root of a tree of its
    /// own (`ocifs mount --root`). Symlinks on the way are followed.
    pub fn subtree(&self, path: &str) -> Result<Tree> {
        let top = self.resolve_follow(path)?;
        if !self.node(top).is_some_and(Node::is_dir) {
            return Err(Error::WrongKind {
                path: path.to_owned(),
                reason: "not a directory",
            });
        }
        // Number the kept nodes breadth first, the new root first.
        let mut order = vec![top];
        let mut renumber: HashMap<Ino, Ino> = HashMap::from([(top, Self::ROOT)]);
        let mut i = 0;
        while i < order.len() {
            let ino = order[i];
            for (_, child) in self.children(ino) {
                renumber.insert(child, order.len() as Ino + 1);
                order.push(child);
            }
            i += 1;
        }
        let nodes = order
            .iter()
            .filter_map(|&old| {
                let n = self.node(old)?;
                let mut node = n.clone();
                if old == top {
                    node.name = String::new();
                    node.parent = Self::ROOT;
                } else {
                    node.parent = renumber.get(&n.parent).copied().unwrap_or(Self::ROOT);
                }
                if let NodeKind::Dir(children) = &mut node.kind {
                    for ino in children.values_mut() {
                        *ino = renumber.get(ino).copied().unwrap_or(Self::ROOT);
                    }
                }
                Some(node)
            })
            .collect();
        Ok(Tree {
            nodes,
            problems: self.problems.clone(),
            rootfs: self.rootfs,
        })
    }

    fn insert(
        &mut self,
        parent: Ino,
        name: &str,
        kind: NodeKind,
        mode: u32,
        mtime: SystemTime,
    ) -> Result<Ino, String> {
        let ino = self.nodes.len() as Ino + 1;
        let NodeKind::Dir(children) = &mut self.node_mut(parent).kind else {
            return Err("a parent path is a file".into());
        };
        if children.contains_key(name) {
            return Err(format!("another layer already has the name {name:?}"));
        }
        children.insert(name.to_owned(), ino);
        self.nodes.push(Node {
            name: name.to_owned(),
            parent,
            kind,
            mode,
            mtime,
            owner: None,
            xattrs: None,
        });
        Ok(ino)
    }

    fn ensure_dir(
        &mut self,
        parent: Ino,
        name: &str,
        mtime: SystemTime,
        mode: u32,
    ) -> Result<Ino, String> {
        match self.lookup(parent, name) {
            Some(ino) if self.node(ino).is_some_and(Node::is_dir) => Ok(ino),
            Some(_) => Err(format!("{name:?} is both a file and a directory")),
            None => self.insert(parent, name, NodeKind::Dir(BTreeMap::new()), mode, mtime),
        }
    }

    fn node_mut(&mut self, ino: Ino) -> &mut Node {
        &mut self.nodes[(ino - 1) as usize]
    }

    /// The node of `ino`.
    pub fn node(&self, ino: Ino) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    /// The entry `name` of directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &str) -> Option<Ino> {
        match &self.node(parent)?.kind {
            NodeKind::Dir(children) => children.get(name).copied(),
            _ => None,
        }
    }

    /// The entries of directory `ino`, sorted by name.
    pub fn children(&self, ino: Ino) -> impl Iterator<Item = (&str, Ino)> {
        let children = match self.node(ino).map(|n| &n.kind) {
            Some(NodeKind::Dir(c)) => Some(c),
            _ => None,
        };
        children
            .into_iter()
            .flat_map(|c| c.iter().map(|(k, v)| (k.as_str(), *v)))
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
                    reason: "not a directory",
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
                            reason: "too many levels of symbolic links",
                        });
                    }
                    if target.starts_with('/') && self.rootfs {
                        ino = self.resolve_from(Self::ROOT, target, true, hops, asked)?;
                        continue;
                    }
                    if target.starts_with('/') {
                        return Err(Error::WrongKind {
                            path: asked.to_owned(),
                            reason: "a symbolic link to an absolute path, outside the artifact",
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
            parts.push(n.name.as_str());
            ino = n.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Every entry under `ino` (not `ino` itself), depth first, sorted.
    pub fn walk(&self, ino: Ino) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut stack: Vec<Ino> = self.children(ino).map(|(_, i)| i).collect();
        stack.reverse();
        while let Some(i) = stack.pop() {
            out.push(self.entry(i));
            let mut kids: Vec<Ino> = self.children(i).map(|(_, c)| c).collect();
            kids.reverse();
            stack.extend(kids);
        }
        out
    }

    /// The listing row of `ino`.
    pub fn entry(&self, ino: Ino) -> Entry {
        let Some(n) = self.node(ino) else {
            return Entry {
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
        Entry {
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

fn manifest_time(manifest: &Manifest) -> SystemTime {
    manifest
        .annotations
        .get(annotation::CREATED)
        .and_then(|s| parse_rfc3339(s))
        .unwrap_or(UNIX_EPOCH)
}

fn invalid_title(layer: &Descriptor, reason: &str) -> Error {
    Error::InvalidTitle {
        digest: layer.digest.to_string(),
        title: layer.title().unwrap_or_default().to_owned(),
        reason: reason.to_owned(),
    }
}

/// A layer's path in the view: its title's components, else `sha256-<hex>`.
fn layer_components(layer: &Descriptor) -> Result<Vec<String>> {
    match layer.title() {
        Some(title) => title_components(title).map_err(|r| invalid_title(layer, &r)),
        None => Ok(vec![format!("sha256-{}", layer.digest.hex())]),
    }
}

/// Whether `layer` is shown as a directory, and if so how and where.
fn package_plan(
    layer: &Descriptor,
    components: &[String],
    options: &ViewOptions,
) -> Option<(Format, Vec<String>, Shape)> {
    layer.title()?;
    if archive::is_oras_directory(layer) {
        return Some((
            Format::Tar(Compression::Gzip),
            components.to_vec(),
            Shape::Oras,
        ));
    }
    if options.expand == Expand::Off {
        return None;
    }
    let (last, parents) = components.split_last()?;
    let (format, stem) = Format::of_name(last)?;
    let mut dir = parents.to_vec();
    dir.push(stem.to_owned());
    Some((
        format,
        dir,
        Shape::Archive {
            keep_file: options.expand == Expand::Keep,
        },
    ))
}

/// Splits a title into path components, refusing anything that is not a
/// plain relative path: absolute paths, `..`, empty components, NUL,
/// backslashes (a separator on Windows) and over-long names.
fn title_components(title: &str) -> Result<Vec<String>, String> {
    if title.is_empty() {
        return Err("empty title".into());
    }
    if title.contains('\0') {
        return Err("NUL in title".into());
    }
    if title.starts_with('/') {
        return Err("absolute path".into());
    }
    if title.contains('\\') {
        return Err("backslash in title (a path separator on Windows)".into());
    }
    if title.len() > 4096 {
        return Err("longer than 4096 bytes".into());
    }
    let parts: Vec<&str> = title.trim_end_matches('/').split('/').collect();
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p {
            "" => return Err("empty path component".into()),
            "." | ".." => return Err(format!("{p:?} path component")),
            p if p.len() > 255 => return Err("a path component is longer than 255 bytes".into()),
            p => out.push(p.to_owned()),
        }
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::manifest::media_type;

    fn layer(title: Option<&str>, body: &[u8]) -> Descriptor {
        let mut annotations = BTreeMap::new();
        if let Some(t) = title {
            annotations.insert(annotation::TITLE.to_owned(), t.to_owned());
        }
        Descriptor {
            media_type: "application/octet-stream".into(),
            digest: Digest::of(body),
            size: body.len() as u64,
            annotations,
            platform: None,
            artifact_type: None,
            urls: vec![],
        }
    }

    fn manifest(layers: Vec<Descriptor>) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.into()),
            artifact_type: None,
            config: layer(None, b"{}"),
            layers,
            annotations: BTreeMap::from([(
                annotation::CREATED.to_owned(),
                "2024-02-29T12:00:00Z".to_owned(),
            )]),
        }
    }

    #[test]
    fn titled_layers_become_files_and_dirs() {
        let m = manifest(vec![
            layer(Some("vmlinuz"), b"k"),
            layer(Some("boot/initrd.img"), b"ii"),
            layer(None, b"raw"),
        ]);
        let t = Tree::from_artifact(&m, &ViewOptions::default()).unwrap();
        let paths: Vec<(String, &str, u64)> = t
            .walk(Tree::ROOT)
            .into_iter()
            .map(|e| (e.path, e.kind, e.size))
            .collect();
        let raw = format!("sha256-{}", Digest::of(b"raw").hex());
        assert_eq!(
            paths,
            vec![
                ("boot".to_owned(), "dir", 0),
                ("boot/initrd.img".to_owned(), "file", 2),
                (raw, "file", 3),
                ("vmlinuz".to_owned(), "file", 1),
            ]
        );
        let ino = t.resolve_path("/boot/initrd.img").unwrap();
        assert_eq!(t.path_of(ino), "boot/initrd.img");
        assert_eq!(t.node(ino).unwrap().mode, 0o444);
        assert_eq!(
            t.node(ino).unwrap().mtime,
            UNIX_EPOCH + Duration::from_secs(1_709_208_000)
        );
        assert!(matches!(
            t.resolve_path("vmlinuz/x"),
            Err(Error::WrongKind { .. })
        ));
        assert!(matches!(
            t.resolve_path("nope"),
            Err(Error::PathNotFound { .. })
        ));
    }

    #[test]
    fn hostile_titles_fail_naming_the_layer() {
        for (titles, want) in [
            (vec!["../etc/passwd"], "\"..\""),
            (vec!["/etc/passwd"], "absolute"),
            (vec![""], "empty"),
            (vec!["a\0b"], "NUL"),
            (vec!["a//b"], "empty path component"),
            (vec!["..\\x"], "backslash"),
            (vec!["same", "same"], "already"),
            (vec!["d/x", "d"], "already"),
            (vec!["f", "f/x"], "file"),
        ] {
            let layers: Vec<Descriptor> = titles
                .iter()
                .enumerate()
                .map(|(i, t)| layer(Some(t), &[i as u8]))
                .collect();
            let err = Tree::from_artifact(&manifest(layers.clone()), &ViewOptions::default())
                .unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(want), "{titles:?}: {msg}");
            assert!(
                layers.iter().any(|l| msg.contains(&l.digest.to_string())),
                "{msg}"
            );
        }
    }

    fn zip_package() -> Vec<u8> {
        use crate::testutil::{RawEntry, RawZip};
        let mut z = RawZip::default();
        z.add(&RawEntry::dir("linux-amd64/", 0o750));
        z.add(&RawEntry::file(
            "linux-amd64/bridge",
            b"#!bridge",
            true,
            0o755,
        ));
        z.add(&RawEntry::symlink("linux-amd64/br", "bridge"));
        z.add(&RawEntry::symlink(
            "linux-amd64/up",
            "../linux-amd64/bridge",
        ));
        z.add(&RawEntry::symlink("linux-amd64/abs", "/usr/bin/bridge"));
        z.add(&RawEntry::file("../evil", b"x", false, 0o644));
        z.finish(false)
    }

    fn oras_dir() -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        let mut h = ::tar::Header::new_gnu();
        h.set_entry_type(::tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "tree", &[][..]).unwrap();
        let mut h = ::tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(2);
        b.append_data(&mut h, "tree/sub/a.txt", &b"a\n"[..])
            .unwrap();
        let mut h = ::tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(1);
        b.append_data(&mut h, "elsewhere", &b"e"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &tar).unwrap();
        e.finish().unwrap()
    }

    async fn read(reader: &dyn Reader, t: &Tree, path: &str) -> Vec<u8> {
        let ino = t.resolve_follow(path).unwrap();
        let NodeKind::File(c) = &t.node(ino).unwrap().kind else {
            panic!("{path} is not a file");
        };
        reader.read(c, 0, c.size()).await.unwrap().to_vec()
    }

    #[tokio::test]
    async fn packages_become_directories() {
        let zip = zip_package();
        let tgz = oras_dir();
        let (reader, mut d) = crate::testutil::MemReader::new(&[
            ("cni-linux-amd64-v1.zip", &zip),
            ("tree", &tgz),
            ("notes.txt", b"plain"),
        ]);
        d[1].media_type = "application/vnd.oci.image.layer.v1.tar+gzip".into();
        d[1].annotations
            .insert(annotation::ORAS_UNPACK.into(), "true".into());
        let m = manifest(d.clone());
        let listing = |t: &Tree| -> Vec<(String, &'static str)> {
            t.walk(Tree::ROOT)
                .into_iter()
                .map(|e| (e.path, e.kind))
                .collect()
        };

        // Without --expand: the zip is a file, the ORAS directory a directory.
        let t = Tree::build(&m, &ViewOptions::default(), &reader)
            .await
            .unwrap();
        assert_eq!(
            listing(&t),
            [
                ("cni-linux-amd64-v1.zip".to_owned(), "file"),
                ("notes.txt".to_owned(), "file"),
                ("tree".to_owned(), "dir"),
                ("tree/sub".to_owned(), "dir"),
                ("tree/sub/a.txt".to_owned(), "file"),
            ]
        );
        assert_eq!(read(&reader, &t, "tree/sub/a.txt").await, b"a\n");
        assert!(
            t.problems()
                .iter()
                .any(|p| p.contains("\"elsewhere\"") && p.contains("outside")),
            "{:?}",
            t.problems()
        );

        // --expand keeps the archive beside its directory.
        let keep = ViewOptions {
            expand: Expand::Keep,
            ..ViewOptions::default()
        };
        let t = Tree::build(&m, &keep, &reader).await.unwrap();
        let names: Vec<String> = listing(&t).into_iter().map(|(p, _)| p).collect();
        for want in [
            "cni-linux-amd64-v1",
            "cni-linux-amd64-v1.zip",
            "cni-linux-amd64-v1/linux-amd64/bridge",
            "cni-linux-amd64-v1/linux-amd64/br",
        ] {
            assert!(names.contains(&want.to_owned()), "{want} not in {names:?}");
        }
        let dir = t.resolve_path("cni-linux-amd64-v1/linux-amd64").unwrap();
        assert_eq!(t.node(dir).unwrap().mode, 0o750);
        let bridge = t
            .resolve_path("cni-linux-amd64-v1/linux-amd64/bridge")
            .unwrap();
        assert_eq!(t.node(bridge).unwrap().mode, 0o755);
        assert_eq!(
            read(&reader, &t, "cni-linux-amd64-v1/linux-amd64/br").await,
            b"#!bridge"
        );
        assert_eq!(
            read(&reader, &t, "cni-linux-amd64-v1/linux-amd64/up").await,
            b"#!bridge"
        );
        let br = t.resolve_path("cni-linux-amd64-v1/linux-amd64/br").unwrap();
        assert_eq!(t.entry(br).kind, "symlink");
        assert_eq!(t.entry(br).target.as_deref(), Some("bridge"));
        assert!(matches!(
            t.resolve_follow("cni-linux-amd64-v1/linux-amd64/abs"),
            Err(Error::WrongKind { .. })
        ));
        assert!(
            t.problems()
                .iter()
                .any(|p| p.contains("cni-linux-amd64-v1.zip") && p.contains("\"../evil\"")),
            "{:?}",
            t.problems()
        );

        // --expand=replace drops the archive file.
        let replace = ViewOptions {
            expand: Expand::Replace,
            ..ViewOptions::default()
        };
        let t = Tree::build(&m, &replace, &reader).await.unwrap();
        assert!(t.resolve_path("cni-linux-amd64-v1.zip").is_err());

        // --root: the package's directory as the root.
        let sub = t.subtree("cni-linux-amd64-v1/linux-amd64").unwrap();
        assert_eq!(
            listing(&sub),
            [
                ("abs".to_owned(), "symlink"),
                ("br".to_owned(), "symlink"),
                ("bridge".to_owned(), "file"),
                ("up".to_owned(), "symlink"),
            ]
        );
        assert_eq!(sub.node(Tree::ROOT).unwrap().mode, 0o750);
        assert_eq!(read(&reader, &sub, "br").await, b"#!bridge");
        let ino = sub.resolve_path("bridge").unwrap();
        assert_eq!(sub.node(ino).unwrap().parent, Tree::ROOT);
        assert!(matches!(
            t.subtree("notes.txt"),
            Err(Error::WrongKind { .. })
        ));
        assert!(matches!(t.subtree("nope"), Err(Error::PathNotFound { .. })));
    }

    #[tokio::test]
    async fn only_the_packages_toward_a_path_are_read() {
        let zip = zip_package();
        // A large package, whose reading would show.
        let big = {
            use crate::testutil::{RawEntry, RawZip};
            let mut z = RawZip::default();
            z.add(&RawEntry::file(
                "linux-amd64/bridge",
                &[1; 1 << 20],
                false,
                0o755,
            ));
            z.finish(false)
        };
        let (reader, d) = crate::testutil::MemReader::new(&[
            ("a.zip", &big),
            ("b.zip", &zip),
            ("dir/c.tgz", b"not even gzip"),
        ]);
        let m = manifest(d);
        let keep = ViewOptions {
            expand: Expand::Keep,
            ..ViewOptions::default()
        };
        let t = Tree::build_toward(&m, &keep, &reader, "b/linux-amd64")
            .await
            .unwrap();
        let read = reader.read_so_far();
        assert!(read > 0 && read < 100_000, "{read}");
        assert!(t.resolve_path("b/linux-amd64/bridge").is_ok());
        assert!(t.resolve_path("a.zip").is_ok());
        assert_eq!(t.children(t.resolve_path("a").unwrap()).count(), 0);
        assert!(t.resolve_path("dir/c").is_ok());
        assert!(t.problems().iter().all(|p| !p.contains("c.tgz")));
        // Everything, and the broken one said so.
        let t = Tree::build_toward(&m, &keep, &reader, "a/../dir")
            .await
            .unwrap();
        assert!(t.resolve_path("a/linux-amd64/bridge").is_ok());
        assert!(t.problems().iter().any(|p| p.contains("c.tgz")));
    }

    #[tokio::test]
    async fn a_broken_package_stays_a_file() {
        let (reader, d) =
            crate::testutil::MemReader::new(&[("junk.tgz", b"not gzip"), ("ok.txt", b"ok")]);
        let keep = ViewOptions {
            expand: Expand::Replace,
            ..ViewOptions::default()
        };
        let t = Tree::build(&manifest(d), &keep, &reader).await.unwrap();
        assert_eq!(t.entry(t.resolve_path("junk.tgz").unwrap()).kind, "file");
        assert!(
            t.problems()
                .iter()
                .any(|p| p.contains("junk.tgz") && p.contains("shown as a file")),
            "{:?}",
            t.problems()
        );
    }

    #[test]
    fn rfc3339() {
        let t = |s| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64());
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(t("2024-02-29T12:00:00Z"), Some(1_709_208_000.0));
        assert_eq!(t("2024-02-29T13:00:00.5+01:00"), Some(1_709_208_000.5));
        assert_eq!(t("2024-13-01T00:00:00Z"), None);
        assert_eq!(t("yesterday"), None);
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(1_709_208_000)),
            "2024-02-29 12:00"
        );
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01 00:00");
    }
}

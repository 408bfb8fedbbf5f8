//! Views: the directory tree an artifact is shown as.
//!
//! A [`Tree`] is an immutable inode table built once from a manifest. In an
//! ORAS artifact each layer titled with `org.opencontainers.image.title` is a
//! file of that name (a `/` in a title makes directories); a layer without a
//! title is shown as `sha256-<hex>` rather than hidden. Titles that could
//! escape the root, clash or cannot be names fail the build, naming the layer.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Manifest, annotation};

/// An inode number. The root is [`Tree::ROOT`].
pub type Ino = u64;

/// What a file's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A whole blob.
    Blob(Descriptor),
}

impl Content {
    /// The file size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Content::Blob(d) => d.size,
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
}

/// One inode.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its name in its parent (empty for the root).
    pub name: String,
    /// Its parent (the root is its own parent).
    pub parent: Ino,
    /// What it is.
    pub kind: NodeKind,
    /// Permission bits (without the file-type bits).
    pub mode: u32,
    /// Modification time.
    pub mtime: SystemTime,
}

impl Node {
    /// Size in bytes (0 for directories).
    pub fn size(&self) -> u64 {
        match &self.kind {
            NodeKind::File(c) => c.size(),
            NodeKind::Dir(_) => 0,
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir(_))
    }
}

/// How to build a view.
#[derive(Clone, Copy, Debug)]
pub struct ViewOptions {
    /// Mode of files that carry none of their own (ORAS files).
    pub file_mode: u32,
    /// Mode of directories that carry none of their own.
    pub dir_mode: u32,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            file_mode: 0o444,
            dir_mode: 0o555,
        }
    }
}

/// An immutable tree of inodes.
#[derive(Clone, Debug)]
pub struct Tree {
    nodes: Vec<Node>,
}

/// One row of a listing, for `ls --json` and tests.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The path from the root, `/`-separated, without a leading `/`.
    pub path: String,
    /// `file` or `dir`.
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
            }],
        }
    }

    /// Builds the view of an artifact manifest: one file per layer.
    pub fn from_artifact(manifest: &Manifest, options: &ViewOptions) -> Result<Self> {
        let mtime = manifest
            .annotations
            .get(annotation::CREATED)
            .and_then(|s| parse_rfc3339(s))
            .unwrap_or(UNIX_EPOCH);
        let mut tree = Tree::empty(mtime, options.dir_mode);
        for layer in &manifest.layers {
            let bad = |reason: &str| Error::InvalidTitle {
                digest: layer.digest.to_string(),
                title: layer.title().unwrap_or_default().to_owned(),
                reason: reason.to_owned(),
            };
            let components: Vec<String> = match layer.title() {
                Some(title) => title_components(title).map_err(|r| bad(&r))?,
                None => vec![format!("sha256-{}", layer.digest.hex())],
            };
            let (name, dirs) = components.split_last().ok_or_else(|| bad("empty"))?;
            let mut parent = Self::ROOT;
            for dir in dirs {
                parent = tree
                    .ensure_dir(parent, dir, mtime, options.dir_mode)
                    .map_err(|r| bad(&r))?;
            }
            tree.insert(
                parent,
                name,
                NodeKind::File(Content::Blob(layer.clone())),
                options.file_mode,
                mtime,
            )
            .map_err(|r| bad(&r))?;
        }
        Ok(tree)
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
            NodeKind::File(_) => None,
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

    /// The inode at `path` (`/`-separated, leading `/` optional; `""` and `/` are the root).
    pub fn resolve_path(&self, path: &str) -> Result<Ino> {
        let mut ino = Self::ROOT;
        for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            ino = if c == ".." {
                self.node(ino).map_or(Self::ROOT, |n| n.parent)
            } else {
                match self.node(ino).map(|n| &n.kind) {
                    Some(NodeKind::File(_)) => {
                        return Err(Error::WrongKind {
                            path: path.to_owned(),
                            reason: "not a directory",
                        });
                    }
                    _ => self.lookup(ino, c).ok_or_else(|| Error::PathNotFound {
                        path: path.to_owned(),
                    })?,
                }
            };
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
            };
        };
        let (kind, digest, media_type) = match &n.kind {
            NodeKind::Dir(_) => ("dir", None, None),
            NodeKind::File(Content::Blob(d)) => (
                "file",
                Some(d.digest.to_string()),
                Some(d.media_type.clone()),
            ),
        };
        Entry {
            path: self.path_of(ino),
            kind,
            size: n.size(),
            mode: n.mode,
            digest,
            media_type,
        }
    }
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

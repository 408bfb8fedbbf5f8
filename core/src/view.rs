//! Views: the tree an artifact is shown as, built from its manifest (a
//! tree builder, and the view policy a caller asks for).
//!
//! In an ORAS artifact each layer titled with `org.opencontainers.image.title`
//! is a file of that name (a `/` in a title makes directories); a layer
//! without a title is shown as `sha256-<hex>` rather than hidden. Titles
//! that could escape the root, clash or cannot be names fail the build,
//! naming the layer.
//!
//! [`Tree::build`] also shows packages as directories, reading them through
//! a [`BlobReader`] ([`crate::package`]): an ORAS directory layer always,
//! and with [`Expand`] a zip or tar layer as a directory named by its title
//! without the extension, holding the package's files (with their modes,
//! times and symlinks). Entries that cannot be shown are left out and
//! listed in [`Tree::problems`]; a package that cannot be read at all stays
//! a file, with a problem saying why.
//!
//! [`View`] is the whole policy: a container image as its root filesystem
//! (or, asked for, its layers as files), an artifact with its packages, and
//! a `--root` directory of either.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::blob::BlobReader;
use crate::content::{Compression, Content};
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Manifest, annotation};
use crate::package::{self, Format, Item, ItemKind};
use crate::tree::{Children, Ino, NodeKind, Tree, parse_rfc3339};

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

/// How a package layer is shown.
enum Shape {
    /// An ORAS directory: its tar holds the directory itself, named as the
    /// title's last component.
    Oras,
    /// An archive shown as a directory, beside its file or not.
    Archive { keep_file: bool },
}

impl Tree {
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
        tree.finish();
        Ok(tree)
    }

    /// Builds the view of an artifact manifest, reading the packages it
    /// shows as directories through `blobs`: ORAS directory layers always,
    /// zip and tar layers as `options.expand` says.
    ///
    /// An entry that cannot be shown is left out, and a package that cannot
    /// be read at all is shown as its file; both are listed in
    /// [`Tree::problems`]. Errors of the blob reader itself (network, integrity,
    /// offline) fail the build.
    pub async fn build(
        manifest: &Manifest,
        options: &ViewOptions,
        blobs: &Arc<dyn BlobReader>,
    ) -> Result<Self> {
        Self::build_toward(manifest, options, blobs, "").await
    }

    /// Like [`Tree::build`], for a view that will be used only at or under
    /// `path` (`--root`, the file `cat` writes): only the packages on the
    /// way to `path` or under it are read; the others are shown as empty
    /// directories. With `""` every package is read.
    pub async fn build_toward(
        manifest: &Manifest,
        options: &ViewOptions,
        blobs: &Arc<dyn BlobReader>,
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
                let index = package::Listing::default();
                tree.add_package(layer, &dir, &shape, index, options, mtime)?;
                continue;
            }
            match package::list(blobs, layer, format).await {
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
        tree.finish();
        Ok(tree)
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
            NodeKind::File(Content::Blob(Arc::new(layer.clone()))),
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
        index: package::Listing,
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
                NodeKind::Dir(Children::default()),
                options.dir_mode,
                mtime,
            )
            .map_err(|r| bad(&r))?;
        let package = package::package_name(layer);
        for p in index.problems {
            self.problems
                .push(format!("package {package}: {p}; left out"));
        }
        self.reserve(index.items.len());
        for item in index.items {
            let Item {
                path,
                kind,
                mode,
                mtime: item_mtime,
            } = item;
            let mut components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
            if let Shape::Oras = shape {
                // The tar holds the directory itself: `name/…`.
                if components.first() != Some(&name.as_str()) {
                    self.problems.push(format!(
                        "package {package}: entry {path:?}: outside the directory {name:?} the layer is titled; left out",
                    ));
                    continue;
                }
                components.remove(0);
            }
            if let Err(reason) =
                self.add_item(root, &components, kind, mode, item_mtime, options, mtime)
            {
                self.problems.push(format!(
                    "package {package}: entry {:?}: {reason}; left out",
                    components.join("/")
                ));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn add_item(
        &mut self,
        root: Ino,
        path: &[&str],
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
    if package::is_oras_directory(layer) {
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

/// What a caller asks to see of a manifest: the view policy the CLI and
/// a library user share.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// How files and packages are shown.
    pub options: ViewOptions,
    /// A container image as its layers (one file each), not as its root
    /// filesystem.
    pub layers: bool,
    /// The limits on an image's root filesystem.
    pub image: crate::image::ImageOptions,
    /// Show only this directory of the view, as its root (`--root`).
    pub root: Option<String>,
    /// Count an ocifs index a referrer of the manifest is as if it were
    /// bound to it (`--trust-referrers`); else one is used in lazy mode
    /// only (see [`crate::published::find`]).
    pub trust_referrers: bool,
}

impl View {
    /// The tree of `manifest`: a container image's root filesystem (each
    /// layer indexed once through `cache`, see [`crate::image::build`]),
    /// else the artifact with its packages read through `cache`; then the
    /// `root` directory of it, if one is asked for.
    ///
    /// With `root`, or a `path` the caller will use (relative to the
    /// root), only the packages on the way there are read; should the way
    /// pass a symlink or not exist, every package is, so that the view is
    /// exactly the full one. Problems are logged as warnings.
    /// `digest` is the manifest's, if known: its referrers are looked for.
    pub async fn build(
        &self,
        manifest: &Manifest,
        digest: Option<&crate::Digest>,
        cache: &crate::cache::ChunkCache,
        path: Option<&str>,
    ) -> Result<Tree> {
        let found = crate::published::find(manifest, digest, cache, self.trust_referrers).await;
        for problem in &found.problems {
            tracing::warn!("{problem}");
        }
        let tree = if crate::image::is_image(manifest) && !self.layers {
            crate::image::build(manifest, cache, &self.image, found.layers).await?
        } else {
            let blobs: Arc<dyn BlobReader> = Arc::new(cache.clone());
            let toward = [self.root.as_deref(), path]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("/");
            let tree = Tree::build_toward(manifest, &self.options, &blobs, &toward).await?;
            if crosses_symlink_or_missing(&tree, &toward) {
                Tree::build(manifest, &self.options, &blobs).await?
            } else {
                tree
            }
        };
        for problem in tree.problems() {
            tracing::warn!("{problem}");
        }
        match &self.root {
            Some(root) => tree.subtree(root),
            None => Ok(tree),
        }
    }
}

/// Whether the way to `path` in `tree` passes a symlink, or ends nowhere.
fn crosses_symlink_or_missing(tree: &Tree, path: &str) -> bool {
    let mut prefix = String::new();
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        prefix.push('/');
        prefix.push_str(c);
        match tree.resolve_path(&prefix) {
            Ok(ino) if tree.node(ino).is_some_and(|n| !n.is_symlink()) => {}
            _ => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::collections::BTreeMap;

    use super::*;
    use crate::digest::Digest;
    use crate::manifest::media_type;
    use crate::read::Reader;
    use crate::tree::format_time;

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
        let t = Tree::build(&m, &ViewOptions::default(), reader.blobs())
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
        let t = Tree::build(&m, &keep, reader.blobs()).await.unwrap();
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
        assert_eq!(t.row(br).kind, "symlink");
        assert_eq!(t.row(br).target.as_deref(), Some("bridge"));
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
        let t = Tree::build(&m, &replace, reader.blobs()).await.unwrap();
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
        let t = Tree::build_toward(&m, &keep, reader.blobs(), "b/linux-amd64")
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
        let t = Tree::build_toward(&m, &keep, reader.blobs(), "a/../dir")
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
        let t = Tree::build(&manifest(d), &keep, reader.blobs())
            .await
            .unwrap();
        assert_eq!(t.row(t.resolve_path("junk.tgz").unwrap()).kind, "file");
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

//! A directory tree walked as rows a container runtime's view is compared
//! by (path, type, mode, owner, size and sha256, link target, device
//! numbers), and a diff of two walks that shows the first differences.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A FIFO.
    Fifo,
    /// A socket (never in an image; here so that a walk never panics).
    Socket,
}

impl Kind {
    /// The name `ocifs ls --json` uses.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Char => "char",
            Kind::Block => "block",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        }
    }
}

/// One entry of a walk.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    /// The path from the walk's root, `/`-separated; `.` for the root.
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// A regular file's size.
    pub size: Option<u64>,
    /// A regular file's sha256 (hex), if the walk read contents.
    pub sha256: Option<String>,
    /// A symlink's target.
    pub target: Option<String>,
    /// A device's major and minor numbers.
    pub device: Option<(u32, u32)>,
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {:04o} {}:{}",
            self.path,
            self.kind.name(),
            self.mode,
            self.uid,
            self.gid
        )?;
        if let Some(size) = self.size {
            write!(f, " size={size}")?;
        }
        if let Some(sum) = &self.sha256 {
            write!(f, " sha256={}", &sum[..16.min(sum.len())])?;
        }
        if let Some(t) = &self.target {
            write!(f, " -> {t}")?;
        }
        if let Some((major, minor)) = self.device {
            write!(f, " dev={major},{minor}")?;
        }
        Ok(())
    }
}

/// Linux's `major()` of a `dev_t`.
pub fn major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

/// Linux's `minor()` of a `dev_t`.
pub fn minor(dev: u64) -> u32 {
    ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32
}

/// Walks `root` without following symlinks (the root itself included, as
/// `.`), sorted by path. Regular files are hashed if `hash`; devices and
/// FIFOs are never opened.
///
/// # Panics
///
/// On any I/O error, naming the path.
pub fn walk(root: &Path, hash: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    visit(root, root, hash, &mut rows);
    rows.sort();
    rows
}

fn visit(root: &Path, path: &Path, hash: bool, rows: &mut Vec<Row>) {
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let rel = match path.strip_prefix(root) {
        Ok(r) if r.as_os_str().is_empty() => ".".to_owned(),
        Ok(r) => r.to_string_lossy().into_owned(),
        Err(_) => path.display().to_string(),
    };
    let t = meta.file_type();
    let kind = if t.is_file() {
        Kind::File
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Symlink
    } else if t.is_char_device() {
        Kind::Char
    } else if t.is_block_device() {
        Kind::Block
    } else if t.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    };
    let mut row = Row {
        path: rel,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: None,
        sha256: None,
        target: None,
        device: None,
    };
    match kind {
        Kind::File => {
            row.size = Some(meta.len());
            if hash {
                row.sha256 = Some(file_sha256(path));
            }
        }
        Kind::Symlink => {
            let t = std::fs::read_link(path)
                .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()));
            row.target = Some(t.to_string_lossy().into_owned());
        }
        Kind::Char | Kind::Block => row.device = Some((major(meta.rdev()), minor(meta.rdev()))),
        _ => {}
    }
    rows.push(row);
    if kind == Kind::Dir {
        let entries =
            std::fs::read_dir(path).unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()));
        for e in entries {
            let e = e.unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()));
            visit(root, &e.path(), hash, rows);
        }
    }
}

/// The sha256 (hex) of the file at `path`.
///
/// # Panics
///
/// If it cannot be read.
pub fn file_sha256(path: &Path) -> String {
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// The differences between two walks, by path: `None` if they are equal,
/// otherwise a report of the counts and the first `max` differences, each
/// as `- want` / `+ got` lines (or one of them, for a path on one side).
pub fn diff(
    want_name: &str,
    want: &[Row],
    got_name: &str,
    got: &[Row],
    max: usize,
) -> Option<String> {
    let a: BTreeMap<&str, &Row> = want.iter().map(|r| (r.path.as_str(), r)).collect();
    let b: BTreeMap<&str, &Row> = got.iter().map(|r| (r.path.as_str(), r)).collect();
    let mut paths: Vec<&str> = a.keys().chain(b.keys()).copied().collect();
    paths.sort_unstable();
    paths.dedup();
    let (mut only_a, mut only_b, mut differ) = (0, 0, 0);
    let mut lines = Vec::new();
    for p in paths {
        let (x, y) = (a.get(p), b.get(p));
        if x == y {
            continue;
        }
        match (x, y) {
            (Some(_), None) => only_a += 1,
            (None, Some(_)) => only_b += 1,
            _ => differ += 1,
        }
        if lines.len() < max * 2 {
            if let Some(x) = x {
                lines.push(format!("- {x}"));
            }
            if let Some(y) = y {
                lines.push(format!("+ {y}"));
            }
        }
    }
    if only_a + only_b + differ == 0 {
        return None;
    }
    Some(format!(
        "{want_name} (-, {} rows) and {got_name} (+, {} rows) differ: {only_a} paths only in {want_name}, \
         {only_b} only in {got_name}, {differ} on both sides but different; the first differences:\n{}",
        want.len(),
        got.len(),
        lines.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    #[test]
    fn walks_without_following_links_and_diffs_by_path() {
        let dir = crate::temp_dir();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).expect("mkdir");
        std::fs::write(root.join("d/f"), b"abc").expect("write");
        std::fs::set_permissions(root.join("d/f"), std::fs::Permissions::from_mode(0o4750))
            .expect("chmod");
        symlink("/nowhere", root.join("l")).expect("symlink");
        let rows = walk(root, true);
        let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, [".", "d", "d/f", "l"]);
        assert_eq!(rows[2].mode, 0o4750);
        assert_eq!(rows[2].size, Some(3));
        assert_eq!(
            rows[2].sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(rows[3].target.as_deref(), Some("/nowhere"));
        assert!(diff("a", &rows, "b", &rows, 10).is_none());
        let mut other = rows.clone();
        other[2].mode = 0o755;
        other.remove(3);
        let d = diff("a", &rows, "b", &other, 10).expect("a difference");
        assert!(d.contains("1 paths only in a"), "{d}");
        assert!(d.contains("1 on both sides"), "{d}");
        assert!(d.contains("- d/f file 4750"), "{d}");
        assert!(d.contains("+ d/f file 0755"), "{d}");
    }

    #[test]
    fn device_numbers_split_as_linux_does() {
        // makedev(259, 70000) = 0x1_1100_0103_0070 in glibc's encoding.
        let dev = (70000u64 & 0xff) | ((259u64 & 0xfff) << 8) | ((70000u64 & !0xff) << 12);
        assert_eq!((major(dev), minor(dev)), (259, 70000));
        assert_eq!((major(0x103), minor(0x103)), (1, 3));
    }
}

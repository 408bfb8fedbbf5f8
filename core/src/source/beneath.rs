//! Files opened beneath one directory and never through a symlink: how a
//! layout is read, so that a layout's `blobs/sha256/<hex>` (or `blobs/`
//! itself) that is a symlink to `/etc/shadow` is refused instead of served.
//!
//! On Linux, `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a handle
//! on the directory; where the kernel lacks `openat2` (before 5.6, or behind
//! a seccomp filter), one `openat(O_NOFOLLOW)` per component. Elsewhere each
//! component is checked with `symlink_metadata` before the open (racy, but
//! the same refusal for a layout that is simply laid out wrong). Only
//! regular files are opened: a FIFO would block the open, a device would
//! read forever.

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

/// A directory that files are opened beneath.
#[derive(Debug)]
pub(crate) struct Beneath {
    path: PathBuf,
    #[cfg(unix)]
    dir: File,
}

/// Why a file beneath the directory was refused.
pub(crate) fn is_refusal(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData
}

fn refusal(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} {why}", path.display()),
    )
}

impl Beneath {
    /// Opens `path` (following symlinks: the caller named it) as the
    /// directory to open beneath.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        #[cfg(unix)]
        {
            use rustix::fs::{Mode, OFlags};
            let dir = rustix::fs::open(
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            Ok(Beneath {
                path: path.to_owned(),
                dir: File::from(dir),
            })
        }
        #[cfg(not(unix))]
        {
            if !std::fs::metadata(path)?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "not a directory",
                ));
            }
            Ok(Beneath {
                path: path.to_owned(),
            })
        }
    }

    /// The directory's path.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the regular file `rel` (relative, no `..`) for reading. A
    /// symlink on the way, a way out of the directory or a file that is not
    /// a regular file is an `InvalidData` error naming the path
    /// ([`is_refusal`]); a missing file is `NotFound`.
    pub(crate) fn open_file(&self, rel: &Path) -> io::Result<File> {
        let full = self.path.join(rel);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(refusal(&full, "is not a plain relative path"));
        }
        let file = self.open_nofollow(rel, &full)?;
        if !file.metadata()?.is_file() {
            return Err(refusal(&full, "is not a regular file; refused"));
        }
        Ok(file)
    }

    #[cfg(target_os = "linux")]
    fn open_nofollow(&self, rel: &Path, full: &Path) -> io::Result<File> {
        use rustix::fs::{Mode, ResolveFlags};
        use rustix::io::Errno;
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(&self.dir, rel, open_flags(true), Mode::empty(), resolve) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::NOSYS | Errno::PERM) => self.open_per_component(rel, full),
            Err(e) => Err(map_symlink_error(e.into(), full)),
        }
    }

    #[cfg(all(unix, not(target_os = "linux")))]
    fn open_nofollow(&self, rel: &Path, full: &Path) -> io::Result<File> {
        self.open_per_component(rel, full)
    }

    /// One `openat(O_NOFOLLOW)` per component.
    #[cfg(unix)]
    fn open_per_component(&self, rel: &Path, full: &Path) -> io::Result<File> {
        let parts: Vec<_> = rel.components().collect();
        let mut current: Option<File> = None;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let base = current.as_ref().unwrap_or(&self.dir);
            let fd = rustix::fs::openat(
                base,
                part.as_os_str(),
                open_flags(last),
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| map_symlink_error(e.into(), full))?;
            current = Some(File::from(fd));
        }
        current.ok_or_else(|| refusal(full, "is empty"))
    }

    #[cfg(not(unix))]
    fn open_nofollow(&self, rel: &Path, full: &Path) -> io::Result<File> {
        let mut at = self.path.clone();
        for part in rel.components() {
            at.push(part);
            if std::fs::symlink_metadata(&at)?.file_type().is_symlink() {
                return Err(refusal(
                    &at,
                    "is a symlink; a layout is read without following symlinks",
                ));
            }
        }
        let _ = full;
        File::open(&at)
    }
}

/// The flags of every open beneath the directory: never through a symlink,
/// never blocking (a FIFO), and a directory for all but the last component.
#[cfg(unix)]
fn open_flags(last: bool) -> rustix::fs::OFlags {
    use rustix::fs::OFlags;
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    if last {
        flags
    } else {
        flags | OFlags::DIRECTORY
    }
}

/// ELOOP (a symlink met with `O_NOFOLLOW` or `RESOLVE_NO_SYMLINKS`) and
/// EXDEV (a way out of the directory) become refusals; ENOTDIR from
/// `O_DIRECTORY` on a symlinked directory, too.
#[cfg(unix)]
fn map_symlink_error(e: io::Error, full: &Path) -> io::Error {
    use rustix::io::Errno;
    let errno = e.raw_os_error().map(Errno::from_raw_os_error);
    match errno {
        Some(Errno::LOOP | Errno::NOTDIR) => refusal(
            full,
            "is or passes through a symlink; a layout is read without following symlinks",
        ),
        Some(Errno::XDEV) => refusal(full, "leads out of the layout directory"),
        _ => e,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn tree() -> (tempfile::TempDir, Beneath) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).expect("mkdir");
        std::fs::write(dir.path().join("blobs/sha256/good"), b"good").expect("write");
        std::fs::write(dir.path().join("outside"), b"secret").expect("write");
        let b = Beneath::open(dir.path()).expect("open");
        (dir, b)
    }

    fn both_ways(b: &Beneath, rel: &str) -> [io::Result<File>; 2] {
        let full = b.path().join(rel);
        [
            b.open_file(Path::new(rel)),
            b.open_per_component(Path::new(rel), &full),
        ]
    }

    #[test]
    fn a_plain_file_opens() {
        let (_d, b) = tree();
        for f in both_ways(&b, "blobs/sha256/good") {
            let mut s = String::new();
            io::Read::read_to_string(&mut f.expect("open"), &mut s).expect("read");
            assert_eq!(s, "good");
        }
    }

    #[test]
    fn symlinks_are_refused_wherever_they_are() {
        let (d, b) = tree();
        symlink(
            d.path().join("outside"),
            d.path().join("blobs/sha256/file-link"),
        )
        .expect("ln");
        symlink("good", d.path().join("blobs/sha256/relative-link")).expect("ln");
        std::fs::create_dir(d.path().join("real")).expect("mkdir");
        std::fs::write(d.path().join("real/x"), b"x").expect("write");
        symlink(d.path().join("real"), d.path().join("blobs/dir-link")).expect("ln");
        for rel in [
            "blobs/sha256/file-link",
            "blobs/sha256/relative-link",
            "blobs/dir-link/x",
        ] {
            for r in both_ways(&b, rel) {
                let e = r.expect_err(rel);
                assert!(is_refusal(&e), "{rel}: {e}");
                assert!(e.to_string().contains("symlink"), "{rel}: {e}");
                assert!(e.to_string().contains(rel), "{rel}: {e}");
            }
        }
        assert!(is_refusal(
            &b.open_file(Path::new("../outside")).expect_err("..")
        ));
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_without_blocking() {
        let (d, b) = tree();
        let fifo = d.path().join("blobs/sha256/fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        for rel in ["blobs/sha256/fifo", "blobs/sha256"] {
            let e = b.open_file(Path::new(rel)).expect_err(rel);
            assert!(is_refusal(&e), "{rel}: {e}");
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        let e = b
            .open_file(Path::new("blobs/sha256/none"))
            .expect_err("missing");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}

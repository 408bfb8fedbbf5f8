//! What std lacks: umount2(2), the effective ids, `fusermount3 -u`, the mount
//! table, and the fusectl abort switch.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The setuid helper that unmounts for users other than root.
const FUSERMOUNT: &str = "fusermount3";

/// umount2(2) of `path`, detached if `lazy`; never follows a final symlink.
// Unsafe: umount2 has no wrapper in std, and libc is the FFI to it.
#[allow(unsafe_code)]
pub(crate) fn umount(path: &Path, lazy: bool) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let flags = libc::UMOUNT_NOFOLLOW | if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c_path` is a NUL-terminated string that lives until after the
    // call; umount2 only reads it and keeps no pointer to it.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `fusermount3 -u [-z] -- path`, for users who may not call umount2. Its
/// complaints become the errno they stand for, so callers see `EBUSY` and
/// `EINVAL` as from umount2.
pub(crate) fn fusermount_unmount(path: &Path, lazy: bool) -> io::Result<()> {
    let mut cmd = Command::new(FUSERMOUNT);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg("--").arg(path).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run {FUSERMOUNT} (is the fuse3 package installed?): {e}"),
        )
    })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let lower = stderr.to_ascii_lowercase();
    Err(if lower.contains("busy") {
        io::Error::from_raw_os_error(libc::EBUSY)
    } else if lower.contains("not found in") || lower.contains("not mounted") {
        io::Error::from_raw_os_error(libc::EINVAL)
    } else {
        io::Error::other(format!("{FUSERMOUNT} -u failed: {stderr}"))
    })
}

/// Has every thread allocate from one heap (glibc's `M_ARENA_MAX` of 1).
/// glibc otherwise gives threads heaps of their own, up to 8 a core, and
/// each keeps the peak of the 1 MiB chunk buffers that passed through it:
/// a mount streaming 1 GiB lazily peaked at 189–199 MiB resident so, and
/// at 87 MiB with one heap, as fast (two runs each, 2 cores); allocating
/// each buffer its own pages instead (`M_MMAP_THRESHOLD`) gave 68 MiB but
/// cost the stream 40–60 % in page faults. Call it before threads start.
/// Not glibc: nothing to do.
// Unsafe: mallopt is FFI; std has no way to tune the C allocator.
#[allow(unsafe_code)]
pub fn one_heap() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt takes two integers and only sets a parameter of
        // the allocator; it touches no memory of ours.
        let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}

/// The effective user id.
// Unsafe: geteuid is FFI; std does not expose it.
#[allow(unsafe_code)]
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// The effective group id.
// Unsafe: getegid is FFI; std does not expose it.
#[allow(unsafe_code)]
pub(crate) fn egid() -> u32 {
    // SAFETY: getegid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::getegid() }
}

/// Whether `/etc/fuse.conf` lets users other than root mount with
/// `allow_other` (a line `user_allow_other`), as fusermount3 reads it.
pub(crate) fn users_may_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|text| fuse_conf_allows_other(&text))
}

fn fuse_conf_allows_other(text: &str) -> bool {
    text.lines().any(|l| l.trim() == "user_allow_other")
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// `major:minor` of its `st_dev`.
    pub(crate) dev: String,
    /// Where it is mounted.
    pub(crate) mount_point: PathBuf,
    /// Per-mount options (`ro,nosuid,nodev,noatime`).
    pub(crate) options: String,
    /// The filesystem type (`fuse.ocifs`).
    pub(crate) fs_type: String,
    /// The source (`fsname=`).
    pub(crate) source: String,
    /// Superblock options (`user_id=0,group_id=0,default_permissions`).
    pub(crate) super_options: String,
}

/// The mount at exactly `path`, the topmost if several are stacked there.
pub(crate) fn find_mount(path: &Path) -> io::Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .rev()
        .filter_map(parse_mountinfo_line)
        .find(|m| m.mount_point == path))
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let mut right = right.split(' ');
    Some(MountEntry {
        dev: (*left.get(2)?).to_owned(),
        mount_point: PathBuf::from(unescape(left.get(4)?)),
        options: (*left.get(5)?).to_owned(),
        fs_type: unescape(right.next()?),
        source: unescape(right.next()?),
        super_options: right.next().unwrap_or_default().to_owned(),
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path` made absolute without touching its last component, which may be a
/// FUSE mount whose server is gone (every stat of it fails with ENOTCONN).
pub(crate) fn absolute_mount_point(path: &Path) -> io::Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent.canonicalize()?.join(name)),
        // `/`, or a path ending in `..`: nothing below it can be dead.
        _ => abs.canonicalize(),
    }
}

/// The fusectl name of the connection serving a mount whose `st_dev` is `dev`.
pub(crate) fn connection_id(dev: u64) -> u64 {
    // The kernel names connections by its own dev_t (major << 20 | minor),
    // not by the encoding stat(2) returns.
    (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev))
}

/// Aborts a FUSE connection through fusectl, failing every request the
/// kernel still waits on. False when fusectl is not mounted.
pub(crate) fn abort_connection(id: u64) -> bool {
    let path = Path::new("/sys/fs/fuse/connections")
        .join(id.to_string())
        .join("abort");
    path.exists() && std::fs::write(&path, b"1").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let line = "412 29 0:77 / /tmp/a\\040b rw,nosuid,nodev,noatime shared:1 master:2 - fuse.ocifs oci:x\\040y ro,user_id=0,group_id=0";
        let m = parse_mountinfo_line(line).expect("parses");
        assert_eq!(m.dev, "0:77");
        assert_eq!(m.mount_point, Path::new("/tmp/a b"));
        assert_eq!(m.options, "rw,nosuid,nodev,noatime");
        assert_eq!(m.fs_type, "fuse.ocifs");
        assert_eq!(m.source, "oci:x y");
        assert_eq!(m.super_options, "ro,user_id=0,group_id=0");
        assert!(parse_mountinfo_line("garbage").is_none());
    }

    #[test]
    fn fuse_conf_allows_other_only_on_a_line_of_its_own() {
        assert!(fuse_conf_allows_other(
            "# c\n  user_allow_other  \nmount_max = 9\n"
        ));
        assert!(!fuse_conf_allows_other("#user_allow_other\n"));
        assert!(!fuse_conf_allows_other("user_allow_other_not\n"));
        assert!(!fuse_conf_allows_other(""));
    }

    #[test]
    fn unescape_leaves_plain_backslashes() {
        assert_eq!(unescape("a\\134b\\x\\12"), "a\\b\\x\\12");
    }

    #[test]
    fn connection_ids_use_the_kernel_dev_t() {
        // makedev(0, 300) as glibc encodes it.
        let dev = (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!(connection_id(dev), 300);
    }
}

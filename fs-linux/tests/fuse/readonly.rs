//! Every kind of write fails with EROFS.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::SystemTime;

use crate::util::{Fixture, errno};

/// setxattr(2), which std lacks.
// Unsafe: FFI to setxattr; the test wants the raw errno.
#[allow(unsafe_code)]
fn setxattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    let name = CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; `value`
    // is valid for `value.len()` bytes; setxattr keeps no pointers.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn every_write_fails_with_erofs() {
    let fx = Fixture::standard();
    let file = fx.path("hello.txt");
    let dir = fx.path("dir");
    let new = fx.path("new.txt");
    let erofs = libc::EROFS;

    assert_eq!(errno(std::fs::File::create(&new)), erofs, "create");
    assert_eq!(
        errno(OpenOptions::new().write(true).create_new(true).open(&new)),
        erofs,
        "create_new"
    );
    assert_eq!(
        errno(OpenOptions::new().write(true).open(&file)),
        erofs,
        "open for writing"
    );
    assert_eq!(
        errno(OpenOptions::new().read(true).write(true).open(&file)),
        erofs,
        "open read-write"
    );
    assert_eq!(
        errno(OpenOptions::new().append(true).open(&file)),
        erofs,
        "open for appending"
    );
    assert_eq!(
        errno(OpenOptions::new().write(true).truncate(true).open(&file)),
        erofs,
        "truncate"
    );
    assert_eq!(errno(std::fs::write(&file, b"x")), erofs, "write");
    assert_eq!(
        errno(std::fs::create_dir(fx.path("newdir"))),
        erofs,
        "mkdir"
    );
    assert_eq!(errno(std::fs::remove_file(&file)), erofs, "unlink");
    assert_eq!(
        errno(std::fs::remove_dir(fx.path("dir/sub"))),
        erofs,
        "rmdir"
    );
    assert_eq!(
        errno(std::fs::rename(&file, fx.path("renamed"))),
        erofs,
        "rename"
    );
    assert_eq!(
        errno(std::fs::rename(&file, dir.join("hello.txt"))),
        erofs,
        "rename across directories"
    );
    assert_eq!(
        errno(std::fs::set_permissions(
            &file,
            std::fs::Permissions::from_mode(0o644)
        )),
        erofs,
        "chmod"
    );
    assert_eq!(
        errno(std::os::unix::fs::chown(&file, Some(1), Some(1))),
        erofs,
        "chown"
    );
    assert_eq!(
        errno(std::os::unix::fs::symlink("hello.txt", fx.path("link"))),
        erofs,
        "symlink"
    );
    assert_eq!(
        errno(std::fs::hard_link(&file, fx.path("hard"))),
        erofs,
        "link"
    );
    assert_eq!(
        errno(std::os::unix::net::UnixListener::bind(fx.path("sock"))),
        erofs,
        "mknod (socket)"
    );
    assert_eq!(errno(setxattr(&file, "user.x", b"1")), erofs, "setxattr");
    let opened = std::fs::File::open(&file).expect("open read-only");
    assert_eq!(
        errno(opened.set_modified(SystemTime::now())),
        erofs,
        "utimens"
    );

    // Nothing changed.
    assert_eq!(std::fs::read(&file).expect("read"), b"hello, world\n");
    assert!(!new.exists());
    assert_eq!(
        std::fs::metadata(&file).expect("stat").permissions().mode(),
        libc::S_IFREG | 0o444
    );
}

//! Listing, attributes and contents.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileExt as _, MetadataExt as _, PermissionsExt as _};
use std::time::{Duration, UNIX_EPOCH};

use crate::util::{Builder, CREATED_SECS, Fixture, errno, pseudo_random, standard_files};

fn names(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect()
}

#[test]
fn readdir_lists_files_and_directories() {
    let fx = Fixture::standard();
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        names(fx.mnt.path()),
        set(&["big.bin", "dir", "empty", "hello.txt"])
    );
    assert_eq!(names(&fx.path("dir")), set(&["nested.txt", "sub"]));
    assert_eq!(names(&fx.path("dir/sub")), set(&["deep.bin"]));
    let kinds: Vec<(String, bool)> = std::fs::read_dir(fx.mnt.path())
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().into_string().expect("utf-8"),
                e.file_type().expect("type").is_dir(),
            )
        })
        .collect();
    assert!(kinds.contains(&("dir".into(), true)), "{kinds:?}");
    assert!(kinds.contains(&("hello.txt".into(), false)), "{kinds:?}");
    assert_eq!(
        errno(std::fs::read_dir(fx.path("hello.txt"))),
        libc::ENOTDIR
    );
    assert_eq!(errno(std::fs::metadata(fx.path("nope"))), libc::ENOENT);
    assert_eq!(
        errno(std::fs::metadata(fx.path("hello.txt/x"))),
        libc::ENOTDIR
    );
}

#[test]
fn stat_reports_exact_sizes_modes_owners_and_times() {
    let fx = Fixture::standard();
    for (title, bytes) in &fx.files {
        let m = std::fs::metadata(fx.path(title)).expect("stat");
        assert!(m.is_file(), "{title}");
        assert_eq!(m.len(), bytes.len() as u64, "{title}");
        assert_eq!(m.permissions().mode(), libc::S_IFREG | 0o444, "{title}");
        assert_eq!(m.nlink(), 1, "{title}");
        assert_eq!(m.blksize(), 4096, "{title}");
        assert_eq!(m.blocks(), (bytes.len() as u64).div_ceil(512), "{title}");
        assert_eq!(
            m.ino(),
            fx.tree.resolve_path(title).expect("in tree"),
            "inode of {title}"
        );
        assert_eq!(
            m.modified().expect("mtime"),
            UNIX_EPOCH + Duration::from_secs(CREATED_SECS),
            "{title}"
        );
        assert_eq!(m.ctime(), CREATED_SECS as i64, "{title}");
    }
    let root = std::fs::metadata(fx.mnt.path()).expect("stat root");
    assert_eq!(root.permissions().mode(), libc::S_IFDIR | 0o555);
    assert_eq!(root.ino(), 1);
    assert_eq!(root.nlink(), 3, "root holds one subdirectory");
    let dir = std::fs::metadata(fx.path("dir")).expect("stat dir");
    assert!(dir.is_dir());
    assert_eq!(dir.nlink(), 3, "dir holds one subdirectory");
    assert_eq!(
        std::fs::metadata(fx.path("dir/sub")).expect("stat").nlink(),
        2
    );
    let options = ocifs_fs_linux::MountOptions::default();
    assert_eq!((root.uid(), root.gid()), (options.uid, options.gid));
}

#[test]
fn owner_and_allow_other_come_from_the_options() {
    let fx = Builder::new(standard_files())
        .options(|o, _| {
            o.uid = 1234;
            o.gid = 5678;
            o.allow_other = true;
        })
        .mount();
    let m = std::fs::metadata(fx.path("hello.txt")).expect("stat");
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    // Root may still read a file it does not own under default_permissions.
    assert_eq!(
        std::fs::read(fx.path("hello.txt")).expect("read"),
        b"hello, world\n"
    );
    let line = fx.mountinfo();
    assert!(line.contains("allow_other"), "{line}");
    assert!(line.contains("default_permissions"), "{line}");
}

#[test]
fn contents_are_byte_identical() {
    let fx = Fixture::standard();
    for (title, bytes) in &fx.files {
        let got = std::fs::read(fx.path(title)).expect("read");
        assert!(
            got == *bytes,
            "{title}: {} bytes read, {} expected, contents differ",
            got.len(),
            bytes.len()
        );
    }
}

#[test]
fn reads_at_odd_offsets_are_byte_identical() {
    let fx = Fixture::standard();
    let bytes = &fx.files["big.bin"];
    let len = bytes.len();
    let file = std::fs::File::open(fx.path("big.bin")).expect("open");
    for (offset, n) in [
        (1, 1),
        (4095, 2),
        (4097, 8191),
        (1_000_003, 131_073),
        (len - 1, 10),
        (len - 4096, 4096),
        (3, 1 << 20),
    ] {
        let mut buf = vec![0; n];
        let got = file.read_at(&mut buf, offset as u64).expect("read_at");
        let want = n.min(len - offset);
        assert!(got > 0 && got <= want, "read_at({offset}, {n}) = {got}");
        assert!(
            buf[..got] == bytes[offset..offset + got],
            "read_at({offset}, {n}) differs"
        );
    }
    let mut buf = [0; 16];
    assert_eq!(file.read_at(&mut buf, len as u64).expect("read at end"), 0);
    assert_eq!(
        file.read_at(&mut buf, len as u64 + 12345)
            .expect("read past end"),
        0
    );
    assert_eq!(std::fs::read(fx.path("empty")).expect("read empty"), b"");
}

#[test]
fn sixteen_threads_read_concurrently_byte_identical() {
    let fx = Fixture::standard();
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let fx = &fx;
            s.spawn(move || {
                let order: Vec<&String> = if t % 2 == 0 {
                    fx.files.keys().collect()
                } else {
                    fx.files.keys().rev().collect()
                };
                for title in order {
                    let want = &fx.files[title];
                    let got = std::fs::read(fx.path(title)).expect("read");
                    assert!(got == *want, "thread {t}: {title} differs");
                    if want.len() > 1 {
                        let file = std::fs::File::open(fx.path(title)).expect("open");
                        let offsets = pseudo_random(8, t + 7);
                        for o in offsets {
                            let offset = (want.len() / 256) * o as usize;
                            let mut buf = vec![0; 10_000];
                            let n = file.read_at(&mut buf, offset as u64).expect("read_at");
                            assert!(
                                buf[..n] == want[offset..offset + n],
                                "thread {t}: {title} at {offset}"
                            );
                        }
                    }
                }
            });
        }
    });
}

#[test]
fn a_missing_blob_reads_as_eio_and_the_rest_still_works() {
    let mut files = standard_files();
    files.push(("broken.bin".into(), pseudo_random(10_000, 9)));
    let fx = Builder::new(files).missing("broken.bin").mount();
    let m = std::fs::metadata(fx.path("broken.bin")).expect("stat needs no blob");
    assert_eq!(m.len(), 10_000);
    assert_eq!(errno(std::fs::read(fx.path("broken.bin"))), libc::EIO);
    assert_eq!(
        std::fs::read(fx.path("hello.txt")).expect("read"),
        b"hello, world\n"
    );
    assert!(std::fs::read(fx.path("big.bin")).expect("read") == fx.files["big.bin"]);
    assert_eq!(
        errno(std::fs::read(fx.path("broken.bin"))),
        libc::EIO,
        "still failing, not hanging"
    );
    assert!(fx.mount().stats().read_errors >= 2);
}

#[test]
fn the_stats_file_is_hidden_json_taken_at_open() {
    let fx = Fixture::standard();
    let stats = fx.path(ocifs_fs_linux::STATS_FILE);
    assert!(
        !names(fx.mnt.path()).contains(ocifs_fs_linux::STATS_FILE),
        "listed"
    );
    let m = std::fs::metadata(&stats).expect("stat");
    assert!(m.is_file());
    assert_eq!(m.permissions().mode(), libc::S_IFREG | 0o444);

    let before: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats).expect("read")).expect("JSON");
    for key in [
        "lookups",
        "opens",
        "passthrough_opens",
        "reads",
        "read_errors",
        "requests",
        "bytes_fetched",
        "misses",
    ] {
        assert!(
            before.get(key).is_some_and(|v| v.is_u64()),
            "{key} missing from {before}"
        );
    }
    assert_eq!(
        std::fs::read(fx.path("hello.txt")).expect("read"),
        b"hello, world\n"
    );
    let after: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats).expect("read")).expect("JSON");
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().expect("number");
    assert!(
        n(&after, "reads") > n(&before, "reads"),
        "{before} -> {after}"
    );
    assert!(
        n(&after, "opens") > n(&before, "opens"),
        "{before} -> {after}"
    );
    assert!(
        n(&after, "bytes_fetched") >= n(&before, "bytes_fetched") + 13,
        "{before} -> {after}"
    );
    assert_eq!(n(&after, "read_errors"), 0);

    // Read in small pieces, the snapshot of one open stays whole.
    let file = std::fs::File::open(&stats).expect("open");
    let mut whole = Vec::new();
    let mut buf = [0; 7];
    loop {
        let got = file.read_at(&mut buf, whole.len() as u64).expect("read_at");
        if got == 0 {
            break;
        }
        whole.extend_from_slice(&buf[..got]);
    }
    serde_json::from_slice::<serde_json::Value>(&whole).expect("JSON in pieces");
    // Hidden only in listings: subdirectories have none.
    assert_eq!(
        errno(std::fs::metadata(fx.path("dir/.ocifs-stats"))),
        libc::ENOENT
    );
}

#[test]
fn mount_table_shows_a_read_only_ocifs_mount() {
    let fx = Fixture::standard();
    let line = fx.mountinfo();
    let (left, right) = line.split_once(" - ").expect("separator");
    let options: Vec<&str> = left
        .split(' ')
        .nth(5)
        .expect("options")
        .split(',')
        .collect();
    for o in ["ro", "nosuid", "nodev", "noatime"] {
        assert!(options.contains(&o), "{o} missing: {line}");
    }
    let mut right = right.split(' ');
    assert_eq!(right.next(), Some("fuse.ocifs"), "{line}");
    assert_eq!(
        right.next(),
        Some(format!("oci:{}:v1", fx.layout.path().display()).as_str()),
        "{line}"
    );
    assert!(statfs_blocks(&fx) > 0);
}

/// The block count statfs reports (through `stat -f`), checked against
/// the files' sizes.
fn statfs_blocks(fx: &Fixture) -> u64 {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%b %S"])
        .arg(fx.mnt.path())
        .output()
        .expect("stat -f");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let blocks: u64 = it.next().and_then(|b| b.parse().ok()).expect("blocks");
    let size: u64 = it.next().and_then(|b| b.parse().ok()).expect("block size");
    assert_eq!(size, 4096);
    let total: u64 = fx.files.values().map(|b| b.len() as u64).sum();
    assert_eq!(blocks, total.div_ceil(4096));
    blocks
}

//! Ending a mount: from the owner, from outside, while busy, while reads
//! are in flight.

use std::process::Command;
use std::time::Duration;

use crate::util::{Builder, Fixture, pseudo_random, standard_files, wait_until, within};

const LIMIT: Duration = Duration::from_secs(20);

fn is_mounted(path: &std::path::Path) -> bool {
    let mp = path.canonicalize().expect("canonical");
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.split(' ').nth(4) == mp.to_str())
}

fn slow_fixture() -> Fixture {
    let mut files = standard_files();
    files.push(("slow.bin".into(), pseudo_random(64 * 1024, 5)));
    Builder::new(files)
        .slow("slow.bin", Duration::from_secs(120))
        .mount()
}

/// Starts a read of `slow.bin` on another thread and waits until it is in
/// flight; the receiver gets the read's outcome (an errno on failure).
fn start_slow_read(fx: &Fixture) -> std::sync::mpsc::Receiver<Result<usize, Option<i32>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fx.path("slow.bin");
    std::thread::spawn(move || {
        let r = std::fs::read(&path);
        let _ = tx.send(r.map(|v| v.len()).map_err(|e| e.raw_os_error()));
    });
    wait_until(
        Duration::from_secs(10),
        "the slow read reached ocifs",
        || fx.mount().stats().reads > 0,
    );
    rx
}

#[test]
fn unmount_ends_the_session() {
    let mut fx = Fixture::standard();
    assert_eq!(
        std::fs::read(fx.path("hello.txt")).expect("read"),
        b"hello, world\n"
    );
    let mount = fx.take_mount();
    assert!(mount.is_mounted());
    within(LIMIT, "unmount", move || mount.unmount()).expect("unmount");
    assert!(!is_mounted(fx.mnt.path()));
}

#[test]
fn unmount_while_a_read_is_slow_does_not_hang() {
    let mut fx = slow_fixture();
    let read = start_slow_read(&fx);
    let mount = fx.take_mount();
    within(LIMIT, "unmount with a read in flight", move || {
        mount.unmount()
    })
    .expect("unmount");
    let outcome = read
        .recv_timeout(LIMIT)
        .expect("the slow read never returned");
    assert!(
        outcome.is_err(),
        "the read of a detached mount succeeded: {outcome:?}"
    );
    assert!(!is_mounted(fx.mnt.path()));
}

#[test]
fn drop_while_a_read_is_slow_does_not_hang() {
    let mut fx = slow_fixture();
    let read = start_slow_read(&fx);
    let mount = fx.take_mount();
    within(LIMIT, "drop with a read in flight", move || drop(mount));
    assert!(
        read.recv_timeout(LIMIT)
            .expect("the slow read never returned")
            .is_err()
    );
    assert!(!is_mounted(fx.mnt.path()));
}

#[test]
fn other_files_are_served_while_a_read_is_slow() {
    let fx = slow_fixture();
    let _read = start_slow_read(&fx);
    let (root, hello, big) = (fx.path(""), fx.path("hello.txt"), fx.path("big.bin"));
    let want = fx.files["big.bin"].clone();
    within(LIMIT, "reads beside a slow one", move || {
        assert_eq!(std::fs::read(hello).expect("read"), b"hello, world\n");
        assert!(std::fs::read(big).expect("read") == want);
        assert_eq!(std::fs::read_dir(root).expect("read_dir").count(), 5);
    });
}

#[test]
fn reads_fail_instead_of_hanging_once_the_runtime_is_gone() {
    let mut fx = slow_fixture();
    let read = start_slow_read(&fx);
    let replacement = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    std::mem::replace(&mut fx.runtime, replacement).shutdown_background();
    let outcome = read
        .recv_timeout(LIMIT)
        .expect("the slow read never returned");
    assert_eq!(outcome, Err(Some(libc::EIO)));
    let big = fx.path("big.bin");
    let fresh = within(LIMIT, "a read with no runtime", move || {
        std::fs::read(big).map_err(|e| e.raw_os_error())
    });
    assert_eq!(fresh, Err(Some(libc::EIO)));
    // Metadata does not need the runtime.
    assert_eq!(
        std::fs::metadata(fx.path("hello.txt")).expect("stat").len(),
        13
    );
}

#[test]
fn unmount_by_path_ends_join() {
    let mut fx = Fixture::standard();
    let mount = fx.take_mount();
    let joined = std::thread::spawn(move || mount.join());
    ocifs_fs_linux::unmount(fx.mnt.path(), false).expect("unmount by path");
    within(LIMIT, "join after an outside unmount", move || {
        joined.join().expect("join thread")
    })
    .expect("join");
    assert!(!is_mounted(fx.mnt.path()));
}

#[test]
fn umount_command_ends_join_and_unmounted() {
    let mut fx = Fixture::standard();
    let mount = fx.take_mount();
    let path = fx.mnt.path().to_owned();
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg(&path)
        .status()
        .expect("run fusermount3");
    assert!(status.success());
    let handle = fx.runtime.handle().clone();
    within(LIMIT, "unmounted() after fusermount3 -u", move || {
        handle.block_on(mount.unmounted());
        assert!(!mount.is_mounted());
        mount.join()
    })
    .expect("join");
}

#[test]
fn busy_unmount_says_so_and_lazy_detaches() {
    let mut fx = Fixture::standard();
    let open = std::fs::File::open(fx.path("big.bin")).expect("open");
    let err = ocifs_fs_linux::unmount(fx.mnt.path(), false).expect_err("unmount of a busy mount");
    assert_eq!(err.errno(), libc::EBUSY, "{err}");
    assert!(err.to_string().contains("file open"), "{err}");
    assert!(is_mounted(fx.mnt.path()));

    ocifs_fs_linux::unmount(fx.mnt.path(), true).expect("lazy unmount");
    assert!(!is_mounted(fx.mnt.path()));
    // Files already open keep working until closed.
    let mut buf = vec![0; 4096];
    let n = std::os::unix::fs::FileExt::read_at(&open, &mut buf, 4096).expect("read after detach");
    assert!(buf[..n] == fx.files["big.bin"][4096..4096 + n]);
    drop(open);
    let mount = fx.take_mount();
    within(LIMIT, "join after the last file closed", move || {
        mount.join()
    })
    .expect("join");
}

#[test]
fn unmount_refuses_what_is_not_an_ocifs_mount() {
    let fx = Fixture::standard();
    let plain = tempfile::tempdir().expect("dir");
    let err = ocifs_fs_linux::unmount(plain.path(), false).expect_err("a plain directory");
    assert!(err.to_string().contains("not a mount point"), "{err}");

    let tmpfs = tempfile::tempdir().expect("dir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(tmpfs.path())
        .status()
        .expect("mount");
    assert!(mounted.success());
    let err = ocifs_fs_linux::unmount(tmpfs.path(), true).expect_err("a tmpfs");
    let still = is_mounted(tmpfs.path());
    let _ = Command::new("umount").arg(tmpfs.path()).status();
    assert!(still, "unmount() unmounted a tmpfs");
    assert!(err.to_string().contains("not an ocifs"), "{err}");
    // The ocifs mount itself is fine to unmount by path.
    ocifs_fs_linux::unmount(fx.mnt.path(), false).expect("unmount");
}

/// Kills the helper process if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_dead_mount_can_be_unmounted_by_path() {
    use std::io::BufRead as _;

    // A child process mounts and is killed: the mount stays, served by no one.
    let exe = std::env::current_exe().expect("test binary");
    let child = Command::new(exe)
        .args([
            "--exact",
            "unmount::helper_mounts_and_waits",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn helper");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let line = within(LIMIT, "the helper mounting", move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split_once("MOUNTED ").map(|(_, rest)| rest.to_owned()))
            .expect("helper output")
    });
    let mut parts = line.split(' ');
    let (mnt, layout) = (
        std::path::PathBuf::from(parts.next().expect("mnt")),
        parts.next().expect("layout").to_owned(),
    );
    assert!(is_mounted(&mnt));
    drop(child);
    // Attributes may still come from the kernel's cache; a listing cannot.
    let listing = std::fs::read_dir(&mnt)
        .map(|_| ())
        .expect_err("a dead mount");
    assert_eq!(listing.raw_os_error(), Some(libc::ENOTCONN), "{listing}");

    ocifs_fs_linux::unmount(&mnt, false).expect("unmount a dead mount");
    assert!(!is_mounted(&mnt));
    let err = ocifs_fs_linux::unmount(&mnt, false).expect_err("already gone");
    assert!(err.to_string().contains("not a mount point"), "{err}");
    let _ = std::fs::remove_dir(&mnt);
    let _ = std::fs::remove_dir_all(layout);
}

const HELPER_ENV: &str = "OCIFS_FS_LINUX_TEST_HELPER";

#[test]
#[ignore = "helper of a_dead_mount_can_be_unmounted_by_path, run in a child process"]
fn helper_mounts_and_waits() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let fx = Fixture::standard();
    println!(
        "MOUNTED {} {}",
        fx.mnt.path().display(),
        fx.layout.path().display()
    );
    // Killed by the parent long before this.
    std::thread::sleep(Duration::from_secs(60));
}

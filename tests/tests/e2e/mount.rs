//! `ocifs mount` against the real registry, with real FUSE mounts: boot a
//! kernel from a mount, run CNI binaries from a mount, concurrent readers,
//! lazy reads that fetch a few chunks, a blob the registry lost, writes,
//! unmounting under load, and `--daemon` failures.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocifs_tests::{
    CountingProxy, Mounted, PushFile, PushOptions, Registry, RegistryAuth, ThrottleBlobs,
    is_mounted, oras_push, qemu_boot, random_bytes, run, run_ocifs, sha256_digest, temp_dir,
    workspace_dir,
};

use crate::support::{FileSpec, push_files};

const MIB: usize = 1 << 20;

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A busybox initrd whose `/init` prints `marker` and powers off.
fn busybox_initrd(dir: &Path, marker: &str) -> PathBuf {
    let root = dir.join("initrd-root");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static is installed (scripts/test installs it)");
    let init = root.join("init");
    std::fs::write(
        &init,
        format!("#!/bin/busybox sh\n/bin/busybox echo {marker}\n/bin/busybox poweroff -f\n"),
    )
    .expect("init");
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = dir.join("initrd.img");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
            root.display(),
            out.display()
        ))
        .status()
        .expect("cpio");
    assert!(status.success(), "building the initrd failed");
    out
}

#[test]
fn boots_a_kernel_from_a_mount() {
    let kernel = workspace_dir().join("target/fixtures/vmlinuz");
    assert!(
        kernel.is_file(),
        "{} is missing: scripts/test extracts it from Debian's linux-image package",
        kernel.display()
    );
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let marker = "OCIFS-BOOTED-FROM-A-MOUNT";
    let vmlinuz = dir.path().join("vmlinuz");
    std::fs::copy(&kernel, &vmlinuz).expect("copy kernel");
    let initrd = busybox_initrd(dir.path(), marker);
    oras_push(
        &registry.host(),
        "boot/debian:6.1",
        &[PushFile::new(&vmlinuz), PushFile::new(&initrd)],
        &PushOptions::default(),
    );
    let mnt = Mounted::new(
        &format!("{}/boot/debian:6.1", registry.host()),
        &["--plain-http"],
    );
    let out = run(qemu_boot(
        &mnt.path("vmlinuz"),
        &mnt.path("initrd.img"),
        180,
    ));
    assert!(
        out.stdout_str().contains(marker),
        "the kernel booted from the mount did not run /init:\n{}\n{}",
        out.stdout_str(),
        out.stderr
    );
}

#[test]
fn runs_cni_binaries_from_a_mount() {
    let registry = Registry::start(RegistryAuth::None);
    let cni = Path::new("/usr/lib/cni");
    let files: Vec<PushFile> = ["loopback", "bridge", "host-local"]
        .iter()
        .map(|n| PushFile::new(cni.join(n)))
        .collect();
    assert!(
        files.iter().all(|f| f.path.is_file()),
        "containernetworking-plugins is not installed (scripts/test installs it)"
    );
    oras_push(
        &registry.host(),
        "cni/plugins:v1",
        &files,
        &PushOptions::default(),
    );
    let mnt = Mounted::new(
        &format!("{}/cni/plugins:v1", registry.host()),
        &["--plain-http", "--file-mode", "0555"],
    );
    for name in ["loopback", "bridge", "host-local"] {
        let meta = std::fs::metadata(mnt.path(name)).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o555, "{name}");
        assert_eq!(
            meta.len(),
            std::fs::metadata(cni.join(name)).expect("stat").len(),
            "{name} size"
        );
        let mut cmd = Command::new(mnt.path(name));
        cmd.env("CNI_COMMAND", "VERSION");
        let out = run(cmd);
        assert!(
            out.stdout_str().contains("cniVersion"),
            "{name} from the mount printed: {} / {}",
            out.stdout_str(),
            out.stderr
        );
    }
    // Bytes identical to the originals.
    for name in ["loopback", "bridge"] {
        let a = std::fs::read(mnt.path(name)).expect("read");
        assert!(
            a == std::fs::read(cni.join(name)).expect("read"),
            "{name} differs"
        );
    }
}

#[test]
fn sixteen_processes_read_many_files_concurrently() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let files: Vec<FileSpec> = (0..8)
        .map(|i| FileSpec {
            title: Box::leak(format!("f{i}.bin").into_boxed_str()),
            content: random_bytes(MIB / 2 + i * 300_001, 100 + i as u64),
            media_type: None,
        })
        .collect();
    push_files(&registry, dir.path(), "many:v1", &files);
    let mnt = Mounted::new(&format!("{}/many:v1", registry.host()), &["--plain-http"]);
    let children: Vec<_> = (0..16)
        .map(|p| {
            let mut c = Command::new("sh");
            // Each process reads every file, starting at a different one.
            let order: Vec<String> = (0..8)
                .map(|i| {
                    mnt.path(&format!("f{}.bin", (i + p) % 8))
                        .display()
                        .to_string()
                })
                .collect();
            c.arg("-c")
                .arg(format!(
                    "for f in {}; do sha256sum \"$f\"; done",
                    order.join(" ")
                ))
                .stdout(Stdio::piped());
            c.spawn().expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success());
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let (sum, path) = line.split_once("  ").expect("sha256sum line");
            let name = Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .expect("name");
            let want = files.iter().find(|f| f.title == name).expect("known file");
            assert_eq!(
                format!("sha256:{sum}"),
                sha256_digest(&want.content),
                "{name}"
            );
        }
    }
    let stats = run_ocifs(["stats".into(), mnt.dir().display().to_string()]);
    let json = stats.success().json();
    assert_eq!(json["read_errors"].as_u64(), Some(0));
    assert!(json["blobs_verified"].as_u64() >= Some(8), "{json}");
}

#[test]
fn a_lazy_4k_read_in_the_middle_of_a_1_gib_blob_fetches_a_few_chunks() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let big = dir.path().join("big.bin");
    {
        // Written in pieces: a 1 GiB buffer is not needed to make a 1 GiB file.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).expect("create"));
        for i in 0..1024 {
            std::io::Write::write_all(&mut f, &random_bytes(MIB, 7000 + i)).expect("write");
        }
    }
    oras_push(
        &registry.host(),
        "huge:v1",
        &[PushFile::new(&big)],
        &PushOptions::default(),
    );
    let proxy = CountingProxy::start(&registry.host());
    let mnt = Mounted::new(
        &format!("{}/huge:v1", proxy.host()),
        &["--plain-http", "--verify", "lazy"],
    );
    assert_eq!(
        std::fs::metadata(mnt.path("big.bin")).expect("stat").len(),
        1 << 30,
        "size before any byte is fetched"
    );
    proxy.reset();
    let mut f = std::fs::File::open(mnt.path("big.bin")).expect("open");
    let offset = (512 * MIB + 12_345) as u64;
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0u8; 4096];
    f.read_exact(&mut buf).expect("read");
    assert!(
        buf == random_bytes(MIB, 7000 + 512)[12_345..12_345 + 4096],
        "wrong bytes"
    );
    let fetched = proxy.blob_bytes();
    assert!(
        fetched > 0 && fetched <= 4 * MIB as u64,
        "a 4 KiB read fetched {fetched} bytes: {}",
        proxy.describe()
    );
}

#[test]
fn a_lazy_sequential_read_of_a_large_blob_is_one_stream_in_bounded_memory_and_ends_checked_whole() {
    const SIZE: usize = 160 * MIB;
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let big = dir.path().join("big.bin");
    let mut whole = Vec::with_capacity(SIZE);
    for i in 0..(SIZE / MIB) as u64 {
        whole.extend_from_slice(&random_bytes(MIB, 9100 + i));
    }
    std::fs::write(&big, &whole).expect("write");
    oras_push(
        &registry.host(),
        "long:v1",
        &[PushFile::new(&big)],
        &PushOptions::default(),
    );
    let proxy = CountingProxy::start(&registry.host());
    let mnt = Mounted::new(
        &format!("{}/long:v1", proxy.host()),
        &[
            "--plain-http",
            "--verify",
            "lazy",
            "--memory-cache-size",
            "1M",
        ],
    );
    proxy.reset();
    let mut got = Vec::with_capacity(SIZE);
    let mut f = std::fs::File::open(mnt.path("big.bin")).expect("open");
    let mut buf = vec![0u8; MIB];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == whole, "wrong bytes ({} read)", got.len());
    // Streaming it, the mount held no more than the bound, which
    // does not grow with the blob: 64 MiB + its memory tier (1 MiB here).
    // Before one heap for all threads, it peaked at 70–83 MiB so.
    let peak = ocifs_tests::peak_rss_mib(ocifs_tests::daemon_pid(mnt.dir()));
    assert!(
        peak <= 65.0,
        "the mount peaked at {peak:.1} MiB resident streaming {} MiB",
        SIZE / MIB
    );
    // The first run of reads by range (16 MiB of them start the stream,
    // and the kernel's read-ahead has a few more in flight), then one
    // stream of the rest: a handful of requests, not one per few MiB (76
    // before lazy streams), and each byte about once.
    let gets = proxy.blob_gets();
    let streams = gets
        .iter()
        .filter(|g| g.range.as_deref().is_none_or(|r| r.ends_with('-')))
        .count();
    assert!(
        gets.len() <= 24 && streams == 1,
        "{} blob requests, {streams} to the end: {}",
        gets.len(),
        proxy.describe()
    );
    let fetched = proxy.blob_bytes();
    assert!(
        fetched >= SIZE as u64 && fetched <= (SIZE + 2 * MIB) as u64,
        "{fetched} bytes fetched for a {SIZE}-byte blob: {}",
        proxy.describe()
    );
    // Read to its end, the blob is checked whole and kept.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let json = run_ocifs(["stats".into(), mnt.dir().display().to_string()])
            .success()
            .json();
        if json["blobs_verified"].as_u64() == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "never checked whole: {json}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_blob_the_registry_lost_reads_as_eio_and_the_mount_stays_up() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let files = vec![
        FileSpec {
            title: "kept.txt",
            content: b"still here\n".to_vec(),
            media_type: None,
        },
        FileSpec {
            title: "lost.bin",
            content: random_bytes(MIB, 55),
            media_type: None,
        },
    ];
    push_files(&registry, dir.path(), "lost:v1", &files);
    let lost = registry.blob_data_path(&sha256_digest(&files[1].content));
    std::fs::remove_dir_all(lost.parent().expect("blob dir"))
        .expect("removing the blob from storage");
    let mnt = Mounted::new(
        &format!("{}/lost:v1", registry.host()),
        &["--plain-http", "--timeout", "10"],
    );
    let err = std::fs::read(mnt.path("lost.bin")).expect_err("a lost blob was read");
    assert_eq!(
        err.raw_os_error(),
        Some(libc_eio()),
        "{err}\nmount log:\n{}",
        mnt.log()
    );
    assert_eq!(
        std::fs::read(mnt.path("kept.txt")).expect("the other file"),
        files[0].content
    );
    let names: Vec<String> = std::fs::read_dir(mnt.dir())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_title_that_escapes_the_root_fails_the_mount_naming_the_layer() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let evil = dir.path().join("evil.txt");
    std::fs::write(&evil, b"evil").expect("write");
    let ok = dir.path().join("ok.txt");
    std::fs::write(&ok, b"ok").expect("write");
    oras_push(
        &registry.host(),
        "evil:v1",
        &[
            PushFile::new(&ok),
            PushFile::new(&evil).title("../../etc/evil"),
        ],
        &PushOptions::default(),
    );
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let reference = format!("{}/evil:v1", registry.host());
    let digest = sha256_digest(b"evil");
    run_ocifs([
        "mount",
        "--daemon",
        "--plain-http",
        &reference,
        &mnt.display().to_string(),
    ])
    .code_is(7)
    .stderr_has(&digest)
    .stderr_has("../../etc/evil");
    assert!(!is_mounted(&mnt));
    run_ocifs(["ls", "--plain-http", &reference])
        .code_is(7)
        .stderr_has(&digest);
}

#[test]
fn a_foreground_mount_unmounts_cleanly_on_sigterm() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    push_files(
        &registry,
        dir.path(),
        "fg:v1",
        &[FileSpec {
            title: "a.txt",
            content: b"a".to_vec(),
            media_type: None,
        }],
    );
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mut child = ocifs_tests::ocifs()
        .args(["mount", "--plain-http", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .arg(format!("{}/fg:v1", registry.host()))
        .arg(&mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_until("the mount", Duration::from_secs(30), || is_mounted(&mnt));
    assert_eq!(std::fs::read(mnt.join("a.txt")).expect("read"), b"a");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "ocifs mount did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit {exit:?}");
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
}

/// `ocifs umount` returns once the daemon has ended, its cache settled: a
/// script that unmounts and then lists, removes or reuses the cache never
/// races the daemon's last writes. (Before, it returned while the daemon
/// still dropped unchecked chunks and moved blobs into place; the
/// benchmark's `rm -rf` of a cache after its unmount left blobs behind for
/// its next round.)
#[test]
fn ocifs_umount_returns_once_the_daemon_has_ended_and_its_cache_is_settled() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let files: Vec<FileSpec> = ["a.bin", "b.bin", "c.bin", "d.bin"]
        .iter()
        .zip(0u64..)
        .map(|(title, i)| FileSpec {
            title,
            content: random_bytes(8 * MIB, 700 + i),
            media_type: None,
        })
        .collect();
    push_files(&registry, dir.path(), "settle:v1", &files);
    let cache = dir.path().join("cache");
    let cache_arg = cache.display().to_string();
    let reference = format!("{}/settle:v1", registry.host());
    for verify in ["lazy", "strict"] {
        let _ = std::fs::remove_dir_all(&cache);
        let mnt = Mounted::new(
            &reference,
            &[
                "--plain-http",
                "--verify",
                verify,
                "--cache-dir",
                &cache_arg,
            ],
        );
        let pid = ocifs_tests::daemon_pid(mnt.dir());
        let stats = run_ocifs(["stats".into(), mnt.dir().display().to_string()])
            .success()
            .json();
        assert_eq!(
            stats["server"]["pid"].as_u64(),
            Some(u64::from(pid)),
            "the stats name the daemon: {stats}"
        );
        // Lazy: the first page of each (the rest is being completed in the
        // background); strict: all of each (each checked out and is being
        // moved into place).
        for (f, spec) in files.iter().enumerate() {
            let path = mnt.path(spec.title);
            if verify == "lazy" {
                let mut page = vec![0u8; 4096];
                std::fs::File::open(&path)
                    .and_then(|mut h| h.read_exact(&mut page))
                    .expect("read");
                assert!(
                    page[..] == files[f].content[..4096],
                    "{verify} {}",
                    spec.title
                );
            } else {
                assert!(
                    std::fs::read(&path).expect("read") == spec.content,
                    "{verify} {}",
                    spec.title
                );
            }
        }
        let log = mnt.log();
        mnt.unmount();
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_owned)
            });
        assert!(
            state.as_deref().is_none_or(|s| s.starts_with('Z')),
            "{verify}: the daemon (pid {pid}) still runs after ocifs umount returned: {state:?}\n{log}"
        );
        // Settled: every blob is complete, or (lazy, not completed) gone
        // with its unchecked chunks; none is left half written.
        let listed = run_ocifs([
            "cache".into(),
            "ls".into(),
            "--json".into(),
            "--cache-dir".into(),
            cache_arg.clone(),
        ])
        .success()
        .json();
        let blobs = listed.as_array().expect("a list");
        for blob in blobs {
            assert_eq!(blob["state"], "complete", "{verify}: {listed}");
        }
        if verify == "strict" {
            for spec in &files {
                let digest = sha256_digest(&spec.content);
                assert!(
                    blobs.iter().any(|b| b["digest"] == digest.as_str()),
                    "{verify}: {} is not in the cache: {listed}",
                    spec.title
                );
            }
        }
    }
}

/// Regression: a `--daemon` mount without `--log-file` died at its first
/// warning, because its stderr was a pipe to the parent that had exited and
/// the logger reported the failed write with a panicking `eprintln!`.
#[test]
fn a_daemon_keeps_serving_after_logging_to_a_closed_stderr() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let files = vec![
        FileSpec {
            title: "kept.txt",
            content: b"still here\n".to_vec(),
            media_type: None,
        },
        FileSpec {
            title: "lost.bin",
            content: random_bytes(4096, 56),
            media_type: None,
        },
    ];
    push_files(&registry, dir.path(), "quiet:v1", &files);
    let lost = registry.blob_data_path(&sha256_digest(&files[1].content));
    std::fs::remove_dir_all(lost.parent().expect("blob dir")).expect("removing the blob");
    let mnt_dir = dir.path().join("mnt");
    std::fs::create_dir(&mnt_dir).expect("mkdir");
    let cache = dir.path().join("cache");
    run_ocifs([
        "mount",
        "--daemon",
        "--plain-http",
        "--cache-dir",
        &cache.display().to_string(),
        &format!("{}/quiet:v1", registry.host()),
        &mnt_dir.display().to_string(),
    ])
    .success();
    for _ in 0..3 {
        // Each failed read logs a warning to the daemon's dead stderr.
        let err = std::fs::read(mnt_dir.join("lost.bin")).expect_err("lost blob read");
        assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    }
    assert_eq!(
        std::fs::read(mnt_dir.join("kept.txt")).expect("the daemon died"),
        files[0].content
    );
    run_ocifs(["umount", &mnt_dir.display().to_string()]).success();
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn writes_fail_with_erofs_and_unmounting_under_reads_does_not_hang() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let files = vec![FileSpec {
        title: "slow.bin",
        content: random_bytes(16 * MIB, 66),
        media_type: None,
    }];
    push_files(&registry, dir.path(), "ro:v1", &files);
    let proxy = CountingProxy::start(&registry.host());
    proxy.set_hook(Some(Arc::new(ThrottleBlobs(2 * MIB as u64))));
    let mnt = Mounted::new(&format!("{}/ro:v1", proxy.host()), &["--plain-http"]);
    for (what, r) in [
        (
            "create",
            std::fs::write(mnt.path("new.txt"), b"x").map(|_| ()),
        ),
        (
            "write",
            std::fs::OpenOptions::new()
                .write(true)
                .open(mnt.path("slow.bin"))
                .map(|_| ()),
        ),
        ("mkdir", std::fs::create_dir(mnt.path("d"))),
        (
            "rename",
            std::fs::rename(mnt.path("slow.bin"), mnt.path("fast.bin")),
        ),
        ("unlink", std::fs::remove_file(mnt.path("slow.bin"))),
        (
            "chmod",
            std::fs::set_permissions(mnt.path("slow.bin"), std::fs::Permissions::from_mode(0o777)),
        ),
    ] {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(30), "{what}: {e}"); // EROFS
    }
    // A read that takes seconds (throttled), then an unmount in its middle.
    let path = mnt.path("slow.bin");
    let reader = std::thread::spawn(move || std::fs::read(path).map(|b| b.len()));
    std::thread::sleep(Duration::from_millis(700));
    let start = Instant::now();
    run_ocifs([
        "umount".into(),
        "--lazy".into(),
        mnt.dir().display().to_string(),
    ])
    .success();
    wait_until("the mount to go", Duration::from_secs(30), || {
        !is_mounted(mnt.dir())
    });
    let result = reader.join().expect("reader thread");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "unmount under a read hung"
    );
    // Either the read finished before the unmount or it failed: it must not hang or return short data.
    if let Ok(len) = result {
        assert_eq!(len, 16 * MIB);
    }
}

#[test]
fn daemon_failures_exit_non_zero_and_leave_nothing_mounted() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    push_files(
        &registry,
        dir.path(),
        "d:v1",
        &[FileSpec {
            title: "a.txt",
            content: b"a".to_vec(),
            media_type: None,
        }],
    );
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let m = mnt.display().to_string();
    let host = registry.host();
    run_ocifs([
        "mount",
        "--daemon",
        "--plain-http",
        &format!("{host}/d:nope"),
        &m,
    ])
    .code_is(3)
    .stderr_has("not found");
    assert!(!is_mounted(&mnt));
    run_ocifs([
        "mount",
        "--daemon",
        "--plain-http",
        &format!("{host}/d:v1"),
        &format!("{m}/missing"),
    ])
    .code_is(1)
    .stderr_has("missing");
    let file = dir.path().join("file");
    std::fs::write(&file, b"").expect("write");
    run_ocifs([
        "mount",
        "--daemon",
        "--plain-http",
        &format!("{host}/d:v1"),
        &file.display().to_string(),
    ])
    .code_is(1)
    .stderr_has("not a directory");
    run_ocifs([
        "mount",
        "--daemon",
        "--plain-http",
        "-o",
        "rw",
        &format!("{host}/d:v1"),
        &m,
    ])
    .code_is(1)
    .stderr_has("unknown mount option");
    assert!(!is_mounted(&mnt));
    // And the good one works, then `umount` of a non-ocifs directory is refused.
    let good = Mounted::new(&format!("{host}/d:v1"), &["--plain-http"]);
    assert_eq!(std::fs::read(good.path("a.txt")).expect("read"), b"a");
    run_ocifs(["umount", &dir.path().display().to_string()]).code_is(1);
}

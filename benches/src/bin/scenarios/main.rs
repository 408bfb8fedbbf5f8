//! The side-by-side scenario benchmark. See the crate docs.
//!
//! Every figure in the table is measured in this run, on this machine, next
//! to the reference it is divided by.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocifs_benches::{Row, table};
use ocifs_core::Hasher;
use ocifs_core::{BlobReader as _, RegistryOptions, RegistryRef, RegistrySource, Verify};
use ocifs_core::{CacheOptions, ChunkCache, DiskStore};
use ocifs_tests::{
    CountingProxy, PushFile, PushOptions, Registry, RegistryAuth, oras_pull, oras_push, qemu_boot,
    workspace_dir,
};

mod fleet;
mod images;
mod vm;

const MIB: u64 = 1 << 20;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    size: u64,
    digest: String,
}

/// A file of `size` pseudo-random bytes (incompressible, fast to make).
fn random_file(size: u64, seed: u64) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.bin");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    let mut hasher = Hasher::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut block = vec![0u8; MIB as usize];
    for _ in 0..size / MIB {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        hasher.update(&block);
        out.write_all(&block).expect("write");
    }
    out.flush().expect("flush");
    Fixture {
        _dir: dir,
        path,
        size,
        digest: hasher.finish().to_string(),
    }
}

fn ocifs_bin() -> PathBuf {
    std::env::var_os("OCIFS_BIN").map_or_else(
        || workspace_dir().join("target/release/ocifs"),
        PathBuf::from,
    )
}

fn timed(mut cmd: Command) -> Duration {
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// The publisher's step: `ocifs index --bind TAG` of `host/reference`.
/// False, with a note, for an ocifs that has no `index` command (an older
/// build measured for a before figure): the rows "index bound" are then
/// left out.
fn bind_index(host: &str, reference: &str, tag: &str) -> bool {
    let cache = tempfile::tempdir().expect("tempdir");
    let out = Command::new(ocifs_bin())
        .args(["index", "--plain-http", "--cache-dir"])
        .arg(cache.path())
        .arg(format!("{host}/{reference}"))
        .args(["--bind", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run ocifs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("unrecognized subcommand") {
        eprintln!("this ocifs has no `index` command: the rows \"index bound\" are left out");
        return false;
    }
    assert!(
        out.status.success(),
        "ocifs index {reference} failed: {stderr}"
    );
    true
}

/// Drops the page cache so that a "warm" read comes from disk; false where
/// the machine does not allow it.
fn drop_page_cache() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Writes out what earlier rows left dirty, before a cold row: the kernel
/// writing back a gigabyte behind the next program's writes slows them by
/// seconds on this VM, whichever program it is, so each cold row starts
/// with nothing dirty (and the registry's blob still in the page cache).
fn settle() {
    let _ = Command::new("sync").status();
}

/// How many times each cold row runs (each from an empty cache, after
/// [`settle`]); the row is the fastest. This VM slows down for seconds at a
/// time (a `curl -o file` of the same blob took 0.7 s in one run and 2.2 s
/// in another): the fastest is what each tool costs when nothing else gets
/// in its way, for all of them alike.
fn cold_rounds(quick: bool) -> usize {
    if quick { 1 } else { 3 }
}

/// The fastest of `rounds` warm reads, each after the page cache was
/// dropped (so each comes from the disk); false in the pair where the
/// machine does not allow dropping it.
fn fastest_warm(rounds: usize, mut run: impl FnMut() -> Duration) -> (Duration, bool) {
    let mut dropped = true;
    let d = (0..rounds)
        .map(|_| {
            dropped &= drop_page_cache();
            run()
        })
        .min()
        .unwrap_or_default();
    (d, dropped)
}

/// The fastest of `rounds` runs of `run`, each after [`settle`].
fn fastest(rounds: usize, mut run: impl FnMut() -> Duration) -> Duration {
    (0..rounds)
        .map(|_| {
            settle();
            run()
        })
        .min()
        .unwrap_or_default()
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn curl_blob(host: &str, repo: &str, digest: &str) -> Duration {
    let mut c = Command::new("curl");
    c.args([
        "-sf",
        "-o",
        "/dev/null",
        &format!("http://{host}/v2/{repo}/blobs/{digest}"),
    ]);
    timed(c)
}

fn ocifs_cat(host: &str, reference: &str, file: &str, cache: &Path, extra: &[&str]) -> Duration {
    let mut c = Command::new(ocifs_bin());
    c.args(["cat", "--plain-http", "--cache-dir"])
        .arg(cache)
        .args(extra)
        .arg(format!("{host}/{reference}"))
        .arg(file);
    timed(c)
}

/// Reads 4 KiB from the middle of the blob through an in-process cache and
/// returns (time, bytes the registry sent).
async fn random_read(
    proxy: &CountingProxy,
    repo: &str,
    blob: &ocifs_core::Descriptor,
    verify: Verify,
) -> (Duration, u64) {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let reference = RegistryRef::parse(&format!("{}/{repo}:v1", proxy.host())).expect("reference");
    let options = RegistryOptions {
        plain_http: true,
        ..RegistryOptions::default()
    };
    proxy.reset();
    let start = Instant::now();
    let source = RegistrySource::connect(&reference, options)
        .await
        .expect("connect");
    let store = Arc::new(DiskStore::open(cache_dir.path()).expect("store"));
    let cache = ChunkCache::new(
        Arc::new(source),
        Some(store),
        CacheOptions {
            verify,
            ..CacheOptions::default()
        },
    )
    .expect("cache");
    let bytes = cache
        .read_blob(blob, blob.size / 2, 4096)
        .await
        .expect("read");
    assert_eq!(bytes.len(), 4096);
    (start.elapsed(), proxy.blob_bytes())
}

/// Mounts `reference` with `ocifs mount --daemon`; returns how long it took.
fn mount(host: &str, reference: &str, mnt: &Path, cache: &Path, extra: &[&str]) -> Duration {
    let mut c = Command::new(ocifs_bin());
    c.args(["mount", "--daemon", "--plain-http", "--cache-dir"])
        .arg(cache)
        .args(extra)
        .arg(format!("{host}/{reference}"))
        .arg(mnt);
    timed(c)
}

/// Mounts `reference` at `mnt`, runs `then` and unmounts; returns the
/// seconds from the start of the mount to the end of `then`, and what
/// `then` returned.
fn mount_then<T>(
    host: &str,
    reference: &str,
    mnt: &Path,
    cache: &Path,
    extra: &[&str],
    then: impl FnOnce() -> T,
) -> (f64, T) {
    let start = Instant::now();
    mount(host, reference, mnt, cache, extra);
    let out = then();
    let secs = start.elapsed().as_secs_f64();
    umount(mnt);
    (secs, out)
}

/// A cache directory under `work` that no round used before: a round must
/// start from an empty cache even if the last one's could not be removed.
/// (Until 2026-12-08 the rounds of a row shared one path, and `ocifs umount`
/// returned before the daemon had finished writing to it, so its removal
/// could fail halfway and the next round found blobs complete: some "cold"
/// rows were partly warm.)
fn fresh_cache(work: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cache = work.join(format!("cache-{n}"));
    assert!(!cache.exists(), "{} exists", cache.display());
    cache
}

/// Removes a round's cache, saying so if it could not.
fn remove_cache(cache: &Path) {
    if let Err(e) = std::fs::remove_dir_all(cache) {
        eprintln!("warning: removing {}: {e}", cache.display());
    }
}

fn umount(mnt: &Path) {
    let _ = Command::new(ocifs_bin()).arg("umount").arg(mnt).status();
}

/// The pid of the ocifs process serving `mnt`.
/// CPU time a process has taken, user and system, in seconds (the
/// kernel counts it in USER_HZ, 100 a second).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime are the 14th and 15th fields; state, the 3rd, is
    // the first after the name.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

fn daemon_pid(mnt: &Path) -> Option<u32> {
    let needle = mnt.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        (args.iter().any(|a| *a == b"mount")
            && args.contains(&needle.as_bytes())
            && !args.iter().any(|a| *a == b"--daemon"))
        .then_some(pid)
    })
}

fn read_all(path: &Path) -> Duration {
    use std::io::Read as _;
    let start = Instant::now();
    let mut f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; MIB as usize];
    while f.read(&mut buf).expect("read") > 0 {}
    start.elapsed()
}

fn read_4k_at(path: &Path, offset: u64) {
    use std::io::{Read as _, Seek as _};
    let mut f = std::fs::File::open(path).expect("open");
    f.seek(std::io::SeekFrom::Start(offset)).expect("seek");
    let mut buf = [0u8; 4096];
    f.read_exact(&mut buf).expect("read");
}

#[allow(clippy::too_many_arguments)]
fn mount_scenarios(
    host: &str,
    proxy: &CountingProxy,
    fixture: &Fixture,
    label: &str,
    curl_rate: f64,
    curl_file: f64,
    local_rate: f64,
    skopeo_secs: f64,
    bound: bool,
    rounds: usize,
    rows: &mut Vec<Row>,
) {
    let size = fixture.size;
    let work = tempfile::tempdir().expect("tempdir");
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let file = mnt.join("big.bin");

    // Time to the first 4 KiB: mount + one read in the middle, cold cache.
    let scenario = format!("mount + first 4 KiB at the middle, {label}");
    let mut lazy_secs = 0.0;
    for (tool, extra) in [
        ("ocifs mount, strict", &[][..]),
        ("ocifs mount, lazy", &["--verify", "lazy"][..]),
    ] {
        let cache = work.path().join(format!("ttfb-{}", tool.len()));
        let (secs, ()) = mount_then(host, "bench/big:v1", &mnt, &cache, extra, || {
            read_4k_at(&file, size / 2);
        });
        lazy_secs = secs;
        rows.push(Row::new(
            scenario.clone(),
            tool,
            secs,
            "s",
            Some(skopeo_secs),
        ));
    }
    if bound {
        // Strict with the index `ocifs index --bind` pushed: timed straight
        // to the registry, its bytes counted through the proxy.
        let cache = work.path().join("ttfb-bound");
        let (secs, ()) = mount_then(host, "bench/big:v1-indexed", &mnt, &cache, &[], || {
            read_4k_at(&file, size / 2);
        });
        rows.push(Row::new(
            scenario.clone(),
            "ocifs mount, strict, index bound (ratio to lazy; goal <= 2)",
            secs,
            "s",
            Some(lazy_secs),
        ));
        let cache = work.path().join("ttfb-bound-counted");
        proxy.reset();
        mount_then(
            &proxy.host(),
            "bench/big:v1-indexed",
            &mnt,
            &cache,
            &[],
            || read_4k_at(&file, size / 2),
        );
        rows.push(Row::new(
            format!("bytes fetched to read 4 KiB at the middle, {label}"),
            "ocifs mount, strict, index bound (the chunks read and the index)",
            proxy.blob_bytes() as f64,
            "bytes",
            Some(size as f64),
        ));
    }

    // Cold sequential read through the mount, and the daemon's peak memory
    // (the most of any round).
    let scenario = if rounds > 1 {
        format!("cold sequential read through a mount, {label}, best of {rounds}")
    } else {
        format!("cold sequential read through a mount, {label}")
    };
    for (tool, extra) in [
        ("ocifs mount, strict", &[][..]),
        ("ocifs mount, lazy", &["--verify", "lazy"][..]),
    ] {
        let mut rss: Option<f64> = None;
        let d = fastest(rounds, || {
            let cache = fresh_cache(work.path());
            mount(host, "bench/big:v1", &mnt, &cache, extra);
            let d = read_all(&file);
            if let Some(r) = daemon_pid(&mnt).map(ocifs_tests::peak_rss_mib) {
                rss = Some(rss.map_or(r, |m| m.max(r)));
            }
            umount(&mnt);
            remove_cache(&cache);
            d
        });
        rows.push(Row::new(
            scenario.clone(),
            tool,
            mbps(size, d),
            "MB/s",
            Some(curl_rate),
        ));
        rows.push(Row::new(
            scenario.clone(),
            format!("{tool} (ratio to curl -o file)"),
            mbps(size, d),
            "MB/s",
            Some(curl_file),
        ));
        if let Some(rss) = rss {
            rows.push(Row::new(
                format!("peak RSS of the mount process streaming {label}"),
                tool,
                rss,
                "MiB",
                Some(size as f64 / MIB as f64),
            ));
        }
    }

    // Warm: the blob is complete in the cache; page cache dropped before each read.
    let cache = work.path().join("warm");
    mount(host, "bench/big:v1", &mnt, &cache, &[]);
    read_all(&file);
    umount(&mnt);
    let note = if drop_page_cache() {
        "page cache dropped"
    } else {
        "page cache NOT dropped (not permitted here)"
    };
    let scenario = if rounds > 1 {
        format!("warm sequential read through a mount, {label}, {note}, best of {rounds}")
    } else {
        format!("warm sequential read through a mount, {label}, {note}")
    };
    let warm = |tool: &str, d: Duration| {
        Row::new(
            scenario.clone(),
            tool,
            mbps(size, d),
            "MB/s",
            Some(local_rate),
        )
    };
    // Each kind the fastest of `rounds` fresh mounts (this VM's disk reads
    // the same file at 440 MB/s one minute and 1400 the next).
    for (tool, extra) in [
        ("ocifs mount, passthrough", &[][..]),
        ("ocifs mount, no passthrough", &["--no-passthrough"][..]),
    ] {
        let mut second = Duration::MAX;
        let (d, _) = fastest_warm(rounds, || {
            mount(host, "bench/big:v1", &mnt, &cache, extra);
            let d = read_all(&file);
            if extra.is_empty() {
                // The first open of a mount hashed the whole blob before it
                // handed the file to the kernel (what passthrough trusts); a
                // second open in the same mount reads as the disk does.
                drop_page_cache();
                second = second.min(read_all(&file));
            }
            umount(&mnt);
            d
        });
        rows.push(warm(tool, d));
        if extra.is_empty() {
            rows.push(warm(
                "ocifs mount, passthrough, a second open (checked already)",
                second,
            ));
        }
    }
    // The cost of checking bytes at rest: the first read of a process checks
    // each chunk against the blob's table; a second read in the same mount
    // (memory tier kept small, so the bytes come from disk again) finds them
    // checked already and hashes nothing. This VM slows down for seconds
    // at a time (its disk and its CPUs alike: a slow read takes more CPU
    // time too): five rounds of a fresh mount each, the best of each kind,
    // which is what each costs when nothing else gets in its way.
    const ROUNDS: usize = 5;
    let mut runs: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    // The daemon's CPU time for each read, the least of each kind.
    let mut cpu = [f64::MAX; 2];
    for _ in 0..ROUNDS {
        mount(
            host,
            "bench/big:v1",
            &mnt,
            &cache,
            &["--no-passthrough", "--memory-cache-size", "1M"],
        );
        let pid = daemon_pid(&mnt);
        for (kind, cpu) in runs.iter_mut().zip(&mut cpu) {
            drop_page_cache();
            let before = pid.and_then(cpu_secs);
            kind.push(read_all(&file));
            if let (Some(a), Some(b)) = (before, pid.and_then(cpu_secs)) {
                *cpu = cpu.min(b - a);
            }
        }
        umount(&mnt);
    }
    let mut rates = Vec::new();
    for (tool, mut ds) in [
        "ocifs mount, no passthrough, 1M memory tier, chunks checked at rest",
        "ocifs mount, no passthrough, 1M memory tier, chunks checked already",
    ]
    .into_iter()
    .zip(runs)
    {
        ds.sort();
        let d = ds[0];
        rates.push(mbps(size, d));
        rows.push(warm(&format!("{tool} (best of {ROUNDS} mounts)"), d));
    }
    if cpu.iter().all(|c| *c < f64::MAX) {
        for (tool, secs) in [
            "ocifs mount, chunks checked at rest",
            "ocifs mount, chunks checked already",
        ]
        .into_iter()
        .zip(cpu)
        {
            rows.push(Row::new(
                format!(
                    "the mount process's CPU time per GiB read warm, {label} (user + system, least of {ROUNDS} mounts)"
                ),
                tool,
                secs * (1u64 << 30) as f64 / size as f64,
                "s",
                Some(cpu[1] * (1u64 << 30) as f64 / size as f64),
            ));
        }
    }
    // The integrity issue's goal, as a ratio of its own.
    rows.push(Row::new(
        format!("{scenario}: at-rest checking against none (goal >= 0.9)"),
        "ocifs mount, chunks checked at rest (ratio to checked already)",
        rates[0],
        "MB/s",
        Some(rates[1]),
    ));
}

/// 16 files read at once, each by its own reader: curl vs a mount.
fn parallel_readers(host: &str, mib_each: u64, rounds: usize, rows: &mut Vec<Row>) {
    let work = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for i in 0..16u64 {
        let path = work.path().join(format!("f{i:02}.bin"));
        let f = random_file(mib_each * MIB, i + 1);
        std::fs::rename(&f.path, &path).expect("move");
        files.push((path, f.digest));
    }
    let push: Vec<PushFile> = files.iter().map(|(p, _)| PushFile::new(p)).collect();
    oras_push(host, "bench/many:v1", &push, &PushOptions::default());
    let total = 16 * mib_each * MIB;
    let scenario = if rounds > 1 {
        format!("16 parallel readers, 16 x {mib_each} MiB, aggregate, best of {rounds}")
    } else {
        format!("16 parallel readers, 16 x {mib_each} MiB, aggregate")
    };
    let d = fastest(rounds, || {
        let start = Instant::now();
        let curls: Vec<_> = files
            .iter()
            .map(|(_, d)| {
                Command::new("curl")
                    .args([
                        "-sf",
                        "-o",
                        "/dev/null",
                        &format!("http://{host}/v2/bench/many/blobs/{d}"),
                    ])
                    .spawn()
                    .expect("curl")
            })
            .collect();
        for mut c in curls {
            assert!(c.wait().expect("wait").success());
        }
        start.elapsed()
    });
    let curl_rate = mbps(total, d);
    rows.push(Row::new(
        scenario.clone(),
        "16 x curl",
        curl_rate,
        "MB/s",
        None,
    ));
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    for (tool, extra) in [
        ("ocifs mount, strict", &[][..]),
        ("ocifs mount, lazy", &["--verify", "lazy"][..]),
    ] {
        let d = fastest(rounds, || {
            let cache = fresh_cache(work.path());
            mount(host, "bench/many:v1", &mnt, &cache, extra);
            let start = Instant::now();
            let readers: Vec<_> = files
                .iter()
                .map(|(p, _)| {
                    let path = mnt.join(p.file_name().expect("name"));
                    std::thread::spawn(move || read_all(&path))
                })
                .collect();
            for r in readers {
                r.join().expect("reader");
            }
            let d = start.elapsed();
            umount(&mnt);
            remove_cache(&cache);
            d
        });
        rows.push(Row::new(
            scenario.clone(),
            tool,
            mbps(total, d),
            "MB/s",
            Some(curl_rate),
        ));
    }
}

/// Boots Debian's kernel with a busybox initrd under qemu (TCG), from local
/// files and from a mount with a cold cache. Needs `target/fixtures/vmlinuz`
/// (made by scripts/test) and busybox-static.
fn boot(host: &str, rows: &mut Vec<Row>) {
    let kernel = workspace_dir().join("target/fixtures/vmlinuz");
    assert!(
        kernel.is_file() && Path::new("/bin/busybox").is_file(),
        "the boot scenario needs target/fixtures/vmlinuz and busybox-static: run scripts/test once"
    );
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox");
    std::fs::write(
        root.join("init"),
        "#!/bin/busybox sh\n/bin/busybox echo BOOTED\n/bin/busybox poweroff -f\n",
    )
    .expect("init");
    let _ = Command::new("chmod")
        .arg("755")
        .arg(root.join("init"))
        .status();
    let initrd = work.path().join("initrd.img");
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
            root.display(),
            initrd.display()
        ))
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "building the initrd failed");
    let vmlinuz = work.path().join("vmlinuz");
    std::fs::copy(&kernel, &vmlinuz).expect("kernel");
    oras_push(
        host,
        "bench/boot:v1",
        &[PushFile::new(&vmlinuz), PushFile::new(&initrd)],
        &PushOptions::default(),
    );
    let qemu = |k: &Path, i: &Path| {
        let start = Instant::now();
        let out = qemu_boot(k, i, 300).output().expect("qemu");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("BOOTED"),
            "the kernel did not boot"
        );
        start.elapsed().as_secs_f64()
    };
    let scenario = "boot Debian's kernel + busybox initrd (qemu TCG)";
    let local = qemu(&vmlinuz, &initrd);
    rows.push(Row::new(scenario, "from local files", local, "s", None));
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let cache = work.path().join("cache");
    let (from_mount, _) = mount_then(host, "bench/boot:v1", &mnt, &cache, &[], || {
        qemu(&mnt.join("vmlinuz"), &mnt.join("initrd.img"))
    });
    rows.push(Row::new(
        scenario,
        "ocifs mount + boot, cold cache",
        from_mount,
        "s",
        Some(local),
    ));
}

/// What a cold `ocifs prefetch` of the blob costs the system, scaled to a
/// GiB: syscalls (`strace -c -f`) and the files and directories it makes in
/// the cache (successful `openat` with `O_CREAT`, and `mkdir`). Format 1 of
/// the cache made two files a chunk: 2,048 a GiB.
fn work_per_gib(host: &str, size: u64, rows: &mut Vec<Row>) {
    let per_gib = |n: f64| n * (1024 * MIB) as f64 / size as f64;
    let traced = |trace: &[&str]| -> String {
        let cache = tempfile::tempdir().expect("tempdir");
        let out = cache.path().join("strace.out");
        let mut c = Command::new("strace");
        c.args(["-f", "-o"]).arg(&out).args(trace).arg(ocifs_bin());
        c.args(["prefetch", "--plain-http", "--cache-dir"])
            .arg(cache.path().join("c"))
            .arg(format!("{host}/bench/big:v1"))
            .arg("big.bin");
        timed(c);
        std::fs::read_to_string(&out).expect("strace output")
    };
    let summary = traced(&["-c"]);
    let total: f64 = summary
        .lines()
        .find(|l| l.trim_end().ends_with("total"))
        // % time, seconds, usecs/call, calls, [errors,] "total"
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .expect("strace -c prints a total line");
    // The reference rows are the figures of cache format 1 (commit
    // fecd20b), measured once the same way on the development VM: that
    // code is gone, so it cannot run beside this one.
    let scenario = "work per GiB fetched, cold ocifs prefetch, strict";
    rows.push(Row::new(
        scenario,
        "syscalls, cache format 1 (fecd20b; measured once, not in this run)",
        22_362.0,
        "calls",
        None,
    ));
    rows.push(Row::new(
        scenario,
        "syscalls (strace -c -f)",
        per_gib(total),
        "calls",
        Some(22_362.0),
    ));
    rows.push(Row::new(
        scenario,
        "files and directories made, cache format 1 (fecd20b; measured once, not in this run)",
        2_073.0,
        "files",
        None,
    ));
    let calls = traced(&["-e", "trace=openat,mkdir,mkdirat"]);
    let made = calls
        .lines()
        .filter(|l| {
            let ok = !l.contains("= -1");
            ok && ((l.contains("openat(") && l.contains("O_CREAT")) || l.contains("mkdir"))
        })
        .count();
    rows.push(Row::new(
        scenario,
        "files and directories made (successful openat O_CREAT, mkdir)",
        per_gib(made as f64),
        "files",
        Some(2_073.0),
    ));
}

/// The scenarios on a blob of random bytes (1 GiB, 256 MiB with
/// `--quick`): whole and partial reads, cold and warm, through `ocifs cat`
/// and a mount, and 16 parallel readers.
fn blob_scenarios(host: &str, proxy: &CountingProxy, quick: bool, rows: &mut Vec<Row>) {
    let size = if quick { 256 * MIB } else { 1024 * MIB };
    eprintln!("== pushing a {} MiB blob with oras", size / MIB);
    let host = host.to_owned();
    let fixture = random_file(size, 0);
    oras_push(
        &host,
        "bench/big:v1",
        &[PushFile::new(&fixture.path)],
        &PushOptions::default(),
    );
    // The publisher's step: a chunk-digest index bound to a copy of the
    // manifest (`ocifs index --bind`), for the strict rows "index bound".
    let bound = bind_index(&host, "bench/big:v1", "v1-indexed");
    let blob = ocifs_core::Descriptor {
        media_type: "application/octet-stream".into(),
        digest: fixture.digest.parse().expect("digest"),
        size: fixture.size,
        annotations: Default::default(),
        platform: None,
        artifact_type: None,
        urls: vec![],
    };
    let label = format!("{} MiB blob", size / MIB);

    eprintln!("== cold sequential read");
    let rounds = cold_rounds(quick);
    let cold_label = if rounds > 1 {
        format!("{label}, best of {rounds}")
    } else {
        label.clone()
    };
    let curl = (0..2)
        .map(|_| curl_blob(&host, "bench/big", &fixture.digest))
        .min()
        .unwrap_or_default();
    let curl_rate = mbps(size, curl);
    rows.push(Row::new(
        format!("cold sequential read, {cold_label}"),
        "curl (network ceiling)",
        curl_rate,
        "MB/s",
        None,
    ));
    let to_file = tempfile::tempdir().expect("tempdir");
    let curl_file = mbps(
        size,
        fastest(rounds, || {
            let mut c = Command::new("curl");
            c.args(["-sf", "-o"])
                .arg(to_file.path().join("blob"))
                .arg(format!(
                    "http://{host}/v2/bench/big/blobs/{}",
                    fixture.digest
                ));
            let d = timed(c);
            let _ = std::fs::remove_file(to_file.path().join("blob"));
            d
        }),
    );
    rows.push(Row::new(
        format!("cold sequential read, {cold_label}"),
        "curl -o file (network + disk write)",
        curl_file,
        "MB/s",
        Some(curl_rate),
    ));
    // What a cache that keeps its promise of durability must do at least:
    // write the blob and sync it (ocifs syncs a blob before it promotes it).
    let synced = to_file.path().join("synced");
    let curl_synced = mbps(
        size,
        fastest(rounds, || {
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!(
                "curl -sf -o '{f}' 'http://{host}/v2/bench/big/blobs/{digest}' && sync -d '{f}'",
                f = synced.display(),
                digest = fixture.digest
            ));
            let d = timed(c);
            let _ = std::fs::remove_file(&synced);
            d
        }),
    );
    rows.push(Row::new(
        format!("cold sequential read, {cold_label}"),
        "curl -o file + sync -d (network + disk write + sync)",
        curl_synced,
        "MB/s",
        Some(curl_rate),
    ));
    for (tool, extra) in [
        ("ocifs cat, strict", &[][..]),
        ("ocifs cat, lazy", &["--verify", "lazy"][..]),
    ] {
        let d = fastest(rounds, || {
            let cache = tempfile::tempdir().expect("tempdir");
            ocifs_cat(&host, "bench/big:v1", "big.bin", cache.path(), extra)
        });
        rows.push(Row::new(
            format!("cold sequential read, {cold_label}"),
            tool,
            mbps(size, d),
            "MB/s",
            Some(curl_rate),
        ));
        // The goal of the throughput issue is stated against a download
        // to a file, which writes the same gigabyte.
        rows.push(Row::new(
            format!("cold sequential read, {cold_label}"),
            format!("{tool} (ratio to curl -o file)"),
            mbps(size, d),
            "MB/s",
            Some(curl_file),
        ));
    }

    let prefetch = mbps(
        size,
        fastest(rounds, || {
            let cache = tempfile::tempdir().expect("tempdir");
            let mut c = Command::new(ocifs_bin());
            c.args(["prefetch", "--plain-http", "--cache-dir"])
                .arg(cache.path())
                .arg(format!("{host}/bench/big:v1"))
                .arg("big.bin");
            timed(c)
        }),
    );
    rows.push(Row::new(
        format!("cold sequential read, {cold_label}"),
        "ocifs prefetch, strict (ratio to curl -o file)",
        prefetch,
        "MB/s",
        Some(curl_file),
    ));
    rows.push(Row::new(
        format!("cold sequential read, {cold_label}"),
        "ocifs prefetch, strict (ratio to curl -o file + sync -d)",
        prefetch,
        "MB/s",
        Some(curl_synced),
    ));
    work_per_gib(&host, size, rows);

    eprintln!("== warm sequential read");
    let cache = tempfile::tempdir().expect("tempdir");
    ocifs_cat(&host, "bench/big:v1", "big.bin", cache.path(), &[]);
    // Each the fastest of `rounds` reads from the disk: the reference moves
    // by 3x between minutes on this VM, for every reader alike.
    let (local, dropped) = fastest_warm(rounds, || {
        let mut c = Command::new("cat");
        c.arg(&fixture.path);
        timed(c)
    });
    let local = mbps(size, local);
    let note = if dropped {
        "page cache dropped"
    } else {
        "page cache NOT dropped (not permitted here)"
    };
    let warm_label = if rounds > 1 {
        format!("warm sequential read, {label}, {note}, best of {rounds}")
    } else {
        format!("warm sequential read, {label}, {note}")
    };
    rows.push(Row::new(
        warm_label.clone(),
        "cat of a local copy (disk ceiling)",
        local,
        "MB/s",
        None,
    ));
    let (d, _) = fastest_warm(rounds, || {
        ocifs_cat(
            &host,
            "bench/big:v1",
            "big.bin",
            cache.path(),
            &["--offline"],
        )
    });
    rows.push(Row::new(
        warm_label,
        "ocifs cat, cached, --offline",
        mbps(size, d),
        "MB/s",
        Some(local),
    ));

    eprintln!("== 4 KiB at the middle of the blob");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (t_strict, b_strict) = rt.block_on(random_read(proxy, "bench/big", &blob, Verify::Strict));
    let (t_lazy, b_lazy) = rt.block_on(random_read(proxy, "bench/big", &blob, Verify::Lazy));
    let scenario = format!("bytes fetched to read 4 KiB at the middle, {label}");
    rows.push(Row::new(
        scenario.clone(),
        "the blob's size",
        size as f64,
        "bytes",
        None,
    ));
    rows.push(Row::new(
        scenario.clone(),
        "ocifs, strict",
        b_strict as f64,
        "bytes",
        Some(size as f64),
    ));
    rows.push(Row::new(
        scenario,
        "ocifs, lazy",
        b_lazy as f64,
        "bytes",
        Some(size as f64),
    ));

    let skopeo_dir = tempfile::tempdir().expect("tempdir");
    let mut c = Command::new("skopeo");
    c.args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{host}/bench/big:v1"),
    ])
    .arg(format!(
        "oci:{}:v1",
        skopeo_dir.path().join("copy").display()
    ));
    let skopeo = timed(c);
    drop(skopeo_dir);
    let scenario = format!("time to the first 4 KiB at the middle, {label}");
    rows.push(Row::new(
        scenario.clone(),
        "skopeo copy of the artifact",
        skopeo.as_secs_f64(),
        "s",
        None,
    ));
    let oras_dir = tempfile::tempdir().expect("tempdir");
    let start = Instant::now();
    oras_pull(&host, "bench/big:v1", oras_dir.path());
    let oras = start.elapsed();
    drop(oras_dir);
    rows.push(Row::new(
        scenario.clone(),
        "oras pull (oras-py) of the artifact",
        oras.as_secs_f64(),
        "s",
        Some(skopeo.as_secs_f64()),
    ));
    rows.push(Row::new(
        scenario.clone(),
        "ocifs, strict",
        t_strict.as_secs_f64(),
        "s",
        Some(skopeo.as_secs_f64()),
    ));
    rows.push(Row::new(
        scenario,
        "ocifs, lazy",
        t_lazy.as_secs_f64(),
        "s",
        Some(skopeo.as_secs_f64()),
    ));

    eprintln!("== through a mount");
    mount_scenarios(
        &host,
        proxy,
        &fixture,
        &label,
        curl_rate,
        curl_file,
        local,
        skopeo.as_secs_f64(),
        bound,
        rounds,
        rows,
    );

    eprintln!("== 16 parallel readers");
    parallel_readers(&host, if quick { 8 } else { 32 }, rounds, rows);
}

const USAGE: &str =
    "usage: scenarios [--quick] [--only blob,rootfs,chunked,layout,package,boot,fleet]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let groups = [
        "blob", "rootfs", "chunked", "layout", "package", "boot", "fleet",
    ];
    let only: Option<Vec<String>> = match args.iter().position(|a| a == "--only") {
        None => None,
        Some(i) => {
            let list: Vec<String> = args
                .get(i + 1)
                .map(|l| l.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            if list.is_empty() || list.iter().any(|g| !groups.contains(&g.as_str())) {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
            Some(list)
        }
    };
    if args
        .iter()
        .enumerate()
        .any(|(i, a)| a != "--quick" && a != "--only" && (i == 0 || args[i - 1] != "--only"))
    {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    let wants = |group: &str| only.as_ref().is_none_or(|o| o.iter().any(|g| g == group));
    // $OCIFS_BIN names another build (CI runs this with the debug one,
    // as a smoke test of the benchmark itself); otherwise the release
    // build is brought up to date.
    if std::env::var_os("OCIFS_BIN").is_none() {
        eprintln!("== building ocifs (release)");
        let status = Command::new("cargo")
            .args(["build", "--release", "-q", "-p", "ocifs"])
            .current_dir(workspace_dir())
            .status()
            .expect("cargo");
        assert!(status.success(), "cargo build failed");
    }

    eprintln!("== starting a registry");
    let registry = Registry::start(RegistryAuth::None);
    let proxy = CountingProxy::start(&registry.host());
    let host = registry.host();
    let mut rows = Vec::new();
    if wants("blob") {
        blob_scenarios(&host, &proxy, quick, &mut rows);
    }
    if wants("rootfs") {
        eprintln!("== container image rootfs");
        images::rootfs(&host, &proxy, &mut rows);
    }
    if wants("chunked") {
        eprintln!("== eStargz and zstd:chunked images");
        images::chunked(&mut rows);
    }
    if wants("layout") {
        eprintln!("== container image rootfs as an OCI layout");
        images::layout_reads(&mut rows);
    }
    if wants("package") {
        eprintln!("== a CNI plugin out of a zip package");
        images::package(&host, &proxy, &mut rows);
    }
    if wants("boot") {
        eprintln!("== boot from a mount");
        boot(&host, &mut rows);
        eprintln!("== boot a VM from a disk image on a mount");
        vm::disk_boot(&host, if quick { 1 } else { 3 }, &mut rows);
    }
    if wants("fleet") {
        eprintln!("== a fleet behind mirrors");
        fleet::fleet(quick, &mut rows);
    }

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "Measured by `cargo run --release -p ocifs-benches --bin scenarios{}` on {cpus} CPUs, Linux {}, loopback registry (CNCF distribution).\n",
        if args.is_empty() {
            String::new()
        } else {
            format!(" -- {}", args.join(" "))
        },
        kernel.trim()
    );
    print!("{}", table(&rows));
}

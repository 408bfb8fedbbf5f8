//! Faults between ocifs and the registry, injected by the test proxy: error
//! statuses, resets and truncations mid-body, short bodies, ignored ranges,
//! stalls and flipped bits. ocifs must serve the right bytes or a clear
//! error: never a wrong byte, never a hang, never a lost or poisoned cache.
//!
//! The figures (reads tried, faults by kind, wrong bytes) are printed to
//! stderr; `cargo test … faults:: -- --nocapture` shows them.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocifs_tests::{
    CountingProxy, Disposition, Fault, HookFn, Mounted, RandomFaults, Registry, RegistryAuth,
    daemon_pid, random_bytes, run_ocifs, temp_dir,
};
use tempfile::TempDir;

use crate::support::{FileSpec, push_files};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const EIO: i32 = 5;
const ETIMEDOUT: i32 = 110;

/// A live `ocifs mount --daemon` of `reference` on a cache directory the
/// test chooses, logging at `-vv` (retries and resumptions show).
fn mount_on(reference: &str, cache: &Path, extra: &[&str]) -> Mounted {
    let cache = cache.display().to_string();
    let mut args = vec!["-v", "--plain-http", "--cache-dir", &cache];
    args.extend_from_slice(extra);
    Mounted::new(reference, &args)
}

/// The last 40 lines of a mount's log, for failure messages.
fn log_tail(mount: &Mounted) -> String {
    let log = mount.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `ocifs stats` of a mount.
fn stats(mount: &Mounted) -> serde_json::Value {
    run_ocifs(["stats".into(), mount.dir().display().to_string()])
        .success()
        .json()
}

/// A registry with `files` pushed as `faults:v1`, and a proxy in front.
struct Fixture {
    _registry: Registry,
    proxy: CountingProxy,
    dir: TempDir,
    files: Vec<FileSpec>,
}

impl Fixture {
    fn new(files: Vec<FileSpec>) -> Self {
        let registry = Registry::start(RegistryAuth::None);
        let dir = temp_dir();
        push_files(&registry, dir.path(), "faults:v1", &files);
        let proxy = CountingProxy::start(&registry.host());
        Fixture {
            _registry: registry,
            proxy,
            dir,
            files,
        }
    }

    fn reference(&self) -> String {
        format!("{}/faults:v1", self.proxy.host())
    }

    fn cache(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn mount(&self, cache: &str, extra: &[&str]) -> Mounted {
        mount_on(&self.reference(), &self.cache(cache), extra)
    }
}

fn file(title: &'static str, len: usize, seed: u64) -> FileSpec {
    FileSpec {
        title,
        content: random_bytes(len, seed),
        media_type: None,
    }
}

/// Files of several sizes: below a chunk, a few chunks, many chunks.
fn assorted_files() -> Vec<FileSpec> {
    vec![
        file("tiny.bin", 1000, 11),
        file("small.bin", 200 * KIB, 12),
        file("one.bin", 1536 * KIB, 13),
        file("dir/five.bin", 5 * MIB, 14),
        file("dir/sub/twelve.bin", 12 * MIB + 321, 15),
    ]
}

/// splitmix64, for reproducible read patterns.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What a batch of reads came to.
#[derive(Debug, Default)]
struct Tally {
    reads: u64,
    bytes: u64,
    wrong_bytes: u64,
    short_reads: u64,
    errors: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.reads += other.reads;
        self.bytes += other.bytes;
        self.wrong_bytes += other.wrong_bytes;
        self.short_reads += other.short_reads;
        self.errors.extend(other.errors);
    }
}

/// `reads` random reads (file, offset, length up to 192 KiB) spread over
/// `threads` threads, each checked byte by byte against the pushed content.
fn random_reads(mount: &Mounted, files: &[FileSpec], reads: u64, threads: u64, seed: u64) -> Tally {
    let per_thread = reads / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let paths: Vec<PathBuf> = files.iter().map(|f| mount.path(f.title)).collect();
            let contents: Vec<Vec<u8>> = files.iter().map(|f| f.content.clone()).collect();
            let count = if t == threads - 1 {
                reads - per_thread * (threads - 1)
            } else {
                per_thread
            };
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (t << 32));
                let mut tally = Tally::default();
                for _ in 0..count {
                    let i = rng.below(paths.len() as u64) as usize;
                    let data = &contents[i];
                    let offset = rng.below(data.len() as u64);
                    let len = 1 + rng.below(192 * KIB as u64);
                    tally.reads += 1;
                    let want_end = (offset + len).min(data.len() as u64) as usize;
                    let want = &data[offset as usize..want_end];
                    let mut buf = vec![0u8; len as usize];
                    let result = std::fs::File::open(&paths[i]).and_then(|f| {
                        let mut got = 0;
                        while got < buf.len() {
                            let n = f.read_at(&mut buf[got..], offset + got as u64)?;
                            if n == 0 {
                                break;
                            }
                            got += n;
                        }
                        Ok(got)
                    });
                    match result {
                        Ok(got) => {
                            tally.bytes += got as u64;
                            if got != want.len() {
                                tally.short_reads += 1;
                            }
                            tally.wrong_bytes += buf[..got.min(want.len())]
                                .iter()
                                .zip(want)
                                .filter(|(a, b)| a != b)
                                .count() as u64;
                        }
                        Err(e) => tally
                            .errors
                            .push(format!("{} at {offset}+{len}: {e}", paths[i].display())),
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for h in handles {
        total.add(h.join().expect("reader thread"));
    }
    total
}

fn report(what: &str, tally: &Tally, faults: &BTreeMap<String, u64>, requests: usize) {
    let injected: u64 = faults.values().sum();
    eprintln!(
        "{what}: {} reads ({} bytes), {requests} blob requests, {injected} faults injected {faults:?}, \
         {} wrong bytes, {} short reads, {} errors",
        tally.reads,
        tally.bytes,
        tally.wrong_bytes,
        tally.short_reads,
        tally.errors.len()
    );
}

fn assert_all_right(what: &str, tally: &Tally, mount: &Mounted, proxy: &CountingProxy) {
    assert!(
        tally.wrong_bytes == 0 && tally.short_reads == 0 && tally.errors.is_empty(),
        "{what}: {} wrong bytes, {} short reads, errors: {:#?}\nmount log:\n{}\nrequests:\n{}",
        tally.wrong_bytes,
        tally.short_reads,
        &tally.errors[..tally.errors.len().min(10)],
        log_tail(mount),
        proxy.describe()
    );
}

#[test]
fn a_thousand_random_reads_under_transient_faults_are_right_lazy() {
    let fx = Fixture::new(assorted_files());
    // Small chunks: more chunks to miss, more requests to fault.
    let mount = fx.mount(
        "lazy",
        // Chunk by chunk, as a large blob is read: no background completion.
        &[
            "--verify",
            "lazy",
            "--background-fetch-max",
            "0",
            "--chunk-size",
            "64K",
            "--timeout",
            "30",
        ],
    );
    fx.proxy.reset();
    fx.proxy.set_hook(Some(Arc::new(RandomFaults::new(
        8,
        0.10,
        &Fault::TRANSIENT,
    ))));
    let tally = random_reads(&mount, &fx.files, 1000, 8, 0x1a2b);
    fx.proxy.set_hook(None);
    let faults = fx.proxy.faults();
    report("lazy", &tally, &faults, fx.proxy.blob_gets().len());
    assert_all_right("lazy", &tally, &mount, &fx.proxy);
    assert_eq!(tally.reads, 1000);
    assert!(
        faults.values().sum::<u64>() >= 10 && faults.len() >= 5,
        "too few faults fired to mean anything: {faults:?}"
    );
    assert_eq!(stats(&mount)["read_errors"].as_u64(), Some(0));
}

#[test]
fn a_thousand_random_reads_under_transient_faults_are_right_strict() {
    let fx = Fixture::new(assorted_files());
    fx.proxy.reset();
    fx.proxy.set_hook(Some(Arc::new(RandomFaults::new(
        9,
        0.10,
        &Fault::TRANSIENT,
    ))));
    // Strict mode fetches each blob once, whole: ten rounds, each a new
    // mount on a new cache, so that there are fetches to fault.
    let mut tally = Tally::default();
    for round in 0..10u64 {
        let mount = fx.mount(&format!("strict-{round}"), &["--timeout", "30"]);
        let t = random_reads(&mount, &fx.files, 100, 8, 0x3c4d + round);
        assert_all_right("strict", &t, &mount, &fx.proxy);
        tally.add(t);
        assert_eq!(stats(&mount)["read_errors"].as_u64(), Some(0));
    }
    fx.proxy.set_hook(None);
    let faults = fx.proxy.faults();
    report("strict", &tally, &faults, fx.proxy.blob_gets().len());
    assert_eq!(tally.reads, 1000);
    assert!(
        faults.values().sum::<u64>() >= 3,
        "too few faults fired to mean anything: {faults:?}"
    );
}

/// The errno of a failed read, and how long it took.
fn timed_read(path: &Path) -> (Result<Vec<u8>, i32>, Duration) {
    let start = Instant::now();
    let r = std::fs::read(path).map_err(|e| e.raw_os_error().unwrap_or(-1));
    (r, start.elapsed())
}

/// A counter of the mount's `ocifs stats`.
fn counter(mount: &Mounted, name: &str) -> u64 {
    let stats = stats(mount);
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
}

/// Waits until every blob `GET` the proxy saw was answered and each one
/// ended in a verification failure in the mount (a kernel readahead may
/// still be fetching when the read that caused it returned). Returns the
/// `GET`s.
fn settled_flipped_gets(mount: &Mounted, proxy: &CountingProxy, failures_before: u64) -> usize {
    // Generous: only a hang runs into it.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let gets = proxy.blob_gets();
        let failures = counter(mount, "verify_failures") - failures_before;
        if gets.iter().all(|r| r.status != 0) && failures == gets.len() as u64 {
            return gets.len();
        }
        assert!(
            Instant::now() < deadline,
            "{} blob GETs, {failures} verification failures\n{}\n{}",
            gets.len(),
            proxy.describe(),
            log_tail(mount)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Strict mode never serves a byte of a blob that failed its digest. No
/// wall-clock bound: the cost of a failure is counted in fetches (one
/// whole-blob `GET` per verification failure, never retried by ocifs
/// itself), and `--timeout` is generous, so a hang shows as `ETIMEDOUT`
/// and a slow machine as nothing at all.
#[test]
fn flipped_bits_never_reach_a_reader_in_strict_mode() {
    let fx = Fixture::new(assorted_files());
    let mount = fx.mount("strict", &["--timeout", "60"]);
    let digests: Vec<String> = fx
        .files
        .iter()
        .map(|f| ocifs_tests::sha256_digest(&f.content))
        .collect();
    let gets_of = |digest: &str| -> Vec<ocifs_tests::RequestRecord> {
        fx.proxy
            .blob_gets()
            .into_iter()
            .filter(|r| r.path.ends_with(digest))
            .collect()
    };
    // Every blob GET flipped: every read fails with EIO (a verification
    // failure, not a timeout), and every GET was the whole blob, fetched
    // once per verification failure.
    fx.proxy.reset();
    let verified_before = counter(&mount, "blobs_verified");
    let failures_before = counter(&mount, "verify_failures");
    fx.proxy.set_hook(Some(Arc::new(RandomFaults::new(
        21,
        1.0,
        &[Fault::FlipBits],
    ))));
    for f in &fx.files {
        let (r, took) = timed_read(&mount.path(f.title));
        let r = r.map(|b| b.len());
        assert_eq!(
            r,
            Err(EIO),
            "{} (after {took:?})\n{}",
            f.title,
            log_tail(&mount)
        );
    }
    let persistent = settled_flipped_gets(&mount, &fx.proxy, failures_before);
    fx.proxy.set_hook(None);
    for (f, digest) in fx.files.iter().zip(&digests) {
        let gets = gets_of(digest);
        assert!(!gets.is_empty(), "{}: no fetch", f.title);
        for get in &gets {
            assert!(
                get.fault.as_deref() == Some("flip-bits")
                    && get.body_bytes == f.content.len() as u64,
                "{}: {get}",
                f.title
            );
        }
    }
    assert_eq!(counter(&mount, "blobs_verified"), verified_before);

    // The first two GETs of each blob flipped (its last byte, then its
    // first), the later ones not: a read is right or EIO, never wrong;
    // each failed read cost at least one flipped GET, so the third read
    // is right at the latest, and the blob took exactly three whole GETs.
    fx.proxy.reset();
    let failures_before = counter(&mount, "verify_failures");
    let sizes: std::collections::HashMap<String, u64> = digests
        .iter()
        .cloned()
        .zip(fx.files.iter().map(|f| f.content.len() as u64))
        .collect();
    let seen = std::sync::Mutex::new(std::collections::HashMap::<String, u64>::new());
    fx.proxy.set_hook(Some(Arc::new(HookFn(
        move |r: &ocifs_tests::RequestInfo| {
            let Some((digest, size)) = sizes
                .iter()
                .find(|(d, _)| r.is_blob_get() && r.path.ends_with(d.as_str()))
            else {
                return Disposition::Forward;
            };
            let mut seen = seen.lock().expect("hook state");
            let n = seen.entry(digest.clone()).or_default();
            *n += 1;
            match *n {
                1 => Disposition::FlipBits {
                    at: size - 1,
                    mask: 0x80,
                },
                2 => Disposition::FlipBits { at: 0, mask: 0x01 },
                _ => Disposition::Forward,
            }
        },
    ))));
    let (mut tries, mut failed) = (0, 0);
    for (f, digest) in fx.files.iter().zip(&digests) {
        for attempt in 1.. {
            tries += 1;
            match std::fs::read(mount.path(f.title)) {
                Ok(bytes) => {
                    assert!(bytes == f.content, "{}: wrong bytes served", f.title);
                    break;
                }
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(EIO), "{}: {e}", f.title);
                    assert!(
                        attempt < 3,
                        "{}: read {attempt} failed after two flipped fetches\n{}\n{}",
                        f.title,
                        fx.proxy.describe(),
                        log_tail(&mount)
                    );
                    failed += 1;
                }
            }
        }
        // Read again: from the verified blob, no fetch.
        assert!(std::fs::read(mount.path(f.title)).expect("read again") == f.content);
        let gets = gets_of(digest);
        let faults: Vec<Option<&str>> = gets.iter().map(|r| r.fault.as_deref()).collect();
        assert_eq!(
            faults,
            [Some("flip-bits"), Some("flip-bits"), None],
            "{}\n{}",
            f.title,
            fx.proxy.describe()
        );
        assert!(
            gets.iter().all(|r| r.body_bytes == f.content.len() as u64),
            "{}: not whole-blob fetches\n{}",
            f.title,
            fx.proxy.describe()
        );
    }
    fx.proxy.set_hook(None);
    assert_eq!(
        counter(&mount, "verify_failures") - failures_before,
        2 * fx.files.len() as u64
    );
    assert_eq!(
        counter(&mount, "blobs_verified") - verified_before,
        fx.files.len() as u64
    );
    eprintln!(
        "flip-bits, strict: every GET flipped: {} reads, all EIO, {persistent} whole-blob GETs; \
         first two GETs of each blob flipped: {tries} reads, {failed} EIO, 0 wrong bytes, \
         3 GETs a blob",
        fx.files.len()
    );
    drop(mount);
    // Only verified blobs were kept.
    run_ocifs([
        "cache".into(),
        "verify".into(),
        "--cache-dir".into(),
        fx.cache("strict").display().to_string(),
    ])
    .success();
}

/// How a stall shows.
#[derive(Clone, Copy, Debug)]
enum Stall {
    /// No blob request is ever answered.
    Total,
    /// The first blob request sends 1 MiB, then nothing; later ones are
    /// never answered.
    MidBody,
}

/// A registry that stalls: the read waiting on it fails within `--timeout`
/// while cached files and listings keep answering; once the registry is
/// back the same read succeeds, without a remount.
fn stalled_registry(verify: &str, stall: Stall) {
    let files = vec![
        file("cached.txt", 100 * KIB, 31),
        file("dir/waiting.bin", 8 * MIB, 32),
    ];
    let fx = Fixture::new(files);
    let timeout = Duration::from_secs(4);
    let mount = fx.mount("cache", &["--verify", verify, "--timeout", "4"]);
    let cached = mount.path("cached.txt");
    assert!(std::fs::read(&cached).expect("cached.txt") == fx.files[0].content);
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first = Arc::clone(&armed);
    fx.proxy.set_hook(Some(Arc::new(HookFn(
        move |r: &ocifs_tests::RequestInfo| {
            if !r.is_blob_get() {
                Disposition::Forward
            } else if matches!(stall, Stall::MidBody)
                && !first.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                Disposition::StallMidBody {
                    after_bytes: MIB as u64,
                }
            } else {
                Disposition::Stall
            }
        },
    ))));
    let waiting = mount.path("dir/waiting.bin");
    let reader = {
        let waiting = waiting.clone();
        std::thread::spawn(move || timed_read(&waiting))
    };
    // Meanwhile the mount answers everything else at once.
    let mut answered = 0;
    let mut slowest = Duration::ZERO;
    while !reader.is_finished() {
        let start = Instant::now();
        assert!(std::fs::read(&cached).expect("cached.txt") == fx.files[0].content);
        let names: Vec<_> = std::fs::read_dir(mount.dir())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(
            std::fs::metadata(&waiting).expect("stat").len(),
            8 * MIB as u64
        );
        std::fs::read_dir(mount.path("dir")).expect("readdir dir");
        slowest = slowest.max(start.elapsed());
        answered += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (result, took) = reader.join().expect("reader");
    let errno = result.as_ref().err().copied();
    assert!(
        matches!(errno, Some(EIO | ETIMEDOUT)),
        "the read of a stalled blob ended with {:?}\n{}",
        result.map(|b| b.len()),
        log_tail(&mount)
    );
    assert!(
        took <= timeout + Duration::from_millis(1500),
        "{verify} {stall:?}: the stalled read failed after {took:?}, --timeout is {timeout:?}\n{}\n{}",
        fx.proxy.describe(),
        log_tail(&mount)
    );
    assert!(
        slowest < Duration::from_secs(1) && answered >= 10,
        "{answered} rounds of other requests, the slowest took {slowest:?}"
    );
    eprintln!(
        "stall ({verify}, {stall:?}): the read failed with errno {errno:?} after {took:?} \
         (--timeout {timeout:?}); {answered} rounds of other requests meanwhile, slowest {slowest:?}"
    );
    // The registry is back: the same read, on the same mount (after the
    // second in which a failed fetch answers again at once, for the
    // kernel's immediate retry of a failed readahead).
    fx.proxy.set_hook(None);
    std::thread::sleep(Duration::from_millis(1100));
    let (again, took) = timed_read(&waiting);
    assert!(
        again.as_ref().is_ok_and(|b| *b == fx.files[1].content),
        "after the stall: {:?}\n{}",
        again.map(|b| b.len()),
        log_tail(&mount)
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_stalled_registry_fails_the_read_in_time_and_the_mount_keeps_answering_strict() {
    stalled_registry("strict", Stall::Total);
}

#[test]
fn a_stalled_registry_fails_the_read_in_time_and_the_mount_keeps_answering_lazy() {
    stalled_registry("lazy", Stall::Total);
}

#[test]
fn a_stall_mid_body_fails_the_read_in_time_strict() {
    stalled_registry("strict", Stall::MidBody);
}

#[test]
fn a_stall_mid_body_fails_the_read_in_time_lazy() {
    stalled_registry("lazy", Stall::MidBody);
}

/// `ocifs cache du --json` of `cache`.
fn cache_du(cache: &Path) -> serde_json::Value {
    run_ocifs([
        "cache".into(),
        "du".into(),
        "--json".into(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ])
    .success()
    .json()
}

#[test]
fn two_mounts_sharing_a_small_cache_serve_32_readers_each_byte_identical() {
    let files: Vec<FileSpec> = (0..8u64)
        .map(|i| {
            file(
                Box::leak(format!("load/f{i}.bin").into_boxed_str()),
                512 * KIB + i as usize * 700 * KIB,
                40 + i,
            )
        })
        .collect();
    let total: usize = files.iter().map(|f| f.content.len()).sum();
    let fx = Fixture::new(files);
    let budget = 12 * MIB as u64;
    assert!(
        total as u64 > budget + budget / 2,
        "the budget must be tight"
    );
    let cache = fx.cache("shared");
    // Two processes on one cache: one strict (with passthrough), one lazy
    // with its own chunk size and no passthrough, so that every read of it
    // goes through ocifs.
    let strict = mount_on(&fx.reference(), &cache, &["--cache-max-size", "12M"]);
    let lazy = mount_on(
        &fx.reference(),
        &cache,
        &[
            "--cache-max-size",
            "12M",
            "--verify",
            "lazy",
            "--chunk-size",
            "256K",
            "--no-passthrough",
        ],
    );
    let run_for = Duration::from_secs(20);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The kernel's page cache would answer most reads itself: drop it for
    // every file, over and over (dd's nocache is posix_fadvise DONTNEED).
    let dropper = {
        let stop = Arc::clone(&stop);
        let paths: Vec<PathBuf> = fx
            .files
            .iter()
            .flat_map(|f| [strict.path(f.title), lazy.path(f.title)])
            .collect();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for p in &paths {
                    let _ = std::process::Command::new("dd")
                        .arg(format!("if={}", p.display()))
                        .args(["iflag=nocache", "count=0", "status=none"])
                        .status();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let sampler = {
        let stop = Arc::clone(&stop);
        let cache = cache.clone();
        std::thread::spawn(move || {
            let mut most = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                most = most.max(cache_du(&cache)["bytes"].as_u64().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(500));
            }
            most
        })
    };
    let started = Instant::now();
    let readers: Vec<_> = [&strict, &lazy]
        .iter()
        .flat_map(|m| (0..32u64).map(move |t| (m.dir().to_path_buf(), t)))
        .enumerate()
        .map(|(n, (dir, t))| {
            let files: Vec<(PathBuf, Vec<u8>)> = fx
                .files
                .iter()
                .map(|f| (dir.join(f.title), f.content.clone()))
                .collect();
            std::thread::spawn(move || {
                let mut rng = Rng(0x10ad ^ ((n as u64) << 20) ^ t);
                let mut tally = Tally::default();
                let mut slowest = Duration::ZERO;
                while started.elapsed() < run_for {
                    let (path, data) = &files[rng.below(files.len() as u64) as usize];
                    let offset = rng.below(data.len() as u64);
                    let len = 1 + rng.below(256 * KIB as u64);
                    let want = &data[offset as usize..((offset + len) as usize).min(data.len())];
                    let begin = Instant::now();
                    let mut buf = vec![0u8; len as usize];
                    let result = std::fs::File::open(path).and_then(|f| {
                        let mut got = 0;
                        while got < buf.len() {
                            let n = f.read_at(&mut buf[got..], offset + got as u64)?;
                            if n == 0 {
                                break;
                            }
                            got += n;
                        }
                        Ok(got)
                    });
                    slowest = slowest.max(begin.elapsed());
                    tally.reads += 1;
                    match result {
                        Ok(got) => {
                            tally.bytes += got as u64;
                            if got != want.len() {
                                tally.short_reads += 1;
                            }
                            tally.wrong_bytes += buf[..got.min(want.len())]
                                .iter()
                                .zip(want)
                                .filter(|(a, b)| a != b)
                                .count() as u64;
                        }
                        Err(e) => tally
                            .errors
                            .push(format!("{} at {offset}+{len}: {e}", path.display())),
                    }
                }
                (tally, slowest)
            })
        })
        .collect();
    let mut tally = Tally::default();
    let mut slowest = Duration::ZERO;
    for r in readers {
        let (t, s) = r.join().expect("reader");
        tally.add(t);
        slowest = slowest.max(s);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    dropper.join().expect("dropper");
    let most = sampler.join().expect("sampler");
    let took = started.elapsed();
    let (strict_stats, lazy_stats) = (stats(&strict), stats(&lazy));
    eprintln!(
        "shared cache under load: {} reads ({} MiB) by 2x32 readers in {took:?}, \
         {} wrong bytes, {} short reads, {} errors, slowest read {slowest:?}; \
         cache at most {most} bytes sampled (budget {budget}); \
         strict mount {strict_stats}; lazy mount {lazy_stats}",
        tally.reads,
        tally.bytes >> 20,
        tally.wrong_bytes,
        tally.short_reads,
        tally.errors.len()
    );
    assert!(
        tally.wrong_bytes == 0 && tally.short_reads == 0 && tally.errors.is_empty(),
        "{} wrong bytes, {} short reads, errors: {:#?}\nstrict:\n{}\nlazy:\n{}",
        tally.wrong_bytes,
        tally.short_reads,
        &tally.errors[..tally.errors.len().min(10)],
        log_tail(&strict),
        log_tail(&lazy)
    );
    assert!(
        tally.reads >= 1000,
        "only {} reads in {took:?}",
        tally.reads
    );
    assert!(
        took < run_for + Duration::from_secs(30),
        "readers overran: {took:?}"
    );
    assert!(slowest < Duration::from_secs(20), "a read took {slowest:?}");
    for (stats, mount) in [(&strict_stats, &strict), (&lazy_stats, &lazy)] {
        assert_eq!(
            stats["read_errors"].as_u64(),
            Some(0),
            "{stats}\n{}",
            mount
                .log()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    drop(strict);
    drop(lazy);
    // Every complete blob the two left behind is intact.
    run_ocifs([
        "cache".into(),
        "verify".into(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ])
    .success();
    // Blobs in use are never evicted, so two busy mounts can hold more than
    // the budget; the next process to open the cache trims it.
    let left = cache_du(&cache)["bytes"].as_u64().unwrap_or(u64::MAX);
    run_ocifs([
        "ls",
        "--plain-http",
        "--cache-max-size",
        "12M",
        "--cache-dir",
        &cache.display().to_string(),
        &fx.reference(),
    ])
    .success();
    let used = cache_du(&cache)["bytes"].as_u64().unwrap_or(u64::MAX);
    eprintln!(
        "shared cache: {left} bytes when the mounts ended, {used} once the next process opened it \
         (budget {budget})"
    );
    assert!(
        used <= budget,
        "the cache holds {used} bytes, over its {budget}-byte budget"
    );
    run_ocifs([
        "cache".into(),
        "verify".into(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ])
    .success();
}

/// Chunk markers of `digest`'s partial blob, in whichever generation.
fn markers(cache: &Path, digest: &str) -> u64 {
    let generations = cache.join("partial/sha256").join(&digest[7..]);
    std::fs::read_dir(generations).map_or(0, |gens| {
        gens.flatten()
            .map(|g| {
                std::fs::read(g.path().join("map"))
                    .map_or(0, |m| m.iter().filter(|b| **b == 1).count() as u64)
            })
            .sum()
    })
}

/// `kill -9` of a mount in the middle of a large fetch; a new mount on the
/// same cache serves every byte right (no chunk the dead one was writing
/// is taken as present), fetches only what is missing, and the cache
/// verifies.
fn crash_during_a_fetch(verify: &str) {
    let fx = Fixture::new(vec![file("big.bin", 48 * MIB, 60)]);
    let digest = ocifs_tests::sha256_digest(&fx.files[0].content);
    let size = fx.files[0].content.len() as u64;
    let cache = fx.cache("crash");
    fx.proxy
        .set_hook(Some(Arc::new(ocifs_tests::ThrottleBlobs(6 * MIB as u64))));
    let first = mount_on(&fx.reference(), &cache, &["--verify", verify]);
    let pid = daemon_pid(first.dir());
    let path = first.path("big.bin");
    let reader = std::thread::spawn(move || std::fs::read(path).map(|b| b.len()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while markers(&cache, &digest) < 8 {
        assert!(Instant::now() < deadline, "the fetch made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // The reader gets an error (the daemon is gone), not a hang.
    let read = reader.join().expect("reader");
    assert!(read.is_err(), "{read:?}");
    drop(first);
    assert!(
        !cache.join("blobs/sha256").join(&digest[7..]).exists(),
        "an incomplete blob was promoted"
    );
    let present = markers(&cache, &digest);
    fx.proxy.set_hook(None);
    fx.proxy.reset();
    let second = mount_on(&fx.reference(), &cache, &["--verify", verify]);
    let got = std::fs::read(second.path("big.bin")).expect("read after the crash");
    assert!(
        got == fx.files[0].content,
        "{verify}: wrong bytes after a crash"
    );
    let fetched = fx.proxy.blob_bytes();
    eprintln!(
        "crash ({verify}): killed with {present} of {} chunks present; the next mount fetched \
         {fetched} of {size} bytes and served every byte right",
        size.div_ceil(MIB as u64)
    );
    assert!(
        fetched <= size - present * MIB as u64,
        "{verify}: the fetch started over: {fetched} bytes after {present} chunks were present\n{}",
        fx.proxy.describe()
    );
    drop(second);
    run_ocifs([
        "cache".into(),
        "verify".into(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ])
    .success();
}

#[test]
fn kill_9_of_a_mount_mid_fetch_then_a_new_mount_resumes_strict() {
    crash_during_a_fetch("strict");
}

#[test]
fn kill_9_of_a_mount_mid_fetch_then_a_new_mount_resumes_lazy() {
    crash_during_a_fetch("lazy");
}

//! The chunk cache against the real registry: random reads byte-identical
//! cold and warm, one request however many readers wait, one download for two
//! processes sharing a directory, tampered blobs never cached, the budget,
//! offline use, and a `kill -9` in the middle of a fetch.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocifs_core::{
    BlobReader as _, Descriptor, RegistryOptions, RegistryRef, RegistrySource, Verify,
};
use ocifs_core::{CacheOptions, ChunkCache, DiskStore};
use ocifs_tests::{
    CountingProxy, Disposition, HookFn, Registry, RegistryAuth, RequestInfo, ThrottleBlobs, ocifs,
    random_bytes, run_ocifs, sha256_digest, temp_dir,
};
use proptest::test_runner::{Config, TestRunner};
use tempfile::TempDir;

use crate::support::{FileSpec, push_files};

const MIB: usize = 1 << 20;

struct Fixture {
    registry: Registry,
    proxy: CountingProxy,
    dir: TempDir,
    files: Vec<FileSpec>,
}

impl Fixture {
    /// Pushes `files` as `cache:v1` and puts a counting proxy in front.
    fn new(files: Vec<FileSpec>) -> Self {
        let registry = Registry::start(RegistryAuth::None);
        let dir = temp_dir();
        push_files(&registry, dir.path(), "cache:v1", &files);
        let proxy = CountingProxy::start(&registry.host());
        Fixture {
            registry,
            proxy,
            dir,
            files,
        }
    }

    fn reference(&self) -> String {
        format!("{}/cache:v1", self.proxy.host())
    }

    fn cache_dir(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn descriptor(&self, i: usize) -> Descriptor {
        let f = &self.files[i];
        Descriptor {
            media_type: "application/octet-stream".into(),
            digest: sha256_digest(&f.content).parse().expect("digest"),
            size: f.content.len() as u64,
            annotations: Default::default(),
            platform: None,
            artifact_type: None,
            urls: vec![],
        }
    }

    /// An in-process cache over the real registry (through the proxy).
    async fn cache(&self, dir: &Path, verify: Verify) -> ChunkCache {
        let reference = RegistryRef::parse(&self.reference()).expect("reference");
        let options = RegistryOptions {
            plain_http: true,
            ..RegistryOptions::default()
        };
        let source = RegistrySource::connect(&reference, options)
            .await
            .expect("connect");
        let store = Arc::new(DiskStore::open(dir).expect("store"));
        let options = CacheOptions {
            verify,
            // Requests counted chunk by chunk: no background completion.
            background_fetch_max: 0,
            ..CacheOptions::default()
        };
        ChunkCache::new(Arc::new(source), Some(store), options).expect("cache")
    }
}

fn file(title: &'static str, len: usize, seed: u64) -> FileSpec {
    FileSpec {
        title,
        content: random_bytes(len, seed),
        media_type: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn random_reads_of_a_64_mib_blob_are_byte_identical_cold_and_warm() {
    let fx = Fixture::new(vec![file("big.bin", 64 * MIB, 1)]);
    let blob = fx.descriptor(0);
    let content = blob.clone();
    let data = fx.files[0].content.clone();
    let rt = runtime();
    for verify in [Verify::Strict, Verify::Lazy] {
        let dir = fx.cache_dir(&format!("{verify:?}"));
        fx.proxy.reset();
        // Cold: one cache; warm: a second one on the same directory, so
        // nothing comes from the first one's memory.
        for pass in ["cold", "warm"] {
            let cache = rt.block_on(fx.cache(&dir, verify));
            let mut runner = TestRunner::new(Config {
                cases: 48,
                failure_persistence: None,
                ..Config::default()
            });
            let strategy =
                proptest::collection::vec((0u64..(66 * MIB) as u64, 1u64..(3 * MIB) as u64), 1..6);
            let result = runner.run(&strategy, |reads| {
                for (offset, len) in reads {
                    let got = rt
                        .block_on(cache.read_blob(&content, offset, len))
                        .expect("read");
                    let end = ((offset + len) as usize).min(data.len());
                    let start = (offset as usize).min(end);
                    proptest::prop_assert_eq!(
                        got.len(),
                        end - start,
                        "{} {:?} read {}+{}",
                        pass,
                        verify,
                        offset,
                        len
                    );
                    proptest::prop_assert!(
                        got[..] == data[start..end],
                        "{} {:?}: wrong bytes at {}+{}",
                        pass,
                        verify,
                        offset,
                        len
                    );
                }
                Ok(())
            });
            if let Err(e) = result {
                panic!("{e}");
            }
            let fetched = fx.proxy.blob_bytes();
            match (verify, pass) {
                (Verify::Strict, "cold") => assert_eq!(
                    fetched,
                    data.len() as u64,
                    "strict cold: one whole download"
                ),
                (Verify::Lazy, "cold") => assert!(
                    fetched > 0 && fetched <= data.len() as u64,
                    "lazy cold fetched {fetched}"
                ),
                (_, _) => {}
            }
            if pass == "warm" && verify == Verify::Strict {
                assert_eq!(
                    fetched,
                    data.len() as u64,
                    "strict warm fetched more: {}",
                    fx.proxy.describe()
                );
            }
        }
    }
}

#[test]
fn thirty_two_readers_of_one_missing_chunk_make_one_request() {
    let fx = Fixture::new(vec![file("big.bin", 16 * MIB, 2)]);
    let content = fx.descriptor(0);
    let data = fx.files[0].content.clone();
    let rt = runtime();
    for verify in [Verify::Lazy, Verify::Strict] {
        let cache = rt.block_on(fx.cache(&fx.cache_dir(&format!("{verify:?}")), verify));
        fx.proxy.reset();
        let got: Vec<bytes::Bytes> = rt.block_on(async {
            let tasks: Vec<_> = (0..32)
                .map(|_| {
                    let (cache, content) = (cache.clone(), content.clone());
                    tokio::spawn(async move {
                        cache
                            .read_blob(&content, (5 * MIB) as u64 + 100, 4096)
                            .await
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("join").expect("read"));
            }
            out
        });
        for g in got {
            assert_eq!(&g[..], &data[5 * MIB + 100..5 * MIB + 100 + 4096]);
        }
        assert_eq!(
            fx.proxy.blob_gets().len(),
            1,
            "{verify:?}: {}",
            fx.proxy.describe()
        );
    }
}

#[test]
fn two_processes_sharing_a_cache_fetch_a_blob_once() {
    let fx = Fixture::new(vec![file("big.bin", 32 * MIB, 3)]);
    // Slow enough that the two downloads would overlap if both happened.
    fx.proxy
        .set_hook(Some(Arc::new(ThrottleBlobs(32 * MIB as u64))));
    let cache = fx.cache_dir("shared");
    let spawn = |out: &str| {
        ocifs()
            .args(["cat", "--plain-http", "--cache-dir"])
            .arg(&cache)
            .args([&fx.reference(), "big.bin"])
            .stdout(std::fs::File::create(fx.dir.path().join(out)).expect("out"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ocifs")
    };
    let (a, b) = (spawn("a.out"), spawn("b.out"));
    for (child, out) in [(a, "a.out"), (b, "b.out")] {
        let o = child.wait_with_output().expect("wait");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = std::fs::read(fx.dir.path().join(out)).expect("read output");
        assert!(got == fx.files[0].content, "{out} differs");
    }
    let size = fx.files[0].content.len() as u64;
    assert!(
        fx.proxy.blob_bytes() <= size + MIB as u64,
        "fetched {} for a {size}-byte blob: {}",
        fx.proxy.blob_bytes(),
        fx.proxy.describe()
    );
}

#[test]
fn a_tampered_blob_fails_and_leaves_nothing_cached() {
    let fx = Fixture::new(vec![file("data.bin", 2 * MIB, 4)]);
    let digest = sha256_digest(&fx.files[0].content);
    let path = fx.registry.blob_data_path(&digest);
    let mut bytes = std::fs::read(&path).expect("blob in storage");
    bytes[MIB] ^= 0x40;
    std::fs::write(&path, &bytes).expect("tamper");
    for mode in ["strict", "lazy"] {
        let cache = fx.cache_dir(mode);
        let out = run_ocifs(
            ["cat", "--plain-http", "--verify", mode, "--cache-dir"]
                .map(String::from)
                .into_iter()
                .chain([
                    cache.display().to_string(),
                    fx.reference(),
                    "data.bin".into(),
                ]),
        );
        out.code_is(6).stderr_has(&digest);
        if mode == "strict" {
            assert!(
                out.stdout.is_empty(),
                "strict mode wrote {} bytes of a bad blob",
                out.stdout.len()
            );
        }
        let ls = run_ocifs([
            "cache",
            "ls",
            "--json",
            "--cache-dir",
            &cache.display().to_string(),
        ]);
        ls.success();
        let held: Vec<String> = ls
            .json()
            .as_array()
            .expect("array")
            .iter()
            .filter(|b| b["present"].as_u64() > Some(0))
            .map(|b| b["digest"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(
            !held.contains(&digest),
            "{mode}: the bad blob stayed cached: {held:?}"
        );
    }
}

#[test]
fn the_cache_stays_under_its_budget() {
    let files: Vec<FileSpec> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            file(
                Box::leak(format!("{name}.bin").into_boxed_str()),
                8 * MIB,
                10 + i as u64,
            )
        })
        .collect();
    let fx = Fixture::new(files);
    let cache = fx.cache_dir("budget").display().to_string();
    for f in &fx.files {
        run_ocifs([
            "prefetch",
            "--plain-http",
            "--cache-max-size",
            "20M",
            "--cache-dir",
            &cache,
            &fx.reference(),
            f.title,
        ])
        .success();
    }
    let du = run_ocifs(["cache", "du", "--json", "--cache-dir", &cache]);
    let used = du.success().json()["bytes"].as_u64().expect("bytes");
    assert!(
        used <= 20 * MIB as u64 + 8 * MIB as u64,
        "cache holds {used} bytes, budget 20 MiB plus one 8 MiB blob"
    );
    assert!(
        used >= 8 * MIB as u64,
        "the last blob read was evicted too: {used}"
    );
    // Pruning to nothing empties it; verify finds nothing wrong.
    run_ocifs(["cache", "prune", "--all", "--cache-dir", &cache]).success();
    let du = run_ocifs(["cache", "du", "--json", "--cache-dir", &cache]);
    assert_eq!(du.success().json()["bytes"].as_u64(), Some(0));
}

#[test]
fn offline_after_prefetch_makes_no_request_and_an_unreachable_registry_falls_back() {
    let fx = Fixture::new(vec![file("one.bin", MIB, 20), file("two.bin", MIB, 21)]);
    let cache = fx.cache_dir("offline").display().to_string();
    run_ocifs([
        "prefetch",
        "--plain-http",
        "--cache-dir",
        &cache,
        &fx.reference(),
        "one.bin",
    ])
    .success();
    fx.proxy.reset();
    let ls = run_ocifs(["ls", "--offline", "--cache-dir", &cache, &fx.reference()]);
    ls.success().stdout_has("one.bin").stdout_has("two.bin");
    let cat = run_ocifs([
        "cat",
        "--offline",
        "--cache-dir",
        &cache,
        &fx.reference(),
        "one.bin",
    ]);
    assert!(cat.success().stdout == fx.files[0].content);
    run_ocifs([
        "cat",
        "--offline",
        "--cache-dir",
        &cache,
        &fx.reference(),
        "two.bin",
    ])
    .code_is(5)
    .stderr_has("not in the cache");
    assert!(
        fx.proxy.requests().is_empty(),
        "--offline made requests: {}",
        fx.proxy.describe()
    );

    // Without --offline, a registry that is gone is replaced by the cache.
    let reference = fx.reference();
    drop(fx.proxy);
    let start = Instant::now();
    let cat = run_ocifs([
        "cat",
        "--plain-http",
        "--timeout",
        "5",
        "--cache-dir",
        &cache,
        &reference,
        "one.bin",
    ]);
    assert!(cat.success().stdout == fx.files[0].content);
    assert!(
        cat.stderr.contains("unreachable"),
        "no warning: {}",
        cat.stderr
    );
    run_ocifs([
        "cat",
        "--plain-http",
        "--timeout",
        "5",
        "--cache-dir",
        &cache,
        &reference,
        "two.bin",
    ])
    .code_is(5)
    .stderr_has("not in the cache");
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_crash_during_a_fetch_is_recovered_by_the_next_process() {
    let fx = Fixture::new(vec![file("big.bin", 32 * MIB, 30)]);
    let digest = sha256_digest(&fx.files[0].content);
    let hex = &digest[7..];
    let cache = fx.cache_dir("crash");
    fx.proxy
        .set_hook(Some(Arc::new(ThrottleBlobs(4 * MIB as u64))));
    let mut child = ocifs()
        .args(["prefetch", "--plain-http", "--cache-dir"])
        .arg(&cache)
        .args([&fx.reference(), "big.bin"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Chunk markers, in whichever generation of the partial blob.
    let generations = cache.join("partial/sha256").join(hex);
    let markers = || -> usize {
        std::fs::read_dir(&generations).map_or(0, |gens| {
            gens.flatten()
                .map(|g| {
                    std::fs::read(g.path().join("map"))
                        .map_or(0, |m| m.iter().filter(|b| **b == 1).count())
                })
                .sum()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while markers() < 8 {
        assert!(Instant::now() < deadline, "the fetch made no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert!(
        !cache.join("blobs/sha256").join(hex).exists(),
        "an incomplete blob was promoted"
    );
    let present = markers() as u64;

    fx.proxy.set_hook(None);
    fx.proxy.reset();
    let cat = run_ocifs([
        "cat",
        "--plain-http",
        "--cache-dir",
        &cache.display().to_string(),
        &fx.reference(),
        "big.bin",
    ]);
    assert!(
        cat.success().stdout == fx.files[0].content,
        "wrong bytes after a crash"
    );
    let size = fx.files[0].content.len() as u64;
    assert!(
        fx.proxy.blob_bytes() <= size - present * MIB as u64,
        "the fetch started over: {} bytes after {present} chunks were present",
        fx.proxy.blob_bytes()
    );
    run_ocifs([
        "cache",
        "verify",
        "--cache-dir",
        &cache.display().to_string(),
    ])
    .success()
    .stdout_has("blobs verified");
}

#[test]
fn a_cache_directory_others_can_write_to_is_refused_naming_the_fix() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let fx = Fixture::new(vec![FileSpec {
        title: "a.txt",
        content: b"a".to_vec(),
        media_type: None,
    }]);
    let tmp = temp_dir();
    let cache = tmp.path().join("fresh/cache");
    let cat = |cache: &Path| {
        run_ocifs([
            "cat",
            "--plain-http",
            "--cache-dir",
            &cache.display().to_string(),
            &format!("{}/cache:v1", fx.proxy.host()),
            "a.txt",
        ])
    };
    // A cache ocifs makes is private to its user.
    cat(&cache).success();
    for dir in [&cache, &cache.join("blobs"), &cache.join("partial/sha256")] {
        let mode = std::fs::metadata(dir).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
    }
    let chmod = |dir: &Path, mode: u32| {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    for (sub, mode, who) in [
        ("", 0o777, "others"),
        ("", 0o770, "its group"),
        ("blobs", 0o777, "others"),
        ("blobs/sha256", 0o757, "others"),
        ("partial", 0o720, "its group"),
        ("index", 0o777, "others"),
    ] {
        let dir = if sub.is_empty() {
            cache.clone()
        } else {
            cache.join(sub)
        };
        chmod(&dir, mode);
        let out = cat(&cache);
        out.code_is(1)
            .stderr_has(&format!("refusing the cache directory {}", dir.display()))
            .stderr_has(&format!("writable by {who}"))
            .stderr_has(&format!("chmod 700 {}", dir.display()));
        assert!(out.stdout.is_empty(), "{out}");
        chmod(&dir, 0o700);
        cat(&cache).success();
    }
    // Owned by another user: root must not take its word.
    let owner =
        |dir: &Path, uid: u32| std::os::unix::fs::chown(dir, Some(uid), None).expect("chown");
    owner(&cache.join("blobs"), 4321);
    cat(&cache)
        .code_is(1)
        .stderr_has(&cache.join("blobs").display().to_string())
        .stderr_has("owned by uid 4321");
    owner(&cache.join("blobs"), 0);
    cat(&cache).success();
}

/// Flips one bit of the byte at `at` of a file.
fn flip_at(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the cached blob");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read");
    f.write_all_at(&[b[0] ^ 0x04], at).expect("write");
}

#[test]
fn bytes_damaged_at_rest_are_never_served_by_cat_or_a_strict_mount() {
    const AT: usize = 5 * MIB + 123;
    let fx = Fixture::new(vec![file("big.bin", 8 * MIB, 31)]);
    let want = &fx.files[0].content;
    let cache = fx.cache_dir("at-rest");
    let cache_s = cache.display().to_string();
    let blob = cache
        .join("blobs/sha256")
        .join(sha256_digest(want).trim_start_matches("sha256:"));
    let prefetch = || {
        run_ocifs([
            "prefetch",
            "--plain-http",
            "--cache-dir",
            &cache_s,
            &fx.reference(),
        ])
        .success();
        assert!(blob.is_file());
    };
    prefetch();

    // Offline, cat stops at the damaged chunk: exit 6 naming the blob, and
    // every byte it wrote is right.
    flip_at(&blob, AT as u64);
    let cat = run_ocifs([
        "cat",
        "--offline",
        "--cache-dir",
        &cache_s,
        &fx.reference(),
        "big.bin",
    ]);
    cat.code_is(6).stderr_has(&sha256_digest(want));
    assert!(
        cat.stdout.len() <= AT,
        "wrote {} bytes, past the damage",
        cat.stdout.len()
    );
    assert!(
        cat.stdout[..] == want[..cat.stdout.len()],
        "wrote wrong bytes"
    );

    // Online, the damaged chunk is fetched again and the read succeeds;
    // the same for a truncated blob.
    for damage in ["flip", "truncate"] {
        prefetch();
        match damage {
            "flip" => flip_at(&blob, AT as u64),
            _ => std::fs::OpenOptions::new()
                .write(true)
                .open(&blob)
                .and_then(|f| f.set_len(3 * MIB as u64))
                .expect("truncate"),
        }
        fx.proxy.reset();
        let cat = run_ocifs([
            "cat",
            "--plain-http",
            "--cache-dir",
            &cache_s,
            &fx.reference(),
            "big.bin",
        ]);
        assert!(
            cat.success().stdout == *want,
            "{damage}: wrong bytes from cat"
        );
        let fetched = fx.proxy.blob_bytes();
        // Strict mode has only the whole-blob digest to check a fetch
        // against: the blob is fetched again, once.
        assert!(
            fetched > 0 && fetched <= want.len() as u64,
            "{damage}: fetched {fetched} bytes again"
        );
    }

    // A strict mount, with passthrough and without, serves the right bytes
    // of a blob damaged before it started.
    for extra in [&[][..], &["--no-passthrough"][..]] {
        prefetch();
        flip_at(&blob, AT as u64);
        let mut args = vec!["--plain-http", "--cache-dir", &cache_s];
        args.extend_from_slice(extra);
        let mounted = ocifs_tests::Mounted::new(&fx.reference(), &args);
        let got = std::fs::read(mounted.path("big.bin")).expect("read through the mount");
        assert!(
            got == *want,
            "{extra:?}: the mount served damaged bytes\n{}",
            mounted.log()
        );
        assert!(
            mounted.log().contains("failed its check"),
            "{}",
            mounted.log()
        );
        mounted.unmount();
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallFs {
    dir: TempDir,
}

impl SmallFs {
    fn new(size: &str) -> Self {
        let dir = temp_dir();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(status.success(), "mount -t tmpfs failed");
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes used on it.
    fn used(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["--output=used", "-B1"])
            .arg(self.dir.path())
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_cache_filesystem_fails_clearly_and_does_not_stay_full() {
    let fx = Fixture::new(vec![
        file("big.bin", 64 * MIB, 41),
        file("small.bin", MIB, 42),
    ]);
    let fs = SmallFs::new("20m");
    let cache = fs.path().join("cache").display().to_string();
    let cat = |verify: &str, name: &str| {
        run_ocifs([
            "cat",
            "--plain-http",
            "--verify",
            verify,
            "--cache-dir",
            &cache,
            &fx.reference(),
            name,
        ])
    };
    for verify in ["strict", "lazy"] {
        let out = cat(verify, "big.bin");
        assert_ne!(out.code(), Some(0), "{verify}: {out}");
        out.stderr_has("the cache's filesystem is full")
            .stderr_has("No space left on device");
        // No chunk of the failed fetch is left holding the disk.
        assert!(
            fs.used() < 4 * MIB as u64,
            "{verify}: {} bytes left on the cache's filesystem",
            fs.used()
        );
        // Every later command works.
        let out = cat(verify, "small.bin");
        assert!(out.success().stdout == fx.files[1].content, "{verify}");
    }
}

#[test]
fn a_corrupt_chunk_read_lazily_does_not_outlive_the_mount() {
    use std::os::unix::fs::FileExt as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    let fx = Fixture::new(vec![file("small.bin", 4 * MIB, 51)]);
    let want = &fx.files[0].content;
    let cache = fx.cache_dir("lazy-bad").display().to_string();
    // The registry's first answer for the blob has a flipped bit.
    let gets = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&gets);
    fx.proxy
        .set_hook(Some(Arc::new(HookFn(move |r: &RequestInfo| {
            if r.is_blob_get() && counted.fetch_add(1, Ordering::SeqCst) == 0 {
                Disposition::FlipBits {
                    at: 100,
                    mask: 0x10,
                }
            } else {
                Disposition::Forward
            }
        }))));
    let read_first_page = |extra: &[&str]| {
        let mut args = vec!["--plain-http", "--verify", "lazy", "--cache-dir", &cache];
        args.extend_from_slice(extra);
        let mounted = ocifs_tests::Mounted::new(&fx.reference(), &args);
        let f = std::fs::File::open(mounted.path("small.bin")).expect("open");
        let mut page = vec![0u8; 4096];
        f.read_exact_at(&mut page, 0).expect("read");
        drop(f);
        // Unmounted at once: the background completion may not have run.
        mounted.unmount();
        page
    };
    let bad = read_first_page(&[]);
    assert_ne!(bad[..], want[..4096], "the fault did not reach the reader");
    let first_mount = gets.load(Ordering::SeqCst);
    // A later lazy mount of the same digest, from an honest registry (the
    // hook, still counting, flips only the first answer).
    let good = read_first_page(&[]);
    assert!(
        good[..] == want[..4096],
        "a chunk the bad registry sent was served again"
    );
    assert!(
        gets.load(Ordering::SeqCst) > first_mount,
        "the second mount fetched nothing"
    );
}

#[test]
fn cache_verify_completes_or_drops_partial_blobs_and_says_which() {
    let fx = Fixture::new(vec![file("a.bin", 3 * MIB, 61), file("b.bin", 3 * MIB, 62)]);
    let cache = fx.cache_dir("settle");
    let cache_s = cache.display().to_string();
    let lazy_cat = |name: &str| {
        run_ocifs([
            "cat",
            "--plain-http",
            "--verify",
            "lazy",
            "--background-fetch-max",
            "0",
            "--cache-dir",
            &cache_s,
            &fx.reference(),
            name,
        ])
        .success();
    };
    // a.bin read whole: every chunk present, never promoted (made partial
    // again below); b.bin: only some chunks.
    lazy_cat("a.bin");
    let a = sha256_digest(&fx.files[0].content);
    let b = sha256_digest(&fx.files[1].content);
    let a_hex = a.trim_start_matches("sha256:");
    let b_hex = b.trim_start_matches("sha256:");
    let store = DiskStore::open(&cache).expect("store");
    store.remove(&a.parse().expect("digest"));
    // b: a partial with one chunk of three.
    let partial = store
        .partial(&b.parse().expect("digest"), 3 * MIB as u64, MIB as u64)
        .expect("partial");
    partial
        .write_chunks(0, &fx.files[1].content[..MIB], true)
        .expect("write");
    // a: a partial with every chunk.
    let partial_a = store
        .partial(&a.parse().expect("digest"), 3 * MIB as u64, MIB as u64)
        .expect("partial");
    partial_a
        .write_chunks(0, &fx.files[0].content, true)
        .expect("write");
    // Both written over a minute ago (a fetch in progress is left alone).
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    for hex in [a_hex, b_hex] {
        for g in std::fs::read_dir(cache.join("partial/sha256").join(hex))
            .expect("gens")
            .flatten()
        {
            if let Ok(f) = std::fs::File::options()
                .write(true)
                .open(g.path().join("data"))
            {
                f.set_modified(old).expect("mtime");
            }
        }
    }
    let out = run_ocifs(["cache", "verify", "--cache-dir", &cache_s]);
    out.success()
        .stdout_has(&format!(
            "{a}: partial with every chunk, verified and completed"
        ))
        .stdout_has(&format!("{b}: partial, dropped"));
    assert!(cache.join("blobs/sha256").join(a_hex).is_file());
    assert!(!cache.join("partial/sha256").join(b_hex).exists());
}

//! A fleet: N nodes with caches of their own, started at once, reading one
//! artifact directly from the origin, through the nginx slice cache ocifs
//! ships (`contrib/nginx`) and through distribution's pull-through cache,
//! each named as a mirror in a hosts.toml. The figure is what the origin
//! sent (a counting proxy in front of it), beside what the nodes needed.
//! Then a mirror killed, and one hung, in the middle of a run of reads.

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ocifs_benches::Row;
use ocifs_tests::{
    CountingProxy, LayerCompression, PushFile, PushOptions, Registry, RegistryAuth, SliceCache,
    oras_push, rootfs_image,
};

use super::{MIB, mount, ocifs_bin, random_file, umount};

/// A mirror in front of the origin, started fresh for each run so that no
/// run finds another's bytes in it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path2 {
    Direct,
    Slice,
    PullThrough,
}

impl Path2 {
    fn label(self) -> &'static str {
        match self {
            Path2::Direct => "directly against the origin",
            Path2::Slice => "through the nginx slice cache (contrib/nginx)",
            Path2::PullThrough => "through distribution's pull-through cache",
        }
    }
}

enum Mirror {
    None,
    Slice(SliceCache),
    PullThrough(Registry),
}

impl Mirror {
    fn start(path: Path2, origin: &str) -> Mirror {
        match path {
            Path2::Direct => Mirror::None,
            Path2::Slice => Mirror::Slice(SliceCache::start(origin)),
            Path2::PullThrough => {
                Mirror::PullThrough(Registry::pull_through(&format!("http://{origin}")))
            }
        }
    }

    fn host(&self) -> Option<String> {
        match self {
            Mirror::None => None,
            Mirror::Slice(s) => Some(s.host()),
            Mirror::PullThrough(r) => Some(r.host()),
        }
    }
}

/// A hosts dir whose hosts.toml for `origin` names `mirror` first.
fn hosts_dir(dir: &Path, origin: &str, mirror: Option<&str>) -> String {
    let d = dir.join(origin);
    std::fs::create_dir_all(&d).expect("mkdir");
    let mut text = format!("server = \"http://{origin}\"\n");
    if let Some(m) = mirror {
        text.push_str(&format!(
            "[host.\"http://{m}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ));
    }
    std::fs::write(d.join("hosts.toml"), text).expect("hosts.toml");
    dir.display().to_string()
}

/// N lazy mounts, each reading 4 KiB at `at` at the same moment.
fn lazy_fleet(n: usize, origin: &str, hosts: &str, work: &Path, at: u64) {
    let mnts: Vec<_> = (0..n)
        .map(|i| {
            let mnt = work.join(format!("mnt-{i}"));
            std::fs::create_dir_all(&mnt).expect("mkdir");
            mount(
                origin,
                "fleet:v1",
                &mnt,
                &work.join(format!("cache-{i}")),
                &[
                    "--verify",
                    "lazy",
                    "--background-fetch-max",
                    "0",
                    "--hosts-dir",
                    hosts,
                ],
            );
            mnt
        })
        .collect();
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        for mnt in &mnts {
            let barrier = &barrier;
            s.spawn(move || {
                let f = std::fs::File::open(mnt.join("disk.img")).expect("open");
                let mut buf = [0u8; 4096];
                barrier.wait();
                f.read_exact_at(&mut buf, at)
                    .expect("read through the mount");
            });
        }
    });
    for mnt in &mnts {
        umount(mnt);
    }
}

/// N strict `ocifs cat` of the whole blob, at once.
fn strict_fleet(n: usize, origin: &str, hosts: &str, work: &Path) {
    let reference = format!("{origin}/fleet:strict");
    let children: Vec<_> = (0..n)
        .map(|i| {
            Command::new(ocifs_bin())
                .args([
                    "cat",
                    "--verify",
                    "strict",
                    "--hosts-dir",
                    hosts,
                    "--cache-dir",
                ])
                .arg(work.join(format!("cache-{i}")))
                .arg(&reference)
                .arg("disk.img")
                .stdout(Stdio::null())
                .spawn()
                .expect("ocifs cat")
        })
        .collect();
    for mut c in children {
        assert!(
            c.wait().expect("wait").success(),
            "a node's ocifs cat failed"
        );
    }
}

pub(crate) fn fleet(quick: bool, rows: &mut Vec<Row>) {
    // The whole-blob runs take a smaller blob: twenty nodes streaming a
    // GiB each through three paths would be most of the benchmark.
    let (size, strict_size) = if quick {
        (64 * MIB, 32 * MIB)
    } else {
        (1024 * MIB, 256 * MIB)
    };
    let ns: &[usize] = if quick { &[1, 5] } else { &[1, 5, 20] };
    let origin = Registry::start(RegistryAuth::None);
    for (tag, bytes, seed) in [("fleet:v1", size, 77), ("fleet:strict", strict_size, 78)] {
        let fixture = random_file(bytes, seed);
        let file = PushFile::new(&fixture.path)
            .title("disk.img")
            .media_type("application/octet-stream");
        oras_push(&origin.host(), tag, &[file], &PushOptions::default());
    }
    let at_origin = CountingProxy::start(&origin.host());
    let gib = format!("{} MiB", size / MIB);
    let strict_label = format!("{} MiB", strict_size / MIB);
    let chunk = MIB as f64;
    for &n in ns {
        let mut direct = None;
        for path in [Path2::Direct, Path2::Slice, Path2::PullThrough] {
            let work = tempfile::tempdir().expect("tempdir");
            let mirror = Mirror::start(path, &at_origin.host());
            let hosts = hosts_dir(
                &work.path().join("hosts"),
                &at_origin.host(),
                mirror.host().as_deref(),
            );
            at_origin.reset();
            lazy_fleet(n, &at_origin.host(), &hosts, work.path(), size / 2 + 12_345);
            // A pull-through cache goes on fetching for a moment after the
            // nodes have what they wanted.
            std::thread::sleep(Duration::from_secs(2));
            let bytes = at_origin.blob_bytes() as f64;
            if path == Path2::Direct {
                direct = Some(bytes);
            }
            rows.push(Row::new(
                format!("fleet of {n}, lazy 4 KiB from the middle of {gib}: origin bytes (ratio to one node's need, 1 chunk)"),
                path.label(),
                bytes,
                "bytes",
                Some(chunk),
            ));
            if path == Path2::PullThrough {
                rows.push(Row::new(
                    format!("fleet of {n}, lazy 4 KiB from the middle of {gib}: origin bytes (ratio to the same fleet directly)"),
                    path.label(),
                    bytes,
                    "bytes",
                    direct,
                ));
            }
        }
        for path in [Path2::Direct, Path2::Slice, Path2::PullThrough] {
            let work = tempfile::tempdir().expect("tempdir");
            let mirror = Mirror::start(path, &at_origin.host());
            let hosts = hosts_dir(
                &work.path().join("hosts"),
                &at_origin.host(),
                mirror.host().as_deref(),
            );
            at_origin.reset();
            strict_fleet(n, &at_origin.host(), &hosts, work.path());
            std::thread::sleep(Duration::from_secs(1));
            rows.push(Row::new(
                format!("fleet of {n}, strict whole {strict_label} each: origin bytes (ratio to the blob)"),
                path.label(),
                at_origin.blob_bytes() as f64,
                "bytes",
                Some(strict_size as f64),
            ));
        }
    }
    for &n in ns {
        published_fleet(n, &origin, &at_origin, rows);
    }
    failover(&at_origin, size, rows);
}

/// A fleet of `n` reading the Debian rootfs image: the first node mounts it
/// strictly (streaming each layer once to index it), then the other
/// `n - 1` mount it lazily at once; each runs `find` over the tree and
/// reads one file from the middle of the big layer. With `--publish-index`
/// the first node attaches its layer indexes as a referrer and the others
/// use them; without it every node streams every layer. The figure is the
/// origin's bytes against 1 × the layers + `n` × (the index + the file's
/// seek span in whole chunks), the goal.
fn published_fleet(n: usize, origin: &Registry, at_origin: &CountingProxy, rows: &mut Vec<Row>) {
    let image = rootfs_image();
    let layers: u64 = image.layers().iter().map(|l| l.size).sum();
    let middle = image.middle_file();
    let span = image.middle_span().bound as f64;
    let mut index_bytes = 0.0;
    for publish in [true, false] {
        // A repository of its own per run: no run finds another's index.
        let repo = format!("published-{n}-{publish}");
        image.push(
            &origin.host(),
            &format!("{repo}:v1"),
            LayerCompression::Gzip,
        );
        let work = tempfile::tempdir().expect("tempdir");
        let reference = format!("{repo}:v1");
        let node = |i: usize, extra: &[&str]| {
            let mnt = work.path().join(format!("mnt-{i}"));
            std::fs::create_dir_all(&mnt).expect("mkdir");
            let mut args = extra.to_vec();
            if publish {
                args.push("--publish-index");
            }
            mount(
                &at_origin.host(),
                &reference,
                &mnt,
                &work.path().join(format!("cache-{i}")),
                &args,
            );
            let found = Command::new("find")
                .arg(&mnt)
                .stdout(Stdio::null())
                .status()
                .expect("find");
            assert!(found.success(), "find in node {i}");
            let bytes = std::fs::read(mnt.join(&middle.path)).expect("the middle file");
            assert_eq!(bytes.len() as u64, middle.size, "{}", middle.path);
            mnt
        };
        at_origin.reset();
        let log = work.path().join("first.log");
        let log_arg = log.display().to_string();
        let mut mnts = vec![node(0, &["-v", "--log-file", &log_arg])];
        if publish {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("published this node's index")
            {
                assert!(
                    Instant::now() < deadline,
                    "the first node published no index"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            index_bytes = index_size(&origin.host(), &repo);
        }
        std::thread::scope(|s| {
            let started: Vec<_> = (1..n)
                .map(|i| {
                    let node = &node;
                    s.spawn(move || node(i, &["--verify", "lazy"]))
                })
                .collect();
            mnts.extend(started.into_iter().map(|t| t.join().expect("a node")));
        });
        for mnt in &mnts {
            umount(mnt);
        }
        rows.push(Row::new(
            format!(
                "fleet of {n}, rootfs image: the first node strict, then {} lazy at once; mount + find + one file: origin bytes (ratio to 1 x the layers + {n} x (the index + the file's span))",
                n - 1
            ),
            if publish {
                "ocifs mount --publish-index"
            } else {
                "ocifs mount, no index published"
            },
            at_origin.blob_bytes() as f64,
            "bytes",
            Some(layers as f64 + n as f64 * (index_bytes + span)),
        ));
    }
}

/// The bytes of the parts of the index attached to `repo:v1` (found in its
/// referrers fallback tag).
fn index_size(host: &str, repo: &str) -> f64 {
    let inspect = |what: &str| -> serde_json::Value {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{host}/{repo}{what}"))
            .output()
            .expect("skopeo");
        assert!(out.status.success(), "skopeo inspect {repo}{what}");
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let manifest = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!("http://{host}/v2/{repo}/manifests/v1"))
        .output()
        .expect("curl");
    let digest = ocifs_core::Digest::of(&manifest.stdout).to_string();
    let listed = inspect(&format!(":sha256-{}", &digest[7..]));
    let index = listed["manifests"][0]["digest"]
        .as_str()
        .expect("a referrer")
        .to_owned();
    inspect(&format!("@{index}"))["layers"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|l| l["size"].as_f64().unwrap_or(0.0))
        .sum()
}

/// One lazy node reading 4 KiB at 40 offsets through a mirror that is
/// killed (then, in a second run, hung with SIGSTOP) after the tenth: the
/// longest single read, against the mirror timeout with one retry.
fn failover(at_origin: &CountingProxy, size: u64, rows: &mut Vec<Row>) {
    let budget = 2.0 * ocifs_core::MIRROR_TIMEOUT.as_secs_f64();
    for (what, signal) in [("killed", "KILL"), ("hung (SIGSTOP)", "STOP")] {
        let work = tempfile::tempdir().expect("tempdir");
        let mirror = SliceCache::start(&at_origin.host());
        let pid = mirror.pid();
        let hosts = hosts_dir(
            &work.path().join("hosts"),
            &at_origin.host(),
            Some(&mirror.host()),
        );
        let mnt = work.path().join("mnt");
        std::fs::create_dir_all(&mnt).expect("mkdir");
        mount(
            &at_origin.host(),
            "fleet:v1",
            &mnt,
            &work.path().join("cache"),
            &[
                "--verify",
                "lazy",
                "--background-fetch-max",
                "0",
                "--hosts-dir",
                &hosts,
            ],
        );
        let f = std::fs::File::open(mnt.join("disk.img")).expect("open");
        let mut longest = 0f64;
        let mut buf = [0u8; 4096];
        for i in 0..40u64 {
            if i == 10 {
                let _ = Command::new("kill")
                    .arg(format!("-{signal}"))
                    .arg(pid.to_string())
                    .status();
            }
            let at = (i * 7919 * MIB) % (size - MIB);
            let start = Instant::now();
            f.read_exact_at(&mut buf, at)
                .expect("a read failed with the mirror gone");
            longest = longest.max(start.elapsed().as_secs_f64());
        }
        drop(f);
        umount(&mnt);
        if signal == "STOP" {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
        rows.push(Row::new(
            format!("lazy reads through a mirror {what} after 10 of 40: longest read (ratio to the mirror timeout + one retry)"),
            "ocifs, the mirror then the origin",
            longest,
            "s",
            Some(budget),
        ));
    }
}

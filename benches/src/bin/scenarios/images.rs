//! The container-image and package scenarios: a Debian minbase root
//! filesystem listed and read through a mount next to ratarmount,
//! archivemount and a full pull + unpack; a CNI plugin run out of a zip
//! package next to `oras pull` + `unzip`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ocifs_benches::Row;
use ocifs_tests::chunked::Converted;
use ocifs_tests::rootfs::{registry_manifest, umoci};
use ocifs_tests::walk::file_sha256;
use ocifs_tests::{
    Containerd, CountingProxy, LayerCompression, PushFile, PushOptions, PythonEnv, Registry,
    RegistryAuth, STARGZ_SNAPSHOTTER, is_mounted, minbase_image, oras_pull, oras_push,
    rootfs_image, skopeo_copy, stargz_grpc_bin,
};

use super::{drop_page_cache, mount, mount_then, timed, umount};

/// How long a `find` may take before it counts as hung.
const FIND_LIMIT: Duration = Duration::from_secs(30);

/// Runs `find DIR` and counts the lines it prints; None if it did not end
/// within [`FIND_LIMIT`] (then `stop` is called to release it, e.g. by
/// killing the file system's daemon, and `find` is killed).
fn find_count(dir: &Path, stop: impl FnOnce()) -> Option<(Duration, u64)> {
    let start = Instant::now();
    let mut child = Command::new("find")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("find");
    let mut stdout = child.stdout.take().expect("stdout");
    let counter = std::thread::spawn(move || {
        let mut lines = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        }
        lines
    });
    loop {
        if child.try_wait().expect("wait").is_some() {
            let elapsed = start.elapsed();
            return Some((elapsed, counter.join().expect("counter")));
        }
        if start.elapsed() > FIND_LIMIT {
            stop();
            let _ = child.kill();
            let _ = child.wait();
            let _ = counter.join();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads `path` whole; returns the time it took and its sha256.
fn read_file(path: &Path) -> (Duration, String) {
    let start = Instant::now();
    let sha = file_sha256(path);
    (start.elapsed(), sha)
}

/// Whether some FUSE file system is mounted at `dir`.
fn is_fuse_mount(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let dir = dir.display().to_string();
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(1) == Some(&dir.as_str()) && f.get(2).is_some_and(|t| t.starts_with("fuse"))
    })
}

/// Waits (at most a minute) for a FUSE mount at `dir`.
fn wait_mounted(dir: &Path, daemon: &mut Child) {
    let start = Instant::now();
    while !is_fuse_mount(dir) {
        assert!(
            daemon.try_wait().expect("wait").is_none(),
            "the daemon mounting {} exited",
            dir.display()
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing was mounted at {} within a minute",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn force_unmount(dir: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(dir)
        .stderr(Stdio::null())
        .status();
}

fn ratarmount_bin() -> PathBuf {
    PythonEnv::ensure().dir().join("bin/ratarmount")
}

/// One ratarmount mount of `layers` (a union, later layers over earlier
/// ones) at `mnt`: the time to mount and `find`, and the entry count.
fn ratarmount_find(layers: &[PathBuf], mnt: &Path) -> (f64, u64) {
    let start = Instant::now();
    let mut c = Command::new(ratarmount_bin());
    c.args(layers).arg(mnt);
    timed(c);
    let (_, count) = find_count(mnt, || force_unmount(mnt)).expect("find under ratarmount hung");
    (start.elapsed().as_secs_f64(), count)
}

/// The root filesystem scenarios. `host` is the registry, `proxy` a
/// counting proxy in front of it.
pub(crate) fn rootfs(host: &str, proxy: &CountingProxy, rows: &mut Vec<Row>) {
    let image = rootfs_image();
    let layers = image.layers();
    let middle = image.middle_file();
    image.push(host, "bench/rootfs-gzip:v1", LayerCompression::Gzip);
    // A registry of its own for zstd: skopeo would otherwise reuse the
    // gzip layers it finds already pushed instead of recompressing.
    let zstd_registry = Registry::start(RegistryAuth::None);
    let zstd_proxy = CountingProxy::start(&zstd_registry.host());
    image.push(
        &zstd_registry.host(),
        "bench/rootfs-zstd:v1",
        LayerCompression::Zstd,
    );
    let total: u64 = layers.iter().map(|l| l.size).sum();
    let label = format!(
        "rootfs (Debian minbase + 2 layers, {:.0} MB gzip)",
        total as f64 / 1e6
    );
    let work = tempfile::tempdir().expect("tempdir");
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");

    // The floor: the tree unpacked by skopeo copy + umoci unpack.
    let pulled = work.path().join("pulled");
    let bundle = work.path().join("bundle");
    let start = Instant::now();
    skopeo_copy(
        &format!("docker://{host}/bench/rootfs-gzip:v1"),
        &format!("oci:{}:v1", pulled.display()),
        &["--src-tls-verify=false"],
    );
    umoci(&[
        "unpack",
        "--image",
        &format!("{}:v1", pulled.display()),
        &bundle.display().to_string(),
    ]);
    let unpack = start.elapsed().as_secs_f64();
    let tree = bundle.join("rootfs");
    drop_page_cache();
    let (floor, entries) = find_count(&tree, || {}).expect("find on a local tree hung");
    let floor = floor.as_secs_f64();
    let scenario = format!("{label}: mount + find | wc -l ({entries} entries)");
    rows.push(Row::new(
        scenario.clone(),
        "find on the unpacked tree (floor)",
        floor,
        "s",
        None,
    ));
    let (pull_find, _) = find_count(&tree, || {}).expect("find on a local tree hung");
    rows.push(Row::new(
        scenario.clone(),
        "skopeo copy + umoci unpack, then find",
        unpack + pull_find.as_secs_f64(),
        "s",
        Some(floor),
    ));
    drop_page_cache();
    let (floor_read, floor_sha) = read_file(&tree.join(&middle.path));
    assert_eq!(
        floor_sha, middle.sha256,
        "umoci unpacked another {}",
        middle.path
    );
    let floor_read = floor_read.as_secs_f64();
    let read_scenario = format!(
        "{label}: read /{} ({} bytes, at {:.0} of {:.0} MB of the base layer's tar), second mount",
        middle.path,
        middle.size,
        middle.offset as f64 / 1e6,
        image.base_uncompressed_size() as f64 / 1e6
    );
    let bytes_scenario = format!("{read_scenario}: bytes fetched");
    rows.push(Row::new(
        read_scenario.clone(),
        "cat of the unpacked tree (floor)",
        floor_read,
        "s",
        None,
    ));
    rows.push(Row::new(
        bytes_scenario.clone(),
        "the layers' size",
        total as f64,
        "bytes",
        None,
    ));

    // A publisher's index of the gzip image, bound to a copy of its
    // manifest (`ocifs index --bind`), for the rows "index bound".
    let bound = super::bind_index(host, "bench/rootfs-gzip:v1", "v1-indexed");

    // ocifs: first mount (cold cache: the layers are fetched and indexed)
    // and a second mount of the same cache.
    for (tool, proxy, reference, extra) in [
        (
            "ocifs, gzip, strict",
            proxy,
            "bench/rootfs-gzip:v1",
            &[][..],
        ),
        (
            "ocifs, gzip, lazy",
            proxy,
            "bench/rootfs-gzip:v1",
            &["--verify", "lazy"][..],
        ),
        (
            "ocifs, zstd, strict",
            &zstd_proxy,
            "bench/rootfs-zstd:v1",
            &[][..],
        ),
        (
            "ocifs, gzip, strict, index bound",
            proxy,
            "bench/rootfs-gzip:v1-indexed",
            &[][..],
        ),
    ] {
        if reference.ends_with("indexed") && !bound {
            continue;
        }
        let cache = work
            .path()
            .join(format!("cache-{}", tool.replace([',', ' '], "")));
        for pass in ["first mount", "second mount"] {
            drop_page_cache();
            proxy.reset();
            let start = Instant::now();
            mount(&proxy.host(), reference, &mnt, &cache, extra);
            let found = find_count(&mnt, || umount(&mnt));
            let secs = start.elapsed().as_secs_f64();
            let (_, count) = found.unwrap_or_else(|| panic!("find under {tool} hung"));
            assert_eq!(
                count, entries,
                "{tool}: the mount has {count} entries, umoci's tree {entries}"
            );
            rows.push(Row::new(
                scenario.clone(),
                format!(
                    "{tool}, {pass} (+{:.1} MB fetched)",
                    proxy.blob_bytes() as f64 / 1e6
                ),
                secs,
                "s",
                Some(floor),
            ));
            if pass == "second mount" {
                proxy.reset();
                let (d, sha) = read_file(&mnt.join(&middle.path));
                assert_eq!(sha, middle.sha256, "{tool} read another {}", middle.path);
                rows.push(Row::new(
                    read_scenario.clone(),
                    tool,
                    d.as_secs_f64(),
                    "s",
                    Some(floor_read),
                ));
                rows.push(Row::new(
                    bytes_scenario.clone(),
                    tool,
                    proxy.blob_bytes() as f64,
                    "bytes",
                    Some(total as f64),
                ));
            }
            umount(&mnt);
        }
    }

    // ratarmount on the same layer blobs held locally (a union mount, which
    // does not apply whiteouts); its index is kept beside them.
    let local = work.path().join("local");
    std::fs::create_dir(&local).expect("mkdir");
    let files: Vec<PathBuf> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let to = local.join(format!("layer{i}.tar.gz"));
            std::fs::copy(&l.path, &to).expect("copy a layer");
            to
        })
        .collect();
    for pass in ["first mount", "second mount"] {
        drop_page_cache();
        let (secs, count) = ratarmount_find(&files, &mnt);
        rows.push(Row::new(
            scenario.clone(),
            format!("ratarmount, local layers, {pass} ({count} entries)"),
            secs,
            "s",
            Some(floor),
        ));
        if pass == "second mount" {
            let (d, sha) = read_file(&mnt.join(&middle.path));
            assert_eq!(
                sha, middle.sha256,
                "ratarmount read another {}",
                middle.path
            );
            rows.push(Row::new(
                read_scenario.clone(),
                "ratarmount, local layers",
                d.as_secs_f64(),
                "s",
                Some(floor_read),
            ));
        }
        force_unmount(&mnt);
    }

    // archivemount mounts one archive: the base layer. Version 0.8.7 (the
    // one Debian ships) has been seen to deadlock in a lookup on this
    // layer; a find that does not end is reported and the daemon killed.
    drop_page_cache();
    let start = Instant::now();
    let mut daemon = Command::new("archivemount")
        .args(["-f", "-o", "readonly"])
        .arg(&files[0])
        .arg(&mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("archivemount (scripts/test installs it)");
    wait_mounted(&mnt, &mut daemon);
    let found = find_count(&mnt, || {
        let _ = daemon.kill();
        force_unmount(&mnt);
    });
    let secs = start.elapsed().as_secs_f64();
    let tool = match found {
        Some((_, count)) => format!("archivemount, local base layer only ({count} entries)"),
        None => format!(
            "archivemount, local base layer only: find hung, stopped after {} s",
            FIND_LIMIT.as_secs()
        ),
    };
    let value = if found.is_some() { secs } else { f64::NAN };
    rows.push(Row::new(scenario, tool, value, "s", Some(floor)));
    force_unmount(&mnt);
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// The CNI plugins Debian ships (`/usr/lib/cni`), zipped under
/// `linux-amd64/`, pushed with oras: run `bridge` out of the zip.
pub(crate) fn package(host: &str, proxy: &CountingProxy, rows: &mut Vec<Row>) {
    let cni = Path::new("/usr/lib/cni");
    assert!(
        cni.join("bridge").is_file(),
        "containernetworking-plugins is not installed (scripts/test installs it)"
    );
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src/linux-amd64");
    std::fs::create_dir_all(&src).expect("mkdir");
    for e in std::fs::read_dir(cni).expect("ls /usr/lib/cni").flatten() {
        std::fs::copy(e.path(), src.join(e.file_name())).expect("copy a plugin");
    }
    let zip = work.path().join("cni-plugins.zip");
    let mut c = Command::new("zip");
    c.args(["-q", "-r"])
        .arg(&zip)
        .arg("linux-amd64")
        .current_dir(work.path().join("src"));
    timed(c);
    let zip_size = std::fs::metadata(&zip).expect("stat").len();
    oras_push(
        host,
        "bench/cni:v1",
        &[PushFile::new(&zip)],
        &PushOptions::default(),
    );
    let scenario = format!(
        "run the CNI bridge plugin out of a {:.0} MB zip package in an artifact",
        zip_size as f64 / 1e6
    );
    let bytes_scenario = format!("{scenario}: bytes fetched");
    let run_bridge = |path: &Path| {
        let out = Command::new(path)
            .env("CNI_COMMAND", "VERSION")
            .output()
            .expect("run bridge");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("cniVersion"),
            "{} did not print its version",
            path.display()
        );
    };

    let pulled = work.path().join("pulled");
    let start = Instant::now();
    let files = oras_pull(host, "bench/cni:v1", &pulled);
    let zip_pulled = files
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "zip"))
        .unwrap_or_else(|| panic!("oras pull wrote no zip: {files:?}"));
    let mut c = Command::new("unzip");
    c.arg("-q").arg(zip_pulled).current_dir(&pulled);
    timed(c);
    run_bridge(&pulled.join("linux-amd64/bridge"));
    let reference = start.elapsed().as_secs_f64();
    rows.push(Row::new(
        scenario.clone(),
        "oras pull (oras-py) + unzip + run",
        reference,
        "s",
        None,
    ));
    rows.push(Row::new(
        bytes_scenario.clone(),
        "the zip's size",
        zip_size as f64,
        "bytes",
        None,
    ));
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    for (tool, extra) in [
        ("ocifs mount --expand + run, strict", &["--expand"][..]),
        (
            "ocifs mount --expand + run, lazy",
            &["--expand", "--verify", "lazy"][..],
        ),
        (
            "ocifs mount --expand + run, lazy, no background completion",
            &[
                "--expand",
                "--verify",
                "lazy",
                "--background-fetch-max",
                "0",
            ][..],
        ),
    ] {
        let cache = work.path().join(format!("cache-{}", tool.len()));
        proxy.reset();
        let (secs, ()) = mount_then(&proxy.host(), "bench/cni:v1", &mnt, &cache, extra, || {
            run_bridge(&mnt.join("cni-plugins/linux-amd64/bridge"));
        });
        rows.push(Row::new(scenario.clone(), tool, secs, "s", Some(reference)));
        rows.push(Row::new(
            bytes_scenario.clone(),
            tool,
            proxy.blob_bytes() as f64,
            "bytes",
            Some(zip_size as f64),
        ));
    }
    assert!(!is_mounted(&mnt), "{} is still mounted", mnt.display());
}

/// Files of usr/lib read in sorted order (not archive order) through a
/// mount of an OCI layout: the fixture's gzip layout (umoci's) and a zstd
/// one skopeo makes of it, against `cat` of the unpacked tree; and what the
/// reader decoded to serve them (`.ocifs-stats`' `decoded_bytes`).
pub(crate) fn layout_reads(rows: &mut Vec<Row>) {
    const FILES: usize = 150;
    let image = rootfs_image();
    let work = tempfile::tempdir().expect("tempdir");
    let zstd = work.path().join("zstd");
    skopeo_copy(
        &image.oci_ref(),
        &format!("oci:{}:v1", zstd.display()),
        &["--dest-compress-format", "zstd", "--dest-compress"],
    );
    let bundle = work.path().join("bundle");
    let tree = image.unpack(&bundle);
    let mut files: Vec<String> = ocifs_tests::walk(&tree, false)
        .into_iter()
        .filter(|r| {
            r.kind == ocifs_tests::walk::Kind::File
                && r.path.starts_with("usr/lib/")
                && r.size > Some(0)
        })
        .map(|r| r.path)
        .collect();
    files.sort();
    files.truncate(FILES);
    let read_files = |root: &Path| -> (f64, u64) {
        let start = Instant::now();
        let mut n = 0;
        for f in &files {
            n += std::fs::read(root.join(f)).expect("read").len() as u64;
        }
        (start.elapsed().as_secs_f64(), n)
    };
    drop_page_cache();
    let (floor, bytes) = read_files(&tree);
    let scenario = format!(
        "rootfs as an OCI layout: read {FILES} files of /usr/lib in sorted order ({bytes} bytes), first mount"
    );
    let decoded_scenario = format!("{scenario}: bytes decoded");
    rows.push(Row::new(
        scenario.clone(),
        "cat of the unpacked tree (floor)",
        floor,
        "s",
        None,
    ));
    rows.push(Row::new(
        decoded_scenario.clone(),
        "the bytes read",
        bytes as f64,
        "bytes",
        None,
    ));
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    for (tool, reference) in [
        ("ocifs, gzip layout (umoci), strict", image.oci_ref()),
        (
            "ocifs, zstd layout (skopeo), strict",
            format!("oci:{}:v1", zstd.display()),
        ),
    ] {
        let cache = work
            .path()
            .join(format!("cache-{}", tool.replace([',', ' ', '(', ')'], "")));
        drop_page_cache();
        let mut c = Command::new(super::ocifs_bin());
        c.args(["mount", "--daemon", "--cache-dir"])
            .arg(&cache)
            .arg(&reference)
            .arg(&mnt);
        let start = Instant::now();
        timed(c);
        let (_, n) = read_files(&mnt);
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(n, bytes, "{tool} read other files");
        // An ocifs without the counter reports none.
        let decoded = std::fs::read_to_string(mnt.join(".ocifs-stats"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["decoded_bytes"].as_u64())
            .map_or(f64::NAN, |d| d as f64);
        umount(&mnt);
        rows.push(Row::new(scenario.clone(), tool, secs, "s", Some(floor)));
        rows.push(Row::new(
            decoded_scenario.clone(),
            tool,
            decoded,
            "bytes",
            Some(bytes as f64),
        ));
    }
}

/// The Debian minbase image as one layer, converted by its own tools to
/// eStargz (ctr-remote) and zstd:chunked (podman), beside the gzip
/// original: a first strict mount + `find` on a cold cache, and one file
/// from the middle of the layer on a fresh node.
pub(crate) fn chunked(rows: &mut Vec<Row>) {
    // The peer must be there before the long conversions: never skipped.
    stargz_grpc_bin();
    let work = tempfile::tempdir().expect("tempdir");
    let converted = Converted::make(work.path());
    let image = minbase_image();
    let middle = image.middle_file();
    let tree = image.unpack(&work.path().join("bundle"));
    drop_page_cache();
    let (floor, entries) = find_count(&tree, || {}).expect("find on a local tree hung");
    let floor = floor.as_secs_f64();
    let gzip_size = image.layers()[0].size;
    let label = format!(
        "Debian minbase, one layer ({:.0} MB gzip)",
        gzip_size as f64 / 1e6
    );
    let scenario =
        format!("{label}: first mount + find | wc -l, strict, cold cache ({entries} entries)");
    let bytes_scenario = format!("{scenario}: bytes fetched (ratio to the layer)");
    let file_scenario = format!(
        "{label}: read /{} ({} bytes) on a fresh node, strict: bytes fetched (ratio to the layer)",
        middle.path, middle.size
    );
    rows.push(Row::new(
        scenario.clone(),
        "find on the unpacked tree (floor)",
        floor,
        "s",
        None,
    ));
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    for (i, (tool, tag)) in [
        ("ocifs, gzip original (streamed whole to list it)", "v1"),
        ("ocifs, eStargz (ctr-remote), from its TOC", "esgz"),
        ("ocifs, zstd:chunked (podman), from its TOC", "chunked"),
    ]
    .into_iter()
    .enumerate()
    {
        let host = converted.host(if tag == "v1" { "esgz" } else { tag });
        let manifest = registry_manifest(&host, &format!("minbase:{tag}"));
        let layer = manifest["layers"][0]["size"].as_u64().expect("size") as f64;
        let proxy = CountingProxy::start(&host);
        let reference = format!("minbase:{tag}");
        drop_page_cache();
        let cache = work.path().join(format!("cache-{i}"));
        let start = Instant::now();
        mount(&proxy.host(), &reference, &mnt, &cache, &[]);
        let found = find_count(&mnt, || umount(&mnt));
        let secs = start.elapsed().as_secs_f64();
        let (_, count) = found.unwrap_or_else(|| panic!("find under {tool} hung"));
        assert_eq!(
            count, entries,
            "{tool}: the mount has {count} entries, umoci's tree {entries}"
        );
        umount(&mnt);
        rows.push(Row::new(
            scenario.clone(),
            format!(
                "{tool} (+{:.1} MB fetched)",
                proxy.blob_bytes() as f64 / 1e6
            ),
            secs,
            "s",
            Some(floor),
        ));
        rows.push(Row::new(
            bytes_scenario.clone(),
            tool,
            proxy.blob_bytes() as f64,
            "bytes",
            Some(layer),
        ));
        let fresh = work.path().join(format!("fresh-{i}"));
        mount(&proxy.host(), &reference, &mnt, &fresh, &[]);
        proxy.reset();
        let (_, sha) = read_file(&mnt.join(&middle.path));
        assert_eq!(sha, middle.sha256, "{tool} read another {}", middle.path);
        umount(&mnt);
        rows.push(Row::new(
            file_scenario.clone(),
            tool,
            proxy.blob_bytes() as f64,
            "bytes",
            Some(layer),
        ));
    }
    against_stargz(rows, &converted, &label, &tree, entries, &mnt, work.path());
}

/// What the stargz snapshotter fetched and how long it took, from the
/// start of `ctr-remote image rpull` to the end of the file read.
struct PeerRun {
    secs: f64,
    /// Of which `ctr-remote image rpull`.
    rpull_secs: f64,
    /// Blob bytes through the proxy when find and the read had finished.
    bytes: u64,
    /// Blob bytes once its background fetch stopped (none new for 3 s),
    /// and the seconds after the read that took.
    settled: (u64, f64),
}

/// How long the stargz snapshotter's background fetch may go on.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// How long no new blob byte must come for its background fetch to count
/// as settled: longer than the 5 s the library's background task manager
/// waits for the layer to be idle before it starts fetching.
const SETTLE_QUIET: Duration = Duration::from_secs(10);

/// The eStargz image through stargz-snapshotter's own path, its snapshotter
/// daemon (`containerd-stargz-grpc`, built by scripts/test) behind a
/// private containerd: `ctr-remote image rpull`, an overlay mount of a
/// snapshot prepared on the image's layer, `find | wc -l` and a read of
/// the middle file, next to ocifs doing the same (strict mount, find, the
/// same read) on a fresh cache; both cold (page cache dropped), both
/// through a counting proxy of their own.
fn against_stargz(
    rows: &mut Vec<Row>,
    converted: &Converted,
    label: &str,
    tree: &Path,
    entries: u64,
    mnt: &Path,
    work: &Path,
) {
    let image = minbase_image();
    let middle = image.middle_file();
    let host = converted.host("esgz");
    let manifest = registry_manifest(&host, "minbase:esgz");
    let layer = manifest["layers"][0]["size"].as_u64().expect("size") as f64;
    let scenario = format!(
        "{label}, eStargz: first mount + find | wc -l + read /{} ({} bytes), cold cache ({entries} entries)",
        middle.path, middle.size
    );
    let bytes_scenario = format!("{scenario}: bytes fetched (ratio to the layer)");
    let versus = format!("{scenario}: ocifs against stargz-snapshotter (ratio to the peer)");

    drop_page_cache();
    let start = Instant::now();
    let (_, count) = find_count(tree, || {}).expect("find on a local tree hung");
    assert_eq!(count, entries);
    let (_, sha) = read_file(&tree.join(&middle.path));
    assert_eq!(sha, middle.sha256);
    let floor = start.elapsed().as_secs_f64();
    rows.push(Row::new(
        scenario.clone(),
        "find + read on the unpacked tree (floor)",
        floor,
        "s",
        None,
    ));

    // ocifs: strict mount (the default), find, the read; a fresh cache.
    let tool = "ocifs, strict mount, from the TOC";
    let proxy = CountingProxy::start(&host);
    let cache = work.join("cache-vs-stargz");
    drop_page_cache();
    let start = Instant::now();
    mount(&proxy.host(), "minbase:esgz", mnt, &cache, &[]);
    let (_, count) =
        find_count(mnt, || umount(mnt)).unwrap_or_else(|| panic!("find under {tool} hung"));
    let (_, sha) = read_file(&mnt.join(&middle.path));
    let ocifs_secs = start.elapsed().as_secs_f64();
    let ocifs_bytes = proxy.blob_bytes();
    umount(mnt);
    assert_eq!(
        count, entries,
        "{tool}: {count} entries, umoci's tree {entries}"
    );
    assert_eq!(sha, middle.sha256, "{tool} read another {}", middle.path);
    drop(proxy);

    let peer = stargz_run(&host, mnt, entries);
    let peer_tool = "stargz-snapshotter (ctr-remote rpull + overlay mount of a snapshot)";
    rows.push(Row::new(
        scenario.clone(),
        format!("{tool} (+{:.1} MB fetched)", ocifs_bytes as f64 / 1e6),
        ocifs_secs,
        "s",
        Some(floor),
    ));
    rows.push(Row::new(
        scenario.clone(),
        format!(
            "{peer_tool} (rpull {:.2} s of it; +{:.1} MB fetched by then)",
            peer.rpull_secs,
            peer.bytes as f64 / 1e6
        ),
        peer.secs,
        "s",
        Some(floor),
    ));
    rows.push(Row::new(
        bytes_scenario.clone(),
        tool,
        ocifs_bytes as f64,
        "bytes",
        Some(layer),
    ));
    rows.push(Row::new(
        bytes_scenario.clone(),
        format!("{peer_tool}, when the read ended"),
        peer.bytes as f64,
        "bytes",
        Some(layer),
    ));
    rows.push(Row::new(
        bytes_scenario,
        format!(
            "{peer_tool}, after its background fetch settled ({:.1} s later)",
            peer.settled.1
        ),
        peer.settled.0 as f64,
        "bytes",
        Some(layer),
    ));
    rows.push(Row::new(
        versus.clone(),
        "stargz-snapshotter: time",
        peer.secs,
        "s",
        None,
    ));
    rows.push(Row::new(
        versus.clone(),
        "ocifs: time",
        ocifs_secs,
        "s",
        Some(peer.secs),
    ));
    rows.push(Row::new(
        versus.clone(),
        "stargz-snapshotter: bytes when the read ended",
        peer.bytes as f64,
        "bytes",
        None,
    ));
    rows.push(Row::new(
        versus,
        "ocifs: bytes",
        ocifs_bytes as f64,
        "bytes",
        Some(peer.bytes as f64),
    ));
}

/// One cold run of the stargz snapshotter on `HOST/minbase:esgz` (through
/// a counting proxy), its overlay mounted at `mnt`.
fn stargz_run(host: &str, mnt: &Path, entries: u64) -> PeerRun {
    let middle = minbase_image().middle_file();
    let manifest = registry_manifest(host, "minbase:esgz");
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let out = Command::new("curl")
        .args([
            "-sf",
            &format!("http://{host}/v2/minbase/blobs/{config_digest}"),
        ])
        .output()
        .expect("curl");
    assert!(out.status.success(), "fetching the esgz image's config");
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the config");
    // One layer: its chain ID is its diff ID.
    let chain_id = config["rootfs"]["diff_ids"][0]
        .as_str()
        .expect("diff_ids")
        .to_owned();

    let containerd = Containerd::start_with_stargz();
    let proxy = CountingProxy::start(host);
    let reference = format!("{}/minbase:esgz", proxy.host());
    let snapshots = |args: &[&str]| -> String {
        let mut all = vec!["snapshots", "--snapshotter", STARGZ_SNAPSHOTTER];
        all.extend_from_slice(args);
        containerd.ctr_remote(&all)
    };
    drop_page_cache();
    let start = Instant::now();
    containerd.ctr_remote(&["image", "rpull", "--plain-http", &reference]);
    let rpull_secs = start.elapsed().as_secs_f64();
    snapshots(&["prepare", "ocifs-bench", &chain_id]);
    let command = snapshots(&["mounts", &mnt.display().to_string(), "ocifs-bench"]);
    let status = Command::new("sh")
        .arg("-c")
        .arg(command.trim())
        .status()
        .expect("sh");
    assert!(
        status.success(),
        "mounting the stargz snapshot ({}):\n{}",
        command.trim(),
        containerd.stargz_log()
    );
    let lazy_umount = || {
        let _ = Command::new("umount").arg("-l").arg(mnt).status();
    };
    let found = find_count(mnt, lazy_umount);
    let (_, count) = found.unwrap_or_else(|| {
        panic!(
            "find under the stargz snapshot hung:\n{}",
            containerd.stargz_log()
        )
    });
    let (_, sha) = read_file(&mnt.join(&middle.path));
    let secs = start.elapsed().as_secs_f64();
    let bytes = proxy.blob_bytes();
    assert_eq!(
        count, entries,
        "the stargz snapshot has {count} entries, umoci's tree {entries}"
    );
    assert_eq!(
        sha, middle.sha256,
        "stargz-snapshotter read another {}",
        middle.path
    );

    let done = Instant::now();
    let (mut last, mut since) = (bytes, Instant::now());
    while since.elapsed() < SETTLE_QUIET && done.elapsed() < SETTLE_LIMIT {
        std::thread::sleep(Duration::from_millis(200));
        let now = proxy.blob_bytes();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    let settled = (last, since.duration_since(done).as_secs_f64());
    let _ = Command::new("umount").arg(mnt).status();
    drop(containerd);
    PeerRun {
        secs,
        rpull_secs,
        bytes,
        settled,
    }
}

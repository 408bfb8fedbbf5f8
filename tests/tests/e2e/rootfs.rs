//! Container images shown as their root filesystem: a Debian minbase
//! (debootstrap) under two crafted layers, built by umoci and pushed by
//! skopeo as gzip and as zstd, mounted and compared with `umoci unpack` of
//! the same image; a second mount that lists from the stored layer indexes
//! and reads one file with one seek span of the big gzip layer; and a
//! corpus of malformed layers written byte by byte here.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ocifs_tests::rootfs::{
    BLOCK_SLACK, LayerCompression, RANDOM_SEED, SEEK_SPACING, registry_manifest,
};
use ocifs_tests::tarfile::{TarHeader, TarKind, TarWriter, gzip, zstd};
use ocifs_tests::walk::{Kind, Row, diff, file_sha256};
use ocifs_tests::{
    CountingProxy, Mounted, OciLayoutBuilder, Output, Platform, Registry, RegistryAuth,
    RootfsImage, mount_options, random_bytes, rootfs_image, run_ocifs, sha256_hex, skopeo_copy,
    temp_dir, walk,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// How long one malformed case may take before it counts as a hang.
const CASE_LIMIT: Duration = Duration::from_secs(60);

const REPO: &str = "rootfs/debian:minbase";

/// Panics with the walk diff if `got` differs from `want`.
#[track_caller]
fn assert_same_tree(want_name: &str, want: &[Row], got_name: &str, got: &[Row]) {
    if let Some(d) = diff(want_name, want, got_name, got, 40) {
        panic!("{d}");
    }
}

fn by_path(rows: &[Row]) -> BTreeMap<&str, &Row> {
    rows.iter().map(|r| (r.path.as_str(), r)).collect()
}

/// The fixture's corners are really in `rows`, so that two equal walks
/// are not equal by missing them both.
#[track_caller]
fn assert_corners(what: &str, rows: &[Row]) {
    let m = by_path(rows);
    let row = |p: &str| -> &Row {
        m.get(p)
            .copied()
            .unwrap_or_else(|| panic!("{what}: no {p}"))
    };
    let absent = |p: &str| assert!(!m.contains_key(p), "{what}: {p} should be gone");
    let o = "opt/ocifs";
    // Whiteouts, a whiteout and a new file of the same name.
    absent("etc/motd");
    absent("usr/share/doc/apt");
    absent("usr/share/doc/apt/copyright");
    absent(&format!("{o}/to-delete"));
    assert!(
        !rows.iter().any(|r| r.path.contains(".wh.")),
        "{what}: a whiteout is shown"
    );
    assert_eq!(
        row("etc/issue").sha256.as_deref(),
        Some(sha256_hex(b"ocifs test image \\n \\l\n").as_str()),
        "{what}: etc/issue"
    );
    // Opaque directories: only their own layer's entries, with its mode.
    let default: Vec<&str> = m
        .keys()
        .filter(|p| p.starts_with("etc/default/"))
        .copied()
        .collect();
    assert_eq!(default, ["etc/default/ocifs"], "{what}");
    assert_eq!(row("etc/default").mode, 0o750, "{what}");
    let opaque: Vec<&str> = m
        .keys()
        .filter(|p| p.starts_with(&format!("{o}/will-be-opaque/")))
        .copied()
        .collect();
    assert_eq!(opaque, [format!("{o}/will-be-opaque/c")], "{what}");
    // Replacements both ways.
    assert_eq!(row("usr/share/doc/bash").kind, Kind::File, "{what}");
    absent("usr/share/doc/bash/copyright");
    assert_eq!(row("etc/host.conf").kind, Kind::Dir, "{what}");
    assert_eq!(row("etc/host.conf").mode, 0o700, "{what}");
    assert_eq!(row("etc/host.conf/inner").kind, Kind::File, "{what}");
    assert_eq!(row("etc/os-release").kind, Kind::File, "{what}");
    assert_eq!(row("etc/debian_version").size, Some(11), "{what}");
    // Hard links: the same bytes as their targets, in this layer and below.
    let data = row(&format!("{o}/data.txt"));
    for l in ["data-hardlink", "data-hardlink-2"] {
        let r = row(&format!("{o}/{l}"));
        assert_eq!(
            (r.kind, &r.sha256),
            (Kind::File, &data.sha256),
            "{what}: {l}"
        );
        assert_eq!((r.uid, r.gid, r.mode), (1000, 1000, 0o640), "{what}: {l}");
    }
    assert_eq!(
        row(&format!("{o}/os-release-hardlink")).sha256,
        row("usr/lib/os-release").sha256,
        "{what}"
    );
    // Symlinks.
    for (l, t) in [
        ("rel-link", "../../etc/os-release".to_owned()),
        ("abs-link", "/usr/lib/os-release".to_owned()),
        ("dangling", "/no/such/file".to_owned()),
        ("long-target", format!("/{}/target", "t".repeat(120))),
    ] {
        let r = row(&format!("{o}/{l}"));
        assert_eq!(
            (r.kind, r.target.as_deref()),
            (Kind::Symlink, Some(t.as_str())),
            "{what}"
        );
    }
    // Devices and FIFOs, the base layer's too.
    for (p, kind, dev) in [
        (format!("{o}/null"), Kind::Char, Some((1, 3))),
        (format!("{o}/loop7"), Kind::Block, Some((7, 7))),
        (format!("{o}/bigdev"), Kind::Char, Some((259, 70000))),
        (format!("{o}/fifo"), Kind::Fifo, None),
        ("dev/null".to_owned(), Kind::Char, Some((1, 3))),
        ("dev/tty".to_owned(), Kind::Char, Some((5, 0))),
    ] {
        let r = row(&p);
        assert_eq!((r.kind, r.device), (kind, dev), "{what}: {p}");
    }
    // Special bits and owners.
    for (p, mode, uid, gid) in [
        ("setuid-tool", 0o4755, 0, 0),
        ("setgid-tool", 0o2755, 0, 50),
        ("shared", 0o2775, 0, 100),
        ("tmp", 0o1777, 0, 0),
        ("owned-by-1000", 0o600, 1000, 1000),
        ("nobody", 0o644, 65534, 65534),
        ("big-uid", 0o644, 100_000, 100_000),
    ] {
        let r = row(&format!("{o}/{p}"));
        assert_eq!((r.mode, r.uid, r.gid), (mode, uid, gid), "{what}: {p}");
    }
    assert_eq!(row("var/mail").mode, 0o2775, "{what}: var/mail");
    assert_eq!(row("var/mail").gid, 8, "{what}: var/mail");
    // Long names, xattrs (the file, at least), implicit parents.
    row(&format!("{o}/{}", "long-name-".repeat(15)));
    row(&format!("{o}/with-xattr"));
    assert_eq!(row(&format!("{o}/implicit/deep")).kind, Kind::Dir, "{what}");
    row(&format!("{o}/implicit/deep/file"));
    assert_eq!(
        row(&format!("{o}/random.bin")).sha256.as_deref(),
        Some(sha256_hex(&random_bytes(3 << 20, RANDOM_SEED)).as_str()),
        "{what}"
    );
}

/// Pushes the fixture, mounts it and compares the walk of the mount with
/// the walk of `umoci unpack`.
fn mount_equals_umoci_unpack(compression: LayerCompression) {
    let image = rootfs_image();
    let registry = Registry::start(RegistryAuth::None);
    let manifest = image.push(&registry.host(), REPO, compression);
    if compression == LayerCompression::Zstd {
        // umoci 0.4.7 cannot unpack zstd layers ("blob is not correct
        // mediatype"), so the reference is the unpack of the gzip layout
        // skopeo recompressed from: the same uncompressed tar streams, as
        // the configs' diff_ids (digests of the uncompressed layers) show.
        let config = |digest: &str| -> Value {
            let p = image
                .layout()
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:"));
            serde_json::from_slice(&std::fs::read(p).expect("the layout's config")).expect("JSON")
        };
        let layout_manifest: Value = {
            let index: Value = serde_json::from_slice(
                &std::fs::read(image.layout().join("index.json")).expect("index.json"),
            )
            .expect("JSON");
            // A manifest is a JSON blob like a config.
            config(index["manifests"][0]["digest"].as_str().expect("digest"))
        };
        let want = config(
            layout_manifest["config"]["digest"]
                .as_str()
                .expect("config"),
        );
        let out = Command::new("skopeo")
            .args(["inspect", "--config", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/{REPO}", registry.host()))
            .output()
            .expect("skopeo");
        let got: Value = serde_json::from_slice(&out.stdout).expect("the pushed config");
        assert_eq!(
            got["rootfs"]["diff_ids"], want["rootfs"]["diff_ids"],
            "skopeo changed the uncompressed layers: {manifest:#}"
        );
    }
    let work = temp_dir();
    let reference = image.unpack(&work.path().join("bundle"));
    let want = walk(&reference, true);
    assert_corners("umoci unpack", &want);

    let mnt = Mounted::new(&format!("{}/{REPO}", registry.host()), &["--plain-http"]);
    let options = mount_options(mnt.dir()).expect("the mount's options");
    for o in ["ro", "nosuid", "nodev"] {
        assert!(
            options.split(',').any(|x| x == o),
            "the mount is not {o}: {options}"
        );
    }
    let start = Instant::now();
    let got = walk(mnt.dir(), true);
    let walked = start.elapsed();
    if let Some(d) = diff("umoci unpack", &want, "ocifs mount", &got, 40) {
        panic!("{d}\nmount log (tail):\n{}", tail(&mnt.log(), 30));
    }
    assert_corners("ocifs mount", &got);
    // nodev: a device node of the image never reaches the host's device.
    let err = std::fs::File::open(mnt.path("opt/ocifs/null")).expect_err("opened a device");
    assert_eq!(err.raw_os_error(), Some(13), "{err}"); // EACCES
    // Writes are refused.
    let err = std::fs::write(mnt.path("etc/new"), b"x").expect_err("a write");
    assert_eq!(err.raw_os_error(), Some(30), "{err}"); // EROFS
    eprintln!(
        "{compression:?}: walked and hashed {} entries through the mount in {:.1}s",
        got.len(),
        walked.as_secs_f64()
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn gzip_image_mount_equals_umoci_unpack() {
    mount_equals_umoci_unpack(LayerCompression::Gzip);
}

#[test]
fn zstd_image_mount_equals_umoci_unpack() {
    mount_equals_umoci_unpack(LayerCompression::Zstd);
}

/// `ls -R --json` rows as walk rows (no contents), the root left out.
fn json_rows(json: &Value) -> Vec<Row> {
    let mut rows: Vec<Row> = json
        .as_array()
        .unwrap_or_else(|| panic!("ls --json is not an array: {json}"))
        .iter()
        .map(|r| {
            let num = |k: &str| {
                r[k].as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or_else(|| panic!("{k} of {r}"))
            };
            let kind = match r["type"].as_str() {
                Some("file") => Kind::File,
                Some("dir") => Kind::Dir,
                Some("symlink") => Kind::Symlink,
                Some("char") => Kind::Char,
                Some("block") => Kind::Block,
                Some("fifo") => Kind::Fifo,
                other => panic!("type {other:?} in {r}"),
            };
            Row {
                path: r["path"].as_str().expect("path").to_owned(),
                kind,
                mode: num("mode") & 0o7777,
                uid: num("uid"),
                gid: num("gid"),
                size: (kind == Kind::File).then(|| r["size"].as_u64().expect("size")),
                sha256: None,
                target: (kind == Kind::Symlink)
                    .then(|| r["target"].as_str().expect("target").to_owned()),
                device: matches!(kind, Kind::Char | Kind::Block)
                    .then(|| (num("major"), num("minor"))),
            }
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn ls_json_of_an_image_has_types_owners_and_devices() {
    let image = rootfs_image();
    let registry = Registry::start(RegistryAuth::None);
    image.push(&registry.host(), REPO, LayerCompression::Gzip);
    let reference = format!("{}/{REPO}", registry.host());
    let work = temp_dir();
    let unpacked = image.unpack(&work.path().join("bundle"));
    let want: Vec<Row> = walk(&unpacked, false)
        .into_iter()
        .filter(|r| r.path != ".")
        .collect();

    // One cache for the runs below: the layers are indexed once (a debug
    // build inflates the 200 MB base layer in seconds, not instantly).
    let cache = work.path().join("cache").display().to_string();
    let ls = |args: &[&str]| {
        let mut all = vec!["ls", "--plain-http", "--cache-dir", &cache];
        all.extend_from_slice(args);
        run_ocifs(all)
    };
    let out = ls(&["-R", "--json", &reference]);
    let got = json_rows(&out.success().json());
    assert_same_tree("umoci unpack", &want, "ocifs ls -R --json", &got);
    // The same from the layout, read in place.
    let out = run_ocifs(["ls", "-R", "--json", &image.oci_ref()]);
    let from_layout = json_rows(&out.success().json());
    assert_same_tree("ls of the registry", &got, "ls of the layout", &from_layout);

    let raw = out.json();
    let find = |p: &str| -> &Value {
        raw.as_array()
            .and_then(|a| a.iter().find(|r| r["path"] == p))
            .unwrap_or_else(|| panic!("ls --json has no {p}"))
    };
    let null = find("opt/ocifs/null");
    assert_eq!(
        (&null["type"], &null["major"], &null["minor"]),
        (&"char".into(), &1.into(), &3.into())
    );
    let block = find("opt/ocifs/loop7");
    assert_eq!(
        (&block["type"], &block["major"], &block["minor"]),
        (&"block".into(), &7.into(), &7.into())
    );
    assert_eq!(find("opt/ocifs/fifo")["type"], "fifo");
    assert_eq!(find("opt/ocifs/setuid-tool")["mode"].as_u64(), Some(0o4755));
    assert_eq!(
        find("opt/ocifs/tmp")["mode"].as_u64().map(|m| m & 0o7777),
        Some(0o1777)
    );
    let owned = find("opt/ocifs/owned-by-1000");
    assert_eq!((&owned["uid"], &owned["gid"]), (&1000.into(), &1000.into()));
    assert_eq!(find("opt/ocifs/abs-link")["target"], "/usr/lib/os-release");

    // ls -l shows the same: type letters, special bits, owners, device numbers.
    let out = ls(&["-l", &reference, "opt/ocifs"]);
    let long = out.success().stdout_str();
    for (name, needle) in [
        ("null", "crw-rw-rw-"),
        ("loop7", "brw-rw----"),
        ("fifo", "prw-r--r--"),
        ("setuid-tool", "-rwsr-xr-x"),
        ("tmp", "drwxrwxrwt"),
        ("shared", "drwxrwsr-x"),
    ] {
        let line = long
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")) || l.ends_with(&format!(" {name}/")))
            .unwrap_or_else(|| panic!("ls -l has no {name}:\n{long}"));
        assert!(line.starts_with(needle), "{name}: {line}");
    }

    // cat: through hard links and a relative symlink; whiteouts are gone.
    let cat = |p: &str| run_ocifs(["cat", "--plain-http", "--cache-dir", &cache, &reference, p]);
    assert_eq!(
        cat("opt/ocifs/data-hardlink-2").success().stdout,
        b"hard-linked data\n"
    );
    assert_eq!(
        cat("opt/ocifs/rel-link").success().stdout,
        b"NAME=\"ocifs test\"\n"
    );
    let middle = image.middle_file();
    assert_eq!(
        sha256_hex(&cat(&middle.path).success().stdout),
        middle.sha256,
        "{}",
        middle.path
    );
    cat("etc/motd").code_is(3);
    cat("opt/ocifs/.wh.to-delete").code_is(3);
}

/// The bytes the proxy sent back for GETs of `digests`.
fn layer_bytes(proxy: &CountingProxy, digests: &[String]) -> u64 {
    proxy
        .blob_gets()
        .iter()
        .filter(|r| digests.iter().any(|d| r.path.ends_with(d.as_str())))
        .map(|r| r.body_bytes)
        .sum()
}

/// Removes the layer blobs (complete or partial) from `cache`, as an
/// eviction would, keeping manifests, configs and the layer indexes: what
/// the next mount fetches is then what it needs, not what the first mount
/// happened to leave.
fn evict_layers(cache: &Path, digests: &[String]) {
    for d in digests {
        let hex = d.trim_start_matches("sha256:");
        let _ = std::fs::remove_file(cache.join("blobs/sha256").join(hex));
        let _ = std::fs::remove_dir_all(cache.join("partial/sha256").join(hex));
    }
}

/// The fixture pushed as gzip behind a counting proxy: the registry (kept
/// alive by the caller), the proxy, the reference through it, and the
/// layers' digests.
fn proxied_gzip(image: &RootfsImage) -> (Registry, CountingProxy, String, Vec<String>) {
    let registry = Registry::start(RegistryAuth::None);
    image.push(&registry.host(), REPO, LayerCompression::Gzip);
    let proxy = CountingProxy::start(&registry.host());
    let reference = format!("{}/{REPO}", proxy.host());
    let digests = image.layers().iter().map(|l| l.digest.clone()).collect();
    (registry, proxy, reference, digests)
}

#[test]
fn second_mount_lists_without_layer_bytes_and_reads_one_span() {
    let image = rootfs_image();
    let (_registry, proxy, reference, digests) = proxied_gzip(image);
    let work = temp_dir();
    let cache = work.path().join("cache");
    let cache_arg = cache.display().to_string();

    // First mount: lists everything (indexing every layer), then goes.
    let first = Mounted::new(&reference, &["--plain-http", "--cache-dir", &cache_arg]);
    let listed = walk(first.dir(), false);
    first.unmount();
    for d in &digests {
        let index = cache
            .join("index/sha256")
            .join(d.trim_start_matches("sha256:"));
        assert!(index.is_file(), "no layer index at {}", index.display());
    }

    let middle = image.middle_file();
    let big = &image.layers()[0];
    // The compressed bytes of one seek span around the file, and what a
    // read of them fetches at most in chunks.
    let seek = image.middle_span();
    let at = [seek.start, seek.end];
    let (span, bound) = (seek.end - seek.start, seek.bound);
    assert!(
        at[0] > 8 * bound,
        "the middle file is not far enough into the layer for the test to mean anything ({at:?})"
    );

    // Both modes run; what went wrong is reported together at the end.
    let mut failures = Vec::new();
    for verify in ["strict", "lazy"] {
        evict_layers(&cache, &digests);
        proxy.reset();
        let second = Mounted::new(
            &reference,
            &[
                "--plain-http",
                "--verify",
                verify,
                "--cache-dir",
                &cache_arg,
            ],
        );
        let again = walk(second.dir(), false);
        assert_same_tree("the first mount", &listed, "the second mount", &again);
        assert_eq!(
            layer_bytes(&proxy, &digests),
            0,
            "{verify}: listing the whole tree again fetched layer bytes:\n{}",
            proxy.describe()
        );
        proxy.reset();
        assert_eq!(
            file_sha256(&second.path(&middle.path)),
            middle.sha256,
            "{verify}: {} read wrong",
            middle.path
        );
        let fetched = layer_bytes(&proxy, &digests);
        eprintln!(
            "{verify}: reading {} ({} bytes at {} of a {}-byte stream, {}-byte layer) fetched {fetched} bytes; \
             the bound is {bound} (a {span}-byte span)",
            middle.path,
            middle.size,
            middle.offset,
            image.base_uncompressed_size(),
            big.size
        );
        if fetched == 0 || fetched > bound {
            failures.push(format!(
                "{verify}: reading {} fetched {fetched} bytes, over one seek span ({span} bytes, \
                 compressed {}..{}) plus one chunk ({bound} in chunks):\n{}\nmount log (tail):\n{}",
                middle.path,
                at[0],
                at[1],
                proxy.describe(),
                tail(&second.log(), 20)
            ));
        }
        second.unmount();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What a malformed layer must do.
#[derive(Clone, Debug)]
enum Expect {
    /// Exit 7, naming the layer digest and (if given) the entry.
    Fails(Option<String>),
    /// Exit 0: `dropped` are left out, each named in a warning with the
    /// layer digest; the listing is exactly `listed`.
    Drops {
        dropped: Vec<String>,
        listed: Vec<&'static str>,
    },
}

struct Case {
    tag: &'static str,
    media_type: &'static str,
    layer: Vec<u8>,
    expect: Expect,
    /// Extra options for `ocifs ls`.
    options: &'static [&'static str],
    /// Pushed with skopeo and read from the registry; otherwise read from
    /// the layout (skopeo would recompress an uncompressed layer, or
    /// "fix" a gzip media type on a plain tar).
    push: bool,
}

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

fn ok_file(t: &mut TarWriter) {
    t.file("ok.txt", 0o644, (0, 0), b"fine\n");
}

/// `data` gzip-compressed by Debian's `gzip` (fast, for big inputs).
fn gzip_cli(data: &[u8], level: u32) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg(format!("-{level}"))
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("gzip");
    writer.join().expect("writer").expect("writing to gzip");
    assert!(out.status.success());
    out.stdout
}

/// A gzip bomb: a small tar, then 4 GiB of zeros past its end-of-archive
/// marker in about 4 MiB (concatenated gzip members, each 64 MiB of zeros
/// at deflate's best ratio, ~1030:1). What the tar declares bounds the
/// decoding, so it fails about 1 MiB past the tar's end. (A tar that
/// declares huge zero-filled files is a real layer, such as a disk image,
/// and is shown.)
fn gzip_bomb() -> Vec<u8> {
    let zeros = gzip_cli(&vec![0u8; 64 << 20], 9);
    let mut t = TarWriter::new();
    ok_file(&mut t);
    let mut out = gzip(&t.finish(), 6);
    for _ in 0..64 {
        out.extend_from_slice(&zeros);
    }
    out
}

fn malformed_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let gz = |t: TarWriter| gzip(&t.finish(), 6);

    // A path over PATH_MAX (4096), and a component over NAME_MAX (255).
    let long_path = format!("{}/file", vec!["d".repeat(200); 21].join("/"));
    let long_name = format!("dir/{}", "n".repeat(300));
    let mut t = TarWriter::new();
    ok_file(&mut t);
    t.file(&long_path, 0o644, (0, 0), b"too long\n");
    t.file(&long_name, 0o644, (0, 0), b"too long\n");
    cases.push(Case {
        tag: "path-max",
        media_type: TAR_GZIP,
        layer: gz(t),
        expect: Expect::Drops {
            dropped: vec![long_path[..64].to_owned(), "n".repeat(64)],
            listed: vec!["ok.txt"],
        },
        options: &[],
        push: true,
    });

    // `..` climbing out of the root is dropped; inside it, resolved; an
    // absolute name is taken from the root, as runtimes do.
    let mut t = TarWriter::new();
    ok_file(&mut t);
    t.file("../../etc/evil", 0o644, (0, 0), b"evil\n")
        .file("a/../../b", 0o644, (0, 0), b"evil\n")
        .file("sub/../inside.txt", 0o644, (0, 0), b"inside\n")
        .file("/abs/file.txt", 0o644, (0, 0), b"absolute\n");
    cases.push(Case {
        tag: "dotdot-and-absolute",
        media_type: TAR_GZIP,
        layer: gz(t),
        expect: Expect::Drops {
            dropped: vec!["../../etc/evil".into(), "a/../../b".into()],
            listed: vec!["abs", "abs/file.txt", "inside.txt", "ok.txt"],
        },
        options: &[],
        push: true,
    });

    // Hard links to a missing target and to themselves.
    let mut t = TarWriter::new();
    ok_file(&mut t);
    t.hardlink("to-nowhere", "no/such/file")
        .hardlink("self", "self")
        .hardlink("good-link", "ok.txt");
    cases.push(Case {
        tag: "hardlinks",
        media_type: TAR_GZIP,
        layer: gz(t),
        expect: Expect::Drops {
            dropped: vec!["to-nowhere".into(), "self".into()],
            listed: vec!["good-link", "ok.txt"],
        },
        options: &[],
        push: true,
    });

    // A header whose size runs past the end of the layer.
    let mut t = TarWriter::new();
    ok_file(&mut t);
    let mut h = TarHeader::new(TarKind::File, "huge.bin");
    h.size = 1 << 30;
    t.entry(&h, &random_bytes(100, 1));
    cases.push(Case {
        tag: "size-past-the-end",
        media_type: TAR_GZIP,
        layer: gzip(t.bytes(), 6),
        expect: Expect::Fails(Some("huge.bin".into())),
        options: &[],
        push: true,
    });

    // More entries than the limit (set low; the default is 1,000,000).
    let mut t = TarWriter::new();
    for i in 0..1001 {
        t.file(&format!("f/{i:05}"), 0o644, (0, 0), b"");
    }
    let many = gz(t);
    cases.push(Case {
        tag: "too-many-entries",
        media_type: TAR_GZIP,
        layer: many.clone(),
        expect: Expect::Fails(None),
        options: &["--max-layer-entries", "1000"],
        push: true,
    });

    // A gzip bomb.
    cases.push(Case {
        tag: "gzip-bomb",
        media_type: TAR_GZIP,
        layer: gzip_bomb(),
        expect: Expect::Fails(Some("more than its tar declares".into())),
        options: &[],
        push: true,
    });

    // Truncated layers: gzip and zstd cut in the middle of a file's data,
    // a plain tar cut in the middle of a header.
    let mut t = TarWriter::new();
    ok_file(&mut t);
    t.file("big.bin", 0o644, (0, 0), &random_bytes(2 << 20, 2));
    t.file("after.txt", 0o644, (0, 0), b"after\n");
    let whole = t.finish();
    let g = gzip(&whole, 6);
    cases.push(Case {
        tag: "truncated-gzip",
        media_type: TAR_GZIP,
        layer: g[..g.len() / 2].to_vec(),
        expect: Expect::Fails(Some("big.bin".into())),
        options: &[],
        push: true,
    });
    let z = zstd(&whole);
    cases.push(Case {
        tag: "truncated-zstd",
        media_type: TAR_ZSTD,
        layer: z[..z.len() / 2].to_vec(),
        // A zstd block yields no byte until it is whole: the cut block
        // holds the entry's header too, so no name can be known.
        expect: Expect::Fails(None),
        options: &[],
        push: true,
    });
    let mut t = TarWriter::new();
    ok_file(&mut t);
    let second = TarHeader::new(TarKind::File, "cut.txt").block();
    t.raw(&second[..300]);
    cases.push(Case {
        tag: "truncated-tar",
        media_type: TAR,
        layer: t.bytes().to_vec(),
        expect: Expect::Fails(None),
        options: &[],
        push: false,
    });

    // A header with a wrong checksum; a gzip media type on a plain tar.
    let mut t = TarWriter::new();
    ok_file(&mut t);
    let mut bad = TarHeader::new(TarKind::File, "bad-sum.txt").block();
    bad[0] ^= 0x20;
    t.raw(&bad);
    cases.push(Case {
        tag: "bad-checksum",
        media_type: TAR_GZIP,
        layer: gz(t),
        expect: Expect::Fails(None),
        options: &[],
        push: true,
    });
    let mut t = TarWriter::new();
    ok_file(&mut t);
    cases.push(Case {
        tag: "not-gzip",
        media_type: TAR_GZIP,
        layer: t.finish(),
        expect: Expect::Fails(None),
        options: &[],
        push: false,
    });
    cases
}

/// The layer digests of `tag` as the registry has it (skopeo may have
/// compressed an uncompressed layer on the way).
fn pushed_layer(host: &str, tag: &str) -> String {
    let m = registry_manifest(host, &format!("malformed:{tag}"));
    m["layers"][0]["digest"]
        .as_str()
        .expect("a layer digest")
        .to_owned()
}

/// Checks one run against `expect`; `digest` is the layer's. The first
/// thing wrong, with the run's output.
fn check_case(
    tag: &str,
    where_: &str,
    out: &Output,
    digest: &str,
    expect: &Expect,
) -> Result<(), String> {
    let context = format!("case {tag} ({where_})");
    let fail = |what: String| Err(format!("{context}: {what}:\n{out}"));
    if out.stderr.contains("panicked") {
        return fail("ocifs panicked".into());
    }
    if out.code().is_none() {
        return fail("ocifs died of a signal".into());
    }
    if out.elapsed > CASE_LIMIT {
        return fail(format!("took {:.0}s", out.elapsed.as_secs_f64()));
    }
    match expect {
        Expect::Fails(entry) => {
            if out.code() != Some(7) {
                return fail(format!("exit {:?}, not 7", out.code()));
            }
            if !out.stderr.contains(digest) {
                return fail(format!("the error does not name the layer {digest}"));
            }
            if let Some(entry) = entry
                && !out.stderr.contains(entry.as_str())
            {
                return fail(format!("the error does not name the entry {entry:?}"));
            }
        }
        Expect::Drops { dropped, listed } => {
            if out.code() != Some(0) {
                return fail(format!("exit {:?}, not 0", out.code()));
            }
            for d in dropped {
                if !out
                    .stderr
                    .lines()
                    .any(|l| l.contains(d.as_str()) && l.contains(digest))
                {
                    return fail(format!(
                        "no warning names the layer {digest} and the entry {d:?}"
                    ));
                }
            }
            let got: Vec<String> = out
                .stdout_str()
                .lines()
                .map(|l| l.trim_end_matches('/').to_owned())
                .collect();
            if got != *listed {
                return fail(format!("listed {got:?}, not {listed:?}"));
            }
        }
    }
    Ok(())
}

#[test]
fn malformed_layers_get_clear_errors() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let mut layout = OciLayoutBuilder::new(dir.path().join("layout"));
    let cases = malformed_cases();
    let mut digests = Vec::new();
    for c in &cases {
        let layer = layout.blob(c.media_type, &c.layer);
        digests.push(layer.digest.clone());
        let m = layout.image_manifest(&Platform::new("linux", "amd64"), &[layer]);
        layout.add(&m, Some(c.tag));
    }
    let layout_dir = layout.dir().display().to_string();
    // Every case runs; the failures are reported together at the end.
    let mut failures = Vec::new();
    for (c, layout_digest) in cases.iter().zip(&digests) {
        let (reference, digest, where_) = if c.push {
            skopeo_copy(
                &format!("oci:{layout_dir}:{}", c.tag),
                &format!("docker://{}/malformed:{}", registry.host(), c.tag),
                &["--dest-tls-verify=false"],
            );
            let digest = pushed_layer(&registry.host(), c.tag);
            (
                format!("{}/malformed:{}", registry.host(), c.tag),
                digest,
                "registry",
            )
        } else {
            (
                format!("oci:{layout_dir}:{}", c.tag),
                layout_digest.clone(),
                "layout",
            )
        };
        let mut args = vec!["ls", "-R", "--plain-http"];
        args.extend_from_slice(c.options);
        args.push(&reference);
        let out = run_ocifs(&args);
        if let Err(e) = check_case(c.tag, where_, &out, &digest, &c.expect) {
            failures.push(e);
        }
        eprintln!(
            "case {}: exit {:?} in {:.1}s: {}",
            c.tag,
            out.code(),
            out.elapsed.as_secs_f64(),
            out.stderr
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(240)
                .collect::<String>()
        );
    }

    // The default entry limit takes the 1,001-entry layer.
    let reference = format!("{}/malformed:too-many-entries", registry.host());
    let out = run_ocifs(["ls", "-R", "--plain-http", &reference]);
    assert_eq!(out.success().stdout_str().lines().count(), 1002, "{out}");
    run_ocifs([
        "ls",
        "--plain-http",
        "--max-layer-entries",
        "1000",
        &reference,
    ])
    .code_is(7)
    .stderr_has("1000");

    // Mounts: a failing layer fails the mount (nothing mounted); a layer
    // with dropped entries mounts without them.
    let failing = format!("{}/malformed:size-past-the-end", registry.host());
    match Mounted::try_new(&failing, &["--plain-http"]) {
        Ok(_) => panic!("a layer whose entry runs past its end was mounted"),
        Err(out) => {
            out.code_is(7).stderr_has("huge.bin");
        }
    }
    let mnt = Mounted::new(
        &format!("{}/malformed:dotdot-and-absolute", registry.host()),
        &["--plain-http"],
    );
    assert_eq!(
        std::fs::read(mnt.path("ok.txt")).expect("ok.txt"),
        b"fine\n"
    );
    assert_eq!(
        std::fs::read(mnt.path("inside.txt")).expect("inside.txt"),
        b"inside\n"
    );
    assert_eq!(
        std::fs::read(mnt.path("abs/file.txt")).expect("abs/file.txt"),
        b"absolute\n"
    );
    let names: Vec<String> = std::fs::read_dir(mnt.dir())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n == "etc" || n == "b"), "{names:?}");
    // The truncated layers' good entries are not served as if whole: cat
    // of a file before the cut fails like the listing (the layer cannot be
    // indexed), never with wrong bytes.
    let out = run_ocifs([
        "cat",
        "--plain-http",
        &format!("{}/malformed:truncated-gzip", registry.host()),
        "ok.txt",
    ]);
    if let Err(e) = check_case(
        "truncated-gzip",
        "cat",
        &out,
        &pushed_layer(&registry.host(), "truncated-gzip"),
        &Expect::Fails(None),
    ) {
        failures.push(e);
    }
    assert!(
        failures.is_empty(),
        "{} malformed cases went wrong:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn an_estargz_image_from_ctr_remote_shows_its_tree_without_estargz_files() {
    // A small image made by umoci, pushed by skopeo, converted to eStargz
    // by stargz-snapshotter's ctr-remote (with a containerd of the test's
    // own) and pushed by it.
    let registry = Registry::start(RegistryAuth::None);
    let work = temp_dir();
    let layout = work.path().join("layout");
    let bundle = work.path().join("bundle");
    let umoci = ocifs_tests::rootfs::umoci;
    umoci(&["init", "--layout", &layout.display().to_string()]);
    let image = format!("{}:v1", layout.display());
    umoci(&["new", "--image", &image]);
    umoci(&[
        "unpack",
        "--rootless",
        "--image",
        &image,
        &bundle.display().to_string(),
    ]);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).expect("mkdir");
    std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
    std::fs::write(rootfs.join("etc/os-release"), b"ID=ocifs-test\n").expect("write");
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    std::fs::write(rootfs.join("big.bin"), random_bytes(3 << 20, 7)).expect("write");
    umoci(&["repack", "--image", &image, &bundle.display().to_string()]);
    let host = registry.host();
    skopeo_copy(
        &format!("oci:{image}"),
        &format!("docker://{host}/small:v1"),
        &["--dest-tls-verify=false"],
    );
    let containerd = ocifs_tests::Containerd::start();
    containerd.to_estargz(&format!("{host}/small:v1"), &format!("{host}/small:esgz"));
    let manifest = registry_manifest(&host, "small:esgz");
    let layers = manifest["layers"].as_array().expect("layers");
    assert!(
        layers
            .iter()
            .all(|l| l["annotations"]["containerd.io/snapshot/stargz/toc.digest"].is_string()),
        "ctr-remote did not make eStargz layers: {manifest:#}"
    );

    let rows = |tag: &str| -> Vec<Row> {
        let out = run_ocifs([
            "ls",
            "-R",
            "--json",
            "--plain-http",
            &format!("{host}/small:{tag}"),
        ]);
        json_rows(&serde_json::from_slice(&out.success().stdout).expect("JSON"))
    };
    let original = rows("v1");
    let estargz = rows("esgz");
    assert!(
        original.iter().any(|r| r.path == "bin/busybox"),
        "{original:?}"
    );
    // The same tree, and none of eStargz's own files.
    assert_same_tree("the original image", &original, "its eStargz", &estargz);
    // They are in the layer itself: --layers shows it whole.
    let out = run_ocifs([
        "ls",
        "--plain-http",
        "--layers",
        &format!("{host}/small:esgz"),
    ]);
    assert_eq!(out.success().stdout_str().lines().count(), layers.len());
    let out = run_ocifs([
        "cat",
        "--plain-http",
        &format!("{host}/small:esgz"),
        "big.bin",
    ]);
    assert!(out.success().stdout == random_bytes(3 << 20, 7));
}

#[test]
fn a_first_mount_keeps_the_layers_it_streamed_and_fetches_each_once() {
    // Indexing a layer streams it whole and verifies it: those bytes are
    // kept as the complete blob, so reading files afterwards fetches no
    // layer bytes again (it used to fetch 4–7 MB more for one binary).
    let image = rootfs_image();
    let (_registry, proxy, reference, digests) = proxied_gzip(image);
    let total: u64 = image.layers().iter().map(|l| l.size).sum();
    let work = temp_dir();
    let cache = work.path().join("cache");
    let cache_arg = cache.display().to_string();

    let mnt = Mounted::new(&reference, &["--plain-http", "--cache-dir", &cache_arg]);
    assert_eq!(
        layer_bytes(&proxy, &digests),
        total,
        "the first mount should stream each layer exactly once"
    );
    let middle = image.middle_file();
    let got = std::fs::read(mnt.path(&middle.path)).expect("reading a file of the big layer");
    assert_eq!(sha256_hex(&got), middle.sha256);
    let listed = walk(mnt.dir(), true);
    assert!(listed.len() > 1000, "{} entries", listed.len());
    assert_eq!(
        layer_bytes(&proxy, &digests),
        total,
        "reading files fetched layer bytes again"
    );
    mnt.unmount();
    for d in &digests {
        let kept = cache
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        assert_eq!(
            std::fs::metadata(&kept).map(|m| m.len()).ok(),
            image
                .layers()
                .iter()
                .find(|l| &l.digest == d)
                .map(|l| l.size),
            "layer {d} is not kept whole"
        );
    }
}

#[test]
fn a_zstd_layer_its_config_misnames_is_fetched_once_and_kept_decoded_under_its_own_digest() {
    // podman 4.3 writes a zstd:chunked base layer whose decoded tar is not
    // the diff ID its config names. Here the config names the compressed
    // digest (a lying config from the test's layout builder; the layer is
    // Debian's `zstd` output, one frame). The layer's own digest checks
    // out, so its decoded bytes are kept under their own digest, recorded
    // as the layer's: the blob is fetched once, the config warned of once,
    // and reads in any order are served from the copy.
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let mut t = TarWriter::new();
    let files: Vec<Vec<u8>> = (0..12).map(|i| random_bytes(300_000, 100 + i)).collect();
    for (i, f) in files.iter().enumerate() {
        t.file(&format!("f{i}.bin"), 0o644, (0, 0), f);
    }
    let tar = t.finish();
    let layer = zstd(&tar);
    let mut layout = OciLayoutBuilder::new(dir.path().join("layout"));
    let l = layout.blob(TAR_ZSTD, &layer);
    let m = layout.image_manifest(&Platform::new("linux", "amd64"), std::slice::from_ref(&l));
    layout.add(&m, Some("v1"));
    skopeo_copy(
        &format!("oci:{}:v1", dir.path().join("layout").display()),
        &format!("docker://{}/lying/zstd:v1", registry.host()),
        &["--preserve-digests", "--dest-tls-verify=false"],
    );
    let proxy = CountingProxy::start(&registry.host());
    let reference = format!("{}/lying/zstd:v1", proxy.host());
    let cache = dir.path().join("cache");
    let cache_arg = cache.display().to_string();
    // The diff ID names the layer blob itself, which the cache comes to
    // hold complete: never served as the decoded stream (it once was, by
    // cat and by a mount alike).
    let mut warnings = 0;
    for (i, f) in files.iter().enumerate() {
        let out = run_ocifs([
            "cat",
            "--plain-http",
            "--cache-dir",
            &cache_arg,
            &reference,
            &format!("f{i}.bin"),
        ]);
        assert!(out.success().stdout == *f, "cat f{i}.bin wrote other bytes");
        warnings += out
            .stderr
            .lines()
            .filter(|l| l.contains("not the diff ID the image config names"))
            .count();
    }
    assert_eq!(warnings, 1, "the lying config is warned of once per cache");
    assert_eq!(
        layer_bytes(&proxy, std::slice::from_ref(&l.digest)),
        layer.len() as u64,
        "the cats of one cache fetched the layer more than once"
    );
    // The decoded copy: the tar's own digest, recorded as the layer's.
    let decoded = sha256_hex(&tar);
    assert_eq!(
        std::fs::metadata(cache.join("blobs/sha256").join(&decoded))
            .map(|m| m.len())
            .ok(),
        Some(tar.len() as u64),
        "the decoded copy is not kept under its digest"
    );
    let record = std::fs::read_to_string(
        cache
            .join("decoded/sha256")
            .join(l.digest.trim_start_matches("sha256:")),
    )
    .expect("the record of what the layer decodes to");
    assert_eq!(record, format!("sha256:{decoded} {}", tar.len()));

    proxy.reset();
    let mnt = Mounted::new(&reference, &["--plain-http", "--cache-dir", &cache_arg]);
    // Out of archive order, so a parked decoder does not simply run on.
    for i in [9usize, 2, 11, 5, 0] {
        let got = std::fs::read(mnt.path(&format!("f{i}.bin"))).expect("read");
        assert!(got == files[i], "f{i}.bin differs:\n{}", mnt.log());
    }
    // The mount of the same cache fetched nothing, and read the copy.
    assert_eq!(layer_bytes(&proxy, std::slice::from_ref(&l.digest)), 0);
    let log = mnt.log();
    assert!(
        !log.contains("decoding the layer into the cache failed"),
        "{log}"
    );
    assert!(!log.contains("not the diff ID"), "{log}");
}

#[test]
fn sparse_files_of_every_tar_format_in_image_layers_equal_the_reference_unpack() {
    // Five layers, one a sparse format each (GNU tar's `S`, PAX 0.0, 0.1
    // and 1.0, bsdtar's PAX), added by umoci and pushed by skopeo. The
    // mount equals `umoci unpack` (Go's archive/tar expands every sparse
    // format), from the layers and then again from the stored indexes.
    let registry = Registry::start(RegistryAuth::None);
    let work = temp_dir();
    let tars = crate::support::sparse_tars(work.path());
    let layout = work.path().join("layout");
    let umoci = ocifs_tests::rootfs::umoci;
    umoci(&["init", "--layout", &layout.display().to_string()]);
    let image = format!("{}:v1", layout.display());
    umoci(&["new", "--image", &image]);
    let add = |tar: &Path| {
        umoci(&[
            "raw",
            "add-layer",
            "--image",
            &image,
            &tar.display().to_string(),
        ])
    };
    // umoci 0.4.7 refuses the old `S` type ("unknown typeflag"): its
    // layer goes on top after the unpack, and bsdtar extracts it there.
    let (old, pax): (Vec<_>, Vec<_>) = tars.iter().partition(|(name, _)| *name == "gnu");
    for (_, tar) in &pax {
        add(tar);
    }
    let bundle = work.path().join("bundle");
    umoci(&["unpack", "--image", &image, &bundle.display().to_string()]);
    let rootfs = bundle.join("rootfs");
    for (_, tar) in &old {
        add(tar);
        let status = Command::new("bsdtar")
            .arg("-xpf")
            .arg(tar)
            .arg("-C")
            .arg(&rootfs)
            .status()
            .expect("bsdtar");
        assert!(status.success());
    }
    let want = walk(&rootfs, true);
    let bytes = crate::support::sparse_bytes();
    for (name, _) in &tars {
        let got = std::fs::read(rootfs.join(name).join("disk.raw"))
            .expect("the reference unpacked the sparse file");
        assert!(got == bytes, "the reference's {name}/disk.raw differs");
    }
    let host = registry.host();
    skopeo_copy(
        &format!("oci:{image}"),
        &format!("docker://{host}/sparse:v1"),
        &["--dest-tls-verify=false"],
    );
    let cache = work.path().join("cache");
    let cache_arg = cache.display().to_string();
    for round in ["from the layers", "from the stored indexes"] {
        let mnt = Mounted::new(
            &format!("{host}/sparse:v1"),
            &["--plain-http", "--cache-dir", &cache_arg],
        );
        let got = walk(mnt.dir(), true);
        if let Some(d) = diff("umoci unpack", &want, "ocifs mount", &got, 40) {
            panic!("{round}: {d}\nmount log (tail):\n{}", tail(&mnt.log(), 30));
        }
        mnt.unmount();
    }
    assert!(
        std::fs::read_dir(cache.join("index/sha256"))
            .expect("the cache has layer indexes")
            .count()
            >= tars.len()
    );
}

/// The reader's counters of a mount (its `.ocifs-stats`).
fn mount_stats(mnt: &Mounted) -> Value {
    let text = std::fs::read_to_string(mnt.path(".ocifs-stats")).expect("the mount's stats");
    serde_json::from_str(&text).expect("JSON stats")
}

#[test]
fn files_of_a_zstd_layout_read_out_of_order_decode_the_layer_once() {
    // skopeo recompresses the fixture's layout to zstd (one frame a
    // layer). Reading 150 files of usr/lib in sorted order, not archive
    // order, used to decode each layer from its start for every file
    // (17 s against 0.5 s from gzip, in the report). Now the decoded
    // bytes are the layers once (their decoded copies, in the cache
    // directory), not a sum over the files' positions; a second mount of
    // the same cache decodes nothing.
    let image = rootfs_image();
    let work = temp_dir();
    let zstd_layout = work.path().join("zstd");
    skopeo_copy(
        &image.oci_ref(),
        &format!("oci:{}:v1", zstd_layout.display()),
        &["--dest-compress-format", "zstd", "--dest-compress"],
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(zstd_layout.join("index.json")).expect("index.json"))
            .expect("JSON");
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            zstd_layout
                .join("blobs/sha256")
                .join(manifest_digest.trim_start_matches("sha256:")),
        )
        .expect("the manifest"),
    )
    .expect("JSON");
    assert!(
        manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .all(|l| l["mediaType"]
                .as_str()
                .is_some_and(|m| m.ends_with("tar+zstd"))),
        "skopeo wrote other layers: {manifest:#}"
    );
    let cache = work.path().join("cache");
    let cache_arg = cache.display().to_string();
    let zstd_ref = format!("oci:{}:v1", zstd_layout.display());
    let gzip = Mounted::new(&image.oci_ref(), &[]);
    let mut files: Vec<String> = walk(gzip.dir(), false)
        .into_iter()
        .filter(|r| r.kind == Kind::File && r.path.starts_with("usr/lib/") && r.size > Some(0))
        .map(|r| r.path)
        .collect();
    files.sort();
    assert!(files.len() >= 150, "{} files in usr/lib", files.len());
    files.truncate(150);
    let read_all = |mnt: &Mounted| -> u64 {
        let mut total = 0;
        for f in &files {
            let got = std::fs::read(mnt.path(f)).expect("read");
            let want = std::fs::read(gzip.path(f)).expect("read");
            assert!(
                got == want,
                "{f} differs between the zstd and the gzip layout"
            );
            total += got.len() as u64;
        }
        total
    };
    let gzip_before = mount_stats(&gzip)["decoded_bytes"]
        .as_u64()
        .expect("decoded_bytes");
    let read = read_all(&Mounted::new(&zstd_ref, &["--cache-dir", &cache_arg]));
    let gzip_decoded = mount_stats(&gzip)["decoded_bytes"]
        .as_u64()
        .expect("decoded_bytes")
        - gzip_before;
    // gzip: a seek span or so a file.
    assert!(
        gzip_decoded <= 150 * (SEEK_SPACING + BLOCK_SLACK) + read,
        "gzip decoded {gzip_decoded} bytes for 150 files"
    );

    let mnt = Mounted::new(&zstd_ref, &["--cache-dir", &cache_arg]);
    let decoded = mount_stats(&mnt)["decoded_bytes"]
        .as_u64()
        .expect("decoded_bytes");
    assert_eq!(decoded, 0, "mounting decoded file bytes");
    drop(mnt);
    let fresh = work.path().join("fresh");
    let fresh_arg = fresh.display().to_string();
    let mnt = Mounted::new(&zstd_ref, &["--cache-dir", &fresh_arg]);
    assert_eq!(read_all(&mnt), read);
    let decoded = mount_stats(&mnt)["decoded_bytes"]
        .as_u64()
        .expect("decoded_bytes");
    let bound = image.base_uncompressed_size() + 16 * MIB;
    eprintln!(
        "150 files, {read} bytes: zstd layout decoded {decoded} bytes, gzip layout {gzip_decoded}"
    );
    assert!(
        decoded <= bound,
        "reading {read} bytes of 150 files decoded {decoded} bytes, over the layers once ({bound})"
    );
    mnt.unmount();
    // The copies outlive the mount: the same cache decodes nothing again.
    let mnt = Mounted::new(&zstd_ref, &["--cache-dir", &fresh_arg]);
    assert_eq!(read_all(&mnt), read);
    let decoded = mount_stats(&mnt)["decoded_bytes"]
        .as_u64()
        .expect("decoded_bytes");
    assert_eq!(decoded, 0, "a second mount decoded {decoded} bytes again");
}

#[test]
fn podman_and_buildah_images_of_every_compression_equal_podman_image_mount() {
    // podman 4.3 builds a two-layer image (FROM scratch, COPY twice, the
    // second replacing a file and adding one) in storage of the test's own
    // (vfs), and pushes it as OCI gzip, zstd and zstd:chunked and as docker
    // v2s2; buildah pushes it as zstd. Each mounts as the tree
    // `podman image mount` shows. A registry each: podman would otherwise
    // push the layers it already pushed in another compression.
    let work = temp_dir();
    let ctx = work.path().join("ctx");
    for (i, dir) in ["etc", "usr/lib/x", "usr/bin", "opt/app/data"]
        .iter()
        .enumerate()
    {
        std::fs::create_dir_all(ctx.join("a").join(dir)).expect("mkdir");
        for j in 0..8 {
            let size = [0usize, 1, 511, 512, 4096, 100_000, 300_000, 1 << 20][j];
            std::fs::write(
                ctx.join("a").join(dir).join(format!("f{j}.bin")),
                random_bytes(size, (i * 10 + j) as u64),
            )
            .expect("write");
        }
    }
    std::fs::write(ctx.join("a/etc/os-release"), b"ID=podman-test\n").expect("write");
    std::os::unix::fs::symlink("../usr/lib/x/f5.bin", ctx.join("a/etc/link")).expect("symlink");
    std::fs::set_permissions(
        ctx.join("a/usr/bin/f4.bin"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .expect("chmod");
    std::fs::create_dir_all(ctx.join("b/etc")).expect("mkdir");
    std::fs::write(ctx.join("b/etc/os-release"), b"ID=podman-test-2\n").expect("write");
    std::fs::write(ctx.join("b/etc/added"), random_bytes(70_000, 99)).expect("write");
    std::fs::write(
        ctx.join("Containerfile"),
        "FROM scratch\nCOPY a /\nCOPY b /\n",
    )
    .expect("write");
    let root = work.path().join("storage");
    let storage = |tool: &str| {
        let mut c = Command::new(tool);
        c.arg("--root")
            .arg(root.join("root"))
            .arg("--runroot")
            .arg(root.join("run"))
            .arg("--storage-driver")
            .arg("vfs");
        c
    };
    let run = |mut c: Command, what: &str| -> String {
        let out = c
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{what} (scripts/test installs podman and buildah): {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let mut build = storage("podman");
    build
        .args(["build", "-q", "-t", "localhost/ocifs-test:v1", "-f"])
        .arg(ctx.join("Containerfile"))
        .arg(&ctx);
    run(build, "podman build");
    let pushes: [(&str, &str, &[&str], &str); 5] = [
        (
            "podman",
            "gzip",
            &["--compression-format", "gzip"],
            "tar+gzip",
        ),
        (
            "podman",
            "zstd",
            &["--compression-format", "zstd"],
            "tar+zstd",
        ),
        (
            "podman",
            "chunked",
            &["--compression-format", "zstd:chunked"],
            "tar+zstd",
        ),
        (
            "podman",
            "v2s2",
            &["--format", "v2s2"],
            "docker.image.rootfs.diff.tar.gzip",
        ),
        (
            "buildah",
            "buildah-zstd",
            &["--compression-format", "zstd"],
            "tar+zstd",
        ),
    ];
    let registries: Vec<Registry> = pushes
        .iter()
        .map(|_| Registry::start(RegistryAuth::None))
        .collect();
    for ((tool, tag, args, _), registry) in pushes.iter().zip(&registries) {
        let host = registry.host();
        let mut push = storage(tool);
        push.args(["push", "--tls-verify=false"])
            .args(*args)
            .arg("localhost/ocifs-test:v1")
            .arg(format!("docker://{host}/podman/{tag}:v1"));
        run(push, &format!("{tool} push {args:?}"));
    }
    let mut mount = storage("podman");
    mount.args(["image", "mount", "localhost/ocifs-test:v1"]);
    let shown = PathBuf::from(run(mount, "podman image mount"));
    let mut want = walk(&shown, true);
    let mut unmount = storage("podman");
    unmount.args(["image", "unmount", "localhost/ocifs-test:v1"]);
    // The root directory is podman's storage's, not the image's.
    want.retain(|r| r.path != ".");
    assert!(want.iter().any(|r| r.path == "etc/added"), "{want:?}");

    for ((tool, tag, _, media), registry) in pushes.iter().zip(&registries) {
        let host = registry.host();
        let manifest = registry_manifest(&host, &format!("podman/{tag}:v1"));
        let layers = manifest["layers"].as_array().expect("layers");
        assert!(
            layers.len() == 2
                && layers
                    .iter()
                    .all(|l| l["mediaType"].as_str().is_some_and(|m| m.ends_with(media))),
            "{tool} pushed other layers for {tag}: {manifest:#}"
        );
        if *tag == "chunked" {
            assert!(
                layers.iter().all(|l| {
                    l["annotations"]["io.containers.zstd-chunked.manifest-checksum"].is_string()
                }),
                "podman did not write zstd:chunked: {manifest:#}"
            );
        }
        let mnt = Mounted::new(&format!("{host}/podman/{tag}:v1"), &["--plain-http"]);
        let mut got = walk(mnt.dir(), true);
        got.retain(|r| r.path != ".");
        if let Some(d) = diff(
            "podman image mount",
            &want,
            &format!("ocifs mount of {tag}"),
            &got,
            40,
        ) {
            panic!("{d}\nmount log (tail):\n{}", tail(&mnt.log(), 30));
        }
        assert!(!mnt.log().contains("WARN"), "{tag}: {}", mnt.log());
    }
    run(unmount, "podman image unmount");
}

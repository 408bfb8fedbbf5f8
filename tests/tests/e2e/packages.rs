//! Packages (zip, tar.gz, ORAS directories) shown as directories: Debian's
//! CNI plugins in a zip (Debian's `zip`) and a tgz (`tar czf`) run from a
//! mount with `--expand --root`; a lazy read of one zip entry counted at the
//! registry; an `oras push` of a directory; and a hostile zip written byte by
//! byte here, independently of ocifs.

use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ocifs_tests::{
    CountingProxy, Mounted, Output, PushFile, PushOptions, Registry, RegistryAuth, oras_push,
    random_bytes, run, run_ocifs, sha256_digest, temp_dir,
};
use tempfile::TempDir;

use crate::support::{SPARSE_DATA, SPARSE_SIZE, sh, sparse_bytes, sparse_tars};

const CNI: &[&str] = &["bridge", "host-local", "loopback"];
const ZIP: &str = "cni-plugins-zip-v1.zip";
const TGZ: &str = "cni-plugins-linux-amd64-v1.tgz";

fn cni_dir() -> &'static Path {
    let cni = Path::new("/usr/lib/cni");
    assert!(
        CNI.iter().all(|n| cni.join(n).is_file()),
        "containernetworking-plugins is not installed (scripts/test installs it)"
    );
    cni
}

/// The CNI plugins under `linux-amd64/` (with a symlink `br -> bridge`),
/// packed by Debian's `zip` and by `tar czf`.
struct Packages {
    dir: TempDir,
}

impl Packages {
    fn new() -> Self {
        let dir = temp_dir();
        let bin = dir.path().join("src/linux-amd64");
        std::fs::create_dir_all(&bin).expect("mkdir");
        for name in CNI {
            std::fs::copy(cni_dir().join(name), bin.join(name)).expect("copy");
            std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        symlink("bridge", bin.join("br")).expect("symlink");
        let src = dir.path().join("src");
        sh(
            &src,
            "zip",
            &["-q", "-r", "-y", &format!("../{ZIP}"), "linux-amd64"],
        );
        sh(&src, "tar", &["czf", &format!("../{TGZ}"), "linux-amd64"]);
        Packages { dir }
    }

    fn zip(&self) -> PathBuf {
        self.dir.path().join(ZIP)
    }

    fn tgz(&self) -> PathBuf {
        self.dir.path().join(TGZ)
    }
}

fn lines(out: &Output) -> Vec<String> {
    out.stdout_str().lines().map(str::to_owned).collect()
}

fn run_cni(path: &Path) {
    let mut cmd = Command::new(path);
    cmd.env("CNI_COMMAND", "VERSION");
    let out = run(cmd);
    assert!(
        out.stdout_str().contains("cniVersion"),
        "{} printed: {} / {}",
        path.display(),
        out.stdout_str(),
        out.stderr
    );
}

#[test]
fn cni_packages_run_from_a_mount_with_expand_and_root() {
    let registry = Registry::start(RegistryAuth::None);
    let packages = Packages::new();
    oras_push(
        &registry.host(),
        "aks/packages/cni:v1",
        &[PushFile::new(packages.zip()), PushFile::new(packages.tgz())],
        &PushOptions::default(),
    );
    let reference = format!("{}/aks/packages/cni:v1", registry.host());

    // Without --expand: two files. With it: each archive beside its
    // directory; with --expand=replace, the directories alone.
    let out = run_ocifs(["ls", "--plain-http", &reference]);
    assert_eq!(lines(out.success()), [TGZ, ZIP]);
    let out = run_ocifs(["ls", "--plain-http", "--expand", &reference]);
    assert_eq!(
        lines(out.success()),
        [
            "cni-plugins-linux-amd64-v1/",
            TGZ,
            "cni-plugins-zip-v1/",
            ZIP
        ]
    );
    let out = run_ocifs(["ls", "--plain-http", "--expand=replace", &reference]);
    assert_eq!(
        lines(out.success()),
        ["cni-plugins-linux-amd64-v1/", "cni-plugins-zip-v1/"]
    );
    let out = run_ocifs([
        "ls",
        "-l",
        "--plain-http",
        "--expand",
        "--root",
        "cni-plugins-zip-v1/linux-amd64",
        &reference,
    ]);
    let listing = out.success().stdout_str();
    assert!(listing.contains("br -> bridge"), "{listing}");
    assert!(listing.contains("-rwxr-xr-x"), "{listing}");

    // Only the package on the way to the file asked for is read: the zip's
    // bytes never leave the registry.
    let proxy = CountingProxy::start(&registry.host());
    let out = run_ocifs([
        "cat",
        "--plain-http",
        "--expand",
        &format!("{}/aks/packages/cni:v1", proxy.host()),
        "cni-plugins-linux-amd64-v1/linux-amd64/loopback",
    ]);
    assert!(out.success().stdout == std::fs::read(cni_dir().join("loopback")).expect("read"));
    let zip_digest = sha256_digest(&std::fs::read(packages.zip()).expect("read"));
    let tgz_digest = sha256_digest(&std::fs::read(packages.tgz()).expect("read"));
    let gets = proxy.blob_gets();
    assert!(
        gets.iter().any(|r| r.path.ends_with(&tgz_digest))
            && !gets.iter().any(|r| r.path.ends_with(&zip_digest)),
        "{}",
        proxy.describe()
    );

    // The tgz's directory mounted as the root: Debian's plugins run.
    let tgz = Mounted::new(
        &reference,
        &[
            "--plain-http",
            "--expand",
            "--root",
            "cni-plugins-linux-amd64-v1/linux-amd64",
        ],
    );
    let cni = cni_dir();
    for name in CNI {
        let meta = std::fs::metadata(tgz.path(name)).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{name}");
        assert_eq!(
            meta.len(),
            std::fs::metadata(cni.join(name)).expect("stat").len()
        );
    }
    for name in ["bridge", "host-local"] {
        run_cni(&tgz.path(name));
    }
    assert_eq!(
        std::fs::read_link(tgz.path("br")).expect("readlink"),
        Path::new("bridge")
    );
    run_cni(&tgz.path("br"));

    // The zip's directory: every entry byte-identical to its original.
    let zip = Mounted::new(
        &reference,
        &[
            "--plain-http",
            "--expand=replace",
            "--root",
            "cni-plugins-zip-v1/linux-amd64",
        ],
    );
    let mut names: Vec<String> = std::fs::read_dir(zip.dir())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["br", "bridge", "host-local", "loopback"]);
    for name in CNI {
        let got = std::fs::read(zip.path(name)).expect("read");
        assert!(
            got == std::fs::read(cni.join(name)).expect("read"),
            "{name} from the zip differs; log:\n{}",
            zip.log()
        );
        let mode = std::fs::metadata(zip.path(name))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{name}");
    }
    assert_eq!(
        std::fs::read_link(zip.path("br")).expect("readlink"),
        Path::new("bridge")
    );
    run_cni(&zip.path("bridge"));
}

/// The compressed size of entry `name` of a zip, as Python's zipfile reads it.
fn compressed_size(zip: &Path, name: &str) -> u64 {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).getinfo(sys.argv[2]).compress_size)",
        ])
        .arg(zip)
        .arg(name)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a size")
}

#[test]
fn a_lazy_read_of_one_zip_entry_fetches_the_directory_and_that_entry() {
    let registry = Registry::start(RegistryAuth::None);
    let packages = Packages::new();
    oras_push(
        &registry.host(),
        "cni/zip:v1",
        &[PushFile::new(packages.zip())],
        &PushOptions::default(),
    );
    let proxy = CountingProxy::start(&registry.host());
    let reference = format!("{}/cni/zip:v1", proxy.host());
    let zip_size = std::fs::metadata(packages.zip()).expect("stat").len();
    let entry = "linux-amd64/host-local";
    let compressed = compressed_size(&packages.zip(), entry);
    let original = std::fs::read(cni_dir().join("host-local")).expect("read");
    let cat_with = |verify: &str, background: &str| {
        proxy.reset();
        let out = run_ocifs([
            "cat",
            "--plain-http",
            "--expand",
            "--verify",
            verify,
            "--background-fetch-max",
            background,
            "--chunk-size",
            "64K",
            &reference,
            &format!("cni-plugins-zip-v1/{entry}"),
        ]);
        out.success();
        assert!(out.stdout == original, "{verify}: host-local differs");
        proxy.blob_bytes()
    };
    let cat = |verify: &str| cat_with(verify, "0");

    // Lazy: the end records and directory (a 64 KiB chunk or three) and the
    // entry's chunks, not the other entries.
    let fetched = cat("lazy");
    assert!(
        fetched >= compressed && fetched < compressed + 512 * 1024,
        "lazy: fetched {fetched} bytes for an entry of {compressed} compressed, in a {zip_size}-byte zip:\n{}",
        proxy.describe()
    );
    assert!(
        fetched < zip_size * 6 / 10,
        "lazy: fetched {fetched} of {zip_size}"
    );

    // Strict: the whole package is checked before its first entry is read.
    let fetched = cat("strict");
    assert!(
        fetched >= zip_size,
        "strict: fetched only {fetched} of {zip_size}:\n{}",
        proxy.describe()
    );
}

fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(base).expect("prefix").display().to_string();
        let meta = std::fs::symlink_metadata(&p).expect("lstat");
        if meta.is_dir() {
            out.push(format!("{rel}/"));
            walk(&p, base, out);
        } else {
            out.push(rel);
        }
    }
}

#[test]
fn an_oras_directory_layer_is_shown_as_that_directory() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let tree = dir.path().join("config-tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).expect("mkdir");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::write(tree.join("a.txt"), b"a\n").expect("write");
    std::fs::write(tree.join("sub/deeper/b.bin"), random_bytes(300_000, 6)).expect("write");
    std::fs::write(tree.join("bin/tool"), b"#!/bin/sh\necho tool ran\n").expect("write");
    std::fs::set_permissions(
        tree.join("bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    symlink("a.txt", tree.join("link")).expect("symlink");
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, b"plain\n").expect("write");
    oras_push(
        &registry.host(),
        "dirs/tree:v1",
        &[PushFile::new(&tree), PushFile::new(&plain)],
        &PushOptions::default(),
    );
    let reference = format!("{}/dirs/tree:v1", registry.host());

    // No --expand needed: an ORAS directory is a directory.
    let out = run_ocifs(["ls", "-R", "--plain-http", &reference]);
    let mut want = Vec::new();
    walk(&tree, dir.path(), &mut want);
    want.insert(0, "config-tree/".to_owned());
    want.push("plain.txt".to_owned());
    assert_eq!(lines(out.success()), want);
    let out = run_ocifs([
        "cat",
        "--plain-http",
        &reference,
        "config-tree/sub/deeper/b.bin",
    ]);
    assert!(out.success().stdout == random_bytes(300_000, 6));

    // Mounted: the same tree, byte for byte, with modes and the symlink.
    let mnt = Mounted::new(&reference, &["--plain-http"]);
    let mut got = Vec::new();
    walk(&mnt.path("config-tree"), mnt.dir(), &mut got);
    let mut want = Vec::new();
    walk(&tree, dir.path(), &mut want);
    assert_eq!(got, want);
    for rel in ["a.txt", "sub/deeper/b.bin", "bin/tool"] {
        assert!(
            std::fs::read(mnt.path("config-tree").join(rel)).expect("read")
                == std::fs::read(tree.join(rel)).expect("read"),
            "{rel} differs"
        );
    }
    let mode = std::fs::metadata(mnt.path("config-tree/bin/tool"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let out = run(Command::new(mnt.path("config-tree/bin/tool")));
    assert_eq!(out.stdout_str(), "tool ran\n");
    assert_eq!(
        std::fs::read_link(mnt.path("config-tree/link")).expect("readlink"),
        Path::new("a.txt")
    );
    assert_eq!(
        std::fs::read(mnt.path("config-tree/link")).expect("read through the link"),
        b"a\n"
    );
}

/// CRC-32 (IEEE), bit by bit: the test's own, not the one ocifs uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Raw deflate of `data`, by Python's zlib.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, zlib; c = zlib.compressobj(9, zlib.DEFLATED, -15); \
             sys.stdout.buffer.write(c.compress(sys.stdin.buffer.read()) + c.flush())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || {
        std::io::Write::write_all(&mut stdin, &input).expect("writing to python3");
    });
    let out = child.wait_with_output().expect("python3");
    writer.join().expect("writer");
    assert!(out.status.success());
    out.stdout
}

/// One entry of [`HostileZip`], every header field as written.
#[derive(Clone)]
struct Raw {
    name: &'static str,
    data: Vec<u8>,
    method: u16,
    flags: u16,
    crc: u32,
    size: u32,
    local_size: u32,
    mode: u32,
}

impl Raw {
    fn stored(name: &'static str, contents: &[u8]) -> Self {
        Raw {
            name,
            data: contents.to_vec(),
            method: 0,
            flags: 0,
            crc: crc32(contents),
            size: contents.len() as u32,
            local_size: contents.len() as u32,
            mode: 0o100644,
        }
    }

    fn deflated(name: &'static str, contents: &[u8]) -> Self {
        Raw {
            data: deflate(contents),
            method: 8,
            ..Raw::stored(name, contents)
        }
    }
}

/// A zip writer of its own, for archives no tool would write.
#[derive(Default)]
struct HostileZip {
    out: Vec<u8>,
    central: Vec<u8>,
    count: u16,
}

impl HostileZip {
    fn add(&mut self, e: &Raw) -> u32 {
        let offset = self.out.len() as u32;
        let o = &mut self.out;
        o.extend_from_slice(b"PK\x03\x04");
        o.extend_from_slice(&20u16.to_le_bytes());
        o.extend_from_slice(&e.flags.to_le_bytes());
        o.extend_from_slice(&e.method.to_le_bytes());
        o.extend_from_slice(&[0, 0, 0x21, 0]);
        o.extend_from_slice(&e.crc.to_le_bytes());
        let local_csize = if e.method == 0 {
            e.local_size
        } else {
            e.data.len() as u32
        };
        o.extend_from_slice(&local_csize.to_le_bytes());
        o.extend_from_slice(&e.local_size.to_le_bytes());
        o.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        o.extend_from_slice(e.name.as_bytes());
        o.extend_from_slice(&e.data);
        self.central(e, offset);
        offset
    }

    fn central(&mut self, e: &Raw, offset: u32) {
        let c = &mut self.central;
        c.extend_from_slice(b"PK\x01\x02");
        c.extend_from_slice(&(3u16 << 8 | 20).to_le_bytes());
        c.extend_from_slice(&20u16.to_le_bytes());
        c.extend_from_slice(&e.flags.to_le_bytes());
        c.extend_from_slice(&e.method.to_le_bytes());
        c.extend_from_slice(&[0, 0, 0x21, 0]);
        c.extend_from_slice(&e.crc.to_le_bytes());
        c.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        c.extend_from_slice(&e.size.to_le_bytes());
        c.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        c.extend_from_slice(&[0; 8]);
        c.extend_from_slice(&(e.mode << 16).to_le_bytes());
        c.extend_from_slice(&offset.to_le_bytes());
        c.extend_from_slice(e.name.as_bytes());
        self.count += 1;
    }

    fn finish(mut self) -> Vec<u8> {
        let (cd_offset, cd_size) = (self.out.len() as u32, self.central.len() as u32);
        self.out.extend_from_slice(&self.central);
        let o = &mut self.out;
        o.extend_from_slice(b"PK\x05\x06");
        o.extend_from_slice(&[0; 4]);
        o.extend_from_slice(&self.count.to_le_bytes());
        o.extend_from_slice(&self.count.to_le_bytes());
        o.extend_from_slice(&cd_size.to_le_bytes());
        o.extend_from_slice(&cd_offset.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        self.out
    }
}

#[test]
fn a_hostile_zip_lists_its_good_entries_and_names_the_bad_ones() {
    let tool = random_bytes(200_000, 9);
    let mut z = HostileZip::default();
    z.add(&Raw::stored("good.txt", b"fine\n"));
    z.add(&Raw {
        mode: 0o100755,
        ..Raw::deflated("bin/tool", &tool)
    });
    z.add(&Raw::stored("../evil", b"x"));
    z.add(&Raw::stored("/abs", b"x"));
    z.add(&Raw::stored("a\\..\\b", b"x"));
    z.add(&Raw::stored("dup", b"one"));
    z.add(&Raw::stored("dup", b"two"));
    let shared = Raw::stored("overlap-1", b"shared bytes");
    let at = z.add(&shared);
    z.central(
        &Raw {
            name: "overlap-2",
            ..shared
        },
        at,
    );
    z.add(&Raw {
        local_size: 3,
        ..Raw::stored("size-mismatch", b"hello")
    });
    z.add(&Raw::deflated("bomb", &vec![0u8; 100 << 20]));
    z.add(&Raw {
        flags: 1,
        ..Raw::stored("secret", b"x")
    });
    z.add(&Raw {
        method: 12,
        ..Raw::stored("bzip2", b"x")
    });
    z.add(&Raw {
        crc: 0x1234_5678,
        ..Raw::deflated("crc-bad", b"payload payload payload")
    });
    let dir = temp_dir();
    let path = dir.path().join("evil-pkg.zip");
    std::fs::write(&path, z.finish()).expect("write");
    let registry = Registry::start(RegistryAuth::None);
    oras_push(
        &registry.host(),
        "evil:v1",
        &[PushFile::new(&path)],
        &PushOptions::default(),
    );
    let reference = format!("{}/evil:v1", registry.host());

    let out = run_ocifs(["ls", "-R", "--plain-http", "--expand", &reference]);
    assert_eq!(
        lines(out.success()),
        [
            "evil-pkg/",
            "evil-pkg/bin/",
            "evil-pkg/bin/tool",
            "evil-pkg/bomb",
            "evil-pkg/crc-bad",
            "evil-pkg/good.txt",
            "evil-pkg/size-mismatch",
            "evil-pkg.zip",
        ]
    );
    for (name, why) in [
        ("../evil", "escape"),
        ("/abs", "absolute"),
        ("a\\\\..\\\\b", "backslash"),
        ("dup", "more than one entry"),
        ("overlap-1", "overlaps"),
        ("overlap-2", "overlaps"),
        ("secret", "encrypted"),
        ("bzip2", "compression method 12"),
    ] {
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains(&format!("entry \"{name}\"")))
            .unwrap_or_else(|| panic!("no warning names {name}:\n{out}"));
        assert!(line.contains(why), "{name}: {line}");
        assert!(line.contains("evil-pkg.zip"), "{line}");
    }
    assert!(!out.stderr.contains("panicked"), "{out}");

    let cat = |path: &str| {
        run_ocifs([
            "cat",
            "--plain-http",
            "--expand",
            &reference,
            &format!("evil-pkg/{path}"),
        ])
    };
    assert_eq!(cat("good.txt").success().stdout, b"fine\n");
    assert!(cat("bin/tool").success().stdout == tool);
    cat("size-mismatch")
        .code_is(7)
        .stderr_has("\"size-mismatch\"")
        .stderr_has("sizes disagree");
    cat("crc-bad").code_is(6).stderr_has("CRC-32");
    // 100 MiB of zeros deflated over 1000:1 is real content, not a bomb:
    // its declared size bounds what is inflated.
    let zeros = cat("bomb");
    let got = &zeros.success().stdout;
    assert!(
        got.len() == 100 << 20 && got.iter().all(|b| *b == 0),
        "{} bytes",
        got.len()
    );
    cat("../evil").code_is(3);

    // Mounted: the good entries read, the bad one is EIO, the mount stays up.
    let mnt = Mounted::new(&reference, &["--plain-http", "--expand"]);
    assert_eq!(
        std::fs::read(mnt.path("evil-pkg/good.txt")).expect("read"),
        b"fine\n"
    );
    let err = std::fs::read(mnt.path("evil-pkg/size-mismatch")).expect_err("a lying entry");
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    let start = Instant::now();
    assert!(std::fs::read(mnt.path("evil-pkg/bin/tool")).expect("read") == tool);
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(mnt.log().contains("sizes disagree"), "{}", mnt.log());
}

#[test]
fn a_v7_tar_from_bsdtar_shows_its_directories() {
    // bsdtar's v7 format has no directory type: `d/` is a typeflag-0 entry
    // whose name ends in `/`. Every reader takes it as a directory.
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let src = dir.path().join("src");
    for i in 0..12 {
        let sub = src.join(format!("d/sub{}", i % 3));
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(sub.join(format!("f{i}.txt")), format!("file {i}\n")).expect("write");
    }
    let tar = dir.path().join("v7.tar");
    let status = Command::new("bsdtar")
        .current_dir(&src)
        .args(["--format", "v7", "-cf"])
        .arg(&tar)
        .arg("d")
        .status()
        .expect("bsdtar (libarchive-tools) is installed");
    assert!(status.success());
    let bytes = std::fs::read(&tar).expect("read");
    assert_eq!(bytes[156], 0, "bsdtar's v7 writes typeflag NUL for d/");
    let extracted = dir.path().join("x");
    std::fs::create_dir(&extracted).expect("mkdir");
    let status = Command::new("bsdtar")
        .args(["-xf"])
        .arg(&tar)
        .arg("-C")
        .arg(&extracted)
        .status()
        .expect("bsdtar");
    assert!(status.success());
    oras_push(
        &registry.host(),
        "v7/pkg:v1",
        &[PushFile::new(&tar)],
        &PushOptions::default(),
    );
    let reference = format!("{}/v7/pkg:v1", registry.host());
    let mut want = vec!["v7/".to_owned()];
    let mut tree = Vec::new();
    walk(&extracted, &extracted, &mut tree);
    assert_eq!(tree.len(), 1 + 3 + 12, "{tree:?}");
    want.extend(tree.iter().map(|p| format!("v7/{p}")));
    want.push("v7.tar".to_owned());
    let out = run_ocifs(["ls", "-R", "--plain-http", "--expand", &reference]);
    assert_eq!(lines(out.success()), want);
    let out = run_ocifs([
        "cat",
        "--plain-http",
        "--expand",
        &reference,
        "v7/d/sub1/f4.txt",
    ]);
    assert_eq!(out.success().stdout, b"file 4\n");
}

#[test]
fn zip_modes_are_shown_as_the_attributes_say_and_stdin_entries_are_files() {
    // Info-ZIP records setuid, setgid and sticky bits, and marks data it
    // read from stdin (`… | zip pkg.zip -`) as a FIFO; unzip and Python
    // extract that as a regular file.
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("tmp")).expect("mkdir");
    for (name, mode) in [("su", 0o4755), ("sg", 0o2755)] {
        std::fs::write(src.join(name), name).expect("write");
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    }
    std::fs::set_permissions(src.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod");
    let zip = dir.path().join("modes.zip");
    let status = Command::new("zip")
        .current_dir(&src)
        .args(["-q", "-r"])
        .arg(&zip)
        .args(["su", "sg", "tmp"])
        .status()
        .expect("zip");
    assert!(status.success());
    let mut child = Command::new("zip")
        .arg("-q")
        .arg(&zip)
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .expect("zip");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), b"from stdin\n")
        .expect("write");
    drop(child.stdin.take());
    assert!(child.wait().expect("zip").success());
    // What Python's zipfile extracts of the stdin entry.
    let py = dir.path().join("py");
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&zip)
        .arg(&py)
        .status()
        .expect("python3");
    assert!(status.success());
    let extracted = std::fs::read(py.join("-")).expect("Python extracted a regular file");
    oras_push(
        &registry.host(),
        "modes/pkg:v1",
        &[PushFile::new(&zip)],
        &PushOptions::default(),
    );
    let reference = format!("{}/modes/pkg:v1", registry.host());
    let out = run_ocifs([
        "ls",
        "-R",
        "--json",
        "--plain-http",
        "--expand",
        &reference,
        "modes",
    ]);
    let rows: serde_json::Value = serde_json::from_slice(&out.success().stdout).expect("json");
    let row = |path: &str| {
        rows.as_array()
            .expect("array")
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no {path} in {rows}"))
            .clone()
    };
    for (path, kind, mode) in [
        ("su", "file", 0o4755),
        ("sg", "file", 0o2755),
        ("tmp", "dir", 0o1777),
        ("-", "file", 0o600),
    ] {
        let r = row(path);
        assert_eq!(
            (r["type"].as_str(), r["mode"].as_u64()),
            (Some(kind), Some(mode)),
            "{r}"
        );
    }
    // Paths are from the directory listed.
    assert_eq!(row("-")["size"].as_u64(), Some(extracted.len() as u64));
    let out = run_ocifs(["cat", "--plain-http", "--expand", &reference, "modes/-"]);
    assert_eq!(out.success().stdout, extracted);
}

#[test]
fn a_zero_filled_package_over_1000_to_1_is_shown_and_read() {
    // A disk image of zeros deflates over 1000:1: legitimate, and bounded
    // by what the tar headers declare, not by the ratio.
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    let size = 20usize << 20;
    std::fs::write(src.join("disk.img"), vec![0u8; size]).expect("write");
    std::fs::write(src.join("note.txt"), b"zeros\n").expect("write");
    let tgz = dir.path().join("zeros.tgz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -cf - disk.img note.txt | gzip -9 > '{}'",
            src.display(),
            tgz.display()
        ))
        .status()
        .expect("tar and gzip");
    assert!(status.success());
    let compressed = std::fs::metadata(&tgz).expect("stat").len();
    assert!(
        compressed * 1000 < size as u64,
        "only {compressed} bytes: not over 1000:1"
    );
    oras_push(
        &registry.host(),
        "zeros/pkg:v1",
        &[PushFile::new(&tgz)],
        &PushOptions::default(),
    );
    let reference = format!("{}/zeros/pkg:v1", registry.host());
    let out = run_ocifs(["ls", "-R", "--plain-http", "--expand", &reference]);
    assert_eq!(
        lines(out.success()),
        ["zeros/", "zeros/disk.img", "zeros/note.txt", "zeros.tgz"]
    );
    let out = run_ocifs([
        "cat",
        "--plain-http",
        "--expand",
        &reference,
        "zeros/disk.img",
    ]);
    let got = &out.success().stdout;
    assert!(
        got.len() == size && got.iter().all(|b| *b == 0),
        "{} bytes",
        got.len()
    );
    let out = run_ocifs([
        "cat",
        "--plain-http",
        "--expand",
        &reference,
        "zeros/note.txt",
    ]);
    assert_eq!(out.success().stdout, b"zeros\n");
}

#[test]
fn sparse_tars_of_every_format_read_as_bsdtar_extracts_them_and_a_hole_fetches_nothing() {
    // GNU tar's old `S` type and PAX 0.0, 0.1 and 1.0, and bsdtar's PAX:
    // each shows its 20 MiB file under its own name, with its bytes.
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let tars = sparse_tars(dir.path());
    let want = sparse_bytes();
    for (name, tar) in &tars {
        let x = dir.path().join(format!("x-{name}"));
        std::fs::create_dir(&x).expect("mkdir");
        sh(&x, "bsdtar", &["-xf", &tar.display().to_string()]);
        let got = std::fs::read(x.join(name).join("disk.raw")).expect("bsdtar extracted it");
        assert!(got == want, "bsdtar -x of {name}.tar differs from the file");
    }
    let files: Vec<PushFile> = tars.iter().map(|(_, t)| PushFile::new(t)).collect();
    oras_push(
        &registry.host(),
        "sparse/pkg:v1",
        &files,
        &PushOptions::default(),
    );
    let proxy = CountingProxy::start(&registry.host());
    let reference = format!("{}/sparse/pkg:v1", proxy.host());
    let out = run_ocifs(["ls", "-R", "--json", "--plain-http", "--expand", &reference]);
    let rows: serde_json::Value = serde_json::from_slice(&out.success().stdout).expect("json");
    for (name, _) in &tars {
        for file in ["disk.raw", "again.raw"] {
            let path = format!("{name}/{name}/{file}");
            let row = rows
                .as_array()
                .expect("array")
                .iter()
                .find(|r| r["path"] == path.as_str())
                .unwrap_or_else(|| panic!("no {path} in {rows}"));
            assert_eq!(
                (row["type"].as_str(), row["size"].as_u64()),
                (Some("file"), Some(SPARSE_SIZE)),
                "{row}"
            );
        }
        let out = run_ocifs([
            "cat",
            "--plain-http",
            "--expand",
            &reference,
            &format!("{name}/{name}/again.raw"),
        ]);
        assert!(
            out.success().stdout == want,
            "ocifs cat of {name}'s file differs"
        );
    }

    // Lazily, a read of a hole fetches nothing; a read of data its range.
    let mnt = Mounted::new(
        &reference,
        &[
            "--plain-http",
            "--expand",
            "--verify",
            "lazy",
            "--background-fetch-max",
            "0",
            "--chunk-size",
            "64K",
        ],
    );
    use std::os::unix::fs::FileExt as _;
    for (name, _) in &tars {
        let f = std::fs::File::open(mnt.path(&format!("{name}/{name}/disk.raw"))).expect("open");
        assert_eq!(f.metadata().expect("stat").len(), SPARSE_SIZE);
        let mut buf = vec![0u8; 1 << 20];
        let (at, len) = SPARSE_DATA[1];
        f.read_exact_at(&mut buf, at).expect("read");
        assert!(buf == want[at as usize..at as usize + buf.len()], "{name}");
        proxy.reset();
        f.read_exact_at(&mut buf, 3 << 20).expect("read a hole");
        assert!(buf.iter().all(|b| *b == 0), "{name}: a hole is not zeros");
        assert_eq!(
            proxy.blob_bytes(),
            0,
            "{name}: reading a hole fetched:\n{}",
            proxy.describe()
        );
        assert!(len < 1 << 20);
    }
}

#[test]
fn a_tar_zst_package_read_out_of_order_decodes_once() {
    // Debian's `zstd` writes one frame: without a decoded copy, every read
    // before the last one decoded from the package's start.
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("bin")).expect("mkdir");
    let files: Vec<Vec<u8>> = (0..40).map(|i| random_bytes(256 << 10, 500 + i)).collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(src.join(format!("bin/tool{i:02}")), f).expect("write");
    }
    let pkg = dir.path().join("tools.tar.zst");
    sh(
        dir.path(),
        "sh",
        &[
            "-c",
            &format!(
                "tar -C '{}' -cf - bin | zstd -q -o '{}'",
                src.display(),
                pkg.display()
            ),
        ],
    );
    oras_push(
        &registry.host(),
        "zst/pkg:v1",
        &[PushFile::new(&pkg)],
        &PushOptions::default(),
    );
    let cache = dir.path().join("cache");
    let cache_arg = cache.display().to_string();
    let mnt = Mounted::new(
        &format!("{}/zst/pkg:v1", registry.host()),
        &["--plain-http", "--expand", "--cache-dir", &cache_arg],
    );
    for i in (0..files.len()).rev() {
        let got = std::fs::read(mnt.path(&format!("tools/bin/tool{i:02}"))).expect("read");
        assert!(got == files[i], "tool{i:02} differs");
    }
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mnt.path(".ocifs-stats")).expect("stats"))
            .expect("JSON");
    let decoded = stats["decoded_bytes"].as_u64().expect("decoded_bytes");
    let tar_len: u64 = files.iter().map(|f| f.len() as u64 + 512).sum::<u64>() + (64 << 10);
    eprintln!("40 files of a tar.zst read last first: {decoded} bytes decoded");
    assert!(
        decoded <= tar_len,
        "40 files read last first decoded {decoded} bytes, over the package once ({tar_len})"
    );
}

/// A stored zip of 1,000,000 empty files and a gzipped tar of 2,000,000,
/// in 1,000 directories, written by Python's zipfile and tarfile: made once
/// and kept in `target/fixtures` (writing them takes a minute or two).
fn many_entry_archives() -> (Vec<u8>, Vec<u8>) {
    let script = r#"
import gzip, sys, tarfile, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_STORED) as z:
    for i in range(1000000):
        z.writestr(f"d{i % 1000:03}/f{i:07}", b"")
with gzip.open(sys.argv[2], "wb", compresslevel=1) as g:
    with tarfile.open(fileobj=g, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for i in range(2000000):
            t.addfile(tarfile.TarInfo(f"d{i % 1000:03}/f{i:07}"))
"#;
    let key = sha256_digest(script.as_bytes());
    let dir = ocifs_tests::rootfs::fixtures_dir().join(format!(
        "many-entries-{}",
        &key.trim_start_matches("sha256:")[..16]
    ));
    let (zip, tgz) = (dir.join("many.zip"), dir.join("many.tgz"));
    if !tgz.is_file() {
        let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).expect("creating the fixture dir");
        // Not through `run`: its two-minute bound is for ocifs, and this
        // takes as long as Python takes.
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(tmp.join("many.zip"))
            .arg(tmp.join("many.tgz"))
            .output()
            .expect("running python3");
        assert!(
            out.status.success(),
            "python3 writing the archives: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).expect("keeping the fixture");
    }
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (read(&zip), read(&tgz))
}

/// `ocifs ARGS…` under GNU time: its output, and its peak RSS in KiB.
fn peak_rss_kib(args: &[&str]) -> (Output, u64) {
    let report = temp_dir();
    let report = report.path().join("time");
    let mut time = Command::new("/usr/bin/time");
    time.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&report)
        .arg(ocifs_tests::ocifs_bin())
        .args(args);
    let out = run(time);
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let kib = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS from /usr/bin/time: {text:?}"));
    (out, kib)
}

/// Packages stop at their entry limit while they are indexed, in bounded
/// memory (a package's index once grew to gigabytes before a limit applied):
/// `ls --expand` of a zip of 1,000,000 empty entries (the limit: shown)
/// and of a tgz of 2,000,000 (refused as a package: shown as its file)
/// each peak under 256 MiB.
#[test]
fn a_million_entry_zip_is_shown_and_a_two_million_entry_tgz_refused_in_under_256_mib() {
    let tmp = temp_dir();
    let (zip, tgz) = many_entry_archives();
    let dir = tmp.path().join("layout");
    let mut layout = ocifs_tests::OciLayoutBuilder::new(&dir);
    let layers = [layout.file("many.zip", &zip), layout.file("many.tgz", &tgz)];
    drop((zip, tgz));
    for (i, layer) in layers.iter().enumerate() {
        let m = layout.artifact_manifest(
            "application/vnd.example.packages",
            std::slice::from_ref(layer),
            &Default::default(),
        );
        layout.add(&m, Some(&format!("v{i}")));
    }
    let zip_ref = format!("oci:{}:v0", dir.display());
    let tgz_ref = format!("oci:{}:v1", dir.display());

    let (out, kib) = peak_rss_kib(&[
        "ls",
        "--expand=replace",
        "--verify",
        "lazy",
        &zip_ref,
        "many/d999",
    ]);
    out.success();
    let shown = lines(&out);
    assert_eq!(shown.len(), 1000, "{out}");
    assert_eq!(shown.last().map(String::as_str), Some("f0999999"), "{out}");
    assert!(kib < 256 * 1024, "the 1M-entry zip peaked at {kib} KiB");

    let (out, kib) = peak_rss_kib(&["ls", "--expand=replace", "--verify", "lazy", &tgz_ref]);
    out.success()
        .stdout_has("many.tgz")
        .stderr_has("more than 1000000 entries");
    assert!(kib < 256 * 1024, "the 2M-entry tgz peaked at {kib} KiB");
}

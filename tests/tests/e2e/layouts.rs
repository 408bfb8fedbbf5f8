//! OCI image layout directories: by tag, by digest, `--oci-layout`,
//! untagged (a single nested index, platform entries), ambiguous, and one
//! written by skopeo from a registry.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ocifs_tests::{
    Descriptor, OciLayoutBuilder, Platform, Registry, RegistryAuth, run_ocifs, sha256_hex,
    skopeo_copy, temp_dir,
};

use crate::support::{push_files, standard_files};

const ARTIFACT_TYPE: &str = "application/vnd.ocifs.test";

fn artifact(layout: &mut OciLayoutBuilder, files: &[(&str, &str)]) -> Descriptor {
    let layers: Vec<Descriptor> = files
        .iter()
        .map(|(t, c)| layout.file(t, c.as_bytes()))
        .collect();
    layout.artifact_manifest(ARTIFACT_TYPE, &layers, &BTreeMap::new())
}

fn image(layout: &mut OciLayoutBuilder, platform: &Platform) -> Descriptor {
    let file = layout.file("platform.txt", format!("{platform}\n").as_bytes());
    layout.image_manifest(platform, &[file])
}

fn oci(dir: &std::path::Path, suffix: &str) -> String {
    format!("oci:{}{suffix}", dir.display())
}

#[test]
fn tagged_layout_by_tag_by_digest_and_oci_layout_flag() {
    let tmp = temp_dir();
    let dir: PathBuf = tmp.path().join("layout");
    let mut layout = OciLayoutBuilder::new(&dir);
    let v1 = artifact(&mut layout, &[("a.txt", "one\n"), ("sub/b.txt", "bee\n")]);
    let v2 = artifact(&mut layout, &[("other.txt", "two\n")]);
    layout.add(&v1, Some("v1")).add(&v2, Some("v2"));
    let dir_s = dir.display().to_string();

    for args in [
        vec!["ls".to_owned(), oci(&dir, ":v1")],
        vec!["ls".to_owned(), oci(&dir, &format!("@{}", v1.digest))],
        vec![
            "ls".to_owned(),
            "--oci-layout".to_owned(),
            format!("{dir_s}:v1"),
        ],
        vec![
            "ls".to_owned(),
            "--oci-layout".to_owned(),
            format!("{dir_s}@{}", v1.digest),
        ],
    ] {
        let out = run_ocifs(&args);
        out.success().stdout_has("a.txt").stdout_has("sub");
        assert!(!out.stdout_str().contains("other.txt"), "{out}");
    }
    let out = run_ocifs(["cat", &oci(&dir, ":v1"), "sub/b.txt"]);
    out.success();
    assert_eq!(out.stdout, b"bee\n", "{out}");
    let out = run_ocifs(["cat", "--oci-layout", &format!("{dir_s}:v2"), "other.txt"]);
    out.success();
    assert_eq!(out.stdout, b"two\n", "{out}");
}

#[test]
fn untagged_single_entry_that_is_a_nested_index() {
    let tmp = temp_dir();
    let dir = tmp.path().join("layout");
    let mut layout = OciLayoutBuilder::new(&dir);
    let amd64 = image(&mut layout, &Platform::new("linux", "amd64"));
    let arm64 = image(&mut layout, &Platform::new("linux", "arm64").variant("v8"));
    let inner = layout.index(&[amd64, arm64]);
    layout.add(&inner, None);

    for (platform, expected) in [
        ("linux/arm64", "linux/arm64/v8\n"),
        ("linux/amd64", "linux/amd64\n"),
    ] {
        let out = run_ocifs([
            "cat",
            "--platform",
            platform,
            &oci(&dir, ""),
            "platform.txt",
        ]);
        out.success();
        assert_eq!(out.stdout_str(), expected, "{out}");
        let out = run_ocifs([
            "ls",
            "--platform",
            platform,
            "--oci-layout",
            &dir.display().to_string(),
        ]);
        out.success().stdout_has("platform.txt");
    }
}

#[test]
fn untagged_platform_entries_narrowed_by_platform() {
    let tmp = temp_dir();
    let dir = tmp.path().join("layout");
    let mut layout = OciLayoutBuilder::new(&dir);
    for p in [
        Platform::new("linux", "amd64"),
        Platform::new("linux", "arm64").variant("v8"),
    ] {
        let m = image(&mut layout, &p);
        layout.add(&m, None);
    }
    let out = run_ocifs([
        "cat",
        "--platform",
        "linux/arm64/v8",
        &oci(&dir, ""),
        "platform.txt",
    ]);
    out.success();
    assert_eq!(out.stdout, b"linux/arm64/v8\n", "{out}");
    let out = run_ocifs([
        "cat",
        "--platform",
        "linux/amd64",
        &oci(&dir, ""),
        "platform.txt",
    ]);
    out.success();
    assert_eq!(out.stdout, b"linux/amd64\n", "{out}");
}

#[test]
fn ambiguous_untagged_layout_lists_each_digest() {
    let tmp = temp_dir();
    let dir = tmp.path().join("layout");
    let mut layout = OciLayoutBuilder::new(&dir);
    let a = artifact(&mut layout, &[("a.txt", "a\n")]);
    let b = artifact(&mut layout, &[("b.txt", "b\n")]);
    layout.add(&a, None).add(&b, None);
    let out = run_ocifs(["ls", &oci(&dir, "")]);
    out.code_is(3).stderr_has(&a.digest).stderr_has(&b.digest);
}

#[test]
fn layout_written_by_skopeo_from_the_registry() {
    let registry = Registry::start(RegistryAuth::None);
    let tmp = temp_dir();
    let files = standard_files();
    let digest = push_files(&registry, tmp.path(), "copied:v1", &files);
    let dir = tmp.path().join("layout");
    skopeo_copy(
        &format!("docker://{}/copied:v1", registry.host()),
        &oci(&dir, ":v1"),
        &["--preserve-digests", "--src-tls-verify=false"],
    );
    drop(registry);

    let out = run_ocifs(["inspect", "--json", &oci(&dir, ":v1")]);
    out.success();
    assert_eq!(out.json()["digest"], digest.as_str(), "{out}");
    for f in &files {
        let out = run_ocifs(["cat", &oci(&dir, ":v1"), f.title]);
        out.success();
        assert_eq!(
            sha256_hex(&out.stdout),
            sha256_hex(&f.content),
            "cat {}",
            f.title
        );
    }
}

/// A layout with one file, `f.txt`, whose blob is then replaced by `evil`
/// (a symlink somewhere); and a secret of the blob's exact size outside it.
struct Hostile {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    blob: PathBuf,
    secret: PathBuf,
}

const CONTENT: &[u8] = b"the layout's own content\n";
const SECRET: &[u8] = b"root:$6$not-for-the-user\n";

impl Hostile {
    fn new() -> Self {
        assert_eq!(CONTENT.len(), SECRET.len());
        let tmp = temp_dir();
        let dir = tmp.path().join("layout");
        let mut layout = OciLayoutBuilder::new(&dir);
        let manifest = artifact(
            &mut layout,
            &[("f.txt", std::str::from_utf8(CONTENT).expect("utf-8"))],
        );
        layout.add(&manifest, Some("v1"));
        let blob = dir.join("blobs/sha256").join(sha256_hex(CONTENT));
        let secret = tmp.path().join("shadow");
        std::fs::write(&secret, SECRET).expect("secret");
        Hostile {
            tmp,
            dir,
            blob,
            secret,
        }
    }

    fn reference(&self) -> String {
        oci(&self.dir, ":v1")
    }
}

fn no_secret(out: &ocifs_tests::Output) {
    let text = format!("{}{}", out.stdout_str(), out.stderr);
    assert!(
        !text.contains("not-for-the-user"),
        "the secret leaked: {out}"
    );
}

#[test]
fn a_layout_blob_that_is_a_symlink_is_refused_in_every_mode() {
    let h = Hostile::new();
    std::fs::remove_file(&h.blob).expect("rm");
    std::os::unix::fs::symlink(&h.secret, &h.blob).expect("ln");
    for verify in ["strict", "lazy"] {
        let out = run_ocifs(["cat", "--verify", verify, &h.reference(), "f.txt"]);
        out.code_is(7)
            .stderr_has(&h.blob.display().to_string())
            .stderr_has("symlink");
        assert!(
            out.stdout.is_empty(),
            "{verify}: wrote {:?}",
            out.stdout_str()
        );
        no_secret(&out);
    }
    // A lazy mount other users may enter serves none of it either.
    let mounted =
        ocifs_tests::Mounted::new(&h.reference(), &["--verify", "lazy", "-o", "allow_other"]);
    let err = std::fs::read(mounted.path("f.txt")).expect_err("read of a symlinked blob");
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    assert!(mounted.log().contains("symlink"), "{}", mounted.log());
    mounted.unmount();
    // A relative symlink to a file inside the layout is refused too.
    std::fs::remove_file(&h.blob).expect("rm");
    std::fs::copy(&h.secret, h.dir.join("copy")).expect("cp");
    std::os::unix::fs::symlink("../../copy", &h.blob).expect("ln");
    let out = run_ocifs(["cat", "--verify", "lazy", &h.reference(), "f.txt"]);
    out.code_is(7).stderr_has("symlink");
    no_secret(&out);
}

#[test]
fn a_layout_whose_blobs_directory_is_a_symlink_is_refused() {
    for link in ["blobs", "blobs/sha256"] {
        let h = Hostile::new();
        let elsewhere = h.tmp.path().join("elsewhere");
        std::fs::rename(h.dir.join(link), &elsewhere).expect("mv");
        std::os::unix::fs::symlink(&elsewhere, h.dir.join(link)).expect("ln");
        for verify in ["strict", "lazy"] {
            for command in [vec!["ls"], vec!["cat", "--verify", verify]] {
                let mut args = command.clone();
                let reference = h.reference();
                args.push(&reference);
                if command[0] == "cat" {
                    args.push("f.txt");
                }
                let out = run_ocifs(&args);
                out.code_is(7)
                    .stderr_has("symlink")
                    .stderr_has(&h.dir.display().to_string());
                assert!(out.stdout.is_empty() || command[0] == "ls", "{out}");
                assert!(
                    !out.stdout_str().contains("f.txt"),
                    "{link}: listed through it: {out}"
                );
            }
        }
    }
}

#[test]
fn a_layout_blob_that_is_a_fifo_or_of_the_wrong_size_is_refused_without_hanging() {
    let h = Hostile::new();
    std::fs::remove_file(&h.blob).expect("rm");
    let status = std::process::Command::new("mkfifo")
        .arg(&h.blob)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    for verify in ["strict", "lazy"] {
        run_ocifs(["cat", "--verify", verify, &h.reference(), "f.txt"])
            .code_is(7)
            .stderr_has("not a regular file");
    }
    std::fs::remove_file(&h.blob).expect("rm");
    std::fs::write(&h.blob, b"short").expect("write");
    run_ocifs(["cat", "--verify", "lazy", &h.reference(), "f.txt"])
        .code_is(7)
        .stderr_has("is 5 bytes");
}

#[test]
fn a_strict_mount_of_a_layout_never_serves_a_blob_changed_after_its_check() {
    const MIB: usize = 1 << 20;
    let tmp = temp_dir();
    let dir = tmp.path().join("layout");
    let mut layout = OciLayoutBuilder::new(&dir);
    let content = ocifs_tests::random_bytes(4 * MIB, 0x1a7);
    let layer = layout.file("big.bin", &content);
    let manifest = layout.artifact_manifest(ARTIFACT_TYPE, &[layer], &BTreeMap::new());
    layout.add(&manifest, Some("v1"));
    let blob = dir.join("blobs/sha256").join(sha256_hex(&content));
    let mounted = ocifs_tests::Mounted::new(&oci(&dir, ":v1"), &[]);
    let file = std::fs::File::open(mounted.path("big.bin")).expect("open");
    let read = |offset: usize| {
        use std::os::unix::fs::FileExt as _;
        let mut buf = vec![0u8; MIB];
        file.read_exact_at(&mut buf, offset as u64).map(|()| buf)
    };
    // Checked whole on the first read.
    assert!(read(0).expect("first MiB") == content[..MIB]);

    // Rewritten in place: the chunk read from disk fails its check (EIO).
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&blob)
            .expect("open blob");
        f.write_all_at(b"EVIL", (2 * MIB + 10) as u64)
            .expect("rewrite");
    }
    let e = read(2 * MIB).expect_err("a rewritten chunk was served");
    assert_eq!(e.raw_os_error(), Some(5), "{e}");

    // Another file renamed over it: the mount keeps reading the file it
    // checked, so its bytes stay right where they were not rewritten.
    let other = ocifs_tests::random_bytes(4 * MIB, 0xbad);
    let swap = dir.join("swap");
    std::fs::write(&swap, &other).expect("write");
    std::fs::rename(&swap, &blob).expect("rename over the blob");
    assert!(read(3 * MIB).expect("last MiB") == content[3 * MIB..]);
    drop(file);
    drop(mounted);
}

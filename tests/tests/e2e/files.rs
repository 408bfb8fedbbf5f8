//! Files pushed with oras: `ls` from the manifest alone, `cat`
//! byte-identical, by tag and by digest, `inspect --json`.

use std::collections::BTreeMap;

use ocifs_tests::{
    CountingProxy, Registry, RegistryAuth, ocifs, run, run_ocifs, sha256_digest, sha256_hex,
    temp_dir,
};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::{FileSpec, push_files, standard_files};

struct Pushed {
    registry: Registry,
    proxy: CountingProxy,
    _dir: TempDir,
    digest: String,
    files: Vec<FileSpec>,
}

impl Pushed {
    /// `PROXY/files:v1`: every ocifs request goes through the counting proxy.
    fn by_tag(&self) -> String {
        format!("{}/files:v1", self.proxy.host())
    }

    fn by_digest(&self) -> String {
        format!("{}/files@{}", self.proxy.host(), self.digest)
    }
}

fn pushed() -> Pushed {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let files = standard_files();
    let digest = push_files(&registry, dir.path(), "files:v1", &files);
    let proxy = CountingProxy::start(&registry.host());
    Pushed {
        registry,
        proxy,
        _dir: dir,
        digest,
        files,
    }
}

fn names(stdout: &str) -> Vec<String> {
    let mut names: Vec<String> = stdout
        .lines()
        .map(|l| l.trim_end_matches('/').to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    names.sort();
    names
}

#[test]
fn ls_lists_titles_from_the_manifest_alone() {
    let p = pushed();
    let out = run_ocifs(["ls", "--plain-http", &p.by_tag()]);
    out.success();
    assert_eq!(
        names(&out.stdout_str()),
        ["big.bin", "hello.txt", "nested", "notes.md"],
        "{out}"
    );
    let out = run_ocifs(["ls", "--plain-http", &p.by_tag(), "nested/dir"]);
    out.success();
    assert_eq!(names(&out.stdout_str()), ["deep.txt"], "{out}");
    assert!(
        p.proxy.blob_gets().is_empty(),
        "ls fetched blobs:\n{}",
        p.proxy.describe()
    );
    assert!(
        !p.proxy.manifest_gets().is_empty(),
        "ls fetched no manifest through the proxy:\n{}",
        p.proxy.describe()
    );
}

#[test]
fn ls_long_shows_sizes() {
    let p = pushed();
    let out = run_ocifs(["ls", "-l", "--plain-http", &p.by_tag()]);
    out.success();
    let stdout = out.stdout_str();
    for f in p.files.iter().filter(|f| !f.title.contains('/')) {
        let line = stdout
            .lines()
            .find(|l| l.ends_with(f.title))
            .unwrap_or_else(|| panic!("no line for {}:\n{out}", f.title));
        assert!(
            line.split_whitespace()
                .any(|w| w == f.content.len().to_string()),
            "the line of {} lacks its size {}:\n{out}",
            f.title,
            f.content.len()
        );
    }
    assert!(
        p.proxy.blob_gets().is_empty(),
        "ls -l fetched blobs:\n{}",
        p.proxy.describe()
    );
}

#[test]
fn ls_json_has_names_sizes_and_digests() {
    let p = pushed();
    let out = run_ocifs(["ls", "--json", "--plain-http", &p.by_tag()]);
    out.success();
    let json = out.json();
    let entries = json
        .as_array()
        .unwrap_or_else(|| panic!("not an array:\n{out}"));
    let by_name: BTreeMap<&str, &Value> = entries
        .iter()
        .filter_map(|e| Some((e["path"].as_str()?.rsplit('/').next()?, e)))
        .collect();
    for f in p.files.iter().filter(|f| !f.title.contains('/')) {
        let e = by_name
            .get(f.title)
            .unwrap_or_else(|| panic!("no entry for {}:\n{out}", f.title));
        assert_eq!(e["type"], "file", "{out}");
        assert_eq!(e["size"], f.content.len(), "{out}");
        assert_eq!(e["digest"], sha256_digest(&f.content).as_str(), "{out}");
    }
    assert_eq!(
        by_name.get("nested").map(|e| &e["type"]),
        Some(&Value::from("dir")),
        "{out}"
    );
    let out = run_ocifs(["ls", "--json", "--plain-http", &p.by_tag(), "nested/dir"]);
    out.success();
    let json = out.json();
    let deep = &json[0];
    assert!(
        deep["path"]
            .as_str()
            .is_some_and(|s| s.ends_with("deep.txt")),
        "{out}"
    );
    assert_eq!(deep["size"], b"deep inside\n".len(), "{out}");
    assert!(
        p.proxy.blob_gets().is_empty(),
        "ls --json fetched blobs:\n{}",
        p.proxy.describe()
    );
}

#[test]
fn cat_is_byte_identical() {
    let p = pushed();
    for f in &p.files {
        let out = run_ocifs(["cat", "--plain-http", &p.by_tag(), f.title]);
        out.success();
        assert_eq!(
            sha256_hex(&out.stdout),
            sha256_hex(&f.content),
            "cat {} differs ({} bytes, expected {}):\nstderr: {}",
            f.title,
            out.stdout.len(),
            f.content.len(),
            out.stderr
        );
    }
}

#[test]
fn cat_fetches_only_the_file_asked_for() {
    let p = pushed();
    let hello = &p.files[0];
    let out = run_ocifs(["cat", "--plain-http", &p.by_tag(), hello.title]);
    out.success();
    let wanted = sha256_digest(&hello.content);
    let gets = p.proxy.blob_gets();
    assert!(
        !gets.is_empty(),
        "cat fetched no blob:\n{}",
        p.proxy.describe()
    );
    assert!(
        gets.iter().all(|r| r.path.ends_with(&wanted)),
        "cat {} fetched other blobs:\n{}",
        hello.title,
        p.proxy.describe()
    );
    assert!(
        p.proxy.blob_bytes() < 1024 * 1024,
        "cat of a small file moved {} blob bytes:\n{}",
        p.proxy.blob_bytes(),
        p.proxy.describe()
    );
}

#[test]
fn by_digest_reference() {
    let p = pushed();
    let out = run_ocifs(["ls", "--plain-http", &p.by_digest()]);
    out.success();
    assert_eq!(
        names(&out.stdout_str()),
        ["big.bin", "hello.txt", "nested", "notes.md"],
        "{out}"
    );
    assert!(
        p.proxy
            .manifest_gets()
            .iter()
            .any(|r| r.path.ends_with(&p.digest)),
        "the manifest was not fetched by digest:\n{}",
        p.proxy.describe()
    );
    for f in &p.files {
        let out = run_ocifs(["cat", "--plain-http", &p.by_digest(), f.title]);
        out.success();
        assert_eq!(
            sha256_hex(&out.stdout),
            sha256_hex(&f.content),
            "cat {} by digest differs",
            f.title
        );
    }
}

#[test]
fn inspect_json_has_digest_and_layers() {
    let p = pushed();
    // Straight to the registry this time: inspect must not depend on the proxy.
    let reference = format!("{}/files:v1", p.registry.host());
    let out = run_ocifs(["inspect", "--json", "--plain-http", &reference]);
    out.success();
    let json = out.json();
    assert_eq!(json["digest"], p.digest.as_str(), "{out}");
    let layers = json["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no layers array:\n{out}"));
    assert_eq!(layers.len(), p.files.len(), "{out}");
    for f in &p.files {
        let layer = layers
            .iter()
            .find(|l| l["annotations"]["org.opencontainers.image.title"] == f.title)
            .unwrap_or_else(|| panic!("no layer titled {}:\n{out}", f.title));
        assert_eq!(layer["digest"], sha256_digest(&f.content).as_str(), "{out}");
        assert_eq!(layer["size"], f.content.len(), "{out}");
        let media_type = f
            .media_type
            .unwrap_or("application/vnd.oci.image.layer.v1.tar");
        assert_eq!(layer["mediaType"], media_type, "{out}");
    }
}

#[test]
fn each_run_starts_with_an_empty_cache() {
    let p = pushed();
    let hello = &p.files[0];
    for _ in 0..2 {
        run_ocifs(["cat", "--plain-http", &p.by_tag(), hello.title]).success();
    }
    let wanted = sha256_digest(&hello.content);
    let runs_that_fetched = p
        .proxy
        .blob_gets()
        .iter()
        .filter(|r| r.path.ends_with(&wanted) && (200..300).contains(&r.status))
        .count();
    assert!(
        runs_that_fetched >= 2,
        "the second run did not fetch the blob: the harness leaked a cache between runs:\n{}",
        p.proxy.describe()
    );
}

#[test]
fn a_shared_cache_serves_the_second_cat() {
    let p = pushed();
    let cache = temp_dir();
    let big = &p.files[1];
    let cat = || {
        let mut command = ocifs();
        command.env("OCIFS_CACHE", cache.path()).args([
            "cat",
            "--plain-http",
            &p.by_tag(),
            big.title,
        ]);
        let out = run(command);
        out.success();
        assert_eq!(
            sha256_hex(&out.stdout),
            sha256_hex(&big.content),
            "cat {} differs",
            big.title
        );
    };
    cat();
    assert!(
        p.proxy.blob_bytes() >= big.content.len() as u64,
        "the first cat moved only {} blob bytes:\n{}",
        p.proxy.blob_bytes(),
        p.proxy.describe()
    );
    p.proxy.reset();
    cat();
    assert!(
        p.proxy.blob_gets().is_empty(),
        "the second cat fetched blobs despite the cache:\n{}",
        p.proxy.describe()
    );
}

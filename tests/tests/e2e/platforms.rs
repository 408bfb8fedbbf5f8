//! A multi-platform index built as an OCI layout and pushed by
//! `skopeo copy --all`: `--platform` picks the right manifest, and says why
//! when it cannot.

use ocifs_tests::{
    Descriptor, OciLayoutBuilder, Platform, Registry, RegistryAuth, run_ocifs, skopeo_copy,
    temp_dir,
};
use tempfile::TempDir;

/// The file every platform's manifest carries; its content names the
/// platform.
const FILE: &str = "platform.txt";

struct Multi {
    registry: Registry,
    dir: TempDir,
    manifests: Vec<Descriptor>,
}

impl Multi {
    fn reference(&self) -> String {
        format!("{}/multi:v1", self.registry.host())
    }

    fn layout(&self) -> String {
        format!("oci:{}:v1", self.dir.path().join("layout").display())
    }
}

fn platforms() -> Vec<Platform> {
    vec![
        Platform::new("linux", "amd64"),
        Platform::new("linux", "arm64")
            .variant("v8")
            .os_version("1.0"),
        Platform::new("linux", "arm64")
            .variant("v8")
            .os_version("2.0"),
        Platform::new("windows", "amd64").os_version("10.0.17763.1"),
    ]
}

fn content_for(platform: &Platform) -> String {
    format!("{platform}\n")
}

/// Builds the index as a layout tagged `v1` and pushes it as `multi:v1`.
fn multi() -> Multi {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let mut layout = OciLayoutBuilder::new(dir.path().join("layout"));
    let manifests: Vec<Descriptor> = platforms()
        .iter()
        .map(|p| {
            let file = layout.file(FILE, content_for(p).as_bytes());
            layout.image_manifest(p, &[file])
        })
        .collect();
    let index = layout.index(&manifests);
    layout.add(&index, Some("v1"));
    let multi = Multi {
        registry,
        dir,
        manifests,
    };
    skopeo_copy(
        &multi.layout(),
        &format!("docker://{}", multi.reference()),
        &["--all", "--preserve-digests", "--dest-tls-verify=false"],
    );
    multi
}

/// `--platform` values and the platform each must choose.
fn choices() -> Vec<(&'static str, usize)> {
    vec![
        ("linux/amd64", 0),
        ("linux/arm64/v8:1.0", 1),
        ("linux/arm64:2.0", 2),
        ("windows/amd64", 3),
        // A bare architecture is this machine's OS (Linux here) with it.
        ("x86_64", 0),
        ("aarch64:1.0", 1),
        ("arm64/v8:2.0", 2),
    ]
}

#[test]
fn cat_picks_each_platform() {
    let m = multi();
    for (wanted, i) in choices() {
        let out = run_ocifs([
            "cat",
            "--plain-http",
            "--platform",
            wanted,
            &m.reference(),
            FILE,
        ]);
        out.success();
        assert_eq!(
            out.stdout_str(),
            content_for(&platforms()[i]),
            "--platform {wanted}:\n{out}"
        );
    }
}

#[test]
fn the_pushed_layout_resolves_the_same() {
    let m = multi();
    for (wanted, i) in choices() {
        let out = run_ocifs(["cat", "--platform", wanted, &m.layout(), FILE]);
        out.success();
        assert_eq!(
            out.stdout_str(),
            content_for(&platforms()[i]),
            "--platform {wanted}:\n{out}"
        );
    }
}

#[test]
fn inspect_json_reports_the_chosen_manifest() {
    let m = multi();
    let out = run_ocifs([
        "inspect",
        "--json",
        "--plain-http",
        "--platform",
        "linux/arm64/v8:2.0",
        &m.reference(),
    ]);
    out.success();
    let json = out.json();
    assert_eq!(json["digest"], m.manifests[2].digest.as_str(), "{out}");
    assert!(
        json["path"].as_array().is_some_and(|p| !p.is_empty()),
        "inspect shows no index step:\n{out}"
    );
}

#[test]
fn arm64_without_os_version_is_ambiguous() {
    let m = multi();
    let out = run_ocifs([
        "cat",
        "--plain-http",
        "--platform",
        "linux/arm64",
        &m.reference(),
        FILE,
    ]);
    out.code_is(3).stderr_has("os.version");
    assert!(out.stdout.is_empty(), "{out}");
}

#[test]
fn unknown_platform_lists_the_available_ones() {
    let m = multi();
    let out = run_ocifs([
        "cat",
        "--plain-http",
        "--platform",
        "linux/s390x",
        &m.reference(),
        FILE,
    ]);
    out.code_is(3)
        .stderr_has("linux/s390x")
        .stderr_has("linux/amd64")
        .stderr_has("linux/arm64/v8:1.0")
        .stderr_has("linux/arm64/v8:2.0")
        .stderr_has("windows/amd64:10.0.17763.1");
}

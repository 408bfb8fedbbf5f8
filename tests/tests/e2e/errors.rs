//! What goes wrong, and the exit code and message it gets: missing tags
//! (with nearby ones), missing repositories and paths, bad references, an
//! unreachable registry.

use std::time::Duration;

use ocifs_tests::{Registry, RegistryAuth, closed_port, run_ocifs, temp_dir};
use tempfile::TempDir;

use crate::support::{FileSpec, push_files};

/// A registry with `repo:v1.0.0` and `repo:v1.0.1`.
fn tagged() -> (Registry, TempDir) {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    for tag in ["v1.0.0", "v1.0.1"] {
        let files = [FileSpec {
            title: "version.txt",
            content: format!("{tag}\n").into_bytes(),
            media_type: None,
        }];
        push_files(&registry, dir.path(), &format!("repo:{tag}"), &files);
    }
    (registry, dir)
}

#[test]
fn missing_tag_is_exit_3_and_names_the_tag() {
    let (registry, _dir) = tagged();
    let out = run_ocifs([
        "ls",
        "--plain-http",
        &format!("{}/repo:v9.9.9", registry.host()),
    ]);
    out.code_is(3).stderr_has("v9.9.9");
}

#[test]
fn missing_tag_lists_nearby_tags() {
    let (registry, _dir) = tagged();
    let out = run_ocifs([
        "ls",
        "--plain-http",
        &format!("{}/repo:v1.0", registry.host()),
    ]);
    out.code_is(3).stderr_has("v1.0.0").stderr_has("v1.0.1");
}

#[test]
fn missing_repository_is_exit_3() {
    let (registry, _dir) = tagged();
    let out = run_ocifs([
        "ls",
        "--plain-http",
        &format!("{}/nosuchrepo:v1.0.0", registry.host()),
    ]);
    out.code_is(3);
}

#[test]
fn missing_path_is_exit_3() {
    let (registry, _dir) = tagged();
    let reference = format!("{}/repo:v1.0.0", registry.host());
    let out = run_ocifs(["cat", "--plain-http", &reference, "no-such-file.txt"]);
    out.code_is(3).stderr_has("no-such-file.txt");
    let out = run_ocifs(["ls", "--plain-http", &reference, "no/such/dir"]);
    out.code_is(3);
}

#[test]
fn bad_reference_is_exit_2() {
    // Invalid without any network: a space in the repository name.
    run_ocifs(["ls", "--plain-http", "127.0.0.1:1/bad repo:v1"]).code_is(2);
    run_ocifs(["ls", "--plain-http", "127.0.0.1:1/repo@sha256:tooshort"]).code_is(2);
}

#[test]
fn unreachable_registry_is_exit_5_quickly() {
    let port = closed_port();
    let out = run_ocifs([
        "ls",
        "--plain-http",
        "--timeout",
        "5",
        &format!("127.0.0.1:{port}/repo:v1"),
    ]);
    out.code_is(5);
    assert!(
        out.elapsed < Duration::from_secs(30),
        "took {:?}:\n{out}",
        out.elapsed
    );
}

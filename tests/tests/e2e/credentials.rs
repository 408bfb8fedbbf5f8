//! Credentials from the stores docker-compatible clients keep them in:
//! a docker credential helper (`credHelpers`, `credsStore`) and podman's
//! `auth.json`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ocifs_tests::{Registry, RegistryAuth, ocifs, run, temp_dir};

use crate::support::{FileSpec, push_files};

const USER: &str = "bob";
const PASSWORD: &str = "helper-Passw0rd";

fn registry() -> (Registry, tempfile::TempDir) {
    let registry = Registry::start(RegistryAuth::htpasswd(USER, PASSWORD));
    let dir = temp_dir();
    push_files(
        &registry,
        dir.path(),
        "kept:v1",
        &[FileSpec {
            title: "kept.txt",
            content: b"kept\n".to_vec(),
            media_type: None,
        }],
    );
    (registry, dir)
}

/// A `docker-credential-ocifstest` helper that answers `get` for `host`
/// only, and logs the server it was asked about.
fn write_helper(dir: &Path, host: &str) {
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> '{log}'\n\
         if [ \"$server\" = '{host}' ]; then printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"; \
         else echo 'credentials not found in native keychain'; exit 1; fi\n",
        log = dir.join("asked").display()
    );
    let path = dir.join("docker-credential-ocifstest");
    std::fs::write(&path, script).expect("helper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn ls_with(config_dir: &Path, bin_dir: &Path, host: &str) -> ocifs_tests::Output {
    let mut command = ocifs();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    command
        .env("DOCKER_CONFIG", config_dir)
        .env("PATH", path)
        .args(["ls", "--plain-http", &format!("{host}/kept:v1")]);
    run(command)
}

#[test]
fn a_cred_helper_named_for_the_registry_is_used() {
    let (registry, dir) = registry();
    let host = registry.host();
    write_helper(dir.path(), &host);
    let config = serde_json::json!({"credHelpers": {&host: "ocifstest"}});
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
    ls_with(dir.path(), dir.path(), &host)
        .success()
        .stdout_has("kept.txt");
    let asked = std::fs::read_to_string(dir.path().join("asked")).expect("the helper was not run");
    assert_eq!(asked.trim(), host);
}

#[test]
fn a_creds_store_is_used_and_its_failure_is_a_clear_error() {
    let (registry, dir) = registry();
    let host = registry.host();
    write_helper(dir.path(), &host);
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"credsStore": "ocifstest"}"#,
    )
    .expect("config");
    ls_with(dir.path(), dir.path(), &host)
        .success()
        .stdout_has("kept.txt");
    // A store that knows nothing of this registry: the error names the helper,
    // and never echoes what the helper printed.
    let other = temp_dir();
    write_helper(other.path(), "elsewhere.example:5000");
    std::fs::write(
        other.path().join("config.json"),
        r#"{"credsStore": "ocifstest"}"#,
    )
    .expect("config");
    let out = ls_with(other.path(), other.path(), &host);
    out.code_is(4).stderr_has("docker-credential-ocifstest");
    assert!(!out.stderr.contains("native keychain"), "{out}");
}

#[test]
fn podman_auth_json_is_used() {
    let (registry, dir) = registry();
    let host = registry.host();
    let auth_file = dir.path().join("auth.json");
    let json = serde_json::json!({"auths": {&host: {"auth": STANDARD.encode(format!("{USER}:{PASSWORD}"))}}});
    std::fs::write(&auth_file, json.to_string()).expect("auth.json");
    std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut command = ocifs();
    command.env("REGISTRY_AUTH_FILE", &auth_file).args([
        "ls",
        "--plain-http",
        &format!("{host}/kept:v1"),
    ]);
    let out = run(command);
    out.success().stdout_has("kept.txt");
    assert!(!out.stderr.contains("readable by other users"), "{out}");
}

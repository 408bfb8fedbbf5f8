//! Credentials: htpasswd (HTTP Basic) and token registries; flags,
//! `--password-stdin`, and the docker config file.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ocifs_tests::{Registry, RegistryAuth, ocifs, run, run_ocifs, run_with_stdin, temp_dir};
use tempfile::TempDir;

use crate::support::{FileSpec, push_files};

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-Passw0rd";
const CONTENT: &[u8] = b"only for alice\n";

struct Secured {
    registry: Registry,
    _dir: TempDir,
}

impl Secured {
    fn reference(&self) -> String {
        format!("{}/private:v1", self.registry.host())
    }
}

/// A registry wanting `auth`, with one file pushed by oras-py with the
/// credentials.
fn secured(auth: RegistryAuth) -> Secured {
    let registry = Registry::start(auth);
    let dir = temp_dir();
    let files = [FileSpec {
        title: "secret.txt",
        content: CONTENT.to_vec(),
        media_type: None,
    }];
    push_files(&registry, dir.path(), "private:v1", &files);
    Secured {
        registry,
        _dir: dir,
    }
}

fn right_password_works(s: &Secured) {
    let out = run_ocifs([
        "ls",
        "--plain-http",
        "-u",
        USER,
        "-p",
        PASSWORD,
        &s.reference(),
    ]);
    out.success().stdout_has("secret.txt");
    let out = run_ocifs([
        "cat",
        "--plain-http",
        "-u",
        USER,
        "-p",
        PASSWORD,
        &s.reference(),
        "secret.txt",
    ]);
    out.success();
    assert_eq!(out.stdout, CONTENT, "{out}");
}

fn wrong_password_is_exit_4(s: &Secured) {
    let out = run_ocifs([
        "ls",
        "--plain-http",
        "-u",
        USER,
        "-p",
        "wrong",
        &s.reference(),
    ]);
    out.code_is(4);
    assert!(
        out.stderr.to_lowercase().contains("authentication"),
        "{out}"
    );
}

fn no_credentials_is_exit_4(s: &Secured) {
    run_ocifs(["ls", "--plain-http", &s.reference()]).code_is(4);
}

fn docker_config_works(s: &Secured) {
    let config = temp_dir();
    let auth = STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let json = serde_json::json!({"auths": {s.registry.host(): {"auth": auth}}});
    std::fs::write(config.path().join("config.json"), json.to_string())
        .expect("writing config.json");
    let mut command = ocifs();
    command.env("DOCKER_CONFIG", config.path()).args([
        "cat",
        "--plain-http",
        &s.reference(),
        "secret.txt",
    ]);
    let out = run(command);
    out.success();
    assert_eq!(out.stdout, CONTENT, "{out}");
}

mod htpasswd {
    use super::*;

    fn registry() -> Secured {
        secured(RegistryAuth::htpasswd(USER, PASSWORD))
    }

    #[test]
    fn username_and_password() {
        right_password_works(&registry());
    }

    #[test]
    fn wrong_password_is_exit_4() {
        super::wrong_password_is_exit_4(&registry());
    }

    #[test]
    fn no_credentials_is_exit_4() {
        super::no_credentials_is_exit_4(&registry());
    }

    #[test]
    fn password_stdin() {
        let s = registry();
        let mut command = ocifs();
        command.args([
            "ls",
            "--plain-http",
            "-u",
            USER,
            "--password-stdin",
            &s.reference(),
        ]);
        let out = run_with_stdin(command, format!("{PASSWORD}\n").as_bytes());
        out.success().stdout_has("secret.txt");
    }

    #[test]
    fn docker_config() {
        docker_config_works(&registry());
    }
}

mod token {
    use super::*;

    fn registry() -> Secured {
        secured(RegistryAuth::token(USER, PASSWORD))
    }

    #[test]
    fn username_and_password() {
        let s = registry();
        let before = s.registry.token_requests().len();
        right_password_works(&s);
        let requests = s.registry.token_requests();
        assert!(
            requests[before..]
                .iter()
                .any(|r| r.authorization && r.status == 200),
            "ocifs got no token from the token server: {requests:#?}"
        );
    }

    #[test]
    fn wrong_password_is_exit_4() {
        let s = registry();
        let before = s.registry.token_requests().len();
        super::wrong_password_is_exit_4(&s);
        let requests = s.registry.token_requests();
        assert!(
            requests[before..].iter().any(|r| r.status == 401),
            "the token server refused nothing: {requests:#?}"
        );
    }

    #[test]
    fn no_credentials_is_exit_4() {
        super::no_credentials_is_exit_4(&registry());
    }

    #[test]
    fn docker_config() {
        docker_config_works(&registry());
    }
}

//! Where credentials go, and where they never show: blob downloads that a
//! registry redirects to another host, token services on another host or
//! behind a URL that is not http(s), the output of `-vvv` runs, and docker
//! configs other users can read.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ocifs_tests::{
    BlobHost, CountingProxy, Disposition, HookFn, Mounted, Output, Registry, RegistryAuth,
    RequestInfo, daemon_pid, ocifs, random_bytes, run, run_ocifs, run_with_stdin, temp_dir,
};
use tempfile::TempDir;

use crate::support::{FileSpec, push_files};

const USER: &str = "carol";
const PASSWORD: &str = "Redirect-Passw0rd-x9";
const COOKIE: &str = "registry-session=cookie-s3cret";

/// A registry wanting `auth`, with two files pushed, and a proxy in front.
struct Front {
    registry: Registry,
    proxy: CountingProxy,
    files: Vec<FileSpec>,
    _dir: TempDir,
}

impl Front {
    fn new(auth: RegistryAuth) -> Self {
        let registry = Registry::start(auth);
        let dir = temp_dir();
        let files = vec![
            FileSpec {
                title: "small.txt",
                content: b"small but private\n".to_vec(),
                media_type: None,
            },
            FileSpec {
                title: "big.bin",
                content: random_bytes(3 << 20, 0x5ec),
                media_type: None,
            },
        ];
        push_files(&registry, dir.path(), "private:v1", &files);
        let proxy = CountingProxy::start(&registry.host());
        Front {
            registry,
            proxy,
            files,
            _dir: dir,
        }
    }

    fn reference(&self) -> String {
        format!("{}/private:v1", self.proxy.host())
    }

    fn cat(&self, verify: &str, path: &str) -> Output {
        run_ocifs([
            "cat",
            "--plain-http",
            "--verify",
            verify,
            "-u",
            USER,
            "-p",
            PASSWORD,
            &self.reference(),
            path,
        ])
    }
}

fn auth_kind(auth: &RegistryAuth) -> &'static str {
    match auth {
        RegistryAuth::Htpasswd { .. } => "htpasswd",
        RegistryAuth::Token { .. } => "token",
        _ => "none",
    }
}

/// A registry that keeps its blobs in a storage service on another
/// loopback port: every blob `GET` is answered `307` to it, and every
/// answer of the registry sets a cookie.
fn redirected_downloads(auth: RegistryAuth) {
    let front = Front::new(auth);
    let contents: Vec<&[u8]> = front.files.iter().map(|f| &f.content[..]).collect();
    let storage = BlobHost::start(&contents);
    let storage_host = storage.host();
    front
        .proxy
        .set_hook(Some(Arc::new(HookFn(move |r: &RequestInfo| {
            if r.is_blob_get() {
                let digest = r.path.rsplit('/').next().unwrap_or_default();
                Disposition::Redirect(format!(
                    "http://{storage_host}/storage/{digest}?X-Signature=abc"
                ))
            } else {
                Disposition::Forward
            }
        }))));
    front.proxy.set_cookie(Some(COOKIE));
    for verify in ["strict", "lazy"] {
        for f in &front.files {
            let out = front.cat(verify, f.title);
            out.success();
            assert!(out.stdout == f.content, "{verify} {}: wrong bytes", f.title);
        }
    }
    let at_storage = storage.requests();
    assert!(at_storage.len() >= 4, "{at_storage:#?}");
    for r in &at_storage {
        assert_eq!(
            r.header("authorization"),
            None,
            "credentials reached the storage host: {r:?}"
        );
        assert_eq!(
            r.header("cookie"),
            None,
            "a cookie reached the storage host: {r:?}"
        );
        assert!(
            r.header("range").is_some_and(|v| v.starts_with("bytes=")),
            "the Range header was lost on the redirect: {r:?}"
        );
        assert!(r.path_and_query.contains("X-Signature=abc"), "{r:?}");
    }
    // The registry did get the credentials, and never a cookie back.
    let at_registry = front.proxy.requests();
    assert!(
        at_registry
            .iter()
            .filter(|r| r.is_blob_get())
            .all(|r| r.authorization),
        "{}",
        front.proxy.describe()
    );
    assert!(
        at_registry.iter().all(|r| !r.cookie),
        "{}",
        front.proxy.describe()
    );
    eprintln!(
        "redirects ({}): {} blob GETs redirected, {} requests at the storage host, \
         none with Authorization or Cookie, all with Range",
        auth_kind(front.registry.auth()),
        at_registry.iter().filter(|r| r.is_blob_get()).count(),
        at_storage.len()
    );
}

#[test]
fn redirected_blob_downloads_carry_the_range_but_no_credentials_or_cookies_htpasswd() {
    redirected_downloads(RegistryAuth::htpasswd(USER, PASSWORD));
}

#[test]
fn redirected_blob_downloads_carry_the_range_but_no_credentials_or_cookies_token() {
    redirected_downloads(RegistryAuth::token(USER, PASSWORD));
}

#[test]
fn a_token_service_on_another_host_gets_the_scope_request_but_never_the_credentials() {
    let front = Front::new(RegistryAuth::token(USER, PASSWORD));
    let realm = front.registry.token_realm().expect("a token realm");
    // The same token server, named by another host name.
    let elsewhere = realm.replace("127.0.0.1", "localhost");
    assert_ne!(realm, elsewhere);
    front.proxy.set_realm(Some(&elsewhere));
    let before = front.registry.token_requests().len();
    let out = run_ocifs([
        "ls",
        "--plain-http",
        "-u",
        USER,
        "-p",
        PASSWORD,
        &front.reference(),
    ]);
    out.code_is(4)
        .stderr_has("localhost")
        .stderr_has("OCIFS_TRUSTED_REALMS");
    let asked = &front.registry.token_requests()[before..];
    assert!(!asked.is_empty(), "the token service was not asked at all");
    for r in asked {
        assert!(!r.authorization, "credentials went to another host: {r:?}");
        assert!(
            r.path_and_query
                .contains("scope=repository%3Aprivate%3Apull"),
            "{r:?}"
        );
    }
    // Trusted by name, the same realm gets them.
    let mut command = ocifs();
    command
        .env("OCIFS_TRUSTED_REALMS", "auth.example.com, localhost")
        .args(["ls", "--plain-http", "-u", USER, "-p", PASSWORD])
        .arg(front.reference());
    run(command).success().stdout_has("small.txt");
    let after = front.registry.token_requests();
    assert!(
        after
            .last()
            .is_some_and(|r| r.authorization && r.status == 200),
        "{after:#?}"
    );
}

#[test]
fn a_token_realm_that_is_not_http_is_refused() {
    let front = Front::new(RegistryAuth::token(USER, PASSWORD));
    for realm in ["file:///etc/passwd", "ftp://127.0.0.1:21/token"] {
        front.proxy.set_realm(Some(realm));
        let before = front.registry.token_requests().len();
        let out = run_ocifs([
            "ls",
            "--plain-http",
            "-u",
            USER,
            "-p",
            PASSWORD,
            &front.reference(),
        ]);
        let scheme = realm.split(':').next().unwrap_or_default();
        out.code_is(4)
            .stderr_has(&format!("a {scheme}: URL"))
            .stderr_has("only http and https");
        assert_eq!(front.registry.token_requests().len(), before);
    }
}

/// What must never show: the password, `user:password` in base64 (an HTTP
/// Basic header or a docker config `auth`), and a token the token server
/// issued (JWTs start with the base64 of `{"typ":"JWT"`).
fn assert_no_secret(out: &Output) {
    let basic = STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (name, text) in [("stderr", &out.stderr[..]), ("stdout", &stdout[..])] {
        for secret in [PASSWORD, &basic[..], "eyJ0eXAiOiJKV1Qi", "cookie-s3cret"] {
            assert!(
                !text.contains(secret),
                "{secret:?} in the {name} of {}:\n{text}",
                out.command
            );
        }
    }
}

fn docker_config(dir: &Path, host: &str, password: &str, mode: u32) {
    let auth = STANDARD.encode(format!("{USER}:{password}"));
    let json = serde_json::json!({"auths": {host: {"auth": auth}}});
    let path = dir.join("config.json");
    std::fs::write(&path, json.to_string()).expect("config.json");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn no_secret_at_any_verbosity(auth: RegistryAuth) {
    let front = Front::new(auth);
    front.proxy.set_cookie(Some(COOKIE));
    let reference = front.reference();
    let mut runs = 0;
    for verbosity in ["-vvv", "-vv", "-v"] {
        // Flags, right and wrong.
        for (password, code) in [(PASSWORD, 0), ("wrong-password", 4)] {
            for command in [vec!["ls", "-l"], vec!["cat"]] {
                let mut args: Vec<&str> = command.clone();
                args.extend([verbosity, "--plain-http", "-u", USER, "-p", password]);
                args.push(&reference);
                if command[0] == "cat" {
                    args.push("small.txt");
                }
                let out = run_ocifs(&args);
                out.code_is(code);
                assert_no_secret(&out);
                runs += 1;
            }
        }
        // A docker config.
        let config = temp_dir();
        docker_config(config.path(), &front.proxy.host(), PASSWORD, 0o600);
        let mut command = ocifs();
        command.env("DOCKER_CONFIG", config.path()).args([
            "cat",
            verbosity,
            "--plain-http",
            &reference,
            "big.bin",
        ]);
        let out = run(command);
        out.success();
        assert!(out.stdout == front.files[1].content);
        assert_no_secret(&out);
        runs += 1;
    }
    // The secret did travel: the checks above looked at runs that used it.
    assert!(front.proxy.requests().iter().any(|r| r.authorization));
    eprintln!(
        "secrets ({}): {runs} runs at -v/-vv/-vvv, no password, basic credentials, token or cookie in their output",
        auth_kind(front.registry.auth())
    );
}

#[test]
fn credentials_never_show_in_output_at_any_verbosity_htpasswd() {
    no_secret_at_any_verbosity(RegistryAuth::htpasswd(USER, PASSWORD));
}

#[test]
fn credentials_never_show_in_output_at_any_verbosity_token() {
    no_secret_at_any_verbosity(RegistryAuth::token(USER, PASSWORD));
}

#[test]
fn a_docker_config_other_users_can_read_gets_a_warning() {
    let front = Front::new(RegistryAuth::htpasswd(USER, PASSWORD));
    let ls = |mode: u32| {
        let config = temp_dir();
        docker_config(config.path(), &front.proxy.host(), PASSWORD, mode);
        let mut command = ocifs();
        command.env("DOCKER_CONFIG", config.path()).args([
            "ls",
            "--plain-http",
            &front.reference(),
        ]);
        let out = run(command);
        out.success().stdout_has("small.txt");
        assert_no_secret(&out);
        (out, config)
    };
    for mode in [0o644, 0o604, 0o640] {
        let (out, config) = ls(mode);
        out.stderr_has("readable by other users")
            .stderr_has(&config.path().join("config.json").display().to_string())
            .stderr_has("chmod 600");
    }
    let (out, _config) = ls(0o600);
    assert!(!out.stderr.contains("readable by other users"), "{out}");
}

/// What every local user can read of a process: its arguments and (for the
/// same user or root) its environment.
fn process_text(pid: u32) -> String {
    let mut text = String::new();
    for file in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{file}")).expect("/proc");
        text.push_str(&String::from_utf8_lossy(&bytes).replace('\0', " "));
        text.push('\n');
    }
    text
}

#[test]
fn a_daemon_mount_keeps_the_password_out_of_its_command_line_and_environment() {
    let front = Front::new(RegistryAuth::htpasswd(USER, PASSWORD));
    let reference = front.reference();
    let basic = STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let inline = format!("--password={PASSWORD}");
    let glued = format!("-p{PASSWORD}");
    for spelling in [
        vec!["-p", PASSWORD],
        vec![inline.as_str()],
        vec![glued.as_str()],
    ] {
        let mut extra = vec!["--plain-http", "-u", USER];
        extra.extend(&spelling);
        let mounted = Mounted::new(&reference, &extra);
        // The password reached the daemon: it reads a private file.
        assert_eq!(
            std::fs::read(mounted.path("big.bin")).expect("read through the mount"),
            front.files[1].content,
            "{}",
            mounted.log()
        );
        let text = process_text(daemon_pid(mounted.dir()));
        assert!(text.contains(USER), "not the daemon's process: {text}");
        for secret in [PASSWORD, &basic[..]] {
            assert!(
                !text.contains(secret),
                "{spelling:?}: {secret:?} readable in /proc: {text}"
            );
        }
        mounted.unmount();
    }

    // --password-stdin reaches the daemon too.
    let tmp = temp_dir();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mut command = ocifs();
    command
        .args([
            "mount",
            "--daemon",
            "--plain-http",
            "-u",
            USER,
            "--password-stdin",
        ])
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .arg(&reference)
        .arg(&mnt);
    run_with_stdin(command, format!("{PASSWORD}\n").as_bytes()).success();
    let text = process_text(daemon_pid(&mnt));
    assert!(!text.contains(PASSWORD), "readable in /proc: {text}");
    assert_eq!(
        std::fs::read(mnt.join("small.txt")).expect("read"),
        front.files[0].content
    );
    run_ocifs(["umount".into(), mnt.display().to_string()]).success();
}

#[test]
fn a_reference_with_a_password_in_it_is_refused_without_echoing_it() {
    let front = Front::new(RegistryAuth::htpasswd(USER, PASSWORD));
    let reference = format!("{USER}:{PASSWORD}@{}", front.reference());
    for command in ["ls", "inspect"] {
        let out = run_ocifs([command, "--plain-http", &reference]);
        assert_ne!(out.code(), Some(0), "{out}");
        assert_no_secret(&out);
        out.stderr_has("password");
    }
    assert!(front.proxy.requests().is_empty());
}

#[test]
fn a_registry_error_body_is_shown_escaped_and_cut() {
    let front = Front::new(RegistryAuth::None);
    let hostile = format!(
        "denied\u{1b}]0;owned-title\u{7}\u{1b}[2J\r\nFAKE: all good{}",
        "x".repeat(5000)
    );
    front
        .proxy
        .set_hook(Some(Arc::new(HookFn(move |r: &RequestInfo| {
            if r.is_blob_get() {
                Disposition::Answer {
                    status: 400,
                    body: hostile.clone(),
                }
            } else {
                Disposition::Forward
            }
        }))));
    let out = run_ocifs(["cat", "--plain-http", &front.reference(), "small.txt"]);
    assert_ne!(out.code(), Some(0), "{out}");
    out.stderr_has("400")
        .stderr_has("denied\\u{1b}]0;owned-title");
    assert!(
        !out.stderr.contains('\u{1b}') && !out.stderr.contains('\u{7}'),
        "raw control characters on stderr: {:?}",
        out.stderr
    );
    assert!(!out.stderr.contains("\r\nFAKE"), "{:?}", out.stderr);
    assert!(
        out.stderr.len() < 2000,
        "{} bytes of stderr",
        out.stderr.len()
    );
}

#[test]
fn a_redirect_to_an_unsupported_scheme_fails_at_once_naming_it() {
    let front = Front::new(RegistryAuth::None);
    front
        .proxy
        .set_hook(Some(Arc::new(HookFn(move |r: &RequestInfo| {
            if r.is_blob_get() {
                Disposition::Redirect("ftp://127.0.0.1:21/blob".into())
            } else {
                Disposition::Forward
            }
        }))));
    for verify in ["strict", "lazy"] {
        let out = run_ocifs([
            "cat",
            "--plain-http",
            "--verify",
            verify,
            "--timeout",
            "60",
            &front.reference(),
            "small.txt",
        ]);
        out.code_is(7)
            .stderr_has("ftp: URL")
            .stderr_has("only http and https");
        assert!(!out.stderr.contains("timed out"), "{out}");
    }
    // Refused at once: one blob GET per run, never retried.
    let gets = front
        .proxy
        .requests()
        .iter()
        .filter(|r| r.is_blob_get())
        .count();
    assert_eq!(gets, 2, "{}", front.proxy.describe());
}

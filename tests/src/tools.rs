//! The programs tests run: oras-py (from the test virtualenv), skopeo, and
//! the `ocifs` binary under test.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;

/// How long one `ocifs` run may take before it is killed: tests must fail,
/// not hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The README's test command, named in every "missing tool" failure.
pub(crate) const TEST_COMMAND: &str = "scripts/test";

/// Proxy variables a test process must not inherit: every test server is on
/// loopback, and a proxy in the way would change what is counted.
const PROXY_VARS: [&str; 6] = [
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];

/// The workspace root: the parent of this crate's directory.
pub fn workspace_dir() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_dir().join(dir)
            }
        }
        _ => workspace_dir().join("target"),
    }
}

/// An empty directory for `$DOCKER_CONFIG` and `$XDG_RUNTIME_DIR`, so that
/// the credentials of whoever runs the tests never leak into them.
pub(crate) fn no_credentials_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = target_dir().join("ocifs-tests/no-credentials");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        dir
    })
    .clone()
}

/// Makes `command` hermetic: no proxies, no credentials from the caller's
/// docker or podman config.
pub(crate) fn hermetic(command: &mut Command) {
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    let empty = no_credentials_dir();
    command
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .env("DOCKER_CONFIG", &empty)
        .env("XDG_RUNTIME_DIR", &empty)
        // No user's config file; a test that wants one sets its own.
        .env("XDG_CONFIG_HOME", &empty)
        .env_remove("OCIFS_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE");
}

/// The oras-py virtualenv: `$OCIFS_TEST_VENV`, or `<workspace>/target/test-venv`.
/// The README's test command (`scripts/test`) creates it.
#[derive(Clone, Debug)]
pub struct PythonEnv {
    dir: PathBuf,
}

impl PythonEnv {
    /// The virtualenv, checked to have oras-py.
    ///
    /// # Panics
    ///
    /// If it is missing or has no `oras` module: tests fail rather than skip,
    /// with a message that says to run `scripts/test`.
    pub fn ensure() -> Self {
        static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let checked = CHECKED.get_or_init(|| {
            let dir = match std::env::var_os("OCIFS_TEST_VENV") {
                Some(d) if !d.is_empty() => PathBuf::from(d),
                _ => target_dir().join("test-venv"),
            };
            let python = dir.join("bin/python");
            let out = Command::new(&python)
                .args([
                    "-c",
                    "import oras.provider, oras.version; print(oras.version.__version__)",
                ])
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => Ok(dir),
                Ok(o) => Err(format!(
                    "{} cannot import oras: {}",
                    python.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Err(format!("cannot run {}: {e}", python.display())),
            }
        });
        match checked {
            Ok(dir) => Self { dir: dir.clone() },
            Err(e) => panic!(
                "ocifs-tests: the oras-py virtualenv is missing ({e}).\n\
                 Run the README's test command, `{TEST_COMMAND}`, which creates it \
                 (python3 -m venv target/test-venv && target/test-venv/bin/pip install oras==0.2.43), \
                 or point $OCIFS_TEST_VENV at one."
            ),
        }
    }

    /// The virtualenv's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its python interpreter.
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin/python")
    }
}

/// One file (or directory) for [`oras_push`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushFile {
    /// The file or directory to push; oras-py tars and gzips a directory.
    pub path: PathBuf,
    /// The layer's media type (oras-py's default otherwise:
    /// `application/vnd.oci.image.layer.v1.tar`, or `…tar+gzip` for a
    /// directory).
    pub media_type: Option<String>,
    /// The layer's title if not the file's name; may contain `/`.
    pub title: Option<String>,
    /// More layer annotations.
    pub annotations: BTreeMap<String, String>,
}

impl PushFile {
    /// `path`, with oras-py's defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            media_type: None,
            title: None,
            annotations: BTreeMap::new(),
        }
    }

    /// With the layer media type `media_type`.
    pub fn media_type(mut self, media_type: &str) -> Self {
        self.media_type = Some(media_type.to_owned());
        self
    }

    /// With the title `title` instead of the file's name.
    pub fn title(mut self, title: &str) -> Self {
        self.title = Some(title.to_owned());
        self
    }

    /// With one more layer annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }
}

impl From<&Path> for PushFile {
    fn from(path: &Path) -> Self {
        Self::new(path)
    }
}

impl From<PathBuf> for PushFile {
    fn from(path: PathBuf) -> Self {
        Self::new(path)
    }
}

/// Options of [`oras_push`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushOptions {
    /// User and password for the registry.
    pub credentials: Option<(String, String)>,
    /// Manifest annotations.
    pub manifest_annotations: BTreeMap<String, String>,
    /// The manifest config: a file and its media type (oras-py's empty
    /// `application/vnd.unknown.config.v1+json` config otherwise).
    pub config: Option<(PathBuf, String)>,
    /// Push directories exactly as oras-py does, without the oras CLI's
    /// unpack annotations the harness otherwise adds.
    pub no_unpack_annotation: bool,
    /// Push a referrer of this manifest (media type, digest, size): its
    /// `subject` (oras-py does not update a fallback tag).
    pub subject: Option<(String, String, u64)>,
}

impl PushOptions {
    /// Options with credentials `user`/`password`.
    pub fn with_credentials(user: &str, password: &str) -> Self {
        Self {
            credentials: Some((user.to_owned(), password.to_owned())),
            ..Self::default()
        }
    }
}

/// Pushes `files` to `registry_host` (`HOST:PORT`, plain HTTP) as
/// `repo_ref` (`repo:tag`) with oras-py, and returns the manifest digest the
/// registry reported.
///
/// # Panics
///
/// If the virtualenv is missing or the push fails (with oras-py's output).
pub fn oras_push(
    registry_host: &str,
    repo_ref: &str,
    files: &[PushFile],
    options: &PushOptions,
) -> String {
    let (venv, mut command) = oras_script("oras_push.py", registry_host, repo_ref);
    let scratch = crate::temp_dir();
    command.current_dir(scratch.path());
    if let Some((user, password)) = &options.credentials {
        command
            .arg("--username")
            .arg(user)
            .arg("--password")
            .arg(password);
    }
    for (k, v) in &options.manifest_annotations {
        command.arg("--manifest-annotation").arg(format!("{k}={v}"));
    }
    if let Some((path, media_type)) = &options.config {
        command
            .arg("--config")
            .arg(format!("{}:{media_type}", absolute(path).display()));
    }
    if options.no_unpack_annotation {
        command.arg("--no-unpack-annotation");
    }
    if let Some((media_type, digest, size)) = &options.subject {
        command
            .arg("--subject")
            .arg(format!("{media_type}@{digest}@{size}"));
    }
    // oras-py looks a layer's annotations up by the path it was given; a
    // title there overrides the file's name.
    let mut annotations = serde_json::Map::new();
    for file in files {
        let path = absolute(&file.path);
        let mut layer = file.annotations.clone();
        if let Some(title) = &file.title {
            layer.insert("org.opencontainers.image.title".to_owned(), title.clone());
        }
        if !layer.is_empty() {
            assert!(
                !path.is_dir(),
                "oras-py cannot annotate a directory's layer ({}): it looks annotations up by the temporary tar.gz",
                path.display()
            );
            annotations.insert(path.display().to_string(), json!(layer));
        }
        let arg = match &file.media_type {
            Some(mt) => format!("{}:{mt}", path.display()),
            None => path.display().to_string(),
        };
        command.arg(arg);
    }
    if !annotations.is_empty() {
        let annotation_file = scratch.path().join("annotations.json");
        std::fs::write(
            &annotation_file,
            serde_json::Value::Object(annotations).to_string(),
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", annotation_file.display()));
        command.arg("--annotation-file").arg(&annotation_file);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", venv.python().display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "oras push of {repo_ref} to {registry_host} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let digest = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "oras push printed no digest:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    digest.to_owned()
}

/// Pulls `repo_ref` (`repo:tag`) from `registry_host` (plain HTTP,
/// anonymous) with oras-py into `outdir`; returns the files it wrote.
///
/// # Panics
///
/// If the virtualenv is missing or the pull fails (with oras-py's output).
pub fn oras_pull(registry_host: &str, repo_ref: &str, outdir: &Path) -> Vec<PathBuf> {
    let (venv, mut command) = oras_script("oras_pull.py", registry_host, repo_ref);
    command.arg("--outdir").arg(outdir);
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", venv.python().display()));
    assert!(
        out.status.success(),
        "oras pull of {repo_ref} from {registry_host} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(PathBuf::from)
        .collect()
}

/// `tests/scripts/SCRIPT --target HOST/REPO_REF` under the virtualenv's
/// python, hermetic, with no stdin.
fn oras_script(script: &str, registry_host: &str, repo_ref: &str) -> (PythonEnv, Command) {
    let venv = PythonEnv::ensure();
    let mut command = Command::new(venv.python());
    hermetic(&mut command);
    command
        .arg(workspace_dir().join("tests/scripts").join(script))
        .arg("--target")
        .arg(format!("{registry_host}/{repo_ref}"))
        .stdin(Stdio::null());
    (venv, command)
}

/// `timeout SECS qemu-system-x86_64` booting `kernel` with `initrd` on a
/// serial console (TCG, 256 MiB, one CPU, no reboot: a kernel panic ends
/// it), to run with its output captured.
pub fn qemu_boot(kernel: &Path, initrd: &Path, timeout_secs: u32) -> Command {
    let mut qemu = Command::new("timeout");
    qemu.arg(timeout_secs.to_string())
        .args(["qemu-system-x86_64", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-nographic",
            "-append",
            // no_timer_check: under TCG on a busy host the guest's check of
            // its IO-APIC timer can time out and panic the kernel before
            // /init runs (seen in CI); the check tests the emulator, not
            // what the mount served.
            "console=ttyS0 panic=-1 quiet no_timer_check",
            "-no-reboot",
            "-m",
            "256",
            "-smp",
            "1",
        ]);
    qemu
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Runs `skopeo --insecure-policy copy EXTRA… SRC DST`, e.g.
/// `skopeo_copy("oci:DIR:tag", "docker://HOST/repo:tag", &["--all", "--dest-tls-verify=false"])`.
/// Credentials go in `extra_args` (`--dest-creds user:pass`).
///
/// # Panics
///
/// If skopeo fails (with its output).
pub fn skopeo_copy(src: &str, dst: &str, extra_args: &[&str]) {
    let mut command = Command::new("skopeo");
    hermetic(&mut command);
    // No policy.json is needed for test content; skopeo's temp files go
    // where the system puts them.
    command
        .args(["--insecure-policy", "copy"])
        .args(extra_args)
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null());
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running skopeo: {e}"));
    assert!(
        out.status.success(),
        "skopeo copy {extra_args:?} {src} {dst} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `ocifs` binary under test: `$OCIFS_BIN`, or `<target>/debug/ocifs`
/// (the README's test command builds it first).
///
/// # Panics
///
/// If the binary does not exist.
pub fn ocifs_bin() -> PathBuf {
    let bin = match std::env::var_os("OCIFS_BIN") {
        Some(b) if !b.is_empty() => PathBuf::from(b),
        _ => target_dir().join("debug/ocifs"),
    };
    assert!(
        bin.is_file(),
        "ocifs-tests: the ocifs binary is missing at {}; build it with `cargo build -p ocifs` \
         (the README's test command, `{TEST_COMMAND}`, does), or set $OCIFS_BIN",
        bin.display()
    );
    bin
}

/// A command for the `ocifs` binary, hermetic: no proxies, an empty
/// `$DOCKER_CONFIG` and `$XDG_RUNTIME_DIR` (set `DOCKER_CONFIG` again to give
/// it credentials), no colours on stderr.
///
/// [`run`] and [`run_with_stdin`] also give it a fresh, empty cache
/// (`$OCIFS_CACHE`) for that one run, unless the command sets `OCIFS_CACHE`
/// itself: a test that wants a warm cache shares a directory between runs
/// on purpose; no test sees another's cache by accident.
pub fn ocifs() -> Command {
    let mut command = Command::new(ocifs_bin());
    hermetic(&mut command);
    command.env_remove("OCIFS_LOG").env("NO_COLOR", "1");
    command
}

/// What a finished `ocifs` run left behind.
#[derive(Clone, Debug)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// The exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr, lossily decoded.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Output {
    /// The exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout, lossily decoded.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stdout parsed as JSON.
    ///
    /// # Panics
    ///
    /// If stdout is not JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }

    /// Asserts exit code 0 and returns `self`.
    ///
    /// # Panics
    ///
    /// If the run failed, with its stdout and stderr.
    #[track_caller]
    pub fn success(&self) -> &Self {
        self.code_is(0)
    }

    /// Asserts exit code `code` and returns `self`.
    ///
    /// # Panics
    ///
    /// If the exit code differs, with the run's stdout and stderr.
    #[track_caller]
    pub fn code_is(&self, code: i32) -> &Self {
        assert_eq!(self.code(), Some(code), "unexpected exit status:\n{self}");
        self
    }

    /// Asserts that stderr contains `needle` and returns `self`.
    ///
    /// # Panics
    ///
    /// If it does not, with the run's stdout and stderr.
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{self}"
        );
        self
    }

    /// Asserts that stdout contains `needle` and returns `self`.
    ///
    /// # Panics
    ///
    /// If it does not, with the run's stdout and stderr.
    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout_str().contains(needle),
            "stdout lacks {needle:?}:\n{self}"
        );
        self
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 4000;
        let stdout = self.stdout_str();
        let clip = |s: &str| -> String {
            if s.len() <= MAX {
                s.to_owned()
            } else {
                let mut end = MAX;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}… ({} bytes in all)", &s[..end], s.len())
            }
        };
        write!(
            f,
            "$ {}\nexit: {} after {:.1}s\n--- stdout\n{}\n--- stderr\n{}\n---",
            self.command,
            self.status,
            self.elapsed.as_secs_f64(),
            clip(&stdout),
            clip(&self.stderr)
        )
    }
}

/// Runs `ocifs ARGS…` (see [`ocifs`]) with no stdin and a fresh cache.
///
/// # Panics
///
/// If the binary is missing or the run exceeds two minutes.
pub fn run_ocifs<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = ocifs();
    command.args(args);
    run(command)
}

/// Runs `command` with no stdin and collects its output; a fresh
/// `$OCIFS_CACHE` unless the command sets one.
///
/// # Panics
///
/// If it cannot start or exceeds two minutes (it is killed).
pub fn run(command: Command) -> Output {
    run_inner(command, None)
}

/// Runs `command` with `stdin` as its standard input and collects its
/// output; a fresh `$OCIFS_CACHE` unless the command sets one.
///
/// # Panics
///
/// If it cannot start or exceeds two minutes (it is killed).
pub fn run_with_stdin(command: Command, stdin: &[u8]) -> Output {
    run_inner(command, Some(stdin))
}

fn describe(command: &Command) -> String {
    let mut s = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

fn run_inner(mut command: Command, stdin: Option<&[u8]>) -> Output {
    let text = describe(&command);
    // Removed once the run is over.
    let cache = if command.get_envs().any(|(k, _)| k == "OCIFS_CACHE") {
        None
    } else {
        let dir = tempfile::Builder::new()
            .prefix("ocifs-test-cache-")
            .tempdir()
            .expect("creating a temp dir for the cache");
        command.env("OCIFS_CACHE", dir.path());
        Some(dir)
    };
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {text}: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits without reading is its own business.
        let _ = pipe.write_all(input);
    }
    let status = wait_bounded(&mut child, RUN_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "{text} ran for over {}s and was killed",
            RUN_TIMEOUT.as_secs()
        )
    });
    let elapsed = start.elapsed();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    drop(cache);
    Output {
        command: text,
        status,
        stdout,
        stderr,
        elapsed,
    }
}

fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child` at most `limit`; kills it and returns `None` after that.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

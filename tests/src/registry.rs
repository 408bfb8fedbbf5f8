//! A real CNCF distribution registry on a free loopback port.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::token::{ISSUER, SERVICE, TokenRequest, TokenServer};
use crate::util::{free_port, tail};

/// The registry binary: Debian's `docker-registry` package (distribution 2.8).
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long a registry may take to answer `GET /v2/` after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How a [`Registry`] authenticates its clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryAuth {
    /// Anonymous pull and push.
    None,
    /// HTTP Basic against an htpasswd file (bcrypt) with one user.
    Htpasswd {
        /// The user name.
        user: String,
        /// The user's password.
        password: String,
    },
    /// Bearer tokens from a token server the harness runs, which takes HTTP
    /// Basic credentials of one user.
    Token {
        /// The user name.
        user: String,
        /// The user's password.
        password: String,
    },
}

impl RegistryAuth {
    /// [`RegistryAuth::Htpasswd`] for `user`/`password`.
    pub fn htpasswd(user: &str, password: &str) -> Self {
        Self::Htpasswd {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    /// [`RegistryAuth::Token`] for `user`/`password`.
    pub fn token(user: &str, password: &str) -> Self {
        Self::Token {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    /// The user and password, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match self {
            Self::None => None,
            Self::Htpasswd { user, password } | Self::Token { user, password } => {
                Some((user, password))
            }
        }
    }
}

/// A running `docker-registry` with its own storage in a temp dir. Dropping
/// it kills the process and removes the storage.
///
/// If the test process dies without dropping it, a watchdog (`sh` reading a
/// pipe from this process) kills the registry when the pipe closes, so no
/// registry outlives its test binary.
#[derive(Debug)]
pub struct Registry {
    port: u16,
    auth: RegistryAuth,
    child: Child,
    watchdog: Child,
    // Held only so that the watchdog's stdin stays open until Drop.
    _watchdog_stdin: Option<ChildStdin>,
    token: Option<TokenServer>,
    dir: TempDir,
}

enum StartError {
    PortInUse,
    Failed(String),
}

impl Registry {
    /// Starts a registry with `auth` and waits until it answers `GET /v2/`.
    ///
    /// # Panics
    ///
    /// If the registry does not come up within 20 seconds (with the tail of
    /// its log), or its configuration cannot be written.
    pub fn start(auth: RegistryAuth) -> Self {
        match Self::try_start(auth, "") {
            Ok(r) => r,
            Err(e) => panic!("ocifs-tests: cannot start the registry: {e}"),
        }
    }

    /// A pull-through cache of the registry at `remote` (a URL such as
    /// `http://127.0.0.1:PORT`): distribution in proxy mode
    /// (`proxy.remoteurl`), which fetches what it has not got from there
    /// and keeps it. It answers a `Range` request for a blob it has not
    /// cached with `200` and the whole blob.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn pull_through(remote: &str) -> Self {
        let config = format!("proxy:\n  remoteurl: {}\n", yaml_str(Path::new(remote)));
        match Self::try_start(RegistryAuth::None, &config) {
            Ok(r) => r,
            Err(e) => panic!("ocifs-tests: cannot start the pull-through registry: {e}"),
        }
    }

    fn try_start(auth: RegistryAuth, extra_config: &str) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("ocifs-registry-")
            .tempdir()
            .map_err(|e| format!("creating a temp dir: {e}"))?;
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage)
            .map_err(|e| format!("creating {}: {e}", storage.display()))?;
        let token = match &auth {
            RegistryAuth::Token { user, password } => {
                Some(TokenServer::start(dir.path(), user, password)?)
            }
            _ => None,
        };
        let auth_config = match &auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd { user, password } => {
                let path = dir.path().join("htpasswd");
                write_htpasswd(&path, user, password)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: ocifs-test-realm\n    path: {}\n",
                    yaml_str(&path)
                )
            }
            RegistryAuth::Token { .. } => {
                let token = token.as_ref().ok_or("token server missing")?;
                format!(
                    "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    yaml_str(Path::new(&token.realm())),
                    yaml_str(token.cert_pem())
                )
            }
        };
        let auth_config = format!("{auth_config}{extra_config}");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match start_process(dir.path(), &storage, port, &auth_config) {
                Ok((child, watchdog, watchdog_stdin)) => {
                    return Ok(Self {
                        port,
                        auth,
                        child,
                        watchdog,
                        _watchdog_stdin: watchdog_stdin,
                        token,
                        dir,
                    });
                }
                Err(StartError::PortInUse) => last = format!("port {port} was taken"),
                Err(StartError::Failed(e)) => return Err(e),
            }
        }
        Err(format!("no free port after 5 tries: {last}"))
    }

    /// `127.0.0.1:PORT`, for references: `format!("{}/repo:tag", registry.host())`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port the registry listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How clients authenticate.
    pub fn auth(&self) -> &RegistryAuth {
        &self.auth
    }

    /// The user and password, if the registry wants any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.credentials()
    }

    /// The root of the registry's filesystem storage; blobs are under
    /// `docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry stores the bytes of `digest` (`sha256:<hex>`):
    /// overwrite it to tamper with a blob or manifest.
    ///
    /// # Panics
    ///
    /// If `digest` is not a sha256 digest.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64)
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest:?}"));
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log (JSON lines) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// The realm URL of the token server (`None` unless
    /// [`RegistryAuth::Token`]).
    pub fn token_realm(&self) -> Option<String> {
        self.token.as_ref().map(TokenServer::realm)
    }

    /// The requests the token server answered (empty unless
    /// [`RegistryAuth::Token`]).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token
            .as_ref()
            .map(TokenServer::requests)
            .unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // The watchdog first: once the registry is reaped its pid could be
        // reused, and the watchdog must never kill a stranger.
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A YAML string: JSON's double-quoted strings are valid YAML.
fn yaml_str(path: &Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}

fn write_htpasswd(path: &Path, user: &str, password: &str) -> Result<(), String> {
    // distribution accepts only bcrypt entries.
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running htpasswd (apache2-utils): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "htpasswd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::write(path, &out.stdout).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn start_process(
    dir: &Path,
    storage: &Path,
    port: u16,
    auth_config: &str,
) -> Result<(Child, Child, Option<ChildStdin>), StartError> {
    let config = dir.join("config.yml");
    let log_path = dir.join("registry.log");
    let text = format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: json\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: ocifs-test-secret-{port}\n\
         {auth_config}",
        storage = yaml_str(storage),
    );
    std::fs::write(&config, text)
        .map_err(|e| StartError::Failed(format!("writing {}: {e}", config.display())))?;
    let log = File::create(&log_path)
        .map_err(|e| StartError::Failed(format!("creating the log: {e}")))?;
    let log2 = log
        .try_clone()
        .map_err(|e| StartError::Failed(format!("cloning the log handle: {e}")))?;
    let mut child = Command::new(REGISTRY_BIN)
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| {
            StartError::Failed(format!(
                "running {REGISTRY_BIN} (Debian package docker-registry): {e}"
            ))
        })?;
    let (mut watchdog, watchdog_stdin) =
        match crate::util::watchdog(child.id(), "ocifs-registry-watchdog") {
            Ok(w) => w,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartError::Failed(format!("starting the watchdog: {e}")));
            }
        };
    let stop = |child: &mut Child, watchdog: &mut Child| {
        let _ = watchdog.kill();
        let _ = watchdog.wait();
        let _ = child.kill();
        let _ = child.wait();
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            stop(&mut child, &mut watchdog);
            if log.contains("address already in use") {
                return Err(StartError::PortInUse);
            }
            return Err(StartError::Failed(format!(
                "{REGISTRY_BIN} exited ({status}); log tail:\n{}",
                tail(&log, 20)
            )));
        }
        if probe(port) {
            return Ok((child, watchdog, watchdog_stdin));
        }
        if Instant::now() > deadline {
            stop(&mut child, &mut watchdog);
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(StartError::Failed(format!(
                "{REGISTRY_BIN} did not answer GET /v2/ on port {port} within {}s; log tail:\n{}",
                READY_TIMEOUT.as_secs(),
                tail(&log, 20)
            )));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether a distribution registry answers `GET /v2/` on `port` (200, or
/// 401 when it wants credentials).
fn probe(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    let status_ok = response.starts_with("http/1.1 200") || response.starts_with("http/1.1 401");
    // Someone else's server on a recycled port does not count.
    status_ok && response.contains("docker-distribution-api-version: registry/2.0")
}

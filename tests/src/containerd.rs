//! A private containerd, for stargz-snapshotter's `ctr-remote`: Debian's
//! `containerd` on a socket in a temp dir, with its own root and state,
//! killed on drop (and by a watchdog if the test process dies first).
//! [`Containerd::start_with_stargz`] also runs stargz-snapshotter's
//! snapshotter daemon (the benchmark's peer, `containerd-stargz-grpc`, which
//! `scripts/test` builds into `target/fixtures`) as its proxy plugin
//! `stargz`, under the same guard.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A running containerd of the test's own.
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    watchdog: Child,
    _watchdog_stdin: Option<ChildStdin>,
    socket: PathBuf,
    stargz: Option<Stargz>,
    dir: TempDir,
}

/// The stargz snapshotter daemon serving a [`Containerd`].
#[derive(Debug)]
struct Stargz {
    child: Child,
    watchdog: Child,
    _watchdog_stdin: Option<ChildStdin>,
}

/// The name under which containerd knows the stargz snapshotter.
pub const STARGZ_SNAPSHOTTER: &str = "stargz";

/// `target/fixtures/containerd-stargz-grpc`, the stargz snapshotter daemon
/// (benches/peers/stargz-grpc) that `scripts/test` builds.
///
/// # Panics
///
/// If it is missing.
pub fn stargz_grpc_bin() -> PathBuf {
    let bin = crate::rootfs::fixtures_dir().join("containerd-stargz-grpc");
    assert!(
        bin.is_file(),
        "{} is missing: scripts/test builds it from benches/peers/stargz-grpc \
         (Debian's golang-go and golang-github-containerd-stargz-snapshotter-dev)",
        bin.display()
    );
    bin
}

impl Containerd {
    /// Starts one and waits for its socket to answer.
    ///
    /// # Panics
    ///
    /// If containerd (Debian's `containerd`, which scripts/test installs)
    /// is missing or does not come up within 30 s.
    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// Starts one with the stargz snapshotter daemon as its snapshotter
    /// [`STARGZ_SNAPSHOTTER`] (a proxy plugin on a socket of its own, its
    /// root in this containerd's temp dir); the daemon is stopped on drop,
    /// and killed by a watchdog if the test process dies first.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start), and if the daemon is missing (see
    /// [`stargz_grpc_bin`]) or its socket does not appear within 30 s.
    pub fn start_with_stargz() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(with_stargz: bool) -> Self {
        let dir = crate::temp_dir();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        let toml_path = |p: &Path| serde_json::Value::String(p.display().to_string()).to_string();
        let mut toml = format!(
            "version = 2\nroot = {}\nstate = {}\n[grpc]\n  address = {}\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable = true\n",
            toml_path(&dir.path().join("root")),
            toml_path(&dir.path().join("state")),
            toml_path(&socket),
        );
        let stargz = with_stargz.then(|| {
            let sock = dir.path().join("stargz.sock");
            toml.push_str(&format!(
                "[proxy_plugins.{STARGZ_SNAPSHOTTER}]\n  type = \"snapshot\"\n  address = {}\n",
                toml_path(&sock)
            ));
            Stargz::start(dir.path(), &sock)
        });
        std::fs::write(&config, toml).expect("writing containerd's config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("running containerd (Debian package containerd): {e}"));
        let (watchdog, stdin) = crate::util::watchdog(child.id(), "ocifs-containerd-watchdog")
            .expect("starting the watchdog");
        let me = Containerd {
            child,
            watchdog,
            _watchdog_stdin: stdin,
            socket,
            stargz,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("ctr-remote")
                .arg("--address")
                .arg(&me.socket)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return me;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer on {} within 30 s:\n{}",
                me.socket.display(),
                std::fs::read_to_string(me.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The socket containerd serves its API on (for `ctr --address`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The stargz daemon's log (empty without one).
    pub fn stargz_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stargz.log")).unwrap_or_default()
    }

    /// Runs `ctr-remote ARGS` against this containerd.
    ///
    /// # Panics
    ///
    /// If it fails (stargz-snapshotter's `ctr-remote` is Debian's
    /// `stargz-snapshotter`, which scripts/test installs).
    pub fn ctr_remote(&self, args: &[&str]) -> String {
        let out = Command::new("ctr-remote")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("running ctr-remote (Debian package stargz-snapshotter): {e}")
            });
        assert!(
            out.status.success(),
            "ctr-remote {args:?} failed ({}):\n{}{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            if self.stargz.is_some() {
                format!("\nthe stargz snapshotter's log:\n{}", self.stargz_log())
            } else {
                String::new()
            }
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Converts the image `source` (plain HTTP) to eStargz with
    /// `ctr-remote image optimize --oci --no-optimize` and pushes it as
    /// `target` (plain HTTP).
    pub fn to_estargz(&self, source: &str, target: &str) {
        self.ctr_remote(&["image", "pull", "--plain-http", source]);
        self.ctr_remote(&[
            "image",
            "optimize",
            "--oci",
            "--no-optimize",
            source,
            target,
        ]);
        self.ctr_remote(&["image", "push", "--plain-http", target]);
    }
}

impl Stargz {
    /// Starts the daemon with its root at `dir/stargz` on `socket`, logging
    /// to `dir/stargz.log`, and waits for the socket.
    fn start(dir: &Path, socket: &Path) -> Self {
        let bin = stargz_grpc_bin();
        let log_path = dir.join("stargz.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new(&bin)
            .arg("--address")
            .arg(socket)
            .arg("--root")
            .arg(dir.join("stargz"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
        let (watchdog, stdin) = crate::util::watchdog(child.id(), "ocifs-stargz-watchdog")
            .expect("starting the watchdog");
        let mut me = Stargz {
            child,
            watchdog,
            _watchdog_stdin: stdin,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            let exited = me.child.try_wait().expect("wait").is_some();
            assert!(
                !exited && Instant::now() < deadline,
                "the stargz snapshotter daemon {} did not come up on {}:\n{}",
                if exited { "exited and" } else { "" },
                socket.display(),
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    /// SIGTERM (it then unmounts its layers), at most 10 s, then SIGKILL.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lazily unmounts every mount under `dir`, deepest first (what the
/// snapshotter left: its FUSE layers, an overlay).
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&p)
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(stargz) = &mut self.stargz {
            stargz.stop();
            unmount_under(self.dir.path());
        }
    }
}

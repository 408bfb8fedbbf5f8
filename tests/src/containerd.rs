//! A private containerd, for stargz-snapshotter's `ctr-remote`: Debian's
//! `containerd` on a socket in a temp dir, with its own root and state,
//! killed on drop (and by a watchdog if the test process dies first).

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
    dir: TempDir,
}

impl Containerd {
    /// Starts one and waits for its socket to answer.
    ///
    /// # Panics
    ///
    /// If containerd (Debian's `containerd`, which scripts/test installs)
    /// is missing or does not come up within 30 s.
    pub fn start() -> Self {
        let dir = crate::temp_dir();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        let toml_path = |p: &Path| serde_json::Value::String(p.display().to_string()).to_string();
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {}\nstate = {}\n[grpc]\n  address = {}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable = true\n",
                toml_path(&dir.path().join("root")),
                toml_path(&dir.path().join("state")),
                toml_path(&socket),
            ),
        )
        .expect("writing containerd's config");
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
            "ctr-remote {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
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

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A range-caching mirror: Debian's nginx, with the slice cache
//! configuration ocifs ships (`contrib/nginx/registry-slice-cache.conf`),
//! in front of a registry. It counts nothing itself: put a
//! [`CountingProxy`](crate::CountingProxy) on either side of it.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A running nginx slice cache.
#[derive(Debug)]
pub struct SliceCache {
    port: u16,
    child: Child,
    watchdog: Child,
    _watchdog_stdin: Option<ChildStdin>,
    dir: TempDir,
}

/// The shipped configuration.
pub fn slice_cache_config() -> PathBuf {
    crate::workspace_dir().join("contrib/nginx/registry-slice-cache.conf")
}

impl SliceCache {
    /// nginx caching the blobs of the registry at `upstream` (`host:port`,
    /// plain HTTP) in 1 MiB slices, listening on a free loopback port.
    ///
    /// It runs as one process (`master_process off`), so that killing it
    /// leaves no worker behind; the cache and its lock work the same.
    ///
    /// # Panics
    ///
    /// If nginx (Debian's `nginx`, which scripts/test installs) is missing
    /// or does not answer within 20 s.
    pub fn start(upstream: &str) -> Self {
        let dir = crate::temp_dir();
        for sub in ["cache", "t"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        let port = crate::util::free_port();
        let shipped = std::fs::read_to_string(slice_cache_config())
            .expect("reading the shipped nginx config");
        let site = shipped
            .replace(
                "@@CACHE_DIR@@",
                &dir.path().join("cache").display().to_string(),
            )
            .replace("@@MAX_SIZE@@", "4g")
            .replace("@@UPSTREAM@@", upstream)
            .replace("@@LISTEN@@", &format!("127.0.0.1:{port}"));
        assert!(
            !site
                .lines()
                .any(|l| !l.starts_with('#') && l.contains("@@")),
            "a placeholder of the shipped config is not set:\n{site}"
        );
        let site_path = dir.path().join("site.conf");
        std::fs::write(&site_path, site).expect("writing the site config");
        let d = dir.path().display();
        let main = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/t/body;\n  \
             proxy_temp_path {d}/t/proxy;\n  fastcgi_temp_path {d}/t/fcgi;\n  uwsgi_temp_path {d}/t/uwsgi;\n  \
             scgi_temp_path {d}/t/scgi;\n  include {};\n}}\n",
            site_path.display()
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, main).expect("writing nginx.conf");
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("running nginx (Debian package nginx): {e}"));
        let (watchdog, stdin) = crate::util::watchdog(child.id(), "ocifs-nginx-watchdog")
            .expect("starting the watchdog");
        let mut me = SliceCache {
            port,
            child,
            watchdog,
            _watchdog_stdin: stdin,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", me.log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 20 s:\n{}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The nginx process (one: `master_process off`), for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// nginx's error log and stderr.
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "{}{}",
            read("stderr.log"),
            crate::util::tail(&read("error.log"), 40)
        )
    }
}

impl Drop for SliceCache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

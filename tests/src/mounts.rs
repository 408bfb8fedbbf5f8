//! A live `ocifs mount --daemon` for tests and benchmarks.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::tools::{Output, run_ocifs};

/// A live `ocifs mount --daemon` with its own mount point, log file and
/// (unless given one) cache; unmounted (lazily, so it never blocks) on drop.
#[derive(Debug)]
pub struct Mounted {
    dir: PathBuf,
    log: PathBuf,
    _tmp: TempDir,
}

impl Mounted {
    /// Mounts `reference` with `extra` options (`--cache-dir` among them,
    /// or the mount gets a cache of its own that lives as long as it).
    ///
    /// # Panics
    ///
    /// If the mount fails or is not in the mount table afterwards.
    pub fn new(reference: &str, extra: &[&str]) -> Self {
        match Self::try_new(reference, extra) {
            Ok(m) => m,
            Err(out) => panic!("ocifs mount failed:\n{out}"),
        }
    }

    /// As [`new`](Self::new), but a failed mount is the run's output.
    ///
    /// # Panics
    ///
    /// If the mount succeeded yet is not in the mount table.
    pub fn try_new(reference: &str, extra: &[&str]) -> Result<Self, Output> {
        let tmp = crate::temp_dir();
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).expect("mount point");
        let log = tmp.path().join("mount.log");
        let mut args: Vec<String> = vec![
            "mount".into(),
            "--daemon".into(),
            "-v".into(),
            "--log-file".into(),
            log.display().to_string(),
        ];
        if !extra.contains(&"--cache-dir") {
            args.push("--cache-dir".into());
            args.push(tmp.path().join("cache").display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(reference.to_owned());
        args.push(dir.display().to_string());
        let out = run_ocifs(args);
        if out.code() != Some(0) {
            return Err(out);
        }
        assert!(
            is_mounted(&dir),
            "{} is not in the mount table",
            dir.display()
        );
        Ok(Mounted {
            dir,
            log,
            _tmp: tmp,
        })
    }

    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `name` under the mount point.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The mount process's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts now (`ocifs umount`), failing loudly if that fails.
    ///
    /// # Panics
    ///
    /// If `ocifs umount` fails.
    pub fn unmount(self) {
        run_ocifs(["umount".into(), self.dir.display().to_string()]).success();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = run_ocifs([
                "umount".into(),
                "--lazy".into(),
                self.dir.display().to_string(),
            ]);
        }
    }
}

/// Whether an ocifs FUSE mount is at `dir`.
pub fn is_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let dir = dir.display().to_string();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir.as_str()) && l.contains("fuse.ocifs"))
}

/// The options of the ocifs mount at `dir` (`ro,nosuid,nodev,…`), from
/// the mount table.
pub fn mount_options(dir: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let dir = dir.display().to_string();
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(1) == Some(&dir.as_str()) && l.contains("fuse.ocifs"))
            .then(|| f.get(3).map(|s| (*s).to_owned()))
            .flatten()
    })
}

/// The pid of the `ocifs mount` daemon serving `dir` (its command line
/// names the mount point, which is unique to the test).
///
/// # Panics
///
/// If there is none.
pub fn daemon_pid(dir: &Path) -> u32 {
    let dir = dir.display().to_string();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&&b"mount"[..]) && args.contains(&dir.as_bytes()) {
            return pid;
        }
    }
    panic!("no ocifs daemon serves {dir}");
}

/// The peak resident memory of process `pid` (`VmHWM`), in MiB.
///
/// # Panics
///
/// If `/proc/PID/status` cannot be read or has no `VmHWM`.
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

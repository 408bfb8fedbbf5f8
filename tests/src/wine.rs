//! The Windows build of ocifs, run under Wine (Debian's `wine64`).
//!
//! One Wine prefix serves every test of a run: `wineboot` takes seconds, so
//! the prefix is made once, under `<target>/ocifs-tests/wine-prefix`, and
//! kept for the next run while Wine and the harness's additions to it are
//! the same (a marker file records both). A lock file makes two test
//! processes that start at once make it once. Many `ocifs.exe` may run in
//! it at the same time: one `wineserver` serves them all, as Windows'
//! kernel would.
//!
//! Wine 8.0 lacks `bcryptprimitives.dll`, which every Rust program built by
//! Rust 1.78 or later needs to start; the prefix gets a stand-in built from
//! `tests/wine/bcryptprimitives.c` by MinGW (see that file). `ocifs.exe`
//! runs unchanged.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::tools::{TEST_COMMAND, hermetic, no_credentials_dir, target_dir, workspace_dir};

/// Debian's Wine loader for 64-bit programs (`wine64` has no `/usr/bin` link).
const WINE64: &str = "/usr/lib/wine/wine64";

/// Debian's wineserver for it.
const WINESERVER: &str = "/usr/lib/wine/wineserver64";

/// The MinGW compiler that builds the Windows target (and the stand-in DLL).
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// The Windows build of ocifs: `$OCIFS_WINDOWS_EXE`, or
/// `<target>/x86_64-pc-windows-gnu/debug/ocifs.exe` (the README's test
/// command builds it before the tests).
///
/// # Panics
///
/// If it does not exist.
pub fn ocifs_exe() -> PathBuf {
    let exe = match std::env::var_os("OCIFS_WINDOWS_EXE") {
        Some(e) if !e.is_empty() => PathBuf::from(e),
        _ => target_dir().join("x86_64-pc-windows-gnu/debug/ocifs.exe"),
    };
    assert!(
        exe.is_file(),
        "ocifs-tests: the Windows build of ocifs is missing at {}; build it with \
         `cargo build --target x86_64-pc-windows-gnu -p ocifs` (the README's test command, \
         `{TEST_COMMAND}`, does), or set $OCIFS_WINDOWS_EXE",
        exe.display()
    );
    exe
}

/// `path` as the Windows program sees it: Wine maps `Z:\` to `/`.
///
/// # Panics
///
/// If `path` is relative or not UTF-8.
pub fn windows_path(path: &Path) -> String {
    let path = path
        .to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()));
    assert!(path.starts_with('/'), "{path} is not absolute");
    format!("Z:{}", path.replace('/', "\\"))
}

/// The shared Wine prefix, ready to run `ocifs.exe`.
#[derive(Debug)]
pub struct Wine {
    prefix: PathBuf,
    exe: PathBuf,
}

impl Wine {
    /// The prefix, made (once a run, or kept from an earlier run) if needed.
    ///
    /// # Panics
    ///
    /// If Wine, MinGW or the Windows build is missing (naming
    /// `scripts/test`, which installs and builds them), or the prefix cannot
    /// be made.
    pub fn ensure() -> &'static Wine {
        static WINE: OnceLock<Wine> = OnceLock::new();
        WINE.get_or_init(|| {
            let exe = ocifs_exe();
            for tool in [WINE64, WINESERVER] {
                assert!(
                    Path::new(tool).is_file(),
                    "ocifs-tests: {tool} is missing: install Debian's wine64 \
                     (the README's test command, `{TEST_COMMAND}`, does)"
                );
            }
            let prefix = target_dir().join("ocifs-tests/wine-prefix");
            make_prefix(&prefix);
            // One wineserver for the whole run, kept up between the tests'
            // processes: left to itself it exits 3 s after its last client,
            // and an ocifs.exe started just then could fail to start at all
            // (exit 1, nothing on stderr, seen once in CI).
            // (It daemonizes: no pipes to wait on. Exit 2 is "one is
            // running already", an earlier run's, itself persistent.)
            let mut server = Command::new(WINESERVER);
            wine_env(&mut server, &prefix);
            let status = server
                .arg("--persistent=120")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("ocifs-tests: starting {WINESERVER}: {e}"));
            assert!(
                matches!(status.code(), Some(0 | 2)),
                "ocifs-tests: {WINESERVER} --persistent failed ({status})"
            );
            Wine { prefix, exe }
        })
    }

    /// The prefix directory (`WINEPREFIX`).
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// `%ProgramData%` of the prefix, as a Linux path: `drive_c/ProgramData`.
    pub fn program_data(&self) -> PathBuf {
        self.prefix.join("drive_c/ProgramData")
    }

    /// `%LOCALAPPDATA%` of the prefix's user, as a Linux path:
    /// `drive_c/users/<user>/AppData/Local`.
    ///
    /// # Panics
    ///
    /// If the prefix has no such directory, or more than one.
    pub fn local_app_data(&self) -> PathBuf {
        let users = self.prefix.join("drive_c/users");
        let found: Vec<PathBuf> = std::fs::read_dir(&users)
            .unwrap_or_else(|e| panic!("listing {}: {e}", users.display()))
            .flatten()
            .filter(|e| e.file_name() != "Public")
            .map(|e| e.path().join("AppData/Local"))
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one user's AppData/Local in {}: {found:?}",
            users.display()
        );
        found.into_iter().next().unwrap_or_default()
    }

    /// The Windows build under test.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// A command for `ocifs.exe` under Wine, hermetic like
    /// [`crate::ocifs`]: no proxies, no credentials, no colours, and no
    /// `OCIFS_CACHE` unless the caller sets one (so [`crate::run`] gives it
    /// none either: set `OCIFS_CACHE` to a [`windows_path`], or leave it
    /// unset for the Windows default place).
    pub fn ocifs(&self) -> Command {
        let mut command = self.wine();
        command.arg(&self.exe);
        hermetic(&mut command);
        command
            .env("DOCKER_CONFIG", windows_path(&no_credentials_dir()))
            .env_remove("OCIFS_LOG")
            .env_remove("OCIFS_CACHE")
            .env("NO_COLOR", "1");
        command
    }

    /// Runs the `ocifs.exe` command `make` builds (see [`Wine::ocifs`]) and
    /// collects its output, as [`crate::run`] does. ocifs always says on
    /// stderr why it fails; an exit 1 with not a byte on either stream,
    /// within a second, is Wine failing to start the process at all (seen
    /// twice in CI on a loaded machine, never reproduced alone), and the
    /// command runs once more, saying so on the test's stderr.
    pub fn run(&self, make: impl Fn() -> Command) -> crate::Output {
        let out = crate::run(make());
        let silent = out.code() == Some(1)
            && out.stdout.is_empty()
            && out.stderr.is_empty()
            && out.elapsed < std::time::Duration::from_secs(1);
        if !silent {
            return out;
        }
        eprintln!(
            "ocifs-tests: Wine did not start {} (exit 1, no output); running it once more",
            out.command
        );
        crate::run(make())
    }

    /// `wine64` in the prefix, quiet, with no display.
    fn wine(&self) -> Command {
        let mut command = Command::new(WINE64);
        wine_env(&mut command, &self.prefix);
        command
    }
}

/// The environment every Wine process of the tests gets.
fn wine_env(command: &mut Command, prefix: &Path) {
    command
        .env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all")
        // No Mono or Gecko install dialogs (nothing here needs them).
        .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        // Wine sets the Windows ones from the prefix's user profile.
        .env_remove("LOCALAPPDATA")
        .env_remove("APPDATA")
        .env_remove("USERPROFILE");
}

/// What a usable prefix was made with: Wine's version and the stand-in DLL's
/// source. A prefix made with anything else is made again.
fn prefix_stamp(shim_source: &[u8]) -> String {
    let out = Command::new(WINE64)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {WINE64} --version: {e}"));
    format!(
        "{}\nbcryptprimitives.c {}\n",
        String::from_utf8_lossy(&out.stdout).trim(),
        crate::sha256_hex(shim_source)
    )
}

fn make_prefix(prefix: &Path) {
    let parent = prefix.parent().unwrap_or(prefix);
    std::fs::create_dir_all(parent)
        .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    let lock_path = parent.join("wine-prefix.lock");
    let lock = File::create(&lock_path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    let shim_source_path = workspace_dir().join("tests/wine/bcryptprimitives.c");
    let shim_source = std::fs::read(&shim_source_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", shim_source_path.display()));
    let stamp = prefix_stamp(&shim_source);
    let marker = prefix.join(".ocifs-tests-ready");
    if std::fs::read_to_string(&marker).is_ok_and(|s| s == stamp) {
        return;
    }
    if prefix.exists() {
        std::fs::remove_dir_all(prefix)
            .unwrap_or_else(|e| panic!("removing the stale {}: {e}", prefix.display()));
    }
    let mut boot = Command::new(WINE64);
    wine_env(&mut boot, prefix);
    boot.args(["wineboot", "--init"]);
    run_checked(boot, "wineboot --init");
    // wineboot returns before the server has written the prefix's registry.
    let mut wait = Command::new(WINESERVER);
    wine_env(&mut wait, prefix);
    wait.arg("--wait");
    run_checked(wait, "wineserver --wait");

    let system32 = prefix.join("drive_c/windows/system32");
    assert!(system32.is_dir(), "wineboot made no {}", system32.display());
    let mut gcc = Command::new(MINGW_GCC);
    gcc.args(["-shared", "-O2", "-s", "-o"])
        .arg(system32.join("bcryptprimitives.dll"))
        .arg(&shim_source_path)
        .arg("-lbcrypt");
    run_checked(gcc, "building the bcryptprimitives.dll stand-in");
    std::fs::write(&marker, stamp).unwrap_or_else(|e| panic!("writing {}: {e}", marker.display()));
}

fn run_checked(mut command: Command, what: &str) {
    let out = command.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!(
            "ocifs-tests: {what}: cannot run {} ({e}); the README's test command, \
                 `{TEST_COMMAND}`, installs it",
            command.get_program().to_string_lossy()
        )
    });
    assert!(
        out.status.success(),
        "ocifs-tests: {what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

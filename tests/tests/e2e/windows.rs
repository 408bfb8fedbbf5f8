//! The Windows build, run: `ocifs.exe` under Wine (Debian's `wine64`)
//! against the loopback registry. `ls`, `cat`, `inspect` and `--expand`
//! print byte for byte what the Linux build prints (but for the default
//! `--platform`, each machine's own); the cache lands in
//! `%LOCALAPPDATA%\ocifs`, and the Linux build reads the cache the Windows
//! one wrote the same; two `ocifs.exe` share one cache (the whole-file lock
//! path of the store) and fetch a blob once; `cache verify` finds a flipped
//! byte and `cache prune --all` empties the cache, as on Linux; and the
//! PowerShell example in `contrib/windows/` runs its very ocifs command
//! lines here. ProjFS itself cannot run under Wine: `mount` is only seen to
//! parse its arguments and to fail naming the feature to enable.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use ocifs_tests::{
    CountingProxy, Output, Registry, RegistryAuth, ThrottleBlobs, Wine, random_bytes, run_ocifs,
    sha256_digest, temp_dir, windows_path,
};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::{FileSpec, push_files, sh};

const MIB: usize = 1 << 20;

/// The files of the package, as (path, bytes, mode); `bin/link` is a
/// symlink to `tool` besides.
fn package_files() -> Vec<(&'static str, Vec<u8>, u32)> {
    vec![
        ("bin/tool", random_bytes(300 * 1024, 0x3e), 0o755),
        (
            "etc/conf.txt",
            b"key = value\r\nsecond line\n".to_vec(),
            0o644,
        ),
        ("README", b"a package\n".to_vec(), 0o644),
    ]
}

/// A registry holding `win/files:v1`: three plain files (one binary, one
/// with a `/` in its title) and the package as a zip (`pkg-zip.zip`, by
/// Debian's `zip`) and as a tgz (`pkg-tgz.tgz`, by `tar czf`).
struct Fixture {
    registry: Registry,
    _dir: TempDir,
    files: Vec<FileSpec>,
}

impl Fixture {
    fn new() -> Self {
        let registry = Registry::start(RegistryAuth::None);
        let dir = temp_dir();
        let src = dir.path().join("pkg");
        for (path, bytes, mode) in package_files() {
            let file = src.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(&file, bytes).expect("write");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        symlink("tool", src.join("bin/link")).expect("symlink");
        sh(&src, "zip", &["-q", "-r", "-y", "../pkg-zip.zip", "."]);
        sh(&src, "tar", &["czf", "../pkg-tgz.tgz", "."]);
        let read = |name: &str| std::fs::read(dir.path().join(name)).expect("read a package");
        let files = vec![
            FileSpec {
                title: "hello.txt",
                content: b"hello, windows\n".to_vec(),
                media_type: None,
            },
            FileSpec {
                title: "big.bin",
                content: random_bytes(3 * MIB, 0x3f),
                media_type: None,
            },
            FileSpec {
                title: "nested/dir/deep.txt",
                content: b"deep inside\n".to_vec(),
                media_type: None,
            },
            FileSpec {
                title: "pkg-zip.zip",
                content: read("pkg-zip.zip"),
                media_type: None,
            },
            FileSpec {
                title: "pkg-tgz.tgz",
                content: read("pkg-tgz.tgz"),
                media_type: None,
            },
        ];
        push_files(&registry, dir.path(), "win/files:v1", &files);
        Fixture {
            registry,
            _dir: dir,
            files,
        }
    }

    fn reference(&self) -> String {
        format!("{}/win/files:v1", self.registry.host())
    }

    fn file(&self, title: &str) -> &FileSpec {
        self.files
            .iter()
            .find(|f| f.title == title)
            .unwrap_or_else(|| panic!("no file {title}"))
    }
}

/// `ocifs.exe ARGS…` under Wine with the cache `cache` (a Linux path,
/// given to it as `Z:\…`).
fn wine_run(cache: &Path, args: &[&str]) -> Output {
    let wine = Wine::ensure();
    wine.run(|| {
        let mut command = wine.ocifs();
        command.env("OCIFS_CACHE", windows_path(cache)).args(args);
        command
    })
}

/// The same command by the Linux build (a fresh cache) and by the Windows
/// build under Wine (a fresh cache too); both must have succeeded.
fn both(args: &[&str]) -> (Output, Output) {
    let linux = run_ocifs(args);
    let cache = temp_dir();
    let windows = wine_run(cache.path(), args);
    linux.success();
    windows.success();
    (linux, windows)
}

#[track_caller]
fn assert_same_stdout(linux: &Output, windows: &Output) {
    assert!(
        linux.stdout == windows.stdout,
        "the Windows build printed other bytes than the Linux build\n\
         linux:\n{linux}\nwindows:\n{windows}"
    );
}

#[test]
fn ls_and_inspect_under_wine_print_what_linux_prints() {
    let fx = Fixture::new();
    let reference = fx.reference();
    let r = reference.as_str();
    let cases: &[(&[&str], &str)] = &[
        (&["ls", "--plain-http", r], "pkg-zip.zip\n"),
        (&["ls", "-l", "--plain-http", r], " big.bin\n"),
        (&["ls", "--json", "--plain-http", r], "\"nested\""),
        (&["ls", "-R", "--plain-http", r], "nested/dir/deep.txt\n"),
        (
            &["ls", "-l", "-R", "--expand", "--plain-http", r],
            "pkg-tgz/bin/link -> tool\n",
        ),
        (
            &["ls", "--json", "-R", "--expand", "--plain-http", r],
            "\"pkg-zip/etc/conf.txt\"",
        ),
        (
            &["ls", "-R", "--expand=replace", "--plain-http", r],
            "pkg-zip/README\n",
        ),
        (
            &[
                "ls",
                "-l",
                "--expand",
                "--root",
                "pkg-zip/bin",
                "--plain-http",
                r,
            ],
            "-rwxr-xr-x",
        ),
        (
            &["ls", "--json", "--expand", "--plain-http", r, "pkg-tgz/bin"],
            "\"symlink\"",
        ),
        (&["inspect", "--plain-http", r], "pkg-tgz.tgz"),
        (&["inspect", "--json", "--plain-http", r], "\"layers\""),
    ];
    for (args, expected) in cases {
        let (linux, windows) = both(args);
        // Never two empty outputs taken for the same.
        linux.stdout_has(expected);
        assert_same_stdout(&linux, &windows);
    }
    // Errors exit alike: a path that is not there is exit 3 on both.
    let missing = ["cat", "--plain-http", r, "no/such/file"];
    let linux = run_ocifs(missing);
    let cache = temp_dir();
    let windows = wine_run(cache.path(), &missing);
    linux.code_is(3);
    windows.code_is(3);
}

#[test]
fn cat_under_wine_writes_the_bytes_linux_writes() {
    let fx = Fixture::new();
    let reference = fx.reference();
    let package: BTreeMap<&str, Vec<u8>> = package_files()
        .into_iter()
        .map(|(path, bytes, _)| (path, bytes))
        .collect();
    let mut cases: Vec<(String, Vec<&str>, Vec<u8>)> = Vec::new();
    for title in ["hello.txt", "big.bin", "nested/dir/deep.txt"] {
        cases.push((title.into(), vec![], fx.file(title).content.clone()));
    }
    // Lazy: chunks served as they arrive (the store's chunk locks and
    // partial blobs on Windows).
    cases.push((
        "big.bin".into(),
        vec!["--verify", "lazy"],
        fx.file("big.bin").content.clone(),
    ));
    for pkg in ["pkg-zip", "pkg-tgz"] {
        for (path, bytes) in &package {
            cases.push((format!("{pkg}/{path}"), vec!["--expand"], bytes.clone()));
        }
        // A symlink is followed: the tool's bytes.
        cases.push((
            format!("{pkg}/bin/link"),
            vec!["--expand"],
            package["bin/tool"].clone(),
        ));
    }
    for (path, extra, want) in cases {
        let mut args = vec!["cat", "--plain-http"];
        args.extend(extra);
        args.extend([reference.as_str(), path.as_str()]);
        let (linux, windows) = both(&args);
        assert!(
            linux.stdout == want,
            "the Linux build's cat of {path} differs from the original"
        );
        // Not a byte changed on Windows' stdout either (no CRLF, no
        // console code page).
        assert_same_stdout(&linux, &windows);
    }
}

/// Every directory under `dir`, deepest first.
#[test]
fn the_default_hosts_dir_is_in_programdata_and_its_mirror_serves_the_blobs() {
    let fx = Fixture::new();
    let wine = Wine::ensure();
    let origin = fx.registry.host();
    let mirror = CountingProxy::start(&origin);
    // containerd on Windows spells a port `host_port_` (no `:` in a name).
    let (host, port) = origin.rsplit_once(':').expect("host:port");
    let dir = wine
        .program_data()
        .join("containerd/certs.d")
        .join(format!("{host}_{port}_"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{origin}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.host()
        ),
    )
    .expect("hosts.toml");
    let cache = temp_dir();
    let out = wine_run(
        cache.path(),
        &["cat", "--plain-http", &fx.reference(), "big.bin"],
    );
    let _ = std::fs::remove_dir_all(&dir);
    out.success();
    assert!(
        out.stdout == fx.file("big.bin").content,
        "wrong bytes ({} written)",
        out.stdout.len()
    );
    assert!(
        mirror.blob_bytes() >= fx.file("big.bin").content.len() as u64,
        "the mirror named in %ProgramData%\\containerd\\certs.d was not used:\n{}",
        mirror.describe()
    );
}

fn dirs_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(dirs_under(&entry.path()));
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn the_default_cache_is_in_localappdata_and_linux_reads_it_alike() {
    let fx = Fixture::new();
    let wine = Wine::ensure();
    let local = wine.local_app_data();
    let user = local
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .expect("the user's directory")
        .to_string_lossy()
        .into_owned();
    let cache = local.join("ocifs");
    // The only test that uses the prefix's default cache: what an earlier
    // run left goes first.
    if cache.exists() {
        std::fs::remove_dir_all(&cache).expect("removing an earlier run's cache");
    }
    // A Linux XDG_CACHE_HOME reaches the Windows process under Wine (so does
    // Git for Windows' HOME on Windows): the cache must not go there.
    let xdg = temp_dir();
    let windows_default = |args: &[&str]| {
        wine.run(|| {
            let mut command = wine.ocifs();
            command
                .env_remove("OCIFS_CACHE")
                .env("XDG_CACHE_HOME", xdg.path())
                .args(args);
            command
        })
    };
    let reference = fx.reference();
    windows_default(&["prefetch", "--expand", "--plain-http", &reference]).success();
    for f in &fx.files {
        let hex = sha256_digest(&f.content);
        let blob = cache
            .join("blobs/sha256")
            .join(hex.trim_start_matches("sha256:"));
        assert!(
            blob.is_file(),
            "{} is not in %LOCALAPPDATA%\\ocifs ({})",
            f.title,
            blob.display()
        );
    }
    let stray: Vec<_> = std::fs::read_dir(xdg.path())
        .expect("ls")
        .flatten()
        .collect();
    assert!(
        stray.is_empty(),
        "the cache went to XDG_CACHE_HOME: {stray:?}"
    );

    let linux_cache = cache.display().to_string();
    let windows_cache = format!("C:\\users\\{user}\\AppData\\Local\\ocifs");
    let du = windows_default(&["cache", "du"]);
    // A promotion on Windows leaves its emptied partial directories (the
    // promoting process still has the files open); the next open sweeps
    // them (checked before the Linux build opens the cache too).
    let left = dirs_under(&cache.join("partial/sha256"));
    assert!(left.is_empty(), "partial directories stayed: {left:?}");

    let linux_du = run_ocifs(["cache", "du", "--cache-dir", &linux_cache]);
    // The one difference: the path `du` names, each system's own.
    assert_eq!(
        du.success()
            .stdout_str()
            .replace(&windows_cache, &linux_cache),
        linux_du.success().stdout_str(),
        "windows:\n{du}\nlinux:\n{linux_du}"
    );
    du.stdout_has(&format!(
        "\t{windows_cache} ({} complete blobs, 0 partial;",
        fx.files.len() + 1
    ));
    for args in [
        &["cache", "ls"][..],
        &["cache", "ls", "--json"],
        &["cache", "verify"],
    ] {
        let windows = windows_default(args);
        let mut linux_args = args.to_vec();
        linux_args.extend(["--cache-dir", linux_cache.as_str()]);
        let linux = run_ocifs(&linux_args);
        linux.success();
        windows.success();
        assert_same_stdout(&linux, &windows);
    }
    windows_default(&["cache", "ls"]).stdout_has(&sha256_digest(&fx.file("big.bin").content));
    windows_default(&["cache", "verify"])
        .stdout_has(&format!("{} blobs verified", fx.files.len() + 1));
    windows_default(&["cache", "prune", "--all"]).success();
    windows_default(&["cache", "du"])
        .success()
        .stdout_has(&format!("0\t{windows_cache} (0 complete blobs, 0 partial;"));
}

#[test]
fn two_wine_processes_share_one_cache_and_fetch_a_blob_once() {
    let content = random_bytes(16 * MIB, 0x40);
    let files = vec![FileSpec {
        title: "big.bin",
        content: content.clone(),
        media_type: None,
    }];
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    push_files(&registry, dir.path(), "win/shared:v1", &files);
    let proxy = CountingProxy::start(&registry.host());
    // Two seconds a download: the second process starts while the first
    // fetches.
    proxy.set_hook(Some(Arc::new(ThrottleBlobs(8 * MIB as u64))));
    let reference = format!("{}/win/shared:v1", proxy.host());
    let cache = dir.path().join("cache");
    let wine = Wine::ensure();
    let spawn = |out: &str| {
        let mut command = wine.ocifs();
        command
            .env("OCIFS_CACHE", windows_path(&cache))
            .args(["cat", "--plain-http", &reference, "big.bin"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join(out)).expect("out"))
            .stderr(Stdio::piped());
        command.spawn().expect("spawn ocifs.exe")
    };
    let (a, b) = (spawn("a.out"), spawn("b.out"));
    for (child, out) in [(a, "a.out"), (b, "b.out")] {
        let o = child.wait_with_output().expect("wait");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = std::fs::read(dir.path().join(out)).expect("read output");
        assert!(got == content, "{out} differs");
    }
    let size = content.len() as u64;
    assert!(
        !proxy.blob_gets().is_empty() && proxy.blob_bytes() <= size + MIB as u64,
        "fetched {} for a {size}-byte blob: {}",
        proxy.blob_bytes(),
        proxy.describe()
    );
    // A third, alone, from the warm cache: the complete blob's chunks are
    // checked (positional reads, which on Windows move the file's
    // position) and the file copied to stdout from its start.
    proxy.reset();
    let warm = wine_run(&cache, &["cat", "--plain-http", &reference, "big.bin"]);
    assert!(warm.success().stdout == content, "the warm cat differs");
    assert!(
        proxy.blob_gets().is_empty(),
        "the warm cat fetched:\n{}",
        proxy.describe()
    );
    wine_run(&cache, &["cache", "verify"])
        .success()
        .stdout_has("blobs verified");
    let ls = wine_run(&cache, &["cache", "ls", "--json"]);
    let digest = sha256_digest(&content);
    let json = ls.success().json();
    let rows: Vec<&Value> = json
        .as_array()
        .expect("an array")
        .iter()
        .filter(|b| b["digest"] == digest.as_str())
        .collect();
    assert_eq!(rows.len(), 1, "{ls}");
    assert_eq!(rows[0]["state"], "complete", "{ls}");
    assert_eq!(rows[0]["present"], size, "{ls}");
    wine_run(&cache, &["cache", "du"])
        .success()
        .stdout_has("complete blobs, 0 partial;");
}

/// Flips one bit of the byte at `at` of a file.
fn flip_at(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).expect("read the cached blob");
    bytes[at] ^= 0x04;
    std::fs::write(path, bytes).expect("write the cached blob");
}

#[test]
fn cache_verify_and_prune_under_wine_do_what_they_do_on_linux() {
    let fx = Fixture::new();
    let reference = fx.reference();
    let big = sha256_digest(&fx.file("big.bin").content);
    let caches = temp_dir();
    let mut outputs: Vec<Vec<Output>> = Vec::new();
    for system in ["linux", "windows"] {
        let cache = caches.path().join(system);
        let cache_s = cache.display().to_string();
        let ocifs = |args: &[&str]| match system {
            "linux" => {
                let mut args = args.to_vec();
                args.extend(["--cache-dir", cache_s.as_str()]);
                run_ocifs(&args)
            }
            _ => wine_run(&cache, args),
        };
        ocifs(&["prefetch", "--plain-http", &reference]).success();
        let blob = cache
            .join("blobs/sha256")
            .join(big.trim_start_matches("sha256:"));
        flip_at(&blob, 2 * MIB + 17);
        let verify = ocifs(&["cache", "verify"]);
        verify
            .code_is(6)
            .stderr_has(&format!("{big}: digest mismatch"));
        assert!(!blob.exists(), "{system}: the bad blob stayed");
        let verify_again = ocifs(&["cache", "verify"]);
        verify_again.success();
        let prune = ocifs(&["cache", "prune", "--all"]);
        prune.success();
        let du = ocifs(&["cache", "du"]);
        du.success()
            .stdout_has("0\t")
            .stdout_has(" (0 complete blobs, 0 partial;");
        outputs.push(vec![verify, verify_again, prune, du]);
    }
    let linux_dir = caches.path().join("linux").display().to_string();
    let windows_dir = windows_path(&caches.path().join("windows"));
    for (linux, windows) in outputs[0].iter().zip(&outputs[1]) {
        // `du` names the cache, each in its own system's spelling.
        assert_eq!(
            linux.stdout_str().replace(&linux_dir, "CACHE"),
            windows.stdout_str().replace(&windows_dir, "CACHE"),
            "linux:\n{linux}\nwindows:\n{windows}"
        );
        assert_eq!(
            linux.code(),
            windows.code(),
            "linux:\n{linux}\nwindows:\n{windows}"
        );
    }
}

/// The PowerShell example.
fn script() -> String {
    let path = ocifs_tests::workspace_dir().join("contrib/windows/Get-OcifsPackage.ps1");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The script's `$OcifsCommandLines` block: step name to command line.
fn script_command_lines(script: &str) -> BTreeMap<String, String> {
    let start = script
        .find("$OcifsCommandLines = [ordered]@{")
        .expect("the script has no $OcifsCommandLines block");
    let block = &script[start..];
    let end = block.find("\n}").expect("the block is not closed");
    block[..end]
        .lines()
        .skip(1)
        .map(|line| {
            let (name, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not `name = 'line'`: {line:?}"));
            let value = value.trim();
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or_else(|| panic!("not a quoted command line: {line:?}"));
            (name.trim().to_owned(), value.to_owned())
        })
        .collect()
}

/// What the script's `Get-OcifsArguments` makes of a command line: split at
/// single spaces, each `{NAME}` replaced by its value, an empty value
/// dropped.
fn fill(line: &str, values: &BTreeMap<&str, String>) -> Vec<String> {
    line.split(' ')
        .filter_map(
            |token| match token.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                Some(name) => {
                    let value = values
                        .get(name)
                        .unwrap_or_else(|| panic!("no value for {token}"));
                    (!value.is_empty()).then(|| value.clone())
                }
                None => Some(token.to_owned()),
            },
        )
        .collect()
}

#[test]
fn the_powershell_example_runs_its_ocifs_command_lines_under_wine() {
    let script = script();
    let lines = script_command_lines(&script);
    assert_eq!(
        lines.keys().map(String::as_str).collect::<Vec<_>>(),
        ["cat", "list", "mount", "prefetch"],
        "{lines:?}"
    );
    // The exit codes it does not retry are ocifs's final ones.
    let final_codes: Vec<u8> = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("$FinalExitCodes = @("))
        .and_then(|l| l.strip_suffix(')'))
        .expect("the script has no $FinalExitCodes")
        .split(',')
        .map(|c| c.trim().parse().expect("an exit code"))
        .collect();
    use ocifs_core::exit_code;
    assert_eq!(
        final_codes,
        [
            exit_code::USAGE,
            exit_code::NOT_FOUND,
            exit_code::AUTH,
            exit_code::INVALID_CONTENT
        ]
    );
    // It documents how to enable ProjFS.
    assert!(script.contains("Enable-WindowsOptionalFeature -Online -FeatureName Client-ProjFS"));

    let fx = Fixture::new();
    let proxy = CountingProxy::start(&fx.registry.host());
    let cache = temp_dir();
    let dest = temp_dir();
    let mut values: BTreeMap<&str, String> = BTreeMap::from([
        ("REF", format!("{}/win/files:v1", proxy.host())),
        ("PATH", "pkg-zip".to_owned()),
        ("DEST", windows_path(dest.path())),
        ("TIMEOUT", "60".to_owned()),
        ("TRANSPORT", "--plain-http".to_owned()),
    ]);
    let wine = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        wine_run(cache.path(), &args)
    };

    // ProjFS cannot run here: the mount line parses (a usage error would
    // be exit 2) and fails naming the feature to enable.
    wine(&fill(&lines["mount"], &values))
        .code_is(1)
        .stderr_has("-FeatureName Client-ProjFS");

    // The copy: prefetch, then ls and cat from the cache alone.
    wine(&fill(&lines["prefetch"], &values)).success();
    let zip = sha256_digest(&fx.file("pkg-zip.zip").content);
    assert!(
        proxy.blob_gets().iter().any(|r| r.path.ends_with(&zip)),
        "the prefetch did not fetch the package:\n{}",
        proxy.describe()
    );
    proxy.reset();
    let list = wine(&fill(&lines["list"], &values));
    let entries = list.success().json();
    let mut copied: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    let mut links = Vec::new();
    for entry in entries.as_array().expect("an array") {
        let path = entry["path"].as_str().expect("a path").to_owned();
        match entry["type"].as_str() {
            Some("dir") => {
                dirs.insert(path);
            }
            Some("file") => {
                values.insert("FILE", path.clone());
                let cat = wine(&fill(&lines["cat"], &values));
                copied.insert(path, cat.success().stdout.clone());
            }
            // The script copies a symlink to a file it wrote (its target
            // taken relative to the link's directory).
            Some("symlink") => links.push((path, entry["target"].as_str().map(str::to_owned))),
            other => panic!("an entry of type {other:?}:\n{list}"),
        }
    }
    assert!(
        proxy.requests().is_empty(),
        "ls and cat after the prefetch asked the registry:\n{}",
        proxy.describe()
    );
    assert_eq!(links, [("bin/link".to_owned(), Some("tool".to_owned()))]);
    let tool = copied["bin/tool"].clone();
    copied.insert("bin/link".into(), tool);
    let mut want: BTreeMap<String, Vec<u8>> = package_files()
        .into_iter()
        .map(|(path, bytes, _)| (path.to_owned(), bytes))
        .collect();
    want.insert("bin/link".into(), want["bin/tool"].clone());
    assert!(
        copied == want,
        "the copied files differ: {:?}",
        copied.keys()
    );
    assert_eq!(dirs, BTreeSet::from(["bin".to_owned(), "etc".to_owned()]));

    // Without -PlainHttp the transport placeholder leaves no argument.
    values.insert("TRANSPORT", String::new());
    let https = fill(&lines["prefetch"], &values);
    assert!(!https.iter().any(String::is_empty), "{https:?}");
    assert!(!https.iter().any(|a| a == "--plain-http"), "{https:?}");
}

#[test]
fn the_default_platform_is_the_machines_own_and_an_explicit_one_prints_alike() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let mut layout = ocifs_tests::OciLayoutBuilder::new(dir.path().join("layout"));
    let platforms = [
        ocifs_tests::Platform::new("linux", "amd64"),
        ocifs_tests::Platform::new("windows", "amd64"),
    ];
    let manifests: Vec<_> = platforms
        .iter()
        .map(|p| {
            let file = layout.file("platform.txt", format!("{p}\n").as_bytes());
            layout.image_manifest(p, &[file])
        })
        .collect();
    let index = layout.index(&manifests);
    layout.add(&index, Some("v1"));
    let reference = format!("{}/win/multi:v1", registry.host());
    ocifs_tests::skopeo_copy(
        &format!("oci:{}:v1", dir.path().join("layout").display()),
        &format!("docker://{reference}"),
        &["--all", "--preserve-digests", "--dest-tls-verify=false"],
    );
    let cat = ["cat", "--plain-http", reference.as_str(), "platform.txt"];
    // The one legitimate difference: without --platform each build takes
    // its own machine's entry of an index (a Windows node gets the
    // windows/amd64 manifest).
    let linux = run_ocifs(cat);
    let cache = temp_dir();
    let windows = wine_run(cache.path(), &cat);
    assert_eq!(linux.success().stdout_str(), "linux/amd64\n", "{linux}");
    assert_eq!(
        windows.success().stdout_str(),
        "windows/amd64\n",
        "{windows}"
    );
    for platform in ["linux/amd64", "windows/amd64"] {
        let mut args = cat.to_vec();
        args.extend(["--platform", platform]);
        let (linux, windows) = both(&args);
        linux.stdout_has(platform);
        assert_same_stdout(&linux, &windows);
    }
}

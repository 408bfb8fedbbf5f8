//! On a node: an fstab line through the real mount(8) and umount(8) (with
//! ocifs as `/sbin/mount.fuse.ocifs`), mount.fuse3's argument form, mount(8)'s
//! exit codes, systemd's notify protocol against a socket the test listens
//! on, the units in `contrib/systemd` checked by `systemd-analyze verify`,
//! the config file and its precedence, and a mount by a user other than
//! root through fusermount3.

use std::os::unix::fs::{PermissionsExt as _, chown};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ocifs_tests::{
    PushFile, PushOptions, Registry, RegistryAuth, is_mounted, mount_options, ocifs, ocifs_bin,
    oras_push, run, run_ocifs, temp_dir, workspace_dir,
};

/// The package's directory, as a Windows/Linux node package names it.
const PACKAGE: &str = "azure-vnet-cni-linux-amd64-v1.6.20";
const HELLO: &[u8] = b"hello from a node artifact\n";

/// An artifact like a node's CNI package: a zip of Debian's CNI plugins
/// (packed by Debian's `zip`) and a plain file beside it.
struct NodeArtifact {
    registry: Registry,
    _dir: tempfile::TempDir,
}

impl NodeArtifact {
    fn push() -> Self {
        let registry = Registry::start(RegistryAuth::None);
        let dir = temp_dir();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).expect("mkdir");
        for plugin in ["loopback", "bridge"] {
            std::fs::copy(Path::new("/usr/lib/cni").join(plugin), plugins.join(plugin))
                .expect("Debian's containernetworking-plugins is installed (scripts/test does)");
        }
        let zip = dir.path().join(format!("{PACKAGE}.zip"));
        let status = Command::new("zip")
            .current_dir(&plugins)
            .args(["-q", "-r"])
            .arg(&zip)
            .arg(".")
            .status()
            .expect("zip is installed (scripts/test installs it)");
        assert!(status.success(), "zip failed");
        let hello = dir.path().join("hello.txt");
        std::fs::write(&hello, HELLO).expect("write");
        oras_push(
            &registry.host(),
            "aks/packages/cni:v1",
            &[PushFile::new(&zip), PushFile::new(&hello)],
            &PushOptions::default(),
        );
        NodeArtifact {
            registry,
            _dir: dir,
        }
    }

    fn reference(&self) -> String {
        format!("{}/aks/packages/cni:v1", self.registry.host())
    }
}

/// Links `/sbin/mount.fuse.ocifs` to the ocifs under test, as the README
/// tells an administrator to (atomically: tests run in parallel).
fn install_helper() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let link = Path::new("/sbin/mount.fuse.ocifs");
        let tmp = PathBuf::from(format!("/sbin/.mount.fuse.ocifs.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(ocifs_bin(), &tmp).expect("linking the helper (root)");
        std::fs::rename(&tmp, link).expect("installing the helper");
    });
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether an ocifs process serving `dir` is alive.
fn daemon_running(dir: &Path) -> bool {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .any(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&&b"mount"[..]) && args.contains(&dir.as_bytes())
        })
}

/// Lazily unmounts what a failed test left mounted, when dropped.
struct Unmounts(Vec<PathBuf>);

impl Drop for Unmounts {
    fn drop(&mut self) {
        for dir in &self.0 {
            if is_mounted(dir) {
                let _ = Command::new("umount").arg("-l").arg(dir).status();
            }
        }
    }
}

/// A real command's run (not ocifs), with a fresh `$OCIFS_CACHE` it
/// ignores where its options name a cache.
fn system(program: &str, args: &[&str]) -> ocifs_tests::Output {
    let mut c = Command::new(program);
    c.args(args);
    run(c)
}

#[test]
fn an_fstab_line_mounts_through_mount8_and_umount8_unmounts_it() {
    install_helper();
    let artifact = NodeArtifact::push();
    let dir = temp_dir();
    let cni = dir.path().join("opt/cni/bin");
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(&cni).expect("mkdir");
    std::fs::create_dir_all(&plain).expect("mkdir");
    let _cleanup = Unmounts(vec![cni.clone(), plain.clone()]);
    let cache = dir.path().join("cache");
    let log = dir.path().join("mount.log");
    let fstab = dir.path().join("fstab");
    // The issue's line, plus what a loopback registry and a test need.
    std::fs::write(
        &fstab,
        format!(
            "# a test fstab\n\
             {r} {cni} fuse.ocifs ro,_netdev,allow_other,file_mode=0555,expand,root={PACKAGE},plain_http,cache_dir={c},log_file={log},verbose 0 0\n\
             {r} {plain} fuse.ocifs ro,nofail,x-systemd.automount,file_mode=0555,plain_http,cache_dir={c},verify=lazy 0 0\n",
            r = artifact.reference(),
            cni = cni.display(),
            plain = plain.display(),
            c = cache.display(),
            log = log.display(),
        ),
    )
    .expect("fstab");
    let fstab = fstab.display().to_string();

    // mount(8) by mount point, from the fstab: it returns once the mount is live.
    system("mount", &["--fstab", &fstab, &cni.display().to_string()]).success();
    assert!(
        is_mounted(&cni),
        "mount(8) returned before the mount was live"
    );
    let options = mount_options(&cni).expect("in the mount table");
    for o in ["ro", "nosuid", "nodev", "allow_other"] {
        assert!(options.split(',').any(|x| x == o), "{o} not in {options}");
    }
    // The package's directory is the root, and its plugin runs from it.
    let mut names: Vec<String> = std::fs::read_dir(&cni)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["bridge", "loopback"]);
    let version = Command::new(cni.join("loopback"))
        .env("CNI_COMMAND", "VERSION")
        .output()
        .expect("running the CNI plugin from the mount");
    assert!(version.status.success(), "{version:?}");
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("\"cniVersion\""),
        "{version:?}"
    );
    assert!(
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("mounted")),
        "log_file= did not reach the daemon"
    );

    // The second line: the ORAS file gets file_mode, verify=lazy is taken.
    system("mount", &["-T", &fstab, &plain.display().to_string()]).success();
    let hello = plain.join("hello.txt");
    assert_eq!(std::fs::read(&hello).expect("read"), HELLO);
    let mode = std::fs::metadata(&hello)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o555, "file_mode=0555 not applied");
    assert!(plain.join(format!("{PACKAGE}.zip")).is_file());
    assert!(!plain.join(PACKAGE).exists(), "expand was not on this line");

    // umount(8) unmounts, and the daemons go away.
    for mnt in [&cni, &plain] {
        system("umount", &[&mnt.display().to_string()]).success();
        assert!(!is_mounted(mnt));
        wait_until("the daemon to exit", Duration::from_secs(20), || {
            !daemon_running(mnt)
        });
    }
}

#[test]
fn mount8_exit_codes_say_what_went_wrong_and_leave_nothing_mounted() {
    install_helper();
    let artifact = NodeArtifact::push();
    let dir = temp_dir();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let _cleanup = Unmounts(vec![mnt.clone()]);
    let m = mnt.display().to_string();
    let cache = format!("cache_dir={}", dir.path().join("cache").display());
    let mount = |reference: &str, options: &str| {
        system("mount", &["-t", "fuse.ocifs", "-o", options, reference, &m])
    };
    // Not an ocifs option: a wrong invocation (1), naming the option.
    mount(
        &artifact.reference(),
        &format!("ro,plain_http,{cache},colour=blue"),
    )
    .code_is(1)
    .stderr_has("unknown mount option colour");
    // A password would be world-readable in fstab: refused, never echoed.
    let out = mount(
        &artifact.reference(),
        &format!("ro,{cache},password=s3cret"),
    );
    out.code_is(1)
        .stderr_has("credentials are not mount options");
    assert!(!out.stderr.contains("s3cret"), "{out}");
    // The mount itself fails: a missing tag is a mount failure (32).
    let missing = format!("{}/aks/packages/cni:nope", artifact.registry.host());
    mount(&missing, &format!("ro,plain_http,{cache}"))
        .code_is(32)
        .stderr_has("cni:nope");
    // -f checks and mounts nothing.
    system(
        "mount",
        &[
            "-f",
            "-t",
            "fuse.ocifs",
            "-o",
            &format!("ro,plain_http,{cache}"),
            &artifact.reference(),
            &m,
        ],
    )
    .success();
    assert!(!is_mounted(&mnt));
    // And the same options that work, to show the failures were the options'.
    mount(&artifact.reference(), &format!("ro,plain_http,{cache}")).success();
    assert_eq!(std::fs::read(mnt.join("hello.txt")).expect("read"), HELLO);
    system("umount", &[&m]).success();
}

#[test]
fn mount_fuse3_runs_ocifs_in_its_argument_form() {
    let artifact = NodeArtifact::push();
    let dir = temp_dir();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let _cleanup = Unmounts(vec![mnt.clone()]);
    // mount.fuse3 runs `ocifs REF DIR -o OPTIONS`, finding ocifs on $PATH.
    let bin_dir = ocifs_bin().parent().expect("bin dir").to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("/sbin/mount.fuse3");
    c.arg(artifact.reference())
        .arg(&mnt)
        .args(["-t", "fuse.ocifs", "-o"])
        .arg(format!(
            "ro,_netdev,expand,plain_http,cache_dir={}",
            dir.path().join("cache").display()
        ))
        .env("PATH", path);
    run(c).success();
    assert!(is_mounted(&mnt));
    assert!(mnt.join(PACKAGE).join("loopback").is_file());
    system("umount", &[&mnt.display().to_string()]).success();
}

#[test]
fn a_notify_service_is_told_ready_once_mounted_and_stopping_on_sigterm() {
    let artifact = NodeArtifact::push();
    let dir = temp_dir();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let _cleanup = Unmounts(vec![mnt.clone()]);
    let socket = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&socket).expect("binding the notify socket");
    listener
        .set_read_timeout(Some(Duration::from_secs(90)))
        .expect("timeout");
    // As systemd runs a Type=notify unit: in the foreground, $NOTIFY_SOCKET set.
    let mut child = ocifs()
        .args(["mount", "--plain-http", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .arg(artifact.reference())
        .arg(&mnt)
        .env("NOTIFY_SOCKET", &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ocifs mount");
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("READY=1 within 90 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means live: the mount is there and serves its bytes now.
    assert!(is_mounted(&mnt), "READY=1 came before the mount");
    assert_eq!(std::fs::read(mnt.join("hello.txt")).expect("read"), HELLO);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let n = listener.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = child.wait().expect("waiting");
    assert!(status.success(), "ocifs exited {status} on SIGTERM");
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
    // Nothing more was sent.
    listener
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    assert!(listener.recv(&mut buf).is_err(), "an extra notification");
}

#[test]
fn the_systemd_units_in_contrib_verify() {
    let contrib = workspace_dir().join("contrib/systemd");
    let dir = temp_dir();
    let mut units = Vec::new();
    for name in ["ocifs-cni.service", "opt-cni-bin.mount"] {
        let text = std::fs::read_to_string(contrib.join(name)).expect("a unit in contrib/systemd");
        // systemd-analyze checks that ExecStart's program exists: the one under test.
        let text = text.replace("/usr/local/bin/ocifs", &ocifs_bin().display().to_string());
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        units.push(path);
    }
    let service = std::fs::read_to_string(&units[0]).expect("read");
    for line in [
        "Type=notify",
        "After=network-online.target",
        "Restart=on-failure",
    ] {
        assert!(
            service.lines().any(|l| l == line),
            "the service lacks {line}"
        );
    }
    assert!(
        !service.contains("--daemon"),
        "a notify service runs in the foreground"
    );
    let mount = std::fs::read_to_string(&units[1]).expect("read");
    assert!(mount.lines().any(|l| l == "Type=fuse.ocifs"));
    let verify = |paths: &[PathBuf]| {
        let mut c = Command::new("systemd-analyze");
        c.arg("verify").args(paths);
        run(c)
    };
    let out = verify(&units);
    out.success();
    for unit in &units {
        let name = unit
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            !out.stderr.contains(&name),
            "systemd-analyze complains:\n{out}"
        );
    }
    // The check can fail: a misspelt key is reported against its unit.
    let bad = dir.path().join("ocifs-bad.service");
    std::fs::write(&bad, service.replace("Type=notify", "Typ=notify")).expect("write");
    let out = verify(&[bad]);
    assert!(
        out.stderr.contains("ocifs-bad.service") && out.stderr.contains("Typ"),
        "{out}"
    );
}

#[test]
fn config_files_set_what_flags_do_not_and_flags_win() {
    let artifact = NodeArtifact::push();
    let host = artifact.registry.host();
    let dir = temp_dir();
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("ocifs")).expect("mkdir");
    let file_cache = dir.path().join("file-cache");
    let user_file = xdg.join("ocifs/config.toml");
    std::fs::write(
        &user_file,
        format!(
            "# the node's settings\ncache_dir = \"{}\"\nverify = \"lazy\"\nretries = 2\n\n\
             [registry.\"{host}\"]\nplain_http = true\n",
            file_cache.display()
        ),
    )
    .expect("config");
    let with_config = |args: &[&str]| {
        let mut c = ocifs();
        // run() gives a fresh $OCIFS_CACHE unless the command sets (or
        // removes) it.
        c.args(args)
            .env("XDG_CONFIG_HOME", &xdg)
            .env_remove("OCIFS_CACHE");
        run(c)
    };
    let reference = artifact.reference();
    // The registry's table makes it plain HTTP without the flag, and the
    // file's cache directory is used.
    let out = with_config(&["cat", &reference, "hello.txt"]);
    out.success();
    assert_eq!(out.stdout, HELLO);
    assert!(
        file_cache.join("blobs/sha256").is_dir(),
        "the config file's cache_dir was not used"
    );
    // Without the file, the same command needs --plain-http.
    run_ocifs(["cat", "--timeout", "5", &reference, "hello.txt"]).code_is(5);
    // A flag wins over the file.
    let flag_cache = dir.path().join("flag-cache");
    with_config(&[
        "cat",
        "--cache-dir",
        &flag_cache.display().to_string(),
        &reference,
        "hello.txt",
    ])
    .success();
    assert!(
        flag_cache.join("blobs/sha256").is_dir(),
        "--cache-dir lost to the file"
    );

    // config show: each value and where it came from.
    let out = with_config(&["config", "show", "--verify", "strict"]);
    out.success();
    let show = out.stdout_str();
    let user = user_file.display().to_string();
    for line in [
        format!("cache_dir = \"{}\"  # {user}", file_cache.display()),
        "verify = \"strict\"  # --verify".to_owned(),
        format!("retries = 2  # {user}"),
        "timeout = 60.0  # default".to_owned(),
        "chunk_size = \"1M\"  # default".to_owned(),
        format!("[registry.\"{host}\"]"),
        format!("plain_http = true  # {user}"),
        format!("# read {user}"),
    ] {
        assert!(
            show.lines().any(|l| l == line),
            "no line {line:?} in:\n{show}"
        );
    }
    // $OCIFS_CACHE (what --cache-dir reads) wins over the file too.
    let mut c = ocifs();
    c.args(["config", "show"])
        .env("XDG_CONFIG_HOME", &xdg)
        .env("OCIFS_CACHE", dir.path().join("env-cache"));
    let show = run(c).success().stdout_str();
    assert!(
        show.contains(&format!(
            "cache_dir = \"{}\"  # $OCIFS_CACHE",
            dir.path().join("env-cache").display()
        )),
        "{show}"
    );

    // --config names the only file read.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "timeout = 5\nmemory_cache_size = \"64M\"\n").expect("write");
    let out = with_config(&["--config", &other.display().to_string(), "config", "show"]);
    let show = out.success().stdout_str();
    let o = other.display().to_string();
    assert!(show.contains(&format!("timeout = 5.0  # {o}")), "{show}");
    assert!(
        show.contains(&format!("memory_cache_size = \"64M\"  # {o}")),
        "{show}"
    );
    assert!(show.contains("verify = \"strict\"  # default"), "{show}");
    assert!(
        !show.contains(&user),
        "the user's file was read too:\n{show}"
    );
}

#[test]
fn a_bad_config_file_is_refused_naming_the_file_the_line_and_the_key() {
    let dir = temp_dir();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "verify = \"lazy\"\ncache_size = \"1G\"\n").expect("write");
    let f = file.display().to_string();
    for args in [
        vec!["--config", &f, "ls", "localhost:1/r:v1"],
        vec!["config", "show", "--config", &f],
    ] {
        run_ocifs(&args)
            .code_is(2)
            .stderr_has(&format!("{f}: line 2: unknown key `cache_size`"));
    }
    // The user's file is found by $XDG_CONFIG_HOME, and checked the same way.
    std::fs::create_dir_all(dir.path().join("ocifs")).expect("mkdir");
    std::fs::write(
        dir.path().join("ocifs/config.toml"),
        "[registry.\"r:1\"]\nplain_https = true\n",
    )
    .expect("write");
    let mut c = ocifs();
    c.args(["config", "show"])
        .env("XDG_CONFIG_HOME", dir.path());
    run(c)
        .code_is(2)
        .stderr_has("ocifs/config.toml: line 2: unknown key `plain_https`");
    // A missing --config file is an error, not an empty config.
    run_ocifs(["--config", "/nonexistent/ocifs.toml", "config", "show"])
        .code_is(2)
        .stderr_has("/nonexistent/ocifs.toml");
}

/// Runs `args` as the user nobody (65534), with a clean environment.
fn as_nobody(home: &Path, args: &[&str]) -> ocifs_tests::Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("OCIFS_CACHE", home.join("cache"));
    run(c)
}

#[test]
fn a_user_mounts_without_root_and_allow_other_needs_user_allow_other() {
    // On a Debian node udev makes /dev/fuse 0666, so that users can mount
    // (through the setuid fusermount3); a sandbox may leave it 0600.
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666))
        .expect("chmod /dev/fuse");
    let artifact = NodeArtifact::push();
    let dir = temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let home = dir.path().join("home");
    let mnt = dir.path().join("mnt");
    for d in [&home, &mnt] {
        std::fs::create_dir(d).expect("mkdir");
        chown(d, Some(65534), Some(65534)).expect("chown");
    }
    let _cleanup = Unmounts(vec![mnt.clone()]);
    let bin = ocifs_bin().display().to_string();
    let m = mnt.display().to_string();
    let reference = artifact.reference();
    as_nobody(
        &home,
        &[&bin, "mount", "--daemon", "--plain-http", &reference, &m],
    )
    .success();
    assert!(is_mounted(&mnt));
    let out = as_nobody(&home, &["cat", &format!("{m}/hello.txt")]);
    assert_eq!(out.success().stdout, HELLO);
    assert!(
        home.join("cache/blobs/sha256").is_dir(),
        "the user's cache is not where $OCIFS_CACHE says"
    );
    // The user unmounts it (through fusermount3 -u).
    as_nobody(&home, &[&bin, "umount", &m]).success();
    assert!(!is_mounted(&mnt));

    let conf = std::fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    let allowed = conf.lines().any(|l| l.trim() == "user_allow_other");
    let out = as_nobody(
        &home,
        &[
            &bin,
            "mount",
            "--daemon",
            "--plain-http",
            "-o",
            "allow_other",
            &reference,
            &m,
        ],
    );
    if allowed {
        out.success();
        as_nobody(&home, &[&bin, "umount", &m]).success();
    } else {
        // Debian's default fuse.conf: refused, saying what to change.
        out.code_is(1)
            .stderr_has("user_allow_other")
            .stderr_has("/etc/fuse.conf");
        assert!(!is_mounted(&mnt));
    }
}

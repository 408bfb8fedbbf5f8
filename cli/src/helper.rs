//! ocifs as mount(8)'s helper.
//!
//! `mount -t fuse.ocifs REF DIR -o OPTIONS` (and an fstab line of type
//! `fuse.ocifs`) runs `/sbin/mount.fuse.ocifs REF DIR [-sfnv] -o OPTIONS`,
//! where `mount.fuse.ocifs` is a link to ocifs; `mount.fuse3` runs
//! `ocifs REF DIR -o OPTIONS`. Both become `ocifs mount --daemon … REF DIR`:
//! every ocifs mount option is a mount option, dashes written as
//! underscores (`plain_http`, `file_mode=0555`, `verify=lazy`, `expand`,
//! `root=…`, `cache_dir=…`, `config=…`), beside FUSE's `allow_other` and
//! `default_permissions`. mount(8)'s generic options (`ro`, `_netdev`,
//! `nofail`, `x-systemd.*`, …) are for mount(8) and systemd; the mount is
//! read-only, nosuid and nodev whatever they say.

/// mount(8)'s exit code for a wrong invocation.
pub const EXIT_USAGE: u8 = 1;
/// mount(8)'s exit code for a mount that failed.
pub const EXIT_FAILURE: u8 = 32;

/// The names ocifs answers to as a helper.
const HELPER_NAMES: [&str; 2] = ["mount.fuse.ocifs", "mount.ocifs"];

/// Options that are mount(8)'s or the kernel's, not ocifs's.
const GENERIC: [&str; 30] = [
    "ro",
    "rw",
    "defaults",
    "_netdev",
    "auto",
    "noauto",
    "nofail",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "noexec",
    "exec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "nolazytime",
    "sync",
    "async",
    "silent",
];

/// What a helper invocation asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Call {
    /// The arguments of `ocifs` (after the program name): `mount --daemon …`.
    pub args: Vec<String>,
    /// `-f`: check everything, mount nothing.
    pub fake: bool,
}

/// Whether `argv` (program name first) is a helper invocation: ocifs run
/// as `mount.fuse.ocifs`, or as `ocifs SPEC DIR …` with no subcommand and
/// an existing directory second (mount.fuse3's form).
pub fn is_helper(argv: &[String], subcommands: &[String]) -> bool {
    let name = argv
        .first()
        .map(|a| a.rsplit(['/', '\\']).next().unwrap_or(a))
        .unwrap_or_default();
    if HELPER_NAMES.contains(&name) {
        return true;
    }
    match (argv.get(1), argv.get(2)) {
        (Some(spec), Some(dir)) => {
            !spec.starts_with('-')
                && !subcommands.iter().any(|s| s == spec)
                && !dir.starts_with('-')
                && std::path::Path::new(dir).is_dir()
        }
        _ => false,
    }
}

/// Turns a helper's arguments (after the program name) into ocifs's.
/// `mount` is the built `ocifs mount` command, whose options (global ones
/// included) the mount options may name.
pub fn translate(args: &[String], mount: &clap::Command) -> Result<Call, String> {
    let mut operands = Vec::new();
    let mut options = Vec::new();
    let (mut fake, mut sloppy, mut verbose) = (false, false, false);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            operands.push(arg.clone());
            continue;
        };
        for (i, c) in flags.char_indices() {
            match c {
                'f' => fake = true,
                's' => sloppy = true,
                'n' => {}
                'v' => verbose = true,
                'o' | 't' => {
                    let value = match &flags[i + 1..] {
                        "" => rest
                            .next()
                            .cloned()
                            .ok_or_else(|| format!("-{c} needs a value"))?,
                        v => v.to_owned(),
                    };
                    if c == 'o' {
                        options.push(value);
                    } else if !matches!(value.as_str(), "fuse.ocifs" | "ocifs" | "fuse") {
                        return Err(format!("type {value:?} is not ocifs's (fuse.ocifs)"));
                    }
                    break;
                }
                other => {
                    return Err(format!(
                        "unknown helper flag -{other} (-f, -n, -s, -v, -o, -t)"
                    ));
                }
            }
        }
    }
    let [spec, dir] = operands.as_slice() else {
        return Err(format!(
            "usage: mount.fuse.ocifs REF DIR [-fnsv] [-o OPTIONS] (got {} operands)",
            operands.len()
        ));
    };
    let mut out = vec!["mount".to_owned(), "--daemon".to_owned()];
    if verbose {
        out.push("-v".to_owned());
    }
    for option in options.iter().flat_map(|o| o.split(',')) {
        out.extend(translate_option(option, mount, sloppy)?);
    }
    out.extend(["--".to_owned(), spec.clone(), dir.clone()]);
    Ok(Call { args: out, fake })
}

/// One mount option as ocifs arguments (none for one that is not ocifs's).
fn translate_option(
    option: &str,
    mount: &clap::Command,
    sloppy: bool,
) -> Result<Vec<String>, String> {
    let (name, value) = match option.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (option, None),
    };
    if name.is_empty()
        || GENERIC.contains(&name)
        || name.starts_with("x-")
        || matches!(name, "comment" | "fsname" | "subtype")
    {
        return Ok(Vec::new());
    }
    match name {
        "allow_other" | "default_permissions" => {
            if value.is_some() {
                return Err(format!("mount option {name} takes no value"));
            }
            return Ok(vec!["-o".to_owned(), name.to_owned()]);
        }
        "password" | "password_stdin" | "username" => {
            return Err(format!(
                "mount option {name}: credentials are not mount options (fstab and the \
                 mount table are readable by every user); put them in the docker or podman \
                 config (`docker login` or `podman login`, or ~/.docker/config.json)"
            ));
        }
        _ => {}
    }
    let long = name.replace('_', "-");
    let known = mount
        .get_arguments()
        .find(|a| !a.is_positional() && !a.is_hide_set() && a.get_long() == Some(long.as_str()));
    let Some(arg) = known.filter(|_| !matches!(name, "daemon" | "help" | "version")) else {
        if sloppy {
            eprintln!("mount.fuse.ocifs: ignoring unknown mount option {name} (-s)");
            return Ok(Vec::new());
        }
        return Err(format!(
            "unknown mount option {name} (the options of `ocifs mount`, dashes written as \
             underscores: plain_http, verify=lazy, file_mode=0555, expand, root=DIR, \
             cache_dir=DIR, config=FILE, …; and allow_other, default_permissions)"
        ));
    };
    let takes_value = arg.get_action().takes_values();
    match (value, takes_value) {
        (Some(v), true) => Ok(vec![format!("--{long}={v}")]),
        (None, _) => Ok(vec![format!("--{long}")]),
        (Some("true" | "yes" | "1"), false) => Ok(vec![format!("--{long}")]),
        (Some("false" | "no" | "0"), false) => Ok(Vec::new()),
        (Some(v), false) => Err(format!(
            "mount option {name} is a switch: write {name}, not {name}={v}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_command() -> clap::Command {
        let mut command = <crate::Cli as clap::CommandFactory>::command();
        command.build();
        command.find_subcommand("mount").expect("mount").clone()
    }

    fn run(args: &[&str]) -> Result<Call, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        translate(&args, &mount_command())
    }

    #[test]
    fn an_fstab_line_becomes_an_ocifs_mount() {
        let call = run(&[
            "reg:5000/cni:v1",
            "/opt/cni/bin",
            "-o",
            "ro,_netdev,allow_other,file_mode=0555,expand,root=azure-vnet-cni-linux-amd64-v1.6.20,plain_http,verify=lazy,cache_dir=/var/cache/ocifs,x-systemd.automount,nofail",
        ])
        .unwrap();
        assert!(!call.fake);
        assert_eq!(
            call.args,
            [
                "mount",
                "--daemon",
                "-o",
                "allow_other",
                "--file-mode=0555",
                "--expand",
                "--root=azure-vnet-cni-linux-amd64-v1.6.20",
                "--plain-http",
                "--verify=lazy",
                "--cache-dir=/var/cache/ocifs",
                "--",
                "reg:5000/cni:v1",
                "/opt/cni/bin"
            ]
        );
        // What it turns into parses as `ocifs mount`.
        let argv = std::iter::once("ocifs".to_owned()).chain(call.args);
        let parsed = <crate::Cli as clap::Parser>::try_parse_from(argv).unwrap();
        let crate::Command::Mount(m) = parsed.command else {
            panic!("not a mount")
        };
        assert!(m.daemon && m.source.plain_http && m.file_mode == 0o555);
        assert_eq!(m.operands, ["reg:5000/cni:v1", "/opt/cni/bin"]);
    }

    #[test]
    fn helper_flags_and_forms_are_understood() {
        let call = run(&[
            "-fv",
            "r:1",
            "/m",
            "-oexpand=replace",
            "-t",
            "fuse.ocifs",
            "-n",
            "-o",
            "config=/etc/o.toml",
        ])
        .unwrap();
        assert!(call.fake);
        assert_eq!(
            call.args,
            [
                "mount",
                "--daemon",
                "-v",
                "--expand=replace",
                "--config=/etc/o.toml",
                "--",
                "r:1",
                "/m"
            ]
        );
        let sloppy = run(&["-s", "r:1", "/m", "-o", "frobnicate,plain_http"]).unwrap();
        assert_eq!(sloppy.args[2..], ["--plain-http", "--", "r:1", "/m"]);
    }

    #[test]
    fn bad_helper_calls_are_refused_saying_why() {
        for (args, wanted) in [
            (
                &["r:1", "/m", "-o", "frobnicate"][..],
                "unknown mount option frobnicate",
            ),
            (
                &["r:1", "/m", "-o", "password=s3cret"],
                "credentials are not mount options",
            ),
            (
                &["r:1", "/m", "-o", "username=u"],
                "credentials are not mount options",
            ),
            (&["r:1", "/m", "-o", "plain_http=maybe"], "is a switch"),
            (&["r:1", "/m", "-o", "allow_other=1"], "takes no value"),
            (
                &["r:1", "/m", "-o", "daemon"],
                "unknown mount option daemon",
            ),
            (
                &["r:1", "/m", "-o", "notify_ready"],
                "unknown mount option notify_ready",
            ),
            (&["r:1"], "usage"),
            (&["r:1", "/m", "-t", "ext4"], "not ocifs's"),
            (&["r:1", "/m", "-x"], "unknown helper flag -x"),
            (&["r:1", "/m", "-o"], "-o needs a value"),
        ] {
            let e = run(args).unwrap_err();
            assert!(e.contains(wanted), "{args:?}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn ocifs_is_a_helper_by_its_name_or_by_mount_fuse3s_form() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_owned();
        let subs = vec!["mount".to_owned(), "ls".to_owned()];
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_helper(
            &argv(&["/sbin/mount.fuse.ocifs", "r:1", "/x"]),
            &subs
        ));
        assert!(is_helper(&argv(&["ocifs", "r:1", &d, "-o", "ro"]), &subs));
        assert!(!is_helper(&argv(&["ocifs", "ls", &d]), &subs));
        assert!(!is_helper(&argv(&["ocifs", "r:1", "/no/such/dir"]), &subs));
        assert!(!is_helper(&argv(&["ocifs", "--verbose", &d]), &subs));
        assert!(!is_helper(&argv(&["ocifs"]), &subs));
    }
}

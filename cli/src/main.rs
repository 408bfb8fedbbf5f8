//! `ocifs`: browse and mount OCI artifacts, fetching bytes on first read.

mod commands;
mod config;
mod helper;
mod mount;
#[cfg(target_os = "linux")]
mod notify;
mod options;

use std::io::{self, Write as _};
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use config::Config;
use options::{
    CacheCmdArgs, CatArgs, ConfigCmdArgs, ConfigCommand, IndexArgs, InspectArgs, LsArgs,
    PrefetchArgs,
};

/// Browse OCI artifacts and images without pulling them.
#[derive(Debug, Parser)]
#[command(name = "ocifs", version, about, long_about = None)]
struct Cli {
    /// More output on stderr: -v info, -vv debug, -vvv trace.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// Read the settings from this file only [default: /etc/ocifs/config.toml,
    /// then $XDG_CONFIG_HOME/ocifs/config.toml; %ProgramData% and %APPDATA% on
    /// Windows]. Flags win over it.
    #[arg(long, value_name = "FILE", env = "OCIFS_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show how a reference resolves: index entries, the chosen manifest, its layers.
    Inspect(InspectArgs),
    /// List the files of an artifact (reads only its manifest, and the packages shown as directories).
    Ls(LsArgs),
    /// Write a file of an artifact to stdout.
    Cat(CatArgs),
    /// Fill the cache with an artifact, or some of its files.
    Prefetch(PrefetchArgs),
    /// For publishers: push a chunk-digest index of REF and bind it to a copy of the manifest.
    Index(IndexArgs),
    /// Look after the cache: du, ls, prune, verify.
    Cache(CacheCmdArgs),
    /// Mount an artifact read-only; bytes are fetched when first read.
    Mount(mount::MountArgs),
    /// Unmount an ocifs mount; returns once its daemon has settled its cache and ended.
    Umount(mount::UmountArgs),
    /// Show a mount's counters: hits, misses, bytes fetched.
    Stats(mount::StatsArgs),
    /// Show the settings in effect and where each came from.
    Config(ConfigCmdArgs),
}

impl Command {
    /// Fills in what the config files say where no flag said it. `m` are
    /// the command's own matches.
    fn configure(&mut self, config: &Config, m: &ArgMatches) {
        match self {
            Command::Inspect(a) => config.apply_source(&mut a.source, m),
            Command::Ls(a) => config.apply_source(&mut a.source, m),
            Command::Cat(a) => config.apply_source(&mut a.source, m),
            Command::Prefetch(a) => config.apply_source(&mut a.source, m),
            Command::Index(a) => config.apply_source(&mut a.source, m),
            Command::Mount(a) => config.apply_source(&mut a.source, m),
            Command::Cache(a) => config.apply_cache(&mut a.cache, m),
            Command::Config(a) => match (&mut a.command, m.subcommand()) {
                (ConfigCommand::Show(s), Some((_, m))) => config.apply_source(&mut s.source, m),
                (ConfigCommand::Show(_), None) => {}
            },
            Command::Umount(_) | Command::Stats(_) => {}
        }
    }
}

fn init_logging(
    verbose: u8,
    quiet: bool,
    log_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    // Our own crates get the level asked for; the HTTP stack one step less,
    // so -vvv does not dump connection internals.
    let ours = |level: &str| {
        ["ocifs", "ocifs_core", "ocifs_fs_linux", "ocifs_fs_windows"]
            .map(|c| format!("{c}={level}"))
            .join(",")
    };
    let filter = match (quiet, verbose) {
        (true, _) => "error".to_owned(),
        (false, 0) => "warn".to_owned(),
        (false, 1) => format!("warn,{}", ours("info")),
        (false, 2) => format!("info,{},reqwest=debug", ours("debug")),
        (false, _) => format!(
            "debug,{},reqwest=debug,hyper=info,hyper_util=info,h2=info,rustls=info",
            ours("trace")
        ),
    };
    let filter = EnvFilter::try_from_env("OCIFS_LOG").unwrap_or_else(|_| EnvFilter::new(filter));
    use std::io::IsTerminal as _;
    // A daemon's stderr is a pipe to a parent that has gone: a failed log
    // write must not be reported with eprintln!, which panics on EPIPE.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(verbose >= 2)
        .log_internal_errors(false);
    match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            builder
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .init();
        }
        None => builder
            .with_writer(io::stderr)
            .with_ansi(io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    ocifs_fs_linux::one_heap();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let lossy: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut root = Cli::command();
    root.build();
    let subcommands: Vec<String> = root
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .chain(["help".to_owned()])
        .collect();
    // As mount(8)'s helper, the arguments are translated, and every failure
    // gets one of mount(8)'s exit codes.
    let helper = helper::is_helper(&lossy, &subcommands);
    let (raw, fake) = if helper {
        let mount = root
            .find_subcommand("mount")
            .expect("ocifs has a mount command");
        match helper::translate(&lossy[1..], mount) {
            Ok(call) => (call.args, call.fake),
            Err(e) => {
                eprintln!("mount.fuse.ocifs: {e}");
                return ExitCode::from(helper::EXIT_USAGE);
            }
        }
    } else {
        (lossy[1..].to_vec(), false)
    };
    let parsed = if helper {
        root.clone()
            .try_get_matches_from(std::iter::once("ocifs".to_owned()).chain(raw.clone()))
    } else {
        root.clone().try_get_matches_from(argv)
    };
    let matches = match parsed {
        Ok(m) => m,
        Err(e) if helper => {
            let _ = e.print();
            return ExitCode::from(helper::EXIT_USAGE);
        }
        Err(e) => e.exit(),
    };
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let config = match Config::load(cli.config.as_deref(), &config::default_files()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ocifs: {e:#}");
            return ExitCode::from(if helper {
                helper::EXIT_USAGE
            } else {
                ocifs_core::exit_code::USAGE
            });
        }
    };
    let (_, command_matches) = matches.subcommand().expect("clap requires a subcommand");
    cli.command.configure(&config, command_matches);
    if fake {
        return ExitCode::SUCCESS;
    }
    if let Command::Config(args) = &cli.command {
        let ConfigCommand::Show(show) = &args.command;
        let show_matches = command_matches
            .subcommand()
            .map_or(command_matches, |(_, m)| m);
        print!("{}", config.show(&show.source, show_matches));
        return ExitCode::SUCCESS;
    }
    if let Command::Mount(args) = &cli.command
        && args.daemon
    {
        let options = root
            .find_subcommand("mount")
            .map(mount::ValueOptions::of)
            .unwrap_or_default();
        let code = mount::daemonize(args, &options, &raw).unwrap_or_else(|e| {
            eprintln!("ocifs: {}", message(&e));
            ocifs_core::exit_code::OTHER
        });
        return ExitCode::from(match code {
            0 => 0,
            _ if helper => helper::EXIT_FAILURE,
            c => c,
        });
    }
    let log_file = match &cli.command {
        Command::Mount(args) => args.log_file.clone(),
        _ => None,
    };
    if let Err(e) = init_logging(cli.verbose, cli.quiet, log_file.as_deref()) {
        eprintln!("ocifs: cannot open the log file: {e:#}");
        return ExitCode::from(ocifs_core::exit_code::OTHER);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ocifs: cannot start the async runtime: {e}");
            return ExitCode::from(ocifs_core::exit_code::OTHER);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Inspect(args) => commands::inspect(args).await,
            Command::Ls(args) => commands::ls(args).await,
            Command::Cat(args) => commands::cat(args).await,
            Command::Prefetch(args) => commands::prefetch(args).await,
            Command::Index(args) => commands::index(args).await,
            Command::Cache(args) => commands::cache(args).await,
            Command::Mount(mut args) => {
                // A publisher asks for push access (and goes to the registry itself).
                args.source.push = args.publish_index;
                mount::mount(args).await
            }
            Command::Umount(args) => mount::umount(args),
            Command::Stats(args) => mount::stats(args),
            Command::Config(_) => unreachable!("answered before the runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`ocifs cat … | head`) is the reader's choice, not a failure.
            if e.chain().any(|c| {
                c.downcast_ref::<io::Error>()
                    .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let _ = io::stdout().flush();
            // Not eprintln!: stderr may be a closed pipe (a daemon).
            let _ = writeln!(io::stderr(), "ocifs: {}", message(&e));
            ExitCode::from(exit_code_of(&e))
        }
    }
}

/// What `{e:#}` shows, the chain joined by ": ", but ending at the first
/// core error: its message already says what its sources say.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for (i, c) in e.chain().enumerate() {
        if i > 0 {
            out.push_str(": ");
        }
        out.push_str(&c.to_string());
        if c.is::<ocifs_core::Error>() {
            break;
        }
    }
    out
}

/// The exit code of the first core error in the chain, else "other".
fn exit_code_of(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|c| c.downcast_ref::<ocifs_core::Error>())
        .map_or(ocifs_core::exit_code::OTHER, ocifs_core::Error::exit_code)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::{Cli, message};
    use crate::mount::{ValueOptions, child_arguments};

    fn child(raw: &[&str]) -> Vec<String> {
        let mut command = Cli::command();
        command.build();
        let options = ValueOptions::of(command.find_subcommand("mount").expect("mount"));
        let raw: Vec<String> = raw.iter().map(|s| s.to_string()).collect();
        child_arguments(&raw, &options)
    }

    #[test]
    fn a_daemon_child_gets_no_password_in_any_spelling() {
        let tail = ["--plain-http", "host/repo:v1", "/mnt"];
        for spelling in [
            &["-p", "s3cret"][..],
            &["-ps3cret"],
            &["-p=s3cret"],
            &["--password", "s3cret"],
            &["--password=s3cret"],
            &["-vp", "s3cret"],
            &["-vvps3cret"],
        ] {
            let mut raw = vec!["mount", "--daemon", "-u", "carol"];
            raw.extend_from_slice(spelling);
            raw.extend_from_slice(&tail);
            let got = child(&raw);
            assert!(
                !got.iter().any(|a| a.contains("s3cret")),
                "{spelling:?} -> {got:?}"
            );
            assert!(!got.iter().any(|a| a == "--daemon"), "{got:?}");
            assert!(got.ends_with(&tail.map(String::from)), "{got:?}");
            assert_eq!(&got[..3], ["mount", "-u", "carol"], "{got:?}");
        }
        // A flag cluster before the password keeps its flags.
        assert_eq!(
            child(&["mount", "-vvp", "x", "r", "/m"]),
            ["mount", "-vv", "r", "/m"]
        );
        assert_eq!(
            child(&["mount", "--password-stdin", "-u", "c", "r", "/m"]),
            ["mount", "-u", "c", "r", "/m"]
        );
    }

    #[test]
    fn a_message_says_a_core_error_and_its_context_and_each_cause_once() {
        use anyhow::Context as _;
        let io = std::io::Error::other("disk on fire");
        let core = ocifs_core::Error::io("reading /c/x", io);
        let e = Err::<(), _>(core).context("cat r:1 f").unwrap_err();
        assert_eq!(message(&e), "cat r:1 f: reading /c/x: disk on fire");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(message(&plain), format!("{plain:#}"));
    }

    #[test]
    fn a_daemon_child_keeps_other_values_whatever_they_look_like() {
        // Values that look like the password flag belong to their option,
        // and everything after `--` is an operand: nothing is taken out.
        for kept in [
            &[
                "mount",
                "-u",
                "-p",
                "-o",
                "allow_other",
                "--log-file",
                "-px",
                "r",
                "/m",
            ][..],
            &["mount", "-uuser-p", "--root=-p", "r", "--", "-p", "/m"],
        ] {
            assert_eq!(child(kept), kept);
        }
    }
}

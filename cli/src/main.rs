//! `ocifs`: browse and mount OCI artifacts, fetching bytes on first read.

mod commands;
mod options;

use std::io::{self, Write as _};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use options::{CacheCmdArgs, CatArgs, InspectArgs, LsArgs, PrefetchArgs};

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

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show how a reference resolves: index entries, the chosen manifest, its layers.
    Inspect(InspectArgs),
    /// List the files of an artifact (reads only its manifest).
    Ls(LsArgs),
    /// Write a file of an artifact to stdout.
    Cat(CatArgs),
    /// Fill the cache with an artifact, or some of its files.
    Prefetch(PrefetchArgs),
    /// Look after the cache: du, ls, prune, verify.
    Cache(CacheCmdArgs),
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    // Our own crates get the level asked for; the HTTP stack one step less,
    // so -vvv does not dump connection internals.
    let filter = match (quiet, verbose) {
        (true, _) => "error".to_owned(),
        (false, 0) => "warn".to_owned(),
        (false, 1) => "warn,ocifs=info,ocifs_core=info".to_owned(),
        (false, 2) => "info,ocifs=debug,ocifs_core=debug,oci_client=debug".to_owned(),
        (false, _) => "debug,ocifs=trace,ocifs_core=trace,oci_client=debug,hyper=info,hyper_util=info,h2=info,rustls=info".to_owned(),
    };
    let filter = EnvFilter::try_from_env("OCIFS_LOG").unwrap_or_else(|_| EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(verbose >= 2)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ocifs: cannot start the async runtime: {e}");
            return ExitCode::from(ocifs_core::error::exit_code::OTHER);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Inspect(args) => commands::inspect(args).await,
            Command::Ls(args) => commands::ls(args).await,
            Command::Cat(args) => commands::cat(args).await,
            Command::Prefetch(args) => commands::prefetch(args).await,
            Command::Cache(args) => commands::cache(args).await,
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
            eprintln!("ocifs: {e:#}");
            ExitCode::from(exit_code_of(&e))
        }
    }
}

/// The exit code of the first core error in the chain, else "other".
fn exit_code_of(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|c| c.downcast_ref::<ocifs_core::Error>())
        .map_or(
            ocifs_core::error::exit_code::OTHER,
            ocifs_core::Error::exit_code,
        )
}

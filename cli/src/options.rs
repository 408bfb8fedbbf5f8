//! Command-line options shared by the commands, and turning them into a
//! source.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use ocifs_core::{Credentials, LayoutRef, LayoutSource, Platform, Reference, RegistryOptions, RegistrySource, RetryPolicy, Source};

/// Where the artifact is and how to reach it.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Read from an OCI image layout directory instead of REF (DIR[:TAG|@sha256:…]).
    #[arg(long, value_name = "DIR[:TAG|@DIGEST]")]
    pub oci_layout: Option<String>,

    /// Platform to choose from an index: os/arch[/variant][:os.version] (default: this machine's).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<Platform>,

    /// Talk to the registry over plain HTTP.
    #[arg(long)]
    pub plain_http: bool,

    /// Accept any TLS certificate from the registry.
    #[arg(long)]
    pub insecure: bool,

    /// Registry user name (default: from the docker or podman config).
    #[arg(short, long, requires = "password_source")]
    pub username: Option<String>,

    /// Registry password (prefer --password-stdin: a flag is visible in the process list).
    #[arg(short, long, group = "password_source")]
    pub password: Option<String>,

    /// Read the registry password from the first line of stdin.
    #[arg(long, group = "password_source")]
    pub password_stdin: bool,

    /// Give up on one registry operation, retries included, after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub timeout: f64,
}

/// An opened source with what was asked of it.
pub struct Opened {
    /// The source.
    pub source: Box<dyn Source>,
    /// The reference, as parsed.
    pub reference: Reference,
    /// `--platform`, if given.
    pub platform: Option<Platform>,
}

impl SourceArgs {
    /// Splits the operands into the reference and what follows it: with
    /// `--oci-layout` there is no REF operand.
    pub fn split<'a>(&self, operands: &'a [String]) -> (Option<&'a str>, &'a [String]) {
        match (&self.oci_layout, operands.split_first()) {
            (None, Some((first, rest))) => (Some(first.as_str()), rest),
            _ => (None, operands),
        }
    }

    fn parse_reference(&self, reference: Option<&str>) -> anyhow::Result<Reference> {
        match (reference, &self.oci_layout) {
            (Some(r), None) => Ok(Reference::parse(r)?),
            (None, Some(dir)) => Ok(Reference::Layout(LayoutRef::parse(dir)?)),
            (None, None) => bail!("no reference: give REF or --oci-layout DIR"),
            (Some(_), Some(_)) => bail!("give either REF or --oci-layout DIR, not both"),
        }
    }

    fn credentials(&self, registry: &str) -> anyhow::Result<Option<Credentials>> {
        let password = if self.password_stdin {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
            Some(line.trim_end_matches(['\r', '\n']).to_owned())
        } else {
            self.password.clone()
        };
        match (&self.username, password) {
            (Some(username), Some(password)) => Ok(Some(Credentials::Basic {
                username: username.clone(),
                password,
            })),
            (None, Some(_)) => bail!("--password needs --username"),
            (Some(_), None) => bail!("--username needs --password or --password-stdin"),
            (None, None) => Ok(ocifs_core::auth::lookup(registry)?),
        }
    }

    /// Parses the reference and opens its source (authenticating to a registry).
    pub async fn open(&self, reference: Option<&str>) -> anyhow::Result<Opened> {
        let reference = self.parse_reference(reference)?;
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            bail!("--timeout must be a positive number of seconds");
        }
        let total = Duration::from_secs_f64(self.timeout);
        let source: Box<dyn Source> = match &reference {
            Reference::Layout(l) => Box::new(LayoutSource::open(PathBuf::from(&l.path))?),
            Reference::Registry(r) => {
                let options = RegistryOptions {
                    plain_http: self.plain_http,
                    insecure: self.insecure,
                    credentials: self.credentials(&r.registry)?,
                    retry: RetryPolicy {
                        total,
                        ..RetryPolicy::default()
                    },
                    read_timeout: total.min(Duration::from_secs(30)),
                    connect_timeout: total.min(Duration::from_secs(10)),
                };
                Box::new(RegistrySource::connect(r, options).await?)
            }
        };
        Ok(Opened {
            source,
            reference,
            platform: self.platform.clone(),
        })
    }
}

/// `ocifs inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// REF (omit with --oci-layout).
    #[arg(value_name = "REF", num_args = 0..=1)]
    pub operands: Vec<String>,
    /// Print JSON (stable fields: `digest`, `layers`).
    #[arg(long)]
    pub json: bool,
}

/// `ocifs ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// REF, then the directory or file to list (default: the root).
    #[arg(value_name = "REF [PATH]", num_args = 0..=2)]
    pub operands: Vec<String>,
    /// Long format: mode, size, modification time, name.
    #[arg(short = 'l')]
    pub long: bool,
    /// List subdirectories too, with paths from PATH.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Print a JSON array of entries.
    #[arg(long)]
    pub json: bool,
}

/// `ocifs cat`.
#[derive(Debug, Args)]
pub struct CatArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// REF, then the file to write to stdout.
    #[arg(value_name = "REF PATH", num_args = 1..=2, required = true)]
    pub operands: Vec<String>,
}

//! Command-line options shared by the commands, and turning them into a
//! source.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use std::sync::Arc;

use ocifs_core::{CacheOptions, CachedSource, ChunkCache, DiskStore};
use ocifs_core::{
    ContentReader, Credentials, Endpoint, Error, Expand, ImageOptions, LayoutRef, LayoutSource,
    MirroredSource, Platform, Reference, RegistriesConf, RegistryOptions, RegistryRef,
    RegistrySource, Resolution, RetryPolicy, Source, Tree, Verify, View, ViewOptions,
};

/// Parses a byte size: `4096`, `512K`, `1M`, `1MiB`, `10G`, `1.5G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 512K, 256M, 10G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?} (K, M, G, T)")),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(v as u64)
}

/// How the artifact is shown: packages as directories, and from where.
#[derive(Debug, Args)]
pub struct ViewArgs {
    /// Show each zip, tar, tar.gz/tgz or tar.zst layer as a directory named
    /// by its title without the extension (ORAS directory layers always
    /// are): beside the archive file (keep, the default) or instead of it
    /// (replace).
    #[arg(
        long,
        value_name = "keep|replace",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "keep"
    )]
    pub expand: Option<Expand>,

    /// Show only this directory of the view, as its root (e.g. a package's
    /// bin directory); PATH operands are relative to it.
    #[arg(long, value_name = "PATH")]
    pub root: Option<String>,

    /// Show a container image's layers as files, not its root filesystem.
    #[arg(long)]
    pub layers: bool,

    /// Refuse an image layer with more entries than this.
    #[arg(long, value_name = "N", default_value_t = ocifs_core::internals::tar::MAX_LAYER_ENTRIES)]
    pub max_layer_entries: usize,
}

impl ViewArgs {
    /// Builds the view of `manifest` as these arguments ask
    /// ([`ocifs_core::View`]), reading packages and image layers through
    /// `cache`; entries and packages that cannot be shown are logged as
    /// warnings. `path` is the one the caller will use (relative to the
    /// root), if it is known: only the packages on the way there are read.
    pub async fn tree(
        &self,
        resolution: &Resolution,
        file_mode: u32,
        opened: &Opened,
        path: Option<&str>,
    ) -> anyhow::Result<Tree> {
        let view = View {
            options: ViewOptions {
                file_mode,
                expand: self.expand.unwrap_or_default(),
                ..ViewOptions::default()
            },
            layers: self.layers,
            image: ImageOptions {
                max_entries: self.max_layer_entries,
            },
            root: self.root.clone(),
            trust_referrers: opened.trust_referrers,
        };
        Ok(view
            .build(
                &resolution.manifest,
                Some(&resolution.digest),
                &opened.cache,
                path,
            )
            .await?)
    }
}

/// Where the cache is and how it behaves.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// The cache directory, shared by every ocifs process that names it
    /// [default: $OCIFS_CACHE, else (Windows) %LOCALAPPDATA%\ocifs, else
    /// $XDG_CACHE_HOME/ocifs, else ~/.cache/ocifs].
    #[arg(long, value_name = "DIR", env = "OCIFS_CACHE", global = true)]
    pub cache_dir: Option<PathBuf>,

    /// Evict least-recently-used blobs beyond this size on disk.
    #[arg(long, value_name = "SIZE", default_value = "10G", value_parser = parse_size, global = true)]
    pub cache_max_size: u64,
}

impl CacheArgs {
    /// The cache directory to use.
    pub fn dir(&self) -> anyhow::Result<PathBuf> {
        self.cache_dir
            .clone()
            .or_else(ocifs_core::default_dir)
            .context("no cache directory: set --cache-dir or $OCIFS_CACHE")
    }

    /// Opens the disk store.
    pub fn store(&self) -> anyhow::Result<Arc<DiskStore>> {
        let dir = self.dir()?;
        Ok(Arc::new(DiskStore::open(&dir).with_context(|| {
            format!("opening the cache at {}", dir.display())
        })?))
    }
}

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

    /// Retry a failed registry request this many times (within --timeout).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub retries: u32,

    /// Where containerd's per-registry hosts.toml files are
    /// (DIR/REGISTRY/hosts.toml, DIR/_default/hosts.toml): mirrors tried in
    /// order before the registry. Default: /etc/containerd/certs.d.
    #[arg(long, value_name = "DIR", env = "OCIFS_HOSTS_DIR")]
    pub hosts_dir: Option<PathBuf>,

    /// containers' registries.conf whose [[registry.mirror]] entries to use
    /// (and registries.conf.d/ beside it), where no hosts.toml names the
    /// registry. Default: /etc/containers/registries.conf.
    #[arg(long, value_name = "FILE", env = "CONTAINERS_REGISTRIES_CONF")]
    pub registries_conf: Option<PathBuf>,

    /// Ask the registry for push access too (`ocifs index`).
    #[arg(skip)]
    pub push: bool,

    /// What the config file says per registry.
    #[arg(skip)]
    pub registries: std::collections::BTreeMap<String, RegistryDefaults>,

    #[command(flatten)]
    pub cache: CacheArgs,

    /// strict: serve no byte before its blob's digest checked out (fetches a
    /// blob whole on first read); lazy: serve chunks as they arrive, check the
    /// blob once complete.
    #[arg(long, value_name = "MODE", default_value = "strict")]
    pub verify: Verify,

    /// Use an ocifs index a referrer of the manifest (OCI 1.1 `subject`)
    /// holds in strict mode too, as if the manifest named it: trust that
    /// whoever can push to this repository publishes true tables. Without
    /// it, referrers are used in lazy mode only.
    #[arg(long)]
    pub trust_referrers: bool,

    /// Use only what the cache holds; make no network request at all.
    #[arg(long)]
    pub offline: bool,

    /// Chunk size of reads and of the cache.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    pub chunk_size: u64,

    /// Memory cache budget for verified chunks. Small by default: a mount's
    /// readers have the kernel's page cache in front of it, and `cat` of a
    /// whole blob copies the checked file.
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size)]
    pub memory_cache_size: u64,

    /// With --verify lazy: fetch a blob up to this size whole in the
    /// background after its first read, so it is checked soon (and drop one
    /// not completed when the process ends); 0 turns it off.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub background_fetch_max: u64,

    /// Print the read counters (hits, misses, bytes fetched) to stderr at exit.
    #[arg(long)]
    pub stats: bool,
}

/// What the config file says of one registry (a flag can only turn these on).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryDefaults {
    /// Talk to it over plain HTTP.
    pub plain_http: bool,
    /// Accept any TLS certificate from it.
    pub insecure: bool,
    /// Mirrors to try first, in order.
    pub mirrors: Vec<String>,
}

/// The first line of stdin, without its line ending: `--password-stdin`.
pub fn read_password_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// An opened source with what was asked of it.
pub struct Opened {
    /// The source.
    pub source: Arc<dyn Source>,
    /// The cache reading through it.
    pub cache: ChunkCache,
    /// Files' contents, read through the cache.
    pub reader: Arc<ContentReader>,
    /// The reference, as parsed.
    pub reference: Reference,
    /// `--platform`, if given.
    pub platform: Option<Platform>,
    /// The registry itself, when the source is one and it was reached.
    pub registry: Option<Arc<RegistrySource>>,
    /// `--trust-referrers`.
    pub trust_referrers: bool,
}

impl Opened {
    /// `--stats`: the reader's counters, and the bytes that arrived from
    /// each host (`wire`), kept or not.
    pub fn stats_json(&self) -> String {
        use ocifs_core::Reader as _;
        let mut v = serde_json::to_value(self.reader.stats()).unwrap_or_default();
        if let serde_json::Value::Object(m) = &mut v {
            m.insert(
                "wire".into(),
                serde_json::to_value(self.reader.wire()).unwrap_or_default(),
            );
        }
        v.to_string()
    }
}

impl SourceArgs {
    /// Whether per-file progress lines are unwanted (`--stats` output is
    /// machine-read, so it is not mixed with them).
    pub fn quiet_progress(&self) -> bool {
        self.stats
    }

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
            Some(read_password_line()?)
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
            (None, None) => Ok(ocifs_core::lookup_credentials(registry)?),
        }
    }

    /// The hosts `r` is reached through when some file names mirrors for
    /// it: the config file's `mirrors`, else a hosts.toml, else
    /// registries.conf; `None` when none does (the registry alone).
    fn mirrored_hosts(
        &self,
        r: &RegistryRef,
        configured: &RegistryDefaults,
    ) -> anyhow::Result<Option<Vec<Endpoint>>> {
        if !configured.mirrors.is_empty() {
            let mut hosts = Vec::new();
            for url in &configured.mirrors {
                hosts.push(Endpoint::mirror(url).map_err(|e| {
                    anyhow::anyhow!("the mirrors of {} in the config file: {e}", r.registry)
                })?);
            }
            let mut origin = Endpoint::origin(&r.registry, configured.plain_http);
            if r.registry == ocifs_core::DOCKER_HUB {
                origin.host = "registry-1.docker.io".into();
            }
            hosts.push(origin);
            return Ok(Some(hosts));
        }
        let hosts_dir = self.hosts_dir.clone().unwrap_or_else(|| {
            if cfg!(windows) {
                let data =
                    std::env::var_os("ProgramData").unwrap_or_else(|| "C:\\ProgramData".into());
                PathBuf::from(data).join("containerd").join("certs.d")
            } else {
                PathBuf::from("/etc/containerd/certs.d")
            }
        });
        let hosts = match ocifs_core::hosts_toml_for(&hosts_dir, &r.registry)? {
            Some(h) => Some(h),
            None => {
                let file = self
                    .registries_conf
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/etc/containers/registries.conf"));
                RegistriesConf::load(&file)?.endpoints(&r.registry, &r.repository)?
            }
        };
        // A file that names the registry alone, as ocifs would reach it
        // anyway, changes nothing.
        let plain = Endpoint::origin(&r.registry, false);
        Ok(hosts.filter(
            |h| !matches!(h.as_slice(), [o] if Endpoint { file: None, ..o.clone() } == plain),
        ))
    }

    /// Parses the reference and opens its source (authenticating to a registry).
    pub async fn open(&self, reference: Option<&str>) -> anyhow::Result<Opened> {
        let reference = self.parse_reference(reference)?;
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            bail!("--timeout must be a positive number of seconds");
        }
        let total = Duration::from_secs_f64(self.timeout);
        let mut store = None;
        let mut reached = None;
        let source: Arc<dyn Source> = match &reference {
            Reference::Layout(l) => Arc::new(LayoutSource::open(PathBuf::from(&l.path))?),
            Reference::Registry(r) if self.offline => {
                let s = self.cache.store()?;
                store = Some(s.clone());
                Arc::new(CachedSource::offline(
                    s,
                    r.clone(),
                    "--offline forbids the network",
                ))
            }
            Reference::Registry(r) => {
                let s = self.cache.store()?;
                store = Some(s.clone());
                let configured = self
                    .registries
                    .get(&r.registry)
                    .cloned()
                    .unwrap_or_default();
                let mut options = RegistryOptions {
                    plain_http: self.plain_http || configured.plain_http,
                    insecure: self.insecure || configured.insecure,
                    retry: RetryPolicy {
                        total,
                        max_attempts: self.retries.saturating_add(1),
                        ..RetryPolicy::default()
                    },
                    read_timeout: total.min(Duration::from_secs(30)),
                    connect_timeout: total.min(Duration::from_secs(10)),
                    push: self.push,
                    ..RegistryOptions::default()
                };
                let hosts = if self.push {
                    // A publisher's pushes go to the registry itself.
                    None
                } else {
                    self.mirrored_hosts(r, &configured)?
                };
                if let Some(hosts) = hosts {
                    let mut chain = Vec::new();
                    for mut endpoint in hosts {
                        let mut o = options.clone();
                        if endpoint.origin {
                            endpoint.plain_http |= o.plain_http;
                            o.credentials = self.credentials(&r.registry)?;
                        } else {
                            o.credentials = ocifs_core::lookup_credentials(&endpoint.host)?;
                            o.insecure = false;
                        }
                        chain.push((endpoint, o));
                    }
                    let mirrored = Arc::new(MirroredSource::new(r, chain));
                    tracing::debug!(?mirrored, "reaching {} through its mirrors", r.registry);
                    Arc::new(CachedSource::online(mirrored, s, r.clone()))
                } else {
                    options.credentials = self.credentials(&r.registry)?;
                    match RegistrySource::connect(r, options).await {
                        Ok(registry) => {
                            let registry = Arc::new(registry);
                            reached = Some(registry.clone());
                            Arc::new(CachedSource::online(registry, s, r.clone()))
                        }
                        Err(e @ (Error::Unreachable { .. } | Error::Timeout { .. }))
                            if !self.push =>
                        {
                            tracing::warn!("{e}; serving what the cache holds");
                            Arc::new(CachedSource::offline(
                                s,
                                r.clone(),
                                format!("the registry is unreachable ({e})"),
                            ))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        };
        let options = CacheOptions {
            chunk_size: self.chunk_size,
            memory_budget: self.memory_cache_size,
            disk_budget: self.cache.cache_max_size,
            verify: self.verify,
            background_fetch_max: self.background_fetch_max,
            ..CacheOptions::default()
        };
        let layout = store.is_none();
        let cache = ChunkCache::new(source.clone(), store, options.clone())?;
        let reader = if layout {
            // A layout's blobs are read in place; its zstd layers' decoded
            // copies are kept in the cache directory (a zstd layer is
            // mostly one frame, decoded only from its start), if there is
            // one to be had.
            let copies = match self.cache.store() {
                Ok(s) => ChunkCache::new(
                    source.clone(),
                    Some(s),
                    CacheOptions {
                        copies_only: true,
                        ..options
                    },
                )
                .ok(),
                Err(e) => {
                    tracing::debug!(error = %e, "no cache directory: zstd layers of the layout are decoded per read");
                    None
                }
            };
            let reader = ContentReader::new(Arc::new(cache.clone()));
            match copies {
                Some(c) => reader.keeping_copies_in(c),
                None => reader,
            }
        } else {
            ContentReader::over_cache(&cache)
        };
        Ok(Opened {
            source,
            reader: Arc::new(reader),
            cache,
            reference,
            platform: self.platform.clone(),
            registry: reached,
            trust_referrers: self.trust_referrers,
        })
    }
}

/// `ocifs index`.
#[derive(Debug, Args)]
pub struct IndexArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// REF: the manifest to index (a platform's manifest, not an index of them).
    #[arg(value_name = "REF", num_args = 1)]
    pub operands: Vec<String>,
    /// Push a copy of REF's manifest that names the index under this tag:
    /// its digest then covers the index, and strict reads of it fetch only
    /// the chunks they read. Other clients see the same files and layers.
    #[arg(
        long,
        value_name = "TAG",
        required_unless_present = "attach",
        conflicts_with = "attach"
    )]
    pub bind: Option<String>,
    /// Push the index as a referrer of REF's manifest (OCI 1.1 `subject`;
    /// the `sha256-<hex>` fallback tag where the registry has no referrers
    /// API), leaving REF as it is. A referrer is not bound to REF: readers
    /// use it in lazy mode, and in strict mode only with --trust-referrers.
    #[arg(long)]
    pub attach: bool,
    /// Refuse an image layer with more entries than this.
    #[arg(long, value_name = "N", default_value_t = ocifs_core::internals::tar::MAX_LAYER_ENTRIES)]
    pub max_layer_entries: usize,
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
    #[command(flatten)]
    pub view: ViewArgs,
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

/// `ocifs prefetch`.
#[derive(Debug, Args)]
pub struct PrefetchArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub view: ViewArgs,
    /// REF, then the files or directories to fetch (default: everything).
    #[arg(value_name = "REF [PATH]...")]
    pub operands: Vec<String>,
}

/// `ocifs cache`.
#[derive(Debug, Args)]
pub struct CacheCmdArgs {
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(subcommand)]
    pub command: CacheCommand,
}

/// What to do with the cache.
#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Bytes used, complete and partial blobs.
    Du {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every blob: digest, state, size, bytes present, last use.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evict least-recently-used blobs down to a size (blobs in use are kept).
    Prune {
        /// Target size [default: --cache-max-size].
        #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "all")]
        max_size: Option<u64>,
        /// Remove everything not in use.
        #[arg(long)]
        all: bool,
    },
    /// Re-hash every complete blob; report and remove bad ones (exit 6 if any).
    Verify,
}

/// `ocifs cat`.
#[derive(Debug, Args)]
pub struct CatArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub view: ViewArgs,
    /// REF, then the file to write to stdout.
    #[arg(value_name = "REF PATH", num_args = 1..=2, required = true)]
    pub operands: Vec<String>,
}

/// `ocifs config`.
#[derive(Debug, Args)]
pub struct ConfigCmdArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// What to do with the settings.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the settings in effect (with these flags) and where each came
    /// from: a flag, the environment, a config file, or the default.
    Show(ConfigShowArgs),
}

/// `ocifs config show`.
#[derive(Debug, Args)]
pub struct ConfigShowArgs {
    #[command(flatten)]
    pub source: SourceArgs,
}

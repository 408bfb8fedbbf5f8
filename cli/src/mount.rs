//! `ocifs mount`, `ocifs umount`, `ocifs stats`.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use clap::Args;
#[cfg(target_os = "linux")]
use ocifs_core::Content;
#[cfg(any(target_os = "linux", windows))]
use {
    ocifs_core::{Tree, resolve},
    std::io::Write as _,
    std::path::Path,
    std::sync::Arc,
};

use crate::options::{SourceArgs, ViewArgs};

/// The line a `--daemon` child prints on stdout once its mount is live.
const READY: &str = "ocifs-mount-ready";

/// `ocifs mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub view: ViewArgs,

    /// REF, then the directory to mount on (with --oci-layout: only the directory).
    #[arg(value_name = "REF MOUNTPOINT", num_args = 1..=2, required = true)]
    pub operands: Vec<String>,

    /// Detach once the mount is live; exit non-zero, leaving nothing mounted, if it cannot be.
    #[arg(long)]
    pub daemon: bool,

    /// Mount options: allow_other (let other users in), default_permissions
    /// (the kernel checks modes); the mount is always ro, nosuid, nodev.
    #[arg(short = 'o', value_name = "OPT[,OPT…]", value_delimiter = ',')]
    pub mount_options: Vec<String>,

    /// Mode of files that carry none of their own (ORAS files), in octal; 0555 makes them executable.
    #[arg(long, value_name = "MODE", default_value = "0444", value_parser = parse_mode)]
    pub file_mode: u32,

    /// Never hand complete, verified blobs to the kernel to read directly (FUSE passthrough).
    #[arg(long)]
    pub no_passthrough: bool,

    /// Write logs to this file (the only place a daemon's logs go).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Once mounted, push the layer indexes and chunk tables this node built
    /// (from bytes that checked out) as a referrer of the manifest, unless
    /// one is there: other nodes then skip the first full stream of those
    /// layers. Needs push access to the repository; pushes go to the
    /// registry itself, never through a mirror.
    #[arg(long)]
    pub publish_index: bool,

    /// Internal: print the ready line when mounted (used by --daemon).
    #[arg(long, hide = true)]
    pub notify_ready: bool,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode such as 0444 or 0555"))?;
    if mode > 0o7777 {
        return Err(format!("{s:?} is not a file mode"));
    }
    // Never setuid/setgid: the mount is nosuid anyway, and so is the view.
    Ok(mode & 0o1777)
}

/// `ocifs umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The mount point.
    pub mountpoint: PathBuf,
    /// Detach now even if busy; the mount goes away when its last file closes (and this does not wait for its daemon).
    #[arg(short, long)]
    pub lazy: bool,
}

/// `ocifs stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The mount point.
    pub mountpoint: PathBuf,
}

/// Runs `ocifs mount --daemon`: re-runs itself in the foreground in a new
/// process group, relays its stderr until it is mounted or has failed, and
/// exits as it did.
///
/// A password never reaches the child's arguments or environment (both
/// readable by every local user under `/proc`): the child is told
/// `--password-stdin` and reads it from a pipe this process writes and closes.
/// `options` names the mount command's options that take a value, to tell a
/// password from the value of another option.
pub fn daemonize(args: &MountArgs, options: &ValueOptions, raw: &[String]) -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("finding the ocifs executable")?;
    let password = match (&args.source.password, args.source.password_stdin) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(crate::options::read_password_line()?),
        (None, false) => None,
    };
    let mut child_args = child_arguments(raw, options);
    // Options go before a `--`, after which everything is an operand.
    let mut added = vec!["--notify-ready".to_owned()];
    if password.is_some() {
        added.push("--password-stdin".into());
    }
    let at = child_args
        .iter()
        .position(|a| a == "--")
        .unwrap_or(child_args.len());
    child_args.splice(at..at, added);
    let mut child = {
        let mut c = Command::new(exe);
        c.args(&child_args)
            .stdin(if password.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The service manager's main process is this one, which exits:
            // a `Type=notify` unit runs `ocifs mount` without --daemon.
            .env_remove("NOTIFY_SOCKET");
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        c.spawn().context("starting the mount process")?
    };
    if let Some(password) = password {
        let mut stdin = child.stdin.take().context("child stdin")?;
        // The child reads one line; a child that died first is reported below.
        let _ = std::io::Write::write_all(&mut stdin, format!("{password}\n").as_bytes());
        drop(stdin);
    }
    let stderr = child.stderr.take().context("child stderr")?;
    let relay = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    let stdout = child.stdout.take().context("child stdout")?;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line == READY {
            // Mounted: leave the child running with its pipes closed.
            return Ok(0);
        }
    }
    let _ = relay.join();
    let status = child.wait().context("waiting for the mount process")?;
    Ok(status
        .code()
        .map_or(ocifs_core::exit_code::OTHER, |c| c.clamp(1, 255) as u8))
}

/// The options of `ocifs mount` that take a value, by short and long name.
#[derive(Debug, Default)]
pub struct ValueOptions {
    /// Short names (`-o`, `-u`, `-p`).
    pub shorts: Vec<char>,
    /// Long names, without the dashes.
    pub longs: Vec<String>,
}

impl ValueOptions {
    /// The value-taking options of a (built) clap command.
    pub fn of(command: &clap::Command) -> Self {
        let mut options = ValueOptions::default();
        for arg in command.get_arguments() {
            if !arg.get_action().takes_values() || arg.is_positional() {
                continue;
            }
            options.shorts.extend(arg.get_short());
            options.longs.extend(arg.get_long().map(str::to_owned));
        }
        options
    }
}

/// `raw` (the arguments after the program name) without `--daemon` and
/// without any password: `-p X`, `-pX`, `-p=X` (also inside a cluster of
/// short flags), `--password X`, `--password=X`, `--password-stdin`. Values
/// of other options are copied as they are, whatever they look like, and so
/// is everything after `--`.
pub(crate) fn child_arguments(raw: &[String], options: &ValueOptions) -> Vec<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            out.push(arg.clone());
            out.extend(rest.by_ref().cloned());
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            match name {
                "daemon" | "password-stdin" => {}
                "password" => {
                    if !inline {
                        rest.next();
                    }
                }
                _ => {
                    out.push(arg.clone());
                    if !inline && options.longs.iter().any(|l| l == name) {
                        out.extend(rest.next().cloned());
                    }
                }
            }
            continue;
        }
        let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) else {
            out.push(arg.clone());
            continue;
        };
        // A cluster of short flags, maybe ending in one that takes a value
        // (the rest of the cluster, or else the next argument).
        let taker = cluster
            .char_indices()
            .find(|(_, c)| options.shorts.contains(c));
        match taker {
            None => out.push(arg.clone()),
            Some((at, 'p')) => {
                if at > 0 {
                    out.push(format!("-{}", &cluster[..at]));
                }
                if cluster.len() == at + 1 {
                    rest.next();
                }
            }
            Some((at, c)) => {
                out.push(arg.clone());
                if cluster.len() == at + c.len_utf8() {
                    out.extend(rest.next().cloned());
                }
            }
        }
    }
    out
}

/// Opens the source, resolves the reference and builds the tree to mount.
#[cfg(any(target_os = "linux", windows))]
async fn open_view(
    args: &MountArgs,
    reference: Option<&str>,
) -> anyhow::Result<(crate::options::Opened, ocifs_core::Resolution, Arc<Tree>)> {
    if args.publish_index && args.source.offline {
        bail!("--publish-index pushes to the registry: --offline cannot be used with it");
    }
    let opened = args.source.open(reference).await?;
    let resolution = resolve(
        opened.source.as_ref(),
        &opened.reference,
        opened.platform.as_ref(),
    )
    .await?;
    let tree = args
        .view
        .tree(&resolution, args.file_mode, &opened, None)
        .await?;
    if args.publish_index {
        publish_in_background(&opened, &resolution)?;
    }
    Ok((opened, resolution, Arc::new(tree)))
}

/// `--publish-index`: the push runs beside the mount; its outcome is
/// logged, and a failure (no push access, say) never fails the mount.
fn publish_in_background(
    opened: &crate::options::Opened,
    resolution: &ocifs_core::Resolution,
) -> anyhow::Result<()> {
    let Some(registry) = opened.registry.clone() else {
        bail!(
            "--publish-index pushes to a registry; {} is not one",
            opened.reference
        );
    };
    let (cache, r) = (opened.cache.clone(), resolution.clone());
    tokio::spawn(async move {
        match crate::commands::publish_index(&registry, &cache, &r).await {
            Ok(Some(index)) => tracing::info!(%index, "published this node's index as a referrer"),
            Ok(None) => {}
            Err(e) => tracing::warn!("publishing the index failed: {e:#}"),
        }
    });
    Ok(())
}

/// Tells a waiting `--daemon` parent that the mount is live.
#[cfg(any(target_os = "linux", windows))]
fn notify_ready() -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    writeln!(out, "{READY}")?;
    out.flush()?;
    Ok(())
}

/// `ocifs mount` in the foreground: until unmounted, Ctrl-C or SIGTERM.
#[cfg(target_os = "linux")]
pub async fn mount(args: MountArgs) -> anyhow::Result<()> {
    let (reference, rest) = args.source.split(&args.operands);
    let [mountpoint] = rest else {
        bail!("mount takes REF and MOUNTPOINT");
    };
    let mountpoint = Path::new(mountpoint);
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{}: not a directory", mountpoint.display()),
        Err(e) => return Err(e).with_context(|| format!("mount point {}", mountpoint.display())),
    }
    let mut options = ocifs_fs_linux::MountOptions::default();
    for o in &args.mount_options {
        match o.as_str() {
            "allow_other" => options.allow_other = true,
            "default_permissions" => options.default_permissions = true,
            "ro" | "nosuid" | "nodev" => {}
            other => bail!("unknown mount option {other:?} (allow_other, default_permissions)"),
        }
    }
    let (opened, resolution, tree) = open_view(&args, reference).await?;
    options.fs_name = format!("ocifs:{}", opened.reference);
    options.passthrough = !args.no_passthrough;
    options.read_ahead = Some(args.source.chunk_size);
    // This process ends with the mount: `ocifs umount` waits for it.
    options.server_process = true;
    options.backing_files = Some(Arc::new(CompleteBlobs(opened.cache.clone())));
    let reader = opened.reader.clone();
    let mount = ocifs_fs_linux::mount(
        tree,
        reader,
        mountpoint,
        options,
        tokio::runtime::Handle::current(),
    )?;
    tracing::info!(reference = %opened.reference, digest = %resolution.digest, mountpoint = %mountpoint.display(), "mounted");
    if args.notify_ready {
        notify_ready()?;
    }
    crate::notify::notify("READY=1");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: unmounting"),
        _ = terminate.recv() => tracing::info!("terminated: unmounting"),
        () = mount.unmounted() => tracing::info!("unmounted"),
    }
    crate::notify::notify("STOPPING=1");
    let stats = mount.stats();
    tokio::task::spawn_blocking(move || mount.unmount()).await??;
    // Blobs that checked out and are still being moved into the cache get
    // there before the process ends.
    if let Err(e) = opened.cache.settle().await {
        tracing::warn!(error = %e, "a blob could not be kept in the cache");
    }
    opened.cache.close();
    if args.source.stats {
        // Not eprintln!: a daemon's stderr may be a closed pipe.
        let mut err = std::io::stderr();
        let _ = writeln!(err, "{}", opened.stats_json());
        let _ = writeln!(err, "{}", serde_json::to_string(&stats)?);
    }
    Ok(())
}

/// `ocifs mount` on Windows: projects the artifact into MOUNTPOINT with
/// ProjFS until Ctrl-C.
#[cfg(windows)]
pub async fn mount(args: MountArgs) -> anyhow::Result<()> {
    let (reference, rest) = args.source.split(&args.operands);
    let [mountpoint] = rest else {
        bail!("mount takes REF and MOUNTPOINT");
    };
    let (opened, _, tree) = open_view(&args, reference).await?;
    let reader = opened.reader.clone();
    let options = ocifs_fs_windows::MountOptions::default();
    let mount = ocifs_fs_windows::mount(
        tree,
        reader,
        Path::new(mountpoint),
        options,
        tokio::runtime::Handle::current(),
    )?;
    if args.notify_ready {
        notify_ready()?;
    }
    tokio::signal::ctrl_c().await?;
    mount.stop()?;
    if let Err(e) = opened.cache.settle().await {
        tracing::warn!(error = %e, "a blob could not be kept in the cache");
    }
    opened.cache.close();
    Ok(())
}

/// `ocifs mount` where there is no backend.
#[cfg(not(any(target_os = "linux", windows)))]
pub async fn mount(args: MountArgs) -> anyhow::Result<()> {
    let _ = args;
    bail!("ocifs mount is not available on this platform yet")
}

/// `ocifs umount`.
pub fn umount(args: UmountArgs) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    {
        ocifs_fs_linux::unmount(&args.mountpoint, args.lazy)?;
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = args;
        bail!("ocifs umount is not available on this platform yet")
    }
}

/// `ocifs stats`.
pub fn stats(args: StatsArgs) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    let name = ocifs_fs_linux::STATS_FILE;
    #[cfg(not(target_os = "linux"))]
    let name = ".ocifs-stats";
    let path = args.mountpoint.join(name);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: not an ocifs mount (no {name})",
            args.mountpoint.display()
        )
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

/// The files a mount hands the kernel (FUSE passthrough): whole blobs
/// complete and checked in the cache; a package entry's bytes are not a
/// file of their own. An open of a blob whose first read would wait for
/// the whole blob waits for it instead, and gets its file.
#[cfg(target_os = "linux")]
struct CompleteBlobs(ocifs_core::ChunkCache);

#[cfg(target_os = "linux")]
impl ocifs_fs_linux::BackingFiles for CompleteBlobs {
    fn backing_file(&self, content: &Content) -> Option<std::fs::File> {
        match content {
            Content::Blob(blob) => self.0.backing_file(blob),
            _ => None,
        }
    }

    fn whole_first(&self, content: &Content) -> Option<ocifs_fs_linux::WholeFirst> {
        let Content::Blob(blob) = content else {
            return None;
        };
        if !self.0.reads_wait_for_whole(blob) {
            return None;
        }
        let (cache, blob) = (self.0.clone(), (**blob).clone());
        // Answered once it checked out, not once it is synced into place.
        Some(Box::pin(async move { cache.ensure_verified(&blob).await }))
    }
}

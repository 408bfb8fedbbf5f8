//! The commands: `inspect`, `ls`, `cat`.

use std::time::UNIX_EPOCH;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use ocifs_core::Hasher;
use ocifs_core::{Content, NodeKind, Verify, format_time};
use ocifs_core::{Error, Kind, Resolution, Tree, ViewOptions, resolve};
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;

use ocifs_core::Reader as _;

use crate::options::{
    CacheCmdArgs, CacheCommand, CatArgs, IndexArgs, InspectArgs, LsArgs, Opened, PrefetchArgs,
    SourceArgs, ViewArgs,
};

async fn open_resolved(
    args: &SourceArgs,
    reference: Option<&str>,
) -> anyhow::Result<(Opened, Resolution)> {
    let opened = args.open(reference).await?;
    let resolution = resolve(
        opened.source.as_ref(),
        &opened.reference,
        opened.platform.as_ref(),
    )
    .await?;
    tracing::info!(reference = %opened.reference, digest = %resolution.digest, "resolved");
    Ok((opened, resolution))
}

/// Opens, resolves and builds the view; `path` is where the caller will
/// look (only packages on the way there are read), `None` for everywhere.
async fn open_tree(
    args: &SourceArgs,
    view: &ViewArgs,
    reference: Option<&str>,
    path: Option<&str>,
) -> anyhow::Result<(Opened, Resolution, Tree)> {
    let (opened, resolution) = open_resolved(args, reference).await?;
    let tree = view
        .tree(&resolution, ViewOptions::default().file_mode, &opened, path)
        .await?;
    Ok((opened, resolution, tree))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InspectJson<'a> {
    reference: &'a str,
    digest: String,
    media_type: &'a str,
    artifact_type: &'a str,
    size: u64,
    path: &'a [ocifs_core::IndexStep],
    config: &'a ocifs_core::Descriptor,
    layers: &'a [ocifs_core::Descriptor],
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: &'a std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<IndexJson>,
    /// Per layer digest, where its listing and checks come from.
    sources: std::collections::BTreeMap<String, String>,
}

/// What `inspect` says of a bound index.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson {
    digest: String,
    /// `bound`, `trusted referrer` or `referrer (lazy mode only)`.
    how: &'static str,
    /// Per layer digest: `chunk-table` or `layer-index`.
    parts: std::collections::BTreeMap<String, &'static str>,
    problems: Vec<String>,
}

/// Which index a layer's view and checks come from, in a word.
fn part_kind(media_type: &str) -> &'static str {
    if media_type.contains("layer-index") {
        "layer-index"
    } else {
        "chunk-table"
    }
}

/// `ocifs inspect`.
pub async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let (reference, _) = args.source.split(&args.operands);
    let (opened, r) = open_resolved(&args.source, reference).await?;
    let m = &r.manifest;
    let found =
        ocifs_core::find_index(m, Some(&r.digest), &opened.cache, opened.trust_referrers).await;
    let index = found.index.as_ref().map(|d| IndexJson {
        digest: d.to_string(),
        how: match found.how {
            Some(ocifs_core::IndexHow::Referrer { trusted: true }) => "trusted referrer",
            Some(ocifs_core::IndexHow::Referrer { trusted: false }) => "referrer (lazy mode only)",
            _ => "bound",
        },
        parts: found
            .parts
            .iter()
            .map(|(k, v)| (k.to_string(), part_kind(v)))
            .collect(),
        problems: found.problems.clone(),
    });
    if args.json {
        let json = InspectJson {
            reference: &r.reference,
            digest: r.digest.to_string(),
            media_type: &r.media_type,
            artifact_type: r.artifact_type(),
            size: r.size,
            path: &r.path,
            config: &m.config,
            layers: &m.layers,
            annotations: &m.annotations,
            index,
            sources: m
                .layers
                .iter()
                .map(|l| {
                    (
                        l.digest.to_string(),
                        ocifs_core::layer_source(l, &found, &opened.cache).to_string(),
                    )
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let mut out = String::new();
    out.push_str(&format!("Reference: {}\n", r.reference));
    for step in &r.path {
        let name = step
            .digest
            .as_ref()
            .map_or_else(|| "index.json".to_owned(), ToString::to_string);
        out.push_str(&format!("Index {name} ({})\n", step.media_type));
        for e in &step.entries {
            let mark = if e.digest == step.chosen { "*" } else { " " };
            let platform = e
                .platform
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string);
            let tag = e
                .ref_name()
                .map(|t| format!("  tag {t}"))
                .unwrap_or_default();
            out.push_str(&format!("  {mark} {platform:<32} {}{tag}\n", e.digest));
        }
    }
    out.push_str(&format!(
        "Manifest: {}\n  Media type: {}\n  Artifact type: {}\n  Size: {}\n",
        r.digest,
        r.media_type,
        r.artifact_type(),
        r.size
    ));
    out.push_str(&format!(
        "  Config: {} {} ({} bytes)\n",
        m.config.media_type, m.config.digest, m.config.size
    ));
    for (k, v) in &m.annotations {
        out.push_str(&format!("  Annotation {k}: {v}\n"));
    }
    if let Some(ix) = &index {
        out.push_str(&format!("Index ({}): {}\n", ix.how, ix.digest));
        for p in &ix.problems {
            out.push_str(&format!("  not used: {p}\n"));
        }
    }
    out.push_str(&format!("Layers: {}\n", m.layers.len()));
    for l in &m.layers {
        out.push_str(&format!(
            "  {} {:>12}  {}  {}\n",
            l.digest,
            l.size,
            l.media_type,
            l.title().unwrap_or("-")
        ));
        out.push_str(&format!(
            "      source: {}\n",
            ocifs_core::layer_source(l, &found, &opened.cache)
        ));
        for (k, v) in l
            .annotations
            .iter()
            .filter(|(k, _)| k.as_str() != ocifs_core::annotation::TITLE)
        {
            out.push_str(&format!("      {k}: {v}\n"));
        }
    }
    print!("{out}");
    Ok(())
}

fn mode_string(kind: &str, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        "dir" => 'd',
        "symlink" => 'l',
        "char" => 'c',
        "block" => 'b',
        "fifo" => 'p',
        _ => '-',
    });
    // setuid, setgid, sticky: shown in the x column of user, group, other.
    for (shift, special, marks) in [
        (6, 0o4000, ['s', 'S']),
        (3, 0o2000, ['s', 'S']),
        (0, 0o1000, ['t', 'T']),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (mode & special != 0, bits & 1 != 0) {
            (true, true) => marks[0],
            (true, false) => marks[1],
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `ocifs ls`.
pub async fn ls(args: LsArgs) -> anyhow::Result<()> {
    let (reference, rest) = args.source.split(&args.operands);
    let path = match rest {
        [] => "",
        [p] => p.as_str(),
        _ => bail!("ls takes REF and at most one PATH"),
    };
    let (opened, _, tree) = open_tree(&args.source, &args.view, reference, Some(path)).await?;
    let ino = tree.resolve_path(path)?;
    let entries: Vec<(ocifs_core::Ino, ocifs_core::Row)> = match tree.node(ino) {
        Some(n) if !n.is_dir() => vec![(ino, tree.row(ino))],
        _ if args.recursive => {
            let base = tree.path_of(ino);
            tree.walk(ino)
                .into_iter()
                .filter_map(|e| {
                    let i = tree.resolve_path(&e.path).ok()?;
                    let rel = e
                        .path
                        .strip_prefix(&base)
                        .unwrap_or(&e.path)
                        .trim_start_matches('/')
                        .to_owned();
                    Some((i, ocifs_core::Row { path: rel, ..e }))
                })
                .collect()
        }
        _ => tree
            .children(ino)
            .map(|(name, i)| {
                (
                    i,
                    ocifs_core::Row {
                        path: name.to_owned(),
                        ..tree.row(i)
                    },
                )
            })
            .collect(),
    };
    let mut out = String::new();
    if args.json {
        let rows: Vec<&ocifs_core::Row> = entries.iter().map(|(_, e)| e).collect();
        out = serde_json::to_string_pretty(&rows)?;
        out.push('\n');
    } else {
        for (i, e) in &entries {
            let suffix = match (e.kind, &e.target) {
                ("dir", _) => "/".to_owned(),
                (_, Some(target)) if args.long => format!(" -> {target}"),
                _ => String::new(),
            };
            if args.long {
                let mtime = tree.node(*i).map_or(UNIX_EPOCH, |n| n.mtime);
                let owner = match (e.uid, e.gid) {
                    (Some(u), Some(g)) => format!(" {u:>5} {g:>5}"),
                    _ => String::new(),
                };
                let size = match (e.major, e.minor) {
                    (Some(major), Some(minor)) => format!("{major:>5}, {minor:>5}"),
                    _ => e.size.to_string(),
                };
                out.push_str(&format!(
                    "{}{owner} {size:>12} {} {}{suffix}\n",
                    mode_string(e.kind, e.mode),
                    format_time(mtime),
                    e.path
                ));
            } else {
                out.push_str(&format!("{}{suffix}\n", e.path));
            }
        }
    }
    let mut stdout = tokio::io::stdout();
    stdout.write_all(out.as_bytes()).await?;
    stdout.flush().await?;
    print_stats(&args.source, &opened);
    Ok(())
}

/// Prints the counters to stderr if `--stats` asked for them.
fn print_stats(args: &SourceArgs, opened: &Opened) {
    if args.stats {
        eprintln!("{}", opened.stats_json());
    }
}

/// How much `cat` reads at a time.
const CAT_PIECE: u64 = 1 << 20;

/// Pieces `cat` reads ahead of the one it writes.
const CAT_AHEAD: usize = 4;

/// `ocifs cat`.
pub async fn cat(args: CatArgs) -> anyhow::Result<()> {
    let (reference, rest) = args.source.split(&args.operands);
    let [path] = rest else {
        bail!("cat takes REF and one PATH");
    };
    let (opened, _, tree) = open_tree(&args.source, &args.view, reference, Some(path)).await?;
    let ino = tree.resolve_follow(path)?;
    let node = tree
        .node(ino)
        .with_context(|| format!("{path}: no such file"))?;
    let NodeKind::File(content) = &node.kind else {
        return Err(Error::WrongKind {
            path: path.clone(),
            kind: Kind::IsDirectory,
        }
        .into());
    };
    let size = content.size();
    // A whole blob, strict: once it is complete and every chunk of its file
    // checked, the file is copied to the output by the kernel (sendfile or
    // copy_file_range), as passthrough hands it to a mount's readers.
    if let Content::Blob(blob) = content
        && args.source.verify == Verify::Strict
    {
        // Served once it checked out; it is synced into the cache while
        // it is copied out (and before this process ends, below).
        opened.cache.ensure_verified(blob).await?;
        let (cache, b) = (opened.cache.clone(), (**blob).clone());
        let copied = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<u64>> {
            let Some(mut file) = cache.checked_file(&b)? else {
                return Ok(None);
            };
            let mut out = std::io::stdout().lock();
            let n = std::io::copy(&mut file, &mut out)?;
            std::io::Write::flush(&mut out)?;
            Ok(Some(n))
        })
        .await??;
        opened.cache.settle().await?;
        if let Some(n) = copied {
            print_stats(&args.source, &opened);
            if n != blob.size {
                return Err(Error::ShortRead {
                    digest: blob.digest.to_string(),
                    offset: n,
                    expected: blob.size,
                    got: n,
                }
                .into());
            }
            return Ok(());
        }
    }
    // Strict mode: the cache serves nothing before the blob checked out, so
    // the output is never wrong. Lazy mode: bytes stream as they come, and
    // the hash here still turns a bad blob into exit status 6 (a package
    // entry is checked by the reader: a zip entry against its CRC-32).
    let mut hasher = Hasher::new();
    let mut stdout = tokio::io::stdout();
    let mut offset = 0;
    // The next pieces are read while this one is hashed and written.
    let reader = &opened.reader;
    let mut pieces = futures_util::stream::iter((0..size).step_by(CAT_PIECE as usize))
        .map(|at| async move { (at, reader.read(content, at, CAT_PIECE).await) })
        .buffered(CAT_AHEAD);
    while let Some((at, piece)) = pieces.next().await {
        let piece = piece?;
        // Pieces are asked for at fixed offsets: one cut short (never
        // but at the end) ends the output there, never leaves a gap.
        if at != offset || piece.is_empty() {
            break;
        }
        hasher.update(&piece);
        stdout.write_all(&piece).await?;
        offset += piece.len() as u64;
    }
    stdout.flush().await?;
    opened.cache.settle().await?;
    let actual = hasher.finish();
    print_stats(&args.source, &opened);
    let Content::Blob(blob) = content else {
        if offset != size {
            return Err(Error::ShortRead {
                digest: content.blob().digest.to_string(),
                offset,
                expected: size,
                got: offset,
            }
            .into());
        }
        return Ok(());
    };
    if offset != blob.size || actual != blob.digest {
        opened.cache.discard(blob);
        return Err(Error::digest_mismatch(
            format!("{path} (the output written is corrupt)"),
            &blob.digest,
            actual,
        )
        .into());
    }
    Ok(())
}

/// `ocifs prefetch`.
pub async fn prefetch(args: PrefetchArgs) -> anyhow::Result<()> {
    let (reference, paths) = args.source.split(&args.operands);
    let only = match paths {
        [one] => Some(one.as_str()),
        _ => None,
    };
    let (opened, _, tree) = open_tree(&args.source, &args.view, reference, only).await?;
    let roots: Vec<ocifs_core::Ino> = if paths.is_empty() {
        vec![Tree::ROOT]
    } else {
        paths
            .iter()
            .map(|p| tree.resolve_path(p))
            .collect::<Result<_, _>>()?
    };
    let mut blobs: Vec<(String, ocifs_core::Descriptor)> = Vec::new();
    for root in roots {
        let mut inos = vec![root];
        inos.extend(
            tree.walk(root)
                .iter()
                .filter_map(|e| tree.resolve_path(&e.path).ok()),
        );
        for ino in inos {
            if let Some(NodeKind::File(content)) = tree.node(ino).map(|n| &n.kind)
                && !blobs.iter().any(|(_, b)| b.digest == content.blob().digest)
            {
                blobs.push((tree.path_of(ino), content.blob().clone()));
            }
        }
    }
    let total: u64 = blobs.iter().map(|(_, b)| b.size).sum();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:20!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let interactive = !bar.is_hidden();
    let mut done = 0;
    for (path, blob) in &blobs {
        bar.set_message(path.clone());
        let before = opened
            .cache
            .counters()
            .bytes_fetched
            .load(std::sync::atomic::Ordering::Relaxed);
        let fetch = opened.cache.prefetch(blob);
        tokio::pin!(fetch);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        let result = loop {
            tokio::select! {
                r = &mut fetch => break r,
                _ = tick.tick() => {
                    let now = opened.cache.counters().bytes_fetched.load(std::sync::atomic::Ordering::Relaxed);
                    bar.set_position(done + (now - before).min(blob.size));
                }
            }
        };
        result.with_context(|| format!("prefetching {path}"))?;
        done += blob.size;
        bar.set_position(done);
        if !interactive && !args.source.quiet_progress() {
            let fetched = opened
                .cache
                .counters()
                .bytes_fetched
                .load(std::sync::atomic::Ordering::Relaxed)
                - before;
            eprintln!(
                "ocifs: {path}: {} bytes cached ({fetched} fetched)",
                blob.size
            );
        }
    }
    bar.finish_and_clear();
    print_stats(&args.source, &opened);
    Ok(())
}

/// `ocifs cache`.
pub async fn cache(args: CacheCmdArgs) -> anyhow::Result<()> {
    let store = args.cache.store()?;
    match args.command {
        CacheCommand::Du { json } => {
            let blobs = store.list()?;
            let complete: Vec<_> = blobs.iter().filter(|b| b.state == "complete").collect();
            let partial: Vec<_> = blobs.iter().filter(|b| b.state == "partial").collect();
            let used: u64 = blobs.iter().map(|b| b.present).sum();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "dir": store.root(),
                        "bytes": used,
                        "budget": args.cache.cache_max_size,
                        "completeBlobs": complete.len(),
                        "completeBytes": complete.iter().map(|b| b.present).sum::<u64>(),
                        "partialBlobs": partial.len(),
                        "partialBytes": partial.iter().map(|b| b.present).sum::<u64>(),
                    })
                );
            } else {
                println!(
                    "{used}\t{} ({} complete blobs, {} partial; budget {})",
                    store.root().display(),
                    complete.len(),
                    partial.len(),
                    args.cache.cache_max_size
                );
            }
        }
        CacheCommand::Ls { json } => {
            let blobs = store.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&blobs)?);
            } else {
                for b in blobs {
                    let used =
                        format_time(UNIX_EPOCH + std::time::Duration::from_secs(b.last_used));
                    println!(
                        "{} {:>8} {:>12} {:>12} {used}",
                        b.digest, b.state, b.size, b.present
                    );
                }
            }
        }
        CacheCommand::Prune { max_size, all } => {
            let target = if all {
                0
            } else {
                max_size.unwrap_or(args.cache.cache_max_size)
            };
            let freed = store.evict_to(target, &|_| false)?;
            println!("freed {freed} bytes; {} bytes remain", store.usage()?);
        }
        CacheCommand::Verify => {
            store.settle_partials(|d, what| println!("{d}: {what}"))?;
            let bad = store.verify_all(|d, ok| {
                if !ok {
                    eprintln!("ocifs: {d}: digest mismatch, removed");
                }
            })?;
            let checked = store
                .list()?
                .iter()
                .filter(|b| b.state == "complete")
                .count()
                + bad.len();
            if let Some(first) = bad.first() {
                return Err(Error::digest_mismatch(
                    format!("{} of {checked} cached blobs (removed)", bad.len()),
                    first,
                    "other content",
                )
                .into());
            }
            println!("{checked} blobs verified");
        }
    }
    Ok(())
}

/// Pushes an index of `parts` as a referrer of `r`'s manifest (its
/// `subject`): its blobs, then its manifest, by the referrers API or in the
/// fallback tag. Returns the artifact and whether the referrers API took it.
async fn attach_index(
    registry: &ocifs_core::RegistrySource,
    r: &Resolution,
    parts: &[ocifs_core::IndexPart],
) -> anyhow::Result<(ocifs_core::IndexArtifact, bool)> {
    let subject = ocifs_core::Descriptor {
        media_type: r.media_type.clone(),
        digest: r.digest.clone(),
        size: r.size,
        annotations: Default::default(),
        platform: None,
        artifact_type: None,
        urls: Vec::new(),
    };
    let artifact = ocifs_core::index_artifact(parts, Some(&subject));
    for (digest, bytes) in &artifact.blobs {
        registry.push_blob(digest, bytes.clone()).await?;
    }
    let api = registry
        .push_referrer(
            artifact.manifest.clone(),
            &r.digest,
            ocifs_core::INDEX_ARTIFACT_TYPE,
        )
        .await?;
    Ok((artifact, api))
}

/// `ocifs mount --publish-index`: once the mount is up, attaches what this
/// node's cache holds of the manifest's index (each layer index it built
/// from verified bytes, each complete blob's chunk table) as a referrer,
/// unless an index is found there already. Other nodes then find it
/// (lazy mode always, strict with `--trust-referrers`) and skip the first
/// full stream of those layers. Returns the index pushed, if one was.
pub async fn publish_index(
    registry: &ocifs_core::RegistrySource,
    cache: &ocifs_core::ChunkCache,
    r: &Resolution,
) -> anyhow::Result<Option<String>> {
    let found = ocifs_core::find_index(&r.manifest, Some(&r.digest), cache, true).await;
    if let Some(index) = found.index {
        tracing::info!(%index, "an index of this manifest is published already; not publishing another");
        return Ok(None);
    }
    // It may hash complete blobs (their sha256 tables): off the runtime's
    // workers.
    let parts = tokio::task::block_in_place(|| ocifs_core::index_at_hand(&r.manifest, cache));
    if parts.is_empty() {
        tracing::info!(
            "this node holds no layer index or chunk table of the manifest yet: nothing to publish"
        );
        return Ok(None);
    }
    let (artifact, _) = attach_index(registry, r, &parts).await?;
    Ok(Some(format!("{} ({} parts)", artifact.digest, parts.len())))
}

/// `ocifs index`: computes the index of REF's manifest (each blob read
/// once, strictly verified), pushes it, and binds it to a copy of the
/// manifest pushed under `--bind`'s tag.
pub async fn index(mut args: IndexArgs) -> anyhow::Result<()> {
    if args.source.verify != Verify::Strict {
        bail!(
            "ocifs index reads with --verify strict only: its tables are taken from verified bytes"
        );
    }
    if args.source.offline {
        bail!("ocifs index pushes to the registry: --offline cannot be used");
    }
    args.source.push = true;
    let (reference, _) = args.source.split(&args.operands);
    let (opened, r) = open_resolved(&args.source, reference).await?;
    let Some(registry) = opened.registry.clone() else {
        bail!(
            "ocifs index pushes to a registry; {} is not one",
            opened.reference
        );
    };
    if let Some(step) = r.path.last() {
        bail!(
            "{} is an index of manifests; give the manifest to index by its digest \
             ({}@{} for this platform): the tag bound then names that manifest alone",
            r.reference,
            registry.reference().name(),
            step.chosen
        );
    }
    let options = ocifs_core::ImageOptions {
        max_entries: args.max_layer_entries,
    };
    let parts = ocifs_core::make_index(&r.manifest, &opened.cache, &options).await?;
    let bytes: u64 = parts.iter().map(|p| p.bytes.len() as u64).sum();
    if args.attach {
        let (artifact, api) = attach_index(&registry, &r, &parts).await?;
        println!(
            "index {} ({} parts, {bytes} bytes)",
            artifact.digest,
            parts.len()
        );
        println!(
            "attached to {}@{} ({})",
            registry.reference().name(),
            r.digest,
            if api {
                "the registry's referrers API"
            } else {
                "no referrers API: listed in the fallback tag"
            }
        );
        return Ok(());
    }
    let artifact = ocifs_core::index_artifact(&parts, None);
    for (digest, bytes) in &artifact.blobs {
        registry.push_blob(digest, bytes.clone()).await?;
    }
    registry
        .push_manifest(
            &artifact.digest.to_string(),
            ocifs_core::media_type::OCI_MANIFEST,
            artifact.manifest.clone(),
        )
        .await?;
    println!(
        "index {} ({} parts, {bytes} bytes)",
        artifact.digest,
        parts.len()
    );
    if let Some(tag) = &args.bind {
        let raw = opened
            .source
            .manifest(&ocifs_core::Selector::Digest(r.digest.clone()))
            .await?;
        let bound = ocifs_core::bind_index(&raw.bytes, &artifact.digest)?;
        let digest = registry
            .push_manifest(tag, &r.media_type, bound.into())
            .await?;
        println!("bound {}:{tag}@{digest}", registry.reference().name());
    }
    Ok(())
}

//! The commands: `inspect`, `ls`, `cat`.

use std::time::UNIX_EPOCH;

use anyhow::{Context as _, bail};
use futures_util::TryStreamExt as _;
use ocifs_core::digest::Hasher;
use ocifs_core::view::{Content, NodeKind, format_time};
use ocifs_core::{Error, Resolution, Tree, ViewOptions, resolve};
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;

use crate::options::{CatArgs, InspectArgs, LsArgs, Opened, SourceArgs};

/// Files up to this size are held back until their digest checks out, so
/// that a consumer never sees complete-looking wrong output. Larger files
/// stream; a mismatch then shows only in the exit status.
const VERIFY_BEFORE_WRITE: u64 = 64 * 1024 * 1024;

async fn open_resolved(args: &SourceArgs, reference: Option<&str>) -> anyhow::Result<(Opened, Resolution)> {
    let opened = args.open(reference).await?;
    let resolution = resolve(opened.source.as_ref(), &opened.reference, opened.platform.as_ref()).await?;
    tracing::info!(reference = %opened.reference, digest = %resolution.digest, "resolved");
    Ok((opened, resolution))
}

async fn open_tree(args: &SourceArgs, reference: Option<&str>) -> anyhow::Result<(Opened, Resolution, Tree)> {
    let (opened, resolution) = open_resolved(args, reference).await?;
    let tree = Tree::from_artifact(&resolution.manifest, &ViewOptions::default())?;
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
    path: &'a [ocifs_core::resolve::IndexStep],
    config: &'a ocifs_core::Descriptor,
    layers: &'a [ocifs_core::Descriptor],
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: &'a std::collections::BTreeMap<String, String>,
}

/// `ocifs inspect`.
pub async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let (reference, _) = args.source.split(&args.operands);
    let (_, r) = open_resolved(&args.source, reference).await?;
    let m = &r.manifest;
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
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let mut out = String::new();
    out.push_str(&format!("Reference: {}\n", r.reference));
    for step in &r.path {
        let name = step.digest.as_ref().map_or_else(|| "index.json".to_owned(), ToString::to_string);
        out.push_str(&format!("Index {name} ({})\n", step.media_type));
        for e in &step.entries {
            let mark = if e.digest == step.chosen { "*" } else { " " };
            let platform = e.platform.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string);
            let tag = e.ref_name().map(|t| format!("  tag {t}")).unwrap_or_default();
            out.push_str(&format!("  {mark} {platform:<32} {}{tag}\n", e.digest));
        }
    }
    out.push_str(&format!("Manifest: {}\n  Media type: {}\n  Artifact type: {}\n  Size: {}\n", r.digest, r.media_type, r.artifact_type(), r.size));
    out.push_str(&format!("  Config: {} {} ({} bytes)\n", m.config.media_type, m.config.digest, m.config.size));
    for (k, v) in &m.annotations {
        out.push_str(&format!("  Annotation {k}: {v}\n"));
    }
    out.push_str(&format!("Layers: {}\n", m.layers.len()));
    for l in &m.layers {
        out.push_str(&format!("  {} {:>12}  {}  {}\n", l.digest, l.size, l.media_type, l.title().unwrap_or("-")));
        for (k, v) in l.annotations.iter().filter(|(k, _)| k.as_str() != ocifs_core::manifest::annotation::TITLE) {
            out.push_str(&format!("      {k}: {v}\n"));
        }
    }
    print!("{out}");
    Ok(())
}

fn mode_string(is_dir: bool, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(if is_dir { 'd' } else { '-' });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
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
    let (_, _, tree) = open_tree(&args.source, reference).await?;
    let ino = tree.resolve_path(path)?;
    let entries: Vec<(ocifs_core::Ino, ocifs_core::view::Entry)> = match tree.node(ino) {
        Some(n) if !n.is_dir() => vec![(ino, tree.entry(ino))],
        _ if args.recursive => {
            let base = tree.path_of(ino);
            tree.walk(ino)
                .into_iter()
                .filter_map(|e| {
                    let i = tree.resolve_path(&e.path).ok()?;
                    let rel = e.path.strip_prefix(&base).unwrap_or(&e.path).trim_start_matches('/').to_owned();
                    Some((i, ocifs_core::view::Entry { path: rel, ..e }))
                })
                .collect()
        }
        _ => tree
            .children(ino)
            .map(|(name, i)| (i, ocifs_core::view::Entry { path: name.to_owned(), ..tree.entry(i) }))
            .collect(),
    };
    let mut out = String::new();
    if args.json {
        let rows: Vec<&ocifs_core::view::Entry> = entries.iter().map(|(_, e)| e).collect();
        out = serde_json::to_string_pretty(&rows)?;
        out.push('\n');
    } else {
        for (i, e) in &entries {
            let suffix = if e.kind == "dir" { "/" } else { "" };
            if args.long {
                let mtime = tree.node(*i).map_or(UNIX_EPOCH, |n| n.mtime);
                out.push_str(&format!("{} {:>12} {} {}{suffix}\n", mode_string(e.kind == "dir", e.mode), e.size, format_time(mtime), e.path));
            } else {
                out.push_str(&format!("{}{suffix}\n", e.path));
            }
        }
    }
    let mut stdout = tokio::io::stdout();
    stdout.write_all(out.as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}

/// `ocifs cat`.
pub async fn cat(args: CatArgs) -> anyhow::Result<()> {
    let (reference, rest) = args.source.split(&args.operands);
    let [path] = rest else {
        bail!("cat takes REF and one PATH");
    };
    let (opened, _, tree) = open_tree(&args.source, reference).await?;
    let ino = tree.resolve_path(path)?;
    let node = tree.node(ino).with_context(|| format!("{path}: no such file"))?;
    let NodeKind::File(Content::Blob(blob)) = &node.kind else {
        return Err(Error::WrongKind {
            path: path.clone(),
            reason: "is a directory",
        }
        .into());
    };
    let mut stream = opened.source.stream(blob).await?;
    let mut hasher = Hasher::new();
    let mut stdout = tokio::io::stdout();
    let hold = blob.size <= VERIFY_BEFORE_WRITE;
    let mut held = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        if hasher.len() + chunk.len() as u64 > blob.size {
            return Err(Error::DigestMismatch {
                what: format!("{path} (blob {})", blob.digest),
                expected: format!("{} bytes", blob.size),
                actual: "more bytes than the descriptor's size".into(),
            }
            .into());
        }
        hasher.update(&chunk);
        if hold {
            held.extend_from_slice(&chunk);
        } else {
            stdout.write_all(&chunk).await?;
        }
    }
    if hasher.len() < blob.size {
        return Err(Error::ShortRead {
            digest: blob.digest.to_string(),
            offset: 0,
            expected: blob.size,
            got: hasher.len(),
        }
        .into());
    }
    let actual = hasher.finish();
    if actual != blob.digest {
        return Err(Error::DigestMismatch {
            what: format!("{path} ({})", if hold { "nothing was written" } else { "the output written is corrupt" }),
            expected: blob.digest.to_string(),
            actual: actual.to_string(),
        }
        .into());
    }
    stdout.write_all(&held).await?;
    stdout.flush().await?;
    Ok(())
}

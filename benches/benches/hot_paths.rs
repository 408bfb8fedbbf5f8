//! Micro-benchmarks of the hot paths: a chunk-cache hit, a tree lookup.
//! `cargo bench -p ocifs-benches --bench hot_paths`.
//!
//! (The gzip seek-point resume and the tar index build join these when the
//! image support lands.)

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ocifs_core::cache::{CacheOptions, ChunkCache};
use ocifs_core::manifest::{Descriptor, Manifest, annotation};
use ocifs_core::{Content, Digest, LayoutSource, Reader as _, Tree, Verify, ViewOptions};

/// A one-blob OCI layout in a temp dir, and the blob's descriptor.
fn layout(blob: &[u8]) -> (tempfile::TempDir, Arc<LayoutSource>, Descriptor) {
    let dir = tempfile::tempdir().expect("tempdir");
    let digest = Digest::of(blob);
    std::fs::create_dir_all(dir.path().join("blobs/sha256")).expect("mkdir");
    std::fs::write(dir.path().join("blobs/sha256").join(digest.hex()), blob).expect("blob");
    std::fs::write(
        dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("marker");
    std::fs::write(
        dir.path().join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .expect("index");
    let source = Arc::new(LayoutSource::open(dir.path()).expect("layout"));
    let desc = descriptor(digest, blob.len() as u64, None);
    (dir, source, desc)
}

fn descriptor(digest: Digest, size: u64, title: Option<String>) -> Descriptor {
    Descriptor {
        media_type: "application/octet-stream".into(),
        digest,
        size,
        annotations: title
            .map(|t| BTreeMap::from([(annotation::TITLE.to_owned(), t)]))
            .unwrap_or_default(),
        platform: None,
        artifact_type: None,
        urls: vec![],
    }
}

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let blob: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (_dir, source, desc) = layout(&blob);
    let cache = ChunkCache::new(
        source,
        None,
        CacheOptions {
            verify: Verify::Strict,
            ..CacheOptions::default()
        },
    )
    .expect("cache");
    let content = Content::Blob(desc);
    // Warm: verified, every chunk in memory.
    rt.block_on(cache.read(&content, 0, 8 << 20)).expect("warm");
    let mut group = c.benchmark_group("chunk cache hit");
    for len in [4096u64, 128 * 1024, 1 << 20] {
        group.throughput(Throughput::Bytes(len));
        group.bench_function(format!("read {len} bytes"), |b| {
            let mut offset = 0u64;
            b.iter(|| {
                offset = (offset + 1_234_567) % ((8 << 20) - len);
                black_box(
                    rt.block_on(cache.read(&content, offset, len))
                        .expect("read"),
                )
            })
        });
    }
    group.finish();
}

fn tree_lookup(c: &mut Criterion) {
    let layers: Vec<Descriptor> = (0..10_000u32)
        .map(|i| {
            descriptor(
                Digest::of(&i.to_le_bytes()),
                1,
                Some(format!("dir{}/sub{}/file{i}.bin", i % 100, i % 7)),
            )
        })
        .collect();
    let manifest = Manifest {
        schema_version: 2,
        media_type: None,
        artifact_type: None,
        config: descriptor(Digest::of(b"{}"), 2, None),
        layers,
        annotations: BTreeMap::new(),
    };
    c.bench_function("build a tree of 10,000 files", |b| {
        b.iter(|| black_box(Tree::from_artifact(&manifest, &ViewOptions::default()).expect("tree")))
    });
    let tree = Tree::from_artifact(&manifest, &ViewOptions::default()).expect("tree");
    let mut i = 0u32;
    c.bench_function("resolve a path in a tree of 10,000 files", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            black_box(
                tree.resolve_path(&format!("dir{}/sub{}/file{i}.bin", i % 100, i % 7))
                    .expect("path"),
            )
        })
    });
}

criterion_group!(benches, cache_hit, tree_lookup);
criterion_main!(benches);

//! Micro-benchmarks of the hot paths: a chunk-cache hit, the check of a
//! chunk read from disk, a tree lookup, a read resumed at a gzip seek point.
//! `cargo bench -p ocifs-benches --bench hot_paths`.
//!
//! (The tar index build joins these when the layer walker lands.)

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ocifs_core::internals::gzip::{self, GzipIndexer};
use ocifs_core::internals::tar as toc;
use ocifs_core::internals::{ChunkHash, ChunkTable, check_chunk};
use ocifs_core::{BlobReader as _, CacheOptions, ChunkCache};
use ocifs_core::{Descriptor, Manifest, annotation};
use ocifs_core::{Digest, LayoutSource, Tree, Verify, ViewOptions};

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
    let content = desc;
    // Warm: verified, every chunk in memory.
    rt.block_on(cache.read_blob(&content, 0, 8 << 20))
        .expect("warm");
    let mut group = c.benchmark_group("chunk cache hit");
    for len in [4096u64, 128 * 1024, 1 << 20] {
        group.throughput(Throughput::Bytes(len));
        group.bench_function(format!("read {len} bytes"), |b| {
            let mut offset = 0u64;
            b.iter(|| {
                offset = (offset + 1_234_567) % ((8 << 20) - len);
                black_box(
                    rt.block_on(cache.read_blob(&content, offset, len))
                        .expect("read"),
                )
            })
        });
    }
    group.finish();
}

/// What checking a chunk costs: read from disk (bytes at rest, the first
/// time a process reads them), against the cache's own table (BLAKE3);
/// fetched alone, against a published table (sha256), as before at rest.
fn chunk_check(c: &mut Criterion) {
    const CHUNK: usize = 1 << 20;
    let blob: Vec<u8> = (0..(8 * CHUNK as u32)).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&blob);
    let mut group = c.benchmark_group("chunk check at rest");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    for (name, hash) in [
        ("check a 1 MiB chunk against its table", ChunkHash::Sha256),
        (
            "check a 1 MiB chunk against the cache's own table (blake3)",
            ChunkHash::Blake3,
        ),
    ] {
        let table = ChunkTable {
            hash,
            digests: blob.chunks(CHUNK).map(|c| hash.of(c)).collect(),
        };
        group.bench_function(name, |b| {
            let mut n = 0usize;
            b.iter(|| {
                n = (n + 3) % 8;
                let bytes = &blob[n * CHUNK..(n + 1) * CHUNK];
                check_chunk(&table, &digest, n as u64, black_box(bytes)).expect("a right chunk");
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

/// 64 KiB at a random offset of a 64 MiB gzip stream (text, about 3:1),
/// inflated from the point before it (4 MiB apart) out of the compressed
/// bytes a reader would fetch: on average 2 MiB inflated and dropped, then
/// the 64 KiB.
fn gzip_resume(c: &mut Criterion) {
    const SIZE: usize = 64 << 20;
    const LEN: u64 = 64 << 10;
    let words = [
        "layer ", "blob ", "usr/lib/", "digest ", "\n", "sha256:", "tar ", "seek ",
    ];
    let mut data = Vec::with_capacity(SIZE + 64);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while data.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(words[(x % 8) as usize].as_bytes());
        if x.is_multiple_of(5) {
            data.extend_from_slice(format!("{}", x % 100_000).as_bytes());
        }
    }
    data.truncate(SIZE);
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&data).expect("gzip");
    let gz = z.finish().expect("gzip");
    let mut indexer = GzipIndexer::new(&gz[..], gzip::DEFAULT_SPACING, u64::MAX).expect("indexer");
    indexer.read_to_end(&mut Vec::new()).expect("index");
    let (points, size) = indexer.finish().expect("index");
    assert_eq!(size, SIZE as u64);

    let mut group = c.benchmark_group("gzip seek-point resume");
    group.throughput(Throughput::Bytes(LEN));
    group.bench_function("read 64 KiB at a random offset of 64 MiB", |b| {
        let mut offset = 0u64;
        let mut out = Vec::with_capacity(LEN as usize);
        b.iter(|| {
            offset = (offset + 7_654_321) % (SIZE as u64 - LEN);
            let p = gzip::point_before(&points, offset).expect("a point at 0");
            let end = gzip::compressed_end(&points, offset + LEN, gz.len() as u64);
            let from = &gz[p.input_start() as usize..end as usize];
            out.clear();
            gzip::inflate_from(p, from, offset - p.uncompressed, &mut out, LEN, u64::MAX)
                .expect("inflate");
            black_box(&out);
        })
    });
    group.finish();
}

/// Walking a layer's tar headers into its table of contents, per MiB of
/// stream: 4,000 entries of 0 to 8 KiB, as a distribution's layer has.
fn tar_index(c: &mut Criterion) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..4000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = (x % 8192) as usize;
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(
                &mut h,
                format!("usr/share/doc/package-{}/file-{i}.txt", i / 20),
                &vec![b'x'; size][..],
            )
            .expect("tar");
    }
    let stream = builder.into_inner().expect("tar");
    let mut group = c.benchmark_group("tar index build");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function(
        format!(
            "{} entries, {:.1} MiB",
            4000,
            stream.len() as f64 / (1 << 20) as f64
        ),
        |b| {
            b.iter(|| {
                let toc =
                    toc::walk(&mut toc::Stream(&stream[..]), toc::MAX_LAYER_ENTRIES).expect("walk");
                black_box(toc.entries.len())
            })
        },
    );
    group.finish();
}

criterion_group!(
    benches,
    cache_hit,
    chunk_check,
    tree_lookup,
    gzip_resume,
    tar_index
);
criterion_main!(benches);

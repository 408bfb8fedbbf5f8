//! Unit tests of the cache over an in-process fake source. The end-to-end
//! tests against the real registry are in the tests crate.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::source::{BlobStream, FetchedManifest, Selector};

#[derive(Debug, Default)]
struct Fake {
    blobs: HashMap<Digest, Vec<u8>>,
    corrupt: AtomicBool,
    offline: AtomicBool,
    requests: AtomicU64,
    bytes: AtomicU64,
    delay_ms: u64,
}

impl Fake {
    fn with(blobs: &[&[u8]]) -> (Arc<Self>, Vec<Descriptor>) {
        let mut map = HashMap::new();
        let mut descs = Vec::new();
        for b in blobs {
            let d = Digest::of(b);
            map.insert(d.clone(), b.to_vec());
            descs.push(Descriptor {
                media_type: "application/octet-stream".into(),
                digest: d,
                size: b.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
                artifact_type: None,
                urls: vec![],
            });
        }
        (
            Arc::new(Fake {
                blobs: map,
                ..Fake::default()
            }),
            descs,
        )
    }
}

#[async_trait]
impl Source for Fake {
    fn name(&self) -> String {
        "fake".into()
    }
    fn is_remote(&self) -> bool {
        true
    }
    fn can_fetch(&self) -> bool {
        !self.offline.load(Ordering::SeqCst)
    }
    async fn manifest(&self, _: &Selector) -> Result<FetchedManifest> {
        unimplemented!()
    }
    async fn read_range(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(Error::NotCached {
                what: format!("blob {}", blob.digest),
                why: "offline".into(),
            });
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        if self.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
        }
        let data = &self.blobs[&blob.digest];
        let end = (offset + len).min(data.len() as u64) as usize;
        let mut out = data[offset as usize..end].to_vec();
        if self.corrupt.load(Ordering::SeqCst) && !out.is_empty() {
            out[0] ^= 0xff;
        }
        self.bytes.fetch_add(out.len() as u64, Ordering::SeqCst);
        Ok(Bytes::from(out))
    }
    async fn stream(&self, blob: &Descriptor) -> Result<BlobStream> {
        let b = self.read_range(blob, 0, blob.size).await?;
        Ok(Box::pin(futures_util::stream::iter([Ok(b)])))
    }
    async fn tags(&self) -> Result<Vec<String>> {
        Ok(vec![])
    }
}

fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn options(verify: Verify) -> CacheOptions {
    CacheOptions {
        chunk_size: 64 * 1024,
        verify,
        max_request: 1 << 20,
        readahead_max: 256 * 1024,
        // The lazy read path itself, chunk by chunk: no background
        // completion (tested on its own).
        background_fetch_max: 0,
        ..CacheOptions::default()
    }
}

fn cache(source: Arc<Fake>, dir: &std::path::Path, opts: CacheOptions) -> ChunkCache {
    let store = Arc::new(DiskStore::open(dir).unwrap());
    ChunkCache::new(source, Some(store), opts).unwrap()
}

#[test]
fn a_chunk_size_that_is_no_power_of_two_of_4096_or_more_is_refused_as_an_option() {
    let (src, _) = Fake::with(&[]);
    for bad in [0, 1000, 2048, 4097, 3 * 4096] {
        let opts = CacheOptions {
            chunk_size: bad,
            ..options(Verify::Lazy)
        };
        let Err(e) = ChunkCache::new(src.clone(), None, opts) else {
            panic!("chunk size {bad} accepted");
        };
        assert!(
            matches!(&e, Error::InvalidOption { option, .. } if option == "chunk size"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("invalid chunk size {bad}: it must be a power of two of at least 4096")
        );
        assert_eq!(e.exit_code(), crate::error::exit_code::USAGE);
    }
    for good in [4096, 64 * 1024, DEFAULT_CHUNK_SIZE] {
        let opts = CacheOptions {
            chunk_size: good,
            ..options(Verify::Lazy)
        };
        assert!(ChunkCache::new(src.clone(), None, opts).is_ok(), "{good}");
    }
}

#[tokio::test]
async fn strict_fetches_and_verifies_the_whole_blob_before_serving() {
    let blob = data(1_000_000, 1);
    let (src, d) = Fake::with(&[&blob]);
    let dir = tempfile::tempdir().unwrap();
    let c = cache(src.clone(), dir.path(), options(Verify::Strict));
    let got = c.read_blob(&d[0].clone(), 500_000, 4096).await.unwrap();
    assert_eq!(&got[..], &blob[500_000..504_096]);
    assert_eq!(src.bytes.load(Ordering::SeqCst), 1_000_000);
    // Served once it checked out; in place once the process settles.
    c.settle().await.unwrap();
    assert!(
        DiskStore::open(dir.path())
            .unwrap()
            .has_complete(&d[0].digest)
    );
    // Warm: no more network, any offset and length, reads past the end clipped.
    for (off, len) in [
        (0, 10),
        (65_535, 2),
        (999_999, 100),
        (1_000_000, 5),
        (123_456, 300_000),
    ] {
        let got = c.read_blob(&d[0].clone(), off, len).await.unwrap();
        let end = ((off + len) as usize).min(blob.len());
        assert_eq!(&got[..], &blob[(off as usize).min(end)..end], "{off}+{len}");
    }
    assert_eq!(src.bytes.load(Ordering::SeqCst), 1_000_000);
    let s = c.stats();
    assert_eq!((s.blobs_verified, s.verify_failures), (1, 0));
}

#[tokio::test]
async fn strict_never_serves_a_corrupt_blob_and_caches_nothing_of_it() {
    let blob = data(300_000, 2);
    let (src, d) = Fake::with(&[&blob]);
    src.corrupt.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let c = cache(src.clone(), dir.path(), options(Verify::Strict));
    let err = c.read_blob(&d[0].clone(), 0, 10).await.unwrap_err();
    assert!(matches!(&err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&d[0].digest.to_string()));
    assert!(
        DiskStore::open(dir.path())
            .unwrap()
            .list()
            .unwrap()
            .is_empty(),
        "something of a bad blob stayed cached"
    );
    assert_eq!(c.stats().verify_failures, 1);
    // The registry is fixed: the same cache succeeds on the next read.
    src.corrupt.store(false, Ordering::SeqCst);
    let got = c.read_blob(&d[0].clone(), 0, 10).await.unwrap();
    assert_eq!(&got[..], &blob[..10]);
}

#[tokio::test]
async fn lazy_reads_fetch_only_the_chunks_needed() {
    let blob = data(4 << 20, 3);
    let (src, d) = Fake::with(&[&blob]);
    let dir = tempfile::tempdir().unwrap();
    let c = cache(src.clone(), dir.path(), options(Verify::Lazy));
    let got = c.read_blob(&d[0].clone(), 2 << 20, 4096).await.unwrap();
    assert_eq!(&got[..], &blob[2 << 20..(2 << 20) + 4096]);
    assert_eq!(
        src.bytes.load(Ordering::SeqCst),
        64 * 1024,
        "one chunk, not more"
    );
    // A read spanning 3 chunks, one present: the 2 missing ones in one request.
    let before = src.requests.load(Ordering::SeqCst);
    let got = c
        .read_blob(&d[0].clone(), (2 << 20) - 100, 128 * 1024)
        .await
        .unwrap();
    assert_eq!(
        &got[..],
        &blob[(2 << 20) - 100..(2 << 20) - 100 + 128 * 1024]
    );
    assert_eq!(
        src.requests.load(Ordering::SeqCst) - before,
        2,
        "chunks before and after the cached one"
    );
}

#[tokio::test]
async fn thirty_two_readers_of_one_missing_chunk_cause_one_request() {
    let blob = data(1 << 20, 4);
    let (src, d) = Fake::with(&[&blob]);
    let src = Arc::new(Fake {
        blobs: src.blobs.clone(),
        delay_ms: 100,
        ..Fake::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let c = cache(src.clone(), dir.path(), options(Verify::Lazy));
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let c = c.clone();
        let content = d[0].clone();
        tasks.push(tokio::spawn(async move {
            c.read_blob(&content, 70_000 + i * 100, 100).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap().unwrap();
        let off = 70_000 + i * 100;
        assert_eq!(&got[..], &blob[off..off + 100]);
    }
    assert_eq!(src.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failed_fetch_wakes_every_waiter_and_caches_nothing() {
    #[derive(Debug)]
    struct Failing(Arc<Fake>);
    #[async_trait]
    impl Source for Failing {
        fn name(&self) -> String {
            "failing".into()
        }
        fn is_remote(&self) -> bool {
            true
        }
        async fn manifest(&self, _: &Selector) -> Result<FetchedManifest> {
            unimplemented!()
        }
        async fn read_range(&self, _: &Descriptor, _: u64, _: u64) -> Result<Bytes> {
            self.0.requests.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(Error::Registry {
                registry: "r".into(),
                status: 404,
                what: "x".into(),
                detail: "gone".into(),
                source: None,
            })
        }
        async fn stream(&self, _: &Descriptor) -> Result<BlobStream> {
            unimplemented!()
        }
        async fn tags(&self) -> Result<Vec<String>> {
            Ok(vec![])
        }
    }
    let (fake, d) = Fake::with(&[&data(200_000, 5)]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    let c = ChunkCache::new(
        Arc::new(Failing(fake.clone())),
        Some(store.clone()),
        options(Verify::Lazy),
    )
    .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            let content = d[0].clone();
            tokio::spawn(async move { c.read_blob(&content, 10, 10).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
    assert!(store.list().unwrap().iter().all(|b| b.present == 0));
}

#[tokio::test]
async fn lazy_mode_drops_a_blob_that_fails_once_complete() {
    let blob = data(200_000, 6);
    let (src, d) = Fake::with(&[&blob]);
    src.corrupt.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let c = cache(src.clone(), dir.path(), options(Verify::Lazy));
    // Served as it arrives (that is lazy mode's contract)...
    c.read_blob(&d[0].clone(), 0, 200_000).await.unwrap();
    // ...and once complete, checked: later reads fail and nothing stays.
    let mut failed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if c.read_blob(&d[0].clone(), 0, 10).await.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "a blob that failed verification is still served");
    assert_eq!(c.stats().verify_failures, 1);
    assert!(
        !DiskStore::open(dir.path())
            .unwrap()
            .has_complete(&d[0].digest)
    );
}

#[tokio::test]
async fn two_caches_on_one_directory_fetch_a_blob_once() {
    // Two ChunkCache instances stand in for two processes: their chunk
    // locks are separate open files, which exclude each other as across
    // processes.
    let blob = data(2 << 20, 7);
    let (src, d) = Fake::with(&[&blob]);
    let src = Arc::new(Fake {
        blobs: src.blobs.clone(),
        delay_ms: 20,
        ..Fake::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let a = cache(src.clone(), dir.path(), options(Verify::Strict));
    let b = cache(src.clone(), dir.path(), options(Verify::Strict));
    let content = d[0].clone();
    let (ra, rb) = tokio::join!(
        a.read_blob(&content, 0, 1 << 20),
        b.read_blob(&content, 1 << 20, 1 << 20)
    );
    assert_eq!(&ra.unwrap()[..], &blob[..1 << 20]);
    assert_eq!(&rb.unwrap()[..], &blob[1 << 20..]);
    assert_eq!(
        src.bytes.load(Ordering::SeqCst),
        2 << 20,
        "the blob was fetched more than once"
    );
}

#[tokio::test]
async fn the_disk_stays_under_budget() {
    let blobs: Vec<Vec<u8>> = (0..6).map(|i| data(300_000, 10 + i)).collect();
    let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    let (src, d) = Fake::with(&refs);
    let dir = tempfile::tempdir().unwrap();
    let opts = CacheOptions {
        disk_budget: 1_000_000,
        ..options(Verify::Strict)
    };
    let c = cache(src.clone(), dir.path(), opts);
    for (i, desc) in d.iter().enumerate() {
        let got = c.read_blob(&desc.clone(), 0, 300_000).await.unwrap();
        assert_eq!(&got[..], &blobs[i][..]);
        // Let the background eviction run.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let usage = DiskStore::open(dir.path()).unwrap().usage().unwrap();
    assert!(
        usage <= 1_000_000 + 300_000,
        "usage {usage} over budget plus one blob"
    );
}

#[tokio::test]
async fn sequential_reads_read_ahead() {
    let blob = data(2 << 20, 8);
    let (src, d) = Fake::with(&[&blob]);
    let dir = tempfile::tempdir().unwrap();
    let c = cache(src.clone(), dir.path(), options(Verify::Lazy));
    let content = d[0].clone();
    for i in 0..4u64 {
        let got = c.read_blob(&content, i * 65_536, 65_536).await.unwrap();
        assert_eq!(
            &got[..],
            &blob[(i * 65_536) as usize..((i + 1) * 65_536) as usize]
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The window grew: chunks beyond the last read were fetched ahead.
    assert!(
        src.bytes.load(Ordering::SeqCst) > 4 * 65_536,
        "no read-ahead: {}",
        src.bytes.load(Ordering::SeqCst)
    );
    let misses_before = c.stats().misses;
    c.read_blob(&content, 4 * 65_536, 65_536).await.unwrap();
    assert_eq!(
        c.stats().misses,
        misses_before,
        "the next sequential read missed"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 16, ..Default::default() })]
    #[test]
    fn random_reads_are_byte_identical(reads in proptest::collection::vec((0u64..1_100_000, 1u64..200_000), 1..12), lazy in proptest::bool::ANY) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let blob = data(1_000_000, 9);
            let (src, d) = Fake::with(&[&blob]);
            let dir = tempfile::tempdir().unwrap();
            let c = cache(src, dir.path(), options(if lazy { Verify::Lazy } else { Verify::Strict }));
            for (off, len) in reads {
                let got = c.read_blob(&d[0].clone(), off, len).await.unwrap();
                let end = ((off + len) as usize).min(blob.len());
                let start = (off as usize).min(end);
                assert_eq!(&got[..], &blob[start..end]);
            }
        });
    }
}

#[tokio::test]
async fn a_broken_stream_resumes_from_the_first_missing_chunk() {
    /// Breaks its first stream after `cut` bytes.
    #[derive(Debug)]
    struct Breaking {
        fake: Arc<Fake>,
        cut: u64,
        broke: AtomicBool,
        offsets: std::sync::Mutex<Vec<u64>>,
    }
    #[async_trait]
    impl Source for Breaking {
        fn name(&self) -> String {
            "breaking".into()
        }
        fn is_remote(&self) -> bool {
            true
        }
        async fn manifest(&self, _: &Selector) -> Result<FetchedManifest> {
            unimplemented!()
        }
        async fn read_range(&self, b: &Descriptor, o: u64, l: u64) -> Result<Bytes> {
            self.fake.read_range(b, o, l).await
        }
        async fn stream(&self, b: &Descriptor) -> Result<BlobStream> {
            self.stream_from(b, 0).await
        }
        async fn stream_from(&self, b: &Descriptor, offset: u64) -> Result<BlobStream> {
            self.offsets.lock().unwrap().push(offset);
            let all = self.fake.read_range(b, offset, b.size - offset).await?;
            let pieces: Vec<Result<Bytes>> = if self.broke.swap(true, Ordering::SeqCst) {
                vec![Ok(all)]
            } else {
                vec![
                    Ok(all.slice(..self.cut as usize)),
                    Err(Error::Transfer {
                        registry: "r".into(),
                        what: "blob".into(),
                        detail: "connection reset".into(),
                        source: None,
                    }),
                ]
            };
            Ok(Box::pin(futures_util::stream::iter(pieces)))
        }
        async fn tags(&self) -> Result<Vec<String>> {
            Ok(vec![])
        }
    }
    let blob = data(10 << 20, 11);
    let (fake, d) = Fake::with(&[&blob]);
    let cut = (6 << 20) + 1234; // mid-chunk, past a 4 MiB write batch
    let src = Arc::new(Breaking {
        fake,
        cut,
        broke: AtomicBool::new(false),
        offsets: Default::default(),
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    let opts = CacheOptions {
        chunk_size: 1 << 20,
        ..options(Verify::Strict)
    };
    let c = ChunkCache::new(src.clone(), Some(store.clone()), opts).unwrap();
    let got = c.read_blob(&d[0].clone(), 9 << 20, 100).await.unwrap();
    assert_eq!(&got[..], &blob[9 << 20..(9 << 20) + 100]);
    let offsets = src.offsets.lock().unwrap().clone();
    assert_eq!(offsets.len(), 2, "{offsets:?}");
    assert_eq!(offsets[0], 0);
    // Resumed at a chunk boundary at or after the last whole batch written.
    assert!(
        offsets[1] > 0 && offsets[1] <= cut && offsets[1].is_multiple_of(1 << 20),
        "{offsets:?}"
    );
    c.settle().await.unwrap();
    assert!(store.has_complete(&d[0].digest));
}

/// Serves `fake`'s blobs, or while `stalled` stalls every request: the
/// first stream after sending `prefix` bytes, every later one before any.
/// Its retry policy gives up after 400 ms.
#[derive(Debug)]
struct Stalling {
    fake: Arc<Fake>,
    stalled: AtomicBool,
    prefix: u64,
    prefix_sent: AtomicBool,
    streams: std::sync::Mutex<Vec<u64>>,
    ranges: AtomicU64,
}

impl Stalling {
    fn new(fake: Arc<Fake>, prefix: u64) -> Arc<Self> {
        Arc::new(Stalling {
            fake,
            stalled: AtomicBool::new(true),
            prefix,
            prefix_sent: AtomicBool::new(false),
            streams: Default::default(),
            ranges: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl Source for Stalling {
    fn name(&self) -> String {
        "stalling".into()
    }
    fn is_remote(&self) -> bool {
        true
    }
    async fn manifest(&self, _: &Selector) -> Result<FetchedManifest> {
        unimplemented!()
    }
    async fn read_range(&self, b: &Descriptor, o: u64, l: u64) -> Result<Bytes> {
        self.ranges.fetch_add(1, Ordering::SeqCst);
        if self.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.fake.read_range(b, o, l).await
    }
    async fn stream(&self, b: &Descriptor) -> Result<BlobStream> {
        self.stream_from(b, 0).await
    }
    async fn stream_from(&self, b: &Descriptor, offset: u64) -> Result<BlobStream> {
        self.streams.lock().unwrap().push(offset);
        if !self.stalled.load(Ordering::SeqCst) {
            let all = self.fake.read_range(b, offset, b.size - offset).await?;
            return Ok(Box::pin(futures_util::stream::iter([Ok(all)])));
        }
        if self.prefix_sent.swap(true, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let head = self.fake.read_range(b, offset, self.prefix).await?;
        Ok(Box::pin(
            futures_util::stream::iter([Ok(head)]).chain(futures_util::stream::pending()),
        ))
    }
    fn retry_policy(&self) -> crate::retry::RetryPolicy {
        crate::retry::RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            total: Duration::from_millis(400),
        }
    }
    async fn tags(&self) -> Result<Vec<String>> {
        Ok(vec![])
    }
}

/// Regression: a whole-blob stream that stalled after some progress was
/// resumed, and each resumption could stall for the whole timeout again
/// (with a source that does not time out idle streams itself, forever).
/// A stalled read now fails the policy's time after the last byte; the
/// kernel's immediate retry of the failed read is answered at once; and
/// once the source is back the read succeeds, resuming from what was kept.
#[tokio::test]
async fn a_stalled_stream_fails_in_time_and_resumes_once_the_source_is_back() {
    let blob = data(10 << 20, 21);
    let (fake, d) = Fake::with(&[&blob]);
    let src = Stalling::new(fake, 5 << 20);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    let c = ChunkCache::new(src.clone(), Some(store.clone()), options(Verify::Strict)).unwrap();
    let content = d[0].clone();
    let start = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), c.read_blob(&content, 9 << 20, 100))
        .await
        .expect("the read of a stalled blob hung");
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    // Its time ran out with the silence: no new stream to stall again.
    assert_eq!(*src.streams.lock().unwrap(), [0]);
    // The kernel's synchronous retry of a failed readahead: no second wait.
    let start = std::time::Instant::now();
    let again = c.read_blob(&content, 9 << 20, 100).await;
    assert!(matches!(again, Err(Error::Timeout { .. })), "{again:?}");
    assert!(start.elapsed() < Duration::from_millis(100));
    assert_eq!(src.streams.lock().unwrap().len(), 1);
    // Back: the same read succeeds, and fetches only what was missing.
    src.stalled.store(false, Ordering::SeqCst);
    tokio::time::sleep(FAILED_FETCH_GRACE).await;
    let got = c.read_blob(&content, 9 << 20, 100).await.unwrap();
    assert_eq!(&got[..], &blob[9 << 20..(9 << 20) + 100]);
    assert_eq!(*src.streams.lock().unwrap(), [0, 5 << 20]);
    c.settle().await.unwrap();
    assert!(store.has_complete(&d[0].digest));
}

/// Lazy range reads of a stalled source fail in time too, and are tried
/// again once the grace period is over.
#[tokio::test]
async fn a_stalled_range_read_fails_in_time_lazy() {
    let blob = data(1 << 20, 22);
    let (fake, d) = Fake::with(&[&blob]);
    let src = Stalling::new(fake, 0);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    let c = ChunkCache::new(src.clone(), Some(store), options(Verify::Lazy)).unwrap();
    let content = d[0].clone();
    let start = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), c.read_blob(&content, 0, 4096))
        .await
        .expect("a lazy read of a stalled blob hung");
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    let ranges = src.ranges.load(Ordering::SeqCst);
    assert!(c.read_blob(&content, 0, 4096).await.is_err());
    assert_eq!(
        src.ranges.load(Ordering::SeqCst),
        ranges,
        "tried again at once"
    );
    src.stalled.store(false, Ordering::SeqCst);
    tokio::time::sleep(FAILED_FETCH_GRACE).await;
    let got = c.read_blob(&content, 0, 4096).await.unwrap();
    assert_eq!(&got[..], &blob[..4096]);
}

/// Holds its range reads of one offset until released, then answers them
/// with one byte flipped: a lazy reader whose fetch was corrupted in
/// transit, landing late.
#[derive(Debug)]
struct LateAndCorrupt {
    fake: Arc<Fake>,
    offset: u64,
    entered: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

#[async_trait]
impl Source for LateAndCorrupt {
    fn name(&self) -> String {
        "late-and-corrupt".into()
    }
    fn is_remote(&self) -> bool {
        true
    }
    async fn manifest(&self, _: &Selector) -> Result<FetchedManifest> {
        unimplemented!()
    }
    async fn read_range(&self, b: &Descriptor, o: u64, l: u64) -> Result<Bytes> {
        let bytes = self.fake.read_range(b, o, l).await?;
        if o != self.offset {
            return Ok(bytes);
        }
        self.entered.notify_one();
        let _ = self.release.acquire().await;
        let mut bad = bytes.to_vec();
        bad[0] ^= 0x40;
        Ok(Bytes::from(bad))
    }
    async fn stream(&self, b: &Descriptor) -> Result<BlobStream> {
        self.fake.stream(b).await
    }
    async fn tags(&self) -> Result<Vec<String>> {
        Ok(vec![])
    }
}

/// Regression: a strict stream renamed the partial data file into place
/// while a lazy reader of another process still held it open, so the lazy
/// reader's late (and here corrupt) chunk was written into the verified
/// blob, and strict readers were served a wrong byte. Now every chunk is
/// written under its lock, by a writer that finds the blob not complete,
/// and a strict stream hashes what is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lazy_chunk_landing_after_a_strict_promotion_never_reaches_the_blob() {
    let blob = data(2 << 20, 23);
    let (fake, d) = Fake::with(&[&blob]);
    let dir = tempfile::tempdir().unwrap();
    let chunk = 64 * 1024;
    let late = 5 * chunk;
    let corrupt = Arc::new(LateAndCorrupt {
        fake: fake.clone(),
        offset: late,
        entered: tokio::sync::Notify::new(),
        release: tokio::sync::Semaphore::new(0),
    });
    let lazy = ChunkCache::new(
        corrupt.clone(),
        Some(Arc::new(DiskStore::open(dir.path()).unwrap())),
        options(Verify::Lazy),
    )
    .unwrap();
    let strict = cache(fake, dir.path(), options(Verify::Strict));
    let content = d[0].clone();
    let lazy_read = {
        let (lazy, content) = (lazy.clone(), content.clone());
        tokio::spawn(async move { lazy.read_blob(&content, late, 100).await })
    };
    corrupt.entered.notified().await;
    // The strict reader runs while the lazy fetch is in flight; the late
    // chunk lands a moment later.
    let strict_read = {
        let (strict, content) = (strict.clone(), content.clone());
        tokio::spawn(async move { strict.read_blob(&content, 0, 100).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    corrupt.release.add_permits(1);
    let _ = lazy_read.await.unwrap();
    let _ = strict_read.await.unwrap();
    // Whatever the strict reader is served now is right, or an error; and
    // within a few tries it is right.
    let mut served = false;
    for _ in 0..3 {
        match strict.read_blob(&content, late, 100).await {
            Ok(got) => {
                assert_eq!(
                    &got[..],
                    &blob[late as usize..late as usize + 100],
                    "a wrong byte served"
                );
                served = true;
                break;
            }
            Err(e) => assert!(matches!(e, Error::DigestMismatch { .. }), "{e:?}"),
        }
    }
    assert!(served);
    let store = DiskStore::open(dir.path()).unwrap();
    assert!(
        store.verify_all(|_, _| {}).unwrap().is_empty(),
        "a corrupt blob in the cache"
    );
}

/// Regression: a lazy reader kept using a partial blob another process had
/// dropped (evicted, promoted, found corrupt), and every later read of that
/// blob failed (its chunk locks were gone) for as long as the mount lived.
#[tokio::test]
async fn a_partial_blob_dropped_by_another_process_is_replaced_not_fatal() {
    let blob = data(1 << 20, 24);
    let (src, d) = Fake::with(&[&blob]);
    let dir = tempfile::tempdir().unwrap();
    let c = cache(src, dir.path(), options(Verify::Lazy));
    let content = d[0].clone();
    let got = c.read_blob(&content, 0, 100).await.unwrap();
    assert_eq!(&got[..], &blob[..100]);
    // Another process drops it.
    DiskStore::open(dir.path())
        .unwrap()
        .drop_partial(&d[0].digest);
    for offset in [300_000u64, 0, 900_000] {
        let got = c.read_blob(&content, offset, 4096).await.unwrap();
        assert_eq!(&got[..], &blob[offset as usize..offset as usize + 4096]);
    }
}

#[tokio::test]
async fn a_scan_checks_the_digest_and_keeps_the_blob_only_once_it_checked_out() {
    let blob = data(700_000, 40);
    let (src, d) = Fake::with(&[&blob]);
    let dir = tempfile::tempdir().unwrap();
    let c = cache(src.clone(), dir.path(), options(Verify::Strict));
    let scanned = c
        .scan(&d[0], |r| {
            let mut first = [0u8; 10];
            r.read_exact(&mut first).map_err(|e| Error::io("test", e))?;
            Ok(first)
        })
        .await
        .unwrap();
    // The consumer read 10 bytes; the whole blob was still hashed.
    assert_eq!(&scanned.value[..], &blob[..10]);
    assert_eq!(
        scanned.chunk_digests.len(),
        700_000usize.div_ceil(64 * 1024)
    );
    assert_eq!(
        scanned.chunk_digests[3],
        <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(
            &blob[3 * 65536..4 * 65536]
        ))
    );
    // The verified blob is kept whole: reading it fetches nothing more.
    let listed = DiskStore::open(dir.path()).unwrap().list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].state, listed[0].size), ("complete", 700_000));
    let fetched = src.bytes.load(Ordering::SeqCst);
    let got = c.read_blob(&d[0], 600_000, 1000).await.unwrap();
    assert_eq!(&got[..], &blob[600_000..601_000]);
    assert_eq!(src.bytes.load(Ordering::SeqCst), fetched);

    // A lying source: the digest is the error, whatever the consumer made,
    // and nothing of it is kept (no blob, no temporary file).
    let dir = tempfile::tempdir().unwrap();
    let c = cache(src.clone(), dir.path(), options(Verify::Strict));
    src.corrupt.store(true, Ordering::SeqCst);
    let err = c.scan(&d[0], |_| Ok(())).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert_nothing_kept(dir.path());
}

#[tokio::test]
async fn a_scan_keeps_no_blob_over_the_disk_budget() {
    let blob = data(700_000, 43);
    let (src, d) = Fake::with(&[&blob]);
    let dir = tempfile::tempdir().unwrap();
    let c = cache(
        src.clone(),
        dir.path(),
        CacheOptions {
            disk_budget: 500_000,
            ..options(Verify::Strict)
        },
    );
    c.scan(&d[0], |_| Ok(())).await.unwrap();
    assert_nothing_kept(dir.path());
}

/// Nothing is in the store at `dir`: no blob, and no temporary file left.
#[track_caller]
fn assert_nothing_kept(dir: &std::path::Path) {
    let listed = DiskStore::open(dir).unwrap().list().unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    let tmp = std::fs::read_dir(dir.join("tmp")).map_or(0, |d| d.count());
    assert_eq!(tmp, 0, "a temporary file was left behind");
}

/// The chunk table of `blob` from a scan by a cache of its own (a scan
/// keeps the blob it verified, which the caller's cache must not have).
async fn table_from_a_scan_elsewhere(src: &Arc<Fake>, blob: &Descriptor) -> Vec<[u8; 32]> {
    let elsewhere = tempfile::tempdir().unwrap();
    cache(src.clone(), elsewhere.path(), options(Verify::Strict))
        .scan(blob, |_| Ok(()))
        .await
        .unwrap()
        .chunk_digests
}

#[tokio::test]
async fn strict_with_chunk_digests_fetches_only_the_chunks_read_and_checks_each() {
    let blob = data(2_000_000, 41);
    let (src, d) = Fake::with(&[&blob]);
    let dir = tempfile::tempdir().unwrap();
    let c = cache(src.clone(), dir.path(), options(Verify::Strict));
    let table = table_from_a_scan_elsewhere(&src, &d[0]).await;
    let scanned_bytes = src.bytes.load(Ordering::SeqCst);
    c.set_chunk_digests(&d[0], 64 * 1024, table.clone());
    let content = d[0].clone();
    let got = c.read_blob(&content, 1_000_000, 4096).await.unwrap();
    assert_eq!(&got[..], &blob[1_000_000..1_004_096]);
    let fetched = src.bytes.load(Ordering::SeqCst) - scanned_bytes;
    assert!(
        fetched <= 2 * 64 * 1024,
        "fetched {fetched} bytes for 4 KiB"
    );

    // A corrupt chunk is refused, not served, and not kept.
    let c2dir = tempfile::tempdir().unwrap();
    let c2 = cache(src.clone(), c2dir.path(), options(Verify::Strict));
    c2.set_chunk_digests(&d[0], 64 * 1024, table.clone());
    src.corrupt.store(true, Ordering::SeqCst);
    let err = c2.read_blob(&content, 300_000, 10).await.unwrap_err();
    assert!(matches!(&err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("chunk 4"), "{err}");
    src.corrupt.store(false, Ordering::SeqCst);
    let got = c2.read_blob(&content, 300_000, 10).await.unwrap();
    assert_eq!(&got[..], &blob[300_000..300_010]);

    // A table of another chunk size, or of the wrong length, is not used:
    // strict mode then fetches the whole blob first.
    let c3dir = tempfile::tempdir().unwrap();
    let c3 = cache(src.clone(), c3dir.path(), options(Verify::Strict));
    c3.set_chunk_digests(&d[0], 128 * 1024, table.clone());
    c3.set_chunk_digests(&d[0], 64 * 1024, table[1..].to_vec());
    let before = src.bytes.load(Ordering::SeqCst);
    c3.read_blob(&content, 0, 10).await.unwrap();
    assert_eq!(src.bytes.load(Ordering::SeqCst) - before, 2_000_000);
}

#[tokio::test]
async fn an_untrusted_table_checks_lazy_chunks_and_the_whole_blob_decides_when_they_disagree() {
    let blob = data(1_000_000, 43);
    let (src, d) = Fake::with(&[&blob]);
    let content = d[0].clone();
    let table = table_from_a_scan_elsewhere(&src, &d[0]).await;

    // A right table: a lazy read fetches its chunks only, each checked.
    let dir = tempfile::tempdir().unwrap();
    let lazy = cache(src.clone(), dir.path(), options(Verify::Lazy));
    lazy.set_untrusted_chunk_digests(&content, 64 * 1024, table.clone());
    let before = src.bytes.load(Ordering::SeqCst);
    let got = lazy.read_blob(&content, 500_000, 100).await.unwrap();
    assert_eq!(&got[..], &blob[500_000..500_100]);
    assert!(src.bytes.load(Ordering::SeqCst) - before <= 2 * 64 * 1024);

    // A wrong one: the chunk disagrees, the whole blob is fetched and
    // checks out, the table is dropped and the read served right.
    let dir = tempfile::tempdir().unwrap();
    let lazy = cache(src.clone(), dir.path(), options(Verify::Lazy));
    let mut wrong = table.clone();
    wrong[7] = [0u8; 32];
    lazy.set_untrusted_chunk_digests(&content, 64 * 1024, wrong.clone());
    let got = lazy
        .read_blob(&content, 7 * 64 * 1024 + 5, 100)
        .await
        .unwrap();
    assert_eq!(&got[..], &blob[7 * 64 * 1024 + 5..7 * 64 * 1024 + 105]);
    assert!(
        lazy.backing_file(&content).is_some(),
        "the blob is not complete"
    );

    // Reads at once (as `cat` reads ahead) that each meet a wrong chunk:
    // every one of them lets the whole blob decide, not only the first.
    let slow = Arc::new(Fake {
        blobs: src.blobs.clone(),
        delay_ms: 50,
        ..Fake::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let lazy = cache(slow.clone(), dir.path(), options(Verify::Lazy));
    let mut wrong = table.clone();
    for n in [2, 5, 9, 12] {
        wrong[n] = [n as u8; 32];
    }
    lazy.set_untrusted_chunk_digests(&content, 64 * 1024, wrong);
    let reads = [2u64, 5, 9, 12].map(|n| lazy.read_blob(&content, n * 64 * 1024, 64 * 1024));
    for (n, got) in [2usize, 5, 9, 12]
        .into_iter()
        .zip(futures_util::future::join_all(reads).await)
    {
        let got = got.unwrap_or_else(|e| panic!("chunk {n}: {e}"));
        assert_eq!(&got[..], &blob[n * 64 * 1024..(n + 1) * 64 * 1024]);
    }

    // A right table and a lying source: the whole blob fails too, and the
    // read fails; no byte of it is served.
    let dir = tempfile::tempdir().unwrap();
    let lazy = cache(src.clone(), dir.path(), options(Verify::Lazy));
    lazy.set_untrusted_chunk_digests(&content, 64 * 1024, table.clone());
    src.corrupt.store(true, Ordering::SeqCst);
    let err = lazy.read_blob(&content, 300_000, 10).await.unwrap_err();
    src.corrupt.store(false, Ordering::SeqCst);
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");

    // Strict mode takes no untrusted table: the whole blob first.
    let dir = tempfile::tempdir().unwrap();
    let strict = cache(src.clone(), dir.path(), options(Verify::Strict));
    strict.set_untrusted_chunk_digests(&content, 64 * 1024, table);
    let before = src.bytes.load(Ordering::SeqCst);
    strict.read_blob(&content, 0, 10).await.unwrap();
    assert_eq!(src.bytes.load(Ordering::SeqCst) - before, 1_000_000);
}

#[tokio::test]
async fn a_chunk_written_unchecked_is_refused_by_a_strict_reader_with_digests() {
    let blob = data(500_000, 42);
    let (src, d) = Fake::with(&[&blob]);
    let dir = tempfile::tempdir().unwrap();
    let content = d[0].clone();
    // A lazy process without digests caches a corrupt chunk.
    src.corrupt.store(true, Ordering::SeqCst);
    let lazy = cache(src.clone(), dir.path(), options(Verify::Lazy));
    lazy.read_blob(&content, 70_000, 10).await.unwrap();
    src.corrupt.store(false, Ordering::SeqCst);
    // A strict one with digests never serves it, drops it, then fetches
    // it afresh.
    let strict = cache(src.clone(), dir.path(), options(Verify::Strict));
    let table = table_from_a_scan_elsewhere(&src, &d[0]).await;
    strict.set_chunk_digests(&d[0], 64 * 1024, table);
    let err = strict.read_blob(&content, 70_000, 10).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    let got = strict.read_blob(&content, 70_000, 10).await.unwrap();
    assert_eq!(&got[..], &blob[70_000..70_010]);
}

/// A strict cache over a store in a new directory, and one 1,000,000-byte
/// blob: (its bytes, the source, its descriptor, the directory, the store,
/// the cache). `in_the_way`: something that is not the blob sits where it
/// goes, so that it cannot be moved into place.
fn strict_store(
    seed: u32,
    in_the_way: bool,
) -> (
    Vec<u8>,
    Arc<Fake>,
    Vec<Descriptor>,
    tempfile::TempDir,
    Arc<DiskStore>,
    ChunkCache,
) {
    let blob = data(1_000_000, seed);
    let (src, d) = Fake::with(&[&blob]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    if in_the_way {
        std::fs::create_dir_all(store.blob_path(&d[0].digest).join("x")).unwrap();
    }
    let c = ChunkCache::new(src.clone(), Some(store.clone()), options(Verify::Strict)).unwrap();
    (blob, src, d, dir, store, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_blob_is_served_once_it_checked_out_and_is_in_the_cache_once_the_process_settles()
{
    let (blob, src, d, dir, store, c) = strict_store(5, false);
    c.ensure_verified(&d[0]).await.unwrap();
    // Served at once, whether it is in place yet or still being synced.
    let got = c.read_blob(&d[0], 0, d[0].size).await.unwrap();
    assert!(got[..] == blob[..]);
    c.settle().await.unwrap();
    assert!(store.has_complete(&d[0].digest), "in place once settled");
    assert_eq!(src.requests.load(Ordering::SeqCst), 1);
    // Another process reads it without a fetch.
    let c2 = cache(src.clone(), dir.path(), options(Verify::Strict));
    assert!(c2.read_blob(&d[0], 10, 100).await.unwrap()[..] == blob[10..110]);
    assert_eq!(src.requests.load(Ordering::SeqCst), 1);
    // And a prefetch returns only once the blob is in place.
    let (src3, d3) = Fake::with(&[&data(300_000, 6)]);
    let c3 = cache(src3, dir.path(), options(Verify::Strict));
    c3.prefetch(&d3[0]).await.unwrap();
    assert!(store.has_complete(&d3[0].digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_checked_out_but_cannot_be_moved_into_place_is_still_served_right_and_prefetch_says_why()
 {
    // Something that is not the blob sits where it goes.
    let (blob, src, d, _dir, _store, c) = strict_store(8, true);
    let e = c.prefetch(&d[0]).await.unwrap_err().to_string();
    assert!(e.contains("into place"), "{e}");
    // This process still serves right bytes, from the partial blob it
    // wrote (every chunk there: it is not downloaded again).
    let got = c.read_blob(&d[0], 0, d[0].size).await.unwrap();
    assert!(got[..] == blob[..]);
    assert_eq!(c.counters().snapshot().verify_failures, 0);
    assert_eq!(src.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_promotion_that_failed_before_anyone_waited_for_it_is_still_reported_by_settle() {
    let (blob, src, d, _dir, _store, c) = strict_store(9, true);
    // Served once it checked out (what cat and a mount do), and its
    // promotion over before the process settles.
    c.ensure_verified(&d[0]).await.unwrap();
    for _ in 0..500 {
        if c.inner.promoting.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(c.inner.promoting.lock().unwrap().is_empty());
    let e = c.settle().await.unwrap_err().to_string();
    assert!(e.contains("into place"), "{e}");
    // Said once; the bytes are still served, from what was fetched once.
    c.settle().await.unwrap();
    assert!(c.read_blob(&d[0], 0, d[0].size).await.unwrap()[..] == blob[..]);
    assert_eq!(src.requests.load(Ordering::SeqCst), 1);
}

/// Bytes at rest in the cache are checked against the blob's chunk table
/// before they are served, in every mode, by every later process.
mod at_rest {
    use std::os::unix::fs::FileExt as _;

    use super::*;

    const CS: u64 = 64 * 1024;

    /// A blob made complete in the cache by one process; the cache dir.
    async fn prefetched(verify: Verify) -> (Arc<Fake>, Descriptor, Vec<u8>, tempfile::TempDir) {
        let blob = data(1_000_000, 77);
        let (src, d) = Fake::with(&[&blob]);
        let dir = tempfile::tempdir().unwrap();
        cache(src.clone(), dir.path(), options(verify))
            .prefetch(&d[0])
            .await
            .unwrap();
        (src, d[0].clone(), blob, dir)
    }

    fn blob_file(dir: &std::path::Path, d: &Descriptor) -> std::path::PathBuf {
        dir.join("blobs/sha256").join(d.digest.hex())
    }

    fn flip(path: &std::path::Path, at: u64) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
    }

    #[tokio::test]
    async fn a_complete_blob_has_its_blake3_table_beside_it() {
        let (_src, d, blob, dir) = prefetched(Verify::Strict).await;
        let store = DiskStore::open(dir.path()).unwrap();
        let (cs, table) = store.get_table(&d.digest, d.size).expect("a stored table");
        assert_eq!(cs, CS);
        assert_eq!(table.hash, ChunkHash::Blake3);
        assert_eq!(table.len() as u64, d.size.div_ceil(CS));
        let third = *blake3::hash(&blob[2 * CS as usize..3 * CS as usize]).as_bytes();
        assert_eq!(table.digests[2], third);
    }

    #[tokio::test]
    async fn the_table_a_node_publishes_is_of_sha256_and_only_of_bytes_that_still_check_out() {
        let (_src, d, blob, dir) = prefetched(Verify::Strict).await;
        let store = DiskStore::open(dir.path()).unwrap();
        let want: Vec<[u8; 32]> = blob
            .chunks(CS as usize)
            .map(|c| ChunkHash::Sha256.of(c))
            .collect();
        assert_eq!(
            store.sha256_table(&d.digest, d.size, CS),
            Some((CS, ChunkTable::sha256(want)))
        );
        // The BLAKE3 table stays the cache's.
        assert_eq!(
            store.get_table(&d.digest, d.size).unwrap().1.hash,
            ChunkHash::Blake3
        );
        flip(&blob_file(dir.path(), &d), 77);
        assert_eq!(store.sha256_table(&d.digest, d.size, CS), None);
    }

    #[tokio::test]
    async fn an_older_ocifs_sha256_table_still_checks_bytes_at_rest() {
        let (src, d, blob, dir) = prefetched(Verify::Strict).await;
        let store = DiskStore::open(dir.path()).unwrap();
        let older = ChunkTable::sha256(
            blob.chunks(CS as usize)
                .map(|c| ChunkHash::Sha256.of(c))
                .collect(),
        );
        store.put_table(&d.digest, CS, d.size, &older).unwrap();
        assert_eq!(store.get_table(&d.digest, d.size), Some((CS, older)));
        let at = 2 * CS + 5;
        flip(&blob_file(dir.path(), &d), at);
        let before = src.bytes.load(Ordering::SeqCst);
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        let got = c.read_blob(&d, at, 10).await.unwrap();
        assert!(got[..] == blob[at as usize..at as usize + 10]);
        assert_eq!(c.counters().snapshot().verify_failures, 1);
        assert_eq!(
            src.bytes.load(Ordering::SeqCst) - before,
            d.size,
            "the damaged blob was dropped and fetched again"
        );
    }

    /// Waits until no thread checks chunks of `d` ahead of a reader.
    async fn ahead_done(c: &ChunkCache, d: &Descriptor) {
        for _ in 0..500 {
            if !c.inner.checking.lock().unwrap().contains_key(&d.digest) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the check-ahead thread never ended");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sequential_reader_is_served_the_chunks_checked_ahead_of_it_without_reading_them_again()
     {
        let (src, d, blob, dir) = prefetched(Verify::Strict).await;
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        let mut got = Vec::new();
        while (got.len() as u64) < d.size {
            let bytes = c.read_blob(&d, got.len() as u64, CS).await.unwrap();
            assert!(!bytes.is_empty());
            got.extend_from_slice(&bytes);
        }
        assert!(got == blob, "the bytes read are the blob's");
        let stats = c.counters().snapshot();
        assert_eq!(stats.verify_failures, 0);
        // Each chunk is read from the file once, by whichever checks it (a
        // thread that read the next chunks ahead and checked them hands
        // them over); before, the reader read each again. A reader held up
        // long enough for that thread to stop reads a few twice.
        assert!(
            stats.disk_bytes_read >= d.size && stats.disk_bytes_read < d.size * 3 / 2,
            "{} bytes read from disk for a blob of {}",
            stats.disk_bytes_read,
            d.size
        );
        assert_eq!(
            src.requests.load(Ordering::SeqCst),
            1,
            "only the prefetch fetched"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sequential_reader_finds_the_chunks_ahead_of_it_checked_already() {
        let (src, d, blob, dir) = prefetched(Verify::Strict).await;
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        // The first read opens the blob and checks its chunk; the second,
        // the next in sequence, sets the checking ahead going.
        assert!(c.read_blob(&d, 0, 4096).await.unwrap()[..] == blob[..4096]);
        assert!(c.read_blob(&d, 4096, 4096).await.unwrap()[..] == blob[4096..8192]);
        ahead_done(&c, &d).await;
        let checked: Vec<u64> = (0..d.size.div_ceil(CS))
            .filter(|&n| c.inner.is_checked(&d.digest, n))
            .collect();
        assert_eq!(checked, (0..=CHECK_AHEAD).collect::<Vec<_>>());
        // The reader now reads those from the file, with no check of its
        // own; and a read far from the last one checks nothing ahead.
        let at = (CHECK_AHEAD * CS) as usize;
        assert!(c.read_blob(&d, at as u64, 100).await.unwrap()[..] == blob[at..at + 100]);
        ahead_done(&c, &d).await;
        let last = d.size.div_ceil(CS) - 1;
        c.read_blob(&d, last * CS, 10).await.unwrap();
        ahead_done(&c, &d).await;
        assert!(!c.inner.is_checked(&d.digest, last - 2));
        assert_eq!(c.counters().snapshot().verify_failures, 0);
        assert_eq!(
            src.requests.load(Ordering::SeqCst),
            1,
            "only the prefetch fetched"
        );
    }

    #[tokio::test]
    async fn a_blob_dropped_by_another_reader_while_this_one_opened_it_is_never_served_from_that_file()
     {
        let (src, d, blob, dir) = prefetched(Verify::Strict).await;
        let path = blob_file(dir.path(), &d);
        flip(&path, 3 * CS + 17);
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        // Another reader, between this one's open of the damaged file and
        // its keeping the handle: it found the damage and dropped the blob,
        // and a refetch put a right copy in place and checked every chunk
        // of it.
        let (right, at, other) = (blob.clone(), path.clone(), d.clone());
        *c.inner.after_open.lock().unwrap() = Some(Box::new(move |inner: &Inner| {
            let store = inner.store.clone().unwrap();
            let e = Error::io("a test", std::io::Error::other("damaged"));
            inner.drop_corrupt_complete(&store, &other, &e);
            let tmp = at.with_extension("refetched");
            std::fs::write(&tmp, &right).unwrap();
            std::fs::rename(&tmp, &at).unwrap();
            inner.mark_checked(&other, 0..other.size.div_ceil(CS));
        }));
        assert!(c.read_blob(&d, 0, 4096).await.unwrap()[..] == blob[..4096]);
        assert!(
            c.inner.after_open.lock().unwrap().is_none(),
            "the other reader ran"
        );
        // The damaged chunk: from the right copy, not the file opened first.
        let got = c.read_blob(&d, 3 * CS, CS).await.unwrap();
        assert!(
            got[..] == blob[(3 * CS) as usize..(4 * CS) as usize],
            "the dropped file's damaged chunk was served"
        );
    }

    #[tokio::test]
    async fn a_blob_its_caller_discarded_is_read_from_its_new_copy_not_the_file_it_had_open() {
        let (src, d, blob, dir) = prefetched(Verify::Strict).await;
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        assert!(c.read_blob(&d, 0, 4096).await.unwrap()[..] == blob[..4096]);
        // Damaged under the open handle, found so by the caller (cat's own
        // hash of what it wrote), discarded, and fetched again.
        flip(&blob_file(dir.path(), &d), 3 * CS + 17);
        c.discard(&d);
        c.prefetch(&d).await.unwrap();
        let got = c.read_blob(&d, 3 * CS, CS).await.unwrap();
        assert!(
            got[..] == blob[(3 * CS) as usize..(4 * CS) as usize],
            "the discarded file's damaged chunk was served"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_damaged_ahead_of_a_reader_is_never_served() {
        let (src, d, blob, dir) = prefetched(Verify::Strict).await;
        let bad = 3 * CS + 17;
        flip(&blob_file(dir.path(), &d), bad);
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        let before = src.bytes.load(Ordering::SeqCst);
        assert!(c.read_blob(&d, 0, 4096).await.unwrap()[..] == blob[..4096]);
        assert!(c.read_blob(&d, 4096, 4096).await.unwrap()[..] == blob[4096..8192]);
        ahead_done(&c, &d).await;
        // Found by the thread ahead, before the reader got there: the blob
        // was dropped, and fetched again (strict: whole) by the next read.
        assert_eq!(c.counters().snapshot().verify_failures, 1);
        let mut at = 8192;
        while at < d.size {
            let got = c.read_blob(&d, at, 65536).await.unwrap();
            assert!(
                got[..] == blob[at as usize..at as usize + got.len()],
                "wrong bytes at {at}"
            );
            at += got.len() as u64;
        }
        assert_eq!(c.counters().snapshot().verify_failures, 1);
        assert_eq!(src.bytes.load(Ordering::SeqCst) - before, d.size);
    }

    #[tokio::test]
    async fn a_flipped_byte_at_rest_is_never_served_and_is_fetched_again() {
        for verify in [Verify::Strict, Verify::Lazy] {
            let (src, d, blob, dir) = prefetched(verify).await;
            flip(&blob_file(dir.path(), &d), 300_000);
            let before = src.bytes.load(Ordering::SeqCst);
            // A new process: nothing checked yet.
            let c = cache(src.clone(), dir.path(), options(verify));
            let got = c.read_blob(&d.clone(), 0, d.size).await.unwrap();
            assert!(got[..] == blob[..], "{verify:?}: wrong bytes served");
            assert_eq!(c.counters().snapshot().verify_failures, 1, "{verify:?}");
            let fetched = src.bytes.load(Ordering::SeqCst) - before;
            assert!(
                fetched >= CS && fetched <= d.size,
                "{verify:?}: fetched {fetched}"
            );
            // The bad copy is gone; the blob is whole and right again.
            let again = cache(src.clone(), dir.path(), options(verify));
            assert!(again.read_blob(&d.clone(), 0, d.size).await.unwrap()[..] == blob[..]);
            assert_eq!(again.counters().snapshot().verify_failures, 0);
        }
    }

    #[tokio::test]
    async fn a_truncated_or_symlinked_blob_at_rest_is_fetched_again() {
        let (src, d, blob, dir) = prefetched(Verify::Strict).await;
        let path = blob_file(dir.path(), &d);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(3 << 16)
            .unwrap();
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        let got = c.read_blob(&d.clone(), 0, d.size).await.unwrap();
        assert!(got[..] == blob[..]);
        c.settle().await.unwrap();
        assert!(path.is_file());

        // A symlink to a file of the same size and bytes but one.
        let mut other = blob.clone();
        other[5] ^= 1;
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, &other).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        let got = c.read_blob(&d.clone(), 0, 4096).await.unwrap();
        assert_eq!(&got[..], &blob[..4096]);
        // The symlink is gone: the blob was fetched again, a file of its own.
        c.settle().await.unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    }

    #[tokio::test]
    async fn offline_a_damaged_blob_fails_naming_it() {
        let (src, d, _blob, dir) = prefetched(Verify::Strict).await;
        flip(&blob_file(dir.path(), &d), 10);
        src.offline.store(true, Ordering::SeqCst);
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        let e = c.read_blob(&d.clone(), 0, 100).await.unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        assert_eq!(e.exit_code(), crate::error::exit_code::INTEGRITY);
        assert!(e.to_string().contains(&d.digest.to_string()), "{e}");
        // Undamaged chunks of another blob are still served offline.
        assert!(c.backing_file(&d).is_none());
    }

    #[tokio::test]
    async fn a_complete_blob_without_a_table_gets_one_once_and_is_checked() {
        let (src, d, blob, dir) = prefetched(Verify::Strict).await;
        // As an older ocifs left it: no table.
        std::fs::remove_dir_all(dir.path().join("chunks")).unwrap();
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        let before = src.bytes.load(Ordering::SeqCst);
        let got = c.read_blob(&d.clone(), 500_000, 10).await.unwrap();
        assert_eq!(&got[..], &blob[500_000..500_010]);
        assert_eq!(
            src.bytes.load(Ordering::SeqCst),
            before,
            "taken from disk, not fetched"
        );
        assert!(
            DiskStore::open(dir.path())
                .unwrap()
                .get_table(&d.digest, d.size)
                .is_some()
        );
        // Damaged and without a table: the whole-blob check catches it.
        std::fs::remove_dir_all(dir.path().join("chunks")).unwrap();
        flip(&blob_file(dir.path(), &d), 999_000);
        let c = cache(src.clone(), dir.path(), options(Verify::Lazy));
        let got = c.read_blob(&d.clone(), 999_000, 10).await.unwrap();
        assert_eq!(&got[..], &blob[999_000..999_010]);
        assert_eq!(c.counters().snapshot().verify_failures, 1);
    }

    #[tokio::test]
    async fn a_reader_still_holding_a_dropped_file_gets_the_bytes_of_the_one_in_its_place() {
        // Seen in CI once, under load: a strict mount served a damaged chunk.
        // A reader held the cached handle of a damaged complete blob while
        // another dropped the blob, fetched it again and marked every chunk
        // of the new file checked; the first then trusted those marks for
        // what it read through the old handle.
        let (src, d, blob, dir) = prefetched(Verify::Strict).await;
        let path = blob_file(dir.path(), &d);
        let chunk = 64 * 1024;
        flip(&path, 5 * chunk + 10);
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        let store = c.inner.store.clone().unwrap();
        let stale = c.inner.complete_handle(&store, &d.digest).unwrap().unwrap();
        // The other reader: the blob dropped, a good file in its place,
        // its chunks checked.
        c.inner.handles.lock().unwrap().pop(&d.digest);
        c.inner.forget_checked(&d.digest);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &blob).unwrap();
        c.inner.mark_checked(&d, 0..d.size.div_ceil(chunk));
        let got = c
            .inner
            .checked_from_complete(&store, &d, &stale, 5, Some(&stale))
            .unwrap()
            .expect("the chunk");
        assert!(
            got[..] == blob[5 * chunk as usize..6 * chunk as usize],
            "the old file's damaged bytes were served"
        );
        assert!(
            path.is_file(),
            "the good file was dropped for the old one's damage"
        );
        assert_eq!(c.counters().snapshot().verify_failures, 0);
    }

    #[tokio::test]
    async fn passthrough_gets_only_a_file_checked_in_this_process() {
        let (src, d, blob, dir) = prefetched(Verify::Strict).await;
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        let f = c.backing_file(&d).expect("a checked backing file");
        let mut all = vec![0; blob.len()];
        f.read_exact_at(&mut all, 0).unwrap();
        assert!(all == blob);
        flip(&blob_file(dir.path(), &d), 700_000);
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        assert!(
            c.backing_file(&d).is_none(),
            "a damaged file went to the kernel"
        );
        assert!(
            !blob_file(dir.path(), &d).exists(),
            "the damaged blob stayed"
        );
    }
}

/// Lazy mode completes small blobs in the background, and drops what it
/// could not complete when the process ends.
mod background {
    use super::*;

    fn with_background(max: u64) -> CacheOptions {
        CacheOptions {
            background_fetch_max: max,
            ..options(Verify::Lazy)
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{what} did not happen in 10 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_blob_read_lazily_is_completed_and_checked_in_the_background() {
        let blob = data(600_000, 91);
        let (src, d) = Fake::with(&[&blob]);
        let dir = tempfile::tempdir().unwrap();
        let c = cache(src.clone(), dir.path(), with_background(1 << 20));
        let got = c.read_blob(&d[0].clone(), 10, 100).await.unwrap();
        assert_eq!(&got[..], &blob[10..110]);
        let store = DiskStore::open(dir.path()).unwrap();
        until("completion", || store.has_complete(&d[0].digest)).await;
        // The count follows the promotion (the blob is in place first).
        until("the count", || c.counters().snapshot().blobs_verified == 1).await;
        assert_eq!(src.bytes.load(Ordering::SeqCst), 600_000);
        assert_eq!(c.counters().snapshot().blobs_verified, 1);
    }

    /// Before, such a read fetched its chunks by range, the read-ahead more
    /// ranges, and the completion the rest a few chunks a request (16
    /// readers of 32 MiB blobs: about 180 requests, 3 × the registry's CPU
    /// time of 16 streams). Now the first miss starts one stream of the
    /// blob, which every read waits for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_blob_read_lazily_is_one_stream_that_serves_its_readers_and_ends_checked() {
        let blob = data(2_000_000, 95);
        let (src, d) = Fake::with(&[&blob]);
        let dir = tempfile::tempdir().unwrap();
        let c = cache(src.clone(), dir.path(), with_background(4 << 20));
        // Two readers at once, each reading all of it in 100 kB reads (not
        // on chunk bounds).
        let readers = (0..2).map(|_| {
            let (c, d) = (c.clone(), d[0].clone());
            async move {
                let mut got = Vec::new();
                let mut offset = 0u64;
                while offset < d.size {
                    let bytes = c.read_blob(&d, offset, 100_000).await.unwrap();
                    assert!(!bytes.is_empty(), "a short read at {offset}");
                    offset += bytes.len() as u64;
                    got.extend_from_slice(&bytes);
                }
                got
            }
        });
        for got in futures_util::future::join_all(readers).await {
            assert!(got == blob, "wrong bytes");
        }
        let store = DiskStore::open(dir.path()).unwrap();
        until("completion", || store.has_complete(&d[0].digest)).await;
        until("the count", || c.counters().snapshot().blobs_verified == 1).await;
        assert_eq!(
            (
                src.requests.load(Ordering::SeqCst),
                src.bytes.load(Ordering::SeqCst)
            ),
            (1, 2_000_000),
            "requests and bytes fetched"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_blob_that_fails_in_the_background_is_dropped_with_its_chunks() {
        let blob = data(600_000, 92);
        let (src, d) = Fake::with(&[&blob]);
        src.corrupt.store(true, Ordering::SeqCst);
        let dir = tempfile::tempdir().unwrap();
        let c = cache(src.clone(), dir.path(), with_background(1 << 20));
        let _ = c.read_blob(&d[0].clone(), 0, 100).await.unwrap();
        let partial = dir.path().join("partial/sha256").join(d[0].digest.hex());
        let chunks_left = || {
            std::fs::read_dir(&partial)
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("v2-"))
                })
                .unwrap_or(false)
        };
        until("the drop", || {
            !chunks_left() && c.counters().snapshot().verify_failures > 0
        })
        .await;
        assert!(
            !DiskStore::open(dir.path())
                .unwrap()
                .has_complete(&d[0].digest)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unchecked_chunks_of_a_small_blob_not_completed_end_with_the_process() {
        let small = data(600_000, 93);
        let large = data(3_000_000, 94);
        let (src, d) = Fake::with(&[&small, &large]);
        let dir = tempfile::tempdir().unwrap();
        // Background completion cannot keep up: every request is slow.
        let src = Arc::new(Fake {
            blobs: src.blobs.clone(),
            delay_ms: 300,
            ..Fake::default()
        });
        let c = cache(src.clone(), dir.path(), with_background(1 << 20));
        c.read_blob(&d[0].clone(), 0, 100).await.unwrap();
        c.read_blob(&d[1].clone(), 0, 100).await.unwrap();
        c.close();
        let partials = dir.path().join("partial/sha256");
        assert!(
            !partials.join(d[0].digest.hex()).exists(),
            "the small blob's unchecked chunks outlived the process"
        );
        // A blob over the limit keeps lazy's contract: its chunks stay.
        assert!(partials.join(d[1].digest.hex()).exists());
    }
}

/// Exact ranges for callers that check them (`read_piece`), and what they
/// make of them kept by digest (`keep`, `read_kept`).
mod pieces {
    use super::*;
    use crate::content::{ChunkedFile, ChunkedLayer, Compression, Content, FileChunk};
    use crate::read::{ContentReader, Reader as _};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_piece_is_fetched_exactly_once_however_many_ask() {
        let blob = data(3_000_000, 201);
        let (src, d) = Fake::with(&[&blob]);
        let src = Arc::new(Fake {
            blobs: src.blobs.clone(),
            delay_ms: 50,
            ..Fake::default()
        });
        let dir = tempfile::tempdir().unwrap();
        for verify in [Verify::Strict, Verify::Lazy] {
            let c = cache(src.clone(), dir.path(), options(verify));
            let before = src.bytes.load(Ordering::SeqCst);
            // Across cache chunks (64 KiB here), far from their bounds.
            let (offset, len) = (100_001u64, 70_003u64);
            let reads = (0..4).map(|_| c.read_piece(&d[0], offset, len));
            for got in futures_util::future::join_all(reads).await {
                assert_eq!(
                    got.unwrap(),
                    &blob[offset as usize..(offset + len) as usize]
                );
            }
            assert_eq!(src.bytes.load(Ordering::SeqCst) - before, len);
            let s = c.stats();
            assert_eq!((s.bytes_fetched, s.requests), (len, 1), "{verify:?}");
            // Raw pieces are not kept: nothing of the blob on disk.
            let store = c.store().unwrap();
            assert!(!store.has_complete(&d[0].digest));
            assert!(
                !dir.path()
                    .join("partial/sha256")
                    .join(d[0].digest.hex())
                    .exists()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_piece_the_cache_holds_is_not_fetched_and_offline_one_it_lacks_fails() {
        let blob = data(300_000, 202);
        let (src, d) = Fake::with(&[&blob]);
        let dir = tempfile::tempdir().unwrap();
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        c.prefetch(&d[0]).await.unwrap();
        let fetched = src.bytes.load(Ordering::SeqCst);
        assert_eq!(c.read_piece(&d[0], 10, 20).await.unwrap(), &blob[10..30]);
        assert_eq!(src.bytes.load(Ordering::SeqCst), fetched);
        let (src2, d2) = Fake::with(&[&data(300_000, 203)]);
        src2.offline.store(true, Ordering::SeqCst);
        let c2 = cache(src2.clone(), dir.path(), options(Verify::Strict));
        assert!(c2.read_piece(&d2[0], 10, 20).await.is_err());
        assert_eq!(src2.requests.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_bytes_of_their_digest_are_kept_and_a_damaged_one_is_dropped() {
        let (src, _) = Fake::with(&[]);
        let dir = tempfile::tempdir().unwrap();
        let c = cache(src, dir.path(), options(Verify::Strict));
        let piece = data(5000, 204);
        let digest = Digest::of(&piece);
        // Bytes that are not the digest's: refused, nothing stored.
        assert!(c.keep(&digest, &piece[1..]).is_err());
        assert!(!c.store().unwrap().has_complete(&digest));
        assert_eq!(c.read_kept(&digest, Some(5000), 5000).await, None);
        assert!(c.keep(&digest, &piece).unwrap());
        assert_eq!(c.read_kept(&digest, None, 5000).await.unwrap(), &piece[..]);
        // Over the limit, or of another size: not read.
        assert_eq!(c.read_kept(&digest, None, 4999).await, None);
        // Changed at rest: detected, dropped.
        let path = c.store().unwrap().blob_path(&digest);
        let mut bad = piece.clone();
        bad[2500] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(c.read_kept(&digest, Some(5000), 5000).await, None);
        assert!(!path.exists());
        assert!(c.stats().verify_failures >= 2);
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut e, bytes).unwrap();
        e.finish().unwrap()
    }

    /// A layer of three gzip members between other bytes, and a file whose
    /// two chunks are the first two.
    fn chunked_layer(seed: u32) -> (Vec<u8>, Vec<u8>, Vec<FileChunk>) {
        let file = data(150_000, seed);
        let mut layer = data(200_000, seed + 1);
        let mut chunks = Vec::new();
        for (offset, part) in [(0u64, &file[..100_000]), (100_000, &file[100_000..])] {
            let start = layer.len() as u64;
            layer.extend(gzip(part));
            chunks.push(FileChunk {
                offset,
                size: part.len() as u64,
                start,
                end: layer.len() as u64,
                inner: 0,
                digest: <sha2::Sha256 as sha2::Digest>::digest(part).into(),
            });
        }
        layer.extend(gzip(&data(50_000, seed + 2)));
        layer.extend(data(200_000, seed + 3));
        (layer, file, chunks)
    }

    fn content(blob: &Descriptor, file: &[u8], chunks: &[FileChunk]) -> Content {
        Content::Chunked(ChunkedFile {
            layer: Arc::new(ChunkedLayer {
                blob: blob.clone(),
                compression: Compression::Gzip,
            }),
            size: file.len() as u64,
            chunks: chunks.to_vec().into(),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_is_fetched_as_its_compressed_bytes_and_kept_decoded_for_any_layer() {
        let (layer, file, chunks) = chunked_layer(300);
        let (src, d) = Fake::with(&[&layer]);
        let dir = tempfile::tempdir().unwrap();
        let f = content(&d[0], &file, &chunks);
        let span = chunks[1].end - chunks[0].start;
        for verify in [Verify::Strict, Verify::Lazy] {
            let c = cache(src.clone(), dir.path(), options(verify));
            let r = ContentReader::over_cache(&c);
            let before = src.bytes.load(Ordering::SeqCst);
            // Both chunks: their compressed bytes, not a byte more.
            let got = r.read(&f, 99_000, 2000).await.unwrap();
            assert_eq!(got, &file[99_000..101_000]);
            let fetched = src.bytes.load(Ordering::SeqCst) - before;
            if verify == Verify::Strict {
                assert_eq!(fetched, span);
                assert_eq!(c.stats().bytes_fetched, span);
            } else {
                // Kept decoded by the first pass: nothing fetched.
                assert_eq!(fetched, 0);
            }
            // A new reader (no memory of its own), the whole file: from
            // the decoded chunks kept on disk, fetching nothing.
            let r = ContentReader::over_cache(&c);
            let before = src.bytes.load(Ordering::SeqCst);
            assert_eq!(r.read(&f, 0, file.len() as u64).await.unwrap(), &file[..]);
            assert_eq!(src.bytes.load(Ordering::SeqCst), before);
        }
        // Another layer naming the same chunks finds them too.
        let mut other = vec![7u8; 1000];
        other.extend_from_slice(&layer);
        let (src2, d2) = Fake::with(&[&other]);
        let c = cache(src2.clone(), dir.path(), options(Verify::Strict));
        let moved: Vec<FileChunk> = chunks
            .iter()
            .map(|c| FileChunk {
                start: c.start + 1000,
                end: c.end + 1000,
                ..*c
            })
            .collect();
        let r = ContentReader::over_cache(&c);
        let got = r
            .read(&content(&d2[0], &file, &moved), 0, 10)
            .await
            .unwrap();
        assert_eq!(got, &file[..10]);
        assert_eq!(src2.bytes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_chunk_is_never_served_nor_kept_and_a_kept_one_changed_is_fetched_again() {
        let (layer, file, chunks) = chunked_layer(400);
        let (src, d) = Fake::with(&[&layer]);
        let dir = tempfile::tempdir().unwrap();
        let c = cache(src.clone(), dir.path(), options(Verify::Strict));
        let f = content(&d[0], &file, &chunks);
        let digest = Digest::of(&file[..100_000]);
        // The fetched bytes are changed on the way: the read fails, and
        // nothing is kept under the chunk's digest.
        src.corrupt.store(true, Ordering::SeqCst);
        assert!(ContentReader::over_cache(&c).read(&f, 0, 10).await.is_err());
        assert!(!c.store().unwrap().has_complete(&digest));
        // A chunk whose compressed bytes decode to other bytes than its
        // digest's: not served, not kept.
        let mut lying = chunks.clone();
        lying[0].digest = [9; 32];
        src.corrupt.store(false, Ordering::SeqCst);
        let r = ContentReader::over_cache(&c);
        assert!(r.read(&content(&d[0], &file, &lying), 0, 10).await.is_err());
        assert!(!c.store().unwrap().has_complete(&Digest::sha256([9; 32])));
        // Read and kept; then changed on disk: found out, fetched again.
        let r = ContentReader::over_cache(&c);
        assert_eq!(r.read(&f, 0, 10).await.unwrap(), &file[..10]);
        let path = c.store().unwrap().blob_path(&digest);
        let mut bad = std::fs::read(&path).unwrap();
        bad[5] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let before = src.bytes.load(Ordering::SeqCst);
        let r = ContentReader::over_cache(&c);
        assert_eq!(r.read(&f, 0, 10).await.unwrap(), &file[..10]);
        assert_eq!(
            src.bytes.load(Ordering::SeqCst) - before,
            chunks[0].end - chunks[0].start
        );
        assert_eq!(std::fs::read(&path).unwrap(), &file[..100_000]);
    }
}

/// A lazy reader's long sequential run served from one stream
/// (`Inner::stream_for`).
mod stream_ahead {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// The fake, with a stream that sends the blob in 256 KiB pieces as it
    /// is polled, counting what it sent: what a reader pulls off the wire.
    #[derive(Debug)]
    struct Pieces {
        fake: Arc<Fake>,
        streams: AtomicU64,
    }

    #[async_trait]
    impl Source for Pieces {
        fn name(&self) -> String {
            "pieces".into()
        }
        fn is_remote(&self) -> bool {
            true
        }
        async fn manifest(&self, _: &Selector) -> Result<FetchedManifest> {
            unimplemented!()
        }
        async fn read_range(&self, blob: &Descriptor, offset: u64, len: u64) -> Result<Bytes> {
            self.fake.read_range(blob, offset, len).await
        }
        async fn stream(&self, blob: &Descriptor) -> Result<BlobStream> {
            self.stream_from(blob, 0).await
        }
        async fn stream_from(&self, blob: &Descriptor, offset: u64) -> Result<BlobStream> {
            self.streams.fetch_add(1, Ordering::SeqCst);
            self.fake.requests.fetch_add(1, Ordering::SeqCst);
            let (fake, digest, size) = (self.fake.clone(), blob.digest.clone(), blob.size);
            Ok(Box::pin(futures_util::stream::unfold(offset, move |at| {
                let (fake, digest) = (fake.clone(), digest.clone());
                async move {
                    if at >= size {
                        return None;
                    }
                    let end = (at + MIB / 4).min(size);
                    fake.bytes.fetch_add(end - at, Ordering::SeqCst);
                    let piece =
                        Bytes::copy_from_slice(&fake.blobs[&digest][at as usize..end as usize]);
                    Some((Ok(piece), end))
                }
            })))
        }
        async fn tags(&self) -> Result<Vec<String>> {
            Ok(vec![])
        }
    }

    fn setup(
        size: u64,
    ) -> (
        Vec<u8>,
        Arc<Pieces>,
        Descriptor,
        tempfile::TempDir,
        ChunkCache,
    ) {
        let blob = data(size as usize, 17);
        let (fake, d) = Fake::with(&[&blob]);
        let src = Arc::new(Pieces {
            fake,
            streams: AtomicU64::new(0),
        });
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path()).unwrap());
        let c = ChunkCache::new(
            src.clone(),
            Some(store),
            CacheOptions {
                verify: Verify::Lazy,
                ..CacheOptions::default()
            },
        )
        .unwrap();
        (blob, src, d[0].clone(), dir, c)
    }

    async fn read_in_order(c: &ChunkCache, d: &Descriptor, blob: &[u8], upto: u64) {
        for at in (0..upto).step_by(MIB as usize) {
            let got = c.read_blob(d, at, MIB).await.unwrap();
            let end = (at + MIB).min(blob.len() as u64) as usize;
            assert_eq!(&got[..], &blob[at as usize..end], "bytes at {at}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_lazy_sequential_run_is_served_from_one_stream_and_checked_whole() {
        let size = 96 * MIB;
        let (blob, src, d, _dir, c) = setup(size);
        read_in_order(&c, &d, &blob, size).await;
        assert_eq!(src.streams.load(Ordering::SeqCst), 1, "one stream");
        let requests = src.fake.requests.load(Ordering::SeqCst);
        // The first 16 MiB by range (the read and its read-ahead), then
        // one stream: not the 50-odd requests of range reads alone.
        assert!(requests <= 20, "{requests} requests");
        let sent = src.fake.bytes.load(Ordering::SeqCst);
        assert!(
            (size..=size + 2 * MIB).contains(&sent),
            "{sent} bytes sent for a {size}-byte blob"
        );
        // Read to its end, the blob is checked whole and kept.
        for _ in 0..500 {
            if c.stats().blobs_verified == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(c.stats().blobs_verified, 1, "{:?}", c.stats());
        src.fake.offline.store(true, Ordering::SeqCst);
        let got = c.read_blob(&d, size - MIB, MIB).await.unwrap();
        assert_eq!(&got[..], &blob[(size - MIB) as usize..]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lazy_stream_stops_soon_after_its_reader_does() {
        let size = 128 * MIB;
        let (blob, src, d, _dir, c) = setup(size);
        read_in_order(&c, &d, &blob, 24 * MIB).await;
        assert_eq!(src.streams.load(Ordering::SeqCst), 1, "one stream");
        // The stream stops on its own, its idle time after the reader
        // stopped (waited for as the stream's end, not as a time).
        let started = Instant::now();
        while !c.inner.aheads.lock().unwrap().is_empty() {
            assert!(
                started.elapsed() < AHEAD_IDLE * 10,
                "the stream never stopped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(started.elapsed() >= AHEAD_IDLE / 2, "stopped before idling");
        let sent = src.fake.bytes.load(Ordering::SeqCst);
        // Read 24 MiB, plus the read-ahead window (8 MiB), plus the lead
        // (32 MiB), plus a batch being written and a piece in hand.
        assert!(
            sent <= 24 * MIB + 8 * MIB + AHEAD_LEAD + 5 * MIB,
            "{sent} bytes sent for a 24 MiB read"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            src.fake.bytes.load(Ordering::SeqCst),
            sent,
            "the stream went on after its reader stopped"
        );
        assert_eq!(c.stats().blobs_verified, 0);
        // A reader coming back further on is served (a new stream or by
        // range) with the right bytes.
        let got = c.read_blob(&d, 100 * MIB, MIB).await.unwrap();
        assert_eq!(&got[..], &blob[(100 * MIB) as usize..(101 * MIB) as usize]);
    }
}

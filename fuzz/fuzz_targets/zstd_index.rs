//! zstd streams through the frame indexer. Invariant: errors are fine,
//! panics are bugs; decoding from every frame the indexer recorded, with
//! only the compressed bytes a reader would fetch, yields what the indexer
//! yielded at that offset.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use ocifs_core::internals::zstd::{self, ZstdIndexer};

fuzz_target!(|data: &[u8]| {
    let mut indexer = ZstdIndexer::new(data, 1, 1 << 20);
    let mut out = Vec::new();
    // On an error, `out` holds what was yielded before it: the points
    // recorded so far must still reproduce that.
    let _ = indexer.read_to_end(&mut out);
    let points = indexer.points().to_vec();
    for p in &points {
        assert!(p.uncompressed <= out.len() as u64);
        let len = (out.len() as u64 - p.uncompressed).min(2048);
        let end = zstd::compressed_end(&points, p.uncompressed + len, data.len() as u64);
        let from = &data[p.compressed as usize..end as usize];
        let mut got = Vec::new();
        zstd::decode_from(p, from, 0, &mut got, len, 1 << 20)
            .unwrap_or_else(|e| panic!("decoding from {p:?}: {e}"));
        let at = p.uncompressed as usize;
        assert!(got == out[at..at + len as usize], "point {p:?}");
    }
});

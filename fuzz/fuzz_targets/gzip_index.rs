//! gzip streams through the seek-point indexer. Invariant: errors are
//! fine, panics are bugs; inflating from every point the indexer recorded,
//! with only the compressed bytes a reader would fetch, yields what the
//! indexer yielded at that offset.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use ocifs_core::internals::gzip::{self, GzipIndexer};

fuzz_target!(|data: &[u8]| {
    let Ok(mut indexer) = GzipIndexer::new(data, 512, 1 << 20) else {
        return;
    };
    let mut out = Vec::new();
    // On an error, `out` holds what was yielded before it: the points
    // recorded so far must still reproduce that.
    let _ = indexer.read_to_end(&mut out);
    let points = indexer.points().to_vec();
    for p in &points {
        assert!(p.uncompressed <= out.len() as u64 && p.bits < 8 && p.window.len() <= 32 << 10);
        let len = (out.len() as u64 - p.uncompressed).min(2048);
        let end = gzip::compressed_end(&points, p.uncompressed + len, data.len() as u64);
        let from = &data[p.input_start() as usize..end as usize];
        let mut got = Vec::new();
        gzip::inflate_from(p, from, 0, &mut got, len, 1 << 20)
            .unwrap_or_else(|e| panic!("inflating from {p:?}: {e}"));
        let at = p.uncompressed as usize;
        assert!(got == out[at..at + len as usize], "point {p:?}");
    }
});

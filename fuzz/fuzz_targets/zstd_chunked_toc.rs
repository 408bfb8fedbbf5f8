//! zstd:chunked tables of contents, as a registry may send them: the
//! compressed TOC (its own digest taken as the annotation's, so decoding is
//! reached) and the TOC's JSON. Invariant: errors are fine; panics, hangs
//! and unbounded memory are bugs; every file's chunks cover it back to
//! back, inside the layer's data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocifs_core::Digest;
use ocifs_core::internals::chunked;

fuzz_target!(|data: &[u8]| {
    let Some((&what, rest)) = data.split_first() else {
        return;
    };
    if what % 2 == 0 {
        let _ = chunked::zstd_chunked_toc(rest, &Digest::of(rest), u64::from(what) << 12);
        return;
    }
    if let Ok((entries, _)) = chunked::entries(rest, true, 1 << 40, 100_000) {
        for e in entries {
            if let Some(chunks) = &e.chunks {
                let mut at = 0;
                for c in chunks.iter() {
                    assert_eq!(c.offset, at, "chunks back to back");
                    assert!(c.start < c.end && c.end <= 1 << 40);
                    at += c.size;
                }
                assert_eq!(at, e.size, "chunks must cover the file");
            }
        }
    }
});

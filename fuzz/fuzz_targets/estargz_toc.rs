//! eStargz footers and tables of contents, as a registry may send them.
//! Invariant: errors are fine, panics, hangs and unbounded memory are bugs.
//!
//! The input's first byte picks what it is: a blob's tail (footer), the
//! TOC region (a gzip member of a tar; its digest is taken as expected,
//! so the parser proper is reached), or the TOC's JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocifs_core::Digest;
use ocifs_core::internals::chunked;

fuzz_target!(|data: &[u8]| {
    let Some((&what, rest)) = data.split_first() else {
        return;
    };
    match what % 3 {
        0 => {
            let _ = chunked::estargz_footer(rest);
        }
        1 => {
            // Any digest: a region whose JSON does not match is refused
            // after it decoded, which is the path to cover.
            let _ = chunked::estargz_toc(rest, &Digest::of(b""));
        }
        _ => {
            if let Ok((entries, _)) = chunked::entries(rest, false, 1 << 40, 100_000) {
                for e in entries {
                    if let Some(chunks) = &e.chunks {
                        let total: u64 = chunks.iter().map(|c| c.size).sum();
                        assert_eq!(total, e.size, "chunks must cover the file");
                        assert!(chunks.iter().all(|c| c.start < c.end && c.end <= 1 << 40));
                    }
                }
            }
        }
    }
});

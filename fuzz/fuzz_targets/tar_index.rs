//! Arbitrary bytes as a tar package: walked as a plain tar, the same bytes
//! gzip-compressed walked as a tgz, and the bytes themselves as a (usually
//! broken) gzip and zstd stream; every file listed is then read through the
//! `EntryReader`. Invariant: errors are fine; panics, hangs and allocations
//! out of proportion to the input are bugs (a compressed stream may not
//! grow past the bomb bound); a read that succeeds has exactly the length
//! asked for.
#![no_main]

mod common;

use std::io::Write as _;

use libfuzzer_sys::fuzz_target;
use ocifs_core::{Compression, Format};

fuzz_target!(|data: &[u8]| {
    common::index_and_read(data, Format::Tar(Compression::None));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip into memory");
    let gz = gz.finish().expect("gzip into memory");
    common::index_and_read(&gz, Format::Tar(Compression::Gzip));
    common::index_and_read(data, Format::Tar(Compression::Gzip));
    common::index_and_read(data, Format::Tar(Compression::Zstd));
});

//! Arbitrary bytes as a zip package: the central directory read by range
//! reads (rc-zip's state machine, then ocifs's checks), then every entry it
//! lists read through the `EntryReader` (local header, inflate, CRC-32).
//! Invariant: errors are fine; panics, hangs and allocations out of
//! proportion to the input are bugs; a read that succeeds has exactly the
//! length asked for.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use ocifs_core::Format;

fuzz_target!(|data: &[u8]| {
    common::index_and_read(data, Format::Zip);
});

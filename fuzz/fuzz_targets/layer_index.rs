//! On-disk layer indexes. Invariant: errors are fine, panics are bugs; an
//! index that decodes encodes to bytes that decode to the same index.
//!
//! Damaged bytes almost never pass the index's checksum, so an input whose
//! first byte is not 0 is taken as an index *body* and given a valid
//! header and checksum: the fuzzer then explores the decoder proper.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocifs_core::internals::format;
use sha2::{Digest as _, Sha256};

fuzz_target!(|data: &[u8]| {
    let Some((&raw, rest)) = data.split_first() else {
        return;
    };
    let sealed;
    let bytes = if raw == 0 {
        rest
    } else {
        let mut b = format::MAGIC.to_vec();
        b.extend_from_slice(&format::VERSION.to_le_bytes());
        b.extend_from_slice(rest);
        let sum = Sha256::digest(&b);
        b.extend_from_slice(&sum);
        sealed = b;
        &sealed[..]
    };
    if let Ok(index) = format::decode(bytes) {
        let again = format::decode(&format::encode(&index))
            .unwrap_or_else(|e| panic!("the re-encoded index fails: {e}"));
        assert_eq!(again, index);
    }
});

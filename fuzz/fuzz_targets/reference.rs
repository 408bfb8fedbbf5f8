//! References as typed on a command line. Invariant: errors are fine,
//! panics are bugs; a reference that parses prints as a string that parses
//! back to the same reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocifs_core::Reference;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Reference::Registry(r)) = Reference::parse(input) {
        let printed = r.to_string();
        match Reference::parse(&printed) {
            Ok(Reference::Registry(again)) => assert_eq!(again, r, "{input:?} → {printed:?}"),
            other => panic!("{input:?} printed as {printed:?}, which parses as {other:?}"),
        }
    }
});

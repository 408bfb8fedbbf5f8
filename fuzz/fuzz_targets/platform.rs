//! `--platform` strings and platform matching. Invariant: errors are fine,
//! panics are bugs; a platform that parses matches itself, and prints as a
//! string that parses back to the same platform.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocifs_core::Platform;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (a, b) = input.split_once('|').unwrap_or((input, "linux/amd64"));
    let (Ok(a), b) = (a.parse::<Platform>(), b.parse::<Platform>()) else {
        return;
    };
    assert!(a.matches(&a), "{a:?} does not match itself");
    let printed = a.to_string();
    let again: Platform = printed
        .parse()
        .unwrap_or_else(|e| panic!("{a:?} printed as {printed:?}, which fails: {e}"));
    assert_eq!(again, a, "{printed:?}");
    if let Ok(b) = b {
        let _ = a.matches(&b);
        let _ = a.is_default_variant_of(&b);
    }
});

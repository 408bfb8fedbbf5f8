//! Manifests and indexes as a registry or layout serves them, with any
//! declared media type. Invariant: errors are fine, panics are bugs; a
//! parsed index's platforms each match themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocifs_core::{Parsed, media_type, parse_manifest};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let declared = match selector % 5 {
        0 => None,
        1 => Some(media_type::OCI_INDEX),
        2 => Some(media_type::OCI_MANIFEST),
        3 => Some(media_type::DOCKER_LIST),
        _ => Some("application/json"),
    };
    if let Ok(Parsed::Index(index)) = parse_manifest(bytes, declared, "fuzz") {
        for entry in &index.manifests {
            if let Some(p) = &entry.platform {
                assert!(p.matches(p), "{p:?} does not match itself");
            }
        }
    }
});

//! Arbitrary bytes as an image layer's tar stream, walked into its table of
//! contents, and merged as the only layer of an image. Invariant: errors
//! are fine; panics, hangs and allocations out of proportion are bugs; every
//! entry walked is normalised (no `..`, no leading `/`) and every file's data
//! lies inside the stream.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ocifs_core::internals::overlay::{MergeLayer, merge};
use ocifs_core::internals::tar::{self as toc, EntryKind, Stream};
use ocifs_core::{Compression, Descriptor, Digest, TarStream};

fuzz_target!(|data: &[u8]| {
    let Ok(walked) = toc::walk(&mut Stream(data), 10_000) else {
        return;
    };
    for e in &walked.entries {
        assert!(!e.path.starts_with('/') && !e.path.split('/').any(|c| c == ".."));
        if e.kind == EntryKind::File {
            assert!(e.offset + e.size <= data.len() as u64, "{e:?}");
        }
    }
    let layer = Arc::new(TarStream {
        blob: Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: Digest::of(data),
            size: data.len() as u64,
            annotations: Default::default(),
            platform: None,
            artifact_type: None,
            urls: Vec::new(),
        },
        compression: Compression::None,
        uncompressed_size: data.len() as u64,
        points: Default::default(),
        keep_decoded: false,
    });
    let tree = merge(vec![MergeLayer {
        layer,
        entries: walked.entries,
        problems: walked.problems,
        chunked: None,
    }]);
    let _ = tree.walk(ocifs_core::Tree::ROOT);
});

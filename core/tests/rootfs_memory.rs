//! The merged tree of a 100,000-entry image fits in well under 100 MiB, at
//! at most 160 bytes a node.
//!
//! Measured with a counting allocator: the bytes live once the tree is
//! built and the layer's table of contents dropped.

use std::collections::BTreeMap;
use std::sync::Arc;

use ocifs_core::internals::overlay::{MergeLayer, merge};
use ocifs_core::internals::tar::{EntryKind, TocEntry};
use ocifs_core::{Compression, Descriptor, Digest, TarStream};

mod common;

#[global_allocator]
static ALLOCATOR: common::Counting = common::Counting;

fn entry(path: String, kind: EntryKind, offset: u64) -> TocEntry {
    TocEntry {
        path,
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        size: if kind == EntryKind::File { 4096 } else { 0 },
        offset,
        link: String::new(),
        major: 0,
        minor: 0,
        xattrs: Vec::new(),
        sparse: None,
        chunks: None,
    }
}

#[test]
fn a_100k_entry_image_tree_fits_in_well_under_100_mib() {
    let layer = Arc::new(TarStream {
        blob: Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Digest::of(b"layer"),
            size: 1 << 30,
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            urls: Vec::new(),
        },
        compression: Compression::Gzip,
        uncompressed_size: 1 << 31,
        points: Default::default(),
        keep_decoded: false,
    });
    let before = common::live();
    let tree = {
        // Paths as deep and as long as a distribution's: 1,000 directories
        // of 99 files, under usr/share/….
        let mut entries = Vec::new();
        for d in 0..1000 {
            let dir = format!("usr/share/locale/language-{d:04}/LC_MESSAGES");
            entries.push(entry(dir.clone(), EntryKind::Dir, 0));
            for f in 0..99 {
                entries.push(entry(
                    format!("{dir}/package-name-{f:03}.mo"),
                    EntryKind::File,
                    (d * 100 + f) * 5120,
                ));
            }
        }
        assert_eq!(entries.len(), 100_000);
        merge(vec![MergeLayer {
            layer,
            entries,
            problems: Vec::new(),
            chunked: None,
        }])
    };
    let used = common::live() - before;
    assert!(tree.len() >= 100_000);
    eprintln!(
        "tree of {} nodes: {:.1} MiB, {} bytes per node",
        tree.len(),
        used as f64 / (1 << 20) as f64,
        used / tree.len() as isize
    );
    assert!(used < 50 << 20, "{used} bytes for 100,000 entries");
    // About 120 bytes a node (218 while every directory kept a map of
    // its entries' names): a regression past 160 fails.
    assert!(
        used / (tree.len() as isize) <= 160,
        "{} bytes a node",
        used / tree.len() as isize
    );
}

//! The package readers on archives made in the tests: zip written byte by
//! byte (hostile ones too), tar by the `tar` crate's builder.

use std::io::Write as _;
use std::time::UNIX_EPOCH;

use proptest::prelude::*;

use super::*;
use crate::error::Error;
use crate::read::Reader as _;
use crate::testutil::{MemReader, RawEntry, RawZip};

/// Incompressible bytes.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

fn bridge() -> Vec<u8> {
    (0..300_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect()
}

/// A package like the CNI ones: a directory, an executable (deflated), a
/// text file (stored), a symlink.
fn good_zip(zip64: bool) -> Vec<u8> {
    let mut z = RawZip::default();
    z.add(&RawEntry::dir("linux-amd64/", 0o755));
    z.add(&RawEntry::file(
        "linux-amd64/bridge",
        &bridge(),
        true,
        0o755,
    ));
    z.add(&RawEntry::file(
        "linux-amd64/README",
        b"plugins\n",
        false,
        0o644,
    ));
    z.add(&RawEntry::symlink("linux-amd64/br", "bridge"));
    z.finish(zip64)
}

fn paths(index: &Listing) -> Vec<String> {
    index.items.iter().map(|i| i.path.to_string()).collect()
}

fn item(index: &Listing, path: &str) -> Item {
    index
        .items
        .iter()
        .find(|i| &*i.path == path)
        .unwrap_or_else(|| panic!("no {path} in {:?}", paths(index)))
}

fn content(item: Item) -> Content {
    match item.kind {
        ItemKind::File(c) => c,
        other => panic!("not a file: {other:?}"),
    }
}

async fn read_all(reader: &MemReader, c: &Content) -> Result<Vec<u8>> {
    reader.read(c, 0, c.size() + 10).await.map(|b| b.to_vec())
}

#[test]
fn formats_by_name() {
    let f = |n| Format::of_name(n);
    assert_eq!(f("a.zip"), Some((Format::Zip, "a")));
    assert_eq!(
        f("cni-v1.6.20.tgz"),
        Some((Format::Tar(Compression::Gzip), "cni-v1.6.20"))
    );
    assert_eq!(
        f("x/pkg.TAR.GZ"),
        Some((Format::Tar(Compression::Gzip), "x/pkg"))
    );
    assert_eq!(
        f("pkg.tar.zst"),
        Some((Format::Tar(Compression::Zstd), "pkg"))
    );
    assert_eq!(f("pkg.tar"), Some((Format::Tar(Compression::None), "pkg")));
    assert_eq!(f(".zip"), None);
    assert_eq!(f("pkg.gz"), None);
    assert_eq!(f("vmlinuz"), None);
}

#[tokio::test]
async fn zip_entries_with_modes_symlinks_and_bytes() {
    for zip64 in [false, true] {
        let zip = good_zip(zip64);
        let (reader, d) = MemReader::new(&[("cni.zip", &zip)]);
        let index = list(reader.blobs(), &d[0], Format::Zip).await.unwrap();
        assert!(index.problems.is_empty(), "{:?}", index.problems);
        assert_eq!(
            paths(&index),
            [
                "linux-amd64",
                "linux-amd64/bridge",
                "linux-amd64/README",
                "linux-amd64/br"
            ]
        );
        assert_eq!(item(&index, "linux-amd64").kind, ItemKind::Dir);
        assert_eq!(item(&index, "linux-amd64").mode, Some(0o755));
        let bridge_item = item(&index, "linux-amd64/bridge");
        assert_eq!(bridge_item.mode, Some(0o755));
        assert_eq!(item(&index, "linux-amd64/README").mode, Some(0o644));
        assert_eq!(
            item(&index, "linux-amd64/br").kind,
            ItemKind::Symlink("bridge".into())
        );
        let c = &content(bridge_item);
        assert_eq!(c.size(), bridge().len() as u64);
        assert_eq!(read_all(&reader, c).await.unwrap(), bridge());
        // A range, served from the decoded entry.
        let part = reader.read(c, 1000, 5000).await.unwrap();
        assert_eq!(&part[..], &bridge()[1000..6000]);
        let readme = &content(item(&index, "linux-amd64/README"));
        assert_eq!(read_all(&reader, readme).await.unwrap(), b"plugins\n");
    }
}

#[tokio::test]
async fn lazy_reads_fetch_the_directory_and_the_entry_only() {
    let mut z = RawZip::default();
    let big: Vec<u8> = noise(2 << 20, 7);
    z.add(&RawEntry::file("a", &big, true, 0o644));
    z.add(&RawEntry::file("b", b"small one", true, 0o644));
    z.add(&RawEntry::file("c", &big, false, 0o644));
    let zip = z.finish(false);
    let (reader, d) = MemReader::new(&[("p.zip", &zip)]);
    let index = list(reader.blobs(), &d[0], Format::Zip).await.unwrap();
    let directory = reader.read_so_far();
    assert!(directory < 70_000, "{directory}");
    let b = &content(item(&index, "b"));
    assert_eq!(read_all(&reader, b).await.unwrap(), b"small one");
    let total = reader.read_so_far();
    assert!(
        total - directory < 1024,
        "reading a 9-byte entry read {} bytes",
        total - directory
    );
}

fn hostile_zip() -> (Vec<u8>, Vec<(&'static str, &'static str)>) {
    let mut z = RawZip::default();
    let good = RawEntry::file("good", b"fine\n", true, 0o644);
    z.add(&good);
    z.add(&RawEntry::file("../evil", b"x", false, 0o644));
    z.add(&RawEntry::file("/abs", b"x", false, 0o644));
    z.add(&RawEntry::file("a\\..\\b", b"x", false, 0o644));
    z.add(&RawEntry::file("dup", b"one", false, 0o644));
    z.add(&RawEntry::file("dup", b"two", false, 0o644));
    // Two central records for one local header.
    let shared = RawEntry::file("overlap-1", b"shared bytes", false, 0o644);
    let at = z.add(&shared);
    z.central_only(
        &RawEntry {
            name: "overlap-2".into(),
            ..shared
        },
        at,
    );
    // Declared far larger than it inflates to (1 KiB said to be 100 MiB):
    // no ratio bounds a listing, so it is listed, and fails when read (the
    // reader inflates up to the declared size and finds less).
    let zeros = RawEntry::file("bomb", &vec![0u8; 1 << 20], true, 0o644);
    z.add(&RawEntry {
        size: 100 << 20,
        local_sizes: Some((100 << 20, zeros.data.len() as u64)),
        ..zeros
    });
    z.add(&RawEntry {
        flags: 1,
        ..RawEntry::file("secret", b"x", false, 0o644)
    });
    z.add(&RawEntry {
        method: 12,
        ..RawEntry::file("bzip2", b"x", false, 0o644)
    });
    let problems = vec![
        ("../evil", "escape"),
        ("/abs", "absolute"),
        ("a\\..\\b", "backslash"),
        ("dup", "more than one entry"),
        ("overlap-1", "overlaps"),
        ("overlap-2", "overlaps"),
        ("secret", "encrypted"),
        ("bzip2", "method 12"),
    ];
    (z.finish(false), problems)
}

#[tokio::test]
async fn hostile_zip_entries_are_left_out_naming_entry_and_reason() {
    let (zip, expected) = hostile_zip();
    let (reader, d) = MemReader::new(&[("evil.zip", &zip)]);
    let index = list(reader.blobs(), &d[0], Format::Zip).await.unwrap();
    assert_eq!(paths(&index), ["good", "bomb"]);
    for (name, why) in expected {
        assert!(
            index
                .problems
                .iter()
                .any(|p| p.contains(&format!("{name:?}")) && p.contains(why)),
            "no problem for {name} ({why}): {:#?}",
            index.problems
        );
    }
    let good = &content(item(&index, "good"));
    assert_eq!(read_all(&reader, good).await.unwrap(), b"fine\n");
    let bomb = &content(item(&index, "bomb"));
    let e = read_all(&reader, bomb).await.unwrap_err();
    assert!(matches!(e, Error::Archive { .. }), "{e}");
}

#[tokio::test]
async fn entries_that_lie_fail_when_read() {
    let mut z = RawZip::default();
    // Sizes disagree between the central directory and the local header.
    z.add(&RawEntry {
        local_sizes: Some((3, 3)),
        ..RawEntry::file("mismatch", b"hello", false, 0o644)
    });
    // Declares fewer bytes than it inflates to.
    let more = RawEntry::file("more", &[7u8; 5000], true, 0o644);
    z.add(&RawEntry {
        size: 100,
        local_sizes: Some((100, more.data.len() as u64)),
        ..more
    });
    // A wrong CRC-32 in both headers.
    z.add(&RawEntry {
        crc: 1,
        ..RawEntry::file("crc", b"payload", true, 0o644)
    });
    let zip = z.finish(false);
    let (reader, d) = MemReader::new(&[("liar.zip", &zip)]);
    let index = list(reader.blobs(), &d[0], Format::Zip).await.unwrap();
    assert!(index.problems.is_empty(), "{:?}", index.problems);
    let err = |name: &'static str| {
        let c = content(item(&index, name));
        let reader = &reader;
        async move { read_all(reader, &c).await.unwrap_err() }
    };
    let e = err("mismatch").await;
    assert!(e.to_string().contains("sizes disagree"), "{e}");
    assert!(e.to_string().contains("\"mismatch\""), "{e}");
    assert_eq!(e.exit_code(), crate::error::exit_code::INVALID_CONTENT);
    let e = err("more").await;
    assert!(e.to_string().contains("more than the 100 bytes"), "{e}");
    let e = err("crc").await;
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains("CRC-32"), "{e}");
}

#[tokio::test]
async fn not_a_zip_is_a_package_error() {
    for bytes in [&b""[..], b"PK\x03\x04 not really", &[0u8; 100_000]] {
        let (reader, d) = MemReader::new(&[("junk.zip", bytes)]);
        let e = list(reader.blobs(), &d[0], Format::Zip).await.unwrap_err();
        assert!(matches!(e, Error::Archive { .. }), "{e}");
        assert!(e.to_string().contains("junk.zip"), "{e}");
    }
}

fn tar_of(build: impl FnOnce(&mut ::tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = ::tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().expect("tar")
}

fn header(kind: ::tar::EntryType, size: u64, mode: u32) -> ::tar::Header {
    let mut h = ::tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h
}

fn good_tar() -> Vec<u8> {
    tar_of(|b| {
        let mut h = header(::tar::EntryType::Directory, 0, 0o755);
        b.append_data(&mut h, "./linux-amd64/", &[][..]).unwrap();
        let data = bridge();
        let mut h = header(::tar::EntryType::Regular, data.len() as u64, 0o755);
        b.append_data(&mut h, "./linux-amd64/bridge", &data[..])
            .unwrap();
        let long = format!("linux-amd64/{}", "n".repeat(150));
        let mut h = header(::tar::EntryType::Regular, 4, 0o644);
        b.append_data(&mut h, &long, &b"long"[..]).unwrap();
        let mut h = header(::tar::EntryType::Symlink, 0, 0o777);
        b.append_link(&mut h, "linux-amd64/br", "bridge").unwrap();
        let mut h = header(::tar::EntryType::Link, 0, 0o755);
        b.append_link(&mut h, "linux-amd64/hard", "linux-amd64/bridge")
            .unwrap();
        b.append_pax_extensions([("path", &b"linux-amd64/pax-name"[..])])
            .unwrap();
        let mut h = header(::tar::EntryType::Regular, 3, 0o600);
        b.append_data(&mut h, "ignored", &b"pax"[..]).unwrap();
    })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

#[tokio::test]
async fn tar_entries_plain_gzip_and_zstd() {
    let tar = good_tar();
    for (compression, bytes) in [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
        (Compression::Zstd, zstd(&tar)),
    ] {
        let (reader, d) = MemReader::new(&[("cni.tar", &bytes)]);
        let index = list(reader.blobs(), &d[0], Format::Tar(compression))
            .await
            .unwrap();
        assert!(index.problems.is_empty(), "{:?}", index.problems);
        let long = format!("linux-amd64/{}", "n".repeat(150));
        assert_eq!(
            paths(&index),
            [
                "linux-amd64",
                "linux-amd64/bridge",
                long.as_str(),
                "linux-amd64/br",
                "linux-amd64/hard",
                "linux-amd64/pax-name"
            ],
            "{compression:?}"
        );
        let b = item(&index, "linux-amd64/bridge");
        assert_eq!(b.mode, Some(0o755));
        assert_eq!(
            b.mtime,
            Some(UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
        );
        let b = &content(b);
        assert_eq!(read_all(&reader, b).await.unwrap(), bridge());
        let part = reader.read(b, 777, 1234).await.unwrap();
        assert_eq!(&part[..], &bridge()[777..777 + 1234]);
        assert_eq!(
            read_all(&reader, &content(item(&index, &long)))
                .await
                .unwrap(),
            b"long"
        );
        assert_eq!(
            item(&index, "linux-amd64/br").kind,
            ItemKind::Symlink("bridge".into())
        );
        assert_eq!(
            &content(item(&index, "linux-amd64/hard")),
            b,
            "a hard link is the same file"
        );
        assert_eq!(
            read_all(&reader, &content(item(&index, "linux-amd64/pax-name")))
                .await
                .unwrap(),
            b"pax"
        );
    }
}

#[tokio::test]
async fn a_sparse_file_reads_as_zeros_in_its_holes_and_reading_a_hole_reads_nothing() {
    // A 1.0 PAX sparse file (bsdtar's and GNU tar's): 8 MiB, data at 1 MiB
    // (3 KiB) and at 5 MiB (an incompressible 100 KiB), a hard link to it.
    let size: u64 = 8 << 20;
    let first = vec![0xabu8; 3 << 10];
    let second = noise(100 << 10, 7);
    let (a, b) = (1u64 << 20, 5u64 << 20);
    let mut body = format!("2\n{a}\n{}\n{b}\n{}\n", first.len(), second.len()).into_bytes();
    body.resize(512, 0);
    body.extend_from_slice(&first);
    body.extend_from_slice(&second);
    let tar = tar_of(|t| {
        t.append_pax_extensions([
            ("GNU.sparse.major", &b"1"[..]),
            ("GNU.sparse.minor", &b"0"[..]),
            ("GNU.sparse.name", &b"img/disk.raw"[..]),
            ("GNU.sparse.realsize", size.to_string().as_bytes()),
        ])
        .unwrap();
        let mut h = header(::tar::EntryType::Regular, body.len() as u64, 0o644);
        t.append_data(&mut h, "img/GNUSparseFile.0/disk.raw", &body[..])
            .unwrap();
        let mut h = header(::tar::EntryType::Link, 0, 0o644);
        t.append_link(&mut h, "img/again.raw", "img/disk.raw")
            .unwrap();
    });
    let mut want = vec![0u8; size as usize];
    want[a as usize..a as usize + first.len()].copy_from_slice(&first);
    want[b as usize..b as usize + second.len()].copy_from_slice(&second);
    for (compression, bytes) in [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
        (Compression::Zstd, zstd(&tar)),
    ] {
        let (reader, d) = MemReader::new(&[("img.tar", &bytes)]);
        let index = list(reader.blobs(), &d[0], Format::Tar(compression))
            .await
            .unwrap();
        assert!(index.problems.is_empty(), "{:?}", index.problems);
        assert_eq!(paths(&index), ["img/disk.raw", "img/again.raw"]);
        let c = &content(item(&index, "img/disk.raw"));
        assert_eq!(c.size(), size, "{compression:?}");
        assert_eq!(&content(item(&index, "img/again.raw")), c);
        assert!(
            read_all(&reader, c).await.unwrap() == want,
            "{compression:?}"
        );
        // Across a range's edges, and inside one.
        for (at, len) in [
            (a - 10, 30),
            (b + 4000, 100_000),
            (b + 10, 20),
            (size - 5, 10),
        ] {
            let got = reader.read(c, at, len).await.unwrap();
            let end = (at + len).min(size) as usize;
            assert!(got[..] == want[at as usize..end], "{compression:?} at {at}");
        }
        // A hole reads as zeros without reading the package.
        let before = reader.read_so_far();
        let got = reader.read(c, 2 << 20, 1 << 20).await.unwrap();
        assert!(got.len() == 1 << 20 && got.iter().all(|b| *b == 0));
        assert_eq!(
            reader.read_so_far(),
            before,
            "{compression:?}: a hole read bytes"
        );
    }
}

#[tokio::test]
async fn hostile_tar_entries_are_left_out() {
    let raw_name = |b: &mut ::tar::Builder<Vec<u8>>, name: &str| {
        // Set the name field directly: the builder refuses `..` itself.
        let mut h = header(::tar::EntryType::Regular, 1, 0o644);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
    };
    let tar = tar_of(|b| {
        raw_name(b, "../evil");
        raw_name(b, "/abs");
        raw_name(b, "a\\..\\b");
        raw_name(b, "dup");
        raw_name(b, "dup");
        raw_name(b, "good");
        let mut h = header(::tar::EntryType::Char, 0, 0o644);
        b.append_data(&mut h, "dev", &[][..]).unwrap();
        let mut h = header(::tar::EntryType::Link, 0, 0o644);
        b.append_link(&mut h, "dangling", "nowhere").unwrap();
    });
    let (reader, d) = MemReader::new(&[("evil.tar", &tar)]);
    let index = list(reader.blobs(), &d[0], Format::Tar(Compression::None))
        .await
        .unwrap();
    assert_eq!(paths(&index), ["good"]);
    for (name, why) in [
        ("../evil", "escape"),
        ("/abs", "absolute"),
        ("dup", "more than one"),
        ("dev", "device"),
        ("dangling", "hard link"),
    ] {
        assert!(
            index
                .problems
                .iter()
                .any(|p| p.contains(&format!("{name:?}")) && p.contains(why)),
            "no problem for {name}: {:#?}",
            index.problems
        );
    }
}

#[tokio::test]
async fn broken_tars_are_package_errors() {
    let mut bad_sum = good_tar();
    bad_sum[10] ^= 1;
    let truncated = good_tar()[..1500].to_vec();
    // A small tar, then 4 MiB of zeros past its end, gzipped: decoding is
    // bounded by what the tar declares, not by the ratio.
    let trailing = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&good_tar()).unwrap();
        e.write_all(&vec![0u8; 4 << 20]).unwrap();
        e.finish().unwrap()
    };
    for (bytes, compression, why) in [
        (bad_sum, Compression::None, "checksum"),
        (truncated, Compression::None, "ends inside"),
        (trailing, Compression::Gzip, "more than its tar declares"),
        (b"not gzip at all".to_vec(), Compression::Gzip, "unreadable"),
    ] {
        let (reader, d) = MemReader::new(&[("bad.tgz", &bytes)]);
        let e = list(reader.blobs(), &d[0], Format::Tar(compression))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Archive { .. }), "{e}");
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
}

#[test]
fn the_index_future_is_send() {
    fn send<T: Send>(_: &T) {}
    let (reader, d) = MemReader::new(&[("x.zip", b"")]);
    send(&list(reader.blobs(), &d[0], Format::Zip));
    let content = crate::read::ContentReader::new(reader.blobs().clone());
    send(&crate::read::Reader::read(
        &content,
        &Content::Blob(std::sync::Arc::new(d[0].clone())),
        0,
        1,
    ));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the index builders (errors are fine).
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let rt = runtime();
        let (reader, d) = MemReader::new(&[("x", &bytes)]);
        for format in [
            Format::Zip,
            Format::Tar(Compression::None),
            Format::Tar(Compression::Gzip),
            Format::Tar(Compression::Zstd),
        ] {
            let _ = rt.block_on(list(reader.blobs(), &d[0], format));
        }
    }

    /// Damaged archives never panic the index builders nor the entry
    /// readers.
    #[test]
    fn damaged_archives_never_panic(
        which in 0..3usize,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let rt = runtime();
        let (mut bytes, format) = match which {
            0 => (good_zip(false), Format::Zip),
            1 => (good_zip(true), Format::Zip),
            _ => (gzip(&good_tar()), Format::Tar(Compression::Gzip)),
        };
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let (reader, d) = MemReader::new(&[("x", &bytes)]);
        if let Ok(index) = rt.block_on(list(reader.blobs(), &d[0], format)) {
            for item in index.items {
                if let ItemKind::File(c) = item.kind {
                    let _ = rt.block_on(reader.read(&c, 0, c.size().min(1 << 20)));
                }
            }
        }
    }
}

#[tokio::test]
async fn a_zip_declaring_more_entries_than_the_limit_is_refused_before_its_directory_is_read() {
    let mut z = RawZip::default();
    z.add(&RawEntry::file("a", b"one", false, 0o644));
    let mut zip = z.finish(true);
    // The zip64 end record claims two million entries.
    let at = (0..zip.len() - 4)
        .rev()
        .find(|&i| zip[i..i + 4] == 0x0606_4b50u32.to_le_bytes())
        .expect("a zip64 end record");
    for field in [24, 32] {
        zip[at + field..at + field + 8].copy_from_slice(&2_000_000u64.to_le_bytes());
    }
    let (reader, d) = MemReader::new(&[("p.zip", &zip)]);
    let e = list(reader.blobs(), &d[0], Format::Zip).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("declares 2000000 entries, over the limit"),
        "{e}"
    );
    assert!(
        reader.read_so_far() < 200,
        "read {} bytes",
        reader.read_so_far()
    );
}

/// Where the two tar walkers ocifs once had disagreed, the tools decide:
/// the size field of a header that carries no data (a symlink, a hard
/// link, a device, a directory) is not skipped, as POSIX says ("no data
/// logical records are stored for types 1, 2, or 5"; none for 3, 4, 6)
/// and as bsdtar (libarchive), Go's archive/tar (what container runtimes
/// unpack layers with) and Python's tarfile read it. (GNU tar is the odd
/// one out: it skips a symlink's or a device's stated size.) And a header
/// checksum summed over signed bytes, as old tars wrote it, is accepted,
/// by all of them. Packages and image layers now share the one walker.
#[tokio::test]
async fn a_tar_is_read_as_bsdtar_reads_it_where_the_old_walkers_disagreed() {
    fn raw(name: &str, kind: u8, size: &[u8; 12], link: &str, signed: bool) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..name.len()].copy_from_slice(name.as_bytes());
        b[100..108].copy_from_slice(b"0000644\0");
        b[108..116].copy_from_slice(b"0000000\0");
        b[116..124].copy_from_slice(b"0000000\0");
        b[124..136].copy_from_slice(size);
        b[136..148].copy_from_slice(b"14557464000\0");
        b[156] = kind;
        b[157..157 + link.len()].copy_from_slice(link.as_bytes());
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        b[148..156].copy_from_slice(b"        ");
        let sum: i64 = b
            .iter()
            .map(|&x| {
                if signed {
                    i64::from(x as i8)
                } else {
                    i64::from(x)
                }
            })
            .sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        b
    }
    let padded = |data: &[u8]| {
        let mut v = data.to_vec();
        v.resize(data.len().div_ceil(512) * 512, 0);
        v
    };
    let name = "caf\u{e9}.txt";
    let mut tar = Vec::new();
    // A file whose name has a byte over 0x7f, its checksum summed signed.
    tar.extend(raw(name, b'0', b"00000000005\0", "", true));
    tar.extend(padded(b"hello"));
    // Headers with no data whose size fields say otherwise.
    tar.extend(raw("link", b'2', b"00000002000\0", "target", false));
    tar.extend(raw("hard", b'1', b"00000002000\0", name, false));
    tar.extend(raw("dev", b'3', b"00000002000\0", "", false));
    tar.extend(raw("dir/", b'5', b"00000001000\0", "", false));
    tar.extend(raw("last", b'0', b"00000000003\0", "", false));
    tar.extend(padded(b"end"));
    tar.extend([0u8; 1024]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("odd.tar");
    std::fs::write(&file, &tar).unwrap();
    let out = std::process::Command::new("bsdtar")
        .arg("-tf")
        .arg(&file)
        .output()
        .expect("bsdtar (Debian's libarchive-tools) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    assert_eq!(listed, [name, "link", "hard", "dev", "dir", "last"]);

    for (compression, bytes) in [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
    ] {
        let (reader, d) = MemReader::new(&[("odd.tar", &bytes)]);
        let index = list(reader.blobs(), &d[0], Format::Tar(compression))
            .await
            .unwrap();
        // Every entry bsdtar lists, but the device, which a package does
        // not show.
        let shown: Vec<&String> = listed.iter().filter(|p| *p != "dev").collect();
        assert_eq!(
            paths(&index).iter().collect::<Vec<_>>(),
            shown,
            "{compression:?}"
        );
        assert!(
            index.problems.len() == 1 && index.problems[0].contains("\"dev\""),
            "{:?}",
            index.problems
        );
        assert_eq!(
            read_all(&reader, &content(item(&index, name)))
                .await
                .unwrap(),
            b"hello"
        );
        assert_eq!(
            read_all(&reader, &content(item(&index, "hard")))
                .await
                .unwrap(),
            b"hello"
        );
        assert_eq!(
            read_all(&reader, &content(item(&index, "last")))
                .await
                .unwrap(),
            b"end"
        );
    }
}

/// A file from the middle of a 20 MB `.tgz` is inflated from the gzip seek
/// point before it, recorded when the package was listed: reading it takes
/// the compressed bytes from that point on, not the 10 MB before it.
#[tokio::test]
async fn a_file_from_the_middle_of_a_tgz_is_read_from_the_seek_point_before_it() {
    // 80 files of 256 KiB of noise: 20 MiB, as large compressed.
    let tar = tar_of(|b| {
        for i in 0..80u64 {
            let data = noise(256 << 10, i + 1);
            let mut h = header(::tar::EntryType::Regular, data.len() as u64, 0o644);
            b.append_data(&mut h, format!("f{i:02}"), &data[..])
                .unwrap();
        }
    });
    let tgz = gzip(&tar);
    assert!(tgz.len() > 20 << 20);
    let (reader, d) = MemReader::new(&[("big.tgz", &tgz)]);
    let index = list(reader.blobs(), &d[0], Format::Tar(Compression::Gzip))
        .await
        .unwrap();
    let listed = reader.read_so_far();
    assert_eq!(listed, tgz.len() as u64, "listing reads the package once");
    let middle = &content(item(&index, "f40"));
    let Content::Tar(f) = middle else {
        panic!("a tar file: {middle:?}")
    };
    assert!(
        matches!(&f.stream.points, crate::content::SeekPoints::Gzip(p) if p.len() > 3),
        "seek points recorded: {:?}",
        f.stream.points
    );
    assert_eq!(
        read_all(&reader, middle).await.unwrap(),
        noise(256 << 10, 41),
        "the file's bytes"
    );
    let read = reader.read_so_far() - listed;
    eprintln!(
        "a 256 KiB file at 10 MiB of a {} byte tgz: {read} compressed bytes read",
        tgz.len()
    );
    // The seek points are 4 MiB of output apart at most: the read starts at
    // most that far before the file (inflating from the start would read
    // the 10 MiB before it).
    assert!(read < 5 << 20, "{read} bytes read");
}

//! The container-image fixture: a Debian bookworm minbase root filesystem
//! (debootstrap, made by `scripts/test`) as the base layer, and two layers
//! written here byte by byte on top of it that exercise what a runtime
//! does when it merges layers (whiteouts, opaque directories, replacements
//! both ways, hard links within and across layers, symlinks, devices,
//! FIFOs, setuid/setgid/sticky, owners, xattrs, long names, implicit
//! parents). umoci assembles the OCI layout (`umoci raw add-layer`, gzip);
//! skopeo pushes it (as it is, or recompressed to zstd); `umoci unpack` of
//! the same layout is the reference tree.
//!
//! The layout is built once and kept under `target/fixtures/`, named by a
//! hash of its inputs, so a change to the layers here makes a new one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::tarfile::{TarKind, TarWriter};
use crate::tools::{skopeo_copy, workspace_dir};
use crate::util::{random_bytes, sha256_hex};

/// The tag of the fixture image in its layout.
pub const TAG: &str = "v1";

/// The minbase tar `scripts/test` makes with debootstrap.
///
/// # Panics
///
/// If it is missing: the README's test command makes it.
pub fn minbase_tar() -> PathBuf {
    let tar = fixtures_dir().join("minbase-bookworm.tar");
    assert!(
        tar.metadata().is_ok_and(|m| m.len() > 0),
        "{} is missing: scripts/test makes it (debootstrap --variant=minbase bookworm)",
        tar.display()
    );
    tar
}

/// `<workspace>/target/fixtures`, where `scripts/test` leaves fixtures.
pub fn fixtures_dir() -> PathBuf {
    workspace_dir().join("target/fixtures")
}

/// How skopeo pushes the image's layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    /// As umoci wrote them: gzip.
    Gzip,
    /// Recompressed by skopeo (`--dest-compress-format zstd`).
    Zstd,
}

/// One layer blob of the fixture layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its (compressed) size.
    pub size: u64,
    /// The blob file in the layout.
    pub path: PathBuf,
}

/// A regular file of the base layer, where its data sits in the layer's
/// uncompressed tar stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseFile {
    /// The path in the image (no leading `/` or `./`).
    pub path: String,
    /// The offset of its data in the uncompressed stream.
    pub offset: u64,
    /// Its size.
    pub size: u64,
    /// Its sha256 (hex).
    pub sha256: String,
}

/// ocifs's default read and cache granularity.
pub const CHUNK: u64 = 1 << 20;
/// How much uncompressed output a gzip seek point covers (ocifs's
/// default).
pub const SEEK_SPACING: u64 = 4 << 20;
/// The slack for seek points landing on deflate block boundaries.
pub const BLOCK_SLACK: u64 = 128 << 10;

/// See [`RootfsImage::middle_span`].
#[derive(Debug, Clone, Copy)]
pub struct SeekSpan {
    /// Where the span starts in the compressed layer.
    pub start: u64,
    /// Where it ends.
    pub end: u64,
    /// At most how many bytes a read of it fetches, in whole chunks.
    pub bound: u64,
}

/// The fixture image: an OCI layout with one image tagged [`TAG`].
#[derive(Debug)]
pub struct RootfsImage {
    dir: PathBuf,
    layers: Vec<LayerBlob>,
    middle: BaseFile,
    base_uncompressed: u64,
}

/// The fixture image, built on first use (and kept in `target/fixtures`).
///
/// # Panics
///
/// If the minbase tar is missing, or umoci fails.
pub fn rootfs_image() -> &'static RootfsImage {
    static IMAGE: OnceLock<RootfsImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        RootfsImage::build(
            "rootfs-image",
            &[
                (upper_layer(), "ocifs-tests: the upper layer"),
                (top_layer(), "ocifs-tests: the top layer"),
            ],
        )
    })
}

/// The minbase layer alone, as a one-layer image (umoci, gzip): what
/// converters that cannot take the fixture's cross-layer hard links
/// (ctr-remote) start from.
///
/// # Panics
///
/// As [`rootfs_image`].
pub fn minbase_image() -> &'static RootfsImage {
    static IMAGE: OnceLock<RootfsImage> = OnceLock::new();
    IMAGE.get_or_init(|| RootfsImage::build("minbase-image", &[]))
}

impl RootfsImage {
    fn build(name: &str, extra: &[(Vec<u8>, &str)]) -> Self {
        let minbase = minbase_tar();
        let meta = std::fs::metadata(&minbase).expect("stat the minbase tar");
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let mut key = format!("{}:{mtime}:", meta.len()).into_bytes();
        for (tar, _) in extra {
            key.extend_from_slice(tar);
        }
        let key = sha256_hex(&key);
        let dir = fixtures_dir().join(format!("{name}-{}", &key[..16]));
        if !dir.join("index.json").is_file() {
            let tmp =
                fixtures_dir().join(format!("{name}-{}.tmp-{}", &key[..16], std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).expect("creating the fixture dir");
            let mut tars = vec![(minbase.clone(), "debootstrap --variant=minbase bookworm")];
            for (i, (tar, comment)) in extra.iter().enumerate() {
                let path = tmp.join(format!("layer-{i}.tar"));
                std::fs::write(&path, tar).expect("writing a layer tar");
                tars.push((path, comment));
            }
            let layout = tmp.join("layout");
            let image = format!("{}:{TAG}", layout.display());
            umoci(&["init", "--layout", &layout.display().to_string()]);
            umoci(&["new", "--image", &image]);
            for (tar, comment) in &tars {
                umoci(&[
                    "raw",
                    "add-layer",
                    "--history.comment",
                    comment,
                    "--image",
                    &image,
                    &tar.display().to_string(),
                ]);
            }
            // Another test process may have made the same one meanwhile:
            // either is right.
            if std::fs::rename(&layout, &dir).is_err() && !dir.join("index.json").is_file() {
                panic!("could not move the fixture layout into {}", dir.display());
            }
            let _ = std::fs::remove_dir_all(&tmp);
        }
        let layers = read_layers(&dir);
        assert_eq!(
            layers.len(),
            1 + extra.len(),
            "the fixture's layers: {layers:?}"
        );
        let (middle, base_uncompressed) = middle_file(&minbase);
        RootfsImage {
            dir,
            layers,
            middle,
            base_uncompressed,
        }
    }

    /// The OCI layout directory.
    pub fn layout(&self) -> &Path {
        &self.dir
    }

    /// `oci:DIR:v1`, for skopeo and ocifs.
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{TAG}", self.dir.display())
    }

    /// The layer blobs, bottom first: minbase (gzip, the large one), upper,
    /// top.
    pub fn layers(&self) -> &[LayerBlob] {
        &self.layers
    }

    /// The length of the base layer's uncompressed tar stream.
    pub fn base_uncompressed_size(&self) -> u64 {
        self.base_uncompressed
    }

    /// A small regular file whose data sits about the middle of the base
    /// layer's uncompressed stream, and that no upper layer touches.
    pub fn middle_file(&self) -> &BaseFile {
        &self.middle
    }

    /// The compressed bytes of the base layer (gzip, as in the layout) a
    /// read of [`RootfsImage::middle_file`] needs at most when seek points
    /// sit every [`SEEK_SPACING`] of output: from that much output before
    /// the file to its end, each widened by [`BLOCK_SLACK`] (points land on
    /// deflate block boundaries); and `bound`, that span in whole
    /// [`CHUNK`]s, plus one (a range that many bytes long touches at most
    /// so many).
    pub fn middle_span(&self) -> SeekSpan {
        let middle = &self.middle;
        let at = gzip_compressed_offsets(
            &self.layers[0].path,
            &[
                middle.offset.saturating_sub(SEEK_SPACING + BLOCK_SLACK),
                middle.offset + middle.size + BLOCK_SLACK,
            ],
        );
        let len = at[1] - at[0];
        SeekSpan {
            start: at[0],
            end: at[1],
            bound: len.div_ceil(CHUNK) * CHUNK + CHUNK,
        }
    }

    /// Pushes the image with skopeo to `host` (plain HTTP) as `repo_tag`,
    /// its layers gzip (as in the layout) or recompressed to zstd; returns
    /// the manifest the registry now holds.
    ///
    /// # Panics
    ///
    /// If skopeo fails, or the pushed layers are not of the compression
    /// asked for.
    pub fn push(&self, host: &str, repo_tag: &str, compression: LayerCompression) -> Value {
        let dst = format!("docker://{host}/{repo_tag}");
        let mut args = vec!["--dest-tls-verify=false"];
        if compression == LayerCompression::Zstd {
            args.extend(["--dest-compress-format", "zstd", "--dest-compress"]);
        }
        skopeo_copy(&self.oci_ref(), &dst, &args);
        let manifest = registry_manifest(host, repo_tag);
        let suffix = match compression {
            LayerCompression::Gzip => "tar+gzip",
            LayerCompression::Zstd => "tar+zstd",
        };
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        assert!(
            layers.len() == self.layers.len()
                && layers
                    .iter()
                    .all(|l| l["mediaType"].as_str().is_some_and(|m| m.ends_with(suffix))),
            "skopeo pushed other layers than {suffix}: {manifest:#}"
        );
        manifest
    }

    /// `umoci unpack` of the image into `bundle` (which must not exist);
    /// returns the root filesystem (`bundle/rootfs`). As root, device nodes
    /// and owners are made as in the image.
    ///
    /// # Panics
    ///
    /// If umoci fails.
    pub fn unpack(&self, bundle: &Path) -> PathBuf {
        umoci(&[
            "unpack",
            "--image",
            &format!("{}:{TAG}", self.dir.display()),
            &bundle.display().to_string(),
        ]);
        bundle.join("rootfs")
    }
}

/// Runs `umoci ARGS…`.
///
/// # Panics
///
/// If umoci is missing (scripts/test installs it) or fails.
pub fn umoci(args: &[&str]) {
    let out = Command::new("umoci")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running umoci (scripts/test installs it): {e}"));
    assert!(
        out.status.success(),
        "umoci {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The manifest `repo_tag` has on the registry at `host` (plain HTTP), as
/// skopeo reads it.
///
/// # Panics
///
/// If skopeo fails or the manifest is not JSON.
pub fn registry_manifest(host: &str, repo_tag: &str) -> Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/{repo_tag}"))
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running skopeo: {e}"));
    assert!(
        out.status.success(),
        "skopeo inspect {repo_tag} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the manifest is JSON")
}

/// The layers of the layout's image tagged [`TAG`].
fn read_layers(dir: &Path) -> Vec<LayerBlob> {
    let read = |digest: &str| -> Value {
        let hex = digest.trim_start_matches("sha256:");
        let path = dir.join("blobs/sha256").join(hex);
        serde_json::from_slice(
            &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let index: Value = serde_json::from_slice(
        &std::fs::read(dir.join("index.json")).expect("the layout's index.json"),
    )
    .expect("index.json is JSON");
    let entry = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == TAG)
        })
        .unwrap_or_else(|| panic!("no {TAG} in {}", dir.display()));
    let manifest = read(entry["digest"].as_str().expect("a digest"));
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            let digest = l["digest"].as_str().expect("digest").to_owned();
            let path = dir
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:"));
            LayerBlob {
                media_type: l["mediaType"].as_str().expect("mediaType").to_owned(),
                size: l["size"].as_u64().expect("size"),
                digest,
                path,
            }
        })
        .collect()
}

/// Paths the upper layers change: the middle file is chosen elsewhere.
const TOUCHED: &[&str] = &[
    "etc/",
    "opt/",
    "srv/",
    "usr/share/doc/apt",
    "usr/share/doc/bash",
];

/// The regular file of the minbase tar nearest its middle (4 KiB–512 KiB,
/// under `usr/`, untouched by the upper layers), and the stream's length.
fn middle_file(minbase: &Path) -> (BaseFile, u64) {
    let len = std::fs::metadata(minbase).expect("stat").len();
    let file = std::fs::File::open(minbase).expect("open the minbase tar");
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut best: Option<(u64, String, u64, u64)> = None;
    for e in archive.entries().expect("reading the minbase tar") {
        let e = e.expect("a minbase tar entry");
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = e.path().expect("a path").display().to_string();
        let path = path.trim_start_matches("./").to_owned();
        let size = e.size();
        if !(4096..=512 * 1024).contains(&size)
            || !path.starts_with("usr/")
            || TOUCHED.iter().any(|t| path.starts_with(t))
        {
            continue;
        }
        let offset = e.raw_file_position();
        let distance = offset.abs_diff(len / 2);
        if best.as_ref().is_none_or(|b| distance < b.0) {
            best = Some((distance, path, offset, size));
        }
    }
    let (_, path, offset, size) = best.expect("a file in the middle of the minbase tar");
    let mut f = std::fs::File::open(minbase).expect("open");
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).expect("seek");
    let mut data = vec![0u8; size as usize];
    std::io::Read::read_exact(&mut f, &mut data).expect("read the middle file");
    (
        BaseFile {
            path,
            offset,
            size,
            sha256: sha256_hex(&data),
        },
        len,
    )
}

/// The seed of `opt/ocifs/random.bin` (3 MiB of [`random_bytes`]).
pub const RANDOM_SEED: u64 = 0xc1f5_1a7e;

/// Owners used in the layers.
const ROOT: (u32, u32) = (0, 0);
const USER: (u32, u32) = (1000, 1000);

/// The layer on top of minbase: what a Dockerfile's `RUN` would leave, and
/// every corner of the merge rules.
pub fn upper_layer() -> Vec<u8> {
    let mut t = TarWriter::new();
    // Whiteouts of a file and of a directory (with children) of minbase;
    // a whiteout and a new file of the same name (the whiteout hides the
    // lower one only).
    t.file("etc/.wh.motd", 0o644, ROOT, b"")
        .file("usr/share/doc/.wh.apt", 0o644, ROOT, b"")
        .file("etc/.wh.issue", 0o644, ROOT, b"")
        .file("etc/issue", 0o644, ROOT, b"ocifs test image \\n \\l\n");
    // An opaque directory with a new mode and new content.
    t.dir("etc/default", 0o750, ROOT)
        .file("etc/default/.wh..wh..opq", 0o644, ROOT, b"")
        .file("etc/default/ocifs", 0o640, ROOT, b"OPAQUE=yes\n");
    // A replaced file; a file replacing a directory; a directory replacing
    // a file.
    t.file("etc/debian_version", 0o600, ROOT, b"ocifs-test\n")
        .file("usr/share/doc/bash", 0o444, ROOT, b"was a directory\n")
        .dir("etc/host.conf", 0o700, ROOT)
        .file("etc/host.conf/inner", 0o600, ROOT, b"was a file\n");
    // A tree of our own under /opt.
    let o = "opt/ocifs";
    t.dir(o, 0o755, ROOT)
        .file(&format!("{o}/data.txt"), 0o640, USER, b"hard-linked data\n")
        .hardlink(&format!("{o}/data-hardlink"), &format!("{o}/data.txt"))
        .hardlink(&format!("{o}/os-release-hardlink"), "usr/lib/os-release")
        .symlink(&format!("{o}/rel-link"), "../../etc/os-release")
        .symlink(&format!("{o}/abs-link"), "/usr/lib/os-release")
        .symlink(&format!("{o}/dangling"), "/no/such/file")
        .symlink(
            &format!("{o}/long-target"),
            &format!("/{}/target", "t".repeat(120)),
        )
        .special(TarKind::Char, &format!("{o}/null"), 0o666, (1, 3))
        .special(TarKind::Block, &format!("{o}/loop7"), 0o660, (7, 7))
        .special(TarKind::Char, &format!("{o}/bigdev"), 0o600, (259, 70000))
        .special(TarKind::Fifo, &format!("{o}/fifo"), 0o644, (0, 0))
        .file(&format!("{o}/setuid-tool"), 0o4755, ROOT, b"#!/bin/sh\n")
        .file(&format!("{o}/setgid-tool"), 0o2755, (0, 50), b"#!/bin/sh\n")
        .dir(&format!("{o}/shared"), 0o2775, (0, 100))
        .dir(&format!("{o}/tmp"), 0o1777, ROOT)
        .file(&format!("{o}/owned-by-1000"), 0o600, USER, b"mine\n")
        .file(&format!("{o}/nobody"), 0o644, (65534, 65534), b"nobody\n")
        .file(&format!("{o}/big-uid"), 0o644, (100_000, 100_000), b"big\n")
        .file(
            &format!("{o}/{}", "long-name-".repeat(15)),
            0o644,
            ROOT,
            b"a name over 100 bytes\n",
        )
        .file(
            &format!("{o}/random.bin"),
            0o644,
            ROOT,
            &random_bytes(3 << 20, RANDOM_SEED),
        )
        .file(&format!("{o}/empty"), 0o644, ROOT, b"")
        .file(
            &format!("{o}/to-delete"),
            0o644,
            ROOT,
            b"deleted by the top layer\n",
        )
        .dir(&format!("{o}/will-be-opaque"), 0o755, USER)
        .file(&format!("{o}/will-be-opaque/a"), 0o644, USER, b"a\n")
        .file(&format!("{o}/will-be-opaque/b"), 0o644, USER, b"b\n");
    let mut h = crate::tarfile::TarHeader::new(TarKind::File, &format!("{o}/with-xattr"));
    h.size = 6;
    t.entry_pax(&h, b"xattr\n", &[("SCHILY.xattr.user.ocifs", b"hello")]);
    // Implicit parents: no entries for `implicit/` and `implicit/deep/`.
    t.file(&format!("{o}/implicit/deep/file"), 0o644, ROOT, b"deep\n");
    t.finish()
}

/// The third layer: whiteouts and an opaque directory over the upper
/// layer's own entries, a symlink replaced by a file, one more hard link.
pub fn top_layer() -> Vec<u8> {
    let o = "opt/ocifs";
    let mut t = TarWriter::new();
    t.file(&format!("{o}/.wh.to-delete"), 0o644, ROOT, b"")
        .file(
            &format!("{o}/will-be-opaque/.wh..wh..opq"),
            0o644,
            ROOT,
            b"",
        )
        .file(&format!("{o}/will-be-opaque/c"), 0o644, USER, b"c\n")
        .file("etc/os-release", 0o644, ROOT, b"NAME=\"ocifs test\"\n")
        .hardlink(&format!("{o}/data-hardlink-2"), &format!("{o}/data.txt"));
    t.finish()
}

/// Where decoding a gzip blob reaches each uncompressed offset: the
/// compressed bytes consumed (by Python's zlib, fed 4 KiB at a time) when
/// the output first reached each of `offsets`.
///
/// # Panics
///
/// If python3 fails or the blob is not gzip.
pub fn gzip_compressed_offsets(blob: &Path, offsets: &[u64]) -> Vec<u64> {
    let script = r#"
import sys, zlib
path, targets = sys.argv[1], [int(x) for x in sys.argv[2:]]
d = zlib.decompressobj(31)
out = used = 0
found = {}
with open(path, 'rb') as f:
    while True:
        piece = f.read(4096)
        if not piece:
            break
        used += len(piece)
        out += len(d.decompress(piece))
        for t in targets:
            if t not in found and out >= t:
                found[t] = used
        if len(found) == len(targets):
            break
print(' '.join(str(found.get(t, used)) for t in targets))
"#;
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(blob)
        .args(offsets.iter().map(u64::to_string))
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "python3 zlib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| s.parse().expect("a number"))
        .collect()
}

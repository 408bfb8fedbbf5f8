//! The Debian minbase image converted to chunked formats by their own
//! tools: eStargz by stargz-snapshotter's `ctr-remote` (with a
//! [`Containerd`] of the caller's own), zstd:chunked by podman.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::rootfs::{LayerCompression, minbase_image, registry_manifest};
use crate::{Containerd, Registry, RegistryAuth};

/// The two converted images, each on a registry of its own (so no tool
/// reuses a blob another pushed in another compression): `minbase:esgz`
/// (ctr-remote, from the skopeo push of the umoci layout) and
/// `minbase:chunked` (podman `--compression-format zstd:chunked`, from the
/// layout itself).
#[derive(Debug)]
pub struct Converted {
    /// Holds `minbase:v1` (gzip) and `minbase:esgz`.
    pub esgz: Registry,
    /// Holds `minbase:chunked`.
    pub chunked: Registry,
}

impl Converted {
    /// Pushes and converts the images (podman keeps its storage under
    /// `work`).
    ///
    /// # Panics
    ///
    /// If a tool fails, or a converted image has no chunked layer.
    pub fn make(work: &Path) -> Self {
        let image = minbase_image();
        let esgz = Registry::start(RegistryAuth::None);
        let host = esgz.host();
        image.push(&host, "minbase:v1", LayerCompression::Gzip);
        let containerd = Containerd::start();
        containerd.to_estargz(
            &format!("{host}/minbase:v1"),
            &format!("{host}/minbase:esgz"),
        );
        drop(containerd);

        let chunked = Registry::start(RegistryAuth::None);
        let podman = |args: &[&str]| -> String {
            let out = Command::new("podman")
                .arg("--root")
                .arg(work.join("storage/root"))
                .arg("--runroot")
                .arg(work.join("storage/run"))
                .args(["--storage-driver", "vfs"])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("podman (scripts/test installs it)");
            assert!(
                out.status.success(),
                "podman {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let id = podman(&["pull", "-q", &image.oci_ref()]);
        podman(&[
            "push",
            "--tls-verify=false",
            "--compression-format",
            "zstd:chunked",
            &id,
            &format!("docker://{}/minbase:chunked", chunked.host()),
        ]);
        let converted = Converted { esgz, chunked };
        for (tag, annotation) in [
            ("esgz", "containerd.io/snapshot/stargz/toc.digest"),
            ("chunked", "zstd-chunked.manifest-checksum"),
        ] {
            let manifest = converted.manifest(tag);
            assert!(
                manifest["layers"].as_array().is_some_and(|ls| {
                    ls.len() == 1
                        && ls[0]["annotations"]
                            .as_object()
                            .is_some_and(|a| a.keys().any(|k| k.ends_with(annotation)))
                }),
                "the {tag} image has no chunked layer: {manifest:#}"
            );
        }
        converted
    }

    /// The registry holding `tag` (`esgz`, `chunked`).
    pub fn host(&self, tag: &str) -> String {
        match tag {
            "esgz" => self.esgz.host(),
            _ => self.chunked.host(),
        }
    }

    /// The registry process holding `tag`.
    pub fn registry(&self, tag: &str) -> &Registry {
        match tag {
            "esgz" => &self.esgz,
            _ => &self.chunked,
        }
    }

    /// The manifest of `minbase:TAG`.
    pub fn manifest(&self, tag: &str) -> serde_json::Value {
        registry_manifest(&self.host(tag), &format!("minbase:{tag}"))
    }
}

/// The tags of [`Converted`]'s images.
pub const TAGS: [&str; 2] = ["esgz", "chunked"];

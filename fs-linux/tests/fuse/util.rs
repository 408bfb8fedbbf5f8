//! Shared helpers: OCI layouts built in code, a mounted fixture that
//! unmounts even when a test panics, and time bounds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ocifs_core::Content;
use ocifs_core::{
    ContentReader, Digest, DirectReader, LayoutSource, Reader, Stats, Tree, Verify, ViewOptions,
};
use ocifs_fs_linux::{Mount, MountOptions};
use serde_json::json;
use tempfile::TempDir;

pub const CREATED: &str = "2024-01-02T03:04:05Z";
/// `CREATED` in seconds since the epoch.
pub const CREATED_SECS: u64 = 1_704_164_645;

/// Deterministic bytes that do not repeat with any small period.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The files most tests mount: a title with `/`, nested directories, an
/// empty file and a 5 MiB one.
pub fn standard_files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("hello.txt".into(), b"hello, world\n".to_vec()),
        ("empty".into(), Vec::new()),
        ("dir/nested.txt".into(), b"nested file\n".repeat(100)),
        ("dir/sub/deep.bin".into(), pseudo_random(100 * 1024 + 7, 1)),
        ("big.bin".into(), pseudo_random(5 * 1024 * 1024, 2)),
    ]
}

fn write_blob(root: &Path, bytes: &[u8]) -> (Digest, u64) {
    let digest = Digest::of(bytes);
    std::fs::write(root.join("blobs/sha256").join(digest.hex()), bytes).expect("write blob");
    (digest, bytes.len() as u64)
}

/// Writes an OCI layout holding one ORAS-style artifact, tagged `v1`, with
/// one titled layer per file.
pub fn write_layout(root: &Path, files: &[(String, Vec<u8>)]) {
    std::fs::create_dir_all(root.join("blobs/sha256")).expect("mkdir blobs");
    let (config, config_size) = write_blob(root, b"{}");
    let layers: Vec<_> = files
        .iter()
        .map(|(title, bytes)| {
            let (digest, size) = write_blob(root, bytes);
            json!({"mediaType": "application/octet-stream", "digest": digest.to_string(), "size": size,
                   "annotations": {"org.opencontainers.image.title": title}})
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.ocifs.test",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.to_string(), "size": config_size},
        "layers": layers,
        "annotations": {"org.opencontainers.image.created": CREATED},
    })
    .to_string();
    let (digest, size) = write_blob(root, manifest.as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest.to_string(),
                       "size": size, "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    });
    std::fs::write(root.join("index.json"), index.to_string()).expect("write index.json");
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
}

/// Fails (never skips) when this machine cannot run FUSE tests.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: FUSE tests need it (modprobe fuse)"
    );
    let helper = Command::new("fusermount3").arg("-V").output();
    assert!(
        helper.is_ok_and(|o| o.status.success()),
        "fusermount3 is missing: FUSE tests need it (apt-get install fuse3)"
    );
}

/// A reader that stalls reads of one blob, to have reads in flight.
#[derive(Debug)]
pub struct SlowReader {
    pub inner: Arc<dyn Reader>,
    pub slow: Digest,
    pub delay: Duration,
}

#[async_trait]
impl Reader for SlowReader {
    async fn read(&self, content: &Content, offset: u64, len: u64) -> ocifs_core::Result<Bytes> {
        if matches!(content, Content::Blob(d) if d.digest == self.slow) {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.read(content, offset, len).await
    }

    fn stats(&self) -> Stats {
        self.inner.stats()
    }
}

/// Options applied to a fixture's mount, given the layout directory.
type OptionsFn = Box<dyn FnOnce(&mut MountOptions, &Path)>;

/// How to set a fixture up.
pub struct Builder {
    files: Vec<(String, Vec<u8>)>,
    missing: Vec<String>,
    slow: Option<(String, Duration)>,
    options: Vec<OptionsFn>,
}

impl Builder {
    pub fn new(files: Vec<(String, Vec<u8>)>) -> Self {
        Builder {
            files,
            missing: Vec::new(),
            slow: None,
            options: Vec::new(),
        }
    }

    /// Deletes the blob of `title` from the layout after building it.
    pub fn missing(mut self, title: &str) -> Self {
        self.missing.push(title.to_owned());
        self
    }

    /// Makes every read of `title` wait `delay` first.
    pub fn slow(mut self, title: &str, delay: Duration) -> Self {
        self.slow = Some((title.to_owned(), delay));
        self
    }

    /// Changes the mount options; the layout directory is given.
    pub fn options(mut self, f: impl FnOnce(&mut MountOptions, &Path) + 'static) -> Self {
        self.options.push(Box::new(f));
        self
    }

    pub fn mount(self) -> Fixture {
        require_fuse();
        let layout = tempfile::Builder::new()
            .prefix("ocifs-layout-")
            .tempdir()
            .expect("layout dir");
        write_layout(layout.path(), &self.files);
        let files: BTreeMap<String, Vec<u8>> = self.files.into_iter().collect();
        let digest_of = |title: &str| {
            Digest::of(
                files
                    .get(title)
                    .unwrap_or_else(|| panic!("no file {title}")),
            )
        };
        for title in &self.missing {
            std::fs::remove_file(
                layout
                    .path()
                    .join("blobs/sha256")
                    .join(digest_of(title).hex()),
            )
            .expect("remove blob");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let source = Arc::new(LayoutSource::open(layout.path()).expect("open layout"));
        let reference = format!("oci:{}:v1", layout.path().display())
            .parse()
            .expect("reference");
        let resolution = runtime
            .block_on(ocifs_core::resolve(source.as_ref(), &reference, None))
            .expect("resolve");
        let tree = Arc::new(
            Tree::from_artifact(&resolution.manifest, &ViewOptions::default()).expect("tree"),
        );
        let mut reader: Arc<dyn Reader> = Arc::new(ContentReader::new(Arc::new(
            DirectReader::new(source, Verify::Strict),
        )));
        if let Some((title, delay)) = &self.slow {
            reader = Arc::new(SlowReader {
                inner: reader,
                slow: digest_of(title),
                delay: *delay,
            });
        }
        let mut options = MountOptions {
            fs_name: format!("oci:{}:v1", layout.path().display()),
            ..MountOptions::default()
        };
        for f in self.options {
            f(&mut options, layout.path());
        }
        let mnt = tempfile::Builder::new()
            .prefix("ocifs-mnt-")
            .tempdir()
            .expect("mount dir");
        let mount = ocifs_fs_linux::mount(
            Arc::clone(&tree),
            reader,
            mnt.path(),
            options,
            runtime.handle().clone(),
        )
        .expect("mount");
        Fixture {
            mount: Some(mount),
            runtime,
            tree,
            files,
            mnt,
            layout,
        }
    }
}

/// A mounted artifact. Fields drop in order: the mount first (even on a
/// panic), then the runtime, then the directories.
pub struct Fixture {
    pub mount: Option<Mount>,
    pub runtime: tokio::runtime::Runtime,
    pub tree: Arc<Tree>,
    pub files: BTreeMap<String, Vec<u8>>,
    pub mnt: TempDir,
    pub layout: TempDir,
}

impl Fixture {
    /// The standard files, mounted with default options.
    pub fn standard() -> Self {
        Builder::new(standard_files()).mount()
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.path().join(rel)
    }

    pub fn mount(&self) -> &Mount {
        self.mount.as_ref().expect("still mounted")
    }

    pub fn take_mount(&mut self) -> Mount {
        self.mount.take().expect("still mounted")
    }

    /// The line of /proc/self/mountinfo for this mount.
    pub fn mountinfo(&self) -> String {
        let mp = self.mnt.path().canonicalize().expect("canonical");
        let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        text.lines()
            .rev()
            .find(|l| l.split(' ').nth(4) == Some(mp.to_str().expect("utf-8")))
            .unwrap_or_else(|| panic!("{} not in mountinfo", mp.display()))
            .to_owned()
    }
}

/// Runs `f` on its own thread and panics if it takes longer than `limit`,
/// so that a hang fails the test instead of stalling the run.
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish within {limit:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Polls `cond` until it holds, panicking after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The errno of an I/O result, for assertions.
pub fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("not an OS error: {e}")),
    }
}

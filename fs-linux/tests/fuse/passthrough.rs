//! FUSE passthrough: blobs complete on disk are read by the kernel itself.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ocifs_core::Content;

use crate::util::{Builder, Fixture, standard_files, wait_until};

/// The layout's own blob files: complete and on disk.
fn layout_blobs(layout: &Path) -> impl Fn(&Content) -> Option<File> + Send + Sync + 'static {
    let blobs = layout.join("blobs/sha256");
    move |content: &Content| match content {
        Content::Blob(d) => File::open(blobs.join(d.digest.hex())).ok(),
        _ => None,
    }
}

fn with_passthrough(
    backing: impl Fn(&Path) -> Arc<dyn ocifs_fs_linux::BackingFiles> + 'static,
) -> Fixture {
    Builder::new(standard_files())
        .options(move |o, layout| {
            o.passthrough = true;
            o.backing_files = Some(backing(layout));
        })
        .mount()
}

#[test]
fn passthrough_serves_complete_blobs_without_reaching_ocifs() {
    let fx = with_passthrough(|layout| Arc::new(layout_blobs(layout)));
    for (title, bytes) in &fx.files {
        let got = std::fs::read(fx.path(title)).expect("read");
        assert!(got == *bytes, "{title} differs");
    }
    let file = File::open(fx.path("big.bin")).expect("open");
    let mut buf = vec![0; 12345];
    let n = file.read_at(&mut buf, 777_777).expect("read_at");
    assert!(buf[..n] == fx.files["big.bin"][777_777..777_777 + n]);

    let stats = fx.mount().stats();
    assert!(
        stats.passthrough_opens >= fx.files.len() as u64,
        "{stats:?}"
    );
    assert_eq!(stats.reads, 0, "reads reached ocifs: {stats:?}");
}

#[test]
fn passthrough_falls_back_when_the_backing_file_is_not_the_blob() {
    // A file of the wrong length must never be handed to the kernel.
    let fx = with_passthrough(|layout| {
        let index = layout.join("index.json");
        Arc::new(move |_: &Content| File::open(&index).ok())
    });
    for (title, bytes) in &fx.files {
        assert!(
            std::fs::read(fx.path(title)).expect("read") == *bytes,
            "{title} differs"
        );
    }
    let stats = fx.mount().stats();
    assert_eq!(stats.passthrough_opens, 0, "{stats:?}");
    assert!(stats.reads > 0, "{stats:?}");
}

#[test]
fn passthrough_never_mixes_io_modes_on_one_inode() {
    let complete = Arc::new(AtomicBool::new(false));
    let fx = with_passthrough({
        let complete = Arc::clone(&complete);
        move |layout| {
            let blobs = layout_blobs(layout);
            let complete = Arc::clone(&complete);
            Arc::new(move |c: &Content| {
                if complete.load(Ordering::SeqCst) {
                    blobs(c)
                } else {
                    None
                }
            })
        }
    });
    let path = fx.path("big.bin");
    let want = &fx.files["big.bin"];
    let check = |f: &File, offset: usize| {
        let mut buf = vec![0; 65536];
        let n = f.read_at(&mut buf, offset as u64).expect("read_at");
        assert!(n > 0 && buf[..n] == want[offset..offset + n], "at {offset}");
    };

    // Not complete yet: the page-cache path.
    let cached = File::open(&path).expect("open");
    check(&cached, 0);
    // Complete now, but a cached handle is open: the kernel would refuse a
    // passthrough open of the same inode with EIO.
    complete.store(true, Ordering::SeqCst);
    let second = File::open(&path).expect("second open while a cached one is open");
    check(&second, 1 << 20);
    assert_eq!(fx.mount().stats().passthrough_opens, 0);
    drop((cached, second));

    // Once every cached handle is released, passthrough.
    let passthrough = loop {
        let f = File::open(&path).expect("open");
        if fx.mount().stats().passthrough_opens == 1 {
            break f;
        }
        drop(f);
        std::thread::sleep(Duration::from_millis(20));
    };
    check(&passthrough, 3 << 20);
    // Not complete any more (say, evicted): a passthrough handle is open, so
    // the same backing file is used again.
    complete.store(false, Ordering::SeqCst);
    let again = File::open(&path).expect("open while a passthrough one is open");
    check(&again, 4 << 20);
    assert_eq!(fx.mount().stats().passthrough_opens, 2);
    drop((passthrough, again));
    wait_until(
        Duration::from_secs(5),
        "the backing file is released",
        || {
            let f = File::open(&path).expect("open");
            let cached_again = fx.mount().stats().opens > fx.mount().stats().passthrough_opens + 2;
            drop(f);
            cached_again
        },
    );
}

/// The backing files of a layout, boxed.
type Blobs = Box<dyn Fn(&Content) -> Option<File> + Send + Sync>;

/// Backing files that are complete only once an open waited for them
/// (`whole_first`), counting those waits; `fail` makes the wait fail.
struct WaitedFor {
    blobs: Blobs,
    complete: Arc<AtomicBool>,
    waits: Arc<std::sync::atomic::AtomicUsize>,
    fail: bool,
}

impl ocifs_fs_linux::BackingFiles for WaitedFor {
    fn backing_file(&self, content: &Content) -> Option<File> {
        self.complete
            .load(Ordering::SeqCst)
            .then(|| (self.blobs)(content))
            .flatten()
    }

    fn whole_first(&self, _content: &Content) -> Option<ocifs_fs_linux::WholeFirst> {
        if self.complete.load(Ordering::SeqCst) {
            return None;
        }
        let (complete, waits, fail) = (
            Arc::clone(&self.complete),
            Arc::clone(&self.waits),
            self.fail,
        );
        Some(Box::pin(async move {
            waits.fetch_add(1, Ordering::SeqCst);
            // The whole blob takes a while to come (the session's other
            // requests are answered meanwhile).
            tokio::time::sleep(Duration::from_millis(300)).await;
            if fail {
                return Err(ocifs_core::Error::io(
                    "streaming the blob",
                    std::io::Error::other("the registry went away"),
                ));
            }
            complete.store(true, Ordering::SeqCst);
            Ok(())
        }))
    }
}

#[test]
fn an_open_that_would_wait_for_the_whole_blob_waits_for_it_and_is_handed_to_the_kernel() {
    let complete = Arc::new(AtomicBool::new(false));
    let waits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fx = with_passthrough({
        let (complete, waits) = (Arc::clone(&complete), Arc::clone(&waits));
        move |layout| {
            Arc::new(WaitedFor {
                blobs: Box::new(layout_blobs(layout)),
                complete: Arc::clone(&complete),
                waits: Arc::clone(&waits),
                fail: false,
            })
        }
    });
    let path = fx.path("big.bin");
    // While the open waits, the mount answers others (a listing).
    let opening = std::thread::spawn(move || std::fs::read(path).expect("read"));
    std::thread::sleep(Duration::from_millis(50));
    assert!(std::fs::read_dir(fx.mnt.path()).expect("readdir").count() > 0);
    let got = opening.join().expect("the reader");
    assert!(got == fx.files["big.bin"], "big.bin differs");
    let stats = fx.mount().stats();
    assert_eq!(waits.load(Ordering::SeqCst), 1);
    assert_eq!(stats.passthrough_opens, 1, "{stats:?}");
    // Every byte came from the backing file: no read reached ocifs.
    assert_eq!(stats.reads, 0, "reads reached ocifs: {stats:?}");
}

#[test]
fn an_open_whose_whole_blob_fails_fails_with_eio() {
    let fx = with_passthrough(|layout| {
        Arc::new(WaitedFor {
            blobs: Box::new(layout_blobs(layout)),
            complete: Arc::new(AtomicBool::new(false)),
            waits: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            fail: true,
        })
    });
    let err = File::open(fx.path("big.bin")).expect_err("the open must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(fx.mount().stats().passthrough_opens, 0);
}

//! Booting a VM from a root filesystem disk image on a mount: Debian's
//! kernel, an initrd of busybox and the kernel's own modules (virtio block,
//! ext4, erofs), and the Debian minbase tree as an ext4 (`mkfs.ext4 -d`)
//! and an erofs (`mkfs.erofs`) image, pushed with oras beside them. qemu
//! reads all three from the mount (`-drive file=MNT/rootfs.img,readonly`);
//! the initrd mounts the disk and switches to the image's own init, which
//! prints a marker with the image's Debian version and exits.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ocifs_benches::Row;
use ocifs_tests::rootfs::{fixtures_dir, minbase_tar};
use ocifs_tests::walk::file_sha256;
use ocifs_tests::{CountingProxy, PushFile, PushOptions, oras_push, qemu_boot};

use super::{bind_index, drop_page_cache, mount, umount};

/// What the image's init prints, before the image's Debian version.
const MARKER: &str = "BOOTED-FROM-IMAGE";

/// The initrd's init: load the modules, mount the disk read-only (ext4 or
/// erofs, whichever it is) and switch to the image's init.
const INITRD_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t devtmpfs dev /dev
for m in $(cat /modules/load-order); do insmod /modules/$m || echo "insmod $m failed"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 -o ro /dev/vda /newroot 2>/dev/null || mount -t erofs -o ro /dev/vda /newroot || { echo MOUNT-FAILED; poweroff -f; }
umount /proc
exec switch_root /newroot /ocifs-init
"#;

fn sh(script: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "failed: {script}");
}

/// Builds `dir/{vmlinuz,initrd.img}` and the two disk images
/// `dir/{ext4,erofs}/rootfs.img`.
fn fixtures(dir: &Path) {
    let kernel = fixtures_dir().join("vmlinuz");
    let modules = fixtures_dir().join("modules");
    assert!(
        kernel.is_file() && modules.join("load-order").is_file(),
        "the disk boot scenario needs target/fixtures/vmlinuz and target/fixtures/modules: run scripts/test once"
    );
    std::fs::copy(&kernel, dir.join("vmlinuz")).expect("kernel");
    let initrd = dir.join("initrd");
    std::fs::create_dir_all(initrd.join("bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", initrd.join("bin/busybox")).expect("busybox-static");
    std::fs::write(initrd.join("init"), INITRD_INIT).expect("init");
    sh(&format!(
        "chmod 755 '{0}/init' && cp -r '{1}' '{0}/modules' && cd '{0}' && find . | cpio -o -H newc 2>/dev/null | gzip -1 > '{2}'",
        initrd.display(),
        modules.display(),
        dir.join("initrd.img").display()
    ));
    let root = dir.join("rootfs");
    std::fs::create_dir(&root).expect("mkdir");
    sh(&format!(
        "tar -xpf '{}' --numeric-owner -C '{}'",
        minbase_tar().display(),
        root.display()
    ));
    std::fs::write(
        root.join("ocifs-init"),
        format!("#!/bin/sh\necho \"{MARKER} $(cat /etc/debian_version)\"\n"),
    )
    .expect("the image's init");
    sh(&format!("chmod 755 '{}/ocifs-init'", root.display()));
    for fs in ["ext4", "erofs"] {
        std::fs::create_dir(dir.join(fs)).expect("mkdir");
    }
    // ext4 with a fifth of room to spare.
    sh(&format!(
        "size=$(du -sk '{0}' | cut -f1) && truncate -s $((size * 6 / 5 + 32768))K '{1}' && mkfs.ext4 -q -F -d '{0}' '{1}'",
        root.display(),
        dir.join("ext4/rootfs.img").display()
    ));
    sh(&format!(
        "mkfs.erofs --quiet '{}' '{}'",
        dir.join("erofs/rootfs.img").display(),
        root.display()
    ));
}

/// Boots from `dir` (`vmlinuz`, `initrd.img`, `rootfs.img`); returns the
/// seconds it took.
fn boot_from(dir: &Path) -> f64 {
    let start = Instant::now();
    let mut qemu = qemu_boot(&dir.join("vmlinuz"), &dir.join("initrd.img"), 600);
    qemu.arg("-drive").arg(format!(
        "file={},format=raw,readonly=on,if=virtio",
        dir.join("rootfs.img").display()
    ));
    let out = qemu.output().expect("qemu");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{MARKER} 12.")),
        "the VM did not boot into the image from {}:\n{stdout}",
        dir.display()
    );
    start.elapsed().as_secs_f64()
}

/// The median of `xs`.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The disk boot scenarios: for each image, a boot from local files, then
/// from a strict mount with a cold cache, with a bound index and without;
/// `rounds` times in turn (a TCG boot's time moves by a second or more from
/// one boot to the next), each figure the median.
pub(crate) fn disk_boot(host: &str, rounds: usize, rows: &mut Vec<Row>) {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    fixtures(dir);
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    for fs in ["ext4", "erofs"] {
        let local = dir.join(fs);
        for f in ["vmlinuz", "initrd.img"] {
            std::fs::copy(dir.join(f), local.join(f)).expect("copy");
        }
        let image = local.join("rootfs.img");
        let size = image.metadata().expect("stat").len();
        let digest = format!("sha256:{}", file_sha256(&image));
        let repo = format!("bench/vm-{fs}");
        oras_push(
            host,
            &format!("{repo}:v1"),
            &[
                PushFile::new(local.join("vmlinuz")),
                PushFile::new(local.join("initrd.img")),
                PushFile::new(&image),
            ],
            &PushOptions::default(),
        );
        let bound = bind_index(host, &format!("{repo}:v1"), "v1-indexed");
        let mut tools = vec![("ocifs mount, strict, no index, cold cache", "v1")];
        if bound {
            tools.insert(
                0,
                ("ocifs mount, strict, index bound, cold cache", "v1-indexed"),
            );
        }
        let proxy = CountingProxy::start(host);
        let mut local_secs = Vec::new();
        let mut mounted: Vec<(Vec<f64>, u64)> = vec![(Vec::new(), 0); tools.len()];
        for _ in 0..rounds {
            drop_page_cache();
            local_secs.push(boot_from(&local));
            for ((_, tag), (secs, fetched)) in tools.iter().zip(&mut mounted) {
                let cache = tempfile::tempdir().expect("tempdir");
                drop_page_cache();
                proxy.reset();
                let start = Instant::now();
                mount(
                    &proxy.host(),
                    &format!("{repo}:{tag}"),
                    &mnt,
                    cache.path(),
                    &[],
                );
                boot_from(&mnt);
                secs.push(start.elapsed().as_secs_f64());
                umount(&mnt);
                *fetched = proxy
                    .blob_gets()
                    .iter()
                    .filter(|r| r.path.ends_with(&digest))
                    .map(|r| r.body_bytes)
                    .sum();
            }
        }
        let scenario = format!(
            "boot a VM from a rootfs disk image ({fs}, Debian minbase, {:.0} MB): qemu -kernel, -initrd, -drive readonly (TCG), median of {rounds}",
            size as f64 / 1e6
        );
        let bytes_scenario =
            format!("{scenario}: bytes of rootfs.img fetched (ratio to the image)");
        let from_local = median(local_secs);
        rows.push(Row::new(
            scenario.clone(),
            "from local files",
            from_local,
            "s",
            None,
        ));
        for ((tool, _), (secs, fetched)) in tools.iter().zip(mounted) {
            rows.push(Row::new(
                scenario.clone(),
                format!("{tool} (+{:.1} MB of the image)", fetched as f64 / 1e6),
                median(secs),
                "s",
                Some(from_local),
            ));
            rows.push(Row::new(
                bytes_scenario.clone(),
                *tool,
                fetched as f64,
                "bytes",
                Some(size as f64),
            ));
        }
    }
}

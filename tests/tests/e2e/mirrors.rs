//! Mirrors in front of the origin, as nodes configure them: containerd's
//! hosts.toml and containers' registries.conf, a real pull-through cache
//! (distribution in proxy mode) that answers a `Range` with the whole
//! blob, mirrors that are dead, hung or break off mid-stream, and
//! credentials that stay with the host they belong to.

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ocifs_tests::{
    CountingProxy, Disposition, HookFn, Mounted, Registry, RegistryAuth, SliceCache, closed_port,
    random_bytes, run_ocifs, temp_dir,
};

use crate::support::{FileSpec, push_files};

const MIB: usize = 1 << 20;

/// `DIR/hosts/<registry>/hosts.toml` with `text`; returns `DIR/hosts`.
fn hosts_dir(dir: &Path, registry: &str, text: &str) -> PathBuf {
    let hosts = dir.join("hosts");
    std::fs::create_dir_all(hosts.join(registry)).expect("mkdir");
    std::fs::write(hosts.join(registry).join("hosts.toml"), text).expect("hosts.toml");
    hosts
}

/// The start of a `Range: bytes=N-…` header.
fn range_start(range: &Option<String>) -> Option<u64> {
    range
        .as_deref()?
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_pull_through_cache_that_answers_a_range_with_the_whole_blob_is_not_read_through() {
    let origin = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let disk = random_bytes(64 * MIB, 19);
    push_files(
        &origin,
        dir.path(),
        "fleet:v1",
        &[FileSpec {
            title: "rootfs.img",
            content: disk.clone(),
            media_type: None,
        }],
    );
    // Counted: what the origin sends (to ocifs or to the cache), and what
    // the cache sends ocifs.
    let at_origin = CountingProxy::start(&origin.host());
    let pull_through = Registry::pull_through(&format!("http://{}", at_origin.host()));
    let mirror = CountingProxy::start(&pull_through.host());
    let hosts = hosts_dir(
        dir.path(),
        &at_origin.host(),
        &format!(
            "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            at_origin.host(),
            mirror.host()
        ),
    );
    let hosts = hosts.display().to_string();
    let reference = format!("{}/fleet:v1", at_origin.host());
    let mount = Mounted::new(
        &reference,
        &[
            "--verify",
            "lazy",
            "--background-fetch-max",
            "0",
            "--hosts-dir",
            &hosts,
        ],
    );
    let file = std::fs::File::open(mount.path("rootfs.img")).expect("open");
    let mut got = vec![0u8; 4096];
    let at = 32 * MIB + 12_345;
    file.read_exact_at(&mut got, at as u64).expect("pread");
    assert!(
        got == disk[at..at + 4096],
        "4 KiB at the middle of the disk image are wrong"
    );
    assert!(
        !mirror.manifest_gets().is_empty(),
        "the mirror was not asked for the manifest:\n{}",
        mirror.describe()
    );
    let whole: Vec<_> = mirror
        .blob_gets()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    assert!(
        !whole.is_empty(),
        "the pull-through cache was expected to answer the cold range with 200:\n{}",
        mirror.describe()
    );
    // Read through to the offset, this would have been over 32 MiB.
    assert!(
        mirror.blob_bytes() < (8 * MIB) as u64,
        "ocifs read {} bytes of the whole blob the mirror sent, to reach an offset of {at}:\n{}",
        mirror.blob_bytes(),
        mirror.describe()
    );
    let ranged_at_origin: Vec<_> = at_origin
        .blob_gets()
        .into_iter()
        .filter(|r| {
            r.status == 206 && range_start(&r.range).is_some_and(|s| s >= (32 * MIB) as u64)
        })
        .collect();
    assert!(
        !ranged_at_origin.is_empty(),
        "the chunk was not asked of the origin by range:\n{}",
        at_origin.describe()
    );
    // That mirror now serves whole blobs only: the next range goes to the
    // origin at once.
    mirror.reset();
    let at = 48 * MIB + 7;
    file.read_exact_at(&mut got, at as u64).expect("pread");
    assert!(got == disk[at..at + 4096], "the second read is wrong");
    assert!(
        mirror.blob_gets().is_empty(),
        "a mirror that ignored a range was asked for a range again:\n{}",
        mirror.describe()
    );
    // `ocifs stats` shows what arrived from each host, kept or not.
    let stats = run_ocifs(["stats".to_owned(), mount.dir().display().to_string()])
        .success()
        .json();
    let hosts: Vec<(String, u64)> = stats["wire"]
        .as_array()
        .unwrap_or_else(|| panic!("no wire in {stats}"))
        .iter()
        .map(|w| {
            (
                w["host"].as_str().unwrap_or("").to_owned(),
                w["received"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(hosts.len(), 2, "{stats}");
    assert!(
        hosts[0].0.contains(&mirror.host()) && hosts[1].0.contains(&at_origin.host()),
        "{stats}"
    );
    assert!(hosts[0].1 > 0 && hosts[1].1 >= (2 * MIB) as u64, "{stats}");
    assert!(
        mount.log().contains("whole blobs only"),
        "the log does not say the mirror serves whole blobs only:\n{}",
        mount.log()
    );
    drop(file);
    mount.unmount();
}

#[test]
fn a_dead_or_hung_mirror_is_passed_over_and_a_broken_stream_goes_on_from_its_byte_on_the_next_host()
{
    let origin = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let data = random_bytes(8 * MIB, 23);
    push_files(
        &origin,
        dir.path(),
        "fleet:v2",
        &[FileSpec {
            title: "data.bin",
            content: data.clone(),
            media_type: None,
        }],
    );
    let at_origin = CountingProxy::start(&origin.host());
    let hung = CountingProxy::start(&origin.host());
    hung.set_hook(Some(Arc::new(HookFn(|_: &_| Disposition::Stall))));
    let breaking = CountingProxy::start(&origin.host());
    breaking.set_hook(Some(Arc::new(HookFn(|r: &ocifs_tests::RequestInfo| {
        if r.is_blob_get() {
            Disposition::ResetMidBody {
                after_bytes: 3 * MIB as u64,
            }
        } else {
            Disposition::Forward
        }
    }))));
    let dead = format!("127.0.0.1:{}", closed_port());
    let hosts = hosts_dir(
        dir.path(),
        &at_origin.host(),
        &format!(
            "server = \"http://{origin}\"\n\
             [host.\"http://{dead}\"]\n\
             [host.\"http://{hung}\"]\n\
             [host.\"http://{breaking}\"]\n",
            origin = at_origin.host(),
            hung = hung.host(),
            breaking = breaking.host(),
        ),
    );
    let out = run_ocifs([
        "cat".to_owned(),
        "-v".into(),
        "--stats".into(),
        "--cache-dir".into(),
        dir.path().join("cache").display().to_string(),
        "--hosts-dir".into(),
        hosts.display().to_string(),
        format!("{}/fleet:v2", at_origin.host()),
        "data.bin".into(),
    ]);
    out.success();
    assert!(out.stdout == data, "cat wrote other bytes than data.bin");
    assert!(
        !hung.requests().is_empty(),
        "the hung mirror was never asked"
    );
    let broken = breaking
        .blob_gets()
        .into_iter()
        .find(|r| r.fault.as_deref() == Some("reset-mid-body"));
    assert!(
        broken.is_some(),
        "the breaking mirror did not break a stream:\n{}",
        breaking.describe()
    );
    let at_origin_gets = at_origin.blob_gets();
    let resumed = at_origin_gets
        .iter()
        .filter_map(|r| range_start(&r.range))
        .min();
    assert!(
        resumed.is_some_and(|s| s > 0),
        "the stream did not go on from the byte it reached on the origin:\n{}",
        at_origin.describe()
    );
    assert!(
        at_origin.blob_bytes() < data.len() as u64,
        "the origin sent the whole blob again ({} bytes):\n{}",
        at_origin.blob_bytes(),
        at_origin.describe()
    );
    // --stats names what arrived from each host, kept or not.
    let stderr = &out.stderr;
    let stats: serde_json::Value = stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no --stats line in:\n{stderr}"));
    let wire = stats["wire"].as_array().expect("wire").clone();
    let received = |host: &str| {
        wire.iter()
            .find(|w| w["host"].as_str().is_some_and(|h| h.contains(host)))
            .and_then(|w| w["received"].as_u64())
            .unwrap_or_else(|| panic!("no wire entry for {host}: {stats}"))
    };
    assert_eq!(wire.len(), 4, "{stats}");
    assert!(
        received(&breaking.host()) >= (3 * MIB) as u64 / 2,
        "{stats}"
    );
    assert!(
        received(&breaking.host()) + received(&at_origin.host()) >= data.len() as u64,
        "{stats}"
    );
    assert!(
        stderr.contains("skipping this host"),
        "stderr does not say a host was skipped:\n{stderr}"
    );
}

#[test]
fn a_mirror_never_receives_the_origins_credentials_and_gets_its_own_headers() {
    let origin = Registry::start(RegistryAuth::htpasswd("fleet", "s3cret-origin"));
    let dir = temp_dir();
    let files = [FileSpec {
        title: "kubelet.txt",
        content: b"the kubelet, pulled through a mirror\n".to_vec(),
        media_type: None,
    }];
    push_files(&origin, dir.path(), "node:v1", &files);
    let at_origin = CountingProxy::start(&origin.host());
    let mirror = CountingProxy::start(&origin.host());
    // The header a P2P mirror routes by reaches the mirror, not the origin.
    let hosts = hosts_dir(
        dir.path(),
        &at_origin.host(),
        &format!(
            "server = \"http://{o}\"\n[host.\"http://{m}\"]\n\
             [host.\"http://{m}\".header]\n  x-dragonfly-registry = \"http://{o}\"\n",
            o = at_origin.host(),
            m = mirror.host()
        ),
    );
    // No docker config with credentials for the mirror.
    let empty_config = dir.path().join("docker");
    std::fs::create_dir_all(&empty_config).expect("mkdir");
    let mut cmd = ocifs_tests::ocifs();
    cmd.env("DOCKER_CONFIG", &empty_config)
        .env("REGISTRY_AUTH_FILE", empty_config.join("none.json"))
        .args(["cat", "-u", "fleet", "-p", "s3cret-origin", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .arg("--hosts-dir")
        .arg(&hosts)
        .arg(format!("{}/node:v1", at_origin.host()))
        .arg("kubelet.txt");
    let out = ocifs_tests::run(cmd);
    out.success();
    assert_eq!(out.stdout, files[0].content);
    assert!(!mirror.requests().is_empty(), "the mirror was never asked");
    assert!(
        mirror.requests().iter().all(|r| !r.authorization),
        "the mirror received an Authorization header:\n{}",
        mirror.describe()
    );
    assert!(
        at_origin.requests().iter().any(|r| r.authorization),
        "the origin never got the credentials:\n{}",
        at_origin.describe()
    );
    let routed = (
        "x-dragonfly-registry".to_owned(),
        format!("http://{}", at_origin.host()),
    );
    assert!(
        mirror
            .requests()
            .iter()
            .all(|r| r.x_headers.contains(&routed)),
        "a request to the mirror lacked its hosts.toml header: {:?}",
        mirror
            .requests()
            .iter()
            .map(|r| &r.x_headers)
            .collect::<Vec<_>>()
    );
    assert!(
        at_origin
            .requests()
            .iter()
            .all(|r| r.x_headers.iter().all(|(n, _)| n != "x-dragonfly-registry")),
        "the origin received the mirror's header"
    );
}

#[test]
fn a_registries_conf_mirror_serves_the_blobs_and_insecure_falls_back_to_plain_http() {
    let origin = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let data = random_bytes(3 * MIB, 29);
    push_files(
        &origin,
        dir.path(),
        "cni/plugins:v1",
        &[FileSpec {
            title: "bridge",
            content: data.clone(),
            media_type: None,
        }],
    );
    let at_origin = CountingProxy::start(&origin.host());
    let mirror = CountingProxy::start(&origin.host());
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "unqualified-search-registries = [\"docker.io\"]\n\n\
             [[registry]]\nprefix = \"{o}/cni\"\nlocation = \"{o}/cni\"\ninsecure = true\n\n\
             [[registry.mirror]]\nlocation = \"{m}/cni\"\ninsecure = true\n",
            o = at_origin.host(),
            m = mirror.host()
        ),
    )
    .expect("registries.conf");
    let empty_hosts = dir.path().join("no-hosts");
    let out = run_ocifs([
        "cat".to_owned(),
        "--cache-dir".into(),
        dir.path().join("cache").display().to_string(),
        "--hosts-dir".into(),
        empty_hosts.display().to_string(),
        "--registries-conf".into(),
        conf.display().to_string(),
        format!("{}/cni/plugins:v1", at_origin.host()),
        "bridge".into(),
    ]);
    out.success();
    assert!(
        out.stdout == data,
        "cat wrote other bytes than the bridge plugin"
    );
    assert!(
        mirror.blob_bytes() >= data.len() as u64,
        "the blob did not come from the mirror:\n{}",
        mirror.describe()
    );
    assert!(
        at_origin.blob_gets().is_empty() && at_origin.manifest_gets().is_empty(),
        "the origin was asked although the mirror answered:\n{}",
        at_origin.describe()
    );
    // A bad file is an error naming it and the line.
    std::fs::write(
        &conf,
        "[[registry]]\nlocation = \"r.example\"\n[[registry.mirror]]\nlocaton = \"m\"\n",
    )
    .expect("write");
    let out = run_ocifs([
        "ls".to_owned(),
        "--registries-conf".into(),
        conf.display().to_string(),
        "--hosts-dir".into(),
        empty_hosts.display().to_string(),
        "r.example/a:v1".into(),
    ]);
    out.code_is(2).stderr_has(&format!(
        "{}: line 4: unknown key `locaton`",
        conf.display()
    ));
}

/// `n` lazy nodes, each with its own cache, mounted through `mirror` (a
/// hosts.toml naming it before the origin `at_origin`), each reading 4 KiB
/// at `at` of `disk.img` at the same moment; the bytes each got.
fn fleet_reads(dir: &Path, n: usize, origin: &str, mirror: Option<&str>, at: u64) -> Vec<Vec<u8>> {
    let hosts = hosts_dir(
        dir,
        origin,
        &match mirror {
            Some(m) => format!("server = \"http://{origin}\"\n[host.\"http://{m}\"]\n"),
            None => format!("server = \"http://{origin}\"\n"),
        },
    );
    let hosts = hosts.display().to_string();
    let reference = format!("{origin}/fleet:v1");
    let mounts: Vec<Mounted> = (0..n)
        .map(|_| {
            Mounted::new(
                &reference,
                &[
                    "--verify",
                    "lazy",
                    "--background-fetch-max",
                    "0",
                    "--hosts-dir",
                    &hosts,
                ],
            )
        })
        .collect();
    let barrier = std::sync::Barrier::new(n);
    let got = std::thread::scope(|s| {
        let readers: Vec<_> = mounts
            .iter()
            .map(|m| {
                let barrier = &barrier;
                s.spawn(move || {
                    let file = std::fs::File::open(m.path("disk.img")).expect("open");
                    let mut buf = vec![0u8; 4096];
                    barrier.wait();
                    file.read_exact_at(&mut buf, at).expect("pread");
                    buf
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().expect("reader"))
            .collect()
    });
    for m in mounts {
        m.unmount();
    }
    got
}

#[test]
fn a_lazy_fleet_of_five_behind_the_nginx_slice_cache_costs_the_origin_one_chunk() {
    let origin = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let disk = random_bytes(64 * MIB, 31);
    push_files(
        &origin,
        dir.path(),
        "fleet:v1",
        &[FileSpec {
            title: "disk.img",
            content: disk.clone(),
            media_type: None,
        }],
    );
    let at_origin = CountingProxy::start(&origin.host());
    let cache = SliceCache::start(&at_origin.host());
    let at = (40 * MIB + 4_321) as u64;
    at_origin.reset();
    let got = fleet_reads(dir.path(), 5, &at_origin.host(), Some(&cache.host()), at);
    for (i, g) in got.iter().enumerate() {
        assert!(
            g[..] == disk[at as usize..at as usize + 4096],
            "node {i} read other bytes"
        );
    }
    // One node needs one 1 MiB chunk; the five together cost the origin
    // that chunk once (the slice cache collapses their misses).
    let origin_bytes = at_origin.blob_bytes();
    assert!(
        origin_bytes as f64 <= 1.1 * MIB as f64,
        "five lazy nodes behind the slice cache cost the origin {origin_bytes} bytes of blobs:\n{}\n{}",
        at_origin.describe(),
        cache.log()
    );
}

//! `ocifs index --bind`: a publisher's chunk-digest index, bound to a copy
//! of the manifest, lets strict reads fetch only the chunks they read;
//! other clients see the same artifact; whatever the registry changes in
//! the index or the bytes is caught by a digest.

use std::io::{Read as _, Seek as _};
use std::process::Command;

use serde_json::Value;

use ocifs_tests::{
    CountingProxy, LayerCompression, Mounted, Registry, RegistryAuth, random_bytes, rootfs_image,
    run_ocifs, sha256_hex, temp_dir,
};

use crate::support::{FileSpec, push_files};

const MIB: u64 = 1 << 20;

/// The artifact: a 24 MiB disk image and a small file, pushed by oras-py.
fn disk_files() -> Vec<FileSpec> {
    vec![
        FileSpec {
            title: "rootfs.img",
            content: random_bytes(24 * MIB as usize, 0xd15c),
            media_type: None,
        },
        FileSpec {
            title: "vmlinuz",
            content: b"not really a kernel\n".to_vec(),
            media_type: None,
        },
    ]
}

/// `skopeo inspect --raw` of `host/repo_tag`: the manifest as the registry
/// serves it to another client.
fn skopeo_manifest(host: &str, repo_tag: &str) -> Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/{repo_tag}"))
        .output()
        .expect("running skopeo");
    assert!(out.status.success(), "skopeo inspect failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("a JSON manifest")
}

/// Runs `ocifs index` of `host/repo_tag`, binding it as `tag`; returns the
/// index's digest.
fn index_and_bind(host: &str, repo_tag: &str, tag: &str) -> String {
    let out = run_ocifs([
        "index",
        "--plain-http",
        &format!("{host}/{repo_tag}"),
        "--bind",
        tag,
    ]);
    out.success();
    let stdout = out.stdout_str();
    assert!(stdout.contains(&format!(":{tag}@sha256:")), "{out}");
    stdout
        .split_whitespace()
        .nth(1)
        .filter(|d| d.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no index digest in the output:\n{out}"))
        .to_owned()
}

/// The disk artifact pushed as `disk:v1` and bound as `disk:v1-indexed`:
/// (registry, work dir, files, host, the index's digest).
fn disk_bound() -> (Registry, tempfile::TempDir, Vec<FileSpec>, String, String) {
    let registry = Registry::start(RegistryAuth::None);
    let work = temp_dir();
    let files = disk_files();
    push_files(&registry, work.path(), "disk:v1", &files);
    let host = registry.host();
    let index = index_and_bind(&host, "disk:v1", "v1-indexed");
    (registry, work, files, host, index)
}

fn read_at(path: &std::path::Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

#[test]
fn a_bound_index_lets_strict_reads_fetch_only_their_chunks_and_other_clients_see_the_same_artifact()
{
    let (_registry, work, files, host, index) = disk_bound();

    // Other clients: the same layers, and oras-py pulls the same files.
    let before = skopeo_manifest(&host, "disk:v1");
    let after = skopeo_manifest(&host, "disk:v1-indexed");
    assert_eq!(before["layers"], after["layers"], "{after:#}");
    assert_eq!(before["config"], after["config"], "{after:#}");
    assert_eq!(after["annotations"]["io.ocifs.index"], index.as_str());
    let pulled = ocifs_tests::oras_pull(&host, "disk:v1-indexed", &work.path().join("pulled"));
    assert_eq!(pulled.len(), files.len(), "{pulled:?}");
    for f in &files {
        let p = work.path().join("pulled").join(f.title);
        assert_eq!(
            sha256_hex(&std::fs::read(&p).expect("a pulled file")),
            sha256_hex(&f.content),
            "{}",
            f.title
        );
    }

    // Strict, through a mount: 4 KiB from the middle fetches the chunk it
    // is in (and the index), not the 24 MiB.
    let proxy = CountingProxy::start(&host);
    let image = &files[0].content;
    let middle = image.len() as u64 / 2 + 12_345;
    let mnt = ocifs_tests::Mounted::new(
        &format!("{}/disk:v1-indexed", proxy.host()),
        &["--plain-http"],
    );
    let got = read_at(&mnt.path("rootfs.img"), middle, 4096).expect("reading the middle");
    assert_eq!(got, image[middle as usize..middle as usize + 4096]);
    let fetched = proxy.blob_bytes();
    assert!(
        fetched <= 2 * MIB + 64 * 1024,
        "a strict read of 4 KiB fetched {fetched} bytes:\n{}",
        proxy.describe()
    );
    mnt.unmount();

    // Without the index (the unbound tag), strict mode fetches it whole.
    proxy.reset();
    let mnt = ocifs_tests::Mounted::new(&format!("{}/disk:v1", proxy.host()), &["--plain-http"]);
    read_at(&mnt.path("rootfs.img"), middle, 4096).expect("reading the middle");
    assert!(
        proxy.blob_bytes() >= image.len() as u64,
        "{}",
        proxy.describe()
    );
    mnt.unmount();

    // inspect names the index and what each layer takes from it; cat
    // reads the whole file, chunk by chunk, right.
    let out = run_ocifs([
        "inspect",
        "--plain-http",
        &format!("{host}/disk:v1-indexed"),
    ]);
    out.success();
    let text = out.stdout_str();
    assert!(text.contains(&format!("Index (bound): {index}")), "{out}");
    assert_eq!(
        text.matches("source: the index's chunk table").count(),
        2,
        "{out}"
    );
    let out = run_ocifs([
        "cat",
        "--plain-http",
        &format!("{host}/disk:v1-indexed"),
        "rootfs.img",
    ]);
    out.success();
    assert_eq!(sha256_hex(&out.stdout), sha256_hex(image));
}

#[test]
fn a_chunk_the_registry_changed_is_never_served_and_a_changed_index_is_not_used() {
    let (registry, _work, files, host, index) = disk_bound();
    let image = &files[0].content;
    let middle = image.len() / 2;

    // The registry's copy of the disk image changes one byte in its
    // middle chunk: that chunk is refused, others still read.
    let data = registry.blob_data_path(&format!("sha256:{}", sha256_hex(image)));
    let pristine = std::fs::read(&data).expect("the registry's blob");
    let mut bad = pristine.clone();
    bad[middle] ^= 0x40;
    std::fs::write(&data, &bad).expect("tampering");
    let mnt = ocifs_tests::Mounted::new(&format!("{host}/disk:v1-indexed"), &["--plain-http"]);
    let err = read_at(&mnt.path("rootfs.img"), middle as u64, 4096)
        .expect_err("a changed chunk was served");
    assert_eq!(err.raw_os_error(), Some(5), "{err}"); // EIO
    let start = read_at(&mnt.path("rootfs.img"), 0, 4096).expect("an unchanged chunk");
    assert_eq!(start, image[..4096]);
    assert!(mnt.log().contains("sha256"), "{}", mnt.log());
    mnt.unmount();
    let out = run_ocifs([
        "cat",
        "--plain-http",
        &format!("{host}/disk:v1-indexed"),
        "rootfs.img",
    ]);
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(
        out.stdout.len() <= middle - middle % MIB as usize,
        "cat wrote {} bytes, past the changed chunk",
        out.stdout.len()
    );
    assert!(
        out.stdout[..] == image[..out.stdout.len()],
        "cat wrote a wrong byte"
    );
    std::fs::write(&data, &pristine).expect("restoring");

    // The registry changes the index's chunk table: its digest no longer
    // matches, it is not used (a warning names it), and the file is read
    // whole, right.
    let index_manifest: Value = {
        let (_, _, body) = crate::support::http_get(
            &host,
            &format!("/v2/disk/manifests/{index}"),
            &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        );
        serde_json::from_slice(&body).expect("the index manifest")
    };
    let part = index_manifest["layers"]
        .as_array()
        .and_then(|ls| {
            ls.iter().find(|l| {
                l["annotations"]["io.ocifs.blob"].as_str()
                    == Some(&format!("sha256:{}", sha256_hex(image)))
            })
        })
        .and_then(|l| l["digest"].as_str())
        .expect("the disk image's part")
        .to_owned();
    let part_data = registry.blob_data_path(&part);
    let mut table = std::fs::read(&part_data).expect("the part");
    table[40] ^= 1;
    std::fs::write(&part_data, &table).expect("tampering");
    let proxy = CountingProxy::start(&host);
    let out = run_ocifs([
        "cat",
        "--plain-http",
        &format!("{}/disk:v1-indexed", proxy.host()),
        "rootfs.img",
    ]);
    out.success();
    assert_eq!(sha256_hex(&out.stdout), sha256_hex(image));
    assert!(
        out.stderr.contains(&part) && out.stderr.contains("not used"),
        "{out}"
    );
    assert!(
        proxy.blob_bytes() >= image.len() as u64,
        "{}",
        proxy.describe()
    );
}

#[test]
fn a_bound_index_lists_an_image_strictly_without_streaming_a_layer() {
    let image = rootfs_image();
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let manifest = image.push(&host, "rootfs:v1", LayerCompression::Gzip);
    let index = index_and_bind(&host, "rootfs:v1", "v1-indexed");
    let layers: u64 = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["size"].as_u64().expect("size"))
        .sum();

    let ls = |reference: &str| {
        let out = run_ocifs(["ls", "-R", "--json", "--plain-http", reference]);
        out.success();
        out.stdout_str()
    };
    let want = ls(&format!("{host}/rootfs:v1"));
    let proxy = CountingProxy::start(&host);
    let got = ls(&format!("{}/rootfs:v1-indexed", proxy.host()));
    assert_eq!(got, want, "the listings differ");
    // What was fetched is the index's parts, not the layers.
    let index_manifest = skopeo_manifest(&host, &format!("rootfs@{index}"));
    let parts: u64 = index_manifest["layers"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|l| l["size"].as_u64().expect("size"))
        .sum();
    let fetched = proxy.blob_bytes();
    assert!(
        fetched <= parts + layers / 100,
        "ls of the bound image fetched {fetched} bytes (index parts {parts}, layers {layers}):\n{}",
        proxy.describe()
    );

    // One file from the middle of the big layer: a seek span and a chunk
    // or two, checked, right.
    let middle = image.middle_file();
    proxy.reset();
    let out = run_ocifs([
        "cat",
        "--plain-http",
        &format!("{}/rootfs:v1-indexed", proxy.host()),
        &middle.path,
    ]);
    out.success();
    assert_eq!(sha256_hex(&out.stdout), middle.sha256, "{}", middle.path);
    assert!(
        proxy.blob_bytes() <= parts + 4 * MIB,
        "cat of {} fetched {}:\n{}",
        middle.path,
        proxy.blob_bytes(),
        proxy.describe()
    );
}

/// `ls -R --json` of `reference` with `extra` flags, as (stdout, bytes
/// of blobs fetched through `proxy`).
fn ls_counted(proxy: &CountingProxy, reference: &str, extra: &[&str]) -> (String, u64, String) {
    proxy.reset();
    let mut args = vec!["ls", "-R", "--json", "--plain-http"];
    args.extend_from_slice(extra);
    args.push(reference);
    let out = run_ocifs(args);
    out.success();
    (out.stdout_str(), proxy.blob_bytes(), out.stderr.clone())
}

#[test]
fn an_attached_index_is_used_in_lazy_mode_and_in_strict_mode_only_when_trusted() {
    let image = rootfs_image();
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let manifest = image.push(&host, "rootfs:v1", LayerCompression::Gzip);
    let before = skopeo_manifest(&host, "rootfs:v1");
    let out = run_ocifs([
        "index",
        "--plain-http",
        &format!("{host}/rootfs:v1"),
        "--attach",
    ]);
    out.success();
    let stdout = out.stdout_str();
    // distribution 2.8 has no referrers API: the fallback tag lists it.
    assert!(stdout.contains("fallback tag"), "{out}");
    let index = stdout
        .split_whitespace()
        .nth(1)
        .expect("the index digest")
        .to_owned();
    // The image itself is as it was, for every client.
    assert_eq!(skopeo_manifest(&host, "rootfs:v1"), before);
    let (_, _, body) = crate::support::http_get(
        &host,
        "/v2/rootfs/manifests/v1",
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    let digest = format!("sha256:{}", sha256_hex(&body));
    let fallback = skopeo_manifest(&host, &format!("rootfs:sha256-{}", &digest[7..]));
    let listed = fallback["manifests"].as_array().expect("an index");
    assert!(
        listed.iter().any(|d| d["digest"] == index.as_str()
            && d["artifactType"] == "application/vnd.ocifs.index.v1"),
        "{fallback:#}"
    );

    let layers: u64 = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["size"].as_u64().expect("size"))
        .sum();
    let proxy = CountingProxy::start(&host);
    let reference = format!("{}/rootfs:v1", proxy.host());
    // Strict, untrusted: the referrer is not even asked for; every layer
    // is streamed.
    let (want, streamed, _) = ls_counted(&proxy, &reference, &[]);
    assert!(streamed >= layers, "{}", proxy.describe());
    assert!(
        !proxy
            .requests()
            .iter()
            .any(|r| r.path.contains("sha256-") || r.path.contains("/referrers/")),
        "strict mode asked for referrers:\n{}",
        proxy.describe()
    );
    // Lazy, and strict with --trust-referrers: no layer is streamed.
    for extra in [&["--verify", "lazy"][..], &["--trust-referrers"][..]] {
        let (got, fetched, stderr) = ls_counted(&proxy, &reference, extra);
        assert_eq!(got, want, "{extra:?}: the listings differ\n{stderr}");
        assert!(
            fetched <= layers / 100 + 4 * MIB,
            "{extra:?}: ls fetched {fetched} of {layers} bytes of layers:\n{}",
            proxy.describe()
        );
    }
}

#[test]
fn a_referrer_listed_by_the_referrers_api_whose_table_lies_is_dropped_once_the_blob_proves_it_wrong()
 {
    let registry = Registry::start(RegistryAuth::None);
    let work = temp_dir();
    let content = random_bytes(8 * MIB as usize, 0x11e);
    let files = vec![FileSpec {
        title: "disk.img",
        content: content.clone(),
        media_type: None,
    }];
    let digest = push_files(&registry, work.path(), "disk:v1", &files);
    let host = registry.host();
    let (_, _, body) = crate::support::http_get(
        &host,
        &format!("/v2/disk/manifests/{digest}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    let subject_size = body.len() as u64;

    // A referrer anyone with push access could make: a well-formed chunk
    // table of the right length whose digests are not the blob's.
    let blob = format!("sha256:{}", sha256_hex(&content));
    let mut table = b"OCIFSCT1".to_vec();
    table.extend_from_slice(&MIB.to_le_bytes());
    table.extend_from_slice(&(content.len() as u64).to_le_bytes());
    for n in 0..8u8 {
        table.extend_from_slice(&[n; 32]);
    }
    let sum = ocifs_tests::sha256_digest(&table);
    table.extend_from_slice(&hex_bytes(&sum[7..]));
    let table_path = work.path().join("table.bin");
    std::fs::write(&table_path, &table).expect("writing the table");
    let config = work.path().join("config.json");
    std::fs::write(&config, b"{}").expect("writing the config");
    let referrer = ocifs_tests::oras_push(
        &host,
        "disk:hostile",
        &[ocifs_tests::PushFile::new(&table_path)
            .media_type("application/vnd.ocifs.chunk-table.v1")
            .annotation("io.ocifs.blob", &blob)],
        &ocifs_tests::PushOptions {
            config: Some((config, "application/vnd.ocifs.index.v1".into())),
            subject: Some((
                "application/vnd.oci.image.manifest.v1+json".into(),
                digest.clone(),
                subject_size,
            )),
            ..Default::default()
        },
    );
    let (_, _, referrer_body) = crate::support::http_get(
        &host,
        &format!("/v2/disk/manifests/{referrer}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    // The proxy speaks the referrers API for the registry, listing it.
    let listing = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": referrer,
            "size": referrer_body.len(),
            "artifactType": "application/vnd.ocifs.index.v1",
        }],
    })
    .to_string();
    let proxy = CountingProxy::start(&host);
    let wanted = format!("/v2/disk/referrers/{digest}");
    proxy.set_hook(Some(std::sync::Arc::new(ocifs_tests::HookFn(
        move |r: &ocifs_tests::RequestInfo| {
            if r.method == "GET" && r.path == wanted {
                ocifs_tests::Disposition::Answer {
                    status: 200,
                    body: listing.clone(),
                }
            } else {
                ocifs_tests::Disposition::Forward
            }
        },
    ))));
    let reference = format!("{}/disk:v1", proxy.host());

    // Lazy: the referrer is found through the API, its table checks the
    // first chunk, disagrees, and the whole blob, which checks out, wins.
    let out = run_ocifs([
        "cat",
        "--verify",
        "lazy",
        "--plain-http",
        &reference,
        "disk.img",
    ]);
    out.success();
    assert_eq!(sha256_hex(&out.stdout), sha256_hex(&content));
    assert!(out.stderr.contains("chunk table is wrong"), "{out}");
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.path.contains("/referrers/")),
        "{}",
        proxy.describe()
    );
    assert!(
        !proxy.requests().iter().any(|r| r.path.contains("sha256-")),
        "the fallback tag was asked for although the API answered:\n{}",
        proxy.describe()
    );

    // Strict: not asked for; the blob is read whole, right.
    proxy.reset();
    let out = run_ocifs(["cat", "--plain-http", &reference, "disk.img"]);
    out.success();
    assert_eq!(sha256_hex(&out.stdout), sha256_hex(&content));
    assert!(
        !proxy
            .requests()
            .iter()
            .any(|r| r.path.contains("/referrers/")),
        "{}",
        proxy.describe()
    );

    // Strict, trusting the repository's referrers: the lying table is
    // believed, so a chunk read alone does not check out and is not
    // served (EIO); `cat` of the whole file streams it and checks the
    // blob's own digest, and is right.
    let mnt = ocifs_tests::Mounted::new(&reference, &["--plain-http", "--trust-referrers"]);
    let err = read_at(&mnt.path("disk.img"), 4 * MIB + 17, 4096).expect_err("a chunk was served");
    assert_eq!(err.raw_os_error(), Some(5), "{err}"); // EIO
    mnt.unmount();
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn a_node_that_publishes_its_index_spares_the_next_node_every_layer_stream() {
    let image = rootfs_image();
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let manifest = image.push(&host, "rootfs:v1", LayerCompression::Gzip);
    let layers: u64 = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["size"].as_u64().expect("size"))
        .sum();
    let (_, _, body) = crate::support::http_get(
        &host,
        "/v2/rootfs/manifests/v1",
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    let fallback = format!("rootfs:sha256-{}", sha256_hex(&body));

    // The first node: a strict mount, which streams each layer once to
    // index it, and publishes what it built.
    let first = Mounted::new(
        &format!("{host}/rootfs:v1"),
        &["--plain-http", "--publish-index"],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let index = loop {
        let log = first.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("published this node's index"))
        {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no index published:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let listed = skopeo_manifest(&host, &fallback);
    let entry = listed["manifests"]
        .as_array()
        .expect("the fallback tag lists the referrer")
        .iter()
        .find(|d| d["artifactType"] == "application/vnd.ocifs.index.v1")
        .unwrap_or_else(|| panic!("{listed:#}"))
        .clone();
    let digest = entry["digest"].as_str().expect("digest");
    assert!(index.contains(digest), "{index} vs {entry}");
    let parts: u64 = skopeo_manifest(&host, &format!("rootfs@{digest}"))["layers"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|l| l["size"].as_u64().expect("size"))
        .sum();

    // The next node, with a cache of its own: no layer streamed; the
    // tree is the first node's, and a file from the middle of the big
    // layer reads right for a seek span and a chunk or two.
    let proxy = CountingProxy::start(&host);
    proxy.reset();
    let next = Mounted::new(
        &format!("{}/rootfs:v1", proxy.host()),
        &["--plain-http", "--verify", "lazy", "--publish-index"],
    );
    let middle = image.middle_file();
    let bytes = std::fs::read(next.path(&middle.path)).expect("the middle file");
    assert_eq!(sha256_hex(&bytes), middle.sha256, "{}", middle.path);
    let listing = |dir: &std::path::Path| {
        let out = Command::new("find")
            .arg(".")
            .current_dir(dir)
            .output()
            .expect("find");
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(
        listing(next.dir()),
        listing(first.dir()),
        "the trees differ"
    );
    let fetched = proxy.blob_bytes();
    assert!(
        fetched <= parts + 4 * MIB && fetched < layers / 10,
        "the next node fetched {fetched} bytes (index parts {parts}, layers {layers}):\n{}",
        proxy.describe()
    );
    // It found the index, so it published none of its own.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        next.log()
            .contains("an index of this manifest is published already"),
        "{}",
        next.log()
    );
    let again = skopeo_manifest(&host, &fallback);
    assert_eq!(
        again["manifests"].as_array().map(Vec::len),
        Some(1),
        "{again:#}"
    );
}

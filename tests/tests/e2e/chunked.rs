//! Chunked layers made by their own tools: eStargz by stargz-snapshotter's
//! `ctr-remote`, zstd:chunked by podman, both from the one-layer Debian
//! minbase image umoci made. Strict mode lists them from their tables of
//! contents (each named by digest in its layer's descriptor) and reads
//! each chunk checked against its digest: no layer is streamed.

use ocifs_tests::chunked::{Converted, TAGS};
use ocifs_tests::walk::diff;
use ocifs_tests::{CountingProxy, Mounted, minbase_image, run_ocifs, sha256_hex, temp_dir, walk};

use crate::support::http_request;

/// The one layer's digest and size.
fn layer(manifest: &serde_json::Value) -> (String, u64) {
    let l = &manifest["layers"][0];
    (
        l["digest"].as_str().expect("digest").to_owned(),
        l["size"].as_u64().expect("size"),
    )
}

/// The bytes of the layer a mount needs to find and read its TOC: from
/// the TOC to the blob's end (eStargz: the TOC's gzip member and the
/// footer), or the compressed TOC its annotation places (zstd:chunked).
fn toc_bytes(manifest: &serde_json::Value, blob: &[u8]) -> u64 {
    let a = &manifest["layers"][0]["annotations"];
    let position = a["io.github.containers.zstd-chunked.manifest-position"]
        .as_str()
        .or_else(|| a["io.containers.zstd-chunked.manifest-position"].as_str());
    if let Some(position) = position {
        return position
            .split(':')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("a position");
    }
    let offset = ocifs_core::internals::chunked::estargz_footer(blob)
        .unwrap_or_else(|e| panic!("{e}: the layer's annotations: {a}"));
    blob.len() as u64 - offset
}

#[test]
fn estargz_and_zstd_chunked_images_mount_strictly_from_their_tocs_as_umoci_unpacks_the_original() {
    let work = temp_dir();
    let converted = Converted::make(work.path());
    let image = minbase_image();
    let reference = image.unpack(&work.path().join("bundle"));
    let mut want_listing = walk(&reference, false);
    let mut want = walk(&reference, true);
    // The root directory is umoci's bundle's, not the image's.
    want_listing.retain(|r| r.path != ".");
    want.retain(|r| r.path != ".");
    assert!(
        want.len() > 1000,
        "the minbase tree: {} entries",
        want.len()
    );
    let middle = image.middle_file();
    for tag in TAGS {
        let manifest = converted.manifest(tag);
        let (digest, layer_size) = layer(&manifest);
        let blob = std::fs::read(converted.registry(tag).blob_data_path(&digest))
            .expect("the registry's blob");
        let toc = toc_bytes(&manifest, &blob);
        let proxy = CountingProxy::start(&converted.host(tag));
        let mnt = Mounted::new(
            &format!("{}/minbase:{tag}", proxy.host()),
            &["--plain-http"],
        );
        // The first mount and a walk of every entry's metadata: the TOC
        // (and the chunks around it), no layer.
        let mut got = walk(mnt.dir(), false);
        got.retain(|r| r.path != ".");
        let fetched = proxy.blob_bytes();
        if let Some(d) = diff(
            "umoci unpack",
            &want_listing,
            &format!("ocifs mount of {tag}"),
            &got,
            40,
        ) {
            panic!("{d}\nmount log:\n{}", mnt.log());
        }
        // Exactly the TOC's bytes (and eStargz's footer, fetched first to
        // find it) and the image config: not the cache chunks around them.
        assert!(
            fetched * 20 < layer_size && fetched <= toc + 51 + (4 << 10),
            "{tag}: mount + walk fetched {fetched} of the layer's {layer_size} bytes \
             (its TOC: {toc}):\n{}\n{}",
            proxy.describe(),
            mnt.log()
        );
        assert!(
            !mnt.log().contains("refused") && !mnt.log().contains("streamed"),
            "{tag}: {}",
            mnt.log()
        );
        // `ocifs inspect` names where the listing came from.
        let out = run_ocifs([
            "inspect",
            "--plain-http",
            &format!("{}/minbase:{tag}", proxy.host()),
        ]);
        let shown = out.success().stdout_str();
        assert!(
            shown.contains(&digest) && shown.contains("table of contents"),
            "{tag}: inspect does not name the layer's TOC:\n{shown}"
        );

        // One file from the middle of the layer: about its chunk.
        proxy.reset();
        let bytes = std::fs::read(mnt.path(&middle.path)).expect("the middle file");
        assert_eq!(sha256_hex(&bytes), middle.sha256, "{tag}: {}", middle.path);
        // Its chunks' compressed bytes: at most its size and gzip's or
        // zstd's framing, far below a cache chunk (1 MiB).
        assert!(
            proxy.blob_bytes() <= middle.size + middle.size / 50 + 1024,
            "{tag}: reading {} ({} bytes) fetched {}:\n{}",
            middle.path,
            middle.size,
            proxy.blob_bytes(),
            proxy.describe()
        );
        // Every file's bytes, each chunk checked: as umoci unpacks them.
        let mut got = walk(mnt.dir(), true);
        got.retain(|r| r.path != ".");
        if let Some(d) = diff(
            "umoci unpack",
            &want,
            &format!("ocifs mount of {tag}"),
            &got,
            40,
        ) {
            panic!("{d}\nmount log:\n{}", mnt.log());
        }
        mnt.unmount();
    }
}

#[test]
fn a_changed_chunk_is_never_served_and_a_toc_that_fails_its_digest_is_refused() {
    let work = temp_dir();
    let converted = Converted::make(work.path());
    let image = minbase_image();
    let reference = image.unpack(&work.path().join("bundle"));
    let files: Vec<(String, String)> = walk(&reference, true)
        .into_iter()
        .filter_map(|r| Some((r.path, r.sha256?)))
        .collect();
    for tag in TAGS {
        let host = converted.host(tag);
        let manifest = converted.manifest(tag);
        let (digest, size) = layer(&manifest);
        let data = converted.registry(tag).blob_data_path(&digest);
        let pristine = std::fs::read(&data).expect("the registry's blob");
        assert_eq!(pristine.len() as u64, size);

        // Bytes changed in the blob's data, away from its TOC: the chunks
        // they are in fail their digests, whatever files those are. Every
        // file is read: some reads fail (EIO), none returns a wrong byte.
        let mut bad = pristine.clone();
        for at in [bad.len() / 4, bad.len() / 3, bad.len() / 2] {
            bad[at] ^= 0x20;
        }
        std::fs::write(&data, &bad).expect("tampering");
        let mnt = Mounted::new(&format!("{host}/minbase:{tag}"), &["--plain-http"]);
        let mut failed = 0;
        for (path, want) in &files {
            match std::fs::read(mnt.path(path)) {
                Ok(bytes) => assert_eq!(&sha256_hex(&bytes), want, "{tag}: {path} served wrong"),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(5), "{tag}: {path}: {e}");
                    failed += 1;
                }
            }
        }
        assert!(
            failed >= 1,
            "{tag}: no read failed although chunks were changed:\n{}",
            mnt.log()
        );
        mnt.unmount();
        std::fs::write(&data, &pristine).expect("restoring");

        // A manifest whose annotation names another TOC digest (the layer
        // itself unchanged): the TOC is refused with a warning naming the
        // layer, the layer is streamed whole instead (and checked against
        // its own digest), and the listing is the same.
        let mut lying = manifest.clone();
        let annotations = lying["layers"][0]["annotations"]
            .as_object_mut()
            .expect("the layer's annotations");
        for (k, v) in annotations.iter_mut() {
            if k.ends_with("stargz/toc.digest") || k.ends_with("zstd-chunked.manifest-checksum") {
                *v = serde_json::Value::String(format!("sha256:{}", "0".repeat(64)));
            }
        }
        let body = serde_json::to_vec(&lying).expect("JSON");
        let media_type = lying["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_owned();
        let (status, _, answer) = http_request(
            &host,
            "PUT",
            "/v2/minbase/manifests/lying",
            &[("Content-Type", &media_type)],
            &body,
        );
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
        let proxy = CountingProxy::start(&host);
        let ls = |t: &str| {
            run_ocifs([
                "ls",
                "-R",
                "--plain-http",
                &format!("{}/minbase:{t}", proxy.host()),
            ])
        };
        let good = ls(tag);
        good.success();
        assert!(
            proxy.blob_bytes() < size / 20,
            "{tag}: listing fetched {} of {size}",
            proxy.blob_bytes()
        );
        proxy.reset();
        let out = ls("lying");
        assert_eq!(
            out.success().stdout,
            good.stdout,
            "{tag}: the listings differ"
        );
        assert!(
            out.stderr.contains("refused") && out.stderr.contains(&digest),
            "{tag}: {out}"
        );
        assert!(
            proxy.blob_bytes() >= size,
            "{tag}: the refused layer was not streamed:\n{}",
            proxy.describe()
        );
    }
}

//! Content that does not match its digest, made by tampering with the
//! registry's storage, is refused with exit code 6.

use ocifs_tests::{Registry, RegistryAuth, random_bytes, run_ocifs, sha256_digest, temp_dir};

use crate::support::{FileSpec, push_files};

fn file(title: &'static str, content: &[u8]) -> Vec<FileSpec> {
    vec![FileSpec {
        title,
        content: content.to_vec(),
        media_type: None,
    }]
}

#[test]
fn manifest_with_other_bytes_than_its_digest_is_refused() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let a = push_files(
        &registry,
        dir.path(),
        "repo:a",
        &file("a.txt", b"artifact a\n"),
    );
    let b = push_files(
        &registry,
        dir.path(),
        "repo:b",
        &file("b.txt", b"artifact b\n"),
    );
    // The registry now serves B's (valid) manifest when asked for A's digest.
    let b_bytes =
        std::fs::read(registry.blob_data_path(&b)).expect("reading B's manifest from storage");
    std::fs::write(registry.blob_data_path(&a), &b_bytes).expect("overwriting A's manifest");

    let out = run_ocifs([
        "ls",
        "--plain-http",
        &format!("{}/repo@{a}", registry.host()),
    ]);
    out.code_is(6).stderr_has(&a);
    assert!(
        !out.stdout_str().contains("b.txt"),
        "listed the substituted manifest:\n{out}"
    );
}

#[test]
fn cat_of_a_tampered_blob_is_refused() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let content = random_bytes(64 * 1024, 6);
    let digest = sha256_digest(&content);
    push_files(
        &registry,
        dir.path(),
        "repo:v1",
        &file("data.bin", &content),
    );
    let mut tampered = content.clone();
    for b in tampered.iter_mut().skip(1000).take(16) {
        *b ^= 0x5a;
    }
    std::fs::write(registry.blob_data_path(&digest), &tampered).expect("overwriting the blob");
    let reference = format!("{}/repo:v1", registry.host());

    // The manifest is intact: listing still works.
    run_ocifs(["ls", "--plain-http", &reference])
        .success()
        .stdout_has("data.bin");
    let out = run_ocifs(["cat", "--plain-http", &reference, "data.bin"]);
    out.code_is(6).stderr_has(&digest);
    // Files this small are held back until verified: nothing reaches stdout.
    assert!(
        out.stdout.is_empty(),
        "cat wrote {} bytes of a corrupt file",
        out.stdout.len()
    );
}

//! The harness itself, without ocifs: if these fail, the other failures say
//! nothing about ocifs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ocifs_tests::{CountingProxy, Registry, RegistryAuth, random_bytes, sha256_digest, temp_dir};

use crate::support::{FileSpec, header, http_get};

#[test]
fn proxy_forwards_pushes_and_counts_blob_bytes() {
    let registry = Registry::start(RegistryAuth::None);
    let proxy = CountingProxy::start(&registry.host());
    let dir = temp_dir();
    let content = random_bytes(300 * 1024, 1);
    let files = [FileSpec {
        title: "data.bin",
        content: content.clone(),
        media_type: None,
    }];
    // Uploads (POST, PATCH/PUT with Location) through the proxy.
    let pushed = {
        let via_proxy = ProxiedRegistry { host: proxy.host() };
        via_proxy.push(dir.path(), &files)
    };
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.method == "PUT" && r.path.contains("/manifests/")),
        "the push did not go through the proxy:\n{}",
        proxy.describe()
    );
    proxy.reset();
    assert!(proxy.requests().is_empty());

    let digest = sha256_digest(&content);
    let (status, head, body) = http_get(&proxy.host(), &format!("/v2/repo/blobs/{digest}"), &[]);
    assert_eq!(status, 200, "{head}");
    assert!(body == content, "the blob came back different");
    assert_eq!(proxy.blob_gets().len(), 1, "{}", proxy.describe());
    assert_eq!(
        proxy.blob_bytes(),
        content.len() as u64,
        "{}",
        proxy.describe()
    );

    let (status, head, _) = http_get(
        &proxy.host(),
        "/v2/repo/manifests/v1",
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "Docker-Content-Digest"),
        Some(pushed.as_str()),
        "{head}"
    );
    assert_eq!(proxy.manifest_gets().len(), 1, "{}", proxy.describe());
    assert_eq!(proxy.blob_gets().len(), 1, "{}", proxy.describe());
}

/// oras-py pointed at the proxy's address.
struct ProxiedRegistry {
    host: String,
}

impl ProxiedRegistry {
    fn push(&self, dir: &std::path::Path, files: &[FileSpec]) -> String {
        let push: Vec<ocifs_tests::PushFile> = files
            .iter()
            .map(|f| {
                let path = dir.join(f.title);
                std::fs::write(&path, &f.content).expect("writing a file to push");
                ocifs_tests::PushFile::new(path)
            })
            .collect();
        ocifs_tests::oras_push(
            &self.host,
            "repo:v1",
            &push,
            &ocifs_tests::PushOptions::default(),
        )
    }
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// Splits `Bearer realm="…",service="…",scope="…"` into its parameters.
fn challenge_param(challenge: &str, name: &str) -> Option<String> {
    let start = challenge.find(&format!("{name}=\""))? + name.len() + 2;
    let end = challenge[start..].find('"')? + start;
    Some(challenge[start..end].to_owned())
}

#[test]
fn token_registry_accepts_the_token_servers_tokens() {
    let registry = Registry::start(RegistryAuth::token("bob", "pw"));
    let (status, head, _) = http_get(&registry.host(), "/v2/", &[]);
    assert_eq!(status, 401, "{head}");
    let challenge =
        header(&head, "WWW-Authenticate").unwrap_or_else(|| panic!("no challenge:\n{head}"));
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    let realm = challenge_param(challenge, "realm").expect("a realm");
    let service = challenge_param(challenge, "service").expect("a service");
    let token_host = realm
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .expect("an http realm");
    let path = format!("/token?service={service}&scope=repository%3Arepo%3Apull");

    let (status, head, _) = http_get(
        token_host,
        &path,
        &[("Authorization", &basic("bob", "wrong"))],
    );
    assert_eq!(status, 401, "{head}");
    let (status, head, _) = http_get(token_host, &path, &[]);
    assert_eq!(status, 401, "{head}");
    let (status, head, body) =
        http_get(token_host, &path, &[("Authorization", &basic("bob", "pw"))]);
    assert_eq!(status, 200, "{head}");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON token response");
    let token = json["token"].as_str().expect("a token");
    assert_eq!(json["access_token"], token);

    let (status, head, body) = http_get(
        &registry.host(),
        "/v2/",
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(
        status,
        200,
        "the registry refused the token:\n{head}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&body),
        registry.log_tail(10)
    );
    // A repository the token was issued for: not found, but not refused.
    let (status, head, _) = http_get(
        &registry.host(),
        "/v2/repo/manifests/v1",
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(status, 404, "{head}");

    let requests = registry.token_requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert_eq!(
        requests
            .iter()
            .map(|r| (r.authorization, r.status))
            .collect::<Vec<_>>(),
        [(true, 401), (false, 401), (true, 200)]
    );
}

#[test]
fn htpasswd_registry_wants_basic_credentials() {
    let registry = Registry::start(RegistryAuth::htpasswd("carol", "pw"));
    let (status, head, _) = http_get(&registry.host(), "/v2/", &[]);
    assert_eq!(status, 401, "{head}");
    assert!(
        header(&head, "WWW-Authenticate").is_some_and(|c| c.starts_with("Basic ")),
        "{head}"
    );
    let (status, head, _) = http_get(
        &registry.host(),
        "/v2/",
        &[("Authorization", &basic("carol", "nope"))],
    );
    assert_eq!(status, 401, "{head}");
    let (status, head, _) = http_get(
        &registry.host(),
        "/v2/",
        &[("Authorization", &basic("carol", "pw"))],
    );
    assert_eq!(status, 200, "{head}");
}

#[test]
fn dropping_a_registry_stops_it_and_removes_its_storage() {
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let storage = registry.storage_dir();
    assert!(storage.is_dir());
    drop(registry);
    assert!(!storage.exists(), "{} survived", storage.display());
    assert!(
        std::net::TcpStream::connect(&host).is_err(),
        "{host} still answers"
    );
}

#[test]
fn oras_push_marks_directories_for_unpacking() {
    let registry = Registry::start(RegistryAuth::None);
    let dir = temp_dir();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("creating a tree");
    std::fs::write(tree.join("sub/a.txt"), b"a\n").expect("writing a file");
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, b"plain\n").expect("writing a file");
    let files = [
        ocifs_tests::PushFile::new(&tree),
        ocifs_tests::PushFile::new(&plain),
    ];
    let digest = ocifs_tests::oras_push(
        &registry.host(),
        "dirs:v1",
        &files,
        &ocifs_tests::PushOptions::default(),
    );

    let (status, head, body) = http_get(
        &registry.host(),
        &format!("/v2/dirs/manifests/{digest}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    assert_eq!(status, 200, "{head}");
    assert_eq!(sha256_digest(&body), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&body).expect("a JSON manifest");
    let layers = manifest["layers"].as_array().expect("layers");
    let tree_layer = layers
        .iter()
        .find(|l| l["annotations"]["org.opencontainers.image.title"] == "tree")
        .unwrap_or_else(|| panic!("no layer titled tree: {manifest:#}"));
    assert_eq!(
        tree_layer["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        tree_layer["annotations"]["io.deis.oras.content.unpack"],
        "true"
    );
    assert!(
        tree_layer["annotations"]["io.deis.oras.content.digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:") && d.len() == 71),
        "{manifest:#}"
    );
    let plain_layer = layers
        .iter()
        .find(|l| l["annotations"]["org.opencontainers.image.title"] == "plain.txt")
        .unwrap_or_else(|| panic!("no layer titled plain.txt: {manifest:#}"));
    assert!(
        plain_layer["annotations"]
            .get("io.deis.oras.content.unpack")
            .is_none()
    );
}

//! Fixtures shared by the topics.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ocifs_tests::{PushFile, PushOptions, Registry, oras_push, random_bytes};

/// A file pushed to a registry: its title (path in the artifact) and bytes.
#[derive(Clone, Debug)]
pub struct FileSpec {
    pub title: &'static str,
    pub content: Vec<u8>,
    pub media_type: Option<&'static str>,
}

/// The standard artifact of the file tests: a small text file, a 3 MiB
/// random one, one with its own media type, and one whose title has `/`.
pub fn standard_files() -> Vec<FileSpec> {
    vec![
        FileSpec {
            title: "hello.txt",
            content: b"hello, ocifs\n".to_vec(),
            media_type: None,
        },
        FileSpec {
            title: "big.bin",
            content: random_bytes(3 * 1024 * 1024, 0x0c1f5),
            media_type: None,
        },
        FileSpec {
            title: "notes.md",
            content: b"# Notes\n\nA file with its own media type.\n".to_vec(),
            media_type: Some("text/markdown"),
        },
        FileSpec {
            title: "nested/dir/deep.txt",
            content: b"deep inside\n".to_vec(),
            media_type: None,
        },
    ]
}

/// Writes `files` under `dir` (by their base names) and pushes them with
/// oras-py as `repo_ref`; returns the manifest digest.
pub fn push_files(registry: &Registry, dir: &Path, repo_ref: &str, files: &[FileSpec]) -> String {
    let src = dir.join(format!("src-{}", repo_ref.replace([':', '/', '@'], "_")));
    std::fs::create_dir_all(&src).expect("creating the push dir");
    let push: Vec<PushFile> = files
        .iter()
        .map(|f| {
            let base = f.title.rsplit('/').next().unwrap_or(f.title);
            let path: PathBuf = src.join(base);
            std::fs::write(&path, &f.content).expect("writing a file to push");
            let mut p = PushFile::new(path);
            if base != f.title {
                p = p.title(f.title);
            }
            if let Some(mt) = f.media_type {
                p = p.media_type(mt);
            }
            p
        })
        .collect();
    let options = match registry.credentials() {
        Some((user, password)) => PushOptions::with_credentials(user, password),
        None => PushOptions::default(),
    };
    oras_push(&registry.host(), repo_ref, &push, &options)
}

/// A minimal HTTP/1.0 GET: (status, raw headers, body).
pub fn http_get(host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(host).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("setting a read timeout");
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("sending the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("reading the response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let body = response[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, head, body)
}

/// The value of header `name` in a raw response head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Runs `program ARGS` in `dir` (a third-party tool making a fixture),
/// failing the test with its stderr if it fails.
pub fn sh(dir: &Path, program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program} (scripts/test installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

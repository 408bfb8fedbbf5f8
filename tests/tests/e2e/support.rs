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
    http_request(host, "GET", path, headers, &[])
}

/// A minimal HTTP/1.0 request with a body: (status, raw headers, body).
/// The test's own hand on the registry (a lying manifest), not a client.
pub fn http_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(host).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("setting a read timeout");
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("sending the request");
    stream.write_all(body).expect("sending the body");
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

/// The sparse file of the sparse-tar tests: 20 MiB, holes at its start,
/// between its three data ranges and at its end.
pub const SPARSE_SIZE: u64 = 20 << 20;
/// Where its data ranges are, and their lengths.
pub const SPARSE_DATA: [(u64, u64); 3] = [(1 << 20, 5), (10 << 20, 100_000), (15 << 20, 4096)];

/// The sparse file's bytes (holes are zeros).
pub fn sparse_bytes() -> Vec<u8> {
    let mut out = vec![0u8; SPARSE_SIZE as usize];
    for (i, (at, len)) in SPARSE_DATA.iter().enumerate() {
        let at = *at as usize;
        out[at..at + *len as usize].copy_from_slice(&random_bytes(*len as usize, i as u64 + 1));
    }
    out
}

/// Tars of a directory `NAME/` holding the sparse file as `disk.raw` (and
/// a hard link to it, `again.raw`), one for each sparse format real tools
/// write: GNU tar's old `S` type, its PAX 0.0, 0.1 and 1.0, and bsdtar's
/// PAX (1.0). `(NAME, the tar's path)`; each tar is checked to hold the
/// format it is named for.
pub fn sparse_tars(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let formats: [(&str, &str, &[&str], &str); 5] = [
        ("gnu", "tar", &["--sparse", "--format=gnu"], "GNU old"),
        (
            "pax00",
            "tar",
            &["--sparse", "--format=pax", "--sparse-version=0.0"],
            "GNU.sparse.offset=",
        ),
        (
            "pax01",
            "tar",
            &["--sparse", "--format=pax", "--sparse-version=0.1"],
            "GNU.sparse.map=",
        ),
        (
            "pax10",
            "tar",
            &["--sparse", "--format=pax", "--sparse-version=1.0"],
            "GNU.sparse.major=1",
        ),
        (
            "bsdtar",
            "bsdtar",
            &["--format", "pax"],
            "GNU.sparse.major=1",
        ),
    ];
    let bytes = sparse_bytes();
    let mut out = Vec::new();
    for (name, tool, args, marker) in formats {
        let src = dir.join(format!("sparse-src-{name}"));
        let d = src.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        let file = std::fs::File::create(d.join("disk.raw")).expect("create");
        file.set_len(SPARSE_SIZE).expect("truncate");
        for (at, len) in SPARSE_DATA {
            use std::os::unix::fs::FileExt as _;
            file.write_all_at(&bytes[at as usize..(at + len) as usize], at)
                .expect("write");
        }
        drop(file);
        std::fs::hard_link(d.join("disk.raw"), d.join("again.raw")).expect("link");
        let tar = dir.join(format!("{name}.tar"));
        let mut a: Vec<&str> = args.to_vec();
        let tar_s = tar.display().to_string();
        a.extend(["-cf", &tar_s, name]);
        sh(&src, tool, &a);
        let written = std::fs::read(&tar).expect("read the tar");
        let holds = if marker == "GNU old" {
            // A header block whose typeflag is `S`.
            written
                .chunks(512)
                .any(|b| b.len() == 512 && b[156] == b'S' && &b[257..263] == b"ustar ")
        } else {
            written
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
        };
        assert!(holds, "{tool} {args:?} did not write {marker}");
        assert!(
            (written.len() as u64) < SPARSE_SIZE / 10,
            "{tool} {args:?} stored the holes ({} bytes)",
            written.len()
        );
        out.push((name, tar));
    }
    out
}

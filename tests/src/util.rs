//! Small helpers: digests, deterministic random content, temp dirs, ports.

use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The OCI digest (`sha256:<hex>`) of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// `len` pseudo-random bytes, the same for the same `seed` (splitmix64):
/// incompressible content whose failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        out.extend_from_slice(&splitmix(state).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The splitmix64 output function: a well-mixed 64 bits from `z`.
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fresh temp dir for one test, removed when dropped.
///
/// # Panics
///
/// If the temp dir cannot be created.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("ocifs-test-")
        .tempdir()
        .expect("creating a temp dir")
}

/// A loopback port that nothing listens on: bound to pick it, then released.
/// (Another process could take it in between; for "unreachable" tests that
/// window is harmless in practice.)
///
/// # Panics
///
/// If no port can be bound.
pub fn closed_port() -> u16 {
    free_port()
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to pick a free port")
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Decodes `%XX` escapes and `+` of an `application/x-www-form-urlencoded`
/// query component.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2]))
            {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The `(name, value)` pairs of a query string, decoded.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// A watchdog for the server process `pid`: `sh` reading a pipe from this
/// process, which kills the server when the pipe closes (this process
/// died without stopping it). Keep the returned stdin open as long as the
/// server should live; kill the watchdog before the server when stopping.
pub(crate) fn watchdog(
    pid: u32,
    name: &str,
) -> std::io::Result<(std::process::Child, Option<std::process::ChildStdin>)> {
    use std::process::{Command, Stdio};
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg("cat >/dev/null; kill -9 \"$1\" 2>/dev/null")
        .arg(name)
        .arg(pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let stdin = watchdog.stdin.take();
    Ok((watchdog, stdin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_deterministic_and_sized() {
        assert_eq!(random_bytes(1000, 7), random_bytes(1000, 7));
        assert_ne!(random_bytes(1000, 7), random_bytes(1000, 8));
        assert_eq!(random_bytes(13, 1).len(), 13);
    }

    #[test]
    fn query_pairs_decode_scopes() {
        let pairs =
            query_pairs("service=reg&scope=repository%3Afoo%2Fbar%3Apull%2Cpush&scope=a+b&x");
        assert_eq!(
            pairs,
            vec![
                ("service".into(), "reg".into()),
                ("scope".into(), "repository:foo/bar:pull,push".into()),
                ("scope".into(), "a b".into()),
                ("x".into(), String::new()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn sha256_of_empty() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

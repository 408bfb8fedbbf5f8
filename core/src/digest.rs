//! Content digests: parsing, hashing, verification.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A validated `sha256:<64 lowercase hex>` digest.
///
/// Only sha256 is accepted: it is what every registry and client in use
/// produces, and a digest ocifs cannot check is a digest it must not trust.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The digest whose sha256 is `sha256` (from a table of contents).
    pub fn sha256(sha256: [u8; 32]) -> Self {
        Digest {
            hex: hex::encode(sha256),
        }
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The algorithm, always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// Checks that `bytes` hash to this digest; `what` names the content in the error.
    pub fn verify(&self, bytes: &[u8], what: impl FnOnce() -> String) -> Result<()> {
        let actual = Digest::of(bytes);
        if &actual == self {
            Ok(())
        } else {
            Err(Error::digest_mismatch(what(), self, actual))
        }
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidDigest {
            input: s.to_owned(),
        };
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 over a stream of bytes.
#[derive(Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher").field("len", &self.len).finish()
    }
}

impl Hasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// How many bytes were fed.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest {
            hex: hex::encode(self.inner.finalize()),
        }
    }
}

/// The hash a chunk table's digests are of.
///
/// A table that is published, or that a layer index carries (read by other
/// nodes), is of sha256, as the blob digests are. A table ocifs takes for
/// itself, of bytes whose blob digest checked out, to check them again when
/// they are read back from disk, is of BLAKE3: about four times faster on
/// one core, so checking bytes at rest costs a reader little.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkHash {
    /// sha256: published tables and layer indexes.
    Sha256,
    /// BLAKE3: the cache's own tables of bytes at rest.
    Blake3,
}

impl ChunkHash {
    /// The hash of the tables ocifs takes for itself, of bytes at rest.
    pub const AT_REST: ChunkHash = ChunkHash::Blake3;

    /// The digest of `bytes`.
    pub fn of(self, bytes: &[u8]) -> [u8; 32] {
        match self {
            ChunkHash::Sha256 => Sha256::digest(bytes).into(),
            ChunkHash::Blake3 => *blake3::hash(bytes).as_bytes(),
        }
    }

    /// Its name, as errors print it.
    pub fn name(self) -> &'static str {
        match self {
            ChunkHash::Sha256 => "sha256",
            ChunkHash::Blake3 => "blake3",
        }
    }
}

/// The digests of a blob's chunks, in order (the last chunk may be short),
/// and the hash they are of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkTable {
    /// The hash of each digest.
    pub hash: ChunkHash,
    /// One digest a chunk.
    pub digests: Vec<[u8; 32]>,
}

impl ChunkTable {
    /// A table of sha256 digests (a published one, a layer index's).
    pub fn sha256(digests: Vec<[u8; 32]>) -> Self {
        ChunkTable {
            hash: ChunkHash::Sha256,
            digests,
        }
    }

    /// How many chunks it has.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// One chunk's running digest.
enum ChunkState {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl ChunkState {
    fn new(hash: ChunkHash) -> Self {
        match hash {
            ChunkHash::Sha256 => ChunkState::Sha256(Sha256::new()),
            ChunkHash::Blake3 => ChunkState::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            ChunkState::Sha256(h) => h.update(bytes),
            ChunkState::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    /// The digest so far; the state starts again.
    fn take(&mut self) -> [u8; 32] {
        match self {
            ChunkState::Sha256(h) => std::mem::take(h).finalize().into(),
            ChunkState::Blake3(h) => {
                let d = *h.finalize().as_bytes();
                h.reset();
                d
            }
        }
    }
}

/// Hashes a blob whole and chunk by chunk as its bytes pass, in order.
pub struct BlobHasher {
    whole: Hasher,
    chunks: ChunkDigests,
}

/// The chunk digests of a blob, as its bytes pass.
struct ChunkDigests {
    hash: ChunkHash,
    chunk: ChunkState,
    in_chunk: u64,
    chunk_size: u64,
    digests: Vec<[u8; 32]>,
}

impl ChunkDigests {
    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = ((self.chunk_size - self.in_chunk) as usize).min(bytes.len());
            if self.in_chunk == 0 && take as u64 == self.chunk_size {
                // A whole chunk at once: hashed in one call.
                self.digests.push(self.hash.of(&bytes[..take]));
            } else {
                self.chunk.update(&bytes[..take]);
                self.in_chunk += take as u64;
                if self.in_chunk == self.chunk_size {
                    self.digests.push(self.chunk.take());
                    self.in_chunk = 0;
                }
            }
            bytes = &bytes[take..];
        }
    }
}

/// Bytes fed at once from this many on are hashed on two threads: the
/// whole digest on the caller's, the chunk digests on another.
const PARALLEL_MIN: usize = 1 << 20;

impl std::fmt::Debug for BlobHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobHasher")
            .field("len", &self.whole.len())
            .field("chunk_size", &self.chunks.chunk_size)
            .field("hash", &self.chunks.hash)
            .finish()
    }
}

impl BlobHasher {
    /// A hasher of chunks of `chunk_size` (non-zero) bytes, whose table is
    /// of `hash`.
    pub fn new(chunk_size: u64, hash: ChunkHash) -> Self {
        BlobHasher {
            whole: Hasher::new(),
            chunks: ChunkDigests {
                hash,
                chunk: ChunkState::new(hash),
                in_chunk: 0,
                chunk_size: chunk_size.max(1),
                digests: Vec::new(),
            },
        }
    }

    /// Feeds the next bytes of the blob. Every byte is hashed twice (the
    /// blob's digest, its chunk's): a large piece of a sha256 table is
    /// hashed on two threads at once, so the two passes cost the time of
    /// one. A BLAKE3 table's pass costs a quarter of the blob's.
    pub fn update(&mut self, bytes: &[u8]) {
        if bytes.len() >= PARALLEL_MIN && self.chunks.hash == ChunkHash::Sha256 {
            let (whole, chunks) = (&mut self.whole, &mut self.chunks);
            std::thread::scope(|s| {
                s.spawn(|| chunks.update(bytes));
                whole.update(bytes);
            });
        } else {
            self.whole.update(bytes);
            self.chunks.update(bytes);
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.whole.len()
    }

    /// Whether nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.whole.is_empty()
    }

    /// The chunk size of the table.
    pub fn chunk_size(&self) -> u64 {
        self.chunks.chunk_size
    }

    /// The whole-blob digest and the chunk table.
    pub fn finish(self) -> (Digest, ChunkTable) {
        let mut chunks = self.chunks;
        if chunks.in_chunk > 0 {
            let last = chunks.chunk.take();
            chunks.digests.push(last);
        }
        (
            self.whole.finish(),
            ChunkTable {
                hash: chunks.hash,
                digests: chunks.digests,
            },
        )
    }
}

/// Checks chunk `n` of `blob` against its digest table.
pub fn check_chunk(table: &ChunkTable, blob: &Digest, n: u64, bytes: &[u8]) -> Result<()> {
    let actual = table.hash.of(bytes);
    match table.digests.get(n as usize) {
        Some(expected) if *expected == actual => Ok(()),
        expected => Err(Error::digest_mismatch(
            format!(
                "chunk {n} of blob {} ({} bytes; checked against its {} chunk digest table)",
                blob,
                bytes.len(),
                table.hash.name()
            ),
            expected.map_or_else(|| "no such chunk".into(), hex::encode),
            hex::encode(actual),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(s.parse::<Digest>().ok(), Some(d));
    }

    #[test]
    fn rejects_other_algorithms_and_bad_hex() {
        for bad in [
            "sha512:abcd",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:2cf24dba",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000000",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn verify_names_both_digests() {
        let d = Digest::of(b"a");
        let err = d.verify(b"b", || "blob x".into()).unwrap_err().to_string();
        assert!(err.contains(&d.to_string()) && err.contains(&Digest::of(b"b").to_string()));
    }

    #[test]
    fn hasher_matches_one_shot() {
        let mut h = Hasher::new();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.len(), 5);
        assert_eq!(h.finish(), Digest::of(b"hello"));
    }
}

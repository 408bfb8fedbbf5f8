//! Chunk digest tables: the digest of each fixed-size chunk of a blob,
//! taken from bytes whose whole-blob digest checked out. With one, a chunk
//! read from disk (or fetched alone) is checked before it is served, so
//! bytes at rest are never trusted merely for being in the cache.
//!
//! A table is taken while a blob is hashed on its way in
//! ([`crate::digest::BlobHasher`]:
//! the whole-blob digest and the chunk digests in one pass over the bytes)
//! and stored beside the blob (`chunks/sha256/<hex>`, [`encode`]): 32 bytes
//! a chunk, 32 KiB a GiB at the default 1 MiB chunk. The cache's own
//! tables are of BLAKE3 ([`ChunkHash::Blake3`]); a published table (the
//! same encoding, `ocifs index`) is of sha256, and so is the table a
//! layer's scan takes (its layer index carries it).

use sha2::{Digest as _, Sha256};

use crate::digest::{ChunkHash, ChunkTable};

/// The file's first bytes, naming the chunk hash (format version 1 of
/// each).
const SHA256_MAGIC: &[u8; 8] = b"OCIFSCT1";
const BLAKE3_MAGIC: &[u8; 8] = b"OCIFSCB1";

/// Header: magic, chunk size, blob size (little-endian u64s).
const HEADER: usize = 8 + 8 + 8;

/// The stored form of a table: header, digests, and the sha256 of both (so
/// a damaged table is noticed and taken again, not believed).
pub fn encode(chunk_size: u64, blob_size: u64, table: &ChunkTable) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 32 * table.digests.len() + 32);
    out.extend_from_slice(match table.hash {
        ChunkHash::Sha256 => SHA256_MAGIC,
        ChunkHash::Blake3 => BLAKE3_MAGIC,
    });
    out.extend_from_slice(&chunk_size.to_le_bytes());
    out.extend_from_slice(&blob_size.to_le_bytes());
    for d in &table.digests {
        out.extend_from_slice(d);
    }
    let sum: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

/// The largest stored table read back: a 16 TiB blob at 4 KiB chunks
/// would need more; such a table is taken again in memory.
pub const MAX_ENCODED: u64 = 256 << 20;

/// Reads a stored table of a blob of `blob_size` bytes: its chunk size and
/// digests, if it is whole, undamaged and of that blob's size.
pub fn decode(bytes: &[u8], blob_size: u64) -> Option<(u64, ChunkTable)> {
    if bytes.len() < HEADER + 32 {
        return None;
    }
    let hash = match bytes[..8].try_into().ok()? {
        SHA256_MAGIC => ChunkHash::Sha256,
        BLAKE3_MAGIC => ChunkHash::Blake3,
        _ => return None,
    };
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return None;
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (chunk_size, size) = (u64_at(8), u64_at(16));
    let digests = &body[HEADER..];
    if size != blob_size
        || chunk_size == 0
        || digests.len() % 32 != 0
        || (digests.len() / 32) as u64 != blob_size.div_ceil(chunk_size)
    {
        return None;
    }
    let digests = digests
        .chunks_exact(32)
        .map(|c| {
            let mut d = [0u8; 32];
            d.copy_from_slice(c);
            d
        })
        .collect();
    Some((chunk_size, ChunkTable { hash, digests }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{BlobHasher, Digest};

    #[test]
    fn a_blob_hashed_in_any_pieces_gives_one_table_and_its_digest() {
        let blob: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for hash in [ChunkHash::Sha256, ChunkHash::Blake3] {
            let mut whole = BlobHasher::new(4096, hash);
            whole.update(&blob);
            let mut pieces = BlobHasher::new(4096, hash);
            for p in blob.chunks(777) {
                pieces.update(p);
            }
            let mut aligned = BlobHasher::new(4096, hash);
            for p in blob.chunks(4096) {
                aligned.update(p);
            }
            let (d1, t1) = whole.finish();
            let (d2, t2) = pieces.finish();
            let (d3, t3) = aligned.finish();
            assert_eq!(d1, Digest::of(&blob));
            assert_eq!((&d1, &t1), (&d2, &t2));
            assert_eq!((&d1, &t1), (&d3, &t3));
            assert_eq!(t1.hash, hash);
            assert_eq!(t1.len(), 3);
            assert_eq!(t1.digests[0], hash.of(&blob[..4096]));
            assert_eq!(t1.digests[2], hash.of(&blob[8192..]));
        }
        assert_eq!(
            ChunkHash::Blake3.of(b"abc").to_vec(),
            hex::decode("6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85")
                .unwrap()
        );
    }

    #[test]
    fn a_stored_table_round_trips_and_damage_is_noticed() {
        let digests = vec![[1u8; 32], [2u8; 32], [3u8; 32]];
        let table = ChunkTable::sha256(digests.clone());
        let bytes = encode(4096, 9000, &table);
        assert_eq!(decode(&bytes, 9000), Some((4096, table.clone())));
        // A BLAKE3 table's bytes say so: never read as a sha256 one.
        let b3 = ChunkTable {
            hash: ChunkHash::Blake3,
            digests: digests.clone(),
        };
        assert_eq!(decode(&encode(4096, 9000, &b3), 9000), Some((4096, b3)));
        // Another blob size, a flipped bit anywhere, a cut: not believed.
        assert_eq!(decode(&bytes, 9001), None);
        for at in [0, 9, 17, 30, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert_eq!(decode(&bad, 9000), None, "flip at {at}");
        }
        assert_eq!(decode(&bytes[..bytes.len() - 1], 9000), None);
        assert_eq!(decode(&[], 9000), None);
        // A well-formed table of the wrong length for the blob.
        let short = ChunkTable::sha256(digests[..2].to_vec());
        assert_eq!(decode(&encode(4096, 9000, &short), 9000), None);
    }
}

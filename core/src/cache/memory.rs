//! The memory tier: an LRU of chunks under a byte budget. It only ever holds
//! bytes that may be served (verified ones in strict mode).

use std::num::NonZeroUsize;
use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;

use crate::digest::Digest;

type Key = (Digest, u64);

#[derive(Debug)]
struct Inner {
    lru: LruCache<Key, Bytes>,
    bytes: u64,
}

/// Chunks in memory, least recently used evicted first.
#[derive(Debug)]
pub struct MemoryTier {
    inner: Mutex<Inner>,
    budget: u64,
}

impl MemoryTier {
    /// A tier holding at most `budget` bytes of chunk data.
    pub fn new(budget: u64) -> Self {
        MemoryTier {
            // The byte budget bounds it; the entry cap is only a backstop.
            inner: Mutex::new(Inner {
                lru: LruCache::new(NonZeroUsize::new(1 << 20).unwrap_or(NonZeroUsize::MIN)),
                bytes: 0,
            }),
            budget,
        }
    }

    /// Chunk `n` of `digest`, if held (and marks it recently used).
    pub fn get(&self, digest: &Digest, n: u64) -> Option<Bytes> {
        let mut inner = self.inner.lock().ok()?;
        inner.lru.get(&(digest.clone(), n)).cloned()
    }

    /// Holds chunk `n` of `digest`, evicting others to stay under budget.
    pub fn put(&self, digest: &Digest, n: u64, bytes: Bytes) {
        if bytes.len() as u64 > self.budget {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let len = bytes.len() as u64;
        if let Some((_, old)) = inner.lru.push((digest.clone(), n), bytes) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += len;
        while inner.bytes > self.budget {
            match inner.lru.pop_lru() {
                Some((_, b)) => inner.bytes -= b.len() as u64,
                None => break,
            }
        }
    }

    /// Forgets every chunk of `digest`.
    pub fn remove_blob(&self, digest: &Digest) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let keys: Vec<Key> = inner
            .lru
            .iter()
            .filter(|((d, _), _)| d == digest)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(b) = inner.lru.pop(&k) {
                inner.bytes -= b.len() as u64;
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().map_or(0, |i| i.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_under_budget_evicting_lru() {
        let m = MemoryTier::new(10);
        let d = Digest::of(b"x");
        m.put(&d, 0, Bytes::from_static(b"aaaa"));
        m.put(&d, 1, Bytes::from_static(b"bbbb"));
        assert!(m.get(&d, 0).is_some()); // 0 is now more recent than 1
        m.put(&d, 2, Bytes::from_static(b"cccc"));
        assert_eq!(m.bytes(), 8);
        assert!(m.get(&d, 1).is_none());
        assert!(m.get(&d, 0).is_some() && m.get(&d, 2).is_some());
        m.put(&d, 3, Bytes::from(vec![0u8; 11])); // larger than the budget: not held
        assert!(m.get(&d, 3).is_none());
        m.remove_blob(&d);
        assert_eq!(m.bytes(), 0);
    }
}

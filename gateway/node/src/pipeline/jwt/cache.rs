//! Verified tokens, remembered so that a client sending the same token again costs a hash
//! instead of a signature check. Keyed by the token's SHA-256 (the token itself is not
//! kept), bounded in entries and in bytes; the oldest entry goes first when either bound is
//! reached. An entry serves only while its token is within its time bounds and its key is
//! still held by the provider; revocation, scopes and claims are checked on every request.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::verify::Verified;
use crate::sync::lock;

pub type TokenHash = [u8; 32];

#[derive(Debug, Default)]
struct Inner {
    map: BTreeMap<TokenHash, Arc<Verified>>,
    /// Insertion order; may name entries already removed (skipped when met).
    order: VecDeque<TokenHash>,
    bytes: usize,
}

/// The cache of verified tokens.
#[derive(Debug)]
pub struct Cache {
    inner: Mutex<Inner>,
    entries_max: usize,
    bytes_max: usize,
}

impl Cache {
    pub fn new(entries_max: usize, bytes_max: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            entries_max,
            bytes_max,
        }
    }

    pub fn get(&self, key: &TokenHash) -> Option<Arc<Verified>> {
        lock(&self.inner).map.get(key).cloned()
    }

    /// Forgets one entry (its token expired, or its key is gone).
    pub fn remove(&self, key: &TokenHash) -> (usize, usize) {
        let mut inner = lock(&self.inner);
        if let Some(v) = inner.map.remove(key) {
            inner.bytes -= v.bytes;
        }
        (inner.map.len(), inner.bytes)
    }

    /// Remembers a verified token, making room by forgetting the oldest entries. Returns the
    /// entries and bytes held after.
    pub fn insert(&self, key: TokenHash, verified: Arc<Verified>) -> (usize, usize) {
        let mut inner = lock(&self.inner);
        if verified.bytes > self.bytes_max || inner.map.contains_key(&key) {
            return (inner.map.len(), inner.bytes);
        }
        while inner.map.len() >= self.entries_max || inner.bytes + verified.bytes > self.bytes_max {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(v) = inner.map.remove(&oldest) {
                inner.bytes -= v.bytes;
            }
        }
        inner.bytes += verified.bytes;
        inner.map.insert(key, verified);
        inner.order.push_back(key);
        // Entries removed out of order leave their keys in `order`; keep it within twice the
        // bound.
        if inner.order.len() > 2 * self.entries_max {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|k| map.contains_key(k));
        }
        (inner.map.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(bytes: usize) -> Arc<Verified> {
        Arc::new(Verified {
            provider: 0,
            kid: None,
            issuer: String::new(),
            subject: String::new(),
            token_id: None,
            issued_at_s: None,
            not_before_s: None,
            expires_at_s: 0,
            claims: serde_json::Map::new(),
            bytes,
        })
    }

    #[test]
    fn bounded_in_entries_and_bytes_oldest_out_first() {
        let cache = Cache::new(3, 1_000);
        for i in 0..10u8 {
            let (entries, bytes) = cache.insert([i; 32], verified(100));
            assert!(entries <= 3 && bytes <= 1_000);
        }
        assert!(cache.get(&[9; 32]).is_some());
        assert!(cache.get(&[6; 32]).is_none(), "the oldest went first");
        let (entries, bytes) = cache.insert([20; 32], verified(900));
        assert_eq!(
            (entries, bytes),
            (2, 1_000),
            "room made by bytes: two old entries went"
        );
        assert_eq!(
            cache.insert([21; 32], verified(1_001)).0,
            2,
            "too big: not kept"
        );
        assert!(cache.get(&[21; 32]).is_none());
    }

    #[test]
    fn removals_out_of_order_keep_the_order_queue_bounded() {
        let cache = Cache::new(2, 10_000);
        for i in 0..100u8 {
            cache.insert([i; 32], verified(1));
            cache.remove(&[i; 32]);
        }
        assert!(lock(&cache.inner).order.len() <= 4);
    }
}

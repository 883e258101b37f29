//! A bounded, per-VM cache of token claims that were already verified: by the filter's own
//! signature check (JWT mode) or by the introspection endpoint (introspection mode).
//!
//! Keyed by a keyed 128-bit SipHash-2-4 of the token (a random key per VM), never the token itself:
//! the cache holds no credential, and an attacker who cannot read the key cannot aim at an entry
//! (a collision by chance is 2⁻¹²⁸ per pair). SipHash over a token costs a fraction of SHA-256 in
//! V8, and this hash runs on every request. An entry lives until the earlier of the cache's maximum
//! age and the token's `exp`; claims are still checked on every use (time, issuer, audience,
//! scope), only the expensive verification is skipped. When full, the oldest entry goes: O(1) per
//! insert, because with real traffic (a new token per user) most requests miss and insert.

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{Map, Value};
use siphasher::sip128::{Hasher128, SipHasher24};

pub type TokenHash = u128;

/// Verified claims by token hash, bounded in count and age.
pub struct ClaimsCache {
    key: [u8; 16],
    /// Shared, not cloned, on a hit: a clone cost an allocation per claim on every request.
    entries: HashMap<TokenHash, Entry>,
    /// Insertion order, oldest first, with each insert's sequence number: an item whose entry was
    /// since replaced or dropped (its sequence no longer matches) is skipped when it comes up.
    order: VecDeque<(TokenHash, u64)>,
    inserts: u64,
    max_entries: usize,
    max_age_ms: u64,
    misses: u64,
}

struct Entry {
    claims: Rc<Map<String, Value>>,
    until_ms: u64,
    seq: u64,
}

impl ClaimsCache {
    /// `key` must be random and secret (the adapter draws it from the host's randomness).
    pub fn new(max_entries: usize, max_age: Duration, key: [u8; 16]) -> Self {
        ClaimsCache {
            key,
            entries: HashMap::new(),
            order: VecDeque::new(),
            inserts: 0,
            max_entries,
            max_age_ms: max_age.as_millis() as u64,
            misses: 0,
        }
    }

    pub fn hash(&self, token: &str) -> TokenHash {
        let mut hasher = SipHasher24::new_with_key(&self.key);
        hasher.write(token.as_bytes());
        hasher.finish128().as_u128()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lookups that found nothing fresh since the last call (each cost a signature check or an
    /// introspection callout), for the adapter's `token.cache_misses` counter.
    pub fn take_misses(&mut self) -> u64 {
        std::mem::take(&mut self.misses)
    }

    /// The cached claims, if the entry is still fresh (a stale one is dropped).
    pub fn get(&mut self, hash: &TokenHash, now_ms: u64) -> Option<Rc<Map<String, Value>>> {
        match self.entries.get(hash) {
            Some(entry) if now_ms < entry.until_ms => return Some(Rc::clone(&entry.claims)),
            Some(_) => {
                self.entries.remove(hash);
            }
            None => {}
        }
        self.misses += 1;
        None
    }

    /// Forgets everything (the keys that verified the cached tokens changed).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// Caches verified claims until the earlier of the cache age and the token's `exp`.
    pub fn insert(&mut self, hash: TokenHash, claims: Map<String, Value>, now_ms: u64) {
        if self.max_entries == 0 || self.max_age_ms == 0 {
            return;
        }
        let exp_ms = claims
            .get("exp")
            .and_then(Value::as_f64)
            .filter(|e| e.is_finite() && *e > 0.0)
            .map(|e| (e * 1000.0) as u64);
        let until_ms = match exp_ms {
            Some(exp) => exp.min(now_ms + self.max_age_ms),
            None => return, // without exp we cannot promise not to outlive the token
        };
        if until_ms <= now_ms {
            return;
        }
        while self.entries.len() >= self.max_entries && !self.entries.contains_key(&hash) {
            let Some((oldest, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).is_some_and(|e| e.seq == seq) {
                self.entries.remove(&oldest);
            }
        }
        self.inserts += 1;
        let seq = self.inserts;
        let claims = Rc::new(claims);
        self.entries.insert(
            hash,
            Entry {
                claims,
                until_ms,
                seq,
            },
        );
        self.order.push_back((hash, seq));
        // Items of entries that expired or were replaced stay in `order` until they come up;
        // with few evictions they could pile up, so drop them once they outnumber the live ones.
        if self.order.len() > 2 * self.max_entries.max(self.entries.len()) {
            let entries = &self.entries;
            self.order
                .retain(|(h, seq)| entries.get(h).is_some_and(|e| e.seq == *seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(exp: u64) -> Map<String, Value> {
        match json!({"sub": "demo-user", "exp": exp}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn cache_honours_age_exp_and_size() {
        let mut cache = ClaimsCache::new(2, Duration::from_secs(60), [7; 16]);
        let (a, b, c) = (cache.hash("a"), cache.hash("b"), cache.hash("c"));
        cache.insert(a, claims(1_000), 0); // exp 1000 s: capped at 60 s
        assert!(cache.get(&a, 59_999).is_some());
        assert!(cache.get(&a, 60_000).is_none(), "older than cache_seconds");
        cache.insert(a, claims(10), 0); // exp 10 s comes first
        assert!(cache.get(&a, 10_000).is_none(), "never past exp");
        cache.insert(b, claims(1_000), 0);
        cache.insert(a, claims(1_000), 0); // a again: replaced in place, now the newest
        cache.insert(c, claims(1_000), 0); // full: b is the oldest and goes
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get(&b, 1).is_none() && cache.get(&a, 1).is_some() && cache.get(&c, 1).is_some()
        );
        let mut no_exp = claims(0);
        no_exp.remove("exp");
        let d = cache.hash("d");
        cache.insert(d, no_exp, 0);
        assert!(cache.get(&d, 1).is_none());
    }

    #[test]
    fn clear_forgets_everything() {
        let mut cache = ClaimsCache::new(10, Duration::from_secs(60), [7; 16]);
        cache.insert(cache.hash("a"), claims(1_000), 0);
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn a_stream_of_new_tokens_evicts_the_oldest_and_counts_every_miss() {
        let mut cache = ClaimsCache::new(3, Duration::from_secs(60), [7; 16]);
        let hashes: Vec<_> = (0..1000).map(|i| cache.hash(&format!("t{i}"))).collect();
        for h in &hashes {
            assert!(cache.get(h, 1).is_none());
            cache.insert(*h, claims(1_000), 1);
            assert!(cache.len() <= 3);
            assert!(cache.order.len() <= 6, "stale order items are dropped");
        }
        assert_eq!(cache.take_misses(), 1000);
        assert_eq!(cache.take_misses(), 0);
        // The three newest remain; the one before them went.
        assert!(hashes[997..].iter().all(|h| cache.get(h, 2).is_some()));
        assert!(cache.get(&hashes[996], 2).is_none());
        assert_eq!(cache.take_misses(), 1);
    }

    #[test]
    fn the_hash_depends_on_the_key_and_the_whole_token() {
        let one = ClaimsCache::new(1, Duration::from_secs(1), [1; 16]);
        let two = ClaimsCache::new(1, Duration::from_secs(1), [2; 16]);
        assert_ne!(one.hash("a.b.c"), two.hash("a.b.c"));
        assert_ne!(one.hash("a.b.c"), one.hash("a.b.d"));
        assert_eq!(one.hash("a.b.c"), one.hash("a.b.c"));
    }
}

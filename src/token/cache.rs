//! A bounded, per-VM cache of token claims that were already verified: by the filter's own
//! signature check (JWT mode) or by the introspection endpoint (introspection mode).
//!
//! Keyed by SHA-256 of the token, never the token itself. An entry lives until the earlier of the
//! cache's maximum age and the token's `exp`; claims are still checked on every use (time, issuer,
//! audience, scope), only the expensive verification is skipped. When full, expired entries go
//! first, then the one closest to expiry.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Verified claims by token hash, bounded in count and age.
pub struct ClaimsCache {
    /// Shared, not cloned, on a hit: a clone cost an allocation per claim on every request.
    entries: HashMap<TokenHash, (Rc<Map<String, Value>>, u64)>,
    max_entries: usize,
    max_age_ms: u64,
}

impl ClaimsCache {
    pub fn new(max_entries: usize, max_age: Duration) -> Self {
        ClaimsCache {
            entries: HashMap::new(),
            max_entries,
            max_age_ms: max_age.as_millis() as u64,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached claims, if the entry is still fresh (a stale one is dropped).
    pub fn get(&mut self, hash: &TokenHash, now_ms: u64) -> Option<Rc<Map<String, Value>>> {
        match self.entries.get(hash) {
            Some((claims, until)) if now_ms < *until => Some(Rc::clone(claims)),
            Some(_) => {
                self.entries.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Forgets everything (the keys that verified the cached tokens changed).
    pub fn clear(&mut self) {
        self.entries.clear();
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
        let until = match exp_ms {
            Some(exp) => exp.min(now_ms + self.max_age_ms),
            None => return, // without exp we cannot promise not to outlive the token
        };
        if until <= now_ms {
            return;
        }
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(&hash) {
            self.entries.retain(|_, (_, u)| *u > now_ms);
            if self.entries.len() >= self.max_entries {
                // Still full of fresh entries: drop the one that would expire first.
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, u))| *u)
                    .map(|(k, _)| *k);
                if let Some(key) = soonest {
                    self.entries.remove(&key);
                }
            }
        }
        self.entries.insert(hash, (Rc::new(claims), until));
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
        let mut cache = ClaimsCache::new(2, Duration::from_secs(60));
        let (a, b, c) = (token_hash("a"), token_hash("b"), token_hash("c"));
        cache.insert(a, claims(1_000), 0); // exp 1000 s: capped at 60 s
        assert!(cache.get(&a, 59_999).is_some());
        assert!(cache.get(&a, 60_000).is_none(), "older than cache_seconds");
        cache.insert(a, claims(10), 0); // exp 10 s comes first
        assert!(cache.get(&a, 10_000).is_none(), "never past exp");
        cache.insert(a, claims(1_000), 0);
        cache.insert(b, claims(30), 0);
        cache.insert(c, claims(1_000), 0); // full: b expires first and goes
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get(&b, 1).is_none() && cache.get(&a, 1).is_some() && cache.get(&c, 1).is_some()
        );
        let mut no_exp = claims(0);
        no_exp.remove("exp");
        cache.insert(token_hash("d"), no_exp, 0);
        assert!(cache.get(&token_hash("d"), 1).is_none());
    }

    #[test]
    fn clear_forgets_everything() {
        let mut cache = ClaimsCache::new(10, Duration::from_secs(60));
        cache.insert(token_hash("a"), claims(1_000), 0);
        cache.clear();
        assert!(cache.is_empty());
    }
}

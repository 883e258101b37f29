//! RFC 7662 token introspection: the callout, the reading of its answer, and a bounded cache of
//! positive answers so a client's burst of requests costs one introspection.
//!
//! The cache is keyed by SHA-256 of the token (never the token itself) and an entry lives until the
//! earlier of `cache_seconds` and the token's `exp`. Negative answers are not cached: a token that
//! becomes active (clock skew at the IdP) is not locked out, and revocation is what introspection
//! is for, so the cache window is kept short.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::credential::{Callout, Upstream};
use crate::failure::Failure;
use crate::secret::Secret;

/// Introspection answers larger than this are refused unread.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;

pub struct IntrospectionSettings {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    pub client_id: String,
    pub client_secret: Secret,
    pub cache_seconds: u64,
    pub cache_entries: usize,
}

/// `application/x-www-form-urlencoded` for one value (RFC 6749 Appendix B).
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn callout(settings: &IntrospectionSettings, token: &str, request_id: &str) -> Callout {
    // RFC 6749 §2.3.1: id and secret are form-encoded before they are joined and base64-encoded.
    let credentials = format!(
        "{}:{}",
        form_encode(&settings.client_id),
        form_encode(settings.client_secret.expose_str())
    );
    let headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), settings.path.clone()),
        (":authority".to_string(), settings.authority.clone()),
        (
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("accept".to_string(), "application/json".to_string()),
        (
            "authorization".to_string(),
            format!("Basic {}", STANDARD.encode(credentials)),
        ),
        ("request-id".to_string(), request_id.to_string()),
    ];
    Callout {
        upstream: Upstream::Introspection,
        headers,
        body: Secret::new(format!(
            "token={}&token_type_hint=access_token",
            form_encode(token)
        )),
    }
}

/// The introspection endpoint's verdict.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Active(Map<String, Value>),
    Inactive,
}

pub fn read_answer(status: Option<u16>, body: &[u8]) -> Result<Answer, Failure> {
    match status {
        Some(200) => {}
        None | Some(503) => return Err(Failure::IntrospectionUnavailable),
        Some(504) => return Err(Failure::IntrospectionTimeout),
        Some(_) => return Err(Failure::IntrospectionError),
    }
    if body.len() > MAX_ANSWER_BYTES {
        return Err(Failure::IntrospectionBadAnswer);
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(answer)) => match answer.get("active") {
            Some(Value::Bool(true)) => Ok(Answer::Active(answer)),
            // RFC 7662 §2.2: "active" is REQUIRED; anything but true is not active.
            Some(Value::Bool(false)) => Ok(Answer::Inactive),
            _ => Err(Failure::IntrospectionBadAnswer),
        },
        _ => Err(Failure::IntrospectionBadAnswer),
    }
}

pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Positive answers, per VM, bounded in count and age.
pub struct IntrospectionCache {
    entries: HashMap<TokenHash, (Map<String, Value>, u64)>,
    max_entries: usize,
    max_age_ms: u64,
}

impl IntrospectionCache {
    pub fn new(max_entries: usize, max_age: Duration) -> Self {
        IntrospectionCache {
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
    pub fn get(&mut self, hash: &TokenHash, now_ms: u64) -> Option<Map<String, Value>> {
        match self.entries.get(hash) {
            Some((claims, until)) if now_ms < *until => Some(claims.clone()),
            Some(_) => {
                self.entries.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Caches an active answer until the earlier of the cache age and the token's `exp`.
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
        self.entries.insert(hash, (claims, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(exp: u64) -> Map<String, Value> {
        match json!({"active": true, "sub": "demo-user", "exp": exp}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn builds_an_rfc7662_request() {
        let settings = IntrospectionSettings {
            cluster: "idp".into(),
            authority: "idp".into(),
            path: "/introspect".into(),
            timeout: Duration::from_secs(1),
            client_id: "otp filter".into(),
            client_secret: Secret::new("s3cr:t".into()),
            cache_seconds: 60,
            cache_entries: 10,
        };
        let c = callout(&settings, "a.b+c/d=", "rid");
        let header = |n: &str| {
            c.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        // "otp+filter:s3cr%3At"
        assert_eq!(
            header("authorization"),
            Some(format!("Basic {}", STANDARD.encode("otp+filter:s3cr%3At")))
        );
        assert_eq!(
            c.body.expose_str(),
            "token=a.b%2Bc%2Fd%3D&token_type_hint=access_token"
        );
        assert!(!format!("{c:?}").contains("a.b"));
    }

    #[test]
    fn reads_answers() {
        assert!(matches!(
            read_answer(Some(200), br#"{"active":true,"sub":"x"}"#),
            Ok(Answer::Active(_))
        ));
        assert_eq!(
            read_answer(Some(200), br#"{"active":false}"#),
            Ok(Answer::Inactive)
        );
        assert_eq!(
            read_answer(Some(200), br#"{"active":"true"}"#),
            Err(Failure::IntrospectionBadAnswer)
        );
        assert_eq!(
            read_answer(Some(200), br#"{"sub":"x"}"#),
            Err(Failure::IntrospectionBadAnswer)
        );
        assert_eq!(
            read_answer(Some(200), b"[]"),
            Err(Failure::IntrospectionBadAnswer)
        );
        assert_eq!(
            read_answer(Some(401), b""),
            Err(Failure::IntrospectionError)
        );
        assert_eq!(
            read_answer(Some(503), b""),
            Err(Failure::IntrospectionUnavailable)
        );
        assert_eq!(
            read_answer(None, b""),
            Err(Failure::IntrospectionUnavailable)
        );
        assert_eq!(
            read_answer(Some(504), b""),
            Err(Failure::IntrospectionTimeout)
        );
    }

    #[test]
    fn cache_honours_age_exp_and_size() {
        let mut cache = IntrospectionCache::new(2, Duration::from_secs(60));
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
}

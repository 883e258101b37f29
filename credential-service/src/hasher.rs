//! argon2id with a pepper, off the async threads.
//!
//! Every hash is argon2id (m = 19 MiB, t = 2, p = 1: OWASP's first recommendation, the same
//! PHC strings as before) keyed with a *pepper*: a secret that lives in the environment, never
//! in the database, passed to argon2 as its secret input K (`Argon2::new_with_secret`). A copy
//! of the database alone then cannot be used to test guesses, not even the 9,340 PINs.
//!
//! Rotation: each stored hash carries the id of the pepper it was made with. Several peppers
//! can be configured at once; new hashes use the active one, and a hash made with another is
//! rehashed with the active one after a successful check (docs/credential-service.md).
//!
//! argon2 is CPU-bound and takes 19 MiB: it runs on tokio's blocking pool, at most
//! `max_concurrent` at a time (a semaphore); the rest wait their turn without holding a thread.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::metrics::Metrics;

/// One pepper given as `CREDENTIAL_SERVICE_PEPPER` (base64) is known by this id.
pub const DEFAULT_PEPPER_ID: &str = "default";
/// Shortest pepper accepted, in bytes (argon2 allows any length; 32 random bytes are plenty).
pub const MIN_PEPPER_BYTES: usize = 32;

/// The configured peppers, by id, and the one new hashes use. `Debug` shows ids only.
#[derive(Clone, Default)]
pub struct Peppers {
    keys: BTreeMap<String, Arc<Zeroizing<Vec<u8>>>>,
    active: Option<String>,
}

impl fmt::Debug for Peppers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peppers")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

fn pepper_id_ok(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn decode_pepper(id: &str, b64: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(b64.trim())
            .map_err(|_| format!("pepper {id:?}: not base64"))?,
    );
    if bytes.len() < MIN_PEPPER_BYTES {
        return Err(format!(
            "pepper {id:?}: {} bytes, at least {MIN_PEPPER_BYTES} needed",
            bytes.len()
        ));
    }
    Ok(bytes)
}

impl Peppers {
    /// No pepper: hashes are plain argon2id (the demo; the service warns at start).
    pub fn none() -> Self {
        Peppers::default()
    }

    /// From the three environment values: `single` (`CREDENTIAL_SERVICE_PEPPER`, base64, id
    /// `default`), or `list` (`CREDENTIAL_SERVICE_PEPPERS`, `id:base64,id:base64`) with `active`
    /// (`CREDENTIAL_SERVICE_PEPPER_ACTIVE`, needed when the list has more than one). Error
    /// messages name ids, never key material.
    pub fn from_env_values(
        single: Option<&str>,
        list: Option<&str>,
        active: Option<&str>,
    ) -> Result<Self, String> {
        let mut keys = BTreeMap::new();
        match (single, list) {
            (Some(_), Some(_)) => {
                return Err(
                    "set CREDENTIAL_SERVICE_PEPPER or CREDENTIAL_SERVICE_PEPPERS, not both".into(),
                )
            }
            (Some(b64), None) => {
                keys.insert(
                    DEFAULT_PEPPER_ID.to_owned(),
                    Arc::new(decode_pepper(DEFAULT_PEPPER_ID, b64)?),
                );
            }
            (None, Some(list)) => {
                for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    let Some((id, b64)) = entry.split_once(':') else {
                        return Err("CREDENTIAL_SERVICE_PEPPERS: entries are id:base64".into());
                    };
                    let id = id.trim();
                    if !pepper_id_ok(id) {
                        return Err(format!("pepper id {id:?}: 1 to 32 of A-Z a-z 0-9 - _ ."));
                    }
                    if keys
                        .insert(id.to_owned(), Arc::new(decode_pepper(id, b64)?))
                        .is_some()
                    {
                        return Err(format!("pepper id {id:?} given twice"));
                    }
                }
                if keys.is_empty() {
                    return Err("CREDENTIAL_SERVICE_PEPPERS is empty".into());
                }
            }
            (None, None) => {
                if active.is_some() {
                    return Err("CREDENTIAL_SERVICE_PEPPER_ACTIVE without any pepper".into());
                }
                return Ok(Peppers::none());
            }
        }
        let active =
            match active {
                Some(id) if keys.contains_key(id) => id.to_owned(),
                Some(id) => return Err(format!("active pepper {id:?} is not configured")),
                None if keys.len() == 1 => keys.keys().next().cloned().unwrap_or_default(),
                None => return Err(
                    "several peppers: CREDENTIAL_SERVICE_PEPPER_ACTIVE must name the active one"
                        .into(),
                ),
            };
        Ok(Peppers {
            keys,
            active: Some(active),
        })
    }

    pub fn active_id(&self) -> Option<&str> {
        self.active.as_deref()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    fn key(&self, id: Option<&str>) -> Option<Option<Arc<Zeroizing<Vec<u8>>>>> {
        match id {
            None => Some(None),
            Some(id) => self.keys.get(id).map(|k| Some(Arc::clone(k))),
        }
    }
}

/// A stored hash and the pepper it was made with (`None`: no pepper).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHash {
    pub phc: String,
    pub pepper_id: Option<String>,
}

struct Inner {
    peppers: Peppers,
    params: Params,
    /// What unknown users and missing secrets are checked against, so that timing does not
    /// tell who exists: a hash of random bytes with the active pepper and the same parameters.
    dummy: StoredHash,
    metrics: Arc<Metrics>,
}

/// Hashes and verifies secrets; cheap to clone.
#[derive(Clone)]
pub struct Hasher {
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
}

/// The production parameters: argon2's defaults (argon2id, m = 19456 KiB, t = 2, p = 1).
pub fn default_params() -> Params {
    Params::default()
}

fn argon2_with(key: Option<&[u8]>, params: Params) -> Result<Argon2<'_>, String> {
    match key {
        Some(k) => Argon2::new_with_secret(k, Algorithm::Argon2id, Version::V0x13, params)
            .map_err(|e| format!("argon2: {e}")),
        None => Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params)),
    }
}

fn hash_blocking(peppers: &Peppers, params: &Params, secret: &[u8]) -> Result<StoredHash, String> {
    let id = peppers.active_id().map(str::to_owned);
    let key = peppers
        .key(id.as_deref())
        .ok_or_else(|| "active pepper missing".to_owned())?;
    let argon2 = argon2_with(key.as_deref().map(|k| k.as_slice()), params.clone())?;
    let salt = SaltString::generate(&mut OsRng);
    let phc = argon2
        .hash_password(secret, &salt)
        .map_err(|e| format!("hashing: {e}"))?
        .to_string();
    Ok(StoredHash { phc, pepper_id: id })
}

/// `true` only if `secret` matches `stored`, made with a pepper we have.
fn verify_blocking(peppers: &Peppers, stored: &StoredHash, secret: &[u8]) -> bool {
    let Some(key) = peppers.key(stored.pepper_id.as_deref()) else {
        return false;
    };
    let Ok(hash) = PasswordHash::new(&stored.phc) else {
        return false;
    };
    // The parameters are the hash's own (from its PHC string); Params here only seed them.
    argon2_with(key.as_deref().map(|k| k.as_slice()), Params::default())
        .map(|a| a.verify_password(secret, &hash).is_ok())
        .unwrap_or(false)
}

impl Hasher {
    /// Builds the hasher and its dummy hash (one argon2 run, so call it off the async threads
    /// or accept a short block at start).
    pub fn new(
        peppers: Peppers,
        params: Params,
        max_concurrent: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let mut random = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(random.as_mut());
        let dummy = hash_blocking(&peppers, &params, random.as_ref())?;
        Ok(Hasher {
            inner: Arc::new(Inner {
                peppers,
                params,
                dummy,
                metrics,
            }),
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        })
    }

    pub fn peppers(&self) -> &Peppers {
        &self.inner.peppers
    }

    /// Runs `f` on the blocking pool once a permit is free, timing it into the histogram.
    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> Result<T, String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "hasher closed".to_owned())?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let out = f(&inner);
            inner.metrics.observe_argon2(op, started.elapsed());
            out
        })
        .await
        .map_err(|e| format!("argon2 task: {e}"))
    }

    /// A new hash of `secret` with the active pepper.
    pub async fn hash(&self, secret: Zeroizing<String>) -> Result<StoredHash, String> {
        self.run("hash", move |inner| {
            hash_blocking(&inner.peppers, &inner.params, secret.as_bytes())
        })
        .await?
    }

    /// Whether `secret` matches `stored` (`None`: no such secret: the dummy is checked instead,
    /// and the answer is `false`). A hash made with a pepper we do not have never matches.
    pub async fn verify(&self, stored: Option<StoredHash>, secret: Zeroizing<String>) -> bool {
        self.run("verify", move |inner| match stored {
            Some(stored) => verify_blocking(&inner.peppers, &stored, secret.as_bytes()),
            None => {
                std::hint::black_box(verify_blocking(
                    &inner.peppers,
                    &inner.dummy,
                    secret.as_bytes(),
                ));
                false
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Whether a hash that just verified should be made again: another pepper than the active
    /// one, or other parameters than today's.
    pub fn needs_rehash(&self, stored: &StoredHash) -> bool {
        if stored.pepper_id.as_deref() != self.inner.peppers.active_id() {
            return true;
        }
        match PasswordHash::new(&stored.phc) {
            Ok(hash) => Params::try_from(&hash).map_or(true, |p| {
                p.m_cost() != self.inner.params.m_cost()
                    || p.t_cost() != self.inner.params.t_cost()
                    || p.p_cost() != self.inner.params.p_cost()
            }),
            Err(_) => true,
        }
    }

    /// Whether a stored hash names a pepper this process does not have (it can never verify).
    pub fn knows_pepper(&self, pepper_id: Option<&str>) -> bool {
        self.inner.peppers.key(pepper_id).is_some()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Tiny parameters: unit tests hash a lot.
    pub(crate) fn cheap_params() -> Params {
        Params::new(8, 1, 1, None).unwrap()
    }

    pub(crate) fn b64(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn pepper_configuration() {
        assert!(Peppers::from_env_values(None, None, None)
            .unwrap()
            .active_id()
            .is_none());
        let one = Peppers::from_env_values(Some(&b64(1)), None, None).unwrap();
        assert_eq!(one.active_id(), Some(DEFAULT_PEPPER_ID));
        let two = Peppers::from_env_values(
            None,
            Some(&format!("old:{}, new:{}", b64(1), b64(2))),
            Some("new"),
        )
        .unwrap();
        assert_eq!(two.active_id(), Some("new"));
        assert_eq!(two.ids().collect::<Vec<_>>(), ["new", "old"]);
        // Debug shows ids, never key material.
        assert!(!format!("{two:?}").contains(&b64(2)));
        let short = STANDARD.encode([7u8; 31]);
        for (single, list, active) in [
            (Some(short.as_str()), None, None),
            (Some("not base64!"), None, None),
            (Some(b64(1).as_str()), Some("a:x"), None),
            (None, Some(""), None),
            (None, Some("nocolon"), None),
            (None, Some("bad id:AAAA"), None),
            (None, None, Some("x")),
        ] {
            assert!(
                Peppers::from_env_values(single, list, active).is_err(),
                "{single:?} {list:?} {active:?}"
            );
        }
        let list = format!("a:{},b:{}", b64(1), b64(2));
        assert!(Peppers::from_env_values(None, Some(&list), None).is_err());
        assert!(Peppers::from_env_values(None, Some(&list), Some("c")).is_err());
        let dup = format!("a:{},a:{}", b64(1), b64(2));
        assert!(Peppers::from_env_values(None, Some(&dup), Some("a")).is_err());
        let err = Peppers::from_env_values(None, Some(&format!("a:{}", short)), None).unwrap_err();
        assert!(!err.contains(&short));
    }

    #[tokio::test]
    async fn pepper_binds_the_hash() {
        let metrics = Arc::new(Metrics::new());
        let a = Peppers::from_env_values(Some(&b64(1)), None, None).unwrap();
        let b = Peppers::from_env_values(Some(&b64(2)), None, None).unwrap();
        let ha = Hasher::new(a, cheap_params(), 2, metrics.clone()).unwrap();
        let hb = Hasher::new(b, cheap_params(), 2, metrics.clone()).unwrap();
        let none = Hasher::new(Peppers::none(), cheap_params(), 2, metrics).unwrap();
        let pin = || Zeroizing::new("8299".to_owned());
        let stored = ha.hash(pin()).await.unwrap();
        assert_eq!(stored.pepper_id.as_deref(), Some(DEFAULT_PEPPER_ID));
        assert!(ha.verify(Some(stored.clone()), pin()).await);
        assert!(
            !ha.verify(Some(stored.clone()), Zeroizing::new("8298".into()))
                .await
        );
        // Same id, other key; no pepper at all; and the missing-secret path.
        assert!(!hb.verify(Some(stored.clone()), pin()).await);
        assert!(!none.verify(Some(stored.clone()), pin()).await);
        assert!(!none.knows_pepper(Some(DEFAULT_PEPPER_ID)));
        assert!(!ha.verify(None, pin()).await);
        let plain = StoredHash {
            pepper_id: None,
            ..stored.clone()
        };
        assert!(!none.verify(Some(plain), pin()).await);
        assert!(!ha.needs_rehash(&stored));
        let unpeppered = none.hash(pin()).await.unwrap();
        assert!(ha.needs_rehash(&unpeppered));
    }
}

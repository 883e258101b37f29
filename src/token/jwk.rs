//! The keys that may sign access tokens: JWKS keys (inline or fetched) and configured HMAC secrets.
//!
//! RFC 8725: each key is pinned to exactly one algorithm, so a token cannot choose how it is checked.
//! RSA keys verify one of RS256/RS384/RS512/PS256 (the JWK's `alg`, RS256 when absent), P-256 keys
//! ES256, P-384 keys ES384, Ed25519 keys EdDSA. HMAC secrets come only from the filter's own config,
//! never from a JWKS, so a public key can never become an HMAC secret.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Mac, SimpleHmac};
use rsa::signature::Verifier;
use rsa::{BigUint, RsaPublicKey};
use serde_json::Value;
use sha2::{Sha256, Sha384, Sha512};

use crate::secret::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Es256,
    Es384,
    EdDsa,
    Hs256,
    Hs384,
    Hs512,
}

impl Algorithm {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            "HS256" => Self::Hs256,
            "HS384" => Self::Hs384,
            "HS512" => Self::Hs512,
            _ => return None,
        })
    }

    /// RFC 7518 §3.2: an HMAC key at least as long as the hash output.
    pub fn min_hmac_key_bytes(self) -> Option<usize> {
        match self {
            Self::Hs256 => Some(32),
            Self::Hs384 => Some(48),
            Self::Hs512 => Some(64),
            _ => None,
        }
    }
}

/// Why a key is skipped when its algorithm was left out of the build (cargo features `es384` and
/// `eddsa`, both on by default; they cost about 150 KB and 45 KB of .wasm).
#[cfg(not(all(feature = "es384", feature = "eddsa")))]
const NOT_BUILT_IN: &str = "{} is not built into this otp-filter (cargo feature)";

/// A verifier per algorithm, built once when the key is loaded.
enum Verifying {
    Rs256(rsa::pkcs1v15::VerifyingKey<Sha256>),
    Rs384(rsa::pkcs1v15::VerifyingKey<Sha384>),
    Rs512(rsa::pkcs1v15::VerifyingKey<Sha512>),
    Ps256(rsa::pss::VerifyingKey<Sha256>),
    Es256(p256::ecdsa::VerifyingKey),
    #[cfg(feature = "es384")]
    Es384(p384::ecdsa::VerifyingKey),
    #[cfg(feature = "eddsa")]
    EdDsa(ed25519_dalek::VerifyingKey),
    Hmac(Secret),
}

pub struct Key {
    pub kid: String,
    pub algorithm: Algorithm,
    verifying: Verifying,
}

impl Key {
    /// An HMAC key from configuration. `algorithm` must be HS256/384/512.
    pub fn hmac(kid: String, algorithm: Algorithm, secret: Secret) -> Key {
        Key {
            kid,
            algorithm,
            verifying: Verifying::Hmac(secret),
        }
    }

    /// Checks `signature` over `message` with this key's (pinned) algorithm.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        fn rsa<V: Verifier<S>, S: for<'a> TryFrom<&'a [u8]>>(
            key: &V,
            msg: &[u8],
            sig: &[u8],
        ) -> bool {
            S::try_from(sig).is_ok_and(|sig| key.verify(msg, &sig).is_ok())
        }
        fn hmac<M: Mac + hmac::digest::KeyInit>(secret: &Secret, msg: &[u8], sig: &[u8]) -> bool {
            <M as Mac>::new_from_slice(secret.expose()).is_ok_and(|mut mac| {
                mac.update(msg);
                mac.verify_slice(sig).is_ok() // constant time
            })
        }
        match (&self.verifying, self.algorithm) {
            (Verifying::Rs256(k), _) => rsa::<_, rsa::pkcs1v15::Signature>(k, message, signature),
            (Verifying::Rs384(k), _) => rsa::<_, rsa::pkcs1v15::Signature>(k, message, signature),
            (Verifying::Rs512(k), _) => rsa::<_, rsa::pkcs1v15::Signature>(k, message, signature),
            (Verifying::Ps256(k), _) => rsa::<_, rsa::pss::Signature>(k, message, signature),
            (Verifying::Es256(k), _) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| k.verify(message, &sig).is_ok()),
            #[cfg(feature = "es384")]
            (Verifying::Es384(k), _) => p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| k.verify(message, &sig).is_ok()),
            #[cfg(feature = "eddsa")]
            (Verifying::EdDsa(k), _) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| k.verify_strict(message, &sig).is_ok()),
            (Verifying::Hmac(s), Algorithm::Hs256) => {
                hmac::<SimpleHmac<Sha256>>(s, message, signature)
            }
            (Verifying::Hmac(s), Algorithm::Hs384) => {
                hmac::<SimpleHmac<Sha384>>(s, message, signature)
            }
            (Verifying::Hmac(s), Algorithm::Hs512) => {
                hmac::<SimpleHmac<Sha512>>(s, message, signature)
            }
            (Verifying::Hmac(_), _) => false,
        }
    }
}

#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// Smallest RSA modulus we accept, in bits (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

impl KeySet {
    /// Parses `{"keys": [...]}`. Every problem is reported, prefixed with `at` (where the JWKS is).
    /// Keys that fail are left out; the rest are kept.
    pub fn from_jwks(jwks: &Value, at: &str, problems: &mut Vec<String>) -> KeySet {
        let mut set = KeySet::default();
        let Some(keys) = jwks.get("keys").and_then(Value::as_array) else {
            problems.push(format!("{at}: must be a JWKS object with a \"keys\" array"));
            return set;
        };
        for (i, jwk) in keys.iter().enumerate() {
            let here = format!("{at}.keys[{i}]");
            match parse_jwk(jwk) {
                Ok(key) => set.add(key, &here, problems),
                Err(why) => problems.push(format!("{here}: {why}")),
            }
        }
        set
    }

    pub fn add(&mut self, key: Key, at: &str, problems: &mut Vec<String>) {
        if self.keys.iter().any(|k| k.kid == key.kid) {
            problems.push(format!("{at}: duplicate kid \"{}\"", key.kid));
        } else {
            self.keys.push(key);
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }

    /// With a `kid`, the key of that id; without one, the only key for that algorithm, if exactly one.
    pub fn find(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid == kid),
            None => {
                let mut candidates = self.keys.iter().filter(|k| k.algorithm == algorithm);
                let first = candidates.next()?;
                candidates.next().is_none().then_some(first)
            }
        }
    }
}

fn b64_field(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("\"{name}\" must be a base64url string"))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("\"{name}\" is not unpadded base64url"))
}

fn fixed<const N: usize>(jwk: &Value, name: &str) -> Result<[u8; N], String> {
    b64_field(jwk, name)?
        .try_into()
        .map_err(|_| format!("\"{name}\" must be {N} bytes"))
}

fn parse_jwk(jwk: &Value) -> Result<Key, String> {
    let kid = jwk
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or("\"kid\" must be a non-empty string")?
        .to_string();
    if let Some(usage) = jwk.get("use") {
        if usage.as_str() != Some("sig") {
            return Err("\"use\" must be \"sig\" when present".into());
        }
    }
    let alg = match jwk.get("alg") {
        None => None,
        Some(a) => Some(a.as_str().ok_or("\"alg\" must be a string")?),
    };
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = jwk.get("crv").and_then(Value::as_str);
    let unsupported = |alg: &str| format!("\"alg\" \"{alg}\" is not supported for this key type");
    let (algorithm, verifying) = match kty {
        "RSA" => {
            let n = BigUint::from_bytes_be(&b64_field(jwk, "n")?);
            let e = BigUint::from_bytes_be(&b64_field(jwk, "e")?);
            if n.bits() < MIN_RSA_BITS {
                return Err(format!(
                    "RSA modulus is {} bits, at least {MIN_RSA_BITS} required",
                    n.bits()
                ));
            }
            let public = RsaPublicKey::new(n, e).map_err(|e| format!("bad RSA key: {e}"))?;
            match alg.unwrap_or("RS256") {
                "RS256" => (Algorithm::Rs256, Verifying::Rs256(rsa::pkcs1v15::VerifyingKey::new(public))),
                "RS384" => (Algorithm::Rs384, Verifying::Rs384(rsa::pkcs1v15::VerifyingKey::new(public))),
                "RS512" => (Algorithm::Rs512, Verifying::Rs512(rsa::pkcs1v15::VerifyingKey::new(public))),
                "PS256" => (Algorithm::Ps256, Verifying::Ps256(rsa::pss::VerifyingKey::new(public))),
                other => return Err(unsupported(other)),
            }
        }
        "EC" => match (crv, alg) {
            (Some("P-256"), None | Some("ES256")) => {
                let (x, y) = (fixed::<32>(jwk, "x")?, fixed::<32>(jwk, "y")?);
                let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
                let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| "EC point is not on P-256")?;
                (Algorithm::Es256, Verifying::Es256(key))
            }
            #[cfg(feature = "es384")]
            (Some("P-384"), None | Some("ES384")) => {
                let (x, y) = (fixed::<48>(jwk, "x")?, fixed::<48>(jwk, "y")?);
                let point = p384::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
                let key = p384::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| "EC point is not on P-384")?;
                (Algorithm::Es384, Verifying::Es384(key))
            }
            #[cfg(not(feature = "es384"))]
            (Some("P-384"), None | Some("ES384")) => {
                return Err(NOT_BUILT_IN.replace("{}", "ES384"))
            }
            (Some("P-256" | "P-384"), Some(other)) => return Err(unsupported(other)),
            _ => return Err("EC keys must have \"crv\" \"P-256\" or \"P-384\"".into()),
        },
        "OKP" => match (crv, alg) {
            #[cfg(not(feature = "eddsa"))]
            (Some("Ed25519"), None | Some("EdDSA")) => {
                return Err(NOT_BUILT_IN.replace("{}", "EdDSA"))
            }
            #[cfg(feature = "eddsa")]
            (Some("Ed25519"), None | Some("EdDSA")) => {
                let key = ed25519_dalek::VerifyingKey::from_bytes(&fixed::<32>(jwk, "x")?)
                    .map_err(|_| "\"x\" is not an Ed25519 public key")?;
                if key.is_weak() {
                    return Err("\"x\" is a weak (small-order) Ed25519 key".into());
                }
                (Algorithm::EdDsa, Verifying::EdDsa(key))
            }
            (Some("Ed25519"), Some(other)) => return Err(unsupported(other)),
            _ => return Err("OKP keys must have \"crv\" \"Ed25519\"".into()),
        },
        "oct" => {
            return Err(
                "symmetric keys do not belong in a JWKS; use token.hmac_keys with a secret from the environment"
                    .into(),
            )
        }
        _ => return Err("\"kty\" must be \"RSA\", \"EC\" or \"OKP\"".into()),
    };
    Ok(Key {
        kid,
        algorithm,
        verifying,
    })
}

//! The keys that may sign access tokens, built from an inline JWKS (and an optional HS256 secret).
//!
//! RFC 8725: each key is pinned to exactly one algorithm, so a token cannot pick how it is checked.
//! RSA keys verify RS256 only, P-256 keys ES256 only, and the HMAC secret HS256 only; a public key
//! can never become an HMAC secret because HS256 keys come from a separate, explicit setting.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::VerifyingKey as EcKey;
use rsa::{BigUint, RsaPublicKey};
use serde_json::Value;
use sha2::Sha256;

use crate::secret::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Rs256,
    Es256,
    Hs256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
            Algorithm::Hs256 => "HS256",
        }
    }
}

pub enum KeyMaterial {
    Rsa(rsa::pkcs1v15::VerifyingKey<Sha256>),
    Ec(EcKey),
    Hmac(Secret),
}

pub struct Key {
    pub kid: String,
    pub algorithm: Algorithm,
    pub material: KeyMaterial,
}

#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// Smallest RSA modulus we accept, in bits (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

impl KeySet {
    /// Parses `{"keys": [...]}`. Every problem is reported, prefixed with `at` (the config path).
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
    let alg = jwk.get("alg").map(|a| a.as_str().unwrap_or("?"));
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    match (kty, alg) {
        ("RSA", None | Some("RS256")) => {
            let n = BigUint::from_bytes_be(&b64_field(jwk, "n")?);
            let e = BigUint::from_bytes_be(&b64_field(jwk, "e")?);
            if n.bits() < MIN_RSA_BITS {
                return Err(format!("RSA modulus is {} bits, at least {MIN_RSA_BITS} required", n.bits()));
            }
            let public = RsaPublicKey::new(n, e).map_err(|e| format!("bad RSA key: {e}"))?;
            Ok(Key {
                kid,
                algorithm: Algorithm::Rs256,
                material: KeyMaterial::Rsa(rsa::pkcs1v15::VerifyingKey::new(public)),
            })
        }
        ("EC", None | Some("ES256")) => {
            if jwk.get("crv").and_then(Value::as_str) != Some("P-256") {
                return Err("EC keys must have \"crv\": \"P-256\"".into());
            }
            let coordinate = |name| -> Result<p256::FieldBytes, String> {
                let bytes: [u8; 32] = b64_field(jwk, name)?
                    .try_into()
                    .map_err(|_| format!("P-256 \"{name}\" must be 32 bytes"))?;
                Ok(bytes.into())
            };
            let (x, y) = (coordinate("x")?, coordinate("y")?);
            let point = p256::EncodedPoint::from_affine_coordinates(&x, &y, false);
            let key = EcKey::from_encoded_point(&point).map_err(|_| "EC point is not on P-256")?;
            Ok(Key {
                kid,
                algorithm: Algorithm::Es256,
                material: KeyMaterial::Ec(key),
            })
        }
        ("RSA" | "EC", Some(other)) => Err(format!(
            "\"alg\" \"{other}\" is not supported for kty {kty} (RS256 and ES256 are)"
        )),
        ("oct", _) => Err(
            "symmetric keys do not belong in the JWKS; use token.hs256 with a secret from the environment"
                .into(),
        ),
        _ => Err("\"kty\" must be \"RSA\" or \"EC\"".into()),
    }
}

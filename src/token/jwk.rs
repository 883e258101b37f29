//! The keys that may sign access tokens: JWKS keys (inline or fetched) and configured HMAC secrets.
//!
//! RFC 8725: each key is pinned to exactly one algorithm, so a token cannot choose how it is checked.
//! RSA keys verify one of RS256/RS384/RS512/PS256 (the JWK's `alg`, RS256 when absent), P-256 keys
//! ES256, P-384 keys ES384, Ed25519 keys EdDSA. HMAC secrets come only from the filter's own config,
//! never from a JWKS, so a public key can never become an HMAC secret.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaParameters, VerificationAlgorithm};
use serde_json::Value;

use crate::secret::Secret;
use crate::token::rsa2048;

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

/// A verifier per algorithm, built once when the key is loaded. Public keys are verified with
/// `ring` (BoringSSL's arithmetic, compiled to wasm): in Envoy's V8 it verifies RS256 and ES256 several
/// times faster than the pure-Rust `rsa`/`p256` crates (docs/performance.md has the figures).
enum Verifying {
    /// `n` and `e` as big-endian bytes without leading zeros, as ring wants them; `prepared`
    /// for a 2048-bit key with e = 65537 and a PKCS#1 v1.5 algorithm (`rsa2048`: twice as fast).
    Rsa {
        n: Box<[u8]>,
        e: Box<[u8]>,
        params: &'static RsaParameters,
        prepared: Option<Box<rsa2048::Prepared>>,
    },
    /// An uncompressed SEC1 point (P-256, P-384) or an Ed25519 public key, checked at load.
    Public {
        key: Box<[u8]>,
        algorithm: &'static dyn VerificationAlgorithm,
    },
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
        match &self.verifying {
            Verifying::Rsa {
                prepared: Some(key),
                ..
            } => key.verify(message, signature),
            Verifying::Rsa { n, e, params, .. } => signature::RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok(),
            Verifying::Public { key, algorithm } => {
                signature::UnparsedPublicKey::new(*algorithm, key)
                    .verify(message, signature)
                    .is_ok()
            }
            Verifying::Hmac(secret) => {
                let hmac = match self.algorithm {
                    Algorithm::Hs256 => ring::hmac::HMAC_SHA256,
                    Algorithm::Hs384 => ring::hmac::HMAC_SHA384,
                    Algorithm::Hs512 => ring::hmac::HMAC_SHA512,
                    _ => return false,
                };
                // `verify` compares in constant time.
                ring::hmac::verify(
                    &ring::hmac::Key::new(hmac, secret.expose()),
                    message,
                    signature,
                )
                .is_ok()
            }
        }
    }
}

#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// Smallest RSA modulus we accept, in bits (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;
/// Largest: verification cost grows with the square of the size, so a JWKS cannot make it huge.
/// (ring's own limit is 8192; real issuers publish 2048–4096.)
const MAX_RSA_BITS: usize = 4096;

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

/// An RSA integer as ring takes it: big-endian, without the leading zero bytes some JWKS publish.
fn rsa_integer(jwk: &Value, name: &str) -> Result<Box<[u8]>, String> {
    let bytes = b64_field(jwk, name)?;
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    match bytes.get(start..) {
        Some(rest) if !rest.is_empty() => Ok(rest.into()),
        _ => Err(format!("\"{name}\" must not be zero")),
    }
}

/// The JWK's `x`, `y` as an uncompressed SEC1 point, refused unless it is on the curve. ring checks
/// points only when it uses them and has no separate check, so the point is tried once in an ECDH
/// agreement with a throwaway key: that rejects exactly what ECDSA verification would reject, and a
/// bad key is refused at load with a reason instead of failing every token later.
fn sec1_point<const N: usize>(
    jwk: &Value,
    curve: &'static ring::agreement::Algorithm,
    name: &str,
) -> Result<Box<[u8]>, String> {
    let (x, y) = (fixed::<N>(jwk, "x")?, fixed::<N>(jwk, "y")?);
    let mut point = Vec::with_capacity(1 + 2 * N);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let rng = ring::rand::SystemRandom::new();
    let ours = ring::agreement::EphemeralPrivateKey::generate(curve, &rng)
        .map_err(|_| "no randomness to check the EC point with".to_string())?;
    let peer = ring::agreement::UnparsedPublicKey::new(curve, &point);
    ring::agreement::agree_ephemeral(ours, &peer, |_| ())
        .map_err(|_| format!("EC point is not on {name}"))?;
    Ok(point.into())
}

/// Every 32-byte encoding of one of Ed25519's eight small-order points: the 8 canonical ones, and
/// the 6 non-canonical ones that decode to them (y + p for y = 0 and 1, and x = 0 with the sign bit
/// set). A public key among them lets anyone forge signatures, and ring does not refuse such keys.
/// The unit test checks the list against curve25519-dalek's `EIGHT_TORSION` and `is_small_order`.
const SMALL_ORDER_ED25519: [[u8; 32]; 14] = [
    hex32("0100000000000000000000000000000000000000000000000000000000000000"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    hex32("0000000000000000000000000000000000000000000000000000000000000080"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
    hex32("0000000000000000000000000000000000000000000000000000000000000000"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    hex32("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    hex32("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
    hex32("0100000000000000000000000000000000000000000000000000000000000080"),
    hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
];

/// Hex to bytes, for the table above. Only ever evaluated by the compiler (the table is a
/// `const`), where a bad digit or a short string is a build error, never a runtime panic.
#[allow(clippy::indexing_slicing, clippy::panic)]
const fn hex32(text: &str) -> [u8; 32] {
    const fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lowercase hex digit"),
        }
    }
    let text = text.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = digit(text[2 * i]) << 4 | digit(text[2 * i + 1]);
        i += 1;
    }
    out
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
            let n = rsa_integer(jwk, "n")?;
            let e = rsa_integer(jwk, "e")?;
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA modulus is {bits} bits, at least {MIN_RSA_BITS} required"
                ));
            }
            if bits > MAX_RSA_BITS {
                return Err(format!("RSA modulus is {bits} bits, at most {MAX_RSA_BITS} allowed"));
            }
            if n.last().is_some_and(|b| b & 1 == 0) {
                return Err("bad RSA key: the modulus is even".into());
            }
            // ring's own rule (and rsa's before it): 3 ≤ e < 2³³, odd.
            let e_value = e.iter().try_fold(0u64, |v, b| v.checked_mul(256).map(|v| v | u64::from(*b)));
            if !e_value.is_some_and(|e| (3..1 << 33).contains(&e) && e & 1 == 1) {
                return Err("bad RSA key: the exponent must be odd, at least 3 and below 2^33".into());
            }
            let (algorithm, params, hash) = match alg.unwrap_or("RS256") {
                "RS256" => (Algorithm::Rs256, &signature::RSA_PKCS1_2048_8192_SHA256, Some(rsa2048::SHA256)),
                "RS384" => (Algorithm::Rs384, &signature::RSA_PKCS1_2048_8192_SHA384, Some(rsa2048::SHA384)),
                "RS512" => (Algorithm::Rs512, &signature::RSA_PKCS1_2048_8192_SHA512, Some(rsa2048::SHA512)),
                "PS256" => (Algorithm::Ps256, &signature::RSA_PSS_2048_8192_SHA256, None),
                other => return Err(unsupported(other)),
            };
            // In wasm only: natively ring's assembly is faster (15 µs against 24).
            let prepared = hash
                .filter(|_| cfg!(target_arch = "wasm32"))
                .and_then(|hash| rsa2048::Prepared::new(&n, &e, hash))
                .map(Box::new);
            (algorithm, Verifying::Rsa { n, e, params, prepared })
        }
        "EC" => match (crv, alg) {
            (Some("P-256"), None | Some("ES256")) => {
                let point = sec1_point::<32>(jwk, &ring::agreement::ECDH_P256, "P-256")?;
                let algorithm = &signature::ECDSA_P256_SHA256_FIXED;
                (Algorithm::Es256, Verifying::Public { key: point, algorithm })
            }
            (Some("P-384"), None | Some("ES384")) => {
                let point = sec1_point::<48>(jwk, &ring::agreement::ECDH_P384, "P-384")?;
                let algorithm = &signature::ECDSA_P384_SHA384_FIXED;
                (Algorithm::Es384, Verifying::Public { key: point, algorithm })
            }
            (Some("P-256" | "P-384"), Some(other)) => return Err(unsupported(other)),
            _ => return Err("EC keys must have \"crv\" \"P-256\" or \"P-384\"".into()),
        },
        "OKP" => match (crv, alg) {
            (Some("Ed25519"), None | Some("EdDSA")) => {
                let x = fixed::<32>(jwk, "x")?;
                if SMALL_ORDER_ED25519.contains(&x) {
                    return Err("\"x\" is a weak (small-order) Ed25519 key".into());
                }
                let algorithm = &signature::ED25519;
                (Algorithm::EdDsa, Verifying::Public { key: Box::new(x), algorithm })
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

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use curve25519_dalek::edwards::CompressedEdwardsY;

    #[test]
    fn the_small_order_table_is_exactly_the_encodings_of_the_eight_torsion_points() {
        for point in EIGHT_TORSION {
            assert!(SMALL_ORDER_ED25519.contains(&point.compress().to_bytes()));
        }
        let mut distinct = SMALL_ORDER_ED25519.to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 14);
        for encoding in SMALL_ORDER_ED25519 {
            let point = CompressedEdwardsY(encoding).decompress().unwrap();
            assert!(point.is_small_order(), "{encoding:02x?}");
        }
    }

    fn okp(x: &[u8; 32]) -> Value {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": URL_SAFE_NO_PAD.encode(x)})
    }

    #[test]
    fn every_small_order_ed25519_key_is_refused_and_a_real_one_kept() {
        for encoding in SMALL_ORDER_ED25519 {
            let refused = parse_jwk(&okp(&encoding)).err().unwrap();
            assert_eq!(refused, "\"x\" is a weak (small-order) Ed25519 key");
        }
        let real = crate::testkit::jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kty"] == "OKP")
            .cloned()
            .unwrap();
        assert_eq!(parse_jwk(&real).ok().unwrap().algorithm, Algorithm::EdDsa);
    }

    fn rsa_jwk(n: &[u8], e: &[u8]) -> Value {
        serde_json::json!({"kty": "RSA", "kid": "k",
            "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e)})
    }

    #[test]
    fn rsa_keys_outside_the_bounds_are_refused_with_the_reason() {
        let mut n = vec![0xc5; 256];
        let e = [1, 0, 1];
        let reason = |n: &[u8], e: &[u8]| parse_jwk(&rsa_jwk(n, e)).err().unwrap();
        assert_eq!(
            reason(&n[..255], &e),
            "RSA modulus is 2040 bits, at least 2048 required"
        );
        assert_eq!(
            reason(&[0xc5; 513], &e),
            "RSA modulus is 4104 bits, at most 4096 allowed"
        );
        assert_eq!(reason(&n, &[0]), "\"e\" must not be zero");
        for bad_e in [&[2][..], &[1], &[2, 0, 0, 0, 1], &[1, 0, 0]] {
            assert_eq!(
                reason(&n, bad_e),
                "bad RSA key: the exponent must be odd, at least 3 and below 2^33"
            );
        }
        n[255] = 0xc4;
        assert_eq!(reason(&n, &e), "bad RSA key: the modulus is even");
        // A leading zero byte (some JWKS publish one) is accepted and stripped.
        n[255] = 0xc5;
        let mut padded = vec![0];
        padded.extend_from_slice(&n);
        assert!(parse_jwk(&rsa_jwk(&padded, &e)).is_ok());
    }

    #[test]
    fn an_ec_point_off_the_curve_is_refused_at_load() {
        let mut jwk = crate::testkit::jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["crv"] == "P-256")
            .cloned()
            .unwrap();
        assert_eq!(parse_jwk(&jwk).ok().unwrap().algorithm, Algorithm::Es256);
        let mut y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
        y[31] ^= 1;
        jwk["y"] = URL_SAFE_NO_PAD.encode(&y).into();
        assert_eq!(parse_jwk(&jwk).err().unwrap(), "EC point is not on P-256");
    }
}

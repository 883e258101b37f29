//! Test helpers: a valid configuration and tokens signed with the dev keys in `envoy/dev-keys/`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Mac, SimpleHmac};
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use sha2::{Sha256, Sha384, Sha512};

use crate::config::{self, Config};

pub const HS_SECRET: &str = "a-test-hs256-secret-of-at-least-32-bytes";
pub const MASTER_KEY_B64: &str = "yNndX/Qxq7uAJihwEVB9yzuMdouxMLJlp4HF25eDOQI=";
pub const NOW: u64 = 1_800_000_000;

/// Every asymmetric algorithm, its dev key file and its kid.
pub const ALGORITHMS: [(&str, &str, &str); 7] = [
    ("RS256", "rs256", "dev-rs256"),
    ("RS384", "rs384", "dev-rs384"),
    ("RS512", "rs512", "dev-rs512"),
    ("PS256", "ps256", "dev-ps256"),
    ("ES256", "es256", "dev-es256"),
    ("ES384", "es384", "dev-es384"),
    ("EdDSA", "ed25519", "dev-ed25519"),
];

fn pem(file: &str) -> String {
    let path = format!(
        "{}/envoy/dev-keys/{file}-DEV-ONLY.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The public JWK of a dev key, pinned to `alg`.
pub fn jwk(alg: &str, file: &str, kid: &str) -> Value {
    match alg {
        "RS256" | "RS384" | "RS512" | "PS256" => {
            let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem(file)).expect("rsa key");
            json!({"kty": "RSA", "kid": kid, "alg": alg, "use": "sig",
                   "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())})
        }
        "ES256" => {
            let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&pem(file)).expect("p256 key");
            let point = key.verifying_key().to_encoded_point(false);
            json!({"kty": "EC", "kid": kid, "alg": alg, "crv": "P-256",
                   "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())})
        }
        "ES384" => {
            let key = p384::ecdsa::SigningKey::from_pkcs8_pem(&pem(file)).expect("p384 key");
            let point = key.verifying_key().to_encoded_point(false);
            json!({"kty": "EC", "kid": kid, "alg": alg, "crv": "P-384",
                   "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())})
        }
        "EdDSA" => {
            let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem(file)).expect("ed25519 key");
            json!({"kty": "OKP", "kid": kid, "alg": alg, "crv": "Ed25519",
                   "x": b64(key.verifying_key().as_bytes())})
        }
        other => panic!("no dev key for {other}"),
    }
}

/// The JWKS of all dev keys.
pub fn jwks() -> Value {
    let keys: Vec<Value> = ALGORITHMS
        .iter()
        .map(|(alg, file, kid)| jwk(alg, file, kid))
        .collect();
    json!({ "keys": keys })
}

pub fn config_json() -> Value {
    json!({
        "credential_service": {
            "cluster": "credential_service",
            "authority": "credential-service",
            "auth_header": {"name": "Authorization", "value_env": "CALLOUT_AUTH"}
        },
        "token": {
            "issuer": "https://id.demo.invalid/realms/pace",
            "audiences": ["otp-filter-demo", "other"],
            "jwks": jwks(),
            "hmac_keys": [{"kid": "dev-hs256", "alg": "HS256", "secret_env": "HS_SECRET"}]
        }
    })
}

pub fn env(name: &str) -> Option<String> {
    match name {
        "OTP_MASTER_KEY" => Some(MASTER_KEY_B64.into()),
        "CALLOUT_AUTH" => Some("Bearer callout".into()),
        "HS_SECRET" => Some(HS_SECRET.into()),
        _ => None,
    }
}

pub fn config_from(value: &Value) -> Result<Config, String> {
    config::parse(value.to_string().as_bytes(), &env)
}

pub fn config() -> Config {
    config_from(&config_json()).expect("test config")
}

pub fn claims() -> Value {
    json!({
        "iss": "https://id.demo.invalid/realms/pace",
        "aud": "otp-filter-demo",
        "sub": "demo-user",
        "scope": "openid user:otp:create",
        "iat": NOW - 10,
        "exp": NOW + 3600,
    })
}

/// Signs `claims` with the given header; the key follows `header.alg` (and `file`, for asymmetric).
pub fn sign_with(header: &Value, claims: &Value, file: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let msg = signing_input.as_bytes();
    let rsa_key = || rsa::RsaPrivateKey::from_pkcs8_pem(&pem(file)).expect("rsa key");
    let signature = match header["alg"].as_str() {
        Some("RS256") => rsa::pkcs1v15::SigningKey::<Sha256>::new(rsa_key())
            .sign(msg)
            .to_vec(),
        Some("RS384") => rsa::pkcs1v15::SigningKey::<Sha384>::new(rsa_key())
            .sign(msg)
            .to_vec(),
        Some("RS512") => rsa::pkcs1v15::SigningKey::<Sha512>::new(rsa_key())
            .sign(msg)
            .to_vec(),
        Some("PS256") => rsa::pss::SigningKey::<Sha256>::new(rsa_key())
            .sign_with_rng(&mut rsa::rand_core::OsRng, msg)
            .to_vec(),
        Some("ES256") => {
            let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&pem(file)).expect("p256 key");
            let sig: p256::ecdsa::Signature = key.sign(msg);
            sig.to_bytes().to_vec()
        }
        Some("ES384") => {
            let key = p384::ecdsa::SigningKey::from_pkcs8_pem(&pem(file)).expect("p384 key");
            let sig: p384::ecdsa::Signature = key.sign(msg);
            sig.to_bytes().to_vec()
        }
        Some("EdDSA") => {
            let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem(file)).expect("ed25519 key");
            key.sign(msg).to_bytes().to_vec()
        }
        Some("HS256") => {
            let mut mac =
                <SimpleHmac<Sha256> as Mac>::new_from_slice(HS_SECRET.as_bytes()).expect("hmac");
            mac.update(msg);
            mac.finalize().into_bytes().to_vec()
        }
        _ => Vec::new(),
    };
    format!("{signing_input}.{}", b64(&signature))
}

/// Signs with the dev key that belongs to `header.alg`.
pub fn sign(header: &Value, claims: &Value) -> String {
    let alg = header["alg"].as_str().unwrap_or("");
    let file = ALGORITHMS
        .iter()
        .find(|(a, _, _)| *a == alg)
        .map_or("rs256", |(_, f, _)| f);
    sign_with(header, claims, file)
}

pub fn rs256(claims: &Value) -> String {
    sign(
        &json!({"alg": "RS256", "typ": "JWT", "kid": "dev-rs256"}),
        claims,
    )
}

pub fn es256(claims: &Value) -> String {
    sign(
        &json!({"alg": "ES256", "typ": "JWT", "kid": "dev-es256"}),
        claims,
    )
}

pub fn hs256(claims: &Value) -> String {
    sign(
        &json!({"alg": "HS256", "typ": "JWT", "kid": "dev-hs256"}),
        claims,
    )
}

/// `base` with `changes` merged in; a null in `changes` removes the key.
pub fn merged(base: &Value, changes: &Value) -> Value {
    let mut out = base.clone();
    if let (Some(out), Some(changes)) = (out.as_object_mut(), changes.as_object()) {
        for (k, v) in changes {
            if v.is_null() {
                out.remove(k);
            } else {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

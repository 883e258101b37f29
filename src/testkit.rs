//! Test helpers: a valid configuration and tokens signed with the dev keys in `envoy/dev-keys/`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Mac, SimpleHmac};
use p256::ecdsa::signature::Signer as _;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::SignatureEncoding;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::config::{self, Config};

pub const RSA_PEM: &str = include_str!("../envoy/dev-keys/rs256-DEV-ONLY.pem");
pub const EC_PEM: &str = include_str!("../envoy/dev-keys/es256-DEV-ONLY.pem");
pub const HS_SECRET: &str = "a-test-hs256-secret-of-at-least-32-bytes";
pub const MASTER_KEY_B64: &str = "yNndX/Qxq7uAJihwEVB9yzuMdouxMLJlp4HF25eDOQI=";
pub const NOW: u64 = 1_800_000_000;

/// The JWKS of the dev keys, as in envoy/envoy.yaml.
pub fn jwks() -> Value {
    let yaml = include_str!("../envoy/envoy.yaml");
    let start = yaml.find("\"jwks\": ").map(|i| i + 8).unwrap_or(0);
    let end = yaml[start..]
        .find("]}")
        .map(|i| start + i + 2)
        .unwrap_or(start);
    serde_json::from_str(&yaml[start..end]).expect("jwks in envoy.yaml")
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
            "hs256": {"kid": "dev-hs256", "secret_env": "HS_SECRET"}
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

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs `claims` with the given header; the algorithm follows `header.alg`.
pub fn sign(header: &Value, claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let msg = signing_input.as_bytes();
    let signature = match header["alg"].as_str() {
        Some("RS256") => {
            let key = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PEM).expect("rsa key");
            let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key);
            rsa::signature::Signer::sign(&signer, msg).to_vec()
        }
        Some("ES256") => {
            let key = p256::ecdsa::SigningKey::from_pkcs8_pem(EC_PEM).expect("ec key");
            let sig: p256::ecdsa::Signature = key.sign(msg);
            sig.to_bytes().to_vec()
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

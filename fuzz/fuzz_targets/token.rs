//! Authorization header values through bearer extraction, JWS verification (every algorithm's key
//! is configured) and the claim checks, with and without the verified-token cache.
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use otp_filter::config::{self, Config};
use otp_filter::token::cache::ClaimsCache;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let jwks: serde_json::Value =
            serde_json::from_str(include_str!("../../envoy/dev-keys/jwks.json")).expect("jwks");
        let json = serde_json::json!({
            "credential_service": {"cluster": "c", "authority": "a"},
            "token": {
                "issuer": "https://id.demo.invalid/realms/pace",
                "audiences": ["otp-filter-demo"],
                "jwks": jwks,
                "hmac_keys": [{"kid": "dev-hs256", "alg": "HS256", "secret_env": "HS"}]
            }
        });
        let env = |name: &str| match name {
            "OTP_MASTER_KEY" => Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string()),
            "HS" => Some("a-fuzzing-hs256-secret-of-32-bytes!!".to_string()),
            _ => None,
        };
        config::parse(json.to_string().as_bytes(), &env).expect("fuzz config")
    })
}

fuzz_target!(|data: &[u8]| {
    let header = String::from_utf8_lossy(data);
    let settings = &config().token;
    if let Ok(token) = otp_filter::token::bearer_token(Some(&header)) {
        let _ = otp_filter::token::verify(settings, None, None, token, 1_800_000_000_000);
        let mut cache = ClaimsCache::new(4, Duration::from_secs(60), [7; 16]);
        let _ =
            otp_filter::token::verify(settings, None, Some(&mut cache), token, 1_800_000_000_000);
    }
    // The raw bytes as a token too, past the bearer checks.
    let _ = otp_filter::token::verify_signature(&settings.keys, None, &header);
});

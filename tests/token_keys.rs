//! Token checks end to end: every algorithm, the attacks a gateway must refuse, and the remote JWKS
//! (rotation, the JWKS server down at start and after start).

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use harness::*;
use serde_json::json;

const PIN: &str = r#"{"pin":"8299"}"#;

fn post_with_auth(port: u16, authorization: &str) -> Response {
    send(
        port,
        &request(
            "POST",
            OTP_PATH,
            &[
                ("authorization", authorization),
                ("content-type", "application/json"),
            ],
            Some(PIN),
        ),
    )
}

#[test]
fn every_algorithm_is_accepted_with_its_own_key() {
    let stack = Stack::start();
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
    ] {
        let r = create_otp(stack.envoy.port, &token_with(&["--alg", alg]), PIN);
        assert_eq!(r.status, 201, "{alg}: {}", r.text());
    }
    // HS256 is accepted only when configured: the demo has no HMAC key.
    let hs = token_with(&[
        "--alg",
        "HS256",
        "--secret",
        "a-secret-of-at-least-thirty-two-bytes!",
    ]);
    assert_error(
        &create_otp(stack.envoy.port, &hs, PIN),
        401,
        "token-key-unknown",
    );
}

#[test]
fn attacks_and_malformations_are_refused_with_401() {
    let stack = Stack::start();
    let port = stack.envoy.port;
    let good = token();
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let jwks = std::fs::read_to_string(dev_jwks_file()).unwrap();
    let rsa_n = serde_json::from_str::<serde_json::Value>(&jwks).unwrap()["keys"][0]["n"]
        .as_str()
        .unwrap()
        .to_string();

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                parts[1]
            ),
            "token-signature-invalid",
        ),
        (
            "alg none with the real kid",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": "dev-rs256"})),
                parts[1]
            ),
            "token-signature-invalid",
        ),
        (
            "HS256 keyed with the RSA public key (alg confusion)",
            token_with(&["--alg", "HS256", "--kid", "dev-rs256", "--secret", &rsa_n]),
            "token-signature-invalid",
        ),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&json!({"sub": "admin", "exp": 4102444800u64})),
                parts[2]
            ),
            "token-signature-invalid",
        ),
        (
            "tampered header",
            format!(
                "{}.{}.{}",
                b64(&json!({"alg": "RS256", "kid": "dev-rs256", "x": 1})),
                parts[1],
                parts[2]
            ),
            "token-signature-invalid",
        ),
        (
            "another key under the same kid",
            token_with(&[
                "--key",
                "envoy/dev-keys/rs256-next-DEV-ONLY.pem",
                "--kid",
                "dev-rs256",
            ]),
            "token-signature-invalid",
        ),
        (
            "ES256 alg on an RSA kid",
            token_with(&["--alg", "ES256", "--kid", "dev-rs256"]),
            "token-signature-invalid",
        ),
        ("expired", token_claims(r#"{"exp":1000}"#), "token-expired"),
        (
            "nbf in the future",
            token_claims(r#"{"nbf":4102444800}"#),
            "token-not-yet-valid",
        ),
        (
            "wrong iss",
            token_claims(r#"{"iss":"https://id.evil.invalid/realms/pace"}"#),
            "token-claims-invalid",
        ),
        (
            "wrong aud",
            token_claims(r#"{"aud":["account"]}"#),
            "token-claims-invalid",
        ),
        (
            "missing sub",
            token_claims(r#"{"sub":null}"#),
            "token-claims-invalid",
        ),
        (
            "missing exp",
            token_claims(r#"{"exp":null}"#),
            "token-claims-invalid",
        ),
        (
            "kid with path characters",
            token_with(&["--kid", "../../../etc/passwd"]),
            "token-key-unknown",
        ),
        (
            "token over 8 KiB",
            token_claims(&json!({"pad": "x".repeat(8192)}).to_string()),
            "token-malformed",
        ),
        (
            "bad base64",
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1].replacen('e', "!", 1),
                parts[2]
            ),
            "token-malformed",
        ),
        (
            "padded base64",
            format!("{}.{}=.{}", parts[0], parts[1], parts[2]),
            "token-malformed",
        ),
        (
            "two parts",
            format!("{}.{}", parts[0], parts[1]),
            "token-malformed",
        ),
        ("empty token", String::new(), "token-malformed"),
        (
            "signed payload that is not an object",
            token_with(&["--payload", "[1]"]),
            "token-malformed",
        ),
        (
            "signed payload that is a JSON string",
            token_with(&["--payload", "\"text\""]),
            "token-malformed",
        ),
    ];
    for (name, token, code) in &cases {
        let r = post_with_auth(port, &format!("Bearer {token}"));
        let error = assert_error(&r, 401, code);
        assert!(
            !error.to_string().contains(token.as_str()) || token.is_empty(),
            "{name}: echoed the token"
        );
        assert!(r.header("www-authenticate").is_some(), "{name}");
    }
    assert_error(
        &post_with_auth(port, &format!("Bearer Bearer {good}")),
        401,
        "token-malformed",
    );
    assert_error(
        &post_with_auth(port, &format!("Basic {good}")),
        401,
        "token-missing",
    );
    // The scheme is case-insensitive (RFC 9110 §11.1).
    assert_eq!(post_with_auth(port, &format!("bearer {good}")).status, 201);
    assert_eq!(post_with_auth(port, &format!("BEARER {good}")).status, 201);
    assert_eq!(
        stack.service.stats()["pin_checks"],
        2,
        "no refused token reached the credential service"
    );
}

/// A credential service that publishes `jwks` (a JWKS JSON file it re-reads on every request).
fn service_publishing(jwks: &Path) -> CredentialService {
    CredentialService::start(&["--jwks-file", jwks.to_str().unwrap()])
}

fn jwks_of(specs: &[&str]) -> String {
    token_with(&[&["jwks"], specs].concat())
}

const CURRENT: &str = "RS256:dev-rs256:envoy/dev-keys/rs256-DEV-ONLY.pem";
const NEXT: &str = "RS256:dev-rs256-next:envoy/dev-keys/rs256-next-DEV-ONLY.pem";

fn fast_refetch(config: String) -> String {
    config.replace(
        r#""min_refetch_seconds": 30"#,
        r#""min_refetch_seconds": 1"#,
    )
}

#[test]
fn key_rotation() {
    let dir = std::env::temp_dir().join(format!("otp-filter-rotation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks_of(&[CURRENT])).unwrap();
    let service = service_publishing(&file);
    let envoy = Envoy::start(&demo_config(service.port, fast_refetch));
    envoy.wait_for_keys();
    let old = token();
    let new = token_with(&[
        "--key",
        "envoy/dev-keys/rs256-next-DEV-ONLY.pem",
        "--kid",
        "dev-rs256-next",
    ]);
    assert_created(&create_otp(envoy.port, &old, PIN));
    assert_error(&create_otp(envoy.port, &new, PIN), 401, "token-key-unknown");

    // The IdP publishes the next key: its tokens are accepted once the unknown kid triggers a refetch.
    std::fs::write(&file, jwks_of(&[CURRENT, NEXT])).unwrap();
    wait_for("the new key to be fetched", || {
        create_otp(envoy.port, &new, PIN).status == 201
    });
    assert_created(&create_otp(envoy.port, &old, PIN));

    // The old key is withdrawn: after the next fetch its tokens are refused.
    std::fs::write(&file, jwks_of(&[NEXT])).unwrap();
    let unknown = token_with(&["--kid", "never-published"]);
    wait_for("the old key to be dropped", || {
        create_otp(envoy.port, &unknown, PIN); // an unknown kid asks for a refetch
        create_otp(envoy.port, &old, PIN).status == 401
    });
    assert_error(&create_otp(envoy.port, &old, PIN), 401, "token-key-unknown");
    assert_created(&create_otp(envoy.port, &new, PIN));
}

#[test]
fn unknown_kids_cannot_flood_the_jwks_server() {
    let stack = Stack::start();
    let before = stack.service.stats()["jwks_requests"].as_u64().unwrap();
    for i in 0..50 {
        let t = token_with(&["--kid", &format!("invented-{i}")]);
        assert_error(
            &create_otp(stack.envoy.port, &t, PIN),
            401,
            "token-key-unknown",
        );
    }
    let after = stack.service.stats()["jwks_requests"].as_u64().unwrap();
    // min_refetch_seconds is 30 in the demo config: at most one refetch in this short test.
    assert!(after - before <= 1, "{before} -> {after}");
}

#[test]
fn jwks_down_at_start_fails_closed_then_recovers() {
    let dir = std::env::temp_dir().join(format!("otp-filter-jwks-down-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    let _ = std::fs::remove_file(&file);
    let service = service_publishing(&file); // answers 503 until the file exists
    let envoy = Envoy::start(&demo_config(service.port, |c| c));
    std::thread::sleep(Duration::from_millis(700));
    let r = create_otp(envoy.port, &token(), PIN);
    assert_error(&r, 500, "jwks-unavailable");
    assert_eq!(
        service.stats()["pin_checks"],
        0,
        "fail closed: no check without keys"
    );
    std::fs::write(&file, std::fs::read_to_string(dev_jwks_file()).unwrap()).unwrap();
    wait_for("the keys after the JWKS server came back", || {
        create_otp(envoy.port, &token(), PIN).status == 201
    });
    wait_for("the failure in the log", || {
        envoy.log_text().contains("JWKS fetch failed (status 503)")
    });
}

#[test]
fn jwks_down_after_start_keeps_the_last_good_keys() {
    let dir = std::env::temp_dir().join(format!("otp-filter-jwks-later-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    std::fs::write(&file, std::fs::read_to_string(dev_jwks_file()).unwrap()).unwrap();
    let service = service_publishing(&file);
    let envoy = Envoy::start(&demo_config(service.port, fast_refetch));
    envoy.wait_for_keys();
    std::fs::remove_file(&file).unwrap();
    // Force refetches (which now fail) with unknown kids.
    let unknown = token_with(&["--kid", "never-published"]);
    wait_for("a failed refresh", || {
        create_otp(envoy.port, &unknown, PIN);
        envoy
            .log_text()
            .contains("JWKS fetch failed (status 503); still using")
    });
    assert_created(&create_otp(envoy.port, &token(), PIN));
    assert_created(&create_otp(
        envoy.port,
        &token_with(&["--alg", "EdDSA"]),
        PIN,
    ));
}

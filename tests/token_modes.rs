//! The two token modes beside the filter's own JWS check, end to end: trusting Envoy's jwt_authn
//! (envoy/envoy-jwt-authn.yaml) and RFC 7662 introspection (envoy/envoy-introspection.yaml).

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::TcpListener;
use std::time::Duration;

use harness::*;

const PIN: &str = r#"{"pin":"8299"}"#;

fn bad_accept(port: u16, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    send(
        port,
        &request(
            "POST",
            OTP_PATH,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("accept", "text/html"),
            ],
            Some(PIN),
        ),
    )
}

#[test]
fn jwt_authn_mode_trusts_envoys_verification() {
    let service = CredentialService::start(&[]);
    let envoy = Envoy::start(&config_file(
        "envoy-jwt-authn.yaml",
        service.port,
        service.port,
        |c| c,
    ));
    let port = envoy.port;
    // jwt_authn fetches its JWKS on first use: the first request may wait for it, not fail.
    wait_for("jwt_authn to accept a token", || {
        create_otp(port, &token(), PIN).status == 201
    });

    assert_created(&create_otp(port, &token_with(&["--alg", "EdDSA"]), PIN));
    let no_token = send(
        port,
        &request(
            "POST",
            OTP_PATH,
            &[("content-type", "application/json")],
            Some(PIN),
        ),
    );
    assert_error(&no_token, 401, "token-missing");
    // A token in the query string is no token (`from_headers`: the Authorization header only).
    let in_query = send(
        port,
        &request(
            "POST",
            &format!("{OTP_PATH}?access_token={}", token()),
            &[("content-type", "application/json")],
            Some(PIN),
        ),
    );
    assert_error(&in_query, 401, "token-missing");
    assert_error(
        &create_otp(port, &token_claims(r#"{"exp":1000}"#), PIN),
        401,
        "token-rejected",
    );
    assert_error(
        &create_otp(port, &token_claims(r#"{"aud":"another-api"}"#), PIN),
        401,
        "token-rejected",
    );
    assert_error(
        &create_otp(port, &token_with(&["--kid", "unknown"]), PIN),
        401,
        "token-rejected",
    );
    assert_error(
        &create_otp(port, &token_claims(r#"{"scope":"openid"}"#), PIN),
        403,
        "insufficient-scope",
    );
    assert_error(
        &create_otp(port, &token_claims(r#"{"sub":"unlinked-user"}"#), PIN),
        401,
        "missing-linked-identity",
    );
    // The check order still holds: a good token with a bad Accept is a 406.
    assert_error(&bad_accept(port, &token()), 406, "not-acceptable");
    // The user comes from jwt_authn's payload: codes differ per user.
    let a = assert_created(&create_otp(port, &token(), PIN));
    let b = assert_created(&create_otp(
        port,
        &token_claims(r#"{"sub":"demo-user-2"}"#),
        PIN,
    ));
    if a.1 == b.1 {
        assert_ne!(a.0, b.0);
    }
}

fn introspection_envoy(
    service: &CredentialService,
    endpoint_port: u16,
    edit: impl FnOnce(String) -> String,
) -> Envoy {
    Envoy::start(&config_file(
        "envoy-introspection.yaml",
        service.port,
        endpoint_port,
        edit,
    ))
}

#[test]
fn introspection_mode_accepts_active_tokens_and_caches_them() {
    let service = CredentialService::start(&[]);
    let envoy = introspection_envoy(&service, service.port, |c| c);
    let port = envoy.port;
    let t = token();
    assert_created(&create_otp(port, &t, PIN));
    assert_created(&create_otp(port, &t, PIN));
    assert_error(&bad_accept(port, &t), 406, "not-acceptable");
    assert_eq!(
        service.stats()["introspections"],
        1,
        "positive answers are cached"
    );
    // Another token is introspected on its own.
    assert_created(&create_otp(
        port,
        &token_claims(r#"{"sub":"demo-user-2"}"#),
        PIN,
    ));
    assert_eq!(service.stats()["introspections"], 2);

    // Inactive: expired, or signed by a key the endpoint does not trust.
    assert_error(
        &create_otp(port, &token_claims(r#"{"exp":1000}"#), PIN),
        401,
        "token-inactive",
    );
    assert_error(
        &create_otp(port, &token_with(&["--alg", "ES256"]), PIN),
        401,
        "token-inactive",
    );
    // Inactive answers are not cached.
    let before = service.stats()["introspections"].as_u64().unwrap();
    assert_error(
        &create_otp(port, &token_with(&["--alg", "ES256"]), PIN),
        401,
        "token-inactive",
    );
    assert_eq!(
        service.stats()["introspections"].as_u64().unwrap(),
        before + 1
    );
    // Active, but our own claim checks still apply.
    assert_error(
        &create_otp(port, &token_claims(r#"{"scope":"openid"}"#), PIN),
        403,
        "insufficient-scope",
    );
    assert_error(
        &create_otp(port, &token_claims(r#"{"aud":"another-api"}"#), PIN),
        401,
        "token-claims-invalid",
    );
    // A malformed header never reaches the endpoint.
    let before = service.stats()["introspections"].as_u64().unwrap();
    assert_error(
        &create_otp(port, "not a token", PIN),
        401,
        "token-malformed",
    );
    assert_eq!(service.stats()["introspections"].as_u64().unwrap(), before);
}

#[test]
fn introspection_keeps_the_check_order_while_the_body_arrives() {
    // The endpoint answers after 300 ms: the body is complete long before the token is known.
    let service = CredentialService::start(&["--introspection-delay-ms", "300"]);
    let envoy = introspection_envoy(&service, service.port, |c| c);
    let port = envoy.port;
    assert_created(&create_otp(
        port,
        &token_claims(r#"{"sub":"demo-user"}"#),
        PIN,
    ));
    // Invalid body and a bad token: the token wins.
    assert_error(
        &create_otp(port, &token_claims(r#"{"exp":1000}"#), r#"{"pin":8299}"#),
        401,
        "token-inactive",
    );
    // Good token, invalid body: 422 once the token is known.
    assert_error(
        &create_otp(
            port,
            &token_claims(r#"{"sub":"demo-user-2"}"#),
            r#"{"pin":8299}"#,
        ),
        422,
        "field-invalid",
    );
    // Good token (a fresh one, so not cached), body over the limit while the token was checked: 413.
    let auth = format!("Bearer {}", token_claims(r#"{"iat":1}"#));
    let head = format!("POST {OTP_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n");
    let big = format!("1001\r\n{}\r\n0\r\n\r\n", "x".repeat(0x1001)); // 4097 bytes
    let r = send_parts(
        port,
        &[head.as_bytes(), big.as_bytes()],
        Duration::from_millis(20),
    );
    assert_error(&r, 413, "payload-too-large");
}

#[test]
fn introspection_endpoint_down_or_slow_fails_closed() {
    let service = CredentialService::start(&[]);
    let free_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let envoy = introspection_envoy(&service, free_port, |c| c);
    assert_error(
        &create_otp(envoy.port, &token(), PIN),
        500,
        "introspection-unavailable",
    );
    assert_eq!(service.stats()["pin_checks"], 0);

    let slow = CredentialService::start(&["--introspection-delay-ms", "3000"]);
    let envoy = introspection_envoy(&service, slow.port, |c| {
        c.replace(
            r#""timeout_ms": 2000,
                          "client_id""#,
            r#""timeout_ms": 300,
                          "client_id""#,
        )
    });
    assert_error(
        &create_otp(envoy.port, &token(), PIN),
        500,
        "introspection-timeout",
    );

    // Wrong client secret: the endpoint answers 401, which is our fault, not the user's.
    let envoy = introspection_envoy(&service, service.port, |c| {
        c.replace("dev-only-introspection-secret", "wrong-secret")
    });
    assert_error(
        &create_otp(envoy.port, &token(), PIN),
        500,
        "introspection-error",
    );
    assert_eq!(service.stats()["pin_checks"], 0);
}

#[test]
fn an_introspection_call_that_cannot_be_sent_is_logged_under_its_own_cluster() {
    let service = CredentialService::start(&[]);
    let envoy = introspection_envoy(&service, service.port, |c| {
        let from = r#""cluster": "introspection","#;
        assert!(c.contains(from));
        c.replace(from, r#""cluster": "no-such-cluster","#)
    });
    let e = assert_error(
        &create_otp(envoy.port, &token(), PIN),
        500,
        "internal-error",
    );
    assert_eq!(
        e["detail"],
        "The token introspection call could not be started."
    );
    assert_eq!(service.stats()["introspections"], 0);
    assert_eq!(service.stats()["pin_checks"], 0);
    wait_for("the warning", || {
        envoy
            .log_text()
            .contains(r#"token introspection callout to cluster "no-such-cluster" not sent"#)
    });
    assert!(
        !envoy
            .log_text()
            .contains(r#"to cluster "credential_service" not sent"#),
        "the credential service's cluster is not blamed"
    );
}

//! The credential service failing in every way we can make it fail: each answer is a JSON:API 500
//! with its own code, no code is minted, and Envoy keeps serving.

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

/// Envoy whose credential cluster points at `port`; a real service publishes the token keys.
fn envoy_towards(port: u16, edit: impl FnOnce(String) -> String) -> (Envoy, CredentialService) {
    let keys = CredentialService::start(&[]);
    let envoy = Envoy::start(&demo_config_split(port, keys.port, edit));
    envoy.wait_for_keys();
    (envoy, keys)
}

fn assert_still_serving(envoy: &Envoy) {
    let r = get(envoy.port, "/healthz");
    assert_eq!(r.status, 200);
}

#[test]
fn nothing_listening() {
    let free_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (envoy, _keys) = envoy_towards(free_port, |c| c);
    let r = create_otp(envoy.port, &token(), PIN);
    assert_error(&r, 500, "credential-service-unavailable");
    assert_still_serving(&envoy);
    wait_for("a warning in the log", || {
        envoy
            .log_text()
            .lines()
            .any(|l| l.contains("[warning]") && l.contains("500 credential-service-unavailable"))
    });
}

#[test]
fn stopped_after_start() {
    let mut stack = Stack::start();
    assert_created(&create_otp(stack.envoy.port, &token(), PIN));
    let port = stack.service.port;
    stack.service = CredentialService::start(&[]); // drop the old one: it is killed
    assert_ne!(port, stack.service.port);
    let r = create_otp(stack.envoy.port, &token(), PIN);
    assert_error(&r, 500, "credential-service-unavailable");
}

#[test]
fn too_slow() {
    let stub = Stub::start(
        b"HTTP/1.1 200 OK\r\ncontent-length: 18\r\nconnection: close\r\n\r\n{\"result\":\"valid\"}",
        Duration::from_secs(3),
    );
    let (envoy, _keys) = envoy_towards(stub.port, |c| {
        c.replace(r#""timeout_ms": 2000"#, r#""timeout_ms": 300"#)
    });
    let r = create_otp(envoy.port, &token(), PIN);
    assert_error(&r, 500, "credential-service-timeout");
    assert_still_serving(&envoy);
}

#[test]
fn error_status() {
    let stub = Stub::start(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 18\r\nconnection: close\r\n\r\n{\"result\":\"valid\"}", Duration::ZERO);
    let (envoy, _keys) = envoy_towards(stub.port, |c| c);
    assert_error(
        &create_otp(envoy.port, &token(), PIN),
        500,
        "credential-service-error",
    );
}

#[test]
fn garbage_answer() {
    let stub = Stub::start(
        b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\n<html></ht>",
        Duration::ZERO,
    );
    let (envoy, _keys) = envoy_towards(stub.port, |c| c);
    assert_error(
        &create_otp(envoy.port, &token(), PIN),
        500,
        "credential-service-bad-answer",
    );
}

#[test]
fn enormous_answer() {
    let body = format!(
        "{{\"result\":\"valid\",\"pad\":\"{}\"}}",
        "x".repeat(100_000)
    );
    let raw: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let stub = Stub::start(raw, Duration::ZERO);
    let (envoy, _keys) = envoy_towards(stub.port, |c| c);
    assert_error(
        &create_otp(envoy.port, &token(), PIN),
        500,
        "credential-service-bad-answer",
    );
}

#[test]
fn unknown_cluster_fails_closed() {
    let (envoy, _keys) = envoy_towards(1, |c| {
        c.replace(
            r#""cluster": "credential_service""#,
            r#""cluster": "no_such_cluster""#,
        )
    });
    assert_error(
        &create_otp(envoy.port, &token(), PIN),
        500,
        "internal-error",
    );
    assert_still_serving(&envoy);
}

const CUT: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"result\"";

/// Envoy reports a callout that fails after it started with no response headers at all; reading
/// them then fails. The SDK's getter panicked on that, which trapped the VM: the request hung and
/// every later one on the worker got an empty 503. Now it is "no answer", like a refused connection.
#[test]
fn answer_cut_short_fails_closed_and_envoy_keeps_serving() {
    let port = cut_short(CUT, Duration::ZERO);
    let (envoy, _keys) = envoy_towards(port, |c| c);
    for _ in 0..3 {
        assert_error(
            &create_otp(envoy.port, &token(), PIN),
            500,
            "credential-service-unavailable",
        );
    }
    assert_still_serving(&envoy);
    assert!(!envoy.log_text().contains("panicked"));
    assert_eq!(
        envoy
            .counters()
            .get("otp_filter.outcome.credential_service_unavailable"),
        Some(&3)
    );
}

#[test]
fn answer_stalled_mid_body_times_out() {
    let port = cut_short(CUT, Duration::from_secs(3));
    let (envoy, _keys) = envoy_towards(port, |c| {
        c.replace(r#""timeout_ms": 2000"#, r#""timeout_ms": 300"#)
    });
    assert_error(
        &create_otp(envoy.port, &token(), PIN),
        500,
        "credential-service-timeout",
    );
    assert_error(
        &create_otp(envoy.port, &token(), PIN),
        500,
        "credential-service-timeout",
    );
    assert_still_serving(&envoy);
    assert!(!envoy.log_text().contains("panicked"));
}

/// The same for the JWKS endpoint: no keys yet, so 500 `jwks-unavailable`, and the VM lives.
#[test]
fn jwks_answer_cut_short_fails_closed() {
    let jwks_port = cut_short(
        b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n{\"keys\":[",
        Duration::ZERO,
    );
    let service = CredentialService::start(&[]);
    let envoy = Envoy::start(&demo_config_split(service.port, jwks_port, |c| c));
    wait_for("a failed JWKS fetch in the log", || {
        envoy.log_text().contains("JWKS fetch failed (no answer")
    });
    assert_error(
        &create_otp(envoy.port, &token(), PIN),
        500,
        "jwks-unavailable",
    );
    assert_still_serving(&envoy);
    assert!(!envoy.log_text().contains("panicked"));
}

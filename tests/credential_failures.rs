//! The credential service failing in every way we can make it fail: each answer is a JSON:API 500
//! with its own code, no code is minted, and Envoy keeps serving.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::net::TcpListener;
use std::time::Duration;

use support::*;

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

//! The introspection and JWKS endpoints failing in every way the credential service is made to
//! fail in `credential_failures.rs`: each is a JSON:API 500 with its own code and counter, nothing
//! reaches the credential service (so no code is minted), and Envoy keeps serving.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use harness::*;

const PIN: &str = r#"{"pin":"8299"}"#;

/// A JSON body far over every answer limit (introspection 16 KiB, JWKS 64 KiB).
fn enormous() -> String {
    format!(
        r#"{{"active":true,"keys":[],"pad":"{}"}}"#,
        "x".repeat(100_000)
    )
}

struct Fault {
    name: &'static str,
    /// The endpoint's port (a `Stub`, a `cut_short` peer, or nothing listening).
    port: u16,
    code: &'static str,
}

/// Every way an endpoint fails. "slow" answers after 3 s, past the 300 ms timeout both tests set.
fn faults() -> Vec<Fault> {
    let stub =
        |raw: &'static [u8], delay_ms: u64| Stub::start(raw, Duration::from_millis(delay_ms)).port;
    let nothing = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    vec![
        Fault {
            name: "refused",
            port: nothing,
            code: "unavailable",
        },
        Fault {
            name: "slow",
            port: stub(answer("200 OK", r#"{"active":true}"#), 3000),
            code: "timeout",
        },
        Fault {
            name: "5xx",
            port: stub(answer("500 Internal Server Error", "{}"), 0),
            code: "error",
        },
        Fault {
            name: "garbage",
            port: stub(answer("200 OK", "<html></ht>"), 0),
            code: "bad-answer",
        },
        Fault {
            name: "enormous",
            port: stub(answer("200 OK", &enormous()), 0),
            code: "bad-answer",
        },
        Fault {
            name: "cut short",
            port: cut_short(
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"active\"",
                Duration::ZERO,
            ),
            code: "unavailable",
        },
    ]
}

#[test]
fn introspection_endpoint_faults_fail_closed() {
    let service = CredentialService::start(&[]);
    for fault in faults() {
        let envoy = Envoy::start(&config_file(
            "envoy-introspection.yaml",
            service.port,
            fault.port,
            |c| {
                // The introspection call's timeout (the credential service's stays).
                c.replace(
                    "\"timeout_ms\": 2000,\n                          \"client_id\"",
                    "\"timeout_ms\": 300,\n                          \"client_id\"",
                )
            },
        ));
        let code = format!("introspection-{}", fault.code);
        for _ in 0..2 {
            let r = create_otp(envoy.port, &token(), PIN);
            assert_eq!(r.status, 500, "{}: {}", fault.name, r.text());
            assert_error(&r, 500, &code);
        }
        let counter = format!("otp_filter.outcome.{}", code.replace('-', "_"));
        assert_eq!(
            envoy.counters().get(&counter),
            Some(&2),
            "{}: {counter}",
            fault.name
        );
        assert_eq!(get(envoy.port, "/healthz").status, 200, "{}", fault.name);
        assert!(!envoy.log_text().contains("panicked"), "{}", fault.name);
    }
    assert_eq!(
        service.stats()["pin_checks"],
        0,
        "no token, no credential check"
    );
}

#[test]
fn jwks_endpoint_faults_fail_closed() {
    let service = CredentialService::start(&[]);
    for fault in faults() {
        let envoy = Envoy::start(&demo_config_split(service.port, fault.port, |c| {
            c.replace(r#""timeout_ms": 2000"#, r#""timeout_ms": 300"#)
        }));
        wait_for(
            "a failed JWKS fetch, counted and logged with its reason",
            || {
                envoy
                    .counters()
                    .get("otp_filter.jwks.fetch_failed")
                    .copied()
                    .unwrap_or(0)
                    >= 1
                    && envoy.log_text().contains("JWKS fetch failed (")
            },
        );
        // No key set: every token is refused with 500, never checked against nothing.
        assert_error(
            &create_otp(envoy.port, &token(), PIN),
            500,
            "jwks-unavailable",
        );
        assert!(envoy.counters()["otp_filter.outcome.jwks_unavailable"] >= 1);
        assert_eq!(
            envoy.counters().get("otp_filter.jwks.fetch_ok"),
            Some(&0),
            "{}",
            fault.name
        );
        assert_eq!(get(envoy.port, "/healthz").status, 200, "{}", fault.name);
        assert!(!envoy.log_text().contains("panicked"), "{}", fault.name);
    }
    assert_eq!(
        service.stats()["pin_checks"],
        0,
        "no key set, no credential check"
    );
}

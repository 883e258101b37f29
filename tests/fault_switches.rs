//! What no healthy Envoy can be made to do on demand, through the TEST-ONLY crash build's
//! switches (`x-otp-filter-crash`, see the adapter; `make build-crash-test`): a clock that cannot
//! be read, and a single-use bucket that another writer corrupted.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::thread;
use std::time::Duration;

use harness::*;

const PIN: &str = r#"{"pin":"8299"}"#;
const VERIFY_PATH: &str = "/user/2022-1/user/otp/verify";
const SWITCH: &str = "x-otp-filter-crash";

fn both_scopes() -> String {
    token_claims(r#"{"scope":"openid user:otp:create user:otp:verify"}"#)
}

fn verify(port: u16, token: &str, code: &str, switch: Option<&str>) -> Response {
    let auth = format!("Bearer {token}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(value) = switch {
        headers.push((SWITCH, value));
    }
    let body = format!(r#"{{"otp":"{code}"}}"#);
    send(port, &request("POST", VERIFY_PATH, &headers, Some(&body)))
}

fn create_with_switch(port: u16, token: &str, switch: &str) -> Response {
    let auth = format!("Bearer {token}");
    send(
        port,
        &request(
            "POST",
            OTP_PATH,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                (SWITCH, switch),
            ],
            Some(PIN),
        ),
    )
}

#[test]
fn a_clock_that_cannot_be_read_fails_closed() {
    let service = CredentialService::start(&[]);
    let echo = Echo::start();
    // 1 s steps, so that a second code comes quickly; this Envoy decides single use, so a header
    // gate passes at the headers with no callout (with the authority deciding, its answer comes
    // in a later callback, which fails closed without a clock like every other).
    let envoy = Envoy::start(&demo_config(service.port, |c| {
        let c = c
            .replace(r#""step_seconds": 60"#, r#""step_seconds": 1"#)
            .replace(r#""decided_by": "authority""#, r#""decided_by": "envoy""#);
        with_gated_upstream(with_crash_wasm(c), echo.port)
    }));
    envoy.wait_for_keys();
    let port = envoy.port;
    let t = both_scopes();

    // No clock from the start, or from the body on: 500, and nobody is asked about the PIN.
    for switch in ["clock", "clock-after-headers"] {
        let r = create_with_switch(port, &t, switch);
        let e = assert_error(&r, 500, "clock-unavailable");
        assert_eq!(
            e["detail"], "The proxy's clock could not be read.",
            "{switch}"
        );
        assert_eq!(service.stats()["pin_checks"], 0, "{switch}");
    }
    // A code is never judged (nor used up) without the time.
    let (code, _) = assert_created(&create_otp(port, &t, PIN));
    assert_error(
        &verify(port, &t, &code, Some("clock-after-headers")),
        500,
        "clock-unavailable",
    );
    assert_eq!(
        verify(port, &t, &code, None).status,
        204,
        "the code was not used up"
    );
    // Routes the filter does not serve need no clock.
    let r = send(
        port,
        &request(
            "GET",
            "/user/2021-2/user/profile",
            &[(SWITCH, "clock")],
            None,
        ),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-demo-upstream"), Some("user-api"));
    // A header gate decided at the headers; its body then flows without the clock.
    let (code, _) = loop {
        let (c, e) = assert_created(&create_otp(port, &t, PIN));
        if c != code {
            break (c, e);
        }
        thread::sleep(Duration::from_millis(100));
    };
    let auth = format!("Bearer {t}");
    let body = r#"{"reason":"closing"}"#;
    let r = send(
        port,
        &request(
            "DELETE",
            "/user/2021-2/user",
            &[
                ("authorization", &auth),
                ("x-otp", &code),
                ("content-type", "application/json"),
                (SWITCH, "clock-after-headers"),
            ],
            Some(body),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().ends_with(body));
    assert_eq!(echo.requests(), 1);
    assert_eq!(envoy.counters()["otp_filter.outcome.clock_unavailable"], 3);
}

#[test]
fn a_corrupt_single_use_bucket_is_fenced_counted_and_logged() {
    let service = CredentialService::start(&[]);
    // One bucket, so the switch corrupts exactly the bucket every code lands in; 1 s steps and
    // 3 s codes, so the fence is over quickly.
    let envoy = Envoy::start(&demo_config(service.port, |c| {
        let c = c
            .replace(r#""step_seconds": 60"#, r#""step_seconds": 1"#)
            .replace(r#""lifetime_seconds": 300"#, r#""lifetime_seconds": 3"#)
            .replace(
                r#""single_use": { "max_entries": 100000 }"#,
                r#""single_use": { "max_entries": 100000, "buckets": 1 }"#,
            );
        assert!(c.contains(r#""buckets": 1"#));
        with_crash_wasm(c)
    }));
    envoy.wait_for_keys();
    let port = envoy.port;
    let t = both_scopes();
    let fenced = |e: &Envoy| e.counters()["otp_filter.state.single_use_corrupt_fenced"];

    let (used, _) = assert_created(&create_otp(port, &t, PIN));
    assert_eq!(verify(port, &t, &used, None).status, 204);
    assert_eq!(fenced(&envoy), 0);
    let r = send(
        port,
        &request(
            "GET",
            "/user/2021-2/user/profile",
            &[(SWITCH, "corrupt-ledger")],
            None,
        ),
    );
    assert_eq!(r.status, 404);

    // The used code's record is gone with the corruption: it must not become replayable.
    assert_error(&verify(port, &t, &used, None), 404, "otp-not-valid");
    assert_eq!(fenced(&envoy), 1);
    wait_for("the warning", || {
        envoy
            .log_text()
            .contains("1 corrupt single-use bucket(s) found and fenced")
    });
    assert_error(&verify(port, &t, &used, None), 404, "otp-not-valid");
    assert_eq!(fenced(&envoy), 1, "the fence is set once");

    // A code minted once the fence's step is over is accepted, once.
    thread::sleep(Duration::from_millis(1100));
    let (fresh, _) = assert_created(&create_otp(port, &t, PIN));
    assert_ne!(fresh, used);
    assert_eq!(verify(port, &t, &fresh, None).status, 204);
    assert_error(&verify(port, &t, &fresh, None), 404, "otp-not-valid");
    assert_eq!(fenced(&envoy), 1);
}

//! OTP gates end to end, as a table: each gate kind (code in a JSON body field, code in a header)
//! × a request with and without a body × each token mode, in front of a real upstream that reads
//! every body. A gate that lets the headers through must let the body through too: a paused body
//! would hang the request, which a `direct_response` stand-in (answering without reading) hides.

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
use serde_json::json;

const PIN: &str = r#"{"pin":"8299"}"#;

/// Where a row puts the code.
#[derive(Clone, Copy, Debug)]
enum Code {
    /// In the JSON body, at the gate's pointer.
    InBody,
    /// In the `x-otp` header (the body, if any, is another JSON document).
    InHeader,
    /// Nowhere.
    Missing,
}

struct Row {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    code: Code,
    /// Whether the request carries a body.
    body: bool,
    /// 200: forwarded (and the code used up); 403: refused with `otp:invalid`.
    status: u16,
}

const ROWS: [Row; 8] = [
    Row {
        name: "PIN change, code in the body",
        method: "PUT",
        path: "/user/2021-2/user/pin",
        code: Code::InBody,
        body: true,
        status: 200,
    },
    Row {
        name: "PIN change without a body",
        method: "PUT",
        path: "/user/2021-2/user/pin",
        code: Code::Missing,
        body: false,
        status: 403,
    },
    Row {
        name: "PIN change, code only in a header",
        method: "PUT",
        path: "/user/2021-2/user/pin",
        code: Code::InHeader,
        body: true,
        status: 403,
    },
    Row {
        name: "payment (prefix gate), code in the body",
        method: "POST",
        path: "/pay/2021-2/transactions/42/authorize",
        code: Code::InBody,
        body: true,
        status: 200,
    },
    Row {
        name: "deletion, code in the header, no body",
        method: "DELETE",
        path: "/user/2021-2/user",
        code: Code::InHeader,
        body: false,
        status: 200,
    },
    Row {
        name: "deletion, code in the header, with a body",
        method: "DELETE",
        path: "/user/2021-2/user",
        code: Code::InHeader,
        body: true,
        status: 200,
    },
    Row {
        name: "deletion with a body but no header",
        method: "DELETE",
        path: "/user/2021-2/user",
        code: Code::InBody,
        body: true,
        status: 403,
    },
    Row {
        name: "deletion without a code",
        method: "DELETE",
        path: "/user/2021-2/user",
        code: Code::Missing,
        body: false,
        status: 403,
    },
];

/// A body for `path` with `code` at the gate's pointer (or no code).
fn body_for(path: &str, code: Option<&str>) -> String {
    let otp = code.map_or(json!(null), |c| json!(c));
    if path.starts_with("/pay/") {
        json!({"data": {"type": "paymentAuthorization", "attributes": {"twoFactor": {"method": "pin", "otp": otp}}}})
    } else if path.ends_with("/pin") {
        json!({"data": {"type": "pin", "attributes": {"pin": "4711", "otp": otp}}})
    } else {
        json!({"data": {"type": "user", "attributes": {"otp": otp, "reason": "closing"}}})
    }
    .to_string()
}

/// Mints until the code is one not handed out before (codes are per user and 1 s step).
fn fresh_code(port: u16, token: &str, used: &mut Vec<String>) -> String {
    for _ in 0..40 {
        let (code, _) = assert_created(&create_otp(port, token, PIN));
        if !used.contains(&code) {
            used.push(code.clone());
            return code;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("no new code within 4 s");
}

fn run_rows(mode: &str) {
    let service = CredentialService::start(&[]);
    let echo = Echo::start();
    let envoy = mode_envoy(mode, &service, |c| {
        let c = c
            .replace(r#""step_seconds": 60"#, r#""step_seconds": 1"#)
            .replace(r#""lifetime_seconds": 300"#, r#""lifetime_seconds": 30"#);
        with_gated_upstream(c, echo.port)
    });
    let port = envoy.port;
    let t = token();
    let auth = format!("Bearer {t}");
    let mut used = Vec::new();
    for row in &ROWS {
        let what = format!("{mode}: {}", row.name);
        let code = fresh_code(port, &t, &mut used);
        let body_code = matches!(row.code, Code::InBody).then_some(code.as_str());
        let body = row.body.then(|| body_for(row.path, body_code));
        let mut headers = vec![("authorization", auth.as_str())];
        if row.body {
            headers.push(("content-type", "application/json"));
        }
        if let Code::InHeader = row.code {
            headers.push(("x-otp", code.as_str()));
        }
        let raw = request(row.method, row.path, &headers, body.as_deref());
        let before = echo.requests();
        let r = send(port, &raw);
        if row.status == 403 {
            assert_error(&r, 403, "otp:invalid");
            assert_eq!(
                echo.requests(),
                before,
                "{what}: nothing reached the upstream"
            );
            continue;
        }
        assert_eq!(r.status, row.status, "{what}: {}", r.text());
        assert_eq!(r.header("x-echo"), Some("yes"), "{what}");
        assert_eq!(
            echo.requests(),
            before + 1,
            "{what}: the upstream read it once"
        );
        let echoed = r.text();
        assert!(
            echoed.starts_with(&format!("{} {} HTTP/1.1", row.method, row.path)),
            "{what}: {echoed}"
        );
        if let Some(body) = &body {
            assert!(
                echoed.ends_with(body.as_str()),
                "{what}: the body went through unchanged: {echoed}"
            );
        }
        // The same request again: the code was used up.
        assert_error(&send(port, &raw), 403, "otp:invalid");
        assert_eq!(
            echo.requests(),
            before + 1,
            "{what}: a replay never reaches the upstream"
        );
    }
    let counters = envoy.counters();
    let passed = ROWS.iter().filter(|r| r.status == 200).count() as u64;
    assert_eq!(counters["otp_filter.outcome.gate_passed"], passed, "{mode}");
    let refused = ROWS.len() as u64 - passed;
    assert_eq!(
        counters["otp_filter.outcome.otp_invalid"],
        passed + refused,
        "{mode}: every replay, and every row without a valid code"
    );
}

#[test]
fn gates_in_jwt_mode() {
    run_rows(TOKEN_MODES[0]);
}

#[test]
fn gates_in_jwt_authn_mode() {
    run_rows(TOKEN_MODES[1]);
}

#[test]
fn gates_in_introspection_mode() {
    run_rows(TOKEN_MODES[2]);
}

//! The Create OTP contract, end to end: real Envoy, the release `.wasm`, the reference credential
//! service. Each test owns its processes, so counts at the service belong to that test alone.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use harness::*;
use serde_json::json;

const PASSWORD: &str = "correct-horse-battery-staple";

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// RFC 3339 with milliseconds back to Unix milliseconds (UTC only, as we emit).
fn parse_rfc3339_ms(s: &str) -> u128 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (y, m) = if m <= 2 { (y - 1, m + 12) } else { (y, m) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * (m - 3) + 2) / 5 + d - 719_469;
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    (secs * 1000 + n(20..23)) as u128
}

#[test]
fn the_documented_curl_mints_an_otp() {
    let stack = Stack::start();
    let before = now_ms();
    let response = create_otp(stack.envoy.port, &token(), r#"{"pin":"8299"}"#);
    let (_, expires) = assert_created(&response);
    let expires_ms = parse_rfc3339_ms(&expires);
    // Default step 60 s, lifetime 300 s: the code lives between 240 and 300 s.
    assert!(
        expires_ms >= before + 240_000 && expires_ms <= now_ms() + 300_000,
        "{expires}"
    );
    assert_eq!(
        expires_ms % 60_000,
        0,
        "expiry is a step boundary: {expires}"
    );
    let stats = stack.service.stats();
    assert_eq!(
        (
            &stats["password_checks"],
            &stats["pin_checks"],
            &stats["requests"]
        ),
        (&json!(0), &json!(1), &json!(1)),
        "{stats}"
    );
}

#[test]
fn password_is_checked_first_then_the_pin() {
    let stack = Stack::start();
    let port = stack.envoy.port;
    let checks = |s: &Stack| {
        let st = s.service.stats();
        (
            st["password_checks"].as_u64().unwrap(),
            st["pin_checks"].as_u64().unwrap(),
        )
    };
    let t = token();
    assert_created(&create_otp(
        port,
        &t,
        &json!({"password": PASSWORD}).to_string(),
    ));
    assert_eq!(checks(&stack), (1, 0));
    // A valid password ends it: the (wrong) PIN is never sent.
    assert_created(&create_otp(
        port,
        &t,
        &json!({"password": PASSWORD, "pin": "0000"}).to_string(),
    ));
    assert_eq!(checks(&stack), (2, 0));
    assert_created(&create_otp(
        port,
        &t,
        r#"{"password":"wrong","pin":"8299"}"#,
    ));
    assert_eq!(checks(&stack), (3, 1));
    let r = create_otp(port, &t, r#"{"password":"wrong","pin":"0000"}"#);
    assert_error(&r, 404, "invalid-credentials");
    assert_eq!(checks(&stack), (4, 2));
}

#[test]
fn every_documented_answer() {
    let stack = Stack::start();
    let port = stack.envoy.port;
    let t = token();
    let auth = format!("Bearer {t}");
    let post = |headers: &[(&str, &str)], body: &str| {
        send(port, &request("POST", OTP_PATH, headers, Some(body)))
    };
    let pin = r#"{"pin":"8299"}"#;

    // 404: wrong PIN; unknown user.
    assert_error(
        &create_otp(port, &t, r#"{"pin":"0000"}"#),
        404,
        "invalid-credentials",
    );
    let nobody = token_claims(r#"{"sub":"nobody"}"#);
    assert_error(&create_otp(port, &nobody, pin), 404, "user-not-found");

    // 401 missing-linked-identity, exactly as documented.
    let unlinked = token_claims(r#"{"sub":"unlinked-user"}"#);
    let error = assert_error(
        &create_otp(port, &unlinked, pin),
        401,
        "missing-linked-identity",
    );
    assert_eq!(
        error["title"],
        "Missing linked identity for authorized access"
    );
    assert_eq!(
        error["detail"],
        "Linked identity is needed to access this resource, please check why the user does not have a linked identity"
    );

    // 401: every way a token can be missing or wrong.
    let r = post(&[("content-type", "application/json")], pin);
    assert_error(&r, 401, "token-missing");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"otp\""));
    assert_error(
        &post(
            &[
                ("authorization", "Basic ZGVtbzpkZW1v"),
                ("content-type", "application/json"),
            ],
            pin,
        ),
        401,
        "token-missing",
    );
    assert_error(
        &post(
            &[
                ("authorization", "Bearer not-a-jwt"),
                ("content-type", "application/json"),
            ],
            pin,
        ),
        401,
        "token-malformed",
    );
    let r = create_otp(port, &token_claims(r#"{"exp":1}"#), pin);
    assert_error(&r, 401, "token-expired");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"otp\", error=\"invalid_token\"")
    );
    let future = (now_ms() / 1000 + 3600).to_string();
    assert_error(
        &create_otp(port, &token_claims(&format!(r#"{{"nbf":{future}}}"#)), pin),
        401,
        "token-not-yet-valid",
    );
    assert_error(
        &create_otp(
            port,
            &token_claims(r#"{"iss":"https://evil.invalid"}"#),
            pin,
        ),
        401,
        "token-claims-invalid",
    );
    assert_error(
        &create_otp(port, &token_claims(r#"{"aud":"another-api"}"#), pin),
        401,
        "token-claims-invalid",
    );
    assert_error(
        &create_otp(port, &token_claims(r#"{"sub":null}"#), pin),
        401,
        "token-claims-invalid",
    );
    assert_error(
        &create_otp(port, &token_with(&["--kid", "rotated-away"]), pin),
        401,
        "token-key-unknown",
    );
    let parts: Vec<&str> = t.split('.').collect();
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_error(
        &create_otp(port, &unsigned, pin),
        401,
        "token-signature-invalid",
    );
    let forged_claims = URL_SAFE_NO_PAD.encode(
        json!({"iss":"https://id.demo.invalid/realms/pace","aud":"otp-filter-demo","sub":"someone-else","scope":"user:otp:create","exp":4102444800u64}).to_string(),
    );
    let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert_error(
        &create_otp(port, &tampered, pin),
        401,
        "token-signature-invalid",
    );
    let hs_confusion = token_with(&[
        "--alg",
        "HS256",
        "--kid",
        "dev-rs256",
        "--secret",
        "anything-at-all",
    ]);
    assert_error(
        &create_otp(port, &hs_confusion, pin),
        401,
        "token-signature-invalid",
    );

    // 403: a valid token without the scope.
    let r = create_otp(port, &token_claims(r#"{"scope":"openid profile"}"#), pin);
    assert_error(&r, 403, "insufficient-scope");

    // ES256 tokens are accepted as well.
    assert_created(&create_otp(port, &token_with(&["--alg", "ES256"]), pin));

    // 406, 415, 413.
    let json_ct = ("content-type", "application/json");
    assert_error(
        &post(
            &[("authorization", &auth), json_ct, ("accept", "text/html")],
            pin,
        ),
        406,
        "not-acceptable",
    );
    assert_error(
        &post(
            &[("authorization", &auth), ("content-type", "text/plain")],
            pin,
        ),
        415,
        "unsupported-media-type",
    );
    assert_error(
        &post(&[("authorization", &auth)], pin),
        415,
        "unsupported-media-type",
    );
    let big = format!(r#"{{"pin":"{}"}}"#, "1".repeat(5000));
    assert_error(
        &post(&[("authorization", &auth), json_ct], &big),
        413,
        "payload-too-large",
    );

    // 422, each pointing at what is wrong.
    let e = assert_error(
        &create_otp(port, &t, r#"{"pin":8299}"#),
        422,
        "field-invalid",
    );
    assert_eq!(e["source"], json!({"pointer": "/pin"}));
    let e = assert_error(
        &create_otp(port, &t, r#"{"password":""}"#),
        422,
        "field-invalid",
    );
    assert_eq!(e["source"], json!({"pointer": "/password"}));
    let e = assert_error(
        &create_otp(port, &t, r#"{"pin":"8299""#),
        422,
        "body-not-json",
    );
    assert_eq!(e["source"], json!({"pointer": ""}));
    assert_error(&create_otp(port, &t, "{}"), 422, "credentials-missing");
    assert_error(&create_otp(port, &t, r#"["8299"]"#), 422, "body-invalid");
    assert_error(
        &post(&[("authorization", &auth), json_ct], ""),
        422,
        "body-not-json",
    );

    // 405 with Allow.
    let r = send(
        port,
        &request("GET", OTP_PATH, &[("authorization", &auth)], None),
    );
    assert_error(&r, 405, "method-not-allowed");
    assert_eq!(r.header("allow"), Some("POST"));

    // First failure wins: no token and a bad Accept is a 401, not a 406.
    assert_error(
        &post(
            &[("accept", "text/html"), ("content-type", "text/plain")],
            pin,
        ),
        401,
        "token-missing",
    );

    // Every version in the default list is served.
    for version in ["2021-2", "2022-1", "2024-1", "2024-2", "2025-1"] {
        let path = format!("/user/{version}/user/otp");
        let r = send(
            port,
            &request(
                "POST",
                &path,
                &[("authorization", &auth), json_ct],
                Some(pin),
            ),
        );
        assert_created(&r);
    }
}

#[test]
fn request_id_is_echoed_when_valid_and_made_otherwise() {
    let stack = Stack::start();
    let port = stack.envoy.port;
    let body = r#"{"pin":"8299"}"#;
    let r = send(
        port,
        &request(
            "POST",
            OTP_PATH,
            &[
                ("request-id", "cbgmhslmp1o9or9kh1p0"),
                ("content-type", "application/json"),
            ],
            Some(body),
        ),
    );
    let e = assert_error(&r, 401, "token-missing");
    assert_eq!(e["id"], "cbgmhslmp1o9or9kh1p0");
    let auth = format!("Bearer {}", token());
    let r = send(
        port,
        &request(
            "POST",
            OTP_PATH,
            &[
                ("request-id", "cbgmhslmp1o9or9kh1p0"),
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some(body),
        ),
    );
    assert_created(&r);
    assert_eq!(r.header("request-id"), Some("cbgmhslmp1o9or9kh1p0"));
    for bad in [
        "hello",
        "CBGMHSLMP1O9OR9KH1P0",
        "cbgmhslmp1o9or9kh1p0x",
        "<script>",
    ] {
        let r = send(
            port,
            &request("POST", OTP_PATH, &[("request-id", bad)], Some(body)),
        );
        let e = assert_error(&r, 401, "token-missing");
        assert_ne!(e["id"], bad);
    }
    let a = assert_error(
        &send(port, &request("POST", OTP_PATH, &[], Some(body))),
        401,
        "token-missing",
    );
    let b = assert_error(
        &send(port, &request("POST", OTP_PATH, &[], Some(body))),
        401,
        "token-missing",
    );
    assert_ne!(a["id"], b["id"]);
}

#[test]
fn other_paths_pass_through_untouched() {
    let stack = Stack::start();
    let port = stack.envoy.port;
    let auth = format!("Bearer {}", token());
    for (method, path) in [
        ("GET", "/user/2021-2/user/profile"),
        ("POST", "/user/1999-1/user/otp"),
        ("POST", "/user/2021-2/user/otp/verify/extra"),
        ("POST", "/user/2021-2/user/otp/"),
    ] {
        let r = send(
            port,
            &request(
                method,
                path,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                Some(r#"{"pin":"8299"}"#),
            ),
        );
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(
            r.header("x-demo-upstream"),
            Some("user-api"),
            "{method} {path}: reached the route"
        );
        assert!(
            r.header("request-id").is_none(),
            "{method} {path}: the filter did not answer"
        );
    }
    let r = get(port, "/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    assert_eq!(stack.service.stats()["requests"], 0);
}

#[test]
fn codes_depend_on_time_step_and_user() {
    let service = CredentialService::start(&[]);
    let config = demo_config(service.port, |c| {
        c.replace(r#""step_seconds": 60"#, r#""step_seconds": 1"#)
            .replace(r#""lifetime_seconds": 300"#, r#""lifetime_seconds": 2"#)
    });
    let envoy = Envoy::start(&config);
    envoy.wait_for_keys();
    let port = envoy.port;
    let pin = r#"{"pin":"8299"}"#;
    let t = token();
    // Same step (same expiresAt) → same code; retry until two requests land in one step.
    let mut same_step = false;
    for _ in 0..10 {
        let (a, ea) = assert_created(&create_otp(port, &t, pin));
        let (b, eb) = assert_created(&create_otp(port, &t, pin));
        if ea == eb {
            assert_eq!(a, b, "same user, same step");
            same_step = true;
            break;
        }
    }
    assert!(same_step, "never got two requests into one 1 s step");
    let (a, ea) = assert_created(&create_otp(port, &t, pin));
    std::thread::sleep(Duration::from_millis(1100));
    let (b, eb) = assert_created(&create_otp(port, &t, pin));
    assert_ne!(ea, eb);
    assert_ne!(a, b, "different steps give different codes");
    // Another user in the same step gets another code.
    let other = token_claims(r#"{"sub":"demo-user-2"}"#);
    for _ in 0..10 {
        let (a, ea) = assert_created(&create_otp(port, &t, pin));
        let (b, eb) = assert_created(&create_otp(port, &other, pin));
        if ea == eb {
            assert_ne!(a, b, "different users, same step");
            return;
        }
    }
    panic!("never got two users into one step");
}

#[test]
fn bodies_in_chunks_and_pieces() {
    let stack = Stack::start();
    let port = stack.envoy.port;
    let auth = format!("Bearer {}", token());
    let head = |framing: &str| {
        format!("POST {OTP_PATH} HTTP/1.1\r\nhost: localhost\r\nauthorization: {auth}\r\ncontent-type: application/json\r\n{framing}\r\n\r\n")
    };
    // Chunked transfer encoding, two chunks arriving 100 ms apart.
    let r = send_parts(
        port,
        &[
            head("transfer-encoding: chunked").as_bytes(),
            b"5\r\n{\"pin\r\n",
            b"9\r\n\":\"8299\"}\r\n0\r\n\r\n",
        ],
        Duration::from_millis(100),
    );
    assert_created(&r);
    // A content-length body written in three pieces.
    let r = send_parts(
        port,
        &[
            head("content-length: 14").as_bytes(),
            b"{\"pi",
            b"n\":\"82",
            b"99\"}",
        ],
        Duration::from_millis(100),
    );
    assert_created(&r);
    // A chunked body that grows past the limit is refused while it arrives.
    let chunk = format!("800\r\n{}\r\n", "x".repeat(0x800));
    let r = send_parts(
        port,
        &[
            head("transfer-encoding: chunked").as_bytes(),
            chunk.as_bytes(),
            chunk.as_bytes(),
            chunk.as_bytes(),
        ],
        Duration::from_millis(50),
    );
    assert_error(&r, 413, "payload-too-large");
    assert_eq!(stack.service.stats()["pin_checks"], 2);
}

#[test]
fn http2_cleartext() {
    let stack = Stack::start();
    let url = format!("http://127.0.0.1:{}{OTP_PATH}", stack.envoy.port);
    let curl = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-D",
                "-",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                r#"{"pin":"8299"}"#,
            ])
            .args(extra)
            .arg(&url)
            .output()
            .expect("curl (install it: apt-get install curl)");
        format!(
            "{}\n(curl {}: {})",
            String::from_utf8_lossy(&out.stdout),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let ok = curl(&["-H", &format!("authorization: Bearer {}", token())]);
    assert!(ok.starts_with("HTTP/2 201"), "{ok}");
    assert!(ok.contains("\"otp\":\""), "{ok}");
    // The filter answers errors once the request body has ended, so the h2 stream ends cleanly
    // (an answer sent while the client is still sending ends in a reset, which curl reports as
    // error 92).
    let denied = curl(&[]);
    assert!(denied.starts_with("HTTP/2 401"), "{denied}");
    assert!(denied.contains("\"code\":\"token-missing\""), "{denied}");
}

#[test]
fn a_locked_user_gets_429_and_the_service_is_not_asked_twice() {
    let service = CredentialService::start(&["--max-failures", "3", "--lockout-seconds", "120"]);
    let envoy = Envoy::start(&demo_config(service.port, |c| c));
    envoy.wait_for_keys();
    let t = token();
    for _ in 0..3 {
        assert_error(
            &create_otp(envoy.port, &t, r#"{"pin":"0000"}"#),
            404,
            "invalid-credentials",
        );
    }
    for body in [r#"{"pin":"0000"}"#, r#"{"pin":"8299"}"#] {
        let r = create_otp(envoy.port, &t, body);
        assert_error(&r, 429, "too-many-attempts");
        let retry: u64 = r
            .header("retry-after")
            .expect("retry-after")
            .parse()
            .unwrap();
        assert!((1..=120).contains(&retry), "{retry}");
    }
    // Locked at the password check: the PIN is not sent.
    let before = service.stats()["pin_checks"].clone();
    assert_error(
        &create_otp(
            envoy.port,
            &t,
            &json!({"password": "x", "pin": "8299"}).to_string(),
        ),
        429,
        "too-many-attempts",
    );
    assert_eq!(service.stats()["pin_checks"], before);
}

#[test]
fn no_secret_reaches_the_log() {
    let stack = Stack::start();
    let port = stack.envoy.port;
    let t = token();
    let mut codes = Vec::new();
    codes.push(
        assert_created(&create_otp(
            port,
            &t,
            &json!({"password": PASSWORD}).to_string(),
        ))
        .0,
    );
    codes.push(
        assert_created(&create_otp(
            port,
            &t,
            r#"{"password":"wrong-password-123","pin":"8299"}"#,
        ))
        .0,
    );
    assert_error(
        &create_otp(port, &t, r#"{"pin":"0000"}"#),
        404,
        "invalid-credentials",
    );
    assert_error(
        &create_otp(port, &token_claims(r#"{"exp":1}"#), r#"{"pin":"8299"}"#),
        401,
        "token-expired",
    );
    // The four decisions, logged at debug, prove the log at that level is what we scan.
    wait_for("the decisions in the log", || {
        stack
            .envoy
            .log_text()
            .matches("otp-filter request-id=")
            .count()
            >= 4
    });
    let log = stack.envoy.log_text();
    let config = std::fs::read_to_string(root().join("envoy/envoy.yaml")).unwrap();
    let master_key = config
        .split("OTP_MASTER_KEY: \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    let mut secrets = vec![
        PASSWORD,
        "wrong-password-123",
        t.as_str(),
        master_key,
        "dev-only-credential-secret",
    ];
    secrets.extend(codes.iter().map(String::as_str));
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "the log contains a secret ({} chars)",
            secret.len()
        );
    }
    for pin in ["8299", "0000"] {
        let bounded = log.match_indices(pin).any(|(i, _)| {
            let before = log[..i]
                .chars()
                .last()
                .is_none_or(|c| !c.is_ascii_alphanumeric());
            let after = log[i + 4..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_ascii_alphanumeric());
            before && after
        });
        assert!(!bounded, "the log contains the PIN {pin}");
    }
}

#[test]
fn errors_keep_the_connection_open() {
    let stack = Stack::start();
    let mut conn = Conn::open(stack.envoy.port);
    let body = r#"{"pin":"8299"}"#;
    // A 401 with a body in flight, then a 406 and a 201 on the same HTTP/1.1 connection.
    let r = conn.exchange(&request(
        "POST",
        OTP_PATH,
        &[("content-type", "application/json")],
        Some(body),
    ));
    assert_error(&r, 401, "token-missing");
    assert_eq!(
        r.header("connection"),
        None,
        "no connection: close after an error"
    );
    let auth = format!("Bearer {}", token());
    let r = conn.exchange(&request(
        "POST",
        OTP_PATH,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("accept", "text/html"),
        ],
        Some(body),
    ));
    assert_error(&r, 406, "not-acceptable");
    let r = conn.exchange(&request(
        "POST",
        OTP_PATH,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Some(body),
    ));
    assert_created(&r);
}

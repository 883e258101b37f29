//! The OTP as a real one-time password, end to end: verify, single use across workers, expiry,
//! the per-user throttle, OTP gates in front of upstream routes, and master key rotation.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::*;
use serde_json::json;

const PIN: &str = r#"{"pin":"8299"}"#;
const VERIFY_PATH: &str = "/user/2022-1/user/otp/verify";

/// A token that may both create and verify codes.
fn both_scopes(sub: &str) -> String {
    token_claims(
        &json!({"sub": sub, "scope": "openid user:otp:create user:otp:verify"}).to_string(),
    )
}

fn mint(port: u16, token: &str) -> (String, String) {
    assert_created(&create_otp(port, token, PIN))
}

fn verify(port: u16, token: &str, code: &str) -> Response {
    let auth = format!("Bearer {token}");
    let body = json!({"otp": code, "types": ["account"]}).to_string();
    send(
        port,
        &request(
            "POST",
            VERIFY_PATH,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some(&body),
        ),
    )
}

fn assert_verified(r: &Response) {
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    assert!(is_xid(r.header("request-id").unwrap_or("")));
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[test]
fn a_code_verifies_once_for_its_user_only() {
    let stack = Stack::start();
    let port = stack.envoy.port;
    let t = both_scopes("demo-user");
    let (code, _) = mint(port, &t);
    assert_verified(&verify(port, &t, &code));
    assert_error(&verify(port, &t, &code), 404, "otp-not-valid");

    // Another user's code is not valid for this user (and is still unused for its owner).
    let other = both_scopes("demo-user-2");
    let (theirs, _) = mint(port, &other);
    assert_error(&verify(port, &t, &theirs), 404, "otp-not-valid");
    assert_verified(&verify(port, &other, &theirs));

    // The same rules as the create route before the code is looked at.
    let create_only = token();
    assert_error(
        &verify(port, &create_only, &code),
        403,
        "insufficient-scope",
    );
    let e = assert_error(&verify(port, &t, "12ab56"), 404, "otp-not-valid");
    assert!(!e.to_string().contains("12ab56"));
    let auth = format!("Bearer {t}");
    let bad = |body: &str| {
        send(
            port,
            &request(
                "POST",
                VERIFY_PATH,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                Some(body),
            ),
        )
    };
    let e = assert_error(&bad(r#"{"otp":123456}"#), 422, "field-invalid");
    assert_eq!(e["source"]["pointer"], "/otp");
    let e = assert_error(
        &bad(r#"{"otp":"123456","types":["account","card"]}"#),
        422,
        "field-invalid",
    );
    assert_eq!(e["source"]["pointer"], "/types/1");
    assert_error(&bad(r#"{"otp":"123456""#), 422, "body-not-json");
    let r = send(
        port,
        &request("GET", VERIFY_PATH, &[("authorization", &auth)], None),
    );
    assert_error(&r, 405, "method-not-allowed");
    let r = send(
        port,
        &request(
            "POST",
            VERIFY_PATH,
            &[("authorization", &auth), ("content-type", "text/plain")],
            Some("{}"),
        ),
    );
    assert_error(&r, 415, "unsupported-media-type");
}

#[test]
fn a_code_expires_at_expires_at() {
    let service = CredentialService::start(&[]);
    let config = demo_config(service.port, |c| {
        c.replace(r#""step_seconds": 60"#, r#""step_seconds": 1"#)
            .replace(r#""lifetime_seconds": 300"#, r#""lifetime_seconds": 2"#)
    });
    let envoy = Envoy::start(&config);
    envoy.wait_for_keys();
    let t = both_scopes("demo-user");
    let (code, expires) = mint(envoy.port, &t);
    let (_, later_expires) = mint(envoy.port, &t);
    // Sleep until the first code's expiresAt has passed.
    let expires_ms = {
        let n = |r: std::ops::Range<usize>| expires[r].parse::<u128>().unwrap();
        let secs_of_day = n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
        let now = now_ms();
        let day_start = now - now % 86_400_000;
        day_start + secs_of_day * 1000 + n(20..23)
    };
    let wait = expires_ms.saturating_sub(now_ms()) + 50;
    thread::sleep(Duration::from_millis(wait as u64));
    if later_expires == expires {
        assert_error(&verify(envoy.port, &t, &code), 404, "otp-not-valid");
    } else {
        // The two codes straddled a step: the second one is still valid, the first is not.
        let r = verify(envoy.port, &t, &code);
        assert!(r.status == 404 || r.status == 204, "{}", r.text());
    }
    // A fresh code verifies, so the refusal above was expiry, not something else.
    let (fresh, _) = mint(envoy.port, &t);
    assert_verified(&verify(envoy.port, &t, &fresh));
}

#[test]
fn fifty_parallel_verifies_of_one_code_give_exactly_one_204() {
    let service = CredentialService::start(&[]);
    // Two workers, two VMs: single use must hold across them. The 49 refused attempts per round
    // count against the user's throttle; it is raised here so this test sees single use alone.
    // 1 s steps: each round needs a fresh code (the same step gives the same, used, code).
    let config = demo_config(service.port, |c| {
        c.replace(r#""max_failures": 5"#, r#""max_failures": 100"#)
            .replace(r#""step_seconds": 60"#, r#""step_seconds": 1"#)
            .replace(r#""lifetime_seconds": 300"#, r#""lifetime_seconds": 30"#)
    });
    let envoy = Envoy::start_with_workers(&config, 2);
    envoy.wait_for_keys();
    let t = Arc::new(both_scopes("demo-user"));
    let mut previous = String::new();
    for round in 0..3 {
        let code = next_code(envoy.port, &t, &previous);
        previous = code.clone();
        let code = Arc::new(code);
        let ok = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let (t, code, ok, refused) = (t.clone(), code.clone(), ok.clone(), refused.clone());
                let port = envoy.port;
                thread::spawn(move || match verify(port, &t, &code).status {
                    204 => ok.fetch_add(1, Ordering::SeqCst),
                    404 => refused.fetch_add(1, Ordering::SeqCst),
                    other => panic!("unexpected {other}"),
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(
            (ok.load(Ordering::SeqCst), refused.load(Ordering::SeqCst)),
            (1, 49),
            "round {round}"
        );
    }
}

#[test]
fn ten_thousand_wrong_pins_reach_the_service_five_times() {
    // The service's own lockout is set out of reach, so what is counted is the filter's throttle.
    let service = CredentialService::start(&["--max-failures", "100000"]);
    // The load starves the service's argon2 of CPU: give its callouts time.
    let config = demo_config(service.port, |c| {
        c.replace(r#""timeout_ms": 2000"#, r#""timeout_ms": 20000"#)
    });
    let envoy = Envoy::start_with_workers(&config, 2);
    envoy.wait_for_keys();
    let t = Arc::new(token());
    let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        u16,
        usize,
    >::new()));
    let retry_after_ok = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let (t, statuses, retry_after_ok) =
                (t.clone(), statuses.clone(), retry_after_ok.clone());
            let port = envoy.port;
            thread::spawn(move || {
                let mut conn = Conn::open(port);
                let auth = format!("Bearer {t}");
                for n in 0..500 {
                    let pin = format!("{{\"pin\":\"{:04}\"}}", (i * 500 + n) % 10_000);
                    let r = conn.exchange(&request(
                        "POST",
                        OTP_PATH,
                        &[
                            ("authorization", &auth),
                            ("content-type", "application/json"),
                        ],
                        Some(&pin),
                    ));
                    if r.status == 429 {
                        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                        if (1..=3600).contains(&retry) {
                            retry_after_ok.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    *statuses.lock().unwrap().entry(r.status).or_default() += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    let pin_checks = service.stats()["pin_checks"].as_u64().unwrap();
    assert!(
        pin_checks <= 5,
        "{pin_checks} checks reached the service; statuses {statuses:?}"
    );
    // Every request was either throttled (429) or one of the at most 5 that were checked (404).
    let refused = statuses.get(&404).copied().unwrap_or(0);
    assert_eq!(refused as u64, pin_checks, "{statuses:?}");
    assert_eq!(
        statuses.get(&429).copied().unwrap_or(0),
        10_000 - refused,
        "{statuses:?}"
    );
    assert_eq!(retry_after_ok.load(Ordering::SeqCst), 10_000 - refused);
    // The right PIN is locked out as well: the throttle is per user, not per guess.
    assert_error(
        &create_otp(envoy.port, &token(), PIN),
        429,
        "too-many-attempts",
    );
    // Another user is not affected.
    assert_created(&create_otp(
        envoy.port,
        &token_claims(r#"{"sub":"demo-user-2"}"#),
        PIN,
    ));
}

/// Codes are bound to the user and the time step, so a second code for the same user needs the
/// next step: mint until the code differs from `previous` (the gate test uses 1 s steps).
fn next_code(port: u16, token: &str, previous: &str) -> String {
    for _ in 0..30 {
        let (code, _) = mint(port, token);
        if code != previous {
            return code;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("no new code within 3 s");
}

/// Routes the demo's gated paths to an echo upstream, to see exactly what went through, with 1 s
/// time steps so a test can get several codes quickly.
fn gated_config(service_port: u16, echo_port: u16) -> String {
    demo_config(service_port, |c| {
        let c = c
            .replace(r#""step_seconds": 60"#, r#""step_seconds": 1"#)
            .replace(r#""lifetime_seconds": 300"#, r#""lifetime_seconds": 30"#);
        with_gated_upstream(c, echo_port)
    })
}

#[test]
fn gates_forward_with_a_valid_code_once_and_refuse_without() {
    let service = CredentialService::start(&[]);
    let echo = Echo::start();
    let envoy = Envoy::start(&gated_config(service.port, echo.port));
    envoy.wait_for_keys();
    let port = envoy.port;
    let t = token();
    let auth = format!("Bearer {t}");
    let (code, _) = mint(port, &t);

    // PIN change with the code in the body: forwarded unchanged.
    let body =
        json!({"data": {"type": "pin", "attributes": {"pin": "4711", "otp": code}}}).to_string();
    let put = |body: &str| {
        send(
            port,
            &request(
                "PUT",
                "/user/2021-2/user/pin",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/vnd.api+json"),
                ],
                Some(body),
            ),
        )
    };
    let r = put(&body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-echo"), Some("yes"));
    assert!(
        r.text().ends_with(&body),
        "the body reached the upstream unchanged: {}",
        r.text()
    );
    assert!(r.text().contains(&format!("authorization: Bearer {t}")));
    // The same code again: used up.
    let e = assert_error(&put(&body), 403, "otp:invalid");
    assert_eq!(e["title"], "Invalid one-time password");
    // No code, a wrong code, a body that is not JSON.
    assert_error(
        &put(r#"{"data":{"attributes":{"pin":"4711"}}}"#),
        403,
        "otp:invalid",
    );
    assert_error(
        &put(r#"{"data":{"attributes":{"otp":"000000"}}}"#),
        403,
        "otp:invalid",
    );
    assert_error(&put("not json"), 403, "otp:invalid");
    // No token: 401 before anything else.
    let r = send(
        port,
        &request(
            "PUT",
            "/user/2021-2/user/pin",
            &[("content-type", "application/json")],
            Some(&body),
        ),
    );
    assert_error(&r, 401, "token-missing");

    // Payment authorization (prefix gate) with twoFactor.otp.
    let code = next_code(port, &t, &code);
    let body = json!({"data": {"type": "paymentAuthorization", "attributes": {"twoFactor": {"method": "pin", "otp": code}}}}).to_string();
    let r = send(
        port,
        &request(
            "POST",
            "/pay/2021-2/transactions/42/authorize",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some(&body),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .text()
        .starts_with("POST /pay/2021-2/transactions/42/authorize HTTP/1.1"));

    // Header gate.
    let code = next_code(port, &t, &code);
    let delete = |code: &str| {
        send(
            port,
            &request(
                "DELETE",
                "/user/2021-2/user",
                &[("authorization", &auth), ("x-otp", code)],
                None,
            ),
        )
    };
    let r = delete(&code);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_error(&delete(&code), 403, "otp:invalid");
    let r = send(
        port,
        &request(
            "DELETE",
            "/user/2021-2/user",
            &[("authorization", &auth)],
            None,
        ),
    );
    assert_error(&r, 403, "otp:invalid");
    // Other methods on gated paths are not gated.
    let r = send(port, &request("GET", "/user/2021-2/user/pin", &[], None));
    assert_eq!(r.status, 200);
}

#[test]
fn master_key_rotation_round_trip() {
    let service = CredentialService::start(&[]);
    let keys = |list: &str, active: &str| {
        let list = list.to_string();
        let active = active.to_string();
        move |c: String| {
            let entries: Vec<String> = list
                .split(',')
                .map(|id| format!(r#"{{"id": "{id}", "key_env": "KEY_{id}"}}"#))
                .collect();
            c.replace(
                r#""master_key_env": "OTP_MASTER_KEY","#,
                &format!(r#""master_keys": [{}], "active_key": "{active}","#, entries.join(", ")),
            )
            .replace(
                "                      OTP_MASTER_KEY:",
                "                      KEY_k1: \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n                      KEY_k2: \"ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=\"\n                      OTP_MASTER_KEY:",
            )
        }
    };
    let t = both_scopes("demo-user");
    let start = |config: String| {
        let envoy = Envoy::start(&config);
        envoy.wait_for_keys();
        envoy
    };
    let envoy = start(demo_config(service.port, keys("k1", "k1")));
    let (old, _) = mint(envoy.port, &t);
    drop(envoy);
    // k2 becomes active; k1 still verifies.
    let envoy = start(demo_config(service.port, keys("k2,k1", "k2")));
    let (new, _) = mint(envoy.port, &t);
    assert_ne!(new, old);
    assert_verified(&verify(envoy.port, &t, &old));
    assert_verified(&verify(envoy.port, &t, &new));
    drop(envoy);
    // k1 removed: its codes are refused (a new Envoy has a fresh single-use ledger, so this is the
    // missing key speaking, not the earlier use).
    let envoy = start(demo_config(service.port, keys("k2", "k2")));
    assert_error(&verify(envoy.port, &t, &old), 404, "otp-not-valid");
}

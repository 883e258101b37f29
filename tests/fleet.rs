//! One-time use and guess limits across a fleet: three Envoy processes (each its own shared data,
//! as every replica in production), two credential-service replicas on one real PostgreSQL (the
//! one-time-use authority), and the same master key everywhere. The shipped `envoy/envoy.yaml`
//! decides single use at the authority; a code accepted on one Envoy must be refused on every
//! other, and wrong guesses spread over the fleet must meet one budget.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use harness::*;
use serde_json::json;

const PIN: &str = r#"{"pin":"8299"}"#;
const VERIFY_PATH: &str = "/user/2022-1/user/otp/verify";
/// The fleet-wide budget: consecutive failures the authority allows before it locks.
const FLEET_MAX_FAILURES: u64 = 8;

/// Three Envoys (one worker each) in front of two replicas on one PostgreSQL, with the budget
/// above, 1 s steps so tests get fresh codes quickly, and the per-Envoy throttle raised to its
/// maximum (100) so that only the fleet-wide budget is met. (Every refused replay is a failed
/// attempt for the local throttle of the Envoy that refused it.)
fn fleet() -> Fleet {
    let budget = FLEET_MAX_FAILURES.to_string();
    Fleet::start(3, 1, 2, &["--max-failures", &budget], |c| {
        c.replace(r#""step_seconds": 60"#, r#""step_seconds": 1"#)
            .replace(r#""lifetime_seconds": 300"#, r#""lifetime_seconds": 30"#)
            .replace(r#""max_failures": 5,"#, r#""max_failures": 100,"#)
    })
}

fn both_scopes() -> String {
    token_claims(r#"{"scope":"openid user:otp:create user:otp:verify"}"#)
}

/// A verify request for `code`, with `token`.
fn verify_request(token: &str, code: &str) -> Vec<u8> {
    let auth = format!("Bearer {token}");
    let body = json!({ "otp": code }).to_string();
    request(
        "POST",
        VERIFY_PATH,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Some(&body),
    )
}

fn verify(port: u16, token: &str, code: &str) -> Response {
    send(port, &verify_request(token, code))
}

/// A code not handed out before: minting waits for the next 1 s step when it must.
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

/// `n` requests at once, spread over the fleet's Envoys; their statuses.
fn race(fleet: &Fleet, n: usize, raw: impl Fn() -> Vec<u8> + Sync) -> Vec<u16> {
    let barrier = Arc::new(Barrier::new(n));
    thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let port = fleet.port(i);
                let barrier = Arc::clone(&barrier);
                let raw = &raw;
                scope.spawn(move || {
                    let bytes = raw();
                    barrier.wait();
                    send(port, &bytes).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_code_is_accepted_once_fleet_wide() {
    let fleet = fleet();
    let t = both_scopes();
    let mut used = Vec::new();
    let code = fresh_code(fleet.port(0), &t, &mut used);
    assert_eq!(
        verify(fleet.port(1), &t, &code).status,
        204,
        "minted on A, verified on B"
    );
    assert_error(&verify(fleet.port(2), &t, &code), 404, "otp-not-valid");
    assert_error(&verify(fleet.port(0), &t, &code), 404, "otp-not-valid");
    assert_eq!(
        fleet.service_total("consumes"),
        3,
        "C and A asked the authority; B's was the first"
    );

    // 60 parallel verifies of one code over A, B and C: exactly one 204, five times over.
    // The rounds alternate the two demo users, so no local throttle sees 100 refusals of one.
    let t2 =
        token_claims(r#"{"sub":"demo-user-2","scope":"openid user:otp:create user:otp:verify"}"#);
    for round in 0..5 {
        let t = if round % 2 == 0 { &t } else { &t2 };
        let code = fresh_code(fleet.port(round), t, &mut used);
        let statuses = race(&fleet, 60, || verify_request(t, &code));
        let accepted = statuses.iter().filter(|s| **s == 204).count();
        let refused = statuses.iter().filter(|s| **s == 404).count();
        assert_eq!((accepted, refused), (1, 59), "round {round}: {statuses:?}");
    }

    // The same race through a body gate: the upstream sees the request exactly once.
    let code = fresh_code(fleet.port(0), &t, &mut used);
    let before = fleet.echo.requests();
    let statuses = race(&fleet, 30, || {
        let auth = format!("Bearer {t}");
        let body = json!({"data": {"type": "pin", "attributes": {"pin": "4711", "otp": code}}})
            .to_string();
        request(
            "PUT",
            "/user/2021-2/user/pin",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some(&body),
        )
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        29,
        "{statuses:?}"
    );
    assert_eq!(fleet.echo.requests(), before + 1);
}

#[test]
fn wrong_guesses_over_the_fleet_meet_one_budget() {
    let fleet = fleet();
    let t = both_scopes();
    // Wrong PINs and wrong codes, alternated over A, B and C, one at a time.
    let mut answers = Vec::new();
    for i in 0..(FLEET_MAX_FAILURES as usize + 6) {
        let r = if i % 2 == 0 {
            create_otp(fleet.port(i), &t, r#"{"pin":"0000"}"#)
        } else {
            verify(fleet.port(i), &t, "000000")
        };
        answers.push(r.status);
    }
    // The FLEET_MAX_FAILURES-th wrong guess spends the budget; it is a reported code (odd
    // index), and a report that spends it is answered `locked` at once.
    let first_429 = answers.iter().position(|s| *s == 429).expect("a 429");
    assert_eq!(
        first_429 as u64,
        FLEET_MAX_FAILURES - 1,
        "the budget is fleet-wide, not per Envoy: {answers:?}"
    );
    assert!(
        answers[..first_429].iter().all(|s| *s == 404),
        "{answers:?}"
    );
    assert!(
        answers[first_429..].iter().all(|s| *s == 429),
        "{answers:?}"
    );
    // At the store: exactly the budget was counted, and only the PINs before the lock were
    // checked (argon2); the guesses after it were answered `locked` unchecked.
    let failures = fleet.pg.count(
        "otp_fleet",
        "SELECT failures FROM attempts WHERE user_id = 'demo-user'",
    );
    assert_eq!(failures, Some(FLEET_MAX_FAILURES), "counted at the store");
    let checked: u64 = fleet
        .services
        .iter()
        .map(|s| {
            s.metric(
                "credential_service_checks_total",
                &[r#"kind="pin""#, r#"result="invalid""#],
            )
        })
        .sum();
    let reported: u64 = fleet
        .services
        .iter()
        .map(|s| {
            s.metric(
                "credential_service_otp_failures_total",
                &[r#"result="counted""#],
            )
        })
        .sum();
    assert_eq!(
        checked,
        FLEET_MAX_FAILURES / 2,
        "PINs checked before the lock"
    );
    assert!(checked <= FLEET_MAX_FAILURES);
    assert_eq!(
        checked + reported + 1,
        FLEET_MAX_FAILURES,
        "the last report was answered locked"
    );
}

#[test]
fn no_code_is_accepted_while_the_store_is_down() {
    let mut fleet = fleet();
    let t = both_scopes();
    let mut used = Vec::new();
    let code = fresh_code(fleet.port(0), &t, &mut used);
    let gate = |port: u16, code: &str| {
        let auth = format!("Bearer {t}");
        let body = json!({"data": {"type": "pin", "attributes": {"otp": code}}}).to_string();
        send(
            port,
            &request(
                "PUT",
                "/user/2021-2/user/pin",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                Some(&body),
            ),
        )
    };
    fleet.pg.stop();
    // The replicas answer 503 while their store is down: unavailable, as Envoy's own 503 is.
    let e = assert_error(
        &verify(fleet.port(1), &t, &code),
        500,
        "otp-authority-unavailable",
    );
    assert_eq!(e["title"], "Internal server error");
    let before = fleet.echo.requests();
    assert_error(
        &gate(fleet.port(2), &code),
        500,
        "otp-authority-unavailable",
    );
    assert_eq!(fleet.echo.requests(), before, "no gate opened");
    fleet.pg.restart();
    // A code not yet used is accepted once; the one tried while the store was down was burnt
    // on the Envoys that tried it, and stays refused there.
    let fresh = fresh_code(fleet.port(0), &t, &mut used);
    assert_eq!(verify(fleet.port(0), &t, &fresh).status, 204);
    assert_error(&verify(fleet.port(1), &t, &fresh), 404, "otp-not-valid");
    assert_error(&verify(fleet.port(1), &t, &code), 404, "otp-not-valid");
}

#[test]
fn a_replica_killed_mid_race_never_allows_two_successes() {
    let mut fleet = fleet();
    let t = both_scopes();
    let mut used = Vec::new();
    let code = fresh_code(fleet.port(0), &t, &mut used);
    let killer = {
        let victim = fleet.services.remove(1);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(5));
            drop(victim);
        })
    };
    let statuses = race(&fleet, 60, || verify_request(&t, &code));
    killer.join().unwrap();
    let accepted = statuses.iter().filter(|s| **s == 204).count();
    assert!(accepted <= 1, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [204, 404, 500].contains(s)),
        "every answer is a ruling or a fail-closed 500: {statuses:?}"
    );
}

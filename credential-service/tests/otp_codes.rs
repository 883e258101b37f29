//! The fleet-wide authority for one-time codes: consumed once, used until expiry, purged after;
//! wrong codes in the same budget as wrong secrets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

const CONSUMED: &str = r#"{"result":"consumed"}"#;
const USED: &str = r#"{"result":"used"}"#;

// 60 consumes of one (user, key, step) at once, spread over two replicas on one store.
on_both_engines!(exactly_one_consume_across_replicas, |db: &Db| {
    let a = db.start(&[], &[]);
    let b = db.start(&["--no-seed"], &[]);
    let ports = [a.port, b.port];
    let expires = now_ms() + 120_000;
    let answers = parallel(60, move |i| {
        consume(ports[i % 2], "demo-user", "key-2026", 29_123_456, expires)
    });
    assert_eq!(
        answers.iter().filter(|a| *a == CONSUMED).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| *a == USED).count(),
        59,
        "{answers:?}"
    );
    // Another step, another key or another user is another code.
    assert_eq!(
        consume(a.port, "demo-user", "key-2026", 29_123_457, expires),
        CONSUMED
    );
    assert_eq!(
        consume(b.port, "demo-user", "key-2025", 29_123_456, expires),
        CONSUMED
    );
    assert_eq!(
        consume(a.port, "demo-user-2", "key-2026", 29_123_456, expires),
        CONSUMED
    );
    let consumes =
        a.stats()["consumes"].as_u64().unwrap() + b.stats()["consumes"].as_u64().unwrap();
    assert_eq!(consumes, 63);
});

on_both_engines!(used_until_expiry_then_purged, |db: &Db| {
    let svc = db.start(&["--purge-interval-seconds", "1"], &[]);
    let expires = now_ms() + 1_500;
    assert_eq!(consume(svc.port, "demo-user", "k", 7, expires), CONSUMED);
    assert_eq!(consume(svc.port, "demo-user", "k", 7, expires), USED);
    let (rt, store) = db.store();
    assert_eq!(rt.block_on(store.code_rows("demo-user")).unwrap(), 1);
    harness::wait_for("the purge", || {
        rt.block_on(store.code_rows("demo-user")).unwrap() == 0
    });
    assert!(now_ms() >= expires);
});

on_both_engines!(wrong_codes_share_the_budget, |db: &Db| {
    let svc = db.start(&["--max-failures", "3", "--lockout-seconds", "120"], &[]);
    let port = svc.port;
    assert_eq!(verify(port, "demo-user", "pin", "0000"), INVALID);
    assert_eq!(failure(port, "demo-user"), r#"{"result":"counted"}"#);
    // The failure that reaches the limit answers locked; so does every call after it.
    assert_eq!(
        failure(port, "demo-user"),
        r#"{"result":"locked","retryAfterSeconds":120}"#
    );
    assert!(is_locked(&failure(port, "demo-user")));
    assert!(is_locked(&consume(
        port,
        "demo-user",
        "k",
        1,
        now_ms() + 60_000
    )));
    assert!(is_locked(&verify(port, "demo-user", "pin", "8299")));
    assert_eq!(db.budget("demo-user").unwrap().0, 3);
    // Ids without a user row have a budget too, and 30 reports at once count exactly.
    let answers = parallel(30, move |_| failure(port, "nobody-here"));
    assert_eq!(
        answers
            .iter()
            .filter(|a| *a == r#"{"result":"counted"}"#)
            .count(),
        2
    );
    assert_eq!(answers.iter().filter(|a| is_locked(a)).count(), 28);
    assert_eq!(db.budget("nobody-here").unwrap().0, 3);
    assert_eq!(svc.stats()["failure_reports"], 33);
    // A consumed code resets the budget like a valid secret.
    assert!(db.users(&["unlock", "demo-user"], "", &[]).status.success());
    assert_eq!(failure(port, "demo-user"), r#"{"result":"counted"}"#);
    assert_eq!(
        consume(port, "demo-user", "k", 2, now_ms() + 60_000),
        CONSUMED
    );
    assert_eq!(db.budget("demo-user").unwrap().0, 0);
});

#[test]
fn bad_requests_and_auth() {
    let db = Db::sqlite();
    let svc = db.start(&[], &[]);
    for (path, body) in [
        ("/v1/otp/consume", r#"{"user":"u","keyId":"k","step":1}"#),
        (
            "/v1/otp/consume",
            r#"{"user":"u","keyId":"k","step":1,"expiresAtMs":-5}"#,
        ),
        ("/v1/otp/failure", r#"{"user":"u","extra":1}"#),
        ("/v1/otp/failure", "not json"),
    ] {
        let r = post(svc.port, path, body);
        assert_eq!(
            (r.status, r.text()),
            (400, r#"{"error":"bad-request"}"#.into()),
            "{body}"
        );
    }
    let r = send(
        svc.port,
        &request(
            "POST",
            "/v1/otp/failure",
            &[("authorization", "Bearer nope")],
            Some(r#"{"user":"u"}"#),
        ),
    );
    assert_eq!(
        (r.status, r.text()),
        (401, r#"{"error":"unauthorized"}"#.into())
    );
    assert_eq!(svc.stats()["failure_reports"], 0);
}

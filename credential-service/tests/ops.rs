//! What an operator relies on: /healthz, /readyz, /metrics, logs without secrets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

on_both_engines!(health_ready_and_metrics, |db: &Db| {
    let svc = db.start(&["--max-failures", "2"], &[]);
    let port = svc.port;
    let r = harness::get(port, "/healthz");
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    let r = harness::get(port, "/readyz");
    assert_eq!((r.status, r.text()), (200, "ready".into()));
    assert_eq!(verify(port, "demo-user", "pin", "8299"), VALID);
    assert_eq!(verify(port, "demo-user", "pin", "0000"), INVALID);
    assert_eq!(verify(port, "demo-user", "pin", "0001"), INVALID);
    assert!(is_locked(&verify(port, "demo-user", "pin", "8299")));
    assert_eq!(
        verify(port, "nobody", "password", "x"),
        r#"{"result":"unknown-user"}"#
    );
    consume(port, "demo-user-2", "k", 1, now_ms() + 60_000);
    consume(port, "demo-user-2", "k", 1, now_ms() + 60_000);
    failure(port, "demo-user-2");
    let m = harness::get(port, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = m.text();
    for line in [
        r#"credential_service_checks_total{kind="pin",result="valid"} 1"#,
        r#"credential_service_checks_total{kind="pin",result="invalid"} 2"#,
        r#"credential_service_checks_total{kind="pin",result="locked"} 1"#,
        r#"credential_service_checks_total{kind="password",result="unknown-user"} 1"#,
        "credential_service_locks_total 1",
        "credential_service_hard_locks_total 0",
        r#"credential_service_otp_consumes_total{result="consumed"} 1"#,
        r#"credential_service_otp_consumes_total{result="used"} 1"#,
        r#"credential_service_otp_failures_total{result="counted"} 1"#,
        r#"credential_service_argon2_duration_seconds_count{op="verify"} 4"#,
        "# TYPE credential_service_argon2_duration_seconds histogram",
        "# EOF",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    assert!(!text.contains("demo-user"), "a user id as a label");
});

#[test]
fn not_ready_while_postgres_is_down() {
    let mut db = Db::postgres();
    let svc = db.start(&[], &[]);
    assert_eq!(harness::get(svc.port, "/readyz").status, 200);
    db.pg.as_mut().unwrap().stop();
    let r = harness::get(svc.port, "/readyz");
    assert_eq!(
        (r.status, r.text()),
        (503, r#"{"error":"store-unavailable"}"#.into())
    );
    assert_eq!(harness::get(svc.port, "/healthz").status, 200);
    // A verdict needs the store: without it the answer is a fault, never "invalid".
    let r = post(
        svc.port,
        "/v1/credentials/verify",
        r#"{"user":"demo-user","kind":"pin","secret":"0000"}"#,
    );
    assert_eq!(
        (r.status, r.text()),
        (503, r#"{"error":"store-unavailable"}"#.into())
    );
    db.pg.as_mut().unwrap().restart();
    harness::wait_for("ready again", || {
        harness::get(svc.port, "/readyz").status == 200
    });
    assert_eq!(verify(svc.port, "demo-user", "pin", "8299"), VALID);
}

#[test]
fn logs_carry_no_secret() {
    let db = Db::sqlite();
    let log = harness::scratch_dir().join("service.log");
    let bin = bin();
    // Through a shell, to keep the log: the harness discards the service's stderr.
    let wrapper = harness::scratch_dir().join("wrapped.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} \"$@\" --log-level trace --log-format json 2>>{}\n",
            bin.display(),
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let svc = CredentialService::start_bin(
        &wrapper,
        &["--database-url", &db.url],
        &[("CREDENTIAL_SERVICE_PEPPER", PEPPER_A)],
    );
    assert_eq!(verify(svc.port, "demo-user", "pin", "8299"), VALID);
    assert_eq!(
        verify(
            svc.port,
            "demo-user",
            "password",
            "correct-horse-battery-staple"
        ),
        VALID
    );
    assert_eq!(verify(svc.port, "demo-user", "pin", "5821"), INVALID);
    drop(svc);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(r#""message":"request""#), "{text}");
    // PINs quoted: bare four digits turn up in timestamps.
    for secret in [
        r#""8299""#,
        r#"\"8299\""#,
        r#""5821""#,
        r#"\"5821\""#,
        "correct-horse",
        PEPPER_A,
        "dev-only-credential-secret",
        "$argon2",
    ] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
}

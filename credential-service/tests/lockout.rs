//! The failure budget held in the store: parallel guesses, restarts, replicas, the hard lock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

// 200 wrong PINs at once: each is counted exactly once, and exactly `--max-failures` of them
// get to check a secret; the rest are answered `locked` without one.
on_both_engines!(parallel_wrong_pins_count_exactly, |db: &Db| {
    let svc = db.start(&["--max-failures", "10", "--lockout-seconds", "300"], &[]);
    let port = svc.port;
    let answers = parallel(200, move |i| {
        verify(port, "demo-user", "pin", &format!("{:04}", i % 8000 + 1000))
    });
    let invalid = answers.iter().filter(|a| *a == INVALID).count();
    let locked = answers.iter().filter(|a| is_locked(a)).count();
    assert_eq!((invalid, locked), (10, 190), "{answers:?}");
    assert_eq!(svc.stats()["pin_checks"], 200);
    let (failures, until, hard) = db.budget("demo-user").unwrap();
    assert_eq!((failures, hard), (10, false));
    assert!(until > now_ms() as i64 + 290_000);
    assert!(is_locked(&verify(port, "demo-user", "pin", "8299")));
});

// The ceiling: 200 at once with the lock at 100 give 100 checks and a hard lock; `users unlock`
// lifts it, and so does a new password.
on_both_engines!(hard_lock_at_the_ceiling, |db: &Db| {
    let svc = db.start(&["--max-failures", "100", "--hard-lock-after", "100"], &[]);
    let port = svc.port;
    let answers = parallel(200, move |i| {
        verify(port, "demo-user", "password", &format!("wrong-{i}"))
    });
    let invalid = answers.iter().filter(|a| *a == INVALID).count();
    assert_eq!(invalid, 100, "{answers:?}");
    assert_eq!(answers.iter().filter(|a| *a == HARD).count(), 100);
    let (failures, _, hard) = db.budget("demo-user").unwrap();
    assert_eq!((failures, hard), (100, true));
    assert_eq!(verify(port, "demo-user", "pin", "8299"), HARD);

    let out = db.users(&["unlock", "demo-user"], "", &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(verify(port, "demo-user", "pin", "8299"), VALID);

    for i in 0..100 {
        assert_eq!(
            verify(port, "demo-user", "pin", &format!("{:04}", 1000 + i)),
            INVALID
        );
    }
    assert_eq!(verify(port, "demo-user", "pin", "8299"), HARD);
    let out = db.users(
        &["set-password", "demo-user", "--from-env", "NEW_PASSWORD"],
        "",
        &[("NEW_PASSWORD", "a-new-long-password")],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(verify(port, "demo-user", "pin", "8299"), VALID);
    assert_eq!(
        verify(port, "demo-user", "password", "a-new-long-password"),
        VALID
    );
});

on_both_engines!(a_restart_keeps_the_lock, |db: &Db| {
    let args = ["--max-failures", "3", "--lockout-seconds", "600"];
    let svc = db.start(&args, &[]);
    for _ in 0..3 {
        assert_eq!(verify(svc.port, "demo-user", "pin", "0000"), INVALID);
    }
    drop(svc);
    let again = db.start(&args, &[]);
    let answer = verify(again.port, "demo-user", "pin", "8299");
    assert!(is_locked(&answer), "{answer}");
    let retry: u64 = answer
        .trim_start_matches(r#"{"result":"locked","retryAfterSeconds":"#)
        .trim_end_matches('}')
        .parse()
        .unwrap();
    assert!((590..=600).contains(&retry), "{retry}");
});

on_both_engines!(replicas_share_one_budget, |db: &Db| {
    let args = ["--max-failures", "3", "--lockout-seconds", "600"];
    let a = db.start(&args, &[]);
    let b = db.start(&args, &[]);
    assert_eq!(verify(a.port, "demo-user", "pin", "0000"), INVALID);
    assert_eq!(verify(b.port, "demo-user", "pin", "0001"), INVALID);
    assert_eq!(
        failure(a.port, "demo-user"),
        r#"{"result":"locked","retryAfterSeconds":600}"#
    );
    for port in [a.port, b.port] {
        assert!(is_locked(&verify(port, "demo-user", "pin", "8299")));
        assert!(is_locked(&consume(
            port,
            "demo-user",
            "k",
            1,
            now_ms() + 60_000
        )));
    }
    // A success on one replica resets the budget for both.
    let out = db.users(&["unlock", "demo-user"], "", &[]);
    assert!(out.status.success());
    assert_eq!(verify(a.port, "demo-user", "pin", "0000"), INVALID);
    assert_eq!(verify(b.port, "demo-user", "pin", "8299"), VALID);
    assert_eq!(db.budget("demo-user").unwrap().0, 0);
});

#[test]
fn the_ceiling_cannot_be_raised() {
    let out = std::process::Command::new(bin())
        .args(["--listen", "127.0.0.1:0", "--hard-lock-after", "101"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hard-lock-after"));
}

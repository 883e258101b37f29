//! `credential-service users …` against the same store as the server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn refused(out: std::process::Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

on_both_engines!(users_commands, |db: &Db| {
    let svc = db.start(&["--no-seed"], &[]);
    let port = svc.port;
    // add: password and PIN from stdin, one line each, password first.
    ok(db.users(
        &[
            "add",
            "alice",
            "--linked-identity",
            "pace-identity:alice",
            "--password-stdin",
            "--pin-stdin",
        ],
        "alice-password-1\n8299\n",
        &[],
    ));
    assert_eq!(verify(port, "alice", "password", "alice-password-1"), VALID);
    assert_eq!(verify(port, "alice", "pin", "8299"), VALID);
    refused(db.users(&["add", "alice", "--pin-stdin"], "5821\n", &[]));
    // bob: no secrets yet, then a PIN from the environment.
    ok(db.users(
        &["add", "bob", "--linked-identity", "pace-identity:bob"],
        "",
        &[],
    ));
    assert_eq!(verify(port, "bob", "pin", "8299"), INVALID);
    for (pin, why) in [
        ("1234", "consecutive"),
        ("1111", "3 different"),
        ("1121", "3 different"),
        ("0987", "consecutive"),
        ("82a9", "4 digits"),
    ] {
        let err = refused(db.users(&["set-pin", "bob", "--stdin"], &format!("{pin}\n"), &[]));
        assert!(err.contains(why), "{pin}: {err}");
        assert!(!err.contains(pin), "the PIN is echoed: {err}");
    }
    ok(db.users(
        &["set-pin", "bob", "--from-env", "BOB_PIN"],
        "",
        &[("BOB_PIN", "8299")],
    ));
    assert_eq!(verify(port, "bob", "pin", "8299"), VALID);
    refused(db.users(&["set-password", "bob", "--stdin"], "short\n", &[]));
    refused(db.users(&["set-pin", "nobody", "--stdin"], "8299\n", &[]));
    refused(db.users(&["set-pin", "bob", "--from-env", "UNSET_VAR_X"], "", &[]));
    // Secrets are never taken from argv.
    refused(db.users(&["set-pin", "bob", "8299"], "", &[]));
    refused(db.users(&["add", "carol", "--pin", "8299"], "", &[]));

    // link / unlink
    ok(db.users(&["unlink", "bob"], "", &[]));
    assert_eq!(
        verify(port, "bob", "pin", "8299"),
        r#"{"result":"missing-linked-identity"}"#
    );
    ok(db.users(&["link", "bob", "pace-identity:bob"], "", &[]));
    assert_eq!(verify(port, "bob", "pin", "8299"), VALID);

    // unlock
    for _ in 0..10 {
        assert_eq!(verify(port, "bob", "pin", "0000"), INVALID);
    }
    assert!(is_locked(&verify(port, "bob", "pin", "8299")));
    let list = ok(db.users(&["list"], "", &[]));
    let bob = list.lines().find(|l| l.starts_with("bob\t")).unwrap();
    assert!(bob.contains("\t10\t"), "{list}");
    assert!(bob.ends_with('s'), "{list}");
    assert!(!list.contains("8299") && !list.contains("argon2"), "{list}");
    ok(db.users(&["unlock", "bob"], "", &[]));
    assert_eq!(verify(port, "bob", "pin", "8299"), VALID);

    // list, then delete
    let list = ok(db.users(&["list"], "", &[]));
    assert_eq!(
        list.lines().next().unwrap(),
        "id\tlinked_identity\tpassword\tpin\tfailures\tlock"
    );
    assert!(
        list.contains("alice\tpace-identity:alice\tset(no-pepper)\tset(no-pepper)\t0\t-"),
        "{list}"
    );
    assert!(
        list.contains("bob\tpace-identity:bob\t-\tset(no-pepper)\t0\t-"),
        "{list}"
    );
    ok(db.users(&["delete", "bob"], "", &[]));
    refused(db.users(&["delete", "bob"], "", &[]));
    assert_eq!(
        verify(port, "bob", "pin", "8299"),
        r#"{"result":"unknown-user"}"#
    );
    assert!(!ok(db.users(&["list"], "", &[])).contains("bob"));
});

#[test]
fn seeding_is_idempotent_and_uses_the_pepper() {
    let db = Db::sqlite();
    let env = [("CREDENTIAL_SERVICE_PEPPER", PEPPER_A)];
    for _ in 0..2 {
        let svc = db.start(&["--seed-demo-users"], &env);
        assert_eq!(verify(svc.port, "demo-user", "pin", "8299"), VALID);
        assert_eq!(
            verify(
                svc.port,
                "demo-user-2",
                "password",
                "correct-horse-battery-staple"
            ),
            VALID
        );
        assert_eq!(
            verify(svc.port, "unlinked-user", "pin", "8299"),
            r#"{"result":"missing-linked-identity"}"#
        );
    }
    let list = ok(db.users(&["list"], "", &env));
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(
        list.contains(
            "demo-user\tpace-identity:demo-user\tset(pepper=default)\tset(pepper=default)"
        ),
        "{list}"
    );
    // The CLI hashes with the same pepper the server checks with.
    ok(db.users(&["set-pin", "demo-user", "--stdin"], "5821\n", &env));
    let svc = db.start(&[], &env);
    assert_eq!(verify(svc.port, "demo-user", "pin", "5821"), VALID);
}

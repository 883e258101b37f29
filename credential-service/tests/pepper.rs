//! The pepper: a stolen database is not enough to test PINs, and rotation rehashes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use credential_service::protocol::Kind;

fn verifies(phc: &str, key: Option<&[u8]>, secret: &str) -> bool {
    let hash = PasswordHash::new(phc).unwrap();
    let argon2 = match key {
        Some(k) => {
            Argon2::new_with_secret(k, Algorithm::Argon2id, Version::V0x13, Params::default())
                .unwrap()
        }
        None => Argon2::default(),
    };
    argon2.verify_password(secret.as_bytes(), &hash).is_ok()
}

on_both_engines!(
    a_stolen_database_does_not_verify_without_the_pepper,
    |db: &Db| {
        let a = base64::engine::general_purpose::STANDARD
            .decode(PEPPER_A)
            .unwrap();
        let b = base64::engine::general_purpose::STANDARD
            .decode(PEPPER_B)
            .unwrap();
        let svc = db.start(&[], &[("CREDENTIAL_SERVICE_PEPPER", PEPPER_A)]);
        assert_eq!(verify(svc.port, "demo-user", "pin", "8299"), VALID);
        drop(svc);

        // What a thief has: the table. PIN 8299's hash verifies only with pepper A.
        let (rt, store) = db.store();
        let stored = rt
            .block_on(store.stored_hash("demo-user", Kind::Pin))
            .unwrap()
            .unwrap();
        assert_eq!(stored.pepper_id.as_deref(), Some("default"));
        assert!(verifies(&stored.phc, Some(&a), "8299"));
        assert!(!verifies(&stored.phc, None, "8299"));
        assert!(!verifies(&stored.phc, Some(&b), "8299"));
        // Not a single one of the 9,340 valid PINs verifies without it (a sample: the cost is real).
        for pin in ["8299", "0000", "1357", "2468"] {
            assert!(!verifies(&stored.phc, None, pin));
        }

        // The service itself, started without the pepper or with another one, cannot verify either.
        let none = db.start(&["--no-seed"], &[]);
        assert_eq!(verify(none.port, "demo-user", "pin", "8299"), INVALID);
        drop(none);
        let other = db.start(&["--no-seed"], &[("CREDENTIAL_SERVICE_PEPPER", PEPPER_B)]);
        assert_eq!(verify(other.port, "demo-user", "pin", "8299"), INVALID);
    }
);

on_both_engines!(rotation_rehashes_with_the_active_pepper, |db: &Db| {
    let old = format!("old:{PEPPER_A}");
    let svc = db.start(&[], &[("CREDENTIAL_SERVICE_PEPPERS", old.as_str())]);
    drop(svc);
    let (rt, store) = db.store();
    let pepper = |kind| {
        rt.block_on(store.stored_hash("demo-user", kind))
            .unwrap()
            .unwrap()
            .pepper_id
    };
    assert_eq!(pepper(Kind::Pin).as_deref(), Some("old"));

    // Both peppers, the new one active: a successful check rehashes with it.
    let both = format!("old:{PEPPER_A},new:{PEPPER_B}");
    let svc = db.start(
        &["--no-seed"],
        &[
            ("CREDENTIAL_SERVICE_PEPPERS", both.as_str()),
            ("CREDENTIAL_SERVICE_PEPPER_ACTIVE", "new"),
        ],
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
    // A wrong secret rehashes nothing.
    assert_eq!(verify(svc.port, "demo-user-2", "pin", "0000"), INVALID);
    harness::wait_for("the rehash", || {
        pepper(Kind::Pin).as_deref() == Some("new")
            && pepper(Kind::Password).as_deref() == Some("new")
    });
    let metrics = harness::get(svc.port, "/metrics").text();
    assert!(
        metrics.contains("credential_service_rehashes_total 2"),
        "{metrics}"
    );
    drop(svc);
    let untouched = rt
        .block_on(store.stored_hash("demo-user-2", Kind::Pin))
        .unwrap()
        .unwrap();
    assert_eq!(untouched.pepper_id.as_deref(), Some("old"));

    // The old pepper retired: rehashed users still verify, the others cannot.
    let new_only = format!("new:{PEPPER_B}");
    let svc = db.start(
        &["--no-seed"],
        &[("CREDENTIAL_SERVICE_PEPPERS", new_only.as_str())],
    );
    assert_eq!(verify(svc.port, "demo-user", "pin", "8299"), VALID);
    assert_eq!(verify(svc.port, "demo-user-2", "pin", "8299"), INVALID);
});

#[test]
fn bad_pepper_configuration_stops_the_start() {
    for env in [
        vec![("CREDENTIAL_SERVICE_PEPPER", "c2hvcnQ=")],
        vec![("CREDENTIAL_SERVICE_PEPPERS", "a:QUFB")],
        vec![
            (
                "CREDENTIAL_SERVICE_PEPPERS",
                "a:QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=",
            ),
            ("CREDENTIAL_SERVICE_PEPPER_ACTIVE", "b"),
        ],
    ] {
        let out = std::process::Command::new(bin())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &harness::scratch_sqlite_url(),
            ])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("QUFB"), "{err}");
    }
}

//! Claim rules end to end, as one table run against each token mode: the filter's own JWS check,
//! Envoy's `jwt_authn` (whose payload reaches the filter as a protobuf Struct) and RFC 7662
//! introspection (whose answer carries the token's claims). Every JSON type must read the same in
//! all three: `false`, `0`, `1`, strings, arrays and objects, and `equals` against each.
//! Also: a 403 names the scope the route required.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use harness::*;
use serde_json::{json, Value};

const PIN: &str = r#"{"pin":"8299"}"#;

/// Adds `"linked_identity": rule` to the token section of any shipped config.
fn with_linked_rule(config: String, rule: &Value) -> String {
    let anchor = r#""user_id_claim": "sub""#;
    assert!(
        config.contains(anchor),
        "the config names its user id claim"
    );
    config.replacen(
        anchor,
        &format!(r#"{anchor}, "linked_identity": {rule}"#),
        1,
    )
}

/// Claims merged over the demo token's, and whether a PIN then mints (201) or the user lacks a
/// linked identity (401).
fn presence_rows() -> Vec<(Value, bool)> {
    vec![
        (json!({"linked": false}), false),
        (json!({"linked": 0}), false),
        (json!({"linked": null}), false),
        (json!({"linked": ""}), false),
        (json!({"linked": []}), false),
        (json!({"linked": {}}), false),
        (json!({}), false),
        (json!({"linked": true}), true),
        (json!({"linked": 1}), true),
        (json!({"linked": 0.5}), true),
        (json!({"linked": "google"}), true),
        (json!({"linked": ["google"]}), true),
        (json!({"linked": {"idp": "google"}}), true),
        // The scope only in an `scp` array counts like `scope`.
        (
            json!({"linked": true, "scope": null, "scp": ["openid", "user:otp:create"]}),
            true,
        ),
    ]
}

/// Rows for `"equals": {"idp": "google", "level": 2, "tags": ["a"]}`.
fn equals_rows() -> Vec<(Value, bool)> {
    vec![
        (
            json!({"linked": {"idp": "google", "level": 2, "tags": ["a"]}}),
            true,
        ),
        (
            json!({"linked": {"tags": ["a"], "level": 2.0, "idp": "google"}}),
            true,
        ),
        (
            json!({"linked": {"idp": "google", "level": "2", "tags": ["a"]}}),
            false,
        ),
        (
            json!({"linked": {"idp": "google", "level": 2, "tags": ["a", "b"]}}),
            false,
        ),
        (json!({"linked": {"idp": "google", "level": 2}}), false),
        (
            json!({"linked": {"idp": "google", "level": 2, "tags": ["a"], "x": 1}}),
            false,
        ),
        (json!({"linked": true}), false),
    ]
}

fn run_table(mode: &str, rule: &Value, rows: &[(Value, bool)]) {
    let service = CredentialService::start(&[]);
    let envoy = Envoy::start(&config_file(mode, service.port, service.port, |c| {
        with_linked_rule(c, rule)
    }));
    // Ready once a token the rule accepts mints (jwt_authn fetches its keys on first use).
    let (accepted, _) = rows
        .iter()
        .find(|(_, mints)| *mints)
        .expect("a row that mints");
    let ready = token_claims(&accepted.to_string());
    wait_for(&format!("{mode} to mint"), || {
        create_otp(envoy.port, &ready, PIN).status == 201
    });
    let pin_checks = |s: &CredentialService| s.stats()["pin_checks"].as_u64().unwrap();
    for (claims, mints) in rows {
        let before = pin_checks(&service);
        let r = create_otp(envoy.port, &token_claims(&claims.to_string()), PIN);
        if *mints {
            assert_eq!(r.status, 201, "{mode}, {rule}, {claims}: {}", r.text());
            assert_eq!(pin_checks(&service), before + 1);
        } else {
            let e = assert_error(&r, 401, "missing-linked-identity");
            assert_eq!(
                e["title"], "Missing linked identity for authorized access",
                "{mode}, {claims}"
            );
            assert_eq!(
                pin_checks(&service),
                before,
                "{mode}, {claims}: refused before any check"
            );
        }
    }
}

fn presence_rule() -> Value {
    json!({"claim": "linked"})
}

fn equals_rule() -> Value {
    json!({"claim": "linked", "equals": {"idp": "google", "level": 2, "tags": ["a"]}})
}

#[test]
fn linked_identity_in_jwt_mode() {
    run_table(TOKEN_MODES[0], &presence_rule(), &presence_rows());
    run_table(TOKEN_MODES[0], &equals_rule(), &equals_rows());
}

#[test]
fn linked_identity_in_jwt_authn_mode() {
    run_table(TOKEN_MODES[1], &presence_rule(), &presence_rows());
    run_table(TOKEN_MODES[1], &equals_rule(), &equals_rows());
}

#[test]
fn linked_identity_in_introspection_mode() {
    run_table(TOKEN_MODES[2], &presence_rule(), &presence_rows());
    run_table(TOKEN_MODES[2], &equals_rule(), &equals_rows());
}

/// The 403 names the scope the route required, in its detail and its challenge.
fn assert_scope_named(r: &Response, scope: &str) {
    let e = assert_error(r, 403, "insufficient-scope");
    assert_eq!(e["detail"], format!("The token lacks the scope {scope}."));
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(r#"Bearer realm="otp", error="insufficient_scope", scope="{scope}""#).as_str()
        )
    );
}

#[test]
fn a_403_names_the_scope_that_was_required() {
    for mode in TOKEN_MODES {
        // A store of its own per mode: the authority would rightly refuse a code the previous
        // mode's Envoy already used (same user, same step).
        let service = CredentialService::start(&[]);
        let envoy = mode_envoy(mode, &service, |c| c);
        // Verify needs user:otp:verify; the demo token has only user:otp:create.
        let auth = format!("Bearer {}", token());
        let r = send(
            envoy.port,
            &request(
                "POST",
                "/user/2022-1/user/otp/verify",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                Some(r#"{"otp":"123456"}"#),
            ),
        );
        assert_scope_named(&r, "user:otp:verify");
        let r = create_otp(envoy.port, &token_claims(r#"{"scope":"openid"}"#), PIN);
        assert_scope_named(&r, "user:otp:create");
        // With the scope, verify accepts a code once in every mode.
        let both = token_claims(r#"{"scope":"user:otp:create user:otp:verify"}"#);
        let (code, _) = assert_created(&create_otp(envoy.port, &both, PIN));
        let verify = |token: &str| {
            let auth = format!("Bearer {token}");
            let body = format!(r#"{{"otp":"{code}"}}"#);
            send(
                envoy.port,
                &request(
                    "POST",
                    "/user/2022-1/user/otp/verify",
                    &[
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                    ],
                    Some(&body),
                ),
            )
        };
        assert_eq!(verify(&both).status, 204, "{mode}");
        assert_error(&verify(&both), 404, "otp-not-valid");
        drop(envoy);

        // Another configured scope is the one named.
        let envoy = Envoy::start(&config_file(mode, service.port, service.port, |c| {
            let from = r#""required_scope": "user:otp:create""#;
            assert!(c.contains(from), "{mode} sets required_scope");
            c.replace(from, r#""required_scope": "pace:otp:create""#)
        }));
        wait_for(&format!("{mode} to judge tokens"), || {
            create_otp(envoy.port, &token(), PIN).status == 403
        });
        assert_scope_named(&create_otp(envoy.port, &token(), PIN), "pace:otp:create");
        let r = create_otp(
            envoy.port,
            &token_claims(r#"{"scope":"pace:otp:create"}"#),
            PIN,
        );
        assert_created(&r);
    }
}

//! The filter's stats, end to end: exact counter values after a known sequence of requests, and
//! the Prometheus view with tags.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use harness::*;
use serde_json::json;

#[test]
fn counters_after_a_known_sequence() {
    let stack = Stack::start();
    let port = stack.envoy.port;
    let t = token_claims(r#"{"scope":"user:otp:create user:otp:verify"}"#);
    let pin = r#"{"pin":"8299"}"#;
    // Stack::start polled until the keys were loaded, and those requests are counted too: the
    // assertions are on the difference.
    let before = stack.envoy.counters();
    assert!(before["otp_filter.jwks.fetch_ok"] >= 1);

    let (code, _) = assert_created(&create_otp(port, &t, pin));
    assert_error(
        &create_otp(port, &t, r#"{"pin":"0000"}"#),
        404,
        "invalid-credentials",
    );
    assert_created(&create_otp(
        port,
        &t,
        r#"{"password":"wrong","pin":"8299"}"#,
    ));
    assert_error(&create_otp(port, "x", pin), 401, "token-malformed");
    let auth = format!("Bearer {t}");
    let verify = |code: &str| {
        let body = json!({ "otp": code }).to_string();
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        send(
            port,
            &request(
                "POST",
                "/user/2022-1/user/otp/verify",
                &headers,
                Some(&body),
            ),
        )
    };
    assert_eq!(verify(&code).status, 204);
    assert_error(&verify(&code), 404, "otp-not-valid");
    let put = request(
        "PUT",
        "/user/2021-2/user/pin",
        &[("authorization", &auth)],
        Some("{}"),
    );
    assert_error(&send(port, &put), 403, "otp:invalid");
    get(port, "/healthz"); // not the filter's: counts nothing

    let counters = stack.envoy.counters();
    let delta: Vec<(&str, u64)> = counters
        .iter()
        .map(|(k, v)| (k.as_str(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    assert_eq!(
        delta,
        vec![
            // The shipped config lets the authority decide: the verified code was consumed there.
            ("otp_filter.authority.consumed", 1),
            ("otp_filter.credential.invalid", 2),
            ("otp_filter.credential.valid", 2),
            ("otp_filter.outcome.invalid_credentials", 1),
            ("otp_filter.outcome.issued", 2),
            ("otp_filter.outcome.otp_invalid", 1),
            ("otp_filter.outcome.otp_not_valid", 1),
            ("otp_filter.outcome.token_malformed", 1),
            ("otp_filter.outcome.verified", 1),
            // One worker: the new token's signature was checked once, then the cache served it;
            // the malformed "x" was looked up too, and refused by the signature check.
            ("otp_filter.token.cache_misses", 2),
        ]
    );
    // Every outcome and result exists from the start.
    assert!(counters.contains_key("otp_filter.outcome.credential_service_timeout"));
    assert!(counters.contains_key("otp_filter.credential.locked"));

    let prometheus = get(stack.envoy.admin_port, "/stats/prometheus").text();
    assert!(
        prometheus.contains(r#"otp_filter_outcome{otp_outcome="verified"} 1"#),
        "{prometheus}"
    );
    let issued = before["otp_filter.outcome.issued"] + 2;
    assert!(prometheus.contains(&format!(
        r#"otp_filter_outcome{{otp_outcome="issued"}} {issued}"#
    )));
}

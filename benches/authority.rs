//! What the one-time-use authority costs, on its own: the reference credential service's latency
//! for `POST /v1/otp/consume` (a fresh code each time: one unique-key insert) and
//! `POST /v1/otp/failure` (one counter update), and for comparison `POST /v1/credentials/verify`
//! (an argon2 check), on one keep-alive connection, first with SQLite (one instance) and then with
//! a real PostgreSQL (a fleet), both started here. Not a timed test: it prints the figures.
//!
//!     make bench-authority      (BENCH_AUTHORITY_CALLS, 2000 per kind; verify gets a tenth)

// A benchmark fails by panicking, like a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use harness::*;

fn post(path: &str, body: &str) -> Vec<u8> {
    request(
        "POST",
        path,
        &[
            ("authorization", CALLOUT_AUTH),
            ("content-type", "application/json"),
        ],
        Some(body),
    )
}

/// (p50, p99, mean) in ms of `calls` requests made by `raw(i)`, each answered 200 with `result`.
fn latency(
    conn: &mut Conn,
    calls: usize,
    result: &str,
    raw: impl Fn(usize) -> Vec<u8>,
) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = (0..calls)
        .map(|i| {
            let bytes = raw(i);
            let start = Instant::now();
            let r = conn.exchange(&bytes);
            let took = start.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["result"], result, "{}", r.text());
            took
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    (at(0.50), at(0.99), ms.iter().sum::<f64>() / ms.len() as f64)
}

fn main() {
    let calls: usize = std::env::var("BENCH_AUTHORITY_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let pg = Postgres::start();
    let sqlite =
        std::env::temp_dir().join(format!("otp-bench-authority-{}.db", std::process::id()));
    let stores = [
        ("SQLite", format!("sqlite://{}", sqlite.display())),
        ("PostgreSQL", pg.database_url("bench_authority")),
    ];
    println!("| store | call | calls | p50 ms | p99 ms | mean ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for (name, url) in &stores {
        let service = CredentialService::start(&[
            "--database-url",
            url,
            "--seed-demo-users",
            "--max-failures",
            "100",
        ]);
        let mut conn = Conn::open(service.port);
        let consume = latency(&mut conn, calls, "consumed", |i| {
            let body = format!(
                r#"{{"user":"bench-{}","keyId":"k1","step":{i},"expiresAtMs":{}}}"#,
                i % 50,
                now_ms + 600_000
            );
            post("/v1/otp/consume", &body)
        });
        // One failure per user, so no user reaches the lock.
        let failure = latency(&mut conn, calls, "counted", |i| {
            post(
                "/v1/otp/failure",
                &format!(r#"{{"user":"bench-wrong-{i}"}}"#),
            )
        });
        let verify = latency(&mut conn, (calls / 10).max(10), "valid", |_| {
            post(
                "/v1/credentials/verify",
                r#"{"user":"demo-user","kind":"pin","secret":"8299"}"#,
            )
        });
        for (call, (p50, p99, mean), n) in [
            ("consume (unique insert)", consume, calls),
            ("failure (counter update)", failure, calls),
            ("verify (argon2id PIN check)", verify, (calls / 10).max(10)),
        ] {
            println!("| {name} | {call} | {n} | {p50:.2} | {p99:.2} | {mean:.2} |");
        }
    }
    let _ = std::fs::remove_file(&sqlite);
}

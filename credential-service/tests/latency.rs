//! Check latency on each engine: N sequential calls on one keep-alive connection, p50 and p99.
//! Not part of `make test`; run with
//! `cargo test --release -p credential-service --test latency -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::time::{Duration, Instant};

const N: usize = 500;

fn percentiles(mut t: Vec<Duration>) -> (Duration, Duration) {
    t.sort();
    (t[t.len() / 2], t[(t.len() * 99).div_ceil(100) - 1])
}

fn measure(engine: &str, db: &Db) {
    let svc = db.start(&["--max-failures", "100", "--hard-lock-after", "100"], &[]);
    let mut conn = harness::Conn::open(svc.port);
    let mut run = |what: &str, body: &dyn Fn(usize) -> (String, &'static str)| {
        let mut times = Vec::with_capacity(N);
        for i in 0..N + 20 {
            let (json, path) = body(i);
            let raw = request(
                "POST",
                path,
                &[
                    ("authorization", CALLOUT_AUTH),
                    ("content-type", "application/json"),
                ],
                Some(&json),
            );
            let started = Instant::now();
            let r = conn.exchange(&raw);
            let took = started.elapsed();
            assert_eq!(r.status, 200);
            if i >= 20 {
                times.push(took); // the first 20 warm up
            }
        }
        let (p50, p99) = percentiles(times);
        println!(
            "{engine:9} {what:28} p50 {:6.2} ms  p99 {:6.2} ms  (N = {N})",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    };
    run("verify, valid PIN", &|_| {
        (
            r#"{"user":"demo-user","kind":"pin","secret":"8299"}"#.to_owned(),
            "/v1/credentials/verify",
        )
    });
    run("verify, wrong PIN (+ reset)", &|i| {
        let pin = if i % 2 == 0 { "0000" } else { "8299" };
        (
            format!(r#"{{"user":"demo-user-2","kind":"pin","secret":"{pin}"}}"#),
            "/v1/credentials/verify",
        )
    });
    let far = now_ms() + 600_000;
    run("consume (no argon2)", &|i| {
        (
            format!(r#"{{"user":"demo-user","keyId":"k","step":{i},"expiresAtMs":{far}}}"#),
            "/v1/otp/consume",
        )
    });
}

#[test]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
fn latency() {
    measure("sqlite", &Db::sqlite());
    measure("postgres", &Db::postgres());
}

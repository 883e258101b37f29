//! Fleet soak: a bounded mixed load over three Envoys (`--concurrency 2` each) in front of two
//! credential-service replicas on one real PostgreSQL, the one-time-use authority deciding, then
//! the checks a fleet needs over time.
//!
//!     make soak-fleet                 (SOAK_SECONDS=300 by default; loopback only)
//!     SOAK_SECONDS=60 make soak-fleet
//!
//! The load, spread over the three Envoys at random:
//! - two minting threads, one per demo user: a create (201), then the fresh code used once on one
//!   Envoy (verify 204, or the PIN-change gate, forwarded) and replayed on the others and on the
//!   same one (404 / 403): every code must be accepted exactly once, fleet-wide;
//! - SOAK_CONNS (4) threads of wrong codes on verify and the gates for minted users (each user at
//!   most 40 guesses: below every budget, so the answers stay 404 / 403) and of requests refused
//!   before any callout (no token, a bad Accept).
//!
//! Afterwards (any failure panics, after the figures are printed):
//! - no unexpected status and no transport error;
//! - every code accepted at most once, by what the clients saw and by the store: the authority
//!   ruled exactly the codes the clients saw accepted consumed, and its table of used codes holds
//!   no more;
//! - each Envoy's VmRSS and RssAnon at the end below 110% of their values after warm-up (the first
//!   10% of the run, at most 30 s);
//! - no critical line, trap or secret in any Envoy's log.
//!
//! Knobs (environment): SOAK_SECONDS (300), SOAK_CONNS (4), SOAK_CYCLE_MS (400).

// A benchmark fails by panicking, like a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use harness::bench::{envoy_pid, mint_with_claims, rss_kb};
use harness::*;
use serde_json::json;

const PIN: &str = r#"{"pin":"8299"}"#;
const VERIFY: &str = "/user/2022-1/user/otp/verify";
const GATE: &str = "/user/2021-2/user/pin";
/// Wrong guesses per minted user: below the local throttle (100 here) and the fleet budget.
const GUESSES_PER_USER: u64 = 40;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small xorshift: which Envoy gets the next request.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What the clients saw: (request kind, status) → count, and the codes accepted.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<(&'static str, u16), u64>,
    unexpected: Vec<String>,
    accepted: Vec<String>,
}

impl Tally {
    fn saw(&mut self, kind: &'static str, status: u16, allowed: &[u16]) {
        *self.statuses.entry((kind, status)).or_default() += 1;
        if !allowed.contains(&status) && self.unexpected.len() < 20 {
            self.unexpected.push(format!("{kind}: {status}"));
        }
    }
}

fn post(path: &str, token: &str, body: &str) -> Vec<u8> {
    let auth = format!("Bearer {token}");
    request(
        "POST",
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Some(body),
    )
}

fn gate(token: &str, code: &str) -> Vec<u8> {
    let auth = format!("Bearer {token}");
    let body = json!({"data": {"type": "pin", "attributes": {"pin": "4711", "otp": code}}});
    request(
        "PUT",
        GATE,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Some(&body.to_string()),
    )
}

/// One demo user's cycle: mint, use once somewhere, replay everywhere.
fn minter(
    fleet: &Fleet,
    user: &str,
    seed: u64,
    cycle: Duration,
    stop: &AtomicBool,
    tally: &Mutex<Tally>,
) {
    let token = token_claims(&format!(
        r#"{{"sub":"{user}","scope":"openid user:otp:create user:otp:verify"}}"#
    ));
    let mut rng = Rng(seed);
    let mut used = HashSet::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let r = send(fleet.port(rng.below(3)), &post(OTP_PATH, &token, PIN));
        tally.lock().unwrap().saw("create", r.status, &[201]);
        if r.status == 201 {
            let code = r.json()["otp"].as_str().unwrap_or_default().to_string();
            if used.insert(code.clone()) {
                n += 1;
                let first = rng.below(3);
                let by_gate = n % 3 == 0;
                let (kind, raw, ok, refused): (&str, Vec<u8>, u16, u16) = if by_gate {
                    ("gate", gate(&token, &code), 200, 403)
                } else {
                    (
                        "verify",
                        post(VERIFY, &token, &json!({"otp": code}).to_string()),
                        204,
                        404,
                    )
                };
                let r = send(fleet.port(first), &raw);
                tally.lock().unwrap().saw(kind, r.status, &[ok]);
                if r.status == ok {
                    tally
                        .lock()
                        .unwrap()
                        .accepted
                        .push(format!("{user}:{code}"));
                }
                for replay in 0..3 {
                    let r = send(fleet.port(first + replay), &raw);
                    let mut t = tally.lock().unwrap();
                    t.saw("replay", r.status, &[refused]);
                    if r.status == ok {
                        t.accepted.push(format!("{user}:{code}"));
                    }
                }
            }
        }
        thread::sleep(cycle.saturating_sub(started.elapsed()));
    }
}

/// Wrong codes for minted users, and requests refused before any callout.
fn guesser(
    fleet: &Fleet,
    tokens: &[String],
    seed: u64,
    next: &AtomicU64,
    stop: &AtomicBool,
    tally: &Mutex<Tally>,
) {
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let k = next.fetch_add(1, Ordering::Relaxed);
        let token = &tokens[((k / GUESSES_PER_USER) as usize) % tokens.len()];
        let port = fleet.port(rng.below(3));
        let (kind, raw, allowed): (&str, Vec<u8>, &[u16]) = match k % 4 {
            0 | 1 => (
                "wrong code",
                post(VERIFY, token, r#"{"otp":"000000"}"#),
                &[404],
            ),
            2 => ("wrong gate code", gate(token, "000000"), &[403]),
            _ => (
                "no token",
                request(
                    "POST",
                    VERIFY,
                    &[("content-type", "application/json")],
                    Some("{}"),
                ),
                &[401],
            ),
        };
        let r = send(port, &raw);
        tally.lock().unwrap().saw(kind, r.status, allowed);
    }
}

fn main() {
    let seconds: f64 = env_or("SOAK_SECONDS", 300.0);
    let conns: usize = env_or("SOAK_CONNS", 4);
    let cycle = Duration::from_millis(env_or("SOAK_CYCLE_MS", 400));
    println!("fleet soak: {seconds} s, 3 Envoys, 2 credential-service replicas on PostgreSQL");
    let fleet = Fleet::start(3, 2, 2, &["--max-failures", "1000000"], |c| {
        c.replace(r#""step_seconds": 60"#, r#""step_seconds": 2"#)
            .replace(r#""lifetime_seconds": 300"#, r#""lifetime_seconds": 6"#)
            .replace(r#""max_failures": 5,"#, r#""max_failures": 100,"#)
    });
    // Enough minted users that none meets GUESSES_PER_USER wrong codes twice over.
    let users = ((seconds * 400.0 * conns as f64) / GUESSES_PER_USER as f64).ceil() as usize + 1;
    let claims: Vec<String> = (0..users.min(20_000))
        .map(|i| format!(r#"{{"sub":"soak-guess-{i}","scope":"user:otp:verify"}}"#))
        .collect();
    let tokens = mint_with_claims(&claims);
    let pids: Vec<u32> = fleet
        .envoys
        .iter()
        .map(|e| envoy_pid(e).expect("envoy pid"))
        .collect();

    let stop = AtomicBool::new(false);
    let next = AtomicU64::new(0);
    let tally = Mutex::new(Tally::default());
    let warmup = Duration::from_secs_f64((seconds * 0.1).min(30.0));
    let mut after_warmup = Vec::new();
    let mut rss_peak = vec![0u64; pids.len()];
    let started = Instant::now();
    thread::scope(|scope| {
        for (i, user) in ["demo-user", "demo-user-2"].into_iter().enumerate() {
            let (fleet, stop, tally) = (&fleet, &stop, &tally);
            scope.spawn(move || minter(fleet, user, 0x9e37 + i as u64, cycle, stop, tally));
        }
        for i in 0..conns {
            let (fleet, tokens, next, stop, tally) = (&fleet, &tokens, &next, &stop, &tally);
            scope.spawn(move || guesser(fleet, tokens, 0x51ed + i as u64, next, stop, tally));
        }
        while started.elapsed().as_secs_f64() < seconds {
            thread::sleep(Duration::from_secs(1));
            let now: Vec<(u64, u64)> = pids.iter().map(|p| rss_kb(*p).unwrap_or((0, 0))).collect();
            for (peak, (rss, _)) in rss_peak.iter_mut().zip(&now) {
                *peak = (*peak).max(*rss);
            }
            if after_warmup.is_empty() && started.elapsed() >= warmup {
                after_warmup = now;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let end: Vec<(u64, u64)> = pids.iter().map(|p| rss_kb(*p).unwrap_or((0, 0))).collect();
    let tally = tally.into_inner().unwrap();

    // Figures first, then the verdict.
    let total: u64 = tally.statuses.values().sum();
    println!(
        "\n{total} responses in {:.0} s ({:.0}/s):",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64()
    );
    for ((kind, status), n) in &tally.statuses {
        println!("  {kind:<16} {status} x {n}");
    }
    for (i, (warm, end)) in after_warmup.iter().zip(&end).enumerate() {
        println!(
            "  Envoy {i}: VmRSS {} → {} kB ({:+.1}%), RssAnon {} → {} kB ({:+.1}%), peak VmRSS {} kB",
            warm.0,
            end.0,
            (end.0 as f64 / warm.0 as f64 - 1.0) * 100.0,
            warm.1,
            end.1,
            (end.1 as f64 / warm.1 as f64 - 1.0) * 100.0,
            rss_peak[i]
        );
    }
    let accepted: HashSet<&String> = tally.accepted.iter().collect();
    let consumed = fleet.service_total("consumes");
    println!(
        "  codes accepted: {} ({} distinct), authority consume calls: {consumed}",
        tally.accepted.len(),
        accepted.len()
    );

    let mut failures = Vec::new();
    if !tally.unexpected.is_empty() {
        failures.push(format!("unexpected statuses: {:?}", tally.unexpected));
    }
    if accepted.len() != tally.accepted.len() {
        failures.push("a code was accepted twice".to_string());
    }
    // The store's side: the codes the authority ruled consumed (its own counter, over both
    // replicas) are exactly the codes the clients saw accepted, and its table of used codes
    // (expired rows purged) holds no more than that.
    let ruled_consumed: u64 = fleet
        .services
        .iter()
        .map(|s| {
            s.metric(
                "credential_service_otp_consumes_total",
                &[r#"result="consumed""#],
            )
        })
        .sum();
    let stored = fleet
        .pg
        .count("otp_fleet", "SELECT count(*) FROM used_codes");
    println!(
        "  ruled consumed by the authority: {ruled_consumed}; rows in used_codes now: {stored:?}"
    );
    if ruled_consumed != accepted.len() as u64 {
        failures.push(format!(
            "the authority ruled {ruled_consumed} codes consumed, the clients saw {} accepted",
            accepted.len()
        ));
    }
    if stored.is_none_or(|n| n > accepted.len() as u64) {
        failures.push(format!(
            "the store holds {stored:?} used codes, the clients saw {} accepted",
            accepted.len()
        ));
    }
    for (i, (warm, end)) in after_warmup.iter().zip(&end).enumerate() {
        if end.0 as f64 >= warm.0 as f64 * 1.10 || end.1 as f64 >= warm.1 as f64 * 1.10 {
            failures.push(format!("Envoy {i} grew 10% or more: {warm:?} → {end:?} kB"));
        }
    }
    for (i, envoy) in fleet.envoys.iter().enumerate() {
        let log = envoy.log_text();
        for sign in [
            "[critical]",
            "RuntimeError",
            "panicked",
            "eyJ",
            "correct-horse",
        ] {
            if log.contains(sign) {
                failures.push(format!("Envoy {i}'s log contains {sign:?}"));
            }
        }
    }
    if failures.is_empty() {
        println!("\nfleet soak: PASS");
    } else {
        panic!("fleet soak: FAIL\n- {}", failures.join("\n- "));
    }
}

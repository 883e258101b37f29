//! Soak: a bounded mixed load against one real Envoy (`--concurrency 2`) running the release
//! `.wasm` in front of the reference credential service, then the health checks a long run needs.
//!
//!     make soak                       (SOAK_SECONDS=300 by default; loopback only)
//!     SOAK_SECONDS=30 make soak
//!
//! The load (every request on keep-alive HTTP/1.1 unless it is churn):
//! - cheap threads (SOAK_CONNS, 4), paced to SOAK_RPS (1000) in all: every way the filter refuses
//!   a request before the credential service (no, malformed, expired, badly signed, unknown-key
//!   and scope-less tokens, Accept, Content-Type, bodies, sizes, methods), wrong codes on verify and
//!   on the gates, and the paths the filter passes through or never sees;
//! - two credential threads, one per demo user, each running a cycle every SOAK_CYCLE_MS (500):
//!   a valid create (201, the argon2-bound trickle), the fresh code used on verify (204) or a gate
//!   (forwarded), then replayed (404), a wrong PIN (404), now and then an unknown or unlinked
//!   user, and a create abandoned while its callout is in flight;
//! - a churn thread: SOAK_CHURN_PER_SEC (20) new connections a second, each with one to three
//!   requests, some of them malformed HTTP (Envoy's own 400) or abandoned halfway through the body.
//!
//! Every request kind has the exact set of (status, answer) pairs it may get, where the answer is
//! the JSON:API error `code`, `issued`, `verified`, or which stand-in upstream answered. The
//! throttle never decides: each user's wrong attempts stay below `max_failures` (raised to 100):
//! the demo users reset theirs with every valid create, and wrong codes are spread over minted
//! users, at most 90 each. A 201 code is used only if it cannot collide with one already used.
//! The credential callout timeout is raised to 10 s: on a shared 2-core machine other jobs can
//! stall everything for seconds, and that is not what a soak looks for. The figures show such
//! stalls (how far the load fell behind schedule, the slowest answer, the kernel's CPU pressure).
//!
//! Afterwards (any failure panics, after the figures are printed):
//! - no unexpected status and no transport error;
//! - every `otp_filter.outcome.*` and `otp_filter.credential.*` counter moved by exactly what the
//!   client saw (abandoned creates allow a range), and the credential service counted exactly the
//!   checks the client caused;
//! - the wasm VMs: `wasm.envoy.wasm.runtime.v8.created`/`active` unchanged, no VM reload, no 5xx;
//! - Envoy's log: no critical or error line, no sign of a trap or panic, no secret;
//! - Envoy's VmRSS at the end below 110% of the VmRSS after warm-up (the first 10% of the run, at
//!   most 30 s), and the same for RssAnon: VmRSS also counts pages of the mapped 107 MB binary,
//!   which the kernel reclaims now and then, and that can hide an anonymous-memory leak.
//!
//! Knobs (environment): SOAK_SECONDS (300), SOAK_RPS (1000), SOAK_CONNS (4), SOAK_CYCLE_MS (500),
//! SOAK_CHURN_PER_SEC (20), SOAK_WORKERS (Envoy --concurrency, 2), SOAK_WASM_LOG (debug: the
//! filter logs every decision, so the secret audit sees every path; `info` as in production).
//!
//! Here: the settings and the run, step by step. `stack` starts Envoy and the service and reads
//! them, `tokens` mints, `mix` and `kinds` are the requests and their expected answers, `plan`
//! the load threads (over `client`, counting in `tally`), `load` runs them and samples memory,
//! `checks` (with `audit` for the log) decides, `figures` prints.

// A benchmark fails by panicking, like a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod audit;
mod checks;
mod client;
mod figures;
mod kinds;
mod load;
mod mix;
mod plan;
mod stack;
mod tally;
mod tokens;

use std::thread;
use std::time::Duration;

use harness::bench::envoy_pid;
use harness::*;

use stack::{After, Before};

struct Settings {
    seconds: f64,
    rps: f64,
    conns: usize,
    cycle: Duration,
    churn_per_sec: f64,
    workers: u32,
    wasm_log: String,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        _ => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let s = Settings {
            seconds: env_or("SOAK_SECONDS", 300.0),
            rps: env_or("SOAK_RPS", 1000.0),
            conns: env_or("SOAK_CONNS", 4usize).max(1),
            cycle: Duration::from_millis(env_or("SOAK_CYCLE_MS", 500u64).max(50)),
            churn_per_sec: env_or("SOAK_CHURN_PER_SEC", 20.0),
            workers: env_or("SOAK_WORKERS", 2u32).max(1),
            wasm_log: env_or("SOAK_WASM_LOG", "debug".to_string()),
        };
        assert!(s.seconds >= 5.0, "SOAK_SECONDS must be at least 5");
        assert!(s.rps > 0.0, "SOAK_RPS must be positive");
        assert!(
            matches!(s.wasm_log.as_str(), "debug" | "info"),
            "SOAK_WASM_LOG is debug or info"
        );
        s
    }

    /// The first 10% of the run, at most 30 s.
    fn warmup(&self) -> Duration {
        Duration::from_secs_f64((self.seconds * 0.1).min(30.0))
    }

    /// The banner: what this run will do.
    fn announce(&self) {
        println!(
            "soak: {:.0} s ({:.0} s warm-up), {} cheap connections at {:.0} req/s in all, 2 credential \
             threads (a cycle each {} ms), {:.0} new connections/s, Envoy --concurrency {}, wasm log {}",
            self.seconds,
            self.warmup().as_secs_f64(),
            self.conns,
            self.rps,
            self.cycle.as_millis(),
            self.churn_per_sec,
            self.workers,
            self.wasm_log
        );
    }
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn main() {
    let settings = Settings::from_env();
    settings.announce();
    let (service, envoy) = stack::start(&settings);
    let pid = envoy_pid(&envoy).expect("Envoy's pid");
    let tokens = tokens::mint(&settings);
    let mix = mix::cheap_mix(&tokens);

    // Baselines, right before the load; the load; what it left.
    let before = Before::read(&envoy, &service, pid);
    let load = load::run(&settings, &envoy, pid, &mix, &tokens);
    let after = After::read(&envoy, pid, &before, load.elapsed);
    // Let abandoned callouts land and the log reach its file.
    thread::sleep(Duration::from_millis(1500));

    let findings = checks::run(&envoy, &service, &before, &load, &after);
    figures::print(&settings, &tokens, &before, &load, &after, &findings);
    verdict(envoy, service, &findings.failures);
}

/// PASS, or FAIL with the list (a panic, after the figures).
fn verdict(envoy: Envoy, service: CredentialService, failures: &[String]) {
    let scratch = envoy.log.parent().expect("scratch dir").to_path_buf();
    if failures.is_empty() {
        // Envoy's drop audits its log for secrets once more and stops it; then the scratch
        // directory (config and a log of some MB) goes.
        drop(envoy);
        drop(service);
        let _ = std::fs::remove_dir_all(&scratch);
        println!("soak: PASS");
    } else {
        println!("soak: FAIL (Envoy's config and log: {})", scratch.display());
        for f in failures {
            println!("  - {f}");
        }
        panic!("soak failed: {} problem(s), listed above", failures.len());
    }
}

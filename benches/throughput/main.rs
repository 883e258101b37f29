//! Throughput of the filter inside Envoy (`--concurrency 2`) against a plain Envoy baseline, all in
//! one run on the same machine: closed-loop load from N client threads, one keep-alive HTTP/1.1
//! connection each (TCP_NODELAY), fixed duration per run after a warm-up, every scenario repeated
//! and the median reported. Writes `bench/results.md` and `bench/results.png` and prints the table.
//! Never asserts times: a status other than the expected one aborts that scenario and is reported.
//!
//!     make bench      (builds the .wasm, the services and the Envoy venv first)
//!
//! Knobs (environment): BENCH_CONNS (16), BENCH_WARMUP_SECS (1), BENCH_SECS (5), BENCH_RUNS (3),
//! BENCH_VERIFY_USERS (users minted for (g); 0 = sized from the rates of the first round),
//! BENCH_CREATE_USERS (users for (e), one per connection by default; 1 = one user for all),
//! BENCH_ONLY (e.g. `a,b`: run only these, and print without writing bench/; also the diagnostics
//! `e401` and `e406`, which are off by default), BENCH_H_WASM and BENCH_E_WASM (another .wasm
//! in place of the floor filter, or of otp-filter in config D: an A/B of two builds in one run).
//!
//! Everything runs on loopback with ports the OS picks: five Envoys (one per config), a fast
//! credential stub, a fast "upstream" stub for the proxy hop, the native peer service for (f)
//! (`native_peer`), and the reference credential service serving the JWKS only. (h) loads the
//! bench-only floor filter (`benches/floor-filter`), which `make bench` builds. The scenarios run
//! round-robin (a b c d e g, a b c d e g, ...), so a drift in the machine's state spreads over all
//! of them instead of biasing one.
//!
//! Here: the settings and the run as a whole. `envoys` starts the five Envoys, `stub` is the fast
//! stub, `native_peer` the peer of (f), `scenarios` the table, `runs` one run of a scenario (its
//! load from `client`, the machine's other load from `cpu`), `report` and `chart` the results.

// A benchmark fails by panicking, like a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod chart;
mod client;
mod cpu;
mod envoys;
mod http;
mod native_peer;
mod report;
mod runs;
mod scenarios;
mod stub;

use std::thread;
use std::time::{Duration, Instant};

use harness::*;

use cpu::CpuMeter;
use envoys::{FilterTime, Proxy};
use native_peer::NativePeer;
use runs::{print_run, run_once};
use scenarios::{code_tokens, more_code_scenarios, verify_scenario_with, Scenario};
use stub::FastStub;

struct Settings {
    conns: usize,
    warmup: Duration,
    measure: Duration,
    runs: usize,
    verify_users: usize,
    create_users: usize,
    only: Option<Vec<String>>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            conns: env_or("BENCH_CONNS", 16usize).max(1),
            warmup: Duration::from_secs_f64(env_or("BENCH_WARMUP_SECS", 1.0)),
            measure: Duration::from_secs_f64(env_or("BENCH_SECS", 5.0)),
            runs: env_or("BENCH_RUNS", 3usize).max(1),
            verify_users: env_or("BENCH_VERIFY_USERS", 0usize),
            create_users: env_or("BENCH_CREATE_USERS", 0usize),
            only: std::env::var("BENCH_ONLY").ok().map(|v| {
                v.split(',')
                    .map(|k| format!("({})", k.trim().trim_matches(['(', ')'])))
                    .collect()
            }),
        }
        .with_defaults()
    }

    fn with_defaults(mut self) -> Settings {
        if self.create_users == 0 {
            self.create_users = self.conns;
        }
        self
    }

    /// The listed scenarios with BENCH_ONLY, else all but the diagnostics (keys longer than 3).
    fn enabled(&self, key: &str) -> bool {
        match &self.only {
            Some(keys) => keys.iter().any(|k| k == key),
            None => key.len() == 3,
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let settings = Settings::from_env();
    let wall = Instant::now();

    // The credential stub, then the hop's upstream.
    let stubs = [FastStub::start(), FastStub::start()];
    let jwks = CredentialService::start(&[]);
    let peer = NativePeer::start(stubs[0].port, jwks.port, None);
    let cold_peer = NativePeer::start(stubs[0].port, jwks.port, Some(envoys::COLD_CACHE_ENTRIES));
    let proxies = envoys::start_all(
        stubs[0].port,
        stubs[1].port,
        jwks.port,
        peer.port,
        cold_peer.port,
    );
    let meter = CpuMeter {
        ours: std::iter::once("self".to_string())
            .chain(proxies.iter().filter_map(|p| p.pid).map(|p| p.to_string()))
            .collect(),
    };
    let memory_start: Vec<_> = proxies.iter().map(Proxy::memory_now).collect();

    let mut scenarios = scenarios::table(&settings);
    let (filter_time, authority_time) =
        run_rounds(&settings, &mut scenarios, &proxies, &stubs, &meter);
    let memory = envoys::memory_rows(&proxies, memory_start);

    let report = report::report(
        &settings,
        &scenarios,
        &memory,
        &proxies,
        filter_time.as_ref(),
        authority_time.as_ref(),
        wall.elapsed(),
    );
    println!("\n{report}");
    write_results(&settings, &report, &scenarios, &proxies);
    // The Envoys, the JWKS service and the stubs stop here (the handles kill their processes).
}

/// Rounds: every scenario once per round, in order. The code scenarios (g) to (k) join at the end
/// of the first round: their users are minted then, sized from the rates seen (unless
/// BENCH_VERIFY_USERS). Returns the filter's own histograms, read after (e)'s first run, and F's
/// after (i)'s (the authority callout's round trip).
fn run_rounds(
    settings: &Settings,
    scenarios: &mut Vec<Scenario>,
    proxies: &[Proxy],
    stubs: &[FastStub],
    meter: &CpuMeter,
) -> (Option<FilterTime>, Option<FilterTime>) {
    let mut filter_time: Option<FilterTime> = None;
    let mut authority_time: Option<FilterTime> = None;
    for round in 0..settings.runs {
        for s in scenarios.iter_mut().filter(|s| s.error.is_none()) {
            let port = proxies[s.envoy].envoy.port;
            let misses =
                scenarios::counts_cache_misses(s.key).then(|| cache_misses(&proxies[s.envoy]));
            let run = run_once(settings, port, s, stubs, meter, proxies[s.envoy].pid);
            print_run(s, round, &run);
            if let Some(before) = misses {
                let missed = cache_misses(&proxies[s.envoy]) - before;
                let (m, n) = s.cache_misses.unwrap_or_default();
                s.cache_misses = Some((m + missed, n + run.responses));
                println!(
                    "    token cache misses: {missed} of {} responses",
                    run.responses
                );
            }
            s.error.clone_from(&run.error);
            s.runs.push(run);
            if round == 0 && s.key == "(e)" {
                // The filter's own histograms, (e) only so far: wait for Envoy's next stats
                // flush (every 5 s) so that they cover the run.
                thread::sleep(Duration::from_millis(5200));
                filter_time = FilterTime::read(&proxies[s.envoy].envoy);
            }
        }
        if round == 0 {
            // The code scenarios join now, sized from the rates seen, and run their first round.
            let mut late = Vec::new();
            let verify_tokens = code_tokens(settings, scenarios, "bench-verify");
            if settings.enabled("(g)") {
                late.push(verify_scenario_with(settings, &verify_tokens, &proxies[3]));
            }
            late.extend(more_code_scenarios(
                settings,
                scenarios,
                proxies,
                &verify_tokens,
            ));
            for mut s in late {
                let envoy = &proxies[s.envoy];
                let run = run_once(settings, envoy.envoy.port, &s, stubs, meter, envoy.pid);
                print_run(&s, round, &run);
                s.error.clone_from(&run.error);
                s.runs.push(run);
                if s.key == "(i)" {
                    thread::sleep(Duration::from_millis(5200));
                    authority_time = FilterTime::read_callout(&envoy.envoy, "authority_callout_ms");
                }
                scenarios.push(s);
            }
        }
    }
    (filter_time, authority_time)
}

/// The filter's `token.cache_misses` counter on `proxy` (both VMs). Counters are read live (only
/// histograms wait for a flush); the pause lets the last requests' `on_log` run.
fn cache_misses(proxy: &Proxy) -> u64 {
    thread::sleep(Duration::from_millis(100));
    proxy
        .envoy
        .counters()
        .get("otp_filter.token.cache_misses")
        .copied()
        .unwrap_or(0)
}

/// bench/results.md, .json and .png, unless the run is partial (BENCH_ONLY).
fn write_results(settings: &Settings, report: &str, scenarios: &[Scenario], proxies: &[Proxy]) {
    if settings.only.is_some() {
        // A partial run (BENCH_ONLY) never replaces the full results.
        println!("BENCH_ONLY is set: bench/results.md, .json and .png left as they were");
    } else {
        let dir = root().join("bench");
        std::fs::create_dir_all(&dir).expect("bench/");
        std::fs::write(dir.join("results.md"), report).expect("write results.md");
        let data = chart::data(settings, scenarios, proxies, report);
        chart::write(&dir.join("results.json"), &dir.join("results.png"), &data);
        println!("wrote bench/results.md, bench/results.json and bench/results.png");
    }
}

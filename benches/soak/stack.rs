//! Envoy and the credential service for the soak: the shipped config with the soak's limits, and
//! what is read from them (stats, memory, CPU) right before and right after the load.

use std::collections::BTreeMap;

use harness::bench::{admin_memory, clock_ticks, process_jiffies, replace_once, rss_kb};
use harness::*;
use serde_json::Value;

use crate::Settings;

/// The shipped config with room for 100 failures per user (the load keeps every user below 90),
/// 2 s time steps with a 6 s lifetime (so the two demo users get a fresh code every 2 s and the
/// single-use ledger keeps filling and being swept), and a 10 s credential callout timeout.
fn soak_config(c: String) -> String {
    let c = replace_once(&c, r#""max_failures": 5,"#, r#""max_failures": 100,"#);
    // The credential callout's timeout: 10 s instead of 2 s. The machine is shared, and a
    // stall of a few seconds (seen here while other jobs ran) would otherwise turn argon2 checks
    // into 500 credential-service-timeout; the soak is about health over time, not latency.
    let at = c
        .find(r#""credential_service": {"#)
        .expect("credential_service");
    let timeout = r#""timeout_ms": 2000,"#;
    let i = at
        + c[at..]
            .find(timeout)
            .expect("credential_service.timeout_ms");
    let c = format!(
        "{}{}{}",
        &c[..i],
        r#""timeout_ms": 10000,"#,
        &c[i + timeout.len()..]
    );
    let c = replace_once(&c, r#""step_seconds": 60,"#, r#""step_seconds": 2,"#);
    replace_once(
        &c,
        r#""lifetime_seconds": 300,"#,
        r#""lifetime_seconds": 6,"#,
    )
}

/// The credential service and one Envoy in front of it (SOAK_WORKERS workers, wasm logging at
/// SOAK_WASM_LOG), with its token keys loaded.
pub fn start(settings: &Settings) -> (CredentialService, Envoy) {
    // The service's own lockout is out of the way; the filter's throttle is what is exercised.
    let service = CredentialService::start(&["--max-failures", "1000000"]);
    let envoy =
        Envoy::start_with_workers(&demo_config(service.port, soak_config), settings.workers);
    let r = send(
        envoy.admin_port,
        &request(
            "POST",
            &format!("/logging?wasm={}", settings.wasm_log),
            &[],
            None,
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    envoy.wait_for_keys();
    (service, envoy)
}

/// The kernel's CPU pressure (`some` total, µs): time in which some task waited for a CPU.
fn cpu_pressure_us() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    text.lines()
        .find(|l| l.starts_with("some"))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Every stat whose name contains `filter`, by name (counters and gauges).
pub fn stats(envoy: &Envoy, filter: &str) -> BTreeMap<String, u64> {
    let v = get(
        envoy.admin_port,
        &format!("/stats?format=json&filter={filter}"),
    )
    .json();
    v["stats"]
        .as_array()
        .expect("stats")
        .iter()
        .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["value"].as_u64()?)))
        .collect()
}

/// CPU time (user + system, all threads) of a process (`pid` may be "self"), in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    process_jiffies(pid) as f64 / clock_ticks()
}

/// The baselines, read right before the load.
pub struct Before {
    pub counters: BTreeMap<String, u64>,
    pub wasm: BTreeMap<String, u64>,
    pub http: BTreeMap<String, u64>,
    pub service: Value,
    /// Envoy's (VmRSS, RssAnon) in kB, and its admin `/memory` (`allocated`, `heap_size`).
    pub rss: (u64, u64),
    pub mem: (u64, u64),
    envoy_cpu: f64,
    self_cpu: f64,
    pressure: Option<u64>,
    /// Where Envoy's log ended: the load's lines come after it.
    pub log_at: usize,
}

impl Before {
    pub fn read(envoy: &Envoy, service: &CredentialService, pid: u32) -> Before {
        Before {
            counters: envoy.counters(),
            wasm: stats(envoy, "wasm"),
            http: stats(envoy, "downstream_rq_"),
            service: service.stats(),
            rss: rss_kb(pid).expect("VmRSS"),
            mem: admin_memory(envoy),
            envoy_cpu: cpu_seconds(&pid.to_string()),
            self_cpu: cpu_seconds("self"),
            pressure: cpu_pressure_us(),
            log_at: envoy.log_text().len(),
        }
    }
}

/// Envoy's memory and the CPU used, read right after the load.
pub struct After {
    /// (VmRSS, RssAnon) in kB, (0, 0) if Envoy is gone; admin `/memory` as in `Before`.
    pub rss: (u64, u64),
    pub mem: (u64, u64),
    /// CPU seconds during the load: Envoy's and this process's (the load generator).
    pub envoy_cpu: f64,
    pub self_cpu: f64,
    /// CPU pressure during the load, in % of the run (where the kernel reports it).
    pub pressure: Option<f64>,
}

impl After {
    pub fn read(envoy: &Envoy, pid: u32, before: &Before, elapsed: f64) -> After {
        After {
            rss: rss_kb(pid).unwrap_or((0, 0)),
            mem: admin_memory(envoy),
            envoy_cpu: cpu_seconds(&pid.to_string()) - before.envoy_cpu,
            self_cpu: cpu_seconds("self") - before.self_cpu,
            pressure: before
                .pressure
                .zip(cpu_pressure_us())
                .map(|(a, b)| 100.0 * (b - a) as f64 / 1e6 / elapsed),
        }
    }
}

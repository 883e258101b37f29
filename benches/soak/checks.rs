//! The health checks after the load. Each step adds what failed to `failures` and keeps what the
//! figures show.

use std::collections::BTreeMap;

use harness::*;
use otp_filter::stats::sanitize;

use crate::audit::{audit_log, LogAudit};
use crate::load::Load;
use crate::mib;
use crate::stack::{stats, After, Before};
use crate::tally::Tally;

/// A filter counter: (name, what the client saw, the slack allowed over it, what Envoy moved).
pub type CounterRow = (String, u64, u64, u64);

/// What the checks found: the failures, and the figures they were decided on.
pub struct Findings {
    pub failures: Vec<String>,
    pub counter_rows: Vec<CounterRow>,
    /// Abandoned creates: how far the issued and valid counters (and PIN checks) may exceed.
    pub slack: u64,
    /// The credential service's password and PIN checks during the load.
    pub password_got: u64,
    pub pin_got: u64,
    /// (name, before, after) of every `wasm.` stat.
    pub wasm_rows: Vec<(String, u64, u64)>,
    /// Envoy's downstream answers during the load: 5xx, 2xx, 4xx.
    pub rq_5xx: u64,
    pub rq_2xx: u64,
    pub rq_4xx: u64,
    pub gauges: BTreeMap<String, u64>,
    pub log: LogAudit,
    pub memory: Growth,
}

/// Envoy's memory after the warm-up (or at the start, if the run ended before) and its growth
/// from there to the end, in %.
pub struct Growth {
    pub rss_warm: u64,
    pub anon_warm: u64,
    pub mem_warm: (u64, u64),
    pub rss: f64,
    pub anon: f64,
}

pub fn run(
    envoy: &Envoy,
    service: &CredentialService,
    before: &Before,
    load: &Load,
    after: &After,
) -> Findings {
    let mut failures: Vec<String> = Vec::new();
    let tally = &load.tally;
    load_failures(load, &mut failures);
    let slack = tally.abandoned_in_callout;
    let counter_rows = counters(envoy, before, tally, &mut failures);
    let (password_got, pin_got) = service_checks(service, before, tally, &mut failures);
    let wasm_rows = vms(envoy, before, &mut failures);
    let (rq_5xx, rq_2xx, rq_4xx) = downstream(envoy, before, &mut failures);
    let gauges = stats(envoy, "otp_filter.state");
    let log = log(envoy, before, &mut failures);
    let memory = memory(before, load, after, &mut failures);
    Findings {
        failures,
        counter_rows,
        slack,
        password_got,
        pin_got,
        wasm_rows,
        rq_5xx,
        rq_2xx,
        rq_4xx,
        gauges,
        log,
        memory,
    }
}

/// No unexpected answer or transport error, and enough guess users.
fn load_failures(load: &Load, failures: &mut Vec<String>) {
    let unexpected = load.unexpected;
    if unexpected > 0 {
        failures.push(format!(
            "{unexpected} unexpected answers or transport errors; the first:\n    {}",
            load.details.join("\n    ")
        ));
    }
    if load.tally.pool_exhausted > 0 {
        failures.push(format!(
            "the guess-user pool ran out {} times (sized too small for this rate)",
            load.tally.pool_exhausted
        ));
    }
}

/// The filter's counters against what the client saw. Abandoned creates may or may not have
/// been answered (and their callouts counted), so those allow a range.
fn counters(
    envoy: &Envoy,
    before: &Before,
    tally: &Tally,
    failures: &mut Vec<String>,
) -> Vec<CounterRow> {
    let counters = envoy.counters();
    let slack = tally.abandoned_in_callout;
    let mut counter_rows: Vec<CounterRow> = Vec::new();
    let delta = |name: &str| {
        counters.get(name).copied().unwrap_or(0) - before.counters.get(name).copied().unwrap_or(0)
    };
    for name in counters
        .keys()
        .filter(|n| n.starts_with("otp_filter.outcome.") || n.starts_with("otp_filter.credential."))
    {
        let (group, part) = name
            .trim_start_matches("otp_filter.")
            .split_once('.')
            .unwrap();
        let client_map = if group == "outcome" {
            &tally.outcomes
        } else {
            &tally.results
        };
        let expected = client_map
            .iter()
            .filter(|(k, _)| sanitize(k) == part)
            .map(|(_, n)| *n)
            .sum::<u64>();
        let allowed = if part == "issued" || part == "valid" {
            slack
        } else {
            0
        };
        let got = delta(name);
        if got != 0 || expected != 0 {
            counter_rows.push((name.clone(), expected, allowed, got));
        }
        if got < expected || got > expected + allowed {
            failures.push(format!(
                "{name}: moved by {got}, the client saw {expected}{}",
                if allowed > 0 {
                    format!(" (+ up to {allowed} abandoned)")
                } else {
                    String::new()
                }
            ));
        }
    }
    for (k, n) in tally.outcomes.iter().chain(tally.results.iter()) {
        let exists = counters
            .keys()
            .any(|c| c.ends_with(&format!(".{}", sanitize(k))));
        if !exists && *n > 0 {
            failures.push(format!("no filter counter for {k} (the client saw {n})"));
        }
    }
    counter_rows
}

/// The credential service counts every check it was asked for.
fn service_checks(
    service: &CredentialService,
    before: &Before,
    tally: &Tally,
    failures: &mut Vec<String>,
) -> (u64, u64) {
    let slack = tally.abandoned_in_callout;
    let service_after = service.stats();
    let service_delta =
        |k: &str| service_after[k].as_u64().unwrap_or(0) - before.service[k].as_u64().unwrap_or(0);
    let (password_got, pin_got) = (
        service_delta("password_checks"),
        service_delta("pin_checks"),
    );
    if password_got != tally.password_checks {
        failures.push(format!(
            "credential service: {password_got} password checks, the client caused {}",
            tally.password_checks
        ));
    }
    if pin_got < tally.pin_checks || pin_got > tally.pin_checks + slack {
        failures.push(format!(
            "credential service: {pin_got} PIN checks, the client caused {} (+ up to {slack} abandoned)",
            tally.pin_checks
        ));
    }
    (password_got, pin_got)
}

/// The VMs: none created, lost or reloaded during the load.
fn vms(envoy: &Envoy, before: &Before, failures: &mut Vec<String>) -> Vec<(String, u64, u64)> {
    let wasm_after = stats(envoy, "wasm");
    let wasm_rows: Vec<(String, u64, u64)> = wasm_after
        .iter()
        .filter(|(k, _)| k.starts_with("wasm."))
        .map(|(k, v)| (k.clone(), before.wasm.get(k).copied().unwrap_or(0), *v))
        .collect();
    for (name, before, after) in &wasm_rows {
        let vm_health = name.ends_with(".active")
            || name.ends_with(".created")
            || name.ends_with("wasm_vm_count")
            || name.contains("vm_reload");
        if vm_health && before != after {
            failures.push(format!("{name}: {before} before the load, {after} after"));
        }
        if name.contains("vm_reload") && *after != 0 {
            failures.push(format!("{name} = {after}: a VM was reloaded"));
        }
    }
    if !wasm_after.contains_key("wasm.envoy.wasm.runtime.v8.active") {
        failures.push("no wasm.envoy.wasm.runtime.v8.active stat".into());
    }
    wasm_rows
}

/// No 5xx from Envoy during the load; (5xx, 2xx, 4xx).
fn downstream(envoy: &Envoy, before: &Before, failures: &mut Vec<String>) -> (u64, u64, u64) {
    let http_after = stats(envoy, "downstream_rq_");
    let http_delta = |k: &str| {
        http_after.get(k).copied().unwrap_or(0) - before.http.get(k).copied().unwrap_or(0)
    };
    let rq_5xx = http_delta("http.public.downstream_rq_5xx");
    if rq_5xx != 0 {
        failures.push(format!("Envoy answered {rq_5xx} requests with a 5xx"));
    }
    (
        rq_5xx,
        http_delta("http.public.downstream_rq_2xx"),
        http_delta("http.public.downstream_rq_4xx"),
    )
}

/// Envoy's log: no error, no sign of a failed VM, no secret.
fn log(envoy: &Envoy, before: &Before, failures: &mut Vec<String>) -> LogAudit {
    let log = audit_log(&envoy.log_text(), before.log_at);
    if log.bad_count > 0 {
        let lines: Vec<String> = log.bad.iter().map(|(w, l)| format!("{w}: {l}")).collect();
        failures.push(format!(
            "Envoy's log has {} suspicious lines; the first:\n    {}",
            log.bad_count,
            lines.join("\n    ")
        ));
    }
    log
}

/// Envoy's VmRSS and RssAnon at the end below 110% of what they were after the warm-up.
fn memory(before: &Before, load: &Load, after: &After, failures: &mut Vec<String>) -> Growth {
    let (rss_end, anon_end) = after.rss;
    let ((rss_warm, anon_warm), mem_warm) = load.trace.warm.unwrap_or((before.rss, before.mem));
    let growth = 100.0 * (rss_end as f64 - rss_warm as f64) / rss_warm as f64;
    let anon_growth = 100.0 * (anon_end as f64 - anon_warm as f64) / anon_warm as f64;
    for (what, warm, end, g) in [
        ("VmRSS", rss_warm, rss_end, growth),
        ("RssAnon", anon_warm, anon_end, anon_growth),
    ] {
        if end as f64 >= warm as f64 * 1.10 {
            failures.push(format!(
                "Envoy's {what} grew {g:.1}% after warm-up ({} → {}; limit 10%)",
                mib(warm),
                mib(end)
            ));
        }
    }
    Growth {
        rss_warm,
        anon_warm,
        mem_warm,
        rss: growth,
        anon: anon_growth,
    }
}

//! The figures printed after every soak, pass or fail: the load, the answers per kind, the filter's
//! counters against what the client saw, the VMs, Envoy's log and its memory over the run.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::checks::Findings;
use crate::load::Load;
use crate::stack::{After, Before};
use crate::tokens::{Tokens, GUESS_BUDGET};
use crate::{mib, Settings};

pub fn print(
    settings: &Settings,
    tokens: &Tokens,
    before: &Before,
    load: &Load,
    after: &After,
    findings: &Findings,
) {
    let mut out = String::new();
    let w = &mut out;
    summary(w, settings, load, after);
    kinds(w, load, tokens);
    counters(w, load, findings);
    vms(w, findings);
    memory(w, before, load, after, findings);
    println!("{out}");
}

/// How long the load ran, what it sent, how late it fell behind and the CPU it took.
fn summary(w: &mut String, settings: &Settings, load: &Load, after: &After) {
    let (elapsed, warmup, tally) = (load.elapsed, settings.warmup(), &load.tally);
    let (envoy_cpu, self_cpu, pressure) = (after.envoy_cpu, after.self_cpu, after.pressure);
    writeln!(w, "\n== soak figures ==").unwrap();
    writeln!(
        w,
        "duration {elapsed:.1} s (warm-up {:.0} s); {} responses, {:.0} req/s; {} connections opened; \
         {} abandoned mid-body, {} abandoned during the callout",
        warmup.as_secs_f64(),
        tally.responses,
        tally.responses as f64 / elapsed,
        tally.connections,
        tally.abandoned_body,
        tally.abandoned_in_callout
    )
    .unwrap();
    let last = tally.overruns.iter().max_by_key(|(_, d)| *d);
    if let Some((name, d)) = last {
        writeln!(
            w,
            "last load thread ({name}) stopped {:.2} s after the end",
            d.as_secs_f64()
        )
        .unwrap();
    }
    writeln!(
        w,
        "slowest answer {:.0} ms ({}); load threads at most {:.0} ms behind schedule; machine \
         stalls: a 50 ms sleeper overslept by up to {:.0} ms ({} times over 250 ms); CPU pressure \
         (some task waiting for a CPU) {}",
        tally.slowest.0.as_secs_f64() * 1e3,
        tally.slowest.1,
        tally.max_lag.as_secs_f64() * 1e3,
        tally.max_oversleep.as_secs_f64() * 1e3,
        tally.stalls,
        pressure.map_or("n/a".to_string(), |p| format!("{p:.0}% of the run"))
    )
    .unwrap();
    writeln!(
        w,
        "CPU: Envoy {:.1} s ({:.0}% of one core, {:.0} µs/response), load generator {:.1} s",
        envoy_cpu,
        100.0 * envoy_cpu / elapsed,
        1e6 * envoy_cpu / tally.responses.max(1) as f64,
        self_cpu
    )
    .unwrap();
}

/// The answers per request kind, and how the fresh codes and guess users were used.
fn kinds(w: &mut String, load: &Load, tokens: &Tokens) {
    let tally = &load.tally;
    writeln!(w, "\n| kind | responses | answers (status label: count) | closed by Envoy | transport errors |").unwrap();
    writeln!(w, "|---|---:|---|---:|---:|").unwrap();
    for (name, k) in &tally.kinds {
        let n: u64 = k.answers.values().sum();
        let answers: Vec<String> = k
            .answers
            .iter()
            .map(|((s, l), c)| format!("{s} {l}: {c}"))
            .collect();
        writeln!(
            w,
            "| {name} | {n} | {} | {} | {} |",
            answers.join(", "),
            k.closed_by_envoy,
            k.transport_errors
        )
        .unwrap();
    }
    writeln!(
        w,
        "\nfresh codes skipped (equal to a recently used code): {}; guess users minted: {}, used: {}",
        tally.fresh_codes_skipped,
        tokens.guesses.tokens.len(),
        tokens
            .guesses
            .next
            .load(Ordering::Relaxed)
            .div_ceil(GUESS_BUDGET)
            .min(tokens.guesses.tokens.len() as u64)
    )
    .unwrap();
}

/// The filter's counters and the credential service's checks against what the client saw, and
/// the filter's state gauges.
fn counters(w: &mut String, load: &Load, findings: &Findings) {
    let tally = &load.tally;
    let f = findings;
    let (password_got, pin_got, slack) = (f.password_got, f.pin_got, f.slack);
    writeln!(w, "\n| filter counter | client saw | Envoy moved by |").unwrap();
    writeln!(w, "|---|---:|---:|").unwrap();
    for (name, expected, allowed, got) in &f.counter_rows {
        let e = if *allowed > 0 {
            format!("{expected} (+ ≤ {allowed})")
        } else {
            expected.to_string()
        };
        writeln!(w, "| {name} | {e} | {got} |").unwrap();
    }
    writeln!(
        w,
        "\ncredential service: password checks {password_got} (client {}), PIN checks {pin_got} (client {} + ≤ {slack} abandoned)",
        tally.password_checks, tally.pin_checks
    )
    .unwrap();
    for (k, v) in &f.gauges {
        writeln!(w, "{k} = {v}").unwrap();
    }
}

/// The wasm stats before and after, the downstream answers and the log audit.
fn vms(w: &mut String, findings: &Findings) {
    let (rq_5xx, log) = (findings.rq_5xx, &findings.log);
    writeln!(w, "\n| wasm stat | before | after |").unwrap();
    writeln!(w, "|---|---:|---:|").unwrap();
    for (name, before, after) in &findings.wasm_rows {
        writeln!(w, "| {name} | {before} | {after} |").unwrap();
    }
    writeln!(
        w,
        "downstream 5xx during the load: {rq_5xx}; 2xx {}, 4xx {}",
        findings.rq_2xx, findings.rq_4xx
    )
    .unwrap();
    writeln!(
        w,
        "\nEnvoy log: {} lines, {:.1} MB; by level {:?}; suspicious lines {}; filter warnings \
         before the load (keys loading) {}",
        log.lines,
        log.bytes as f64 / 1e6,
        log.by_level,
        log.bad_count,
        log.startup_warnings
    )
    .unwrap();
}

/// Envoy's memory: at the start, after the warm-up, at the end, its extremes and a timeline.
fn memory(w: &mut String, before: &Before, load: &Load, after: &After, findings: &Findings) {
    let elapsed = load.elapsed;
    let ((rss_start, anon_start), mem_start) = (before.rss, before.mem);
    let ((rss_end, anon_end), mem_end) = (after.rss, after.mem);
    let m = &findings.memory;
    let (rss_warm, anon_warm, mem_warm) = (m.rss_warm, m.anon_warm, m.mem_warm);
    let (growth, anon_growth) = (m.rss, m.anon);
    let ((rss_peak, anon_peak), (rss_low, anon_low)) = (load.trace.peak, load.trace.low);
    let timeline = &load.trace.timeline;
    writeln!(
        w,
        "\nVmRSS: start {}, after warm-up {}, end {}, peak / low after warm-up {} / {}; growth after \
         warm-up {growth:+.1}% (limit +10%), end over the low {:+.1}%",
        mib(rss_start),
        mib(rss_warm),
        mib(rss_end),
        mib(rss_peak.max(rss_end)),
        mib(rss_low.min(rss_end)),
        100.0 * (rss_end as f64 / rss_low.min(rss_end).max(1) as f64 - 1.0)
    )
    .unwrap();
    writeln!(
        w,
        "RssAnon: start {}, after warm-up {}, end {}, peak / low after warm-up {} / {}; growth after \
         warm-up {anon_growth:+.1}% (limit +10%), end over the low {:+.1}%",
        mib(anon_start),
        mib(anon_warm),
        mib(anon_end),
        mib(anon_peak.max(anon_end)),
        mib(anon_low.min(anon_end)),
        100.0 * (anon_end as f64 / anon_low.min(anon_end).max(1) as f64 - 1.0)
    )
    .unwrap();
    writeln!(
        w,
        "Envoy /memory allocated / heap_size: start {:.1} / {:.1} MiB, after warm-up {:.1} / {:.1} MiB, end {:.1} / {:.1} MiB",
        mem_start.0 as f64 / 1048576.0,
        mem_start.1 as f64 / 1048576.0,
        mem_warm.0 as f64 / 1048576.0,
        mem_warm.1 as f64 / 1048576.0,
        mem_end.0 as f64 / 1048576.0,
        mem_end.1 as f64 / 1048576.0
    )
    .unwrap();
    let marks: Vec<String> = (0..=10)
        .filter_map(|i| {
            let at = elapsed * f64::from(i) / 10.0;
            timeline
                .iter()
                .min_by(|a, b| (a.0 - at).abs().total_cmp(&(b.0 - at).abs()))
                .map(|(t, (r, a))| {
                    format!(
                        "{t:.0}s {:.1}/{:.1}",
                        *r as f64 / 1024.0,
                        *a as f64 / 1024.0
                    )
                })
        })
        .collect();
    writeln!(w, "VmRSS/RssAnon timeline (MiB): {}", marks.join(", ")).unwrap();
}

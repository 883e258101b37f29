//! What the service counts: Prometheus metrics for `GET /metrics`, and the per-process
//! counters of `GET /v1/stats` that the end-to-end tests read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels2 = [(&'static str, &'static str); 2];
type Labels1 = [(&'static str, &'static str); 1];

/// Prometheus metrics. Label values come from fixed sets, never from requests (a user id as a
/// label would be both a leak and an unbounded series count).
pub struct Metrics {
    registry: Registry,
    checks: Family<Labels2, Counter>,
    locks: Counter,
    hard_locks: Counter,
    consumes: Family<Labels1, Counter>,
    failures: Family<Labels1, Counter>,
    rehashes: Counter,
    argon2: Family<Labels1, Histogram, fn() -> Histogram>,
}

fn argon2_histogram() -> Histogram {
    // 1 ms to ~16 s: a cheap test hash to a machine starved of CPU.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("credential_service");
        let checks = Family::<Labels2, Counter>::default();
        registry.register(
            "checks",
            "Password and PIN checks answered, by kind and result",
            checks.clone(),
        );
        let locks = Counter::default();
        registry.register(
            "locks",
            "Temporary locks engaged (a user reached a multiple of --max-failures)",
            locks.clone(),
        );
        let hard_locks = Counter::default();
        registry.register(
            "hard_locks",
            "Hard locks engaged (a user reached --hard-lock-after consecutive failures)",
            hard_locks.clone(),
        );
        let consumes = Family::<Labels1, Counter>::default();
        registry.register(
            "otp_consumes",
            "Answers of POST /v1/otp/consume, by result",
            consumes.clone(),
        );
        let failures = Family::<Labels1, Counter>::default();
        registry.register(
            "otp_failures",
            "Answers of POST /v1/otp/failure, by result",
            failures.clone(),
        );
        let rehashes = Counter::default();
        registry.register(
            "rehashes",
            "Secrets rehashed after a successful check (pepper rotation, new parameters)",
            rehashes.clone(),
        );
        let argon2 =
            Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(argon2_histogram);
        registry.register(
            "argon2_duration_seconds",
            "Time of one argon2 run on the blocking pool, by operation (verify, hash)",
            argon2.clone(),
        );
        Metrics {
            registry,
            checks,
            locks,
            hard_locks,
            consumes,
            failures,
            rehashes,
            argon2,
        }
    }

    pub fn check(&self, kind: &'static str, result: &'static str) {
        self.checks
            .get_or_create(&[("kind", kind), ("result", result)])
            .inc();
    }

    pub fn lock(&self, hard: bool) {
        if hard {
            self.hard_locks.inc();
        } else {
            self.locks.inc();
        }
    }

    pub fn consume(&self, result: &'static str) {
        self.consumes.get_or_create(&[("result", result)]).inc();
    }

    pub fn failure(&self, result: &'static str) {
        self.failures.get_or_create(&[("result", result)]).inc();
    }

    pub fn rehash(&self) {
        self.rehashes.inc();
    }

    pub fn observe_argon2(&self, op: &'static str, took: Duration) {
        self.argon2
            .get_or_create(&[("op", op)])
            .observe(took.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The counters of `GET /v1/stats`, per process, for the tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub password_checks: AtomicU64,
    pub pin_checks: AtomicU64,
    /// Calls to the verify path, whatever their outcome.
    pub requests: AtomicU64,
    /// Calls to the JWKS path, whatever their outcome.
    pub jwks_requests: AtomicU64,
    /// Calls to the introspection path, whatever their outcome.
    pub introspections: AtomicU64,
    /// Well-formed, authorised consume requests (each asked the store).
    pub consumes: AtomicU64,
    /// Well-formed, authorised failure reports (each asked the store).
    pub failure_reports: AtomicU64,
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub fn to_json(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            r#"{{"password_checks":{},"pin_checks":{},"requests":{},"jwks_requests":{},"introspections":{},"consumes":{},"failure_reports":{}}}"#,
            get(&self.password_checks),
            get(&self.pin_checks),
            get(&self.requests),
            get(&self.jwks_requests),
            get(&self.introspections),
            get(&self.consumes),
            get(&self.failure_reports),
        )
    }
}

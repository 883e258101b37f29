//! The filter's stats, defined with Envoy once per VM from the names in `crate::stats` (Envoy
//! shares the stats themselves across VMs by name). Counting is best effort: a failed increment
//! never fails a request.

use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};

use super::host;
use crate::callout::Upstream;
use crate::stats;

/// Stat ids of this VM.
pub struct Stats {
    pub outcomes: HashMap<&'static str, u32>,
    pub credential: HashMap<&'static str, u32>,
    pub authority: HashMap<&'static str, u32>,
    pub jwks_ok: u32,
    pub jwks_failed: u32,
    pub corrupt_fenced: u32,
    pub single_use_records: u32,
    pub throttled_users: u32,
    pub credential_latency_ms: u32,
    pub authority_latency_ms: u32,
    pub filter_time_us: u32,
    pub token_cache_misses: u32,
}

impl Stats {
    pub fn define() -> Result<Stats, Status> {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name);
        let mut outcomes = HashMap::new();
        for outcome in stats::all_outcomes() {
            outcomes.insert(outcome, counter(&stats::outcome(outcome))?);
        }
        let mut credential = HashMap::new();
        for result in stats::credential_results() {
            credential.insert(result, counter(&stats::credential(result))?);
        }
        let mut authority = HashMap::new();
        for result in stats::authority_results() {
            authority.insert(result, counter(&stats::authority(result))?);
        }
        let histogram = |name: &str| hostcalls::define_metric(MetricType::Histogram, name);
        Ok(Stats {
            outcomes,
            credential,
            authority,
            jwks_ok: counter(stats::JWKS_FETCH_OK)?,
            jwks_failed: counter(stats::JWKS_FETCH_FAILED)?,
            corrupt_fenced: counter(stats::SINGLE_USE_CORRUPT_FENCED)?,
            single_use_records: hostcalls::define_metric(
                MetricType::Gauge,
                stats::SINGLE_USE_RECORDS,
            )?,
            throttled_users: hostcalls::define_metric(MetricType::Gauge, stats::THROTTLED_USERS)?,
            credential_latency_ms: histogram(stats::CREDENTIAL_LATENCY_MS)?,
            authority_latency_ms: histogram(stats::AUTHORITY_LATENCY_MS)?,
            filter_time_us: histogram(stats::FILTER_TIME_US)?,
            token_cache_misses: counter(stats::TOKEN_CACHE_MISSES)?,
        })
    }

    // Stats are best effort: a failed increment must never fail a request.
    pub fn count(&self, id: Option<&u32>) {
        if let Some(id) = id {
            let _ = host::increment_metric(*id, 1);
        }
    }

    pub fn outcome(&self, outcome: &str) {
        self.count(self.outcomes.get(outcome));
    }

    /// A callout's answer, in its counter group, and how long the callout took.
    pub fn call(&self, upstream: Upstream, result: &str, latency_ms: u64) {
        let (counters, latency) = match upstream {
            Upstream::Authority => (&self.authority, self.authority_latency_ms),
            _ => (&self.credential, self.credential_latency_ms),
        };
        self.count(counters.get(result));
        self.record(latency, latency_ms);
    }

    pub fn record(&self, id: u32, value: u64) {
        let _ = host::record_metric(id, value);
    }
}

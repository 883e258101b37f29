//! The filter's stats: names only (host-free); the adapter defines them with Envoy and counts.
//!
//! Every stat is `otp_filter.<group>.<name>`, so one `stats_tags` regex per group turns the last
//! part into a tag (`envoy/stats/tags.yaml`): `otp_filter.outcome.issued` becomes
//! `otp_filter.outcome{otp_outcome="issued"}` in `/stats/prometheus`.

use crate::callout::authority::AuthorityResult;
use crate::callout::credential::CallResult;
use crate::reply::failure::Failure;

pub const PREFIX: &str = "otp_filter";

/// Successful outcomes; every failure outcome is its error `code`.
pub const SUCCESSES: [&str; 3] = ["issued", "verified", "gate_passed"];

/// What a credential callout came back with (`CallResult` names them).
pub fn credential_results() -> impl Iterator<Item = &'static str> {
    CallResult::ALL.into_iter().map(CallResult::name)
}

/// What the one-time-use authority ruled (`AuthorityResult` names them).
pub fn authority_results() -> impl Iterator<Item = &'static str> {
    AuthorityResult::ALL.into_iter().map(AuthorityResult::name)
}

/// Stat names may not carry the `:` of `otp:invalid`; tags and Prometheus want `[a-z0-9_]`.
pub fn sanitize(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

pub fn outcome(outcome: &str) -> String {
    format!("{PREFIX}.outcome.{}", sanitize(outcome))
}

pub fn credential(result: &str) -> String {
    format!("{PREFIX}.credential.{result}")
}

pub fn authority(result: &str) -> String {
    format!("{PREFIX}.authority.{result}")
}

/// Every outcome counter, defined at start so each shows (as 0) before it first happens.
pub fn all_outcomes() -> impl Iterator<Item = &'static str> {
    SUCCESSES
        .into_iter()
        .chain(Failure::ALL_CODES.iter().copied())
}

pub const JWKS_FETCH_OK: &str = "otp_filter.jwks.fetch_ok";
pub const JWKS_FETCH_FAILED: &str = "otp_filter.jwks.fetch_failed";
/// Corrupt single-use buckets found and fenced (see `single_use`); anything above 0 wants a look.
pub const SINGLE_USE_CORRUPT_FENCED: &str = "otp_filter.state.single_use_corrupt_fenced";
pub const SINGLE_USE_RECORDS: &str = "otp_filter.state.single_use_records";
pub const THROTTLED_USERS: &str = "otp_filter.state.throttled_users";
pub const CREDENTIAL_LATENCY_MS: &str = "otp_filter.time.credential_callout_ms";
pub const AUTHORITY_LATENCY_MS: &str = "otp_filter.time.authority_callout_ms";
pub const FILTER_TIME_US: &str = "otp_filter.time.filter_us";
/// Verified-token cache lookups that missed: each cost a signature check (jwt mode) or an
/// introspection callout. With `outcome` counters this gives the cache's hit ratio.
pub const TOKEN_CACHE_MISSES: &str = "otp_filter.token.cache_misses";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prometheus_friendly() {
        assert_eq!(outcome("otp:invalid"), "otp_filter.outcome.otp_invalid");
        assert_eq!(outcome("token-expired"), "otp_filter.outcome.token_expired");
        let names: Vec<String> = all_outcomes().map(outcome).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "no two outcomes share a stat");
        assert!(names.iter().all(|n| n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')));
    }
}

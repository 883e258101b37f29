//! The remote key set: a JWKS fetched from a cluster, refreshed on a timer and early when a token
//! names a key we do not know, with the last good set kept when a refresh fails.
//!
//! This is the scheduling and parsing only; the adapter sends the fetches and feeds back answers.
//! Each Envoy worker (VM) keeps its own copy, as Envoy's `jwt_authn` does per thread.

use std::time::Duration;

use serde_json::Value;

use crate::callout::UpstreamSettings;
use crate::token::jwk::KeySet;

/// A JWKS larger than this is refused unread (Keycloak realms publish a few KiB).
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct RemoteJwksSettings {
    pub upstream: UpstreamSettings,
    /// How long a fetched set is used before it is fetched again.
    pub refresh: Duration,
    /// The least time between two fetches caused by unknown `kid`s: a client inventing key ids
    /// must not be able to turn us into a flood against the JWKS server.
    pub min_refetch: Duration,
}

/// What the adapter sends to fetch the set.
pub struct Fetch {
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

pub struct RemoteJwks {
    settings: RemoteJwksSettings,
    keys: Option<KeySet>,
    in_flight_since_ms: Option<u64>,
    last_attempt_ms: Option<u64>,
    last_success_ms: Option<u64>,
    consecutive_failures: u32,
    refetch_wanted: bool,
}

/// Retries after a failure wait 1 s, 2 s, 4 s … up to this.
const MAX_BACKOFF_MS: u64 = 30_000;

impl RemoteJwks {
    pub fn new(settings: RemoteJwksSettings) -> Self {
        RemoteJwks {
            settings,
            keys: None,
            in_flight_since_ms: None,
            last_attempt_ms: None,
            last_success_ms: None,
            consecutive_failures: 0,
            refetch_wanted: false,
        }
    }

    pub fn settings(&self) -> &RemoteJwksSettings {
        &self.settings
    }

    /// The last good set, if one was ever loaded.
    pub fn keys(&self) -> Option<&KeySet> {
        self.keys.as_ref()
    }

    /// A token named a key we do not have: fetch again as soon as the rate limit allows.
    pub fn want_refetch(&mut self) {
        self.refetch_wanted = true;
    }

    /// Called on every tick: returns a fetch to send now, if one is due.
    pub fn due(&mut self, now_ms: u64) -> Option<Fetch> {
        if let Some(since) = self.in_flight_since_ms {
            // Envoy always answers a callout, but never wait forever on one that got lost.
            let give_up = since + self.settings.upstream.timeout.as_millis() as u64 + 5_000;
            if now_ms < give_up {
                return None;
            }
            self.in_flight_since_ms = None;
            self.consecutive_failures += 1;
        }
        let since_attempt = self.last_attempt_ms.map(|t| now_ms.saturating_sub(t));
        let backoff =
            (1_000u64 << self.consecutive_failures.saturating_sub(1).min(5)).min(MAX_BACKOFF_MS);
        let due = match (since_attempt, &self.keys) {
            (None, _) => true,
            (Some(elapsed), _) if self.consecutive_failures > 0 => elapsed >= backoff,
            (Some(_), None) => true,
            (Some(elapsed), Some(_)) => {
                let since_success = self
                    .last_success_ms
                    .map_or(u64::MAX, |t| now_ms.saturating_sub(t));
                since_success >= self.settings.refresh.as_millis() as u64
                    || (self.refetch_wanted
                        && elapsed >= self.settings.min_refetch.as_millis() as u64)
            }
        };
        if !due {
            return None;
        }
        self.in_flight_since_ms = Some(now_ms);
        self.last_attempt_ms = Some(now_ms);
        self.refetch_wanted = false;
        Some(Fetch {
            headers: {
                let mut headers = self.settings.upstream.pseudo_headers("GET");
                headers.push(("accept".into(), "application/json".into()));
                headers
            },
            timeout: self.settings.upstream.timeout,
        })
    }

    /// The fetch could not be sent at all (unknown cluster).
    pub fn on_not_sent(&mut self) {
        self.in_flight_since_ms = None;
        self.consecutive_failures += 1;
    }

    /// The early fetch made while the VM configures itself could not be sent: Envoy may still be
    /// starting, or only validating the config (`--mode validate`, no clusters). Not a failure;
    /// the next tick tries again with no backoff.
    pub fn on_early_fetch_not_sent(&mut self) {
        self.in_flight_since_ms = None;
        self.last_attempt_ms = None;
    }

    /// The fetch's answer. On success the new set replaces the old one and the number of usable
    /// keys is returned with notes on keys that were skipped; on failure the old set stays.
    pub fn on_answer(
        &mut self,
        status: Option<u16>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(usize, Vec<String>), String> {
        self.in_flight_since_ms = None;
        match parse(status, body) {
            Ok((keys, skipped)) => {
                let count = keys.len();
                self.keys = Some(keys);
                self.last_success_ms = Some(now_ms);
                self.consecutive_failures = 0;
                Ok((count, skipped))
            }
            Err(why) => {
                self.consecutive_failures += 1;
                Err(why)
            }
        }
    }
}

fn parse(status: Option<u16>, body: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    match status {
        Some(200) => {}
        Some(other) => return Err(format!("status {other}")),
        None => return Err("no answer".into()),
    }
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let jwks: Value = serde_json::from_slice(body).map_err(|_| "not JSON".to_string())?;
    // A realm's JWKS also lists keys we must not use (encryption keys, other algorithms): those are
    // skipped, not fatal. Only a set with no usable key is refused.
    let mut skipped = Vec::new();
    let keys = KeySet::from_jwks(&jwks, "jwks", &mut skipped);
    if keys.is_empty() {
        let mut why = "no usable key".to_string();
        if !skipped.is_empty() {
            why.push_str(&format!(" ({})", skipped.join("; ")));
        }
        return Err(why);
    }
    Ok((keys, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    fn remote() -> RemoteJwks {
        RemoteJwks::new(RemoteJwksSettings {
            upstream: crate::callout::UpstreamSettings {
                cluster: "jwks".into(),
                authority: "idp".into(),
                path: "/certs".into(),
                timeout: Duration::from_millis(1000),
            },
            refresh: Duration::from_secs(300),
            min_refetch: Duration::from_secs(30),
        })
    }

    fn jwks_body() -> Vec<u8> {
        testkit::jwks().to_string().into_bytes()
    }

    #[test]
    fn fetches_at_once_then_on_the_refresh_timer() {
        let mut r = remote();
        let fetch = r.due(0).expect("first fetch is immediate");
        assert!(fetch.headers.contains(&(":path".into(), "/certs".into())));
        assert!(r.due(10).is_none(), "one fetch in flight at a time");
        let (count, skipped) = r.on_answer(Some(200), &jwks_body(), 50).unwrap();
        assert_eq!(
            (count, skipped.len()),
            (testkit::jwks()["keys"].as_array().unwrap().len(), 0)
        );
        assert!(r.keys().is_some());
        assert!(r.due(299_000).is_none());
        assert!(r.due(300_050).is_some());
    }

    #[test]
    fn an_early_fetch_that_cannot_be_sent_is_retried_at_once() {
        let mut r = remote();
        assert!(r.due(0).is_some());
        r.on_early_fetch_not_sent();
        assert!(
            r.due(500).is_some(),
            "no backoff after the configure-time attempt"
        );
        r.on_not_sent();
        assert!(r.due(1_000).is_none(), "a tick's failed send backs off");
        assert!(r.due(1_500).is_some());
    }

    #[test]
    fn unknown_kids_refetch_early_but_rate_limited() {
        let mut r = remote();
        r.due(0);
        r.on_answer(Some(200), &jwks_body(), 0).unwrap();
        r.want_refetch();
        assert!(
            r.due(10_000).is_none(),
            "within min_refetch of the last fetch"
        );
        assert!(r.due(30_000).is_some());
        r.on_answer(Some(200), &jwks_body(), 30_100).unwrap();
        // A flood of unknown kids still gives one fetch per 30 s.
        for t in (30_200..60_000).step_by(100) {
            r.want_refetch();
            assert!(r.due(t).is_none(), "{t}");
        }
        assert!(r.due(60_000).is_some());
    }

    #[test]
    fn failures_keep_the_last_good_set_and_back_off() {
        let mut r = remote();
        r.due(0);
        assert!(r.on_answer(Some(503), b"", 0).is_err());
        assert!(r.keys().is_none());
        assert!(r.due(500).is_none(), "1 s backoff");
        assert!(r.due(1_000).is_some());
        assert!(r.on_answer(Some(200), b"not json", 1_000).is_err());
        assert!(r.due(2_500).is_none(), "2 s backoff");
        assert!(r.due(3_000).is_some());
        r.on_answer(Some(200), &jwks_body(), 3_000).unwrap();
        // Later refresh fails: the old set stays in use.
        assert!(r.due(303_000).is_some());
        assert!(r.on_answer(None, b"", 303_000).is_err());
        assert!(r.keys().is_some_and(|k| !k.is_empty()));
    }

    #[test]
    fn a_lost_callout_is_given_up() {
        let mut r = remote();
        r.due(0);
        assert!(r.due(5_000).is_none());
        assert!(r.due(6_000).is_some(), "timeout + 5 s later, try again");
        r.on_not_sent();
        assert!(r.due(6_500).is_none());
    }

    #[test]
    fn unusable_keys_are_skipped_and_an_empty_set_refused() {
        let mut jwks = testkit::jwks();
        jwks["keys"].as_array_mut().unwrap().push(
            serde_json::json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}),
        );
        let mut r = remote();
        r.due(0);
        let (_, skipped) = r
            .on_answer(Some(200), jwks.to_string().as_bytes(), 0)
            .unwrap();
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        r.due(400_000);
        let err = r
            .on_answer(Some(200), br#"{"keys":[{"kty":"oct","kid":"x"}]}"#, 400_000)
            .unwrap_err();
        assert!(err.starts_with("no usable key"), "{err}");
        let huge = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(r.on_answer(Some(200), &huge, 0).is_err());
    }
}

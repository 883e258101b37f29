//! Who the filter asks, and how: one shape for every callout target (the credential service, the
//! one-time-use authority, the introspection endpoint, the remote JWKS), and one reading of what Envoy hands back, so every
//! peer's answer maps to "unavailable / timeout / error / unreadable" the same way.

pub mod authority;
pub mod credential;

use std::time::Duration;

use crate::secret::Secret;

/// Where a callout goes. Config reads the same four fields for every target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
}

impl UpstreamSettings {
    /// The pseudo-headers every callout needs (`dispatch_http_call` refuses one without them).
    pub fn pseudo_headers(&self, method: &str) -> Vec<(String, String)> {
        vec![
            (":method".to_string(), method.to_string()),
            (":path".to_string(), self.path.clone()),
            (":authority".to_string(), self.authority.clone()),
        ]
    }
}

/// Which configured target a request's callout goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    CredentialService,
    Introspection,
    /// The one-time-use authority (`callout::authority`).
    Authority,
}

impl Upstream {
    /// For log lines.
    pub fn name(self) -> &'static str {
        match self {
            Upstream::CredentialService => "credential service",
            Upstream::Introspection => "token introspection",
            Upstream::Authority => "one-time-use authority",
        }
    }
}

/// Everything `dispatch_http_call` needs but the cluster and timeout, which `upstream` names
/// (`Config::upstream`). The body holds a secret (a PIN, password or token): never log it.
pub struct Callout {
    pub upstream: Upstream,
    pub headers: Vec<(String, String)>,
    pub body: Secret,
}

impl std::fmt::Debug for Callout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Callout({:?}, {} header(s), {:?})",
            self.upstream,
            self.headers.len(),
            self.body
        )
    }
}

/// What can go wrong with any peer's answer before its content is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No connection: Envoy's own 503, or no answer at all.
    Unavailable,
    /// Envoy's own 504: no answer within the call's timeout.
    Timeout,
    /// The peer answered, with a status other than 200.
    Error,
    /// 200, but not something the protocol allows (too large, or not parseable).
    BadAnswer,
}

/// The body of a 200 answer no larger than `limit`; everything else is a `Fault`. `status` is
/// `None` when Envoy delivered no `:status` at all. Any status but 200 is a fault, so a misrouted
/// call (a 404 from a wrong path, a 503 from Envoy) can never read as a verdict.
pub fn accept(status: Option<u16>, body: &[u8], limit: usize) -> Result<&[u8], Fault> {
    match status {
        Some(200) if body.len() <= limit => Ok(body),
        Some(200) => Err(Fault::BadAnswer),
        // Envoy answers 503 itself when it cannot connect and 504 when the call times out.
        None | Some(503) => Err(Fault::Unavailable),
        Some(504) => Err(Fault::Timeout),
        Some(_) => Err(Fault::Error),
    }
}

/// The status to judge a callout's answer by. A call that times out before its answer's headers
/// gets Envoy's own 504; one that had started answering and then stalled past the timeout ends
/// with no answer at all (`None`). Call that a timeout too (504), so operators see a slow peer as
/// slow rather than as down. `elapsed_ms` runs from the dispatch to the answer; both clock reads
/// are truncated to ms and taken at callback starts, hence 10% of slack.
pub fn answer_status(status: Option<u16>, elapsed_ms: u64, timeout_ms: u64) -> Option<u16> {
    if status.is_none() && elapsed_ms.saturating_mul(10) >= timeout_ms.saturating_mul(9) {
        return Some(504);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_answer_maps_the_same_way() {
        assert_eq!(accept(Some(200), b"{}", 2), Ok(&b"{}"[..]));
        assert_eq!(accept(Some(200), b"{} ", 2), Err(Fault::BadAnswer));
        assert_eq!(accept(None, b"", 2), Err(Fault::Unavailable));
        assert_eq!(accept(Some(503), b"x", 2), Err(Fault::Unavailable));
        assert_eq!(accept(Some(504), b"", 2), Err(Fault::Timeout));
        for status in [201, 204, 400, 401, 404, 500, 502] {
            assert_eq!(
                accept(Some(status), b"{}", 2),
                Err(Fault::Error),
                "{status}"
            );
        }
    }

    #[test]
    fn an_answer_cut_short_after_the_timeout_is_a_timeout() {
        assert_eq!(answer_status(None, 2_000, 2_000), Some(504));
        assert_eq!(answer_status(None, 1_800, 2_000), Some(504), "10% slack");
        assert_eq!(
            answer_status(None, 1_000, 2_000),
            None,
            "cut short early: unavailable"
        );
        assert_eq!(answer_status(Some(200), 5_000, 2_000), Some(200));
    }
}

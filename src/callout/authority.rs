//! The one-time-use authority: the service that sees every Envoy of a fleet, and so makes the
//! accept-once and guess-budget decisions that shared data (one Envoy's memory) cannot. The
//! filter asks it once per code tried on verify or a gate:
//! - a code the filter found valid (HMAC and time, checked locally) is **consumed**: the
//!   authority inserts (user, key id, step) under a unique key, once, fleet-wide;
//! - a wrong code is **reported**, so it counts in the same per-user budget as wrong passwords
//!   and PINs at the credential service.
//!
//! Once a user's budget is spent, the authority answers `locked` before anything else. The
//! protocol is in docs/credential-protocol.md.

use serde_json::{json, Value};

use crate::callout::{self, Callout, Fault, Upstream, UpstreamSettings};
use crate::reply::failure::Failure;
use crate::secret::Secret;

/// Answers larger than this are refused unread; a ruling is a few dozen bytes.
pub const MAX_ANSWER_BYTES: usize = 4096;

/// Where the authority is: `upstream.path` is the prefix of its two endpoints, `<path>/consume`
/// and `<path>/failure`.
pub struct AuthoritySettings {
    pub upstream: UpstreamSettings,
    /// Header name and value sent with every callout, the value read from the environment.
    pub auth_header: Option<(String, Secret)>,
}

/// What the filter asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Question {
    /// Accept this valid code, if it is its first use fleet-wide.
    Consume,
    /// Count this wrong code against the user's budget.
    ReportFailure,
}

/// What the authority ruled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ruling {
    /// First use: the code is accepted (and the user's budget restored).
    Consumed,
    /// Used before, somewhere in the fleet.
    Used,
    /// The failure was counted.
    Counted,
    /// The user's budget is spent.
    Locked { retry_after_seconds: u64 },
}

/// What an answer counts as: `otp_filter.authority.<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorityResult {
    Consumed,
    Used,
    Counted,
    Locked,
    Unavailable,
    Timeout,
    Error,
    BadAnswer,
}

impl AuthorityResult {
    /// Every result, so that each counter exists (as 0) before it first counts.
    pub const ALL: [AuthorityResult; 8] = [
        AuthorityResult::Consumed,
        AuthorityResult::Used,
        AuthorityResult::Counted,
        AuthorityResult::Locked,
        AuthorityResult::Unavailable,
        AuthorityResult::Timeout,
        AuthorityResult::Error,
        AuthorityResult::BadAnswer,
    ];

    /// The counter's last name part: the one list of these names.
    pub fn name(self) -> &'static str {
        match self {
            AuthorityResult::Consumed => "consumed",
            AuthorityResult::Used => "used",
            AuthorityResult::Counted => "counted",
            AuthorityResult::Locked => "locked",
            AuthorityResult::Unavailable => "unavailable",
            AuthorityResult::Timeout => "timeout",
            AuthorityResult::Error => "error",
            AuthorityResult::BadAnswer => "bad_answer",
        }
    }

    pub fn of(answer: &Result<Ruling, Failure>) -> AuthorityResult {
        match answer {
            Ok(Ruling::Consumed) => AuthorityResult::Consumed,
            Ok(Ruling::Used) => AuthorityResult::Used,
            Ok(Ruling::Counted) => AuthorityResult::Counted,
            Ok(Ruling::Locked { .. }) => AuthorityResult::Locked,
            Err(Failure::OtpAuthorityUnavailable) => AuthorityResult::Unavailable,
            Err(Failure::OtpAuthorityTimeout) => AuthorityResult::Timeout,
            Err(Failure::OtpAuthorityError) => AuthorityResult::Error,
            Err(_) => AuthorityResult::BadAnswer,
        }
    }
}

fn callout(settings: &AuthoritySettings, endpoint: &str, body: Value, request_id: &str) -> Callout {
    let mut headers = settings.upstream.pseudo_headers("POST");
    if let Some((_, path)) = headers.iter_mut().find(|(name, _)| name == ":path") {
        *path = format!("{}/{endpoint}", path.trim_end_matches('/'));
    }
    headers.push(("content-type".to_string(), "application/json".to_string()));
    headers.push(("request-id".to_string(), request_id.to_string()));
    if let Some((name, value)) = &settings.auth_header {
        headers.push((name.clone(), value.expose_str().to_string()));
    }
    Callout {
        upstream: Upstream::Authority,
        headers,
        body: Secret::new(body.to_string()),
    }
}

/// Asks to accept the code made with master key `key_id` at `step` for `user`, once; the
/// authority keeps the record until `expires_at_ms`, when the code expires anyway.
pub fn consume(
    settings: &AuthoritySettings,
    user: &str,
    key_id: &str,
    step: u64,
    expires_at_ms: u64,
    request_id: &str,
) -> Callout {
    let body = json!({"user": user, "keyId": key_id, "step": step, "expiresAtMs": expires_at_ms});
    callout(settings, "consume", body, request_id)
}

/// Reports a wrong code for `user`.
pub fn report_failure(settings: &AuthoritySettings, user: &str, request_id: &str) -> Callout {
    callout(settings, "failure", json!({"user": user}), request_id)
}

fn failure(fault: Fault) -> Failure {
    match fault {
        Fault::Unavailable => Failure::OtpAuthorityUnavailable,
        Fault::Timeout => Failure::OtpAuthorityTimeout,
        Fault::Error => Failure::OtpAuthorityError,
        Fault::BadAnswer => Failure::OtpAuthorityBadAnswer,
    }
}

/// Reads the authority's answer to `question`. A ruling that does not answer it (`counted` for
/// a consume, `consumed` for a report) is a bad answer: the filter never guesses.
pub fn read_answer(
    question: Question,
    status: Option<u16>,
    body: &[u8],
) -> Result<Ruling, Failure> {
    let body = callout::accept(status, body, MAX_ANSWER_BYTES).map_err(failure)?;
    let answer: Value = serde_json::from_slice(body).map_err(|_| Failure::OtpAuthorityBadAnswer)?;
    let ruling = match answer.get("result").and_then(Value::as_str) {
        Some("consumed") => Ruling::Consumed,
        Some("used") => Ruling::Used,
        Some("counted") => Ruling::Counted,
        Some("locked") => match answer.get("retryAfterSeconds").and_then(Value::as_u64) {
            // Clamp, as for the credential service: never a year, never zero seconds.
            Some(n) => Ruling::Locked {
                retry_after_seconds: n.clamp(1, 86_400),
            },
            None => return Err(Failure::OtpAuthorityBadAnswer),
        },
        _ => return Err(Failure::OtpAuthorityBadAnswer),
    };
    match (question, ruling) {
        (_, Ruling::Locked { .. })
        | (Question::Consume, Ruling::Consumed | Ruling::Used)
        | (Question::ReportFailure, Ruling::Counted) => Ok(ruling),
        _ => Err(Failure::OtpAuthorityBadAnswer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> AuthoritySettings {
        AuthoritySettings {
            upstream: UpstreamSettings {
                cluster: "credential_service".into(),
                authority: "credential-service".into(),
                path: "/v1/otp/".into(),
                timeout: Duration::from_millis(500),
            },
            auth_header: Some(("authorization".into(), Secret::new("Bearer s3".into()))),
        }
    }

    fn header<'a>(c: &'a Callout, name: &str) -> Option<&'a str> {
        c.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn asks_at_its_two_endpoints() {
        let c = consume(&settings(), "demo-user", "k1", 42, 1_000, "rid");
        assert_eq!(header(&c, ":path"), Some("/v1/otp/consume"));
        assert_eq!(header(&c, ":authority"), Some("credential-service"));
        assert_eq!(header(&c, "authorization"), Some("Bearer s3"));
        assert_eq!(header(&c, "request-id"), Some("rid"));
        assert_eq!(c.upstream, Upstream::Authority);
        let body: Value = serde_json::from_slice(c.body.expose()).unwrap();
        assert_eq!(
            body,
            json!({"user": "demo-user", "keyId": "k1", "step": 42, "expiresAtMs": 1000})
        );
        let r = report_failure(&settings(), "demo-user", "rid");
        assert_eq!(header(&r, ":path"), Some("/v1/otp/failure"));
        let body: Value = serde_json::from_slice(r.body.expose()).unwrap();
        assert_eq!(body, json!({"user": "demo-user"}));
    }

    #[test]
    fn reads_rulings_for_the_question_asked_only() {
        let read = |q, b: &str| read_answer(q, Some(200), b.as_bytes());
        use Question::*;
        assert_eq!(
            read(Consume, r#"{"result":"consumed"}"#),
            Ok(Ruling::Consumed)
        );
        assert_eq!(read(Consume, r#"{"result":"used"}"#), Ok(Ruling::Used));
        assert_eq!(
            read(ReportFailure, r#"{"result":"counted"}"#),
            Ok(Ruling::Counted)
        );
        for q in [Consume, ReportFailure] {
            assert_eq!(
                read(q, r#"{"result":"locked","retryAfterSeconds":0}"#),
                Ok(Ruling::Locked {
                    retry_after_seconds: 1
                })
            );
            assert_eq!(
                read(q, r#"{"result":"locked"}"#),
                Err(Failure::OtpAuthorityBadAnswer)
            );
            assert_eq!(read(q, "<html>"), Err(Failure::OtpAuthorityBadAnswer));
        }
        assert_eq!(
            read(Consume, r#"{"result":"counted"}"#),
            Err(Failure::OtpAuthorityBadAnswer)
        );
        assert_eq!(
            read(ReportFailure, r#"{"result":"consumed"}"#),
            Err(Failure::OtpAuthorityBadAnswer)
        );
        assert_eq!(
            read_answer(Consume, None, b""),
            Err(Failure::OtpAuthorityUnavailable)
        );
        assert_eq!(
            read_answer(Consume, Some(504), b""),
            Err(Failure::OtpAuthorityTimeout)
        );
        assert_eq!(
            read_answer(Consume, Some(404), br#"{"result":"consumed"}"#),
            Err(Failure::OtpAuthorityError)
        );
        let names: Vec<&str> = AuthorityResult::ALL.iter().map(|r| r.name()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }
}

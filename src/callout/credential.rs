//! The callout to the credential service: one request per secret checked, and the reading of its
//! answer. The protocol is documented in docs/credential-protocol.md.
//!
//! Verdicts come as `200 {"result": ...}`; any other status is a server-side failure, so a
//! misrouted call (a 404 from the wrong path, a 503 from Envoy) can never read as "wrong PIN".

use serde_json::{json, Value};

use crate::callout::{self, Callout, Fault, Upstream, UpstreamSettings};
use crate::reply::failure::Failure;
use crate::secret::Secret;

/// Answers larger than this are refused unread; a verdict is a few dozen bytes.
pub const MAX_ANSWER_BYTES: usize = 4096;

pub struct CredentialServiceSettings {
    pub upstream: UpstreamSettings,
    /// Header name and value sent with every callout, the value read from the environment.
    pub auth_header: Option<(String, Secret)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    Password,
    Pin,
}

impl SecretKind {
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::Password => "password",
            SecretKind::Pin => "pin",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid,
    UnknownUser,
    MissingLinkedIdentity,
    Locked { retry_after_seconds: u64 },
}

/// What a callout's answer counts as: `otp_filter.credential.<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallResult {
    Valid,
    Invalid,
    UnknownUser,
    MissingLinkedIdentity,
    Locked,
    Unavailable,
    Timeout,
    Error,
    BadAnswer,
}

impl CallResult {
    /// Every result, so that each counter exists (as 0) before it first counts.
    pub const ALL: [CallResult; 9] = [
        CallResult::Valid,
        CallResult::Invalid,
        CallResult::UnknownUser,
        CallResult::MissingLinkedIdentity,
        CallResult::Locked,
        CallResult::Unavailable,
        CallResult::Timeout,
        CallResult::Error,
        CallResult::BadAnswer,
    ];

    /// The counter's last name part: the one list of these names.
    pub fn name(self) -> &'static str {
        match self {
            CallResult::Valid => "valid",
            CallResult::Invalid => "invalid",
            CallResult::UnknownUser => "unknown_user",
            CallResult::MissingLinkedIdentity => "missing_linked_identity",
            CallResult::Locked => "locked",
            CallResult::Unavailable => "unavailable",
            CallResult::Timeout => "timeout",
            CallResult::Error => "error",
            CallResult::BadAnswer => "bad_answer",
        }
    }

    pub fn of(answer: &Result<Verdict, Failure>) -> CallResult {
        match answer {
            Ok(Verdict::Valid) => CallResult::Valid,
            Ok(Verdict::Invalid) => CallResult::Invalid,
            Ok(Verdict::UnknownUser) => CallResult::UnknownUser,
            Ok(Verdict::MissingLinkedIdentity) => CallResult::MissingLinkedIdentity,
            Ok(Verdict::Locked { .. }) => CallResult::Locked,
            Err(Failure::CredentialServiceUnavailable) => CallResult::Unavailable,
            Err(Failure::CredentialServiceTimeout) => CallResult::Timeout,
            Err(Failure::CredentialServiceError) => CallResult::Error,
            Err(_) => CallResult::BadAnswer,
        }
    }
}

pub fn callout(
    settings: &CredentialServiceSettings,
    user_id: &str,
    kind: SecretKind,
    secret: &Secret,
    request_id: &str,
) -> Callout {
    let mut headers = settings.upstream.pseudo_headers("POST");
    headers.push(("content-type".to_string(), "application/json".to_string()));
    headers.push(("request-id".to_string(), request_id.to_string()));
    if let Some((name, value)) = &settings.auth_header {
        headers.push((name.clone(), value.expose_str().to_string()));
    }
    let body = json!({
        "user": user_id,
        "kind": kind.name(),
        "secret": secret.expose_str(),
    });
    Callout {
        upstream: Upstream::CredentialService,
        headers,
        body: Secret::new(body.to_string()),
    }
}

/// The `otp_filter.credential.<result>` a callout's answer counts as.
pub fn result_name(answer: &Result<Verdict, Failure>) -> &'static str {
    CallResult::of(answer).name()
}

fn failure(fault: Fault) -> Failure {
    match fault {
        Fault::Unavailable => Failure::CredentialServiceUnavailable,
        Fault::Timeout => Failure::CredentialServiceTimeout,
        Fault::Error => Failure::CredentialServiceError,
        Fault::BadAnswer => Failure::CredentialServiceBadAnswer,
    }
}

/// Reads the callout's answer. `status` is `None` when Envoy delivered no `:status` at all.
pub fn read_answer(status: Option<u16>, body: &[u8]) -> Result<Verdict, Failure> {
    let body = callout::accept(status, body, MAX_ANSWER_BYTES).map_err(failure)?;
    let answer: Value =
        serde_json::from_slice(body).map_err(|_| Failure::CredentialServiceBadAnswer)?;
    match answer.get("result").and_then(Value::as_str) {
        Some("valid") => Ok(Verdict::Valid),
        Some("invalid") => Ok(Verdict::Invalid),
        Some("unknown-user") => Ok(Verdict::UnknownUser),
        Some("missing-linked-identity") => Ok(Verdict::MissingLinkedIdentity),
        Some("locked") => match answer.get("retryAfterSeconds").and_then(Value::as_u64) {
            // Clamp: a service bug must not tell clients to wait a year, or zero seconds.
            Some(n) => Ok(Verdict::Locked {
                retry_after_seconds: n.clamp(1, 86_400),
            }),
            None => Err(Failure::CredentialServiceBadAnswer),
        },
        _ => Err(Failure::CredentialServiceBadAnswer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_result_has_its_own_counter_name() {
        let mut names: Vec<&str> = CallResult::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CallResult::ALL.len());
        assert_eq!(result_name(&Ok(Verdict::Valid)), "valid");
        assert_eq!(
            result_name(&Err(Failure::CredentialServiceTimeout)),
            "timeout"
        );
    }

    #[test]
    fn reads_every_verdict() {
        let ok = |b: &str| read_answer(Some(200), b.as_bytes());
        assert_eq!(ok(r#"{"result":"valid"}"#), Ok(Verdict::Valid));
        assert_eq!(ok(r#"{"result":"invalid"}"#), Ok(Verdict::Invalid));
        assert_eq!(ok(r#"{"result":"unknown-user"}"#), Ok(Verdict::UnknownUser));
        assert_eq!(
            ok(r#"{"result":"missing-linked-identity"}"#),
            Ok(Verdict::MissingLinkedIdentity)
        );
        assert_eq!(
            ok(r#"{"result":"locked","retryAfterSeconds":30}"#),
            Ok(Verdict::Locked {
                retry_after_seconds: 30
            })
        );
        assert_eq!(
            ok(r#"{"result":"locked","retryAfterSeconds":0}"#),
            Ok(Verdict::Locked {
                retry_after_seconds: 1
            })
        );
    }

    #[test]
    fn everything_else_is_a_server_side_failure() {
        let bad = Err(Failure::CredentialServiceBadAnswer);
        assert_eq!(read_answer(Some(200), b"<html>"), bad);
        assert_eq!(read_answer(Some(200), br#"{"result":"VALID"}"#), bad);
        assert_eq!(read_answer(Some(200), br#"{"result":"locked"}"#), bad);
        assert_eq!(read_answer(Some(200), b""), bad);
        let huge = format!(r#"{{"result":"valid","pad":"{}"}}"#, "x".repeat(5000));
        assert_eq!(read_answer(Some(200), huge.as_bytes()), bad);
        assert_eq!(
            read_answer(Some(503), b"upstream connect error"),
            Err(Failure::CredentialServiceUnavailable)
        );
        assert_eq!(
            read_answer(None, b""),
            Err(Failure::CredentialServiceUnavailable)
        );
        assert_eq!(
            read_answer(Some(504), b""),
            Err(Failure::CredentialServiceTimeout)
        );
        for status in [201, 204, 400, 401, 404, 500] {
            assert_eq!(
                read_answer(Some(status), br#"{"result":"valid"}"#),
                Err(Failure::CredentialServiceError),
                "{status}"
            );
        }
    }

    #[test]
    fn callout_carries_route_auth_and_json() {
        let settings = CredentialServiceSettings {
            upstream: UpstreamSettings {
                cluster: "creds".into(),
                authority: "credential-service".into(),
                path: "/v1/credentials/verify".into(),
                timeout: Duration::from_millis(500),
            },
            auth_header: Some(("authorization".into(), Secret::new("Bearer s3".into()))),
        };
        let secret = Secret::new("pa\"ss".into());
        let c = callout(&settings, "demo-user", SecretKind::Password, &secret, "rid");
        let header = |n: &str| {
            c.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header(":path"), Some("/v1/credentials/verify"));
        assert_eq!(header(":authority"), Some("credential-service"));
        assert_eq!(header("authorization"), Some("Bearer s3"));
        assert_eq!(header("request-id"), Some("rid"));
        let body: Value = serde_json::from_slice(c.body.expose()).expect("json");
        assert_eq!(
            body,
            json!({"user":"demo-user","kind":"password","secret":"pa\"ss"})
        );
        assert!(!format!("{c:?}").contains("pa\"ss"));
    }
}

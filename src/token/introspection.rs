//! RFC 7662 token introspection: the callout and the reading of its answer.
//!
//! Positive answers go into a `ClaimsCache` (see there) for `cache_seconds`, so a client's burst of
//! requests costs one introspection. Negative answers are not cached: a token that becomes active
//! (clock skew at the IdP) is not locked out, and revocation is what introspection is for, so the
//! cache window is kept short.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::callout::{self, Callout, Fault, Upstream, UpstreamSettings};
use crate::reply::failure::Failure;
use crate::secret::Secret;

/// Introspection answers larger than this are refused unread.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;

pub struct IntrospectionSettings {
    pub upstream: UpstreamSettings,
    pub client_id: String,
    pub client_secret: Secret,
    pub cache_seconds: u64,
    pub cache_entries: usize,
}

/// `application/x-www-form-urlencoded` for one value (RFC 6749 Appendix B).
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn callout(settings: &IntrospectionSettings, token: &str, request_id: &str) -> Callout {
    // RFC 6749 §2.3.1: id and secret are form-encoded before they are joined and base64-encoded.
    let credentials = format!(
        "{}:{}",
        form_encode(&settings.client_id),
        form_encode(settings.client_secret.expose_str())
    );
    let mut headers = settings.upstream.pseudo_headers("POST");
    headers.extend([
        (
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("accept".to_string(), "application/json".to_string()),
        (
            "authorization".to_string(),
            format!("Basic {}", STANDARD.encode(credentials)),
        ),
        ("request-id".to_string(), request_id.to_string()),
    ]);
    Callout {
        upstream: Upstream::Introspection,
        headers,
        body: Secret::new(format!(
            "token={}&token_type_hint=access_token",
            form_encode(token)
        )),
    }
}

/// The introspection endpoint's verdict.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Active(Map<String, Value>),
    Inactive,
}

fn failure(fault: Fault) -> Failure {
    match fault {
        Fault::Unavailable => Failure::IntrospectionUnavailable,
        Fault::Timeout => Failure::IntrospectionTimeout,
        Fault::Error => Failure::IntrospectionError,
        Fault::BadAnswer => Failure::IntrospectionBadAnswer,
    }
}

pub fn read_answer(status: Option<u16>, body: &[u8]) -> Result<Answer, Failure> {
    let body = callout::accept(status, body, MAX_ANSWER_BYTES).map_err(failure)?;
    match serde_json::from_slice(body) {
        Ok(Value::Object(answer)) => match answer.get("active") {
            Some(Value::Bool(true)) => Ok(Answer::Active(answer)),
            // RFC 7662 §2.2: "active" is REQUIRED; anything but true is not active.
            Some(Value::Bool(false)) => Ok(Answer::Inactive),
            _ => Err(Failure::IntrospectionBadAnswer),
        },
        _ => Err(Failure::IntrospectionBadAnswer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn builds_an_rfc7662_request() {
        let settings = IntrospectionSettings {
            upstream: UpstreamSettings {
                cluster: "idp".into(),
                authority: "idp".into(),
                path: "/introspect".into(),
                timeout: Duration::from_secs(1),
            },
            client_id: "otp filter".into(),
            client_secret: Secret::new("s3cr:t".into()),
            cache_seconds: 60,
            cache_entries: 10,
        };
        let c = callout(&settings, "a.b+c/d=", "rid");
        let header = |n: &str| {
            c.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        // "otp+filter:s3cr%3At"
        assert_eq!(
            header("authorization"),
            Some(format!("Basic {}", STANDARD.encode("otp+filter:s3cr%3At")))
        );
        assert_eq!(
            c.body.expose_str(),
            "token=a.b%2Bc%2Fd%3D&token_type_hint=access_token"
        );
        assert!(!format!("{c:?}").contains("a.b"));
    }

    #[test]
    fn reads_answers() {
        assert!(matches!(
            read_answer(Some(200), br#"{"active":true,"sub":"x"}"#),
            Ok(Answer::Active(_))
        ));
        assert_eq!(
            read_answer(Some(200), br#"{"active":false}"#),
            Ok(Answer::Inactive)
        );
        assert_eq!(
            read_answer(Some(200), br#"{"active":"true"}"#),
            Err(Failure::IntrospectionBadAnswer)
        );
        assert_eq!(
            read_answer(Some(200), br#"{"sub":"x"}"#),
            Err(Failure::IntrospectionBadAnswer)
        );
        assert_eq!(
            read_answer(Some(200), b"[]"),
            Err(Failure::IntrospectionBadAnswer)
        );
        assert_eq!(
            read_answer(Some(401), b""),
            Err(Failure::IntrospectionError)
        );
        assert_eq!(
            read_answer(Some(503), b""),
            Err(Failure::IntrospectionUnavailable)
        );
        assert_eq!(
            read_answer(None, b""),
            Err(Failure::IntrospectionUnavailable)
        );
        assert_eq!(
            read_answer(Some(504), b""),
            Err(Failure::IntrospectionTimeout)
        );
    }
}

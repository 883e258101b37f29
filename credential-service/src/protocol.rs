//! The wire contract of `POST /v1/credentials/verify`, `POST /v1/otp/consume` and
//! `POST /v1/otp/failure` (docs/credential-protocol.md).
//!
//! Verify body: `{"user":"<user id>","kind":"password"|"pin","secret":"<value>"}`.
//! Consume body: `{"user":"<id>","keyId":"<master key id>","step":<u64>,"expiresAtMs":<u64>}`.
//! Failure body: `{"user":"<id>"}`.
//! Every verdict is HTTP 200 `application/json`; errors are 4xx with `{"error":"..."}`.

use std::fmt;

use serde::Deserialize;
use zeroize::Zeroize;

/// Largest request body accepted, in bytes. Anything longer is a 400.
pub const MAX_BODY_BYTES: usize = 8 * 1024;

/// Which secret the caller wants checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Password,
    Pin,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Password => "password",
            Kind::Pin => "pin",
        }
    }
}

/// A parsed verify request. `Debug` never shows the secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub user: String,
    pub kind: Kind,
    pub secret: String,
}

impl Drop for VerifyRequest {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl fmt::Debug for VerifyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("user", &self.user)
            .field("kind", &self.kind)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The body is not the JSON shape of the contract. Carries no detail on purpose: serde's
/// messages can quote fragments of the input, which may be a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRequest;

/// Parses a verify request body strictly: exactly one JSON object with the three string
/// fields `user`, `kind` (`"password"` or `"pin"`) and `secret`, nothing else, at most
/// [`MAX_BODY_BYTES`].
pub fn parse_verify_body(body: &[u8]) -> Result<VerifyRequest, BadRequest> {
    parse_object(body)
}

/// One JSON object of the derived shape `T`, at most [`MAX_BODY_BYTES`].
fn parse_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BadRequest> {
    if body.len() > MAX_BODY_BYTES {
        return Err(BadRequest);
    }
    // serde's derived struct visitor also accepts a JSON array (`["u","pin","s"]`); the
    // contract is an object, so insist on one.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        _ => return Err(BadRequest),
    }
    serde_json::from_slice(body).map_err(|_| BadRequest)
}

/// Longest user id or key id accepted by the one-time-code endpoints, in bytes.
pub const MAX_ID_BYTES: usize = 256;

fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_BYTES && !id.chars().any(char::is_control)
}

/// A parsed `POST /v1/otp/consume`: the code minted for `user` with master key `key_id` in time
/// step `step`, valid until `expires_at_ms` (unix milliseconds). Both numbers fit an `i64`, as
/// the store keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeRequest {
    pub user: String,
    pub key_id: String,
    pub step: i64,
    pub expires_at_ms: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConsumeWire {
    user: String,
    key_id: String,
    step: u64,
    expires_at_ms: u64,
}

/// Parses a consume body strictly: the four fields, nothing else; ids non-empty, at most
/// [`MAX_ID_BYTES`], without control characters; numbers non-negative integers below 2^63.
pub fn parse_consume_body(body: &[u8]) -> Result<ConsumeRequest, BadRequest> {
    let wire: ConsumeWire = parse_object(body)?;
    if !id_ok(&wire.user) || !id_ok(&wire.key_id) {
        return Err(BadRequest);
    }
    Ok(ConsumeRequest {
        user: wire.user,
        key_id: wire.key_id,
        step: i64::try_from(wire.step).map_err(|_| BadRequest)?,
        expires_at_ms: i64::try_from(wire.expires_at_ms).map_err(|_| BadRequest)?,
    })
}

/// A parsed `POST /v1/otp/failure`: a wrong code was tried for `user`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRequest {
    pub user: String,
}

/// Parses a failure body strictly: exactly `{"user":"<id>"}` with a usable id.
pub fn parse_failure_body(body: &[u8]) -> Result<FailureRequest, BadRequest> {
    let req: FailureRequest = parse_object(body)?;
    if !id_ok(&req.user) {
        return Err(BadRequest);
    }
    Ok(req)
}

/// The answer to `POST /v1/otp/consume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeVerdict {
    /// First use, fleet-wide: the code is accepted.
    Consumed,
    /// Already consumed and not expired.
    Used,
    /// The user's budget is spent; nothing was recorded.
    Locked { retry_after_seconds: u64 },
}

impl ConsumeVerdict {
    pub fn result_str(self) -> &'static str {
        match self {
            ConsumeVerdict::Consumed => "consumed",
            ConsumeVerdict::Used => "used",
            ConsumeVerdict::Locked { .. } => "locked",
        }
    }

    pub fn to_json(self) -> String {
        match self {
            ConsumeVerdict::Locked {
                retry_after_seconds,
            } => locked_json(retry_after_seconds),
            other => format!(r#"{{"result":"{}"}}"#, other.result_str()),
        }
    }
}

/// The answer to `POST /v1/otp/failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Counted against the user's budget, which is not spent yet.
    Counted,
    /// The budget is spent (by this failure or before it).
    Locked { retry_after_seconds: u64 },
}

impl FailureVerdict {
    pub fn result_str(self) -> &'static str {
        match self {
            FailureVerdict::Counted => "counted",
            FailureVerdict::Locked { .. } => "locked",
        }
    }

    pub fn to_json(self) -> String {
        match self {
            FailureVerdict::Locked {
                retry_after_seconds,
            } => locked_json(retry_after_seconds),
            FailureVerdict::Counted => r#"{"result":"counted"}"#.to_owned(),
        }
    }
}

fn locked_json(retry_after_seconds: u64) -> String {
    format!(
        r#"{{"result":"locked","retryAfterSeconds":{}}}"#,
        retry_after_seconds.max(1)
    )
}

/// The answer to a well-formed, authorised verify request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The secret matches.
    Valid,
    /// Wrong secret, or the user has no secret of that kind.
    Invalid,
    /// No such user.
    UnknownUser,
    /// The user exists but has no linked identity; the secret was not checked.
    MissingLinkedIdentity,
    /// The user is locked out; the secret was not checked.
    Locked { retry_after_seconds: u64 },
}

impl Verdict {
    /// The `result` string on the wire.
    pub fn result_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::UnknownUser => "unknown-user",
            Verdict::MissingLinkedIdentity => "missing-linked-identity",
            Verdict::Locked { .. } => "locked",
        }
    }

    /// The JSON body on the wire.
    pub fn to_json(self) -> String {
        match self {
            Verdict::Locked {
                retry_after_seconds,
            } => locked_json(retry_after_seconds),
            other => format!(r#"{{"result":"{}"}}"#, other.result_str()),
        }
    }
}

/// The JSON body of a non-verdict error answer.
pub fn error_json(code: &str) -> String {
    format!(r#"{{"error":"{code}"}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_shape() {
        let r =
            parse_verify_body(br#"{"user":"demo-user","kind":"password","secret":"s3"}"#).unwrap();
        assert_eq!(r.user, "demo-user");
        assert_eq!(r.kind, Kind::Password);
        assert_eq!(r.secret, "s3");
        let r = parse_verify_body(b" \n{\"secret\":\"1\\u00e9\",\"kind\":\"pin\",\"user\":\"u\"} ")
            .unwrap();
        assert_eq!(r.kind, Kind::Pin);
        assert_eq!(r.secret, "1\u{e9}");
    }

    #[test]
    fn rejects_bad_shapes() {
        let bad: &[&[u8]] = &[
            b"",
            b"   ",
            b"null",
            b"{}",
            b"[]",
            br#"["demo-user","password","x"]"#,
            br#"{"user":"u","kind":"otp","secret":"x"}"#,
            br#"{"user":"u","kind":"PASSWORD","secret":"x"}"#,
            br#"{"user":"u","kind":"password"}"#,
            br#"{"kind":"password","secret":"x"}"#,
            br#"{"user":"u","secret":"x"}"#,
            br#"{"user":1,"kind":"password","secret":"x"}"#,
            br#"{"user":"u","kind":"password","secret":1234}"#,
            br#"{"user":"u","kind":"password","secret":null}"#,
            br#"{"user":"u","kind":["pin"],"secret":"x"}"#,
            br#"{"user":"u","kind":"pin","secret":"x","extra":true}"#,
            br#"{"user":"u","user":"v","kind":"pin","secret":"x"}"#,
            br#"{"user":"u","kind":"pin","secret":"x"} trailing"#,
            br#"{"user":"u","kind":"pin","secret":"x""#,
            b"\xff\xfe",
        ];
        for body in bad {
            assert_eq!(
                parse_verify_body(body).map(|_| ()),
                Err(BadRequest),
                "accepted {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn rejects_oversized_body() {
        let pad = "a".repeat(MAX_BODY_BYTES);
        let body = format!(r#"{{"user":"u","kind":"pin","secret":"{pad}"}}"#);
        assert!(body.len() > MAX_BODY_BYTES);
        assert_eq!(
            parse_verify_body(body.as_bytes()).map(|_| ()),
            Err(BadRequest)
        );
        // Just under the limit is fine.
        let pad = "a".repeat(MAX_BODY_BYTES - 40);
        let body = format!(r#"{{"user":"u","kind":"pin","secret":"{pad}"}}"#);
        assert!(body.len() <= MAX_BODY_BYTES);
        assert!(parse_verify_body(body.as_bytes()).is_ok());
    }

    #[test]
    fn debug_redacts_secret() {
        let r = parse_verify_body(br#"{"user":"u","kind":"pin","secret":"8299"}"#).unwrap();
        assert!(!format!("{r:?}").contains("8299"));
    }

    #[test]
    fn consume_and_failure_bodies() {
        let r = parse_consume_body(
            br#"{"user":"demo-user","keyId":"k1","step":29000000,"expiresAtMs":1740000000000}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            ConsumeRequest {
                user: "demo-user".into(),
                key_id: "k1".into(),
                step: 29_000_000,
                expires_at_ms: 1_740_000_000_000
            }
        );
        let max = i64::MAX;
        assert!(parse_consume_body(
            format!(r#"{{"user":"u","keyId":"k","step":{max},"expiresAtMs":{max}}}"#).as_bytes()
        )
        .is_ok());
        let bad: &[&[u8]] = &[
            b"",
            b"[]",
            br#"["u","k",1,2]"#,
            br#"{"user":"u","keyId":"k","step":1}"#,
            br#"{"user":"u","keyId":"k","step":1,"expiresAtMs":2,"x":1}"#,
            br#"{"user":"","keyId":"k","step":1,"expiresAtMs":2}"#,
            br#"{"user":"u","keyId":"","step":1,"expiresAtMs":2}"#,
            br#"{"user":"u\n","keyId":"k","step":1,"expiresAtMs":2}"#,
            br#"{"user":"u","keyId":"k","step":-1,"expiresAtMs":2}"#,
            br#"{"user":"u","keyId":"k","step":1.5,"expiresAtMs":2}"#,
            br#"{"user":"u","keyId":"k","step":"1","expiresAtMs":2}"#,
            br#"{"user":"u","keyId":"k","step":9223372036854775808,"expiresAtMs":2}"#,
            br#"{"user":"u","key_id":"k","step":1,"expiresAtMs":2}"#,
            br#"{"user":"u","user":"v","keyId":"k","step":1,"expiresAtMs":2}"#,
        ];
        for body in bad {
            assert_eq!(
                parse_consume_body(body),
                Err(BadRequest),
                "accepted {:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            parse_failure_body(br#" {"user":"someone"} "#).unwrap().user,
            "someone"
        );
        let long = format!(r#"{{"user":"{}"}}"#, "u".repeat(MAX_ID_BYTES + 1));
        for body in [
            &b"{}"[..],
            br#"{"user":""}"#,
            br#"{"user":1}"#,
            br#"{"user":"u","kind":"pin"}"#,
            br#"["u"]"#,
            long.as_bytes(),
        ] {
            assert_eq!(parse_failure_body(body), Err(BadRequest));
        }
        assert_eq!(
            ConsumeVerdict::Consumed.to_json(),
            r#"{"result":"consumed"}"#
        );
        assert_eq!(ConsumeVerdict::Used.to_json(), r#"{"result":"used"}"#);
        assert_eq!(
            ConsumeVerdict::Locked {
                retry_after_seconds: 0
            }
            .to_json(),
            r#"{"result":"locked","retryAfterSeconds":1}"#
        );
        assert_eq!(FailureVerdict::Counted.to_json(), r#"{"result":"counted"}"#);
        assert_eq!(
            FailureVerdict::Locked {
                retry_after_seconds: 7
            }
            .to_json(),
            r#"{"result":"locked","retryAfterSeconds":7}"#
        );
    }

    #[test]
    fn verdict_json() {
        assert_eq!(Verdict::Valid.to_json(), r#"{"result":"valid"}"#);
        assert_eq!(Verdict::Invalid.to_json(), r#"{"result":"invalid"}"#);
        assert_eq!(
            Verdict::UnknownUser.to_json(),
            r#"{"result":"unknown-user"}"#
        );
        assert_eq!(
            Verdict::MissingLinkedIdentity.to_json(),
            r#"{"result":"missing-linked-identity"}"#
        );
        assert_eq!(
            Verdict::Locked {
                retry_after_seconds: 42
            }
            .to_json(),
            r#"{"result":"locked","retryAfterSeconds":42}"#
        );
        assert_eq!(
            Verdict::Locked {
                retry_after_seconds: 0
            }
            .to_json(),
            r#"{"result":"locked","retryAfterSeconds":1}"#
        );
        assert_eq!(error_json("bad-request"), r#"{"error":"bad-request"}"#);
    }
}

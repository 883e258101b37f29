//! The wire contract of `POST /v1/credentials/verify`.
//!
//! Request body: `{"user":"<user id>","kind":"password"|"pin","secret":"<value>"}`.
//! Every verdict is HTTP 200 `application/json`; errors are 4xx with `{"error":"..."}`.

use std::fmt;

use serde::Deserialize;

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
            } => format!(
                r#"{{"result":"locked","retryAfterSeconds":{}}}"#,
                retry_after_seconds.max(1)
            ),
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

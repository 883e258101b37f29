//! The responses the filter sends itself: JSON:API 1.0 error documents and the 201 with the code.

use serde_json::json;

use crate::otp::Minted;
use crate::reply::failure::Failure;

/// A complete local reply, ready for `send_http_response`.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One error object whose `id` is the `Request-Id` of the response, as PACE's framework does.
pub fn error_reply(failure: Failure, request_id: &str) -> Reply {
    error_reply_naming(failure, request_id, None)
}

/// As `error_reply`; a 403 `insufficient-scope` names `scope`, the one the route required, in its
/// detail and its RFC 6750 challenge (config only accepts RFC 6749 scope-tokens, which need no
/// quoting).
pub fn error_reply_naming(failure: Failure, request_id: &str, scope: Option<&str>) -> Reply {
    let scope = scope.filter(|_| failure == Failure::InsufficientScope);
    let detail = match scope {
        Some(scope) => format!("The token lacks the scope {scope}."),
        None => failure.detail().to_string(),
    };
    let mut error = json!({
        "id": request_id,
        "status": failure.status().to_string(),
        "code": failure.code(),
        "title": failure.title(),
        "detail": detail,
    });
    if let (Some(pointer), Some(object)) = (failure.pointer(), error.as_object_mut()) {
        object.insert("source".into(), json!({ "pointer": pointer }));
    }
    let mut headers = vec![
        ("content-type", "application/vnd.api+json".to_string()),
        ("request-id", request_id.to_string()),
        ("cache-control", "no-store".to_string()),
    ];
    match failure {
        Failure::MethodNotAllowed => headers.push(("allow", "POST".to_string())),
        Failure::Locked {
            retry_after_seconds,
        } => headers.push(("retry-after", retry_after_seconds.to_string())),
        _ => {}
    }
    if let Some(challenge) = failure.www_authenticate() {
        let challenge = match scope {
            Some(scope) => format!("{challenge}, scope=\"{scope}\""),
            None => challenge.to_string(),
        };
        headers.push(("www-authenticate", challenge));
    }
    Reply {
        status: failure.status(),
        headers,
        body: json!({ "errors": [error] }).to_string().into_bytes(),
    }
}

/// 204 for a verified code: no body, but the `Request-Id` like every answer.
pub fn no_content_reply(request_id: &str) -> Reply {
    Reply {
        status: 204,
        headers: vec![
            ("request-id", request_id.to_string()),
            ("cache-control", "no-store".to_string()),
        ],
        body: Vec::new(),
    }
}

/// 201 with the code. `no-store`: a cached OTP is a leaked OTP.
pub fn created_reply(minted: &Minted, request_id: &str) -> Reply {
    let body = json!({
        "otp": minted.code.expose_str(),
        "expiresAt": minted.expires_at(),
    });
    Reply {
        status: 201,
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("request-id", request_id.to_string()),
            ("cache-control", "no-store".to_string()),
        ],
        body: body.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn body(reply: &Reply) -> Value {
        serde_json::from_slice(&reply.body).expect("json")
    }

    #[test]
    fn error_document_has_the_documented_shape() {
        let reply = error_reply(
            Failure::FieldInvalid {
                pointer: "/pin",
                detail: "must be a string",
            },
            "9m4e2mr0ui3e8a215n4g",
        );
        assert_eq!(reply.status, 422);
        assert_eq!(
            reply.header("Content-Type"),
            Some("application/vnd.api+json")
        );
        assert_eq!(reply.header("request-id"), Some("9m4e2mr0ui3e8a215n4g"));
        assert_eq!(
            body(&reply),
            json!({"errors": [{
                "id": "9m4e2mr0ui3e8a215n4g",
                "status": "422",
                "code": "field-invalid",
                "title": "Unprocessable request body",
                "detail": "must be a string",
                "source": {"pointer": "/pin"}
            }]})
        );
    }

    #[test]
    fn extra_headers_follow_the_failure() {
        let r = error_reply(Failure::MethodNotAllowed, "x");
        assert_eq!(r.header("allow"), Some("POST"));
        let r = error_reply(
            Failure::Locked {
                retry_after_seconds: 42,
            },
            "x",
        );
        assert_eq!(r.header("retry-after"), Some("42"));
        assert_eq!(r.status, 429);
        let r = error_reply(Failure::TokenExpired, "x");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"otp\", error=\"invalid_token\"")
        );
        assert!(body(&r)["errors"][0].get("source").is_none());
    }

    #[test]
    fn missing_linked_identity_matches_the_documented_example() {
        let r = error_reply(Failure::MissingLinkedIdentity, "cbgmhslmp1o9or9kh1p0");
        assert_eq!(
            body(&r),
            json!({"errors": [{
                "id": "cbgmhslmp1o9or9kh1p0",
                "title": "Missing linked identity for authorized access",
                "detail": "Linked identity is needed to access this resource, please check why the user does not have a linked identity",
                "status": "401",
                "code": "missing-linked-identity"
            }]})
        );
    }
}

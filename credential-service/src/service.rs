//! HTTP routing and answers, independent of the server library so it can be unit-tested.

use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::protocol::{error_json, parse_verify_body, Kind, Verdict};
use crate::store::Store;

pub const VERIFY_PATH: &str = "/v1/credentials/verify";
pub const STATS_PATH: &str = "/v1/stats";
pub const HEALTH_PATH: &str = "/healthz";

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// Why a request body could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    Unreadable,
}

/// What the service needs to know of a request, besides its body.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target as sent (path, maybe with a query string).
    pub url: &'a str,
    pub authorization: Option<&'a str>,
}

/// An answer, plus what to log about it (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// `Allow` header value, for 405 answers.
    pub allow: Option<&'static str>,
    /// The `user` of a parsed verify request.
    pub user: Option<String>,
    /// The `kind` of a parsed verify request.
    pub kind: Option<Kind>,
    /// The verdict's `result`, the error code, or `ok`.
    pub result: &'static str,
}

impl Response {
    fn error(status: u16, code: &'static str) -> Self {
        Response {
            status,
            content_type: JSON,
            body: error_json(code),
            allow: None,
            user: None,
            kind: None,
            result: code,
        }
    }

    fn ok(content_type: &'static str, body: String) -> Self {
        Response {
            status: 200,
            content_type,
            body,
            allow: None,
            user: None,
            kind: None,
            result: "ok",
        }
    }

    fn method_not_allowed(allow: &'static str) -> Self {
        Response {
            allow: Some(allow),
            ..Response::error(405, "method-not-allowed")
        }
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    password_checks: AtomicU64,
    pin_checks: AtomicU64,
    requests: AtomicU64,
}

impl Stats {
    fn to_json(&self) -> String {
        format!(
            r#"{{"password_checks":{},"pin_checks":{},"requests":{}}}"#,
            self.password_checks.load(Ordering::Relaxed),
            self.pin_checks.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }
}

/// Whether the presented `authorization` header equals the expected value exactly.
/// Compares SHA-256 digests in constant time, so neither the content nor the length of the
/// expected value leaks through timing.
pub fn auth_matches(expected: &str, presented: Option<&str>) -> bool {
    let Some(presented) = presented else {
        return false;
    };
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    a[..].ct_eq(&b[..]).into()
}

pub struct Service {
    store: Store,
    /// Required `authorization` header value, if any.
    auth: Option<String>,
    stats: Stats,
}

impl Service {
    /// `auth`: `Some(non-empty value)` to require it on verify requests.
    pub fn new(store: Store, auth: Option<String>) -> Self {
        Service {
            store,
            auth: auth.filter(|a| !a.is_empty()),
            stats: Stats::default(),
        }
    }

    pub fn requires_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// Answers one request. `read_body` is called at most once, and only for a verify
    /// request that got past the method and auth checks.
    pub fn handle(
        &self,
        req: &Request<'_>,
        read_body: &mut dyn FnMut() -> Result<Vec<u8>, BodyError>,
    ) -> Response {
        let path = req.url.split_once('?').map_or(req.url, |(p, _)| p);
        match path {
            VERIFY_PATH => {
                // Only calls to the verify path count, so tests can read the stats for free.
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                if req.method != "POST" {
                    return Response::method_not_allowed("POST");
                }
                self.verify(req, read_body)
            }
            STATS_PATH => match req.method {
                "GET" | "HEAD" => Response::ok(JSON, self.stats.to_json()),
                _ => Response::method_not_allowed("GET, HEAD"),
            },
            HEALTH_PATH => match req.method {
                "GET" | "HEAD" => Response::ok(TEXT, "ok".to_owned()),
                _ => Response::method_not_allowed("GET, HEAD"),
            },
            _ => Response::error(404, "not-found"),
        }
    }

    fn verify(
        &self,
        req: &Request<'_>,
        read_body: &mut dyn FnMut() -> Result<Vec<u8>, BodyError>,
    ) -> Response {
        if let Some(expected) = &self.auth {
            if !auth_matches(expected, req.authorization) {
                return Response::error(401, "unauthorized");
            }
        }
        let parsed = read_body()
            .ok()
            .and_then(|body| parse_verify_body(&body).ok());
        let Some(verify) = parsed else {
            return Response::error(400, "bad-request");
        };
        let counter = match verify.kind {
            Kind::Password => &self.stats.password_checks,
            Kind::Pin => &self.stats.pin_checks,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let verdict: Verdict = self.store.check(&verify);
        Response {
            status: 200,
            content_type: JSON,
            body: verdict.to_json(),
            allow: None,
            user: Some(verify.user),
            kind: Some(verify.kind),
            result: verdict.result_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{test_store, TestClock};

    fn service(auth: Option<&str>) -> Service {
        Service::new(
            test_store(3, 300, &TestClock::new()),
            auth.map(str::to_owned),
        )
    }

    fn call(svc: &Service, method: &str, url: &str, auth: Option<&str>, body: &str) -> Response {
        let req = Request {
            method,
            url,
            authorization: auth,
        };
        let body = body.as_bytes().to_vec();
        svc.handle(&req, &mut || Ok(body.clone()))
    }

    const PIN_OK: &str = r#"{"user":"demo-user","kind":"pin","secret":"8299"}"#;

    #[test]
    fn auth_compare() {
        assert!(auth_matches("Bearer s3cret", Some("Bearer s3cret")));
        assert!(!auth_matches("Bearer s3cret", Some("Bearer s3creT")));
        assert!(!auth_matches("Bearer s3cret", Some("Bearer s3cret ")));
        assert!(!auth_matches("Bearer s3cret", Some("Bearer s3cre")));
        assert!(!auth_matches("Bearer s3cret", Some("")));
        assert!(!auth_matches("Bearer s3cret", None));
    }

    #[test]
    fn auth_is_enforced_before_the_body_is_read() {
        let svc = service(Some("Bearer k"));
        assert!(svc.requires_auth());
        for presented in [None, Some("Bearer x"), Some("bearer k")] {
            let req = Request {
                method: "POST",
                url: VERIFY_PATH,
                authorization: presented,
            };
            let mut read = false;
            let r = svc.handle(&req, &mut || {
                read = true;
                Ok(PIN_OK.as_bytes().to_vec())
            });
            assert_eq!(
                (r.status, r.body.as_str()),
                (401, r#"{"error":"unauthorized"}"#)
            );
            assert!(!read);
        }
        let r = call(&svc, "POST", VERIFY_PATH, Some("Bearer k"), PIN_OK);
        assert_eq!((r.status, r.body.as_str()), (200, r#"{"result":"valid"}"#));
        // Empty configured value means no auth.
        assert!(!service(Some("")).requires_auth());
    }

    #[test]
    fn routes_and_errors() {
        let svc = service(None);
        let r = call(&svc, "GET", HEALTH_PATH, None, ""); // not a verify call: not counted
        assert_eq!(
            (r.status, r.content_type, r.body.as_str()),
            (200, TEXT, "ok")
        );
        let r = call(&svc, "GET", "/nope", None, "");
        assert_eq!(
            (r.status, r.body.as_str()),
            (404, r#"{"error":"not-found"}"#)
        );
        let r = call(&svc, "GET", VERIFY_PATH, None, "");
        assert_eq!(
            (r.status, r.body.as_str(), r.allow),
            (405, r#"{"error":"method-not-allowed"}"#, Some("POST"))
        );
        let r = call(&svc, "PUT", VERIFY_PATH, None, PIN_OK);
        assert_eq!(r.status, 405);
        let r = call(&svc, "POST", VERIFY_PATH, None, r#"{"user":"demo-user"}"#);
        assert_eq!(
            (r.status, r.body.as_str()),
            (400, r#"{"error":"bad-request"}"#)
        );
        let req = Request {
            method: "POST",
            url: VERIFY_PATH,
            authorization: None,
        };
        let r = svc.handle(&req, &mut || Err(BodyError::TooLarge));
        assert_eq!(r.status, 400);
        // Query strings do not change the route.
        let r = call(&svc, "POST", "/v1/credentials/verify?x=1", None, PIN_OK);
        assert_eq!((r.status, r.content_type), (200, JSON));
        assert_eq!(r.body, r#"{"result":"valid"}"#);
        assert_eq!(
            (r.user.as_deref(), r.kind),
            (Some("demo-user"), Some(Kind::Pin))
        );
    }

    #[test]
    fn stats_count_store_checks_by_kind() {
        let svc = service(None);
        call(&svc, "POST", VERIFY_PATH, None, PIN_OK);
        call(
            &svc,
            "POST",
            VERIFY_PATH,
            None,
            r#"{"user":"unlinked-user","kind":"password","secret":"x"}"#,
        );
        call(&svc, "POST", VERIFY_PATH, None, "not json"); // never reaches the store
        call(&svc, "GET", HEALTH_PATH, None, ""); // not a verify call: not counted
        let r = call(&svc, "GET", STATS_PATH, None, "");
        assert_eq!(r.content_type, JSON);
        assert_eq!(
            r.body,
            r#"{"password_checks":1,"pin_checks":1,"requests":3}"#
        );
    }
}

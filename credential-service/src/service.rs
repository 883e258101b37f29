//! HTTP routing and answers, independent of the server library so it can be unit-tested.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::introspect::{token_param, Decision, Introspector};
use crate::protocol::{error_json, parse_verify_body, Kind, Verdict};
use crate::store::Store;

pub const VERIFY_PATH: &str = "/v1/credentials/verify";
pub const STATS_PATH: &str = "/v1/stats";
pub const HEALTH_PATH: &str = "/healthz";
pub const JWKS_PATH: &str = "/jwks.json";
pub const INTROSPECT_PATH: &str = "/v1/introspect";

/// Largest JWKS file served. Dev key sets are a few KiB; this only bounds a mistake such as
/// pointing `--jwks-file` at something huge.
const MAX_JWKS_BYTES: u64 = 1024 * 1024;

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
    /// `WWW-Authenticate` header value, for 401 answers that name a scheme.
    pub www_authenticate: Option<&'static str>,
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
            www_authenticate: None,
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
            www_authenticate: None,
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
    /// Calls to the verify path, whatever their outcome.
    requests: AtomicU64,
    /// Calls to the JWKS path, whatever their outcome.
    jwks_requests: AtomicU64,
    /// Calls to the introspection path, whatever their outcome.
    introspections: AtomicU64,
}

impl Stats {
    fn to_json(&self) -> String {
        format!(
            r#"{{"password_checks":{},"pin_checks":{},"requests":{},"jwks_requests":{},"introspections":{}}}"#,
            self.password_checks.load(Ordering::Relaxed),
            self.pin_checks.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
            self.jwks_requests.load(Ordering::Relaxed),
            self.introspections.load(Ordering::Relaxed),
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
    /// Served as-is at [`JWKS_PATH`], re-read on every request.
    jwks_file: Option<PathBuf>,
    /// `None`: the introspection endpoint is disabled.
    introspector: Option<Introspector>,
    stats: Stats,
}

impl Service {
    /// `auth`: `Some(non-empty value)` to require it on verify requests.
    pub fn new(store: Store, auth: Option<String>) -> Self {
        Service {
            store,
            auth: auth.filter(|a| !a.is_empty()),
            jwks_file: None,
            introspector: None,
            stats: Stats::default(),
        }
    }

    /// Serves `path` at [`JWKS_PATH`]; without it that path answers 503.
    pub fn with_jwks_file(mut self, path: Option<PathBuf>) -> Self {
        self.jwks_file = path;
        self
    }

    /// Enables [`INTROSPECT_PATH`]; without it that path answers 503.
    pub fn with_introspector(mut self, introspector: Option<Introspector>) -> Self {
        self.introspector = introspector;
        self
    }

    pub fn requires_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// Answers one request. `read_body` is called at most once, and only for a verify or
    /// introspection request that got past the method and auth checks.
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
            JWKS_PATH => {
                self.stats.jwks_requests.fetch_add(1, Ordering::Relaxed);
                match req.method {
                    "GET" | "HEAD" => self.jwks(),
                    _ => Response::method_not_allowed("GET, HEAD"),
                }
            }
            INTROSPECT_PATH => {
                self.stats.introspections.fetch_add(1, Ordering::Relaxed);
                self.introspect(req, read_body)
            }
            _ => Response::error(404, "not-found"),
        }
    }

    /// The JWKS file's current contents, unchecked (tests serve broken sets on purpose).
    /// Read anew each time so tests can rotate keys by rewriting the file.
    fn jwks(&self) -> Response {
        let read = self.jwks_file.as_ref().and_then(|path| {
            let mut body = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_JWKS_BYTES + 1).read_to_string(&mut body))
                .ok()
                .filter(|n| *n as u64 <= MAX_JWKS_BYTES)
                .map(|_| body)
        });
        match read {
            Some(body) => Response::ok(JSON, body),
            None => Response::error(503, "jwks-unavailable"),
        }
    }

    /// RFC 7662: client authentication first, then `active` from the token alone.
    fn introspect(
        &self,
        req: &Request<'_>,
        read_body: &mut dyn FnMut() -> Result<Vec<u8>, BodyError>,
    ) -> Response {
        let Some(introspector) = &self.introspector else {
            return Response::error(503, "introspection-disabled");
        };
        if !introspector.delay.is_zero() {
            std::thread::sleep(introspector.delay);
        }
        if req.method != "POST" {
            return Response::method_not_allowed("POST");
        }
        if !introspector.client_ok(req.authorization) {
            // RFC 6749 §5.2: a client that tried Basic gets 401 and the scheme to use.
            return Response {
                www_authenticate: Some(r#"Basic realm="introspection""#),
                ..Response::error(401, "invalid_client")
            };
        }
        let token = read_body().ok().and_then(|body| token_param(&body).ok());
        let Some(token) = token else {
            return Response::error(400, "invalid_request");
        };
        // A clock before 1970 cannot tell expiry: fail closed.
        let decision = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(Decision::Inactive, |now| {
                introspector.decide(&token, now.as_secs())
            });
        Response {
            status: 200,
            content_type: JSON,
            body: decision.to_json(),
            allow: None,
            www_authenticate: None,
            // The token's subject, for the log line; never the token.
            user: decision.sub().map(str::to_owned),
            kind: None,
            result: match decision {
                Decision::Active(_) => "active",
                Decision::Inactive => "inactive",
            },
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
            www_authenticate: None,
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
    use serde_json::json;

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
            r#"{"password_checks":1,"pin_checks":1,"requests":3,"jwks_requests":0,"introspections":0}"#
        );
    }

    fn stats(svc: &Service) -> serde_json::Value {
        serde_json::from_str(&call(svc, "GET", STATS_PATH, None, "").body).unwrap()
    }

    /// A temporary file path unique to this test process and `name`.
    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "credential-service-test-{}-{name}",
            std::process::id()
        ))
    }

    #[test]
    fn jwks_is_served_from_the_file_as_it_is_now() {
        let path = temp_path("jwks.json");
        let _ = std::fs::remove_file(&path);
        let svc = service(None).with_jwks_file(Some(path.clone()));
        let unavailable = (503, JSON, r#"{"error":"jwks-unavailable"}"#.to_owned());
        let get = |svc: &Service| {
            let r = call(svc, "GET", JWKS_PATH, None, "");
            (r.status, r.content_type, r.body)
        };

        // Missing file, then present, then rewritten (a key rotation), then gone again.
        assert_eq!(get(&svc), unavailable);
        std::fs::write(&path, r#"{"keys":[{"kid":"one"}]}"#).unwrap();
        assert_eq!(
            get(&svc),
            (200, JSON, r#"{"keys":[{"kid":"one"}]}"#.to_owned())
        );
        std::fs::write(&path, "{\"keys\":[{\"kid\":\"two\"}]}\n").unwrap();
        assert_eq!(
            get(&svc),
            (200, JSON, "{\"keys\":[{\"kid\":\"two\"}]}\n".to_owned())
        );
        // Served as-is, even when it is not JSON: tests break it on purpose.
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(get(&svc), (200, JSON, "not json".to_owned()));
        let r = call(&svc, "HEAD", "/jwks.json?x=1", None, "");
        assert_eq!(r.status, 200);
        let r = call(&svc, "POST", JWKS_PATH, None, "");
        assert_eq!((r.status, r.allow), (405, Some("GET, HEAD")));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(get(&svc), unavailable);

        // A directory cannot be read as a file.
        let dir = service(None).with_jwks_file(Some(std::env::temp_dir()));
        assert_eq!(get(&dir), unavailable);
        // No --jwks-file at all.
        assert_eq!(get(&service(None)), unavailable);

        // Every call to the path counts, and only there; `requests` stays verify-only.
        let st = stats(&svc);
        assert_eq!(
            (&st["jwks_requests"], &st["requests"], &st["introspections"]),
            (&json!(7), &json!(0), &json!(0))
        );
    }

    mod introspection {
        use super::*;
        use crate::introspect::tests::{introspector, rs256_header, sign};
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine as _;

        const SECRET: &str = "dev-only-introspection-secret";

        fn basic(user_pass: &str) -> String {
            format!("Basic {}", STANDARD.encode(user_pass))
        }

        fn now() -> u64 {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        }

        fn enabled() -> Service {
            service(None).with_introspector(Some(introspector(SECRET)))
        }

        fn introspect(svc: &Service, auth: Option<&str>, body: &str) -> Response {
            call(svc, "POST", INTROSPECT_PATH, auth, body)
        }

        #[test]
        fn disabled_without_a_secret() {
            let svc = service(None);
            for method in ["POST", "GET"] {
                let r = call(
                    &svc,
                    method,
                    INTROSPECT_PATH,
                    Some(&basic("otp-filter:")),
                    "",
                );
                assert_eq!(
                    (r.status, r.body.as_str()),
                    (503, r#"{"error":"introspection-disabled"}"#)
                );
            }
            assert_eq!(stats(&svc)["introspections"], 2);
        }

        #[test]
        fn client_must_authenticate_before_the_body_is_read() {
            let svc = enabled();
            let wrong_secret = basic("otp-filter:wrong");
            let wrong_client = basic(&format!("someone:{SECRET}"));
            for presented in [
                None,
                Some(wrong_secret.as_str()),
                Some(wrong_client.as_str()),
                Some(SECRET),
                Some("Bearer dev-only-introspection-secret"),
            ] {
                let req = Request {
                    method: "POST",
                    url: INTROSPECT_PATH,
                    authorization: presented,
                };
                let mut read = false;
                let r = svc.handle(&req, &mut || {
                    read = true;
                    Ok(b"token=x".to_vec())
                });
                assert_eq!(
                    (r.status, r.body.as_str(), r.www_authenticate),
                    (
                        401,
                        r#"{"error":"invalid_client"}"#,
                        Some(r#"Basic realm="introspection""#)
                    )
                );
                assert!(!read);
            }
            let r = call(&svc, "GET", INTROSPECT_PATH, None, "");
            assert_eq!((r.status, r.allow), (405, Some("POST")));
        }

        #[test]
        fn answers_active_or_inactive() {
            let svc = enabled();
            let auth = basic(&format!("otp-filter:{SECRET}"));
            let now = now();
            let token = sign(
                "rs256-DEV-ONLY.pem",
                &rs256_header(),
                &json!({"sub":"demo-user","scope":"openid user:otp:create","iat":now,
                        "exp":now + 300,"iss":"https://id.demo.invalid/realms/pace",
                        "aud":"otp-filter-demo"}),
            );
            // Plain and fully percent-encoded forms of the same token, with a type hint.
            let encoded: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
            for body in [
                format!("token={token}"),
                format!("token_type_hint=access_token&token={encoded}"),
            ] {
                let r = introspect(&svc, Some(&auth), &body);
                assert_eq!((r.status, r.content_type), (200, JSON));
                let answer: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                assert_eq!(
                    answer,
                    json!({"active":true,"sub":"demo-user","scope":"openid user:otp:create",
                           "iat":now,"exp":now + 300,"iss":"https://id.demo.invalid/realms/pace",
                           "aud":"otp-filter-demo"})
                );
                assert_eq!((r.user.as_deref(), r.result), (Some("demo-user"), "active"));
            }

            let expired = sign(
                "rs256-DEV-ONLY.pem",
                &rs256_header(),
                &json!({"sub":"demo-user","exp":now - 1}),
            );
            let other_key = sign(
                "rs256-next-DEV-ONLY.pem",
                &rs256_header(),
                &json!({"sub":"demo-user","exp":now + 300}),
            );
            for token in [expired.as_str(), other_key.as_str(), "not-a-jwt"] {
                let r = introspect(&svc, Some(&auth), &format!("token={token}"));
                assert_eq!(
                    (r.status, r.body.as_str(), r.user, r.result),
                    (200, r#"{"active":false}"#, None, "inactive")
                );
            }

            for bad in [
                "",
                "token=",
                "token_type_hint=access_token",
                "token=%zz",
                "token=a&token=b",
            ] {
                let r = introspect(&svc, Some(&auth), bad);
                assert_eq!(
                    (r.status, r.body.as_str()),
                    (400, r#"{"error":"invalid_request"}"#)
                );
            }
            let req = Request {
                method: "POST",
                url: INTROSPECT_PATH,
                authorization: Some(&auth),
            };
            let r = svc.handle(&req, &mut || Err(BodyError::TooLarge));
            assert_eq!(r.status, 400);
            let r = svc.handle(&req, &mut || Err(BodyError::Unreadable));
            assert_eq!(r.status, 400);

            call(&svc, "GET", HEALTH_PATH, None, "");
            let st = stats(&svc);
            assert_eq!(
                (&st["introspections"], &st["requests"], &st["jwks_requests"]),
                (&json!(12), &json!(0), &json!(0))
            );
        }

        #[test]
        fn delay_applies_before_answering() {
            let mut i = introspector(SECRET);
            i.delay = std::time::Duration::from_millis(150);
            let svc = service(None).with_introspector(Some(i));
            let started = std::time::Instant::now();
            let r = introspect(
                &svc,
                Some(&basic(&format!("otp-filter:{SECRET}"))),
                "token=x",
            );
            assert_eq!(r.body, r#"{"active":false}"#);
            assert!(started.elapsed() >= std::time::Duration::from_millis(150));
        }
    }
}

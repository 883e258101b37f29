//! The request flow as a state machine, free of host calls. The adapter feeds it what Envoy says
//! (headers, body progress, callout answers) and carries out the `Step` it returns.
//!
//! Check order (NOTES.md, first failure wins): route and method 405, bearer token 401, scope 403,
//! Accept 406, Content-Type 415, body size 413, body 422, then the credential service: password
//! first, then PIN; 404 when neither is valid; finally mint and answer 201.
//!
//! With token introspection the token check waits for a callout. The later header checks are
//! computed at once but reported only after the token passed, and a body that arrives meanwhile is
//! kept, so the order above holds in every mode.

use serde_json::{Map, Value};

use crate::body::{self, Credentials};
use crate::claims_cache::{token_hash, ClaimsCache, TokenHash};
use crate::config::Config;
use crate::credential::{self, Callout, SecretKind, Verdict};
use crate::failure::Failure;
use crate::introspection::{self, Answer};
use crate::jsonapi::{self, Reply};
use crate::jwks::RemoteJwks;
use crate::negotiation;
use crate::otp;
use crate::secret::Secret;
use crate::token::{self, TokenSource};

/// The request headers the flow reads. Absent headers are `None`.
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub authorization: Option<&'a str>,
    pub accept: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub content_length: Option<&'a str>,
    /// In `jwt_authn` mode: the claims Envoy's `jwt_authn` verified, if it accepted a token.
    pub verified_claims: Option<Map<String, Value>>,
    /// True when the headers end the request (no body follows).
    pub end_of_stream: bool,
}

/// Per-VM state the token check may use: the fetched JWKS and the cache of verified tokens
/// (signatures checked, or introspection answers).
#[derive(Default)]
pub struct TokenState<'a> {
    pub remote_jwks: Option<&'a mut RemoteJwks>,
    pub verified: Option<&'a mut ClaimsCache>,
}

/// What the adapter must do next.
#[derive(Debug)]
pub enum Step {
    /// Keep the request paused: more body is needed, or a callout is in flight.
    Wait,
    /// Send this callout (to the credential service or the introspection endpoint) and wait.
    Call(Callout),
    /// Answer the client and end the exchange. `outcome` is the error code or `"issued"`.
    Reply { reply: Reply, outcome: &'static str },
}

enum Stage {
    Introspecting {
        token: TokenHash,
    },
    /// The answer is known (an error) but the request body is still arriving: it is answered when
    /// the body ends, so Envoy can keep the connection (HTTP/1.1) or end the stream cleanly (h2)
    /// instead of resetting a request the client is still sending.
    Draining(Failure),
    AwaitingBody,
    CheckingPassword {
        pin: Option<Secret>,
    },
    CheckingPin,
    Finished,
}

/// A body that arrived while the token was still being introspected.
enum EarlyBody {
    None,
    TooLarge,
    Complete(Secret),
}

/// One request to the OTP route, from its headers to the reply.
pub struct Exchange {
    request_id: String,
    user_id: String,
    stage: Stage,
    /// The first failing check after the token (Accept, Content-Type, declared length).
    after_token: Option<Failure>,
    early_body: EarlyBody,
}

/// True when the path (ignoring any query string) is one the filter serves.
pub fn serves_path(config: &Config, path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    config.routes.iter().any(|route| route == path)
}

/// Accept, Content-Type and the declared length, in that order.
fn check_representation(config: &Config, head: &RequestHead) -> Option<Failure> {
    if !negotiation::accept_is_acceptable(head.accept) {
        return Some(Failure::NotAcceptable);
    }
    if !negotiation::content_type_is_supported(head.content_type) {
        return Some(Failure::UnsupportedMediaType);
    }
    // A declared length over the limit is refused before a byte of body is buffered.
    let declared = head
        .content_length
        .and_then(|l| l.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > config.max_body_bytes as u64) {
        return Some(Failure::PayloadTooLarge);
    }
    None
}

impl Exchange {
    /// Starts the exchange at the request headers. `request_id` is the one the reply will carry.
    pub fn start(
        config: &Config,
        state: TokenState,
        head: &RequestHead,
        request_id: String,
        now_ms: u64,
    ) -> (Self, Step) {
        let mut exchange = Exchange {
            request_id,
            user_id: String::new(),
            stage: Stage::AwaitingBody,
            after_token: None,
            early_body: EarlyBody::None,
        };
        if head.method != "POST" {
            let step = exchange.fail_after_body(Failure::MethodNotAllowed, head.end_of_stream);
            return (exchange, step);
        }
        exchange.after_token = check_representation(config, head);
        let step = match exchange.check_token(config, state, head, now_ms) {
            Err(failure) => exchange.fail_after_body(failure, head.end_of_stream),
            Ok(Some(call)) => Step::Call(call),
            Ok(None) => exchange.token_passed(config, head.end_of_stream),
        };
        (exchange, step)
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Verifies the token now, or returns the introspection callout that will.
    fn check_token(
        &mut self,
        config: &Config,
        state: TokenState,
        head: &RequestHead,
        now_ms: u64,
    ) -> Result<Option<Callout>, Failure> {
        let settings = &config.token;
        let now_secs = now_ms / 1000;
        match &settings.source {
            TokenSource::Jwt => {
                let bearer = token::bearer_token(head.authorization)?;
                let verified =
                    token::verify(settings, state.remote_jwks, state.verified, bearer, now_ms)?;
                self.user_id = verified.user_id;
                Ok(None)
            }
            TokenSource::JwtAuthn { .. } => match (&head.verified_claims, head.authorization) {
                (Some(claims), _) => {
                    self.user_id = token::check_verified_claims(settings, claims)?.user_id;
                    Ok(None)
                }
                // jwt_authn saw a token and did not vouch for it.
                (None, Some(_)) => Err(Failure::TokenRejected),
                (None, None) => Err(Failure::TokenMissing),
            },
            TokenSource::Introspection(introspection_settings) => {
                let bearer = token::bearer_token(head.authorization)?;
                let hash = token_hash(bearer);
                let cached = state.verified.and_then(|cache| cache.get(&hash, now_ms));
                if let Some(claims) = cached {
                    self.user_id = token::check_claims(settings, &claims, now_secs)?.user_id;
                    return Ok(None);
                }
                self.stage = Stage::Introspecting { token: hash };
                if head.end_of_stream {
                    self.early_body = EarlyBody::Complete(Secret::from_bytes(Vec::new()));
                }
                Ok(Some(introspection::callout(
                    introspection_settings,
                    bearer,
                    &self.request_id,
                )))
            }
        }
    }

    /// The token is good: report the first later header failure, or go on to the body.
    fn token_passed(&mut self, config: &Config, end_of_stream: bool) -> Step {
        if let Some(failure) = self.after_token.take() {
            let body_done = end_of_stream || !matches!(self.early_body, EarlyBody::None);
            return self.fail_after_body(failure, body_done);
        }
        self.stage = Stage::AwaitingBody;
        match std::mem::replace(&mut self.early_body, EarlyBody::None) {
            EarlyBody::TooLarge => self.fail(Failure::PayloadTooLarge),
            EarlyBody::Complete(body) => self.read_credentials(config, body.expose()),
            EarlyBody::None if end_of_stream => self.read_credentials(config, b""),
            EarlyBody::None => Step::Wait,
        }
    }

    /// Body progress. `buffered` is the size Envoy holds so far; `read` fetches it once complete.
    pub fn on_body(
        &mut self,
        config: &Config,
        buffered: usize,
        end_of_stream: bool,
        read: impl FnOnce() -> Result<Vec<u8>, ()>,
    ) -> Step {
        if let Stage::Draining(failure) = self.stage {
            // Buffered, never parsed; answered once complete, or at once if it grows too large.
            if end_of_stream || buffered > config.max_body_bytes {
                return self.fail(failure);
            }
            return Step::Wait;
        }
        let introspecting = matches!(self.stage, Stage::Introspecting { .. });
        if !introspecting && !matches!(self.stage, Stage::AwaitingBody) {
            return Step::Wait;
        }
        if buffered > config.max_body_bytes {
            if introspecting {
                // 413 comes after the token checks: keep the verdict until the token is known.
                self.early_body = EarlyBody::TooLarge;
                return Step::Wait;
            }
            return self.fail(Failure::PayloadTooLarge);
        }
        if !end_of_stream {
            return Step::Wait;
        }
        let Ok(bytes) = read() else {
            return self.fail(Failure::Internal("The request body could not be read."));
        };
        if introspecting {
            self.early_body = EarlyBody::Complete(Secret::from_bytes(bytes));
            return Step::Wait;
        }
        self.read_credentials(config, &bytes)
    }

    fn read_credentials(&mut self, config: &Config, bytes: &[u8]) -> Step {
        match body::parse(bytes) {
            Err(failure) => self.fail(failure),
            Ok(Credentials {
                password: Some(password),
                pin,
            }) => {
                let call = self.callout(config, SecretKind::Password, &password);
                self.stage = Stage::CheckingPassword { pin };
                Step::Call(call)
            }
            Ok(Credentials {
                password: None,
                pin: Some(pin),
            }) => {
                let call = self.callout(config, SecretKind::Pin, &pin);
                self.stage = Stage::CheckingPin;
                Step::Call(call)
            }
            Ok(_) => self.fail(Failure::CredentialsMissing),
        }
    }

    /// A callout answered (or Envoy answered for it): introspection or the credential service.
    pub fn on_answer(
        &mut self,
        config: &Config,
        cache: Option<&mut ClaimsCache>,
        status: Option<u16>,
        body: &[u8],
        now_ms: u64,
    ) -> Step {
        let stage = std::mem::replace(&mut self.stage, Stage::Finished);
        let pending_pin = match stage {
            Stage::Introspecting { token } => {
                return self.on_introspection(config, cache, token, status, body, now_ms)
            }
            Stage::CheckingPassword { pin } => pin,
            Stage::CheckingPin => None,
            Stage::AwaitingBody | Stage::Draining(_) | Stage::Finished => {
                return self.fail(Failure::Internal(
                    "A credential answer arrived unexpectedly.",
                ))
            }
        };
        match credential::read_answer(status, body) {
            Err(failure) => self.fail(failure),
            Ok(Verdict::Valid) => self.mint(config, now_ms),
            Ok(Verdict::Invalid) => match pending_pin {
                Some(pin) => {
                    let call = self.callout(config, SecretKind::Pin, &pin);
                    self.stage = Stage::CheckingPin;
                    Step::Call(call)
                }
                None => self.fail(Failure::InvalidCredentials),
            },
            Ok(Verdict::UnknownUser) => self.fail(Failure::UserNotFound),
            Ok(Verdict::MissingLinkedIdentity) => self.fail(Failure::MissingLinkedIdentity),
            Ok(Verdict::Locked {
                retry_after_seconds,
            }) => self.fail(Failure::Locked {
                retry_after_seconds,
            }),
        }
    }

    fn on_introspection(
        &mut self,
        config: &Config,
        cache: Option<&mut ClaimsCache>,
        token: TokenHash,
        status: Option<u16>,
        body: &[u8],
        now_ms: u64,
    ) -> Step {
        let body_done = !matches!(self.early_body, EarlyBody::None);
        let claims = match introspection::read_answer(status, body) {
            Err(failure) => return self.fail_after_body(failure, body_done),
            Ok(Answer::Inactive) => return self.fail_after_body(Failure::TokenInactive, body_done),
            Ok(Answer::Active(claims)) => claims,
        };
        match token::check_claims(&config.token, &claims, now_ms / 1000) {
            Err(failure) => self.fail_after_body(failure, body_done),
            Ok(verified) => {
                if let Some(cache) = cache {
                    cache.insert(token, claims, now_ms);
                }
                self.user_id = verified.user_id;
                // Whether the body already ended is in `early_body`; a body still to come arrives later.
                self.token_passed(config, false)
            }
        }
    }

    /// `dispatch_http_call` refused the callout (unknown cluster, missing header): fail closed.
    pub fn on_call_not_sent(&mut self) -> Step {
        self.fail(Failure::Internal(
            "The credential service call could not be started.",
        ))
    }

    fn callout(&self, config: &Config, kind: SecretKind, secret: &Secret) -> Callout {
        credential::callout(
            &config.credential_service,
            &self.user_id,
            kind,
            secret,
            &self.request_id,
        )
    }

    fn mint(&mut self, config: &Config, now_ms: u64) -> Step {
        self.stage = Stage::Finished;
        match otp::mint(&config.otp, &self.user_id, now_ms) {
            Some(minted) => Step::Reply {
                reply: jsonapi::created_reply(&minted, &self.request_id),
                outcome: "issued",
            },
            None => self.fail(Failure::Internal(
                "The one-time password could not be computed.",
            )),
        }
    }

    /// Fails now if the request is complete (or too large to wait for), else once its body ends.
    fn fail_after_body(&mut self, failure: Failure, body_done: bool) -> Step {
        if body_done || failure == Failure::PayloadTooLarge {
            return self.fail(failure);
        }
        self.stage = Stage::Draining(failure);
        Step::Wait
    }

    fn fail(&mut self, failure: Failure) -> Step {
        self.stage = Stage::Finished;
        Step::Reply {
            reply: jsonapi::error_reply(failure, &self.request_id),
            outcome: failure.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, claims, merged, NOW};
    use serde_json::{json, Value};

    const ID: &str = "9m4e2mr0ui3e8a215n4g";
    const NOW_MS: u64 = NOW * 1000;

    struct Request {
        method: &'static str,
        authorization: Option<String>,
        accept: Option<&'static str>,
        content_type: Option<&'static str>,
        content_length: Option<&'static str>,
    }

    fn valid() -> Request {
        Request {
            method: "POST",
            authorization: Some(format!("Bearer {}", testkit::rs256(&claims()))),
            accept: Some("application/json"),
            content_type: Some("application/json"),
            content_length: None,
        }
    }

    fn start(req: &Request, end_of_stream: bool) -> (Exchange, Step) {
        let head = RequestHead {
            method: req.method,
            authorization: req.authorization.as_deref(),
            accept: req.accept,
            content_type: req.content_type,
            content_length: req.content_length,
            verified_claims: None,
            end_of_stream,
        };
        Exchange::start(
            &testkit::config(),
            TokenState::default(),
            &head,
            ID.to_string(),
            NOW_MS,
        )
    }

    /// The status and error code of a reply step.
    fn answer(step: &Step) -> (u16, String) {
        match step {
            Step::Reply { reply, outcome } => {
                let body: Value = serde_json::from_slice(&reply.body).expect("json body");
                let code = body["errors"][0]["code"]
                    .as_str()
                    .unwrap_or("issued")
                    .to_string();
                assert_eq!(code, *outcome);
                (reply.status, code)
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn with_body(body: &str) -> (Exchange, Step) {
        let (mut exchange, step) = start(&valid(), false);
        assert!(matches!(step, Step::Wait));
        let bytes = body.as_bytes().to_vec();
        let step = exchange.on_body(&testkit::config(), bytes.len(), true, || Ok(bytes));
        (exchange, step)
    }

    fn callout_body(step: &Step) -> Value {
        match step {
            Step::Call(call) => serde_json::from_slice(call.body.expose()).expect("callout json"),
            other => panic!("expected a callout, got {other:?}"),
        }
    }

    #[test]
    fn serves_only_configured_paths() {
        let c = testkit::config();
        assert!(serves_path(&c, "/user/2021-2/user/otp"));
        assert!(serves_path(&c, "/user/2025-1/user/otp?x=1"));
        assert!(!serves_path(&c, "/user/2021-2/user/otp/"));
        assert!(!serves_path(&c, "/user/2019-1/user/otp"));
        assert!(!serves_path(&c, "/user/2021-2/user/otp/verify"));
        assert!(!serves_path(&c, "/USER/2021-2/user/otp"));
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        // Each request breaks every check from its row on; the earliest must win.
        let expired = format!(
            "Bearer {}",
            testkit::rs256(&merged(&claims(), &json!({"exp": 1})))
        );
        let no_scope = format!(
            "Bearer {}",
            testkit::rs256(&merged(&claims(), &json!({"scope": "openid"})))
        );
        let all_bad = |r: Request| Request {
            accept: Some("text/html"),
            content_type: Some("text/plain"),
            content_length: Some("999999"),
            ..r
        };
        let cases: Vec<(Request, (u16, &str))> = vec![
            (
                all_bad(Request {
                    method: "GET",
                    authorization: None,
                    ..valid()
                }),
                (405, "method-not-allowed"),
            ),
            (
                all_bad(Request {
                    authorization: None,
                    ..valid()
                }),
                (401, "token-missing"),
            ),
            (
                all_bad(Request {
                    authorization: Some(expired),
                    ..valid()
                }),
                (401, "token-expired"),
            ),
            (
                all_bad(Request {
                    authorization: Some(no_scope),
                    ..valid()
                }),
                (403, "insufficient-scope"),
            ),
            (all_bad(valid()), (406, "not-acceptable")),
            (
                Request {
                    content_type: Some("text/plain"),
                    content_length: Some("999999"),
                    ..valid()
                },
                (415, "unsupported-media-type"),
            ),
            (
                Request {
                    content_length: Some("4097"),
                    ..valid()
                },
                (413, "payload-too-large"),
            ),
        ];
        for (req, (status, code)) in cases {
            let (_, step) = start(&req, true);
            assert_eq!(answer(&step), (status, code.to_string()));
        }
    }

    #[test]
    fn errors_found_at_the_headers_wait_for_the_body_to_end() {
        let c = testkit::config();
        let no_token = Request {
            authorization: None,
            ..valid()
        };
        let (mut exchange, step) = start(&no_token, false);
        assert!(matches!(step, Step::Wait), "the client is still sending");
        assert!(matches!(
            exchange.on_body(&c, 100, false, || Err(())),
            Step::Wait
        ));
        let step = exchange.on_body(&c, 200, true, || panic!("a drained body is never read"));
        assert_eq!(answer(&step), (401, "token-missing".into()));
        // A body that grows past the limit is not waited for.
        let (mut exchange, _) = start(&no_token, false);
        let step = exchange.on_body(&c, 4097, false, || Err(()));
        assert_eq!(answer(&step), (401, "token-missing".into()));
        // A declared length over the limit is answered at once.
        let too_long = Request {
            content_length: Some("5000"),
            ..valid()
        };
        assert_eq!(
            answer(&start(&too_long, false).1),
            (413, "payload-too-large".into())
        );
    }

    #[test]
    fn an_empty_body_is_unprocessable() {
        let (_, step) = start(&valid(), true);
        assert_eq!(answer(&step), (422, "body-not-json".into()));
    }

    #[test]
    fn body_is_buffered_and_bounded() {
        let c = testkit::config();
        let (mut exchange, _) = start(&valid(), false);
        assert!(matches!(
            exchange.on_body(&c, 10, false, || Err(())),
            Step::Wait
        ));
        let step = exchange.on_body(&c, 4097, false, || Err(()));
        assert_eq!(answer(&step), (413, "payload-too-large".into()));
        // Once answered, later body callbacks change nothing.
        assert!(matches!(
            exchange.on_body(&c, 4097, true, || Err(())),
            Step::Wait
        ));

        let (mut exchange, _) = start(&valid(), false);
        let step = exchange.on_body(&c, 5, true, || Err(()));
        assert_eq!(answer(&step), (500, "internal-error".into()));
    }

    #[test]
    fn body_errors_point_at_the_field() {
        let (_, step) = with_body(r#"{"pin":8299}"#);
        match &step {
            Step::Reply { reply, .. } => {
                let body: Value = serde_json::from_slice(&reply.body).unwrap();
                assert_eq!(body["errors"][0]["source"]["pointer"], "/pin");
                assert_eq!(reply.status, 422);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn password_first_then_pin_then_mint() {
        let c = testkit::config();
        let (mut exchange, step) = with_body(r#"{"password":"wrong","pin":"8299"}"#);
        assert_eq!(
            callout_body(&step),
            json!({"user": "demo-user", "kind": "password", "secret": "wrong"})
        );
        let step = exchange.on_answer(&c, None, Some(200), br#"{"result":"invalid"}"#, NOW_MS);
        assert_eq!(
            callout_body(&step),
            json!({"user": "demo-user", "kind": "pin", "secret": "8299"})
        );
        let step = exchange.on_answer(&c, None, Some(200), br#"{"result":"valid"}"#, NOW_MS);
        assert_eq!(answer(&step), (201, "issued".into()));
        let Step::Reply { reply, .. } = step else {
            unreachable!()
        };
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("request-id"), Some(ID));
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        let otp = body["otp"].as_str().unwrap();
        assert_eq!(otp.len(), 6);
        // 1_800_000_000 is a multiple of the 60 s step: the code expires 300 s later.
        assert_eq!(body["expiresAt"], "2027-01-15T08:05:00.000Z");
        // The same user in the same step gets the same code.
        let again = otp::mint(&c.otp, "demo-user", NOW_MS + 59_000).unwrap();
        assert_eq!(again.code.expose_str(), otp);
    }

    #[test]
    fn a_valid_password_skips_the_pin() {
        let c = testkit::config();
        let (mut exchange, _) = with_body(r#"{"password":"right","pin":"0000"}"#);
        let step = exchange.on_answer(&c, None, Some(200), br#"{"result":"valid"}"#, NOW_MS);
        assert_eq!(answer(&step).0, 201);
    }

    #[test]
    fn pin_only_goes_straight_to_the_pin() {
        let (_, step) = with_body(r#"{"pin":"8299"}"#);
        assert_eq!(callout_body(&step)["kind"], "pin");
    }

    #[test]
    fn verdicts_map_to_answers() {
        let c = testkit::config();
        let cases: [(&[u8], u16, &str); 5] = [
            (br#"{"result":"invalid"}"#, 404, "invalid-credentials"),
            (br#"{"result":"unknown-user"}"#, 404, "user-not-found"),
            (
                br#"{"result":"missing-linked-identity"}"#,
                401,
                "missing-linked-identity",
            ),
            (
                br#"{"result":"locked","retryAfterSeconds":120}"#,
                429,
                "too-many-attempts",
            ),
            (b"garbage", 500, "credential-service-bad-answer"),
        ];
        for (answer_body, status, code) in cases {
            // Password and PIN given: every verdict but "invalid" ends the exchange at once.
            let (mut exchange, _) = with_body(r#"{"pin":"8299"}"#);
            let step = exchange.on_answer(&c, None, Some(200), answer_body, NOW_MS);
            assert_eq!(answer(&step), (status, code.to_string()));
        }
        let (mut exchange, _) = with_body(r#"{"password":"x","pin":"8299"}"#);
        let step = exchange.on_answer(&c, None, Some(200), br#"{"result":"unknown-user"}"#, NOW_MS);
        assert_eq!(
            answer(&step),
            (404, "user-not-found".into()),
            "no PIN check for an unknown user"
        );
        for (status, code) in [
            (None, "credential-service-unavailable"),
            (Some(503), "credential-service-unavailable"),
            (Some(504), "credential-service-timeout"),
            (Some(500), "credential-service-error"),
        ] {
            let (mut exchange, _) = with_body(r#"{"password":"x","pin":"8299"}"#);
            let step = exchange.on_answer(&c, None, status, b"", NOW_MS);
            assert_eq!(answer(&step), (500, code.to_string()));
            // Fail closed: a second (stray) answer cannot mint either.
            let step = exchange.on_answer(&c, None, Some(200), br#"{"result":"valid"}"#, NOW_MS);
            assert_eq!(answer(&step), (500, "internal-error".into()));
        }
    }

    #[test]
    fn a_callout_that_cannot_be_sent_fails_closed() {
        let (mut exchange, _) = with_body(r#"{"pin":"8299"}"#);
        assert_eq!(
            answer(&exchange.on_call_not_sent()),
            (500, "internal-error".into())
        );
    }

    #[test]
    fn no_reply_ever_contains_the_secrets() {
        let c = testkit::config();
        let token = testkit::rs256(&claims());
        let (mut exchange, _) = with_body(r#"{"password":"hunter2-secret","pin":"8299"}"#);
        let mut replies = Vec::new();
        let step = exchange.on_answer(&c, None, Some(200), br#"{"result":"invalid"}"#, NOW_MS);
        replies.push(exchange.on_answer(&c, None, Some(200), br#"{"result":"invalid"}"#, NOW_MS));
        drop(step);
        let (_, step) = with_body(r#"{"pin":8299,"password":"hunter2-secret"}"#);
        replies.push(step);
        for step in replies {
            let Step::Reply { reply, .. } = step else {
                panic!("reply expected")
            };
            let text =
                String::from_utf8_lossy(&reply.body).to_string() + &format!("{:?}", reply.headers);
            for secret in ["hunter2-secret", "8299", token.as_str()] {
                assert!(!text.contains(secret), "{secret} leaked in {text}");
            }
        }
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;
    use crate::credential::Upstream;
    use crate::testkit::{self, claims, merged, NOW};
    use serde_json::json;

    const NOW_MS: u64 = NOW * 1000;

    fn introspection_config() -> Config {
        let mut value = testkit::config_json();
        let token = value["token"].as_object_mut().unwrap();
        token.remove("jwks");
        token.remove("hmac_keys");
        token.insert("mode".into(), json!("introspection"));
        token.insert(
            "introspection".into(),
            json!({"cluster": "idp", "authority": "idp", "path": "/introspect",
                   "client_id": "otp-filter", "client_secret_env": "HS_SECRET"}),
        );
        testkit::config_from(&value).unwrap()
    }

    fn head<'a>(auth: &'a str, accept: Option<&'a str>, end_of_stream: bool) -> RequestHead<'a> {
        RequestHead {
            method: "POST",
            authorization: Some(auth),
            accept,
            content_type: Some("application/json"),
            content_length: None,
            verified_claims: None,
            end_of_stream,
        }
    }

    fn active() -> Vec<u8> {
        merged(&claims(), &json!({"active": true}))
            .to_string()
            .into_bytes()
    }

    fn upstream(step: &Step) -> Option<Upstream> {
        match step {
            Step::Call(call) => Some(call.upstream),
            _ => None,
        }
    }

    fn code(step: &Step) -> &'static str {
        match step {
            Step::Reply { outcome, .. } => outcome,
            _ => "(no reply)",
        }
    }

    #[test]
    fn introspection_holds_the_body_until_the_token_is_known() {
        let config = introspection_config();
        let mut cache = ClaimsCache::new(10, std::time::Duration::from_secs(60));
        let auth = format!("Bearer {}", testkit::rs256(&claims()));
        let state = TokenState {
            remote_jwks: None,
            verified: Some(&mut cache),
        };
        let (mut ex, step) = Exchange::start(
            &config,
            state,
            &head(&auth, None, false),
            "id".into(),
            NOW_MS,
        );
        assert_eq!(upstream(&step), Some(Upstream::Introspection));
        let body = br#"{"pin":"8299"}"#.to_vec();
        assert!(matches!(
            ex.on_body(&config, body.len(), true, || Ok(body)),
            Step::Wait
        ));
        let step = ex.on_answer(&config, Some(&mut cache), Some(200), &active(), NOW_MS);
        assert_eq!(
            upstream(&step),
            Some(Upstream::CredentialService),
            "the held body goes on"
        );
        assert_eq!(cache.len(), 1);

        // The same token again: answered from the cache, no introspection.
        let state = TokenState {
            remote_jwks: None,
            verified: Some(&mut cache),
        };
        let (_, step) = Exchange::start(
            &config,
            state,
            &head(&auth, Some("text/html"), true),
            "id".into(),
            NOW_MS,
        );
        assert_eq!(code(&step), "not-acceptable");
    }

    #[test]
    fn introspection_reports_the_token_before_later_failures() {
        let config = introspection_config();
        let auth = format!("Bearer {}", testkit::rs256(&claims()));
        let start = |accept, eos| {
            Exchange::start(
                &config,
                TokenState::default(),
                &head(&auth, accept, eos),
                "id".into(),
                NOW_MS,
            )
        };
        let (mut ex, _) = start(Some("text/html"), true);
        assert_eq!(
            code(&ex.on_answer(&config, None, Some(200), br#"{"active":false}"#, NOW_MS)),
            "token-inactive"
        );
        // The body is still arriving when the verdict is known: answered when it ends.
        let (mut ex, _) = start(Some("text/html"), false);
        assert!(matches!(
            ex.on_answer(&config, None, Some(200), br#"{"active":false}"#, NOW_MS),
            Step::Wait
        ));
        assert_eq!(
            code(&ex.on_body(&config, 3, true, || Err(()))),
            "token-inactive"
        );
        let (mut ex, _) = start(Some("text/html"), true);
        assert_eq!(
            code(&ex.on_answer(&config, None, Some(200), &active(), NOW_MS)),
            "not-acceptable"
        );
        let (mut ex, _) = start(None, false);
        assert!(matches!(
            ex.on_body(&config, 5000, false, || Err(())),
            Step::Wait
        ));
        assert_eq!(
            code(&ex.on_answer(&config, None, Some(200), &active(), NOW_MS)),
            "payload-too-large"
        );
        let (mut ex, _) = start(None, true);
        assert_eq!(
            code(&ex.on_answer(&config, None, Some(200), &active(), NOW_MS)),
            "body-not-json"
        );
        let (mut ex, _) = start(None, false);
        assert!(
            matches!(
                ex.on_answer(&config, None, Some(200), &active(), NOW_MS),
                Step::Wait
            ),
            "body still to come"
        );
        let body = br#"{"pin":"8299"}"#.to_vec();
        assert_eq!(
            upstream(&ex.on_body(&config, body.len(), true, || Ok(body))),
            Some(Upstream::CredentialService)
        );
        let (mut ex, _) = start(None, true);
        assert_eq!(
            code(&ex.on_answer(&config, None, Some(504), b"", NOW_MS)),
            "introspection-timeout"
        );
    }

    #[test]
    fn jwt_authn_mode_reads_verified_claims() {
        let mut value = testkit::config_json();
        let token = value["token"].as_object_mut().unwrap();
        for field in ["jwks", "hmac_keys", "issuer", "audiences"] {
            token.remove(field);
        }
        token.insert("mode".into(), json!("jwt_authn"));
        token.insert(
            "jwt_authn".into(),
            json!({"payload_metadata_key": "jwt_payload"}),
        );
        let config = testkit::config_from(&value).unwrap();
        let verified = |claims: Option<serde_json::Value>, auth: Option<&str>| {
            let head = RequestHead {
                method: "POST",
                authorization: auth,
                accept: None,
                content_type: Some("application/json"),
                content_length: None,
                verified_claims: claims.map(|c| c.as_object().unwrap().clone()),
                end_of_stream: true,
            };
            Exchange::start(&config, TokenState::default(), &head, "id".into(), NOW_MS).1
        };
        assert_eq!(
            code(&verified(
                Some(json!({"sub": "u", "scope": "user:otp:create"})),
                Some("Bearer x")
            )),
            "body-not-json",
            "past the token checks, to the (empty) body"
        );
        assert_eq!(code(&verified(None, Some("Bearer x"))), "token-rejected");
        assert_eq!(code(&verified(None, None)), "token-missing");
        assert_eq!(
            code(&verified(
                Some(json!({"sub": "u", "scope": "openid"})),
                None
            )),
            "insufficient-scope"
        );
        assert_eq!(
            code(&verified(Some(json!({"scope": "user:otp:create"})), None)),
            "token-claims-invalid"
        );
    }

    #[test]
    fn modes_refuse_settings_of_other_modes() {
        let mut value = testkit::config_json();
        value["token"]["mode"] = json!("jwt_authn");
        let message = match testkit::config_from(&value) {
            Err(m) => m,
            Ok(_) => panic!("accepted"),
        };
        for expected in [
            "token.issuer: is checked by the jwt_authn provider in jwt_authn mode",
            "token: keys (jwks, remote_jwks, hmac_keys) are not used in jwt_authn mode",
            "token.jwt_authn.payload_metadata_key: is required",
        ] {
            assert!(
                message.contains(expected),
                "missing {expected:?} in {message}"
            );
        }
        value["token"]["mode"] = json!("magic");
        let message = match testkit::config_from(&value) {
            Err(m) => m,
            Ok(_) => panic!("accepted"),
        };
        assert!(message.contains("token.mode: must be"), "{message}");
    }
}

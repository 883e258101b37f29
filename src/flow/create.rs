//! The create route (`POST /user/<v>/user/otp`): the body's password and PIN, checked at the
//! credential service (password first, then the PIN), then the mint: 201 with the code.

use crate::callout::credential::{self, SecretKind, Verdict};
use crate::callout::{Callout, Upstream};
use crate::config::Config;
use crate::otp;
use crate::reply::failure::Failure;
use crate::reply::jsonapi;
use crate::request::body::{self, Credentials};
use crate::secret::Secret;
use crate::state::throttle::{self, Reservation};

use super::{store_failure, Ctx, Exchange, Stage, Step};

impl Exchange {
    pub(super) fn read_credentials(&mut self, ctx: &Ctx, bytes: &[u8]) -> Step {
        match body::parse(bytes) {
            Err(failure) => self.fail(failure),
            Ok(Credentials {
                password: Some(password),
                pin,
            }) => self.check_secret(ctx, SecretKind::Password, &password, pin),
            Ok(Credentials {
                password: None,
                pin: Some(pin),
            }) => self.check_secret(ctx, SecretKind::Pin, &pin, None),
            Ok(_) => self.fail(Failure::CredentialsMissing),
        }
    }

    /// One attempt against the user's budget (RFC 4226 §7.3), taken before anyone is asked whether
    /// the secret is right, so parallel guesses cannot slip through.
    pub(super) fn reserve_attempt(&mut self, ctx: &Ctx) -> Result<(), Failure> {
        match throttle::reserve(ctx.store, &ctx.config.throttle, &self.user_id, ctx.now_ms) {
            Ok(Reservation::Granted) => Ok(()),
            Ok(Reservation::Locked {
                retry_after_seconds,
            }) => Err(Failure::Locked {
                retry_after_seconds,
            }),
            Err(e) => Err(store_failure(e)),
        }
    }

    /// Asks the credential service about one secret, after reserving the attempt.
    pub(super) fn check_secret(
        &mut self,
        ctx: &Ctx,
        kind: SecretKind,
        secret: &Secret,
        then_pin: Option<Secret>,
    ) -> Step {
        if let Err(failure) = self.reserve_attempt(ctx) {
            return self.fail(failure);
        }
        let call = self.callout(ctx.config, kind, secret);
        self.stage = match kind {
            SecretKind::Password => Stage::CheckingPassword { pin: then_pin },
            SecretKind::Pin => Stage::CheckingPin,
        };
        Step::Call(call)
    }

    pub(super) fn callout(&self, config: &Config, kind: SecretKind, secret: &Secret) -> Callout {
        credential::callout(
            &config.credential_service,
            &self.user_id,
            kind,
            secret,
            &self.request_id,
        )
    }

    pub(super) fn mint(&mut self, config: &Config, now_ms: u64) -> Step {
        match otp::mint(&config.otp, &self.user_id, now_ms) {
            Some(minted) => self.reply(jsonapi::created_reply(&minted, &self.request_id), "issued"),
            None => self.fail(Failure::Internal(
                "The one-time password could not be computed.",
            )),
        }
    }

    /// The credential service's verdict on the password or the PIN (`pending_pin`: the PIN still
    /// to check if the password is wrong).
    pub(super) fn on_credential_answer(
        &mut self,
        ctx: &Ctx,
        pending_pin: Option<Secret>,
        status: Option<u16>,
        body: &[u8],
    ) -> Step {
        let answer = credential::read_answer(status, body);
        self.call_result = Some((
            Upstream::CredentialService,
            credential::result_name(&answer),
        ));
        match answer {
            Err(failure) => self.fail(failure),
            Ok(Verdict::Valid) => {
                if let Err(e) =
                    throttle::succeed(ctx.store, &ctx.config.throttle, &self.user_id, ctx.now_ms)
                {
                    return self.fail(store_failure(e));
                }
                self.mint(ctx.config, ctx.now_ms)
            }
            Ok(Verdict::Invalid) => match pending_pin {
                Some(pin) => self.check_secret(ctx, SecretKind::Pin, &pin, None),
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
}

#[cfg(test)]
mod tests {
    use crate::flow::fixture::*;
    use serde_json::{json, Value};

    const ID: &str = "9m4e2mr0ui3e8a215n4g";

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
            otp_header: None,
            end_of_stream,
        };
        Exchange::start(
            &cx(&testkit::config()),
            Route::Create,
            TokenState::default(),
            &head,
            ID.to_string(),
        )
    }

    fn with_body(body: &str) -> (Exchange, Step) {
        let (mut exchange, step) = start(&valid(), false);
        assert!(matches!(step, Step::Wait));
        let bytes = body.as_bytes().to_vec();
        let step = exchange.on_body(&cx(&testkit::config()), bytes.len(), true, || Ok(bytes));
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
        let r = |m, p| route(&c, m, p);
        assert_eq!(r("POST", "/user/2021-2/user/otp"), Some(Route::Create));
        assert_eq!(r("GET", "/user/2025-1/user/otp?x=1"), Some(Route::Create));
        assert_eq!(
            r("POST", "/user/2021-2/user/otp/verify"),
            Some(Route::Verify)
        );
        assert_eq!(r("POST", "/user/2021-2/user/otp/"), None);
        assert_eq!(r("POST", "/user/2019-1/user/otp"), None);
        assert_eq!(r("POST", "/USER/2021-2/user/otp"), None);
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
            exchange.on_body(&cx(&c), 100, false, || Err(())),
            Step::Wait
        ));
        let step = exchange.on_body(&cx(&c), 200, true, || {
            panic!("a drained body is never read")
        });
        assert_eq!(answer(&step), (401, "token-missing".into()));
        // A body that grows past the limit is not waited for.
        let (mut exchange, _) = start(&no_token, false);
        let step = exchange.on_body(&cx(&c), 4097, false, || Err(()));
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
            exchange.on_body(&cx(&c), 10, false, || Err(())),
            Step::Wait
        ));
        let step = exchange.on_body(&cx(&c), 4097, false, || Err(()));
        assert_eq!(answer(&step), (413, "payload-too-large".into()));
        // Once answered, later body callbacks change nothing.
        assert!(matches!(
            exchange.on_body(&cx(&c), 4097, true, || Err(())),
            Step::Wait
        ));

        let (mut exchange, _) = start(&valid(), false);
        let step = exchange.on_body(&cx(&c), 5, true, || Err(()));
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
        let step = exchange.on_answer(&cx(&c), None, Some(200), br#"{"result":"invalid"}"#);
        assert_eq!(
            callout_body(&step),
            json!({"user": "demo-user", "kind": "pin", "secret": "8299"})
        );
        let step = exchange.on_answer(&cx(&c), None, Some(200), br#"{"result":"valid"}"#);
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
        let step = exchange.on_answer(&cx(&c), None, Some(200), br#"{"result":"valid"}"#);
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
            let step = exchange.on_answer(&cx(&c), None, Some(200), answer_body);
            assert_eq!(answer(&step), (status, code.to_string()));
        }
        let (mut exchange, _) = with_body(r#"{"password":"x","pin":"8299"}"#);
        let step = exchange.on_answer(&cx(&c), None, Some(200), br#"{"result":"unknown-user"}"#);
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
            let step = exchange.on_answer(&cx(&c), None, status, b"");
            assert_eq!(answer(&step), (500, code.to_string()));
            // Fail closed: a second (stray) answer cannot mint either.
            let step = exchange.on_answer(&cx(&c), None, Some(200), br#"{"result":"valid"}"#);
            assert_eq!(answer(&step), (500, "internal-error".into()));
        }
    }

    #[test]
    fn a_callout_that_cannot_be_sent_fails_closed() {
        let (mut exchange, _) = with_body(r#"{"pin":"8299"}"#);
        assert_eq!(
            answer(&exchange.on_call_not_sent(Upstream::CredentialService)),
            (500, "internal-error".into())
        );
    }

    #[test]
    fn a_clock_that_cannot_be_read_fails_closed() {
        // Waiting for the body, or for the credential service: 500, never a decision at time 0.
        let (mut exchange, step) = start(&valid(), false);
        assert!(matches!(step, Step::Wait));
        assert_eq!(
            answer(&exchange.on_clock_failure()),
            (500, "clock-unavailable".into())
        );
        let (mut exchange, step) = with_body(r#"{"pin":"8299"}"#);
        assert!(matches!(step, Step::Call(_)));
        assert_eq!(
            answer(&exchange.on_clock_failure()),
            (500, "clock-unavailable".into())
        );
        // Answered already: nothing more is sent.
        assert!(matches!(exchange.on_clock_failure(), Step::Wait));
    }

    #[test]
    fn a_missing_scope_names_the_scope_required() {
        let mut c = testkit::config();
        c.token.required_scope = "pace:otp".into();
        let token = testkit::rs256(&claims());
        let auth = format!("Bearer {token}");
        let head = RequestHead {
            method: "POST",
            authorization: Some(&auth),
            accept: None,
            content_type: Some("application/json"),
            content_length: None,
            verified_claims: None,
            otp_header: None,
            end_of_stream: true,
        };
        let (_, step) = Exchange::start(
            &cx(&c),
            Route::Create,
            TokenState::default(),
            &head,
            "id".into(),
        );
        let Step::Reply { reply, outcome } = step else {
            panic!("{step:?}")
        };
        assert_eq!((reply.status, outcome), (403, "insufficient-scope"));
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body["errors"][0]["detail"],
            "The token lacks the scope pace:otp."
        );
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer realm=\"otp\", error=\"insufficient_scope\", scope=\"pace:otp\"")
        );
    }

    #[test]
    fn callouts_go_to_their_own_cluster() {
        let c = testkit::config();
        assert_eq!(
            c.upstream(Upstream::CredentialService).cluster,
            c.credential_service.upstream.cluster
        );
        // Without introspection configured, nothing goes anywhere else.
        assert_eq!(
            c.upstream(Upstream::Introspection).cluster,
            c.credential_service.upstream.cluster
        );
    }

    #[test]
    fn no_reply_ever_contains_the_secrets() {
        let c = testkit::config();
        let token = testkit::rs256(&claims());
        let (mut exchange, _) = with_body(r#"{"password":"hunter2-secret","pin":"8299"}"#);
        let mut replies = Vec::new();
        let step = exchange.on_answer(&cx(&c), None, Some(200), br#"{"result":"invalid"}"#);
        replies.push(exchange.on_answer(&cx(&c), None, Some(200), br#"{"result":"invalid"}"#));
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

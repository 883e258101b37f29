//! The verify route (`POST /user/<v>/user/otp/verify`): 204 when the code is valid (and now used
//! up), 404 when it is not. `check_code` is the one code check, shared with the gates.

use crate::callout::authority::{self, AuthorityResult, Question, Ruling};
use crate::callout::{Callout, Upstream};
use crate::otp;
use crate::reply::failure::Failure;
use crate::reply::jsonapi;
use crate::request::body;
use crate::secret::Secret;
use crate::state::single_use::{self, Consumed, LedgerError};
use crate::state::throttle;

use super::{store_failure, Ctx, Exchange, Served, Stage, Step};

impl Exchange {
    /// Checks a code for this user and uses it up; the one code check of verify and the gates.
    /// The local throttle counts the attempt first. Then, with no authority configured, this
    /// Envoy's ledger decides; with one, a valid code not seen used here is consumed at the
    /// authority and a wrong one reported to it, and its ruling decides (`on_authority_answer`).
    pub(super) fn check_code(&mut self, ctx: &Ctx, code: &Secret) -> Step {
        if let Err(failure) = self.reserve_attempt(ctx) {
            return self.fail(failure);
        }
        let found = otp::verify(
            &ctx.config.otp,
            &self.user_id,
            code.expose_str(),
            ctx.now_ms,
        );
        let authority = ctx.config.authority.as_ref();
        let Some(found) = found else {
            return match authority {
                Some(settings) => self.ask_authority(
                    Question::ReportFailure,
                    authority::report_failure(settings, &self.user_id, &self.request_id),
                ),
                None => self.code_checked(false),
            };
        };
        // The local ledger first: a code seen used on this Envoy is refused without a callout.
        let id = single_use::code_id(&found.key_id, &self.user_id, found.counter);
        let consumed = single_use::consume(
            ctx.store,
            &ctx.config.single_use,
            id,
            found.expires_at_ms,
            ctx.now_ms,
        );
        match consumed {
            Ok(Consumed::First) => {}
            Ok(Consumed::AlreadyUsed) => return self.code_checked(false),
            Ok(Consumed::FencedCorrupt) => {
                self.ledger_reset = true;
                return self.code_checked(false);
            }
            Err(LedgerError::Full) => return self.fail(Failure::SingleUseLedgerFull),
            Err(LedgerError::Store(e)) => return self.fail(store_failure(e)),
        }
        match authority {
            // Marked used here before the authority is asked: a consume that fails or times out
            // burns the code on this Envoy, which fails closed (the user mints another).
            Some(settings) => self.ask_authority(
                Question::Consume,
                authority::consume(
                    settings,
                    &self.user_id,
                    &found.key_id,
                    found.counter,
                    found.expires_at_ms,
                    &self.request_id,
                ),
            ),
            None => self.code_accepted(ctx),
        }
    }

    fn ask_authority(&mut self, question: Question, call: Callout) -> Step {
        self.stage = Stage::AskingAuthority(question);
        Step::Call(call)
    }

    /// The authority's ruling decides; anything but a ruling fails closed.
    pub(super) fn on_authority_answer(
        &mut self,
        ctx: &Ctx,
        question: Question,
        status: Option<u16>,
        body: &[u8],
    ) -> Step {
        let answer = authority::read_answer(question, status, body);
        self.call_result = Some((Upstream::Authority, AuthorityResult::of(&answer).name()));
        match answer {
            Ok(Ruling::Consumed) => self.code_accepted(ctx),
            Ok(Ruling::Used | Ruling::Counted) => self.code_checked(false),
            Ok(Ruling::Locked {
                retry_after_seconds,
            }) => self.fail(Failure::Locked {
                retry_after_seconds,
            }),
            Err(failure) => self.fail(failure),
        }
    }

    /// A valid code's one use: the local budget is given back, and the route answers.
    fn code_accepted(&mut self, ctx: &Ctx) -> Step {
        if let Err(e) =
            throttle::succeed(ctx.store, &ctx.config.throttle, &self.user_id, ctx.now_ms)
        {
            return self.fail(store_failure(e));
        }
        self.code_checked(true)
    }

    /// The route's answer to a code: verify 204 / 404, a gate lets the request through / 403.
    fn code_checked(&mut self, valid: bool) -> Step {
        match (&self.served, valid) {
            (Served::Gate(_), true) => {
                self.stage = Stage::Passed;
                Step::Continue
            }
            (Served::Gate(_), false) => self.fail(Failure::OtpRequired),
            (_, true) => self.reply(jsonapi::no_content_reply(&self.request_id), "verified"),
            (_, false) => self.fail(Failure::OtpNotValid),
        }
    }

    pub(super) fn verify_request(&mut self, ctx: &Ctx, bytes: &[u8]) -> Step {
        match body::parse_verify(bytes) {
            Ok(request) => self.check_code(ctx, &request.otp),
            Err(failure) => self.fail(failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::flow::fixture::*;
    use serde_json::json;

    fn config_with_gates() -> Config {
        let mut value = testkit::config_json();
        value["gates"] = json!([
            {"method": "PUT", "path": "/user/2021-2/user/pin", "otp_pointer": "/data/attributes/otp"},
            {"method": "DELETE", "path": "/user/", "match": "prefix", "otp_header": "x-otp"}
        ]);
        testkit::config_from(&value).unwrap()
    }

    fn head<'a>(auth: &'a str, otp_header: Option<&'a str>) -> RequestHead<'a> {
        RequestHead {
            method: "POST",
            authorization: Some(auth),
            accept: None,
            content_type: Some("application/json"),
            content_length: None,
            verified_claims: None,
            otp_header,
            end_of_stream: false,
        }
    }

    /// Runs one request through start and a complete body.
    fn run(ctx: &Ctx, route: Route, auth: &str, otp_header: Option<&str>, body: &str) -> Step {
        let (mut ex, step) = Exchange::start(
            ctx,
            route,
            TokenState::default(),
            &head(auth, otp_header),
            "id".into(),
        );
        if !matches!(step, Step::Wait) {
            return step;
        }
        let bytes = body.as_bytes().to_vec();
        ex.on_body(ctx, bytes.len(), true, || Ok(bytes))
    }

    fn code(config: &Config, user: &str) -> String {
        otp::mint(&config.otp, user, NOW_MS)
            .unwrap()
            .code
            .expose_str()
            .to_string()
    }

    #[test]
    fn routes_include_verify_and_gates() {
        let c = config_with_gates();
        assert_eq!(
            route(&c, "PUT", "/user/2021-2/user/pin"),
            Some(Route::Gate(0))
        );
        assert_eq!(route(&c, "GET", "/user/2021-2/user/pin"), None);
        assert_eq!(
            route(&c, "DELETE", "/user/2021-2/user"),
            Some(Route::Gate(1))
        );
        assert_eq!(route(&c, "delete", "/user/x?y"), Some(Route::Gate(1)));
        assert_eq!(
            route(&c, "DELETE", "/user/2021-2/user/otp"),
            Some(Route::Create),
            "own routes first"
        );
    }

    #[test]
    fn verify_accepts_a_code_once_and_needs_the_verify_scope() {
        let config = config_with_gates();
        let store = MemoryStore::new();
        let ctx = ctx(&config, &store);
        let both = merged(
            &claims(),
            &json!({"scope": "user:otp:create user:otp:verify"}),
        );
        let auth = format!("Bearer {}", testkit::rs256(&both));
        let body = json!({"otp": code(&config, "demo-user")}).to_string();
        assert_eq!(
            outcome(&run(&ctx, Route::Verify, &auth, None, &body)),
            "verified"
        );
        assert_eq!(
            outcome(&run(&ctx, Route::Verify, &auth, None, &body)),
            "otp-not-valid"
        );
        let create_only = format!("Bearer {}", testkit::rs256(&claims()));
        assert_eq!(
            outcome(&run(&ctx, Route::Verify, &create_only, None, &body)),
            "insufficient-scope"
        );
        let other_user = json!({"otp": code(&config, "demo-user-2")}).to_string();
        assert_eq!(
            outcome(&run(&ctx, Route::Verify, &auth, None, &other_user)),
            "otp-not-valid"
        );
    }

    /// The gates config with the authority deciding (the credential service's cluster and auth).
    fn config_with_authority() -> Config {
        let mut value = testkit::config_json();
        value["gates"] = json!([
            {"method": "PUT", "path": "/user/2021-2/user/pin", "otp_pointer": "/data/attributes/otp"}
        ]);
        value["otp"]["decided_by"] = json!("authority");
        testkit::config_from(&value).unwrap()
    }

    fn call_path(step: &Step) -> String {
        match step {
            Step::Call(call) => call
                .headers
                .iter()
                .find(|(n, _)| n == ":path")
                .map(|(_, v)| v.clone())
                .unwrap(),
            other => panic!("expected a callout, got {other:?}"),
        }
    }

    #[test]
    fn with_an_authority_its_ruling_decides() {
        let config = config_with_authority();
        assert_eq!(config.upstream(Upstream::Authority).path, "/v1/otp");
        assert_eq!(
            config.upstream(Upstream::Authority).cluster,
            config.credential_service.upstream.cluster
        );
        let store = MemoryStore::new();
        let ctx = ctx(&config, &store);
        let both = merged(&claims(), &json!({"scope": "user:otp:verify"}));
        let auth = format!("Bearer {}", testkit::rs256(&both));
        let good = json!({"otp": code(&config, "demo-user")}).to_string();
        let start = |body: &str| {
            let (mut ex, step) = Exchange::start(
                &ctx,
                Route::Verify,
                TokenState::default(),
                &head(&auth, None),
                "id".into(),
            );
            assert!(matches!(step, Step::Wait));
            let bytes = body.as_bytes().to_vec();
            let step = ex.on_body(&ctx, bytes.len(), true, || Ok(bytes));
            (ex, step)
        };
        let ruling = |ex: &mut Exchange, body: &str| {
            let step = ex.on_answer(&ctx, None, Some(200), body.as_bytes());
            (outcome(&step), ex.take_call_result())
        };
        // A valid code is consumed at the authority; "consumed" accepts it.
        let (mut ex, step) = start(&good);
        assert_eq!(call_path(&step), "/v1/otp/consume");
        assert_eq!(
            ruling(&mut ex, r#"{"result":"consumed"}"#),
            ("verified", Some((Upstream::Authority, "consumed")))
        );
        // Seen used on this Envoy: refused without asking.
        let (_, step) = start(&good);
        assert_eq!(outcome(&step), "otp-not-valid");
        // A wrong code is reported; "counted" refuses it, "locked" is a 429.
        let wrong = json!({"otp": "000000"}).to_string();
        let (mut ex, step) = start(&wrong);
        assert_eq!(call_path(&step), "/v1/otp/failure");
        assert_eq!(
            ruling(&mut ex, r#"{"result":"counted"}"#).0,
            "otp-not-valid"
        );
        let (mut ex, _) = start(&wrong);
        assert_eq!(
            ruling(&mut ex, r#"{"result":"locked","retryAfterSeconds":60}"#).0,
            "too-many-attempts"
        );
        // Used elsewhere in the fleet, or no ruling at all: never accepted.
        let fresh = |n: u64| {
            let code = otp::mint(&config.otp, "demo-user", NOW_MS + n * 60_000)
                .unwrap()
                .code
                .expose_str()
                .to_string();
            json!({"otp": code}).to_string()
        };
        let later = Ctx {
            config: &config,
            store: &store,
            now_ms: NOW_MS + 60_000,
        };
        let body = fresh(1);
        let (mut ex, step) = Exchange::start(
            &later,
            Route::Verify,
            TokenState::default(),
            &head(&auth, None),
            "id".into(),
        );
        assert!(matches!(step, Step::Wait));
        let bytes = body.as_bytes().to_vec();
        assert!(matches!(
            ex.on_body(&later, bytes.len(), true, || Ok(bytes)),
            Step::Call(_)
        ));
        let step = ex.on_answer(&later, None, Some(200), br#"{"result":"used"}"#);
        assert_eq!(outcome(&step), "otp-not-valid");
        // No ruling (down, slow, failing, garbage): fail closed, each with its own code.
        for (status, answer, code) in [
            (None, "", "otp-authority-unavailable"),
            (Some(503), "", "otp-authority-unavailable"),
            (Some(504), "", "otp-authority-timeout"),
            (Some(500), "", "otp-authority-error"),
            (Some(200), "<html>", "otp-authority-bad-answer"),
            (
                Some(200),
                r#"{"result":"counted"}"#,
                "otp-authority-bad-answer",
            ),
        ] {
            let store = MemoryStore::new();
            let fresh_ctx = Ctx {
                config: &config,
                store: &store,
                now_ms: NOW_MS,
            };
            let (mut ex, _) = Exchange::start(
                &fresh_ctx,
                Route::Verify,
                TokenState::default(),
                &head(&auth, None),
                "id".into(),
            );
            let bytes = good.as_bytes().to_vec();
            let step = ex.on_body(&fresh_ctx, bytes.len(), true, || Ok(bytes));
            assert!(matches!(step, Step::Call(_)), "{code}");
            let step = ex.on_answer(&fresh_ctx, None, status, answer.as_bytes());
            assert_eq!(outcome(&step), code);
        }
    }

    #[test]
    fn the_throttle_counts_guesses_before_asking_and_locks() {
        let config = config_with_gates();
        let store = MemoryStore::new();
        let ctx = ctx(&config, &store);
        let auth = format!("Bearer {}", testkit::rs256(&claims()));
        for _ in 0..5 {
            assert_eq!(
                outcome(&run(&ctx, Route::Create, &auth, None, r#"{"pin":"0000"}"#)),
                "call"
            );
        }
        let step = run(&ctx, Route::Create, &auth, None, r#"{"pin":"8299"}"#);
        assert_eq!(outcome(&step), "too-many-attempts");
        let Step::Reply { reply, .. } = step else {
            unreachable!()
        };
        assert_eq!(reply.header("retry-after"), Some("60"));
        // Codes count against the same budget.
        let verify = format!(
            "Bearer {}",
            testkit::rs256(&merged(&claims(), &json!({"scope": "user:otp:verify"})))
        );
        let body = json!({"otp": code(&config, "demo-user")}).to_string();
        assert_eq!(
            outcome(&run(&ctx, Route::Verify, &verify, None, &body)),
            "too-many-attempts"
        );
        // Another user is not affected.
        let other = format!(
            "Bearer {}",
            testkit::rs256(&merged(&claims(), &json!({"sub": "demo-user-2"})))
        );
        assert_eq!(
            outcome(&run(&ctx, Route::Create, &other, None, r#"{"pin":"8299"}"#)),
            "call"
        );
    }

    #[test]
    fn a_valid_password_resets_the_budget() {
        let config = config_with_gates();
        let store = MemoryStore::new();
        let ctx = ctx(&config, &store);
        let auth = format!("Bearer {}", testkit::rs256(&claims()));
        for _ in 0..4 {
            run(&ctx, Route::Create, &auth, None, r#"{"pin":"0000"}"#);
        }
        let (mut ex, _) = Exchange::start(
            &ctx,
            Route::Create,
            TokenState::default(),
            &head(&auth, None),
            "id".into(),
        );
        let body = br#"{"password":"right"}"#.to_vec();
        assert_eq!(
            outcome(&ex.on_body(&ctx, body.len(), true, || Ok(body))),
            "call"
        );
        assert_eq!(
            outcome(&ex.on_answer(&ctx, None, Some(200), br#"{"result":"valid"}"#)),
            "issued"
        );
        for _ in 0..5 {
            assert_eq!(
                outcome(&run(&ctx, Route::Create, &auth, None, r#"{"pin":"0000"}"#)),
                "call"
            );
        }
    }

    #[test]
    fn gates_pass_a_valid_code_once() {
        let config = config_with_gates();
        let store = MemoryStore::new();
        let ctx = ctx(&config, &store);
        let auth = format!("Bearer {}", testkit::rs256(&claims()));
        let code = code(&config, "demo-user");
        let body = json!({"data": {"attributes": {"otp": code}}}).to_string();
        let (mut ex, _) = Exchange::start(
            &ctx,
            Route::Gate(0),
            TokenState::default(),
            &head(&auth, None),
            "id".into(),
        );
        let bytes = body.as_bytes().to_vec();
        assert_eq!(
            outcome(&ex.on_body(&ctx, bytes.len(), true, || Ok(bytes))),
            "continue"
        );
        // Trailers after the body, or a failing clock, no longer stop a request that passed.
        assert_eq!(
            outcome(&ex.on_body(&ctx, 0, true, || Ok(vec![]))),
            "forward"
        );
        assert_eq!(outcome(&ex.on_clock_failure()), "forward");
        assert_eq!(
            outcome(&run(&ctx, Route::Gate(0), &auth, None, &body)),
            "otp:invalid"
        );
        assert_eq!(
            outcome(&run(&ctx, Route::Gate(0), &auth, None, "{}")),
            "otp:invalid"
        );
        assert_eq!(
            outcome(&run(&ctx, Route::Gate(0), &auth, None, "not json")),
            "otp:invalid"
        );
        // Header gates decide at the headers; the body, if any, then flows through.
        let fresh = otp::mint(&config.otp, "demo-user", NOW_MS + 60_000)
            .unwrap()
            .code
            .expose_str()
            .to_string();
        let later = Ctx {
            config: &config,
            store: &store,
            now_ms: NOW_MS + 60_000,
        };
        let (mut ex, step) = Exchange::start(
            &later,
            Route::Gate(1),
            TokenState::default(),
            &head(&auth, Some(&fresh)),
            "id".into(),
        );
        assert_eq!(outcome(&step), "continue");
        assert_eq!(
            outcome(&ex.on_body(&later, 10, false, || Ok(vec![]))),
            "forward"
        );
        assert_eq!(
            outcome(&ex.on_body(&later, 10_000, true, || Ok(vec![]))),
            "forward"
        );
        let (_, step) = Exchange::start(
            &ctx,
            Route::Gate(1),
            TokenState::default(),
            &head(&auth, Some(&code)),
            "id".into(),
        );
        assert_eq!(
            outcome(&step),
            "otp:invalid",
            "already used on the body gate"
        );
        let (_, step) = Exchange::start(
            &ctx,
            Route::Gate(1),
            TokenState::default(),
            &head("Bearer x", Some(&code)),
            "id".into(),
        );
        assert_eq!(
            outcome(&step),
            "wait",
            "a bad token is answered when the body ends"
        );
    }
}

//! The verify route (`POST /user/<v>/user/otp/verify`): 204 when the code is valid (and now used
//! up), 404 when it is not. `use_code` is the one code check, shared with the gates.

use crate::otp;
use crate::reply::failure::Failure;
use crate::reply::jsonapi;
use crate::request::body;
use crate::secret::Secret;
use crate::state::single_use::{self, Consumed, LedgerError};
use crate::state::throttle;

use super::{store_failure, Ctx, Exchange, Step};

impl Exchange {
    /// Checks a code for this user and uses it up. `Ok(true)`: valid, and this was its one use.
    pub(super) fn use_code(&mut self, ctx: &Ctx, code: &Secret) -> Result<bool, Failure> {
        self.reserve_attempt(ctx)?;
        let Some(found) = otp::verify(
            &ctx.config.otp,
            &self.user_id,
            code.expose_str(),
            ctx.now_ms,
        ) else {
            return Ok(false);
        };
        let id = single_use::code_id(&found.key_id, &self.user_id, found.counter);
        match single_use::consume(
            ctx.store,
            &ctx.config.single_use,
            id,
            found.expires_at_ms,
            ctx.now_ms,
        ) {
            Ok(Consumed::First) => {
                throttle::succeed(ctx.store, &ctx.config.throttle, &self.user_id, ctx.now_ms)
                    .map_err(store_failure)?;
                Ok(true)
            }
            Ok(Consumed::AlreadyUsed) => Ok(false),
            Ok(Consumed::FencedCorrupt) => {
                self.ledger_reset = true;
                Ok(false)
            }
            Err(LedgerError::Full) => Err(Failure::SingleUseLedgerFull),
            Err(LedgerError::Store(e)) => Err(store_failure(e)),
        }
    }

    pub(super) fn verify_request(&mut self, ctx: &Ctx, bytes: &[u8]) -> Step {
        let request = match body::parse_verify(bytes) {
            Ok(request) => request,
            Err(failure) => return self.fail(failure),
        };
        match self.use_code(ctx, &request.otp) {
            Ok(true) => self.reply(jsonapi::no_content_reply(&self.request_id), "verified"),
            Ok(false) => self.fail(Failure::OtpNotValid),
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

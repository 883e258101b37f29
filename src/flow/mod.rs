//! The request flow as a state machine, free of host calls. The adapter feeds it what Envoy says
//! (headers, body progress, callout answers) and carries out the `Step` it returns. Shared state
//! (the single-use ledger, the throttle) is reached through the `SharedStore` trait.
//!
//! Three kinds of route:
//! - create (`/user/<v>/user/otp`). Check order (docs/contract.md, first failure wins): method 405, bearer
//!   token 401, scope 403, Accept 406, Content-Type 415, body size 413, body 422, throttle 429, then
//!   the credential service (password first, then PIN; 404 when neither is valid), then mint, 201;
//! - verify (`/user/<v>/user/otp/verify`): the same order up to the body, then throttle 429, then
//!   the code: 204 when valid (and now used up), 404 when not;
//! - gates (configured): token 401, then the code from a header or the JSON body: valid → the
//!   request goes upstream unchanged and the code is used up; missing or invalid → 403 `otp:invalid`.
//!
//! With token introspection the token check waits for a callout. The later header checks are
//! computed at once but reported only after the token passed, and a body that arrives meanwhile is
//! kept, so the order above holds in every mode.

mod create;
#[cfg(test)]
mod fixture;
mod gate;
mod token_check;
mod verify;

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::callout::authority::Question;
use crate::callout::{Callout, Upstream};
use crate::config::{Config, Gate, OtpSource};
use crate::reply::failure::Failure;
use crate::reply::jsonapi::{self, Reply};
use crate::request::negotiation;
use crate::secret::Secret;
use crate::state::store::SharedStore;
use crate::token::cache::{ClaimsCache, TokenHash};
use crate::token::jwks::RemoteJwks;

/// The request headers the flow reads. Absent headers are `None`.
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub authorization: Option<&'a str>,
    pub accept: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub content_length: Option<&'a str>,
    /// In `jwt_authn` mode: the claims Envoy's `jwt_authn` verified, if it accepted a token.
    pub verified_claims: Option<Map<String, Value>>,
    /// On a gate that takes the code from a header: that header.
    pub otp_header: Option<&'a str>,
    /// True when the headers end the request (no body follows).
    pub end_of_stream: bool,
}

/// What every step may need besides the exchange itself.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub store: &'a dyn SharedStore,
    pub now_ms: u64,
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
    /// Let the request go upstream unchanged: a gate just passed (counted once).
    Continue,
    /// The gate passed earlier: let this part of the request (body, trailers) through as it is.
    /// Pausing it would hang a request whose headers already went upstream.
    Forward,
    /// Answer the client and end the exchange. `outcome` is the error code, or what succeeded.
    Reply { reply: Reply, outcome: &'static str },
}

/// Which of the filter's routes a request is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Create,
    Verify,
    /// Index into `Config::gates`.
    Gate(usize),
}

/// The route an exchange serves, its gate resolved once at the start.
enum Served {
    Create,
    Verify,
    Gate(Arc<Gate>),
}

impl Served {
    fn of(config: &Config, route: Route) -> Option<Served> {
        Some(match route {
            Route::Create => Served::Create,
            Route::Verify => Served::Verify,
            Route::Gate(i) => Served::Gate(Arc::clone(config.gates.get(i)?)),
        })
    }
}

/// On a gate that takes its code from a header: that header's name, for the adapter to read.
pub fn otp_header_name(config: &Config, route: Route) -> Option<&str> {
    let Route::Gate(i) = route else { return None };
    match &config.gates.get(i)?.otp_from {
        OtpSource::Header(name) => Some(name),
        OtpSource::BodyPointer(_) => None,
    }
}

/// The route a request is on, if the filter serves it (the query string is ignored).
pub fn route(config: &Config, method: &str, path: &str) -> Option<Route> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if config.routes.iter().any(|r| r == path) {
        return Some(Route::Create);
    }
    if config.verify_routes.iter().any(|r| r == path) {
        return Some(Route::Verify);
    }
    config
        .gates
        .iter()
        .position(|g| {
            g.method.eq_ignore_ascii_case(method)
                && if g.prefix {
                    path.starts_with(&g.path)
                } else {
                    path == g.path
                }
        })
        .map(Route::Gate)
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
    /// Waiting for the one-time-use authority's ruling on a code.
    AskingAuthority(Question),
    /// A gate passed: the rest of the request flows upstream untouched.
    Passed,
    Finished,
}

/// A body that arrived while the token was still being introspected.
enum EarlyBody {
    None,
    TooLarge,
    Complete(Secret),
}

/// One request to one of the filter's routes, from its headers to the reply.
pub struct Exchange {
    served: Served,
    request_id: String,
    user_id: String,
    stage: Stage,
    /// The first failing check after the token (Accept, Content-Type, declared length).
    after_token: Option<Failure>,
    early_body: EarlyBody,
    /// A gate's code taken from a header at the start.
    header_code: Option<Secret>,
    /// What the last callout answered, for the stats (taken by the adapter): the credential
    /// service's `CallResult` name or the authority's `AuthorityResult` name.
    call_result: Option<(Upstream, &'static str)>,
    /// The scope the token lacked, named in the 403 (set only on that failure).
    missing_scope: Option<String>,
    /// A corrupt single-use bucket was fenced off during this exchange (counted and logged by the
    /// adapter, taken once).
    ledger_reset: bool,
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

fn store_failure(_: crate::state::store::StoreError) -> Failure {
    Failure::SharedStateUnavailable
}

impl Exchange {
    fn new(served: Served, request_id: String, otp_header: Option<&str>) -> Self {
        Exchange {
            served,
            request_id,
            user_id: String::new(),
            stage: Stage::AwaitingBody,
            after_token: None,
            early_body: EarlyBody::None,
            header_code: otp_header.map(|h| Secret::new(h.to_string())),
            call_result: None,
            missing_scope: None,
            ledger_reset: false,
        }
    }

    /// Starts the exchange at the request headers. `request_id` is the one the reply will carry.
    pub fn start(
        ctx: &Ctx,
        route: Route,
        state: TokenState,
        head: &RequestHead,
        request_id: String,
    ) -> (Self, Step) {
        let Some(served) = Served::of(ctx.config, route) else {
            let mut exchange = Exchange::new(Served::Create, request_id, None);
            let step = exchange.fail(Failure::Internal("The request's gate is not configured."));
            return (exchange, step);
        };
        let mut exchange = Exchange::new(served, request_id, head.otp_header);
        if let Route::Create | Route::Verify = route {
            if head.method != "POST" {
                let step = exchange.fail_after_body(Failure::MethodNotAllowed, head.end_of_stream);
                return (exchange, step);
            }
            exchange.after_token = check_representation(ctx.config, head);
        }
        let step = match exchange.check_token(ctx, state, head) {
            Err(failure) => exchange.fail_after_body(failure, head.end_of_stream),
            Ok(Some(call)) => Step::Call(call),
            Ok(None) => exchange.token_passed(ctx, head.end_of_stream),
        };
        (exchange, step)
    }

    /// A request on one of the filter's routes whose headers came when the clock could not be
    /// read: without the time no token, code or lock can be judged, so it fails closed at once.
    pub fn without_clock(request_id: String) -> (Self, Step) {
        let mut exchange = Exchange::new(Served::Create, request_id, None);
        let step = exchange.fail(Failure::ClockUnavailable);
        (exchange, step)
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// What the last callout answered, once (for the stats).
    pub fn take_call_result(&mut self) -> Option<(Upstream, &'static str)> {
        self.call_result.take()
    }

    /// Whether a corrupt single-use bucket was fenced off, once (for the counter and a warning).
    pub fn take_ledger_reset(&mut self) -> bool {
        std::mem::take(&mut self.ledger_reset)
    }

    /// The token is good: report the first later header failure, or go on to the body.
    fn token_passed(&mut self, ctx: &Ctx, end_of_stream: bool) -> Step {
        if let Some(failure) = self.after_token.take() {
            let body_done = end_of_stream || !matches!(self.early_body, EarlyBody::None);
            return self.fail_after_body(failure, body_done);
        }
        if let Some(step) = self.gate_on_header(ctx) {
            return step;
        }
        self.stage = Stage::AwaitingBody;
        match std::mem::replace(&mut self.early_body, EarlyBody::None) {
            EarlyBody::TooLarge => self.fail(Failure::PayloadTooLarge),
            EarlyBody::Complete(body) => self.process_body(ctx, body.expose()),
            EarlyBody::None if end_of_stream => self.process_body(ctx, b""),
            EarlyBody::None => Step::Wait,
        }
    }

    fn body_limit(&self, config: &Config) -> usize {
        match &self.served {
            Served::Gate(gate) => gate.max_body_bytes,
            _ => config.max_body_bytes,
        }
    }

    /// Body progress. `buffered` is the size Envoy holds so far; `read` fetches it once complete.
    pub fn on_body(
        &mut self,
        ctx: &Ctx,
        buffered: usize,
        end_of_stream: bool,
        read: impl FnOnce() -> Result<Vec<u8>, ()>,
    ) -> Step {
        if let Stage::Passed = self.stage {
            return Step::Forward;
        }
        let limit = self.body_limit(ctx.config);
        if let Stage::Draining(failure) = self.stage {
            // Buffered, never parsed; answered once complete, or at once if it grows too large.
            if end_of_stream || buffered > limit {
                return self.fail(failure);
            }
            return Step::Wait;
        }
        let introspecting = matches!(self.stage, Stage::Introspecting { .. });
        if !introspecting && !matches!(self.stage, Stage::AwaitingBody) {
            return Step::Wait;
        }
        if buffered > limit {
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
        self.process_body(ctx, &bytes)
    }

    fn process_body(&mut self, ctx: &Ctx, bytes: &[u8]) -> Step {
        match &self.served {
            Served::Create => self.read_credentials(ctx, bytes),
            Served::Verify => self.verify_request(ctx, bytes),
            Served::Gate(gate) => match &gate.otp_from {
                OtpSource::BodyPointer(pointer) => {
                    let pointer = pointer.clone();
                    self.gate_on_body(ctx, &pointer, bytes)
                }
                // A header gate decided at the headers: its body is forwarded, never processed.
                OtpSource::Header(_) => Step::Forward,
            },
        }
    }

    /// A callout answered (or Envoy answered for it): introspection or the credential service.
    pub fn on_answer(
        &mut self,
        ctx: &Ctx,
        cache: Option<&mut ClaimsCache>,
        status: Option<u16>,
        body: &[u8],
    ) -> Step {
        let stage = std::mem::replace(&mut self.stage, Stage::Finished);
        let pending_pin = match stage {
            Stage::Introspecting { token } => {
                return self.on_introspection(ctx, cache, token, status, body)
            }
            Stage::CheckingPassword { pin } => pin,
            Stage::CheckingPin => None,
            Stage::AskingAuthority(question) => {
                return self.on_authority_answer(ctx, question, status, body)
            }
            Stage::AwaitingBody | Stage::Draining(_) | Stage::Passed | Stage::Finished => {
                return self.fail(Failure::Internal(
                    "A credential answer arrived unexpectedly.",
                ))
            }
        };
        self.on_credential_answer(ctx, pending_pin, status, body)
    }

    /// `dispatch_http_call` refused the callout (unknown cluster, missing header): fail closed.
    pub fn on_call_not_sent(&mut self, upstream: Upstream) -> Step {
        self.fail(Failure::Internal(match upstream {
            Upstream::CredentialService => "The credential service call could not be started.",
            Upstream::Introspection => "The token introspection call could not be started.",
            Upstream::Authority => "The one-time-use authority call could not be started.",
        }))
    }

    /// The proxy's clock could not be read in a callback. Every decision left (token times, code
    /// steps, the throttle, the ledger) needs it, so the request fails closed; a gate that already
    /// passed needs no more decisions, and a finished exchange has answered already.
    pub fn on_clock_failure(&mut self) -> Step {
        match self.stage {
            Stage::Passed => Step::Forward,
            Stage::Finished => Step::Wait,
            _ => self.fail(Failure::ClockUnavailable),
        }
    }

    fn reply(&mut self, reply: Reply, outcome: &'static str) -> Step {
        self.stage = Stage::Finished;
        Step::Reply { reply, outcome }
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
        let reply =
            jsonapi::error_reply_naming(failure, &self.request_id, self.missing_scope.as_deref());
        self.reply(reply, failure.code())
    }
}

#[cfg(test)]
mod tests {
    use crate::flow::fixture::*;
    use serde_json::json;

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
            otp_header: None,
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

    #[test]
    fn introspection_holds_the_body_until_the_token_is_known() {
        let config = introspection_config();
        let mut cache = ClaimsCache::new(10, std::time::Duration::from_secs(60), [7; 16]);
        let auth = format!("Bearer {}", testkit::rs256(&claims()));
        let state = TokenState {
            remote_jwks: None,
            verified: Some(&mut cache),
        };
        let (mut ex, step) = Exchange::start(
            &cx(&config),
            Route::Create,
            state,
            &head(&auth, None, false),
            "id".into(),
        );
        assert_eq!(upstream(&step), Some(Upstream::Introspection));
        let body = br#"{"pin":"8299"}"#.to_vec();
        assert!(matches!(
            ex.on_body(&cx(&config), body.len(), true, || Ok(body)),
            Step::Wait
        ));
        let step = ex.on_answer(&cx(&config), Some(&mut cache), Some(200), &active());
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
            &cx(&config),
            Route::Create,
            state,
            &head(&auth, Some("text/html"), true),
            "id".into(),
        );
        assert_eq!(code(&step), "not-acceptable");
    }

    #[test]
    fn introspection_reports_the_token_before_later_failures() {
        let config = introspection_config();
        let auth = format!("Bearer {}", testkit::rs256(&claims()));
        let start = |accept, eos| {
            Exchange::start(
                &cx(&config),
                Route::Create,
                TokenState::default(),
                &head(&auth, accept, eos),
                "id".into(),
            )
        };
        let (mut ex, _) = start(Some("text/html"), true);
        assert_eq!(
            code(&ex.on_answer(&cx(&config), None, Some(200), br#"{"active":false}"#)),
            "token-inactive"
        );
        // The body is still arriving when the verdict is known: answered when it ends.
        let (mut ex, _) = start(Some("text/html"), false);
        assert!(matches!(
            ex.on_answer(&cx(&config), None, Some(200), br#"{"active":false}"#),
            Step::Wait
        ));
        assert_eq!(
            code(&ex.on_body(&cx(&config), 3, true, || Err(()))),
            "token-inactive"
        );
        let (mut ex, _) = start(Some("text/html"), true);
        assert_eq!(
            code(&ex.on_answer(&cx(&config), None, Some(200), &active())),
            "not-acceptable"
        );
        let (mut ex, _) = start(None, false);
        assert!(matches!(
            ex.on_body(&cx(&config), 5000, false, || Err(())),
            Step::Wait
        ));
        assert_eq!(
            code(&ex.on_answer(&cx(&config), None, Some(200), &active())),
            "payload-too-large"
        );
        let (mut ex, _) = start(None, true);
        assert_eq!(
            code(&ex.on_answer(&cx(&config), None, Some(200), &active())),
            "body-not-json"
        );
        let (mut ex, _) = start(None, false);
        assert!(
            matches!(
                ex.on_answer(&cx(&config), None, Some(200), &active()),
                Step::Wait
            ),
            "body still to come"
        );
        let body = br#"{"pin":"8299"}"#.to_vec();
        assert_eq!(
            upstream(&ex.on_body(&cx(&config), body.len(), true, || Ok(body))),
            Some(Upstream::CredentialService)
        );
        let (mut ex, _) = start(None, true);
        assert_eq!(
            code(&ex.on_answer(&cx(&config), None, Some(504), b"")),
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
                otp_header: None,
                end_of_stream: true,
            };
            Exchange::start(
                &cx(&config),
                Route::Create,
                TokenState::default(),
                &head,
                "id".into(),
            )
            .1
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

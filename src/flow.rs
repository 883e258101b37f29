//! The request flow as a state machine, free of host calls. The adapter feeds it what Envoy says
//! (headers, body progress, callout answers) and carries out the `Step` it returns. Shared state
//! (the single-use ledger, the throttle) is reached through the `SharedStore` trait.
//!
//! Three kinds of route:
//! - create (`/user/<v>/user/otp`). Check order (NOTES.md, first failure wins): method 405, bearer
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

use std::time::Duration;

use serde_json::{Map, Value};

use crate::body::{self, Credentials};
use crate::claims_cache::{token_hash, ClaimsCache, TokenHash};
use crate::config::{Config, OtpSource};
use crate::credential::{self, Callout, SecretKind, Upstream, Verdict};
use crate::failure::Failure;
use crate::introspection::{self, Answer};
use crate::jsonapi::{self, Reply};
use crate::jwks::RemoteJwks;
use crate::negotiation;
use crate::otp;
use crate::secret::Secret;
use crate::shared_store::SharedStore;
use crate::single_use::{self, Consumed, LedgerError};
use crate::throttle::{self, Reservation};
use crate::token::{self, TokenSource, Verified};

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

/// The cluster and timeout of a callout: the credential service's, or the introspection
/// endpoint's when the token is introspected.
pub fn call_target(config: &Config, upstream: Upstream) -> (&str, Duration) {
    match (upstream, &config.token.source) {
        (Upstream::Introspection, TokenSource::Introspection(i)) => (i.cluster.as_str(), i.timeout),
        _ => (
            config.credential_service.cluster.as_str(),
            config.credential_service.timeout,
        ),
    }
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
    route: Route,
    request_id: String,
    user_id: String,
    stage: Stage,
    /// The first failing check after the token (Accept, Content-Type, declared length).
    after_token: Option<Failure>,
    early_body: EarlyBody,
    /// A gate's code taken from a header at the start.
    header_code: Option<Secret>,
    /// What the last credential callout answered, for the stats (taken by the adapter).
    credential_result: Option<&'static str>,
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

fn store_failure(_: crate::shared_store::StoreError) -> Failure {
    Failure::SharedStateUnavailable
}

impl Exchange {
    /// Starts the exchange at the request headers. `request_id` is the one the reply will carry.
    pub fn start(
        ctx: &Ctx,
        route: Route,
        state: TokenState,
        head: &RequestHead,
        request_id: String,
    ) -> (Self, Step) {
        let mut exchange = Exchange {
            route,
            request_id,
            user_id: String::new(),
            stage: Stage::AwaitingBody,
            after_token: None,
            early_body: EarlyBody::None,
            header_code: head.otp_header.map(|h| Secret::new(h.to_string())),
            credential_result: None,
            missing_scope: None,
            ledger_reset: false,
        };
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

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    pub fn route(&self) -> Route {
        self.route
    }

    /// What the last credential callout answered, once (for the stats).
    pub fn take_credential_result(&mut self) -> Option<&'static str> {
        self.credential_result.take()
    }

    /// The scope the route needs: create and verify have their own; gates need none (the upstream
    /// authorizes the request itself).
    fn scope<'c>(&self, config: &'c Config) -> Option<&'c str> {
        match self.route {
            Route::Create => Some(&config.token.required_scope),
            Route::Verify => Some(&config.otp.verify_scope),
            Route::Gate(_) => None,
        }
    }

    /// Whether a corrupt single-use bucket was fenced off, once (for the counter and a warning).
    pub fn take_ledger_reset(&mut self) -> bool {
        std::mem::take(&mut self.ledger_reset)
    }

    /// The route's scope check; a 403 names the scope that was required.
    fn accept_token(&mut self, config: &Config, verified: Verified) -> Result<(), Failure> {
        let scope = self.scope(config);
        match verified.require_scope(scope) {
            Ok(verified) => {
                self.user_id = verified.user_id;
                Ok(())
            }
            Err(failure) => {
                self.missing_scope = scope.map(str::to_string);
                Err(failure)
            }
        }
    }

    /// Verifies the token now, or returns the introspection callout that will.
    fn check_token(
        &mut self,
        ctx: &Ctx,
        state: TokenState,
        head: &RequestHead,
    ) -> Result<Option<Callout>, Failure> {
        let settings = &ctx.config.token;
        match &settings.source {
            TokenSource::Jwt => {
                let bearer = token::bearer_token(head.authorization)?;
                let verified = token::verify(
                    settings,
                    state.remote_jwks,
                    state.verified,
                    bearer,
                    ctx.now_ms,
                )?;
                self.accept_token(ctx.config, verified)?;
                Ok(None)
            }
            TokenSource::JwtAuthn { .. } => match (&head.verified_claims, head.authorization) {
                (Some(claims), _) => {
                    let verified = token::check_verified_claims(settings, claims)?;
                    self.accept_token(ctx.config, verified)?;
                    Ok(None)
                }
                // jwt_authn saw a token and did not vouch for it.
                (None, Some(_)) => Err(Failure::TokenRejected),
                (None, None) => Err(Failure::TokenMissing),
            },
            TokenSource::Introspection(introspection_settings) => {
                let bearer = token::bearer_token(head.authorization)?;
                let hash = token_hash(bearer);
                let cached = state
                    .verified
                    .and_then(|cache| cache.get(&hash, ctx.now_ms));
                if let Some(claims) = cached {
                    let verified = token::check_claims(settings, &claims, ctx.now_ms / 1000)?;
                    self.accept_token(ctx.config, verified)?;
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
        match self.route {
            Route::Gate(i) => config
                .gates
                .get(i)
                .map_or(config.max_body_bytes, |g| g.max_body_bytes),
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
        match self.route {
            Route::Create => self.read_credentials(ctx, bytes),
            Route::Verify => self.verify_request(ctx, bytes),
            Route::Gate(_) => self.gate_on_body(ctx, bytes),
        }
    }

    fn read_credentials(&mut self, ctx: &Ctx, bytes: &[u8]) -> Step {
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
    fn reserve_attempt(&mut self, ctx: &Ctx) -> Result<(), Failure> {
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
    fn check_secret(
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

    /// Checks a code for this user and uses it up. `Ok(true)`: valid, and this was its one use.
    fn use_code(&mut self, ctx: &Ctx, code: &Secret) -> Result<bool, Failure> {
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

    fn verify_request(&mut self, ctx: &Ctx, bytes: &[u8]) -> Step {
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

    /// A gate that reads the code from a header decides at once; a missing header is a 403.
    fn gate_on_header(&mut self, ctx: &Ctx) -> Option<Step> {
        let Route::Gate(i) = self.route else {
            return None;
        };
        let gate = ctx.config.gates.get(i)?;
        if !matches!(gate.otp_from, OtpSource::Header(_)) {
            return None;
        }
        let code = self.header_code.take();
        Some(self.gate_decide(ctx, code))
    }

    fn gate_on_body(&mut self, ctx: &Ctx, bytes: &[u8]) -> Step {
        let Route::Gate(i) = self.route else {
            return self.fail(Failure::Internal("Not a gate."));
        };
        let pointer = match ctx.config.gates.get(i).map(|g| &g.otp_from) {
            Some(OtpSource::BodyPointer(p)) => p.as_str(),
            _ => return self.fail(Failure::Internal("Not a body gate.")),
        };
        // A body that is not JSON, or has no string at the pointer, simply carries no code.
        let code = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| {
                v.pointer(pointer)
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .map(Secret::new);
        self.gate_decide(ctx, code)
    }

    fn gate_decide(&mut self, ctx: &Ctx, code: Option<Secret>) -> Step {
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            return self.fail(Failure::OtpRequired);
        };
        match self.use_code(ctx, &code) {
            Ok(true) => {
                self.stage = Stage::Passed;
                Step::Continue
            }
            Ok(false) => self.fail(Failure::OtpRequired),
            Err(failure) => self.fail(failure),
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
            Stage::AwaitingBody | Stage::Draining(_) | Stage::Passed | Stage::Finished => {
                return self.fail(Failure::Internal(
                    "A credential answer arrived unexpectedly.",
                ))
            }
        };
        let answer = credential::read_answer(status, body);
        self.credential_result = Some(credential::result_name(&answer));
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

    fn on_introspection(
        &mut self,
        ctx: &Ctx,
        cache: Option<&mut ClaimsCache>,
        token: TokenHash,
        status: Option<u16>,
        body: &[u8],
    ) -> Step {
        let body_done = !matches!(self.early_body, EarlyBody::None);
        let claims = match introspection::read_answer(status, body) {
            Err(failure) => return self.fail_after_body(failure, body_done),
            Ok(Answer::Inactive) => return self.fail_after_body(Failure::TokenInactive, body_done),
            Ok(Answer::Active(claims)) => claims,
        };
        let accepted = token::check_claims(&ctx.config.token, &claims, ctx.now_ms / 1000)
            .and_then(|verified| self.accept_token(ctx.config, verified));
        match accepted {
            Err(failure) => self.fail_after_body(failure, body_done),
            Ok(()) => {
                if let Some(cache) = cache {
                    cache.insert(token, claims, ctx.now_ms);
                }
                // Whether the body already ended is in `early_body`; a body still to come arrives later.
                self.token_passed(ctx, false)
            }
        }
    }

    /// `dispatch_http_call` refused the callout (unknown cluster, missing header): fail closed.
    pub fn on_call_not_sent(&mut self, upstream: Upstream) -> Step {
        self.fail(Failure::Internal(match upstream {
            Upstream::CredentialService => "The credential service call could not be started.",
            Upstream::Introspection => "The token introspection call could not be started.",
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
        match otp::mint(&config.otp, &self.user_id, now_ms) {
            Some(minted) => self.reply(jsonapi::created_reply(&minted, &self.request_id), "issued"),
            None => self.fail(Failure::Internal(
                "The one-time password could not be computed.",
            )),
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
    use super::*;
    use crate::shared_store::MemoryStore;
    use crate::testkit::{self, claims, merged, NOW};
    use serde_json::{json, Value};

    const ID: &str = "9m4e2mr0ui3e8a215n4g";
    const NOW_MS: u64 = NOW * 1000;

    /// A context with a fresh in-memory shared store (leaked: tests are short-lived).
    fn cx(config: &Config) -> Ctx<'_> {
        Ctx {
            config,
            store: Box::leak(Box::new(MemoryStore::new())),
            now_ms: NOW_MS,
        }
    }

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
            call_target(&c, Upstream::CredentialService).0,
            c.credential_service.cluster
        );
        // Without introspection configured, nothing goes anywhere else.
        assert_eq!(
            call_target(&c, Upstream::Introspection).0,
            c.credential_service.cluster
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

#[cfg(test)]
mod mode_tests {
    use super::*;
    use crate::shared_store::MemoryStore;
    use crate::testkit::{self, claims, merged, NOW};
    use serde_json::json;

    const NOW_MS: u64 = NOW * 1000;

    fn cx(config: &Config) -> Ctx<'_> {
        Ctx {
            config,
            store: Box::leak(Box::new(MemoryStore::new())),
            now_ms: NOW_MS,
        }
    }

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

#[cfg(test)]
mod one_time_tests {
    use super::*;
    use crate::shared_store::MemoryStore;
    use crate::testkit::{self, claims, merged, NOW};
    use serde_json::json;

    const NOW_MS: u64 = NOW * 1000;

    fn ctx<'a>(config: &'a Config, store: &'a MemoryStore) -> Ctx<'a> {
        Ctx {
            config,
            store,
            now_ms: NOW_MS,
        }
    }

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

    fn outcome(step: &Step) -> &'static str {
        match step {
            Step::Reply { outcome, .. } => outcome,
            Step::Continue => "continue",
            Step::Forward => "forward",
            Step::Call(_) => "call",
            Step::Wait => "wait",
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

//! The token check, in each mode: the filter verifies the JWS itself, trusts the payload Envoy's
//! `jwt_authn` verified, or introspects the token (a callout; the later header checks wait for
//! its answer, and a body that arrives meanwhile is kept, so the check order holds in every mode).

use crate::callout::Callout;
use crate::config::Config;
use crate::reply::failure::Failure;
use crate::secret::Secret;
use crate::token::cache::{ClaimsCache, TokenHash};
use crate::token::introspection::{self, Answer};
use crate::token::{self, TokenSource, Verified};

use super::{Ctx, EarlyBody, Exchange, RequestHead, Served, Stage, Step, TokenState};

impl Exchange {
    /// The scope the route needs: create and verify have their own; gates need none (the upstream
    /// authorizes the request itself).
    pub(super) fn scope<'c>(&self, config: &'c Config) -> Option<&'c str> {
        match self.served {
            Served::Create => Some(&config.token.required_scope),
            Served::Verify => Some(&config.otp.verify_scope),
            Served::Gate(_) => None,
        }
    }

    /// The route's scope check; a 403 names the scope that was required.
    pub(super) fn accept_token(
        &mut self,
        config: &Config,
        verified: Verified,
    ) -> Result<(), Failure> {
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
    pub(super) fn check_token(
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
                // Without a cache the hash is never used: nothing is stored after the answer.
                let (hash, cached) = match state.verified {
                    Some(cache) => {
                        let hash = cache.hash(bearer);
                        (hash, cache.get(&hash, ctx.now_ms))
                    }
                    None => (0, None),
                };
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

    pub(super) fn on_introspection(
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
}

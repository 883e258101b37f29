//! The decisions: verify a secret, consume a one-time code, count a wrong code. Independent of
//! HTTP (`routes.rs` maps requests and answers).

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::hasher::Hasher;
use crate::introspect::Introspector;
use crate::metrics::{bump, Metrics, Stats};
use crate::protocol::{
    ConsumeRequest, ConsumeVerdict, FailureRequest, FailureVerdict, Kind, Verdict, VerifyRequest,
};
use crate::store::lockout::{lock_answer, Count, Engaged, LockPolicy};
use crate::store::{now_ms, Store, StoreResult};

pub struct Service {
    pub store: Store,
    pub hasher: Hasher,
    pub policy: LockPolicy,
    /// Required `authorization` header value, if any.
    auth: Option<String>,
    /// Served as-is at `/jwks.json`, re-read on every request.
    pub jwks_file: Option<PathBuf>,
    /// `None`: the introspection endpoint is disabled.
    pub introspector: Option<Introspector>,
    pub stats: Stats,
    pub metrics: Arc<Metrics>,
}

impl Service {
    /// `auth`: `Some(non-empty value)` to require it on the verify and one-time-code paths.
    pub fn new(
        store: Store,
        hasher: Hasher,
        policy: LockPolicy,
        auth: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Service {
            store,
            hasher,
            policy,
            auth: auth.filter(|a| !a.is_empty()),
            jwks_file: None,
            introspector: None,
            stats: Stats::default(),
            metrics,
        }
    }

    pub fn with_jwks_file(mut self, path: Option<PathBuf>) -> Self {
        self.jwks_file = path;
        self
    }

    pub fn with_introspector(mut self, introspector: Option<Introspector>) -> Self {
        self.introspector = introspector;
        self
    }

    pub fn auth(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    fn engaged(&self, user: &str, engaged: Option<Engaged>) {
        if let Some(e) = engaged {
            self.metrics.lock(e.is_hard());
            // The user id is not a secret; it is what an operator needs to act.
            info!(user = ?user, hard = e.is_hard(), retry_after_seconds = e.retry_after_seconds(), "lock engaged");
        }
    }

    /// Answers a verify request. Order: user exists → locked → linked identity → secret, the
    /// attempt counted before the hash and settled after it.
    pub async fn check(&self, req: &VerifyRequest) -> StoreResult<Verdict> {
        let counter = match req.kind {
            Kind::Password => &self.stats.password_checks,
            Kind::Pin => &self.stats.pin_checks,
        };
        bump(counter);
        let verdict = self.decide(req).await;
        if let Ok(v) = &verdict {
            self.metrics.check(req.kind.as_str(), v.result_str());
        }
        verdict
    }

    async fn decide(&self, req: &VerifyRequest) -> StoreResult<Verdict> {
        let secret = || Zeroizing::new(req.secret.clone());
        let Some(user) = self.store.user_for_check(&req.user).await? else {
            // Timing guard: the same argon2 work as a real check.
            self.hasher.verify(None, secret()).await;
            return Ok(Verdict::UnknownUser);
        };
        if let Some(retry_after_seconds) = user
            .lock
            .and_then(|(until, hard)| lock_answer(until, hard, now_ms()))
        {
            return Ok(Verdict::Locked {
                retry_after_seconds,
            });
        }
        if user.linked_identity.is_none() {
            return Ok(Verdict::MissingLinkedIdentity);
        }
        let counted = self.store.count_failure(&req.user, &self.policy).await?;
        if let Count::Locked {
            retry_after_seconds,
        } = counted
        {
            return Ok(Verdict::Locked {
                retry_after_seconds,
            });
        }
        let stored = user.secret(req.kind);
        if let Some(s) = &stored {
            if !self.hasher.knows_pepper(s.pepper_id.as_deref()) {
                warn!(user = ?req.user, kind = req.kind.as_str(), pepper = ?s.pepper_id,
                      "stored hash uses a pepper this process does not have: it cannot verify");
            }
        }
        let valid = self.hasher.verify(stored.clone(), secret()).await;
        let recounted = self
            .store
            .settle(&req.user, &self.policy, &counted, valid)
            .await?;
        if !valid {
            if let Count::Counted { engaged, .. } = counted {
                self.engaged(&req.user, engaged);
            }
            self.engaged(&req.user, recounted);
            return Ok(Verdict::Invalid);
        }
        if let Some(old) = stored.filter(|s| self.hasher.needs_rehash(s)) {
            self.rehash(req.user.clone(), req.kind, old.phc, secret());
        }
        Ok(Verdict::Valid)
    }

    /// Makes the hash again with the active pepper and today's parameters, after the answer.
    fn rehash(&self, user: String, kind: Kind, old_phc: String, secret: Zeroizing<String>) {
        let (hasher, store, metrics) = (
            self.hasher.clone(),
            self.store.clone(),
            Arc::clone(&self.metrics),
        );
        tokio::spawn(async move {
            let new = match hasher.hash(secret).await {
                Ok(new) => new,
                Err(e) => return warn!(user = ?user, error = %e, "rehash failed"),
            };
            match store.replace_hash(&user, kind, &old_phc, &new).await {
                Ok(true) => {
                    metrics.rehash();
                    info!(user = ?user, kind = kind.as_str(), pepper = ?new.pepper_id, "rehashed");
                }
                Ok(false) => {}
                Err(e) => warn!(user = ?user, error = %e, "rehash not stored"),
            }
        });
    }

    /// `POST /v1/otp/consume`: locked first; then the one-statement insert decides.
    pub async fn consume(&self, req: &ConsumeRequest) -> StoreResult<ConsumeVerdict> {
        bump(&self.stats.consumes);
        let verdict = self.consume_inner(req).await;
        if let Ok(v) = &verdict {
            self.metrics.consume(v.result_str());
        }
        verdict
    }

    async fn consume_inner(&self, req: &ConsumeRequest) -> StoreResult<ConsumeVerdict> {
        if let Some(retry_after_seconds) = self.store.locked(&req.user).await? {
            return Ok(ConsumeVerdict::Locked {
                retry_after_seconds,
            });
        }
        if !self.store.consume(req).await? {
            return Ok(ConsumeVerdict::Used);
        }
        // A consumed code is a success for the user's budget, like a valid secret.
        self.store.reset_budget(&req.user).await?;
        Ok(ConsumeVerdict::Consumed)
    }

    /// `POST /v1/otp/failure`: a wrong code counts in the same budget as wrong secrets; the
    /// failure that reaches a lock answers `locked`.
    pub async fn report_failure(&self, req: &FailureRequest) -> StoreResult<FailureVerdict> {
        bump(&self.stats.failure_reports);
        let verdict = match self.store.count_failure(&req.user, &self.policy).await? {
            Count::Locked {
                retry_after_seconds,
            } => FailureVerdict::Locked {
                retry_after_seconds,
            },
            Count::Counted {
                engaged: Some(e), ..
            } => {
                self.engaged(&req.user, Some(e));
                FailureVerdict::Locked {
                    retry_after_seconds: e.retry_after_seconds(),
                }
            }
            Count::Counted { engaged: None, .. } => FailureVerdict::Counted,
        };
        self.metrics.failure(verdict.result_str());
        Ok(verdict)
    }
}

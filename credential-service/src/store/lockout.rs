//! The per-user failure budget, in the store, so that restarts and replicas change nothing.
//!
//! Increment-then-check: an attempt is counted as a failure *before* its secret is hashed, in
//! one atomic statement that also engages the lock when the count reaches a threshold; it is
//! settled after: a valid secret resets the budget, a wrong one leaves the failure counted.
//! Parallel guesses therefore cannot all pass the "locked?" test while the first ones hash.
//!
//! Escalation: every `max_failures` consecutive failures engage a temporary lock, the first
//! `lockout` long and each further one twice the last, up to `max_lock`; at `hard_after`
//! (at most 100, NIST SP 800-63B) a hard lock that only `users unlock` or a new password
//! lifts. An attempt while locked is refused without counting (no secret was checked).

use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use sqlx::Row;

use super::{now_ms, Store, StoreResult};

/// NIST SP 800-63B §5.2.2: at most 100 consecutive failed attempts on one account.
pub const HARD_LOCK_CEILING: u32 = 100;
/// `retryAfterSeconds` of a hard lock: it has no end, and the filter clamps to 1–86400.
pub const HARD_LOCK_RETRY_SECONDS: u64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPolicy {
    /// Consecutive failures per temporary lock (at least 1).
    pub max_failures: u32,
    /// The first temporary lock.
    pub lockout: Duration,
    /// The longest temporary lock.
    pub max_lock: Duration,
    /// Consecutive failures that engage the hard lock (1 to [`HARD_LOCK_CEILING`]).
    pub hard_after: u32,
}

impl LockPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_failures == 0 {
            return Err("--max-failures must be at least 1".into());
        }
        if self.lockout.is_zero() || self.max_lock < self.lockout {
            return Err(
                "--lockout-seconds must be at least 1 and at most --max-lock-seconds".into(),
            );
        }
        if !(1..=HARD_LOCK_CEILING).contains(&self.hard_after) {
            return Err(format!(
                "--hard-lock-after must be from 1 to {HARD_LOCK_CEILING} (NIST SP 800-63B)"
            ));
        }
        Ok(())
    }

    fn ms(d: Duration) -> i64 {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
    }
}

/// Whole seconds from `now_ms` to `until_ms`, rounded up, never below 1.
pub fn retry_after(until_ms: i64, now_ms: i64) -> u64 {
    let ms = until_ms.saturating_sub(now_ms).max(1);
    u64::try_from((ms + 999) / 1000).unwrap_or(1).max(1)
}

/// The outcome of counting one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Counted: the `n`-th consecutive failure. `engaged`: this count engaged a lock (temporary
    /// or `hard`). `epoch` and `attempt` identify it for [`Store::settle`].
    Counted {
        n: i64,
        engaged: Option<Engaged>,
        epoch: i64,
        attempt: i64,
    },
    /// Not counted: the user was already locked.
    Locked { retry_after_seconds: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engaged {
    Temporary { retry_after_seconds: u64 },
    Hard,
}

impl Engaged {
    pub fn retry_after_seconds(self) -> u64 {
        match self {
            Engaged::Temporary {
                retry_after_seconds,
            } => retry_after_seconds,
            Engaged::Hard => HARD_LOCK_RETRY_SECONDS,
        }
    }

    pub fn is_hard(self) -> bool {
        matches!(self, Engaged::Hard)
    }
}

/// `L`: the row is locked at `$2` (the statement's now). The SET expressions of an upsert all
/// read the row as it was, in both engines, so `L` means "locked before this attempt".
const LOCKED: &str = "(attempts.hard_locked <> 0 OR attempts.locked_until_ms > $2)";
/// The length of the temporary lock the next threshold engages: the first is `$4`, each next
/// one twice the last, at most `$5`.
const NEXT_LOCK: &str = "(CASE WHEN attempts.lock_ms = 0 THEN $4 \
     WHEN attempts.lock_ms * 2 > $5 THEN $5 ELSE attempts.lock_ms * 2 END)";

fn count_sql(only_if_epoch_changed: bool) -> String {
    let l = LOCKED;
    let next = NEXT_LOCK;
    let threshold = "(attempts.failures + 1) % $3 = 0";
    let filter = if only_if_epoch_changed {
        " WHERE attempts.epoch <> $11"
    } else {
        ""
    };
    format!(
        "INSERT INTO attempts (user_id, failures, locked_until_ms, lock_ms, hard_locked, epoch, \
         last_attempt, updated_ms) VALUES ($1, 1, $8, $9, $10, 0, $7, $2) \
         ON CONFLICT (user_id) DO UPDATE SET \
         failures = CASE WHEN {l} THEN attempts.failures ELSE attempts.failures + 1 END, \
         hard_locked = CASE WHEN {l} THEN attempts.hard_locked \
           WHEN attempts.failures + 1 >= $6 THEN 1 ELSE 0 END, \
         lock_ms = CASE WHEN {l} THEN attempts.lock_ms WHEN {threshold} THEN {next} \
           ELSE attempts.lock_ms END, \
         locked_until_ms = CASE WHEN {l} THEN attempts.locked_until_ms \
           WHEN {threshold} THEN $2 + {next} ELSE attempts.locked_until_ms END, \
         last_attempt = CASE WHEN {l} THEN attempts.last_attempt ELSE $7 END, \
         updated_ms = $2{filter} \
         RETURNING failures, locked_until_ms, hard_locked, epoch, last_attempt"
    )
}

impl Store {
    /// Counts one failure for `user` (increment-then-check), engaging a lock at a threshold.
    pub async fn count_failure(&self, user: &str, policy: &LockPolicy) -> StoreResult<Count> {
        self.count(user, policy, None).await.map(|c| {
            c.unwrap_or(Count::Locked {
                retry_after_seconds: 1,
            })
        })
    }

    async fn count(
        &self,
        user: &str,
        policy: &LockPolicy,
        only_if_epoch_changed_from: Option<i64>,
    ) -> StoreResult<Option<Count>> {
        let now = now_ms();
        let attempt = i64::try_from(OsRng.next_u64() >> 1).unwrap_or(1).max(1);
        let base = LockPolicy::ms(policy.lockout);
        let cap = LockPolicy::ms(policy.max_lock);
        // A first failure on a fresh row: the same thresholds, worked out here.
        let first_locks = policy.max_failures == 1;
        let first_hard = policy.hard_after <= 1;
        let sql = count_sql(only_if_epoch_changed_from.is_some());
        let mut query = sqlx::query(&sql)
            .bind(user)
            .bind(now)
            .bind(i64::from(policy.max_failures))
            .bind(base)
            .bind(cap)
            .bind(i64::from(policy.hard_after))
            .bind(attempt)
            .bind(if first_locks { now + base } else { 0 })
            .bind(if first_locks { base } else { 0 })
            .bind(i64::from(first_hard));
        if let Some(epoch) = only_if_epoch_changed_from {
            query = query.bind(epoch);
        }
        let row = query.fetch_optional(self.pool()).await?;
        let Some(row) = row else { return Ok(None) };
        let n: i64 = row.try_get(0)?;
        let until: i64 = row.try_get(1)?;
        let hard = row.try_get::<i64, _>(2)? != 0;
        let epoch: i64 = row.try_get(3)?;
        let last: i64 = row.try_get(4)?;
        if last != attempt {
            return Ok(Some(Count::Locked {
                retry_after_seconds: if hard {
                    HARD_LOCK_RETRY_SECONDS
                } else {
                    retry_after(until, now)
                },
            }));
        }
        let engaged = if hard {
            Some(Engaged::Hard)
        } else if until > now {
            Some(Engaged::Temporary {
                retry_after_seconds: retry_after(until, now),
            })
        } else {
            None
        };
        Ok(Some(Count::Counted {
            n,
            engaged,
            epoch,
            attempt,
        }))
    }

    /// Settles a counted attempt. Valid: the budget starts over and temporary locks are lifted
    /// (a hard lock only if this very attempt engaged it). Wrong: the failure stays counted,
    /// unless a reset wiped it meanwhile, in which case it is counted again; returns what that
    /// recount engaged, if anything.
    pub async fn settle(
        &self,
        user: &str,
        policy: &LockPolicy,
        counted: &Count,
        valid: bool,
    ) -> StoreResult<Option<Engaged>> {
        let Count::Counted { epoch, attempt, .. } = *counted else {
            return Ok(None);
        };
        if valid {
            sqlx::query(
                "UPDATE attempts SET failures = 0, locked_until_ms = 0, lock_ms = 0, \
                 hard_locked = 0, epoch = epoch + 1, updated_ms = $2 \
                 WHERE user_id = $1 AND (hard_locked = 0 OR (epoch = $3 AND last_attempt = $4))",
            )
            .bind(user)
            .bind(now_ms())
            .bind(epoch)
            .bind(attempt)
            .execute(self.pool())
            .await?;
            return Ok(None);
        }
        match self.count(user, policy, Some(epoch)).await? {
            Some(Count::Counted { engaged, .. }) => Ok(engaged),
            _ => Ok(None),
        }
    }

    /// A success outside the verify path (a consumed one-time code): the budget starts over
    /// unless the user is hard-locked. Writes only when there is something to reset.
    pub async fn reset_budget(&self, user: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE attempts SET failures = 0, locked_until_ms = 0, lock_ms = 0, \
             epoch = epoch + 1, updated_ms = $2 \
             WHERE user_id = $1 AND hard_locked = 0 AND (failures <> 0 OR locked_until_ms <> 0)",
        )
        .bind(user)
        .bind(now_ms())
        .execute(self.pool())
        .await
        .map(|_| ())
    }

    /// `users unlock`, and a new password: every lock lifted, the budget starts over.
    pub async fn unlock(&self, user: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE attempts SET failures = 0, locked_until_ms = 0, lock_ms = 0, \
             hard_locked = 0, epoch = epoch + 1, updated_ms = $2 WHERE user_id = $1",
        )
        .bind(user)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// `Some(retry_after_seconds)` if `user` is locked now.
    pub async fn locked(&self, user: &str) -> StoreResult<Option<u64>> {
        let row = sqlx::query(
            "SELECT locked_until_ms, hard_locked, failures FROM attempts WHERE user_id = $1",
        )
        .bind(user)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let until: i64 = row.try_get(0)?;
        let hard = row.try_get::<i64, _>(1)? != 0;
        Ok(lock_answer(until, hard, now_ms()))
    }

    /// The budget row of `user`: (failures, locked_until_ms, hard_locked), for tests and tools.
    pub async fn budget(&self, user: &str) -> StoreResult<Option<(i64, i64, bool)>> {
        let row = sqlx::query(
            "SELECT failures, locked_until_ms, hard_locked FROM attempts WHERE user_id = $1",
        )
        .bind(user)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(row) => Ok(Some((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get::<i64, _>(2)? != 0,
            ))),
            None => Ok(None),
        }
    }
}

/// `Some(retry_after_seconds)` for a row locked at `now`.
pub fn lock_answer(locked_until_ms: i64, hard: bool, now: i64) -> Option<u64> {
    if hard {
        Some(HARD_LOCK_RETRY_SECONDS)
    } else if locked_until_ms > now {
        Some(retry_after(locked_until_ms, now))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_bounds() {
        let ok = LockPolicy {
            max_failures: 10,
            lockout: Duration::from_secs(300),
            max_lock: Duration::from_secs(86_400),
            hard_after: 100,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            LockPolicy {
                hard_after: 101,
                ..ok
            },
            LockPolicy {
                hard_after: 0,
                ..ok
            },
            LockPolicy {
                max_failures: 0,
                ..ok
            },
            LockPolicy {
                max_lock: Duration::from_secs(299),
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after(1_000, 0), 1);
        assert_eq!(retry_after(1_001, 0), 2);
        assert_eq!(retry_after(0, 5), 1);
        assert_eq!(lock_answer(0, true, 5), Some(HARD_LOCK_RETRY_SECONDS));
        assert_eq!(lock_answer(10_000, false, 5), Some(10));
        assert_eq!(lock_answer(5, false, 5), None);
    }
}

//! Per-user lockout after consecutive failed checks.
//!
//! Every method takes `now` explicitly, so the clock is injectable and tests never sleep.
//!
//! Increment-then-check: [`Lockout::begin`] counts an attempt as a failure *before* the
//! (slow) secret check runs, and sets the lock as soon as the reserved count reaches the
//! limit. Parallel guesses therefore cannot all pass the "locked?" check while the first
//! ones are still hashing. [`Lockout::finish`] then settles the attempt: a valid secret
//! resets the counter (and lifts a lock the attempt itself provisionally set), a wrong one
//! keeps the reserved failure.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Consecutive failures that lock the user (at least 1).
    pub max_failures: u32,
    /// How long a lock lasts.
    pub lockout: Duration,
}

#[derive(Debug, Default)]
struct Entry {
    /// Consecutive failures, including attempts still in flight.
    failures: u32,
    locked_until: Option<Instant>,
    /// Bumped on every reset, so an in-flight attempt that started before a reset knows its
    /// reserved failure was wiped and must be counted again.
    epoch: u64,
}

impl Entry {
    /// Lifts an expired lock; the counter starts over.
    fn expire(&mut self, now: Instant) {
        if self.locked_until.is_some_and(|until| now >= until) {
            self.reset();
        }
    }

    fn reset(&mut self) {
        self.failures = 0;
        self.locked_until = None;
        self.epoch = self.epoch.wrapping_add(1);
    }

    fn retry_after(&self, now: Instant) -> Option<u64> {
        self.locked_until
            .filter(|until| now < *until)
            .map(|until| ceil_secs(until - now))
    }
}

/// Whole seconds, rounded up, never below 1.
fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// A reserved attempt, to be settled with [`Lockout::finish`].
#[derive(Debug)]
#[must_use = "settle the attempt with Lockout::finish"]
pub struct Attempt {
    user: String,
    epoch: u64,
}

#[derive(Debug)]
pub struct Lockout {
    policy: LockoutPolicy,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Lockout {
    pub fn new(policy: LockoutPolicy) -> Self {
        Lockout {
            policy: LockoutPolicy {
                max_failures: policy.max_failures.max(1),
                lockout: policy.lockout,
            },
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave an Entry half-updated in a way that
        // matters (all fields are plain values), so keep going with the data.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Some(retry_after_seconds)` if `user` is locked at `now`.
    pub fn locked(&self, user: &str, now: Instant) -> Option<u64> {
        let mut entries = self.entries();
        let entry = entries.get_mut(user)?;
        entry.expire(now);
        entry.retry_after(now)
    }

    /// Reserves one attempt for `user`, counted as a failure until settled.
    /// `Err(retry_after_seconds)` if the user is locked.
    pub fn begin(&self, user: &str, now: Instant) -> Result<Attempt, u64> {
        let mut entries = self.entries();
        let entry = entries.entry(user.to_owned()).or_default();
        entry.expire(now);
        if let Some(retry_after) = entry.retry_after(now) {
            return Err(retry_after);
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures >= self.policy.max_failures {
            // Provisional: lifted again by `finish` if this very attempt turns out valid.
            entry.locked_until = Some(now + self.policy.lockout);
        }
        Ok(Attempt {
            user: user.to_owned(),
            epoch: entry.epoch,
        })
    }

    /// Settles an attempt. `valid` resets the user's counter and lock; otherwise the failure
    /// stays counted and, at the limit, the lock runs for the full lockout from `now`.
    pub fn finish(&self, attempt: Attempt, valid: bool, now: Instant) {
        let mut entries = self.entries();
        let entry = entries.entry(attempt.user).or_default();
        if valid {
            entry.reset();
            return;
        }
        entry.expire(now);
        if entry.epoch != attempt.epoch {
            // Our reserved failure was wiped by a concurrent reset; count it again.
            entry.failures = entry.failures.saturating_add(1);
        }
        if entry.failures >= self.policy.max_failures {
            let until = now + self.policy.lockout;
            entry.locked_until = Some(entry.locked_until.map_or(until, |u| u.max(until)));
        }
    }

    /// Current consecutive failures of `user` (including in-flight attempts).
    #[cfg(test)]
    pub fn failures(&self, user: &str) -> u32 {
        self.entries().get(user).map_or(0, |e| e.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lockout(max: u32, secs: u64) -> Lockout {
        Lockout::new(LockoutPolicy {
            max_failures: max,
            lockout: Duration::from_secs(secs),
        })
    }

    fn fail(l: &Lockout, user: &str, now: Instant) -> Result<(), u64> {
        let a = l.begin(user, now)?;
        l.finish(a, false, now);
        Ok(())
    }

    #[test]
    fn increments_and_locks_at_the_limit() {
        let l = lockout(3, 300);
        let t0 = Instant::now();
        assert_eq!(l.locked("u", t0), None);
        fail(&l, "u", t0).unwrap();
        fail(&l, "u", t0).unwrap();
        assert_eq!(l.failures("u"), 2);
        assert_eq!(l.locked("u", t0), None);
        fail(&l, "u", t0).unwrap();
        assert_eq!(l.failures("u"), 3);
        assert_eq!(l.locked("u", t0), Some(300));
        assert_eq!(l.begin("u", t0).map(|_| ()), Err(300));
        // Counts down, rounding up, never below 1.
        assert_eq!(
            l.locked("u", t0 + Duration::from_millis(100_500)),
            Some(200)
        );
        assert_eq!(l.locked("u", t0 + Duration::from_millis(299_999)), Some(1));
        // Other users are unaffected.
        assert_eq!(l.locked("v", t0), None);
        assert!(l.begin("v", t0).is_ok());
    }

    #[test]
    fn valid_resets_the_counter() {
        let l = lockout(3, 300);
        let t0 = Instant::now();
        fail(&l, "u", t0).unwrap();
        fail(&l, "u", t0).unwrap();
        let a = l.begin("u", t0).unwrap();
        // The third attempt is in flight: provisionally locked, so a parallel guess is refused.
        assert_eq!(l.begin("u", t0).map(|_| ()), Err(300));
        l.finish(a, true, t0);
        assert_eq!(l.failures("u"), 0);
        assert_eq!(l.locked("u", t0), None);
        fail(&l, "u", t0).unwrap();
        fail(&l, "u", t0).unwrap();
        assert_eq!(l.locked("u", t0), None);
    }

    #[test]
    fn lock_expires_and_counter_starts_over() {
        let l = lockout(2, 60);
        let t0 = Instant::now();
        fail(&l, "u", t0).unwrap();
        fail(&l, "u", t0).unwrap();
        assert_eq!(l.locked("u", t0 + Duration::from_secs(59)), Some(1));
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(l.locked("u", t1), None);
        assert_eq!(l.failures("u"), 0);
        // One failure after expiry does not re-lock; the limit applies afresh.
        fail(&l, "u", t1).unwrap();
        assert_eq!(l.locked("u", t1), None);
        fail(&l, "u", t1).unwrap();
        assert_eq!(l.locked("u", t1), Some(60));
    }

    #[test]
    fn parallel_guesses_cannot_slip_through() {
        let l = lockout(3, 300);
        let t0 = Instant::now();
        // Ten guesses start before any finishes: only three get to check a secret.
        let started: Vec<_> = (0..10).filter_map(|_| l.begin("u", t0).ok()).collect();
        assert_eq!(started.len(), 3);
        for a in started {
            l.finish(a, false, t0 + Duration::from_secs(1));
        }
        // The lock runs from when the last failure was settled.
        assert_eq!(l.locked("u", t0 + Duration::from_secs(1)), Some(300));
    }

    #[test]
    fn failure_racing_a_reset_is_still_counted() {
        let l = lockout(3, 300);
        let t0 = Instant::now();
        let good = l.begin("u", t0).unwrap();
        let bad = l.begin("u", t0).unwrap();
        l.finish(good, true, t0);
        l.finish(bad, false, t0);
        assert_eq!(l.failures("u"), 1);
    }

    #[test]
    fn max_failures_one_locks_on_first_failure() {
        let l = lockout(1, 5);
        let t0 = Instant::now();
        fail(&l, "u", t0).unwrap();
        assert_eq!(l.locked("u", t0), Some(5));
        let ok = l.begin("u", t0 + Duration::from_secs(5)).unwrap();
        l.finish(ok, true, t0 + Duration::from_secs(5));
        assert_eq!(l.locked("u", t0 + Duration::from_secs(5)), None);
    }
}

//! The per-user brute-force throttle. RFC 4226 §7.3: throttling must span sessions, so it is keyed
//! on the user, never on the token or the connection, and lives in shared data so that every
//! worker counts against the same budget. Failed password or PIN checks and failed OTP codes all
//! draw on one per-user budget.
//!
//! An attempt is reserved before anyone is asked whether the secret is right (`reserve`), and only
//! a success gives the budget back (`succeed`). Counting after the answer would let parallel
//! guesses all pass the check before any of them was counted.
//!
//! After `max_failures` attempts the user is locked for `base_lock`, doubling with each further
//! lock up to `max_lock`. A user with no attempt for `forget_after` who is not locked is forgotten,
//! which also resets the doubling.
//!
//! Records live in `buckets` pre-created keys (see `shared_store`) of at most
//! `ceil(max_users / buckets)` records each. When a new user meets a full bucket, forgettable
//! records go first; if it is still full, the unlocked record with the oldest attempt is evicted
//! (a locked one only if every record is locked). Refusing new users instead would let whoever
//! fills a bucket lock out everyone else in it. Eviction does reset the evicted user's budget, but
//! users come from verified tokens: to evict a victim's record an attacker needs a bucket's worth
//! of other accounts hashing into the victim's bucket (about `max_users` accounts in all) and must
//! keep them more recently active than the victim.

use std::time::Duration;

use crate::state::store::{self as shared_store, SharedStore, StoreError, Update};
use crate::state::table::{digest16, Table};

/// User hash (16), failures (4), lock count (4), locked until (8), last attempt (8); big-endian,
/// times in ms since the epoch.
const RECORD_LEN: usize = 40;

#[derive(Clone, Debug)]
pub struct ThrottleSettings {
    /// Attempts allowed before a lock.
    pub max_failures: u32,
    /// The first lock; each following lock doubles.
    pub base_lock: Duration,
    /// The longest lock.
    pub max_lock: Duration,
    /// A user with no attempt for this long and not locked is forgotten (and the doubling reset).
    pub forget_after: Duration,
    /// Number of bucket keys (0 is taken as 1).
    pub buckets: usize,
    /// Users tracked across all buckets; each bucket holds `ceil(max_users / buckets)`, at least 1.
    pub max_users: usize,
}

const PREFIX: &str = "otp-filter/throttle";

impl ThrottleSettings {
    fn table(&self) -> Table {
        Table::new(PREFIX, RECORD_LEN, self.buckets, self.max_users)
    }

    /// `base_lock * 2^lock_count`, capped at `max_lock`.
    fn lock_ms(&self, lock_count: u32) -> u64 {
        let factor = 1u64.checked_shl(lock_count).unwrap_or(u64::MAX);
        millis(self.base_lock)
            .saturating_mul(factor)
            .min(millis(self.max_lock))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Go ahead and check the secret.
    Granted,
    /// Refuse without checking; the lock ends in this many seconds (at least 1, rounded up).
    Locked { retry_after_seconds: u64 },
}

pub fn bucket_key(index: usize) -> String {
    format!("{PREFIX}/{index}")
}

/// Creates every bucket, empty, unless it exists. Called at VM start.
pub fn initialize(store: &dyn SharedStore, settings: &ThrottleSettings) -> Result<(), StoreError> {
    settings.table().initialize(store)
}

/// The stored identity of a user: the first 16 bytes of SHA-256 of the user id, which must be the
/// one identity the credential check uses (spellings that reach the same account must not get
/// separate budgets).
pub fn user_id_hash(user: &str) -> [u8; 16] {
    digest16(|hasher| hasher.update(user.as_bytes()))
}

/// Reserves one attempt for `user`. A locked user gets `Locked` and nothing is written. Otherwise
/// the attempt is counted (with CAS, so attempts from all workers add up); the attempt that goes
/// over `max_failures` locks the user and is itself refused. With `max_failures` 5, five attempts
/// are granted and the sixth locks. When the lock ends the user may try again with a fresh count.
pub fn reserve(
    store: &dyn SharedStore,
    settings: &ThrottleSettings,
    user: &str,
    now_ms: u64,
) -> Result<Reservation, StoreError> {
    let hash = user_id_hash(user);
    let table = settings.table();
    let forget_ms = millis(settings.forget_after);
    shared_store::update(store, &table.key_of(&hash), |current| {
        let value = table.valid(current);
        // Compare raw prefixes: only the user's own record is decoded.
        let index = position(value, &hash);
        let found = index.and_then(|i| value.chunks_exact(RECORD_LEN).nth(i));
        let mut record = match found.and_then(Record::decode) {
            Some(record) if record.locked(now_ms) => {
                return Update::Keep(Reservation::Locked {
                    retry_after_seconds: seconds(record.locked_until_ms.saturating_sub(now_ms)),
                });
            }
            Some(record) if !record.forgettable(now_ms, forget_ms) => record,
            _ => Record::new(hash),
        };
        record.failures = record.failures.saturating_add(1);
        record.last_attempt_ms = now_ms;
        let answer = if record.failures > settings.max_failures {
            let lock_ms = settings.lock_ms(record.lock_count);
            record.locked_until_ms = now_ms.saturating_add(lock_ms);
            record.lock_count = record.lock_count.saturating_add(1);
            record.failures = 0;
            Reservation::Locked {
                retry_after_seconds: seconds(lock_ms),
            }
        } else {
            Reservation::Granted
        };
        let value = match index {
            Some(i) => replace(value, i, &record),
            None => insert(value, record, table.capacity(), now_ms, forget_ms),
        };
        Update::Write(value, answer)
    })
}

/// The secret or code was right: the user's record goes (failures and lock doubling reset).
/// Call it only when the whole check passed: a caller that knows one secret must not be able to
/// reset the budget for guessing another. (`now_ms` is unused; it keeps the calls alike.)
pub fn succeed(
    store: &dyn SharedStore,
    settings: &ThrottleSettings,
    user: &str,
    _now_ms: u64,
) -> Result<(), StoreError> {
    let hash = user_id_hash(user);
    let table = settings.table();
    shared_store::update(store, &table.key_of(&hash), |current| {
        let Some(raw) = current else {
            return Update::Keep(()); // never create keys here
        };
        let value = table.valid(current);
        match position(value, &hash) {
            Some(index) => Update::Write(without(value, index), ()),
            // The common case: nothing tracked, nothing written.
            None if value.len() == raw.len() => Update::Keep(()),
            None => Update::Write(Vec::new(), ()), // corrupt: reset
        }
    })
}

/// Users currently tracked (for a gauge).
pub fn count(store: &dyn SharedStore, settings: &ThrottleSettings) -> Result<usize, StoreError> {
    settings.table().count(store)
}

/// Drops forgettable records (not locked, last attempt at least `forget_after` ago) in every
/// bucket and resets corrupt ones (on a timer). Returns the users left.
pub fn sweep(
    store: &dyn SharedStore,
    settings: &ThrottleSettings,
    now_ms: u64,
) -> Result<usize, StoreError> {
    let forget_ms = millis(settings.forget_after);
    let table = settings.table();
    let users = table.update_each(store, |current| {
        let Some(raw) = current else {
            return Update::Keep(0); // never create keys here
        };
        let mut kept = Vec::with_capacity(raw.len());
        for chunk in table.valid(current).chunks_exact(RECORD_LEN) {
            let forget = Record::decode(chunk).is_none_or(|r| r.forgettable(now_ms, forget_ms));
            if !forget {
                kept.extend_from_slice(chunk);
            }
        }
        let users = kept.len() / RECORD_LEN;
        if kept.len() == raw.len() {
            Update::Keep(users)
        } else {
            Update::Write(kept, users)
        }
    })?;
    Ok(users.into_iter().sum())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    user: [u8; 16],
    failures: u32,
    lock_count: u32,
    locked_until_ms: u64,
    last_attempt_ms: u64,
}

impl Record {
    fn new(user: [u8; 16]) -> Record {
        Record {
            user,
            failures: 0,
            lock_count: 0,
            locked_until_ms: 0,
            last_attempt_ms: 0,
        }
    }

    fn decode(chunk: &[u8]) -> Option<Record> {
        let (user, rest) = chunk.split_first_chunk::<16>()?;
        let (failures, rest) = rest.split_first_chunk::<4>()?;
        let (lock_count, rest) = rest.split_first_chunk::<4>()?;
        let (locked_until, rest) = rest.split_first_chunk::<8>()?;
        let last_attempt = rest.first_chunk::<8>()?;
        Some(Record {
            user: *user,
            failures: u32::from_be_bytes(*failures),
            lock_count: u32::from_be_bytes(*lock_count),
            locked_until_ms: u64::from_be_bytes(*locked_until),
            last_attempt_ms: u64::from_be_bytes(*last_attempt),
        })
    }

    fn push_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.user);
        out.extend_from_slice(&self.failures.to_be_bytes());
        out.extend_from_slice(&self.lock_count.to_be_bytes());
        out.extend_from_slice(&self.locked_until_ms.to_be_bytes());
        out.extend_from_slice(&self.last_attempt_ms.to_be_bytes());
    }

    fn locked(&self, now_ms: u64) -> bool {
        self.locked_until_ms > now_ms
    }

    fn forgettable(&self, now_ms: u64, forget_ms: u64) -> bool {
        !self.locked(now_ms) && now_ms.saturating_sub(self.last_attempt_ms) >= forget_ms
    }
}

/// A bucket value, or empty if its length is not a whole number of records. Such a value can only
/// come from a bug or a foreign writer; the next write replaces it. Failing closed instead would
/// refuse every user in the bucket for as long as shared data lives (it outlives VM reloads).
/// The index of `user`'s record in a bucket value. The hot path of `reserve`, written as a plain
/// loop so that it stays cheap even in unoptimised test builds.
fn position(value: &[u8], user: &[u8; 16]) -> Option<usize> {
    let mut rest = value;
    let mut index = 0usize;
    while rest.len() >= RECORD_LEN {
        if rest.starts_with(user) {
            return Some(index);
        }
        rest = rest.get(RECORD_LEN..)?;
        index = index.saturating_add(1);
    }
    None
}

/// `value` with record `index` replaced by `record`.
fn replace(value: &[u8], index: usize, record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for (i, chunk) in value.chunks_exact(RECORD_LEN).enumerate() {
        if i == index {
            record.push_to(&mut out);
        } else {
            out.extend_from_slice(chunk);
        }
    }
    out
}

/// `value` without record `index`.
fn without(value: &[u8], index: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for (i, chunk) in value.chunks_exact(RECORD_LEN).enumerate() {
        if i != index {
            out.extend_from_slice(chunk);
        }
    }
    out
}

/// `value` with a new user's record added, making room if the bucket is full (module docs).
fn insert(value: &[u8], record: Record, capacity: usize, now_ms: u64, forget_ms: u64) -> Vec<u8> {
    if value.len() / RECORD_LEN < capacity {
        let mut out = Vec::with_capacity(value.len().saturating_add(RECORD_LEN));
        out.extend_from_slice(value);
        record.push_to(&mut out);
        return out;
    }
    let mut records: Vec<Record> = value
        .chunks_exact(RECORD_LEN)
        .filter_map(Record::decode)
        .filter(|r| !r.forgettable(now_ms, forget_ms))
        .collect();
    while records.len() >= capacity {
        let oldest = records
            .iter()
            .min_by_key(|r| (r.locked(now_ms), r.last_attempt_ms))
            .map(|r| r.user);
        match oldest {
            Some(user) => records.retain(|r| r.user != user),
            None => break,
        }
    }
    let mut out = Vec::with_capacity(records.len().saturating_add(1).saturating_mul(RECORD_LEN));
    for r in records.iter().chain(std::iter::once(&record)) {
        r.push_to(&mut out);
    }
    out
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whole seconds, rounded up, at least 1 (a `Retry-After` of 0 would invite an immediate retry).
fn seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::store::MemoryStore;
    use crate::state::table::bucket_index;

    const NOW: u64 = 1_800_000_000_000;
    const GRANTED: Reservation = Reservation::Granted;

    fn locked(retry_after_seconds: u64) -> Reservation {
        Reservation::Locked {
            retry_after_seconds,
        }
    }

    fn settings(buckets: usize, max_users: usize) -> ThrottleSettings {
        ThrottleSettings {
            max_failures: 5,
            base_lock: Duration::from_secs(60),
            max_lock: Duration::from_secs(3600),
            forget_after: Duration::from_secs(24 * 3600),
            buckets,
            max_users,
        }
    }

    fn setup(buckets: usize, max_users: usize) -> (MemoryStore, ThrottleSettings) {
        let store = MemoryStore::new();
        let s = settings(buckets, max_users);
        initialize(&store, &s).unwrap();
        (store, s)
    }

    /// `n` reservations at `now`, all granted.
    fn grant(store: &MemoryStore, s: &ThrottleSettings, user: &str, n: u32, now: u64) {
        for i in 0..n {
            assert_eq!(
                reserve(store, s, user, now),
                Ok(GRANTED),
                "attempt {}",
                i + 1
            );
        }
    }

    /// Distinct user names that hash into bucket `bucket` of `buckets`.
    fn users_in(bucket: usize, buckets: usize) -> impl Iterator<Item = String> {
        (0..)
            .map(|n| format!("user-{n}"))
            .filter(move |u| bucket_index(&user_id_hash(u), buckets) == bucket)
    }

    #[test]
    fn initialize_creates_every_bucket() {
        let (store, s) = setup(16, 1000);
        assert_eq!(store.len(), 16);
        assert_eq!(store.get(&bucket_key(15)).unwrap().0, Some(vec![]));
        assert_eq!(bucket_key(15), "otp-filter/throttle/15");
        assert_eq!(count(&store, &s), Ok(0));
    }

    #[test]
    fn max_failures_attempts_are_granted_then_the_user_is_locked() {
        let (store, s) = setup(4, 100);
        grant(&store, &s, "alice", 5, NOW);
        assert_eq!(reserve(&store, &s, "alice", NOW), Ok(locked(60)));
        let writes = store.writes();
        assert_eq!(reserve(&store, &s, "alice", NOW + 1_000), Ok(locked(59)));
        assert_eq!(reserve(&store, &s, "alice", NOW + 59_001), Ok(locked(1)));
        assert_eq!(
            store.writes(),
            writes,
            "a locked user's attempts write nothing"
        );
        // Others are unaffected.
        assert_eq!(reserve(&store, &s, "bob", NOW), Ok(GRANTED));
        // The lock ends: a fresh count.
        grant(&store, &s, "alice", 5, NOW + 60_000);
        assert_eq!(reserve(&store, &s, "alice", NOW + 60_000), Ok(locked(120)));
    }

    #[test]
    fn locks_double_up_to_the_cap() {
        let (store, s) = setup(1, 10);
        let mut now = NOW;
        let mut seen = Vec::new();
        for _ in 0..9 {
            grant(&store, &s, "alice", 5, now);
            match reserve(&store, &s, "alice", now).unwrap() {
                Reservation::Locked {
                    retry_after_seconds,
                } => {
                    seen.push(retry_after_seconds);
                    now += retry_after_seconds * 1000;
                }
                GRANTED => panic!("sixth attempt granted"),
            }
        }
        assert_eq!(seen, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
    }

    #[test]
    fn lock_arithmetic_saturates() {
        let mut s = settings(1, 1);
        assert_eq!(s.lock_ms(u32::MAX), 3_600_000);
        s.max_lock = Duration::MAX;
        assert_eq!(s.lock_ms(70), u64::MAX);
        s.base_lock = Duration::from_millis(1);
        assert_eq!(s.lock_ms(3), 8);
        assert_eq!(seconds(0), 1);
        assert_eq!(seconds(1_001), 2);
        let store = MemoryStore::new();
        s.max_failures = 0;
        initialize(&store, &s).unwrap();
        assert_eq!(reserve(&store, &s, "a", u64::MAX - 1), Ok(locked(1)));
        // max_failures 0: every attempt locks; the lock's end saturates instead of overflowing.
        assert_eq!(reserve(&store, &s, "a", u64::MAX), Ok(locked(1)));
    }

    #[test]
    fn success_resets_the_budget_and_the_doubling() {
        let (store, s) = setup(4, 100);
        grant(&store, &s, "alice", 5, NOW);
        assert_eq!(reserve(&store, &s, "alice", NOW), Ok(locked(60)));
        grant(&store, &s, "alice", 1, NOW + 60_000);
        succeed(&store, &s, "alice", NOW + 60_000).unwrap();
        assert_eq!(count(&store, &s), Ok(0));
        grant(&store, &s, "alice", 5, NOW + 60_000);
        assert_eq!(
            reserve(&store, &s, "alice", NOW + 60_000),
            Ok(locked(60)),
            "back to the first lock"
        );
        // Success of an untracked user writes nothing.
        let writes = store.writes();
        succeed(&store, &s, "bob", NOW).unwrap();
        assert_eq!(store.writes(), writes);
    }

    #[test]
    fn idle_users_are_forgotten_with_their_doubling() {
        let (store, s) = setup(4, 100);
        let day = 24 * 3600 * 1000;
        grant(&store, &s, "alice", 5, NOW);
        assert_eq!(reserve(&store, &s, "alice", NOW), Ok(locked(60)));
        grant(&store, &s, "alice", 3, NOW + 60_000);
        // Not yet forgotten one ms before: two attempts left.
        let later = NOW + 60_000 + day - 1;
        grant(&store, &s, "alice", 2, later);
        assert_eq!(reserve(&store, &s, "alice", later), Ok(locked(120)));
        // A day after the last attempt (the lock has long ended): forgotten.
        let much_later = later + day;
        assert_eq!(sweep(&store, &s, much_later - 1), Ok(1));
        assert_eq!(sweep(&store, &s, much_later), Ok(0));
        grant(&store, &s, "alice", 5, much_later);
        assert_eq!(reserve(&store, &s, "alice", much_later), Ok(locked(60)));
        // Without a sweep, the stale record is treated as forgotten too.
        let again = much_later + 60_000 + day;
        grant(&store, &s, "alice", 5, again);
        assert_eq!(reserve(&store, &s, "alice", again), Ok(locked(60)));
    }

    #[test]
    fn a_locked_user_is_not_forgotten() {
        let mut s = settings(1, 10);
        s.forget_after = Duration::from_secs(1);
        let store = MemoryStore::new();
        initialize(&store, &s).unwrap();
        grant(&store, &s, "alice", 5, NOW);
        assert_eq!(reserve(&store, &s, "alice", NOW), Ok(locked(60)));
        assert_eq!(sweep(&store, &s, NOW + 30_000), Ok(1));
        assert_eq!(reserve(&store, &s, "alice", NOW + 30_000), Ok(locked(30)));
        assert_eq!(sweep(&store, &s, NOW + 60_000), Ok(0));
    }

    #[test]
    fn a_full_bucket_evicts_the_oldest_unlocked_user() {
        let (store, s) = setup(1, 3);
        grant(&store, &s, "a", 1, NOW + 1);
        grant(&store, &s, "b", 5, NOW + 2);
        assert_eq!(reserve(&store, &s, "b", NOW + 2), Ok(locked(60)));
        grant(&store, &s, "c", 2, NOW + 3);
        grant(&store, &s, "d", 1, NOW + 4); // evicts a, the oldest
        assert_eq!(count(&store, &s), Ok(3));
        grant(&store, &s, "e", 1, NOW + 5); // b is older but locked: c goes
        assert_eq!(reserve(&store, &s, "b", NOW + 5), Ok(locked(60)));
        grant(&store, &s, "c", 5, NOW + 6); // c starts over: it was evicted
        assert_eq!(reserve(&store, &s, "c", NOW + 6), Ok(locked(60))); // evicted d
        grant(&store, &s, "e", 4, NOW + 7);
        assert_eq!(reserve(&store, &s, "e", NOW + 7), Ok(locked(60)));
        // Everyone is locked: the oldest locked (b) goes.
        grant(&store, &s, "f", 1, NOW + 8);
        assert_eq!(count(&store, &s), Ok(3));
        grant(&store, &s, "b", 1, NOW + 8);
        assert_eq!(store.total_bytes(), 3 * RECORD_LEN);
    }

    #[test]
    fn a_full_bucket_first_drops_forgotten_users() {
        let mut s = settings(1, 3);
        s.forget_after = Duration::from_secs(10);
        let store = MemoryStore::new();
        initialize(&store, &s).unwrap();
        grant(&store, &s, "a", 1, NOW);
        grant(&store, &s, "b", 1, NOW + 5_000);
        grant(&store, &s, "c", 1, NOW + 10_000);
        grant(&store, &s, "d", 1, NOW + 15_000); // a and b are forgettable: both dropped
        assert_eq!(count(&store, &s), Ok(2));
    }

    #[test]
    fn attempts_from_two_workers_both_count() {
        let (store, s) = setup(4, 100);
        let s2 = s.clone();
        // Worker B reserves between worker A's read and write: A's write loses the CAS race and A
        // retries on B's value, so neither attempt is lost.
        store.before_next_set(move |other| {
            assert_eq!(reserve(other, &s2, "alice", NOW), Ok(GRANTED));
        });
        assert_eq!(reserve(&store, &s, "alice", NOW), Ok(GRANTED));
        // Plain lost races, retried.
        store.fail_next_sets(3);
        assert_eq!(reserve(&store, &s, "alice", NOW), Ok(GRANTED));
        grant(&store, &s, "alice", 2, NOW);
        assert_eq!(
            reserve(&store, &s, "alice", NOW),
            Ok(locked(60)),
            "5 counted"
        );
        // Running out of retries is an error, never a grant.
        let (store, s) = setup(4, 100);
        store.fail_next_sets(100);
        assert_eq!(
            reserve(&store, &s, "alice", NOW),
            Err(StoreError::Contention)
        );
    }

    #[test]
    fn count_and_sweep_see_every_bucket() {
        let (store, s) = setup(8, 100);
        for n in 0..20u64 {
            grant(&store, &s, &format!("u{n}"), 1, NOW + n * 1_000);
        }
        assert_eq!(count(&store, &s), Ok(20));
        let day = 24 * 3600 * 1000;
        assert_eq!(sweep(&store, &s, NOW + day + 9_000), Ok(10));
        assert_eq!(count(&store, &s), Ok(10));
        let writes = store.writes();
        assert_eq!(sweep(&store, &s, NOW + day + 9_000), Ok(10));
        assert_eq!(store.writes(), writes, "nothing to drop, nothing written");
    }

    #[test]
    fn same_bucket_users_are_kept_apart() {
        let (store, s) = setup(4, 100);
        let users: Vec<_> = users_in(2, 4).take(3).collect();
        grant(&store, &s, &users[0], 5, NOW);
        grant(&store, &s, &users[1], 3, NOW);
        assert_eq!(reserve(&store, &s, &users[0], NOW), Ok(locked(60)));
        grant(&store, &s, &users[1], 2, NOW);
        succeed(&store, &s, &users[2], NOW).unwrap();
        assert_eq!(reserve(&store, &s, &users[0], NOW), Ok(locked(60)));
        assert_eq!(count(&store, &s), Ok(2));
    }

    #[test]
    fn a_corrupt_bucket_is_reset() {
        let (store, s) = setup(1, 10);
        grant(&store, &s, "alice", 3, NOW);
        store.set(&bucket_key(0), &[1, 2, 3], None).unwrap();
        assert_eq!(count(&store, &s), Ok(0));
        grant(&store, &s, "alice", 5, NOW);
        assert_eq!(store.total_bytes(), RECORD_LEN);
        store.set(&bucket_key(0), &[1, 2, 3], None).unwrap();
        succeed(&store, &s, "alice", NOW).unwrap();
        assert_eq!(store.total_bytes(), 0);
        store.set(&bucket_key(0), &[1, 2, 3], None).unwrap();
        assert_eq!(sweep(&store, &s, NOW), Ok(0));
        assert_eq!(store.get(&bucket_key(0)).unwrap().0, Some(vec![]));
    }

    #[test]
    fn record_round_trips() {
        let r = Record {
            user: user_id_hash("alice"),
            failures: 3,
            lock_count: 2,
            locked_until_ms: NOW + 1,
            last_attempt_ms: NOW,
        };
        let mut out = Vec::new();
        r.push_to(&mut out);
        assert_eq!(out.len(), RECORD_LEN);
        assert_eq!(Record::decode(&out), Some(r));
        assert_eq!(Record::decode(&out[..39]), None);
    }

    /// 100,000 distinct users, 256 buckets of ceil(100,000 / 256) = 391 records: the store holds
    /// at most 100,000 × 40 bytes = 4,000,000 bytes (3.9 MiB) of values. Buckets fill unevenly, so
    /// the fullest ones evict and slightly fewer than 100,000 users are kept.
    #[test]
    fn capacity_100k_users_fit_in_4_mb() {
        let (store, s) = setup(256, 100_000);
        for n in 0..100_000u64 {
            let user = format!("user-{n}");
            assert_eq!(reserve(&store, &s, &user, NOW + n), Ok(GRANTED));
        }
        let users = count(&store, &s).unwrap();
        assert!(users <= 100_000, "{users}");
        assert!(users > 95_000, "{users}");
        let bytes = store.total_bytes();
        assert_eq!(bytes, users * RECORD_LEN);
        assert!(bytes <= 100_000 * RECORD_LEN, "{bytes}");
        assert_eq!(store.len(), 256);
    }
}

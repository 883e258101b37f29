//! The single-use ledger: a one-time password may be accepted once during its lifetime, across all
//! workers. Each accepted code leaves a record (its id and when it expires) in shared data until it
//! expires; a second use of the same code finds the record and is refused.
//!
//! Records live in `buckets` pre-created keys (see `shared_store` for why keys are never created
//! on the request path), picked by the id's hash, each holding at most
//! `ceil(max_entries / buckets)` records. A full bucket refuses new codes instead of evicting a
//! record that has not expired: eviction would let that code be replayed. Size `max_entries` with
//! headroom over the codes accepted per lifetime, since buckets fill unevenly.
//!
//! A bucket whose value is not a whole number of records (a bug, or a foreign writer in the same
//! `vm_id`) cannot say which codes were used. It is replaced by a *fence*: a record that refuses,
//! until it expires, every code that could have been minted before the corruption was found (any
//! code expiring no later than the fence). Later codes are accepted as usual. So a corrupt bucket
//! costs its users one fresh code, never a replay, and each fence is counted and logged.

use std::fmt;

use crate::state::store::{self as shared_store, SharedStore, StoreError, Update};
use crate::state::table::{digest16, Table};

/// 16-byte id and 8-byte big-endian expiry (ms since the epoch).
const RECORD_LEN: usize = 24;

#[derive(Clone, Debug)]
pub struct LedgerSettings {
    /// Number of bucket keys (0 is taken as 1).
    pub buckets: usize,
    /// Records across all buckets; each bucket holds `ceil(max_entries / buckets)`, at least 1.
    pub max_entries: usize,
    /// The longest a code minted now can stay valid (`otp.lifetime_seconds`): how long a fence
    /// must refuse codes after a corrupt bucket is found.
    pub longest_code_ms: u64,
}

impl LedgerSettings {
    fn table(&self) -> Table {
        Table::new(PREFIX, RECORD_LEN, self.buckets, self.max_entries)
    }
}

const PREFIX: &str = "otp-filter/used";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumed {
    /// The first use: the code is now marked used.
    First,
    /// The code was used before and has not expired, or a fence says it may have been: refuse it.
    AlreadyUsed,
    /// The code's bucket was corrupt and is now fenced: refuse the code, and count and log this.
    FencedCorrupt,
}

/// What one sweep found: the records left, and how many corrupt buckets it fenced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub records: usize,
    pub fenced: usize,
}

/// The id a fence record carries. Real ids are SHA-256 prefixes, so none is all ones but with
/// probability 2^-128.
const FENCE: [u8; 16] = [0xff; 16];

fn fence(settings: &LedgerSettings, now_ms: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(RECORD_LEN);
    push(
        &mut value,
        &FENCE,
        now_ms.saturating_add(settings.longest_code_ms),
    );
    value
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerError {
    /// The code's bucket is full of unexpired records; the code must be refused.
    Full,
    Store(StoreError),
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::Full => f.write_str("single-use ledger bucket full"),
            LedgerError::Store(e) => e.fmt(f),
        }
    }
}

/// The identity of one code: the first 16 bytes of SHA-256 over the key id, user and counter,
/// each length-prefixed so that ("ab", "c") and ("a", "bc") differ.
pub fn code_id(key_id: &str, user: &str, counter: u64) -> [u8; 16] {
    digest16(|hasher| {
        for part in [key_id.as_bytes(), user.as_bytes()] {
            hasher.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
            hasher.update(part);
        }
        hasher.update(&counter.to_be_bytes());
    })
}

pub fn bucket_key(index: usize) -> String {
    format!("{PREFIX}/{index}")
}

/// Creates every bucket, empty, unless it exists. Called at VM start.
pub fn initialize(store: &dyn SharedStore, settings: &LedgerSettings) -> Result<(), StoreError> {
    settings.table().initialize(store)
}

/// Marks `id` used until `expires_at_ms` (the end of the code's acceptance window). Expired records
/// in the bucket are dropped on the way. An unexpired record for `id` → `AlreadyUsed`, with
/// nothing written. A bucket still at capacity after dropping the expired → `Err(Full)`: fail
/// closed, never evict an unexpired record. An `expires_at_ms` at or before `now_ms` leaves no
/// lasting mark: the caller must not accept an expired code in the first place.
pub fn consume(
    store: &dyn SharedStore,
    settings: &LedgerSettings,
    id: [u8; 16],
    expires_at_ms: u64,
    now_ms: u64,
) -> Result<Consumed, LedgerError> {
    let table = settings.table();
    let capacity = table.capacity();
    let answer = shared_store::update(store, &table.key_of(&id), |current| {
        if table.is_corrupt(current) {
            return Update::Write(fence(settings, now_ms), Ok(Consumed::FencedCorrupt));
        }
        let records = records(table.valid(current));
        let mut live = 0usize;
        for (other, expiry) in records.clone() {
            if expiry <= now_ms {
                continue;
            }
            if other == FENCE {
                if expires_at_ms <= expiry {
                    return Update::Keep(Ok(Consumed::AlreadyUsed));
                }
                continue; // a fence takes no room from codes
            }
            if other == id {
                return Update::Keep(Ok(Consumed::AlreadyUsed));
            }
            live = live.saturating_add(1);
        }
        if live >= capacity {
            return Update::Keep(Err(LedgerError::Full));
        }
        let mut value = Vec::with_capacity(live.saturating_add(1).saturating_mul(RECORD_LEN));
        for (other, expiry) in records.filter(|(_, expiry)| *expiry > now_ms) {
            push(&mut value, &other, expiry);
        }
        push(&mut value, &id, expires_at_ms);
        Update::Write(value, Ok(Consumed::First))
    });
    answer.map_err(LedgerError::Store)?
}

/// Drops expired records in every bucket (on a timer) and fences corrupt ones.
pub fn sweep(
    store: &dyn SharedStore,
    settings: &LedgerSettings,
    now_ms: u64,
) -> Result<Swept, StoreError> {
    let table = settings.table();
    let buckets = table.update_each(store, |current| {
        let Some(value) = current else {
            return Update::Keep((0, false)); // never create keys here
        };
        if table.is_corrupt(current) {
            return Update::Write(fence(settings, now_ms), (1, true));
        }
        let mut kept = Vec::with_capacity(value.len());
        for (id, expiry) in records(value).filter(|(_, expiry)| *expiry > now_ms) {
            push(&mut kept, &id, expiry);
        }
        let live = kept.len() / RECORD_LEN;
        // Same length: nothing expired.
        if kept.len() == value.len() {
            Update::Keep((live, false))
        } else {
            Update::Write(kept, (live, false))
        }
    })?;
    Ok(Swept {
        records: buckets.iter().map(|(kept, _)| kept).sum(),
        fenced: buckets.iter().filter(|(_, fenced)| *fenced).count(),
    })
}

/// Records currently stored, expired or not (for a gauge).
pub fn count(store: &dyn SharedStore, settings: &LedgerSettings) -> Result<usize, StoreError> {
    settings.table().count(store)
}

/// The records of a whole-record bucket value (`consume` and `sweep` fence a corrupt one first).
fn records(value: &[u8]) -> impl Iterator<Item = ([u8; 16], u64)> + Clone + '_ {
    value.chunks_exact(RECORD_LEN).filter_map(|record| {
        let (id, rest) = record.split_first_chunk::<16>()?;
        let expiry = rest.first_chunk::<8>()?;
        Some((*id, u64::from_be_bytes(*expiry)))
    })
}

fn push(value: &mut Vec<u8>, id: &[u8; 16], expires_at_ms: u64) {
    value.extend_from_slice(id);
    value.extend_from_slice(&expires_at_ms.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::store::MemoryStore;
    use crate::state::table::bucket_index;

    const NOW: u64 = 1_800_000_000_000;

    fn settings(buckets: usize, max_entries: usize) -> LedgerSettings {
        LedgerSettings {
            buckets,
            max_entries,
            longest_code_ms: 300_000,
        }
    }

    /// Ids that land in bucket `bucket` of `buckets`.
    fn ids_in(bucket: usize, buckets: usize) -> impl Iterator<Item = [u8; 16]> {
        (0u64..)
            .map(|n| code_id("k1", "demo-user", n))
            .filter(move |id| bucket_index(id, buckets) == bucket)
    }

    #[test]
    fn code_id_separates_its_parts() {
        assert_ne!(code_id("ab", "c", 1), code_id("a", "bc", 1));
        assert_ne!(code_id("k", "u", 1), code_id("k", "u", 2));
        assert_ne!(code_id("k1", "u", 1), code_id("k2", "u", 1));
        assert_eq!(code_id("k", "u", 1), code_id("k", "u", 1));
    }

    #[test]
    fn initialize_creates_every_bucket_empty_once() {
        let store = MemoryStore::new();
        let s = settings(4, 100);
        initialize(&store, &s).unwrap();
        assert_eq!(store.len(), 4);
        assert_eq!(store.get(&bucket_key(3)).unwrap().0, Some(vec![]));
        consume(&store, &s, code_id("k", "u", 1), NOW + 1, NOW).unwrap();
        initialize(&store, &s).unwrap(); // another VM starting later keeps the records
        assert_eq!(count(&store, &s), Ok(1));
        assert_eq!(bucket_key(3), "otp-filter/used/3");
    }

    #[test]
    fn a_code_is_accepted_once_until_it_expires() {
        let store = MemoryStore::new();
        let s = settings(8, 100);
        initialize(&store, &s).unwrap();
        let id = code_id("k1", "demo-user", 42);
        assert_eq!(
            consume(&store, &s, id, NOW + 60_000, NOW),
            Ok(Consumed::First)
        );
        let writes = store.writes();
        assert_eq!(
            consume(&store, &s, id, NOW + 60_000, NOW + 1),
            Ok(Consumed::AlreadyUsed)
        );
        assert_eq!(
            consume(&store, &s, id, NOW + 60_000, NOW + 59_999),
            Ok(Consumed::AlreadyUsed)
        );
        assert_eq!(store.writes(), writes, "a refusal writes nothing");
        // Expired: the record goes and the id may be marked again.
        assert_eq!(
            consume(&store, &s, id, NOW + 120_000, NOW + 60_000),
            Ok(Consumed::First)
        );
        assert_eq!(count(&store, &s), Ok(1), "the expired record was replaced");
    }

    #[test]
    fn different_ids_in_one_bucket_do_not_collide() {
        let store = MemoryStore::new();
        let s = settings(2, 100);
        initialize(&store, &s).unwrap();
        let ids: Vec<_> = ids_in(1, 2).take(5).collect();
        for id in &ids {
            assert_eq!(
                consume(&store, &s, *id, NOW + 1_000, NOW),
                Ok(Consumed::First)
            );
        }
        for id in &ids {
            assert_eq!(
                consume(&store, &s, *id, NOW + 1_000, NOW),
                Ok(Consumed::AlreadyUsed)
            );
        }
        assert_eq!(store.get(&bucket_key(0)).unwrap().0, Some(vec![]));
        assert_eq!(count(&store, &s), Ok(5));
    }

    #[test]
    fn a_full_bucket_fails_closed_until_records_expire() {
        let store = MemoryStore::new();
        let s = settings(2, 5); // 3 per bucket
        initialize(&store, &s).unwrap();
        let ids: Vec<_> = ids_in(0, 2).take(5).collect();
        for (n, id) in ids.iter().take(3).enumerate() {
            let expiry = NOW + 1_000 * (n as u64 + 1);
            assert_eq!(consume(&store, &s, *id, expiry, NOW), Ok(Consumed::First));
        }
        assert_eq!(
            consume(&store, &s, ids[3], NOW + 10_000, NOW),
            Err(LedgerError::Full)
        );
        // A used code is still refused as used, not as full.
        assert_eq!(
            consume(&store, &s, ids[0], NOW + 10_000, NOW),
            Ok(Consumed::AlreadyUsed)
        );
        // The other bucket is unaffected.
        let other = ids_in(1, 2).next().unwrap();
        assert_eq!(
            consume(&store, &s, other, NOW + 1, NOW),
            Ok(Consumed::First)
        );
        // Once the first record expires there is room again, and only it went.
        assert_eq!(
            consume(&store, &s, ids[3], NOW + 10_000, NOW + 1_000),
            Ok(Consumed::First)
        );
        assert_eq!(
            consume(&store, &s, ids[1], NOW + 10_000, NOW + 1_000),
            Ok(Consumed::AlreadyUsed)
        );
        assert_eq!(
            consume(&store, &s, ids[4], NOW + 10_000, NOW + 1_000),
            Err(LedgerError::Full)
        );
    }

    #[test]
    fn sweep_drops_expired_records_and_count_reports_what_is_stored() {
        let store = MemoryStore::new();
        let s = settings(4, 100);
        initialize(&store, &s).unwrap();
        for n in 0..10u64 {
            let id = code_id("k", "u", n);
            consume(&store, &s, id, NOW + 1_000 * (n + 1), NOW).unwrap();
        }
        let left = |records| Ok(Swept { records, fenced: 0 });
        assert_eq!(count(&store, &s), Ok(10));
        assert_eq!(sweep(&store, &s, NOW), left(10));
        let writes = store.writes();
        assert_eq!(sweep(&store, &s, NOW + 4_000), left(6));
        assert_eq!(count(&store, &s), Ok(6));
        assert!(store.writes() > writes);
        let writes = store.writes();
        assert_eq!(sweep(&store, &s, NOW + 4_000), left(6));
        assert_eq!(store.writes(), writes, "nothing to drop, nothing written");
        assert_eq!(sweep(&store, &s, NOW + 10_000), left(0));
        assert_eq!(store.total_bytes(), 0);
        assert_eq!(store.len(), 4, "buckets stay");
    }

    #[test]
    fn sweep_and_count_never_create_buckets() {
        let store = MemoryStore::new();
        let s = settings(4, 100);
        assert_eq!(sweep(&store, &s, NOW), Ok(Swept::default()));
        assert_eq!(count(&store, &s), Ok(0));
        assert!(store.is_empty());
    }

    #[test]
    fn a_corrupt_bucket_is_fenced_never_replayed() {
        let store = MemoryStore::new();
        let s = settings(1, 100);
        initialize(&store, &s).unwrap();
        let id = code_id("k", "u", 1);
        let expiry = NOW + 60_000;
        consume(&store, &s, id, expiry, NOW).unwrap();
        let (value, cas) = store.get(&bucket_key(0)).unwrap();
        let mut value = value.unwrap();
        value.push(0); // 25 bytes: the used code's record can no longer be trusted
        store.set(&bucket_key(0), &value, cas).unwrap();
        assert_eq!(count(&store, &s), Ok(0));
        // The used code is refused, and so is every code that may predate the corruption.
        assert_eq!(
            consume(&store, &s, id, expiry, NOW + 1),
            Ok(Consumed::FencedCorrupt)
        );
        assert_eq!(
            consume(&store, &s, id, expiry, NOW + 2),
            Ok(Consumed::AlreadyUsed)
        );
        let other = code_id("k", "u", 2);
        assert_eq!(
            consume(&store, &s, other, NOW + 1 + 300_000, NOW + 2),
            Ok(Consumed::AlreadyUsed),
            "a code expiring at the fence may have been minted before it"
        );
        // A code minted after the fence was set expires after it, and is accepted once.
        let later = code_id("k", "u", 3);
        assert_eq!(
            consume(&store, &s, later, NOW + 2 + 300_000, NOW + 2),
            Ok(Consumed::First)
        );
        assert_eq!(
            consume(&store, &s, later, NOW + 2 + 300_000, NOW + 3),
            Ok(Consumed::AlreadyUsed)
        );
        // The sweep fences a corrupt bucket too, and says so.
        store.set(&bucket_key(0), b"junk", None).unwrap();
        assert_eq!(
            sweep(&store, &s, NOW),
            Ok(Swept {
                records: 1,
                fenced: 1
            })
        );
        assert_eq!(
            consume(&store, &s, id, expiry, NOW + 1),
            Ok(Consumed::AlreadyUsed)
        );
        // Once the fence expires, the sweep drops it.
        assert_eq!(sweep(&store, &s, NOW + 300_001), Ok(Swept::default()));
        assert_eq!(store.get(&bucket_key(0)).unwrap().0, Some(vec![]));
    }

    #[test]
    fn store_failures_surface() {
        let store = MemoryStore::new();
        let s = settings(1, 100);
        initialize(&store, &s).unwrap();
        store.fail_next_sets(100);
        assert_eq!(
            consume(&store, &s, code_id("k", "u", 1), NOW + 1, NOW),
            Err(LedgerError::Store(StoreError::Contention))
        );
    }
}

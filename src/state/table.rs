//! One bucketed compare-and-swap table in Envoy's shared data, the shape both the single-use
//! ledger and the throttle have: fixed-size records whose first 16 bytes are a hashed identity,
//! spread over `buckets` keys (`<prefix>/<index>`) that exist before the first request (see
//! `store` for why keys are never created on the request path), each holding at most
//! `capacity` records.
//!
//! A bucket value that is not a whole number of records can only come from a bug or a foreign
//! writer in the same `vm_id`. `valid` reads it as empty; what that means for the records it may
//! have held is each record type's decision (the ledger fences it, the throttle resets it).

use crate::state::store::{self, SharedStore, StoreError, Update};

pub struct Table {
    prefix: &'static str,
    record_len: usize,
    buckets: usize,
    capacity: usize,
}

impl Table {
    /// `buckets` keys (0 is taken as 1) for `max_records` records in all, so each bucket holds
    /// `ceil(max_records / buckets)`, at least 1.
    pub fn new(
        prefix: &'static str,
        record_len: usize,
        buckets: usize,
        max_records: usize,
    ) -> Self {
        let buckets = buckets.max(1);
        Table {
            prefix,
            record_len,
            buckets,
            capacity: max_records.div_ceil(buckets).max(1),
        }
    }

    /// Records one bucket may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn key(&self, index: usize) -> String {
        format!("{}/{index}", self.prefix)
    }

    /// The key of the bucket that holds `id`'s record.
    pub fn key_of(&self, id: &[u8; 16]) -> String {
        self.key(bucket_index(id, self.buckets))
    }

    /// Creates every bucket, empty, unless it exists. Called at VM start.
    pub fn initialize(&self, store: &dyn SharedStore) -> Result<(), StoreError> {
        for index in 0..self.buckets {
            store::ensure(store, &self.key(index), &[])?;
        }
        Ok(())
    }

    /// A value that is not a whole number of records (see the module docs).
    pub fn is_corrupt(&self, value: Option<&[u8]>) -> bool {
        value.is_some_and(|v| v.len() % self.record_len != 0)
    }

    /// The value's records as bytes; a corrupt value reads as none.
    pub fn valid<'v>(&self, value: Option<&'v [u8]>) -> &'v [u8] {
        value
            .filter(|v| v.len() % self.record_len == 0)
            .unwrap_or_default()
    }

    /// Runs `f` over every bucket in turn (read-modify-write with CAS, as `store::update`) and
    /// returns its answers, for sweeps and counts.
    pub fn update_each<T>(
        &self,
        store: &dyn SharedStore,
        mut f: impl FnMut(Option<&[u8]>) -> Update<T>,
    ) -> Result<Vec<T>, StoreError> {
        (0..self.buckets)
            .map(|index| store::update(store, &self.key(index), &mut f))
            .collect()
    }

    /// Records stored in all buckets, expired or not (for a gauge).
    pub fn count(&self, store: &dyn SharedStore) -> Result<usize, StoreError> {
        let counts = self.update_each(store, |current| {
            Update::Keep(self.valid(current).len() / self.record_len)
        })?;
        Ok(counts.into_iter().sum())
    }
}

/// The first 16 bytes of SHA-256 over what `feed` writes: the identity records carry.
pub fn digest16(feed: impl FnOnce(&mut ring::digest::Context)) -> [u8; 16] {
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    feed(&mut hasher);
    let digest = hasher.finish();
    let mut id = [0u8; 16];
    for (out, byte) in id.iter_mut().zip(digest.as_ref()) {
        *out = *byte;
    }
    id
}

/// The bucket for a hashed identity: its first 8 bytes modulo the bucket count (at least 1). The
/// identities are SHA-256 output, so the buckets fill evenly.
pub fn bucket_index(id: &[u8; 16], buckets: usize) -> usize {
    let [a, b, c, d, e, f, g, h, ..] = *id;
    let n = u64::from_be_bytes([a, b, c, d, e, f, g, h]);
    let buckets = u64::try_from(buckets.max(1)).unwrap_or(u64::MAX);
    usize::try_from(n.checked_rem(buckets).unwrap_or(0)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::store::MemoryStore;

    #[test]
    fn bucket_index_stays_in_range() {
        let id = [0xff; 16];
        assert_eq!(bucket_index(&id, 0), 0);
        assert_eq!(bucket_index(&id, 1), 0);
        assert!(bucket_index(&id, 7) < 7);
        let mut id = [0; 16];
        id[7] = 9;
        assert_eq!(bucket_index(&id, 4), 1);
    }

    #[test]
    fn buckets_and_capacity() {
        let t = Table::new("t", 4, 0, 0);
        assert_eq!((t.key(0), t.capacity()), ("t/0".to_string(), 1));
        let t = Table::new("t", 4, 3, 10);
        assert_eq!(t.capacity(), 4);
        let store = MemoryStore::new();
        t.initialize(&store).unwrap();
        assert_eq!(store.len(), 3);
        store.set("t/1", &[1; 8], None).unwrap();
        store.set("t/2", &[1; 5], None).unwrap();
        assert_eq!(t.count(&store), Ok(2), "the corrupt bucket counts as empty");
        assert!(t.is_corrupt(Some(&[1; 5])) && !t.is_corrupt(None) && !t.is_corrupt(Some(&[])));
    }
}

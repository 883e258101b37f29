//! State shared by every worker: Envoy runs one VM per worker thread, and the VMs share a key-value
//! store ("shared data") whose only atomic operation is compare-and-swap on an existing key.
//!
//! Envoy's `set` fails with `CasMismatch` when the stored CAS differs from the one given, but a key
//! that does not exist yet is always created, whatever the CAS, and a CAS of 0 (or none) means
//! "unconditional". "Create if absent" is therefore not atomic: two VMs can both see a key missing
//! and both create it, the second overwriting the first. So state lives in a fixed number of bucket
//! keys that the adapter creates once at VM start (`ensure`), and requests only ever update
//! existing buckets with CAS (`update`), which is atomic.
//!
//! The trait keeps the logic host-free: the adapter implements it on proxy-wasm's shared data,
//! tests use `MemoryStore`, which copies Envoy's semantics.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The key changed since it was read.
    CasMismatch,
    /// The host says the key does not exist (a `get` should report that as `Ok((None, None))`).
    NotFound,
    /// Any other host failure.
    Host,
    /// Other workers kept changing the key: `MAX_RETRIES` retries were all lost.
    Contention,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreError::CasMismatch => "shared data changed concurrently (CAS mismatch)",
            StoreError::NotFound => "shared data key not found",
            StoreError::Host => "shared data call failed",
            StoreError::Contention => "shared data too contended (retries exhausted)",
        })
    }
}

/// The host's shared key-value store, as Envoy defines it (see the module docs). The adapter maps
/// the host's `CasMismatch` status to `StoreError::CasMismatch` and a `get` of a missing key to
/// `Ok((None, None))`.
pub trait SharedStore {
    /// Value and its CAS token; `Ok((None, None))` when the key does not exist.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Replaces the value if `cas` matches the stored one (`None`: unconditionally). A missing key
    /// is created whatever `cas` says.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// What an `update` step decided: leave the value as it is, or write a new one. Both carry the
/// answer for the caller.
#[derive(Debug)]
pub enum Update<T> {
    Keep(T),
    Write(Vec<u8>, T),
}

/// Retries after a lost CAS race. Each retry means another worker wrote the key in between, i.e.
/// made progress, so running out takes a storm of writes to one bucket; then the caller fails
/// closed rather than spin on a request thread.
pub const MAX_RETRIES: u32 = 16;

/// Read-modify-write with CAS: `f` gets the current value (`None` if absent) and decides; a write
/// that loses a race is retried from a fresh read, up to `MAX_RETRIES` times after the first
/// attempt, then `Err(Contention)`. `f` may run several times; only the last answer counts.
///
/// A missing key is created with no CAS, which is not atomic (see the module docs). Normal
/// operation never hits that because buckets are created at VM start.
pub fn update<T>(
    store: &dyn SharedStore,
    key: &str,
    mut f: impl FnMut(Option<&[u8]>) -> Update<T>,
) -> Result<T, StoreError> {
    for _ in 0..=MAX_RETRIES {
        let (value, cas) = match store.get(key) {
            Ok(found) => found,
            Err(StoreError::NotFound) => (None, None),
            Err(e) => return Err(e),
        };
        match f(value.as_deref()) {
            Update::Keep(answer) => return Ok(answer),
            Update::Write(bytes, answer) => {
                // A value without a CAS token could only be written unconditionally, which would
                // silently undo other workers' updates. Envoy never does that; refuse if a host did.
                if value.is_some() && matches!(cas, None | Some(0)) {
                    return Err(StoreError::Host);
                }
                match store.set(key, &bytes, cas) {
                    Ok(()) => return Ok(answer),
                    Err(StoreError::CasMismatch) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(StoreError::Contention)
}

/// Creates `key` with `empty` if it does not exist; `Ok(true)` if it created it. Called at VM
/// start, before the VM serves requests. Not atomic: if two VMs start at once, both may write
/// `empty`, which is harmless as long as neither has served a request on the key yet.
pub fn ensure(store: &dyn SharedStore, key: &str, empty: &[u8]) -> Result<bool, StoreError> {
    match store.get(key) {
        Ok((Some(_), _)) => Ok(false),
        Ok((None, _)) | Err(StoreError::NotFound) => store.set(key, empty, None).map(|()| true),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
pub use memory::MemoryStore;

#[cfg(test)]
mod memory {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::{SharedStore, StoreError};

    type Hook = Box<dyn FnOnce(&MemoryStore)>;

    /// An in-memory store with Envoy's semantics, for tests of this and other modules.
    #[derive(Default)]
    pub struct MemoryStore {
        entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        last_cas: Cell<u32>,
        failing_sets: Cell<u32>,
        before_next_set: RefCell<Option<Hook>>,
        writes: Cell<usize>,
    }

    impl MemoryStore {
        pub fn new() -> Self {
            Self::default()
        }

        /// The next `n` calls to `set` fail with `CasMismatch` and write nothing.
        pub fn fail_next_sets(&self, n: u32) {
            self.failing_sets.set(n);
        }

        /// Runs `hook` at the start of the next `set`, between the caller's read and its write:
        /// another worker getting in first. The hook's own sets do not trigger it again.
        pub fn before_next_set(&self, hook: impl FnOnce(&MemoryStore) + 'static) {
            *self.before_next_set.borrow_mut() = Some(Box::new(hook));
        }

        /// Successful `set` calls so far.
        pub fn writes(&self) -> usize {
            self.writes.get()
        }

        /// Sum of the stored values' lengths.
        pub fn total_bytes(&self) -> usize {
            self.entries.borrow().values().map(|(v, _)| v.len()).sum()
        }

        pub fn len(&self) -> usize {
            self.entries.borrow().len()
        }

        pub fn is_empty(&self) -> bool {
            self.entries.borrow().is_empty()
        }

        /// Envoy's CAS counter: increasing, never 0.
        fn next_cas(&self) -> u32 {
            let next = self.last_cas.get().wrapping_add(1).max(1);
            self.last_cas.set(next);
            next
        }
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            Ok(match self.entries.borrow().get(key) {
                Some((value, cas)) => (Some(value.clone()), Some(*cas)),
                None => (None, None),
            })
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let hook = self.before_next_set.borrow_mut().take();
            if let Some(hook) = hook {
                hook(self);
            }
            if self.failing_sets.get() > 0 {
                self.failing_sets.set(self.failing_sets.get() - 1);
                return Err(StoreError::CasMismatch);
            }
            let cas_now = self.next_cas();
            let mut entries = self.entries.borrow_mut();
            match entries.get_mut(key) {
                Some((stored, stored_cas)) => {
                    if matches!(cas, Some(want) if want != 0 && want != *stored_cas) {
                        return Err(StoreError::CasMismatch);
                    }
                    *stored = value.to_vec();
                    *stored_cas = cas_now;
                }
                // Envoy creates a missing key whatever the CAS.
                None => {
                    entries.insert(key.to_string(), (value.to_vec(), cas_now));
                }
            }
            self.writes.set(self.writes.get() + 1);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(byte: u8) -> impl FnMut(Option<&[u8]>) -> Update<usize> {
        move |current| {
            let mut value = current.unwrap_or_default().to_vec();
            value.push(byte);
            let len = value.len();
            Update::Write(value, len)
        }
    }

    #[test]
    fn memory_store_has_envoy_semantics() {
        let store = MemoryStore::new();
        assert_eq!(store.get("k"), Ok((None, None)));
        store.set("k", b"a", Some(12345)).unwrap(); // missing key: created whatever the CAS
        let (value, cas) = store.get("k").unwrap();
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        let cas = cas.unwrap();
        assert_ne!(cas, 0);
        assert_eq!(
            store.set("k", b"b", Some(cas + 1)),
            Err(StoreError::CasMismatch)
        );
        store.set("k", b"b", Some(cas)).unwrap();
        assert_eq!(
            store.set("k", b"c", Some(cas)),
            Err(StoreError::CasMismatch)
        );
        store.set("k", b"c", None).unwrap(); // no CAS: unconditional
        store.set("k", b"d", Some(0)).unwrap(); // CAS 0: unconditional
        assert_eq!(store.get("k").unwrap().0.as_deref(), Some(&b"d"[..]));
        assert_eq!(store.total_bytes(), 1);
    }

    #[test]
    fn update_reads_decides_and_writes() {
        let store = MemoryStore::new();
        assert_eq!(update(&store, "k", append(1)), Ok(1), "missing key created");
        assert_eq!(update(&store, "k", append(2)), Ok(2));
        let writes = store.writes();
        let seen = update(&store, "k", |v| Update::Keep(v.map(<[u8]>::to_vec)));
        assert_eq!(seen, Ok(Some(vec![1, 2])));
        assert_eq!(store.writes(), writes, "Keep writes nothing");
    }

    #[test]
    fn update_retries_lost_races_then_gives_up() {
        let store = MemoryStore::new();
        ensure(&store, "k", b"").unwrap();
        let mut calls = 0;
        store.fail_next_sets(MAX_RETRIES);
        let answer = update(&store, "k", |v| {
            calls += 1;
            append(7)(v)
        });
        assert_eq!(answer, Ok(1), "the last of 1 + 16 attempts wins");
        assert_eq!(calls, 17);

        store.fail_next_sets(MAX_RETRIES + 1);
        assert_eq!(update(&store, "k", append(8)), Err(StoreError::Contention));
        assert_eq!(store.get("k").unwrap().0, Some(vec![7]), "nothing written");
    }

    #[test]
    fn update_rereads_after_a_real_race() {
        let store = MemoryStore::new();
        ensure(&store, "k", b"").unwrap();
        // Another worker appends between our read and our write: our write loses, we re-read
        // and append to its value, so neither update is lost.
        store.before_next_set(|other| {
            update(other, "k", append(1)).unwrap();
        });
        assert_eq!(update(&store, "k", append(2)), Ok(2));
        assert_eq!(store.get("k").unwrap().0, Some(vec![1, 2]));
    }

    #[test]
    fn update_refuses_to_overwrite_a_value_without_cas() {
        struct NoCas;
        impl SharedStore for NoCas {
            fn get(&self, _: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
                Ok((Some(vec![1]), None))
            }
            fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), StoreError> {
                unreachable!("must not write")
            }
        }
        assert_eq!(update(&NoCas, "k", append(2)), Err(StoreError::Host));
    }

    #[test]
    fn ensure_creates_once() {
        let store = MemoryStore::new();
        assert_eq!(ensure(&store, "k", b"x"), Ok(true));
        update(&store, "k", append(1)).unwrap();
        assert_eq!(ensure(&store, "k", b"x"), Ok(false));
        assert_eq!(
            store.get("k").unwrap().0,
            Some(vec![b'x', 1]),
            "kept as it was"
        );
    }
}

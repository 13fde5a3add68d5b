//! A [`CounterStore`] in the memory of one process, for an adapter whose workers are threads of
//! one process (the Envoy dynamic module): the rate limiter, the webhook replay table and the
//! limiter's seed run on it exactly as on proxy-wasm shared data, with the same semantics (a
//! value and a CAS token per key, a stale token refused, a set on a missing key accepted
//! whatever its token, no delete, no expiry).
//!
//! Sharded by key: a `get` or `set` holds one shard's lock for one hash-map operation and one
//! copy of a value (a few dozen bytes), so workers on different keys rarely meet. The keys the
//! core writes are already bounded (the limiter's fixed tables of `max_tracked_keys`, the replay
//! table's fixed slots); [`ProcessStore::new`]'s `max_keys` bounds them again, and a new key
//! past it is refused with [`StoreError::Unavailable`], which fails the request closed.

use crate::support::shared_store::{next_cas_token, CounterStore, StoreError};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

const SHARDS: usize = 64;

#[derive(Default)]
struct Shard {
    values: HashMap<String, (Vec<u8>, u32)>,
    last_token: u32,
}

impl Shard {
    /// Tokens come from a counter, as the host's do; 0 and `INSERT_IF_ABSENT` are never
    /// handed out.
    fn next_token(&mut self) -> u32 {
        self.last_token = next_cas_token(self.last_token);
        self.last_token
    }
}

pub struct ProcessStore {
    shards: Vec<Mutex<Shard>>,
    /// Placement of keys on shards (a fixed hasher: placement is not a secret, the limiter
    /// hashes client keys with its own seed before they reach the store).
    hasher: std::hash::BuildHasherDefault<siphasher::sip::SipHasher13>,
    keys: AtomicUsize,
    max_keys: usize,
}

impl ProcessStore {
    pub fn new(max_keys: usize) -> ProcessStore {
        ProcessStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            keys: AtomicUsize::new(0),
            max_keys,
        }
    }

    fn shard(&self, key: &str) -> Result<MutexGuard<'_, Shard>, StoreError> {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(key.as_bytes());
        let index = (hasher.finish() % SHARDS as u64) as usize;
        let shard = self.shards.get(index).ok_or(StoreError::Unavailable)?;
        // A worker that panicked while holding the lock left a consistent map (every write is
        // one insert): the next caller may use it.
        Ok(shard.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Keys stored.
    pub fn len(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CounterStore for ProcessStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.shard(key)?.values.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut shard = self.shard(key)?;
        if let Some(current) = shard.values.get(key).map(|(_, token)| *token) {
            if cas.is_some_and(|expected| expected != current) {
                return Err(StoreError::CasMismatch);
            }
            let token = shard.next_token();
            if let Some(entry) = shard.values.get_mut(key) {
                entry.0.clear();
                entry.0.extend_from_slice(value);
                entry.1 = token;
            }
            return Ok(());
        }
        if self.keys.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
            self.keys.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable);
        }
        let token = shard.next_token();
        shard
            .values
            .insert(key.to_string(), (value.to_vec(), token));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::limits::rate_limit::{shared_seed, LimitKey, Limiter, OnContention, RateLimit};
    use crate::support::shared_store::INSERT_IF_ABSENT;
    use std::sync::Arc;

    #[test]
    fn host_semantics_cas_insert_if_absent_and_no_delete() {
        let store = ProcessStore::new(10);
        assert_eq!(store.get("a").unwrap(), None);
        store.set("a", b"1", Some(INSERT_IF_ABSENT)).unwrap();
        assert_eq!(
            store.set("a", b"2", Some(INSERT_IF_ABSENT)),
            Err(StoreError::CasMismatch)
        );
        let (value, token) = store.get("a").unwrap().unwrap();
        assert_eq!(value, b"1");
        store.set("a", b"3", Some(token)).unwrap();
        assert_eq!(
            store.set("a", b"4", Some(token)),
            Err(StoreError::CasMismatch)
        );
        store.set("a", b"5", None).unwrap();
        assert_eq!(store.get("a").unwrap().unwrap().0, b"5");
        // A set on a missing key succeeds whatever its token (the host does the same).
        store.set("b", b"x", Some(12345)).unwrap();
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn keys_past_the_bound_are_refused_not_stored() {
        let store = ProcessStore::new(3);
        for key in ["a", "b", "c"] {
            store.set(key, b"v", None).unwrap();
        }
        assert_eq!(store.set("d", b"v", None), Err(StoreError::Unavailable));
        assert_eq!(store.get("d").unwrap(), None);
        // Existing keys are still written.
        store.set("a", b"w", None).unwrap();
        assert_eq!(store.len(), 3);
    }

    /// The limiter on threads sharing one store: exactly the limit admitted, as across Envoy's
    /// workers on shared data.
    #[test]
    fn one_limit_holds_across_threads() {
        let store = Arc::new(ProcessStore::new(1 << 16));
        let seed = shared_seed(store.as_ref(), [7; 32]).unwrap();
        // Every thread retries its CAS until it lands: the count must be exact, not degraded.
        let limiter = Limiter::new(seed).with_cas_attempts(1000);
        let limit = RateLimit {
            name: "threads".into(),
            requests: 50,
            window_seconds: 3600,
            key: LimitKey::Ip,
            max_tracked_keys: 1000,
            on_contention: OnContention::Refuse,
        };
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..40 {
                        if limiter
                            .check(store.as_ref(), &limit, "client", 1_000)
                            .allowed
                        {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 50);
    }
}

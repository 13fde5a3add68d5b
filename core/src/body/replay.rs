//! Replay protection storage for webhook deliveries.
//!
//! The filter must remember which deliveries it accepted, across every Envoy worker (one Wasm VM
//! each), for as long as their signed timestamp stays acceptable. The only store the workers
//! share is proxy-wasm shared data, and its semantics shape the design:
//! - `get` returns the value and a CAS token; `set` with a stale token fails with a CAS mismatch;
//! - a `set` on a key that does not exist yet succeeds whatever CAS is passed, so two workers
//!   inserting the same new key race; passing a CAS the host never issues ([`INSERT_IF_ABSENT`])
//!   turns `set` into insert-if-absent;
//! - nothing is ever deleted and nothing expires.
//!
//! So [`SharedReplayTable`] is a fixed table of `slot_count` keys per webhook, each holding at
//! most `entries_per_slot` records (a 16-byte digest of the replay key and its expiry time).
//! A delivery's key hashes to one slot; expired records are dropped whenever the slot is
//! rewritten. Memory is bounded at `slot_count × entries_per_slot × 24` bytes per webhook
//! whatever the traffic. When a slot is full of live records the check fails closed: evicting a
//! live record would let that delivery be replayed, and only deliveries whose signature verified
//! reach this table, so filling it takes the real sender's volume, not an attacker's.

use sha2::{Digest, Sha256};
#[cfg(test)]
use std::cell::RefCell;
#[cfg(test)]
use std::collections::HashMap;

/// The store could not answer: host error, persistent contention, or a full slot. Callers refuse
/// the delivery (fail closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStoreUnavailable;

pub trait ReplayStore {
    /// Records `key` as seen until `now + ttl` (inclusive) and tells whether it had already been
    /// seen (and not yet expired). Atomic with respect to other workers: of two concurrent
    /// calls with the same key, exactly one returns `Ok(false)`.
    fn seen_or_insert(&self, key: &str, now: u64, ttl: u64)
        -> Result<bool, ReplayStoreUnavailable>;
}

pub use crate::support::shared_store::{CounterStore, StoreError, INSERT_IF_ABSENT};

pub const DEFAULT_SLOT_COUNT: u32 = 1024;
pub const DEFAULT_ENTRIES_PER_SLOT: usize = 16;
/// Lost CAS races before giving up; each retry means another worker just wrote the same slot.
const MAX_CAS_ATTEMPTS: usize = 8;

const TAG_BYTES: usize = 16;
const RECORD_BYTES: usize = TAG_BYTES + 8;

type Tag = [u8; TAG_BYTES];

/// A bounded replay table over a [`CounterStore`] (proxy-wasm shared data in the filter).
pub struct SharedReplayTable<K: CounterStore> {
    kv: K,
    key_prefix: String,
    slot_count: u32,
    entries_per_slot: usize,
}

impl<K: CounterStore> SharedReplayTable<K> {
    /// `key_prefix` separates tables sharing one store (see [`replay_key_prefix`]). Zero counts
    /// are raised to one.
    pub fn new(kv: K, key_prefix: String, slot_count: u32, entries_per_slot: usize) -> Self {
        SharedReplayTable {
            kv,
            key_prefix,
            slot_count: slot_count.max(1),
            entries_per_slot: entries_per_slot.max(1),
        }
    }

    fn locate(&self, key: &str) -> (Tag, String) {
        let digest = Sha256::digest(key.as_bytes());
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&digest[..TAG_BYTES]);
        let mut slot_bytes = [0u8; 4];
        slot_bytes.copy_from_slice(&digest[TAG_BYTES..TAG_BYTES + 4]);
        let slot = u32::from_be_bytes(slot_bytes) % self.slot_count;
        (tag, format!("{}{}", self.key_prefix, slot))
    }
}

/// The shared-data key prefix for one webhook's table.
pub fn replay_key_prefix(webhook_name: &str) -> String {
    format!("api-guard/webhook-replay/{webhook_name}/")
}

struct Record {
    tag: Tag,
    expires_at: u64,
}

fn decode_records(bytes: &[u8]) -> Vec<Record> {
    // Only this module writes these values; a trailing partial record (which it never writes)
    // is ignored rather than trusted.
    bytes
        .chunks_exact(RECORD_BYTES)
        .map(|chunk| {
            let mut tag = [0u8; TAG_BYTES];
            tag.copy_from_slice(&chunk[..TAG_BYTES]);
            let mut expiry = [0u8; 8];
            expiry.copy_from_slice(&chunk[TAG_BYTES..]);
            Record {
                tag,
                expires_at: u64::from_be_bytes(expiry),
            }
        })
        .collect()
}

fn encode_records(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * RECORD_BYTES);
    for record in records {
        out.extend_from_slice(&record.tag);
        out.extend_from_slice(&record.expires_at.to_be_bytes());
    }
    out
}

impl<K: CounterStore> ReplayStore for SharedReplayTable<K> {
    fn seen_or_insert(
        &self,
        key: &str,
        now: u64,
        ttl: u64,
    ) -> Result<bool, ReplayStoreUnavailable> {
        let (tag, slot_key) = self.locate(key);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (stored, cas) = match self.kv.get(&slot_key).map_err(|_| ReplayStoreUnavailable)? {
                Some((bytes, cas)) => (decode_records(&bytes), Some(cas)),
                None => (Vec::new(), None),
            };
            let mut live: Vec<Record> = stored
                .into_iter()
                .filter(|record| record.expires_at >= now)
                .collect();
            if live.iter().any(|record| record.tag == tag) {
                return Ok(true);
            }
            if live.len() >= self.entries_per_slot {
                return Err(ReplayStoreUnavailable);
            }
            live.push(Record {
                tag,
                expires_at: now.saturating_add(ttl),
            });
            // An existing slot is replaced only if nobody wrote it since our read; a new slot is
            // created only if nobody created it meanwhile.
            let cas = cas.unwrap_or(INSERT_IF_ABSENT);
            match self.kv.set(&slot_key, &encode_records(&live), Some(cas)) {
                Ok(()) => return Ok(false),
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Unavailable) => return Err(ReplayStoreUnavailable),
            }
        }
        Err(ReplayStoreUnavailable)
    }
}

/// An in-process replay store for the unit tests. Unbounded (expired keys are swept on insert);
/// the filter uses [`SharedReplayTable`].
#[cfg(test)]
#[derive(Default)]
pub struct MemoryReplayStore {
    expiries: RefCell<HashMap<String, u64>>,
}

#[cfg(test)]
impl ReplayStore for MemoryReplayStore {
    fn seen_or_insert(
        &self,
        key: &str,
        now: u64,
        ttl: u64,
    ) -> Result<bool, ReplayStoreUnavailable> {
        let mut expiries = self.expiries.borrow_mut();
        expiries.retain(|_, expires_at| *expires_at >= now);
        if expiries.contains_key(key) {
            return Ok(true);
        }
        expiries.insert(key.to_string(), now.saturating_add(ttl));
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Shared data as Envoy implements it: CAS tokens from a counter, a set with a CAS that is
    /// not the key's current one fails, and a set on a missing key succeeds whatever the CAS.
    /// Another worker's write, run between the table's `get` and its `set`.
    type Interleaved = Box<dyn FnOnce(&FakeSharedData)>;

    #[derive(Default)]
    struct FakeSharedData {
        values: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        /// Runs once, between the table's `get` and its `set`: another worker's write.
        interleave: RefCell<Option<Interleaved>>,
        sets: Cell<usize>,
    }

    impl FakeSharedData {
        fn raw_set(&self, key: &str, value: &[u8]) {
            let cas = self.next_cas.get() + 1;
            self.next_cas.set(cas);
            self.values
                .borrow_mut()
                .insert(key.to_string(), (value.to_vec(), cas));
        }
    }

    impl CounterStore for &FakeSharedData {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            let value = self.values.borrow().get(key).cloned();
            if let Some(interleave) = self.interleave.borrow_mut().take() {
                interleave(self);
            }
            Ok(value)
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            self.sets.set(self.sets.get() + 1);
            let current = self.values.borrow().get(key).map(|(_, c)| *c);
            match (current, cas) {
                (Some(current), Some(cas)) if current != cas => {
                    return Err(StoreError::CasMismatch)
                }
                _ => {}
            }
            self.raw_set(key, value);
            Ok(())
        }
    }

    fn table(
        kv: &FakeSharedData,
        slots: u32,
        per_slot: usize,
    ) -> SharedReplayTable<&FakeSharedData> {
        SharedReplayTable::new(kv, replay_key_prefix("stripe"), slots, per_slot)
    }

    #[test]
    fn first_sight_then_seen_until_expiry() {
        let kv = FakeSharedData::default();
        let t = table(&kv, 64, 4);
        assert_eq!(t.seen_or_insert("a", 100, 50), Ok(false));
        assert_eq!(t.seen_or_insert("a", 150, 50), Ok(true));
        assert_eq!(t.seen_or_insert("a", 151, 50), Ok(false));
        assert_eq!(t.seen_or_insert("b", 151, 50), Ok(false));
    }

    #[test]
    fn keys_stay_bounded_and_expired_records_are_reused() {
        let kv = FakeSharedData::default();
        let t = table(&kv, 4, 2);
        // Eight live keys fit in 4 slots × 2 only if they spread evenly; keep going until a
        // slot is full, which must fail closed rather than forget a live key.
        let mut refused = false;
        for i in 0..64 {
            match t.seen_or_insert(&format!("k{i}"), 1000, 10) {
                Ok(seen) => assert!(!seen),
                Err(ReplayStoreUnavailable) => refused = true,
            }
        }
        assert!(refused);
        assert!(kv.values.borrow().len() <= 4);
        for (_, (value, _)) in kv.values.borrow().iter() {
            assert!(value.len() <= 2 * RECORD_BYTES);
        }
        // After expiry every slot has room again (two keys fit even in the same slot).
        assert_eq!(t.seen_or_insert("later-1", 2000, 10), Ok(false));
        assert_eq!(t.seen_or_insert("later-2", 2000, 10), Ok(false));
        assert!(kv.values.borrow().len() <= 4);
    }

    #[test]
    fn a_concurrent_insert_of_the_same_key_is_detected() {
        // Another worker creates the slot between our read (nothing there) and our write: the
        // insert-if-absent CAS fails, we re-read and see its record.
        let kv = FakeSharedData::default();
        let writer = table(&kv, 8, 4);
        let (tag, slot_key) = writer.locate("delivery");
        let record = encode_records(&[Record {
            tag,
            expires_at: 500,
        }]);
        *kv.interleave.borrow_mut() = Some(Box::new(move |kv: &FakeSharedData| {
            kv.raw_set(&slot_key, &record)
        }));
        assert_eq!(writer.seen_or_insert("delivery", 100, 400), Ok(true));
    }

    #[test]
    fn a_concurrent_write_to_an_existing_slot_is_not_lost() {
        let kv = FakeSharedData::default();
        let t = table(&kv, 1, 8);
        assert_eq!(t.seen_or_insert("first", 100, 400), Ok(false));
        let (other_tag, slot_key) = t.locate("other-worker");
        let (first_tag, _) = t.locate("first");
        let both = encode_records(&[
            Record {
                tag: first_tag,
                expires_at: 500,
            },
            Record {
                tag: other_tag,
                expires_at: 500,
            },
        ]);
        *kv.interleave.borrow_mut() = Some(Box::new(move |kv: &FakeSharedData| {
            kv.raw_set(&slot_key, &both)
        }));
        assert_eq!(t.seen_or_insert("mine", 100, 400), Ok(false));
        // Our retry kept the other worker's record.
        assert_eq!(t.seen_or_insert("other-worker", 101, 400), Ok(true));
        assert_eq!(t.seen_or_insert("first", 101, 400), Ok(true));
        assert_eq!(t.seen_or_insert("mine", 101, 400), Ok(true));
    }

    #[test]
    fn host_errors_fail_closed() {
        struct Down;
        impl CounterStore for Down {
            fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
                Err(StoreError::Unavailable)
            }
            fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), StoreError> {
                Err(StoreError::Unavailable)
            }
        }
        let t = SharedReplayTable::new(Down, String::new(), 4, 4);
        assert_eq!(t.seen_or_insert("a", 1, 1), Err(ReplayStoreUnavailable));

        struct AlwaysContended;
        impl CounterStore for AlwaysContended {
            fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
                Ok(None)
            }
            fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), StoreError> {
                Err(StoreError::CasMismatch)
            }
        }
        let t = SharedReplayTable::new(AlwaysContended, String::new(), 4, 4);
        assert_eq!(t.seen_or_insert("a", 1, 1), Err(ReplayStoreUnavailable));
    }

    #[test]
    fn memory_store_expires() {
        let store = MemoryReplayStore::default();
        assert_eq!(store.seen_or_insert("k", 10, 5), Ok(false));
        assert_eq!(store.seen_or_insert("k", 15, 5), Ok(true));
        assert_eq!(store.seen_or_insert("k", 16, 5), Ok(false));
    }
}

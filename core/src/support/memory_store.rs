//! A [`CounterStore`] in memory, with the host's semantics and fault injection: what the native
//! tests, the benchmarks and the fuzz targets run the limiter, the replay table and the JWKS
//! cache on. Never in the filter: built only for tests and with the `testing` feature.

use crate::support::shared_store::{next_cas_token, CounterStore, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

type SetHook = Arc<dyn Fn(&MemoryStore, &str) + Send + Sync>;

#[derive(Default, Clone)]
struct MemoryState {
    values: HashMap<String, (Vec<u8>, u32)>,
    last_token: u32,
    conflicts_to_inject: u32,
    failures_to_inject: u32,
    cas_mismatches: u64,
}

impl MemoryState {
    /// Like the host: tokens come from a counter and 0 is never one. `INSERT_IF_ABSENT` is
    /// skipped too (the host would reach it only after four billion writes).
    fn next_token(&mut self) -> u32 {
        self.last_token = next_cas_token(self.last_token);
        self.last_token
    }
}

/// A [`CounterStore`] in memory with shared data's semantics, including the racy one (a set on a
/// missing key succeeds whatever the CAS), plus fault injection for tests: forced conflicts,
/// failures, and a hook that runs before every `set` (between a caller's `get` and its `set`:
/// that is where another worker would interleave).
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
    before_set: Mutex<Option<SetHook>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn state(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.state().values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next `n` sets meet a concurrent writer: just before each, the key is rewritten (same
    /// value, new token; a missing key is created with an empty value), so a CAS set fails.
    pub fn inject_conflicts(&self, n: u32) {
        self.state().conflicts_to_inject = n;
    }

    /// The next `n` operations (get or set) fail with [`StoreError::Unavailable`].
    pub fn inject_failures(&self, n: u32) {
        self.state().failures_to_inject = n;
    }

    /// Runs `hook` at the start of every `set`, before the store is locked: the hook may call
    /// the store (and a limiter) again, which models another worker running in between.
    pub fn set_before_set_hook(&self, hook: impl Fn(&MemoryStore, &str) + Send + Sync + 'static) {
        *self
            .before_set
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(hook));
    }

    pub fn clear_before_set_hook(&self) {
        *self
            .before_set
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Sets refused with `CasMismatch` so far.
    pub fn cas_mismatches(&self) -> u64 {
        self.state().cas_mismatches
    }

    /// A copy of the values and tokens (no hook, no pending faults): to ask "what if" without
    /// touching this store.
    pub fn snapshot(&self) -> MemoryStore {
        let state = self.state();
        MemoryStore {
            state: Mutex::new(MemoryState {
                values: state.values.clone(),
                last_token: state.last_token,
                ..MemoryState::default()
            }),
            before_set: Mutex::new(None),
        }
    }
}

impl CounterStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let mut state = self.state();
        if state.failures_to_inject > 0 {
            state.failures_to_inject -= 1;
            return Err(StoreError::Unavailable);
        }
        Ok(state.values.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let hook = self
            .before_set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(hook) = hook {
            hook(self, key);
        }
        let mut state = self.state();
        if state.failures_to_inject > 0 {
            state.failures_to_inject -= 1;
            return Err(StoreError::Unavailable);
        }
        if state.conflicts_to_inject > 0 {
            state.conflicts_to_inject -= 1;
            let token = state.next_token();
            let bytes = state
                .values
                .get(key)
                .map(|(bytes, _)| bytes.clone())
                .unwrap_or_default();
            state.values.insert(key.to_string(), (bytes, token));
        }
        if let (Some(expected), Some((_, current))) = (cas, state.values.get(key)) {
            if expected != *current {
                state.cas_mismatches += 1;
                return Err(StoreError::CasMismatch);
            }
        }
        let token = state.next_token();
        state
            .values
            .insert(key.to_string(), (value.to_vec(), token));
        Ok(())
    }
}

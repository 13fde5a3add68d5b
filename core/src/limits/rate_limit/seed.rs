//! The secret seed every worker keys the placement hash with, agreed through shared data.

use super::*;

/// The in-memory store of the tests, at the path they have always used.
#[cfg(any(test, feature = "testing"))]
pub use crate::support::memory_store::MemoryStore;
pub use crate::support::shared_store::{CounterStore, StoreError, INSERT_IF_ABSENT};

pub(super) const SEED_VERSION: u8 = 1;

/// The seed every worker must use: the first worker to call this stores `fresh` (random bytes
/// from the caller) with insert-if-absent; every later call returns that stored seed. Workers
/// with different seeds would count the same client on different counters, so a caller that gets
/// an error here must not rate-limit with a seed of its own (fail closed instead).
pub fn shared_seed(store: &dyn CounterStore, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
    let mut value = Vec::with_capacity(33);
    value.push(SEED_VERSION);
    value.extend_from_slice(&fresh);
    for _ in 0..DEFAULT_CAS_ATTEMPTS {
        let cas = match store.get(SEED_KEY)? {
            Some((bytes, token)) => match bytes.split_first() {
                Some((&SEED_VERSION, seed)) => {
                    if let Ok(seed) = <[u8; 32]>::try_from(seed) {
                        return Ok(seed);
                    }
                    token
                }
                // Unreadable (another format): replace it, under CAS.
                _ => token,
            },
            None => INSERT_IF_ABSENT,
        };
        match store.set(SEED_KEY, &value, Some(cas)) {
            Ok(()) => return Ok(fresh),
            // Another worker stored its seed first: read it.
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

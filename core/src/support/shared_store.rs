//! The seam to proxy-wasm shared data, one map per `vm_id` shared by every Envoy worker. Used by
//! the rate limiter, the webhook replay table and the rate limiter's seed.
//!
//! Host semantics, mirrored exactly so that native tests mean something: `get` returns a value
//! and a CAS token; `set` with a stale token fails with `CasMismatch`; a `set` on a key that does
//! not exist succeeds whatever token is passed (so the first insert races); there is no delete
//! and no expiry. The host issues tokens from a counter, so passing [`INSERT_IF_ABSENT`], a value
//! it never hands out, turns `set` into insert-if-absent.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The value changed since the CAS token was read (or, with [`INSERT_IF_ABSENT`], it exists).
    CasMismatch,
    /// The host refused the call for another reason.
    Unavailable,
}

pub trait CounterStore {
    /// The value and its CAS token, or `None` when the key was never set.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// `cas: Some(token)` compares and swaps; `None` writes unconditionally. Like the host, a set
    /// on a key that does not exist succeeds whatever `cas` is: pass [`INSERT_IF_ABSENT`] when
    /// `get` found nothing, so that the first insert cannot race.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// A CAS token the host never issues in practice (it would take four billion writes).
pub const INSERT_IF_ABSENT: u32 = u32::MAX;

/// The token after `last`, as the host issues them: from a counter, never 0 and never
/// [`INSERT_IF_ABSENT`] (the stores that mirror the host use it).
pub fn next_cas_token(last: u32) -> u32 {
    match last.wrapping_add(1) {
        0 | INSERT_IF_ABSENT => 1,
        token => token,
    }
}

/// A reference to a store is a store (the replay table borrows the host's).
impl<T: CounterStore + ?Sized> CounterStore for &T {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        (**self).set(key, value, cas)
    }
}

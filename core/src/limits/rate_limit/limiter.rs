//! The limiter: one compare-and-swap per admission, bounded retries.

use super::*;

/// Where one client's counter lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) fingerprint: u64,
    pub(super) bucket: u64,
}

#[derive(Clone)]
pub struct Limiter {
    /// Two SipHash-2-4 keys taken from the shared seed: one for the fingerprint, one for the
    /// bucket, so the two are independent.
    pub(super) placement_keys: [(u64, u64); 2],
    pub(super) cas_attempts: u32,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The seed stays out of logs: it is what keeps bucket placement unpredictable.
        f.debug_struct("Limiter")
            .field("cas_attempts", &self.cas_attempts)
            .finish_non_exhaustive()
    }
}

/// SipHash-2-4 under `key`, over length-prefixed fields: no two (name, window, key) triples
/// hash the same input.
///
/// SipHash is the keyed function made for this threat (an attacker choosing inputs to collide
/// in a hash table whose key it does not know), and it costs a fraction of an HMAC-SHA-256 on
/// every request. `siphasher`'s `SipHasher24` is the algorithm std's deprecated `SipHasher` ran
/// before it (so bucket placement did not move), pinned by the reference vectors in the tests.
pub(super) fn keyed_placement_hash(key: (u64, u64), limit: &RateLimit, client_key: &str) -> u64 {
    use std::hash::Hasher;
    let mut hasher = SipHasher24::new_with_keys(key.0, key.1);
    hasher.write(&(limit.name.len() as u64).to_le_bytes());
    hasher.write(limit.name.as_bytes());
    hasher.write(&limit.window_ms().to_le_bytes());
    hasher.write(&(client_key.len() as u64).to_le_bytes());
    hasher.write(client_key.as_bytes());
    hasher.finish()
}

impl Limiter {
    /// `seed` must be the same in every worker: take it from [`shared_seed`].
    pub fn new(seed: [u8; 32]) -> Limiter {
        let word = |i: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&seed[i * 8..i * 8 + 8]);
            u64::from_le_bytes(bytes)
        };
        Limiter {
            placement_keys: [(word(0), word(1)), (word(2), word(3))],
            cas_attempts: DEFAULT_CAS_ATTEMPTS,
        }
    }

    /// CAS attempts per decision (at least 1).
    pub fn with_cas_attempts(self, attempts: u32) -> Limiter {
        Limiter {
            cas_attempts: attempts.max(1),
            ..self
        }
    }

    pub(super) fn identity(&self, limit: &RateLimit, client_key: &str) -> Identity {
        let [fingerprint_key, bucket_key] = self.placement_keys;
        Identity {
            fingerprint: keyed_placement_hash(fingerprint_key, limit, client_key),
            bucket: keyed_placement_hash(bucket_key, limit, client_key) % limit.buckets(),
        }
    }

    /// One admission decision for `client_key` (the resolved IP, principal, key id or header
    /// value; see [`LimitKey::client_key`]) under `limit`, at unix time `now_ms`.
    pub fn check(
        &self,
        store: &dyn CounterStore,
        limit: &RateLimit,
        client_key: &str,
        now_ms: u64,
    ) -> RateDecision {
        let identity = self.identity(limit, client_key);
        let key = table_key(&limit.name, identity.bucket);
        let window_ms = limit.window_ms();
        let mut last_view = None;
        for _ in 0..self.cas_attempts {
            let (bucket, cas) = match store.get(&key) {
                Ok(Some((bytes, token))) => (Bucket::decode(&bytes), token),
                Ok(None) => (Bucket::default(), INSERT_IF_ABSENT),
                Err(_) => {
                    return RateDecision::degraded(limit, last_view, now_ms, REASON_STORE_ERROR)
                }
            };
            let placement = place(&bucket, identity.fingerprint, now_ms);
            let view = match placement {
                Placement::Own(way) => WindowView::of(&bucket.ways[way], window_ms, now_ms),
                Placement::Claim(_) | Placement::Overflow => {
                    WindowView::of(&bucket.overflow, window_ms, now_ms)
                }
            };
            last_view = Some(view);
            if view.weighted() >= limit.requests {
                let reason = match placement {
                    Placement::Overflow => REASON_OVERFLOW_EXCEEDED,
                    Placement::Own(_) | Placement::Claim(_) => REASON_LIMIT_EXCEEDED,
                };
                return RateDecision::refused(limit, view, now_ms, reason);
            }
            let after = view.with_one_more();
            let mut updated = bucket;
            let reason = match placement {
                Placement::Own(way) | Placement::Claim(way) => {
                    updated.ways[way] = after.to_entry(identity.fingerprint);
                    None
                }
                Placement::Overflow => {
                    updated.overflow = after.to_entry(0);
                    Some(REASON_OVERFLOW_ADMITTED)
                }
            };
            match store.set(&key, &updated.encode(), Some(cas)) {
                Ok(()) => return RateDecision::admitted(limit, after, now_ms, reason),
                // Another worker changed the bucket since it was read: decide again.
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Unavailable) => {
                    return RateDecision::degraded(limit, last_view, now_ms, REASON_STORE_ERROR)
                }
            }
        }
        RateDecision::degraded(limit, last_view, now_ms, REASON_CONTENTION)
    }
}

/// The client's own entry wherever it is (a free entry before it must not hide it: that would
/// start it afresh), else the first free entry, else the overflow entry.
pub(super) fn place(bucket: &Bucket, fingerprint: u64, now_ms: u64) -> Placement {
    if let Some(way) = bucket
        .ways
        .iter()
        .position(|e| !e.is_empty() && e.fingerprint == fingerprint)
    {
        return Placement::Own(way);
    }
    match bucket.ways.iter().position(|e| e.is_idle(now_ms)) {
        Some(way) => Placement::Claim(way),
        None => Placement::Overflow,
    }
}

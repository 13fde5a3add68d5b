//! A bounded cache of verified tokens, one per VM (per Envoy worker). Clients reuse a token for
//! minutes, so most requests skip parsing and the public-key operation.
//!
//! Direct-mapped: a slot per hash of the token, a new entry replaces whatever was in its slot.
//! The memory is bounded by the slot count, there is nothing to evict or sweep, and a flood of
//! distinct tokens only costs the tokens that would have hit.
//!
//! A hit is the whole token, byte for byte (compared in constant time), so a different token
//! can never be mistaken for a verified one whatever the hash does. The hash only picks the
//! slot: it is SipHash with this VM's random key, so a client cannot aim its tokens at the
//! slot of someone else's, and it costs a fraction of a cryptographic digest per request.

use super::VerifiedToken;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;

/// How many bytes at the end of a token pick its slot.
const SLOT_HASH_BYTES: usize = 32;

pub struct TokenCache {
    slots: Vec<Option<(Box<str>, Rc<VerifiedToken>)>>,
    slot_hash: RandomState,
    /// Lookups that found a usable token, and the ones that verified it (for the metrics).
    hits: u64,
    misses: u64,
}

impl TokenCache {
    /// `capacity` is rounded up to a power of two (at least 1).
    pub fn new(capacity: usize) -> TokenCache {
        let size = capacity.max(1).next_power_of_two();
        TokenCache {
            slots: (0..size).map(|_| None).collect(),
            slot_hash: RandomState::new(),
            hits: 0,
            misses: 0,
        }
    }

    fn slot(&self, token: &str) -> usize {
        // The end of a token is its signature, which differs between any two tokens that are
        // not the same token: hashing those bytes spreads tokens as well as hashing all of them
        // (their headers are alike), for a fraction of the work. Only verified tokens are
        // stored, so nobody can choose the bytes of a stored one.
        let bytes = token.as_bytes();
        let tail = &bytes[bytes.len().saturating_sub(SLOT_HASH_BYTES)..];
        (self.slot_hash.hash_one(tail) as usize) & (self.slots.len() - 1)
    }

    fn holds(stored: &str, token: &str) -> bool {
        // Constant time: a token in the same slot is someone else's credential, and how many of
        // its leading bytes a guess shares must not show in the timing.
        same_bytes(stored.as_bytes(), token.as_bytes())
    }

    pub fn get(&self, token: &str) -> Option<Rc<VerifiedToken>> {
        match self.slots.get(self.slot(token)) {
            Some(Some((stored, verified))) if Self::holds(stored, token) => {
                Some(Rc::clone(verified))
            }
            _ => None,
        }
    }

    pub fn insert(&mut self, token: &str, verified: Rc<VerifiedToken>) {
        let slot = self.slot(token);
        if let Some(entry) = self.slots.get_mut(slot) {
            *entry = Some((token.into(), verified));
        }
    }

    pub fn remove(&mut self, token: &str) {
        let slot = self.slot(token);
        if let Some(entry) = self.slots.get_mut(slot) {
            if matches!(entry, Some((stored, _)) if Self::holds(stored, token)) {
                *entry = None;
            }
        }
    }

    /// A lookup found a usable verified token.
    pub fn count_hit(&mut self) {
        self.hits = self.hits.wrapping_add(1);
    }

    /// A lookup found nothing usable: the token is verified.
    pub fn count_miss(&mut self) {
        self.misses = self.misses.wrapping_add(1);
    }

    /// (hits, misses) so far.
    pub fn lookups(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `a` and `b` are equal, in a time that depends only on their lengths: every word is
/// compared, whatever the first difference (eight bytes at a time, for tokens of a kilobyte).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |bytes: &[u8]| {
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        u64::from_le_bytes(word)
    };
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = a_words
        .remainder()
        .iter()
        .zip(b_words.remainder())
        .fold(0u64, |diff, (x, y)| diff | u64::from(x ^ y));
    let diff = a_words
        .zip(b_words)
        .fold(tail, |diff, (x, y)| diff | (word(x) ^ word(y)));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::jwt::claims::TimeBounds;

    fn verified(subject: &str) -> Rc<VerifiedToken> {
        Rc::new(VerifiedToken {
            provider: 0,
            subject: Some(subject.into()),
            claims: serde_json::Map::new(),
            time: TimeBounds {
                exp: None,
                nbf: None,
            },
            upstream_headers: Vec::new(),
            key_set_version: 0,
        })
    }

    #[test]
    fn a_hit_is_the_same_token_byte_for_byte() {
        let mut cache = TokenCache::new(1);
        cache.insert("aaa.bbb.ccc", verified("alice"));
        assert_eq!(
            cache.get("aaa.bbb.ccc").and_then(|v| v.subject.clone()),
            Some("alice".into())
        );
        // One slot: every token maps to it, and none but the stored one is a hit.
        for other in [
            "aaa.bbb.ccd",
            "aaa.bbb.cc",
            "aaa.bbb.ccc ",
            "",
            "AAA.BBB.CCC",
        ] {
            assert!(
                cache.get(other).is_none(),
                "{other:?} is not the cached token"
            );
        }
        cache.remove("aaa.bbb.ccd");
        assert_eq!(cache.len(), 1, "removing another token leaves the entry");
        cache.insert("xxx.yyy.zzz", verified("mallory"));
        assert!(cache.get("aaa.bbb.ccc").is_none(), "replaced in its slot");
        cache.remove("xxx.yyy.zzz");
        assert!(cache.is_empty());
    }

    #[test]
    fn same_bytes_compares_every_byte() {
        let a: Vec<u8> = (0..=255).collect();
        assert!(same_bytes(&a, &a.clone()));
        for i in 0..a.len() {
            let mut b = a.clone();
            b[i] ^= 0x80;
            assert!(!same_bytes(&a, &b), "byte {i}");
        }
        assert!(!same_bytes(&a, &a[..255]));
        assert!(same_bytes(b"", b""));
        assert!(!same_bytes(b"abc", b"abd"));
    }

    #[test]
    fn distinct_tokens_spread_over_the_slots() {
        let mut cache = TokenCache::new(4096);
        for i in 0..2048 {
            cache.insert(&format!("header.payload-{i}.signature"), verified("s"));
        }
        // Direct-mapped with a uniform hash: about 4096 × (1 − e^(−1/2)) ≈ 1612 slots filled.
        assert!(cache.len() > 1400, "only {} slots used", cache.len());
    }
}

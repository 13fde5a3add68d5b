//! A bounded cache of verified tokens, one per VM (per Envoy worker). Clients reuse a token for
//! minutes, so most requests skip parsing and the public-key operation.
//!
//! Direct-mapped: a slot per digest prefix, a new entry replaces whatever was in its slot. The
//! memory is fixed at creation, there is nothing to evict or sweep, and a flood of distinct
//! tokens only costs the tokens that would have hit. Keyed by SHA-256 of the whole token, so
//! a different token can never be mistaken for a verified one.

use super::VerifiedToken;
use sha2::{Digest, Sha256};
use std::rc::Rc;

pub type TokenDigest = [u8; 32];

pub fn token_digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

pub struct TokenCache {
    slots: Vec<Option<(TokenDigest, Rc<VerifiedToken>)>>,
}

impl TokenCache {
    /// `capacity` is rounded up to a power of two (at least 1).
    pub fn new(capacity: usize) -> TokenCache {
        let size = capacity.max(1).next_power_of_two();
        TokenCache {
            slots: (0..size).map(|_| None).collect(),
        }
    }

    fn slot(&self, digest: &TokenDigest) -> usize {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&digest[..8]);
        (u64::from_le_bytes(prefix) as usize) & (self.slots.len() - 1)
    }

    pub fn get(&self, digest: &TokenDigest) -> Option<Rc<VerifiedToken>> {
        match self.slots.get(self.slot(digest)) {
            Some(Some((stored, verified))) if stored == digest => Some(Rc::clone(verified)),
            _ => None,
        }
    }

    pub fn insert(&mut self, digest: TokenDigest, verified: Rc<VerifiedToken>) {
        let slot = self.slot(&digest);
        if let Some(entry) = self.slots.get_mut(slot) {
            *entry = Some((digest, verified));
        }
    }

    pub fn remove(&mut self, digest: &TokenDigest) {
        let slot = self.slot(digest);
        if let Some(entry) = self.slots.get_mut(slot) {
            if matches!(entry, Some((stored, _)) if stored == digest) {
                *entry = None;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

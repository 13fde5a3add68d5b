//! The request environment a native test lends a decision: an in-memory store, a token cache,
//! empty remote key sets, a fixed clock, the Rust verifier (tests and fuzz targets only, with
//! the `testing` feature).

use crate::authn::jwt::cache::TokenCache;
use crate::authn::jwt::remote::RemoteKeys;
use crate::authn::jwt::verifier::RustVerifier;
use crate::limits::rate_limit::Limiter;
use crate::pipeline::policy::RequestEnv;
use crate::support::memory_store::MemoryStore;

/// What a host lends a request, natively.
pub struct TestHost {
    pub now_ms: u64,
    pub store: MemoryStore,
    pub cache: TokenCache,
    pub keys: RemoteKeys,
    /// `None`: the workers could not agree on a seed, rate-limited routes fail closed.
    pub limiter: Option<Limiter>,
}

impl TestHost {
    /// A host at `now_s` (Unix seconds) with a rate limiter seeded by `seed`.
    pub fn new(now_s: u64) -> TestHost {
        TestHost {
            now_ms: now_s * 1000,
            store: MemoryStore::default(),
            cache: TokenCache::new(8),
            keys: RemoteKeys::default(),
            limiter: Some(Limiter::new([7; 32])),
        }
    }

    /// The environment of one decision.
    pub fn env(&mut self, may_wait_for_keys: bool) -> RequestEnv<'_> {
        RequestEnv {
            now_ms: self.now_ms,
            verifier: &RustVerifier,
            token_cache: &mut self.cache,
            shared: &self.store,
            limiter: self.limiter.as_ref(),
            remote_keys: &self.keys,
            may_wait_for_keys,
        }
    }
}

//! Remote JWKS decisions of the policy, natively: when a request waits for keys, when it is
//! refused at once (401) or for want of any key set (503), that a request decided again never
//! waits twice, that inline fallback keys verify without waiting, that a cached token does not
//! outlive its key, and that the fast path never reads shared data. The cross-worker protocol
//! itself is tested in `src/jwt/remote.rs`; the whole through Envoy in `envoy_jwks_remote.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::authn::jwt::cache::TokenCache;
use api_guard_core::authn::jwt::remote::{self, HttpReply, RemoteKeys, WaitTicket};
use api_guard_core::authn::jwt::verifier::RustVerifier;
use api_guard_core::config;
use api_guard_core::limits::rate_limit::MemoryStore;
use api_guard_core::pipeline::policy::{Decision, Policy, RequestEnv, Verdict};
use api_guard_core::request::head::RequestHead;
use api_guard_core::support::mint;
use api_guard_core::support::shared_store::{CounterStore, StoreError};
use serde_json::{json, Value};
use std::cell::Cell;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "https://api.test";
/// Unix seconds; tokens are minted around it.
const NOW_S: u64 = 1_800_000_000;
const NOW_MS: u64 = NOW_S * 1000;
const OWNER: u64 = 42;

fn key(name: &str) -> Value {
    let path = format!("{}/../tests/keys/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn jwks(names: &[&str]) -> Vec<u8> {
    serde_json::to_vec(
        &json!({ "keys": names.iter().map(|n| mint::public_jwk(&key(n))).collect::<Vec<_>>() }),
    )
    .unwrap()
}

fn token(key_name: &str, alg: Alg) -> String {
    let claims = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
                         "iat": NOW_S, "exp": NOW_S + 600 });
    mint::sign(&key(key_name), alg, claims.as_object().unwrap()).unwrap()
}

fn policy(jwks: Value) -> Policy {
    let config = json!({
        "jwt": { "providers": [{
            "name": "main", "issuer": ISSUER, "audiences": [AUDIENCE],
            "algorithms": ["ES256", "RS256"], "jwks": jwks
        }]},
        "routes": [ { "name": "api", "match": { "path_prefix": "/" }, "auth": "jwt" } ]
    });
    config::load(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn remote_source() -> Value {
    json!({ "cluster": "idp", "authority": "idp.test", "path": "/jwks",
            "refresh_seconds": 60, "timeout_ms": 2000, "min_refetch_seconds": 10 })
}

fn head(token: &str) -> RequestHead {
    RequestHead::from_host(
        vec![
            (":method".into(), "GET".into()),
            (":path".into(), "/documents".into()),
            (":authority".into(), "api.test".into()),
            ("x-request-id".into(), "rid".into()),
            ("authorization".into(), format!("Bearer {token}")),
        ],
        Some("10.0.0.1:5000"),
    )
}

/// One VM: its token cache and key sets, deciding against `store`.
struct Vm {
    cache: TokenCache,
    keys: RemoteKeys,
}

impl Vm {
    fn new() -> Vm {
        Vm {
            cache: TokenCache::new(64),
            keys: RemoteKeys::default(),
        }
    }

    fn decide(
        &mut self,
        policy: &Policy,
        store: &dyn CounterStore,
        token: &str,
        now_ms: u64,
        may_wait: bool,
    ) -> Decision {
        let mut env = RequestEnv {
            now_ms,
            verifier: &RustVerifier,
            token_cache: &mut self.cache,
            shared: store,
            limiter: None,
            remote_keys: &self.keys,
            may_wait_for_keys: may_wait,
        };
        policy.check_request(&head(token), &mut env)
    }

    fn reload(&mut self, policy: &Policy, store: &dyn CounterStore) {
        let provider = &policy.jwt.as_ref().unwrap().providers[0];
        remote::reload(
            store,
            provider.remote.as_ref().unwrap(),
            &provider.algorithms,
            &mut self.keys,
            0,
        )
        .unwrap();
    }
}

/// A fetch of `body`, as the worker holding the lease would make it.
fn fetch(policy: &Policy, store: &dyn CounterStore, body: &[u8], now_ms: u64) {
    let provider = &policy.jwt.as_ref().unwrap().providers[0];
    let source = provider.remote.as_ref().unwrap();
    assert_eq!(
        remote::try_claim(store, source, OWNER, now_ms).unwrap(),
        remote::Claim::Claimed
    );
    let report = remote::complete_fetch(
        store,
        source,
        &provider.algorithms,
        OWNER,
        now_ms,
        HttpReply::Response {
            status: 200,
            body,
            body_size: body.len(),
        },
        5,
    );
    assert!(report.outcome.is_ok(), "{report:?}");
}

fn waits(decision: &Decision) -> WaitTicket {
    match &decision.verdict {
        Verdict::WaitForKeys(ticket) => *ticket,
        other => panic!("expected to wait, got {other:?}"),
    }
}

fn denied(decision: &Decision) -> (u16, &'static str, Option<&str>) {
    match &decision.verdict {
        Verdict::Deny(reply) => (
            reply.status,
            reply.code.code(),
            reply
                .headers
                .iter()
                .find(|(n, _)| n == "www-authenticate")
                .map(|(_, v)| v.as_str()),
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn allowed(decision: &Decision) -> bool {
    matches!(decision.verdict, Verdict::Allow(_))
}

#[test]
fn without_a_key_set_requests_wait_then_get_503() {
    let policy = policy(json!({ "remote": remote_source() }));
    let store = MemoryStore::new();
    let mut vm = Vm::new();
    let token = token("p256", Alg::ES256);
    let decision = vm.decide(&policy, &store, &token, NOW_MS, true);
    assert_eq!(
        waits(&decision),
        WaitTicket {
            provider: 0,
            registered_at_ms: NOW_MS,
            deadline_ms: NOW_MS + 2000,
            version_seen: 0,
            had_set: false
        }
    );
    assert!(decision.event.is_none(), "nothing is logged before the end");
    // Decided again at the deadline, still without keys: 503, not 401 (the client did nothing
    // wrong), and no challenge.
    let decision = vm.decide(&policy, &store, &token, NOW_MS + 2000, false);
    assert_eq!(denied(&decision), (503, "service_unavailable", None));
    let event = decision.event.unwrap();
    assert_eq!(event.event, "jwks_unavailable");
    // Once the set is there, the same token verifies.
    fetch(&policy, &store, &jwks(&["p256"]), NOW_MS + 2100);
    vm.reload(&policy, &store);
    assert!(allowed(&vm.decide(
        &policy,
        &store,
        &token,
        NOW_MS + 2200,
        true
    )));
}

#[test]
fn an_unknown_kid_waits_only_when_a_refetch_can_happen() {
    let policy = policy(json!({ "remote": remote_source() }));
    let source = policy.jwt.as_ref().unwrap().providers[0]
        .remote
        .clone()
        .unwrap();
    let store = MemoryStore::new();
    let mut vm = Vm::new();
    fetch(&policy, &store, &jwks(&["p256"]), NOW_MS);
    vm.reload(&policy, &store);
    let rotated = token("rsa2048", Alg::RS256);
    let t1 = NOW_MS + 1000;
    let ticket = waits(&vm.decide(&policy, &store, &rotated, t1, true));
    assert!(ticket.had_set);
    assert_eq!(ticket.version_seen, 1);
    // The root asks for the refetch; the identity provider has not published the key yet.
    assert_eq!(
        remote::request_refetch(&store, &source, t1).unwrap(),
        remote::RefetchRequest::Requested
    );
    fetch(&policy, &store, &jwks(&["p256"]), t1 + 50);
    vm.reload(&policy, &store);
    let state = remote::read_state(&store, &source).unwrap().state;
    assert!(ticket.settled(vm.keys.version(0), state.as_ref(), t1 + 60));
    let decision = vm.decide(&policy, &store, &rotated, t1 + 60, false);
    assert_eq!(
        denied(&decision),
        (
            401,
            "invalid_token",
            Some("Bearer realm=\"api\", error=\"invalid_token\"")
        )
    );
    // Within min_refetch_seconds, unknown kids are refused at once, without waiting.
    let decision = vm.decide(&policy, &store, &rotated, t1 + 5000, true);
    assert_eq!(denied(&decision).0, 401);
    // After it, one may wait again.
    waits(&vm.decide(&policy, &store, &rotated, t1 + 10_000, true));
}

#[test]
fn a_worker_behind_the_published_set_waits_for_its_reload() {
    let policy = policy(json!({ "remote": remote_source() }));
    let store = MemoryStore::new();
    let mut fetcher = Vm::new();
    let mut behind = Vm::new();
    fetch(&policy, &store, &jwks(&["p256"]), NOW_MS);
    fetcher.reload(&policy, &store);
    behind.reload(&policy, &store);
    // The fetching worker's refetch brought the new key; the other has not reloaded yet, and
    // min_refetch_seconds has not passed: it still waits (and settles on its reload), rather
    // than refusing a token every other worker accepts.
    let source = policy.jwt.as_ref().unwrap().providers[0]
        .remote
        .clone()
        .unwrap();
    assert_eq!(
        remote::request_refetch(&store, &source, NOW_MS + 10).unwrap(),
        remote::RefetchRequest::Requested
    );
    fetch(&policy, &store, &jwks(&["p256", "rsa2048"]), NOW_MS + 20);
    fetcher.reload(&policy, &store);
    let rotated = token("rsa2048", Alg::RS256);
    assert!(allowed(&fetcher.decide(
        &policy,
        &store,
        &rotated,
        NOW_MS + 30,
        true
    )));
    let ticket = waits(&behind.decide(&policy, &store, &rotated, NOW_MS + 30, true));
    behind.reload(&policy, &store);
    assert!(ticket.settled(behind.keys.version(0), None, NOW_MS + 100));
    assert!(allowed(&behind.decide(
        &policy,
        &store,
        &rotated,
        NOW_MS + 100,
        false
    )));
}

#[test]
fn inline_fallback_keys_verify_without_waiting() {
    let policy = policy(json!({
        "remote": remote_source(),
        "inline": { "keys": [mint::public_jwk(&key("p256"))] }
    }));
    let store = MemoryStore::new();
    let mut vm = Vm::new();
    assert!(allowed(&vm.decide(
        &policy,
        &store,
        &token("p256", Alg::ES256),
        NOW_MS,
        true
    )));
    // A key only the remote set can have: wait for it.
    waits(&vm.decide(&policy, &store, &token("rsa2048", Alg::RS256), NOW_MS, true));
}

#[test]
fn a_cached_token_does_not_outlive_its_key() {
    let policy = policy(json!({ "remote": remote_source() }));
    let store = MemoryStore::new();
    let mut vm = Vm::new();
    fetch(&policy, &store, &jwks(&["p256", "rsa2048"]), NOW_MS);
    vm.reload(&policy, &store);
    let old = token("p256", Alg::ES256);
    assert!(allowed(&vm.decide(&policy, &store, &old, NOW_MS, true)));
    assert_eq!(vm.cache.len(), 1, "verified and cached");
    // The refresh removes the key: the cached entry is of version 1, the set is version 2.
    fetch(&policy, &store, &jwks(&["rsa2048"]), NOW_MS + 60_000);
    vm.reload(&policy, &store);
    let decision = vm.decide(&policy, &store, &old, NOW_MS + 60_001, false);
    assert_eq!(denied(&decision).1, "invalid_token");
    // The same content fetched again keeps the version: cached tokens stay valid.
    let kept = token("rsa2048", Alg::RS256);
    assert!(allowed(&vm.decide(
        &policy,
        &store,
        &kept,
        NOW_MS + 60_002,
        true
    )));
    fetch(&policy, &store, &jwks(&["rsa2048"]), NOW_MS + 120_000);
    vm.reload(&policy, &store);
    assert_eq!(vm.keys.version(0), 2);
    assert!(allowed(&vm.decide(
        &policy,
        &store,
        &kept,
        NOW_MS + 120_001,
        true
    )));
}

/// A store that counts every call and answers nothing.
#[derive(Default)]
struct CountingStore {
    calls: Cell<usize>,
}

impl CounterStore for CountingStore {
    fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.calls.set(self.calls.get() + 1);
        Err(StoreError::Unavailable)
    }
    fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), StoreError> {
        self.calls.set(self.calls.get() + 1);
        Err(StoreError::Unavailable)
    }
}

#[test]
fn the_fast_path_never_reads_shared_data() {
    let inline = policy(json!({ "inline": { "keys": [mint::public_jwk(&key("p256"))] } }));
    let counting = CountingStore::default();
    let mut vm = Vm::new();
    let good = token("p256", Alg::ES256);
    for _ in 0..3 {
        assert!(allowed(&vm.decide(&inline, &counting, &good, NOW_MS, true)));
    }
    // An unknown kid with inline keys only: refused at once, never waits.
    let decision = vm.decide(
        &inline,
        &counting,
        &token("rsa2048", Alg::RS256),
        NOW_MS,
        true,
    );
    assert_eq!(denied(&decision).1, "invalid_token");
    assert_eq!(counting.calls.get(), 0);

    // A remote provider whose set has the key: no shared data on the request path either.
    let remote = policy(json!({ "remote": remote_source() }));
    let store = MemoryStore::new();
    let mut vm = Vm::new();
    fetch(&remote, &store, &jwks(&["p256"]), NOW_MS);
    vm.reload(&remote, &store);
    for _ in 0..3 {
        assert!(allowed(&vm.decide(&remote, &counting, &good, NOW_MS, true)));
    }
    assert_eq!(counting.calls.get(), 0);
    // Only an unknown kid reads the fetch state; unreadable, it is refused rather than held.
    let decision = vm.decide(
        &remote,
        &counting,
        &token("rsa2048", Alg::RS256),
        NOW_MS,
        true,
    );
    assert_eq!(denied(&decision).1, "invalid_token");
    assert_eq!(counting.calls.get(), 1);
}

#[test]
fn remote_configuration_is_checked_with_paths() {
    let errors = |jwks: Value, algorithms: Value| {
        let config = json!({
            "jwt": { "providers": [{
                "name": "main", "issuer": ISSUER, "audiences": [AUDIENCE],
                "algorithms": algorithms, "jwks": jwks
            }]},
            "routes": [ { "name": "api", "match": { "path_prefix": "/" }, "auth": "jwt" } ]
        });
        match config::load(config.to_string().as_bytes()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| e.path).collect::<Vec<_>>(),
        }
    };
    let at = "jwt.providers[0].jwks";
    let es256 = json!(["ES256"]);
    let mut bad_path = remote_source();
    bad_path["path"] = json!("jwks");
    assert_eq!(
        errors(json!({ "remote": bad_path }), es256.clone()),
        vec![format!("{at}.remote.path")]
    );
    let mut fast = remote_source();
    fast["refresh_seconds"] = json!(1);
    assert_eq!(
        errors(json!({ "remote": fast }), es256.clone()),
        vec![format!("{at}.remote.refresh_seconds")]
    );
    assert_eq!(
        errors(
            json!({ "remote": { "authority": "idp.test", "path": "/jwks" } }),
            es256.clone()
        ),
        vec![format!("{at}.remote")],
        "a missing cluster is reported where it is missing"
    );
    assert_eq!(
        errors(json!({ "remote": remote_source() }), json!(["HS256"])),
        vec![format!("{at}.remote")],
        "HMAC secrets never come from a remote JWKS"
    );
    assert_eq!(errors(json!({}), es256.clone()), vec![at.to_string()]);
    assert!(errors(json!({ "remote": remote_source() }), es256.clone()).is_empty());
    assert!(errors(
        json!({ "remote": remote_source(), "inline": { "keys": [mint::public_jwk(&key("p256"))] } }),
        es256
    )
    .is_empty());
}

//! The remote-JWKS driver (`authn::jwks_refresh`) as a host drives it, natively: a fake clock
//! (plain `now_ms` values), the in-memory store standing for shared data, two "VMs" sharing it.
//! What the timer asks the host to do (fetch, decide waiting requests again), the lease that
//! keeps workers from fetching twice, the refetch a waiting request asks for, requests that end
//! while waiting, and the tick period. The whole through Envoy is `envoy_jwks_remote.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::authn::jwks_refresh::{
    reads_body, Command, JwksRefresh, FAST_TICK_MS, IDLE_TICK_MS,
};
use api_guard_core::authn::jwt::remote::{HttpReply, WaitTicket, MAX_JWKS_BYTES};
use api_guard_core::config;
use api_guard_core::limits::rate_limit::MemoryStore;
use api_guard_core::pipeline::policy::Policy;
use api_guard_core::support::mint;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashSet;

const NOW_MS: u64 = 1_800_000_000_000;

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

fn policy() -> Policy {
    let config = json!({
        "jwt": { "providers": [{
            "name": "main", "issuer": "https://idp.test", "audiences": ["https://api.test"],
            "algorithms": ["ES256", "RS256"],
            "jwks": { "remote": { "cluster": "idp", "authority": "idp.test", "path": "/jwks",
                                  "refresh_seconds": 60, "timeout_ms": 2000,
                                  "min_refetch_seconds": 10 } }
        }]},
        "routes": [ { "name": "api", "match": { "path_prefix": "/" }, "auth": "jwt" } ]
    });
    config::load(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

/// Request handles are numbers; `ended` holds the ones whose request is gone.
struct Requests {
    ended: RefCell<HashSet<u32>>,
}

impl Requests {
    fn new() -> Requests {
        Requests {
            ended: RefCell::new(HashSet::new()),
        }
    }
    fn alive(&self) -> impl Fn(&u32) -> bool + '_ {
        |id| !self.ended.borrow().contains(id)
    }
}

fn fetches(commands: &[Command<u32>]) -> Vec<usize> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Fetch { provider } => Some(*provider),
            Command::Resume(_) => None,
        })
        .collect()
}

fn resumed(commands: &[Command<u32>]) -> Vec<u32> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Resume(id) => Some(*id),
            Command::Fetch { .. } => None,
        })
        .collect()
}

fn ok_reply(body: &[u8]) -> HttpReply<'_> {
    HttpReply::Response {
        status: 200,
        body,
        body_size: body.len(),
    }
}

fn ticket(now_ms: u64, version_seen: u64, had_set: bool) -> WaitTicket {
    WaitTicket {
        provider: 0,
        registered_at_ms: now_ms,
        deadline_ms: now_ms + 2000,
        version_seen,
        had_set,
    }
}

#[test]
fn the_first_tick_claims_the_fetch_and_its_answer_releases_the_waiting_requests() {
    let policy = policy();
    let store = MemoryStore::new();
    let requests = Requests::new();
    let mut vm: JwksRefresh<u32> = JwksRefresh::new(&policy, 1);
    assert_eq!(vm.start_period_ms(), Some(FAST_TICK_MS));
    assert!(!vm.keys().has_set(0));
    vm.register(7, ticket(NOW_MS, 0, false)).unwrap();

    let commands = vm.tick(&policy, &store, NOW_MS, requests.alive());
    assert_eq!(fetches(&commands), vec![0]);
    assert!(
        resumed(&commands).is_empty(),
        "no keys yet: the request waits"
    );
    vm.fetch_sent(0, 11, NOW_MS);
    // While the fetch is in flight, the next tick does not send another.
    let commands = vm.tick(&policy, &store, NOW_MS + 100, requests.alive());
    assert!(commands.is_empty(), "{commands:?}");
    assert_eq!(vm.tick_period_ms(), FAST_TICK_MS);

    assert!(vm.take_fetch(99).is_none(), "an unknown token is ignored");
    let fetch = vm.take_fetch(11).unwrap();
    assert_eq!(fetch.provider, 0);
    let body = jwks(&["p256"]);
    let ready = vm.fetch_answered(
        &policy,
        &store,
        fetch,
        Some(NOW_MS + 150),
        ok_reply(&body),
        requests.alive(),
    );
    assert_eq!(ready, vec![7]);
    assert!(vm.keys().has_set(0));
    assert_eq!(vm.keys().keys(0).len(), 1);
    assert!(vm.take_fetch(11).is_none(), "answered once");
    // Nothing waits, nothing is in flight, every provider has a set: the timer idles.
    assert_eq!(vm.tick_period_ms(), IDLE_TICK_MS);
}

#[test]
fn one_worker_fetches_and_the_other_reloads_what_it_published() {
    let policy = policy();
    let store = MemoryStore::new();
    let requests = Requests::new();
    let mut first: JwksRefresh<u32> = JwksRefresh::new(&policy, 1);
    let mut second: JwksRefresh<u32> = JwksRefresh::new(&policy, 2);

    assert_eq!(
        fetches(&first.tick(&policy, &store, NOW_MS, requests.alive())),
        vec![0]
    );
    first.fetch_sent(0, 1, NOW_MS);
    // The lease is held: the other worker does not fetch.
    assert!(fetches(&second.tick(&policy, &store, NOW_MS + 10, requests.alive())).is_empty());
    second.register(5, ticket(NOW_MS + 10, 0, false)).unwrap();

    let fetch = first.take_fetch(1).unwrap();
    let body = jwks(&["p256"]);
    first.fetch_answered(
        &policy,
        &store,
        fetch,
        Some(NOW_MS + 50),
        ok_reply(&body),
        requests.alive(),
    );
    // The other worker's next tick loads the published set and releases its request.
    let commands = second.tick(&policy, &store, NOW_MS + 110, requests.alive());
    assert!(fetches(&commands).is_empty());
    assert_eq!(resumed(&commands), vec![5]);
    assert_eq!(
        second.keys().version(0),
        first.keys().version(0),
        "same published version"
    );
}

#[test]
fn a_request_waiting_for_a_new_key_asks_for_a_refetch() {
    let policy = policy();
    let store = MemoryStore::new();
    let requests = Requests::new();
    let mut vm: JwksRefresh<u32> = JwksRefresh::new(&policy, 1);
    vm.tick(&policy, &store, NOW_MS, requests.alive());
    vm.fetch_sent(0, 1, NOW_MS);
    let fetch = vm.take_fetch(1).unwrap();
    let old = jwks(&["p256"]);
    vm.fetch_answered(
        &policy,
        &store,
        fetch,
        Some(NOW_MS),
        ok_reply(&old),
        requests.alive(),
    );
    let version = vm.keys().version(0);

    // Well before the refresh is due (60 s), nothing is fetched...
    assert!(fetches(&vm.tick(&policy, &store, NOW_MS + 1_000, requests.alive())).is_empty());
    // ...until a request with an unknown key waits on a set it already had: a refetch.
    let waiting_since = NOW_MS + 11_000;
    vm.register(3, ticket(waiting_since, version, true))
        .unwrap();
    let commands = vm.tick(&policy, &store, waiting_since + 100, requests.alive());
    assert_eq!(fetches(&commands), vec![0], "{commands:?}");
    vm.fetch_sent(0, 2, waiting_since + 100);
    // The refetch finds the same keys: the request is decided again anyway (the attempt ended).
    let fetch = vm.take_fetch(2).unwrap();
    let ready = vm.fetch_answered(
        &policy,
        &store,
        fetch,
        Some(waiting_since + 200),
        ok_reply(&old),
        requests.alive(),
    );
    assert_eq!(ready, vec![3]);
}

#[test]
fn a_failed_send_is_recorded_and_waiting_requests_are_decided_at_their_deadline() {
    let policy = policy();
    let store = MemoryStore::new();
    let requests = Requests::new();
    let mut vm: JwksRefresh<u32> = JwksRefresh::new(&policy, 1);
    vm.register(1, ticket(NOW_MS, 0, false)).unwrap();
    vm.register(2, ticket(NOW_MS, 0, false)).unwrap();
    assert_eq!(
        fetches(&vm.tick(&policy, &store, NOW_MS, requests.alive())),
        vec![0]
    );
    vm.fetch_not_sent(&policy, &store, 0, NOW_MS, "BadArgument");
    // The failure released the lease and scheduled a retry: not at once.
    assert!(fetches(&vm.tick(&policy, &store, NOW_MS + 100, requests.alive())).is_empty());
    // A request that ended is dropped, never resumed.
    requests.ended.borrow_mut().insert(2);
    let commands = vm.tick(&policy, &store, NOW_MS + 2_000, requests.alive());
    assert_eq!(
        resumed(&commands),
        vec![1],
        "the deadline decides the live one"
    );
    assert!(!vm.keys().has_set(0));
    assert_eq!(
        vm.tick_period_ms(),
        FAST_TICK_MS,
        "no set yet: keep ticking fast"
    );
}

#[test]
fn an_unreadable_store_fetches_nothing_and_still_honours_deadlines() {
    let policy = policy();
    let store = MemoryStore::new();
    let requests = Requests::new();
    let mut vm: JwksRefresh<u32> = JwksRefresh::new(&policy, 1);
    vm.register(4, ticket(NOW_MS, 0, false)).unwrap();
    store.inject_failures(1_000);
    assert!(vm
        .tick(&policy, &store, NOW_MS + 100, requests.alive())
        .is_empty());
    assert_eq!(
        resumed(&vm.tick(&policy, &store, NOW_MS + 2_000, requests.alive())),
        vec![4]
    );
}

#[test]
fn without_a_remote_provider_there_is_no_timer_and_nothing_to_do() {
    let config =
        json!({ "routes": [ { "name": "any", "match": { "path_prefix": "/" }, "auth": "none" } ] });
    let policy = config::load(config.to_string().as_bytes()).unwrap();
    let store = MemoryStore::new();
    let requests = Requests::new();
    let mut vm: JwksRefresh<u32> = JwksRefresh::new(&policy, 1);
    assert_eq!(vm.start_period_ms(), None);
    assert!(vm
        .tick(&policy, &store, NOW_MS, requests.alive())
        .is_empty());
}

#[test]
fn a_body_over_the_limit_is_not_read() {
    assert!(reads_body(MAX_JWKS_BYTES));
    assert!(!reads_body(MAX_JWKS_BYTES + 1));
}

#[test]
fn a_worker_holds_a_bounded_number_of_waiting_requests() {
    let policy = policy();
    let mut vm: JwksRefresh<u32> = JwksRefresh::new(&policy, 1);
    for id in 0..api_guard_core::authn::jwks_refresh::MAX_WAITING_REQUESTS as u32 {
        vm.register(id, ticket(NOW_MS, 0, false)).unwrap();
    }
    assert_eq!(
        vm.register(u32::MAX, ticket(NOW_MS, 0, false)),
        Err(u32::MAX)
    );
}

#[test]
fn fetch_results_and_key_gauges_are_counted_for_the_metrics() {
    let policy = policy();
    let store = MemoryStore::new();
    let requests = Requests::new();
    let mut vm: JwksRefresh<u32> = JwksRefresh::new(&policy, 1);
    let name = |id: api_guard_core::support::metrics::MetricId| {
        policy.metrics.definitions()[id.0 as usize].name.clone()
    };
    let gauges = |vm: &JwksRefresh<u32>| -> Vec<(String, u64)> {
        vm.gauges().iter().map(|(id, v)| (name(*id), *v)).collect()
    };
    // A failed fetch (the host's call failed), counted once.
    assert_eq!(
        fetches(&vm.tick(&policy, &store, NOW_MS, requests.alive())),
        vec![0]
    );
    assert_eq!(
        gauges(&vm),
        [
            ("api_guard_jwks_keys.provider.main".to_string(), 0),
            (
                "api_guard_jwks_seconds_since_success.provider.main".to_string(),
                0
            )
        ]
    );
    vm.fetch_sent(0, 11, NOW_MS);
    let fetch = vm.take_fetch(11).unwrap();
    vm.fetch_answered(
        &policy,
        &store,
        fetch,
        Some(NOW_MS + 50),
        HttpReply::Failed,
        requests.alive(),
    );
    let counted: Vec<String> = vm.take_counts().into_iter().map(name).collect();
    assert_eq!(
        counted,
        ["api_guard_jwks_fetches_total.provider.main.result.failure"]
    );
    assert!(vm.take_counts().is_empty(), "taken once");

    // The retry succeeds: one success, the keys held, and the age counts from it.
    let retry_at = NOW_MS + 120_000;
    assert_eq!(
        fetches(&vm.tick(&policy, &store, retry_at, requests.alive())),
        vec![0]
    );
    assert_eq!(
        gauges(&vm)[1],
        (
            "api_guard_jwks_seconds_since_success.provider.main".to_string(),
            120
        ),
        "never fetched: since this VM's first tick"
    );
    vm.fetch_sent(0, 12, retry_at);
    let fetch = vm.take_fetch(12).unwrap();
    let body = jwks(&["p256", "rsa2048"]);
    vm.fetch_answered(
        &policy,
        &store,
        fetch,
        Some(retry_at),
        ok_reply(&body),
        requests.alive(),
    );
    let counted: Vec<String> = vm.take_counts().into_iter().map(name).collect();
    assert_eq!(
        counted,
        ["api_guard_jwks_fetches_total.provider.main.result.success"]
    );
    vm.tick(&policy, &store, retry_at + 30_000, requests.alive());
    assert_eq!(
        gauges(&vm),
        [
            ("api_guard_jwks_keys.provider.main".to_string(), 2),
            (
                "api_guard_jwks_seconds_since_success.provider.main".to_string(),
                30
            )
        ]
    );
}

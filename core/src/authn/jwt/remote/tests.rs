//! Tests of `remote`: the fetch state machine, the shared-store protocol and the key sets.

use super::*;
use crate::limits::rate_limit::MemoryStore;
use crate::support::mint;
use serde_json::json;

const VM_A: u64 = 0xA;
const VM_B: u64 = 0xB;
const T0: u64 = 1_700_000_000_000;

fn test_key(name: &str) -> Value {
    let path = format!("{}/../tests/keys/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn public(name: &str) -> Value {
    mint::public_jwk(&test_key(name))
}

fn jwks(keys: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

fn algs() -> Vec<Alg> {
    vec![Alg::ES256, Alg::RS256, Alg::EdDSA]
}

fn remote() -> RemoteJwks {
    RemoteJwks::compile(
        &json!({"cluster": "idp", "authority": "idp.test", "path": "/jwks",
                "refresh_seconds": 60, "timeout_ms": 500, "min_refetch_seconds": 5}),
        "main",
        &algs(),
        "jwt.providers[0].jwks.remote",
    )
    .unwrap()
}

fn ok_reply(body: &[u8]) -> HttpReply<'_> {
    HttpReply::Response {
        status: 200,
        body,
        body_size: body.len(),
    }
}

fn state(store: &MemoryStore, remote: &RemoteJwks) -> FetchState {
    read_state(store, remote).unwrap().state.unwrap()
}

/// One full successful fetch by `owner` at `now`.
fn fetch(store: &MemoryStore, remote: &RemoteJwks, owner: u64, now: u64, body: &[u8]) {
    assert_eq!(
        try_claim(store, remote, owner, now).unwrap(),
        Claim::Claimed
    );
    let report = complete_fetch(store, remote, &algs(), owner, now, ok_reply(body), 10);
    assert!(report.outcome.is_ok(), "{report:?}");
}

// --- configuration ---

#[test]
fn configuration_defaults_and_keys() {
    let remote = RemoteJwks::compile(
        &json!({"cluster": "idp", "authority": "auth.example.com", "path": "/.well-known/jwks.json"}),
        "main",
        &algs(),
        "at",
    )
    .unwrap();
    assert_eq!(remote.refresh_ms, 600_000);
    assert_eq!(remote.timeout_ms, 5_000);
    assert_eq!(remote.min_refetch_ms, 30_000);
    assert!(remote.set_key.starts_with("api-guard.jwks.main."));
    assert!(remote.set_key.ends_with(".set"));
    assert_eq!(
        remote.state_key,
        remote.set_key.replace(".set", ".state"),
        "one prefix for both records"
    );
    let headers = remote.request_headers();
    assert!(headers.contains(&(":method", "GET")));
    assert!(headers.contains(&(":path", "/.well-known/jwks.json")));
    assert!(headers.contains(&(":authority", "auth.example.com")));
    // Another path is another source: it never reads this one's set.
    let other = RemoteJwks::compile(
        &json!({"cluster": "idp", "authority": "auth.example.com", "path": "/other"}),
        "main",
        &algs(),
        "at",
    )
    .unwrap();
    assert_ne!(other.set_key, remote.set_key);
}

#[test]
fn configuration_errors_name_their_path() {
    let at = "jwt.providers[0].jwks.remote";
    let errors = |value: Value| {
        RemoteJwks::compile(&value, "main", &algs(), at)
            .unwrap_err()
            .into_iter()
            .map(|e| e.path)
            .collect::<Vec<_>>()
    };
    assert_eq!(errors(json!("https://idp/jwks")), vec![at.to_string()]);
    let missing = errors(json!({"uri": "https://idp/jwks"}));
    assert!(missing.contains(&format!("{at}.uri")), "{missing:?}");
    assert_eq!(
        missing.iter().filter(|p| *p == at).count(),
        3,
        "cluster, authority and path are each reported missing: {missing:?}"
    );
    let base = json!({"cluster": "idp", "authority": "idp.test", "path": "/jwks"});
    let with = |field: &str, value: Value| {
        let mut config = base.clone();
        config[field] = value;
        errors(config)
    };
    for (field, value) in [
        ("cluster", json!("")),
        ("authority", json!("")),
        ("authority", json!("idp.test/jwks")),
        ("path", json!("jwks")),
        ("path", json!("/a b")),
        ("path", json!(7)),
        ("refresh_seconds", json!(4)),
        ("refresh_seconds", json!(86_401)),
        ("timeout_ms", json!(99)),
        ("timeout_ms", json!(60_001)),
        ("timeout_ms", json!("5s")),
        ("min_refetch_seconds", json!(0)),
        ("min_refetch_seconds", json!(3_601)),
        ("min_refetch_seconds", json!(-1)),
    ] {
        assert_eq!(
            with(field, value.clone()),
            vec![format!("{at}.{field}")],
            "{field} = {value}"
        );
    }
    let mut slow = base.clone();
    slow["refresh_seconds"] = json!(5);
    slow["timeout_ms"] = json!(5_000);
    assert_eq!(errors(slow), vec![format!("{at}.timeout_ms")]);
}

// --- validation of a fetched body ---

#[test]
fn a_good_jwks_is_validated_like_inline_keys() {
    let body = jwks(vec![public("p256"), public("rsa2048"), public("ed25519")]);
    let validated = validate_jwks(&body, &algs()).unwrap();
    assert_eq!(validated.keys.len(), 3);
    assert!(validated.skipped.is_empty());
}

#[test]
fn unusable_keys_are_skipped_with_a_reason() {
    let mut encryption = public("rsa2048-other");
    encryption["use"] = json!("enc");
    let mut weak = public("rsa2048-other");
    weak["kid"] = json!("weak");
    // A 1024-bit modulus: the top half of the real one.
    let n = crate::authn::jwt::b64url::decode(weak["n"].as_str().unwrap()).unwrap();
    weak["n"] = json!(crate::authn::jwt::b64url::encode(&n[..128]));
    let mut leaked = test_key("p256-other");
    leaked["kid"] = json!("leaked");
    let mut twin = public("p256-other");
    twin["kid"] = json!("test-p256");
    let body = jwks(vec![
        public("p256"),
        encryption,
        json!({"kty": "DSA", "kid": "dsa"}),
        weak,
        public("hs512"),
        leaked,
        twin,
        public("p384"),
    ]);
    let validated = validate_jwks(&body, &algs()).unwrap();
    assert_eq!(validated.keys.len(), 1, "only the P-256 key is usable");
    assert_eq!(validated.keys[0].kid.as_deref(), Some("test-p256"));
    let skipped = validated.skipped.join("\n");
    for expected in [
        "keys[1].use",
        "keys[2].kty",
        "keys[3].n",
        "keys[4]: a symmetric",
        "keys[5].d",
        "keys[6]: repeats the kid",
        "keys[7]: fits none",
    ] {
        assert!(skipped.contains(expected), "{expected} in {skipped}");
    }
    assert!(
        !skipped.contains(test_key("p256-other")["d"].as_str().unwrap()),
        "no key material in the reasons"
    );
}

#[test]
fn bodies_that_are_not_usable_jwks_fail_with_their_reason() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"<html>hello</html>".to_vec(), "not_jwks"),
        (b"{\"keys\": {}}".to_vec(), "not_jwks"),
        (b"[]".to_vec(), "not_jwks"),
        (b"{\"keys\": [], \"keys\": []}".to_vec(), "not_jwks"),
        (jwks(vec![]), "no_usable_keys"),
        (jwks(vec![public("hs512")]), "no_usable_keys"),
        (
            jwks((0..=MAX_REMOTE_KEYS).map(|_| public("p256")).collect()),
            "not_jwks",
        ),
        (vec![b' '; MAX_JWKS_BYTES + 1], "body_too_large"),
    ];
    for (body, code) in cases {
        let failure = validate_jwks(&body, &algs()).unwrap_err();
        assert_eq!(failure.code(), code, "{}", failure.describe());
    }
}

#[test]
fn replies_are_classified() {
    let timeout = 500;
    let reply = |status, body: &'static [u8]| HttpReply::Response {
        status,
        body,
        body_size: body.len(),
    };
    let code = |reply, elapsed| check_reply(reply, elapsed, timeout).unwrap_err().code();
    assert_eq!(code(HttpReply::Failed, 3), "connection_error");
    assert_eq!(code(reply(500, b"oops"), 3), "bad_status");
    assert_eq!(code(reply(404, b""), 3), "bad_status");
    assert_eq!(
        code(reply(504, b"upstream request timeout"), 501),
        "timeout"
    );
    assert_eq!(
        code(
            reply(
                503,
                b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
            ),
            3
        ),
        "connection_error"
    );
    assert_eq!(
        code(reply(503, b"no healthy upstream"), 3),
        "connection_error"
    );
    assert_eq!(code(reply(503, b"maintenance"), 3), "bad_status");
    let big = HttpReply::Response {
        status: 200,
        body: b"",
        body_size: MAX_JWKS_BYTES + 1,
    };
    assert_eq!(code(big, 3), "body_too_large");
    assert_eq!(check_reply(reply(200, b"{}"), 3, timeout), Ok(&b"{}"[..]));
}

// --- the lease ---

#[test]
fn exactly_one_worker_claims_and_the_others_see_the_lease() {
    let store = MemoryStore::new();
    let remote = remote();
    assert_eq!(
        try_claim(&store, &remote, VM_A, T0).unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        try_claim(&store, &remote, VM_B, T0 + 1).unwrap(),
        Claim::Leased {
            until_ms: T0 + remote.timeout_ms + LEASE_MARGIN_MS
        }
    );
    // B cannot complete a fetch it never claimed.
    let report = complete_fetch(
        &store,
        &remote,
        &algs(),
        VM_B,
        T0 + 2,
        ok_reply(&jwks(vec![public("p256")])),
        2,
    );
    assert_eq!(report.finish, Ok(Finish::LeaseLost));
    assert_eq!(read_published(&store, &remote).unwrap(), None);
}

#[test]
fn the_first_insert_race_is_lost_cleanly() {
    let store = MemoryStore::new();
    let remote = remote();
    // Worker B's claim lands between A's read (nothing there) and A's insert.
    let remote_for_b = remote.clone();
    store.set_before_set_hook(move |store, key| {
        if key == remote_for_b.state_key {
            store.clear_before_set_hook();
            assert_eq!(
                try_claim(store, &remote_for_b, VM_B, T0).unwrap(),
                Claim::Claimed
            );
        }
    });
    assert_eq!(
        try_claim(&store, &remote, VM_A, T0).unwrap(),
        Claim::Leased {
            until_ms: T0 + remote.timeout_ms + LEASE_MARGIN_MS
        },
        "A's insert-if-absent fails, and A then sees B's lease"
    );
    assert_eq!(state(&store, &remote).lease.map(|l| l.owner), Some(VM_B));
    assert!(store.cas_mismatches() >= 1);
}

#[test]
fn injected_conflicts_are_retried_and_a_persistent_one_gives_up() {
    let store = MemoryStore::new();
    let remote = remote();
    store.inject_conflicts(2);
    assert_eq!(
        try_claim(&store, &remote, VM_A, T0).unwrap(),
        Claim::Claimed
    );
    let store = MemoryStore::new();
    store.inject_conflicts(CAS_ATTEMPTS as u32);
    assert_eq!(
        try_claim(&store, &remote, VM_A, T0).unwrap(),
        Claim::LostRace
    );
    store.inject_failures(1);
    assert_eq!(
        try_claim(&store, &remote, VM_A, T0),
        Err(StoreError::Unavailable)
    );
}

#[test]
fn a_dead_workers_lease_times_out() {
    let store = MemoryStore::new();
    let remote = remote();
    assert_eq!(
        try_claim(&store, &remote, VM_A, T0).unwrap(),
        Claim::Claimed
    );
    let expiry = T0 + remote.timeout_ms + LEASE_MARGIN_MS;
    assert!(matches!(
        try_claim(&store, &remote, VM_B, expiry - 1).unwrap(),
        Claim::Leased { .. }
    ));
    assert_eq!(
        try_claim(&store, &remote, VM_B, expiry).unwrap(),
        Claim::Claimed
    );
    // A's answer arrives late: dropped, and B's lease untouched.
    let report = complete_fetch(
        &store,
        &remote,
        &algs(),
        VM_A,
        expiry + 1,
        ok_reply(&jwks(vec![public("p256")])),
        expiry + 1 - T0,
    );
    assert_eq!(report.finish, Ok(Finish::LeaseLost));
    assert!(report.event("main", 0).is_none());
    assert_eq!(read_published(&store, &remote).unwrap(), None);
    assert_eq!(state(&store, &remote).lease.map(|l| l.owner), Some(VM_B));
}

#[test]
fn refresh_is_scheduled_after_a_success() {
    let store = MemoryStore::new();
    let remote = remote();
    fetch(&store, &remote, VM_A, T0, &jwks(vec![public("p256")]));
    let after = state(&store, &remote);
    assert_eq!(after.lease, None);
    assert_eq!(after.published_version, 1);
    assert_eq!(after.next_fetch_at_ms, T0 + remote.refresh_ms);
    assert_eq!(
        try_claim(&store, &remote, VM_B, T0 + remote.refresh_ms - 1).unwrap(),
        Claim::NotDue {
            next_fetch_at_ms: T0 + remote.refresh_ms
        }
    );
    assert_eq!(
        try_claim(&store, &remote, VM_B, T0 + remote.refresh_ms).unwrap(),
        Claim::Claimed
    );
}

#[test]
fn failures_back_off_from_one_second_doubling_to_the_refresh_interval() {
    assert_eq!(
        (1..=9)
            .map(|failures| retry_delay_ms(failures, 60_000))
            .collect::<Vec<_>>(),
        vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
    );
    assert_eq!(retry_delay_ms(u32::MAX, 600_000), 600_000);

    let store = MemoryStore::new();
    let remote = remote();
    let mut now = T0;
    let mut delays = Vec::new();
    for _ in 0..8 {
        assert_eq!(
            try_claim(&store, &remote, VM_A, now).unwrap(),
            Claim::Claimed
        );
        let report = complete_fetch(
            &store,
            &remote,
            &algs(),
            VM_A,
            now,
            HttpReply::Response {
                status: 500,
                body: b"",
                body_size: 0,
            },
            5,
        );
        let Ok(Finish::Recorded {
            next_fetch_at_ms, ..
        }) = report.finish
        else {
            panic!("{report:?}")
        };
        delays.push(next_fetch_at_ms - now);
        assert!(matches!(
            try_claim(&store, &remote, VM_B, next_fetch_at_ms - 1).unwrap(),
            Claim::NotDue { .. }
        ));
        now = next_fetch_at_ms;
    }
    assert_eq!(
        delays,
        vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
    );
    assert_eq!(state(&store, &remote).consecutive_failures, 8);
    // A success resets the count.
    fetch(&store, &remote, VM_B, now, &jwks(vec![public("p256")]));
    assert_eq!(state(&store, &remote).consecutive_failures, 0);
}

// --- refetch on unknown kid ---

#[test]
fn refetches_are_granted_at_most_once_per_minimum_interval() {
    let store = MemoryStore::new();
    let remote = remote();
    // Before anything was fetched, the first fetch is what a refetch would be.
    assert_eq!(
        request_refetch(&store, &remote, T0).unwrap(),
        RefetchRequest::AlreadyPending
    );
    fetch(&store, &remote, VM_A, T0, &jwks(vec![public("p256")]));
    let t1 = T0 + 1_000;
    assert_eq!(
        request_refetch(&store, &remote, t1).unwrap(),
        RefetchRequest::Requested
    );
    assert_eq!(
        request_refetch(&store, &remote, t1 + 1).unwrap(),
        RefetchRequest::AlreadyPending
    );
    // Requested refetches are due at once, whatever the refresh schedule.
    fetch(&store, &remote, VM_B, t1 + 10, &jwks(vec![public("p256")]));
    assert_eq!(
        request_refetch(&store, &remote, t1 + 20).unwrap(),
        RefetchRequest::TooSoon {
            until_ms: t1 + remote.min_refetch_ms
        }
    );
    assert!(matches!(
        try_claim(&store, &remote, VM_A, t1 + 30).unwrap(),
        Claim::NotDue { .. }
    ));
    assert_eq!(
        request_refetch(&store, &remote, t1 + remote.min_refetch_ms).unwrap(),
        RefetchRequest::Requested
    );
}

#[test]
fn a_flood_of_unknown_kids_is_held_to_the_minimum_interval() {
    // Every 10 ms for 60 s a request with a random kid arrives somewhere; each worker that
    // lets one wait requests a refetch, and whoever is due fetches.
    let store = MemoryStore::new();
    let remote = remote();
    fetch(&store, &remote, VM_A, T0, &jwks(vec![public("p256")]));
    let mut fetches = 0;
    let mut waited = 0;
    let mut refused = 0;
    let end = T0 + 60_000;
    let mut now = T0 + 1;
    while now < end {
        let read = read_state(&store, &remote).unwrap();
        if unknown_kid_may_wait(read.state.as_ref(), 1, remote.min_refetch_ms, now) {
            waited += 1;
            let _ = request_refetch(&store, &remote, now).unwrap();
        } else {
            refused += 1;
        }
        if try_claim(&store, &remote, VM_B, now).unwrap() == Claim::Claimed {
            fetches += 1;
            let report = complete_fetch(
                &store,
                &remote,
                &algs(),
                VM_B,
                now + 5,
                ok_reply(&jwks(vec![public("p256")])),
                5,
            );
            assert!(report.outcome.is_ok());
        }
        now += 10;
    }
    // 60 s at one refetch per 5 s: 12 refetches (the refresh of 60 s is not reached).
    assert_eq!(fetches, 12, "fetches");
    assert!(
        refused > 5_000,
        "most requests are refused at once: {refused}"
    );
    assert!(
        waited <= 2 * fetches,
        "only requests that meet a refetch wait: {waited}"
    );
}

#[test]
fn unknown_kids_may_wait_only_when_keys_can_still_change() {
    let min = 5_000;
    assert!(
        unknown_kid_may_wait(None, 0, min, T0),
        "nothing fetched yet"
    );
    let fresh = FetchState {
        published_version: 3,
        last_refetch_request_at_ms: Some(T0),
        ..FetchState::default()
    };
    assert!(!unknown_kid_may_wait(Some(&fresh), 3, min, T0 + 1));
    assert!(
        unknown_kid_may_wait(Some(&fresh), 2, min, T0 + 1),
        "a newer set is published: this worker will reload"
    );
    assert!(unknown_kid_may_wait(Some(&fresh), 3, min, T0 + min));
    let requested = FetchState {
        refetch_requested: true,
        ..fresh.clone()
    };
    assert!(unknown_kid_may_wait(Some(&requested), 3, min, T0 + 1));
    let in_flight = FetchState {
        lease: Some(Lease {
            owner: VM_A,
            expires_at_ms: T0 + 100,
        }),
        ..fresh.clone()
    };
    assert!(unknown_kid_may_wait(Some(&in_flight), 3, min, T0 + 1));
    assert!(
        !unknown_kid_may_wait(Some(&in_flight), 3, min, T0 + 100),
        "an expired lease is no fetch in flight"
    );
    let never_requested = FetchState {
        last_refetch_request_at_ms: None,
        ..fresh
    };
    assert!(unknown_kid_may_wait(Some(&never_requested), 3, min, T0));
}

// --- publishing and reloading ---

#[test]
fn versions_change_with_content_only_and_failures_keep_the_last_good_set() {
    let store = MemoryStore::new();
    let remote = remote();
    let first = jwks(vec![public("p256")]);
    let second = jwks(vec![public("p256"), public("rsa2048")]);
    let p = publish(&store, &remote, &algs(), &first, T0).unwrap();
    assert_eq!((p.version, p.changed, p.usable_keys), (1, true, 1));
    let p = publish(&store, &remote, &algs(), &first, T0 + 1).unwrap();
    assert_eq!((p.version, p.changed), (1, false));
    let p = publish(&store, &remote, &algs(), &second, T0 + 2).unwrap();
    assert_eq!((p.version, p.changed, p.usable_keys), (2, true, 2));
    for bad in [
        b"garbage".to_vec(),
        jwks(vec![]),
        vec![b' '; MAX_JWKS_BYTES + 1],
    ] {
        assert!(publish(&store, &remote, &algs(), &bad, T0 + 3).is_err());
    }
    let kept = read_published(&store, &remote).unwrap().unwrap();
    assert_eq!((kept.version, kept.body), (2, second));
    assert_eq!(kept.fetched_at_ms, T0 + 2);
}

#[test]
fn a_publish_that_meets_a_concurrent_publish_retries_on_top_of_it() {
    let store = MemoryStore::new();
    let remote = remote();
    publish(&store, &remote, &algs(), &jwks(vec![public("p256")]), T0).unwrap();
    store.inject_conflicts(1);
    let p = publish(
        &store,
        &remote,
        &algs(),
        &jwks(vec![public("rsa2048")]),
        T0 + 1,
    )
    .unwrap();
    assert_eq!(p.version, 2);
    store.inject_failures(1);
    assert_eq!(
        publish(
            &store,
            &remote,
            &algs(),
            &jwks(vec![public("ed25519")]),
            T0 + 2
        ),
        Err(FetchFailure::StoreUnavailable)
    );
}

#[test]
fn workers_reparse_only_when_the_version_changes() {
    let store = MemoryStore::new();
    let remote = remote();
    let mut worker = RemoteKeys::default();
    assert_eq!(
        reload(&store, &remote, &algs(), &mut worker, 0).unwrap(),
        None
    );
    assert!(!worker.has_set(0));
    assert_eq!(worker.version(0), 0);
    fetch(&store, &remote, VM_A, T0, &jwks(vec![public("p256")]));
    assert_eq!(
        reload(&store, &remote, &algs(), &mut worker, 0).unwrap(),
        Some(1)
    );
    let parsed = std::sync::Arc::clone(&worker.set(0).unwrap().keys);
    // The same content fetched again: nothing to reload, the parsed keys stay.
    fetch(
        &store,
        &remote,
        VM_A,
        T0 + remote.refresh_ms,
        &jwks(vec![public("p256")]),
    );
    assert_eq!(
        reload(&store, &remote, &algs(), &mut worker, 0).unwrap(),
        None
    );
    assert!(std::sync::Arc::ptr_eq(
        &parsed,
        &worker.set(0).unwrap().keys
    ));
    // New content: version 2, new keys.
    fetch(
        &store,
        &remote,
        VM_A,
        T0 + 2 * remote.refresh_ms,
        &jwks(vec![public("rsa2048")]),
    );
    assert_eq!(
        reload(&store, &remote, &algs(), &mut worker, 0).unwrap(),
        Some(2)
    );
    assert_eq!(worker.keys(0)[0].kid.as_deref(), Some("test-rsa"));
    assert_eq!(state(&store, &remote).published_version, 2);
    // Providers are independent.
    assert!(!worker.has_set(1));
    assert!(worker.keys(5).is_empty());
}

#[test]
fn fetch_reports_become_log_events_without_key_material() {
    let store = MemoryStore::new();
    let remote = remote();
    fetch(&store, &remote, VM_A, T0, &jwks(vec![public("p256")]));
    let now = T0 + remote.refresh_ms;
    assert_eq!(
        try_claim(&store, &remote, VM_A, now).unwrap(),
        Claim::Claimed
    );
    let report = complete_fetch(
        &store,
        &remote,
        &algs(),
        VM_A,
        now,
        HttpReply::Response {
            status: 504,
            body: b"upstream request timeout",
            body_size: 24,
        },
        500,
    );
    let event = report.event("main", 1).unwrap();
    assert!(event.is_failure());
    let line = event.to_json();
    let parsed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed["type"], "security_event");
    assert_eq!(parsed["event"], "jwks_fetch_failed");
    assert_eq!(parsed["provider"], "main");
    assert_eq!(parsed["version"], 1, "the last good set is still served");
    assert_eq!(parsed["consecutive_failures"], 1);
    assert_eq!(parsed["next_fetch_in_ms"], 1_000);
    assert!(parsed["reason"].as_str().unwrap().starts_with("timeout"));
    // A success names counts only.
    let now = now + 1_000;
    assert_eq!(
        try_claim(&store, &remote, VM_A, now).unwrap(),
        Claim::Claimed
    );
    let body = jwks(vec![public("p256"), public("hs512")]);
    let report = complete_fetch(&store, &remote, &algs(), VM_A, now, ok_reply(&body), 5);
    let line = report.event("main", 1).unwrap().to_json();
    let parsed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed["event"], "jwks_updated");
    assert_eq!(parsed["version"], 2);
    assert_eq!(parsed["keys"], 1);
    assert_eq!(parsed["skipped"].as_array().unwrap().len(), 1);
    for secret in [
        public("hs512")["k"].as_str().unwrap(),
        public("p256")["x"].as_str().unwrap(),
    ] {
        assert!(!line.contains(secret), "no key material in {line}");
    }
}

#[test]
fn an_unsent_fetch_counts_as_a_failure() {
    let store = MemoryStore::new();
    let remote = remote();
    assert_eq!(
        try_claim(&store, &remote, VM_A, T0).unwrap(),
        Claim::Claimed
    );
    let report = fail_unsent_fetch(&store, &remote, VM_A, T0, "BadArgument".into());
    assert_eq!(
        report.finish,
        Ok(Finish::Recorded {
            next_fetch_at_ms: T0 + 1_000,
            consecutive_failures: 1
        })
    );
    assert_eq!(report.outcome.unwrap_err().code(), "connection_error");
}

// --- waiting requests ---

#[test]
fn waiting_requests_settle_on_a_new_set_a_finished_refetch_or_their_deadline() {
    let first_fetch = WaitTicket {
        provider: 0,
        registered_at_ms: T0,
        deadline_ms: T0 + 500,
        version_seen: 0,
        had_set: false,
    };
    let failed = FetchState {
        last_attempt_finished_at_ms: Some(T0 + 10),
        consecutive_failures: 1,
        ..FetchState::default()
    };
    assert!(!first_fetch.settled(0, None, T0 + 1));
    assert!(
        !first_fetch.settled(0, Some(&failed), T0 + 20),
        "a failed first fetch is retried while the request waits"
    );
    assert!(first_fetch.settled(1, Some(&failed), T0 + 20));
    assert!(first_fetch.settled(0, Some(&failed), T0 + 500));

    let refetch = WaitTicket {
        version_seen: 4,
        had_set: true,
        ..first_fetch
    };
    let earlier = FetchState {
        last_attempt_finished_at_ms: Some(T0 - 1),
        ..FetchState::default()
    };
    assert!(!refetch.settled(4, Some(&earlier), T0 + 1));
    assert!(
        refetch.settled(4, Some(&failed), T0 + 20),
        "the refetch ended (it failed): decide with the keys there are"
    );
    assert!(refetch.settled(5, Some(&earlier), T0 + 1));
    assert!(refetch.settled(4, Some(&earlier), T0 + 500));
}

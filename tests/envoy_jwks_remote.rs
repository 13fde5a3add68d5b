//! Remote JWKS through a real Envoy, against a test identity provider (`common::idp`) that the
//! tests control: start-up, verification, key rotation and removal, outages of every kind,
//! recovery, floods of unknown `kid`s, and one fetch for all workers. Every test has its own
//! Envoy and identity provider; intervals are short (seconds) and waits generous, and nothing
//! asserts on latency.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::support::mint;
use common::idp::{Behavior, Idp};
use common::{assert_envelope, test_key, unix_now, Envoy, EnvoyOptions, Response};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "https://api.test";
const JWKS_PATH: &str = "/.well-known/jwks.json";
const UPDATED: &str = "\"event\":\"jwks_updated\"";
const FAILED: &str = "\"event\":\"jwks_fetch_failed\"";

fn jwks(names: &[&str]) -> Value {
    json!({ "keys": names.iter().map(|n| mint::public_jwk(&test_key(n))).collect::<Vec<_>>() })
}

/// A token signed with test key `key_name`, its `kid` replaced when `kid` is given.
fn token_with(key_name: &str, alg: Alg, kid: Option<&str>, exp: u64) -> String {
    let mut signing_key = test_key(key_name);
    if let Some(kid) = kid {
        signing_key["kid"] = json!(kid);
    }
    let claims = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-of-{key_name}"),
                         "iat": unix_now(), "exp": exp });
    mint::sign(&signing_key, alg, claims.as_object().unwrap()).unwrap()
}

fn token(key_name: &str, alg: Alg) -> String {
    token_with(key_name, alg, None, unix_now() + 600)
}

/// api-guard with one remote provider on cluster `idp`; `remote` overrides its fields.
fn plugin_config(remote: Value) -> String {
    let mut source = json!({ "cluster": "idp", "authority": "idp.test", "path": JWKS_PATH });
    for (k, v) in remote.as_object().unwrap() {
        source[k] = v.clone();
    }
    json!({
        "jwt": { "providers": [{
            "name": "main",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "algorithms": ["ES256", "RS256"],
            "jwks": { "remote": source },
            "claims_to_headers": [ { "claim": "sub", "header": "x-user-id" } ]
        }]},
        "routes": [
            { "name": "health", "match": { "path_exact": "/healthz" }, "auth": "none" },
            { "name": "api", "match": { "path_prefix": "/api/" }, "auth": "jwt" },
            { "name": "forms", "match": { "path_prefix": "/forms/", "methods": ["POST"] },
              "auth": "jwt", "max_body_bytes": 1024,
              "body_schema": { "type": "object", "required": ["name"],
                               "properties": { "name": { "type": "string" } } } }
        ]
    })
    .to_string()
}

fn start(idp: &Idp, concurrency: u32, remote: Value) -> Envoy {
    Envoy::start(EnvoyOptions {
        plugin_config: Some(plugin_config(remote)),
        concurrency,
        extra_clusters_yaml: Some(idp.cluster_yaml("idp")),
        ..EnvoyOptions::default()
    })
}

fn get(envoy: &Envoy, token: &str) -> Response {
    envoy.request(
        "GET",
        "/api/documents",
        &[("authorization", &format!("Bearer {token}"))],
    )
}

/// Several requests, each on a new connection, so that they spread over the workers.
fn statuses(envoy: &Envoy, token: &str, n: usize) -> Vec<u16> {
    (0..n).map(|_| get(envoy, token).status).collect()
}

fn count(envoy: &Envoy, needle: &str) -> usize {
    envoy.log().matches(needle).count()
}

fn wait_for_count(envoy: &Envoy, needle: &str, n: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if count(envoy, needle) >= n {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn start_up_waits_for_the_first_fetch_and_one_fetch_serves_four_workers() {
    // The first answer takes 3 s: requests sent meanwhile must wait for it, not fail.
    let idp = Idp::start_with(jwks(&["p256"]), Behavior::Delay(Duration::from_secs(3)));
    let envoy = start(&idp, 4, json!({ "refresh_seconds": 5, "timeout_ms": 4000 }));
    assert_eq!(
        count(&envoy, UPDATED),
        0,
        "the key set is not there yet when the first requests arrive"
    );
    let good = token("p256", Alg::ES256);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let port = envoy.port();
            let good = good.clone();
            thread::spawn(move || {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                common::send_request(
                    addr,
                    "GET",
                    "/api/documents",
                    &[("authorization", &format!("Bearer {good}"))],
                    None,
                )
                .map(|r| r.status)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for result in &results {
        assert_eq!(
            result.as_ref().ok(),
            Some(&200),
            "every early request waited and was allowed: {results:?}"
        );
    }
    // One fetch for the four workers and the main thread, with the headers Envoy needs.
    assert_eq!(idp.request_count(), 1, "{:?}", idp.requests());
    let first = &idp.requests()[0];
    assert_eq!(first.method, "GET");
    assert_eq!(first.path, JWKS_PATH);
    assert_eq!(first.host.as_deref(), Some("idp.test"));
    assert!(envoy.wait_for_log(UPDATED, Duration::from_secs(20)));
    assert_eq!(count(&envoy, UPDATED), 1);
    let seen = envoy.upstream_requests();
    assert_eq!(seen.len(), 8);
    assert!(seen
        .iter()
        .all(|r| r.header("x-user-id") == Some("user-of-p256")));

    // The refresh (every 5 s) is one fetch too, whichever worker makes it.
    idp.set_behavior(Behavior::Serve);
    assert!(
        idp.wait_for_requests(2, Duration::from_secs(15)),
        "the set is refreshed"
    );
    thread::sleep(Duration::from_millis(2500));
    let fetches = idp.request_count();
    eprintln!("identity provider requests after one refresh, 4 workers: {fetches}");
    assert_eq!(fetches, 2, "one fetch per refresh: {:?}", idp.requests());
    assert_eq!(statuses(&envoy, &good, 8), vec![200; 8]);
}

#[test]
fn requests_with_a_body_wait_with_it() {
    // While a request waits for keys, its body arrives and is held with it; after the wait the
    // route's body checks see the whole body, and an allowed body reaches the upstream intact.
    let idp = Idp::start_with(jwks(&["p256"]), Behavior::Delay(Duration::from_secs(2)));
    let envoy = start(
        &idp,
        1,
        json!({ "refresh_seconds": 30, "timeout_ms": 4000 }),
    );
    let bearer = format!("Bearer {}", token("p256", Alg::ES256));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("/api/upload", b"plain body bytes".to_vec(), 200),
        ("/forms/valid", br#"{"name":"alice"}"#.to_vec(), 200),
        ("/forms/invalid", br#"{"name":7}"#.to_vec(), 400),
        ("/forms/large", vec![b' '; 2000], 413),
    ];
    let handles: Vec<_> = cases
        .iter()
        .map(|(path, body, _)| {
            let (port, path, body, bearer) =
                (envoy.port(), path.to_string(), body.clone(), bearer.clone());
            thread::spawn(move || {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let headers = [
                    ("authorization", bearer.as_str()),
                    ("content-type", "application/json"),
                ];
                common::send_request(addr, "POST", &path, &headers, Some(&body)).unwrap()
            })
        })
        .collect();
    for ((path, _, status), handle) in cases.iter().zip(handles) {
        let response = handle.join().unwrap();
        assert_eq!(response.status, *status, "{path}: {}", response.body_str());
    }
    assert_eq!(idp.request_count(), 1);
    let mut seen: Vec<(String, String)> = envoy
        .upstream_requests()
        .iter()
        .map(|r| (r.path.clone(), r.body_str()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("/api/upload".to_string(), "plain body bytes".to_string()),
            (
                "/forms/valid".to_string(),
                r#"{"name":"alice"}"#.to_string()
            ),
        ]
    );
}

#[test]
fn identity_provider_down_at_start_answers_503_then_recovers() {
    let idp = Idp::start_with(jwks(&["p256"]), Behavior::Close);
    let envoy = start(
        &idp,
        2,
        json!({ "refresh_seconds": 30, "timeout_ms": 1000 }),
    );
    let good = token("p256", Alg::ES256);
    let refused = get(&envoy, &good);
    // No key set at all: the client did nothing wrong, so not 401.
    assert_envelope("no key set yet", &refused, 503, "service_unavailable");
    assert_eq!(refused.header("www-authenticate"), None);
    assert!(envoy.upstream_requests().is_empty());
    assert!(
        envoy.wait_for_log("\"reason\":\"connection_error:", Duration::from_secs(20)),
        "the failure is logged with its reason"
    );
    assert!(envoy.wait_for_log("\"event\":\"jwks_unavailable\"", Duration::from_secs(20)));

    // The provider comes back: the retries (1 s, 2 s, 4 s, ...) pick it up.
    idp.set_behavior(Behavior::Serve);
    assert!(
        envoy.wait_for_log(UPDATED, Duration::from_secs(15)),
        "recovered"
    );
    assert_eq!(statuses(&envoy, &good, 4), vec![200; 4]);
    eprintln!(
        "identity provider requests until recovery: {}",
        idp.request_count()
    );
}

#[test]
fn verification_rotation_and_removal() {
    let idp = Idp::start(jwks(&["p256"]));
    let envoy = start(
        &idp,
        2,
        json!({ "refresh_seconds": 5, "timeout_ms": 2000, "min_refetch_seconds": 1 }),
    );
    let old = token("p256", Alg::ES256);
    // Normal verification.
    assert_eq!(get(&envoy, &old).status, 200);
    let upstream = envoy.upstream_requests();
    assert_eq!(upstream[0].header("x-user-id"), Some("user-of-p256"));
    assert_eq!(upstream[0].header("authorization"), None);
    let mut tampered = old.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    assert_envelope("tampered", &get(&envoy, &tampered), 401, "invalid_token");
    assert_envelope(
        "expired",
        &get(
            &envoy,
            &token_with("p256", Alg::ES256, None, unix_now() - 3600),
        ),
        401,
        "token_expired",
    );
    assert_envelope(
        "known kid, other key",
        &get(
            &envoy,
            &token_with(
                "p256-other",
                Alg::ES256,
                Some("test-p256"),
                unix_now() + 600,
            ),
        ),
        401,
        "invalid_token",
    );
    let fetches_before_rotation = idp.request_count();

    // Rotation: the provider publishes a new key and signs with it at once. The first token
    // with the new kid is accepted on its first request (it waits for one refetch).
    idp.set_jwks(jwks(&["p256", "rsa2048"]));
    let new = token("rsa2048", Alg::RS256);
    assert_eq!(get(&envoy, &new).status, 200, "new kid on first request");
    assert_eq!(
        idp.request_count(),
        fetches_before_rotation + 1,
        "one refetch"
    );
    // Both workers, both keys.
    assert_eq!(statuses(&envoy, &new, 4), vec![200; 4]);
    assert_eq!(
        statuses(&envoy, &old, 4),
        vec![200; 4],
        "old kid still published"
    );

    // Removal: the old key leaves the set; after the refresh its tokens are refused, even
    // those the workers had cached.
    let updates = count(&envoy, UPDATED);
    idp.set_jwks(jwks(&["rsa2048"]));
    assert!(
        wait_for_count(&envoy, UPDATED, updates + 1, Duration::from_secs(20)),
        "refreshed"
    );
    // Every worker reloads on its next tick (a second later when idle; on a loaded machine the
    // tick may come late): within a bound, every worker refuses the removed key.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while statuses(&envoy, &old, 8) != vec![401; 8] {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed key is still accepted 15 s after the refresh"
        );
        thread::sleep(Duration::from_millis(250));
    }
    for _ in 0..4 {
        assert_envelope("removed key", &get(&envoy, &old), 401, "invalid_token");
    }
    assert_eq!(statuses(&envoy, &new, 4), vec![200; 4]);
}

#[test]
fn outages_keep_the_last_good_set_and_log_their_reason() {
    let idp = Idp::start(jwks(&["p256"]));
    let envoy = start(
        &idp,
        2,
        json!({ "refresh_seconds": 60, "timeout_ms": 1000, "min_refetch_seconds": 1 }),
    );
    assert!(envoy.wait_for_log(UPDATED, Duration::from_secs(20)));
    let good = token("p256", Alg::ES256);
    assert_eq!(statuses(&envoy, &good, 2), vec![200; 2]);
    let cases = [
        (Behavior::Status(500), "bad_status"),
        (Behavior::Garbage, "not_jwks"),
        (Behavior::Huge(300 * 1024), "body_too_large"),
        (Behavior::Close, "connection_error"),
        (Behavior::Stall, "timeout"),
        (Behavior::Serve, ""),
    ];
    for (round, (behavior, reason)) in cases.into_iter().enumerate() {
        if reason.is_empty() {
            // Recovery, with a new key: a new kid makes the refetch that finds it.
            idp.set_jwks(jwks(&["p256", "rsa2048"]));
        }
        idp.set_behavior(behavior.clone());
        // A token with a kid nobody published asks for a refetch (granted: more than
        // min_refetch_seconds since the last one), waits for it, and is refused.
        thread::sleep(Duration::from_millis(1100));
        let unknown = token_with(
            "p256",
            Alg::ES256,
            Some(&format!("rotated-{round}")),
            unix_now() + 600,
        );
        assert_envelope(
            &format!("{behavior:?}: unknown kid"),
            &get(&envoy, &unknown),
            401,
            "invalid_token",
        );
        if reason.is_empty() {
            assert_eq!(
                get(&envoy, &token("rsa2048", Alg::RS256)).status,
                200,
                "recovered: the new key verifies"
            );
            break;
        }
        // (The scheduled retries, 1 s, 2 s, 4 s, ... apart, fail the same way meanwhile.)
        let logged = format!("\"reason\":\"{reason}:");
        assert!(
            envoy.wait_for_log(&logged, Duration::from_secs(20)),
            "{behavior:?}: failure logged with reason {reason}"
        );
        let log = envoy.log();
        let line = log.lines().find(|l| l.contains(&logged)).unwrap();
        assert!(line.contains(FAILED), "{line}");
        assert!(
            line.contains("\"version\":1"),
            "still serving version 1: {line}"
        );
        // The last good set keeps working on every worker.
        assert_eq!(
            statuses(&envoy, &good, 4),
            vec![200; 4],
            "{behavior:?}: last good set"
        );
    }
    // No key material in the log: not even the public coordinates.
    let log = envoy.log();
    for name in ["p256", "rsa2048"] {
        let public = mint::public_jwk(&test_key(name));
        let material = public
            .get("x")
            .or_else(|| public.get("n"))
            .and_then(Value::as_str)
            .unwrap();
        assert!(!log.contains(material), "{name} key material in the log");
    }
    eprintln!(
        "identity provider requests over the outage test: {}",
        idp.request_count()
    );
}

#[test]
fn a_flood_of_unknown_kids_costs_at_most_one_fetch_per_interval() {
    let idp = Idp::start(jwks(&["p256"]));
    let envoy = start(
        &idp,
        2,
        json!({ "refresh_seconds": 60, "timeout_ms": 1000, "min_refetch_seconds": 2 }),
    );
    assert!(envoy.wait_for_log(UPDATED, Duration::from_secs(20)));
    let before = idp.request_count();
    let sent = Arc::new(AtomicUsize::new(0));
    let flood = Duration::from_secs(6);
    let started = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|worker| {
            let port = envoy.port();
            let sent = Arc::clone(&sent);
            thread::spawn(move || {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let mut statuses = Vec::new();
                let mut n = 0;
                while started.elapsed() < flood {
                    n += 1;
                    let kid = format!("random-{worker}-{n}");
                    let forged = token_with("p256", Alg::ES256, Some(&kid), unix_now() + 600);
                    let response = common::send_request(
                        addr,
                        "GET",
                        "/api/documents",
                        &[("authorization", &format!("Bearer {forged}"))],
                        None,
                    );
                    statuses.push(response.map(|r| r.status).unwrap_or(0));
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                statuses
            })
        })
        .collect();
    let statuses: Vec<u16> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    let fetches = idp.request_count() - before;
    eprintln!(
        "flood: {} requests with random kids in {elapsed:?}; identity provider requests: {fetches}",
        sent.load(Ordering::SeqCst)
    );
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    // One refetch per 2 s at most (plus one for the interval the flood ends in).
    let allowed = (elapsed.as_secs() / 2 + 2) as usize;
    assert!(fetches >= 1, "an unknown kid does trigger a refetch");
    assert!(
        fetches <= allowed,
        "{fetches} fetches for a {elapsed:?} flood (at most {allowed})"
    );
    // Real tokens are unaffected.
    assert_eq!(statuses_after_flood(&envoy), vec![200; 4]);
}

fn statuses_after_flood(envoy: &Envoy) -> Vec<u16> {
    statuses(envoy, &token("p256", Alg::ES256), 4)
}

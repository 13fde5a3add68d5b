//! DPoP (RFC 9449) through a real Envoy with two workers and a listener that takes TLS and plain
//! text on one port. The client keys, their RFC 7638 thumbprints and every proof are made at
//! test time by PyPI jwcrypto (tests/common/dpop_mint.py, installed by `make jwcrypto`), not by
//! the filter's code; the access tokens are signed with the test keys and bound with `cnf.jkt`
//! to jwcrypto's thumbprint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::support::mint;
use base64::Engine as _;
use common::{assert_refusal, claims, event_of, sign, test_key, unix_now, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

const ISSUER: &str = "https://issuer.test";
const STRICT_ISSUER: &str = "https://strict-issuer.test";
const LEGACY_ISSUER: &str = "https://legacy-issuer.test";
const AUDIENCE: &str = "https://api.test";
const BAD_PROOF: Option<&str> = Some("DPoP error=\"invalid_dpop_proof\"");
const BAD_TOKEN: Option<&str> = Some("Bearer realm=\"api\", error=\"invalid_token\"");

/// Three providers, one per mode, all with the test key `p256` as the issuer's key.
fn start() -> Envoy {
    let provider = |name: &str, issuer: &str, dpop: &str| {
        json!({
            "name": name, "issuer": issuer, "audiences": [AUDIENCE],
            "jwks": { "inline": { "keys": [mint::public_jwk(&test_key("p256"))] } },
            "claims_to_headers": [ { "claim": "sub", "header": "x-user-id" } ],
            "dpop": dpop
        })
    };
    let config = json!({
        "jwt": { "providers": [
            provider("main", ISSUER, "optional"),
            provider("strict", STRICT_ISSUER, "required"),
            provider("legacy", LEGACY_ISSUER, "off"),
        ]},
        "routes": [ { "name": "api", "match": { "path_prefix": "/api/" }, "auth": "jwt" } ]
    });
    Envoy::start(EnvoyOptions {
        plugin_config: Some(config.to_string()),
        tls: true,
        ..Default::default()
    })
}

/// Runs tests/common/dpop_mint.py with the project's .venv Python (which has jwcrypto).
fn mint_with_jwcrypto(request: &Value) -> Value {
    let python = common::crate_root().join(".venv/bin/python");
    let script = common::crate_root().join("tests/common/dpop_mint.py");
    let mut child = std::process::Command::new(&python)
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (run `make jwcrypto`)", python.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "dpop_mint.py printed no result ({e}); is jwcrypto installed (`make jwcrypto`)? stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

struct ClientKey {
    private: Value,
    public: Value,
    thumbprint: String,
}

fn keygen(kty: &str) -> ClientKey {
    let key = mint_with_jwcrypto(&json!({"op": "keygen", "kty": kty}));
    ClientKey {
        private: key["private"].clone(),
        public: key["public"].clone(),
        thumbprint: key["thumbprint"].as_str().unwrap().to_string(),
    }
}

/// Every proof of `specs` (see dpop_mint.py), in one run of jwcrypto.
fn proofs(specs: Vec<Value>) -> Vec<String> {
    let result = mint_with_jwcrypto(&json!({"op": "proofs", "proofs": specs}));
    result["proofs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn ath(token: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

fn unique_jti() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "jti-{}-{}-{}",
        std::process::id(),
        unix_now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Claims of a proof for `method url` with `token`, issued now.
fn proof_claims(method: &str, url: &str, token: &str) -> Value {
    json!({ "htm": method, "htu": url, "iat": unix_now(), "jti": unique_jti(), "ath": ath(token) })
}

fn with(mut value: Value, name: &str, member: Value) -> Value {
    value[name] = member;
    value
}

fn spec(key: &ClientKey, alg: &str, claims: Value) -> Value {
    json!({ "key": key.private, "alg": alg, "claims": claims })
}

/// An access token from `issuer` for alice, bound to `jkt` when given.
fn access_token(issuer: &str, jkt: Option<&str>) -> String {
    let extra = match jkt {
        Some(jkt) => json!({ "cnf": { "jkt": jkt } }),
        None => json!({}),
    };
    sign(
        "p256",
        Alg::ES256,
        &claims(issuer, AUDIENCE, "alice", extra),
    )
}

const PLAIN_URL: &str = "http://api.test/api/docs";
const TLS_URL: &str = "https://api.test/api/docs";

#[test]
fn every_dpop_check_through_envoy() {
    let envoy = start();
    let ec = keygen("EC");
    let other_ec = keygen("EC");
    let rsa = keygen("RSA");
    let ed = keygen("OKP");
    let hmac = keygen("oct");
    let token = access_token(ISSUER, Some(&ec.thumbprint));
    let rsa_token = access_token(ISSUER, Some(&rsa.thumbprint));
    let ed_token = access_token(ISSUER, Some(&ed.thumbprint));
    let other_key_token = access_token(ISSUER, Some(&rsa.thumbprint));
    let strict_token = access_token(STRICT_ISSUER, Some(&ec.thumbprint));
    let legacy_bound = access_token(LEGACY_ISSUER, Some(&ec.thumbprint));
    let unbound = access_token(ISSUER, None);
    let strict_unbound = access_token(STRICT_ISSUER, None);
    let legacy_unbound = access_token(LEGACY_ISSUER, None);
    let good = |token: &str| proof_claims("GET", PLAIN_URL, token);

    // One run of jwcrypto for every proof of this group.
    let mut specs = vec![
        spec(&ec, "ES256", good(&token)), // 0 plain http
        spec(&ec, "ES256", proof_claims("GET", TLS_URL, &token)), // 1 over TLS
        spec(&rsa, "RS256", good(&rsa_token)), // 2 RSA (host verify)
        spec(&rsa, "PS256", good(&rsa_token)), // 3 PS256 (Rust path)
        spec(&ed, "EdDSA", good(&ed_token)), // 4 Ed25519 (Rust path)
        spec(&ec, "ES256", good(&strict_token)), // 5 required mode
        spec(&ec, "ES256", with(good(&token), "htm", json!("POST"))), // 6 wrong htm
        spec(
            &ec,
            "ES256",
            with(good(&token), "htu", json!("http://api.test/api/other")),
        ), // 7 wrong htu
        spec(&ec, "ES256", proof_claims("GET", TLS_URL, &token)), // 8 https proof on http
        spec(&ec, "ES256", good(&token)), // 9 http proof on https
        spec(
            &ec,
            "ES256",
            with(good(&token), "iat", json!(unix_now() - 3600)),
        ), // 10 stale iat
        spec(
            &ec,
            "ES256",
            with(good(&token), "ath", json!(ath(&unbound))),
        ), // 11 wrong ath
        spec(&ec, "ES256", good(&other_key_token)), // 12 wrong jkt
        // 13 wrong typ
        json!({ "key": ec.private, "alg": "ES256", "claims": good(&token),
                "header": { "typ": "JWT" } }),
    ];
    // 14: bad signature: signed by another EC key, naming the bound one.
    specs.push(
        json!({ "key": other_ec.private, "alg": "ES256", "claims": good(&token),
                       "header_jwk": ec.public }),
    );
    // 15: symmetric alg, its key (without the secret) in the header.
    specs.push(
        json!({ "key": hmac.private, "alg": "HS256", "claims": good(&token),
                       "header_jwk": { "kty": "oct" } }),
    );
    // 16: the private key in the header.
    specs.push(
        json!({ "key": ec.private, "alg": "ES256", "claims": good(&token),
                       "header_jwk": ec.private }),
    );
    // 17: a proof for the unbound token, sent with the DPoP scheme.
    specs.push(spec(&ec, "ES256", good(&unbound)));
    // 18: a proof for the legacy (dpop off) provider's bound token.
    specs.push(spec(&ec, "ES256", good(&legacy_bound)));
    let minted = proofs(specs);
    let dpop = |token: &str| format!("DPoP {token}");
    let bearer = |token: &str| format!("Bearer {token}");
    let plain = |authorization: &str, proofs: &[&str]| {
        let mut headers = vec![("host", "api.test"), ("authorization", authorization)];
        headers.extend(proofs.iter().map(|p| ("dpop", *p)));
        envoy.request("GET", "/api/docs?page=2", &headers)
    };
    let over_tls = |authorization: &str, proof: &str| {
        envoy.https_request(
            "GET",
            "/api/docs",
            &[
                ("host", "api.test"),
                ("authorization", authorization),
                ("dpop", proof),
            ],
        )
    };

    // Accepted: every key type, plain text and TLS; the upstream sees neither the token nor
    // the proof's scheme, and the identity headers are set.
    for (case, auth, proof) in [
        ("ES256 over plain http", dpop(&token), &minted[0]),
        (
            "RS256 (host verify_signature)",
            dpop(&rsa_token),
            &minted[2],
        ),
        ("PS256", dpop(&rsa_token), &minted[3]),
        ("EdDSA", dpop(&ed_token), &minted[4]),
        (
            "required mode with a proof",
            dpop(&strict_token),
            &minted[5],
        ),
    ] {
        envoy.clear_upstream_requests();
        let response = plain(&auth, &[proof]);
        assert_eq!(response.status, 200, "{case}: {}", response.body_str());
        let seen = common::only_upstream_request(&envoy, case);
        assert_eq!(seen.header("x-user-id"), Some("alice"), "{case}");
        assert_eq!(seen.header("authorization"), None, "{case}: token removed");
        assert_eq!(
            seen.header("dpop"),
            Some(proof.as_str()),
            "{case}: the proof goes on"
        );
    }
    let response = over_tls(&dpop(&token), &minted[1]);
    assert_eq!(response.status, 200, "over TLS: {}", response.body_str());
    // An unbound token still works as a bearer token where DPoP is optional or off.
    for (case, token) in [("optional", &unbound), ("off", &legacy_unbound)] {
        let response = plain(&bearer(token), &[]);
        assert_eq!(
            response.status,
            200,
            "{case} bearer: {}",
            response.body_str()
        );
    }

    // Refused, the proof at fault: RFC 9449's challenge.
    let proof_cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        ("replayed proof", dpop(&token), vec![&minted[0]], "replayed"),
        ("wrong htm", dpop(&token), vec![&minted[6]], "htm"),
        ("wrong htu", dpop(&token), vec![&minted[7]], "htu"),
        (
            "https proof on plain http",
            dpop(&token),
            vec![&minted[8]],
            "htu",
        ),
        ("stale iat", dpop(&token), vec![&minted[10]], "iat"),
        ("wrong ath", dpop(&token), vec![&minted[11]], "ath"),
        ("wrong typ", dpop(&token), vec![&minted[13]], "typ"),
        (
            "bad signature",
            dpop(&token),
            vec![&minted[14]],
            "signature",
        ),
        (
            "symmetric alg",
            dpop(&token),
            vec![&minted[15]],
            "symmetric",
        ),
        ("private jwk", dpop(&token), vec![&minted[16]], "private"),
        ("no proof", dpop(&token), vec![], "exactly one"),
        (
            "two proofs",
            dpop(&token),
            vec![&minted[9], &minted[9]],
            "exactly one",
        ),
    ];
    for (case, auth, proofs, reason) in &proof_cases {
        let response = plain(auth, proofs);
        assert_refusal(case, &response, 401, "invalid_token", BAD_PROOF);
        check_event(&envoy, case, &response, reason, &[&token]);
    }
    let response = over_tls(&dpop(&token), &minted[9]);
    assert_refusal(
        "http proof over TLS",
        &response,
        401,
        "invalid_token",
        BAD_PROOF,
    );
    check_event(&envoy, "http proof over TLS", &response, "htu", &[&token]);

    // Refused, the token at fault: the usual invalid_token answer.
    let token_cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        (
            "proof key is not the bound key",
            dpop(&other_key_token),
            vec![&minted[12]],
            "cnf.jkt",
        ),
        ("bound token as bearer", bearer(&token), vec![], "bearer"),
        (
            "bound token as bearer, with its proof",
            bearer(&token),
            vec![&minted[9]],
            "bearer",
        ),
        (
            "bound token as bearer on a dpop off provider",
            bearer(&legacy_bound),
            vec![],
            "bearer",
        ),
        (
            "bearer on a required provider",
            bearer(&strict_unbound),
            vec![],
            "requires DPoP",
        ),
        (
            "unbound token with the DPoP scheme",
            dpop(&unbound),
            vec![&minted[17]],
            "not bound",
        ),
        (
            "DPoP scheme on a dpop off provider",
            dpop(&legacy_bound),
            vec![&minted[18]],
            "no provider",
        ),
    ];
    for (case, auth, proofs, reason) in &token_cases {
        let response = plain(auth, proofs);
        assert_refusal(case, &response, 401, "invalid_token", BAD_TOKEN);
        check_event(&envoy, case, &response, reason, &[&token, &legacy_bound]);
    }
}

/// The refusal's security event names the reason and never the token.
fn check_event(
    envoy: &Envoy,
    case: &str,
    response: &common::Response,
    reason: &str,
    secrets: &[&str],
) {
    let event = event_of(envoy, case, response);
    assert_eq!(event["event"], "auth_failure", "{case}: {event}");
    let text = event["reason"].as_str().unwrap_or_default();
    assert!(
        text.contains(reason),
        "{case}: reason {text:?} should name {reason:?}"
    );
    let line = event.to_string();
    for secret in secrets {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(
            !line.contains(signature),
            "{case}: the token leaked into {line}"
        );
    }
}

#[test]
fn one_proof_sent_many_times_at_once_is_accepted_once_across_workers() {
    let envoy = start();
    let ec = keygen("EC");
    let token = access_token(ISSUER, Some(&ec.thumbprint));
    const ROUNDS: usize = 4;
    const COPIES: usize = 16;
    let minted = proofs(
        (0..ROUNDS)
            .map(|_| spec(&ec, "ES256", proof_claims("GET", PLAIN_URL, &token)))
            .collect(),
    );
    let envoy = Arc::new(envoy);
    let mut refused_ids: Vec<Vec<String>> = Vec::new();
    for (round, proof) in minted.iter().enumerate() {
        let barrier = Arc::new(Barrier::new(COPIES));
        let statuses: Vec<(u16, Option<String>, String)> = (0..COPIES)
            .map(|_| {
                let (envoy, barrier) = (Arc::clone(&envoy), Arc::clone(&barrier));
                let (authorization, proof) = (format!("DPoP {token}"), proof.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    // One connection per copy: Envoy spreads them over its two workers.
                    let response = envoy.request(
                        "GET",
                        "/api/docs",
                        &[
                            ("host", "api.test"),
                            ("authorization", &authorization),
                            ("dpop", &proof),
                        ],
                    );
                    let challenge = response.header("www-authenticate").map(str::to_string);
                    let request_id = response.header("x-request-id").unwrap_or_default();
                    (response.status, challenge, request_id.to_string())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect();
        let accepted = statuses
            .iter()
            .filter(|(status, ..)| *status == 200)
            .count();
        assert_eq!(
            accepted, 1,
            "round {round}: exactly one copy accepted: {statuses:?}"
        );
        for (status, challenge, _) in statuses.iter().filter(|(status, ..)| *status != 200) {
            assert_eq!(*status, 401, "round {round}: {statuses:?}");
            assert_eq!(challenge.as_deref(), BAD_PROOF, "round {round}");
        }
        refused_ids.push(
            statuses
                .into_iter()
                .filter(|(status, ..)| *status != 200)
                .map(|(.., id)| id)
                .collect(),
        );
    }
    assert_eq!(envoy.upstream_requests().len(), ROUNDS);

    // Which worker refused each copy: the thread id of its security event's log line. When one
    // round's refusals come from both workers, whichever worker accepted the proof, a copy on
    // the other one was refused: the replay table holds across workers, not just within one.
    let worker_of = |request_id: &str| {
        let (_, line) = common::event_line_with_id(&envoy, "replayed copy", request_id);
        assert!(line.contains("replayed"), "{line}");
        common::log_thread(&line).unwrap_or_else(|| panic!("no thread in {line}"))
    };
    let spans_both_workers = refused_ids.iter().any(|ids| {
        let mut workers: Vec<String> = ids.iter().map(|id| worker_of(id)).collect();
        workers.sort();
        workers.dedup();
        workers.len() == 2
    });
    assert!(
        spans_both_workers,
        "no round's copies reached both workers (Envoy --concurrency 2)"
    );
}

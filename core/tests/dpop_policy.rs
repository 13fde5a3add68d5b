//! DPoP through the whole request pipeline, natively: the scheme the proof must name comes from
//! the transport (TLS as the host saw it, `x-forwarded-proto` only from a trusted hop), the
//! replay table lives in the shared store every worker sees, bound tokens never pass as bearer
//! tokens, and the answers are RFC 9449's. Proofs are signed with the test keys (support::mint);
//! tests/envoy_dpop.rs does the same through Envoy with proofs minted by jwcrypto.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::authn::jwt::b64url;
use api_guard_core::config;
use api_guard_core::pipeline::policy::{Decision, Policy, Verdict};
use api_guard_core::request::head::RequestHead;
use api_guard_core::support::mint;
use api_guard_core::support::test_env::TestHost;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "https://api.test";
const NOW_S: u64 = 1_800_000_000;
/// jwcrypto's RFC 7638 thumbprint of tests/keys/p256-other.json (the client's key here).
const CLIENT_JKT: &str = "wVqbC47o1HG3nNedsHzya8jQnteIZdNdTVyMQ6nDKnw";

fn key(name: &str) -> Value {
    let path = format!("{}/../tests/keys/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn policy(dpop: &str, trust_forwarded_proto: bool) -> Policy {
    let config = json!({
        "trust_forwarded_proto": trust_forwarded_proto,
        "jwt": { "providers": [{
            "name": "main", "issuer": ISSUER, "audiences": [AUDIENCE],
            "jwks": { "inline": { "keys": [mint::public_jwk(&key("p256"))] } },
            "claims_to_headers": [ { "claim": "sub", "header": "x-user-id" } ],
            "dpop": dpop
        }]},
        "routes": [ { "name": "api", "match": { "path_prefix": "/" }, "auth": "jwt" } ]
    });
    config::load(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn token(jkt: Option<&str>) -> String {
    let mut claims = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
                             "iat": NOW_S, "exp": NOW_S + 600 });
    if let Some(jkt) = jkt {
        claims["cnf"] = json!({ "jkt": jkt });
    }
    mint::sign(&key("p256"), Alg::ES256, claims.as_object().unwrap()).unwrap()
}

fn proof(htu: &str, jti: &str, token: &str) -> String {
    let client = key("p256-other");
    let header = json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": mint::public_jwk(&client) });
    let ath = b64url::encode(&Sha256::digest(token.as_bytes()));
    let claims = json!({ "htm": "GET", "htu": htu, "iat": NOW_S, "jti": jti, "ath": ath });
    mint::sign_raw(
        &client,
        Alg::ES256,
        &header.to_string(),
        &claims.to_string(),
    )
    .unwrap()
}

fn head(tls: bool, extra: &[(&str, &str)]) -> RequestHead {
    let mut headers = vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), "/docs/a?page=2".to_string()),
        (":authority".to_string(), "api.test".to_string()),
        ("x-request-id".to_string(), "rid-1".to_string()),
    ];
    headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    let mut head = RequestHead::from_host(headers, Some("10.0.0.1:1234"));
    head.set_over_tls(tls);
    head
}

/// (status, WWW-Authenticate, the event's reason).
fn outcome(decision: &Decision) -> (u16, Option<String>, String) {
    let reason = decision
        .event
        .as_ref()
        .map(|e| e.reason.clone())
        .unwrap_or_default();
    match &decision.verdict {
        Verdict::Allow(_) => (200, None, reason),
        Verdict::Deny(reply) => {
            let challenge = reply
                .headers
                .iter()
                .find(|(n, _)| n == "www-authenticate")
                .map(|(_, v)| v.clone());
            (reply.status, challenge, reason)
        }
        other => panic!("unexpected verdict {other:?}"),
    }
}

const BAD_PROOF: &str = "DPoP error=\"invalid_dpop_proof\"";
const BAD_TOKEN: &str = "Bearer realm=\"api\", error=\"invalid_token\"";

#[test]
fn the_proof_names_the_scheme_envoy_saw() {
    let policy = policy("optional", false);
    let token = token(Some(CLIENT_JKT));
    let auth = format!("DPoP {token}");
    let mut host = TestHost::new(NOW_S);
    let mut send = |tls: bool, htu: &str, jti: &str, extra: &[(&str, &str)]| {
        let proof = proof(htu, jti, &token);
        let mut headers = vec![("authorization", auth.as_str()), ("dpop", proof.as_str())];
        headers.extend_from_slice(extra);
        outcome(&policy.check_request(&head(tls, &headers), &mut host.env(false)))
    };
    assert_eq!(send(true, "https://api.test/docs/a", "1", &[]).0, 200);
    assert_eq!(send(false, "http://api.test/docs/a", "2", &[]).0, 200);
    let (status, challenge, reason) = send(false, "https://api.test/docs/a", "3", &[]);
    assert_eq!((status, challenge.as_deref()), (401, Some(BAD_PROOF)));
    assert!(reason.contains("htu"), "{reason}");
    assert_eq!(send(true, "http://api.test/docs/a", "4", &[]).0, 401);
    // A client's own x-forwarded-proto makes no https request unless the hop is trusted.
    let forwarded = [("x-forwarded-proto", "https")];
    assert_eq!(
        send(false, "https://api.test/docs/a", "5", &forwarded).0,
        401
    );
    let trusting = policy_trusting();
    let proof = proof("https://api.test/docs/a", "6", &token);
    let headers = [
        ("authorization", auth.as_str()),
        ("dpop", proof.as_str()),
        ("x-forwarded-proto", "https"),
    ];
    let decision = trusting.check_request(&head(false, &headers), &mut host.env(false));
    assert_eq!(outcome(&decision).0, 200, "{:?}", outcome(&decision));
}

fn policy_trusting() -> Policy {
    policy("optional", true)
}

#[test]
fn a_proof_is_accepted_once_by_every_worker_sharing_the_store() {
    let policy = policy("required", false);
    let token = token(Some(CLIENT_JKT));
    let auth = format!("DPoP {token}");
    let proof = proof("https://api.test/docs/a", "once", &token);
    let headers = [("authorization", auth.as_str()), ("dpop", proof.as_str())];
    let mut worker_a = TestHost::new(NOW_S);
    let first = policy.check_request(&head(true, &headers), &mut worker_a.env(false));
    assert_eq!(outcome(&first).0, 200, "{:?}", outcome(&first));
    match &first.verdict {
        Verdict::Allow(forward) => {
            assert!(forward
                .remove_headers
                .contains(&"authorization".to_string()));
            assert!(forward
                .set_headers
                .contains(&("x-user-id".to_string(), "alice".to_string())));
        }
        other => panic!("{other:?}"),
    }
    // Another worker: its own cache, the same shared data.
    let mut worker_b = TestHost::new(NOW_S);
    worker_b.store = worker_a.store.snapshot();
    let again = outcome(&policy.check_request(&head(true, &headers), &mut worker_b.env(false)));
    assert_eq!((again.0, again.1.as_deref()), (401, Some(BAD_PROOF)));
    assert!(again.2.contains("replayed"), "{}", again.2);
}

#[test]
fn bound_tokens_never_pass_as_bearer_tokens() {
    for mode in ["off", "optional", "required"] {
        let policy = policy(mode, false);
        let mut host = TestHost::new(NOW_S);
        let bearer = format!("Bearer {}", token(Some(CLIENT_JKT)));
        let (status, challenge, reason) = outcome(&policy.check_request(
            &head(true, &[("authorization", &bearer)]),
            &mut host.env(false),
        ));
        assert_eq!(
            (status, challenge.as_deref()),
            (401, Some(BAD_TOKEN)),
            "{mode}"
        );
        assert!(reason.contains("bearer"), "{mode}: {reason}");
        let unbound = format!("Bearer {}", token(None));
        let status = outcome(&policy.check_request(
            &head(true, &[("authorization", &unbound)]),
            &mut host.env(false),
        ))
        .0;
        assert_eq!(status, if mode == "required" { 401 } else { 200 }, "{mode}");
    }
}

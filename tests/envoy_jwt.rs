//! JWT authentication through a real Envoy: the filter built as wasm, loaded by Envoy 1.40 with
//! two workers, in front of a recording upstream. Each test function is one group sharing one
//! Envoy; a failing check names its case.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::support::mint;
use common::{assert_refusal, bearer, claims, sign, test_key, unix_now, Envoy};
use serde_json::{json, Value};
use std::time::Duration;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://api.test";
const COOKIE_ISSUER: &str = "https://cookie-issuer.test";

/// Valid claims for alice from this file's issuer; `extra` adds, replaces or (`null`) removes.
fn alice(extra: Value) -> Value {
    claims(ISSUER, AUDIENCE, "alice", extra)
}

fn token(key_name: &str, alg: Alg, extra: Value) -> String {
    sign(key_name, alg, &alice(extra))
}

fn public_keys(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| mint::public_jwk(&test_key(n)))
            .collect(),
    )
}

/// Two providers: one reading `Authorization: Bearer` with every algorithm and every test key,
/// one reading a cookie and forwarding its token.
fn plugin_config(mode: &str) -> String {
    json!({
        "mode": mode,
        "jwt": { "providers": [
            {
                "name": "main",
                "issuer": ISSUER,
                "audiences": [AUDIENCE, "https://other-api.test"],
                "algorithms": ["RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA","HS256","HS384","HS512"],
                "jwks": { "inline": { "keys": public_keys(&["rsa2048", "p256", "p384", "ed25519", "hs512"]) } },
                "max_lifetime_seconds": 3600,
                "claims_to_headers": [
                    { "claim": "sub", "header": "x-user-id" },
                    { "claim": "roles", "header": "x-user-roles" }
                ],
                "forward_token": false
            },
            {
                "name": "cookie",
                "issuer": COOKIE_ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["ES256"],
                "jwks": { "inline": { "keys": public_keys(&["p256-other"]) } },
                "from": [ { "cookie": "session" } ],
                "claims_to_headers": [ { "claim": "sub", "header": "x-user-id" } ],
                "forward_token": true
            }
        ]},
        "routes": [
            { "name": "health", "match": { "path_exact": "/healthz" }, "auth": "none" },
            { "name": "public", "match": { "path_prefix": "/public/", "methods": ["GET"] }, "auth": "none" },
            { "name": "api", "match": { "path_prefix": "/api/" }, "auth": "jwt" }
        ]
    })
    .to_string()
}

#[test]
fn jwt_authentication_through_envoy() {
    let envoy = Envoy::with_plugin(&plugin_config("enforce"));

    // Every algorithm, accepted with a valid token; identity forwarded, credential removed.
    let cases = [
        ("rsa2048", Alg::RS256),
        ("rsa2048", Alg::RS384),
        ("rsa2048", Alg::RS512),
        ("rsa2048", Alg::PS256),
        ("rsa2048", Alg::PS384),
        ("rsa2048", Alg::PS512),
        ("p256", Alg::ES256),
        ("p384", Alg::ES384),
        ("ed25519", Alg::EdDSA),
        ("hs512", Alg::HS256),
        ("hs512", Alg::HS384),
        ("hs512", Alg::HS512),
    ];
    for (key_name, alg) in cases {
        envoy.clear_upstream_requests();
        let sub = format!("user-{alg}");
        let token = token(
            key_name,
            alg,
            json!({ "sub": sub, "roles": ["reader", "writer"] }),
        );
        let response = envoy.request(
            "GET",
            "/api/documents",
            &[("authorization", &bearer(&token))],
        );
        assert_eq!(response.status, 200, "{alg}: {}", response.body_str());
        assert!(
            response.header("x-request-id").is_some(),
            "{alg}: x-request-id on an allowed response"
        );
        let seen = envoy.upstream_requests();
        assert_eq!(seen.len(), 1, "{alg}: one request upstream");
        assert_eq!(
            seen[0].header_all("x-user-id"),
            vec![sub.as_str()],
            "{alg}: x-user-id"
        );
        assert_eq!(
            seen[0].header("x-user-roles"),
            Some("reader,writer"),
            "{alg}: roles joined"
        );
        assert_eq!(
            seen[0].header("authorization"),
            None,
            "{alg}: credential removed upstream"
        );
    }

    // A cached token (second use) still works and still forwards identity.
    let cached = token("p256", Alg::ES256, json!({ "sub": "cached" }));
    for round in 0..3 {
        envoy.clear_upstream_requests();
        let response = envoy.request("GET", "/api/x", &[("authorization", &bearer(&cached))]);
        assert_eq!(response.status, 200, "cached round {round}");
        assert_eq!(
            envoy.upstream_requests()[0].header("x-user-id"),
            Some("cached")
        );
    }

    // Each claim rule, refused; nothing reaches the upstream.
    let t = unix_now();
    let refusals: Vec<(&str, String, &str)> = vec![
        (
            "iss mismatch",
            token("p256", Alg::ES256, json!({ "iss": "https://evil.test" })),
            "invalid_token",
        ),
        (
            "aud mismatch",
            token(
                "p256",
                Alg::ES256,
                json!({ "aud": "https://elsewhere.test" }),
            ),
            "invalid_token",
        ),
        (
            "aud missing",
            token("p256", Alg::ES256, json!({ "aud": null })),
            "invalid_token",
        ),
        (
            "expired",
            token(
                "p256",
                Alg::ES256,
                json!({ "iat": t - 1000, "exp": t - 120 }),
            ),
            "token_expired",
        ),
        (
            "exp missing",
            token("p256", Alg::ES256, json!({ "exp": null })),
            "invalid_token",
        ),
        (
            "exp as string",
            token("p256", Alg::ES256, json!({ "exp": (t + 600).to_string() })),
            "invalid_token",
        ),
        (
            "exp as float",
            token("p256", Alg::ES256, json!({ "exp": (t + 600) as f64 + 0.5 })),
            "invalid_token",
        ),
        (
            "nbf in the future",
            token("p256", Alg::ES256, json!({ "nbf": t + 3600 })),
            "invalid_token",
        ),
        (
            "iat in the future",
            token(
                "p256",
                Alg::ES256,
                json!({ "iat": t + 3600, "exp": t + 4000 }),
            ),
            "invalid_token",
        ),
        (
            "lifetime too long",
            token("p256", Alg::ES256, json!({ "iat": t, "exp": t + 7200 })),
            "invalid_token",
        ),
        (
            "signed by an unknown key",
            token("p256-other", Alg::ES256, json!({})),
            "invalid_token",
        ),
        (
            "alg none",
            {
                let body = api_guard_core::authn::jwt::b64url::encode(
                    alice(json!({})).to_string().as_bytes(),
                );
                format!(
                    "{}.{body}.",
                    api_guard_core::authn::jwt::b64url::encode(br#"{"alg":"none","typ":"JWT"}"#)
                )
            },
            "invalid_token",
        ),
        (
            "tampered claims",
            {
                let good = token("p256", Alg::ES256, json!({ "sub": "alice" }));
                let parts: Vec<&str> = good.split('.').collect();
                let forged = api_guard_core::authn::jwt::b64url::encode(
                    alice(json!({ "sub": "admin" })).to_string().as_bytes(),
                );
                format!("{}.{forged}.{}", parts[0], parts[2])
            },
            "invalid_token",
        ),
        (
            "oversized token",
            token("p256", Alg::ES256, json!({ "pad": "x".repeat(9000) })),
            "invalid_token",
        ),
    ];
    for (case, bad_token, code) in &refusals {
        envoy.clear_upstream_requests();
        let response = envoy.request(
            "GET",
            "/api/documents",
            &[("authorization", &bearer(bad_token))],
        );
        assert_refusal(
            case,
            &response,
            401,
            code,
            Some(r#"Bearer realm="api", error="invalid_token""#),
        );
        assert!(
            envoy.upstream_requests().is_empty(),
            "{case}: nothing reaches the upstream"
        );
    }

    // No token at all: 401 unauthorized with the bare challenge.
    let response = envoy.request("GET", "/api/documents", &[]);
    assert_refusal(
        "no token",
        &response,
        401,
        "unauthorized",
        Some(r#"Bearer realm="api""#),
    );
    // A token in the URL is never read: the request is refused outright (URLs end up in logs).
    let in_url = token("p256", Alg::ES256, json!({}));
    let response = envoy.request("GET", &format!("/api/documents?access_token={in_url}"), &[]);
    assert_refusal("token in query", &response, 400, "credentials_in_url", None);
    let response = envoy.request("GET", &format!("/public/info?page=2&token={in_url}"), &[]);
    assert_refusal(
        "token in query on a public route",
        &response,
        400,
        "credentials_in_url",
        None,
    );
    // Another scheme in Authorization is not a bearer token.
    let response = envoy.request(
        "GET",
        "/api/documents",
        &[("authorization", "Basic YWxpY2U6c2VjcmV0")],
    );
    assert_refusal(
        "basic auth",
        &response,
        401,
        "unauthorized",
        Some(r#"Bearer realm="api""#),
    );
    assert!(envoy.upstream_requests().is_empty());

    // Spoofed identity headers are stripped: without a token on a public route...
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/public/info",
        &[("x-user-id", "admin"), ("x-user-roles", "admin")],
    );
    assert_eq!(response.status, 200, "public route without a token");
    let seen = envoy.upstream_requests();
    assert_eq!(
        seen[0].header("x-user-id"),
        None,
        "spoofed x-user-id stripped on a public route"
    );
    assert_eq!(
        seen[0].header("x-user-roles"),
        None,
        "spoofed x-user-roles stripped on a public route"
    );
    // ...and with a token: the verified value replaces the spoofed one, and a claim the token
    // lacks leaves no header at all.
    envoy.clear_upstream_requests();
    let good = token("p256", Alg::ES256, json!({ "sub": "alice" }));
    let response = envoy.request(
        "GET",
        "/api/documents",
        &[
            ("authorization", &bearer(&good)),
            ("x-user-id", "admin"),
            ("x-user-roles", "admin"),
        ],
    );
    assert_eq!(response.status, 200);
    let seen = envoy.upstream_requests();
    assert_eq!(
        seen[0].header_all("x-user-id"),
        vec!["alice"],
        "spoofed x-user-id replaced"
    );
    assert_eq!(
        seen[0].header("x-user-roles"),
        None,
        "spoofed x-user-roles stripped with a token"
    );

    // The health check is public too.
    assert_eq!(envoy.request("GET", "/healthz", &[]).status, 200);

    // Cookie provider: its token comes from the cookie and is forwarded (forward_token: true).
    envoy.clear_upstream_requests();
    let cookie_token = sign(
        "p256-other",
        Alg::ES256,
        &alice(json!({ "iss": COOKIE_ISSUER, "sub": "bob" })),
    );
    let cookie = format!("theme=dark; session={cookie_token}");
    let response = envoy.request("GET", "/api/documents", &[("cookie", &cookie)]);
    assert_eq!(
        response.status,
        200,
        "cookie token: {}",
        response.body_str()
    );
    let seen = envoy.upstream_requests();
    assert_eq!(seen[0].header("x-user-id"), Some("bob"));
    assert_eq!(
        seen[0].header("cookie"),
        Some(cookie.as_str()),
        "forward_token: true keeps the credential"
    );
    // A token of the cookie issuer presented in the header is not accepted by the header provider.
    let response = envoy.request(
        "GET",
        "/api/documents",
        &[("authorization", &bearer(&cookie_token))],
    );
    assert_refusal(
        "issuer bound to its token location",
        &response,
        401,
        "invalid_token",
        Some(r#"Bearer realm="api", error="invalid_token""#),
    );

    // Routing: no route is 404; an unnormalisable path is 400; a dot-segment path is matched
    // (and forwarded) normalised, so `/public/../api/` cannot dodge authentication.
    envoy.clear_upstream_requests();
    assert_refusal(
        "no route",
        &envoy.request("GET", "/nowhere", &[]),
        404,
        "not_found",
        None,
    );
    assert_refusal(
        "POST on a GET-only public route",
        &envoy.request("POST", "/public/info", &[]),
        404,
        "not_found",
        None,
    );
    assert_refusal(
        "encoded slash",
        &envoy.request("GET", "/public%2F..%2Fapi/documents", &[]),
        400,
        "bad_request",
        None,
    );
    assert_refusal(
        "escape above root",
        &envoy.request("GET", "/public/../../etc/passwd", &[]),
        400,
        "bad_request",
        None,
    );
    assert_refusal(
        "dot segments into /api",
        &envoy.request("GET", "/public/../api/documents", &[]),
        401,
        "unauthorized",
        Some(r#"Bearer realm="api""#),
    );
    assert!(
        envoy.upstream_requests().is_empty(),
        "refusals never reach the upstream"
    );
    let response = envoy.request("GET", "/public/./a//b/%7Euser?q=%2F", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(
        envoy.upstream_requests()[0].path,
        "/public/a/b/~user?q=%2F",
        "the upstream sees the normalised path"
    );

    // Every refusal wrote one security event, with the reason and never the token.
    assert!(
        envoy.wait_for_log("\"reason\":\"aud mismatch\"", Duration::from_secs(5)),
        "event with the internal reason"
    );
    assert!(envoy.wait_for_log(
        "\"reason\":\"path cannot be normalised: dot segment escapes root\"",
        Duration::from_secs(5)
    ));
    let log = envoy.log();
    for (case, bad_token, _) in &refusals {
        let signature = bad_token.rsplit('.').next().unwrap_or_default();
        if signature.len() > 20 {
            assert!(
                !log.contains(signature),
                "{case}: the token must never be logged"
            );
        }
    }
    assert!(!log.contains(&good), "a good token is never logged");
    let events: Vec<Value> = log
        .lines()
        .filter_map(|l| l.find("{\"type\":\"security_event\"").map(|i| &l[i..]))
        .map(|j| serde_json::from_str(j).expect("event is JSON"))
        .collect();
    let expired = events
        .iter()
        .find(|e| e["code"] == "token_expired")
        .expect("an expired event");
    assert_eq!(expired["event"], "auth_failure");
    assert_eq!(expired["route"], "api");
    assert_eq!(expired["client"], "127.0.0.1");
    assert_eq!(expired["status"], 401);
    assert!(expired["request_id"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(expired["reason"], "token expired");
    assert!(events
        .iter()
        .any(|e| e["event"] == "no_route" && e["code"] == "not_found"));
}

#[test]
fn report_mode_logs_refusals_but_blocks_nothing() {
    let envoy = Envoy::with_plugin(&plugin_config("report"));
    let response = envoy.request("GET", "/api/documents", &[("x-user-id", "admin")]);
    assert_eq!(response.status, 200, "report mode lets the request through");
    let seen = envoy.upstream_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("x-user-id"),
        None,
        "identity headers are still stripped in report mode"
    );
    assert!(envoy.wait_for_log("\"mode\":\"report\"", Duration::from_secs(5)));
    assert!(envoy.log().contains("\"code\":\"unauthorized\""));
}

#[test]
fn bad_config_fails_closed_and_names_the_json_path() {
    let bad = json!({
        "routes": [
            { "name": "api", "match": { "path_prefix": "/api/" }, "auth": "jwt" },
            { "name": "typo", "match": { "path_prefix": "/x/" }, "auth": "none", "rate_limt": "login" }
        ]
    })
    .to_string();
    let envoy = Envoy::with_plugin(&bad);
    for path in ["/api/documents", "/x/y", "/healthz"] {
        let response = envoy.request("GET", path, &[]);
        assert_refusal(path, &response, 503, "service_unavailable", None);
    }
    assert!(
        envoy.upstream_requests().is_empty(),
        "nothing reaches the upstream"
    );
    assert!(
        envoy.wait_for_log("routes[0].auth", Duration::from_secs(5))
            || envoy.log().contains("routes[1]"),
        "{}",
        envoy.log()
    );
    let log = envoy.log();
    assert!(log.contains("invalid configuration"), "log says why");

    let semantic = json!({
        "jwt": { "providers": [ { "name": "p", "issuer": ISSUER, "audiences": [AUDIENCE],
                 "algorithms": ["none"], "jwks": { "inline": { "keys": public_keys(&["p256"]) } } } ] },
        "routes": [ { "name": "api", "match": { "path_prefix": "/api/" }, "auth": "jwt" } ]
    })
    .to_string();
    let envoy = Envoy::with_plugin(&semantic);
    let response = envoy.request(
        "GET",
        "/api/x",
        &[(
            "authorization",
            &bearer(&token("p256", Alg::ES256, json!({}))),
        )],
    );
    assert_refusal(
        "semantic config error",
        &response,
        503,
        "service_unavailable",
        None,
    );
    assert!(envoy.upstream_requests().is_empty());
    assert!(
        envoy.wait_for_log("jwt.providers[0].algorithms[0]", Duration::from_secs(5)),
        "the error names its JSON path: {}",
        envoy.log()
    );
}

//! Issue 4 through a real Envoy: API keys (configured header, `Authorization: ApiKey`, prefix and
//! hash lookup, expiry, never from the URL), `jwt_or_api_key`, scopes and roles (`require`),
//! owner checks (404, indistinguishable from a path that matches no route), the authorization
//! security events, and 10,000 configured keys. The filter is built as wasm (`make build`) and
//! loaded by Envoy with two workers in front of a recording upstream. Each test function is one
//! group sharing one Envoy; a failing check names its case.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use api_guard_core::authn::api_keys::key_sha256_hex;
use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::support::mint;
use common::{
    assert_refusal, bearer, claims, event_of, only_upstream_request, sign, test_key, unix_now,
    Envoy, Response,
};
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://api.test";
/// The configured key header: not the default `x-api-key`, so that the configuration is what
/// decides where keys are read (and which query parameter name is refused).
const KEY_HEADER: &str = "x-service-key";
const CHALLENGE_NONE: &str = r#"Bearer realm="api""#;
const CHALLENGE_BAD: &str = r#"Bearer realm="api", error="invalid_token""#;

// Keys with known values; the configuration holds only their SHA-256.
/// `billing-svc`: invoices:read invoices:write, expires in 2099.
const BILLING_KEY: &str = "ag_live_Q3vN8rT2xK7mB4pL9sD1fG6hJ0wE5yU";
/// `docs-reader`: documents:read invoices:read.
const DOCS_KEY: &str = "ag_live_Z8cV1bN4mA7sD0fG3hJ6kL9qW2eR5tY";
/// `plain`, under a second prefix, without scopes.
const PLAIN_KEY: &str = "ag_test_P4oI7uY0tR3eW6qA9sD2fG5hJ8kL1zX";
/// `old-svc`: expired in 2020.
const EXPIRED_KEY: &str = "ag_live_E1xP2iR3eD4kE5yX6yZ7aB8cD9eF0gH";
/// `alice`: a key whose id equals a JWT subject (it must still own nothing).
const ALICE_KEY: &str = "ag_live_A9lI8cE7kE6yS5eC4rE3tV2aL1uE0xQ";
/// BILLING_KEY with its last character changed: right prefix, wrong secret.
const WRONG_SECRET_KEY: &str = "ag_live_Q3vN8rT2xK7mB4pL9sD1fG6hJ0wE5yV";
/// BILLING_KEY's secret under a prefix nobody configured.
const UNKNOWN_PREFIX_KEY: &str = "ag_prod_Q3vN8rT2xK7mB4pL9sD1fG6hJ0wE5yU";

/// Every key string the tests send: none may ever appear in Envoy's log.
const ALL_KEYS: [&str; 7] = [
    BILLING_KEY,
    DOCS_KEY,
    PLAIN_KEY,
    EXPIRED_KEY,
    ALICE_KEY,
    WRONG_SECRET_KEY,
    UNKNOWN_PREFIX_KEY,
];

/// Valid claims for alice from this file's issuer; `extra` adds, replaces or (`null`) removes.
fn alice(extra: Value) -> Value {
    claims(ISSUER, AUDIENCE, "alice", extra)
}

/// A valid ES256 token (sub `alice` unless `extra` says otherwise).
fn token(extra: Value) -> String {
    sign("p256", Alg::ES256, &alice(extra))
}

/// Signed by a key the provider does not know.
fn forged_token(extra: Value) -> String {
    sign("p256-other", Alg::ES256, &alice(extra))
}

fn expired_token(extra: Value) -> String {
    let t = unix_now();
    let mut extra = extra.as_object().unwrap().clone();
    extra.insert("iat".into(), json!(t - 1000));
    extra.insert("exp".into(), json!(t - 300));
    token(Value::Object(extra))
}

fn key_entry(
    id: &str,
    prefix: &str,
    key: &str,
    scopes: &[&str],
    expires_at: Option<&str>,
) -> Value {
    assert!(
        key.starts_with(prefix),
        "{id}: the key starts with its prefix"
    );
    let mut entry =
        json!({ "id": id, "prefix": prefix, "sha256": key_sha256_hex(key), "scopes": scopes });
    if let Some(at) = expires_at {
        entry["expires_at"] = json!(at);
    }
    entry
}

fn plugin_config() -> String {
    json!({
        "jwt": { "providers": [{
            "name": "main",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "algorithms": ["ES256"],
            "jwks": { "inline": { "keys": [mint::public_jwk(&test_key("p256"))] } },
            "claims_to_headers": [ { "claim": "sub", "header": "x-user-id" } ],
            "forward_token": false
        }]},
        "api_keys": {
            "header": KEY_HEADER,
            "keys": [
                key_entry("billing-svc", "ag_live_", BILLING_KEY, &["invoices:read", "invoices:write"], Some("2099-01-01T00:00:00Z")),
                key_entry("docs-reader", "ag_live_", DOCS_KEY, &["documents:read", "invoices:read"], None),
                key_entry("plain", "ag_test_", PLAIN_KEY, &[], None),
                key_entry("old-svc", "ag_live_", EXPIRED_KEY, &["documents:read"], Some("2020-01-01T00:00:00Z")),
                key_entry("alice", "ag_live_", ALICE_KEY, &["documents:read"], None)
            ]
        },
        "routes": [
            { "name": "public", "match": { "path_prefix": "/public/" }, "auth": "none" },
            { "name": "internal", "match": { "path_prefix": "/internal/" }, "auth": "api_key" },
            { "name": "either", "match": { "path_prefix": "/either/" }, "auth": "jwt_or_api_key" },
            { "name": "scopes-any", "match": { "path_prefix": "/scopes-any/" }, "auth": "jwt_or_api_key",
              "require": { "scopes_any": ["documents:read", "documents:admin"] } },
            { "name": "scopes-all", "match": { "path_prefix": "/scopes-all/" }, "auth": "jwt_or_api_key",
              "require": { "scopes_all": ["invoices:read", "invoices:write"] } },
            { "name": "roles-any", "match": { "path_prefix": "/roles-any/" }, "auth": "jwt_or_api_key",
              "require": { "roles_any": ["admin", "ops"] } },
            { "name": "roles-all", "match": { "path_prefix": "/roles-all/" }, "auth": "jwt",
              "require": { "roles_all": ["admin", "auditor"] } },
            { "name": "roles-all-one", "match": { "path_prefix": "/ops-only/" }, "auth": "jwt",
              "require": { "roles_all": ["ops"] } },
            { "name": "own-docs", "match": { "path_template": "/users/{id}/documents", "methods": ["GET"] },
              "auth": "jwt", "owner": { "param": "id", "claim": "sub" } },
            { "name": "own-profile", "match": { "path_template": "/accounts/{id}/profile" },
              "auth": "jwt_or_api_key", "owner": { "param": "id", "claim": "sub" } }
        ]
    })
    .to_string()
}

/// A refusal that nothing behind the filter saw.
fn assert_refused_before_upstream(
    envoy: &Envoy,
    case: &str,
    response: &Response,
    status: u16,
    code: &str,
    challenge: Option<&str>,
) {
    assert_refusal(case, response, status, code, challenge);
    assert!(
        envoy.upstream_requests().is_empty(),
        "{case}: nothing reaches the upstream"
    );
}

/// Checks the event of an authorization decision.
fn assert_authz_event(
    envoy: &Envoy,
    case: &str,
    response: &Response,
    route: &str,
    principal: &str,
    denied_rule: Option<&str>,
) {
    let event = event_of(envoy, case, response);
    assert_eq!(event["route"], route, "{case}: event route: {event}");
    assert_eq!(
        event["principal"], principal,
        "{case}: event principal: {event}"
    );
    assert_eq!(event["client"], "127.0.0.1", "{case}: event client");
    assert_eq!(
        event["status"], response.status,
        "{case}: event status: {event}"
    );
    match denied_rule {
        None => {
            assert_eq!(
                event["event"], "authz_allowed",
                "{case}: event name: {event}"
            );
        }
        Some(rule) => {
            assert_eq!(
                event["event"], "authz_denied",
                "{case}: event name: {event}"
            );
            let code = if response.status == 404 {
                "not_found"
            } else {
                "forbidden"
            };
            assert_eq!(event["code"], code, "{case}: event code: {event}");
            let reason = event["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains(rule),
                "{case}: the reason names the failing rule {rule:?}: {event}"
            );
        }
    }
}

/// No key, secret part of a key, or token used by the tests is in Envoy's log.
fn assert_log_has_no_secrets(envoy: &Envoy, tokens: &[String]) {
    let log = envoy.log();
    for key in ALL_KEYS {
        assert!(!log.contains(key), "the API key {key} must never be logged");
        let secret = &key["ag_live_".len()..];
        assert!(
            !log.contains(secret),
            "the secret part of {key} must never be logged"
        );
    }
    for token in tokens {
        assert!(
            !log.contains(token.as_str()),
            "a token must never be logged"
        );
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(
            signature.len() > 20 && !log.contains(signature),
            "a token's signature must never be logged"
        );
    }
}

#[test]
fn api_keys_through_envoy() {
    let envoy = Envoy::with_plugin(&plugin_config());
    let mut tokens: Vec<String> = Vec::new();

    // A valid key in the configured header: the key's id goes upstream, the key does not.
    envoy.clear_upstream_requests();
    let response = envoy.request("GET", "/internal/invoices", &[(KEY_HEADER, BILLING_KEY)]);
    assert_eq!(
        response.status,
        200,
        "key in header: {}",
        response.body_str()
    );
    assert!(response.header("x-request-id").is_some());
    let seen = only_upstream_request(&envoy, "key in header");
    assert_eq!(seen.header_all("x-api-key-id"), vec!["billing-svc"]);
    assert_eq!(seen.header(KEY_HEADER), None, "the key header is removed");
    assert_eq!(seen.header("authorization"), None);

    // A valid key in `Authorization: ApiKey <key>` (the scheme is case-insensitive, RFC 9110).
    for (case, value) in [
        ("ApiKey scheme", format!("ApiKey {DOCS_KEY}")),
        ("apikey scheme in lower case", format!("apikey {DOCS_KEY}")),
    ] {
        envoy.clear_upstream_requests();
        let response = envoy.request("GET", "/internal/invoices", &[("authorization", &value)]);
        assert_eq!(response.status, 200, "{case}: {}", response.body_str());
        let seen = only_upstream_request(&envoy, case);
        assert_eq!(
            seen.header_all("x-api-key-id"),
            vec!["docs-reader"],
            "{case}"
        );
        assert_eq!(
            seen.header("authorization"),
            None,
            "{case}: the authorization header is removed"
        );
        assert_eq!(seen.header(KEY_HEADER), None, "{case}");
    }

    // A key under a second prefix.
    envoy.clear_upstream_requests();
    let response = envoy.request("GET", "/internal/x", &[(KEY_HEADER, PLAIN_KEY)]);
    assert_eq!(
        response.status,
        200,
        "second prefix: {}",
        response.body_str()
    );
    assert_eq!(
        only_upstream_request(&envoy, "second prefix").header_all("x-api-key-id"),
        vec!["plain"]
    );

    // Refused keys: 401 invalid_api_key, nothing upstream.
    for (case, headers) in [
        (
            "wrong key with the right prefix",
            vec![(KEY_HEADER, WRONG_SECRET_KEY.to_string())],
        ),
        (
            "unknown prefix",
            vec![(KEY_HEADER, UNKNOWN_PREFIX_KEY.to_string())],
        ),
        ("expired key", vec![(KEY_HEADER, EXPIRED_KEY.to_string())]),
        (
            "expired key in authorization",
            vec![("authorization", format!("ApiKey {EXPIRED_KEY}"))],
        ),
        (
            "wrong key in authorization",
            vec![("authorization", format!("ApiKey {WRONG_SECRET_KEY}"))],
        ),
    ] {
        envoy.clear_upstream_requests();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let response = envoy.request("GET", "/internal/invoices", &headers);
        assert_refused_before_upstream(
            &envoy,
            case,
            &response,
            401,
            "invalid_api_key",
            Some(CHALLENGE_BAD),
        );
        let event = event_of(&envoy, case, &response);
        assert_eq!(event["event"], "auth_failure", "{case}: {event}");
        assert_eq!(event["code"], "invalid_api_key", "{case}: {event}");
        assert_eq!(event["route"], "internal", "{case}: {event}");
    }

    // No credential, or a key where keys are not read: 401 unauthorized with the bare challenge.
    for (case, path, headers) in [
        (
            "no credential on an api_key route",
            "/internal/invoices",
            vec![],
        ),
        (
            "no credential on a jwt_or_api_key route",
            "/either/x",
            vec![],
        ),
        (
            "a key in a header other than the configured one",
            "/internal/invoices",
            vec![("x-api-key", BILLING_KEY.to_string())],
        ),
        (
            "a key as a bearer token on an api_key route",
            "/internal/invoices",
            vec![("authorization", bearer(BILLING_KEY))],
        ),
    ] {
        envoy.clear_upstream_requests();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let response = envoy.request("GET", path, &headers);
        assert_refused_before_upstream(
            &envoy,
            case,
            &response,
            401,
            "unauthorized",
            Some(CHALLENGE_NONE),
        );
    }

    // A key (or token) in the query string, under each name: 400 credentials_in_url, whatever
    // the route, even with a valid key in the header; nothing upstream; a security event.
    let names = [
        "api_key",
        "apikey",
        "key",
        "token",
        "access_token",
        KEY_HEADER,
    ];
    for name in names {
        for (path, headers) in [
            (format!("/public/info?page=1&{name}={BILLING_KEY}"), vec![]),
            (
                format!("/internal/invoices?{name}={DOCS_KEY}"),
                vec![(KEY_HEADER, DOCS_KEY)],
            ),
            (format!("/no/route/here?{name}={PLAIN_KEY}&x=1"), vec![]),
        ] {
            let case = format!("{name} in the query of {}", path.split('?').next().unwrap());
            envoy.clear_upstream_requests();
            let response = envoy.request("GET", &path, &headers);
            assert_refused_before_upstream(
                &envoy,
                &case,
                &response,
                400,
                "credentials_in_url",
                None,
            );
            let event = event_of(&envoy, &case, &response);
            assert_eq!(event["event"], "credentials_in_url", "{case}: {event}");
            assert_eq!(event["code"], "credentials_in_url", "{case}: {event}");
            assert_eq!(event["status"], 400, "{case}: {event}");
            assert!(
                !event["path"].as_str().unwrap_or("?").contains('?'),
                "{case}: the event's path has no query: {event}"
            );
        }
    }
    // A bearer token in the query is refused the same way.
    let in_url = token(json!({}));
    tokens.push(in_url.clone());
    envoy.clear_upstream_requests();
    let response = envoy.request("GET", &format!("/either/x?access_token={in_url}"), &[]);
    assert_refused_before_upstream(
        &envoy,
        "token in the query",
        &response,
        400,
        "credentials_in_url",
        None,
    );

    // A spoofed x-api-key-id is stripped on a public route...
    envoy.clear_upstream_requests();
    let response = envoy.request("GET", "/public/info", &[("x-api-key-id", "billing-svc")]);
    assert_eq!(
        response.status,
        200,
        "public route: {}",
        response.body_str()
    );
    assert_eq!(
        only_upstream_request(&envoy, "spoof on a public route").header("x-api-key-id"),
        None,
        "spoofed x-api-key-id stripped on a public route"
    );
    // ...replaced by the verified id on a key-authenticated route...
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/internal/invoices",
        &[("x-api-key-id", "billing-svc"), (KEY_HEADER, DOCS_KEY)],
    );
    assert_eq!(response.status, 200, "{}", response.body_str());
    assert_eq!(
        only_upstream_request(&envoy, "spoof with a key").header_all("x-api-key-id"),
        vec!["docs-reader"],
        "spoofed x-api-key-id replaced by the verified key id"
    );
    // ...and stripped on a route authenticated by a token.
    let dave = token(json!({ "sub": "dave" }));
    tokens.push(dave.clone());
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/either/x",
        &[
            ("x-api-key-id", "billing-svc"),
            ("authorization", &bearer(&dave)),
        ],
    );
    assert_eq!(response.status, 200, "{}", response.body_str());
    let seen = only_upstream_request(&envoy, "spoof with a token");
    assert_eq!(
        seen.header("x-api-key-id"),
        None,
        "spoofed x-api-key-id stripped with a token"
    );
    assert_eq!(seen.header_all("x-user-id"), vec!["dave"]);

    // jwt_or_api_key: a key alone, a token alone, both.
    envoy.clear_upstream_requests();
    let response = envoy.request("GET", "/either/x", &[(KEY_HEADER, BILLING_KEY)]);
    assert_eq!(response.status, 200, "key only: {}", response.body_str());
    let seen = only_upstream_request(&envoy, "key only");
    assert_eq!(seen.header_all("x-api-key-id"), vec!["billing-svc"]);
    assert_eq!(seen.header("x-user-id"), None);
    assert_eq!(seen.header(KEY_HEADER), None);

    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/either/x",
        &[("authorization", &format!("ApiKey {BILLING_KEY}"))],
    );
    assert_eq!(
        response.status,
        200,
        "key only in authorization: {}",
        response.body_str()
    );
    let seen = only_upstream_request(&envoy, "key only in authorization");
    assert_eq!(seen.header_all("x-api-key-id"), vec!["billing-svc"]);
    assert_eq!(seen.header("authorization"), None);

    envoy.clear_upstream_requests();
    let response = envoy.request("GET", "/either/x", &[("authorization", &bearer(&dave))]);
    assert_eq!(response.status, 200, "token only: {}", response.body_str());
    let seen = only_upstream_request(&envoy, "token only");
    assert_eq!(seen.header_all("x-user-id"), vec!["dave"]);
    assert_eq!(seen.header("x-api-key-id"), None);
    assert_eq!(seen.header("authorization"), None, "forward_token: false");

    let carol = token(json!({ "sub": "carol", "scope": "documents:read" }));
    tokens.push(carol.clone());
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/either/x",
        &[
            ("authorization", &bearer(&carol)),
            (KEY_HEADER, BILLING_KEY),
        ],
    );
    assert_eq!(response.status, 200, "both valid: {}", response.body_str());
    let seen = only_upstream_request(&envoy, "both valid");
    assert_eq!(
        seen.header_all("x-user-id"),
        vec!["carol"],
        "both valid: the JWT subject"
    );
    assert_eq!(
        seen.header("authorization"),
        None,
        "both valid: token removed"
    );
    assert_eq!(seen.header(KEY_HEADER), None, "both valid: key removed");
    // Both valid on a route with requirements: the event names the principal, the JWT subject.
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/scopes-any/docs",
        &[("authorization", &bearer(&carol)), (KEY_HEADER, DOCS_KEY)],
    );
    assert_eq!(
        response.status,
        200,
        "both valid with requirements: {}",
        response.body_str()
    );
    assert_authz_event(
        &envoy,
        "both valid: principal",
        &response,
        "scopes-any",
        "carol",
        None,
    );

    // Both present, one invalid: refused, whichever it is.
    let forged = forged_token(json!({ "sub": "carol", "scope": "documents:read" }));
    let expired = expired_token(json!({ "sub": "carol" }));
    tokens.push(forged.clone());
    tokens.push(expired.clone());
    let cases = [
        (
            "valid key + forged token",
            bearer(&forged),
            BILLING_KEY,
            "invalid_token",
        ),
        (
            "valid key + expired token",
            bearer(&expired),
            BILLING_KEY,
            "token_expired",
        ),
        (
            "valid token + wrong key",
            bearer(&carol),
            WRONG_SECRET_KEY,
            "invalid_api_key",
        ),
        (
            "valid token + unknown prefix",
            bearer(&carol),
            UNKNOWN_PREFIX_KEY,
            "invalid_api_key",
        ),
        (
            "valid token + expired key",
            bearer(&carol),
            EXPIRED_KEY,
            "invalid_api_key",
        ),
    ];
    for (case, authorization, key, code) in cases {
        for path in ["/either/x", "/scopes-any/docs"] {
            let case = format!("{case} on {path}");
            envoy.clear_upstream_requests();
            let response = envoy.request(
                "GET",
                path,
                &[("authorization", &authorization), (KEY_HEADER, key)],
            );
            assert_refused_before_upstream(
                &envoy,
                &case,
                &response,
                401,
                code,
                Some(CHALLENGE_BAD),
            );
        }
    }

    // Let the last events reach the log, then look for every credential in it.
    let last = envoy.request("GET", "/internal/last", &[(KEY_HEADER, WRONG_SECRET_KEY)]);
    event_of(&envoy, "last", &last);
    assert_log_has_no_secrets(&envoy, &tokens);
}

#[test]
fn scopes_roles_and_owner_through_envoy() {
    let envoy = Envoy::with_plugin(&plugin_config());
    let mut tokens: Vec<String> = Vec::new();

    enum Cred {
        Token(Value),
        Key(&'static str),
    }
    use Cred::{Key, Token};
    /// (case, path, credential, expected status, principal in the event, failing rule)
    type Case = (
        &'static str,
        &'static str,
        Cred,
        u16,
        &'static str,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        // scopes_any
        (
            "scope string, one of any",
            "/scopes-any/d",
            Token(json!({ "scope": "profile documents:read" })),
            200,
            "alice",
            None,
        ),
        (
            "scp array, one of any",
            "/scopes-any/d",
            Token(json!({ "scp": ["documents:admin"] })),
            200,
            "alice",
            None,
        ),
        (
            "scope string, none of any",
            "/scopes-any/d",
            Token(json!({ "scope": "profile documents:write" })),
            403,
            "alice",
            Some("scopes_any"),
        ),
        (
            "scp array, none of any",
            "/scopes-any/d",
            Token(json!({ "scp": ["profile", "documents:write"] })),
            403,
            "alice",
            Some("scopes_any"),
        ),
        (
            "no scope, any",
            "/scopes-any/d",
            Token(json!({})),
            403,
            "alice",
            Some("scopes_any"),
        ),
        (
            "scope prefix is not the scope",
            "/scopes-any/d",
            Token(json!({ "scope": "documents:readx documents" })),
            403,
            "alice",
            Some("scopes_any"),
        ),
        (
            "key scopes, one of any",
            "/scopes-any/d",
            Key(DOCS_KEY),
            200,
            "docs-reader",
            None,
        ),
        (
            "key scopes, none of any",
            "/scopes-any/d",
            Key(BILLING_KEY),
            403,
            "billing-svc",
            Some("scopes_any"),
        ),
        (
            "key without scopes, any",
            "/scopes-any/d",
            Key(PLAIN_KEY),
            403,
            "plain",
            Some("scopes_any"),
        ),
        // scopes_all
        (
            "scope string, all",
            "/scopes-all/i",
            Token(json!({ "scope": "invoices:read profile invoices:write" })),
            200,
            "alice",
            None,
        ),
        (
            "scp array, all",
            "/scopes-all/i",
            Token(json!({ "scp": ["invoices:write", "invoices:read"] })),
            200,
            "alice",
            None,
        ),
        (
            "scope string, not all",
            "/scopes-all/i",
            Token(json!({ "scope": "invoices:read" })),
            403,
            "alice",
            Some("scopes_all"),
        ),
        (
            "scp array, not all",
            "/scopes-all/i",
            Token(json!({ "scp": ["invoices:write"] })),
            403,
            "alice",
            Some("scopes_all"),
        ),
        (
            "key scopes, all",
            "/scopes-all/i",
            Key(BILLING_KEY),
            200,
            "billing-svc",
            None,
        ),
        (
            "key scopes, not all",
            "/scopes-all/i",
            Key(DOCS_KEY),
            403,
            "docs-reader",
            Some("scopes_all"),
        ),
        // roles_any
        (
            "roles array, one of any",
            "/roles-any/r",
            Token(json!({ "roles": ["viewer", "ops"] })),
            200,
            "alice",
            None,
        ),
        (
            "roles string, one of any",
            "/roles-any/r",
            Token(json!({ "roles": "admin" })),
            200,
            "alice",
            None,
        ),
        (
            "roles array, none of any",
            "/roles-any/r",
            Token(json!({ "roles": ["viewer"] })),
            403,
            "alice",
            Some("roles_any"),
        ),
        (
            "roles string, none of any",
            "/roles-any/r",
            Token(json!({ "roles": "viewer" })),
            403,
            "alice",
            Some("roles_any"),
        ),
        (
            "a roles string is one role, never split",
            "/roles-any/r",
            Token(json!({ "roles": "super admin" })),
            403,
            "alice",
            Some("roles_any"),
        ),
        (
            "a scope is not a role",
            "/roles-any/r",
            Token(json!({ "scope": "admin ops" })),
            403,
            "alice",
            Some("roles_any"),
        ),
        (
            "an API key has no roles",
            "/roles-any/r",
            Key(BILLING_KEY),
            403,
            "billing-svc",
            Some("roles_any"),
        ),
        // roles_all
        (
            "roles array, all",
            "/roles-all/r",
            Token(json!({ "roles": ["auditor", "viewer", "admin"] })),
            200,
            "alice",
            None,
        ),
        (
            "roles array, not all",
            "/roles-all/r",
            Token(json!({ "roles": ["admin"] })),
            403,
            "alice",
            Some("roles_all"),
        ),
        (
            "roles string, not all",
            "/roles-all/r",
            Token(json!({ "roles": "admin" })),
            403,
            "alice",
            Some("roles_all"),
        ),
        (
            "roles string, all of one",
            "/ops-only/r",
            Token(json!({ "roles": "ops" })),
            200,
            "alice",
            None,
        ),
        (
            "roles string, not all of one",
            "/ops-only/r",
            Token(json!({ "roles": "admin" })),
            403,
            "alice",
            Some("roles_all"),
        ),
        (
            "no roles, all",
            "/ops-only/r",
            Token(json!({})),
            403,
            "alice",
            Some("roles_all"),
        ),
    ];
    for (case, path, cred, status, principal, rule) in &cases {
        envoy.clear_upstream_requests();
        let header = match cred {
            Token(extra) => {
                let t = token(extra.clone());
                tokens.push(t.clone());
                ("authorization".to_string(), bearer(&t))
            }
            Key(key) => (KEY_HEADER.to_string(), key.to_string()),
        };
        let response = envoy.request("GET", path, &[(header.0.as_str(), header.1.as_str())]);
        if *status == 200 {
            assert_eq!(response.status, 200, "{case}: {}", response.body_str());
            only_upstream_request(&envoy, case);
        } else {
            assert_refused_before_upstream(&envoy, case, &response, *status, "forbidden", None);
        }
        let route = envoy_route_of(path);
        assert_authz_event(&envoy, case, &response, route, principal, *rule);
    }

    // Owner: the path parameter must equal the `sub` claim.
    let alice = token(json!({ "sub": "alice" }));
    let bob = token(json!({ "sub": "bob" }));
    tokens.push(alice.clone());
    tokens.push(bob.clone());
    envoy.clear_upstream_requests();
    let own = envoy.request(
        "GET",
        "/users/alice/documents",
        &[("authorization", &bearer(&alice))],
    );
    assert_eq!(own.status, 200, "own documents: {}", own.body_str());
    assert_eq!(
        only_upstream_request(&envoy, "own documents").path,
        "/users/alice/documents"
    );
    assert_authz_event(&envoy, "own documents", &own, "own-docs", "alice", None);

    envoy.clear_upstream_requests();
    let other = envoy.request(
        "GET",
        "/users/bob/documents",
        &[("authorization", &bearer(&alice))],
    );
    assert_refused_before_upstream(
        &envoy,
        "another user's documents",
        &other,
        404,
        "not_found",
        None,
    );
    assert_authz_event(
        &envoy,
        "another user's documents",
        &other,
        "own-docs",
        "alice",
        Some("owner"),
    );

    // The owner 404 is the 404 of a path that matches no route: same status, same body but for
    // the request id, same headers but for the request id and the date.
    let no_route = envoy.request(
        "GET",
        "/users/bob/photos",
        &[("authorization", &bearer(&alice))],
    );
    assert_refusal("no route", &no_route, 404, "not_found", None);
    assert_eq!(event_of(&envoy, "no route", &no_route)["event"], "no_route");
    assert_same_404(&other, &no_route);
    let no_route_anonymous = envoy.request("GET", "/nothing/here", &[]);
    assert_same_404(&other, &no_route_anonymous);

    // A route authenticated either way: the token's subject owns, an API key owns nothing (it
    // has no claims), even when its id equals the parameter.
    for (case, path, header, status, principal) in [
        (
            "token owner",
            "/accounts/alice/profile",
            ("authorization", bearer(&alice)),
            200,
            "alice",
        ),
        (
            "token of someone else",
            "/accounts/alice/profile",
            ("authorization", bearer(&bob)),
            404,
            "bob",
        ),
        (
            "key whose id is the parameter",
            "/accounts/alice/profile",
            (KEY_HEADER, ALICE_KEY.to_string()),
            404,
            "alice",
        ),
    ] {
        envoy.clear_upstream_requests();
        let response = envoy.request("GET", path, &[(header.0, header.1.as_str())]);
        if status == 200 {
            assert_eq!(response.status, 200, "{case}: {}", response.body_str());
            only_upstream_request(&envoy, case);
            assert_authz_event(&envoy, case, &response, "own-profile", principal, None);
        } else {
            assert_refused_before_upstream(&envoy, case, &response, 404, "not_found", None);
            assert_same_404(&response, &no_route);
            assert_authz_event(
                &envoy,
                case,
                &response,
                "own-profile",
                principal,
                Some("owner"),
            );
        }
    }

    let last = envoy.request("GET", "/internal/last", &[(KEY_HEADER, WRONG_SECRET_KEY)]);
    event_of(&envoy, "last", &last);
    assert_log_has_no_secrets(&envoy, &tokens);
}

/// The route name the test config gives a path.
fn envoy_route_of(path: &str) -> &'static str {
    let routes = [
        ("/scopes-any/", "scopes-any"),
        ("/scopes-all/", "scopes-all"),
        ("/roles-any/", "roles-any"),
        ("/roles-all/", "roles-all"),
        ("/ops-only/", "roles-all-one"),
    ];
    routes
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map(|(_, name)| *name)
        .unwrap_or_else(|| panic!("no route for {path}"))
}

/// Two 404s a client cannot tell apart: status, body (but for the request id), and headers (but
/// for the request id and the date).
fn assert_same_404(owner: &Response, reference: &Response) {
    assert_eq!(owner.status, 404);
    assert_eq!(reference.status, 404);
    let strip = |r: &Response| {
        let mut body = r.json();
        body["request_id"] = json!("<id>");
        body
    };
    assert_eq!(
        strip(owner),
        strip(reference),
        "same body but for the request id"
    );
    let headers = |r: &Response| {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(n, _)| n != "x-request-id" && n != "date")
            .cloned()
            .collect();
        h.sort();
        h
    };
    assert_eq!(
        headers(owner),
        headers(reference),
        "same headers but for the request id and the date"
    );
}

#[test]
fn ten_thousand_keys() {
    const COUNT: usize = 10_000;
    let key_of = |i: usize| {
        let secret = key_sha256_hex(&format!("bulk seed {i}"));
        format!("ag_bulk_{}", &secret[..40])
    };
    let keys: Vec<Value> = (0..COUNT)
        .map(|i| {
            let key = key_of(i);
            json!({ "id": format!("bulk-{i:05}"), "prefix": "ag_bulk_", "sha256": key_sha256_hex(&key),
                    "scopes": ["bulk:read"] })
        })
        .collect();
    let config = json!({
        "api_keys": { "header": KEY_HEADER, "keys": keys },
        "routes": [
            { "name": "internal", "match": { "path_prefix": "/internal/" }, "auth": "api_key",
              "require": { "scopes_all": ["bulk:read"] } }
        ]
    })
    .to_string();
    let envoy = Envoy::with_plugin(&config);

    for i in [COUNT / 2, 0, COUNT - 1, 4321] {
        let key = key_of(i);
        envoy.clear_upstream_requests();
        let response = envoy.request("GET", "/internal/x", &[(KEY_HEADER, &key)]);
        assert_eq!(response.status, 200, "key {i}: {}", response.body_str());
        let seen = only_upstream_request(&envoy, "bulk key");
        assert_eq!(
            seen.header_all("x-api-key-id"),
            vec![format!("bulk-{i:05}").as_str()],
            "key {i}"
        );
        assert_eq!(seen.header(KEY_HEADER), None);
    }
    // Also through `Authorization: ApiKey`.
    envoy.clear_upstream_requests();
    let middle = key_of(COUNT / 2);
    let response = envoy.request(
        "GET",
        "/internal/x",
        &[("authorization", &format!("ApiKey {middle}"))],
    );
    assert_eq!(response.status, 200, "{}", response.body_str());
    assert_eq!(
        only_upstream_request(&envoy, "bulk key in authorization").header_all("x-api-key-id"),
        vec![format!("bulk-{:05}", COUNT / 2).as_str()]
    );

    // The middle key with its last character changed, and one that was never configured.
    let mut near = middle.clone();
    let last = near.pop().unwrap();
    near.push(if last == '0' { '1' } else { '0' });
    for (case, key) in [("near miss", near), ("unconfigured", key_of(COUNT + 1))] {
        envoy.clear_upstream_requests();
        let response = envoy.request("GET", "/internal/x", &[(KEY_HEADER, &key)]);
        assert_refused_before_upstream(
            &envoy,
            case,
            &response,
            401,
            "invalid_api_key",
            Some(CHALLENGE_BAD),
        );
    }
}

//! What the filter checks is what the upstream serves: requests that a common upstream framework
//! (Tomcat, Spring, Express, Rack, IIS, a CGI server) reads otherwise than the filter, sent
//! through a real Envoy (two workers) in front of a recording upstream. The config is shaped like
//! the spec's example: a public prefix, an admin prefix, an owner-checked template, an
//! API-key-only prefix and a catch-all. Every token here is valid and belongs to a non-admin
//! user: what must not happen is that it reaches what the filter says is protected.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use api_guard_core::authn::api_keys::key_sha256_hex;
use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::support::mint;
use common::{assert_refusal, bearer, claims, sign, test_key, Envoy, Response};
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.test";
const COOKIE_ISSUER: &str = "https://cookie-issuer.test";
const AUDIENCE: &str = "https://api.test";
const API_KEY: &str = "ag_live_differentials0123456789abcdef";

fn token_for(issuer: &str, key: &str, sub: &str, roles: Value) -> String {
    let extra = json!({ "roles": roles, "scope": "documents:read" });
    sign(key, Alg::ES256, &claims(issuer, AUDIENCE, sub, extra))
}

fn bob() -> String {
    token_for(ISSUER, "p256", "bob", json!(["viewer"]))
}

fn plugin_config(firewall: Value) -> String {
    json!({
        "jwt": { "providers": [
            {
                "name": "main",
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["ES256"],
                "jwks": { "inline": { "keys": [mint::public_jwk(&test_key("p256"))] } },
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
                "jwks": { "inline": { "keys": [mint::public_jwk(&test_key("p256-other"))] } },
                "from": [ { "cookie": "session" } ],
                "claims_to_headers": [ { "claim": "sub", "header": "x-user-id" } ],
                "forward_token": true
            }
        ]},
        "api_keys": { "header": "x-api-key", "keys": [
            { "id": "billing-svc", "prefix": "ag_live_", "sha256": key_sha256_hex(API_KEY),
              "scopes": ["invoices:read"] }
        ]},
        "routes": [
            { "name": "public", "match": { "path_prefix": "/public/" }, "auth": "none" },
            { "name": "admin", "match": { "path_prefix": "/admin/" }, "auth": "jwt",
              "require": { "roles_any": ["admin"] } },
            { "name": "staff", "match": { "path_separated_prefix": "/staff" }, "auth": "jwt",
              "require": { "roles_any": ["admin"] } },
            { "name": "own-docs", "match": { "path_template": "/users/{id}/documents", "methods": ["GET"] },
              "auth": "jwt", "owner": { "param": "id", "claim": "sub" } },
            { "name": "login", "match": { "path_exact": "/login", "methods": ["POST"] }, "auth": "none" },
            { "name": "internal", "match": { "path_prefix": "/internal/" }, "auth": "api_key" },
            { "name": "default", "match": { "path_prefix": "/" }, "auth": "jwt_or_api_key" }
        ],
        "firewall": firewall
    })
    .to_string()
}

/// (case, path, headers) of a request carrying credentials the filter did not verify.
type CredentialCase = (&'static str, &'static str, Vec<(&'static str, String)>);

/// A refusal that reached nothing upstream.
fn refused(envoy: &Envoy, case: &str, response: &Response, status: u16, code: &str) {
    assert_refusal(case, response, status, code, None);
    assert!(
        envoy.upstream_requests().is_empty(),
        "{case}: reached the upstream: {:?}",
        envoy.upstream_requests()
    );
}

/// The one request that reached the upstream.
fn forwarded(envoy: &Envoy, case: &str, response: &Response) -> common::RecordedRequest {
    assert_eq!(response.status, 200, "{case}: {}", response.body_str());
    let mut seen = envoy.upstream_requests();
    assert_eq!(seen.len(), 1, "{case}: upstream requests {seen:?}");
    seen.remove(0)
}

fn every_worker_answers(envoy: &Envoy) {
    let token = bob();
    for i in 0..8 {
        let response = envoy.request(
            "GET",
            "/users/bob/documents",
            &[("authorization", &bearer(&token))],
        );
        assert_eq!(response.status, 200, "request {i} after the attacks");
    }
}

#[test]
fn path_parameters_and_what_iis_and_double_decoders_read_are_refused() {
    let envoy = Envoy::with_plugin(&plugin_config(json!({})));
    let auth = bearer(&bob());
    // Each of these is an admin or another user's path to Tomcat, Spring, IIS or a decoder that
    // decodes twice, and a path matching nothing protected to a naive filter.
    let paths = [
        "/admin;x=1/x",
        "/admin;/x",
        "/admin%3Bx=1/x",
        "/admin%3b/x",
        "/public/..;/admin/x",
        "/public/%2e%2e;/admin/x",
        "/public;x/../admin/x",
        "/users/alice;v=1/documents",
        "/users/alice/documents;x",
        "/admin./x",
        "/admin%2e/x",
        "/admin%2E%2E%2E/x",
        "/admin%20/x",
        "/%61dmin%252fx",
        "/public/%252e%252e/admin/x",
        "/admin%0a/x",
        "/public/%C0%AE%C0%AE/admin/x",
    ];
    for path in paths {
        envoy.clear_upstream_requests();
        let response = envoy.request("GET", path, &[("authorization", &auth)]);
        refused(&envoy, path, &response, 400, "bad_request");
    }
    // Dot segments and unreserved escapes are normalised, and the upstream gets that path.
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/public/%2e%2e/users/%62ob/documents",
        &[("authorization", &auth)],
    );
    let seen = forwarded(&envoy, "normalised", &response);
    assert_eq!(seen.path, "/users/bob/documents");
    every_worker_answers(&envoy);
}

#[test]
fn path_parameters_stripped_like_servlet_containers_when_allowed() {
    let envoy = Envoy::with_plugin(&plugin_config(json!({ "path_parameters": "strip" })));
    let auth = bearer(&bob());
    // Matched as Tomcat routes them: the admin route refuses, the owner check answers 404.
    for (path, status, code) in [
        ("/admin;x=1/x", 403, "forbidden"),
        ("/public/..;/admin/x", 403, "forbidden"),
        ("/users/alice;v=1/documents", 404, "not_found"),
        ("/users/alice/documents;x", 404, "not_found"),
        ("/admin%3Bx=1/x", 400, "bad_request"),
    ] {
        envoy.clear_upstream_requests();
        let response = envoy.request("GET", path, &[("authorization", &auth)]);
        refused(&envoy, path, &response, status, code);
    }
    // The upstream gets exactly the path that was matched.
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/users/bob;v=2/documents?page=1",
        &[("authorization", &auth)],
    );
    let seen = forwarded(&envoy, "own documents with a parameter", &response);
    assert_eq!(seen.path, "/users/bob/documents?page=1");
    every_worker_answers(&envoy);
}

#[test]
fn segment_boundaries_trailing_slashes_case_and_head_stay_on_the_guarded_route() {
    let envoy = Envoy::with_plugin(&plugin_config(json!({})));
    let auth = bearer(&bob());
    for (method, path, status, code) in [
        // A trailing slash is the same resource to Express and Spring 5.
        ("GET", "/users/alice/documents/", 404, "not_found"),
        // path_separated_prefix covers the prefix itself, with and without the slash.
        ("GET", "/staff", 403, "forbidden"),
        ("GET", "/staff/", 403, "forbidden"),
        ("GET", "/staff/payroll", 403, "forbidden"),
        // Express, IIS and ASP.NET ignore case: /ADMIN/x is their admin handler.
        ("GET", "/ADMIN/x", 400, "bad_request"),
        ("GET", "/Admin/x", 400, "bad_request"),
        ("GET", "/Users/alice/documents", 400, "bad_request"),
        ("GET", "/PUBLIC/x", 400, "bad_request"),
    ] {
        envoy.clear_upstream_requests();
        let response = envoy.request(method, path, &[("authorization", &auth)]);
        refused(&envoy, &format!("{method} {path}"), &response, status, code);
    }
    // HEAD runs the GET handler upstream: the owner check holds for it.
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "HEAD",
        "/users/alice/documents",
        &[("authorization", &auth)],
    );
    assert_eq!(response.status, 404, "HEAD on another user's documents");
    assert!(
        envoy.upstream_requests().is_empty(),
        "HEAD reached the upstream"
    );
    envoy.clear_upstream_requests();
    let response = envoy.request("HEAD", "/users/bob/documents/", &[("authorization", &auth)]);
    assert_eq!(response.status, 200, "HEAD on one's own documents");
    assert_eq!(envoy.upstream_requests().len(), 1);
    // Not a prefix of another word: /staffing is the catch-all's.
    envoy.clear_upstream_requests();
    let response = envoy.request("GET", "/staffing", &[("authorization", &auth)]);
    forwarded(&envoy, "/staffing", &response);
    every_worker_answers(&envoy);
}

#[test]
fn method_and_url_overrides_never_reach_the_upstream() {
    let envoy = Envoy::with_plugin(&plugin_config(json!({})));
    let auth = bearer(&bob());

    // Method and URL overrides are removed; a method override in the query is refused.
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/users/bob/documents",
        &[
            ("authorization", &auth),
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x_http_method_override", "DELETE"),
            ("x-original-url", "/admin/users"),
            ("x-rewrite-url", "/admin/users"),
        ],
    );
    let seen = forwarded(&envoy, "overrides", &response);
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x_http_method_override",
        "x-original-url",
        "x-rewrite-url",
    ] {
        assert_eq!(seen.header(name), None, "{name} reached the upstream");
    }
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/users/bob/documents?_method=DELETE",
        &[("authorization", &auth)],
    );
    refused(&envoy, "?_method=", &response, 400, "bad_request");
    every_worker_answers(&envoy);
}

#[test]
fn underscore_twins_of_identity_and_credential_headers_never_reach_the_upstream() {
    let envoy = Envoy::with_plugin(&plugin_config(json!({})));
    let auth = bearer(&bob());
    // Underscore twins of every header the filter owns are removed; the real ones come from
    // the verified token.
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/users/bob/documents",
        &[
            ("authorization", &auth),
            ("x_user_id", "root"),
            ("x-user_id", "root"),
            ("x_user_roles", "admin"),
            ("x_api_key_id", "billing-svc"),
            ("x_api_key", API_KEY),
        ],
    );
    let seen = forwarded(&envoy, "twins", &response);
    assert_eq!(seen.header_all("x-user-id"), vec!["bob"]);
    assert_eq!(seen.header_all("x-user-roles"), vec!["viewer"]);
    for name in [
        "x_user_id",
        "x-user_id",
        "x_user_roles",
        "x_api_key_id",
        "x_api_key",
    ] {
        assert_eq!(seen.header(name), None, "{name} reached the upstream");
    }
    every_worker_answers(&envoy);
}

#[test]
fn credentials_the_filter_did_not_verify_never_reach_the_upstream() {
    let envoy = Envoy::with_plugin(&plugin_config(json!({})));
    let bob = bob();
    let auth = bearer(&bob);
    // Credentials the filter did not verify are removed, wherever they are.
    let flip_at = bob.len() - 10;
    let flipped = if &bob[flip_at..=flip_at] == "A" {
        "B"
    } else {
        "A"
    };
    let forged = format!("{}{flipped}{}", &bob[..flip_at], &bob[flip_at + 1..]);
    let forged_cookie = token_for(COOKIE_ISSUER, "p256", "root", json!(["admin"]));
    let cases: [CredentialCase; 5] = [
        (
            "forged bearer on a public route",
            "/public/x",
            vec![("authorization", bearer(&forged))],
        ),
        (
            "lower-case scheme on a public route",
            "/public/x",
            vec![("authorization", format!("bearer {forged}"))],
        ),
        (
            "API key on a public route",
            "/public/x",
            vec![
                ("x-api-key", API_KEY.to_string()),
                ("authorization", format!("ApiKey {API_KEY}")),
            ],
        ),
        (
            "forged bearer next to a valid API key",
            "/internal/x",
            vec![
                ("x-api-key", API_KEY.to_string()),
                ("authorization", bearer(&forged)),
            ],
        ),
        (
            "forged cookie next to a verified header token",
            "/users/bob/documents",
            vec![
                ("authorization", auth.clone()),
                ("cookie", format!("theme=dark; session={forged_cookie}")),
            ],
        ),
    ];
    for (case, path, headers) in cases {
        envoy.clear_upstream_requests();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let response = envoy.request("GET", path, &headers);
        let seen = forwarded(&envoy, case, &response);
        assert_eq!(seen.header("authorization"), None, "{case}: authorization");
        assert_eq!(seen.header("x-api-key"), None, "{case}: x-api-key");
        for cookie in seen.header_all("cookie") {
            assert!(!cookie.contains("session="), "{case}: cookie {cookie}");
        }
    }
    // Other cookies and other Authorization schemes are the upstream's own business.
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/users/bob/documents",
        &[
            ("authorization", &auth),
            ("cookie", "theme=dark; session=x"),
        ],
    );
    assert_eq!(response.status, 200);
    let seen = envoy.upstream_requests().remove(0);
    assert_eq!(seen.header_all("cookie"), vec!["theme=dark"]);
    envoy.clear_upstream_requests();
    let response = envoy.request_with_body(
        "POST",
        "/login",
        &[("authorization", "Basic dXNlcjpwYXNz")],
        b"",
    );
    let seen = forwarded(&envoy, "Basic on login", &response);
    assert_eq!(seen.header("authorization"), Some("Basic dXNlcjpwYXNz"));
    // The verified token of a provider with forward_token: true goes on.
    envoy.clear_upstream_requests();
    let good_cookie = token_for(COOKIE_ISSUER, "p256-other", "carol", json!([]));
    let response = envoy.request(
        "GET",
        "/users/carol/documents",
        &[("cookie", &format!("session={good_cookie}; theme=dark"))],
    );
    let seen = forwarded(&envoy, "forwarded cookie", &response);
    assert_eq!(
        seen.header_all("cookie"),
        vec![format!("session={good_cookie}; theme=dark")]
    );
    every_worker_answers(&envoy);
}

#[test]
fn override_headers_can_be_refused() {
    let envoy = Envoy::with_plugin(&plugin_config(json!({ "override_headers": "reject" })));
    let auth = bearer(&bob());
    for (name, value) in [("x-original-url", "/admin/x"), ("x_http_method", "DELETE")] {
        envoy.clear_upstream_requests();
        let response = envoy.request(
            "GET",
            "/users/bob/documents",
            &[("authorization", &auth), (name, value)],
        );
        refused(&envoy, name, &response, 400, "bad_request");
    }
    every_worker_answers(&envoy);
}

#[test]
fn claim_separators_cannot_be_forged() {
    let envoy = Envoy::with_plugin(&plugin_config(json!({})));

    // A role with a comma in it stays one role upstream; real arrays are comma-separated.
    let sneaky = token_for(ISSUER, "p256", "mallory", json!(["viewer,admin", "50%"]));
    let response = envoy.request("GET", "/admin/x", &[("authorization", &bearer(&sneaky))]);
    assert_eq!(
        response.status, 403,
        "one role named \"viewer,admin\" is not admin"
    );
    envoy.clear_upstream_requests();
    let response = envoy.request(
        "GET",
        "/users/mallory/documents",
        &[("authorization", &bearer(&sneaky))],
    );
    let seen = forwarded(&envoy, "sneaky roles", &response);
    assert_eq!(
        seen.header_all("x-user-roles"),
        vec!["viewer%2Cadmin,50%25"]
    );
    envoy.clear_upstream_requests();
    let two = token_for(ISSUER, "p256", "dave", json!(["viewer", "editor"]));
    let response = envoy.request(
        "GET",
        "/users/dave/documents",
        &[("authorization", &bearer(&two))],
    );
    let seen = forwarded(&envoy, "two roles", &response);
    assert_eq!(seen.header_all("x-user-roles"), vec!["viewer,editor"]);
    every_worker_answers(&envoy);
}

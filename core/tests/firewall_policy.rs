//! The request firewall's decisions, natively (the same cases through Envoy are in
//! `envoy_differentials.rs`): which route a request reaches, what is refused because an upstream
//! framework would read it otherwise, and which headers never go upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::config;
use api_guard_core::pipeline::policy::{Decision, Policy, Verdict};
use api_guard_core::request::head::RequestHead;
use api_guard_core::support::mint;
use api_guard_core::support::test_env::TestHost;
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "https://api.test";
const NOW_S: u64 = 1_800_000_000;

fn key(name: &str) -> Value {
    let path = format!("{}/../tests/keys/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn token(sub: &str, roles: Value) -> String {
    let claims = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles,
                         "iat": NOW_S, "exp": NOW_S + 600 });
    mint::sign(&key("p256"), Alg::ES256, claims.as_object().unwrap()).unwrap()
}

fn policy(firewall: Value) -> Policy {
    let config = json!({
        "jwt": { "providers": [{
            "name": "main", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
            "jwks": { "inline": { "keys": [mint::public_jwk(&key("p256"))] } },
            "claims_to_headers": [ { "claim": "sub", "header": "x-user-id" },
                                   { "claim": "roles", "header": "x-user-roles" } ]
        }]},
        "routes": [
            { "name": "public", "match": { "path_prefix": "/public/" }, "auth": "none" },
            { "name": "admin", "match": { "path_prefix": "/admin/" }, "auth": "jwt",
              "require": { "roles_any": ["admin"] } },
            { "name": "own-docs", "match": { "path_template": "/users/{id}/documents", "methods": ["GET"] },
              "auth": "jwt", "owner": { "param": "id", "claim": "sub" } },
            { "name": "Reports", "match": { "path_exact": "/Reports" }, "auth": "jwt",
              "require": { "roles_any": ["admin"] } },
            { "name": "default", "match": { "path_prefix": "/" }, "auth": "jwt" }
        ],
        "firewall": firewall
    });
    config::load(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn decide(policy: &Policy, method: &str, path: &str, extra: &[(&str, &str)]) -> Decision {
    let mut headers = vec![
        (":method".to_string(), method.to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), "api.test".to_string()),
        ("x-request-id".to_string(), "rid".to_string()),
        (
            "authorization".to_string(),
            format!("Bearer {}", token("bob", json!(["viewer"]))),
        ),
    ];
    headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    let mut host = TestHost::new(NOW_S);
    host.limiter = None;
    let mut env = host.env(false);
    policy.check_request(
        &RequestHead::from_host(headers, Some("10.0.0.1:1")),
        &mut env,
    )
}

/// (status, route) of a decision; 200 for an allow.
fn outcome(decision: &Decision) -> (u16, Option<&str>) {
    let status = match &decision.verdict {
        Verdict::Allow(_) => 200,
        Verdict::Deny(reply) => reply.status,
        other => panic!("unexpected verdict {other:?}"),
    };
    (status, decision.response.event_base.route.as_deref())
}

#[test]
fn each_reading_an_upstream_could_take_is_refused_or_lands_on_the_guarded_route() {
    let strict = policy(json!({}));
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        ("GET", "/users/bob/documents", 200, Some("own-docs")),
        ("GET", "/users/bob/documents/", 200, Some("own-docs")),
        ("GET", "/users/alice/documents/", 404, Some("own-docs")),
        ("HEAD", "/users/alice/documents", 404, Some("own-docs")),
        ("GET", "/users/alice;x/documents", 400, None),
        ("GET", "/admin;x=1/x", 400, None),
        ("GET", "/admin%3B/x", 400, None),
        ("GET", "/admin%2e/x", 400, None),
        ("GET", "/admin/%252e%252e/public/x", 400, None),
        ("get", "/users/bob/documents", 400, None),
        // case: the exact route and the case-folded one differ
        ("GET", "/ADMIN/x", 400, Some("default")),
        ("GET", "/reports", 400, Some("default")),
        ("GET", "/Reports", 403, Some("Reports")),
        ("GET", "/Other/x", 200, Some("default")),
        ("GET", "/public/..", 200, Some("default")),
    ];
    for &(method, path, status, route) in cases {
        let decision = decide(&strict, method, path, &[]);
        assert_eq!(outcome(&decision), (status, route), "{method} {path}");
    }

    let relaxed = policy(json!({ "path_parameters": "strip", "ambiguous_case": "allow" }));
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        ("GET", "/users/alice;x/documents", 404, Some("own-docs")),
        ("GET", "/admin;x=1/x", 403, Some("admin")),
        ("GET", "/ADMIN/x", 200, Some("default")),
        ("GET", "/admin%3B/x", 400, None),
    ];
    for &(method, path, status, route) in cases {
        let decision = decide(&relaxed, method, path, &[]);
        assert_eq!(
            outcome(&decision),
            (status, route),
            "relaxed {method} {path}"
        );
    }
    let Verdict::Allow(forward) = decide(&relaxed, "GET", "/users/bob;v=1/documents", &[]).verdict
    else {
        panic!("own documents refused")
    };
    assert_eq!(forward.set_path.as_deref(), Some("/users/bob/documents"));
}

#[test]
fn spoofable_and_override_headers_are_removed_or_refused() {
    let strict = policy(json!({}));
    let decision = decide(
        &strict,
        "GET",
        "/users/bob/documents",
        &[
            ("x_user_id", "root"),
            ("x-user_roles", "admin"),
            ("x-http-method-override", "DELETE"),
            ("x_original_url", "/admin/x"),
            ("x-api-key-id", "svc"),
        ],
    );
    let Verdict::Allow(forward) = decision.verdict else {
        panic!("refused: {:?}", decision.verdict)
    };
    for name in [
        "x_user_id",
        "x-user_roles",
        "x-http-method-override",
        "x_original_url",
        "x-api-key-id",
        "authorization",
    ] {
        assert!(
            forward.remove_headers.iter().any(|h| h == name),
            "{name} not removed: {forward:?}"
        );
    }
    assert!(forward
        .set_headers
        .contains(&("x-user-id".to_string(), "bob".to_string())));

    let decision = decide(&strict, "GET", "/users/bob/documents?_method=DELETE", &[]);
    assert_eq!(outcome(&decision).0, 400);

    let rejecting = policy(json!({ "override_headers": "reject" }));
    let decision = decide(
        &rejecting,
        "GET",
        "/users/bob/documents",
        &[("x-http-method", "DELETE")],
    );
    assert_eq!(outcome(&decision).0, 400);

    let forwarding = policy(json!({ "override_headers": "forward" }));
    let decision = decide(
        &forwarding,
        "GET",
        "/users/bob/documents?_method=DELETE",
        &[("x-http-method", "DELETE")],
    );
    let Verdict::Allow(forward) = decision.verdict else {
        panic!("refused")
    };
    assert!(!forward.remove_headers.iter().any(|h| h == "x-http-method"));
}

#[test]
fn firewall_config_errors_name_their_path() {
    let config = json!({
        "routes": [ { "name": "a", "match": { "path_prefix": "/" }, "auth": "none" } ],
        "firewall": { "path_parameters": "allow" }
    });
    let errors = config::load(config.to_string().as_bytes())
        .err()
        .expect("refused");
    assert_eq!(errors[0].path, "firewall.path_parameters", "{errors:?}");
}

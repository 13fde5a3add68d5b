//! Claims where real identity providers put them, through a real Envoy (spec "Claims by path"):
//! one provider shaped like each of Keycloak, Auth0, Okta and Azure AD (Entra ID), the README's
//! example configurations, with tokens of each provider's shape minted here. One Envoy for the
//! group; a failing check names its case.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::support::mint;
use common::{
    assert_refusal, bearer, claims, event_of, only_upstream_request, sign, test_key, Envoy,
    Response,
};
use serde_json::{json, Value};

const KEYCLOAK: &str = "https://sso.example.com/realms/acme";
const AUTH0: &str = "https://acme.eu.auth0.com/";
const OKTA: &str = "https://acme.okta.com/oauth2/default";
const AZURE_TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";
const OTHER_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const AUDIENCE: &str = "api://acme-api";

fn azure_issuer() -> String {
    format!("https://login.microsoftonline.com/{AZURE_TENANT}/v2.0")
}

fn keys(name: &str) -> Value {
    json!({ "inline": { "keys": [ mint::public_jwk(&test_key(name)) ] } })
}

/// The README's four example providers, and routes that ask for their roles, scopes and claims.
fn plugin_config() -> String {
    json!({
        "jwt": { "providers": [
            {
                "name": "keycloak", "issuer": KEYCLOAK, "audiences": [AUDIENCE],
                "algorithms": ["RS256"], "jwks": keys("rsa2048"),
                "roles_claim": "/realm_access/roles",
                "claims_to_headers": [
                    { "claim": "sub", "header": "x-user-id" },
                    { "claim": "/resource_access/billing-app/roles", "header": "x-billing-roles" },
                    { "claim": "/realm_access", "header": "x-realm-access" }
                ]
            },
            {
                "name": "auth0", "issuer": AUTH0, "audiences": [AUDIENCE],
                "algorithms": ["RS256"], "jwks": keys("rsa2048-other"),
                "roles_claim": "/https:~1~1example.com~1roles",
                "claims_to_headers": [
                    { "claim": "/https:~1~1example.com~1roles", "header": "x-user-roles" }
                ]
            },
            {
                "name": "okta", "issuer": OKTA, "audiences": [AUDIENCE],
                "algorithms": ["ES256"], "jwks": keys("p256"),
                "scopes_claim": "scp",
                "claims_to_headers": [ { "claim": "groups", "header": "x-user-groups" } ]
            },
            {
                "name": "azure", "issuer": azure_issuer(), "audiences": [AUDIENCE],
                "algorithms": ["ES256"], "jwks": keys("p256-other"),
                "scopes_claim": "scp"
            }
        ]},
        "routes": [
            { "name": "kc-admin", "match": { "path_prefix": "/kc/admin/" }, "auth": "jwt",
              "require": { "roles_any": ["admin"] } },
            { "name": "kc-billing", "match": { "path_prefix": "/kc/billing/" }, "auth": "jwt",
              "require": { "claims": { "/resource_access/billing-app/roles": "invoices:write" } } },
            { "name": "auth0-admin", "match": { "path_prefix": "/auth0/admin/" }, "auth": "jwt",
              "require": { "roles_any": ["admin"] } },
            { "name": "auth0-user", "match": { "path_template": "/auth0/users/{id}" }, "auth": "jwt",
              "owner": { "param": "id", "claim": "/https:~1~1example.com~1user_id" } },
            { "name": "okta-docs", "match": { "path_prefix": "/okta/docs/" }, "auth": "jwt",
              "require": { "scopes_any": ["documents:read"] } },
            { "name": "okta-ops", "match": { "path_prefix": "/okta/ops/" }, "auth": "jwt",
              "require": { "claims": { "groups": ["Engineering", "Ops"] } } },
            { "name": "azure-admin", "match": { "path_prefix": "/azure/admin/" }, "auth": "jwt",
              "require": { "roles_any": ["Tasks.Admin"], "claims": { "tid": AZURE_TENANT } } },
            { "name": "azure-files", "match": { "path_prefix": "/azure/files/" }, "auth": "jwt",
              "require": { "scopes_all": ["Files.Read"], "claims": { "tid": AZURE_TENANT } } }
        ]
    })
    .to_string()
}

fn keycloak(extra: Value) -> String {
    sign(
        "rsa2048",
        Alg::RS256,
        &claims(KEYCLOAK, AUDIENCE, "f:1b2c:alice", extra),
    )
}
fn auth0(extra: Value) -> String {
    sign(
        "rsa2048-other",
        Alg::RS256,
        &claims(AUTH0, AUDIENCE, "auth0|alice", extra),
    )
}
fn okta(extra: Value) -> String {
    sign(
        "p256",
        Alg::ES256,
        &claims(OKTA, AUDIENCE, "00u1alice", extra),
    )
}
fn azure(extra: Value) -> String {
    sign(
        "p256-other",
        Alg::ES256,
        &claims(&azure_issuer(), AUDIENCE, "AAAAalice", extra),
    )
}

fn get(envoy: &Envoy, path: &str, token: &str) -> Response {
    envoy.request("GET", path, &[("authorization", &bearer(token))])
}

/// Allowed, and reached the upstream; returns what the upstream saw.
fn assert_allowed(envoy: &Envoy, case: &str, path: &str, token: &str) -> common::RecordedRequest {
    envoy.clear_upstream_requests();
    let response = get(envoy, path, token);
    assert_eq!(
        response.status,
        200,
        "{case}: status; body {}",
        response.body_str()
    );
    only_upstream_request(envoy, case)
}

/// 403 `forbidden` (or `status`/`code`), nothing upstream, and an `authz_denied` event whose
/// reason names `rule` and never `secret` (a claim's or a required value).
fn assert_denied(
    envoy: &Envoy,
    case: &str,
    path: &str,
    token: &str,
    (status, code): (u16, &str),
    rule: &str,
    secrets: &[&str],
) {
    envoy.clear_upstream_requests();
    let response = get(envoy, path, token);
    assert_refusal(case, &response, status, code, None);
    assert!(envoy.upstream_requests().is_empty(), "{case}: upstream");
    let event = event_of(envoy, case, &response);
    assert_eq!(event["event"], "authz_denied", "{case}: {event}");
    let reason = event["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(rule),
        "{case}: reason names {rule}: {event}"
    );
    for secret in secrets {
        assert!(
            !event.to_string().contains(secret),
            "{case}: the event never holds {secret:?}: {event}"
        );
    }
}

const FORBIDDEN: (u16, &str) = (403, "forbidden");

#[test]
fn claims_where_identity_providers_put_them() {
    let envoy = Envoy::with_plugin(&plugin_config());

    // ---- Keycloak: realm roles in realm_access.roles, client roles in resource_access ----
    let realm = json!({ "roles": ["user", "admin"] });
    let billing = json!({ "billing-app": { "roles": ["invoices:read", "invoices:write"] } });
    let token = keycloak(json!({ "realm_access": realm, "resource_access": billing }));
    envoy.clear_upstream_requests();
    let seen = envoy.request(
        "GET",
        "/kc/admin/users",
        &[
            ("authorization", &bearer(&token)),
            ("x-billing-roles", "spoofed"),
        ],
    );
    assert_eq!(seen.status, 200, "keycloak admin: {}", seen.body_str());
    let seen = only_upstream_request(&envoy, "keycloak admin");
    assert_eq!(
        seen.header_all("x-billing-roles"),
        vec!["invoices:read,invoices:write"],
        "a nested array claim, joined with commas; the client's header removed"
    );
    // An object is forwarded as compact JSON with `%` and `,` percent-encoded.
    assert_eq!(
        seen.header("x-realm-access"),
        Some("{\"roles\":[\"user\"%2C\"admin\"]}"),
        "an object claim's defined encoding"
    );
    assert_eq!(seen.header("x-user-id"), Some("f:1b2c:alice"));
    assert_allowed(
        &envoy,
        "keycloak client role",
        "/kc/billing/invoices",
        &token,
    );

    let wrong_realm_role = keycloak(json!({
        "realm_access": { "roles": ["user"] },
        "resource_access": { "billing-app": { "roles": ["invoices:read"] } }
    }));
    assert_denied(
        &envoy,
        "keycloak: wrong realm role",
        "/kc/admin/users",
        &wrong_realm_role,
        FORBIDDEN,
        "require.roles_any",
        &[],
    );
    assert_denied(
        &envoy,
        "keycloak: client role missing",
        "/kc/billing/invoices",
        &wrong_realm_role,
        FORBIDDEN,
        "require.claims[\"/resource_access/billing-app/roles\"]",
        &["invoices:write", "invoices:read"],
    );
    // The pointer is where roles are read: a top-level `roles` claim counts for nothing.
    let top_level_roles = keycloak(json!({ "roles": ["admin"], "realm_access": { "roles": [] } }));
    assert_denied(
        &envoy,
        "keycloak: top-level roles ignored",
        "/kc/admin/users",
        &top_level_roles,
        FORBIDDEN,
        "require.roles_any",
        &[],
    );
    let missing = keycloak(json!({}));
    assert_denied(
        &envoy,
        "keycloak: realm_access missing",
        "/kc/admin/users",
        &missing,
        FORBIDDEN,
        "require.roles_any",
        &[],
    );
    // Pointers at non-strings: an object where roles should be, a role that is a number.
    for (case, realm) in [
        ("roles an object", json!({ "roles": { "admin": true } })),
        ("roles a number", json!({ "roles": [1] })),
        ("realm_access a string", json!("admin")),
    ] {
        let token = keycloak(json!({ "realm_access": realm }));
        assert_denied(
            &envoy,
            &format!("keycloak: {case}"),
            "/kc/admin/users",
            &token,
            FORBIDDEN,
            "require.roles_any",
            &[],
        );
    }

    // ---- Auth0: namespaced custom claims ----
    let token = auth0(json!({
        "https://example.com/roles": ["admin"],
        "https://example.com/user_id": "u-42"
    }));
    let seen = assert_allowed(&envoy, "auth0 admin", "/auth0/admin/settings", &token);
    assert_eq!(seen.header("x-user-roles"), Some("admin"));
    assert_allowed(&envoy, "auth0 owner", "/auth0/users/u-42", &token);
    assert_denied(
        &envoy,
        "auth0: someone else's object",
        "/auth0/users/u-43",
        &token,
        (404, "not_found"),
        "owner",
        &[],
    );
    // Un-namespaced `roles` is not where this provider reads roles.
    let plain_roles = auth0(json!({ "roles": ["admin"] }));
    assert_denied(
        &envoy,
        "auth0: un-namespaced roles",
        "/auth0/admin/settings",
        &plain_roles,
        FORBIDDEN,
        "require.roles_any",
        &[],
    );

    // ---- Okta: `scp` an array, `groups` ----
    let token = okta(json!({ "scp": ["openid", "documents:read"], "groups": ["Everyone", "Ops"] }));
    assert_allowed(&envoy, "okta scp array", "/okta/docs/1", &token);
    let seen = assert_allowed(&envoy, "okta group", "/okta/ops/deploy", &token);
    assert_eq!(seen.header("x-user-groups"), Some("Everyone,Ops"));
    let outsider = okta(json!({ "scp": ["openid"], "groups": ["Sales"] }));
    assert_denied(
        &envoy,
        "okta: scope missing from scp",
        "/okta/docs/1",
        &outsider,
        FORBIDDEN,
        "require.scopes_any",
        &[],
    );
    assert_denied(
        &envoy,
        "okta: not in the group",
        "/okta/ops/deploy",
        &outsider,
        FORBIDDEN,
        "require.claims[\"groups\"]",
        &["Sales", "Engineering"],
    );
    // With `scopes_claim: "scp"`, `scope` is no longer read.
    let scope_only = okta(json!({ "scope": "documents:read", "groups": [] }));
    assert_denied(
        &envoy,
        "okta: scope instead of scp",
        "/okta/docs/1",
        &scope_only,
        FORBIDDEN,
        "require.scopes_any",
        &[],
    );

    // ---- Azure AD: `roles`, `scp` a space-delimited string, `tid` by require.claims ----
    let token = azure(json!({
        "tid": AZURE_TENANT, "roles": ["Tasks.Admin"], "scp": "User.Read Files.Read"
    }));
    assert_allowed(&envoy, "azure app role", "/azure/admin/tasks", &token);
    assert_allowed(&envoy, "azure scp string", "/azure/files/a.txt", &token);
    let other_tenant = azure(json!({
        "tid": OTHER_TENANT, "roles": ["Tasks.Admin"], "scp": "Files.Read"
    }));
    for path in ["/azure/admin/tasks", "/azure/files/a.txt"] {
        assert_denied(
            &envoy,
            &format!("azure: other tenant on {path}"),
            path,
            &other_tenant,
            FORBIDDEN,
            "require.claims[\"tid\"]",
            &[OTHER_TENANT, AZURE_TENANT],
        );
    }
    let no_tid = azure(json!({ "roles": ["Tasks.Admin"] }));
    assert_denied(
        &envoy,
        "azure: tid missing",
        "/azure/admin/tasks",
        &no_tid,
        FORBIDDEN,
        "require.claims[\"tid\"]",
        &[AZURE_TENANT],
    );
    let reader = azure(json!({ "tid": AZURE_TENANT, "scp": "User.Read", "roles": "Tasks.Read" }));
    assert_denied(
        &envoy,
        "azure: scope missing",
        "/azure/files/a.txt",
        &reader,
        FORBIDDEN,
        "require.scopes_all",
        &[],
    );
    assert_denied(
        &envoy,
        "azure: wrong app role",
        "/azure/admin/tasks",
        &reader,
        FORBIDDEN,
        "require.roles_any",
        &[],
    );
}

//! The whole request pipeline, natively (fake clock, in-memory store): the order of the stages,
//! report mode, identity headers, the owner rule's 404, and the body phase's decision. The same
//! behaviours through a real Envoy are in `tests/envoy_*.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::authn::api_keys::key_sha256_hex;
use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::config;
use api_guard_core::pipeline::policy::{Decision, Forward, Policy, Verdict};
use api_guard_core::request::head::RequestHead;
use api_guard_core::support::mint;
use api_guard_core::support::test_env::TestHost;
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "https://api.test";
const NOW_S: u64 = 1_800_000_000;
const READER_KEY: &str = "ag_test_reader-0000000000000000";
const WRITER_KEY: &str = "ag_test_writer-1111111111111111";

fn key(name: &str) -> Value {
    let path = format!("{}/../tests/keys/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn token(sub: &str, roles: Value) -> String {
    let claims = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles,
                         "iat": NOW_S, "exp": NOW_S + 600 });
    mint::sign(&key("p256"), Alg::ES256, claims.as_object().unwrap()).unwrap()
}

fn policy(mode: &str) -> Policy {
    let config = json!({
        "mode": mode,
        "jwt": { "providers": [{
            "name": "main", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
            "jwks": { "inline": { "keys": [mint::public_jwk(&key("p256"))] } },
            "claims_to_headers": [ { "claim": "sub", "header": "x-user-id" } ]
        }]},
        // Two keys: the second one's id and scopes must be the ones that flow on.
        "api_keys": { "keys": [
            { "id": "reader", "prefix": "ag_test_reader-", "sha256": key_sha256_hex(READER_KEY),
              "scopes": ["docs:read"] },
            { "id": "writer", "prefix": "ag_test_writer-", "sha256": key_sha256_hex(WRITER_KEY),
              "scopes": ["docs:write"] }
        ]},
        "rate_limits": { "tight": { "requests": 2, "window_seconds": 60, "key": "ip" } },
        "routes": [
            { "name": "public", "match": { "path_prefix": "/public/" }, "auth": "none" },
            { "name": "login", "match": { "path_exact": "/login" }, "auth": "jwt",
              "rate_limit": "tight" },
            { "name": "limited-admin", "match": { "path_exact": "/limited-admin" }, "auth": "jwt",
              "rate_limit": "tight", "require": { "roles_any": ["admin"] } },
            { "name": "own-docs", "match": { "path_template": "/users/{id}/documents",
              "methods": ["GET"] }, "auth": "jwt", "owner": { "param": "id", "claim": "sub" },
              "require": { "roles_any": ["editor"] } },
            { "name": "writes", "match": { "path_prefix": "/writes/" }, "auth": "api_key",
              "require": { "scopes_all": ["docs:write"] } },
            { "name": "signup", "match": { "path_exact": "/signup", "methods": ["POST"] },
              "auth": "jwt", "max_body_bytes": 4096,
              "body_schema": { "type": "object", "required": ["email"],
                "properties": { "email": { "type": "string" } } } },
            { "name": "default", "match": { "path_prefix": "/" }, "auth": "jwt" }
        ]
    });
    config::load(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

/// One client (one IP) against one policy.
struct Client {
    policy: Policy,
    host: TestHost,
}

impl Client {
    fn new(mode: &str) -> Client {
        Client {
            policy: policy(mode),
            host: TestHost::new(NOW_S),
        }
    }

    fn head(method: &str, path: &str, extra: &[(&str, &str)]) -> RequestHead {
        let mut headers = vec![
            (":method".to_string(), method.to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), "api.test".to_string()),
            ("x-request-id".to_string(), "rid-1".to_string()),
        ];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        RequestHead::from_host(headers, Some("10.0.0.1:1234"))
    }

    fn send(&mut self, method: &str, path: &str, extra: &[(&str, &str)]) -> Decision {
        let head = Client::head(method, path, extra);
        self.policy.check_request(&head, &mut self.host.env(false))
    }
}

/// (status, event name, error code) of a decision; 200 and the event, if any, for an allow.
fn outcome(decision: &Decision) -> (u16, Option<&'static str>) {
    let status = match &decision.verdict {
        Verdict::Allow(_) => 200,
        Verdict::Deny(reply) => reply.status,
        Verdict::NeedBody { .. } => 100,
        other => panic!("unexpected verdict {other:?}"),
    };
    (status, decision.event.as_ref().map(|e| e.event))
}

fn forward(decision: &Decision) -> &Forward {
    match &decision.verdict {
        Verdict::Allow(forward) | Verdict::NeedBody { forward, .. } => forward,
        other => panic!("not forwarded: {other:?}"),
    }
}

fn bearer(sub: &str, roles: Value) -> String {
    format!("Bearer {}", token(sub, roles))
}

#[test]
fn the_screen_comes_before_authentication_and_routing() {
    let mut client = Client::new("enforce");
    // No credential and a path parameter: the screen answers, not authentication.
    assert_eq!(
        outcome(&client.send("GET", "/admin;x=1/x", &[])),
        (400, Some("bad_request"))
    );
    // A credential in the URL is refused before the route (which is public) is considered.
    assert_eq!(
        outcome(&client.send("GET", "/public/x?access_token=abc", &[])),
        (400, Some("credentials_in_url"))
    );
    assert_eq!(outcome(&client.send("GET", "/public/x", &[])), (200, None));
}

#[test]
fn refused_credentials_still_count_against_the_rate_limit() {
    let mut client = Client::new("enforce");
    let forged = format!("Bearer {}x", token("alice", json!([])));
    for _ in 0..2 {
        assert_eq!(
            outcome(&client.send("GET", "/login", &[("authorization", &forged)])),
            (401, Some("auth_failure"))
        );
    }
    // The third attempt is over the limit, even with a valid token: brute force is throttled.
    let valid = bearer("alice", json!([]));
    assert_eq!(
        outcome(&client.send("GET", "/login", &[("authorization", &valid)])),
        (429, Some("rate_limited"))
    );
}

#[test]
fn the_rate_limit_comes_before_authorization() {
    let mut client = Client::new("enforce");
    let viewer = bearer("bob", json!(["viewer"]));
    for _ in 0..2 {
        assert_eq!(
            outcome(&client.send("GET", "/limited-admin", &[("authorization", &viewer)])),
            (403, Some("authz_denied"))
        );
    }
    assert_eq!(
        outcome(&client.send("GET", "/limited-admin", &[("authorization", &viewer)])),
        (429, Some("rate_limited"))
    );
}

#[test]
fn requirements_answer_403_before_the_owner_rule_answers_404() {
    let mut client = Client::new("enforce");
    // Not an editor, and not the owner: the requirement is checked first.
    let viewer = bearer("bob", json!(["viewer"]));
    assert_eq!(
        outcome(&client.send(
            "GET",
            "/users/alice/documents",
            &[("authorization", &viewer)]
        )),
        (403, Some("authz_denied"))
    );
    // An editor who is not the owner: 404, exactly like a missing object, never 403.
    let editor = bearer("bob", json!(["editor"]));
    let decision = client.send(
        "GET",
        "/users/alice/documents",
        &[("authorization", &editor)],
    );
    assert_eq!(outcome(&decision), (404, Some("authz_denied")));
    match &decision.verdict {
        Verdict::Deny(reply) => assert!(reply.body.contains("\"not_found\""), "{}", reply.body),
        other => panic!("{other:?}"),
    }
    assert!(decision.event.unwrap().reason.starts_with("owner:"));
    // HEAD is GET's twin: the owner rule covers it.
    assert_eq!(
        outcome(&client.send(
            "HEAD",
            "/users/alice/documents",
            &[("authorization", &editor)]
        )),
        (404, Some("authz_denied"))
    );
    let own = client.send("GET", "/users/bob/documents", &[("authorization", &editor)]);
    assert_eq!(outcome(&own), (200, Some("authz_allowed")));
}

#[test]
fn identity_headers_are_the_filters_to_set() {
    let mut client = Client::new("enforce");
    let spoofed = [
        ("x-user-id", "root"),
        ("x_user_id", "root"),
        ("x-api-key-id", "writer"),
    ];
    // On a public route, with no credential: removed all the same.
    let public = client.send("GET", "/public/x", &spoofed);
    let removed = &forward(&public).remove_headers;
    for (name, _) in spoofed {
        assert!(
            removed.iter().any(|h| h == name),
            "{name} not removed: {removed:?}"
        );
    }
    // With a verified token: removed, and set from the token.
    let mut extra = spoofed.to_vec();
    let alice = bearer("alice", json!([]));
    extra.push(("authorization", &alice));
    let verified = client.send("GET", "/anything", &extra);
    let fwd = forward(&verified);
    assert!(fwd.remove_headers.iter().any(|h| h == "x_user_id"));
    assert!(fwd.remove_headers.iter().any(|h| h == "authorization"));
    assert!(fwd
        .set_headers
        .contains(&("x-user-id".to_string(), "alice".to_string())));
}

#[test]
fn the_verified_api_key_is_the_one_whose_id_and_scopes_flow_on() {
    let mut client = Client::new("enforce");
    let decision = client.send("PUT", "/writes/doc-1", &[("x-api-key", WRITER_KEY)]);
    assert_eq!(outcome(&decision), (200, Some("authz_allowed")));
    assert!(forward(&decision)
        .set_headers
        .contains(&("x-api-key-id".to_string(), "writer".to_string())));
    assert_eq!(
        decision.response.event_base.principal.as_deref(),
        Some("writer")
    );
    // The first key has no write scope: its id and scopes are never handed to another key.
    let reader = client.send("PUT", "/writes/doc-1", &[("x-api-key", READER_KEY)]);
    assert_eq!(outcome(&reader), (403, Some("authz_denied")));
    assert_eq!(reader.event.unwrap().principal.as_deref(), Some("reader"));
}

#[test]
fn report_mode_logs_what_it_would_refuse_and_still_strips_credentials() {
    let mut client = Client::new("report");
    let editor = bearer("bob", json!(["editor"]));
    let decision = client.send(
        "GET",
        "/users/alice/documents",
        &[("authorization", &editor), ("x-user-id", "alice")],
    );
    let event = decision.event.clone().unwrap();
    assert_eq!(
        (event.event, event.mode, event.status),
        ("authz_denied", "report", 404)
    );
    let fwd = forward(&decision);
    assert!(fwd.remove_headers.iter().any(|h| h == "authorization"));
    assert!(fwd.remove_headers.iter().any(|h| h == "x-user-id"));
}

#[test]
fn a_body_refusal_is_logged_with_the_principal_of_the_headers_phase() {
    let mut client = Client::new("enforce");
    let alice = bearer("alice", json!([]));
    let head = Client::head(
        "POST",
        "/signup",
        &[
            ("authorization", &alice),
            ("content-type", "application/json"),
        ],
    );
    let Client { policy, host } = &mut client;
    let headers_phase = policy.check_request(&head, &mut host.env(false));
    let Verdict::NeedBody { check, .. } = &headers_phase.verdict else {
        panic!("{:?}", headers_phase.verdict);
    };
    let body = policy.check_body(
        &head,
        check,
        br#"{"name":"no email"}"#,
        &headers_phase.response,
        &host.env(false),
    );
    assert_eq!(outcome(&body), (400, Some("bad_request")));
    let event = body.event.unwrap();
    assert_eq!(event.principal.as_deref(), Some("alice"));
    assert_eq!(event.route.as_deref(), Some("signup"));
    assert_eq!(event.client, "10.0.0.1");
    assert_eq!(event.request_id, "rid-1");
    let ok = policy.check_body(
        &head,
        check,
        br#"{"email":"a@b.test"}"#,
        &headers_phase.response,
        &host.env(false),
    );
    assert_eq!(outcome(&ok), (200, None));
}

fn tls_policy(require_tls: Value, trust_forwarded_proto: bool) -> Policy {
    let config = json!({
        "require_tls": require_tls,
        "trust_forwarded_proto": trust_forwarded_proto,
        "routes": [ { "name": "open", "match": { "path_prefix": "/" }, "auth": "none" } ]
    });
    config::load(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn over(policy: &Policy, method: &str, tls: bool, extra: &[(&str, &str)]) -> Decision {
    let mut head = Client::head(method, "/docs/a?page=2", extra);
    head.set_over_tls(tls);
    let mut host = Client::new("enforce").host;
    policy.check_request(&head, &mut host.env(false))
}

#[test]
fn require_tls_refuses_or_redirects_plain_text_and_trusts_no_client_header() {
    let refuse = tls_policy(json!(true), false);
    assert_eq!(outcome(&over(&refuse, "GET", true, &[])), (200, None));
    let plain = over(&refuse, "GET", false, &[]);
    assert_eq!(outcome(&plain), (400, Some("tls_required")));
    match &plain.verdict {
        Verdict::Deny(reply) => assert!(reply.body.contains("\"tls_required\"")),
        other => panic!("{other:?}"),
    }
    // A client's own x-forwarded-proto proves nothing unless the operator trusts the hop.
    let spoofed = over(&refuse, "GET", false, &[("x-forwarded-proto", "https")]);
    assert_eq!(outcome(&spoofed), (400, Some("tls_required")));

    let redirect = tls_policy(json!("redirect"), false);
    let get = over(&redirect, "GET", false, &[]);
    match &get.verdict {
        Verdict::Deny(reply) => {
            assert_eq!(reply.status, 308);
            assert!(reply
                .headers
                .contains(&("location".into(), "https://api.test/docs/a?page=2".into())));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(outcome(&over(&redirect, "HEAD", false, &[])).0, 308);
    // A POST has sent its body in clear text already: refused, not redirected.
    assert_eq!(
        outcome(&over(&redirect, "POST", false, &[])),
        (400, Some("tls_required"))
    );

    let behind_proxy = tls_policy(json!(true), true);
    assert_eq!(
        outcome(&over(
            &behind_proxy,
            "GET",
            false,
            &[("x-forwarded-proto", "https")]
        )),
        (200, None)
    );
    for proto in ["http", "https, http", "http, https"] {
        assert_eq!(
            outcome(&over(
                &behind_proxy,
                "GET",
                false,
                &[("x-forwarded-proto", proto)]
            )),
            (400, Some("tls_required")),
            "{proto}"
        );
    }
}

/// The value of `name` the response to `decision`'s request gets, from every origin.
fn planned_header(policy: &Policy, decision: &Decision, name: &str) -> Vec<Option<String>> {
    use api_guard_core::response::error_rewrite::ResponseOrigin;
    [
        (200, ResponseOrigin::Upstream),
        (403, ResponseOrigin::Filter),
        (503, ResponseOrigin::Envoy),
    ]
    .into_iter()
    .map(|(status, origin)| {
        policy
            .plan_response(&decision.response, status, origin)
            .set
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    })
    .collect()
}

#[test]
fn strict_transport_security_only_over_tls() {
    const HSTS: &str = "strict-transport-security";
    let sent = vec![Some("max-age=63072000; includeSubDomains".to_string()); 3];
    let never = vec![None; 3];
    for (require_tls, trust) in [
        (json!(false), false),
        (json!(true), false),
        (json!(false), true),
    ] {
        let policy = tls_policy(require_tls.clone(), trust);
        let case = format!("require_tls {require_tls}, trust_forwarded_proto {trust}");
        let tls = over(&policy, "GET", true, &[]);
        assert_eq!(
            planned_header(&policy, &tls, HSTS),
            sent,
            "{case}: over TLS"
        );
        let plain = over(&policy, "GET", false, &[]);
        assert_eq!(
            planned_header(&policy, &plain, HSTS),
            never,
            "{case}: plain"
        );
        // An upstream's own is stripped over plain HTTP, and replaced over TLS.
        let edits = policy.plan_response(
            &plain.response,
            200,
            api_guard_core::response::error_rewrite::ResponseOrigin::Upstream,
        );
        assert!(
            edits.remove.contains(&HSTS),
            "{case}: removed over plain HTTP"
        );
        let edits = policy.plan_response(
            &tls.response,
            200,
            api_guard_core::response::error_rewrite::ResponseOrigin::Upstream,
        );
        assert!(!edits.remove.contains(&HSTS), "{case}: set over TLS");
        // The other security headers go out either way.
        assert_eq!(
            planned_header(&policy, &plain, "x-content-type-options"),
            vec![Some("nosniff".to_string()); 3],
            "{case}"
        );
        let forwarded = over(&policy, "GET", false, &[("x-forwarded-proto", "https")]);
        let want = if trust { &sent } else { &never };
        assert_eq!(
            &planned_header(&policy, &forwarded, HSTS),
            want,
            "{case}: a client's x-forwarded-proto counts only from a trusted hop"
        );
        let listed = over(
            &policy,
            "GET",
            false,
            &[("x-forwarded-proto", "http, https")],
        );
        assert_eq!(
            planned_header(&policy, &listed, HSTS),
            never,
            "{case}: a list"
        );
    }
    // An override of its value is also sent only over TLS.
    let config = json!({
        "security_headers": { "set": { HSTS: "max-age=300" } },
        "routes": [ { "name": "open", "match": { "path_prefix": "/" }, "auth": "none" } ]
    });
    let policy = config::load(config.to_string().as_bytes()).unwrap();
    let tls = over(&policy, "GET", true, &[]);
    assert_eq!(
        planned_header(&policy, &tls, HSTS),
        vec![Some("max-age=300".to_string()); 3]
    );
    let plain = over(&policy, "GET", false, &[]);
    assert_eq!(planned_header(&policy, &plain, HSTS), never);
}

#[test]
fn require_tls_values_are_checked() {
    for (value, trust) in [(json!("yes"), false), (json!(1), false)] {
        let config = json!({ "require_tls": value, "trust_forwarded_proto": trust,
            "routes": [ { "name": "open", "match": { "path_prefix": "/" }, "auth": "none" } ] });
        let Err(errors) = config::load(config.to_string().as_bytes()) else {
            panic!("{value} accepted");
        };
        let text = errors[0].to_string();
        assert!(
            text.starts_with("require_tls:") || text.starts_with("trust_forwarded_proto:"),
            "{text}"
        );
    }
}

#[test]
fn network_lists_come_before_preflights_and_authentication() {
    let config = json!({
        "deny_ips": ["10.0.0.0/30"],
        "cors": { "allow_origins": ["https://app.test"] },
        "jwt": { "providers": [{
            "name": "main", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
            "jwks": { "inline": { "keys": [mint::public_jwk(&key("p256"))] } } }] },
        "routes": [
            { "name": "admin", "match": { "path_prefix": "/admin/" }, "auth": "jwt",
              "allow_ips": ["192.168.0.0/16"] },
            { "name": "default", "match": { "path_prefix": "/" }, "auth": "jwt" }
        ]
    });
    let policy = config::load(config.to_string().as_bytes()).unwrap();
    let mut host = Client::new("enforce").host;
    let preflight = [
        ("origin", "https://app.test"),
        ("access-control-request-method", "GET"),
    ];
    // 10.0.0.1 (the test client) is in the top-level deny list: even a preflight is refused.
    let head = Client::head("OPTIONS", "/x", &preflight);
    let decision = policy.check_request(&head, &mut host.env(false));
    assert_eq!(outcome(&decision), (403, Some("ip_denied")));
    assert_eq!(
        decision.event.unwrap().reason,
        "deny_ips: 10.0.0.0/30",
        "the event names the list and the CIDR"
    );
    // The route's allow list answers before authentication (no credential here: still 403).
    // From 172.16.0.9, whatever X-Forwarded-For says.
    let head = RequestHead::from_host(
        vec![
            (":method".into(), "GET".into()),
            (":path".into(), "/admin/x".into()),
            (":authority".into(), "api.test".into()),
            ("x-forwarded-for".into(), "192.168.1.1".into()),
        ],
        Some("172.16.0.9:5000"),
    );
    let decision = policy.check_request(&head, &mut host.env(false));
    assert_eq!(outcome(&decision), (403, Some("ip_denied")));
    assert_eq!(
        decision.event.unwrap().reason,
        "routes[0].allow_ips: not in the list"
    );
}

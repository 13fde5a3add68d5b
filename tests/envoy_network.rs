//! IP allow and deny lists through a real Envoy: matched against the address Envoy computed
//! (`use_remote_address: true`, the harness's listener: 127.0.0.1 for every test client), never
//! against `X-Forwarded-For` or `X-Real-IP`, which any client can write.

mod common;

use common::{assert_refusal, event_of, Envoy};
use serde_json::json;

fn plugin_config(top_level_deny: &[&str]) -> String {
    json!({
        "deny_ips": top_level_deny,
        "cors": { "allow_origins": ["https://app.test"] },
        "routes": [
            { "name": "internal", "match": { "path_prefix": "/internal/" }, "auth": "none",
              "allow_ips": ["10.0.0.0/8", "2001:db8::/32"] },
            { "name": "loopback-only", "match": { "path_prefix": "/loopback/" }, "auth": "none",
              "allow_ips": ["127.0.0.0/8", "::1"] },
            { "name": "not-loopback", "match": { "path_prefix": "/no-loopback/" }, "auth": "none",
              "allow_ips": ["0.0.0.0/0"], "deny_ips": ["127.0.0.1"] },
            { "name": "open", "match": { "path_prefix": "/" }, "auth": "none" }
        ]
    })
    .to_string()
}

#[test]
fn route_lists_admit_and_refuse_by_the_address_envoy_computed() {
    let envoy = Envoy::with_plugin(&plugin_config(&[]));
    let spoofs: [&[(&str, &str)]; 4] = [
        &[],
        &[("x-forwarded-for", "10.1.2.3")],
        &[("x-forwarded-for", "10.1.2.3, 10.4.5.6")],
        &[("x-real-ip", "10.1.2.3")],
    ];
    for headers in spoofs {
        let case = format!("internal from 127.0.0.1 with {headers:?}");
        let response = envoy.request("GET", "/internal/report", headers);
        assert_refusal(&case, &response, 403, "forbidden", None);
        let event = event_of(&envoy, &case, &response);
        assert_eq!(event["event"], "ip_denied", "{case}: {event}");
        assert_eq!(event["client"], "127.0.0.1", "{case}: {event}");
        assert!(
            event["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("routes[0].allow_ips")),
            "{case}: the event names the list: {event}"
        );
    }
    assert!(
        envoy.upstream_requests().is_empty(),
        "nothing reached the upstream"
    );

    let allowed = envoy.request("GET", "/loopback/x", &[]);
    assert_eq!(allowed.status, 200, "loopback-only from 127.0.0.1");
    assert_eq!(envoy.upstream_requests().len(), 1);
    envoy.clear_upstream_requests();

    // A deny list wins over an allow list that also holds the client.
    let response = envoy.request("GET", "/no-loopback/x", &[]);
    assert_refusal("deny wins over allow", &response, 403, "forbidden", None);
    let event = event_of(&envoy, "deny wins over allow", &response);
    assert_eq!(
        event["reason"], "routes[2].deny_ips: 127.0.0.1/32",
        "{event}"
    );
    assert_eq!(envoy.request("GET", "/elsewhere", &[]).status, 200);
}

#[test]
fn the_top_level_deny_list_covers_every_route_and_preflight() {
    let envoy = Envoy::with_plugin(&plugin_config(&["127.0.0.0/24"]));
    for path in ["/elsewhere", "/loopback/x", "/internal/x"] {
        let response = envoy.request("GET", path, &[]);
        assert_refusal(path, &response, 403, "forbidden", None);
        let event = event_of(&envoy, path, &response);
        assert_eq!(event["reason"], "deny_ips: 127.0.0.0/24", "{path}: {event}");
    }
    let preflight = envoy.request(
        "OPTIONS",
        "/elsewhere",
        &[
            ("origin", "https://app.test"),
            ("access-control-request-method", "GET"),
        ],
    );
    assert_refusal("preflight", &preflight, 403, "forbidden", None);
    assert!(envoy.upstream_requests().is_empty());
}

#[test]
fn without_a_top_level_list_preflights_are_answered() {
    // The control of the test above: the same preflight, answered when no list holds the client.
    let envoy = Envoy::with_plugin(&plugin_config(&["10.0.0.0/8"]));
    let preflight = envoy.request(
        "OPTIONS",
        "/elsewhere",
        &[
            ("origin", "https://app.test"),
            ("access-control-request-method", "GET"),
        ],
    );
    assert_eq!(preflight.status, 204, "{}", preflight.body_str());
}

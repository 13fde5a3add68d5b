//! `require_tls` through a real Envoy whose listener takes TLS and plain text on one port (the
//! TLS inspector picks the filter chain; the certificate is made at test time): TLS is what
//! Envoy saw on the connection, and a client's `x-forwarded-proto` proves nothing.

mod common;

use common::{assert_refusal, event_of, Envoy, EnvoyOptions};
use serde_json::json;

fn start(require_tls: serde_json::Value) -> Envoy {
    let config = json!({
        "require_tls": require_tls,
        "routes": [ { "name": "open", "match": { "path_prefix": "/" }, "auth": "none" } ]
    });
    Envoy::start(EnvoyOptions {
        plugin_config: Some(config.to_string()),
        tls: true,
        ..Default::default()
    })
}

#[test]
fn plain_text_is_refused_and_tls_is_served_on_the_same_listener() {
    let envoy = start(json!(true));
    let over_tls = envoy.https_request("GET", "/docs/a", &[]);
    assert_eq!(over_tls.status, 200, "over TLS: {}", over_tls.body_str());
    assert_eq!(envoy.upstream_requests().len(), 1);
    envoy.clear_upstream_requests();

    for headers in [vec![], vec![("x-forwarded-proto", "https")]] {
        let case = format!("plain text with {headers:?}");
        let response = envoy.request("GET", "/docs/a", &headers);
        assert_refusal(&case, &response, 400, "tls_required", None);
        let event = event_of(&envoy, &case, &response);
        assert_eq!(event["event"], "tls_required", "{case}: {event}");
    }
    assert!(
        envoy.upstream_requests().is_empty(),
        "nothing in clear text upstream"
    );
}

#[test]
fn redirect_sends_get_and_head_to_https_and_refuses_the_rest() {
    let envoy = start(json!("redirect"));
    let get = envoy.request("GET", "/docs/a?page=2", &[("host", "api.test:8443")]);
    assert_eq!(get.status, 308, "{}", get.body_str());
    assert_eq!(
        get.header("location"),
        Some("https://api.test:8443/docs/a?page=2")
    );
    let head = envoy.request("HEAD", "/docs/a", &[("host", "api.test")]);
    assert_eq!(head.status, 308);
    assert_eq!(head.header("location"), Some("https://api.test/docs/a"));
    let post = envoy.request("POST", "/docs/a", &[("host", "api.test")]);
    assert_refusal("POST in plain text", &post, 400, "tls_required", None);
    assert!(envoy.upstream_requests().is_empty());

    let over_tls = envoy.https_request("POST", "/docs/a", &[("content-length", "0")]);
    assert_eq!(
        over_tls.status,
        200,
        "POST over TLS: {}",
        over_tls.body_str()
    );
}

#[test]
fn without_require_tls_both_chains_serve() {
    // The control: the same listener and requests, with require_tls off.
    let envoy = start(json!(false));
    assert_eq!(envoy.request("GET", "/docs/a", &[]).status, 200);
    assert_eq!(envoy.https_request("GET", "/docs/a", &[]).status, 200);
}

#[test]
fn strict_transport_security_goes_out_over_tls_only() {
    const HSTS: &str = "strict-transport-security";
    const VALUE: &str = "max-age=63072000; includeSubDomains";
    // Without require_tls, with and without trust_forwarded_proto.
    for trust in [false, true] {
        let config = json!({
            "trust_forwarded_proto": trust,
            "routes": [ { "name": "open", "match": { "path_prefix": "/" }, "auth": "none" } ]
        });
        let envoy = Envoy::start(EnvoyOptions {
            plugin_config: Some(config.to_string()),
            tls: true,
            ..Default::default()
        });
        let case = format!("trust_forwarded_proto {trust}");
        let tls = envoy.https_request("GET", "/docs/a", &[]);
        assert_eq!(tls.status, 200, "{case}");
        assert_eq!(tls.header_all(HSTS), vec![VALUE], "{case}: over TLS");
        let plain = envoy.request("GET", "/docs/a", &[]);
        assert_eq!(plain.status, 200, "{case}");
        assert!(plain.header_all(HSTS).is_empty(), "{case}: plain text");
        assert_eq!(plain.header("x-content-type-options"), Some("nosniff"));
        // (Whether a trusted hop's x-forwarded-proto counts is core/tests/pipeline.rs's
        // `strict_transport_security_only_over_tls`: this harness's Envoy trusts no hop, so it
        // writes the header itself.)
    }
}

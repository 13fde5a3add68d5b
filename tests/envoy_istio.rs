//! api-guard loaded the way Istio configures it from `deploy/istio/wasmplugin.yaml`, through a
//! real Envoy 1.40 (issue 15).
//!
//! What Istio (pilot's WasmPlugin conversion, istio-agent's wasm cache) hands Envoy, reproduced:
//! - the HTTP filter is an extension config discovery (ECDS) entry named `<namespace>.<name>`,
//!   whose `type_urls` are the Wasm filter and RBAC (recent Istio puts a deny-all RBAC config in
//!   the filter's place when the module cannot be fetched under FAIL_CLOSE); Istio serves the
//!   `TypedExtensionConfig` over ADS, here Envoy reads the same resource from a file;
//! - the `PluginConfig`: `name` `<namespace>.<name>`, `root_id` = `pluginName`, no `vm_id`, no
//!   `allow_on_headers_stop_iteration` (a WasmPlugin cannot set it), `failure_policy`
//!   FAIL_CLOSED for `failStrategy: FAIL_CLOSE`, runtime v8, the module as a local file (the
//!   agent rewrites the oci:// URL to its cached copy), the resource-version environment
//!   variable;
//! - `configuration`: a `google.protobuf.StringValue` holding `pluginConfig` as Istio's
//!   `protomarshal.ToJSON` (legacy jsonpb) writes a `google.protobuf.Struct`: compact, keys in
//!   sorted order, every number a double, strings escaped as Go's `encoding/json` does
//!   (`<`, `>`, `&`, U+2028 and U+2029 as `\uXXXX`).
//!
//! Shown: the shipped configuration refuses a request without a token (401) and passes one with
//! the demo's token (200); a webhook route, which reads the body, fails closed under Istio (503
//! within the filter's bound, nothing upstream) while the other routes keep working; and a
//! pluginConfig the filter refuses fails closed (503 on every route).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::support::mint;
use common::{assert_refusal, bearer, claims, crate_root, Envoy, EnvoyOptions};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

const WASM_PLUGIN: &str = "deploy/istio/wasmplugin.yaml";
const DEMO_KEY: &str = "envoy/demo-keys/demo-es256.private.json";
const DEMO_ISSUER: &str = "https://auth.demo.api-guard.local";
const DEMO_AUDIENCE: &str = "https://api.demo.api-guard.local";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const WEBHOOK_SECRET: &str = "istio-test-webhook-secret-0123456789";
/// The filter's bound on the wait for a body callback that never comes, and the slack a loaded
/// machine may add (the root timer ticks every 250 ms); as in tests/envoy_body_hold.rs.
const BODY_WAIT: Duration = Duration::from_millis(3_000);
const BODY_WAIT_SLACK: Duration = Duration::from_millis(3_000);

/// The shipped WasmPlugin, as JSON.
fn wasm_plugin() -> Value {
    let text = std::fs::read_to_string(crate_root().join(WASM_PLUGIN)).unwrap();
    serde_norway::from_str(&text).unwrap()
}

/// `value` as Istio's legacy-jsonpb marshalling of a `google.protobuf.Struct` writes it.
fn istio_struct_json(value: &Value) -> String {
    let mut out = String::new();
    write_jsonpb(value, &mut out);
    out
}

fn write_jsonpb(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // A Struct's numbers are doubles; Go writes an integral double below 1e21 without a
        // fraction or exponent (every number of api-guard's configuration is one).
        Value::Number(n) => {
            let double = n.as_f64().unwrap();
            assert!(
                double.fract() == 0.0 && double.abs() < 1e21,
                "{double}: only integral numbers are reproduced here"
            );
            let _ = write!(out, "{double:.0}");
        }
        Value::String(s) => write_go_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_jsonpb(item, out);
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut keys: Vec<&String> = members.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_string(key, out);
                out.push(':');
                write_jsonpb(&members[key], out);
            }
            out.push('}');
        }
    }
}

/// A string as Go's `encoding/json` escapes it (HTML-safe).
fn write_go_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A YAML double-quoted scalar holding `s` (printable ASCII as is, the rest escaped).
fn yaml_string(s: &str) -> String {
    common::yaml_quote(s)
}

/// The Envoy options that load api-guard as Istio would for `plugin` (a WasmPlugin resource).
fn istio_options(plugin: &Value) -> EnvoyOptions {
    let spec = &plugin["spec"];
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert_eq!(spec["phase"], "AUTHN");
    let resource = format!(
        "{}.{}",
        plugin["metadata"]["namespace"].as_str().unwrap(),
        plugin["metadata"]["name"].as_str().unwrap()
    );
    let root_id = spec["pluginName"].as_str().unwrap();
    let configuration = istio_struct_json(&spec["pluginConfig"]);
    let filter = format!(
        r#"- name: {resource}
  config_discovery:
    config_source:
      path_config_source: {{ path: "@DIR@/ecds.yaml" }}
      initial_fetch_timeout: 0s
    type_urls: [ {WASM_TYPE}, {RBAC_TYPE} ]
"#
    );
    let ecds = format!(
        r#"version_info: "1"
resources:
- "@type": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig
  name: {resource}
  typed_config:
    "@type": {WASM_TYPE}
    config:
      name: {resource}
      root_id: {root_id}
      failure_policy: FAIL_CLOSED
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: {value}
      vm_config:
        runtime: envoy.wasm.runtime.v8
        code: {{ local: {{ filename: "@WASM@" }} }}
        environment_variables:
          key_values: {{ ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION: "1" }}
"#,
        value = yaml_string(&configuration),
    );
    for absent in ["vm_id", "allow_on_headers_stop_iteration"] {
        assert!(
            !ecds.contains(absent) && !filter.contains(absent),
            "{absent}"
        );
    }
    EnvoyOptions {
        wasm_filter_yaml: Some(filter),
        extra_files: vec![("ecds.yaml".to_string(), ecds)],
        // A sidecar's node identity (xDS subscriptions, ECDS included, need one).
        extra_bootstrap_yaml: Some(
            "node: { id: sidecar~127.0.0.1~my-api-0.my-app~my-app.svc.cluster.local, cluster: my-api.my-app }\n"
                .to_string(),
        ),
        ..Default::default()
    }
}

fn demo_token(sub: &str, scope: &str) -> String {
    let key: Value =
        serde_json::from_str(&std::fs::read_to_string(crate_root().join(DEMO_KEY)).unwrap())
            .unwrap();
    let claims = claims(DEMO_ISSUER, DEMO_AUDIENCE, sub, json!({ "scope": scope }));
    mint::sign(&key, Alg::ES256, claims.as_object().unwrap()).unwrap()
}

/// The extension config reached the filter chain: Envoy counts one successful reload.
fn assert_loaded_through_ecds(envoy: &Envoy) {
    let stats = envoy
        .admin("/stats?filter=extension_config_discovery")
        .body_str()
        .to_string();
    assert!(
        stats.contains("my-app.api-guard.config_reload: 1"),
        "the filter was not loaded through ECDS: {stats}"
    );
    assert!(
        stats.contains("my-app.api-guard.config_fail: 0"),
        "ECDS refused the extension config: {stats}"
    );
}

#[test]
fn the_shipped_wasm_plugin_guards_requests_under_istio() {
    let plugin = wasm_plugin();
    let envoy = Envoy::start(istio_options(&plugin));
    assert_loaded_through_ecds(&envoy);

    let response = envoy.request("GET", "/healthz", &[]);
    assert_eq!(response.status, 200, "health: {}", response.body_str());
    envoy.clear_upstream_requests();

    // No token: the filter's 401, nothing upstream.
    let response = envoy.request("GET", "/api/documents", &[]);
    assert_refusal(
        "no token",
        &response,
        401,
        "unauthorized",
        Some(r#"Bearer realm="api""#),
    );
    assert!(envoy.upstream_requests().is_empty(), "no token: upstream");

    // The demo's token: forwarded, with the identity headers of claims_to_headers.
    let token = demo_token("alice", "documents:read");
    let auth = bearer(&token);
    let response = envoy.request("GET", "/api/documents", &[("authorization", auth.as_str())]);
    assert_eq!(response.status, 200, "token: {}", response.body_str());
    let seen = common::only_upstream_request(&envoy, "token");
    assert_eq!(seen.header("x-user-id"), Some("alice"));
    assert_eq!(seen.header("authorization"), None, "forward_token: false");
    envoy.clear_upstream_requests();

    // The owner rule: alice may read her documents, not bob's.
    let response = envoy.request(
        "GET",
        "/users/alice/documents",
        &[("authorization", auth.as_str())],
    );
    assert_eq!(response.status, 200, "own: {}", response.body_str());
    let response = envoy.request(
        "GET",
        "/users/bob/documents",
        &[("authorization", auth.as_str())],
    );
    // Someone else's resource is answered as absent (its existence is not disclosed).
    assert_refusal("someone else's", &response, 404, "not_found", None);
}

#[test]
fn a_webhook_route_fails_closed_within_the_bound_under_istio() {
    let mut plugin = wasm_plugin();
    let config = &mut plugin["spec"]["pluginConfig"];
    // A webhook route before the others; Istio's wasm filter has no
    // allow_on_headers_stop_iteration, so the filter never sees this route's body.
    config["webhooks"] = json!({ "github": { "scheme": "github", "secrets": [WEBHOOK_SECRET] } });
    config["routes"].as_array_mut().unwrap().insert(
        0,
        json!({ "name": "github-webhook", "auth": "none", "webhook": "github",
                "match": { "path_exact": "/webhooks/github", "methods": ["POST"] } }),
    );
    let envoy = Envoy::start(istio_options(&plugin));
    assert_loaded_through_ecds(&envoy);

    let body = br#"{"action":"opened","number":1}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    let signature: String =
        mac.finalize()
            .into_bytes()
            .iter()
            .fold(String::from("sha256="), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            });
    let started = Instant::now();
    let response = envoy.request_with_body(
        "POST",
        "/webhooks/github",
        &[
            ("x-hub-signature-256", signature.as_str()),
            ("content-type", "application/json"),
        ],
        body,
    );
    let elapsed = started.elapsed();
    assert_refusal("webhook", &response, 503, "service_unavailable", None);
    assert!(
        elapsed >= BODY_WAIT - Duration::from_millis(300),
        "answered before the bound ({elapsed:?}): it did not wait for the body"
    );
    assert!(
        elapsed < BODY_WAIT + BODY_WAIT_SLACK,
        "answered after {elapsed:?}, beyond the bound"
    );
    assert!(envoy.upstream_requests().is_empty(), "webhook: upstream");
    eprintln!("webhook under Istio: 503 after {elapsed:?}");

    // Routes that do not read the body are unaffected.
    let response = envoy.request("GET", "/api/documents", &[]);
    assert_refusal(
        "no token after",
        &response,
        401,
        "unauthorized",
        Some(r#"Bearer realm="api""#),
    );
    let auth = bearer(&demo_token("alice", "documents:read"));
    let response = envoy.request("GET", "/api/documents", &[("authorization", auth.as_str())]);
    assert_eq!(response.status, 200, "token after: {}", response.body_str());
}

/// The reproduction of Istio's serialisation is faithful where it differs from serde_json's.
#[test]
fn pluginconfig_is_serialised_as_istio_does() {
    let value = json!({ "b": [1, 65536.0, true, null], "a": { "z": "x<y>&z\u{2028}", "c": "\n" } });
    assert_eq!(
        istio_struct_json(&value),
        r#"{"a":{"c":"\n","z":"x\u003cy\u003e\u0026z\u2028"},"b":[1,65536,true,null]}"#
    );
    // What the filter receives parses back to the same configuration.
    let shipped = &wasm_plugin()["spec"]["pluginConfig"];
    let reparsed: Value = serde_json::from_str(&istio_struct_json(shipped)).unwrap();
    assert_eq!(&reparsed, shipped);
}

/// A pluginConfig the filter refuses (which `api-guard check` would have caught) fails closed
/// under Istio too: every route answers the filter's 503, nothing reaches the upstream.
#[test]
fn an_invalid_plugin_config_fails_closed_under_istio() {
    let mut plugin = wasm_plugin();
    plugin["spec"]["pluginConfig"]["routes"][0]["match"]["path_exact"] = json!("healthz");
    let envoy = Envoy::start(istio_options(&plugin));
    for path in ["/healthz", "/api/documents"] {
        let response = envoy.request("GET", path, &[]);
        assert_refusal(path, &response, 503, "service_unavailable", None);
    }
    assert!(
        envoy.upstream_requests().is_empty(),
        "invalid config: upstream"
    );
    assert!(
        envoy.wait_for_log(
            "invalid configuration, refusing to start",
            Duration::from_secs(10)
        ),
        "the filter logs why it refuses"
    );
}

//! Issue 12, class 9 through a real Envoy: the replies Envoy makes before any HTTP filter runs
//! (HTTP/1.1 codec errors, a fragment in the request target, a missing Host header, HTTP/1.0)
//! never pass through api-guard. The connection manager's `local_reply_config` (shipped in
//! `envoy/demo.yaml`; the harness renders the same block) gives them the security headers, an
//! `x-request-id` and the JSON error envelope, and leaves every other reply as it was: the
//! filter's own replies, Envoy's replies that pass through the filter (which rewrites them
//! itself) and upstream responses.
//!
//! Envoy runs the mappers on the filter's own `send_http_response` replies too (checked on Envoy
//! 1.40: a mapper that matches everything replaces the filter's envelope and content type), so
//! the first mapper must match, and keep as they are, every reply but the codec-level ones.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use api_guard_core::response::reply::{envelope, ErrorCode};
use api_guard_core::response::security_headers::{DEFAULT_SET, HSTS};
use common::{Envoy, EnvoyOptions, Response, LEAKY_DETAIL_BODY};
use serde_json::Value;
use std::time::Duration;

/// Public routes, an API-key route (no key: the filter's 401), the upstream's `/status/<code>`;
/// anything else matches no route (the filter's 404).
const PLUGIN: &str = r#"{
  "routes": [
    { "name": "public", "match": { "path_prefix": "/public/" }, "auth": "none" },
    { "name": "status", "match": { "path_prefix": "/status/" }, "auth": "none" },
    { "name": "api", "match": { "path_prefix": "/api/" }, "auth": "api_key" }
  ],
  "api_keys": {
    "header": "x-api-key",
    "keys": [ { "id": "test", "prefix": "ag_test_",
                "sha256": "0000000000000000000000000000000000000000000000000000000000000000" } ]
  }
}"#;

fn is_uuid(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Exactly one `name` header, with `value`.
fn assert_one_header(case: &str, response: &Response, name: &str, value: &str) {
    assert_eq!(
        response.header_all(name),
        vec![value],
        "{case}: {name}; headers {:?}",
        response.headers
    );
}

/// The default security headers of a response over plain HTTP: all but
/// `strict-transport-security`, which never goes out over plain HTTP (RFC 6797 section 7.2).
fn assert_security_headers(case: &str, response: &Response) {
    for (name, value) in DEFAULT_SET {
        if name == HSTS {
            assert!(
                response.header_all(name).is_empty(),
                "{case}: no {name} over plain HTTP; headers {:?}",
                response.headers
            );
        } else {
            assert_one_header(case, response, name, value);
        }
    }
}

/// A codec-level rejection as the mappers answer it: the status Envoy chose, the envelope the
/// filter would have written for that status (byte for byte), its request id in the header.
fn assert_codec_reply(case: &str, response: &Response, status: u16, code: ErrorCode) -> String {
    assert_eq!(
        response.status,
        status,
        "{case}: status; body {}",
        response.body_str()
    );
    assert_one_header(case, response, "content-type", "application/json");
    assert_one_header(case, response, "cache-control", "no-store");
    assert_security_headers(case, response);
    let ids = response.header_all("x-request-id");
    assert_eq!(
        ids.len(),
        1,
        "{case}: one x-request-id: {:?}",
        response.headers
    );
    let id = ids[0].to_string();
    assert!(is_uuid(&id), "{case}: x-request-id {id:?}");
    assert_eq!(
        response.body_str(),
        envelope(code, &id),
        "{case}: the envelope"
    );
    id
}

fn raw(envoy: &Envoy, request: &str) -> Response {
    envoy
        .request_raw(request.as_bytes())
        .unwrap_or_else(|e| panic!("{request:?}: {e}"))
}

#[test]
fn codec_level_rejections_get_the_envelope_and_the_security_headers() {
    let envoy = Envoy::with_plugin(PLUGIN);
    assert!(
        envoy.config_yaml().contains("local_reply_config:"),
        "the harness renders the demo's local_reply_config"
    );

    let cases: [(&str, String, u16); 8] = [
        (
            "fragment in the request target",
            "GET /public/a#frag HTTP/1.1\r\nHost: api.test\r\n\r\n".into(),
            400,
        ),
        (
            // The client's x-request-id is neither trusted nor echoed: Envoy refuses the path
            // before it would have replaced it.
            "fragment, with the client's own x-request-id",
            "GET /public/a#frag HTTP/1.1\r\nHost: api.test\r\nX-Request-Id: client-\"chosen\r\n\r\n"
                .into(),
            400,
        ),
        (
            "lower-case method",
            "get /public/a HTTP/1.1\r\nHost: api.test\r\n\r\n".into(),
            400,
        ),
        (
            "header line without a colon",
            "GET /public/a HTTP/1.1\r\nHost: api.test\r\nno colon here\r\n\r\n".into(),
            400,
        ),
        (
            "content-length and chunked together",
            "POST /public/a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .into(),
            400,
        ),
        (
            "missing Host header, with the client's own x-request-id",
            "GET /public/a HTTP/1.1\r\nX-Request-Id: client-chosen\r\n\r\n".into(),
            400,
        ),
        (
            "HTTP/1.0",
            "GET /public/a HTTP/1.0\r\nHost: api.test\r\n\r\n".into(),
            426,
        ),
        (
            "headers over Envoy's 60 KiB limit",
            format!(
                "GET /public/a HTTP/1.1\r\nHost: api.test\r\nX-Big: {}\r\n\r\n",
                "a".repeat(70 * 1024)
            ),
            431,
        ),
    ];
    let mut ids = Vec::new();
    for (case, request, status) in &cases {
        let response = raw(&envoy, request);
        let id = assert_codec_reply(case, &response, *status, ErrorCode::BadRequest);
        assert!(
            !response.body_str().contains("client-"),
            "{case}: the client's id is not echoed"
        );
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), cases.len(), "a fresh request id every time");
    assert!(
        envoy.upstream_requests().is_empty(),
        "nothing reached the upstream: {:?}",
        envoy.upstream_requests()
    );
}

#[test]
fn filter_replies_and_upstream_responses_are_left_as_they_were() {
    let envoy = Envoy::with_plugin(PLUGIN);

    // The filter's own replies: exactly the bytes the filter writes, one content type, one id.
    let filter_replies = [
        (
            "the filter's 401 (no API key)",
            "/api/documents",
            ErrorCode::Unauthorized,
        ),
        (
            "the filter's 404 (no route)",
            "/nowhere",
            ErrorCode::NotFound,
        ),
    ];
    for (case, path, code) in filter_replies {
        let response = envoy.request("GET", path, &[]);
        assert_eq!(response.status, code.status(), "{case}");
        let ids = response.header_all("x-request-id");
        assert_eq!(ids.len(), 1, "{case}: {:?}", response.headers);
        assert!(is_uuid(ids[0]), "{case}: {ids:?}");
        assert_eq!(response.body_str(), envelope(code, ids[0]), "{case}: body");
        assert_one_header(case, &response, "content-type", "application/json");
        assert_security_headers(case, &response);
    }
    let response = envoy.request("GET", "/api/documents", &[]);
    assert_one_header("401", &response, "www-authenticate", "Bearer realm=\"api\"");

    // Sent as raw bytes, a well-formed request is still the filter's to answer.
    let response = raw(
        &envoy,
        "GET /nowhere HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    );
    let id = response.header("x-request-id").unwrap().to_string();
    assert_eq!(response.body_str(), envelope(ErrorCode::NotFound, &id));

    // Upstream responses: the upstream's own bytes.
    let response = envoy.request("GET", "/public/page", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body_str(),
        r#"{"upstream":"ok","path":"/public/page"}"#
    );
    assert_one_header(
        "upstream 200",
        &response,
        "content-type",
        "application/json",
    );
    assert_security_headers("upstream 200", &response);
    // An upstream 404 is not rewritten (errors.rewrite_upstream defaults to 5xx)...
    let response = envoy.request("GET", "/status/404", &[]);
    assert_eq!(response.status, 404);
    assert_eq!(response.body_str(), LEAKY_DETAIL_BODY);
    // ...an upstream 500 gets the filter's envelope, once.
    let response = envoy.request("GET", "/status/500", &[]);
    assert_eq!(response.status, 500);
    let id = response.header("x-request-id").unwrap().to_string();
    assert_eq!(response.body_str(), envelope(ErrorCode::UpstreamError, &id));
    assert_one_header(
        "upstream 500",
        &response,
        "content-type",
        "application/json",
    );
}

#[test]
fn envoy_replies_that_pass_through_the_filter_are_left_to_it() {
    // Envoy's own 503 (connection refused) reaches the filter with Envoy's text body, which the
    // filter logs and replaces. Had a mapper rewritten it first, the log would hold the mapper's
    // JSON instead of Envoy's text.
    let envoy = Envoy::start(EnvoyOptions {
        plugin_config: Some(PLUGIN.to_string()),
        upstream_down: true,
        ..Default::default()
    });
    let response = envoy.request("GET", "/public/page", &[]);
    assert_eq!(response.status, 503, "{}", response.body_str());
    let id = response.header("x-request-id").unwrap().to_string();
    assert_eq!(
        response.body_str(),
        envelope(ErrorCode::ServiceUnavailable, &id)
    );
    assert_one_header("Envoy's 503", &response, "content-type", "application/json");
    assert_one_header("Envoy's 503", &response, "x-request-id", &id);
    assert_security_headers("Envoy's 503", &response);
    assert!(
        envoy.wait_for_log(
            "upstream connect error or disconnect/reset before headers",
            Duration::from_secs(5)
        ),
        "the filter saw Envoy's own body; log:\n{}",
        common::tail(&envoy.log(), 20)
    );
}

/// What the demo ships (and the harness renders): a pass-through mapper first, then one mapper
/// per status class whose body is the filter's own envelope for that status and whose headers
/// are the filter's default security headers.
#[test]
fn the_shipped_mappers_write_the_filters_envelope_and_headers() {
    let text = std::fs::read_to_string(common::crate_root().join("envoy/demo.yaml")).unwrap();
    let demo: Value = serde_norway::from_str(&text).unwrap();
    let hcm =
        &demo["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let mappers = hcm["local_reply_config"]["mappers"].as_array().unwrap();
    assert!(
        hcm["local_reply_config"].get("body_format").is_none(),
        "a top-level body_format would apply to every local reply, the filter's included"
    );

    let pass = &mappers[0];
    assert!(pass.get("headers_to_add").is_none() && pass.get("body_format_override").is_none());
    let expression = pass["filter"]["extension_filter"]["typed_config"]["expression"]
        .as_str()
        .unwrap();
    assert!(expression.starts_with("'x-request-id' in response.headers ||"));

    let expected = [
        ("response.code == 404", ErrorCode::NotFound),
        ("response.code == 413", ErrorCode::PayloadTooLarge),
        (
            "response.code >= 400 && response.code < 500",
            ErrorCode::BadRequest,
        ),
        ("response.code == 503", ErrorCode::ServiceUnavailable),
        ("response.code >= 500", ErrorCode::UpstreamError),
    ];
    assert_eq!(mappers.len(), expected.len() + 1);
    for (mapper, (expression, code)) in mappers[1..].iter().zip(expected) {
        assert_eq!(
            mapper["filter"]["extension_filter"]["typed_config"]["expression"],
            expression
        );
        let body = &mapper["body_format_override"];
        assert_eq!(body["content_type"], "application/json");
        assert_eq!(
            body["text_format_source"]["inline_string"],
            envelope(code, "%RESP(X-REQUEST-ID)%"),
            "{expression}"
        );
        let headers: Vec<(&str, &str)> = mapper["headers_to_add"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                assert_eq!(h["append_action"], "OVERWRITE_IF_EXISTS_OR_ADD");
                (
                    h["header"]["key"].as_str().unwrap(),
                    h["header"]["value"].as_str().unwrap(),
                )
            })
            .collect();
        let mut wanted = vec![
            ("x-request-id", "%UNIQUE_ID%"),
            ("cache-control", "no-store"),
        ];
        wanted.extend(DEFAULT_SET.into_iter().filter(|(name, _)| *name != HSTS));
        assert_eq!(headers, wanted, "{expression}");
    }
}

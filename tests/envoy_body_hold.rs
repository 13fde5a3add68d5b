//! Bodies read whole (`body_schema`, `webhook`) through a real Envoy 1.40 (issue 12, classes 7
//! and 8): every 413 is the filter's envelope, also for a chunked body one byte over Envoy's own
//! buffer limit (1 MiB, the default bound of these routes), over HTTP/1.1 and HTTP/2; an HTTP/2
//! body that ends with trailers is checked; and without `allow_on_headers_stop_iteration: true`
//! (every Istio `WasmPlugin`) such requests fail closed with a 503 within a bound, with one log
//! line naming the setting, while routes that do not read the body still work.
//!
//! The HTTP/2 client is tests/common/h2c.py (PyPI `h2` in the project's .venv).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    assert_refusal, event_line_with_id, event_of, only_upstream_request, send_h2c, Envoy,
    EnvoyOptions, H2Outcome, H2Request, Response,
};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// The default bound of routes that read the body, and Envoy's default buffer limit.
const MIB: usize = 1_048_576;
const GITHUB_SECRET: &str = "body-hold-github-secret";
/// The filter's bound on the wait for a body callback (`BODY_WAIT_TIMEOUT_MS`), and the slack a
/// loaded machine may add to it (the timer ticks every 250 ms).
const BODY_WAIT: Duration = Duration::from_millis(3_000);
const BODY_WAIT_SLACK: Duration = Duration::from_millis(3_000);
const MISSING_SETTING_LOG: &str = "lacks `allow_on_headers_stop_iteration: true`";

fn config(mode: &str) -> String {
    json!({
        "mode": mode,
        "routes": [
            { "name": "schema", "match": { "path_exact": "/schema" }, "auth": "none",
              "body_schema": { "type": "object", "required": ["a"],
                               "properties": { "a": { "type": "string" } } } },
            { "name": "small", "match": { "path_exact": "/small" }, "auth": "none",
              "max_body_bytes": 1024, "body_schema": { "type": "object" } },
            { "name": "big", "match": { "path_exact": "/big" }, "auth": "none",
              "max_body_bytes": 3_000_000, "body_schema": { "type": "object" } },
            { "name": "hook", "match": { "path_exact": "/hook", "methods": ["POST"] },
              "auth": "none", "webhook": "gh" },
            { "name": "open", "match": { "path_prefix": "/" }, "auth": "none" }
        ],
        "webhooks": { "gh": { "scheme": "github", "secrets": [GITHUB_SECRET] } }
    })
    .to_string()
}

fn start(options: EnvoyOptions) -> Envoy {
    Envoy::start(EnvoyOptions {
        plugin_config: Some(
            options
                .plugin_config
                .clone()
                .unwrap_or_else(|| config("enforce")),
        ),
        ..options
    })
}

/// A JSON object `{"a":"xxxx…"}` of exactly `len` bytes.
fn json_body(len: usize) -> Vec<u8> {
    assert!(len >= 8);
    let mut body = b"{\"a\":\"".to_vec();
    body.resize(len - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

fn github_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(GITHUB_SECRET.as_bytes()).unwrap();
    mac.update(body);
    let digest: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={digest}")
}

// ---- An HTTP/1.1 client that writes a chunked body in separate writes -------------------------

/// Sends `POST path` with a chunked body: the headers, then each chunk, in separate writes with
/// `pause` after each (zero: everything in one write), and reads the response. Write errors are ignored (Envoy may answer
/// and close before the body is sent), and a reset after the response is no error.
fn post_chunked(
    envoy: &Envoy,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
    pause: Duration,
) -> Response {
    let addr = SocketAddr::from(([127, 0, 0, 1], envoy.port()));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(
        "content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    let mut pending = head.into_bytes();
    let mut written = Ok(());
    if !pause.is_zero() {
        // The headers alone first: the body comes `pause` later.
        written = stream.write_all(&pending);
        pending.clear();
        thread::sleep(pause);
    }
    for chunk in chunks {
        pending.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        pending.extend_from_slice(chunk);
        pending.extend_from_slice(b"\r\n");
        if !pause.is_zero() && written.is_ok() {
            written = stream.write_all(&pending);
            pending.clear();
            thread::sleep(pause);
        }
    }
    pending.extend_from_slice(b"0\r\n\r\n");
    if written.is_ok() {
        let _ = stream.write_all(&pending);
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => {
                assert!(!raw.is_empty(), "POST {path}: no response ({e})");
                break;
            }
        }
    }
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "POST {path}: unreadable response {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(300)])
        )
    })
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let mut rest = raw;
    loop {
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&rest[..end]).ok()?;
        let body = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let body = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut out = Vec::new();
            let mut at = body;
            loop {
                let line_end = at.windows(2).position(|w| w == b"\r\n")?;
                let size =
                    usize::from_str_radix(std::str::from_utf8(&at[..line_end]).ok()?, 16).ok()?;
                at = &at[line_end + 2..];
                if size == 0 {
                    break;
                }
                out.extend_from_slice(at.get(..size)?);
                at = at.get(size + 2..)?;
            }
            out
        } else if let Some(length) = find("content-length") {
            body.get(..length.parse().ok()?)?.to_vec()
        } else {
            body.to_vec()
        };
        return Some(Response {
            status,
            headers,
            body,
        });
    }
}

// ---- Assertions -------------------------------------------------------------------------------

/// The filter's refusal: the envelope, the request id, the security headers (none of which
/// Envoy's own plain-text local reply carries).
fn assert_filter_refusal(case: &str, response: &Response, status: u16, code: &str) {
    assert_refusal(case, response, status, code, None);
    for header in ["x-content-type-options", "x-frame-options"] {
        assert!(
            response.header(header).is_some(),
            "{case}: {header} missing: {:?}",
            response.headers
        );
    }
}

fn assert_too_large_event(envoy: &Envoy, case: &str, response: &Response) {
    let event = event_of(envoy, case, response);
    assert_eq!(event["event"], "payload_too_large", "{case}: {event}");
    assert_eq!(event["status"], 413, "{case}: {event}");
}

fn h2(envoy: &Envoy, request: &H2Request<'_>, case: &str) -> Response {
    match send_h2c(envoy.port(), request) {
        H2Outcome::Response(response) => response,
        H2Outcome::Reset(code) => panic!("{case}: stream reset ({code:?}) without a response"),
    }
}

fn h2_post<'a>(path: &'a str, chunks: Vec<&'a [u8]>) -> H2Request<'a> {
    H2Request {
        method: "POST",
        path,
        headers: vec![("content-type", "application/json")],
        chunks,
        ..Default::default()
    }
}

// ---- Class 7: every 413 is the filter's --------------------------------------------------------

#[test]
fn buffered_body_limit_is_the_filters_over_http1() {
    let envoy = start(EnvoyOptions::default());
    let over = json_body(MIB + 1);
    let exact = json_body(MIB);

    let cases: [(&str, Vec<&[u8]>, Duration); 4] = [
        (
            "1 MiB + 1, 64 KiB chunks, one write",
            over.chunks(64 * 1024).collect(),
            Duration::ZERO,
        ),
        (
            "1 MiB + 1, 16 KiB chunks, one write",
            over.chunks(16 * 1024).collect(),
            Duration::ZERO,
        ),
        ("1 MiB + 1, one chunk", vec![&over[..]], Duration::ZERO),
        (
            "1 MiB + 1, 64 KiB chunks, separate writes",
            over.chunks(64 * 1024).collect(),
            Duration::from_millis(5),
        ),
    ];
    for (case, chunks, pause) in cases {
        envoy.clear_upstream_requests();
        let response = post_chunked(&envoy, "/schema", &[], &chunks, pause);
        assert_filter_refusal(case, &response, 413, "payload_too_large");
        assert_too_large_event(&envoy, case, &response);
        assert!(envoy.upstream_requests().is_empty(), "{case}: upstream");
    }

    // Exactly the bound is accepted, and the body goes upstream byte for byte (the filter took
    // it out of Envoy's buffer chunk by chunk and put it back).
    for (case, chunk, pause) in [
        ("exactly 1 MiB, 64 KiB chunks", 64 * 1024, Duration::ZERO),
        (
            "exactly 1 MiB, 100 KiB chunks, separate writes",
            100 * 1024,
            Duration::from_millis(5),
        ),
        ("exactly 1 MiB, one chunk", MIB, Duration::ZERO),
    ] {
        envoy.clear_upstream_requests();
        let chunks: Vec<&[u8]> = exact.chunks(chunk).collect();
        let response = post_chunked(&envoy, "/schema", &[], &chunks, pause);
        assert_eq!(response.status, 200, "{case}: {}", response.body_str());
        let seen = only_upstream_request(&envoy, case);
        assert!(
            seen.body == exact,
            "{case}: body upstream differs ({} bytes)",
            seen.body.len()
        );
    }

    // Many small pieces, in separate writes: still the whole body, in order.
    let small: Vec<u8> = json_body(20_000);
    let chunks: Vec<&[u8]> = small.chunks(997).collect();
    envoy.clear_upstream_requests();
    let response = post_chunked(&envoy, "/schema", &[], &chunks, Duration::from_millis(3));
    assert_eq!(
        response.status,
        200,
        "small pieces: {}",
        response.body_str()
    );
    assert_eq!(only_upstream_request(&envoy, "small pieces").body, small);

    // The check still sees the whole body: invalid JSON schema in the last piece.
    let mut invalid = json_body(300_000);
    let len = invalid.len();
    invalid[len - 2] = b'"'; // {"a":"xxx""} is not JSON
    invalid[len - 3] = b'"';
    let chunks: Vec<&[u8]> = invalid.chunks(64 * 1024).collect();
    envoy.clear_upstream_requests();
    let response = post_chunked(&envoy, "/schema", &[], &chunks, Duration::from_millis(5));
    assert_eq!(
        response.status,
        400,
        "invalid body: {}",
        response.body_str()
    );
    assert_eq!(response.json()["code"], "bad_request");
    assert!(
        envoy.upstream_requests().is_empty(),
        "invalid body upstream"
    );

    // A webhook body near the bound, in pieces: verified whole, forwarded intact; a changed
    // last piece fails the signature.
    let hook: Vec<u8> = json_body(900_000);
    let signature = github_signature(&hook);
    let chunks: Vec<&[u8]> = hook.chunks(128 * 1024).collect();
    envoy.clear_upstream_requests();
    let response = post_chunked(
        &envoy,
        "/hook",
        &[("x-hub-signature-256", &signature)],
        &chunks,
        Duration::from_millis(5),
    );
    assert_eq!(response.status, 200, "webhook: {}", response.body_str());
    assert!(
        only_upstream_request(&envoy, "webhook").body == hook,
        "webhook body upstream"
    );
    let mut altered = hook.clone();
    altered[899_990] = b'y';
    let chunks: Vec<&[u8]> = altered.chunks(128 * 1024).collect();
    envoy.clear_upstream_requests();
    let response = post_chunked(
        &envoy,
        "/hook",
        &[("x-hub-signature-256", &signature)],
        &chunks,
        Duration::from_millis(5),
    );
    assert_filter_refusal("webhook altered", &response, 400, "invalid_signature");
    assert!(envoy.upstream_requests().is_empty(), "webhook altered");
    // ... and over the bound by one byte, correctly signed: the filter's 413.
    let hook_over = json_body(MIB + 1);
    let signature = github_signature(&hook_over);
    let chunks: Vec<&[u8]> = hook_over.chunks(64 * 1024).collect();
    envoy.clear_upstream_requests();
    let response = post_chunked(
        &envoy,
        "/hook",
        &[("x-hub-signature-256", &signature)],
        &chunks,
        Duration::ZERO,
    );
    assert_filter_refusal("webhook 1 MiB + 1", &response, 413, "payload_too_large");
    assert!(envoy.upstream_requests().is_empty(), "webhook 1 MiB + 1");
}

#[test]
fn buffered_body_limit_is_the_filters_over_http2_and_trailers_are_checked() {
    let envoy = start(EnvoyOptions::default());
    let over = json_body(MIB + 1);
    let exact = json_body(MIB);

    for (case, chunk) in [
        ("h2 1 MiB + 1, 64 KiB DATA", 64 * 1024),
        ("h2 1 MiB + 1, one run of DATA", MIB + 1),
    ] {
        envoy.clear_upstream_requests();
        let response = h2(
            &envoy,
            &h2_post("/schema", over.chunks(chunk).collect()),
            case,
        );
        assert_filter_refusal(case, &response, 413, "payload_too_large");
        assert_too_large_event(&envoy, case, &response);
        assert!(envoy.upstream_requests().is_empty(), "{case}: upstream");
    }
    envoy.clear_upstream_requests();
    let response = h2(
        &envoy,
        &h2_post("/schema", exact.chunks(64 * 1024).collect()),
        "h2 exact",
    );
    assert_eq!(
        response.status,
        200,
        "h2 exactly 1 MiB: {}",
        response.body_str()
    );
    assert!(
        only_upstream_request(&envoy, "h2 exact").body == exact,
        "h2 exact body"
    );

    // Bodies that end with trailers: no data callback has end_of_stream, the trailers do.
    let trailers = Some(vec![("x-checksum", "abc")]);
    let valid = br#"{"a":"valid"}"#;
    let case = "h2 valid body + trailers";
    envoy.clear_upstream_requests();
    let response = h2(
        &envoy,
        &H2Request {
            trailers: trailers.clone(),
            pause_ms: 20,
            ..h2_post("/schema", valid.chunks(4).collect())
        },
        case,
    );
    assert_eq!(response.status, 200, "{case}: {}", response.body_str());
    assert_eq!(
        only_upstream_request(&envoy, case).body,
        valid,
        "{case}: body upstream"
    );

    let case = "h2 invalid body + trailers";
    envoy.clear_upstream_requests();
    let response = h2(
        &envoy,
        &H2Request {
            trailers: trailers.clone(),
            ..h2_post("/schema", vec![br#"{"a":"#, b"7}"])
        },
        case,
    );
    assert_eq!(response.status, 400, "{case}: {}", response.body_str());
    let body = response.json();
    assert_eq!(body["code"], "bad_request", "{case}: {body}");
    assert!(body["details"].is_array(), "{case}: details: {body}");
    assert!(envoy.upstream_requests().is_empty(), "{case}: upstream");

    let case = "h2 large valid body + trailers";
    envoy.clear_upstream_requests();
    let response = h2(
        &envoy,
        &H2Request {
            trailers: trailers.clone(),
            ..h2_post("/schema", exact.chunks(64 * 1024).collect())
        },
        case,
    );
    assert_eq!(response.status, 200, "{case}: {}", response.body_str());
    assert!(
        only_upstream_request(&envoy, case).body == exact,
        "{case}: body upstream"
    );

    let case = "h2 1 MiB + 1 + trailers";
    envoy.clear_upstream_requests();
    let response = h2(
        &envoy,
        &H2Request {
            trailers: trailers.clone(),
            ..h2_post("/schema", over.chunks(64 * 1024).collect())
        },
        case,
    );
    assert_filter_refusal(case, &response, 413, "payload_too_large");
    assert!(envoy.upstream_requests().is_empty(), "{case}: upstream");

    // A webhook with trailers: verified over the whole body.
    let hook = json_body(200_000);
    let signature = github_signature(&hook);
    let case = "h2 webhook + trailers";
    envoy.clear_upstream_requests();
    let response = h2(
        &envoy,
        &H2Request {
            headers: vec![
                ("content-type", "application/json"),
                ("x-hub-signature-256", &signature),
            ],
            trailers: trailers.clone(),
            ..h2_post("/hook", hook.chunks(50_000).collect())
        },
        case,
    );
    assert_eq!(response.status, 200, "{case}: {}", response.body_str());
    assert!(
        only_upstream_request(&envoy, case).body == hook,
        "{case}: body upstream"
    );
}

/// `max_body_bytes` above Envoy's buffer limit: the body must fit Envoy's buffer when it goes
/// upstream. With the default 1 MiB, bodies between the two get Envoy's 413, which the filter
/// turns into its envelope; with `per_connection_buffer_limit_bytes` raised, they pass.
#[test]
fn max_body_bytes_above_envoys_buffer_limit() {
    let body = json_body(1_500_000);
    let chunks: Vec<&[u8]> = body.chunks(64 * 1024).collect();

    let default_limit = start(EnvoyOptions::default());
    let response = post_chunked(&default_limit, "/big", &[], &chunks, Duration::ZERO);
    assert_filter_refusal("1.5 MB, Envoy's 1 MiB", &response, 413, "payload_too_large");
    assert!(default_limit.upstream_requests().is_empty());
    drop(default_limit);

    let raised = start(EnvoyOptions {
        per_connection_buffer_limit_bytes: Some(4_000_000),
        ..Default::default()
    });
    let response = post_chunked(&raised, "/big", &[], &chunks, Duration::ZERO);
    assert_eq!(
        response.status,
        200,
        "1.5 MB, 4 MB buffer: {}",
        response.body_str()
    );
    assert!(only_upstream_request(&raised, "1.5 MB").body == body);
    raised.clear_upstream_requests();
    let over = json_body(3_000_001);
    let chunks: Vec<&[u8]> = over.chunks(64 * 1024).collect();
    let response = post_chunked(&raised, "/big", &[], &chunks, Duration::ZERO);
    assert_filter_refusal("3 MB + 1, 4 MB buffer", &response, 413, "payload_too_large");
    assert_too_large_event(&raised, "3 MB + 1", &response);
    assert!(raised.upstream_requests().is_empty());
}

/// Report mode: a held body over the bound is logged and goes upstream whole, as it would have
/// without the filter (the drained part is put back first).
#[test]
fn report_mode_forwards_an_oversized_held_body_intact() {
    let envoy = start(EnvoyOptions {
        plugin_config: Some(config("report")),
        ..Default::default()
    });
    let body = json_body(4096);
    let chunks: Vec<&[u8]> = body.chunks(1000).collect();
    let response = post_chunked(&envoy, "/small", &[], &chunks, Duration::from_millis(20));
    assert_eq!(response.status, 200, "report mode: {}", response.body_str());
    assert!(
        only_upstream_request(&envoy, "report").body == body,
        "report: body upstream"
    );
    let upstream = only_upstream_request(&envoy, "report");
    let request_id = upstream.header("x-request-id").unwrap();
    let event = event_line_with_id(&envoy, "report", request_id).0;
    assert_eq!(event["event"], "payload_too_large", "report: {event}");
    assert_eq!(event["mode"], "report", "report: {event}");
    assert_eq!(event["route"], "small", "report: {event}");
}

// ---- Class 8: without allow_on_headers_stop_iteration --------------------------------------------

#[test]
fn without_allow_on_headers_stop_iteration_body_routes_fail_closed() {
    if common::adapter() == common::Adapter::Module {
        // `allow_on_headers_stop_iteration` is a setting of Envoy's wasm filter: the dynamic
        // module has no such switch (Envoy always hands it the body of a request it holds),
        // and the rest of this file checks its body routes.
        return;
    }
    let envoy = start(EnvoyOptions {
        omit_allow_on_headers_stop_iteration: true,
        ..Default::default()
    });
    assert!(
        !envoy
            .config_yaml()
            .contains("allow_on_headers_stop_iteration: true"),
        "the rendered config must lack the setting"
    );

    // Routes that do not read the body work as usual, with or without one.
    let response = envoy.request("GET", "/open", &[]);
    assert_eq!(response.status, 200, "GET /open");
    envoy.clear_upstream_requests();
    let response = envoy.request_with_body("POST", "/open", &[], b"plain body");
    assert_eq!(response.status, 200, "POST /open");
    assert_eq!(
        only_upstream_request(&envoy, "POST /open").body,
        b"plain body"
    );
    envoy.clear_upstream_requests();
    let response = h2(&envoy, &h2_post("/open", vec![b"h2 body"]), "h2 /open");
    assert_eq!(response.status, 200, "h2 POST /open");
    envoy.clear_upstream_requests();
    // A refusal decided on the headers needs no body either.
    let too_long = (MIB + 1).to_string();
    let response = envoy.request_with_body(
        "POST",
        "/schema",
        &[("content-length", too_long.as_str())],
        b"",
    );
    assert_filter_refusal("content-length over", &response, 413, "payload_too_large");

    // Body routes: 503 within the bound, nothing upstream.
    let valid = br#"{"a":"valid"}"#;
    let hook = json_body(5000);
    let signature = github_signature(&hook);
    let mut timings = Vec::new();
    type Send<'a> = Box<dyn Fn() -> Response + 'a>;
    let cases: Vec<(&str, Send)> = vec![
        (
            "schema, content-length",
            Box::new(|| envoy.request_with_body("POST", "/schema", &[], valid)),
        ),
        (
            "schema, chunked",
            Box::new(|| post_chunked(&envoy, "/schema", &[], &[&valid[..]], Duration::ZERO)),
        ),
        (
            "webhook, content-length",
            Box::new(|| {
                envoy.request_with_body(
                    "POST",
                    "/hook",
                    &[("x-hub-signature-256", signature.as_str())],
                    &hook,
                )
            }),
        ),
        (
            "schema, HTTP/2",
            Box::new(|| h2(&envoy, &h2_post("/schema", vec![&valid[..]]), "h2")),
        ),
        (
            "schema, HTTP/2 with trailers",
            Box::new(|| {
                h2(
                    &envoy,
                    &H2Request {
                        trailers: Some(vec![("x-t", "1")]),
                        ..h2_post("/schema", vec![&valid[..]])
                    },
                    "h2 trailers",
                )
            }),
        ),
    ];
    for (case, send) in &cases {
        let started = Instant::now();
        let response = send();
        let elapsed = started.elapsed();
        timings.push((case, elapsed));
        assert_filter_refusal(case, &response, 503, "service_unavailable");
        assert!(
            elapsed >= BODY_WAIT - Duration::from_millis(300),
            "{case}: answered before the bound ({elapsed:?}): it did not wait for the body"
        );
        assert!(
            elapsed < BODY_WAIT + BODY_WAIT_SLACK,
            "{case}: answered after {elapsed:?}, beyond the bound"
        );
        assert!(envoy.upstream_requests().is_empty(), "{case}: upstream");
    }
    eprintln!("503 after: {timings:?}");

    // One log line names the missing setting, however many requests failed.
    assert!(envoy.wait_for_log(MISSING_SETTING_LOG, Duration::from_secs(5)));
    thread::sleep(Duration::from_millis(300));
    let log = envoy.log();
    let lines = log
        .lines()
        .filter(|l| l.contains(MISSING_SETTING_LOG))
        .count();
    // One per worker VM at most (two workers), never one per request.
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines for {} failed requests",
        cases.len()
    );

    // The routes that do not read the body still work afterwards.
    let response = envoy.request("GET", "/open", &[]);
    assert_eq!(response.status, 200, "GET /open afterwards");
}

/// With the setting, a client slower than the bound to send its body is not refused: the bound
/// only applies once body bytes have reached Envoy without a body callback.
#[test]
fn with_the_setting_a_slow_body_is_not_cut_off() {
    let envoy = start(EnvoyOptions::default());
    let valid = br#"{"a":"slow"}"#;
    let started = Instant::now();
    let response = post_chunked(
        &envoy,
        "/schema",
        &[],
        &[&valid[..]],
        BODY_WAIT + Duration::from_millis(500),
    );
    assert_eq!(response.status, 200, "slow body: {}", response.body_str());
    assert!(started.elapsed() > BODY_WAIT, "the body was slow");
    assert_eq!(only_upstream_request(&envoy, "slow body").body, valid);
    assert!(!envoy.log().contains(MISSING_SETTING_LOG), "no false alarm");
}

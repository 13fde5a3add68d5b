//! What every Envoy test builds and checks: tokens and bearer headers, the error envelope, the
//! security events of a request (read from Envoy's log), what reached the upstream.

use super::{test_key, unix_now, Envoy, RecordedRequest, Response};
use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::support::mint;
use serde_json::{json, Value};
use std::thread;
use std::time::{Duration, Instant};

/// How long a test waits for a security event's line in Envoy's log (flushed every 50 ms; a
/// loaded CI machine can be slow).
pub const EVENT_WAIT: Duration = Duration::from_secs(30);

/// Where a security event starts in an Envoy log line.
pub const EVENT_START: &str = "{\"type\":\"security_event\"";

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Claims valid for ten minutes from now; `extra` adds members or replaces these, and a
/// `null` in it removes the member (`{"exp": null}`: a token without expiry).
pub fn claims(issuer: &str, audience: &str, sub: &str, extra: Value) -> Value {
    let now = unix_now();
    let mut claims = json!({ "iss": issuer, "aud": audience, "sub": sub,
                             "iat": now, "exp": now + 600 });
    if let (Some(target), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        for (name, value) in extra {
            if value.is_null() {
                target.remove(name);
            } else {
                target.insert(name.clone(), value.clone());
            }
        }
    }
    claims
}

/// A token signed with the test key `tests/keys/<key_name>.json`.
pub fn sign(key_name: &str, alg: Alg, claims: &Value) -> String {
    let claims = claims
        .as_object()
        .unwrap_or_else(|| panic!("claims: {claims}"));
    mint::sign(&test_key(key_name), alg, claims).unwrap()
}

/// The filter's error envelope: `status`, one `application/json` content type, an
/// `x-request-id` that the body repeats, exactly `code`, `error`, `request_id` (and `details`
/// when a body schema refused it), the given `code` and an error sentence. Returns the body.
pub fn assert_envelope(case: &str, response: &Response, status: u16, code: &str) -> Value {
    assert_eq!(
        response.status,
        status,
        "{case}: status; body {}",
        response.body_str()
    );
    assert_eq!(
        response.header_all("content-type"),
        vec!["application/json"],
        "{case}: content-type"
    );
    let request_id = response
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{case}: x-request-id header"));
    assert!(!request_id.is_empty(), "{case}: empty request id");
    let body = response.json();
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("{case}: body not an object: {body}"));
    let mut expected_fields = vec!["code", "error", "request_id"];
    if object.contains_key("details") {
        expected_fields.push("details");
    }
    let mut fields: Vec<&str> = object.keys().map(String::as_str).collect();
    fields.sort_unstable();
    expected_fields.sort_unstable();
    assert_eq!(fields, expected_fields, "{case}: envelope fields: {body}");
    assert_eq!(body["code"], code, "{case}: code; body {body}");
    assert_eq!(body["request_id"], request_id, "{case}: request_id");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{case}: error sentence"
    );
    body
}

/// Every security event in Envoy's log so far.
pub fn security_events(envoy: &Envoy) -> Vec<Value> {
    envoy
        .log()
        .lines()
        .filter_map(|line| {
            let start = line.find(EVENT_START)?;
            serde_json::from_str(line[start..].trim_end()).ok()
        })
        .collect()
}

/// Waits for a security event matching `pred`.
pub fn wait_for_event(envoy: &Envoy, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        if let Some(event) = security_events(envoy).into_iter().find(|e| pred(e)) {
            return event;
        }
        if Instant::now() > deadline {
            panic!(
                "no security event: {what}\n--- events ---\n{}",
                security_events(envoy)
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// The one security event of the request with this id, and its whole log line (which names
/// the worker thread). Waits until the event's line is complete in the log; a second event with
/// the same id fails the test.
pub fn event_line_with_id(envoy: &Envoy, case: &str, request_id: &str) -> (Value, String) {
    let needle = format!("\"request_id\":\"{request_id}\"");
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        let log = envoy.log();
        let events: Option<Vec<(Value, String)>> = log
            .lines()
            .filter(|line| line.contains(&needle))
            .filter_map(|line| {
                let start = line.find(EVENT_START)?;
                Some((line, &line[start..]))
            })
            .map(|(line, json)| {
                serde_json::from_str::<Value>(json.trim_end())
                    .ok()
                    .map(|event| (event, line.to_string()))
            })
            .collect();
        if let Some(mut events) = events.filter(|e| !e.is_empty()) {
            assert_eq!(
                events.len(),
                1,
                "{case}: one event per request: {:?}",
                events.iter().map(|(e, _)| e).collect::<Vec<_>>()
            );
            let (event, line) = events.remove(0);
            assert_eq!(event["request_id"], request_id, "{case}: {event}");
            return (event, line);
        }
        if Instant::now() >= deadline {
            panic!("{case}: no security event with request id {request_id} after {EVENT_WAIT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The thread id of an Envoy log line (`[date time][thread][level][logger] ...`): which worker
/// (one Wasm VM each) logged it.
pub fn log_thread(line: &str) -> Option<String> {
    let rest = line.strip_prefix('[')?;
    let after_time = &rest[rest.find("][")? + 2..];
    Some(after_time[..after_time.find(']')?].to_string())
}

/// The one security event of the request that got `response` (found by its request id).
pub fn event_of(envoy: &Envoy, case: &str, response: &Response) -> Value {
    let request_id = response
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{case}: x-request-id header"));
    event_line_with_id(envoy, case, request_id).0
}

/// The one request that reached the upstream.
pub fn only_upstream_request(envoy: &Envoy, case: &str) -> RecordedRequest {
    let seen = envoy.upstream_requests();
    assert_eq!(seen.len(), 1, "{case}: exactly one request upstream");
    seen.into_iter().next().unwrap()
}

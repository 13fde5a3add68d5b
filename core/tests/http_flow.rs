//! One stream's flow natively (`HttpFlow`): the host's events in, the adapter's commands out,
//! against a fake host whose request body buffer behaves as Envoy's does (the adapter's
//! commands drain it and put bytes back in front). The same paths through a real Envoy are in
//! `tests/envoy_body_hold.rs`, `tests/envoy_jwks_remote.rs` and `tests/envoy_webhooks.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::authn::jwt::remote::{self, HttpReply};
use api_guard_core::body::held::HeldBudget;
use api_guard_core::config;
use api_guard_core::pipeline::http_flow::{
    Command, FlowQueries, HttpFlow, Next, RequestPhase, ResponseChunk, ResponseHeaders, Step,
};
use api_guard_core::pipeline::policy::{Decision, Policy, RequestEnv};
use api_guard_core::request::head::RequestHead;
use api_guard_core::response::reply::ErrorCode;
use api_guard_core::support::events::SecurityEvent;
use api_guard_core::support::metrics::{DecisionLabel, MetricId, FAIL_CLOSED_ID};
use api_guard_core::support::mint;
use api_guard_core::support::test_env::TestHost;
use serde_json::{json, Value};
use std::rc::Rc;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "https://api.test";
const NOW_S: u64 = 1_800_000_000;

fn key(name: &str) -> Value {
    let path = format!("{}/../tests/keys/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn token() -> String {
    let claims = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
                         "iat": NOW_S, "exp": NOW_S + 600 });
    mint::sign(&key("p256"), Alg::ES256, claims.as_object().unwrap()).unwrap()
}

fn policy(mode: &str, jwks: Value) -> Policy {
    let config = json!({
        "mode": mode,
        "jwt": { "providers": [{
            "name": "main", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
            "jwks": jwks
        }]},
        "routes": [
            { "name": "signup", "match": { "path_exact": "/signup" }, "auth": "jwt",
              "max_body_bytes": 64,
              "body_schema": { "type": "object", "required": ["email"],
                "properties": { "email": { "type": "string" } } } },
            { "name": "upload", "match": { "path_exact": "/upload" }, "auth": "none",
              "max_body_bytes": 10 },
            { "name": "default", "match": { "path_prefix": "/" }, "auth": "none" }
        ]
    });
    config::load(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn inline_policy(mode: &str) -> Policy {
    policy(
        mode,
        json!({ "inline": { "keys": [mint::public_jwk(&key("p256"))] } }),
    )
}

fn remote_policy() -> Policy {
    policy(
        "enforce",
        json!({ "remote": { "cluster": "idp", "authority": "idp.test", "path": "/jwks",
                "refresh_seconds": 60, "timeout_ms": 2000, "min_refetch_seconds": 10 } }),
    )
}

fn head(method: &str, path: &str) -> RequestHead {
    RequestHead::from_host(
        vec![
            (":method".into(), method.into()),
            (":path".into(), path.into()),
            (":authority".into(), "api.test".into()),
            ("x-request-id".into(), "rid-7".into()),
            ("authorization".into(), format!("Bearer {}", token())),
        ],
        Some("10.0.0.9:4000"),
    )
}

/// A reply the adapter sent: status, headers, body.
type Reply = (u16, Vec<(String, String)>, String);

/// Envoy as the flow sees it: the request environment, and a request body buffer that the
/// adapter's commands drain and refill.
struct FakeEnvoy {
    host: TestHost,
    /// The request body bytes Envoy holds now.
    buffer: Vec<u8>,
    /// Whether the host gives the request environment (the clock, the caches).
    environment_available: bool,
    /// Whether the host hands over the request body bytes it holds.
    body_readable: bool,
    response_headers: Vec<(String, String)>,
    /// What the adapter did: the events, the replies, the header edits, the body drains.
    events: Vec<SecurityEvent>,
    replies: Vec<Reply>,
    edits: usize,
    watching: bool,
    waiting_for_keys: bool,
    failures: Vec<String>,
    /// The counters the adapter incremented.
    counted: Vec<MetricId>,
    /// What the host says of the connection's TLS.
    connection_tls: Option<bool>,
    /// Envoy's `response.code_details` of the response being encoded.
    code_details: &'static [u8],
}

impl FakeEnvoy {
    fn new() -> FakeEnvoy {
        FakeEnvoy {
            host: TestHost::new(NOW_S),
            buffer: Vec::new(),
            environment_available: true,
            body_readable: true,
            response_headers: Vec::new(),
            events: Vec::new(),
            replies: Vec::new(),
            edits: 0,
            watching: false,
            waiting_for_keys: false,
            failures: Vec::new(),
            counted: Vec::new(),
            connection_tls: Some(false),
            code_details: b"via_upstream",
        }
    }

    /// Carries out a step as the adapter does, and says how the callback ends.
    fn execute(&mut self, step: Step) -> Next {
        for command in step.commands {
            match command {
                Command::Count(tally) => self.counted.extend(tally.ids()),
                Command::LogEvent(event) => self.events.push(*event),
                Command::LogFailure(why) => self.failures.push(why),
                Command::EditRequest(_) => self.edits += 1,
                Command::PrependRequestBody(bytes) => {
                    let mut buffer = bytes;
                    buffer.extend_from_slice(&self.buffer);
                    self.buffer = buffer;
                }
                Command::DrainRequestBody(len) => {
                    self.buffer.drain(..len.min(self.buffer.len()));
                }
                Command::SendReply {
                    status,
                    headers,
                    body,
                } => {
                    let headers = headers
                        .into_iter()
                        .map(|(n, v)| {
                            (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                        })
                        .collect();
                    self.replies
                        .push((status, headers, String::from_utf8(body).unwrap()));
                }
                Command::WaitForKeys(_) => self.waiting_for_keys = true,
                Command::CallService(_) => self.failures.push("no service limit here".into()),
                Command::WatchForBody => self.watching = true,
                Command::StopWatchingForBody => self.watching = false,
                Command::ReportMissingBodyCallbacks => {
                    self.failures.push("missing body callbacks".into())
                }
            }
        }
        step.next
    }

    fn reply_status(&self) -> Option<u16> {
        self.replies.last().map(|(status, _, _)| *status)
    }
}

impl FlowQueries for FakeEnvoy {
    fn decide(
        &mut self,
        may_wait_for_keys: bool,
        decide: &mut dyn FnMut(&mut RequestEnv<'_>) -> Decision,
    ) -> Result<Decision, String> {
        if !self.environment_available {
            return Err("cannot read the clock: InternalFailure".into());
        }
        Ok(decide(&mut self.host.env(may_wait_for_keys)))
    }

    fn request_body(&mut self, len: usize) -> Result<Vec<u8>, String> {
        if !self.body_readable {
            return Err("NotFound".into());
        }
        Ok(self.buffer[..len.min(self.buffer.len())].to_vec())
    }

    fn source_address(&mut self) -> Option<String> {
        Some("10.0.0.9:4000".into())
    }

    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.response_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_bytes().to_vec())
    }

    fn response_code_details(&mut self) -> Option<Vec<u8>> {
        Some(self.code_details.to_vec())
    }

    fn connection_is_tls(&mut self) -> Option<bool> {
        self.connection_tls
    }
}

/// A stream and the Envoy it runs in.
struct Stream {
    policy: Policy,
    envoy: FakeEnvoy,
    flow: HttpFlow,
    budget: Rc<HeldBudget>,
}

impl Stream {
    fn new(policy: Policy) -> Stream {
        let budget = Rc::new(HeldBudget::default());
        Stream {
            policy,
            envoy: FakeEnvoy::new(),
            flow: HttpFlow::new(Rc::clone(&budget)),
            budget,
        }
    }

    fn headers(&mut self, method: &str, path: &str, end_of_stream: bool) -> Next {
        let step = self.flow.on_request_headers(
            &self.policy,
            head(method, path),
            end_of_stream,
            &mut self.envoy,
        );
        self.envoy.execute(step)
    }

    /// Envoy adds `chunk` to its buffer, then calls the filter with what it holds.
    fn body(&mut self, chunk: &[u8], end_of_stream: bool) -> Next {
        self.envoy.buffer.extend_from_slice(chunk);
        let size = self.envoy.buffer.len();
        let step = self
            .flow
            .on_request_body(&self.policy, size, end_of_stream, &mut self.envoy);
        self.envoy.execute(step)
    }

    fn trailers(&mut self) -> Next {
        let step = self.flow.on_request_trailers(&self.policy, &mut self.envoy);
        self.envoy.execute(step)
    }
}

#[test]
fn a_held_body_is_drained_chunk_by_chunk_checked_whole_and_put_back_in_order() {
    let mut stream = Stream::new(inline_policy("enforce"));
    assert_eq!(stream.headers("POST", "/signup", false), Next::Pause);
    assert!(
        stream.envoy.watching,
        "the adapter watches for the body callbacks"
    );
    assert!(matches!(stream.flow.phase(), RequestPhase::HoldingBody(_)));

    assert_eq!(stream.body(br#"{"em"#, false), Next::Pause);
    assert!(!stream.envoy.watching, "a body callback came");
    assert!(
        stream.envoy.buffer.is_empty(),
        "Envoy holds one chunk at most"
    );
    assert_eq!(stream.body(br#"ail":"#, false), Next::Pause);
    assert!(stream.budget.held() > 0);

    assert_eq!(stream.body(br#""a@b.test"}"#, true), Next::Continue);
    assert_eq!(stream.envoy.buffer, br#"{"email":"a@b.test"}"#.to_vec());
    assert_eq!(
        stream.budget.held(),
        0,
        "the copy is released once it is back"
    );
    assert!(stream.envoy.replies.is_empty());
    assert_eq!(
        stream.envoy.edits, 2,
        "the header phase's edits, then the body's"
    );
    assert!(matches!(stream.flow.phase(), RequestPhase::Streaming(_)));
}

#[test]
fn a_body_that_fails_its_check_is_answered_and_its_event_names_the_principal() {
    let mut stream = Stream::new(inline_policy("enforce"));
    stream.headers("POST", "/signup", false);
    assert_eq!(stream.body(br#"{"name":"x"}"#, true), Next::Pause);
    assert_eq!(stream.envoy.reply_status(), Some(400));
    let event = stream.envoy.events.last().unwrap();
    assert_eq!(event.code, "bad_request");
    assert_eq!(event.principal.as_deref(), Some("alice"));
    let (_, headers, body) = stream.envoy.replies.last().unwrap();
    assert!(headers
        .iter()
        .any(|(n, v)| n == "x-request-id" && v == "rid-7"));
    assert!(body.contains("rid-7"));
    assert!(matches!(stream.flow.phase(), RequestPhase::Answered));
    // Its own reply then passes the response callbacks untouched; Envoy's plain-text 413 that
    // won over it in the same callback does not.
    stream.envoy.response_headers = vec![
        ("content-type".into(), "application/json".into()),
        ("x-request-id".into(), "rid-7".into()),
    ];
    assert!(stream.flow.response_is_own_reply(&mut stream.envoy));
    let mut other = Stream::new(inline_policy("enforce"));
    other.headers("POST", "/signup", false);
    other.body(br#"{"name":"x"}"#, true);
    other.envoy.response_headers = vec![("content-type".into(), "text/plain".into())];
    assert!(!other.flow.response_is_own_reply(&mut other.envoy));
}

#[test]
fn a_held_body_over_its_bound_is_refused_or_put_back_in_report_mode() {
    let mut enforce = Stream::new(inline_policy("enforce"));
    enforce.headers("POST", "/signup", false);
    enforce.body(&[b' '; 40], false);
    assert_eq!(enforce.body(&[b' '; 40], false), Next::Pause);
    assert_eq!(enforce.envoy.reply_status(), Some(413));
    assert_eq!(enforce.budget.held(), 0, "the refused body is dropped");

    let mut report = Stream::new(inline_policy("report"));
    report.headers("POST", "/signup", false);
    report.body(&[b'a'; 40], false);
    assert_eq!(report.body(&[b'b'; 40], false), Next::Continue);
    assert!(report.envoy.replies.is_empty());
    let event = report.envoy.events.last().unwrap();
    assert_eq!((event.code, event.mode), ("payload_too_large", "report"));
    let mut expected = vec![b'a'; 40];
    expected.extend_from_slice(&[b'b'; 40]);
    assert_eq!(
        report.envoy.buffer, expected,
        "the drained part goes back in front"
    );
}

#[test]
fn a_body_the_host_will_not_hand_over_fails_closed_wherever_it_is_read() {
    // A middle chunk, the last chunk, and a complete body that arrives while the request
    // waits for its keys: each is read from the host, and a refused read is a 503.
    for (chunks, waits_for_keys) in [
        (vec![(&b"{"[..], false)], false),
        (vec![(&b"{}"[..], true)], false),
        (vec![(&b"{}"[..], true)], true),
    ] {
        let mut stream = if waits_for_keys {
            Stream::new(remote_policy())
        } else {
            Stream::new(inline_policy("enforce"))
        };
        stream.headers("POST", "/signup", false);
        stream.envoy.body_readable = false;
        for (chunk, end) in chunks {
            assert_eq!(stream.body(chunk, end), Next::Pause);
        }
        assert_eq!(
            stream.envoy.reply_status(),
            Some(503),
            "keys wait: {waits_for_keys}"
        );
        let (_, _, body) = stream.envoy.replies.last().unwrap();
        assert!(
            !body.contains("NotFound"),
            "the host's status stays in the log"
        );
        assert!(stream
            .envoy
            .failures
            .iter()
            .any(|why| why.contains("cannot read the request body: NotFound")));
        assert!(matches!(stream.flow.phase(), RequestPhase::Answered));
    }
}

#[test]
fn trailers_complete_a_held_body() {
    let mut stream = Stream::new(inline_policy("enforce"));
    stream.headers("POST", "/signup", false);
    stream.body(br#"{"email":"#, false);
    stream.envoy.buffer.extend_from_slice(br#""a@b.test"}"#);
    assert_eq!(stream.trailers(), Next::Continue);
    assert_eq!(stream.envoy.buffer, br#"{"email":"a@b.test"}"#.to_vec());
}

#[test]
fn a_streamed_body_is_counted_against_its_bound() {
    let mut stream = Stream::new(inline_policy("enforce"));
    assert_eq!(stream.headers("POST", "/upload", false), Next::Continue);
    assert_eq!(stream.body(&[0; 6], false), Next::Continue);
    stream.envoy.buffer.clear();
    assert_eq!(stream.body(&[0; 6], false), Next::Pause);
    assert_eq!(stream.envoy.reply_status(), Some(413));
}

#[test]
fn a_body_the_host_never_hands_over_fails_closed_once() {
    let mut stream = Stream::new(inline_policy("enforce"));
    stream.headers("POST", "/signup", false);
    let step = stream.flow.on_body_callbacks_never_came(&stream.policy);
    stream.envoy.execute(step);
    assert_eq!(stream.envoy.reply_status(), Some(503));
    assert_eq!(
        stream.envoy.failures,
        vec!["missing body callbacks".to_string()]
    );
    assert_eq!(stream.budget.held(), 0);

    // A body callback came: the host does hand the body over, and nothing is answered.
    let mut fed = Stream::new(inline_policy("enforce"));
    fed.headers("POST", "/signup", false);
    fed.body(br#"{"em"#, false);
    let step = fed.flow.on_body_callbacks_never_came(&fed.policy);
    fed.envoy.execute(step);
    assert!(fed.envoy.replies.is_empty());
}

#[test]
fn a_host_that_cannot_lend_the_environment_fails_closed_without_saying_why() {
    let mut stream = Stream::new(inline_policy("enforce"));
    stream.envoy.environment_available = false;
    assert_eq!(stream.headers("GET", "/anything", true), Next::Pause);
    assert_eq!(stream.envoy.reply_status(), Some(503));
    assert_eq!(stream.envoy.failures.len(), 1);
    let (_, _, body) = stream.envoy.replies.last().unwrap();
    assert!(
        !body.contains("clock"),
        "the reason stays in the log: {body}"
    );

    let mut refused = HttpFlow::new(Rc::new(HeldBudget::default()));
    let step = refused.on_request_headers_without_policy(Some("rid-9"));
    let mut envoy = FakeEnvoy::new();
    envoy.execute(step);
    let (status, headers, _) = envoy.replies.last().unwrap();
    assert_eq!(*status, 503);
    assert!(headers
        .iter()
        .any(|(n, v)| n == "x-request-id" && v == "rid-9"));
    assert!(
        headers.iter().any(|(n, _)| n == "x-content-type-options"),
        "the default security headers go on every reply"
    );
}

#[test]
fn a_request_that_waits_for_keys_keeps_its_body_and_is_decided_once_they_settle() {
    let policy = remote_policy();
    let mut stream = Stream::new(policy);
    assert_eq!(stream.headers("POST", "/signup", false), Next::Pause);
    assert!(stream.envoy.waiting_for_keys);
    // The body arrives while the request waits: Envoy keeps it, the complete body is copied.
    assert_eq!(stream.body(br#"{"email":"a@b.test"}"#, true), Next::Pause);
    assert!(matches!(
        stream.flow.phase(),
        RequestPhase::WaitingForKeys(_)
    ));

    // The keys arrive: the worker holding the lease fetched them, this one reloads.
    let provider = &stream.policy.jwt.as_ref().unwrap().providers[0];
    let source = provider.remote.as_ref().unwrap();
    let now_ms = NOW_S * 1000;
    remote::try_claim(&stream.envoy.host.store, source, 1, now_ms).unwrap();
    let jwks = json!({ "keys": [mint::public_jwk(&key("p256"))] }).to_string();
    let report = remote::complete_fetch(
        &stream.envoy.host.store,
        source,
        &provider.algorithms,
        1,
        now_ms,
        HttpReply::Response {
            status: 200,
            body: jwks.as_bytes(),
            body_size: jwks.len(),
        },
        5,
    );
    assert!(report.outcome.is_ok(), "{report:?}");
    remote::reload(
        &stream.envoy.host.store,
        source,
        &provider.algorithms,
        &mut stream.envoy.host.keys,
        0,
    )
    .unwrap();

    let step = stream
        .flow
        .on_keys_settled(&stream.policy, &mut stream.envoy);
    assert_eq!(
        stream.envoy.execute(step),
        Next::Continue,
        "the adapter resumes it"
    );
    assert!(
        stream.envoy.replies.is_empty(),
        "{:?}",
        stream.envoy.replies
    );
    assert_eq!(stream.envoy.buffer, br#"{"email":"a@b.test"}"#.to_vec());

    // Decided once: a second settle does nothing.
    let step = stream
        .flow
        .on_keys_settled(&stream.policy, &mut stream.envoy);
    assert_eq!(step.next, Next::Pause);
    assert!(step.commands.is_empty());
}

#[test]
fn a_request_still_without_keys_at_its_deadline_gets_503() {
    let mut stream = Stream::new(remote_policy());
    stream.headers("POST", "/signup", true);
    assert!(stream.envoy.waiting_for_keys);
    let step = stream
        .flow
        .on_keys_settled(&stream.policy, &mut stream.envoy);
    assert_eq!(stream.envoy.execute(step), Next::Pause);
    assert_eq!(stream.envoy.reply_status(), Some(503));
}

/// Envoy's own reply to a request the filter never saw (refused before the filter): HSTS only
/// when the host says the connection is TLS; a host that cannot say means none.
#[test]
fn a_reply_to_a_request_never_seen_gets_hsts_only_over_tls() {
    for (tls, want) in [(Some(true), true), (Some(false), false), (None, false)] {
        let mut stream = Stream::new(inline_policy("enforce"));
        stream.envoy.connection_tls = tls;
        let envoy_reply: Vec<(&[u8], &[u8])> = vec![
            (b":status", b"400"),
            (b"strict-transport-security", b"max-age=0"),
        ];
        let mut written = Vec::new();
        stream.flow.on_response_headers(
            Some(&stream.policy),
            &envoy_reply,
            true,
            &mut stream.envoy,
            &mut |headers| {
                written = headers
                    .iter()
                    .map(|(n, v)| (n.to_vec(), v.to_vec()))
                    .collect();
                Ok(())
            },
        );
        let hsts: Vec<&[u8]> = written
            .iter()
            .filter(|(n, _)| n == b"strict-transport-security")
            .map(|(_, v)| v.as_slice())
            .collect();
        let expected: Vec<&[u8]> = if want {
            vec![b"max-age=63072000; includeSubDomains"]
        } else {
            vec![]
        };
        assert_eq!(hsts, expected, "connection TLS {tls:?}");
        assert!(
            written.iter().any(|(n, _)| n == b"x-content-type-options"),
            "{tls:?}"
        );
    }
}

/// A reply Envoy made before the filter saw the request (the dynamic module sees those): the
/// envelope carries the id Envoy's `local_reply_config` put on it, and only an id-shaped one.
#[test]
fn a_reply_to_a_request_never_seen_keeps_envoys_request_id() {
    for (id, echoed) in [
        (&b"29d9755c-eae0-4c21-a746-d9114d52618b"[..], true),
        (&b"client-\"chosen"[..], false),
    ] {
        let mut stream = Stream::new(inline_policy("enforce"));
        stream.envoy.code_details = b"http1.codec_error";
        let envoy_reply: Vec<(&[u8], &[u8])> = vec![
            (b":status", b"400"),
            (b"content-type", b"text/plain"),
            (b"x-request-id", id),
        ];
        let mut written = Vec::new();
        stream.flow.on_response_headers(
            Some(&stream.policy),
            &envoy_reply,
            false,
            &mut stream.envoy,
            &mut |headers| {
                written = headers
                    .iter()
                    .map(|(n, v)| (n.to_vec(), v.to_vec()))
                    .collect();
                Ok(())
            },
        );
        let body = b"Bad Request";
        let chunk = stream.flow.on_response_body(
            &stream.policy,
            Some(body),
            body.len(),
            true,
            &mut stream.envoy,
        );
        let ResponseChunk::Replace { replacement, .. } = chunk else {
            panic!("Envoy's 400 is rewritten");
        };
        let envelope: Value = serde_json::from_slice(&replacement).unwrap();
        let want = if echoed {
            std::str::from_utf8(id).unwrap()
        } else {
            ""
        };
        assert_eq!(envelope["request_id"], want, "{envelope}");
        assert_eq!(envelope["code"], "bad_request");
    }
}

#[test]
fn an_upstream_error_body_is_replaced_by_the_envelope_as_it_streams() {
    let mut stream = Stream::new(inline_policy("enforce"));
    assert_eq!(stream.headers("GET", "/anything", true), Next::Continue);
    assert!(!stream.flow.response_is_own_reply(&mut stream.envoy));
    let upstream: Vec<(&[u8], &[u8])> = vec![
        (b":status", b"500"),
        (b"content-type", b"text/html"),
        (b"server", b"leaky/1.0"),
    ];
    let mut written = Vec::new();
    let result = stream.flow.on_response_headers(
        Some(&stream.policy),
        &upstream,
        false,
        &mut stream.envoy,
        &mut |headers| {
            written = headers
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect();
            Ok(())
        },
    );
    assert!(matches!(result, ResponseHeaders::Written { event: None }));
    assert!(!written.iter().any(|(n, _)| n == b"server"));
    let length: usize = written
        .iter()
        .find(|(n, _)| n == b"content-length")
        .map(|(_, v)| std::str::from_utf8(v).unwrap().parse().unwrap())
        .unwrap();

    let wanted = stream.flow.response_bytes_wanted(6);
    assert!(wanted > 0, "the first bytes are kept for the log");
    let first =
        stream
            .flow
            .on_response_body(&stream.policy, Some(b"<html>"), 6, false, &mut stream.envoy);
    assert!(
        matches!(&first, ResponseChunk::Replace { replacement, event: None } if replacement.is_empty())
    );
    let last =
        stream
            .flow
            .on_response_body(&stream.policy, Some(b"boom"), 4, true, &mut stream.envoy);
    let ResponseChunk::Replace {
        replacement,
        event: Some(event),
    } = last
    else {
        panic!("the last chunk carries the envelope");
    };
    assert_eq!(replacement.len(), length);
    assert!(String::from_utf8(replacement).unwrap().contains("rid-7"));
    assert_eq!(event.client, "10.0.0.9");
    assert!(matches!(
        stream
            .flow
            .on_response_body(&stream.policy, None, 3, true, &mut stream.envoy),
        ResponseChunk::Pass
    ));
}

#[test]
fn a_request_is_counted_once_when_it_is_decided() {
    // A held body: nothing at the headers, the outcome once the body is checked.
    let mut stream = Stream::new(inline_policy("enforce"));
    stream.headers("POST", "/signup", false);
    let miss = api_guard_core::support::metrics::TOKEN_CACHE_MISS_ID;
    assert_eq!(
        stream.envoy.counted,
        [miss],
        "only the token's cache lookup so far"
    );
    stream.body(br#"{"name":"x"}"#, true);
    let refused =
        stream
            .policy
            .metrics
            .request(Some(0), DecisionLabel::Refused, Some(ErrorCode::BadRequest));
    assert_eq!(stream.envoy.counted, [miss, refused.unwrap()]);

    // A streamed body over its bound: allowed at its headers, then refused 413.
    let mut stream = Stream::new(inline_policy("enforce"));
    stream.headers("POST", "/upload", false);
    stream.body(&[0; 12], false);
    let metrics = &stream.policy.metrics;
    assert_eq!(
        stream.envoy.counted,
        [
            metrics
                .request(Some(1), DecisionLabel::Allowed, None)
                .unwrap(),
            metrics
                .request(
                    Some(1),
                    DecisionLabel::Refused,
                    Some(ErrorCode::PayloadTooLarge)
                )
                .unwrap()
        ]
    );

    // Failing closed is counted as such, with or without a policy.
    let mut stream = Stream::new(inline_policy("enforce"));
    stream.envoy.environment_available = false;
    stream.headers("GET", "/anything", true);
    assert_eq!(stream.envoy.counted, [FAIL_CLOSED_ID]);
    let mut refused = HttpFlow::new(Rc::new(HeldBudget::default()));
    let mut envoy = FakeEnvoy::new();
    envoy.execute(refused.on_request_headers_without_policy(None));
    assert_eq!(envoy.counted, [FAIL_CLOSED_ID]);
}

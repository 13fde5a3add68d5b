//! Fleet-wide limits natively: the policy asks the service (`Verdict::AskService` with the RLS
//! bytes), the flow holds the request, and the answer decides (429 with the answer's headers,
//! admitted with them, `failure_mode` on failure). Through real Envoys: tests/envoy_fleet.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::body::held::HeldBudget;
use api_guard_core::config;
use api_guard_core::limits::rate_limit_service::messages::{
    self, code, unit, CurrentLimit, DescriptorStatus, HeaderValue,
};
use api_guard_core::limits::rate_limit_service::{ServiceAnswer, ServiceReply};
use api_guard_core::pipeline::http_flow::{Command, FlowQueries, HttpFlow, Next, RequestPhase};
use api_guard_core::pipeline::policy::{Decision, Policy, RequestEnv, Verdict};
use api_guard_core::request::head::RequestHead;
use api_guard_core::support::test_env::TestHost;
use prost::Message;
use serde_json::{json, Value};
use std::rc::Rc;

fn config(failure_mode: &str) -> Value {
    json!({
        "rate_limit_services": {
            "fleet": { "cluster": "ratelimit", "domain": "api-guard", "timeout_ms": 250, "failure_mode": failure_mode }
        },
        "rate_limits": {
            "fleet_read": { "service": "fleet", "key": "header:X-Tenant", "requests": 5, "window_seconds": 60 },
            "local_burst": { "requests": 2, "window_seconds": 60, "key": "ip" }
        },
        "routes": [
            { "name": "read", "match": { "path_prefix": "/read" }, "auth": "none", "rate_limit": "fleet_read" },
            { "name": "both", "match": { "path_prefix": "/both" }, "auth": "none", "rate_limit": ["fleet_read", "local_burst"] }
        ]
    })
}

fn policy(failure_mode: &str) -> Policy {
    config::load(config(failure_mode).to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn head(path: &str) -> RequestHead {
    RequestHead::from_host(
        vec![
            (":method".into(), "GET".into()),
            (":path".into(), path.into()),
            (":authority".into(), "api.test".into()),
            ("x-request-id".into(), "rid-1".into()),
            ("x-tenant".into(), "acme".into()),
        ],
        Some("10.0.0.9:4000"),
    )
}

struct Host(TestHost);

impl FlowQueries for Host {
    fn decide(
        &mut self,
        may_wait_for_keys: bool,
        decide: &mut dyn FnMut(&mut RequestEnv<'_>) -> Decision,
    ) -> Result<Decision, String> {
        Ok(decide(&mut self.0.env(may_wait_for_keys)))
    }
    fn request_body(&mut self, _len: usize) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
    fn source_address(&mut self) -> Option<String> {
        Some("10.0.0.9:4000".into())
    }
    fn response_header(&mut self, _name: &str) -> Option<Vec<u8>> {
        None
    }
    fn response_code_details(&mut self) -> Option<Vec<u8>> {
        None
    }
    fn connection_is_tls(&mut self) -> Option<bool> {
        Some(false)
    }
}

fn answer(overall: i32, remaining: u32) -> Vec<u8> {
    messages::RateLimitResponse {
        overall_code: overall,
        statuses: vec![DescriptorStatus {
            code: overall,
            current_limit: Some(CurrentLimit {
                name: String::new(),
                requests_per_unit: 5,
                unit: unit::MINUTE,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(messages::Duration {
                seconds: 30,
                nanos: 0,
            }),
        }],
        response_headers_to_add: vec![HeaderValue {
            key: "x-fleet".into(),
            value: "seen".into(),
            raw_value: Vec::new(),
        }],
        request_headers_to_add: vec![HeaderValue {
            key: "x-fleet-checked".into(),
            value: "1".into(),
            raw_value: Vec::new(),
        }],
    }
    .encode_to_vec()
}

/// The request's headers, then the service's reply: every command of both steps, and how the
/// last callback ends.
fn through_flow(policy: &Policy, path: &str, reply: Option<ServiceReply>) -> (Vec<Command>, Next) {
    let mut host = Host(TestHost::new(1_800_000_000));
    let mut flow = HttpFlow::new(Rc::new(HeldBudget::default()));
    let first = flow.on_request_headers(policy, head(path), true, &mut host);
    let mut commands = first.commands;
    let Some(reply) = reply else {
        return (commands, first.next);
    };
    assert_eq!(first.next, Next::Pause);
    assert!(matches!(flow.phase(), RequestPhase::WaitingForService(_)));
    let call = commands.iter().find_map(|c| match c {
        Command::CallService(call) => Some(call.clone()),
        _ => None,
    });
    let call = call.expect("the service is asked");
    assert_eq!((call.cluster.as_str(), call.timeout_ms), ("ratelimit", 250));
    let sent = messages::RateLimitRequest::decode(call.message.as_slice()).unwrap();
    assert_eq!(sent.domain, "api-guard");
    let entries: Vec<(&str, &str)> = sent.descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(entries, [("limit", "fleet_read"), ("x-tenant", "acme")]);
    assert_eq!(
        sent.descriptors[0].limit,
        Some(messages::RateLimitOverride {
            requests_per_unit: 5,
            unit: unit::MINUTE
        })
    );
    let second = flow.on_service_answer(policy, &reply, &mut host);
    commands.extend(second.commands);
    (commands, second.next)
}

fn header<'a>(headers: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name.as_bytes())
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
}

/// A reply's status, headers and body.
type SentReply<'c> = (u16, &'c [(Vec<u8>, Vec<u8>)], &'c [u8]);

fn reply_of(commands: &[Command]) -> SentReply<'_> {
    commands
        .iter()
        .find_map(|c| match c {
            Command::SendReply {
                status,
                headers,
                body,
            } => Some((*status, headers.as_slice(), body.as_slice())),
            _ => None,
        })
        .expect("a reply")
}

#[test]
fn over_limit_is_the_429_envelope_with_the_answers_headers() {
    let reply = ServiceReply::Message(answer(code::OVER_LIMIT, 0));
    let (commands, next) = through_flow(&policy("deny"), "/read", Some(reply));
    assert_eq!(next, Next::Pause);
    let (status, headers, body) = reply_of(&commands);
    assert_eq!(status, 429);
    let body: Value = serde_json::from_slice(body).unwrap();
    assert!(body.to_string().contains("\"rate_limited\""), "{body}");
    assert_eq!(header(headers, "x-ratelimit-limit"), Some("5"));
    assert_eq!(header(headers, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(headers, "retry-after"), Some("30"));
    assert_eq!(
        header(headers, "ratelimit-policy"),
        Some("\"fleet_read\";q=5;w=60")
    );
    assert_eq!(header(headers, "x-fleet"), Some("seen"));
}

#[test]
fn ok_admits_with_the_answers_headers_on_both_sides() {
    let reply = ServiceReply::Message(answer(code::OK, 3));
    let (commands, next) = through_flow(&policy("deny"), "/read", Some(reply));
    assert_eq!(next, Next::Continue);
    let forward = commands
        .iter()
        .find_map(|c| match c {
            Command::EditRequest(f) => Some(f.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        forward
            .set_headers
            .contains(&("x-fleet-checked".into(), "1".into())),
        "{forward:?}"
    );
    // The response path adds the answer's rate-limit and service headers.
    let mut host = Host(TestHost::new(1_800_000_000));
    let policy = policy("deny");
    let decision = host
        .decide(false, &mut |env| {
            let answer = ServiceAnswer::from_reply(
                &ServiceReply::Message(answer(code::OK, 3)),
                &policy.identity_headers,
            );
            policy.check_request_after_service(&head("/read"), env, &answer)
        })
        .unwrap();
    assert!(matches!(decision.verdict, Verdict::Allow(_)));
    let edits = policy.plan_response(
        &decision.response,
        200,
        api_guard_core::response::error_rewrite::ResponseOrigin::Upstream,
    );
    let merged = edits.merge(&[]);
    let find = |name: &str| {
        merged
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| std::str::from_utf8(v).unwrap().to_string())
    };
    assert_eq!(find("x-ratelimit-remaining").as_deref(), Some("3"));
    assert_eq!(find("x-fleet").as_deref(), Some("seen"));
}

#[test]
fn a_failed_call_follows_failure_mode_with_an_event() {
    let failed = || Some(ServiceReply::Failed { grpc_status: 14 });
    let (commands, next) = through_flow(&policy("deny"), "/read", failed());
    assert_eq!(next, Next::Pause);
    let (status, _, body) = reply_of(&commands);
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(body).contains("service_unavailable"));
    let event = commands
        .iter()
        .find_map(|c| match c {
            Command::LogEvent(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(event.event, "rate_limit_service_failed");
    assert!(event.reason.contains("gRPC status 14"), "{}", event.reason);

    let (commands, next) = through_flow(&policy("allow"), "/read", failed());
    assert_eq!(next, Next::Continue);
    let event = commands
        .iter()
        .find_map(|c| match c {
            Command::LogEvent(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (event.event, event.code),
        ("rate_limit_service_failed", "allowed")
    );
    assert!(
        event.reason.contains("failure_mode allow"),
        "{}",
        event.reason
    );
}

#[test]
fn the_local_limit_comes_first_and_counts_once() {
    let policy = policy("deny");
    let mut host = Host(TestHost::new(1_800_000_000));
    for i in 0..2 {
        let mut flow = HttpFlow::new(Rc::new(HeldBudget::default()));
        let step = flow.on_request_headers(&policy, head("/both"), true, &mut host);
        assert!(
            step.commands
                .iter()
                .any(|c| matches!(c, Command::CallService(_))),
            "#{i} asks the service"
        );
        // Decided again with the answer: the local limit is not counted a second time.
        let step = flow.on_service_answer(
            &policy,
            &ServiceReply::Message(answer(code::OK, 3)),
            &mut host,
        );
        assert_eq!(step.next, Next::Continue, "#{i}");
    }
    let mut flow = HttpFlow::new(Rc::new(HeldBudget::default()));
    let step = flow.on_request_headers(&policy, head("/both"), true, &mut host);
    assert!(!step
        .commands
        .iter()
        .any(|c| matches!(c, Command::CallService(_))));
    assert_eq!(reply_of(&step.commands).0, 429);
}

#[test]
fn config_errors_name_their_paths() {
    let load = |config: Value| {
        config::load(config.to_string().as_bytes())
            .err()
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    };
    let mut unknown = config("deny");
    unknown["rate_limits"]["fleet_read"]["service"] = json!("flet");
    assert_eq!(
        load(unknown),
        [
            r#"rate_limits.fleet_read.service: unknown rate limit service "flet" (not in "rate_limit_services")"#
        ]
    );
    let mut window = config("deny");
    window["rate_limits"]["fleet_read"]["window_seconds"] = json!(900);
    assert!(load(window)[0].starts_with("rate_limits.fleet_read.window_seconds: "));
    let mut two_local = config("deny");
    two_local["routes"][1]["rate_limit"] = json!(["local_burst", "local_burst"]);
    assert_eq!(
        load(two_local),
        ["routes[1].rate_limit[1]: a route carries at most one local limit"]
    );
    let mut missing = config("deny");
    missing["routes"][0]["rate_limit"] = json!("nope");
    assert_eq!(
        load(missing),
        [r#"routes[0].rate_limit: unknown rate limit "nope""#]
    );
    let mut bad_mode = config("deny");
    bad_mode["rate_limit_services"]["fleet"]["failure_mode"] = json!("open");
    assert!(load(bad_mode)[0].starts_with("rate_limit_services.fleet.failure_mode: "));
}

//! The hand-written RLS v3 messages of api-guard's core (no protoc, they build for wasm32)
//! against the `envoy-types` crate's generated code: every field number, type and enum value.
//! Here rather than in the core so that `make test` does not build envoy-types (tonic, every
//! Envoy proto); `make test-fleet` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::limits::rate_limit::LimitKey;
use api_guard_core::limits::rate_limit_service::messages::{self, code, unit};
use api_guard_core::limits::rate_limit_service::{ServiceAnswer, ServiceLimit, ServiceReply};
use prost::Message;
use envoy_types::pb::envoy::config::core::v3 as core_v3;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3 as common_v3;
use envoy_types::pb::envoy::service::ratelimit::v3 as rls_v3;

fn limit(override_limit: Option<(u32, i32)>) -> ServiceLimit {
    ServiceLimit {
        name: "global_read".into(),
        service: 0,
        key: LimitKey::Ip,
        override_limit,
    }
}

/// Our request, read by the generated types: every field number and type matches.
#[test]
fn the_request_decodes_with_envoy_types_generated_code() {
    let bytes = limit(Some((100, unit::MINUTE))).request("api-guard", "ip", "203.0.113.7".into());
    let theirs = rls_v3::RateLimitRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(theirs.domain, "api-guard");
    assert_eq!(theirs.hits_addend, 1);
    assert_eq!(theirs.descriptors.len(), 1);
    let descriptor = &theirs.descriptors[0];
    let entries: Vec<(&str, &str)> = descriptor
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(entries, [("limit", "global_read"), ("ip", "203.0.113.7")]);
    let over = descriptor.limit.as_ref().unwrap();
    assert_eq!(over.requests_per_unit, 100);
    assert_eq!(
        over.unit,
        envoy_types::pb::envoy::r#type::v3::RateLimitUnit::Minute as i32
    );
    // Without requests/window_seconds, no override goes out.
    let bare = limit(None).request("d", "ip", "x".into());
    let theirs = rls_v3::RateLimitRequest::decode(bare.as_slice()).unwrap();
    assert!(theirs.descriptors[0].limit.is_none());
}

/// The generated types' answer, read by ours.
#[test]
fn the_answer_of_envoy_types_generated_code_decodes_with_ours() {
    use rls_v3::rate_limit_response::{rate_limit::Unit, Code, DescriptorStatus, RateLimit};
    let theirs = rls_v3::RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![DescriptorStatus {
            code: Code::OverLimit as i32,
            current_limit: Some(RateLimit {
                name: "per-ip".into(),
                requests_per_unit: 5,
                unit: Unit::Hour as i32,
            }),
            limit_remaining: 0,
            duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 41,
                nanos: 5,
            }),
            quota: None,
        }],
        response_headers_to_add: vec![core_v3::HeaderValue {
            key: "x-fleet".into(),
            value: "one".into(),
            raw_value: vec![],
        }],
        request_headers_to_add: vec![core_v3::HeaderValue {
            key: "x-fleet-seen".into(),
            value: String::new(),
            raw_value: b"raw".to_vec(),
        }],
        ..Default::default()
    };
    let bytes = theirs.encode_to_vec();
    let ours = messages::RateLimitResponse::decode(bytes.as_slice()).unwrap();
    assert_eq!(ours.overall_code, code::OVER_LIMIT);
    let status = &ours.statuses[0];
    assert_eq!(status.code, code::OVER_LIMIT);
    let current = status.current_limit.as_ref().unwrap();
    assert_eq!(
        (
            current.name.as_str(),
            current.requests_per_unit,
            current.unit
        ),
        ("per-ip", 5, unit::HOUR)
    );
    assert_eq!(
        status.duration_until_reset,
        Some(messages::Duration {
            seconds: 41,
            nanos: 5
        })
    );
    assert_eq!(ours.response_headers_to_add[0].key, "x-fleet");
    assert_eq!(ours.request_headers_to_add[0].raw_value, b"raw");
    // And what the filter makes of it: 5 per hour, reset and Retry-After rounded up to 42 s.
    let ServiceAnswer::OverLimit(answered) =
        ServiceAnswer::from_reply(&ServiceReply::Message(bytes), &[])
    else {
        panic!("not over limit");
    };
    let decision = answered.decision.unwrap();
    assert_eq!(
        (decision.limit, decision.remaining, decision.reset_seconds),
        (5, 0, 42)
    );
    assert_eq!(decision.retry_after_seconds, Some(42));
    assert_eq!(answered.window_seconds, 3600);
    assert_eq!(
        answered.response_headers_to_add,
        [("x-fleet".to_string(), "one".to_string())]
    );
    assert_eq!(
        answered.request_headers_to_add,
        [("x-fleet-seen".to_string(), "raw".to_string())]
    );
}

#[test]
fn the_enum_numbers_match_the_generated_ones() {
    use envoy_types::pb::envoy::r#type::v3::RateLimitUnit as U;
    use rls_v3::rate_limit_response::Code as C;
    assert_eq!(
        [code::UNKNOWN, code::OK, code::OVER_LIMIT],
        [C::Unknown as i32, C::Ok as i32, C::OverLimit as i32]
    );
    assert_eq!(
        [
            unit::SECOND,
            unit::MINUTE,
            unit::HOUR,
            unit::DAY,
            unit::MONTH,
            unit::YEAR
        ],
        [
            U::Second as i32,
            U::Minute as i32,
            U::Hour as i32,
            U::Day as i32,
            U::Month as i32,
            U::Year as i32
        ]
    );
    let _ = common_v3::RateLimitDescriptor::default();
}

#[test]
fn failures_errors_and_unknown_codes_are_failed_answers() {
    let failed = ServiceAnswer::from_reply(&ServiceReply::Failed { grpc_status: 14 }, &[]);
    assert_eq!(failed, ServiceAnswer::Failed("gRPC status 14".into()));
    let garbage = ServiceAnswer::from_reply(&ServiceReply::Message(vec![0xff, 0xff, 0xff]), &[]);
    assert!(matches!(garbage, ServiceAnswer::Failed(_)));
    let unknown = rls_v3::RateLimitResponse::default().encode_to_vec();
    assert_eq!(
        ServiceAnswer::from_reply(&ServiceReply::Message(unknown), &[]),
        ServiceAnswer::Failed("overall_code 0".into())
    );
}

#[test]
fn a_service_cannot_set_identity_or_framing_headers() {
    let theirs = rls_v3::RateLimitResponse {
        overall_code: 1,
        request_headers_to_add: ["x-user-id", "content-length", ":path", "x-ok", "bad name"]
            .iter()
            .map(|k| core_v3::HeaderValue {
                key: (*k).into(),
                value: "v".into(),
                raw_value: vec![],
            })
            .collect(),
        ..Default::default()
    };
    let reply = ServiceReply::Message(theirs.encode_to_vec());
    let ServiceAnswer::Ok(answered) = ServiceAnswer::from_reply(&reply, &["x-user-id".into()])
    else {
        panic!("not ok");
    };
    assert_eq!(
        answered.request_headers_to_add,
        [("x-ok".to_string(), "v".to_string())]
    );
    assert!(answered.decision.is_none());
}

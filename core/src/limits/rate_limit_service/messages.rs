//! The messages of Envoy's Rate Limit Service (RLS v3), as `prost` structs written by hand with
//! the field numbers of the `.proto` files (`envoy/service/ratelimit/v3/rls.proto`,
//! `envoy/extensions/common/ratelimit/v3/ratelimit.proto`, `envoy/config/core/v3/base.proto`,
//! `google/protobuf/duration.proto`). Only the fields api-guard sends or reads are declared:
//! protobuf skips unknown fields, so an answer with more decodes the same. A native test
//! (`tools/limitador-rls/tests/rls_wire.rs`) checks every number against the `envoy-types` crate's generated
//! code, which the filter cannot depend on (it pulls tonic).

/// `envoy.service.ratelimit.v3.RateLimitRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<DescriptorEntry>,
    #[prost(message, optional, tag = "2")]
    pub limit: Option<RateLimitOverride>,
}

/// `RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `RateLimitDescriptor.RateLimitOverride`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitOverride {
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// `envoy.type.v3.RateLimitUnit`: see [`Unit`].
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitResponse {
    /// See [`Code`].
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
    #[prost(message, repeated, tag = "3")]
    pub response_headers_to_add: Vec<HeaderValue>,
    #[prost(message, repeated, tag = "4")]
    pub request_headers_to_add: Vec<HeaderValue>,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<CurrentLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

/// `RateLimitResponse.RateLimit`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CurrentLimit {
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// `RateLimitResponse.RateLimit.Unit`, numbered as [`Unit`].
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `RateLimitResponse.Code`.
pub mod code {
    pub const UNKNOWN: i32 = 0;
    pub const OK: i32 = 1;
    pub const OVER_LIMIT: i32 = 2;
}

/// `envoy.type.v3.RateLimitUnit` and `RateLimitResponse.RateLimit.Unit` (the same numbers; a
/// unit not listed here gives no rate-limit headers).
pub mod unit {
    pub const SECOND: i32 = 1;
    pub const MINUTE: i32 = 2;
    pub const HOUR: i32 = 3;
    pub const DAY: i32 = 4;
    pub const MONTH: i32 = 5;
    pub const YEAR: i32 = 6;

    /// The seconds of a unit (a month as 30 days, a year as 365: for headers only).
    pub fn seconds(unit: i32) -> Option<u64> {
        match unit {
            SECOND => Some(1),
            MINUTE => Some(60),
            HOUR => Some(3600),
            DAY => Some(86_400),
            MONTH => Some(2_592_000),
            YEAR => Some(31_536_000),
            _ => None,
        }
    }

    /// The unit a window of `seconds` is, if it is one the override can carry.
    pub fn of_window(seconds: u64) -> Option<i32> {
        match seconds {
            1 => Some(SECOND),
            60 => Some(MINUTE),
            3600 => Some(HOUR),
            86_400 => Some(DAY),
            _ => None,
        }
    }
}

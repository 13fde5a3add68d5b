//! Fleet-wide limits (spec: "Fleet-wide limits"): a limit with `service` is decided by a Rate
//! Limit Service over Envoy's RLS v3 gRPC protocol
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), so that it holds across
//! every Envoy that asks the same service (each Envoy's shared data holds only for its own
//! workers).
//!
//! The core builds the request bytes ([`ServiceLimit::request`]) and reads the answer
//! ([`ServiceAnswer::from_reply`]); the adapter only carries the bytes through
//! `dispatch_grpc_call`. What a service that errs, times out or cannot be reached means is the
//! service's `failure_mode`.

pub mod grpc_over_http;
pub mod messages;

use crate::config::error::{join, ConfigError};
use crate::limits::rate_limit::{LimitKey, RateDecision};
use crate::request::head::RequestHead;
use messages::{
    code, unit, DescriptorEntry, RateLimitDescriptor, RateLimitOverride, RateLimitRequest,
    RateLimitResponse,
};
use prost::Message;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The gRPC service and method every call names.
pub const GRPC_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const GRPC_METHOD: &str = "ShouldRateLimit";
/// `timeout_ms` when the config does not say.
pub const DEFAULT_TIMEOUT_MS: u64 = 100;
/// A minute: a request held longer than that for a limit is an outage, not a limit.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// An answer larger than this is not read (a real one is a few hundred bytes).
pub const MAX_ANSWER_BYTES: usize = 65_536;
/// Headers a service may add per answer, in each direction.
pub const MAX_ADDED_HEADERS: usize = 16;

/// What a request gets when its service cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// 503 `service_unavailable` (default: a limit that cannot be checked is not a limit).
    #[default]
    Deny,
    /// Admitted, uncounted.
    Allow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitServiceConfig {
    cluster: String,
    domain: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    failure_mode: FailureMode,
}

/// One entry of `rate_limit_services`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitService {
    pub name: String,
    /// The Envoy cluster the gRPC calls go to (it must speak HTTP/2).
    pub cluster: String,
    pub domain: String,
    pub timeout_ms: u64,
    pub failure_mode: FailureMode,
}

/// A limit of `rate_limits` decided by a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLimit {
    pub name: String,
    /// Index into the policy's services.
    pub service: usize,
    pub key: LimitKey,
    /// `requests` and the RLS unit of `window_seconds`, when the config gives them: the
    /// descriptor's `limit` override.
    pub override_limit: Option<(u32, i32)>,
}

fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn deserialize_at<T: for<'de> Deserialize<'de>>(value: &Value, at: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." {
            at.to_string()
        } else {
            join(at, &inner)
        };
        ConfigError::new(path, e.into_inner().to_string())
    })
}

/// Compiles `rate_limit_services` (`at` is its path).
pub fn compile_services(
    section: &Value,
    at: &str,
) -> Result<BTreeMap<String, RateLimitService>, Vec<ConfigError>> {
    let Some(members) = section.as_object() else {
        return Err(vec![ConfigError::new(
            at,
            "must be an object mapping service names to services",
        )]);
    };
    let mut errors = Vec::new();
    let mut services = BTreeMap::new();
    for (name, value) in members {
        let entry_at = join(at, name);
        if !is_name(name) {
            errors.push(ConfigError::new(
                &entry_at,
                "a service name is 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        let cfg: RateLimitServiceConfig = match deserialize_at(value, &entry_at) {
            Ok(cfg) => cfg,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if cfg.cluster.is_empty() {
            errors.push(ConfigError::new(
                join(&entry_at, "cluster"),
                "must not be empty",
            ));
        }
        if cfg.domain.is_empty() {
            errors.push(ConfigError::new(
                join(&entry_at, "domain"),
                "must not be empty",
            ));
        }
        let timeout_ms = cfg.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            errors.push(ConfigError::new(
                join(&entry_at, "timeout_ms"),
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        services.insert(
            name.clone(),
            RateLimitService {
                name: name.clone(),
                cluster: cfg.cluster,
                domain: cfg.domain,
                timeout_ms,
                failure_mode: cfg.failure_mode,
            },
        );
    }
    if errors.is_empty() {
        Ok(services)
    } else {
        Err(errors)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceLimitConfig {
    service: String,
    key: String,
    #[serde(default)]
    requests: Option<u64>,
    #[serde(default)]
    window_seconds: Option<u64>,
}

/// Whether an entry of `rate_limits` is a service limit (it names a `service`).
pub fn is_service_limit(value: &Value) -> bool {
    value.get("service").is_some()
}

/// Compiles one service limit of `rate_limits` (`at`: `rate_limits.<name>`).
pub fn compile_limit(
    name: &str,
    value: &Value,
    at: &str,
    service_names: &[String],
) -> Result<ServiceLimit, Vec<ConfigError>> {
    let cfg: ServiceLimitConfig = deserialize_at(value, at).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    if !is_name(name) {
        errors.push(ConfigError::new(
            at,
            "a rate limit name is 1 to 64 letters, digits, '-' or '_'",
        ));
    }
    let service = service_names.iter().position(|n| *n == cfg.service);
    if service.is_none() {
        errors.push(ConfigError::new(
            join(at, "service"),
            format!(
                "unknown rate limit service {:?} (not in \"rate_limit_services\")",
                cfg.service
            ),
        ));
    }
    let key = LimitKey::parse(&cfg.key)
        .map_err(|message| errors.push(ConfigError::new(join(at, "key"), message)))
        .ok();
    let override_limit = match (cfg.requests, cfg.window_seconds) {
        (None, None) => None,
        (Some(requests), Some(window)) => {
            let requests_ok = (1..=u64::from(u32::MAX)).contains(&requests);
            if !requests_ok {
                errors.push(ConfigError::new(
                    join(at, "requests"),
                    format!("must be between 1 and {}", u32::MAX),
                ));
            }
            let unit = unit::of_window(window);
            if unit.is_none() {
                errors.push(ConfigError::new(
                    join(at, "window_seconds"),
                    "a service limit's window is 1, 60, 3600 or 86400 seconds (the RLS units)",
                ));
            }
            match (u32::try_from(requests), unit) {
                (Ok(requests), Some(unit)) if requests_ok => Some((requests, unit)),
                _ => None,
            }
        }
        (Some(_), None) => {
            errors.push(ConfigError::new(
                join(at, "window_seconds"),
                "is needed with \"requests\" (or give neither: the service owns its limits)",
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(ConfigError::new(
                join(at, "requests"),
                "is needed with \"window_seconds\" (or give neither: the service owns its limits)",
            ));
            None
        }
    };
    match (service, key) {
        (Some(service), Some(key)) if errors.is_empty() => Ok(ServiceLimit {
            name: name.to_string(),
            service,
            key,
            override_limit,
        }),
        _ => Err(errors),
    }
}

/// The descriptor's second entry: the key kind, and the client's value under it. A request
/// without the identity the limit keys by is counted by its address (stricter, never a way
/// around the limit), under the same entry key, so that the service's rule for the limit
/// still matches.
pub fn descriptor_key<'a>(
    key: &'a LimitKey,
    head: &RequestHead,
    jwt_subject: Option<&str>,
    api_key_id: Option<&str>,
) -> (&'a str, String) {
    let ip = || head.client_ip().to_string();
    match key {
        LimitKey::Ip => ("ip", ip()),
        LimitKey::Principal => (
            "principal",
            jwt_subject.or(api_key_id).map_or_else(ip, str::to_string),
        ),
        LimitKey::ApiKey => ("api_key", api_key_id.map_or_else(ip, str::to_string)),
        LimitKey::Header(name) => (
            name.as_str(),
            head.header(name).map_or_else(ip, str::to_string),
        ),
    }
}

impl ServiceLimit {
    /// The `RateLimitRequest` bytes: the service's domain, one descriptor
    /// `[limit=<name>, <key kind>=<client value>]`, `hits_addend` 1.
    pub fn request(&self, domain: &str, entry_key: &str, entry_value: String) -> Vec<u8> {
        let request = RateLimitRequest {
            domain: domain.to_string(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![
                    DescriptorEntry {
                        key: "limit".into(),
                        value: self.name.clone(),
                    },
                    DescriptorEntry {
                        key: entry_key.to_string(),
                        value: entry_value,
                    },
                ],
                limit: self
                    .override_limit
                    .map(|(requests_per_unit, unit)| RateLimitOverride {
                        requests_per_unit,
                        unit,
                    }),
            }],
            hits_addend: 1,
        };
        request.encode_to_vec()
    }
}

/// The call the adapter makes for a request held for its service limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCall {
    pub cluster: String,
    pub message: Vec<u8>,
    pub timeout_ms: u64,
}

/// What the host brought back from a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceReply {
    /// gRPC status 0 and the response message.
    Message(Vec<u8>),
    /// Any other gRPC status (Envoy reports an unreachable cluster, a reset and a timeout all
    /// as 14, UNAVAILABLE), or a message that could not be read.
    Failed { grpc_status: u32 },
    /// The host refused to start the call (an unknown cluster, say).
    NotSent(String),
}

/// The service's answer, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAnswer {
    Ok(Answered),
    OverLimit(Answered),
    /// No answer: `failure_mode` decides. The reason goes to the security event.
    Failed(String),
}

/// What an answer says about the request, besides its code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answered {
    /// The descriptor's status, when the service gave one with a limit: the rate-limit headers.
    pub decision: Option<RateDecision>,
    /// The window of `current_limit`'s unit, for `RateLimit-Policy`'s `w`.
    pub window_seconds: u64,
    pub response_headers_to_add: Vec<(String, String)>,
    pub request_headers_to_add: Vec<(String, String)>,
}

/// Headers a service may not set: framing and routing are Envoy's, identity is the filter's.
fn header_allowed(name: &str, protected: &[String]) -> bool {
    !name.is_empty()
        && !name.starts_with(':')
        && crate::authn::jwt::is_header_name(name)
        && !matches!(
            name,
            "content-length" | "transfer-encoding" | "host" | "connection" | "te" | "upgrade"
        )
        && !protected.iter().any(|p| p == name)
}

fn added_headers(
    headers: Vec<messages::HeaderValue>,
    protected: &[String],
) -> Vec<(String, String)> {
    headers
        .into_iter()
        .filter_map(|h| {
            let name = h.key.to_ascii_lowercase();
            let value = if h.value.is_empty() {
                String::from_utf8(h.raw_value).ok()?
            } else {
                h.value
            };
            let printable = value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
            (header_allowed(&name, protected) && printable).then_some((name, value))
        })
        .take(MAX_ADDED_HEADERS)
        .collect()
}

impl ServiceAnswer {
    /// Reads what the host brought back. `protected` are the request headers only the filter
    /// sets (identity headers): a service cannot set them.
    pub fn from_reply(reply: &ServiceReply, protected: &[String]) -> ServiceAnswer {
        let bytes = match reply {
            ServiceReply::Message(bytes) => bytes,
            ServiceReply::Failed { grpc_status } => {
                return ServiceAnswer::Failed(format!("gRPC status {grpc_status}"))
            }
            ServiceReply::NotSent(why) => {
                return ServiceAnswer::Failed(format!("call not sent: {why}"))
            }
        };
        let response = match RateLimitResponse::decode(bytes.as_slice()) {
            Ok(response) => response,
            Err(_) => return ServiceAnswer::Failed("unreadable RateLimitResponse".into()),
        };
        let over = match response.overall_code {
            code::OK => false,
            code::OVER_LIMIT => true,
            other => return ServiceAnswer::Failed(format!("overall_code {other}")),
        };
        let status = response.statuses.first();
        let limit = status.and_then(|s| {
            let current = s.current_limit.as_ref()?;
            Some((current.requests_per_unit, unit::seconds(current.unit)?))
        });
        let reset_seconds = status.and_then(|s| s.duration_until_reset).map(|d| {
            let whole = u64::try_from(d.seconds).unwrap_or(0);
            whole.saturating_add(u64::from(d.nanos > 0))
        });
        let decision = limit.map(|(requests, _)| RateDecision {
            allowed: !over,
            limit: u64::from(requests),
            remaining: if over {
                0
            } else {
                status.map_or(0, |s| u64::from(s.limit_remaining))
            },
            reset_seconds: reset_seconds.unwrap_or(0),
            retry_after_seconds: over.then(|| reset_seconds.unwrap_or(1).max(1)),
            reason: over.then_some("over limit (rate limit service)"),
        });
        let answered = Answered {
            decision,
            window_seconds: limit.map_or(0, |(_, window)| window),
            response_headers_to_add: added_headers(response.response_headers_to_add, &[]),
            request_headers_to_add: added_headers(response.request_headers_to_add, protected),
        };
        if over {
            ServiceAnswer::OverLimit(answered)
        } else {
            ServiceAnswer::Ok(answered)
        }
    }
}

#[cfg(test)]
mod tests;

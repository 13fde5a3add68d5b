//! limitador-rls: Envoy's Rate Limit Service (RLS v3 gRPC) over Redis, for api-guard's fleet
//! tests and `make run-fleet`. Two engines, chosen by `FLEET_ENGINE`:
//! - `limitador` (default): Kuadrant's Limitador library with its async Redis storage, limits
//!   from a file in Limitador's own limits format (the YAML list limitador-server reads).
//! - `redis`: one atomic Lua script per request (INCR, and EXPIRE on the first hit) on a fixed
//!   window, for the limits of the same file matched by `name` (the descriptor's `limit`
//!   entry): exact under concurrency, where Limitador's storage reads before it writes.
//!
//! Usage: limitador-rls <listen address> <redis url> <limits file>
//!
//! Every answer adds `x-fleet-engine: <engine>` to the client's response and
//! `x-fleet-checked: <engine>` to the upstream request (RLS `response_headers_to_add` and
//! `request_headers_to_add`), so that tests can see the service's headers honoured.

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
#[cfg(feature = "limitador")]
use limitador::limit::Context;
#[cfg(feature = "limitador")]
use limitador::storage::redis::AsyncRedisStorage;
#[cfg(feature = "limitador")]
use limitador::AsyncRateLimiter;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

enum Engine {
    #[cfg(feature = "limitador")]
    Limitador(AsyncRateLimiter),
    Redis {
        connection: redis::aio::ConnectionManager,
        limits: Vec<FileLimit>,
    },
}

/// One limit of the limits file, as the Redis engine reads it (Limitador reads the same file
/// with its own types; conditions and variables are Limitador's).
#[derive(Deserialize)]
struct FileLimit {
    namespace: String,
    #[serde(default)]
    name: Option<String>,
    max_value: u64,
    seconds: u64,
    #[allow(dead_code)]
    #[serde(default)]
    conditions: Vec<String>,
    #[allow(dead_code)]
    #[serde(default)]
    variables: Vec<String>,
}

struct Service {
    engine: Engine,
    name: &'static str,
}

/// The answer's status for one counter: its limit, what is left, when its window ends.
struct Status1 {
    max_value: u64,
    seconds: u64,
    remaining: u64,
    reset_seconds: u64,
}

fn unit_of(seconds: u64) -> Unit {
    match seconds {
        1 => Unit::Second,
        60 => Unit::Minute,
        3600 => Unit::Hour,
        86_400 => Unit::Day,
        _ => Unit::Unknown,
    }
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.into(),
        value: value.into(),
        raw_value: Vec::new(),
    }
}

/// INCRBY the window's counter, EXPIRE it on its first hit; one script, so atomic in Redis.
const FIXED_WINDOW: &str = r"
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
if count == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return {count, redis.call('TTL', KEYS[1])}
";

impl Service {
    async fn decide(&self, request: &RateLimitRequest) -> Result<(bool, Option<Status1>), String> {
        let hits = u64::from(request.hits_addend.max(1));
        let descriptors: Vec<HashMap<String, String>> = request
            .descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect()
            })
            .collect();
        match &self.engine {
            #[cfg(feature = "limitador")]
            Engine::Limitador(limiter) => {
                let mut ctx = Context::default();
                ctx.list_binding("descriptors".into(), descriptors);
                let namespace = request.domain.as_str().into();
                let mut result = limiter
                    .check_rate_limited_and_update(&namespace, &ctx, hits)
                    .await
                    .map_err(|e| e.to_string())?;
                let status = result
                    .counters
                    .iter_mut()
                    .min_by_key(|c| c.remaining().unwrap_or(c.max_value()))
                    .map(|c| Status1 {
                        max_value: c.max_value(),
                        seconds: c.window().as_secs(),
                        remaining: c.remaining().unwrap_or(0),
                        reset_seconds: c.expires_in().map_or(c.window().as_secs(), |d| {
                            d.as_secs() + u64::from(d.subsec_nanos() > 0)
                        }),
                    });
                Ok((result.limited, status))
            }
            Engine::Redis { connection, limits } => {
                let Some(first) = descriptors.first() else {
                    return Ok((false, None));
                };
                let Some(name) = first.get("limit") else {
                    return Ok((false, None));
                };
                let Some(limit) = limits.iter().find(|l| {
                    l.name.as_deref() == Some(name.as_str()) && l.namespace == request.domain
                }) else {
                    return Ok((false, None));
                };
                let seconds = limit.seconds.max(1);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_err(|e| e.to_string())?
                    .as_secs();
                let mut entries: Vec<_> = first.iter().collect();
                entries.sort();
                let mut key = format!("fleet:{}:{}", request.domain, now / seconds);
                for (k, v) in entries {
                    key.push_str(&format!(":{}={}", k.len(), k));
                    key.push_str(&format!(":{}={}", v.len(), v));
                }
                let mut connection = connection.clone();
                let (count, ttl): (u64, i64) = redis::Script::new(FIXED_WINDOW)
                    .key(key)
                    .arg(hits)
                    .arg(seconds)
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
                let limited = count > limit.max_value;
                Ok((
                    limited,
                    Some(Status1 {
                        max_value: limit.max_value,
                        seconds,
                        remaining: limit.max_value.saturating_sub(count),
                        reset_seconds: u64::try_from(ttl).unwrap_or(seconds).max(1),
                    }),
                ))
            }
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        let (limited, status) = self
            .decide(&request)
            .await
            .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
        let code = if limited { Code::OverLimit } else { Code::Ok };
        let statuses = status
            .map(|s| DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: u32::try_from(s.max_value).unwrap_or(u32::MAX),
                    unit: unit_of(s.seconds) as i32,
                }),
                limit_remaining: u32::try_from(s.remaining).unwrap_or(u32::MAX),
                duration_until_reset: Some(ProtoDuration {
                    seconds: i64::try_from(s.reset_seconds).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
                quota: None,
            })
            .into_iter()
            .collect();
        Ok(Response::new(RateLimitResponse {
            overall_code: code as i32,
            statuses,
            response_headers_to_add: vec![header("x-fleet-engine", self.name)],
            request_headers_to_add: vec![header("x-fleet-checked", self.name)],
            ..Default::default()
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, redis_url, limits_file] = args.as_slice() else {
        return Err("usage: limitador-rls <listen address> <redis url> <limits file>".into());
    };
    let limits_yaml = std::fs::read_to_string(limits_file)?;
    let engine_name = std::env::var("FLEET_ENGINE").unwrap_or_else(|_| "limitador".into());
    let (engine, name) = match engine_name.as_str() {
        #[cfg(feature = "limitador")]
        "limitador" => {
            let limits: Vec<limitador::limit::Limit> = serde_norway::from_str(&limits_yaml)?;
            let storage = AsyncRedisStorage::new(redis_url).await?;
            let limiter = AsyncRateLimiter::new_with_storage(Box::new(storage));
            for limit in limits {
                limiter.add_limit(limit);
            }
            (Engine::Limitador(limiter), "limitador")
        }
        "redis" => {
            let limits: Vec<FileLimit> = serde_norway::from_str(&limits_yaml)?;
            let client = redis::Client::open(redis_url.as_str())?;
            let connection = redis::aio::ConnectionManager::new(client).await?;
            (Engine::Redis { connection, limits }, "redis")
        }
        other => return Err(format!("FLEET_ENGINE {other:?}: limitador or redis").into()),
    };
    let address = listen.parse()?;
    eprintln!("limitador-rls: {name} engine on {address}, redis {redis_url}");
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(Service { engine, name }))
        .serve_with_shutdown(address, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

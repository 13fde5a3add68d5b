//! Per request, the host calls api-guard makes when it lets a request with a valid, cached JWT
//! through on a rate-limited route with CORS, and nothing in between:
//! - request headers: read the header map, `source.address`, the clock, one shared-data counter
//!   read and CAS write, the credential removed and one claim header set;
//! - response headers: read the header map, write it back with the headers api-guard adds
//!   (security headers, CORS, rate-limit headers, `x-request-id`).
//! A benchmark tool only: values are fixed and host errors are ignored.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot) });
}}

// The headers api-guard adds to an accepted response over plain HTTP (no
// strict-transport-security: it goes out over TLS only).
const ADDED_RESPONSE_HEADERS: [(&str, &str); 16] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
    ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
    ("cross-origin-opener-policy", "same-origin"),
    ("x-xss-protection", "0"),
    ("access-control-allow-origin", "https://app.bench.test"),
    ("access-control-allow-credentials", "true"),
    ("access-control-expose-headers", "x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, ratelimit, ratelimit-policy, retry-after, x-request-id"),
    ("x-ratelimit-limit", "1000000000"),
    ("x-ratelimit-remaining", "999999999"),
    ("x-ratelimit-reset", "60"),
    ("ratelimit-policy", "\"bench\";q=1000000000;w=60"),
    ("ratelimit", "\"bench\";r=999999999;t=60"),
    ("vary", "Origin"),
];

struct FloorRoot;
impl Context for FloorRoot {}
impl RootContext for FloorRoot {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorHttp;
impl Context for FloorHttp {}
impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let _ = hostcalls::get_map(MapType::HttpRequestHeaders);
        let _ = hostcalls::get_property(vec!["source", "address"]);
        let _ = hostcalls::get_current_time();
        let cas = hostcalls::get_shared_data("floor.counter")
            .ok()
            .and_then(|(_, cas)| cas);
        let _ = hostcalls::set_shared_data("floor.counter", Some(&[0u8; 40]), cas);
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", None);
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-user-id", Some("bench-user"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Ok(mut headers) = hostcalls::get_map(MapType::HttpResponseHeaders) {
            headers.extend(
                ADDED_RESPONSE_HEADERS
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string())),
            );
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let _ = hostcalls::set_map(MapType::HttpResponseHeaders, pairs);
        }
        Action::Continue
    }
}

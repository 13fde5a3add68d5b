//! Fleet-wide limits in the adapter: the core's `Command::CallService` becomes a gRPC call to
//! the Rate Limit Service (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), and
//! its answer goes back to the core's flow (`HttpFlow::on_service_answer`), which decides.
//!
//! Host facts this relies on (proxy-wasm on Envoy 1.40, checked by tests/envoy_fleet.rs):
//! - The call is the SDK's `hostcalls::dispatch_grpc_call`, not a `host` wrapper: the SDK's
//!   dispatcher records which context made the call (the request's own), and routes the
//!   answer (`proxy_on_grpc_receive` / `proxy_on_grpc_close`) to that context's
//!   `on_grpc_call_response` with it as the effective context. It panics on a status other
//!   than `Ok`, `ParseFailure` and `InternalFailure`.
//! - The cluster must speak HTTP/2 (`typed_extension_protocol_options` with
//!   `explicit_http_config: http2_protocol_options`): over HTTP/1.1 every call ends with gRPC
//!   status 14. An unreachable service, a reset and the call's own timeout also end with 14.
//! - A client that disconnects while its request waits cancels the call: no callback comes, and
//!   the context (with the flow) is gone.

use crate::host;
use crate::HttpState;
use api_guard_core::limits::rate_limit_service::{
    ServiceCall, ServiceReply, GRPC_METHOD, GRPC_SERVICE, MAX_ANSWER_BYTES,
};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType};
use std::time::Duration;

/// Sends the call for the request; `Err` names why the host would not (the flow then gets a
/// failed answer at once).
pub(super) fn call(state: &mut HttpState, call: &ServiceCall) -> Result<(), String> {
    let sent = hostcalls::dispatch_grpc_call(
        &call.cluster,
        GRPC_SERVICE,
        GRPC_METHOD,
        Vec::new(),
        Some(&call.message),
        Duration::from_millis(call.timeout_ms),
    );
    match sent {
        Ok(token) => {
            state.service_call = Some(token);
            Ok(())
        }
        Err(status) => Err(format!("{status:?}")),
    }
}

/// What the host brought back for `token`: the message on gRPC status 0, else the status.
pub(super) fn reply(status_code: u32, response_size: usize) -> ServiceReply {
    if status_code != 0 {
        return ServiceReply::Failed {
            grpc_status: status_code,
        };
    }
    if response_size > MAX_ANSWER_BYTES {
        return ServiceReply::NotSent(format!("answer of {response_size} bytes"));
    }
    match host::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size) {
        Ok(bytes) => ServiceReply::Message(bytes.unwrap_or_default()),
        Err(status) => ServiceReply::NotSent(format!("cannot read the answer: {status}")),
    }
}

/// The answer to the request's call: the flow decides, the request resumes if it is allowed.
pub(super) fn on_answer(state: &mut HttpState, token: u32, status_code: u32, response_size: usize) {
    if state.service_call != Some(token) {
        return;
    }
    state.service_call = None;
    let answer = reply(status_code, response_size);
    if state.service_answered(&answer) == Action::Continue && host::resume_http_request().is_err() {
        let _ = host::reset_http_request();
    }
}

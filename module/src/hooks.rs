//! The module's entry points, in safe Rust: [`crate::abi`] converts Envoy's pointers and calls
//! these inside [`guarded`], so a panic never crosses into Envoy. A stream whose hook panicked
//! is answered 503 with the generic envelope (when its response has not started) and every
//! later hook of it does nothing but hold it.

use crate::abi::{status, CalloutAnswer, ConfigHandle, Stream};
use crate::filter::now_ms;
use crate::filter::StreamFilter;
use crate::shared::ModuleConfig;
use api_guard_core::body::held::HeldBudget;
use api_guard_core::pipeline::http_flow::{Command, HttpFlow};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;

/// Runs `hook`; a panic becomes `on_panic()`.
pub fn guarded<T>(hook: impl FnOnce() -> T, on_panic: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(hook)).unwrap_or_else(|_| on_panic())
}

pub fn program_init() {
    crate::logger::install();
}

pub fn config_new(handle: &ConfigHandle, config: &[u8]) -> Arc<ModuleConfig> {
    Arc::new(ModuleConfig::load(handle, config))
}

/// What a callout answer's body may be copied up to.
pub const CALLOUT_COPY_LIMIT: usize = crate::jwks::COPY_LIMIT;

/// The config's timer (main thread).
pub fn config_tick(config: &ModuleConfig, handle: &ConfigHandle) {
    let (Some(policy), Some(jwks), Some(now)) = (&config.policy, &config.jwks, now_ms()) else {
        return;
    };
    jwks.tick(policy, handle, &config.metrics, now);
}

/// A key set fetch answered (main thread).
pub fn config_callout_done(
    config: &ModuleConfig,
    handle: &ConfigHandle,
    callout_id: u64,
    answer: &CalloutAnswer,
) {
    let (Some(policy), Some(jwks)) = (&config.policy, &config.jwks) else {
        return;
    };
    jwks.answered(
        policy,
        handle,
        &config.metrics,
        callout_id,
        answer,
        now_ms(),
    );
}

/// Envoy drops the config (main thread): its timer stops.
pub fn config_destroy(config: &ModuleConfig) {
    if let Some(jwks) = &config.jwks {
        jwks.stop();
    }
}

/// What a rate limit service answer's body may be copied up to (its frame header included).
pub const SERVICE_COPY_LIMIT: usize =
    api_guard_core::limits::rate_limit_service::MAX_ANSWER_BYTES + 5;

/// A stream's callout answered (its worker).
pub fn callout_done(
    s: &mut GuardedStream,
    stream: &Stream,
    callout_id: u64,
    answer: &CalloutAnswer,
) {
    with_stream(s, stream, (), |f| {
        f.on_callout_done(stream, callout_id, answer)
    });
}

/// A stream's scheduler fired (its worker).
pub fn scheduled(s: &mut GuardedStream, stream: &Stream) {
    with_stream(s, stream, (), |f| f.on_scheduled(stream));
}

/// One stream, and whether a hook of it panicked.
pub struct GuardedStream {
    filter: StreamFilter,
    broken: bool,
}

impl GuardedStream {
    pub fn new(config: Arc<ModuleConfig>) -> GuardedStream {
        GuardedStream {
            filter: StreamFilter::new(config),
            broken: false,
        }
    }
}

/// The generic 503 envelope of a request that cannot be decided, from a fresh flow (the
/// stream's own may be half-updated by the panic).
fn answer_broken(stream: &Stream) {
    let mut flow = HttpFlow::new(Rc::new(HeldBudget::default()));
    let step = flow.fail_closed(None, "a panic in the dynamic module");
    for command in step.commands {
        match command {
            Command::SendReply {
                status,
                headers,
                body,
            } => stream.send_response(u32::from(status), &headers, &body),
            Command::LogFailure(why) => log::error!("api-guard: failing closed: {why}"),
            _ => {}
        }
    }
}

fn with_stream<T>(
    guarded_stream: &mut GuardedStream,
    stream: &Stream,
    broken: T,
    hook: impl FnOnce(&mut StreamFilter) -> T,
) -> T {
    if guarded_stream.broken {
        return broken;
    }
    let filter = &mut guarded_stream.filter;
    let result = catch_unwind(AssertUnwindSafe(|| hook(filter)));
    match result {
        Ok(value) => value,
        Err(_) => {
            guarded_stream.broken = true;
            let _ = catch_unwind(AssertUnwindSafe(|| answer_broken(stream)));
            broken
        }
    }
}

pub fn request_headers(s: &mut GuardedStream, stream: &Stream, end_of_stream: bool) -> u32 {
    with_stream(s, stream, status::HEADERS_STOP_ITERATION, |f| {
        f.on_request_headers(stream, end_of_stream)
    })
}

pub fn request_body(s: &mut GuardedStream, stream: &Stream, end_of_stream: bool) -> u32 {
    with_stream(s, stream, status::BODY_STOP_NO_BUFFER, |f| {
        f.on_request_body(stream, end_of_stream)
    })
}

pub fn request_trailers(s: &mut GuardedStream, stream: &Stream) -> u32 {
    with_stream(s, stream, status::TRAILERS_STOP, |f| {
        f.on_request_trailers(stream)
    })
}

pub fn response_headers(s: &mut GuardedStream, stream: &Stream, end_of_stream: bool) -> u32 {
    let written = with_stream(s, stream, false, |f| {
        f.on_response_headers(stream, end_of_stream)
    });
    if written {
        status::HEADERS_CONTINUE
    } else {
        // The security headers could not be written: the response does not go out; the
        // generic 503 goes instead (Envoy resets the stream if it cannot send it).
        s.broken = true;
        let _ = catch_unwind(AssertUnwindSafe(|| answer_broken(stream)));
        status::HEADERS_STOP_ITERATION
    }
}

pub fn response_body(s: &mut GuardedStream, stream: &Stream, end_of_stream: bool) -> u32 {
    with_stream(s, stream, status::BODY_STOP_NO_BUFFER, |f| {
        f.on_response_body(stream, end_of_stream);
        status::BODY_CONTINUE
    })
}

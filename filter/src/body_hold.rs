//! Bodies read whole (`webhook`, `body_schema`) in the adapter: the filter holds them in its own
//! memory, and the root fails closed for requests whose body callbacks never come.
//!
//! Host facts this relies on (checked on Envoy 1.40, HTTP/1.1 and HTTP/2):
//! - A filter that answers a body callback with `Pause` (StopIterationAndBuffer) has Envoy keep
//!   the body in the stream's buffer, whose limit is the listener's
//!   `per_connection_buffer_limit_bytes` (1 MiB by default, or the route's
//!   `per_request_buffer_limit_bytes`). Envoy adds each new chunk to that buffer *before* the
//!   filter's callback, and the chunk that takes it over the limit makes Envoy prepare its own
//!   plain-text `413 Payload Too Large`: the filter's reply from that same callback is then
//!   dropped, and Envoy's passes through the response callbacks of a filter that believes it
//!   has just answered. So a limit equal to Envoy's (the default 1 MiB) could never be the
//!   filter's.
//! - Hence each chunk is copied out (`get_buffer`) and drained from Envoy's buffer
//!   (`set_buffer` with nothing), which then holds one chunk at most; the body is checked
//!   whole here, and the drained part is put back in front of the last chunk (`set_buffer` at
//!   0 with length 0 prepends) when the check allows the request. The body that goes upstream
//!   must fit Envoy's buffer then: `max_body_bytes` above Envoy's limit gets Envoy's 413 for
//!   bodies between the two (see the README).
//! - Without `allow_on_headers_stop_iteration: true` on the wasm filter, Envoy turns the
//!   headers' `Pause` into StopAllIterationAndWatermark: it keeps the body and never calls
//!   the body callbacks, and the request would hang until Envoy's timeouts. The root keeps a
//!   table of the requests that paused on their headers for a body; past
//!   [`BODY_WAIT_TIMEOUT_MS`], a request whose body bytes have reached Envoy (the
//!   `request.total_size` property has grown since its headers) without a callback is answered
//!   503, and the missing setting is logged once per VM. A client that has sent no body byte
//!   yet keeps waiting (with the setting, the callbacks would not have come either).

use crate::host;
use crate::tick::TickUser;
use crate::{now_ms, HttpState, Shared};
use api_guard_core::pipeline::flow::{self, BodyWaitCheck, BODY_WAIT_TIMEOUT_MS};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Weak;

/// The timer's period while requests wait for their first body callback: the resolution of
/// [`BODY_WAIT_TIMEOUT_MS`].
const BODY_WAIT_TICK_MS: u64 = 250;
/// Requests one worker watches at most; beyond, a request pauses unwatched (as it did before
/// the table existed), so that clients which send headers and no body cannot fill the table and
/// make other requests fail.
const MAX_BODY_WAITERS: usize = 10_000;

/// The log line, once per VM, when a body callback never came.
const MISSING_STOP_ITERATION_SETTING: &str = "api-guard: a webhook or body_schema request's body reached Envoy, but Envoy never passed it to the filter: the wasm filter's config lacks `allow_on_headers_stop_iteration: true` (Envoy 1.35+; an Istio WasmPlugin cannot set it: patch it in with an EnvoyFilter). Until it is set, every request on such a route is answered 503 service_unavailable after 3 s";

/// A request paused on its headers until its first body callback.
struct BodyWaiter {
    request: Weak<RefCell<HttpState>>,
    deadline_ms: u64,
    /// `request.total_size` when the headers came (`None`: unreadable).
    total_size_at_headers: Option<u64>,
}

/// One VM's requests waiting for their first body callback, keyed by context id.
#[derive(Default)]
pub(super) struct BodyWaits {
    waiting: RefCell<HashMap<u32, BodyWaiter>>,
    logged_missing_setting: Cell<bool>,
}

impl BodyWaits {
    fn register(&self, context_id: u32, waiter: BodyWaiter) -> bool {
        let Ok(mut waiting) = self.waiting.try_borrow_mut() else {
            return false;
        };
        if waiting.len() >= MAX_BODY_WAITERS {
            return false;
        }
        waiting.insert(context_id, waiter);
        true
    }

    pub(super) fn remove(&self, context_id: u32) {
        if let Ok(mut waiting) = self.waiting.try_borrow_mut() {
            waiting.remove(&context_id);
        }
    }
}

/// `request.total_size` of the current (or effective) context: the bytes of the headers and of
/// the body received so far, whatever the filters did with them.
pub(super) fn request_total_size() -> Option<u64> {
    let bytes = host::get_property(&["request", "total_size"])
        .ok()
        .flatten()?;
    let bytes: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    u64::try_from(i64::from_le_bytes(bytes)).ok()
}

/// The root's timer: answers the requests whose body reached Envoy past their deadline while
/// no body callback came.
pub(super) fn on_tick(shared: &Shared, root_context_id: u32, now: u64) {
    let expired = {
        let Ok(mut waiting) = shared.body_waits.waiting.try_borrow_mut() else {
            return;
        };
        if waiting.is_empty() {
            drop(waiting);
            shared.ticker.want(TickUser::BodyWait, 0);
            return;
        }
        let mut expired = Vec::new();
        waiting.retain(|&context_id, waiter| {
            if waiter.request.strong_count() == 0 {
                return false; // the request ended
            }
            // Each look past the deadline costs two hostcalls.
            let check = flow::check_body_wait(
                now,
                waiter.deadline_ms,
                waiter.total_size_at_headers,
                || {
                    host::set_effective_context(context_id).map_err(|_| ())?;
                    Ok(request_total_size())
                },
            );
            match check {
                BodyWaitCheck::Keep => true,
                BodyWaitCheck::Gone => false,
                BodyWaitCheck::Expire => {
                    expired.push((context_id, waiter.request.clone()));
                    false
                }
                BodyWaitCheck::RecheckAt(deadline) => {
                    waiter.deadline_ms = deadline;
                    true
                }
            }
        });
        if waiting.is_empty() {
            shared.ticker.want(TickUser::BodyWait, 0);
        }
        expired
    };
    for (context_id, request) in expired {
        let Some(request) = request.upgrade() else {
            continue;
        };
        if host::set_effective_context(context_id).is_err() {
            continue;
        }
        if let Ok(mut state) = request.try_borrow_mut() {
            state.body_callbacks_never_came();
        };
    }
    let _ = host::set_effective_context(root_context_id);
}

/// Once per VM: the host kept a body from the filter, and why.
pub(super) fn report_missing_body_callbacks(shared: &Shared) {
    if !shared.body_waits.logged_missing_setting.replace(true) {
        log::error!("{MISSING_STOP_ITERATION_SETTING}");
    }
}

impl HttpState {
    /// A request paused on its headers for its body (`WatchForBody`): watch it until a body
    /// callback comes.
    pub(super) fn watch_for_body_callbacks(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Ok(now) = now_ms() else {
            return;
        };
        let registered = shared.body_waits.register(
            self.context_id,
            BodyWaiter {
                request: self.self_ref.clone(),
                deadline_ms: now.saturating_add(BODY_WAIT_TIMEOUT_MS),
                total_size_at_headers: self.total_size_at_headers.or_else(request_total_size),
            },
        );
        if registered {
            shared.ticker.want(TickUser::BodyWait, BODY_WAIT_TICK_MS);
        }
    }
}

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
use crate::{now_ms, HeldBody, HttpState, Shared};
use api_guard_core::pipeline::flow::{self, BodyWaitCheck, BODY_WAIT_TIMEOUT_MS};
use api_guard_core::response::reply::{ErrorCode, LocalReply};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

/// Body bytes one worker holds for all its requests at most (the capacity of their copies).
/// A request whose body would go beyond is answered 503: an allocation failure inside the VM
/// would abort it, and with it every request of the worker.
pub(super) const MAX_HELD_BODY_BYTES_PER_WORKER: usize = 256 * 1024 * 1024;

/// The timer's period while requests wait for their first body callback: the resolution of
/// [`BODY_WAIT_TIMEOUT_MS`].
const BODY_WAIT_TICK_MS: u64 = 250;
/// Requests one worker watches at most; beyond, a request pauses unwatched (as it did before
/// the table existed), so that clients which send headers and no body cannot fill the table and
/// make other requests fail.
const MAX_BODY_WAITERS: usize = 10_000;

/// The log line, once per VM, when a body callback never came.
const MISSING_STOP_ITERATION_SETTING: &str = "api-guard: a webhook or body_schema request's body reached Envoy, but Envoy never passed it to the filter: the wasm filter's config lacks `allow_on_headers_stop_iteration: true` (Envoy 1.35+; an Istio WasmPlugin cannot set it: patch it in with an EnvoyFilter). Until it is set, every request on such a route is answered 503 service_unavailable after 3 s";

/// The bytes every held body of one worker takes, against [`MAX_HELD_BODY_BYTES_PER_WORKER`].
pub(super) struct HeldBudget {
    held: Cell<usize>,
    max: usize,
}

impl HeldBudget {
    pub(super) fn new(max: usize) -> HeldBudget {
        HeldBudget {
            held: Cell::new(0),
            max,
        }
    }
}

/// Why a chunk could not be kept.
#[derive(Debug)]
pub(super) enum StoreFull {
    /// The worker's budget of held bytes is spent.
    Budget,
    /// The allocator refused.
    Memory,
}

/// A held body's bytes, copied out of Envoy: `drained` of them were removed from Envoy's
/// buffer and go back in front of it when the request is allowed; the rest (the last chunk)
/// was copied for the check and is still in Envoy's buffer.
pub(super) struct BodyStore {
    bytes: Vec<u8>,
    drained: usize,
    /// The most this body may grow to: the route's bound plus the chunk that crosses it.
    cap_hint: usize,
    budget: Rc<HeldBudget>,
}

impl BodyStore {
    pub(super) fn new(budget: Rc<HeldBudget>, max_bytes: u64) -> BodyStore {
        BodyStore {
            bytes: Vec::new(),
            drained: 0,
            cap_hint: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            budget,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The part drained from Envoy's buffer, which must go back before the request does.
    pub(super) fn drained(&self) -> &[u8] {
        self.bytes.get(..self.drained).unwrap_or(&self.bytes)
    }

    /// Appends `chunk`: growth doubles (up to the route's bound) within the worker's budget,
    /// and an allocation the allocator refuses is an error, never an abort.
    fn push(&mut self, chunk: &[u8], drained: bool) -> Result<(), StoreFull> {
        let needed = self.bytes.len().saturating_add(chunk.len());
        let capacity = self.bytes.capacity();
        if needed > capacity {
            let target = needed.max(capacity.saturating_mul(2).min(self.cap_hint));
            let held = self.budget.held.get();
            let after = held.saturating_sub(capacity).saturating_add(target);
            if after > self.budget.max {
                return Err(StoreFull::Budget);
            }
            self.bytes
                .try_reserve_exact(target - self.bytes.len())
                .map_err(|_| StoreFull::Memory)?;
            let grown = self.bytes.capacity();
            self.budget
                .held
                .set(held.saturating_sub(capacity).saturating_add(grown));
        }
        self.bytes.extend_from_slice(chunk);
        if drained {
            self.drained = self.bytes.len();
        }
        Ok(())
    }
}

impl Drop for BodyStore {
    fn drop(&mut self) {
        let held = self.budget.held.get();
        self.budget
            .held
            .set(held.saturating_sub(self.bytes.capacity()));
    }
}

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

    fn remove(&self, context_id: u32) {
        if let Ok(mut waiting) = self.waiting.try_borrow_mut() {
            waiting.remove(&context_id);
        }
    }
}

/// `request.total_size` of the current (or effective) context: the bytes of the headers and of
/// the body received so far, whatever the filters did with them.
fn request_total_size() -> Option<u64> {
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

impl HttpState {
    /// A request paused on its headers for its body: watch it until a body callback comes.
    pub(super) fn watch_for_body_callbacks(&mut self) {
        if self.body_seen || self.watched_for_body {
            return;
        }
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
            self.watched_for_body = true;
            shared.ticker.want(TickUser::BodyWait, BODY_WAIT_TICK_MS);
        }
    }

    /// Before a request pauses on its headers to wait for keys: how much of it Envoy had then,
    /// for the body-wait table if its route turns out to read the body.
    pub(super) fn note_total_size_at_headers(&mut self) {
        self.total_size_at_headers = request_total_size();
    }

    /// Every body or trailers callback: the host does hand the body to the filter.
    pub(super) fn body_callback_came(&mut self) {
        self.body_seen = true;
        if self.watched_for_body {
            self.watched_for_body = false;
            if let Some(shared) = &self.shared {
                shared.body_waits.remove(self.context_id);
            }
        }
    }

    /// Called by the root for a request whose body reached Envoy and never the filter.
    fn body_callbacks_never_came(&mut self) {
        self.watched_for_body = false;
        if self.sent_local_reply || self.body_seen {
            return;
        }
        if let Some(shared) = &self.shared {
            if !shared.body_waits.logged_missing_setting.replace(true) {
                log::error!("{MISSING_STOP_ITERATION_SETTING}");
            }
        }
        self.held = None;
        let reply = LocalReply::new(ErrorCode::ServiceUnavailable, &self.response.request_id);
        self.send_reply(&reply);
    }

    /// A body chunk of a request whose body is checked whole: over the bound it is refused at
    /// once; otherwise it is copied out and drained from Envoy's buffer until the last one.
    pub(super) fn held_body_chunk(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(held) = &self.held else {
            return Action::Continue;
        };
        let total = (held.taken.len() as u64).saturating_add(body_size as u64);
        if total > held.check.max_bytes {
            let held = self.held.take();
            return self.refuse_body_too_large(held);
        }
        if end_of_stream {
            return self.finish_held_body(body_size);
        }
        let chunk = match host::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
            Ok(chunk) => chunk.unwrap_or_default(),
            Err(status) => {
                return self.fail_closed(&format!("cannot read the request body: {status}"))
            }
        };
        if let Err(error) = self.keep(&chunk, true) {
            return error;
        }
        if let Err(status) = host::set_buffer(BufferType::HttpRequestBody, 0, body_size, b"") {
            return self.fail_closed(&format!("cannot drain the request body: {status}"));
        }
        // Envoy's buffer is empty again; the headers wait with the body.
        Action::Pause
    }

    /// The body is complete: `in_envoy` bytes of it (at most; the host clamps) are still in
    /// Envoy's buffer after the drained ones. Checks the whole.
    pub(super) fn finish_held_body(&mut self, in_envoy: usize) -> Action {
        let tail = match host::get_buffer(BufferType::HttpRequestBody, 0, in_envoy) {
            Ok(tail) => tail.unwrap_or_default(),
            Err(status) => {
                return self.fail_closed(&format!("cannot read the request body: {status}"))
            }
        };
        let nothing_drained = self.held.as_ref().is_some_and(|h| h.taken.len() == 0);
        if nothing_drained {
            // The whole body came in one callback: check Envoy's copy, keep none.
            return self.check_held_body_bytes(Some(&tail));
        }
        if let Err(error) = self.keep(&tail, false) {
            return error;
        }
        self.check_held_body_bytes(None)
    }

    fn keep(&mut self, chunk: &[u8], drained: bool) -> Result<(), Action> {
        let Some(held) = &mut self.held else {
            return Ok(());
        };
        match held.taken.push(chunk, drained) {
            Ok(()) => Ok(()),
            Err(StoreFull::Budget) => Err(self.fail_closed(&format!(
                "this worker already holds {MAX_HELD_BODY_BYTES_PER_WORKER} bytes of request bodies"
            ))),
            Err(StoreFull::Memory) => {
                Err(self.fail_closed("no memory left to hold the request body"))
            }
        }
    }

    /// Puts the drained part of an allowed body back in front of what Envoy still holds.
    pub(super) fn restore_held_body(held: &HeldBody) -> Result<(), String> {
        let drained = held.taken.drained();
        if drained.is_empty() {
            return Ok(());
        }
        host::set_buffer(BufferType::HttpRequestBody, 0, 0, drained)
            .map_err(|status| format!("cannot restore the request body: {status}"))
    }

    /// Whether the response about to be encoded is the reply this filter sent. After a body
    /// callback it may not be: Envoy's own reply (its buffer-limit 413) can win over the
    /// filter's in the same callback.
    pub(super) fn is_own_reply(&self) -> bool {
        let content_type = if self.body_seen {
            host::get_header(MapType::HttpResponseHeaders, "content-type")
                .ok()
                .flatten()
        } else {
            None
        };
        flow::is_own_reply(
            self.body_seen,
            &self.response.request_id,
            content_type.as_deref(),
            || {
                host::get_header(MapType::HttpResponseHeaders, "x-request-id")
                    .ok()
                    .flatten()
            },
        )
    }
}

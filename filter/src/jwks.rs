//! Remote JWKS in the adapter: the core's `jwks_refresh::JwksRefresh` decides (reload the
//! published set, request refetches, claim the lease and fetch, which waiting requests to decide
//! again, the timer's period); this module executes its commands: the root's timer ticks it, the
//! root sends the fetches and receives their answers, and the root finishes the requests that
//! waited for keys.
//!
//! Host facts this relies on (proxy-wasm on Envoy 1.40):
//! - `dispatch_http_call` goes through the root context whatever the caller, and Envoy refuses a
//!   call without `:method`, `:path` and `:authority`. It is made from `on_tick` only, never
//!   while the VM starts.
//! - `set_tick_period` always sets the root's timer (also when called for a request), and
//!   setting it re-arms the timer: it is set only when the wanted period changes, or a busy
//!   worker would keep postponing its own tick. The timer is shared with the body-wait table
//!   (see `tick`): this driver says which period it wants, and runs only when that has elapsed.
//! - `set_effective_context(id)` lets the root act for a request: header changes,
//!   `resume_http_request` and `send_http_response` then apply to that request. Envoy defers
//!   the resume and the local reply until the root's callback returns, so nothing re-enters.
//!   A request that ended meanwhile has no context any more: the call fails and the root skips
//!   it (its state is gone too: the root only holds a `Weak`).

use crate::host;
use crate::tick::{TickUser, Ticker};
use crate::{now_ms, HostSharedData, HttpState, Shared};
use api_guard_core::authn::jwks_refresh::{self, Command, JwksRefresh};
use api_guard_core::authn::jwt::remote::{HttpReply, RemoteKeys, WaitTicket};
use api_guard_core::pipeline::policy::Policy;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::{Ref, RefCell};
use std::rc::{Rc, Weak};
use std::time::Duration;

/// A request waiting for keys, as the root sees it.
pub(super) struct RequestHandle {
    context_id: u32,
    request: Weak<RefCell<HttpState>>,
}

fn alive(handle: &RequestHandle) -> bool {
    handle.request.strong_count() > 0
}

/// One VM's part of remote JWKS: the core's driver (`jwks_refresh`), which decides, and the
/// root's timer, which it sets.
pub(super) struct RemoteJwksDriver {
    driver: RefCell<JwksRefresh<RequestHandle>>,
    /// The root's timer, shared with the body-wait table.
    ticker: Rc<Ticker>,
}

impl RemoteJwksDriver {
    pub(super) fn new(policy: &Policy, ticker: Rc<Ticker>) -> RemoteJwksDriver {
        let mut random = [0u8; 8];
        let lease_owner = match getrandom::getrandom(&mut random) {
            Ok(()) => u64::from_le_bytes(random),
            // Without randomness, the clock tells VMs apart well enough: a lease holder that
            // is mistaken for another only loses its result.
            Err(_) => now_ms().unwrap_or(0) ^ 0x9e37_79b9_7f4a_7c15,
        };
        RemoteJwksDriver {
            driver: RefCell::new(JwksRefresh::new(policy, lease_owner)),
            ticker,
        }
    }

    /// Starts the timer (when a provider is remote). Nothing is fetched before the first tick.
    pub(super) fn start(&self) {
        if let Some(period) = self
            .driver
            .try_borrow()
            .ok()
            .and_then(|d| d.start_period_ms())
        {
            self.ticker.want(TickUser::Jwks, period);
        }
    }

    /// The key sets, for a decision. `None` only if they are being replaced right now, which
    /// cannot happen on one thread.
    pub(super) fn keys(&self) -> Option<Ref<'_, RemoteKeys>> {
        let driver = self.driver.try_borrow().ok()?;
        Some(Ref::map(driver, JwksRefresh::keys))
    }

    fn adjust_tick(&self) {
        let period = self
            .driver
            .try_borrow()
            .map_or(jwks_refresh::FAST_TICK_MS, |d| d.tick_period_ms());
        self.ticker.want(TickUser::Jwks, period);
    }

    /// Registers a waiting request; false when this worker already holds too many.
    fn register(&self, handle: RequestHandle, ticket: WaitTicket) -> bool {
        let registered = self
            .driver
            .try_borrow_mut()
            .is_ok_and(|mut d| d.register(handle, ticket).is_ok());
        if registered {
            self.adjust_tick();
        }
        registered
    }
}

/// The root's timer: the driver says what to fetch and which waiting requests to decide again;
/// this executes it.
pub(super) fn on_tick(shared: &Shared, root_context_id: u32) {
    let Ok(now) = now_ms() else {
        return;
    };
    let commands = {
        let Ok(mut driver) = shared.remote_jwks.driver.try_borrow_mut() else {
            return;
        };
        driver.tick(&shared.policy, &HostSharedData, now, alive)
    };
    let mut ready = Vec::new();
    for command in commands {
        match command {
            Command::Fetch { provider } => dispatch_fetch(shared, provider, now),
            Command::Resume(handle) => ready.push(handle),
        }
    }
    resume(ready, root_context_id);
    shared.remote_jwks.adjust_tick();
    export_metrics(shared);
}

/// The fetch results the driver counted, and its gauges.
fn export_metrics(shared: &Shared) {
    let Ok(mut driver) = shared.remote_jwks.driver.try_borrow_mut() else {
        return;
    };
    for id in driver.take_counts() {
        shared.metrics.increment(id);
    }
    for &(id, value) in driver.gauges() {
        shared.metrics.set(id, value);
    }
}

fn dispatch_fetch(shared: &Shared, index: usize, now: u64) {
    let Some(source) = jwks_refresh::remote_source(&shared.policy, index) else {
        return;
    };
    // The SDK's call, not a `host` wrapper: its dispatcher must record the token (see `host`).
    let sent = hostcalls::dispatch_http_call(
        &source.cluster,
        source.request_headers(),
        None,
        Vec::new(),
        Duration::from_millis(source.timeout_ms),
    );
    let Ok(mut driver) = shared.remote_jwks.driver.try_borrow_mut() else {
        return;
    };
    match sent {
        Ok(token) => driver.fetch_sent(index, token, now),
        Err(status) => driver.fetch_not_sent(
            &shared.policy,
            &HostSharedData,
            index,
            now,
            &format!("{status:?}"),
        ),
    }
}

/// The answer to a fetch (the host calls the root that dispatched it): the driver publishes or
/// records the failure and says which waiting requests to decide at once (the other workers do
/// on their next tick).
pub(super) fn on_fetch_response(
    shared: &Shared,
    root_context_id: u32,
    token: u32,
    num_headers: usize,
    body_size: usize,
) {
    let Some(fetch) = shared
        .remote_jwks
        .driver
        .try_borrow_mut()
        .ok()
        .and_then(|mut d| d.take_fetch(token))
    else {
        return;
    };
    let now = now_ms().ok();
    // Zero headers: the host's call failed (reset) and there is nothing to read.
    let status = if num_headers == 0 {
        None
    } else {
        host::get_header(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
    };
    // A body over the limit is never copied into the VM.
    let body = match status {
        Some(_) if jwks_refresh::reads_body(body_size) => {
            host::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let reply = match status {
        Some(status) => HttpReply::Response {
            status,
            body: &body,
            body_size,
        },
        None => HttpReply::Failed,
    };
    let ready = match shared.remote_jwks.driver.try_borrow_mut() {
        Ok(mut driver) => {
            driver.fetch_answered(&shared.policy, &HostSharedData, fetch, now, reply, alive)
        }
        Err(_) => return,
    };
    resume(ready, root_context_id);
    shared.remote_jwks.adjust_tick();
    export_metrics(shared);
}

/// Decides again the waiting requests whose keys settled, each in its own context.
fn resume(ready: Vec<RequestHandle>, root_context_id: u32) {
    if ready.is_empty() {
        return;
    }
    for waiter in ready {
        let Some(request) = waiter.request.upgrade() else {
            continue;
        };
        if host::set_effective_context(waiter.context_id).is_err() {
            continue;
        }
        let Ok(mut request) = request.try_borrow_mut() else {
            continue;
        };
        if request.keys_settled() == Action::Continue && host::resume_http_request().is_err() {
            let _ = host::reset_http_request();
        }
    }
    let _ = host::set_effective_context(root_context_id);
}

/// Registers a request that waits for keys (`WaitForKeys`): the request pauses (headers, and
/// any body, stay with Envoy) and the root decides it again when its keys settle. False when
/// this worker already holds too many.
pub(super) fn register(state: &HttpState, ticket: WaitTicket) -> bool {
    let Some(shared) = &state.shared else {
        return false;
    };
    shared.remote_jwks.register(
        RequestHandle {
            context_id: state.context_id,
            request: state.self_ref.clone(),
        },
        ticket,
    )
}

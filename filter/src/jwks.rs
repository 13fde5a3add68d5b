//! Remote JWKS in the adapter: the root context's timer drives the protocol of
//! `jwt::remote` (reload the published set, request refetches, claim the lease and fetch), the
//! root receives the fetch's answer, and the root finishes the requests that waited for keys.
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
use crate::{decide_with_env, now_ms, HostSharedData, HttpState, Shared};
use api_guard_core::authn::jwks_refresh;
use api_guard_core::authn::jwt::remote::{
    self, Claim, FetchReport, FetchState, HttpReply, RemoteKeys, WaitTicket, MAX_JWKS_BYTES,
};
use api_guard_core::pipeline::policy::Policy;
use api_guard_core::request::head::RequestHead;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::{Ref, RefCell};
use std::rc::{Rc, Weak};
use std::time::Duration;

/// While requests wait or a fetch is in flight: how soon a waiting request sees new keys.
const FAST_TICK_MS: u64 = 100;
/// Otherwise: how soon a worker picks up a set another worker published, and the resolution
/// of the refresh schedule.
const IDLE_TICK_MS: u64 = 1_000;
/// Requests one worker holds for keys at most; beyond, requests are decided at once.
const MAX_WAITING_REQUESTS: usize = 10_000;

/// A request waiting for keys, as the root sees it.
#[derive(Clone)]
struct Waiter {
    context_id: u32,
    request: Weak<RefCell<HttpState>>,
    ticket: WaitTicket,
}

struct InFlightFetch {
    token: u32,
    provider: usize,
    started_at_ms: u64,
}

/// What a request keeps while it waits for keys, to be decided again.
pub(super) struct HeldForKeys {
    head: RequestHead,
    /// The request had no body.
    headers_end_stream: bool,
    /// Body bytes that arrived while waiting (Envoy buffers them: the body callbacks pause).
    body_size: usize,
    /// The whole body, copied when the request ended while waiting: a body check after the
    /// wait has no callback left to read it in.
    complete_body: Option<Vec<u8>>,
    /// The request ended (body or trailers) while waiting.
    ended: bool,
}

/// One VM's part of remote JWKS.
pub(super) struct RemoteJwksDriver {
    /// Indexes of the providers with a remote source.
    providers: Vec<usize>,
    keys: RefCell<RemoteKeys>,
    waiting: RefCell<Vec<Waiter>>,
    fetches: RefCell<Vec<InFlightFetch>>,
    /// This VM's name in the fetch lease.
    lease_owner: u64,
    /// The root's timer, shared with the body-wait table.
    ticker: Rc<Ticker>,
}

impl RemoteJwksDriver {
    pub(super) fn new(policy: &Policy, ticker: Rc<Ticker>) -> RemoteJwksDriver {
        let providers = policy
            .jwt
            .as_ref()
            .map(|jwt| {
                jwt.providers
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.remote.is_some())
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
        let mut random = [0u8; 8];
        let lease_owner = match getrandom::getrandom(&mut random) {
            Ok(()) => u64::from_le_bytes(random),
            // Without randomness, the clock tells VMs apart well enough: a lease holder that
            // is mistaken for another only loses its result.
            Err(_) => now_ms().unwrap_or(0) ^ 0x9e37_79b9_7f4a_7c15,
        };
        RemoteJwksDriver {
            providers,
            keys: RefCell::new(RemoteKeys::default()),
            waiting: RefCell::new(Vec::new()),
            fetches: RefCell::new(Vec::new()),
            lease_owner,
            ticker,
        }
    }

    /// Starts the timer (when a provider is remote). Nothing is fetched before the first tick.
    pub(super) fn start(&self) {
        if !self.providers.is_empty() {
            self.set_tick(FAST_TICK_MS);
        }
    }

    /// The key sets, for a decision. `None` only if they are being replaced right now, which
    /// cannot happen on one thread.
    pub(super) fn keys(&self) -> Option<Ref<'_, RemoteKeys>> {
        self.keys.try_borrow().ok()
    }

    fn set_tick(&self, period_ms: u64) {
        self.ticker.want(TickUser::Jwks, period_ms);
    }

    fn adjust_tick(&self) {
        let busy = self.waiting.try_borrow().map_or(true, |w| !w.is_empty())
            || self.fetches.try_borrow().map_or(true, |f| !f.is_empty())
            || self.keys.try_borrow().map_or(true, |keys| {
                self.providers.iter().any(|p| !keys.has_set(*p))
            });
        self.set_tick(if busy { FAST_TICK_MS } else { IDLE_TICK_MS });
    }

    /// Registers a waiting request; false when this worker already holds too many.
    fn register(&self, waiter: Waiter) -> bool {
        let Ok(mut waiting) = self.waiting.try_borrow_mut() else {
            return false;
        };
        if waiting.len() >= MAX_WAITING_REQUESTS {
            return false;
        }
        waiting.push(waiter);
        drop(waiting);
        self.set_tick(FAST_TICK_MS);
        true
    }

    fn fetch_in_flight(&self, provider: usize) -> bool {
        self.fetches
            .try_borrow()
            .map_or(true, |f| f.iter().any(|fetch| fetch.provider == provider))
    }

    fn waits_for_refetch(&self, provider: usize) -> bool {
        self.waiting.try_borrow().is_ok_and(|waiting| {
            waiting
                .iter()
                .any(|w| w.ticket.provider == provider && w.ticket.had_set)
        })
    }
}

/// The state record of every remote provider (`None` when unreadable or never written).
fn read_states(shared: &Shared) -> Vec<(usize, Option<FetchState>)> {
    let Some(jwt) = &shared.policy.jwt else {
        return Vec::new();
    };
    shared
        .remote_jwks
        .providers
        .iter()
        .filter_map(|&index| {
            let source = jwt.providers.get(index)?.remote.as_ref()?;
            let state = remote::read_state(&HostSharedData, source)
                .ok()
                .and_then(|read| read.state);
            Some((index, state))
        })
        .collect()
}

/// Loads a provider's published set when it is newer than the one this VM holds.
fn reload(shared: &Shared, index: usize, published_version: Option<u64>) {
    let driver = &shared.remote_jwks;
    let Some(provider) = shared
        .policy
        .jwt
        .as_ref()
        .and_then(|j| j.providers.get(index))
    else {
        return;
    };
    let Some(source) = &provider.remote else {
        return;
    };
    let Ok(mut keys) = driver.keys.try_borrow_mut() else {
        return;
    };
    let stale = !keys.has_set(index)
        || published_version.is_some_and(|published| published > keys.version(index));
    if stale {
        if let Ok(Some(version)) = remote::reload(
            &HostSharedData,
            source,
            &provider.algorithms,
            &mut keys,
            index,
        ) {
            log::debug!(
                "api-guard: provider {}: key set version {version} loaded",
                provider.name
            );
        }
    }
}

/// The root's timer: per remote provider, reload a newer published set, ask for the refetch
/// that waiting requests need, claim the fetch when it is due; then decide the waiting requests
/// whose keys have settled.
pub(super) fn on_tick(shared: &Shared, root_context_id: u32) {
    let driver = &shared.remote_jwks;
    if driver.providers.is_empty() {
        return;
    }
    let Ok(now) = now_ms() else {
        return;
    };
    let Some(jwt) = &shared.policy.jwt else {
        return;
    };
    let states = read_states(shared);
    for (index, state) in &states {
        let index = *index;
        reload(shared, index, state.as_ref().map(|s| s.published_version));
        let Some(source) = jwt.providers.get(index).and_then(|p| p.remote.as_ref()) else {
            continue;
        };
        if driver.waits_for_refetch(index) {
            // At most one per min_refetch_seconds across all workers; otherwise the requests
            // wait for the fetch in flight, or are decided at their deadline.
            let _ = remote::request_refetch(&HostSharedData, source, now);
        }
        if !driver.fetch_in_flight(index)
            && remote::try_claim(&HostSharedData, source, driver.lease_owner, now)
                == Ok(Claim::Claimed)
        {
            dispatch_fetch(shared, index, now);
        }
    }
    settle_waiters(shared, root_context_id, now, &states);
    driver.adjust_tick();
}

fn dispatch_fetch(shared: &Shared, index: usize, now: u64) {
    let driver = &shared.remote_jwks;
    let Some(provider) = shared
        .policy
        .jwt
        .as_ref()
        .and_then(|j| j.providers.get(index))
    else {
        return;
    };
    let Some(source) = &provider.remote else {
        return;
    };
    // The SDK's call, not a `host` wrapper: its dispatcher must record the token (see `host`).
    match hostcalls::dispatch_http_call(
        &source.cluster,
        source.request_headers(),
        None,
        Vec::new(),
        Duration::from_millis(source.timeout_ms),
    ) {
        Ok(token) => {
            if let Ok(mut fetches) = driver.fetches.try_borrow_mut() {
                fetches.push(InFlightFetch {
                    token,
                    provider: index,
                    started_at_ms: now,
                });
            }
        }
        Err(status) => {
            let report = remote::fail_unsent_fetch(
                &HostSharedData,
                source,
                driver.lease_owner,
                now,
                format!(
                    "dispatch_http_call refused ({status:?}): is cluster {:?} defined?",
                    source.cluster
                ),
            );
            log_report(shared, index, &report);
        }
    }
}

/// The answer to a fetch (the host calls the root that dispatched it): publish or record the
/// failure, then bring this VM's keys up to date and decide its waiting requests at once (the
/// other workers do on their next tick).
pub(super) fn on_fetch_response(
    shared: &Shared,
    root_context_id: u32,
    token: u32,
    num_headers: usize,
    body_size: usize,
) {
    let driver = &shared.remote_jwks;
    let fetch = {
        let Ok(mut fetches) = driver.fetches.try_borrow_mut() else {
            return;
        };
        let Some(position) = fetches.iter().position(|f| f.token == token) else {
            return;
        };
        fetches.swap_remove(position)
    };
    let Some(provider) = shared
        .policy
        .jwt
        .as_ref()
        .and_then(|j| j.providers.get(fetch.provider))
    else {
        return;
    };
    let Some(source) = &provider.remote else {
        return;
    };
    let now = now_ms().unwrap_or(fetch.started_at_ms);
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
        Some(_) if body_size <= MAX_JWKS_BYTES => {
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
    let report = remote::complete_fetch(
        &HostSharedData,
        source,
        &provider.algorithms,
        driver.lease_owner,
        now,
        reply,
        now.saturating_sub(fetch.started_at_ms),
    );
    log_report(shared, fetch.provider, &report);
    let states = read_states(shared);
    for (index, state) in &states {
        reload(shared, *index, state.as_ref().map(|s| s.published_version));
    }
    settle_waiters(shared, root_context_id, now, &states);
    driver.adjust_tick();
}

fn log_report(shared: &Shared, index: usize, report: &FetchReport) {
    let Some(provider) = shared
        .policy
        .jwt
        .as_ref()
        .and_then(|j| j.providers.get(index))
    else {
        return;
    };
    let serving = shared
        .remote_jwks
        .keys
        .try_borrow()
        .map_or(0, |keys| keys.version(index));
    jwks_refresh::log_fetch_report(&provider.name, serving, report);
}

/// Decides again the waiting requests whose keys settled (new set, refetch done, deadline).
fn settle_waiters(
    shared: &Shared,
    root_context_id: u32,
    now: u64,
    states: &[(usize, Option<FetchState>)],
) {
    let driver = &shared.remote_jwks;
    let ready = {
        let (Ok(keys), Ok(mut waiting)) =
            (driver.keys.try_borrow(), driver.waiting.try_borrow_mut())
        else {
            return;
        };
        let mut ready = Vec::new();
        waiting.retain(|waiter| {
            if waiter.request.strong_count() == 0 {
                return false; // the request ended while it waited
            }
            let state = states
                .iter()
                .find(|(index, _)| *index == waiter.ticket.provider)
                .and_then(|(_, state)| state.as_ref());
            let version = keys.version(waiter.ticket.provider);
            if waiter.ticket.settled(version, state, now) {
                ready.push(waiter.clone());
                false
            } else {
                true
            }
        });
        ready
    };
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
        if request.decide_after_wait() == Action::Continue && host::resume_http_request().is_err() {
            let _ = host::reset_http_request();
        }
    }
    let _ = host::set_effective_context(root_context_id);
}

impl HttpState {
    /// Carries out [`api_guard_core::pipeline::policy::Verdict::WaitForKeys`]: the request pauses (headers, and
    /// any body, stay with Envoy) and the root decides it again when its keys settle.
    pub(super) fn hold_for_keys(
        &mut self,
        head: RequestHead,
        ticket: WaitTicket,
        end_of_stream: bool,
    ) -> Action {
        let Some(shared) = self.shared.clone() else {
            return self.fail_closed("the plugin configuration was refused");
        };
        if !end_of_stream {
            self.note_total_size_at_headers();
        }
        self.held_for_keys = Some(HeldForKeys {
            head,
            headers_end_stream: end_of_stream,
            body_size: 0,
            complete_body: None,
            ended: end_of_stream,
        });
        let registered = shared.remote_jwks.register(Waiter {
            context_id: self.context_id,
            request: self.self_ref.clone(),
            ticket,
        });
        if registered {
            Action::Pause
        } else {
            // Too many requests waiting on this worker: decide this one now.
            self.decide_after_wait()
        }
    }

    /// A body chunk while the request waits: Envoy keeps it (pause); a complete body is copied
    /// now, the only time it can be read.
    pub(super) fn body_while_held_for_keys(
        &mut self,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let copied = if end_of_stream {
            match host::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
                Ok(body) => Some(body.unwrap_or_default()),
                Err(status) => {
                    return self.fail_closed(&format!("cannot read the request body: {status}"))
                }
            }
        } else {
            None
        };
        if let Some(held) = &mut self.held_for_keys {
            held.body_size = body_size;
            held.ended = end_of_stream;
            held.complete_body = copied;
        }
        Action::Pause
    }

    /// Trailers end a request. While its headers are held, answering `Continue` here would
    /// make Envoy send the request on undecided (checked on Envoy 1.40 with HTTP/2: a body that
    /// ends with trailers reached the upstream unchecked), so the trailers wait with it. A body
    /// held for a check (webhook, body_schema) has no data callback with `end_of_stream` in that
    /// case: it is complete now and is checked now.
    pub(super) fn on_http_request_trailers(&mut self) -> Action {
        self.body_callback_came();
        if self.held.is_some() {
            // The host clamps the length to what it has buffered.
            return self.finish_held_body(usize::MAX);
        }
        let Some(held) = &self.held_for_keys else {
            return Action::Continue;
        };
        let body_size = held.body_size;
        let copied = host::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .map(Option::unwrap_or_default);
        if let Some(held) = &mut self.held_for_keys {
            held.ended = true;
            held.complete_body = copied;
        }
        Action::Pause
    }

    /// Decides a held request again, never waiting twice. Returns what the request's own
    /// callback would have returned: `Continue` means the caller resumes it.
    pub(super) fn decide_after_wait(&mut self) -> Action {
        let Some(held) = self.held_for_keys.take() else {
            return Action::Pause;
        };
        let Some(shared) = self.shared.clone() else {
            return self.fail_closed("the plugin configuration was refused");
        };
        let decision = match decide_with_env(&shared, false, |env| {
            shared.policy.check_request(&held.head, env)
        }) {
            Ok(decision) => decision,
            Err(why) => return self.fail_closed(&why),
        };
        let action = self.carry_out(decision, Some(held.head), held.headers_end_stream);
        if self.held.is_some() {
            // The route checks the body. If the request ended while it waited, the body came
            // and went: check the copy. Otherwise the body callbacks bring the rest.
            return match (held.ended, held.complete_body) {
                (true, Some(body)) => self.check_held_body_bytes(Some(&body)),
                (true, None) => self.fail_closed("the request body could not be read"),
                (false, _) => action,
            };
        }
        if action == Action::Continue && held.body_size > 0 {
            // Allowed: the bytes that arrived while waiting count against a streamed limit.
            return self.on_http_request_body(held.body_size, held.ended);
        }
        action
    }
}

//! The adapter between Envoy (proxy-wasm ABI) and the core. It translates host data into core
//! types and core verdicts into hostcalls; it makes no decisions.
//!
//! Hostcalls go through `host` (raw ABI, the host's status as a `Result`): the SDK's
//! convenience methods unwrap host errors, and even its `Result`-returning `hostcalls` panic on
//! a status they do not expect; under `panic = "abort"` a panic kills the worker's VM for every
//! request it carries. A host error on the request path becomes a fail-closed 503 (or a reset
//! stream) instead.
//!
//! Built for `wasm32-wasip1` only (`target/wasm32-wasip1/release/api_guard.wasm`); on any other
//! target the crate is empty, so that `cargo test --workspace` can build it.
#![cfg(target_arch = "wasm32")]

mod body_hold;
mod host;
mod host_headers;
mod jwks;
mod tick;

use api_guard_core::authn::jwt::cache::TokenCache;
use api_guard_core::authn::jwt::verifier::{
    ForeignFunctions, HostCallFailed, HostVerifier, RustVerifier, SignatureVerifier,
};
use api_guard_core::config;
use api_guard_core::limits::body_limit::BodyCounter;
use api_guard_core::limits::rate_limit::{shared_seed, Limiter};
use api_guard_core::pipeline::flow::{
    self, BodyOverLimit, ErrorBodyRewrite, ResponseBody, ResponseHeadersPlan,
};
use api_guard_core::pipeline::policy::{
    fallback_response_edits, BodyCheck, Decision, Forward, Policy, RequestEnv, ResponseContext,
    Verdict,
};
use api_guard_core::request::head::{client_ip, RequestHead};
use api_guard_core::request::header_pairs::serialize;
use api_guard_core::response::error_rewrite::{BodySample, ResponseOrigin};
use api_guard_core::response::reply::{ErrorCode, LocalReply};
use api_guard_core::support::events::{self, EventBudget, SecurityEvent};
use api_guard_core::support::logging;
use api_guard_core::support::shared_store::{CounterStore, StoreError};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};
use std::cell::RefCell;
use std::rc::{Rc, Weak};

/// Verified tokens kept per worker. Direct-mapped, so this is also the memory bound.
const TOKEN_CACHE_SLOTS: usize = 4096;

proxy_wasm::main! {{
    // Not `proxy_wasm::set_log_level`: the SDK's logger and panic hook unwrap the host's status.
    host::install_logger();
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(ApiGuardRoot { context_id, shared: None })
    });
}}

/// Writes a security event, within the worker's per-second budget of event lines.
fn log_event(shared: &Shared, event: &SecurityEvent) {
    match (shared.event_budget.try_borrow_mut(), now_ms()) {
        (Ok(mut budget), Ok(now)) => events::log_event(Some(&mut budget), now, event),
        _ => events::log_event(None, 0, event),
    }
}

struct EnvoyForeignFunctions;

impl ForeignFunctions for EnvoyForeignFunctions {
    fn call(&self, function: &str, arguments: &[u8]) -> Result<Vec<u8>, HostCallFailed> {
        host::call_foreign_function(function, arguments).map_err(|_| HostCallFailed)
    }
}

/// Proxy-wasm shared data (one map per `vm_id`, shared by every worker).
struct HostSharedData;

impl CounterStore for HostSharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        host::get_shared_data(key).map_err(|_| StoreError::Unavailable)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match host::set_shared_data(key, value, cas.unwrap_or(0)) {
            Ok(()) => Ok(()),
            Err(error) if error.is_cas_mismatch() => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Unavailable),
        }
    }
}

/// Whether the downstream connection is TLS: Envoy's `connection.tls_version` is the TLS
/// version of a TLS connection and absent (or empty) on a plain-text one. A host error is
/// `None`: the core then treats the request as plain text (fail closed).
fn connection_is_tls() -> Option<bool> {
    match host::get_property(&["connection", "tls_version"]) {
        Ok(Some(version)) => Some(!version.is_empty()),
        Ok(None) => Some(false),
        Err(_) => None,
    }
}

/// The downstream address (`ip:port`) Envoy computed for this stream.
fn source_address() -> Option<String> {
    let bytes = host::get_property(&["source", "address"]).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

fn now_ms() -> Result<u64, host::HostError> {
    host::now_ms()
}

/// Lends a decision the host's request environment: the clock, the verifier, this worker's
/// token cache and key sets, shared data and the rate limiter.
fn decide_with_env(
    shared: &Shared,
    may_wait_for_keys: bool,
    decide: impl FnOnce(&mut RequestEnv<'_>) -> Decision,
) -> Result<Decision, String> {
    let now_ms = now_ms().map_err(|status| format!("cannot read the clock: {status}"))?;
    let mut token_cache = shared
        .token_cache
        .try_borrow_mut()
        .map_err(|_| "token cache busy".to_string())?;
    let remote_keys = shared
        .remote_jwks
        .keys()
        .ok_or_else(|| "key sets busy".to_string())?;
    let mut env = RequestEnv {
        now_ms,
        verifier: shared.verifier.as_ref(),
        token_cache: &mut token_cache,
        shared: &HostSharedData,
        limiter: shared.limiter.as_ref(),
        remote_keys: &remote_keys,
        may_wait_for_keys,
    };
    Ok(decide(&mut env))
}

/// Per-VM state shared by the root context and the request contexts of one worker.
struct Shared {
    policy: Policy,
    verifier: Box<dyn SignatureVerifier>,
    token_cache: RefCell<TokenCache>,
    /// `None` when no shared seed could be agreed: rate-limited routes then fail closed.
    limiter: Option<Limiter>,
    event_budget: RefCell<EventBudget>,
    /// Remote JWKS: this VM's key sets, its fetches, the requests waiting for keys.
    remote_jwks: jwks::RemoteJwksDriver,
    /// The root's timer (remote JWKS and the body-wait table).
    ticker: Rc<tick::Ticker>,
    /// The bytes of the bodies this worker holds for a check.
    held_budget: Rc<body_hold::HeldBudget>,
    /// Requests paused on their headers until their first body callback.
    body_waits: body_hold::BodyWaits,
}

struct ApiGuardRoot {
    context_id: u32,
    shared: Option<Rc<Shared>>,
}

impl Context for ApiGuardRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(shared) = &self.shared {
            jwks::on_fetch_response(shared, self.context_id, token_id, num_headers, body_size);
        }
    }
}

impl RootContext for ApiGuardRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        host::refresh_log_level();
        self.shared = None;
        let bytes = match host::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        ) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                log::error!("api-guard: cannot read the plugin configuration: {status}");
                return true;
            }
        };
        let policy = match config::load(&bytes) {
            Ok(policy) => policy,
            Err(errors) => {
                logging::log_refusal(&HostSharedData, &errors);
                // Returning false would make Envoy refuse a static bootstrap and exit, while under
                // dynamic configuration (ECDS, an Istio WasmPlugin) it behaves otherwise. Staying
                // loaded without a policy fails closed the same way everywhere: every request is
                // answered 503 and none reaches the upstream.
                return true;
            }
        };
        logging::log_warnings(&HostSharedData, &policy);
        let verifier: Box<dyn SignatureVerifier> =
            if HostVerifier::self_test(&EnvoyForeignFunctions) {
                Box::new(HostVerifier {
                    host: EnvoyForeignFunctions,
                })
            } else {
                Box::new(RustVerifier)
            };
        let limiter = if policy.rate_limits.is_empty() {
            None
        } else {
            let mut fresh = [0u8; 32];
            let seeded = getrandom::getrandom(&mut fresh).map_err(|_| StoreError::Unavailable);
            match seeded.and_then(|()| shared_seed(&HostSharedData, fresh)) {
                Ok(seed) => Some(Limiter::new(seed)),
                Err(error) => {
                    logging::log_once(
                        &HostSharedData,
                        log::Level::Error,
                        &format!("api-guard: no shared rate-limit seed ({error:?}); rate-limited routes answer 503"),
                    );
                    None
                }
            }
        };
        logging::log_configured(&HostSharedData, &policy, verifier.name());
        let ticker = Rc::new(tick::Ticker::default());
        let remote_jwks = jwks::RemoteJwksDriver::new(&policy, Rc::clone(&ticker));
        // Remote key sets are fetched from the timer only, never here: the first tick comes
        // once the VM has started.
        remote_jwks.start();
        self.shared = Some(Rc::new(Shared {
            verifier,
            token_cache: RefCell::new(TokenCache::new(TOKEN_CACHE_SLOTS)),
            limiter,
            event_budget: RefCell::new(EventBudget::new(policy.events.max_per_second)),
            policy,
            remote_jwks,
            ticker,
            held_budget: Rc::new(body_hold::HeldBudget::new(
                body_hold::MAX_HELD_BODY_BYTES_PER_WORKER,
            )),
            body_waits: body_hold::BodyWaits::default(),
        }));
        true
    }

    fn on_tick(&mut self) {
        host::refresh_log_level();
        let (Some(shared), Ok(now)) = (&self.shared, now_ms()) else {
            return;
        };
        if shared.ticker.due(tick::TickUser::Jwks, now) {
            jwks::on_tick(shared, self.context_id);
        }
        body_hold::on_tick(shared, self.context_id, now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = Rc::new_cyclic(|self_ref| {
            RefCell::new(HttpState {
                shared: self.shared.clone(),
                context_id,
                self_ref: self_ref.clone(),
                ..HttpState::default()
            })
        });
        Some(Box::new(ApiGuardHttp { state }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A body being held for a check on the whole of it.
struct HeldBody {
    head: RequestHead,
    forward: Forward,
    check: BodyCheck,
    /// The body so far, taken out of Envoy's buffer (see `body_hold`).
    taken: body_hold::BodyStore,
}

/// The SDK owns the http context; its state lives behind `Rc<RefCell<..>>` so that the root
/// context can finish a request that waited for keys (the host lets the root act for a request
/// with `set_effective_context`).
struct ApiGuardHttp {
    state: Rc<RefCell<HttpState>>,
}

impl Context for ApiGuardHttp {}

impl ApiGuardHttp {
    fn with_state(&self, handle: impl FnOnce(&mut HttpState) -> Action) -> Action {
        match self.state.try_borrow_mut() {
            Ok(mut state) => handle(&mut state),
            // Unreachable (one thread, no re-entry), and never a pass-through if it were not.
            Err(_) => {
                let _ = host::reset_http_request();
                Action::Pause
            }
        }
    }
}

impl HttpContext for ApiGuardHttp {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.with_state(|state| state.on_http_request_headers(num_headers, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with_state(|state| state.on_http_request_body(body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.with_state(HttpState::on_http_request_trailers)
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.with_state(|state| state.on_http_response_headers(num_headers, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with_state(|state| state.on_http_response_body(body_size, end_of_stream))
    }
}

#[derive(Default)]
struct HttpState {
    /// `None` when the configuration was refused: every request then fails closed.
    shared: Option<Rc<Shared>>,
    response: ResponseContext,
    held: Option<HeldBody>,
    body_counter: Option<BodyCounter>,
    sent_local_reply: bool,
    rewrite: Option<ErrorBodyRewrite>,
    context_id: u32,
    /// This state's own handle, registered with the root while the request waits for keys.
    self_ref: Weak<RefCell<HttpState>>,
    /// The request while it waits for a remote key set.
    held_for_keys: Option<jwks::HeldForKeys>,
    /// A body or trailers callback came: Envoy hands this filter the body.
    body_seen: bool,
    /// Registered in the root's table of requests waiting for their first body callback.
    watched_for_body: bool,
    /// `request.total_size` when a request paused on its headers to wait for keys.
    total_size_at_headers: Option<u64>,
}

impl HttpState {
    /// Sends the filter's own reply with every response header it will carry (the reply's own,
    /// then the security, CORS and rate-limit headers and `x-request-id`), so that the response
    /// callback has nothing left to do for it.
    fn send(&mut self, status: u16, headers: &[(String, String)], body: &[u8]) -> Action {
        self.sent_local_reply = true;
        let reply: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        let shared = self.shared.clone();
        let fallback;
        let edits = match &shared {
            Some(shared) => {
                shared
                    .policy
                    .plan_response(&self.response, status, ResponseOrigin::Filter)
            }
            None => {
                fallback = fallback_response_edits(&self.response.request_id);
                fallback.edits()
            }
        };
        let headers = serialize(&edits.merge(&reply));
        if host::send_http_response(status, &headers, body).is_err() {
            // Cannot answer: reset the stream rather than let the request through.
            let _ = host::reset_http_request();
        }
        Action::Pause
    }

    fn send_reply(&mut self, reply: &LocalReply) -> Action {
        self.send(reply.status, &reply.headers, reply.body.as_bytes())
    }

    fn fail_closed(&mut self, why: &str) -> Action {
        log::error!("api-guard: failing closed: {why}");
        let reply = LocalReply::new(ErrorCode::ServiceUnavailable, &self.response.request_id);
        self.send_reply(&reply)
    }

    fn apply_forward(forward: &Forward) -> Result<(), host::HostError> {
        for name in &forward.remove_headers {
            host::remove_header(MapType::HttpRequestHeaders, name)?;
        }
        for (name, value) in &forward.set_headers {
            host::set_header(MapType::HttpRequestHeaders, name, value)?;
        }
        if let Some(path) = &forward.set_path {
            host::set_header(MapType::HttpRequestHeaders, ":path", path)?;
        }
        Ok(())
    }

    /// Carries out a decision; `held` is the request head when the body may still be needed.
    fn carry_out(
        &mut self,
        decision: Decision,
        head: Option<RequestHead>,
        end_of_stream: bool,
    ) -> Action {
        if let (Some(event), Some(shared)) = (&decision.event, &self.shared) {
            log_event(shared, event);
        }
        self.response = decision.response;
        match decision.verdict {
            Verdict::Allow(forward) => {
                if let Some(held) = self.held.take() {
                    if let Err(status) = Self::apply_forward(&held.forward) {
                        return self
                            .fail_closed(&format!("cannot rewrite request headers: {status}"));
                    }
                    if let Err(why) = Self::restore_held_body(&held) {
                        return self.fail_closed(&why);
                    }
                }
                if let Err(status) = Self::apply_forward(&forward) {
                    return self.fail_closed(&format!("cannot rewrite request headers: {status}"));
                }
                self.body_counter = self.response.stream_body_limit.map(BodyCounter::new);
                Action::Continue
            }
            Verdict::Deny(reply) => self.send_reply(&reply),
            Verdict::Preflight(headers) => self.send(204, &headers, b""),
            Verdict::WaitForKeys(ticket) => {
                let Some(head) = head else {
                    return self.fail_closed("waiting for keys without a request head");
                };
                self.hold_for_keys(head, ticket, end_of_stream)
            }
            Verdict::NeedBody { forward, check } => {
                let Some(head) = head else {
                    return self.fail_closed("body check without a request head");
                };
                let Some(shared) = self.shared.clone() else {
                    return self.fail_closed("the plugin configuration was refused");
                };
                self.held = Some(HeldBody {
                    head,
                    forward,
                    taken: body_hold::BodyStore::new(
                        Rc::clone(&shared.held_budget),
                        check.max_bytes,
                    ),
                    check,
                });
                if end_of_stream {
                    self.finish_held_body(0)
                } else {
                    // Headers wait with the body until the whole body has been checked; the
                    // root answers if the body callbacks never come.
                    self.watch_for_body_callbacks();
                    Action::Pause
                }
            }
        }
    }

    /// Checks the held body: `body`, or the copy the held body keeps.
    fn check_held_body_bytes(&mut self, body: Option<&[u8]>) -> Action {
        let Some(shared) = self.shared.clone() else {
            return self.fail_closed("the plugin configuration was refused");
        };
        let Some(held) = &self.held else {
            return Action::Continue;
        };
        let body = body.unwrap_or(held.taken.bytes());
        let decided = decide_with_env(&shared, false, |env| {
            shared
                .policy
                .check_body(&held.head, &held.check, body, &self.response, env)
        });
        match decided {
            Ok(decision) => self.carry_out(decision, None, true),
            Err(why) => self.fail_closed(&why),
        }
    }
}

impl HttpState {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = match host_headers::read(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(error) => {
                return self.fail_closed(&format!("cannot read request headers: {error}"))
            }
        };
        let Some(shared) = self.shared.clone() else {
            if let Some(request_id) = headers
                .get("x-request-id")
                .and_then(|id| std::str::from_utf8(id).ok())
            {
                self.response.request_id = request_id.to_string();
            }
            return self.fail_closed("the plugin configuration was refused");
        };
        let mut head = RequestHead::from_pairs(&headers, Box::new(source_address));
        head.set_tls_source(Box::new(connection_is_tls));
        self.response.request_id.clone_from(&head.request_id);
        let decision =
            match decide_with_env(&shared, true, |env| shared.policy.check_request(&head, env)) {
                Ok(decision) => decision,
                Err(why) => return self.fail_closed(&why),
            };
        self.carry_out(decision, Some(head), end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.body_callback_came();
        if self.held_for_keys.is_some() {
            return self.body_while_held_for_keys(body_size, end_of_stream);
        }
        if self.held.is_some() {
            // The body is checked whole, and nothing goes upstream before that.
            return self.held_body_chunk(body_size, end_of_stream);
        }
        let over_limit = self
            .body_counter
            .as_mut()
            .is_some_and(|counter| counter.add(body_size));
        if over_limit {
            return self.refuse_body_too_large(None);
        }
        Action::Continue
    }

    /// A body over the route's bound: 413 (the held body, if any, is dropped). In report mode
    /// the request goes on as it would have, a held body put back first.
    fn refuse_body_too_large(&mut self, held: Option<HeldBody>) -> Action {
        self.body_counter = None;
        let Some(shared) = self.shared.clone() else {
            return self.fail_closed("no policy");
        };
        self.fill_event_client();
        let (event, outcome) =
            flow::body_over_limit(&shared.policy, &self.response, held.is_some());
        log_event(&shared, &event);
        match (outcome, held) {
            (BodyOverLimit::Reply(reply), _) => self.send_reply(&reply),
            (
                BodyOverLimit::Proceed {
                    restore_held_body: true,
                },
                Some(held),
            ) => {
                if let Err(status) = Self::apply_forward(&held.forward) {
                    return self.fail_closed(&format!("cannot rewrite request headers: {status}"));
                }
                if let Err(why) = Self::restore_held_body(&held) {
                    return self.fail_closed(&why);
                }
                Action::Continue
            }
            (BodyOverLimit::Proceed { .. }, _) => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.sent_local_reply {
            if self.is_own_reply() {
                // The filter's own reply already carries every header it needs (see `send`).
                return Action::Continue;
            }
            // Envoy's reply won over the filter's (see `body_hold`): it is Envoy's local reply,
            // and gets what every other one gets.
            self.sent_local_reply = false;
        }
        // One read and one write of the whole map: every host call crosses the V8 boundary, and
        // a response gets a dozen headers set or removed.
        let Ok(map) = host_headers::read(MapType::HttpResponseHeaders) else {
            // The security headers cannot be added: do not send the response without them.
            let _ = host::reset_http_response();
            return Action::Pause;
        };
        let headers: Vec<(&[u8], &[u8])> = map.iter().collect();
        let Some(shared) = self.shared.clone() else {
            let fallback = fallback_response_edits(&self.response.request_id);
            return Self::write_response_headers(&fallback.edits().merge(&headers));
        };
        let plan = ResponseHeadersPlan::new(
            &shared.policy,
            &self.response,
            &headers,
            end_of_stream,
            || {
                host::get_property(&["response", "code_details"])
                    .ok()
                    .flatten()
            },
        );
        if Self::write_response_headers(&plan.headers(&headers)) == Action::Pause {
            return Action::Pause;
        }
        match plan.body() {
            ResponseBody::Pass => {}
            ResponseBody::LogNow { status, sample } => self.log_upstream_error(status, &sample),
            ResponseBody::Rewrite(rewrite) => self.rewrite = Some(rewrite),
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(rewrite) = &mut self.rewrite else {
            return Action::Continue;
        };
        let read = match rewrite.bytes_to_read(body_size) {
            0 => None,
            keep => host::get_buffer(BufferType::HttpResponseBody, 0, keep)
                .ok()
                .flatten(),
        };
        // The original body never reaches the client (see `ErrorBodyRewrite`).
        let chunk = rewrite.chunk(read.as_deref(), body_size, end_of_stream);
        if host::set_buffer(
            BufferType::HttpResponseBody,
            0,
            body_size,
            chunk.replacement,
        )
        .is_err()
        {
            let _ = host::reset_http_response();
        }
        if chunk.finished {
            if let Some(rewrite) = self.rewrite.take() {
                self.log_upstream_error(rewrite.status(), rewrite.sample());
            }
        }
        Action::Continue
    }
}

impl HttpState {
    fn write_response_headers(headers: &[(&[u8], &[u8])]) -> Action {
        if host_headers::write(MapType::HttpResponseHeaders, headers).is_err() {
            // The security headers could not be written: do not send the response without them.
            let _ = host::reset_http_response();
            return Action::Pause;
        }
        Action::Continue
    }

    /// An event on the response path names the client even when no decision needed its address
    /// (the head asks the host only when one does).
    fn fill_event_client(&mut self) {
        if self.response.event_base.client.is_empty() {
            if let Some(address) = source_address() {
                self.response.event_base.client = client_ip(&address);
            }
        }
    }

    fn log_upstream_error(&mut self, status: u16, sample: &BodySample) {
        self.fill_event_client();
        if let Some(shared) = &self.shared {
            log_event(
                shared,
                &shared
                    .policy
                    .upstream_error_event(&self.response, status, sample),
            );
        }
    }
}

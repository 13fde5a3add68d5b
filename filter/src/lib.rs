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
mod metrics;
mod rls;
mod tick;

use api_guard_core::authn::jwt::cache::TokenCache;
use api_guard_core::authn::jwt::verifier::{
    ForeignFunctions, HostCallFailed, HostVerifier, RustVerifier, SignatureVerifier,
};
use api_guard_core::body::held::HeldBudget;
use api_guard_core::config;
use api_guard_core::limits::rate_limit::{shared_seed, Limiter};
use api_guard_core::limits::rate_limit_service::ServiceReply;
use api_guard_core::pipeline::http_flow::{
    Command, FlowQueries, HttpFlow, Next, ResponseChunk, ResponseHeaders, Step,
};
use api_guard_core::pipeline::policy::{Decision, Forward, Policy, RequestEnv};
use api_guard_core::request::head::RequestHead;
use api_guard_core::request::header_pairs::serialize;
use api_guard_core::support::events::{self, EventBudget, SecurityEvent};
use api_guard_core::support::logging;
use api_guard_core::support::metrics::{MetricsPlan, CONFIG_REFUSED_ID, EVENTS_DROPPED_ID};
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
        Box::new(ApiGuardRoot { context_id, shared: None, metrics: Rc::default() })
    });
}}

/// Writes a security event, within the worker's per-second budget of event lines.
fn log_event(shared: &Shared, event: &SecurityEvent) {
    let written = match (shared.event_budget.try_borrow_mut(), now_ms()) {
        (Ok(mut budget), Ok(now)) => events::log_event(Some(&mut budget), now, event),
        _ => events::log_event(None, 0, event),
    };
    if !written {
        shared.metrics.increment(EVENTS_DROPPED_ID);
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
    decide: &mut dyn FnMut(&mut RequestEnv<'_>) -> Decision,
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
    held_budget: Rc<HeldBudget>,
    /// Requests paused on their headers until their first body callback.
    body_waits: body_hold::BodyWaits,
    /// The policy's metrics, defined on the host.
    metrics: Rc<metrics::Metrics>,
}

struct ApiGuardRoot {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    /// This VM's metrics (only the fixed ones while the configuration is refused).
    metrics: Rc<metrics::Metrics>,
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

impl ApiGuardRoot {
    /// Until a configuration is accepted: the fixed metrics, `api_guard_config_refused` 1.
    fn refuse_configuration_metrics(&mut self) {
        self.metrics = Rc::new(metrics::Metrics::define(&MetricsPlan::fixed()));
        self.metrics.set(CONFIG_REFUSED_ID, 1);
    }
}

impl RootContext for ApiGuardRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        host::refresh_log_level();
        self.shared = None;
        self.refuse_configuration_metrics();
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
        // Defined once per VM here, never per request.
        self.metrics = Rc::new(metrics::Metrics::define(&policy.metrics));
        self.metrics.set(CONFIG_REFUSED_ID, 0);
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
            held_budget: Rc::new(HeldBudget::default()),
            body_waits: body_hold::BodyWaits::default(),
            metrics: Rc::clone(&self.metrics),
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
        let held_budget = self.shared.as_ref().map_or_else(
            || Rc::new(HeldBudget::default()),
            |s| Rc::clone(&s.held_budget),
        );
        let state = Rc::new_cyclic(|self_ref| {
            RefCell::new(HttpState {
                shared: self.shared.clone(),
                metrics: Rc::clone(&self.metrics),
                flow: HttpFlow::new(held_budget),
                context_id,
                self_ref: self_ref.clone(),
                total_size_at_headers: None,
                service_call: None,
            })
        });
        Some(Box::new(ApiGuardHttp { state }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The SDK owns the http context; its state lives behind `Rc<RefCell<..>>` so that the root
/// context can finish a request that waited for keys (the host lets the root act for a request
/// with `set_effective_context`).
struct ApiGuardHttp {
    state: Rc<RefCell<HttpState>>,
}

impl Context for ApiGuardHttp {
    /// The rate limit service's answer (the SDK routes it to the context that called).
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Ok(mut state) = self.state.try_borrow_mut() {
            rls::on_answer(&mut state, token_id, status_code, response_size);
        }
    }
}

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
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.with_state(|state| state.on_request_headers(end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with_state(|state| state.on_request_body(body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.with_state(HttpState::on_request_trailers)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.with_state(|state| state.on_response_headers(end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with_state(|state| state.on_response_body(body_size, end_of_stream))
    }
}

/// What the core's flow may read from the host while it decides.
struct EnvoyQueries<'a> {
    /// `None` when the configuration was refused.
    shared: Option<&'a Shared>,
}

impl FlowQueries for EnvoyQueries<'_> {
    fn decide(
        &mut self,
        may_wait_for_keys: bool,
        decide: &mut dyn FnMut(&mut RequestEnv<'_>) -> Decision,
    ) -> Result<Decision, String> {
        let shared = self
            .shared
            .ok_or_else(|| "the plugin configuration was refused".to_string())?;
        decide_with_env(shared, may_wait_for_keys, decide)
    }

    fn request_body(&mut self, len: usize) -> Result<Vec<u8>, String> {
        host::get_buffer(BufferType::HttpRequestBody, 0, len)
            .map(Option::unwrap_or_default)
            .map_err(|status| status.to_string())
    }

    fn source_address(&mut self) -> Option<String> {
        source_address()
    }

    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        host::get_header(MapType::HttpResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn response_code_details(&mut self) -> Option<Vec<u8>> {
        host::get_property(&["response", "code_details"])
            .ok()
            .flatten()
    }

    fn connection_is_tls(&mut self) -> Option<bool> {
        connection_is_tls()
    }
}

/// One stream: the core's flow, which decides, and the host bookkeeping the root needs to find
/// the request again.
struct HttpState {
    /// `None` when the configuration was refused: every request then fails closed.
    shared: Option<Rc<Shared>>,
    /// The VM's metrics (also when the configuration was refused).
    metrics: Rc<metrics::Metrics>,
    flow: HttpFlow,
    context_id: u32,
    /// This state's own handle, registered with the root while the request waits for keys or
    /// for its first body callback.
    self_ref: Weak<RefCell<HttpState>>,
    /// `request.total_size` when the request paused on its headers to wait for keys, for the
    /// body-wait table if its route turns out to read the body.
    total_size_at_headers: Option<u64>,
    /// The token of the call to the rate limit service the request waits for.
    service_call: Option<u32>,
}

/// What a command the host refused leaves to do: fail closed.
type Refused = String;

impl HttpState {
    /// Carries out the flow's commands in order, and ends the callback as the flow says. A
    /// command the host refuses fails the request closed instead of the rest.
    fn execute(&mut self, step: Step) -> Action {
        for command in step.commands {
            match self.run(command) {
                Ok(None) => {}
                Ok(Some(action)) => return action,
                Err(why) => {
                    let shared = self.shared.clone();
                    let failed = self
                        .flow
                        .fail_closed(shared.as_deref().map(|s| &s.policy), &why);
                    // Its commands (a log line, a reply) cannot be refused in turn: a reply the
                    // host will not send resets the stream.
                    return self.execute(failed);
                }
            }
        }
        match step.next {
            Next::Continue => Action::Continue,
            Next::Pause => Action::Pause,
        }
    }

    /// One command. `Ok(Some(action))`: the callback ends with `action` now.
    fn run(&mut self, command: Command) -> Result<Option<Action>, Refused> {
        match command {
            Command::Count(tally) => self.metrics.count(&tally),
            Command::LogEvent(event) => match &self.shared {
                Some(shared) => log_event(shared, &event),
                None => {
                    events::log_event(None, 0, &event);
                }
            },
            Command::LogFailure(why) => log::error!("api-guard: failing closed: {why}"),
            Command::EditRequest(forward) => apply_forward(&forward)
                .map_err(|status| format!("cannot rewrite request headers: {status}"))?,
            Command::PrependRequestBody(bytes) => {
                // `set_buffer` at 0 with length 0 prepends.
                if !bytes.is_empty() {
                    host::set_buffer(BufferType::HttpRequestBody, 0, 0, &bytes)
                        .map_err(|status| format!("cannot restore the request body: {status}"))?;
                }
            }
            Command::DrainRequestBody(len) => {
                host::set_buffer(BufferType::HttpRequestBody, 0, len, b"")
                    .map_err(|status| format!("cannot drain the request body: {status}"))?;
            }
            Command::SendReply {
                status,
                headers,
                body,
            } => {
                let pairs: Vec<(&[u8], &[u8])> = headers
                    .iter()
                    .map(|(n, v)| (n.as_slice(), v.as_slice()))
                    .collect();
                if host::send_http_response(status, &serialize(&pairs), &body).is_err() {
                    // Cannot answer: reset the stream rather than let the request through.
                    let _ = host::reset_http_request();
                }
            }
            Command::WaitForKeys(ticket) => {
                self.total_size_at_headers = body_hold::request_total_size();
                if !jwks::register(self, ticket) {
                    // Too many requests waiting on this worker: decide this one now.
                    return Ok(Some(self.keys_settled()));
                }
            }
            Command::CallService(call) => {
                if let Err(why) = rls::call(self, &call) {
                    log::warn!("api-guard: rate limit service call not sent: {why}");
                    return Ok(Some(self.service_answered(&ServiceReply::NotSent(why))));
                }
            }
            Command::WatchForBody => self.watch_for_body_callbacks(),
            Command::StopWatchingForBody => {
                if let Some(shared) = &self.shared {
                    shared.body_waits.remove(self.context_id);
                }
            }
            Command::ReportMissingBodyCallbacks => {
                if let Some(shared) = &self.shared {
                    body_hold::report_missing_body_callbacks(shared);
                }
            }
        }
        Ok(None)
    }

    fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let headers = match host_headers::read(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(error) => {
                let why = format!("cannot read request headers: {error}");
                let shared = self.shared.clone();
                let step = self
                    .flow
                    .fail_closed(shared.as_deref().map(|s| &s.policy), &why);
                return self.execute(step);
            }
        };
        let Some(shared) = self.shared.clone() else {
            let request_id = headers
                .get("x-request-id")
                .and_then(|id| std::str::from_utf8(id).ok());
            let step = self.flow.on_request_headers_without_policy(request_id);
            return self.execute(step);
        };
        let mut head = RequestHead::from_pairs(&headers, Box::new(source_address));
        head.set_tls_source(Box::new(connection_is_tls));
        let mut queries = EnvoyQueries {
            shared: Some(&shared),
        };
        let step = self
            .flow
            .on_request_headers(&shared.policy, head, end_of_stream, &mut queries);
        self.execute(step)
    }

    fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let mut queries = EnvoyQueries {
            shared: Some(&shared),
        };
        let step =
            self.flow
                .on_request_body(&shared.policy, body_size, end_of_stream, &mut queries);
        self.execute(step)
    }

    fn on_request_trailers(&mut self) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let mut queries = EnvoyQueries {
            shared: Some(&shared),
        };
        let step = self.flow.on_request_trailers(&shared.policy, &mut queries);
        self.execute(step)
    }

    /// Decides a request that waited for keys again. Returns what the request's own callback
    /// would have returned: `Continue` means the caller resumes it.
    fn keys_settled(&mut self) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Pause;
        };
        let mut queries = EnvoyQueries {
            shared: Some(&shared),
        };
        let step = self.flow.on_keys_settled(&shared.policy, &mut queries);
        self.execute(step)
    }

    /// Decides a request that waited for its rate limit service again, with the answer.
    /// `Continue` means the caller resumes it.
    fn service_answered(&mut self, reply: &ServiceReply) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Pause;
        };
        let mut queries = EnvoyQueries {
            shared: Some(&shared),
        };
        let step = self
            .flow
            .on_service_answer(&shared.policy, reply, &mut queries);
        self.execute(step)
    }

    /// Called by the root for a request whose body reached Envoy and never the filter.
    fn body_callbacks_never_came(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let step = self.flow.on_body_callbacks_never_came(&shared.policy);
        self.execute(step);
    }

    fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        let shared = self.shared.clone();
        let mut queries = EnvoyQueries {
            shared: shared.as_deref(),
        };
        if self.flow.response_is_own_reply(&mut queries) {
            return Action::Continue;
        }
        // One read and one write of the whole map: every host call crosses the V8 boundary, and
        // a response gets a dozen headers set or removed.
        let Ok(map) = host_headers::read(MapType::HttpResponseHeaders) else {
            // The security headers cannot be added: do not send the response without them.
            let _ = host::reset_http_response();
            return Action::Pause;
        };
        let headers: Vec<(&[u8], &[u8])> = map.iter().collect();
        let written = self.flow.on_response_headers(
            shared.as_deref().map(|s| &s.policy),
            &headers,
            end_of_stream,
            &mut queries,
            &mut |merged| host_headers::write(MapType::HttpResponseHeaders, merged).map_err(|_| ()),
        );
        match written {
            ResponseHeaders::Written { event } => {
                if let (Some(event), Some(shared)) = (event, &shared) {
                    log_event(shared, &event);
                }
                Action::Continue
            }
            ResponseHeaders::WriteFailed => {
                // The security headers could not be written: do not send the response without
                // them.
                let _ = host::reset_http_response();
                Action::Pause
            }
        }
    }

    fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let read = match self.flow.response_bytes_wanted(body_size) {
            0 => None,
            wanted => host::get_buffer(BufferType::HttpResponseBody, 0, wanted)
                .ok()
                .flatten(),
        };
        let mut queries = EnvoyQueries {
            shared: Some(&shared),
        };
        let chunk = self.flow.on_response_body(
            &shared.policy,
            read.as_deref(),
            body_size,
            end_of_stream,
            &mut queries,
        );
        if let ResponseChunk::Replace { replacement, event } = chunk {
            if host::set_buffer(BufferType::HttpResponseBody, 0, body_size, &replacement).is_err() {
                let _ = host::reset_http_response();
            }
            if let Some(event) = event {
                log_event(&shared, &event);
            }
        }
        Action::Continue
    }
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

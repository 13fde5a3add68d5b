//! The adapter: one stream's host events into the core's [`HttpFlow`], and the flow's commands
//! into calls on the stream. It decides nothing; where the wasm adapter has a host quirk to
//! work around (body callbacks that never come), Envoy's native filter API has none, and the
//! command is a no-op here.

use crate::abi::{status, Attribute, Body, CalloutAnswer, HeaderMap, Stream};
use crate::jwks::{Waiter, WaiterCell};
use crate::shared::{self, ModuleConfig, WorkerState};
use api_guard_core::authn::jwt::remote::{RemoteKeys, WaitTicket};
use api_guard_core::limits::rate_limit_service::{grpc_over_http, ServiceReply};
use api_guard_core::pipeline::http_flow::{
    Command, FlowQueries, HttpFlow, Next, ResponseChunk, ResponseHeaders, Step,
};
use api_guard_core::pipeline::policy::{Decision, Forward, HeaderChange, Policy, RequestEnv};
use api_guard_core::request::head::RequestHead;
use api_guard_core::support::events::{self, SecurityEvent};
use api_guard_core::support::metrics::{Tally, EVENTS_DROPPED_ID};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> Option<u64> {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

/// Which hook is running: the request body "the host holds now" is Envoy's buffered body and,
/// inside a body hook, the chunk of that call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Headers,
    Body,
    Trailers,
    /// The stream's scheduler fired (its keys settled): Envoy's buffer only.
    Scheduled,
}

/// One stream.
pub struct StreamFilter {
    config: Arc<ModuleConfig>,
    worker: Rc<WorkerState>,
    flow: HttpFlow,
    /// While the request waits for keys: how the main thread wakes it.
    waiter: Option<Waiter>,
    /// While the request waits for its rate limit service: the callout's id.
    service_call: Option<u64>,
}

impl Drop for StreamFilter {
    fn drop(&mut self) {
        // The stream is being destroyed: its scheduler goes, and no wake-up reaches it.
        if let Some(waiter) = self.waiter.take() {
            waiter.close();
        }
    }
}

/// What a command the host refused leaves to do: fail closed.
type Refused = String;

struct Queries<'a> {
    config: &'a ModuleConfig,
    worker: &'a WorkerState,
    stream: &'a Stream,
    phase: Phase,
}

fn body_view(stream: &Stream, phase: Phase) -> (usize, usize) {
    let buffered = stream.body_size(Body::BufferedRequest);
    let received = if phase == Phase::Body {
        stream.body_size(Body::ReceivedRequest)
    } else {
        0
    };
    (buffered, received)
}

/// Up to `len` bytes of the request body Envoy holds: its buffer, then this call's chunk.
fn read_request_body(stream: &Stream, phase: Phase, len: usize) -> Result<Vec<u8>, String> {
    let mut out = stream
        .read_body(Body::BufferedRequest, len)
        .ok_or("the buffered request body cannot be read")?;
    if phase == Phase::Body && out.len() < len {
        let rest = stream
            .read_body(Body::ReceivedRequest, len - out.len())
            .ok_or("the request body chunk cannot be read")?;
        out.extend_from_slice(&rest);
    }
    Ok(out)
}

fn drain_request_body(stream: &Stream, phase: Phase, len: usize) -> bool {
    let (buffered, received) = body_view(stream, phase);
    let from_buffer = len.min(buffered);
    let from_chunk = (len - from_buffer).min(received);
    (from_buffer == 0 || stream.drain_body(Body::BufferedRequest, from_buffer))
        && (from_chunk == 0 || stream.drain_body(Body::ReceivedRequest, from_chunk))
}

/// Puts `bytes` in front of what Envoy holds (the ABI only appends: what is there is taken
/// out and put back after them).
fn prepend_request_body(stream: &Stream, phase: Phase, bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    let Ok(tail) = read_request_body(stream, phase, usize::MAX) else {
        return false;
    };
    let target = if phase == Phase::Body {
        Body::ReceivedRequest
    } else {
        Body::BufferedRequest
    };
    drain_request_body(stream, phase, tail.len())
        && stream.append_body(target, bytes)
        && stream.append_body(target, &tail)
}

impl FlowQueries for Queries<'_> {
    fn decide(
        &mut self,
        may_wait_for_keys: bool,
        decide: &mut dyn FnMut(&mut RequestEnv<'_>) -> Decision,
    ) -> Result<Decision, String> {
        let now_ms = now_ms().ok_or("cannot read the clock")?;
        let mut token_cache = self
            .worker
            .token_cache
            .try_borrow_mut()
            .map_err(|_| "token cache busy".to_string())?;
        // Without remote providers there is no snapshot to take: an empty set allocates nothing.
        let snapshot = self.config.jwks.as_ref().map(|jwks| jwks.keys());
        let no_keys = RemoteKeys::default();
        let remote_keys = snapshot.as_deref().unwrap_or(&no_keys);
        let mut env = RequestEnv {
            now_ms,
            verifier: &self.config.verifier,
            token_cache: &mut token_cache,
            shared: shared::store(),
            limiter: self.config.limiter.as_ref(),
            remote_keys,
            may_wait_for_keys,
        };
        Ok(decide(&mut env))
    }

    fn request_body(&mut self, len: usize) -> Result<Vec<u8>, String> {
        read_request_body(self.stream, self.phase, len)
    }

    fn source_address(&mut self) -> Option<String> {
        String::from_utf8(self.stream.attribute_string(Attribute::SourceAddress)?).ok()
    }

    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.stream.header(HeaderMap::Response, name)
    }

    fn response_code_details(&mut self) -> Option<Vec<u8>> {
        self.stream.attribute_string(Attribute::ResponseCodeDetails)
    }

    fn connection_is_tls(&mut self) -> Option<bool> {
        Some(connection_is_tls(self.stream))
    }
}

/// `connection.tls_version` is the TLS version of a TLS connection and absent on a plain-text
/// one (absent and unreadable look the same: plain text, which fails closed).
fn connection_is_tls(stream: &Stream) -> bool {
    stream
        .attribute_string(Attribute::ConnectionTlsVersion)
        .is_some_and(|version| !version.is_empty())
}

impl StreamFilter {
    pub fn new(config: Arc<ModuleConfig>) -> StreamFilter {
        let worker = shared::worker_state(&config);
        let flow = HttpFlow::new(Rc::clone(&worker.held_budget));
        StreamFilter {
            config,
            worker,
            flow,
            waiter: None,
            service_call: None,
        }
    }

    fn log_event(&self, event: &SecurityEvent, stream: &Stream) {
        let written = match (self.worker.event_budget.try_borrow_mut(), now_ms()) {
            (Ok(mut budget), Some(now)) => events::log_event(Some(&mut budget), now, event),
            _ => events::log_event(None, 0, event),
        };
        if !written {
            self.count(stream, EVENTS_DROPPED_ID);
        }
    }

    fn count(&self, stream: &Stream, id: api_guard_core::support::metrics::MetricId) {
        if let Some(host_id) = self.config.metrics.host_id(id) {
            let _ = stream.increment_counter(host_id);
        }
    }

    fn count_tally(&self, stream: &Stream, tally: &Tally) {
        for id in tally.ids() {
            self.count(stream, id);
        }
    }

    /// Carries out the flow's commands in order; a command the host refuses fails the request
    /// closed instead of the rest. Returns whether the hook continues.
    fn execute(&mut self, stream: &Stream, phase: Phase, step: Step) -> Next {
        for command in step.commands {
            match self.run(stream, phase, command) {
                Ok(None) => {}
                Ok(Some(next)) => return next,
                Err(why) => {
                    let config = Arc::clone(&self.config);
                    let failed = self.flow.fail_closed(config.policy.as_ref(), &why);
                    return self.execute(stream, phase, failed);
                }
            }
        }
        step.next
    }

    fn run(
        &mut self,
        stream: &Stream,
        phase: Phase,
        command: Command,
    ) -> Result<Option<Next>, Refused> {
        match command {
            Command::Count(tally) => self.count_tally(stream, &tally),
            Command::LogEvent(event) => self.log_event(&event, stream),
            Command::LogFailure(why) => log::error!("api-guard: failing closed: {why}"),
            Command::EditRequest(forward) => {
                if !apply_forward(stream, &forward) {
                    return Err("cannot rewrite request headers".into());
                }
            }
            Command::PrependRequestBody(bytes) => {
                if !prepend_request_body(stream, phase, &bytes) {
                    return Err("cannot restore the request body".into());
                }
            }
            Command::DrainRequestBody(len) => {
                if !drain_request_body(stream, phase, len) {
                    return Err("cannot drain the request body".into());
                }
            }
            Command::SendReply {
                status,
                headers,
                body,
            } => {
                stream.send_response(u32::from(status), &headers, &body);
                return Ok(Some(Next::Pause));
            }
            Command::WaitForKeys(ticket) => {
                if !self.wait_for_keys(stream, ticket) {
                    // Too many requests waiting: decide this one now.
                    return Ok(Some(self.keys_settled(stream, phase)));
                }
            }
            Command::CallService(call) => {
                let (headers, body) = grpc_over_http::request(&call);
                match stream.http_callout(&call.cluster, &headers, &body, call.timeout_ms) {
                    Ok(id) => self.service_call = Some(id),
                    Err(result) => {
                        let why = format!("http callout refused (result {result})");
                        log::warn!("api-guard: rate limit service call not sent: {why}");
                        let reply = ServiceReply::NotSent(why);
                        return Ok(Some(self.service_answered(stream, phase, &reply)));
                    }
                }
            }
            // Envoy's native filter API always hands a held request its body.
            Command::WatchForBody
            | Command::StopWatchingForBody
            | Command::ReportMissingBodyCallbacks => {}
        }
        Ok(None)
    }

    /// Registers the request with the process's key set driver; `false` if it cannot wait.
    fn wait_for_keys(&mut self, stream: &Stream, ticket: WaitTicket) -> bool {
        let (Some(jwks), Some(scheduler)) = (&self.config.jwks, stream.new_scheduler()) else {
            return false;
        };
        let waiter = WaiterCell::new(scheduler);
        if jwks.register(Arc::clone(&waiter), ticket) {
            if let Some(previous) = self.waiter.replace(waiter) {
                previous.close();
            }
            true
        } else {
            waiter.close();
            false
        }
    }

    /// One event of the flow that needs the policy, with the host's queries, and its step
    /// carried out. `None`: the configuration was refused (the event has nothing to decide).
    fn with_policy(
        &mut self,
        stream: &Stream,
        phase: Phase,
        event: impl FnOnce(&mut HttpFlow, &Policy, &mut Queries<'_>) -> Step,
    ) -> Option<Next> {
        let config = Arc::clone(&self.config);
        let policy = config.policy.as_ref()?;
        let worker = Rc::clone(&self.worker);
        let mut queries = Queries {
            config: &config,
            worker: &worker,
            stream,
            phase,
        };
        let step = event(&mut self.flow, policy, &mut queries);
        Some(self.execute(stream, phase, step))
    }

    /// Decides again a request that waited for keys. `Continue`: the caller resumes it.
    fn keys_settled(&mut self, stream: &Stream, phase: Phase) -> Next {
        self.with_policy(stream, phase, |flow, policy, queries| {
            flow.on_keys_settled(policy, queries)
        })
        .unwrap_or(Next::Pause)
    }

    /// Decides again a request that waited for its rate limit service, with the answer.
    fn service_answered(&mut self, stream: &Stream, phase: Phase, reply: &ServiceReply) -> Next {
        self.with_policy(stream, phase, |flow, policy, queries| {
            flow.on_service_answer(policy, reply, queries)
        })
        .unwrap_or(Next::Pause)
    }

    /// The rate limit service answered the request's call.
    pub fn on_callout_done(&mut self, stream: &Stream, callout_id: u64, answer: &CalloutAnswer) {
        if self.service_call != Some(callout_id) {
            return;
        }
        self.service_call = None;
        let reply = grpc_over_http::reply((answer.result == 0).then(|| {
            let status = answer
                .headers
                .get(":status")
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
                .unwrap_or(0);
            grpc_over_http::HttpAnswer {
                status,
                grpc_status: answer.headers.get("grpc-status"),
                body: answer.body.as_slice(),
            }
        }));
        if self.service_answered(stream, Phase::Scheduled, &reply) == Next::Continue {
            stream.continue_decoding();
        }
    }

    /// The main thread woke this stream: its keys settled (or its wait is over).
    pub fn on_scheduled(&mut self, stream: &Stream) {
        if let Some(waiter) = self.waiter.take() {
            waiter.close();
        }
        if self.keys_settled(stream, Phase::Scheduled) == Next::Continue {
            stream.continue_decoding();
        }
    }

    pub fn on_request_headers(&mut self, stream: &Stream, end_of_stream: bool) -> u32 {
        let config = Arc::clone(&self.config);
        let worker = Rc::clone(&self.worker);
        let step = match config.policy.as_ref() {
            None => {
                let request_id = stream.header(HeaderMap::Request, "x-request-id");
                let request_id = request_id
                    .as_deref()
                    .and_then(|id| std::str::from_utf8(id).ok());
                self.flow.on_request_headers_without_policy(request_id)
            }
            Some(policy) => {
                // Read now, not when a decision asks: each is one in-process call.
                let address = String::from_utf8(
                    stream
                        .attribute_string(Attribute::SourceAddress)
                        .unwrap_or_default(),
                )
                .ok();
                let tls = connection_is_tls(stream);
                // The head is built from Envoy's own bytes (one copy, into the head).
                let head = stream.with_header_views(HeaderMap::Request, |views| {
                    RequestHead::from_views(views.iter(), Box::new(move || address.clone()))
                });
                match head {
                    None => self
                        .flow
                        .fail_closed(Some(policy), "cannot read request headers"),
                    Some(mut head) => {
                        head.set_tls_source(Box::new(move || Some(tls)));
                        let mut queries = Queries {
                            config: &config,
                            worker: &worker,
                            stream,
                            phase: Phase::Headers,
                        };
                        self.flow
                            .on_request_headers(policy, head, end_of_stream, &mut queries)
                    }
                }
            }
        };
        match self.execute(stream, Phase::Headers, step) {
            Next::Continue => status::HEADERS_CONTINUE,
            Next::Pause => status::HEADERS_STOP_ITERATION,
        }
    }

    pub fn on_request_body(&mut self, stream: &Stream, end_of_stream: bool) -> u32 {
        let (buffered, received) = body_view(stream, Phase::Body);
        let next = self.with_policy(stream, Phase::Body, |flow, policy, queries| {
            flow.on_request_body(policy, buffered + received, end_of_stream, queries)
        });
        match next {
            None | Some(Next::Continue) => status::BODY_CONTINUE,
            Some(Next::Pause) => status::BODY_STOP_AND_BUFFER,
        }
    }

    pub fn on_request_trailers(&mut self, stream: &Stream) -> u32 {
        let next = self.with_policy(stream, Phase::Trailers, |flow, policy, queries| {
            flow.on_request_trailers(policy, queries)
        });
        match next {
            None | Some(Next::Continue) => status::TRAILERS_CONTINUE,
            Some(Next::Pause) => status::TRAILERS_STOP,
        }
    }

    /// `false`: the security headers could not be written, and the response must not go out.
    pub fn on_response_headers(&mut self, stream: &Stream, end_of_stream: bool) -> bool {
        let config = Arc::clone(&self.config);
        let worker = Rc::clone(&self.worker);
        let mut queries = Queries {
            config: &config,
            worker: &worker,
            stream,
            phase: Phase::Headers,
        };
        if self.flow.response_is_own_reply(&mut queries) {
            return true;
        }
        let pairs = stream.headers(HeaderMap::Response);
        let Some(pairs) = pairs else {
            return false;
        };
        let current: Vec<(&[u8], &[u8])> = pairs.iter().collect();
        let written = self.flow.on_response_header_changes(
            config.policy.as_ref(),
            &current,
            end_of_stream,
            &mut queries,
            &mut |changes| apply_response_changes(stream, changes),
        );
        match written {
            ResponseHeaders::Written { event } => {
                if let Some(event) = event {
                    self.log_event(&event, stream);
                }
                true
            }
            ResponseHeaders::WriteFailed => false,
        }
    }

    pub fn on_response_body(&mut self, stream: &Stream, end_of_stream: bool) {
        let config = Arc::clone(&self.config);
        let Some(policy) = config.policy.as_ref() else {
            return;
        };
        let chunk_size = stream.body_size(Body::ReceivedResponse);
        let read = match self.flow.response_bytes_wanted(chunk_size) {
            0 => None,
            wanted => stream.read_body(Body::ReceivedResponse, wanted),
        };
        let worker = Rc::clone(&self.worker);
        let mut queries = Queries {
            config: &config,
            worker: &worker,
            stream,
            phase: Phase::Body,
        };
        let chunk = self.flow.on_response_body(
            policy,
            read.as_deref(),
            chunk_size,
            end_of_stream,
            &mut queries,
        );
        if let ResponseChunk::Replace { replacement, event } = chunk {
            let replaced = stream.drain_body(Body::ReceivedResponse, chunk_size)
                && (replacement.is_empty()
                    || stream.append_body(Body::ReceivedResponse, &replacement));
            if !replaced {
                log::error!("api-guard: cannot replace an upstream error body");
            }
            if let Some(event) = event {
                self.log_event(&event, stream);
            }
        }
    }
}

fn apply_forward(stream: &Stream, forward: &Forward) -> bool {
    forward
        .remove_headers
        .iter()
        .all(|name| stream.remove_header(HeaderMap::Request, name.as_bytes()))
        && forward.set_headers.iter().all(|(name, value)| {
            stream.set_header(HeaderMap::Request, name.as_bytes(), value.as_bytes())
        })
        && forward
            .set_path
            .as_ref()
            .is_none_or(|path| stream.set_header(HeaderMap::Request, b":path", path.as_bytes()))
}

/// The core's changes to the response headers, one host call each.
fn apply_response_changes(stream: &Stream, changes: &[HeaderChange<'_>]) -> Result<(), ()> {
    for change in changes {
        let done = match *change {
            HeaderChange::Remove(name) => stream.remove_header(HeaderMap::Response, name),
            HeaderChange::Set(name, value) => stream.set_header(HeaderMap::Response, name, value),
            HeaderChange::Add(name, value) => stream.add_header(HeaderMap::Response, name, value),
        };
        if !done {
            return Err(());
        }
    }
    Ok(())
}

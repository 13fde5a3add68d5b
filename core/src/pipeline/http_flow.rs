//! One HTTP stream as the filter lives it, without the host: the host's events go in (request
//! headers, body chunks, trailers, keys settled, a body that never came, response headers and
//! body), and what the adapter must do comes out as [`Command`]s, in order, with whether the
//! host's callback continues or pauses. Where a decision needs something only the host has (the
//! request environment, the bytes of a body chunk, the downstream address, a response header),
//! it asks through [`FlowQueries`]: reads, never effects.
//!
//! The stream's state is one [`RequestPhase`] (undecided, waiting for keys, holding the body for
//! a check, streaming the body upstream, answered by the filter) and one [`ResponsePhase`]; the
//! adapter keeps only host bookkeeping (its context id, the tables the root context looks
//! requests up in).

use crate::authn::jwt::remote::WaitTicket;
use crate::body::held::{BodyStore, HeldBudget};
use crate::limits::body_limit::BodyCounter;
use crate::limits::rate_limit_service::{ServiceAnswer, ServiceCall, ServiceReply};
use crate::pipeline::flow::{
    self, BodyOverLimit, ErrorBodyRewrite, ResponseBody, ResponseHeadersPlan,
};
use crate::pipeline::policy::{
    fallback_response_edits, BodyCheck, Decision, Forward, HeaderChange, Policy, RequestEnv,
    ResponseContext, ResponseEdits, Verdict,
};
use crate::request::head::{client_ip, RequestHead};
use crate::response::error_rewrite::ResponseOrigin;
use crate::response::reply::{ErrorCode, LocalReply};
use crate::support::events::SecurityEvent;
use crate::support::metrics::{Tally, FAIL_CLOSED_ID};
use std::rc::Rc;

/// What the flow may ask the host while it decides. Every method reads; none changes the
/// stream (effects are [`Command`]s).
pub trait FlowQueries {
    /// Runs `decide` with the host's request environment (clock, verifier, caches, shared data,
    /// limiter, key sets). `Err`: the environment cannot be had, and the request fails closed.
    fn decide(
        &mut self,
        may_wait_for_keys: bool,
        decide: &mut dyn FnMut(&mut RequestEnv<'_>) -> Decision,
    ) -> Result<Decision, String>;
    /// Up to `len` bytes of the request body the host holds now (the host clamps `len`).
    fn request_body(&mut self, len: usize) -> Result<Vec<u8>, String>;
    /// The downstream address (`ip:port`) the host computed.
    fn source_address(&mut self) -> Option<String>;
    /// A header of the response being encoded.
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>>;
    /// Why the host answered as it did (Envoy's `response.code_details`).
    fn response_code_details(&mut self) -> Option<Vec<u8>>;
    /// Whether the downstream connection is TLS (Envoy's `connection.tls_version`); `None`
    /// when the host cannot say. Asked on the response path only for a response whose request
    /// the filter never saw (Envoy's own replies to requests it refused before the filter).
    fn connection_is_tls(&mut self) -> Option<bool>;
}

/// What the adapter does, in order. A command the host refuses makes the adapter call
/// [`HttpFlow::fail_closed`] and carry that out instead of the rest.
#[derive(Debug)]
pub enum Command {
    /// Increment these counters (ids of [`Policy::metrics`]; the adapter defined them at
    /// configure time).
    Count(Tally),
    /// Write this security event (within the worker's budget of event lines).
    LogEvent(Box<SecurityEvent>),
    /// Log why the request fails closed.
    LogFailure(String),
    /// Change the request's headers before it goes upstream.
    EditRequest(Forward),
    /// Put these bytes back in front of what the host holds of the request body.
    PrependRequestBody(Vec<u8>),
    /// Remove the first `len` bytes of the host's request body buffer (the flow has a copy).
    DrainRequestBody(usize),
    /// Answer with the filter's own reply: every header it carries (security, CORS and
    /// rate-limit headers, `x-request-id` included). The request goes no further.
    SendReply {
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
    },
    /// Register the request to be decided again ([`HttpFlow::on_keys_settled`]) when its keys
    /// settle. Always the last command of its step; if the adapter cannot register it, it calls
    /// `on_keys_settled` at once.
    WaitForKeys(WaitTicket),
    /// Call the route's rate limit service (gRPC `ShouldRateLimit` with these bytes, within the
    /// timeout) and hand its answer to [`HttpFlow::on_service_answer`]. Always the last command
    /// of its step; if the call cannot be made, the adapter hands in a failed answer at once.
    CallService(ServiceCall),
    /// The request paused on its headers for its body: watch that a body callback comes (the
    /// host may never make one: [`HttpFlow::on_body_callbacks_never_came`]).
    WatchForBody,
    /// A body callback came: stop watching.
    StopWatchingForBody,
    /// The host kept a body from the filter: say once how to configure it.
    ReportMissingBodyCallbacks,
}

/// How the host's callback ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    Pause,
}

/// The answer to one host event.
#[derive(Debug)]
pub struct Step {
    pub commands: Vec<Command>,
    pub next: Next,
}

impl Step {
    fn new(next: Next) -> Step {
        Step {
            commands: Vec::new(),
            next,
        }
    }

    fn continues() -> Step {
        Step::new(Next::Continue)
    }

    fn pauses() -> Step {
        Step::new(Next::Pause)
    }

    fn with(mut self, command: Command) -> Step {
        self.commands.push(command);
        self
    }

    /// `self`'s commands, then `after`'s; `after` says how the callback ends.
    fn then(mut self, after: Step) -> Step {
        self.commands.extend(after.commands);
        self.next = after.next;
        self
    }
}

/// Where the request is.
#[derive(Default)]
pub enum RequestPhase {
    /// No decision yet.
    #[default]
    Undecided,
    /// Paused on its headers until its provider's keys settle.
    WaitingForKeys(Box<WaitingForKeys>),
    /// Paused on its headers until its rate limit service answers (the body waits the same way
    /// as for keys).
    WaitingForService(Box<WaitingForKeys>),
    /// Paused on its headers while its body is read whole for a check.
    HoldingBody(Box<HoldingBody>),
    /// Allowed: the body streams upstream, counted against the route's bound if it has one.
    Streaming(Option<BodyCounter>),
    /// The filter answered; nothing of the request goes upstream.
    Answered,
}

/// A request waiting for keys or for its rate limit service, kept to be decided again.
pub struct WaitingForKeys {
    head: RequestHead,
    /// The request had no body.
    headers_end_stream: bool,
    /// Body bytes that arrived while waiting (the host keeps them: the body callbacks pause).
    body_size: usize,
    /// The whole body, copied when the request ended while waiting: a body check after the
    /// wait has no callback left to read it in.
    complete_body: Option<Vec<u8>>,
    /// The request ended (body or trailers) while waiting.
    ended: bool,
}

/// A body being read whole for a check.
pub struct HoldingBody {
    head: RequestHead,
    forward: Forward,
    check: BodyCheck,
    taken: BodyStore,
    /// The adapter watches that a body callback comes.
    watched: bool,
}

/// Where the response is.
#[derive(Default)]
pub enum ResponsePhase {
    /// No response headers yet.
    #[default]
    Awaiting,
    /// An error body being replaced by the envelope as it streams.
    Rewriting(ErrorBodyRewrite),
    /// Nothing left to do with the response.
    Passing,
}

/// What to do with a chunk of the response body.
#[derive(Debug)]
pub enum ResponseChunk {
    /// The chunk goes to the client as it is.
    Pass,
    /// The chunk is replaced by `replacement` (nothing, or the envelope for the last one);
    /// then `event` is logged, if any.
    Replace {
        replacement: Vec<u8>,
        event: Option<Box<SecurityEvent>>,
    },
}

/// The result of the response headers callback.
#[derive(Debug)]
pub enum ResponseHeaders {
    /// The headers were written (by the `write` function given); log `event`, if any.
    Written { event: Option<Box<SecurityEvent>> },
    /// The headers could not be written: the response must not go out without them.
    WriteFailed,
}

/// Writes a whole response header map back to the host; `Err` if the host refused.
pub type WriteHeaders<'w> = dyn FnMut(&[(&[u8], &[u8])]) -> Result<(), ()> + 'w;

/// Applies changes to the host's response header map, in order; `Err` if the host refused one.
pub type WriteChanges<'w> = dyn FnMut(&[HeaderChange<'_>]) -> Result<(), ()> + 'w;

/// What the response's headers become, before it is put in the host's terms.
enum PlannedHeaders<'p> {
    /// No policy: the default security headers and the request id.
    Fallback(&'p ResponseEdits<'p>),
    Plan(&'p ResponseHeadersPlan<'p>),
}

/// The `x-request-id` of a response Envoy made itself, when it is an id (`%UNIQUE_ID%` is a
/// UUID): letters, digits, `-` and `_`, at most 128 bytes. Anything else is not echoed.
fn envoy_request_id<'h>(headers: &[(&[u8], &'h [u8])]) -> Option<&'h str> {
    let (_, value) = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(b"x-request-id"))?;
    let plain = (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    if plain {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// One HTTP stream's flow. See the module documentation.
pub struct HttpFlow {
    request: RequestPhase,
    response_phase: ResponsePhase,
    /// What the response path needs to know about the request.
    response: ResponseContext,
    /// A body or trailers callback came: the host hands this filter the body.
    body_callback_came: bool,
    held_budget: Rc<HeldBudget>,
}

impl HttpFlow {
    /// A stream whose held bodies count against `held_budget` (one per worker).
    pub fn new(held_budget: Rc<HeldBudget>) -> HttpFlow {
        HttpFlow {
            request: RequestPhase::Undecided,
            response_phase: ResponsePhase::Awaiting,
            response: ResponseContext::default(),
            body_callback_came: false,
            held_budget,
        }
    }

    pub fn phase(&self) -> &RequestPhase {
        &self.request
    }

    pub fn response_phase(&self) -> &ResponsePhase {
        &self.response_phase
    }

    pub fn request_id(&self) -> &str {
        &self.response.request_id
    }

    /// The request headers.
    pub fn on_request_headers(
        &mut self,
        policy: &Policy,
        head: RequestHead,
        end_of_stream: bool,
        host: &mut dyn FlowQueries,
    ) -> Step {
        self.response.request_id.clone_from(&head.request_id);
        // Known before deciding, so that a fail-closed answer gets the same headers.
        self.response.over_tls = policy.arrived_over_tls(&head);
        let decided = host.decide(true, &mut |env| policy.check_request(&head, env));
        match decided {
            Ok(decision) => self.carry_out(policy, decision, Some(head), None, end_of_stream, host),
            Err(why) => self.fail_closed(Some(policy), &why),
        }
    }

    /// The request headers when the configuration was refused: every request fails closed,
    /// with the request's id if it has one.
    pub fn on_request_headers_without_policy(&mut self, request_id: Option<&str>) -> Step {
        if let Some(id) = request_id {
            self.response.request_id = id.to_string();
        }
        self.fail_closed(None, "the plugin configuration was refused")
    }

    /// A chunk of the request body (`body_size` bytes in the host's buffer now).
    pub fn on_request_body(
        &mut self,
        policy: &Policy,
        body_size: usize,
        end_of_stream: bool,
        host: &mut dyn FlowQueries,
    ) -> Step {
        let watching = self.body_callback_arrived();
        let step = match &mut self.request {
            RequestPhase::WaitingForKeys(_) | RequestPhase::WaitingForService(_) => {
                // The host keeps the body while the request waits; a complete body is copied
                // now, the only time it can be read.
                let complete_body = if end_of_stream {
                    match self.read_body_or_fail(policy, body_size, host) {
                        Ok(body) => Some(body),
                        Err(failed) => return failed,
                    }
                } else {
                    None
                };
                if let RequestPhase::WaitingForKeys(waiting)
                | RequestPhase::WaitingForService(waiting) = &mut self.request
                {
                    if complete_body.is_some() {
                        waiting.complete_body = complete_body;
                    }
                    waiting.body_size = body_size;
                    waiting.ended = end_of_stream;
                }
                Step::pauses()
            }
            // The body is checked whole, and nothing goes upstream before that.
            RequestPhase::HoldingBody(_) => {
                self.held_body_chunk(policy, body_size, end_of_stream, host)
            }
            RequestPhase::Streaming(Some(counter)) => {
                if counter.add(body_size) {
                    self.refuse_body_too_large(policy, None, host)
                } else {
                    Step::continues()
                }
            }
            RequestPhase::Streaming(None) | RequestPhase::Undecided | RequestPhase::Answered => {
                Step::continues()
            }
        };
        watching.then(step)
    }

    /// The request trailers: the request is complete. While its headers are held, continuing
    /// here would make Envoy send the request on undecided (checked on Envoy 1.40 with HTTP/2:
    /// a body that ends with trailers reached the upstream unchecked), so the trailers wait with
    /// it. A body held for a check has had no chunk with `end_of_stream`: it is checked now.
    pub fn on_request_trailers(&mut self, policy: &Policy, host: &mut dyn FlowQueries) -> Step {
        let watching = self.body_callback_arrived();
        let step = match &mut self.request {
            // The host clamps the length to what it has buffered.
            RequestPhase::HoldingBody(_) => self.finish_held_body(policy, usize::MAX, host),
            RequestPhase::WaitingForKeys(waiting) | RequestPhase::WaitingForService(waiting) => {
                waiting.complete_body = host.request_body(waiting.body_size).ok();
                waiting.ended = true;
                Step::pauses()
            }
            _ => Step::continues(),
        };
        watching.then(step)
    }

    /// The request's keys settled (or its wait timed out): decides it again, never waiting
    /// twice. `Continue` means the adapter resumes the request.
    pub fn on_keys_settled(&mut self, policy: &Policy, host: &mut dyn FlowQueries) -> Step {
        let RequestPhase::WaitingForKeys(waiting) = std::mem::take(&mut self.request) else {
            // Not waiting (any more): nothing to resume.
            return Step::pauses();
        };
        let waiting = *waiting;
        let decided = host.decide(false, &mut |env| policy.check_request(&waiting.head, env));
        self.resume_waiting(policy, waiting, decided, host)
    }

    /// The route's rate limit service answered, or the call failed: decides the request again
    /// with that answer. `Continue` means the adapter resumes the request.
    pub fn on_service_answer(
        &mut self,
        policy: &Policy,
        reply: &ServiceReply,
        host: &mut dyn FlowQueries,
    ) -> Step {
        let RequestPhase::WaitingForService(waiting) = std::mem::take(&mut self.request) else {
            return Step::pauses();
        };
        let waiting = *waiting;
        let answer = ServiceAnswer::from_reply(reply, &policy.identity_headers);
        let decided = host.decide(false, &mut |env| {
            policy.check_request_after_service(&waiting.head, env, &answer)
        });
        self.resume_waiting(policy, waiting, decided, host)
    }

    /// Carries out the decision on a request that waited (for keys or its service).
    fn resume_waiting(
        &mut self,
        policy: &Policy,
        waiting: WaitingForKeys,
        decided: Result<Decision, String>,
        host: &mut dyn FlowQueries,
    ) -> Step {
        let decision = match decided {
            Ok(decision) => decision,
            Err(why) => return self.fail_closed(Some(policy), &why),
        };
        let step = self.carry_out(
            policy,
            decision,
            Some(waiting.head),
            None,
            waiting.headers_end_stream,
            host,
        );
        if matches!(self.request, RequestPhase::HoldingBody(_)) {
            // The route checks the body. If the request ended while it waited, the body came
            // and went: check the copy. Otherwise the body callbacks bring the rest.
            return match (waiting.ended, waiting.complete_body) {
                (true, Some(body)) => step.then(self.check_held_body(policy, Some(&body), host)),
                (true, None) => {
                    step.then(self.fail_closed(Some(policy), "the request body could not be read"))
                }
                (false, _) => step,
            };
        }
        if step.next == Next::Continue && waiting.body_size > 0 {
            // Allowed: the bytes that arrived while waiting count against a streamed limit.
            return step.then(self.on_request_body(policy, waiting.body_size, waiting.ended, host));
        }
        step
    }

    /// The request paused on its headers for its body, its body reached the host, and no body
    /// callback came (the host keeps the body from the filter): it fails closed.
    pub fn on_body_callbacks_never_came(&mut self, policy: &Policy) -> Step {
        if matches!(self.request, RequestPhase::Answered) || self.body_callback_came {
            return Step::pauses();
        }
        self.request = RequestPhase::Undecided;
        let reply = LocalReply::new(ErrorCode::ServiceUnavailable, &self.response.request_id);
        Step::pauses()
            .with(Command::Count(Tally::one(FAIL_CLOSED_ID)))
            .with(Command::ReportMissingBodyCallbacks)
            .then(self.answer(Some(policy), &reply))
    }

    /// The request fails closed: 503, and why in the log (never in the reply).
    pub fn fail_closed(&mut self, policy: Option<&Policy>, why: &str) -> Step {
        let reply = LocalReply::new(ErrorCode::ServiceUnavailable, &self.response.request_id);
        Step::pauses()
            .with(Command::Count(Tally::one(FAIL_CLOSED_ID)))
            .with(Command::LogFailure(why.to_string()))
            .then(self.answer(policy, &reply))
    }

    /// The response headers callback begins: whether the response is the filter's own reply,
    /// which carries every header it needs already (nothing to read or write). After the
    /// filter answered it is, unless Envoy's reply won over it (Envoy's buffer-limit 413 in the
    /// same body callback): that is Envoy's local reply, and gets what every other one gets.
    pub fn response_is_own_reply(&mut self, host: &mut dyn FlowQueries) -> bool {
        if matches!(self.request, RequestPhase::Answered) && self.is_own_reply(host) {
            self.response_phase = ResponsePhase::Passing;
            return true;
        }
        false
    }

    /// The response headers (`headers` as the host has them), when the response is not the
    /// filter's own reply ([`HttpFlow::response_is_own_reply`]). `write` writes the whole map
    /// back (one write: every host call costs a boundary crossing, and a response gets a dozen
    /// headers set or removed); `Err` if the host refused.
    pub fn on_response_headers(
        &mut self,
        policy: Option<&Policy>,
        headers: &[(&[u8], &[u8])],
        end_of_stream: bool,
        host: &mut dyn FlowQueries,
        write: &mut WriteHeaders<'_>,
    ) -> ResponseHeaders {
        self.response_headers(
            policy,
            headers,
            end_of_stream,
            host,
            &mut |edits| match edits {
                PlannedHeaders::Fallback(edits) => write(&edits.merge(headers)),
                PlannedHeaders::Plan(plan) => write(&plan.headers(headers)),
            },
        )
    }

    /// [`HttpFlow::on_response_headers`] for a host that edits the map header by header:
    /// `apply` gets only the changes (see [`ResponseEdits::changes`]).
    pub fn on_response_header_changes(
        &mut self,
        policy: Option<&Policy>,
        headers: &[(&[u8], &[u8])],
        end_of_stream: bool,
        host: &mut dyn FlowQueries,
        apply: &mut WriteChanges<'_>,
    ) -> ResponseHeaders {
        self.response_headers(
            policy,
            headers,
            end_of_stream,
            host,
            &mut |edits| match edits {
                PlannedHeaders::Fallback(edits) => apply(&edits.changes(headers)),
                PlannedHeaders::Plan(plan) => apply(&plan.changes(headers)),
            },
        )
    }

    fn response_headers(
        &mut self,
        policy: Option<&Policy>,
        headers: &[(&[u8], &[u8])],
        end_of_stream: bool,
        host: &mut dyn FlowQueries,
        write: &mut dyn FnMut(PlannedHeaders<'_>) -> Result<(), ()>,
    ) -> ResponseHeaders {
        if matches!(self.request, RequestPhase::Undecided) || policy.is_none() {
            // No request head was decided on (or none with a policy): the connection alone
            // says whether `strict-transport-security` may go out.
            self.response.over_tls = host.connection_is_tls().unwrap_or(false);
            // A reply Envoy made before the request reached the filter (a codec error, a
            // fragment in the target; the dynamic module sees them, proxy-wasm does not): its
            // only request id is the one Envoy's `local_reply_config` put on the response.
            if self.response.request_id.is_empty() {
                if let Some(id) = envoy_request_id(headers) {
                    self.response.request_id = id.to_string();
                }
            }
        }
        let Some(policy) = policy else {
            self.response_phase = ResponsePhase::Passing;
            let fallback =
                fallback_response_edits(&self.response.request_id, self.response.over_tls);
            return match write(PlannedHeaders::Fallback(&fallback.edits())) {
                Ok(()) => ResponseHeaders::Written { event: None },
                Err(()) => ResponseHeaders::WriteFailed,
            };
        };
        let plan = ResponseHeadersPlan::new(policy, &self.response, headers, end_of_stream, || {
            host.response_code_details()
        });
        if write(PlannedHeaders::Plan(&plan)).is_err() {
            return ResponseHeaders::WriteFailed;
        }
        let (phase, event) = match plan.body() {
            ResponseBody::Pass => (ResponsePhase::Passing, None),
            ResponseBody::LogNow { status, sample } => {
                (ResponsePhase::Passing, Some((status, sample)))
            }
            ResponseBody::Rewrite(rewrite) => (ResponsePhase::Rewriting(rewrite), None),
        };
        self.response_phase = phase;
        let event = event.map(|(status, sample)| {
            self.fill_event_client(host);
            Box::new(policy.upstream_error_event(&self.response, status, &sample))
        });
        ResponseHeaders::Written { event }
    }

    /// How many bytes of a response chunk of `chunk_size` the flow wants to read (the first
    /// bytes of an error body, for the log).
    pub fn response_bytes_wanted(&self, chunk_size: usize) -> usize {
        match &self.response_phase {
            ResponsePhase::Rewriting(rewrite) => rewrite.bytes_to_read(chunk_size),
            _ => 0,
        }
    }

    /// A chunk of the response body: `read` is what the host gave of the bytes asked for with
    /// [`HttpFlow::response_bytes_wanted`] (`None`: nothing asked, or the host refused).
    pub fn on_response_body(
        &mut self,
        policy: &Policy,
        read: Option<&[u8]>,
        chunk_size: usize,
        end_of_stream: bool,
        host: &mut dyn FlowQueries,
    ) -> ResponseChunk {
        let ResponsePhase::Rewriting(rewrite) = &mut self.response_phase else {
            return ResponseChunk::Pass;
        };
        // The original body never reaches the client (see `ErrorBodyRewrite`).
        let chunk = rewrite.chunk(read, chunk_size, end_of_stream);
        if !chunk.finished {
            return ResponseChunk::Replace {
                replacement: Vec::new(),
                event: None,
            };
        }
        let replacement = chunk.replacement.to_vec();
        let ResponsePhase::Rewriting(rewrite) =
            std::mem::replace(&mut self.response_phase, ResponsePhase::Passing)
        else {
            return ResponseChunk::Pass;
        };
        self.fill_event_client(host);
        let event = policy.upstream_error_event(&self.response, rewrite.status(), rewrite.sample());
        ResponseChunk::Replace {
            replacement,
            event: Some(Box::new(event)),
        }
    }
}

impl HttpFlow {
    /// Every body or trailers callback: the host does hand the body to the filter. Stop
    /// watching for one.
    fn body_callback_arrived(&mut self) -> Step {
        self.body_callback_came = true;
        match &mut self.request {
            RequestPhase::HoldingBody(held) if held.watched => {
                held.watched = false;
                Step::continues().with(Command::StopWatchingForBody)
            }
            _ => Step::continues(),
        }
    }

    /// Carries out a decision. `head` is the request head when the body may still be needed;
    /// `held` the body that was held for the check this decision answers.
    fn carry_out(
        &mut self,
        policy: &Policy,
        decision: Decision,
        head: Option<RequestHead>,
        held: Option<HoldingBody>,
        end_of_stream: bool,
        host: &mut dyn FlowQueries,
    ) -> Step {
        let mut step = Step::pauses();
        if !decision.tally.is_empty() {
            step.commands.push(Command::Count(decision.tally));
        }
        if let Some(event) = decision.event {
            step.commands.push(Command::LogEvent(Box::new(event)));
        }
        if let Some(event) = decision.auth_event {
            step.commands.push(Command::LogEvent(Box::new(event)));
        }
        self.response = decision.response;
        match decision.verdict {
            Verdict::Allow(forward) => {
                if let Some(held) = held {
                    step = step
                        .with(Command::EditRequest(held.forward))
                        .with(Command::PrependRequestBody(held.taken.into_drained()));
                }
                self.request =
                    RequestPhase::Streaming(self.response.stream_body_limit.map(BodyCounter::new));
                step.next = Next::Continue;
                step.with(Command::EditRequest(forward))
            }
            Verdict::Deny(reply) => step.then(self.answer(Some(policy), &reply)),
            Verdict::Preflight(headers) => step.then(self.send(Some(policy), 204, &headers, b"")),
            Verdict::WaitForKeys(ticket) => {
                let Some(head) = head else {
                    return step.then(
                        self.fail_closed(Some(policy), "waiting for keys without a request head"),
                    );
                };
                self.request = RequestPhase::WaitingForKeys(Box::new(WaitingForKeys {
                    head,
                    headers_end_stream: end_of_stream,
                    body_size: 0,
                    complete_body: None,
                    ended: end_of_stream,
                }));
                step.with(Command::WaitForKeys(ticket))
            }
            Verdict::AskService(call) => {
                let Some(head) = head else {
                    return step.then(self.fail_closed(
                        Some(policy),
                        "asking the rate limit service without a request head",
                    ));
                };
                self.request = RequestPhase::WaitingForService(Box::new(WaitingForKeys {
                    head,
                    headers_end_stream: end_of_stream,
                    body_size: 0,
                    complete_body: None,
                    ended: end_of_stream,
                }));
                step.with(Command::CallService(call))
            }
            Verdict::NeedBody { forward, check } => {
                let Some(head) = head else {
                    return step
                        .then(self.fail_closed(Some(policy), "body check without a request head"));
                };
                let watched = !end_of_stream && !self.body_callback_came;
                self.request = RequestPhase::HoldingBody(Box::new(HoldingBody {
                    head,
                    forward,
                    taken: BodyStore::new(Rc::clone(&self.held_budget), check.max_bytes),
                    check,
                    watched,
                }));
                if end_of_stream {
                    return step.then(self.finish_held_body(policy, 0, host));
                }
                // Headers wait with the body until the whole body has been checked; the
                // adapter answers if the body callbacks never come.
                if watched {
                    step.commands.push(Command::WatchForBody);
                }
                step
            }
        }
    }

    /// A body chunk of a request whose body is checked whole: over the bound it is refused at
    /// once; otherwise it is copied and drained from the host's buffer until the last one (see
    /// the adapter's `body_hold` for why the host's buffer cannot hold it).
    fn held_body_chunk(
        &mut self,
        policy: &Policy,
        body_size: usize,
        end_of_stream: bool,
        host: &mut dyn FlowQueries,
    ) -> Step {
        let RequestPhase::HoldingBody(held) = &mut self.request else {
            return Step::continues();
        };
        let total = (held.taken.len() as u64).saturating_add(body_size as u64);
        if total > held.check.max_bytes {
            let RequestPhase::HoldingBody(held) = std::mem::take(&mut self.request) else {
                return Step::continues();
            };
            return self.refuse_body_too_large(policy, Some(*held), host);
        }
        if end_of_stream {
            return self.finish_held_body(policy, body_size, host);
        }
        let chunk = match self.read_body_or_fail(policy, body_size, host) {
            Ok(chunk) => chunk,
            Err(failed) => return failed,
        };
        let RequestPhase::HoldingBody(held) = &mut self.request else {
            return Step::continues();
        };
        if let Err(full) = held.taken.push(&chunk, true) {
            return self.fail_closed(Some(policy), &full.reason());
        }
        // The host's buffer is empty again; the headers wait with the body.
        Step::pauses().with(Command::DrainRequestBody(body_size))
    }

    /// The body is complete: `in_host` bytes of it (at most; the host clamps) are still in the
    /// host's buffer after the drained ones. Checks the whole.
    fn finish_held_body(
        &mut self,
        policy: &Policy,
        in_host: usize,
        host: &mut dyn FlowQueries,
    ) -> Step {
        let tail = match self.read_body_or_fail(policy, in_host, host) {
            Ok(tail) => tail,
            Err(failed) => return failed,
        };
        let RequestPhase::HoldingBody(held) = &mut self.request else {
            return Step::continues();
        };
        if held.taken.is_empty() {
            // The whole body came in one callback: check the host's copy, keep none.
            return self.check_held_body(policy, Some(&tail), host);
        }
        if let Err(full) = held.taken.push(&tail, false) {
            return self.fail_closed(Some(policy), &full.reason());
        }
        self.check_held_body(policy, None, host)
    }

    /// `len` bytes of the host's request body, or the step that fails the request closed
    /// because the host would not hand them over.
    fn read_body_or_fail(
        &mut self,
        policy: &Policy,
        len: usize,
        host: &mut dyn FlowQueries,
    ) -> Result<Vec<u8>, Step> {
        host.request_body(len).map_err(|why| {
            self.fail_closed(
                Some(policy),
                &format!("cannot read the request body: {why}"),
            )
        })
    }

    /// Checks the held body: `body`, or the copy the held body keeps.
    fn check_held_body(
        &mut self,
        policy: &Policy,
        body: Option<&[u8]>,
        host: &mut dyn FlowQueries,
    ) -> Step {
        let RequestPhase::HoldingBody(held) = std::mem::take(&mut self.request) else {
            return Step::continues();
        };
        let held = *held;
        let response = &self.response;
        let decided = host.decide(false, &mut |env| {
            let body = body.unwrap_or(held.taken.bytes());
            policy.check_body(&held.head, &held.check, body, response, env)
        });
        match decided {
            Ok(decision) => self.carry_out(policy, decision, None, Some(held), true, host),
            Err(why) => self.fail_closed(Some(policy), &why),
        }
    }

    /// A body over the route's bound: 413 (a held body is dropped). In report mode the request
    /// goes on as it would have, a held body put back first.
    fn refuse_body_too_large(
        &mut self,
        policy: &Policy,
        held: Option<HoldingBody>,
        host: &mut dyn FlowQueries,
    ) -> Step {
        self.fill_event_client(host);
        let (event, outcome) = flow::body_over_limit(policy, &self.response, held.is_some());
        let step = Step::pauses()
            .with(Command::Count(policy.body_too_large_tally(&self.response)))
            .with(Command::LogEvent(Box::new(event)));
        match (outcome, held) {
            (BodyOverLimit::Reply(reply), _) => step.then(self.answer(Some(policy), &reply)),
            (BodyOverLimit::Proceed { restore_held_body }, held) => {
                self.request = RequestPhase::Streaming(None);
                let mut step = Step {
                    next: Next::Continue,
                    ..step
                };
                if let (true, Some(held)) = (restore_held_body, held) {
                    step = step
                        .with(Command::EditRequest(held.forward))
                        .with(Command::PrependRequestBody(held.taken.into_drained()));
                }
                step
            }
        }
    }

    fn answer(&mut self, policy: Option<&Policy>, reply: &LocalReply) -> Step {
        self.send(policy, reply.status, &reply.headers, reply.body.as_bytes())
    }

    /// The filter's own reply with every response header it will carry (the reply's own, then
    /// the security, CORS and rate-limit headers and `x-request-id`), so that the response
    /// callback has nothing left to do for it.
    fn send(
        &mut self,
        policy: Option<&Policy>,
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Step {
        self.request = RequestPhase::Answered;
        let reply: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        let fallback;
        let edits = match policy {
            Some(policy) => policy.plan_response(&self.response, status, ResponseOrigin::Filter),
            None => {
                fallback =
                    fallback_response_edits(&self.response.request_id, self.response.over_tls);
                fallback.edits()
            }
        };
        let headers = edits
            .merge(&reply)
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        Step::pauses().with(Command::SendReply {
            status,
            headers,
            body: body.to_vec(),
        })
    }

    /// Whether the response about to be encoded is the reply this filter sent.
    fn is_own_reply(&self, host: &mut dyn FlowQueries) -> bool {
        let content_type = if self.body_callback_came {
            host.response_header("content-type")
        } else {
            None
        };
        flow::is_own_reply(
            self.body_callback_came,
            &self.response.request_id,
            content_type.as_deref(),
            || host.response_header("x-request-id"),
        )
    }

    /// An event on the response path names the client even when no decision needed its
    /// address (the head asks the host only when one does).
    fn fill_event_client(&mut self, host: &mut dyn FlowQueries) {
        if self.response.event_base.client.is_empty() {
            if let Some(address) = host.source_address() {
                self.response.event_base.client = client_ip(&address);
            }
        }
    }
}

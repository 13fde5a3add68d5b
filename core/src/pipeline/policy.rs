//! The compiled policy and the per-request decisions. Everything here is host-independent: the
//! adapter hands in a [`RequestHead`] and a [`RequestEnv`] and carries out the [`Decision`]; for
//! the response it asks [`Policy::plan_response`] what to change.
//!
//! The order of the request checks is part of the security model. [`Policy::check_request`]
//! runs these stages, each a method of its own, in this order (`decide` lists them):
//! 1. identity headers a client could spoof are always removed, with their `_` twins, and
//!    method/URL override headers (see [`crate::request::firewall`]);
//!    `transport` first: with `require_tls`, plain text goes no further;
//! 2. `screen`: the path is normalised (the upstream gets the path that was matched), the
//!    method must be upper case, credentials and method overrides in the URL are refused;
//!    `network`: the top-level `deny_ips`;
//! 3. `preflight`: CORS preflights are answered (browsers send them without credentials);
//! 4. `match_route`: the first matching route, refused when ignoring letter case picks
//!    another one; then `network` again for the route's `deny_ips` and `allow_ips`;
//! 5. `declared_length`: a `Content-Length` over the route's bound is refused;
//! 6. `authenticate` (a verified token's DPoP binding last, `check_dpop`); its refusals still
//!    count against the client's rate limit, so that brute force on a login route is throttled;
//! 7. `rate_limit` (after authentication, so that the principal is known);
//! 8. `authorize`: scopes, roles and required claims (403), then the owner rule (404, never 403);
//! 9. `forward_or_hold_body`; then [`Policy::check_body`]: webhook signature and body schema,
//!    once the body has arrived.
//!
//! Whatever the verdict, every credential the request carries is removed before it goes
//! upstream, except the verified token of a provider with `forward_token: true`
//! (see [`crate::authn::credentials`]).

use crate::authn::api_keys::{credentials_in_query, query_has_parameter, ApiKey, ApiKeys};
use crate::authn::credentials::CredentialLocations;
use crate::authn::dpop::{self, BindingRefusal, ProofTarget};
use crate::authn::jwt::cache::TokenCache;
use crate::authn::jwt::remote::{self, RemoteKeys, WaitTicket};
use crate::authn::jwt::verifier::SignatureVerifier;
use crate::authn::jwt::{
    FoundToken, JwtAuth, JwtFailure, KeyNotFound, TokenSource, VerifiedToken, VerifyError,
};
use crate::authz::{Identity, OwnerRule, Requirement};
use crate::body::replay::{replay_key_prefix, SharedReplayTable};
use crate::body::schema::BodySchema;
use crate::body::webhook::Webhook;
use crate::limits::body_limit::content_length_exceeds;
use crate::limits::rate_limit::{CounterStore, Limiter, RateLimit};
use crate::limits::rate_limit_service::{
    self, FailureMode, RateLimitService, ServiceAnswer, ServiceCall, ServiceLimit,
};
use crate::request::firewall::{
    same_after_folding, AmbiguousCase, Firewall, OverrideHeaders, OVERRIDE_QUERY_PARAMETERS,
};
use crate::request::head::RequestHead;
use crate::request::network::IpList;
use crate::request::routes::{normalize_path_with, CompiledMatch, PathParams};
use crate::response::cors::{request_origin, Cors, PreflightOutcome, OWNED_RESPONSE_HEADERS};
use crate::response::error_rewrite::{BodySample, ErrorRewrite, ResponseOrigin};
use crate::response::reply::{
    envelope_with_details, ErrorCode, LocalReply, CHALLENGE_BAD_DPOP_PROOF, CHALLENGE_BAD_TOKEN,
    CHALLENGE_NO_TOKEN,
};
use crate::response::security_headers::{SecurityHeaders, HSTS};
use crate::support::events::{AuthSuccess, SecurityEvent};
use crate::support::metrics::{
    DecisionLabel, MetricsPlan, RateLimitResult, ServiceLimitResult, Tally, WebhookResult,
    TOKEN_CACHE_HIT_ID, TOKEN_CACHE_MISS_ID,
};
use std::rc::Rc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// Every decision is computed and logged; nothing is refused or rewritten.
    Report,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Report => "report",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    Jwt,
    ApiKey,
    JwtOrApiKey,
}

/// The header the verified API key's id is forwarded in (and that clients may never send).
pub const API_KEY_ID_HEADER: &str = "x-api-key-id";
/// Bodies the filter must read whole (webhooks, schemas) are bounded by this unless the route
/// sets `max_body_bytes`.
pub const DEFAULT_BUFFERED_BODY_BYTES: u64 = 1_048_576;

pub struct Route {
    pub name: String,
    pub matcher: CompiledMatch,
    pub auth: Auth,
    pub require: Option<Requirement>,
    pub owner: Option<OwnerRule>,
    /// Index into [`Policy::rate_limits`].
    pub rate_limit: Option<usize>,
    /// Index into [`Policy::service_limits`]: checked after the local limit.
    pub service_limit: Option<usize>,
    pub max_body_bytes: Option<u64>,
    /// Index into [`Policy::webhooks`].
    pub webhook: Option<usize>,
    pub body_schema: Option<BodySchema>,
    /// Only these clients may use the route (`routes[].allow_ips`).
    pub allow_ips: Option<IpList>,
    /// These clients may not (`routes[].deny_ips`); a deny list wins over the allow list.
    pub deny_ips: Option<IpList>,
}

impl Route {
    fn reads_body(&self) -> bool {
        self.webhook.is_some() || self.body_schema.is_some()
    }
}

pub struct Policy {
    pub mode: Mode,
    pub jwt: Option<JwtAuth>,
    pub api_keys: Option<ApiKeys>,
    pub routes: Vec<Route>,
    pub rate_limits: Vec<RateLimit>,
    /// `rate_limit_services`, by name.
    pub rate_limit_services: Vec<RateLimitService>,
    /// The limits of `rate_limits` that a service decides.
    pub service_limits: Vec<ServiceLimit>,
    pub cors: Option<Cors>,
    pub security_headers: SecurityHeaders,
    pub errors: ErrorRewrite,
    pub webhooks: Vec<Webhook>,
    /// Headers removed from every request: the ones the filter sets from verified credentials.
    pub identity_headers: Vec<String>,
    pub events: crate::support::events::EventsConfig,
    pub firewall: Firewall,
    /// Where credentials are read: all are removed before the request goes upstream.
    pub credentials: CredentialLocations,
    /// Headers whose `_` twins are removed from every request: the identity and credential
    /// headers and the override headers.
    pub twin_guarded_headers: Vec<String>,
    /// The routes' matches in lower case, for the case-ambiguity check (empty when
    /// `firewall.ambiguous_case` is `allow`).
    pub lower_case_matchers: Vec<CompiledMatch>,
    /// Whether a route literal has an upper-case letter (else an all-lower-case path needs no
    /// case check).
    pub routes_have_upper_case: bool,
    /// Clients refused on every route (top-level `deny_ips`).
    pub deny_ips: Option<IpList>,
    pub require_tls: RequireTls,
    /// `x-forwarded-proto: https` counts as TLS (a proxy Envoy trusts terminated it).
    pub trust_forwarded_proto: bool,
    /// Every metric series this policy can produce, and which one a decision counts.
    pub metrics: MetricsPlan,
    /// Authenticated requests allowed, for `events.auth_success` sampling (per worker in the
    /// wasm filter, whose policy is per VM; per process in the dynamic module).
    pub auth_successes: std::sync::atomic::AtomicU64,
}

/// `require_tls`: what a request that did not arrive over TLS gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequireTls {
    Off,
    /// 400 `tls_required`.
    Refuse,
    /// 308 to the same URL over https for GET and HEAD; 400 `tls_required` for the others
    /// (a redirected POST would have sent its body in clear text already).
    Redirect,
}

/// What the host lends the core for one request.
pub struct RequestEnv<'a> {
    /// Unix time in milliseconds.
    pub now_ms: u64,
    pub verifier: &'a dyn SignatureVerifier,
    pub token_cache: &'a mut TokenCache,
    /// Proxy-wasm shared data: rate-limit counters and the webhook replay tables.
    pub shared: &'a dyn CounterStore,
    /// `None` when the workers could not agree on a rate-limit seed: rate-limited routes then
    /// fail closed.
    pub limiter: Option<&'a Limiter>,
    /// This VM's remote key sets (empty when no provider is remote).
    pub remote_keys: &'a RemoteKeys,
    /// Whether a token whose key is not (yet) in its remote set may make the request wait for
    /// a refetch. False when a request that waited is decided again: it never waits twice.
    pub may_wait_for_keys: bool,
}

impl RequestEnv<'_> {
    fn now_seconds(&self) -> u64 {
        self.now_ms / 1000
    }
}

/// Changes to make to the request before it goes upstream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forward {
    pub remove_headers: Vec<String>,
    pub set_headers: Vec<(String, String)>,
    /// The normalised `:path`, when it differs from what the client sent: the upstream must see
    /// the path that was matched, or a route could be bypassed.
    pub set_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Forward),
    Deny(LocalReply),
    /// A CORS preflight answered by the filter: 204 with these headers.
    Preflight(Vec<(String, String)>),
    /// Hold the request until the body has arrived (at most `max_bytes`), then call
    /// [`Policy::check_body`]; the forward changes apply if that allows.
    NeedBody {
        forward: Forward,
        check: BodyCheck,
    },
    /// Hold the request: its token's provider has no key for it yet, and a fetch that may bring
    /// one is due or in flight. Decide it again (with `may_wait_for_keys: false`) when the
    /// ticket is settled.
    WaitForKeys(WaitTicket),
    /// Hold the request: its route's service limit is asked ([`ServiceCall`]); decide it again
    /// with the answer ([`Policy::check_request_after_service`]).
    AskService(ServiceCall),
}

/// What to check once the body is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyCheck {
    pub route: usize,
    pub max_bytes: u64,
}

/// What the response path needs to know about the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseContext {
    pub request_id: String,
    /// The request's `Origin`, for the CORS response headers.
    pub origin: Option<String>,
    /// Rate-limit headers of the route's limit, for every response on that route.
    pub rate_limit_headers: Vec<(&'static str, String)>,
    /// The rate limit service's `response_headers_to_add`.
    pub service_response_headers: Vec<(String, String)>,
    pub is_head: bool,
    /// The request arrived over TLS, as Envoy saw the connection (or, with
    /// `trust_forwarded_proto`, as the trusted hop's `x-forwarded-proto` says): only then is
    /// `strict-transport-security` sent (RFC 6797 section 7.2: never over plain HTTP).
    pub over_tls: bool,
    /// A streaming bound on the request body (413 once exceeded), for routes with
    /// `max_body_bytes` that do not read the body whole.
    pub stream_body_limit: Option<u64>,
    /// Who and what, for events logged on the response path.
    pub event_base: EventBase,
    /// The index of the request's route in [`Policy::routes`], for the metrics of later
    /// decisions (a streamed body over its bound).
    pub route_index: Option<usize>,
}

/// The request facts every security event of a request repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventBase {
    pub route: Option<String>,
    pub method: String,
    pub path: String,
    /// Empty when no decision needed it: the adapter asks the host before logging an event.
    pub client: String,
    pub principal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The security event to log (refusals, and allows on routes with requirements).
    pub event: Option<SecurityEvent>,
    pub response: ResponseContext,
    /// The counters the decision increments (its outcome, rate limit, cache lookup, webhook).
    pub tally: Tally,
    /// An `auth_success` event (`events.auth_success`), logged after `event`.
    pub auth_event: Option<SecurityEvent>,
}

/// A refusal with what its security event needs.
struct Refusal {
    reply: LocalReply,
    reason: String,
    event: &'static str,
}

impl Refusal {
    fn new(reply: LocalReply, event: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal {
            reply,
            reason: reason.into(),
            event,
        }
    }
}

/// Why authentication did not establish an identity.
enum AuthStop {
    Refused(Refusal),
    WaitForKeys(WaitTicket),
}

impl From<Refusal> for AuthStop {
    fn from(refusal: Refusal) -> AuthStop {
        AuthStop::Refused(refusal)
    }
}

/// What authentication established: the verified token and key themselves, never an index
/// to look up again.
enum Authenticated<'p> {
    Anonymous,
    Jwt(Rc<VerifiedToken>),
    ApiKey(&'p ApiKey),
    Both(Rc<VerifiedToken>, &'p ApiKey),
}

impl<'p> Authenticated<'p> {
    fn token(&self) -> Option<&VerifiedToken> {
        match self {
            Authenticated::Jwt(token) | Authenticated::Both(token, _) => Some(token),
            Authenticated::Anonymous | Authenticated::ApiKey(_) => None,
        }
    }

    fn api_key(&self) -> Option<&'p ApiKey> {
        match self {
            Authenticated::ApiKey(key) | Authenticated::Both(_, key) => Some(key),
            Authenticated::Anonymous | Authenticated::Jwt(_) => None,
        }
    }

    /// Who the request is from, for events and rate limits: the JWT's subject when a token
    /// verified, else the API key's id.
    fn principal(&self) -> Option<String> {
        match self.token() {
            Some(token) => token.subject.clone(),
            None => self.api_key().map(|key| key.id.clone()),
        }
    }

    /// What authorization decides on. When both credentials verified, the token's claims do,
    /// read where the token's provider puts roles and scopes (a token whose provider cannot
    /// be found has no identity: fail closed).
    fn identity<'s>(&'s self, jwt: Option<&'s JwtAuth>) -> Option<Identity<'s>> {
        match (self.token(), self.api_key()) {
            (Some(token), _) => {
                let provider = jwt?.providers.get(token.provider)?;
                Some(Identity::from_jwt_claims(
                    &token.claims,
                    &provider.identity_claims,
                ))
            }
            (None, Some(key)) => Some(Identity::from_api_key(key)),
            (None, None) => None,
        }
    }
}

/// The route a request matched.
struct Matched<'p> {
    index: usize,
    route: &'p Route,
    params: PathParams,
}

/// Per-request working state of the stages of [`Policy::decide`].
struct Work<'h, 'p> {
    head: &'h RequestHead,
    forward: Forward,
    response: ResponseContext,
    route: Option<&'p Route>,
    /// The index of `route` in [`Policy::routes`].
    route_index: Option<usize>,
    principal: Option<String>,
    log_path: String,
    /// An event for an allowed request (authorization decisions are always logged).
    allow_event: Option<(&'static str, String)>,
    /// The JWT source whose token verified, when its provider forwards tokens upstream.
    kept_credential: Option<usize>,
    /// What the decision counts so far (the outcome is added last).
    tally: Tally,
    /// Who authenticated how, for an `auth_success` event.
    authenticated_by: Option<AuthenticatedBy>,
    /// The answer of the route's rate limit service, when the request is decided again with it.
    service_answer: Option<&'h ServiceAnswer>,
}

/// What an `auth_success` event names: the provider whose token verified, the key's id.
#[derive(Debug, Clone)]
struct AuthenticatedBy {
    provider: Option<String>,
    key_id: Option<String>,
}

impl Policy {
    /// The decision on the request headers.
    pub fn check_request(&self, head: &RequestHead, env: &mut RequestEnv<'_>) -> Decision {
        self.check_request_with(head, env, None)
    }

    /// The decision on the request headers once its route's rate limit service answered (or
    /// failed to): the stages run again, the local limit is not counted twice, and the answer
    /// stands for the service limit.
    pub fn check_request_after_service(
        &self,
        head: &RequestHead,
        env: &mut RequestEnv<'_>,
        answer: &ServiceAnswer,
    ) -> Decision {
        self.check_request_with(head, env, Some(answer))
    }

    fn check_request_with(
        &self,
        head: &RequestHead,
        env: &mut RequestEnv<'_>,
        service_answer: Option<&ServiceAnswer>,
    ) -> Decision {
        let mut work = Work {
            head,
            forward: Forward::default(),
            response: ResponseContext {
                request_id: head.request_id.clone(),
                origin: request_origin(head).map(str::to_owned),
                is_head: head.method == "HEAD",
                over_tls: self.arrived_over_tls(head),
                ..ResponseContext::default()
            },
            route: None,
            route_index: None,
            principal: None,
            log_path: String::new(),
            allow_event: None,
            kept_credential: None,
            tally: Tally::default(),
            authenticated_by: None,
            service_answer,
        };
        self.remove_spoofable_headers(head, &mut work.forward);
        let outcome = self.decide(&mut work, env);
        self.conclude(outcome, work)
    }

    /// Identity headers are the filter's to set: a client that sends its own `x-user-id` or
    /// `x-api-key-id` is lying, on every route, with or without a credential; so is one that
    /// sends `x_user_id`, which CGI, WSGI and Rack read as the same variable. Override headers
    /// would make the upstream act on a method or path the filter never checked.
    fn remove_spoofable_headers(&self, head: &RequestHead, forward: &mut Forward) {
        let strip_overrides = self.firewall.override_headers == OverrideHeaders::Strip;
        for (name, _) in head.headers() {
            let spoofable = self.identity_headers.iter().any(|h| h == name)
                || (name.contains('_')
                    && self
                        .twin_guarded_headers
                        .iter()
                        .any(|h| h != name && same_after_folding(name, h)))
                || (strip_overrides && Firewall::is_override_header(name));
            if spoofable && !forward.remove_headers.iter().any(|h| h == name) {
                forward.remove_headers.push(name.to_string());
            }
        }
    }

    /// Removes every credential but the verified token of a provider that forwards tokens.
    fn remove_credentials(&self, head: &RequestHead, kept: Option<usize>, forward: &mut Forward) {
        let kept = kept.and_then(|i| self.jwt.as_ref()?.sources.get(i));
        let removal = self.credentials.removal(head, kept);
        for name in removal.remove_headers {
            if !forward.remove_headers.contains(&name) {
                forward.remove_headers.push(name);
            }
        }
        match removal.cookie {
            None => {}
            Some(Some(rest)) => forward.set_headers.push(("cookie".into(), rest)),
            Some(None) => forward.remove_headers.push("cookie".into()),
        }
    }

    fn conclude(&self, outcome: Result<Verdict, Refusal>, mut work: Work<'_, '_>) -> Decision {
        let head = work.head;
        let kept = work.kept_credential;
        let outcome = outcome.map(|mut verdict| {
            if let Verdict::Allow(forward) | Verdict::NeedBody { forward, .. } = &mut verdict {
                self.remove_credentials(head, kept, forward);
            }
            verdict
        });
        // The client's address is asked of the host only for an event of this decision (or
        // when a rate limit needed it already); a later event on the response path has the
        // adapter fill it in (`EventBase::client` empty).
        let logs_event = outcome.is_err() || work.allow_event.is_some();
        let client = if logs_event {
            Some(work.head.client_ip())
        } else {
            work.head.known_client_ip()
        };
        work.response.event_base = EventBase {
            route: work.route.map(|r| r.name.clone()),
            method: work.head.method.clone(),
            path: std::mem::take(&mut work.log_path),
            client: client.unwrap_or_default().to_string(),
            principal: work.principal.take(),
        };
        work.response.route_index = work.route_index;
        let ctx = &work.response;
        let mut tally = work.tally;
        match outcome {
            Ok(verdict) => {
                // A request that waits for keys or for its body is counted when it is decided.
                if matches!(verdict, Verdict::Allow(_) | Verdict::Preflight(_)) {
                    tally.push(self.metrics.request(
                        work.route_index,
                        DecisionLabel::Allowed,
                        None,
                    ));
                }
                let event = work
                    .allow_event
                    .clone()
                    .map(|(name, reason)| self.event(ctx, name, "allowed", 200, reason));
                let auth_event = match (&verdict, work.authenticated_by.take()) {
                    (Verdict::Allow(_) | Verdict::NeedBody { .. }, Some(by)) => {
                        self.auth_success_event(ctx, by)
                    }
                    _ => None,
                };
                Decision {
                    verdict,
                    event,
                    response: work.response,
                    tally,
                    auth_event,
                }
            }
            Err(refusal) => {
                let decision = match self.mode {
                    Mode::Enforce => DecisionLabel::Refused,
                    Mode::Report => DecisionLabel::Reported,
                };
                tally.push(self.metrics.request(
                    work.route_index,
                    decision,
                    Some(refusal.reply.code),
                ));
                let event = self.event(
                    ctx,
                    refusal.event,
                    refusal.reply.code.code(),
                    refusal.reply.status,
                    refusal.reason,
                );
                let verdict = match self.mode {
                    Mode::Enforce => Verdict::Deny(refusal.reply),
                    Mode::Report => {
                        let mut forward = std::mem::take(&mut work.forward);
                        self.remove_credentials(head, kept, &mut forward);
                        Verdict::Allow(forward)
                    }
                };
                Decision {
                    verdict,
                    event: Some(event),
                    response: work.response,
                    tally,
                    auth_event: None,
                }
            }
        }
    }

    fn event(
        &self,
        ctx: &ResponseContext,
        name: &'static str,
        code: &'static str,
        status: u16,
        reason: String,
    ) -> SecurityEvent {
        SecurityEvent {
            kind: "security_event",
            event: name,
            code,
            status,
            mode: self.mode.name(),
            route: ctx.event_base.route.clone(),
            method: ctx.event_base.method.clone(),
            path: ctx.event_base.path.clone(),
            client: ctx.event_base.client.clone(),
            principal: ctx.event_base.principal.clone(),
            provider: None,
            key_id: None,
            request_id: ctx.request_id.clone(),
            reason,
        }
    }

    /// The `auth_success` event of an allowed, authenticated request, when
    /// `events.auth_success` logs this one (all, or one in N on this worker).
    fn auth_success_event(
        &self,
        ctx: &ResponseContext,
        by: AuthenticatedBy,
    ) -> Option<SecurityEvent> {
        if self.events.auth_success == AuthSuccess::Off {
            return None;
        }
        // Relaxed: a sampling count, shared by the dynamic module's workers.
        let seen = self
            .auth_successes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(1);
        if !self.events.auth_success.logs(seen) {
            return None;
        }
        let reason = match (&by.provider, &by.key_id) {
            (Some(_), Some(_)) => "jwt and api key verified",
            (Some(_), None) => "jwt verified",
            _ => "api key verified",
        };
        let mut event = self.event(ctx, "auth_success", "allowed", 200, reason.into());
        event.provider = by.provider;
        event.key_id = by.key_id;
        Some(event)
    }

    /// A streamed request body went over the route's `max_body_bytes`: the event, and the reply
    /// (none in report mode).
    pub fn body_too_large(&self, ctx: &ResponseContext) -> (SecurityEvent, Option<LocalReply>) {
        let reply = LocalReply::new(ErrorCode::PayloadTooLarge, &ctx.request_id);
        let event = self.event(
            ctx,
            "payload_too_large",
            reply.code.code(),
            reply.status,
            "body over max_body_bytes".into(),
        );
        (event, (self.mode == Mode::Enforce).then_some(reply))
    }

    /// What a body over the route's bound counts: refused (reported in report mode)
    /// `payload_too_large` on the request's route. A streamed body's request was counted
    /// allowed at its headers already: it counts again, as the refusal it now is.
    pub fn body_too_large_tally(&self, ctx: &ResponseContext) -> Tally {
        let decision = match self.mode {
            Mode::Enforce => DecisionLabel::Refused,
            Mode::Report => DecisionLabel::Reported,
        };
        let mut tally = Tally::default();
        tally.push(self.metrics.request(
            ctx.route_index,
            decision,
            Some(ErrorCode::PayloadTooLarge),
        ));
        tally
    }

    /// The event for an upstream (or Envoy) error response whose body was replaced: the
    /// original body's first bytes go to the log, never to the client.
    pub fn upstream_error_event(
        &self,
        ctx: &ResponseContext,
        status: u16,
        original_body: &BodySample,
    ) -> SecurityEvent {
        let reason = format!(
            "upstream error body ({} bytes{}): {}",
            original_body.total_bytes(),
            if original_body.is_truncated() {
                ", truncated"
            } else {
                ""
            },
            original_body.logged()
        );
        self.event(
            ctx,
            "upstream_error",
            ErrorCode::UpstreamError.code(),
            status,
            reason,
        )
    }

    /// The stages of a request's headers, in their order (the order is part of the security
    /// model: see the module docs). Each stage passes the request on, or ends it with a
    /// verdict or a refusal.
    fn decide<'p>(
        &'p self,
        work: &mut Work<'_, 'p>,
        env: &mut RequestEnv<'_>,
    ) -> Result<Verdict, Refusal> {
        self.transport(work.head)?;
        let path = self.screen(work)?;
        self.network(None, self.deny_ips.as_ref(), work.head)?;
        if let Some(verdict) = self.preflight(work.head)? {
            return Ok(verdict);
        }
        let matched = self.match_route(work, &path)?;
        let route = matched.route;
        self.network(route.allow_ips.as_ref(), route.deny_ips.as_ref(), work.head)?;
        let body_bound = self.declared_length(route, work.head)?;
        let authenticated = match self.authenticate(route, work, env) {
            Ok(authenticated) => authenticated,
            // Nothing is counted or logged yet: the request is decided when it stops waiting.
            Err(AuthStop::WaitForKeys(ticket)) => return Ok(Verdict::WaitForKeys(ticket)),
            Err(AuthStop::Refused(refusal)) => {
                // A refused credential still counts against the client (by IP: the identity it
                // claimed is not established), so guessing passwords or keys is throttled.
                if let Some(ask) = self.rate_limit(route, &Authenticated::Anonymous, work, env)? {
                    return Ok(ask);
                }
                return Err(refusal);
            }
        };
        if let Some(ask) = self.rate_limit(route, &authenticated, work, env)? {
            return Ok(ask);
        }
        self.authorize(route, &matched.params, &authenticated, work)?;
        self.forward_or_hold_body(&matched, body_bound, work)
    }

    /// Whether the request arrived over TLS: what Envoy saw on the connection, or, only when
    /// the operator says a proxy Envoy trusts terminated TLS in front of it
    /// (`trust_forwarded_proto`), exactly one `x-forwarded-proto: https` (any client can send
    /// the header). Decides `require_tls`, whether `strict-transport-security` is sent, and the
    /// scheme a DPoP proof's `htu` must name.
    pub fn arrived_over_tls(&self, head: &RequestHead) -> bool {
        if head.over_tls() {
            return true;
        }
        if self.trust_forwarded_proto {
            let mut protos = head.header_values("x-forwarded-proto");
            // One value, exactly `https`: a list (`http, https`) names several hops, and the
            // nearest one is what Envoy's trusted hop said.
            if let (Some(proto), None) = (protos.next(), protos.next()) {
                return proto.trim().eq_ignore_ascii_case("https");
            }
        }
        false
    }

    /// Transport: with `require_tls`, a request that did not arrive over TLS goes no further.
    /// TLS is what Envoy saw on the connection; `x-forwarded-proto` only counts when the
    /// operator says a proxy Envoy trusts terminated TLS in front of it (`trust_forwarded_proto`),
    /// since any client can send the header.
    fn transport(&self, head: &RequestHead) -> Result<(), Refusal> {
        if self.require_tls == RequireTls::Off || self.arrived_over_tls(head) {
            return Ok(());
        }
        let request_id = head.request_id.as_str();
        let redirectable = matches!(head.method.as_str(), "GET" | "HEAD")
            && head.unreadable.is_none()
            && !head.authority.is_empty()
            && head.path.starts_with('/');
        if self.require_tls == RequireTls::Redirect && redirectable {
            let mut reply = LocalReply::new(ErrorCode::TlsRequired, request_id).with_header(
                "location",
                &format!("https://{}{}", head.authority, head.path),
            );
            reply.status = 308;
            return Err(Refusal::new(
                reply,
                "tls_required",
                "plain-text request redirected to https",
            ));
        }
        Err(Refusal::new(
            LocalReply::new(ErrorCode::TlsRequired, request_id),
            "tls_required",
            "request not over TLS",
        ))
    }

    /// Screen: what no route may see. An unreadable head, a path that cannot be normalised
    /// (or that an upstream framework would read otherwise), a lower-case method, credentials
    /// or method overrides in the URL, override headers when they are refused. Returns the
    /// normalised path; the upstream gets that path.
    fn screen(&self, work: &mut Work<'_, '_>) -> Result<String, Refusal> {
        let head = work.head;
        let request_id = head.request_id.as_str();
        let bad_request = |reason: String| {
            Refusal::new(
                LocalReply::new(ErrorCode::BadRequest, request_id),
                "bad_request",
                reason,
            )
        };
        if let Some(reason) = head.unreadable {
            return Err(bad_request(reason.into()));
        }
        let normalized = normalize_path_with(&head.path, self.firewall.path_parameters)
            .map_err(|e| bad_request(format!("path cannot be normalised: {}", e.reason())))?;
        work.log_path.clone_from(&normalized.path);
        if normalized.changed {
            work.forward.set_path = Some(normalized.to_request_path());
        }
        if head.method.bytes().any(|b| b.is_ascii_lowercase()) {
            // Methods are case-sensitive: `get` matches no `GET` route, yet some upstreams
            // upper-case it and run the GET handler.
            return Err(bad_request("method not in upper case".into()));
        }
        if let Some(query) = &normalized.query {
            if self.refuses_credentials_in(query) {
                return Err(Refusal::new(
                    LocalReply::new(ErrorCode::CredentialsInUrl, request_id),
                    "credentials_in_url",
                    "credential-like parameter in the query string",
                ));
            }
            if self.firewall.override_headers != OverrideHeaders::Forward
                && query_has_parameter(query, |name| {
                    OVERRIDE_QUERY_PARAMETERS
                        .iter()
                        .any(|p| name.eq_ignore_ascii_case(p.as_bytes()))
                })
            {
                return Err(bad_request("method override in the query string".into()));
            }
        }
        if self.firewall.override_headers == OverrideHeaders::Reject
            && head
                .headers()
                .any(|(name, _)| Firewall::is_override_header(name))
        {
            return Err(bad_request("method or URL override header".into()));
        }
        Ok(normalized.path)
    }

    /// Network: the client's address (as Envoy computed it) against a deny list, which wins,
    /// and an allow list. An address the host did not give is in no allow list.
    fn network(
        &self,
        allow: Option<&IpList>,
        deny: Option<&IpList>,
        head: &RequestHead,
    ) -> Result<(), Refusal> {
        if allow.is_none() && deny.is_none() {
            return Ok(());
        }
        let client = head.client_ip();
        let refused = |reason: String| {
            Refusal::new(
                LocalReply::new(ErrorCode::Forbidden, &head.request_id),
                "ip_denied",
                reason,
            )
        };
        if let Some(deny) = deny {
            if let Some(cidr) = deny.matching(client) {
                return Err(refused(format!("{}: {cidr}", deny.name)));
            }
        }
        if let Some(allow) = allow {
            if allow.matching(client).is_none() {
                return Err(refused(format!("{}: not in the list", allow.name)));
            }
        }
        Ok(())
    }

    /// Preflight: CORS preflights are answered here, before any route (browsers send them
    /// without credentials).
    fn preflight(&self, head: &RequestHead) -> Result<Option<Verdict>, Refusal> {
        let Some(cors) = &self.cors else {
            return Ok(None);
        };
        match cors.preflight(head) {
            None => Ok(None),
            Some(PreflightOutcome::Allowed(headers)) => Ok(Some(Verdict::Preflight(headers))),
            Some(PreflightOutcome::Rejected(reason)) => Err(Refusal::new(
                LocalReply::new(ErrorCode::CorsRejected, &head.request_id),
                "cors_rejected",
                reason,
            )),
        }
    }

    /// Match route: the first route that matches the normalised path, and no other route when
    /// the path's letter case is ignored (as Express, IIS and ASP.NET do).
    fn match_route<'p>(
        &'p self,
        work: &mut Work<'_, 'p>,
        path: &str,
    ) -> Result<Matched<'p>, Refusal> {
        let head = work.head;
        let matched = self.routes.iter().enumerate().find_map(|(index, route)| {
            route
                .matcher
                .matches(&head.method, &head.authority, path)
                .map(|params| Matched {
                    index,
                    route,
                    params,
                })
        });
        let Some(matched) = matched else {
            return Err(Refusal::new(
                LocalReply::new(ErrorCode::NotFound, &head.request_id),
                "no_route",
                "no route matches",
            ));
        };
        work.route = Some(matched.route);
        work.route_index = Some(matched.index);
        if let Some(other) = self.case_insensitive_route(head, path) {
            if other != Some(matched.index) {
                // Express, IIS and ASP.NET ignore case: they would run another route's handler.
                return Err(Refusal::new(
                    LocalReply::new(ErrorCode::BadRequest, &head.request_id),
                    "bad_request",
                    "path case is ambiguous: ignoring case picks another route",
                ));
            }
        }
        Ok(matched)
    }

    /// Declared length: a `Content-Length` over the route's bound is refused before anything
    /// else is spent on the request. Returns the bound (routes that read the body have one).
    fn declared_length(&self, route: &Route, head: &RequestHead) -> Result<Option<u64>, Refusal> {
        let body_bound = route
            .max_body_bytes
            .or(route.reads_body().then_some(DEFAULT_BUFFERED_BODY_BYTES));
        let Some(max) = body_bound else {
            return Ok(None);
        };
        let request_id = head.request_id.as_str();
        let too_large = content_length_exceeds(head, max).map_err(|reason| {
            Refusal::new(
                LocalReply::new(ErrorCode::BadRequest, request_id),
                "bad_request",
                reason,
            )
        })?;
        if too_large {
            return Err(Refusal::new(
                LocalReply::new(ErrorCode::PayloadTooLarge, request_id),
                "payload_too_large",
                "content-length over max_body_bytes",
            ));
        }
        Ok(body_bound)
    }

    /// Authorize: the route's `require` (scopes, roles, claims: 403), then its owner rule (404, never
    /// 403: a 403 would confirm that the object exists).
    fn authorize(
        &self,
        route: &Route,
        params: &PathParams,
        authenticated: &Authenticated<'_>,
        work: &mut Work<'_, '_>,
    ) -> Result<(), Refusal> {
        let request_id = work.head.request_id.as_str();
        let identity = authenticated.identity(self.jwt.as_ref());
        if let Some(requirement) = &route.require {
            let identity = identity.as_ref().ok_or_else(|| {
                Refusal::new(
                    LocalReply::new(ErrorCode::Forbidden, request_id),
                    "authz_denied",
                    "no identity on a route with requirements",
                )
            })?;
            if let Err(unmet) = requirement.check(identity) {
                return Err(Refusal::new(
                    LocalReply::new(ErrorCode::Forbidden, request_id),
                    "authz_denied",
                    format!("{unmet} not satisfied"),
                ));
            }
            work.allow_event = Some(("authz_allowed", "require satisfied".into()));
        }
        if let Some(owner) = &route.owner {
            let verdict = match identity.as_ref() {
                Some(identity) => owner.check(params, identity),
                None => Err("no identity on a route with an owner rule"),
            };
            if let Err(reason) = verdict {
                return Err(Refusal::new(
                    LocalReply::new(ErrorCode::NotFound, request_id),
                    "authz_denied",
                    format!("owner: {reason}"),
                ));
            }
            work.allow_event = Some(("authz_allowed", "owner and requirements satisfied".into()));
        }
        Ok(())
    }

    /// Forward or hold the body: a route that reads the body (webhook, schema) holds the
    /// request until it has arrived whole; a webhook's signature headers must be there first.
    /// Other routes forward now, with a streaming bound when they have `max_body_bytes`.
    fn forward_or_hold_body(
        &self,
        matched: &Matched<'_>,
        body_bound: Option<u64>,
        work: &mut Work<'_, '_>,
    ) -> Result<Verdict, Refusal> {
        let route = matched.route;
        if !route.reads_body() {
            work.response.stream_body_limit = route.max_body_bytes;
            return Ok(Verdict::Allow(work.forward.clone()));
        }
        let head = work.head;
        if let Some(webhook) = route.webhook.and_then(|w| self.webhooks.get(w)) {
            if let Some(missing) = webhook
                .required_headers()
                .iter()
                .find(|h| !head.has_header(h))
            {
                let index = route.webhook.unwrap_or_default();
                work.tally
                    .push(self.metrics.webhook(index, WebhookResult::Invalid));
                return Err(Refusal::new(
                    LocalReply::new(ErrorCode::InvalidSignature, &head.request_id),
                    "invalid_signature",
                    format!("webhook {}: missing header {missing}", webhook.name()),
                ));
            }
        }
        Ok(Verdict::NeedBody {
            forward: work.forward.clone(),
            check: BodyCheck {
                route: matched.index,
                max_bytes: body_bound.unwrap_or(DEFAULT_BUFFERED_BODY_BYTES),
            },
        })
    }

    /// The route an upstream that ignores ASCII case would pick, when that check applies (see
    /// `firewall.ambiguous_case`); `None` when it does not.
    fn case_insensitive_route(&self, head: &RequestHead, path: &str) -> Option<Option<usize>> {
        if self.firewall.ambiguous_case != AmbiguousCase::Reject
            || !(self.routes_have_upper_case || path.bytes().any(|b| b.is_ascii_uppercase()))
        {
            return None;
        }
        let lower = path.to_ascii_lowercase();
        Some(
            self.lower_case_matchers
                .iter()
                .position(|m| m.matches(&head.method, &head.authority, &lower).is_some()),
        )
    }

    fn refuses_credentials_in(&self, query: &str) -> bool {
        if self.jwt.is_none() && self.api_keys.is_none() {
            return false;
        }
        let extra: Vec<&str> = self
            .api_keys
            .as_ref()
            .map(|k| vec![k.header_name()])
            .unwrap_or_default();
        credentials_in_query(query, &extra)
    }

    /// Authenticate: the route's credentials, found and verified. When a token and a key are
    /// both presented, both must verify: a valid key must not cover a forged token.
    fn authenticate<'p>(
        &'p self,
        route: &Route,
        work: &mut Work<'_, 'p>,
        env: &mut RequestEnv<'_>,
    ) -> Result<Authenticated<'p>, AuthStop> {
        let head = work.head;
        let request_id = head.request_id.as_str();
        let unauthorized = |reason: &str| {
            Refusal::new(
                LocalReply::new(ErrorCode::Unauthorized, request_id)
                    .with_header("www-authenticate", CHALLENGE_NO_TOKEN),
                "auth_failure",
                reason,
            )
        };
        let (use_jwt, use_key) = match route.auth {
            Auth::None => return Ok(Authenticated::Anonymous),
            Auth::Jwt => (true, false),
            Auth::ApiKey => (false, true),
            Auth::JwtOrApiKey => (true, true),
        };
        let token = match (use_jwt, &self.jwt) {
            (true, Some(jwt)) => jwt.find_token(head).map_err(jwt_refusal(request_id))?,
            _ => None,
        };
        let key = match (use_key, &self.api_keys) {
            (true, Some(keys)) => keys
                .find_key(head)
                .map_err(|f| api_key_refusal(request_id, f.reason()))?,
            _ => None,
        };
        if token.is_none() && key.is_none() {
            return Err(unauthorized("no credential").into());
        }
        // When both are present, both must verify: a valid key must not cover a forged token.
        let verified_token = match (token, &self.jwt) {
            (Some(found), Some(jwt)) => {
                let lookups_before = env.token_cache.lookups();
                let verified = jwt.verify_with(
                    found,
                    env.now_seconds(),
                    env.verifier,
                    env.token_cache,
                    env.remote_keys,
                );
                let (hits, misses) = env.token_cache.lookups();
                if hits != lookups_before.0 {
                    work.tally.push(Some(TOKEN_CACHE_HIT_ID));
                } else if misses != lookups_before.1 {
                    work.tally.push(Some(TOKEN_CACHE_MISS_ID));
                }
                let verified = match verified {
                    Ok(verified) => verified,
                    Err(VerifyError::Refused(failure)) => {
                        return Err(jwt_refusal(request_id)(failure).into())
                    }
                    Err(VerifyError::KeyNotFound(missing)) => {
                        return Err(self.key_not_found(jwt, missing, env, request_id))
                    }
                };
                self.check_dpop(jwt, found, &verified, env, work.head)
                    .map_err(|refusal| dpop_refusal(request_id, refusal))?;
                work.forward
                    .set_headers
                    .extend(verified.upstream_headers.iter().cloned());
                let forward_token = jwt
                    .providers
                    .get(verified.provider)
                    .is_some_and(|p| p.forward_token);
                if forward_token {
                    work.kept_credential = Some(found.source);
                }
                Some(verified)
            }
            _ => None,
        };
        let verified_key = match (key, &self.api_keys) {
            (Some(presented), Some(keys)) => {
                let api_key = keys
                    .verify(presented.key, env.now_seconds())
                    .map_err(|f| api_key_refusal(request_id, f.reason()))?;
                // The key itself never goes upstream (see `remove_credentials`).
                work.forward
                    .set_headers
                    .push((API_KEY_ID_HEADER.to_string(), api_key.id.clone()));
                Some(api_key)
            }
            _ => None,
        };
        let authenticated = match (verified_token, verified_key) {
            (Some(token), Some(key)) => Authenticated::Both(token, key),
            (Some(token), None) => Authenticated::Jwt(token),
            (None, Some(key)) => Authenticated::ApiKey(key),
            (None, None) => return Err(unauthorized("no credential").into()),
        };
        work.principal = authenticated.principal();
        if self.events.auth_success != AuthSuccess::Off {
            let provider = authenticated.token().and_then(|token| {
                let jwt = self.jwt.as_ref()?;
                Some(jwt.providers.get(token.provider)?.name.clone())
            });
            work.authenticated_by = Some(AuthenticatedBy {
                provider,
                key_id: authenticated.api_key().map(|key| key.id.clone()),
            });
        }
        Ok(authenticated)
    }

    /// The token's DPoP binding (RFC 9449), after its signature and claims verified: a bound
    /// or `required` provider's token never passes as a bearer token, and one presented as
    /// `Authorization: DPoP` needs its proof, for this request as Envoy received it.
    fn check_dpop(
        &self,
        jwt: &JwtAuth,
        found: FoundToken<'_>,
        verified: &VerifiedToken,
        env: &RequestEnv<'_>,
        head: &RequestHead,
    ) -> Result<(), BindingRefusal> {
        let Some(provider) = jwt.providers.get(verified.provider) else {
            return Err(BindingRefusal {
                proof_at_fault: false,
                reason: "provider index",
            });
        };
        if jwt.sources.get(found.source) != Some(&TokenSource::Dpop) {
            return dpop::check_bearer(provider.dpop, &verified.claims);
        }
        let replay = SharedReplayTable::new(
            env.shared,
            dpop::REPLAY_KEY_PREFIX.to_string(),
            dpop::REPLAY_SLOT_COUNT,
            crate::body::replay::DEFAULT_ENTRIES_PER_SLOT,
        );
        let target = ProofTarget {
            method: &head.method,
            scheme: if self.arrived_over_tls(head) {
                "https"
            } else {
                "http"
            },
            authority: &head.authority,
            path: &head.path,
            access_token: found.token,
        };
        dpop::check_proof(
            &verified.claims,
            &mut head.header_values(dpop::DPOP_HEADER),
            &target,
            env.now_seconds(),
            provider.clock_skew_seconds,
            env.verifier,
            &replay,
        )
    }

    /// A remote provider has no key for the token: wait for the keys when they may still come
    /// (bounded by the provider's `timeout_ms`), else refuse. Without any key set the refusal is
    /// 503: the client did nothing wrong, the identity provider is unreachable.
    fn key_not_found(
        &self,
        jwt: &JwtAuth,
        missing: KeyNotFound,
        env: &RequestEnv<'_>,
        request_id: &str,
    ) -> AuthStop {
        let provider = jwt.providers.get(missing.provider);
        if let Some(source) = provider.and_then(|p| p.remote.as_ref()) {
            let local_version = env.remote_keys.version(missing.provider);
            // Only unknown kids read shared data here: the fast path never does.
            let may_wait = env.may_wait_for_keys
                && (missing.remote_set_missing
                    || remote::read_state(env.shared, source).is_ok_and(|read| {
                        remote::unknown_kid_may_wait(
                            read.state.as_ref(),
                            local_version,
                            source.min_refetch_ms,
                            env.now_ms,
                        )
                    }));
            if may_wait {
                return AuthStop::WaitForKeys(WaitTicket {
                    provider: missing.provider,
                    registered_at_ms: env.now_ms,
                    deadline_ms: env.now_ms.saturating_add(source.timeout_ms),
                    version_seen: local_version,
                    had_set: !missing.remote_set_missing,
                });
            }
        }
        if missing.remote_set_missing {
            let name = provider.map_or("?", |p| p.name.as_str());
            return AuthStop::Refused(Refusal::new(
                LocalReply::new(ErrorCode::ServiceUnavailable, request_id),
                "jwks_unavailable",
                format!("provider {name}: no key set could be fetched yet"),
            ));
        }
        AuthStop::Refused(jwt_refusal(request_id)(
            VerifyError::KeyNotFound(missing).into_failure(),
        ))
    }

    /// Rate limit: after authentication, so that a limit keyed by principal or key knows it
    /// (a refused credential is counted by IP). The local limit first (a flood refused here
    /// never reaches the service), then the service limit: `Some(AskService)` holds the
    /// request for the service's answer.
    fn rate_limit(
        &self,
        route: &Route,
        authenticated: &Authenticated<'_>,
        work: &mut Work<'_, '_>,
        env: &mut RequestEnv<'_>,
    ) -> Result<Option<Verdict>, Refusal> {
        // Decided again with the service's answer: the local limit counted this request already.
        if work.service_answer.is_none() {
            self.local_rate_limit(route, authenticated, work, env)?;
        }
        let Some((limit_index, limit)) = route
            .service_limit
            .and_then(|i| Some((i, self.service_limits.get(i)?)))
        else {
            return Ok(None);
        };
        let Some(service) = self.rate_limit_services.get(limit.service) else {
            return Err(Refusal::new(
                LocalReply::new(ErrorCode::ServiceUnavailable, &work.head.request_id),
                "rate_limit_unavailable",
                format!("{}: no such rate limit service", limit.name),
            ));
        };
        match work.service_answer {
            None => {
                let jwt_subject = authenticated.token().and_then(|t| t.subject.as_deref());
                let api_key_id = authenticated.api_key().map(|k| k.id.as_str());
                let (entry_key, entry_value) = rate_limit_service::descriptor_key(
                    &limit.key,
                    work.head,
                    jwt_subject,
                    api_key_id,
                );
                Ok(Some(Verdict::AskService(ServiceCall {
                    cluster: service.cluster.clone(),
                    message: limit.request(&service.domain, entry_key, entry_value),
                    timeout_ms: service.timeout_ms,
                })))
            }
            Some(answer) => {
                let result = match answer {
                    ServiceAnswer::Ok(_) => ServiceLimitResult::Ok,
                    ServiceAnswer::OverLimit(_) => ServiceLimitResult::OverLimit,
                    ServiceAnswer::Failed(_) => ServiceLimitResult::Failed,
                };
                work.tally
                    .push(self.metrics.service_limit(limit_index, result));
                self.apply_service_answer(limit, service, answer, work)
                    .map(|()| None)
            }
        }
    }

    /// The service's answer for the request's service limit: 429 over the limit, admitted with
    /// the answer's headers when under it, `failure_mode` when it could not answer.
    fn apply_service_answer(
        &self,
        limit: &ServiceLimit,
        service: &RateLimitService,
        answer: &ServiceAnswer,
        work: &mut Work<'_, '_>,
    ) -> Result<(), Refusal> {
        let request_id = work.head.request_id.as_str();
        let answered = match answer {
            ServiceAnswer::Ok(answered) | ServiceAnswer::OverLimit(answered) => answered,
            ServiceAnswer::Failed(why) => {
                let reason = format!(
                    "{}: rate limit service {:?} failed ({why}), failure_mode {}",
                    limit.name,
                    service.name,
                    match service.failure_mode {
                        FailureMode::Deny => "deny",
                        FailureMode::Allow => "allow",
                    }
                );
                return match service.failure_mode {
                    FailureMode::Deny => Err(Refusal::new(
                        LocalReply::new(ErrorCode::ServiceUnavailable, request_id),
                        "rate_limit_service_failed",
                        reason,
                    )),
                    FailureMode::Allow => {
                        work.allow_event = Some(("rate_limit_service_failed", reason));
                        Ok(())
                    }
                };
            }
        };
        if let Some(decision) = &answered.decision {
            work.response.rate_limit_headers =
                decision.headers(&limit.name, answered.window_seconds);
        }
        work.response
            .service_response_headers
            .clone_from(&answered.response_headers_to_add);
        if let ServiceAnswer::OverLimit(_) = answer {
            return Err(Refusal::new(
                LocalReply::new(ErrorCode::RateLimited, request_id),
                "rate_limited",
                format!(
                    "{}: over limit (rate limit service {:?})",
                    limit.name, service.name
                ),
            ));
        }
        for (name, value) in &answered.request_headers_to_add {
            work.forward.set_headers.push((name.clone(), value.clone()));
        }
        Ok(())
    }

    /// The route's local limit, in shared data.
    fn local_rate_limit(
        &self,
        route: &Route,
        authenticated: &Authenticated<'_>,
        work: &mut Work<'_, '_>,
        env: &mut RequestEnv<'_>,
    ) -> Result<(), Refusal> {
        let Some((limit_index, limit)) = route
            .rate_limit
            .and_then(|i| Some((i, self.rate_limits.get(i)?)))
        else {
            return Ok(());
        };
        let request_id = work.head.request_id.as_str();
        let Some(limiter) = env.limiter else {
            work.tally.push(
                self.metrics
                    .rate_limit(limit_index, RateLimitResult::Unavailable),
            );
            return Err(Refusal::new(
                LocalReply::new(ErrorCode::ServiceUnavailable, request_id),
                "rate_limit_unavailable",
                "rate-limit seed unavailable",
            ));
        };
        let jwt_subject = authenticated.token().and_then(|t| t.subject.as_deref());
        let api_key_id = authenticated.api_key().map(|k| k.id.as_str());
        let client_key = limit.key.client_key(work.head, jwt_subject, api_key_id);
        let decision = limiter.check(env.shared, limit, &client_key, env.now_ms);
        work.response.rate_limit_headers = decision.headers(&limit.name, limit.window_seconds);
        let result = if decision.allowed {
            RateLimitResult::Allowed
        } else {
            RateLimitResult::Limited
        };
        work.tally
            .push(self.metrics.rate_limit(limit_index, result));
        if decision.allowed {
            Ok(())
        } else {
            Err(Refusal::new(
                LocalReply::new(ErrorCode::RateLimited, request_id),
                "rate_limited",
                format!(
                    "{}: {}",
                    limit.name,
                    decision.reason.unwrap_or("limit exceeded")
                ),
            ))
        }
    }

    /// The decision once the body of a [`Verdict::NeedBody`] request has arrived whole.
    /// `headers_phase` is the [`Decision::response`] of the request's headers: its event base
    /// (route, client, the verified principal) and rate-limit headers stand for the body's
    /// decision and its event.
    pub fn check_body(
        &self,
        head: &RequestHead,
        check: &BodyCheck,
        body: &[u8],
        headers_phase: &ResponseContext,
        env: &RequestEnv<'_>,
    ) -> Decision {
        let base = &headers_phase.event_base;
        let log_path = if base.path.is_empty() {
            normalize_path_with(&head.path, self.firewall.path_parameters)
                .map(|n| n.path)
                .unwrap_or_default()
        } else {
            base.path.clone()
        };
        let mut work = Work {
            head,
            forward: Forward::default(),
            response: headers_phase.clone(),
            route: self.routes.get(check.route),
            route_index: Some(check.route),
            principal: base.principal.clone(),
            log_path,
            allow_event: None,
            kept_credential: None,
            tally: Tally::default(),
            authenticated_by: None,
            service_answer: None,
        };
        let outcome = self
            .decide_body(head, check, body, env, &mut work.tally)
            .map(|()| Verdict::Allow(Forward::default()));
        self.conclude(outcome, work)
    }

    fn decide_body(
        &self,
        head: &RequestHead,
        check: &BodyCheck,
        body: &[u8],
        env: &RequestEnv<'_>,
        tally: &mut Tally,
    ) -> Result<(), Refusal> {
        let request_id = head.request_id.as_str();
        let Some(route) = self.routes.get(check.route) else {
            return Err(Refusal::new(
                LocalReply::new(ErrorCode::ServiceUnavailable, request_id),
                "config_error",
                "route index",
            ));
        };
        if body.len() as u64 > check.max_bytes {
            return Err(Refusal::new(
                LocalReply::new(ErrorCode::PayloadTooLarge, request_id),
                "payload_too_large",
                "body over max_body_bytes",
            ));
        }
        if let Some((webhook_index, webhook)) =
            route.webhook.and_then(|w| Some((w, self.webhooks.get(w)?)))
        {
            let now = env.now_seconds();
            let metrics = &self.metrics;
            let mut refused = |refusal: crate::body::webhook::WebhookRefusal| {
                use crate::body::webhook::WebhookRefusal;
                let result = match refusal {
                    WebhookRefusal::Replayed => WebhookResult::Replayed,
                    WebhookRefusal::ReplayCheckUnavailable => WebhookResult::Unavailable,
                    _ => WebhookResult::Invalid,
                };
                tally.push(metrics.webhook(webhook_index, result));
                Refusal::new(
                    LocalReply::new(refusal.error_code(), request_id),
                    "invalid_signature",
                    format!("webhook {}: {}", webhook.name(), refusal.reason()),
                )
            };
            let verified = webhook.verify(head, body, now).map_err(&mut refused)?;
            let table = SharedReplayTable::new(
                env.shared,
                replay_key_prefix(webhook.name()),
                crate::body::replay::DEFAULT_SLOT_COUNT,
                crate::body::replay::DEFAULT_ENTRIES_PER_SLOT,
            );
            webhook
                .check_replay(&verified, &table, now)
                .map_err(&mut refused)?;
            tally.push(self.metrics.webhook(webhook_index, WebhookResult::Valid));
        }
        if let Some(schema) = &route.body_schema {
            if let Err(details) = schema.validate(body) {
                let mut reply = LocalReply::new(ErrorCode::BadRequest, request_id);
                reply.body = envelope_with_details(ErrorCode::BadRequest, request_id, &details);
                let fields: Vec<&str> = details.iter().map(|d| d.field.as_str()).collect();
                return Err(Refusal::new(
                    reply,
                    "bad_request",
                    format!("body schema: invalid fields {fields:?}"),
                ));
            }
        }
        Ok(())
    }

    /// What to change on a response: security headers on every response, CORS and rate-limit
    /// headers, `x-request-id`, and whether the body becomes the envelope. The edits borrow from
    /// the policy and the request's context: planning allocates nothing per header.
    pub fn plan_response<'a>(
        &'a self,
        ctx: &'a ResponseContext,
        status: u16,
        origin: ResponseOrigin,
    ) -> ResponseEdits<'a> {
        let mut edits = ResponseEdits::default();
        edits
            .remove
            .extend(self.security_headers.to_remove().iter().map(String::as_str));
        edits
            .set
            .extend(self.security_headers.to_set_over(ctx.over_tls));
        if !ctx.over_tls {
            // Nor an upstream's own over plain HTTP (`max-age=0` would even clear the pin).
            edits.remove.push(HSTS);
        }
        if let Some(cors) = &self.cors {
            if origin != ResponseOrigin::Filter {
                // CORS is the filter's to answer: an upstream's own `Access-Control-Allow-Origin:
                // *` would otherwise open the API to origins the allowlist refuses.
                edits.remove.extend(OWNED_RESPONSE_HEADERS.iter().copied());
            }
            for (name, value) in cors.response_headers(ctx.origin.as_deref()) {
                if name == "vary" {
                    edits.append.push((name, value));
                } else {
                    edits.set.push((name, value));
                }
            }
        }
        edits
            .set
            .extend(ctx.rate_limit_headers.iter().map(|(n, v)| (*n, v.as_str())));
        edits.set.extend(
            ctx.service_response_headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str())),
        );
        if !ctx.request_id.is_empty() {
            edits.set.push(("x-request-id", ctx.request_id.as_str()));
        }
        if self.mode == Mode::Enforce {
            let plan = self.errors.plan(status, origin, ctx.is_head);
            if let Some(code) = plan.code {
                edits.remove.extend(plan.remove_headers.iter().copied());
                if plan.remove_content_length {
                    edits.remove.push("content-length");
                }
                edits.set.extend(plan.set_headers.iter().copied());
                edits.replace_body = plan.envelope(&ctx.request_id);
                edits.error_code = Some(code);
                edits.log_body_bytes = plan.log_bytes;
            }
        }
        edits
    }
}

/// The response edits when there is no policy (the configuration was refused and every request
/// is answered 503): the default security headers and the request id, still on every response.
pub struct FallbackResponse {
    defaults: Option<SecurityHeaders>,
    request_id: String,
    over_tls: bool,
}

/// `over_tls`: whether the request is known to have arrived over TLS (`false` when the filter
/// cannot tell, so `strict-transport-security` is left out rather than sent over plain HTTP).
pub fn fallback_response_edits(request_id: &str, over_tls: bool) -> FallbackResponse {
    FallbackResponse {
        defaults: SecurityHeaders::compile(None, "security_headers").ok(),
        request_id: request_id.to_string(),
        over_tls,
    }
}

impl FallbackResponse {
    pub fn edits(&self) -> ResponseEdits<'_> {
        let mut edits = ResponseEdits::default();
        if let Some(defaults) = &self.defaults {
            edits
                .remove
                .extend(defaults.to_remove().iter().map(String::as_str));
            edits.set.extend(defaults.to_set_over(self.over_tls));
            if !self.over_tls {
                edits.remove.push(HSTS);
            }
        }
        if !self.request_id.is_empty() {
            edits.set.push(("x-request-id", self.request_id.as_str()));
        }
        edits
    }
}

/// One change to a header map, for a host that edits a map header by header (the dynamic
/// module) instead of writing it whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderChange<'h> {
    /// Remove every value of this name.
    Remove(&'h [u8]),
    /// Replace every value of this name by this one.
    Set(&'h [u8], &'h [u8]),
    /// Add this value to the name (which had none, or after a `Set` of it).
    Add(&'h [u8], &'h [u8]),
}

/// What a host that edits header by header does with `changes` (Envoy's dynamic-module
/// `set_header` with no value removes, `set_header` replaces, `add_header` appends), on a map
/// held as pairs: the model the tests and the module's fuzz target check changes against.
pub fn apply_changes<'h>(map: &mut Vec<(&'h [u8], &'h [u8])>, changes: &[HeaderChange<'h>]) {
    for change in changes {
        match *change {
            HeaderChange::Remove(name) => map.retain(|(n, _)| *n != name),
            HeaderChange::Set(name, value) => {
                map.retain(|(n, _)| *n != name);
                map.push((name, value));
            }
            HeaderChange::Add(name, value) => map.push((name, value)),
        }
    }
}

/// Changes to a response, in the order: remove, set (replace), append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseEdits<'a> {
    pub remove: Vec<&'a str>,
    pub set: Vec<(&'a str, &'a str)>,
    pub append: Vec<(&'a str, &'a str)>,
    /// The envelope that replaces the body, when the response is an error being rewritten.
    pub replace_body: Option<String>,
    pub error_code: Option<ErrorCode>,
    /// How much of the original body to keep for the log.
    pub log_body_bytes: usize,
}

impl<'a> ResponseEdits<'a> {
    /// The whole header map after the edits, given the map as Envoy gives it (names lower case,
    /// values any bytes): the adapter reads the map once and writes it back once, instead of one
    /// host call per header. Nothing is copied: the result borrows from the map and the edits,
    /// and a header the edits do not name goes back byte for byte.
    /// The same result as [`ResponseEdits::merge`], as the changes that lead there from
    /// `headers`: only what differs (a header already as wanted costs nothing; a name the map
    /// lacks is added, not set). The host applies them in order.
    pub fn changes<'h>(&'h self, headers: &[(&'h [u8], &'h [u8])]) -> Vec<HeaderChange<'h>>
    where
        'a: 'h,
    {
        let has = |name: &[u8]| headers.iter().any(|(n, _)| *n == name);
        let mut changes = Vec::with_capacity(self.set.len() + self.append.len() + 2);
        for (i, name) in self.remove.iter().enumerate() {
            let name = name.as_bytes();
            let again = self.remove[..i].iter().any(|r| r.as_bytes() == name);
            if !again && has(name) && !self.set.iter().any(|(s, _)| s.as_bytes() == name) {
                changes.push(HeaderChange::Remove(name));
            }
        }
        for (i, (name, value)) in self.set.iter().enumerate() {
            let (name, value) = (name.as_bytes(), value.as_bytes());
            if self.set[..i].iter().any(|(s, _)| s.as_bytes() == name) {
                // A second value of a name set already (merge keeps both).
                changes.push(HeaderChange::Add(name, value));
                continue;
            }
            let mut current = headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v);
            let first = current.next();
            let only_value = current.next().is_none();
            let set_again = self.set[i + 1..].iter().any(|(s, _)| s.as_bytes() == name);
            match first {
                Some(existing) if existing == value && only_value && !set_again => {}
                Some(_) => changes.push(HeaderChange::Set(name, value)),
                None => changes.push(HeaderChange::Add(name, value)),
            }
        }
        for (i, &(name, value)) in self.append.iter().enumerate() {
            let listed = |v: &[u8]| {
                v.split(|b| *b == b',')
                    .any(|item| item.trim_ascii().eq_ignore_ascii_case(value.as_bytes()))
            };
            // What merge looks at: the map's values that stay, the set ones, those appended.
            let removed = |n: &[u8]| {
                self.remove.iter().any(|r| r.as_bytes() == n)
                    || self.set.iter().any(|(s, _)| s.as_bytes() == n)
            };
            let present = headers
                .iter()
                .any(|(n, v)| *n == name.as_bytes() && !removed(n) && listed(v))
                || self
                    .set
                    .iter()
                    .any(|(n, v)| *n == name && listed(v.as_bytes()))
                || self.append[..i]
                    .iter()
                    .any(|(n, v)| *n == name && listed(v.as_bytes()));
            if !present {
                changes.push(HeaderChange::Add(name.as_bytes(), value.as_bytes()));
            }
        }
        changes
    }

    pub fn merge<'h>(&'h self, headers: &[(&'h [u8], &'h [u8])]) -> Vec<(&'h [u8], &'h [u8])>
    where
        'a: 'h,
    {
        let mut merged: Vec<(&[u8], &[u8])> =
            Vec::with_capacity(headers.len() + self.set.len() + self.append.len());
        merged.extend(headers.iter().copied().filter(|(name, _)| {
            !self.remove.iter().any(|r| r.as_bytes() == *name)
                && !self.set.iter().any(|(s, _)| s.as_bytes() == *name)
        }));
        merged.extend(self.set.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        for &(name, value) in &self.append {
            // A list header (`Vary`) gets the value once, however many parts of the filter
            // (or the upstream) added it.
            let present = merged.iter().any(|(n, v)| {
                *n == name.as_bytes()
                    && v.split(|b| *b == b',')
                        .any(|item| item.trim_ascii().eq_ignore_ascii_case(value.as_bytes()))
            });
            if !present {
                merged.push((name.as_bytes(), value.as_bytes()));
            }
        }
        merged
    }
}

/// The `:status` of a response header map.
pub fn response_status(headers: &[(&[u8], &[u8])]) -> u16 {
    headers
        .iter()
        .find(|(name, _)| *name == b":status")
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

fn jwt_refusal(request_id: &str) -> impl Fn(JwtFailure) -> Refusal + '_ {
    move |failure| {
        let (code, challenge, reason) = match failure {
            JwtFailure::Missing => (ErrorCode::Unauthorized, CHALLENGE_NO_TOKEN, "no token"),
            JwtFailure::Refused {
                expired: true,
                reason,
            } => (ErrorCode::TokenExpired, CHALLENGE_BAD_TOKEN, reason),
            JwtFailure::Refused {
                expired: false,
                reason,
            } => (ErrorCode::InvalidToken, CHALLENGE_BAD_TOKEN, reason),
        };
        Refusal::new(
            LocalReply::new(code, request_id).with_header("www-authenticate", challenge),
            "auth_failure",
            reason,
        )
    }
}

/// A refused DPoP binding: the proof's own fault gets RFC 9449's challenge, the rest the usual
/// `invalid_token` answer.
fn dpop_refusal(request_id: &str, refusal: BindingRefusal) -> Refusal {
    let challenge = if refusal.proof_at_fault {
        CHALLENGE_BAD_DPOP_PROOF
    } else {
        CHALLENGE_BAD_TOKEN
    };
    Refusal::new(
        LocalReply::new(ErrorCode::InvalidToken, request_id)
            .with_header("www-authenticate", challenge),
        "auth_failure",
        format!("dpop: {}", refusal.reason),
    )
}

fn api_key_refusal(request_id: &str, reason: &str) -> Refusal {
    Refusal::new(
        LocalReply::new(ErrorCode::InvalidApiKey, request_id)
            .with_header("www-authenticate", CHALLENGE_BAD_TOKEN),
        "auth_failure",
        format!("api key: {reason}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<'a>(list: &[(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
        list.iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }

    #[test]
    fn response_edits_remove_replace_and_append() {
        let mut headers = bytes(&[
            (":status", "200"),
            ("server", "upstream/1.0"),
            ("x-frame-options", "SAMEORIGIN"),
            ("vary", "accept-encoding"),
            ("content-type", "application/json"),
        ]);
        // A value that is not UTF-8 goes back byte for byte.
        headers.push((b"x-latin-1", b"caf\xe9"));
        let edits = ResponseEdits {
            remove: vec!["server"],
            set: vec![("x-frame-options", "DENY"), ("x-request-id", "r1")],
            append: vec![("vary", "Origin")],
            ..ResponseEdits::default()
        };
        let merged = edits.merge(&headers);
        assert_eq!(
            merged,
            vec![
                (&b":status"[..], &b"200"[..]),
                (b"vary", b"accept-encoding"),
                (b"content-type", b"application/json"),
                (b"x-latin-1", b"caf\xe9"),
                (b"x-frame-options", b"DENY"),
                (b"x-request-id", b"r1"),
                (b"vary", b"Origin"),
            ]
        );
        assert_eq!(response_status(&merged), 200);
        assert_eq!(response_status(&[]), 0);
        // Already listed (a preflight's own Vary): not added twice.
        let preflight = bytes(&[
            (":status", "204"),
            ("vary", "origin, Access-Control-Request-Method"),
        ]);
        let merged = edits.merge(&preflight);
        assert_eq!(merged.iter().filter(|(n, _)| *n == b"vary").count(), 1);
    }
}

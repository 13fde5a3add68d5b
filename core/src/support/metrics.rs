//! The filter's metrics: which families exist ([`FAMILIES`]), the name of every series a policy
//! can produce ([`MetricsPlan`], built once per configuration), and which series a decision
//! counts ([`Tally`]). The adapter defines each series once per VM at configure time, keeps
//! the host's id for each [`MetricId`], and only increments: per request, a few integer
//! increments, no string formatting.
//!
//! Proxy-wasm metrics have a name and no labels. Envoy exposes a metric `foo` as the stat
//! `wasmcustom.foo`, and labels only exist through tag extraction (`stats_config.stats_tags` in
//! Envoy, `extraStatTags` in Istio). Every series is therefore named
//! `<family>.<label>.<value>.<label>.<value>…` (e.g.
//! `api_guard_requests_total.route.documents.decision.refused.code.invalid_token`), and one
//! regex per label name ([`stats_tag_regex`]) turns it into `<family>{label="value",…}`.
//!
//! Label values are bounded and never come from a client: route, rate-limit, provider and
//! webhook names from the configuration (characters other than ASCII letters, digits, `_` and
//! `-` become `_`, so that a value never contains the `.` the tag regexes split on), codes from
//! the fixed [`ErrorCode`] list, and fixed result words. Which client was refused is in the
//! security event log, never in a metric.

use crate::pipeline::policy::Policy;
use crate::response::reply::ErrorCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

impl MetricKind {
    /// The name Prometheus gives the kind (`# TYPE` lines).
    pub fn prometheus_type(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// A metric family: one name, its kind, its label names (in the order they appear in a series
/// name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub kind: MetricKind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

pub const REQUESTS: Family = Family {
    name: "api_guard_requests_total",
    kind: MetricKind::Counter,
    labels: &["route", "decision", "code"],
    help: "Requests decided, by route, decision (allowed, refused, reported) and code",
};
pub const RATE_LIMIT: Family = Family {
    name: "api_guard_rate_limit_total",
    kind: MetricKind::Counter,
    labels: &["limit", "result"],
    help: "Rate-limit checks by limit and result (allowed, limited, unavailable)",
};
pub const RATE_LIMIT_SERVICE: Family = Family {
    name: "api_guard_rate_limit_service_total",
    kind: MetricKind::Counter,
    labels: &["limit", "result"],
    help: "Answers of the rate limit service by limit and result (ok, over_limit, failed)",
};
pub const JWKS_FETCHES: Family = Family {
    name: "api_guard_jwks_fetches_total",
    kind: MetricKind::Counter,
    labels: &["provider", "result"],
    help: "Remote JWKS fetches this proxy made, by provider and result (success, failure)",
};
pub const JWKS_KEYS: Family = Family {
    name: "api_guard_jwks_keys",
    kind: MetricKind::Gauge,
    labels: &["provider"],
    help: "Keys of a remote provider's set that verify tokens now",
};
pub const JWKS_SECONDS_SINCE_SUCCESS: Family = Family {
    name: "api_guard_jwks_seconds_since_success",
    kind: MetricKind::Gauge,
    labels: &["provider"],
    help: "Seconds since a remote provider's set was last fetched successfully (by any worker)",
};
pub const TOKEN_CACHE: Family = Family {
    name: "api_guard_token_cache_total",
    kind: MetricKind::Counter,
    labels: &["result"],
    help: "Verified-token cache lookups by result (hit, miss)",
};
pub const WEBHOOK: Family = Family {
    name: "api_guard_webhook_verifications_total",
    kind: MetricKind::Counter,
    labels: &["webhook", "result"],
    help:
        "Webhook deliveries checked, by webhook and result (valid, invalid, replayed, unavailable)",
};
pub const EVENTS_DROPPED: Family = Family {
    name: "api_guard_events_dropped_total",
    kind: MetricKind::Counter,
    labels: &[],
    help: "Security events not written because of events.max_per_second",
};
pub const FAIL_CLOSED: Family = Family {
    name: "api_guard_fail_closed_total",
    kind: MetricKind::Counter,
    labels: &[],
    help: "Requests answered 503 because the filter could not decide (host error, refused configuration)",
};
pub const CONFIG_REFUSED: Family = Family {
    name: "api_guard_config_refused",
    kind: MetricKind::Gauge,
    labels: &[],
    help: "1 while the plugin configuration is refused (every request fails closed)",
};

/// Every family the filter exports (dashboards and alerts may name these, nothing else).
pub const FAMILIES: &[Family] = &[
    REQUESTS,
    RATE_LIMIT,
    RATE_LIMIT_SERVICE,
    JWKS_FETCHES,
    JWKS_KEYS,
    JWKS_SECONDS_SINCE_SUCCESS,
    TOKEN_CACHE,
    WEBHOOK,
    EVENTS_DROPPED,
    FAIL_CLOSED,
    CONFIG_REFUSED,
];

/// Every label name any family has.
pub fn label_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for family in FAMILIES {
        for label in family.labels {
            if !names.contains(label) {
                names.push(label);
            }
        }
    }
    names
}

/// The Envoy `stats_tags` regex for a label: the first group is what tag extraction removes from
/// the stat name, the second the label's value. Anchored on the filter's families, so that no
/// other Envoy stat is touched: `wasmcustom.` for the wasm filter, `dynamicmodulescustom.`
/// for the dynamic module (Envoy's namespaces for the two kinds of custom stats).
pub fn stats_tag_regex(label: &str) -> String {
    format!(
        r"^(?:wasmcustom|dynamicmodulescustom)\.api_guard_[a-z_]+(?:\.[a-z_]+\.[^.]+)*?(\.{label}\.([^.]+))"
    )
}

/// What the rate limit service answered for a service limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceLimitResult {
    Ok,
    OverLimit,
    /// An error, a timeout or no answer: `failure_mode` decided.
    Failed,
}

impl ServiceLimitResult {
    const ALL: [ServiceLimitResult; 3] = [
        ServiceLimitResult::Ok,
        ServiceLimitResult::OverLimit,
        ServiceLimitResult::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ServiceLimitResult::Ok => "ok",
            ServiceLimitResult::OverLimit => "over_limit",
            ServiceLimitResult::Failed => "failed",
        }
    }
}

/// What a request decision was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionLabel {
    Allowed,
    Refused,
    /// Report mode: it would have been refused, and went on.
    Reported,
}

impl DecisionLabel {
    pub const ALL: [DecisionLabel; 3] = [
        DecisionLabel::Allowed,
        DecisionLabel::Refused,
        DecisionLabel::Reported,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DecisionLabel::Allowed => "allowed",
            DecisionLabel::Refused => "refused",
            DecisionLabel::Reported => "reported",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitResult {
    Allowed,
    Limited,
    /// No shared seed: the route fails closed.
    Unavailable,
}

impl RateLimitResult {
    const ALL: [RateLimitResult; 3] = [
        RateLimitResult::Allowed,
        RateLimitResult::Limited,
        RateLimitResult::Unavailable,
    ];

    fn name(self) -> &'static str {
        match self {
            RateLimitResult::Allowed => "allowed",
            RateLimitResult::Limited => "limited",
            RateLimitResult::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    Valid,
    Invalid,
    Replayed,
    /// The replay store could not answer.
    Unavailable,
}

impl WebhookResult {
    const ALL: [WebhookResult; 4] = [
        WebhookResult::Valid,
        WebhookResult::Invalid,
        WebhookResult::Replayed,
        WebhookResult::Unavailable,
    ];

    fn name(self) -> &'static str {
        match self {
            WebhookResult::Valid => "valid",
            WebhookResult::Invalid => "invalid",
            WebhookResult::Replayed => "replayed",
            WebhookResult::Unavailable => "unavailable",
        }
    }
}

const FETCH_RESULTS: [&str; 2] = ["success", "failure"];
const CACHE_RESULTS: [&str; 2] = ["hit", "miss"];
/// The `route` value of requests no route matched (refused before routing).
pub const NO_ROUTE: &str = "_unmatched";

/// The `code` of an allowed request.
pub const OK_CODE: &str = "ok";
/// `api_guard_requests_total` series per route: allowed `ok`, refused and reported with each
/// error code.
const REQUEST_SERIES_PER_ROUTE: usize = 1 + 2 * ErrorCode::ALL.len();

/// The (decision, code) pairs of one route's `api_guard_requests_total`, in layout order: an
/// allowed request's code is `ok`, a refused or reported one's an error code.
pub fn request_series() -> Vec<(DecisionLabel, &'static str)> {
    let mut series = vec![(DecisionLabel::Allowed, OK_CODE)];
    for decision in [DecisionLabel::Refused, DecisionLabel::Reported] {
        series.extend(ErrorCode::ALL.iter().map(|c| (decision, c.code())));
    }
    series
}

/// One series of a policy's metrics: an index into [`MetricsPlan::definitions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MetricId(pub u32);

/// One series to define: its proxy-wasm metric name and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricDefinition {
    pub name: String,
    pub kind: MetricKind,
}

/// A label value from a configured name: only characters the tag regexes and Prometheus keep.
pub fn label_value(name: &str) -> String {
    let value: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if value.is_empty() {
        "_".to_string()
    } else {
        value
    }
}

fn series_name(family: &Family, values: &[&str]) -> String {
    let mut name = family.name.to_string();
    for (label, value) in family.labels.iter().zip(values) {
        name.push('.');
        name.push_str(label);
        name.push('.');
        name.push_str(value);
    }
    name
}

/// Every series one policy can produce, in a fixed layout, so that a decision finds its series
/// by arithmetic on indexes.
#[derive(Debug, Clone, Default)]
pub struct MetricsPlan {
    definitions: Vec<MetricDefinition>,
    /// Route slots: the policy's routes, then [`NO_ROUTE`].
    route_slots: usize,
    requests_base: usize,
    rate_limit_base: usize,
    webhook_base: usize,
    jwks_fetch_base: usize,
    jwks_keys_base: usize,
    jwks_age_base: usize,
    /// After every other series: the service limits' (by index in `service_limits`).
    service_limit_base: usize,
    /// Provider index (in `jwt.providers`) to its slot among the remote providers.
    remote_provider_slots: Vec<Option<usize>>,
}

/// The series every plan has, at fixed ids (also when the configuration was refused).
pub const EVENTS_DROPPED_ID: MetricId = MetricId(0);
pub const FAIL_CLOSED_ID: MetricId = MetricId(1);
pub const CONFIG_REFUSED_ID: MetricId = MetricId(2);
pub const TOKEN_CACHE_HIT_ID: MetricId = MetricId(3);
pub const TOKEN_CACHE_MISS_ID: MetricId = MetricId(4);

impl MetricsPlan {
    /// The series that exist without a policy (the configuration was refused).
    pub fn fixed() -> MetricsPlan {
        let mut definitions = Vec::new();
        for family in [EVENTS_DROPPED, FAIL_CLOSED, CONFIG_REFUSED] {
            definitions.push(MetricDefinition {
                name: family.name.to_string(),
                kind: family.kind,
            });
        }
        for result in CACHE_RESULTS {
            definitions.push(MetricDefinition {
                name: series_name(&TOKEN_CACHE, &[result]),
                kind: TOKEN_CACHE.kind,
            });
        }
        let len = definitions.len();
        MetricsPlan {
            definitions,
            route_slots: 0,
            requests_base: len,
            rate_limit_base: len,
            webhook_base: len,
            jwks_fetch_base: len,
            jwks_keys_base: len,
            jwks_age_base: len,
            service_limit_base: len,
            remote_provider_slots: Vec::new(),
        }
    }

    /// Every series `policy` can produce.
    pub fn for_policy(policy: &Policy) -> MetricsPlan {
        let mut plan = MetricsPlan::fixed();
        let route_labels: Vec<String> = policy
            .routes
            .iter()
            .map(|r| label_value(&r.name))
            .chain(std::iter::once(NO_ROUTE.to_string()))
            .collect();
        plan.route_slots = route_labels.len();
        plan.requests_base = plan.definitions.len();
        for route in &route_labels {
            for (decision, code) in request_series() {
                plan.definitions.push(MetricDefinition {
                    name: series_name(&REQUESTS, &[route, decision.name(), code]),
                    kind: REQUESTS.kind,
                });
            }
        }
        let mut next = plan.definitions.len();
        plan.rate_limit_base = next;
        for limit in &policy.rate_limits {
            let value = label_value(&limit.name);
            for result in RateLimitResult::ALL {
                plan.definitions.push(MetricDefinition {
                    name: series_name(&RATE_LIMIT, &[&value, result.name()]),
                    kind: RATE_LIMIT.kind,
                });
            }
        }
        next += policy.rate_limits.len() * RateLimitResult::ALL.len();
        plan.webhook_base = next;
        for webhook in &policy.webhooks {
            let value = label_value(webhook.name());
            for result in WebhookResult::ALL {
                plan.definitions.push(MetricDefinition {
                    name: series_name(&WEBHOOK, &[&value, result.name()]),
                    kind: WEBHOOK.kind,
                });
            }
        }
        next += policy.webhooks.len() * WebhookResult::ALL.len();
        let providers = policy
            .jwt
            .as_ref()
            .map_or(&[][..], |j| j.providers.as_slice());
        let mut remote_names = Vec::new();
        plan.remote_provider_slots = providers
            .iter()
            .map(|p| {
                p.remote.as_ref().map(|_| {
                    remote_names.push(label_value(&p.name));
                    remote_names.len() - 1
                })
            })
            .collect();
        plan.jwks_fetch_base = next;
        for name in &remote_names {
            for result in FETCH_RESULTS {
                plan.definitions.push(MetricDefinition {
                    name: series_name(&JWKS_FETCHES, &[name, result]),
                    kind: JWKS_FETCHES.kind,
                });
            }
        }
        next += remote_names.len() * FETCH_RESULTS.len();
        plan.jwks_keys_base = next;
        for name in &remote_names {
            plan.definitions.push(MetricDefinition {
                name: series_name(&JWKS_KEYS, &[name]),
                kind: JWKS_KEYS.kind,
            });
        }
        next += remote_names.len();
        plan.jwks_age_base = next;
        for name in &remote_names {
            plan.definitions.push(MetricDefinition {
                name: series_name(&JWKS_SECONDS_SINCE_SUCCESS, &[name]),
                kind: JWKS_SECONDS_SINCE_SUCCESS.kind,
            });
        }
        plan.service_limit_base = plan.definitions.len();
        for limit in &policy.service_limits {
            let value = label_value(&limit.name);
            for result in ServiceLimitResult::ALL {
                plan.definitions.push(MetricDefinition {
                    name: series_name(&RATE_LIMIT_SERVICE, &[&value, result.name()]),
                    kind: RATE_LIMIT_SERVICE.kind,
                });
            }
        }
        plan
    }

    /// `api_guard_rate_limit_service_total` for service limit `limit` (index in
    /// `service_limits`).
    pub fn service_limit(&self, limit: usize, result: ServiceLimitResult) -> Option<MetricId> {
        let result = ServiceLimitResult::ALL.iter().position(|r| *r == result)?;
        self.id(self.service_limit_base + limit * ServiceLimitResult::ALL.len() + result)
    }

    /// The series to define, indexed by [`MetricId`].
    pub fn definitions(&self) -> &[MetricDefinition] {
        &self.definitions
    }

    fn id(&self, index: usize) -> Option<MetricId> {
        (index < self.definitions.len())
            .then(|| u32::try_from(index).ok().map(MetricId))
            .flatten()
    }

    /// `api_guard_requests_total` for a request on route `route` (`None`: no route matched).
    pub fn request(
        &self,
        route: Option<usize>,
        decision: DecisionLabel,
        code: Option<ErrorCode>,
    ) -> Option<MetricId> {
        if self.route_slots == 0 {
            return None;
        }
        let slot = route
            .unwrap_or(self.route_slots - 1)
            .min(self.route_slots - 1);
        let within = match (decision, code) {
            (DecisionLabel::Allowed, None) => 0,
            (DecisionLabel::Refused | DecisionLabel::Reported, Some(code)) => {
                let code = ErrorCode::ALL.iter().position(|c| *c == code)?;
                let reported = usize::from(decision == DecisionLabel::Reported);
                1 + reported * ErrorCode::ALL.len() + code
            }
            // An allow has no error code; a refusal always has one.
            _ => return None,
        };
        self.id(self.requests_base + slot * REQUEST_SERIES_PER_ROUTE + within)
    }

    pub fn rate_limit(&self, limit: usize, result: RateLimitResult) -> Option<MetricId> {
        let result = RateLimitResult::ALL.iter().position(|r| *r == result)?;
        let index = self.rate_limit_base + limit * RateLimitResult::ALL.len() + result;
        (index < self.webhook_base)
            .then(|| self.id(index))
            .flatten()
    }

    pub fn webhook(&self, webhook: usize, result: WebhookResult) -> Option<MetricId> {
        let result = WebhookResult::ALL.iter().position(|r| *r == result)?;
        let index = self.webhook_base + webhook * WebhookResult::ALL.len() + result;
        (index < self.jwks_fetch_base)
            .then(|| self.id(index))
            .flatten()
    }

    fn remote_slot(&self, provider: usize) -> Option<usize> {
        self.remote_provider_slots.get(provider).copied().flatten()
    }

    /// `api_guard_jwks_fetches_total` for provider `provider` (index in `jwt.providers`).
    pub fn jwks_fetch(&self, provider: usize, success: bool) -> Option<MetricId> {
        let slot = self.remote_slot(provider)?;
        self.id(self.jwks_fetch_base + slot * FETCH_RESULTS.len() + usize::from(!success))
    }

    pub fn jwks_keys(&self, provider: usize) -> Option<MetricId> {
        self.id(self.jwks_keys_base + self.remote_slot(provider)?)
    }

    pub fn jwks_seconds_since_success(&self, provider: usize) -> Option<MetricId> {
        self.id(self.jwks_age_base + self.remote_slot(provider)?)
    }
}

/// The counters one decision increments: at most six (the request's outcome, its rate limit,
/// its service limit, its token-cache lookup, its webhook check). Fixed size: no allocation per
/// request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    ids: [u32; 6],
    len: u8,
}

impl Tally {
    pub fn push(&mut self, id: Option<MetricId>) {
        if let (Some(id), Some(slot)) = (id, self.ids.get_mut(usize::from(self.len))) {
            *slot = id.0;
            self.len += 1;
        }
    }

    pub fn one(id: MetricId) -> Tally {
        let mut tally = Tally::default();
        tally.push(Some(id));
        tally
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn ids(&self) -> impl Iterator<Item = MetricId> + '_ {
        self.ids
            .iter()
            .take(usize::from(self.len))
            .map(|id| MetricId(*id))
    }

    /// `self`'s counters, then `other`'s (as many as fit).
    pub fn merge(&mut self, other: Tally) {
        for id in other.ids() {
            self.push(Some(id));
        }
    }
}

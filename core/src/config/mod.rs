//! The plugin configuration (the user contract: README.md, "Configuration"): parsed strictly,
//! validated whole, and compiled once per VM into an immutable [`Policy`]. Every error names the
//! JSON path of the offending value.

pub mod error;

use crate::authn::api_keys::{ApiKeys, ApiKeysConfig};
use crate::authn::credentials::CredentialLocations;
use crate::authn::jwt::{JwtAuth, JwtConfig};
use crate::authz::{OwnerConfig, OwnerRule, RequireConfig, Requirement};
use crate::body::schema::BodySchema;
use crate::body::webhook::{Webhook, WebhookConfig};
use crate::config::error::{index, join, ConfigError};
use crate::limits::rate_limit::{self, RateLimit};
use crate::limits::rate_limit_service::{self, RateLimitService};
use crate::pipeline::policy::{Auth, Mode, Policy, RequireTls, Route, API_KEY_ID_HEADER};
use crate::request::firewall::{AmbiguousCase, Firewall, FirewallConfig, OVERRIDE_HEADERS};
use crate::request::network::IpList;
use crate::request::routes::{CompiledMatch, MatchConfig};
use crate::response::cors::{Cors, CorsConfig};
use crate::response::error_rewrite::{ErrorRewrite, ErrorsConfig};
use crate::response::security_headers::{SecurityHeaders, SecurityHeadersConfig};
use crate::support::events::EventsConfig;
use crate::support::metrics::MetricsPlan;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: RawMode,
    #[serde(default)]
    jwt: Option<JwtConfig>,
    #[serde(default)]
    api_keys: Option<ApiKeysConfig>,
    routes: Vec<RawRoute>,
    /// Compiled by `rate_limit::compile_section` (limit names are user-chosen keys).
    #[serde(default)]
    rate_limits: Option<Value>,
    /// Compiled by `rate_limit_service::compile_services`.
    #[serde(default)]
    rate_limit_services: Option<Value>,
    #[serde(default)]
    cors: Option<CorsConfig>,
    #[serde(default)]
    security_headers: Option<SecurityHeadersConfig>,
    #[serde(default)]
    errors: Option<ErrorsConfig>,
    #[serde(default)]
    webhooks: BTreeMap<String, WebhookConfig>,
    #[serde(default)]
    events: EventsConfig,
    #[serde(default)]
    firewall: FirewallConfig,
    /// CIDRs refused on every route, before anything else is decided about the request.
    #[serde(default)]
    deny_ips: Option<Vec<String>>,
    /// `true`, `false` or `"redirect"`: compiled by `compile_require_tls`.
    #[serde(default)]
    require_tls: Option<Value>,
    /// Whether `x-forwarded-proto: https` counts as TLS on a plain-text connection.
    #[serde(default)]
    trust_forwarded_proto: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawMode {
    #[default]
    Enforce,
    Report,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawAuth {
    None,
    Jwt,
    ApiKey,
    JwtOrApiKey,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    #[serde(rename = "match")]
    matcher: MatchConfig,
    auth: RawAuth,
    #[serde(default)]
    require: Option<RequireConfig>,
    #[serde(default)]
    owner: Option<OwnerConfig>,
    #[serde(default)]
    rate_limit: Option<RawRateLimitRef>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    webhook: Option<String>,
    #[serde(default)]
    body_schema: Option<Value>,
    #[serde(default)]
    allow_ips: Option<Vec<String>>,
    #[serde(default)]
    deny_ips: Option<Vec<String>>,
}

/// `routes[].rate_limit`: one limit's name, or a list of names (at most one local limit and one
/// service limit: the local one is checked first).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRateLimitRef {
    One(String),
    Several(Vec<String>),
}

impl RawRateLimitRef {
    fn names(&self) -> Vec<&str> {
        match self {
            RawRateLimitRef::One(name) => vec![name.as_str()],
            RawRateLimitRef::Several(names) => names.iter().map(String::as_str).collect(),
        }
    }
}

/// The limits routes may name: the local ones (shared data) and the services'.
struct LimitNames {
    local: Vec<String>,
    service: Vec<String>,
    /// Every name in `rate_limits`, compiled or not: a limit that failed is reported once, at
    /// its own path, not again on every route that names it.
    declared: Vec<String>,
}

/// Parses and compiles the plugin configuration. All errors are returned, not just the first.
pub fn load(bytes: &[u8]) -> Result<Policy, Vec<ConfigError>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(vec![ConfigError::new(
            "",
            "the plugin configuration is empty: api-guard needs at least \"routes\"",
        )]);
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    let raw: RawConfig = serde_path_to_error::deserialize(&mut *deserializer).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![ConfigError::new(
            path,
            without_quoted_value(&e.into_inner().to_string()),
        )]
    })?;
    // One document and nothing after it: `{..} {..}` is not a configuration.
    deserializer.end().map_err(|e| {
        vec![ConfigError::new(
            "",
            format!("unexpected bytes after the configuration: {e}"),
        )]
    })?;
    compile(raw)
}

/// serde's type errors quote the value they met (`invalid type: string "whsec_..", expected a
/// sequence`): a secret written where a list was expected would land in Envoy's log. The value
/// is cut out; the path and the expectation stay.
fn without_quoted_value(message: &str) -> String {
    let Some(start) = message.find("string \"") else {
        return message.to_string();
    };
    let value_start = start + "string ".len();
    let end = message
        .rfind("\", expected")
        .filter(|&end| end > value_start)
        .map(|end| end + 1);
    match end {
        Some(end) => format!("{}a string{}", &message[..start], &message[end..]),
        None => format!("{}a string (value not shown)", &message[..start]),
    }
}

/// Collects errors from the compilation of one section, keeping the compiled value when there
/// are none.
fn collect<T>(result: Result<T, Vec<ConfigError>>, errors: &mut Vec<ConfigError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(mut e) => {
            errors.append(&mut e);
            None
        }
    }
}

fn compile(raw: RawConfig) -> Result<Policy, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let jwt = raw
        .jwt
        .as_ref()
        .and_then(|c| collect(JwtAuth::compile(c, "jwt"), &mut errors));
    let api_keys = raw
        .api_keys
        .as_ref()
        .and_then(|c| collect(ApiKeys::compile(c, "api_keys"), &mut errors));
    let rate_limits: BTreeMap<String, RateLimit> = match &raw.rate_limits {
        Some(section) => collect(
            rate_limit::compile_section(section, "rate_limits"),
            &mut errors,
        )
        .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let services: BTreeMap<String, RateLimitService> = match &raw.rate_limit_services {
        Some(section) => collect(
            rate_limit_service::compile_services(section, "rate_limit_services"),
            &mut errors,
        )
        .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let service_names: Vec<String> = services.keys().cloned().collect();
    let mut service_limits = Vec::new();
    if let Some(members) = raw.rate_limits.as_ref().and_then(Value::as_object) {
        for (name, value) in members {
            if rate_limit_service::is_service_limit(value) {
                let at = join("rate_limits", name);
                if let Some(limit) = collect(
                    rate_limit_service::compile_limit(name, value, &at, &service_names),
                    &mut errors,
                ) {
                    service_limits.push(limit);
                }
            }
        }
    }
    let limit_names = LimitNames {
        local: rate_limits.keys().cloned().collect(),
        service: service_limits.iter().map(|l| l.name.clone()).collect(),
        declared: raw
            .rate_limits
            .as_ref()
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
    };
    let cors = raw
        .cors
        .as_ref()
        .and_then(|c| collect(Cors::compile(c, "cors"), &mut errors));
    let security_headers = collect(
        SecurityHeaders::compile(raw.security_headers.as_ref(), "security_headers"),
        &mut errors,
    );
    let error_rewrite = collect(
        ErrorRewrite::compile(raw.errors.as_ref(), "errors"),
        &mut errors,
    );
    let mut webhooks = Vec::new();
    let mut webhook_names = Vec::new();
    for (name, cfg) in &raw.webhooks {
        if let Some(webhook) = collect(
            Webhook::compile(name, cfg, &join("webhooks", name)),
            &mut errors,
        ) {
            webhooks.push(webhook);
            webhook_names.push(name.clone());
        }
    }

    let require_tls = collect(compile_require_tls(raw.require_tls.as_ref()), &mut errors)
        .unwrap_or(RequireTls::Off);
    // `trust_forwarded_proto` also decides whether `strict-transport-security` is sent, so it
    // stands without `require_tls` (behind a TLS-terminating proxy that Envoy trusts).
    let deny_ips = raw
        .deny_ips
        .as_ref()
        .and_then(|cidrs| collect(IpList::compile(cidrs, "deny_ips", false), &mut errors));
    if raw.routes.is_empty() {
        errors.push(ConfigError::new(
            "routes",
            "at least one route is required (a request that matches no route is refused)",
        ));
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.iter().enumerate() {
        let at = index("routes", i);
        if let Some(route) = compile_route(r, &at, &raw, &limit_names, &webhook_names, &mut errors)
        {
            if raw.routes[..i].iter().any(|other| other.name == r.name) {
                errors.push(ConfigError::new(
                    join(&at, "name"),
                    format!("duplicate route name {:?}", r.name),
                ));
            }
            routes.push(route);
        }
    }
    let (Some(security_headers), Some(errors_rewrite)) = (security_headers, error_rewrite) else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut identity_headers = jwt
        .as_ref()
        .map(|j| j.identity_headers.clone())
        .unwrap_or_default();
    identity_headers.push(API_KEY_ID_HEADER.to_string());
    let credentials = CredentialLocations::compile(jwt.as_ref(), api_keys.as_ref());
    let mut twin_guarded_headers = identity_headers.clone();
    for name in credentials
        .header_names()
        .chain(OVERRIDE_HEADERS.iter().copied())
    {
        if !twin_guarded_headers.iter().any(|h| h == name) {
            twin_guarded_headers.push(name.to_string());
        }
    }
    let firewall = Firewall::compile(&raw.firewall);
    let lower_case_matchers = match firewall.ambiguous_case {
        AmbiguousCase::Reject => routes.iter().map(|r| r.matcher.to_lower_case()).collect(),
        AmbiguousCase::Allow => Vec::new(),
    };
    let routes_have_upper_case = routes.iter().any(|r| r.matcher.has_upper_case());
    let mode = match raw.mode {
        RawMode::Enforce => Mode::Enforce,
        RawMode::Report => Mode::Report,
    };
    let mut policy = Policy {
        mode,
        jwt,
        api_keys,
        routes,
        rate_limits: rate_limits.into_values().collect(),
        rate_limit_services: services.into_values().collect(),
        service_limits,
        cors,
        security_headers,
        errors: errors_rewrite,
        webhooks,
        identity_headers,
        events: raw.events,
        firewall,
        credentials,
        twin_guarded_headers,
        lower_case_matchers,
        routes_have_upper_case,
        deny_ips,
        require_tls,
        trust_forwarded_proto: raw.trust_forwarded_proto,
        metrics: MetricsPlan::default(),
        auth_successes: std::sync::atomic::AtomicU64::new(0),
    };
    policy.metrics = MetricsPlan::for_policy(&policy);
    Ok(policy)
}

/// A route's limits: at most one local limit and one service limit.
fn compile_route_limits(
    names: &[&str],
    at: &str,
    limit_names: &LimitNames,
    errors: &mut Vec<ConfigError>,
) -> (Option<usize>, Option<usize>) {
    let (mut local, mut service) = (None, None);
    if names.is_empty() {
        errors.push(ConfigError::new(at, "names no rate limit"));
    }
    let several = names.len() > 1;
    for (i, name) in names.iter().enumerate() {
        let entry_at = if several {
            index(at, i)
        } else {
            at.to_string()
        };
        let found = if let Some(l) = limit_names.local.iter().position(|n| n == name) {
            (&mut local, l, "local")
        } else if let Some(l) = limit_names.service.iter().position(|n| n == name) {
            (&mut service, l, "service")
        } else {
            if !limit_names.declared.iter().any(|n| n == name) {
                errors.push(ConfigError::new(
                    entry_at,
                    format!("unknown rate limit {name:?}"),
                ));
            }
            continue;
        };
        let (slot, position, kind) = found;
        if slot.is_some() {
            errors.push(ConfigError::new(
                entry_at,
                format!("a route carries at most one {kind} limit"),
            ));
        } else {
            *slot = Some(position);
        }
    }
    (local, service)
}

/// `require_tls`: `false` (the default), `true` (400 `tls_required`) or `"redirect"` (308 to
/// https for GET and HEAD).
fn compile_require_tls(value: Option<&Value>) -> Result<RequireTls, Vec<ConfigError>> {
    match value {
        None | Some(Value::Bool(false)) => Ok(RequireTls::Off),
        Some(Value::Bool(true)) => Ok(RequireTls::Refuse),
        Some(Value::String(s)) if s == "redirect" => Ok(RequireTls::Redirect),
        Some(_) => Err(vec![ConfigError::new(
            "require_tls",
            "must be true, false or \"redirect\"",
        )]),
    }
}

fn compile_route(
    r: &RawRoute,
    at: &str,
    raw: &RawConfig,
    limit_names: &LimitNames,
    webhook_names: &[String],
    errors: &mut Vec<ConfigError>,
) -> Option<Route> {
    let before = errors.len();
    if r.name.is_empty() {
        errors.push(ConfigError::new(join(at, "name"), "must not be empty"));
    }
    let auth = match r.auth {
        RawAuth::None => Auth::None,
        RawAuth::Jwt => Auth::Jwt,
        RawAuth::ApiKey => Auth::ApiKey,
        RawAuth::JwtOrApiKey => Auth::JwtOrApiKey,
    };
    let auth_at = join(at, "auth");
    if matches!(auth, Auth::Jwt | Auth::JwtOrApiKey) && raw.jwt.is_none() {
        errors.push(ConfigError::new(
            &auth_at,
            "needs a \"jwt\" section with at least one provider",
        ));
    }
    if matches!(auth, Auth::ApiKey | Auth::JwtOrApiKey) && raw.api_keys.is_none() {
        errors.push(ConfigError::new(&auth_at, "needs an \"api_keys\" section"));
    }
    let matcher = collect(
        CompiledMatch::compile(&r.matcher, &join(at, "match")),
        errors,
    );
    let require = r
        .require
        .as_ref()
        .and_then(|c| collect(Requirement::compile(c, &join(at, "require")), errors));
    if r.require.is_some() && auth == Auth::None {
        errors.push(ConfigError::new(
            join(at, "require"),
            "requirements need an authenticated route (auth is \"none\")",
        ));
    }
    let owner = match (&r.owner, &matcher) {
        (Some(cfg), Some(m)) => collect(
            OwnerRule::compile(cfg, &join(at, "owner"), &m.template_param_names()),
            errors,
        ),
        _ => None,
    };
    if r.owner.is_some() && !matches!(auth, Auth::Jwt | Auth::JwtOrApiKey) {
        errors.push(ConfigError::new(
            join(at, "owner"),
            "an owner rule compares a token claim, so the route's auth must be \"jwt\" or \"jwt_or_api_key\"",
        ));
    }
    let (rate_limit, service_limit) = match &r.rate_limit {
        None => (None, None),
        Some(names) => {
            compile_route_limits(&names.names(), &join(at, "rate_limit"), limit_names, errors)
        }
    };
    if r.max_body_bytes == Some(0) {
        errors.push(ConfigError::new(
            join(at, "max_body_bytes"),
            "must be at least 1",
        ));
    }
    let webhook = match &r.webhook {
        None => None,
        Some(name) => match webhook_names.iter().position(|n| n == name) {
            Some(i) => Some(i),
            None => {
                if !raw.webhooks.contains_key(name) {
                    errors.push(ConfigError::new(
                        join(at, "webhook"),
                        format!("unknown webhook {name:?}"),
                    ));
                }
                None
            }
        },
    };
    let body_schema = r
        .body_schema
        .as_ref()
        .and_then(|s| collect(BodySchema::compile(s, &join(at, "body_schema")), errors));
    let allow_ips = r
        .allow_ips
        .as_ref()
        .and_then(|cidrs| collect(IpList::compile(cidrs, &join(at, "allow_ips"), true), errors));
    let deny_ips = r
        .deny_ips
        .as_ref()
        .and_then(|cidrs| collect(IpList::compile(cidrs, &join(at, "deny_ips"), false), errors));
    if errors.len() > before {
        return None;
    }
    Some(Route {
        name: r.name.clone(),
        matcher: matcher?,
        auth,
        require,
        owner,
        rate_limit,
        service_limit,
        max_body_bytes: r.max_body_bytes,
        webhook,
        body_schema,
        allow_ips,
        deny_ips,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_bytes_after_the_document_are_refused() {
        let one = r#"{"routes": [{"name": "a", "match": {"path_prefix": "/"}, "auth": "none"}]}"#;
        assert!(load(one.as_bytes()).is_ok());
        for extra in [" {}", " x", "{}", "\n[]"] {
            let errors = load(format!("{one}{extra}").as_bytes())
                .err()
                .unwrap_or_default();
            assert_eq!(errors.len(), 1, "{extra:?}");
            assert!(
                errors[0].message.contains("after the configuration"),
                "{errors:?}"
            );
        }
        assert!(load(format!("{one} \n\t").as_bytes()).is_ok());
    }

    #[test]
    fn type_errors_never_quote_the_value() {
        let config = r#"{"routes": [{"name": "a", "match": {"path_prefix": "/"}, "auth": "none"}],
            "webhooks": {"h": {"scheme": "stripe", "secrets": "whsec_notAnArray\"quoted, expected"}}}"#;
        let errors = load(config.as_bytes()).err().unwrap_or_default();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "webhooks.h.secrets");
        assert!(!errors[0].message.contains("whsec"), "{errors:?}");
        assert!(
            errors[0].message.contains("expected a sequence"),
            "{errors:?}"
        );
    }

    fn errors_of(json: &str) -> Vec<String> {
        match load(json.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn unknown_rate_limit_is_named_with_its_path() {
        let errors = errors_of(
            r#"{"rate_limits":{"login":{"requests":5,"window_seconds":900,"key":"ip"}},
                "routes":[{"name":"a","match":{"path_prefix":"/"},"auth":"none"},
                          {"name":"b","match":{"path_prefix":"/b"},"auth":"none"},
                          {"name":"c","match":{"path_prefix":"/c"},"auth":"none","rate_limit":"logn"}]}"#,
        );
        assert_eq!(
            errors,
            vec![r#"routes[2].rate_limit: unknown rate limit "logn""#.to_string()]
        );
    }

    #[test]
    fn unknown_fields_are_errors_with_their_path() {
        let errors = errors_of(
            r#"{"routes":[{"name":"a","match":{"path_prefix":"/"},"auth":"none","rate_limt":"x"}]}"#,
        );
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("routes[0].rate_limt: unknown field `rate_limt`"),
            "{errors:?}"
        );
        let errors = errors_of(r#"{"routes":[],"extra":1}"#);
        assert!(errors[0].contains("unknown field `extra`"), "{errors:?}");
    }

    #[test]
    fn sections_need_their_credentials() {
        let errors =
            errors_of(r#"{"routes":[{"name":"a","match":{"path_prefix":"/"},"auth":"api_key"}]}"#);
        assert_eq!(
            errors,
            vec!["routes[0].auth: needs an \"api_keys\" section".to_string()]
        );
        let errors = errors_of(
            r#"{"routes":[{"name":"a","match":{"path_prefix":"/"},"auth":"none","require":{"scopes_any":["x"]}}]}"#,
        );
        assert_eq!(
            errors,
            vec![
                "routes[0].require: requirements need an authenticated route (auth is \"none\")"
                    .to_string()
            ]
        );
    }

    #[test]
    fn a_complete_config_compiles() {
        let config = r#"{
          "mode": "enforce",
          "api_keys": { "header": "x-api-key", "keys": [{ "id": "billing", "prefix": "ag_live_",
             "sha256": "0000000000000000000000000000000000000000000000000000000000000000", "scopes": ["invoices:read"] }] },
          "routes": [
            { "name": "login", "match": { "path_exact": "/login", "methods": ["POST"] }, "auth": "none", "rate_limit": "login" },
            { "name": "internal", "match": { "path_prefix": "/internal/" }, "auth": "api_key", "require": { "scopes_all": ["invoices:read"] } },
            { "name": "hook", "match": { "path_exact": "/webhooks/github", "methods": ["POST"] }, "auth": "none", "webhook": "github" },
            { "name": "default", "match": { "path_prefix": "/" }, "auth": "none", "max_body_bytes": 1048576,
              "body_schema": { "type": "object", "required": ["name"] } }
          ],
          "rate_limits": { "login": { "requests": 5, "window_seconds": 900, "key": "ip" } },
          "cors": { "allow_origins": ["https://app.example.com"], "allow_credentials": true },
          "security_headers": { "set": { "content-security-policy": "default-src 'self'" } },
          "errors": { "rewrite_upstream": "5xx", "log_upstream_body_bytes": 1024 },
          "webhooks": { "github": { "scheme": "github", "secrets": ["0123456789abcdef0123"] } },
          "events": { "max_per_second": 50 }
        }"#;
        let policy = load(config.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(policy.routes.len(), 4);
        assert_eq!(policy.routes[0].rate_limit, Some(0));
        assert_eq!(policy.routes[2].webhook, Some(0));
        assert!(policy
            .identity_headers
            .contains(&"x-api-key-id".to_string()));
    }
}

//! `rate_limits`: the section, each limit, and the client key it counts by.

use super::*;

/// What to do when CAS retries run out (or shared data fails): `refuse` (default) keeps the limit
/// exact at the price of a spurious 429 under extreme contention; `allow` lets the request
/// through uncounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnContention {
    #[default]
    Refuse,
    Allow,
}

/// One entry of `rate_limits` as written by the user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests: u64,
    pub window_seconds: u64,
    /// `ip` | `principal` | `api_key` | `header:<name>`
    pub key: String,
    /// Overrides `rate_limits.max_tracked_keys` for this limit.
    #[serde(default)]
    pub max_tracked_keys: Option<u64>,
    /// Overrides `rate_limits.on_contention` for this limit.
    #[serde(default)]
    pub on_contention: Option<OnContention>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The downstream address Envoy computed (never a raw X-Forwarded-For).
    Ip,
    /// JWT `sub` or API key id; the IP for anonymous requests.
    Principal,
    /// The API key id; the IP for requests without one.
    ApiKey,
    /// The value of this (lower-case) request header; the IP when absent.
    Header(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub name: String,
    pub requests: u64,
    pub window_seconds: u64,
    pub key: LimitKey,
    pub max_tracked_keys: u64,
    pub on_contention: OnContention,
}

pub(super) fn is_limit_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) fn check_max_tracked_keys(value: u64, at: &str, errors: &mut Vec<ConfigError>) -> bool {
    if (WAYS as u64..=MAX_MAX_TRACKED_KEYS).contains(&value) {
        true
    } else {
        errors.push(ConfigError::new(
            at,
            format!("must be between {WAYS} and {MAX_MAX_TRACKED_KEYS}"),
        ));
        false
    }
}

impl LimitKey {
    pub fn parse(key: &str) -> Result<LimitKey, String> {
        match key {
            "ip" => Ok(LimitKey::Ip),
            "principal" => Ok(LimitKey::Principal),
            "api_key" => Ok(LimitKey::ApiKey),
            _ => match key.strip_prefix("header:") {
                Some(name) => {
                    let name = name.to_ascii_lowercase();
                    if is_header_name(&name) {
                        Ok(LimitKey::Header(name))
                    } else {
                        Err(format!("{key:?}: not a valid header name after \"header:\""))
                    }
                }
                None => Err(format!(
                    "unknown key {key:?}: expected \"ip\", \"principal\", \"api_key\" or \"header:<name>\""
                )),
            },
        }
    }

    /// The client key of a request under this limit. Kinds are prefixed so that a JWT subject,
    /// an API key id, a header value and an IP that happen to be spelt alike never share a
    /// counter. The fallback to the IP makes a missing identity stricter (per address), never a
    /// way around the limit.
    pub fn client_key(
        &self,
        head: &RequestHead,
        jwt_subject: Option<&str>,
        api_key_id: Option<&str>,
    ) -> String {
        let by_ip = || format!("ip:{}", head.client_ip());
        match self {
            LimitKey::Ip => by_ip(),
            LimitKey::Principal => match (jwt_subject, api_key_id) {
                (Some(subject), _) => format!("sub:{subject}"),
                (None, Some(id)) => format!("key:{id}"),
                (None, None) => by_ip(),
            },
            LimitKey::ApiKey => api_key_id.map_or_else(by_ip, |id| format!("key:{id}")),
            LimitKey::Header(name) => head
                .header(name)
                .map_or_else(by_ip, |value| format!("header:{value}")),
        }
    }
}

impl RateLimit {
    /// Validates one entry; `at` is its JSON path (`rate_limits.login`).
    pub fn compile(
        name: &str,
        cfg: &RateLimitConfig,
        at: &str,
    ) -> Result<RateLimit, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if !is_limit_name(name) {
            errors.push(ConfigError::new(
                at,
                "a rate limit name is 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        if cfg.requests == 0 {
            errors.push(ConfigError::new(join(at, "requests"), "must be at least 1"));
        }
        if !(1..=MAX_WINDOW_SECONDS).contains(&cfg.window_seconds) {
            errors.push(ConfigError::new(
                join(at, "window_seconds"),
                format!("must be between 1 and {MAX_WINDOW_SECONDS}"),
            ));
        }
        let key = match LimitKey::parse(&cfg.key) {
            Ok(key) => Some(key),
            Err(message) => {
                errors.push(ConfigError::new(join(at, "key"), message));
                None
            }
        };
        let max_tracked_keys = cfg.max_tracked_keys.unwrap_or(DEFAULT_MAX_TRACKED_KEYS);
        check_max_tracked_keys(max_tracked_keys, &join(at, "max_tracked_keys"), &mut errors);
        match key {
            Some(key) if errors.is_empty() => Ok(RateLimit {
                name: name.to_string(),
                requests: cfg.requests,
                window_seconds: cfg.window_seconds,
                key,
                max_tracked_keys,
                on_contention: cfg.on_contention.unwrap_or_default(),
            }),
            _ => Err(errors),
        }
    }

    pub(super) fn window_ms(&self) -> u64 {
        self.window_seconds.saturating_mul(1000).max(1)
    }

    pub(super) fn buckets(&self) -> u64 {
        (self.max_tracked_keys / WAYS as u64).max(1)
    }
}

/// Compiles the whole `rate_limits` section: an object whose members are limits, except the
/// reserved settings `max_tracked_keys` (a number, default for every limit) and `on_contention`
/// (`"refuse"` | `"allow"`). A limit may override either. `at` is the section's path.
pub fn compile_section(
    section: &Value,
    at: &str,
) -> Result<BTreeMap<String, RateLimit>, Vec<ConfigError>> {
    let Some(members) = section.as_object() else {
        return Err(vec![ConfigError::new(
            at,
            "must be an object mapping limit names to limits",
        )]);
    };
    let mut errors = Vec::new();
    let mut default_max_tracked_keys = None;
    if let Some(value) = members.get("max_tracked_keys") {
        let path = join(at, "max_tracked_keys");
        match value.as_u64() {
            Some(n) => {
                if check_max_tracked_keys(n, &path, &mut errors) {
                    default_max_tracked_keys = Some(n);
                }
            }
            None => errors.push(ConfigError::new(path, "must be a positive integer")),
        }
    }
    let mut default_on_contention = None;
    if let Some(value) = members.get("on_contention") {
        match OnContention::deserialize(value) {
            Ok(policy) => default_on_contention = Some(policy),
            Err(e) => errors.push(ConfigError::new(join(at, "on_contention"), e.to_string())),
        }
    }
    let mut limits = BTreeMap::new();
    for (name, value) in members {
        // A limit that names a `service` is the service's (`rate_limit_service`).
        if RESERVED_NAMES.contains(&name.as_str())
            || crate::limits::rate_limit_service::is_service_limit(value)
        {
            continue;
        }
        let entry_at = join(at, name);
        let cfg: RateLimitConfig = match serde_path_to_error::deserialize(value) {
            Ok(cfg) => cfg,
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." {
                    entry_at
                } else {
                    join(&entry_at, &inner)
                };
                errors.push(ConfigError::new(path, e.into_inner().to_string()));
                continue;
            }
        };
        let cfg = RateLimitConfig {
            max_tracked_keys: cfg.max_tracked_keys.or(default_max_tracked_keys),
            on_contention: cfg.on_contention.or(default_on_contention),
            ..cfg
        };
        match RateLimit::compile(name, &cfg, &entry_at) {
            Ok(limit) => {
                limits.insert(name.clone(), limit);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(limits)
    } else {
        Err(errors)
    }
}

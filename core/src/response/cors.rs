//! CORS: the filter answers preflights itself and decides which origins may read responses.
//!
//! The threat CORS guards against is a page on another site reading what the browser fetched
//! with the user's cookies. So the answer for an origin that is not listed is "no CORS headers
//! at all", never a guess, and `Access-Control-Allow-Origin` names the exact origin whenever
//! credentials are allowed (browsers ignore `*` with credentials; reflecting any origin with
//! credentials would hand every site the user's session).
//!
//! Origins are compared as browsers serialise them (RFC 6454, Fetch "serialization of an
//! origin"): `scheme://host[:port]`, scheme and host lower case, no default port, no path. The
//! configuration must be written in that form, so that what is compared is what the user wrote.

use crate::authn::jwt::is_header_name;
use crate::config::error::{index, join, ConfigError};
use crate::request::head::RequestHead;
use crate::request::routes::compile_methods;
use serde::Deserialize;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    pub allow_origins: Vec<String>,
    #[serde(default = "default_allow_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default = "default_max_age_seconds")]
    pub max_age_seconds: u64,
}

/// The usual REST verbs. OPTIONS is left out: a preflight itself is never preflighted, and a
/// script that sends OPTIONS on purpose is rare enough to list explicitly.
pub const DEFAULT_ALLOW_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

fn default_allow_methods() -> Vec<String> {
    DEFAULT_ALLOW_METHODS
        .iter()
        .map(|m| m.to_string())
        .collect()
}

/// Ten minutes: long enough to spare most preflights, short enough that a tightened policy
/// reaches browsers soon.
pub const DEFAULT_MAX_AGE_SECONDS: u64 = 600;

/// Browsers cap the preflight cache anyway (Firefox at 24 hours, Chromium at 2 hours); a larger
/// value is a typo, not a wish.
pub const MAX_MAX_AGE_SECONDS: u64 = 86_400;

fn default_max_age_seconds() -> u64 {
    DEFAULT_MAX_AGE_SECONDS
}

/// Response headers that the filter sets on allowed cross-origin responses and that scripts
/// would otherwise not see: the rate-limit headers (spec "Rate-limit headers") and the request id.
pub const DEFAULT_EXPOSE_HEADERS: [&str; 7] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
    "x-request-id",
];

/// The CORS response headers the filter owns when `cors` is configured. The adapter should
/// remove these from upstream responses before adding [`Cors::response_headers`]: an upstream
/// that answers `Access-Control-Allow-Origin: *` on its own would otherwise open the API to
/// origins the policy refuses.
pub const OWNED_RESPONSE_HEADERS: [&str; 6] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowedOrigins {
    /// `"*"`: any origin, answered with a literal `*` (never reflected), never with credentials.
    Any,
    /// Serialised origins (and possibly `null`), exactly as browsers send them.
    Listed(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    origins: AllowedOrigins,
    allow_methods: Vec<String>,
    allow_headers: Vec<String>,
    allow_credentials: bool,
    /// Header values rendered once at load.
    allow_methods_value: String,
    allow_headers_value: String,
    expose_headers_value: String,
    max_age_value: String,
    warnings: Vec<ConfigError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreflightOutcome {
    /// Answer 204 with these headers; the request must not reach the upstream.
    Allowed(Vec<(String, String)>),
    /// Answer 403 `cors_rejected`; the text is the reason for the security-event log.
    Rejected(&'static str),
}

pub const REJECT_ORIGIN: &str = "origin not allowed";
pub const REJECT_METHOD: &str = "method not allowed";
pub const REJECT_HEADER: &str = "header not allowed";
pub const REJECT_SEVERAL_ORIGINS: &str = "several origin headers";
pub const REJECT_SEVERAL_METHODS: &str = "several access-control-request-method headers";

/// The request's `Origin`, when it carries exactly one. Two `Origin` headers are not something
/// a browser sends; guessing which one counts could let one of them slip past the list.
pub fn request_origin(head: &RequestHead) -> Option<&str> {
    let mut origins = head.header_values("origin");
    let first = origins.next()?;
    match origins.next() {
        Some(_) => None,
        None => Some(first),
    }
}

impl Cors {
    pub fn compile(cfg: &CorsConfig, at: &str) -> Result<Cors, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let origins = compile_origins(cfg, at, &mut errors, &mut warnings);
        let allow_methods = compile_methods(
            &cfg.allow_methods,
            &join(at, "allow_methods"),
            "omit the field for the default (GET, HEAD, POST, PUT, PATCH, DELETE)",
            &mut errors,
        );
        let allow_headers =
            compile_header_names(&cfg.allow_headers, &join(at, "allow_headers"), &mut errors);
        let expose_headers = compile_header_names(
            &cfg.expose_headers,
            &join(at, "expose_headers"),
            &mut errors,
        );
        if cfg.max_age_seconds > MAX_MAX_AGE_SECONDS {
            errors.push(ConfigError::new(
                join(at, "max_age_seconds"),
                format!(
                    "must be at most {MAX_MAX_AGE_SECONDS} (browsers cap the preflight cache at 24 hours or less)"
                ),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut exposed: Vec<String> = DEFAULT_EXPOSE_HEADERS
            .iter()
            .map(|h| h.to_string())
            .collect();
        for name in expose_headers {
            if !exposed.contains(&name) {
                exposed.push(name);
            }
        }
        Ok(Cors {
            origins,
            allow_methods_value: allow_methods.join(", "),
            allow_headers_value: allow_headers.join(", "),
            expose_headers_value: exposed.join(", "),
            max_age_value: cfg.max_age_seconds.to_string(),
            allow_methods,
            allow_headers,
            allow_credentials: cfg.allow_credentials,
            warnings,
        })
    }

    /// Accepted but risky settings, for the lead to log at plugin start.
    pub fn warnings(&self) -> &[ConfigError] {
        &self.warnings
    }

    /// Preflight = OPTIONS + Origin + Access-Control-Request-Method. `None` when the request is
    /// not a preflight (it then goes through routing and authentication like any other).
    /// Preflights carry no credentials by design (Fetch), so they are decided here alone.
    pub fn preflight(&self, head: &RequestHead) -> Option<PreflightOutcome> {
        if head.method != "OPTIONS"
            || !head.has_header("origin")
            || !head.has_header("access-control-request-method")
        {
            return None;
        }
        let Some(origin) = request_origin(head) else {
            return Some(PreflightOutcome::Rejected(REJECT_SEVERAL_ORIGINS));
        };
        let Some(allow_origin) = self.allow_origin_value(origin) else {
            return Some(PreflightOutcome::Rejected(REJECT_ORIGIN));
        };
        let mut methods = head.header_values("access-control-request-method");
        let (Some(method), None) = (methods.next(), methods.next()) else {
            return Some(PreflightOutcome::Rejected(REJECT_SEVERAL_METHODS));
        };
        // Methods are case-sensitive (RFC 9110 9.1); browsers upper-case only the six standard
        // ones, so `fetch(url, {method: "patch"})` really asks for "patch", which is not "PATCH".
        if !self.allow_methods.iter().any(|m| m == method) {
            return Some(PreflightOutcome::Rejected(REJECT_METHOD));
        }
        // Browsers list here exactly the headers they will then check against our answer
        // (Fetch: the CORS-unsafe request-header names), so every one of them must be allowed;
        // no CORS-safelisted exemption applies to a name that appears in this list.
        for value in head.header_values("access-control-request-headers") {
            for name in value.split(',') {
                let name = name.trim_matches([' ', '\t']);
                if name.is_empty() {
                    continue;
                }
                let name = name.to_ascii_lowercase();
                if !self.allow_headers.contains(&name) {
                    return Some(PreflightOutcome::Rejected(REJECT_HEADER));
                }
            }
        }
        let mut headers = vec![
            (
                "access-control-allow-origin".to_string(),
                allow_origin.to_string(),
            ),
            (
                "access-control-allow-methods".to_string(),
                self.allow_methods_value.clone(),
            ),
        ];
        if !self.allow_headers_value.is_empty() {
            headers.push((
                "access-control-allow-headers".to_string(),
                self.allow_headers_value.clone(),
            ));
        }
        headers.push((
            "access-control-max-age".to_string(),
            self.max_age_value.clone(),
        ));
        if self.allow_credentials {
            headers.push((
                "access-control-allow-credentials".to_string(),
                "true".to_string(),
            ));
        }
        // The answer depends on all three request headers, so a shared cache must key on them.
        headers.push((
            "vary".to_string(),
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".to_string(),
        ));
        Some(PreflightOutcome::Allowed(headers))
    }

    /// Headers for a response to an actual (non-preflight) request, upstream or the filter's own
    /// error reply, given the request's origin (see [`request_origin`]). An allowed origin gets
    /// `Access-Control-Allow-Origin`, `-Allow-Credentials` (when configured) and
    /// `-Expose-Headers`; any other request gets no CORS header. `Vary: Origin` is always
    /// returned, since the answer depends on the origin: the adapter must *add* it (an upstream
    /// may already vary on other headers), and *set* the others.
    pub fn response_headers<'a>(&'a self, origin: Option<&str>) -> Vec<(&'static str, &'a str)> {
        let mut headers = Vec::with_capacity(4);
        if let Some(allow_origin) = origin.and_then(|o| self.allow_origin_value(o)) {
            headers.push(("access-control-allow-origin", allow_origin));
            if self.allow_credentials {
                headers.push(("access-control-allow-credentials", "true"));
            }
            headers.push((
                "access-control-expose-headers",
                self.expose_headers_value.as_str(),
            ));
        }
        headers.push(("vary", "Origin"));
        headers
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, or `None` when it is not allowed.
    /// A listed origin is answered with the configured (canonical) string, so no byte the client
    /// chose is reflected; browsers send origins in that canonical form, so they match it.
    fn allow_origin_value(&self, origin: &str) -> Option<&str> {
        match &self.origins {
            // `*` with credentials is refused at load, so a literal `*` is always correct here.
            AllowedOrigins::Any => Some("*"),
            // Scheme and host are case-insensitive and a port is digits; listed origins are
            // lower case (checked at load), so a case-insensitive match is the comparison
            // browsers would make.
            AllowedOrigins::Listed(list) => list
                .iter()
                .find(|allowed| allowed.eq_ignore_ascii_case(origin))
                .map(String::as_str),
        }
    }
}

fn compile_origins(
    cfg: &CorsConfig,
    at: &str,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> AllowedOrigins {
    let field = join(at, "allow_origins");
    if cfg.allow_origins.is_empty() {
        errors.push(ConfigError::new(
            &field,
            "must list at least one origin; remove the \"cors\" section to allow no cross-origin access",
        ));
    }
    if cfg.allow_origins.iter().any(|o| o == "*") {
        if cfg.allow_origins.len() > 1 {
            errors.push(ConfigError::new(
                &field,
                "\"*\" already allows every origin: list it alone, or list origins without it",
            ));
        }
        if cfg.allow_credentials {
            errors.push(ConfigError::new(
                &field,
                "\"*\" cannot be combined with allow_credentials: true (it would let every site make requests with the user's cookies); list the origins exactly",
            ));
        }
        return AllowedOrigins::Any;
    }
    let mut listed: Vec<String> = Vec::with_capacity(cfg.allow_origins.len());
    for (i, origin) in cfg.allow_origins.iter().enumerate() {
        let origin_at = index(&field, i);
        if origin == "null" {
            if cfg.allow_credentials {
                warnings.push(ConfigError::new(
                    &origin_at,
                    "\"null\" is the origin of sandboxed iframes, file: and data: pages and redirected requests: any site can send it, so with allow_credentials any site can make credentialed requests",
                ));
            }
        } else if let Err(message) = check_origin(origin) {
            errors.push(ConfigError::new(&origin_at, message));
            continue;
        }
        if listed.contains(origin) {
            errors.push(ConfigError::new(
                &origin_at,
                format!("duplicate origin \"{origin}\""),
            ));
        } else {
            listed.push(origin.clone());
        }
    }
    AllowedOrigins::Listed(listed)
}

/// Checks that `origin` is a serialised origin as a browser sends it: `http` or `https`, `://`,
/// a host, an optional non-default port, nothing else.
fn check_origin(origin: &str) -> Result<(), String> {
    if origin.contains('*') {
        return Err(format!(
            "\"{origin}\": wildcards are not supported: list each origin exactly (or \"*\" alone)"
        ));
    }
    let lower = origin.to_ascii_lowercase();
    if lower != origin {
        return Err(format!(
            "\"{origin}\": origins are compared as browsers send them, in lower case: write \"{lower}\""
        ));
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!(
            "\"{origin}\" is not an origin: expected scheme://host[:port], e.g. \"https://app.example.com\""
        ));
    };
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return Err(format!("\"{origin}\": the scheme must be http or https")),
    };
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "\"{origin}\": an origin has no path, query or trailing slash: write \"{scheme}://{}\"",
            rest.split(['/', '?', '#']).next().unwrap_or_default()
        ));
    }
    if rest.contains('@') {
        return Err(format!("\"{origin}\": an origin has no user information"));
    }
    let (host, port) = split_host_port(rest);
    if let Some(port) = port {
        check_port(port).map_err(|m| format!("\"{origin}\": {m}"))?;
        if port == default_port {
            return Err(format!(
                "\"{origin}\": browsers never send the default port: write \"{scheme}://{host}\""
            ));
        }
    }
    check_origin_host(host).map_err(|m| format!("\"{origin}\": {m}"))
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 literal.
fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.split_once(']') {
            Some((v6, after)) => {
                let host = &authority[..v6.len() + 1];
                match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if after.is_empty() => (host, None),
                    // Junk after `]`: keep it in the host, which then fails the host check.
                    None => (authority, None),
                }
            }
            None => (authority, None),
        };
    }
    match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

fn check_port(port: &str) -> Result<(), String> {
    let valid = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        // Browsers serialise ports without leading zeros, so "0443" could never match.
        && !port.starts_with('0')
        && port.parse::<u16>().is_ok();
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid port \"{port}\": expected a number from 1 to 65535 without leading zeros"
        ))
    }
}

fn check_origin_host(host: &str) -> Result<(), String> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            // Browsers serialise IPv6 hosts compressed (RFC 5952); anything else never matches.
            Ok(addr) if addr.to_string() == inner => Ok(()),
            Ok(addr) => Err(format!("browsers write this IPv6 address as \"[{addr}]\"")),
            Err(_) => Err(format!("\"{host}\" is not an IPv6 address")),
        };
    }
    if host.is_empty() {
        return Err("the host is empty".to_string());
    }
    if host.len() > 253 {
        return Err("the host is longer than 253 characters".to_string());
    }
    // A host of digits and dots is an IPv4 address to a browser (which would rewrite "1.2.3"
    // as "1.2.0.3"), so it must be one in dotted-quad form.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(addr) if addr.to_string() == host => Ok(()),
            _ => Err(format!(
                "\"{host}\" is not an IPv4 address in dotted-quad form"
            )),
        };
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err("empty label in the host (leading, trailing or double \".\")".to_string());
        }
        if label.len() > 63 {
            return Err(format!("label \"{label}\" is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "\"{host}\" is not a host name: use lower-case letters, digits, \"-\" and \".\" (punycode for international names)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label \"{label}\" starts or ends with \"-\""));
        }
    }
    Ok(())
}

/// Validates a list of header names: lower case, valid tokens, no duplicates, no `*` (a
/// wildcard would not cover `authorization` and is ignored with credentials; listing the
/// names keeps the policy readable and the same in every browser).
fn compile_header_names(
    names: &[String],
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<String> {
    for (i, name) in names.iter().enumerate() {
        let at = index(field, i);
        if name == "*" {
            errors.push(ConfigError::new(
                at,
                "\"*\" is not supported: list the header names",
            ));
        } else if is_header_name(name) {
            if names[..i].contains(name) {
                errors.push(ConfigError::new(at, format!("duplicate header \"{name}\"")));
            }
        } else if is_header_name(&name.to_ascii_lowercase()) {
            errors.push(ConfigError::new(
                at,
                format!(
                    "header names are written in lower case: write \"{}\"",
                    name.to_ascii_lowercase()
                ),
            ));
        } else {
            errors.push(ConfigError::new(
                at,
                format!("\"{name}\" is not a valid header name"),
            ));
        }
    }
    names.to_vec()
}

#[cfg(test)]
mod tests;

//! The request firewall: what api-guard refuses or removes because an upstream framework would
//! read the request otherwise than the filter does (the `firewall` section of the config).
//!
//! Every rule here closes a parser differential: the filter decides on one reading of the
//! request, and Tomcat, Spring, Express, Rack or IIS act on another.
//! - `;` path parameters (`/admin;x=1/x` is `/admin/x` to servlet containers): see
//!   [`PathParameters`], applied by `routes::normalize_path_with`;
//! - case: Express, IIS and ASP.NET route `/ADMIN/x` to the `/admin` handler, so a path whose
//!   route would change if case were ignored is refused ([`AmbiguousCase`]);
//! - method and URL overrides (`X-HTTP-Method-Override`, `X-Original-URL`, `?_method=`) make an
//!   upstream act on a method or path the filter never checked ([`OverrideHeaders`]);
//! - header-name twins: CGI, WSGI and Rack turn `x_user_id` and `x-user-id` into the same
//!   variable (the CVE-2024-45614 class), so a twin of a header the filter owns is removed.

use crate::request::routes::PathParameters;
use serde::Deserialize;

/// Headers that make an upstream act on another method or path than the request line says
/// (Symfony, Laravel, Express `method-override`, IIS URL Rewrite, Zend).
pub const OVERRIDE_HEADERS: [&str; 6] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
];

/// Query parameters that override the method (Express `method-override` reads `?_method=`).
pub const OVERRIDE_QUERY_PARAMETERS: [&str; 1] = ["_method"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    #[serde(default)]
    pub path_parameters: PathParameters,
    #[serde(default)]
    pub ambiguous_case: AmbiguousCase,
    #[serde(default)]
    pub override_headers: OverrideHeaders,
}

/// A path whose route depends on letter case (`/ADMIN/x` when `/admin/` is a route).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmbiguousCase {
    /// 400 `bad_request` when ignoring ASCII case would pick another route.
    #[default]
    Reject,
    /// The upstream routes case-sensitively (Spring, Tomcat, Go's mux): no check.
    Allow,
}

/// What to do with method- and URL-override headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverrideHeaders {
    /// Remove them before the request goes upstream; refuse `?_method=` (400).
    #[default]
    Strip,
    /// Refuse a request that carries one (400 `bad_request`).
    Reject,
    /// Pass them on (the upstream is trusted to ignore them, or needs them).
    Forward,
}

/// The compiled `firewall` section.
#[derive(Debug, Clone)]
pub struct Firewall {
    pub path_parameters: PathParameters,
    pub ambiguous_case: AmbiguousCase,
    pub override_headers: OverrideHeaders,
}

impl Firewall {
    pub fn compile(config: &FirewallConfig) -> Firewall {
        Firewall {
            path_parameters: config.path_parameters,
            ambiguous_case: config.ambiguous_case,
            override_headers: config.override_headers,
        }
    }

    /// Whether `name` is an override header (or its underscore twin).
    pub fn is_override_header(name: &str) -> bool {
        OVERRIDE_HEADERS.iter().any(|h| same_after_folding(name, h))
    }
}

/// Whether two lower-case header names are one variable to CGI, WSGI and Rack, which upper-case
/// the name and turn `-` into `_` (`x_user_id` and `x-user-id` are both `HTTP_X_USER_ID`).
/// Envoy has lower-cased every name already.
pub fn same_after_folding(name: &str, owned: &str) -> bool {
    name.len() == owned.len()
        && name.bytes().zip(owned.bytes()).all(|(a, b)| {
            a.eq_ignore_ascii_case(&b) || (matches!(a, b'_' | b'-') && matches!(b, b'_' | b'-'))
        })
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn twins_fold_case_and_separators() {
        assert!(same_after_folding("x_user_id", "x-user-id"));
        assert!(same_after_folding("x-user_id", "x-user-id"));
        assert!(same_after_folding("X_USER_ID", "x-user-id"));
        assert!(same_after_folding("x-user-id", "x-user-id"));
        assert!(!same_after_folding("x-user-ids", "x-user-id"));
        assert!(!same_after_folding("x.user.id", "x-user-id"));
        assert!(!same_after_folding("xuser-id", "x-user-id"));
    }

    #[test]
    fn override_headers_and_their_twins() {
        for name in [
            "x-http-method-override",
            "x_http_method_override",
            "x-original-url",
            "x_rewrite_url",
        ] {
            assert!(Firewall::is_override_header(name), "{name}");
        }
        assert!(!Firewall::is_override_header("x-http-methods"));
    }

    #[test]
    fn defaults_are_the_strict_ones() {
        let config: FirewallConfig = serde_json::from_str("{}").unwrap();
        let firewall = Firewall::compile(&config);
        assert_eq!(firewall.path_parameters, PathParameters::Reject);
        assert_eq!(firewall.ambiguous_case, AmbiguousCase::Reject);
        assert_eq!(firewall.override_headers, OverrideHeaders::Strip);
        let unknown: Result<FirewallConfig, _> =
            serde_json::from_str(r#"{"path_parameter": "strip"}"#);
        assert!(unknown.is_err());
        let bad: Result<FirewallConfig, _> =
            serde_json::from_str(r#"{"path_parameters": "allow"}"#);
        assert!(bad.is_err());
    }
}

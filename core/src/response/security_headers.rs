//! Security response headers: a strict default set applied to every response (upstream
//! responses, the filter's own replies, Envoy's local replies), plus headers to strip.
//!
//! The headers in [`SecurityHeaders::to_set`] are *set*, replacing whatever the upstream sent:
//! the point of a gateway policy is that one careless service cannot weaken it. Removal of
//! `server` only works when Envoy's connection manager is configured with
//! `server_header_transformation: PASS_THROUGH`; otherwise it writes `server: envoy` after every
//! filter has run.

use crate::authn::jwt::is_header_name;
use crate::config::error::{join, ConfigError};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecurityHeadersConfig {
    /// Duplicate keys are refused: serde_json would otherwise keep the last one silently.
    #[serde(default, deserialize_with = "map_without_duplicates")]
    pub set: BTreeMap<String, String>,
    /// Replaces [`DEFAULT_REMOVE`] when present (`[]` removes nothing).
    #[serde(default)]
    pub remove: Option<Vec<String>>,
}

/// The spec's default set, in the spec's order.
pub const DEFAULT_SET: [(&str, &str); 8] = [
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    ),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    // 0 turns off the legacy XSS auditor, which itself enabled cross-site leaks.
    ("x-xss-protection", "0"),
];

/// Sent only in answer to a request that arrived over TLS: see [`SecurityHeaders::to_set_over`].
pub const HSTS: &str = "strict-transport-security";

/// Headers that reveal the software behind the gateway.
pub const DEFAULT_REMOVE: [&str; 3] = ["server", "x-powered-by", "x-envoy-upstream-service-time"];

/// Headers that frame the message or belong to one connection: setting them on every response
/// would corrupt responses or smuggle (a fixed `content-length` on every response is a
/// response-splitting tool), and stripping them would break framing.
const FRAMING_HEADERS: [&str; 12] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-type",
    "content-encoding",
    "content-range",
];

/// Headers that other parts of the filter set to meet the spec: `x-request-id` on every
/// response, the RFC 6750 challenge on 401, the rate-limit headers. Setting them here would
/// overwrite the real values; removing them would break the user contract.
const FILTER_OWNED_HEADERS: [&str; 8] = [
    "x-request-id",
    "www-authenticate",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
];

/// CORS headers are decided per request by the `cors` section; a fixed
/// `access-control-allow-origin` here would bypass its origin list.
const CORS_PREFIX: &str = "access-control-";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityHeaders {
    set: Vec<(String, String)>,
    remove: Vec<String>,
}

impl SecurityHeaders {
    pub fn compile(
        cfg: Option<&SecurityHeadersConfig>,
        at: &str,
    ) -> Result<SecurityHeaders, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut set: Vec<(String, String)> = DEFAULT_SET
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let empty = SecurityHeadersConfig::default();
        let cfg = cfg.unwrap_or(&empty);
        let set_at = join(at, "set");
        for (name, value) in &cfg.set {
            let name_at = join(&set_at, name);
            match check_name(name, "set") {
                Err(message) => errors.push(ConfigError::new(&name_at, message)),
                Ok(()) => {
                    if let Err(message) = check_value(value) {
                        errors.push(ConfigError::new(&name_at, message));
                    } else if let Some(default) = set.iter_mut().find(|(n, _)| n == name) {
                        default.1.clone_from(value);
                    } else {
                        set.push((name.clone(), value.clone()));
                    }
                }
            }
        }
        let remove_at = join(at, "remove");
        let remove: Vec<String> = match &cfg.remove {
            None => DEFAULT_REMOVE.iter().map(|n| n.to_string()).collect(),
            Some(list) => {
                for (i, name) in list.iter().enumerate() {
                    let name_at = crate::config::error::index(&remove_at, i);
                    if let Err(message) = check_name(name, "remove") {
                        errors.push(ConfigError::new(name_at, message));
                    } else if list[..i].contains(name) {
                        errors.push(ConfigError::new(
                            name_at,
                            format!("duplicate header \"{name}\""),
                        ));
                    } else if set.iter().any(|(n, _)| n == name) {
                        errors.push(ConfigError::new(
                            name_at,
                            format!(
                                "\"{name}\" is a security header that api-guard sets on every response; it cannot also be removed (override its value in \"set\" instead)"
                            ),
                        ));
                    }
                }
                list.clone()
            }
        };
        if errors.is_empty() {
            Ok(SecurityHeaders { set, remove })
        } else {
            Err(errors)
        }
    }

    /// Headers to set on every response, replacing any value already there: the default set in
    /// the spec's order with `set` overrides applied in place, then added headers by name.
    pub fn to_set(&self) -> &[(String, String)] {
        &self.set
    }

    /// [`Self::to_set`] for a response to a request that arrived over TLS (`over_tls`) or not:
    /// `strict-transport-security` only over TLS. RFC 6797 section 7.2: a host must not send it
    /// over plain HTTP (a client ignores it there, and a plain-text answer that carries it is
    /// one an attacker on the path could have written).
    pub fn to_set_over(&self, over_tls: bool) -> impl Iterator<Item = (&str, &str)> {
        self.set
            .iter()
            .filter(move |(name, _)| over_tls || name != HSTS)
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// Headers to strip from every response.
    pub fn to_remove(&self) -> &[String] {
        &self.remove
    }
}

fn check_name(name: &str, field: &str) -> Result<(), String> {
    if !is_header_name(name) {
        let lower = name.to_ascii_lowercase();
        return Err(if is_header_name(&lower) {
            format!("header names are written in lower case: write \"{lower}\"")
        } else {
            format!("\"{name}\" is not a valid header name")
        });
    }
    if FRAMING_HEADERS.contains(&name) {
        return Err(format!(
            "\"{name}\" frames the message or belongs to the connection; api-guard does not {field} it on every response"
        ));
    }
    if FILTER_OWNED_HEADERS.contains(&name) {
        return Err(format!(
            "\"{name}\" is set by api-guard itself where the spec requires it; it cannot be configured here"
        ));
    }
    if name.starts_with(CORS_PREFIX) {
        return Err(format!(
            "\"{name}\" is decided per request by the \"cors\" section; configure CORS there"
        ));
    }
    Ok(())
}

/// A value is visible ASCII and inner spaces or tabs: a CR or LF would split the response
/// (header injection), other control characters are refused by Envoy or mangled by clients, and
/// non-ASCII bytes are read differently by different clients.
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(
            "must not be empty (the default set is always applied: override a value instead of blanking it)"
                .to_string(),
        );
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
    {
        return Err(format!(
            "the value contains {}: only visible ASCII characters, spaces and tabs are allowed",
            bad.escape_default()
        ));
    }
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err("the value has leading or trailing whitespace".to_string());
    }
    Ok(())
}

fn map_without_duplicates<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct NoDuplicates;

    impl<'de> Visitor<'de> for NoDuplicates {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of header names to string values")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut headers = BTreeMap::new();
            while let Some((name, value)) = map.next_entry::<String, String>()? {
                if headers.contains_key(&name) {
                    return Err(de::Error::custom(format!("duplicate header \"{name}\"")));
                }
                headers.insert(name, value);
            }
            Ok(headers)
        }
    }

    deserializer.deserialize_map(NoDuplicates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: &str) -> Result<SecurityHeaders, Vec<String>> {
        let cfg: SecurityHeadersConfig = serde_json::from_str(json).expect("test config parses");
        SecurityHeaders::compile(Some(&cfg), "security_headers")
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn default_set_is_exactly_the_spec() {
        let headers = SecurityHeaders::compile(None, "security_headers").expect("defaults compile");
        assert_eq!(
            headers.to_set(),
            pairs(&[
                (
                    "strict-transport-security",
                    "max-age=63072000; includeSubDomains"
                ),
                ("x-content-type-options", "nosniff"),
                ("x-frame-options", "DENY"),
                ("referrer-policy", "strict-origin-when-cross-origin"),
                (
                    "permissions-policy",
                    "camera=(), microphone=(), geolocation=()"
                ),
                (
                    "content-security-policy",
                    "default-src 'none'; frame-ancestors 'none'"
                ),
                ("cross-origin-opener-policy", "same-origin"),
                ("x-xss-protection", "0"),
            ])
        );
        assert_eq!(
            headers.to_remove(),
            ["server", "x-powered-by", "x-envoy-upstream-service-time"]
        );
        assert_eq!(compile("{}").expect("empty section compiles"), headers);
    }

    #[test]
    fn set_overrides_in_place_and_adds_after_the_defaults() {
        let headers = compile(
            r#"{"set": {"content-security-policy": "default-src 'self'",
                        "x-extra": "1", "cross-origin-resource-policy": "same-site"}}"#,
        )
        .expect("compiles");
        let set = headers.to_set();
        assert_eq!(set.len(), 10);
        assert_eq!(
            set[5],
            (
                "content-security-policy".to_string(),
                "default-src 'self'".to_string()
            )
        );
        assert_eq!(
            &set[8..],
            pairs(&[
                ("cross-origin-resource-policy", "same-site"),
                ("x-extra", "1")
            ])
        );
        assert_eq!(set[2], ("x-frame-options".to_string(), "DENY".to_string()));
    }

    #[test]
    fn remove_replaces_the_default_list() {
        let spec = compile(r#"{"remove": ["server", "x-powered-by"]}"#).expect("compiles");
        assert_eq!(spec.to_remove(), ["server", "x-powered-by"]);
        let none = compile(r#"{"remove": []}"#).expect("compiles");
        assert!(none.to_remove().is_empty());
        assert_eq!(none.to_set().len(), DEFAULT_SET.len());
    }

    #[test]
    fn refusals_name_the_json_path() {
        let cases: &[(&str, &str)] = &[
            (r#"{"set": {"X-Frame-Options": "DENY"}}"#, "security_headers.set.X-Frame-Options: header names are written in lower case: write \"x-frame-options\""),
            (r#"{"set": {"x-a": "ok\r\nset-cookie: a=b"}}"#, "security_headers.set.x-a: the value contains \\r"),
            (r#"{"set": {"x-a": "a\u0000b"}}"#, "security_headers.set.x-a: the value contains \\u{0}"),
            (r#"{"set": {"x-a": "caf\u00e9"}}"#, "security_headers.set.x-a: the value contains"),
            (r#"{"set": {"x-a": ""}}"#, "security_headers.set.x-a: must not be empty"),
            (r#"{"set": {"x-a": " a"}}"#, "security_headers.set.x-a: the value has leading or trailing whitespace"),
            (r#"{"set": {"content-length": "0"}}"#, "security_headers.set.content-length: \"content-length\" frames the message"),
            (r#"{"set": {"transfer-encoding": "chunked"}}"#, "security_headers.set.transfer-encoding: \"transfer-encoding\" frames"),
            (r#"{"set": {"connection": "close"}}"#, "security_headers.set.connection: \"connection\" frames"),
            (r#"{"set": {"x-request-id": "1"}}"#, "security_headers.set.x-request-id: \"x-request-id\" is set by api-guard itself"),
            (r#"{"set": {"access-control-allow-origin": "*"}}"#, "security_headers.set.access-control-allow-origin: \"access-control-allow-origin\" is decided per request by the \"cors\" section"),
            (r#"{"set": {"x a": "1"}}"#, "security_headers.set.x a: \"x a\" is not a valid header name"),
            (r#"{"remove": ["x-frame-options"]}"#, "security_headers.remove[0]: \"x-frame-options\" is a security header that api-guard sets on every response; it cannot also be removed"),
            (r#"{"set": {"x-custom": "1"}, "remove": ["server", "x-custom"]}"#, "security_headers.remove[1]: \"x-custom\" is a security header"),
            (r#"{"remove": ["server", "server"]}"#, "security_headers.remove[1]: duplicate header \"server\""),
            (r#"{"remove": ["Server"]}"#, "security_headers.remove[0]: header names are written in lower case: write \"server\""),
            (r#"{"remove": ["content-length"]}"#, "security_headers.remove[0]: \"content-length\" frames the message or belongs to the connection; api-guard does not remove it"),
            (r#"{"remove": ["x-request-id"]}"#, "security_headers.remove[0]: \"x-request-id\" is set by api-guard itself"),
        ];
        for (json, expected) in cases {
            match compile(json) {
                Ok(_) => panic!("{json} should be refused"),
                Err(found) => assert!(
                    found.iter().any(|e| e.starts_with(expected)),
                    "{json}: expected an error starting with {expected:?}, got {found:?}"
                ),
            }
        }
    }

    #[test]
    fn duplicate_and_unknown_keys_are_refused_by_the_parser() {
        assert!(serde_json::from_str::<SecurityHeadersConfig>(
            r#"{"set": {"x-a": "1", "x-a": "2"}}"#
        )
        .is_err());
        assert!(serde_json::from_str::<SecurityHeadersConfig>(r#"{"sets": {}}"#).is_err());
    }
}

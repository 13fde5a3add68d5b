//! Claim names (spec "Claims by path"): a name that starts with `/` is a JSON Pointer (RFC 6901)
//! into the verified claims, so claims that identity providers nest or namespace can be named
//! (`/realm_access/roles` for Keycloak, `/https:~1~1example.com~1roles` for Auth0); any other
//! name is a top-level claim. Pointers are parsed once, when the configuration is loaded: a
//! request only walks the decoded reference tokens.

use crate::config::error::ConfigError;
use serde_json::{Map, Value};

/// A compiled claim name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    /// The name as configured, for error messages and events (a config value, never a claim's).
    name: String,
    /// The reference tokens, unescaped; one token for a top-level name.
    tokens: Vec<String>,
}

impl ClaimPath {
    /// A top-level claim named exactly `name` (no pointer syntax), for built-in defaults.
    pub fn top_level(name: &str) -> ClaimPath {
        ClaimPath {
            name: name.to_string(),
            tokens: vec![name.to_string()],
        }
    }

    /// `at` is the JSON path of the configured name. Refused: an empty name, control
    /// characters (the name appears in logs), and a pointer with a `~` that is not `~0` or
    /// `~1` (RFC 6901 section 3 allows no other escape).
    pub fn compile(name: &str, at: &str) -> Result<ClaimPath, ConfigError> {
        if name.is_empty() {
            return Err(ConfigError::new(at, "must not be empty"));
        }
        if name.chars().any(char::is_control) {
            return Err(ConfigError::new(
                at,
                "a claim name must not hold control characters",
            ));
        }
        let Some(pointer) = name.strip_prefix('/') else {
            return Ok(ClaimPath::top_level(name));
        };
        let mut tokens = Vec::new();
        for (position, raw) in pointer.split('/').enumerate() {
            tokens.push(unescape(raw).ok_or_else(|| {
                ConfigError::new(
                    at,
                    format!(
                        "{name:?} is not a valid JSON Pointer (RFC 6901): reference token {} has a \"~\" that is not \"~0\" or \"~1\"",
                        position + 1
                    ),
                )
            })?);
        }
        Ok(ClaimPath {
            name: name.to_string(),
            tokens,
        })
    }

    /// The name as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value the name points at in the claims, if there is one. Inside an array a token
    /// must be an index as RFC 6901 section 4 writes it (`0`, or digits without a leading
    /// zero); `-` and anything else point at nothing.
    pub fn lookup<'c>(&self, claims: &'c Map<String, Value>) -> Option<&'c Value> {
        let (first, rest) = self.tokens.split_first()?;
        let mut current = claims.get(first)?;
        for token in rest {
            current = match current {
                Value::Object(members) => members.get(token)?,
                Value::Array(items) => items.get(array_index(token)?)?,
                _ => return None,
            };
        }
        Some(current)
    }
}

/// `~1` is `/` and `~0` is `~`, decoded left to right in one pass (so `~01` is `~1`, never `/`:
/// RFC 6901 section 4). `None` for any other `~`.
/// Where a provider's tokens carry roles and scopes (`roles_claim`, `scopes_claim`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderClaims {
    pub roles: ClaimPath,
    /// Read in order and joined.
    pub scopes: Vec<ScopeClaim>,
}

/// A claim scopes are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeClaim {
    pub path: ClaimPath,
    /// Whether an array of strings counts as well as a space-delimited string. The default
    /// `scope` claim is a string by RFC 8693 / RFC 9068 and an array there is ignored, as before
    /// `scopes_claim` existed; `scp` and a configured claim take both (Entra ID writes `scp` as
    /// a string, Okta as an array).
    pub arrays: bool,
}

impl Default for ProviderClaims {
    /// `roles`, and scopes from `scope` then `scp`.
    fn default() -> ProviderClaims {
        ProviderClaims {
            roles: ClaimPath::top_level("roles"),
            scopes: vec![
                ScopeClaim {
                    path: ClaimPath::top_level("scope"),
                    arrays: false,
                },
                ScopeClaim {
                    path: ClaimPath::top_level("scp"),
                    arrays: true,
                },
            ],
        }
    }
}

fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn array_index(token: &str) -> Option<usize> {
    let canonical = token == "0"
        || (!token.is_empty()
            && !token.starts_with('0')
            && token.bytes().all(|b| b.is_ascii_digit()));
    if canonical {
        token.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn path(name: &str) -> ClaimPath {
        ClaimPath::compile(name, "jwt.providers[0].roles_claim").unwrap()
    }

    /// The document of RFC 6901 section 5.
    fn rfc6901_document() -> Map<String, Value> {
        match json!({
            "foo": ["bar", "baz"],
            "": 0,
            "a/b": 1,
            "c%d": 2,
            "e^f": 3,
            "g|h": 4,
            "i\\j": 5,
            "k\"l": 6,
            " ": 7,
            "m~n": 8
        }) {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn rfc6901_section5_examples() {
        let doc = rfc6901_document();
        let cases = [
            ("/foo", json!(["bar", "baz"])),
            ("/foo/0", json!("bar")),
            ("/", json!(0)),
            ("/a~1b", json!(1)),
            ("/c%d", json!(2)),
            ("/e^f", json!(3)),
            ("/g|h", json!(4)),
            ("/i\\j", json!(5)),
            ("/k\"l", json!(6)),
            ("/ ", json!(7)),
            ("/m~0n", json!(8)),
        ];
        for (pointer, want) in cases {
            assert_eq!(path(pointer).lookup(&doc), Some(&want), "{pointer}");
        }
        // The whole document ("") is not a claim: an empty name is refused.
        assert!(ClaimPath::compile("", "x").is_err());
    }

    #[test]
    fn escapes_decode_in_one_pass() {
        let doc = match json!({"~1": "tilde-one", "/": "slash", "https://example.com/roles": ["admin"]})
        {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        assert_eq!(path("/~01").lookup(&doc), Some(&json!("tilde-one")));
        assert_eq!(path("/~1").lookup(&doc), Some(&json!("slash")));
        assert_eq!(
            path("/https:~1~1example.com~1roles").lookup(&doc),
            Some(&json!(["admin"]))
        );
        // Without the escapes the slashes are steps into objects that are not there.
        assert_eq!(path("/https://example.com/roles").lookup(&doc), None);
    }

    #[test]
    fn nested_claims_and_array_indexes() {
        let doc = match json!({
            "realm_access": {"roles": ["user", "admin"]},
            "resource_access": {"billing-app": {"roles": ["invoices"]}},
            "list": [[1, 2], {"x": "y"}],
            "flat": "text"
        }) {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        assert_eq!(
            path("/realm_access/roles").lookup(&doc),
            Some(&json!(["user", "admin"]))
        );
        assert_eq!(
            path("/resource_access/billing-app/roles/0").lookup(&doc),
            Some(&json!("invoices"))
        );
        assert_eq!(path("/list/0/1").lookup(&doc), Some(&json!(2)));
        assert_eq!(path("/list/1/x").lookup(&doc), Some(&json!("y")));
        for missing in [
            "/realm_access/groups",
            "/realm_access/roles/2",
            "/realm_access/roles/-",
            "/realm_access/roles/01",
            "/realm_access/roles/+1",
            "/realm_access/roles/",
            "/flat/0",
            "/nothing",
            "/list/x",
        ] {
            assert_eq!(path(missing).lookup(&doc), None, "{missing}");
        }
        // A name without a leading slash is one top-level claim, slashes and tildes included.
        let doc = match json!({"a/b~1": "top", "a": {"b~1": "nested"}}) {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        assert_eq!(path("a/b~1").lookup(&doc), Some(&json!("top")));
        assert_eq!(path("/a/b~01").lookup(&doc), Some(&json!("nested")));
    }

    #[test]
    fn bad_pointers_are_refused_with_their_path() {
        for (name, detail) in [
            ("/a~2b", "reference token 1"),
            ("/realm_access/roles~", "reference token 2"),
            ("/x/y/~", "reference token 3"),
        ] {
            let error = ClaimPath::compile(name, "routes[3].owner.claim").unwrap_err();
            assert_eq!(error.path, "routes[3].owner.claim");
            assert!(
                error.message.contains("not a valid JSON Pointer"),
                "{error}"
            );
            assert!(error.message.contains(detail), "{error}");
        }
        let error = ClaimPath::compile("sub\n", "a.claim").unwrap_err();
        assert_eq!(error.path, "a.claim");
        // A top-level name may hold a tilde: only pointers have escapes.
        assert!(ClaimPath::compile("a~2", "x").is_ok());
    }
}

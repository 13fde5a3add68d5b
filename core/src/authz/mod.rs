//! Authorization after authentication (spec `routes[].require`, `routes[].owner`): what the
//! verified credential says the caller may do, whichever credential it was.
//!
//! - `require`: scopes from the JWT `scope` (space-delimited) and `scp` claims (or the
//!   provider's `scopes_claim`) or the API key's `scopes`; roles from the JWT `roles` claim (or
//!   the provider's `roles_claim`); `claims`: named claims that must hold given values. Failing
//!   gives 403 `forbidden`.
//! - `owner`: a path parameter bound by the route's `path_template` must equal a claim. Failing
//!   gives 404 `not_found` (a 403 would confirm that the object exists).
//!
//! Claims are named by [`ClaimPath`]: a top-level name or a JSON Pointer, compiled at load.

use crate::authn::api_keys::{is_scope_token, ApiKey};
use crate::authn::jwt::claim_path::{ClaimPath, ProviderClaims};
use crate::config::error::{index, join, ConfigError};
use crate::request::routes::PathParams;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

/// `require` as written. A list that is present must not be empty (as with `methods`: an empty
/// list would read as "any of nothing", so it is refused rather than guessed at).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RequireConfig {
    #[serde(default)]
    pub scopes_any: Option<Vec<String>>,
    #[serde(default)]
    pub scopes_all: Option<Vec<String>>,
    #[serde(default)]
    pub roles_any: Option<Vec<String>>,
    #[serde(default)]
    pub roles_all: Option<Vec<String>>,
    /// `{ "<claim>": "<value>" | ["<any of>", ...] }`: kept as JSON so that a value of the
    /// wrong type is refused with its own path.
    #[serde(default)]
    pub claims: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerConfig {
    pub param: String,
    pub claim: String,
}

/// A compiled `require`. Every non-empty list must hold; within a list, `_any` needs one
/// entry and `_all` every entry. Comparisons are exact and case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    scopes_any: Vec<String>,
    scopes_all: Vec<String>,
    roles_any: Vec<String>,
    roles_all: Vec<String>,
    claims: Vec<ClaimRequirement>,
}

/// One entry of `require.claims`: the claim must be a string equal to one of `any_of`, or an
/// array holding one of them as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClaimRequirement {
    claim: ClaimPath,
    any_of: Vec<String>,
}

impl ClaimRequirement {
    fn holds(&self, claims: &Map<String, Value>) -> bool {
        let wanted = |text: &str| self.any_of.iter().any(|v| v == text);
        match self.claim.lookup(claims) {
            Some(Value::String(text)) => wanted(text),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(wanted),
            // Missing, or a number, boolean, object or null: never equal to a configured string.
            _ => false,
        }
    }
}

/// The rule of a `require` that did not hold, for the `authz_denied` event. It names the rule,
/// and for `claims` the claim's configured name; never a claim's value nor the required value
/// (a tenant or group id is not for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmet<'r> {
    /// `"scopes_any"`, `"scopes_all"`, `"roles_any"` or `"roles_all"`.
    Rule(&'static str),
    /// The configured name of a `claims` entry that did not hold.
    Claim(&'r str),
}

impl fmt::Display for Unmet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmet::Rule(rule) => write!(f, "require.{rule}"),
            Unmet::Claim(name) => write!(f, "require.claims[{name:?}]"),
        }
    }
}

/// What authentication established, whichever credential it came from.
#[derive(Debug, Clone, Default)]
pub struct Identity<'a> {
    /// JWT `sub` or the API key's `id`.
    pub principal: Option<&'a str>,
    pub scopes: Vec<&'a str>,
    pub roles: Vec<&'a str>,
    /// The verified token's claims; `None` for an API key, which has none.
    pub claims: Option<&'a Map<String, Value>>,
}

impl<'a> Identity<'a> {
    /// From verified JWT claims, read where the token's provider says (`names`):
    /// - scopes: the union of the scope claims, by default `scope` (a space-delimited string,
    ///   RFC 8693 / RFC 9068) and `scp` (an array of strings as Okta writes it, or a
    ///   space-delimited string as Entra ID does);
    /// - roles: the roles claim (default `roles`) as an array of strings, or a single string
    ///   that is one role (never split: splitting "super admin" on spaces would grant "admin");
    /// - elements of any other type are ignored, so they can never satisfy a requirement.
    pub fn from_jwt_claims(claims: &'a Map<String, Value>, names: &ProviderClaims) -> Identity<'a> {
        let mut scopes = Vec::new();
        for source in &names.scopes {
            match source.path.lookup(claims) {
                Some(Value::String(text)) => {
                    scopes.extend(text.split(' ').filter(|s| !s.is_empty()));
                }
                Some(Value::Array(items)) if source.arrays => {
                    scopes.extend(items.iter().filter_map(Value::as_str));
                }
                _ => {}
            }
        }
        let roles = match names.roles.lookup(claims) {
            Some(Value::String(role)) => vec![role.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        Identity {
            principal: claims.get("sub").and_then(Value::as_str),
            scopes,
            roles,
            claims: Some(claims),
        }
    }

    /// From a verified API key: its id is the principal, its scopes are the scopes; it has no
    /// roles and no claims, so it never satisfies `roles_*` or `owner`.
    pub fn from_api_key(key: &'a ApiKey) -> Identity<'a> {
        Identity {
            principal: Some(&key.id),
            scopes: key.scopes.iter().map(String::as_str).collect(),
            roles: Vec::new(),
            claims: None,
        }
    }
}

fn compile_list(
    list: &Option<Vec<String>>,
    at: &str,
    field: &str,
    is_valid: fn(&str) -> bool,
    what: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<String> {
    let Some(items) = list else {
        return Vec::new();
    };
    let list_at = join(at, field);
    if items.is_empty() {
        errors.push(ConfigError::new(
            &list_at,
            "must not be empty; omit the field when it requires nothing",
        ));
    }
    for (i, item) in items.iter().enumerate() {
        if !is_valid(item) {
            errors.push(ConfigError::new(index(&list_at, i), what));
        }
    }
    items.clone()
}

/// `require.claims`: every key a claim name, every value a non-empty string or a non-empty list
/// of them. Values may hold anything but control characters: they are compared, never logged.
fn compile_claims(
    claims: Option<&Map<String, Value>>,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<ClaimRequirement> {
    let Some(claims) = claims else {
        return Vec::new();
    };
    let claims_at = join(at, "claims");
    if claims.is_empty() {
        errors.push(ConfigError::new(
            &claims_at,
            "must not be empty; omit the field when it requires nothing",
        ));
    }
    const VALUE: &str =
        "a required value is a non-empty string without control characters, or a non-empty list of them (any of)";
    let is_value = |v: &str| !v.is_empty() && !v.chars().any(char::is_control);
    let mut compiled = Vec::new();
    for (name, wanted) in claims {
        let entry_at = format!("{claims_at}[{name:?}]");
        let claim = match ClaimPath::compile(name, &entry_at) {
            Ok(claim) => Some(claim),
            Err(error) => {
                errors.push(error);
                None
            }
        };
        let any_of: Vec<String> = match wanted {
            Value::String(text) if is_value(text) => vec![text.clone()],
            Value::Array(items) if !items.is_empty() => {
                let mut values = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.as_str().filter(|v| is_value(v)) {
                        Some(text) => values.push(text.to_string()),
                        None => errors.push(ConfigError::new(index(&entry_at, i), VALUE)),
                    }
                }
                values
            }
            _ => {
                errors.push(ConfigError::new(&entry_at, VALUE));
                Vec::new()
            }
        };
        if let Some(claim) = claim {
            compiled.push(ClaimRequirement { claim, any_of });
        }
    }
    compiled
}

fn is_role(role: &str) -> bool {
    !role.is_empty() && !role.chars().any(char::is_control)
}

impl Requirement {
    /// `at` is the JSON path of the `require` object, e.g. `routes[2].require`.
    pub fn compile(cfg: &RequireConfig, at: &str) -> Result<Requirement, Vec<ConfigError>> {
        let mut errors = Vec::new();
        const SCOPE: &str =
            "a scope is a non-empty token of visible ASCII without spaces, quotes or backslashes";
        const ROLE: &str = "a role is a non-empty string without control characters";
        let requirement = Requirement {
            scopes_any: compile_list(
                &cfg.scopes_any,
                at,
                "scopes_any",
                is_scope_token,
                SCOPE,
                &mut errors,
            ),
            scopes_all: compile_list(
                &cfg.scopes_all,
                at,
                "scopes_all",
                is_scope_token,
                SCOPE,
                &mut errors,
            ),
            roles_any: compile_list(&cfg.roles_any, at, "roles_any", is_role, ROLE, &mut errors),
            roles_all: compile_list(&cfg.roles_all, at, "roles_all", is_role, ROLE, &mut errors),
            claims: compile_claims(cfg.claims.as_ref(), at, &mut errors),
        };
        let nothing_asked = [
            &cfg.scopes_any,
            &cfg.scopes_all,
            &cfg.roles_any,
            &cfg.roles_all,
        ]
        .iter()
        .all(|list| list.is_none())
            && cfg.claims.is_none();
        if nothing_asked {
            errors.push(ConfigError::new(
                at,
                "must name at least one of scopes_any, scopes_all, roles_any, roles_all, claims (omit \"require\" to require nothing)",
            ));
        }
        if errors.is_empty() {
            Ok(requirement)
        } else {
            Err(errors)
        }
    }

    /// `Err` names the first rule that failed (for the `authz_denied` event; never a claim
    /// value). An API key has no claims, so it never satisfies `claims`.
    pub fn check(&self, identity: &Identity) -> Result<(), Unmet<'_>> {
        let has = |held: &[&str], wanted: &String| held.contains(&wanted.as_str());
        if !self.scopes_any.is_empty() && !self.scopes_any.iter().any(|s| has(&identity.scopes, s))
        {
            return Err(Unmet::Rule("scopes_any"));
        }
        if !self.scopes_all.iter().all(|s| has(&identity.scopes, s)) {
            return Err(Unmet::Rule("scopes_all"));
        }
        if !self.roles_any.is_empty() && !self.roles_any.iter().any(|r| has(&identity.roles, r)) {
            return Err(Unmet::Rule("roles_any"));
        }
        if !self.roles_all.iter().all(|r| has(&identity.roles, r)) {
            return Err(Unmet::Rule("roles_all"));
        }
        for entry in &self.claims {
            if !identity.claims.is_some_and(|claims| entry.holds(claims)) {
                return Err(Unmet::Claim(entry.claim.name()));
            }
        }
        Ok(())
    }
}

/// A compiled `owner`: the path parameter `param` must equal the claim `claim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRule {
    pub param: String,
    pub claim: ClaimPath,
}

impl OwnerRule {
    /// `at` is the JSON path of the `owner` object; `template_params` are the `{name}`s of the
    /// route's `path_template` (empty when the route has none), as
    /// [`crate::request::routes::CompiledMatch::template_param_names`] gives them.
    pub fn compile(
        cfg: &OwnerConfig,
        at: &str,
        template_params: &[String],
    ) -> Result<OwnerRule, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let param_at = join(at, "param");
        if cfg.param.is_empty() {
            errors.push(ConfigError::new(&param_at, "must not be empty"));
        } else if template_params.is_empty() {
            errors.push(ConfigError::new(
                &param_at,
                format!(
                    "owner needs a route matched by \"path_template\" with a {{{}}} segment",
                    cfg.param
                ),
            ));
        } else if !template_params.contains(&cfg.param) {
            errors.push(ConfigError::new(
                &param_at,
                format!(
                    "{:?} is not a parameter of the route's path_template (it has {})",
                    cfg.param,
                    template_params
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let claim = match ClaimPath::compile(&cfg.claim, &join(at, "claim")) {
            Ok(claim) => Some(claim),
            Err(error) => {
                errors.push(error);
                None
            }
        };
        match claim {
            Some(claim) if errors.is_empty() => Ok(OwnerRule {
                param: cfg.param.clone(),
                claim,
            }),
            _ => Err(errors),
        }
    }

    /// The claim must be a string (or an integer, compared as its decimal text) equal to the
    /// path parameter as the upstream will read it, i.e. percent-decoded: with a raw comparison
    /// a user whose `sub` is `bob%40x` could open `/users/bob%40x/…`, which the upstream
    /// decodes to `bob@x`, someone else. `Err` is an internal reason for the log.
    pub fn check(&self, params: &PathParams, identity: &Identity) -> Result<(), &'static str> {
        let segment = params
            .get(&self.param)
            .ok_or("owner parameter not bound by the route")?;
        let claims = identity
            .claims
            .ok_or("owner check needs token claims (the credential has none)")?;
        let expected = match self.claim.lookup(claims) {
            None => return Err("owner claim missing"),
            Some(Value::String(text)) => text.clone(),
            Some(Value::Number(number)) if number.is_i64() || number.is_u64() => number.to_string(),
            Some(_) => return Err("owner claim is not a string or an integer"),
        };
        if percent_decode(segment).as_ref() == expected.as_bytes() {
            Ok(())
        } else {
            Err("owner mismatch")
        }
    }
}

/// One pass of percent-decoding (no `+` rule: that is for queries), `percent-encoding`'s: the
/// segment comes from a normalised path, where every `%` starts a valid escape; a stray one
/// would be kept as it is.
fn percent_decode(segment: &str) -> Cow<'_, [u8]> {
    percent_encoding::percent_decode_str(segment).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::authn::api_keys::{key_sha256_hex, ApiKeys, ApiKeysConfig};
    use crate::authn::jwt::claim_path::ScopeClaim;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn requirement(json: &str) -> Requirement {
        let cfg: RequireConfig = serde_json::from_str(json).unwrap();
        Requirement::compile(&cfg, "routes[1].require").unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn require_errors(json: &str) -> Vec<String> {
        let cfg: RequireConfig = serde_json::from_str(json).unwrap();
        match Requirement::compile(&cfg, "routes[1].require") {
            Ok(_) => panic!("compiled {json}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn scopes_come_from_scope_and_scp() {
        let token = claims(json!({"sub": "alice", "scope": "documents:read  profile"}));
        let identity = Identity::from_jwt_claims(&token, &ProviderClaims::default());
        assert_eq!(identity.scopes, vec!["documents:read", "profile"]);
        assert_eq!(identity.principal, Some("alice"));

        let token = claims(json!({"scp": ["documents:read", 7, "profile"]}));
        assert_eq!(
            Identity::from_jwt_claims(&token, &ProviderClaims::default()).scopes,
            vec!["documents:read", "profile"]
        );
        let token = claims(json!({"scp": "a b", "scope": "c"}));
        assert_eq!(
            Identity::from_jwt_claims(&token, &ProviderClaims::default()).scopes,
            vec!["c", "a", "b"]
        );
        // `scope` must be a string; an array there is not a standard form and is ignored.
        let token = claims(json!({"scope": ["a"], "sub": 5}));
        let identity = Identity::from_jwt_claims(&token, &ProviderClaims::default());
        assert!(identity.scopes.is_empty());
        assert_eq!(identity.principal, None);
    }

    #[test]
    fn scopes_any_and_all() {
        let any = requirement(r#"{"scopes_any":["documents:read","documents:admin"]}"#);
        let all = requirement(r#"{"scopes_all":["invoices:read","invoices:write"]}"#);
        let cases = [
            (
                json!({"scope": "documents:read"}),
                Ok(()),
                Err(Unmet::Rule("scopes_all")),
            ),
            (
                json!({"scp": ["documents:admin"]}),
                Ok(()),
                Err(Unmet::Rule("scopes_all")),
            ),
            (
                json!({"scope": "invoices:read invoices:write"}),
                Err(Unmet::Rule("scopes_any")),
                Ok(()),
            ),
            (
                json!({"scope": "invoices:read", "scp": ["invoices:write"]}),
                Err(Unmet::Rule("scopes_any")),
                Ok(()),
            ),
            (
                json!({"scope": "invoices:read"}),
                Err(Unmet::Rule("scopes_any")),
                Err(Unmet::Rule("scopes_all")),
            ),
            // Case-sensitive, whole tokens only.
            (
                json!({"scope": "Documents:read documents"}),
                Err(Unmet::Rule("scopes_any")),
                Err(Unmet::Rule("scopes_all")),
            ),
            (
                json!({}),
                Err(Unmet::Rule("scopes_any")),
                Err(Unmet::Rule("scopes_all")),
            ),
        ];
        for (token, want_any, want_all) in cases {
            let token = claims(token);
            let identity = Identity::from_jwt_claims(&token, &ProviderClaims::default());
            assert_eq!(any.check(&identity), want_any, "{token:?}");
            assert_eq!(all.check(&identity), want_all, "{token:?}");
        }
    }

    #[test]
    fn roles_array_or_single_string() {
        let any = requirement(r#"{"roles_any":["admin","ops"]}"#);
        let all = requirement(r#"{"roles_all":["admin","auditor"]}"#);
        let cases = [
            (
                json!({"roles": ["admin"]}),
                Ok(()),
                Err(Unmet::Rule("roles_all")),
            ),
            (
                json!({"roles": "ops"}),
                Ok(()),
                Err(Unmet::Rule("roles_all")),
            ),
            (json!({"roles": ["auditor", "admin"]}), Ok(()), Ok(())),
            // A string is one role, never split.
            (
                json!({"roles": "admin auditor"}),
                Err(Unmet::Rule("roles_any")),
                Err(Unmet::Rule("roles_all")),
            ),
            (
                json!({"roles": "super admin"}),
                Err(Unmet::Rule("roles_any")),
                Err(Unmet::Rule("roles_all")),
            ),
            (
                json!({"roles": [["admin"]]}),
                Err(Unmet::Rule("roles_any")),
                Err(Unmet::Rule("roles_all")),
            ),
            (
                json!({"roles": {"admin": true}}),
                Err(Unmet::Rule("roles_any")),
                Err(Unmet::Rule("roles_all")),
            ),
            // Scopes are not roles.
            (
                json!({"scope": "admin"}),
                Err(Unmet::Rule("roles_any")),
                Err(Unmet::Rule("roles_all")),
            ),
        ];
        for (token, want_any, want_all) in cases {
            let token = claims(token);
            let identity = Identity::from_jwt_claims(&token, &ProviderClaims::default());
            assert_eq!(any.check(&identity), want_any, "{token:?}");
            assert_eq!(all.check(&identity), want_all, "{token:?}");
        }
    }

    #[test]
    fn every_rule_must_hold_and_the_first_failure_is_named() {
        let both = requirement(r#"{"scopes_all":["a"],"roles_any":["admin"]}"#);
        let token = claims(json!({"scope": "a", "roles": ["admin"]}));
        assert_eq!(
            both.check(&Identity::from_jwt_claims(
                &token,
                &ProviderClaims::default()
            )),
            Ok(())
        );
        let token = claims(json!({"scope": "a"}));
        assert_eq!(
            both.check(&Identity::from_jwt_claims(
                &token,
                &ProviderClaims::default()
            )),
            Err(Unmet::Rule("roles_any"))
        );
        let token = claims(json!({"roles": ["admin"]}));
        assert_eq!(
            both.check(&Identity::from_jwt_claims(
                &token,
                &ProviderClaims::default()
            )),
            Err(Unmet::Rule("scopes_all"))
        );
    }

    #[test]
    fn require_claims_equal_or_any_of() {
        let rule =
            requirement(r#"{"claims":{"tid":"tenant-1","/realm_access/roles":["ops","admin"]}}"#);
        let cases = [
            (
                json!({"tid": "tenant-1", "realm_access": {"roles": ["user", "admin"]}}),
                Ok(()),
            ),
            (
                json!({"tid": "tenant-1", "realm_access": {"roles": "ops"}}),
                Ok(()),
            ),
            // Wrong value, wrong case, missing, or not a string: the claim is named.
            (
                json!({"tid": "tenant-2", "realm_access": {"roles": ["admin"]}}),
                Err(Unmet::Claim("tid")),
            ),
            (
                json!({"tid": "Tenant-1", "realm_access": {"roles": ["admin"]}}),
                Err(Unmet::Claim("tid")),
            ),
            (
                json!({"realm_access": {"roles": ["admin"]}}),
                Err(Unmet::Claim("tid")),
            ),
            (
                json!({"tid": "tenant-1", "realm_access": {"roles": ["user"]}}),
                Err(Unmet::Claim("/realm_access/roles")),
            ),
            (
                json!({"tid": "tenant-1", "realm_access": {"roles": {"admin": true}}}),
                Err(Unmet::Claim("/realm_access/roles")),
            ),
            (
                json!({"tid": "tenant-1", "realm_access": {"roles": [["admin"], 1]}}),
                Err(Unmet::Claim("/realm_access/roles")),
            ),
            (
                json!({"tid": "tenant-1", "realm_access": "admin"}),
                Err(Unmet::Claim("/realm_access/roles")),
            ),
            (
                json!({"tid": ["x", "tenant-1"], "realm_access": {"roles": "ops"}}),
                Ok(()),
            ),
        ];
        for (token, want) in cases {
            let token = claims(token);
            let identity = Identity::from_jwt_claims(&token, &ProviderClaims::default());
            assert_eq!(rule.check(&identity), want, "{token:?}");
        }
        let number = requirement(r#"{"claims":{"level":"3"}}"#);
        let token = claims(json!({"level": 3}));
        assert_eq!(
            number.check(&Identity::from_jwt_claims(
                &token,
                &ProviderClaims::default()
            )),
            Err(Unmet::Claim("level"))
        );
        // The event names the claim, never a value.
        assert_eq!(
            Unmet::Claim("/realm_access/roles").to_string(),
            "require.claims[\"/realm_access/roles\"]"
        );
        assert_eq!(Unmet::Rule("roles_any").to_string(), "require.roles_any");
    }

    #[test]
    fn roles_and_scopes_where_the_provider_says() {
        let keycloak = ProviderClaims {
            roles: ClaimPath::compile("/realm_access/roles", "x").unwrap(),
            scopes: vec![ScopeClaim {
                path: ClaimPath::compile("/https:~1~1example.com~1scopes", "x").unwrap(),
                arrays: true,
            }],
        };
        let token = claims(json!({
            "roles": ["top-level-admin"],
            "scope": "ignored",
            "realm_access": {"roles": ["admin", 3]},
            "https://example.com/scopes": ["documents:read"]
        }));
        let identity = Identity::from_jwt_claims(&token, &keycloak);
        assert_eq!(identity.roles, vec!["admin"]);
        assert_eq!(identity.scopes, vec!["documents:read"]);
        // A configured scopes claim may also be a space-delimited string (Entra ID `scp`).
        let token = claims(json!({"https://example.com/scopes": "a  b"}));
        assert_eq!(
            Identity::from_jwt_claims(&token, &keycloak).scopes,
            vec!["a", "b"]
        );
        // Pointing at an object gives no roles at all.
        let token = claims(json!({"realm_access": {"roles": {"admin": true}}}));
        assert!(Identity::from_jwt_claims(&token, &keycloak)
            .roles
            .is_empty());
    }

    #[test]
    fn require_claims_config_errors() {
        let errors = require_errors(
            r#"{"claims":{"/a~2":"x","b":"","c":[],"d":["ok",4,""],"e":{"x":1},"f":7}}"#,
        );
        let paths: Vec<&str> = errors
            .iter()
            .map(|e| e.split(": ").next().unwrap_or(""))
            .collect();
        assert_eq!(
            paths,
            vec![
                "routes[1].require.claims[\"/a~2\"]",
                "routes[1].require.claims[\"b\"]",
                "routes[1].require.claims[\"c\"]",
                "routes[1].require.claims[\"d\"][1]",
                "routes[1].require.claims[\"d\"][2]",
                "routes[1].require.claims[\"e\"]",
                "routes[1].require.claims[\"f\"]",
            ],
            "{errors:?}"
        );
        assert!(errors[0].contains("not a valid JSON Pointer"), "{errors:?}");
        assert_eq!(
            require_errors(r#"{"claims":{}}"#),
            vec!["routes[1].require.claims: must not be empty; omit the field when it requires nothing"]
        );
    }

    #[test]
    fn owner_claim_by_pointer() {
        let rule = owner("id", "/ext/user_id");
        let token = claims(json!({"sub": "alice", "ext": {"user_id": "u-7"}}));
        let identity = Identity::from_jwt_claims(&token, &ProviderClaims::default());
        assert_eq!(rule.check(&bound("u-7"), &identity), Ok(()));
        assert_eq!(
            rule.check(&bound("alice"), &identity),
            Err("owner mismatch")
        );
        let compile = |claim: &str| {
            OwnerRule::compile(
                &OwnerConfig {
                    param: "id".into(),
                    claim: claim.into(),
                },
                "routes[2].owner",
                &["id".to_string()],
            )
        };
        let errors = compile("/ext/~x").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "routes[2].owner.claim");
    }

    fn api_key_fixture() -> ApiKeys {
        let cfg: ApiKeysConfig = serde_json::from_str(&format!(
            r#"{{"keys":[{{"id":"billing","prefix":"ag_","sha256":"{}","scopes":["invoices:read"]}}]}}"#,
            key_sha256_hex("ag_secret")
        ))
        .unwrap();
        ApiKeys::compile(&cfg, "api_keys").unwrap()
    }

    #[test]
    fn an_api_key_brings_its_scopes_and_no_roles() {
        let keys = api_key_fixture();
        let key = keys.verify("ag_secret", 0).unwrap();
        let identity = Identity::from_api_key(key);
        assert_eq!(identity.principal, Some("billing"));
        assert_eq!(identity.scopes, vec!["invoices:read"]);
        assert!(identity.claims.is_none());
        assert_eq!(
            requirement(r#"{"scopes_all":["invoices:read"]}"#).check(&identity),
            Ok(())
        );
        assert_eq!(
            requirement(r#"{"scopes_any":["invoices:write"]}"#).check(&identity),
            Err(Unmet::Rule("scopes_any"))
        );
        assert_eq!(
            requirement(r#"{"roles_any":["invoices:read"]}"#).check(&identity),
            Err(Unmet::Rule("roles_any"))
        );
        // And it can never own anything.
        let owner = OwnerRule {
            param: "id".into(),
            claim: ClaimPath::top_level("sub"),
        };
        let params = PathParams(vec![("id".into(), "billing".into())]);
        assert!(owner.check(&params, &identity).is_err());
    }

    #[test]
    fn require_config_errors() {
        assert_eq!(
            require_errors("{}"),
            vec!["routes[1].require: must name at least one of scopes_any, scopes_all, roles_any, roles_all, claims (omit \"require\" to require nothing)"]
        );
        assert_eq!(
            require_errors(r#"{"scopes_any":[]}"#),
            vec!["routes[1].require.scopes_any: must not be empty; omit the field when it requires nothing"]
        );
        let errors = require_errors(
            r#"{"scopes_any":["ok",""],"scopes_all":["two words"],"roles_any":[""],"roles_all":["ok","a\u0000"]}"#,
        );
        let paths: Vec<&str> = errors
            .iter()
            .map(|e| e.split(": ").next().unwrap_or(""))
            .collect();
        assert_eq!(
            paths,
            vec![
                "routes[1].require.scopes_any[1]",
                "routes[1].require.scopes_all[0]",
                "routes[1].require.roles_any[0]",
                "routes[1].require.roles_all[1]",
            ]
        );
        assert!(serde_json::from_str::<RequireConfig>(r#"{"scope_any":["a"]}"#).is_err());
        // Roles may hold spaces (they are never split); scopes may not.
        requirement(r#"{"roles_any":["Global Administrator"]}"#);
    }

    fn owner(param: &str, claim: &str) -> OwnerRule {
        OwnerRule::compile(
            &OwnerConfig {
                param: param.into(),
                claim: claim.into(),
            },
            "routes[2].owner",
            &["id".to_string(), "doc".to_string()],
        )
        .unwrap()
    }

    fn bound(id: &str) -> PathParams {
        PathParams(vec![("id".into(), id.into()), ("doc".into(), "7".into())])
    }

    #[test]
    fn owner_match_and_mismatch() {
        let rule = owner("id", "sub");
        let alice = claims(
            json!({"sub": "alice", "uid": 42, "big": 18446744073709551615u64,
                                 "neg": -3, "f": 42.0, "b": true, "arr": ["alice"], "nul": null}),
        );
        let identity = Identity::from_jwt_claims(&alice, &ProviderClaims::default());
        assert_eq!(rule.check(&bound("alice"), &identity), Ok(()));
        assert_eq!(rule.check(&bound("bob"), &identity), Err("owner mismatch"));
        assert_eq!(
            rule.check(&bound("Alice"), &identity),
            Err("owner mismatch")
        );
        assert_eq!(
            rule.check(&bound("alice2"), &identity),
            Err("owner mismatch")
        );
        // Compared as the upstream decodes the segment.
        assert_eq!(rule.check(&bound("%61lice"), &identity), Ok(()));

        let cases = [
            ("uid", "42", Ok(())),
            ("uid", "042", Err("owner mismatch")),
            ("big", "18446744073709551615", Ok(())),
            ("neg", "-3", Ok(())),
            ("missing", "alice", Err("owner claim missing")),
            ("f", "42", Err("owner claim is not a string or an integer")),
            (
                "b",
                "true",
                Err("owner claim is not a string or an integer"),
            ),
            (
                "arr",
                "alice",
                Err("owner claim is not a string or an integer"),
            ),
            (
                "nul",
                "null",
                Err("owner claim is not a string or an integer"),
            ),
        ];
        for (claim, segment, want) in cases {
            assert_eq!(
                owner("id", claim).check(&bound(segment), &identity),
                want,
                "{claim}"
            );
        }
        // A parameter the match did not bind (defence in depth: compile prevents it).
        assert_eq!(
            rule.check(&PathParams::default(), &identity),
            Err("owner parameter not bound by the route")
        );
    }

    #[test]
    fn owner_compares_percent_decoded_segments() {
        let rule = owner("id", "sub");
        // A sub that holds an escape cannot reach the user the escape decodes to...
        let tricky = claims(json!({"sub": "bob%40x"}));
        let identity = Identity::from_jwt_claims(&tricky, &ProviderClaims::default());
        assert_eq!(
            rule.check(&bound("bob%40x"), &identity),
            Err("owner mismatch")
        );
        // ...but reaches its own objects, written the way the upstream decodes to its sub.
        assert_eq!(rule.check(&bound("bob%2540x"), &identity), Ok(()));
        let email = claims(json!({"sub": "a:b@x"}));
        let identity = Identity::from_jwt_claims(&email, &ProviderClaims::default());
        assert_eq!(rule.check(&bound("a%3Ab%40x"), &identity), Ok(()));
        assert_eq!(rule.check(&bound("a:b@x"), &identity), Ok(()));
    }

    #[test]
    fn owner_config_errors() {
        let compile = |param: &str, claim: &str, names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            OwnerRule::compile(
                &OwnerConfig {
                    param: param.into(),
                    claim: claim.into(),
                },
                "routes[2].owner",
                &names,
            )
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
        };
        assert!(compile("id", "sub", &["id"]).is_empty());
        assert_eq!(
            compile("user", "sub", &["id", "doc"]),
            vec!["routes[2].owner.param: \"user\" is not a parameter of the route's path_template (it has {id}, {doc})"]
        );
        assert_eq!(
            compile("id", "sub", &[]),
            vec!["routes[2].owner.param: owner needs a route matched by \"path_template\" with a {id} segment"]
        );
        assert_eq!(
            compile("", "", &["id"]),
            vec![
                "routes[2].owner.param: must not be empty",
                "routes[2].owner.claim: must not be empty"
            ]
        );
        assert!(serde_json::from_str::<OwnerConfig>(r#"{"param":"id"}"#).is_err());
        assert!(
            serde_json::from_str::<OwnerConfig>(r#"{"param":"id","claim":"sub","x":1}"#).is_err()
        );
    }
}

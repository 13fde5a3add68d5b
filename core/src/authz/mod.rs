//! Authorization after authentication (spec `routes[].require`, `routes[].owner`): what the
//! verified credential says the caller may do, whichever credential it was.
//!
//! - `require`: scopes from the JWT `scope` (space-delimited) and `scp` claims or the API key's
//!   `scopes`; roles from the JWT `roles` claim. Failing gives 403 `forbidden`.
//! - `owner`: a path parameter bound by the route's `path_template` must equal a claim. Failing
//!   gives 404 `not_found` (a 403 would confirm that the object exists).

use crate::authn::api_keys::{is_scope_token, ApiKey};
use crate::config::error::{index, join, ConfigError};
use crate::request::routes::PathParams;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

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
    /// From verified JWT claims:
    /// - scopes: the union of `scope` (a space-delimited string, RFC 8693 / RFC 9068) and `scp`
    ///   (an array of strings as Okta writes it, or a space-delimited string as Entra ID does);
    /// - roles: `roles` as an array of strings, or a single string that is one role (never
    ///   split: splitting "super admin" on spaces would grant "admin");
    /// - elements of any other type are ignored, so they can never satisfy a requirement.
    pub fn from_jwt_claims(claims: &'a Map<String, Value>) -> Identity<'a> {
        let mut scopes = Vec::new();
        for name in ["scope", "scp"] {
            match claims.get(name) {
                Some(Value::String(text)) => {
                    scopes.extend(text.split(' ').filter(|s| !s.is_empty()));
                }
                Some(Value::Array(items)) if name == "scp" => {
                    scopes.extend(items.iter().filter_map(Value::as_str));
                }
                _ => {}
            }
        }
        let roles = match claims.get("roles") {
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
        };
        let nothing_asked = [
            &cfg.scopes_any,
            &cfg.scopes_all,
            &cfg.roles_any,
            &cfg.roles_all,
        ]
        .iter()
        .all(|list| list.is_none());
        if nothing_asked {
            errors.push(ConfigError::new(
                at,
                "must name at least one of scopes_any, scopes_all, roles_any, roles_all (omit \"require\" to require nothing)",
            ));
        }
        if errors.is_empty() {
            Ok(requirement)
        } else {
            Err(errors)
        }
    }

    /// `Err` names the rule that failed: `"scopes_any"`, `"scopes_all"`, `"roles_any"` or
    /// `"roles_all"` (for the `authz_denied` event; never a claim value).
    pub fn check(&self, identity: &Identity) -> Result<(), &'static str> {
        let has = |held: &[&str], wanted: &String| held.contains(&wanted.as_str());
        if !self.scopes_any.is_empty() && !self.scopes_any.iter().any(|s| has(&identity.scopes, s))
        {
            return Err("scopes_any");
        }
        if !self.scopes_all.iter().all(|s| has(&identity.scopes, s)) {
            return Err("scopes_all");
        }
        if !self.roles_any.is_empty() && !self.roles_any.iter().any(|r| has(&identity.roles, r)) {
            return Err("roles_any");
        }
        if !self.roles_all.iter().all(|r| has(&identity.roles, r)) {
            return Err("roles_all");
        }
        Ok(())
    }
}

/// A compiled `owner`: the path parameter `param` must equal the claim `claim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRule {
    pub param: String,
    pub claim: String,
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
        if cfg.claim.is_empty() {
            errors.push(ConfigError::new(join(at, "claim"), "must not be empty"));
        }
        if errors.is_empty() {
            Ok(OwnerRule {
                param: cfg.param.clone(),
                claim: cfg.claim.clone(),
            })
        } else {
            Err(errors)
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
        let expected = match claims.get(&self.claim) {
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
        let identity = Identity::from_jwt_claims(&token);
        assert_eq!(identity.scopes, vec!["documents:read", "profile"]);
        assert_eq!(identity.principal, Some("alice"));

        let token = claims(json!({"scp": ["documents:read", 7, "profile"]}));
        assert_eq!(
            Identity::from_jwt_claims(&token).scopes,
            vec!["documents:read", "profile"]
        );
        let token = claims(json!({"scp": "a b", "scope": "c"}));
        assert_eq!(
            Identity::from_jwt_claims(&token).scopes,
            vec!["c", "a", "b"]
        );
        // `scope` must be a string; an array there is not a standard form and is ignored.
        let token = claims(json!({"scope": ["a"], "sub": 5}));
        let identity = Identity::from_jwt_claims(&token);
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
                Err("scopes_all"),
            ),
            (
                json!({"scp": ["documents:admin"]}),
                Ok(()),
                Err("scopes_all"),
            ),
            (
                json!({"scope": "invoices:read invoices:write"}),
                Err("scopes_any"),
                Ok(()),
            ),
            (
                json!({"scope": "invoices:read", "scp": ["invoices:write"]}),
                Err("scopes_any"),
                Ok(()),
            ),
            (
                json!({"scope": "invoices:read"}),
                Err("scopes_any"),
                Err("scopes_all"),
            ),
            // Case-sensitive, whole tokens only.
            (
                json!({"scope": "Documents:read documents"}),
                Err("scopes_any"),
                Err("scopes_all"),
            ),
            (json!({}), Err("scopes_any"), Err("scopes_all")),
        ];
        for (token, want_any, want_all) in cases {
            let token = claims(token);
            let identity = Identity::from_jwt_claims(&token);
            assert_eq!(any.check(&identity), want_any, "{token:?}");
            assert_eq!(all.check(&identity), want_all, "{token:?}");
        }
    }

    #[test]
    fn roles_array_or_single_string() {
        let any = requirement(r#"{"roles_any":["admin","ops"]}"#);
        let all = requirement(r#"{"roles_all":["admin","auditor"]}"#);
        let cases = [
            (json!({"roles": ["admin"]}), Ok(()), Err("roles_all")),
            (json!({"roles": "ops"}), Ok(()), Err("roles_all")),
            (json!({"roles": ["auditor", "admin"]}), Ok(()), Ok(())),
            // A string is one role, never split.
            (
                json!({"roles": "admin auditor"}),
                Err("roles_any"),
                Err("roles_all"),
            ),
            (
                json!({"roles": "super admin"}),
                Err("roles_any"),
                Err("roles_all"),
            ),
            (
                json!({"roles": [["admin"]]}),
                Err("roles_any"),
                Err("roles_all"),
            ),
            (
                json!({"roles": {"admin": true}}),
                Err("roles_any"),
                Err("roles_all"),
            ),
            // Scopes are not roles.
            (
                json!({"scope": "admin"}),
                Err("roles_any"),
                Err("roles_all"),
            ),
        ];
        for (token, want_any, want_all) in cases {
            let token = claims(token);
            let identity = Identity::from_jwt_claims(&token);
            assert_eq!(any.check(&identity), want_any, "{token:?}");
            assert_eq!(all.check(&identity), want_all, "{token:?}");
        }
    }

    #[test]
    fn every_rule_must_hold_and_the_first_failure_is_named() {
        let both = requirement(r#"{"scopes_all":["a"],"roles_any":["admin"]}"#);
        let token = claims(json!({"scope": "a", "roles": ["admin"]}));
        assert_eq!(both.check(&Identity::from_jwt_claims(&token)), Ok(()));
        let token = claims(json!({"scope": "a"}));
        assert_eq!(
            both.check(&Identity::from_jwt_claims(&token)),
            Err("roles_any")
        );
        let token = claims(json!({"roles": ["admin"]}));
        assert_eq!(
            both.check(&Identity::from_jwt_claims(&token)),
            Err("scopes_all")
        );
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
            Err("scopes_any")
        );
        assert_eq!(
            requirement(r#"{"roles_any":["invoices:read"]}"#).check(&identity),
            Err("roles_any")
        );
        // And it can never own anything.
        let owner = OwnerRule {
            param: "id".into(),
            claim: "sub".into(),
        };
        let params = PathParams(vec![("id".into(), "billing".into())]);
        assert!(owner.check(&params, &identity).is_err());
    }

    #[test]
    fn require_config_errors() {
        assert_eq!(
            require_errors("{}"),
            vec!["routes[1].require: must name at least one of scopes_any, scopes_all, roles_any, roles_all (omit \"require\" to require nothing)"]
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
        let identity = Identity::from_jwt_claims(&alice);
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
        let identity = Identity::from_jwt_claims(&tricky);
        assert_eq!(
            rule.check(&bound("bob%40x"), &identity),
            Err("owner mismatch")
        );
        // ...but reaches its own objects, written the way the upstream decodes to its sub.
        assert_eq!(rule.check(&bound("bob%2540x"), &identity), Ok(()));
        let email = claims(json!({"sub": "a:b@x"}));
        let identity = Identity::from_jwt_claims(&email);
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

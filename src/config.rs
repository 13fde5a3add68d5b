//! The plugin configuration (the user contract in shared/spec/config.md): parsed strictly,
//! validated whole, and compiled once per VM into an immutable [`Policy`]. Every error names the
//! JSON path of the offending value.

use crate::config_error::{index, join, ConfigError};
use crate::jwt::{JwtAuth, JwtConfig};
use crate::policy::{Auth, Mode, Policy, Route};
use crate::routes::{CompiledMatch, MatchConfig};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: RawMode,
    #[serde(default)]
    jwt: Option<JwtConfig>,
    routes: Vec<RawRoute>,
    // Sections of the spec that this build does not implement yet. They are recognised so that
    // a config using them is refused with a clear message instead of running without the
    // protection its author asked for.
    #[serde(default)]
    api_keys: Option<Value>,
    #[serde(default)]
    rate_limits: Option<Value>,
    #[serde(default)]
    cors: Option<Value>,
    #[serde(default)]
    security_headers: Option<Value>,
    #[serde(default)]
    errors: Option<Value>,
    #[serde(default)]
    webhooks: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawMode {
    #[default]
    Enforce,
    Report,
}

#[derive(Debug, Deserialize)]
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
    require: Option<Value>,
    #[serde(default)]
    owner: Option<Value>,
    #[serde(default)]
    rate_limit: Option<Value>,
    #[serde(default)]
    max_body_bytes: Option<Value>,
    #[serde(default)]
    webhook: Option<Value>,
    #[serde(default)]
    body_schema: Option<Value>,
}

const NOT_YET: &str = "is not supported by this build of api-guard yet; remove it or upgrade (refused rather than ignored, so that no protection is silently missing)";

/// Parses and compiles the plugin configuration. All errors are returned, not just the first.
pub fn load(bytes: &[u8]) -> Result<Policy, Vec<ConfigError>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(vec![ConfigError::new(
            "",
            "the plugin configuration is empty: api-guard needs at least \"routes\"",
        )]);
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![ConfigError::new(path, e.into_inner().to_string())]
    })?;
    compile(raw)
}

fn compile(raw: RawConfig) -> Result<Policy, Vec<ConfigError>> {
    let mut errors = Vec::new();
    for (name, section) in [
        ("api_keys", &raw.api_keys),
        ("rate_limits", &raw.rate_limits),
        ("cors", &raw.cors),
        ("security_headers", &raw.security_headers),
        ("errors", &raw.errors),
        ("webhooks", &raw.webhooks),
    ] {
        if section.is_some() {
            errors.push(ConfigError::new(name, NOT_YET));
        }
    }
    let jwt = match &raw.jwt {
        None => None,
        Some(config) => match JwtAuth::compile(config, "jwt") {
            Ok(jwt) => Some(jwt),
            Err(mut e) => {
                errors.append(&mut e);
                None
            }
        },
    };
    if raw.routes.is_empty() {
        errors.push(ConfigError::new(
            "routes",
            "at least one route is required (a request that matches no route is refused)",
        ));
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.iter().enumerate() {
        let at = index("routes", i);
        if r.name.is_empty() {
            errors.push(ConfigError::new(join(&at, "name"), "must not be empty"));
        } else if raw.routes[..i].iter().any(|other| other.name == r.name) {
            errors.push(ConfigError::new(
                join(&at, "name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
        for (field, value) in [
            ("require", &r.require),
            ("owner", &r.owner),
            ("rate_limit", &r.rate_limit),
            ("max_body_bytes", &r.max_body_bytes),
            ("webhook", &r.webhook),
            ("body_schema", &r.body_schema),
        ] {
            if value.is_some() {
                errors.push(ConfigError::new(join(&at, field), NOT_YET));
            }
        }
        let auth = match r.auth {
            RawAuth::None => Some(Auth::None),
            RawAuth::Jwt => {
                if raw.jwt.is_none() {
                    errors.push(ConfigError::new(
                        join(&at, "auth"),
                        "\"jwt\" needs a \"jwt\" section with at least one provider",
                    ));
                }
                Some(Auth::Jwt)
            }
            RawAuth::ApiKey | RawAuth::JwtOrApiKey => {
                errors.push(ConfigError::new(
                    join(&at, "auth"),
                    format!("API key authentication {NOT_YET}"),
                ));
                None
            }
        };
        let matcher = match CompiledMatch::compile(&r.matcher, &join(&at, "match")) {
            Ok(m) => Some(m),
            Err(mut e) => {
                errors.append(&mut e);
                None
            }
        };
        if let (Some(auth), Some(matcher)) = (auth, matcher) {
            routes.push(Route {
                name: r.name.clone(),
                matcher,
                auth,
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mode = match raw.mode {
        RawMode::Enforce => Mode::Enforce,
        RawMode::Report => Mode::Report,
    };
    Ok(Policy { mode, jwt, routes })
}

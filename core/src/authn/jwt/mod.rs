//! JWT authentication: token sources, providers compiled from configuration, verification with
//! a bounded per-VM cache of verified tokens.

pub mod alg;
pub mod b64url;
pub mod cache;
pub mod claim_path;
pub mod claims;
pub mod jwk;
pub mod remote;
pub mod token;
pub mod verifier;

use crate::authn::dpop::{DpopMode, DPOP_SCHEME};
use crate::config::error::{index, join, ConfigError};
use crate::request::head::RequestHead;
use alg::{Alg, KeyFamily};
use cache::TokenCache;
use claim_path::{ClaimPath, ProviderClaims, ScopeClaim};
use claims::{ClaimRefusal, ClaimRules, TimeBounds};
use jwk::Jwk;
use remote::{RemoteJwks, RemoteKeys};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::rc::Rc;
use verifier::SignatureVerifier;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub providers: Vec<ProviderConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    pub jwks: JwksConfig,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    #[serde(default)]
    pub max_lifetime_seconds: Option<u64>,
    #[serde(default = "default_true")]
    pub require_expiration: bool,
    #[serde(default)]
    pub from: Option<Vec<TokenSourceConfig>>,
    #[serde(default)]
    pub claims_to_headers: Vec<ClaimToHeaderConfig>,
    #[serde(default)]
    pub forward_token: bool,
    /// RFC 9449 sender-constrained tokens (`authn::dpop`).
    #[serde(default)]
    pub dpop: DpopMode,
    /// Where roles are read (default `roles`); a `/` name is a JSON Pointer.
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// Where scopes are read (default `scope` then `scp`); a `/` name is a JSON Pointer.
    #[serde(default)]
    pub scopes_claim: Option<String>,
}

fn default_clock_skew() -> u64 {
    60
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    #[serde(default)]
    pub inline: Option<Value>,
    #[serde(default)]
    pub remote: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSourceConfig {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeaderConfig {
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Header name (lower case) and a prefix compared case-insensitively (`Bearer ` per RFC 6750).
    Header {
        name: String,
        prefix: String,
    },
    Cookie {
        name: String,
    },
    /// `Authorization: DPoP <token>` (RFC 9449 section 7.1), read for the providers whose
    /// `dpop` is not `off`; the token counts only with a valid proof (`authn::dpop`).
    Dpop,
}

impl TokenSource {
    /// The header and scheme prefix this source reads (`None` for a cookie).
    pub fn header(&self) -> Option<(&str, &str)> {
        match self {
            TokenSource::Header { name, prefix } => Some((name, prefix)),
            TokenSource::Dpop => Some(("authorization", "DPoP ")),
            TokenSource::Cookie { .. } => None,
        }
    }
}

pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    /// Inline keys: the whole set, or the fallback next to a remote source.
    pub keys: Vec<Jwk>,
    /// Where the remote JWKS is fetched from; its keys are in [`RemoteKeys`], per VM.
    pub remote: Option<RemoteJwks>,
    pub clock_skew_seconds: u64,
    pub max_lifetime_seconds: Option<u64>,
    pub require_expiration: bool,
    /// Indexes into `JwtAuth::sources`.
    pub sources: Vec<usize>,
    /// Claim, and the (lower-case) header it is copied into.
    pub claims_to_headers: Vec<(ClaimPath, String)>,
    pub forward_token: bool,
    pub dpop: DpopMode,
    /// Where this provider's tokens carry roles and scopes.
    pub identity_claims: ProviderClaims,
}

impl Provider {
    fn rules(&self) -> ClaimRules<'_> {
        ClaimRules {
            issuer: &self.issuer,
            audiences: &self.audiences,
            clock_skew_seconds: self.clock_skew_seconds,
            max_lifetime_seconds: self.max_lifetime_seconds,
            require_expiration: self.require_expiration,
        }
    }
}

pub struct JwtAuth {
    pub providers: Vec<Provider>,
    /// Every place a token may be read from, in the order configured, without duplicates.
    pub sources: Vec<TokenSource>,
    /// Every header that `claims_to_headers` sets: removed from every incoming request.
    pub identity_headers: Vec<String>,
}

/// What a verified token yields. Shared by the cache and the requests that hit it.
#[derive(Debug)]
pub struct VerifiedToken {
    pub provider: usize,
    pub subject: Option<String>,
    pub claims: Map<String, Value>,
    pub time: TimeBounds,
    /// `claims_to_headers`, rendered once at verification.
    pub upstream_headers: Vec<(String, String)>,
    /// The provider's remote key-set version the token was verified under (0: inline keys
    /// only). A cached token counts only while that version is current, so a key removed from
    /// the set stops verifying at once.
    pub key_set_version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtFailure {
    /// No token in any configured place.
    Missing,
    /// A token was presented and refused; `expired` tells `token_expired` from `invalid_token`.
    Refused { expired: bool, reason: &'static str },
}

/// A remote provider has no key for a token (unknown `kid`, or no set fetched yet). Not a
/// verdict yet: the request may wait for a refetch (see `policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyNotFound {
    pub provider: usize,
    /// No remote set has been fetched for the provider yet.
    pub remote_set_missing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    Refused(JwtFailure),
    KeyNotFound(KeyNotFound),
}

impl From<JwtFailure> for VerifyError {
    fn from(failure: JwtFailure) -> VerifyError {
        VerifyError::Refused(failure)
    }
}

impl VerifyError {
    /// The refusal once waiting is no option.
    pub fn into_failure(self) -> JwtFailure {
        match self {
            VerifyError::Refused(failure) => failure,
            VerifyError::KeyNotFound(missing) => JwtFailure::Refused {
                expired: false,
                reason: if missing.remote_set_missing {
                    "no remote key set fetched yet"
                } else {
                    "unknown kid"
                },
            },
        }
    }
}

/// A token found in a request, with the place it came from.
#[derive(Debug, Clone, Copy)]
pub struct FoundToken<'r> {
    pub token: &'r str,
    pub source: usize,
}

pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        })
}

/// Headers a claim may never be copied into: routing and framing belong to Envoy.
const RESERVED_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
];

impl JwtAuth {
    pub fn compile(config: &JwtConfig, at: &str) -> Result<JwtAuth, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut providers = Vec::new();
        let mut sources: Vec<TokenSource> = Vec::new();
        let mut identity_headers: Vec<String> = Vec::new();
        let providers_at = join(at, "providers");
        if config.providers.is_empty() {
            errors.push(ConfigError::new(
                &providers_at,
                "at least one provider is required",
            ));
        }
        for (i, p) in config.providers.iter().enumerate() {
            let p_at = index(&providers_at, i);
            match compile_provider(p, &p_at, &mut sources) {
                Ok(provider) => {
                    if providers.iter().any(|q: &Provider| q.name == provider.name) {
                        errors.push(ConfigError::new(
                            join(&p_at, "name"),
                            format!("duplicate provider name {:?}", provider.name),
                        ));
                    }
                    for (_, header) in &provider.claims_to_headers {
                        if !identity_headers.contains(header) {
                            identity_headers.push(header.clone());
                        }
                    }
                    providers.push(provider);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(JwtAuth {
                providers,
                sources,
                identity_headers,
            })
        } else {
            Err(errors)
        }
    }

    /// The first token found, trying sources in configured order. Several values of one
    /// credential header are refused: which one a backend would read is anyone's guess.
    pub fn find_token<'r>(
        &'r self,
        head: &'r RequestHead,
    ) -> Result<Option<FoundToken<'r>>, JwtFailure> {
        for (source_index, source) in self.sources.iter().enumerate() {
            match source {
                TokenSource::Header { .. } | TokenSource::Dpop => {
                    let Some((name, prefix)) = source.header() else {
                        continue;
                    };
                    let mut values = head.header_values(name);
                    let Some(value) = values.next() else { continue };
                    if values.next().is_some() {
                        return Err(JwtFailure::Refused {
                            expired: false,
                            reason: "credential header repeated",
                        });
                    }
                    let Some(start) = value.get(..prefix.len()) else {
                        continue;
                    };
                    if !start.eq_ignore_ascii_case(prefix) {
                        continue;
                    }
                    let token = value[prefix.len()..].trim_matches(' ');
                    if token.is_empty() {
                        return Err(JwtFailure::Refused {
                            expired: false,
                            reason: "empty token",
                        });
                    }
                    return Ok(Some(FoundToken {
                        token,
                        source: source_index,
                    }));
                }
                TokenSource::Cookie { name } => {
                    if head.cookie_count(name) > 1 {
                        return Err(JwtFailure::Refused {
                            expired: false,
                            reason: "credential cookie repeated",
                        });
                    }
                    if let Some(token) = head.cookie(name) {
                        if token.is_empty() {
                            return Err(JwtFailure::Refused {
                                expired: false,
                                reason: "empty token",
                            });
                        }
                        return Ok(Some(FoundToken {
                            token,
                            source: source_index,
                        }));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Verifies a found token with inline keys only (a remote provider has no key here). For
    /// the tests, benches and fuzz targets: the filter always goes through [`Self::verify_with`]
    /// (`pipeline::policy`), so this is built only with the `testing` feature.
    #[cfg(any(test, feature = "testing"))]
    pub fn verify(
        &self,
        found: FoundToken<'_>,
        now: u64,
        verifier: &dyn SignatureVerifier,
        cache: &mut TokenCache,
    ) -> Result<Rc<VerifiedToken>, JwtFailure> {
        self.verify_with(found, now, verifier, cache, &RemoteKeys::default())
            .map_err(VerifyError::into_failure)
    }

    /// Verifies a found token with the inline keys and this VM's remote key sets. The cache is
    /// consulted first; on a hit only the time claims are checked again.
    pub fn verify_with(
        &self,
        found: FoundToken<'_>,
        now: u64,
        verifier: &dyn SignatureVerifier,
        cache: &mut TokenCache,
        remote_keys: &RemoteKeys,
    ) -> Result<Rc<VerifiedToken>, VerifyError> {
        if let Some(hit) = cache.get(found.token) {
            // A hit counts only where its provider reads tokens: a token verified from a
            // cookie must not be accepted from a header its provider never reads. And only
            // under the key set it was verified with: its key may have been removed since.
            if let Some(provider) = self.providers.get(hit.provider).filter(|p| {
                p.sources.contains(&found.source)
                    && hit.key_set_version == remote_keys.version(hit.provider)
            }) {
                cache.count_hit();
                return match claims::check_time(hit.time, provider.clock_skew_seconds, now) {
                    Ok(()) => Ok(hit),
                    Err(refusal) => {
                        cache.remove(found.token);
                        Err(claim_failure(refusal).into())
                    }
                };
            }
        }
        cache.count_miss();
        let verified = Rc::new(self.verify_uncached(found, now, verifier, remote_keys)?);
        cache.insert(found.token, Rc::clone(&verified));
        Ok(verified)
    }

    fn verify_uncached(
        &self,
        found: FoundToken<'_>,
        now: u64,
        verifier: &dyn SignatureVerifier,
        remote_keys: &RemoteKeys,
    ) -> Result<VerifiedToken, VerifyError> {
        let refused = |reason| JwtFailure::Refused {
            expired: false,
            reason,
        };
        let untrusted = token::parse(found.token).map_err(|r| refused(r.reason()))?;
        // The issuer picks the provider; nothing is trusted until that provider's key verifies.
        let issuer = untrusted
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(refused("iss missing or not a string"))?;
        let (provider_index, provider) = self
            .providers
            .iter()
            .enumerate()
            .find(|(_, p)| p.issuer == issuer && p.sources.contains(&found.source))
            .ok_or(refused("no provider for this issuer and token location"))?;
        let alg = untrusted.header.alg;
        if !provider.algorithms.contains(&alg) {
            return Err(refused("alg not allowed for this provider").into());
        }
        // Claims before the signature: refusing a bad token costs no public-key operation.
        let time =
            claims::validate(&untrusted.claims, &provider.rules(), now).map_err(claim_failure)?;
        let kid = untrusted.header.kid.as_deref();
        let mut candidates = remote_keys
            .keys(provider_index)
            .iter()
            .chain(provider.keys.iter())
            .filter(|k| k.accepts(alg) && (kid.is_none() || k.kid.as_deref() == kid))
            .peekable();
        if candidates.peek().is_none() {
            if provider.remote.is_some() {
                // The remote set may not have this key yet (rotation) or may not be fetched
                // yet: the caller decides whether the request waits for a refetch.
                return Err(VerifyError::KeyNotFound(KeyNotFound {
                    provider: provider_index,
                    remote_set_missing: !remote_keys.has_set(provider_index),
                }));
            }
            return Err(refused(if kid.is_some() {
                "unknown kid"
            } else {
                "no key for this alg"
            })
            .into());
        }
        let mut last_refusal = "signature does not verify";
        let verified = candidates.any(|key| {
            match verifier.verify(
                key,
                alg,
                untrusted.signing_input.as_bytes(),
                &untrusted.signature,
            ) {
                Ok(()) => true,
                Err(reason) => {
                    last_refusal = reason;
                    false
                }
            }
        });
        if !verified {
            return Err(refused(last_refusal).into());
        }
        let mut upstream_headers = Vec::with_capacity(provider.claims_to_headers.len());
        for (claim, header) in &provider.claims_to_headers {
            if let Some(value) = claim.lookup(&untrusted.claims) {
                let rendered = render_claim(value)
                    .ok_or(refused("claim cannot be forwarded as a header value"))?;
                upstream_headers.push((header.clone(), rendered));
            }
        }
        let subject = untrusted
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(VerifiedToken {
            provider: provider_index,
            subject,
            claims: untrusted.claims,
            time,
            upstream_headers,
            key_set_version: remote_keys.version(provider_index),
        })
    }
}

fn claim_failure(refusal: ClaimRefusal) -> JwtFailure {
    match refusal {
        ClaimRefusal::Expired => JwtFailure::Refused {
            expired: true,
            reason: "token expired",
        },
        ClaimRefusal::Invalid(reason) => JwtFailure::Refused {
            expired: false,
            reason,
        },
    }
}

/// A claim as a header value: strings as they are, arrays joined with commas, other values as
/// JSON. A comma inside a value would read as a separator (the role `"viewer,admin"` as two
/// roles), so every value has `%` and `,` percent-encoded (`viewer%2Cadmin`): a comma in the
/// header always separates array items, and `%XX` decoding gives back the claim's text.
/// `None` when the result could smuggle a header (control characters) or is too long.
pub fn render_claim(value: &Value) -> Option<String> {
    fn push_scalar(out: &mut String, value: &Value) {
        let text;
        let text = match value {
            Value::String(s) => s.as_str(),
            other => {
                text = other.to_string();
                text.as_str()
            }
        };
        for c in text.chars() {
            match c {
                '%' => out.push_str("%25"),
                ',' => out.push_str("%2C"),
                c => out.push(c),
            }
        }
    }
    let mut rendered = String::new();
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    rendered.push(',');
                }
                push_scalar(&mut rendered, item);
            }
        }
        other => push_scalar(&mut rendered, other),
    }
    let safe = rendered.len() <= 4096
        && rendered
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    safe.then_some(rendered)
}

fn compile_provider(
    p: &ProviderConfig,
    at: &str,
    sources: &mut Vec<TokenSource>,
) -> Result<Provider, Vec<ConfigError>> {
    let mut errors = Vec::new();
    if p.name.is_empty() {
        errors.push(ConfigError::new(join(at, "name"), "must not be empty"));
    }
    if p.issuer.is_empty() {
        errors.push(ConfigError::new(
            join(at, "issuer"),
            "must not be empty: tokens are always checked against their issuer",
        ));
    }
    if p.audiences.is_empty() {
        errors.push(ConfigError::new(join(at, "audiences"), "at least one audience is required: a token meant for another service must not be accepted here"));
    }
    for (i, a) in p.audiences.iter().enumerate() {
        if a.is_empty() {
            errors.push(ConfigError::new(
                index(&join(at, "audiences"), i),
                "must not be empty",
            ));
        }
    }
    let algorithms = match &p.algorithms {
        None => alg::DEFAULT_ALLOWED.to_vec(),
        Some(names) => {
            let algs_at = join(at, "algorithms");
            if names.is_empty() {
                errors.push(ConfigError::new(
                    &algs_at,
                    "must not be empty (leave it out for every asymmetric algorithm)",
                ));
            }
            let mut algs = Vec::new();
            for (i, name) in names.iter().enumerate() {
                if name.eq_ignore_ascii_case("none") {
                    errors.push(ConfigError::new(
                        index(&algs_at, i),
                        "\"none\" is never accepted: unsigned tokens prove nothing",
                    ));
                } else if let Some(a) = Alg::from_name(name) {
                    if !algs.contains(&a) {
                        algs.push(a);
                    }
                } else {
                    errors.push(ConfigError::new(
                        index(&algs_at, i),
                        format!("unknown algorithm {name:?}"),
                    ));
                }
            }
            algs
        }
    };
    let jwks_at = join(at, "jwks");
    let keys = match &p.jwks.inline {
        Some(inline) => match jwk::parse_jwks(inline, &join(&jwks_at, "inline")) {
            Ok(keys) => keys,
            Err(mut e) => {
                errors.append(&mut e);
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let remote = match &p.jwks.remote {
        Some(remote) => {
            let remote_at = join(&jwks_at, "remote");
            if !algorithms.is_empty() && algorithms.iter().all(|a| a.family() == KeyFamily::Hmac) {
                errors.push(ConfigError::new(
                    &remote_at,
                    "a remote JWKS never supplies HMAC secrets: allow an asymmetric algorithm",
                ));
            }
            match RemoteJwks::compile(remote, &p.name, &algorithms, &remote_at) {
                Ok(remote) => Some(remote),
                Err(mut e) => {
                    errors.append(&mut e);
                    None
                }
            }
        }
        None => {
            if p.jwks.inline.is_none() {
                errors.push(ConfigError::new(
                    &jwks_at,
                    "needs \"inline\" keys or a \"remote\" source",
                ));
            }
            None
        }
    };
    if !keys.is_empty()
        && !algorithms.is_empty()
        && !keys
            .iter()
            .any(|k| algorithms.iter().any(|a| k.accepts(*a)))
    {
        errors.push(ConfigError::new(
            &jwks_at,
            "no key fits any of the provider's algorithms",
        ));
    }
    let mut provider_sources = Vec::new();
    let default_from = [TokenSourceConfig {
        header: Some("authorization".into()),
        prefix: Some("Bearer ".into()),
        cookie: None,
    }];
    let from: &[TokenSourceConfig] = p.from.as_deref().unwrap_or(&default_from);
    let from_at = join(at, "from");
    if from.is_empty() {
        errors.push(ConfigError::new(
            &from_at,
            "must name at least one place to read the token from",
        ));
    }
    for (i, f) in from.iter().enumerate() {
        let f_at = index(&from_at, i);
        let source = match (&f.header, &f.cookie, &f.prefix) {
            (Some(name), None, prefix) => {
                let name = name.to_ascii_lowercase();
                if !is_header_name(&name) {
                    errors.push(ConfigError::new(
                        join(&f_at, "header"),
                        "not a valid header name",
                    ));
                    continue;
                }
                let prefix = prefix.clone().unwrap_or_default();
                if name == "authorization" && prefix.trim().eq_ignore_ascii_case(DPOP_SCHEME) {
                    errors.push(ConfigError::new(
                        join(&f_at, "prefix"),
                        "the DPoP scheme is read by \"dpop\": \"optional\" or \"required\", never as a bearer token",
                    ));
                    continue;
                }
                if name == "authorization" && prefix.trim().is_empty() && p.dpop != DpopMode::Off {
                    // It would take `DPoP <token>` whole, before the DPoP scheme is looked at.
                    errors.push(ConfigError::new(
                        join(&f_at, "prefix"),
                        "with \"dpop\", the authorization header needs a scheme prefix such as \"Bearer \"",
                    ));
                    continue;
                }
                TokenSource::Header { name, prefix }
            }
            (None, Some(name), None) => {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"=;,\"\\".contains(&b))
                {
                    errors.push(ConfigError::new(
                        join(&f_at, "cookie"),
                        "not a valid cookie name",
                    ));
                    continue;
                }
                TokenSource::Cookie { name: name.clone() }
            }
            (None, Some(_), Some(_)) => {
                errors.push(ConfigError::new(
                    join(&f_at, "prefix"),
                    "a prefix applies to a header source only",
                ));
                continue;
            }
            _ => {
                errors.push(ConfigError::new(&f_at, "needs exactly one of \"header\" or \"cookie\" (tokens are never read from the URL)"));
                continue;
            }
        };
        let source_index = match sources.iter().position(|s| *s == source) {
            Some(existing) => existing,
            None => {
                sources.push(source);
                sources.len() - 1
            }
        };
        if !provider_sources.contains(&source_index) {
            provider_sources.push(source_index);
        }
    }
    if p.dpop != DpopMode::Off {
        let source_index = match sources.iter().position(|s| *s == TokenSource::Dpop) {
            Some(existing) => existing,
            None => {
                sources.push(TokenSource::Dpop);
                sources.len() - 1
            }
        };
        provider_sources.push(source_index);
    }
    let mut claims_to_headers = Vec::new();
    let c2h_at = join(at, "claims_to_headers");
    for (i, c) in p.claims_to_headers.iter().enumerate() {
        let header = c.header.to_ascii_lowercase();
        let claim = match ClaimPath::compile(&c.claim, &join(&index(&c2h_at, i), "claim")) {
            Ok(claim) => claim,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        if !is_header_name(&header) || RESERVED_HEADERS.contains(&header.as_str()) {
            errors.push(ConfigError::new(
                join(&index(&c2h_at, i), "header"),
                "not a header a claim may be copied into",
            ));
        } else if claims_to_headers.iter().any(|(_, h)| *h == header) {
            errors.push(ConfigError::new(
                join(&index(&c2h_at, i), "header"),
                "header set twice",
            ));
        } else {
            claims_to_headers.push((claim, header));
        }
    }
    let mut identity_claims = ProviderClaims::default();
    if let Some(name) = &p.roles_claim {
        match ClaimPath::compile(name, &join(at, "roles_claim")) {
            Ok(path) => identity_claims.roles = path,
            Err(error) => errors.push(error),
        }
    }
    if let Some(name) = &p.scopes_claim {
        match ClaimPath::compile(name, &join(at, "scopes_claim")) {
            Ok(path) => identity_claims.scopes = vec![ScopeClaim { path, arrays: true }],
            Err(error) => errors.push(error),
        }
    }
    if p.max_lifetime_seconds == Some(0) {
        errors.push(ConfigError::new(
            join(at, "max_lifetime_seconds"),
            "must be positive",
        ));
    }
    if p.clock_skew_seconds > 600 {
        errors.push(ConfigError::new(
            join(at, "clock_skew_seconds"),
            "at most 600 seconds",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Provider {
        name: p.name.clone(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        algorithms,
        keys,
        remote,
        clock_skew_seconds: p.clock_skew_seconds,
        max_lifetime_seconds: p.max_lifetime_seconds,
        require_expiration: p.require_expiration,
        sources: provider_sources,
        claims_to_headers,
        forward_token: p.forward_token,
        dpop: p.dpop,
        identity_claims,
    })
}

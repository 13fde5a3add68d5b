//! Fuzz target bodies (issue 12). Each `pub fn <target>(data: &[u8])` is what
//! `fuzz/fuzz_targets/<target>.rs` runs under libFuzzer (`make fuzz`), and what
//! `tests/fuzz_corpus.rs` replays over every file of `fuzz/corpus/<target>/` (`make test`).
//!
//! Not part of the filter: compiled natively only (never into the wasm), hidden from the docs.
//! The first property of every target is that the library returns, whatever the bytes: it must
//! never panic. The others are checked with `assert!`, the one way a target reports an input that
//! breaks a property: a target body panics on a finding, and on nothing else.
//!
//! Inputs are small text formats where that helps the seed corpora stay readable; each target
//! says how it reads its bytes.
#![cfg(not(target_arch = "wasm32"))]

use crate::authn::api_keys::{self, ApiKeys, ApiKeysConfig};
use crate::authn::jwt::alg::Alg;
use crate::authn::jwt::cache::TokenCache;
use crate::authn::jwt::verifier::RustVerifier;
use crate::authn::jwt::{FoundToken, JwtAuth, JwtConfig, VerifiedToken};
use crate::body::replay::SharedReplayTable;
use crate::body::schema::{BodySchema, FieldError, MAX_ERRORS};
use crate::body::strict_json;
use crate::body::webhook::{Webhook, WebhookConfig, WebhookRefusal};
use crate::config;
use crate::limits::rate_limit::MemoryStore;
use crate::pipeline::policy::{Policy, Verdict};
use crate::request::head::RequestHead;
use crate::request::header_pairs::{self, HeaderPairs};
use crate::request::routes::{self, NormalizedPath, PathParameters};
use crate::support::test_env::TestHost;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::rc::Rc;

/// The fixed clock of every target (2027-01-15T08:00:00Z).
pub const NOW: u64 = 1_800_000_000;

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Reports a broken property: the one place a target panics outside an `assert!` (that is how
/// libFuzzer and the replay test see a finding). Never called by the filter.
#[allow(clippy::panic)]
#[cold]
fn finding(message: impl std::fmt::Display) {
    panic!("fuzz finding: {message}");
}

/// Findings reported to the owners of the code and not fixed yet. While one is listed here the
/// targets let inputs that show it pass (the check is skipped, nothing else), so that fuzzing
/// goes on looking for new findings. `tests/fuzz_corpus.rs` keeps the list exact: every file of
/// `fuzz/regressions/<target>/<finding>-*` must still fail its target under [`strict`] while its
/// finding is listed, and pass once it is not. Once one is fixed: delete it from the list.
pub const OPEN_FINDINGS: &[Open] = &[];

/// One finding (the name is the prefix of its files in `fuzz/regressions/<target>/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// `config::load` accepts bytes after the JSON document (`{..} garbage`, two documents):
    /// `serde_path_to_error::deserialize` is never followed by `Deserializer::end`.
    ConfigTrailingBytes,
    /// serde's "invalid type: string \"..\"" quotes the value: a webhook secret (or API-key
    /// hash, HMAC `k`) given as a string where an array or object is expected lands in the log.
    ConfigErrorQuotesSecret,
    /// `normalize_path` accepts escapes of C1 control characters (`%C2%80`-`%C2%9F`, e.g. NEL
    /// `%C2%85`) and raw ones: a decoding upstream sees a control character.
    C1ControlInPath,
    /// `normalize_path` accepts U+2028/U+2029 (`%E2%80%A8`, `%E2%80%A9`), which Spring
    /// Security's `StrictHttpFirewall` refuses in the decoded path (fail closed, but a
    /// differential).
    LineSeparatorInPath,
}

impl Open {
    pub fn name(self) -> &'static str {
        match self {
            Open::ConfigTrailingBytes => "config-trailing-bytes",
            Open::ConfigErrorQuotesSecret => "config-error-quotes-secret",
            Open::C1ControlInPath => "c1-control-in-path",
            Open::LineSeparatorInPath => "line-separator-in-path",
        }
    }

    pub const ALL: [Open; 4] = [
        Open::ConfigTrailingBytes,
        Open::ConfigErrorQuotesSecret,
        Open::C1ControlInPath,
        Open::LineSeparatorInPath,
    ];
}

thread_local! {
    static STRICT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every check on, open findings included (for the regression test).
pub fn strict<R>(f: impl FnOnce() -> R) -> R {
    STRICT.with(|s| s.set(true));
    let r = f();
    STRICT.with(|s| s.set(false));
    r
}

/// Whether an input that shows `finding` is let pass.
fn tolerated(finding: Open) -> bool {
    OPEN_FINDINGS.contains(&finding) && !STRICT.with(std::cell::Cell::get)
}

/// `name: value` lines as Envoy hands them over: names lower-cased, values without the optional
/// whitespace around them. Lines without a `:` after the first byte are skipped.
fn header_lines(text: &str) -> Vec<(String, String)> {
    text.split('\n')
        .filter_map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let colon = line.get(1..)?.find(':')? + 1;
            let name = line.get(..colon)?.trim().to_ascii_lowercase();
            let value = line.get(colon + 1..)?.trim_matches([' ', '\t']).to_string();
            (!name.is_empty() && !name.starts_with(':')).then_some((name, value))
        })
        .collect()
}

fn head_with(headers: Vec<(String, String)>, method: &str, path: &str) -> RequestHead {
    let mut all = vec![
        (":method".to_string(), method.to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), "api.test".to_string()),
        ("x-request-id".to_string(), "fuzz".to_string()),
    ];
    all.extend(headers);
    RequestHead::from_host(all, Some("192.0.2.1:4000"))
}

fn hex_lower(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Percent-decodes every `%XX` (the reading of a decoding upstream); `None` for a `%` that is
/// not followed by two hex digits. `percent-encoding` decodes, after a check of our own: it
/// would keep such a `%` as it is, where this model refuses the whole text.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit))
    });
    well_formed.then(|| percent_encoding::percent_decode(bytes).collect())
}

/// `path` without one trailing `/` (the root stays `/`).
fn without_trailing_slash(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    }
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// config_load
// ---------------------------------------------------------------------------------------------

/// Strings under `webhooks.*.secrets`, `api_keys.keys[].sha256` and JWK `k`: values that must
/// never be quoted in a configuration error (errors go to Envoy's log).
fn config_secrets(value: &Value) -> Vec<String> {
    fn strings(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            Value::Object(map) => map.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    fn jwk_k(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(k)) = map.get("k") {
                    out.push(k.clone());
                }
                map.values().for_each(|v| jwk_k(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| jwk_k(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(Value::Object(hooks)) = value.get("webhooks") {
        for hook in hooks.values() {
            if let Some(secrets) = hook.get("secrets") {
                strings(secrets, &mut out);
            }
        }
    }
    if let Some(Value::Array(keys)) = value.pointer("/api_keys/keys") {
        for key in keys {
            if let Some(hash) = key.get("sha256") {
                strings(hash, &mut out);
            }
        }
    }
    if let Some(jwt) = value.get("jwt") {
        jwk_k(jwt, &mut out);
    }
    // Short strings could appear in a message by coincidence (a field name, a number).
    out.retain(|s| s.len() >= 16);
    out
}

/// Every string of the document outside the secret positions (values and member names): an
/// error may quote these. A secret that is also part of one of them (`"sha256": "000..."` and an
/// `auth` value of `"api_ke000...0y"`) is quoted because of where else it is written, not leaked.
fn public_strings(value: &Value, secrets: &[String]) -> Vec<String> {
    fn all(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| all(v, out)),
            Value::Object(map) => map.iter().for_each(|(k, v)| {
                out.push(k.clone());
                all(v, out);
            }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    all(value, &mut out);
    for secret in secrets {
        if let Some(at) = out.iter().position(|s| s == secret) {
            out.swap_remove(at);
        }
    }
    out
}

/// `config::load` on arbitrary bytes as the plugin JSON.
///
/// - never panics, and is deterministic: loading the same bytes twice gives the same verdict
///   and the same errors (a reload never fails differently);
/// - a configuration it accepts is one JSON document (no trailing bytes Envoy's JSON would see
///   and api-guard would ignore), and the same document written in any other JSON formatting is
///   accepted too;
/// - no error quotes a webhook secret, an API-key hash or an HMAC key.
pub fn config_load(data: &[u8]) {
    let first = config::load(data);
    let second = config::load(data);
    let describe = |r: &Result<Policy, Vec<crate::config::error::ConfigError>>| match r {
        Ok(policy) => Ok(policy.routes.len()),
        Err(errors) => Err(errors.iter().map(ToString::to_string).collect::<Vec<_>>()),
    };
    assert_eq!(describe(&first), describe(&second), "reload differs");
    let mut document = serde_json::from_slice::<Value>(data);
    if document.is_err() && first.is_ok() && tolerated(Open::ConfigTrailingBytes) {
        // Go on with the document that was read.
        let mut stream = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
        if let Some(Ok(value)) = stream.next() {
            document = Ok(value);
        }
    }
    match (&first, &document) {
        (Ok(_), Err(e)) => finding(format!(
            "accepted bytes that are not one JSON document: {e}"
        )),
        (Ok(policy), Ok(value)) => {
            let pretty = serde_json::to_vec_pretty(value).unwrap_or_default();
            match config::load(&pretty) {
                Ok(again) => assert_eq!(
                    again.routes.len(),
                    policy.routes.len(),
                    "reformatted config compiles to other routes"
                ),
                Err(errors) => finding(format!(
                    "the same document reformatted is refused: {:?}",
                    errors.iter().map(ToString::to_string).collect::<Vec<_>>()
                )),
            }
        }
        (Err(errors), Ok(value)) => {
            let secrets = config_secrets(value);
            let public = public_strings(value, &secrets);
            for secret in secrets {
                if public.iter().any(|s| s.contains(secret.as_str())) {
                    continue;
                }
                for error in errors {
                    let text = error.to_string();
                    if tolerated(Open::ConfigErrorQuotesSecret)
                        && (text.contains("invalid type: string")
                            || text.contains("invalid value: string"))
                    {
                        continue;
                    }
                    assert!(
                        !text.contains(&secret),
                        "a configuration error quotes a secret: {text}"
                    );
                }
            }
        }
        (Err(_), Err(_)) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// jwt_verify
// ---------------------------------------------------------------------------------------------

/// The HMAC secret of provider `main` (64 bytes: long enough for HS512). Fuzzing only: this
/// module is never compiled into the filter.
pub const FUZZ_HMAC_MAIN: &[u8; 64] =
    b"fuzz-only HMAC secret for provider main, 64 bytes long: 01234567";
/// The HMAC secret of provider `cookie` (48 bytes: HS384).
pub const FUZZ_HMAC_COOKIE: &[u8; 48] = b"fuzz-only secret of provider cookie, 48 bytes...";

pub const JWT_MAIN_ISSUER: &str = "https://issuer.test";
pub const JWT_COOKIE_ISSUER: &str = "https://cookie.test";

const P256_X: &str = "netKVqWD9UqHRcdSkKFHUGuOOnb8VVM2CQ7Yl_gr_io";
const P256_Y: &str = "Y27n6B1UQ5v0tPihgSEPL_jlC1d4nWVdzppkqpr8AH0";
const P256_OTHER_X: &str = "7hNEwZnxtIy3KZe3QslrOG5ue1X4p5akR-1ux_CpZtA";
const P256_OTHER_Y: &str = "L9ObB5whThQFrpX-cjnZdyzuCUKaQHawKwqrNkqJcWA";
const ED25519_X: &str = "jnw5jVVYVdJJbi_n8j4ISNrd0cfGqp0vmB3dFXiViLo";
const RSA_N: &str = "sSRZTDN53lxOWGP84mfvVo_QUaPzlzvZcy9vWQWphPQkj5YIrQzakwgtDy5QHrdcL6ss0OcEFTTNX_Ys0FXFYONR3SsGEbpsg9Oml3pztlTa8yWhhxmzJwjiiV38kI3E_L5O8ZXCLbJLwuyLvpk6Nn6eaVIpYUw_JCMhEpJbLWTpIGM4OwotVxNMkpcKPetfCZoTmlaEh0QNA5J8OB_Zys6JowTEfr_2G_j45xOXh_lNZKhtEWXg2PTn2ET1ANrF2bRowOIfE6ybt2CaXoYJou7kVXJg06bNTYaq9q-zWHfXGTWVpHFKysGNrw0myyPt714Nzc_FR0IfnwN7NTw3Fw";

/// The `jwt` section the target verifies against: the public halves of `tests/keys/*.json`
/// (the seed tokens are signed with their private halves) and the two secrets above.
pub fn fuzz_jwt_config() -> Value {
    json!({ "providers": [
        { "name": "main", "issuer": JWT_MAIN_ISSUER, "audiences": ["api", "https://api.test"],
          "algorithms": ["HS256", "HS512", "ES256", "EdDSA", "RS256"],
          "max_lifetime_seconds": 86400,
          "jwks": { "inline": { "keys": [
              { "kty": "oct", "kid": "fuzz-hmac", "k": URL_SAFE_NO_PAD.encode(FUZZ_HMAC_MAIN) },
              { "kty": "EC", "crv": "P-256", "kid": "test-p256", "x": P256_X, "y": P256_Y },
              { "kty": "EC", "crv": "P-256", "kid": "test-p256-other", "alg": "ES256",
                "x": P256_OTHER_X, "y": P256_OTHER_Y },
              { "kty": "OKP", "crv": "Ed25519", "kid": "test-ed25519", "x": ED25519_X },
              { "kty": "RSA", "kid": "test-rsa", "n": RSA_N, "e": "AQAB" } ] } },
          "claims_to_headers": [ { "claim": "sub", "header": "x-user-id" },
                                 { "claim": "roles", "header": "x-user-roles" } ] },
        { "name": "cookie", "issuer": JWT_COOKIE_ISSUER, "audiences": ["web"],
          "algorithms": ["HS384", "ES256"], "require_expiration": false, "clock_skew_seconds": 0,
          "from": [ { "cookie": "session" }, { "header": "x-token" } ],
          "jwks": { "inline": { "keys": [
              { "kty": "oct", "kid": "cookie-hmac", "k": URL_SAFE_NO_PAD.encode(FUZZ_HMAC_COOKIE) },
              { "kty": "EC", "crv": "P-256", "kid": "test-p256", "x": P256_X, "y": P256_Y } ] } } } ] })
}

thread_local! {
    static JWT_AUTH: Option<JwtAuth> = serde_json::from_value::<JwtConfig>(fuzz_jwt_config())
        .ok()
        .and_then(|c| JwtAuth::compile(&c, "jwt").ok());
}

/// A compact JWS over `header_json` and `claims_json`, HMAC-signed with `secret` under `alg`.
pub fn hmac_token(secret: &[u8], alg: Alg, header_json: &[u8], claims_json: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(claims_json)
    );
    let tag = hmac_tag(secret, alg, input.as_bytes()).unwrap_or_default();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag))
}

fn hmac_tag(secret: &[u8], alg: Alg, input: &[u8]) -> Option<Vec<u8>> {
    Some(match alg {
        Alg::HS256 => <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .ok()?
            .chain_update(input)
            .finalize()
            .into_bytes()
            .to_vec(),
        Alg::HS384 => <Hmac<Sha384> as Mac>::new_from_slice(secret)
            .ok()?
            .chain_update(input)
            .finalize()
            .into_bytes()
            .to_vec(),
        Alg::HS512 => <Hmac<Sha512> as Mac>::new_from_slice(secret)
            .ok()?
            .chain_update(input)
            .finalize()
            .into_bytes()
            .to_vec(),
        _ => return None,
    })
}

/// Verifies `signature` over `input` with the configured keys of provider `provider` (0 main,
/// 1 cookie), written directly against the crypto crates: a second reading, not the library's.
fn independently_signed(
    provider: usize,
    alg: Alg,
    kid: Option<&str>,
    input: &[u8],
    sig: &[u8],
) -> bool {
    use p256::ecdsa::signature::Verifier as _;
    let kid_ok = |k: &str| kid.is_none_or(|kid| kid == k);
    let p256_ok = |x: &str, y: &str| -> bool {
        let (Ok(x), Ok(y)) = (URL_SAFE_NO_PAD.decode(x), URL_SAFE_NO_PAD.decode(y)) else {
            return false;
        };
        if x.len() != 32 || y.len() != 32 {
            return false;
        }
        let mut sec1 = vec![4u8];
        sec1.extend_from_slice(&x);
        sec1.extend_from_slice(&y);
        let Ok(key) = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1) else {
            return false;
        };
        p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| key.verify(input, &s).is_ok())
    };
    let hmac_ok = |secret: &[u8]| {
        hmac_tag(secret, alg, input)
            .is_some_and(|tag| bool::from(subtle::ConstantTimeEq::ct_eq(&tag[..], sig)))
    };
    match (provider, alg) {
        (0, Alg::HS256 | Alg::HS512) => kid_ok("fuzz-hmac") && hmac_ok(FUZZ_HMAC_MAIN),
        (0, Alg::ES256) => {
            (kid_ok("test-p256") && p256_ok(P256_X, P256_Y))
                || (kid_ok("test-p256-other") && p256_ok(P256_OTHER_X, P256_OTHER_Y))
        }
        (0, Alg::EdDSA) => {
            let Ok(x) = URL_SAFE_NO_PAD.decode(ED25519_X) else {
                return false;
            };
            let Ok(x) = <[u8; 32]>::try_from(x.as_slice()) else {
                return false;
            };
            let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&x) else {
                return false;
            };
            kid_ok("test-ed25519")
                && ed25519_dalek::Signature::from_slice(sig)
                    .is_ok_and(|s| key.verify_strict(input, &s).is_ok())
        }
        (0, Alg::RS256) => {
            let Ok(n) = URL_SAFE_NO_PAD.decode(RSA_N) else {
                return false;
            };
            let Ok(key) = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&n),
                rsa::BigUint::from(65537u32),
            ) else {
                return false;
            };
            kid_ok("test-rsa")
                && key
                    .verify(
                        rsa::Pkcs1v15Sign::new::<Sha256>(),
                        &Sha256::digest(input),
                        sig,
                    )
                    .is_ok()
        }
        (1, Alg::HS384) => kid_ok("cookie-hmac") && hmac_ok(FUZZ_HMAC_COOKIE),
        (1, Alg::ES256) => kid_ok("test-p256") && p256_ok(P256_X, P256_Y),
        _ => false,
    }
}

/// What a verified token must be, read again from its text without the library's parser.
fn check_accepted_token(token: &str, verified: &VerifiedToken, head: Option<&RequestHead>) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted token is not three parts");
    let mut decoded = Vec::new();
    for part in &parts {
        let bytes = URL_SAFE_NO_PAD.decode(part);
        assert!(bytes.is_ok(), "accepted token part is not base64url");
        let bytes = bytes.unwrap_or_default();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(&bytes),
            *part,
            "accepted token part is not canonical base64url (malleable)"
        );
        decoded.push(bytes);
    }
    let header: Value = serde_json::from_slice(&decoded[0]).unwrap_or(Value::Null);
    let claims: Value = serde_json::from_slice(&decoded[1]).unwrap_or(Value::Null);
    let (Some(header), Some(claims)) = (header.as_object(), claims.as_object()) else {
        finding("accepted token whose header or claims are not objects");
        return;
    };
    let provider = verified.provider;
    let (issuer, audiences, algs, skew, max_lifetime, require_exp): (
        &str,
        &[&str],
        &[&str],
        u64,
        Option<u64>,
        bool,
    ) = match provider {
        0 => (
            JWT_MAIN_ISSUER,
            &["api", "https://api.test"],
            &["HS256", "HS512", "ES256", "EdDSA", "RS256"],
            60,
            Some(86400),
            true,
        ),
        1 => (
            JWT_COOKIE_ISSUER,
            &["web"],
            &["HS384", "ES256"],
            0,
            None,
            false,
        ),
        _ => {
            finding(format!("unknown provider {provider}"));
            return;
        }
    };
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    assert!(
        algs.contains(&alg_name),
        "accepted alg {alg_name:?} not allowed for provider {provider}"
    );
    for member in ["crit", "jwk", "jku", "x5u", "x5c"] {
        assert!(
            !header.contains_key(member),
            "accepted a token with header {member}"
        );
    }
    if let Some(Value::String(cty)) = header.get("cty") {
        assert!(!cty.eq_ignore_ascii_case("jwt"), "accepted a nested JWT");
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => {
            assert!(!kid.is_empty() && kid.len() <= 256, "accepted a bad kid");
            Some(kid.as_str())
        }
        Some(_) => {
            finding("accepted a kid that is not a string");
            None
        }
    };
    assert_eq!(
        claims.get("iss").and_then(Value::as_str),
        Some(issuer),
        "iss"
    );
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => audiences.contains(&a.as_str()),
        Some(Value::Array(items)) => {
            items.iter().all(Value::is_string)
                && items
                    .iter()
                    .any(|a| a.as_str().is_some_and(|a| audiences.contains(&a)))
        }
        _ => false,
    };
    assert!(aud_ok, "accepted a token for another audience");
    if let Some(sub) = claims.get("sub") {
        assert!(sub.is_string(), "accepted a non-string sub");
    }
    let date = |name: &str| -> Option<u64> {
        let value = claims.get(name)?;
        let date = value.as_u64();
        assert!(
            date.is_some_and(|d| d <= 253_402_300_799),
            "accepted a bad {name}"
        );
        date
    };
    let exp = date("exp");
    let nbf = date("nbf");
    let iat = date("iat");
    if require_exp {
        assert!(exp.is_some(), "accepted a token without exp");
    }
    if let Some(exp) = exp {
        assert!(NOW < exp.saturating_add(skew), "accepted an expired token");
    }
    if let Some(nbf) = nbf {
        assert!(
            NOW.saturating_add(skew) >= nbf,
            "accepted a token before nbf"
        );
    }
    if let Some(iat) = iat {
        assert!(
            iat <= NOW.saturating_add(skew),
            "accepted a token issued in the future"
        );
    }
    if let Some(max) = max_lifetime {
        let start = iat.unwrap_or(NOW);
        assert!(
            exp.is_some_and(|exp| exp.saturating_sub(start) <= max),
            "accepted a token living longer than max_lifetime_seconds"
        );
    }
    let alg = Alg::from_name(alg_name);
    let input_len = parts[0].len() + 1 + parts[1].len();
    let signed = alg.is_some_and(|alg| {
        independently_signed(
            provider,
            alg,
            kid,
            &token.as_bytes()[..input_len],
            &decoded[2],
        )
    });
    assert!(
        signed,
        "accepted a token no configured key of provider {provider} signed"
    );
    assert_eq!(
        verified.subject.as_deref(),
        claims.get("sub").and_then(Value::as_str),
        "subject"
    );
    for (name, value) in &verified.upstream_headers {
        assert!(
            value.len() <= 4096
                && value
                    .bytes()
                    .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
            "claim header {name} carries a control character"
        );
    }
    if let Some(head) = head {
        // Where a provider reads tokens: main from `authorization: Bearer`, cookie from the
        // `session` cookie or `x-token`.
        let seen_in = |name: &str| head.header_values(name).any(|v| v.contains(token));
        let located = match provider {
            0 => head.header_values("authorization").any(|v| {
                v.get(..7)
                    .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
                    && v.contains(token)
            }),
            _ => seen_in("cookie") || seen_in("x-token"),
        };
        assert!(
            located,
            "token accepted from a place its provider does not read"
        );
    }
}

fn outcome_of(
    r: &Result<Rc<VerifiedToken>, crate::authn::jwt::JwtFailure>,
) -> Result<(usize, Option<String>), crate::authn::jwt::JwtFailure> {
    r.as_ref()
        .map(|v| (v.provider, v.subject.clone()))
        .map_err(|e| *e)
}

/// Token parsing and verification against a fixed inline JWKS (`fuzz_jwt_config`) at the fixed
/// clock [`NOW`], with `RustVerifier`.
///
/// Input: the first byte picks the mode (`& 3`):
/// - `0`: the rest is sent as `authorization: Bearer <rest>`;
/// - `1`: the rest is `header JSON \0 claims JSON`, signed by the target itself with an HMAC
///   secret (the second byte picks secret, algorithm and where the token is sent), so that the
///   claim and header rules are explored behind a valid signature;
/// - `2`: the rest is request headers, `name: value` per line;
/// - `3`: the rest is sent as `cookie: session=<rest>`.
///
/// Properties: an accepted token is three canonical base64url parts, with an allowed alg, no
/// key reference or `crit`, the provider's issuer and audience, live time claims, a signature
/// that the crypto crates verify independently with one of the provider's keys, read from a
/// place its provider reads; the token cache never changes a verdict (same token from every
/// source, at two times, with a warm and a cold cache).
pub fn jwt_verify(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let headers: Vec<(String, String)> = match mode & 3 {
        0 => vec![(
            "authorization".into(),
            format!("Bearer {}", String::from_utf8_lossy(rest)),
        )],
        1 => {
            let Some((&choice, rest)) = rest.split_first() else {
                return;
            };
            let (header_json, claims_json) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b"{}"[..]),
            };
            let (secret, alg): (&[u8], Alg) = match choice % 4 {
                0 => (FUZZ_HMAC_MAIN, Alg::HS256),
                1 => (FUZZ_HMAC_MAIN, Alg::HS512),
                2 => (FUZZ_HMAC_COOKIE, Alg::HS384),
                _ => (FUZZ_HMAC_MAIN, Alg::HS384),
            };
            let token = hmac_token(secret, alg, header_json, claims_json);
            match (choice / 4) % 3 {
                0 => vec![("authorization".into(), format!("Bearer {token}"))],
                1 => vec![("cookie".into(), format!("session={token}"))],
                _ => vec![("x-token".into(), token)],
            }
        }
        2 => header_lines(&String::from_utf8_lossy(rest)),
        _ => vec![(
            "cookie".into(),
            format!("session={}", String::from_utf8_lossy(rest)),
        )],
    };
    let head = head_with(headers, "GET", "/");
    JWT_AUTH.with(|auth| {
        let Some(auth) = auth.as_ref() else {
            finding("the fixed jwt config compiles");
            return;
        };
        let found = match auth.find_token(&head) {
            Ok(Some(found)) => found,
            Ok(None) | Err(_) => return,
        };
        let mut cache = TokenCache::new(4);
        let first = auth.verify(found, NOW, &RustVerifier, &mut cache);
        let Ok(verified) = &first else {
            // Only a verified token is cached: a refusal leaves nothing that could change a
            // later verdict.
            return;
        };
        check_accepted_token(found.token, verified, Some(&head));
        // The cache never changes a verdict: every source, now and later, warm and cold.
        let again = auth.verify(found, NOW, &RustVerifier, &mut cache);
        assert_eq!(outcome_of(&first), outcome_of(&again), "cache hit differs");
        for source in 0..auth.sources.len() {
            for now in [NOW, NOW + 3_600, NOW + 90_000] {
                let other = FoundToken {
                    token: found.token,
                    source,
                };
                let warm = auth.verify(other, now, &RustVerifier, &mut cache);
                let cold = auth.verify(other, now, &RustVerifier, &mut TokenCache::new(4));
                assert_eq!(
                    outcome_of(&warm),
                    outcome_of(&cold),
                    "the token cache changed the verdict (source {source}, now {now})"
                );
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Path normalisation: the properties of one output
// ---------------------------------------------------------------------------------------------

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What every normalised path must look like, whatever the input.
fn check_normal_form(n: &NormalizedPath, raw: &str, parameters: PathParameters) {
    let p = n.path.as_str();
    assert!(
        p.starts_with('/'),
        "normalised path does not start with /: {p:?}"
    );
    assert!(p.is_ascii(), "normalised path is not ASCII: {p:?}");
    assert!(!p.contains("//"), "normalised path has //: {p:?}");
    assert!(!p.contains('\\'), "normalised path has \\: {p:?}");
    assert!(
        !p.contains('?') && !p.contains('#'),
        "normalised path has ? or #: {p:?}"
    );
    assert!(
        !p.bytes().any(|b| b <= 0x20 || b == 0x7f),
        "normalised path has a control character or space: {p:?}"
    );
    for bad in ["%2F", "%5C", "%25", "%00", "%3B", "%2E"] {
        assert!(
            !contains_ignore_ascii_case(p, bad),
            "normalised path has {bad}: {p:?}"
        );
    }
    let rest = p.strip_prefix('/').unwrap_or(p);
    let segments: Vec<&str> = rest.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        assert!(
            *seg != "." && *seg != "..",
            "normalised path has a dot segment: {p:?}"
        );
        assert!(
            !seg.ends_with('.') && !seg.ends_with("%20"),
            "normalised path has a segment ending in a dot or space: {p:?}"
        );
        assert!(
            !seg.is_empty() || i + 1 == segments.len(),
            "normalised path has an empty segment: {p:?}"
        );
    }
    if parameters == PathParameters::Reject {
        assert!(
            !p.contains(';'),
            "normalised path has a path parameter: {p:?}"
        );
    }
    // Escapes are canonical: upper-case hex, never of an unreserved byte.
    let bytes = p.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
            assert!(
                hex.len() == 2
                    && hex
                        .iter()
                        .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
                "escape not in canonical upper-case hex: {p:?}"
            );
            let v = percent_decode(std::str::from_utf8(&bytes[i..i + 3]).unwrap_or(""))
                .unwrap_or_default();
            assert!(
                v.first().is_some_and(|v| !is_unreserved(*v)),
                "escape of an unreserved byte kept: {p:?}"
            );
            i += 3;
        } else {
            assert!(
                is_unreserved(b) || b"!$&'()*+,;=:@/".contains(&b),
                "byte not allowed raw in a path: {p:?}"
            );
            i += 1;
        }
    }
    // What an upstream decodes is text.
    let decoded = percent_decode(p).unwrap_or_default();
    assert!(
        std::str::from_utf8(&decoded).is_ok(),
        "normalised path decodes to non-UTF-8: {p:?}"
    );
    // The query is passed on untouched.
    assert_eq!(
        n.query.as_deref(),
        raw.split_once('?').map(|(_, q)| q),
        "query changed"
    );
    assert_eq!(n.changed, raw.split('?').next() != Some(p), "changed flag");
    // Idempotent: the normal form is its own normal form, and so is what is forwarded.
    let again = routes::normalize_path_with(p, parameters);
    assert_eq!(
        again.as_ref().map(|a| (a.path.as_str(), a.changed)),
        Ok((p, false)),
        "normalising the normalised path changes it"
    );
    let forwarded = routes::normalize_path_with(&n.to_request_path(), parameters);
    assert_eq!(
        forwarded.as_ref().map(|f| (&f.path, &f.query, f.changed)),
        Ok((&n.path, &n.query, false)),
        "the forwarded path normalises to something else"
    );
}

// ---------------------------------------------------------------------------------------------
// Framework models (path_differential, route_match)
// ---------------------------------------------------------------------------------------------

/// Why a framework model refuses a request target, or what it routes on.
pub type ModelPath = Result<String, &'static str>;

fn path_part(target: &str) -> &str {
    target.split_once('?').map_or(target, |(p, _)| p)
}

/// Tomcat (9/10/11, defaults), from `CoyoteAdapter.postParseRequest`: path parameters (`;` up
/// to the next `/`) are cut from each segment of the raw URI, then `%XX` is decoded (an encoded
/// `/` is refused: `encodedSolidusHandling=reject`), the bytes are normalised (`\` and NUL
/// refused, `//` merged, `.` and `..` resolved, `..` above the root refused) and read as UTF-8
/// (malformed: refused). The result is the decoded path the servlet mapping sees.
pub fn tomcat_model(target: &str) -> ModelPath {
    let raw = path_part(target);
    if !raw.starts_with('/') {
        return Err("not origin-form");
    }
    if raw.bytes().any(|b| b < 0x21 || b == 0x7f || b >= 0x80) {
        return Err("character not allowed in the request line");
    }
    let stripped: Vec<&str> = raw
        .split('/')
        .map(|seg| seg.split(';').next().unwrap_or(""))
        .collect();
    let stripped = stripped.join("/");
    if contains_ignore_ascii_case(&stripped, "%2f") {
        return Err("encoded slash");
    }
    let Some(bytes) = percent_decode(&stripped) else {
        return Err("invalid percent-encoding");
    };
    if bytes.contains(&b'\\') {
        return Err("backslash");
    }
    if bytes.contains(&0) {
        return Err("NUL");
    }
    let Ok(text) = String::from_utf8(bytes) else {
        return Err("malformed UTF-8");
    };
    remove_dot_segments_tomcat(&text)
}

/// Tomcat's `normalize`: merge `//`, a trailing `/.` or `/..` gets a `/`, resolve `/./` and
/// `/../`.
fn remove_dot_segments_tomcat(path: &str) -> ModelPath {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = rest.split('/').collect();
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err("dot segment above the root");
                }
            }
            s => out.push(s),
        }
        if last {
            trailing = matches!(*seg, "" | "." | "..");
        }
    }
    let mut result = String::new();
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if out.is_empty() || trailing {
        result.push('/');
    }
    Ok(result)
}

/// Spring Security's `StrictHttpFirewall` (defaults) on the request URI, then Spring MVC's
/// `UrlPathHelper` lookup path (semicolon content removed, decoded, `//` merged) on a URI the
/// firewall let through.
pub fn spring_model(target: &str) -> ModelPath {
    let uri = path_part(target);
    if !uri.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err("non-printable ASCII in the request URI");
    }
    const ENCODED_BLOCKLIST: [&str; 14] = [
        ";", "%3b", "%2f", "//", "\\", "%5c", "%00", "\0", "\n", "%0a", "\r", "%0d", "%25", "%2e",
    ];
    if ENCODED_BLOCKLIST
        .iter()
        .any(|bad| contains_ignore_ascii_case(uri, bad))
    {
        return Err("firewall: blocked sequence in the request URI");
    }
    if !spring_is_normalized(uri) {
        return Err("firewall: request URI is not normalised");
    }
    // The servlet path the container decoded; the firewall's decoded blocklist applies to it.
    let decoded = tomcat_model(target)?;
    for bad in [
        "%", ";", "\\", "//", "\0", "\n", "\r", "\u{2028}", "\u{2029}",
    ] {
        if decoded.contains(bad) {
            return Err("firewall: blocked sequence in the decoded path");
        }
    }
    let Some(bytes) = percent_decode(uri) else {
        return Err("invalid percent-encoding");
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return Err("malformed UTF-8");
    };
    let mut merged = text;
    while merged.contains("//") {
        merged = merged.replace("//", "/");
    }
    Ok(merged)
}

/// `StrictHttpFirewall.isNormalized`: no `.` or `..` segment.
fn spring_is_normalized(path: &str) -> bool {
    !path.split('/').any(|seg| seg == "." || seg == "..")
}

/// Express 4 (`strict: false`, `caseSensitive: false`): routes match the pathname as received,
/// undecoded; parameters are decoded after matching (`decodeURIComponent`, malformed: 400).
pub fn express_model(target: &str) -> ModelPath {
    let pathname = path_part(target);
    if !pathname.starts_with('/') {
        return Err("not origin-form");
    }
    if percent_decode(pathname).is_none() {
        return Err("invalid percent-encoding");
    }
    Ok(pathname.to_string())
}

/// What a model saw in a raw path that api-guard must never accept.
fn raw_path_hazard(raw: &str) -> Option<&'static str> {
    let path = path_part(raw);
    if path.contains(';') {
        return Some("path parameter (Tomcat and Spring cut ;...)");
    }
    if contains_ignore_ascii_case(path, "%2f") {
        return Some("encoded slash");
    }
    if contains_ignore_ascii_case(path, "%5c") || path.contains('\\') {
        return Some("backslash or encoded backslash");
    }
    if path.chars().any(char::is_control) {
        return Some("control character");
    }
    let decoded = percent_decode(path)?;
    let text = String::from_utf8_lossy(&decoded);
    if text.chars().any(char::is_control) {
        return Some("encoded control character");
    }
    if text
        .split('/')
        .any(|seg| seg.ends_with('.') && seg != "." && seg != "..")
    {
        return Some("segment with a trailing dot (IIS and Windows drop it)");
    }
    None
}

/// Whether `raw` shows an open path finding (see [`OPEN_FINDINGS`]).
fn known_differential(raw: &str, _n: &NormalizedPath) -> bool {
    let path = path_part(raw);
    let decoded = percent_decode(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&decoded);
    (tolerated(Open::C1ControlInPath)
        && text
            .chars()
            .chain(path.chars())
            .any(|c| ('\u{80}'..='\u{9f}').contains(&c)))
        || (tolerated(Open::LineSeparatorInPath) && text.contains(['\u{2028}', '\u{2029}']))
}

/// api-guard's path normalisation against what Tomcat, Spring and Express would route
/// (`tomcat_model`, `spring_model`, `express_model`).
///
/// Input: the raw `:path` (bytes that are not UTF-8 never reach the filter's path logic).
///
/// For a raw path that api-guard accepts (default rules): the path it forwards upstream
/// (`NormalizedPath::to_request_path`), read by each model, routes to the path api-guard matched
/// on (`NormalizedPath::path`, decoded for Tomcat and Spring), modulo one trailing slash and,
/// for Express, ASCII case; and the raw path has nothing a model reads otherwise (a path
/// parameter, an encoded slash or backslash, a control character, a segment ending in a dot).
/// With `firewall.path_parameters: strip`, api-guard must match what Tomcat routes the raw path
/// to (it cuts parameters the same way) and forward a path without them.
pub fn path_differential(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = routes::normalize_path(raw) {
        if !known_differential(raw, &n) {
            if let Some(hazard) = raw_path_hazard(raw) {
                finding(format!(
                    "api-guard accepted {raw:?} ({}): a model sees a {hazard}",
                    n.path
                ));
            }
            check_forwarded_reading(raw, &n);
        }
    }
    if let Ok(n) = routes::normalize_path_with(raw, PathParameters::Strip) {
        if !known_differential(raw, &n) {
            assert!(
                !n.path.contains(';'),
                "strip mode forwards a path parameter: {:?}",
                n.path
            );
            check_forwarded_reading(raw, &n);
            // What Tomcat makes of the raw path is what api-guard matched.
            if let Ok(tomcat) = tomcat_model(raw) {
                let matched = String::from_utf8(percent_decode(&n.path).unwrap_or_default())
                    .unwrap_or_default();
                assert_eq!(
                    without_trailing_slash(&tomcat),
                    without_trailing_slash(&matched),
                    "strip mode: Tomcat routes {raw:?} elsewhere than api-guard matched"
                );
            }
        }
    }
}

fn check_forwarded_reading(raw: &str, n: &NormalizedPath) {
    let forwarded = n.to_request_path();
    let matched = String::from_utf8(percent_decode(&n.path).unwrap_or_default());
    assert!(matched.is_ok(), "matched path does not decode to text");
    let matched = matched.unwrap_or_default();
    for (model, reading) in [
        ("Tomcat", tomcat_model(&forwarded)),
        ("Spring", spring_model(&forwarded)),
    ] {
        match reading {
            Ok(path) => assert_eq!(
                without_trailing_slash(&path),
                without_trailing_slash(&matched),
                "{model} routes the forwarded {forwarded:?} (from {raw:?}) elsewhere"
            ),
            Err(why) => finding(format!(
                "{model} refuses the forwarded {forwarded:?} (from {raw:?}): {why}"
            )),
        }
    }
    match express_model(&forwarded) {
        Ok(path) => {
            assert_eq!(
                without_trailing_slash(&path).to_ascii_lowercase(),
                without_trailing_slash(&n.path).to_ascii_lowercase(),
                "Express routes the forwarded {forwarded:?} (from {raw:?}) elsewhere"
            );
            // Express decodes a parameter after matching: no segment may decode to a `/`.
            for seg in path.split('/') {
                let decoded = percent_decode(seg).unwrap_or_default();
                assert!(
                    !decoded.contains(&b'/'),
                    "an Express parameter decodes to a /"
                );
            }
        }
        Err(why) => finding(format!(
            "Express refuses the forwarded {forwarded:?}: {why}"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// route_match
// ---------------------------------------------------------------------------------------------

/// One route of the route table, as the models read it.
#[derive(Clone, Copy)]
enum ModelRoute {
    Exact(&'static str),
    PrefixSlash(&'static str),
    PrefixSegment(&'static str),
    /// Segments; `*` is a parameter.
    Template(&'static [&'static str]),
}

/// (name, model, public, GET-only) in configuration order; `ROUTE_CONFIG` is the same table.
const ROUTE_TABLE: [(&str, ModelRoute, bool, bool); 10] = [
    ("health", ModelRoute::Exact("/healthz"), true, false),
    ("public", ModelRoute::PrefixSlash("/public/"), true, false),
    ("docs", ModelRoute::PrefixSegment("/docs"), true, false),
    (
        "profile",
        ModelRoute::Template(&["users", "*", "profile"]),
        true,
        true,
    ),
    ("static", ModelRoute::PrefixSlash("/Static/"), true, false),
    ("admin", ModelRoute::PrefixSlash("/admin/"), false, false),
    ("api", ModelRoute::PrefixSegment("/api"), false, false),
    (
        "documents",
        ModelRoute::Template(&["users", "*", "documents"]),
        false,
        false,
    ),
    ("reports", ModelRoute::Exact("/Reports"), false, false),
    ("default", ModelRoute::PrefixSlash("/"), false, false),
];

pub const ROUTE_CONFIG: &str = r#"{
  "api_keys": { "keys": [ { "id": "k", "prefix": "ag_",
      "sha256": "0000000000000000000000000000000000000000000000000000000000000000" } ] },
  "routes": [
    { "name": "health", "match": { "path_exact": "/healthz" }, "auth": "none" },
    { "name": "public", "match": { "path_prefix": "/public/" }, "auth": "none" },
    { "name": "docs", "match": { "path_separated_prefix": "/docs" }, "auth": "none" },
    { "name": "profile", "match": { "path_template": "/users/{id}/profile", "methods": ["GET"] }, "auth": "none" },
    { "name": "static", "match": { "path_prefix": "/Static/" }, "auth": "none" },
    { "name": "admin", "match": { "path_prefix": "/admin/" }, "auth": "api_key" },
    { "name": "api", "match": { "path_prefix": "/api" }, "auth": "api_key" },
    { "name": "documents", "match": { "path_template": "/users/{id}/documents" }, "auth": "api_key" },
    { "name": "reports", "match": { "path_exact": "/Reports" }, "auth": "api_key" },
    { "name": "default", "match": { "path_prefix": "/" }, "auth": "api_key" }
  ]
}"#;

thread_local! {
    static ROUTE_POLICY: Option<Policy> = config::load(ROUTE_CONFIG.as_bytes()).ok();
}

/// The route a framework picks for `path` (decoded for Tomcat and Spring, as received for
/// Express), first match in table order, with or without one trailing slash on exact and
/// template routes.
fn model_route(path: &str, method: &str, ignore_case: bool) -> Option<usize> {
    let norm = |s: &str| {
        if ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let path = norm(path);
    ROUTE_TABLE.iter().position(|(_, route, _, get_only)| {
        if *get_only && method != "GET" && method != "HEAD" {
            return false;
        }
        match route {
            ModelRoute::Exact(p) => without_trailing_slash(&path) == norm(p),
            ModelRoute::PrefixSlash(p) => path.starts_with(&norm(p)),
            ModelRoute::PrefixSegment(p) => path
                .strip_prefix(&norm(p))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            ModelRoute::Template(segments) => {
                let trimmed = without_trailing_slash(&path);
                let got: Vec<&str> = trimmed
                    .strip_prefix('/')
                    .unwrap_or(trimmed)
                    .split('/')
                    .collect();
                got.len() == segments.len()
                    && got.iter().zip(segments.iter()).all(|(g, s)| {
                        if *s == "*" {
                            !g.is_empty()
                        } else {
                            *g == norm(s)
                        }
                    })
            }
        }
    })
}

const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "DELETE", "OPTIONS", "get"];

/// Path normalisation and route matching: the properties of `normalize_path`'s output (in both
/// `path_parameters` modes), then a whole request decision on a fixed route table
/// (`ROUTE_CONFIG`: public routes and routes behind an API key) without any credential.
///
/// Input: the first byte picks the method (`% 6`: GET, HEAD, POST, DELETE, OPTIONS, `get`), the
/// rest is the raw `:path`.
///
/// Properties: the normalised path is canonical (no `.`/`..` segments, no `//`, `%2F`, `%5C`,
/// `%25`, `%3B`, `\`, control characters, `;` by default; upper-case escapes of reserved bytes
/// only), idempotent, and the forwarded path normalises to itself; the two modes agree on paths
/// without `;`; and a request the filter lets through without a credential is on a public route,
/// which is also the route Tomcat/Spring (decoded, case-sensitive) and Express (as received,
/// case-insensitive) pick for the path that goes upstream.
pub fn route_match(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(m) % METHODS.len()];
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };
    let strict = routes::normalize_path(raw);
    if let Ok(n) = &strict {
        check_normal_form(n, raw, PathParameters::Reject);
    }
    let strip = routes::normalize_path_with(raw, PathParameters::Strip);
    if let Ok(n) = &strip {
        check_normal_form(n, raw, PathParameters::Strip);
    }
    if !path_part(raw).contains(';') {
        assert_eq!(strict, strip, "the two modes differ on a path without ;");
    }
    ROUTE_POLICY.with(|policy| {
        let Some(policy) = policy.as_ref() else {
            finding("the fixed route config compiles");
            return;
        };
        let head = head_with(Vec::new(), method, raw);
        let mut host = TestHost::new(NOW);
        host.limiter = None;
        let decision = policy.check_request(&head, &mut host.env(false));
        let Verdict::Allow(forward) = &decision.verdict else {
            return;
        };
        let route = decision.response.event_base.route.as_deref();
        let index = ROUTE_TABLE.iter().position(|(name, ..)| Some(*name) == route);
        let Some(index) = index else {
            finding(format!("allowed without a route: {raw:?}"));
            return;
        };
        assert!(ROUTE_TABLE[index].2, "allowed {raw:?} without a key on protected route {route:?}");
        let Ok(n) = &strict else {
            finding(format!("allowed {raw:?}, which does not normalise"));
            return;
        };
        let upstream = forward.set_path.clone().unwrap_or_else(|| raw.to_string());
        assert_eq!(upstream, n.to_request_path(), "forwarded path is not the normalised one");
        let matched = policy
            .routes
            .iter()
            .position(|r| r.matcher.matches(method, "api.test", &n.path).is_some());
        assert_eq!(matched, Some(index), "route of the decision");
        let models = [
            ("Tomcat", tomcat_model(&upstream), false),
            ("Spring", spring_model(&upstream), false),
            ("Express", express_model(&upstream), true),
        ];
        for (model, reading, ignore_case) in models {
            // A model that refuses the request runs no handler: fail closed.
            let Ok(path) = reading else { continue };
            let picked = model_route(&path, method, ignore_case);
            assert_eq!(
                picked.map(|i| ROUTE_TABLE[i].0),
                Some(ROUTE_TABLE[index].0),
                "{model} runs another handler for {upstream:?} (from {raw:?}) than api-guard's route"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// api_key_header
// ---------------------------------------------------------------------------------------------

/// (id, prefix, key, expires_at) of the fixed `api_keys` section.
pub const FUZZ_API_KEYS: [(&str, &str, &str, Option<&str>); 4] = [
    (
        "billing",
        "ag_live_",
        "ag_live_3q2-7wEbTRxw4m9Zt2kQbP1JdXcVfy8sN6uHoLa0GiE",
        None,
    ),
    (
        "legacy",
        "ag_",
        "ag_live_legacyKeyUnderTheShorterPrefix0123456789ab",
        None,
    ),
    (
        "ci",
        "ag_test_",
        "ag_test_Zz9yXw8VuT7sRq6PoN5mLk4JiH3gFe2DcB1a0_-xyz",
        Some("2027-06-30T00:00:00Z"),
    ),
    (
        "old",
        "ag_test_",
        "ag_test_expiredExpiredExpiredExpiredExpiredExp",
        Some("2020-01-01T00:00:00+02:00"),
    ),
];

thread_local! {
    static API_KEYS: Option<ApiKeys> = {
        let keys: Vec<Value> = FUZZ_API_KEYS
            .iter()
            .map(|(id, prefix, key, expires)| {
                let mut k = json!({ "id": id, "prefix": prefix,
                    "sha256": hex_lower(&Sha256::digest(key.as_bytes())), "scopes": ["s:read"] });
                if let (Some(e), Some(obj)) = (expires, k.as_object_mut()) {
                    obj.insert("expires_at".into(), Value::String((*e).to_string()));
                }
                k
            })
            .collect();
        serde_json::from_value::<ApiKeysConfig>(json!({ "header": "x-api-key", "keys": keys }))
            .ok()
            .and_then(|c| ApiKeys::compile(&c, "api_keys").ok())
    };
}

/// Days since 1970-01-01 of a proleptic Gregorian date, counted year by year and month by
/// month (slow and plain: a second reading of `api_keys::parse_rfc3339`).
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days = 0;
    if year >= 1970 {
        for y in 1970..year {
            days += if leap(y) { 366 } else { 365 };
        }
    } else {
        for y in year..1970 {
            days -= if leap(y) { 366 } else { 365 };
        }
    }
    const MONTHS: [i64; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    for m in 1..month {
        days += MONTHS
            .get(usize::try_from(m - 1).unwrap_or(0))
            .copied()
            .unwrap_or(0);
        if m == 2 && leap(year) {
            days += 1;
        }
    }
    days + day - 1
}

/// An RFC 3339 date-time read with a regular-expression-like scan: `YYYY-MM-DDTHH:MM:SS`,
/// optional `.fraction`, then `Z` or `±HH:MM`. `None` when it is not one.
fn rfc3339_reference(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > dim || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let all = [*h1, *h2, *m1, *m2];
            if !all.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let oh = i64::from(h1 - b'0') * 10 + i64::from(h2 - b'0');
            let om = i64::from(m1 - b'0') * 10 + i64::from(m2 - b'0');
            if oh > 23 || om > 59 {
                return None;
            }
            if *sign == b'+' {
                oh * 3600 + om * 60
            } else {
                -(oh * 3600 + om * 60)
            }
        }
        _ => return None,
    };
    Some(days_since_epoch(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// API-key header parsing and verification against a fixed `api_keys` section
/// (`FUZZ_API_KEYS`: overlapping prefixes `ag_` and `ag_live_`, an expiring and an expired key),
/// the query-string credential check, and the RFC 3339 parser of `expires_at`.
///
/// Input: request headers, `name: value` per line; a line starting with `?` is the query; every
/// line and value is also given to `parse_rfc3339`.
///
/// Properties: an accepted key is exactly the configured key of that id (its SHA-256 is the
/// configured one), not expired at [`NOW`], presented exactly once (one `x-api-key`, or one
/// `authorization: ApiKey`, never both) and borrowed from the request; a query with a parameter
/// named `api_key`, `apikey`, `key`, `token`, `access_token` or `x-api-key` (any case,
/// percent-encoded or not) is always flagged; `parse_rfc3339` agrees with a second
/// implementation.
pub fn api_key_header(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        if let Some(query) = line.strip_prefix('?') {
            check_query(query);
        }
        check_rfc3339(line.trim());
        if let Some((_, value)) = line.split_once(':') {
            check_rfc3339(value.trim());
        }
    }
    let head = head_with(header_lines(&text), "GET", "/");
    API_KEYS.with(|keys| {
        let Some(keys) = keys.as_ref() else {
            finding("the fixed api_keys config compiles");
            return;
        };
        let Ok(Some(presented)) = keys.find_key(&head) else {
            return;
        };
        assert!(!presented.key.is_empty(), "empty key presented");
        let in_request = head.headers().any(|(_, v)| v.contains(presented.key));
        assert!(in_request, "presented key is not from the request");
        let Ok(key) = keys.verify(presented.key, NOW) else {
            return;
        };
        let configured = FUZZ_API_KEYS.iter().find(|(id, ..)| *id == key.id);
        let Some((_, prefix, plain, expires)) = configured else {
            finding("accepted an unknown key id");
            return;
        };
        assert_eq!(
            presented.key, *plain,
            "accepted a key that is not the configured one"
        );
        assert_eq!(key_digest(presented.key), key_digest(plain), "hash");
        assert!(
            presented.key.starts_with(prefix) && presented.key.len() > prefix.len(),
            "prefix"
        );
        if let Some(expires) = expires {
            let at = rfc3339_reference(expires).unwrap_or(0);
            assert!(
                i64::try_from(NOW).unwrap_or(i64::MAX) < at,
                "accepted an expired key"
            );
        }
        let key_headers = head.header_values("x-api-key").count();
        let scheme_headers = head
            .header_values("authorization")
            .filter(|v| {
                v.split(' ')
                    .next()
                    .is_some_and(|s| s.eq_ignore_ascii_case("apikey"))
            })
            .count();
        assert_eq!(
            key_headers + scheme_headers,
            1,
            "accepted a key presented {} times",
            key_headers + scheme_headers
        );
        assert!(
            head.header_values("authorization").count() <= 1 || key_headers == 1,
            "accepted a key from one of several authorization headers"
        );
    });
}

fn key_digest(key: &str) -> String {
    api_keys::key_sha256_hex(key)
}

fn check_query(query: &str) {
    const NAMES: [&str; 6] = [
        "api_key",
        "apikey",
        "key",
        "token",
        "access_token",
        "x-api-key",
    ];
    let flagged = api_keys::credentials_in_query(query, &["x-api-key"]);
    for pair in query.split('&') {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        let decoded = percent_decode(name).map(|d| String::from_utf8_lossy(&d).into_owned());
        let obvious = NAMES.iter().any(|n| {
            name.eq_ignore_ascii_case(n)
                || decoded
                    .as_deref()
                    .is_some_and(|d| d.eq_ignore_ascii_case(n))
        });
        assert!(
            !obvious || flagged,
            "credential parameter {name:?} not flagged in {query:?}"
        );
    }
}

fn check_rfc3339(text: &str) {
    let ours = api_keys::parse_rfc3339(text);
    let reference = rfc3339_reference(text);
    match (ours, reference) {
        (Ok(t), Some(r)) => assert_eq!(i64::try_from(t).ok(), Some(r), "parse_rfc3339({text:?})"),
        (Ok(t), None) => finding(format!("parse_rfc3339 accepted {text:?} as {t}")),
        (Err(_), Some(r)) => assert!(r < 0, "parse_rfc3339 refused {text:?} ({r})"),
        (Err(_), None) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// webhook_signature
// ---------------------------------------------------------------------------------------------

pub const FUZZ_STRIPE_SECRETS: [&str; 2] = [
    "whsec_fuzzStripeSecretNumberOne0123",
    "whsec_fuzzStripeSecretNumberTwo4567",
];
pub const FUZZ_GITHUB_SECRETS: [&str; 2] = ["fuzz github secret one", "fuzz github secret two"];
/// `whsec_` + base64 of "fuzz standard webhooks secret #1" / "#2".
pub const FUZZ_STANDARD_SECRETS: [&str; 2] = [
    "whsec_ZnV6eiBzdGFuZGFyZCB3ZWJob29rcyBzZWNyZXQgIzE=",
    "whsec_ZnV6eiBzdGFuZGFyZCB3ZWJob29rcyBzZWNyZXQgIzI=",
];
pub const WEBHOOK_TOLERANCE: u64 = 300;

fn webhook(scheme: &str) -> Option<Webhook> {
    let secrets: &[&str] = match scheme {
        "stripe" => &FUZZ_STRIPE_SECRETS,
        "github" => &FUZZ_GITHUB_SECRETS,
        _ => &FUZZ_STANDARD_SECRETS,
    };
    let cfg: WebhookConfig = serde_json::from_value(json!({
        "scheme": scheme, "secrets": secrets, "tolerance_seconds": WEBHOOK_TOLERANCE,
        "replay_protection": true }))
    .ok()?;
    Webhook::compile(scheme, &cfg, "webhooks").ok()
}

thread_local! {
    static WEBHOOKS: [Option<Webhook>; 3] = [webhook("stripe"), webhook("github"), webhook("standard")];
}

/// The HMAC key of a configured secret: the whole string (stripe, github) or the base64 after
/// `whsec_` (standard).
fn webhook_key(scheme: usize, secret: &str) -> Vec<u8> {
    if scheme == 2 {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        STANDARD.decode(b64).unwrap_or_default()
    } else {
        secret.as_bytes().to_vec()
    }
}

fn webhook_secrets(scheme: usize) -> [&'static str; 2] {
    match scheme {
        0 => FUZZ_STRIPE_SECRETS,
        1 => FUZZ_GITHUB_SECRETS,
        _ => FUZZ_STANDARD_SECRETS,
    }
}

/// Webhook signature headers and verification, for the three schemes, at [`NOW`].
///
/// Input: the first byte picks the scheme (`% 3`: stripe, github, standard); then request
/// headers, `name: value` per line, an empty line, and the raw body. In header values the target
/// replaces `{now}` by [`NOW`], `{old}` by a stale time, and `{sig}` / `{sig2}` by the correct
/// signature with the first / second secret (stripe over `{now}.body`, github over the body,
/// standard over `webhook-id.webhook-timestamp.body`), so that parsing is explored around valid
/// signatures.
///
/// Properties: an accepted delivery carries, in its one signature header, a signature that an
/// HMAC computed here over exactly the signed bytes matches, under a configured secret, with a
/// timestamp within the tolerance; and replay protection refuses the same delivery the second
/// time.
pub fn webhook_signature(data: &[u8]) {
    let Some((&s, rest)) = data.split_first() else {
        return;
    };
    let scheme = usize::from(s) % 3;
    let text = String::from_utf8_lossy(rest);
    let (header_text, body) = match text.split_once("\n\n") {
        Some((h, b)) => (h.to_string(), b.as_bytes().to_vec()),
        None => (text.to_string(), Vec::new()),
    };
    let mut headers = header_lines(&header_text);
    let now_text = NOW.to_string();
    let old_text = (NOW - 2 * WEBHOOK_TOLERANCE).to_string();
    for (_, value) in &mut headers {
        *value = value
            .replace("{now}", &now_text)
            .replace("{old}", &old_text);
    }
    let first_value = |headers: &[(String, String)], name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let id = first_value(&headers, "webhook-id");
    let ts = first_value(&headers, "webhook-timestamp");
    let sign = |secret: &str| -> String {
        let key = webhook_key(scheme, secret);
        match scheme {
            0 => hex_lower(&hmac_sha256(&key, &[now_text.as_bytes(), b".", &body])),
            1 => hex_lower(&hmac_sha256(&key, &[&body])),
            _ => STANDARD.encode(hmac_sha256(
                &key,
                &[id.as_bytes(), b".", ts.as_bytes(), b".", &body],
            )),
        }
    };
    let secrets = webhook_secrets(scheme);
    let (sig, sig2) = (sign(secrets[0]), sign(secrets[1]));
    for (_, value) in &mut headers {
        *value = value.replace("{sig}", &sig).replace("{sig2}", &sig2);
    }
    let head = head_with(headers, "POST", "/hooks");
    WEBHOOKS.with(|hooks| {
        let Some(Some(hook)) = hooks.get(scheme) else {
            finding("the fixed webhook configs compile");
            return;
        };
        let first = hook.verify(&head, &body, NOW);
        let second = hook.verify(&head, &body, NOW);
        assert_eq!(first, second, "verification is not deterministic");
        let Ok(verified) = first else { return };
        check_accepted_delivery(scheme, &head, &body, verified.timestamp);
        let table = SharedReplayTable::new(MemoryStore::default(), "fuzz:".into(), 4, 2);
        assert_eq!(
            hook.check_replay(&verified, &table, NOW),
            Ok(()),
            "first delivery refused"
        );
        // Sent again a second later: refused, by the timestamp or else by the replay table.
        if let Ok(later) = hook.verify(&head, &body, NOW + 1) {
            assert_eq!(
                hook.check_replay(&later, &table, NOW + 1),
                Err(WebhookRefusal::Replayed),
                "a replayed delivery is let through"
            );
        }
    });
}

fn check_accepted_delivery(scheme: usize, head: &RequestHead, body: &[u8], timestamp: Option<u64>) {
    let keys: Vec<Vec<u8>> = webhook_secrets(scheme)
        .iter()
        .map(|s| webhook_key(scheme, s))
        .collect();
    let single = |name: &str| -> String {
        let values: Vec<&str> = head.header_values(name).collect();
        assert_eq!(
            values.len(),
            1,
            "accepted with {} {name} headers",
            values.len()
        );
        values
            .first()
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let within = |t: u64| t.abs_diff(NOW) <= WEBHOOK_TOLERANCE;
    match scheme {
        0 => {
            let header = single("stripe-signature");
            let items: Vec<&str> = header.split(',').map(str::trim).collect();
            let ts: Vec<&str> = items.iter().filter_map(|i| i.strip_prefix("t=")).collect();
            assert_eq!(
                ts.len(),
                1,
                "accepted a stripe header without exactly one t"
            );
            let t = ts.first().copied().unwrap_or("");
            assert_eq!(t.parse::<u64>().ok(), timestamp, "stripe timestamp");
            assert!(
                timestamp.is_some_and(within),
                "accepted a stale stripe delivery"
            );
            let matches = items
                .iter()
                .filter_map(|i| i.strip_prefix("v1="))
                .any(|sig| {
                    keys.iter().any(|k| {
                        hex_lower(&hmac_sha256(k, &[t.as_bytes(), b".", body]))
                            == sig.to_ascii_lowercase()
                    })
                });
            assert!(matches, "accepted a stripe delivery no secret signed");
        }
        1 => {
            let header = single("x-hub-signature-256").to_ascii_lowercase();
            let matches = keys
                .iter()
                .any(|k| header == format!("sha256={}", hex_lower(&hmac_sha256(k, &[body]))));
            assert!(matches, "accepted a github delivery no secret signed");
            assert_eq!(timestamp, None);
        }
        _ => {
            let id = single("webhook-id");
            let ts = single("webhook-timestamp");
            let sigs = single("webhook-signature");
            assert!(id.len() <= 256, "accepted a long webhook-id");
            assert!(
                ts.bytes().all(|b| b.is_ascii_digit()) && (ts == "0" || !ts.starts_with('0')),
                "accepted a non-canonical timestamp {ts:?}"
            );
            assert_eq!(ts.parse::<u64>().ok(), timestamp, "standard timestamp");
            assert!(
                timestamp.is_some_and(within),
                "accepted a stale standard delivery"
            );
            let matches = sigs
                .split(' ')
                .filter_map(|e| e.strip_prefix("v1,"))
                .any(|sig| {
                    STANDARD.decode(sig).is_ok_and(|sig| {
                        keys.iter().any(|k| {
                            hmac_sha256(k, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]) == sig
                        })
                    })
                });
            assert!(matches, "accepted a standard delivery no secret signed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// body_schema
// ---------------------------------------------------------------------------------------------

/// Schemas of the kind routes carry (README and tests), for bodies fuzzed on their own.
pub const FUZZ_SCHEMAS: [&str; 4] = [
    r#"{"type":"object","required":["name","email"],"additionalProperties":false,
        "properties":{"name":{"type":"string","minLength":1,"maxLength":64,"pattern":"^[A-Za-z][A-Za-z0-9 _-]*$"},
                      "email":{"type":"string","format":"email"},
                      "age":{"type":"integer","minimum":0,"maximum":150},
                      "role":{"enum":["admin","viewer",null,1.5]},
                      "tags":{"type":"array","items":{"type":"string","pattern":"^\\S+$"},"maxItems":5}}}"#,
    r#"{"type":["object","array"],"items":{"type":"number","minimum":-1.5,"maximum":1e3},
        "properties":{"a":{"type":"object","properties":{"b":{"type":"boolean"}},"additionalProperties":{"type":"null"}}}}"#,
    r#"{"type":"array","minItems":1,"items":{"type":"object","required":["id"],
        "properties":{"id":{"type":"string","minLength":3,"maxLength":3}}}}"#,
    "true",
];

thread_local! {
    static SCHEMAS: Vec<Option<BodySchema>> = FUZZ_SCHEMAS
        .iter()
        .map(|s| serde_json::from_str::<Value>(s).ok().and_then(|v| BodySchema::compile(&v, "body_schema").ok()))
        .collect();
}

fn body_strings(value: &Value, keys: &mut Vec<String>, values: &mut Vec<String>) {
    match value {
        Value::String(s) => values.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| body_strings(v, keys, values)),
        Value::Object(map) => {
            for (k, v) in map {
                keys.push(k.clone());
                body_strings(v, keys, values);
            }
        }
        _ => {}
    }
}

fn check_schema(schema: &BodySchema, schema_text: &str, body: &[u8]) {
    let verdict = schema.validate(body);
    assert_eq!(
        verdict,
        schema.validate(body),
        "validation is not deterministic"
    );
    let parsed = strict_json::from_slice(body);
    match &parsed {
        Ok(value) => {
            assert_eq!(
                verdict,
                schema.validate_value(value),
                "validate and validate_value differ"
            );
            // The same document in another JSON formatting gets the same verdict.
            let compact = serde_json::to_vec(value).unwrap_or_default();
            assert_eq!(
                verdict,
                schema.validate(&compact),
                "verdict depends on JSON formatting"
            );
        }
        Err(_) => assert_eq!(
            verdict,
            Err(vec![FieldError {
                field: String::new(),
                message: "must be valid JSON".into()
            }]),
            "a body that is not strict JSON"
        ),
    }
    let Err(errors) = &verdict else { return };
    assert!(
        !errors.is_empty() && errors.len() <= MAX_ERRORS,
        "{} errors",
        errors.len()
    );
    let Ok(value) = &parsed else { return };
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    body_strings(value, &mut keys, &mut values);
    for error in errors {
        assert!(
            error.field.len() <= 256 + 3,
            "field path of {} bytes",
            error.field.len()
        );
        // Messages speak of the schema, never of the rejected value. A value made of lower-case
        // words, numbers and spaces only can be part of a message's own text ("ch the required
        // patter" is in "does not match the required pattern", "ost 5 items" in "must have at
        // most 5 items"): that is no echo.
        for v in &values {
            let message_like = v
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b' ');
            if v.len() >= 8
                && !message_like
                && !schema_text.contains(v.as_str())
                && !keys.iter().any(|k| k.contains(v.as_str()))
            {
                assert!(
                    !error.message.contains(v.as_str()),
                    "message echoes a value: {:?}",
                    error.message
                );
            }
        }
    }
}

/// Body-schema compilation and validation.
///
/// Input: `schema \0 body` (the schema is compiled from the first part); without a NUL byte,
/// the first byte picks one of [`FUZZ_SCHEMAS`] and the rest is the body.
///
/// Properties: validation is deterministic, `validate` and `validate_value` agree, the verdict
/// does not depend on how the JSON is formatted, a body that is not strict JSON (duplicate keys
/// included) gets exactly the one "must be valid JSON" error, at most `MAX_ERRORS` errors come
/// back, field paths are bounded and no message quotes a string of the body.
pub fn body_schema(data: &[u8]) {
    if let Some(nul) = data.iter().position(|&b| b == 0) {
        let (schema_bytes, body) = (&data[..nul], &data[nul + 1..]);
        let Ok(schema_value) = serde_json::from_slice::<Value>(schema_bytes) else {
            return;
        };
        let first = BodySchema::compile(&schema_value, "body_schema");
        let again = BodySchema::compile(&schema_value, "body_schema");
        assert_eq!(
            first.is_ok(),
            again.is_ok(),
            "schema compilation is not deterministic"
        );
        if let Ok(schema) = first {
            check_schema(&schema, &String::from_utf8_lossy(schema_bytes), body);
        }
        return;
    }
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    SCHEMAS.with(|schemas| {
        let i = usize::from(pick) % FUZZ_SCHEMAS.len();
        let Some(Some(schema)) = schemas.get(i) else {
            finding("the fixed schemas compile");
            return;
        };
        check_schema(schema, FUZZ_SCHEMAS[i], body);
    });
}

// ---------------------------------------------------------------------------------------------
// header_pairs
// ---------------------------------------------------------------------------------------------

/// The proxy-wasm header-map codec (`HeaderPairs::parse`, `header_pairs::serialize`) and the
/// request head built from it.
///
/// Input: both as the host's wire bytes (parsed directly) and as `name: value` lines (turned
/// into pairs, serialised, parsed back).
///
/// Properties: parsing never panics nor reserves more than the buffer justifies; what parses
/// serialises back to the bytes it was read from (a prefix of the buffer) and parses again to
/// the same pairs; `get` finds the first pair of a name; pairs built from lines round-trip
/// exactly; `RequestHead::from_pairs` marks a non-UTF-8 pseudo-header unreadable and keeps every
/// regular header.
pub fn header_pairs(data: &[u8]) {
    if let Ok(parsed) = HeaderPairs::parse(data.to_vec()) {
        let pairs: Vec<(&[u8], &[u8])> = parsed.iter().collect();
        assert_eq!(pairs.len(), parsed.len(), "iter and len differ");
        if !data.is_empty() {
            let bytes = header_pairs::serialize(&pairs);
            assert!(
                data.starts_with(&bytes),
                "serialised pairs are not the bytes they came from"
            );
        }
        check_round_trip(&pairs);
        for (name, value) in &pairs {
            if let Ok(name) = std::str::from_utf8(name) {
                let first = pairs
                    .iter()
                    .find(|(n, _)| *n == name.as_bytes())
                    .map(|(_, v)| *v);
                assert_eq!(parsed.get(name), first, "get is not the first value");
                let _ = value;
            }
        }
        check_head(&parsed, &pairs);
    }
    let lines: Vec<(&[u8], &[u8])> = data
        .split(|&b| b == b'\n')
        .map(|line| match line.iter().position(|&b| b == b':') {
            Some(0) | None => (line, &b""[..]),
            Some(i) => (&line[..i], &line[i + 1..]),
        })
        .collect();
    check_round_trip(&lines);
}

fn check_round_trip(pairs: &[(&[u8], &[u8])]) {
    let bytes = header_pairs::serialize(pairs);
    let again = HeaderPairs::parse(bytes);
    assert!(again.is_ok(), "serialised pairs do not parse");
    let again = again.unwrap_or_default();
    assert_eq!(
        again.iter().collect::<Vec<_>>(),
        pairs,
        "round trip changed the pairs"
    );
}

fn check_head(parsed: &HeaderPairs, pairs: &[(&[u8], &[u8])]) {
    let head = RequestHead::from_pairs(parsed, Box::new(|| Some("192.0.2.1:1".into())));
    let bad_pseudo = pairs.iter().any(|(n, v)| {
        n.first() == Some(&b':')
            && (std::str::from_utf8(n).is_err() || std::str::from_utf8(v).is_err())
    });
    assert_eq!(head.unreadable.is_some(), bad_pseudo, "unreadable flag");
    let regular = pairs
        .iter()
        .filter(|(n, _)| n.first() != Some(&b':'))
        .count();
    assert_eq!(
        head.header_count(),
        regular,
        "regular headers lost or added"
    );
    let _ = head.client_ip();
}

//! Minting credentials for the command line and the tests: tokens signed with a private JWK
//! (`api-guard token`, `make demo-token`) and API keys (`api-guard keygen`, `api-guard hash`).
//! Native only: the filter never signs or generates anything.

use crate::authn::api_keys::{self, ApiKeyConfig, ApiKeys, ApiKeysConfig};
use crate::authn::jwt::alg::{Alg, HashAlg, KeyFamily};
use crate::authn::jwt::b64url;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

fn member(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the key has no \"{name}\""))?;
    b64url::decode(text).map_err(|_| format!("\"{name}\" is not base64url"))
}

/// The algorithm a private JWK signs with by default: its own `alg`, or the obvious one.
pub fn default_alg(jwk: &Value) -> Result<Alg, String> {
    if let Some(name) = jwk.get("alg").and_then(Value::as_str) {
        return Alg::from_name(name).ok_or_else(|| format!("unsupported alg {name:?}"));
    }
    match (
        jwk.get("kty").and_then(Value::as_str),
        jwk.get("crv").and_then(Value::as_str),
    ) {
        (Some("RSA"), _) => Ok(Alg::RS256),
        (Some("EC"), Some("P-256")) => Ok(Alg::ES256),
        (Some("EC"), Some("P-384")) => Ok(Alg::ES384),
        (Some("OKP"), Some("Ed25519")) => Ok(Alg::EdDSA),
        (Some("oct"), _) => Ok(Alg::HS256),
        _ => Err("unsupported key type".into()),
    }
}

/// The public half of a private JWK (what goes into a JWKS).
pub fn public_jwk(private: &Value) -> Value {
    let mut public = private.clone();
    if let Some(object) = public.as_object_mut() {
        for name in ["d", "p", "q", "dp", "dq", "qi", "oth"] {
            object.remove(name);
        }
    }
    public
}

fn digest(hash: HashAlg, input: &[u8]) -> Vec<u8> {
    match hash {
        HashAlg::Sha256 => Sha256::digest(input).to_vec(),
        HashAlg::Sha384 => Sha384::digest(input).to_vec(),
        HashAlg::Sha512 => Sha512::digest(input).to_vec(),
    }
}

/// Signs `input` with the private JWK under `alg`; the JWS signature bytes.
pub fn sign_bytes(jwk: &Value, alg: Alg, input: &[u8]) -> Result<Vec<u8>, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    match alg.family() {
        KeyFamily::Rsa => {
            let n = rsa::BigUint::from_bytes_be(&member(jwk, "n")?);
            let e = rsa::BigUint::from_bytes_be(&member(jwk, "e")?);
            let d = rsa::BigUint::from_bytes_be(&member(jwk, "d")?);
            let primes = vec![
                rsa::BigUint::from_bytes_be(&member(jwk, "p")?),
                rsa::BigUint::from_bytes_be(&member(jwk, "q")?),
            ];
            let key = rsa::RsaPrivateKey::from_components(n, e, d, primes).map_err(|e| err(&e))?;
            let hashed = digest(alg.hash(), input);
            let mut rng = rand_core::OsRng;
            match alg {
                Alg::RS256 => key.sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &hashed),
                Alg::RS384 => key.sign(rsa::Pkcs1v15Sign::new::<Sha384>(), &hashed),
                Alg::RS512 => key.sign(rsa::Pkcs1v15Sign::new::<Sha512>(), &hashed),
                Alg::PS256 => {
                    key.sign_with_rng(&mut rng, rsa::Pss::new_with_salt::<Sha256>(32), &hashed)
                }
                Alg::PS384 => {
                    key.sign_with_rng(&mut rng, rsa::Pss::new_with_salt::<Sha384>(48), &hashed)
                }
                _ => key.sign_with_rng(&mut rng, rsa::Pss::new_with_salt::<Sha512>(64), &hashed),
            }
            .map_err(|e| err(&e))
        }
        KeyFamily::EcP256 => {
            use p256::ecdsa::signature::Signer;
            let key =
                p256::ecdsa::SigningKey::from_slice(&member(jwk, "d")?).map_err(|e| err(&e))?;
            let signature: p256::ecdsa::Signature = key.sign(input);
            Ok(signature.to_bytes().to_vec())
        }
        KeyFamily::EcP384 => {
            use p384::ecdsa::signature::Signer;
            let key =
                p384::ecdsa::SigningKey::from_slice(&member(jwk, "d")?).map_err(|e| err(&e))?;
            let signature: p384::ecdsa::Signature = key.sign(input);
            Ok(signature.to_bytes().to_vec())
        }
        KeyFamily::Ed25519 => {
            use ed25519_dalek::Signer;
            let d: [u8; 32] = member(jwk, "d")?
                .try_into()
                .map_err(|_| "an Ed25519 private key is 32 bytes".to_string())?;
            Ok(ed25519_dalek::SigningKey::from_bytes(&d)
                .sign(input)
                .to_bytes()
                .to_vec())
        }
        KeyFamily::Hmac => {
            let k = member(jwk, "k")?;
            let tag = match alg {
                Alg::HS256 => Hmac::<Sha256>::new_from_slice(&k)
                    .map(|m| m.chain_update(input).finalize().into_bytes().to_vec()),
                Alg::HS384 => Hmac::<Sha384>::new_from_slice(&k)
                    .map(|m| m.chain_update(input).finalize().into_bytes().to_vec()),
                _ => Hmac::<Sha512>::new_from_slice(&k)
                    .map(|m| m.chain_update(input).finalize().into_bytes().to_vec()),
            };
            tag.map_err(|e| err(&e))
        }
    }
}

/// A compact JWS of `header` and `claims`, both given as JSON text so that callers (tests)
/// can write headers no honest issuer would.
pub fn sign_raw(
    jwk: &Value,
    alg: Alg,
    header_json: &str,
    claims_json: &str,
) -> Result<String, String> {
    let signing_input = format!(
        "{}.{}",
        b64url::encode(header_json.as_bytes()),
        b64url::encode(claims_json.as_bytes())
    );
    let signature = sign_bytes(jwk, alg, signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", b64url::encode(&signature)))
}

/// A token with header `{"alg", "typ": "JWT", "kid"}` (kid from the key, when it has one).
pub fn sign(jwk: &Value, alg: Alg, claims: &Map<String, Value>) -> Result<String, String> {
    let mut header = Map::new();
    header.insert("alg".into(), Value::String(alg.name().into()));
    header.insert("typ".into(), Value::String("JWT".into()));
    if let Some(kid) = jwk.get("kid") {
        header.insert("kid".into(), kid.clone());
    }
    sign_raw(
        jwk,
        alg,
        &Value::Object(header).to_string(),
        &Value::Object(claims.clone()).to_string(),
    )
}

/// Random bytes in a generated API key.
pub const API_KEY_RANDOM_BYTES: usize = 32;
/// Their length in base64url (no padding).
pub const API_KEY_RANDOM_CHARS: usize = 43;

/// A new API key: `prefix` followed by base64url of 32 bytes from the operating system's
/// random generator (256 bits: no guessing, and no use in rate-limiting guesses).
pub fn generate_api_key(prefix: &str) -> Result<String, String> {
    api_keys::check_prefix(prefix).map_err(|m| format!("prefix {m}"))?;
    let mut random = [0u8; API_KEY_RANDOM_BYTES];
    OsRng
        .try_fill_bytes(&mut random)
        .map_err(|e| format!("the operating system's random generator failed: {e}"))?;
    Ok(format!("{prefix}{}", b64url::encode(&random)))
}

/// The prefix of an existing key, when it can be told without being told:
/// - a key that `generate_api_key` made: everything before its 43 base64url characters of
///   randomness (which may themselves contain `_`, so "up to the last `_`" would cut the
///   secret and put part of it into the configuration);
/// - otherwise the leading `label_` groups (`sk_live_`, `ghp_`): lower-case letters and
///   digits, at most 12 each, followed by `_`, leaving at least 16 characters of secret.
///
/// `None` when neither applies: the caller must be told the prefix.
pub fn infer_api_key_prefix(key: &str) -> Option<&str> {
    if key.len() > API_KEY_RANDOM_CHARS {
        let split = key.len() - API_KEY_RANDOM_CHARS;
        if let (Some(prefix), Some(random)) = (key.get(..split), key.get(split..)) {
            let decodes = b64url::decode(random).is_ok_and(|b| b.len() == API_KEY_RANDOM_BYTES);
            if decodes && api_keys::check_prefix(prefix).is_ok() {
                return Some(prefix);
            }
        }
    }
    let mut end = 0;
    while let Some(rest) = key.get(end..) {
        let Some(label_len) = rest.find('_') else {
            break;
        };
        let label = &rest[..label_len];
        let is_label = (1..=12).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !is_label || key.len() - (end + label_len + 1) < 16 {
            break;
        }
        end += label_len + 1;
    }
    key.get(..end)
        .filter(|prefix| !prefix.is_empty() && api_keys::check_prefix(prefix).is_ok())
}

/// The `api_keys.keys[]` entry for a key, in the order a reader expects.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApiKeySnippet {
    pub id: String,
    pub prefix: String,
    pub sha256: String,
    pub scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// The configuration entry for `key`, checked by the filter's own validation and verified
/// against the key (so a snippet that is printed is one that accepts the key). `id` defaults
/// to `key-` and the first 8 hex digits of the key's SHA-256 (which reveal nothing usable).
pub fn api_key_snippet(
    key: &str,
    prefix: &str,
    id: Option<&str>,
    scopes: &[String],
    expires_at: Option<&str>,
) -> Result<ApiKeySnippet, String> {
    api_keys::check_key_shape(key)
        .map_err(|reason| format!("not a key api-guard would accept: {reason}"))?;
    if !key.starts_with(prefix) || key.len() == prefix.len() {
        return Err("the key must start with the prefix and go on after it".into());
    }
    let sha256 = api_keys::key_sha256_hex(key);
    let snippet = ApiKeySnippet {
        id: id.map_or_else(|| format!("key-{}", &sha256[..8]), str::to_owned),
        prefix: prefix.to_owned(),
        sha256,
        scopes: scopes.to_vec(),
        expires_at: expires_at.map(str::to_owned),
    };
    let config = ApiKeysConfig {
        header: api_keys::DEFAULT_HEADER.to_owned(),
        keys: vec![ApiKeyConfig {
            id: snippet.id.clone(),
            prefix: snippet.prefix.clone(),
            sha256: snippet.sha256.clone(),
            scopes: snippet.scopes.clone(),
            expires_at: snippet.expires_at.clone(),
        }],
    };
    let compiled = ApiKeys::compile(&config, "").map_err(|errors| {
        errors
            .iter()
            .map(|e| {
                // Errors name config paths (`keys[0].expires_at`); the user typed flags.
                let field = e.path.strip_prefix("keys[0].").unwrap_or(&e.path);
                let flag = match field.split(['.', '[']).next() {
                    Some("id") => "--id",
                    Some("prefix") => "--prefix",
                    Some("scopes") => "--scopes",
                    Some("expires_at") => "--expires-at",
                    _ => "key",
                };
                format!("{flag}: {}", e.message)
            })
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    // Verified before its expiry (an expired snippet is still printed: it is what was asked).
    let before_expiry = compiled
        .keys()
        .first()
        .and_then(|k| k.expires_at)
        .map_or(0, |at| at.saturating_sub(1));
    compiled
        .verify(key, before_expiry)
        .map_err(|f| format!("the snippet does not accept the key ({})", f.reason()))?;
    Ok(snippet)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn generated_keys_are_prefixed_random_and_infer_their_prefix() {
        let first = generate_api_key("ag_live_").unwrap();
        let second = generate_api_key("ag_live_").unwrap();
        assert_ne!(first, second);
        assert_eq!(first.len(), "ag_live_".len() + API_KEY_RANDOM_CHARS);
        assert_eq!(infer_api_key_prefix(&first), Some("ag_live_"));
        // Even when the random part holds underscores.
        let underscored = format!("ag_live_{}", "_a".repeat(21) + "A");
        assert_eq!(underscored.len(), 8 + 43);
        assert_eq!(infer_api_key_prefix(&underscored), Some("ag_live_"));
        assert!(generate_api_key("").is_err());
        assert!(generate_api_key("ag live").is_err());
    }

    #[test]
    fn foreign_key_prefixes() {
        let cases = [
            ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", Some("sk_live_")),
            ("ghp_16C7e42F292c6912E7710c838347Ae178B4a", Some("ghp_")),
            ("sk_live_abc_XYZ0123456789abcdef", Some("sk_live_abc_")),
            ("sk_live_short", None),
            ("nounderscore0123456789", None),
            ("SK_LIVE_4eC39HqLyjWDarjtT1zdp7dc", None),
            ("_leading0123456789abcdef", None),
        ];
        for (key, want) in cases {
            assert_eq!(infer_api_key_prefix(key), want, "{key}");
        }
    }

    #[test]
    fn snippets_are_validated_and_accept_their_key() {
        let key = "ag_live_0123456789abcdefghijklmnop";
        let snippet =
            api_key_snippet(key, "ag_live_", None, &["a:read".to_string()], None).unwrap();
        assert_eq!(snippet.sha256, api_keys::key_sha256_hex(key));
        assert_eq!(snippet.id, format!("key-{}", &snippet.sha256[..8]));
        assert_eq!(
            serde_json::to_string(&snippet).unwrap(),
            format!(
                r#"{{"id":"{}","prefix":"ag_live_","sha256":"{}","scopes":["a:read"]}}"#,
                snippet.id, snippet.sha256
            )
        );
        let dated = api_key_snippet(key, "ag_", Some("x"), &[], Some("2020-01-01T00:00:00Z"));
        assert_eq!(
            dated.unwrap().expires_at.as_deref(),
            Some("2020-01-01T00:00:00Z")
        );

        let errors = [
            api_key_snippet(key, "sk_", None, &[], None),
            api_key_snippet(key, key, None, &[], None),
            api_key_snippet("ag_ key", "ag_", None, &[], None),
            api_key_snippet(key, "ag_", Some(""), &[], None),
            api_key_snippet(key, "ag_", None, &["two words".into()], None),
            api_key_snippet(key, "ag_", None, &[], Some("tomorrow")),
        ];
        for error in errors {
            let message = error.unwrap_err();
            assert!(!message.contains(key), "{message}");
        }
        assert_eq!(
            api_key_snippet(key, "ag_", None, &[], Some("tomorrow")).unwrap_err(),
            "--expires-at: invalid date: expected an RFC 3339 date-time such as \"2027-06-30T00:00:00Z\""
        );
    }
}

//! JSON Web Keys (RFC 7517/7518) compiled, once at configuration time, into verifier-ready keys:
//! parsed public keys for the Rust path and SPKI DER for the host's `verify_signature`.

use super::alg::{Alg, KeyFamily};
use super::b64url;
use crate::config::error::{index, join, ConfigError};
use p256::pkcs8::EncodePublicKey;
use serde_json::Value;
use std::fmt;

/// Smallest RSA modulus we accept (NIST SP 800-131A); 1024-bit keys are factorable by a
/// well-funded attacker.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus: verification cost grows with the square of the size, so a huge key in a
/// JWKS would make every request expensive.
pub const MAX_RSA_BITS: usize = 4096;
/// Smallest HMAC secret (RFC 7518 section 3.2 asks for at least the hash size; 32 bytes is the
/// floor for every HS algorithm, and the per-algorithm size is checked at verification).
pub const MIN_HMAC_BYTES: usize = 32;

pub enum KeyMaterial {
    Rsa(Box<rsa::RsaPublicKey>),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    Hmac(HmacSecret),
}

/// A shared secret; never printed.
pub struct HmacSecret(pub Vec<u8>);

impl fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HmacSecret(<{} bytes redacted>)", self.0.len())
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::Rsa(_) => f.write_str("Rsa"),
            KeyMaterial::P256(_) => f.write_str("P256"),
            KeyMaterial::P384(_) => f.write_str("P384"),
            KeyMaterial::Ed25519(_) => f.write_str("Ed25519"),
            KeyMaterial::Hmac(s) => s.fmt(f),
        }
    }
}

#[derive(Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    /// When the JWK names an `alg`, the key verifies that algorithm only.
    pub alg: Option<Alg>,
    pub family: KeyFamily,
    pub material: KeyMaterial,
    /// SubjectPublicKeyInfo DER, for the host's `verify_signature` (RSA and ECDSA keys).
    pub spki_der: Option<Vec<u8>>,
    /// RSA modulus length in bytes: an RSA signature must be exactly this long.
    pub rsa_modulus_len: usize,
}

impl Jwk {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Alg) -> bool {
        let long_enough = match &self.material {
            // RFC 7518 section 3.2: an HMAC key at least as long as the hash output.
            KeyMaterial::Hmac(secret) => secret.0.len() >= alg.hash().output_len(),
            _ => true,
        };
        alg.family() == self.family && self.alg.is_none_or(|own| own == alg) && long_enough
    }
}

/// Members that only a private key has. A JWKS in a gateway's config must never hold them: if
/// it does, the signing key has leaked into a config file.
pub const PRIVATE_MEMBERS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];

/// Compiles a JWKS object (`{"keys": [...]}`) found at JSON path `at`.
pub fn parse_jwks(jwks: &Value, at: &str) -> Result<Vec<Jwk>, Vec<ConfigError>> {
    let Some(object) = jwks.as_object() else {
        return Err(vec![ConfigError::new(
            at,
            "a JWKS must be an object with a \"keys\" array",
        )]);
    };
    let keys_at = join(at, "keys");
    let Some(keys) = object.get("keys").and_then(Value::as_array) else {
        return Err(vec![ConfigError::new(
            keys_at,
            "a JWKS must have a \"keys\" array",
        )]);
    };
    if keys.is_empty() {
        return Err(vec![ConfigError::new(keys_at, "the JWKS has no keys")]);
    }
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        match parse_jwk(key, &index(&keys_at, i)) {
            Ok(jwk) => parsed.push(jwk),
            Err(e) => errors.push(e),
        }
    }
    for (i, a) in parsed.iter().enumerate() {
        if let Some(kid) = &a.kid {
            let twin = parsed[..i]
                .iter()
                .any(|b| b.kid.as_ref() == Some(kid) && b.family == a.family);
            if twin {
                errors.push(ConfigError::new(
                    index(&keys_at, i),
                    format!("duplicate kid {kid:?} for the same key type"),
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

fn member<'a>(
    key: &'a serde_json::Map<String, Value>,
    name: &str,
    at: &str,
) -> Result<&'a str, ConfigError> {
    match key.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ConfigError::new(join(at, name), "must be a string")),
        None => Err(ConfigError::new(join(at, name), "is required")),
    }
}

fn member_bytes(
    key: &serde_json::Map<String, Value>,
    name: &str,
    at: &str,
) -> Result<Vec<u8>, ConfigError> {
    let text = member(key, name, at)?;
    b64url::decode(text).map_err(|_| ConfigError::new(join(at, name), "is not canonical base64url"))
}

pub fn parse_jwk(key: &Value, at: &str) -> Result<Jwk, ConfigError> {
    let Some(key) = key.as_object() else {
        return Err(ConfigError::new(at, "a JWK must be an object"));
    };
    let kty = member(key, "kty", at)?;
    let kid = match key.get("kid") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
        Some(_) => {
            return Err(ConfigError::new(
                join(at, "kid"),
                "must be a string of 1 to 256 characters",
            ))
        }
    };
    match key.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => {
            return Err(ConfigError::new(
                join(at, "use"),
                "must be \"sig\" for a signature key",
            ))
        }
    }
    if let Some(ops) = key.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op == "verify"));
        if !verifies {
            return Err(ConfigError::new(
                join(at, "key_ops"),
                "must include \"verify\"",
            ));
        }
    }
    let alg = match key.get("alg") {
        None => None,
        Some(Value::String(name)) => match Alg::from_name(name) {
            Some(alg) => Some(alg),
            None => {
                return Err(ConfigError::new(
                    join(at, "alg"),
                    format!("unsupported algorithm {name:?}"),
                ))
            }
        },
        Some(_) => return Err(ConfigError::new(join(at, "alg"), "must be a string")),
    };
    if kty != "oct" {
        if let Some(private) = PRIVATE_MEMBERS.iter().find(|m| key.contains_key(**m)) {
            return Err(ConfigError::new(
                join(at, private),
                "private key material in a JWKS: configure only the public key (and rotate this one, it has leaked)",
            ));
        }
    }
    let (family, material, spki_der, rsa_modulus_len) = match kty {
        "RSA" => {
            let n = member_bytes(key, "n", at)?;
            let e = member_bytes(key, "e", at)?;
            let n = rsa::BigUint::from_bytes_be(&n);
            let bits = n.bits();
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(ConfigError::new(
                    join(at, "n"),
                    format!("RSA modulus of {bits} bits; between {MIN_RSA_BITS} and {MAX_RSA_BITS} bits are accepted"),
                ));
            }
            let public = rsa::RsaPublicKey::new_with_max_size(
                n,
                rsa::BigUint::from_bytes_be(&e),
                MAX_RSA_BITS,
            )
            .map_err(|e| ConfigError::new(at, format!("invalid RSA public key: {e}")))?;
            let der = public
                .to_public_key_der()
                .map_err(|e| ConfigError::new(at, format!("cannot encode RSA key: {e}")))?;
            let len = bits.div_ceil(8);
            (
                KeyFamily::Rsa,
                KeyMaterial::Rsa(Box::new(public)),
                Some(der.as_bytes().to_vec()),
                len,
            )
        }
        "EC" => {
            let crv = member(key, "crv", at)?;
            let x = member_bytes(key, "x", at)?;
            let y = member_bytes(key, "y", at)?;
            let coordinate_len = match crv {
                "P-256" => 32,
                "P-384" => 48,
                _ => {
                    return Err(ConfigError::new(
                        join(at, "crv"),
                        format!("unsupported curve {crv:?} (P-256 and P-384 are)"),
                    ))
                }
            };
            if x.len() != coordinate_len || y.len() != coordinate_len {
                return Err(ConfigError::new(
                    at,
                    format!("{crv} coordinates must be {coordinate_len} bytes each"),
                ));
            }
            let mut sec1 = Vec::with_capacity(1 + 2 * coordinate_len);
            sec1.push(0x04);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            let not_on_curve = || ConfigError::new(at, format!("the point is not on curve {crv}"));
            if crv == "P-256" {
                let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                    .map_err(|_| not_on_curve())?;
                let der = vk.to_public_key_der().map_err(|_| not_on_curve())?;
                (
                    KeyFamily::EcP256,
                    KeyMaterial::P256(vk),
                    Some(der.as_bytes().to_vec()),
                    0,
                )
            } else {
                let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                    .map_err(|_| not_on_curve())?;
                let der = p384::pkcs8::EncodePublicKey::to_public_key_der(&vk)
                    .map_err(|_| not_on_curve())?;
                (
                    KeyFamily::EcP384,
                    KeyMaterial::P384(vk),
                    Some(der.as_bytes().to_vec()),
                    0,
                )
            }
        }
        "OKP" => {
            let crv = member(key, "crv", at)?;
            if crv != "Ed25519" {
                return Err(ConfigError::new(
                    join(at, "crv"),
                    format!("unsupported curve {crv:?} (Ed25519 is)"),
                ));
            }
            let x = member_bytes(key, "x", at)?;
            let x: [u8; 32] = x.try_into().map_err(|_| {
                ConfigError::new(join(at, "x"), "an Ed25519 public key is 32 bytes")
            })?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&x)
                .map_err(|_| ConfigError::new(join(at, "x"), "not a valid Ed25519 public key"))?;
            if vk.is_weak() {
                return Err(ConfigError::new(
                    join(at, "x"),
                    "a weak (small-order) Ed25519 key",
                ));
            }
            (KeyFamily::Ed25519, KeyMaterial::Ed25519(vk), None, 0)
        }
        "oct" => {
            let k = member_bytes(key, "k", at)?;
            if k.len() < MIN_HMAC_BYTES {
                return Err(ConfigError::new(
                    join(at, "k"),
                    format!("an HMAC secret needs at least {MIN_HMAC_BYTES} bytes"),
                ));
            }
            (KeyFamily::Hmac, KeyMaterial::Hmac(HmacSecret(k)), None, 0)
        }
        other => {
            return Err(ConfigError::new(
                join(at, "kty"),
                format!("unsupported key type {other:?}"),
            ));
        }
    };
    if let (Some(alg), KeyMaterial::Hmac(secret)) = (alg, &material) {
        if secret.0.len() < alg.hash().output_len() {
            return Err(ConfigError::new(
                join(at, "k"),
                format!(
                    "{alg} needs a secret of at least {} bytes",
                    alg.hash().output_len()
                ),
            ));
        }
    }
    if let Some(alg) = alg {
        if alg.family() != family {
            return Err(ConfigError::new(
                join(at, "alg"),
                format!("algorithm {alg} does not fit a key of type {kty}"),
            ));
        }
    }
    Ok(Jwk {
        kid,
        alg,
        family,
        material,
        spki_der,
        rsa_modulus_len,
    })
}

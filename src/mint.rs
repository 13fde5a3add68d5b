//! Signing tokens with a private JWK, for the command line (`api-guard token`, `make
//! demo-token`) and the tests. Native only: the filter never signs anything.

use crate::jwt::alg::{Alg, HashAlg, KeyFamily};
use crate::jwt::b64url;
use hmac::{Hmac, Mac};
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

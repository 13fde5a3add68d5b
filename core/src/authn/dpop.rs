//! DPoP (RFC 9449): sender-constrained access tokens.
//!
//! The threat: a bearer token that leaks (a log, a proxy, a compromised client library) works
//! for whoever holds it. A DPoP-bound token names, in its `cnf.jkt` claim, the RFC 7638
//! thumbprint of a key its client holds; every request then carries a `DPoP` proof, a JWS signed
//! by that key over this request's method and URL, fresh (`iat`), never used before (`jti`) and
//! tied to the token (`ath`). A stolen token without the key proves nothing, and a stolen proof
//! works once, for one method and URL, for `clock_skew_seconds`.
//!
//! The proof is parsed with the access token's JOSE framing (`jwt::token::parse_compact`: size
//! bound, canonical base64url, no duplicate members), its key with the JWKS parser, and its
//! signature verified through the same [`SignatureVerifier`] as tokens (the host's
//! `verify_signature` in the filter). Nothing here talks to the host: the replay table is a
//! [`ReplayStore`] (proxy-wasm shared data in the filter).

use crate::authn::jwt::alg::{Alg, KeyFamily};
use crate::authn::jwt::b64url;
use crate::authn::jwt::jwk::{self, Jwk};
use crate::authn::jwt::token::{self, header_alg, ParseRefusal};
use crate::authn::jwt::verifier::SignatureVerifier;
use crate::body::replay::ReplayStore;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The request header that carries the proof (RFC 9449 section 4.1), as Envoy names it.
pub const DPOP_HEADER: &str = "dpop";
/// The `Authorization` scheme of a DPoP-bound token (RFC 9449 section 7.1).
pub const DPOP_SCHEME: &str = "DPoP";
/// A `jti` longer than this is refused: it only needs to be unique, and it is hashed into the
/// replay table whatever its length.
const MAX_JTI_BYTES: usize = 256;
/// The shared-data keys of the proofs' replay table (one table for every provider: records are
/// keyed by the proof key's thumbprint and `jti`).
pub const REPLAY_KEY_PREFIX: &str = "api-guard/dpop-replay/";
/// Slots of the replay table: at most `REPLAY_SLOT_COUNT × DEFAULT_ENTRIES_PER_SLOT` proofs
/// live at once (65,536; 1.5 MiB of shared data at most). A proof lives at most twice
/// `clock_skew_seconds`; with the default 60 s that is about 270 DPoP requests per second,
/// sustained, before slots fill and new proofs are refused (fail closed).
pub const REPLAY_SLOT_COUNT: u32 = 4096;

/// `jwt.providers[].dpop`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpopMode {
    /// Tokens are read from the provider's `from` places only; a token bound with `cnf.jkt`
    /// is still refused there (it is never a bearer token).
    #[default]
    Off,
    /// `Authorization: DPoP` with a proof is accepted too; unbound bearer tokens still are.
    Optional,
    /// Only `Authorization: DPoP` with a proof: every bearer token of the provider is refused.
    Required,
}

/// How the token reached the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presentation {
    /// `Authorization: DPoP <token>`.
    Dpop,
    /// Any other place (`Authorization: Bearer`, another header, a cookie).
    Bearer,
}

/// Why a request's DPoP binding was refused. `proof_at_fault` picks the answer: 401 with
/// `WWW-Authenticate: DPoP error="invalid_dpop_proof"` when the proof is missing, invalid,
/// replayed or not for this token (`ath`); the usual `invalid_token` answer otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRefusal {
    pub proof_at_fault: bool,
    /// For the security event; never holds the token or the proof.
    pub reason: &'static str,
}

impl BindingRefusal {
    fn proof(reason: &'static str) -> BindingRefusal {
        BindingRefusal {
            proof_at_fault: true,
            reason,
        }
    }
    fn token(reason: &'static str) -> BindingRefusal {
        BindingRefusal {
            proof_at_fault: false,
            reason,
        }
    }
}

/// The request a proof must be for.
#[derive(Debug, Clone, Copy)]
pub struct ProofTarget<'a> {
    /// `:method` as received.
    pub method: &'a str,
    /// `https` or `http`: the transport as Envoy saw it (see `Policy::arrived_over_tls`).
    pub scheme: &'a str,
    /// `:authority` as received.
    pub authority: &'a str,
    /// `:path` as received (its query is ignored).
    pub path: &'a str,
    /// The access token presented with the proof (for `ath`).
    pub access_token: &'a str,
}

/// What a proof that verified says: the key's thumbprint and what the replay table needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 thumbprint (SHA-256, base64url) of the proof's `jwk`.
    pub thumbprint: String,
    pub jti: String,
    pub iat: u64,
}

/// The token's `cnf.jkt` (RFC 9449 section 6.1). `Err` when `cnf` is there but unreadable: a
/// binding that cannot be read must not let the token pass as unbound.
pub fn bound_thumbprint(claims: &Map<String, Value>) -> Result<Option<&str>, BindingRefusal> {
    match claims.get("cnf") {
        None => Ok(None),
        Some(Value::Object(cnf)) => match cnf.get("jkt") {
            None => Ok(None),
            Some(Value::String(jkt)) => Ok(Some(jkt)),
            Some(_) => Err(BindingRefusal::token("cnf.jkt is not a string")),
        },
        Some(_) => Err(BindingRefusal::token("cnf is not an object")),
    }
}

/// A token that verified and came from anywhere but `Authorization: DPoP`: refused when it is
/// bound (`cnf.jkt`), whatever the mode, and on a provider whose mode is `required`.
pub fn check_bearer(
    mode: DpopMode,
    token_claims: &Map<String, Value>,
) -> Result<(), BindingRefusal> {
    if bound_thumbprint(token_claims)?.is_some() {
        // RFC 9449 section 7.1: a bound token is useless without its key; accepting it as a
        // bearer token would undo the binding, whatever the mode.
        return Err(BindingRefusal::token(
            "DPoP-bound token (cnf.jkt) presented as a bearer token",
        ));
    }
    if mode == DpopMode::Required {
        return Err(BindingRefusal::token(
            "bearer token refused: the provider requires DPoP",
        ));
    }
    Ok(())
}

/// A token that verified and came as `Authorization: DPoP`: it must be bound, and the request
/// must carry exactly one proof, valid for this request and this token, signed by the bound
/// key, and never seen before on any worker (`replay`).
pub fn check_proof(
    token_claims: &Map<String, Value>,
    proof_headers: &mut dyn Iterator<Item = &str>,
    target: &ProofTarget<'_>,
    now: u64,
    clock_skew_seconds: u64,
    verifier: &dyn SignatureVerifier,
    replay: &dyn ReplayStore,
) -> Result<(), BindingRefusal> {
    let Some(bound) = bound_thumbprint(token_claims)? else {
        return Err(BindingRefusal::token(
            "token presented with the DPoP scheme is not bound (no cnf.jkt)",
        ));
    };
    let (Some(proof), None) = (proof_headers.next(), proof_headers.next()) else {
        return Err(BindingRefusal::proof(
            "exactly one DPoP proof header is required",
        ));
    };
    let verified = verify_proof(proof, target, now, clock_skew_seconds, verifier)
        .map_err(BindingRefusal::proof)?;
    if !bool::from(verified.thumbprint.as_bytes().ct_eq(bound.as_bytes())) {
        return Err(BindingRefusal::token(
            "proof key thumbprint does not match the token's cnf.jkt",
        ));
    }
    // Last, after every check: only proofs that verified take room in the replay table.
    // Remembered while the proof's `iat` is acceptable (until `iat + skew`); keyed by key and
    // `jti`, so two clients choosing the same `jti` do not collide.
    let remember_for = verified
        .iat
        .saturating_add(clock_skew_seconds)
        .saturating_sub(now);
    let replay_key = format!("{}.{}", verified.thumbprint, verified.jti);
    match replay.seen_or_insert(&replay_key, now, remember_for) {
        Ok(false) => Ok(()),
        Ok(true) => Err(BindingRefusal::proof(
            "DPoP proof replayed (jti seen before)",
        )),
        Err(_) => Err(BindingRefusal::proof(
            "DPoP replay check unavailable (fail closed)",
        )),
    }
}

/// Why a proof was refused, for the security event.
struct ProofRefusal(&'static str);

impl From<ParseRefusal> for ProofRefusal {
    fn from(refusal: ParseRefusal) -> ProofRefusal {
        ProofRefusal(match refusal {
            ParseRefusal::AlgNone => "DPoP proof alg none",
            ParseRefusal::UnknownAlg => "DPoP proof alg unsupported or missing",
            ParseRefusal::BadJson => {
                "DPoP proof header or claims are not a JSON object without duplicate keys"
            }
            _ => "DPoP proof is not a compact JWS",
        })
    }
}

/// Members that only a private or symmetric key has: a proof's `jwk` is the client's public
/// key, and a proof carrying more has leaked its key (or is an HMAC proof nobody can check).
fn holds_private_material(jwk: &Map<String, Value>) -> bool {
    jwk::PRIVATE_MEMBERS
        .iter()
        .chain(["oth", "k"].iter())
        .any(|m| jwk.contains_key(*m))
        || jwk.get("kty").and_then(Value::as_str) == Some("oct")
}

/// The proof header's rules (RFC 9449 section 4.3, checks 4 to 6): `typ: dpop+jwt`, an
/// asymmetric `alg`, a public `jwk`; nothing that points at another key; no `crit`.
fn read_proof_header(header: &Map<String, Value>) -> Result<(Alg, Jwk, String), ProofRefusal> {
    let typ_ok = matches!(header.get("typ"), Some(Value::String(typ)) if typ.eq_ignore_ascii_case("dpop+jwt"));
    if !typ_ok {
        return Err(ProofRefusal("DPoP proof typ is not dpop+jwt"));
    }
    let alg = header_alg(header)?;
    if alg.family() == KeyFamily::Hmac {
        return Err(ProofRefusal(
            "DPoP proof alg is symmetric; an asymmetric algorithm is required",
        ));
    }
    if ["jku", "x5u", "x5c"]
        .iter()
        .any(|m| header.contains_key(*m))
    {
        return Err(ProofRefusal("DPoP proof names a key by jku/x5u/x5c"));
    }
    // RFC 7515 section 4.1.11: extensions listed in crit must be understood; we understand none.
    if header.contains_key("crit") {
        return Err(ProofRefusal("DPoP proof crit header refused"));
    }
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err(ProofRefusal("DPoP proof has no jwk object"));
    };
    if holds_private_material(jwk) {
        return Err(ProofRefusal(
            "DPoP proof jwk holds private or symmetric key material",
        ));
    }
    let key = jwk::parse_jwk(&Value::Object(jwk.clone()), "jwk")
        .map_err(|_| ProofRefusal("DPoP proof jwk is not a supported public key"))?;
    let thumbprint = thumbprint(jwk, key.family)
        .ok_or(ProofRefusal("DPoP proof jwk is not a supported public key"))?;
    Ok((alg, key, thumbprint))
}

/// Verifies one proof against the request (RFC 9449 section 4.3). The reasons say which rule
/// failed; they go to the security event.
pub fn verify_proof(
    proof: &str,
    target: &ProofTarget<'_>,
    now: u64,
    clock_skew_seconds: u64,
    verifier: &dyn SignatureVerifier,
) -> Result<VerifiedProof, &'static str> {
    let jws = token::parse_compact(proof, read_proof_header).map_err(|r: ProofRefusal| r.0)?;
    let (alg, key, thumbprint) = jws.header;
    let claims = &jws.claims;
    // The claims before the signature: a proof for another request costs no public-key
    // operation.
    let htm = claims.get("htm").and_then(Value::as_str);
    if htm != Some(target.method) {
        return Err("DPoP proof htm does not match the request method");
    }
    let htu = claims
        .get("htu")
        .and_then(Value::as_str)
        .ok_or("DPoP proof htu missing")?;
    let request_url = format!("{}://{}{}", target.scheme, target.authority, target.path);
    let expected = normalize_url(&request_url).ok_or("request URL cannot be normalised")?;
    if normalize_url(htu).as_deref() != Some(expected.as_str()) {
        return Err("DPoP proof htu does not match the request URL");
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_u64)
        .ok_or("DPoP proof iat missing or not a non-negative integer")?;
    if iat.abs_diff(now) > clock_skew_seconds {
        return Err("DPoP proof iat outside the accepted window");
    }
    let jti = match claims.get("jti") {
        Some(Value::String(jti)) if !jti.is_empty() && jti.len() <= MAX_JTI_BYTES => jti,
        _ => return Err("DPoP proof jti missing or not a short string"),
    };
    let ath = claims
        .get("ath")
        .and_then(Value::as_str)
        .ok_or("DPoP proof ath missing")?;
    let expected_ath = b64url::encode(&Sha256::digest(target.access_token.as_bytes()));
    if !bool::from(ath.as_bytes().ct_eq(expected_ath.as_bytes())) {
        return Err("DPoP proof ath does not match the access token");
    }
    if !key.accepts(alg) {
        return Err("DPoP proof alg does not fit its jwk");
    }
    verifier
        .verify(&key, alg, jws.signing_input.as_bytes(), &jws.signature)
        .map_err(|_| "DPoP proof signature does not verify with its jwk")?;
    Ok(VerifiedProof {
        thumbprint,
        jti: jti.clone(),
        iat,
    })
}

/// RFC 7638: SHA-256 over the required members of the key, in lexicographic order, without
/// whitespace; base64url. The members' values are taken as the JWK gave them (the JWK parser
/// has already refused values that are not canonical base64url).
pub fn thumbprint(jwk: &Map<String, Value>, family: KeyFamily) -> Option<String> {
    let members: &[&str] = match family {
        KeyFamily::Rsa => &["e", "kty", "n"],
        KeyFamily::EcP256 | KeyFamily::EcP384 => &["crv", "kty", "x", "y"],
        KeyFamily::Ed25519 => &["crv", "kty", "x"],
        KeyFamily::Hmac => return None,
    };
    let mut canonical = String::from("{");
    for (i, name) in members.iter().enumerate() {
        let value = jwk.get(*name)?.as_str()?;
        if i > 0 {
            canonical.push(',');
        }
        canonical.push_str(&Value::String((*name).to_string()).to_string());
        canonical.push(':');
        canonical.push_str(&Value::String(value.to_string()).to_string());
    }
    canonical.push('}');
    Some(b64url::encode(&Sha256::digest(canonical.as_bytes())))
}

/// An `http`/`https` URL as RFC 9449 section 4.3 compares it: without query and fragment, after
/// RFC 3986 syntax-based normalisation (section 6.2.2: scheme and host in lower case,
/// percent-encodings in upper case and decoded where they encode an unreserved character, dot
/// segments removed) and scheme-based normalisation (section 6.2.3: default port and empty
/// port dropped, empty path as `/`). `None` for anything else (another scheme, userinfo, bytes
/// a URL cannot hold): such a URL matches nothing.
pub fn normalize_url(url: &str) -> Option<String> {
    let url = url.split('#').next()?;
    let url = url.split('?').next()?;
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let (host, port) = split_authority(authority)?;
    let mut normalized = format!("{scheme}://{host}");
    if let Some(port) = port.filter(|port| *port != default_port) {
        normalized.push_str(&format!(":{port}"));
    }
    normalized.push_str(&normalize_path(path)?);
    Some(normalized)
}

/// Host in lower case and the port, if one is given (`host:` counts as none). Userinfo is
/// refused: no request to a gateway carries it.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(literal) = authority.strip_prefix('[') {
        let (inside, after) = literal.split_once(']')?;
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))
        {
            return None;
        }
        (format!("[{}]", inside.to_ascii_lowercase()), after)
    } else {
        let end = authority.find(':').unwrap_or(authority.len());
        let (host, after) = authority.split_at(end);
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !host_ok {
            return None;
        }
        (host.to_ascii_lowercase(), after)
    };
    let port = match port {
        "" | ":" => None,
        port => {
            let digits = port.strip_prefix(':')?;
            if digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(digits.parse::<u16>().ok()?)
        }
    };
    Some((host, port))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn normalize_path(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("/".to_string());
    }
    if !path.starts_with('/') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(hex, 16).ok()?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            if is_unreserved(value) {
                decoded.push(char::from(value));
            } else {
                decoded.push_str(&format!("%{value:02X}"));
            }
            i += 3;
        } else if b.is_ascii_graphic() {
            decoded.push(char::from(b));
            i += 1;
        } else {
            return None;
        }
    }
    // RFC 3986 section 5.2.4, for an absolute path.
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut output: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "." => {}
            ".." => {
                output.pop();
            }
            other => {
                output.push(other);
                continue;
            }
        }
        if i == last {
            output.push("");
        }
    }
    Some(format!("/{}", output.join("/")))
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests;

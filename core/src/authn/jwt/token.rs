//! Parsing a compact JWS into an untrusted token. Nothing here is believed: the header only
//! selects a key, and the claims only select a provider, until the signature has verified.
//!
//! Not jwt-compact's `UntrustedToken` (issue 13, measured in /work/notes/h3.md): its base64url
//! is as strict as ours (base64ct, unpadded, canonical last block), but its header and claims go
//! through plain serde_json and it keeps neither the header's nor the claims' bytes. Each rule
//! below would need its own decode and parse in front of it, so the token would be decoded
//! twice. The rules it does not enforce:
//! - the 8192-byte bound before any work (`TooLarge`);
//! - duplicate members anywhere in the header or claims (`strict_json`: serde_json keeps the
//!   last of two equal keys, a parser differential);
//! - `jwk`, `jku`, `x5u`, `x5c` in the header (parsed or ignored there; refused here);
//! - `crit` (ignored there; RFC 7515 section 4.1.11 says refuse what is not understood);
//! - `alg: none` in any spelling, and names outside the table (any string there);
//! - `kid` of 1 to 256 bytes (any string there);
//! - `cty: JWT` is refused there too, but `cty: CBOR` is accepted (with its default feature);
//! - the claims' registered numbers (`claims::numeric_date`: non-negative integers up to year
//!   9999): jwt-compact's `Claims` takes `exp`/`nbf`/`iat` out of the custom claims into chrono
//!   times, and reads negative numbers and fractions (truncated) as times.

use super::alg::Alg;
use super::b64url;
use crate::body::strict_json;
use serde_json::{Map, Value};

/// Tokens longer than this are refused before any parsing (a cheap bound on the work an
/// attacker can make us do per request).
pub const MAX_TOKEN_BYTES: usize = 8192;
const MAX_KID_BYTES: usize = 256;

#[derive(Debug)]
pub struct JoseHeader {
    pub alg: Alg,
    pub kid: Option<String>,
}

#[derive(Debug)]
pub struct UntrustedToken<'t> {
    pub header: JoseHeader,
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'t str,
    pub signature: Vec<u8>,
}

/// Internal reasons; they go to the security-event log, never to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseRefusal {
    TooLarge,
    NotCompactJws,
    BadBase64,
    BadJson,
    AlgNone,
    UnknownAlg,
    KeyReferenceInHeader,
    CriticalHeader,
    NestedToken,
    BadKid,
    ClaimsNotObject,
}

impl ParseRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            ParseRefusal::TooLarge => "token longer than 8192 bytes",
            ParseRefusal::NotCompactJws => "not a compact JWS (three base64url parts)",
            ParseRefusal::BadBase64 => "not canonical base64url",
            ParseRefusal::BadJson => {
                "header or claims are not a JSON object without duplicate keys"
            }
            ParseRefusal::AlgNone => "alg none refused",
            ParseRefusal::UnknownAlg => "unsupported or missing alg",
            ParseRefusal::KeyReferenceInHeader => {
                "header names a key (jwk/jku/x5u/x5c); only configured keys are used"
            }
            ParseRefusal::CriticalHeader => "crit header with extensions we do not understand",
            ParseRefusal::NestedToken => "nested JWT (cty JWT) refused",
            ParseRefusal::BadKid => "kid is not a short string",
            ParseRefusal::ClaimsNotObject => "claims are not a JSON object",
        }
    }
}

pub fn parse(token: &str) -> Result<UntrustedToken<'_>, ParseRefusal> {
    let jws = parse_compact(token, parse_header)?;
    Ok(UntrustedToken {
        header: jws.header,
        claims: jws.claims,
        signing_input: jws.signing_input,
        signature: jws.signature,
    })
}

/// A compact JWS taken apart, its header read by the caller's rules.
#[derive(Debug)]
pub struct CompactJws<'t, H> {
    pub header: H,
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'t str,
    pub signature: Vec<u8>,
}

/// The framing every JWS here shares (access tokens and DPoP proofs): the size bound, three
/// canonical base64url parts, a header and claims that are JSON objects without duplicate
/// members. `read_header` applies the rules of the kind of JWS to the header before the
/// payload is decoded, so a bad header costs no more work.
pub fn parse_compact<H, E: From<ParseRefusal>>(
    token: &str,
    read_header: impl FnOnce(&Map<String, Value>) -> Result<H, E>,
) -> Result<CompactJws<'_, H>, E> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(ParseRefusal::TooLarge.into());
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseRefusal::NotCompactJws.into());
    };
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    let header_bytes = b64url::decode(header_b64).map_err(|_| ParseRefusal::BadBase64)?;
    let Value::Object(header) =
        strict_json::from_slice(&header_bytes).map_err(|_| ParseRefusal::BadJson)?
    else {
        return Err(ParseRefusal::BadJson.into());
    };
    let header = read_header(&header)?;
    let payload = b64url::decode(payload_b64).map_err(|_| ParseRefusal::BadBase64)?;
    let signature = b64url::decode(signature_b64).map_err(|_| ParseRefusal::BadBase64)?;
    let claims = match strict_json::from_slice(&payload).map_err(|_| ParseRefusal::BadJson)? {
        Value::Object(claims) => claims,
        _ => return Err(ParseRefusal::ClaimsNotObject.into()),
    };
    Ok(CompactJws {
        header,
        claims,
        signing_input,
        signature,
    })
}

/// `alg`, never `none` in any spelling, and one of the table's names.
pub fn header_alg(header: &Map<String, Value>) -> Result<Alg, ParseRefusal> {
    match header.get("alg") {
        Some(Value::String(name)) => {
            if name.eq_ignore_ascii_case("none") {
                return Err(ParseRefusal::AlgNone);
            }
            Alg::from_name(name).ok_or(ParseRefusal::UnknownAlg)
        }
        _ => Err(ParseRefusal::UnknownAlg),
    }
}

fn parse_header(header: &Map<String, Value>) -> Result<JoseHeader, ParseRefusal> {
    let alg = header_alg(header)?;
    // A token that tells us where its key is (an embedded key, or a URL to fetch one from) is an
    // attempt to choose its own key. A gateway uses only the keys it was configured with.
    if ["jwk", "jku", "x5u", "x5c"]
        .iter()
        .any(|m| header.contains_key(*m))
    {
        return Err(ParseRefusal::KeyReferenceInHeader);
    }
    // RFC 7515 section 4.1.11: extensions listed in crit must be understood; we understand none.
    if header.contains_key("crit") {
        return Err(ParseRefusal::CriticalHeader);
    }
    if let Some(Value::String(cty)) = header.get("cty") {
        if cty.eq_ignore_ascii_case("JWT") {
            return Err(ParseRefusal::NestedToken);
        }
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_BYTES => {
            Some(kid.clone())
        }
        Some(_) => return Err(ParseRefusal::BadKid),
    };
    Ok(JoseHeader { alg, kid })
}

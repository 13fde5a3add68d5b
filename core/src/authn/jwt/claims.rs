//! Registered-claim rules (RFC 7519 section 4.1). None of them can be switched off by a token,
//! and `iss`, `aud` and (by default) `exp` cannot be left unchecked by configuration either.
//!
//! Not jwt-compact's `TimeOptions` with `Claims::validate_expiration`/`validate_maturity`
//! (issue 13): its expiry test is `now > exp + leeway`, so it accepts a token at exactly
//! `exp + skew`, which RFC 7519 section 4.1.4 ("on or after") and the attack tables ("exp 60 s
//! ago (the skew exactly)", "skew 0: exp now") refuse; its times are chrono values read from
//! any number (see `token.rs`); and `check_time` runs on every cache hit, on the two integers
//! kept in the cache, where jwt-compact would need a `Claims` of chrono times built per hit.

use serde_json::{Map, Value};

/// Year 9999: dates past this are not dates a real issuer writes, and accepting `exp: 2^63`
/// would make a token that never expires.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRefusal {
    Expired,
    Invalid(&'static str),
}

/// The time claims of a verified token, kept in the cache so they are checked on every hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
}

pub struct ClaimRules<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [String],
    pub clock_skew_seconds: u64,
    pub max_lifetime_seconds: Option<u64>,
    pub require_expiration: bool,
}

fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, ClaimRefusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(date) if date <= MAX_NUMERIC_DATE => Ok(Some(date)),
            Some(_) => Err(ClaimRefusal::Invalid(match name {
                "exp" => "exp out of range",
                "nbf" => "nbf out of range",
                _ => "iat out of range",
            })),
            None => Err(ClaimRefusal::Invalid(match name {
                "exp" => "exp is not a non-negative integer",
                "nbf" => "nbf is not a non-negative integer",
                _ => "iat is not a non-negative integer",
            })),
        },
        Some(_) => Err(ClaimRefusal::Invalid(match name {
            "exp" => "exp is not a number",
            "nbf" => "nbf is not a number",
            _ => "iat is not a number",
        })),
    }
}

pub fn validate(
    claims: &Map<String, Value>,
    rules: &ClaimRules<'_>,
    now: u64,
) -> Result<TimeBounds, ClaimRefusal> {
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == rules.issuer => {}
        Some(Value::String(_)) => return Err(ClaimRefusal::Invalid("iss mismatch")),
        _ => return Err(ClaimRefusal::Invalid("iss missing or not a string")),
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => rules.audiences.iter().any(|a| a == aud),
        Some(Value::Array(auds)) => {
            if auds.iter().any(|a| !a.is_string()) {
                return Err(ClaimRefusal::Invalid("aud array holds a non-string"));
            }
            auds.iter()
                .any(|aud| rules.audiences.iter().any(|a| aud == a.as_str()))
        }
        None => return Err(ClaimRefusal::Invalid("aud missing")),
        Some(_) => return Err(ClaimRefusal::Invalid("aud is not a string or array")),
    };
    if !audience_ok {
        return Err(ClaimRefusal::Invalid("aud mismatch"));
    }
    if let Some(sub) = claims.get("sub") {
        if !sub.is_string() {
            return Err(ClaimRefusal::Invalid("sub is not a string"));
        }
    }
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    if exp.is_none() && rules.require_expiration {
        return Err(ClaimRefusal::Invalid("exp missing"));
    }
    if let Some(iat) = iat {
        if iat > now.saturating_add(rules.clock_skew_seconds) {
            return Err(ClaimRefusal::Invalid("iat in the future"));
        }
    }
    if let Some(max) = rules.max_lifetime_seconds {
        // Measured from iat when there is one, else from now: a token may not outlive the bound.
        let start = iat.unwrap_or(now);
        match exp {
            Some(exp) if exp.saturating_sub(start) <= max => {}
            Some(_) => {
                return Err(ClaimRefusal::Invalid(
                    "lifetime longer than max_lifetime_seconds",
                ))
            }
            None => {
                return Err(ClaimRefusal::Invalid(
                    "exp missing but max_lifetime_seconds is set",
                ))
            }
        }
    }
    let bounds = TimeBounds { exp, nbf };
    check_time(bounds, rules.clock_skew_seconds, now)?;
    Ok(bounds)
}

/// The time checks, run again on every cache hit.
pub fn check_time(
    bounds: TimeBounds,
    clock_skew_seconds: u64,
    now: u64,
) -> Result<(), ClaimRefusal> {
    if let Some(exp) = bounds.exp {
        if now >= exp.saturating_add(clock_skew_seconds) {
            return Err(ClaimRefusal::Expired);
        }
    }
    if let Some(nbf) = bounds.nbf {
        if now.saturating_add(clock_skew_seconds) < nbf {
            return Err(ClaimRefusal::Invalid("not yet valid (nbf)"));
        }
    }
    Ok(())
}

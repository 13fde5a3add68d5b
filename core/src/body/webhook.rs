//! Webhook signature verification (`webhooks.<name>` and `routes[].webhook` in the spec).
//!
//! Three schemes, each an HMAC-SHA256 over the raw body as the sender transmitted it:
//! - `stripe`: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]` over `"<t>.<body>"`.
//!   The HMAC key is the whole `whsec_...` string as UTF-8 bytes: Stripe's own libraries do not
//!   decode it.
//! - `github`: `X-Hub-Signature-256: sha256=<hex>` over the body. No timestamp is signed.
//! - `standard` (Standard Webhooks): `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature: v1,<base64> [v1,<base64> ...]` over `"<id>.<timestamp>.<body>"`; the
//!   secret is `whsec_<base64>` and the key is the decoded bytes.
//!
//! The threats: a forged delivery (anyone can POST to a webhook URL), a delivery captured once and
//! replayed later, and timing side channels on the comparison. So every configured secret is
//! tried (rotation), every presented signature is tried, all comparisons are constant time,
//! timestamps are bounded in both directions, and replays can be refused through a
//! [`ReplayStore`](crate::body::replay::ReplayStore).
//!
//! Secrets and signatures never leave this module: not in errors, not in `Debug`, not in the
//! replay key (which is a hash of signed, non-secret data).

use crate::body::replay::ReplayStore;
use crate::config::error::{index, join, ConfigError};
use crate::request::head::RequestHead;
use crate::response::reply::ErrorCode;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::{Choice, ConstantTimeEq};

pub const DEFAULT_TOLERANCE_SECONDS: u64 = 300;
/// A longer window widens what a captured delivery can be replayed for (and, with replay
/// protection, how long its key must be remembered). Providers retry with fresh timestamps, so
/// an hour is already generous.
pub const MAX_TOLERANCE_SECONDS: u64 = 3600;
/// Each secret costs one HMAC pass over the body per request; rotation needs two or three.
pub const MAX_SECRETS: usize = 8;
/// RFC 2104 discourages HMAC keys shorter than the hash output; 16 bytes is the floor we accept
/// so that a placeholder such as `"secret"` fails at plugin start instead of in production.
pub const MIN_SECRET_BYTES: usize = 16;
/// Bounds the work one header can cause; Stripe sends one `v1` per active secret.
const MAX_SIGNATURES_PER_HEADER: usize = 16;
/// Standard Webhooks ids are short (`msg_...`); a long one is not a real sender.
const MAX_WEBHOOK_ID_BYTES: usize = 256;

const SECRET_PREFIX: &str = "whsec_";

pub const STRIPE_SIGNATURE_HEADER: &str = "stripe-signature";
pub const GITHUB_SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const STANDARD_ID_HEADER: &str = "webhook-id";
pub const STANDARD_TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const STANDARD_SIGNATURE_HEADER: &str = "webhook-signature";

/// `webhooks.<name>` as written in the plugin configuration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `stripe` | `github` | `standard`.
    pub scheme: String,
    pub secrets: Vec<String>,
    /// Default [`DEFAULT_TOLERANCE_SECONDS`].
    #[serde(default)]
    pub tolerance_seconds: Option<u64>,
    #[serde(default)]
    pub replay_protection: bool,
}

/// The secrets are redacted: config structs end up in debug logs.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("scheme", &self.scheme)
            .field(
                "secrets",
                &format_args!("<{} secrets redacted>", self.secrets.len()),
            )
            .field("tolerance_seconds", &self.tolerance_seconds)
            .field("replay_protection", &self.replay_protection)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookScheme {
    Stripe,
    Github,
    Standard,
}

impl WebhookScheme {
    fn parse(name: &str) -> Option<WebhookScheme> {
        match name {
            "stripe" => Some(WebhookScheme::Stripe),
            "github" => Some(WebhookScheme::Github),
            "standard" => Some(WebhookScheme::Standard),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WebhookScheme::Stripe => "stripe",
            WebhookScheme::Github => "github",
            WebhookScheme::Standard => "standard",
        }
    }
}

/// HMAC key bytes, ready to use.
struct WebhookSecret(Vec<u8>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes redacted>", self.0.len())
    }
}

/// A compiled `webhooks.<name>` entry.
#[derive(Debug)]
pub struct Webhook {
    name: String,
    scheme: WebhookScheme,
    secrets: Vec<WebhookSecret>,
    tolerance_seconds: u64,
    replay_protection: bool,
}

/// What a successful verification yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Identifies this delivery for replay protection: hex SHA-256 over signed data only, so an
    /// attacker cannot change it without breaking the signature, and independent of which secret
    /// or which of several signatures matched (else stripping one of two `v1` values during a
    /// rotation would give the same delivery a new key). Never derived from a secret or holding a
    /// signature.
    /// - standard: `webhook-id` and `webhook-timestamp` (the sender's retries carry a fresh
    ///   timestamp and signature, so a retry after an upstream failure is not taken for a replay);
    /// - stripe: `t` and the body;
    /// - github: the body (the `X-GitHub-Delivery` id is not signed, so a replayer could change
    ///   it at will).
    pub replay_key: String,
    /// The signed timestamp (none for github).
    pub timestamp: Option<u64>,
}

/// Why a delivery was refused. The reasons go to the security event; the client only sees the
/// generic `invalid_signature` envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookRefusal {
    MissingHeader,
    BadFormat,
    NoMatchingSignature,
    StaleTimestamp,
    FutureTimestamp,
    /// The same delivery was already accepted within the tolerance window.
    Replayed,
    /// The replay store could not answer (host error, contention, or full): refused, since
    /// letting the delivery through would switch replay protection off under load.
    ReplayCheckUnavailable,
}

impl WebhookRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            WebhookRefusal::MissingHeader => "missing signature header",
            WebhookRefusal::BadFormat => "malformed signature header",
            WebhookRefusal::NoMatchingSignature => "no matching signature",
            WebhookRefusal::StaleTimestamp => "signature timestamp too old",
            WebhookRefusal::FutureTimestamp => "signature timestamp in the future",
            WebhookRefusal::Replayed => "replayed delivery",
            WebhookRefusal::ReplayCheckUnavailable => "replay check unavailable",
        }
    }

    /// The reply to send: `invalid_signature` (400), except when the replay store failed, which
    /// is our fault and temporary (503, so the provider retries later).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            WebhookRefusal::ReplayCheckUnavailable => ErrorCode::ServiceUnavailable,
            _ => ErrorCode::InvalidSignature,
        }
    }
}

impl Webhook {
    /// Compiles `webhooks.<name>`; `at` is its JSON path (`webhooks.stripe`). Every problem is
    /// reported, none of them quoting a secret.
    pub fn compile(name: &str, cfg: &WebhookConfig, at: &str) -> Result<Webhook, Vec<ConfigError>> {
        let mut errors = Vec::new();

        let scheme = WebhookScheme::parse(&cfg.scheme);
        if scheme.is_none() {
            errors.push(ConfigError::new(
                join(at, "scheme"),
                format!(
                    "unknown webhook scheme {:?} (expected stripe, github or standard)",
                    cfg.scheme
                ),
            ));
        }

        let secrets_at = join(at, "secrets");
        if cfg.secrets.is_empty() {
            errors.push(ConfigError::new(
                &secrets_at,
                "at least one secret is required",
            ));
        }
        if cfg.secrets.len() > MAX_SECRETS {
            errors.push(ConfigError::new(
                &secrets_at,
                format!("at most {MAX_SECRETS} secrets may be active at once"),
            ));
        }
        let mut secrets = Vec::with_capacity(cfg.secrets.len());
        if let Some(scheme) = scheme {
            for (i, secret) in cfg.secrets.iter().enumerate() {
                match secret_key(scheme, secret) {
                    Ok(key) => secrets.push(WebhookSecret(key)),
                    Err(message) => errors.push(ConfigError::new(index(&secrets_at, i), message)),
                }
            }
        }

        let tolerance_seconds = cfg.tolerance_seconds.unwrap_or(DEFAULT_TOLERANCE_SECONDS);
        if tolerance_seconds == 0 || tolerance_seconds > MAX_TOLERANCE_SECONDS {
            errors.push(ConfigError::new(
                join(at, "tolerance_seconds"),
                format!("must be between 1 and {MAX_TOLERANCE_SECONDS}"),
            ));
        }

        match scheme {
            Some(scheme) if errors.is_empty() => Ok(Webhook {
                name: name.to_string(),
                scheme,
                secrets,
                tolerance_seconds,
                replay_protection: cfg.replay_protection,
            }),
            _ => Err(errors),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    // What the unit tests read of a compiled webhook; nothing in the filter asks.
    #[cfg(test)]
    fn scheme(&self) -> WebhookScheme {
        self.scheme
    }

    #[cfg(test)]
    fn tolerance_seconds(&self) -> u64 {
        self.tolerance_seconds
    }

    #[cfg(test)]
    fn replay_protection(&self) -> bool {
        self.replay_protection
    }

    /// Which request headers the verification needs (lower-case), so that a request lacking one
    /// is refused before its body is buffered.
    pub fn required_headers(&self) -> &'static [&'static str] {
        match self.scheme {
            WebhookScheme::Stripe => &[STRIPE_SIGNATURE_HEADER],
            WebhookScheme::Github => &[GITHUB_SIGNATURE_HEADER],
            WebhookScheme::Standard => &[
                STANDARD_ID_HEADER,
                STANDARD_TIMESTAMP_HEADER,
                STANDARD_SIGNATURE_HEADER,
            ],
        }
    }

    /// Verifies a delivery: `body` is the raw body exactly as received, `now` the current unix
    /// time in seconds. The signature is checked before the timestamp, so that a timestamp
    /// refusal is only ever reported for a delivery signed with one of our secrets (an operator
    /// reading "too old" knows it was a genuine but late or replayed delivery, not a forgery).
    pub fn verify(
        &self,
        head: &RequestHead,
        body: &[u8],
        now: u64,
    ) -> Result<Verified, WebhookRefusal> {
        match self.scheme {
            WebhookScheme::Stripe => self.verify_stripe(head, body, now),
            WebhookScheme::Github => self.verify_github(head, body),
            WebhookScheme::Standard => self.verify_standard(head, body, now),
        }
    }

    /// Replay protection for a verified delivery: refuses one whose key the store has seen
    /// within the window. A no-op when `replay_protection` is off. The key is remembered as long
    /// as its timestamp stays acceptable (until `timestamp + tolerance`), or for `tolerance`
    /// seconds from now when the scheme signs no timestamp (github: after that, a captured
    /// delivery can be replayed again: GitHub gives nothing signed to prevent it).
    pub fn check_replay(
        &self,
        verified: &Verified,
        store: &dyn ReplayStore,
        now: u64,
    ) -> Result<(), WebhookRefusal> {
        if !self.replay_protection {
            return Ok(());
        }
        let remember_for = match verified.timestamp {
            Some(timestamp) => timestamp
                .saturating_add(self.tolerance_seconds)
                .saturating_sub(now),
            None => self.tolerance_seconds,
        };
        match store.seen_or_insert(&verified.replay_key, now, remember_for) {
            Ok(false) => Ok(()),
            Ok(true) => Err(WebhookRefusal::Replayed),
            Err(_) => Err(WebhookRefusal::ReplayCheckUnavailable),
        }
    }

    fn verify_stripe(
        &self,
        head: &RequestHead,
        body: &[u8],
        now: u64,
    ) -> Result<Verified, WebhookRefusal> {
        let header = parse_stripe_header(single_header(head, STRIPE_SIGNATURE_HEADER)?)?;
        let timestamp_text = header.timestamp.to_string();
        let signed = [timestamp_text.as_bytes(), b".", body];
        self.require_matching_signature(&signed, &header.signatures)?;
        check_timestamp(header.timestamp, now, self.tolerance_seconds)?;
        Ok(Verified {
            replay_key: replay_key("stripe", &signed),
            timestamp: Some(header.timestamp),
        })
    }

    fn verify_github(&self, head: &RequestHead, body: &[u8]) -> Result<Verified, WebhookRefusal> {
        let value = single_header(head, GITHUB_SIGNATURE_HEADER)?;
        let hex = value
            .strip_prefix("sha256=")
            .ok_or(WebhookRefusal::BadFormat)?;
        let signature = decode_hex_32(hex).ok_or(WebhookRefusal::BadFormat)?;
        self.require_matching_signature(&[body], &[signature])?;
        Ok(Verified {
            replay_key: replay_key("github", &[body]),
            timestamp: None,
        })
    }

    fn verify_standard(
        &self,
        head: &RequestHead,
        body: &[u8],
        now: u64,
    ) -> Result<Verified, WebhookRefusal> {
        let id = single_header(head, STANDARD_ID_HEADER)?;
        let timestamp_text = single_header(head, STANDARD_TIMESTAMP_HEADER)?;
        let signature_header = single_header(head, STANDARD_SIGNATURE_HEADER)?;
        if id.len() > MAX_WEBHOOK_ID_BYTES {
            return Err(WebhookRefusal::BadFormat);
        }
        let timestamp = parse_unix_seconds(timestamp_text).ok_or(WebhookRefusal::BadFormat)?;
        let signatures = parse_standard_signatures(signature_header)?;
        self.require_matching_signature(
            &[id.as_bytes(), b".", timestamp_text.as_bytes(), b".", body],
            &signatures,
        )?;
        check_timestamp(timestamp, now, self.tolerance_seconds)?;
        Ok(Verified {
            replay_key: replay_key(
                "standard",
                &[id.as_bytes(), b".", timestamp_text.as_bytes()],
            ),
            timestamp: Some(timestamp),
        })
    }

    /// Every secret against every presented signature, without an early exit: how long this
    /// takes says nothing about which secret or signature came close.
    fn require_matching_signature(
        &self,
        signed_parts: &[&[u8]],
        presented: &[[u8; 32]],
    ) -> Result<(), WebhookRefusal> {
        let mut matched = Choice::from(0);
        for secret in &self.secrets {
            let Some(expected) = hmac_sha256(&secret.0, signed_parts) else {
                continue;
            };
            for signature in presented {
                matched |= expected.ct_eq(signature);
            }
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(WebhookRefusal::NoMatchingSignature)
        }
    }
}

/// The HMAC key a configured secret stands for, or why it is unusable. Messages never quote the
/// secret.
fn secret_key(scheme: WebhookScheme, secret: &str) -> Result<Vec<u8>, String> {
    if secret.trim() != secret {
        return Err("secret has leading or trailing whitespace".into());
    }
    match scheme {
        WebhookScheme::Stripe => {
            // Stripe signs with the whole `whsec_...` string as the key.
            let rest = secret
                .strip_prefix(SECRET_PREFIX)
                .ok_or("a stripe secret starts with \"whsec_\"")?;
            if rest.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "secret is too short (at least {MIN_SECRET_BYTES} characters after \"whsec_\")"
                ));
            }
            Ok(secret.as_bytes().to_vec())
        }
        WebhookScheme::Github => {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "secret is too short (at least {MIN_SECRET_BYTES} bytes)"
                ));
            }
            Ok(secret.as_bytes().to_vec())
        }
        WebhookScheme::Standard => {
            let encoded = secret
                .strip_prefix(SECRET_PREFIX)
                .ok_or("a standard webhooks secret is \"whsec_\" followed by base64")?;
            let key = decode_standard_base64(encoded)
                .ok_or("secret is not valid base64 after \"whsec_\"")?;
            if key.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "secret is too short (at least {MIN_SECRET_BYTES} bytes once decoded)"
                ));
            }
            Ok(key)
        }
    }
}

/// Standard base64, padding optional (the reference libraries accept unpadded secrets).
fn decode_standard_base64(encoded: &str) -> Option<Vec<u8>> {
    let unpadded = encoded.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(unpadded)
        .ok()
}

/// The one value of a header the verification needs. Absent or empty is "missing"; present twice
/// is refused, since two parties (a proxy and the app) could each read a different one.
fn single_header<'a>(head: &'a RequestHead, name: &'a str) -> Result<&'a str, WebhookRefusal> {
    let mut values = head.header_values(name);
    let first = values.next().ok_or(WebhookRefusal::MissingHeader)?;
    if values.next().is_some() {
        return Err(WebhookRefusal::BadFormat);
    }
    let first = first.trim();
    if first.is_empty() {
        return Err(WebhookRefusal::MissingHeader);
    }
    Ok(first)
}

struct StripeHeader {
    timestamp: u64,
    signatures: Vec<[u8; 32]>,
}

/// `t=<seconds>,v1=<hex>[,v1=<hex>...]`; other schemes (Stripe's test-mode `v0`) are ignored, as
/// Stripe's libraries do. Exactly one `t`, at least one `v1`, every `v1` 64 hex digits.
fn parse_stripe_header(value: &str) -> Result<StripeHeader, WebhookRefusal> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in value.split(',') {
        let (key, item_value) = item
            .trim()
            .split_once('=')
            .ok_or(WebhookRefusal::BadFormat)?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(WebhookRefusal::BadFormat);
                }
                timestamp = Some(parse_unix_seconds(item_value).ok_or(WebhookRefusal::BadFormat)?);
            }
            "v1" => {
                if signatures.len() == MAX_SIGNATURES_PER_HEADER {
                    return Err(WebhookRefusal::BadFormat);
                }
                signatures.push(decode_hex_32(item_value).ok_or(WebhookRefusal::BadFormat)?);
            }
            _ => {}
        }
    }
    match timestamp {
        Some(timestamp) if !signatures.is_empty() => Ok(StripeHeader {
            timestamp,
            signatures,
        }),
        _ => Err(WebhookRefusal::BadFormat),
    }
}

/// Space-separated `v1,<base64>` entries. Other versions (`v1a`, asymmetric) are skipped; a `v1`
/// that does not decode to 32 bytes makes the whole header malformed.
fn parse_standard_signatures(value: &str) -> Result<Vec<[u8; 32]>, WebhookRefusal> {
    let mut signatures = Vec::new();
    for entry in value.split(' ').filter(|entry| !entry.is_empty()) {
        let (version, encoded) = entry.split_once(',').ok_or(WebhookRefusal::BadFormat)?;
        if version != "v1" {
            continue;
        }
        if signatures.len() == MAX_SIGNATURES_PER_HEADER {
            return Err(WebhookRefusal::BadFormat);
        }
        let decoded = STANDARD
            .decode(encoded)
            .map_err(|_| WebhookRefusal::BadFormat)?;
        let signature: [u8; 32] = decoded.try_into().map_err(|_| WebhookRefusal::BadFormat)?;
        signatures.push(signature);
    }
    if signatures.is_empty() {
        return Err(WebhookRefusal::BadFormat);
    }
    Ok(signatures)
}

/// Decimal unix seconds: digits only, no sign, no fraction, no leading zero (so the text we sign
/// is the one every library would format from the number).
fn parse_unix_seconds(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.len() <= 20
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return None;
    }
    text.parse().ok()
}

fn check_timestamp(timestamp: u64, now: u64, tolerance: u64) -> Result<(), WebhookRefusal> {
    if timestamp.saturating_add(tolerance) < now {
        Err(WebhookRefusal::StaleTimestamp)
    } else if timestamp > now.saturating_add(tolerance) {
        Err(WebhookRefusal::FutureTimestamp)
    } else {
        Ok(())
    }
}

/// Exactly 64 hex digits, either case (GitHub and Stripe send lower case; a signature is the same
/// bytes in upper case). `base16ct` decodes without data-dependent branches: the bytes are a
/// candidate MAC, compared in constant time after.
fn decode_hex_32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    // 64 digits fill the 32 bytes; `decode` alone would accept fewer (it fills a prefix).
    if text.len() != 64 {
        return None;
    }
    base16ct::mixed::decode(text, &mut out).ok()?;
    Some(out)
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Option<[u8; 32]> {
    // HMAC takes keys of any length; the error case cannot happen but is not unwrapped.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    for part in parts {
        mac.update(part);
    }
    Some(mac.finalize().into_bytes().into())
}

/// Hex SHA-256 over a scheme label and length-prefixed parts (so that no two different inputs
/// share an encoding).
fn replay_key(scheme: &str, parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(scheme.as_bytes());
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    base16ct::lower::encode_string(&hasher.finalize())
}

#[cfg(test)]
mod tests;

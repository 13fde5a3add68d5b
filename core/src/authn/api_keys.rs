//! API keys (spec `api_keys`): read from one configured header or `Authorization: ApiKey <key>`,
//! looked up by prefix, then by the SHA-256 of the whole key compared in constant time. The
//! configuration holds hashes only, so a leaked config (or Envoy admin dump) leaks no key.
//!
//! Threats this module answers:
//! - Timing: the presented key's digest is compared with every candidate of its bucket with
//!   `subtle`, without early exit, so response time does not tell which configured hash (if
//!   any) a guess came close to.
//! - Cost: a lookup is a few map probes whatever the number of keys (10,000 keys cost the same
//!   as one), and a key longer than [`MAX_KEY_LEN`] is refused before it is hashed.
//! - Ambiguity: a key sent twice (header repeated, or in the header and in `Authorization`)
//!   is refused rather than guessing which copy the backend would read.
//! - Leaks: no key, and no hash, is ever written to an error, a log line or `Debug` output.

use crate::authn::jwt::is_header_name;
use crate::config::error::{index, join, ConfigError};
use crate::request::head::RequestHead;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Longest presented key that is hashed at all; anything longer is refused first.
pub const MAX_KEY_LEN: usize = 256;
/// Longest configured prefix: a prefix is a label, the secret is what follows it.
pub const MAX_PREFIX_LEN: usize = 64;
/// Longest configured key id (it becomes the principal and the `x-api-key-id` header).
pub const MAX_ID_LEN: usize = 128;
/// The header read by default.
pub const DEFAULT_HEADER: &str = "x-api-key";
/// The `Authorization` scheme that carries an API key (compared case-insensitively).
pub const AUTHORIZATION_SCHEME: &str = "ApiKey";

/// Query parameter names that always mean "a credential in the URL".
const CREDENTIAL_QUERY_NAMES: [&str; 5] = ["api_key", "apikey", "key", "token", "access_token"];

/// Headers an API key may not be read from: the `Authorization` header has its own `ApiKey`
/// scheme, the rest belong to routing, framing, cookies or identities the filter sets itself.
const RESERVED_KEY_HEADERS: [&str; 11] = [
    "authorization",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "x-request-id",
    "x-api-key-id",
];

fn default_header() -> String {
    DEFAULT_HEADER.to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    #[serde(default = "default_header")]
    pub header: String,
    pub keys: Vec<ApiKeyConfig>,
}

/// One configured key. `Debug` is written by hand: even the hash stays out of logs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub id: String,
    pub prefix: String,
    /// SHA-256 of the whole key (prefix included), 64 lower-case hex digits.
    pub sha256: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// RFC 3339 date-time, e.g. `2027-06-30T00:00:00Z`; the key is refused from that second on.
    #[serde(default)]
    pub expires_at: Option<String>,
}

impl fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("id", &self.id)
            .field("prefix", &self.prefix)
            .field("sha256", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A verified-ready key. `Debug` omits the hash.
pub struct ApiKey {
    pub id: String,
    pub scopes: Vec<String>,
    /// Unix seconds from which the key is refused.
    pub expires_at: Option<u64>,
    prefix: String,
    sha256: [u8; 32],
}

impl ApiKey {
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("prefix", &self.prefix)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The keys of one prefix, sorted by the first 8 bytes of their hash (their "tag").
///
/// The tag is only an index: a presented key is compared in constant time with every key of
/// the bucket whose tag equals the first 8 bytes of its own digest. Without it, 10,000 keys
/// sharing one prefix (`ag_live_` for every customer) would be a 10,000-entry scan per
/// request. What the tag lookup's timing can reveal is whether 64 bits of SHA-256(guess) equal
/// 64 bits of a configured hash, which brings no one closer to a key (SHA-256 preimages).
struct Bucket {
    /// (tag, index into `ApiKeys::keys`), sorted by tag.
    by_tag: Vec<(u64, usize)>,
}

pub struct ApiKeys {
    header: String,
    keys: Vec<ApiKey>,
    buckets: BTreeMap<String, Bucket>,
    /// Distinct prefix lengths, longest first: a lookup probes one map entry per length.
    prefix_lengths: Vec<usize>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("header", &self.header)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// A key found in a request. `Debug` never prints the key.
#[derive(Clone, Copy)]
pub struct PresentedKey<'r> {
    pub key: &'r str,
    /// True when it came from `Authorization: ApiKey`, false when from the configured header:
    /// the header to remove before the request goes upstream.
    pub from_authorization: bool,
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey")
            .field("key", &"<redacted>")
            .field("from_authorization", &self.from_authorization)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyFailure {
    /// A key was presented (or presented ambiguously) and refused. The reason is for the
    /// security-event log only; the client always gets 401 `invalid_api_key`.
    Refused(&'static str),
}

impl ApiKeyFailure {
    pub fn reason(self) -> &'static str {
        match self {
            ApiKeyFailure::Refused(reason) => reason,
        }
    }
}

fn tag(digest: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// SHA-256 of a key, in the lower-case hex the configuration holds (`api-guard hash` prints it).
pub fn key_sha256_hex(key: &str) -> String {
    base16ct::lower::encode_string(&Sha256::digest(key.as_bytes()))
}

/// Checks what a presented key must look like before it is hashed: at most [`MAX_KEY_LEN`]
/// bytes of visible ASCII (no space, no control character, nothing a header could fold).
pub fn check_key_shape(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        Err("empty key")
    } else if key.len() > MAX_KEY_LEN {
        Err("key too long")
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        Err("key has characters other than visible ASCII")
    } else {
        Ok(())
    }
}

/// Checks a configured prefix: 1 to [`MAX_PREFIX_LEN`] bytes of visible ASCII.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    check_visible_ascii(
        prefix,
        MAX_PREFIX_LEN,
        "must not be empty: a prefix such as \"ag_live_\" indexes the keys",
    )
}

/// Checks a key id: 1 to [`MAX_ID_LEN`] bytes of visible ASCII (it is logged as the principal
/// and sent upstream as a header value, so it must be safe in both).
pub fn check_id(id: &str) -> Result<(), String> {
    check_visible_ascii(id, MAX_ID_LEN, "must not be empty")
}

/// 1 to `max_len` bytes of visible ASCII; `if_empty` says why an empty one is refused.
fn check_visible_ascii(text: &str, max_len: usize, if_empty: &str) -> Result<(), String> {
    if text.is_empty() {
        Err(if_empty.into())
    } else if text.len() > max_len {
        Err(format!("must be at most {max_len} bytes"))
    } else if !text.bytes().all(|b| b.is_ascii_graphic()) {
        Err("must be visible ASCII characters, without spaces".into())
    } else {
        Ok(())
    }
}

/// RFC 6749 section 3.3 scope-token: `%x21 / %x23-5B / %x5D-7E`, at least one. A scope with a
/// space could never be written in a JWT `scope` claim, so none is accepted anywhere.
pub fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

fn parse_sha256_hex(text: &str) -> Result<[u8; 32], String> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return Err(format!(
            "must be 64 hex digits (the SHA-256 of the whole key; `api-guard hash` prints it), found {} characters",
            text.chars().count()
        ));
    }
    if bytes.iter().any(u8::is_ascii_uppercase) && bytes.iter().all(u8::is_ascii_hexdigit) {
        return Err("must be lower-case hex".into());
    }
    // Lower case only (`base16ct::lower` refuses `A-F`): one spelling per hash, the one
    // `api-guard hash` prints. 64 bytes of text fill the 32 exactly.
    let mut digest = [0u8; 32];
    base16ct::lower::decode(bytes, &mut digest)
        .map_err(|_| "must be 64 lower-case hex digits (0-9, a-f)".to_string())?;
    Ok(digest)
}

impl ApiKeys {
    /// `at` is the JSON path of the `api_keys` object; errors name e.g. `api_keys.keys[3].sha256`.
    pub fn compile(cfg: &ApiKeysConfig, at: &str) -> Result<ApiKeys, Vec<ConfigError>> {
        let mut errors = Vec::new();

        let header_at = join(at, "header");
        if !is_header_name(&cfg.header) {
            let lower = cfg.header.to_ascii_lowercase();
            if !lower.is_empty() && is_header_name(&lower) {
                errors.push(ConfigError::new(
                    &header_at,
                    format!("header names are lower case: write {lower:?}"),
                ));
            } else {
                errors.push(ConfigError::new(&header_at, "is not a valid header name"));
            }
        } else if RESERVED_KEY_HEADERS.contains(&cfg.header.as_str()) {
            errors.push(ConfigError::new(
                &header_at,
                format!(
                    "{:?} cannot carry API keys (keys in Authorization use the \"ApiKey\" scheme, read always)",
                    cfg.header
                ),
            ));
        }

        let keys_at = join(at, "keys");
        if cfg.keys.is_empty() {
            errors.push(ConfigError::new(
                &keys_at,
                "at least one key is required (remove \"api_keys\" when no key is in use)",
            ));
        }

        let mut keys = Vec::with_capacity(cfg.keys.len());
        // Uniqueness checks through maps, so that 10,000 keys compile in linear time.
        let mut seen_ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut seen_hashes: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for (i, key) in cfg.keys.iter().enumerate() {
            let key_at = index(&keys_at, i);
            let mut key_ok = true;
            let mut fail = |field: &str, message: String| {
                errors.push(ConfigError::new(join(&key_at, field), message));
                key_ok = false;
            };

            match check_id(&key.id) {
                Err(m) => fail("id", m),
                Ok(()) => {
                    if let Some(first) = seen_ids.insert(&key.id, i) {
                        fail(
                            "id",
                            format!(
                                "duplicate key id {:?} (first at {})",
                                key.id,
                                index(&keys_at, first)
                            ),
                        );
                    }
                }
            }
            if let Err(m) = check_prefix(&key.prefix) {
                fail("prefix", m);
            }
            let digest = match parse_sha256_hex(&key.sha256) {
                Ok(digest) => {
                    if let Some(first) = seen_hashes.insert(digest, i) {
                        fail(
                            "sha256",
                            format!(
                                "the same key is configured twice (same hash as {})",
                                index(&keys_at, first)
                            ),
                        );
                    }
                    digest
                }
                Err(m) => {
                    fail("sha256", m);
                    [0u8; 32]
                }
            };
            for (j, scope) in key.scopes.iter().enumerate() {
                if !is_scope_token(scope) {
                    fail(
                        &index("scopes", j),
                        "a scope is a non-empty token of visible ASCII without spaces, quotes or backslashes".into(),
                    );
                }
            }
            let expires_at = match key.expires_at.as_deref().map(parse_rfc3339) {
                None => None,
                Some(Ok(seconds)) => Some(seconds),
                Some(Err(m)) => {
                    fail(
                        "expires_at",
                        format!(
                            "{m}: expected an RFC 3339 date-time such as \"2027-06-30T00:00:00Z\""
                        ),
                    );
                    None
                }
            };
            if key_ok {
                keys.push(ApiKey {
                    id: key.id.clone(),
                    scopes: key.scopes.clone(),
                    expires_at,
                    prefix: key.prefix.clone(),
                    sha256: digest,
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut buckets: BTreeMap<String, Bucket> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            buckets
                .entry(key.prefix.clone())
                .or_insert_with(|| Bucket { by_tag: Vec::new() })
                .by_tag
                .push((tag(&key.sha256), i));
        }
        for bucket in buckets.values_mut() {
            bucket.by_tag.sort_unstable();
        }
        let mut prefix_lengths: Vec<usize> = buckets.keys().map(String::len).collect();
        prefix_lengths.sort_unstable_by(|a, b| b.cmp(a));
        prefix_lengths.dedup();

        Ok(ApiKeys {
            header: cfg.header.clone(),
            keys,
            buckets,
            prefix_lengths,
        })
    }

    /// The configured header (lower case).
    pub fn header_name(&self) -> &str {
        &self.header
    }

    /// Every configured key, in configuration order.
    pub fn keys(&self) -> &[ApiKey] {
        &self.keys
    }

    /// The presented key: from the configured header, or `Authorization: ApiKey <key>` (scheme
    /// case-insensitive). A key in both places, a repeated key header, or a repeated
    /// `Authorization` header carrying an `ApiKey` is refused. `None` when no key is present.
    pub fn find_key<'r>(
        &self,
        head: &'r RequestHead,
    ) -> Result<Option<PresentedKey<'r>>, ApiKeyFailure> {
        // `RequestHead::header_values` ties its result to the name's lifetime too; the key must
        // only borrow from the request.
        let values_of = |name: &str| -> Vec<&'r str> {
            head.headers()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| v)
                .collect()
        };
        let header_values = values_of(&self.header);
        if header_values.len() > 1 {
            return Err(ApiKeyFailure::Refused("key header repeated"));
        }
        let header_value = header_values.first().copied();

        let authorizations = values_of("authorization");
        let mut from_authorization = None;
        for value in &authorizations {
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            if scheme.eq_ignore_ascii_case(AUTHORIZATION_SCHEME) {
                // Two Authorization headers of which one holds a key: which one a backend
                // reads is anyone's guess, so neither is trusted.
                if authorizations.len() > 1 {
                    return Err(ApiKeyFailure::Refused("authorization header repeated"));
                }
                from_authorization = Some(rest.trim_matches(' '));
            }
        }

        let (key, from_authorization) = match (header_value, from_authorization) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(ApiKeyFailure::Refused(
                    "key in both the key header and authorization",
                ))
            }
            (Some(key), None) => (key.trim_matches(' '), false),
            (None, Some(key)) => (key, true),
        };
        if key.is_empty() {
            return Err(ApiKeyFailure::Refused("empty key"));
        }
        Ok(Some(PresentedKey {
            key,
            from_authorization,
        }))
    }

    /// Verifies a presented key at `now` (unix seconds): shape, then every configured prefix the
    /// key starts with (longest first, one map probe per distinct prefix length), then the
    /// SHA-256 of the whole key compared in constant time with each candidate hash, then expiry.
    pub fn verify(&self, presented: &str, now: u64) -> Result<&ApiKey, ApiKeyFailure> {
        check_key_shape(presented).map_err(ApiKeyFailure::Refused)?;

        // Every configured prefix that the key starts with and that leaves a secret after it.
        // Overlapping prefixes (`ag_` and `ag_live_`) are all tried: a prefix is an index, the
        // hash is what authenticates, and a key configured under the shorter prefix must not
        // become unusable because a longer one exists.
        let buckets: Vec<&Bucket> = self
            .prefix_lengths
            .iter()
            .filter(|&&len| presented.len() > len)
            .filter_map(|&len| presented.get(..len))
            .filter_map(|prefix| self.buckets.get(prefix))
            .collect();
        if buckets.is_empty() {
            return Err(ApiKeyFailure::Refused("unknown prefix"));
        }

        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let presented_tag = tag(&digest);
        let mut found = subtle::Choice::from(0u8);
        let mut found_index: u64 = 0;
        for bucket in buckets {
            let start = bucket.by_tag.partition_point(|(t, _)| *t < presented_tag);
            for &(candidate_tag, key_index) in &bucket.by_tag[start..] {
                if candidate_tag != presented_tag {
                    break;
                }
                let Some(candidate) = self.keys.get(key_index) else {
                    continue;
                };
                // No early exit: every candidate is compared, whether or not one matched.
                let equal = digest.ct_eq(&candidate.sha256);
                found_index.conditional_assign(&(key_index as u64), equal);
                found |= equal;
            }
        }
        if !bool::from(found) {
            return Err(ApiKeyFailure::Refused("hash mismatch"));
        }
        let key = usize::try_from(found_index)
            .ok()
            .and_then(|i| self.keys.get(i))
            .ok_or(ApiKeyFailure::Refused("hash mismatch"))?;
        if let Some(expires_at) = key.expires_at {
            // Like a JWT `exp`: refused from the expiry second on.
            if now >= expires_at {
                return Err(ApiKeyFailure::Refused("expired"));
            }
        }
        Ok(key)
    }
}

/// Credentials in the URL: true when the query has a parameter named `api_key`, `apikey`, `key`,
/// `token`, `access_token` or one of `extra_names` (e.g. the configured key header's name).
///
/// Names are compared as backends read them: percent-decoded once (`+` as a space), ASCII
/// case-insensitively, and without an array suffix (`api_key[]` and `api_key[0]` are
/// `api_key` to PHP and Rails). Both `&` and `;` separate parameters, as some frameworks
/// accept either. Values are never looked at, so nothing here can log one.
pub fn credentials_in_query(query: &str, extra_names: &[&str]) -> bool {
    query_has_parameter(query, |name| {
        CREDENTIAL_QUERY_NAMES
            .iter()
            .chain(extra_names)
            .any(|candidate| name.eq_ignore_ascii_case(candidate.as_bytes()))
    })
}

/// Whether a parameter of `query`, with its name read as backends read it (see
/// [`credentials_in_query`]), satisfies `is_wanted`.
pub fn query_has_parameter(query: &str, is_wanted: impl Fn(&[u8]) -> bool) -> bool {
    query
        .split(['&', ';'])
        .filter(|pair| !pair.is_empty())
        .any(|pair| {
            let raw_name = pair.split_once('=').map_or(pair, |(name, _)| name);
            let decoded = percent_decode_name(raw_name);
            let name = match decoded.iter().position(|&b| b == b'[') {
                Some(0) | None => &decoded[..],
                Some(bracket) => &decoded[..bracket],
            };
            is_wanted(name.trim_ascii())
        })
}

/// A parameter name as backends read it: `+` is a space (form encoding), then one pass of
/// percent-decoding, a `%` without two hex digits kept as it is. `+` is replaced first, so that
/// `%2B` still decodes to `+`: it never is a hex digit of an escape.
fn percent_decode_name(raw: &str) -> Vec<u8> {
    let spaced = if raw.contains('+') {
        Cow::Owned(raw.replace('+', " "))
    } else {
        Cow::Borrowed(raw)
    };
    percent_encoding::percent_decode_str(&spaced).collect()
}

/// Parses an RFC 3339 date-time (`2027-06-30T00:00:00Z`, `2027-06-30T02:00:00+02:00`,
/// optional fraction, `t`/`z` accepted in lower case) into unix seconds. A fraction is dropped,
/// so a key expires at most one second early, never late. Dates before 1970 are refused.
pub fn parse_rfc3339(text: &str) -> Result<u64, &'static str> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            part.iter()
                .fold(0i64, |acc, &d| acc * 10 + i64::from(d - b'0')),
        )
    };
    let at = |i: usize| b.get(i).copied();

    let (Some(year), Some(month), Some(day)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return Err("invalid date");
    };
    if at(4) != Some(b'-') || at(7) != Some(b'-') {
        return Err("invalid date");
    }
    if !matches!(at(10), Some(b'T' | b't')) {
        return Err("missing \"T\" between date and time");
    }
    let (Some(hour), Some(minute), Some(second)) = (digits(11..13), digits(14..16), digits(17..19))
    else {
        return Err("invalid time");
    };
    if at(13) != Some(b':') || at(16) != Some(b':') {
        return Err("invalid time");
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err("no such date");
    }
    // 60 is a leap second: unix time has none, so it is the first second of the next minute.
    if hour > 23 || minute > 59 || second > 60 {
        return Err("no such time");
    }

    let mut i = 19;
    if at(i) == Some(b'.') {
        i += 1;
        let start = i;
        while at(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        if i == start {
            return Err("empty fraction of a second");
        }
    }
    let offset_seconds = match at(i) {
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            let (Some(offset_hours), Some(offset_minutes)) =
                (digits(i + 1..i + 3), digits(i + 4..i + 6))
            else {
                return Err("invalid UTC offset");
            };
            if at(i + 3) != Some(b':') || offset_hours > 23 || offset_minutes > 59 {
                return Err("invalid UTC offset");
            }
            i += 6;
            let magnitude = offset_hours * 3600 + offset_minutes * 60;
            if sign == b'+' {
                magnitude
            } else {
                -magnitude
            }
        }
        _ => return Err("missing time zone (\"Z\" or an offset such as \"+02:00\")"),
    };
    if i != b.len() {
        return Err("unexpected characters after the date-time");
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_seconds;
    u64::try_from(seconds).map_err(|_| "dates before 1970 are not accepted")
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        _ => 28,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const LIVE_KEY: &str = "ag_live_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdo";
    const OTHER_LIVE_KEY: &str = "ag_live_c2Vjb25ka2V5c2Vjb25ka2V5c2Vjb25ka2V5MTI";
    const TEST_KEY: &str = "ag_test_dGVzdGtleXRlc3RrZXl0ZXN0a2V5dGVzdGtleTE";

    fn config(json: &str) -> ApiKeysConfig {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn key_json(id: &str, prefix: &str, key: &str, extra: &str) -> String {
        format!(
            r#"{{"id":"{id}","prefix":"{prefix}","sha256":"{}"{extra}}}"#,
            key_sha256_hex(key)
        )
    }

    fn compile(json: &str) -> ApiKeys {
        ApiKeys::compile(&config(json), "api_keys").unwrap_or_else(|e| panic!("{json}: {e:?}"))
    }

    fn errors(json: &str) -> Vec<ConfigError> {
        match ApiKeys::compile(&config(json), "api_keys") {
            Ok(_) => panic!("compiled: {json}"),
            Err(e) => e,
        }
    }

    fn paths(json: &str) -> Vec<String> {
        errors(json).into_iter().map(|e| e.path).collect()
    }

    fn standard() -> ApiKeys {
        compile(&format!(
            r#"{{"keys":[{},{}]}}"#,
            key_json(
                "billing",
                "ag_live_",
                LIVE_KEY,
                r#","scopes":["invoices:read"],"expires_at":"2027-06-30T00:00:00Z""#
            ),
            key_json("tests", "ag_test_", TEST_KEY, "")
        ))
    }

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead::from_host(
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            None,
        )
    }

    const JUNE_30_2027: u64 = 1_814_313_600;

    #[test]
    fn hash_of_a_known_key() {
        // `printf %s abc | sha256sum`
        assert_eq!(
            key_sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_valid_key_verifies_and_yields_its_id_and_scopes() {
        let keys = standard();
        let key = keys.verify(LIVE_KEY, 1_700_000_000).unwrap();
        assert_eq!(key.id, "billing");
        assert_eq!(key.scopes, vec!["invoices:read".to_string()]);
        assert_eq!(key.expires_at, Some(JUNE_30_2027));
        assert_eq!(key.prefix(), "ag_live_");
        assert_eq!(keys.verify(TEST_KEY, u64::MAX).unwrap().id, "tests");
        assert_eq!(keys.header_name(), "x-api-key");
    }

    #[test]
    fn a_wrong_key_with_a_known_prefix_is_a_hash_mismatch() {
        let keys = standard();
        assert_eq!(
            keys.verify(OTHER_LIVE_KEY, 0).unwrap_err(),
            ApiKeyFailure::Refused("hash mismatch")
        );
        // One character off.
        let mut near = LIVE_KEY.to_string();
        near.pop();
        near.push('i');
        assert_eq!(keys.verify(&near, 0).unwrap_err().reason(), "hash mismatch");
        // The right key with extra bytes: the hash covers the whole key.
        assert_eq!(
            keys.verify(&format!("{LIVE_KEY}x"), 0)
                .unwrap_err()
                .reason(),
            "hash mismatch"
        );
    }

    #[test]
    fn an_unknown_prefix_is_refused_before_hashing() {
        let keys = standard();
        for presented in ["sk_live_abc", "ag_liv_abc", "AG_LIVE_abc", "ag_live_", "x"] {
            assert_eq!(
                keys.verify(presented, 0).unwrap_err().reason(),
                "unknown prefix",
                "{presented}"
            );
        }
    }

    #[test]
    fn expiry_is_exclusive_of_the_expiry_second() {
        let keys = standard();
        assert!(keys.verify(LIVE_KEY, JUNE_30_2027 - 1).is_ok());
        assert_eq!(
            keys.verify(LIVE_KEY, JUNE_30_2027).unwrap_err().reason(),
            "expired"
        );
        assert_eq!(
            keys.verify(LIVE_KEY, JUNE_30_2027 + 1)
                .unwrap_err()
                .reason(),
            "expired"
        );
        // A key without expires_at never expires.
        assert!(keys.verify(TEST_KEY, u64::MAX).is_ok());
    }

    #[test]
    fn keys_sharing_a_prefix_are_each_accepted() {
        // Rotation: the old and the new key of one client live side by side.
        let keys = compile(&format!(
            r#"{{"keys":[{},{}]}}"#,
            key_json("old", "ag_live_", LIVE_KEY, ""),
            key_json("new", "ag_live_", OTHER_LIVE_KEY, r#","scopes":["a"]"#)
        ));
        assert_eq!(keys.verify(LIVE_KEY, 0).unwrap().id, "old");
        assert_eq!(keys.verify(OTHER_LIVE_KEY, 0).unwrap().id, "new");
        assert_eq!(
            keys.verify("ag_live_neither", 0).unwrap_err().reason(),
            "hash mismatch"
        );
    }

    #[test]
    fn overlapping_prefixes_each_reach_their_keys() {
        let short_prefixed = "ag_live_short-prefix-key-0123456789";
        let keys = compile(&format!(
            r#"{{"keys":[{},{}]}}"#,
            key_json("short", "ag_", short_prefixed, ""),
            key_json("long", "ag_live_", LIVE_KEY, "")
        ));
        assert_eq!(keys.verify(short_prefixed, 0).unwrap().id, "short");
        assert_eq!(keys.verify(LIVE_KEY, 0).unwrap().id, "long");
        // A key under the long prefix is not accepted through the short one, and vice versa:
        // only the hash decides.
        assert_eq!(
            keys.verify("ag_other", 0).unwrap_err().reason(),
            "hash mismatch"
        );
    }

    #[test]
    fn ten_thousand_keys_are_looked_up_by_index() {
        let presented: Vec<String> = (0..10_000)
            .map(|i| format!("ag_live_{i:08}-secret-part-{}", i * 7919))
            .collect();
        // Every key shares one prefix but one hundred, which get their own: the common case
        // and the many-prefixes case at once.
        let entries: Vec<String> = presented
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let prefix = if i % 100 == 0 {
                    key[..16].to_string()
                } else {
                    "ag_live_".to_string()
                };
                key_json(&format!("client-{i}"), &prefix, key, "")
            })
            .collect();
        let keys = compile(&format!(r#"{{"keys":[{}]}}"#, entries.join(",")));
        assert_eq!(keys.keys().len(), 10_000);
        for i in [0usize, 1, 99, 100, 5_000, 9_999] {
            assert_eq!(
                keys.verify(&presented[i], 0).unwrap().id,
                format!("client-{i}")
            );
        }
        assert_eq!(
            keys.verify("ag_live_00000000-secret-part-1", 0)
                .unwrap_err()
                .reason(),
            "hash mismatch"
        );
        // The index: one bucket per prefix, and within the big bucket one candidate per tag.
        let big = keys.buckets.get("ag_live_").unwrap();
        assert_eq!(big.by_tag.len(), 9_900);
        assert_eq!(keys.prefix_lengths, vec![16, 8]);
    }

    #[test]
    fn malformed_keys_are_refused_before_hashing() {
        let keys = standard();
        let long = format!("ag_live_{}", "a".repeat(MAX_KEY_LEN));
        let cases = [
            (long.as_str(), "key too long"),
            ("", "empty key"),
            ("ag_live_a b", "key has characters other than visible ASCII"),
            (
                "ag_live_a\tb",
                "key has characters other than visible ASCII",
            ),
            ("ag_live_é", "key has characters other than visible ASCII"),
            (
                "ag_live_\u{0}",
                "key has characters other than visible ASCII",
            ),
        ];
        for (presented, reason) in cases {
            assert_eq!(keys.verify(presented, 0).unwrap_err().reason(), reason);
        }
        // Exactly MAX_KEY_LEN is hashed (and refused only because it is unknown).
        let limit = format!("ag_live_{}", "a".repeat(MAX_KEY_LEN - 8));
        assert_eq!(
            keys.verify(&limit, 0).unwrap_err().reason(),
            "hash mismatch"
        );
    }

    /// The key found in a request with these headers, and whether it came from Authorization.
    fn found(keys: &ApiKeys, headers: &[(&str, &str)]) -> Option<(String, bool)> {
        let request = head(headers);
        keys.find_key(&request)
            .unwrap_or_else(|e| panic!("{headers:?}: {e:?}"))
            .map(|p| (p.key.to_string(), p.from_authorization))
    }

    #[test]
    fn the_key_is_read_from_the_header_or_authorization_apikey() {
        let keys = standard();
        assert_eq!(
            found(&keys, &[("x-api-key", LIVE_KEY)]),
            Some((LIVE_KEY.to_string(), false))
        );
        for scheme in ["ApiKey", "apikey", "APIKEY"] {
            let value = format!("{scheme} {LIVE_KEY}");
            assert_eq!(
                found(&keys, &[("authorization", &value)]),
                Some((LIVE_KEY.to_string(), true))
            );
        }
        // Extra spaces around the key are not part of it.
        let spaced = format!("ApiKey   {LIVE_KEY} ");
        assert_eq!(
            found(&keys, &[("authorization", &spaced)]),
            Some((LIVE_KEY.to_string(), true))
        );

        // Other schemes and other headers are not API keys.
        for headers in [
            vec![("authorization", "Bearer abc")],
            vec![("authorization", "ApiKeyabc")],
            vec![("x-api-token", LIVE_KEY)],
            vec![],
        ] {
            assert_eq!(found(&keys, &headers), None, "{headers:?}");
        }
        // A configured header name is honoured.
        let custom = compile(&format!(
            r#"{{"header":"x-key","keys":[{}]}}"#,
            key_json("a", "ag_live_", LIVE_KEY, "")
        ));
        assert_eq!(custom.header_name(), "x-key");
        assert_eq!(found(&custom, &[("x-api-key", LIVE_KEY)]), None);
        assert_eq!(
            found(&custom, &[("x-key", LIVE_KEY)]),
            Some((LIVE_KEY.to_string(), false))
        );
    }

    #[test]
    fn ambiguous_or_empty_keys_are_refused() {
        let keys = standard();
        let auth = format!("ApiKey {LIVE_KEY}");
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![("x-api-key", LIVE_KEY), ("x-api-key", LIVE_KEY)],
                "key header repeated",
            ),
            (
                vec![("x-api-key", LIVE_KEY), ("authorization", &auth)],
                "key in both the key header and authorization",
            ),
            (
                vec![("authorization", &auth), ("authorization", "Bearer t")],
                "authorization header repeated",
            ),
            (vec![("x-api-key", "")], "empty key"),
            (vec![("authorization", "ApiKey")], "empty key"),
            (vec![("authorization", "ApiKey   ")], "empty key"),
        ];
        for (headers, reason) in cases {
            assert_eq!(
                keys.find_key(&head(&headers)).unwrap_err(),
                ApiKeyFailure::Refused(reason),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn debug_output_never_shows_a_key_or_a_hash() {
        let keys = standard();
        let request = head(&[("x-api-key", LIVE_KEY)]);
        let found = keys.find_key(&request).unwrap().unwrap();
        let hash = key_sha256_hex(LIVE_KEY);
        let parsed = config(&format!(
            r#"{{"keys":[{}]}}"#,
            key_json("a", "ag_live_", LIVE_KEY, "")
        ));
        for text in [
            format!("{found:?}"),
            format!("{keys:?}"),
            format!("{:?}", keys.verify(LIVE_KEY, 0).unwrap()),
            format!("{parsed:?}"),
            format!("{:?}", keys.verify("ag_live_nope", 0).unwrap_err()),
        ] {
            assert!(!text.contains(LIVE_KEY), "{text}");
            assert!(!text.contains(&LIVE_KEY[8..]), "{text}");
            assert!(!text.contains(&hash), "{text}");
            assert!(!text.contains(&hash[..16]), "{text}");
        }
    }

    #[test]
    fn credentials_in_the_query_string_are_detected() {
        let cases: &[(&str, &[&str], bool)] = &[
            ("api_key=abc", &[], true),
            ("API_KEY=", &[], true),
            ("a=1&ApiKey=x", &[], true),
            ("key=1", &[], true),
            ("token", &[], true),
            ("x=1;token=2", &[], true),
            ("access%5Ftoken=x", &[], true),
            ("access%5ftoken=x", &[], true),
            ("%61pi_key=x", &[], true),
            ("api_key[]=x", &[], true),
            ("api_key%5B0%5D=x", &[], true),
            ("+api_key=x", &[], true),
            ("x-api-key=abc", &["x-api-key"], true),
            ("X-Api-Key=abc", &["x-api-key"], true),
            ("x-api-key=abc", &[], false),
            ("keyboard=1", &[], false),
            ("monkey=1", &[], false),
            ("tokens=1", &[], false),
            ("q=api_key", &[], false),
            ("q=token%3D1", &[], false),
            ("api_key_hint=1", &[], false),
            ("", &[], false),
            ("&&", &[], false),
            ("%zzkey=1", &[], false),
            ("[]=1", &[], false),
            // `+` is a space, `%2B` a plus; a `%` without two hex digits stays as it is.
            ("api+key=x", &["api key"], true),
            ("%2Bapi_key=x", &[], false),
            ("%2Bapi_key=x", &["+api_key"], true),
            ("api%2key=x", &["api%2key"], true),
            ("api_key%=x", &[], false),
        ];
        for &(query, extra, want) in cases {
            assert_eq!(
                credentials_in_query(query, extra),
                want,
                "{query:?} {extra:?}"
            );
        }
    }

    #[test]
    fn rfc3339_dates() {
        let ok = [
            ("1970-01-01T00:00:00Z", 0),
            ("2027-06-30T00:00:00Z", JUNE_30_2027),
            ("2027-06-30t00:00:00z", JUNE_30_2027),
            ("2027-06-30T02:00:00+02:00", JUNE_30_2027),
            ("2027-06-29T19:30:00-04:30", JUNE_30_2027),
            ("2027-06-30T00:00:00.999Z", JUNE_30_2027),
            ("2027-06-29T23:59:60Z", JUNE_30_2027),
            ("2000-02-29T12:00:00Z", 951_825_600),
            ("9999-12-31T23:59:59Z", 253_402_300_799),
        ];
        for (text, want) in ok {
            assert_eq!(parse_rfc3339(text), Ok(want), "{text}");
        }
        let bad = [
            "2027-06-30",
            "2027-06-30T00:00:00",
            "2027-06-30 00:00:00Z",
            "2027-6-30T00:00:00Z",
            "2027-06-31T00:00:00Z",
            "2027-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2027-13-01T00:00:00Z",
            "2027-00-01T00:00:00Z",
            "2027-06-30T24:00:00Z",
            "2027-06-30T00:60:00Z",
            "2027-06-30T00:00:61Z",
            "2027-06-30T00:00:00.Z",
            "2027-06-30T00:00:00+2:00",
            "2027-06-30T00:00:00+02:60",
            "2027-06-30T00:00:00+0200",
            "2027-06-30T00:00:00ZZ",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00+00:01",
            "+2027-06-30T00:00:00Z",
            "２０２７-06-30T00:00:00Z",
            "",
        ];
        for text in bad {
            assert!(parse_rfc3339(text).is_err(), "{text}");
        }
    }

    #[test]
    fn config_errors_name_their_json_paths() {
        let good = key_sha256_hex(LIVE_KEY);
        let json = format!(
            r#"{{"header":"X-Api-Key","keys":[
                {{"id":"a","prefix":"ag_live_","sha256":"{good}"}},
                {{"id":"a","prefix":"","sha256":"{upper}"}},
                {{"id":"","prefix":"ag live","sha256":"xyz","scopes":["ok","", "two words"]}},
                {{"id":"d","prefix":"ag_","sha256":"{good}","expires_at":"2027-06-31T00:00:00Z"}},
                {{"id":"e","prefix":"ag_","sha256":"{nonhex}"}}
            ]}}"#,
            upper = good.to_ascii_uppercase(),
            nonhex = "g".repeat(64),
        );
        let found = errors(&json);
        let got: Vec<(&str, &str)> = found
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            vec![
                "api_keys.header",
                "api_keys.keys[1].id",
                "api_keys.keys[1].prefix",
                "api_keys.keys[1].sha256",
                "api_keys.keys[2].id",
                "api_keys.keys[2].prefix",
                "api_keys.keys[2].sha256",
                "api_keys.keys[2].scopes[1]",
                "api_keys.keys[2].scopes[2]",
                "api_keys.keys[3].sha256",
                "api_keys.keys[3].expires_at",
                "api_keys.keys[4].sha256",
            ]
        );
        assert_eq!(got[0].1, "header names are lower case: write \"x-api-key\"");
        assert_eq!(
            got[1].1,
            "duplicate key id \"a\" (first at api_keys.keys[0])"
        );
        assert_eq!(got[3].1, "must be lower-case hex");
        assert!(
            got[9].1.contains("same hash as api_keys.keys[0]"),
            "{}",
            got[9].1
        );
        assert!(got[10].1.starts_with("no such date"), "{}", got[10].1);
        // No error repeats a hash.
        for error in &found {
            assert!(!error.to_string().contains(&good[..16]), "{error}");
        }
    }

    #[test]
    fn header_and_key_list_errors() {
        assert_eq!(paths(r#"{"keys":[]}"#), vec!["api_keys.keys"]);
        let one = key_json("a", "ag_", LIVE_KEY, "");
        for header in [
            "authorization",
            "cookie",
            "x-api-key-id",
            "",
            "x api key",
            ":path",
        ] {
            assert_eq!(
                paths(&format!(r#"{{"header":"{header}","keys":[{one}]}}"#)),
                vec!["api_keys.header"],
                "{header}"
            );
        }
        let long_prefix = "p".repeat(MAX_PREFIX_LEN + 1);
        assert_eq!(
            paths(&format!(
                r#"{{"keys":[{}]}}"#,
                key_json("a", &long_prefix, LIVE_KEY, "")
            )),
            vec!["api_keys.keys[0].prefix"]
        );
        // Unknown fields are refused by the parser itself.
        assert!(serde_json::from_str::<ApiKeysConfig>(r#"{"keys":[],"hdr":"x"}"#).is_err());
        assert!(serde_json::from_str::<ApiKeysConfig>(
            r#"{"keys":[{"id":"a","prefix":"p","sha256":"x","key":"plaintext"}]}"#
        )
        .is_err());
    }
}

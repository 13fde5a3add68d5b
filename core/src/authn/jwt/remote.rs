//! Remote JWKS: fetched once for all Envoy workers and shared through proxy-wasm shared data.
//!
//! Envoy runs one Wasm VM per worker thread (plus one on the main thread). Fetching per VM would
//! multiply the load on the identity provider, let workers disagree about the keys for minutes,
//! and make every worker pay for an outage on its own. Instead every provider with a `remote`
//! source has two shared-data records, under keys derived from the provider's name and source:
//!
//! * `api-guard.jwks.<provider>.<source>.set`: the last good JWKS, as fetched (magic, version,
//!   fetch time, raw bytes). Workers parse it again only when its version changes.
//! * `api-guard.jwks.<provider>.<source>.state`: who fetches (a lease that times out, so a worker
//!   that died mid-fetch does not block the others), when the next fetch is due (the refresh
//!   interval after a success, a backoff of 1 s doubling up to the refresh interval after
//!   failures), whether a refetch was requested for an unknown `kid` and when that last
//!   happened (at most one per `min_refetch_seconds`), and the version last published.
//!
//! Every write is a compare-and-swap: the host's `set` fails with a stale CAS token, and the
//! first write of a record uses [`INSERT_IF_ABSENT`] (the host lets a set on a missing key succeed
//! whatever token is passed, except one it never issued), so two workers can never both believe
//! they hold the lease.
//!
//! Nothing here touches the host: time comes in as `now_ms`, shared data as a [`CounterStore`].

use super::alg::{Alg, KeyFamily};
use super::jwk::{parse_jwk, Jwk};
use crate::config::error::{join, ConfigError};
use crate::support::shared_store::{CounterStore, StoreError, INSERT_IF_ABSENT};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A JWKS body larger than this is refused without being parsed (or, by the adapter, read).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// More keys than this is not a JWKS anyone publishes; a token without `kid` would have to be
/// tried against every one of them.
pub const MAX_REMOTE_KEYS: usize = 64;
/// The first retry after a failed fetch; it doubles with every further failure.
pub const FIRST_RETRY_MS: u64 = 1_000;
/// How long a lease outlives the fetch's own timeout. The host reports every call (answer,
/// failure or timeout) within the timeout; the margin covers a busy worker.
pub const LEASE_MARGIN_MS: u64 = 2_000;
/// Compare-and-swap retries before giving up until the next tick.
const CAS_ATTEMPTS: usize = 8;
/// Longest text kept from a failure detail or a skipped key's reason (they go to the log).
const MAX_DETAIL_CHARS: usize = 200;

pub const DEFAULT_REFRESH_SECONDS: u64 = 600;
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_MIN_REFETCH_SECONDS: u64 = 30;
pub const REFRESH_SECONDS_RANGE: (u64, u64) = (5, 86_400);
pub const TIMEOUT_MS_RANGE: (u64, u64) = (100, 60_000);
pub const MIN_REFETCH_SECONDS_RANGE: (u64, u64) = (1, 3_600);

/// The compiled `jwks.remote` of one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// The Envoy cluster the JWKS is fetched from.
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub refresh_ms: u64,
    pub timeout_ms: u64,
    pub min_refetch_ms: u64,
    pub set_key: String,
    pub state_key: String,
}

const REMOTE_FIELDS: [&str; 6] = [
    "cluster",
    "authority",
    "path",
    "refresh_seconds",
    "timeout_ms",
    "min_refetch_seconds",
];

impl RemoteJwks {
    /// Compiles `jwks.remote` found at JSON path `at`. Every error is reported, each with its
    /// path; a missing field is reported at `at` itself.
    pub fn compile(
        value: &Value,
        provider_name: &str,
        algorithms: &[Alg],
        at: &str,
    ) -> Result<RemoteJwks, Vec<ConfigError>> {
        let Some(object) = value.as_object() else {
            return Err(vec![ConfigError::new(
                at,
                "must be an object: {\"cluster\", \"authority\", \"path\", ...}",
            )]);
        };
        let mut errors = Vec::new();
        for name in object.keys() {
            if !REMOTE_FIELDS.contains(&name.as_str()) {
                errors.push(ConfigError::new(
                    join(at, name),
                    format!(
                        "unknown field; expected one of {}",
                        REMOTE_FIELDS.join(", ")
                    ),
                ));
            }
        }
        let mut text =
            |name: &str, check: fn(&str) -> Result<(), &'static str>| match object.get(name) {
                None => {
                    errors.push(ConfigError::new(at, format!("missing field \"{name}\"")));
                    String::new()
                }
                Some(Value::String(s)) => {
                    if let Err(message) = check(s) {
                        errors.push(ConfigError::new(join(at, name), message));
                    }
                    s.clone()
                }
                Some(_) => {
                    errors.push(ConfigError::new(join(at, name), "must be a string"));
                    String::new()
                }
            };
        let cluster = text("cluster", check_cluster);
        let authority = text("authority", check_authority);
        let path = text("path", check_path);
        let mut number =
            |name: &str, default: u64, (min, max): (u64, u64), unit: &str| match object.get(name) {
                None => default,
                Some(v) => match v.as_u64() {
                    Some(n) if (min..=max).contains(&n) => n,
                    Some(_) => {
                        errors.push(ConfigError::new(
                            join(at, name),
                            format!("must be between {min} and {max} {unit}"),
                        ));
                        default
                    }
                    None => {
                        errors.push(ConfigError::new(
                            join(at, name),
                            "must be a non-negative integer",
                        ));
                        default
                    }
                },
            };
        let refresh_seconds = number(
            "refresh_seconds",
            DEFAULT_REFRESH_SECONDS,
            REFRESH_SECONDS_RANGE,
            "seconds",
        );
        let timeout_ms = number(
            "timeout_ms",
            DEFAULT_TIMEOUT_MS,
            TIMEOUT_MS_RANGE,
            "milliseconds",
        );
        let min_refetch_seconds = number(
            "min_refetch_seconds",
            DEFAULT_MIN_REFETCH_SECONDS,
            MIN_REFETCH_SECONDS_RANGE,
            "seconds",
        );
        if timeout_ms >= refresh_seconds.saturating_mul(1000) {
            errors.push(ConfigError::new(
                join(at, "timeout_ms"),
                "must be shorter than refresh_seconds",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // The source is part of the keys: a changed URL (or allow-list, which decides which keys
        // are usable) never serves the set fetched for the old one.
        let mut source = Sha256::new();
        for part in [cluster.as_str(), authority.as_str(), path.as_str()] {
            source.update(part.as_bytes());
            source.update([0]);
        }
        for alg in algorithms {
            source.update(alg.name().as_bytes());
            source.update([0]);
        }
        let fingerprint = base16ct::lower::encode_string(&source.finalize()[..6]);
        let prefix = format!("api-guard.jwks.{provider_name}.{fingerprint}");
        Ok(RemoteJwks {
            cluster,
            authority,
            path,
            refresh_ms: refresh_seconds * 1000,
            timeout_ms,
            min_refetch_ms: min_refetch_seconds * 1000,
            set_key: format!("{prefix}.set"),
            state_key: format!("{prefix}.state"),
        })
    }

    /// The headers of the fetch: Envoy's `dispatch_http_call` refuses a call without
    /// `:method`, `:path` and `:authority`.
    pub fn request_headers(&self) -> Vec<(&str, &str)> {
        vec![
            (":method", "GET"),
            (":path", self.path.as_str()),
            (":authority", self.authority.as_str()),
            ("accept", "application/json"),
        ]
    }
}

fn check_cluster(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 256 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be the name of an Envoy cluster (1 to 256 visible ASCII characters)");
    }
    Ok(())
}

fn check_authority(s: &str) -> Result<(), &'static str> {
    let valid = !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b));
    if !valid {
        return Err("must be a host name, optionally with a port (e.g. \"auth.example.com\")");
    }
    Ok(())
}

fn check_path(s: &str) -> Result<(), &'static str> {
    if !s.starts_with('/') {
        return Err("must start with \"/\"");
    }
    if s.len() > 2048 || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Err("must be a request path of visible ASCII characters without a fragment");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Validation of a fetched JWKS
// ---------------------------------------------------------------------------------------------

/// Why a fetch did not produce a usable key set. The last good set is kept in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchFailure {
    /// No answer: refused or reset connection, no healthy host, the call could not be sent.
    ConnectionError(String),
    /// No answer within `timeout_ms`.
    Timeout,
    /// An answer other than 200.
    BadStatus(u16),
    /// The body is not JSON, or not an object with a `keys` array.
    NotJwks(String),
    /// A JWKS, but none of its keys can be used; the reasons, key by key.
    NoUsableKeys(Vec<String>),
    /// The body is larger than [`MAX_JWKS_BYTES`].
    BodyTooLarge(usize),
    /// Shared data refused the write: the set could not be published.
    StoreUnavailable,
}

impl FetchFailure {
    /// A stable name for the log.
    pub fn code(&self) -> &'static str {
        match self {
            FetchFailure::ConnectionError(_) => "connection_error",
            FetchFailure::Timeout => "timeout",
            FetchFailure::BadStatus(_) => "bad_status",
            FetchFailure::NotJwks(_) => "not_jwks",
            FetchFailure::NoUsableKeys(_) => "no_usable_keys",
            FetchFailure::BodyTooLarge(_) => "body_too_large",
            FetchFailure::StoreUnavailable => "store_unavailable",
        }
    }

    /// The log line's reason: the code and what happened.
    pub fn describe(&self) -> String {
        let detail = match self {
            FetchFailure::ConnectionError(detail) => detail.clone(),
            FetchFailure::Timeout => "no answer within timeout_ms".to_string(),
            FetchFailure::BadStatus(status) => format!("HTTP status {status}"),
            FetchFailure::NotJwks(detail) => detail.clone(),
            FetchFailure::NoUsableKeys(reasons) => {
                if reasons.is_empty() {
                    "the JWKS has no keys".to_string()
                } else {
                    format!("no usable key: {}", reasons.join("; "))
                }
            }
            FetchFailure::BodyTooLarge(size) => {
                format!("{size} bytes, more than the limit of {MAX_JWKS_BYTES}")
            }
            FetchFailure::StoreUnavailable => "shared data refused the write".to_string(),
        };
        format!("{}: {}", self.code(), detail)
    }
}

fn shorten(text: &str) -> String {
    let mut short: String = text.chars().take(MAX_DETAIL_CHARS).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// The usable keys of a JWKS and the reasons the others were skipped.
#[derive(Debug)]
pub struct ValidatedJwks {
    pub keys: Vec<Jwk>,
    pub skipped: Vec<String>,
}

/// Validates a fetched JWKS exactly like inline keys (types, curves, sizes, `alg` bound to its
/// key type, `use`/`key_ops`, no private members), except that an unusable key is skipped
/// rather than failing the whole set: identity providers publish encryption keys and key types
/// this filter does not verify with next to their signing keys. Also skipped: symmetric (`oct`)
/// keys (a secret fetched over the network is a secret anyone on the path could read, and any
/// holder could mint tokens), keys that fit none of the provider's algorithms, and repeated
/// `kid`s of one key type. No usable key left is a failure.
pub fn validate_jwks(body: &[u8], algorithms: &[Alg]) -> Result<ValidatedJwks, FetchFailure> {
    if body.len() > MAX_JWKS_BYTES {
        return Err(FetchFailure::BodyTooLarge(body.len()));
    }
    let document = crate::body::strict_json::from_slice(body)
        .map_err(|e| FetchFailure::NotJwks(shorten(&format!("not JSON: {e}"))))?;
    let keys = document
        .as_object()
        .and_then(|object| object.get("keys"))
        .and_then(Value::as_array)
        .ok_or_else(|| FetchFailure::NotJwks("not an object with a \"keys\" array".into()))?;
    if keys.len() > MAX_REMOTE_KEYS {
        return Err(FetchFailure::NotJwks(format!(
            "{} keys, more than the limit of {MAX_REMOTE_KEYS}",
            keys.len()
        )));
    }
    let mut usable: Vec<Jwk> = Vec::new();
    let mut skipped = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let at = format!("keys[{i}]");
        let jwk = match parse_jwk(key, &at) {
            Ok(jwk) => jwk,
            Err(error) => {
                skipped.push(shorten(&error.to_string()));
                continue;
            }
        };
        let refusal = if jwk.family == KeyFamily::Hmac {
            Some("a symmetric (oct) key is never taken from a remote JWKS")
        } else if !algorithms.iter().any(|alg| jwk.accepts(*alg)) {
            Some("fits none of the provider's algorithms")
        } else if jwk.kid.is_some()
            && usable
                .iter()
                .any(|other| other.kid == jwk.kid && other.family == jwk.family)
        {
            Some("repeats the kid of an earlier key of the same type")
        } else {
            None
        };
        match refusal {
            Some(reason) => skipped.push(format!("{at}: {reason}")),
            None => usable.push(jwk),
        }
    }
    if usable.is_empty() {
        return Err(FetchFailure::NoUsableKeys(skipped));
    }
    Ok(ValidatedJwks {
        keys: usable,
        skipped,
    })
}

/// What the host reported for a fetch.
#[derive(Debug, Clone, Copy)]
pub enum HttpReply<'a> {
    /// No response at all (the host's call failed: reset, or the call could not be made).
    Failed,
    /// A response. `body` is empty when the adapter did not read a body over the limit;
    /// `body_size` is always the size the host announced.
    Response {
        status: u16,
        body: &'a [u8],
        body_size: usize,
    },
}

/// Turns the host's report into the JWKS body, or the failure. Envoy answers a call it could
/// not complete with a local reply of its own: 503 "upstream connect error ..." or "no healthy
/// upstream" when nothing answered, 504 "upstream request timeout" after `timeout_ms`.
pub fn check_reply(
    reply: HttpReply<'_>,
    elapsed_ms: u64,
    timeout_ms: u64,
) -> Result<&[u8], FetchFailure> {
    let (status, body, body_size) = match reply {
        HttpReply::Failed => {
            return Err(FetchFailure::ConnectionError(
                "no response (connection reset or call refused)".into(),
            ))
        }
        HttpReply::Response {
            status,
            body,
            body_size,
        } => (status, body, body_size),
    };
    match status {
        200 if body_size > MAX_JWKS_BYTES || body.len() > MAX_JWKS_BYTES => {
            Err(FetchFailure::BodyTooLarge(body_size.max(body.len())))
        }
        200 => Ok(body),
        504 if body.starts_with(b"upstream request timeout") || elapsed_ms >= timeout_ms => {
            Err(FetchFailure::Timeout)
        }
        503 if body.starts_with(b"upstream connect error") || body.starts_with(b"no healthy") => {
            let text = String::from_utf8_lossy(body);
            Err(FetchFailure::ConnectionError(shorten(text.trim())))
        }
        other => Err(FetchFailure::BadStatus(other)),
    }
}

// ---------------------------------------------------------------------------------------------
// The published set
// ---------------------------------------------------------------------------------------------

/// Tags the set record, so that a value this code did not write is never parsed as a set.
const SET_MAGIC: &[u8; 8] = b"agjwks01";

/// The set record: the raw JWKS as fetched, with its version and fetch time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedSet {
    /// Starts at 1 and grows by one with every change of content.
    pub version: u64,
    pub fetched_at_ms: u64,
    pub body: Vec<u8>,
}

impl PublishedSet {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.body.len());
        out.extend_from_slice(SET_MAGIC);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.fetched_at_ms.to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(bytes: &[u8]) -> Option<PublishedSet> {
        let rest = bytes.strip_prefix(SET_MAGIC.as_slice())?;
        let version = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let fetched_at_ms = u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?);
        Some(PublishedSet {
            version,
            fetched_at_ms,
            body: rest.get(16..)?.to_vec(),
        })
    }
}

/// The set published for this source, if any.
pub fn read_published(
    store: &dyn CounterStore,
    remote: &RemoteJwks,
) -> Result<Option<PublishedSet>, StoreError> {
    Ok(store
        .get(&remote.set_key)?
        .and_then(|(bytes, _)| PublishedSet::decode(&bytes)))
}

/// A set that was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub version: u64,
    /// False when the body was the same as the set already published (its version stays).
    pub changed: bool,
    pub usable_keys: usize,
    pub skipped: Vec<String>,
}

/// Validates `body` and publishes it for every worker. A body equal to the published one keeps
/// its version (workers re-parse nothing, cached tokens stay valid). On any failure the
/// published set is left as it is.
pub fn publish(
    store: &dyn CounterStore,
    remote: &RemoteJwks,
    algorithms: &[Alg],
    body: &[u8],
    now_ms: u64,
) -> Result<Published, FetchFailure> {
    let validated = validate_jwks(body, algorithms)?;
    let published = |version, changed| Published {
        version,
        changed,
        usable_keys: validated.keys.len(),
        skipped: validated.skipped.clone(),
    };
    for _ in 0..CAS_ATTEMPTS {
        let current = store
            .get(&remote.set_key)
            .map_err(|_| FetchFailure::StoreUnavailable)?;
        let (previous, cas) = match &current {
            Some((bytes, cas)) => (PublishedSet::decode(bytes), Some(*cas)),
            None => (None, Some(INSERT_IF_ABSENT)),
        };
        if let Some(previous) = &previous {
            if previous.body == body {
                return Ok(published(previous.version, false));
            }
        }
        let next = PublishedSet {
            version: previous.as_ref().map_or(0, |p| p.version) + 1,
            fetched_at_ms: now_ms,
            body: body.to_vec(),
        };
        match store.set(&remote.set_key, &next.encode(), cas) {
            Ok(()) => return Ok(published(next.version, true)),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Unavailable) => return Err(FetchFailure::StoreUnavailable),
        }
    }
    Err(FetchFailure::StoreUnavailable)
}

// ---------------------------------------------------------------------------------------------
// The fetch state: lease, schedule, refetch requests
// ---------------------------------------------------------------------------------------------

/// Who is fetching, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// A random number drawn by each VM at start.
    pub owner: u64,
    pub expires_at_ms: u64,
}

/// The state record, shared by every worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchState {
    /// The version of the set last published (0: none yet). A hint for workers: a worker
    /// holding an older version reloads.
    pub published_version: u64,
    /// Held while a fetch is in flight.
    pub lease: Option<Lease>,
    /// When the next fetch is due: the refresh after a success, the backoff after a failure.
    pub next_fetch_at_ms: u64,
    pub consecutive_failures: u32,
    /// A request met an unknown `kid`: fetch now, whatever the schedule says.
    pub refetch_requested: bool,
    /// When a refetch was last requested (at most one per `min_refetch_seconds`).
    pub last_refetch_request_at_ms: Option<u64>,
    /// When the last fetch attempt ended, successful or not.
    pub last_attempt_finished_at_ms: Option<u64>,
    pub last_success_at_ms: Option<u64>,
}

impl FetchState {
    fn lease_active(&self, now_ms: u64) -> bool {
        self.lease.is_some_and(|lease| lease.expires_at_ms > now_ms)
    }

    fn due(&self, now_ms: u64) -> bool {
        self.refetch_requested || now_ms >= self.next_fetch_at_ms
    }
}

/// The state record as read, with what a compare-and-swap needs.
#[derive(Debug, Clone)]
pub struct StoredState {
    /// `None` when no worker has written the record yet.
    pub state: Option<FetchState>,
    cas: u32,
}

impl StoredState {
    /// The state, or the initial one (nothing fetched, a fetch due now).
    pub fn current(&self) -> FetchState {
        self.state.clone().unwrap_or_default()
    }
}

/// Reads the state record. A record that does not decode (never written by this code) reads
/// as the initial state and is overwritten by the next write.
pub fn read_state(
    store: &dyn CounterStore,
    remote: &RemoteJwks,
) -> Result<StoredState, StoreError> {
    Ok(match store.get(&remote.state_key)? {
        Some((bytes, cas)) => StoredState {
            state: Some(serde_json::from_slice(&bytes).unwrap_or_default()),
            cas,
        },
        None => StoredState {
            state: None,
            cas: INSERT_IF_ABSENT,
        },
    })
}

fn write_state(
    store: &dyn CounterStore,
    remote: &RemoteJwks,
    state: &FetchState,
    read: &StoredState,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(state).map_err(|_| StoreError::Unavailable)?;
    store.set(&remote.state_key, &bytes, Some(read.cas))
}

/// The delay before the next attempt after `failures` consecutive failures: 1 s, 2 s, 4 s, ...
/// up to the refresh interval.
pub fn retry_delay_ms(failures: u32, refresh_ms: u64) -> u64 {
    let doublings = failures.saturating_sub(1).min(40);
    FIRST_RETRY_MS
        .saturating_mul(1u64 << doublings)
        .min(refresh_ms)
}

/// The outcome of [`try_claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This VM holds the lease: it must fetch now, then call [`complete_fetch`].
    Claimed,
    /// Nothing to do before this time.
    NotDue { next_fetch_at_ms: u64 },
    /// Another worker is fetching.
    Leased { until_ms: u64 },
    /// Other workers kept changing the record; try again on the next tick.
    LostRace,
}

/// Claims the fetch lease when a fetch is due and nobody holds an unexpired lease.
pub fn try_claim(
    store: &dyn CounterStore,
    remote: &RemoteJwks,
    owner: u64,
    now_ms: u64,
) -> Result<Claim, StoreError> {
    for _ in 0..CAS_ATTEMPTS {
        let read = read_state(store, remote)?;
        let mut state = read.current();
        if let Some(lease) = state.lease.filter(|_| state.lease_active(now_ms)) {
            return Ok(Claim::Leased {
                until_ms: lease.expires_at_ms,
            });
        }
        if !state.due(now_ms) {
            return Ok(Claim::NotDue {
                next_fetch_at_ms: state.next_fetch_at_ms,
            });
        }
        state.lease = Some(Lease {
            owner,
            expires_at_ms: now_ms + remote.timeout_ms + LEASE_MARGIN_MS,
        });
        match write_state(store, remote, &state, &read) {
            Ok(()) => return Ok(Claim::Claimed),
            Err(StoreError::CasMismatch) => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(Claim::LostRace)
}

/// The outcome of [`request_refetch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefetchRequest {
    Requested,
    /// A refetch is already requested (or no set was ever fetched: the first fetch is due).
    AlreadyPending,
    /// The last refetch was requested less than `min_refetch_seconds` ago.
    TooSoon {
        until_ms: u64,
    },
    LostRace,
}

/// Asks for a refetch because a request met a `kid` that no key has. At most one request per
/// `min_refetch_seconds` is granted, across all workers: a flood of random `kid`s costs the
/// identity provider no more than that.
pub fn request_refetch(
    store: &dyn CounterStore,
    remote: &RemoteJwks,
    now_ms: u64,
) -> Result<RefetchRequest, StoreError> {
    for _ in 0..CAS_ATTEMPTS {
        let read = read_state(store, remote)?;
        let Some(mut state) = read.state.clone() else {
            return Ok(RefetchRequest::AlreadyPending);
        };
        if state.refetch_requested {
            return Ok(RefetchRequest::AlreadyPending);
        }
        if let Some(last) = state.last_refetch_request_at_ms {
            let until_ms = last.saturating_add(remote.min_refetch_ms);
            if now_ms < until_ms {
                return Ok(RefetchRequest::TooSoon { until_ms });
            }
        }
        state.refetch_requested = true;
        state.last_refetch_request_at_ms = Some(now_ms);
        match write_state(store, remote, &state, &read) {
            Ok(()) => return Ok(RefetchRequest::Requested),
            Err(StoreError::CasMismatch) => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(RefetchRequest::LostRace)
}

/// Whether a request whose token names a `kid` that no local key has may wait for keys, rather
/// than be refused at once. It may when the keys can still change soon: a newer set is already
/// published (this worker reloads on its next tick), a refetch is requested or in flight, or
/// the minimum interval since the last refetch request has passed (the wait will request one).
pub fn unknown_kid_may_wait(
    state: Option<&FetchState>,
    local_version: u64,
    min_refetch_ms: u64,
    now_ms: u64,
) -> bool {
    let Some(state) = state else {
        return true;
    };
    state.published_version > local_version
        || state.refetch_requested
        || state.lease_active(now_ms)
        || state
            .last_refetch_request_at_ms
            .is_none_or(|last| now_ms >= last.saturating_add(min_refetch_ms))
}

/// The outcome of recording a finished fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Recorded {
        next_fetch_at_ms: u64,
        consecutive_failures: u32,
    },
    /// This VM's lease expired and another took it: its result was dropped.
    LeaseLost,
}

/// Releases the lease and schedules the next fetch: the refresh interval after a success, the
/// backoff after a failure. A pending refetch request is answered by this fetch.
fn finish(
    store: &dyn CounterStore,
    remote: &RemoteJwks,
    owner: u64,
    now_ms: u64,
    published_version: Option<u64>,
) -> Result<Finish, StoreError> {
    for _ in 0..CAS_ATTEMPTS {
        let read = read_state(store, remote)?;
        let mut state = read.current();
        if state.lease.map(|lease| lease.owner) != Some(owner) {
            return Ok(Finish::LeaseLost);
        }
        state.lease = None;
        state.refetch_requested = false;
        state.last_attempt_finished_at_ms = Some(now_ms);
        match published_version {
            Some(version) => {
                state.consecutive_failures = 0;
                state.next_fetch_at_ms = now_ms + remote.refresh_ms;
                state.published_version = state.published_version.max(version);
                state.last_success_at_ms = Some(now_ms);
            }
            None => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                state.next_fetch_at_ms =
                    now_ms + retry_delay_ms(state.consecutive_failures, remote.refresh_ms);
            }
        }
        match write_state(store, remote, &state, &read) {
            Ok(()) => {
                return Ok(Finish::Recorded {
                    next_fetch_at_ms: state.next_fetch_at_ms,
                    consecutive_failures: state.consecutive_failures,
                })
            }
            Err(StoreError::CasMismatch) => continue,
            Err(error) => return Err(error),
        }
    }
    Err(StoreError::CasMismatch)
}

/// Everything that came of one fetch, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReport {
    pub outcome: Result<Published, FetchFailure>,
    pub finish: Result<Finish, StoreError>,
    pub now_ms: u64,
}

impl FetchReport {
    /// The security event to log: a JSON line naming the provider and, for a failure, the
    /// reason and the retry. Never key material: counts and reasons only.
    pub fn event(&self, provider: &str, serving_version: u64) -> Option<JwksEvent<'_>> {
        let (next_fetch_at_ms, consecutive_failures) = match self.finish {
            Ok(Finish::Recorded {
                next_fetch_at_ms,
                consecutive_failures,
            }) => (Some(next_fetch_at_ms), consecutive_failures),
            Ok(Finish::LeaseLost) => return None,
            Err(_) => (None, 0),
        };
        let next_fetch_in_ms = next_fetch_at_ms.map(|at| at.saturating_sub(self.now_ms));
        Some(match &self.outcome {
            Ok(published) => JwksEvent {
                kind: "security_event",
                event: if published.changed {
                    "jwks_updated"
                } else {
                    "jwks_refreshed"
                },
                provider: provider.to_string(),
                reason: None,
                version: published.version,
                keys: Some(published.usable_keys),
                skipped: published.skipped.as_slice(),
                consecutive_failures,
                next_fetch_in_ms,
            },
            Err(failure) => JwksEvent {
                kind: "security_event",
                event: "jwks_fetch_failed",
                provider: provider.to_string(),
                reason: Some(failure.describe()),
                version: serving_version,
                keys: None,
                skipped: &[],
                consecutive_failures,
                next_fetch_in_ms,
            },
        })
    }
}

/// One JSON line in Envoy's log about a provider's key set.
#[derive(Debug, Serialize)]
pub struct JwksEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `jwks_updated` (new content), `jwks_refreshed` (same content), `jwks_fetch_failed`.
    pub event: &'static str,
    pub provider: String,
    pub reason: Option<String>,
    /// The version now published (for a failure: the version still served, 0 if none).
    pub version: u64,
    /// Usable keys in the published set.
    pub keys: Option<usize>,
    /// Keys of the fetched JWKS that were not taken, with the reason.
    pub skipped: &'a [String],
    pub consecutive_failures: u32,
    /// When the next scheduled fetch happens.
    pub next_fetch_in_ms: Option<u64>,
}

impl JwksEvent<'_> {
    pub fn is_failure(&self) -> bool {
        self.event == "jwks_fetch_failed"
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| String::from("{\"type\":\"security_event\"}"))
    }
}

/// Handles the end of a fetch made under this VM's lease: checks the answer, publishes a good
/// set, and records the outcome (releasing the lease, scheduling the next fetch). A VM whose
/// lease was taken over (it expired) drops its result: the new holder's fetch is newer.
pub fn complete_fetch(
    store: &dyn CounterStore,
    remote: &RemoteJwks,
    algorithms: &[Alg],
    owner: u64,
    now_ms: u64,
    reply: HttpReply<'_>,
    elapsed_ms: u64,
) -> FetchReport {
    let report = |outcome, finish| FetchReport {
        outcome,
        finish,
        now_ms,
    };
    match read_state(store, remote) {
        Ok(read) if read.current().lease.map(|lease| lease.owner) != Some(owner) => {
            return report(
                Err(FetchFailure::ConnectionError("lease lost".into())),
                Ok(Finish::LeaseLost),
            );
        }
        Ok(_) => {}
        Err(error) => return report(Err(FetchFailure::StoreUnavailable), Err(error)),
    }
    let outcome = check_reply(reply, elapsed_ms, remote.timeout_ms)
        .and_then(|body| publish(store, remote, algorithms, body, now_ms));
    let finish = finish(
        store,
        remote,
        owner,
        now_ms,
        outcome.as_ref().ok().map(|published| published.version),
    );
    report(outcome, finish)
}

/// Records a fetch that could not even be sent (the host refused `dispatch_http_call`).
pub fn fail_unsent_fetch(
    store: &dyn CounterStore,
    remote: &RemoteJwks,
    owner: u64,
    now_ms: u64,
    detail: String,
) -> FetchReport {
    FetchReport {
        outcome: Err(FetchFailure::ConnectionError(shorten(&detail))),
        finish: finish(store, remote, owner, now_ms, None),
        now_ms,
    }
}

// ---------------------------------------------------------------------------------------------
// One VM's view
// ---------------------------------------------------------------------------------------------

/// A published set as one VM parsed it.
#[derive(Debug, Clone)]
pub struct LoadedSet {
    pub version: u64,
    /// Shared, not copied, when a worker takes a snapshot (the dynamic module's workers read
    /// the sets one thread refreshes).
    pub keys: Arc<Vec<Jwk>>,
}

/// The remote key sets one VM currently verifies with, by provider index. Empty (every
/// provider without a set) is the right value for a policy without remote providers.
#[derive(Debug, Default, Clone)]
pub struct RemoteKeys {
    sets: Vec<Option<LoadedSet>>,
}

impl RemoteKeys {
    /// The version of the provider's set (0: none yet). Verified tokens are cached with it, so a
    /// cached token never outlives a set change.
    pub fn version(&self, provider: usize) -> u64 {
        self.set(provider).map_or(0, |set| set.version)
    }

    pub fn has_set(&self, provider: usize) -> bool {
        self.set(provider).is_some()
    }

    pub fn keys(&self, provider: usize) -> &[Jwk] {
        self.set(provider).map_or(&[], |set| set.keys.as_slice())
    }

    pub fn set(&self, provider: usize) -> Option<&LoadedSet> {
        self.sets.get(provider).and_then(Option::as_ref)
    }

    pub fn install(&mut self, provider: usize, set: LoadedSet) {
        if self.sets.len() <= provider {
            self.sets.resize_with(provider + 1, || None);
        }
        if let Some(slot) = self.sets.get_mut(provider) {
            *slot = Some(set);
        }
    }
}

/// Loads the published set into `keys` when its version differs from the one held. Returns the
/// new version when it changed. A published body is parsed by the same validation that
/// accepted it, so it cannot fail unless the record was not written by this code; then the
/// held set stays.
pub fn reload(
    store: &dyn CounterStore,
    remote: &RemoteJwks,
    algorithms: &[Alg],
    keys: &mut RemoteKeys,
    provider: usize,
) -> Result<Option<u64>, StoreError> {
    let Some(published) = read_published(store, remote)? else {
        return Ok(None);
    };
    if keys.has_set(provider) && keys.version(provider) == published.version {
        return Ok(None);
    }
    match validate_jwks(&published.body, algorithms) {
        Ok(validated) => {
            keys.install(
                provider,
                LoadedSet {
                    version: published.version,
                    keys: Arc::new(validated.keys),
                },
            );
            Ok(Some(published.version))
        }
        Err(_) => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests waiting for keys
// ---------------------------------------------------------------------------------------------

/// A request held until its provider's keys can decide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTicket {
    pub provider: usize,
    pub registered_at_ms: u64,
    /// `timeout_ms` after registration: decided then, whatever happened.
    pub deadline_ms: u64,
    /// The provider's set version when the request started waiting.
    pub version_seen: u64,
    /// Whether the provider had a set then (false: waiting for the first fetch).
    pub had_set: bool,
}

impl WaitTicket {
    /// Whether to decide the request again now: the set changed, a fetch attempt ended since
    /// the request started waiting (for a request that waits for a refetch: the refetch is done,
    /// successful or not), or the deadline passed. A request waiting for the first set waits
    /// through failed attempts (retries may succeed) until its deadline.
    pub fn settled(&self, local_version: u64, state: Option<&FetchState>, now_ms: u64) -> bool {
        let attempt_ended = state
            .and_then(|s| s.last_attempt_finished_at_ms)
            .is_some_and(|at| at >= self.registered_at_ms);
        now_ms >= self.deadline_ms
            || local_version != self.version_seen
            || (self.had_set && attempt_ended)
    }
}

#[cfg(test)]
mod tests;

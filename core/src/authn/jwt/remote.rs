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
use std::rc::Rc;

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
        let fingerprint: String = source.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
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
    pub keys: Rc<Vec<Jwk>>,
}

/// The remote key sets one VM currently verifies with, by provider index. Empty (every
/// provider without a set) is the right value for a policy without remote providers.
#[derive(Debug, Default)]
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
                    keys: Rc::new(validated.keys),
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
mod tests {
    use super::*;
    use crate::limits::rate_limit::MemoryStore;
    use crate::support::mint;
    use serde_json::json;

    const VM_A: u64 = 0xA;
    const VM_B: u64 = 0xB;
    const T0: u64 = 1_700_000_000_000;

    fn test_key(name: &str) -> Value {
        let path = format!("{}/../tests/keys/{name}.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn public(name: &str) -> Value {
        mint::public_jwk(&test_key(name))
    }

    fn jwks(keys: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).unwrap()
    }

    fn algs() -> Vec<Alg> {
        vec![Alg::ES256, Alg::RS256, Alg::EdDSA]
    }

    fn remote() -> RemoteJwks {
        RemoteJwks::compile(
            &json!({"cluster": "idp", "authority": "idp.test", "path": "/jwks",
                    "refresh_seconds": 60, "timeout_ms": 500, "min_refetch_seconds": 5}),
            "main",
            &algs(),
            "jwt.providers[0].jwks.remote",
        )
        .unwrap()
    }

    fn ok_reply(body: &[u8]) -> HttpReply<'_> {
        HttpReply::Response {
            status: 200,
            body,
            body_size: body.len(),
        }
    }

    fn state(store: &MemoryStore, remote: &RemoteJwks) -> FetchState {
        read_state(store, remote).unwrap().state.unwrap()
    }

    /// One full successful fetch by `owner` at `now`.
    fn fetch(store: &MemoryStore, remote: &RemoteJwks, owner: u64, now: u64, body: &[u8]) {
        assert_eq!(
            try_claim(store, remote, owner, now).unwrap(),
            Claim::Claimed
        );
        let report = complete_fetch(store, remote, &algs(), owner, now, ok_reply(body), 10);
        assert!(report.outcome.is_ok(), "{report:?}");
    }

    // --- configuration ---

    #[test]
    fn configuration_defaults_and_keys() {
        let remote = RemoteJwks::compile(
            &json!({"cluster": "idp", "authority": "auth.example.com", "path": "/.well-known/jwks.json"}),
            "main",
            &algs(),
            "at",
        )
        .unwrap();
        assert_eq!(remote.refresh_ms, 600_000);
        assert_eq!(remote.timeout_ms, 5_000);
        assert_eq!(remote.min_refetch_ms, 30_000);
        assert!(remote.set_key.starts_with("api-guard.jwks.main."));
        assert!(remote.set_key.ends_with(".set"));
        assert_eq!(
            remote.state_key,
            remote.set_key.replace(".set", ".state"),
            "one prefix for both records"
        );
        let headers = remote.request_headers();
        assert!(headers.contains(&(":method", "GET")));
        assert!(headers.contains(&(":path", "/.well-known/jwks.json")));
        assert!(headers.contains(&(":authority", "auth.example.com")));
        // Another path is another source: it never reads this one's set.
        let other = RemoteJwks::compile(
            &json!({"cluster": "idp", "authority": "auth.example.com", "path": "/other"}),
            "main",
            &algs(),
            "at",
        )
        .unwrap();
        assert_ne!(other.set_key, remote.set_key);
    }

    #[test]
    fn configuration_errors_name_their_path() {
        let at = "jwt.providers[0].jwks.remote";
        let errors = |value: Value| {
            RemoteJwks::compile(&value, "main", &algs(), at)
                .unwrap_err()
                .into_iter()
                .map(|e| e.path)
                .collect::<Vec<_>>()
        };
        assert_eq!(errors(json!("https://idp/jwks")), vec![at.to_string()]);
        let missing = errors(json!({"uri": "https://idp/jwks"}));
        assert!(missing.contains(&format!("{at}.uri")), "{missing:?}");
        assert_eq!(
            missing.iter().filter(|p| *p == at).count(),
            3,
            "cluster, authority and path are each reported missing: {missing:?}"
        );
        let base = json!({"cluster": "idp", "authority": "idp.test", "path": "/jwks"});
        let with = |field: &str, value: Value| {
            let mut config = base.clone();
            config[field] = value;
            errors(config)
        };
        for (field, value) in [
            ("cluster", json!("")),
            ("authority", json!("")),
            ("authority", json!("idp.test/jwks")),
            ("path", json!("jwks")),
            ("path", json!("/a b")),
            ("path", json!(7)),
            ("refresh_seconds", json!(4)),
            ("refresh_seconds", json!(86_401)),
            ("timeout_ms", json!(99)),
            ("timeout_ms", json!(60_001)),
            ("timeout_ms", json!("5s")),
            ("min_refetch_seconds", json!(0)),
            ("min_refetch_seconds", json!(3_601)),
            ("min_refetch_seconds", json!(-1)),
        ] {
            assert_eq!(
                with(field, value.clone()),
                vec![format!("{at}.{field}")],
                "{field} = {value}"
            );
        }
        let mut slow = base.clone();
        slow["refresh_seconds"] = json!(5);
        slow["timeout_ms"] = json!(5_000);
        assert_eq!(errors(slow), vec![format!("{at}.timeout_ms")]);
    }

    // --- validation of a fetched body ---

    #[test]
    fn a_good_jwks_is_validated_like_inline_keys() {
        let body = jwks(vec![public("p256"), public("rsa2048"), public("ed25519")]);
        let validated = validate_jwks(&body, &algs()).unwrap();
        assert_eq!(validated.keys.len(), 3);
        assert!(validated.skipped.is_empty());
    }

    #[test]
    fn unusable_keys_are_skipped_with_a_reason() {
        let mut encryption = public("rsa2048-other");
        encryption["use"] = json!("enc");
        let mut weak = public("rsa2048-other");
        weak["kid"] = json!("weak");
        // A 1024-bit modulus: the top half of the real one.
        let n = crate::authn::jwt::b64url::decode(weak["n"].as_str().unwrap()).unwrap();
        weak["n"] = json!(crate::authn::jwt::b64url::encode(&n[..128]));
        let mut leaked = test_key("p256-other");
        leaked["kid"] = json!("leaked");
        let mut twin = public("p256-other");
        twin["kid"] = json!("test-p256");
        let body = jwks(vec![
            public("p256"),
            encryption,
            json!({"kty": "DSA", "kid": "dsa"}),
            weak,
            public("hs512"),
            leaked,
            twin,
            public("p384"),
        ]);
        let validated = validate_jwks(&body, &algs()).unwrap();
        assert_eq!(validated.keys.len(), 1, "only the P-256 key is usable");
        assert_eq!(validated.keys[0].kid.as_deref(), Some("test-p256"));
        let skipped = validated.skipped.join("\n");
        for expected in [
            "keys[1].use",
            "keys[2].kty",
            "keys[3].n",
            "keys[4]: a symmetric",
            "keys[5].d",
            "keys[6]: repeats the kid",
            "keys[7]: fits none",
        ] {
            assert!(skipped.contains(expected), "{expected} in {skipped}");
        }
        assert!(
            !skipped.contains(test_key("p256-other")["d"].as_str().unwrap()),
            "no key material in the reasons"
        );
    }

    #[test]
    fn bodies_that_are_not_usable_jwks_fail_with_their_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"<html>hello</html>".to_vec(), "not_jwks"),
            (b"{\"keys\": {}}".to_vec(), "not_jwks"),
            (b"[]".to_vec(), "not_jwks"),
            (b"{\"keys\": [], \"keys\": []}".to_vec(), "not_jwks"),
            (jwks(vec![]), "no_usable_keys"),
            (jwks(vec![public("hs512")]), "no_usable_keys"),
            (
                jwks((0..=MAX_REMOTE_KEYS).map(|_| public("p256")).collect()),
                "not_jwks",
            ),
            (vec![b' '; MAX_JWKS_BYTES + 1], "body_too_large"),
        ];
        for (body, code) in cases {
            let failure = validate_jwks(&body, &algs()).unwrap_err();
            assert_eq!(failure.code(), code, "{}", failure.describe());
        }
    }

    #[test]
    fn replies_are_classified() {
        let timeout = 500;
        let reply = |status, body: &'static [u8]| HttpReply::Response {
            status,
            body,
            body_size: body.len(),
        };
        let code = |reply, elapsed| check_reply(reply, elapsed, timeout).unwrap_err().code();
        assert_eq!(code(HttpReply::Failed, 3), "connection_error");
        assert_eq!(code(reply(500, b"oops"), 3), "bad_status");
        assert_eq!(code(reply(404, b""), 3), "bad_status");
        assert_eq!(
            code(reply(504, b"upstream request timeout"), 501),
            "timeout"
        );
        assert_eq!(
            code(
                reply(
                    503,
                    b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
                ),
                3
            ),
            "connection_error"
        );
        assert_eq!(
            code(reply(503, b"no healthy upstream"), 3),
            "connection_error"
        );
        assert_eq!(code(reply(503, b"maintenance"), 3), "bad_status");
        let big = HttpReply::Response {
            status: 200,
            body: b"",
            body_size: MAX_JWKS_BYTES + 1,
        };
        assert_eq!(code(big, 3), "body_too_large");
        assert_eq!(check_reply(reply(200, b"{}"), 3, timeout), Ok(&b"{}"[..]));
    }

    // --- the lease ---

    #[test]
    fn exactly_one_worker_claims_and_the_others_see_the_lease() {
        let store = MemoryStore::new();
        let remote = remote();
        assert_eq!(
            try_claim(&store, &remote, VM_A, T0).unwrap(),
            Claim::Claimed
        );
        assert_eq!(
            try_claim(&store, &remote, VM_B, T0 + 1).unwrap(),
            Claim::Leased {
                until_ms: T0 + remote.timeout_ms + LEASE_MARGIN_MS
            }
        );
        // B cannot complete a fetch it never claimed.
        let report = complete_fetch(
            &store,
            &remote,
            &algs(),
            VM_B,
            T0 + 2,
            ok_reply(&jwks(vec![public("p256")])),
            2,
        );
        assert_eq!(report.finish, Ok(Finish::LeaseLost));
        assert_eq!(read_published(&store, &remote).unwrap(), None);
    }

    #[test]
    fn the_first_insert_race_is_lost_cleanly() {
        let store = MemoryStore::new();
        let remote = remote();
        // Worker B's claim lands between A's read (nothing there) and A's insert.
        let remote_for_b = remote.clone();
        store.set_before_set_hook(move |store, key| {
            if key == remote_for_b.state_key {
                store.clear_before_set_hook();
                assert_eq!(
                    try_claim(store, &remote_for_b, VM_B, T0).unwrap(),
                    Claim::Claimed
                );
            }
        });
        assert_eq!(
            try_claim(&store, &remote, VM_A, T0).unwrap(),
            Claim::Leased {
                until_ms: T0 + remote.timeout_ms + LEASE_MARGIN_MS
            },
            "A's insert-if-absent fails, and A then sees B's lease"
        );
        assert_eq!(state(&store, &remote).lease.map(|l| l.owner), Some(VM_B));
        assert!(store.cas_mismatches() >= 1);
    }

    #[test]
    fn injected_conflicts_are_retried_and_a_persistent_one_gives_up() {
        let store = MemoryStore::new();
        let remote = remote();
        store.inject_conflicts(2);
        assert_eq!(
            try_claim(&store, &remote, VM_A, T0).unwrap(),
            Claim::Claimed
        );
        let store = MemoryStore::new();
        store.inject_conflicts(CAS_ATTEMPTS as u32);
        assert_eq!(
            try_claim(&store, &remote, VM_A, T0).unwrap(),
            Claim::LostRace
        );
        store.inject_failures(1);
        assert_eq!(
            try_claim(&store, &remote, VM_A, T0),
            Err(StoreError::Unavailable)
        );
    }

    #[test]
    fn a_dead_workers_lease_times_out() {
        let store = MemoryStore::new();
        let remote = remote();
        assert_eq!(
            try_claim(&store, &remote, VM_A, T0).unwrap(),
            Claim::Claimed
        );
        let expiry = T0 + remote.timeout_ms + LEASE_MARGIN_MS;
        assert!(matches!(
            try_claim(&store, &remote, VM_B, expiry - 1).unwrap(),
            Claim::Leased { .. }
        ));
        assert_eq!(
            try_claim(&store, &remote, VM_B, expiry).unwrap(),
            Claim::Claimed
        );
        // A's answer arrives late: dropped, and B's lease untouched.
        let report = complete_fetch(
            &store,
            &remote,
            &algs(),
            VM_A,
            expiry + 1,
            ok_reply(&jwks(vec![public("p256")])),
            expiry + 1 - T0,
        );
        assert_eq!(report.finish, Ok(Finish::LeaseLost));
        assert!(report.event("main", 0).is_none());
        assert_eq!(read_published(&store, &remote).unwrap(), None);
        assert_eq!(state(&store, &remote).lease.map(|l| l.owner), Some(VM_B));
    }

    #[test]
    fn refresh_is_scheduled_after_a_success() {
        let store = MemoryStore::new();
        let remote = remote();
        fetch(&store, &remote, VM_A, T0, &jwks(vec![public("p256")]));
        let after = state(&store, &remote);
        assert_eq!(after.lease, None);
        assert_eq!(after.published_version, 1);
        assert_eq!(after.next_fetch_at_ms, T0 + remote.refresh_ms);
        assert_eq!(
            try_claim(&store, &remote, VM_B, T0 + remote.refresh_ms - 1).unwrap(),
            Claim::NotDue {
                next_fetch_at_ms: T0 + remote.refresh_ms
            }
        );
        assert_eq!(
            try_claim(&store, &remote, VM_B, T0 + remote.refresh_ms).unwrap(),
            Claim::Claimed
        );
    }

    #[test]
    fn failures_back_off_from_one_second_doubling_to_the_refresh_interval() {
        assert_eq!(
            (1..=9)
                .map(|failures| retry_delay_ms(failures, 60_000))
                .collect::<Vec<_>>(),
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        assert_eq!(retry_delay_ms(u32::MAX, 600_000), 600_000);

        let store = MemoryStore::new();
        let remote = remote();
        let mut now = T0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            assert_eq!(
                try_claim(&store, &remote, VM_A, now).unwrap(),
                Claim::Claimed
            );
            let report = complete_fetch(
                &store,
                &remote,
                &algs(),
                VM_A,
                now,
                HttpReply::Response {
                    status: 500,
                    body: b"",
                    body_size: 0,
                },
                5,
            );
            let Ok(Finish::Recorded {
                next_fetch_at_ms, ..
            }) = report.finish
            else {
                panic!("{report:?}")
            };
            delays.push(next_fetch_at_ms - now);
            assert!(matches!(
                try_claim(&store, &remote, VM_B, next_fetch_at_ms - 1).unwrap(),
                Claim::NotDue { .. }
            ));
            now = next_fetch_at_ms;
        }
        assert_eq!(
            delays,
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
        );
        assert_eq!(state(&store, &remote).consecutive_failures, 8);
        // A success resets the count.
        fetch(&store, &remote, VM_B, now, &jwks(vec![public("p256")]));
        assert_eq!(state(&store, &remote).consecutive_failures, 0);
    }

    // --- refetch on unknown kid ---

    #[test]
    fn refetches_are_granted_at_most_once_per_minimum_interval() {
        let store = MemoryStore::new();
        let remote = remote();
        // Before anything was fetched, the first fetch is what a refetch would be.
        assert_eq!(
            request_refetch(&store, &remote, T0).unwrap(),
            RefetchRequest::AlreadyPending
        );
        fetch(&store, &remote, VM_A, T0, &jwks(vec![public("p256")]));
        let t1 = T0 + 1_000;
        assert_eq!(
            request_refetch(&store, &remote, t1).unwrap(),
            RefetchRequest::Requested
        );
        assert_eq!(
            request_refetch(&store, &remote, t1 + 1).unwrap(),
            RefetchRequest::AlreadyPending
        );
        // Requested refetches are due at once, whatever the refresh schedule.
        fetch(&store, &remote, VM_B, t1 + 10, &jwks(vec![public("p256")]));
        assert_eq!(
            request_refetch(&store, &remote, t1 + 20).unwrap(),
            RefetchRequest::TooSoon {
                until_ms: t1 + remote.min_refetch_ms
            }
        );
        assert!(matches!(
            try_claim(&store, &remote, VM_A, t1 + 30).unwrap(),
            Claim::NotDue { .. }
        ));
        assert_eq!(
            request_refetch(&store, &remote, t1 + remote.min_refetch_ms).unwrap(),
            RefetchRequest::Requested
        );
    }

    #[test]
    fn a_flood_of_unknown_kids_is_held_to_the_minimum_interval() {
        // Every 10 ms for 60 s a request with a random kid arrives somewhere; each worker that
        // lets one wait requests a refetch, and whoever is due fetches.
        let store = MemoryStore::new();
        let remote = remote();
        fetch(&store, &remote, VM_A, T0, &jwks(vec![public("p256")]));
        let mut fetches = 0;
        let mut waited = 0;
        let mut refused = 0;
        let end = T0 + 60_000;
        let mut now = T0 + 1;
        while now < end {
            let read = read_state(&store, &remote).unwrap();
            if unknown_kid_may_wait(read.state.as_ref(), 1, remote.min_refetch_ms, now) {
                waited += 1;
                let _ = request_refetch(&store, &remote, now).unwrap();
            } else {
                refused += 1;
            }
            if try_claim(&store, &remote, VM_B, now).unwrap() == Claim::Claimed {
                fetches += 1;
                let report = complete_fetch(
                    &store,
                    &remote,
                    &algs(),
                    VM_B,
                    now + 5,
                    ok_reply(&jwks(vec![public("p256")])),
                    5,
                );
                assert!(report.outcome.is_ok());
            }
            now += 10;
        }
        // 60 s at one refetch per 5 s: 12 refetches (the refresh of 60 s is not reached).
        assert_eq!(fetches, 12, "fetches");
        assert!(
            refused > 5_000,
            "most requests are refused at once: {refused}"
        );
        assert!(
            waited <= 2 * fetches,
            "only requests that meet a refetch wait: {waited}"
        );
    }

    #[test]
    fn unknown_kids_may_wait_only_when_keys_can_still_change() {
        let min = 5_000;
        assert!(
            unknown_kid_may_wait(None, 0, min, T0),
            "nothing fetched yet"
        );
        let fresh = FetchState {
            published_version: 3,
            last_refetch_request_at_ms: Some(T0),
            ..FetchState::default()
        };
        assert!(!unknown_kid_may_wait(Some(&fresh), 3, min, T0 + 1));
        assert!(
            unknown_kid_may_wait(Some(&fresh), 2, min, T0 + 1),
            "a newer set is published: this worker will reload"
        );
        assert!(unknown_kid_may_wait(Some(&fresh), 3, min, T0 + min));
        let requested = FetchState {
            refetch_requested: true,
            ..fresh.clone()
        };
        assert!(unknown_kid_may_wait(Some(&requested), 3, min, T0 + 1));
        let in_flight = FetchState {
            lease: Some(Lease {
                owner: VM_A,
                expires_at_ms: T0 + 100,
            }),
            ..fresh.clone()
        };
        assert!(unknown_kid_may_wait(Some(&in_flight), 3, min, T0 + 1));
        assert!(
            !unknown_kid_may_wait(Some(&in_flight), 3, min, T0 + 100),
            "an expired lease is no fetch in flight"
        );
        let never_requested = FetchState {
            last_refetch_request_at_ms: None,
            ..fresh
        };
        assert!(unknown_kid_may_wait(Some(&never_requested), 3, min, T0));
    }

    // --- publishing and reloading ---

    #[test]
    fn versions_change_with_content_only_and_failures_keep_the_last_good_set() {
        let store = MemoryStore::new();
        let remote = remote();
        let first = jwks(vec![public("p256")]);
        let second = jwks(vec![public("p256"), public("rsa2048")]);
        let p = publish(&store, &remote, &algs(), &first, T0).unwrap();
        assert_eq!((p.version, p.changed, p.usable_keys), (1, true, 1));
        let p = publish(&store, &remote, &algs(), &first, T0 + 1).unwrap();
        assert_eq!((p.version, p.changed), (1, false));
        let p = publish(&store, &remote, &algs(), &second, T0 + 2).unwrap();
        assert_eq!((p.version, p.changed, p.usable_keys), (2, true, 2));
        for bad in [
            b"garbage".to_vec(),
            jwks(vec![]),
            vec![b' '; MAX_JWKS_BYTES + 1],
        ] {
            assert!(publish(&store, &remote, &algs(), &bad, T0 + 3).is_err());
        }
        let kept = read_published(&store, &remote).unwrap().unwrap();
        assert_eq!((kept.version, kept.body), (2, second));
        assert_eq!(kept.fetched_at_ms, T0 + 2);
    }

    #[test]
    fn a_publish_that_meets_a_concurrent_publish_retries_on_top_of_it() {
        let store = MemoryStore::new();
        let remote = remote();
        publish(&store, &remote, &algs(), &jwks(vec![public("p256")]), T0).unwrap();
        store.inject_conflicts(1);
        let p = publish(
            &store,
            &remote,
            &algs(),
            &jwks(vec![public("rsa2048")]),
            T0 + 1,
        )
        .unwrap();
        assert_eq!(p.version, 2);
        store.inject_failures(1);
        assert_eq!(
            publish(
                &store,
                &remote,
                &algs(),
                &jwks(vec![public("ed25519")]),
                T0 + 2
            ),
            Err(FetchFailure::StoreUnavailable)
        );
    }

    #[test]
    fn workers_reparse_only_when_the_version_changes() {
        let store = MemoryStore::new();
        let remote = remote();
        let mut worker = RemoteKeys::default();
        assert_eq!(
            reload(&store, &remote, &algs(), &mut worker, 0).unwrap(),
            None
        );
        assert!(!worker.has_set(0));
        assert_eq!(worker.version(0), 0);
        fetch(&store, &remote, VM_A, T0, &jwks(vec![public("p256")]));
        assert_eq!(
            reload(&store, &remote, &algs(), &mut worker, 0).unwrap(),
            Some(1)
        );
        let parsed = Rc::clone(&worker.set(0).unwrap().keys);
        // The same content fetched again: nothing to reload, the parsed keys stay.
        fetch(
            &store,
            &remote,
            VM_A,
            T0 + remote.refresh_ms,
            &jwks(vec![public("p256")]),
        );
        assert_eq!(
            reload(&store, &remote, &algs(), &mut worker, 0).unwrap(),
            None
        );
        assert!(Rc::ptr_eq(&parsed, &worker.set(0).unwrap().keys));
        // New content: version 2, new keys.
        fetch(
            &store,
            &remote,
            VM_A,
            T0 + 2 * remote.refresh_ms,
            &jwks(vec![public("rsa2048")]),
        );
        assert_eq!(
            reload(&store, &remote, &algs(), &mut worker, 0).unwrap(),
            Some(2)
        );
        assert_eq!(worker.keys(0)[0].kid.as_deref(), Some("test-rsa"));
        assert_eq!(state(&store, &remote).published_version, 2);
        // Providers are independent.
        assert!(!worker.has_set(1));
        assert!(worker.keys(5).is_empty());
    }

    #[test]
    fn fetch_reports_become_log_events_without_key_material() {
        let store = MemoryStore::new();
        let remote = remote();
        fetch(&store, &remote, VM_A, T0, &jwks(vec![public("p256")]));
        let now = T0 + remote.refresh_ms;
        assert_eq!(
            try_claim(&store, &remote, VM_A, now).unwrap(),
            Claim::Claimed
        );
        let report = complete_fetch(
            &store,
            &remote,
            &algs(),
            VM_A,
            now,
            HttpReply::Response {
                status: 504,
                body: b"upstream request timeout",
                body_size: 24,
            },
            500,
        );
        let event = report.event("main", 1).unwrap();
        assert!(event.is_failure());
        let line = event.to_json();
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["type"], "security_event");
        assert_eq!(parsed["event"], "jwks_fetch_failed");
        assert_eq!(parsed["provider"], "main");
        assert_eq!(parsed["version"], 1, "the last good set is still served");
        assert_eq!(parsed["consecutive_failures"], 1);
        assert_eq!(parsed["next_fetch_in_ms"], 1_000);
        assert!(parsed["reason"].as_str().unwrap().starts_with("timeout"));
        // A success names counts only.
        let now = now + 1_000;
        assert_eq!(
            try_claim(&store, &remote, VM_A, now).unwrap(),
            Claim::Claimed
        );
        let body = jwks(vec![public("p256"), public("hs512")]);
        let report = complete_fetch(&store, &remote, &algs(), VM_A, now, ok_reply(&body), 5);
        let line = report.event("main", 1).unwrap().to_json();
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["event"], "jwks_updated");
        assert_eq!(parsed["version"], 2);
        assert_eq!(parsed["keys"], 1);
        assert_eq!(parsed["skipped"].as_array().unwrap().len(), 1);
        for secret in [
            public("hs512")["k"].as_str().unwrap(),
            public("p256")["x"].as_str().unwrap(),
        ] {
            assert!(!line.contains(secret), "no key material in {line}");
        }
    }

    #[test]
    fn an_unsent_fetch_counts_as_a_failure() {
        let store = MemoryStore::new();
        let remote = remote();
        assert_eq!(
            try_claim(&store, &remote, VM_A, T0).unwrap(),
            Claim::Claimed
        );
        let report = fail_unsent_fetch(&store, &remote, VM_A, T0, "BadArgument".into());
        assert_eq!(
            report.finish,
            Ok(Finish::Recorded {
                next_fetch_at_ms: T0 + 1_000,
                consecutive_failures: 1
            })
        );
        assert_eq!(report.outcome.unwrap_err().code(), "connection_error");
    }

    // --- waiting requests ---

    #[test]
    fn waiting_requests_settle_on_a_new_set_a_finished_refetch_or_their_deadline() {
        let first_fetch = WaitTicket {
            provider: 0,
            registered_at_ms: T0,
            deadline_ms: T0 + 500,
            version_seen: 0,
            had_set: false,
        };
        let failed = FetchState {
            last_attempt_finished_at_ms: Some(T0 + 10),
            consecutive_failures: 1,
            ..FetchState::default()
        };
        assert!(!first_fetch.settled(0, None, T0 + 1));
        assert!(
            !first_fetch.settled(0, Some(&failed), T0 + 20),
            "a failed first fetch is retried while the request waits"
        );
        assert!(first_fetch.settled(1, Some(&failed), T0 + 20));
        assert!(first_fetch.settled(0, Some(&failed), T0 + 500));

        let refetch = WaitTicket {
            version_seen: 4,
            had_set: true,
            ..first_fetch
        };
        let earlier = FetchState {
            last_attempt_finished_at_ms: Some(T0 - 1),
            ..FetchState::default()
        };
        assert!(!refetch.settled(4, Some(&earlier), T0 + 1));
        assert!(
            refetch.settled(4, Some(&failed), T0 + 20),
            "the refetch ended (it failed): decide with the keys there are"
        );
        assert!(refetch.settled(5, Some(&earlier), T0 + 1));
        assert!(refetch.settled(4, Some(&earlier), T0 + 500));
    }
}

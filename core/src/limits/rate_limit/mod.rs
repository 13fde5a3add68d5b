//! Rate limiting (spec: `rate_limits`, `routes[].rate_limit`, "Rate-limit headers"): sliding-window
//! counters kept in proxy-wasm shared data, so that one limit holds across every Envoy worker, in
//! a table of fixed size, so that no number of distinct clients can grow Envoy's memory.
//!
//! # The counter
//! Each (limit, client key) has the count of admissions in the current fixed window and in the
//! previous one. At time `t`, `r` milliseconds of the previous window are still inside the
//! sliding window `(t - window, t]`, and the weighted count is
//! `current + previous × r / window` (Cloudflare's and Upstash's estimate). A request is admitted
//! when the weighted count *including it* stays within `requests`, i.e. when
//! `current + ⌈previous × r / window⌉ + 1 ≤ requests` — the integer ceiling is exactly the rational
//! comparison, so there is no float drift. A key that bursts is therefore admitted exactly
//! `requests` times and then refused until enough of its burst has slid out. Only admissions are
//! counted: a client that keeps hammering still gets its `requests` per window, and a refusal
//! costs a shared-data read, never a write.
//!
//! # Exact across workers
//! Every admission is one compare-and-swap of one shared-data value that holds everything the
//! decision read, so two workers can never both spend the last request: the loser's CAS fails and
//! it decides again on fresh counts. CAS retries are bounded ([`DEFAULT_CAS_ATTEMPTS`]); when they
//! run out, [`OnContention`] decides (default: refuse).
//!
//! # Bounded memory
//! Shared data has no delete and no expiry, so counters cannot be one key per client: an attacker
//! rotating IPs would grow Envoy's memory forever. Each limit owns a table of
//! `max_tracked_keys / 4` buckets; a bucket is ONE shared-data value holding four client entries
//! and one overflow entry, so finding, creating or reusing a client's entry is a single CAS (no
//! race between two workers placing the same new client in two different places). A client maps
//! to one bucket by a keyed hash. Inside the bucket:
//! - its own entry, if one holds its fingerprint, is its counter;
//! - otherwise it takes an entry that is empty or idle (no admissions in the last two windows, so
//!   it no longer weighs anything), starting from the overflow entry's counts;
//! - otherwise (four live clients hold the bucket) it is counted on the bucket's overflow entry,
//!   which it shares with every other client in the same situation.
//!
//! Beyond the bound limits get stricter, never looser: a client without an entry of its own is
//! admitted only while the shared overflow count (which includes all its own recent admissions)
//! is within `requests`, and when it later gets an entry that entry starts from the overflow
//! counts, an upper bound of its own. Live entries are never evicted, so a flood of new keys
//! cannot reset the counter of a key that is over its limit, nor take the counter of a key that
//! is within it. The number of shared-data keys is at most the number of buckets (plus one seed).
//!
//! The hash is keyed with a secret seed shared by all workers through shared data
//! ([`shared_seed`]): without it an attacker who knows a victim's key (an IP, say) could compute
//! keys that land in the victim's bucket and push the victim onto a saturated overflow counter.

use crate::authn::jwt::is_header_name;
use crate::config::error::{join, ConfigError};
use crate::request::head::RequestHead;
use serde::Deserialize;
use serde_json::Value;
use siphasher::sip::SipHasher24;
use std::collections::BTreeMap;
use std::fmt;

/// `max_tracked_keys` when the config does not say.
pub const DEFAULT_MAX_TRACKED_KEYS: u64 = 100_000;
/// About 80 bytes of Envoy memory per tracked key: ten million is close to a gigabyte per limit.
pub const MAX_MAX_TRACKED_KEYS: u64 = 10_000_000;
/// One year; also keeps every time computation far from integer limits.
pub const MAX_WINDOW_SECONDS: u64 = 31_536_000;
/// Client entries per bucket (one shared-data value).
pub const WAYS: usize = 4;
/// CAS attempts per decision before [`OnContention`] applies.
pub const DEFAULT_CAS_ATTEMPTS: u32 = 8;
/// The CAS value passed to `set` when `get` found no value: the host hands CAS tokens out from a
/// counter and never this one in practice, so the set succeeds only while the key is still
/// missing and fails with `CasMismatch` once another worker has created it (insert-if-absent).
/// Shared-data key of the hash seed all workers use.
pub const SEED_KEY: &str = "api-guard.rate_limit.v1.seed";
/// Names in `rate_limits` that are settings for all limits, not limits.
pub const RESERVED_NAMES: [&str; 2] = ["max_tracked_keys", "on_contention"];

pub const REASON_LIMIT_EXCEEDED: &str = "limit exceeded";
pub const REASON_OVERFLOW_EXCEEDED: &str =
    "limit exceeded on the shared overflow counter (tracking table full)";
pub const REASON_OVERFLOW_ADMITTED: &str =
    "counted on the shared overflow counter (tracking table full)";
pub const REASON_CONTENTION: &str = "contention: retries exhausted";
pub const REASON_STORE_ERROR: &str = "counter store error";

/// The shared-data key of bucket `bucket` of limit `limit_name`. Limit names cannot contain `.`,
/// and the bucket is the last component, so two limits never share a key.
pub fn table_key(limit_name: &str, bucket: u64) -> String {
    format!("api-guard.rate_limit.v1.table.{limit_name}.{bucket}")
}

mod bucket;
mod config;
mod decision;
mod limiter;
mod seed;
#[cfg(test)]
mod tests;
mod window;

use bucket::*;
pub use config::*;
pub use decision::*;
pub use limiter::*;
pub use seed::*;
use window::*;

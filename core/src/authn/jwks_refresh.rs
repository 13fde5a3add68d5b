//! Remote JWKS, the part a host drives: what its timer and its fetch answers lead to, and the
//! log lines about them. The protocol itself (the shared state record, the lease, publishing)
//! is `jwt::remote`.

use crate::authn::jwt::remote::{FetchReport, JwksEvent};

/// The log level of a key-set event: `warn` for a failure, `info` for new content, `debug` for
/// a refresh that found the same keys.
pub fn event_level(event: &JwksEvent<'_>) -> log::Level {
    match (event.is_failure(), event.event) {
        (true, _) => log::Level::Warn,
        (false, "jwks_updated") => log::Level::Info,
        _ => log::Level::Debug,
    }
}

/// Logs what came of a fetch for `provider` (one JSON line; nothing when the lease was lost),
/// `serving_version` being the version this VM serves.
pub fn log_fetch_report(provider: &str, serving_version: u64, report: &FetchReport) {
    if let Some(event) = report.event(provider, serving_version) {
        log::log!(event_level(&event), "{}", event.to_json());
    }
}

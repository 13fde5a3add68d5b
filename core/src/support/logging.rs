//! Log lines that are not security events: the ones written once per plugin configuration
//! (whatever the number of VMs), and the text of the configuration's refusal and warnings.
//!
//! Everything goes through the `log` facade; the adapter installs the logger.

use crate::config::error::ConfigError;
use crate::pipeline::policy::Policy;
use crate::support::shared_store::{CounterStore, INSERT_IF_ABSENT};
use sha2::Digest;

/// Logs `message` once for all the VMs sharing `store` (Envoy runs one per worker, plus one on
/// the main thread, and each configures itself), using insert-if-absent on a key derived from
/// the message. Returns whether this call wrote it. A store that refuses the insert for another
/// reason than "already there" means no line: the other VMs' copies carry it.
pub fn log_once(store: &dyn CounterStore, level: log::Level, message: &str) -> bool {
    if !log::log_enabled!(level) {
        return false;
    }
    let digest = sha2::Sha256::digest(message.as_bytes());
    let key: String = digest
        .get(..8)
        .unwrap_or_default()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let first = store
        .set(
            &format!("api-guard.logged.{key}"),
            b"1",
            Some(INSERT_IF_ABSENT),
        )
        .is_ok();
    if first {
        log::log!(level, "{message}");
    }
    first
}

/// The line that says the configuration was refused, with every error on a line of its own.
pub fn refusal_message(errors: &[ConfigError]) -> String {
    let mut message = format!(
        "api-guard: invalid configuration, refusing to start; every request is answered 503 until it is fixed ({} error(s)):",
        errors.len()
    );
    for error in errors {
        message.push_str("\n  ");
        message.push_str(&error.to_string());
    }
    message
}

/// Logs, once per configuration, why it was refused.
pub fn log_refusal(store: &dyn CounterStore, errors: &[ConfigError]) {
    log_once(store, log::Level::Error, &refusal_message(errors));
}

/// Logs, once per configuration, the settings it accepted but warns about.
pub fn log_warnings(store: &dyn CounterStore, policy: &Policy) {
    for warning in policy.cors.iter().flat_map(|cors| cors.warnings()) {
        log_once(
            store,
            log::Level::Warn,
            &format!("api-guard: configuration warning: {warning}"),
        );
    }
}

/// Logs, once per configuration, what it configured.
pub fn log_configured(store: &dyn CounterStore, policy: &Policy, verifier: &str) {
    log_once(
        store,
        log::Level::Info,
        &format!(
            "api-guard: configured {} route(s); signature verification: {verifier}",
            policy.routes.len()
        ),
    );
}

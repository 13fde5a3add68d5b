//! The `log` facade onto Envoy's log (`[dynamic_modules]` logger), and a panic hook that logs
//! where a panic happened but never its message (a message may carry request data).

use crate::abi::{self, LogLevel};
use std::sync::Once;

struct EnvoyLogger;

fn level_of(level: log::Level) -> LogLevel {
    match level {
        log::Level::Error => LogLevel::Error,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Info => LogLevel::Info,
        log::Level::Debug => LogLevel::Debug,
        log::Level::Trace => LogLevel::Trace,
    }
}

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        abi::log_enabled(level_of(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = level_of(record.level());
        if !abi::log_enabled(level) {
            return;
        }
        match record.args().as_str() {
            Some(text) => abi::log(level, text),
            None => abi::log(level, &record.args().to_string()),
        }
    }

    fn flush(&self) {}
}

static LOGGER: EnvoyLogger = EnvoyLogger;
static INSTALL: Once = Once::new();

/// Installs the logger and the panic hook once per process.
pub fn install() {
    INSTALL.call_once(|| {
        let _ = log::set_logger(&LOGGER);
        // Envoy filters by level itself (`log_enabled`); the facade passes everything on.
        log::set_max_level(log::LevelFilter::Trace);
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            abi::log(
                LogLevel::Error,
                &format!("api-guard: panic at {at}; the request fails closed"),
            );
        }));
    });
}

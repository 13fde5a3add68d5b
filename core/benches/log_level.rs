//! What a `log::debug!` costs on the hot path when the level is off (the filter's usual state:
//! Envoy's `wasm` log level is `info`): it should cost nothing measurable next to no call at
//! all. `cargo bench --bench log_level`.
//!
//! The `log` macros compare the level with `log::STATIC_MAX_LEVEL` (a constant) and then with
//! `log::max_level()` (one relaxed atomic load) before the arguments are even evaluated; only an
//! enabled line is formatted and handed to the logger. The third case shows what an enabled
//! line would cost with a logger that drops it.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};

struct DropLogger;

impl log::Log for DropLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            // What the filter's logger does before the hostcall: the line as a string.
            black_box(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static LOGGER: DropLogger = DropLogger;

/// Stand-in for a little per-request work (a header comparison).
#[inline(never)]
fn work(name: &str, version: u64) -> u64 {
    name.bytes().map(u64::from).sum::<u64>() ^ version
}

/// The same call depth as [`work_with_debug`], without the log line.
#[inline(never)]
fn work_plain(name: &str, version: u64) -> u64 {
    work(name, version)
}

#[inline(never)]
fn work_with_debug(name: &str, version: u64) -> u64 {
    let result = work(name, version);
    log::debug!("api-guard: provider {name}: key set version {version} loaded");
    result
}

fn log_levels(c: &mut Criterion) {
    let _ = log::set_logger(&LOGGER);
    let name = "main-provider";
    log::set_max_level(log::LevelFilter::Info);
    c.bench_function("no log call", |b| {
        b.iter(|| work_plain(black_box(name), black_box(7)))
    });
    c.bench_function("log::debug!, level info (off)", |b| {
        b.iter(|| work_with_debug(black_box(name), black_box(7)))
    });
    log::set_max_level(log::LevelFilter::Debug);
    c.bench_function("log::debug!, level debug (formatted, dropped)", |b| {
        b.iter(|| work_with_debug(black_box(name), black_box(7)))
    });
    log::set_max_level(log::LevelFilter::Info);
}

criterion_group!(benches, log_levels);
criterion_main!(benches);

//! api-guard: a proxy-wasm filter for Envoy that secures the APIs behind it.
//!
//! The core (every module except `proxy`) is plain Rust with no proxy-wasm types: time,
//! counters and signature checks come in through small traits so that every decision is
//! tested natively. `proxy` is the thin adapter compiled only for wasm32.

pub mod config_error;
pub mod routes;

#[cfg(target_arch = "wasm32")]
mod proxy;

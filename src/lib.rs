//! api-guard: a proxy-wasm filter for Envoy that secures the APIs behind it.
//!
//! The core (every module except `proxy`) is plain Rust with no proxy-wasm types: time and
//! signature checks come in through small traits so that every decision is tested natively.
//! `proxy` is the thin adapter compiled only for wasm32.

pub mod api_keys;
pub mod authz;
pub mod body_limit;
pub mod body_schema;
pub mod config;
pub mod config_error;
pub mod cors;
pub mod credentials;
pub mod error_rewrite;
pub mod events;
pub mod firewall;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod header_pairs;
pub mod jwt;
#[cfg(not(target_arch = "wasm32"))]
pub mod mint;
pub mod policy;
pub mod rate_limit;
pub mod replay;
pub mod reply;
pub mod request;
pub mod routes;
pub mod security_headers;
pub mod shared_store;
pub mod strict_json;
pub mod webhook;

#[cfg(target_arch = "wasm32")]
mod proxy;

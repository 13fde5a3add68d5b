//! api-guard as an Envoy 1.40 dynamic module (`envoy.filters.http.dynamic_modules`): the same
//! core, the same JSON configuration, envelope, events and metrics as the proxy-wasm filter,
//! running in Envoy's process instead of a V8 sandbox.
//!
//! Layout: [`abi`] holds every unsafe line (the C ABI, pinned to Envoy 1.40); [`hooks`] are the
//! exported entry points, each of which catches a panic and fails closed; [`filter`] is the
//! adapter proper (host data into core types, core commands into host calls), with no
//! decision of its own; [`shared`] is what the workers share (the policy, the in-process
//! counter table) and what each worker keeps (token cache, event budget).
//!
//! Trust model: no sandbox. A fault here is a fault in Envoy's process, so the bindings are
//! one small module, every entry point catches panics, and the host data the adapter decodes
//! is fuzzed (`fuzz_targets::module_header_map`).

pub mod abi;
pub mod crypto;
pub mod decode;
mod filter;
mod hooks;
mod jwks;
mod logger;
mod shared;

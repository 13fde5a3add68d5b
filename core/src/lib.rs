//! api-guard's core: every decision the filter makes, with no host.
//!
//! No proxy-wasm types and no `unsafe`: time, shared data and signature checks come in through
//! small traits, so that every decision is tested natively (fake clock, in-memory store). The
//! adapters (`filter/`, the proxy-wasm build) translate host events into these types and carry
//! out what comes back.
//!
//! The folders follow a request through the filter:
//! - [`config`]: the plugin JSON, checked and compiled once per configuration.
//! - [`request`]: what arrived: the head, the path normalised and screened, the route it matches.
//! - [`authn`]: who sent it: JWTs (inline and remote JWKS), API keys, identity headers stripped.
//! - [`authz`]: whether they may: scopes, roles, owner checks.
//! - [`limits`]: how much: rate limits in shared data, request size.
//! - [`body`]: what the body says: JSON schema, webhook signatures and their replay table.
//! - [`pipeline`]: the order of the stages above, the verdict that comes out of them, and one
//!   stream's flow through the host's events as commands for the adapter.
//! - [`response`]: what goes back: security headers, CORS, error rewriting, the envelope.
//! - [`support`]: what every stage uses: security events, the shared-store trait, test tokens.
#![forbid(unsafe_code)]

pub mod authn;
pub mod authz;
pub mod body;
pub mod config;
// The fuzz target bodies (fuzz/, and their corpora replayed by tests/fuzz_corpus.rs): test code,
// built only for tests and with the `testing` feature, never into the filter.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzz_targets;
pub mod limits;
pub mod pipeline;
pub mod request;
pub mod response;
pub mod support;

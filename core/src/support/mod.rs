//! What every stage uses: structured security events ([`events`]), the log lines written once
//! per configuration ([`logging`]), the shared-store trait the
//! limiter and the JWKS cache write through ([`shared_store`]), and test tokens and keys for the
//! command line and the tests ([`mint`], native builds only), and for the tests alone an
//! in-memory store ([`memory_store`]) and the request environment of a native decision
//! ([`test_env`]), both with the `testing` feature.
pub mod events;
pub mod logging;
#[cfg(any(test, feature = "testing"))]
pub mod memory_store;
pub mod metrics;
#[cfg(not(target_arch = "wasm32"))]
pub mod mint;
pub mod process_store;
pub mod shared_store;
#[cfg(any(test, feature = "testing"))]
pub mod test_env;

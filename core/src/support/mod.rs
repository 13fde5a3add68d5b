//! What every stage uses: structured security events ([`events`]), the shared-store trait the
//! limiter and the JWKS cache write through ([`shared_store`]), and test tokens and keys for the
//! command line and the tests ([`mint`], native builds only).
pub mod events;
#[cfg(not(target_arch = "wasm32"))]
pub mod mint;
pub mod shared_store;

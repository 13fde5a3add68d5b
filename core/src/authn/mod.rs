//! Who sent the request: JSON Web Tokens ([`jwt`]), API keys ([`api_keys`]), and the credentials
//! and identity headers a client must not forward unverified ([`credentials`]); DPoP proofs that
//! bind a token to its client's key ([`dpop`]).
pub mod api_keys;
pub mod credentials;
pub mod dpop;
pub mod jwks_refresh;
pub mod jwt;

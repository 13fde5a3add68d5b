//! Attacks on the JWT verifier, as tables of (case, token, expected outcome).
//!
//! Every refused case is built so that it is refused by the protection it names: wherever it is
//! possible the token is otherwise perfect (signed by a configured key over exactly the bytes it
//! carries), so removing that one protection turns the case into an accepted token and the test
//! fails. Every table runs twice: with `RustVerifier` and with `HostVerifier` over a fake host
//! whose `verify_signature` is implemented with RustCrypto.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard::config_error::ConfigError;
use api_guard::jwk_free_mint as _;
use api_guard::jwt::alg::Alg;
use api_guard::jwt::b64url;
use api_guard::jwt::cache::TokenCache;
use api_guard::jwt::verifier::{
    ForeignFunctions, HostCallFailed, HostVerifier, Refusal, RustVerifier, SignatureVerifier,
};
use api_guard::jwt::{FoundToken, JwtAuth, JwtConfig, JwtFailure};
use api_guard::mint;
use api_guard::request::RequestHead;
use serde_json::{json, Map, Value};
use std::cell::Cell;
use std::rc::Rc;

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://issuer.test";

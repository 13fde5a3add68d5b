//! What the body says: JSON bodies checked against a schema ([`schema`], read by the strict
//! parser in [`strict_json`]), webhook signatures ([`webhook`]) and the table that refuses a
//! replayed delivery ([`replay`]); the copy of a body held for a check, within a per-worker
//! budget ([`held`]).
pub mod held;
pub mod replay;
pub mod schema;
pub mod strict_json;
pub mod webhook;

//! How much a client may send: sliding-window rate limits over shared data ([`rate_limit`]) and
//! request size ([`body_limit`]).
pub mod body_limit;
pub mod rate_limit;
pub mod rate_limit_service;

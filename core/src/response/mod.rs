//! What goes back: security headers on every response ([`security_headers`]), CORS
//! ([`cors`]), upstream and Envoy errors rewritten ([`error_rewrite`]) and the filter's own
//! replies, the JSON envelope with the request id ([`reply`]).
pub mod cors;
pub mod error_rewrite;
pub mod reply;
pub mod security_headers;

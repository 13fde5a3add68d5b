//! The order of the stages (screen, route, authenticate, limit, authorize, body) and the verdict
//! each request ends with: [`policy`]. What the host's events lead to (response headers and
//! body, a body over its bound): [`flow`].
pub mod flow;
pub mod policy;

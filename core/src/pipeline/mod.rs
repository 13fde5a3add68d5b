//! The order of the stages (screen, route, authenticate, limit, authorize, body) and the verdict
//! each request ends with: [`policy`]. One stream's life through the host's events (headers,
//! body, trailers, keys settled, the response), as commands for the adapter: [`http_flow`], with
//! the response's and a body's single decisions in [`flow`].
pub mod flow;
pub mod http_flow;
pub mod policy;

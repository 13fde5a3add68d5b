//! The order of the stages (screen, route, authenticate, limit, authorize, body) and the verdict
//! each request ends with: [`policy`].
pub mod policy;

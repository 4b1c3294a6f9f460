//! Policy lifecycle tools: drafting and reviewing policy from evidence.
//!
//! - [`calls`]: the access log read back as calls.
//! - [`openapi`]: least-privilege routes and scopes drafted from an OpenAPI document.
//! - [`suggest`]: routes and scopes that would have allowed the observed traffic.
//! - [`replay`]: every logged call re-decided under a candidate configuration.
//! - [`review`]: unused scopes and routes, idle agents, unaccountable owners.

pub mod calls;
pub mod openapi;
pub mod replay;
pub mod review;
pub mod suggest;

//! Portcullis: a zero-trust enforcement gateway for AI agents, on pingora.
//!
//! Every call an agent makes is authenticated (JWT, [`identity`]), matched against explicitly
//! allowed routes and scopes ([`policy`]), and forwarded with the upstream's own credential
//! ([`proxy`]) or refused with a JSON reason. See `README.md` for the operator's view and
//! `ARCHITECTURE` notes in each module for the why.

pub mod admin;
pub mod approval;
pub mod config;
pub mod identity;
pub mod observe;
pub mod policy;
pub mod policy_tools;
pub mod proxy;
pub mod server;
pub mod state;
pub mod token_service;
pub mod util;

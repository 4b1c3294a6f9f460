//! The pure decision: given a snapshot and the facts of one request, allow or deny.
//!
//! No I/O, no clock, no `.await`: the proxy gathers the facts (normalized path, verified token)
//! and acts on the result, so every rule here is testable from tables and benchmarkable alone.

use super::path::NormalizedPath;
use super::route::Lookup;
use super::snapshot::{Agent, Snapshot};
use crate::identity::VerifiedToken;
use http::Method;
use std::sync::Arc;

/// Everything the decision needs to know about a request.
#[derive(Debug)]
pub struct RequestFacts<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Host header, lowercase, port stripped.
    pub host: Option<&'a str>,
    /// Normalized path.
    pub path: &'a NormalizedPath,
    /// The verified token.
    pub token: &'a VerifiedToken,
}

/// The call may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Index of the route (into `snapshot.routes.routes`).
    pub route: usize,
    /// The calling agent.
    pub agent: Arc<Agent>,
    /// token scopes ∩ agent registry scopes.
    pub effective_scopes: Vec<String>,
}

/// Why the call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The token's subject is not a registered agent.
    UnknownAgent {
        /// The subject.
        subject: String,
    },
    /// The agent exists but is disabled.
    AgentDisabled {
        /// The agent.
        agent: Arc<Agent>,
    },
    /// No route allows this method, host and path.
    NoRoute {
        /// The agent.
        agent: Arc<Agent>,
        /// Methods some route allows on this path.
        methods_on_path: Vec<Method>,
    },
    /// The route needs scopes the agent's effective scopes lack.
    InsufficientScope {
        /// The agent.
        agent: Arc<Agent>,
        /// Index of the route.
        route: usize,
        /// Required scopes (all of) that are missing.
        missing_all: Vec<String>,
        /// The `any_of` set, when none of it is held.
        missing_any_of: Vec<String>,
    },
}

/// Allow or deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward.
    Allow(Allowed),
    /// Refuse.
    Deny(Denial),
}

/// Decide one request.
pub fn evaluate(snap: &Snapshot, facts: &RequestFacts<'_>) -> Decision {
    let Some(agent) = snap.agents.get(facts.token.subject.as_str()) else {
        return Decision::Deny(Denial::UnknownAgent {
            subject: facts.token.subject.clone(),
        });
    };
    if !agent.enabled {
        return Decision::Deny(Denial::AgentDisabled {
            agent: agent.clone(),
        });
    }
    let route = match snap.routes.lookup(facts.method, facts.host, facts.path) {
        Lookup::Found(i) => i,
        Lookup::NotFound { methods_on_path } => {
            return Decision::Deny(Denial::NoRoute {
                agent: agent.clone(),
                methods_on_path,
            })
        }
    };
    // Least privilege: a token can only narrow what the registry grants, never widen it.
    let effective: Vec<String> = facts
        .token
        .scopes
        .iter()
        .filter(|s| agent.scopes.contains(s.as_str()))
        .cloned()
        .collect();
    let r = &snap.routes.routes[route];
    let holds = |s: &String| effective.iter().any(|e| e == s);
    let missing_all: Vec<String> = r.scopes_all.iter().filter(|s| !holds(s)).cloned().collect();
    let any_ok = r.scopes_any.is_empty() || r.scopes_any.iter().any(holds);
    if !missing_all.is_empty() || !any_ok {
        return Decision::Deny(Denial::InsufficientScope {
            agent: agent.clone(),
            route,
            missing_all,
            missing_any_of: if any_ok {
                Vec::new()
            } else {
                r.scopes_any.clone()
            },
        });
    }
    Decision::Allow(Allowed {
        route,
        agent: agent.clone(),
        effective_scopes: effective,
    })
}

//! Policy: least privilege. A scope counts only if the token carries it AND the registry grants
//! it to the agent; a token can narrow what the registry grants, never widen it.

use super::decision::Denial;
use super::route::Route;
use super::snapshot::Agent;
use crate::identity::VerifiedToken;
use std::sync::Arc;

/// Whether the agent, with this token, holds what `route` requires (all of `scopes`, one of
/// `any_of`). Only the route's few required scopes are looked up, so a token with many scopes
/// costs nothing more.
pub fn check(
    route: &Route,
    index: usize,
    agent: &Arc<Agent>,
    token: &VerifiedToken,
) -> Result<(), Denial> {
    match missing(&route.scopes_all, &route.scopes_any, agent, token) {
        None => Ok(()),
        Some((missing_all, missing_any_of)) => Err(Denial::InsufficientScope {
            agent: agent.clone(),
            route: index,
            missing_all,
            missing_any_of,
        }),
    }
}

/// What is missing of `all` (every one) and `any` (one of them, when not empty) among the
/// scopes the agent holds with this token (token ∩ registry); `None` when nothing is.
pub fn missing(
    all: &[String],
    any: &[String],
    agent: &Agent,
    token: &VerifiedToken,
) -> Option<(Vec<String>, Vec<String>)> {
    let holds = |s: &String| agent.scopes.contains(s.as_str()) && token.scopes.contains(s);
    let missing_all: Vec<String> = all.iter().filter(|s| !holds(s)).cloned().collect();
    let any_ok = any.is_empty() || any.iter().any(holds);
    if missing_all.is_empty() && any_ok {
        return None;
    }
    Some((missing_all, if any_ok { Vec::new() } else { any.to_vec() }))
}

/// The scopes an agent actually holds with this token: token scopes ∩ registry scopes, in token
/// order. Computed only for calls that are forwarded (the `x-portcullis-scopes` header).
pub fn effective_scopes(agent: &Agent, token: &VerifiedToken) -> Vec<String> {
    token
        .scopes
        .iter()
        .filter(|s| agent.scopes.contains(s.as_str()))
        .cloned()
        .collect()
}

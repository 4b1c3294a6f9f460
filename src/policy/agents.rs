//! Policy: the caller is a registered, enabled agent.

use super::decision::Denial;
use super::snapshot::{Agent, Snapshot};
use crate::identity::VerifiedToken;
use std::sync::Arc;

/// The registered agent the verified token names, or why there is none to act for.
pub fn registered<'s>(snap: &'s Snapshot, token: &VerifiedToken) -> Result<&'s Arc<Agent>, Denial> {
    let Some(agent) = snap.agents.get(token.subject.as_str()) else {
        return Err(Denial::UnknownAgent {
            subject: token.subject.clone(),
        });
    };
    if !agent.enabled {
        return Err(Denial::AgentDisabled {
            agent: agent.clone(),
        });
    }
    Ok(agent)
}

//! Policy: the runtime state of agents — the kill switch (pause, token revocation) and the
//! interventions a playbook or an operator applies for a while (writes need approval, throttle).
//!
//! This state is not in `gateway.yaml`: operators and playbooks change it at runtime, it is
//! persisted by [`crate::state::agent_state`], and a config reload never touches it (a reload
//! cannot un-pause an agent). The pipeline reads one immutable [`AgentStates`] per request, so
//! the check is a hash lookup, and a change takes effect on the next request — also for tokens
//! the verifier has cached, because this check runs after verification, on every call.

use super::decision::Denial;
use super::limits::RateLimit;
use super::snapshot::Agent;
use crate::identity::VerifiedToken;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Who changed an agent's state, and why: kept with the state and shown in refusals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Operator name, approver name, or `playbook:<name>`.
    pub by: String,
    /// Why, in the words of whoever did it.
    pub reason: String,
    /// When, Unix ms.
    pub at_ms: i64,
}

/// A time-boxed restriction (step-up or throttle) and who set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Until {
    /// It ends at this instant, Unix ms.
    pub until_ms: i64,
    /// Who set it and why.
    pub stamp: Stamp,
}

/// A throttle: the agent's calls are limited to `requests` per `per_ms` until it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    /// Requests per period.
    pub requests: u32,
    /// The period, ms.
    pub per_ms: u64,
    /// When it ends and who set it.
    pub until: Until,
}

impl Throttle {
    /// The throttle as a rate limit (burst = requests), checked with the other limits.
    pub fn rate(&self) -> RateLimit {
        RateLimit {
            requests: self.requests.max(1),
            per: Duration::from_millis(self.per_ms.max(1)),
            burst: self.requests.max(1),
        }
    }
}

/// The runtime state of one agent. Absent from [`AgentStates`] = nothing set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRuntime {
    /// Paused: every call is refused (403 `agent_paused`) until an operator resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Stamp>,
    /// Every token of the agent issued at or before this second (`iat`) is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_before: Option<(u64, Stamp)>,
    /// The agent's writes need human approval until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_up: Option<Until>,
    /// The agent's calls are throttled until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
}

impl AgentRuntime {
    /// Nothing set (the row can be deleted).
    pub fn is_clear(&self) -> bool {
        self.paused.is_none()
            && self.revoked_before.is_none()
            && self.step_up.is_none()
            && self.throttle.is_none()
    }

    /// The step-up in force at `now_ms`, if any.
    pub fn step_up_at(&self, now_ms: i64) -> Option<&Until> {
        self.step_up.as_ref().filter(|u| u.until_ms > now_ms)
    }

    /// The throttle in force at `now_ms`, if any.
    pub fn throttle_at(&self, now_ms: i64) -> Option<&Throttle> {
        self.throttle.as_ref().filter(|t| t.until.until_ms > now_ms)
    }
}

/// A revoked token id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedToken {
    /// The agent the token belonged to, when the operator said.
    pub agent: Option<String>,
    /// Kept until then (by then the token has expired anyway), Unix ms.
    pub expires_at_ms: i64,
    /// Who revoked it and why.
    pub stamp: Stamp,
}

/// The runtime state of every agent that has any, and the revoked token ids: one immutable
/// value, replaced as a whole on each change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStates {
    /// Agents with some runtime state.
    pub agents: HashMap<String, AgentRuntime>,
    /// Revoked `jti`s.
    pub revoked_jtis: HashMap<String, RevokedToken>,
}

/// No runtime state at all (tests and benches).
pub static NO_AGENT_STATE: LazyLock<AgentStates> = LazyLock::new(AgentStates::default);

impl AgentStates {
    /// The runtime state of `agent`, if any.
    pub fn agent(&self, agent: &str) -> Option<&AgentRuntime> {
        if self.agents.is_empty() {
            return None;
        }
        self.agents.get(agent)
    }
}

/// Why a token is refused although its signature and claims are good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// This token id was revoked.
    Jti(String, Stamp),
    /// Every token of the agent issued at or before `before` (seconds) was revoked.
    IssuedBefore(u64, Stamp),
}

/// The kill switch, checked right after the agent is known: a revoked token (401) or a paused
/// agent (403) ends the call. Never shadowed: shadow mode is for rolling out policy, not for
/// stopping an agent. On success, the agent's runtime state (for step-up and throttle).
pub fn check<'s>(
    states: &'s AgentStates,
    agent: &Arc<Agent>,
    token: &VerifiedToken,
) -> Result<Option<&'s AgentRuntime>, Denial> {
    if !states.revoked_jtis.is_empty() {
        if let Some(r) = token.jti.as_ref().and_then(|j| states.revoked_jtis.get(j)) {
            return Err(Denial::TokenRevoked {
                agent: agent.clone(),
                revocation: Box::new(Revocation::Jti(
                    token.jti.clone().unwrap_or_default(),
                    r.stamp.clone(),
                )),
            });
        }
    }
    let Some(rt) = states.agent(&agent.id) else {
        return Ok(None);
    };
    if let Some((before, stamp)) = &rt.revoked_before {
        // `<=`: a token issued in the same second as the revocation may predate it; refusing it
        // costs the agent one token request, accepting it could let a stolen token through.
        if token.iat <= *before {
            return Err(Denial::TokenRevoked {
                agent: agent.clone(),
                revocation: Box::new(Revocation::IssuedBefore(*before, stamp.clone())),
            });
        }
    }
    if let Some(p) = &rt.paused {
        return Err(Denial::AgentPaused {
            agent: agent.clone(),
            pause: Box::new(p.clone()),
        });
    }
    Ok(Some(rt))
}

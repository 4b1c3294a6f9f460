//! The decision, as an ordered list of policies. Each policy lives in its own file with its
//! check; this file only says in which order they run and why. Everything here is pure: no
//! I/O, no clock, no `.await`, so the whole pipeline is unit-tested from tables and
//! benchmarked alone (`benches/decision.rs`).

use super::conditions::{BodyFact, ConditionFacts, ConditionOutcome};
use super::decision::{Allowed, Decision, RequestFacts};
use super::decision::{ConditionOf, ConditionRan, Denial};
use super::limits::{self, Charge, LimitDecision};
use super::snapshot::Snapshot;
use super::{agent_state, agents, approval, mcp, routing, scopes, upgrade};
use crate::util::unix_ms;

/// Decide one call.
pub fn evaluate(snap: &Snapshot, facts: &RequestFacts<'_>) -> Decision {
    // 1. Identity first: the token was verified by the proxy; its subject must be a
    //    registered, enabled agent. An unknown caller learns nothing about routes.
    let agent = match agents::registered(snap, facts.token) {
        Ok(a) => a,
        Err(d) => return Decision::Deny(d),
    };
    // 1b. The kill switch: a revoked token or a paused agent stops here, whatever the
    //     config says (runtime state, never shadowed).
    let runtime = match agent_state::check(facts.agent_states, agent, facts.token) {
        Ok(rt) => rt,
        Err(d) => return Decision::Deny(d),
    };
    // 2. Deny by default: the one route the call falls under, or none.
    let route = match routing::route_of(snap, facts, agent) {
        Ok(r) => r,
        Err(d) => return Decision::Deny(d),
    };
    let r = &snap.routes.routes[route];
    // 3. The request must not mean more than the route: no protocol switch it did not allow.
    if let Err(d) = upgrade::check(snap, facts, agent, route) {
        return Decision::Deny(d);
    }
    // 3b. MCP: on a `kind: mcp` route the JSON-RPC message names a tool, prompt or resource;
    //     the rule naming it applies on top of the route (its scopes here, its conditions,
    //     limits and approval below). The body is read before anything else is judged, so
    //     every later refusal can answer as JSON-RPC with the request's id.
    let (mut mcp_rule, mut write, mut changed_tool) =
        (None, approval::is_write(facts.method), false);
    let mut mcp_would_deny = None;
    if let Some(policy) = &r.mcp {
        let upstream = &snap.upstreams[r.upstream].name;
        match mcp::check(policy, r.shadow.scopes, upstream, facts, agent, route) {
            mcp::Step::Continue {
                rule,
                call,
                changed,
                would_deny,
            } => {
                mcp_rule = rule.map(|i| (i, &policy.rules[i]));
                write = call;
                changed_tool = changed;
                mcp_would_deny = would_deny;
            }
            mcp::Step::NeedBody(max) => return Decision::NeedBody(max),
            mcp::Step::Deny(d) => return Decision::Deny(d),
        }
    }
    // From here on a policy may be in shadow mode on this route: it records what it would
    // refuse (the first such refusal is kept) and the call goes on.
    let mut would_deny = mcp_would_deny;
    let mut refuse = |d, shadowed: bool| {
        if shadowed {
            would_deny.get_or_insert(d);
            None
        } else {
            Some(Decision::Deny(d))
        }
    };
    // 4. Least privilege: the route's scopes, from token ∩ registry.
    if let Err(d) = scopes::check(r, route, agent, facts.token) {
        if let Some(deny) = refuse(d, r.shadow.scopes) {
            return deny;
        }
    }
    // 5. Context: the conditions of the agent's tier, of the agent and of the route (time,
    //    network, claims, request facts, CEL), in that order. A deny refuses (deny wins); an
    //    `approve` puts the call to a human.
    let mut step_up = None;
    let mut ran = Vec::new();
    let no_conditions = super::conditions::Conditions::default();
    let sets = [
        (ConditionOf::Tier(agent.tier()), &agent.tier_conditions),
        (ConditionOf::Agent, &agent.conditions),
        (ConditionOf::Route, &r.conditions),
        (
            ConditionOf::McpRule,
            mcp_rule.map_or(&no_conditions, |(_, rule)| &rule.conditions),
        ),
    ];
    if sets.iter().any(|(_, c)| !c.is_empty()) {
        let needs = sets.iter().filter_map(|(_, c)| c.needs_body()).max();
        if let (Some(max), BodyFact::NotRead) = (needs, facts.body) {
            if facts.body_len != Some(0) {
                return Decision::NeedBody(max);
            }
        }
        let cf = ConditionFacts {
            now: facts.now,
            client_ip: facts.client_ip,
            method: facts.method,
            path: facts.path.as_str(),
            query: facts.query,
            headers: facts.headers,
            body_len: facts
                .body_len
                .or_else(|| limits::declared_length(facts.headers)),
            claims: &facts.token.claims,
            agent: &agent.id,
            body: facts.body,
        };
        for (of, set) in sets {
            if set.is_empty() {
                continue;
            }
            let report = set.check(&cf);
            ran.extend(report.trace.iter().map(|t| ConditionRan {
                condition: t.condition.clone(),
                of,
                passed: t.passed,
            }));
            match report.outcome {
                ConditionOutcome::Pass => {}
                ConditionOutcome::Deny { condition, reason } => {
                    let d = Denial::Condition {
                        agent: agent.clone(),
                        route,
                        condition,
                        of,
                        reason,
                    };
                    if let Some(deny) = refuse(d, r.shadow.conditions) {
                        return deny;
                    }
                }
                ConditionOutcome::RequireApproval { .. } if r.shadow.conditions => {}
                ConditionOutcome::RequireApproval { .. } => {
                    step_up = Some(approval::step_up(snap, r));
                }
            }
        }
    }
    // 6. Rate and volume limits: volumes are read here (a budget already spent refuses the
    //    call); rates are taken by the proxy with the returned charge, atomically.
    let mut applied = limits::applicable(&agent.id, &agent.limits, &r.name, &r.limits);
    if let Some((_, rule)) = mcp_rule {
        // A rule's limits count apart from the route's: under the rule's own key.
        let none = limits::Limits::default();
        applied.extend(limits::applicable(
            &agent.id,
            &none,
            &rule.key,
            &rule.limits,
        ));
    }
    if let Some(t) = runtime.and_then(|rt| rt.throttle_at(unix_ms(facts.now))) {
        let path = format!(
            "throttle by {} ({})",
            t.until.stamp.by, t.until.stamp.reason
        );
        applied.push(limits::throttle(&agent.id, t.rate(), path.into()));
    }
    let charge = if applied.is_empty() {
        Charge::default()
    } else {
        let declared = limits::declared_length(facts.headers);
        match limits::decide(&applied, facts.volumes, declared) {
            LimitDecision::Continue(c) => c,
            LimitDecision::Refuse(refused) => {
                let d = Denial::Limited {
                    agent: agent.clone(),
                    route,
                    refused: Box::new(refused),
                };
                if let Some(deny) = refuse(d, r.shadow.limits) {
                    return deny;
                }
                Charge::default()
            }
        }
    };
    // 7. Tiered trust last: only a call that would otherwise pass is put to a human. A
    //    runtime step-up (an intervention) makes the agent's writes need approval for a while.
    //    On an MCP route the rule's approval applies, and a tool whose definition changed
    //    (`tool_changes: approve`) is put to a human until an operator accepts the change.
    let mut approval = match mcp_rule {
        Some((_, rule)) => rule.approval.clone().or_else(|| {
            approval::required(snap, r, agent, write).or_else(|| {
                changed_tool.then(|| snap.approvals.as_ref().map(|a| a.supervised.clone()))?
            })
        }),
        None => approval::required(snap, r, agent, write),
    }
    .or(step_up.flatten());
    if changed_tool && approval.is_none() {
        // `tool_changes: approve` without an `approvals:` section: refuse, never forward.
        let tool = facts
            .mcp
            .and_then(|m| m.as_ref().ok())
            .and_then(|m| m.target.as_ref())
            .map_or(String::new(), |(_, name)| name.clone());
        return Decision::Deny(Denial::McpToolChanged {
            agent: agent.clone(),
            route,
            tool,
        });
    }
    if approval.is_none() {
        if let Some(until) = runtime.and_then(|rt| rt.step_up_at(unix_ms(facts.now))) {
            if write {
                match &snap.approvals {
                    Some(a) => approval = Some(a.supervised.clone()),
                    None => {
                        return Decision::Deny(Denial::StepUpUnavailable {
                            agent: agent.clone(),
                            until: Box::new(until.clone()),
                        })
                    }
                }
            }
        }
    }
    Decision::Allow(Allowed {
        route,
        agent: agent.clone(),
        approval,
        would_deny,
        conditions: ran,
        mcp_rule: mcp_rule.map(|(i, _)| i),
        charge: if r.shadow.limits {
            // A shadowed limit only watches: it takes nothing and cuts nothing.
            Charge::default()
        } else {
            charge
        },
    })
}

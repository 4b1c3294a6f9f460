//! `portcullis policy review`: the access review of agent permissions, from the configuration
//! and the access log. Over-privilege (scopes held but not used within the window), staleness
//! (routes nobody called, agents with no traffic: de-provisioning candidates) and
//! accountability (agents whose owner is missing, not a mail address, or not among the people
//! the reviewer knows).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde::Serialize;

use super::calls::Call;
use crate::policy::Snapshot;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `unused_scope`, `idle_agent`, `unused_route`, `owner_unknown`, `disabled_agent`.
    pub kind: &'static str,
    /// The agent, when about one.
    pub agent: Option<String>,
    /// The scope or route named.
    pub subject: String,
    /// Why it is listed, in a sentence a reviewer can sign off.
    pub detail: String,
}

/// The review: findings, and each agent's use in the window.
#[derive(Debug, Default, Serialize)]
pub struct Review {
    /// Findings, by kind then agent.
    pub findings: Vec<Finding>,
    /// Per agent: calls that passed, refused calls, last call (RFC 3339).
    pub agents: BTreeMap<String, (usize, usize, Option<String>)>,
}

/// Review `snap` against `calls` (already cut to the window). `known_owners`: people the
/// reviewer recognises (empty: only the shape of the owner is checked).
pub fn review(snap: &Snapshot, calls: &[Call], window: &str, known_owners: &[String]) -> Review {
    let mut r = Review::default();
    let mut used: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut routes_called: BTreeSet<&str> = BTreeSet::new();
    let mut last: BTreeMap<&str, SystemTime> = BTreeMap::new();
    for c in calls {
        let Some(agent) = c.agent.as_deref() else {
            continue;
        };
        let e = r.agents.entry(agent.to_string()).or_default();
        if c.passed() {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
        let l = last.entry(agent).or_insert(c.time);
        *l = (*l).max(c.time);
        if !c.passed() {
            continue;
        }
        let Some(route) = c
            .route
            .as_deref()
            .and_then(|n| snap.routes.routes.iter().find(|x| &*x.name == n))
        else {
            continue;
        };
        routes_called.insert(&route.name);
        let u = used.entry(agent).or_default();
        u.extend(route.scopes_all.iter().cloned());
        u.extend(
            route
                .scopes_any
                .iter()
                .filter(|s| c.token_scopes.contains(s))
                .take(1)
                .cloned(),
        );
    }
    for (agent, t) in last {
        if let Some(e) = r.agents.get_mut(agent) {
            e.2 = Some(humantime::format_rfc3339_seconds(t).to_string());
        }
    }
    let mut agents: Vec<_> = snap.agents.values().collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    for a in agents {
        let id = a.id.to_string();
        if !a.enabled {
            r.findings.push(Finding {
                kind: "disabled_agent",
                agent: Some(id.clone()),
                subject: id.clone(),
                detail: "disabled but still registered: remove it once its audit trail is archived"
                    .into(),
            });
        }
        let owner = a.owner.trim();
        let shaped = owner.contains('@') && !owner.starts_with('@') && !owner.ends_with('@');
        if owner.is_empty()
            || !shaped
            || (!known_owners.is_empty()
                && !known_owners.iter().any(|k| k.eq_ignore_ascii_case(owner)))
        {
            r.findings.push(Finding {
                kind: "owner_unknown",
                agent: Some(id.clone()),
                subject: owner.to_string(),
                detail: if owner.is_empty() || !shaped {
                    format!("owner `{owner}` is not a person's address: nobody is accountable")
                } else {
                    format!("owner `{owner}` is not in the list of known people: left or renamed?")
                },
            });
        }
        if !a.enabled {
            // Its scopes are moot while it is disabled; the finding above covers it.
            continue;
        }
        let mine = used.get(&*a.id);
        if mine.is_none() {
            r.findings.push(Finding {
                kind: "idle_agent",
                agent: Some(id.clone()),
                subject: id.clone(),
                detail: format!("no call passed in {window}: a de-provisioning candidate"),
            });
            continue;
        }
        for s in &a.scopes {
            if !mine.is_some_and(|m| m.contains(s)) {
                r.findings.push(Finding {
                    kind: "unused_scope",
                    agent: Some(id.clone()),
                    subject: s.clone(),
                    detail: format!(
                        "held but not needed by any call that passed in {window}: remove it"
                    ),
                });
            }
        }
    }
    for route in &snap.routes.routes {
        if !routes_called.contains(&*route.name) {
            r.findings.push(Finding {
                kind: "unused_route",
                agent: None,
                subject: route.name.to_string(),
                detail: format!("no call passed through it in {window}: remove it or confirm it is still needed"),
            });
        }
    }
    r.findings
        .sort_by(|a, b| (a.kind, &a.agent, &a.subject).cmp(&(b.kind, &b.agent, &b.subject)));
    r
}

/// The findings as CSV (`kind,agent,subject,detail`), quoted where needed.
pub fn to_csv(r: &Review) -> String {
    let q = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::from("kind,agent,subject,detail\n");
    for f in &r.findings {
        out.push_str(&format!(
            "{},{},{},{}\n",
            f.kind,
            q(f.agent.as_deref().unwrap_or("")),
            q(&f.subject),
            q(&f.detail)
        ));
    }
    out
}

/// The findings as an aligned text table.
pub fn to_table(r: &Review) -> String {
    let mut out = format!(
        "{:<15} {:<20} {:<28} {}\n",
        "KIND", "AGENT", "SUBJECT", "DETAIL"
    );
    for f in &r.findings {
        out.push_str(&format!(
            "{:<15} {:<20} {:<28} {}\n",
            f.kind,
            f.agent.as_deref().unwrap_or("-"),
            f.subject,
            f.detail
        ));
    }
    out
}

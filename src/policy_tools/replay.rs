//! `portcullis policy replay`: re-decide every logged call under a candidate configuration and
//! report what would change (allow → deny, deny → allow, ...), so a config change can be gated
//! in CI on evidence instead of hope.
//!
//! A call is re-decided with what the log holds: agent, method, host, path, query, client
//! address, time and the scopes its token carried. Runtime state (pauses, rate counters) is
//! left out on purpose: the question is what the *policy* decides. A condition that needs the
//! request body cannot be re-decided and is reported as such, never guessed.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, Method};
use serde::Serialize;

use super::calls::Call;
use crate::identity::VerifiedToken;
use crate::policy::conditions::BodyFact;
use crate::policy::limits::{LimitKey, VolumeLimit, VolumeView};
use crate::policy::{evaluate, normalize, Decision, RequestFacts, Snapshot};
use crate::proxy::refusal::Refusal;

/// Volume budgets are runtime state: replay sees every budget untouched.
struct FullBudgets;

impl VolumeView for FullBudgets {
    fn volume_remaining(
        &self,
        _key: &LimitKey,
        limit: &VolumeLimit,
    ) -> Result<u64, std::time::Duration> {
        Ok(limit.bytes)
    }
}

/// What the candidate decides for one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `allow`, `held` (needs approval) or `deny`.
    pub decision: &'static str,
    /// The route that decided it.
    pub route: Option<String>,
    /// The refusal code when denied.
    pub reason: Option<&'static str>,
}

/// One call whose decision changes.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The agent.
    pub agent: String,
    /// `METHOD path`.
    pub call: String,
    /// When it was made (RFC 3339).
    pub time: String,
    /// What the log says happened: decision, route, reason.
    pub before: (String, Option<String>, Option<String>),
    /// What the candidate decides.
    pub after: Outcome,
}

/// The replay's findings.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Calls re-decided.
    pub replayed: usize,
    /// Calls with the same decision.
    pub unchanged: usize,
    /// Calls whose decision changes, in log order.
    pub changes: Vec<Change>,
    /// Calls that could not be re-decided, with why.
    pub undecidable: Vec<(String, String)>,
}

impl Report {
    /// Changes counted by (agent, before → after, route), for the summary table.
    pub fn summary(&self) -> BTreeMap<(String, String, String), usize> {
        let mut out = BTreeMap::new();
        for c in &self.changes {
            let route = c
                .after
                .route
                .clone()
                .or_else(|| c.before.1.clone())
                .unwrap_or_else(|| "-".into());
            *out.entry((
                c.agent.clone(),
                format!("{} → {}", c.before.0, c.after.decision),
                route,
            ))
            .or_default() += 1;
        }
        out
    }
}

/// Re-decide one call under `snap`; `Err` when it cannot be.
pub fn decide(snap: &Snapshot, call: &Call) -> Result<Outcome, String> {
    let agent = call.agent.clone().unwrap_or_default();
    let method = Method::from_bytes(call.method.as_bytes())
        .map_err(|_| format!("method `{}` is not a method", call.method))?;
    let path = match normalize(&call.path, snap.settings.max_path_length) {
        Ok(p) => p,
        Err(_) => {
            return Ok(Outcome {
                decision: "deny",
                route: None,
                reason: Some("invalid_path"),
            })
        }
    };
    let token = VerifiedToken {
        issuer: Arc::from("replay"),
        subject: agent,
        on_behalf_of: None,
        prior_actors: Vec::new(),
        scopes: call.token_scopes.clone(),
        jti: None,
        iat: 0,
        exp: u64::MAX,
        approver: None,
        claims: Default::default(),
    };
    let host = call.host.as_deref().map(|h| {
        let h = match h.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => h.rsplit_once(':').map_or(h, |(h, _)| h),
        };
        h.trim_end_matches('.').to_ascii_lowercase()
    });
    let headers = HeaderMap::new();
    let mut facts = RequestFacts::plain(&method, &path, &token, &headers, &FullBudgets);
    facts.host = host.as_deref();
    facts.now = call.time;
    facts.query = call.query.as_deref();
    facts.client_ip = call
        .client
        .as_deref()
        .and_then(|c| c.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip());
    facts.body = BodyFact::NotRead;
    let route_name = |i: usize| snap.routes.routes[i].name.to_string();
    match evaluate(snap, &facts) {
        Decision::NeedBody(_) => {
            Err("a condition reads the request body, which the log does not keep".into())
        }
        Decision::Allow(a) => Ok(Outcome {
            decision: if a.approval.is_some() {
                "held"
            } else {
                "allow"
            },
            route: Some(route_name(a.route)),
            reason: None,
        }),
        Decision::Deny(d) => {
            let route = d.route().map(route_name);
            let code = Refusal::Policy(d).render("", None).code;
            Ok(Outcome {
                decision: "deny",
                route,
                reason: Some(code),
            })
        }
    }
}

/// Replay `calls` under `snap`. Calls that ended in an error (upstream down, client gone) are
/// replayed on their decision: `allow` if they were forwarded (the log says where they went).
pub fn replay(snap: &Snapshot, calls: &[Call]) -> Report {
    let mut r = Report::default();
    for call in calls {
        let what = format!("{} {}", call.method, call.path);
        let before = match call.decision.as_str() {
            "allow" | "held" | "deny" => call.decision.clone(),
            // Forwarded and then failed upstream or downstream: the policy had allowed it.
            "error" if call.upstream.is_some() => "allow".into(),
            _ => {
                r.undecidable.push((
                    what,
                    format!(
                        "it ended in `{}` before a decision",
                        call.reason.as_deref().unwrap_or("error")
                    ),
                ));
                continue;
            }
        };
        match decide(snap, call) {
            Err(why) => r.undecidable.push((what, why)),
            Ok(after) => {
                r.replayed += 1;
                if after.decision == before {
                    r.unchanged += 1;
                } else {
                    r.changes.push(Change {
                        agent: call.agent.clone().unwrap_or_default(),
                        call: what,
                        time: humantime::format_rfc3339_millis(call.time).to_string(),
                        before: (before, call.route.clone(), call.reason.clone()),
                        after,
                    });
                }
            }
        }
    }
    r
}

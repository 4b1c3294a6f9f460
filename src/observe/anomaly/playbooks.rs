//! Playbooks: what to do about a detection, escalating with repetition and held back by
//! cooldowns.
//!
//! For each [`Detection`], [`Playbooks::decide`] picks the first playbook (file order) whose
//! `tiers`/`agents` and `detectors` match, counts this agent's detections that playbook
//! handled within its `window` (this one included) as `n`, and plans `steps[n-1]` (the last
//! step once `n` passes the end). Then, in this order:
//!
//! 1. [`Action::Log`] always comes first: every detection is logged, whatever the step says.
//! 2. A shadow detection keeps only [`Action::Alert`]; the enforcing actions it would have run
//!    are listed in [`PlaybookDecision::shadowed`] (what enforcing would do), never carried out.
//! 3. An action of a kind that already ran for this agent within the playbook's `cooldown`
//!    goes to [`PlaybookDecision::suppressed`] instead, unless it is stricter than the one that
//!    ran (a lower throttle rate or a longer throttle, a longer step-up), so escalation is never
//!    held back by its own earlier, milder step.
//!
//! Shadow detections do not advance the escalation of enforced ones: a detector the operator
//! does not trust yet must not push an agent towards a pause. They are counted on their own
//! (together with the enforced ones), so a shadow decision shows the step enforcing would be at.
//!
//! With no matching playbook the decision is `[Log]` with `playbook: None` and `step: 0`.
//!
//! State is per agent: the last run of each action kind, and per playbook name the times of
//! the latest detections (at most `steps.len()` of them: the count never needs to go higher).
//! It survives [`Playbooks::set_config`]; call [`Playbooks::prune`] now and then to drop agents
//! whose windows and cooldowns have all passed.

use super::config::{duration_ms, MonitoringConfig, Playbook};
use super::Detection;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What a playbook step can do to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Record the detection (always done).
    Log,
    /// Notify people (webhook).
    Alert,
    /// Allow at most `requests` per `per`, for `for_`.
    Throttle {
        /// Requests per period.
        requests: u64,
        /// The period.
        per: Duration,
        /// How long the throttle stays.
        for_: Duration,
    },
    /// Every write of the agent needs human approval for this long.
    StepUp(Duration),
    /// Refuse every call of the agent until a person resumes it.
    Pause,
    /// Revoke every token of the agent issued before now.
    Revoke,
}

/// Number of action kinds, for per-kind state.
const KINDS: usize = 6;

impl Action {
    /// `log`, `alert`, `throttle`, `step_up`, `pause` or `revoke`: the YAML name and the metric
    /// label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Alert => "alert",
            Action::Throttle { .. } => "throttle",
            Action::StepUp(_) => "step_up",
            Action::Pause => "pause",
            Action::Revoke => "revoke",
        }
    }

    /// Whether the action only tells people (allowed for shadow detections).
    pub fn is_notice(&self) -> bool {
        matches!(self, Action::Log | Action::Alert)
    }

    fn kind(&self) -> usize {
        match self {
            Action::Log => 0,
            Action::Alert => 1,
            Action::Throttle { .. } => 2,
            Action::StepUp(_) => 3,
            Action::Pause => 4,
            Action::Revoke => 5,
        }
    }

    /// Whether `self` is stricter than `earlier`, an action of the same kind: a throttle with
    /// a lower rate or a longer duration, a longer step-up.
    fn stricter_than(&self, earlier: &Action) -> bool {
        match (self, earlier) {
            (
                Action::Throttle {
                    requests,
                    per,
                    for_,
                },
                Action::Throttle {
                    requests: r0,
                    per: p0,
                    for_: f0,
                },
            ) => {
                // requests/per < r0/p0, in integers.
                let lower_rate =
                    u128::from(*requests) * p0.as_nanos() < u128::from(*r0) * per.as_nanos();
                lower_rate || for_ > f0
            }
            (Action::StepUp(d), Action::StepUp(d0)) => d > d0,
            _ => false,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Throttle {
                requests,
                per,
                for_,
            } => write!(
                f,
                "throttle to {requests} per {} for {}",
                humantime::format_duration(*per),
                humantime::format_duration(*for_)
            ),
            Action::StepUp(d) => write!(f, "step_up for {}", humantime::format_duration(*d)),
            other => f.write_str(other.as_str()),
        }
    }
}

/// What to do about one detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybookDecision {
    /// The playbook that handled it; `None` when none matched.
    pub playbook: Option<Arc<str>>,
    /// The 1-based step that ran (capped at the number of steps); 0 when no playbook matched.
    pub step: usize,
    /// To carry out, in order; always starts with [`Action::Log`].
    pub actions: Vec<Action>,
    /// Planned but held back by the cooldown.
    pub suppressed: Vec<Action>,
    /// Planned but not run because the detection is shadow: what enforcing would have done.
    pub shadowed: Vec<Action>,
}

/// The latest detections one playbook handled for one agent.
#[derive(Debug, Clone, Default)]
struct Escalation {
    /// Enforced detections, newest last.
    enforced: VecDeque<i64>,
    /// All detections, shadow ones included, newest last.
    all: VecDeque<i64>,
}

/// Push `t`, forget what is `window_ms` old, keep at most `cap`; returns the count.
fn count(q: &mut VecDeque<i64>, t: i64, window_ms: i64, cap: usize) -> usize {
    // Keeping only the newest `cap` is exact for counts up to `cap`: anything older than the
    // newest `cap` leaves the window before they do.
    q.push_back(t);
    while q.len() > cap {
        q.pop_front();
    }
    while q.front().is_some_and(|&f| t - f >= window_ms) {
        q.pop_front();
    }
    q.len()
}

/// Playbook state of one agent.
#[derive(Debug, Clone, Default)]
struct AgentState {
    /// Per action kind: when it last ran and which one it was.
    ran: [Option<(i64, Action)>; KINDS],
    /// Per playbook name.
    escalations: Vec<(Arc<str>, Escalation)>,
    /// The latest detection, for [`Playbooks::prune`].
    last_ms: i64,
}

/// The playbook engine: decides, per detection, which actions to carry out.
#[derive(Debug)]
pub struct Playbooks {
    cfg: Arc<MonitoringConfig>,
    agents: HashMap<Arc<str>, AgentState>,
}

impl Playbooks {
    /// An engine with no history.
    pub fn new(cfg: Arc<MonitoringConfig>) -> Playbooks {
        Playbooks {
            cfg,
            agents: HashMap::new(),
        }
    }

    /// Take a reloaded configuration. Escalation counts are kept under the playbook's name,
    /// cooldowns per agent and action kind; a renamed playbook starts again at step 1.
    pub fn set_config(&mut self, cfg: Arc<MonitoringConfig>) {
        self.cfg = cfg;
        let names: Vec<&Arc<str>> = self.cfg.playbooks.iter().map(|p| &p.name).collect();
        for st in self.agents.values_mut() {
            st.escalations.retain(|(n, _)| names.contains(&n));
        }
    }

    /// Decide what to do about `d`, detected for an agent of `tier` (`standard` or
    /// `supervised`), at `now_ms` (normally `d.at_ms`). Records the decision, so the next
    /// detections escalate and cooldowns run from now.
    pub fn decide(&mut self, d: &Detection, tier: &str, now_ms: i64) -> PlaybookDecision {
        let Some(pb) = self
            .cfg
            .playbooks
            .iter()
            .find(|p| p.matches(&d.agent, tier, d.detector))
        else {
            return PlaybookDecision {
                playbook: None,
                step: 0,
                actions: vec![Action::Log],
                suppressed: Vec::new(),
                shadowed: Vec::new(),
            };
        };
        let st = self.agents.entry(Arc::clone(&d.agent)).or_default();
        st.last_ms = st.last_ms.max(now_ms);
        let step = escalate(st, pb, d.shadow, now_ms);
        let mut decision = PlaybookDecision {
            playbook: Some(Arc::clone(&pb.name)),
            step,
            actions: vec![Action::Log],
            suppressed: Vec::new(),
            shadowed: Vec::new(),
        };
        let cooldown = duration_ms(pb.cooldown);
        // Compiling refuses a playbook without steps; one built by hand just logs.
        let planned = step.checked_sub(1).and_then(|i| pb.steps.get(i));
        for a in planned.into_iter().flatten() {
            if *a == Action::Log {
                continue;
            }
            if d.shadow && !a.is_notice() {
                decision.shadowed.push(*a);
                continue;
            }
            let held = st.ran[a.kind()]
                .is_some_and(|(at, earlier)| now_ms - at < cooldown && !a.stricter_than(&earlier));
            if held {
                decision.suppressed.push(*a);
            } else {
                st.ran[a.kind()] = Some((now_ms, *a));
                decision.actions.push(*a);
            }
        }
        // People must hear of every restriction: an alert held back by the cooldown (say,
        // after another playbook's notice a minute ago) still goes out with a pause, a
        // throttle, a step-up or a revocation.
        if decision.actions.iter().any(|a| !a.is_notice()) {
            if let Some(i) = decision.suppressed.iter().position(|a| *a == Action::Alert) {
                decision.suppressed.remove(i);
                st.ran[Action::Alert.kind()] = Some((now_ms, Action::Alert));
                decision.actions.insert(1, Action::Alert);
            }
        }
        decision
    }

    /// Forget agents whose every playbook window and cooldown has passed at `now_ms`. Cheap
    /// enough to call every minute; the state is bounded by agents with recent detections.
    pub fn prune(&mut self, now_ms: i64) {
        let keep_ms = self
            .cfg
            .playbooks
            .iter()
            .map(|p| duration_ms(p.window).max(duration_ms(p.cooldown)))
            .max()
            .unwrap_or(0);
        self.agents
            .retain(|_, st| now_ms.saturating_sub(st.last_ms) < keep_ms);
    }

    /// How many agents have playbook state.
    pub fn tracked_agents(&self) -> usize {
        self.agents.len()
    }
}

/// Count a (shadow or enforced) detection at `now_ms` for `pb`; returns the 1-based step to
/// run (0 only for a playbook without steps).
fn escalate(st: &mut AgentState, pb: &Playbook, shadow: bool, now_ms: i64) -> usize {
    let idx = match st.escalations.iter().position(|(n, _)| *n == pb.name) {
        Some(i) => i,
        None => {
            st.escalations
                .push((Arc::clone(&pb.name), Escalation::default()));
            st.escalations.len() - 1
        }
    };
    let esc = &mut st.escalations[idx].1;
    let window = duration_ms(pb.window);
    let cap = pb.steps.len();
    let all = count(&mut esc.all, now_ms, window, cap);
    let n = if shadow {
        all
    } else {
        count(&mut esc.enforced, now_ms, window, cap)
    };
    n.min(cap)
}

#[cfg(test)]
#[path = "playbooks_tests.rs"]
mod tests;

//! The monitoring service: feeds finished calls to the anomaly detectors ([`super::anomaly`])
//! off the request path, and carries out what the playbooks decide — log, alert, throttle,
//! step-up, pause, revoke — through the runtime agent state, the same way an operator would.
//!
//! # The request path pays one `try_send`
//!
//! The proxy's logging phase builds a [`CallEvent`] (a few `Arc` clones) and puts it in a
//! bounded queue ([`MonitorHandle::observe`]). A full queue drops the event and counts it
//! (`portcullis_monitor_events_dropped_total`): under overload detection is best effort, and it
//! never slows or blocks traffic. Everything else — detectors, playbooks, alerts, state
//! changes — runs in one background task.
//!
//! # Bounded reaction time
//!
//! Detection is asynchronous, so between the call that trips a detector and the pause a few
//! more calls of the agent may be decided (those already in flight, and those that arrive in
//! the milliseconds the task takes). The task takes events in batches and lets them gather for
//! [`BATCH_DELAY`] after each batch: under load it wakes once per batch instead of once per
//! call, and a detection waits at most that much longer. The scenario test bounds this: the pause lands within a
//! handful of calls, and nothing after it reaches the tool.
//!
//! # Baselines survive restarts
//!
//! Every [`PERSIST_EVERY`], and once more after the server stopped (`server::run`), the
//! monitor's baselines are exported into the agent-state store (`blobs` table, key
//! [`BASELINE_KEY`]), and imported at start.

use super::alert::{AlertNotice, EVENT_ANOMALY};
use super::anomaly::playbooks::Action;
use super::anomaly::{CallEvent, Detection, Monitor, MonitoringConfig, Playbooks};
use super::LogTime;
use crate::approval::notify::Notifier;
use crate::approval::rfc3339_ms;
use crate::policy::snapshot::WebhookSettings;
use crate::state::agent_state::Change;
use crate::state::GatewayState;
use crate::util::lock;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Events waiting for the monitor; past that they are dropped and counted.
pub const QUEUE_CAPACITY: usize = 65_536;
/// Alerts waiting for the webhook sender (rare events; a burst beyond this is logged).
const ALERT_QUEUE_CAPACITY: usize = 1024;
/// Most events taken off the queue at once.
const BATCH: usize = 1024;
/// How long the task lets events gather after a batch; bounds the extra detection delay.
const BATCH_DELAY: Duration = Duration::from_millis(1);
/// How often baselines are saved.
pub const PERSIST_EVERY: Duration = Duration::from_secs(60);
/// Key of the baselines in the agent-state store.
pub const BASELINE_KEY: &str = "monitor.baselines";

/// What the detectors and playbooks keep; shared with the admin API (inventory activity).
struct Core {
    monitor: Monitor,
    playbooks: Playbooks,
    config: Arc<MonitoringConfig>,
}

/// The request path's side of the monitor, kept in [`GatewayState`].
pub struct MonitorHandle {
    tx: mpsc::Sender<CallEvent>,
    rx: Mutex<Option<mpsc::Receiver<CallEvent>>>,
    /// Alerts raised outside the detectors (a changed MCP tool definition), sent by the same
    /// webhooks.
    alert_tx: mpsc::Sender<AlertNotice>,
    alert_rx: Mutex<Option<mpsc::Receiver<AlertNotice>>>,
    core: Arc<Mutex<Core>>,
}

impl MonitorHandle {
    /// A monitor for `config`, its baselines loaded from `baselines` (the export of an earlier
    /// process) when given.
    pub fn new(config: Arc<MonitoringConfig>, baselines: Option<&Value>) -> MonitorHandle {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (alert_tx, alert_rx) = mpsc::channel(ALERT_QUEUE_CAPACITY);
        let mut monitor = Monitor::new(config.clone());
        if let Some(b) = baselines {
            if let Err(e) = monitor.import(b) {
                tracing::warn!(error = %e, "monitoring baselines could not be read; starting from scratch");
            }
        }
        MonitorHandle {
            tx,
            rx: Mutex::new(Some(rx)),
            alert_tx,
            alert_rx: Mutex::new(Some(alert_rx)),
            core: Arc::new(Mutex::new(Core {
                monitor,
                playbooks: Playbooks::new(config.clone()),
                config,
            })),
        }
    }

    /// Send an alert to the security team's webhook (`monitoring.alerts.webhook`); dropped
    /// with a warning when the queue is full.
    pub fn alert(&self, n: AlertNotice) {
        if self.alert_tx.try_send(n).is_err() {
            tracing::warn!("alert queue full: an alert was dropped");
        }
    }

    /// Hand a finished call to the monitor; never waits. `false` when the queue was full (the
    /// caller counts it).
    pub fn observe(&self, ev: CallEvent) -> bool {
        self.tx.try_send(ev).is_ok()
    }

    /// What the monitor saw of `agent`, for the inventory.
    pub fn activity(&self, agent: &str) -> Option<Value> {
        let now = crate::approval::now_ms();
        let core = lock(&self.core);
        let s = core.monitor.agent_stats(agent, now)?;
        let day_ago = now - 86_400_000;
        let recent: Vec<Value> = s
            .recent
            .iter()
            .rev()
            .map(|r| {
                json!({
                    "at": rfc3339_ms(r.at_ms),
                    "detector": r.detector.as_str(),
                    "shadow": r.shadow,
                    "summary": &*r.summary,
                })
            })
            .collect();
        Some(json!({
            "first_seen": rfc3339_ms(s.first_seen_ms),
            "last_seen": rfc3339_ms(s.last_seen_ms),
            "calls_24h": s.calls_24h,
            "denials_24h": s.denials_24h,
            "anomalies_24h": s.recent.iter().filter(|r| r.at_ms > day_ago).count(),
            "recent_anomalies": recent,
        }))
    }

    /// The baselines, for saving.
    fn export(&self) -> Value {
        lock(&self.core).monitor.export()
    }

    /// Save the baselines into `store` (periodically, and once more when the process stops).
    pub fn persist(&self, store: &dyn crate::state::agent_state::AgentStateStore) {
        if !lock(&self.core).config.any_on() {
            return;
        }
        let blob = self.export();
        if let Err(e) = store.save_blob(BASELINE_KEY, &blob, crate::approval::now_ms()) {
            tracing::warn!(error = %e, "cannot save monitoring baselines");
        }
    }

    /// Forget what the detectors learnt of `agent` (an operator accepts its new behaviour as
    /// normal); it warms up anew. `false` when nothing was known.
    pub fn forget(&self, agent: &str) -> bool {
        lock(&self.core).monitor.forget_agent(agent)
    }

    /// Drop playbook state past every window and cooldown, and the trackers of agents no
    /// longer in the configuration.
    fn tidy(&self, snap: &crate::policy::Snapshot) {
        let mut core = lock(&self.core);
        core.playbooks.prune(crate::approval::now_ms());
        core.monitor.retain_agents(|a| snap.agents.contains_key(a));
    }

    /// How many agents the detectors track.
    pub fn tracked_agents(&self) -> usize {
        lock(&self.core).monitor.tracked_agents()
    }
}

/// The audit line of a detection (`event: anomaly`).
#[derive(Serialize)]
struct AnomalyEvent<'a> {
    time: LogTime,
    event: &'static str,
    alert_id: &'a str,
    agent: &'a str,
    owner: &'a str,
    tier: &'static str,
    detector: &'static str,
    shadow: bool,
    summary: &'a str,
    details: &'a Map<String, Value>,
    playbook: Option<&'a str>,
    step: usize,
    actions: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    suppressed: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shadowed: Vec<&'static str>,
}

/// The configured alert webhooks: the general one, and each owner's (sorted).
type AlertTargets = (Option<WebhookSettings>, Vec<(String, WebhookSettings)>);

/// Alert senders, rebuilt when the configured webhooks change.
#[derive(Default)]
struct Alerters {
    config: Option<AlertTargets>,
    general: Option<Notifier<AlertNotice>>,
    owners: HashMap<String, Notifier<AlertNotice>>,
}

/// The background task: takes events off the queue, runs detectors and playbooks, acts.
pub struct MonitorService {
    /// Process state (the snapshot, the agent-state store, metrics, the access log).
    pub state: Arc<GatewayState>,
}

impl MonitorService {
    fn sync_config(&self, core: &mut Core) {
        let current = self.state.snapshot.load().monitoring.clone();
        if Arc::ptr_eq(&current, &core.config) {
            return;
        }
        // A reload that left `monitoring:` as it was keeps the detectors' state untouched.
        if *current != *core.config {
            core.monitor.set_config(current.clone());
            core.playbooks.set_config(current.clone());
        }
        core.config = current;
    }

    fn alerters(&self, a: &mut Alerters) {
        let snap = self.state.snapshot.load();
        let mut owners: Vec<(String, WebhookSettings)> = snap
            .alerts
            .owners
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        owners.sort_by(|x, y| x.0.cmp(&y.0));
        let wanted = (snap.alerts.webhook.clone(), owners);
        if a.config.as_ref() == Some(&wanted) {
            return;
        }
        let m = &self.state.metrics;
        let start = |w: &WebhookSettings| {
            Notifier::start(
                Some(w.to_config()),
                m.approval_notifications_sent.clone(),
                m.approval_notification_failures.clone(),
            )
        };
        a.general = wanted.0.as_ref().map(start);
        a.owners = wanted
            .1
            .iter()
            .map(|(o, w)| (o.clone(), start(w)))
            .collect();
        a.config = Some(wanted);
    }

    async fn handle(&self, ev: CallEvent, alerters: &mut Alerters) {
        let (detections, decisions) = {
            let mut core = lock(&self.state.monitor.core);
            self.sync_config(&mut core);
            let detections = core.monitor.observe(&ev);
            let decisions: Vec<_> = detections
                .iter()
                .map(|d| core.playbooks.decide(d, ev.tier, d.at_ms))
                .collect();
            (detections, decisions)
        };
        if detections.is_empty() {
            return;
        }
        self.alerters(alerters);
        for (d, decision) in detections.iter().zip(decisions) {
            self.act(&ev, d, decision, alerters).await;
        }
    }

    async fn act(
        &self,
        ev: &CallEvent,
        d: &Detection,
        decision: super::anomaly::playbooks::PlaybookDecision,
        alerters: &Alerters,
    ) {
        let s = &self.state;
        let snap = s.snapshot.load_full();
        let owner = snap
            .agents
            .get(&*d.agent)
            .map(|a| a.owner.to_string())
            .unwrap_or_default();
        let alert_id = uuid::Uuid::now_v7().simple().to_string();
        let mode = if d.shadow { "shadow" } else { "enforce" };
        s.metrics
            .anomalies
            .with_label_values(&[&d.agent, d.detector.as_str(), mode])
            .inc();
        let names = |v: &[Action]| v.iter().map(Action::as_str).collect::<Vec<_>>();
        s.access_log.log(&AnomalyEvent {
            time: LogTime(SystemTime::now()),
            event: "anomaly",
            alert_id: &alert_id,
            agent: &d.agent,
            owner: &owner,
            tier: ev.tier,
            detector: d.detector.as_str(),
            shadow: d.shadow,
            summary: &d.summary,
            details: &d.details,
            playbook: decision.playbook.as_deref(),
            step: decision.step,
            actions: names(&decision.actions),
            suppressed: names(&decision.suppressed),
            shadowed: names(&decision.shadowed),
        });
        tracing::warn!(agent = %d.agent, detector = d.detector.as_str(), shadow = d.shadow, actions = ?names(&decision.actions), "anomaly: {}", d.summary);
        let playbook = decision.playbook.as_deref().unwrap_or("default");
        let by = format!("playbook:{playbook}");
        let undo = format!(
            "automatic action of playbook `{playbook}` on {}; an operator undoes it with `portcullis agents resume {}` (pause) or `lift` (throttle, step-up)",
            d.detector.as_str(),
            d.agent
        );
        let reason = format!("{}: {} ({undo})", d.detector.as_str(), d.summary);
        let now = crate::approval::now_ms();
        let mut taken = Vec::new();
        for action in &decision.actions {
            s.metrics
                .playbook_actions
                .with_label_values(&[&d.agent, action.as_str()])
                .inc();
            let agent = d.agent.to_string();
            let change = match *action {
                Action::Log | Action::Alert => None,
                Action::Throttle {
                    requests,
                    per,
                    for_,
                } => Some(Change::Throttle {
                    agent,
                    requests: u32::try_from(requests).unwrap_or(u32::MAX),
                    per,
                    until_ms: now.saturating_add(for_.as_millis() as i64),
                }),
                Action::StepUp(for_) => Some(Change::StepUp {
                    agent,
                    until_ms: now.saturating_add(for_.as_millis() as i64),
                }),
                Action::Pause => Some(Change::Pause { agent }),
                Action::Revoke => Some(Change::RevokeAgentTokens {
                    agent,
                    before: (now / 1000) as u64,
                }),
            };
            if let Some(change) = change {
                if let Err(e) =
                    crate::admin::agents::apply_change(s, change, &by, "playbook", &reason).await
                {
                    tracing::error!(agent = %d.agent, action = action.as_str(), error = %e, "playbook action failed");
                    continue;
                }
            }
            if *action != Action::Log {
                taken.push(action.as_str().to_string());
            }
        }
        if decision.actions.contains(&Action::Alert) {
            let restricted = decision.actions.iter().any(|a| !a.is_notice());
            let notice = AlertNotice {
                event: EVENT_ANOMALY,
                alert_id: alert_id.clone(),
                time: rfc3339_ms(d.at_ms),
                severity: if restricted { "critical" } else { "warning" },
                agent: d.agent.to_string(),
                owner: owner.clone(),
                tier: ev.tier,
                detector: d.detector.as_str(),
                shadow: d.shadow,
                summary: d.summary.clone(),
                details: d.details.clone(),
                playbook: decision.playbook.as_deref().map(str::to_string),
                actions: taken,
                override_hint: undo,
                link: format!("{}/console/agents#/agents/{}", console_base(&snap), d.agent),
            };
            if let Some(o) = alerters.owners.get(&owner) {
                o.notify(notice.clone());
            }
            if let Some(g) = &alerters.general {
                g.notify(notice);
            }
        }
    }
}

/// The admin listener's base URL, for links in alerts.
fn console_base(snap: &crate::policy::Snapshot) -> String {
    match &snap.approvals {
        Some(a) => a
            .console_url
            .trim_end_matches("/console")
            .trim_end_matches('/')
            .to_string(),
        None => format!("http://{}", snap.settings.admin_listen),
    }
}

#[async_trait]
impl BackgroundService for MonitorService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = lock(&self.state.monitor.rx).take() else {
            return;
        };
        let Some(mut alert_rx) = lock(&self.state.monitor.alert_rx).take() else {
            return;
        };
        let mut alerters = Alerters::default();
        let mut batch = Vec::with_capacity(BATCH);
        let mut persist = tokio::time::interval(PERSIST_EVERY);
        persist.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    for ev in batch.drain(..) {
                        self.handle(ev, &mut alerters).await;
                    }
                    // Let the next events gather: the proxy's sends wake this task only while
                    // it waits in `recv_many`, so under load it wakes once per batch, not once
                    // per call (a cross-thread wake-up per call cost more CPU than detection).
                    tokio::time::sleep(BATCH_DELAY).await;
                },
                Some(n) = alert_rx.recv() => {
                    self.alerters(&mut alerters);
                    if let Some(g) = &alerters.general {
                        g.notify(n);
                    }
                },
                _ = persist.tick() => {
                    self.state.monitor.tidy(&self.state.snapshot.load());
                    let st = self.state.clone();
                    let _ = tokio::task::spawn_blocking(move || st.monitor.persist(&*st.agent_state)).await;
                }
            }
        }
        // What is still queued was decided already: learn from it; `server::run` saves the
        // baselines once every runtime has stopped.
        while let Ok(ev) = rx.try_recv() {
            self.handle(ev, &mut alerters).await;
        }
        for n in alerters.general.iter().chain(alerters.owners.values()) {
            n.flush(Duration::from_secs(2));
        }
    }
}

/// The event of one finished call of a registered agent, or `None` when monitoring is off.
/// Built in the proxy's logging phase.
#[allow(clippy::too_many_arguments)]
pub fn call_event(
    snap: &crate::policy::Snapshot,
    agent: &crate::policy::Agent,
    route: Option<&crate::policy::Route>,
    method: &str,
    denied: Option<&'static str>,
    request_bytes: u64,
    response_bytes: u64,
    at: SystemTime,
) -> Option<CallEvent> {
    if !snap.monitoring.any_on() {
        return None;
    }
    Some(CallEvent {
        agent: agent.id.clone(),
        tier: agent.tier(),
        at_ms: crate::util::unix_ms(at),
        route: route.map(|r| r.name.clone()),
        upstream: route.map(|r| snap.upstreams[r.upstream].name.clone()),
        tags: route.map_or_else(|| Arc::from([]), |r| r.tags.clone()),
        write: !matches!(method, "GET" | "HEAD" | "OPTIONS"),
        denied,
        request_bytes,
        response_bytes,
    })
}

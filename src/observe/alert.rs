//! Monitoring alerts: what the webhook of a playbook's `alert` action carries. Delivered by the
//! same sender as approval notices ([`crate::approval::notify::Notifier`]): a JSON object that a
//! SIEM can index field by field, plus a Slack-compatible `text` line for people.

use crate::approval::notify::{slack_escape, Notice};
use serde::Serialize;
use serde_json::{Map, Value};

/// `event` of an alert.
pub const EVENT_ANOMALY: &str = "agent_anomaly";

/// One alert: an anomaly of one agent and what the playbook did about it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertNotice {
    /// Always [`EVENT_ANOMALY`].
    pub event: &'static str,
    /// Unique id of this alert (also in the access-log line of the detection).
    pub alert_id: String,
    /// When the anomaly was detected, RFC 3339.
    pub time: String,
    /// `warning` for shadow detections or notice-only actions, `critical` when the playbook
    /// restricted the agent.
    pub severity: &'static str,
    /// The agent.
    pub agent: String,
    /// Its accountable human.
    pub owner: String,
    /// Its trust tier.
    pub tier: &'static str,
    /// Which detector fired (`first_seen`, `rate`, `denial_burst`, `volume`, `off_hours`,
    /// `sensitive_sequence`).
    pub detector: &'static str,
    /// The detector only reports (shadow): no restriction was applied.
    pub shadow: bool,
    /// One sentence with the numbers.
    pub summary: String,
    /// The detector's figures.
    pub details: Map<String, Value>,
    /// The playbook that handled it, if any.
    pub playbook: Option<String>,
    /// The actions taken (`alert`, `throttle`, `step_up`, `pause`, `revoke`...).
    pub actions: Vec<String>,
    /// How a person undoes the automatic actions.
    pub override_hint: String,
    /// The console page of agents.
    pub link: String,
}

impl Notice for AlertNotice {
    fn log_id(&self) -> &str {
        &self.alert_id
    }

    fn text(&self) -> String {
        let icon = if self.severity == "critical" {
            ":rotating_light:"
        } else {
            ":warning:"
        };
        let did = if self.actions.is_empty() {
            "no action".to_string()
        } else {
            self.actions.join(", ")
        };
        format!(
            "{icon} {agent} (owner {owner}, {tier}): {detector}{shadow}. {summary} Actions: {did}. {hint} <{link}|agents console>",
            agent = slack_escape(&self.agent),
            owner = slack_escape(&self.owner),
            tier = self.tier,
            detector = self.detector,
            shadow = if self.shadow { " (shadow: report only)" } else { "" },
            summary = slack_escape(&self.summary),
            hint = slack_escape(&self.override_hint),
            link = self.link.replace('<', "%3C").replace('>', "%3E").replace('|', "%7C"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_text_escapes_what_agents_control_and_names_the_override() {
        let a = AlertNotice {
            event: EVENT_ANOMALY,
            alert_id: "al-1".into(),
            time: "2026-12-03T06:00:00.000Z".into(),
            severity: "critical",
            agent: "bot<https://evil|click>".into(),
            owner: "alice@example.com".into(),
            tier: "supervised",
            detector: "denial_burst",
            shadow: false,
            summary: "12 refusals in 1m (threshold 10)".into(),
            details: Map::new(),
            playbook: Some("contain".into()),
            actions: vec!["alert".into(), "pause".into()],
            override_hint: "resume with `portcullis agents resume bot`".into(),
            link: "http://127.0.0.1:9901/console/agents".into(),
        };
        let t = a.text();
        assert!(t.starts_with(":rotating_light: bot&lt;https://evil|click&gt; (owner alice@example.com, supervised): denial_burst."), "{t}");
        assert!(t.contains("Actions: alert, pause."), "{t}");
        assert!(
            t.ends_with("<http://127.0.0.1:9901/console/agents|agents console>"),
            "{t}"
        );
        let body = serde_json::to_value(&a).unwrap();
        assert_eq!(body["event"], "agent_anomaly");
        assert_eq!(body["actions"], serde_json::json!(["alert", "pause"]));
    }
}

//! Compiling `monitoring:`: the detectors and playbooks ([`compile_monitoring`]) and where
//! alerts go.

use super::*;
use crate::config::compile_monitoring::compile_monitoring;
use crate::observe::anomaly::MonitoringConfig;
use crate::policy::snapshot::AlertSettings;

impl Compiler<'_> {
    pub(super) fn monitoring(
        &mut self,
        raw: &RawConfig,
        has_approvals: bool,
    ) -> (Arc<MonitoringConfig>, AlertSettings) {
        let Some(m) = &raw.monitoring else {
            return Default::default();
        };
        let tags: BTreeSet<String> = raw
            .routes
            .iter()
            .flat_map(|(_, r)| r.tags.iter().cloned())
            .collect();
        let cfg = compile_monitoring(m, &tags, &mut |path, msg| self.invalid(path, msg));
        // A step-up sends the agent's writes to a person: without approvals every write would
        // be refused instead, which is a pause by another name. Say so at load time.
        if !has_approvals {
            for (i, p) in cfg.playbooks.iter().enumerate() {
                let step_up =
                    p.steps.iter().flatten().any(|a| {
                        matches!(a, crate::observe::anomaly::playbooks::Action::StepUp(_))
                    });
                if step_up {
                    self.invalid(
                        format!("monitoring.playbooks[{i}].steps"),
                        "`step_up` sends the agent's writes to human approval: add an `approvals:` section, or use `pause`",
                    );
                }
            }
        }
        let mut alerts = AlertSettings::default();
        if let Some(a) = &m.alerts {
            alerts.webhook = a
                .webhook
                .as_ref()
                .map(|w| self.webhook("monitoring.alerts.webhook", w));
            let owners: BTreeSet<&str> = raw.agents.iter().map(|(_, a)| a.owner.as_str()).collect();
            for (owner, w) in &a.owners {
                let p = format!("monitoring.alerts.owners.{owner}");
                if !owners.contains(owner.as_str()) {
                    self.invalid(
                        p.clone(),
                        format!(
                            "no agent is owned by `{owner}` (a typo?); owners: {}",
                            owners.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
                let ws = self.webhook(&p, w);
                alerts.owners.insert(owner.clone(), ws);
            }
        }
        (Arc::new(cfg), alerts)
    }
}

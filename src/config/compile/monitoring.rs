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
        let known: BTreeSet<&str> = raw.agents.iter().map(|(_, a)| a.id.as_str()).collect();
        for (i, p) in cfg.playbooks.iter().enumerate() {
            for a in &p.agents {
                if !known.contains(&**a) {
                    self.invalid(
                        format!("monitoring.playbooks[{i}].agents"),
                        format!("`{a}` is not a configured agent (a typo?)"),
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

#[cfg(test)]
mod tests {
    use crate::config::{load_str, LoadContext};
    use crate::identity::KeyStore;
    use std::path::Path;
    use std::sync::Arc;

    fn load(monitoring: &str) -> Result<crate::policy::Snapshot, crate::config::ConfigError> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
        let text = format!(
            "issuers:
  - name: idp
    issuer: https://idp.example.test
    audiences: [tools]
    algorithms: [ES256]
    jwks_file: {dir}/jwks.json
agents:
  - id: bot
    owner: alice@example.com
    scopes: [tickets:read]
upstreams:
  - name: tickets
    url: http://127.0.0.1:9/
routes:
  - name: tickets
    path: /api/**
    upstream: tickets
    scopes: [tickets:read]
    tags: [private_data]
{monitoring}"
        );
        let ctx = LoadContext::new(KeyStore::new(Arc::new(|_| {})), 1);
        load_str(&text, Path::new("."), "<test>", &ctx)
    }

    #[test]
    fn monitoring_names_only_configured_agents_and_owners_and_step_up_needs_approvals() {
        let ok = load(
            "monitoring:
  detectors:
    denial_burst: {}
  playbooks:
    - name: p
      agents: [bot]
      steps: [[alert, pause]]
  alerts:
    webhook: {url: \"http://127.0.0.1:9/hook\", timeout: 2s}
    owners:
      alice@example.com: {url: \"http://127.0.0.1:9/alice\"}
",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.monitoring.any_on());
        assert_eq!(ok.alerts.webhook.as_ref().unwrap().timeout.as_secs(), 2);
        assert!(ok.alerts.owners.contains_key("alice@example.com"));
        let off = load("").unwrap();
        assert!(!off.monitoring.any_on());

        let err = load(
            "monitoring:
  detectors:
    denial_burst: {}
  playbooks:
    - name: p
      agents: [bto]
      steps: [[alert, {step_up: 1h}]]
  alerts:
    webhook: {url: \"ftp://x\"}
    owners:
      alcie@example.com: {url: \"http://127.0.0.1:9/alice\"}
",
        )
        .expect_err("refused")
        .to_string();
        for want in [
            "monitoring.playbooks[0].agents: `bto` is not a configured agent",
            "monitoring.playbooks[0].steps: `step_up` sends the agent's writes to human approval",
            "monitoring.alerts.webhook.url: `ftp://x` is not an http(s) URL",
            "monitoring.alerts.owners.alcie@example.com: no agent is owned by `alcie@example.com`",
        ] {
            assert!(err.contains(want), "no `{want}` in {err}");
        }
    }
}

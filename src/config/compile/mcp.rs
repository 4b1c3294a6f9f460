//! Compiling a route's `mcp:` section (and `kind: mcp`).

use super::*;
use crate::config::raw::{RawMcp, RawMcpRule};
use crate::policy::mcp::{Kind, McpPolicy, McpRule, ToolChanges};

/// Longest `approval_wait`: common MCP clients give up on a request after about 60 s, and a
/// call they gave up on would be approved for nobody.
const MAX_APPROVAL_WAIT: Duration = Duration::from_secs(55);

impl Compiler<'_> {
    /// The MCP policy of route `r` at `p`, or `None` for an HTTP route. `upstream_mcp`: the
    /// route's upstream is `kind: mcp`.
    pub(super) fn route_mcp(
        &mut self,
        p: &str,
        r: &RawRoute,
        upstream_mcp: bool,
        approvals: Option<&ApprovalSettings>,
    ) -> Option<Arc<McpPolicy>> {
        let is_mcp = match r.kind.as_deref() {
            None => upstream_mcp || r.mcp.is_some(),
            Some("mcp") => true,
            Some("http") => {
                if r.mcp.is_some() || upstream_mcp {
                    self.invalid(
                        format!("{p}.kind"),
                        "`http` contradicts the route's `mcp:` section or its `kind: mcp` upstream",
                    );
                }
                false
            }
            Some(other) => {
                self.invalid(
                    format!("{p}.kind"),
                    format!("`{other}` is not `http` or `mcp`"),
                );
                false
            }
        };
        if !is_mcp {
            return None;
        }
        if r.approval.is_some() {
            self.invalid(
                format!("{p}.approval"),
                "an MCP route cannot need approval as a whole (that would hold `initialize` and every list); put `approval:` on the tool rules under `mcp.tools`",
            );
        }
        if r.websocket {
            self.invalid(
                format!("{p}.websocket"),
                "an MCP route speaks Streamable HTTP, not WebSocket",
            );
        }
        let empty = RawMcp::default();
        let m = r.mcp.as_ref().unwrap_or(&empty);
        let base = format!("{p}.mcp");
        let max_body = m.max_body_bytes.unwrap_or(1024 * 1024);
        if max_body == 0 {
            self.invalid(format!("{base}.max_body_bytes"), "must be at least 1");
        }
        let approval_wait = self.duration(
            &format!("{base}.approval_wait"),
            &m.approval_wait,
            Duration::from_secs(25),
        );
        if approval_wait > MAX_APPROVAL_WAIT {
            self.invalid(
                format!("{base}.approval_wait"),
                format!("at most {}s: MCP clients give up on a request after about 60 s, so a longer wait only loses the answer; the approval stays open and the agent's retry runs once it is approved", MAX_APPROVAL_WAIT.as_secs()),
            );
        }
        let tool_changes = match m.tool_changes.as_deref() {
            None | Some("report") => ToolChanges::Report,
            Some("approve") => {
                if approvals.is_none() {
                    self.invalid(
                        format!("{base}.tool_changes"),
                        "`approve` needs an `approvals:` section (store and approvers)",
                    );
                }
                ToolChanges::Approve
            }
            Some("deny") => ToolChanges::Deny,
            Some(other) => {
                self.invalid(
                    format!("{base}.tool_changes"),
                    format!("`{other}` is not `report`, `approve` or `deny`"),
                );
                ToolChanges::Report
            }
        };
        let mut rules = Vec::new();
        for (list, kind, field) in [
            ("tools", Kind::Tool, "name"),
            ("prompts", Kind::Prompt, "name"),
            ("resources", Kind::Resource, "uri"),
        ] {
            let raw: &[RawMcpRule] = match kind {
                Kind::Tool => &m.tools,
                Kind::Prompt => &m.prompts,
                Kind::Resource => &m.resources,
            };
            for (j, rule) in raw.iter().enumerate() {
                let rp = format!("{base}.{list}[{j}]");
                if let Some(x) = self.mcp_rule(&rp, &r.name, kind, field, rule, approvals) {
                    rules.push(x);
                }
            }
        }
        let mut policy = McpPolicy::new(rules, max_body, approval_wait, tool_changes);
        policy.log_arguments = m.log_arguments;
        Some(Arc::new(policy))
    }

    fn mcp_rule(
        &mut self,
        rp: &str,
        route: &str,
        kind: Kind,
        field: &str,
        rule: &RawMcpRule,
        approvals: Option<&ApprovalSettings>,
    ) -> Option<McpRule> {
        let (wanted, other) = match kind {
            Kind::Resource => (&rule.uri, &rule.name),
            Kind::Tool | Kind::Prompt => (&rule.name, &rule.uri),
        };
        if other.is_some() {
            let wrong = if field == "uri" { "name" } else { "uri" };
            self.invalid(
                format!("{rp}.{wrong}"),
                format!("a {} rule is named by `{field}`", kind.as_str()),
            );
        }
        let Some(pattern) = wanted else {
            self.invalid(rp, format!("a {} rule needs `{field}`", kind.as_str()));
            return None;
        };
        let mut ok = true;
        for (f, list) in [("scopes", &rule.scopes), ("any_of", &rule.any_of)] {
            for (j, s) in list.iter().enumerate() {
                if !valid_scope(s) {
                    self.invalid(
                        format!("{rp}.{f}[{j}]"),
                        format!("`{s}` is not a scope (no spaces, not empty)"),
                    );
                    ok = false;
                }
            }
        }
        let approval = rule.approval.as_ref().and_then(|a| {
            self.approval_policy(
                &format!("{rp}.approval"),
                a,
                approvals,
                Duration::from_secs(600),
            )
        });
        let limits = compile_limits(
            &format!("{rp}.limits"),
            rule.limits.iter().enumerate(),
            Origin::Route,
            &mut |path, msg| self.invalid(path, msg),
        );
        let conditions = self.conditions(
            &format!("{rp}.conditions"),
            &rule.conditions,
            approvals.is_some(),
        );
        match McpRule::new(
            route,
            kind,
            pattern,
            rule.scopes.clone(),
            rule.any_of.clone(),
            conditions,
            limits,
            approval.map(Arc::new),
        ) {
            Ok(r) if ok => Some(r),
            Ok(_) => None,
            Err(e) => {
                self.invalid(format!("{rp}.{field}"), e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load_str, LoadContext};
    use crate::observe::Metrics;
    use crate::state::new_key_store;
    use std::path::Path;
    use std::sync::Arc;

    /// A config with an MCP upstream and `route` (indented as a list item of `routes:`).
    fn load(route: &str, approvals: bool) -> Result<crate::policy::Snapshot, String> {
        let approvals = if approvals {
            "approvals:\n  store: /tmp/never-opened.db\n  approvers:\n    - name: alice\n      token_sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"\n"
        } else {
            ""
        };
        let yaml = format!(
            "issuers:\n  - name: idp\n    issuer: https://idp.test\n    audiences: [t]\n    algorithms: [ES256]\n    jwks_file: {}/tests/fixtures/keys/jwks.json\n\
             agents:\n  - id: bot\n    owner: alice@example.com\n    scopes: [t:read]\n\
             upstreams:\n  - name: tools\n    url: http://127.0.0.1:9/\n    kind: mcp\n  - name: plain\n    url: http://127.0.0.1:9/\n\
             routes:\n{route}{approvals}",
            env!("CARGO_MANIFEST_DIR")
        );
        let metrics = Arc::new(Metrics::new());
        let ctx = LoadContext::new(new_key_store(&metrics), 1);
        load_str(&yaml, Path::new("."), "<test>", &ctx).map_err(|e| e.to_string())
    }

    #[test]
    fn an_mcp_upstream_makes_its_routes_mcp_with_long_reads() {
        let snap = load(
            "  - name: m\n    path: /mcp\n    upstream: tools\n    scopes: [t:read]\n    mcp:\n      tools:\n        - name: \"search_*\"\n          scopes: [t:read]\n",
            false,
        )
        .unwrap();
        let m = snap.routes.routes[0].mcp.as_ref().expect("an MCP route");
        assert_eq!(m.rules.len(), 1);
        assert_eq!(&*m.rules[0].key, "m/tool:search_*");
        assert_eq!(snap.upstreams[0].read_timeout.as_secs(), 300);
        assert_eq!(snap.upstreams[1].read_timeout.as_secs(), 30);
        // `kind: mcp` on a route to a plain upstream works too, with no rules: deny by default.
        let snap = load(
            "  - name: m\n    path: /mcp\n    upstream: plain\n    kind: mcp\n    scopes: [t:read]\n",
            false,
        )
        .unwrap();
        assert!(snap.routes.routes[0]
            .mcp
            .as_ref()
            .is_some_and(|m| m.rules.is_empty()));
    }

    #[test]
    fn mistakes_in_mcp_rules_are_reported_with_their_path() {
        let cases = [
            (
                "    approval: {mode: hold}\n",
                true,
                "routes[0].approval: an MCP route cannot need approval as a whole",
            ),
            (
                "    mcp:\n      tools:\n        - scopes: [t:read]\n",
                false,
                "routes[0].mcp.tools[0]: a tool rule needs `name`",
            ),
            (
                "    mcp:\n      resources:\n        - name: x\n",
                false,
                "routes[0].mcp.resources[0].name: a resource rule is named by `uri`",
            ),
            (
                "    mcp:\n      tools:\n        - name: \"a[\"\n",
                false,
                "routes[0].mcp.tools[0].name: `a[` is not a valid pattern",
            ),
            (
                "    mcp:\n      tool_changes: approve\n",
                false,
                "routes[0].mcp.tool_changes: `approve` needs an `approvals:` section",
            ),
            (
                "    mcp:\n      approval_wait: 2m\n",
                false,
                "routes[0].mcp.approval_wait: at most 55s",
            ),
            (
                "    mcp:\n      tools:\n        - name: x\n          approval: {mode: hold}\n",
                false,
                "routes[0].mcp.tools[0].approval: needs an `approvals:` section",
            ),
            (
                "    kind: http\n",
                false,
                "routes[0].kind: `http` contradicts",
            ),
        ];
        for (extra, approvals, want) in cases {
            let route = format!(
                "  - name: m\n    path: /mcp\n    upstream: tools\n    scopes: [t:read]\n{extra}"
            );
            let err = load(&route, approvals).expect_err(want);
            assert!(err.contains(want), "want `{want}` in:\n{err}");
        }
    }
}

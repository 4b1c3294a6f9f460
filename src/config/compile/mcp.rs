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
        Some(Arc::new(McpPolicy::new(
            rules,
            max_body,
            approval_wait,
            tool_changes,
        )))
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

//! Compiling `agents:`.

use super::*;

/// The compiled conditions of each trust tier.
pub(super) struct TierConditions {
    standard: Conditions,
    supervised: Conditions,
}

impl Compiler<'_> {
    /// `routes` are the raw ones: a route that failed to compile still names its scopes, and
    /// judging agents against compiled routes only would report every scope of a broken route
    /// as a typo.
    pub(super) fn agents(
        &mut self,
        raw: &[(usize, RawAgent)],
        routes: &[(usize, RawRoute)],
        has_approvals: bool,
        default_limits: &Limits,
        tiers: &TierConditions,
        tokens: &TokenContext,
    ) -> HashMap<String, Arc<Agent>> {
        self.unique(
            "agent",
            raw.iter()
                .map(|(i, r)| (format!("agents[{i}].id"), r.id.as_str())),
        );
        // Scopes a route or one of its MCP rules requires.
        let known: BTreeSet<&str> = routes
            .iter()
            .flat_map(|(_, r)| {
                let rules = r
                    .mcp
                    .iter()
                    .flat_map(|m| m.tools.iter().chain(&m.prompts).chain(&m.resources));
                r.scopes
                    .iter()
                    .chain(&r.any_of)
                    .chain(rules.flat_map(|x| x.scopes.iter().chain(&x.any_of)))
            })
            .map(String::as_str)
            .collect();
        let mut out = HashMap::new();
        for (i, r) in raw {
            let p = format!("agents[{i}]");
            let supervised = match r.tier.as_deref() {
                None | Some("standard") => false,
                Some("supervised") => {
                    if !has_approvals {
                        self.invalid(
                            format!("{p}.tier"),
                            "a supervised agent's writes need approval: add an `approvals:` section",
                        );
                    }
                    true
                }
                Some(other) => {
                    self.invalid(
                        format!("{p}.tier"),
                        format!("`{other}` is not `standard` or `supervised`"),
                    );
                    false
                }
            };
            if r.owner.trim().is_empty() {
                self.invalid(
                    format!("{p}.owner"),
                    "every agent needs a named human owner",
                );
            }
            for (j, s) in r.scopes.iter().enumerate() {
                if !valid_scope(s) {
                    self.invalid(
                        format!("{p}.scopes[{j}]"),
                        format!("`{s}` is not a scope (no spaces, not empty)"),
                    );
                } else if !known.contains(s.as_str()) {
                    self.invalid(
                        format!("{p}.scopes[{j}]"),
                        format!(
                            "scope `{s}` is not required by any route (a typo?); known scopes: {}",
                            known.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
            let conditions =
                self.conditions(&format!("{p}.conditions"), &r.conditions, has_approvals);
            if (r.client.is_some() || r.delegation.is_some()) && !tokens.has_service {
                self.invalid(
                    if r.client.is_some() {
                        format!("{p}.client")
                    } else {
                        format!("{p}.delegation")
                    },
                    "needs a `token_service` section",
                );
            }
            let client = r.client.as_ref().map(|c| {
                self.agent_client(
                    &format!("{p}.client"),
                    c,
                    tokens.default_ttl,
                    tokens.max_ttl,
                )
            });
            let delegation = r
                .delegation
                .as_ref()
                .map(|d| self.delegation(&format!("{p}.delegation"), d, &tokens.issuers));
            out.entry(r.id.clone()).or_insert_with(|| {
                Arc::new(Agent {
                    id: r.id.as_str().into(),
                    owner: r.owner.as_str().into(),
                    id_header: http::HeaderValue::from_str(&r.id).ok(),
                    owner_header: http::HeaderValue::from_str(&r.owner).ok(),
                    description: r.description.clone().unwrap_or_default(),
                    scopes: r.scopes.iter().cloned().collect(),
                    enabled: r.enabled.unwrap_or(true),
                    supervised,
                    limits: match &r.limits {
                        Some(own) => compile_limits(
                            &format!("{p}.limits"),
                            own.iter().enumerate(),
                            Origin::Agent,
                            &mut |path, msg| self.invalid(path, msg),
                        ),
                        None => default_limits.clone(),
                    },
                    conditions,
                    tier_conditions: if supervised {
                        tiers.supervised.clone()
                    } else {
                        tiers.standard.clone()
                    },
                    client,
                    delegation,
                })
            });
        }
        out
    }

    /// `tiers:`: each tier's conditions, shared by its agents.
    pub(super) fn tiers(&mut self, raw: &RawTiers, has_approvals: bool) -> TierConditions {
        let mut one = |name: &str, tier: &Option<RawTier>| match tier {
            Some(t) => self.conditions(
                &format!("tiers.{name}.conditions"),
                &t.conditions,
                has_approvals,
            ),
            None => Conditions::default(),
        };
        TierConditions {
            standard: one("standard", &raw.standard),
            supervised: one("supervised", &raw.supervised),
        }
    }

    /// A `conditions:` list; its problems become issues at their field paths.
    pub(super) fn conditions(
        &mut self,
        base: &str,
        raw: &[RawCondition],
        has_approvals: bool,
    ) -> Conditions {
        let mut errors = Vec::new();
        let c = compile_conditions(base, raw, &mut errors);
        for (i, r) in raw.iter().enumerate() {
            if !has_approvals && r.on_fail.as_deref() == Some("approve") {
                errors.push((
                    format!("{base}[{i}].on_fail"),
                    "`approve` needs an `approvals:` section (store and approvers)".into(),
                ));
            }
        }
        for (path, msg) in errors {
            self.invalid(path, msg);
        }
        c
    }
}

//! Compiling `routes:`.

use super::*;

impl Compiler<'_> {
    pub(super) fn routes(
        &mut self,
        raw: &[(usize, RawRoute)],
        upstreams: &HashMap<String, usize>,
        compiled_upstreams: &[Arc<Upstream>],
        approvals: Option<&ApprovalSettings>,
        global_shadow: Shadow,
    ) -> Vec<Route> {
        self.unique(
            "route",
            raw.iter()
                .map(|(i, r)| (format!("routes[{i}].name"), r.name.as_str())),
        );
        let mut names: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut out = Vec::new();
        for (i, r) in raw {
            let p = format!("routes[{i}]");
            let mut ok = true;
            let mut methods = Vec::new();
            for (j, m) in r.methods.iter().enumerate() {
                let valid = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
                if valid.contains(&m.as_str()) {
                    methods.push(Method::from_bytes(m.as_bytes()).expect("known method"));
                } else {
                    self.invalid(
                        format!("{p}.methods[{j}]"),
                        format!("`{m}` is not one of {}", valid.join(", ")),
                    );
                    ok = false;
                }
            }
            let upstream = upstreams.get(&r.upstream).copied();
            let case_insensitive = upstream.is_some_and(|u| compiled_upstreams[u].case_insensitive);
            let path = match (&r.path, &r.path_regex) {
                (Some(t), None) => PathPattern::template(t)
                    .map_err(|e| {
                        self.invalid(format!("{p}.path"), format!("invalid template `{t}`: {e}"))
                    })
                    .ok(),
                (None, Some(rx)) if case_insensitive => PathPattern::regex_case_insensitive(rx)
                    .map_err(|e| {
                        self.invalid(format!("{p}.path_regex"), format!("invalid regex: {e}"))
                    })
                    .ok(),
                (None, Some(rx)) => PathPattern::regex(rx)
                    .map_err(|e| {
                        self.invalid(format!("{p}.path_regex"), format!("invalid regex: {e}"))
                    })
                    .ok(),
                _ => {
                    self.invalid(&p, "set exactly one of `path` and `path_regex`");
                    None
                }
            };
            let host = HostPattern::parse(r.host.as_deref())
                .map_err(|e| self.invalid(format!("{p}.host"), e))
                .ok();
            if upstream.is_none() {
                self.err(
                    format!("{p}.upstream"),
                    IssueKind::UnknownReference {
                        what: "upstream",
                        name: r.upstream.clone(),
                        hint: hint(&names),
                    },
                );
            }
            if r.scopes.is_empty() && r.any_of.is_empty() {
                self.invalid(&p, "a route must require at least one scope (`scopes` or `any_of`): deny by default");
                ok = false;
            }
            for (field, list) in [("scopes", &r.scopes), ("any_of", &r.any_of)] {
                for (j, s) in list.iter().enumerate() {
                    if !valid_scope(s) {
                        self.invalid(
                            format!("{p}.{field}[{j}]"),
                            format!("`{s}` is not a scope (no spaces, not empty)"),
                        );
                        ok = false;
                    }
                }
            }
            if r.websocket && r.approval.is_some() {
                self.invalid(
                    format!("{p}.websocket"),
                    "a WebSocket route cannot need approval: an upgraded connection cannot be held or replayed",
                );
                ok = false;
            }
            let approval = r.approval.as_ref().map(|a| {
                self.approval_policy(
                    &format!("{p}.approval"),
                    a,
                    approvals,
                    Duration::from_secs(600),
                )
            });
            let limits = compile_limits(
                &format!("{p}.limits"),
                r.limits.iter().enumerate(),
                Origin::Route,
                &mut |path, msg| self.invalid(path, msg),
            );
            let conditions = self.conditions(
                &format!("{p}.conditions"),
                &r.conditions,
                approvals.is_some(),
            );
            let mut tags: Vec<Arc<str>> = Vec::new();
            for (j, t) in r.tags.iter().enumerate() {
                let valid = !t.is_empty()
                    && t.len() <= 64
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
                if !valid {
                    self.invalid(
                        format!("{p}.tags[{j}]"),
                        format!(
                            "`{t}` is not a tag: 1 to 64 letters, digits, `_`, `-`, `.` or `:`"
                        ),
                    );
                } else if !tags.iter().any(|x| **x == **t) {
                    tags.push(t.as_str().into());
                }
            }
            let mcp = self.route_mcp(
                &p,
                r,
                upstream.is_some_and(|u| compiled_upstreams[u].mcp),
                approvals,
            );
            let fail_open = self.store_unavailable(&p, r, &methods, mcp.is_some());
            if let (true, Some(path), Some(host), Some(upstream)) = (ok, path, host, upstream) {
                out.push(Route {
                    name: r.name.as_str().into(),
                    name_header: HeaderValue::from_str(&r.name).ok(),
                    file_index: *i,
                    methods,
                    host,
                    path,
                    upstream,
                    scopes_all: r.scopes.clone(),
                    scopes_any: r.any_of.clone(),
                    approval: approval.flatten().map(Arc::new),
                    case_insensitive,
                    websocket: r.websocket,
                    shadow: global_shadow.union(self.shadow(&p, &r.mode, &r.shadow)),
                    limits,
                    conditions,
                    tags: tags.into(),
                    mcp,
                    fail_open,
                });
            }
        }
        out
    }

    /// `store_unavailable`: `fail_open` only where a replica deciding alone is an acceptable
    /// risk. Writes, approvals and MCP (whose `tools/call` can write) always fail closed, so a
    /// prompt-injected agent cannot turn a store outage into a way around a budget on them.
    fn store_unavailable(&mut self, p: &str, r: &RawRoute, methods: &[Method], mcp: bool) -> bool {
        match r.store_unavailable.as_deref() {
            None | Some("fail_closed") => false,
            Some("fail_open") => {
                let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
                let why = if r.approval.is_some() {
                    Some("the route needs approval")
                } else if mcp {
                    Some("it is an MCP route (tools/call can write)")
                } else if methods.is_empty() || methods.iter().any(|m| !reads.contains(m)) {
                    Some("the route allows writes (list only GET, HEAD, OPTIONS in `methods`)")
                } else {
                    None
                };
                match why {
                    Some(why) => {
                        self.invalid(
                            format!("{p}.store_unavailable"),
                            format!("`fail_open` is only for low-risk reads: {why}"),
                        );
                        false
                    }
                    None => true,
                }
            }
            Some(other) => {
                self.invalid(
                    format!("{p}.store_unavailable"),
                    format!("`{other}` is not `fail_closed` or `fail_open`"),
                );
                false
            }
        }
    }

    /// A `mode` and `shadow` list pair (of a route, or of `enforcement:` when `p` is that).
    pub(super) fn shadow(&mut self, p: &str, mode: &Option<String>, list: &[String]) -> Shadow {
        let mut shadow = match mode.as_deref() {
            None | Some("enforce") => Shadow::default(),
            Some("shadow") => Shadow::ALL,
            Some(other) => {
                self.invalid(
                    format!("{p}.mode"),
                    format!("`{other}` is not `enforce` or `shadow`"),
                );
                Shadow::default()
            }
        };
        for (j, name) in list.iter().enumerate() {
            if !shadow.add(name) {
                self.invalid(
                    format!("{p}.shadow[{j}]"),
                    format!(
                        "`{name}` is not a policy that can be shadowed; use {} (identity, routing and request-meaning checks always enforce)",
                        Shadow::NAMES.join(", ")
                    ),
                );
            }
        }
        shadow
    }
}

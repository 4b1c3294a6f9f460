//! `portcullis policy suggest`: the smallest routes and per-agent scopes that would have allowed
//! what the access log shows an agent doing, with a diff against the current configuration.
//!
//! Evidence is what passed (allowed, or allowed in shadow mode): a refused call is what an
//! agent tried, not what it needs, and suggesting it would let a probing agent write its own
//! policy. Path templates replace only segments that look like identifiers (numbers, UUIDs,
//! long hex digests); a trailing `/**` appears only when one parent has at least
//! `collapse_after` distinct literal children for the same method, and never above them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::calls::Call;
use crate::policy::Snapshot;

/// How segments are generalised.
#[derive(Debug, Clone)]
pub struct Options {
    /// Distinct literal children of one parent (same method) that make `parent/**`.
    pub collapse_after: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { collapse_after: 20 }
    }
}

/// One suggested route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SuggestedRoute {
    /// Route name.
    pub name: String,
    /// The one method.
    pub method: String,
    /// Path template.
    pub path: String,
    /// Upstream.
    pub upstream: String,
    /// Scopes it requires.
    pub scopes: Vec<String>,
    /// Held for human approval (DELETE, or a write on a route tagged `high_risk`).
    pub approval: bool,
    /// Calls observed.
    pub calls: usize,
    /// The agents seen using it.
    pub agents: BTreeSet<String>,
}

/// The suggestion.
#[derive(Debug, Default, Serialize)]
pub struct Suggestion {
    /// Routes, sorted by path then method.
    pub routes: Vec<SuggestedRoute>,
    /// Scopes each agent needs.
    pub agent_scopes: BTreeMap<String, BTreeSet<String>>,
    /// One line per difference from the current configuration, with its reason.
    pub diff: Vec<String>,
    /// Calls used as evidence, and refused calls left out.
    pub evidence: (usize, usize),
}

/// Whether a path segment names one resource rather than a kind of resource.
fn is_identifier(seg: &str) -> bool {
    let hex = seg.len() >= 16 && seg.chars().all(|c| c.is_ascii_hexdigit());
    let digits = !seg.is_empty() && seg.chars().all(|c| c.is_ascii_digit());
    digits || hex || uuid::Uuid::try_parse(seg).is_ok()
}

/// `/api/tickets/42/comments/7` → `/api/tickets/{ticket_id}/comments/{comment_id}`.
pub fn template(path: &str) -> String {
    let mut out = String::new();
    let mut prev = "";
    let mut used = BTreeSet::new();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        if is_identifier(seg) {
            let base = prev.trim_end_matches('s');
            let base: String = base
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let mut name = if base.is_empty() {
                "id".to_string()
            } else {
                format!("{base}_id")
            };
            let mut n = 2;
            while !used.insert(name.clone()) {
                name = format!("{base}_id{n}");
                n += 1;
            }
            out.push('{');
            out.push_str(&name);
            out.push('}');
        } else {
            out.push_str(seg);
            prev = seg;
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn access_of(method: &str) -> &'static str {
    match method {
        "GET" | "HEAD" | "OPTIONS" => "read",
        "DELETE" => "delete",
        _ => "write",
    }
}

/// Suggest routes and scopes from `calls`, judged against the current `snap`.
pub fn suggest(snap: &Snapshot, calls: &[Call], opts: &Options) -> Suggestion {
    let mut s = Suggestion::default();
    // (method, template, upstream) → (scopes, calls, agents, tags)
    type Key = (String, String, String);
    let mut seen: BTreeMap<Key, (BTreeSet<String>, usize, BTreeSet<String>, bool)> =
        BTreeMap::new();
    for c in calls {
        if !c.passed() {
            s.evidence.1 += 1;
            continue;
        }
        s.evidence.0 += 1;
        let current = c
            .route
            .as_deref()
            .and_then(|n| snap.routes.routes.iter().find(|r| &*r.name == n));
        let upstream = c
            .upstream
            .clone()
            .or_else(|| current.map(|r| snap.upstreams[r.upstream].name.to_string()))
            .unwrap_or_else(|| "-".into());
        let agent = c.agent.clone().unwrap_or_default();
        // The scopes the current route asked of this call: those it requires, and of its
        // `any_of` the ones the token held.
        let scopes: BTreeSet<String> = match current {
            Some(r) => r
                .scopes_all
                .iter()
                .cloned()
                .chain(
                    r.scopes_any
                        .iter()
                        .filter(|x| c.token_scopes.contains(x))
                        .take(1)
                        .cloned(),
                )
                .collect(),
            None => {
                let kind = c
                    .path
                    .split('/')
                    .find(|x| !x.is_empty() && *x != "api" && !x.starts_with('v'))
                    .unwrap_or("api");
                [format!("{kind}:{}", access_of(&c.method))].into()
            }
        };
        let high_risk = current.is_some_and(|r| r.tags.iter().any(|t| &**t == "high_risk"));
        let e = seen
            .entry((c.method.clone(), template(&c.path), upstream))
            .or_default();
        e.0.extend(scopes.iter().cloned());
        e.1 += 1;
        e.2.insert(agent.clone());
        e.3 |= high_risk;
        s.agent_scopes.entry(agent).or_default().extend(scopes);
    }
    // Many literal siblings under one parent, same method and upstream: `parent/**`.
    let mut siblings: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for (m, t, u) in seen.keys() {
        if let Some((parent, last)) = t.rsplit_once('/') {
            if !last.starts_with('{') {
                siblings
                    .entry((m.clone(), parent.to_string(), u.clone()))
                    .or_default()
                    .insert(last.to_string());
            }
        }
    }
    let mut merged: BTreeMap<Key, (BTreeSet<String>, usize, BTreeSet<String>, bool)> =
        BTreeMap::new();
    for ((m, t, u), v) in seen {
        let collapsed = t.rsplit_once('/').and_then(|(parent, last)| {
            let n = siblings
                .get(&(m.clone(), parent.to_string(), u.clone()))
                .map_or(0, |x| x.len());
            (!last.starts_with('{') && n >= opts.collapse_after).then(|| format!("{parent}/**"))
        });
        let e = merged.entry((m, collapsed.unwrap_or(t), u)).or_default();
        e.0.extend(v.0);
        e.1 += v.1;
        e.2.extend(v.2);
        e.3 |= v.3;
    }
    // A deeper path under a collapsed `parent/**` (same method and upstream) is already
    // allowed by it: fold it in rather than list it twice.
    let wide: Vec<Key> = merged
        .keys()
        .filter(|(_, p, _)| p.ends_with("/**"))
        .cloned()
        .collect();
    for (m, w, u) in &wide {
        let prefix = &w[..w.len() - 2];
        let covered: Vec<Key> = merged
            .keys()
            .filter(|(m2, p, u2)| m2 == m && u2 == u && p != w && p.starts_with(prefix))
            .cloned()
            .collect();
        for k in covered {
            if let Some(v) = merged.remove(&k) {
                let e = merged
                    .get_mut(&(m.clone(), w.clone(), u.clone()))
                    .expect("kept");
                e.0.extend(v.0);
                e.1 += v.1;
                e.2.extend(v.2);
                e.3 |= v.3;
            }
        }
    }
    let mut names = BTreeSet::new();
    for ((method, path, upstream), (scopes, n, agents, high_risk)) in merged {
        // `/api/tickets` → `api-tickets`, `/api/tickets/{ticket_id}` → `api-tickets-item`.
        let mut stem: String = path
            .split('/')
            .filter(|x| !x.is_empty() && !x.starts_with('{') && *x != "**")
            .collect::<Vec<_>>()
            .join("-");
        if path.ends_with('}') {
            stem.push_str("-item");
        } else if path.ends_with("/**") {
            stem.push_str("-all");
        }
        let mut name = format!(
            "{}-{}",
            if stem.is_empty() { "root" } else { &stem },
            method.to_ascii_lowercase()
        );
        let mut i = 2;
        while !names.insert(name.clone()) {
            name = format!("{stem}-{}-{i}", method.to_ascii_lowercase());
            i += 1;
        }
        let approval = method == "DELETE" || (high_risk && access_of(&method) != "read");
        s.routes.push(SuggestedRoute {
            name,
            method,
            path,
            upstream,
            scopes: scopes.into_iter().collect(),
            approval,
            calls: n,
            agents,
        });
    }
    s.routes
        .sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
    s.diff = diff(snap, &s);
    s
}

/// A template with its parameter names blanked: `/a/{id}` and `/a/{ticket_id}` match the same.
fn shape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut inside = false;
    for c in path.chars() {
        match c {
            '{' => {
                inside = true;
                out.push_str("{}");
            }
            '}' => inside = false,
            _ if inside => {}
            _ => out.push(c),
        }
    }
    out
}

/// Differences from the current configuration, one line each with its reason.
fn diff(snap: &Snapshot, s: &Suggestion) -> Vec<String> {
    let mut out = Vec::new();
    let current: BTreeSet<(String, String)> = snap
        .routes
        .routes
        .iter()
        .flat_map(|r| {
            let p = shape(&r.path.to_string());
            r.methods.iter().map(move |m| (m.to_string(), p.clone()))
        })
        .collect();
    for r in &s.routes {
        if !current.contains(&(r.method.clone(), shape(&r.path))) {
            out.push(format!(
                "+ route {} {} {} → {}: {} observed call(s) by {}",
                r.name,
                r.method,
                r.path,
                r.upstream,
                r.calls,
                r.agents.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let used: BTreeSet<(String, String)> = s
        .routes
        .iter()
        .map(|r| (r.method.clone(), shape(&r.path)))
        .collect();
    for r in &snap.routes.routes {
        let p = r.path.to_string();
        for m in &r.methods {
            if !used.contains(&(m.to_string(), shape(&p))) {
                out.push(format!(
                    "- route {} {m} {p}: no observed call needed it",
                    r.name
                ));
            }
        }
    }
    for (agent, need) in &s.agent_scopes {
        let Some(a) = snap.agents.get(agent) else {
            out.push(format!("+ agent {agent}: seen in the log, not registered"));
            continue;
        };
        for x in a.scopes.difference(need) {
            out.push(format!(
                "- scope {x} of {agent}: held, never needed by an observed call"
            ));
        }
        for x in need.difference(&a.scopes) {
            out.push(format!(
                "+ scope {x} for {agent}: needed by an observed call"
            ));
        }
    }
    out
}

/// The suggestion as YAML to paste: `routes:` and each agent's `scopes:`.
pub fn to_yaml(s: &Suggestion) -> String {
    let mut y = String::from(
        "# Suggested by `portcullis policy suggest` from observed traffic.\nroutes:\n",
    );
    for r in &s.routes {
        y.push_str(&format!(
            "  # {} call(s) by {}\n  - name: {}\n    methods: [{}]\n    path: {}\n    upstream: {}\n    scopes: [{}]\n",
            r.calls,
            r.agents.iter().cloned().collect::<Vec<_>>().join(", "),
            r.name,
            r.method,
            r.path,
            r.upstream,
            r.scopes.join(", ")
        ));
        if r.approval {
            y.push_str("    approval: {mode: async}   # high risk: a person approves each call\n");
        }
    }
    y.push_str("# agents[].scopes:\n");
    for (a, scopes) in &s.agent_scopes {
        y.push_str(&format!(
            "#   {a}: [{}]\n",
            scopes.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_replace_identifiers_only() {
        assert_eq!(template("/api/tickets/42"), "/api/tickets/{ticket_id}");
        assert_eq!(
            template("/api/tickets/42/comments/7"),
            "/api/tickets/{ticket_id}/comments/{comment_id}"
        );
        assert_eq!(
            template("/files/3f2b8c1d-4e5a-4b6c-9d7e-112233445566"),
            "/files/{file_id}"
        );
        assert_eq!(
            template("/blobs/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"),
            "/blobs/{blob_id}"
        );
        assert_eq!(template("/api/kb/search"), "/api/kb/search");
        assert_eq!(template("/v2/x/1/1"), "/v2/x/{x_id}/{x_id2}");
    }
}

#[cfg(test)]
mod evidence_tests {
    use super::*;
    use crate::config::{load_str, LoadContext};
    use crate::identity::{generate_signing_key, signing_key_jwk, KeyStore};
    use std::sync::Arc;
    use std::time::SystemTime;

    /// A config with one tagged route, and calls as the access log would hold them.
    fn snapshot() -> Snapshot {
        let key = generate_signing_key().unwrap();
        let jwk = signing_key_jwk(key.as_bytes(), "k").unwrap();
        let yaml = format!(
            "issuers:\n  - {{name: idp, issuer: https://idp, audiences: [gw], algorithms: [ES256], keys: [{{jwk: {jwk}}}]}}\nagents:\n  - {{id: bot, owner: a@example.com, scopes: [files:read, files:write, pay:write]}}\n  - {{id: idle, owner: nobody, scopes: [files:read]}}\nupstreams:\n  - {{name: files, url: \"http://127.0.0.1:9\"}}\nroutes:\n  - {{name: files-read, methods: [GET], path: /files/**, upstream: files, scopes: [files:read]}}\n  - {{name: files-write, methods: [PUT, DELETE], path: /files/**, upstream: files, scopes: [files:write]}}\n  - {{name: pay, methods: [POST], path: /pay, upstream: files, scopes: [pay:write], tags: [high_risk]}}\n"
        );
        let ctx = LoadContext::new(KeyStore::new(Arc::new(|_| {})), 1);
        load_str(&yaml, std::path::Path::new("."), "t.yaml", &ctx).unwrap()
    }

    fn call(method: &str, path: &str, route: &str, decision: &str) -> Call {
        Call {
            time: SystemTime::now(),
            agent: Some("bot".into()),
            host: None,
            method: method.into(),
            path: path.into(),
            query: None,
            client: None,
            route: Some(route.into()),
            upstream: Some("files".into()),
            decision: decision.into(),
            reason: None,
            would_deny: None,
            token_scopes: vec![
                "files:read".into(),
                "files:write".into(),
                "pay:write".into(),
            ],
            status: 200,
        }
    }

    #[test]
    fn many_siblings_collapse_deletes_and_tagged_writes_need_approval() {
        let snap = snapshot();
        let mut calls: Vec<Call> = (0..25)
            .map(|i| {
                call(
                    "GET",
                    &format!("/files/report-{i}.pdf"),
                    "files-read",
                    "allow",
                )
            })
            .collect();
        calls.push(call("GET", "/files/a/b", "files-read", "allow"));
        calls.push(call("DELETE", "/files/9", "files-write", "allow"));
        calls.push(call("POST", "/pay", "pay", "allow"));
        calls.push(call("PUT", "/files/secret", "files-write", "deny"));
        let s = suggest(&snap, &calls, &Options { collapse_after: 20 });
        let got: Vec<(&str, &str, bool)> = s
            .routes
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str(), r.approval))
            .collect();
        assert_eq!(
            got,
            vec![
                ("GET", "/files/**", false),
                ("DELETE", "/files/{file_id}", true),
                ("POST", "/pay", true),
            ]
        );
        assert_eq!(s.routes[0].calls, 26, "/files/a/b folded into /files/**");
        assert_eq!(s.evidence, (28, 1), "the refused PUT is not evidence");
        // 19 siblings stay literal: `/**` only when warranted.
        let few = suggest(&snap, &calls[..19], &Options { collapse_after: 20 });
        assert_eq!(few.routes.len(), 19);
        assert!(few.routes.iter().all(|r| !r.path.ends_with("/**")));
    }

    #[test]
    fn review_flags_idle_agents_and_owners_that_are_not_people() {
        let snap = snapshot();
        let calls = vec![call("GET", "/files/x", "files-read", "allow")];
        let r = crate::policy_tools::review::review(&snap, &calls, "30 days", &[]);
        let kinds: Vec<(&str, Option<&str>, &str)> = r
            .findings
            .iter()
            .map(|f| (f.kind, f.agent.as_deref(), f.subject.as_str()))
            .collect();
        assert!(
            kinds.contains(&("idle_agent", Some("idle"), "idle")),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("owner_unknown", Some("idle"), "nobody")),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("unused_scope", Some("bot"), "pay:write")),
            "{kinds:?}"
        );
        assert!(
            !kinds.contains(&("unused_scope", Some("bot"), "files:read")),
            "{kinds:?}"
        );
        assert!(kinds.contains(&("unused_route", None, "pay")), "{kinds:?}");
    }
}

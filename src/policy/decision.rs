//! What a decision is made from and what it says: the facts of one request, and allow or deny
//! with the reason. The decision itself is [`super::pipeline::evaluate`], an ordered list of
//! the policies in their own files; the tables below test it as a whole.

use super::conditions::BodyFact;
use super::limits::{Charge, Refused, VolumeView};
use super::path::NormalizedPath;
use super::snapshot::{Agent, ApprovalPolicy};
use crate::identity::VerifiedToken;
use http::Method;
use std::sync::Arc;

/// Everything the decision needs to know about a request.
pub struct RequestFacts<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Host header, lowercase, port stripped.
    pub host: Option<&'a str>,
    /// Normalized path.
    pub path: &'a NormalizedPath,
    /// The verified token.
    pub token: &'a VerifiedToken,
    /// The protocol the request asks to switch to (`Upgrade` header, or `""` when only
    /// `Connection: upgrade` is present); `None` for an ordinary request.
    pub upgrade: Option<&'a str>,
    /// The request headers (read by the policies that need them, e.g. a declared body size).
    pub headers: &'a http::HeaderMap,
    /// Read-only view of the volume counters (the limits step reads, never writes them).
    pub volumes: &'a dyn VolumeView,
    /// The time of the decision (time-window conditions).
    pub now: std::time::SystemTime,
    /// The client's address (network conditions).
    pub client_ip: Option<std::net::IpAddr>,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// The request body, when a condition asked for it and the proxy read it.
    pub body: BodyFact<'a>,
    /// The body's length when it was read (else `Content-Length` counts).
    pub body_len: Option<u64>,
    /// Runtime agent state: pauses, revocations, step-ups, throttles.
    pub agent_states: &'a super::agent_state::AgentStates,
    /// On an MCP route: the JSON-RPC message read from the body (`None` until read).
    pub mcp: Option<&'a Result<super::mcp::McpMessage, super::mcp::Malformed>>,
    /// MCP tools whose definition changed and was not accepted yet.
    pub changed_tools: &'a super::mcp::ChangedTools,
}

impl<'a> RequestFacts<'a> {
    /// The facts of a plain request: no host, no upgrade, no query, no client address, the
    /// body not read, decided now. Benchmarks and tests start from it; the proxy fills every
    /// field itself.
    pub fn plain(
        method: &'a Method,
        path: &'a NormalizedPath,
        token: &'a VerifiedToken,
        headers: &'a http::HeaderMap,
        volumes: &'a dyn VolumeView,
    ) -> RequestFacts<'a> {
        RequestFacts {
            method,
            host: None,
            path,
            token,
            upgrade: None,
            headers,
            volumes,
            now: std::time::SystemTime::now(),
            client_ip: None,
            query: None,
            body: BodyFact::NotRead,
            body_len: None,
            agent_states: &super::agent_state::NO_AGENT_STATE,
            mcp: None,
            changed_tools: &super::mcp::NO_CHANGED_TOOLS,
        }
    }
}

impl std::fmt::Debug for RequestFacts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestFacts")
            .field("method", self.method)
            .field("host", &self.host)
            .field("path", self.path)
            .field("subject", &self.token.subject)
            .field("upgrade", &self.upgrade)
            .finish_non_exhaustive()
    }
}

/// The call may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Index of the route (into `snapshot.routes.routes`).
    pub route: usize,
    /// The calling agent.
    pub agent: Arc<Agent>,
    /// Set when the call must be approved by humans before it is forwarded.
    pub approval: Option<Arc<ApprovalPolicy>>,
    /// Shadow mode: the refusal a shadowed policy would have made (the first one); the call
    /// goes ahead and the access log and metrics record it.
    pub would_deny: Option<Denial>,
    /// What the proxy must take from the limits' counters (rates before forwarding, volumes
    /// as the bodies stream).
    pub charge: Charge,
    /// The conditions that ran, and whether each passed (the access log's `conditions`).
    pub conditions: Vec<ConditionRan>,
    /// On an MCP route: the rule that named the call's tool, prompt or resource (index into
    /// the route's `mcp.rules`).
    pub mcp_rule: Option<usize>,
}

/// Whose a condition is: the three places conditions are declared. Condition names are
/// unique only within one list, so the refusal and the access log say which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionOf {
    /// `tiers.<tier>.conditions`: every agent of the tier.
    Tier(&'static str),
    /// `agents[].conditions`.
    Agent,
    /// `routes[].conditions`.
    Route,
    /// `routes[].mcp.<tools|prompts|resources>[].conditions`: the rule that named the call.
    McpRule,
}

impl std::fmt::Display for ConditionOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConditionOf::Tier(t) => write!(f, "tier:{t}"),
            ConditionOf::Agent => f.write_str("agent"),
            ConditionOf::Route => f.write_str("route"),
            ConditionOf::McpRule => f.write_str("mcp_rule"),
        }
    }
}

impl serde::Serialize for ConditionOf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One condition's result, as the access log records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConditionRan {
    /// Its name.
    pub condition: Arc<str>,
    /// Whose condition it is (`tier:<name>`, `agent` or `route`).
    pub of: ConditionOf,
    /// Whether it passed.
    pub passed: bool,
}

/// Why the call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The token's subject is not a registered agent.
    UnknownAgent {
        /// The subject.
        subject: String,
    },
    /// The agent exists but is disabled.
    AgentDisabled {
        /// The agent.
        agent: Arc<Agent>,
    },
    /// The agent is paused at runtime (kill switch).
    AgentPaused {
        /// The agent.
        agent: Arc<Agent>,
        /// Who paused it, when and why.
        pause: Box<super::agent_state::Stamp>,
    },
    /// The token was revoked at runtime (its `jti`, or every token of the agent issued before
    /// a time).
    TokenRevoked {
        /// The agent.
        agent: Arc<Agent>,
        /// Which revocation.
        revocation: Box<super::agent_state::Revocation>,
    },
    /// The agent's writes need approval for now (a runtime step-up), but no `approvals:`
    /// section is configured: refused rather than forwarded.
    StepUpUnavailable {
        /// The agent.
        agent: Arc<Agent>,
        /// The step-up in force.
        until: Box<super::agent_state::Until>,
    },
    /// No route allows this method, host and path.
    NoRoute {
        /// The agent.
        agent: Arc<Agent>,
        /// Methods some route allows on this path.
        methods_on_path: Vec<Method>,
    },
    /// The route needs scopes the agent's effective scopes lack.
    InsufficientScope {
        /// The agent.
        agent: Arc<Agent>,
        /// Index of the route.
        route: usize,
        /// Required scopes (all of) that are missing.
        missing_all: Vec<String>,
        /// The `any_of` set, when none of it is held.
        missing_any_of: Vec<String>,
    },
    /// The path carries `;` segment parameters and the upstream of the route it falls under
    /// has not opted in (`path_parameters: allow`).
    PathParameter {
        /// The agent.
        agent: Arc<Agent>,
    },
    /// A host-scoped route claims this method and path on the same upstream.
    HostScoped {
        /// The agent.
        agent: Arc<Agent>,
        /// Index of the host-scoped route.
        claimed_by: usize,
    },
    /// A contextual condition (of the agent's tier, the agent or the route) failed with
    /// `on_fail: deny`.
    Condition {
        /// The agent.
        agent: Arc<Agent>,
        /// Index of the route.
        route: usize,
        /// Name of the condition.
        condition: Arc<str>,
        /// Whose condition it is.
        of: ConditionOf,
        /// What failed, in words.
        reason: String,
    },
    /// A rate or volume limit refuses the call (429).
    Limited {
        /// The agent.
        agent: Arc<Agent>,
        /// Index of the route.
        route: usize,
        /// Which limit, and when a retry can pass.
        refused: Box<Refused>,
    },
    /// MCP: the body is not one JSON-RPC message this gateway can judge, or its headers
    /// disagree with it.
    McpInvalid {
        /// The agent.
        agent: Arc<Agent>,
        /// Index of the route.
        route: usize,
        /// What is wrong, in words.
        reason: String,
    },
    /// MCP: a JSON-RPC method this gateway does not know (deny by default).
    McpUnknownMethod {
        /// The agent.
        agent: Arc<Agent>,
        /// Index of the route.
        route: usize,
        /// The method.
        method: String,
    },
    /// MCP: no rule of the route names this tool, prompt or resource.
    McpNotAllowed {
        /// The agent.
        agent: Arc<Agent>,
        /// Index of the route.
        route: usize,
        /// What was named.
        kind: super::mcp::Kind,
        /// Its name or URI.
        name: String,
    },
    /// MCP: the rule naming the tool, prompt or resource needs scopes the agent lacks.
    McpScope {
        /// The agent.
        agent: Arc<Agent>,
        /// Index of the route.
        route: usize,
        /// Index of the rule in the route's `mcp.rules`.
        rule: usize,
        /// The name or URI called.
        name: String,
        /// Required scopes (all of) that are missing.
        missing_all: Vec<String>,
        /// The `any_of` set, when none of it is held.
        missing_any_of: Vec<String>,
    },
    /// MCP: the tool's definition changed since it was recorded (`tool_changes: deny`).
    McpToolChanged {
        /// The agent.
        agent: Arc<Agent>,
        /// Index of the route.
        route: usize,
        /// The tool.
        tool: String,
    },
    /// The request asks for a protocol upgrade the route does not allow.
    UpgradeNotAllowed {
        /// The agent.
        agent: Arc<Agent>,
        /// Index of the route.
        route: usize,
        /// The requested protocol (may be empty).
        protocol: String,
    },
}

impl Denial {
    /// The registered agent the denial concerns (none for an unknown subject).
    pub fn agent(&self) -> Option<&Arc<Agent>> {
        match self {
            Denial::UnknownAgent { .. } => None,
            Denial::AgentDisabled { agent }
            | Denial::AgentPaused { agent, .. }
            | Denial::TokenRevoked { agent, .. }
            | Denial::StepUpUnavailable { agent, .. }
            | Denial::NoRoute { agent, .. }
            | Denial::InsufficientScope { agent, .. }
            | Denial::PathParameter { agent }
            | Denial::HostScoped { agent, .. }
            | Denial::Limited { agent, .. }
            | Denial::Condition { agent, .. }
            | Denial::McpInvalid { agent, .. }
            | Denial::McpUnknownMethod { agent, .. }
            | Denial::McpNotAllowed { agent, .. }
            | Denial::McpScope { agent, .. }
            | Denial::McpToolChanged { agent, .. }
            | Denial::UpgradeNotAllowed { agent, .. } => Some(agent),
        }
    }

    /// The route the call fell under, when one matched.
    pub fn route(&self) -> Option<usize> {
        match self {
            Denial::InsufficientScope { route, .. }
            | Denial::UpgradeNotAllowed { route, .. }
            | Denial::Limited { route, .. }
            | Denial::Condition { route, .. }
            | Denial::McpInvalid { route, .. }
            | Denial::McpUnknownMethod { route, .. }
            | Denial::McpNotAllowed { route, .. }
            | Denial::McpScope { route, .. }
            | Denial::McpToolChanged { route, .. } => Some(*route),
            Denial::HostScoped { claimed_by, .. } => Some(*claimed_by),
            Denial::UnknownAgent { .. }
            | Denial::AgentDisabled { .. }
            | Denial::AgentPaused { .. }
            | Denial::TokenRevoked { .. }
            | Denial::StepUpUnavailable { .. }
            | Denial::NoRoute { .. }
            | Denial::PathParameter { .. } => None,
        }
    }
}

/// Allow or deny, or ask for the body first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A condition reads the body: read at most this many bytes, then decide again with it.
    NeedBody(u64),
    /// Forward.
    Allow(Allowed),
    /// Refuse.
    Deny(Denial),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, LoadContext};
    use crate::identity::KeyStore;
    use crate::policy::conditions::BodyFact;
    use crate::policy::normalize;
    use crate::policy::snapshot::Snapshot;
    use crate::policy::{effective_scopes, evaluate};
    use crate::state::limits::InProcessLimitStore;
    use serde_json::Value;
    use std::path::Path;

    /// A snapshot of the fixture issuer plus `rest` (agents, upstreams, routes).
    fn load_with_fixture_issuer(rest: &str) -> Snapshot {
        let yaml = format!(
            "issuers:\n  - name: idp\n    issuer: https://idp.test\n    audiences: [t]\n    algorithms: [ES256]\n    jwks_file: {}/tests/fixtures/keys/jwks.json\n{rest}",
            env!("CARGO_MANIFEST_DIR")
        );
        load_str(
            &yaml,
            Path::new("."),
            "<t>",
            &LoadContext::new(KeyStore::new(std::sync::Arc::new(|_| {})), 1),
        )
        .unwrap()
    }

    fn snap() -> Snapshot {
        load_with_fixture_issuer(
            r#"
agents:
  - id: bot
    owner: alice@example.com
    scopes: [read, write, admin]
  - id: reader
    owner: bob@example.com
    scopes: [read]
  - id: off
    owner: carol@example.com
    scopes: [read]
    enabled: false
upstreams:
  - name: up
    url: http://127.0.0.1:9
routes:
  - name: read
    methods: [GET]
    path: /t/{id}
    upstream: up
    scopes: [read]
  - name: write
    methods: [POST]
    path: /t/{id}
    upstream: up
    scopes: [read, write]
  - name: either
    methods: [GET]
    path: /either
    upstream: up
    scopes: [read]
    any_of: [write, admin]
"#,
        )
    }

    fn token(sub: &str, scopes: &[&str]) -> VerifiedToken {
        VerifiedToken {
            issuer: "idp".into(),
            subject: sub.into(),
            on_behalf_of: None,
            prior_actors: Vec::new(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            jti: None,
            iat: 0,
            exp: u64::MAX,
            approver: None,
            claims: Default::default(),
        }
    }

    /// Compact outcome for the table.
    fn outcome(s: &Snapshot, sub: &str, scopes: &[&str], method: &str, path: &str) -> String {
        let t = token(sub, scopes);
        let p = normalize(path, 999).unwrap();
        let m: Method = method.parse().unwrap();
        let (no_headers, no_volumes) = (http::HeaderMap::new(), InProcessLimitStore::new());
        let facts = RequestFacts::plain(&m, &p, &t, &no_headers, &no_volumes);
        describe(s, evaluate(s, &facts))
    }

    fn describe(s: &Snapshot, d: Decision) -> String {
        match d {
            Decision::Allow(a) => format!("allow {}", s.routes.routes[a.route].name),
            Decision::Deny(Denial::UnknownAgent { .. }) => "unknown_agent".into(),
            Decision::Deny(Denial::AgentDisabled { .. }) => "agent_disabled".into(),
            Decision::Deny(Denial::AgentPaused { .. }) => "agent_paused".into(),
            Decision::Deny(Denial::TokenRevoked { .. }) => "token_revoked".into(),
            Decision::Deny(Denial::StepUpUnavailable { .. }) => "step_up_unavailable".into(),
            Decision::Deny(Denial::NoRoute { .. }) => "no_route".into(),
            Decision::Deny(Denial::PathParameter { .. }) => "path_parameter".into(),
            Decision::Deny(Denial::HostScoped { claimed_by, .. }) => {
                format!("host_scoped {}", s.routes.routes[claimed_by].name)
            }
            Decision::Deny(Denial::UpgradeNotAllowed { protocol, .. }) => {
                format!("upgrade_not_allowed {protocol}")
            }
            Decision::Deny(Denial::Limited { refused, .. }) => refused.code().to_string(),
            Decision::Deny(Denial::Condition { condition, .. }) => format!("condition {condition}"),
            Decision::NeedBody(n) => format!("need_body {n}"),
            Decision::Deny(
                d @ (Denial::McpInvalid { .. }
                | Denial::McpUnknownMethod { .. }
                | Denial::McpNotAllowed { .. }
                | Denial::McpScope { .. }
                | Denial::McpToolChanged { .. }),
            ) => format!("{d:?}"),
            Decision::Deny(Denial::InsufficientScope {
                missing_all,
                missing_any_of,
                ..
            }) => format!(
                "insufficient_scope all={} any={}",
                missing_all.join(","),
                missing_any_of.join(",")
            ),
        }
    }

    #[test]
    fn scope_table() {
        let s = snap();
        let cases: &[(&str, &[&str], &str, &str, &str)] = &[
            ("bot", &["read"], "GET", "/t/1", "allow read"),
            (
                "bot",
                &[],
                "GET",
                "/t/1",
                "insufficient_scope all=read any=",
            ),
            (
                "bot",
                &["read"],
                "POST",
                "/t/1",
                "insufficient_scope all=write any=",
            ),
            ("bot", &["read", "write"], "POST", "/t/1", "allow write"),
            (
                "bot",
                &["write"],
                "POST",
                "/t/1",
                "insufficient_scope all=read any=",
            ),
            // any_of: read AND (write OR admin)
            (
                "bot",
                &["read"],
                "GET",
                "/either",
                "insufficient_scope all= any=write,admin",
            ),
            ("bot", &["read", "admin"], "GET", "/either", "allow either"),
            // The token claims `write`, but the registry never granted it to `reader`: ignored.
            (
                "reader",
                &["read", "write"],
                "POST",
                "/t/1",
                "insufficient_scope all=write any=",
            ),
            (
                "reader",
                &["read", "write", "admin"],
                "GET",
                "/either",
                "insufficient_scope all= any=write,admin",
            ),
            ("reader", &["read"], "GET", "/t/9", "allow read"),
            ("off", &["read"], "GET", "/t/1", "agent_disabled"),
            ("stranger", &["read"], "GET", "/t/1", "unknown_agent"),
            ("bot", &["read"], "DELETE", "/t/1", "no_route"),
            ("bot", &["read"], "GET", "/nothing", "no_route"),
        ];
        for (sub, scopes, m, p, want) in cases {
            assert_eq!(
                outcome(&s, sub, scopes, m, p),
                *want,
                "{sub} {scopes:?} {m} {p}"
            );
        }
    }

    #[test]
    fn effective_scopes_are_the_intersection_in_token_order() {
        let s = snap();
        let t = token("reader", &["write", "read", "bogus"]);
        assert_eq!(
            effective_scopes(&s.agents["reader"], &t),
            vec!["read".to_string()]
        );
    }

    fn meaning_snap() -> Snapshot {
        load_with_fixture_issuer(
            r#"
agents:
  - id: bot
    owner: alice@example.com
    scopes: [read, admin]
upstreams:
  - name: plain
    url: http://127.0.0.1:9
  - name: matrix
    url: http://127.0.0.1:9
    path_parameters: allow
  - name: iis
    url: http://127.0.0.1:9
    case_insensitive: true
routes:
  - name: plain-admin
    path: /api/admin/**
    upstream: plain
    scopes: [admin]
  - name: plain-any
    path: /api/**
    upstream: plain
    scopes: [read]
  - name: matrix-admin
    path: /m/admin/**
    upstream: matrix
    scopes: [admin]
  - name: matrix-any
    path: /m/**
    upstream: matrix
    scopes: [read]
  - name: iis-admin
    path: /w/admin/**
    upstream: iis
    scopes: [admin]
  - name: iis-any
    path: /w/**
    upstream: iis
    scopes: [read]
  - name: socket
    methods: [GET]
    path: /ws
    upstream: plain
    scopes: [read]
    websocket: true
"#,
        )
    }

    /// Attacks on request meaning, decided by a token that holds only `read`.
    #[test]
    fn request_meaning_table() {
        let s = meaning_snap();
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            // Matrix parameters must not let /api/** stand in for /api/admin/**.
            ("GET", "/api/admin;x=1/users", None, "path_parameter"),
            ("GET", "/api/admin%3Bx=1/users", None, "path_parameter"),
            ("GET", "/api/;/admin/users", None, "path_parameter"),
            ("GET", "/api/nothing;x", None, "path_parameter"),
            ("GET", "/api/users", None, "allow plain-any"),
            // Opted in: matched without the parameters, so the admin route decides.
            (
                "GET",
                "/m/admin;x=1/users",
                None,
                "insufficient_scope all=admin any=",
            ),
            ("GET", "/m/items;v=2", None, "allow matrix-any"),
            // Case-insensitive upstream: every spelling reaches the admin route.
            (
                "GET",
                "/W/ADMIN/users",
                None,
                "insufficient_scope all=admin any=",
            ),
            ("GET", "/w/Admin", None, "insufficient_scope all=admin any="),
            // Case-sensitive upstream: /API is simply not routed.
            ("GET", "/API/admin/users", None, "no_route"),
            // Upgrades only where a route says websocket, and only to websocket.
            (
                "GET",
                "/api/users",
                Some("websocket"),
                "upgrade_not_allowed websocket",
            ),
            ("GET", "/api/users", Some(""), "upgrade_not_allowed "),
            ("GET", "/ws", Some("h2c"), "upgrade_not_allowed h2c"),
            ("GET", "/ws", Some("WebSocket"), "allow socket"),
            ("GET", "/ws", None, "allow socket"),
            // No `methods:` is not "any method".
            ("TRACE", "/api/users", None, "no_route"),
            ("CONNECT", "/api/users", None, "no_route"),
            ("PROPFIND", "/api/users", None, "no_route"),
        ];
        for (m, p, up, want) in cases {
            let t = token("bot", &["read"]);
            let path = normalize(p, 999).unwrap();
            let method: Method = m.parse().unwrap();
            let (no_headers, no_volumes) = (http::HeaderMap::new(), InProcessLimitStore::new());
            let facts = RequestFacts {
                upgrade: *up,
                ..RequestFacts::plain(&method, &path, &t, &no_headers, &no_volumes)
            };
            assert_eq!(describe(&s, evaluate(&s, &facts)), *want, "{m} {p} {up:?}");
        }
    }

    /// MCP calls on a `kind: mcp` route: the body is read first, then the rule that names the
    /// tool decides; a shadowed route records a rule's missing scope instead of refusing.
    #[test]
    fn mcp_calls_are_decided_by_the_rule_naming_their_tool() {
        let s = load_with_fixture_issuer(
            r#"
agents:
  - id: bot
    owner: alice@example.com
    scopes: [read, write]
upstreams:
  - name: tools
    url: http://127.0.0.1:9
    kind: mcp
routes:
  - name: m
    path: /mcp
    upstream: tools
    scopes: [read]
    mcp:
      tools:
        - name: "get_*"
        - name: delete
          scopes: [write]
  - name: watched
    path: /watched
    upstream: tools
    scopes: [read]
    mode: shadow
    mcp:
      tools:
        - name: delete
          scopes: [write]
"#,
        );
        let decide = |method: &str, path: &str, body: Option<Value>| {
            let t = token("bot", &["read"]);
            let p = normalize(path, 999).unwrap();
            let m: Method = method.parse().unwrap();
            let (no_headers, no_volumes) = (http::HeaderMap::new(), InProcessLimitStore::new());
            let msg = body.as_ref().map(super::super::mcp::McpMessage::parse);
            let facts = RequestFacts {
                body: body.as_ref().map_or(BodyFact::NotRead, BodyFact::Json),
                mcp: msg.as_ref(),
                ..RequestFacts::plain(&m, &p, &t, &no_headers, &no_volumes)
            };
            match evaluate(&s, &facts) {
                Decision::Allow(a) => format!(
                    "allow {} rule={:?} would_deny={}",
                    s.routes.routes[a.route].name,
                    a.mcp_rule,
                    a.would_deny.is_some()
                ),
                d @ Decision::NeedBody(_) => describe(&s, d),
                Decision::Deny(d) => format!("{d:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap()
                    .to_string(),
            }
        };
        let call = |name: &str| {
            Some(
                serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":name,"arguments":{}}}),
            )
        };
        assert_eq!(decide("POST", "/mcp", None), "need_body 1048576");
        assert_eq!(
            decide("POST", "/mcp", call("get_x")),
            "allow m rule=Some(0) would_deny=false"
        );
        assert_eq!(decide("POST", "/mcp", call("delete")), "McpScope");
        assert_eq!(decide("POST", "/mcp", call("drop_all")), "McpNotAllowed");
        assert_eq!(decide("PUT", "/mcp", call("get_x")), "McpInvalid");
        assert_eq!(
            decide("GET", "/mcp", None),
            "allow m rule=None would_deny=false"
        );
        assert_eq!(
            decide(
                "POST",
                "/mcp",
                Some(serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
            ),
            "allow m rule=None would_deny=false"
        );
        assert_eq!(
            decide("POST", "/watched", call("delete")),
            "allow watched rule=Some(0) would_deny=true"
        );
        // Shadow mode never lets an unnamed tool through: routing-like checks always enforce.
        assert_eq!(
            decide("POST", "/watched", call("drop_all")),
            "McpNotAllowed"
        );
    }
}

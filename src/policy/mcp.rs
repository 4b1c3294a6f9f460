//! Policy: MCP (Model Context Protocol, Streamable HTTP). Every MCP call is a `POST` of
//! JSON-RPC to one URL, so a route alone cannot tell `tools/call delete_ticket` from
//! `tools/list`. On a route of `kind: mcp` this policy reads the JSON-RPC message and picks
//! the rule that names its tool, prompt or resource; that rule's scopes, conditions, limits
//! and approval then apply on top of the route's, exactly as a route's do. Deny by default:
//! a tool, prompt or resource no rule names is refused, and so is a method this gateway does
//! not know.
//!
//! Everything here is pure (parsing, rule choice, list filtering, definition digests); the
//! proxy (`proxy::mcp`) carries it out.

use super::conditions::Conditions;
use super::limits::Limits;
use super::snapshot::ApprovalPolicy;
use globset::{GlobBuilder, GlobMatcher};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What an MCP rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `tools/call`, by tool name.
    Tool,
    /// `prompts/get`, by prompt name.
    Prompt,
    /// `resources/read` (and subscribe), by URI.
    Resource,
}

impl Kind {
    /// `tool`, `prompt` or `resource`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::Resource => "resource",
        }
    }
}

/// What the gateway does when a tool's definition (description, schemas) differs from the one
/// recorded for it (a "rug pull": a server changing what a tool says or takes after people
/// reviewed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolChanges {
    /// Record it (audit line, metric, alert) and let calls go on.
    #[default]
    Report,
    /// Calls of the changed tool need human approval until an operator accepts the change.
    Approve,
    /// Calls of the changed tool are refused (and it is hidden from lists) until accepted.
    Deny,
}

/// One rule of a route's `mcp:` section.
#[derive(Debug, Clone)]
pub struct McpRule {
    /// Tool, prompt or resource.
    pub kind: Kind,
    /// The pattern as written (`delete_ticket`, `search_*`, `tickets://**`).
    pub pattern: Arc<str>,
    matcher: GlobMatcher,
    /// Scopes all required (besides the route's).
    pub scopes_all: Vec<String>,
    /// At least one of these too, when not empty.
    pub scopes_any: Vec<String>,
    /// Conditions of the rule, checked after the route's.
    pub conditions: Conditions,
    /// Limits of the rule, counted apart from the route's (`key`).
    pub limits: Limits,
    /// Calls need human approval first.
    pub approval: Option<Arc<ApprovalPolicy>>,
    /// `<route>/<kind>:<pattern>`: the rule's name in limits, metrics and the access log.
    pub key: Arc<str>,
}

impl McpRule {
    /// Compile a rule; `pattern` is a glob (`*` and `?`; for resources `*` stops at `/` and
    /// `**` crosses it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        route: &str,
        kind: Kind,
        pattern: &str,
        scopes_all: Vec<String>,
        scopes_any: Vec<String>,
        conditions: Conditions,
        limits: Limits,
        approval: Option<Arc<ApprovalPolicy>>,
    ) -> Result<McpRule, String> {
        if pattern.is_empty() {
            return Err("a pattern cannot be empty".into());
        }
        let glob = GlobBuilder::new(pattern)
            .literal_separator(kind == Kind::Resource)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("`{pattern}` is not a valid pattern: {}", e.kind()))?;
        Ok(McpRule {
            kind,
            pattern: pattern.into(),
            matcher: glob.compile_matcher(),
            scopes_all,
            scopes_any,
            conditions,
            limits,
            approval,
            key: format!("{route}/{}:{pattern}", kind.as_str()).into(),
        })
    }

    fn is_exact(&self) -> bool {
        !self.pattern.contains(['*', '?', '[', '{', '\\'])
    }
}

/// A route's `mcp:` section, compiled.
#[derive(Debug, Clone)]
pub struct McpPolicy {
    /// Rules in file order.
    pub rules: Vec<McpRule>,
    exact: HashMap<(Kind, Arc<str>), usize>,
    /// Largest JSON-RPC body read to decide (`mcp.max_body_bytes`).
    pub max_body: u64,
    /// How long a call needing approval waits for a decision before the agent is answered
    /// "pending" (`mcp.approval_wait`).
    pub approval_wait: Duration,
    /// What a changed tool definition does.
    pub tool_changes: ToolChanges,
    /// `log_arguments: true`: tool-call arguments go into the access log, not only their
    /// digest (they may hold personal data or secrets; off by default).
    pub log_arguments: bool,
}

impl McpPolicy {
    /// The policy of these rules.
    pub fn new(
        rules: Vec<McpRule>,
        max_body: u64,
        approval_wait: Duration,
        tool_changes: ToolChanges,
    ) -> McpPolicy {
        let mut exact = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            if r.is_exact() {
                exact.entry((r.kind, r.pattern.clone())).or_insert(i);
            }
        }
        McpPolicy {
            rules,
            exact,
            max_body,
            approval_wait,
            tool_changes,
            log_arguments: false,
        }
    }

    /// The rule for `name`: a rule naming it exactly, else the first pattern (in file order)
    /// that matches it.
    pub fn rule_for(&self, kind: Kind, name: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(&(kind, Arc::from(name))) {
            return Some(i);
        }
        self.rules
            .iter()
            .position(|r| r.kind == kind && !r.is_exact() && r.matcher.is_match(name))
    }

    /// May an agent holding the scopes `holds` says it holds use `name`? (What lists show:
    /// the rule and its scopes; conditions and approvals are judged when it is called.)
    pub fn visible(&self, kind: Kind, name: &str, holds: impl Fn(&str) -> bool) -> bool {
        self.rule_for(kind, name).is_some_and(|i| {
            let r = &self.rules[i];
            r.scopes_all.iter().all(|s| holds(s))
                && (r.scopes_any.is_empty() || r.scopes_any.iter().any(|s| holds(s)))
        })
    }
}

/// How the gateway treats a JSON-RPC method on an MCP route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodClass {
    /// Session and protocol plumbing the route's scopes cover: `initialize`, `ping`,
    /// `server/discover`, `logging/setLevel`, `subscriptions/listen` and the client's
    /// notifications.
    Protocol,
    /// A list whose answer is filtered to what the caller may use.
    List(ListKind),
    /// Names one tool, prompt or resource: decided by its rule.
    Target(Kind),
    /// A client's answer to a server request (sampling, elicitation, roots).
    Response,
    /// Anything else: refused.
    Unknown,
}

/// The four filtered lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `tools/list` → `result.tools[].name`.
    Tools,
    /// `prompts/list` → `result.prompts[].name`.
    Prompts,
    /// `resources/list` → `result.resources[].uri`.
    Resources,
    /// `resources/templates/list` → `result.resourceTemplates[].uriTemplate`.
    Templates,
}

impl ListKind {
    /// The result's array and the field naming each item.
    fn fields(self) -> (&'static str, &'static str, Kind) {
        match self {
            ListKind::Tools => ("tools", "name", Kind::Tool),
            ListKind::Prompts => ("prompts", "name", Kind::Prompt),
            ListKind::Resources => ("resources", "uri", Kind::Resource),
            ListKind::Templates => ("resourceTemplates", "uriTemplate", Kind::Resource),
        }
    }
}

/// Client notifications that carry no action of their own.
const PROTOCOL_NOTIFICATIONS: [&str; 5] = [
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "notifications/elicitation/response",
];

/// The class of `method`.
pub fn classify(method: &str) -> MethodClass {
    match method {
        "initialize" | "ping" | "server/discover" | "logging/setLevel" | "subscriptions/listen" => {
            MethodClass::Protocol
        }
        m if PROTOCOL_NOTIFICATIONS.contains(&m) => MethodClass::Protocol,
        "tools/list" => MethodClass::List(ListKind::Tools),
        "prompts/list" => MethodClass::List(ListKind::Prompts),
        "resources/list" => MethodClass::List(ListKind::Resources),
        "resources/templates/list" => MethodClass::List(ListKind::Templates),
        "tools/call" => MethodClass::Target(Kind::Tool),
        "prompts/get" => MethodClass::Target(Kind::Prompt),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            MethodClass::Target(Kind::Resource)
        }
        // Completing an argument of a prompt or resource is judged as using it.
        "completion/complete" => MethodClass::Target(Kind::Prompt),
        _ => MethodClass::Unknown,
    }
}

/// Why a body is not one MCP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// A JSON array: a JSON-RPC batch (not part of MCP since 2025-06-18; refused rather than
    /// authorised element by element, see README).
    Batch,
    /// Not a JSON-RPC 2.0 request, notification or response; the text says why.
    NotJsonRpc(&'static str),
    /// Not JSON at all.
    NotJson(String),
    /// Longer than `mcp.max_body_bytes`.
    TooLarge(u64),
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::Batch => {
                f.write_str("JSON-RPC batches are not accepted: send one message per request")
            }
            Malformed::NotJsonRpc(why) => write!(f, "not a JSON-RPC 2.0 message: {why}"),
            Malformed::NotJson(why) => write!(f, "the body is not JSON: {why}"),
            Malformed::TooLarge(max) => write!(
                f,
                "the message is longer than the {max} bytes this route reads"
            ),
        }
    }
}

/// One JSON-RPC message, as far as the decision needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct McpMessage {
    /// The request's `id` (absent for notifications).
    pub id: Option<Value>,
    /// The method; `None` for a client's response to a server request.
    pub method: Option<Arc<str>>,
    /// How the method is treated.
    pub class: MethodClass,
    /// For a target method: what is named, and as what kind.
    pub target: Option<(Kind, String)>,
    /// `tools/call`: hex SHA-256 of the canonical JSON of `arguments` (keys sorted, no
    /// spaces; absent arguments count as `{}`). The log records it.
    pub args_sha256: Option<String>,
}

impl McpMessage {
    /// Read a JSON body as one MCP message.
    pub fn parse(v: &Value) -> Result<McpMessage, Malformed> {
        let obj = match v {
            Value::Array(_) => return Err(Malformed::Batch),
            Value::Object(o) => o,
            _ => return Err(Malformed::NotJsonRpc("the body is not a JSON object")),
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(Malformed::NotJsonRpc("`jsonrpc` must be \"2.0\""));
        }
        let id = match obj.get("id") {
            None => None,
            Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
            Some(_) => return Err(Malformed::NotJsonRpc("`id` must be a string or a number")),
        };
        let Some(method) = obj.get("method") else {
            // A response: it answers a server request and must carry its id and one outcome.
            let one = obj.contains_key("result") != obj.contains_key("error");
            if id.is_none() || !one {
                return Err(Malformed::NotJsonRpc(
                    "a message without `method` must be a response with `id` and one of `result` or `error`",
                ));
            }
            return Ok(McpMessage {
                id,
                method: None,
                class: MethodClass::Response,
                target: None,
                args_sha256: None,
            });
        };
        let Some(method) = method.as_str() else {
            return Err(Malformed::NotJsonRpc("`method` must be a string"));
        };
        let params = obj.get("params");
        if params.is_some_and(|p| !p.is_object()) {
            return Err(Malformed::NotJsonRpc("`params` must be an object"));
        }
        let str_param = |key: &str| params.and_then(|p| p.get(key)).and_then(Value::as_str);
        let mut class = classify(method);
        let mut target = None;
        let mut args_sha256 = None;
        if let MethodClass::Target(kind) = class {
            let named = match method {
                "completion/complete" => {
                    let r = params.and_then(|p| p.get("ref"));
                    match r.and_then(|r| r.get("type")).and_then(Value::as_str) {
                        Some("ref/prompt") => r
                            .and_then(|r| r.get("name"))
                            .and_then(Value::as_str)
                            .map(|n| (Kind::Prompt, n)),
                        Some("ref/resource") => r
                            .and_then(|r| r.get("uri"))
                            .and_then(Value::as_str)
                            .map(|u| (Kind::Resource, u)),
                        _ => None,
                    }
                }
                _ => match kind {
                    Kind::Resource => str_param("uri").map(|u| (kind, u)),
                    Kind::Tool | Kind::Prompt => str_param("name").map(|n| (kind, n)),
                },
            };
            let Some((kind, name)) = named else {
                return Err(Malformed::NotJsonRpc(match kind {
                    Kind::Resource => "this method needs a string `params.uri`",
                    Kind::Tool | Kind::Prompt => "this method needs a string `params.name` (or, for completion, `params.ref`)",
                }));
            };
            if kind == Kind::Tool {
                let args = params.and_then(|p| p.get("arguments"));
                if args.is_some_and(|a| !a.is_object()) {
                    return Err(Malformed::NotJsonRpc(
                        "`params.arguments` must be an object",
                    ));
                }
                args_sha256 = Some(arguments_sha256(args));
            }

            class = MethodClass::Target(kind);
            target = Some((kind, name.to_string()));
        }
        Ok(McpMessage {
            id,
            method: Some(method.into()),
            class,
            target,
            args_sha256,
        })
    }

    /// A `tools/call`: what supervised agents and step-ups put to a human (the other methods
    /// read).
    pub fn is_call(&self) -> bool {
        matches!(self.target, Some((Kind::Tool, _)))
    }

    /// The method as a bounded metric label: known methods as themselves, else `other`.
    pub fn method_label(&self) -> &'static str {
        const KNOWN: [&str; 19] = [
            "initialize",
            "ping",
            "server/discover",
            "logging/setLevel",
            "subscriptions/listen",
            "tools/list",
            "prompts/list",
            "resources/list",
            "resources/templates/list",
            "tools/call",
            "prompts/get",
            "resources/read",
            "resources/subscribe",
            "resources/unsubscribe",
            "completion/complete",
            "notifications/initialized",
            "notifications/cancelled",
            "notifications/progress",
            "notifications/roots/list_changed",
        ];
        match &self.method {
            None => "response",
            Some(m) => KNOWN
                .iter()
                .find(|k| **k == &**m)
                .copied()
                .unwrap_or("other"),
        }
    }
}

/// Tools whose definition changed since it was recorded and no operator accepted yet, by
/// (upstream, tool). Runtime state, handed to the pure decision like the kill switch's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangedTools {
    set: std::collections::HashSet<(String, String)>,
}

impl ChangedTools {
    /// From (upstream, tool) pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> ChangedTools {
        ChangedTools {
            set: pairs.into_iter().collect(),
        }
    }

    /// Has `tool` of `upstream` changed without being accepted?
    pub fn contains(&self, upstream: &str, tool: &str) -> bool {
        !self.set.is_empty() && self.set.contains(&(upstream.to_string(), tool.to_string()))
    }
}

/// No changed tools (benchmarks, tests, non-MCP calls).
pub static NO_CHANGED_TOOLS: std::sync::LazyLock<ChangedTools> =
    std::sync::LazyLock::new(ChangedTools::default);

/// What the MCP step of the pipeline found.
#[derive(Debug)]
pub enum Step {
    /// Go on; the rule that names the target (if the method names one), whether the call
    /// is a `tools/call` (a "write" for supervised agents), and whether the tool's definition
    /// changed under `tool_changes: approve`.
    Continue {
        /// Index into [`McpPolicy::rules`].
        rule: Option<usize>,
        /// A `tools/call`.
        call: bool,
        /// The tool changed and must be approved.
        changed: bool,
        /// The rule's scopes are missing but the route's scope check is in shadow mode: the
        /// refusal it would make.
        would_deny: Option<super::decision::Denial>,
    },
    /// Read the body (at most this many bytes) and decide again.
    NeedBody(u64),
    /// Refuse.
    Deny(super::decision::Denial),
}

/// The MCP step: read the message, check the standard headers against it, find its rule and
/// check the rule's scopes. `GET` (the server's event stream) and `DELETE` (ending a session)
/// carry no message and need only the route's scopes; resuming a stream (`Last-Event-ID`)
/// is refused, because a replayed answer to a list would bypass the filtering.
pub fn check(
    policy: &McpPolicy,
    shadow_scopes: bool,
    upstream: &str,
    facts: &super::decision::RequestFacts<'_>,
    agent: &Arc<super::snapshot::Agent>,
    route: usize,
) -> Step {
    use super::decision::Denial;
    let invalid = |reason: String| {
        Step::Deny(Denial::McpInvalid {
            agent: agent.clone(),
            route,
            reason,
        })
    };
    if !matches!(
        *facts.method,
        http::Method::POST | http::Method::GET | http::Method::DELETE
    ) {
        return invalid(format!(
            "MCP over HTTP uses POST (messages), GET (the server's event stream) and DELETE (ending a session), not {}",
            facts.method
        ));
    }
    if *facts.method != http::Method::POST {
        if facts.headers.contains_key("last-event-id") {
            return invalid("resuming an event stream (`Last-Event-ID`) is not supported through this gateway: a replayed answer would skip its checks; send the request again".into());
        }
        return Step::Continue {
            rule: None,
            call: false,
            changed: false,
            would_deny: None,
        };
    }
    let msg = match facts.mcp {
        None if facts.body_len == Some(0) => {
            return invalid("an MCP request needs a JSON-RPC message in its body".into())
        }
        None => return Step::NeedBody(policy.max_body),
        Some(Err(e)) => return invalid(e.to_string()),
        Some(Ok(m)) => m,
    };
    if let Err(why) = headers_match(facts.headers, msg) {
        return invalid(why);
    }
    let (kind, name) = match (msg.class, &msg.target) {
        (MethodClass::Protocol | MethodClass::List(_) | MethodClass::Response, _) => {
            return Step::Continue {
                rule: None,
                call: false,
                changed: false,
                would_deny: None,
            }
        }
        (MethodClass::Unknown, _) | (MethodClass::Target(_), None) => {
            return Step::Deny(Denial::McpUnknownMethod {
                agent: agent.clone(),
                route,
                method: msg.method.as_deref().unwrap_or("").to_string(),
            })
        }
        (MethodClass::Target(_), Some((kind, name))) => (*kind, name),
    };
    if kind == Kind::Resource {
        if let Some(why) = ambiguous_uri(name) {
            return invalid(format!(
                "the resource URI `{name}` {why}; name the resource plainly"
            ));
        }
    }
    let Some(i) = policy.rule_for(kind, name) else {
        return Step::Deny(Denial::McpNotAllowed {
            agent: agent.clone(),
            route,
            kind,
            name: name.clone(),
        });
    };
    let r = &policy.rules[i];
    let mut would_deny = None;
    if let Some((missing_all, missing_any_of)) =
        super::scopes::missing(&r.scopes_all, &r.scopes_any, agent, facts.token)
    {
        let d = Denial::McpScope {
            agent: agent.clone(),
            route,
            rule: i,
            name: name.clone(),
            missing_all,
            missing_any_of,
        };
        if !shadow_scopes {
            return Step::Deny(d);
        }
        would_deny = Some(d);
    }
    let changed = kind == Kind::Tool && facts.changed_tools.contains(upstream, name);
    if changed && policy.tool_changes == ToolChanges::Deny {
        return Step::Deny(Denial::McpToolChanged {
            agent: agent.clone(),
            route,
            tool: name.clone(),
        });
    }
    Step::Continue {
        rule: Some(i),
        call: kind == Kind::Tool,
        changed: changed && policy.tool_changes == ToolChanges::Approve,
        would_deny,
    }
}

/// Hex SHA-256 of a `tools/call`'s `params` as an approval binds them: canonical JSON of all
/// of them (name, arguments, `task`, `_meta`, anything a later revision adds) without
/// `_meta.progressToken` (a fresh correlation token on every request, which would make every
/// retry a different call). Computed only for calls that need approval.
pub fn binding_sha256(params: &Value) -> String {
    let mut p = params.clone();
    if let Some(meta) = p.get_mut("_meta").and_then(Value::as_object_mut) {
        meta.remove("progressToken");
    }
    hex::encode(Sha256::digest(
        serde_json::to_vec(&p).expect("a Value always serializes"),
    ))
}

/// Why a resource URI is ambiguous, if it is: a `.` or `..` segment (raw or percent-encoded),
/// an encoded `/` or `\`, a backslash, or a control character. Rules match URIs as text,
/// while a file-backed server resolves them; `tickets://open/../../etc/passwd` matches
/// `tickets://**` and names something else.
pub fn ambiguous_uri(uri: &str) -> Option<&'static str> {
    if uri.chars().any(|c| c == '\\' || c.is_control()) {
        return Some("contains a backslash or a control character");
    }
    let lower = uri.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Some("contains an encoded `/` or `\\`");
    }
    let decoded = percent_encoding::percent_decode_str(uri).decode_utf8_lossy();
    let path = decoded
        .split_once("://")
        .map_or(&*decoded, |(_, rest)| rest);
    if path.split(['/', '\\']).any(|seg| seg == "." || seg == "..") {
        return Some("contains a `.` or `..` segment");
    }
    None
}

/// Hex SHA-256 of the canonical JSON of tool arguments (absent = `{}`). `serde_json` keeps
/// object keys sorted (no `preserve_order`) and writes no spaces, so two bodies that differ
/// only in key order or whitespace bind to the same approval; any other difference (a value,
/// `1` against `1.0`) is a different call.
pub fn arguments_sha256(args: Option<&Value>) -> String {
    let empty = Value::Object(Default::default());
    let bytes = serde_json::to_vec(args.unwrap_or(&empty)).expect("a Value always serializes");
    hex::encode(Sha256::digest(bytes))
}

/// Hex SHA-256 of a tool definition as listed (everything but `_meta`, canonical JSON): the
/// pin a changed description or schema no longer matches.
pub fn tool_definition_sha256(tool: &Value) -> String {
    let mut t = tool.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("_meta");
    }
    hex::encode(Sha256::digest(
        serde_json::to_vec(&t).expect("a Value always serializes"),
    ))
}

/// Filter a list `result` in place to the items `keep` accepts, and mark it private to the
/// caller (`cacheScope: private`: a filtered list must never be served to someone else from a
/// cache). `nextCursor` is left as the server sent it: every page is filtered the same way, so
/// paging through stays consistent (a page may come back empty with a cursor). Returns how
/// many items were removed.
pub fn filter_list(result: &mut Value, list: ListKind, keep: impl Fn(Kind, &str) -> bool) -> usize {
    let (array, field, kind) = list.fields();
    let Some(obj) = result.as_object_mut() else {
        return 0;
    };
    let mut removed = 0;
    if let Some(Value::Array(items)) = obj.get_mut(array) {
        let before = items.len();
        items.retain(|item| {
            item.get(field)
                .and_then(Value::as_str)
                .is_some_and(|name| keep(kind, name))
        });
        removed = before - items.len();
    } else if obj.contains_key(array) {
        // Not an array: nothing the agent may see can be told apart; drop it.
        obj.insert(array.into(), Value::Array(Vec::new()));
    }
    obj.insert("cacheScope".into(), Value::String("private".into()));
    removed
}

/// `Mcp-Name` as clients send it: the bare value, or `=?base64?<b64>?=` for values that cannot
/// travel as a header.
pub fn decode_name_header(raw: &str) -> Option<String> {
    use base64::Engine;
    match raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(raw.to_string()),
    }
}

/// Check the `Mcp-Method` / `Mcp-Name` headers (2026-07-28 revision) against the body: a proxy
/// that routes or logs by header must never see one thing while the server executes another.
/// Absent headers are fine (older revisions don't send them).
pub fn headers_match(headers: &http::HeaderMap, msg: &McpMessage) -> Result<(), String> {
    let one = |name: &str| -> Result<Option<&str>, String> {
        let mut all = headers.get_all(name).iter();
        let first = all.next();
        if all.next().is_some() {
            return Err(format!("more than one `{name}` header"));
        }
        first
            .map(|v| v.to_str().map_err(|_| format!("`{name}` is not text")))
            .transpose()
    };
    if let Some(m) = one("mcp-method")? {
        if Some(m) != msg.method.as_deref() {
            return Err(format!(
                "the `Mcp-Method` header says `{m}` but the body's method is `{}`",
                msg.method.as_deref().unwrap_or("(none)")
            ));
        }
    }
    if let Some(raw) = one("mcp-name")? {
        let named = decode_name_header(raw).ok_or("`Mcp-Name` is not valid base64 text")?;
        match &msg.target {
            Some((_, t)) if *t == named => {}
            Some((_, t)) => {
                return Err(format!(
                    "the `Mcp-Name` header says `{named}` but the body names `{t}`"
                ))
            }
            None => {
                return Err(format!(
                    "the `Mcp-Name` header says `{named}` but the body names nothing"
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(kind: Kind, p: &str, scopes: &[&str]) -> McpRule {
        McpRule::new(
            "mcp",
            kind,
            p,
            scopes.iter().map(|s| s.to_string()).collect(),
            vec![],
            Conditions::default(),
            Limits::default(),
            None,
        )
        .unwrap()
    }

    fn policy() -> McpPolicy {
        McpPolicy::new(
            vec![
                rule(Kind::Tool, "search_*", &["read"]),
                rule(Kind::Tool, "search_admin", &["admin"]),
                rule(Kind::Tool, "get_ticket", &["read"]),
                rule(Kind::Resource, "tickets://*", &["read"]),
                rule(Kind::Resource, "docs://**", &["read"]),
            ],
            1 << 20,
            Duration::from_secs(30),
            ToolChanges::Report,
        )
    }

    #[test]
    fn an_exact_rule_beats_a_pattern_and_patterns_go_in_file_order() {
        let p = policy();
        assert_eq!(p.rule_for(Kind::Tool, "search_admin"), Some(1));
        assert_eq!(p.rule_for(Kind::Tool, "search_tickets"), Some(0));
        assert_eq!(p.rule_for(Kind::Tool, "get_ticket"), Some(2));
        assert_eq!(p.rule_for(Kind::Tool, "delete_ticket"), None);
        // A tool rule never names a prompt of the same name.
        assert_eq!(p.rule_for(Kind::Prompt, "get_ticket"), None);
        // Resource patterns: `*` stays within one segment, `**` crosses them.
        assert_eq!(p.rule_for(Kind::Resource, "tickets://1"), Some(3));
        assert_eq!(p.rule_for(Kind::Resource, "tickets://1/../secrets"), None);
        assert_eq!(p.rule_for(Kind::Resource, "docs://a/b/c"), Some(4));
        let holds = |s: &str| s == "read";
        assert!(p.visible(Kind::Tool, "search_tickets", holds));
        assert!(!p.visible(Kind::Tool, "search_admin", holds));
        assert!(!p.visible(Kind::Tool, "delete_ticket", holds));
    }

    #[test]
    fn messages_are_read_strictly() {
        let m = McpMessage::parse(&json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_ticket","arguments":{"b":1,"a":2}}})).unwrap();
        assert_eq!(m.id, Some(json!(7)));
        assert_eq!(m.target, Some((Kind::Tool, "get_ticket".into())));
        assert!(m.is_call());
        // Key order and whitespace do not change the digest; a value does.
        let same = McpMessage::parse(&serde_json::from_str(r#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"arguments":{ "a":2, "b":1 },"name":"get_ticket"}}"#).unwrap()).unwrap();
        assert_eq!(m.args_sha256, same.args_sha256);
        let other = McpMessage::parse(&json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_ticket","arguments":{"b":1,"a":3}}})).unwrap();
        assert_ne!(m.args_sha256, other.args_sha256);
        for (body, want) in [
            (json!([{"jsonrpc":"2.0","id":1,"method":"ping"}]), Malformed::Batch),
            (json!({"id":1,"method":"ping"}), Malformed::NotJsonRpc("`jsonrpc` must be \"2.0\"")),
            (json!({"jsonrpc":"2.0","id":null,"method":"ping"}), Malformed::NotJsonRpc("`id` must be a string or a number")),
            (json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}), Malformed::NotJsonRpc("this method needs a string `params.name` (or, for completion, `params.ref`)")),
            (json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[1]}}), Malformed::NotJsonRpc("`params.arguments` must be an object")),
            (json!({"jsonrpc":"2.0","id":1}), Malformed::NotJsonRpc("a message without `method` must be a response with `id` and one of `result` or `error`")),
        ] {
            assert_eq!(McpMessage::parse(&body), Err(want), "{body}");
        }
        let r = McpMessage::parse(&json!({"jsonrpc":"2.0","id":3,"result":{}})).unwrap();
        assert_eq!(r.class, MethodClass::Response);
        let c = McpMessage::parse(&json!({"jsonrpc":"2.0","id":3,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"secrets://x"},"argument":{"name":"a","value":"b"}}})).unwrap();
        assert_eq!(c.target, Some((Kind::Resource, "secrets://x".into())));
        let u = McpMessage::parse(&json!({"jsonrpc":"2.0","id":3,"method":"tasks/get"})).unwrap();
        assert_eq!(u.class, MethodClass::Unknown);
        assert_eq!(u.method_label(), "other");
    }

    #[test]
    fn resource_uris_that_could_resolve_elsewhere_are_refused() {
        for bad in [
            "tickets://open/../../etc/passwd",
            "tickets://open/%2e%2e/x",
            "tickets://open/%2E%2E/x",
            "file:///srv/docs/./a",
            "tickets://open%2f..%2fsecrets",
            "tickets://open\\..\\x",
            "tickets://a\u{0}b",
        ] {
            assert!(ambiguous_uri(bad).is_some(), "{bad}");
        }
        for good in [
            "tickets://open/1",
            "file:///srv/docs/a.b/c..d",
            "tickets://{id}",
            "https://x.example/a%20b",
        ] {
            assert_eq!(ambiguous_uri(good), None, "{good}");
        }
    }

    #[test]
    fn an_approval_binds_all_params_but_the_progress_token() {
        let digest = |params: Value| binding_sha256(&params);
        let base = digest(json!({"name":"t","arguments":{"a":1},"_meta":{"progressToken":1}}));
        assert_eq!(
            base,
            digest(json!({"_meta":{"progressToken":99},"arguments":{"a":1},"name":"t"}))
        );
        assert_ne!(
            base,
            digest(
                json!({"name":"t","arguments":{"a":1},"_meta":{"progressToken":1},"task":{"ttl":60000}})
            )
        );
        assert_ne!(
            base,
            digest(json!({"name":"t","arguments":{"a":1},"_meta":{"progressToken":1,"x":1}}))
        );
        assert_ne!(base, digest(json!({"name":"t","arguments":{"a":2}})));
    }

    #[test]
    fn lists_keep_only_what_the_caller_may_use_and_become_private() {
        let p = policy();
        let mut result = json!({"tools":[{"name":"search_tickets"},{"name":"search_admin"},{"name":"delete_ticket"},{"noname":1}],"nextCursor":"abc","ttlMs":60000,"cacheScope":"public"});
        let removed = filter_list(&mut result, ListKind::Tools, |k, n| {
            p.visible(k, n, |s| s == "read")
        });
        assert_eq!(removed, 3);
        assert_eq!(result["tools"], json!([{"name":"search_tickets"}]));
        assert_eq!(result["nextCursor"], "abc");
        assert_eq!(result["cacheScope"], "private");
        let mut t = json!({"resourceTemplates":[{"uriTemplate":"tickets://{id}"},{"uriTemplate":"secrets://{name}"}]});
        filter_list(&mut t, ListKind::Templates, |k, n| {
            p.visible(k, n, |_| true)
        });
        assert_eq!(
            t["resourceTemplates"],
            json!([{"uriTemplate":"tickets://{id}"}])
        );
    }

    #[test]
    fn standard_headers_must_agree_with_the_body() {
        let m = McpMessage::parse(
            &json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_ticket"}}),
        )
        .unwrap();
        let h = |pairs: &[(&str, &str)]| {
            let mut map = http::HeaderMap::new();
            for (k, v) in pairs {
                map.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            map
        };
        assert!(headers_match(&h(&[]), &m).is_ok());
        assert!(headers_match(
            &h(&[("mcp-method", "tools/call"), ("mcp-name", "get_ticket")]),
            &m
        )
        .is_ok());
        assert!(headers_match(&h(&[("mcp-name", "=?base64?Z2V0X3RpY2tldA==?=")]), &m).is_ok());
        assert!(headers_match(&h(&[("mcp-method", "tools/list")]), &m).is_err());
        assert!(headers_match(&h(&[("mcp-name", "search_tickets")]), &m).is_err());
        assert!(headers_match(
            &h(&[("mcp-name", "get_ticket"), ("mcp-name", "get_ticket")]),
            &m
        )
        .is_err());
    }

    #[test]
    fn a_changed_description_changes_the_definition_digest_but_meta_does_not() {
        let a = json!({"name":"t","description":"reads","inputSchema":{"type":"object"}});
        let b = json!({"name":"t","description":"reads, then mails it to evil.example","inputSchema":{"type":"object"}});
        let c = json!({"name":"t","description":"reads","inputSchema":{"type":"object"},"_meta":{"x":1}});
        assert_ne!(tool_definition_sha256(&a), tool_definition_sha256(&b));
        assert_eq!(tool_definition_sha256(&a), tool_definition_sha256(&c));
    }
}

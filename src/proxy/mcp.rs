//! The proxy side of MCP: the message is read before deciding, refusals answer as JSON-RPC,
//! upstream sessions are bound to the agent that opened them, list answers are filtered to
//! what the caller may use (JSON or SSE, page by page) while tool definitions are compared
//! with their pins, and calls needing approval wait briefly, then answer "pending".

use super::refusal::{Refusal, Rendered};
use super::{Gateway, RequestCtx};
use crate::observe::alert::AlertNotice;
use crate::policy::mcp::{
    filter_list, tool_definition_sha256, ListKind, McpMessage, McpPolicy, MethodClass, ToolChanges,
};
use crate::policy::Agent;
use crate::state::mcp::Observation;
use crate::state::GatewayState;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;

/// The session header of the Streamable HTTP transport (2025-06-18).
pub const SESSION_HEADER: &str = "mcp-session-id";

/// Largest list answer (or single SSE event) buffered for filtering; past it the answer is
/// replaced by a JSON-RPC error rather than passed on unfiltered.
const MAX_FILTERED_BYTES: usize = 8 * 1024 * 1024;

/// JSON-RPC error code of a malformed message.
const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC error code of a method the gateway refuses as unknown.
const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC error code of every other refusal by the gateway (`data.error` says which).
const REFUSED_BY_GATEWAY: i64 = -32001;
/// JSON-RPC error code of an answer the gateway could not filter.
const FILTER_FAILED: i64 = -32002;

/// MCP facts of one call, kept for the answer.
pub(super) struct McpCall {
    /// The JSON-RPC message (`None` for `GET` and `DELETE`).
    pub msg: Option<McpMessage>,
    /// The route's MCP policy.
    pub policy: Arc<McpPolicy>,
    /// The rule that named the call's target.
    pub rule: Option<usize>,
    /// The session id the request carried.
    pub session: Option<String>,
    /// Filtering of a list answer, once its headers said how it comes.
    pub filter: Option<ListFilter>,
    /// The tool call's arguments, kept for the access log only under `log_arguments: true`.
    pub arguments: Option<Value>,
}

impl McpCall {
    /// The MCP facts of a call on a route with `policy`: its message (if read), the rule that
    /// named its target, and the session id it carried.
    pub fn new(
        policy: &Arc<McpPolicy>,
        msg: Option<McpMessage>,
        rule: Option<usize>,
        session: Option<String>,
    ) -> Box<McpCall> {
        Box::new(McpCall {
            msg,
            policy: policy.clone(),
            rule,
            session,
            filter: None,
            arguments: None,
        })
    }

    /// The request's id, when it has one (refusals then answer as JSON-RPC).
    pub fn id(&self) -> Option<&Value> {
        self.msg.as_ref().and_then(|m| m.id.as_ref())
    }
}

/// A tool call's arguments from its body, for the access log.
pub(super) fn arguments_of(body: Option<&Bytes>) -> Option<Value> {
    let v: Value = serde_json::from_slice(body?).ok()?;
    v.get("params")?.get("arguments").cloned()
}

/// A refusal as JSON-RPC: HTTP 200 (clients treat a 4xx on the transport as fatal) carrying
/// an `error` with the request's id, the gateway's message, and the whole refusal as `data`.
/// An unknown session stays 404: that is how the transport tells a client to initialize anew.
pub(super) fn jsonrpc_refusal(id: &Value, out: &Rendered) -> (u16, Vec<u8>) {
    let data: Value = serde_json::from_slice(&out.body).unwrap_or(Value::Null);
    let message = data["message"].as_str().unwrap_or(out.code).to_string();
    let code = match out.code {
        "invalid_mcp_message" => INVALID_REQUEST,
        "mcp_method_not_allowed" => METHOD_NOT_FOUND,
        _ => REFUSED_BY_GATEWAY,
    };
    let status = if out.code == "mcp_session_unknown" {
        404
    } else {
        200
    };
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code, "message": message, "data": data},
    });
    (status, serde_json::to_vec(&body).expect("JSON serializes"))
}

/// A `tools/call` held for approval, answered as a tool result the model can read and act
/// on: `isError: true` (nothing ran), a text that says to call again with the same arguments,
/// and the approval under `_meta`. Chosen over a JSON-RPC error because clients surface a
/// tool result to the model, while many abort the agent's turn on a protocol error.
pub(super) fn pending_result(id: &Value, out: &Rendered, tool: &str) -> Vec<u8> {
    let data: Value = serde_json::from_slice(&out.body).unwrap_or(Value::Null);
    let approval = &data["approval_id"];
    let text = format!(
        "Not run yet: calling tool `{tool}` with these arguments needs a human's approval (approval {}, expires at {}). Nothing was executed. Call `{tool}` again with exactly the same arguments in about {} seconds; once approved it runs once. Different arguments need a new approval.",
        approval.as_str().unwrap_or("?"),
        data["expires_at"].as_str().unwrap_or("?"),
        out.retry_after.unwrap_or(5)
    );
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "content": [{"type": "text", "text": text}],
            "isError": true,
            "_meta": {"portcullis/approval": {
                "status": "pending",
                "approval_id": approval,
                "expires_at": data["expires_at"],
                "retry_after": out.retry_after,
                "approvals": data["approvals"],
                "quorum": data["quorum"],
            }},
        },
    });
    serde_json::to_vec(&body).expect("JSON serializes")
}

/// What to check of a call's session before it is forwarded.
pub(super) fn session_refusal(
    state: &GatewayState,
    upstream: &Arc<str>,
    agent: &Agent,
    call: &McpCall,
) -> Option<Refusal> {
    let id = call.session.as_deref()?;
    match state.mcp.session_owner(upstream, id) {
        Some(owner) if owner == agent.id => None,
        Some(_) => Some(Refusal::McpSessionForeign),
        // `initialize` opens a session; anything else must name one this gateway saw opened.
        None if call
            .msg
            .as_ref()
            .is_some_and(|m| m.method.as_deref() == Some("initialize")) =>
        {
            None
        }
        None => Some(Refusal::McpSessionUnknown),
    }
}

/// How a list answer arrives.
pub(super) enum ListFilter {
    /// One JSON body, buffered whole (`true` once it passed the cap).
    Json(Vec<u8>, bool),
    /// An event stream: complete events are filtered as they arrive, the rest waits.
    Sse(Vec<u8>),
}

/// What the filter needs to judge items.
pub(super) struct FilterScope<'a> {
    pub state: &'a GatewayState,
    pub upstream: &'a str,
    pub policy: &'a McpPolicy,
    pub list: ListKind,
    pub id: &'a Value,
    /// Scopes the agent holds with this token.
    pub holds: &'a dyn Fn(&str) -> bool,
    pub request_id: &'a str,
    pub agent: &'a Agent,
}

impl ListFilter {
    /// The filter for a list answer with this content type (`None`: pass it as it is, which
    /// happens only for answers that cannot carry a list, e.g. an empty 202).
    pub fn for_content_type(ct: Option<&str>) -> ListFilter {
        match ct {
            Some(ct) if ct.to_ascii_lowercase().starts_with("text/event-stream") => {
                ListFilter::Sse(Vec::new())
            }
            _ => ListFilter::Json(Vec::new(), false),
        }
    }

    /// Take a chunk of the upstream's answer; returns what may go to the agent now.
    pub fn feed(&mut self, chunk: &[u8], end: bool, scope: &FilterScope<'_>) -> Bytes {
        match self {
            ListFilter::Json(buf, over) => {
                if *over || buf.len() + chunk.len() > MAX_FILTERED_BYTES {
                    // Swallow the rest, then answer the error once.
                    *over = true;
                    buf.clear();
                    return if end {
                        Bytes::from(filter_failed(scope.id, "the list answer is too large"))
                    } else {
                        Bytes::new()
                    };
                }
                buf.extend_from_slice(chunk);
                if !end {
                    return Bytes::new();
                }
                let whole = std::mem::take(buf);
                match serde_json::from_slice::<Value>(&whole) {
                    Ok(mut v) => {
                        filter_message(&mut v, scope);
                        Bytes::from(serde_json::to_vec(&v).expect("JSON serializes"))
                    }
                    Err(_) => Bytes::from(filter_failed(scope.id, "the list answer is not JSON")),
                }
            }
            ListFilter::Sse(buf) => {
                buf.extend_from_slice(chunk);
                let mut out = Vec::new();
                while let Some((event_end, next)) = event_boundary(buf) {
                    let event: Vec<u8> = buf.drain(..next).collect();
                    out.extend_from_slice(&filter_event(&event[..event_end], scope));
                }
                if buf.len() > MAX_FILTERED_BYTES {
                    buf.clear();
                    out.extend_from_slice(&sse_event(&filter_failed(
                        scope.id,
                        "an event of the list answer is too large",
                    )));
                }
                if end && !buf.is_empty() {
                    // An unterminated last event: judged like a whole one.
                    let rest = std::mem::take(buf);
                    out.extend_from_slice(&filter_event(&rest, scope));
                }
                Bytes::from(out)
            }
        }
    }
}

/// The end of the first complete event in `buf` (before its blank line) and where the next
/// begins.
fn event_boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// One SSE event (without its blank line), filtered: its `data` lines joined and judged as a
/// JSON-RPC message; other fields (`id`, `event`, `retry`, comments) kept.
fn filter_event(event: &[u8], scope: &FilterScope<'_>) -> Vec<u8> {
    let text = String::from_utf8_lossy(event);
    let mut fields = Vec::new();
    let mut data = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        } else if !line.is_empty() {
            fields.push(line);
        }
    }
    let mut out = String::new();
    for f in &fields {
        out.push_str(f);
        out.push('\n');
    }
    // An event without data (a priming event that only sets `id` and `retry`) passes as is.
    if data.iter().any(|d| !d.is_empty()) {
        let joined = data.join("\n");
        let payload = match serde_json::from_str::<Value>(&joined) {
            Ok(mut v) => {
                filter_message(&mut v, scope);
                serde_json::to_string(&v).expect("JSON serializes")
            }
            // Not JSON: nothing the agent may see can be told apart from what it may not.
            Err(_) => String::from_utf8(filter_failed(scope.id, "an event is not JSON"))
                .expect("JSON is UTF-8"),
        };
        out.push_str("data: ");
        out.push_str(&payload);
        out.push('\n');
    } else if !data.is_empty() {
        out.push_str("data:\n");
    }
    out.push('\n');
    out.into_bytes()
}

fn sse_event(data: &[u8]) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

/// The answer to the list request (a response with its id) is filtered; other messages on
/// the stream (notifications, server requests) pass.
fn filter_message(v: &mut Value, scope: &FilterScope<'_>) {
    if v.get("id") != Some(scope.id) {
        return;
    }
    let Some(result) = v.get_mut("result") else {
        return;
    };
    let changed = if scope.list == ListKind::Tools {
        observe_tools(result, scope)
    } else {
        Vec::new()
    };
    let deny_changed = scope.policy.tool_changes == ToolChanges::Deny;
    let removed = filter_list(result, scope.list, |kind, name| {
        scope.policy.visible(kind, name, scope.holds)
            && !(deny_changed && changed.iter().any(|c| c == name))
    });
    if removed > 0 {
        scope
            .state
            .metrics
            .mcp_hidden
            .with_label_values(&[list_label(scope.list)])
            .inc_by(removed as u64);
    }
}

fn list_label(l: ListKind) -> &'static str {
    match l {
        ListKind::Tools => "tools",
        ListKind::Prompts => "prompts",
        ListKind::Resources => "resources",
        ListKind::Templates => "resource_templates",
    }
}

/// Compare every listed tool (all of them, not only the caller's) with its pin; report
/// changes seen for the first time. Returns the tools whose definition is changed and not
/// accepted.
fn observe_tools(result: &Value, scope: &FilterScope<'_>) -> Vec<String> {
    let Some(tools) = result.get("tools").and_then(Value::as_array) else {
        return Vec::new();
    };
    let defs: Vec<(String, String)> = tools
        .iter()
        .filter_map(|t| {
            let name = t.get("name")?.as_str()?;
            Some((name.to_string(), tool_definition_sha256(t)))
        })
        .collect();
    let now = crate::approval::now_ms();
    for (tool, seen) in scope.state.mcp.observe(scope.upstream, &defs, now) {
        if let Observation::Changed { pinned, now: new } = seen {
            report_change(scope, &tool, &pinned, &new);
        }
    }
    let changed = scope.state.mcp.changed();
    defs.into_iter()
        .map(|(t, _)| t)
        .filter(|t| changed.contains(scope.upstream, t))
        .collect()
}

/// A tool's definition changed: audit line, metric, alert.
fn report_change(scope: &FilterScope<'_>, tool: &str, pinned: &str, new: &str) {
    let state = scope.state;
    let action = match scope.policy.tool_changes {
        ToolChanges::Report => "report",
        ToolChanges::Approve => "approve",
        ToolChanges::Deny => "deny",
    };
    tracing::warn!(
        upstream = scope.upstream,
        tool,
        pinned,
        now = new,
        action,
        "MCP tool definition changed"
    );
    state
        .metrics
        .mcp_tool_changes
        .with_label_values(&[scope.upstream])
        .inc();
    let time = crate::approval::rfc3339_ms(crate::approval::now_ms());
    state.access_log.log(&json!({
        "time": time,
        "event": "mcp_tool_changed",
        "request_id": scope.request_id,
        "upstream": scope.upstream,
        "tool": tool,
        "pinned_sha256": pinned,
        "new_sha256": new,
        "seen_by": &*scope.agent.id,
        "action": action,
    }));
    let undo = format!(
        "review the new definition, then accept it: `portcullis mcp accept {} {tool}` (or POST /api/mcp/tools/accept)",
        scope.upstream
    );
    state.monitor.alert(AlertNotice {
        event: "mcp_tool_changed",
        alert_id: uuid::Uuid::now_v7().simple().to_string(),
        time,
        severity: if action == "report" { "warning" } else { "critical" },
        agent: scope.agent.id.to_string(),
        owner: scope.agent.owner.to_string(),
        tier: scope.agent.tier(),
        detector: "tool_definition_changed",
        shadow: false,
        summary: format!(
            "the definition of MCP tool `{tool}` on `{}` changed (description or schema); calls now: {action}",
            scope.upstream
        ),
        details: serde_json::from_value(json!({
            "upstream": scope.upstream,
            "tool": tool,
            "pinned_sha256": pinned,
            "new_sha256": new,
        }))
        .expect("an object"),
        playbook: None,
        actions: vec![action.to_string()],
        override_hint: undo,
        link: String::new(),
    });
}

fn filter_failed(id: &Value, why: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": FILTER_FAILED, "message": format!("{why}; the gateway shows only lists it can filter to what this agent may use")},
    }))
    .expect("JSON serializes")
}

/// The list a message asks for, if it is a list request.
pub(super) fn list_of(msg: Option<&McpMessage>) -> Option<ListKind> {
    match msg?.class {
        MethodClass::List(l) => Some(l),
        _ => None,
    }
}

impl Gateway {
    /// Filter a chunk of a list answer (see [`ListFilter`]).
    pub(super) fn filter_list_answer(
        &self,
        ctx: &mut RequestCtx,
        body: &mut Option<Bytes>,
        end: bool,
    ) {
        // The filter is taken out for the chunk, so the rest of the context is only read:
        // nothing of it is copied per chunk.
        let Some(mut filter) = ctx.mcp.as_mut().and_then(|c| c.filter.take()) else {
            return;
        };
        let ctx_ro: &RequestCtx = ctx;
        let (Some(up), Some(agent), Some(token), Some(call)) = (
            ctx_ro.upstream(),
            ctx_ro.agent.as_deref(),
            ctx_ro.token.as_deref(),
            ctx_ro.mcp.as_deref(),
        ) else {
            return;
        };
        let Some(msg) = call.msg.as_ref() else {
            return;
        };
        let (Some(list), Some(id)) = (list_of(Some(msg)), msg.id.as_ref()) else {
            return;
        };
        let holds = |s: &str| agent.scopes.contains(s) && token.scopes.iter().any(|t| t == s);
        let scope = FilterScope {
            state: &self.state,
            upstream: &up.name,
            policy: &call.policy,
            list,
            id,
            holds: &holds,
            request_id: &ctx_ro.request_id,
            agent,
        };
        let chunk = body.take().unwrap_or_default();
        let out = filter.feed(&chunk, end, &scope);
        *body = (!out.is_empty() || end).then_some(out);
        if let Some(call) = ctx.mcp.as_mut() {
            call.filter = Some(filter);
        }
    }

    /// Bind a session the upstream opened to the agent that opened it, or forget one the
    /// agent ended.
    pub(super) fn track_session(
        &self,
        ctx: &RequestCtx,
        method: &http::Method,
        status: u16,
        issued: Option<&str>,
    ) {
        let (Some(call), Some(up), Some(agent)) = (&ctx.mcp, ctx.upstream(), &ctx.agent) else {
            return;
        };
        if let Some(id) = issued {
            if call.session.as_deref() != Some(id) {
                self.state.mcp.bind_session(&up.name, id, &agent.id);
                if let Some(shared) = &self.state.shared {
                    shared.sessions.bind(&up.name, id, &agent.id);
                }
            }
        }
        if *method == http::Method::DELETE && (200..300).contains(&status) {
            if let Some(id) = &call.session {
                self.state.mcp.end_session(&up.name, id);
                if let Some(shared) = &self.state.shared {
                    shared.sessions.end(&up.name, id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::mcp::{Kind, McpRule};
    use std::time::Duration;

    /// Feed `chunks` of an event stream answering list request 1 through the filter.
    fn filtered(chunks: &[&str]) -> String {
        let state = crate::state::tests::state_listening_on(&[]);
        let rule = McpRule::new(
            "m",
            Kind::Tool,
            "ok_*",
            vec![],
            vec![],
            Default::default(),
            Default::default(),
            None,
        )
        .unwrap();
        let policy = McpPolicy::new(vec![rule], 1 << 20, Duration::ZERO, ToolChanges::Report);
        let agent = state.snapshot.load().agents["bot"].clone();
        let id = json!(1);
        let scope = FilterScope {
            state: &state,
            upstream: "m",
            policy: &policy,
            list: ListKind::Tools,
            id: &id,
            holds: &|_| true,
            request_id: "r",
            agent: &agent,
        };
        let mut f = ListFilter::for_content_type(Some("text/event-stream"));
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            out.extend_from_slice(&f.feed(c.as_bytes(), i + 1 == chunks.len(), &scope));
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn events_split_anywhere_are_filtered_whole_and_other_events_pass() {
        let list =
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"ok_a"},{"name":"secret"}]}}"#;
        let (head, tail) = list.split_at(30);
        let out = filtered(&[
            "id: 0\r\nretry: 100\r\ndata:\r\n\r\n",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n",
            "id: 1\ndata: ",
            head,
            tail,
            "\n",
            "\n",
        ]);
        let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3, "{out}");
        assert_eq!(events[0], "id: 0\nretry: 100\ndata:");
        assert!(events[1].contains("notifications/progress"), "{out}");
        assert!(events[2].starts_with("id: 1\ndata: "), "{out}");
        let v: Value = serde_json::from_str(events[2].trim_start_matches("id: 1\ndata: ")).unwrap();
        assert_eq!(v["result"]["tools"], json!([{"name": "ok_a"}]));
        assert_eq!(v["result"]["cacheScope"], "private");
        // A last event cut off without its blank line is still judged, never passed raw.
        let out = filtered(&["data: ", list]);
        assert!(!out.contains("secret") && out.contains("ok_a"), "{out}");
        // Data that is not JSON cannot be filtered: replaced by an error for the request.
        let out = filtered(&["data: {\"tools\": [\"secret\"\n\n"]);
        assert!(!out.contains("secret") && out.contains("-32002"), "{out}");
    }
}

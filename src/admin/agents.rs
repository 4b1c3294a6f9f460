//! The agent inventory and the kill switch, on the admin listener.
//!
//! - `GET /api/agents` (`?format=csv`): every agent with owner, tier, state, scopes, the routes
//!   it can reach, and what monitoring saw (last seen, calls and denials in 24 h, anomalies).
//! - `GET /api/agents/{id}`: one agent, with its audit trail.
//! - `POST /api/agents/{id}/pause` / `resume`, `POST /api/tokens/revoke`, `GET /api/audit`.
//! - `GET /console/agents`: the console's agents page (`agents.html`) over this API.
//!
//! Every call needs an operator credential ([`Operator`]: an admin or an approver token).
//! Pausing and revoking only restrict, and anyone trusted to approve calls may pull the brake;
//! resuming and lifting an intervention loosen, so they need an admin token.

use super::auth::Operator;
use crate::approval::rfc3339_ms;
use crate::observe::LogTime;
use crate::policy::agent_state::{AgentRuntime, AgentStates};
use crate::policy::{Agent, Snapshot};
use crate::state::agent_state::{AuditEntry, Change, StateError};
use crate::state::GatewayState;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::SystemTime;

/// Inventory and kill-switch routes.
pub fn routes() -> Router<Arc<GatewayState>> {
    Router::new()
        .route("/console/agents", get(console))
        .route("/api/agents", get(list))
        .route("/api/agents/{id}", get(show))
        .route("/api/agents/{id}/pause", post(pause))
        .route("/api/agents/{id}/resume", post(resume))
        .route("/api/agents/{id}/lift", post(lift))
        .route("/api/agents/{id}/relearn", post(relearn))
        .route("/api/tokens/revoke", post(revoke))
        .route("/api/audit", get(audit))
        .route("/api/mcp/tools", get(mcp_tools))
        .route("/api/mcp/tools/accept", post(mcp_accept))
}

/// The agents page of the console (static; it talks to the API below).
const AGENTS_HTML: &str = include_str!("agents.html");

async fn console() -> impl IntoResponse {
    super::approvals::console_page(AGENTS_HTML)
}

/// A refusal of this API: status, machine code and a message.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

/// What the handlers answer.
type Answer = Result<Response, ApiError>;

/// The longest reason kept (they go into refusals, logs and the database).
const MAX_REASON: usize = 500;

/// `{"reason": "..."}`, required: every kill-switch action says why.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: String,
}

fn reason_of(
    body: Result<Json<ReasonBody>, axum::extract::rejection::JsonRejection>,
) -> Result<String, ApiError> {
    let Json(b) = body.map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("send JSON {{\"reason\": \"why\"}}: {}", e.body_text()),
        )
    })?;
    clean_reason(&b.reason)
}

fn clean_reason(r: &str) -> Result<String, ApiError> {
    let r = r.trim();
    if r.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "reason_required",
            "say why in `reason`: it is shown to the agent and kept in the audit trail",
        ));
    }
    if r.chars().any(char::is_control) || r.len() > MAX_REASON {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_reason",
            format!("`reason` must be one line of at most {MAX_REASON} bytes"),
        ));
    }
    Ok(r.to_string())
}

/// The audit line of a kill-switch action in the access log (`event: agent_state`).
#[derive(Serialize)]
struct StateEvent<'a> {
    time: LogTime,
    event: &'static str,
    action: &'a str,
    agent: Option<&'a str>,
    by: &'a str,
    credential: &'a str,
    reason: &'a str,
    persisted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled_approvals: Option<usize>,
    #[serde(skip_serializing_if = "Value::is_null")]
    detail: Value,
}

/// Apply `change` as `who` (off the async workers: it writes SQLite), audit it in the access
/// log, and answer. Shared by the admin API and the monitoring playbooks (`credential`
/// `playbook`).
pub async fn apply_change(
    s: &Arc<GatewayState>,
    change: Change,
    by: &str,
    credential: &str,
    reason: &str,
) -> Result<(AuditEntry, bool, Option<usize>), StateError> {
    let st = s.clone();
    let (c, b, r) = (change.clone(), by.to_string(), reason.to_string());
    let res = tokio::task::spawn_blocking(move || {
        st.agent_state.apply(&c, &b, &r, crate::approval::now_ms())
    })
    .await
    .unwrap_or_else(|e| {
        Err(StateError::Store {
            path: String::new(),
            message: format!("the state task failed: {e}"),
        })
    });
    let (entry, persisted) = match res {
        Ok(e) => (Some(e), true),
        Err(StateError::NotPersisted(e)) => {
            tracing::error!(error = %e, action = change.action(), agent = change.agent(), "agent state change applied but NOT persisted");
            (None, false)
        }
        Err(e) => return Err(e),
    };
    // A pause also withdraws the agent's open approvals: a held call must not go through
    // because a person approved it before the agent was stopped.
    let mut cancelled = None;
    if let Change::Pause { agent } = &change {
        if let Some(svc) = s.approvals.load_full() {
            let why = format!("agent paused by {by}: {reason}");
            match svc.cancel_agent(agent, &why).await {
                Ok(n) => cancelled = Some(n),
                Err(e) => {
                    tracing::error!(error = %e, agent = %agent, "cannot cancel the paused agent's approvals; held calls are still refused when they wake")
                }
            }
        }
    }
    s.access_log.log(&StateEvent {
        time: LogTime(SystemTime::now()),
        event: "agent_state",
        action: change.action(),
        agent: change.agent(),
        by,
        credential,
        reason,
        persisted,
        cancelled_approvals: cancelled,
        detail: entry
            .as_ref()
            .map(|e| e.detail.clone())
            .unwrap_or(Value::Null),
    });
    s.metrics
        .agent_state_changes
        .with_label_values(&[change.action(), credential])
        .inc();
    let entry = entry.unwrap_or_else(|| AuditEntry {
        id: 0,
        at_ms: crate::approval::now_ms(),
        agent: change.agent().map(str::to_string),
        action: change.action().to_string(),
        by: by.to_string(),
        reason: reason.to_string(),
        detail: Value::Null,
    });
    Ok((entry, persisted, cancelled))
}

fn state_error(e: StateError) -> ApiError {
    match e {
        StateError::Nothing(m) => error(StatusCode::CONFLICT, "nothing_to_undo", m),
        StateError::Store { .. } | StateError::NotPersisted(_) => {
            tracing::error!(error = %e, "agent state store failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "state_unavailable",
                "the agent state store cannot be written; nothing was changed (see the gateway log)",
            )
        }
    }
}

fn known_agent(snap: &Snapshot, id: &str) -> Result<Arc<Agent>, ApiError> {
    snap.agents.get(id).cloned().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "unknown_agent",
            format!("no agent `{id}` in the configuration"),
        )
    })
}

fn answer(
    entry: AuditEntry,
    persisted: bool,
    cancelled: Option<usize>,
    states: &AgentStates,
) -> Response {
    let agent_state = entry
        .agent
        .as_deref()
        .map(|a| runtime_json(states.agent(a)))
        .unwrap_or(Value::Null);
    let mut body = json!({
        "action": entry.action,
        "agent": entry.agent,
        "by": entry.by,
        "reason": entry.reason,
        "at": rfc3339_ms(entry.at_ms),
        "persisted": persisted,
        "runtime": agent_state,
    });
    if let Some(n) = cancelled {
        body["cancelled_approvals"] = json!(n);
    }
    if !persisted {
        body["warning"] = json!("applied in memory but NOT persisted: it will not survive a restart; see the gateway log");
    }
    Json(body).into_response()
}

async fn pause(
    State(s): State<Arc<GatewayState>>,
    who: Operator,
    Path(id): Path<String>,
    body: Result<Json<ReasonBody>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let reason = reason_of(body)?;
    known_agent(&s.snapshot.load(), &id)?;
    change_answer(&s, Change::Pause { agent: id }, &who, &reason).await
}

/// Apply `change` for an API caller and answer with the agent's new runtime state.
async fn change_answer(
    s: &Arc<GatewayState>,
    change: Change,
    who: &Operator,
    reason: &str,
) -> Answer {
    let (e, p, c) = apply_change(s, change, &who.name, who.credential, reason)
        .await
        .map_err(state_error)?;
    Ok(answer(e, p, c, &s.agent_state.current()))
}

fn admin_only(who: &Operator, what: &str) -> Result<(), ApiError> {
    if who.credential == "admin" {
        return Ok(());
    }
    Err(error(
        StatusCode::FORBIDDEN,
        "admin_token_required",
        format!("{what} loosens what an agent may do: it needs an admin token (`admin.tokens`), not an approver's"),
    ))
}

async fn resume(
    State(s): State<Arc<GatewayState>>,
    who: Operator,
    Path(id): Path<String>,
    body: Result<Json<ReasonBody>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    admin_only(&who, "resuming an agent")?;
    let reason = reason_of(body)?;
    // Not checked against the config: an agent removed from the file may still be paused.
    change_answer(&s, Change::Resume { agent: id }, &who, &reason).await
}

async fn lift(
    State(s): State<Arc<GatewayState>>,
    who: Operator,
    Path(id): Path<String>,
    body: Result<Json<ReasonBody>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    admin_only(&who, "lifting a step-up or throttle")?;
    let reason = reason_of(body)?;
    change_answer(&s, Change::Lift { agent: id }, &who, &reason).await
}

/// `POST /api/agents/{id}/relearn`: the detectors forget the agent's baselines (its changed
/// behaviour is the new normal) and it warms up anew. Admin only: it silences detectors.
async fn relearn(
    State(s): State<Arc<GatewayState>>,
    who: Operator,
    Path(id): Path<String>,
    body: Result<Json<ReasonBody>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    admin_only(&who, "relearning an agent's baselines")?;
    let reason = reason_of(body)?;
    known_agent(&s.snapshot.load(), &id)?;
    let forgot = s.monitor.forget(&id);
    s.access_log.log(&StateEvent {
        time: LogTime(SystemTime::now()),
        event: "agent_state",
        action: "relearn",
        agent: Some(&id),
        by: &who.name,
        credential: who.credential,
        reason: &reason,
        persisted: true,
        cancelled_approvals: None,
        detail: json!({"had_baselines": forgot}),
    });
    Ok(Json(json!({"action": "relearn", "agent": id, "by": who.name, "reason": reason, "had_baselines": forgot})).into_response())
}

/// `GET /api/mcp/tools`: every MCP tool definition the gateway recorded, per upstream, and
/// which changed since (rug-pull detection).
async fn mcp_tools(State(s): State<Arc<GatewayState>>, _who: Operator) -> Answer {
    let tools: Vec<Value> = s
        .mcp
        .pins()
        .into_iter()
        .map(|(upstream, tool, p)| {
            json!({
                "upstream": upstream,
                "tool": tool,
                "sha256": p.sha256,
                "accepted_at": crate::approval::rfc3339_ms(p.accepted_at_ms),
                "accepted_by": p.accepted_by,
                "changed": p.changed.as_ref().map(|c| json!({
                    "sha256": c.sha256,
                    "seen_at": crate::approval::rfc3339_ms(c.seen_at_ms),
                })),
            })
        })
        .collect();
    Ok(Json(json!({ "tools": tools })).into_response())
}

/// `{"upstream": "...", "tool": "...", "reason": "..."}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    upstream: String,
    tool: String,
    reason: String,
}

/// `POST /api/mcp/tools/accept`: the changed definition of a tool becomes its pin (admin
/// only: it loosens what calls of the tool need).
async fn mcp_accept(
    State(s): State<Arc<GatewayState>>,
    who: Operator,
    body: Result<Json<AcceptBody>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    admin_only(&who, "accepting a changed MCP tool definition")?;
    let Json(b) = body.map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!(
                "send JSON {{\"upstream\": \"...\", \"tool\": \"...\", \"reason\": \"why\"}}: {}",
                e.body_text()
            ),
        )
    })?;
    let reason = clean_reason(&b.reason)?;
    let now = crate::approval::now_ms();
    let pin = match s.mcp.accept(&b.upstream, &b.tool, &who.name, now) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(error(
                StatusCode::CONFLICT,
                "nothing_to_accept",
                format!(
                    "tool `{}` of upstream `{}` has no changed definition waiting (see GET /api/mcp/tools)",
                    b.tool, b.upstream
                ),
            ))
        }
        Err(e) => return Err(state_error(e)),
    };
    s.access_log.log(&json!({
        "time": crate::approval::rfc3339_ms(now),
        "event": "mcp_tool_accepted",
        "upstream": b.upstream,
        "tool": b.tool,
        "sha256": pin.sha256,
        "by": who.name,
        "credential": who.credential,
        "reason": reason,
    }));
    Ok(Json(json!({
        "upstream": b.upstream,
        "tool": b.tool,
        "sha256": pin.sha256,
        "accepted_by": who.name,
    }))
    .into_response())
}

/// `POST /api/tokens/revoke`: `{"jti": "...", "reason": "..."}` revokes one token;
/// `{"agent": "...", "reason": "..."}` every token of the agent issued up to now.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    jti: Option<String>,
    agent: Option<String>,
    reason: String,
}

async fn revoke(
    State(s): State<Arc<GatewayState>>,
    who: Operator,
    body: Result<Json<RevokeBody>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let Json(b) = body.map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!(
                "send JSON {{\"jti\": \"...\" or \"agent\": \"...\", \"reason\": \"why\"}}: {}",
                e.body_text()
            ),
        )
    })?;
    let reason = clean_reason(&b.reason)?;
    let snap = s.snapshot.load_full();
    if let Some(a) = &b.agent {
        known_agent(&snap, a)?;
    }
    let now_ms = crate::approval::now_ms();
    let change =
        match (b.jti, b.agent) {
            (Some(jti), agent) => {
                if jti.is_empty() || jti.len() > 256 || jti.chars().any(char::is_control) {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "invalid_jti",
                        "`jti` must be 1 to 256 printable characters",
                    ));
                }
                // No token can be valid beyond the longest lifetime the gateway accepts (plus
                // skew) from now, so the revocation can be forgotten after that.
                let id = &snap.verifier.settings();
                let keep = id.max_token_ttl + id.clock_skew;
                Change::RevokeToken {
                    jti,
                    agent,
                    expires_at_ms: now_ms + keep.as_millis() as i64,
                }
            }
            (None, Some(agent)) => Change::RevokeAgentTokens {
                agent,
                before: (now_ms / 1000) as u64,
            },
            (None, None) => return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "name a token (`jti`) or an agent (`agent`: every token issued to it until now)",
            )),
        };
    change_answer(&s, change, &who, &reason).await
}

/// `?agent=` and `?limit=` (default 100, at most 1000).
#[derive(Deserialize)]
struct AuditQuery {
    agent: Option<String>,
    limit: Option<usize>,
}

async fn audit(
    State(s): State<Arc<GatewayState>>,
    _who: Operator,
    Query(q): Query<AuditQuery>,
) -> Answer {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let v = read_audit(&s, q.agent, limit).await.map_err(state_error)?;
    Ok(Json(json!({"entries": v})).into_response())
}

async fn read_audit(
    s: &Arc<GatewayState>,
    agent: Option<String>,
    limit: usize,
) -> Result<Vec<Value>, StateError> {
    let st = s.clone();
    let entries =
        tokio::task::spawn_blocking(move || st.agent_state.audit(agent.as_deref(), limit))
            .await
            .unwrap_or_else(|e| {
                Err(StateError::Store {
                    path: String::new(),
                    message: e.to_string(),
                })
            })?;
    Ok(entries
        .into_iter()
        .map(|e| {
            json!({
                "at": rfc3339_ms(e.at_ms), "agent": e.agent, "action": e.action,
                "by": e.by, "reason": e.reason, "detail": e.detail,
            })
        })
        .collect())
}

fn stamp_json(s: &crate::policy::agent_state::Stamp) -> Value {
    json!({"by": s.by, "reason": s.reason, "at": rfc3339_ms(s.at_ms)})
}

/// The runtime part of an agent's inventory row.
fn runtime_json(rt: Option<&AgentRuntime>) -> Value {
    let now = crate::approval::now_ms();
    let Some(rt) = rt else {
        return json!({});
    };
    let mut m = Map::new();
    if let Some(p) = &rt.paused {
        m.insert("paused".into(), stamp_json(p));
    }
    if let Some((before, st)) = &rt.revoked_before {
        let mut v = stamp_json(st);
        v["issued_before"] = json!(rfc3339_ms(*before as i64 * 1000));
        m.insert("tokens_revoked".into(), v);
    }
    if let Some(u) = rt.step_up_at(now) {
        let mut v = stamp_json(&u.stamp);
        v["until"] = json!(rfc3339_ms(u.until_ms));
        m.insert("step_up".into(), v);
    }
    if let Some(t) = rt.throttle_at(now) {
        let mut v = stamp_json(&t.until.stamp);
        v["until"] = json!(rfc3339_ms(t.until.until_ms));
        v["requests"] = json!(t.requests);
        v["per_seconds"] = json!(t.per_ms as f64 / 1000.0);
        m.insert("throttle".into(), v);
    }
    Value::Object(m)
}

/// Routes `agent` can reach: every route whose scopes its registry entry covers.
fn reachable(snap: &Snapshot, agent: &Agent) -> Vec<String> {
    snap.routes
        .routes
        .iter()
        .filter(|r| {
            r.scopes_all.iter().all(|s| agent.scopes.contains(s))
                && (r.scopes_any.is_empty()
                    || r.scopes_any.iter().any(|s| agent.scopes.contains(s)))
        })
        .map(|r| r.name.to_string())
        .collect()
}

/// One inventory row.
pub fn inventory_row(
    s: &GatewayState,
    snap: &Snapshot,
    states: &AgentStates,
    agent: &Agent,
) -> Value {
    let rt = states.agent(&agent.id);
    let state = if !agent.enabled {
        "disabled"
    } else if rt.is_some_and(|r| r.paused.is_some()) {
        "paused"
    } else {
        "enabled"
    };
    let mut row = json!({
        "id": &*agent.id,
        "owner": &*agent.owner,
        "description": agent.description,
        "tier": agent.tier(),
        "state": state,
        "scopes": agent.scopes,
        "routes": reachable(snap, agent),
        "runtime": runtime_json(rt),
    });
    if let Some(stats) = s.agent_activity(&agent.id) {
        row["activity"] = stats;
    }
    row
}

/// `?format=json|csv`.
#[derive(Deserialize)]
struct ListQuery {
    format: Option<String>,
}

async fn list(
    State(s): State<Arc<GatewayState>>,
    _who: Operator,
    Query(q): Query<ListQuery>,
) -> Answer {
    let snap = s.snapshot.load_full();
    let states = s.agent_state.current();
    let mut agents: Vec<&Arc<Agent>> = snap.agents.values().collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    let rows: Vec<Value> = agents
        .iter()
        .map(|a| inventory_row(&s, &snap, &states, a))
        .collect();
    Ok(match q.format.as_deref() {
        None | Some("json") => {
            Json(json!({"agents": rows, "config_version": snap.version})).into_response()
        }
        Some("csv") => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"portcullis-agents.csv\"",
                ),
            ],
            inventory_csv(&rows),
        )
            .into_response(),
        Some(other) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_format",
                format!("`{other}` is not a format: use json or csv"),
            ))
        }
    })
}

async fn show(
    State(s): State<Arc<GatewayState>>,
    _who: Operator,
    Path(id): Path<String>,
) -> Answer {
    let snap = s.snapshot.load_full();
    let agent = known_agent(&snap, &id)?;
    let mut row = inventory_row(&s, &snap, &s.agent_state.current(), &agent);
    row["audit"] = json!(read_audit(&s, Some(id), 50).await.map_err(state_error)?);
    Ok(Json(row).into_response())
}

/// The inventory as CSV (RFC 4180): one line per agent, lists joined with spaces. Cells that a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR) get a leading `'`.
pub fn inventory_csv(rows: &[Value]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let head = [
        "id",
        "owner",
        "tier",
        "state",
        "scopes",
        "routes",
        "description",
        "last_seen",
        "calls_24h",
        "denials_24h",
        "anomalies_24h",
        "paused_by",
        "paused_reason",
    ];
    w.write_record(head).expect("in memory");
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    for r in rows {
        let act = &r["activity"];
        let cells = [
            text(&r["id"]),
            text(&r["owner"]),
            text(&r["tier"]),
            text(&r["state"]),
            text(&r["scopes"]),
            text(&r["routes"]),
            text(&r["description"]),
            text(&act["last_seen"]),
            text(&act["calls_24h"]),
            text(&act["denials_24h"]),
            text(&act["anomalies_24h"]),
            text(&r["runtime"]["paused"]["by"]),
            text(&r["runtime"]["paused"]["reason"]),
        ];
        let safe: Vec<String> = cells
            .into_iter()
            .map(|c| {
                if c.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                    format!("'{c}")
                } else {
                    c
                }
            })
            .collect();
        w.write_record(&safe).expect("in memory");
    }
    String::from_utf8(w.into_inner().expect("in memory")).expect("utf-8 in, utf-8 out")
}

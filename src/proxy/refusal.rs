//! The one place where every refusal becomes an HTTP status, a machine code and a JSON body.
//!
//! Every match here is exhaustive over our own error enums, so a new variant cannot slip
//! through with a generic answer. Messages are written for the agent that receives them: they
//! say what happened and what to do next.

use super::headers::BearerProblem;
use crate::approval::rfc3339_ms;
use crate::identity::TokenError;
use crate::observe::Outcome;
use crate::policy::agent_state::Revocation;
use crate::policy::decision::ConditionOf;
use crate::policy::limits;
use crate::policy::{Denial, HostPattern, PathError, Snapshot};
use http::Method;
use serde_json::{json, Map, Value};

/// Why the gateway answers instead of the upstream.
#[derive(Debug)]
pub enum Refusal {
    /// The path is ambiguous or malformed.
    BadPath(PathError),
    /// No usable bearer token.
    NoToken(BearerProblem),
    /// The token was refused.
    Token(TokenError),
    /// Policy said no.
    Policy(Denial),
    /// The upstream could not be reached or failed.
    Upstream(UpstreamFailure),
    /// The call needs approval and its body is above the buffering cap.
    BodyTooLarge {
        /// The cap in bytes.
        limit: u64,
    },
    /// The call waits for a human decision (async mode): 202.
    ApprovalPending {
        /// Approval id.
        id: String,
        /// RFC 3339 expiry.
        expires_at: String,
        /// Seconds until a retry makes sense.
        retry_after: u64,
        /// Approvals so far / needed.
        votes: usize,
        /// Distinct approvals needed.
        quorum: u32,
    },
    /// A human refused the call.
    ApprovalDenied {
        /// Approval id.
        id: String,
        /// Who denied.
        by: Vec<String>,
        /// Their reason.
        reason: String,
    },
    /// The approval was cancelled before use (its agent was paused).
    ApprovalCancelled {
        /// Approval id.
        id: String,
        /// Why.
        reason: String,
    },
    /// Nobody decided in time (or the approval expired).
    ApprovalTimeout {
        /// Approval id.
        id: String,
    },
    /// The approval was used by an identical call that got there first.
    ApprovalUsed {
        /// Approval id.
        id: String,
    },
    /// The approval store cannot be used: fail closed.
    ApprovalUnavailable,
    /// A request header that would change the method or target at the upstream.
    ForbiddenHeader {
        /// The header, lowercase.
        name: String,
    },
    /// A `_method` query parameter (method override).
    MethodOverrideParameter,
    /// Too many open connections, from this client or in all.
    TooManyConnections {
        /// The per-client cap was hit (else the global one).
        per_client: bool,
        /// The cap that was hit.
        limit: usize,
    },
    /// An unexpected failure inside the gateway.
    Internal,
    /// `state.backend: shared`: the shared state store cannot be reached (or this replica's
    /// copy of agent state is stale) and the route fails closed.
    StateStoreUnavailable,
    /// The upstream's per-call credential could not be minted or exchanged.
    UpstreamCredentialUnavailable(String),
    /// MCP: the request names an upstream session another agent opened.
    McpSessionForeign,
    /// MCP: the request names a session this gateway never saw opened (or forgot): 404, which
    /// tells the client to initialize a new one.
    McpSessionUnknown,
    /// The agent already has as many approvals pending (or calls held open) as allowed.
    TooManyPending {
        /// The agent.
        agent: String,
        /// How many it has.
        count: u64,
        /// The cap.
        limit: u32,
        /// `true`: the cap on held connections (`max_held_per_agent`); `false`: on pending
        /// approvals (`max_pending_per_agent`).
        held: bool,
    },
    /// A call needing approval has more (or larger) forwardable headers than an approver can
    /// be shown.
    HeadersTooLarge {
        /// Forwardable headers sent.
        count: usize,
        /// Their bytes.
        bytes: u64,
        /// `approvals.max_headers`.
        max_count: u32,
        /// `approvals.max_header_bytes`.
        max_bytes: u64,
    },
}

/// How an upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Connection refused, unreachable, TLS failure.
    Unavailable,
    /// Connect or read/write timed out.
    Timeout,
    /// The upstream broke the protocol or the connection mid-response.
    Protocol,
}

impl UpstreamFailure {
    /// The refusal's machine code (`error`) and access-log reason.
    pub fn code(self) -> &'static str {
        match self {
            UpstreamFailure::Unavailable => "upstream_unavailable",
            UpstreamFailure::Timeout => "upstream_timeout",
            UpstreamFailure::Protocol => "upstream_error",
        }
    }

    /// Metric label.
    pub fn kind(self) -> &'static str {
        match self {
            UpstreamFailure::Unavailable => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Protocol => "protocol",
        }
    }
}

/// A rendered refusal.
pub struct Rendered {
    /// HTTP status.
    pub status: u16,
    /// Machine code (the `error` field), also the access-log `reason`.
    pub code: &'static str,
    /// `WWW-Authenticate` value for 401/403 bearer errors.
    pub www_authenticate: Option<String>,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
    /// JSON body.
    pub body: Vec<u8>,
}

/// What a scope refusal says is missing (`a and one of [b, c]`) and what the agent can do:
/// ask for a wider token, or have its owner get the scopes granted.
fn scope_advice(
    agent: &crate::policy::Agent,
    missing_all: &[String],
    missing_any_of: &[String],
) -> (String, &'static str) {
    let mut needs: Vec<String> = missing_all.to_vec();
    if !missing_any_of.is_empty() {
        needs.push(format!("one of [{}]", missing_any_of.join(", ")));
    }
    let grantable = missing_all.iter().all(|s| agent.scopes.contains(s))
        && (missing_any_of.is_empty() || missing_any_of.iter().any(|s| agent.scopes.contains(s)));
    let what_to_do = if grantable {
        "request a token that includes them"
    } else {
        "this agent is not registered for them; its owner must ask an operator to grant them"
    };
    (needs.join(" and "), what_to_do)
}

fn quote(s: &str) -> String {
    s.replace(['"', '\\'], "'")
}

impl Refusal {
    /// How a call answered with this refusal ended (`code` is its rendered machine code).
    pub fn outcome(&self, code: &'static str) -> Outcome {
        match self {
            Refusal::ApprovalPending { .. } => Outcome::Held,
            Refusal::Upstream(_) => Outcome::UpstreamError { code },
            Refusal::ApprovalUnavailable
            | Refusal::Internal
            | Refusal::StateStoreUnavailable
            | Refusal::UpstreamCredentialUnavailable(_) => Outcome::Error { code },
            // Keys not loaded yet: the gateway cannot decide, the caller did nothing wrong.
            Refusal::Token(TokenError::KeysUnavailable { .. }) => Outcome::Error { code },
            Refusal::BadPath(_)
            | Refusal::NoToken(_)
            | Refusal::Token(_)
            | Refusal::Policy(_)
            | Refusal::BodyTooLarge { .. }
            | Refusal::ApprovalDenied { .. }
            | Refusal::ApprovalCancelled { .. }
            | Refusal::ApprovalTimeout { .. }
            | Refusal::ApprovalUsed { .. }
            | Refusal::ForbiddenHeader { .. }
            | Refusal::MethodOverrideParameter
            | Refusal::McpSessionForeign
            | Refusal::McpSessionUnknown
            | Refusal::TooManyConnections { .. }
            | Refusal::TooManyPending { .. }
            | Refusal::HeadersTooLarge { .. } => Outcome::Denied { code },
        }
    }

    /// Status, code, headers and JSON body.
    pub fn render(&self, request_id: &str, snap: Option<&Snapshot>) -> Rendered {
        let mut extra = Map::new();
        let mut www = None;
        let mut retry_after = None;
        // Names come from the snapshot the call was decided under (none in unit renders).
        let route_name_of = |i: usize| {
            snap.map(|s| s.routes.routes[i].name.to_string())
                .unwrap_or_default()
        };
        let (status, code, message): (u16, &'static str, String) = match self {
            Refusal::BadPath(e) => {
                extra.insert("reason".into(), json!(e.code()));
                (400, "invalid_path", e.to_string())
            }
            Refusal::NoToken(p) => {
                let (code, msg) = match p {
                    BearerProblem::Missing => ("missing_token", "this gateway requires an agent identity: send `Authorization: Bearer <JWT>` with a token issued to your agent"),
                    BearerProblem::NotBearer => ("missing_token", "the Authorization header must be `Bearer <JWT>`; other schemes are not accepted"),
                    BearerProblem::Ambiguous => ("invalid_request", "send exactly one Authorization header"),
                };
                www = Some(format!(
                    "Bearer realm=\"portcullis\", error=\"invalid_request\", error_description=\"{}\"",
                    quote(msg)
                ));
                (401, code, msg.to_string())
            }
            Refusal::Token(e) => {
                extra.insert("reason".into(), json!(e.code()));
                let msg = e.to_string();
                match e {
                    // Not the agent's fault: the gateway cannot verify anything yet. Fail closed,
                    // but tell the agent to come back instead of fetching a new token.
                    TokenError::KeysUnavailable { .. } => {
                        retry_after = Some(5);
                        (503, "identity_unavailable", msg)
                    }
                    TokenError::MissingToken
                    | TokenError::Malformed { .. }
                    | TokenError::TooLarge { .. }
                    | TokenError::AlgNone
                    | TokenError::AlgNotAllowed { .. }
                    | TokenError::KeyTypeMismatch { .. }
                    | TokenError::UnknownKey { .. }
                    | TokenError::BadSignature
                    | TokenError::Expired { .. }
                    | TokenError::NotYetValid { .. }
                    | TokenError::WrongIssuer { .. }
                    | TokenError::WrongAudience { .. }
                    | TokenError::MissingClaim { .. }
                    | TokenError::LifetimeTooLong { .. }
                    | TokenError::InvalidClaim { .. } => {
                        www = Some(format!(
                            "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{}\"",
                            quote(&msg)
                        ));
                        (401, "invalid_token", msg)
                    }
                }
            }
            Refusal::Policy(d) => {
                match d {
                    Denial::UnknownAgent { subject } => {
                        www = Some("Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"unknown agent\"".into());
                        (401, "unknown_agent", format!(
                        "the token's subject `{subject}` is not a registered agent; an operator must register it in gateway.yaml (with a human owner) before it can call anything"
                    ))
                    }
                    Denial::AgentDisabled { agent } => {
                        extra.insert("agent".into(), json!(&*agent.id));
                        (
                            403,
                            "agent_disabled",
                            format!(
                        "agent `{}` is disabled; its owner {} must ask an operator to re-enable it",
                        agent.id, agent.owner
                    ),
                        )
                    }
                    Denial::AgentPaused { agent, pause } => {
                        extra.insert("agent".into(), json!(&*agent.id));
                        extra.insert("paused_by".into(), json!(pause.by));
                        extra.insert("paused_reason".into(), json!(pause.reason));
                        extra.insert("paused_at".into(), json!(rfc3339_ms(pause.at_ms)));
                        (403, "agent_paused", format!(
                            "agent `{}` was paused by {} at {}: {}; nothing was sent to the tool. Do not retry: its owner {} must ask an operator to resume it",
                            agent.id, pause.by, rfc3339_ms(pause.at_ms), pause.reason, agent.owner
                        ))
                    }
                    Denial::TokenRevoked { agent, revocation } => {
                        extra.insert("agent".into(), json!(&*agent.id));
                        let (what, stamp) = match &**revocation {
                            Revocation::Jti(jti, stamp) => {
                                extra.insert("jti".into(), json!(jti));
                                (format!("this token (jti `{jti}`) was revoked"), stamp)
                            }
                            Revocation::IssuedBefore(before, stamp) => {
                                let at = rfc3339_ms(*before as i64 * 1000);
                                let what = format!(
                                    "every token of agent `{}` issued up to {at} was revoked",
                                    agent.id
                                );
                                extra.insert("revoked_before".into(), json!(at));
                                (what, stamp)
                            }
                        };
                        extra.insert("revoked_by".into(), json!(stamp.by));
                        extra.insert("revoked_reason".into(), json!(stamp.reason));
                        let msg = format!(
                            "{what} by {}: {}; request a new token",
                            stamp.by, stamp.reason
                        );
                        www = Some(format!(
                            "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{}\"",
                            quote("token revoked")
                        ));
                        (401, "token_revoked", msg)
                    }
                    Denial::StepUpUnavailable { agent, until } => {
                        extra.insert("agent".into(), json!(&*agent.id));
                        extra.insert("until".into(), json!(rfc3339_ms(until.until_ms)));
                        (403, "step_up_unavailable", format!(
                            "writes of agent `{}` need human approval until {} (set by {}: {}), and this gateway has no approvals configured; nothing was sent to the tool; retry after that time or ask an operator",
                            agent.id, rfc3339_ms(until.until_ms), until.stamp.by, until.stamp.reason
                        ))
                    }
                    Denial::NoRoute {
                        agent,
                        methods_on_path,
                    } => {
                        extra.insert("agent".into(), json!(&*agent.id));
                        let msg = if methods_on_path.is_empty() {
                            "no route allows this call: the gateway denies anything not explicitly allowed; check the base URL and path, or ask an operator to add a route".to_string()
                        } else {
                            let m: Vec<&str> = methods_on_path.iter().map(Method::as_str).collect();
                            extra.insert("allowed_methods".into(), json!(m));
                            format!("no route allows this method on this path; allowed methods here: {}", m.join(", "))
                        };
                        (403, "no_route", msg)
                    }
                    Denial::InsufficientScope {
                        agent,
                        route,
                        missing_all,
                        missing_any_of,
                    } => {
                        let r = snap.map(|s| &s.routes.routes[*route]);
                        let route_name = r.map(|r| r.name.to_string()).unwrap_or_default();
                        extra.insert("agent".into(), json!(&*agent.id));
                        extra.insert("route".into(), json!(route_name));
                        if let Some(r) = r {
                            extra.insert("required_scopes".into(), json!(r.scopes_all));
                            if !r.scopes_any.is_empty() {
                                extra.insert("required_any_of".into(), json!(r.scopes_any));
                            }
                        }
                        extra.insert("missing_scopes".into(), json!(missing_all));
                        let (needs, what_to_do) = scope_advice(agent, missing_all, missing_any_of);
                        www = Some(format!(
                        "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"{}\"",
                        quote(&missing_all.iter().chain(missing_any_of).cloned().collect::<Vec<_>>().join(" "))
                    ));
                        (
                            403,
                            "insufficient_scope",
                            format!(
                                "route `{route_name}` needs scope {needs}; {what_to_do}"
                            ),
                        )
                    }
                    Denial::PathParameter { .. } => {
                        extra.insert("reason".into(), json!(PathError::PathParameter.code()));
                        (400, "invalid_path", PathError::PathParameter.to_string())
                    }
                    Denial::HostScoped { agent, claimed_by } => {
                        let r = snap.map(|s| &s.routes.routes[*claimed_by]);
                        let route_name = r.map(|r| r.name.to_string()).unwrap_or_default();
                        let host = match r.map(|r| &r.host) {
                            Some(HostPattern::Exact(h)) => h.clone(),
                            Some(HostPattern::Suffix(s)) => format!("*{s}"),
                            Some(HostPattern::Any) | None => String::new(),
                        };
                        extra.insert("agent".into(), json!(&*agent.id));
                        extra.insert("reason".into(), json!("host_scoped"));
                        extra.insert("route".into(), json!(route_name));
                        extra.insert("required_host".into(), json!(host));
                        (403, "no_route", format!(
                            "this method and path are reserved to host `{host}` (route `{route_name}`); send the call with that Host and a token the route accepts"
                        ))
                    }
                    Denial::McpInvalid {
                        agent,
                        route,
                        reason,
                    } => {
                        extra.insert("agent".into(), json!(&*agent.id));
                        extra.insert("route".into(), json!(route_name_of(*route)));
                        extra.insert("reason".into(), json!(reason));
                        (400, "invalid_mcp_message", format!(
                            "{reason}; nothing was sent to the MCP server"
                        ))
                    }
                    Denial::McpUnknownMethod {
                        agent,
                        route,
                        method,
                    } => {
                        extra.insert("agent".into(), json!(&*agent.id));
                        extra.insert("route".into(), json!(route_name_of(*route)));
                        extra.insert("method".into(), json!(method));
                        (403, "mcp_method_not_allowed", format!(
                            "the MCP method `{method}` is not allowed through this gateway (it allows initialize, ping, the lists, tools/call, prompts/get, resources/read and subscribe, completion/complete and logging/setLevel)"
                        ))
                    }
                    Denial::McpNotAllowed {
                        agent,
                        route,
                        kind,
                        name,
                    } => {
                        extra.insert("agent".into(), json!(&*agent.id));
                        extra.insert("route".into(), json!(route_name_of(*route)));
                        extra.insert(kind.as_str().into(), json!(name));
                        (403, "mcp_not_allowed", format!(
                            "{} `{name}` is not allowed for agent `{}`: no rule of route `{}` names it (deny by default). Use only what the list shows; an operator must add a rule to allow it",
                            kind.as_str(), agent.id, route_name_of(*route)
                        ))
                    }
                    Denial::McpScope {
                        agent,
                        route,
                        rule,
                        name,
                        missing_all,
                        missing_any_of,
                    } => {
                        let rule = snap
                            .and_then(|s| s.routes.routes[*route].mcp.as_ref())
                            .map(|m| m.rules[*rule].clone());
                        let kind = rule.as_ref().map_or("tool", |r| r.kind.as_str());
                        extra.insert("agent".into(), json!(&*agent.id));
                        extra.insert("route".into(), json!(route_name_of(*route)));
                        extra.insert(kind.into(), json!(name));
                        if let Some(r) = &rule {
                            extra.insert("rule".into(), json!(&*r.pattern));
                            extra.insert("required_scopes".into(), json!(r.scopes_all));
                        }
                        extra.insert("missing_scopes".into(), json!(missing_all));
                        let (needs, what_to_do) = scope_advice(agent, missing_all, missing_any_of);
                        (403, "insufficient_scope", format!(
                            "{kind} `{name}` needs scope {needs}; {what_to_do}"
                        ))
                    }
                    Denial::McpToolChanged { agent, route, tool } => {
                        extra.insert("agent".into(), json!(&*agent.id));
                        extra.insert("route".into(), json!(route_name_of(*route)));
                        extra.insert("tool".into(), json!(tool));
                        (403, "tool_definition_changed", format!(
                            "the definition of tool `{tool}` (its description or schema) changed since it was reviewed; calls are refused until an operator accepts the change. Do not retry now; use another tool or tell the agent's owner"
                        ))
                    }
                    Denial::Condition {
                        agent,
                        route,
                        condition,
                        of,
                        reason,
                    } => {
                        let route_name = route_name_of(*route);
                        extra.insert("agent".into(), json!(&*agent.id));
                        extra.insert("route".into(), json!(route_name));
                        extra.insert("condition".into(), json!(&**condition));
                        extra.insert("condition_of".into(), json!(of));
                        extra.insert("reason".into(), json!(reason));
                        let whose = match of {
                            ConditionOf::Tier(t) => {
                                format!("the `{t}` tier of agent `{}`", agent.id)
                            }
                            ConditionOf::Agent => format!("agent `{}`", agent.id),
                            ConditionOf::Route => format!("route `{route_name}`"),
                            ConditionOf::McpRule => {
                                format!("the MCP rule of route `{route_name}` that names this call")
                            }
                        };
                        (403, "condition_failed", format!(
                            "this call does not meet condition `{condition}` of {whose}: {reason}; it was refused and nothing was sent to the tool"
                        ))
                    }
                    Denial::Limited { refused, .. } => {
                        retry_after = Some(refused.retry_after_secs());
                        extra.extend(limits::refusal_fields(refused));
                        (429, refused.code(), limits::refusal_message(refused))
                    }
                    Denial::UpgradeNotAllowed {
                        agent,
                        route,
                        protocol,
                    } => {
                        let route_name = route_name_of(*route);
                        extra.insert("agent".into(), json!(&*agent.id));
                        extra.insert("route".into(), json!(route_name));
                        extra.insert("protocol".into(), json!(protocol));
                        (403, "upgrade_not_allowed", format!(
                            "route `{route_name}` does not allow switching protocols (Upgrade `{protocol}`); send a plain HTTP request, or ask an operator for a route with `websocket: true`"
                        ))
                    }
                }
            }
            Refusal::ForbiddenHeader { name } => {
                extra.insert("header".into(), json!(name));
                (400, "forbidden_header", format!(
                    "the `{name}` header would make the tool act on a different method or URL than the gateway checked; remove it and send the method and path you mean directly"
                ))
            }
            Refusal::MethodOverrideParameter => {
                extra.insert("parameter".into(), json!("_method"));
                (400, "forbidden_parameter", "the `_method` query parameter overrides the HTTP method at some tools, so the gateway refuses it; send the request with the method you mean".into())
            }
            Refusal::TooManyConnections { per_client, limit } => {
                retry_after = Some(1);
                extra.insert("limit".into(), json!(limit));
                let whom = if *per_client {
                    "from your address"
                } else {
                    "in all"
                };
                (503, "too_many_connections", format!(
                    "the gateway holds its limit of {limit} open connections {whom}; reuse keep-alive connections or close idle ones, then retry"
                ))
            }
            Refusal::Upstream(f) => {
                retry_after = Some(1);
                match f {
                    UpstreamFailure::Unavailable => (502, f.code(), "the upstream tool could not be reached; retry later".into()),
                    UpstreamFailure::Timeout => (504, f.code(), "the upstream tool did not answer in time; retry later, and check whether the call took effect before repeating a write".into()),
                    UpstreamFailure::Protocol => (502, f.code(), "the upstream tool failed while answering; retry later, and check whether the call took effect before repeating a write".into()),
                }
            }
            Refusal::McpSessionForeign => (403, "mcp_session_not_yours", "this MCP session was opened by another agent; a session belongs to the agent that initialized it. Initialize your own session (send `initialize` without `Mcp-Session-Id`)".to_string()),
            Refusal::McpSessionUnknown => (404, "mcp_session_unknown", "this gateway does not know this MCP session (it expired, or the gateway restarted); initialize a new session".to_string()),
            Refusal::BodyTooLarge { limit } => {
                extra.insert("limit_bytes".into(), json!(limit));
                (413, "body_too_large", format!(
                    "this call needs human approval, and its body is larger than the {limit}-byte limit an approver can review; send a smaller body"
                ))
            }
            Refusal::ApprovalPending {
                id,
                expires_at,
                retry_after: ra,
                votes,
                quorum,
            } => {
                retry_after = Some(*ra);
                extra.insert("approval_id".into(), json!(id));
                extra.insert("expires_at".into(), json!(expires_at));
                extra.insert("approvals".into(), json!(votes));
                extra.insert("quorum".into(), json!(quorum));
                (202, "approval_pending", format!(
                    "held for human approval, id {id}; nothing was sent to the tool. Retry the identical request (same method, path, query, headers and body) after {ra}s; it passes once after approval. The approval expires at {expires_at}"
                ))
            }
            Refusal::ApprovalDenied { id, by, reason } => {
                extra.insert("approval_id".into(), json!(id));
                extra.insert("denied_by".into(), json!(by));
                extra.insert("reason".into(), json!(reason));
                (403, "approval_denied", format!(
                    "a human approver ({}) denied this call (approval {id}): {reason}. Do not retry it unchanged",
                    by.join(", ")
                ))
            }
            Refusal::ApprovalCancelled { id, reason } => {
                extra.insert("approval_id".into(), json!(id));
                extra.insert("reason".into(), json!(reason));
                (403, "approval_cancelled", format!(
                    "approval {id} was cancelled before this call was sent: {reason}; nothing was sent to the tool. Do not retry until an operator says so"
                ))
            }
            Refusal::ApprovalTimeout { id } => {
                extra.insert("approval_id".into(), json!(id));
                (403, "approval_timeout", format!(
                    "no approver decided on this call in time (approval {id}); nothing was sent to the tool. Ask the agent's owner before retrying"
                ))
            }
            Refusal::ApprovalUsed { id } => {
                extra.insert("approval_id".into(), json!(id));
                (409, "approval_used", format!(
                    "approval {id} was already used by an identical call; each approval lets one call through. Send the request again to ask for a new approval"
                ))
            }
            // The store's own error names files and paths: it goes to the log, never to agents.
            Refusal::ApprovalUnavailable => {
                retry_after = Some(30);
                (503, "approval_unavailable", "this call needs human approval, but approvals cannot be recorded right now; it was refused and nothing was sent to the tool. Retry later".into())
            }
            Refusal::StateStoreUnavailable => {
                retry_after = Some(1);
                (503, "state_store_unavailable", "the gateway cannot reach the state its replicas share (limits, kill switch), and this route does not proceed without it; nothing was sent to the tool. Retry after 1 s".into())
            }
            Refusal::UpstreamCredentialUnavailable(why) => {
                retry_after = Some(5);
                (503, "upstream_credential_unavailable", format!("the gateway could not obtain this tool's credential for the call ({why}); nothing was sent to the tool. Retry after 5 s"))
            }
            Refusal::Internal => (
                500,
                "internal_error",
                "the gateway failed to handle this call; retry later".into(),
            ),
            Refusal::TooManyPending {
                agent,
                count,
                limit,
                held,
            } => {
                retry_after = Some(30);
                let setting = if *held {
                    "approvals.max_held_per_agent"
                } else {
                    "approvals.max_pending_per_agent"
                };
                extra.insert("agent".into(), json!(agent));
                extra.insert("limit".into(), json!(limit));
                extra.insert("setting".into(), json!(setting));
                let msg = if *held {
                    format!(
                        "agent `{agent}` already has {count} calls held open waiting for human approval, the most `{setting}` allows ({limit}); this call was refused and nothing was sent to the tool. Wait for those calls to be answered before sending another call that needs approval, and do not retry in a loop; if more are needed, the agent's owner must ask approvers to work through the queue or an operator to raise `{setting}`"
                    )
                } else {
                    format!(
                        "agent `{agent}` already has {count} approvals pending, the most `{setting}` allows ({limit}); this call was refused and nothing was sent to the tool. Wait until approvers decide some of them (or they expire), then retry; an identical retry of an already approved call still passes. Do not retry in a loop; if more are needed, the agent's owner must ask approvers to work through the queue or an operator to raise `{setting}`"
                    )
                };
                (429, "too_many_pending", msg)
            }
            Refusal::HeadersTooLarge {
                count,
                bytes,
                max_count,
                max_bytes,
            } => {
                extra.insert("limit_headers".into(), json!(max_count));
                extra.insert("limit_bytes".into(), json!(max_bytes));
                (431, "headers_too_large", format!(
                    "this call needs human approval, and an approver must see every header that is forwarded; it has {count} forwardable headers ({bytes} bytes), above the limit of {max_count} headers and {max_bytes} bytes (`approvals.max_headers`, `approvals.max_header_bytes`); send fewer or smaller headers"
                ))
            }
        };
        let mut body = Map::new();
        body.insert("error".into(), json!(code));
        body.insert("message".into(), json!(message));
        body.insert("request_id".into(), json!(request_id));
        body.extend(extra);
        Rendered {
            status,
            code,
            www_authenticate: www,
            retry_after,
            body: serde_json::to_vec(&Value::Object(body)).expect("JSON of strings"),
        }
    }
}

//! Approvals REST API and console, on the admin listener.
//!
//! Only people decide: every call needs an approver token (`Authorization: Bearer ...`), whose
//! SHA-256 must match an approver in `approvals.approvers`. Agent tokens are refused outright,
//! even validly signed ones: an agent must never approve its own (or another agent's) call.

use crate::approval::store::{Approval, ListFilter, Status, StoreError};
use crate::approval::{rfc3339_ms, ApprovalService};
use crate::state::GatewayState;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The console page (static; it talks to the API below).
const CONSOLE_HTML: &str = include_str!("console.html");
/// The code both console pages share (helpers, API client, sign-in, polling), loaded by each
/// before its own inline script.
const CONSOLE_COMMON_JS: &str = include_str!("console_common.js");

/// Approval routes.
pub fn routes() -> Router<Arc<GatewayState>> {
    Router::new()
        .route("/console", get(console))
        .route("/console/common.js", get(console_common))
        .route("/api/whoami", get(whoami))
        .route("/api/approvals", get(list))
        .route("/api/approvals/{id}", get(show))
        .route("/api/approvals/{id}/body", get(body))
        .route("/api/approvals/{id}/approve", post(approve))
        .route("/api/approvals/{id}/deny", post(deny))
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

/// An authenticated approver.
pub struct ApproverName(pub String);

impl FromRequestParts<Arc<GatewayState>> for ApproverName {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<GatewayState>,
    ) -> Result<Self, Self::Rejection> {
        // An owned snapshot: the IdP-token check below awaits.
        let snap = state.snapshot.load_full();
        let Some(settings) = snap.approvals.as_ref() else {
            return Err(not_configured());
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "approver_auth_required",
                "send `Authorization: Bearer <approver token>`",
            ));
        };
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(a) = settings.approver_by_token_hash(&hash) {
            return Ok(ApproverName(a.name.clone()));
        }
        if token.split('.').count() == 3 {
            // A person's IdP token may approve if it is valid, from the configured issuer, and
            // carries the approver claim. An agent never approves: a token whose subject is a
            // registered agent is refused even if it (wrongly) carries the claim.
            if let Some((issuer, _)) = &settings.jwt_approvers {
                if let Ok(t) = snap.verifier.verify(token).await {
                    if &*t.issuer == issuer.as_str() && !snap.agents.contains_key(&t.subject) {
                        if let Some(name) = &t.approver {
                            // One person, one vote: the IdP name is mapped onto the configured
                            // approver it belongs to, and the vote is recorded under that name,
                            // so the same person's approver token cannot count a second time.
                            return match settings.approver_by_idp_name(name) {
                                Some(a) => Ok(ApproverName(a.name.clone())),
                                None => Err(error(
                                    StatusCode::FORBIDDEN,
                                    "unknown_approver",
                                    format!(
                                        "the IdP token names approver `{}`, who is not a configured approver; an operator must list this person in `approvals.approvers` (as `name`, or under an approver's `idp_names`) before they can approve",
                                        crate::approval::display::escape_line(name)
                                    ),
                                )),
                            };
                        }
                    }
                }
            }
            return Err(error(
                StatusCode::FORBIDDEN,
                "agent_token_refused",
                "this JWT does not belong to an approver (agent tokens can never approve or view approvals); sign in with an approver token or an IdP token carrying the approver claim",
            ));
        }
        Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_approver_token",
            "unknown approver token",
        ))
    }
}

fn not_configured() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "approvals_not_configured",
        "this gateway has no `approvals:` section",
    )
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::NotFound => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no approval with this id",
        ),
        // Expired by the sweep before the vote: "gone", like an expiry found by the vote itself.
        StoreError::AlreadyDecided {
            status: Status::Expired,
        } => error(
            StatusCode::GONE,
            "expired",
            "this approval expired before it was decided",
        ),
        StoreError::AlreadyDecided { status } => error(
            StatusCode::CONFLICT,
            "already_decided",
            format!("this approval is already {status}"),
        ),
        StoreError::Expired => error(
            StatusCode::GONE,
            "expired",
            "this approval expired before it was decided",
        ),
        StoreError::NotAnApprover { approver } => error(
            StatusCode::FORBIDDEN,
            "not_an_approver",
            format!("{approver} is not among the approvers of this route"),
        ),
        StoreError::AlreadyVoted { approver } => error(
            StatusCode::CONFLICT,
            "already_voted",
            format!("{approver} already voted; quorum needs distinct approvers"),
        ),
        StoreError::Unavailable(why) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", why)
        }
        // Only creating an approval can hit the cap, and the API never creates one.
        StoreError::TooManyPending { pending, limit } => error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_pending",
            format!("{pending} approvals pending, limit {limit}"),
        ),
    }
}

/// JSON view of an approval, with readable times and the console link.
fn view(svc: &ApprovalService, a: &Approval) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("created_at".into(), json!(rfc3339_ms(a.created_at_ms)));
        o.insert("expires_at".into(), json!(rfc3339_ms(a.expires_at_ms)));
        o.insert("decided_at".into(), json!(a.decided_at_ms.map(rfc3339_ms)));
        o.insert(
            "approving_votes".into(),
            json!(a.votes.iter().filter(|v| v.approve).count()),
        );
        o.insert("link".into(), json!(svc.link(&a.id)));
    }
    v
}

/// A console page as served: never cached, and nothing runs or loads but its own inline
/// script and style and the console's shared script from this listener (no external
/// resources, no framing). Shared with the agents page.
pub(super) fn console_page(html: &'static str) -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
        ],
        Html(html),
    )
}

async fn console() -> impl IntoResponse {
    console_page(CONSOLE_HTML)
}

/// `/console/common.js`: the script both console pages load. Never cached (it changes with the
/// pages it serves), and never sniffed as anything but a script.
async fn console_common() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        CONSOLE_COMMON_JS,
    )
}

async fn whoami(ApproverName(name): ApproverName) -> Response {
    Json(json!({"approver": name})).into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    agent: Option<String>,
    route: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(s): State<Arc<GatewayState>>,
    _who: ApproverName,
    Query(q): Query<ListQuery>,
) -> Response {
    let Some(svc) = s.approvals.load_full() else {
        return not_configured();
    };
    let status = match q.status.as_deref() {
        None | Some("all") => None,
        Some(x) => match Status::parse(x) {
            Some(st) => Some(st),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_status",
                    format!("unknown status `{x}`"),
                )
            }
        },
    };
    let f = ListFilter {
        status,
        agent: q.agent,
        route: q.route,
        limit: q.limit.unwrap_or(0),
    };
    match svc.list(f).await {
        Ok(items) => {
            Json(json!({"approvals": items.iter().map(|a| view(&svc, a)).collect::<Vec<_>>()}))
                .into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn show(
    State(s): State<Arc<GatewayState>>,
    _who: ApproverName,
    Path(id): Path<String>,
) -> Response {
    let Some(svc) = s.approvals.load_full() else {
        return not_configured();
    };
    match svc.get(&id).await {
        Ok(a) => Json(view(&svc, &a)).into_response(),
        Err(e) => store_error(e),
    }
}

/// The whole body of an approval, byte for byte, as the agent sent it (and as it would be
/// forwarded). Served as an inert download: never rendered or sniffed by a browser.
async fn body(
    State(s): State<Arc<GatewayState>>,
    _who: ApproverName,
    Path(id): Path<String>,
) -> Response {
    let Some(svc) = s.approvals.load_full() else {
        return not_configured();
    };
    match svc.body(&id).await {
        Ok(Some(bytes)) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "no-store"),
                (header::CONTENT_SECURITY_POLICY, "sandbox"),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "body_not_stored",
            "this approval was recorded before whole bodies were kept; only its preview exists",
        ),
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct DecisionBody {
    reason: Option<String>,
}

async fn decide(
    s: Arc<GatewayState>,
    who: String,
    id: String,
    body: Option<Json<DecisionBody>>,
    approve: bool,
) -> Response {
    let Some(svc) = s.approvals.load_full() else {
        return not_configured();
    };
    let reason = body.and_then(|Json(b)| b.reason).unwrap_or_default();
    if reason.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "reason_required",
            "give a reason: it is recorded in the audit trail and sent to the agent on denial",
        );
    }
    match svc.vote(&id, &who, approve, reason.trim()).await {
        Ok(a) => Json(view(&svc, &a)).into_response(),
        Err(e) => store_error(e),
    }
}

async fn approve(
    State(s): State<Arc<GatewayState>>,
    ApproverName(who): ApproverName,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    decide(s, who, id, body, true).await
}

async fn deny(
    State(s): State<Arc<GatewayState>>,
    ApproverName(who): ApproverName,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    decide(s, who, id, body, false).await
}

//! Operator credentials on the admin listener: who may reload the configuration, and who may
//! read `/metrics` when it is closed.
//!
//! Credentials come only from `Authorization: Bearer`, never from cookies: a browser attaches
//! cookies to cross-site requests by itself, never a bearer token. Only SHA-256 digests of the
//! tokens are in the config.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::approvals::ApproverName;
use super::guard::{clip, AdminConn};
use crate::policy::{MetricsAccess, Snapshot};
use crate::state::GatewayState;

/// The bearer token of a request, if it sends one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
}

fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [
            (header::WWW_AUTHENTICATE, "Bearer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

/// Someone allowed to change the gateway's state: an operator with an `admin.tokens` token, or
/// an approver (approver token, or IdP token with the approver claim).
#[derive(Debug, Clone)]
pub struct Operator {
    /// Name in the audit trail.
    pub name: String,
    /// `admin` or `approver`: which list the credential is from.
    pub credential: &'static str,
    /// The client, when known.
    pub client: Option<SocketAddr>,
}

impl FromRequestParts<Arc<GatewayState>> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<GatewayState>,
    ) -> Result<Self, Self::Rejection> {
        let client = parts
            .extensions
            .get::<ConnectInfo<AdminConn>>()
            .map(|c| c.0.peer);
        let res = authenticate(parts, state, client).await;
        if let Err(r) = &res {
            // Operators see refused attempts at state changes; the body says why.
            tracing::warn!(path = clip(parts.uri.path()), client = ?client, status = r.status().as_u16(), "admin request refused: no valid operator credential");
        }
        res
    }
}

async fn authenticate(
    parts: &mut Parts,
    state: &Arc<GatewayState>,
    client: Option<SocketAddr>,
) -> Result<Operator, Response> {
    let snap = state.snapshot.load_full();
    let approvals = snap.approvals.is_some();
    if snap.admin.tokens.is_empty() && !approvals {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "admin_auth_not_configured",
            "no credential may change this gateway's state: add `admin.tokens` (`portcullis approver-token` makes a token and its hash). SIGHUP and config file changes still reload",
        ));
    }
    let Some(token) = bearer(&parts.headers) else {
        return Err(refusal(
            StatusCode::UNAUTHORIZED,
            "admin_auth_required",
            "send `Authorization: Bearer <token>` with an admin token (`admin.tokens`) or an approver token",
        ));
    };
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if let Some(t) = snap.admin.token_by_hash(&hash) {
        return Ok(Operator {
            name: t.name.clone(),
            credential: "admin",
            client,
        });
    }
    if approvals {
        match ApproverName::from_request_parts(parts, state).await {
            Ok(ApproverName(name)) => {
                return Ok(Operator {
                    name,
                    credential: "approver",
                    client,
                })
            }
            // An agent's token: say so, as the approvals API does.
            Err(r) if r.status() == StatusCode::FORBIDDEN => return Err(r),
            Err(_) => {}
        }
    }
    Err(refusal(
        StatusCode::UNAUTHORIZED,
        "invalid_admin_token",
        "unknown token: send an admin token (`admin.tokens`) or an approver token",
    ))
}

/// With `admin.metrics: token`, the refusal for a request that may not read `/metrics`.
pub(crate) fn metrics_refusal(snap: &Snapshot, headers: &HeaderMap) -> Option<Response> {
    if snap.admin.metrics == MetricsAccess::Open {
        return None;
    }
    let Some(token) = bearer(headers) else {
        return Some(refusal(
            StatusCode::UNAUTHORIZED,
            "metrics_auth_required",
            "this gateway's /metrics needs `Authorization: Bearer <token>`: an admin token or the metrics token (`admin.metrics: token`)",
        ));
    };
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if snap.admin.token_by_hash(&hash).is_some()
        || snap.admin.metrics_token_sha256.as_ref() == Some(&hash)
    {
        return None;
    }
    Some(refusal(
        StatusCode::UNAUTHORIZED,
        "invalid_metrics_token",
        "unknown token: /metrics accepts an admin token or the metrics token",
    ))
}

//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `POST /reload`, and the approvals
//! API and console ([`approvals`]).
//!
//! It runs as a pingora background service with its own small HTTP router (axum), on a
//! separate address that defaults to loopback: nothing here is reachable by agents through the
//! proxy listener.

pub mod approvals;

use crate::state::GatewayState;
use async_trait::async_trait;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;
use std::sync::Arc;

/// The admin HTTP service.
pub struct AdminService {
    state: Arc<GatewayState>,
    addr: String,
}

impl AdminService {
    /// Serve on `addr`.
    pub fn new(state: Arc<GatewayState>, addr: String) -> AdminService {
        AdminService { state, addr }
    }
}

/// The admin routes, usable on any listener (tests bind them directly).
pub fn router(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/reload", post(reload))
        .merge(approvals::routes())
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(s): State<Arc<GatewayState>>) -> Response {
    s.probe_proxy_listeners().await;
    let snap = s.snapshot.load();
    match s.readiness() {
        Ok(()) => Json(json!({"status": "ready", "config_version": snap.version, "config_digest": snap.digest})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason, "config_version": snap.version})),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<Arc<GatewayState>>) -> Response {
    s.refresh_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn reload(State(s): State<Arc<GatewayState>>) -> Response {
    let st = s.clone();
    // Loading reads files and resolves upstream names: keep it off the async workers.
    let res = tokio::task::spawn_blocking(move || st.reload("admin")).await;
    match res {
        Ok(Ok(snap)) => Json(json!({"status": "reloaded", "config_version": snap.version, "config_digest": snap.digest})).into_response(),
        Ok(Err(e)) => {
            let issues: Vec<_> = e
                .issues()
                .iter()
                .map(|i| json!({"path": i.path, "line": i.line, "message": i.kind.to_string()}))
                .collect();
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "error": "config_invalid",
                    "message": format!("the new configuration was refused; version {} keeps serving", s.snapshot.load().version),
                    "detail": e.to_string(),
                    "issues": issues,
                })),
            )
                .into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "internal_error"}))).into_response(),
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match tokio::net::TcpListener::bind(&self.addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %self.addr, error = %e, "cannot bind the admin listener");
                std::process::exit(1);
            }
        };
        tracing::info!(addr = %self.addr, "admin listener up");
        let app = router(self.state.clone());
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "admin listener failed");
        }
    }
}

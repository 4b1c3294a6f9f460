//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `POST /reload`, and the approvals
//! API and console ([`approvals`]).
//!
//! It runs as a pingora background service with its own small HTTP router (axum), on a
//! separate address that defaults to loopback: nothing here is reachable by agents through the
//! proxy listener. Loopback is still reachable by every local process and browser page, so one
//! layer ([`guard`]) checks `Host` and refuses browser-forged state changes on every route, and
//! every state change needs a bearer credential ([`auth`]).

pub mod agents;
pub mod approvals;
pub mod auth;
pub mod guard;

use crate::observe::LogTime;
use crate::state::GatewayState;
use async_trait::async_trait;
use auth::Operator;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use guard::{AdminConn, Guard};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;
use std::time::SystemTime;

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

/// The admin routes for a listener started on `listen`, behind the [`guard`] layer. Serve them
/// with `into_make_service_with_connect_info::<AdminConn>()`: the `Host` check and the audit
/// trail use the connection's addresses.
pub fn router(state: Arc<GatewayState>, listen: &str) -> Router {
    let guard_state = Arc::new(Guard {
        state: state.clone(),
        listen: listen.to_owned(),
    });
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/reload", post(reload))
        .merge(approvals::routes())
        .merge(agents::routes())
        .layer(axum::middleware::from_fn_with_state(
            guard_state,
            guard::guard,
        ))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(s): State<Arc<GatewayState>>) -> Response {
    s.probe_proxy_listeners().await;
    let snap = s.snapshot.load();
    // With shared state, what each store answers (and how old this replica's copy of agent
    // state is); its outages do not make the replica unready (see `GatewayState::readiness`).
    let stores = match &s.shared {
        Some(shared) => shared.report().await,
        None => json!({"backend": "embedded"}),
    };
    match s.readiness() {
        Ok(()) => Json(json!({"status": "ready", "config_version": snap.version, "config_digest": snap.digest, "policy_digest": snap.policy_digest, "state_store": stores})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason, "config_version": snap.version, "state_store": stores})),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<Arc<GatewayState>>, headers: HeaderMap) -> Response {
    if let Some(refused) = auth::metrics_refusal(&s.snapshot.load(), &headers) {
        return refused;
    }
    s.refresh_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// The audit line of a reload (`event: config_reload`), whatever asked for it.
#[derive(Serialize)]
struct ReloadEvent<'a> {
    time: LogTime,
    event: &'static str,
    /// `reloaded` or `refused`.
    outcome: &'static str,
    /// Name of the operator or approver; `SIGHUP` or `file_watch` for the process's own
    /// triggers.
    by: &'a str,
    /// `admin` or `approver` (a token on the admin API), `signal` or `file_watch`.
    credential: &'static str,
    client: Option<String>,
    /// The version serving after the attempt.
    config_version: u64,
}

/// Reload on a trigger of the process itself (`sighup`, `file-change`) and write its audit
/// line: a reload changes what every agent may do, so the SIEM sees each one, not only those
/// asked for on the admin API.
pub fn reload_and_audit(s: &GatewayState, trigger: &'static str) {
    let started = SystemTime::now();
    let outcome = match s.reload(trigger) {
        Ok(_) => "reloaded",
        Err(_) => "refused",
    };
    let (by, credential) = match trigger {
        "sighup" => ("SIGHUP", "signal"),
        _ => ("file_watch", "file_watch"),
    };
    s.access_log.log(&ReloadEvent {
        time: LogTime(started),
        event: "config_reload",
        outcome,
        by,
        credential,
        client: None,
        config_version: s.snapshot.load().version,
    });
}

async fn reload(State(s): State<Arc<GatewayState>>, who: Operator) -> Response {
    let st = s.clone();
    let started = SystemTime::now();
    tracing::info!(by = %who.name, credential = who.credential, client = ?who.client, "reload requested on the admin API");
    // Loading reads files and resolves upstream names: keep it off the async workers.
    let res = tokio::task::spawn_blocking(move || st.reload("admin")).await;
    let outcome = if matches!(res, Ok(Ok(_))) {
        "reloaded"
    } else {
        "refused"
    };
    s.access_log.log(&ReloadEvent {
        time: LogTime(started),
        event: "config_reload",
        outcome,
        by: &who.name,
        credential: who.credential,
        client: who.client.map(|c| c.to_string()),
        config_version: s.snapshot.load().version,
    });
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
        let app = router(self.state.clone(), &self.addr);
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<AdminConn>(),
        )
        .with_graceful_shutdown(stop)
        .await
        {
            tracing::error!(error = %e, "admin listener failed");
        }
    }
}

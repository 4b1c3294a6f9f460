//! A small "internal tools" API for the quickstart: tickets and a knowledge base.
//!
//! It trusts nothing but the credential the gateway injects (`TICKETS_API_KEY`), so it shows
//! that agents never need that secret, and it echoes the identity headers the gateway asserts.
//!
//! `portcullis-demo-tools 127.0.0.1:9090` (scripts/run.sh starts it for the quickstart).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
struct App {
    key: String,
    tickets: Arc<Mutex<BTreeMap<u64, Value>>>,
}

fn caller(h: &HeaderMap) -> Value {
    let get = |k: &str| {
        h.get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    json!({"agent": get("x-portcullis-agent"), "owner": get("x-portcullis-owner"), "request_id": get("x-request-id")})
}

/// `None` when the gateway's credential is present, else the 401 to send.
fn unauthorized(app: &App, h: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {}", app.key);
    if h.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str()) {
        None
    } else {
        Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "the tools API only accepts the gateway's credential"})),
            )
                .into_response(),
        )
    }
}

async fn list(State(app): State<App>, h: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&app, &h) {
        return r;
    }
    let t: Vec<Value> = app.tickets.lock().unwrap().values().cloned().collect();
    Json(json!({"tickets": t, "caller": caller(&h)})).into_response()
}

async fn show(State(app): State<App>, h: HeaderMap, Path(id): Path<u64>) -> Response {
    if let Some(r) = unauthorized(&app, &h) {
        return r;
    }
    match app.tickets.lock().unwrap().get(&id) {
        Some(t) => Json(json!({"ticket": t, "caller": caller(&h)})).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such ticket"})),
        )
            .into_response(),
    }
}

async fn create(State(app): State<App>, h: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Some(r) = unauthorized(&app, &h) {
        return r;
    }
    let mut t = app.tickets.lock().unwrap();
    let id = t.keys().last().copied().unwrap_or(0) + 1;
    let title = body
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("untitled");
    let ticket =
        json!({"id": id, "title": title, "status": "open", "created_by": caller(&h)["agent"]});
    t.insert(id, ticket.clone());
    (StatusCode::CREATED, Json(json!({"ticket": ticket}))).into_response()
}

/// A reply to the customer on a ticket (the bundled config lets agents post one only when
/// acting for a person: a delegated token).
async fn reply(
    State(app): State<App>,
    h: HeaderMap,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = unauthorized(&app, &h) {
        return r;
    }
    if !app.tickets.lock().unwrap().contains_key(&id) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such ticket"})),
        )
            .into_response();
    }
    let text = body.get("text").and_then(Value::as_str).unwrap_or("");
    (
        StatusCode::CREATED,
        Json(json!({"ticket": id, "reply": text, "caller": caller(&h)})),
    )
        .into_response()
}

async fn delete(State(app): State<App>, h: HeaderMap, Path(id): Path<u64>) -> Response {
    if let Some(r) = unauthorized(&app, &h) {
        return r;
    }
    match app.tickets.lock().unwrap().remove(&id) {
        Some(t) => Json(json!({"deleted": t})).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such ticket"})),
        )
            .into_response(),
    }
}

async fn kb_search(
    State(app): State<App>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = unauthorized(&app, &h) {
        return r;
    }
    let q = q.get("q").cloned().unwrap_or_default();
    Json(json!({"query": q, "articles": [{"id": "kb-1", "title": "Resetting a password"}], "caller": caller(&h)})).into_response()
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let key = std::env::var("TICKETS_API_KEY").unwrap_or_else(|_| "demo-tickets-key".into());
    let mut seed = BTreeMap::new();
    seed.insert(
        42,
        json!({"id": 42, "title": "Printer on fire", "status": "open"}),
    );
    seed.insert(
        43,
        json!({"id": 43, "title": "VPN drops every hour", "status": "open"}),
    );
    let app = App {
        key,
        tickets: Arc::new(Mutex::new(seed)),
    };
    let router = Router::new()
        .route("/api/tickets", get(list).post(create))
        .route("/api/tickets/{id}", get(show).delete(delete))
        .route("/api/tickets/{id}/replies", post(reply))
        .route("/api/kb/search", get(kb_search))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("bind demo tools API");
    eprintln!("demo tools API on http://{addr}");
    axum::serve(listener, router).await.expect("serve");
}

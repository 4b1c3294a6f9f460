//! The token service's OAuth endpoints, on their own listener (`listen.token`): agents reach
//! it, unlike the admin listener, and it serves nothing else.
//!
//! - `POST /oauth2/token`: `client_credentials` and token exchange (RFC 8693) ([`grants`]),
//!   clients authenticated by secret or `private_key_jwt` (RFC 7523) ([`oauth`]).
//! - `POST /oauth2/revoke` (RFC 7009): feeds the kill switch's revocation list.
//! - `POST /oauth2/introspect` (RFC 7662): for upstreams that prefer asking.
//! - `GET /.well-known/jwks.json` and `/.well-known/oauth-authorization-server` (RFC 8414).
//!
//! Per-call upstream credentials (minted or exchanged) are in [`upstream`].

pub mod grants;
pub mod oauth;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use serde_json::{json, Value};

use crate::observe::LogTime;
use crate::policy::{Snapshot, TokenService};
use crate::state::agent_state::Change;
use crate::state::GatewayState;
use oauth::{authenticate, form, no_store, Client, OAuthError};

/// Remembers the `jti`s of client assertions until they expire, so each is used once. With
/// shared state, Redis remembers them for every replica.
pub struct ReplayGuard {
    seen: moka::sync::Cache<String, ()>,
    state: Arc<GatewayState>,
}

impl ReplayGuard {
    fn new(state: Arc<GatewayState>) -> ReplayGuard {
        ReplayGuard {
            // Assertions live minutes: the cap bounds memory under a flood of valid ones.
            seen: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            state,
        }
    }

    /// Whether `client`'s assertion `jti` (valid until `exp`) is used for the first time.
    pub async fn first_use(&self, client: &str, jti: &str, exp: u64) -> Result<bool, String> {
        let key = format!("{}:{client}:{jti}", client.len());
        if self.seen.contains_key(&key) {
            return Ok(false);
        }
        if let Some(shared) = &self.state.shared {
            let now = crate::approval::now_ms() as u64 / 1000;
            let ttl = exp.saturating_sub(now).max(1) + 60;
            if !shared.first_use(&format!("assertion:{key}"), ttl).await? {
                return Ok(false);
            }
        }
        // A race between two requests with the same assertion: one insert wins.
        let entry = self.seen.entry(key).or_insert(());
        Ok(entry.is_fresh())
    }
}

/// The token listener.
pub struct TokenEndpoints {
    state: Arc<GatewayState>,
    addr: String,
}

impl TokenEndpoints {
    /// Serve on `addr`.
    pub fn new(state: Arc<GatewayState>, addr: String) -> TokenEndpoints {
        TokenEndpoints { state, addr }
    }
}

struct App {
    state: Arc<GatewayState>,
    replay: ReplayGuard,
}

/// The token service's routes.
pub fn router(state: Arc<GatewayState>) -> Router {
    let app = Arc::new(App {
        replay: ReplayGuard::new(state.clone()),
        state,
    });
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/oauth2/revoke", post(revoke))
        .route("/oauth2/introspect", post(introspect))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .layer(axum::extract::DefaultBodyLimit::max(oauth::MAX_FORM_BYTES))
        .with_state(app)
}

#[async_trait]
impl BackgroundService for TokenEndpoints {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match tokio::net::TcpListener::bind(&self.addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %self.addr, error = %e, "cannot bind the token listener");
                std::process::exit(1);
            }
        };
        tracing::info!(addr = %self.addr, "token listener up");
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        let app = router(self.state.clone());
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await
        {
            tracing::error!(error = %e, "token listener failed");
        }
    }
}

/// The snapshot and its token service, or 503 when none is configured (a reload removed it).
fn service(s: &GatewayState) -> Result<(Arc<Snapshot>, TokenService), OAuthError> {
    let snap = s.snapshot.load_full();
    let ts = snap.token_service.clone().ok_or_else(|| OAuthError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        error: "temporarily_unavailable",
        description: "the token service is not configured".into(),
        basic_challenge: false,
    })?;
    Ok((snap, ts))
}

/// The audit line of a token-service request (`event: token`).
#[derive(Serialize)]
struct TokenEvent<'a> {
    time: LogTime,
    event: &'static str,
    endpoint: &'static str,
    grant: &'a str,
    /// `issued`, `revoked`, `active`, `inactive`, or the OAuth error code.
    outcome: &'a str,
    client: Option<&'a str>,
    auth_method: Option<&'a str>,
    /// For issued tokens: subject, actors (current first), scopes, audience, jti, lifetime.
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    actors: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    scopes: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    audience: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

impl<'a> TokenEvent<'a> {
    fn new(endpoint: &'static str, grant: &'a str, outcome: &'a str) -> TokenEvent<'a> {
        TokenEvent {
            time: LogTime(SystemTime::now()),
            event: "token",
            endpoint,
            grant,
            outcome,
            client: None,
            auth_method: None,
            subject: None,
            actors: &[],
            scopes: &[],
            audience: None,
            jti: None,
            expires_in: None,
            detail: None,
        }
    }
}

fn record(s: &GatewayState, e: &TokenEvent<'_>) {
    s.metrics
        .token_requests
        .with_label_values(&[e.endpoint, e.grant, e.outcome])
        .inc();
    s.access_log.log(e);
}

async fn token(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let s = &app.state;
    let params = match form(&headers, &body) {
        Ok(p) => p,
        Err(e) => return refused(s, "token", "unknown", None, e),
    };
    let grant = params.get("grant_type").cloned().unwrap_or_default();
    let grant_label = match grant.as_str() {
        "client_credentials" => "client_credentials",
        grants::TOKEN_EXCHANGE => "token_exchange",
        _ => "unsupported",
    };
    let (snap, ts) = match service(s) {
        Ok(x) => x,
        Err(e) => return refused(s, "token", grant_label, None, e),
    };
    let client = match authenticate(&snap, &ts, &headers, &params, &app.replay).await {
        Ok(c) => c,
        Err(e) => return refused(s, "token", grant_label, params.get("client_id"), e),
    };
    let agent = match &client {
        Some(Client::Agent { agent, .. }) => Some(agent.clone()),
        Some(Client::Service(n)) => {
            let e = OAuthError::bad(
                "unauthorized_client",
                format!("`{n}` may introspect tokens, not obtain them"),
            );
            return refused(s, "token", grant_label, Some(n), e);
        }
        None => None,
    };
    let states = s.agent_state.current();
    let issued = match grant.as_str() {
        "client_credentials" => match &agent {
            Some(a) => grants::client_credentials(&ts, a, &states, &params),
            None => Err(OAuthError::client(
                "client_credentials needs client authentication (HTTP Basic, client_secret or private_key_jwt)",
            )),
        },
        grants::TOKEN_EXCHANGE => {
            grants::token_exchange(&snap, &ts, agent.as_ref(), &states, &params).await
        }
        "" => Err(OAuthError::bad("invalid_request", "`grant_type` is required")),
        other => Err(OAuthError::bad(
            "unsupported_grant_type",
            format!("`{other}` is not supported; use client_credentials or token exchange ({})", grants::TOKEN_EXCHANGE),
        )),
    };
    let client_id = client.as_ref().map(|c| c.id().to_string());
    let method = match &client {
        Some(Client::Agent { method, .. }) => Some(*method),
        _ => None,
    };
    match issued {
        Ok(t) => {
            let mut e = TokenEvent::new("token", grant_label, "issued");
            e.client = client_id
                .as_deref()
                .or(t.actors.first().map(String::as_str));
            e.auth_method = method;
            e.subject = Some(&t.subject);
            e.actors = &t.actors;
            e.scopes = &t.scopes;
            e.audience = Some(&t.audience);
            e.jti = Some(&t.jti);
            e.expires_in = Some(t.expires_in);
            record(s, &e);
            let mut body = json!({
                "access_token": t.token,
                "token_type": "Bearer",
                "expires_in": t.expires_in,
                "scope": t.scopes.join(" "),
            });
            if grant_label == "token_exchange" {
                body["issued_token_type"] = json!(grants::ACCESS_TOKEN_TYPE);
            }
            let mut r = Json(body).into_response();
            no_store(r.headers_mut());
            r
        }
        Err(e) => refused(s, "token", grant_label, client_id.as_ref(), e),
    }
}

fn refused(
    s: &GatewayState,
    endpoint: &'static str,
    grant: &str,
    client: Option<&String>,
    e: OAuthError,
) -> Response {
    let mut ev = TokenEvent::new(endpoint, grant, e.error);
    ev.client = client.map(String::as_str);
    ev.detail = Some(&e.description);
    record(s, &ev);
    e.into_response()
}

/// The claims of a token this service issued, if the signature and issuer check out
/// (expired or not: revocation and introspection must still recognise it).
async fn own_token(
    snap: &Snapshot,
    ts: &TokenService,
    token: &str,
) -> Option<Arc<crate::identity::VerifiedToken>> {
    let v = snap.verifier.verify(token).await.ok()?;
    (v.claims.get("iss").and_then(Value::as_str) == Some(&ts.issuer)).then_some(v)
}

async fn revoke(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let s = &app.state;
    let (snap, ts) = match service(s) {
        Ok(x) => x,
        Err(e) => return refused(s, "revoke", "revocation", None, e),
    };
    let params = match form(&headers, &body) {
        Ok(p) => p,
        Err(e) => return refused(s, "revoke", "revocation", None, e),
    };
    let client = match authenticate(&snap, &ts, &headers, &params, &app.replay).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return refused(
                s,
                "revoke",
                "revocation",
                None,
                OAuthError::client("authenticate the client to revoke its tokens"),
            )
        }
        Err(e) => return refused(s, "revoke", "revocation", params.get("client_id"), e),
    };
    let Some(token) = params.get("token") else {
        return refused(
            s,
            "revoke",
            "revocation",
            Some(&client.id().to_string()),
            OAuthError::bad("invalid_request", "`token` is required"),
        );
    };
    // RFC 7009 §2.2: an unknown, invalid or expired token is answered 200 all the same.
    let mut outcome = "ignored";
    if let Some(v) = own_token(&snap, &ts, token).await {
        let issued_to = v.claims.get("client_id").and_then(Value::as_str);
        if issued_to != Some(client.id()) {
            // §2.1: only the client the token was issued to may revoke it.
            return refused(
                s,
                "revoke",
                "revocation",
                Some(&client.id().to_string()),
                OAuthError::bad("unauthorized_client", "this token was not issued to you"),
            );
        }
        if let Some(jti) = &v.jti {
            let id = snap.verifier.settings();
            let keep = id.max_token_ttl + id.clock_skew;
            let change = Change::RevokeToken {
                jti: jti.clone(),
                agent: Some(v.subject.clone()),
                expires_at_ms: crate::approval::now_ms() + keep.as_millis() as i64,
            };
            if let Err(e) = crate::admin::agents::apply_change(
                s,
                change,
                client.id(),
                "oauth_revocation",
                "revoked by its client (RFC 7009)",
            )
            .await
            {
                // The kill switch could not record it: say so, the client retries.
                return refused(
                    s,
                    "revoke",
                    "revocation",
                    Some(&client.id().to_string()),
                    OAuthError {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        error: "temporarily_unavailable",
                        description: format!("cannot record the revocation: {e}"),
                        basic_challenge: false,
                    },
                );
            }
            outcome = "revoked";
        }
    }
    let mut ev = TokenEvent::new("revoke", "revocation", outcome);
    let id = client.id().to_string();
    ev.client = Some(&id);
    record(s, &ev);
    let mut r = StatusCode::OK.into_response();
    no_store(r.headers_mut());
    r
}

async fn introspect(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let s = &app.state;
    let (snap, ts) = match service(s) {
        Ok(x) => x,
        Err(e) => return refused(s, "introspect", "introspection", None, e),
    };
    let params = match form(&headers, &body) {
        Ok(p) => p,
        Err(e) => return refused(s, "introspect", "introspection", None, e),
    };
    // RFC 7662 §2.1: the caller must be authorised; only configured services may ask (an agent
    // learning about other agents' tokens would be a leak).
    let caller = match authenticate(&snap, &ts, &headers, &params, &app.replay).await {
        Ok(Some(Client::Service(n))) => n,
        Ok(_) => {
            return refused(
                s,
                "introspect",
                "introspection",
                None,
                OAuthError::client("introspection is for `token_service.introspection_clients`"),
            )
        }
        Err(e) => return refused(s, "introspect", "introspection", params.get("client_id"), e),
    };
    let Some(token) = params.get("token") else {
        return refused(
            s,
            "introspect",
            "introspection",
            Some(&caller),
            OAuthError::bad("invalid_request", "`token` is required"),
        );
    };
    let states = s.agent_state.current();
    let now = crate::approval::now_ms() as u64 / 1000;
    let answer = match snap.verifier.verify(token).await {
        Ok(v) if v.exp >= now => {
            // Active only while the kill switch lets the agent act.
            let blocked = snap
                .agents
                .get(v.subject.as_str())
                .map(|a| crate::policy::agent_state::check(&states, a, &v).is_err() || !a.enabled)
                .unwrap_or(false);
            if blocked {
                None
            } else {
                let mut out = serde_json::Map::new();
                out.insert("active".into(), json!(true));
                for k in [
                    "iss",
                    "sub",
                    "aud",
                    "exp",
                    "iat",
                    "nbf",
                    "jti",
                    "client_id",
                    "scope",
                    "act",
                ] {
                    if let Some(x) = v.claims.get(k) {
                        out.insert(k.into(), x.clone());
                    }
                }
                out.insert("token_type".into(), json!("Bearer"));
                out.insert(
                    "username".into(),
                    json!(v.on_behalf_of.as_deref().unwrap_or(&v.subject)),
                );
                Some(Value::Object(out))
            }
        }
        _ => None,
    };
    let outcome = if answer.is_some() {
        "active"
    } else {
        "inactive"
    };
    let mut ev = TokenEvent::new("introspect", "introspection", outcome);
    ev.client = Some(&caller);
    record(s, &ev);
    let mut r = Json(answer.unwrap_or_else(|| json!({"active": false}))).into_response();
    no_store(r.headers_mut());
    r
}

async fn jwks(State(app): State<Arc<App>>) -> Response {
    match service(&app.state) {
        Ok((_, ts)) => {
            let mut r = Json(json!({"keys": ts.published})).into_response();
            // Verifiers may cache it briefly; a rotation publishes the new key before it signs
            // anything only if the cache is short.
            r.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("public, max-age=300"),
            );
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn metadata(State(app): State<Arc<App>>) -> Response {
    match service(&app.state) {
        Ok((_, ts)) => {
            let base = &ts.public_url;
            Json(json!({
                "issuer": ts.issuer,
                "token_endpoint": format!("{base}/oauth2/token"),
                "jwks_uri": format!("{base}/.well-known/jwks.json"),
                "revocation_endpoint": format!("{base}/oauth2/revoke"),
                "introspection_endpoint": format!("{base}/oauth2/introspect"),
                "grant_types_supported": ["client_credentials", grants::TOKEN_EXCHANGE],
                "response_types_supported": [],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["ES256", "ES384", "RS256", "PS256", "EdDSA"],
                "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
                "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "scopes_supported": scopes_supported(&app.state),
                "audiences_supported": ts.audiences,
            }))
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn scopes_supported(s: &GatewayState) -> Vec<String> {
    let snap = s.snapshot.load();
    let mut all: Vec<String> = snap
        .agents
        .values()
        .flat_map(|a| a.scopes.iter().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    all.dedup();
    all
}

//! OAuth 2.0 wire details shared by the endpoints: form parsing (RFC 6749 §3.2: each parameter
//! at most once), error answers (RFC 6749 §5.2) and client authentication (§2.3, RFC 7523).

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::policy::{Agent, Snapshot, TokenService};

/// RFC 7523 client assertion type.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An OAuth error answer: `{"error", "error_description"}`, never cached.
#[derive(Debug)]
pub struct OAuthError {
    /// HTTP status (400, or 401 for a failed client authentication).
    pub status: StatusCode,
    /// The RFC's error code.
    pub error: &'static str,
    /// What went wrong, for the agent's developer (never a secret).
    pub description: String,
    /// Answer with `WWW-Authenticate: Basic` (the client tried HTTP Basic).
    pub basic_challenge: bool,
}

impl OAuthError {
    /// 400 with `error`.
    pub fn bad(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }

    /// 401 `invalid_client`.
    pub fn client(description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: description.into(),
            basic_challenge: false,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        no_store(r.headers_mut());
        if self.basic_challenge {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"portcullis\""),
            );
        }
        r
    }
}

/// Token responses carry credentials: no cache may keep them (RFC 6749 §5.1).
pub fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Largest form body accepted.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// The parameters of an `application/x-www-form-urlencoded` body. A parameter sent twice,
/// another content type or an empty value counted as absent, per RFC 6749 §3.2 and §4.
pub fn form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(OAuthError::bad(
            "invalid_request",
            "send the parameters as application/x-www-form-urlencoded",
        ));
    }
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if v.is_empty() {
            continue;
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(OAuthError::bad(
                "invalid_request",
                format!("parameter `{k}` is repeated"),
            ));
        }
    }
    Ok(out)
}

/// Who authenticated at an endpoint.
#[derive(Debug, Clone)]
pub enum Client {
    /// A registered agent.
    Agent {
        /// The agent.
        agent: Arc<Agent>,
        /// `client_secret_basic`, `client_secret_post` or `private_key_jwt`.
        method: &'static str,
    },
    /// An introspection client (`token_service.introspection_clients`).
    Service(String),
}

impl Client {
    /// Its client id.
    pub fn id(&self) -> &str {
        match self {
            Client::Agent { agent, .. } => &agent.id,
            Client::Service(n) => n,
        }
    }
}

/// Authenticate the client of a request, by exactly one method: HTTP Basic, `client_secret`
/// in the body, or a `private_key_jwt` assertion. `Ok(None)`: no credentials at all (the
/// caller decides whether that is acceptable).
pub async fn authenticate(
    snap: &Snapshot,
    ts: &TokenService,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    replay: &super::ReplayGuard,
) -> Result<Option<Client>, OAuthError> {
    let basic = basic_credentials(headers)?;
    let post = params.get("client_secret");
    let assertion = params.get("client_assertion");
    let methods = [basic.is_some(), post.is_some(), assertion.is_some()];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(OAuthError::bad(
            "invalid_request",
            "use exactly one client authentication method",
        ));
    }
    if let Some((id, secret)) = basic {
        if let Some(given) = params.get("client_id") {
            if *given != id {
                return Err(OAuthError::bad(
                    "invalid_request",
                    "`client_id` differs from the HTTP Basic user",
                ));
            }
        }
        return by_secret(snap, ts, &id, &secret, "client_secret_basic")
            .map(Some)
            .map_err(|mut e| {
                e.basic_challenge = true;
                e
            });
    }
    if let Some(secret) = post {
        let Some(id) = params.get("client_id") else {
            return Err(OAuthError::bad(
                "invalid_request",
                "`client_secret` needs `client_id`",
            ));
        };
        return by_secret(snap, ts, id, secret, "client_secret_post").map(Some);
    }
    if let Some(jwt) = assertion {
        if params.get("client_assertion_type").map(String::as_str) != Some(ASSERTION_TYPE) {
            return Err(OAuthError::bad(
                "invalid_request",
                format!("`client_assertion_type` must be `{ASSERTION_TYPE}`"),
            ));
        }
        return by_assertion(snap, ts, jwt, params.get("client_id"), replay)
            .await
            .map(Some);
    }
    Ok(None)
}

/// `Authorization: Basic` credentials, form-decoded (RFC 6749 §2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || OAuthError {
        basic_challenge: true,
        ..OAuthError::client("malformed HTTP Basic credentials")
    };
    let text = v.to_str().map_err(|_| bad())?;
    let Some((scheme, rest)) = text.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError {
            basic_challenge: true,
            ..OAuthError::client("authenticate the client with HTTP Basic or in the body")
        });
    }
    let raw = STANDARD.decode(rest.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let decode = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((decode(id), decode(secret))))
}

/// The same answer for an unknown client and a wrong secret: probing must not reveal which
/// agents exist.
const BAD_CLIENT: &str = "client authentication failed";

fn by_secret(
    snap: &Snapshot,
    ts: &TokenService,
    id: &str,
    secret: &str,
    method: &'static str,
) -> Result<Client, OAuthError> {
    let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    if let Some(agent) = snap.agents.get(id) {
        let ok = agent
            .client
            .as_ref()
            .and_then(|c| c.secret_sha256)
            .is_some_and(|h| aws_lc_rs::constant_time::verify_slices_are_equal(&h, &hash).is_ok());
        if !ok {
            return Err(OAuthError::client(BAD_CLIENT));
        }
        return Ok(Client::Agent {
            agent: agent.clone(),
            method,
        });
    }
    match ts.introspection_clients.iter().find(|(n, _)| n == id) {
        Some((n, h)) if aws_lc_rs::constant_time::verify_slices_are_equal(h, &hash).is_ok() => {
            Ok(Client::Service(n.clone()))
        }
        _ => Err(OAuthError::client(BAD_CLIENT)),
    }
}

async fn by_assertion(
    snap: &Snapshot,
    ts: &TokenService,
    jwt: &str,
    client_id: Option<&String>,
    replay: &super::ReplayGuard,
) -> Result<Client, OAuthError> {
    let Some(verifier) = &ts.assertions else {
        return Err(OAuthError::client("no client has keys registered"));
    };
    let v = verifier
        .verify(jwt)
        .await
        .map_err(|e| OAuthError::client(format!("client assertion refused: {e}")))?;
    // `iss` selected the agent's keys; `sub` must name the same client (RFC 7523 §3).
    let id = &*v.issuer;
    if v.subject != id || v.on_behalf_of.is_some() {
        return Err(OAuthError::client(
            "client assertion refused: `sub` must equal `iss` (the client id)",
        ));
    }
    if client_id.is_some_and(|c| c != id) {
        return Err(OAuthError::client(
            "client assertion refused: `client_id` differs from its `iss`",
        ));
    }
    let Some(jti) = v.jti.as_deref() else {
        return Err(OAuthError::client(
            "client assertion refused: it needs a `jti` (each assertion is used once)",
        ));
    };
    match replay.first_use(id, jti, v.exp).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(OAuthError::client(
                "client assertion refused: this `jti` was already used (replay)",
            ))
        }
        Err(e) => {
            return Err(OAuthError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error: "temporarily_unavailable",
                description: format!("cannot check the assertion for replay: {e}"),
                basic_challenge: false,
            })
        }
    }
    let agent = snap
        .agents
        .get(id)
        .filter(|a| a.client.as_ref().is_some_and(|c| c.has_keys))
        .ok_or_else(|| OAuthError::client(BAD_CLIENT))?;
    Ok(Client::Agent {
        agent: agent.clone(),
        method: "private_key_jwt",
    })
}

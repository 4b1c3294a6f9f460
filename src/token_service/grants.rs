//! The two grants: `client_credentials` (an agent for itself) and token exchange (RFC 8693: an
//! agent for a person, or for another agent acting for one). Both only ever narrow: scopes
//! are an intersection, the audience one of a configured few, the lifetime capped, and no
//! refresh token is issued.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::oauth::OAuthError;
use crate::identity::{new_jti, VerifiedToken};
use crate::policy::agent_state::AgentStates;
use crate::policy::{Agent, Snapshot, TokenService};

/// RFC 8693 grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type of what the token service issues.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 token type of a JWT.
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A token the service issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The signed JWT.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its audience.
    pub audience: String,
    /// Its subject (the agent, or the principal of a delegated token).
    pub subject: String,
    /// Its actors, current first (empty unless delegated).
    pub actors: Vec<String>,
}

/// What goes into every token the service signs.
pub struct Claims<'a> {
    /// `sub`.
    pub subject: &'a str,
    /// `act` (RFC 8693 §4.1), already nested.
    pub act: Option<Value>,
    /// `scope`.
    pub scopes: &'a [String],
    /// `aud`.
    pub audience: &'a str,
    /// Lifetime.
    pub ttl: Duration,
    /// `client_id` (RFC 9068): the agent the token was issued to.
    pub client_id: &'a str,
}

/// Sign an access token (`typ: at+jwt`, RFC 9068 claims) with the service's key.
pub fn sign(ts: &TokenService, c: &Claims<'_>) -> Result<(String, String), OAuthError> {
    let jti = new_jti().map_err(server_error)?;
    let now = crate::approval::now_ms() as u64 / 1000;
    let mut claims = json!({
        "iss": ts.issuer,
        "sub": c.subject,
        "aud": c.audience,
        "iat": now,
        "nbf": now,
        "exp": now + c.ttl.as_secs(),
        "jti": jti,
        "client_id": c.client_id,
        "scope": c.scopes.join(" "),
    });
    if let Some(act) = &c.act {
        claims["act"] = act.clone();
    }
    let token = ts
        .signer
        .sign(&claims, Some("at+jwt"))
        .map_err(server_error)?;
    Ok((token, jti))
}

fn server_error(e: impl std::fmt::Display) -> OAuthError {
    OAuthError {
        status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        error: "server_error",
        description: e.to_string(),
        basic_challenge: false,
    }
}

/// The agent may obtain tokens now: enabled, not paused, tokens not revoked wholesale since.
pub fn usable(agent: &Agent, states: &AgentStates) -> Result<(), OAuthError> {
    if !agent.enabled {
        return Err(OAuthError::bad(
            "unauthorized_client",
            format!("agent `{}` is disabled", agent.id),
        ));
    }
    if let Some(rt) = states.agent(&agent.id) {
        if rt.paused.is_some() {
            return Err(OAuthError::bad(
                "unauthorized_client",
                format!(
                    "agent `{}` is paused by the kill switch; its owner or an operator must resume it",
                    agent.id
                ),
            ));
        }
    }
    Ok(())
}

/// The scopes asked for (`scope`, space-separated), or `None` when not given.
fn requested_scopes(params: &HashMap<String, String>) -> Option<BTreeSet<String>> {
    params.get("scope").map(|s| {
        s.split(' ')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    })
}

/// `requested`, which must lie within `allowed`; all of `allowed` when nothing was asked.
fn narrow(
    requested: Option<BTreeSet<String>>,
    allowed: &BTreeSet<String>,
    whose: &str,
) -> Result<Vec<String>, OAuthError> {
    let scopes: BTreeSet<String> = match requested {
        None => allowed.clone(),
        Some(r) => {
            let beyond: Vec<&str> = r
                .iter()
                .filter(|s| !allowed.contains(*s))
                .map(String::as_str)
                .collect();
            if !beyond.is_empty() {
                return Err(OAuthError::bad(
                    "invalid_scope",
                    format!(
                        "{} beyond {whose}: {}; ask only for: {}",
                        if beyond.len() == 1 { "scope" } else { "scopes" },
                        beyond.join(", "),
                        allowed.iter().cloned().collect::<Vec<_>>().join(" ")
                    ),
                ));
            }
            r
        }
    };
    if scopes.is_empty() {
        return Err(OAuthError::bad(
            "invalid_scope",
            format!("no scope left: {whose} is empty"),
        ));
    }
    Ok(scopes.into_iter().collect())
}

/// The one audience asked for (`audience` or `resource`), which must be configured.
fn audience(ts: &TokenService, params: &HashMap<String, String>) -> Result<String, OAuthError> {
    let asked = match (params.get("audience"), params.get("resource")) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::bad(
                "invalid_request",
                "give `audience` or `resource`, not both",
            ))
        }
        (Some(a), None) | (None, Some(a)) => a.clone(),
        (None, None) => return Ok(ts.audience.clone()),
    };
    if asked.contains(' ') || !ts.audiences.contains(&asked) {
        return Err(OAuthError::bad(
            "invalid_target",
            format!(
                "`{asked}` is not an audience this service issues tokens for; one of: {}",
                ts.audiences.join(", ")
            ),
        ));
    }
    Ok(asked)
}

fn ttl_of(ts: &TokenService, agent: &Agent) -> Duration {
    agent
        .client
        .as_ref()
        .map_or(ts.default_ttl, |c| c.max_token_ttl)
        .min(ts.max_ttl)
}

/// `grant_type=client_credentials`: a token for the agent itself.
pub fn client_credentials(
    ts: &TokenService,
    agent: &Arc<Agent>,
    states: &AgentStates,
    params: &HashMap<String, String>,
) -> Result<Issued, OAuthError> {
    usable(agent, states)?;
    let scopes = narrow(
        requested_scopes(params),
        &agent.scopes,
        &format!("agent `{}`'s registered scopes", agent.id),
    )?;
    let audience = audience(ts, params)?;
    let ttl = ttl_of(ts, agent);
    let (token, jti) = sign(
        ts,
        &Claims {
            subject: &agent.id,
            act: None,
            scopes: &scopes,
            audience: &audience,
            ttl,
            client_id: &agent.id,
        },
    )?;
    Ok(Issued {
        token,
        jti,
        expires_in: ttl.as_secs(),
        scopes,
        audience,
        subject: agent.id.to_string(),
        actors: Vec::new(),
    })
}

/// Check a presented token (subject or actor) against the kill switch.
fn not_revoked(t: &VerifiedToken, states: &AgentStates, what: &str) -> Result<(), OAuthError> {
    if let Some(j) = &t.jti {
        if states.revoked_jtis.contains_key(j) {
            return Err(OAuthError::bad(
                "invalid_grant",
                format!("the {what} was revoked"),
            ));
        }
    }
    if let Some(rt) = states.agent(&t.subject) {
        if rt.revoked_before.as_ref().is_some_and(|(b, _)| t.iat <= *b) {
            return Err(OAuthError::bad(
                "invalid_grant",
                format!("the {what} was revoked"),
            ));
        }
    }
    Ok(())
}

fn token_type_ok(t: Option<&String>) -> bool {
    matches!(
        t.map(String::as_str),
        Some(ACCESS_TOKEN_TYPE) | Some(JWT_TYPE)
    )
}

/// `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`: a token naming the principal
/// as `sub` and the acting agent (and any earlier ones) in `act`.
pub async fn token_exchange(
    snap: &Snapshot,
    ts: &TokenService,
    client: Option<&Arc<Agent>>,
    states: &AgentStates,
    params: &HashMap<String, String>,
) -> Result<Issued, OAuthError> {
    if let Some(t) = params.get("requested_token_type") {
        if t != ACCESS_TOKEN_TYPE && t != JWT_TYPE {
            return Err(OAuthError::bad(
                "invalid_request",
                format!("only `{ACCESS_TOKEN_TYPE}` tokens are issued"),
            ));
        }
    }
    let Some(subject_token) = params.get("subject_token") else {
        return Err(OAuthError::bad(
            "invalid_request",
            "`subject_token` is required",
        ));
    };
    if !token_type_ok(params.get("subject_token_type")) {
        return Err(OAuthError::bad(
            "invalid_request",
            format!("`subject_token_type` must be `{ACCESS_TOKEN_TYPE}` or `{JWT_TYPE}`"),
        ));
    }
    // Who acts: the authenticated client, or the agent its actor_token names (both: the same).
    let actor_from_token = match params.get("actor_token") {
        None => None,
        Some(t) => {
            if !token_type_ok(params.get("actor_token_type")) {
                return Err(OAuthError::bad(
                    "invalid_request",
                    format!("`actor_token_type` must be `{ACCESS_TOKEN_TYPE}` or `{JWT_TYPE}`"),
                ));
            }
            let v = snap.verifier.verify(t).await.map_err(|e| {
                OAuthError::bad("invalid_grant", format!("actor_token refused: {e}"))
            })?;
            if v.on_behalf_of.is_some() {
                return Err(OAuthError::bad(
                    "invalid_grant",
                    "actor_token must be the agent's own token, not a delegated one",
                ));
            }
            not_revoked(&v, states, "actor_token")?;
            let agent = snap.agents.get(v.subject.as_str()).ok_or_else(|| {
                OAuthError::bad(
                    "invalid_grant",
                    format!("actor_token names `{}`, not a registered agent", v.subject),
                )
            })?;
            Some(agent.clone())
        }
    };
    let actor = match (client, actor_from_token) {
        (Some(c), Some(a)) if c.id != a.id => {
            return Err(OAuthError::bad(
                "invalid_grant",
                format!("actor_token names `{}` but the client is `{}`", a.id, c.id),
            ))
        }
        (Some(c), _) => c.clone(),
        (None, Some(a)) => a,
        (None, None) => {
            return Err(OAuthError::client(
                "authenticate the client or present an actor_token: someone must act",
            ))
        }
    };
    usable(&actor, states)?;
    let Some(rule) = &actor.delegation else {
        return Err(OAuthError::bad(
            "unauthorized_client",
            format!(
                "agent `{}` may not act for anyone (no `delegation` in its registration)",
                actor.id
            ),
        ));
    };

    let subject = snap
        .verifier
        .verify(subject_token)
        .await
        .map_err(|e| OAuthError::bad("invalid_grant", format!("subject_token refused: {e}")))?;
    not_revoked(&subject, states, "subject_token")?;
    if !rule.issuers.iter().any(|i| *i == *subject.issuer) {
        return Err(OAuthError::bad(
            "invalid_grant",
            format!(
                "agent `{}` may not act on tokens from issuer `{}`; allowed: {}",
                actor.id,
                subject.issuer,
                rule.issuers.join(", ")
            ),
        ));
    }
    // The principal, and who already acts for them (nearest first).
    let (principal, earlier) = match &subject.on_behalf_of {
        Some(p) => {
            let mut chain = vec![subject.subject.clone()];
            chain.extend(subject.prior_actors.iter().cloned());
            (p.clone(), chain)
        }
        None => (subject.subject.clone(), Vec::new()),
    };
    if principal == *actor.id || earlier.iter().any(|a| *a == *actor.id) {
        return Err(OAuthError::bad(
            "invalid_grant",
            format!("agent `{}` is already in this delegation chain", actor.id),
        ));
    }
    if !rule.subjects.is_empty() && !rule.subjects.iter().any(|r| r.is_match(&principal)) {
        return Err(OAuthError::bad(
            "invalid_grant",
            format!("agent `{}` may not act for `{principal}`", actor.id),
        ));
    }
    match subject.claims.get("may_act") {
        Some(may) if may.get("sub").and_then(Value::as_str) != Some(&*actor.id) => {
            return Err(OAuthError::bad(
                "invalid_grant",
                format!("the subject token's `may_act` does not name `{}`", actor.id),
            ));
        }
        Some(_) => {}
        None if rule.require_may_act => {
            return Err(OAuthError::bad(
                "invalid_grant",
                format!(
                    "agent `{}` acts only on tokens whose `may_act` names it",
                    actor.id
                ),
            ))
        }
        None => {}
    }
    let depth = earlier.len() + 1;
    if depth > ts.max_delegation_depth {
        return Err(OAuthError::bad(
            "invalid_grant",
            format!(
                "the delegation chain would be {depth} agents deep; at most {} allowed",
                ts.max_delegation_depth
            ),
        ));
    }
    let allowed: BTreeSet<String> = subject
        .scopes
        .iter()
        .filter(|s| actor.scopes.contains(*s))
        .cloned()
        .collect();
    let scopes = narrow(
        requested_scopes(params),
        &allowed,
        &format!(
            "the subject token's scopes held by agent `{}` (the intersection)",
            actor.id
        ),
    )?;
    let audience = audience(ts, params)?;
    // Never outlive the subject token.
    let now = crate::approval::now_ms() as u64 / 1000;
    let left = subject.exp.saturating_sub(now);
    let ttl = ttl_of(ts, &actor).min(Duration::from_secs(left));
    if ttl.is_zero() {
        return Err(OAuthError::bad(
            "invalid_grant",
            "the subject token expires now",
        ));
    }
    let mut act = json!({"sub": &*actor.id});
    if subject.on_behalf_of.is_some() {
        if let Some(prev) = subject.claims.get("act") {
            act["act"] = prev.clone();
        }
    }
    let (token, jti) = sign(
        ts,
        &Claims {
            subject: &principal,
            act: Some(act),
            scopes: &scopes,
            audience: &audience,
            ttl,
            client_id: &actor.id,
        },
    )?;
    let mut actors = vec![actor.id.to_string()];
    actors.extend(earlier);
    Ok(Issued {
        token,
        jti,
        expires_in: ttl.as_secs(),
        scopes,
        audience,
        subject: principal,
        actors,
    })
}

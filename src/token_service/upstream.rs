//! Per-call upstream credentials: instead of a static secret, the upstream receives a token
//! made for this call: minted here (audience = the upstream, scopes = what the route needs
//! and the agent holds, the delegation chain, ≤ 60 s), or obtained from an external token
//! service by token exchange and cached until shortly before it expires. The agent never
//! sees either.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

use http::HeaderValue;
use serde::Deserialize;
use serde_json::Value;

use super::grants::{sign, Claims, ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE};
use crate::identity::VerifiedToken;
use crate::policy::snapshot::{Credential, CredentialSource};
use crate::policy::{Agent, Route, TokenService};

/// An external token service the gateway exchanges its per-call token at.
pub struct Exchange {
    token_url: String,
    client_id: String,
    client_secret: String,
    audience: String,
    http: reqwest::Client,
    /// Exchanged tokens by (principal, actors, scopes), with the instant to stop using them.
    cache: moka::sync::Cache<String, (HeaderValue, Instant)>,
}

impl fmt::Debug for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchange")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// How long before its expiry a cached token is no longer handed out: the call it goes with
/// must still be able to reach the upstream and be checked there.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

impl Exchange {
    /// An exchange client for one upstream.
    pub fn new(
        token_url: String,
        client_id: String,
        client_secret: String,
        audience: String,
        timeout: Duration,
    ) -> Exchange {
        Exchange {
            token_url,
            client_id,
            client_secret,
            audience,
            http: reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            cache: moka::sync::Cache::builder().max_capacity(10_000).build(),
        }
    }

    async fn fetch(
        &self,
        subject_token: &str,
        scopes: &[String],
    ) -> Result<(HeaderValue, Instant), String> {
        let form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", subject_token),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("audience", &self.audience),
            ("scope", &scopes.join(" ")),
        ];
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter())
            .finish();
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", enc(&self.client_id), enc(&self.client_secret)),
        );
        let started = Instant::now();
        let resp = self
            .http
            .post(&self.token_url)
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("token exchange at {} failed: {e}", self.token_url))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("token exchange answer unreadable: {e}"))?;
        if !status.is_success() {
            let why: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(format!(
                "token exchange refused ({status}): {} {}",
                why["error"].as_str().unwrap_or("?"),
                why["error_description"].as_str().unwrap_or("")
            ));
        }
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            expires_in: Option<u64>,
        }
        let a: Answer = serde_json::from_str(&text)
            .map_err(|e| format!("token exchange answer is not a token response: {e}"))?;
        let lifetime = Duration::from_secs(a.expires_in.unwrap_or(60));
        let usable = lifetime.saturating_sub(EXPIRY_MARGIN.min(lifetime / 4));
        let mut v = HeaderValue::from_str(&format!("Bearer {}", a.access_token))
            .map_err(|_| "the exchanged token is not a valid header value".to_string())?;
        v.set_sensitive(true);
        Ok((v, started + usable))
    }
}

/// The scopes an upstream token carries: those the route requires or accepts that the agent's
/// token holds (after narrowing to the agent's registry scopes).
fn route_scopes(route: &Route, held: &[String]) -> Vec<String> {
    let wanted: BTreeSet<&str> = route
        .scopes_all
        .iter()
        .chain(route.scopes_any.iter())
        .map(String::as_str)
        .collect();
    held.iter()
        .filter(|s| wanted.contains(s.as_str()))
        .cloned()
        .collect()
}

/// The header value for this call, or why none could be made (the call is then refused:
/// forwarding without its credential would only fail at the upstream, or worse, succeed
/// anonymously).
pub async fn value(
    cred: &Credential,
    ts: Option<&TokenService>,
    agent: &Agent,
    token: &VerifiedToken,
    route: &Route,
    held: &[String],
) -> Result<HeaderValue, String> {
    let (audience, ttl, exchange) = match &cred.source {
        CredentialSource::Static(s) => return Ok(s.0.clone()),
        CredentialSource::Mint { audience, ttl } => (audience.as_str(), *ttl, None),
        CredentialSource::Exchange(x) => (x.token_url.as_str(), Duration::from_secs(60), Some(x)),
    };
    let ts = ts.ok_or("the token service is not configured")?;
    let scopes = route_scopes(route, held);
    let subject = token.on_behalf_of.as_deref().unwrap_or(&agent.id);
    let act = token
        .on_behalf_of
        .as_ref()
        .and(token.claims.get("act").cloned());
    let key = exchange.map(|_| {
        format!(
            "{}\u{0}{}\u{0}{}",
            subject,
            act.as_ref().map(Value::to_string).unwrap_or_default(),
            scopes.join(" ")
        )
    });
    if let (Some(x), Some(key)) = (exchange, &key) {
        if let Some((v, until)) = x.cache.get(key) {
            if Instant::now() < until {
                return Ok(v);
            }
        }
    }
    // The call's own token: sent upstream as is, or presented to the external service.
    let (jwt, _) = sign(
        ts,
        &Claims {
            subject,
            act,
            scopes: &scopes,
            audience,
            ttl,
            client_id: &agent.id,
        },
    )
    .map_err(|e| e.description)?;
    if let (Some(x), Some(key)) = (exchange, key) {
        let got = x.fetch(&jwt, &scopes).await?;
        x.cache.insert(key, got.clone());
        return Ok(got.0);
    }
    let mut v = HeaderValue::from_str(&format!("Bearer {jwt}"))
        .map_err(|_| "the minted token is not a valid header value".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

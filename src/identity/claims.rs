//! Claim checks on a token whose signature has been verified: required claims, audience, time
//! window, lifetime; and extraction of the agent identity and scopes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::error::TokenError;
use super::settings::IdentitySettings;

/// The identity a verified token asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The config name of the issuer that signed it.
    pub issuer: Arc<str>,
    /// The agent: the configured subject claim (default `sub`), or, on a delegated token
    /// (RFC 8693 `act` claim), the current actor `act.sub`.
    pub subject: String,
    /// On a delegated token, the principal the agent acts for (the subject claim's value).
    pub on_behalf_of: Option<String>,
    /// On a delegated token, the earlier actors of the chain, nearest first (`act.act.sub`,
    /// ...): who passed the delegation to the current agent. Empty otherwise.
    pub prior_actors: Vec<String>,
    /// Scopes from the first present scope claim; empty when none is present.
    pub scopes: Vec<String>,
    /// The token id, when present.
    pub jti: Option<String>,
    /// Issued-at, seconds since the epoch.
    pub iat: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Approver name, when `IdentitySettings::approver_claim` is set and the token carries it
    /// (`true` → the subject, a non-empty string → that name). Only the admin API reads it.
    pub approver: Option<String>,
    /// Every claim of the token, for contextual conditions (`claim:`, CEL `token.claims`).
    /// Kept once per verified token (the cache holds the `Arc`), never per call.
    pub claims: Arc<Map<String, Value>>,
}

/// What the claim checks need to know about the issuer.
pub(crate) struct Expect<'a> {
    pub(crate) issuer_name: &'a Arc<str>,
    pub(crate) audiences: &'a [String],
}

/// Check the claims of a signature-verified token at time `now` (seconds since the epoch).
pub(crate) fn check(
    claims: &Map<String, Value>,
    expect: &Expect<'_>,
    settings: &IdentitySettings,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    let skew = settings.clock_skew.as_secs();
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| TokenError::missing("exp"))?;
    let iat = numeric_date(claims, "iat")?.ok_or_else(|| TokenError::missing("iat"))?;
    let nbf = numeric_date(claims, "nbf")?;
    let subject = subject(claims, &settings.subject_claim)?;
    let chain = actor_chain(claims)?;
    check_audience(claims, expect.audiences)?;

    if exp.saturating_add(skew) < now {
        return Err(TokenError::Expired { exp });
    }
    if let Some(nbf) = nbf {
        if nbf > now.saturating_add(skew) {
            return Err(TokenError::NotYetValid {
                claim: "nbf",
                at: nbf,
            });
        }
    }
    if iat > now.saturating_add(skew) {
        return Err(TokenError::NotYetValid {
            claim: "iat",
            at: iat,
        });
    }
    let lifetime = exp
        .checked_sub(iat)
        .ok_or_else(|| TokenError::invalid("exp", "it is earlier than `iat`"))?;
    let max = settings.max_token_ttl.as_secs();
    if lifetime > max {
        return Err(TokenError::LifetimeTooLong { lifetime, max });
    }

    let jti = match claims.get("jti") {
        None | Some(Value::Null) => None,
        Some(Value::String(j)) => Some(j.clone()),
        Some(_) => return Err(TokenError::invalid("jti", "it is not a string")),
    };
    // An agent acting for a person never votes as that person.
    let approver = settings
        .approver_claim
        .as_deref()
        .filter(|_| chain.is_empty())
        .and_then(|c| match claims.get(c) {
            Some(Value::Bool(true)) => Some(subject.clone()),
            Some(Value::String(name)) if !name.trim().is_empty() => Some(name.trim().to_string()),
            _ => None,
        });
    let (subject, on_behalf_of, prior_actors) = match chain.split_first() {
        None => (subject, None, Vec::new()),
        Some((actor, prior)) => (actor.clone(), Some(subject), prior.to_vec()),
    };
    Ok(VerifiedToken {
        issuer: expect.issuer_name.clone(),
        subject,
        on_behalf_of,
        prior_actors,
        scopes: scopes(claims, &settings.scope_claims)?,
        jti,
        iat,
        exp,
        approver,
        claims: Arc::new(claims.clone()),
    })
}

/// Seconds since the epoch, as the system clock says.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A NumericDate (RFC 7519 §2): non-negative seconds, fractions allowed and truncated.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, TokenError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let invalid = || TokenError::invalid(name, "it is not a NumericDate (seconds since 1970)");
    let Value::Number(n) = value else {
        return Err(invalid());
    };
    if let Some(secs) = n.as_u64() {
        return Ok(Some(secs));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
        _ => Err(invalid()),
    }
}

/// Longest `act` chain accepted (RFC 8693 nesting: agent acting for an agent acting for a
/// person). Deeper chains are refused rather than walked: they only arise from abuse.
pub const MAX_ACT_DEPTH: usize = 8;

/// The actors of an RFC 8693 `act` claim, current actor first: `act.sub`, `act.act.sub`, ...
/// Empty when the token has no `act`. Each level must be an object with a non-empty `sub`.
pub(crate) fn actor_chain(claims: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
    let mut chain = Vec::new();
    let mut level = claims.get("act");
    while let Some(act) = level {
        if act.is_null() && chain.is_empty() {
            break;
        }
        let Some(obj) = act.as_object() else {
            return Err(TokenError::invalid("act", "it must be an object"));
        };
        match obj.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => chain.push(s.clone()),
            _ => {
                return Err(TokenError::invalid(
                    "act",
                    "each level needs a non-empty string `sub`",
                ))
            }
        }
        if chain.len() > MAX_ACT_DEPTH {
            return Err(TokenError::invalid(
                "act",
                format!("the delegation chain is deeper than {MAX_ACT_DEPTH}"),
            ));
        }
        level = obj.get("act");
    }
    Ok(chain)
}

fn subject(claims: &Map<String, Value>, claim: &str) -> Result<String, TokenError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Err(TokenError::missing(claim)),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(TokenError::invalid(claim, "it must be a non-empty string")),
    }
}

fn check_audience(claims: &Map<String, Value>, accepted: &[String]) -> Result<(), TokenError> {
    let matches = |aud: &str| accepted.iter().any(|a| a == aud);
    let found = match claims.get("aud") {
        None | Some(Value::Null) => return Err(TokenError::missing("aud")),
        Some(Value::String(aud)) => matches(aud),
        Some(Value::Array(auds)) => {
            let mut found = false;
            for aud in auds {
                let aud = aud
                    .as_str()
                    .ok_or_else(|| TokenError::invalid("aud", "it holds a non-string value"))?;
                found |= matches(aud);
            }
            found
        }
        Some(_) => {
            return Err(TokenError::invalid(
                "aud",
                "it must be a string or an array of strings",
            ))
        }
    };
    if found {
        Ok(())
    } else {
        Err(TokenError::WrongAudience {
            expected: accepted.to_vec(),
        })
    }
}

fn scopes(claims: &Map<String, Value>, scope_claims: &[String]) -> Result<Vec<String>, TokenError> {
    let Some((name, value)) = scope_claims
        .iter()
        .find_map(|name| Some((name, claims.get(name)?)))
    else {
        return Ok(Vec::new());
    };
    match value {
        Value::String(s) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| TokenError::invalid(name, "it holds a non-string value"))
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        _ => Err(TokenError::invalid(
            name,
            "it must be a space-separated string or an array of strings",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    const NOW: u64 = 1_800_000_000;

    fn base() -> Value {
        json!({"iss": "https://idp", "aud": "gw", "sub": "agent-1", "iat": NOW - 10, "exp": NOW + 600})
    }

    fn run(claims: Value, settings: &IdentitySettings) -> Result<VerifiedToken, TokenError> {
        let name: Arc<str> = Arc::from("idp");
        let expect = Expect {
            issuer_name: &name,
            audiences: &["gw".to_owned(), "gw-alt".to_owned()],
        };
        check(claims.as_object().unwrap(), &expect, settings, NOW)
    }

    fn with(edits: &[(&str, Value)]) -> Value {
        let mut v = base();
        for (k, val) in edits {
            if val.is_null() {
                v.as_object_mut().unwrap().remove(*k);
            } else {
                v[*k] = val.clone();
            }
        }
        v
    }

    #[test]
    fn claim_refusals() {
        let s = IdentitySettings::default(); // skew 30s, max ttl 3600s
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "missing exp",
                with(&[("exp", Value::Null)]),
                "missing_claim",
            ),
            (
                "missing iat",
                with(&[("iat", Value::Null)]),
                "missing_claim",
            ),
            (
                "missing sub",
                with(&[("sub", Value::Null)]),
                "missing_claim",
            ),
            (
                "missing aud",
                with(&[("aud", Value::Null)]),
                "missing_claim",
            ),
            ("empty sub", with(&[("sub", json!(""))]), "invalid_claim"),
            ("numeric sub", with(&[("sub", json!(7))]), "invalid_claim"),
            (
                "string exp",
                with(&[("exp", json!("soon"))]),
                "invalid_claim",
            ),
            ("negative iat", with(&[("iat", json!(-1))]), "invalid_claim"),
            (
                "wrong aud",
                with(&[("aud", json!("other"))]),
                "wrong_audience",
            ),
            (
                "wrong aud list",
                with(&[("aud", json!(["a", "b"]))]),
                "wrong_audience",
            ),
            ("aud object", with(&[("aud", json!({}))]), "invalid_claim"),
            ("expired", with(&[("exp", json!(NOW - 31))]), "expired"),
            (
                "nbf future",
                with(&[("nbf", json!(NOW + 31))]),
                "not_yet_valid",
            ),
            (
                "iat future",
                with(&[("iat", json!(NOW + 31)), ("exp", json!(NOW + 90))]),
                "not_yet_valid",
            ),
            (
                "exp before iat",
                with(&[("iat", json!(NOW)), ("exp", json!(NOW - 5))]),
                "invalid_claim",
            ),
            (
                "lifetime",
                with(&[("iat", json!(NOW)), ("exp", json!(NOW + 86400))]),
                "lifetime_too_long",
            ),
            (
                "scope number",
                with(&[("scope", json!(5))]),
                "invalid_claim",
            ),
            (
                "scope list mixed",
                with(&[("scope", json!(["a", 1]))]),
                "invalid_claim",
            ),
            ("jti number", with(&[("jti", json!(5))]), "invalid_claim"),
        ];
        for (name, claims, code) in cases {
            let err = run(claims, &s).unwrap_err();
            assert_eq!(err.code(), code, "{name}: {err}");
        }
    }

    #[test]
    fn clock_skew_is_honoured_at_the_edges() {
        let s = IdentitySettings::default();
        let ok = [
            with(&[("exp", json!(NOW - 30)), ("iat", json!(NOW - 100))]),
            with(&[("nbf", json!(NOW + 30))]),
            with(&[("iat", json!(NOW + 30))]),
            with(&[("iat", json!(NOW)), ("exp", json!(NOW + 3600))]),
            with(&[("exp", json!((NOW + 60) as f64 + 0.5))]),
        ];
        for claims in ok {
            run(claims.clone(), &s).unwrap_or_else(|e| panic!("{claims}: {e}"));
        }
        let strict = IdentitySettings {
            clock_skew: Duration::ZERO,
            ..IdentitySettings::default()
        };
        let err = run(with(&[("exp", json!(NOW - 1))]), &strict).unwrap_err();
        assert_eq!(err, TokenError::Expired { exp: NOW - 1 });
    }

    #[test]
    fn identity_and_scopes_are_extracted() {
        let s = IdentitySettings {
            subject_claim: "client_id".into(),
            ..IdentitySettings::default()
        };
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (with(&[("client_id", json!("bot"))]), vec![]),
            (
                with(&[("client_id", json!("bot")), ("scope", json!("read  write"))]),
                vec!["read", "write"],
            ),
            (
                with(&[("client_id", json!("bot")), ("scp", json!(["a", "b"]))]),
                vec!["a", "b"],
            ),
            // The first present claim wins, even when a later one is also present.
            (
                with(&[
                    ("client_id", json!("bot")),
                    ("scope", json!("x")),
                    ("scp", json!(["y"])),
                ]),
                vec!["x"],
            ),
        ];
        for (claims, want) in cases {
            let t = run(claims, &s).unwrap();
            assert_eq!(t.subject, "bot");
            assert_eq!(t.scopes, want);
            assert_eq!(&*t.issuer, "idp");
            assert_eq!((t.iat, t.exp), (NOW - 10, NOW + 600));
        }
        let t = run(
            with(&[("client_id", json!("bot")), ("jti", json!("j-1"))]),
            &s,
        )
        .unwrap();
        assert_eq!(t.jti.as_deref(), Some("j-1"));
        let err = run(base(), &s).unwrap_err();
        assert_eq!(err, TokenError::missing("client_id"));
    }
}

//! Why a token was refused ([`TokenError`]) and why keys could not be loaded ([`IdentityError`]).
//!
//! `TokenError` messages are read by LLM agents: each says what went wrong and what to do, and
//! never echoes the token. Values taken from the token (alg, kid, iss) are sanitized first.

use std::time::{Duration, UNIX_EPOCH};

/// Why a presented token was refused. One variant per refusal reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was presented.
    #[error("no bearer token was presented; send `Authorization: Bearer <JWT>`")]
    MissingToken,
    /// The token is not a compact JWS with base64url JSON parts.
    #[error("the token is not a well-formed JWT ({reason}); send a signed JWT of the form header.payload.signature")]
    Malformed {
        /// What is wrong, without token content.
        reason: String,
    },
    /// The token exceeds `max_token_bytes`.
    #[error("the token is {size} bytes, above the gateway maximum of {max} bytes; request a smaller token")]
    TooLarge {
        /// Size of the presented token.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The header says `alg: none`: unsigned tokens are never accepted.
    #[error("unsigned tokens (alg `none`) are never accepted; request a signed token")]
    AlgNone,
    /// The header's algorithm is unknown or not in the issuer's allow-list.
    #[error("{}", alg_not_allowed(.alg, .allowed))]
    AlgNotAllowed {
        /// The algorithm the token names (sanitized).
        alg: String,
        /// The issuer's allow-list; empty when the issuer is not known yet.
        allowed: Vec<String>,
    },
    /// The key selected for the token is of another family than its algorithm
    /// (e.g. HS256 against an RSA key: the classic algorithm-confusion attack).
    #[error("the token's algorithm {alg} cannot be used with the issuer's {key} key; request a token signed with the issuer's normal algorithm")]
    KeyTypeMismatch {
        /// The algorithm the token names.
        alg: String,
        /// The type of key found (e.g. "RSA", "EC P-256").
        key: String,
    },
    /// No key of the issuer has the token's `kid`, even after refreshing its key set.
    #[error("no signing key with id `{kid}` is known for this issuer; request a new token")]
    UnknownKey {
        /// The `kid` from the token header (sanitized).
        kid: String,
    },
    /// The issuer's keys are not loaded (JWKS never fetched): fail closed.
    #[error("the signing keys of issuer `{issuer}` are not available yet; retry shortly")]
    KeysUnavailable {
        /// The issuer's `iss` value.
        issuer: String,
    },
    /// The signature does not verify with any candidate key.
    #[error("the token signature is invalid; request a new token from the issuer")]
    BadSignature,
    /// `exp` (plus clock skew) is in the past.
    #[error("the token expired at {}; request a new token", rfc3339(*.exp))]
    Expired {
        /// The token's `exp`, seconds since the epoch.
        exp: u64,
    },
    /// `nbf` or `iat` is in the future beyond the allowed clock skew.
    #[error("{}", not_yet_valid(.claim, *.at))]
    NotYetValid {
        /// `nbf` or `iat`.
        claim: &'static str,
        /// The claim's value, seconds since the epoch.
        at: u64,
    },
    /// The token's `iss` is not a trusted issuer.
    #[error("the token issuer `{iss}` is not trusted by this gateway; request a token from a trusted issuer")]
    WrongIssuer {
        /// The token's `iss` (sanitized).
        iss: String,
    },
    /// The token's `aud` contains none of the issuer's accepted audiences.
    #[error("the token audience does not include this gateway; request a token for audience {}", quoted_list(.expected))]
    WrongAudience {
        /// The audiences this gateway accepts for the issuer.
        expected: Vec<String>,
    },
    /// A required claim is absent.
    #[error("the token has no `{claim}` claim, which this gateway requires; request a token that includes it")]
    MissingClaim {
        /// Name of the missing claim.
        claim: String,
    },
    /// `exp - iat` exceeds `max_token_ttl`.
    #[error("token lifetime {lifetime}s exceeds the gateway maximum of {max}s; request a token with a shorter lifetime")]
    LifetimeTooLong {
        /// `exp - iat` in seconds.
        lifetime: u64,
        /// Configured maximum in seconds.
        max: u64,
    },
    /// A claim is present but has the wrong type or an impossible value.
    #[error("the token's `{claim}` claim is invalid: {reason}; request a new token")]
    InvalidClaim {
        /// Name of the claim.
        claim: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl TokenError {
    /// Stable snake_case code: part of the refusal body and a bounded metric label.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::MissingToken => "missing_token",
            TokenError::Malformed { .. } => "malformed",
            TokenError::TooLarge { .. } => "too_large",
            TokenError::AlgNone => "alg_none",
            TokenError::AlgNotAllowed { .. } => "alg_not_allowed",
            TokenError::KeyTypeMismatch { .. } => "key_type_mismatch",
            TokenError::UnknownKey { .. } => "unknown_key",
            TokenError::KeysUnavailable { .. } => "keys_unavailable",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired { .. } => "expired",
            TokenError::NotYetValid { .. } => "not_yet_valid",
            TokenError::WrongIssuer { .. } => "wrong_issuer",
            TokenError::WrongAudience { .. } => "wrong_audience",
            TokenError::MissingClaim { .. } => "missing_claim",
            TokenError::LifetimeTooLong { .. } => "lifetime_too_long",
            TokenError::InvalidClaim { .. } => "invalid_claim",
        }
    }

    /// Every value [`TokenError::code`] can return, to pre-register metric label values.
    pub fn all_codes() -> &'static [&'static str] {
        &[
            "missing_token",
            "malformed",
            "too_large",
            "alg_none",
            "alg_not_allowed",
            "key_type_mismatch",
            "unknown_key",
            "keys_unavailable",
            "bad_signature",
            "expired",
            "not_yet_valid",
            "wrong_issuer",
            "wrong_audience",
            "missing_claim",
            "lifetime_too_long",
            "invalid_claim",
        ]
    }

    pub(crate) fn malformed(reason: impl Into<String>) -> TokenError {
        TokenError::Malformed {
            reason: reason.into(),
        }
    }

    pub(crate) fn missing(claim: &str) -> TokenError {
        TokenError::MissingClaim {
            claim: claim.to_owned(),
        }
    }

    pub(crate) fn invalid(claim: &str, reason: impl Into<String>) -> TokenError {
        TokenError::InvalidClaim {
            claim: claim.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A key or issuer could not be loaded; a config error naming the issuer and the key source.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// One key source of an issuer failed to load.
    #[error("issuer `{issuer}`: key {key}: {reason}")]
    KeyLoad {
        /// Config name of the issuer.
        issuer: String,
        /// Which key source (e.g. "jwks_file /etc/keys.json"), never key material.
        key: String,
        /// Why it failed.
        reason: String,
    },
    /// An issuer as a whole is unusable (no algorithms, duplicate `iss`, ...).
    #[error("issuer `{issuer}`: {reason}")]
    Issuer {
        /// Config name of the issuer.
        issuer: String,
        /// Why it is unusable.
        reason: String,
    },
    /// Several of the above, all gathered before failing.
    #[error("{}", join_lines(.0))]
    Several(Vec<IdentityError>),
    /// A signing key for `token issue` could not be read or generated.
    #[error("signing key: {0}")]
    SigningKey(String),
    /// A token could not be issued.
    #[error("cannot issue token: {0}")]
    Issue(String),
}

impl IdentityError {
    /// Collapse gathered errors: `Ok` for none, the error itself for one, `Several` otherwise.
    pub(crate) fn from_many(mut errors: Vec<IdentityError>) -> Result<(), IdentityError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(IdentityError::Several(errors)),
        }
    }
}

/// Make a token-supplied string safe to show: bounded length, printable ASCII only, no quotes
/// (it lands inside JSON bodies and log lines, and must not carry control sequences).
pub(crate) fn sanitize(value: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = value
        .chars()
        .take(MAX)
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '`' | '"' | '\\') {
                c
            } else {
                '?'
            }
        })
        .collect();
    if value.chars().count() > MAX {
        out.push_str("...");
    }
    out
}

/// `2026-11-22T10:00:00Z` for a NumericDate.
pub(crate) fn rfc3339(secs: u64) -> String {
    match UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => format!("{secs} (seconds since 1970)"),
    }
}

fn alg_not_allowed(alg: &str, allowed: &[String]) -> String {
    if allowed.is_empty() {
        format!("signing algorithm `{alg}` is not supported; request a token signed with ES256, ES384, RS256, PS256 or EdDSA")
    } else {
        format!(
            "signing algorithm `{alg}` is not accepted for this issuer; request a token signed with one of: {}",
            allowed.join(", ")
        )
    }
}

fn not_yet_valid(claim: &str, at: u64) -> String {
    if claim == "iat" {
        format!(
            "the token claims to be issued in the future ({}); check the issuer's clock and request a new token",
            rfc3339(at)
        )
    } else {
        format!(
            "the token is not valid before {}; retry after that time or request a new token",
            rfc3339(at)
        )
    }
}

fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(" or ")
}

fn join_lines(errors: &[IdentityError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_of_each() -> Vec<TokenError> {
        vec![
            TokenError::MissingToken,
            TokenError::malformed("x"),
            TokenError::TooLarge { size: 9, max: 8 },
            TokenError::AlgNone,
            TokenError::AlgNotAllowed {
                alg: "HS256".into(),
                allowed: vec![],
            },
            TokenError::KeyTypeMismatch {
                alg: "HS256".into(),
                key: "RSA".into(),
            },
            TokenError::UnknownKey { kid: "k".into() },
            TokenError::KeysUnavailable { issuer: "i".into() },
            TokenError::BadSignature,
            TokenError::Expired { exp: 0 },
            TokenError::NotYetValid {
                claim: "nbf",
                at: 0,
            },
            TokenError::WrongIssuer { iss: "i".into() },
            TokenError::WrongAudience { expected: vec![] },
            TokenError::missing("sub"),
            TokenError::LifetimeTooLong {
                lifetime: 2,
                max: 1,
            },
            TokenError::invalid("exp", "x"),
        ]
    }

    #[test]
    fn all_codes_lists_every_variant_once() {
        let codes: Vec<&str> = one_of_each().iter().map(|e| e.code()).collect();
        assert_eq!(codes, TokenError::all_codes());
    }

    #[test]
    fn messages_tell_the_agent_what_to_do() {
        let cases = [
            (
                TokenError::Expired { exp: 1_795_341_600 },
                "the token expired at 2026-11-22T10:00:00Z; request a new token",
            ),
            (
                TokenError::LifetimeTooLong {
                    lifetime: 86400,
                    max: 3600,
                },
                "token lifetime 86400s exceeds the gateway maximum of 3600s; request a token with a shorter lifetime",
            ),
            (
                TokenError::WrongAudience {
                    expected: vec!["gw".into(), "gw2".into()],
                },
                "the token audience does not include this gateway; request a token for audience `gw` or `gw2`",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn sanitize_bounds_and_cleans_token_supplied_text() {
        assert_eq!(sanitize("kid-1"), "kid-1");
        assert_eq!(sanitize("a\"b`c\n"), "a?b?c?");
        let long = "x".repeat(100);
        assert_eq!(sanitize(&long), format!("{}...", "x".repeat(64)));
    }

    #[test]
    fn several_errors_are_shown_one_per_line() {
        let e = IdentityError::from_many(vec![
            IdentityError::Issuer {
                issuer: "a".into(),
                reason: "r1".into(),
            },
            IdentityError::Issuer {
                issuer: "b".into(),
                reason: "r2".into(),
            },
        ])
        .unwrap_err();
        assert_eq!(e.to_string(), "issuer `a`: r1\nissuer `b`: r2");
    }
}

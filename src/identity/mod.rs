//! Identity: who is calling. Verifies the agent's JWT against the trusted issuers of the
//! current config snapshot and yields a [`VerifiedToken`] or a [`TokenError`] saying why not.
//!
//! - [`Verifier`]: immutable, one per config snapshot; order of checks in `verify.rs`.
//! - [`KeyStore`]: process-wide, owns the JWKS URL fetchers, survives reloads (`jwks.rs`).
//! - keys and the key-family check against algorithm confusion: `keys.rs`.
//! - claims (aud, exp, nbf, iat, lifetime, subject, scopes): `claims.rs`.
//! - verified-token cache: `cache.rs`; tokens the gateway signs itself: `issue.rs`.

mod cache;
mod claims;
mod error;
mod issue;
mod jwks;
pub mod keyring;
mod keys;
mod pem;
mod settings;
mod token;
mod verify;

#[cfg(test)]
mod jwks_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod verify_tests;

pub use claims::{VerifiedToken, MAX_ACT_DEPTH};
pub use error::{IdentityError, TokenError};
pub use issue::{generate_signing_key, issue_token, new_jti, signing_key_jwk, SigningKey};
pub use jwks::{JwksEvent, JwksEventSink, JwksOutcome, JwksStatus, KeyStore};
pub use settings::{
    IdentitySettings, IssuerConfig, KeySource, DEFAULT_JWKS_MIN_REFETCH_INTERVAL,
    DEFAULT_JWKS_REFRESH_INTERVAL, DEFAULT_JWKS_TIMEOUT,
};
pub use verify::Verifier;

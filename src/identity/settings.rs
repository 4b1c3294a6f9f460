//! Compiled identity configuration: global settings and trusted issuers.
//!
//! These are the internal types the config layer compiles `gateway.yaml` into; they carry no
//! serde attributes on purpose (the raw YAML structs live in `config/`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;

/// Default background refresh period of a JWKS URL.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Default minimum spacing of on-demand JWKS refetches triggered by an unknown `kid`.
pub const DEFAULT_JWKS_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Default timeout of one JWKS HTTP fetch.
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Global identity settings, from the `identity:` section of `gateway.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    /// Leeway for `exp`, and for `nbf`/`iat` in the future (clocks are never perfectly in sync).
    pub clock_skew: Duration,
    /// Tokens whose `exp - iat` exceeds this are refused: long-lived bearer tokens are a liability.
    pub max_token_ttl: Duration,
    /// Tokens longer than this are refused before any parsing (bounds decode work per request).
    pub max_token_bytes: usize,
    /// The claim that names the agent; required.
    pub subject_claim: String,
    /// Claims holding scopes, in order of preference; the first present wins.
    /// A string value is space-separated, an array value is a list of strings.
    pub scope_claims: Vec<String>,
    /// How many verified tokens the cache holds.
    pub cache_capacity: u64,
    /// Claim marking a person allowed to approve held calls (`approvals.jwt_approvers.claim`).
    pub approver_claim: Option<String>,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        IdentitySettings {
            clock_skew: Duration::from_secs(30),
            max_token_ttl: Duration::from_secs(3600),
            max_token_bytes: 8192,
            subject_claim: "sub".to_owned(),
            scope_claims: vec!["scope".to_owned(), "scp".to_owned()],
            cache_capacity: 10_000,
            approver_claim: None,
        }
    }
}

/// One trusted token issuer, already validated by the config layer.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerConfig {
    /// The config name of the issuer, used in logs and metric labels.
    pub name: String,
    /// The exact `iss` value its tokens carry.
    pub issuer: String,
    /// The token's `aud` (string or array) must contain at least one of these.
    pub audiences: Vec<String>,
    /// Explicit allow-list of signing algorithms; HS* only when the config enabled it.
    pub algorithms: Vec<Algorithm>,
    /// Where the issuer's verification keys come from.
    pub keys: Vec<KeySource>,
}

/// Where verification keys come from.
#[derive(Clone, PartialEq)]
pub enum KeySource {
    /// A public key PEM (`PUBLIC KEY` for RSA/EC/Ed25519, or `RSA PUBLIC KEY`).
    Pem {
        /// The PEM text.
        pem: String,
        /// Key id matched against the token header's `kid`, if any.
        kid: Option<String>,
    },
    /// One inline JWK (a JSON object).
    Jwk(serde_json::Value),
    /// A local JWKS document (`{"keys": [...]}`), read once per config load.
    JwksFile(PathBuf),
    /// A remote JWKS document, fetched and refreshed in the background by the [`KeyStore`].
    ///
    /// [`KeyStore`]: crate::identity::KeyStore
    JwksUrl {
        /// `https://` (or, for tests and local IdPs, `http://`) URL of the JWKS.
        url: String,
        /// Background refresh period.
        refresh_interval: Duration,
        /// Minimum spacing of refetches triggered by an unknown `kid`.
        min_refetch_interval: Duration,
        /// Timeout of one fetch; also bounds how long a request waits for a refetch.
        timeout: Duration,
    },
    /// The gateway's own ES256 PKCS#8 private key: its public half verifies tokens that
    /// `portcullis token issue` signs with it.
    SigningKeyFile {
        /// Path of the `PRIVATE KEY` PEM file.
        path: PathBuf,
        /// Key id put in issued tokens and matched on verification.
        kid: String,
    },
    /// A shared HMAC secret; only valid when the issuer's algorithms contain HS256/384/512.
    HmacSecret {
        /// The raw secret bytes (at least 32).
        secret: Vec<u8>,
        /// Key id matched against the token header's `kid`, if any.
        kid: Option<String>,
    },
}

impl KeySource {
    /// A JWKS URL source with the default refresh, refetch and timeout intervals.
    pub fn jwks_url(url: impl Into<String>) -> KeySource {
        KeySource::JwksUrl {
            url: url.into(),
            refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
            min_refetch_interval: DEFAULT_JWKS_MIN_REFETCH_INTERVAL,
            timeout: DEFAULT_JWKS_TIMEOUT,
        }
    }

    /// A short description for error messages; never includes key material.
    pub(crate) fn describe(&self) -> String {
        let kid = |k: &Option<String>| match k {
            Some(k) => format!(" kid `{k}`"),
            None => String::new(),
        };
        match self {
            KeySource::Pem { kid: k, .. } => format!("pem{}", kid(k)),
            KeySource::Jwk(v) => match v.get("kid").and_then(|k| k.as_str()) {
                Some(k) => format!("jwk kid `{k}`"),
                None => "jwk".to_owned(),
            },
            KeySource::JwksFile(p) => format!("jwks_file {}", p.display()),
            KeySource::JwksUrl { url, .. } => format!("jwks_url {url}"),
            KeySource::SigningKeyFile { path, kid } => {
                format!("signing_key_file {} kid `{kid}`", path.display())
            }
            KeySource::HmacSecret { kid: k, .. } => format!("hmac_secret{}", kid(k)),
        }
    }
}

// Hand-written so that an HMAC secret can never reach a log line through `{:?}`.
impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::HmacSecret { secret, kid } => f
                .debug_struct("HmacSecret")
                .field("secret", &format_args!("[{} bytes redacted]", secret.len()))
                .field("kid", kid)
                .finish(),
            KeySource::Pem { pem, kid } => f
                .debug_struct("Pem")
                .field("pem", &format_args!("[{} chars]", pem.len()))
                .field("kid", kid)
                .finish(),
            // Only kty and kid: a pasted private or symmetric JWK must not leak either.
            KeySource::Jwk(v) => f
                .debug_struct("Jwk")
                .field("kty", &v.get("kty"))
                .field("kid", &v.get("kid"))
                .finish(),
            KeySource::JwksFile(p) => f.debug_tuple("JwksFile").field(p).finish(),
            KeySource::JwksUrl {
                url,
                refresh_interval,
                min_refetch_interval,
                timeout,
            } => f
                .debug_struct("JwksUrl")
                .field("url", url)
                .field("refresh_interval", refresh_interval)
                .field("min_refetch_interval", min_refetch_interval)
                .field("timeout", timeout)
                .finish(),
            KeySource::SigningKeyFile { path, kid } => f
                .debug_struct("SigningKeyFile")
                .field("path", path)
                .field("kid", kid)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let s = IdentitySettings::default();
        assert_eq!(s.clock_skew, Duration::from_secs(30));
        assert_eq!(s.max_token_ttl, Duration::from_secs(3600));
        assert_eq!(s.max_token_bytes, 8192);
        assert_eq!(s.subject_claim, "sub");
        assert_eq!(s.scope_claims, ["scope", "scp"]);
        assert_eq!(s.cache_capacity, 10_000);
    }

    #[test]
    fn debug_never_prints_hmac_secrets() {
        let k = KeySource::HmacSecret {
            secret: b"super-secret-value-that-must-not-leak".to_vec(),
            kid: None,
        };
        let shown = format!("{k:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}

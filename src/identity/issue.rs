//! Tokens the gateway signs itself (`portcullis token issue`), with its own ES256 key.

use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::claims::now_unix;
use super::error::IdentityError;
use super::keys;
use super::pem;

/// Sign an ES256 token with claims `iss aud sub scope iat nbf exp jti`.
///
/// The token is issued `backdate` ago: `iat = nbf = now - backdate` and `exp = iat + ttl`, so
/// the lifetime is exactly `ttl`, and a `backdate` longer than `ttl` (plus the verifier's clock
/// skew) yields an already-expired token, which is how expiry handling is demonstrated and tested. `scope` is space-separated and omitted
/// when `scopes` is empty. `jti` is `extra_jti` or a random UUID-shaped id.
// The argument list is the CLI's contract; a builder would only restate it.
#[allow(clippy::too_many_arguments)]
pub fn issue_token(
    signing_key_pem: &[u8],
    kid: &str,
    iss: &str,
    aud: &str,
    sub: &str,
    scopes: &[String],
    ttl: Duration,
    backdate: Duration,
    extra_jti: Option<String>,
) -> Result<String, IdentityError> {
    for (name, value) in [("kid", kid), ("iss", iss), ("aud", aud), ("sub", sub)] {
        if value.is_empty() {
            return Err(IdentityError::Issue(format!("`{name}` must not be empty")));
        }
    }
    if ttl.as_secs() == 0 {
        return Err(IdentityError::Issue("the ttl must be at least 1s".into()));
    }
    let key = EncodingKey::from_ec_pem(signing_key_pem)
        .map_err(|e| IdentityError::SigningKey(format!("not an ES256 PKCS#8 private key: {e}")))?;
    let issued = now_unix().saturating_sub(backdate.as_secs());
    let mut claims = json!({
        "iss": iss,
        "aud": aud,
        "sub": sub,
        "iat": issued,
        "nbf": issued,
        "exp": issued.saturating_add(ttl.as_secs()),
        "jti": match extra_jti {
            Some(jti) => jti,
            None => random_jti()?,
        },
    });
    if !scopes.is_empty() {
        claims["scope"] = Value::String(scopes.join(" "));
    }
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    // A P-384 key parses as EC too; ES256 signing refuses it here.
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| IdentityError::SigningKey(format!("cannot sign with this key as ES256: {e}")))
}

/// A parsed ES256 signing key and its `kid`: what the token service signs with, parsed once
/// per config load rather than per token.
#[derive(Clone)]
pub struct SigningKey {
    /// `kid` of the tokens it signs.
    pub kid: String,
    key: std::sync::Arc<EncodingKey>,
    /// Its public JWK, as published.
    pub jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// Parse a PKCS#8 ES256 private key PEM.
    pub fn from_pem(pem: &[u8], kid: &str) -> Result<SigningKey, IdentityError> {
        let key = EncodingKey::from_ec_pem(pem).map_err(|e| {
            IdentityError::SigningKey(format!("not an ES256 PKCS#8 private key: {e}"))
        })?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            key: std::sync::Arc::new(key),
            jwk: signing_key_jwk(pem, kid)?,
        })
    }

    /// Sign `claims` as an ES256 JWT with this key's `kid` (and `typ`, e.g. `at+jwt` for
    /// access tokens per RFC 9068, when given).
    pub fn sign(&self, claims: &Value, typ: Option<&str>) -> Result<String, IdentityError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        if let Some(t) = typ {
            header.typ = Some(t.to_owned());
        }
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| IdentityError::SigningKey(format!("cannot sign as ES256: {e}")))
    }
}

/// A new random token id (128 bits, UUIDv4-shaped).
pub fn new_jti() -> Result<String, IdentityError> {
    random_jti()
}

/// A new ES256 (P-256) private key as a PKCS#8 `PRIVATE KEY` PEM.
pub fn generate_signing_key() -> Result<String, IdentityError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|e| IdentityError::SigningKey(format!("key generation failed: {e}")))?;
    Ok(pem::encode("PRIVATE KEY", pkcs8.as_ref()))
}

/// The public JWK of an ES256 signing key, for publishing it to other verifiers.
pub fn signing_key_jwk(signing_key_pem: &[u8], kid: &str) -> Result<Value, IdentityError> {
    let text = std::str::from_utf8(signing_key_pem)
        .map_err(|_| IdentityError::SigningKey("the PEM is not UTF-8".into()))?;
    let point = keys::signing_key_public_point(text).map_err(IdentityError::SigningKey)?;
    let (x, y) = point[1..].split_at(32);
    Ok(json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(x),
        "y": URL_SAFE_NO_PAD.encode(y),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    }))
}

/// 128 random bits shaped as a UUIDv4 (`8-4-4-4-12` hex).
pub(crate) fn random_jti() -> Result<String, IdentityError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| IdentityError::Issue("the system random generator failed".into()))?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_support::{fixture, fixture_path, verifier_for, ISS};
    use crate::identity::{IdentitySettings, KeySource};

    fn scopes(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    /// A verifier trusting the ES256 fixture key as a signing-key file (kid `gw-1`).
    fn signing_file_verifier() -> crate::identity::Verifier {
        verifier_for(
            vec![KeySource::SigningKeyFile {
                path: fixture_path("es256.key.pem"),
                kid: "gw-1".into(),
            }],
            vec![Algorithm::ES256],
            IdentitySettings::default(),
        )
    }

    /// A token for `agent-7` signed with the fixture key.
    fn fixture_token(scope: &[&str], ttl: u64, backdate: u64, jti: Option<&str>) -> String {
        issue_token(
            fixture("es256.key.pem").as_bytes(),
            "gw-1",
            ISS,
            "gw",
            "agent-7",
            &scopes(scope),
            Duration::from_secs(ttl),
            Duration::from_secs(backdate),
            jti.map(str::to_string),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn issued_tokens_verify_against_the_signing_key_file() {
        let verifier = signing_file_verifier();
        let token = fixture_token(&["read", "write"], 600, 5, Some("fixed-jti"));
        let t = verifier.verify(&token).await.unwrap();
        assert_eq!(t.subject, "agent-7");
        assert_eq!(t.scopes, ["read", "write"]);
        assert_eq!(t.jti.as_deref(), Some("fixed-jti"));
        assert_eq!(t.exp - t.iat, 600);
        // Issued 5s ago.
        let now = now_unix();
        assert!(
            (now - 6..=now - 4).contains(&t.iat),
            "iat {} vs now {now}",
            t.iat
        );

        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (Algorithm::ES256, Some("gw-1"))
        );
    }

    #[tokio::test]
    async fn a_token_backdated_past_its_lifetime_is_refused_as_expired() {
        let verifier = signing_file_verifier();
        let token = fixture_token(&["read"], 300, 3600, None);
        let err = verifier.verify(&token).await.unwrap_err();
        assert_eq!(err.code(), "expired", "{err}");
    }

    #[tokio::test]
    async fn a_generated_key_signs_and_its_jwk_verifies() {
        let pem = generate_signing_key().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let jwk = signing_key_jwk(pem.as_bytes(), "fresh").unwrap();
        let verifier = verifier_for(
            vec![KeySource::Jwk(jwk)],
            vec![Algorithm::ES256],
            IdentitySettings::default(),
        );
        let token = issue_token(
            pem.as_bytes(),
            "fresh",
            ISS,
            "gw",
            "a",
            &[],
            Duration::from_secs(60),
            Duration::ZERO,
            None,
        )
        .unwrap();
        let t = verifier.verify(&token).await.unwrap();
        assert!(t.scopes.is_empty());
        let jti = t.jti.clone().unwrap();
        assert_eq!(jti.len(), 36);
        assert_eq!(&jti[14..15], "4");
    }

    #[test]
    fn bad_inputs_are_refused() {
        let es256 = fixture("es256.key.pem");
        let es384 = fixture("es384.key.pem");
        let rsa = fixture("rs256.key.pem");
        let day = Duration::from_secs(86400);
        let cases: Vec<(&str, &str, Duration)> = vec![
            (es256.as_str(), "", day),
            (es256.as_str(), "sub", Duration::ZERO),
            (es384.as_str(), "sub", day),
            (rsa.as_str(), "sub", day),
            ("not a pem", "sub", day),
        ];
        for (pem, sub, ttl) in cases {
            let r = issue_token(
                pem.as_bytes(),
                "k",
                ISS,
                "gw",
                sub,
                &[],
                ttl,
                Duration::ZERO,
                None,
            );
            assert!(r.is_err(), "{sub:?} {ttl:?}");
        }
        assert!(signing_key_jwk(rsa.as_bytes(), "k").is_err());
    }
}

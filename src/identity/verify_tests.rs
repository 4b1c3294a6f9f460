//! Table-driven tests of [`Verifier`] with real tokens signed by the fixture keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm::{self, *};
use serde_json::{json, Value};

use super::claims::now_unix;
use super::test_support::*;
use super::{IdentityError, IdentitySettings, KeySource, TokenError, Verifier};

fn pem(file: &str, kid: &str) -> KeySource {
    KeySource::Pem {
        pem: fixture(file),
        kid: Some(kid.into()),
    }
}

fn all_four_pems() -> Vec<KeySource> {
    vec![
        pem("es256.pub.pem", "es256-test"),
        pem("es384.pub.pem", "es384-test"),
        pem("rs256.pub.pem", "rs256-test"),
        pem("ed25519.pub.pem", "ed25519-test"),
    ]
}

const ASYMMETRIC: [Algorithm; 5] = [ES256, ES384, RS256, PS256, EdDSA];

/// The standard test claims with some claims replaced (`Null` removes).
fn claims_with(edits: &[(&str, Value)]) -> Value {
    let mut c = claims();
    for (k, v) in edits {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(*k);
        } else {
            c[*k] = v.clone();
        }
    }
    c
}

fn es256(c: &Value) -> String {
    sign(ES256, "es256.key.pem", Some("es256-test"), c)
}

/// `alg: none`, crafted by hand: no library will produce it.
fn unsigned_token() -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    format!("{header}.{payload}.")
}

/// A valid token whose payload is swapped for another after signing.
fn tampered_token() -> String {
    let good = es256(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(claims_with(&[("sub", json!("admin"))]).to_string());
    format!("{}.{}.{}", parts[0], forged, parts[2])
}

#[tokio::test]
async fn accepted_algorithms() {
    let v = verifier_for(
        all_four_pems(),
        ASYMMETRIC.to_vec(),
        IdentitySettings::default(),
    );
    let c = claims();
    let cases = [
        (
            "ES256",
            sign(ES256, "es256.key.pem", Some("es256-test"), &c),
        ),
        (
            "ES384",
            sign(ES384, "es384.key.pem", Some("es384-test"), &c),
        ),
        (
            "RS256",
            sign(RS256, "rs256.key.pem", Some("rs256-test"), &c),
        ),
        (
            "PS256",
            sign(PS256, "rs256.key.pem", Some("rs256-test"), &c),
        ),
        (
            "EdDSA",
            sign(EdDSA, "ed25519.key.pem", Some("ed25519-test"), &c),
        ),
        // Without a kid, every key of the right family is tried.
        ("ES256 no kid", sign(ES256, "es256.key.pem", None, &c)),
        ("EdDSA no kid", sign(EdDSA, "ed25519.key.pem", None, &c)),
    ];
    for (name, token) in cases {
        let t = v
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.subject, "agent-1", "{name}");
        assert_eq!(t.scopes, ["tools:read", "tools:write"], "{name}");
        assert_eq!(&*t.issuer, "idp", "{name}");
    }
}

#[tokio::test]
async fn refusals() {
    let v = verifier_for(
        all_four_pems(),
        ASYMMETRIC.to_vec(),
        IdentitySettings::default(),
    );
    let now = now_unix();
    let rsa_public_pem = fixture("rs256.pub.pem");
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", String::new(), "missing_token"),
        ("too large, not even a JWT", "x".repeat(8193), "too_large"),
        ("garbage", "not-a-jwt".into(), "malformed"),
        ("alg none", unsigned_token(), "alg_none"),
        (
            "HS256 made with the RSA public PEM, HS256 not allowed",
            sign_hmac(
                HS256,
                rsa_public_pem.as_bytes(),
                Some("rs256-test"),
                &claims(),
            ),
            "alg_not_allowed",
        ),
        (
            "RS384 not in the allow-list",
            sign(RS384, "rs256.key.pem", Some("rs256-test"), &claims()),
            "alg_not_allowed",
        ),
        (
            "ES256 against the P-384 key",
            sign(ES256, "es256.key.pem", Some("es384-test"), &claims()),
            "key_type_mismatch",
        ),
        (
            "RS256 against the Ed25519 key",
            sign(RS256, "rs256.key.pem", Some("ed25519-test"), &claims()),
            "key_type_mismatch",
        ),
        (
            "unknown kid",
            sign(ES256, "es256.key.pem", Some("nope"), &claims()),
            "unknown_key",
        ),
        (
            "signed by another key under a known kid",
            sign(
                ES256,
                "es256-rotated.key.pem",
                Some("es256-test"),
                &claims(),
            ),
            "bad_signature",
        ),
        (
            "signed by another key, no kid",
            sign(ES256, "es256-rotated.key.pem", None, &claims()),
            "bad_signature",
        ),
        (
            "payload swapped after signing",
            tampered_token(),
            "bad_signature",
        ),
        (
            "expired",
            es256(&claims_with(&[
                ("iat", json!(now - 200)),
                ("exp", json!(now - 100)),
            ])),
            "expired",
        ),
        (
            "nbf in the future",
            es256(&claims_with(&[("nbf", json!(now + 100))])),
            "not_yet_valid",
        ),
        (
            "iat in the future",
            es256(&claims_with(&[("iat", json!(now + 100))])),
            "not_yet_valid",
        ),
        (
            "untrusted issuer",
            es256(&claims_with(&[("iss", json!("https://evil.test"))])),
            "wrong_issuer",
        ),
        (
            "no issuer",
            es256(&claims_with(&[("iss", Value::Null)])),
            "missing_claim",
        ),
        (
            "wrong audience",
            es256(&claims_with(&[("aud", json!("other"))])),
            "wrong_audience",
        ),
        (
            "no sub",
            es256(&claims_with(&[("sub", Value::Null)])),
            "missing_claim",
        ),
        (
            "no exp",
            es256(&claims_with(&[("exp", Value::Null)])),
            "missing_claim",
        ),
        (
            "no iat",
            es256(&claims_with(&[("iat", Value::Null)])),
            "missing_claim",
        ),
        (
            "lifetime above the maximum",
            es256(&claims_with(&[
                ("iat", json!(now)),
                ("exp", json!(now + 7200)),
            ])),
            "lifetime_too_long",
        ),
        (
            "scope of the wrong type",
            es256(&claims_with(&[("scope", json!(42))])),
            "invalid_claim",
        ),
    ];
    for (name, token, code) in cases {
        let err = v.verify(&token).await.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {err}");
        // Messages never echo the token.
        if token.len() > 20 {
            assert!(!err.to_string().contains(&token), "{name}");
        }
    }
}

#[tokio::test]
async fn size_limit_is_checked_before_parsing() {
    let settings = IdentitySettings {
        max_token_bytes: 100,
        ..IdentitySettings::default()
    };
    let v = verifier_for(all_four_pems(), ASYMMETRIC.to_vec(), settings);
    // A real, valid token is refused on size alone.
    let token = es256(&claims());
    let err = v.verify(&token).await.unwrap_err();
    assert_eq!(
        err,
        TokenError::TooLarge {
            size: token.len(),
            max: 100
        }
    );
    assert_eq!(v.signature_checks(), 0);
}

/// The classic confusion: the attacker signs HS256 with the issuer's RSA public PEM as the
/// secret. Even when the issuer (wrongly) allows HS256 too, an RSA key never verifies HMAC.
#[tokio::test]
async fn hs256_signed_with_the_rsa_public_pem_is_refused() {
    let rsa_public_pem = fixture("rs256.pub.pem");
    let forged_kid = sign_hmac(
        HS256,
        rsa_public_pem.as_bytes(),
        Some("rs256-test"),
        &claims(),
    );
    let forged = sign_hmac(HS256, rsa_public_pem.as_bytes(), None, &claims());

    let rsa_only = verifier_for(
        vec![pem("rs256.pub.pem", "rs256-test")],
        vec![RS256, HS256],
        IdentitySettings::default(),
    );
    for token in [&forged_kid, &forged] {
        let err = rsa_only.verify(token).await.unwrap_err();
        assert_eq!(
            err,
            TokenError::KeyTypeMismatch {
                alg: "HS256".into(),
                key: "RSA".into()
            }
        );
    }
    assert_eq!(rsa_only.signature_checks(), 0, "no HMAC was ever computed");

    // With a real HMAC secret configured as well, the forgery meets only that secret.
    let mixed = verifier_for(
        vec![
            pem("rs256.pub.pem", "rs256-test"),
            KeySource::HmacSecret {
                secret: vec![42; 32],
                kid: Some("shared".into()),
            },
        ],
        vec![RS256, HS256],
        IdentitySettings::default(),
    );
    assert_eq!(
        mixed.verify(&forged_kid).await.unwrap_err().code(),
        "key_type_mismatch"
    );
    assert_eq!(
        mixed.verify(&forged).await.unwrap_err().code(),
        "bad_signature"
    );
    let genuine = sign_hmac(HS256, &[42; 32], Some("shared"), &claims());
    assert!(mixed.verify(&genuine).await.is_ok());
}

#[tokio::test]
async fn hs256_works_when_configured() {
    let v = verifier_for(
        vec![KeySource::HmacSecret {
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
            kid: None,
        }],
        vec![HS256],
        IdentitySettings::default(),
    );
    let good = sign_hmac(HS256, b"0123456789abcdef0123456789abcdef", None, &claims());
    assert!(v.verify(&good).await.is_ok());
    let bad = sign_hmac(HS256, b"another-secret-another-secret-xx", None, &claims());
    assert_eq!(v.verify(&bad).await.unwrap_err(), TokenError::BadSignature);
    let es = es256(&claims());
    assert_eq!(v.verify(&es).await.unwrap_err().code(), "alg_not_allowed");
}

#[tokio::test]
async fn other_key_sources_verify() {
    let c = claims();
    let cases: Vec<(KeySource, String)> = vec![
        (
            KeySource::JwksFile(fixture_path("jwks.json")),
            sign(EdDSA, "ed25519.key.pem", Some("ed25519-test"), &c),
        ),
        (
            KeySource::Jwk(fixture_jwk("rs256-test")),
            sign(RS256, "rs256.key.pem", Some("rs256-test"), &c),
        ),
        (
            KeySource::Jwk(fixture_jwk("es384-test")),
            sign(ES384, "es384.key.pem", Some("es384-test"), &c),
        ),
        // A PEM without a kid trusts any kid.
        (
            KeySource::Pem {
                pem: fixture("es256.pub.pem"),
                kid: None,
            },
            sign(ES256, "es256.key.pem", Some("whatever"), &c),
        ),
    ];
    for (source, token) in cases {
        let name = format!("{source:?}");
        let v = verifier_for(
            vec![source],
            ASYMMETRIC.to_vec(),
            IdentitySettings::default(),
        );
        v.verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(v.is_ready());
    }
}

#[tokio::test]
async fn a_jwk_that_pins_its_alg_verifies_only_that_alg() {
    // The fixture JWK says `"alg": "RS256"`: a PS256 token under its kid is refused.
    let v = verifier_for(
        vec![KeySource::Jwk(fixture_jwk("rs256-test"))],
        ASYMMETRIC.to_vec(),
        IdentitySettings::default(),
    );
    let ps256 = sign(PS256, "rs256.key.pem", Some("rs256-test"), &claims());
    assert_eq!(
        v.verify(&ps256).await.unwrap_err(),
        TokenError::KeyTypeMismatch {
            alg: "PS256".into(),
            key: "RSA (RS256 only)".into()
        }
    );
}

#[tokio::test]
async fn a_cache_hit_skips_the_signature_and_still_expires() {
    let t0 = now_unix();
    let clock = Arc::new(AtomicU64::new(t0));
    let tick = clock.clone();
    let v = verifier_with_clock(
        all_four_pems(),
        ASYMMETRIC.to_vec(),
        IdentitySettings::default(), // 30s skew
        Arc::new(move || tick.load(Ordering::SeqCst)),
    );
    let token = es256(&claims_with(&[("iat", json!(t0)), ("exp", json!(t0 + 60))]));

    let first = v.verify(&token).await.unwrap();
    let second = v.verify(&token).await.unwrap();
    assert!(Arc::ptr_eq(&first, &second), "served from the cache");
    assert_eq!(v.signature_checks(), 1);

    // Still inside exp + skew: served.
    clock.store(t0 + 90, Ordering::SeqCst);
    assert!(v.verify(&token).await.is_ok());
    // Past exp + skew: refused, without touching the signature again.
    clock.store(t0 + 91, Ordering::SeqCst);
    let err = v.verify(&token).await.unwrap_err();
    assert_eq!(err, TokenError::Expired { exp: t0 + 60 });
    assert_eq!(v.signature_checks(), 1);
    // And on the next attempt, now evicted, the full check refuses it too.
    assert_eq!(v.verify(&token).await.unwrap_err().code(), "expired");
}

#[tokio::test]
async fn refusals_are_not_cached() {
    let v = verifier_for(
        all_four_pems(),
        ASYMMETRIC.to_vec(),
        IdentitySettings::default(),
    );
    let bad = sign(
        ES256,
        "es256-rotated.key.pem",
        Some("es256-test"),
        &claims(),
    );
    for _ in 0..2 {
        assert_eq!(v.verify(&bad).await.unwrap_err(), TokenError::BadSignature);
    }
    assert_eq!(v.signature_checks(), 2);
}

#[test]
fn config_errors_name_the_issuer_and_the_key() {
    let cases: Vec<(Vec<KeySource>, Vec<Algorithm>, &str)> = vec![
        (
            vec![KeySource::HmacSecret {
                secret: vec![1; 32],
                kid: None,
            }],
            vec![ES256],
            "issuer `idp`: key #1 (hmac_secret): an HMAC secret needs HS256",
        ),
        (
            vec![pem("es256.key.pem", "k")],
            vec![ES256],
            "issuer `idp`: key #1 (pem kid `k`): this is a private key",
        ),
        (
            vec![pem("es384.pub.pem", "k")],
            vec![ES256],
            "this EC P-384 key cannot verify any of the issuer's algorithms (ES256)",
        ),
        (
            vec![KeySource::JwksFile("/nonexistent/jwks.json".into())],
            vec![ES256],
            "key #1 (jwks_file /nonexistent/jwks.json): cannot read",
        ),
        (
            vec![KeySource::JwksFile(fixture_path("jwks.json"))],
            vec![HS256],
            "no key in it can verify HS256",
        ),
        (
            vec![KeySource::jwks_url("ftp://idp.test/jwks")],
            vec![ES256],
            "must be https://",
        ),
        (
            vec![KeySource::JwksUrl {
                url: "https://idp.test/jwks".into(),
                refresh_interval: Duration::ZERO,
                min_refetch_interval: Duration::ZERO,
                timeout: Duration::from_secs(1),
            }],
            vec![ES256],
            "refresh_interval and timeout must be above zero",
        ),
        (
            vec![KeySource::SigningKeyFile {
                path: fixture_path("rs256.key.pem"),
                kid: "gw".into(),
            }],
            vec![ES256],
            "not an EC P-256 (ES256) private key",
        ),
        (vec![], vec![ES256], "issuer `idp`: no keys are configured"),
        (
            vec![pem("es256.pub.pem", "k")],
            vec![],
            "issuer `idp`: no algorithms are allowed",
        ),
    ];
    for (keys, algorithms, want) in cases {
        let err = Verifier::new(
            vec![issuer(keys, algorithms)],
            IdentitySettings::default(),
            store(),
        )
        .unwrap_err();
        assert!(err.to_string().contains(want), "want {want:?}, got: {err}");
    }
}

#[test]
fn every_config_error_is_gathered() {
    let mut second = issuer(vec![pem("es256.pub.pem", "k")], vec![ES256]);
    second.name = "dup".into();
    let err = Verifier::new(
        vec![
            issuer(
                vec![pem("es256.key.pem", "a"), pem("rs256.key.pem", "b")],
                vec![ES256],
            ),
            issuer(vec![pem("es256.pub.pem", "k")], vec![ES256]),
            second,
        ],
        IdentitySettings::default(),
        store(),
    )
    .unwrap_err();
    let IdentityError::Several(errors) = &err else {
        panic!("expected several errors: {err}");
    };
    assert_eq!(errors.len(), 3, "{err}");
    assert!(err
        .to_string()
        .contains("issuer `dup`: another issuer already trusts iss"));
}

#[test]
fn verifier_is_shareable_and_its_future_is_send() {
    // pingora's ProxyHttp futures must be Send; the verifier lives in an Arc across threads.
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let v = verifier_for(
        all_four_pems(),
        ASYMMETRIC.to_vec(),
        IdentitySettings::default(),
    );
    send_sync(&v);
    send_sync(&*store());
    send(&v.verify("token"));
}

#[tokio::test]
async fn unknown_kid_with_static_keys_never_waits() {
    // Static-key issuers are ready at once and never wait on the network.
    let v = verifier_for(
        all_four_pems(),
        ASYMMETRIC.to_vec(),
        IdentitySettings::default(),
    );
    assert!(v.is_ready());
    let started = std::time::Instant::now();
    let _ = v
        .verify(&sign(ES256, "es256.key.pem", Some("nope"), &claims()))
        .await;
    assert!(started.elapsed() < Duration::from_millis(500));
}

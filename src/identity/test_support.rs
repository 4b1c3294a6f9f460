//! Test helpers: the committed test-only keys under `tests/fixtures/keys`, real token signing
//! with jsonwebtoken, and ready-made verifiers.

use std::path::PathBuf;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::cache::Clock;
use super::claims::now_unix;
use super::{IdentitySettings, IssuerConfig, JwksEvent, KeySource, KeyStore, Verifier};

/// The `iss` of the test issuer.
pub(crate) const ISS: &str = "https://idp.test";
/// The audience the test issuer accepts.
pub(crate) const AUD: &str = "gw";

pub(crate) fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

pub(crate) fn fixture(name: &str) -> String {
    let path = fixture_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A store whose events go nowhere.
pub(crate) fn store() -> Arc<KeyStore> {
    KeyStore::new(Arc::new(|_: JwksEvent| {}))
}

/// One issuer `idp` with `ISS`, audience `AUD`, the given keys and algorithms.
pub(crate) fn issuer(keys: Vec<KeySource>, algorithms: Vec<Algorithm>) -> IssuerConfig {
    IssuerConfig {
        name: "idp".into(),
        issuer: ISS.into(),
        audiences: vec![AUD.into()],
        algorithms,
        keys,
    }
}

pub(crate) fn verifier_for(
    keys: Vec<KeySource>,
    algorithms: Vec<Algorithm>,
    settings: IdentitySettings,
) -> Verifier {
    Verifier::new(vec![issuer(keys, algorithms)], settings, store()).unwrap()
}

/// Like [`verifier_for`], with a clock the test controls.
pub(crate) fn verifier_with_clock(
    keys: Vec<KeySource>,
    algorithms: Vec<Algorithm>,
    settings: IdentitySettings,
    clock: Clock,
) -> Verifier {
    Verifier::with_clock(vec![issuer(keys, algorithms)], settings, store(), clock).unwrap()
}

/// Valid claims for the test issuer at `now`: 10 minutes left.
pub(crate) fn claims_at(now: u64) -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "agent-1",
        "iat": now - 10,
        "exp": now + 600,
        "scope": "tools:read tools:write",
    })
}

pub(crate) fn claims() -> Value {
    claims_at(now_unix())
}

/// Sign `claims` with the fixture private key `key_file`.
pub(crate) fn sign(alg: Algorithm, key_file: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = fixture(key_file);
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .unwrap();
    encode(alg, kid, claims, &key)
}

/// Sign `claims` with an HMAC secret (also used to forge tokens with public key bytes).
pub(crate) fn sign_hmac(
    alg: Algorithm,
    secret: &[u8],
    kid: Option<&str>,
    claims: &Value,
) -> String {
    encode(alg, kid, claims, &EncodingKey::from_secret(secret))
}

fn encode(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// The fixture JWK with this kid, from `jwks.json` or `jwks-rotated.json`.
pub(crate) fn fixture_jwk(kid: &str) -> Value {
    for file in ["jwks.json", "jwks-rotated.json"] {
        let doc: Value = serde_json::from_str(&fixture(file)).unwrap();
        if let Some(k) = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
        {
            return k.clone();
        }
    }
    panic!("no fixture JWK {kid}")
}

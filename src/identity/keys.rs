//! Verification keys: decoded once at load time from PEM, JWK, JWKS, our own signing key or an
//! HMAC secret, each tagged with its [`KeyKind`].
//!
//! The kind is ours, not the token's: a key only ever verifies algorithms of its own family, so a
//! token that says `HS256` can never turn an RSA public key into an HMAC secret (the classic
//! algorithm-confusion attack).

use std::fmt;

use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, KeyPair, ParsedPublicKey};
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::pem;

/// Base64url as found in JWKs: unpadded per RFC 7517, but some IdPs pad; accept both.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// RSA keys below 2048 bits are refused (and aws-lc-rs would refuse to verify with them).
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// HMAC secrets shorter than the HS256 output size are guessable.
const MIN_HMAC_SECRET_BYTES: usize = 32;

/// The type of a key, which decides the only algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Hmac,
}

impl KeyKind {
    /// Whether a key of this kind may verify `alg`.
    pub(crate) fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
            KeyKind::Hmac => matches!(alg, HS256 | HS384 | HS512),
        }
    }

    /// Human label for messages.
    pub(crate) fn label(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RSA",
            KeyKind::EcP256 => "EC P-256",
            KeyKind::EcP384 => "EC P-384",
            KeyKind::Ed25519 => "Ed25519",
            KeyKind::Hmac => "HMAC",
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    /// Matched against the token header's `kid`.
    pub(crate) kid: Option<String>,
    pub(crate) kind: KeyKind,
    /// The JWK's `alg`, when the key pins one algorithm.
    pub(crate) alg: Option<Algorithm>,
    key: DecodingKey,
    /// SHA-256 of the key material, to tell whether a refreshed key set still holds this key.
    fingerprint: [u8; 32],
}

// Hand-written: key material (HMAC secrets above all) never goes to logs.
impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.accepts(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }

    /// "RSA", or "RSA (RS256 only)" when a JWK pins the algorithm; for messages.
    pub(crate) fn describe(&self) -> String {
        match self.alg {
            Some(alg) => format!("{} ({alg:?} only)", self.kind.label()),
            None => self.kind.label().to_owned(),
        }
    }

    /// Verify `signature` (base64url) over `signing_input` (`header.payload`).
    pub(crate) fn verify(&self, alg: Algorithm, signing_input: &str, signature: &str) -> bool {
        // Callers select keys by `accepts` already; checked again here so that no code path can
        // ever hand an asymmetric key to an HMAC verifier.
        if !self.accepts(alg) {
            return false;
        }
        matches!(
            jsonwebtoken::crypto::verify(signature, signing_input.as_bytes(), &self.key, alg),
            Ok(true)
        )
    }
}

/// A public key PEM: `PUBLIC KEY` (SPKI: RSA, EC P-256/P-384, Ed25519) or `RSA PUBLIC KEY`.
pub(crate) fn from_public_pem(text: &str, kid: Option<String>) -> Result<VerifyKey, String> {
    let block = pem::decode(text)?;
    match block.label.as_str() {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
        label if label.contains("PRIVATE") => {
            return Err(format!(
            "this is a private key (`{label}`); configure its public half (`openssl pkey -pubout`)"
        ))
        }
        label => {
            return Err(format!(
                "unsupported PEM block `{label}`; expected `PUBLIC KEY`"
            ))
        }
    }
    let bytes = text.as_bytes();
    // jsonwebtoken classifies SPKI by its algorithm OID, so at most one of these succeeds.
    if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        let point = key.try_get_as_bytes().map_err(|e| e.to_string())?;
        let kind = match point.len() {
            65 => KeyKind::EcP256,
            97 => KeyKind::EcP384,
            _ => return Err("unsupported EC curve; only P-256 and P-384 are supported".into()),
        };
        check_ec_point(kind, point)?;
        let material = point.to_vec();
        return Ok(VerifyKey::new(kid, kind, None, key, &material));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        let raw = key.try_get_as_bytes().map_err(|e| e.to_string())?.to_vec();
        check_ed25519(&raw)?;
        return Ok(VerifyKey::new(kid, KeyKind::Ed25519, None, key, &raw));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        let der = key.try_get_as_bytes().map_err(|e| e.to_string())?.to_vec();
        check_rsa_der(&der)?;
        return Ok(VerifyKey::new(kid, KeyKind::Rsa, None, key, &der));
    }
    Err("not an RSA, EC (P-256/P-384) or Ed25519 public key".into())
}

/// One JWK (RFC 7517). Symmetric (`oct`) JWKs are refused: HMAC secrets are configured
/// explicitly, never discovered.
pub(crate) fn from_jwk(jwk: &Value) -> Result<VerifyKey, String> {
    let obj = jwk.as_object().ok_or("a JWK must be a JSON object")?;
    let field = |name: &str| -> Result<Option<&str>, String> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("`{name}` is not a string")),
        }
    };
    let required = |name: &str| -> Result<Vec<u8>, String> {
        let text = field(name)?.ok_or_else(|| format!("missing `{name}`"))?;
        B64URL
            .decode(text)
            .map_err(|_| format!("`{name}` is not base64url"))
    };
    if let Some(usage) = field("use")? {
        if usage != "sig" {
            return Err(format!("`use` is `{usage}`, not `sig`"));
        }
    }
    let kid = field("kid")?.map(str::to_owned);
    let alg = match field("alg")? {
        None => None,
        Some(a) => Some(
            a.parse::<Algorithm>()
                .map_err(|_| format!("unsupported `alg` `{a}`"))?,
        ),
    };
    let (kind, key, material) = match field("kty")? {
        Some("RSA") => {
            let n = required("n")?;
            let e = required("e")?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return Err("RSA keys shorter than 2048 bits are not accepted".into());
            }
            let key = DecodingKey::from_rsa_raw_components(&n, &e);
            // Length-prefixed, so that no other (n, e) split gives the same bytes.
            let material = [&(n.len() as u64).to_be_bytes()[..], &n, &e].concat();
            (KeyKind::Rsa, key, material)
        }
        Some("EC") => {
            let (kind, size) = match field("crv")? {
                Some("P-256") => (KeyKind::EcP256, 32),
                Some("P-384") => (KeyKind::EcP384, 48),
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let (x, y) = (required("x")?, required("y")?);
            if x.len() != size || y.len() != size {
                return Err(format!("`x` and `y` must be {size} bytes for this curve"));
            }
            let point = [&[0x04][..], &x, &y].concat();
            check_ec_point(kind, &point)?;
            (kind, DecodingKey::from_ec_der(&point), point)
        }
        Some("OKP") => {
            if field("crv")? != Some("Ed25519") {
                return Err("only the Ed25519 curve is supported for `OKP` keys".into());
            }
            let x = required("x")?;
            check_ed25519(&x)?;
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x), x)
        }
        Some("oct") => {
            return Err("symmetric (`oct`) JWKs are not accepted; configure an hmac_secret".into())
        }
        Some(other) => return Err(format!("unsupported key type `{other}`")),
        None => return Err("missing `kty`".into()),
    };
    if let Some(a) = alg {
        if !kind.accepts(a) {
            return Err(format!(
                "its `alg` {a:?} does not fit its key type {}",
                kind.label()
            ));
        }
    }
    Ok(VerifyKey::new(kid, kind, alg, key, &material))
}

/// A JWKS document. Entries that cannot be used (encryption keys, unsupported kty/alg/curve)
/// are skipped with a warning: IdPs publish such keys alongside signing keys.
pub(crate) fn parse_jwks(body: &[u8], origin: &str) -> Result<Vec<VerifyKey>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JWKS document (no `keys` array)")?;
    let mut keys = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        match from_jwk(entry) {
            Ok(key) => keys.push(key),
            Err(reason) => tracing::warn!(
                jwks = origin,
                index,
                kid = ?entry.get("kid"),
                %reason,
                "skipping unusable JWKS entry"
            ),
        }
    }
    Ok(keys)
}

/// The public half of our own ES256 PKCS#8 signing key.
pub(crate) fn from_signing_key_pem(text: &str, kid: &str) -> Result<VerifyKey, String> {
    let point = signing_key_public_point(text)?;
    Ok(VerifyKey::new(
        Some(kid.to_owned()),
        KeyKind::EcP256,
        Some(Algorithm::ES256),
        DecodingKey::from_ec_der(&point),
        &point,
    ))
}

/// The uncompressed public point (`04 || x || y`) of an ES256 PKCS#8 `PRIVATE KEY` PEM.
pub(crate) fn signing_key_public_point(text: &str) -> Result<Vec<u8>, String> {
    let block = pem::decode(text)?;
    if block.label != "PRIVATE KEY" {
        return Err(format!(
            "expected a PKCS#8 `PRIVATE KEY` PEM, found `{}`",
            block.label
        ));
    }
    let pair = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &block.der)
        .map_err(|e| format!("not an EC P-256 (ES256) private key: {e}"))?;
    Ok(pair.public_key().as_ref().to_vec())
}

/// A shared HMAC secret.
pub(crate) fn from_hmac_secret(secret: &[u8], kid: Option<String>) -> Result<VerifyKey, String> {
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(format!(
            "HMAC secrets must be at least {MIN_HMAC_SECRET_BYTES} bytes, this one has {}",
            secret.len()
        ));
    }
    Ok(VerifyKey::new(
        kid,
        KeyKind::Hmac,
        None,
        DecodingKey::from_secret(secret),
        secret,
    ))
}

impl VerifyKey {
    /// `material` is the key's public bytes (the secret, for HMAC); only its digest is kept.
    fn new(
        kid: Option<String>,
        kind: KeyKind,
        alg: Option<Algorithm>,
        key: DecodingKey,
        material: &[u8],
    ) -> Self {
        VerifyKey {
            kid,
            kind,
            alg,
            key,
            fingerprint: Sha256::digest(material).into(),
        }
    }

    /// Whether `other` is this very key: same kid, kind, pinned algorithm and key material. A
    /// JWKS refresh that keeps every key this way changes nothing for tokens already verified.
    pub(crate) fn same_key(&self, other: &VerifyKey) -> bool {
        self.kid == other.kid
            && self.kind == other.kind
            && self.alg == other.alg
            && self.fingerprint == other.fingerprint
    }
}

// Parse with aws-lc-rs once at load time so that a bad key is a config error, not a stream of
// "bad signature" refusals later.
fn check_ec_point(kind: KeyKind, point: &[u8]) -> Result<(), String> {
    let alg = match kind {
        KeyKind::EcP384 => &sig::ECDSA_P384_SHA384_FIXED,
        _ => &sig::ECDSA_P256_SHA256_FIXED,
    };
    ParsedPublicKey::new(alg, point)
        .map(drop)
        .map_err(|e| format!("invalid {} public key: {e}", kind.label()))
}

fn check_ed25519(raw: &[u8]) -> Result<(), String> {
    if raw.len() != 32 {
        return Err("an Ed25519 public key is 32 bytes".into());
    }
    ParsedPublicKey::new(&sig::ED25519, raw)
        .map(drop)
        .map_err(|e| format!("invalid Ed25519 public key: {e}"))
}

fn check_rsa_der(der: &[u8]) -> Result<(), String> {
    let key = aws_lc_rs::rsa::PublicKey::from_der(der)
        .map_err(|e| format!("invalid RSA public key: {e}"))?;
    if key.modulus_len() < MIN_RSA_MODULUS_BYTES {
        return Err("RSA keys shorter than 2048 bits are not accepted".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_support::{fixture, fixture_path};
    use serde_json::json;

    #[test]
    fn public_pems_load_with_their_kind() {
        let cases = [
            ("es256.pub.pem", KeyKind::EcP256),
            ("es384.pub.pem", KeyKind::EcP384),
            ("rs256.pub.pem", KeyKind::Rsa),
            ("ed25519.pub.pem", KeyKind::Ed25519),
        ];
        for (file, kind) in cases {
            let key = from_public_pem(&fixture(file), Some("k".into())).unwrap();
            assert_eq!(key.kind, kind, "{file}");
            assert_eq!(key.kid.as_deref(), Some("k"));
        }
    }

    #[test]
    fn bad_pems_are_refused_with_a_reason() {
        let cases = [
            (fixture("es256.key.pem"), "private key"),
            ("hello".to_owned(), "not a PEM"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
                "expected `PUBLIC KEY`",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_owned(),
                "not an RSA",
            ),
        ];
        for (pem, want) in cases {
            let err = from_public_pem(&pem, None).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn the_fixture_jwks_loads_every_key() {
        let body = std::fs::read(fixture_path("jwks.json")).unwrap();
        let keys = parse_jwks(&body, "fixture").unwrap();
        let kinds: Vec<_> = keys
            .iter()
            .map(|k| (k.kid.clone().unwrap(), k.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("es256-test".to_owned(), KeyKind::EcP256),
                ("es384-test".to_owned(), KeyKind::EcP384),
                ("rs256-test".to_owned(), KeyKind::Rsa),
                ("ed25519-test".to_owned(), KeyKind::Ed25519),
            ]
        );
    }

    #[test]
    fn unusable_jwks_entries_are_skipped_not_fatal() {
        let es = serde_json::from_str::<Value>(&fixture("jwks.json")).unwrap()["keys"][0].clone();
        let mut enc = es.clone();
        enc["use"] = json!("enc");
        let mut bad_alg = es.clone();
        bad_alg["alg"] = json!("RS256");
        let mut wrong_curve = es.clone();
        wrong_curve["crv"] = json!("P-521");
        let doc = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "short-rsa"},
            {"kty": "OKP", "crv": "X25519", "x": "AAAA"},
            {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
            {"kty": "ML-DSA", "kid": "pq"},
            {"kty": "EC", "crv": "P-256", "alg": "ES999", "x": "", "y": ""},
            enc, bad_alg, wrong_curve, "not-an-object", es,
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes(), "test").unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("es256-test"));
        assert!(parse_jwks(b"{}", "test").is_err());
        assert!(parse_jwks(b"nope", "test").is_err());
    }

    #[test]
    fn each_kind_accepts_only_its_own_algorithms() {
        use Algorithm::*;
        let all = [
            HS256, HS384, HS512, ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA,
        ];
        let cases = [
            (KeyKind::Rsa, vec![RS256, RS384, RS512, PS256, PS384, PS512]),
            (KeyKind::EcP256, vec![ES256]),
            (KeyKind::EcP384, vec![ES384]),
            (KeyKind::Ed25519, vec![EdDSA]),
            (KeyKind::Hmac, vec![HS256, HS384, HS512]),
        ];
        for (kind, accepted) in cases {
            for alg in all {
                assert_eq!(
                    kind.accepts(alg),
                    accepted.contains(&alg),
                    "{kind:?} {alg:?}"
                );
            }
        }
    }

    #[test]
    fn signing_key_and_hmac_secret_load() {
        let key = from_signing_key_pem(&fixture("es256.key.pem"), "gw").unwrap();
        assert_eq!(key.kind, KeyKind::EcP256);
        assert!(from_signing_key_pem(&fixture("es384.key.pem"), "gw").is_err());
        assert!(from_signing_key_pem(&fixture("es256.pub.pem"), "gw").is_err());
        assert!(from_hmac_secret(&[7; 32], None).is_ok());
        assert!(from_hmac_secret(b"short", None)
            .unwrap_err()
            .contains("at least 32 bytes"));
    }
}

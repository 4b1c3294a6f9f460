//! Splitting and decoding a compact JWS *without trust*: only to learn which issuer, algorithm
//! and key to verify with. Nothing read here is believed before the signature checks out.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::error::{sanitize, TokenError};

/// A decoded, not yet verified token.
#[derive(Debug)]
pub(crate) struct RawToken<'a> {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    pub(crate) claims: Map<String, Value>,
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'a str,
    /// The base64url signature part.
    pub(crate) signature: &'a str,
}

/// Split and decode `token`. Refuses `alg: none` (any case) and algorithm names we do not know
/// before anything else looks at the token.
pub(crate) fn parse(token: &str) -> Result<RawToken<'_>, TokenError> {
    let mut parts = token.split('.');
    let (header, payload, signature) =
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(p), Some(s), None) => (h, p, s),
            _ => return Err(TokenError::malformed("expected three dot-separated parts")),
        };
    let signing_input = &token[..header.len() + 1 + payload.len()];
    let header = decode_object(header, "header")?;

    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg,
        Some(_) => return Err(TokenError::malformed("the header `alg` is not a string")),
        None => return Err(TokenError::malformed("the header has no `alg`")),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::AlgNone);
    }
    let alg: Algorithm = alg.parse().map_err(|_| TokenError::AlgNotAllowed {
        alg: sanitize(alg),
        allowed: Vec::new(),
    })?;
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; we understand none.
    if header.contains_key("crit") {
        return Err(TokenError::malformed(
            "the header lists `crit` extensions, which this gateway does not support",
        ));
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::malformed("the header `kid` is not a string")),
    };
    let claims = decode_object(payload, "payload")?;
    Ok(RawToken {
        alg,
        kid,
        claims,
        signing_input,
        signature,
    })
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::malformed(format!("the {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TokenError::malformed(format!(
            "the {what} is not a JSON object"
        ))),
        Err(_) => Err(TokenError::malformed(format!("the {what} is not JSON"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(payload))
    }

    #[test]
    fn refusals_before_any_key_is_touched() {
        let ok_payload = r#"{"iss":"i"}"#;
        let cases: Vec<(String, &str)> = vec![
            ("a.b".into(), "malformed"),
            ("a.b.c.d".into(), "malformed"),
            (format!("!!.{}.x", b64(ok_payload)), "malformed"),
            (token("[1]", ok_payload), "malformed"),
            (token("{}", ok_payload), "malformed"),
            (token(r#"{"alg":5}"#, ok_payload), "malformed"),
            (token(r#"{"alg":"none"}"#, ok_payload), "alg_none"),
            (token(r#"{"alg":"NoNe"}"#, ok_payload), "alg_none"),
            (token(r#"{"alg":"HS999"}"#, ok_payload), "alg_not_allowed"),
            (
                token(r#"{"alg":"ES256","crit":["b64"]}"#, ok_payload),
                "malformed",
            ),
            (token(r#"{"alg":"ES256","kid":1}"#, ok_payload), "malformed"),
            (token(r#"{"alg":"ES256"}"#, "not json"), "malformed"),
            (token(r#"{"alg":"ES256"}"#, "\"str\""), "malformed"),
        ];
        for (input, code) in cases {
            let err = parse(&input).unwrap_err();
            assert_eq!(err.code(), code, "{input}: {err}");
        }
    }

    #[test]
    fn a_well_formed_token_yields_its_parts() {
        let t = token(r#"{"alg":"ES256","kid":"k1"}"#, r#"{"iss":"i"}"#);
        let raw = parse(&t).unwrap();
        assert_eq!(raw.alg, Algorithm::ES256);
        assert_eq!(raw.kid.as_deref(), Some("k1"));
        assert_eq!(raw.claims["iss"], "i");
        assert_eq!(raw.signature, "c2ln");
        assert_eq!(format!("{}.c2ln", raw.signing_input), t);
    }
}

//! Header hygiene: what an agent sends that the gateway must not pass on, and what the gateway
//! asserts to upstreams.

use http::header::{HeaderName, AUTHORIZATION, HOST};
use pingora::http::RequestHeader;

/// Prefix of every header the gateway asserts to upstreams. Client-sent copies are deleted.
pub const OWNED_PREFIX: &str = "x-portcullis-";
/// Request id header, set by the gateway only.
pub const REQUEST_ID: &str = "x-request-id";

/// The bearer token, if the request carries exactly one well-formed `Authorization: Bearer`.
///
/// Several Authorization headers are refused as missing rather than guessing which one counts.
pub fn bearer(req: &RequestHeader) -> Result<&str, BearerProblem> {
    let mut it = req.headers.get_all(AUTHORIZATION).iter();
    let Some(v) = it.next() else {
        return Err(BearerProblem::Missing);
    };
    if it.next().is_some() {
        return Err(BearerProblem::Ambiguous);
    }
    let v = v.to_str().map_err(|_| BearerProblem::NotBearer)?;
    let (scheme, token) = v.split_once(' ').ok_or(BearerProblem::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerProblem::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(BearerProblem::Missing);
    }
    Ok(token)
}

/// Why no bearer token could be taken from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerProblem {
    /// No Authorization header or an empty token.
    Missing,
    /// Authorization is not `Bearer <token>`.
    NotBearer,
    /// More than one Authorization header.
    Ambiguous,
}

/// Host of the request, lowercase, without port: Host header (HTTP/1.1) or URI authority (h2).
pub fn request_host(req: &RequestHeader) -> Option<String> {
    let raw = req
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// Remove every header an agent must not be able to pass to an upstream: its own token, any
/// copy of the headers the gateway asserts, and the credential header the gateway injects.
pub fn strip_client_assertions(req: &mut RequestHeader, credential_header: Option<&HeaderName>) {
    let owned: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with(OWNED_PREFIX))
        .cloned()
        .collect();
    for k in owned {
        req.remove_header(&k);
    }
    req.remove_header(&AUTHORIZATION);
    req.remove_header("proxy-authorization");
    req.remove_header(REQUEST_ID);
    req.remove_header("forwarded");
    if let Some(h) = credential_header {
        req.remove_header(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer(&req(&[("authorization", "Bearer abc")])), Ok("abc"));
        assert_eq!(
            bearer(&req(&[("authorization", "bearer  abc ")])),
            Ok("abc")
        );
        assert_eq!(bearer(&req(&[])), Err(BearerProblem::Missing));
        assert_eq!(
            bearer(&req(&[("authorization", "Bearer ")])),
            Err(BearerProblem::Missing)
        );
        assert_eq!(
            bearer(&req(&[("authorization", "Basic dXNlcg==")])),
            Err(BearerProblem::NotBearer)
        );
        assert_eq!(
            bearer(&req(&[
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b")
            ])),
            Err(BearerProblem::Ambiguous)
        );
    }

    #[test]
    fn host_is_lowercased_without_port() {
        assert_eq!(
            request_host(&req(&[("host", "Tools.Internal:8080")])).as_deref(),
            Some("tools.internal")
        );
        assert_eq!(
            request_host(&req(&[("host", "[::1]:8080")])).as_deref(),
            Some("::1")
        );
        assert_eq!(
            request_host(&req(&[("host", "a.example.")])).as_deref(),
            Some("a.example")
        );
        assert_eq!(request_host(&req(&[])), None);
    }

    #[test]
    fn strips_everything_the_gateway_asserts() {
        let mut r = req(&[
            ("authorization", "Bearer agent-token"),
            ("x-portcullis-agent", "admin"),
            ("X-Portcullis-Owner", "ceo"),
            ("x-request-id", "spoofed"),
            ("x-api-key", "agent-supplied"),
            ("forwarded", "for=1.2.3.4"),
            ("accept", "application/json"),
        ]);
        strip_client_assertions(&mut r, Some(&HeaderName::from_static("x-api-key")));
        let left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }
}

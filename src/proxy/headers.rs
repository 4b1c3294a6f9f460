//! Header hygiene: what an agent sends that the gateway must not pass on, and what the gateway
//! asserts to upstreams.

use crate::policy::{Agent, NormalizedPath, Upstream};
use http::header::{HeaderName, AUTHORIZATION, HOST};
use pingora::http::RequestHeader;
use std::net::IpAddr;

/// Prefix of every header the gateway asserts to upstreams. Client-sent copies are deleted.
pub const OWNED_PREFIX: &str = "x-portcullis-";
/// Request id header, set by the gateway only.
pub const REQUEST_ID: &str = "x-request-id";
/// The calling agent's id.
pub static AGENT: HeaderName = HeaderName::from_static("x-portcullis-agent");
/// The agent's human owner.
pub static OWNER: HeaderName = HeaderName::from_static("x-portcullis-owner");
/// The route that allowed the call.
pub static ROUTE: HeaderName = HeaderName::from_static("x-portcullis-route");
/// Effective scopes, space-separated.
pub static SCOPES: HeaderName = HeaderName::from_static("x-portcullis-scopes");
static X_REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

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

/// Everything the gateway asserts about a forwarded call.
pub struct Forwarding<'a> {
    /// Where it goes.
    pub upstream: &'a Upstream,
    /// Who calls.
    pub agent: &'a Agent,
    /// The route that allowed it.
    pub route: &'a str,
    /// Effective scopes, space-separated.
    pub scopes: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// The agent's address.
    pub client_ip: Option<IpAddr>,
    /// The normalized path the route matched.
    pub path: &'a NormalizedPath,
    /// The query string, passed through unchanged.
    pub query: Option<&'a str>,
}

/// Turn the agent's request header into the upstream's: strip what the agent may not assert,
/// set exactly the path the route matched, add identity headers and the upstream credential.
/// Both the streaming proxy path and the approval executor use this, so they cannot drift.
pub fn prepare_upstream_request(
    req: &mut RequestHeader,
    f: &Forwarding<'_>,
) -> pingora::Result<()> {
    use pingora::{Error, ErrorType};
    let up = f.upstream;
    strip_client_assertions(req, up.credential.as_ref().map(|c| &c.header));

    // The upstream sees exactly the path the route matched (plus the upstream's base path).
    let mut target = String::with_capacity(up.base_path.len() + f.path.as_str().len() + 32);
    target.push_str(&up.base_path);
    target.push_str(f.path.as_str());
    if let Some(q) = f.query {
        target.push('?');
        target.push_str(q);
    }
    let uri = target
        .parse::<http::Uri>()
        .map_err(|e| Error::because(ErrorType::InternalError, "building upstream URI", e))?;
    req.set_uri(uri);
    req.insert_header(HOST, up.authority.as_str())?;

    // Static names: this runs on every forwarded call.
    req.insert_header(AGENT.clone(), &*f.agent.id)?;
    req.insert_header(OWNER.clone(), &*f.agent.owner)?;
    req.insert_header(ROUTE.clone(), f.route)?;
    req.insert_header(SCOPES.clone(), f.scopes)?;
    req.insert_header(X_REQUEST_ID.clone(), f.request_id)?;

    // Append, never trust: the client's X-Forwarded-For is passed on but decides nothing.
    if let Some(ip) = f.client_ip {
        let xff = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        req.insert_header(X_FORWARDED_FOR.clone(), xff)?;
    }
    if let Some(c) = &up.credential {
        req.insert_header(c.header.clone(), c.value.0.clone())?;
    }
    Ok(())
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

//! Header hygiene: what an agent sends that the gateway must not pass on, and what the gateway
//! asserts to upstreams.

use crate::policy::{Agent, NormalizedPath, Upstream};
use http::header::{HeaderName, AUTHORIZATION, FORWARDED, HOST, PROXY_AUTHORIZATION};
use pingora::http::RequestHeader;
use smallvec::SmallVec;
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

// The same names as `&'static str`, for inserting into a pingora request header: pingora keeps
// each header's on-the-wire case beside the map, and a `&'static str` name becomes that case
// without a copy, where a `HeaderName` of a non-standard header is copied into a new buffer
// on every insert (five allocations per forwarded call, counted with callgrind).
const AGENT_NAME: &str = "x-portcullis-agent";
const OWNER_NAME: &str = "x-portcullis-owner";
const ROUTE_NAME: &str = "x-portcullis-route";
const SCOPES_NAME: &str = "x-portcullis-scopes";
const X_FORWARDED_FOR_NAME: &str = "x-forwarded-for";

/// Request headers that change the method or target an upstream acts on (the method-override
/// family honoured by Express, Spring, ASP.NET, Google APIs; the URL-rewrite family honoured by
/// IIS and some PHP and Java frameworks). The gateway decided on the method and path it saw,
/// so a call carrying one is refused (400 `forbidden_header`), on every upstream.
/// Upstreams add names with `refuse_headers`.
pub const DEFAULT_REFUSED_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
];

/// Client-supplied forwarding headers that upstreams use to build URLs, pick a tenant or trust
/// a client address. The agent is not a proxy, so its copies are removed before forwarding
/// (`X-Forwarded-For` is kept and appended to, and decides nothing in the gateway).
/// Upstreams add names with `strip_headers`.
pub const DEFAULT_STRIPPED_HEADERS: &[&str] = &[
    "x-forwarded-host",
    "x-forwarded-prefix",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-original-host",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
];

/// The first request header that `refused` lists, if any.
///
/// Walks the request's few headers once rather than hashing every refused name: agent calls
/// carry a handful of headers, so this costs a few short comparisons per call.
pub fn refused_header<'a>(
    req: &RequestHeader,
    refused: &'a [HeaderName],
) -> Option<&'a HeaderName> {
    req.headers
        .keys()
        .find_map(|k| refused.iter().find(|r| *r == k))
}

/// Whether the query string carries a `_method` parameter, the method override Laravel, Rails
/// (via Rack) and Symfony honour. The name is compared the way those frameworks read it:
/// percent-decoded, `+` as space, case-insensitively, and with PHP's mangling of ` `, `.` and
/// `[` into `_`.
pub fn has_method_override_param(query: &str) -> bool {
    // Cheap pre-check for the common case: neither the plain name nor any encoding in sight.
    let names_method = query
        .as_bytes()
        .windows(6)
        .any(|w| w.eq_ignore_ascii_case(b"method"));
    if !names_method && !query.contains('%') {
        return false;
    }
    query.split([';', '&']).any(|pair| {
        let name = pair.split('=').next().unwrap_or(pair);
        form_urlencoded::parse(name.as_bytes())
            .next()
            .is_some_and(|(n, _)| {
                let n: String = n
                    .chars()
                    .map(|c| if matches!(c, ' ' | '.' | '[') { '_' } else { c })
                    .collect();
                n.eq_ignore_ascii_case("_method")
            })
    })
}

/// The protocol a request asks to switch to: the `Upgrade` header's value, or `""` when only
/// `Connection: upgrade` is present. `None` for an ordinary request.
pub fn requested_upgrade(req: &RequestHeader) -> Option<&str> {
    // One walk over the request's few headers: cheaper than two hash lookups on every call.
    let mut connection_upgrade = false;
    for (name, value) in &req.headers {
        if name == http::header::UPGRADE {
            return Some(value.to_str().unwrap_or("").trim());
        }
        if name == http::header::CONNECTION {
            connection_upgrade |= value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            });
        }
    }
    connection_upgrade.then_some("")
}
/// W3C trace context: the upstream's parent span (set by the gateway on a traced call).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C trace context: vendor state, passed on with `traceparent`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// Client addresses, appended to by each proxy.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

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
/// copy of the headers the gateway asserts, the credential header the gateway injects, and the
/// upstream's stripped forwarding headers (`stripped`).
pub fn strip_client_assertions(
    req: &mut RequestHeader,
    credential_header: Option<&HeaderName>,
    stripped: &[HeaderName],
) {
    // One walk over the request's few header names decides everything; only names actually
    // present are removed (each removal is a hash lookup in two maps). Runs on every call.
    let doomed: SmallVec<[HeaderName; 4]> = req
        .headers
        .keys()
        .filter(|k| {
            *k == AUTHORIZATION
                || *k == PROXY_AUTHORIZATION
                || *k == X_REQUEST_ID
                || *k == FORWARDED
                || credential_header == Some(*k)
                || k.as_str().starts_with(OWNED_PREFIX)
                || stripped.contains(k)
        })
        .cloned()
        .collect();
    for k in doomed {
        req.remove_header(&k);
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
    /// The route's name as a header value, when it is one (made at load).
    pub route_header: Option<&'a http::HeaderValue>,
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
    /// The upstream credential's value for this call (static, minted or exchanged).
    pub credential: Option<&'a http::HeaderValue>,
}

/// Set `name` to the value made at load (`prepared`), or, when `text` was not a valid header
/// value then, to `text` itself (refused here as it would have been).
fn insert_prepared(
    req: &mut RequestHeader,
    name: impl pingora::http::IntoCaseHeaderName,
    prepared: Option<&http::HeaderValue>,
    text: &str,
) -> pingora::Result<()> {
    match prepared {
        Some(v) => req.insert_header(name, v.clone()),
        None => req.insert_header(name, text),
    }
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
    strip_client_assertions(
        req,
        up.credential.as_ref().map(|c| &c.header),
        &up.stripped_headers,
    );

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
    // Values made at load are cloned (a reference count), not validated and copied per call.
    insert_prepared(req, HOST, up.authority_header.as_ref(), &up.authority)?;

    // Static names: this runs on every forwarded call.
    insert_prepared(req, AGENT_NAME, f.agent.id_header.as_ref(), &f.agent.id)?;
    insert_prepared(
        req,
        OWNER_NAME,
        f.agent.owner_header.as_ref(),
        &f.agent.owner,
    )?;
    insert_prepared(req, ROUTE_NAME, f.route_header, f.route)?;
    req.insert_header(SCOPES_NAME, f.scopes)?;
    req.insert_header(REQUEST_ID, f.request_id)?;

    // Append, never trust: the client's X-Forwarded-For is passed on but decides nothing.
    if let Some(ip) = f.client_ip {
        let mut xff = String::new();
        if let Some(prev) = req
            .headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .filter(|p| !p.trim().is_empty())
        {
            xff.reserve(prev.len() + 2 + 15);
            xff.push_str(prev);
            xff.push_str(", ");
        }
        crate::util::push_ip(&mut xff, ip);
        req.insert_header(X_FORWARDED_FOR_NAME, xff)?;
    }
    if let (Some(c), Some(v)) = (&up.credential, f.credential) {
        req.insert_header(c.header_case.clone(), v.clone())?;
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
            ("Proxy-Authorization", "Basic cHJveHk6cHc="),
            ("accept", "application/json"),
        ]);
        strip_client_assertions(&mut r, Some(&HeaderName::from_static("x-api-key")), &[]);
        let left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    fn names(list: &[&'static str]) -> Vec<HeaderName> {
        list.iter().map(|h| HeaderName::from_static(h)).collect()
    }

    #[test]
    fn forwarding_headers_are_stripped() {
        let mut r = req(&[
            ("X-Forwarded-Host", "admin.internal"),
            ("x-forwarded-prefix", "/admin"),
            ("X-Real-IP", "10.0.0.1"),
            ("x-custom-tenant", "other"),
            ("accept", "*/*"),
        ]);
        let mut stripped = names(DEFAULT_STRIPPED_HEADERS);
        stripped.push(HeaderName::from_static("x-custom-tenant"));
        strip_client_assertions(&mut r, None, &stripped);
        let left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn override_headers_are_found_in_any_case() {
        let refused = names(DEFAULT_REFUSED_HEADERS);
        for h in DEFAULT_REFUSED_HEADERS {
            let upper = h.to_ascii_uppercase();
            let r = req(&[("accept", "*/*"), (upper.as_str(), "DELETE")]);
            assert_eq!(refused_header(&r, &refused).map(|n| n.as_str()), Some(*h));
        }
        assert_eq!(refused_header(&req(&[("accept", "*/*")]), &refused), None);
    }

    #[test]
    fn method_override_parameter_in_every_spelling() {
        for q in [
            "_method=DELETE",
            "a=1&_method=DELETE",
            "a=1;_method=PUT",
            "_METHOD=delete",
            "_MeThOd=delete",
            "%5Fmethod=DELETE",
            "_%6Dethod=DELETE",
            "%5f%4d%45%54%48%4f%44=x",
            "+method=DELETE",
            ".method=DELETE",
            "[method=DELETE",
            "_method",
        ] {
            assert!(has_method_override_param(q), "{q}");
        }
        for q in [
            "",
            "method=x",
            "a=_method",
            "my_method=x",
            "_methods=x",
            "q=%20",
        ] {
            assert!(!has_method_override_param(q), "{q}");
        }
    }

    #[test]
    fn upgrade_requests_are_recognised() {
        assert_eq!(
            requested_upgrade(&req(&[("upgrade", "websocket")])),
            Some("websocket")
        );
        assert_eq!(
            requested_upgrade(&req(&[("connection", "keep-alive, Upgrade")])),
            Some("")
        );
        assert_eq!(
            requested_upgrade(&req(&[("connection", "keep-alive")])),
            None
        );
        assert_eq!(requested_upgrade(&req(&[])), None);
    }
}

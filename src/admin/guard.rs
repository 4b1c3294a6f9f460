//! The one layer in front of every admin route: which `Host` the listener answers to, and which
//! state-changing requests a browser may have sent on someone else's behalf.
//!
//! Loopback is not a boundary: every local process and every web page open in a local browser
//! can reach it. Two browser attacks matter, and both are refused here, before any handler:
//!
//! - **DNS rebinding**: a page on `evil.example` makes its own name resolve to this address and
//!   then reads the admin API as same-origin. Its requests carry `Host: evil.example`, so only
//!   `Host` values naming this listener (its address, `localhost` on loopback) or listed in
//!   `admin.hosts` are served (421 otherwise).
//! - **Cross-site requests**: a page posts a form, or a `fetch` without a preflight, to a
//!   state-changing endpoint. Credentials travel only in `Authorization: Bearer`, which a
//!   browser never attaches by itself; on top of that, a state-changing request whose `Origin`
//!   is another origin, whose `Sec-Fetch-Site` is not `same-origin`, or whose body has a type an
//!   HTML form or a preflight-free `fetch` can send, is refused with 403.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use axum::Json;
use serde_json::json;

use crate::state::GatewayState;

/// Both ends of an admin connection (from `axum::serve` with connect info).
#[derive(Debug, Clone, Copy)]
pub struct AdminConn {
    /// The address the client connected to: this listener's own address as the client reached
    /// it (for a listener on `0.0.0.0`, the interface address, e.g. a pod IP).
    pub local: Option<SocketAddr>,
    /// The client.
    pub peer: SocketAddr,
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for AdminConn {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        AdminConn {
            local: stream.io().local_addr().ok(),
            peer: *stream.remote_addr(),
        }
    }
}

/// What the layer needs: the shared state (for `admin.hosts`) and the address the listener was
/// started on (a reload cannot rebind it).
pub(crate) struct Guard {
    pub(crate) state: Arc<GatewayState>,
    pub(crate) listen: String,
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub(crate) async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let local = req
        .extensions()
        .get::<ConnectInfo<AdminConn>>()
        .and_then(|c| c.0.local);
    let host = request_host(&req);
    let allowed = host
        .is_some_and(|h| host_allowed(h, local, &g.listen, &g.state.snapshot.load().admin.hosts));
    if !allowed {
        // Echo a bounded prefix only: the value is the caller's.
        let shown: String = host.unwrap_or("").chars().take(100).collect();
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!(
                "this admin listener answers only to its own address ({}{}) or to a name in `admin.hosts`, not to Host `{shown}`; a name that merely resolves here (DNS rebinding) is refused. Use the listener's address, or add the name you use to `admin.hosts`",
                g.listen,
                if local.is_some_and(|a| a.ip().is_loopback()) {
                    ", or localhost"
                } else {
                    ""
                },
            ),
        );
    }
    if !is_safe(req.method()) {
        if let Err((code, why)) = cross_site(req.headers(), host.unwrap_or("")) {
            tracing::warn!(
                method = clip(req.method().as_str()),
                path = clip(req.uri().path()),
                code,
                "admin request refused: may come from a web page"
            );
            return refuse(
                StatusCode::FORBIDDEN,
                code,
                format!("{why}. State-changing admin requests are accepted only from the CLI, scripts and the console itself: send `Authorization: Bearer <token>`, a JSON body (or none), and no cross-site `Origin`"),
            );
        }
    }
    next.run(req).await
}

/// At most 128 bytes of a caller-chosen string, for diagnostics: a caller must not be able to
/// write long lines into the gateway's log.
pub(crate) fn clip(s: &str) -> &str {
    let mut end = s.len().min(128);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Methods that change nothing on the admin listener.
fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `Host`, or the URI authority of an absolute-form request.
fn request_host(req: &Request) -> Option<&str> {
    match req.headers().get(header::HOST) {
        Some(v) => v.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    }
}

/// Split `host[:port]` / `[v6][:port]`; `None` when the port is not a number.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        match after {
            "" => (v6, None),
            p => (v6, Some(p.strip_prefix(':')?)),
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    Some((name, port))
}

/// Whether a request's `Host` names this listener.
///
/// Allowed: the configured `listen.admin` text; an IP literal with the port equal to the
/// address the client connected to (a name cannot be rebound if there is no name: this is how
/// kubelet probes with `Host: <pod IP>:<port>` pass); `localhost` when that address is
/// loopback; and `admin.hosts` entries (`name` for any port, `name:port` exactly).
pub(crate) fn host_allowed(
    host: &str,
    local: Option<SocketAddr>,
    listen: &str,
    extra: &[String],
) -> bool {
    if host.eq_ignore_ascii_case(listen) {
        return true;
    }
    let Some((name, port)) = split_host(host) else {
        return false;
    };
    if let Some(local) = local {
        let port = port.unwrap_or(80);
        if port == local.port() {
            if let Ok(ip) = name.parse::<IpAddr>() {
                if ip == local.ip() {
                    return true;
                }
            }
            if local.ip().is_loopback() && name.eq_ignore_ascii_case("localhost") {
                return true;
            }
        }
    }
    extra.iter().any(|e| {
        e.eq_ignore_ascii_case(host)
            || (split_host(e).is_some_and(|(_, p)| p.is_none()) && e.eq_ignore_ascii_case(name))
    })
}

/// Why a state-changing request looks like a browser sent it for another site, if it does.
fn cross_site(h: &HeaderMap, host: &str) -> Result<(), (&'static str, String)> {
    if let Some(site) = h.get("sec-fetch-site") {
        // `none`: typed by the user or a bookmark; `same-origin`: the console. `same-site`
        // includes other ports of this host, which are other origins.
        let site = site.to_str().unwrap_or("?");
        if !matches!(site, "same-origin" | "none") {
            return Err((
                "cross_site_request",
                format!("the browser marked this request `Sec-Fetch-Site: {site}`"),
            ));
        }
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            let shown: String = origin.chars().take(100).collect();
            return Err((
                "cross_site_request",
                format!("`Origin: {shown}` is not this listener"),
            ));
        }
    }
    if let Some(ct) = h.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let media = ct.split(';').next().unwrap_or("").trim();
        // The types an HTML form (or a `fetch` with no preflight) can send across sites.
        const FORM_TYPES: [&str; 3] = [
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "text/plain",
        ];
        if FORM_TYPES.iter().any(|f| media.eq_ignore_ascii_case(f)) {
            return Err((
                "form_content_type_refused",
                format!("a `{media}` body is what a cross-site form can send"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_name_this_listener_and_only_those() {
        let lo: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let pod: SocketAddr = "10.1.2.3:9901".parse().unwrap();
        let v6: SocketAddr = "[::1]:9901".parse().unwrap();
        let extra = vec!["admin.internal".to_owned(), "gw.example:8443".to_owned()];
        let cases: &[(&str, Option<SocketAddr>, &str, bool)] = &[
            ("127.0.0.1:9901", Some(lo), "127.0.0.1:9901", true),
            ("localhost:9901", Some(lo), "127.0.0.1:9901", true),
            ("LocalHost:9901", Some(lo), "127.0.0.1:9901", true),
            ("localhost:9902", Some(lo), "127.0.0.1:9901", false),
            ("localhost", Some(lo), "127.0.0.1:9901", false),
            ("evil.example:9901", Some(lo), "127.0.0.1:9901", false),
            ("evil.example", Some(lo), "127.0.0.1:9901", false),
            ("127.0.0.2:9901", Some(lo), "127.0.0.1:9901", false),
            ("", Some(lo), "127.0.0.1:9901", false),
            ("127.0.0.1:99x1", Some(lo), "127.0.0.1:9901", false),
            // Bound to all interfaces: the pod IP the probe connected to.
            ("10.1.2.3:9901", Some(pod), "0.0.0.0:9901", true),
            ("10.1.2.4:9901", Some(pod), "0.0.0.0:9901", false),
            ("localhost:9901", Some(pod), "0.0.0.0:9901", false),
            ("0.0.0.0:9901", Some(pod), "0.0.0.0:9901", true),
            ("[::1]:9901", Some(v6), "[::1]:9901", true),
            ("localhost:9901", Some(v6), "[::1]:9901", true),
            // Configured names.
            ("admin.internal", Some(pod), "0.0.0.0:9901", true),
            ("ADMIN.internal:9901", Some(pod), "0.0.0.0:9901", true),
            ("gw.example:8443", Some(pod), "0.0.0.0:9901", true),
            ("gw.example", Some(pod), "0.0.0.0:9901", false),
            ("gw.example:9901", Some(pod), "0.0.0.0:9901", false),
            (
                "admin.internal.evil.example",
                Some(pod),
                "0.0.0.0:9901",
                false,
            ),
            // No connection info: the configured address and names only.
            ("127.0.0.1:9901", None, "127.0.0.1:9901", true),
            ("localhost:9901", None, "127.0.0.1:9901", false),
        ];
        for &(host, local, listen, want) in cases {
            assert_eq!(
                host_allowed(host, local, listen, &extra),
                want,
                "{host} on {local:?} ({listen})"
            );
        }
    }

    #[test]
    fn state_changing_requests_a_web_page_could_send_are_refused() {
        let host = "127.0.0.1:9901";
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            cross_site(&h, host).map_err(|(code, _)| code)
        };
        assert_eq!(with(&[]), Ok(()));
        assert_eq!(with(&[("content-type", "application/json")]), Ok(()));
        assert_eq!(
            with(&[
                ("origin", "http://127.0.0.1:9901"),
                ("sec-fetch-site", "same-origin"),
                ("content-type", "application/json; charset=utf-8"),
            ]),
            Ok(())
        );
        let refused = [
            ("origin", "http://127.0.0.1:8080"),
            ("origin", "http://evil.example"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-type", "Multipart/Form-Data; boundary=x"),
            ("content-type", "text/plain;charset=UTF-8"),
        ];
        for pair in refused {
            assert!(with(&[pair]).is_err(), "{pair:?} passed");
        }
    }
}

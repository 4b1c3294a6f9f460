//! Forwards an approved call to its upstream: exactly the approved method, path, headers and
//! buffered body, once.
//!
//! Why not pingora's own forwarding: a call held for approval has had its body read already
//! (to hash it), and pingora replays a consumed body only through its 64 KiB retry buffer, so a
//! larger approved body would never reach the upstream. The executor sends the buffered bytes
//! itself with reqwest, with the upstream's timeouts, TLS name and pinned address, and the
//! proxy streams the answer back to the agent.

use crate::policy::Upstream;
use crate::util::lock;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// How the upstream call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecError {
    /// Could not connect (refused, unreachable, TLS).
    Connect,
    /// Connect or read timed out.
    Timeout,
    /// Anything else on the wire.
    Protocol,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded in either direction.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

/// Upstream name, pinned address, TLS name and CA digest: a reload that changes any of them
/// gets a new client.
type ClientKey = (String, SocketAddr, String, Option<u64>);

/// One HTTP client per upstream definition, reused across calls (keepalive).
#[derive(Default)]
pub struct Executor {
    clients: Mutex<HashMap<ClientKey, reqwest::Client>>,
}

impl Executor {
    /// An executor with no clients yet.
    pub fn new() -> Executor {
        Executor::default()
    }

    fn client(&self, up: &Upstream) -> Result<reqwest::Client, ExecError> {
        let key = (
            up.name.to_string(),
            up.addr,
            up.sni.clone(),
            up.tls_ca.as_ref().map(|ca| ca.id),
        );
        let mut map = lock(&self.clients);
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let mut b = reqwest::Client::builder();
        if let Some(ca) = &up.tls_ca {
            // Like the proxy path: these CAs instead of the built-in roots, not in addition.
            b = b.tls_built_in_root_certs(false);
            for cert in &ca.reqwest {
                b = b.add_root_certificate(cert.clone());
            }
        }
        let c = b
            // The address was resolved when the config was loaded, like the proxy path.
            .resolve(&up.sni, up.addr)
            .connect_timeout(up.connect_timeout)
            .read_timeout(up.read_timeout)
            .pool_idle_timeout(up.idle_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // Never route an approved call through a proxy named by the environment.
            .no_proxy()
            .build()
            .map_err(|_| ExecError::Connect)?;
        map.insert(key, c.clone());
        Ok(c)
    }

    /// Send `method target` with `headers` and `body` to `up`. `target` is path and query as
    /// prepared for the upstream (base path included).
    pub async fn send(
        &self,
        up: &Upstream,
        method: http::Method,
        target: &str,
        headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, ExecError> {
        let client = self.client(up)?;
        let scheme = if up.tls { "https" } else { "http" };
        let host = if up.sni.contains(':') {
            format!("[{}]", up.sni)
        } else {
            up.sni.clone()
        };
        let url = format!("{scheme}://{host}:{}{target}", up.addr.port());
        let mut out = http::HeaderMap::with_capacity(headers.len());
        for (k, v) in headers {
            if !is_hop_by_hop(k.as_str()) {
                out.append(k.clone(), v.clone());
            }
        }
        client
            .request(method, url)
            .headers(out)
            .body(body)
            .send()
            .await
            .map_err(classify)
    }
}

/// Map a reqwest error to what the agent is told.
pub fn classify(e: reqwest::Error) -> ExecError {
    if e.is_timeout() {
        ExecError::Timeout
    } else if e.is_connect() {
        ExecError::Connect
    } else {
        ExecError::Protocol
    }
}

//! Everything about reaching an upstream that both ways of forwarding share: pingora's
//! streaming path and the buffered executor used for approved calls. One peer builder, one
//! classifier for upstream failures, one place that takes the injected credential out of
//! responses, and one place that records a failure — so the two paths cannot drift.

use super::refusal::UpstreamFailure;
use super::RequestCtx;
use crate::approval::executor::ExecError;
use crate::observe::Outcome;
use crate::policy::Upstream;
use crate::state::GatewayState;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

/// The pingora peer for `up`, with its timeouts and trust anchors.
pub fn peer(up: &Upstream) -> HttpPeer {
    let mut peer = HttpPeer::new(up.addr, up.tls, up.sni.clone());
    peer.options.connection_timeout = Some(up.connect_timeout);
    peer.options.total_connection_timeout = Some(up.connect_timeout * 2);
    peer.options.read_timeout = Some(up.read_timeout);
    peer.options.write_timeout = Some(up.write_timeout);
    peer.options.idle_timeout = Some(up.idle_timeout);
    // verify_cert and verify_hostname stay at their default (on): a private CA replaces the
    // roots, never the checks.
    if let Some(ca) = &up.tls_ca {
        peer.options.ca = Some(ca.pingora.clone());
        // The pool key ignores `ca`: without this, a connection verified against other roots
        // (another upstream, or a previous CA file) could be reused.
        peer.group_key = ca.id;
    }
    peer
}

/// What kind of upstream failure a pingora error is; `None` when the error is not the
/// upstream's (the agent's side, or the gateway's own).
pub fn classify(e: &Error) -> Option<UpstreamFailure> {
    if e.esource() != &ErrorSource::Upstream {
        return None;
    }
    Some(match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
        | ErrorType::TLSHandshakeTimedout => UpstreamFailure::Timeout,
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::InvalidCert
        | ErrorType::SocketError
        | ErrorType::BindError => UpstreamFailure::Unavailable,
        _ => UpstreamFailure::Protocol,
    })
}

impl From<ExecError> for UpstreamFailure {
    /// The executor's failures, in the same three kinds.
    fn from(e: ExecError) -> UpstreamFailure {
        match e {
            ExecError::Connect => UpstreamFailure::Unavailable,
            ExecError::Timeout => UpstreamFailure::Timeout,
            ExecError::Protocol => UpstreamFailure::Protocol,
        }
    }
}

/// Count an upstream failure of this call and make it the call's outcome.
pub fn record_failure(state: &GatewayState, ctx: &mut RequestCtx, f: UpstreamFailure) {
    if let Some(up) = ctx.upstream() {
        state
            .metrics
            .upstream_errors
            .with_label_values(&[&up.name, f.kind()])
            .inc();
    }
    ctx.outcome = Outcome::UpstreamError { code: f.code() };
}

/// Make an upstream's response header fit for the agent: the credential header the gateway
/// injects never flows back (an upstream that echoes it would hand the agent the secret).
pub fn sanitize_response(resp: &mut ResponseHeader, up: &Upstream) {
    if let Some(c) = &up.credential {
        resp.remove_header(&c.header);
    }
}

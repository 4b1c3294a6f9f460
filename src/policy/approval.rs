//! Policy: tiered trust. Which human approval, if any, a call needs before it is forwarded.

use super::route::Route;
use super::snapshot::{Agent, ApprovalPolicy, Snapshot};
use http::Method;
use std::sync::Arc;

/// The approval a failed `on_fail: approve` condition asks for: the route's own rule, else the
/// policy of supervised agents' writes (`approvals.supervised`). `None` only without an
/// `approvals:` section, which the config refuses for such conditions.
pub fn step_up(snap: &Snapshot, route: &Route) -> Option<Arc<ApprovalPolicy>> {
    route
        .approval
        .clone()
        .or_else(|| snap.approvals.as_ref().map(|a| a.supervised.clone()))
}

/// The route's own approval rule first, else supervised agents' writes (`write`: anything but
/// GET/HEAD/OPTIONS, or an MCP `tools/call`) under `approvals.supervised`.
pub fn required(
    snap: &Snapshot,
    route: &Route,
    agent: &Agent,
    write: bool,
) -> Option<Arc<ApprovalPolicy>> {
    route
        .approval
        .clone()
        .or_else(|| match (&snap.approvals, agent.supervised && write) {
            (Some(a), true) => Some(a.supervised.clone()),
            _ => None,
        })
}

/// A write: anything but GET, HEAD and OPTIONS (what supervised agents and step-ups put to a
/// human).
pub fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

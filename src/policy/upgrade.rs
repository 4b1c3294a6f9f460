//! Policy: a protocol upgrade passes only where the route allows WebSocket, and only to it.

use super::decision::{Denial, RequestFacts};
use super::snapshot::{Agent, Snapshot};
use std::sync::Arc;

/// Refuse an `Upgrade` the route does not allow; anything else continues.
pub fn check(
    snap: &Snapshot,
    facts: &RequestFacts<'_>,
    agent: &Arc<Agent>,
    route: usize,
) -> Result<(), Denial> {
    let Some(protocol) = facts.upgrade else {
        return Ok(());
    };
    if snap.routes.routes[route].websocket && protocol.eq_ignore_ascii_case("websocket") {
        return Ok(());
    }
    Err(Denial::UpgradeNotAllowed {
        agent: agent.clone(),
        route,
        protocol: protocol.to_string(),
    })
}

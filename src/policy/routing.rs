//! Policy: the one route a call falls under (deny by default), with the rules that keep the
//! path a route matched the path the upstream serves.

use super::decision::{Denial, RequestFacts};
use super::route::Lookup;
use super::snapshot::{Agent, Snapshot};
use std::sync::Arc;

/// Index of the route governing the call, or why none does.
///
/// `;` parameters: routes match the path as a parameter-stripping upstream reads it, and only
/// upstreams that opted in (`path_parameters: allow`) may receive them at all. A host-scoped
/// route claims its method and path on its upstream for every host (see [`super::route`]).
pub fn route_of(
    snap: &Snapshot,
    facts: &RequestFacts<'_>,
    agent: &Arc<Agent>,
) -> Result<usize, Denial> {
    let params = facts.path.has_parameters();
    let stripped;
    let route_path = if params {
        stripped = facts.path.without_parameters();
        &stripped
    } else {
        facts.path
    };
    let route = match snap.routes.lookup(facts.method, facts.host, route_path) {
        Lookup::Found(i) => i,
        Lookup::NotFound { .. } if params => {
            return Err(Denial::PathParameter {
                agent: agent.clone(),
            })
        }
        Lookup::NotFound { methods_on_path } => {
            return Err(Denial::NoRoute {
                agent: agent.clone(),
                methods_on_path,
            })
        }
        Lookup::HostScoped { claimed_by, .. } => {
            return Err(Denial::HostScoped {
                agent: agent.clone(),
                claimed_by,
            })
        }
    };
    if params && !snap.upstreams[snap.routes.routes[route].upstream].path_parameters {
        return Err(Denial::PathParameter {
            agent: agent.clone(),
        });
    }
    Ok(route)
}

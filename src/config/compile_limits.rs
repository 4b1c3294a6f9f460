//! Compile `limits:` lists of agents and routes into [`Limits`], reporting every bad value with
//! its field path through a callback, so the main compiler plugs it in with one call.

use super::raw_limits::{RawLimit, RawRate, RawSize, RawVolume};
use crate::policy::limits::{
    Direction, Limit, LimitDef, Limits, Origin, RateLimit, Scope, VolumeLimit,
};
use std::time::Duration;

/// Compile the `limits:` list found at `path` (e.g. `routes[3].limits`) of an agent
/// ([`Origin::Agent`], also the top-level default) or a route ([`Origin::Route`]), given as
/// (index in the file, item). Each problem is passed to
/// `error(field path, message)`; the returned value is only meaningful when none was.
pub fn compile_limits<'r>(
    path: &str,
    raw: impl IntoIterator<Item = (usize, &'r RawLimit)>,
    origin: Origin,
    error: &mut dyn FnMut(String, String),
) -> Limits {
    let mut items: Vec<Limit> = Vec::new();
    for (i, r) in raw {
        let p = format!("{path}[{i}]");
        let limit = match (&r.rate, &r.volume) {
            (Some(rate), None) => rate_limit(&format!("{p}.rate"), rate, origin, error),
            (None, Some(vol)) => volume_limit(&format!("{p}.volume"), vol, origin, error),
            _ => {
                error(p.clone(), "set exactly one of `rate` and `volume`".into());
                None
            }
        };
        let Some((def, scope)) = limit else { continue };
        // Two identical limits would share one counter and charge it twice per call.
        if let Some(first) = items.iter().find(|l| l.def == def && l.scope == scope) {
            error(
                p.clone(),
                format!("the same limit as {}; remove one", first.path),
            );
            continue;
        }
        items.push(Limit {
            def,
            scope,
            path: p.into(),
        });
    }
    Limits {
        items: items.into(),
    }
}

fn scope(
    path: &str,
    raw: Option<&str>,
    origin: Origin,
    error: &mut dyn FnMut(String, String),
) -> Option<Scope> {
    let scope = match (origin, raw) {
        // Throttles are set at runtime, never compiled from the file.
        (Origin::Agent | Origin::Throttle, None | Some("agent")) => Scope::Agent,
        (Origin::Route, None | Some("route")) => Scope::Route,
        (_, Some("agent_route")) => Scope::AgentRoute,
        (Origin::Agent | Origin::Throttle, Some(other)) => {
            error(
                path.into(),
                format!("`{other}` is not a scope of an agent's limit: write `agent` (one budget across all routes, the default) or `agent_route` (one budget per route)"),
            );
            return None;
        }
        (Origin::Route, Some(other)) => {
            error(
                path.into(),
                format!("`{other}` is not a scope of a route's limit: write `route` (one budget shared by all agents, the default) or `agent_route` (one budget per agent)"),
            );
            return None;
        }
    };
    Some(scope)
}

/// Longest period, and longest time a burst takes to refill: counters keep time in 64-bit
/// nanoseconds (about 584 years), and no budget needs more than a year.
const MAX_PERIOD: Duration = Duration::from_secs(366 * 86_400);

fn period(path: &str, raw: &str, error: &mut dyn FnMut(String, String)) -> Option<Duration> {
    match humantime::parse_duration(raw) {
        Ok(d) if d.is_zero() => {
            error(path.into(), "the period must be greater than zero".into());
            None
        }
        Ok(d) if d > MAX_PERIOD => {
            error(path.into(), "the period must be at most 366 days".into());
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            error(
                path.into(),
                format!("`{raw}` is not a duration ({e}); write e.g. `1s`, `1m`, `1h`"),
            );
            None
        }
    }
}

fn count(path: &str, value: u64, what: &str, error: &mut dyn FnMut(String, String)) -> Option<u32> {
    match u32::try_from(value) {
        Ok(0) => {
            error(path.into(), format!("{what} must be at least 1"));
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            error(path.into(), format!("{what} must be at most {}", u32::MAX));
            None
        }
    }
}

fn rate_limit(
    p: &str,
    r: &RawRate,
    origin: Origin,
    error: &mut dyn FnMut(String, String),
) -> Option<(LimitDef, Scope)> {
    let requests = count(&format!("{p}.requests"), r.requests, "`requests`", error);
    let per = period(&format!("{p}.per"), &r.per, error);
    let burst = match r.burst {
        Some(b) => count(&format!("{p}.burst"), b, "`burst`", error),
        None => requests,
    };
    let scope = scope(&format!("{p}.scope"), r.scope.as_deref(), origin, error);
    let (requests, per, burst, scope) = (requests?, per?, burst?, scope?);
    if per.as_nanos() < u128::from(requests) {
        error(
            format!("{p}.requests"),
            "more requests than nanoseconds in the period; use a longer `per`".into(),
        );
        return None;
    }
    let def = RateLimit {
        requests,
        per,
        burst,
    };
    if def.interval().as_nanos() * u128::from(burst) > MAX_PERIOD.as_nanos() {
        error(
            format!("{p}.burst"),
            "a burst this large takes more than 366 days to refill at this rate; lower `burst`"
                .into(),
        );
        return None;
    }
    Some((
        LimitDef::Rate(RateLimit {
            requests,
            per,
            burst,
        }),
        scope,
    ))
}

fn volume_limit(
    p: &str,
    v: &RawVolume,
    origin: Origin,
    error: &mut dyn FnMut(String, String),
) -> Option<(LimitDef, Scope)> {
    let bytes = match &v.bytes {
        RawSize::Bytes(n) => Some(*n),
        RawSize::Text(t) => {
            match t.trim().parse::<bytesize::ByteSize>() {
                Ok(b) => Some(b.as_u64()),
                Err(e) => {
                    error(
                    format!("{p}.bytes"),
                    format!("`{t}` is not a size ({e}); write e.g. `50MB`, `1GiB` or a number of bytes"),
                );
                    None
                }
            }
        }
    };
    let bytes = match bytes {
        Some(0) => {
            error(format!("{p}.bytes"), "`bytes` must be at least 1".into());
            None
        }
        b => b,
    };
    let per = period(&format!("{p}.per"), &v.per, error);
    let direction = match v.direction.as_deref() {
        None | Some("both") => Some(Direction::Both),
        Some("request") => Some(Direction::Request),
        Some("response") => Some(Direction::Response),
        Some(other) => {
            error(
                format!("{p}.direction"),
                format!("`{other}` is not `request`, `response` or `both`"),
            );
            None
        }
    };
    let scope = scope(&format!("{p}.scope"), v.scope.as_deref(), origin, error);
    Some((
        LimitDef::Volume(VolumeLimit {
            bytes: bytes?,
            per: per?,
            direction: direction?,
        }),
        scope?,
    ))
}

#[cfg(test)]
#[path = "compile_limits_tests.rs"]
mod tests;

//! Rate and data-volume limits: the compiled limits of agents and routes, the keys their
//! counters live under, and the pure decision over a read-only view of those counters.
//!
//! # Shape
//!
//! A limit is declared under `agents[].limits` or `routes[].limits` and has a [`Scope`]:
//!
//! | declared under | `scope`              | one counter per          |
//! |----------------|----------------------|--------------------------|
//! | agent          | `agent` (default)    | agent, across all routes |
//! | agent          | `agent_route`        | agent × route            |
//! | route          | `route` (default)    | route, all agents shared |
//! | route          | `agent_route`        | agent × route            |
//!
//! Every limit that applies to a call is checked; the first one that refuses decides.
//!
//! # Keys are bounded
//!
//! A [`LimitKey`] is built only from the agent id and the route name *of the compiled config*
//! (the caller passes the matched [`super::Agent`] and [`super::Route`]), never from anything a
//! client sends, so the number of counters is bounded by agents × routes × limits.
//!
//! # Reloads
//!
//! The key carries the limit's definition ([`LimitDef`]): a limit that a reload leaves unchanged
//! keeps its counter (an agent cannot reset its budget by waiting for a reload), and a limit whose
//! numbers changed starts with a fresh counter under a new key, so the new numbers take effect
//! for the next call. Counters of removed or changed limits go idle and are swept.
//!
//! # Crossing a volume budget: the stream is cut
//!
//! - A call is refused (429 `volume_exceeded`) when a budget that applies to it is already used
//!   up, or when its declared request `Content-Length` is larger than what is left of a request
//!   budget ([`decide`]): nothing is sent to the tool.
//! - Bytes are charged as they stream, chunk by chunk, in both directions. The chunk that would
//!   take a budget past its limit is charged but **not forwarded**, and the stream is cut
//!   ([`ChargeOutcome::Cut`]): the proxy aborts the connection so the agent sees an incomplete
//!   response (never a shorter body that looks complete).
//! - The next calls are refused until the window allows again.
//!
//! Why cut rather than let the crossing call complete: volume limits exist to stop bulk data
//! movement, and with "the crossing call completes" one call can move an unbounded amount (a
//! prompt-injected agent with one byte of budget left asks for the whole table). Cutting bounds
//! the overshoot to one chunk per concurrent stream. The price is that a response crossing the
//! budget is lost to the agent even though the tool did the work; operators size budgets well
//! above the largest single legitimate response.
//!
//! # Wiring (what the proxy does)
//!
//! 1. Keep one [`crate::state::limits::LimitStore`] in the process state, outside the snapshot,
//!    so counters survive reloads; call its `sweep` every few seconds.
//! 2. In `request_filter`, once the route and agent are known:
//!    `let applied = applicable(&agent.id, &agent.limits, &route.name, &route.limits);` then
//!    [`decide`]`(&applied, &*store, content_length)`; on [`LimitDecision::Continue`] carry out the
//!    rate part with [`crate::state::limits::acquire`] and keep the [`Charge`] in the CTX.
//!    Either refusal → 429 with [`Refused::code`], [`refusal_message`], [`refusal_fields`] and
//!    `Retry-After: `[`Refused::retry_after_secs`]; count `portcullis_limited_total`.
//! 3. In `request_body_filter` / `response_body_filter`, for each chunk:
//!    [`crate::state::limits::charge_chunk`]; on [`ChargeOutcome::Cut`] return an error so pingora
//!    aborts the stream (do not forward the chunk), and count `portcullis_limited_total`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Which bytes a volume limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Request bodies (agent → tool).
    Request,
    /// Response bodies (tool → agent).
    Response,
    /// Both, against one shared budget.
    Both,
}

impl Direction {
    /// Does a limit with this direction count bytes flowing in `flow` (request or response)?
    pub fn counts(self, flow: Direction) -> bool {
        self == Direction::Both || self == flow
    }

    /// `request`, `response` or `both`, as in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
            Direction::Both => "both",
        }
    }
}

/// Whose calls share one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One counter per agent, across all routes (declared under an agent).
    Agent,
    /// One counter per route, shared by all agents (declared under a route).
    Route,
    /// One counter per agent × route.
    AgentRoute,
}

impl Scope {
    /// `agent`, `route` or `agent_route`, as in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Agent => "agent",
            Scope::Route => "route",
            Scope::AgentRoute => "agent_route",
        }
    }
}

/// Where a limit was declared: part of its key, so an agent's limit and a route's limit with the
/// same numbers never share a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Under `agents[].limits`.
    Agent,
    /// Under `routes[].limits`.
    Route,
    /// A throttle set at runtime on one agent (an operator or a monitoring playbook), see
    /// [`super::agent_state`].
    Throttle,
}

/// A request rate: `requests` per `per`, at most `burst` at once (GCRA).
///
/// The sustained rate is one request every `per / requests`; `burst` requests may arrive back
/// to back after a quiet spell. `burst` defaults to `requests` ("100 per minute" admits 100 at
/// once, then one every 0.6 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Requests allowed per period.
    pub requests: u32,
    /// The period.
    pub per: Duration,
    /// Most requests admitted at once.
    pub burst: u32,
}

impl RateLimit {
    /// Time between two requests at the sustained rate (at least 1 ns: compile checks it).
    pub fn interval(&self) -> Duration {
        (self.per / self.requests.max(1)).max(Duration::from_nanos(1))
    }
}

/// A data volume: `bytes` per fixed window of `per`, counting `direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VolumeLimit {
    /// Budget per window.
    pub bytes: u64,
    /// The window.
    pub per: Duration,
    /// Which bytes count.
    pub direction: Direction,
}

/// Either kind of limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitDef {
    /// Requests per period.
    Rate(RateLimit),
    /// Bytes per window.
    Volume(VolumeLimit),
}

/// One compiled limit: what, and whose calls share its counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limit {
    /// The numbers.
    pub def: LimitDef,
    /// Whose calls share a counter.
    pub scope: Scope,
    /// Config path (`routes[2].limits[0]`), for logs and refusals.
    pub path: Arc<str>,
}

/// The limits of one agent or one route, in config order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Declared limits.
    pub items: Arc<[Limit]>,
}

impl Limits {
    /// No limits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The counter a limit is kept in: built from config names only (see the module docs).
///
/// Plain data (no in-process handles), so a shared store can turn it into its own key with
/// [`LimitKey::storage_key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKey {
    /// Where the limit was declared.
    pub origin: Origin,
    /// Whose calls share the counter.
    pub scope: Scope,
    /// Agent id, for `agent` and `agent_route` scopes.
    pub agent: Option<Arc<str>>,
    /// Route name, for `route` and `agent_route` scopes.
    pub route: Option<Arc<str>>,
    /// The limit's numbers: a changed limit is a new counter.
    pub def: LimitDef,
}

impl LimitKey {
    /// A flat, unambiguous string for a shared store (names are length-prefixed, so no agent
    /// id or route name can forge another key).
    pub fn storage_key(&self) -> String {
        let name = |n: &Option<Arc<str>>| match n {
            Some(s) => format!("{}:{s}", s.len()),
            None => "-".to_string(),
        };
        let def = match self.def {
            LimitDef::Rate(r) => format!("rate:{}/{}ns+{}", r.requests, r.per.as_nanos(), r.burst),
            LimitDef::Volume(v) => format!(
                "volume:{}/{}ns:{}",
                v.bytes,
                v.per.as_nanos(),
                v.direction.as_str()
            ),
        };
        let origin = match self.origin {
            Origin::Agent => "a",
            Origin::Route => "r",
            Origin::Throttle => "t",
        };
        format!(
            "{origin}|{}|{}|{}|{def}",
            self.scope.as_str(),
            name(&self.agent),
            name(&self.route)
        )
    }
}

/// A limit that applies to one call, with the counter it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The counter.
    pub key: LimitKey,
    /// The limit as declared.
    pub limit: Limit,
}

/// Every limit that applies to a call of `agent_id` on `route_name`: the agent's, then the
/// route's. Pure; the names must come from the compiled config.
pub fn applicable(
    agent_id: &Arc<str>,
    agent_limits: &Limits,
    route_name: &Arc<str>,
    route_limits: &Limits,
) -> Vec<Applied> {
    let mut out = Vec::with_capacity(agent_limits.items.len() + route_limits.items.len());
    for (origin, limits) in [(Origin::Agent, agent_limits), (Origin::Route, route_limits)] {
        for l in limits.items.iter() {
            let (agent, route) = match l.scope {
                Scope::Agent => (Some(agent_id.clone()), None),
                Scope::Route => (None, Some(route_name.clone())),
                Scope::AgentRoute => (Some(agent_id.clone()), Some(route_name.clone())),
            };
            out.push(Applied {
                key: LimitKey {
                    origin,
                    scope: l.scope,
                    agent,
                    route,
                    def: l.def,
                },
                limit: l.clone(),
            });
        }
    }
    out
}

/// The rate limit of a runtime throttle on `agent_id`, as one more applied limit; `path` says
/// who set it (shown as `limit_path`). Its key has its own origin, so it never shares a counter
/// with a configured limit of the same numbers.
pub fn throttle(agent_id: &Arc<str>, rate: RateLimit, path: Arc<str>) -> Applied {
    let def = LimitDef::Rate(rate);
    Applied {
        key: LimitKey {
            origin: Origin::Throttle,
            scope: Scope::Agent,
            agent: Some(agent_id.clone()),
            route: None,
            def,
        },
        limit: Limit {
            def,
            scope: Scope::Agent,
            path,
        },
    }
}

/// Read-only view of volume counters, which [`decide`] consults.
pub trait VolumeView {
    /// Bytes left in the current window, or `Err(time until the window allows again)` when
    /// nothing is left. An unreachable store must answer `Err` (fail closed).
    fn volume_remaining(&self, key: &LimitKey, limit: &VolumeLimit) -> Result<u64, Duration>;
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The limit that refused it.
    pub applied: Applied,
    /// When a retry can succeed.
    pub retry_after: Duration,
    /// For a declared request body larger than the budget left: its size.
    pub declared_bytes: Option<u64>,
    /// The call was under way (its body crossed the budget and was cut): the tool may have
    /// acted, so the message must not say that nothing was sent.
    pub cut: bool,
}

impl Refused {
    /// `rate_limited` or `volume_exceeded`: the machine code of the 429.
    pub fn code(&self) -> &'static str {
        match self.applied.limit.def {
            LimitDef::Rate(_) => "rate_limited",
            LimitDef::Volume(_) => "volume_exceeded",
        }
    }

    /// `rate` or `volume`: the `limit` label of `portcullis_limited_total`.
    pub fn metric_label(&self) -> &'static str {
        match self.applied.limit.def {
            LimitDef::Rate(_) => "rate",
            LimitDef::Volume(_) => "volume",
        }
    }

    /// Whole seconds for the `Retry-After` header, rounded up and at least 1 (a header of 0
    /// invites an immediate retry that would be refused again).
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// What the proxy must do after [`decide`] let a call through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Charge {
    /// Rate limits to acquire, in order, before forwarding (an atomic check-and-take in the
    /// store: a read-then-write would let parallel calls all pass).
    pub rates: Vec<(Applied, RateLimit)>,
    /// Volume limits to charge with each body chunk as it streams.
    pub volumes: Vec<(Applied, VolumeLimit)>,
}

impl Charge {
    /// Nothing to do: no limit applies.
    pub fn is_empty(&self) -> bool {
        self.rates.is_empty() && self.volumes.is_empty()
    }
}

/// The limits step's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitDecision {
    /// Go on; the proxy carries out the charge.
    Continue(Charge),
    /// 429 with `Retry-After`.
    Refuse(Refused),
}

/// The request body size a request declares (`Content-Length`), if it declares one.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Decide whether a call may start. Pure: reads volume counters through `view`, changes
/// nothing. Rate limits are not judged here but returned in the [`Charge`], because only an
/// atomic take in the store keeps parallel calls from all passing the same last slot.
///
/// `declared_request_bytes` is the request's `Content-Length`, when it has one: a body larger
/// than what is left of a request budget is refused before anything is sent.
pub fn decide<V: VolumeView + ?Sized>(
    applied: &[Applied],
    view: &V,
    declared_request_bytes: Option<u64>,
) -> LimitDecision {
    let mut charge = Charge::default();
    for a in applied {
        match a.limit.def {
            LimitDef::Rate(r) => charge.rates.push((a.clone(), r)),
            LimitDef::Volume(v) => {
                match view.volume_remaining(&a.key, &v) {
                    Err(retry_after) => {
                        return LimitDecision::Refuse(Refused {
                            applied: a.clone(),
                            retry_after,
                            declared_bytes: None,
                            cut: false,
                        })
                    }
                    Ok(left) => {
                        if let Some(n) = declared_request_bytes {
                            if v.direction.counts(Direction::Request) && n > left {
                                // The view does not say when the window ends; the full
                                // window is a safe upper bound (and a body larger than the
                                // whole budget never passes: the message says so).
                                return LimitDecision::Refuse(Refused {
                                    applied: a.clone(),
                                    retry_after: v.per,
                                    declared_bytes: Some(n),
                                    cut: false,
                                });
                            }
                        }
                    }
                }
                charge.volumes.push((a.clone(), v));
            }
        }
    }
    LimitDecision::Continue(charge)
}

/// What to do with a body chunk after charging it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// Forward it.
    Continue,
    /// Do not forward it; abort the stream (see the module docs).
    Cut(Refused),
}

/// A duration as an SRE writes it: `1s`, `1m`, `1h`, `1.5s`, `400ms`.
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let secs = d.as_secs();
        if d.subsec_nanos() == 0 && secs > 0 {
            for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
                if secs % n == 0 {
                    return write!(f, "{}{unit}", secs / n);
                }
            }
            return write!(f, "{secs}s");
        }
        if d < Duration::from_secs(1) && d.subsec_nanos() % 1_000_000 == 0 {
            return write!(f, "{}ms", d.as_millis());
        }
        // Tenths of a second, rounded up: a retry sooner than this would be refused.
        let tenths = d.as_nanos().div_ceil(100_000_000);
        write!(f, "{}.{}s", tenths / 10, tenths % 10)
    }
}

/// A budget the way it was probably written: `1.0 GiB` for multiples of 1024, else `50.0 MB`.
fn size(n: u64) -> String {
    let b = bytesize::ByteSize(n);
    if n >= 1024 && n % 1024 == 0 {
        b.display().iec().to_string()
    } else {
        b.display().si().to_string()
    }
}

/// "agent `bot` may make", "route `x` allows": who the limit binds, with the verb (`make` for
/// requests, `move` for bytes).
fn whose(key: &LimitKey, verb: &str) -> String {
    let agent = key.agent.as_deref().unwrap_or_default();
    let route = key.route.as_deref().unwrap_or_default();
    match (key.origin, key.scope) {
        (Origin::Agent, Scope::Agent) => format!("agent `{agent}` may {verb}"),
        (Origin::Agent, _) => {
            format!("agent `{agent}` may {verb}, on each route (here `{route}`),")
        }
        (Origin::Route, _) => format!("route `{route}` allows"),
        (Origin::Throttle, _) => {
            format!(
                "agent `{agent}` is throttled for now (a monitoring intervention) and may {verb}"
            )
        }
    }
}

fn suffix(key: &LimitKey) -> &'static str {
    match (key.origin, key.scope) {
        (Origin::Route, Scope::AgentRoute) => " per agent",
        (Origin::Route, _) => " for all agents together",
        (Origin::Agent, Scope::Agent) | (Origin::Throttle, _) => " across all routes",
        _ => "",
    }
}

/// Agent-facing message of a 429 `rate_limited` or `volume_exceeded`, e.g.
/// "route `search` allows 10 requests per 1s per agent; retry after 0.4s".
pub fn refusal_message(r: &Refused) -> String {
    let key = &r.applied.key;
    let retry = Human(r.retry_after);
    match r.applied.limit.def {
        LimitDef::Rate(l) => {
            let burst = if l.burst != l.requests {
                format!(" (at most {} at once)", l.burst)
            } else {
                String::new()
            };
            format!(
                "{} {} requests per {}{}{burst}; this call was refused and nothing was sent to the tool; retry after {retry}, and slow down rather than retry in a loop",
                whose(key, "make"),
                l.requests,
                Human(l.per),
                suffix(key),
            )
        }
        LimitDef::Volume(v) => {
            let what = match v.direction {
                Direction::Request => "request bytes",
                Direction::Response => "response bytes",
                Direction::Both => "request and response bytes",
            };
            let budget = size(v.bytes);
            match r.declared_bytes {
                Some(n) => format!(
                    "{} {budget} of {what} per {}{}, and this call's body is {} (more than is left); it was refused and nothing was sent to the tool; send less data per call, or retry after {retry}",
                    whose(key, "move"),
                    Human(v.per),
                    suffix(key),
                    bytesize::ByteSize(n).display().si(),
                ),
                None if r.cut => format!(
                    "{} {budget} of {what} per {}{}, and this call crossed it: the call was cut off part-way, so the tool may have acted on it; check before repeating a write, and retry after {retry}",
                    whose(key, "move"),
                    Human(v.per),
                    suffix(key),
                ),
                None => format!(
                    "{} {budget} of {what} per {}{}, and that budget is used up; this call was refused and nothing was sent to the tool; retry after {retry}",
                    whose(key, "move"),
                    Human(v.per),
                    suffix(key),
                ),
            }
        }
    }
}

/// The extra fields of a 429 body, beside `error` ([`Refused::code`]), `message`
/// ([`refusal_message`]) and `request_id`: which limit, in machine-readable form, so an agent
/// framework can back off without parsing the sentence. `Retry-After` is
/// [`Refused::retry_after_secs`].
pub fn refusal_fields(r: &Refused) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::json;
    let key = &r.applied.key;
    let mut m = serde_json::Map::new();
    m.insert("limit".into(), json!(r.metric_label()));
    m.insert("limit_path".into(), json!(&*r.applied.limit.path));
    m.insert("scope".into(), json!(key.scope.as_str()));
    if let Some(a) = &key.agent {
        m.insert("agent".into(), json!(&**a));
    }
    if let Some(route) = &key.route {
        m.insert("route".into(), json!(&**route));
    }
    m.insert(
        "retry_after_seconds".into(),
        json!((r.retry_after.as_millis() as f64 / 1000.0).max(0.001)),
    );
    match r.applied.limit.def {
        LimitDef::Rate(l) => {
            m.insert("requests".into(), json!(l.requests));
            m.insert("per_seconds".into(), json!(l.per.as_secs_f64()));
            m.insert("burst".into(), json!(l.burst));
        }
        LimitDef::Volume(v) => {
            m.insert("bytes".into(), json!(v.bytes));
            m.insert("per_seconds".into(), json!(v.per.as_secs_f64()));
            m.insert("direction".into(), json!(v.direction.as_str()));
            if let Some(n) = r.declared_bytes {
                m.insert("declared_bytes".into(), json!(n));
            }
        }
    }
    m
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;

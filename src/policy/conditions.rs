//! Contextual conditions of routes and agents: time windows, client networks, token claims,
//! request facts (size, query, headers, JSON body fields) and CEL expressions.
//!
//! Everything here is compiled at load time ([`crate::config::compile_conditions`]) and checked
//! by the pure [`Conditions::check`]: no I/O, no clock (the time is a fact), no `.await`.
//!
//! # Fail closed
//!
//! A condition that cannot be decided fails: an unknown client address, a body that was needed
//! but not read, too large or not JSON, a claim of the wrong type, a header or query parameter
//! sent more than once, a CEL expression that errors or does not return a boolean. Values are
//! never converted: the string `"100"` is not the number `100`, and a list claim never equals a
//! scalar.
//!
//! # Order and outcome
//!
//! Typed conditions run before CEL ones (they are cheap); within each group, file order. The
//! first condition with `on_fail: deny` that fails ends the check ([`ConditionOutcome::Deny`]);
//! a failing `on_fail: approve` condition is remembered and the check goes on, since a later
//! deny must win over a step-up. The trace lists every condition that ran.
//!
//! # Calling it
//!
//! A route's and an agent's conditions are both [`Conditions`]. Before the check, the proxy
//! asks [`Conditions::needs_body`] of both; when either is `Some(max)`, it buffers up to `max`
//! bytes and parses them with [`parse_json_body`] into a [`BodyFact`] (`TooLarge` past the
//! limit, `NotJson` on a parse error). It then fills one [`ConditionFacts`] and calls
//! [`Conditions::check`] on each; a `Deny` from either wins over a `RequireApproval`.
//! `client_ip` is the effective client address: choosing it (TCP peer, or `X-Forwarded-For`
//! behind trusted proxies) is the proxy's job, not this module's.

use chrono::{Datelike, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use http::{HeaderMap, HeaderName, Method};
use ipnet::IpNet;
use regex::Regex;
use serde_json::{Map, Number, Value};
use smallvec::SmallVec;
use std::cmp::Ordering;
use std::fmt;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Default for `max_body_bytes` of `json` conditions and CEL expressions reading the body.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024;

/// Longest attacker-controlled text quoted in a reason; longer values are cut with `…`.
const MAX_QUOTED: usize = 64;

/// What the request body looks like to the conditions. The proxy fills it: it buffers the body
/// when [`Conditions::needs_body`] asks for it and parses it with [`parse_json_body`].
#[derive(Debug, Clone, Copy)]
pub enum BodyFact<'a> {
    /// The body was not buffered (no condition asked, or the request has none).
    NotRead,
    /// The body is larger than the limit the conditions asked for.
    TooLarge,
    /// The body is not acceptable JSON; the text says why.
    NotJson(&'a str),
    /// The parsed body.
    Json(&'a Value),
}

/// The facts of one request that conditions read. Everything is borrowed: the proxy owns it.
/// (`Debug` leaves out header values and claims: they hold credentials.)
#[derive(Clone, Copy)]
pub struct ConditionFacts<'a> {
    /// The time of the decision.
    pub now: SystemTime,
    /// The effective client address (TCP peer, or the address trusted proxies forwarded);
    /// `None` when unknown.
    pub client_ip: Option<IpAddr>,
    /// Request method.
    pub method: &'a Method,
    /// Normalized path.
    pub path: &'a str,
    /// Raw query string (without `?`), if any.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Body length: `Content-Length`, or the buffered length; `None` when unknown (chunked).
    pub body_len: Option<u64>,
    /// The verified token's claims.
    pub claims: &'a Map<String, Value>,
    /// The calling agent's id.
    pub agent: &'a str,
    /// The body, as far as it was read.
    pub body: BodyFact<'a>,
}

impl fmt::Debug for ConditionFacts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionFacts")
            .field("now", &self.now)
            .field("client_ip", &self.client_ip)
            .field("method", self.method)
            .field("path", &self.path)
            .field("headers", &self.headers.len())
            .field("body_len", &self.body_len)
            .field("claims", &self.claims.len())
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// Headers CEL expressions never see: the agent's own credential must not reach an expression
/// whose error text could quote it into a refusal or a log line. Its claims are `token.claims`.
const CEL_HIDDEN_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// What a failing condition does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFail {
    /// Refuse the call (default).
    #[default]
    Deny,
    /// Hold the call for human approval (step-up).
    Approve,
}

/// The result of checking all the conditions of a route or agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionOutcome {
    /// Every condition passed.
    Pass,
    /// A condition with `on_fail: deny` failed.
    Deny {
        /// Name of the condition.
        condition: Arc<str>,
        /// Why it failed, readable by a person or an LLM.
        reason: String,
    },
    /// No deny, but a condition with `on_fail: approve` failed: the call needs approval.
    RequireApproval {
        /// Name of the (first) condition that asked for approval.
        condition: Arc<str>,
        /// Why it failed.
        reason: String,
    },
}

/// One condition that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionTrace {
    /// Name of the condition.
    pub condition: Arc<str>,
    /// Did it pass?
    pub passed: bool,
    /// What its failure means.
    pub on_fail: OnFail,
    /// Why it failed (`None` when it passed).
    pub reason: Option<String>,
}

/// The outcome and the trace of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionReport {
    /// Pass, deny or require approval.
    pub outcome: ConditionOutcome,
    /// Every condition that ran, in the order it ran.
    pub trace: SmallVec<[ConditionTrace; 4]>,
}

/// The compiled conditions of one route or agent (empty: nothing to check).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    list: Arc<[Condition]>,
    needs_body: Option<u64>,
}

/// One compiled condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub(crate) name: Arc<str>,
    pub(crate) on_fail: OnFail,
    pub(crate) kind: ConditionKind,
}

/// The kinds of condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKind {
    /// Days and hours in a time zone.
    Time(TimeWindow),
    /// Client address in / not in networks.
    Network(NetworkRule),
    /// A token claim.
    Claim(ValueTest),
    /// A JSON body field.
    Json(JsonTest),
    /// A query parameter.
    Query(ParamTest),
    /// A header.
    Header(ParamTest),
    /// Largest body, in bytes.
    MaxBodyBytes(u64),
    /// A CEL expression.
    Cel(CelCondition),
}

impl Conditions {
    /// Wrap compiled conditions; typed ones are moved before CEL ones (stable), see the module
    /// docs.
    pub fn new(mut list: Vec<Condition>) -> Conditions {
        list.sort_by_key(|c| matches!(c.kind, ConditionKind::Cel(_)));
        let needs_body = list
            .iter()
            .filter_map(|c| match &c.kind {
                ConditionKind::Json(j) => Some(j.max_body_bytes),
                ConditionKind::Cel(c) if c.uses.body => Some(c.max_body_bytes),
                _ => None,
            })
            .max();
        Conditions {
            list: list.into(),
            needs_body,
        }
    }

    /// No conditions at all.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many conditions.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The conditions, in the order they are checked.
    pub fn iter(&self) -> impl Iterator<Item = &Condition> {
        self.list.iter()
    }

    /// `Some(max bytes)` when a condition reads the JSON body: the proxy must buffer up to that
    /// many bytes and pass [`BodyFact::Json`] (or why not). `None`: the body is never read.
    pub fn needs_body(&self) -> Option<u64> {
        self.needs_body
    }

    /// Check every condition against the facts; see the module docs for order and outcome.
    pub fn check(&self, facts: &ConditionFacts<'_>) -> ConditionReport {
        let mut trace = SmallVec::new();
        let mut approval: Option<(Arc<str>, String)> = None;
        for c in self.list.iter() {
            let result = c.kind.check(facts);
            let passed = result.is_ok();
            let reason = result.err();
            trace.push(ConditionTrace {
                condition: c.name.clone(),
                passed,
                on_fail: c.on_fail,
                reason: reason.clone(),
            });
            if let Some(reason) = reason {
                match c.on_fail {
                    OnFail::Deny => {
                        return ConditionReport {
                            outcome: ConditionOutcome::Deny {
                                condition: c.name.clone(),
                                reason,
                            },
                            trace,
                        }
                    }
                    OnFail::Approve => {
                        if approval.is_none() {
                            approval = Some((c.name.clone(), reason));
                        }
                    }
                }
            }
        }
        let outcome = match approval {
            None => ConditionOutcome::Pass,
            Some((condition, reason)) => ConditionOutcome::RequireApproval { condition, reason },
        };
        ConditionReport { outcome, trace }
    }
}

impl Condition {
    /// Its name (the configured `name`, or `<kind>[<index>]`).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// What its failure means.
    pub fn on_fail(&self) -> OnFail {
        self.on_fail
    }

    /// The kind and its settings.
    pub fn kind(&self) -> &ConditionKind {
        &self.kind
    }
}

impl ConditionKind {
    /// `Ok` when the condition holds, else why not.
    fn check(&self, f: &ConditionFacts<'_>) -> Result<(), String> {
        match self {
            ConditionKind::Time(t) => t.check(f.now),
            ConditionKind::Network(n) => n.check(f.client_ip),
            ConditionKind::Claim(t) => t.check(f.claims.get(t.path[0].as_str()), "claim "),
            ConditionKind::Json(j) => j.check(f.body),
            ConditionKind::Query(p) => p.check_query(f.query),
            ConditionKind::Header(p) => p.check_header(f.headers),
            ConditionKind::MaxBodyBytes(max) => match f.body_len {
                Some(n) if n <= *max => Ok(()),
                Some(n) => Err(format!("request body is {n} bytes, limit is {max}")),
                None => Err(format!(
                    "request body size is unknown (no Content-Length), limit is {max} bytes"
                )),
            },
            ConditionKind::Cel(c) => c.check(f),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Time windows

/// Days of the week and hour ranges in a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeWindow {
    /// Bit 0 = Monday .. bit 6 = Sunday.
    pub(crate) days: u8,
    /// `[start, end)` in minutes of the local day; `start > end` crosses midnight, `end` may be
    /// 1440 (`24:00`).
    pub(crate) ranges: Vec<(u16, u16)>,
    pub(crate) zone: Tz,
    /// `Mon-Fri 09:00-18:00 Europe/Paris`, for reasons.
    pub(crate) text: String,
}

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

impl TimeWindow {
    fn check(&self, now: SystemTime) -> Result<(), String> {
        let secs = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).ok(),
            Err(_) => None,
        };
        let Some(local) = secs
            .and_then(|s| Utc.timestamp_opt(s, 0).single())
            .map(|t| t.with_timezone(&self.zone))
        else {
            return Err("the current time is out of range".into());
        };
        let day = local.weekday().num_days_from_monday() as u8;
        let yesterday = (day + 6) % 7;
        let minute = (local.hour() * 60 + local.minute()) as u16;
        let on = |d: u8| self.days & (1 << d) != 0;
        let inside = self.ranges.iter().any(|&(start, end)| {
            if start < end {
                on(day) && start <= minute && minute < end
            } else {
                // Crossing midnight: the early hours belong to the day the window began on.
                (on(day) && minute >= start) || (on(yesterday) && minute < end)
            }
        });
        if inside {
            Ok(())
        } else {
            Err(format!(
                "outside the allowed hours {} (now {} {:02}:{:02})",
                self.text,
                DAY_NAMES[day as usize],
                local.hour(),
                local.minute()
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Networks

/// Allowed and denied networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRule {
    /// Empty = any address (only `not_from` applies).
    pub(crate) from: Vec<IpNet>,
    pub(crate) not_from: Vec<IpNet>,
}

impl NetworkRule {
    fn check(&self, ip: Option<IpAddr>) -> Result<(), String> {
        let Some(ip) = ip else {
            return Err("the client address is unknown".into());
        };
        // `::ffff:10.1.2.3` is the IPv4 client 10.1.2.3 on a dual-stack socket: judged as IPv4,
        // so neither an IPv4 allow-list misses it nor an IPv4 deny-list lets it through.
        let ip = ip.to_canonical();
        if let Some(net) = self.not_from.iter().find(|n| n.contains(&ip)) {
            return Err(format!("client {ip} is in the denied network {net}"));
        }
        if self.from.is_empty() || self.from.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        Err(format!(
            "client {ip} is not in the allowed networks {}",
            join(&self.from)
        ))
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    let mut s = String::new();
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{x}");
    }
    s
}

/// IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) as the IPv4 networks they denote, so that
/// they match canonicalized client addresses.
pub(crate) fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), true) = (v6.addr().to_ipv4_mapped(), v6.prefix_len() >= 96) {
            if let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                return IpNet::V4(n);
            }
        }
    }
    net
}

// ---------------------------------------------------------------------------------------------
// Claims and JSON body fields

/// A numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
}

impl Cmp {
    fn holds(self, o: Ordering) -> bool {
        match self {
            Cmp::Gt => o == Ordering::Greater,
            Cmp::Gte => o != Ordering::Less,
            Cmp::Lt => o == Ordering::Less,
            Cmp::Lte => o != Ordering::Greater,
        }
    }
    fn symbol(self) -> &'static str {
        match self {
            Cmp::Gt => ">",
            Cmp::Gte => ">=",
            Cmp::Lt => "<",
            Cmp::Lte => "<=",
        }
    }
    /// The relation that holds when the comparison fails, for reasons (`250 > 100`).
    fn negated_symbol(self) -> &'static str {
        match self {
            Cmp::Gt => "<=",
            Cmp::Gte => "<",
            Cmp::Lt => ">=",
            Cmp::Lte => ">",
        }
    }
}

/// Tests of one JSON value found at a dotted path; all set tests must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValueTest {
    /// Path segments, at least one.
    pub(crate) path: Vec<String>,
    /// The dotted path, for reasons.
    pub(crate) label: String,
    pub(crate) equals: Option<Value>,
    pub(crate) any_of: Vec<Value>,
    pub(crate) contains: Option<Value>,
    pub(crate) cmp: Vec<(Cmp, Number)>,
    pub(crate) present: Option<bool>,
}

impl ValueTest {
    /// `first` is the value of the first path segment; `what` prefixes the label in reasons.
    fn check(&self, first: Option<&Value>, what: &str) -> Result<(), String> {
        let mut v = first;
        for seg in &self.path[1..] {
            v = match v {
                Some(Value::Object(m)) => m.get(seg.as_str()),
                _ => None,
            };
        }
        // null is "not set": a field sent as null must not satisfy `present: true`.
        let v = v.filter(|v| !v.is_null());
        let label = &self.label;
        let Some(v) = v else {
            return match self.present {
                Some(false) => Ok(()),
                _ => Err(format!("{what}{label} is missing")),
            };
        };
        if self.present == Some(false) {
            return Err(format!("{what}{label} is present, must be absent"));
        }
        if let Some(want) = &self.equals {
            if !same(v, want) {
                return Err(format!(
                    "{what}{label} is {}, needs {}",
                    show(v),
                    show(want)
                ));
            }
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(|w| same(v, w)) {
            let opts: Vec<String> = self.any_of.iter().map(show).collect();
            return Err(format!(
                "{what}{label} is {}, needs one of {}",
                show(v),
                opts.join(", ")
            ));
        }
        if let Some(want) = &self.contains {
            match v {
                Value::Array(items) if items.iter().any(|i| same(i, want)) => {}
                Value::Array(_) => {
                    return Err(format!("{what}{label} does not contain {}", show(want)))
                }
                _ => {
                    return Err(format!(
                        "{what}{label} is {}, needs a list containing {}",
                        show(v),
                        show(want)
                    ))
                }
            }
        }
        for (op, bound) in &self.cmp {
            let Value::Number(n) = v else {
                return Err(format!(
                    "{what}{label} is {}, needs a number {} {bound}",
                    show(v),
                    op.symbol()
                ));
            };
            match compare_numbers(n, bound) {
                Some(o) if op.holds(o) => {}
                _ => return Err(format!("{what}{label} {n} {} {bound}", op.negated_symbol())),
            }
        }
        Ok(())
    }
}

/// Equality without conversion: numbers compare by value (`100` = `100.0`), everything else
/// by type and value; lists and objects never equal a configured scalar.
fn same(v: &Value, want: &Value) -> bool {
    match (v, want) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b) == Some(Ordering::Equal),
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        _ => false,
    }
}

/// Exact for integers of either sign (no f64 rounding at 2^53), f64 otherwise.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(a), int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// A value as a reason shows it: strings in backticks, cut and without control characters
/// (they come from the agent and end up in logs), lists and objects by their kind only.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{}`", quote(s)),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn quote(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_QUOTED)
        .map(|c| if c.is_control() || c == '`' { '?' } else { c })
        .collect();
    if s.chars().nth(MAX_QUOTED).is_some() {
        out.push('…');
    }
    out
}

/// A [`ValueTest`] on the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonTest {
    pub(crate) test: ValueTest,
    pub(crate) max_body_bytes: u64,
}

impl JsonTest {
    fn check(&self, body: BodyFact<'_>) -> Result<(), String> {
        let label = &self.test.label;
        match body {
            BodyFact::Json(Value::Object(m)) => {
                self.test.check(m.get(self.test.path[0].as_str()), "")
            }
            BodyFact::Json(other) => Err(format!(
                "body field {label} cannot be read: the body is {}, not a JSON object",
                show(other)
            )),
            BodyFact::NotRead => Err(format!(
                "body field {label} cannot be checked: the request has no JSON body"
            )),
            BodyFact::TooLarge => Err(format!(
                "body field {label} cannot be checked: the body is larger than {} bytes",
                self.max_body_bytes
            )),
            BodyFact::NotJson(why) => Err(format!(
                "body field {label} cannot be checked: the body is not valid JSON ({})",
                quote(why)
            )),
        }
    }
}

/// Parse a buffered body for the conditions. Stricter than `serde_json::from_slice`: a key
/// repeated in any object is refused, since the gateway and the upstream could each believe a
/// different copy (`{"amount": 5, "amount": 5000}`).
pub fn parse_json_body(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = <Strict as serde::Deserialize>::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v.0)
}

/// A JSON value whose objects have no repeated keys.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom(format!(
                    "key `{}` appears more than once",
                    quote(&k)
                )));
            }
            out.insert(k, v);
        }
        Ok(Strict(Value::Object(out)))
    }
}

// ---------------------------------------------------------------------------------------------
// Query parameters and headers

/// Tests of one query parameter or header. All set tests must hold, and the parameter or header
/// must appear at most once: with two copies the gateway and the upstream may read different
/// ones (parameter pollution).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamTest {
    /// Decoded parameter name, or lowercase header name.
    pub(crate) name: String,
    /// The header name, parsed once (headers only).
    pub(crate) header: Option<HeaderName>,
    pub(crate) equals: Option<String>,
    pub(crate) any_of: Vec<String>,
    pub(crate) present: Option<bool>,
    pub(crate) regex: Option<AnchoredRegex>,
}

/// A regex anchored at both ends; compared by its source.
#[derive(Debug, Clone)]
pub struct AnchoredRegex(pub(crate) Regex);

impl PartialEq for AnchoredRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}
impl Eq for AnchoredRegex {}

impl ParamTest {
    fn check_header(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(name) = &self.header else {
            return Err("header condition without a header name".into());
        };
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        let more = values.count();
        let value = match first {
            None => None,
            Some(v) => match v.to_str() {
                Ok(s) => Some(s),
                Err(_) => {
                    return Err(format!("header {} is not printable text", self.name));
                }
            },
        };
        self.judge("header", value, 1 + more)
    }

    fn check_query(&self, query: Option<&str>) -> Result<(), String> {
        let mut found: Option<std::borrow::Cow<'_, str>> = None;
        let mut count = 0;
        if let Some(q) = query {
            // Names are compared decoded, so `%61mount=` is `amount=` as the upstream reads it.
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                if k == self.name.as_str() {
                    count += 1;
                    if found.is_none() {
                        found = Some(v);
                    }
                }
            }
        }
        self.judge("query parameter", found.as_deref(), count.max(1))
    }

    /// `count` is the number of copies (≥ 1 when `value` is set).
    fn judge(&self, what: &str, value: Option<&str>, count: usize) -> Result<(), String> {
        let name = &self.name;
        let Some(value) = value else {
            return match self.present {
                Some(false) => Ok(()),
                _ => Err(format!("{what} {name} is missing")),
            };
        };
        if self.present == Some(false) {
            return Err(format!("{what} {name} is present, must be absent"));
        }
        if count > 1 {
            return Err(format!(
                "{what} {name} is sent {count} times, must be sent once"
            ));
        }
        if let Some(want) = &self.equals {
            if value != want {
                return Err(format!(
                    "{what} {name} is `{}`, needs `{want}`",
                    quote(value)
                ));
            }
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(|w| w == value) {
            return Err(format!(
                "{what} {name} is `{}`, needs one of {}",
                quote(value),
                self.any_of
                    .iter()
                    .map(|w| format!("`{w}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(AnchoredRegex(rx)) = &self.regex {
            if !rx.is_match(value) {
                return Err(format!(
                    "{what} {name} is `{}`, does not match {}",
                    quote(value),
                    rx.as_str()
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// CEL

/// The one CEL environment (standard library and macros), built once.
pub(crate) static CEL_ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// The variables a CEL expression may read.
pub const CEL_VARIABLES: [&str; 5] = ["request", "token", "agent", "client", "now"];

/// Which facts an expression reads, so only those are converted for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CelUses {
    pub(crate) request: bool,
    pub(crate) query: bool,
    pub(crate) headers: bool,
    pub(crate) body: bool,
    pub(crate) token: bool,
    pub(crate) agent: bool,
    pub(crate) client: bool,
    pub(crate) now: bool,
}

/// A compiled CEL expression; compared by its source.
#[derive(Debug, Clone)]
pub struct CelCondition {
    pub(crate) source: String,
    /// Lowercase source, to tell whether a repeated header or parameter is one it may name.
    pub(crate) source_lower: String,
    pub(crate) program: Arc<cel::Program>,
    pub(crate) uses: CelUses,
    pub(crate) max_body_bytes: u64,
}

impl PartialEq for CelCondition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.max_body_bytes == other.max_body_bytes
    }
}
impl Eq for CelCondition {}

impl CelCondition {
    /// Compile `source`; the error is readable and names the line and column of a syntax error.
    pub fn compile(source: &str, max_body_bytes: u64) -> Result<CelCondition, String> {
        let program = CEL_ENV.compile(source).map_err(|e| {
            // One line per error, positions within the expression (the config issue carries
            // the file line).
            e.errors
                .iter()
                .map(|e| format!("expression line {} column {}: {}", e.pos.0, e.pos.1, e.msg))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let refs = program.references();
        let mut unknown: Vec<&str> = refs
            .variables()
            .into_iter()
            .filter(|v| !CEL_VARIABLES.contains(v))
            .collect();
        unknown.sort_unstable();
        // Comprehension variables (`x` in `list.all(x, ...)`) show up as references too;
        // they are bound inside their macro, so only reject names that are never bound.
        unknown.retain(|v| !binds_variable(source, v));
        if let Some(v) = unknown.first() {
            return Err(format!(
                "unknown variable `{v}`; the variables are {}",
                CEL_VARIABLES.join(", ")
            ));
        }
        // Conservative, by text: a part of `request` is built when its word appears anywhere
        // in the expression (also as `request["body"]`).
        let uses = CelUses {
            request: refs.has_variable("request"),
            query: source.contains("query"),
            headers: source.contains("headers"),
            body: source.contains("body"),
            token: refs.has_variable("token"),
            agent: refs.has_variable("agent"),
            client: refs.has_variable("client"),
            now: refs.has_variable("now"),
        };
        Ok(CelCondition {
            source: source.to_string(),
            source_lower: source.to_ascii_lowercase(),
            program: Arc::new(program),
            uses: CelUses {
                body: uses.request && uses.body,
                query: uses.request && uses.query,
                headers: uses.request && uses.headers,
                ..uses
            },
            max_body_bytes,
        })
    }

    fn check(&self, f: &ConditionFacts<'_>) -> Result<(), String> {
        let mut ctx = cel::Context::with_env(CEL_ENV.clone());
        if self.uses.request {
            ctx.add_variable_from_value("request", self.request_value(f)?);
        }
        if self.uses.token {
            let claims = cel::to_value(f.claims).map_err(|e| format!("token claims: {e}"))?;
            let mut token = std::collections::HashMap::new();
            token.insert("claims", claims);
            ctx.add_variable_from_value("token", token);
        }
        if self.uses.agent {
            ctx.add_variable_from_value("agent", f.agent);
        }
        if self.uses.client {
            let ip: cel::Value = match f.client_ip {
                Some(ip) => ip.to_canonical().to_string().into(),
                None => cel::Value::Null,
            };
            let mut client = std::collections::HashMap::new();
            client.insert("ip", ip);
            ctx.add_variable_from_value("client", client);
        }
        if self.uses.now {
            let t: chrono::DateTime<Utc> = f.now.into();
            ctx.add_variable_from_value("now", cel::Value::Timestamp(t.fixed_offset()));
        }
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(true)) => Ok(()),
            Ok(cel::Value::Bool(false)) => Err(format!("expression is false: {}", self.source)),
            Ok(other) => Err(format!(
                "expression returned {}, not a boolean: {}",
                other.type_of(),
                self.source
            )),
            Err(e) => Err(format!(
                "expression failed ({}): {}",
                quote(&e.to_string()),
                self.source
            )),
        }
    }

    /// `request`: method, path, and the parts the expression may read.
    fn request_value(&self, f: &ConditionFacts<'_>) -> Result<cel::Value, String> {
        use std::collections::HashMap;
        let mut r: HashMap<&str, cel::Value> = HashMap::new();
        r.insert("method", f.method.as_str().into());
        r.insert("path", f.path.into());
        if self.uses.query {
            let mut q: HashMap<String, cel::Value> = HashMap::new();
            for (k, v) in form_urlencoded::parse(f.query.unwrap_or("").as_bytes()) {
                if q.contains_key(k.as_ref()) {
                    if self.mentions(&k) {
                        return Err(format!(
                            "query parameter {} is sent more than once",
                            quote(&k)
                        ));
                    }
                    continue;
                }
                q.insert(k.into_owned(), v.into_owned().into());
            }
            r.insert("query", q.into());
        }
        if self.uses.headers {
            let mut h: HashMap<String, cel::Value> = HashMap::new();
            for name in f.headers.keys() {
                if CEL_HIDDEN_HEADERS.contains(&name.as_str()) {
                    continue;
                }
                let mut all = f.headers.get_all(name).iter();
                let first = all.next();
                if all.next().is_some() && self.mentions(name.as_str()) {
                    return Err(format!("header {} is sent more than once", name.as_str()));
                }
                // Values that are not text are left out: reading them errors, failing closed.
                if let Some(Ok(v)) = first.map(|v| v.to_str()) {
                    h.insert(name.as_str().to_string(), v.into());
                }
            }
            r.insert("headers", h.into());
        }
        if self.uses.body {
            match f.body {
                BodyFact::Json(v) => {
                    r.insert(
                        "body",
                        cel::to_value(v).map_err(|e| format!("request body: {e}"))?,
                    );
                }
                BodyFact::NotRead => {
                    return Err(
                        "the expression reads the body; the request has no JSON body".into(),
                    )
                }
                BodyFact::TooLarge => {
                    return Err(format!(
                        "the expression reads the body; the body is larger than {} bytes",
                        self.max_body_bytes
                    ))
                }
                BodyFact::NotJson(why) => {
                    return Err(format!(
                        "the expression reads the body; the body is not valid JSON ({})",
                        quote(why)
                    ))
                }
            }
        }
        Ok(r.into())
    }

    /// May the expression name `name`? (A repeated header or parameter only fails the check
    /// when it could be the one the expression reads.)
    fn mentions(&self, name: &str) -> bool {
        self.source_lower.contains(&name.to_ascii_lowercase())
    }
}

/// Is `v` bound by a macro in `source`, as in `.all(v, ...)`, `.exists(v, ...)`, `.map(v, ...)`?
fn binds_variable(source: &str, v: &str) -> bool {
    ["all", "exists", "exists_one", "map", "filter"]
        .iter()
        .any(|m| {
            let pat = format!(".{m}(");
            source.match_indices(&pat).any(|(i, _)| {
                source[i + pat.len()..]
                    .trim_start()
                    .strip_prefix(v)
                    .is_some_and(|rest| rest.trim_start().starts_with(','))
            })
        })
}

#[cfg(test)]
#[path = "conditions_tests.rs"]
mod tests;

//! Raw `conditions:` entries of routes and agents, as written in `gateway.yaml`.
//!
//! One entry is one condition: exactly one kind key (`time`, `network`, `claim`, `json`,
//! `query`, `header`, `max_body_bytes`, `cel`) plus the optional `name` and `on_fail`. A flat
//! struct rather than a serde enum, so that a typo is reported as an unknown field of the entry
//! and "two kinds in one entry" as a clear compile error with its path.
//! [`crate::config::compile_conditions`] interprets them.

use serde::Deserialize;

/// One entry of a `conditions:` list.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    /// Shown in refusals and the access log; default `<kind>[<index>]`.
    pub name: Option<String>,
    /// `deny` (default) or `approve`: a failed condition refuses the call, or holds it for
    /// human approval (step-up).
    pub on_fail: Option<String>,
    /// Days and hours in a time zone.
    pub time: Option<RawTimeCondition>,
    /// The client's address against CIDR lists.
    pub network: Option<RawNetworkCondition>,
    /// A claim of the verified token.
    pub claim: Option<RawValueTest>,
    /// A field of the JSON request body (the body is buffered up to `max_body_bytes`).
    pub json: Option<RawValueTest>,
    /// A query parameter.
    pub query: Option<RawParamTest>,
    /// A request header.
    pub header: Option<RawParamTest>,
    /// Largest request body allowed, in bytes (by `Content-Length`, or the buffered length).
    pub max_body_bytes: Option<u64>,
    /// A CEL expression that must evaluate to `true`.
    pub cel: Option<RawCel>,
}

/// `time: {days: [mon-fri], hours: "09:00-18:00", zone: Europe/Paris}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeCondition {
    /// `mon`..`sun` (or full names), and ranges such as `mon-fri`; absent = every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// One range `HH:MM-HH:MM` or a list of them; a range may cross midnight
    /// (`22:00-06:00`); absent = all day.
    pub hours: Option<RawHours>,
    /// IANA time zone name, e.g. `Europe/Paris` or `UTC`.
    pub zone: String,
}

/// One hour range or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawHours {
    /// `"09:00-18:00"`
    One(String),
    /// `["09:00-12:00", "13:00-18:00"]`
    Many(Vec<String>),
}

/// `network: {from: [10.0.0.0/8], not_from: [10.6.0.0/16]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetworkCondition {
    /// The client must be in one of these networks (CIDR or a single address); empty = any.
    #[serde(default)]
    pub from: Vec<String>,
    /// The client must be in none of these.
    #[serde(default)]
    pub not_from: Vec<String>,
}

/// A test of one JSON value: a token claim (`name`) or a body field (`field`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawValueTest {
    /// Claim path, dotted (`act.sub`); only for `claim`.
    pub name: Option<String>,
    /// Body field path, dotted (`payment.amount`); only for `json`.
    pub field: Option<String>,
    /// Must equal this string, number or boolean (no conversion: `"100"` is not `100`).
    pub equals: Option<serde_json::Value>,
    /// Must equal one of these.
    #[serde(rename = "in")]
    pub any_of: Option<Vec<serde_json::Value>>,
    /// The value is a list that must contain this.
    pub contains: Option<serde_json::Value>,
    /// Numeric comparisons (the value must be a JSON number).
    pub gt: Option<serde_json::Number>,
    /// Greater or equal.
    pub gte: Option<serde_json::Number>,
    /// Less than.
    pub lt: Option<serde_json::Number>,
    /// Less or equal.
    pub lte: Option<serde_json::Number>,
    /// `true`: must be present (not null); `false`: must be absent.
    pub present: Option<bool>,
    /// `json` only: most body bytes buffered to read the field (default 65536).
    pub max_body_bytes: Option<u64>,
}

/// A test of a query parameter or header.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawParamTest {
    /// Parameter name (decoded) or header name (any case).
    pub name: String,
    /// Must equal this text.
    pub equals: Option<String>,
    /// Must equal one of these.
    #[serde(rename = "in")]
    pub any_of: Option<Vec<String>>,
    /// `true`: must be present; `false`: must be absent.
    pub present: Option<bool>,
    /// Regex the whole value must match.
    pub regex: Option<String>,
}

/// A CEL expression, alone or with the body size it may read.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawCel {
    /// `cel: 'request.method == "GET"'`
    Expr(String),
    /// `cel: {expr: '...', max_body_bytes: 4096}`
    Detailed(RawCelDetailed),
}

/// CEL with settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCelDetailed {
    /// The expression.
    pub expr: String,
    /// Most body bytes buffered when the expression reads `request.body` (default 65536).
    pub max_body_bytes: Option<u64>,
}

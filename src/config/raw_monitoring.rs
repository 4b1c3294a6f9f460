//! Raw `monitoring:` section, as written in `gateway.yaml`:
//!
//! ```yaml
//! monitoring:
//!   mode: enforce              # or shadow: detections only log and alert
//!   detectors:                 # absent = off; `{}` = on with defaults
//!     first_seen:   {warmup: 1h, min_calls: 50, mode: shadow}
//!     rate:         {window: 1m, z: 4.0, min_windows: 10, min_calls: 20}
//!     denial_burst: {denials: 10, window: 1m, codes: [insufficient_scope, no_route]}
//!     volume:       {window: 1m, z: 4.0, min_windows: 10, max_bytes: 50MB}
//!     off_hours:    {zone: Europe/Paris, min_days: 7, min_calls: 100}
//!     sensitive_sequence: {from: private_data, to: egress, within: 10m}
//!   playbooks:
//!     - name: contain-supervised
//!       tiers: [supervised]
//!       detectors: [denial_burst, sensitive_sequence]
//!       window: 1h
//!       cooldown: 5m
//!       steps:
//!         - [alert]
//!         - [alert, {throttle: {requests: 10, per: 1m, for: 30m}}]
//!         - [alert, {step_up: 1h}]
//!         - [alert, pause]
//! ```
//!
//! Interpreted by [`super::compile_monitoring`]; what each field means is documented on
//! [`crate::observe::anomaly`].

use super::raw_limits::RawSize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// The `monitoring:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitoring {
    /// `enforce` (default) or `shadow`.
    pub mode: Option<String>,
    /// The detectors that run; each absent one is off.
    #[serde(default)]
    pub detectors: RawDetectors,
    /// What to do about detections, first match wins.
    #[serde(default)]
    pub playbooks: Vec<RawPlaybook>,
    /// Where `alert` actions are sent.
    pub alerts: Option<RawAlerts>,
}

/// `monitoring.alerts`: the security team's webhook and each owner's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// Receives every alert.
    pub webhook: Option<super::raw::RawWebhook>,
    /// Owner (as `agents[].owner` names them) → webhook for alerts about their agents.
    #[serde(default)]
    pub owners: std::collections::BTreeMap<String, super::raw::RawWebhook>,
}

/// `monitoring.detectors`: one optional entry per detector.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDetectors {
    /// A route or upstream the agent never used.
    pub first_seen: Option<RawFirstSeen>,
    /// Calls per window against the agent's baseline.
    pub rate: Option<RawRate>,
    /// Many refusals in a short time.
    pub denial_burst: Option<RawDenialBurst>,
    /// Bytes per window against the baseline or a budget.
    pub volume: Option<RawVolume>,
    /// A call at an hour of the day the agent is never active.
    pub off_hours: Option<RawOffHours>,
    /// A `to`-tagged call soon after a `from`-tagged one.
    pub sensitive_sequence: Option<RawSequence>,
}

/// `first_seen: {warmup, min_calls, mode}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFirstSeen {
    /// Learning time from the agent's first call (default `1h`).
    pub warmup: Option<String>,
    /// Calls before the warm-up can end (default 50).
    pub min_calls: Option<u64>,
    /// `enforce` (default) or `shadow`.
    pub mode: Option<String>,
}

/// `rate: {window, z, min_windows, min_calls, mode}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// Window length (default `1m`).
    pub window: Option<String>,
    /// Spreads above the mean that fire (default 4.0).
    pub z: Option<f64>,
    /// Learned windows before firing (default 10).
    pub min_windows: Option<u64>,
    /// Fewest calls in a window that can fire (default 20).
    pub min_calls: Option<u64>,
    /// `enforce` (default) or `shadow`.
    pub mode: Option<String>,
}

/// `denial_burst: {denials, window, codes, mode}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDenialBurst {
    /// Refusals within `window` that fire (default 10).
    pub denials: Option<u64>,
    /// Sliding window (default `1m`).
    pub window: Option<String>,
    /// Refusal codes that count (default: the authorization refusals).
    pub codes: Option<Vec<String>>,
    /// `enforce` (default) or `shadow`.
    pub mode: Option<String>,
}

/// `volume: {window, z, min_windows, min_bytes, max_bytes, mode}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolume {
    /// Window length (default `1m`).
    pub window: Option<String>,
    /// Spreads above the mean that fire (default 4.0).
    pub z: Option<f64>,
    /// Learned windows before the baseline can fire (default 10).
    pub min_windows: Option<u64>,
    /// Fewest bytes in a window that can fire on the baseline (default `1MB`).
    pub min_bytes: Option<RawSize>,
    /// Absolute budget of request + response bytes per window (`50MB`, `1GiB`, a number).
    pub max_bytes: Option<RawSize>,
    /// `enforce` (default) or `shadow`.
    pub mode: Option<String>,
}

/// `off_hours: {zone, min_days, min_calls, mode}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOffHours {
    /// IANA time zone (default `UTC`).
    pub zone: Option<String>,
    /// Days of history before firing (default 7).
    pub min_days: Option<u64>,
    /// Calls of history before firing (default 100).
    pub min_calls: Option<u64>,
    /// `enforce` (default) or `shadow`.
    pub mode: Option<String>,
}

/// `sensitive_sequence: {from, to, within, mode}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSequence {
    /// Route tag of the first call (required).
    pub from: Option<String>,
    /// Route tag of the second call (required).
    pub to: Option<String>,
    /// Longest time between them (default `10m`).
    pub within: Option<String>,
    /// `enforce` (default) or `shadow`.
    pub mode: Option<String>,
}

/// One `playbooks[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlaybook {
    /// Unique name.
    pub name: String,
    /// Tiers it applies to (`standard`, `supervised`).
    pub tiers: Option<Vec<String>>,
    /// Agent ids it applies to.
    pub agents: Option<Vec<String>>,
    /// Detectors it handles (default: all).
    pub detectors: Option<Vec<String>>,
    /// Escalation window (default `1h`).
    pub window: Option<String>,
    /// Time before an action of the same kind repeats (default `5m`; `0s`: never held back).
    pub cooldown: Option<String>,
    /// Lists of actions; the n-th detection in the window runs the n-th.
    #[serde(default)]
    pub steps: Vec<Vec<RawAction>>,
}

/// One action of a step: a bare name (`log`, `alert`, `pause`, `revoke`) or a one-key map
/// (`{throttle: {...}}`, `{step_up: 1h}`).
#[derive(Debug, Clone)]
pub enum RawAction {
    /// `alert`
    Name(String),
    /// `{throttle: ...}` or `{step_up: ...}`
    With(RawActionWith),
}

/// The map form of an action.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawActionWith {
    /// `{throttle: {requests, per, for}}`.
    pub throttle: Option<RawThrottle>,
    /// `{step_up: 1h}`.
    pub step_up: Option<String>,
}

/// `throttle: {requests: 10, per: 1m, for: 30m}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThrottle {
    /// Requests allowed per `per`.
    pub requests: u64,
    /// The period.
    pub per: String,
    /// How long the throttle stays.
    #[serde(rename = "for")]
    pub for_: String,
}

// A hand-written Deserialize rather than `#[serde(untagged)]`: untagged reports any mistake
// inside a map ("unknown field `throtle`") as "data did not match any variant".
impl<'de> Deserialize<'de> for RawAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ActionVisitor;
        impl<'de> Visitor<'de> for ActionVisitor {
            type Value = RawAction;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an action: `log`, `alert`, `pause`, `revoke`, `{throttle: {requests, per, for}}` or `{step_up: <duration>}`",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawAction, E> {
                Ok(RawAction::Name(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawAction, A::Error> {
                RawActionWith::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(RawAction::With)
            }
        }
        d.deserialize_any(ActionVisitor)
    }
}

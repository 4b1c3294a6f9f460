//! Raw `limits:` items, as written under `agents[]` and `routes[]`:
//!
//! ```yaml
//! limits:
//!   - rate: {requests: 100, per: 1m, burst: 20}
//!   - rate: {requests: 10, per: 1s, scope: agent_route}
//!   - volume: {bytes: 50MB, per: 1h, direction: response}
//! ```
//!
//! Interpreted by [`super::compile_limits`].

use serde::Deserialize;

/// One item of a `limits:` list: exactly one of `rate` and `volume`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// A request rate.
    pub rate: Option<RawRate>,
    /// A data volume.
    pub volume: Option<RawVolume>,
}

/// `rate: {requests, per, burst, scope}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// Requests allowed per period.
    pub requests: u64,
    /// The period: `1s`, `1m`, `1h`.
    pub per: String,
    /// Most requests admitted at once (default: `requests`).
    pub burst: Option<u64>,
    /// `agent` (default under an agent), `route` (default under a route) or `agent_route`.
    pub scope: Option<String>,
}

/// A byte count: `50MB`, `1GiB` or a plain integer.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    /// Plain bytes.
    Bytes(u64),
    /// With a unit: `50MB` (10^6), `1GiB` (2^30).
    Text(String),
}

/// `volume: {bytes, per, direction, scope}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolume {
    /// Budget per window.
    pub bytes: RawSize,
    /// The window: `1m`, `1h`, `1d`.
    pub per: String,
    /// `request`, `response` or `both` (default: both, one shared budget).
    pub direction: Option<String>,
    /// As for `rate`.
    pub scope: Option<String>,
}

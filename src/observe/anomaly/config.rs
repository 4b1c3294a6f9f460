//! The compiled `monitoring:` section: which detectors run with which numbers, and the
//! playbooks. Built by [`crate::config::compile_monitoring`]; immutable, shared behind an `Arc`
//! by the [`super::Monitor`] and the [`super::Playbooks`].

use super::playbooks::Action;
use super::DetectorKind;
use chrono_tz::Tz;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Whether detections act (`enforce`) or are only reported (`shadow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Detections go to their playbook with every action it names.
    #[default]
    Enforce,
    /// Detections are reported; their playbook may only log and alert.
    Shadow,
}

impl Mode {
    /// `enforce` or `shadow`, as in the YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// The whole compiled section. [`Default`] is what a file without `monitoring:` means:
/// every detector off and no playbooks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MonitoringConfig {
    /// `monitoring.mode`: [`Mode::Shadow`] makes every detector shadow, whatever its own mode.
    pub mode: Mode,
    /// New route or upstream for an agent, after its warm-up.
    pub first_seen: Option<FirstSeenConfig>,
    /// Calls per window far above the agent's baseline.
    pub rate: Option<WindowedConfig>,
    /// Many refusals in a short time.
    pub denial_burst: Option<DenialBurstConfig>,
    /// Bytes per window far above the agent's baseline, or above an absolute budget.
    pub volume: Option<VolumeConfig>,
    /// A call in a local hour of the day the agent has never been active in.
    pub off_hours: Option<OffHoursConfig>,
    /// A call to a route tagged `to` soon after one tagged `from`.
    pub sensitive_sequence: Option<SequenceConfig>,
    /// In file order; the first that matches a detection handles it.
    pub playbooks: Vec<Playbook>,
}

impl MonitoringConfig {
    /// Whether detections of `kind` are shadow: the global mode or the detector's own says so.
    /// An off detector counts as shadow (it never detects anything anyway).
    pub fn is_shadow(&self, kind: DetectorKind) -> bool {
        if self.mode == Mode::Shadow {
            return true;
        }
        let own = match kind {
            DetectorKind::FirstSeen => self.first_seen.as_ref().map(|d| d.mode),
            DetectorKind::Rate => self.rate.as_ref().map(|d| d.mode),
            DetectorKind::DenialBurst => self.denial_burst.as_ref().map(|d| d.mode),
            DetectorKind::Volume => self.volume.as_ref().map(|d| d.windowed.mode),
            DetectorKind::OffHours => self.off_hours.as_ref().map(|d| d.mode),
            DetectorKind::SensitiveSequence => self.sensitive_sequence.as_ref().map(|d| d.mode),
        };
        own != Some(Mode::Enforce)
    }

    /// Whether any detector is configured: when none is, the proxy builds no call events.
    pub fn any_on(&self) -> bool {
        DetectorKind::ALL.into_iter().any(|k| self.is_on(k))
    }

    /// Whether the detector is configured (present under `monitoring.detectors`).
    pub fn is_on(&self, kind: DetectorKind) -> bool {
        match kind {
            DetectorKind::FirstSeen => self.first_seen.is_some(),
            DetectorKind::Rate => self.rate.is_some(),
            DetectorKind::DenialBurst => self.denial_burst.is_some(),
            DetectorKind::Volume => self.volume.is_some(),
            DetectorKind::OffHours => self.off_hours.is_some(),
            DetectorKind::SensitiveSequence => self.sensitive_sequence.is_some(),
        }
    }
}

/// `detectors.first_seen`.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstSeenConfig {
    /// Learning time from the agent's first observed call (default 1h).
    pub warmup: Duration,
    /// Calls observed before the warm-up can end (default 50).
    pub min_calls: u64,
    /// The detector's own mode (default enforce).
    pub mode: Mode,
}

impl Default for FirstSeenConfig {
    fn default() -> Self {
        FirstSeenConfig {
            warmup: Duration::from_secs(3600),
            min_calls: 50,
            mode: Mode::Enforce,
        }
    }
}

/// `detectors.rate`, and the baseline part of `detectors.volume`.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowedConfig {
    /// Length of the fixed, epoch-aligned windows (default 1m).
    pub window: Duration,
    /// How many spreads above the baseline mean a window must reach (default 4.0).
    pub z: f64,
    /// Busy windows learned before the detector may fire (default 10).
    pub min_windows: u32,
    /// Rate only: fewest calls in a window that can fire (default 20; volume: 0).
    pub min_calls: u64,
    /// The detector's own mode (default enforce).
    pub mode: Mode,
}

impl WindowedConfig {
    /// The defaults of `rate: {}`.
    pub fn rate_default() -> Self {
        WindowedConfig {
            window: Duration::from_secs(60),
            z: 4.0,
            min_windows: 10,
            min_calls: 20,
            mode: Mode::Enforce,
        }
    }

    /// The window in whole milliseconds (compiling refuses windows under one second).
    pub fn window_ms(&self) -> i64 {
        duration_ms(self.window)
    }
}

/// `detectors.volume`.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeConfig {
    /// Window, z, min_windows and mode, as for `rate` (`min_calls` is unused, 0).
    pub windowed: WindowedConfig,
    /// Fewest bytes in a window that can fire on the baseline (default 1 MB): below this a
    /// window is not worth a detection however unusual, as `rate.min_calls` for calls.
    pub min_bytes: u64,
    /// Absolute budget of request + response bytes per window; crossing it fires whatever the
    /// history (default: none).
    pub max_bytes: Option<u64>,
}

/// The default `volume.min_bytes`: 1 MB.
pub const DEFAULT_MIN_BYTES: u64 = 1_000_000;

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            windowed: WindowedConfig {
                min_calls: 0,
                ..WindowedConfig::rate_default()
            },
            min_bytes: DEFAULT_MIN_BYTES,
            max_bytes: None,
        }
    }
}

/// The refusal codes `denial_burst` counts when the YAML lists none: the refusals an agent
/// gets by reaching beyond what it is allowed. (The proxy answers a host-scoped route with
/// `no_route` and reason `host_scoped`; the reason is listed too, for wiring that passes it.)
pub const DEFAULT_DENIAL_CODES: &[&str] = &[
    "insufficient_scope",
    "no_route",
    "condition_failed",
    "agent_disabled",
    "host_scoped",
    "upgrade_not_allowed",
];

/// `detectors.denial_burst`.
#[derive(Debug, Clone, PartialEq)]
pub struct DenialBurstConfig {
    /// Refusals within `window` that fire (default 10).
    pub denials: u32,
    /// Sliding window (default 1m).
    pub window: Duration,
    /// Refusal codes counted (default [`DEFAULT_DENIAL_CODES`]).
    pub codes: Vec<Arc<str>>,
    /// The detector's own mode (default enforce).
    pub mode: Mode,
}

impl Default for DenialBurstConfig {
    fn default() -> Self {
        DenialBurstConfig {
            denials: 10,
            window: Duration::from_secs(60),
            codes: DEFAULT_DENIAL_CODES.iter().map(|c| Arc::from(*c)).collect(),
            mode: Mode::Enforce,
        }
    }
}

/// `detectors.off_hours`.
#[derive(Debug, Clone, PartialEq)]
pub struct OffHoursConfig {
    /// Time zone whose hours of the day are learned (default UTC).
    pub zone: Tz,
    /// Days of history before the detector may fire (default 7).
    pub min_days: u32,
    /// Calls of history before the detector may fire (default 100).
    pub min_calls: u64,
    /// The detector's own mode (default enforce).
    pub mode: Mode,
}

impl Default for OffHoursConfig {
    fn default() -> Self {
        OffHoursConfig {
            zone: Tz::UTC,
            min_days: 7,
            min_calls: 100,
            mode: Mode::Enforce,
        }
    }
}

/// `detectors.sensitive_sequence`.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceConfig {
    /// Route tag of the first call (e.g. `private_data`).
    pub from: Arc<str>,
    /// Route tag of the second call (e.g. `egress`).
    pub to: Arc<str>,
    /// Longest time between the two (default 10m).
    pub within: Duration,
    /// The detector's own mode (default enforce).
    pub mode: Mode,
}

/// Agent tiers a playbook can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// `standard`.
    Standard,
    /// `supervised`.
    Supervised,
}

impl Tier {
    /// Every tier, in the order the docs list them.
    pub const ALL: [Tier; 2] = [Tier::Standard, Tier::Supervised];

    /// The YAML name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Standard => "standard",
            Tier::Supervised => "supervised",
        }
    }

    /// The tier named `s`, if any.
    pub fn from_name(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One compiled `playbooks[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Playbook {
    /// Its name, unique in the file; state (escalation counts) is kept under it across reloads.
    pub name: Arc<str>,
    /// Tiers it applies to; with `agents`, the playbook applies to the union of both.
    pub tiers: Vec<Tier>,
    /// Agent ids it applies to. Both lists empty: every agent.
    pub agents: BTreeSet<Arc<str>>,
    /// Detectors it handles; `None`: all.
    pub detectors: Option<Vec<DetectorKind>>,
    /// How far back escalation counts this agent's detections handled by this playbook.
    pub window: Duration,
    /// An action of the same kind is not repeated for the agent within this time (zero: never
    /// suppressed).
    pub cooldown: Duration,
    /// The n-th detection within `window` runs `steps[n-1]`; past the end the last repeats.
    /// Never empty, no step empty.
    pub steps: Vec<Vec<Action>>,
}

impl Playbook {
    /// Whether this playbook handles a detection of `detector` for `agent` of `tier`.
    pub fn matches(&self, agent: &str, tier: &str, detector: DetectorKind) -> bool {
        let who = (self.tiers.is_empty() && self.agents.is_empty())
            || self.tiers.iter().any(|t| t.as_str() == tier)
            || self.agents.contains(agent);
        let what = self
            .detectors
            .as_ref()
            .is_none_or(|ds| ds.contains(&detector));
        who && what
    }
}

/// A duration in whole milliseconds, saturating (compiled durations are at most a year).
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

//! Anomaly detection over finished calls, and the playbooks that answer detections.
//!
//! Policy (`crate::policy`) decides each call on its own. This module looks at an agent's
//! calls *over time* and notices what a per-call rule cannot: an agent reaching for a tool it
//! never used, calling ten times faster than it ever did, being refused again and again,
//! moving far more data than usual, working at 3 a.m., or reading private data and then
//! talking to the outside. Those are the traces a prompt-injected or compromised agent leaves
//! even while every single call is allowed.
//!
//! It is a pure core: no I/O, no clock, no tasks, no globals. Time comes only from the calls
//! ([`CallEvent::at_ms`]), so every behaviour below is tested deterministically.
//!
//! ```text
//!  proxy (logging phase) ──CallEvent──▶ Monitor::observe ──Detection──▶ Playbooks::decide
//!                                        per-agent trackers             escalation, cooldowns
//!                                        six detectors                        │
//!                                                                             ▼
//!                         log · alert · throttle · step_up · pause · revoke (done by the wiring)
//! ```
//!
//! # Wiring
//!
//! 1. In the proxy's `logging` phase, for a call whose agent is known (it presented a valid
//!    token), build a [`CallEvent`] and send it over a bounded channel to one background task.
//!    Never block the proxy on it: when the channel is full, drop the event and count it.
//! 2. The task owns one [`Monitor`] and one [`Playbooks`]. For each event:
//!    `for d in monitor.observe(&ev) { let plan = playbooks.decide(&d, ev.tier, d.at_ms); ... }`
//!    then carries out `plan.actions` in order through the agent-state store (throttle,
//!    step-up, pause, revoke) and the alert sender, and logs the detection with the plan.
//!    Metric labels come from [`DetectorKind::as_str`] and [`Action::as_str`] only, so they
//!    are bounded.
//! 3. On reload: [`Monitor::set_config`] and [`Playbooks::set_config`] with the new
//!    `Arc<MonitoringConfig>`, then [`Monitor::retain_agents`] with the agents still in the file.
//! 4. Every minute or so: [`Playbooks::prune`]; every few minutes and at shutdown: store
//!    [`Monitor::export`]. At startup, before the first event: [`Monitor::import`].
//! 5. `at_ms` must not run backwards by more than a few milliseconds (take it from a wall clock
//!    read once at startup plus a monotonic `Instant`): a call earlier than the agent's latest is
//!    counted at the latest time.
//! 6. The admin API shows [`Monitor::agent_stats`]; an operator accepting a lasting change of
//!    an agent's behaviour as its new normal calls [`Monitor::forget_agent`] (see *Learning*).
//!
//! # Configuration
//!
//! The `monitoring:` section of `gateway.yaml` (raw form in `crate::config::raw_monitoring`,
//! compiled by `crate::config::compile_monitoring` into [`MonitoringConfig`]):
//!
//! ```yaml
//! monitoring:
//!   mode: enforce              # or shadow: every detection only logs and alerts
//!   detectors:                 # a detector absent from this map is off; `{}` = on with defaults
//!     first_seen:   {warmup: 1h, min_calls: 50, mode: shadow}
//!     rate:         {window: 1m, z: 4.0, min_windows: 10, min_calls: 20}
//!     denial_burst: {denials: 10, window: 1m, codes: [insufficient_scope, no_route, condition_failed]}
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
//! | field | default | accepted |
//! |---|---|---|
//! | `mode` | `enforce` | `enforce`, `shadow` |
//! | `detectors.<any>.mode` | `enforce` | `enforce`, `shadow` (the global `shadow` wins) |
//! | `first_seen.warmup` | `1h` | duration, 1s to 366d |
//! | `first_seen.min_calls` | 50 | integer ≥ 0 |
//! | `rate.window` | `1m` | duration, 1s to 366d |
//! | `rate.z` | 4.0 | number > 0 |
//! | `rate.min_windows` | 10 | 1 to 1,000,000 |
//! | `rate.min_calls` | 20 | integer ≥ 0 |
//! | `denial_burst.denials` | 10 | 1 to 1,000 |
//! | `denial_burst.window` | `1m` | duration, 1s to 366d |
//! | `denial_burst.codes` | [`DEFAULT_DENIAL_CODES`] | non-empty list of refusal codes |
//! | `volume.window`, `.z`, `.min_windows` | as `rate` | as `rate` |
//! | `volume.min_bytes` | `1MB` | `256kB`, `1MB`, bytes; ≥ 0 |
//! | `volume.max_bytes` | none | `50MB`, `1GiB`, bytes; ≥ 1 |
//! | `off_hours.zone` | `UTC` | IANA zone |
//! | `off_hours.min_days` | 7 | 1 to 366 |
//! | `off_hours.min_calls` | 100 | integer ≥ 0 |
//! | `sensitive_sequence.from`, `.to` | required | tags some route declares, different |
//! | `sensitive_sequence.within` | `10m` | duration, 1s to 366d |
//! | `playbooks[].name` | required | unique, non-empty |
//! | `playbooks[].tiers` | none | `standard`, `supervised` |
//! | `playbooks[].agents` | none | agent ids |
//! | `playbooks[].detectors` | all | detector names, non-empty list |
//! | `playbooks[].window` | `1h` | duration, 1s to 366d |
//! | `playbooks[].cooldown` | `5m` | duration up to 366d; `0s` = never held back |
//! | `playbooks[].steps` | required | non-empty list of non-empty lists of actions |
//!
//! Actions: `log`, `alert`, `pause`, `revoke`, `{throttle: {requests, per, for}}` (requests ≥ 1,
//! durations ≥ 1s), `{step_up: <duration>}` (the agent's writes need human approval that long).
//! An action appears at most once per step. A playbook placed after one that matches everything
//! (no `tiers`, `agents` nor `detectors`) is refused as unreachable. Every bad value is reported
//! with its path (`monitoring.detectors.rate.z`, `monitoring.playbooks[0].steps[1][1].throttle.per`).
//!
//! # The detectors
//!
//! Each detector keeps its own state per agent, runs in O(1) per call (first_seen: a binary
//! search among the agent's few names), and returns at most one detection per call. A call
//! can trigger several detectors ([`Monitor::observe`] returns them in [`DetectorKind::ALL`]
//! order). Every [`Detection`] has a one-sentence `summary` with the numbers and `details`:
//!
//! **`first_seen`**: a route or upstream the agent has never used. The detector learns
//! silently until its warm-up is over: `warmup` since the agent's first call *and* `min_calls`
//! calls. Only forwarded calls teach it (a refused probe during the warm-up does not make a
//! route "known"); after the warm-up any call, refused or not, to an unknown route or upstream
//! fires, once per name: the name is then remembered as *flagged* (reported, not learned; kept
//! apart in the export). A call with a new route and a new upstream is one detection.
//! Details: `new_route`, `new_upstream` (null when known), `route`, `upstream`, `denied`,
//! `known_routes`, `known_upstreams`, `history_calls`, `history_ms`.
//! *Cannot catch*: misuse of a route the agent already uses; anything learned during the
//! warm-up (an agent compromised from its first call teaches its own normal). New routes
//! added to the config fire once for every agent that starts using them.
//!
//! **`rate`**: calls in fixed, epoch-aligned windows of `window`. Fires, at most once per window,
//! on the call that takes the current window above `mean + z · spread` of the baseline, where
//! `spread = max(stddev, √mean, 1)` (calls are roughly Poisson, so a perfectly regular agent
//! does not fire on one extra call), once `min_windows` windows are learned and the window
//! holds at least `min_calls` calls. Details: `calls`, `window_start_ms`, `window_ms`,
//! `threshold`, `mean`, `spread`, `z`, `windows`.
//!
//! **`volume`**: the same over request + response bytes, with `spread = max(stddev, 10% of
//! mean, 1 KiB)` and `min_bytes` (default 1 MB) in place of `min_calls`: an agent that usually
//! moves 20 kB a minute and once moves 150 kB is unusual but not worth waking anyone. And,
//! whatever the history (from the first window on), fires when a window's bytes exceed
//! `max_bytes`. One detection per window in all. Details: `reason` (`baseline` or
//! `max_bytes`), `bytes`, `window_start_ms`, `window_ms`, and `threshold`, `mean`, `spread`,
//! `z`, `windows` or `max_bytes`. Bytes are counted when the call ends, so one huge response
//! fires after it was sent: `limits:` volume budgets are what cut a stream.
//!
//! **`denial_burst`**: refusals whose code is in `codes` (default: the authorization refusals
//! [`DEFAULT_DENIAL_CODES`]; rate-limit and upstream errors are not the agent probing). Fires
//! when the last `denials` counted refusals all fall within `window` (a sliding window, so a
//! burst straddling a minute boundary is caught), then stays quiet for one `window`; a burst
//! that goes on fires again each window. Details: `denials`, `span_ms`, `window_ms`, `codes`
//! (count per code), `last_code`. *Cannot catch*: probing kept just under the count (9 a
//! minute forever); `agent_stats` shows the refusals per day.
//!
//! **`off_hours`**: the local hours of the day (in `zone`, daylight saving time followed) the
//! agent has been active in, 24 bits. Learns silently until `min_days` since its first call and
//! `min_calls` calls; after that a call in an hour never seen fires, once per clock hour, and
//! the hour is *not* learned (so it fires again the next night). Details: `local_hour`,
//! `local_time`, `zone`, `usual_hours`, `history_days`, `history_calls`.
//! *Cannot catch*: misuse during usual hours; hour of the day only (not day of the week).
//!
//! **`sensitive_sequence`**: a call to a route tagged `to` within `within` after a forwarded
//! call to a route tagged `from` (route `tags:`). Fires once per `from` call however many
//! `to` calls follow; a refused `to` call fires too (the attempt is the signal), a refused
//! `from` call starts nothing, and one call to a route carrying both tags is not a sequence.
//! Details: `from_tag`, `to_tag`, `from_route`, `to_route`, `gap_ms`, `within_ms`, `denied`.
//! *Cannot catch*: waiting longer than `within`; egress through a route nobody tagged;
//! two agents sharing the work (each one's sequence is its own).
//!
//! # Learning, and what an attacker can still do
//!
//! - **Busy windows only.** A rate or volume window exists once a call lands in it; idle
//!   stretches (nights, weekends) are not zero-windows in the baseline, or every morning would
//!   look like a burst. The baseline answers "is this window busier than this agent's busy
//!   windows usually are?".
//! - **Never from a window that fired.** A window in which rate (or volume) fired is not
//!   learned, an hour in which off_hours fired is not learned, and a name first_seen reported
//!   is flagged, not learned. An attacker cannot walk a baseline up by triggering the detector
//!   repeatedly: every repeat fires. The flip side: a lasting, legitimate change keeps firing
//!   until an operator calls [`Monitor::forget_agent`] (the agent then warms up anew).
//! - **Clipped learning.** Baselines are exponentially weighted (weight
//!   [`detectors::EWMA_ALPHA`] = 0.05 per window, a plain average during the first
//!   `min_windows`); once warm, a window is learned as at most `mean + 1 · spread`
//!   ([`detectors::LEARN_CLIP`]). An agent that keeps each window just under the threshold
//!   thus raises the mean by at most α · spread per window, without inflating the variance.
//!   Measured in the tests: from 30 calls a minute, doubling the rate unnoticed takes 93
//!   windows (1.5 h at `1m`) and 10× takes 477 windows (8 h); volume 10× takes 464 windows.
//!   During the ramp the agent may still send up to the threshold each window. Absolute
//!   ceilings belong to `limits:` and `volume.max_bytes`.
//! - **Fixed windows.** A burst split across a window boundary shows only half in each
//!   window: up to about twice the threshold fits in one window length unnoticed. denial_burst
//!   slides and has no such edge.
//! - **Warm-ups.** Whatever an agent does during its warm-up (first_seen, off_hours, the first
//!   `min_windows` of rate and volume) becomes its normal. [`Monitor::import`] keeps baselines
//!   across restarts so a restart does not open a new warm-up.
//! - **Only known agents.** Calls without a valid identity never reach the monitor; they are the
//!   access log's and the limits' business.
//!
//! # Shadow mode
//!
//! With `monitoring.mode: shadow`, or a detector's own `mode: shadow`, detections are marked
//! [`Detection::shadow`]: they are reported and counted exactly as enforced ones (and, like
//! them, are not learned from), but their playbook may only log and alert: throttle, step_up,
//! pause and revoke are listed in [`PlaybookDecision::shadowed`] and never carried out.
//! Shadow detections do not push enforced ones up a playbook's ladder. This lets an operator
//! see what a detector would do on real traffic before trusting it.
//!
//! # Playbooks
//!
//! First matching playbook (file order) by `tiers` ∪ `agents` (neither: every agent) and
//! `detectors`; the n-th detection it handles for the agent within `window` runs `steps[n-1]`
//! (the last step repeats); `log` always runs; an action kind already run for the agent within
//! `cooldown` is held back unless stricter; no match → `[log]`. See [`playbooks`].
//!
//! # Reloads and restarts
//!
//! [`Monitor::set_config`] keeps every baseline that still measures the same thing and drops
//! a detector's state when it is switched off or its unit changes (rate/volume `window`,
//! off_hours `zone`, sequence tags). [`Monitor::export`] writes the baselines as versioned JSON
//! (`{"format": "portcullis-anomaly-baselines", "version": 1, "params": .., "agents": ..}`);
//! [`Monitor::import`] reads it back, skipping baselines measured in another unit, all or
//! nothing.
//!
//! # Cost
//!
//! `benches/anomaly.rs`, all six detectors on, baselines warm (25 hours of synthetic history;
//! agents on five routes each, 3% refused, 1 call in 5,000 to a new route), 2-core VM shared
//! with other work:
//!
//! | | per call |
//! |---|---|
//! | 1,000 agents, 2 calls a minute each | 318 ns CPU (criterion, wall: 418 ns) |
//! | 10,000 agents, a call every 5 minutes each (every call closes windows) | 542 ns CPU (548 ns wall) |
//!
//! Most of it is memory latency: the agent's tracker and its known names are a cache miss
//! away at 10,000 agents. One core keeps up with well over a million calls a second.
//!
//! Memory at 10,000 agents after 3 million calls: 790 bytes per agent requested from the
//! allocator (about 825 with malloc's overhead, 2.3 allocations per agent): the tracker
//! (~470 bytes: the 24-hour activity ring, the detectors' states, up to
//! 12 route and upstream names inline), its map slot, a ring of
//! `denials` refusal times once the agent is refused, and the remembered detections (up to
//! [`RECENT_DETECTIONS`] summaries of ~250 bytes, so at most ~6 kB more for an agent that keeps
//! firing). The export is about 740 bytes of JSON per agent.

pub mod config;
pub mod detectors;
mod persist;
pub mod playbooks;

pub use config::{
    DenialBurstConfig, FirstSeenConfig, Mode, MonitoringConfig, OffHoursConfig, Playbook,
    SequenceConfig, Tier, VolumeConfig, WindowedConfig, DEFAULT_DENIAL_CODES, DEFAULT_MIN_BYTES,
};
pub use persist::FORMAT_VERSION;
pub use playbooks::{Action, PlaybookDecision, Playbooks};

use chrono::{Offset, TimeZone};
use detectors::{
    Activity, DenialBurst, Finding, FirstSeen, Names, OffHours, Sequence, Windowed, NEVER,
};
use serde::Serialize;
use serde_json::{Map, Value};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::Arc;

/// One finished call of a known agent, built by the proxy in its logging phase.
#[derive(Debug, Clone, PartialEq)]
pub struct CallEvent {
    /// The agent's id.
    pub agent: Arc<str>,
    /// `standard` or `supervised` (for the playbooks, which receive it separately).
    pub tier: &'static str,
    /// When the call finished, unix milliseconds. The monitor never reads a clock; this is its
    /// only time.
    pub at_ms: i64,
    /// The matched route's name; `None` when no route matched.
    pub route: Option<Arc<str>>,
    /// The upstream the call went to (or would have gone to).
    pub upstream: Option<Arc<str>>,
    /// The matched route's tags (empty if none).
    pub tags: Arc<[Arc<str>]>,
    /// The method is not GET, HEAD or OPTIONS. No detector uses it yet; it is part of the
    /// event so the wiring and later detectors can tell writes apart.
    pub write: bool,
    /// The machine code of a refusal (e.g. `insufficient_scope`); `None` when forwarded.
    pub denied: Option<&'static str>,
    /// Request bytes received from the agent.
    pub request_bytes: u64,
    /// Response bytes sent back to the agent.
    pub response_bytes: u64,
}

/// Which detector: the names are those of `monitoring.detectors` in the YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// A route or upstream the agent never used, after its warm-up.
    FirstSeen,
    /// Calls per window far above the agent's baseline.
    Rate,
    /// Many refusals in a short time.
    DenialBurst,
    /// Bytes per window far above the baseline, or above an absolute budget.
    Volume,
    /// A call at a local hour the agent was never active in.
    OffHours,
    /// A call to a `to`-tagged route soon after a `from`-tagged one.
    SensitiveSequence,
}

impl DetectorKind {
    /// Every detector, in the order [`Monitor::observe`] runs them.
    pub const ALL: [DetectorKind; 6] = [
        DetectorKind::FirstSeen,
        DetectorKind::Rate,
        DetectorKind::DenialBurst,
        DetectorKind::Volume,
        DetectorKind::OffHours,
        DetectorKind::SensitiveSequence,
    ];

    /// The YAML name, also the metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectorKind::FirstSeen => "first_seen",
            DetectorKind::Rate => "rate",
            DetectorKind::DenialBurst => "denial_burst",
            DetectorKind::Volume => "volume",
            DetectorKind::OffHours => "off_hours",
            DetectorKind::SensitiveSequence => "sensitive_sequence",
        }
    }

    /// The detector named `s`, if any.
    pub fn from_name(s: &str) -> Option<DetectorKind> {
        DetectorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for DetectorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something unusual one agent did, found in one call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// The agent.
    pub agent: Arc<str>,
    /// The detector that found it.
    pub detector: DetectorKind,
    /// The time of the call that triggered it.
    pub at_ms: i64,
    /// Report only: the playbook may log and alert, nothing else.
    pub shadow: bool,
    /// One sentence with the numbers, for a person or an LLM reading an alert.
    pub summary: String,
    /// The numbers, per detector (see the module docs).
    pub details: Map<String, Value>,
}

/// A detection as remembered for [`Monitor::agent_stats`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecentDetection {
    /// The time of the call that triggered it.
    pub at_ms: i64,
    /// The detector.
    pub detector: DetectorKind,
    /// Whether it was a shadow detection.
    pub shadow: bool,
    /// Its summary.
    pub summary: Box<str>,
}

/// What the monitor knows of one agent, for the admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentStats {
    /// The agent's first call the monitor saw (after [`Monitor::import`]: the first ever).
    pub first_seen_ms: i64,
    /// Its latest call.
    pub last_seen_ms: i64,
    /// Calls in the 24 clock hours up to `now` (hourly buckets).
    pub calls_24h: u64,
    /// Refusals among them.
    pub denials_24h: u64,
    /// The last [`RECENT_DETECTIONS`] detections, oldest first.
    pub recent: Vec<RecentDetection>,
}

/// How many detections [`AgentStats::recent`] keeps per agent.
pub const RECENT_DETECTIONS: usize = 20;

/// Everything the monitor keeps about one agent.
#[derive(Debug, Clone, Default)]
struct Tracker {
    first_ms: i64,
    last_ms: i64,
    activity: Activity,
    recent: VecDeque<RecentDetection>,
    first_seen: FirstSeen,
    rate: Windowed,
    volume: Windowed,
    denials: DenialBurst,
    off_hours: OffHours,
    sequence: Sequence,
}

impl Tracker {
    fn new(t: i64) -> Tracker {
        Tracker {
            first_ms: t,
            last_ms: t,
            ..Tracker::default()
        }
    }
}

/// The UTC offset of the off-hours zone, remembered for the current quarter hour: zone
/// transitions fall on quarter hours, and looking the offset up costs more than the rest of
/// the detector.
#[derive(Debug)]
struct OffsetCache {
    quarter: i64,
    offset_ms: i64,
}

impl OffsetCache {
    const QUARTER_MS: i64 = 15 * 60_000;

    fn new() -> OffsetCache {
        OffsetCache {
            quarter: NEVER,
            offset_ms: 0,
        }
    }

    fn offset_ms(&mut self, zone: chrono_tz::Tz, t: i64) -> i64 {
        let q = t.div_euclid(Self::QUARTER_MS);
        if q != self.quarter {
            let utc = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(t)
                .unwrap_or_default()
                .naive_utc();
            self.offset_ms =
                i64::from(zone.offset_from_utc_datetime(&utc).fix().local_minus_utc()) * 1000;
            self.quarter = q;
        }
        self.offset_ms
    }
}

/// Per-agent trackers and the detectors over them. One per process, driven by one task.
#[derive(Debug)]
pub struct Monitor {
    cfg: Arc<MonitoringConfig>,
    agents: detectors::NameMap<Box<Tracker>>,
    names: Names,
    offsets: OffsetCache,
}

impl Monitor {
    /// A monitor that knows no agent yet.
    pub fn new(cfg: Arc<MonitoringConfig>) -> Monitor {
        Monitor {
            cfg,
            agents: detectors::NameMap::default(),
            names: Names::default(),
            offsets: OffsetCache::new(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &Arc<MonitoringConfig> {
        &self.cfg
    }

    /// Take a reloaded configuration, keeping every baseline that still means the same thing.
    /// A detector's state is dropped (it learns again from scratch, warm-up included) when the
    /// detector is switched off, or when what its baseline is measured in changes: the
    /// `window` of `rate` or `volume`, the `zone` of `off_hours`, the tags of
    /// `sensitive_sequence`. Thresholds (`z`, `min_*`, `warmup`, `max_bytes`, modes) apply to
    /// the kept baselines from the next call on.
    pub fn set_config(&mut self, cfg: Arc<MonitoringConfig>) {
        let old = std::mem::replace(&mut self.cfg, cfg);
        let new = &self.cfg;
        let first_seen = old.first_seen.is_some() && new.first_seen.is_none();
        let rate = persist::rate_key(&old) != persist::rate_key(new);
        let volume = persist::volume_key(&old) != persist::volume_key(new);
        let off_hours = persist::off_hours_key(&old) != persist::off_hours_key(new);
        let sequence = old.sensitive_sequence.as_ref().map(|s| (&s.from, &s.to))
            != new.sensitive_sequence.as_ref().map(|s| (&s.from, &s.to));
        let denials = new.denial_burst.as_ref().map(|d| d.denials as usize);
        for tr in self.agents.values_mut() {
            if first_seen {
                tr.first_seen = FirstSeen::default();
            }
            if rate {
                tr.rate = Windowed::default();
            }
            if volume {
                tr.volume = Windowed::default();
            }
            if off_hours {
                tr.off_hours = OffHours::default();
            }
            if sequence {
                tr.sequence = Sequence::default();
            }
            match denials {
                Some(n) => tr.denials.truncate(n),
                None => tr.denials = DenialBurst::default(),
            }
        }
        self.offsets = OffsetCache::new();
    }

    /// Feed one finished call; returns what it revealed (usually nothing, at most one
    /// detection per detector). O(1) amortized: hash lookups of the agent and of the route and
    /// upstream names, and a binary search in the few names the agent uses.
    ///
    /// Calls arrive roughly in time order; one earlier than the agent's latest is counted at
    /// the latest time (windows never move backwards).
    pub fn observe(&mut self, ev: &CallEvent) -> SmallVec<[Detection; 2]> {
        let Monitor {
            cfg,
            agents,
            names,
            offsets,
        } = self;
        let tr = agents
            .entry(Arc::clone(&ev.agent))
            .or_insert_with(|| Box::new(Tracker::new(ev.at_ms)));
        let t = ev.at_ms.max(tr.last_ms);
        tr.last_ms = t;
        tr.activity.record(t, ev.denied.is_some());
        let agent = &*ev.agent;
        let mut found: SmallVec<[Finding; 2]> = SmallVec::new();
        if let Some(c) = &cfg.first_seen {
            found.extend(tr.first_seen.observe(c, names, agent, t, ev));
        }
        if let Some(c) = &cfg.rate {
            found.extend(detectors::rate(&mut tr.rate, c, agent, t));
        }
        if let Some(c) = &cfg.denial_burst {
            found.extend(tr.denials.observe(c, agent, t, ev.denied));
        }
        if let Some(c) = &cfg.volume {
            let bytes = ev.request_bytes.saturating_add(ev.response_bytes);
            found.extend(detectors::volume(&mut tr.volume, c, agent, t, bytes));
        }
        if let Some(c) = &cfg.off_hours {
            let offset = offsets.offset_ms(c.zone, t);
            found.extend(tr.off_hours.observe(c, agent, t, offset));
        }
        if let Some(c) = &cfg.sensitive_sequence {
            found.extend(tr.sequence.observe(c, agent, t, ev));
        }
        found
            .into_iter()
            .map(|f| {
                let shadow = cfg.is_shadow(f.kind);
                if tr.recent.len() >= RECENT_DETECTIONS {
                    tr.recent.pop_front();
                }
                tr.recent.push_back(RecentDetection {
                    at_ms: ev.at_ms,
                    detector: f.kind,
                    shadow,
                    summary: f.summary.as_str().into(),
                });
                Detection {
                    agent: Arc::clone(&ev.agent),
                    detector: f.kind,
                    at_ms: ev.at_ms,
                    shadow,
                    summary: f.summary,
                    details: f.details,
                }
            })
            .collect()
    }

    /// What the monitor knows of `agent` at `now_ms`; `None` if it never saw a call of it.
    pub fn agent_stats(&self, agent: &str, now_ms: i64) -> Option<AgentStats> {
        let tr = self.agents.get(agent)?;
        let (calls_24h, denials_24h) = tr.activity.last_24h(now_ms);
        Some(AgentStats {
            first_seen_ms: tr.first_ms,
            last_seen_ms: tr.last_ms,
            calls_24h,
            denials_24h,
            recent: tr.recent.iter().cloned().collect(),
        })
    }

    /// How many agents have a tracker.
    pub fn tracked_agents(&self) -> usize {
        self.agents.len()
    }

    /// Drop everything known of `agent`: its baselines learn again from its next call, with a
    /// new warm-up. For an agent removed from the config, and for an operator who accepts a
    /// lasting change of behaviour as the new normal (detectors never learn from the windows
    /// they fire in, so such a change keeps firing until then). Returns whether it was known.
    pub fn forget_agent(&mut self, agent: &str) -> bool {
        self.agents.remove(agent).is_some()
    }

    /// Keep only the agents for which `keep` returns true (e.g. those still in the config).
    pub fn retain_agents(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.agents.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests;

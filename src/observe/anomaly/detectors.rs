//! The six detectors: each one's per-agent state and its step over one call.
//!
//! Every detector is a plain struct updated in O(1) (first_seen: O(log n) in the handful of
//! routes an agent uses) from the call's own time, returning at most one [`Finding`] per call.
//! The [`super::Monitor`] owns one of each per agent and turns findings into
//! [`super::Detection`]s. The module docs of [`super`] explain what each detector catches and
//! what it cannot.

use super::config::{
    duration_ms, DenialBurstConfig, FirstSeenConfig, OffHoursConfig, SequenceConfig, VolumeConfig,
    WindowedConfig,
};
use super::{CallEvent, DetectorKind};
use serde_json::{json, Map, Value};
use smallvec::SmallVec;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// "Never": the time of something that has not happened yet.
pub(super) const NEVER: i64 = i64::MIN;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Weight of the newest window in the exponentially weighted baselines: about the last 20
/// busy windows count. Slow on purpose: the faster a baseline follows, the faster an attacker
/// can walk it up.
pub const EWMA_ALPHA: f64 = 0.05;

/// Once a baseline is warm, a window is learned as at most `mean + LEARN_CLIP · spread`. With
/// a clip at one spread, a window sitting just under the threshold cannot inflate the
/// variance (the variance update then shrinks by `(1-α)(1+α) < 1`), so an attacker ramping at
/// the threshold moves the mean by at most `α · spread` per window instead of compounding.
pub const LEARN_CLIP: f64 = 1.0;

/// Smallest spread of the rate baseline: calls arrive roughly like a Poisson process, whose
/// standard deviation is √mean, and never less than one call, so a perfectly regular agent
/// does not fire on one extra call.
pub fn rate_floor(mean: f64) -> f64 {
    mean.sqrt().max(1.0)
}

/// Smallest spread of the volume baseline: a tenth of the mean, and at least 1 KiB, so an agent
/// moving the same bytes every window does not fire on a slightly larger response.
pub fn volume_floor(mean: f64) -> f64 {
    (mean * 0.1).max(1024.0)
}

/// What a detector found in one call, before the monitor adds agent, time and mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Which detector.
    pub kind: DetectorKind,
    /// One sentence with the numbers.
    pub summary: String,
    /// The numbers, for machines.
    pub details: Map<String, Value>,
}

fn finding(kind: DetectorKind, summary: String, details: Value) -> Finding {
    let details = match details {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Finding {
        kind,
        summary,
        details,
    }
}

fn human_ms(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    if secs == 0 {
        return format!("{} ms", ms.max(0));
    }
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

fn si_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().si().to_string()
}

// ---------------------------------------------------------------------------------------------
// Interned route and upstream names

/// A fast, unkeyed hash for maps keyed by names of the compiled config: agent ids, route and
/// upstream names. It is not built to resist chosen keys, and need not be: a [`CallEvent`]
/// only carries names the config declares, never a string a client picked. SipHash, the
/// std default, showed as about a tenth of [`super::Monitor::observe`] in a profile (three
/// lookups per call).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct NameHasher(u64);

impl NameHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.add(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }

    fn finish(&self) -> u64 {
        // The multiply above leaves the low bits (the bucket index) depending only on low
        // input bits; a final avalanche spreads every input bit over the whole word.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A map keyed by config names, with [`NameHasher`].
pub(super) type NameMap<V> = HashMap<Arc<str>, V, BuildHasherDefault<NameHasher>>;

/// Route and upstream names, interned so that an agent's known set is a few `u32`s. The names
/// come from the compiled config (the proxy fills [`CallEvent::route`] from the matched route),
/// so this grows with the config's names, not with traffic.
#[derive(Debug, Default)]
pub(super) struct Names {
    ids: NameMap<u32>,
    names: Vec<Arc<str>>,
}

/// Ids stay below 2^30: an entry of [`FirstSeen`] packs the id with two flag bits.
const MAX_NAMES: usize = 1 << 30;

impl Names {
    pub(super) fn intern(&mut self, name: &Arc<str>) -> Option<u32> {
        if let Some(&id) = self.ids.get(&**name) {
            return Some(id);
        }
        if self.names.len() >= MAX_NAMES {
            return None;
        }
        let id = u32::try_from(self.names.len()).ok()?;
        self.names.push(name.clone());
        self.ids.insert(name.clone(), id);
        Some(id)
    }

    pub(super) fn name(&self, id: u32) -> &Arc<str> {
        &self.names[id as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// first_seen

/// Names an agent's [`FirstSeen`] holds without allocating.
pub(super) const KNOWN_INLINE: usize = 12;

/// Bit 1 of an entry: the name is an upstream's (else a route's).
pub(super) const UPSTREAM_BIT: u32 = 0b10;
/// Bit 0 of an entry: first met after the warm-up, so it was reported rather than learned.
pub(super) const FLAGGED_BIT: u32 = 0b01;

/// The routes and upstreams an agent has used.
#[derive(Debug, Clone)]
pub(super) struct FirstSeen {
    /// When this detector first saw the agent.
    pub(super) since_ms: i64,
    /// Calls it has seen since.
    pub(super) calls: u64,
    /// Sorted entries `id << 2 | UPSTREAM_BIT? | FLAGGED_BIT?`, ordered by `entry >> 1`.
    /// Inline up to [`KNOWN_INLINE`] names (most agents use a few routes on fewer upstreams):
    /// a separate allocation was a second cache miss on every call, the costliest step of
    /// `observe` at 10,000 agents.
    pub(super) known: SmallVec<[u32; KNOWN_INLINE]>,
}

impl Default for FirstSeen {
    fn default() -> Self {
        FirstSeen {
            since_ms: NEVER,
            calls: 0,
            known: SmallVec::new(),
        }
    }
}

impl FirstSeen {
    /// Insert `entry` at its sorted place (if its name and kind are not there yet).
    pub(super) fn insert(&mut self, entry: u32) {
        if let Err(pos) = self.known.binary_search_by_key(&(entry >> 1), |e| e >> 1) {
            self.known.insert(pos, entry);
        }
    }

    /// Whether the warm-up is over at `t`.
    pub(super) fn warm(&self, cfg: &FirstSeenConfig, t: i64) -> bool {
        self.since_ms != NEVER
            && t.saturating_sub(self.since_ms) >= duration_ms(cfg.warmup)
            && self.calls >= cfg.min_calls
    }

    pub(super) fn observe(
        &mut self,
        cfg: &FirstSeenConfig,
        names: &mut Names,
        agent: &str,
        t: i64,
        ev: &CallEvent,
    ) -> Option<Finding> {
        if self.since_ms == NEVER {
            self.since_ms = t;
        }
        self.calls = self.calls.saturating_add(1);
        let warm = self.warm(cfg, t);
        let mut new_route = None;
        let mut new_upstream = None;
        for (bit, name) in [(0, &ev.route), (UPSTREAM_BIT, &ev.upstream)] {
            let Some(name) = name else { continue };
            let Some(id) = names.intern(name) else {
                continue;
            };
            let entry = (id << 2) | bit;
            if self
                .known
                .binary_search_by_key(&(entry >> 1), |e| e >> 1)
                .is_ok()
            {
                continue;
            }
            if !warm {
                // Learn only from calls that went through: a refused probe during the
                // warm-up must not make the route "known" for when a scope is granted later.
                if ev.denied.is_none() {
                    self.insert(entry);
                }
                continue;
            }
            // Reported once: flagged entries are not reported again, and stay apart from the
            // learned ones (export keeps the difference).
            self.insert(entry | FLAGGED_BIT);
            if bit == 0 {
                new_route = Some(name.clone());
            } else {
                new_upstream = Some(name.clone());
            }
        }
        if new_route.is_none() && new_upstream.is_none() {
            return None;
        }
        let (routes, upstreams) = self.counts();
        let what = match (&new_route, &new_upstream) {
            (Some(r), Some(u)) => format!("route `{r}` and upstream `{u}`"),
            (Some(r), None) => format!("route `{r}`"),
            (None, Some(u)) => format!("upstream `{u}`"),
            (None, None) => String::new(),
        };
        let denied = ev
            .denied
            .map(|c| format!(" (refused: {c})"))
            .unwrap_or_default();
        let summary = format!(
            "agent `{agent}` called {what} for the first time{denied}, after {} and {} calls of history that used {routes} routes and {upstreams} upstreams",
            human_ms(t - self.since_ms),
            self.calls - 1,
        );
        Some(finding(
            DetectorKind::FirstSeen,
            summary,
            json!({
                "new_route": new_route.as_deref(),
                "new_upstream": new_upstream.as_deref(),
                "route": ev.route.as_deref(),
                "upstream": ev.upstream.as_deref(),
                "denied": ev.denied,
                "known_routes": routes,
                "known_upstreams": upstreams,
                "history_calls": self.calls - 1,
                "history_ms": t - self.since_ms,
            }),
        ))
    }

    /// How many routes and upstreams are known (learned or flagged).
    pub(super) fn counts(&self) -> (usize, usize) {
        let up = self.known.iter().filter(|e| *e & UPSTREAM_BIT != 0).count();
        (self.known.len() - up, up)
    }
}

// ---------------------------------------------------------------------------------------------
// rate and volume: windowed values against an EWMA baseline

/// A value (calls or bytes) summed over fixed windows, and the baseline of past windows.
#[derive(Debug, Clone)]
pub(super) struct Windowed {
    /// Index of the current window (`t / window`); [`NEVER`] before the first call.
    pub(super) window: i64,
    /// The value so far in the current window.
    pub(super) value: u64,
    /// The detector fired in the current window: it will not fire again in it, and the
    /// window will not be learned.
    pub(super) fired: bool,
    /// Busy windows learned (saturating).
    pub(super) learned: u32,
    /// Exponentially weighted mean of learned windows.
    pub(super) mean: f64,
    /// Exponentially weighted variance of learned windows.
    pub(super) var: f64,
}

impl Default for Windowed {
    fn default() -> Self {
        Windowed {
            window: NEVER,
            value: 0,
            fired: false,
            learned: 0,
            mean: 0.0,
            var: 0.0,
        }
    }
}

impl Windowed {
    /// Move to window `w`. The window left behind is learned if it did not fire (its value is
    /// never zero: a window exists only once a call lands in it, so idle stretches, nights
    /// and weekends, do not drag the baseline to zero and make every morning an anomaly).
    pub(super) fn roll(&mut self, w: i64, min_windows: u32, floor: fn(f64) -> f64) {
        if w == self.window {
            return;
        }
        if self.window != NEVER && !self.fired && self.value > 0 {
            self.learn(self.value as f64, min_windows, floor);
        }
        self.window = w;
        self.value = 0;
        self.fired = false;
    }

    /// Fold one window's value into the baseline.
    pub(super) fn learn(&mut self, x: f64, min_windows: u32, floor: fn(f64) -> f64) {
        if self.learned == 0 {
            self.mean = x;
            self.var = 0.0;
            self.learned = 1;
            return;
        }
        // While warming up, a plain running average (weight 1/n) so that the first window does
        // not dominate; no clip yet, since there is no trustworthy spread to clip with.
        let x = if self.learned >= min_windows {
            x.min(self.mean + LEARN_CLIP * self.spread(floor))
        } else {
            x
        };
        self.learned = self.learned.saturating_add(1);
        let a = (1.0 / f64::from(self.learned)).max(EWMA_ALPHA);
        let d = x - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
    }

    /// The baseline's standard deviation, never below `floor(mean)`.
    pub(super) fn spread(&self, floor: fn(f64) -> f64) -> f64 {
        self.var.sqrt().max(floor(self.mean))
    }

    /// The value a window must exceed to fire.
    pub(super) fn threshold(&self, z: f64, floor: fn(f64) -> f64) -> f64 {
        self.mean + z * self.spread(floor)
    }
}

/// `rate`: calls per window.
pub(super) fn rate(
    st: &mut Windowed,
    cfg: &WindowedConfig,
    agent: &str,
    t: i64,
) -> Option<Finding> {
    let win = cfg.window_ms();
    st.roll(t.div_euclid(win), cfg.min_windows, rate_floor);
    st.value = st.value.saturating_add(1);
    if st.fired || st.learned < cfg.min_windows || st.value < cfg.min_calls {
        return None;
    }
    let threshold = st.threshold(cfg.z, rate_floor);
    if st.value as f64 <= threshold {
        return None;
    }
    st.fired = true;
    let start = st.window * win;
    let spread = st.spread(rate_floor);
    Some(finding(
        DetectorKind::Rate,
        format!(
            "agent `{agent}` made {} calls in the {} window from {}, above its threshold of {:.1} (baseline {:.1} ± {:.1} calls per busy window over {} windows, z={})",
            st.value,
            human_ms(win),
            rfc3339(start),
            threshold,
            st.mean,
            spread,
            st.learned,
            cfg.z,
        ),
        json!({
            "calls": st.value,
            "window_start_ms": start,
            "window_ms": win,
            "threshold": threshold,
            "mean": st.mean,
            "spread": spread,
            "z": cfg.z,
            "windows": st.learned,
        }),
    ))
}

/// `volume`: request + response bytes per window.
pub(super) fn volume(
    st: &mut Windowed,
    cfg: &VolumeConfig,
    agent: &str,
    t: i64,
    bytes: u64,
) -> Option<Finding> {
    let w = &cfg.windowed;
    let win = w.window_ms();
    st.roll(t.div_euclid(win), w.min_windows, volume_floor);
    st.value = st.value.saturating_add(bytes);
    if st.fired {
        return None;
    }
    let start = st.window * win;
    if let Some(max) = cfg.max_bytes.filter(|max| st.value > *max) {
        st.fired = true;
        return Some(finding(
            DetectorKind::Volume,
            format!(
                "agent `{agent}` moved {} ({} bytes) in the {} window from {}, above the budget of {} per window",
                si_bytes(st.value),
                st.value,
                human_ms(win),
                rfc3339(start),
                si_bytes(max),
            ),
            json!({
                "reason": "max_bytes",
                "bytes": st.value,
                "max_bytes": max,
                "window_start_ms": start,
                "window_ms": win,
            }),
        ));
    }
    if st.learned < w.min_windows || st.value < cfg.min_bytes {
        return None;
    }
    let threshold = st.threshold(w.z, volume_floor);
    if st.value as f64 <= threshold {
        return None;
    }
    st.fired = true;
    let spread = st.spread(volume_floor);
    Some(finding(
        DetectorKind::Volume,
        format!(
            "agent `{agent}` moved {} ({} bytes) in the {} window from {}, above its threshold of {} (baseline {} ± {} per busy window over {} windows, z={})",
            si_bytes(st.value),
            st.value,
            human_ms(win),
            rfc3339(start),
            si_bytes(threshold as u64),
            si_bytes(st.mean as u64),
            si_bytes(spread as u64),
            st.learned,
            w.z,
        ),
        json!({
            "reason": "baseline",
            "bytes": st.value,
            "window_start_ms": start,
            "window_ms": win,
            "threshold": threshold,
            "mean": st.mean,
            "spread": spread,
            "z": w.z,
            "windows": st.learned,
        }),
    ))
}

// ---------------------------------------------------------------------------------------------
// denial_burst

/// The agent's most recent counted refusals.
#[derive(Debug, Clone)]
pub(super) struct DenialBurst {
    /// At most `denials` (time, code), oldest first. Allocated on the first counted refusal, so
    /// agents that are never refused cost nothing here.
    pub(super) recent: VecDeque<(i64, &'static str)>,
    /// No new detection before this time (one per window while a burst goes on).
    pub(super) quiet_until: i64,
}

impl Default for DenialBurst {
    fn default() -> Self {
        DenialBurst {
            recent: VecDeque::new(),
            quiet_until: NEVER,
        }
    }
}

impl DenialBurst {
    /// Keep at most `n` refusals (after a reload lowered `denials`).
    pub(super) fn truncate(&mut self, n: usize) {
        while self.recent.len() > n {
            self.recent.pop_front();
        }
    }

    pub(super) fn observe(
        &mut self,
        cfg: &DenialBurstConfig,
        agent: &str,
        t: i64,
        denied: Option<&'static str>,
    ) -> Option<Finding> {
        let code = denied?;
        if !cfg.codes.iter().any(|c| **c == *code) {
            return None;
        }
        let n = cfg.denials as usize;
        if self.recent.len() >= n {
            self.truncate(n.saturating_sub(1));
        } else if self.recent.capacity() == 0 {
            // Exactly `denials` entries: the doubling growth would round 10 up to 16.
            self.recent.reserve_exact(n);
        }
        self.recent.push_back((t, code));
        // A sliding window over the last `denials` refusals, not fixed buckets: a fixed window
        // lets a burst straddle its boundary and show only half on each side.
        let oldest = self.recent.front()?.0;
        let win = duration_ms(cfg.window);
        if t < self.quiet_until || self.recent.len() < n || t - oldest >= win {
            return None;
        }
        self.quiet_until = t.saturating_add(win);
        let mut by_code: Vec<(&'static str, u32)> = Vec::new();
        for (_, c) in &self.recent {
            match by_code.iter_mut().find(|(k, _)| k == c) {
                Some((_, n)) => *n += 1,
                None => by_code.push((c, 1)),
            }
        }
        by_code.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut codes = String::new();
        for (i, (c, k)) in by_code.iter().enumerate() {
            let _ = write!(codes, "{}{c} ×{k}", if i == 0 { "" } else { ", " });
        }
        let counts: Map<String, Value> = by_code
            .iter()
            .map(|(c, k)| (c.to_string(), json!(k)))
            .collect();
        Some(finding(
            DetectorKind::DenialBurst,
            format!(
                "agent `{agent}` was refused {n} times in {} ({codes}); the threshold is {n} within {}",
                human_ms(t - oldest),
                human_ms(win),
            ),
            json!({
                "denials": n,
                "span_ms": t - oldest,
                "window_ms": win,
                "codes": counts,
                "last_code": code,
            }),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// off_hours

/// The local hours of the day the agent has been active in.
#[derive(Debug, Clone)]
pub(super) struct OffHours {
    /// When this detector first saw the agent.
    pub(super) since_ms: i64,
    /// Calls it has seen since.
    pub(super) calls: u64,
    /// Bit `h` set: the agent made a call between `h:00` and `h:59` local time.
    pub(super) hours: u32,
    /// The local hour (hours since the epoch, local clock) it last fired in.
    pub(super) fired_hour: i64,
}

impl Default for OffHours {
    fn default() -> Self {
        OffHours {
            since_ms: NEVER,
            calls: 0,
            hours: 0,
            fired_hour: NEVER,
        }
    }
}

/// `0b1110…` → `"08-10, 22-23"` (inclusive hour ranges).
pub(super) fn hour_ranges(hours: u32) -> String {
    let mut out = String::new();
    let mut h = 0;
    while h < 24 {
        if hours & (1 << h) == 0 {
            h += 1;
            continue;
        }
        let start = h;
        while h < 24 && hours & (1 << h) != 0 {
            h += 1;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        if start == h - 1 {
            let _ = write!(out, "{start:02}");
        } else {
            let _ = write!(out, "{start:02}-{:02}", h - 1);
        }
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

impl OffHours {
    /// Whether the history is long enough at `t`.
    pub(super) fn warm(&self, cfg: &OffHoursConfig, t: i64) -> bool {
        self.since_ms != NEVER
            && t.saturating_sub(self.since_ms) >= i64::from(cfg.min_days) * DAY_MS
            && self.calls >= cfg.min_calls
    }

    /// `offset_ms`: the zone's offset from UTC at `t`.
    pub(super) fn observe(
        &mut self,
        cfg: &OffHoursConfig,
        agent: &str,
        t: i64,
        offset_ms: i64,
    ) -> Option<Finding> {
        if self.since_ms == NEVER {
            self.since_ms = t;
        }
        self.calls = self.calls.saturating_add(1);
        let local = t.saturating_add(offset_ms);
        let hour_index = local.div_euclid(HOUR_MS);
        let hour = hour_index.rem_euclid(24) as u32;
        if self.fired_hour == hour_index {
            // Already reported this hour; and an hour that fired is not learned.
            return None;
        }
        let bit = 1u32 << hour;
        if self.hours & bit != 0 || !self.warm(cfg, t) {
            self.hours |= bit;
            return None;
        }
        self.fired_hour = hour_index;
        let minute = local.rem_euclid(HOUR_MS) / 60_000;
        let days = (t - self.since_ms) / DAY_MS;
        Some(finding(
            DetectorKind::OffHours,
            format!(
                "agent `{agent}` called at {hour:02}:{minute:02} {}, an hour of the day it was never active in over {days} days and {} calls (usual hours: {})",
                cfg.zone.name(),
                self.calls - 1,
                hour_ranges(self.hours),
            ),
            json!({
                "local_hour": hour,
                "local_time": format!("{hour:02}:{minute:02}"),
                "zone": cfg.zone.name(),
                "usual_hours": hour_ranges(self.hours),
                "history_days": days,
                "history_calls": self.calls - 1,
            }),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// sensitive_sequence

/// The agent's last call to a route tagged `from`.
#[derive(Debug, Clone)]
pub(super) struct Sequence {
    /// When it was.
    pub(super) last_from: i64,
    /// Which route.
    pub(super) from_route: Option<Arc<str>>,
    /// The `last_from` already reported: one detection per `from` call, however many `to`
    /// calls follow it.
    pub(super) reported: i64,
}

impl Default for Sequence {
    fn default() -> Self {
        Sequence {
            last_from: NEVER,
            from_route: None,
            reported: NEVER,
        }
    }
}

impl Sequence {
    pub(super) fn observe(
        &mut self,
        cfg: &SequenceConfig,
        agent: &str,
        t: i64,
        ev: &CallEvent,
    ) -> Option<Finding> {
        let has = |tag: &str| ev.tags.iter().any(|x| **x == *tag);
        let mut out = None;
        // `to` before `from`: a single call to a route carrying both tags is not a sequence.
        if self.last_from != NEVER
            && self.reported != self.last_from
            && t - self.last_from <= duration_ms(cfg.within)
            && has(&cfg.to)
        {
            self.reported = self.last_from;
            let gap = t - self.last_from;
            let from_route = self.from_route.as_deref().unwrap_or("?");
            let to_route = ev.route.as_deref().unwrap_or("?");
            let denied = ev
                .denied
                .map(|c| format!("; the call was refused ({c})"))
                .unwrap_or_default();
            out = Some(finding(
                DetectorKind::SensitiveSequence,
                format!(
                    "agent `{agent}` called route `{to_route}` (tag `{}`) {} after reading from route `{from_route}` (tag `{}`), within the {} the sequence is watched for{denied}",
                    cfg.to,
                    human_ms(gap),
                    cfg.from,
                    human_ms(duration_ms(cfg.within)),
                ),
                json!({
                    "from_tag": &*cfg.from,
                    "to_tag": &*cfg.to,
                    "from_route": from_route,
                    "to_route": to_route,
                    "gap_ms": gap,
                    "within_ms": duration_ms(cfg.within),
                    "denied": ev.denied,
                }),
            ));
        }
        // A refused `from` call read nothing, so it starts no sequence.
        if ev.denied.is_none() && has(&cfg.from) {
            self.last_from = t;
            self.from_route = ev.route.clone();
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Activity for agent_stats

/// Calls and refusals per hour over the last 24 hours (a ring indexed by hour of the epoch).
#[derive(Debug, Clone)]
pub(super) struct Activity {
    /// The hour (since the epoch) of the newest bucket; [`NEVER`] before the first call.
    pub(super) hour: i64,
    pub(super) calls: [u32; 24],
    /// Saturates at 65,535 refusals in an hour, which says enough.
    pub(super) denials: [u16; 24],
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            hour: NEVER,
            calls: [0; 24],
            denials: [0; 24],
        }
    }
}

impl Activity {
    pub(super) fn record(&mut self, t: i64, denied: bool) {
        let h = t.div_euclid(HOUR_MS);
        if self.hour == NEVER || h - self.hour >= 24 {
            self.calls = [0; 24];
            self.denials = [0; 24];
        } else {
            // Clear the buckets of the hours skipped since the newest one (at most 23).
            for skipped in self.hour + 1..=h {
                let i = skipped.rem_euclid(24) as usize;
                self.calls[i] = 0;
                self.denials[i] = 0;
            }
        }
        self.hour = self.hour.max(h);
        let i = h.rem_euclid(24) as usize;
        self.calls[i] = self.calls[i].saturating_add(1);
        if denied {
            self.denials[i] = self.denials[i].saturating_add(1);
        }
    }

    /// (calls, refusals) in the 24 hours up to and including the hour of `now`.
    pub(super) fn last_24h(&self, now: i64) -> (u64, u64) {
        if self.hour == NEVER {
            return (0, 0);
        }
        let now_h = now.div_euclid(HOUR_MS);
        let (mut calls, mut denials) = (0u64, 0u64);
        for back in 0..24 {
            let h = self.hour - back;
            if h > now_h || now_h - h >= 24 {
                continue;
            }
            let i = h.rem_euclid(24) as usize;
            calls += u64::from(self.calls[i]);
            denials += u64::from(self.denials[i]);
        }
        (calls, denials)
    }
}

//! [`Monitor::export`] / [`Monitor::import`]: the learned baselines as one versioned JSON
//! value, so a restart does not open a new warm-up in which nothing fires.
//!
//! Kept: each agent's first and last call, its hourly activity (for `agent_stats`), and the
//! baselines: first_seen's known and flagged names with its warm-up progress, the rate and
//! volume means and variances, off_hours' active hours with their history. Not kept: what is
//! short-lived (the current window's partial count, the denial ring, the last `from` call of
//! sensitive_sequence, recent detections).
//!
//! Each baseline is exported with what it is measured in (the window of rate and volume, the
//! zone of off_hours); an import skips the parts that no longer match the configuration, as
//! [`Monitor::set_config`] would have dropped them.

use super::config::MonitoringConfig;
use super::detectors::{Activity, FirstSeen, OffHours, Windowed, FLAGGED_BIT, NEVER, UPSTREAM_BIT};
use super::{Monitor, Tracker};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The version [`Monitor::export`] writes and [`Monitor::import`] reads.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT: &str = "portcullis-anomaly-baselines";

pub(super) fn rate_key(cfg: &MonitoringConfig) -> Option<i64> {
    cfg.rate.as_ref().map(|r| r.window_ms())
}

pub(super) fn volume_key(cfg: &MonitoringConfig) -> Option<i64> {
    cfg.volume.as_ref().map(|v| v.windowed.window_ms())
}

pub(super) fn off_hours_key(cfg: &MonitoringConfig) -> Option<&'static str> {
    cfg.off_hours.as_ref().map(|o| o.zone.name())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Blob {
    format: String,
    version: u32,
    /// What the baselines below are measured in.
    params: Params,
    agents: BTreeMap<String, AgentBlob>,
}

#[derive(Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Params {
    first_seen: bool,
    rate_window_ms: Option<i64>,
    volume_window_ms: Option<i64>,
    off_hours_zone: Option<String>,
}

impl Params {
    fn of(cfg: &MonitoringConfig) -> Params {
        Params {
            first_seen: cfg.first_seen.is_some(),
            rate_window_ms: rate_key(cfg),
            volume_window_ms: volume_key(cfg),
            off_hours_zone: off_hours_key(cfg).map(str::to_string),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentBlob {
    first_ms: i64,
    last_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    activity: Option<ActivityBlob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_seen: Option<FirstSeenBlob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate: Option<BaselineBlob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    volume: Option<BaselineBlob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    off_hours: Option<OffHoursBlob>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivityBlob {
    hour: i64,
    calls: [u32; 24],
    denials: [u16; 24],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FirstSeenBlob {
    since_ms: i64,
    calls: u64,
    routes: Vec<String>,
    upstreams: Vec<String>,
    flagged_routes: Vec<String>,
    flagged_upstreams: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselineBlob {
    windows: u32,
    mean: f64,
    var: f64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OffHoursBlob {
    since_ms: i64,
    calls: u64,
    /// The active hours of the day, ascending.
    hours: Vec<u8>,
}

fn baseline(w: &Windowed) -> Option<BaselineBlob> {
    (w.learned > 0).then_some(BaselineBlob {
        windows: w.learned,
        mean: w.mean,
        var: w.var,
    })
}

fn windowed(b: &BaselineBlob, path: &str) -> Result<Windowed, String> {
    if !(b.mean.is_finite() && b.var.is_finite() && b.mean >= 0.0 && b.var >= 0.0) {
        return Err(format!(
            "{path}: mean and var must be finite and not negative"
        ));
    }
    Ok(Windowed {
        learned: b.windows,
        mean: b.mean,
        var: b.var,
        ..Windowed::default()
    })
}

/// Latest time an import accepts (about the year 2100): the detectors subtract times, and a
/// corrupt value near `i64::MIN` or `i64::MAX` must not overflow them.
const MAX_TIME_MS: i64 = 4_102_444_800_000;
const HOUR_MS: i64 = 3_600_000;

fn time(path: &str, ms: i64) -> Result<(), String> {
    if (0..=MAX_TIME_MS).contains(&ms) {
        Ok(())
    } else {
        Err(format!("{path}: {ms} is not a time in unix milliseconds"))
    }
}

impl Monitor {
    /// The learned baselines of every tracked agent, as one JSON value of format version
    /// [`FORMAT_VERSION`] (the wiring stores it, e.g. in SQLite, and gives it back to
    /// [`Monitor::import`] after a restart). Deterministic: agents and names are sorted.
    pub fn export(&self) -> Value {
        let mut agents = BTreeMap::new();
        for (id, tr) in &self.agents {
            let first_seen = (tr.first_seen.since_ms != NEVER).then(|| {
                let mut fs = FirstSeenBlob {
                    since_ms: tr.first_seen.since_ms,
                    calls: tr.first_seen.calls,
                    routes: Vec::new(),
                    upstreams: Vec::new(),
                    flagged_routes: Vec::new(),
                    flagged_upstreams: Vec::new(),
                };
                for &e in tr.first_seen.known.iter() {
                    let name = self.names.name(e >> 2).to_string();
                    let list = match (e & UPSTREAM_BIT != 0, e & FLAGGED_BIT != 0) {
                        (false, false) => &mut fs.routes,
                        (true, false) => &mut fs.upstreams,
                        (false, true) => &mut fs.flagged_routes,
                        (true, true) => &mut fs.flagged_upstreams,
                    };
                    list.push(name);
                }
                for l in [
                    &mut fs.routes,
                    &mut fs.upstreams,
                    &mut fs.flagged_routes,
                    &mut fs.flagged_upstreams,
                ] {
                    l.sort();
                }
                fs
            });
            let off_hours = (tr.off_hours.since_ms != NEVER).then(|| OffHoursBlob {
                since_ms: tr.off_hours.since_ms,
                calls: tr.off_hours.calls,
                hours: (0u8..24)
                    .filter(|h| tr.off_hours.hours & (1 << h) != 0)
                    .collect(),
            });
            let activity = (tr.activity.hour != NEVER).then_some(ActivityBlob {
                hour: tr.activity.hour,
                calls: tr.activity.calls,
                denials: tr.activity.denials,
            });
            agents.insert(
                id.to_string(),
                AgentBlob {
                    first_ms: tr.first_ms,
                    last_ms: tr.last_ms,
                    activity,
                    first_seen,
                    rate: baseline(&tr.rate),
                    volume: baseline(&tr.volume),
                    off_hours,
                },
            );
        }
        let blob = Blob {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            params: Params::of(&self.cfg),
            agents,
        };
        // Only plain numbers, strings and maps with string keys: serializing cannot fail.
        serde_json::to_value(blob).unwrap_or(Value::Null)
    }

    /// Load baselines written by [`Monitor::export`], replacing the state of every agent the
    /// blob names (call it before the first [`Monitor::observe`]). Parts measured differently
    /// from the current configuration (another window or zone, a detector now off) are skipped.
    /// All or nothing: on `Err` (another format or version, a malformed value) nothing changed.
    pub fn import(&mut self, v: &Value) -> Result<(), String> {
        let version = v.get("version").and_then(Value::as_u64);
        if v.get("format").and_then(Value::as_str) != Some(FORMAT) {
            return Err(format!(
                "not a baseline export (`format` is not `{FORMAT}`)"
            ));
        }
        if version != Some(u64::from(FORMAT_VERSION)) {
            return Err(format!(
                "unsupported baseline format version {}; this build reads version {FORMAT_VERSION}",
                version.map_or_else(|| "(none)".to_string(), |v| v.to_string())
            ));
        }
        let blob: Blob = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        let now = Params::of(&self.cfg);
        let same_first_seen = blob.params.first_seen && now.first_seen;
        let same_rate = blob.params.rate_window_ms.is_some()
            && blob.params.rate_window_ms == now.rate_window_ms;
        let same_volume = blob.params.volume_window_ms.is_some()
            && blob.params.volume_window_ms == now.volume_window_ms;
        let same_zone = blob.params.off_hours_zone.is_some()
            && blob.params.off_hours_zone == now.off_hours_zone;

        // Build everything first, so a bad agent late in the blob leaves nothing half-done.
        let mut trackers: Vec<(Arc<str>, Box<Tracker>)> = Vec::with_capacity(blob.agents.len());
        let mut pending_names: Vec<(usize, bool, bool, String)> = Vec::new();
        for (id, a) in &blob.agents {
            let path = format!("agents.{id}");
            time(&format!("{path}.first_ms"), a.first_ms)?;
            time(&format!("{path}.last_ms"), a.last_ms)?;
            if let Some(act) = &a.activity {
                time(
                    &format!("{path}.activity.hour"),
                    act.hour.saturating_mul(HOUR_MS),
                )?;
            }
            if let Some(fs) = &a.first_seen {
                time(&format!("{path}.first_seen.since_ms"), fs.since_ms)?;
            }
            if let Some(o) = &a.off_hours {
                time(&format!("{path}.off_hours.since_ms"), o.since_ms)?;
            }
            let mut tr = Tracker::new(a.first_ms);
            tr.last_ms = a.last_ms.max(a.first_ms);
            if let Some(act) = &a.activity {
                tr.activity = Activity {
                    hour: act.hour,
                    calls: act.calls,
                    denials: act.denials,
                };
            }
            if let (true, Some(fs)) = (same_first_seen, &a.first_seen) {
                tr.first_seen = FirstSeen {
                    since_ms: fs.since_ms,
                    calls: fs.calls,
                    known: Default::default(),
                };
                let i = trackers.len();
                for (upstream, flagged, list) in [
                    (false, false, &fs.routes),
                    (true, false, &fs.upstreams),
                    (false, true, &fs.flagged_routes),
                    (true, true, &fs.flagged_upstreams),
                ] {
                    for name in list {
                        pending_names.push((i, upstream, flagged, name.clone()));
                    }
                }
            }
            if let (true, Some(b)) = (same_rate, &a.rate) {
                tr.rate = windowed(b, &format!("{path}.rate"))?;
            }
            if let (true, Some(b)) = (same_volume, &a.volume) {
                tr.volume = windowed(b, &format!("{path}.volume"))?;
            }
            if let (true, Some(o)) = (same_zone, &a.off_hours) {
                let mut hours = 0u32;
                for &h in &o.hours {
                    if h >= 24 {
                        return Err(format!(
                            "{path}.off_hours.hours: {h} is not an hour of the day"
                        ));
                    }
                    hours |= 1 << h;
                }
                tr.off_hours = OffHours {
                    since_ms: o.since_ms,
                    calls: o.calls,
                    hours,
                    fired_hour: NEVER,
                };
            }
            trackers.push((Arc::from(id.as_str()), Box::new(tr)));
        }
        for (i, upstream, flagged, name) in pending_names {
            let Some(id) = self.names.intern(&Arc::from(name.as_str())) else {
                continue;
            };
            let mut entry = id << 2;
            if upstream {
                entry |= UPSTREAM_BIT;
            }
            if flagged {
                entry |= FLAGGED_BIT;
            }
            trackers[i].1.first_seen.insert(entry);
        }
        self.agents.extend(trackers);
        Ok(())
    }
}

//! Compile the `monitoring:` section into [`MonitoringConfig`], reporting every bad value with
//! its field path (`monitoring.detectors.rate.z`) through a callback, so the main compiler
//! plugs it in with one call:
//!
//! ```ignore
//! let monitoring = compile_monitoring(&raw.monitoring, &route_tags, &mut |p, m| self.invalid(p, m));
//! ```

use super::raw_limits::RawSize;
use super::raw_monitoring::{
    RawAction, RawActionWith, RawDenialBurst, RawFirstSeen, RawMonitoring, RawOffHours,
    RawPlaybook, RawRate, RawSequence, RawThrottle, RawVolume,
};
use crate::observe::anomaly::{
    Action, DenialBurstConfig, DetectorKind, FirstSeenConfig, Mode, MonitoringConfig,
    OffHoursConfig, Playbook, SequenceConfig, Tier, VolumeConfig, WindowedConfig,
    DEFAULT_MIN_BYTES,
};
use chrono_tz::Tz;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Where the section sits in the file.
const ROOT: &str = "monitoring";

/// Most refusals `denial_burst.denials` may ask for: the detector keeps that many (24 bytes
/// each) per refused agent, and a burst larger than this is a job for `limits:`.
pub const MAX_DENIALS: u64 = 1_000;

/// Longest duration anywhere in the section.
const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// Default escalation window of a playbook.
const DEFAULT_PLAYBOOK_WINDOW: Duration = Duration::from_secs(3600);
/// Default cooldown of a playbook.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(300);
/// Default `sensitive_sequence.within`.
const DEFAULT_WITHIN: Duration = Duration::from_secs(600);

/// Compile `raw`. `route_tags` is every tag some route declares (the tags
/// `sensitive_sequence` may name). Each problem is passed to `error(field path, message)`;
/// the returned value is only meaningful when none was.
pub fn compile_monitoring(
    raw: &RawMonitoring,
    route_tags: &BTreeSet<String>,
    error: &mut dyn FnMut(String, String),
) -> MonitoringConfig {
    let d = &raw.detectors;
    let p = format!("{ROOT}.detectors");
    MonitoringConfig {
        mode: mode(&format!("{ROOT}.mode"), raw.mode.as_deref(), error),
        first_seen: d
            .first_seen
            .as_ref()
            .map(|r| first_seen(&format!("{p}.first_seen"), r, error)),
        rate: d
            .rate
            .as_ref()
            .map(|r| rate(&format!("{p}.rate"), r, error)),
        denial_burst: d
            .denial_burst
            .as_ref()
            .map(|r| denial_burst(&format!("{p}.denial_burst"), r, error)),
        volume: d
            .volume
            .as_ref()
            .map(|r| volume(&format!("{p}.volume"), r, error)),
        off_hours: d
            .off_hours
            .as_ref()
            .map(|r| off_hours(&format!("{p}.off_hours"), r, error)),
        sensitive_sequence: d
            .sensitive_sequence
            .as_ref()
            .and_then(|r| sequence(&format!("{p}.sensitive_sequence"), r, route_tags, error)),
        playbooks: playbooks(&raw.playbooks, error),
    }
}

fn mode(path: &str, raw: Option<&str>, error: &mut dyn FnMut(String, String)) -> Mode {
    match raw {
        None | Some("enforce") => Mode::Enforce,
        Some("shadow") => Mode::Shadow,
        Some(other) => {
            error(
                path.into(),
                format!("`{other}` is not a mode: write `enforce` (act on detections) or `shadow` (only log and alert)"),
            );
            Mode::Enforce
        }
    }
}

/// A duration of at least `min` (zero allowed when `min` is zero), at most 366 days.
fn duration(
    path: &str,
    raw: Option<&str>,
    default: Duration,
    min: Duration,
    error: &mut dyn FnMut(String, String),
) -> Duration {
    let Some(s) = raw else { return default };
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d.is_zero() && !min.is_zero() => {
            error(path.into(), "the duration must be greater than zero".into());
            default
        }
        Ok(d) if d < min => {
            error(
                path.into(),
                format!(
                    "the duration must be at least {}",
                    humantime::format_duration(min)
                ),
            );
            default
        }
        Ok(d) if d > MAX_DURATION => {
            error(path.into(), "the duration must be at most 366 days".into());
            default
        }
        Ok(d) => d,
        Err(e) => {
            error(
                path.into(),
                format!("`{s}` is not a duration ({e}); write e.g. `30s`, `5m`, `1h`"),
            );
            default
        }
    }
}

/// Windows, warm-ups and periods: the detectors work in milliseconds and nothing they watch
/// makes sense below a second.
const SECOND: Duration = Duration::from_secs(1);

fn z_score(path: &str, raw: Option<f64>, error: &mut dyn FnMut(String, String)) -> f64 {
    match raw {
        None => 4.0,
        Some(z) if z.is_finite() && z > 0.0 => z,
        Some(z) => {
            error(
                path.into(),
                format!("`z` must be a number greater than 0 (got {z}); 3 to 5 is usual"),
            );
            4.0
        }
    }
}

fn count_u32(
    path: &str,
    raw: Option<u64>,
    default: u32,
    range: (u32, u32),
    error: &mut dyn FnMut(String, String),
) -> u32 {
    let Some(v) = raw else { return default };
    match u32::try_from(v) {
        Ok(n) if (range.0..=range.1).contains(&n) => n,
        _ => {
            error(
                path.into(),
                format!("must be between {} and {} (got {v})", range.0, range.1),
            );
            default
        }
    }
}

fn first_seen(p: &str, r: &RawFirstSeen, error: &mut dyn FnMut(String, String)) -> FirstSeenConfig {
    let d = FirstSeenConfig::default();
    FirstSeenConfig {
        warmup: duration(
            &format!("{p}.warmup"),
            r.warmup.as_deref(),
            d.warmup,
            SECOND,
            error,
        ),
        min_calls: r.min_calls.unwrap_or(d.min_calls),
        mode: mode(&format!("{p}.mode"), r.mode.as_deref(), error),
    }
}

fn windowed(
    p: &str,
    window: Option<&str>,
    z: Option<f64>,
    min_windows: Option<u64>,
    mode_: Option<&str>,
    error: &mut dyn FnMut(String, String),
) -> WindowedConfig {
    let d = WindowedConfig::rate_default();
    WindowedConfig {
        window: duration(&format!("{p}.window"), window, d.window, SECOND, error),
        z: z_score(&format!("{p}.z"), z, error),
        min_windows: count_u32(
            &format!("{p}.min_windows"),
            min_windows,
            d.min_windows,
            (1, 1_000_000),
            error,
        ),
        min_calls: 0,
        mode: mode(&format!("{p}.mode"), mode_, error),
    }
}

fn rate(p: &str, r: &RawRate, error: &mut dyn FnMut(String, String)) -> WindowedConfig {
    let mut w = windowed(
        p,
        r.window.as_deref(),
        r.z,
        r.min_windows,
        r.mode.as_deref(),
        error,
    );
    w.min_calls = r
        .min_calls
        .unwrap_or(WindowedConfig::rate_default().min_calls);
    w
}

/// A byte size; zero only where `zero_ok`.
fn size(
    path: &str,
    raw: &RawSize,
    zero_ok: bool,
    error: &mut dyn FnMut(String, String),
) -> Option<u64> {
    let n = match raw {
        RawSize::Bytes(n) => *n,
        RawSize::Text(t) => {
            match t.trim().parse::<bytesize::ByteSize>() {
                Ok(b) => b.as_u64(),
                Err(e) => {
                    error(
                    path.into(),
                    format!("`{t}` is not a size ({e}); write e.g. `50MB`, `1GiB` or a number of bytes"),
                );
                    return None;
                }
            }
        }
    };
    if n == 0 && !zero_ok {
        error(path.into(), "must be at least 1 byte".into());
        return None;
    }
    Some(n)
}

fn volume(p: &str, r: &RawVolume, error: &mut dyn FnMut(String, String)) -> VolumeConfig {
    VolumeConfig {
        windowed: windowed(
            p,
            r.window.as_deref(),
            r.z,
            r.min_windows,
            r.mode.as_deref(),
            error,
        ),
        min_bytes: r
            .min_bytes
            .as_ref()
            .and_then(|s| size(&format!("{p}.min_bytes"), s, true, error))
            .unwrap_or(DEFAULT_MIN_BYTES),
        max_bytes: r
            .max_bytes
            .as_ref()
            .and_then(|s| size(&format!("{p}.max_bytes"), s, false, error)),
    }
}

/// A refusal code as the gateway writes them: lowercase ASCII words joined by `_`.
fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn denial_burst(
    p: &str,
    r: &RawDenialBurst,
    error: &mut dyn FnMut(String, String),
) -> DenialBurstConfig {
    let d = DenialBurstConfig::default();
    let mut codes = d.codes.clone();
    if let Some(raw) = &r.codes {
        if raw.is_empty() {
            error(
                format!("{p}.codes"),
                "list at least one refusal code (or leave `codes` out for the default list)".into(),
            );
        } else {
            codes = Vec::new();
            for (i, c) in raw.iter().enumerate() {
                let cp = format!("{p}.codes[{i}]");
                if !is_code(c) {
                    error(
                        cp,
                        format!("`{c}` is not a refusal code (such as `insufficient_scope`)"),
                    );
                } else if codes.iter().any(|k| **k == **c) {
                    error(cp, format!("`{c}` is listed twice"));
                } else {
                    codes.push(Arc::from(c.as_str()));
                }
            }
        }
    }
    DenialBurstConfig {
        denials: count_u32(
            &format!("{p}.denials"),
            r.denials,
            d.denials,
            (1, MAX_DENIALS as u32),
            error,
        ),
        window: duration(
            &format!("{p}.window"),
            r.window.as_deref(),
            d.window,
            SECOND,
            error,
        ),
        codes,
        mode: mode(&format!("{p}.mode"), r.mode.as_deref(), error),
    }
}

fn off_hours(p: &str, r: &RawOffHours, error: &mut dyn FnMut(String, String)) -> OffHoursConfig {
    let d = OffHoursConfig::default();
    let zone = match r.zone.as_deref() {
        None => d.zone,
        Some(z) => match z.trim().parse::<Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                error(
                    format!("{p}.zone"),
                    format!("`{z}` is not an IANA time zone (such as `Europe/Paris` or `UTC`)"),
                );
                d.zone
            }
        },
    };
    OffHoursConfig {
        zone,
        min_days: count_u32(
            &format!("{p}.min_days"),
            r.min_days,
            d.min_days,
            (1, 366),
            error,
        ),
        min_calls: r.min_calls.unwrap_or(d.min_calls),
        mode: mode(&format!("{p}.mode"), r.mode.as_deref(), error),
    }
}

fn sequence(
    p: &str,
    r: &RawSequence,
    route_tags: &BTreeSet<String>,
    error: &mut dyn FnMut(String, String),
) -> Option<SequenceConfig> {
    let mut tag = |field: &str, v: Option<&str>| -> Option<Arc<str>> {
        let path = format!("{p}.{field}");
        let Some(v) = v else {
            error(
                path,
                format!("set `{field}` to a route tag (e.g. `from: private_data`, `to: egress`)"),
            );
            return None;
        };
        if !route_tags.contains(v) {
            let in_use = if route_tags.is_empty() {
                "no route declares tags".to_string()
            } else {
                format!(
                    "tags in use: {}",
                    route_tags.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            error(path, format!("no route has tag `{v}`; {in_use}"));
            return None;
        }
        Some(Arc::from(v))
    };
    let from = tag("from", r.from.as_deref());
    let to = tag("to", r.to.as_deref());
    let within = duration(
        &format!("{p}.within"),
        r.within.as_deref(),
        DEFAULT_WITHIN,
        SECOND,
        error,
    );
    let mode = mode(&format!("{p}.mode"), r.mode.as_deref(), error);
    let (from, to) = (from?, to?);
    if from == to {
        error(
            format!("{p}.to"),
            "`from` and `to` must be different tags".into(),
        );
        return None;
    }
    Some(SequenceConfig {
        from,
        to,
        within,
        mode,
    })
}

fn playbooks(raw: &[RawPlaybook], error: &mut dyn FnMut(String, String)) -> Vec<Playbook> {
    let mut out: Vec<Playbook> = Vec::new();
    let mut names: HashMap<&str, String> = HashMap::new();
    // The first playbook that matches everything; later ones can never run.
    let mut catch_all: Option<String> = None;
    for (i, r) in raw.iter().enumerate() {
        let p = format!("{ROOT}.playbooks[{i}]");
        if r.name.trim().is_empty() {
            error(format!("{p}.name"), "a playbook needs a name".into());
        } else if let Some(first) = names.get(r.name.as_str()) {
            error(
                format!("{p}.name"),
                format!("duplicate playbook name `{}`, first at {first}", r.name),
            );
        } else {
            names.insert(&r.name, p.clone());
        }
        if let Some(first) = &catch_all {
            error(
                p.clone(),
                format!("this playbook never runs: {first} comes first and handles every detection of every agent"),
            );
        }
        let pb = playbook(&p, r, error);
        if pb.tiers.is_empty() && pb.agents.is_empty() && pb.detectors.is_none() {
            catch_all.get_or_insert(p);
        }
        out.push(pb);
    }
    out
}

fn playbook(p: &str, r: &RawPlaybook, error: &mut dyn FnMut(String, String)) -> Playbook {
    let mut tiers = Vec::new();
    for (i, t) in r.tiers.iter().flatten().enumerate() {
        match Tier::from_name(t) {
            Some(tier) if !tiers.contains(&tier) => tiers.push(tier),
            Some(_) => {}
            None => error(
                format!("{p}.tiers[{i}]"),
                format!("`{t}` is not a tier; tiers: standard, supervised"),
            ),
        }
    }
    let mut agents = BTreeSet::new();
    for (i, a) in r.agents.iter().flatten().enumerate() {
        if a.trim().is_empty() {
            error(
                format!("{p}.agents[{i}]"),
                "an agent id must not be empty".into(),
            );
        } else {
            agents.insert(Arc::from(a.as_str()));
        }
    }
    let detectors = r.detectors.as_ref().map(|ds| {
        let mut kinds = Vec::new();
        for (i, d) in ds.iter().enumerate() {
            match DetectorKind::from_name(d) {
                Some(k) if !kinds.contains(&k) => kinds.push(k),
                Some(_) => {}
                None => error(
                    format!("{p}.detectors[{i}]"),
                    format!(
                        "`{d}` is not a detector; detectors: {}",
                        DetectorKind::ALL.map(DetectorKind::as_str).join(", ")
                    ),
                ),
            }
        }
        if ds.is_empty() {
            error(
                format!("{p}.detectors"),
                "list at least one detector (or leave `detectors` out for all of them)".into(),
            );
        }
        kinds
    });
    let window = duration(
        &format!("{p}.window"),
        r.window.as_deref(),
        DEFAULT_PLAYBOOK_WINDOW,
        SECOND,
        error,
    );
    let cooldown = duration(
        &format!("{p}.cooldown"),
        r.cooldown.as_deref(),
        DEFAULT_COOLDOWN,
        Duration::ZERO,
        error,
    );
    if r.steps.is_empty() {
        error(
            format!("{p}.steps"),
            "a playbook needs at least one step, e.g. `steps: [[alert]]`".into(),
        );
    }
    let mut steps = Vec::new();
    for (s, raw_step) in r.steps.iter().enumerate() {
        let sp = format!("{p}.steps[{s}]");
        if raw_step.is_empty() {
            error(
                sp.clone(),
                "a step needs at least one action; write `[log]` for a step that only logs".into(),
            );
        }
        let mut step: Vec<Action> = Vec::new();
        for (a, raw_action) in raw_step.iter().enumerate() {
            let ap = format!("{sp}[{a}]");
            let Some(action) = action(&ap, raw_action, error) else {
                continue;
            };
            if step.iter().any(|x| x.as_str() == action.as_str()) {
                error(
                    ap,
                    format!("`{}` appears twice in this step", action.as_str()),
                );
                continue;
            }
            step.push(action);
        }
        steps.push(step);
    }
    Playbook {
        name: Arc::from(r.name.as_str()),
        tiers,
        agents,
        detectors,
        window,
        cooldown,
        steps,
    }
}

const ACTIONS: &str = "log, alert, throttle, step_up, pause, revoke";

fn action(p: &str, r: &RawAction, error: &mut dyn FnMut(String, String)) -> Option<Action> {
    match r {
        RawAction::Name(n) => match n.as_str() {
            "log" => Some(Action::Log),
            "alert" => Some(Action::Alert),
            "pause" => Some(Action::Pause),
            "revoke" => Some(Action::Revoke),
            "throttle" => {
                error(
                    p.into(),
                    "`throttle` needs its numbers: write `{throttle: {requests: 10, per: 1m, for: 30m}}`".into(),
                );
                None
            }
            "step_up" => {
                error(
                    p.into(),
                    "`step_up` needs a duration: write `{step_up: 1h}`".into(),
                );
                None
            }
            other => {
                error(
                    p.into(),
                    format!("`{other}` is not an action; actions: {ACTIONS}"),
                );
                None
            }
        },
        RawAction::With(RawActionWith {
            throttle: Some(t),
            step_up: None,
        }) => throttle(&format!("{p}.throttle"), t, error),
        RawAction::With(RawActionWith {
            throttle: None,
            step_up: Some(d),
        }) => {
            let d = duration(
                &format!("{p}.step_up"),
                Some(d),
                Duration::ZERO,
                SECOND,
                error,
            );
            (!d.is_zero()).then_some(Action::StepUp(d))
        }
        RawAction::With(RawActionWith {
            throttle: Some(_),
            step_up: Some(_),
        }) => {
            error(
                p.into(),
                "one action per entry: write `{throttle: ...}` and `{step_up: ...}` as two items of the step".into(),
            );
            None
        }
        RawAction::With(RawActionWith {
            throttle: None,
            step_up: None,
        }) => {
            error(p.into(), format!("an empty action; actions: {ACTIONS}"));
            None
        }
    }
}

fn throttle(p: &str, t: &RawThrottle, error: &mut dyn FnMut(String, String)) -> Option<Action> {
    let requests = if t.requests == 0 {
        error(
            format!("{p}.requests"),
            "must be at least 1 (use `pause` to stop every call)".into(),
        );
        None
    } else {
        Some(t.requests)
    };
    let per = duration(
        &format!("{p}.per"),
        Some(&t.per),
        Duration::ZERO,
        SECOND,
        error,
    );
    let for_ = duration(
        &format!("{p}.for"),
        Some(&t.for_),
        Duration::ZERO,
        SECOND,
        error,
    );
    if per.is_zero() || for_.is_zero() {
        return None;
    }
    Some(Action::Throttle {
        requests: requests?,
        per,
        for_,
    })
}

#[cfg(test)]
#[path = "compile_monitoring_tests.rs"]
mod tests;

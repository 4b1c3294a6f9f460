//! The monitor and its detectors, driven by synthetic calls: what fires, what does not, what
//! is learned, and how an agent trying to stay under each detector fares.

use super::detectors::{rate_floor, volume_floor};
use super::*;
use serde_json::json;
use std::time::Duration;

/// Monday 2026-01-05 00:00:00 UTC (01:00 in Paris, winter time).
const T0: i64 = 1_767_571_200_000;
const SEC: i64 = 1000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// A forwarded GET of `agent` on route `tickets` (upstream `helpdesk`), 100 bytes in, 1000 out.
fn call(agent: &str, at_ms: i64) -> CallEvent {
    CallEvent {
        agent: agent.into(),
        tier: "standard",
        at_ms,
        route: Some("tickets".into()),
        upstream: Some("helpdesk".into()),
        tags: Arc::from([]),
        write: false,
        denied: None,
        request_bytes: 100,
        response_bytes: 1000,
    }
}

fn on(route: &str, upstream: &str, ev: CallEvent) -> CallEvent {
    CallEvent {
        route: Some(route.into()),
        upstream: Some(upstream.into()),
        ..ev
    }
}

fn tagged(route: &str, tags: &[&str], ev: CallEvent) -> CallEvent {
    CallEvent {
        route: Some(route.into()),
        tags: tags.iter().map(|t| Arc::from(*t)).collect(),
        ..ev
    }
}

fn refused(code: &'static str, ev: CallEvent) -> CallEvent {
    CallEvent {
        denied: Some(code),
        ..ev
    }
}

fn config(f: impl FnOnce(&mut MonitoringConfig)) -> Arc<MonitoringConfig> {
    let mut c = MonitoringConfig::default();
    f(&mut c);
    Arc::new(c)
}

fn kinds(ds: &[Detection]) -> Vec<DetectorKind> {
    ds.iter().map(|d| d.detector).collect()
}

/// Feed `n` calls spread evenly over the window starting at `start`; returns the detections.
fn burst(
    m: &mut Monitor,
    n: u64,
    start: i64,
    window: i64,
    make: impl Fn(i64) -> CallEvent,
) -> Vec<Detection> {
    let mut out = Vec::new();
    for i in 0..n {
        let t = start + (i as i64 * window) / n.max(1) as i64;
        out.extend(m.observe(&make(t)));
    }
    out
}

// -------------------------------------------------------------------------------------------
// first_seen

fn first_seen_cfg(warmup_s: u64, min_calls: u64) -> Arc<MonitoringConfig> {
    config(|c| {
        c.first_seen = Some(FirstSeenConfig {
            warmup: Duration::from_secs(warmup_s),
            min_calls,
            mode: Mode::Enforce,
        })
    })
}

#[test]
fn first_seen_learns_during_the_warmup_then_fires_once_per_new_route_or_upstream() {
    let mut m = Monitor::new(first_seen_cfg(3600, 5));
    // Warm-up: an hour and five calls, on two routes; nothing fires.
    for i in 0..4 {
        assert!(m.observe(&call("bot", T0 + i * MIN)).is_empty());
    }
    assert!(m
        .observe(&on("search", "helpdesk", call("bot", T0 + 30 * MIN)))
        .is_empty());
    // Known names never fire, before or after the warm-up.
    for t in [T0 + HOUR, T0 + 2 * HOUR] {
        assert!(m.observe(&call("bot", t)).is_empty());
        assert!(m
            .observe(&on("search", "helpdesk", call("bot", t)))
            .is_empty());
    }
    // A new route on a new upstream: one detection naming both.
    let d = m.observe(&on("payments", "stripe", call("bot", T0 + 3 * HOUR)));
    assert_eq!(kinds(&d), [DetectorKind::FirstSeen]);
    assert_eq!(d[0].details["new_route"], json!("payments"));
    assert_eq!(d[0].details["new_upstream"], json!("stripe"));
    assert_eq!(d[0].details["known_routes"], json!(3));
    assert!(
        d[0].summary.starts_with(
            "agent `bot` called route `payments` and upstream `stripe` for the first time"
        ),
        "{}",
        d[0].summary
    );
    // Once: the same names again are quiet.
    assert!(m
        .observe(&on("payments", "stripe", call("bot", T0 + 3 * HOUR + 1)))
        .is_empty());
    // A new route on a known upstream names only the route.
    let d = m.observe(&on("refunds", "stripe", call("bot", T0 + 4 * HOUR)));
    assert_eq!(d[0].details["new_route"], json!("refunds"));
    assert_eq!(d[0].details["new_upstream"], json!(null));
    // No route matched: nothing to compare.
    let nothing = CallEvent {
        route: None,
        upstream: None,
        ..refused("no_route", call("bot", T0 + 5 * HOUR))
    };
    assert!(m.observe(&nothing).is_empty());
    // Other agents have their own warm-up.
    assert!(m
        .observe(&on("payments", "stripe", call("other", T0 + 5 * HOUR)))
        .is_empty());
}

#[test]
fn first_seen_warmup_needs_both_the_time_and_the_calls() {
    // (calls before the probe, time of the probe after the first call, fires)
    for (calls, at, fires) in [
        (3, 2 * HOUR, false),  // enough time, too few calls
        (10, 59 * MIN, false), // enough calls, too early
        (10, HOUR, true),
        (4, HOUR, true), // the probe itself is the fifth call
    ] {
        let mut m = Monitor::new(first_seen_cfg(3600, 5));
        for i in 0..calls {
            m.observe(&call("bot", T0 + i));
        }
        let d = m.observe(&on("admin", "helpdesk", call("bot", T0 + at)));
        assert_eq!(!d.is_empty(), fires, "calls {calls}, at {at}");
    }
}

/// Attack: during the warm-up, a prompt-injected agent probes a route it has no scope for,
/// hoping the route becomes "known" so that its use after a scope change goes unnoticed.
#[test]
fn a_refused_probe_during_the_warmup_is_not_learned() {
    let mut m = Monitor::new(first_seen_cfg(60, 1));
    let probe = refused(
        "insufficient_scope",
        on("admin", "helpdesk", call("bot", T0 + SEC)),
    );
    assert!(m.observe(&call("bot", T0)).is_empty());
    assert!(m.observe(&probe).is_empty());
    let d = m.observe(&on("admin", "helpdesk", call("bot", T0 + HOUR)));
    assert_eq!(kinds(&d), [DetectorKind::FirstSeen]);
    assert_eq!(d[0].details["new_route"], json!("admin"));

    // After the warm-up, a refused call to a new route is reported too (probing is the
    // signal), once: the later successful call does not repeat it.
    let d = m.observe(&refused(
        "no_route",
        on("export", "helpdesk", call("bot", T0 + 2 * HOUR)),
    ));
    assert_eq!(d[0].details["denied"], json!("no_route"));
    assert!(
        d[0].summary.contains("(refused: no_route)"),
        "{}",
        d[0].summary
    );
    assert!(m
        .observe(&on("export", "helpdesk", call("bot", T0 + 3 * HOUR)))
        .is_empty());
}

// -------------------------------------------------------------------------------------------
// rate

fn rate_cfg() -> Arc<MonitoringConfig> {
    config(|c| c.rate = Some(WindowedConfig::rate_default()))
}

/// `n` calls in window `w` (minutes after T0).
fn rate_window(m: &mut Monitor, agent: &str, w: i64, n: u64) -> Vec<Detection> {
    burst(m, n, T0 + w * MIN, MIN, |t| call(agent, t))
}

/// A baseline of about 30 calls a minute (25..35) over `windows` windows.
fn rate_baseline(m: &mut Monitor, agent: &str, windows: i64) {
    for w in 0..windows {
        let n = 25 + (w * 7 % 11) as u64;
        assert!(rate_window(m, agent, w, n).is_empty(), "window {w}");
    }
}

#[test]
fn rate_fires_once_in_the_window_that_crosses_mean_plus_z_spreads() {
    let mut m = Monitor::new(rate_cfg());
    rate_baseline(&mut m, "bot", 20);
    rate_window(&mut m, "bot", 20, 30); // closes window 19, so the baseline holds 20 windows
    let tr = &m.agents["bot"].rate;
    let threshold = tr.threshold(4.0, rate_floor);
    assert!((tr.mean - 30.0).abs() < 3.0, "mean {}", tr.mean);
    assert!(
        threshold > 45.0 && threshold < 60.0,
        "threshold {threshold}"
    );

    let d = rate_window(&mut m, "bot", 21, 200);
    assert_eq!(kinds(&d), [DetectorKind::Rate], "once per window");
    // It fires on the first call above the threshold, in the partial window.
    assert_eq!(d[0].details["calls"], json!(threshold.floor() as u64 + 1));
    assert_eq!(d[0].details["window_ms"], json!(MIN));
    assert_eq!(d[0].details["window_start_ms"], json!(T0 + 21 * MIN));
    assert!(d[0].summary.starts_with(&format!(
        "agent `bot` made {} calls in the 1m window from 2026-01-05T00:21:00Z, above its threshold of",
        threshold.floor() as u64 + 1
    )), "{}", d[0].summary);
    // The next ordinary window is quiet again.
    assert!(rate_window(&mut m, "bot", 22, 30).is_empty());
}

#[test]
fn rate_needs_history_and_min_calls_and_has_a_spread_floor() {
    // (baseline calls per window, windows of history, calls in the probe window, fires)
    for (per_window, history, probe, fires) in [
        (20, 20, 21, false), // a regular agent (variance 0): one more call is not an anomaly
        (20, 20, 37, false), // 20 + 4·√20 = 37.9
        (20, 20, 38, true),
        (30, 9, 500, false), // fewer than min_windows (10) learned windows: silent
        (30, 11, 500, true),
        (2, 20, 19, false), // 2 + 4·√2 = 7.7 is crossed, but under min_calls (20)
        (2, 20, 20, true),
    ] {
        let mut m = Monitor::new(rate_cfg());
        for w in 0..history {
            rate_window(&mut m, "bot", w, per_window);
        }
        let d = rate_window(&mut m, "bot", history, probe);
        assert_eq!(
            !d.is_empty(),
            fires,
            "{per_window}/window × {history}, probe {probe}"
        );
    }
}

/// Nights and weekends: idle stretches are not windows of zero calls in the baseline, or
/// every morning would look like a burst.
#[test]
fn idle_stretches_do_not_drag_the_rate_baseline_down() {
    let mut m = Monitor::new(rate_cfg());
    rate_baseline(&mut m, "bot", 30);
    let morning = 30 + 14 * 60; // 14 hours later
    for w in morning..morning + 10 {
        assert!(rate_window(&mut m, "bot", w, 32).is_empty());
    }
}

/// Attack: trigger the detector over and over, hoping the baseline learns the new level and
/// stops firing. Windows that fired are never learned, so it keeps firing.
#[test]
fn windows_that_fired_are_not_learned_so_repeating_a_burst_keeps_firing() {
    let mut m = Monitor::new(rate_cfg());
    rate_baseline(&mut m, "bot", 20);
    // The first burst window also folds the last baseline window in.
    let mut fired = rate_window(&mut m, "bot", 20, 200).len();
    let before = (m.agents["bot"].rate.mean, m.agents["bot"].rate.learned);
    assert_eq!(before.1, 20);
    for w in 21..80 {
        fired += rate_window(&mut m, "bot", w, 200).len();
    }
    assert_eq!(fired, 60, "one detection in each of the 60 windows");
    rate_window(&mut m, "bot", 80, 30); // leaves window 79 behind
    let after = (m.agents["bot"].rate.mean, m.agents["bot"].rate.learned);
    assert_eq!(before.0.to_bits(), after.0.to_bits(), "mean unchanged");
    assert_eq!(before.1, after.1, "no burst window learned");
}

/// The windows until a ramp that never fires reaches `factor` × the starting mean.
fn ramp_windows(
    m: &mut Monitor,
    mut w: i64,
    z: f64,
    floor: fn(f64) -> f64,
    factor: f64,
    send: impl Fn(&mut Monitor, i64, u64) -> Vec<Detection>,
) -> i64 {
    let start_mean = m.agents["bot"].rate.mean.max(m.agents["bot"].volume.mean);
    let first = w;
    loop {
        let tr = &m.agents["bot"];
        let st = if tr.rate.learned > 0 {
            &tr.rate
        } else {
            &tr.volume
        };
        if st.mean >= factor * start_mean {
            return w - first;
        }
        // One unit opens the window (and folds the previous one into the baseline); then the
        // most the attacker can add without firing.
        assert!(
            send(m, w, 1).is_empty(),
            "the ramp stays under at window {w}"
        );
        let tr = &m.agents["bot"];
        let st = if tr.rate.learned > 0 {
            &tr.rate
        } else {
            &tr.volume
        };
        let most = st.threshold(z, floor).floor() as u64;
        assert!(
            send(m, w, most - 1).is_empty(),
            "the ramp stays under at window {w}"
        );
        w += 1;
        assert!(w - first < 100_000, "no progress");
    }
}

/// Attack: the slow ramp. An agent that knows the detector sends, every window, the most
/// calls that stay under the threshold. Learned windows are clipped to one spread above the
/// mean, so the baseline climbs by at most α·spread per window: with the √mean floor, 10× a
/// baseline of 30 calls a minute takes over 400 windows (7 hours at 1m), during which the
/// agent gets at most mean + z·spread calls per window (measured: 477 windows for 10×, 93 for
/// 2×). Hard ceilings need `limits:`.
#[test]
fn a_slow_ramp_under_the_rate_threshold_needs_hundreds_of_windows_to_reach_ten_times() {
    let mut m = Monitor::new(rate_cfg());
    rate_baseline(&mut m, "bot", 30);
    rate_window(&mut m, "bot", 30, 30);
    let windows = ramp_windows(&mut m, 31, 4.0, rate_floor, 10.0, |m, w, n| {
        rate_window(m, "bot", w, n)
    });
    assert!(windows > 450, "10× in {windows} windows");
    // Doubling takes about an hour and a half of 1m windows.
    let mut m = Monitor::new(rate_cfg());
    rate_baseline(&mut m, "bot", 30);
    rate_window(&mut m, "bot", 30, 30);
    let windows = ramp_windows(&mut m, 31, 4.0, rate_floor, 2.0, |m, w, n| {
        rate_window(m, "bot", w, n)
    });
    assert!(windows > 85, "2× in {windows} windows");
}

/// Residual, stated: windows are fixed, so a burst split across a window boundary shows only
/// half in each. At most about 2 × threshold calls fit in any one window length this way.
#[test]
fn residual_a_burst_split_across_a_window_boundary_stays_under() {
    let mut m = Monitor::new(rate_cfg());
    rate_baseline(&mut m, "bot", 20);
    rate_window(&mut m, "bot", 20, 30);
    let threshold = m.agents["bot"].rate.threshold(4.0, rate_floor).floor() as u64;
    // The last and first 5 seconds of two windows: 2 × threshold calls in 10 seconds.
    let late = burst(&mut m, threshold, T0 + 22 * MIN - 5 * SEC, 5 * SEC, |t| {
        call("bot", t)
    });
    let early = burst(&mut m, threshold, T0 + 22 * MIN, 5 * SEC, |t| {
        call("bot", t)
    });
    assert!(late.is_empty() && early.is_empty());
}

// -------------------------------------------------------------------------------------------
// volume

/// Volume with no `min_bytes` floor, so small synthetic windows can fire.
fn volume_cfg(max_bytes: Option<u64>) -> Arc<MonitoringConfig> {
    volume_cfg_min(max_bytes, 0)
}

fn volume_cfg_min(max_bytes: Option<u64>, min_bytes: u64) -> Arc<MonitoringConfig> {
    config(|c| {
        c.volume = Some(VolumeConfig {
            max_bytes,
            min_bytes,
            ..VolumeConfig::default()
        })
    })
}

/// `calls` calls of `bytes` response bytes each in window `w`.
fn volume_window(m: &mut Monitor, w: i64, calls: u64, bytes: u64) -> Vec<Detection> {
    burst(m, calls, T0 + w * MIN, MIN, |t| CallEvent {
        request_bytes: 0,
        response_bytes: bytes,
        ..call("bot", t)
    })
}

#[test]
fn volume_fires_on_the_absolute_budget_without_history_once_per_window() {
    let mut m = Monitor::new(volume_cfg(Some(50_000_000)));
    // 10 MB calls: the sixth crosses 50 MB; the rest of the window is quiet.
    let d = volume_window(&mut m, 0, 10, 10_000_000);
    assert_eq!(kinds(&d), [DetectorKind::Volume]);
    assert_eq!(d[0].details["reason"], json!("max_bytes"));
    assert_eq!(d[0].details["bytes"], json!(60_000_000u64));
    assert!(
        d[0].summary
            .contains("moved 60.0 MB (60000000 bytes) in the 1m window"),
        "{}",
        d[0].summary
    );
    assert!(
        d[0].summary
            .ends_with("above the budget of 50.0 MB per window"),
        "{}",
        d[0].summary
    );
    // Exactly at the budget is allowed; the next window re-arms.
    assert!(volume_window(&mut m, 1, 5, 10_000_000).is_empty());
    assert_eq!(volume_window(&mut m, 2, 6, 10_000_000).len(), 1);
}

#[test]
fn volume_fires_above_its_baseline_and_has_a_spread_floor() {
    // (min_bytes, bytes per window of the baseline, bytes in the probe window, fires)
    for (min_bytes, base, probe, fires) in [
        (0, 10_000, 10_500, false), // a perfectly steady agent: floor 10% → threshold 14,000
        (0, 10_000, 14_000, false),
        (0, 10_000, 14_100, true),
        (0, 1_000, 5_000, false), // floor 1 KiB → threshold 1,000 + 4,096
        (0, 1_000, 5_200, true),
        // 15× the usual, but under min_bytes (default 1 MB): not worth a detection.
        (DEFAULT_MIN_BYTES, 20_000, 300_000, false),
        (DEFAULT_MIN_BYTES, 20_000, 999_999, false),
        (DEFAULT_MIN_BYTES, 20_000, 1_000_000, true),
    ] {
        let mut m = Monitor::new(volume_cfg_min(None, min_bytes));
        for w in 0..12 {
            volume_window(&mut m, w, 1, base);
        }
        let d = volume_window(&mut m, 12, 1, probe);
        assert_eq!(!d.is_empty(), fires, "{min_bytes}: {base} then {probe}");
        if fires {
            assert_eq!(d[0].details["reason"], json!("baseline"));
        }
    }
}

/// Attack: exfiltrate in many small responses, each unremarkable. Volume sums the window, so
/// the total is what counts.
#[test]
fn many_small_calls_add_up_to_a_volume_detection() {
    let mut m = Monitor::new(volume_cfg(None));
    for w in 0..12 {
        volume_window(&mut m, w, 10, 2_000); // 20 kB a minute in 2 kB responses
    }
    let d = volume_window(&mut m, 12, 100, 2_000); // the same responses, 200 kB
    assert_eq!(kinds(&d), [DetectorKind::Volume]);
    // Fired windows are not learned: a repeat fires again, the baseline is unchanged.
    let mean = m.agents["bot"].volume.mean;
    assert_eq!(volume_window(&mut m, 13, 100, 2_000).len(), 1);
    volume_window(&mut m, 14, 10, 2_000);
    assert_eq!(m.agents["bot"].volume.mean.to_bits(), mean.to_bits());
}

/// Attack: the slow ramp on volume, as for rate: the 10% floor lets the mean grow at most
/// α·10% = 0.5% per window: 464 windows for 10× (measured); `max_bytes` is the hard ceiling.
#[test]
fn a_slow_ramp_under_the_volume_threshold_needs_hundreds_of_windows_to_reach_ten_times() {
    let mut m = Monitor::new(volume_cfg(None));
    for w in 0..31 {
        volume_window(&mut m, w, 1, 100_000 + (w as u64 % 5) * 2_000);
    }
    let windows = ramp_windows(&mut m, 31, 4.0, volume_floor, 10.0, |m, w, n| {
        volume_window(m, w, 1, n)
    });
    assert!(windows > 450, "10× in {windows} windows");
    // With a budget, the ramp stops at it.
    let mut m = Monitor::new(volume_cfg(Some(150_000)));
    for w in 0..31 {
        volume_window(&mut m, w, 1, 100_000);
    }
    let mut w = 31;
    let fired = loop {
        let most = m.agents["bot"].volume.threshold(4.0, volume_floor).floor() as u64;
        let d = volume_window(&mut m, w, 1, most);
        if !d.is_empty() {
            break d;
        }
        w += 1;
    };
    assert_eq!(fired[0].details["reason"], json!("max_bytes"));
}

// -------------------------------------------------------------------------------------------
// denial_burst

fn denial_cfg(denials: u32) -> Arc<MonitoringConfig> {
    config(|c| {
        c.denial_burst = Some(DenialBurstConfig {
            denials,
            ..DenialBurstConfig::default()
        })
    })
}

#[test]
fn denial_burst_counts_listed_codes_in_a_sliding_window() {
    // (refusal times in seconds after T0, code, detections expected)
    let cases: &[(&[i64], &'static str, usize)] = &[
        (&[0, 1, 2, 3, 4], "insufficient_scope", 1),
        (&[0, 1, 2, 3], "insufficient_scope", 0),
        (&[0, 20, 40, 59, 70], "no_route", 0), // never 5 within 60 s
        (&[0, 20, 40, 50, 59], "no_route", 1), // 59 s apart: inside
        (&[0, 1, 2, 3, 60], "condition_failed", 0), // 60 s apart: outside
        (&[0, 1, 2, 3, 4], "rate_limited", 0), // not a listed code
        (&[0, 1, 2, 3, 4], "upstream_timeout", 0),
    ];
    for (times, code, want) in cases {
        let mut m = Monitor::new(denial_cfg(5));
        let mut got = Vec::new();
        for s in *times {
            got.extend(m.observe(&refused(code, call("bot", T0 + s * SEC))));
        }
        assert_eq!(got.len(), *want, "{times:?} {code}");
        if *want == 1 {
            let d = &got[0];
            assert_eq!(d.details["denials"], json!(5));
            assert_eq!(d.details["codes"][*code], json!(5));
            assert!(
                d.summary.starts_with("agent `bot` was refused 5 times in"),
                "{}",
                d.summary
            );
        }
    }
}

/// Attack: fixed windows would let 2×(n-1) refusals straddle a boundary unnoticed; the window
/// slides, so the last n refusals are what count.
#[test]
fn a_denial_burst_straddling_a_minute_boundary_still_fires() {
    let mut m = Monitor::new(denial_cfg(10));
    let mut got = Vec::new();
    for i in 0..9 {
        got.extend(m.observe(&refused("no_route", call("bot", T0 + 50 * SEC + i * SEC))));
    }
    for i in 0..9 {
        got.extend(m.observe(&refused("no_route", call("bot", T0 + 60 * SEC + i * SEC))));
    }
    assert_eq!(kinds(&got), [DetectorKind::DenialBurst]);
}

#[test]
fn a_continuing_denial_burst_fires_once_per_window() {
    let mut m = Monitor::new(denial_cfg(10));
    let mut fired_at = Vec::new();
    // One refusal a second for three minutes.
    for s in 0..180 {
        let t = T0 + s * SEC;
        let mixed = if s % 3 == 0 {
            "insufficient_scope"
        } else {
            "no_route"
        };
        if !m.observe(&refused(mixed, call("bot", t))).is_empty() {
            fired_at.push(s);
        }
    }
    assert_eq!(fired_at, [9, 69, 129]);
}

/// Residual, stated: an agent that keeps just under the count (9 refusals a minute, forever)
/// never fires this detector; the hourly refusal count in `agent_stats` shows it.
#[test]
fn residual_refusals_just_under_the_count_never_fire() {
    let mut m = Monitor::new(denial_cfg(10));
    for minute in 0..60 {
        for i in 0..9 {
            let t = T0 + minute * MIN + i * 6 * SEC + 7 * SEC;
            assert!(m.observe(&refused("no_route", call("bot", t))).is_empty());
        }
    }
    let stats = m.agent_stats("bot", T0 + HOUR - 1).expect("known");
    assert_eq!((stats.calls_24h, stats.denials_24h), (540, 540));
}

// -------------------------------------------------------------------------------------------
// off_hours

fn off_hours_cfg() -> Arc<MonitoringConfig> {
    config(|c| {
        c.off_hours = Some(OffHoursConfig {
            zone: chrono_tz::Europe::Paris,
            ..OffHoursConfig::default()
        })
    })
}

/// Office hours in Paris in winter (UTC+1): 09:00-17:59 local is 08:00-16:59 UTC; 5 calls an
/// hour, every day for `days` days from T0.
fn office_hours(m: &mut Monitor, days: i64) {
    for day in 0..days {
        for h in 8..17 {
            for i in 0..5 {
                let t = T0 + day * DAY + h * HOUR + i * 10 * MIN;
                assert!(m.observe(&call("bot", t)).is_empty(), "day {day} {h}h");
            }
        }
    }
}

#[test]
fn off_hours_fires_once_per_new_local_hour_after_min_days_and_never_learns_it() {
    let mut m = Monitor::new(off_hours_cfg());
    office_hours(&mut m, 8);
    let day9 = T0 + 8 * DAY;
    // 02:10 UTC = 03:10 in Paris.
    let d = m.observe(&call("bot", day9 + 2 * HOUR + 10 * MIN));
    assert_eq!(kinds(&d), [DetectorKind::OffHours]);
    assert_eq!(d[0].details["local_time"], json!("03:10"));
    assert_eq!(d[0].details["usual_hours"], json!("09-17"));
    assert_eq!(
        d[0].summary,
        "agent `bot` called at 03:10 Europe/Paris, an hour of the day it was never active in over 7 days and 360 calls (usual hours: 09-17)"
    );
    // Once per hour; the next hour fires again; usual hours never do.
    assert!(m
        .observe(&call("bot", day9 + 2 * HOUR + 50 * MIN))
        .is_empty());
    assert_eq!(m.observe(&call("bot", day9 + 3 * HOUR)).len(), 1);
    assert!(m.observe(&call("bot", day9 + 9 * HOUR)).is_empty());
    // The hour that fired was not learned: the next night fires again.
    assert_eq!(m.observe(&call("bot", day9 + DAY + 2 * HOUR)).len(), 1);
    assert_eq!(m.agents["bot"].off_hours.hours, 0b11_1111_1110_0000_0000);
}

#[test]
fn off_hours_learns_silently_until_min_days_and_min_calls() {
    let mut m = Monitor::new(off_hours_cfg());
    office_hours(&mut m, 3);
    // A night call on day 3: still learning (3 days < 7), so 03:00 becomes a usual hour.
    assert!(m.observe(&call("bot", T0 + 3 * DAY + 2 * HOUR)).is_empty());
    for day in 3..8 {
        for h in 8..17 {
            m.observe(&call("bot", T0 + day * DAY + h * HOUR));
        }
    }
    // After the warm-up, 03:00 is usual and 05:00 is not.
    assert!(m.observe(&call("bot", T0 + 9 * DAY + 2 * HOUR)).is_empty());
    assert_eq!(m.observe(&call("bot", T0 + 9 * DAY + 4 * HOUR)).len(), 1);

    // Seven days but too few calls: silent (min_calls 100).
    let mut m = Monitor::new(off_hours_cfg());
    for day in 0..8 {
        m.observe(&call("bot", T0 + day * DAY + 10 * HOUR));
    }
    assert!(m.observe(&call("bot", T0 + 8 * DAY + 2 * HOUR)).is_empty());
}

/// The zone's offset follows daylight saving time: hours learned in winter (UTC+1) are the
/// same local hours in summer (UTC+2).
#[test]
fn off_hours_follows_daylight_saving_time() {
    let mut m = Monitor::new(off_hours_cfg());
    office_hours(&mut m, 8);
    let july = T0 + 190 * DAY; // 2026-07-14, UTC+2
    assert!(m
        .observe(&call("bot", july + 7 * HOUR + 30 * MIN))
        .is_empty()); // 09:30 local
    let d = m.observe(&call("bot", july + DAY + 6 * HOUR + 30 * MIN)); // 08:30 local
    assert_eq!(d[0].details["local_time"], json!("08:30"));
}

// -------------------------------------------------------------------------------------------
// sensitive_sequence

fn sequence_cfg() -> Arc<MonitoringConfig> {
    config(|c| {
        c.sensitive_sequence = Some(SequenceConfig {
            from: "private_data".into(),
            to: "egress".into(),
            within: Duration::from_secs(600),
            mode: Mode::Enforce,
        })
    })
}

#[test]
fn sensitive_sequence_fires_once_per_read_followed_by_egress_within_the_window() {
    let read = |t| tagged("crm", &["private_data"], call("bot", t));
    let post = |t| tagged("slack-post", &["egress", "chat"], call("bot", t));
    // (calls as (kind, seconds after T0), detections at these indices)
    type Step = (&'static str, i64);
    let cases: &[(&[Step], &[usize])] = &[
        (&[("read", 0), ("post", 42)], &[1]),
        (&[("read", 0), ("post", 600)], &[1]), // exactly `within`
        (&[("read", 0), ("post", 601)], &[]),  // too late (residual: wait it out)
        (&[("post", 0), ("read", 10)], &[]),   // egress first is not the sequence
        (&[("read", 0), ("post", 5), ("post", 6)], &[1]), // once per read
        (
            &[("read", 0), ("post", 5), ("read", 7), ("post", 8)],
            &[1, 3],
        ),
        (&[("denied-read", 0), ("post", 5)], &[]), // a refused read read nothing
        (&[("read", 0), ("denied-post", 5)], &[1]), // the attempt is the signal
        (&[("both", 0)], &[]),                     // one route with both tags
        (&[("both", 0), ("both", 5)], &[1]),
    ];
    for (steps, want) in cases {
        let mut m = Monitor::new(sequence_cfg());
        let mut got = Vec::new();
        for (i, (kind, s)) in steps.iter().enumerate() {
            let t = T0 + s * SEC;
            let ev = match *kind {
                "read" => read(t),
                "post" => post(t),
                "denied-read" => refused("condition_failed", read(t)),
                "denied-post" => refused("insufficient_scope", post(t)),
                "both" => tagged("sync", &["private_data", "egress"], call("bot", t)),
                other => unreachable!("{other}"),
            };
            if !m.observe(&ev).is_empty() {
                got.push(i);
            }
        }
        assert_eq!(&got, want, "{steps:?}");
    }
    let mut m = Monitor::new(sequence_cfg());
    m.observe(&read(T0));
    let d = m.observe(&refused("insufficient_scope", post(T0 + 42 * SEC)));
    assert_eq!(
        d[0].summary,
        "agent `bot` called route `slack-post` (tag `egress`) 42s after reading from route `crm` (tag `private_data`), within the 10m the sequence is watched for; the call was refused (insufficient_scope)"
    );
    assert_eq!(d[0].details["gap_ms"], json!(42_000));
    assert_eq!(d[0].details["from_route"], json!("crm"));
}

// -------------------------------------------------------------------------------------------
// The monitor as a whole

fn all_on(mode: Mode) -> MonitoringConfig {
    MonitoringConfig {
        mode,
        first_seen: Some(FirstSeenConfig {
            warmup: Duration::from_secs(60),
            min_calls: 1,
            mode: Mode::Shadow,
        }),
        rate: Some(WindowedConfig::rate_default()),
        denial_burst: Some(DenialBurstConfig::default()),
        volume: Some(VolumeConfig::default()),
        off_hours: Some(OffHoursConfig::default()),
        sensitive_sequence: Some(SequenceConfig {
            from: "private_data".into(),
            to: "egress".into(),
            within: Duration::from_secs(600),
            mode: Mode::Enforce,
        }),
        playbooks: Vec::new(),
    }
}

#[test]
fn one_call_can_reveal_several_things_each_with_its_own_mode() {
    let mut m = Monitor::new(Arc::new(all_on(Mode::Enforce)));
    m.observe(&tagged("crm", &["private_data"], call("bot", T0)));
    let d = m.observe(&tagged(
        "slack-post",
        &["egress"],
        call("bot", T0 + 5 * MIN),
    ));
    assert_eq!(
        kinds(&d),
        [DetectorKind::FirstSeen, DetectorKind::SensitiveSequence]
    );
    assert_eq!(
        d.iter().map(|d| d.shadow).collect::<Vec<_>>(),
        [true, false]
    );
    assert!(d
        .iter()
        .all(|d| d.agent.as_ref() == "bot" && d.at_ms == T0 + 5 * MIN));

    // The global shadow mode makes every detection shadow.
    let mut m = Monitor::new(Arc::new(all_on(Mode::Shadow)));
    m.observe(&tagged("crm", &["private_data"], call("bot", T0)));
    let d = m.observe(&tagged(
        "slack-post",
        &["egress"],
        call("bot", T0 + 5 * MIN),
    ));
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|d| d.shadow));
}

#[test]
fn agent_stats_count_the_last_24_hours_and_keep_the_last_detections() {
    let mut m = Monitor::new(first_seen_cfg(60, 1));
    assert_eq!(m.agent_stats("bot", T0), None);
    assert_eq!(m.tracked_agents(), 0);
    // One call an hour for 30 hours, every third refused.
    for h in 0..30 {
        let ev = call("bot", T0 + h * HOUR + 5 * MIN);
        let ev = if h % 3 == 0 {
            refused("no_route", ev)
        } else {
            ev
        };
        m.observe(&ev);
    }
    let s = m
        .agent_stats("bot", T0 + 29 * HOUR + 30 * MIN)
        .expect("known");
    assert_eq!(
        (s.first_seen_ms, s.last_seen_ms),
        (T0 + 5 * MIN, T0 + 29 * HOUR + 5 * MIN)
    );
    assert_eq!((s.calls_24h, s.denials_24h), (24, 8)); // hours 6..=29
                                                       // Asked later, older buckets drop out; asked much later, nothing is left.
    let s = m.agent_stats("bot", T0 + 40 * HOUR).expect("known");
    assert_eq!((s.calls_24h, s.denials_24h), (13, 4)); // hours 17..=29
    assert_eq!(
        m.agent_stats("bot", T0 + 60 * HOUR).map(|s| s.calls_24h),
        Some(0)
    );
    // A gap of more than a day clears the ring.
    m.observe(&call("bot", T0 + 100 * HOUR));
    assert_eq!(
        m.agent_stats("bot", T0 + 100 * HOUR).map(|s| s.calls_24h),
        Some(1)
    );

    // The last 20 detections are kept, oldest first.
    for i in 0..25 {
        m.observe(&on(
            &format!("route-{i}"),
            "helpdesk",
            call("bot", T0 + 101 * HOUR + i),
        ));
    }
    let s = m.agent_stats("bot", T0 + 101 * HOUR).expect("known");
    assert_eq!(s.recent.len(), RECENT_DETECTIONS);
    assert!(
        s.recent[0].summary.contains("`route-5`"),
        "{}",
        s.recent[0].summary
    );
    assert!(s.recent[19].summary.contains("`route-24`"));
    assert!(s
        .recent
        .iter()
        .all(|r| r.detector == DetectorKind::FirstSeen && !r.shadow));
    assert_eq!(m.tracked_agents(), 1);
    assert!(m.forget_agent("bot"));
    assert!(!m.forget_agent("bot"));
    assert_eq!(m.tracked_agents(), 0);
}

/// Calls a few milliseconds out of order (several proxy workers) count at the agent's latest
/// time; windows never move backwards.
#[test]
fn a_late_call_counts_at_the_latest_time() {
    let mut m = Monitor::new(rate_cfg());
    m.observe(&call("bot", T0 + MIN + 5));
    m.observe(&call("bot", T0 + MIN - 5));
    let tr = &m.agents["bot"];
    assert_eq!(
        (tr.rate.window, tr.rate.value, tr.last_ms),
        (T0 / MIN + 1, 2, T0 + MIN + 5)
    );
}

#[test]
fn reloading_keeps_baselines_unless_what_they_measure_changed() {
    let mut m = Monitor::new(Arc::new(all_on(Mode::Enforce)));
    rate_baseline(&mut m, "bot", 12);
    m.observe(&tagged(
        "crm",
        &["private_data"],
        call("bot", T0 + 12 * MIN),
    ));
    let learned = m.agents["bot"].rate.learned;
    assert_eq!(learned, 12);
    // New thresholds: kept.
    let mut cfg = all_on(Mode::Enforce);
    cfg.rate.as_mut().expect("on").z = 3.0;
    cfg.first_seen.as_mut().expect("on").min_calls = 1000;
    m.set_config(Arc::new(cfg.clone()));
    assert_eq!(m.agents["bot"].rate.learned, learned);
    assert_ne!(m.agents["bot"].first_seen.since_ms, detectors::NEVER);
    assert_ne!(m.agents["bot"].sequence.last_from, detectors::NEVER);
    // A new rate window and new tags: those two start over; the others stay.
    cfg.rate.as_mut().expect("on").window = Duration::from_secs(300);
    cfg.sensitive_sequence.as_mut().expect("on").to = "chat".into();
    m.set_config(Arc::new(cfg.clone()));
    assert_eq!(m.agents["bot"].rate.learned, 0);
    assert_eq!(m.agents["bot"].sequence.last_from, detectors::NEVER);
    assert_ne!(m.agents["bot"].first_seen.since_ms, detectors::NEVER);
    // Switching first_seen off drops what it knew; on again, it warms up anew.
    cfg.first_seen = None;
    m.set_config(Arc::new(cfg));
    assert_eq!(m.agents["bot"].first_seen.since_ms, detectors::NEVER);
    assert!(m.agents["bot"].first_seen.known.is_empty());
}

#[test]
fn baselines_survive_export_and_import() {
    let cfg = Arc::new(all_on(Mode::Enforce));
    let mut m = Monitor::new(cfg.clone());
    rate_baseline(&mut m, "bot", 15);
    for w in 15..27 {
        volume_window(&mut m, w, 1, 10_000);
    }
    m.observe(&on("search", "index", call("bot", T0 + 30 * MIN)));
    m.observe(&on("admin", "helpdesk", call("bot", T0 + 3 * HOUR))); // flagged
    m.observe(&call("other", T0 + 3 * HOUR));
    let blob = m.export();
    assert_eq!(blob["version"], json!(1));
    assert_eq!(blob["params"]["rate_window_ms"], json!(60_000));
    let fs = &blob["agents"]["bot"]["first_seen"];
    // Learned in the first minute (the warm-up), reported after it.
    assert_eq!(fs["routes"], json!(["tickets"]));
    assert_eq!(fs["upstreams"], json!(["helpdesk"]));
    assert_eq!(fs["flagged_routes"], json!(["admin", "search"]));
    assert_eq!(fs["flagged_upstreams"], json!(["index"]));
    // JSON text round trip, as the wiring stores it.
    let text = serde_json::to_string(&blob).expect("json");
    let back: Value = serde_json::from_str(&text).expect("json");

    let mut restored = Monitor::new(cfg.clone());
    restored.import(&back).expect("imports");
    assert_eq!(restored.tracked_agents(), 2);
    assert_eq!(restored.export(), blob, "export ∘ import is the identity");
    let (a, b) = (&m.agents["bot"], &restored.agents["bot"]);
    assert_eq!(a.rate.mean.to_bits(), b.rate.mean.to_bits());
    assert_eq!(a.rate.var.to_bits(), b.rate.var.to_bits());
    assert_eq!(a.off_hours.hours, b.off_hours.hours);
    // No new warm-up after the restart: a new route fires at once, a flagged one does not.
    let d = restored.observe(&on("payments", "stripe", call("bot", T0 + 4 * HOUR)));
    assert_eq!(d[0].detector, DetectorKind::FirstSeen);
    assert!(restored
        .observe(&on("admin", "helpdesk", call("bot", T0 + 4 * HOUR)))
        .is_empty());
    assert_eq!(
        restored
            .agent_stats("bot", T0 + 4 * HOUR)
            .map(|s| s.first_seen_ms),
        Some(T0)
    );

    // A baseline measured in another window is skipped, the rest is kept.
    let mut cfg5 = all_on(Mode::Enforce);
    cfg5.rate.as_mut().expect("on").window = Duration::from_secs(300);
    let mut other = Monitor::new(Arc::new(cfg5));
    other.import(&back).expect("imports");
    assert_eq!(other.agents["bot"].rate.learned, 0);
    assert_eq!(
        other.agents["bot"].volume.learned,
        m.agents["bot"].volume.learned
    );
    assert!(other.agents["bot"].volume.learned > 0);
}

#[test]
fn import_refuses_other_versions_and_malformed_blobs_and_changes_nothing() {
    let mut m = Monitor::new(Arc::new(all_on(Mode::Enforce)));
    rate_baseline(&mut m, "bot", 12);
    let good = m.export();
    let mut fresh = Monitor::new(Arc::new(all_on(Mode::Enforce)));
    fresh.observe(&call("keep", T0));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    for (blob, text) in [
        (
            with(&|v| v["version"] = json!(2)),
            "unsupported baseline format version 2",
        ),
        (with(&|v| v["format"] = json!("x")), "not a baseline export"),
        (json!(null), "not a baseline export"),
        (
            with(&|v| v["agents"]["bot"]["rate"]["mean"] = json!(-1.0)),
            "agents.bot.rate: mean and var",
        ),
        (
            with(&|v| v["agents"]["bot"]["off_hours"]["hours"] = json!([25])),
            "25 is not an hour",
        ),
        (
            with(&|v| v["agents"]["bot"]["extra"] = json!(1)),
            "unknown field `extra`",
        ),
        (
            with(&|v| v["agents"]["bot"]["first_ms"] = json!(i64::MIN + 1)),
            "agents.bot.first_ms: -9223372036854775807 is not a time",
        ),
        (
            with(&|v| v["agents"]["bot"]["activity"]["hour"] = json!(i64::MAX)),
            "agents.bot.activity.hour",
        ),
    ] {
        let err = fresh.import(&blob).expect_err("refused");
        assert!(err.contains(text), "{err}");
        assert_eq!(fresh.tracked_agents(), 1, "nothing changed");
    }
}

/// The unkeyed name hash spreads config-like names over the low bits hashbrown indexes by,
/// including names that differ only in the last byte of an 8-byte word.
#[test]
fn the_name_hash_spreads_similar_names_over_buckets() {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let build = BuildHasherDefault::<detectors::NameHasher>::default();
    let buckets = |names: &[String], bits: u32| -> usize {
        let mask = (1u64 << bits) - 1;
        let set: std::collections::HashSet<u64> = names
            .iter()
            .map(|n| build.hash_one(n.as_str()) & mask)
            .collect();
        set.len()
    };
    let agents: Vec<String> = (0..1000).map(|i| format!("agent-{i:05}")).collect();
    let routes: Vec<String> = (0..1000).map(|i| format!("r-{i:03}xyz")).collect();
    let last_byte: Vec<String> = (b'a'..=b'z')
        .map(|c| format!("tickets{}", c as char))
        .collect();
    // 1,000 random values in 1,024 buckets fill about 632 of them.
    assert!(buckets(&agents, 10) > 580, "{}", buckets(&agents, 10));
    assert!(buckets(&routes, 10) > 580, "{}", buckets(&routes, 10));
    assert!(buckets(&last_byte, 8) >= 24, "{}", buckets(&last_byte, 8));
}

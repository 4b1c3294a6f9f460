//! Playbook decisions from tables of detections: escalation, windows, cooldowns, shadow mode
//! and matching.

use super::*;
use crate::observe::anomaly::{DetectorKind, Tier};
use serde_json::Map;
use std::collections::BTreeSet;

const T0: i64 = 1_767_571_200_000;
const MIN: i64 = 60_000;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const THROTTLE: Action = Action::Throttle {
    requests: 10,
    per: Duration::from_secs(60),
    for_: Duration::from_secs(1800),
};
const STEP_UP: Action = Action::StepUp(Duration::from_secs(3600));

fn detection(agent: &str, detector: DetectorKind, at_ms: i64, shadow: bool) -> Detection {
    Detection {
        agent: agent.into(),
        detector,
        at_ms,
        shadow,
        summary: String::new(),
        details: Map::new(),
    }
}

/// A playbook for everyone with the documented ladder, a 1h window and no cooldown.
fn ladder(name: &str) -> Playbook {
    Playbook {
        name: name.into(),
        tiers: vec![],
        agents: BTreeSet::new(),
        detectors: None,
        window: secs(3600),
        cooldown: Duration::ZERO,
        steps: vec![
            vec![Action::Alert],
            vec![Action::Alert, THROTTLE],
            vec![Action::Alert, STEP_UP],
            vec![Action::Alert, Action::Pause],
        ],
    }
}

fn engine(playbooks: Vec<Playbook>) -> Playbooks {
    Playbooks::new(Arc::new(MonitoringConfig {
        playbooks,
        ..MonitoringConfig::default()
    }))
}

/// (step, actions, suppressed, shadowed) of one decision.
type Row = (usize, Vec<Action>, Vec<Action>, Vec<Action>);

/// Decide on detections of `bot` (rate, enforced unless `shadow`) at these minutes after T0;
/// returns (step, actions, suppressed, shadowed) of each.
fn run(p: &mut Playbooks, at: &[(i64, bool)]) -> Vec<Row> {
    at.iter()
        .map(|&(m, shadow)| {
            let t = T0 + m * MIN;
            let d = p.decide(
                &detection("bot", DetectorKind::Rate, t, shadow),
                "standard",
                t,
            );
            (d.step, d.actions, d.suppressed, d.shadowed)
        })
        .collect()
}

use Action::{Alert, Log, Pause};

#[test]
fn the_nth_detection_in_the_window_runs_the_nth_step_and_the_last_repeats() {
    let mut p = engine(vec![ladder("contain")]);
    let got = run(
        &mut p,
        &[(0, false), (1, false), (2, false), (3, false), (4, false)],
    );
    let steps: Vec<(usize, Vec<Action>)> = got.into_iter().map(|g| (g.0, g.1)).collect();
    assert_eq!(
        steps,
        vec![
            (1, vec![Log, Alert]),
            (2, vec![Log, Alert, THROTTLE]),
            (3, vec![Log, Alert, STEP_UP]),
            (4, vec![Log, Alert, Pause]),
            (4, vec![Log, Alert, Pause]),
        ]
    );
}

#[test]
fn detections_older_than_the_window_no_longer_count() {
    // (minutes of the detections, steps expected)
    let cases: &[(&[i64], &[usize])] = &[
        (&[0, 61], &[1, 1]),
        (&[0, 30, 61], &[1, 2, 2]), // at 61 the one at 0 has left the 1h window
        (&[0, 59, 60], &[1, 2, 2]), // exactly 1h old: out
        (&[0, 10, 20, 30, 40, 50, 70, 75], &[1, 2, 3, 4, 4, 4, 4, 4]),
        (&[0, 10, 20, 30, 95, 100], &[1, 2, 3, 4, 1, 2]),
    ];
    for (at, want) in cases {
        let mut p = engine(vec![ladder("contain")]);
        let at: Vec<(i64, bool)> = at.iter().map(|m| (*m, false)).collect();
        let steps: Vec<usize> = run(&mut p, &at).into_iter().map(|g| g.0).collect();
        assert_eq!(&steps, want, "{at:?}");
    }
}

#[test]
fn cooldowns_hold_back_repeats_of_a_kind_but_never_the_log() {
    let mut p = engine(vec![Playbook {
        cooldown: secs(300),
        ..ladder("contain")
    }]);
    let got = run(
        &mut p,
        &[
            (0, false),
            (1, false),
            (2, false),
            (3, false),
            (4, false),
            (10, false),
        ],
    );
    let want: Vec<Row> = vec![
        (1, vec![Log, Alert], vec![], vec![]),
        // A restriction always comes with its alert, cooldown or not.
        (2, vec![Log, Alert, THROTTLE], vec![], vec![]),
        (3, vec![Log, Alert, STEP_UP], vec![], vec![]),
        (4, vec![Log, Alert, Pause], vec![], vec![]),
        // Nothing new is restricted: the repeated alert is held back.
        (4, vec![Log], vec![Alert, Pause], vec![]),
        // 10 minutes: the alert of minute 0 and the pause of minute 3 are past the cooldown.
        (4, vec![Log, Alert, Pause], vec![], vec![]),
    ];
    assert_eq!(got, want);
}

/// Escalation is never held back by its own milder step: a stricter throttle or a longer
/// step-up runs within the cooldown; the same or a milder one does not.
#[test]
fn a_stricter_action_of_a_kind_is_not_held_back_by_the_cooldown() {
    let throttle = |requests: u64, per: u64, for_: u64| Action::Throttle {
        requests,
        per: secs(per),
        for_: secs(for_),
    };
    // (steps, actions run at each of three detections besides the log)
    let cases: Vec<(Vec<Action>, Vec<Vec<Action>>)> = vec![
        (
            vec![
                throttle(10, 60, 1800),
                throttle(5, 60, 1800),
                throttle(10, 60, 1800),
            ],
            vec![
                vec![throttle(10, 60, 1800)],
                vec![throttle(5, 60, 1800)],
                vec![],
            ],
        ),
        (
            // 10 per minute is a lower rate than 1 per second; a longer one is stricter too.
            vec![
                throttle(1, 1, 60),
                throttle(10, 60, 60),
                throttle(10, 60, 3600),
            ],
            vec![
                vec![throttle(1, 1, 60)],
                vec![throttle(10, 60, 60)],
                vec![throttle(10, 60, 3600)],
            ],
        ),
        (
            vec![
                Action::StepUp(secs(3600)),
                Action::StepUp(secs(14400)),
                Action::StepUp(secs(3600)),
            ],
            vec![
                vec![Action::StepUp(secs(3600))],
                vec![Action::StepUp(secs(14400))],
                vec![],
            ],
        ),
        (
            vec![Action::Revoke, Action::Revoke, Action::Revoke],
            vec![vec![Action::Revoke], vec![], vec![]],
        ),
    ];
    for (steps, want) in cases {
        let mut p = engine(vec![Playbook {
            cooldown: secs(3600),
            steps: steps.iter().map(|a| vec![*a]).collect(),
            ..ladder("contain")
        }]);
        let got: Vec<Vec<Action>> = run(&mut p, &[(0, false), (1, false), (2, false)])
            .into_iter()
            .map(|g| g.1[1..].to_vec())
            .collect();
        assert_eq!(got, want, "{steps:?}");
    }
}

/// A shadow detection only logs and alerts; what enforcing would have done is listed. Shadow
/// detections do not push enforced ones up the ladder, but their own step counts both.
#[test]
fn shadow_detections_only_notify_and_do_not_escalate_enforced_ones() {
    let mut p = engine(vec![ladder("contain")]);
    let got = run(
        &mut p,
        &[(0, true), (1, true), (2, false), (3, true), (4, false)],
    );
    let want: Vec<Row> = vec![
        (1, vec![Log, Alert], vec![], vec![]),
        (2, vec![Log, Alert], vec![], vec![THROTTLE]),
        (1, vec![Log, Alert], vec![], vec![]), // the first enforced detection
        (4, vec![Log, Alert], vec![], vec![Pause]),
        (2, vec![Log, Alert, THROTTLE], vec![], vec![]),
    ];
    assert_eq!(got, want);
}

#[test]
fn the_first_matching_playbook_handles_a_detection() {
    let sup = Playbook {
        tiers: vec![Tier::Supervised],
        detectors: Some(vec![DetectorKind::DenialBurst]),
        steps: vec![vec![Pause]],
        ..ladder("supervised-denials")
    };
    let vip = Playbook {
        agents: ["vip".into()].into(),
        steps: vec![vec![Log]],
        ..ladder("vip")
    };
    let both = Playbook {
        tiers: vec![Tier::Supervised],
        agents: ["vip".into(), "ops".into()].into(),
        ..ladder("supervised-or-listed")
    };
    let cases: &[(&str, &str, DetectorKind, Option<&str>)] = &[
        (
            "x",
            "supervised",
            DetectorKind::DenialBurst,
            Some("supervised-denials"),
        ),
        (
            "x",
            "supervised",
            DetectorKind::Rate,
            Some("supervised-or-listed"),
        ),
        (
            "vip",
            "supervised",
            DetectorKind::DenialBurst,
            Some("supervised-denials"),
        ),
        ("vip", "standard", DetectorKind::Rate, Some("vip")),
        (
            "ops",
            "standard",
            DetectorKind::Rate,
            Some("supervised-or-listed"),
        ),
        ("x", "standard", DetectorKind::Rate, None),
    ];
    for (agent, tier, kind, want) in cases {
        let mut p = engine(vec![sup.clone(), vip.clone(), both.clone()]);
        let d = p.decide(&detection(agent, *kind, T0, false), tier, T0);
        assert_eq!(d.playbook.as_deref(), *want, "{agent} {tier} {kind}");
        if want.is_none() {
            assert_eq!(
                d,
                PlaybookDecision {
                    playbook: None,
                    step: 0,
                    actions: vec![Log],
                    suppressed: vec![],
                    shadowed: vec![],
                }
            );
        }
    }
}

#[test]
fn escalation_survives_a_reload_under_the_same_name_and_old_agents_are_pruned() {
    let mut p = engine(vec![ladder("contain")]);
    run(&mut p, &[(0, false), (1, false)]);
    p.set_config(Arc::new(MonitoringConfig {
        playbooks: vec![Playbook {
            cooldown: secs(60),
            ..ladder("contain")
        }],
        ..MonitoringConfig::default()
    }));
    assert_eq!(run(&mut p, &[(2, false)])[0].0, 3);
    // Renamed: a new ladder.
    p.set_config(Arc::new(MonitoringConfig {
        playbooks: vec![ladder("contain-v2")],
        ..MonitoringConfig::default()
    }));
    assert_eq!(run(&mut p, &[(3, false)])[0].0, 1);
    assert_eq!(p.tracked_agents(), 1);
    p.prune(T0 + 62 * MIN);
    assert_eq!(
        p.tracked_agents(),
        1,
        "within the window of its last detection"
    );
    p.prune(T0 + 63 * MIN);
    assert_eq!(p.tracked_agents(), 0);
}

#[test]
fn actions_have_stable_names_and_readable_text() {
    let names: Vec<&str> = [Log, Alert, THROTTLE, STEP_UP, Pause, Action::Revoke]
        .iter()
        .map(|a| a.as_str())
        .collect();
    assert_eq!(
        names,
        ["log", "alert", "throttle", "step_up", "pause", "revoke"]
    );
    assert_eq!(THROTTLE.to_string(), "throttle to 10 per 1m for 30m");
    assert_eq!(STEP_UP.to_string(), "step_up for 1h");
    assert_eq!(Pause.to_string(), "pause");
}

/// Compiling refuses a playbook without steps; one built by hand must not panic.
#[test]
fn a_hand_built_playbook_without_steps_only_logs() {
    let mut p = engine(vec![Playbook {
        steps: vec![],
        ..ladder("empty")
    }]);
    let d = p.decide(
        &detection("bot", DetectorKind::Rate, T0, false),
        "standard",
        T0,
    );
    assert_eq!(
        (d.playbook.as_deref(), d.step, d.actions),
        (Some("empty"), 0, vec![Log])
    );
}

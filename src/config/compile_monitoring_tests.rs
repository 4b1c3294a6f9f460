use super::*;
use crate::observe::anomaly::DEFAULT_DENIAL_CODES;

/// Compile the value of a `monitoring:` section written as YAML; returns it and every
/// (path, message).
fn compile(yaml: &str, tags: &[&str]) -> (MonitoringConfig, Vec<(String, String)>) {
    let raw: RawMonitoring = serde_yaml::from_str(yaml).expect("shape");
    let tags: BTreeSet<String> = tags.iter().map(|t| t.to_string()).collect();
    let mut errors = Vec::new();
    let cfg = compile_monitoring(&raw, &tags, &mut |p, m| errors.push((p, m)));
    (cfg, errors)
}

/// The shape error of a section that does not deserialize: (path inside the section, message),
/// as the gateway's parser reports them (it uses `serde_path_to_error` the same way).
fn shape_error(yaml: &str) -> (String, String) {
    let de = serde_yaml::Deserializer::from_str(yaml);
    match serde_path_to_error::deserialize::<_, RawMonitoring>(de) {
        Ok(_) => panic!("must not deserialize: {yaml}"),
        Err(e) => (e.path().to_string(), e.into_inner().to_string()),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const DOCUMENTED: &str = r#"
mode: enforce
detectors:
  first_seen:   {warmup: 1h, min_calls: 50, mode: shadow}
  rate:         {window: 1m, z: 4.0, min_windows: 10, min_calls: 20}
  denial_burst: {denials: 10, window: 1m, codes: [insufficient_scope, no_route, condition_failed]}
  volume:       {window: 1m, z: 4.0, min_windows: 10, max_bytes: 50MB}
  off_hours:    {zone: Europe/Paris, min_days: 7, min_calls: 100}
  sensitive_sequence: {from: private_data, to: egress, within: 10m}
playbooks:
  - name: contain-supervised
    tiers: [supervised]
    detectors: [denial_burst, sensitive_sequence]
    window: 1h
    cooldown: 5m
    steps:
      - [alert]
      - [alert, {throttle: {requests: 10, per: 1m, for: 30m}}]
      - [alert, {step_up: 1h}]
      - [alert, pause]
  - name: named-agents
    agents: [billing-bot, crm-sync]
    tiers: [standard]
    cooldown: 0s
    steps:
      - [log]
      - [alert, revoke]
  - name: everyone
    steps: [[alert]]
"#;

#[test]
fn the_documented_section_compiles_to_exactly_these_values() {
    let (cfg, errors) = compile(DOCUMENTED, &["private_data", "egress", "billing"]);
    assert_eq!(errors, vec![]);
    let want = MonitoringConfig {
        mode: Mode::Enforce,
        first_seen: Some(FirstSeenConfig {
            warmup: secs(3600),
            min_calls: 50,
            mode: Mode::Shadow,
        }),
        rate: Some(WindowedConfig {
            window: secs(60),
            z: 4.0,
            min_windows: 10,
            min_calls: 20,
            mode: Mode::Enforce,
        }),
        denial_burst: Some(DenialBurstConfig {
            denials: 10,
            window: secs(60),
            codes: vec![
                "insufficient_scope".into(),
                "no_route".into(),
                "condition_failed".into(),
            ],
            mode: Mode::Enforce,
        }),
        volume: Some(VolumeConfig {
            windowed: WindowedConfig {
                window: secs(60),
                z: 4.0,
                min_windows: 10,
                min_calls: 0,
                mode: Mode::Enforce,
            },
            min_bytes: 1_000_000,
            max_bytes: Some(50_000_000),
        }),
        off_hours: Some(OffHoursConfig {
            zone: chrono_tz::Europe::Paris,
            min_days: 7,
            min_calls: 100,
            mode: Mode::Enforce,
        }),
        sensitive_sequence: Some(SequenceConfig {
            from: "private_data".into(),
            to: "egress".into(),
            within: secs(600),
            mode: Mode::Enforce,
        }),
        playbooks: vec![
            Playbook {
                name: "contain-supervised".into(),
                tiers: vec![Tier::Supervised],
                agents: BTreeSet::new(),
                detectors: Some(vec![
                    DetectorKind::DenialBurst,
                    DetectorKind::SensitiveSequence,
                ]),
                window: secs(3600),
                cooldown: secs(300),
                steps: vec![
                    vec![Action::Alert],
                    vec![
                        Action::Alert,
                        Action::Throttle {
                            requests: 10,
                            per: secs(60),
                            for_: secs(1800),
                        },
                    ],
                    vec![Action::Alert, Action::StepUp(secs(3600))],
                    vec![Action::Alert, Action::Pause],
                ],
            },
            Playbook {
                name: "named-agents".into(),
                tiers: vec![Tier::Standard],
                agents: ["billing-bot".into(), "crm-sync".into()].into(),
                detectors: None,
                window: secs(3600),
                cooldown: Duration::ZERO,
                steps: vec![vec![Action::Log], vec![Action::Alert, Action::Revoke]],
            },
            Playbook {
                name: "everyone".into(),
                tiers: vec![],
                agents: BTreeSet::new(),
                detectors: None,
                window: secs(3600),
                cooldown: secs(300),
                steps: vec![vec![Action::Alert]],
            },
        ],
    };
    assert_eq!(cfg, want);
    // The per-detector mode makes first_seen shadow; the others enforce.
    assert!(cfg.is_shadow(DetectorKind::FirstSeen));
    assert!(!cfg.is_shadow(DetectorKind::Rate));
}

#[test]
fn empty_maps_turn_detectors_on_with_their_defaults_and_absent_ones_stay_off() {
    let (cfg, errors) = compile(
        "detectors: {first_seen: {}, rate: {}, denial_burst: {}, volume: {}, off_hours: {}}",
        &[],
    );
    assert_eq!(errors, vec![]);
    assert_eq!(cfg.first_seen, Some(FirstSeenConfig::default()));
    assert_eq!(cfg.rate, Some(WindowedConfig::rate_default()));
    assert_eq!(cfg.volume, Some(VolumeConfig::default()));
    assert_eq!(cfg.off_hours, Some(OffHoursConfig::default()));
    let db = cfg.denial_burst.expect("on");
    let codes: Vec<&str> = db.codes.iter().map(|c| &**c).collect();
    assert_eq!(codes, DEFAULT_DENIAL_CODES);
    assert_eq!((db.denials, db.window), (10, secs(60)));
    assert_eq!(cfg.sensitive_sequence, None);
    assert!(cfg.playbooks.is_empty());

    // An empty section, and `mode: shadow` alone.
    let (cfg, errors) = compile("{}", &[]);
    assert_eq!((cfg, errors), (MonitoringConfig::default(), vec![]));
    let (cfg, errors) = compile("mode: shadow\ndetectors: {rate: {mode: enforce}}", &[]);
    assert_eq!(errors, vec![]);
    // The global shadow mode wins over a detector's own `enforce`.
    assert!(cfg.is_shadow(DetectorKind::Rate));
}

#[test]
fn every_bad_value_is_reported_with_its_field_path() {
    let yaml = r#"
mode: audit
detectors:
  first_seen:   {warmup: 0s, mode: loud}
  rate:         {window: 500ms, z: 0, min_windows: 0}
  denial_burst: {denials: 0, window: soon, codes: [no_route, Bad-Code, no_route]}
  volume:       {z: -1.5, max_bytes: 50 parsecs, window: 400d, min_bytes: lots}
  off_hours:    {zone: Europe/Pariss, min_days: 0}
  sensitive_sequence: {from: private_data, to: egres, within: 0s}
playbooks:
  - name: a
    tiers: [supervised, trusted]
    detectors: [rate, ratelimit]
    window: 0s
    cooldown: forever
    steps:
      - []
      - [alert, alert, throttle, step_up, shout]
      - [{throttle: {requests: 0, per: 0s, for: 30m}}, {step_up: 0s}]
      - [{}, {throttle: {requests: 1, per: 1m, for: 1m}, step_up: 1h}]
  - name: a
    agents: [""]
    detectors: []
  - name: " "
"#;
    let (_, errors) = compile(yaml, &["egress", "private_data"]);
    let want: &[(&str, &str)] = &[
        ("monitoring.mode", "`audit` is not a mode"),
        (
            "monitoring.detectors.first_seen.warmup",
            "must be greater than zero",
        ),
        ("monitoring.detectors.first_seen.mode", "`loud` is not a mode"),
        (
            "monitoring.detectors.rate.window",
            "the duration must be at least 1s",
        ),
        ("monitoring.detectors.rate.z", "greater than 0 (got 0)"),
        (
            "monitoring.detectors.rate.min_windows",
            "must be between 1 and 1000000 (got 0)",
        ),
        (
            "monitoring.detectors.denial_burst.codes[1]",
            "`Bad-Code` is not a refusal code",
        ),
        (
            "monitoring.detectors.denial_burst.codes[2]",
            "`no_route` is listed twice",
        ),
        (
            "monitoring.detectors.denial_burst.denials",
            "must be between 1 and 1000 (got 0)",
        ),
        (
            "monitoring.detectors.denial_burst.window",
            "`soon` is not a duration",
        ),
        (
            "monitoring.detectors.volume.window",
            "must be at most 366 days",
        ),
        ("monitoring.detectors.volume.z", "(got -1.5)"),
        (
            "monitoring.detectors.volume.max_bytes",
            "`50 parsecs` is not a size",
        ),
        (
            "monitoring.detectors.volume.min_bytes",
            "`lots` is not a size",
        ),
        (
            "monitoring.detectors.off_hours.zone",
            "`Europe/Pariss` is not an IANA time zone",
        ),
        (
            "monitoring.detectors.off_hours.min_days",
            "must be between 1 and 366 (got 0)",
        ),
        (
            "monitoring.detectors.sensitive_sequence.to",
            "no route has tag `egres`; tags in use: egress, private_data",
        ),
        (
            "monitoring.detectors.sensitive_sequence.within",
            "must be greater than zero",
        ),
        (
            "monitoring.playbooks[0].tiers[1]",
            "`trusted` is not a tier; tiers: standard, supervised",
        ),
        (
            "monitoring.playbooks[0].detectors[1]",
            "`ratelimit` is not a detector; detectors: first_seen, rate, denial_burst, volume, off_hours, sensitive_sequence",
        ),
        (
            "monitoring.playbooks[0].window",
            "must be greater than zero",
        ),
        (
            "monitoring.playbooks[0].cooldown",
            "`forever` is not a duration",
        ),
        (
            "monitoring.playbooks[0].steps[0]",
            "a step needs at least one action",
        ),
        (
            "monitoring.playbooks[0].steps[1][1]",
            "`alert` appears twice in this step",
        ),
        (
            "monitoring.playbooks[0].steps[1][2]",
            "`throttle` needs its numbers",
        ),
        (
            "monitoring.playbooks[0].steps[1][3]",
            "`step_up` needs a duration",
        ),
        (
            "monitoring.playbooks[0].steps[1][4]",
            "`shout` is not an action; actions: log, alert, throttle, step_up, pause, revoke",
        ),
        (
            "monitoring.playbooks[0].steps[2][0].throttle.requests",
            "must be at least 1",
        ),
        (
            "monitoring.playbooks[0].steps[2][0].throttle.per",
            "must be greater than zero",
        ),
        (
            "monitoring.playbooks[0].steps[2][1].step_up",
            "must be greater than zero",
        ),
        ("monitoring.playbooks[0].steps[3][0]", "an empty action"),
        ("monitoring.playbooks[0].steps[3][1]", "one action per entry"),
        (
            "monitoring.playbooks[1].name",
            "duplicate playbook name `a`, first at monitoring.playbooks[0]",
        ),
        (
            "monitoring.playbooks[1].agents[0]",
            "an agent id must not be empty",
        ),
        (
            "monitoring.playbooks[1].detectors",
            "list at least one detector",
        ),
        (
            "monitoring.playbooks[1].steps",
            "a playbook needs at least one step",
        ),
        ("monitoring.playbooks[2].name", "a playbook needs a name"),
        (
            "monitoring.playbooks[2].steps",
            "a playbook needs at least one step",
        ),
    ];
    for (path, text) in want {
        assert!(
            errors.iter().any(|(p, m)| p == path && m.contains(text)),
            "no `{text}` at {path} in {errors:#?}"
        );
    }
    // Nothing else: each problem once, at its own path.
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
}

#[test]
fn sequence_tags_must_be_declared_by_some_route_and_differ() {
    let (cfg, errors) = compile(
        "detectors: {sensitive_sequence: {from: private_data, to: egress}}",
        &[],
    );
    assert_eq!(cfg.sensitive_sequence, None);
    assert_eq!(
        errors,
        vec![
            (
                "monitoring.detectors.sensitive_sequence.from".to_string(),
                "no route has tag `private_data`; no route declares tags".to_string()
            ),
            (
                "monitoring.detectors.sensitive_sequence.to".to_string(),
                "no route has tag `egress`; no route declares tags".to_string()
            ),
        ]
    );
    let (_, errors) = compile("detectors: {sensitive_sequence: {to: egress}}", &["egress"]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "monitoring.detectors.sensitive_sequence.from");
    assert!(errors[0].1.starts_with("set `from` to a route tag"));
    let (_, errors) = compile(
        "detectors: {sensitive_sequence: {from: egress, to: egress}}",
        &["egress"],
    );
    assert_eq!(
        errors,
        vec![(
            "monitoring.detectors.sensitive_sequence.to".to_string(),
            "`from` and `to` must be different tags".to_string()
        )]
    );
}

#[test]
fn a_playbook_after_a_catch_all_is_reported_as_unreachable() {
    let (_, errors) = compile(
        "playbooks:\n  - {name: all, steps: [[alert]]}\n  - {name: sup, tiers: [supervised], steps: [[pause]]}\n",
        &[],
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].0, "monitoring.playbooks[1]");
    assert!(errors[0].1.contains("monitoring.playbooks[0] comes first"));
    // A filtered playbook first is fine.
    let (_, errors) = compile(
        "playbooks:\n  - {name: sup, tiers: [supervised], steps: [[pause]]}\n  - {name: all, steps: [[alert]]}\n",
        &[],
    );
    assert_eq!(errors, vec![]);
}

#[test]
fn sizes_durations_and_numbers_accept_their_usual_spellings() {
    let (cfg, errors) = compile(
        "detectors:\n  volume: {max_bytes: 1GiB, window: 5m, z: 3}\n  rate: {window: 90s, min_calls: 0}\n",
        &[],
    );
    assert_eq!(errors, vec![]);
    let v = cfg.volume.expect("on");
    assert_eq!(v.max_bytes, Some(1 << 30));
    assert_eq!((v.windowed.window, v.windowed.z), (secs(300), 3.0));
    let r = cfg.rate.expect("on");
    assert_eq!((r.window, r.min_calls), (secs(90), 0));
    let (cfg, errors) = compile("detectors: {volume: {max_bytes: 4096, min_bytes: 0}}", &[]);
    assert_eq!(errors, vec![]);
    let v = cfg.volume.expect("on");
    assert_eq!((v.min_bytes, v.max_bytes), (0, Some(4096)));
    let (cfg, errors) = compile("detectors: {volume: {min_bytes: 256kB}}", &[]);
    assert_eq!(errors, vec![]);
    assert_eq!(cfg.volume.expect("on").min_bytes, 256_000);
}

/// Mistakes in the shape are caught by serde with their path inside the section (the gateway's
/// parser prefixes `monitoring.`): unknown detectors and keys, and malformed actions.
#[test]
fn shape_errors_name_their_field() {
    for (yaml, path, text) in [
        (
            "detectors: {rates: {}}",
            "detectors.rates",
            "unknown field `rates`, expected one of `first_seen`, `rate`",
        ),
        (
            "detectors: {rate: {windw: 1m}}",
            "detectors.rate.windw",
            "unknown field `windw`",
        ),
        (
            "playbooks: [{name: a, steps: [[{throtle: {requests: 1}}]]}]",
            "playbooks[0].steps[0][0].throtle",
            "unknown field `throtle`, expected `throttle` or `step_up`",
        ),
        (
            "playbooks: [{name: a, steps: [[{throttle: {requests: 1, per: 1m}}]]}]",
            "playbooks[0].steps[0][0].throttle",
            "missing field `for`",
        ),
        (
            "playbooks: [{name: a, steps: [[42]]}]",
            "playbooks[0].steps[0][0]",
            "expected an action: `log`, `alert`",
        ),
        (
            "playbooks: [{name: a, steps: [alert]}]",
            "playbooks[0].steps[0]",
            "invalid type: string \"alert\", expected a sequence",
        ),
        ("modes: shadow", "modes", "unknown field `modes`"),
    ] {
        let (p, m) = shape_error(yaml);
        assert_eq!(p, path, "{yaml}: {m}");
        assert!(m.contains(text), "{yaml}: {m}");
    }
}

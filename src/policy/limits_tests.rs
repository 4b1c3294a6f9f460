use super::*;
use std::cell::RefCell;
use std::collections::HashMap;

fn rate(requests: u32, per_ms: u64, burst: u32) -> LimitDef {
    LimitDef::Rate(RateLimit {
        requests,
        per: Duration::from_millis(per_ms),
        burst,
    })
}

fn volume(bytes: u64, per_s: u64, direction: Direction) -> LimitDef {
    LimitDef::Volume(VolumeLimit {
        bytes,
        per: Duration::from_secs(per_s),
        direction,
    })
}

fn limits(items: &[(LimitDef, Scope)]) -> Limits {
    Limits {
        items: items
            .iter()
            .enumerate()
            .map(|(i, (def, scope))| Limit {
                def: *def,
                scope: *scope,
                path: format!("x.limits[{i}]").into(),
            })
            .collect(),
    }
}

/// A view over fixed answers, recording what was asked (to prove `decide` only reads).
#[derive(Default)]
struct View {
    left: HashMap<LimitKey, Result<u64, Duration>>,
    asked: RefCell<usize>,
}

impl VolumeView for View {
    fn volume_remaining(&self, key: &LimitKey, limit: &VolumeLimit) -> Result<u64, Duration> {
        *self.asked.borrow_mut() += 1;
        self.left.get(key).cloned().unwrap_or(Ok(limit.bytes))
    }
}

fn names() -> (Arc<str>, Arc<str>) {
    ("bot".into(), "search".into())
}

#[test]
fn keys_take_names_by_scope_agent_first_then_route() {
    let (a, r) = names();
    let agent = limits(&[
        (rate(100, 60_000, 20), Scope::Agent),
        (rate(5, 1_000, 5), Scope::AgentRoute),
    ]);
    let route = limits(&[
        (rate(10, 1_000, 10), Scope::Route),
        (rate(10, 1_000, 10), Scope::AgentRoute),
    ]);
    let got = applicable(&a, &agent, &r, &route);
    let shape: Vec<_> = got
        .iter()
        .map(|x| {
            (
                x.key.origin,
                x.key.scope,
                x.key.agent.as_deref(),
                x.key.route.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (Origin::Agent, Scope::Agent, Some("bot"), None),
            (
                Origin::Agent,
                Scope::AgentRoute,
                Some("bot"),
                Some("search")
            ),
            (Origin::Route, Scope::Route, None, Some("search")),
            (
                Origin::Route,
                Scope::AgentRoute,
                Some("bot"),
                Some("search")
            ),
        ]
    );
    // Same numbers, same scope, declared in different places: separate counters.
    assert_ne!(got[1].key, got[3].key);
    assert_ne!(got[1].key.storage_key(), got[3].key.storage_key());
}

#[test]
fn storage_keys_cannot_be_forged_by_names_with_separators() {
    let mk = |agent: &str, route: &str| LimitKey {
        origin: Origin::Route,
        scope: Scope::AgentRoute,
        agent: Some(agent.into()),
        route: Some(route.into()),
        def: rate(1, 1000, 1),
    };
    assert_ne!(
        mk("a|1:b", "c").storage_key(),
        mk("a", "1:b|c").storage_key()
    );
    assert_ne!(mk("a:", "b").storage_key(), mk("a", ":b").storage_key());
}

#[test]
fn a_changed_limit_is_a_new_key_an_unchanged_one_is_the_same() {
    let (a, r) = names();
    let before = applicable(
        &a,
        &Limits::default(),
        &r,
        &limits(&[(rate(10, 1000, 10), Scope::Route)]),
    );
    let same = applicable(
        &"bot".into(),
        &Limits::default(),
        &"search".into(),
        &limits(&[(rate(10, 1000, 10), Scope::Route)]),
    );
    let changed = applicable(
        &a,
        &Limits::default(),
        &r,
        &limits(&[(rate(20, 1000, 10), Scope::Route)]),
    );
    assert_eq!(before[0].key, same[0].key);
    assert_ne!(before[0].key, changed[0].key);
}

#[test]
fn rates_are_returned_as_charges_not_judged() {
    let (a, r) = names();
    let applied = applicable(
        &a,
        &limits(&[(rate(1, 1000, 1), Scope::Agent)]),
        &r,
        &limits(&[(volume(100, 60, Direction::Response), Scope::Route)]),
    );
    let view = View::default();
    let LimitDecision::Continue(charge) = decide(&applied, &view, None) else {
        panic!("refused")
    };
    assert_eq!(charge.rates.len(), 1);
    assert_eq!(charge.volumes.len(), 1);
    assert_eq!(*view.asked.borrow(), 1, "only volume counters are read");
}

#[test]
fn a_used_up_volume_refuses_with_the_window_wait() {
    let (a, r) = names();
    let applied = applicable(
        &a,
        &Limits::default(),
        &r,
        &limits(&[(volume(100, 60, Direction::Response), Scope::Route)]),
    );
    let mut view = View::default();
    view.left
        .insert(applied[0].key.clone(), Err(Duration::from_secs(12)));
    let LimitDecision::Refuse(refused) = decide(&applied, &view, None) else {
        panic!("passed")
    };
    assert_eq!(refused.code(), "volume_exceeded");
    assert_eq!(refused.retry_after_secs(), 12);
}

#[test]
fn a_declared_body_larger_than_the_request_budget_left_is_refused_up_front() {
    let (a, r) = names();
    let applied = applicable(
        &a,
        &limits(&[(volume(1_000, 3600, Direction::Request), Scope::Agent)]),
        &r,
        &Limits::default(),
    );
    let mut view = View::default();
    view.left.insert(applied[0].key.clone(), Ok(300));
    assert!(matches!(
        decide(&applied, &view, Some(300)),
        LimitDecision::Continue(_)
    ));
    let LimitDecision::Refuse(refused) = decide(&applied, &view, Some(u64::MAX)) else {
        panic!("a huge Content-Length passed")
    };
    assert_eq!(refused.declared_bytes, Some(u64::MAX));
    assert_eq!(refused.retry_after, Duration::from_secs(3600));
    // A response budget does not judge the request's length.
    let resp = applicable(
        &a,
        &limits(&[(volume(1_000, 3600, Direction::Response), Scope::Agent)]),
        &r,
        &Limits::default(),
    );
    assert!(matches!(
        decide(&resp, &View::default(), Some(u64::MAX)),
        LimitDecision::Continue(_)
    ));
}

#[test]
fn retry_after_header_rounds_up_and_is_never_zero() {
    let (a, r) = names();
    let applied = applicable(
        &a,
        &limits(&[(rate(1, 1000, 1), Scope::Agent)]),
        &r,
        &Limits::default(),
    )
    .remove(0);
    let at = |d| Refused {
        applied: applied.clone(),
        retry_after: d,
        declared_bytes: None,
        cut: false,
    };
    assert_eq!(at(Duration::ZERO).retry_after_secs(), 1);
    assert_eq!(at(Duration::from_millis(400)).retry_after_secs(), 1);
    assert_eq!(at(Duration::from_millis(1_001)).retry_after_secs(), 2);
    assert_eq!(at(Duration::from_secs(3)).retry_after_secs(), 3);
}

#[test]
fn durations_read_as_written() {
    for (d, s) in [
        (Duration::from_secs(1), "1s"),
        (Duration::from_secs(60), "1m"),
        (Duration::from_secs(7200), "2h"),
        (Duration::from_secs(86_400), "1d"),
        (Duration::from_secs(90), "90s"),
        (Duration::from_millis(400), "400ms"),
        (Duration::from_nanos(350_000_001), "0.4s"),
        (Duration::from_millis(1_500), "1.5s"),
    ] {
        assert_eq!(Human(d).to_string(), s);
    }
}

#[test]
fn messages_name_the_limit_its_scope_and_the_wait() {
    let (a, r) = names();
    let applied = applicable(
        &a,
        &limits(&[
            (rate(100, 60_000, 20), Scope::Agent),
            (volume(50_000_000, 3600, Direction::Response), Scope::Agent),
        ]),
        &r,
        &limits(&[(rate(10, 1_000, 10), Scope::AgentRoute)]),
    );
    let msg = |i: usize, ms: u64, declared| {
        refusal_message(&Refused {
            applied: applied[i].clone(),
            retry_after: Duration::from_millis(ms),
            declared_bytes: declared,
            cut: false,
        })
    };
    let route = msg(2, 400, None);
    assert!(
        route.starts_with("route `search` allows 10 requests per 1s per agent;"),
        "{route}"
    );
    assert!(route.contains("retry after 400ms"), "{route}");
    let agent = msg(0, 600, None);
    assert!(
        agent.starts_with(
            "agent `bot` may make 100 requests per 1m across all routes (at most 20 at once);"
        ),
        "{agent}"
    );
    let vol = msg(1, 1_800_000, None);
    assert!(vol.starts_with("agent `bot` may move 50.0 MB"), "{vol}");
    assert!(
        vol.contains("50.0 MB of response bytes per 1h") && vol.contains("retry after 30m"),
        "{vol}"
    );
    let big = msg(1, 3_600_000, Some(2_000_000_000));
    assert!(big.contains("this call's body is 2.0 GB"), "{big}");
}

#[test]
fn refusal_fields_say_which_limit_in_machine_form() {
    let (a, r) = names();
    let applied = applicable(
        &a,
        &Limits::default(),
        &r,
        &limits(&[(rate(10, 1_000, 10), Scope::AgentRoute)]),
    );
    let f = refusal_fields(&Refused {
        applied: applied[0].clone(),
        retry_after: Duration::from_millis(400),
        declared_bytes: None,
        cut: false,
    });
    let v = serde_json::Value::Object(f);
    assert_eq!(
        v,
        serde_json::json!({
            "limit": "rate", "limit_path": "x.limits[0]", "scope": "agent_route",
            "agent": "bot", "route": "search", "retry_after_seconds": 0.4,
            "requests": 10, "per_seconds": 1.0, "burst": 10
        })
    );
}

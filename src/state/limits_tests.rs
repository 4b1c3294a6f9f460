use super::*;
use crate::policy::limits::{applicable, decide, Applied, Limit, LimitDecision, Limits, Scope};
use governor::clock::FakeRelativeClock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;

fn store() -> (InProcessLimitStore<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    (InProcessLimitStore::with_clock(clock.clone()), clock)
}

fn rate(requests: u32, per: Duration, burst: u32) -> RateLimit {
    RateLimit {
        requests,
        per,
        burst,
    }
}

fn one(def: LimitDef, scope: Scope) -> Limits {
    Limits {
        items: vec![Limit {
            def,
            scope,
            path: "t.limits[0]".into(),
        }]
        .into(),
    }
}

/// The applied limits of `agent` on `route` for a route-declared limit.
fn on_route(agent: &str, route: &str, def: LimitDef, scope: Scope) -> Vec<Applied> {
    applicable(
        &agent.into(),
        &Limits::default(),
        &route.into(),
        &one(def, scope),
    )
}

fn charge_of(store: &dyn LimitStore, applied: &[Applied], declared: Option<u64>) -> Charge {
    match decide(applied, store, declared) {
        LimitDecision::Continue(c) => c,
        LimitDecision::Refuse(r) => panic!("refused: {r:?}"),
    }
}

fn key(applied: &[Applied]) -> LimitKey {
    applied[0].key.clone()
}

#[test]
fn gcra_admits_the_burst_then_the_steady_rate_with_exact_waits() {
    let (s, clock) = store();
    // 10 per second sustained (one per 100 ms), at most 3 at once.
    let r = rate(10, Duration::from_secs(1), 3);
    let k = key(&on_route("bot", "r", LimitDef::Rate(r), Scope::Route));
    for _ in 0..3 {
        assert_eq!(s.try_acquire(&k, &r), Ok(()));
    }
    assert_eq!(s.try_acquire(&k, &r), Err(Duration::from_millis(100)));
    clock.advance(Duration::from_millis(60));
    assert_eq!(s.try_acquire(&k, &r), Err(Duration::from_millis(40)));
    clock.advance(Duration::from_millis(40));
    assert_eq!(s.try_acquire(&k, &r), Ok(()));
    assert!(s.try_acquire(&k, &r).is_err(), "one slot per interval");
    // Steady: one call every 100 ms is always admitted.
    for _ in 0..20 {
        clock.advance(Duration::from_millis(100));
        assert_eq!(s.try_acquire(&k, &r), Ok(()));
    }
    // After a quiet spell the burst is back, but no more than the burst.
    clock.advance(Duration::from_secs(10));
    let admitted = (0..10).filter(|_| s.try_acquire(&k, &r).is_ok()).count();
    assert_eq!(admitted, 3);
}

#[test]
fn burst_defaults_to_requests_per_period() {
    let (s, _clock) = store();
    let r = rate(5, Duration::from_secs(60), 5);
    let k = key(&on_route("bot", "r", LimitDef::Rate(r), Scope::Route));
    let admitted = (0..50).filter(|_| s.try_acquire(&k, &r).is_ok()).count();
    assert_eq!(admitted, 5);
    assert_eq!(s.try_acquire(&k, &r), Err(Duration::from_secs(12)));
}

#[test]
fn agent_route_scope_counts_each_agent_separately_route_scope_shares() {
    let (s, _clock) = store();
    let r = rate(1, Duration::from_secs(1), 1);
    let per_agent = |a: &str| key(&on_route(a, "r", LimitDef::Rate(r), Scope::AgentRoute));
    assert!(s.try_acquire(&per_agent("a"), &r).is_ok());
    assert!(s.try_acquire(&per_agent("b"), &r).is_ok());
    assert!(s.try_acquire(&per_agent("a"), &r).is_err());
    let shared = |a: &str| key(&on_route(a, "r", LimitDef::Rate(r), Scope::Route));
    assert!(s.try_acquire(&shared("a"), &r).is_ok());
    assert!(s.try_acquire(&shared("b"), &r).is_err());
}

fn vol(bytes: u64, per: Duration, direction: Direction) -> LimitDef {
    LimitDef::Volume(VolumeLimit {
        bytes,
        per,
        direction,
    })
}

#[test]
fn volume_crossing_cuts_the_chunk_then_refuses_until_the_window_resets() {
    let (s, clock) = store();
    let def = vol(1_000, Duration::from_secs(60), Direction::Response);
    let applied = on_route("bot", "r", def, Scope::Route);
    let charge = charge_of(&s, &applied, None);
    // Request bytes do not count against a response budget.
    assert_eq!(
        charge_chunk(&s, &charge, Direction::Request, 5_000),
        ChargeOutcome::Continue
    );
    assert_eq!(
        charge_chunk(&s, &charge, Direction::Response, 600),
        ChargeOutcome::Continue
    );
    assert_eq!(
        charge_chunk(&s, &charge, Direction::Response, 400),
        ChargeOutcome::Continue,
        "exactly the budget is within it"
    );
    clock.advance(Duration::from_secs(20));
    let ChargeOutcome::Cut(r) = charge_chunk(&s, &charge, Direction::Response, 1) else {
        panic!("a byte past the budget was forwarded")
    };
    assert_eq!(r.retry_after, Duration::from_secs(40));
    assert_eq!(r.code(), "volume_exceeded");
    // The next call is refused before it starts.
    let LimitDecision::Refuse(r) = decide(&applied, &s, None) else {
        panic!("passed with the budget used up")
    };
    assert_eq!(r.retry_after, Duration::from_secs(40));
    clock.advance(Duration::from_secs(40));
    assert_eq!(
        s.volume_remaining(
            &applied[0].key,
            &VolumeLimit {
                bytes: 1_000,
                per: Duration::from_secs(60),
                direction: Direction::Response
            }
        ),
        Ok(1_000)
    );
    let charge = charge_of(&s, &applied, None);
    assert_eq!(
        charge_chunk(&s, &charge, Direction::Response, 1_000),
        ChargeOutcome::Continue
    );
}

#[test]
fn both_direction_shares_one_budget() {
    let (s, _clock) = store();
    let applied = on_route(
        "bot",
        "r",
        vol(100, Duration::from_secs(60), Direction::Both),
        Scope::AgentRoute,
    );
    let charge = charge_of(&s, &applied, Some(60));
    assert_eq!(
        charge_chunk(&s, &charge, Direction::Request, 60),
        ChargeOutcome::Continue
    );
    assert!(matches!(
        charge_chunk(&s, &charge, Direction::Response, 41),
        ChargeOutcome::Cut(_)
    ));
}

#[test]
fn many_threads_never_get_more_than_the_burst() {
    let s = Arc::new(InProcessLimitStore::new());
    // A long period so the real clock refills nothing during the test.
    let r = rate(50, Duration::from_secs(3600), 50);
    let k = key(&on_route("bot", "r", LimitDef::Rate(r), Scope::Route));
    let admitted = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (s, k, admitted, barrier) =
                (s.clone(), k.clone(), admitted.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..100 {
                    if s.try_acquire(&k, &r).is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 50);
}

#[test]
fn parallel_streams_never_forward_more_than_the_volume_budget() {
    let s = Arc::new(InProcessLimitStore::new());
    let applied = on_route(
        "bot",
        "r",
        vol(100_000, Duration::from_secs(3600), Direction::Response),
        Scope::Route,
    );
    let forwarded = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (s, applied, forwarded, barrier) = (
                s.clone(),
                applied.clone(),
                forwarded.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                // Each "connection" starts calls while the budget allows, streaming chunks of
                // odd sizes until cut.
                while let LimitDecision::Continue(charge) = decide(&applied, &*s, None) {
                    let chunk = 997 + i as u64 * 13;
                    match charge_chunk(&*s, &charge, Direction::Response, chunk) {
                        ChargeOutcome::Continue => {
                            forwarded.fetch_add(chunk, Ordering::Relaxed);
                        }
                        ChargeOutcome::Cut(_) => break,
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = forwarded.load(Ordering::Relaxed);
    assert!(total <= 100_000, "forwarded {total}");
    assert!(total > 90_000, "budget left unused: {total}");
}

#[test]
fn a_changed_limit_starts_fresh_an_unchanged_one_keeps_its_count() {
    let (s, _clock) = store();
    let old = rate(2, Duration::from_secs(60), 2);
    let k_old = key(&on_route("bot", "r", LimitDef::Rate(old), Scope::Route));
    assert!(s.try_acquire(&k_old, &old).is_ok());
    assert!(s.try_acquire(&k_old, &old).is_ok());
    // Reload with the same numbers: a new snapshot, new Arcs, the same counter.
    let k_same = key(&on_route("bot", "r", LimitDef::Rate(old), Scope::Route));
    assert!(
        s.try_acquire(&k_same, &old).is_err(),
        "a reload must not reset a budget"
    );
    // Reload raising the limit: a new counter, in effect for the next call.
    let new = rate(5, Duration::from_secs(60), 5);
    let k_new = key(&on_route("bot", "r", LimitDef::Rate(new), Scope::Route));
    assert!(s.try_acquire(&k_new, &new).is_ok());
    // Lowering it applies at once too.
    let lower = rate(1, Duration::from_secs(60), 1);
    let k_lower = key(&on_route("bot", "r", LimitDef::Rate(lower), Scope::Route));
    assert!(s.try_acquire(&k_lower, &lower).is_ok());
    assert!(s.try_acquire(&k_lower, &lower).is_err());
}

#[test]
fn idle_keys_are_swept() {
    let (s, clock) = store();
    let r = rate(10, Duration::from_secs(1), 10);
    let v = VolumeLimit {
        bytes: 100,
        per: Duration::from_secs(60),
        direction: Direction::Both,
    };
    for i in 0..100 {
        let k = key(&on_route(
            &format!("a{i}"),
            "r",
            LimitDef::Rate(r),
            Scope::AgentRoute,
        ));
        s.try_acquire(&k, &r).unwrap();
        let kv = key(&on_route(
            &format!("a{i}"),
            "r",
            LimitDef::Volume(v),
            Scope::AgentRoute,
        ));
        s.charge_volume(&kv, &v, 10).unwrap();
    }
    assert_eq!(s.len(), 200);
    s.sweep();
    assert_eq!(s.len(), 200, "nothing is idle yet");
    // Rate cells are back to fresh after one interval; windows end after 60s.
    clock.advance(Duration::from_secs(2));
    s.sweep();
    assert_eq!(s.len(), 100);
    clock.advance(Duration::from_secs(60));
    s.sweep();
    assert!(s.is_empty());
    // Sweeping lost nothing that mattered: a swept key behaves as fresh.
    let k = key(&on_route("a0", "r", LimitDef::Rate(r), Scope::AgentRoute));
    assert_eq!(
        (0..20).filter(|_| s.try_acquire(&k, &r).is_ok()).count(),
        10
    );
}

#[test]
fn acquire_refuses_with_the_limit_that_ran_out() {
    let (s, _clock) = store();
    let loose = rate(100, Duration::from_secs(1), 100);
    let tight = rate(1, Duration::from_secs(1), 1);
    let applied = applicable(
        &"bot".into(),
        &one(LimitDef::Rate(loose), Scope::Agent),
        &"r".into(),
        &one(LimitDef::Rate(tight), Scope::Route),
    );
    let charge = charge_of(&s, &applied, None);
    assert_eq!(acquire(&s, &charge), Ok(()));
    let refused = acquire(&s, &charge).unwrap_err();
    assert_eq!(refused.applied, applied[1]);
    assert_eq!(refused.code(), "rate_limited");
    assert_eq!(refused.retry_after, Duration::from_secs(1));
}

// --- How would a prompt-injected agent get around the limits? ---

#[test]
fn attack_spreading_calls_over_routes_does_not_escape_an_agent_limit() {
    let (s, _clock) = store();
    let agent_limit = one(
        LimitDef::Rate(rate(5, Duration::from_secs(60), 5)),
        Scope::Agent,
    );
    let admitted = (0..50)
        .filter(|i| {
            let route: Arc<str> = format!("route{}", i % 10).into();
            let applied = applicable(&"bot".into(), &agent_limit, &route, &Limits::default());
            acquire(&s, &charge_of(&s, &applied, None)).is_ok()
        })
        .count();
    assert_eq!(admitted, 5);
}

#[test]
fn attack_one_huge_response_with_little_budget_left_is_cut_after_one_chunk() {
    let (s, _clock) = store();
    let applied = applicable(
        &"bot".into(),
        &one(
            vol(10_000, Duration::from_secs(3600), Direction::Response),
            Scope::Agent,
        ),
        &"dump".into(),
        &Limits::default(),
    );
    let first = charge_of(&s, &applied, None);
    assert_eq!(
        charge_chunk(&s, &first, Direction::Response, 9_999),
        ChargeOutcome::Continue
    );
    // One byte left: the next call still starts, and its 10 GB answer is cut at the first
    // chunk; nothing of it is forwarded.
    let second = charge_of(&s, &applied, None);
    let mut forwarded = 0u64;
    for _ in 0..10_000 {
        match charge_chunk(&s, &second, Direction::Response, 1 << 20) {
            ChargeOutcome::Continue => forwarded += 1 << 20,
            ChargeOutcome::Cut(_) => break,
        }
    }
    assert_eq!(forwarded, 0);
    assert!(matches!(
        decide(&applied, &s, None),
        LimitDecision::Refuse(_)
    ));
}

#[test]
fn attack_a_huge_declared_length_is_refused_and_charges_nothing_a_lying_one_is_cut() {
    let (s, _clock) = store();
    let limit = VolumeLimit {
        bytes: 1_000,
        per: Duration::from_secs(60),
        direction: Direction::Request,
    };
    let applied = on_route("bot", "upload", LimitDef::Volume(limit), Scope::AgentRoute);
    assert!(matches!(
        decide(&applied, &s, Some(u64::MAX)),
        LimitDecision::Refuse(_)
    ));
    assert_eq!(s.volume_remaining(&applied[0].key, &limit), Ok(1_000));
    // Declaring a small body and streaming a big one: the chunk that crosses is cut.
    let charge = charge_of(&s, &applied, Some(10));
    assert_eq!(
        charge_chunk(&s, &charge, Direction::Request, 10),
        ChargeOutcome::Continue
    );
    assert!(matches!(
        charge_chunk(&s, &charge, Direction::Request, 5_000),
        ChargeOutcome::Cut(_)
    ));
}

#[test]
fn attack_many_parallel_calls_share_one_rate() {
    // Connections are not a key: 16 threads as 16 connections of the same agent. The store is
    // used the way the proxy holds it, as a trait object.
    let s: Arc<dyn LimitStore> = Arc::new(InProcessLimitStore::new());
    let limits = one(
        LimitDef::Rate(rate(10, Duration::from_secs(3600), 10)),
        Scope::AgentRoute,
    );
    let admitted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (s, limits, admitted) = (s.clone(), limits.clone(), admitted.clone());
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let applied =
                        applicable(&"bot".into(), &Limits::default(), &"r".into(), &limits);
                    let LimitDecision::Continue(c) = decide(&applied, &*s, None) else {
                        continue;
                    };
                    if acquire(&*s, &c).is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 10);
}

proptest::proptest! {
    /// GCRA never admits more than `burst + elapsed / interval` requests over any run, whatever
    /// the arrival pattern, and admits every request that a spacing of one interval allows.
    #[test]
    fn gcra_never_admits_more_than_burst_plus_the_rate(
        requests in 1u32..50,
        burst in 1u32..20,
        gaps_ms in proptest::collection::vec(0u64..300, 1..200),
    ) {
        let (s, clock) = store();
        let r = rate(requests, Duration::from_secs(1), burst);
        let k = key(&on_route("bot", "r", LimitDef::Rate(r), Scope::Route));
        let mut admitted = 0u64;
        let mut elapsed = Duration::ZERO;
        for gap in gaps_ms {
            clock.advance(Duration::from_millis(gap));
            elapsed += Duration::from_millis(gap);
            match s.try_acquire(&k, &r) {
                Ok(()) => admitted += 1,
                Err(wait) => {
                    // The wait it names is enough: after it, the request passes.
                    proptest::prop_assert!(wait <= r.interval());
                    clock.advance(wait);
                    elapsed += wait;
                    proptest::prop_assert_eq!(s.try_acquire(&k, &r), Ok(()));
                    admitted += 1;
                }
            }
            let bound = u64::from(burst) + (elapsed.as_nanos() / r.interval().as_nanos()) as u64;
            proptest::prop_assert!(admitted <= bound, "{admitted} > {bound}");
        }
    }
}

//! Shared limits against a real Redis (tests/support/stores.rs): several `RedisLimits` on one
//! server play the replicas.

use super::*;
use crate::policy::limits::{applicable, Direction, Limit, LimitDef, Limits, Scope};
use test_servers::{RedisServer, TlsRedisServer};

// Also included by other test modules of the crate, on purpose: one copy per test suite.
#[allow(clippy::duplicate_mod)]
#[path = "../../tests/support/stores.rs"]
mod test_servers;

const OP_TIMEOUT: Duration = Duration::from_millis(250);

fn opts(url: &str, prefix: &str) -> RedisOptions {
    RedisOptions {
        url: url.to_string(),
        key_prefix: prefix.to_string(),
        op_timeout: OP_TIMEOUT,
        connect_timeout: Duration::from_secs(1),
    }
}

async fn replica(url: &str, prefix: &str) -> (Arc<RedisLimits>, Arc<Metrics>) {
    let m = Arc::new(Metrics::new());
    let l = RedisLimits::connect(opts(url, prefix), m.clone())
        .await
        .expect("valid options");
    (Arc::new(l), m)
}

fn rate(requests: u32, per: Duration, burst: u32) -> RateLimit {
    RateLimit {
        requests,
        per,
        burst,
    }
}

fn route_limit(route: &str, def: LimitDef) -> crate::policy::limits::Applied {
    let limits = Limits {
        items: vec![Limit {
            def,
            scope: Scope::Route,
            path: "routes[0].limits[0]".into(),
        }]
        .into(),
    };
    applicable(&"bot".into(), &Limits::default(), &route.into(), &limits).remove(0)
}

fn rate_charge(route: &str, r: RateLimit) -> Charge {
    Charge {
        rates: vec![(route_limit(route, LimitDef::Rate(r)), r)],
        volumes: vec![],
    }
}

fn volume(route: &str, bytes: u64, per: Duration) -> (LimitKey, VolumeLimit) {
    let v = VolumeLimit {
        bytes,
        per,
        direction: Direction::Both,
    };
    (route_limit(route, LimitDef::Volume(v)).key, v)
}

/// Scripts run against Redis for rates (one per call that passed the local pre-check).
fn rate_round_trips(m: &Metrics) -> u64 {
    m.state_store_duration
        .with_label_values(&["redis", "rate"])
        .get_sample_count()
}

fn raw(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection()
        .expect("test connection to redis")
}

fn admitted(outcomes: &[SharedOutcome]) -> usize {
    outcomes
        .iter()
        .filter(|o| matches!(o, SharedOutcome::Admitted))
        .count()
}

/// Repeat `f` until it is true or `deadline` passes.
async fn eventually(deadline: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_admit_exactly_the_burst_together_as_one_process_would() {
    let srv = RedisServer::start();
    let (a, _) = replica(&srv.url(), "t:").await;
    let (b, _) = replica(&srv.url(), "t:").await;
    assert!(a.available() && b.available());
    // 20 per minute: the burst is 20, then one every 3 s (not reached during the test).
    let r = rate(20, Duration::from_secs(60), 20);
    let charge = Arc::new(rate_charge("search", r));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (l, c) = (
            if i % 2 == 0 { a.clone() } else { b.clone() },
            charge.clone(),
        );
        tasks.push(tokio::spawn(async move { l.acquire(&c).await }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(admitted(&outcomes), 20, "{outcomes:?}");
    for o in &outcomes {
        match o {
            SharedOutcome::Admitted => {}
            SharedOutcome::Refused(r) => {
                assert_eq!(r.code(), "rate_limited");
                assert!(!r.cut);
                assert!(
                    r.retry_after > Duration::ZERO && r.retry_after <= Duration::from_secs(3),
                    "retry after one interval at most: {:?}",
                    r.retry_after
                );
            }
            SharedOutcome::Unavailable(e) => panic!("unavailable: {e}"),
        }
    }

    // Parity: the same limit in one process admits the same number.
    let local = InProcessLimitStore::new();
    let key = &charge.rates[0].0.key;
    let n = (0..60)
        .filter(|_| local.try_acquire(key, &r).is_ok())
        .count();
    assert_eq!(n, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_and_interval_match_governor() {
    let srv = RedisServer::start();
    let (a, _) = replica(&srv.url(), "t:").await;
    // 5 per second sustained (one per 200 ms), at most 2 at once.
    let r = rate(5, Duration::from_secs(1), 2);
    let charge = rate_charge("r", r);
    let local = InProcessLimitStore::new();
    let key = &charge.rates[0].0.key;
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(a.acquire(&charge).await);
    }
    assert_eq!(admitted(&outcomes), 2, "{outcomes:?}");
    let in_process = (0..3)
        .filter(|_| local.try_acquire(key, &r).is_ok())
        .count();
    assert_eq!(in_process, 2);
    // The next slot opens one interval after the burst.
    tokio::time::sleep(Duration::from_millis(230)).await;
    assert_eq!(a.acquire(&charge).await, SharedOutcome::Admitted);
    assert!(local.try_acquire(key, &r).is_ok());
    match a.acquire(&charge).await {
        SharedOutcome::Refused(x) => assert!(
            x.retry_after <= Duration::from_millis(200),
            "{:?}",
            x.retry_after
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_or_nothing_across_the_limits_of_one_call() {
    let srv = RedisServer::start();
    let (a, _) = replica(&srv.url(), "t:").await;
    let (b, _) = replica(&srv.url(), "t:").await;
    let wide = rate(100, Duration::from_secs(60), 100);
    let narrow = rate(1, Duration::from_secs(60), 1);
    let both = Charge {
        rates: vec![
            (route_limit("wide", LimitDef::Rate(wide)), wide),
            (route_limit("narrow", LimitDef::Rate(narrow)), narrow),
        ],
        volumes: vec![],
    };
    // Replica A takes the narrow limit's only slot.
    assert_eq!(
        a.acquire(&rate_charge("narrow", narrow)).await,
        SharedOutcome::Admitted
    );
    // On B the call passes its local pre-check but Redis refuses on the second limit...
    match b.acquire(&both).await {
        SharedOutcome::Refused(r) => {
            assert_eq!(
                r.applied.key, both.rates[1].0.key,
                "the narrow limit refused"
            );
            assert!(r.retry_after <= Duration::from_secs(60));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // ...and took nothing from the first one.
    let mut c = raw(&srv.url());
    let wide_key = format!("t:rate:{}", both.rates[0].0.key.storage_key());
    let exists: bool = redis::cmd("EXISTS").arg(&wide_key).query(&mut c).unwrap();
    assert!(
        !exists,
        "a refused call must not be counted in the other limits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_pre_check_refuses_without_asking_redis() {
    let srv = RedisServer::start();
    let (a, ma) = replica(&srv.url(), "t:").await;
    let (b, mb) = replica(&srv.url(), "t:").await;
    let charge = rate_charge("r", rate(5, Duration::from_secs(60), 5));
    for _ in 0..5 {
        assert_eq!(a.acquire(&charge).await, SharedOutcome::Admitted);
    }
    assert_eq!(rate_round_trips(&ma), 5);
    for _ in 0..3 {
        match a.acquire(&charge).await {
            SharedOutcome::Refused(r) => assert!(r.retry_after > Duration::ZERO),
            other => panic!("expected a local refusal, got {other:?}"),
        }
    }
    assert_eq!(rate_round_trips(&ma), 5, "refused locally: no round trip");
    // B has used nothing locally, so it asks Redis, which knows A used the budget.
    assert!(matches!(
        b.acquire(&charge).await,
        SharedOutcome::Refused(_)
    ));
    assert_eq!(rate_round_trips(&mb), 1);
    // No limit, no round trip at all.
    assert_eq!(b.acquire(&Charge::default()).await, SharedOutcome::Admitted);
    assert_eq!(rate_round_trips(&mb), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_within_the_timeout_and_recovers_after_restart() {
    let mut srv = RedisServer::start();
    let (a, m) = replica(&srv.url(), "t:").await;
    let charge = rate_charge("r", rate(1000, Duration::from_secs(1), 1000));
    assert_eq!(a.acquire(&charge).await, SharedOutcome::Admitted);
    assert!(a.ping().await.is_ok());
    assert_eq!(
        m.state_store_up.with_label_values(&["redis"]).get(),
        1,
        "up while it answers"
    );

    tokio::task::block_in_place(|| srv.kill());
    for _ in 0..3 {
        let started = Instant::now();
        match a.acquire(&charge).await {
            SharedOutcome::Unavailable(reason) => assert!(!reason.is_empty()),
            other => panic!("expected unavailable, got {other:?}"),
        }
        assert!(
            started.elapsed() < OP_TIMEOUT + Duration::from_millis(500),
            "took {:?}",
            started.elapsed()
        );
    }
    assert!(!a.available());
    assert!(a.ping().await.is_err());
    assert_eq!(m.state_store_up.with_label_values(&["redis"]).get(), 0);
    assert!(
        m.state_store_errors
            .with_label_values(&["redis", "rate"])
            .get()
            >= 3
    );

    // Back (empty: the script cache too, so EVALSHA must reload it).
    tokio::task::block_in_place(|| srv.restart());
    let back = eventually(Duration::from_secs(10), async || {
        a.acquire(&charge).await == SharedOutcome::Admitted
    })
    .await;
    assert!(back, "admits again after Redis restarted");
    assert!(a.available());
    assert!(a.ping().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_is_unavailable_within_the_timeout() {
    // Accepts connections and never says a word: a frozen host.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming() {
            held.push(s);
        }
    });
    let url = format!("redis://127.0.0.1:{port}/");
    let started = Instant::now();
    let (a, _) = replica(&url, "t:").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "connect waits at most connect_timeout"
    );
    assert!(!a.available());
    let charge = rate_charge("r", rate(10, Duration::from_secs(1), 10));
    let started = Instant::now();
    assert!(matches!(
        a.acquire(&charge).await,
        SharedOutcome::Unavailable(_)
    ));
    assert!(
        started.elapsed() < OP_TIMEOUT + Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_a_volume_budget_within_the_flush_tolerance() {
    let srv = RedisServer::start();
    let (a, _) = replica(&srv.url(), "t:").await;
    let (b, _) = replica(&srv.url(), "t:").await;
    const BUDGET: u64 = 10_000;
    const CHUNK: u64 = 100;
    const FLUSH_EVERY_ROUNDS: u64 = 5;
    let (key, v) = volume("export", BUDGET, Duration::from_secs(60));

    // Both stream chunks in turn and flush every few rounds (the background flush, made
    // deterministic): each stops at its first refused chunk.
    let (mut moved_a, mut moved_b) = (0u64, 0u64);
    let (mut stopped_a, mut stopped_b) = (false, false);
    let mut round = 0;
    while !(stopped_a && stopped_b) {
        round += 1;
        assert!(round < 1_000, "never stopped");
        if !stopped_a {
            match a.charge_volume(&key, &v, CHUNK) {
                Ok(_) => moved_a += CHUNK,
                Err(wait) => {
                    assert!(wait > Duration::ZERO && wait <= v.per);
                    stopped_a = true;
                }
            }
        }
        if !stopped_b {
            match b.charge_volume(&key, &v, CHUNK) {
                Ok(_) => moved_b += CHUNK,
                Err(_) => stopped_b = true,
            }
        }
        if round % FLUSH_EVERY_ROUNDS == 0 {
            a.flush().await;
            b.flush().await;
        }
    }
    let moved = moved_a + moved_b;
    // Tolerance: what the other replica moved within one flush interval (here
    // FLUSH_EVERY_ROUNDS chunks).
    let tolerance = FLUSH_EVERY_ROUNDS * CHUNK;
    assert!(moved <= BUDGET + tolerance, "moved {moved}");
    assert!(moved >= BUDGET - CHUNK, "stopped early: {moved}");
    assert!(moved_a > 0 && moved_b > 0);

    // Once flushed, both see the budget used up before a call starts.
    a.flush().await;
    b.flush().await;
    assert!(a.volume_remaining(&key, &v).is_err());
    assert!(b.volume_remaining(&key, &v).is_err());
    // Redis holds the sum of every charged chunk, the refused ones included.
    let mut c = raw(&srv.url());
    let total: u64 = redis::cmd("GET")
        .arg(format!("t:volume:{}", key.storage_key()))
        .query(&mut c)
        .unwrap();
    assert_eq!(total, moved + 2 * CHUNK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_learns_other_replicas_bytes_from_the_background_flush() {
    let srv = RedisServer::start();
    let (a, _) = replica(&srv.url(), "t:").await;
    let (b, _) = replica(&srv.url(), "t:").await;
    a.start_flusher();
    b.start_flusher();
    let (key, v) = volume("export", 1_000, Duration::from_secs(60));
    // B looks at the key once, so its flusher reads it.
    assert_eq!(b.volume_remaining(&key, &v), Ok(1_000));
    assert_eq!(a.charge_volume(&key, &v, 700), Ok(300));
    let seen = eventually(Duration::from_secs(5), async || {
        b.volume_remaining(&key, &v) == Ok(300)
    })
    .await;
    assert!(seen, "B sees A's bytes: {:?}", b.volume_remaining(&key, &v));
    assert!(
        b.charge_volume(&key, &v, 400).is_err(),
        "crosses the budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_keep_counting_locally_while_redis_is_down() {
    let mut srv = RedisServer::start();
    let (a, _) = replica(&srv.url(), "t:").await;
    let (key, v) = volume("export", 1_000, Duration::from_secs(60));
    assert_eq!(a.charge_volume(&key, &v, 100), Ok(900));
    a.flush().await;
    tokio::task::block_in_place(|| srv.kill());
    assert_eq!(a.charge_volume(&key, &v, 400), Ok(500));
    a.flush().await;
    assert!(!a.available());
    assert_eq!(a.charge_volume(&key, &v, 400), Ok(100), "still counted");
    assert!(a.charge_volume(&key, &v, 200).is_err(), "and enforced");
    // Redis comes back empty: the bytes not sent yet are sent, and the known total follows
    // Redis from then on.
    tokio::task::block_in_place(|| srv.restart());
    let flushed = eventually(Duration::from_secs(10), async || {
        a.flush().await;
        a.available()
    })
    .await;
    assert!(flushed);
    let mut c = raw(&srv.url());
    let total: u64 = redis::cmd("GET")
        .arg(format!("t:volume:{}", key.storage_key()))
        .query(&mut c)
        .unwrap();
    assert_eq!(total, 1_000, "400 + 400 + 200 charged while it was down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_prefixed_and_expire() {
    let srv = RedisServer::start();
    let (a, _) = replica(&srv.url(), "dep1:").await;
    let mut c = raw(&srv.url());
    // Rate: 2 per 400 ms (one per 200 ms); after the burst the TAT is 400 ms ahead.
    let charge = rate_charge("r", rate(2, Duration::from_millis(400), 2));
    assert_eq!(a.acquire(&charge).await, SharedOutcome::Admitted);
    assert_eq!(a.acquire(&charge).await, SharedOutcome::Admitted);
    let rate_key = format!("dep1:rate:{}", charge.rates[0].0.key.storage_key());
    let pttl: i64 = redis::cmd("PTTL").arg(&rate_key).query(&mut c).unwrap();
    assert!(pttl > 0 && pttl <= 400, "rate key PTTL {pttl}");
    // Volume: a 300 ms window.
    let (key, v) = volume("export", 1_000, Duration::from_millis(300));
    a.charge_volume(&key, &v, 10).unwrap();
    a.flush().await;
    let volume_key = format!("dep1:volume:{}", key.storage_key());
    let pttl: i64 = redis::cmd("PTTL").arg(&volume_key).query(&mut c).unwrap();
    assert!(pttl > 0 && pttl <= 300, "volume key PTTL {pttl}");
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    assert!(keys.iter().all(|k| k.starts_with("dep1:")), "{keys:?}");

    tokio::time::sleep(Duration::from_millis(700)).await;
    let left: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    assert!(left.is_empty(), "idle keys vanish: {left:?}");
    // A flush of an idle key reads it without starting a window.
    a.flush().await;
    let left: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    assert!(left.is_empty(), "a read creates nothing: {left:?}");
    // And the local entry goes at the sweep once idle for a window.
    assert!(a.len() >= 1);
    a.sweep();
    assert_eq!(a.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_urls_are_refused_and_secrets_never_shown() {
    for bad in [
        "rediss://:pw@redis.example:6380/#insecure",
        "rediss://redis.example/#other",
        "unix:///run/redis.sock",
        "http://redis.example/",
    ] {
        let err = RedisLimits::connect(opts(bad, "t:"), Arc::new(Metrics::new()))
            .await
            .unwrap_err();
        assert!(!err.contains(":pw@"), "{err}");
        if bad.contains("insecure") {
            assert!(err.contains("#insecure"), "{err}");
        }
        assert!(check_url(bad).is_err());
    }
    assert!(check_url("rediss://u:pw@redis.example:6380/2").is_ok());
    let shown = format!("{:?}", opts("redis://user:hunter2@h:1/", "t:"));
    assert!(!shown.contains("hunter2"), "{shown}");

    // A wrong password: the reason says so without the password.
    let srv = RedisServer::start();
    let mut c = raw(&srv.url());
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("right-horse")
        .query(&mut c)
        .unwrap();
    let wrong = format!("redis://:wr0ng-batt3ry@127.0.0.1:{}/", srv.port());
    let (a, _) = replica(&wrong, "t:").await;
    assert!(!a.available(), "not up with a wrong password");
    let charge = rate_charge("r", rate(10, Duration::from_secs(1), 10));
    match a.acquire(&charge).await {
        SharedOutcome::Unavailable(reason) => {
            assert!(!reason.contains("wr0ng-batt3ry"), "{reason}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(!format!("{a:?}").contains("wr0ng-batt3ry"));
    let right = format!("redis://:right-horse@127.0.0.1:{}/", srv.port());
    let (b, _) = replica(&right, "t:").await;
    assert_eq!(b.acquire(&charge).await, SharedOutcome::Admitted);
}

// ---------------------------------------------------------------------------------------------
// TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_refuses_a_server_whose_certificate_is_not_trusted() {
    // The trusted case runs end to end in tests/replicas.rs (the gateway with SSL_CERT_FILE).
    let srv = tokio::task::block_in_place(TlsRedisServer::start);
    // The system store does not know the test CA: no connection, never unverified.
    let (a, _) = replica(&srv.url(), "t:").await;
    let charge = rate_charge("r", rate(10, Duration::from_secs(1), 10));
    match a.acquire(&charge).await {
        SharedOutcome::Unavailable(reason) => assert!(reason.contains("certificate"), "{reason}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(!a.available());
}

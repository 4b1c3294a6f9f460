//! The PostgreSQL approval store against a real server: the shared conformance suite, and
//! what only replicas sharing one database can show (exactly-once across processes,
//! cross-replica wake-ups, heartbeats, surviving a server restart).

use super::test_pg::database;
use super::test_servers::PgServer;
use super::*;
use crate::approval::store::conformance::{
    approval_store_conformance, sample, status, with, Fixture, MINUTE, NOW,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Instant;

fn options(url: &str, holder: &str) -> PgStoreOptions {
    PgStoreOptions {
        max_connections: 2,
        ..PgStoreOptions::new(url, holder)
    }
}

fn open(url: &str, holder: &str) -> PostgresApprovalStore {
    PostgresApprovalStore::open(&options(url, holder)).expect("open store")
}

/// A fresh database; each `reopen` is another replica (its own pool and holder).
fn fixture() -> Fixture {
    let url = database("conformance");
    let store = open(&url, "replica-0");
    let n = AtomicUsize::new(1);
    Fixture::new(
        Arc::new(store),
        move || {
            let holder = format!("replica-{}", n.fetch_add(1, Ordering::Relaxed));
            Arc::new(open(&url, &holder))
        },
        (),
    )
}

// Every behaviour the store interface promises, shared with the SQLite store.
approval_store_conformance!(fixture);

/// Runs raw SQL through the store's own pool (test inspection and sabotage).
fn sql(store: &PostgresApprovalStore, statement: &'static str) -> Vec<PgRow> {
    store
        .run("test", move |pool| async move {
            Ok(sqlx::query(statement).fetch_all(&pool).await?)
        })
        .expect("test SQL")
}

/// Records every callback of a subscription.
fn subscribed(store: &PostgresApprovalStore) -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    store
        .subscribe(Arc::new(move |id: Option<&str>| {
            let _ = tx.lock().unwrap().send(id.map(str::to_owned));
        }))
        .expect("subscribe");
    rx
}

/// Waits up to `within` for the callback `want`, skipping others.
fn expect_callback(rx: &mpsc::Receiver<Option<String>>, want: Option<&str>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(got) if got.as_deref() == want => return,
            Ok(_) => continue,
            Err(_) => panic!("no callback {want:?} within {within:?}"),
        }
    }
}

#[test]
fn every_status_fits_the_schema_and_round_trips() {
    let store = open(&database("statuses"), "a");
    store.create(&sample("s")).unwrap();
    for st in Status::ALL {
        let st_text = st.as_str();
        store
            .run("test", move |pool| async move {
                sqlx::query("UPDATE portcullis_approvals SET status = $1 WHERE id = 's'")
                    .bind(st_text)
                    .execute(&pool)
                    .await?;
                Ok(())
            })
            .unwrap();
        assert_eq!(status(&store, "s"), st);
    }
}

#[test]
fn a_preview_with_nul_bytes_round_trips() {
    let store = open(&database("nul"), "a");
    let new = with("bin", |a| a.body_preview = "\u{0}\u{1}PNG\u{fffd}".into());
    let created = store.create(&new).unwrap();
    assert_eq!(created.body_preview, new.body_preview);
    assert_eq!(store.get("bin").unwrap().body_preview, new.body_preview);
}

#[test]
fn replicas_opening_together_create_the_schema_once() {
    let url = database("schema_race");
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                PostgresApprovalStore::open(&options(&url, &format!("r{i}"))).map(|_| ())
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().expect("every replica opens");
    }
    let store = open(&url, "check");
    let rows = sql(
        &store,
        "SELECT version FROM portcullis_schema_version WHERE component = 'approvals'",
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<i64, _>(0), MIGRATIONS.len() as i64);
}

#[test]
fn a_newer_schema_is_refused() {
    let url = database("newer");
    let store = open(&url, "a");
    sql(
        &store,
        "UPDATE portcullis_schema_version SET version = 99 WHERE component = 'approvals'",
    );
    match PostgresApprovalStore::open(&options(&url, "b")) {
        Err(StoreError::Unavailable(msg)) => {
            assert!(msg.contains("newer") && msg.contains("99"), "{msg}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn names_and_errors_never_show_the_password() {
    let url = database("secret");
    // Trust authentication accepts any password: the URL works and carries a secret.
    let with_secret = url.replace("postgres@", "postgres:s3cr%21t@");
    let store = open(&with_secret, "a");
    let name = store.describe();
    assert!(
        name.starts_with("postgres://127.0.0.1:") && name.ends_with("_secret"),
        "{name}"
    );
    assert!(!format!("{store:?}").contains("s3cr"));
    assert!(!format!("{:?}", options(&with_secret, "a")).contains("s3cr"));
    store.ping().unwrap();

    // Nothing listens on port 1.
    let dead = PgStoreOptions {
        connect_timeout: Duration::from_millis(500),
        op_timeout: Duration::from_millis(500),
        ..options("postgres://gw:s3cr%21t@127.0.0.1:1/approvals", "a")
    };
    let started = Instant::now();
    match PostgresApprovalStore::open(&dead) {
        Err(StoreError::Unavailable(msg)) => {
            assert!(msg.contains("postgres://127.0.0.1:1/approvals"), "{msg}");
            assert!(!msg.contains("s3cr"), "{msg}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        PostgresApprovalStore::open(&options("mysql://x", "a")),
        Err(StoreError::Unavailable(_))
    ));
}

/// `sslmode` and `sslrootcert` in the URL are honoured: `verify-full` refuses a server
/// without TLS (the test server has none) instead of falling back to plaintext.
#[test]
fn the_url_chooses_tls() {
    let url = database("tls");
    let connect = PgConnectOptions::from_str(&format!(
        "{url}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
    ))
    .unwrap();
    assert!(matches!(
        connect.get_ssl_mode(),
        sqlx::postgres::PgSslMode::VerifyFull
    ));
    let strict = PgStoreOptions {
        connect_timeout: Duration::from_millis(500),
        ..options(
            &format!("{url}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
            "a",
        )
    };
    assert!(matches!(
        PostgresApprovalStore::open(&strict),
        Err(StoreError::Unavailable(_))
    ));
    open(&format!("{url}?sslmode=disable"), "a").ping().unwrap();
}

/// Eight threads over two replicas race to use one approval: exactly one succeeds.
#[test]
fn two_replicas_consume_an_approval_exactly_once() {
    let url = database("consume_race");
    let a = Arc::new(open(&url, "a"));
    let b = Arc::new(open(&url, "b"));
    a.create(&sample("race")).unwrap();
    b.vote("race", "alice", true, "", NOW).unwrap();
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                store.consume("race", NOW + 1).unwrap()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(wins, 1);
    assert_eq!(status(&*a, "race"), Status::Used);
}

/// Every status change made through one replica reaches the other's subscription.
#[test]
fn changes_on_one_replica_wake_the_other() {
    let url = database("notify");
    let a = open(&url, "a");
    let b = open(&url, "b");
    let rx = subscribed(&b);
    let second = Duration::from_secs(1);

    a.create(&with("q", |x| x.quorum = 2)).unwrap();
    a.vote("q", "alice", true, "", NOW).unwrap();
    expect_callback(&rx, Some("q"), second);
    a.vote("q", "bob", true, "", NOW).unwrap();
    expect_callback(&rx, Some("q"), second);
    assert!(a.consume("q", NOW + 1).unwrap());
    expect_callback(&rx, Some("q"), second);

    a.create(&sample("t")).unwrap();
    assert!(a
        .transition("t", Status::Pending, Status::TimedOut, NOW)
        .unwrap());
    expect_callback(&rx, Some("t"), second);

    a.create(&with("e", |x| x.expires_at_ms = NOW + 1)).unwrap();
    assert_eq!(a.expire_due(NOW + 1).unwrap(), ["e"]);
    expect_callback(&rx, Some("e"), second);

    a.create(&sample("c")).unwrap();
    assert_eq!(a.cancel_agent("billing-bot", "paused", NOW).unwrap(), ["c"]);
    expect_callback(&rx, Some("c"), second);

    // A refused change notifies nobody.
    assert!(!a
        .transition("t", Status::Pending, Status::Abandoned, NOW)
        .unwrap());
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

/// A subscription callback that calls the store gets an error instead of deadlocking.
#[test]
fn a_callback_calling_the_store_is_refused_not_deadlocked() {
    let url = database("reentrant");
    let a = open(&url, "a");
    let b = Arc::new(open(&url, "b"));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let b2 = Arc::downgrade(&b);
    b.subscribe(Arc::new(move |id: Option<&str>| {
        if let (Some(id), Some(b)) = (id, b2.upgrade()) {
            let _ = tx.lock().unwrap().send(b.get(id).map(|_| ()));
        }
    }))
    .unwrap();
    a.create(&sample("x")).unwrap();
    a.cancel_agent("billing-bot", "", NOW).unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("callback ran");
    assert!(
        matches!(got, Err(StoreError::Unavailable(ref m)) if m.contains("own runtime")),
        "{got:?}"
    );
}

#[test]
fn heartbeats_abandon_only_the_holds_of_replicas_that_are_gone() {
    let url = database("heartbeat");
    let now = crate::approval::now_ms();
    let hold = |id: &str| with(id, |x| x.mode = Mode::Hold);
    let a = open(&url, "a");
    let b = open(&url, "b");
    let c = open(&url, "c");
    a.heartbeat(now).unwrap();
    b.heartbeat(now).unwrap();
    a.create(&hold("hold-a")).unwrap();
    b.create(&hold("hold-b")).unwrap();
    b.create(&sample("async-b")).unwrap();
    c.create(&hold("hold-c")).unwrap();
    // c vanishes from the replica table: an unknown holder counts as gone.
    sql(&a, "DELETE FROM portcullis_replicas WHERE holder = 'c'");

    // Within the stale window, b is alive: only c's hold goes.
    assert_eq!(a.heartbeat(now + HOLDER_STALE_MS - 1).unwrap(), ["hold-c"]);
    assert_eq!(status(&a, "hold-b"), Status::Pending);
    // b has been silent for HOLDER_STALE_MS.
    assert_eq!(a.heartbeat(now + HOLDER_STALE_MS).unwrap(), ["hold-b"]);
    let got = a.get("hold-b").unwrap();
    assert_eq!(got.status, Status::Abandoned);
    assert_eq!(got.decision_reason.as_deref(), Some(REASON_HOLDER_GONE));
    assert_eq!(status(&a, "hold-a"), Status::Pending, "a's own hold stays");
    assert_eq!(
        status(&a, "async-b"),
        Status::Pending,
        "async approvals have no holder"
    );

    // A restarted `a` abandons its previous life's holds, not those of a live `b`.
    b.heartbeat(now + 40_000).unwrap();
    b.create(&hold("hold-b2")).unwrap();
    let a2 = open(&url, "a");
    assert_eq!(a2.abandon_orphaned_holds(now + 40_001).unwrap(), 1);
    assert_eq!(status(&a2, "hold-a"), Status::Abandoned);
    assert_eq!(status(&a2, "hold-b2"), Status::Pending);
}

/// The server restarts: approvals survive, operations fail fast while it is down, and the
/// subscription comes back by itself (reporting `None`) and delivers again.
#[test]
fn a_server_restart_loses_nothing_and_the_subscription_resumes() {
    let mut server = PgServer::start();
    let url = server.create_database("restart");
    let a = PostgresApprovalStore::open(&PgStoreOptions {
        connect_timeout: Duration::from_millis(500),
        op_timeout: Duration::from_secs(1),
        ..options(&url, "a")
    })
    .unwrap();
    let b = open(&url, "b");
    let rx = subscribed(&b);
    for i in 0..5 {
        a.create(&with(&format!("before-{i}"), |x| x.created_at_ms = NOW + i))
            .unwrap();
    }

    server.stop();
    let started = Instant::now();
    assert!(matches!(a.get("before-0"), Err(StoreError::Unavailable(_))));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    server.restart();

    expect_callback(&rx, None, Duration::from_secs(10));
    let listed = a.list(&ListFilter::default()).unwrap();
    assert_eq!(listed.len(), 5);
    b.vote("before-3", "alice", true, "", NOW).unwrap();
    expect_callback(&rx, Some("before-3"), Duration::from_secs(1));
    a.vote("before-4", "alice", false, "no", NOW + MINUTE / 2)
        .unwrap();
    expect_callback(&rx, Some("before-4"), Duration::from_secs(1));
    assert!(a.consume("before-3", NOW + 1).unwrap());
}

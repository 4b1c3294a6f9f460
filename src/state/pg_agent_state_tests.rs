//! The PostgreSQL agent-state store against a real server: the rules every store follows (the
//! same functions as the SQLite store's tests), and what replicas sharing one database add.

use super::*;
use crate::approval::postgres::test_pg::database;
use crate::approval::postgres::test_servers::PgServer;
use crate::state::agent_state::tests::{
    blobs_round_trip, pause, prune_forgets_ended_restrictions_and_keeps_pauses,
    restrictions_hold_in_memory_when_the_store_fails,
    step_ups_extend_never_shorten_and_cutoffs_never_move_back, survives_reopening_and_is_audited,
    T,
};
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

fn options(url: &str) -> PgStoreOptions {
    PgStoreOptions {
        max_connections: 2,
        ..PgStoreOptions::new(url, "test")
    }
}

fn open(url: &str) -> PostgresAgentState {
    PostgresAgentState::open(&options(url)).expect("open agent state")
}

fn opener(url: String) -> impl Fn() -> Box<dyn AgentStateStore> {
    move || Box::new(open(&url))
}

/// Runs raw SQL through the store's pool (sabotage and inspection).
fn sql(s: &PostgresAgentState, statement: &'static str) {
    s.run("test", move |pool| async move {
        sqlx::query(statement).execute(&pool).await?;
        Ok(())
    })
    .expect("test SQL");
}

fn resume(agent: &str) -> Change {
    Change::Resume {
        agent: agent.into(),
    }
}

#[test]
fn pg_agent_state_survives_reopening_and_is_audited() {
    survives_reopening_and_is_audited(&opener(database("reopen")));
}

#[test]
fn pg_agent_state_restrictions_hold_when_the_store_fails() {
    let s = open(&database("broken"));
    restrictions_hold_in_memory_when_the_store_fails(&s, &|| {
        sql(&s, "DROP TABLE portcullis_agent_audit")
    });
}

#[test]
fn pg_agent_state_step_ups_and_cutoffs_only_grow() {
    step_ups_extend_never_shorten_and_cutoffs_never_move_back(&open(&database("grow")));
}

#[test]
fn pg_agent_state_prune_forgets_what_has_ended() {
    prune_forgets_ended_restrictions_and_keeps_pauses(&opener(database("prune")));
}

#[test]
fn pg_agent_state_blobs_round_trip_without_changing_the_version() {
    let s = open(&database("blobs"));
    blobs_round_trip(&s);
    assert_eq!(s.version(), 0);
    assert_eq!(s.remote_version().unwrap(), 0);
}

#[test]
fn pg_agent_state_refuses_a_newer_schema() {
    let url = database("newer");
    sql(
        &open(&url),
        "UPDATE portcullis_schema_version SET version = 99 WHERE component = 'agent_state'",
    );
    let err = PostgresAgentState::open(&options(&url)).expect_err("refused");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[test]
fn pg_agent_state_reload_sees_another_replicas_changes() {
    let url = database("reload");
    let (a, b) = (open(&url), open(&url));
    assert_eq!((a.version(), b.version()), (0, 0));
    a.apply(&pause("bot"), "ops", "r", T).unwrap();
    assert_eq!(a.version(), 1);
    assert!(a.current().agent("bot").unwrap().paused.is_some());
    assert_eq!(b.remote_version().unwrap(), 1);
    assert!(b.current().agent("bot").is_none());
    assert!(b.reload().unwrap());
    assert!(b.current().agent("bot").unwrap().paused.is_some());
    assert_eq!(b.version(), 1);
    assert!(!b.reload().unwrap());

    // A write on a replica that is behind catches its whole copy up, not just its own change.
    a.apply(&pause("other"), "ops", "r", T).unwrap();
    b.apply(
        &Change::StepUp {
            agent: "bot".into(),
            until_ms: T + 60_000,
        },
        "ops",
        "r",
        T,
    )
    .unwrap();
    assert_eq!(b.version(), 3);
    let cur = b.current();
    assert!(cur.agent("other").unwrap().paused.is_some());
    let bot = cur.agent("bot").unwrap();
    assert!(bot.paused.is_some() && bot.step_up.is_some());

    // A loosening change is judged on the database's row, not on a stale copy.
    b.apply(&resume("other"), "ops", "r", T).unwrap();
    let r = a.apply(&resume("other"), "ops", "again", T);
    assert!(matches!(r, Err(StateError::Nothing(_))), "{r:?}");
    assert!(
        a.current().agent("other").is_some(),
        "a is not told until it reloads"
    );
    assert!(a.reload().unwrap());
    assert!(a.current().agent("other").is_none());
}

/// Two replicas change one agent at the same instant, many times over: every outcome agrees
/// with the audit trail, and both end with the same state and version.
#[test]
fn pg_agent_state_concurrent_changes_agree_with_the_audit_trail() {
    let url = database("concurrent");
    let stores = [Arc::new(open(&url)), Arc::new(open(&url))];
    let race = |agent: &str, changes: [Change; 2]| {
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = stores
            .iter()
            .zip(changes)
            .enumerate()
            .map(|(i, (s, change))| {
                let (s, barrier) = (Arc::clone(s), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    s.apply(&change, &format!("replica-{i}"), "race", T)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let audit = stores[0].audit(Some(agent), 10).unwrap();
        (results, audit)
    };
    for round in 0..10 {
        // pause + pause: both recorded; the later one's stamp is in force.
        let agent = format!("pp-{round}");
        let (results, audit) = race(&agent, [pause(&agent), pause(&agent)]);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(audit.len(), 2);
        for s in &stores {
            s.reload().unwrap();
            let paused = s.current().agent(&agent).unwrap().paused.clone().unwrap();
            assert_eq!(paused.by, audit[0].by, "the newest audit entry wins");
        }

        // pause + resume of an agent that is not paused: either order, consistently.
        let agent = format!("pr-{round}");
        let (results, audit) = race(&agent, [pause(&agent), resume(&agent)]);
        assert!(results[0].is_ok());
        let actions: Vec<&str> = audit.iter().rev().map(|e| e.action.as_str()).collect();
        match &results[1] {
            Ok(_) => assert_eq!(actions, ["pause", "resume"]),
            Err(StateError::Nothing(_)) => assert_eq!(actions, ["pause"]),
            Err(e) => panic!("unexpected {e}"),
        }
        for s in &stores {
            s.reload().unwrap();
            let paused = s.current().agent(&agent).is_some();
            assert_eq!(paused, actions.last() == Some(&"pause"));
        }
    }
    let total = stores[0].audit(None, 1000).unwrap().len() as u64;
    assert_eq!(
        stores[0].remote_version().unwrap(),
        total,
        "one version per change"
    );
    assert_eq!(stores[0].version(), stores[1].version());
    assert_eq!(*stores[0].current(), *stores[1].current());
}

/// A pause made while PostgreSQL is down bites at once, survives a reload, and is written by
/// `flush_pending` once the server is back; a resume meanwhile is refused.
#[test]
fn pg_agent_state_unpersisted_restrictions_are_written_after_a_restart() {
    let mut server = PgServer::start();
    let url = server.create_database("restart");
    let a = PostgresAgentState::open(&PgStoreOptions {
        connect_timeout: Duration::from_millis(500),
        op_timeout: Duration::from_secs(1),
        ..options(&url)
    })
    .unwrap();
    a.apply(&pause("old"), "ops", "before", T).unwrap();

    server.stop();
    let r = a.apply(&pause("bot"), "ops", "while down", T + 1);
    assert!(matches!(r, Err(StateError::NotPersisted(_))), "{r:?}");
    assert!(a.current().agent("bot").unwrap().paused.is_some());
    let r = a.apply(&resume("old"), "ops", "while down", T + 2);
    assert!(matches!(r, Err(StateError::Store { .. })), "{r:?}");
    assert!(a.current().agent("old").is_some());
    assert!(a.flush_pending().is_err());
    assert!(a.reload().is_err());
    assert!(a.ping().is_err());

    server.restart();
    // Another replica changes something first: the reload swaps in its state, and the pause
    // that only this process holds stays on top.
    let b = open(&url);
    b.apply(&pause("elsewhere"), "ops", "r", T + 3).unwrap();
    assert!(a.reload().unwrap());
    let cur = a.current();
    assert!(cur.agent("elsewhere").is_some());
    assert!(
        cur.agent("bot").unwrap().paused.is_some(),
        "reload kept the pending pause"
    );

    assert_eq!(a.flush_pending().unwrap(), 1);
    assert_eq!(a.flush_pending().unwrap(), 0);
    assert_eq!(a.version(), 3);
    assert!(b.reload().unwrap());
    let p = b.current().agent("bot").unwrap().paused.clone().unwrap();
    assert_eq!((p.reason.as_str(), p.at_ms), ("while down", T + 1));
    let audit = b.audit(Some("bot"), 10).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].at_ms, T + 1, "audited when it was made");
    a.apply(&resume("old"), "ops", "back", T + 4).unwrap();
    assert!(a.current().agent("old").is_none());
}

/// Text PostgreSQL cannot hold: a NUL in a reason is stored replaced; a NUL in a token id (a
/// key) can never be stored, so the revocation holds in this process only, and is not retried.
#[test]
fn pg_agent_state_nul_characters() {
    let url = database("nul");
    let a = open(&url);
    a.apply(&pause("bot"), "ops", "bad\0reason", T).unwrap();
    let audit = a.audit(Some("bot"), 1).unwrap();
    assert_eq!(audit[0].reason, "bad\u{fffd}reason");
    let revoke = Change::RevokeToken {
        jti: "j\0".into(),
        agent: None,
        expires_at_ms: T + 60_000,
    };
    let r = a.apply(&revoke, "ops", "r", T);
    assert!(matches!(r, Err(StateError::NotPersisted(_))), "{r:?}");
    assert!(a.current().revoked_jtis.contains_key("j\0"));
    assert_eq!(a.flush_pending().unwrap(), 0);
    open(&url).apply(&pause("x"), "ops", "r", T).unwrap();
    assert!(a.reload().unwrap());
    assert!(a.current().revoked_jtis.contains_key("j\0"));
    // Later changes are not held up by it.
    a.apply(&resume("bot"), "ops", "r", T).unwrap();
}

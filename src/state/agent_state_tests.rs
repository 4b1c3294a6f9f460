//! The agent-state rules, as functions any [`AgentStateStore`] must pass (the PostgreSQL store's
//! tests call them too), and the SQLite store's own tests.

use super::*;
use std::time::Duration;

pub(crate) const T: i64 = 1_800_000_000_000;

pub(crate) fn pause(agent: &str) -> Change {
    Change::Pause {
        agent: agent.into(),
    }
}

/// Opens a store on the same data each time it is called.
pub(crate) type Open<'a> = &'a dyn Fn() -> Box<dyn AgentStateStore>;

pub(crate) fn survives_reopening_and_is_audited(open: Open<'_>) {
    {
        let s = open();
        s.apply(&pause("bot"), "ops", "probing admin routes", T)
            .unwrap();
        s.apply(
            &Change::RevokeToken {
                jti: "j-1".into(),
                agent: Some("bot".into()),
                expires_at_ms: T + 3_600_000,
            },
            "ops",
            "leaked in a log",
            T + 1,
        )
        .unwrap();
        s.apply(
            &Change::RevokeAgentTokens {
                agent: "other".into(),
                before: (T / 1000) as u64,
            },
            "playbook:contain",
            "denial burst",
            T + 2,
        )
        .unwrap();
    }
    let s = open();
    let cur = s.current();
    let p = cur.agent("bot").unwrap().paused.clone().unwrap();
    assert_eq!(
        (p.by.as_str(), p.reason.as_str(), p.at_ms),
        ("ops", "probing admin routes", T)
    );
    assert_eq!(cur.revoked_jtis["j-1"].agent.as_deref(), Some("bot"));
    assert_eq!(
        cur.agent("other")
            .unwrap()
            .revoked_before
            .as_ref()
            .unwrap()
            .0,
        (T / 1000) as u64
    );
    let audit = s.audit(None, 10).unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["revoke_agent_tokens", "revoke_token", "pause"]);
    assert_eq!(s.audit(Some("bot"), 10).unwrap().len(), 2);
    assert_eq!(audit[1].detail["jti"], "j-1");

    // Resume is persisted too; resuming twice says there is nothing to undo.
    s.apply(
        &Change::Resume {
            agent: "bot".into(),
        },
        "ops",
        "checked",
        T + 3,
    )
    .unwrap();
    assert!(s.current().agent("bot").is_none());
    let again = s.apply(
        &Change::Resume {
            agent: "bot".into(),
        },
        "ops",
        "again",
        T + 4,
    );
    assert!(matches!(again, Err(StateError::Nothing(_))), "{again:?}");
    drop(s);
    assert!(open().current().agent("bot").is_none());
}

/// `break_store` makes every later write fail (another connection drops the audit table).
pub(crate) fn restrictions_hold_in_memory_when_the_store_fails(
    s: &dyn AgentStateStore,
    break_store: &dyn Fn(),
) {
    s.apply(&pause("a"), "ops", "first", T).unwrap();
    break_store();
    let r = s.apply(&pause("b"), "ops", "disk trouble", T + 1);
    assert!(matches!(r, Err(StateError::NotPersisted(_))), "{r:?}");
    assert!(
        s.current().agent("b").unwrap().paused.is_some(),
        "the pause must still bite"
    );
    let r = s.apply(
        &Change::Resume { agent: "a".into() },
        "ops",
        "resume",
        T + 2,
    );
    assert!(matches!(r, Err(StateError::Store { .. })), "{r:?}");
    assert!(
        s.current().agent("a").unwrap().paused.is_some(),
        "an unpersisted resume must not take effect"
    );
}

pub(crate) fn step_ups_extend_never_shorten_and_cutoffs_never_move_back(s: &dyn AgentStateStore) {
    let step = |until_ms| Change::StepUp {
        agent: "bot".into(),
        until_ms,
    };
    s.apply(&step(T + 60_000), "p", "r", T).unwrap();
    s.apply(&step(T + 10_000), "p", "r", T).unwrap();
    assert_eq!(
        s.current()
            .agent("bot")
            .unwrap()
            .step_up
            .as_ref()
            .unwrap()
            .until_ms,
        T + 60_000
    );
    let revoke = |before| Change::RevokeAgentTokens {
        agent: "bot".into(),
        before,
    };
    s.apply(&revoke(200), "p", "r", T).unwrap();
    s.apply(&revoke(100), "p", "r", T).unwrap();
    assert_eq!(
        s.current()
            .agent("bot")
            .unwrap()
            .revoked_before
            .as_ref()
            .unwrap()
            .0,
        200
    );
    // Lifting needs something to lift.
    s.apply(
        &Change::Lift {
            agent: "bot".into(),
        },
        "p",
        "r",
        T,
    )
    .unwrap();
    let r = s.apply(
        &Change::Lift {
            agent: "bot".into(),
        },
        "p",
        "r",
        T,
    );
    assert!(matches!(r, Err(StateError::Nothing(_))), "{r:?}");
}

pub(crate) fn prune_forgets_ended_restrictions_and_keeps_pauses(open: Open<'_>) {
    let s = open();
    s.apply(
        &Change::Throttle {
            agent: "t".into(),
            requests: 5,
            per: Duration::from_secs(60),
            until_ms: T + 1_000,
        },
        "p",
        "rate",
        T,
    )
    .unwrap();
    s.apply(
        &Change::StepUp {
            agent: "t".into(),
            until_ms: T + 5_000,
        },
        "p",
        "seq",
        T,
    )
    .unwrap();
    s.apply(&pause("p"), "ops", "r", T).unwrap();
    s.apply(
        &Change::RevokeToken {
            jti: "old".into(),
            agent: None,
            expires_at_ms: T + 1_000,
        },
        "ops",
        "r",
        T,
    )
    .unwrap();
    s.prune(T + 2_000).unwrap();
    let cur = s.current();
    let t = cur.agent("t").unwrap();
    assert!(t.throttle.is_none());
    assert!(t.step_up.is_some());
    assert!(cur.revoked_jtis.is_empty());
    assert!(cur.agent("p").unwrap().paused.is_some());
    s.prune(T + 6_000).unwrap();
    assert!(s.current().agent("t").is_none());
    drop(s);
    let reopened = open().current();
    assert!(reopened.agent("t").is_none());
    assert!(reopened.revoked_jtis.is_empty());
    assert!(reopened.agent("p").is_some());
}

pub(crate) fn blobs_round_trip(s: &dyn AgentStateStore) {
    assert_eq!(s.load_blob("monitor").unwrap(), None);
    let v = serde_json::json!({"version": 1, "agents": {"bot": [1, 2, 3]}});
    s.save_blob("monitor", &v, T).unwrap();
    s.save_blob("monitor", &v, T + 1).unwrap();
    assert_eq!(s.load_blob("monitor").unwrap(), Some(v));
}

fn opener(path: &Path) -> impl Fn() -> Box<dyn AgentStateStore> + '_ {
    move || Box::new(SqliteAgentState::open(path).unwrap())
}

#[test]
fn agent_state_survives_reopening_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    survives_reopening_and_is_audited(&opener(&dir.path().join("nested/state.db")));
}

#[test]
fn restricting_changes_hold_in_memory_when_the_store_fails_but_loosening_ones_wait() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let s = SqliteAgentState::open(&path).unwrap();
    restrictions_hold_in_memory_when_the_store_fails(&s, &|| {
        Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TABLE audit")
            .unwrap()
    });
}

#[test]
fn step_ups_extend_never_shorten_and_revocation_cutoffs_never_move_back() {
    step_ups_extend_never_shorten_and_cutoffs_never_move_back(&SqliteAgentState::in_memory());
}

#[test]
fn prune_forgets_what_has_ended_and_keeps_pauses() {
    let dir = tempfile::tempdir().unwrap();
    prune_forgets_ended_restrictions_and_keeps_pauses(&opener(&dir.path().join("state.db")));
}

#[test]
fn blobs_round_trip_and_unknown_schema_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let s = SqliteAgentState::open(&path).unwrap();
    blobs_round_trip(&s);
    drop(s);
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteAgentState::open(&path).err().expect("refused");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

//! Behaviour every [`ApprovalStore`] promises, as test functions that run against any backend:
//! the SQLite and PostgreSQL test modules each call them all through
//! [`approval_store_conformance!`], so both backends are held to one set of assertions.

use super::{
    Approval, ApprovalStore, ListFilter, Mode, NewApproval, Status, StoreError, Vote,
    REASON_EXPIRED_APPROVED, REASON_EXPIRED_PENDING, REASON_RESTARTED, REASON_TIMED_OUT,
};
use std::sync::{Arc, Barrier};
use std::thread;

/// A fixed "now" for the tests, Unix ms.
pub(crate) const NOW: i64 = 1_700_000_000_000;
/// One minute, ms.
pub(crate) const MINUTE: i64 = 60_000;

/// One empty store to test, and a way to open more handles on the same data.
pub(crate) struct Fixture {
    /// The store under test (empty).
    pub store: Arc<dyn ApprovalStore>,
    reopen: Box<dyn Fn() -> Arc<dyn ApprovalStore>>,
    /// Whatever must live as long as the store (a temporary directory, a server).
    _keep: Box<dyn std::any::Any>,
}

impl Fixture {
    /// `reopen` must return a new handle on the same data with its own connection(s), as
    /// another process or replica would have.
    pub fn new(
        store: Arc<dyn ApprovalStore>,
        reopen: impl Fn() -> Arc<dyn ApprovalStore> + 'static,
        keep: impl std::any::Any,
    ) -> Fixture {
        Fixture {
            store,
            reopen: Box::new(reopen),
            _keep: Box::new(keep),
        }
    }

    /// Another handle on the same data.
    pub fn reopen(&self) -> Arc<dyn ApprovalStore> {
        (self.reopen)()
    }
}

/// Expands to one `#[test]` per conformance function, each on a fresh `$fixture()`.
macro_rules! approval_store_conformance {
    ($fixture:path) => {
        $crate::approval::store::conformance::approval_store_conformance!(@tests $fixture;
            create_get_round_trip_every_field,
            list_filters_and_orders_newest_first,
            list_limit_zero_means_default,
            quorum_of_two_needs_two_distinct_approvers,
            one_deny_denies_with_its_reason,
            vote_after_expiry_marks_expired,
            only_listed_approvers_may_vote,
            consume_is_once_and_only_when_approved,
            find_open_matches_agent_digest_and_open_status_only,
            find_denied_returns_the_newest_unexpired_denial,
            transition_is_compare_and_set_along_the_lifecycle,
            expire_due_moves_only_open_due_approvals,
            abandon_orphaned_holds_touches_only_pending_holds,
            approved_approval_survives_reopen_and_is_consumable,
            racing_consumers_on_separate_connections_consume_once,
            racing_consumers_on_one_shared_store_consume_once,
            racing_voters_reach_quorum_exactly_once,
            racing_sweeps_expire_each_approval_once,
            racing_creates_never_exceed_the_pending_cap,
            pending_cap_counts_only_this_agents_pending_approvals,
            the_whole_body_is_kept_and_read_back,
            prune_deletes_only_final_approvals_that_ended_and_expired_before_the_cutoff,
            cancel_agent_closes_open_approvals_once,
        );
    };
    (@tests $fixture:path; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::approval::store::conformance::$name(&$fixture());
            }
        )*
    };
}
pub(crate) use approval_store_conformance;

pub(crate) fn sample(id: &str) -> NewApproval {
    NewApproval {
        id: id.to_owned(),
        mode: Mode::Async,
        agent: "billing-bot".to_owned(),
        owner: "team-payments".to_owned(),
        route: "refunds".to_owned(),
        method: "POST".to_owned(),
        path: "/v1/refunds".to_owned(),
        query: Some("dry_run=false&x=%20".to_owned()),
        body_sha256: "ab".repeat(32),
        body_bytes: 1234,
        body_preview: "{\"amount\": 5000, \"note\": \"caf\u{e9}\"}".to_owned(),
        headers: vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("x-request-id".to_owned(), "r-1".to_owned()),
            ("authorization".to_owned(), "[redacted]".to_owned()),
        ],
        request_digest: format!("digest-{id}"),
        config_version: 7,
        approvers: vec!["alice".to_owned(), "bob".to_owned(), "carol".to_owned()],
        quorum: 1,
        created_at_ms: NOW,
        expires_at_ms: NOW + 10 * MINUTE,
        body: b"{\"amount\": 5000}".to_vec(),
        max_pending_for_agent: None,
    }
}

pub(crate) fn with(id: &str, edit: impl FnOnce(&mut NewApproval)) -> NewApproval {
    let mut a = sample(id);
    edit(&mut a);
    a
}

pub(crate) fn status(store: &dyn ApprovalStore, id: &str) -> Status {
    store.get(id).expect("get").status
}

pub(crate) fn ids(list: &[Approval]) -> Vec<&str> {
    list.iter().map(|a| a.id.as_str()).collect()
}

pub(crate) fn create_get_round_trip_every_field(fx: &Fixture) {
    let store = &*fx.store;
    let new = with("a1", |a| {
        a.mode = Mode::Hold;
        a.quorum = 2;
        // Extremes prove the u64 bit-cast round-trips.
        a.body_bytes = u64::MAX;
        a.config_version = u64::MAX - 1;
    });
    let created = store.create(&new).unwrap();
    let got = store.get("a1").unwrap();
    assert_eq!(created, got);
    let expected = Approval {
        id: new.id.clone(),
        mode: new.mode,
        agent: new.agent.clone(),
        owner: new.owner.clone(),
        route: new.route.clone(),
        method: new.method.clone(),
        path: new.path.clone(),
        query: new.query.clone(),
        body_sha256: new.body_sha256.clone(),
        body_bytes: new.body_bytes,
        body_preview: new.body_preview.clone(),
        headers: new.headers.clone(),
        request_digest: new.request_digest.clone(),
        config_version: new.config_version,
        approvers: new.approvers.clone(),
        quorum: new.quorum,
        created_at_ms: new.created_at_ms,
        expires_at_ms: new.expires_at_ms,
        status: Status::Pending,
        votes: vec![],
        decided_at_ms: None,
        decided_by: vec![],
        decision_reason: None,
        used_at_ms: None,
    };
    assert_eq!(got, expected);

    let no_query = store
        .create(&with("a2", |a| {
            a.query = None;
            a.headers.clear();
            a.approvers.clear();
            a.quorum = 0;
        }))
        .unwrap();
    assert_eq!(no_query.query, None);
    assert!(no_query.headers.is_empty() && no_query.approvers.is_empty());
    assert_eq!(no_query.quorum, 1, "quorum 0 is stored as 1");

    assert_eq!(store.get("missing"), Err(StoreError::NotFound));
}

pub(crate) fn list_filters_and_orders_newest_first(fx: &Fixture) {
    let store = &*fx.store;
    store
        .create(&with("old", |a| a.created_at_ms = NOW - 3))
        .unwrap();
    store
        .create(&with("other-agent", |a| {
            a.created_at_ms = NOW - 2;
            a.agent = "crm-bot".into();
        }))
        .unwrap();
    store
        .create(&with("other-route", |a| {
            a.created_at_ms = NOW - 1;
            a.route = "payouts".into();
        }))
        .unwrap();
    store
        .create(&with("same-ms-1", |a| a.created_at_ms = NOW))
        .unwrap();
    store
        .create(&with("same-ms-2", |a| a.created_at_ms = NOW))
        .unwrap();
    store.vote("old", "alice", false, "no", NOW).unwrap();

    let all = store.list(&ListFilter::default()).unwrap();
    assert_eq!(
        ids(&all),
        [
            "same-ms-2",
            "same-ms-1",
            "other-route",
            "other-agent",
            "old"
        ]
    );
    assert_eq!(all[4].votes.len(), 1, "list includes votes");

    let pending = store
        .list(&ListFilter {
            status: Some(Status::Pending),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        ids(&pending),
        ["same-ms-2", "same-ms-1", "other-route", "other-agent"]
    );
    let by_agent = store
        .list(&ListFilter {
            agent: Some("crm-bot".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&by_agent), ["other-agent"]);
    let by_route = store
        .list(&ListFilter {
            route: Some("refunds".into()),
            status: Some(Status::Pending),
            agent: Some("billing-bot".into()),
            limit: 0,
        })
        .unwrap();
    assert_eq!(ids(&by_route), ["same-ms-2", "same-ms-1"]);
    let limited = store
        .list(&ListFilter {
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&limited), ["same-ms-2", "same-ms-1"]);
    let none = store
        .list(&ListFilter {
            status: Some(Status::Used),
            ..Default::default()
        })
        .unwrap();
    assert!(none.is_empty());
}

pub(crate) fn list_limit_zero_means_default(fx: &Fixture) {
    let store = &*fx.store;
    for i in 0..(ListFilter::DEFAULT_LIMIT + 5) {
        store
            .create(&with(&format!("a{i:03}"), |a| {
                a.created_at_ms = NOW + i as i64
            }))
            .unwrap();
    }
    let listed = store.list(&ListFilter::default()).unwrap();
    assert_eq!(listed.len(), ListFilter::DEFAULT_LIMIT);
    assert_eq!(listed[0].id, "a204");
}

pub(crate) fn quorum_of_two_needs_two_distinct_approvers(fx: &Fixture) {
    let store = &*fx.store;
    store.create(&with("q", |a| a.quorum = 2)).unwrap();

    let first = store
        .vote("q", "alice", true, "looks fine", NOW + 1)
        .unwrap();
    assert_eq!(first.status, Status::Pending);
    assert_eq!(first.votes.len(), 1);
    assert!(first.decided_by.is_empty() && first.decided_at_ms.is_none());

    assert_eq!(
        store.vote("q", "alice", true, "again", NOW + 2),
        Err(StoreError::AlreadyVoted {
            approver: "alice".into()
        })
    );

    let second = store.vote("q", "bob", true, "ok", NOW + 3).unwrap();
    assert_eq!(second.status, Status::Approved);
    assert_eq!(second.decided_by, ["alice", "bob"]);
    assert_eq!(second.decided_at_ms, Some(NOW + 3));
    assert_eq!(second.decision_reason, None);
    assert_eq!(
        second.votes,
        [
            Vote {
                approver: "alice".into(),
                approve: true,
                reason: "looks fine".into(),
                at_ms: NOW + 1
            },
            Vote {
                approver: "bob".into(),
                approve: true,
                reason: "ok".into(),
                at_ms: NOW + 3
            },
        ]
    );
    assert_eq!(store.get("q").unwrap(), second);

    assert_eq!(
        store.vote("q", "carol", true, "late", NOW + 4),
        Err(StoreError::AlreadyDecided {
            status: Status::Approved
        })
    );
}

pub(crate) fn one_deny_denies_with_its_reason(fx: &Fixture) {
    let store = &*fx.store;
    store.create(&with("d", |a| a.quorum = 2)).unwrap();
    store.vote("d", "alice", true, "", NOW).unwrap();
    let denied = store
        .vote("d", "bob", false, "refund exceeds policy", NOW + 5)
        .unwrap();
    assert_eq!(denied.status, Status::Denied);
    assert_eq!(denied.decided_by, ["bob"]);
    assert_eq!(
        denied.decision_reason.as_deref(),
        Some("refund exceeds policy")
    );
    assert_eq!(denied.decided_at_ms, Some(NOW + 5));

    assert_eq!(
        store.vote("d", "carol", true, "", NOW + 6),
        Err(StoreError::AlreadyDecided {
            status: Status::Denied
        })
    );
    assert_eq!(store.get("d").unwrap().votes.len(), 2);
}

pub(crate) fn vote_after_expiry_marks_expired(fx: &Fixture) {
    let store = &*fx.store;
    let a = store.create(&sample("e")).unwrap();
    // The boundary instant already counts as expired.
    assert_eq!(
        store.vote("e", "alice", true, "", a.expires_at_ms),
        Err(StoreError::Expired)
    );
    let got = store.get("e").unwrap();
    assert_eq!(got.status, Status::Expired);
    assert_eq!(got.decided_at_ms, Some(a.expires_at_ms));
    assert_eq!(got.decision_reason.as_deref(), Some(REASON_EXPIRED_PENDING));
    assert!(got.votes.is_empty(), "the refused vote is not recorded");
    assert_eq!(
        store.vote("e", "bob", true, "", a.expires_at_ms + 1),
        Err(StoreError::AlreadyDecided {
            status: Status::Expired
        })
    );
    assert_eq!(
        store.vote("missing", "bob", true, "", NOW),
        Err(StoreError::NotFound)
    );
}

pub(crate) fn only_listed_approvers_may_vote(fx: &Fixture) {
    let store = &*fx.store;
    store.create(&sample("n")).unwrap();
    assert_eq!(
        store.vote("n", "mallory", true, "", NOW),
        Err(StoreError::NotAnApprover {
            approver: "mallory".into()
        })
    );
    assert_eq!(
        store.vote("n", "", true, "", NOW),
        Err(StoreError::NotAnApprover {
            approver: String::new()
        })
    );
    assert_eq!(status(store, "n"), Status::Pending);
    assert!(store.get("n").unwrap().votes.is_empty());

    // Empty list: anyone the caller has authenticated as a configured approver.
    store
        .create(&with("open", |a| a.approvers.clear()))
        .unwrap();
    let approved = store.vote("open", "dave", true, "", NOW).unwrap();
    assert_eq!(approved.status, Status::Approved);
    assert_eq!(approved.decided_by, ["dave"]);
}

pub(crate) fn consume_is_once_and_only_when_approved(fx: &Fixture) {
    let store = &*fx.store;
    store.create(&sample("c")).unwrap();
    assert!(!store.consume("c", NOW).unwrap(), "pending cannot be used");
    store.vote("c", "alice", true, "", NOW).unwrap();
    assert!(store.consume("c", NOW + 1).unwrap());
    assert!(!store.consume("c", NOW + 2).unwrap());
    let used = store.get("c").unwrap();
    assert_eq!(used.status, Status::Used);
    assert_eq!(used.used_at_ms, Some(NOW + 1));
    assert_eq!(used.decided_at_ms, Some(NOW));
    assert_eq!(store.consume("missing", NOW), Err(StoreError::NotFound));

    // Approved but expired: refused, and moved to Expired.
    let late = store.create(&sample("late")).unwrap();
    store.vote("late", "alice", true, "", NOW).unwrap();
    assert!(!store.consume("late", late.expires_at_ms).unwrap());
    let got = store.get("late").unwrap();
    assert_eq!(got.status, Status::Expired);
    assert_eq!(got.decided_at_ms, Some(NOW), "keeps the approval time");
    assert_eq!(
        got.decision_reason.as_deref(),
        Some(REASON_EXPIRED_APPROVED)
    );
}

pub(crate) fn find_open_matches_agent_digest_and_open_status_only(fx: &Fixture) {
    let store = &*fx.store;
    let same = |id: &str, created: i64| {
        with(id, |a| {
            a.request_digest = "D".into();
            a.created_at_ms = created;
        })
    };
    store.create(&same("older-pending", NOW)).unwrap();
    store.create(&same("newer-approved", NOW + 1)).unwrap();
    store
        .vote("newer-approved", "alice", true, "", NOW + 1)
        .unwrap();
    store
        .create(&with("newest-expired", |a| {
            a.request_digest = "D".into();
            a.created_at_ms = NOW + 2;
            a.expires_at_ms = NOW + 3;
        }))
        .unwrap();
    store
        .create(&with("other-agent", |a| {
            a.request_digest = "D".into();
            a.created_at_ms = NOW + 4;
            a.agent = "crm-bot".into();
        }))
        .unwrap();
    store
        .create(&with("other-digest", |a| {
            a.request_digest = "E".into();
            a.created_at_ms = NOW + 5;
        }))
        .unwrap();
    store.create(&same("newest-used", NOW + 6)).unwrap();
    store
        .vote("newest-used", "alice", true, "", NOW + 6)
        .unwrap();
    assert!(store.consume("newest-used", NOW + 6).unwrap());
    store.create(&same("newest-denied", NOW + 7)).unwrap();
    store
        .vote("newest-denied", "alice", false, "no", NOW + 7)
        .unwrap();

    let at = NOW + 10;
    let found = store.find_open("billing-bot", "D", at).unwrap().unwrap();
    assert_eq!(found.id, "newer-approved");
    assert_eq!(found.votes.len(), 1);

    assert!(store.consume("newer-approved", at).unwrap());
    let found = store.find_open("billing-bot", "D", at).unwrap().unwrap();
    assert_eq!(found.id, "older-pending");

    assert!(store
        .transition("older-pending", Status::Pending, Status::TimedOut, at)
        .unwrap());
    assert_eq!(store.find_open("billing-bot", "D", at).unwrap(), None);
    assert_eq!(store.find_open("nobody", "D", at).unwrap(), None);
    assert_eq!(
        store.find_open("crm-bot", "D", at).unwrap().unwrap().id,
        "other-agent"
    );
}

pub(crate) fn transition_is_compare_and_set_along_the_lifecycle(fx: &Fixture) {
    let store = &*fx.store;
    store.create(&sample("t")).unwrap();
    assert!(!store
        .transition("t", Status::Approved, Status::Used, NOW)
        .unwrap());
    assert!(store
        .transition("t", Status::Pending, Status::TimedOut, NOW + 1)
        .unwrap());
    assert!(!store
        .transition("t", Status::Pending, Status::Abandoned, NOW + 2)
        .unwrap());
    let got = store.get("t").unwrap();
    assert_eq!(got.status, Status::TimedOut);
    assert_eq!(got.decided_at_ms, Some(NOW + 1));
    assert_eq!(got.decision_reason.as_deref(), Some(REASON_TIMED_OUT));

    // Off-lifecycle edges never happen, even when `from` matches.
    assert!(!store
        .transition("t", Status::TimedOut, Status::Pending, NOW)
        .unwrap());
    assert_eq!(status(store, "t"), Status::TimedOut);
    store.create(&sample("v")).unwrap();
    assert!(!store
        .transition("v", Status::Pending, Status::Approved, NOW)
        .unwrap());
    assert!(!store
        .transition("v", Status::Pending, Status::Denied, NOW)
        .unwrap());
    assert_eq!(status(store, "v"), Status::Pending);

    // Hold mode forwarding: Approved → Used through transition obeys consume's rules.
    store.vote("v", "alice", true, "", NOW).unwrap();
    assert!(store
        .transition("v", Status::Approved, Status::Used, NOW + 1)
        .unwrap());
    assert!(!store.consume("v", NOW + 2).unwrap());
    assert!(!store
        .transition("v", Status::Used, Status::Expired, NOW + 2)
        .unwrap());
    assert_eq!(status(store, "v"), Status::Used);

    assert_eq!(
        store.transition("missing", Status::Pending, Status::Abandoned, NOW),
        Err(StoreError::NotFound)
    );
}

pub(crate) fn expire_due_moves_only_open_due_approvals(fx: &Fixture) {
    let store = &*fx.store;
    let due = NOW + MINUTE;
    let expiring = |id: &str, expires: i64| with(id, |a| a.expires_at_ms = expires);
    store.create(&expiring("pending-due", due)).unwrap();
    store.create(&expiring("approved-due", due - 1)).unwrap();
    store.vote("approved-due", "alice", true, "", NOW).unwrap();
    store.create(&expiring("pending-later", due + 1)).unwrap();
    store.create(&expiring("used-due", due)).unwrap();
    store.vote("used-due", "alice", true, "", NOW).unwrap();
    store.consume("used-due", NOW).unwrap();
    store.create(&expiring("denied-due", due)).unwrap();
    store.vote("denied-due", "alice", false, "no", NOW).unwrap();

    let mut expired = store.expire_due(due).unwrap();
    expired.sort();
    assert_eq!(expired, ["approved-due", "pending-due"]);
    assert_eq!(status(store, "pending-due"), Status::Expired);
    assert_eq!(status(store, "approved-due"), Status::Expired);
    assert_eq!(status(store, "pending-later"), Status::Pending);
    assert_eq!(status(store, "used-due"), Status::Used);
    assert_eq!(status(store, "denied-due"), Status::Denied);
    assert_eq!(
        store
            .get("approved-due")
            .unwrap()
            .decision_reason
            .as_deref(),
        Some(REASON_EXPIRED_APPROVED)
    );
    assert_eq!(store.get("pending-due").unwrap().decided_at_ms, Some(due));
    assert!(store.expire_due(due).unwrap().is_empty());
}

pub(crate) fn abandon_orphaned_holds_touches_only_pending_holds(fx: &Fixture) {
    let store = &*fx.store;
    let hold = |id: &str| with(id, |a| a.mode = Mode::Hold);
    store.create(&hold("hold-1")).unwrap();
    store.create(&hold("hold-2")).unwrap();
    store.create(&sample("async-pending")).unwrap();
    store.create(&hold("hold-approved")).unwrap();
    store.vote("hold-approved", "alice", true, "", NOW).unwrap();
    store.create(&hold("hold-denied")).unwrap();
    store
        .vote("hold-denied", "alice", false, "no", NOW)
        .unwrap();
    assert_eq!(store.count_pending().unwrap(), 3);

    assert_eq!(store.abandon_orphaned_holds(NOW + 1).unwrap(), 2);
    assert_eq!(status(store, "hold-1"), Status::Abandoned);
    assert_eq!(status(store, "hold-2"), Status::Abandoned);
    assert_eq!(status(store, "async-pending"), Status::Pending);
    assert_eq!(status(store, "hold-approved"), Status::Approved);
    assert_eq!(status(store, "hold-denied"), Status::Denied);
    let got = store.get("hold-1").unwrap();
    assert_eq!(got.decided_at_ms, Some(NOW + 1));
    assert_eq!(got.decision_reason.as_deref(), Some(REASON_RESTARTED));
    assert_eq!(store.count_pending().unwrap(), 1);
    assert_eq!(store.abandon_orphaned_holds(NOW + 2).unwrap(), 0);
}

/// Another handle (another process or replica) sees the approval exactly as stored and can
/// use it once; a third sees it used.
pub(crate) fn approved_approval_survives_reopen_and_is_consumable(fx: &Fixture) {
    let store = &*fx.store;
    store.create(&with("durable", |a| a.quorum = 2)).unwrap();
    store.vote("durable", "alice", true, "ok", NOW).unwrap();
    let approved = store.vote("durable", "bob", true, "ok", NOW + 1).unwrap();

    let reopened = fx.reopen();
    assert_eq!(reopened.get("durable").unwrap(), approved);
    assert_eq!(
        reopened
            .find_open("billing-bot", "digest-durable", NOW + 2)
            .unwrap()
            .map(|a| a.id),
        Some("durable".to_owned())
    );
    assert!(reopened.consume("durable", NOW + 2).unwrap());
    drop(reopened);

    let again = fx.reopen();
    assert_eq!(status(&*again, "durable"), Status::Used);
    assert!(!again.consume("durable", NOW + 3).unwrap());
    assert!(!store.consume("durable", NOW + 3).unwrap());
}

/// Eight threads, each with its own connection (as separate processes or replicas sharing
/// the file would have), race to consume one approval: exactly one wins.
pub(crate) fn racing_consumers_on_separate_connections_consume_once(fx: &Fixture) {
    let store = &*fx.store;
    store.create(&sample("race")).unwrap();
    store.vote("race", "alice", true, "", NOW).unwrap();
    let stores: Vec<_> = (0..8).map(|_| fx.reopen()).collect();
    let barrier = Arc::new(Barrier::new(stores.len()));
    let handles: Vec<_> = stores
        .into_iter()
        .map(|s| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                s.consume("race", NOW + 1).unwrap()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|won| *won)
        .count();
    assert_eq!(wins, 1);
    assert_eq!(status(store, "race"), Status::Used);
}

pub(crate) fn racing_consumers_on_one_shared_store_consume_once(fx: &Fixture) {
    let store = Arc::clone(&fx.store);
    store.create(&sample("race")).unwrap();
    store.vote("race", "alice", true, "", NOW).unwrap();
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                store.consume("race", NOW + 1).unwrap()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|won| *won)
        .count();
    assert_eq!(wins, 1);
}

/// Eight distinct approvers vote at once on a quorum of three: exactly three votes count and
/// the rest see the decision.
pub(crate) fn racing_voters_reach_quorum_exactly_once(fx: &Fixture) {
    let store = &*fx.store;
    let names: Vec<String> = (0..8).map(|i| format!("approver-{i}")).collect();
    store
        .create(&with("quorum-race", |a| {
            a.approvers = names.clone();
            a.quorum = 3;
        }))
        .unwrap();
    let barrier = Arc::new(Barrier::new(names.len()));
    let handles: Vec<_> = names
        .iter()
        .map(|name| {
            let s = fx.reopen();
            let (barrier, name) = (Arc::clone(&barrier), name.clone());
            thread::spawn(move || {
                barrier.wait();
                s.vote("quorum-race", &name, true, "", NOW)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 3);
    assert!(results.iter().all(|r| match r {
        Ok(_) => true,
        Err(e) =>
            *e == StoreError::AlreadyDecided {
                status: Status::Approved
            },
    }));
    let got = store.get("quorum-race").unwrap();
    assert_eq!(got.status, Status::Approved);
    assert_eq!(got.votes.len(), 3);
    assert_eq!(got.decided_by.len(), 3);
}

pub(crate) fn pending_cap_counts_only_this_agents_pending_approvals(fx: &Fixture) {
    let store = &*fx.store;
    let capped = |id: &str, agent: &str| {
        with(id, |a| {
            a.agent = agent.into();
            a.max_pending_for_agent = Some(2);
        })
    };
    store.create(&capped("a1", "flood-bot")).unwrap();
    store.create(&capped("a2", "flood-bot")).unwrap();
    assert_eq!(
        store.create(&capped("a3", "flood-bot")),
        Err(StoreError::TooManyPending {
            pending: 2,
            limit: 2
        })
    );
    assert!(matches!(store.get("a3"), Err(StoreError::NotFound)));
    // Another agent is not affected by the flood.
    store.create(&capped("b1", "quiet-bot")).unwrap();
    // A decided approval frees its slot.
    store.vote("a1", "alice", false, "no", NOW).unwrap();
    store.create(&capped("a4", "flood-bot")).unwrap();
}

pub(crate) fn the_whole_body_is_kept_and_read_back(fx: &Fixture) {
    let store = &*fx.store;
    let body: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    store
        .create(&with("big", |a| a.body = body.clone()))
        .unwrap();
    assert_eq!(store.body("big").unwrap(), Some(body));
    assert_eq!(store.body("nope"), Err(StoreError::NotFound));
}

pub(crate) fn prune_deletes_only_final_approvals_that_ended_and_expired_before_the_cutoff(
    fx: &Fixture,
) {
    let store = &*fx.store;
    let cutoff = NOW + 2 * MINUTE;
    store
        .create(&with("old-denied", |a| a.expires_at_ms = NOW + MINUTE))
        .unwrap();
    for id in ["new-denied", "denied-still-open", "pending", "approved"] {
        store.create(&with(id, |_| {})).unwrap();
    }
    store.vote("old-denied", "alice", false, "no", NOW).unwrap();
    store
        .vote("new-denied", "alice", false, "no", cutoff + 1)
        .unwrap();
    // Denied long ago but not expired: an identical retry is still told the denial.
    store
        .vote("denied-still-open", "alice", false, "no", NOW)
        .unwrap();
    store.vote("approved", "alice", true, "ok", NOW).unwrap();
    assert_eq!(store.prune_final(cutoff).unwrap(), 1);
    assert!(matches!(store.get("old-denied"), Err(StoreError::NotFound)));
    for id in ["new-denied", "denied-still-open", "pending", "approved"] {
        store.get(id).unwrap();
    }
    assert!(store
        .find_denied("billing-bot", "digest-denied-still-open", cutoff)
        .unwrap()
        .is_some());
}

pub(crate) fn find_denied_returns_the_newest_unexpired_denial(fx: &Fixture) {
    let store = &*fx.store;
    let same = |id: &str, created: i64, expires: i64| {
        with(id, |a| {
            a.request_digest = "D".into();
            a.created_at_ms = created;
            a.expires_at_ms = expires;
        })
    };
    store.create(&same("older", NOW, NOW + MINUTE)).unwrap();
    store.create(&same("newer", NOW + 1, NOW + MINUTE)).unwrap();
    store
        .create(&same("newest-short", NOW + 2, NOW + 10))
        .unwrap();
    store
        .create(&same("pending", NOW + 3, NOW + MINUTE))
        .unwrap();
    for id in ["older", "newer", "newest-short"] {
        store.vote(id, "alice", false, "no", NOW + 5).unwrap();
    }
    let found = store.find_denied("billing-bot", "D", NOW + 5).unwrap();
    let found = found.expect("a denial");
    assert_eq!(found.id, "newest-short");
    assert_eq!(found.votes.len(), 1);
    // Past its expires_at, a denial no longer answers retries.
    let found = store.find_denied("billing-bot", "D", NOW + 10).unwrap();
    assert_eq!(found.map(|a| a.id), Some("newer".to_owned()));
    assert_eq!(store.find_denied("crm-bot", "D", NOW + 5).unwrap(), None);
    assert_eq!(
        store.find_denied("billing-bot", "E", NOW + 5).unwrap(),
        None
    );
    assert_eq!(
        store.find_denied("billing-bot", "D", NOW + MINUTE).unwrap(),
        None
    );
}

/// Sweeps from eight handles at once: every due approval is reported by exactly one of them.
pub(crate) fn racing_sweeps_expire_each_approval_once(fx: &Fixture) {
    let store = &*fx.store;
    for i in 0..20 {
        store
            .create(&with(&format!("due-{i:02}"), |a| a.expires_at_ms = NOW + 1))
            .unwrap();
    }
    let stores: Vec<_> = (0..8).map(|_| fx.reopen()).collect();
    let barrier = Arc::new(Barrier::new(stores.len()));
    let handles: Vec<_> = stores
        .into_iter()
        .map(|s| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                s.expire_due(NOW + 1).unwrap()
            })
        })
        .collect();
    let mut all: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    let expected: Vec<String> = (0..20).map(|i| format!("due-{i:02}")).collect();
    assert_eq!(all, expected);
}

/// Creates racing from eight handles against a cap of three: exactly three get in.
pub(crate) fn racing_creates_never_exceed_the_pending_cap(fx: &Fixture) {
    let stores: Vec<_> = (0..8).map(|_| fx.reopen()).collect();
    let barrier = Arc::new(Barrier::new(stores.len()));
    let handles: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                s.create(&with(&format!("flood-{i}"), |a| {
                    a.max_pending_for_agent = Some(3)
                }))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(_) | Err(StoreError::TooManyPending { limit: 3, .. }))));
    assert_eq!(fx.store.count_pending().unwrap(), 3);
}

pub(crate) fn cancel_agent_closes_open_approvals_once(fx: &Fixture) {
    let store = &*fx.store;
    for id in ["pending", "approved", "denied", "used"] {
        store.create(&with(id, |_| {})).unwrap();
    }
    store
        .create(&with("other-agent", |a| a.agent = "crm-bot".into()))
        .unwrap();
    store.vote("approved", "alice", true, "", NOW).unwrap();
    store.vote("denied", "alice", false, "no", NOW).unwrap();
    store.vote("used", "alice", true, "", NOW).unwrap();
    assert!(store.consume("used", NOW).unwrap());

    let mut cancelled = store
        .cancel_agent("billing-bot", "agent paused by ops: test", NOW + 1)
        .unwrap();
    cancelled.sort();
    assert_eq!(cancelled, ["approved", "pending"]);
    let got = store.get("approved").unwrap();
    assert_eq!(got.status, Status::Cancelled);
    assert_eq!(got.decided_at_ms, Some(NOW + 1));
    assert_eq!(
        got.decision_reason.as_deref(),
        Some("agent paused by ops: test")
    );
    assert!(!store.consume("approved", NOW + 2).unwrap());
    assert_eq!(status(store, "denied"), Status::Denied);
    assert_eq!(status(store, "used"), Status::Used);
    assert_eq!(status(store, "other-agent"), Status::Pending);
    assert!(store
        .cancel_agent("billing-bot", "again", NOW + 2)
        .unwrap()
        .is_empty());
}

//! The approval store interface.
//!
//! High-risk agent calls are held until human approvers decide. Those decisions must outlive the
//! gateway process, so they live behind [`ApprovalStore`]. The trait is deliberately small and
//! synchronous: today it is backed by one SQLite file ([`super::sqlite::SqliteStore`]); a shared
//! backend for several replicas can implement the same trait later without touching callers.
//!
//! Every state change that has to happen "at most once" (a vote, consuming an approval, a timeout)
//! is a compare-and-set inside the store, never a read-then-write in the caller, so two gateway
//! workers (or two replicas) can never both act on one approval.
//!
//! Any failure to read or write the store is [`StoreError::Unavailable`]; callers must then refuse
//! the held call (fail closed), never forward it.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// `decision_reason` of a pending approval that expired.
pub(crate) const REASON_EXPIRED_PENDING: &str = "no decision before the approval expired";
/// `decision_reason` of an approved approval that expired unused.
pub(crate) const REASON_EXPIRED_APPROVED: &str = "the approval expired before it was used";
/// `decision_reason` of a hold that stopped waiting.
pub(crate) const REASON_TIMED_OUT: &str = "no decision before the hold wait ended";
/// `decision_reason` of a hold nobody waits for any more.
pub(crate) const REASON_ABANDONED: &str =
    "the agent disconnected or the gateway restarted while the request was held";
/// `decision_reason` of holds found at start-up.
pub(crate) const REASON_RESTARTED: &str = "the gateway restarted while the request was held";
/// `decision_reason` of holds whose gateway replica stopped sending heartbeats.
pub(crate) const REASON_HOLDER_GONE: &str =
    "the gateway replica holding the request stopped (no heartbeat)";

/// The fixed `decision_reason` recorded when a status change carries no approver's reason.
pub(crate) fn automatic_reason(from: Status, to: Status) -> Option<&'static str> {
    match (from, to) {
        (_, Status::TimedOut) => Some(REASON_TIMED_OUT),
        (_, Status::Abandoned) => Some(REASON_ABANDONED),
        (Status::Approved, Status::Expired) => Some(REASON_EXPIRED_APPROVED),
        (_, Status::Expired) => Some(REASON_EXPIRED_PENDING),
        _ => None,
    }
}

/// What an accepted vote does to its approval (see [`judge_vote`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VoteEffect {
    /// Recorded; the approval stays pending (quorum not reached yet).
    Recorded,
    /// This vote denies it.
    Denied,
    /// Quorum reached: approved by these approvers, in vote order.
    Approved(Vec<String>),
}

/// The rules of [`ApprovalStore::vote`], applied to the approval as read inside the voting
/// transaction (with every vote cast so far). Kept here so that every backend refuses and
/// decides exactly alike.
///
/// `Err(StoreError::Expired)` means the caller must mark the approval expired (and commit
/// that) before refusing; every other error is returned as is, changing nothing.
pub(crate) fn judge_vote(
    current: &Approval,
    approver: &str,
    approve: bool,
    now_ms: i64,
) -> Result<VoteEffect, StoreError> {
    if current.status != Status::Pending {
        return Err(StoreError::AlreadyDecided {
            status: current.status,
        });
    }
    if current.is_expired(now_ms) {
        return Err(StoreError::Expired);
    }
    // An empty name is never a person; an empty list defers to the caller's check against the
    // configured approvers.
    let allowed = !approver.is_empty()
        && (current.approvers.is_empty() || current.approvers.iter().any(|a| a == approver));
    if !allowed {
        return Err(StoreError::NotAnApprover {
            approver: approver.to_owned(),
        });
    }
    if current.votes.iter().any(|v| v.approver == approver) {
        return Err(StoreError::AlreadyVoted {
            approver: approver.to_owned(),
        });
    }
    if !approve {
        // One allowed "no" is enough: approval needs consent, refusal does not.
        return Ok(VoteEffect::Denied);
    }
    let approving: Vec<String> = current
        .votes
        .iter()
        .filter(|v| v.approve)
        .map(|v| v.approver.clone())
        .chain(std::iter::once(approver.to_owned()))
        .collect();
    if approving.len() >= current.quorum as usize {
        Ok(VoteEffect::Approved(approving))
    } else {
        Ok(VoteEffect::Recorded)
    }
}

/// Where an approval is in its lifecycle.
///
/// ```text
/// Pending → Approved (quorum of distinct approvers) → Used (async replay consumed it once, or hold-mode forwarded it)
/// Pending → Denied (any one allowed approver denies) | TimedOut (hold wait ended)
///         | Abandoned (agent disconnected / gateway restarted while holding) | Expired (past expires_at)
/// Approved → Expired (not used before expires_at)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for votes.
    Pending,
    /// Quorum reached; may be used once before it expires.
    Approved,
    /// An allowed approver said no.
    Denied,
    /// The held connection stopped waiting before a decision.
    TimedOut,
    /// Nobody is waiting any more: the agent disconnected or the gateway restarted mid-hold.
    Abandoned,
    /// Not decided (or not used) before `expires_at_ms`.
    Expired,
    /// The approved call was forwarded; an approval authorises exactly one call.
    Used,
    /// Withdrawn before use because the agent was paused (kill switch).
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order (handy for metrics labels and CLI help).
    pub const ALL: [Status; 8] = [
        Status::Pending,
        Status::Approved,
        Status::Denied,
        Status::TimedOut,
        Status::Abandoned,
        Status::Expired,
        Status::Used,
        Status::Cancelled,
    ];

    /// The stable snake_case name, identical to the serde form; also what the database stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::TimedOut => "timed_out",
            Status::Abandoned => "abandoned",
            Status::Expired => "expired",
            Status::Used => "used",
            Status::Cancelled => "cancelled",
        }
    }

    /// The inverse of [`Status::as_str`]; `None` for anything else.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True once nothing can change any more: everything except `Pending` and `Approved`.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Approved)
    }

    /// Whether the lifecycle has an edge `self → to`.
    ///
    /// Backends use this to refuse status changes that would, for example, reopen a denied
    /// approval or make a used one usable again.
    pub fn can_transition_to(self, to: Status) -> bool {
        matches!(
            (self, to),
            (
                Status::Pending,
                Status::Approved
                    | Status::Denied
                    | Status::TimedOut
                    | Status::Abandoned
                    | Status::Expired
                    | Status::Cancelled
            ) | (
                Status::Approved,
                Status::Expired | Status::Used | Status::Cancelled
            )
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the agent waits for the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The agent's connection is held open until a decision (or a timeout).
    Hold,
    /// The agent is refused at once with the approval id and retries the identical call later;
    /// the retry is matched by `request_digest` and consumes the approval.
    Async,
}

impl Mode {
    /// The stable snake_case name, identical to the serde form; also what the database stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Hold => "hold",
            Mode::Async => "async",
        }
    }

    /// The inverse of [`Mode::as_str`]; `None` for anything else.
    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Hold, Mode::Async]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the proxy records when it holds a call for approval.
///
/// Everything here is computed by the caller; the store only persists it. Secrets must already be
/// gone: `headers` are redacted and `body_preview` is whatever the caller chose to show approvers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApproval {
    /// Caller-generated unique id (uuid v7, simple form).
    pub id: String,
    /// Hold the connection, or refuse now and let the agent replay later.
    pub mode: Mode,
    /// Agent name (token subject as mapped by the config).
    pub agent: String,
    /// The person or team accountable for the agent.
    pub owner: String,
    /// Name of the route that required approval.
    pub route: String,
    /// HTTP method of the held call.
    pub method: String,
    /// Normalised path of the held call (exactly what the upstream would receive).
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Hex SHA-256 of the full request body.
    pub body_sha256: String,
    /// Full body length in bytes.
    pub body_bytes: u64,
    /// The first few KiB of the body as lossy UTF-8, for the approver to read.
    pub body_preview: String,
    /// Request headers, already redacted by the caller.
    pub headers: Vec<(String, String)>,
    /// Hex SHA-256 binding agent + route + method + path + query + body: an approval authorises
    /// exactly this call and nothing else.
    pub request_digest: String,
    /// Config version that decided approval was needed (for audit).
    pub config_version: u64,
    /// Names allowed to vote; empty means any configured approver (the caller, which knows the
    /// configuration, checks that case before voting).
    pub approvers: Vec<String>,
    /// Distinct approving votes needed; values below 1 are stored as 1 so that a mistake can
    /// never create a self-approving request.
    pub quorum: u32,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// After this instant (inclusive) the approval can no longer be voted on or used.
    pub expires_at_ms: i64,
    /// The whole request body, kept so that approvers can read all of it (the request is
    /// bound to `body_sha256`, and capped at `approvals.max_body_bytes` before it gets here).
    pub body: Vec<u8>,
    /// Refuse with [`StoreError::TooManyPending`] when the agent already has this many pending
    /// approvals; checked in the same transaction as the insert, so racing calls cannot
    /// overshoot it. `None`: no cap.
    pub max_pending_for_agent: Option<u32>,
}

/// One approver's vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vote {
    /// Approver name, as authenticated by the admin API.
    pub approver: String,
    /// `true` to approve, `false` to deny.
    pub approve: bool,
    /// Free text from the approver; shown to the agent on denial.
    pub reason: String,
    /// When the vote was cast, Unix milliseconds.
    pub at_ms: i64,
}

/// A stored approval: the request as recorded plus its decision state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Approval {
    /// See [`NewApproval::id`].
    pub id: String,
    /// See [`NewApproval::mode`].
    pub mode: Mode,
    /// See [`NewApproval::agent`].
    pub agent: String,
    /// See [`NewApproval::owner`].
    pub owner: String,
    /// See [`NewApproval::route`].
    pub route: String,
    /// See [`NewApproval::method`].
    pub method: String,
    /// See [`NewApproval::path`].
    pub path: String,
    /// See [`NewApproval::query`].
    pub query: Option<String>,
    /// See [`NewApproval::body_sha256`].
    pub body_sha256: String,
    /// See [`NewApproval::body_bytes`].
    pub body_bytes: u64,
    /// See [`NewApproval::body_preview`].
    pub body_preview: String,
    /// See [`NewApproval::headers`].
    pub headers: Vec<(String, String)>,
    /// See [`NewApproval::request_digest`].
    pub request_digest: String,
    /// See [`NewApproval::config_version`].
    pub config_version: u64,
    /// See [`NewApproval::approvers`].
    pub approvers: Vec<String>,
    /// See [`NewApproval::quorum`] (always >= 1 here).
    pub quorum: u32,
    /// See [`NewApproval::created_at_ms`].
    pub created_at_ms: i64,
    /// See [`NewApproval::expires_at_ms`].
    pub expires_at_ms: i64,
    /// Current lifecycle state.
    pub status: Status,
    /// Every vote cast, in the order the store accepted them.
    pub votes: Vec<Vote>,
    /// When it left `Pending` (approval, denial, timeout, abandonment or expiry), Unix ms.
    /// Kept from the approval when an approved request later expires or is used.
    pub decided_at_ms: Option<i64>,
    /// The approvers whose votes decided it: the quorum for `Approved`, the denier for `Denied`.
    pub decided_by: Vec<String>,
    /// Why it ended: the denier's reason, or a fixed text for timeouts, abandonment and expiry.
    pub decision_reason: Option<String>,
    /// When an approved call was forwarded, Unix ms.
    pub used_at_ms: Option<i64>,
}

impl Approval {
    /// Whether `now_ms` is at or past `expires_at_ms`.
    ///
    /// The boundary instant counts as expired (fail closed); every backend must use this rule.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_at_ms
    }
}

/// Selection for [`ApprovalStore::list`]. Unset fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only approvals in this status.
    pub status: Option<Status>,
    /// Only approvals of this agent.
    pub agent: Option<String>,
    /// Only approvals for this route.
    pub route: Option<String>,
    /// Maximum rows returned; 0 means [`ListFilter::DEFAULT_LIMIT`].
    pub limit: usize,
}

impl ListFilter {
    /// Rows returned when `limit` is 0.
    pub const DEFAULT_LIMIT: usize = 200;

    /// `limit`, with 0 replaced by [`ListFilter::DEFAULT_LIMIT`].
    pub fn effective_limit(&self) -> usize {
        if self.limit == 0 {
            Self::DEFAULT_LIMIT
        } else {
            self.limit
        }
    }
}

/// Why a store operation did not happen.
///
/// Every variant except `Unavailable` is a definite answer about the approval. `Unavailable`
/// means the store could not be consulted; callers must refuse the held call.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// No approval has this id.
    #[error("approval not found")]
    NotFound,
    /// Votes are only accepted while the approval is pending.
    #[error("approval is already {status}")]
    AlreadyDecided {
        /// The status it already has.
        status: Status,
    },
    /// The approval is past `expires_at_ms`; the store has moved it to `Expired`.
    #[error("approval has expired")]
    Expired,
    /// The voter is not in the approval's `approvers` list.
    #[error("{approver} is not an approver for this request")]
    NotAnApprover {
        /// The refused voter.
        approver: String,
    },
    /// Quorum counts distinct people, so each approver votes at most once.
    #[error("{approver} has already voted on this request")]
    AlreadyVoted {
        /// The repeated voter.
        approver: String,
    },
    /// The database cannot be read or written. The message names the database path, so it
    /// belongs in logs, not in responses to agents.
    #[error("approval store unavailable: {0}")]
    Unavailable(String),
    /// The agent already has as many pending approvals as `max_pending_for_agent` allows.
    #[error("the agent already has {pending} pending approvals (limit {limit})")]
    TooManyPending {
        /// Pending approvals the agent has.
        pending: u64,
        /// The cap.
        limit: u32,
    },
}

/// The callback of [`ApprovalStore::subscribe`]: `Some(id)` when approval `id` changed, `None`
/// when changes may have been missed.
pub type OnChange = Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// Durable storage of approvals. All methods are short blocking calls: async callers run them on
/// `spawn_blocking`.
pub trait ApprovalStore: Send + Sync + 'static {
    /// Persists a new `Pending` approval and returns it as stored.
    fn create(&self, a: &NewApproval) -> Result<Approval, StoreError>;

    /// The approval with this id, or `NotFound`.
    fn get(&self, id: &str) -> Result<Approval, StoreError>;

    /// Approvals matching the filter, newest (`created_at_ms`) first.
    fn list(&self, f: &ListFilter) -> Result<Vec<Approval>, StoreError>;

    /// Records one vote, in one transaction.
    ///
    /// The approval must be `Pending` (else `AlreadyDecided`) and not expired (else it is marked
    /// `Expired` and `Expired` is returned); the approver must be allowed (else `NotAnApprover`)
    /// and must not have voted already (else `AlreadyVoted`). A deny makes it `Denied` at once
    /// with the vote's reason as `decision_reason`; approvals reaching quorum make it `Approved`.
    /// `decided_by` lists the approvers whose votes decided it. Returns the updated approval.
    fn vote(
        &self,
        id: &str,
        approver: &str,
        approve: bool,
        reason: &str,
        now_ms: i64,
    ) -> Result<Approval, StoreError>;

    /// For async replay: the newest approval of this agent with this `request_digest` that is
    /// `Pending` or `Approved` and not expired; `None` otherwise. Never returns final ones.
    fn find_open(
        &self,
        agent: &str,
        request_digest: &str,
        now_ms: i64,
    ) -> Result<Option<Approval>, StoreError>;

    /// The newest `Denied` approval of this agent for this exact request that has not reached
    /// its `expires_at`: an async retry of a denied call is told so instead of asking again.
    fn find_denied(
        &self,
        agent: &str,
        request_digest: &str,
        now_ms: i64,
    ) -> Result<Option<Approval>, StoreError>;

    /// `Approved → Used`, atomically and at most once (compare-and-set).
    ///
    /// `Ok(false)` if it was not `Approved` or has expired (an expired one is marked `Expired`);
    /// `NotFound` for an unknown id.
    fn consume(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// Compare-and-set status change, e.g. `Pending → TimedOut` or `Pending → Abandoned`.
    ///
    /// `Ok(false)` if the current status is not `from`, or if `from → to` is not a lifecycle edge
    /// that needs no votes (`Approved` and `Denied` are reached only through [`Self::vote`]);
    /// `Approved → Used` follows the rules of [`Self::consume`]. `NotFound` for an unknown id.
    fn transition(
        &self,
        id: &str,
        from: Status,
        to: Status,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Moves every `Pending`/`Approved` approval at or past `expires_at_ms` to `Expired`;
    /// returns their ids.
    fn expire_due(&self, now_ms: i64) -> Result<Vec<String>, StoreError>;

    /// At start-up: pending hold-mode approvals belonged to connections of a previous process,
    /// so nobody can receive their answer any more → `Abandoned`. Returns how many.
    ///
    /// A store shared by replicas abandons only the holds of this process's previous
    /// incarnation and of holders that are gone (see [`Self::heartbeat`]), never those of a
    /// live replica.
    fn abandon_orphaned_holds(&self, now_ms: i64) -> Result<usize, StoreError>;

    /// Number of `Pending` approvals (for a gauge and for back-pressure limits).
    fn count_pending(&self) -> Result<u64, StoreError>;

    /// The whole stored body of an approval: `NotFound` for an unknown id, `Ok(None)` when the
    /// approval was recorded without one (by a version that kept only a preview).
    fn body(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Deletes final approvals (and their votes) that ended before `before_ms` (when they were
    /// used, decided or, failing both, when they expired) and whose `expires_at_ms` is before it
    /// too, so that [`Self::find_denied`] still sees every unexpired denial. Returns how many.
    /// Pending and approved-unused approvals are never deleted; the access log keeps the audit
    /// lines.
    fn prune_final(&self, before_ms: i64) -> Result<usize, StoreError>;

    /// Moves every open (pending or approved, unused) approval of `agent` to `cancelled` with
    /// `reason`; returns their ids.
    fn cancel_agent(
        &self,
        agent: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError>;

    /// Be told when an approval's status changes in any process sharing the store, so that a
    /// hold waiting here wakes up when another replica records the decision.
    ///
    /// `on_change(Some(id))`: approval `id` changed (a vote was recorded, or it was decided,
    /// used, timed out, abandoned, expired or cancelled). `on_change(None)`: notifications may
    /// have been missed (the subscription was lost and is back), so re-check everything being
    /// waited for. The callback runs on the store's own thread: it must return quickly and must
    /// not call the store. `Err`: no subscription was started.
    ///
    /// A store only one process uses (SQLite) has nobody else to hear from: the default does
    /// nothing.
    fn subscribe(&self, _on_change: OnChange) -> Result<(), StoreError> {
        Ok(())
    }

    /// Records that this process is alive at `now_ms` and abandons the pending holds of
    /// processes that have not been seen for a while (their held connections are gone, so
    /// nobody can receive the answer). Returns the abandoned ids. Call it periodically.
    ///
    /// The default (a store only this process uses) has no other holders: nothing to do.
    fn heartbeat(&self, _now_ms: i64) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Checks that the store answers (for readiness probes).
    fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Where the approvals are kept, for logs and status pages; never contains credentials.
    fn describe(&self) -> String {
        "approval store".to_owned()
    }
}

#[cfg(test)]
#[path = "store_conformance.rs"]
pub(crate) mod conformance;

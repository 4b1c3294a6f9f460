//! Tiered trust: calls that need a human decision.
//!
//! - [`store`]: the durable record of every approval (trait) and [`sqlite`] its embedded backend;
//! - [`digest`]: what an approval is bound to;
//! - [`notify`]: webhook notices, off the request path;
//! - [`executor`]: forwards an approved call, exactly as approved, once;
//! - this file: [`ApprovalService`], which ties them together for the proxy and the admin API,
//!   and wakes held requests when a decision lands.

pub mod digest;
pub mod display;
pub mod executor;
pub mod notify;
pub mod postgres;
pub mod sqlite;
pub mod store;

use crate::observe::{AccessLog, LogTime, Metrics};
use crate::policy::ApprovalSettings;
use crate::util::lock;
use notify::{ApprovalNotice, Notifier};
use serde::Serialize;
use sqlite::SqliteStore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{Approval, ApprovalStore, ListFilter, NewApproval, Status, StoreError};
use tokio::sync::oneshot;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC, milliseconds) of a Unix-ms timestamp.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// An audit line in the access log for every approval event.
#[derive(Serialize)]
struct AuditEvent<'a> {
    time: LogTime,
    event: &'static str,
    approval_id: &'a str,
    status: &'a str,
    mode: &'a str,
    agent: &'a str,
    owner: &'a str,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    request_digest: &'a str,
    approver: Option<&'a str>,
    reason: Option<&'a str>,
    votes: usize,
    quorum: u32,
}

/// How a hold ended.
#[derive(Debug)]
pub enum HoldOutcome {
    /// A decision (Approved or Denied), or another final state set meanwhile.
    Decided(Approval),
    /// Nobody decided in time; the approval is now TimedOut.
    TimedOut(Approval),
}

/// A store lookup by (agent, request digest, now).
type FindByDigest = fn(&dyn ApprovalStore, &str, &str, i64) -> Result<Option<Approval>, StoreError>;

/// A job for the store thread.
type StoreJob = Box<dyn FnOnce(&dyn ApprovalStore) + Send>;

/// One thread that owns every store call, in order.
///
/// Why not tokio's blocking pool: the store serializes on one SQLite connection anyway, so a
/// burst of 10,000 held calls became hundreds of pool threads (tokio's cap is 512) parked on
/// the same mutex, each with its own stack and allocator arenas.
struct StoreWorker {
    tx: std::sync::mpsc::Sender<StoreJob>,
}

impl StoreWorker {
    fn start(store: Arc<dyn ApprovalStore>) -> Result<StoreWorker, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<StoreJob>();
        std::thread::Builder::new()
            .name("approval-store".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(store.as_ref());
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store thread: {e}")))?;
        Ok(StoreWorker { tx })
    }

    fn submit(&self, job: StoreJob) -> Result<(), StoreError> {
        self.tx
            .send(job)
            .map_err(|_| StoreError::Unavailable("the approval store thread stopped".into()))
    }
}

/// A held connection counted against its agent's `max_held_per_agent`; released on drop.
pub struct HeldSlot {
    held: Arc<Mutex<HashMap<String, u32>>>,
    agent: String,
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if let Some(n) = held.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.agent);
            }
        }
    }
}

/// How often a replica says it is alive (shared store): well inside
/// [`postgres::HOLDER_STALE_MS`].
const HEARTBEAT_EVERY_MS: i64 = 5_000;

/// How often decided approvals past their retention are deleted: a DELETE scans the table, so
/// not on every one-second sweep.
const PRUNE_EVERY_MS: i64 = 60_000;

/// Calls waiting for the decision on an approval, by approval id.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Approval>>>>;

/// Approvals for the proxy and the admin API. Store calls run on one dedicated thread.
pub struct ApprovalService {
    /// Held connections per agent (process-local, like the connections themselves).
    held: Arc<Mutex<HashMap<String, u32>>>,
    /// When decided approvals were last pruned, Unix ms (0: never).
    last_prune_ms: std::sync::atomic::AtomicI64,
    /// When this replica last wrote its heartbeat, Unix ms (0: never).
    last_heartbeat_ms: std::sync::atomic::AtomicI64,
    worker: StoreWorker,
    recount_queued: Arc<AtomicBool>,
    waiters: Waiters,
    notifier: Notifier,
    metrics: Arc<Metrics>,
    access_log: Arc<AccessLog>,
    console_url: String,
    store_path: std::path::PathBuf,
    store_name: String,
}

/// The callback a store calls when an approval changed elsewhere (`Some(id)`), or when changes
/// may have been missed (`None`): every waiter concerned re-reads its approval on the store
/// thread and is woken if it is no longer pending.
fn wake_on_remote_change(
    waiters: Waiters,
    jobs: std::sync::mpsc::Sender<StoreJob>,
) -> store::OnChange {
    Arc::new(move |changed: Option<&str>| {
        let ids: Vec<String> = {
            let w = lock(&waiters);
            match changed {
                Some(id) if w.contains_key(id) => vec![id.to_string()],
                Some(_) => return,
                None => w.keys().cloned().collect(),
            }
        };
        for id in ids {
            let waiters = waiters.clone();
            let _ = jobs.send(Box::new(move |s: &dyn ApprovalStore| {
                let Ok(a) = s.get(&id) else { return };
                if a.status == Status::Pending {
                    return;
                }
                if let Some(tx) = lock(&waiters).remove(&id) {
                    let _ = tx.send(a);
                }
            }));
        }
    })
}

impl ApprovalService {
    /// Open the store (creating it on first start), close out holds orphaned by a previous
    /// process, start the notifier.
    ///
    /// `shared`: approvals live in PostgreSQL, shared with the other replicas (then
    /// `settings.store_path` is unused); otherwise in the SQLite file `settings.store_path`.
    pub fn open(
        settings: &ApprovalSettings,
        shared: Option<&postgres::PgStoreOptions>,
        metrics: Arc<Metrics>,
        access_log: Arc<AccessLog>,
    ) -> Result<ApprovalService, StoreError> {
        let store: Arc<dyn ApprovalStore> = match shared {
            Some(opts) => Arc::new(postgres::PostgresApprovalStore::open(opts)?),
            None => Arc::new(SqliteStore::open(&settings.store_path)?),
        };
        let orphaned = store.abandon_orphaned_holds(now_ms())?;
        if orphaned > 0 {
            tracing::warn!(
                orphaned,
                "held approvals of a previous process were marked abandoned (their connections are gone)"
            );
            metrics
                .approval_decisions
                .with_label_values(&["abandoned"])
                .inc_by(orphaned as u64);
        }
        let webhook = settings.webhook.as_ref().map(|w| w.to_config());
        let notifier = Notifier::start(
            webhook,
            metrics.approval_notifications_sent.clone(),
            metrics.approval_notification_failures.clone(),
        );
        let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
        let worker = StoreWorker::start(store.clone())?;
        // Decisions made on other replicas (or by their sweepers) wake the calls held here.
        store.subscribe(wake_on_remote_change(waiters.clone(), worker.tx.clone()))?;
        let svc = ApprovalService {
            held: Arc::new(Mutex::new(HashMap::new())),
            last_prune_ms: std::sync::atomic::AtomicI64::new(0),
            last_heartbeat_ms: std::sync::atomic::AtomicI64::new(0),
            worker,
            recount_queued: Arc::new(AtomicBool::new(false)),
            waiters,
            notifier,
            metrics,
            access_log,
            console_url: settings.console_url.clone(),
            store_path: settings.store_path.clone(),
            store_name: store.describe(),
        };
        svc.refresh_pending_gauge();
        Ok(svc)
    }

    /// Run `f` on the store thread and wait for its answer without blocking the caller's
    /// runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn ApprovalStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.worker.submit(Box::new(move |s| {
            let _ = tx.send(f(s));
        }))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the approval store thread stopped".into()))?
    }

    /// Recount pending approvals on the store thread. A burst of calls queues at most one
    /// recount: COUNT(*) grows with the number pending, and thousands of them would starve
    /// the store thread.
    fn refresh_pending_gauge(&self) {
        if self.recount_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let gauge = self.metrics.approvals_pending.clone();
        let flag = self.recount_queued.clone();
        let queued = self.worker.submit(Box::new(move |s| {
            flag.store(false, Ordering::Release);
            if let Ok(n) = s.count_pending() {
                gauge.set(n as i64);
            }
        }));
        if queued.is_err() {
            self.recount_queued.store(false, Ordering::Release);
        }
    }

    fn audit(
        &self,
        event: &'static str,
        a: &Approval,
        approver: Option<&str>,
        reason: Option<&str>,
    ) {
        self.access_log.log(&AuditEvent {
            time: LogTime(SystemTime::now()),
            event,
            approval_id: &a.id,
            status: a.status.as_str(),
            mode: a.mode.as_str(),
            agent: &a.agent,
            owner: &a.owner,
            route: &a.route,
            method: &a.method,
            path: &a.path,
            request_digest: &a.request_digest,
            approver,
            reason,
            votes: a.votes.len(),
            quorum: a.quorum,
        });
    }

    /// The SQLite file behind this service (empty when approvals live in PostgreSQL).
    pub fn store_path(&self) -> &std::path::Path {
        &self.store_path
    }

    /// Where approvals are kept, for logs: a file path, or a PostgreSQL URL without its
    /// credentials.
    pub fn store_name(&self) -> &str {
        &self.store_name
    }

    /// Is the store reachable (`/readyz`)?
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|s| s.ping()).await
    }

    /// Console link of an approval.
    pub fn link(&self, id: &str) -> String {
        format!("{}#/approvals/{id}", self.console_url)
    }

    fn notice(&self, event: &'static str, a: &Approval) -> ApprovalNotice {
        let target = match &a.query {
            Some(q) => format!("{}?{q}", a.path),
            None => a.path.clone(),
        };
        ApprovalNotice {
            event,
            approval_id: a.id.clone(),
            agent: a.agent.clone(),
            owner: a.owner.clone(),
            route: a.route.clone(),
            method: a.method.clone(),
            path: a.path.clone(),
            summary: format!(
                "{} wants {} {} ({} body bytes, sha256 {}…)",
                a.agent,
                a.method,
                display::escape_line(&target),
                a.body_bytes,
                &a.body_sha256[..12.min(a.body_sha256.len())]
            ),
            approvers: a.approvers.clone(),
            link: self.link(&a.id),
            expires_at: rfc3339_ms(a.expires_at_ms),
            status: a.status.as_str().to_string(),
            query: a.query.clone(),
        }
    }

    /// Record a new approval (and, for holds, register the waiter first so no decision is
    /// missed), notify the humans, audit it.
    pub async fn create(
        &self,
        new: NewApproval,
        wait: bool,
    ) -> Result<(Approval, Option<oneshot::Receiver<Approval>>), StoreError> {
        let rx = if wait {
            let (tx, rx) = oneshot::channel();
            self.lock_waiters().insert(new.id.clone(), tx);
            Some(rx)
        } else {
            None
        };
        let id = new.id.clone();
        let created = self.blocking(move |s| s.create(&new)).await;
        let a = match created {
            Ok(a) => a,
            Err(e) => {
                self.lock_waiters().remove(&id);
                return Err(e);
            }
        };
        self.refresh_pending_gauge();
        self.audit("approval_requested", &a, None, None);
        self.notifier.notify(self.notice("approval_requested", &a));
        Ok((a, rx))
    }

    fn lock_waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Approval>>> {
        lock(&self.waiters)
    }

    /// Wait for the decision on a held approval, at most `timeout`.
    pub async fn wait(
        &self,
        id: &str,
        rx: oneshot::Receiver<Approval>,
        timeout: Duration,
    ) -> Result<HoldOutcome, StoreError> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(a)) => Ok(HoldOutcome::Decided(a)),
            // Sender dropped without a decision (should not happen) or timed out: settle it.
            Ok(Err(_)) | Err(_) => {
                self.lock_waiters().remove(id);
                let now = now_ms();
                let i = id.to_string();
                let moved = self
                    .blocking(move |s| s.transition(&i, Status::Pending, Status::TimedOut, now))
                    .await?;
                let i = id.to_string();
                let a = self.blocking(move |s| s.get(&i)).await?;
                if moved {
                    self.refresh_pending_gauge();
                    self.metrics
                        .approval_decisions
                        .with_label_values(&["timeout"])
                        .inc();
                    self.audit("approval_timeout", &a, None, None);
                    self.notifier.notify(self.notice("approval_decided", &a));
                    Ok(HoldOutcome::TimedOut(a))
                } else {
                    // A decision landed in the same instant: honour it.
                    Ok(HoldOutcome::Decided(a))
                }
            }
        }
    }

    /// Be told of the decision on open approval `id` (an MCP call waiting a little while
    /// for it). One watcher per approval: a newer one replaces the older, which then sees its
    /// channel closed and answers "pending".
    pub fn watch(&self, id: &str) -> oneshot::Receiver<Approval> {
        let (tx, rx) = oneshot::channel();
        self.lock_waiters().insert(id.to_string(), tx);
        rx
    }

    /// Stop watching `id`; the approval stays open.
    pub fn unwatch(&self, id: &str) {
        self.lock_waiters().remove(id);
    }

    /// The agent hung up while its call was held.
    pub async fn abandon(&self, id: &str) {
        self.lock_waiters().remove(id);
        let now = now_ms();
        let i = id.to_string();
        if let Ok(true) = self
            .blocking(move |s| s.transition(&i, Status::Pending, Status::Abandoned, now))
            .await
        {
            self.refresh_pending_gauge();
            self.metrics
                .approval_decisions
                .with_label_values(&["abandoned"])
                .inc();
            let i = id.to_string();
            if let Ok(a) = self.blocking(move |s| s.get(&i)).await {
                self.audit("approval_abandoned", &a, None, None);
            }
        }
    }

    /// A human votes. Wakes the held request when the approval is decided.
    pub async fn vote(
        &self,
        id: &str,
        approver: &str,
        approve: bool,
        reason: &str,
    ) -> Result<Approval, StoreError> {
        let (i, who, why) = (id.to_string(), approver.to_string(), reason.to_string());
        let now = now_ms();
        let res = self
            .blocking(move |s| s.vote(&i, &who, approve, &why, now))
            .await;
        let a = match res {
            Ok(a) => a,
            Err(StoreError::Expired) => {
                self.refresh_pending_gauge();
                return Err(StoreError::Expired);
            }
            Err(e) => return Err(e),
        };
        self.audit(
            if approve {
                "approval_vote_approve"
            } else {
                "approval_vote_deny"
            },
            &a,
            Some(approver),
            Some(reason),
        );
        if a.status != Status::Pending {
            self.refresh_pending_gauge();
            let outcome = if a.status == Status::Approved {
                "approved"
            } else {
                "denied"
            };
            self.metrics
                .approval_decisions
                .with_label_values(&[outcome])
                .inc();
            let waited = (now - a.created_at_ms).max(0) as f64 / 1000.0;
            self.metrics.approval_time_to_decision.observe(waited);
            self.audit(
                if a.status == Status::Approved {
                    "approval_approved"
                } else {
                    "approval_denied"
                },
                &a,
                Some(approver),
                // The deciding vote's reason (for a denial it is also the decision_reason).
                Some(reason),
            );
            self.notifier.notify(self.notice("approval_decided", &a));
            if let Some(tx) = self.lock_waiters().remove(&a.id) {
                let _ = tx.send(a.clone());
            }
        }
        Ok(a)
    }

    /// Cancel every open approval of `agent` (the agent was paused): held calls are woken and
    /// refused, async ones can no longer be used. Returns how many were cancelled.
    pub async fn cancel_agent(&self, agent: &str, reason: &str) -> Result<usize, StoreError> {
        let (who, why) = (agent.to_string(), reason.to_string());
        let now = now_ms();
        let ids = self
            .blocking(move |s| s.cancel_agent(&who, &why, now))
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        self.refresh_pending_gauge();
        for id in &ids {
            self.metrics
                .approval_decisions
                .with_label_values(&["cancelled"])
                .inc();
            let i = id.clone();
            let Ok(a) = self.blocking(move |s| s.get(&i)).await else {
                continue;
            };
            self.audit("approval_cancelled", &a, None, Some(reason));
            self.notifier.notify(self.notice("approval_decided", &a));
            if let Some(tx) = self.lock_waiters().remove(id) {
                let _ = tx.send(a);
            }
        }
        Ok(ids.len())
    }

    /// The open (pending or approved, unexpired) approval of this agent for this exact request.
    pub async fn find_open(
        &self,
        agent: &str,
        digest: &str,
    ) -> Result<Option<Approval>, StoreError> {
        self.find_by_digest(agent, digest, |s, a, d, now| s.find_open(a, d, now))
            .await
    }

    /// The newest unexpired denial of this agent's exact request, if any.
    pub async fn find_denied(
        &self,
        agent: &str,
        digest: &str,
    ) -> Result<Option<Approval>, StoreError> {
        self.find_by_digest(agent, digest, |s, a, d, now| s.find_denied(a, d, now))
            .await
    }

    async fn find_by_digest(
        &self,
        agent: &str,
        digest: &str,
        find: FindByDigest,
    ) -> Result<Option<Approval>, StoreError> {
        let (a, d) = (agent.to_string(), digest.to_string());
        let now = now_ms();
        self.blocking(move |s| find(s, &a, &d, now)).await
    }

    /// Use an approved approval, at most once.
    pub async fn consume(&self, a: &Approval) -> Result<bool, StoreError> {
        let i = a.id.clone();
        let now = now_ms();
        let used = self.blocking(move |s| s.consume(&i, now)).await?;
        if used {
            self.metrics
                .approval_decisions
                .with_label_values(&["used"])
                .inc();
            let mut a = a.clone();
            a.status = Status::Used;
            self.audit("approval_used", &a, None, None);
        }
        Ok(used)
    }

    /// One approval.
    pub async fn get(&self, id: &str) -> Result<Approval, StoreError> {
        let i = id.to_string();
        self.blocking(move |s| s.get(&i)).await
    }

    /// Approvals matching `f`, newest first.
    pub async fn list(&self, f: ListFilter) -> Result<Vec<Approval>, StoreError> {
        self.blocking(move |s| s.list(&f)).await
    }

    /// Count one more held connection of `agent`, unless it already holds `limit`.
    pub fn try_hold(&self, agent: &str, limit: u32) -> Option<HeldSlot> {
        let mut held = lock(&self.held);
        let n = held.entry(agent.to_string()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(HeldSlot {
            held: self.held.clone(),
            agent: agent.to_string(),
        })
    }

    /// The whole stored body of an approval (`Ok(None)` for approvals recorded before bodies
    /// were kept).
    pub async fn body(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let i = id.to_string();
        self.blocking(move |s| s.body(&i)).await
    }

    /// Delete approvals decided more than `retention` ago, at most once a minute (or once per
    /// `retention` when that is shorter). Their audit lines stay in the access log.
    pub async fn prune(&self, retention: Duration) {
        let now = now_ms();
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        // A short retention is pruned as often as it asks for.
        if now - last < PRUNE_EVERY_MS.min(retention_ms) {
            return;
        }
        self.last_prune_ms.store(now, Ordering::Relaxed);
        let before = now.saturating_sub(retention_ms);
        match self.blocking(move |s| s.prune_final(before)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                pruned = n,
                "deleted decided approvals past approvals.retention"
            ),
            Err(e) => tracing::error!(error = %e, "pruning decided approvals failed"),
        }
    }

    /// Expire what is past its deadline (run periodically). With a shared store, also say this
    /// replica is alive and settle the holds of replicas that are not: their connections are
    /// gone, so nobody can receive those answers.
    pub async fn sweep(&self) {
        let now = now_ms();
        // Every few seconds is plenty against the 30 s after which others settle our holds.
        let beat = now - self.last_heartbeat_ms.load(Ordering::Relaxed) >= HEARTBEAT_EVERY_MS;
        if beat {
            self.last_heartbeat_ms.store(now, Ordering::Relaxed);
        }
        match self
            .blocking(move |s| {
                if beat {
                    s.heartbeat(now)
                } else {
                    Ok(Vec::new())
                }
            })
            .await
        {
            Ok(ids) if !ids.is_empty() => {
                self.metrics
                    .approval_decisions
                    .with_label_values(&["abandoned"])
                    .inc_by(ids.len() as u64);
                self.refresh_pending_gauge();
                for id in ids {
                    if let Ok(a) = self.get(&id).await {
                        self.audit("approval_abandoned", &a, None, Some("its replica stopped"));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "approval store heartbeat failed"),
        }
        match self.blocking(move |s| s.expire_due(now)).await {
            Ok(ids) if !ids.is_empty() => {
                self.metrics
                    .approval_decisions
                    .with_label_values(&["expired"])
                    .inc_by(ids.len() as u64);
                self.refresh_pending_gauge();
                for id in ids {
                    let Ok(a) = self.get(&id).await else { continue };
                    self.audit("approval_expired", &a, None, None);
                    self.notifier.notify(self.notice("approval_decided", &a));
                    // A hold whose approval expired can no longer be decided.
                    let waiter = self.lock_waiters().remove(&id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(a);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "approval expiry sweep failed"),
        }
    }

    /// Wait until queued notifications are delivered (shutdown, tests).
    pub fn flush_notifications(&self, timeout: Duration) -> bool {
        self.notifier.flush(timeout)
    }
}

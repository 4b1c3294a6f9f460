//! Runtime agent state (pauses, token revocations, step-ups, throttles, their audit trail, and
//! opaque documents) in PostgreSQL, shared by the replicas of one deployment.
//!
//! Same rules as [`super::agent_state::SqliteAgentState`], with the same transition function
//! (`agent_state::next_row`): restricting changes bite at once, even when the
//! database is down; loosening changes only once persisted.
//!
//! **Replicas write concurrently.** Every persisting transaction first increments the single
//! row of `portcullis_agent_state_version`, which also serialises writers across processes,
//! and then computes the agent's next state from its row as committed (`SELECT … FOR UPDATE`),
//! never from this process's copy, which may be behind. Because writers are serialised by
//! that row, the version names one consistent state: a replica whose copy has version `v`
//! has seen every change up to `v`, and [`PostgresAgentState::reload`] brings it to the
//! newest.
//!
//! **Restrictions PostgreSQL has not got yet** wait in order in a queue that
//! [`PostgresAgentState::flush_pending`] retries (the caller runs it periodically, and every
//! write retries it first, so a later change never overtakes an earlier one). Until written,
//! they are merged on top of whatever is read from the database, so a reload never lifts them.
//!
//! Blobs are not agent state: saving one does not change the version (replicas do not reload
//! for it).

use super::agent_state::{
    next_row, parse_runtime, parse_stamp, prune_runtime, pruned, AgentStateStore, AuditEntry,
    Change, Row, StateError,
};
use crate::approval::postgres::{Fail, PgClient, PgStoreOptions};
use crate::policy::agent_state::{AgentStates, RevokedToken, Stamp};
use crate::util::lock;
use arc_swap::ArcSwap;
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::Row as _;
use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// `MIGRATIONS[n]` upgrades the agent-state schema from version `n` to `n + 1`. Append only.
const MIGRATIONS: &[&str] = &["CREATE TABLE portcullis_agent_state (
        agent          TEXT PRIMARY KEY,
        state          TEXT NOT NULL,            -- JSON AgentRuntime
        updated_at_ms  BIGINT NOT NULL
    );
    CREATE TABLE portcullis_revoked_tokens (
        jti            TEXT PRIMARY KEY,
        agent          TEXT,
        expires_at_ms  BIGINT NOT NULL,
        stamp          TEXT NOT NULL             -- JSON Stamp
    );
    CREATE TABLE portcullis_agent_audit (
        id      BIGSERIAL PRIMARY KEY,
        at_ms   BIGINT NOT NULL,
        agent   TEXT,
        action  TEXT NOT NULL,
        actor   TEXT NOT NULL,                   -- AuditEntry::by (BY is reserved in SQL)
        reason  TEXT NOT NULL,
        detail  TEXT NOT NULL                    -- JSON
    );
    CREATE INDEX portcullis_agent_audit_by_agent ON portcullis_agent_audit (agent, id);
    CREATE TABLE portcullis_blobs (
        key            TEXT PRIMARY KEY,
        value          TEXT NOT NULL,            -- JSON
        updated_at_ms  BIGINT NOT NULL
    );
    CREATE TABLE portcullis_agent_state_version (
        singleton  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
        version    BIGINT NOT NULL
    );
    INSERT INTO portcullis_agent_state_version (singleton, version) VALUES (TRUE, 0);"];

/// A restricting change that PostgreSQL has not got yet.
#[derive(Debug, Clone)]
struct Pending {
    change: Change,
    stamp: Stamp,
    /// `false` for a change PostgreSQL can never store (see [`unstorable`]): it holds in this
    /// process until restart, like a restriction on a full disk with SQLite, but is not retried.
    retry: bool,
}

/// What this process knows, behind the writer lock.
struct Inner {
    /// The state as persisted, at [`PostgresAgentState::version`].
    base: Arc<AgentStates>,
    /// Restrictions not persisted yet, in the order they were made.
    pending: Vec<Pending>,
}

/// How the cache follows a persisting transaction.
enum Synced {
    /// The copy was current before it: apply the one row written.
    Row(Row),
    /// The copy was current before it: prune it the same way.
    Pruned(i64),
    /// Other replicas wrote meanwhile: everything, as read inside the transaction.
    Full(AgentStates),
}

/// Agent state in PostgreSQL. See the module documentation.
pub struct PostgresAgentState {
    client: PgClient,
    /// What the proxy reads: `base` with `pending` merged on top.
    states: ArcSwap<AgentStates>,
    version: AtomicU64,
    /// One writer at a time in this process (read-modify-swap must not lose a change).
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for PostgresAgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresAgentState")
            .field("db", &self.client.display())
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl PostgresAgentState {
    /// Connects, creates or migrates the schema, and loads the state. Fails when PostgreSQL
    /// cannot be reached: without it this process cannot know which agents are paused.
    pub fn open(opts: &PgStoreOptions) -> Result<PostgresAgentState, StateError> {
        let client = PgClient::open(opts, "pg-agent-state", "agent_state", MIGRATIONS).map_err(
            |message| StateError::Store {
                path: "PostgreSQL".into(),
                message,
            },
        )?;
        let mut store = PostgresAgentState {
            client,
            states: ArcSwap::from_pointee(AgentStates::default()),
            version: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                base: Arc::new(AgentStates::default()),
                pending: Vec::new(),
            }),
        };
        let (states, version) = store.snapshot()?;
        let inner = store
            .inner
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        inner.base = Arc::new(states);
        store.states.store(inner.base.clone());
        store.version.store(version, Ordering::Release);
        Ok(store)
    }

    /// The whole state and its version, from one snapshot.
    fn snapshot(&self) -> Result<(AgentStates, u64), StateError> {
        self.run("reload", |pool| async move {
            let mut tx = pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
            let loaded = load_all(&mut tx).await?;
            tx.commit().await?;
            Ok(loaded)
        })
    }

    /// The version of the state this process holds (0: nothing was ever changed).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The version in PostgreSQL (one cheap query): newer than [`Self::version`] when another
    /// replica changed something this process has not loaded.
    pub fn remote_version(&self) -> Result<u64, StateError> {
        self.run("remote_version", |pool| async move {
            let mut conn = pool.acquire().await?;
            read_version(&mut conn).await
        })
    }

    /// Re-reads the whole state and its version (one snapshot) and, when the version differs
    /// from this process's, swaps it in, with unpersisted restrictions kept on top. Returns
    /// whether it changed.
    pub fn reload(&self) -> Result<bool, StateError> {
        let mut inner = lock(&self.inner);
        let (states, version) = self.snapshot()?;
        if version == self.version() {
            return Ok(false);
        }
        inner.base = Arc::new(states);
        self.version.store(version, Ordering::Release);
        self.publish(&inner);
        Ok(true)
    }

    /// Writes, in order, the restrictions made while PostgreSQL was unreachable; returns how
    /// many. Stops at the first failure (they stay queued, in order).
    pub fn flush_pending(&self) -> Result<usize, StateError> {
        let mut inner = lock(&self.inner);
        Ok(self.flush_locked(&mut inner)?.len())
    }

    /// Checks that PostgreSQL answers.
    pub fn ping(&self) -> Result<(), StateError> {
        self.run("ping", |pool| async move {
            sqlx::query("SELECT 1").execute(&pool).await?;
            Ok(())
        })
    }

    /// `postgres://host:port/db`, without credentials.
    pub fn describe(&self) -> String {
        self.client.display().to_owned()
    }

    fn store_err(&self, message: impl Into<String>) -> StateError {
        StateError::Store {
            path: self.client.display().to_owned(),
            message: message.into(),
        }
    }

    fn run<T, F, Fut>(&self, op: &str, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(PgPool) -> Fut,
        Fut: Future<Output = Result<T, Fail<StateError>>> + Send + 'static,
    {
        self.client.run(op, f).map_err(|e| match e {
            Fail::Answer(e) => e,
            Fail::Db(msg) => self.store_err(msg),
        })
    }

    /// Swaps in `base` with the pending restrictions applied on top.
    fn publish(&self, inner: &Inner) {
        if inner.pending.is_empty() {
            self.states.store(inner.base.clone());
            return;
        }
        let mut merged = (*inner.base).clone();
        for p in &inner.pending {
            // Restrictions always apply; `Nothing` is only for loosening changes.
            if let Ok(row) = next_row(
                p.change.agent().and_then(|a| merged.agents.get(a)),
                &p.change,
                &p.stamp,
            ) {
                row.apply_to(&mut merged);
            }
        }
        self.states.store(Arc::new(merged));
    }

    /// Moves `base` and the version along with a committed transaction.
    fn follow(&self, inner: &mut Inner, version: u64, synced: Synced) {
        inner.base = Arc::new(match synced {
            Synced::Row(row) => {
                let mut next = (*inner.base).clone();
                row.apply_to(&mut next);
                next
            }
            Synced::Pruned(now_ms) => pruned(&inner.base, now_ms).0,
            Synced::Full(states) => states,
        });
        self.version.store(version, Ordering::Release);
    }

    /// Persists one change with its audit line; `base` and the version follow. Does not
    /// publish.
    fn persist_locked(
        &self,
        inner: &mut Inner,
        change: &Change,
        stamp: &Stamp,
    ) -> Result<i64, StateError> {
        let (change_owned, stamp_owned, cached) = (change.clone(), stamp.clone(), self.version());
        let (id, version, synced) = self.run("apply", move |pool| async move {
            persist(&pool, &change_owned, &stamp_owned, cached).await
        })?;
        self.follow(inner, version, synced);
        Ok(id)
    }

    /// Persists the retryable pending restrictions in order; returns their audit ids.
    /// Publishes when anything was written.
    fn flush_locked(&self, inner: &mut Inner) -> Result<Vec<i64>, StateError> {
        let mut ids = Vec::new();
        let mut i = 0;
        let mut out = Ok(());
        while i < inner.pending.len() {
            if !inner.pending[i].retry {
                i += 1;
                continue;
            }
            let p = inner.pending[i].clone();
            match self.persist_locked(inner, &p.change, &p.stamp) {
                Ok(id) => {
                    inner.pending.remove(i);
                    ids.push(id);
                }
                // Not for restrictions; nothing to keep if it ever happens.
                Err(StateError::Nothing(_)) => {
                    inner.pending.remove(i);
                }
                Err(e) => {
                    out = Err(e);
                    break;
                }
            }
        }
        if !ids.is_empty() {
            self.publish(inner);
        }
        out.map(|()| ids)
    }
}

/// Why PostgreSQL can never store `change`: TEXT cannot hold NUL, and agent names and token
/// ids are keys, so they cannot be altered to fit.
fn unstorable(change: &Change) -> Option<String> {
    let jti = match change {
        Change::RevokeToken { jti, .. } => Some(jti.as_str()),
        _ => None,
    };
    [change.agent(), jti]
        .into_iter()
        .flatten()
        .any(|s| s.contains('\0'))
        .then(|| "agent names and token ids containing NUL cannot be stored in PostgreSQL".into())
}

/// Free text for a TEXT column, which cannot hold NUL.
fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(s)
    }
}

type Res<T> = Result<T, Fail<StateError>>;

fn unreadable<T>(msg: String) -> Res<T> {
    Err(Fail::Db(msg))
}

async fn read_version(conn: &mut PgConnection) -> Res<u64> {
    let v: i64 = sqlx::query_scalar("SELECT version FROM portcullis_agent_state_version")
        .fetch_one(&mut *conn)
        .await?;
    Ok(v as u64)
}

/// Every agent's state and every revocation, and the version they are at.
async fn load_all(conn: &mut PgConnection) -> Res<(AgentStates, u64)> {
    let version = read_version(conn).await?;
    let mut out = AgentStates::default();
    let rows = sqlx::query("SELECT agent, state FROM portcullis_agent_state")
        .fetch_all(&mut *conn)
        .await?;
    for row in rows {
        let agent: String = row.try_get(0)?;
        let rt = match parse_runtime(&agent, &row.try_get::<String, _>(1)?) {
            Ok(rt) => rt,
            Err(e) => return unreadable(e),
        };
        out.agents.insert(agent, rt);
    }
    let rows =
        sqlx::query("SELECT jti, agent, expires_at_ms, stamp FROM portcullis_revoked_tokens")
            .fetch_all(&mut *conn)
            .await?;
    for row in rows {
        let jti: String = row.try_get(0)?;
        let stamp = match parse_stamp(&jti, &row.try_get::<String, _>(3)?) {
            Ok(s) => s,
            Err(e) => return unreadable(e),
        };
        out.revoked_jtis.insert(
            jti,
            RevokedToken {
                agent: row.try_get(1)?,
                expires_at_ms: row.try_get(2)?,
                stamp,
            },
        );
    }
    Ok((out, version))
}

/// How the cache at `cached` follows a transaction that moved the version to `version`.
async fn synced(
    conn: &mut PgConnection,
    version: u64,
    cached: u64,
    current: Synced,
) -> Res<Synced> {
    if version == cached + 1 {
        return Ok(current);
    }
    // Still inside the transaction holding the version row: nobody else can commit a change
    // in between, so this is exactly the state at `version`.
    Ok(Synced::Full(load_all(conn).await?.0))
}

/// Writes `row`.
async fn write_row(conn: &mut PgConnection, row: &Row, at_ms: i64) -> Res<()> {
    match row {
        Row::Token { jti, revoked } => {
            sqlx::query(
                "INSERT INTO portcullis_revoked_tokens (jti, agent, expires_at_ms, stamp)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (jti) DO UPDATE SET agent = EXCLUDED.agent,
                     expires_at_ms = EXCLUDED.expires_at_ms, stamp = EXCLUDED.stamp",
            )
            .bind(jti)
            .bind(&revoked.agent)
            .bind(revoked.expires_at_ms)
            .bind(serde_json::to_string(&revoked.stamp)?)
            .execute(&mut *conn)
            .await?;
        }
        Row::Agent {
            agent,
            runtime: Some(rt),
        } => {
            sqlx::query(
                "INSERT INTO portcullis_agent_state (agent, state, updated_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (agent) DO UPDATE SET state = EXCLUDED.state,
                     updated_at_ms = EXCLUDED.updated_at_ms",
            )
            .bind(agent)
            .bind(serde_json::to_string(rt)?)
            .bind(at_ms)
            .execute(&mut *conn)
            .await?;
        }
        Row::Agent {
            agent,
            runtime: None,
        } => {
            sqlx::query("DELETE FROM portcullis_agent_state WHERE agent = $1")
                .bind(agent)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// One change in one transaction: take the writers' lock (the version row), read the agent's
/// row as committed, apply the shared transition rules, write it and its audit line. Returns
/// the audit id, the new version and how the cache follows. `Nothing` rolls everything back.
async fn persist(
    pool: &PgPool,
    change: &Change,
    stamp: &Stamp,
    cached: u64,
) -> Res<(i64, u64, Synced)> {
    let mut tx = pool.begin().await?;
    let version: i64 = sqlx::query_scalar(
        "UPDATE portcullis_agent_state_version SET version = version + 1 RETURNING version",
    )
    .fetch_one(&mut *tx)
    .await?;
    let current = match change {
        Change::RevokeToken { .. } => None,
        other => {
            let agent = other.agent().unwrap_or_default();
            let json: Option<String> = sqlx::query_scalar(
                "SELECT state FROM portcullis_agent_state WHERE agent = $1 FOR UPDATE",
            )
            .bind(agent)
            .fetch_optional(&mut *tx)
            .await?;
            match json.map(|j| parse_runtime(agent, &j)).transpose() {
                Ok(rt) => rt,
                Err(e) => return unreadable(e),
            }
        }
    };
    let row = next_row(current.as_ref(), change, stamp).map_err(Fail::Answer)?;
    write_row(&mut tx, &row, stamp.at_ms).await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO portcullis_agent_audit (at_ms, agent, action, actor, reason, detail)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(stamp.at_ms)
    .bind(change.agent())
    .bind(change.action())
    .bind(text(&stamp.by))
    .bind(text(&stamp.reason))
    .bind(change.detail().to_string())
    .fetch_one(&mut *tx)
    .await?;
    let version = version as u64;
    let synced = synced(&mut tx, version, cached, Synced::Row(row)).await?;
    tx.commit().await?;
    Ok((id, version, synced))
}

/// Forgets what has ended at `now_ms` in the database, reading the rows as committed. `None`
/// when nothing had ended (nothing written, version unchanged).
async fn prune_db(pool: &PgPool, now_ms: i64, cached: u64) -> Res<Option<(u64, Synced)>> {
    let mut tx = pool.begin().await?;
    // The writers' lock, taken first like every write.
    sqlx::query("SELECT version FROM portcullis_agent_state_version FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    let tokens = sqlx::query("DELETE FROM portcullis_revoked_tokens WHERE expires_at_ms <= $1")
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let rows = sqlx::query("SELECT agent, state FROM portcullis_agent_state FOR UPDATE")
        .fetch_all(&mut *tx)
        .await?;
    let mut agents = 0;
    for row in rows {
        let agent: String = row.try_get(0)?;
        let mut rt = match parse_runtime(&agent, &row.try_get::<String, _>(1)?) {
            Ok(rt) => rt,
            Err(e) => return unreadable(e),
        };
        if !prune_runtime(&mut rt, now_ms) {
            continue;
        }
        agents += 1;
        let runtime = (!rt.is_clear()).then_some(rt);
        write_row(&mut tx, &Row::Agent { agent, runtime }, now_ms).await?;
    }
    if tokens == 0 && agents == 0 {
        return Ok(None);
    }
    let version: i64 = sqlx::query_scalar(
        "UPDATE portcullis_agent_state_version SET version = version + 1 RETURNING version",
    )
    .fetch_one(&mut *tx)
    .await?;
    let version = version as u64;
    let synced = synced(&mut tx, version, cached, Synced::Pruned(now_ms)).await?;
    tx.commit().await?;
    Ok(Some((version, synced)))
}

/// Has the effect of a pending restriction ended by `now_ms` (nothing left to persist)?
fn ended(change: &Change, now_ms: i64) -> bool {
    match change {
        Change::RevokeToken { expires_at_ms, .. } => *expires_at_ms <= now_ms,
        Change::StepUp { until_ms, .. } | Change::Throttle { until_ms, .. } => *until_ms <= now_ms,
        _ => false,
    }
}

impl AgentStateStore for PostgresAgentState {
    fn current(&self) -> Arc<AgentStates> {
        self.states.load_full()
    }

    fn apply(
        &self,
        change: &Change,
        by: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<AuditEntry, StateError> {
        let stamp = Stamp {
            by: by.to_string(),
            reason: reason.to_string(),
            at_ms: now_ms,
        };
        let entry = |id| AuditEntry {
            id,
            at_ms: now_ms,
            agent: change.agent().map(str::to_string),
            action: change.action().to_string(),
            by: stamp.by.clone(),
            reason: stamp.reason.clone(),
            detail: change.detail(),
        };
        let never = unstorable(change);
        let mut inner = lock(&self.inner);
        if change.loosens() {
            if let Some(why) = never {
                return Err(self.store_err(why));
            }
            // Earlier restrictions first: the database must have them before this change is
            // judged against its rows.
            self.flush_locked(&mut inner)?;
            let id = self.persist_locked(&mut inner, change, &stamp)?;
            self.publish(&inner);
            return Ok(entry(id));
        }
        // A restriction bites now, then is written behind any earlier ones still waiting.
        inner.pending.push(Pending {
            change: change.clone(),
            stamp: stamp.clone(),
            retry: never.is_none(),
        });
        self.publish(&inner);
        if let Some(why) = never {
            return Err(StateError::NotPersisted(Box::new(self.store_err(why))));
        }
        match self.flush_locked(&mut inner) {
            // It was the last retryable one in the queue, so its id is the last written.
            Ok(ids) => ids
                .last()
                .map(|id| entry(*id))
                .ok_or_else(|| self.store_err("the change was not written")),
            Err(e) => Err(StateError::NotPersisted(Box::new(e))),
        }
    }

    fn audit(&self, agent: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, StateError> {
        let agent = agent.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run("audit", move |pool| async move {
            let rows = sqlx::query(
                "SELECT id, at_ms, agent, action, actor, reason, detail FROM portcullis_agent_audit
                 WHERE $1::text IS NULL OR agent = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(agent)
            .bind(limit)
            .fetch_all(&pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(AuditEntry {
                        id: r.try_get(0)?,
                        at_ms: r.try_get(1)?,
                        agent: r.try_get(2)?,
                        action: r.try_get(3)?,
                        by: r.try_get(4)?,
                        reason: r.try_get(5)?,
                        detail: serde_json::from_str(&r.try_get::<String, _>(6)?)
                            .unwrap_or(Value::Null),
                    })
                })
                .collect()
        })
    }

    fn prune(&self, now_ms: i64) -> Result<(), StateError> {
        let mut inner = lock(&self.inner);
        let before = inner.pending.len();
        inner.pending.retain(|p| !ended(&p.change, now_ms));
        let published = self.states.load_full();
        if pruned(&published, now_ms).0 == *published && inner.pending.len() == before {
            return Ok(());
        }
        self.flush_locked(&mut inner)?;
        let cached = self.version();
        let done = self.run("prune", move |pool| async move {
            prune_db(&pool, now_ms, cached).await
        })?;
        if let Some((version, synced)) = done {
            self.follow(&mut inner, version, synced);
        }
        self.publish(&inner);
        Ok(())
    }

    fn save_blob(&self, key: &str, value: &Value, now_ms: i64) -> Result<(), StateError> {
        let (key, value) = (key.to_owned(), value.to_string());
        self.run("save_blob", move |pool| async move {
            sqlx::query(
                "INSERT INTO portcullis_blobs (key, value, updated_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value,
                     updated_at_ms = EXCLUDED.updated_at_ms",
            )
            .bind(key)
            .bind(value)
            .bind(now_ms)
            .execute(&pool)
            .await?;
            Ok(())
        })
    }

    fn load_blob(&self, key: &str) -> Result<Option<Value>, StateError> {
        let key = key.to_owned();
        let text: Option<String> = self.run("load_blob", move |pool| async move {
            Ok(
                sqlx::query_scalar("SELECT value FROM portcullis_blobs WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&pool)
                    .await?,
            )
        })?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| self.store_err(e.to_string())))
            .transpose()
    }
}

#[cfg(test)]
#[path = "pg_agent_state_tests.rs"]
mod tests;

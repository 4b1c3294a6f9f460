//! [`ApprovalStore`] in PostgreSQL, shared by the replicas of one deployment.
//!
//! Why PostgreSQL: replicas must see one set of approvals (a vote cast through any replica
//! decides the call held by another), an approval must be used exactly once across all of
//! them, and decisions must outlive every replica. Each state change is one transaction whose
//! compare-and-set happens in the database: a conditional `UPDATE … RETURNING`, or a
//! `SELECT … FOR UPDATE` row lock before the checks (votes, consume), so concurrent callers on
//! different connections or processes serialise on the row and exactly one of them wins.
//!
//! **Wake-ups across replicas.** Every status change (and every recorded vote) sends
//! `pg_notify('portcullis_approvals', id)` in its own transaction, so it is delivered only if
//! the change commits. [`PostgresApprovalStore::subscribe`] listens on that channel; after a
//! lost connection it reconnects (backing off up to 1 s) and reports `None`, since
//! notifications sent meanwhile are gone.
//!
//! **Held connections belong to one process.** Hold-mode approvals record the `holder` (this
//! process) that holds the agent's connection. Each replica upserts its holder in
//! `portcullis_replicas` on [`ApprovalStore::heartbeat`]; pending holds of a holder not seen
//! for [`HOLDER_STALE_MS`] are abandoned by whichever replica notices first.
//!
//! **Blocking interface.** The trait is synchronous and is called from a plain thread. Each
//! store owns a small tokio runtime (one worker) on which its pool lives; every call runs there
//! and waits for the answer, bounded by `op_timeout`. Failures are
//! [`StoreError::Unavailable`] naming `postgres://host:port/db`, never credentials.
//!
//! **TLS.** The URL's `sslmode` and `sslrootcert` parameters are honoured, e.g.
//! `postgres://gw:secret@db.internal:5432/portcullis?sslmode=verify-full&sslrootcert=/etc/ca.pem`
//! (rustls; `verify-full` checks the chain against that CA and the host name).
//!
//! **Schema.** Tables are prefixed `portcullis_`. The schema version of each component lives in
//! `portcullis_schema_version`; creating or migrating runs in one transaction holding
//! `pg_advisory_xact_lock`, so replicas starting together do not race, and a database written
//! by a newer version is refused.
//!
//! The connection plumbing (`PgClient`) is shared with the agent-state store
//! ([`crate::state::pg_agent_state`]).

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use crate::policy::snapshot::redact_url;
use crate::util::{scrub, url_secrets};

use super::store::{
    automatic_reason, judge_vote, Approval, ApprovalStore, ListFilter, Mode, NewApproval, OnChange,
    Status, StoreError, Vote, VoteEffect, REASON_EXPIRED_APPROVED, REASON_EXPIRED_PENDING,
    REASON_HOLDER_GONE, REASON_RESTARTED,
};

/// A holder (gateway process) not seen for this long is gone: its pending holds are abandoned.
/// Heartbeats must come several times within it.
pub const HOLDER_STALE_MS: i64 = 30_000;

/// Replica rows older than this are deleted: nothing refers to them any more.
const HOLDER_FORGET_MS: i64 = 24 * 3_600_000;

/// Default bound of one database operation.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The `LISTEN`/`NOTIFY` channel of approval changes; the payload is the approval id.
const CHANNEL: &str = "portcullis_approvals";

/// Longest pause between two attempts to re-establish the subscription.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(1);
const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Key of the advisory lock serialising schema creation and migration across processes.
const SCHEMA_LOCK: i64 = 0x706f_7274_6375_6c6c; // "portcull"

/// First key of the advisory lock that serialises capped creates of one agent (the second key is
/// a hash of the agent name).
const PENDING_CAP_LOCK: i32 = 0x7063_6170; // "pcap"

/// How to reach PostgreSQL, shared by the approval and agent-state stores.
#[derive(Clone)]
pub struct PgStoreOptions {
    /// `postgres://user:password@host:port/db?sslmode=…`; the credentials never appear in
    /// messages.
    pub url: String,
    /// This process's name among the replicas (unique per live process, e.g. pod name); hold
    /// approvals are tagged with it.
    pub holder: String,
    /// Pool size.
    pub max_connections: u32,
    /// Longest wait for a new connection.
    pub connect_timeout: Duration,
    /// Longest wait for one operation (a query or a transaction), pool wait included.
    pub op_timeout: Duration,
}

impl PgStoreOptions {
    /// Options with defaults: 4 connections, 5 s to connect, [`DEFAULT_OP_TIMEOUT`].
    pub fn new(url: impl Into<String>, holder: impl Into<String>) -> PgStoreOptions {
        PgStoreOptions {
            url: url.into(),
            holder: holder.into(),
            max_connections: 4,
            connect_timeout: Duration::from_secs(5),
            op_timeout: DEFAULT_OP_TIMEOUT,
        }
    }
}

impl fmt::Debug for PgStoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStoreOptions")
            .field("url", &redact_url(&self.url))
            .field("holder", &self.holder)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

/// A failure inside a store operation: a definite answer for the caller (`E`), or a database
/// problem, whose text [`PgClient::run`] prefixes with the operation.
pub(crate) enum Fail<E> {
    /// A definite answer about the data (not found, nothing to undo, …).
    Answer(E),
    /// The database could not be used; the text says why (never a credential).
    Db(String),
}

impl<E> From<sqlx::Error> for Fail<E> {
    fn from(e: sqlx::Error) -> Self {
        Fail::Db(e.to_string())
    }
}

impl<E> From<serde_json::Error> for Fail<E> {
    fn from(e: serde_json::Error) -> Self {
        Fail::Db(format!("JSON encoding: {e}"))
    }
}

impl From<StoreError> for Fail<StoreError> {
    fn from(e: StoreError) -> Self {
        Fail::Answer(e)
    }
}

/// One PostgreSQL database for a blocking store: its own runtime, pool, timeouts and
/// credential-free name. Shared by the approval and agent-state stores.
pub(crate) struct PgClient {
    /// `Option` only so that `Drop` can shut it down without blocking (dropping a runtime from
    /// inside another one panics).
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: PgPool,
    connect: PgConnectOptions,
    display: String,
    secrets: Vec<String>,
    op_timeout: Duration,
    connect_timeout: Duration,
    /// The runtime's thread name: a call from one of those threads (a subscription callback
    /// calling the store) would wait for itself, so it is refused instead.
    thread_name: &'static str,
}

impl PgClient {
    /// Parses the URL, starts the runtime and pool, and creates or migrates `component`'s
    /// schema (`migrations[n]` upgrades version `n` to `n + 1`). `Err` is a credential-free
    /// message.
    pub(crate) fn open(
        opts: &PgStoreOptions,
        thread_name: &'static str,
        component: &'static str,
        migrations: &'static [&'static str],
    ) -> Result<PgClient, String> {
        let secrets = url_secrets(&opts.url);
        let connect = PgConnectOptions::from_str(&opts.url)
            .map_err(|e| {
                scrub(
                    &format!("invalid PostgreSQL URL {}: {e}", redact_url(&opts.url)),
                    &secrets,
                )
            })?
            .application_name(&format!("portcullis {}", opts.holder));
        let display = match connect.get_database() {
            Some(db) => format!(
                "postgres://{}:{}/{db}",
                connect.get_host(),
                connect.get_port()
            ),
            None => format!("postgres://{}:{}", connect.get_host(), connect.get_port()),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(thread_name)
            .enable_all()
            .build()
            .map_err(|e| format!("{display}: cannot start a runtime: {e}"))?;
        let pool = {
            // connect_lazy needs a runtime context to spawn its maintenance task.
            let _entered = runtime.enter();
            PgPoolOptions::new()
                .max_connections(opts.max_connections.max(1))
                .acquire_timeout(opts.connect_timeout)
                .connect_lazy_with(connect.clone())
        };
        let client = PgClient {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            pool,
            connect,
            display,
            secrets,
            op_timeout: opts.op_timeout,
            connect_timeout: opts.connect_timeout,
            thread_name,
        };
        client
            .run_within(
                "open",
                opts.connect_timeout + opts.op_timeout,
                move |pool| async move { migrate(&pool, component, migrations).await },
            )
            .map_err(|f: Fail<String>| match f {
                Fail::Answer(msg) | Fail::Db(msg) => format!("{}: {msg}", client.display),
            })?;
        Ok(client)
    }

    /// `postgres://host:port/db`, without credentials.
    pub(crate) fn display(&self) -> &str {
        &self.display
    }

    /// Runs `f` on the store's runtime with the pool and waits for it, at most `op_timeout`.
    /// A timeout or database error becomes `Fail::Db("<op>: <cause>")`, scrubbed of the
    /// password.
    pub(crate) fn run<T, E, F, Fut>(&self, op: &str, f: F) -> Result<T, Fail<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: FnOnce(PgPool) -> Fut,
        Fut: Future<Output = Result<T, Fail<E>>> + Send + 'static,
    {
        self.run_within(op, self.op_timeout, f)
    }

    fn run_within<T, E, F, Fut>(&self, op: &str, limit: Duration, f: F) -> Result<T, Fail<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: FnOnce(PgPool) -> Fut,
        Fut: Future<Output = Result<T, Fail<E>>> + Send + 'static,
    {
        if std::thread::current().name() == Some(self.thread_name) {
            return Err(Fail::Db(format!(
                "{op}: called from the store's own runtime (a subscription callback must not \
                 call the store)"
            )));
        }
        // Spawned rather than `block_on` here, so a caller that happens to be inside some
        // other runtime (a `spawn_blocking` thread, a test) does not panic.
        let fut = f(self.pool.clone());
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let out = match tokio::time::timeout(limit, fut).await {
                Ok(out) => out,
                Err(_) => Err(Fail::Db(format!("no answer within {limit:?}"))),
            };
            let _ = tx.send(out);
        });
        match rx.recv() {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Fail::Answer(e))) => Err(Fail::Answer(e)),
            Ok(Err(Fail::Db(msg))) => Err(Fail::Db(scrub(&format!("{op}: {msg}"), &self.secrets))),
            Err(_) => Err(Fail::Db(format!("{op}: the store's runtime stopped"))),
        }
    }

    /// Spawns a background task on the store's runtime (it stops with the store).
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(fut);
    }

    /// A pool of one connection for a `LISTEN`er, apart from the query pool so that a
    /// listener never takes a connection queries need.
    fn listener_pool(&self) -> PgPool {
        let _entered = self.handle.enter();
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(self.connect.clone())
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Creates or upgrades `component`'s tables in one transaction, under an advisory lock so that
/// replicas starting together run each migration once. `Fail::Answer` for a schema this code
/// does not know.
async fn migrate(
    pool: &PgPool,
    component: &str,
    migrations: &[&'static str],
) -> Result<(), Fail<String>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS portcullis_schema_version (
             component TEXT PRIMARY KEY,
             version   BIGINT NOT NULL
         )",
    )
    .execute(&mut *tx)
    .await?;
    let version: i64 =
        sqlx::query_scalar("SELECT version FROM portcullis_schema_version WHERE component = $1")
            .bind(component)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(0);
    let known = usize::try_from(version)
        .ok()
        .filter(|v| *v <= migrations.len());
    let Some(from) = known else {
        return Err(Fail::Answer(format!(
            "{component} schema version {version} is not one this gateway knows (it writes {}); \
             was the database written by a newer Portcullis?",
            migrations.len()
        )));
    };
    for step in migrations[from..].iter().copied() {
        // A plain string runs unprepared (simple protocol), so one step may hold several
        // statements.
        sqlx::Executor::execute(&mut *tx, step).await?;
    }
    if from < migrations.len() {
        sqlx::query(
            "INSERT INTO portcullis_schema_version (component, version) VALUES ($1, $2)
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
        )
        .bind(component)
        .bind(migrations.len() as i64)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `MIGRATIONS[n]` upgrades the approvals schema from version `n` to `n + 1`. Append only.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: initial schema. Like the SQLite store, plus `seq` (insertion order, the tie-break
    // of listings) and `holder`. JSON lives in TEXT columns. `body_preview` is BYTEA holding
    // UTF-8: a preview of a binary body may contain NUL, which TEXT cannot store.
    "CREATE TABLE portcullis_approvals (
        id              TEXT PRIMARY KEY,
        seq             BIGSERIAL NOT NULL,
        mode            TEXT NOT NULL CHECK (mode IN ('hold', 'async')),
        agent           TEXT NOT NULL,
        owner           TEXT NOT NULL,
        route           TEXT NOT NULL,
        method          TEXT NOT NULL,
        path            TEXT NOT NULL,
        query           TEXT,
        body_sha256     TEXT NOT NULL,
        body_bytes      BIGINT NOT NULL,      -- u64 bit-cast to i64
        body_preview    BYTEA NOT NULL,
        headers         TEXT NOT NULL,        -- JSON [[name, value], ...]
        request_digest  TEXT NOT NULL,
        config_version  BIGINT NOT NULL,      -- u64 bit-cast to i64
        approvers       TEXT NOT NULL,        -- JSON [name, ...]
        quorum          BIGINT NOT NULL CHECK (quorum >= 1),
        created_at_ms   BIGINT NOT NULL,
        expires_at_ms   BIGINT NOT NULL,
        status          TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied',
                            'timed_out', 'abandoned', 'expired', 'used', 'cancelled')),
        decided_at_ms   BIGINT,
        decided_by      TEXT NOT NULL DEFAULT '[]',
        decision_reason TEXT,
        used_at_ms      BIGINT,
        body            BYTEA,
        holder          TEXT                  -- hold mode: the process holding the connection
    );
    CREATE TABLE portcullis_approval_votes (
        id          BIGSERIAL PRIMARY KEY,    -- insertion order = vote order
        approval_id TEXT NOT NULL REFERENCES portcullis_approvals (id) ON DELETE CASCADE,
        approver    TEXT NOT NULL,
        approve     BOOLEAN NOT NULL,
        reason      TEXT NOT NULL,
        at_ms       BIGINT NOT NULL,
        UNIQUE (approval_id, approver)        -- quorum counts distinct people
    );
    CREATE TABLE portcullis_replicas (
        holder      TEXT PRIMARY KEY,
        seen_at_ms  BIGINT NOT NULL
    );
    CREATE INDEX portcullis_approvals_by_status ON portcullis_approvals (status);
    CREATE INDEX portcullis_approvals_by_agent_digest
        ON portcullis_approvals (agent, request_digest);
    CREATE INDEX portcullis_approvals_by_agent_status ON portcullis_approvals (agent, status);
    CREATE INDEX portcullis_approvals_by_created ON portcullis_approvals (created_at_ms, seq);",
];

/// `SELECT` of whole approvals (alias `a`) with their votes as JSON text, in one statement so
/// that the row and its votes come from one snapshot.
macro_rules! select_approvals {
    () => {
        "SELECT a.id, a.mode, a.agent, a.owner, a.route, a.method, a.path, a.query,
             a.body_sha256, a.body_bytes, a.body_preview, a.headers, a.request_digest,
             a.config_version, a.approvers, a.quorum, a.created_at_ms, a.expires_at_ms, a.status,
             a.decided_at_ms, a.decided_by, a.decision_reason, a.used_at_ms,
             COALESCE((SELECT json_agg(json_build_array(v.approver, v.approve, v.reason, v.at_ms)
                                ORDER BY v.id)::text
                       FROM portcullis_approval_votes v WHERE v.approval_id = a.id), '[]') AS votes
         FROM portcullis_approvals a"
    };
}

/// Wraps an `UPDATE portcullis_approvals …` so that it notifies each changed id and returns
/// the ids: the notification is part of the same statement, hence of the same transaction.
macro_rules! notifying {
    ($update:expr) => {
        concat!(
            "WITH changed AS (",
            $update,
            " RETURNING id) SELECT id, pg_notify('portcullis_approvals', id) FROM changed"
        )
    };
}

/// Moves open approvals that are due to `expired` (`$1` now, `$2`/`$3` the reasons for pending
/// and approved ones): the one expiry rule of sweeps, votes and consumes, `expires_at_ms <= now`.
macro_rules! expire_sql {
    () => {
        "UPDATE portcullis_approvals SET status = 'expired',
             decided_at_ms = COALESCE(decided_at_ms, $1),
             decision_reason = COALESCE(decision_reason,
                 CASE status WHEN 'pending' THEN $2 ELSE $3 END)
         WHERE status IN ('pending', 'approved') AND expires_at_ms <= $1"
    };
}

/// Marks pending holds `abandoned` (`$1` now, `$2` reason) whose holder has not been seen
/// since `$4` (or never). Holds of this process's holder `$3` are abandoned only when `$5`: at
/// start-up they come from its previous life, later they are its own live connections.
const ABANDON_HOLDS: &str = notifying!(
    "UPDATE portcullis_approvals a SET status = 'abandoned',
         decided_at_ms = COALESCE(decided_at_ms, $1),
         decision_reason = COALESCE(decision_reason, $2)
     WHERE a.status = 'pending' AND a.mode = 'hold'
       AND CASE WHEN a.holder = $3 THEN $5
           ELSE NOT EXISTS (SELECT 1 FROM portcullis_replicas r
                            WHERE r.holder = a.holder AND r.seen_at_ms > $4) END"
);

type Tx = Transaction<'static, Postgres>;
type Res<T> = Result<T, Fail<StoreError>>;

fn bad_value<T>(what: &str, value: &str) -> Res<T> {
    Err(Fail::Db(format!(
        "unknown {what} {value:?} in the database"
    )))
}

/// u64 values (sizes, config versions that may be hashes) are bit-cast to BIGINT so every
/// value round-trips; nothing compares them in SQL.
fn u64_to_sql(v: u64) -> i64 {
    v as i64
}

fn u64_from_sql(v: i64) -> u64 {
    v as u64
}

/// Reads one row of [`select_approvals!`].
fn approval_from_row(row: &PgRow) -> Res<Approval> {
    let mode: String = row.try_get("mode")?;
    let Some(mode) = Mode::parse(&mode) else {
        return bad_value("mode", &mode);
    };
    let status: String = row.try_get("status")?;
    let Some(status) = Status::parse(&status) else {
        return bad_value("status", &status);
    };
    let preview: Vec<u8> = row.try_get("body_preview")?;
    let votes: Vec<(String, bool, String, i64)> =
        serde_json::from_str(&row.try_get::<String, _>("votes")?)?;
    Ok(Approval {
        id: row.try_get("id")?,
        mode,
        agent: row.try_get("agent")?,
        owner: row.try_get("owner")?,
        route: row.try_get("route")?,
        method: row.try_get("method")?,
        path: row.try_get("path")?,
        query: row.try_get("query")?,
        body_sha256: row.try_get("body_sha256")?,
        body_bytes: u64_from_sql(row.try_get("body_bytes")?),
        body_preview: String::from_utf8(preview)
            .map_err(|e| Fail::Db(format!("body_preview is not UTF-8: {e}")))?,
        headers: serde_json::from_str(&row.try_get::<String, _>("headers")?)?,
        request_digest: row.try_get("request_digest")?,
        config_version: u64_from_sql(row.try_get("config_version")?),
        approvers: serde_json::from_str(&row.try_get::<String, _>("approvers")?)?,
        quorum: u32::try_from(row.try_get::<i64, _>("quorum")?).unwrap_or(u32::MAX),
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        status,
        votes: votes
            .into_iter()
            .map(|(approver, approve, reason, at_ms)| Vote {
                approver,
                approve,
                reason,
                at_ms,
            })
            .collect(),
        decided_at_ms: row.try_get("decided_at_ms")?,
        decided_by: serde_json::from_str(&row.try_get::<String, _>("decided_by")?)?,
        decision_reason: row.try_get("decision_reason")?,
        used_at_ms: row.try_get("used_at_ms")?,
    })
}

/// The approval with its votes, or `NotFound`.
async fn load(tx: &mut Tx, id: &str) -> Res<Approval> {
    let row = sqlx::query(concat!(select_approvals!(), " WHERE a.id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    match row {
        Some(row) => approval_from_row(&row),
        None => Err(StoreError::NotFound.into()),
    }
}

/// Locks the approval's row until the transaction ends and returns its status and expiry;
/// `NotFound` for an unknown id. Everything that reads-then-writes an approval takes this lock
/// first, so concurrent callers (any process) run one after the other.
async fn lock_row(tx: &mut Tx, id: &str) -> Res<(Status, i64)> {
    let row = sqlx::query(
        "SELECT status, expires_at_ms FROM portcullis_approvals WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound.into());
    };
    let status: String = row.try_get(0)?;
    match Status::parse(&status) {
        Some(s) => Ok((s, row.try_get(1)?)),
        None => bad_value("status", &status),
    }
}

/// Marks one approval `Expired` (and notifies) if it is open and due.
async fn expire_one(tx: &mut Tx, id: &str, now_ms: i64) -> Res<()> {
    sqlx::query(notifying!(concat!(expire_sql!(), " AND id = $4")))
        .bind(now_ms)
        .bind(REASON_EXPIRED_PENDING)
        .bind(REASON_EXPIRED_APPROVED)
        .bind(id)
        .fetch_all(&mut **tx)
        .await?;
    Ok(())
}

async fn notify(tx: &mut Tx, id: &str) -> Res<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The body of [`ApprovalStore::consume`], also `transition(Approved, Used)`: under the row
/// lock, so at most once across every process.
async fn consume_in(pool: &PgPool, id: &str, now_ms: i64) -> Res<bool> {
    let mut tx = pool.begin().await?;
    let (status, expires_at_ms) = lock_row(&mut tx, id).await?;
    if status != Status::Approved {
        return Ok(false);
    }
    if now_ms >= expires_at_ms {
        expire_one(&mut tx, id, now_ms).await?;
        tx.commit().await?;
        return Ok(false);
    }
    sqlx::query("UPDATE portcullis_approvals SET status = 'used', used_at_ms = $2 WHERE id = $1")
        .bind(id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    notify(&mut tx, id).await?;
    tx.commit().await?;
    Ok(true)
}

/// Runs a [`notifying!`] statement binding `binds` in order (all `i64` or text) and returns the
/// changed ids.
async fn changed_ids(pool: &PgPool, sql: &'static str, binds: Vec<Bind>) -> Res<Vec<String>> {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = b.bind(q);
    }
    let rows = q.fetch_all(pool).await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("id").map_err(Fail::from))
        .collect()
}

/// A statement argument of [`changed_ids`] and [`PostgresApprovalStore::list`].
enum Bind {
    Int(i64),
    Text(String),
    Bool(bool),
}

impl Bind {
    fn bind(
        self,
        q: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
        match self {
            Bind::Int(v) => q.bind(v),
            Bind::Text(v) => q.bind(v),
            Bind::Bool(v) => q.bind(v),
        }
    }
}

/// Approval store in PostgreSQL, shared by replicas. See the module documentation.
pub struct PostgresApprovalStore {
    client: PgClient,
    holder: String,
}

impl fmt::Debug for PostgresApprovalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresApprovalStore")
            .field("db", &self.client.display())
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl PostgresApprovalStore {
    /// Connects, creates or migrates the schema, and registers `opts.holder` as alive (so
    /// that other replicas do not take its first holds for orphans before its first
    /// heartbeat).
    ///
    /// [`StoreError::Unavailable`] when the server cannot be reached within
    /// `connect_timeout + op_timeout`, the URL is invalid, or the schema is newer than this
    /// code.
    pub fn open(opts: &PgStoreOptions) -> Result<PostgresApprovalStore, StoreError> {
        let client = PgClient::open(opts, "pg-approvals", "approvals", MIGRATIONS)
            .map_err(StoreError::Unavailable)?;
        let store = PostgresApprovalStore {
            client,
            holder: opts.holder.clone(),
        };
        store.seen(super::now_ms())?;
        Ok(store)
    }

    /// The holder name hold approvals created here are tagged with.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Runs one operation; database failures become `Unavailable` naming the database.
    fn run<T, F, Fut>(&self, op: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(PgPool) -> Fut,
        Fut: Future<Output = Res<T>> + Send + 'static,
    {
        self.client.run(op, f).map_err(|e| match e {
            Fail::Answer(e) => e,
            Fail::Db(msg) => StoreError::Unavailable(format!("{} {msg}", self.client.display())),
        })
    }

    /// Records this holder as alive at `now_ms`.
    fn seen(&self, now_ms: i64) -> Result<(), StoreError> {
        let holder = self.holder.clone();
        self.run("heartbeat", move |pool| async move {
            sqlx::query(
                "INSERT INTO portcullis_replicas (holder, seen_at_ms) VALUES ($1, $2)
                 ON CONFLICT (holder) DO UPDATE SET seen_at_ms = EXCLUDED.seen_at_ms",
            )
            .bind(holder)
            .bind(now_ms)
            .execute(&pool)
            .await?;
            Ok(())
        })
    }

    /// The newest approval selected by `filter` (binding `$1` agent, `$2` digest, `$3` now).
    fn find_newest(
        &self,
        op: &str,
        sql: &'static str,
        agent: &str,
        digest: &str,
        now_ms: i64,
    ) -> Result<Option<Approval>, StoreError> {
        let (agent, digest) = (agent.to_owned(), digest.to_owned());
        self.run(op, move |pool| async move {
            let row = sqlx::query(sql)
                .bind(agent)
                .bind(digest)
                .bind(now_ms)
                .fetch_optional(&pool)
                .await?;
            row.as_ref().map(approval_from_row).transpose()
        })
    }
}

impl ApprovalStore for PostgresApprovalStore {
    fn create(&self, a: &NewApproval) -> Result<Approval, StoreError> {
        let a = a.clone();
        let holder = (a.mode == Mode::Hold).then(|| self.holder.clone());
        self.run("create", move |pool| async move {
            let headers = serde_json::to_string(&a.headers)?;
            let approvers = serde_json::to_string(&a.approvers)?;
            let mut tx = pool.begin().await?;
            if let Some(limit) = a.max_pending_for_agent {
                // Serialise capped creates of this agent until commit: under READ COMMITTED,
                // concurrent transactions would each count the same pending rows and all insert.
                sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .bind(PENDING_CAP_LOCK)
                    .bind(&a.agent)
                    .execute(&mut *tx)
                    .await?;
                let pending: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM portcullis_approvals WHERE agent = $1 AND status = 'pending'",
                )
                .bind(&a.agent)
                .fetch_one(&mut *tx)
                .await?;
                let pending = u64::try_from(pending).unwrap_or(0);
                if pending >= u64::from(limit) {
                    return Err(StoreError::TooManyPending { pending, limit }.into());
                }
            }
            sqlx::query(
                "INSERT INTO portcullis_approvals (id, mode, agent, owner, route, method, path,
                     query, body_sha256, body_bytes, body_preview, headers, request_digest,
                     config_version, approvers, quorum, created_at_ms, expires_at_ms, status,
                     body, holder)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                     $17, $18, 'pending', $19, $20)",
            )
            .bind(&a.id)
            .bind(a.mode.as_str())
            .bind(&a.agent)
            .bind(&a.owner)
            .bind(&a.route)
            .bind(&a.method)
            .bind(&a.path)
            .bind(&a.query)
            .bind(&a.body_sha256)
            .bind(u64_to_sql(a.body_bytes))
            .bind(a.body_preview.as_bytes())
            .bind(headers)
            .bind(&a.request_digest)
            .bind(u64_to_sql(a.config_version))
            .bind(approvers)
            // Quorum 0 would approve with no vote at all; fail closed to 1.
            .bind(i64::from(a.quorum.max(1)))
            .bind(a.created_at_ms)
            .bind(a.expires_at_ms)
            .bind(&a.body)
            .bind(holder)
            .execute(&mut *tx)
            .await?;
            // Read back so the caller sees exactly what is stored (e.g. the clamped quorum).
            let stored = load(&mut tx, &a.id).await?;
            tx.commit().await?;
            Ok(stored)
        })
    }

    fn get(&self, id: &str) -> Result<Approval, StoreError> {
        let id = id.to_owned();
        self.run("get", move |pool| async move {
            let row = sqlx::query(concat!(select_approvals!(), " WHERE a.id = $1"))
                .bind(id)
                .fetch_optional(&pool)
                .await?;
            match row {
                Some(row) => approval_from_row(&row),
                None => Err(StoreError::NotFound.into()),
            }
        })
    }

    fn list(&self, f: &ListFilter) -> Result<Vec<Approval>, StoreError> {
        // Only the conditions actually set go into the SQL, so the planner can use the indexes.
        let mut sql = String::from(concat!(select_approvals!(), " WHERE TRUE"));
        let mut args = Vec::new();
        let mut arg = |sql: &mut String, column: &str, value: Bind| {
            args.push(value);
            sql.push_str(&format!(" AND a.{column} = ${}", args.len()));
        };
        if let Some(status) = f.status {
            arg(&mut sql, "status", Bind::Text(status.as_str().to_owned()));
        }
        if let Some(agent) = &f.agent {
            arg(&mut sql, "agent", Bind::Text(agent.clone()));
        }
        if let Some(route) = &f.route {
            arg(&mut sql, "route", Bind::Text(route.clone()));
        }
        args.push(Bind::Int(
            i64::try_from(f.effective_limit()).unwrap_or(i64::MAX),
        ));
        // seq breaks ties between approvals created in the same millisecond: later insert first.
        sql.push_str(&format!(
            " ORDER BY a.created_at_ms DESC, a.seq DESC LIMIT ${}",
            args.len()
        ));
        self.run("list", move |pool| async move {
            let mut q = sqlx::query(&sql);
            for b in args {
                q = b.bind(q);
            }
            let rows = q.fetch_all(&pool).await?;
            rows.iter().map(approval_from_row).collect()
        })
    }

    fn vote(
        &self,
        id: &str,
        approver: &str,
        approve: bool,
        reason: &str,
        now_ms: i64,
    ) -> Result<Approval, StoreError> {
        let (id, approver, reason) = (id.to_owned(), approver.to_owned(), reason.to_owned());
        self.run("vote", move |pool| async move {
            let mut tx = pool.begin().await?;
            lock_row(&mut tx, &id).await?;
            // Read after taking the lock: a new statement sees every vote committed before.
            let current = load(&mut tx, &id).await?;
            let effect = match judge_vote(&current, &approver, approve, now_ms) {
                Err(StoreError::Expired) => {
                    // Commit the expiry even though the vote is refused, so the console stops
                    // offering an approval that can no longer be decided.
                    expire_one(&mut tx, &id, now_ms).await?;
                    tx.commit().await?;
                    return Err(StoreError::Expired.into());
                }
                other => other?,
            };
            sqlx::query(
                "INSERT INTO portcullis_approval_votes (approval_id, approver, approve, reason, at_ms)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&id)
            .bind(&approver)
            .bind(approve)
            .bind(&reason)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            match effect {
                VoteEffect::Recorded => {}
                VoteEffect::Denied => {
                    sqlx::query(
                        "UPDATE portcullis_approvals SET status = 'denied', decided_at_ms = $2,
                             decided_by = $3, decision_reason = $4
                         WHERE id = $1",
                    )
                    .bind(&id)
                    .bind(now_ms)
                    .bind(serde_json::to_string(&[&approver])?)
                    .bind(&reason)
                    .execute(&mut *tx)
                    .await?;
                }
                VoteEffect::Approved(approving) => {
                    sqlx::query(
                        "UPDATE portcullis_approvals SET status = 'approved', decided_at_ms = $2,
                             decided_by = $3
                         WHERE id = $1",
                    )
                    .bind(&id)
                    .bind(now_ms)
                    .bind(serde_json::to_string(&approving)?)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            // Also for a vote that does not decide: consoles on other replicas show votes.
            notify(&mut tx, &id).await?;
            let updated = load(&mut tx, &id).await?;
            tx.commit().await?;
            Ok(updated)
        })
    }

    fn find_open(
        &self,
        agent: &str,
        request_digest: &str,
        now_ms: i64,
    ) -> Result<Option<Approval>, StoreError> {
        self.find_newest(
            "find_open",
            concat!(
                select_approvals!(),
                " WHERE a.agent = $1 AND a.request_digest = $2
                   AND a.status IN ('pending', 'approved') AND a.expires_at_ms > $3
                 ORDER BY a.created_at_ms DESC, a.seq DESC LIMIT 1"
            ),
            agent,
            request_digest,
            now_ms,
        )
    }

    fn find_denied(
        &self,
        agent: &str,
        request_digest: &str,
        now_ms: i64,
    ) -> Result<Option<Approval>, StoreError> {
        self.find_newest(
            "find_denied",
            concat!(
                select_approvals!(),
                " WHERE a.agent = $1 AND a.request_digest = $2
                   AND a.status = 'denied' AND a.expires_at_ms > $3
                 ORDER BY a.created_at_ms DESC, a.seq DESC LIMIT 1"
            ),
            agent,
            request_digest,
            now_ms,
        )
    }

    fn consume(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.run("consume", move |pool| async move {
            consume_in(&pool, &id, now_ms).await
        })
    }

    fn transition(
        &self,
        id: &str,
        from: Status,
        to: Status,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        // Approved and Denied need votes (quorum, approver list); any edge outside the lifecycle
        // (e.g. reopening a used approval) is refused before touching the database.
        if matches!(to, Status::Approved | Status::Denied) || !from.can_transition_to(to) {
            return Ok(false);
        }
        let id = id.to_owned();
        self.run("transition", move |pool| async move {
            if to == Status::Used {
                return consume_in(&pool, &id, now_ms).await;
            }
            // One statement: the compare-and-set, the notification and the existence check.
            let row = sqlx::query(
                "WITH changed AS (
                     UPDATE portcullis_approvals SET status = $2,
                         decided_at_ms = COALESCE(decided_at_ms, $3),
                         decision_reason = COALESCE(decision_reason, $4)
                     WHERE id = $1 AND status = $5
                     RETURNING id)
                 SELECT (SELECT COUNT(*) FROM changed) AS changed,
                        (SELECT COUNT(pg_notify('portcullis_approvals', id)) FROM changed) AS notified,
                        EXISTS (SELECT 1 FROM portcullis_approvals WHERE id = $1) AS known",
            )
            .bind(&id)
            .bind(to.as_str())
            .bind(now_ms)
            .bind(automatic_reason(from, to))
            .bind(from.as_str())
            .fetch_one(&pool)
            .await?;
            let changed: i64 = row.try_get("changed")?;
            if changed == 0 && !row.try_get::<bool, _>("known")? {
                return Err(StoreError::NotFound.into());
            }
            Ok(changed == 1)
        })
    }

    fn expire_due(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        // Row locks make concurrent sweeps skip rows another one has just expired, so each id
        // is returned to exactly one caller.
        self.run("expire_due", move |pool| async move {
            changed_ids(
                &pool,
                notifying!(expire_sql!()),
                vec![
                    Bind::Int(now_ms),
                    Bind::Text(REASON_EXPIRED_PENDING.to_owned()),
                    Bind::Text(REASON_EXPIRED_APPROVED.to_owned()),
                ],
            )
            .await
        })
    }

    fn abandon_orphaned_holds(&self, now_ms: i64) -> Result<usize, StoreError> {
        // Holds of this holder come from its previous life (holders are unique per live
        // process); holds of holders that are stale or unknown have nobody waiting either. A
        // live replica's holds are left alone.
        let holder = self.holder.clone();
        let ids = self.run("abandon_orphaned_holds", move |pool| async move {
            changed_ids(
                &pool,
                ABANDON_HOLDS,
                vec![
                    Bind::Int(now_ms),
                    Bind::Text(REASON_RESTARTED.to_owned()),
                    Bind::Text(holder),
                    Bind::Int(now_ms - HOLDER_STALE_MS),
                    Bind::Bool(true),
                ],
            )
            .await
        })?;
        Ok(ids.len())
    }

    fn count_pending(&self) -> Result<u64, StoreError> {
        self.run("count_pending", |pool| async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM portcullis_approvals WHERE status = 'pending'",
            )
            .fetch_one(&pool)
            .await?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn body(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_owned();
        self.run("body", move |pool| async move {
            let row: Option<Option<Vec<u8>>> =
                sqlx::query_scalar("SELECT body FROM portcullis_approvals WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&pool)
                    .await?;
            row.ok_or(Fail::Answer(StoreError::NotFound))
        })
    }

    fn prune_final(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.run("prune_final", move |pool| async move {
            // Votes go with their approval (ON DELETE CASCADE). Not before `expires_at_ms`
            // either: until then an identical retry of a denied call is told the denial.
            let done = sqlx::query(
                "DELETE FROM portcullis_approvals
                 WHERE status NOT IN ('pending', 'approved')
                   AND COALESCE(used_at_ms, decided_at_ms, expires_at_ms) < $1
                   AND expires_at_ms < $1",
            )
            .bind(before_ms)
            .execute(&pool)
            .await?;
            Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
        })
    }

    fn cancel_agent(
        &self,
        agent: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let (agent, reason) = (agent.to_owned(), reason.to_owned());
        self.run("cancel_agent", move |pool| async move {
            changed_ids(
                &pool,
                notifying!(
                    "UPDATE portcullis_approvals SET status = 'cancelled', decided_at_ms = $2,
                         decision_reason = $3
                     WHERE agent = $1 AND status IN ('pending', 'approved')"
                ),
                vec![Bind::Text(agent), Bind::Int(now_ms), Bind::Text(reason)],
            )
            .await
        })
    }

    fn subscribe(&self, on_change: OnChange) -> Result<(), StoreError> {
        let pool = self.client.listener_pool();
        // The first LISTEN happens before returning, so nothing committed after `subscribe`
        // returns can be missed.
        let first = pool.clone();
        let listener = self.run(
            "subscribe",
            move |_| async move { Ok(listen(&first).await?) },
        )?;
        let display = self.client.display().to_owned();
        self.client
            .spawn(listen_loop(pool, listener, on_change, display));
        Ok(())
    }

    fn heartbeat(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        self.seen(now_ms)?;
        let holder = self.holder.clone();
        self.run("heartbeat", move |pool| async move {
            sqlx::query("DELETE FROM portcullis_replicas WHERE seen_at_ms < $1")
                .bind(now_ms - HOLDER_FORGET_MS)
                .execute(&pool)
                .await?;
            // Never this process's own holds: it is alive (it is running this).
            changed_ids(
                &pool,
                ABANDON_HOLDS,
                vec![
                    Bind::Int(now_ms),
                    Bind::Text(REASON_HOLDER_GONE.to_owned()),
                    Bind::Text(holder),
                    Bind::Int(now_ms - HOLDER_STALE_MS),
                    Bind::Bool(false),
                ],
            )
            .await
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", |pool| async move {
            sqlx::query("SELECT 1").execute(&pool).await?;
            Ok(())
        })
    }

    fn describe(&self) -> String {
        self.client.display().to_owned()
    }
}

/// A listener on [`CHANNEL`], connected through `pool`.
async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Delivers notifications until the store stops. When the connection is lost, re-listens
/// (backing off from 50 ms to 1 s) and then reports `None`: whatever was notified meanwhile is
/// gone, so waiters must re-check.
async fn listen_loop(pool: PgPool, mut listener: PgListener, on_change: OnChange, db: String) {
    loop {
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => on_change(Some(n.payload())),
                // The connection dropped and the listener has already re-listened on a new one.
                Ok(None) => on_change(None),
                Err(e) => {
                    tracing::warn!(db = %db, error = %e, "approval notifications interrupted; reconnecting");
                    break;
                }
            }
        }
        // The old listener may hold a broken connection; start over with a new one.
        drop(listener);
        let mut backoff = LISTEN_BACKOFF_MIN;
        listener = loop {
            tokio::time::sleep(backoff).await;
            match listen(&pool).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::debug!(db = %db, error = %e, "cannot listen for approval notifications yet");
                    backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
                }
            }
        };
        tracing::info!(db = %db, "approval notifications resumed");
        on_change(None);
    }
}

#[cfg(test)]
#[path = "../../tests/support/stores.rs"]
pub(crate) mod test_servers;

#[cfg(test)]
pub(crate) mod test_pg {
    //! One PostgreSQL server for every unit test of the crate that needs one (initdb is slow),
    //! and a fresh database per test.

    use super::test_servers::PgServer;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, Once, PoisonError};

    static SERVER: Mutex<Option<PgServer>> = Mutex::new(None);
    static STOP_AT_EXIT: Once = Once::new();

    /// Statics are never dropped: stop the server (and delete its directory) when the test
    /// process exits, instead of leaving a postgres running.
    extern "C" fn stop_server() {
        let server = SERVER.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(server);
    }

    /// The URL of a new, empty database named after `test` on the shared server.
    pub(crate) fn database(test: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let mut server = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
        let server = server.get_or_insert_with(|| {
            STOP_AT_EXIT.call_once(|| {
                // SAFETY: registers a plain function with no preconditions.
                unsafe { libc::atexit(stop_server) };
            });
            PgServer::start()
        });
        // PostgreSQL truncates names to 63 bytes; keep them short and unique.
        let short: String = test.chars().take(40).collect();
        let name = format!("t{}_{short}", N.fetch_add(1, Ordering::Relaxed));
        server.create_database(&name)
    }
}

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;

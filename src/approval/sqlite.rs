//! [`ApprovalStore`] on one local SQLite file.
//!
//! Why SQLite: approvals must survive restarts, the write rate is tiny (people vote), and an
//! embedded file needs no extra service that could be down. WAL mode lets the admin API read
//! while the proxy writes; `BEGIN IMMEDIATE` takes the write lock up front, so every
//! read-check-write (vote, consume, transition) is serialised even across processes sharing the
//! file (for example the `portcullis approvals` CLI next to a running gateway).
//!
//! Durability: `synchronous=NORMAL` in WAL mode survives a process crash; a power loss may drop
//! the last commits. That loses a vote or an approval, never grants one, so the gateway stays
//! fail closed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Value, ValueRef};
use rusqlite::{named_params, Connection, OptionalExtension, Row, ToSql, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::store::{
    automatic_reason, judge_vote, Approval, ApprovalStore, ListFilter, Mode, NewApproval, Status,
    StoreError, Vote, VoteEffect, REASON_EXPIRED_APPROVED, REASON_EXPIRED_PENDING,
    REASON_RESTARTED,
};

/// How long a writer waits for another connection's write lock before giving up. Long enough to
/// ride out a checkpoint or a concurrent CLI command, short enough that a held request is refused
/// rather than hanging when the file is wedged.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema version this code writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;

/// `MIGRATIONS[n]` upgrades a database from version `n` to `n + 1`. Append only: a released
/// migration is never edited, because databases in the field have already run it.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: initial schema.
    "CREATE TABLE approvals (
        id              TEXT PRIMARY KEY NOT NULL,
        mode            TEXT NOT NULL CHECK (mode IN ('hold', 'async')),
        agent           TEXT NOT NULL,
        owner           TEXT NOT NULL,
        route           TEXT NOT NULL,
        method          TEXT NOT NULL,
        path            TEXT NOT NULL,
        query           TEXT,
        body_sha256     TEXT NOT NULL,
        body_bytes      INTEGER NOT NULL,   -- u64 bit-cast to i64
        body_preview    TEXT NOT NULL,
        headers         TEXT NOT NULL,      -- JSON [[name, value], ...]
        request_digest  TEXT NOT NULL,
        config_version  INTEGER NOT NULL,   -- u64 bit-cast to i64
        approvers       TEXT NOT NULL,      -- JSON [name, ...]
        quorum          INTEGER NOT NULL CHECK (quorum >= 1),
        created_at_ms   INTEGER NOT NULL,
        expires_at_ms   INTEGER NOT NULL,
        status          TEXT NOT NULL CHECK (status IN
                            ('pending', 'approved', 'denied', 'timed_out', 'abandoned', 'expired', 'used')),
        decided_at_ms   INTEGER,
        decided_by      TEXT NOT NULL DEFAULT '[]',  -- JSON [name, ...]
        decision_reason TEXT,
        used_at_ms      INTEGER
    );
    CREATE TABLE votes (
        id          INTEGER PRIMARY KEY,            -- insertion order = vote order
        approval_id TEXT NOT NULL REFERENCES approvals(id) ON DELETE CASCADE,
        approver    TEXT NOT NULL,
        approve     INTEGER NOT NULL CHECK (approve IN (0, 1)),
        reason      TEXT NOT NULL,
        at_ms       INTEGER NOT NULL,
        UNIQUE (approval_id, approver)              -- quorum counts distinct people
    );
    CREATE INDEX approvals_by_status ON approvals (status);
    CREATE INDEX approvals_by_agent_digest ON approvals (agent, request_digest);",
    // 1 → 2: the whole body for approvers (NULL in rows written before), and an index for the
    // per-agent pending cap.
    "ALTER TABLE approvals ADD COLUMN body BLOB;
    CREATE INDEX approvals_by_agent_status ON approvals (agent, status);",
    // 2 → 3: status `cancelled` (a paused agent's open approvals). SQLite cannot change a CHECK
    // constraint in place, so both tables are rebuilt with the same columns and rows. Votes go
    // first, so dropping the old approvals cascades to nothing; renaming the new table updates
    // the new votes' foreign key.
    "CREATE TABLE approvals_v3 (
        id              TEXT PRIMARY KEY NOT NULL,
        mode            TEXT NOT NULL CHECK (mode IN ('hold', 'async')),
        agent           TEXT NOT NULL,
        owner           TEXT NOT NULL,
        route           TEXT NOT NULL,
        method          TEXT NOT NULL,
        path            TEXT NOT NULL,
        query           TEXT,
        body_sha256     TEXT NOT NULL,
        body_bytes      INTEGER NOT NULL,
        body_preview    TEXT NOT NULL,
        headers         TEXT NOT NULL,
        request_digest  TEXT NOT NULL,
        config_version  INTEGER NOT NULL,
        approvers       TEXT NOT NULL,
        quorum          INTEGER NOT NULL CHECK (quorum >= 1),
        created_at_ms   INTEGER NOT NULL,
        expires_at_ms   INTEGER NOT NULL,
        status          TEXT NOT NULL CHECK (status IN
                            ('pending', 'approved', 'denied', 'timed_out', 'abandoned', 'expired', 'used', 'cancelled')),
        decided_at_ms   INTEGER,
        decided_by      TEXT NOT NULL DEFAULT '[]',
        decision_reason TEXT,
        used_at_ms      INTEGER,
        body            BLOB
    );
    INSERT INTO approvals_v3 SELECT id, mode, agent, owner, route, method, path, query,
        body_sha256, body_bytes, body_preview, headers, request_digest, config_version, approvers,
        quorum, created_at_ms, expires_at_ms, status, decided_at_ms, decided_by, decision_reason,
        used_at_ms, body FROM approvals;
    CREATE TABLE votes_v3 (
        id          INTEGER PRIMARY KEY,
        approval_id TEXT NOT NULL REFERENCES approvals_v3(id) ON DELETE CASCADE,
        approver    TEXT NOT NULL,
        approve     INTEGER NOT NULL CHECK (approve IN (0, 1)),
        reason      TEXT NOT NULL,
        at_ms       INTEGER NOT NULL,
        UNIQUE (approval_id, approver)
    );
    INSERT INTO votes_v3 SELECT id, approval_id, approver, approve, reason, at_ms FROM votes;
    DROP TABLE votes;
    DROP TABLE approvals;
    ALTER TABLE approvals_v3 RENAME TO approvals;
    ALTER TABLE votes_v3 RENAME TO votes;
    CREATE INDEX approvals_by_status ON approvals (status);
    CREATE INDEX approvals_by_agent_digest ON approvals (agent, request_digest);
    CREATE INDEX approvals_by_agent_status ON approvals (agent, status);",
];

/// Columns of `approvals` in the order [`approval_from_row`] reads them (by name, so the order
/// only matters for readability).
macro_rules! approval_columns {
    () => {
        "id, mode, agent, owner, route, method, path, query, body_sha256, body_bytes, \
         body_preview, headers, request_digest, config_version, approvers, quorum, created_at_ms, \
         expires_at_ms, status, decided_at_ms, decided_by, decision_reason, used_at_ms"
    };
}

/// Moves open approvals that are due to `expired`. Shared by [`ApprovalStore::expire_due`] and
/// by the single-row expiry that votes and consumes trigger, so both use one expiry rule:
/// `expires_at_ms <= now` (the boundary instant is already expired, see [`Approval::is_expired`]).
macro_rules! expire_sql {
    () => {
        "UPDATE approvals SET status = 'expired',
             decided_at_ms = COALESCE(decided_at_ms, :now),
             decision_reason = COALESCE(decision_reason,
                 CASE status WHEN 'pending' THEN :pending_reason ELSE :approved_reason END)
         WHERE status IN ('pending', 'approved') AND expires_at_ms <= :now"
    };
}

/// Approval store on a local SQLite file. One connection behind a mutex: every call is a
/// short transaction, and the gateway calls them from `spawn_blocking`.
pub struct SqliteStore {
    /// Named in every error message so an operator knows which file to look at.
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Internal failure: either a definite answer for the caller, or a database problem that still
/// needs the path and the operation attached (done once, in [`SqliteStore::run`]).
enum Fail {
    Store(StoreError),
    Db(String),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Db(e.to_string())
    }
}

impl From<serde_json::Error> for Fail {
    fn from(e: serde_json::Error) -> Self {
        Fail::Db(format!("JSON encoding: {e}"))
    }
}

impl Fail {
    fn into_store(self, path: &Path, op: &str) -> StoreError {
        match self {
            Fail::Store(e) => e,
            Fail::Db(msg) => StoreError::Unavailable(format!("{} ({op}): {msg}", path.display())),
        }
    }
}

impl SqliteStore {
    /// The newest approval selected by `sql` (one of the constant queries above, binding
    /// `:agent`, `:digest`, `:now`), with its votes.
    fn find_newest(
        &self,
        op: &'static str,
        sql: &'static str,
        agent: &str,
        request_digest: &str,
        now_ms: i64,
    ) -> Result<Option<Approval>, StoreError> {
        self.run(op, |conn| {
            let tx = conn.transaction()?;
            let found = {
                let mut stmt = tx.prepare_cached(sql)?;
                stmt.query_row(
                    named_params! { ":agent": agent, ":digest": request_digest, ":now": now_ms },
                    approval_from_row,
                )
                .optional()?
            };
            let Some(mut a) = found else {
                return Ok(None);
            };
            a.votes = load_votes(&tx, &a.id)?;
            Ok(Some(a))
        })
    }

    /// Opens (creating on first start, with parent directories) the database at `path`, sets
    /// WAL journaling, `synchronous=NORMAL`, a 5 s busy timeout and foreign keys, and creates or
    /// migrates the schema in one transaction.
    ///
    /// Refuses with [`StoreError::Unavailable`] a file it cannot write, a file that is not an
    /// SQLite database, and a schema newer than this code knows.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!(
                    "{} (open): cannot create directory {}: {e}",
                    path.display(),
                    dir.display()
                ))
            })?;
        }
        let conn = Self::connect(path).map_err(|f| f.into_store(path, "open"))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// The database file this store writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(path: &Path) -> Result<Connection, Fail> {
        let mut conn = Connection::open(path)?;
        // SQLite silently falls back to read-only when the file is write-protected; a store that
        // cannot record decisions must not start.
        if conn.is_readonly(rusqlite::MAIN_DB)? {
            return Err(Fail::Db("database file is read-only".into()));
        }
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))?;
        // NORMAL is only crash-safe together with WAL; in rollback-journal mode it can corrupt
        // the file on power loss. So a file system without WAL support is refused, not tolerated.
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Fail::Db(format!(
                "cannot enable WAL journaling (journal_mode is {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        migrate(&mut conn)?;
        Ok(conn)
    }

    /// Locks the connection, runs `f`, and names the file and operation in any database error.
    fn run<T>(
        &self,
        op: &str,
        f: impl FnOnce(&mut Connection) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        // A poisoned lock only means another call panicked while holding it; its open
        // transaction was rolled back when it was dropped during unwinding, so the connection is
        // consistent. Refusing every later call would turn one bug into an outage.
        let mut conn: MutexGuard<'_, Connection> =
            self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut conn).map_err(|e| e.into_store(&self.path, op))
    }
}

/// Creates or upgrades the schema. `BEGIN IMMEDIATE` so that two processes starting at once
/// cannot both run the same migration.
fn migrate(conn: &mut Connection) -> Result<(), Fail> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = usize::try_from(version)
        .ok()
        .filter(|v| *v <= MIGRATIONS.len());
    let Some(from) = known else {
        return Err(Fail::Db(format!(
            "schema version {version} is not one this gateway knows (it writes {SCHEMA_VERSION}); \
             was the file written by a newer Portcullis?"
        )));
    };
    for step in &MIGRATIONS[from..] {
        tx.execute_batch(step)?;
    }
    if from < MIGRATIONS.len() {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

impl ToSql for Status {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Status {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Status::parse(text)
            .ok_or_else(|| FromSqlError::Other(format!("unknown status {text:?}").into()))
    }
}

impl ToSql for Mode {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Mode {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Mode::parse(text)
            .ok_or_else(|| FromSqlError::Other(format!("unknown mode {text:?}").into()))
    }
}

/// A column holding JSON text.
struct Json<T>(T);

impl<T: DeserializeOwned> FromSql for Json<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?)
            .map(Json)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<String, Fail> {
    Ok(serde_json::to_string(v)?)
}

/// u64 values (sizes, config versions that may be hashes) are bit-cast to SQLite's i64 so every
/// value round-trips; nothing compares them in SQL.
fn u64_to_sql(v: u64) -> i64 {
    v as i64
}

fn u64_from_sql(v: i64) -> u64 {
    v as u64
}

/// Reads one `approvals` row selected with [`approval_columns!`]; `votes` are left empty for
/// [`load_votes`] to fill.
fn approval_from_row(row: &Row<'_>) -> rusqlite::Result<Approval> {
    Ok(Approval {
        id: row.get("id")?,
        mode: row.get("mode")?,
        agent: row.get("agent")?,
        owner: row.get("owner")?,
        route: row.get("route")?,
        method: row.get("method")?,
        path: row.get("path")?,
        query: row.get("query")?,
        body_sha256: row.get("body_sha256")?,
        body_bytes: u64_from_sql(row.get("body_bytes")?),
        body_preview: row.get("body_preview")?,
        headers: row.get::<_, Json<_>>("headers")?.0,
        request_digest: row.get("request_digest")?,
        config_version: u64_from_sql(row.get("config_version")?),
        approvers: row.get::<_, Json<_>>("approvers")?.0,
        quorum: row.get("quorum")?,
        created_at_ms: row.get("created_at_ms")?,
        expires_at_ms: row.get("expires_at_ms")?,
        status: row.get("status")?,
        votes: Vec::new(),
        decided_at_ms: row.get("decided_at_ms")?,
        decided_by: row.get::<_, Json<_>>("decided_by")?.0,
        decision_reason: row.get("decision_reason")?,
        used_at_ms: row.get("used_at_ms")?,
    })
}

fn load_votes(conn: &Connection, id: &str) -> rusqlite::Result<Vec<Vote>> {
    let mut stmt = conn.prepare_cached(
        "SELECT approver, approve, reason, at_ms FROM votes WHERE approval_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok(Vote {
            approver: r.get(0)?,
            approve: r.get(1)?,
            reason: r.get(2)?,
            at_ms: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// The full approval with its votes, or `None` for an unknown id.
fn load(conn: &Connection, id: &str) -> rusqlite::Result<Option<Approval>> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        approval_columns!(),
        " FROM approvals WHERE id = ?1"
    ))?;
    let Some(mut a) = stmt.query_row([id], approval_from_row).optional()? else {
        return Ok(None);
    };
    a.votes = load_votes(conn, id)?;
    Ok(Some(a))
}

/// Loads an approval that the current transaction has just written or checked.
fn reload(conn: &Connection, id: &str) -> Result<Approval, Fail> {
    load(conn, id)?.ok_or(Fail::Store(StoreError::NotFound))
}

/// Marks one approval `Expired` if it is open and due.
fn expire_one(conn: &Connection, id: &str, now_ms: i64) -> rusqlite::Result<usize> {
    conn.execute(
        concat!(expire_sql!(), " AND id = :id"),
        named_params! {
            ":now": now_ms,
            ":pending_reason": REASON_EXPIRED_PENDING,
            ":approved_reason": REASON_EXPIRED_APPROVED,
            ":id": id,
        },
    )
}

/// The body of [`ApprovalStore::consume`], also used by `transition(Approved, Used)`; runs inside
/// the caller's `BEGIN IMMEDIATE` transaction, which is what makes it at most once.
fn consume_in(conn: &Connection, id: &str, now_ms: i64) -> Result<bool, Fail> {
    let row: Option<(Status, i64)> = conn
        .query_row(
            "SELECT status, expires_at_ms FROM approvals WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((status, expires_at_ms)) = row else {
        return Err(StoreError::NotFound.into());
    };
    if status != Status::Approved {
        return Ok(false);
    }
    if now_ms >= expires_at_ms {
        expire_one(conn, id, now_ms)?;
        return Ok(false);
    }
    let changed = conn.execute(
        "UPDATE approvals SET status = 'used', used_at_ms = ?2 WHERE id = ?1 AND status = 'approved'",
        rusqlite::params![id, now_ms],
    )?;
    Ok(changed == 1)
}

impl ApprovalStore for SqliteStore {
    fn create(&self, a: &NewApproval) -> Result<Approval, StoreError> {
        self.run("create", |conn| {
            let headers = to_json(&a.headers)?;
            let approvers = to_json(&a.approvers)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(limit) = a.max_pending_for_agent {
                // Inside the write transaction: concurrent creates cannot all see room.
                let pending: i64 = tx
                    .prepare_cached(
                        "SELECT COUNT(*) FROM approvals WHERE agent = ?1 AND status = 'pending'",
                    )?
                    .query_row([&a.agent], |r| r.get(0))?;
                let pending = u64::try_from(pending).unwrap_or(0);
                if pending >= u64::from(limit) {
                    return Err(StoreError::TooManyPending { pending, limit }.into());
                }
            }
            tx.execute(
                "INSERT INTO approvals (id, mode, agent, owner, route, method, path, query,
                     body_sha256, body_bytes, body_preview, headers, request_digest, config_version,
                     approvers, quorum, created_at_ms, expires_at_ms, status, body)
                 VALUES (:id, :mode, :agent, :owner, :route, :method, :path, :query,
                     :body_sha256, :body_bytes, :body_preview, :headers, :request_digest,
                     :config_version, :approvers, :quorum, :created_at_ms, :expires_at_ms, 'pending',
                     :body)",
                named_params! {
                    ":id": a.id,
                    ":mode": a.mode,
                    ":agent": a.agent,
                    ":owner": a.owner,
                    ":route": a.route,
                    ":method": a.method,
                    ":path": a.path,
                    ":query": a.query,
                    ":body_sha256": a.body_sha256,
                    ":body_bytes": u64_to_sql(a.body_bytes),
                    ":body_preview": a.body_preview,
                    ":headers": headers,
                    ":request_digest": a.request_digest,
                    ":config_version": u64_to_sql(a.config_version),
                    ":approvers": approvers,
                    // Quorum 0 would approve with no vote at all; fail closed to 1.
                    ":quorum": a.quorum.max(1),
                    ":created_at_ms": a.created_at_ms,
                    ":expires_at_ms": a.expires_at_ms,
                    ":body": a.body,
                },
            )?;
            // Read back so the caller sees exactly what is stored (e.g. the clamped quorum).
            let stored = reload(&tx, &a.id)?;
            tx.commit()?;
            Ok(stored)
        })
    }

    fn get(&self, id: &str) -> Result<Approval, StoreError> {
        self.run("get", |conn| {
            // A read transaction so the row and its votes come from one snapshot.
            let tx = conn.transaction()?;
            reload(&tx, id)
        })
    }

    fn list(&self, f: &ListFilter) -> Result<Vec<Approval>, StoreError> {
        self.run("list", |conn| {
            // Only the conditions actually set go into the SQL, so SQLite can use the indexes.
            let mut sql = String::from(concat!(
                "SELECT ",
                approval_columns!(),
                " FROM approvals WHERE 1 = 1"
            ));
            let mut args: Vec<Value> = Vec::new();
            if let Some(status) = f.status {
                sql.push_str(" AND status = ?");
                args.push(Value::Text(status.as_str().to_owned()));
            }
            if let Some(agent) = &f.agent {
                sql.push_str(" AND agent = ?");
                args.push(Value::Text(agent.clone()));
            }
            if let Some(route) = &f.route {
                sql.push_str(" AND route = ?");
                args.push(Value::Text(route.clone()));
            }
            // rowid breaks ties between approvals created in the same millisecond: later insert
            // first.
            sql.push_str(" ORDER BY created_at_ms DESC, rowid DESC LIMIT ?");
            args.push(Value::Integer(
                i64::try_from(f.effective_limit()).unwrap_or(i64::MAX),
            ));

            let tx = conn.transaction()?;
            let mut found = {
                let mut stmt = tx.prepare_cached(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(args), approval_from_row)?;
                rows.collect::<rusqlite::Result<Vec<Approval>>>()?
            };
            for a in &mut found {
                a.votes = load_votes(&tx, &a.id)?;
            }
            Ok(found)
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
        self.run("vote", |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = reload(&tx, id)?;
            let effect = match judge_vote(&current, approver, approve, now_ms) {
                Err(StoreError::Expired) => {
                    // Commit the expiry even though the vote is refused, so the console stops
                    // offering an approval that can no longer be decided.
                    expire_one(&tx, id, now_ms)?;
                    tx.commit()?;
                    return Err(StoreError::Expired.into());
                }
                other => other?,
            };
            tx.execute(
                "INSERT INTO votes (approval_id, approver, approve, reason, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![id, approver, approve, reason, now_ms],
            )?;
            match effect {
                VoteEffect::Recorded => {}
                VoteEffect::Denied => {
                    tx.execute(
                        "UPDATE approvals SET status = 'denied', decided_at_ms = ?2,
                             decided_by = ?3, decision_reason = ?4
                         WHERE id = ?1",
                        rusqlite::params![id, now_ms, to_json(&[approver])?, reason],
                    )?;
                }
                VoteEffect::Approved(approving) => {
                    tx.execute(
                        "UPDATE approvals SET status = 'approved', decided_at_ms = ?2,
                             decided_by = ?3
                         WHERE id = ?1",
                        rusqlite::params![id, now_ms, to_json(&approving)?],
                    )?;
                }
            }
            let updated = reload(&tx, id)?;
            tx.commit()?;
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
                "SELECT ",
                approval_columns!(),
                " FROM approvals
                 WHERE agent = :agent AND request_digest = :digest
                   AND status IN ('pending', 'approved') AND expires_at_ms > :now
                 ORDER BY created_at_ms DESC, rowid DESC LIMIT 1"
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
                "SELECT ",
                approval_columns!(),
                " FROM approvals
                 WHERE agent = :agent AND request_digest = :digest
                   AND status = 'denied' AND expires_at_ms > :now
                 ORDER BY created_at_ms DESC, rowid DESC LIMIT 1"
            ),
            agent,
            request_digest,
            now_ms,
        )
    }

    fn consume(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.run("consume", |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let consumed = consume_in(&tx, id, now_ms)?;
            tx.commit()?;
            Ok(consumed)
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
        self.run("transition", |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = if to == Status::Used {
                consume_in(&tx, id, now_ms)?
            } else {
                let changed = tx.execute(
                    "UPDATE approvals SET status = :to,
                         decided_at_ms = COALESCE(decided_at_ms, :now),
                         decision_reason = COALESCE(decision_reason, :reason)
                     WHERE id = :id AND status = :from",
                    named_params! {
                        ":to": to,
                        ":now": now_ms,
                        ":reason": automatic_reason(from, to),
                        ":id": id,
                        ":from": from,
                    },
                )?;
                if changed == 0 {
                    let exists = tx
                        .query_row("SELECT 1 FROM approvals WHERE id = ?1", [id], |_| Ok(()))
                        .optional()?;
                    if exists.is_none() {
                        return Err(StoreError::NotFound.into());
                    }
                }
                changed == 1
            };
            tx.commit()?;
            Ok(changed)
        })
    }

    fn expire_due(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        self.run("expire_due", |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ids = {
                let mut stmt = tx.prepare_cached(concat!(expire_sql!(), " RETURNING id"))?;
                let rows = stmt.query_map(
                    named_params! {
                        ":now": now_ms,
                        ":pending_reason": REASON_EXPIRED_PENDING,
                        ":approved_reason": REASON_EXPIRED_APPROVED,
                    },
                    |r| r.get::<_, String>(0),
                )?;
                rows.collect::<rusqlite::Result<Vec<String>>>()?
            };
            tx.commit()?;
            Ok(ids)
        })
    }

    fn abandon_orphaned_holds(&self, now_ms: i64) -> Result<usize, StoreError> {
        // One file belongs to one gateway process, so at start-up every pending hold is an
        // orphan. A shared multi-replica backend would have to scope this to its own replica.
        self.run("abandon_orphaned_holds", |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE approvals SET status = 'abandoned',
                     decided_at_ms = COALESCE(decided_at_ms, ?1),
                     decision_reason = COALESCE(decision_reason, ?2)
                 WHERE status = 'pending' AND mode = 'hold'",
                rusqlite::params![now_ms, REASON_RESTARTED],
            )?;
            tx.commit()?;
            Ok(n)
        })
    }

    fn count_pending(&self) -> Result<u64, StoreError> {
        self.run("count_pending", |conn| {
            let n: i64 = conn.query_row(
                "SELECT COUNT(*) FROM approvals WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn body(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run("body", |conn| {
            let row: Option<Option<Vec<u8>>> = conn
                .prepare_cached("SELECT body FROM approvals WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()?;
            row.ok_or(Fail::Store(StoreError::NotFound))
        })
    }

    fn prune_final(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.run("prune_final", |conn| {
            // Votes go with their approval (ON DELETE CASCADE, foreign_keys is on).
            // Not before `expires_at_ms` either: until then an identical retry of a denied
            // call is told the denial (find_denied) instead of asking the humans again.
            Ok(conn.execute(
                "DELETE FROM approvals
                 WHERE status NOT IN ('pending', 'approved')
                   AND COALESCE(used_at_ms, decided_at_ms, expires_at_ms) < ?1
                   AND expires_at_ms < ?1",
                [before_ms],
            )?)
        })
    }

    fn cancel_agent(
        &self,
        agent: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.run("cancel_agent", |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ids = {
                let mut q = tx.prepare(
                    "UPDATE approvals SET status = 'cancelled', decided_at_ms = ?2,
                         decision_reason = ?3
                     WHERE agent = ?1 AND status IN ('pending', 'approved')
                     RETURNING id",
                )?;
                let rows = q.query_map(rusqlite::params![agent, now_ms, reason], |r| r.get(0))?;
                rows.collect::<Result<Vec<String>, _>>()?
            };
            tx.commit()?;
            Ok(ids)
        })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::store::conformance::{
        approval_store_conformance, sample, status, with, Fixture, MINUTE, NOW,
    };
    use std::sync::Arc;

    fn temp_store() -> (tempfile::TempDir, PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("approvals.db");
        let store = SqliteStore::open(&path).expect("open store");
        (dir, path, store)
    }

    /// A fresh file; `reopen` opens it again with a connection of its own, as another process
    /// sharing the file (the CLI next to a gateway) would.
    fn fixture() -> Fixture {
        let (dir, path, store) = temp_store();
        Fixture::new(
            Arc::new(store),
            move || Arc::new(SqliteStore::open(&path).expect("reopen store")),
            dir,
        )
    }

    // Every behaviour the store interface promises, shared with the PostgreSQL store.
    approval_store_conformance!(fixture);

    #[test]
    fn pruned_approvals_take_their_votes_with_them() {
        let (_dir, _path, store) = temp_store();
        store
            .create(&with("old-denied", |a| a.expires_at_ms = NOW + MINUTE))
            .unwrap();
        store.vote("old-denied", "alice", false, "no", NOW).unwrap();
        assert_eq!(store.prune_final(NOW + 2 * MINUTE).unwrap(), 1);
        let votes: i64 = store
            .conn
            .lock()
            .unwrap()
            .query_row("SELECT COUNT(*) FROM votes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(votes, 0);
    }

    /// A version-2 file (before `cancelled` existed) is rebuilt without losing a row or a
    /// vote, and afterwards cancelling and cascading deletes work.
    #[test]
    fn schema_2_migrates_to_3_keeping_rows_and_votes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "foreign_keys", true).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            for (id, status) in [("p", "pending"), ("d", "denied")] {
                conn.execute(
                    "INSERT INTO approvals (id, mode, agent, owner, route, method, path, body_sha256,
                         body_bytes, body_preview, headers, request_digest, config_version, approvers,
                         quorum, created_at_ms, expires_at_ms, status, body)
                     VALUES (?1, 'async', 'billing-bot', 'o', 'r', 'POST', '/x', 'h', 3, 'abc', '[]',
                         'dg', 1, '[\"alice\",\"bob\"]', 2, ?2, ?3, ?4, x'616263')",
                    rusqlite::params![id, NOW, NOW + 10 * MINUTE, status],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO votes (approval_id, approver, approve, reason, at_ms) VALUES ('p', 'alice', 1, 'ok', ?1)",
                [NOW],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let p = store.get("p").unwrap();
        assert_eq!(p.status, Status::Pending);
        assert_eq!(p.votes.len(), 1);
        assert_eq!(p.votes[0].approver, "alice");
        assert_eq!(store.body("p").unwrap().as_deref(), Some(&b"abc"[..]));
        assert_eq!(store.get("d").unwrap().status, Status::Denied);
        let cancelled = store
            .cancel_agent("billing-bot", "agent paused by ops: test", NOW + 1)
            .unwrap();
        assert_eq!(cancelled, ["p"]);
        let p = store.get("p").unwrap();
        assert_eq!(p.status, Status::Cancelled);
        assert_eq!(
            p.decision_reason.as_deref(),
            Some("agent paused by ops: test")
        );
        assert!(store
            .cancel_agent("billing-bot", "again", NOW + 2)
            .unwrap()
            .is_empty());
        // Votes still cascade with their approval (the rebuilt foreign key points at the new table).
        assert_eq!(store.prune_final(NOW + 20 * MINUTE).unwrap(), 2);
        let conn = Connection::open(&path).unwrap();
        let votes: i64 = conn
            .query_row("SELECT COUNT(*) FROM votes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(votes, 0);
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    fn assert_unavailable(result: Result<impl fmt::Debug, StoreError>, path: &Path) {
        match result {
            Err(StoreError::Unavailable(msg)) => assert!(
                msg.contains(&path.display().to_string()),
                "message should name {}: {msg}",
                path.display()
            ),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn open_creates_dirs_wal_and_schema_version() {
        let (_dir, path, store) = temp_store();
        assert!(path.is_file());
        assert_eq!(store.path(), path);
        drop(store);
        let raw = Connection::open(&path).unwrap();
        let mode: String = raw
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let version: i64 = raw
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn every_status_fits_the_schema() {
        let (_dir, _path, store) = temp_store();
        store.create(&sample("s")).unwrap();
        for st in Status::ALL {
            store
                .run("test", |conn| {
                    conn.execute("UPDATE approvals SET status = ?1 WHERE id = 's'", [st])?;
                    Ok(())
                })
                .unwrap();
            assert_eq!(status(&store, "s"), st);
            assert_eq!(Status::parse(st.as_str()), Some(st));
            assert_eq!(
                serde_json::to_string(&st).unwrap(),
                format!("\"{}\"", st.as_str())
            );
        }
    }

    #[test]
    fn open_under_a_regular_file_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let path = file.join("approvals.db");
        assert_unavailable(SqliteStore::open(&path), &path);
    }

    #[test]
    fn open_of_a_directory_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("approvals.db");
        std::fs::create_dir(&path).unwrap();
        assert_unavailable(SqliteStore::open(&path), &path);
    }

    #[test]
    fn open_in_a_read_only_directory_is_unavailable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        // Root ignores permissions; there is nothing to test then.
        if std::fs::write(ro.join("probe"), b"").is_ok() {
            eprintln!("skipped: directory permissions are not enforced (running as root?)");
            return;
        }
        let path = ro.join("approvals.db");
        assert_unavailable(SqliteStore::open(&path), &path);
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn open_of_a_read_only_file_is_unavailable() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, path, store) = temp_store();
        drop(store);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        // Root ignores permissions; there is nothing to test then.
        if std::fs::OpenOptions::new().append(true).open(&path).is_ok() {
            eprintln!("skipped: file permissions are not enforced (running as root?)");
            return;
        }
        // SQLite would silently open it read-only; the store must refuse instead.
        assert_unavailable(SqliteStore::open(&path), &path);
    }

    #[test]
    fn open_of_a_non_database_file_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("approvals.db");
        std::fs::write(&path, vec![b'#'; 4096]).unwrap();
        assert_unavailable(SqliteStore::open(&path), &path);
    }

    #[test]
    fn open_of_a_newer_schema_is_unavailable() {
        let (_dir, path, store) = temp_store();
        drop(store);
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        match SqliteStore::open(&path) {
            Err(StoreError::Unavailable(msg)) => assert!(msg.contains("newer"), "{msg}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    /// A store written by the previous schema (no `body` column) is upgraded in place: its
    /// approvals stay readable and usable, and report that no whole body was kept.
    #[test]
    fn a_version_1_store_is_migrated_and_keeps_its_approvals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO approvals (id, mode, agent, owner, route, method, path, query,
                     body_sha256, body_bytes, body_preview, headers, request_digest, config_version,
                     approvers, quorum, created_at_ms, expires_at_ms, status)
                 VALUES ('old', 'async', 'bot', 'o', 'r', 'POST', '/p', NULL, 'ab', 2, '{}', '[]',
                     'd', 1, '[]', 1, ?1, ?2, 'pending')",
                [NOW, NOW + MINUTE],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get("old").unwrap().status, Status::Pending);
        assert_eq!(store.body("old").unwrap(), None);
        let approved = store.vote("old", "alice", true, "ok", NOW).unwrap();
        assert_eq!(approved.status, Status::Approved);
        store.create(&sample("new")).unwrap();
        assert!(store.body("new").unwrap().is_some());
        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    /// Another writer holds the lock past the busy timeout: writes fail as Unavailable (the
    /// caller refuses the call) while reads still work thanks to WAL.
    #[test]
    fn locked_database_makes_writes_unavailable() {
        let (_dir, path, store) = temp_store();
        store.create(&sample("l")).unwrap();
        store
            .run("test", |conn| {
                conn.busy_timeout(Duration::from_millis(50))?;
                Ok(())
            })
            .unwrap();
        let mut other = Connection::open(&path).unwrap();
        let tx = other
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .unwrap();
        tx.execute("UPDATE approvals SET owner = owner", [])
            .unwrap();

        assert_unavailable(store.vote("l", "alice", true, "", NOW), &path);
        assert_unavailable(store.consume("l", NOW), &path);
        assert_unavailable(store.create(&sample("m")), &path);
        assert_eq!(status(&store, "l"), Status::Pending);

        drop(tx);
        assert_eq!(
            store.vote("l", "alice", true, "", NOW).unwrap().status,
            Status::Approved
        );
    }
}

//! The store of runtime agent state (see [`crate::policy::agent_state`]): pauses, token
//! revocations, step-ups and throttles, their audit trail, and the monitoring baselines.
//!
//! Reads are lock-free: the proxy loads one immutable [`AgentStates`] per request from an
//! `ArcSwap`. Writes are rare (an operator, a playbook): each one is persisted in SQLite and
//! audited in one transaction, then a new [`AgentStates`] is swapped in.
//!
//! **Failing safe, both ways.** A change that restricts an agent (pause, revoke, step-up,
//! throttle) takes effect in memory even when the database cannot be written — the kill switch
//! must work on a full disk — and the caller is told it was not persisted. A change that
//! loosens (resume, lifting a step-up or throttle) is applied only once it is persisted, so a
//! restart can never bring back a state the operator did not see.
//!
//! Replicas share this state through PostgreSQL ([`super::pg_agent_state`]); both stores use
//! the same transition rules (`next_row`).

use crate::policy::agent_state::{AgentRuntime, AgentStates, RevokedToken, Stamp, Throttle, Until};
use crate::util::lock;
use arc_swap::ArcSwap;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a change could not be made or kept.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be read or written.
    #[error("agent state store {path}: {message}")]
    Store {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// A restricting change took effect but could not be persisted: it will not survive a
    /// restart.
    #[error("applied, but not persisted (it will not survive a restart): {0}")]
    NotPersisted(Box<StateError>),
    /// Nothing to undo (e.g. resuming an agent that is not paused).
    #[error("{0}")]
    Nothing(String),
}

/// One change of an agent's runtime state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Refuse every call of the agent until resumed.
    Pause {
        /// The agent.
        agent: String,
    },
    /// Undo a pause.
    Resume {
        /// The agent.
        agent: String,
    },
    /// Refuse one token id until `expires_at_ms`.
    RevokeToken {
        /// The token id.
        jti: String,
        /// Its agent, when known.
        agent: Option<String>,
        /// Keep the revocation until then (the token cannot be valid later).
        expires_at_ms: i64,
    },
    /// Refuse every token of the agent issued at or before `before` (seconds).
    RevokeAgentTokens {
        /// The agent.
        agent: String,
        /// Unix seconds.
        before: u64,
    },
    /// The agent's writes need approval until `until_ms`.
    StepUp {
        /// The agent.
        agent: String,
        /// Unix ms.
        until_ms: i64,
    },
    /// Throttle the agent until `until_ms`.
    Throttle {
        /// The agent.
        agent: String,
        /// Requests per period.
        requests: u32,
        /// The period.
        per: Duration,
        /// Unix ms.
        until_ms: i64,
    },
    /// Lift a step-up and a throttle.
    Lift {
        /// The agent.
        agent: String,
    },
}

impl Change {
    /// The audit action name: `pause`, `resume`, `revoke_token`, `revoke_agent_tokens`,
    /// `step_up`, `throttle`, `lift`.
    pub fn action(&self) -> &'static str {
        match self {
            Change::Pause { .. } => "pause",
            Change::Resume { .. } => "resume",
            Change::RevokeToken { .. } => "revoke_token",
            Change::RevokeAgentTokens { .. } => "revoke_agent_tokens",
            Change::StepUp { .. } => "step_up",
            Change::Throttle { .. } => "throttle",
            Change::Lift { .. } => "lift",
        }
    }

    /// The agent it is about, when it names one.
    pub fn agent(&self) -> Option<&str> {
        match self {
            Change::Pause { agent }
            | Change::Resume { agent }
            | Change::RevokeAgentTokens { agent, .. }
            | Change::StepUp { agent, .. }
            | Change::Throttle { agent, .. }
            | Change::Lift { agent } => Some(agent),
            Change::RevokeToken { agent, .. } => agent.as_deref(),
        }
    }

    /// Does it loosen what an agent may do (then it is applied only once persisted)?
    pub(crate) fn loosens(&self) -> bool {
        matches!(self, Change::Resume { .. } | Change::Lift { .. })
    }

    /// The numbers of the change, for the audit trail.
    pub(crate) fn detail(&self) -> Value {
        match self {
            Change::Pause { .. } | Change::Resume { .. } | Change::Lift { .. } => {
                serde_json::json!({})
            }
            Change::RevokeToken {
                jti, expires_at_ms, ..
            } => serde_json::json!({"jti": jti, "expires_at_ms": expires_at_ms}),
            Change::RevokeAgentTokens { before, .. } => {
                serde_json::json!({"issued_before": before})
            }
            Change::StepUp { until_ms, .. } => serde_json::json!({"until_ms": until_ms}),
            Change::Throttle {
                requests,
                per,
                until_ms,
                ..
            } => {
                serde_json::json!({"requests": requests, "per_ms": per.as_millis() as u64, "until_ms": until_ms})
            }
        }
    }
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Row id (increasing).
    pub id: i64,
    /// When, Unix ms.
    pub at_ms: i64,
    /// The agent, when the change names one.
    pub agent: Option<String>,
    /// [`Change::action`].
    pub action: String,
    /// Who.
    pub by: String,
    /// Why.
    pub reason: String,
    /// Numbers of the change (times, jti, rate).
    pub detail: Value,
}

/// Where runtime agent state is kept. The policies only see [`AgentStates`]; a shared store
/// (several gateways) implements the same trait.
pub trait AgentStateStore: Send + Sync {
    /// The state in force (cheap: an `Arc` clone).
    fn current(&self) -> Arc<AgentStates>;
    /// Make a change, audited as done by `by` for `reason` at `now_ms`.
    fn apply(
        &self,
        change: &Change,
        by: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<AuditEntry, StateError>;
    /// The newest audit entries (of one agent, or all), newest first.
    fn audit(&self, agent: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, StateError>;
    /// Forget what has ended: expired step-ups, throttles and token revocations.
    fn prune(&self, now_ms: i64) -> Result<(), StateError>;
    /// Save an opaque document (monitoring baselines) under `key`.
    fn save_blob(&self, key: &str, value: &Value, now_ms: i64) -> Result<(), StateError>;
    /// The document saved under `key`.
    fn load_blob(&self, key: &str) -> Result<Option<Value>, StateError>;
}

/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// `MIGRATIONS[n]` upgrades from version `n` to `n + 1`; append only.
const MIGRATIONS: &[&str] = &["CREATE TABLE agent_state (
        agent          TEXT PRIMARY KEY NOT NULL,
        state          TEXT NOT NULL,            -- JSON AgentRuntime
        updated_at_ms  INTEGER NOT NULL
    );
    CREATE TABLE revoked_tokens (
        jti            TEXT PRIMARY KEY NOT NULL,
        agent          TEXT,
        expires_at_ms  INTEGER NOT NULL,
        stamp          TEXT NOT NULL             -- JSON Stamp
    );
    CREATE TABLE audit (
        id      INTEGER PRIMARY KEY,
        at_ms   INTEGER NOT NULL,
        agent   TEXT,
        action  TEXT NOT NULL,
        by      TEXT NOT NULL,
        reason  TEXT NOT NULL,
        detail  TEXT NOT NULL
    );
    CREATE INDEX audit_by_agent ON audit (agent, id);
    CREATE TABLE blobs (
        key            TEXT PRIMARY KEY NOT NULL,
        value          TEXT NOT NULL,
        updated_at_ms  INTEGER NOT NULL
    );"];

/// Runtime agent state in one SQLite file.
pub struct SqliteAgentState {
    path: PathBuf,
    conn: Mutex<Connection>,
    states: ArcSwap<AgentStates>,
}

impl SqliteAgentState {
    /// Open (creating it and its directory on first start) the file at `path`, and load the
    /// state it holds.
    pub fn open(path: &Path) -> Result<SqliteAgentState, StateError> {
        let err = |e: &dyn std::fmt::Display| StateError::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| err(&e))?;
        Self::with_connection(conn, path).map_err(|e| err(&e))
    }

    /// A store in memory only (tests).
    pub fn in_memory() -> SqliteAgentState {
        let conn = Connection::open_in_memory().expect("sqlite in memory");
        Self::with_connection(conn, Path::new(":memory:")).expect("schema in memory")
    }

    fn with_connection(mut conn: Connection, path: &Path) -> Result<SqliteAgentState, String> {
        if conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(|e| e.to_string())?
        {
            return Err("database file is read-only".into());
        }
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        if path != Path::new(":memory:") {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
                .map_err(|e| e.to_string())?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(format!(
                    "cannot enable WAL journaling (journal_mode is {mode})"
                ));
            }
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| e.to_string())?;
        }
        migrate(&mut conn)?;
        let states = load(&conn).map_err(|e| e.to_string())?;
        Ok(SqliteAgentState {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            states: ArcSwap::from_pointee(states),
        })
    }

    fn store_err(&self, e: impl std::fmt::Display) -> StateError {
        StateError::Store {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let Some(from) = usize::try_from(version)
        .ok()
        .filter(|v| *v <= MIGRATIONS.len())
    else {
        return Err(format!(
            "schema version {version} is not one this gateway knows (it writes {SCHEMA_VERSION}); was the file written by a newer Portcullis?"
        ));
    };
    for step in &MIGRATIONS[from..] {
        tx.execute_batch(step).map_err(|e| e.to_string())?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

fn load(conn: &Connection) -> Result<AgentStates, String> {
    let mut out = AgentStates::default();
    let mut q = conn
        .prepare("SELECT agent, state FROM agent_state")
        .map_err(|e| e.to_string())?;
    let rows = q
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(|e| e.to_string())?;
    for row in rows {
        let (agent, json) = row.map_err(|e| e.to_string())?;
        let rt = parse_runtime(&agent, &json)?;
        out.agents.insert(agent, rt);
    }
    let mut q = conn
        .prepare("SELECT jti, agent, expires_at_ms, stamp FROM revoked_tokens")
        .map_err(|e| e.to_string())?;
    let rows = q
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(|e| e.to_string())?;
    for row in rows {
        let (jti, agent, expires_at_ms, stamp) = row.map_err(|e| e.to_string())?;
        let stamp = parse_stamp(&jti, &stamp)?;
        out.revoked_jtis.insert(
            jti,
            RevokedToken {
                agent,
                expires_at_ms,
                stamp,
            },
        );
    }
    Ok(out)
}

/// A stored agent runtime (JSON). A row this code cannot read is an error, not an empty
/// state: silently dropping a pause would un-pause the agent.
pub(crate) fn parse_runtime(agent: &str, json: &str) -> Result<AgentRuntime, String> {
    serde_json::from_str(json)
        .map_err(|e| format!("agent_state row of `{agent}` is unreadable: {e}"))
}

/// The stored stamp (JSON) of a revoked token.
pub(crate) fn parse_stamp(jti: &str, json: &str) -> Result<Stamp, String> {
    serde_json::from_str(json).map_err(|e| format!("revoked token `{jti}` is unreadable: {e}"))
}

/// The one row a [`Change`] writes, as it is after the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Row {
    /// An agent's runtime state; `None` when nothing is left (the row is deleted).
    Agent {
        /// The agent.
        agent: String,
        /// Its state after the change.
        runtime: Option<AgentRuntime>,
    },
    /// A revoked token id (revocations are upserts: the latest one wins).
    Token {
        /// The token id.
        jti: String,
        /// The revocation.
        revoked: RevokedToken,
    },
}

impl Row {
    /// Puts the row into `states`.
    pub(crate) fn apply_to(self, states: &mut AgentStates) {
        match self {
            Row::Agent {
                agent,
                runtime: Some(rt),
            } => {
                states.agents.insert(agent, rt);
            }
            Row::Agent {
                agent,
                runtime: None,
            } => {
                states.agents.remove(&agent);
            }
            Row::Token { jti, revoked } => {
                states.revoked_jtis.insert(jti, revoked);
            }
        }
    }
}

/// The transition rules, in one place for every store: the row `change` writes, given the
/// agent's runtime state `current` before it (from a cache, or read under a row lock by a
/// store shared with other processes; token revocations ignore it). `Err(Nothing)` when a
/// loosening change has nothing to undo.
pub(crate) fn next_row(
    current: Option<&AgentRuntime>,
    change: &Change,
    stamp: &Stamp,
) -> Result<Row, StateError> {
    let mut rt = current.cloned().unwrap_or_default();
    let agent = match change {
        Change::RevokeToken {
            jti,
            agent,
            expires_at_ms,
        } => {
            return Ok(Row::Token {
                jti: jti.clone(),
                revoked: RevokedToken {
                    agent: agent.clone(),
                    expires_at_ms: *expires_at_ms,
                    stamp: stamp.clone(),
                },
            });
        }
        Change::Pause { agent } => {
            rt.paused = Some(stamp.clone());
            agent
        }
        Change::Resume { agent } => {
            if rt.paused.take().is_none() {
                return Err(StateError::Nothing(format!(
                    "agent `{agent}` is not paused"
                )));
            }
            agent
        }
        Change::RevokeAgentTokens { agent, before } => {
            // A later cut-off covers an earlier one; never move it back.
            let keep = rt
                .revoked_before
                .as_ref()
                .is_some_and(|(b, _)| *b >= *before);
            if !keep {
                rt.revoked_before = Some((*before, stamp.clone()));
            }
            agent
        }
        Change::StepUp { agent, until_ms } => {
            // Extending is fine; a shorter step-up never shortens one in force.
            let until_ms = rt
                .step_up
                .as_ref()
                .map_or(*until_ms, |u| u.until_ms.max(*until_ms));
            rt.step_up = Some(Until {
                until_ms,
                stamp: stamp.clone(),
            });
            agent
        }
        Change::Throttle {
            agent,
            requests,
            per,
            until_ms,
        } => {
            rt.throttle = Some(Throttle {
                requests: *requests,
                per_ms: per.as_millis().min(u64::MAX as u128) as u64,
                until: Until {
                    until_ms: *until_ms,
                    stamp: stamp.clone(),
                },
            });
            agent
        }
        Change::Lift { agent } => {
            if rt.step_up.take().is_none() & rt.throttle.take().is_none() {
                return Err(StateError::Nothing(format!(
                    "agent `{agent}` has no step-up or throttle to lift"
                )));
            }
            agent
        }
    };
    Ok(Row::Agent {
        agent: agent.clone(),
        runtime: (!rt.is_clear()).then_some(rt),
    })
}

/// `states` with `change` applied, and the row it writes. `Err` when there is nothing to undo.
fn changed(
    states: &AgentStates,
    change: &Change,
    stamp: &Stamp,
) -> Result<(AgentStates, Row), StateError> {
    let row = next_row(
        change.agent().and_then(|a| states.agents.get(a)),
        change,
        stamp,
    )?;
    let mut next = states.clone();
    row.clone().apply_to(&mut next);
    Ok((next, row))
}

/// Drops the step-up and throttle of `rt` that have ended at `now_ms`; whether anything did.
pub(crate) fn prune_runtime(rt: &mut AgentRuntime, now_ms: i64) -> bool {
    let before = rt.clone();
    if rt.step_up.as_ref().is_some_and(|u| u.until_ms <= now_ms) {
        rt.step_up = None;
    }
    if rt
        .throttle
        .as_ref()
        .is_some_and(|t| t.until.until_ms <= now_ms)
    {
        rt.throttle = None;
    }
    *rt != before
}

/// `states` without what has ended at `now_ms` (token revocations, step-ups, throttles), and
/// the agents whose state changed.
pub(crate) fn pruned(states: &AgentStates, now_ms: i64) -> (AgentStates, Vec<String>) {
    let mut next = states.clone();
    next.revoked_jtis.retain(|_, r| r.expires_at_ms > now_ms);
    let mut ended = Vec::new();
    for (agent, rt) in next.agents.iter_mut() {
        if prune_runtime(rt, now_ms) {
            ended.push(agent.clone());
        }
    }
    next.agents.retain(|_, rt| !rt.is_clear());
    (next, ended)
}

impl SqliteAgentState {
    /// Write the row `change` produced and its audit line in one transaction.
    fn persist(
        &self,
        conn: &mut Connection,
        change: &Change,
        row: &Row,
        stamp: &Stamp,
    ) -> Result<i64, StateError> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.store_err(e))?;
        match row {
            Row::Token { jti, revoked } => {
                let stamp_json = serde_json::to_string(&revoked.stamp).expect("stamp serializes");
                tx.execute(
                    "INSERT INTO revoked_tokens (jti, agent, expires_at_ms, stamp) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (jti) DO UPDATE SET agent = excluded.agent,
                         expires_at_ms = excluded.expires_at_ms, stamp = excluded.stamp",
                    params![jti, revoked.agent, revoked.expires_at_ms, stamp_json],
                )
                .map_err(|e| self.store_err(e))?;
            }
            Row::Agent {
                agent,
                runtime: Some(rt),
            } => {
                let json = serde_json::to_string(rt).expect("state serializes");
                tx.execute(
                    "INSERT INTO agent_state (agent, state, updated_at_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (agent) DO UPDATE SET state = excluded.state,
                         updated_at_ms = excluded.updated_at_ms",
                    params![agent, json, stamp.at_ms],
                )
                .map_err(|e| self.store_err(e))?;
            }
            Row::Agent {
                agent,
                runtime: None,
            } => {
                tx.execute("DELETE FROM agent_state WHERE agent = ?1", [agent])
                    .map_err(|e| self.store_err(e))?;
            }
        }
        tx.execute(
            "INSERT INTO audit (at_ms, agent, action, by, reason, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                stamp.at_ms,
                change.agent(),
                change.action(),
                stamp.by,
                stamp.reason,
                change.detail().to_string()
            ],
        )
        .map_err(|e| self.store_err(e))?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(|e| self.store_err(e))?;
        Ok(id)
    }
}

impl AgentStateStore for SqliteAgentState {
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
        // One writer at a time: read-modify-swap must not lose a concurrent change.
        let mut conn = lock(&self.conn);
        let (next, row) = changed(&self.states.load(), change, &stamp)?;
        let entry = |id| AuditEntry {
            id,
            at_ms: now_ms,
            agent: change.agent().map(str::to_string),
            action: change.action().to_string(),
            by: stamp.by.clone(),
            reason: stamp.reason.clone(),
            detail: change.detail(),
        };
        if change.loosens() {
            let id = self.persist(&mut conn, change, &row, &stamp)?;
            self.states.store(Arc::new(next));
            Ok(entry(id))
        } else {
            self.states.store(Arc::new(next));
            match self.persist(&mut conn, change, &row, &stamp) {
                Ok(id) => Ok(entry(id)),
                Err(e) => Err(StateError::NotPersisted(Box::new(e))),
            }
        }
    }

    fn audit(&self, agent: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, StateError> {
        let conn = lock(&self.conn);
        let mut q = conn
            .prepare(
                "SELECT id, at_ms, agent, action, by, reason, detail FROM audit
                 WHERE ?1 IS NULL OR agent = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| self.store_err(e))?;
        let rows = q
            .query_map(params![agent, limit as i64], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    agent: r.get(2)?,
                    action: r.get(3)?,
                    by: r.get(4)?,
                    reason: r.get(5)?,
                    detail: serde_json::from_str(&r.get::<_, String>(6)?).unwrap_or(Value::Null),
                })
            })
            .map_err(|e| self.store_err(e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.store_err(e))
    }

    fn prune(&self, now_ms: i64) -> Result<(), StateError> {
        let mut conn = lock(&self.conn);
        let cur = self.states.load_full();
        let (next, ended) = pruned(&cur, now_ms);
        if next == *cur {
            return Ok(());
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.store_err(e))?;
        tx.execute(
            "DELETE FROM revoked_tokens WHERE expires_at_ms <= ?1",
            [now_ms],
        )
        .map_err(|e| self.store_err(e))?;
        for agent in &ended {
            match next.agents.get(agent) {
                Some(rt) => tx.execute(
                    "UPDATE agent_state SET state = ?2, updated_at_ms = ?3 WHERE agent = ?1",
                    params![
                        agent,
                        serde_json::to_string(rt).expect("serializes"),
                        now_ms
                    ],
                ),
                None => tx.execute("DELETE FROM agent_state WHERE agent = ?1", [agent]),
            }
            .map_err(|e| self.store_err(e))?;
        }
        tx.commit().map_err(|e| self.store_err(e))?;
        self.states.store(Arc::new(next));
        Ok(())
    }

    fn save_blob(&self, key: &str, value: &Value, now_ms: i64) -> Result<(), StateError> {
        let conn = lock(&self.conn);
        conn.execute(
            "INSERT INTO blobs (key, value, updated_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at_ms = excluded.updated_at_ms",
            params![key, value.to_string(), now_ms],
        )
        .map_err(|e| self.store_err(e))?;
        Ok(())
    }

    fn load_blob(&self, key: &str) -> Result<Option<Value>, StateError> {
        let conn = lock(&self.conn);
        let text: Option<String> = conn
            .query_row("SELECT value FROM blobs WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.store_err(e))?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| self.store_err(e)))
            .transpose()
    }
}

#[cfg(test)]
#[path = "agent_state_tests.rs"]
pub(crate) mod tests;

//! `state.backend: shared`: what replicas of one deployment share, and how each keeps its copy
//! current.
//!
//! # Where each piece lives, and why
//!
//! - **Approvals** and the **durable record of agent state** (pauses, revocations, step-ups,
//!   throttles, their audit trail): PostgreSQL. They must survive anything, and an approval
//!   must be consumed exactly once across replicas, which one conditional `UPDATE` gives.
//! - **Rate and volume limits**: Redis (an atomic GCRA script, one clock: Redis's), with a
//!   local pre-check so a replica never asks Redis about a call it can refuse alone.
//! - **Kill-switch propagation**: Redis carries the agent-state *version*. A change is written
//!   to PostgreSQL first (so a Redis that restarts empty loses nothing), then its version is
//!   published; every replica reloads from PostgreSQL when it sees a newer one. Pub/sub can
//!   drop messages, so each replica also compares versions once a second, and after every
//!   reconnect it resyncs before trusting its cache.
//! - **Anomaly baselines and counters**: per replica (see README "Replicas"). Each replica
//!   sees a share of an agent's calls and learns from them; a shared counter would cost a
//!   Redis round trip on every call for a detector that is advisory.
//!
//! # Freshness
//!
//! The proxy never waits for a store to check the kill switch: it reads this replica's copy.
//! The copy is *fresh* while the last successful sync with PostgreSQL is under
//! [`STALE_AFTER_MS`] old. A stale copy may be missing a pause made on another replica, so
//! routes that fail closed refuse (`state_store_unavailable`) until it is fresh again; routes
//! marked `store_unavailable: fail_open` go on with the copy they have.

use super::agent_state::{AgentStateStore, AuditEntry, Change, StateError};
use super::pg_agent_state::PostgresAgentState;
use super::redis_limits::{connection_info, RedisConn, RedisLimits, RedisOptions, SharedOutcome};
use super::redis_sync::{VersionChannel, VersionEvent};
use crate::observe::Metrics;
use crate::policy::agent_state::AgentStates;
use crate::policy::limits::{Charge, Refused};
use crate::policy::snapshot::{redact_url, SharedStateSettings};
use serde_json::Value;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often each replica compares its agent-state version with PostgreSQL's.
const RESYNC_EVERY: Duration = Duration::from_secs(1);

/// A copy of agent state last confirmed this long ago is stale: two resyncs in a row failed.
pub const STALE_AFTER_MS: i64 = 3_000;

/// The Redis channel (after the key prefix) carrying agent-state versions.
const AGENTS_CHANNEL: &str = "agents";

/// Why [`SharedState::admit`] refused.
#[derive(Debug)]
pub enum Admission {
    /// A shared budget is spent.
    Limited(Box<Refused>),
    /// The shared store cannot say, and the route fails closed.
    Unavailable,
}

/// The shared stores of one replica, and the runtime their connections live on.
pub struct SharedState {
    /// Redis limits (also the process's [`super::limits::LimitStore`] for volumes).
    pub limits: Arc<RedisLimits>,
    /// Agent state, synced across replicas.
    pub agents: Arc<SyncedAgentState>,
    /// Which agent opened each MCP session, for every replica.
    pub sessions: McpSessions,
    /// When agent state was last confirmed current, Unix ms.
    synced_at_ms: Arc<AtomicI64>,
    /// The URLs without credentials, for logs and `/readyz`.
    postgres_display: String,
    redis_display: String,
    metrics: Arc<Metrics>,
    /// Owns the connections' tasks; shut down (not dropped in place) with the state.
    runtime: Option<tokio::runtime::Runtime>,
}

impl SharedState {
    /// Connect and load. PostgreSQL must answer: without it this replica cannot know which
    /// agents are paused, so it does not start. Redis may be down: limits then follow each
    /// route's `store_unavailable` until it is back.
    ///
    /// Blocking: call before the server's runtimes start.
    pub fn start(
        s: &SharedStateSettings,
        holder: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<SharedState>, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-shared")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the shared-state runtime: {e}"))?;
        let pg = Arc::new(
            PostgresAgentState::open(&pg_options(s, holder))
                .map_err(|e| format!("cannot load agent state from PostgreSQL: {e}"))?,
        );
        let opts = RedisOptions {
            url: s.redis_url.clone(),
            key_prefix: s.redis_key_prefix.clone(),
            op_timeout: s.redis_timeout,
            connect_timeout: Duration::from_secs(2),
        };
        let (limits, channel, events, sessions) = runtime.block_on(async {
            let limits = RedisLimits::connect(opts.clone(), metrics.clone()).await?;
            let limits = Arc::new(limits);
            limits.start_flusher();
            let (channel, events) =
                VersionChannel::start(opts.clone(), AGENTS_CHANNEL, metrics.clone());
            let sessions = McpSessions::new(&opts, metrics.clone())?;
            Ok::<_, String>((limits, Arc::new(channel), events, sessions))
        })?;
        let synced_at_ms = Arc::new(AtomicI64::new(crate::approval::now_ms()));
        let agents = Arc::new(SyncedAgentState {
            pg,
            channel: channel.clone(),
            runtime: runtime.handle().clone(),
        });
        runtime.spawn(sync_loop(
            agents.clone(),
            events,
            synced_at_ms.clone(),
            metrics.clone(),
        ));
        Ok(Arc::new(SharedState {
            limits,
            agents,
            sessions,
            synced_at_ms,
            postgres_display: redact_url(&s.postgres_url),
            redis_display: redact_url(&s.redis_url),
            metrics,
            runtime: Some(runtime),
        }))
    }

    /// Whether `key` is used for the first time across all replicas (see
    /// [`McpSessions::first_use`], which shares its connection).
    pub async fn first_use(&self, key: &str, ttl_secs: u64) -> Result<bool, String> {
        self.sessions.first_use(key, ttl_secs).await
    }

    /// Is this replica's copy of agent state recent enough to decide fail-closed routes on?
    pub fn fresh(&self) -> bool {
        crate::approval::now_ms() - self.synced_at_ms.load(Ordering::Acquire) < STALE_AFTER_MS
    }

    /// How old the copy of agent state is, in ms.
    pub fn agent_state_age_ms(&self) -> i64 {
        (crate::approval::now_ms() - self.synced_at_ms.load(Ordering::Acquire)).max(0)
    }

    /// What `/readyz` shows: each store's round trip or error, and the copy's age.
    pub async fn report(&self) -> Value {
        let redis = match self.limits.ping().await {
            Ok(rtt) => {
                serde_json::json!({"ok": true, "url": self.redis_display, "latency_ms": rtt.as_secs_f64() * 1e3})
            }
            Err(e) => serde_json::json!({"ok": false, "url": self.redis_display, "error": e}),
        };
        let pg = self.agents.pg.clone();
        let started = Instant::now();
        let ping = tokio::task::spawn_blocking(move || pg.ping()).await;
        let postgres = match ping {
            Ok(Ok(())) => {
                serde_json::json!({"ok": true, "url": self.postgres_display, "latency_ms": started.elapsed().as_secs_f64() * 1e3})
            }
            Ok(Err(e)) => {
                serde_json::json!({"ok": false, "url": self.postgres_display, "error": e.to_string()})
            }
            Err(e) => {
                serde_json::json!({"ok": false, "url": self.postgres_display, "error": e.to_string()})
            }
        };
        serde_json::json!({
            "backend": "shared",
            "postgres": postgres,
            "redis": redis,
            "agent_state_age_ms": self.agent_state_age_ms(),
            "agent_state_fresh": self.fresh(),
        })
    }

    /// May this call go on, as far as shared state goes? Checks the copy of agent state is
    /// fresh and takes the call's rates from the shared budgets. When the store cannot say,
    /// `fail_open` (the route's `store_unavailable: fail_open`, never for supervised agents)
    /// lets this replica's own state decide; otherwise the call is refused.
    pub async fn admit(
        &self,
        route: &str,
        fail_open: bool,
        charge: &Charge,
    ) -> Result<(), Admission> {
        if !self.fresh() {
            self.fell_back(route, fail_open);
            if !fail_open {
                return Err(Admission::Unavailable);
            }
        }
        if charge.rates.is_empty() {
            return Ok(());
        }
        match self.limits.acquire(charge).await {
            SharedOutcome::Admitted => Ok(()),
            SharedOutcome::Refused(r) => Err(Admission::Limited(r)),
            SharedOutcome::Unavailable(why) => {
                tracing::debug!(route, error = %why, "shared limits unavailable");
                self.fell_back(route, fail_open);
                if fail_open {
                    // The local pre-check has counted the call: this replica alone never
                    // admits more than the whole budget.
                    Ok(())
                } else {
                    Err(Admission::Unavailable)
                }
            }
        }
    }

    /// Count a call decided without the shared store.
    pub fn fell_back(&self, route: &str, fail_open: bool) {
        let mode = if fail_open {
            "fail_open"
        } else {
            "fail_closed"
        };
        self.metrics
            .state_store_fallbacks
            .with_label_values(&[route, mode])
            .inc();
    }
}

impl Drop for SharedState {
    fn drop(&mut self) {
        // Dropping a runtime from inside another one panics; shutting it down does not.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn pg_options(s: &SharedStateSettings, holder: &str) -> crate::approval::postgres::PgStoreOptions {
    crate::approval::postgres::PgStoreOptions {
        url: s.postgres_url.clone(),
        holder: holder.to_string(),
        max_connections: s.postgres_max_connections,
        connect_timeout: Duration::from_secs(5),
        op_timeout: s.postgres_timeout,
    }
}

/// The options the approval store of this replica opens PostgreSQL with.
pub fn approval_store_options(
    s: &SharedStateSettings,
    holder: &str,
) -> crate::approval::postgres::PgStoreOptions {
    pg_options(s, holder)
}

/// Keep `agents` current: reload when a newer version is published, and compare versions with
/// PostgreSQL once a second whatever Redis says (messages can be lost; Redis can be down or
/// restart empty, and is then given the version back).
async fn sync_loop(
    agents: Arc<SyncedAgentState>,
    mut events: tokio::sync::mpsc::Receiver<VersionEvent>,
    synced_at_ms: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(RESYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let republish = tokio::select! {
            ev = events.recv() => match ev {
                Some(VersionEvent::Changed(v)) if v <= agents.pg.version() => continue,
                Some(VersionEvent::Changed(_)) => false,
                // Messages may have been missed while unsubscribed.
                Some(VersionEvent::Resubscribed) => true,
                None => return,
            },
            _ = tick.tick() => true,
        };
        let pg = agents.pg.clone();
        let synced = tokio::task::spawn_blocking(move || {
            // Restrictions applied while PostgreSQL was down are written first, so the reload
            // cannot lose them.
            if let Err(e) = pg.flush_pending() {
                tracing::debug!(error = %e, "unpersisted agent-state changes still waiting for PostgreSQL");
            }
            if pg.remote_version()? > pg.version() {
                pg.reload()?;
            }
            Ok::<u64, StateError>(pg.version())
        })
        .await;
        match synced {
            Ok(Ok(version)) => {
                synced_at_ms.store(crate::approval::now_ms(), Ordering::Release);
                metrics
                    .state_store_up
                    .with_label_values(&["postgres"])
                    .set(1);
                if republish {
                    // A Redis that restarted empty (or missed a publish) learns the version
                    // again; a stale or missing one would hide the next change from nobody,
                    // but would make every replica reload once a second.
                    match agents.channel.get().await {
                        Ok(Some(v)) if v >= version => {}
                        Ok(_) => {
                            if let Err(e) = agents.channel.publish(version).await {
                                tracing::debug!(error = %e, "cannot give Redis the agent-state version");
                            }
                        }
                        Err(_) => {}
                    }
                }
            }
            Ok(Err(e)) => {
                metrics
                    .state_store_up
                    .with_label_values(&["postgres"])
                    .set(0);
                tracing::warn!(error = %e, "cannot sync agent state with PostgreSQL; fail-closed routes refuse once it is stale");
            }
            Err(e) => tracing::error!(error = %e, "agent-state sync task failed"),
        }
    }
}

/// Agent state in PostgreSQL whose changes are announced to the other replicas through Redis.
pub struct SyncedAgentState {
    pg: Arc<PostgresAgentState>,
    channel: Arc<VersionChannel>,
    runtime: tokio::runtime::Handle,
}

impl SyncedAgentState {
    /// The version of the state this replica holds.
    pub fn version(&self) -> u64 {
        self.pg.version()
    }
}

impl AgentStateStore for SyncedAgentState {
    fn current(&self) -> Arc<AgentStates> {
        self.pg.current()
    }

    fn apply(
        &self,
        change: &Change,
        by: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<AuditEntry, StateError> {
        let out = self.pg.apply(change, by, reason, now_ms);
        if out.is_ok() {
            // Persisted: tell the others. If Redis is down they still see it within a second,
            // from PostgreSQL.
            let (channel, version) = (self.channel.clone(), self.pg.version());
            self.runtime.spawn(async move {
                if let Err(e) = channel.publish(version).await {
                    tracing::warn!(error = %e, "cannot announce an agent-state change on Redis; other replicas see it at their next resync (within 1 s)");
                }
            });
        }
        out
    }

    fn audit(&self, agent: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, StateError> {
        self.pg.audit(agent, limit)
    }

    fn prune(&self, now_ms: i64) -> Result<(), StateError> {
        self.pg.prune(now_ms)
    }

    /// From async code (the proxy's response path saving MCP pins, admin handlers) the write
    /// is queued on the shared runtime instead of blocking a worker on PostgreSQL; a failure
    /// is logged there. Outside any runtime (shutdown) it is written before returning.
    fn save_blob(&self, key: &str, value: &Value, now_ms: i64) -> Result<(), StateError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.pg.save_blob(key, value, now_ms);
        }
        let (pg, key, value) = (self.pg.clone(), key.to_string(), value.clone());
        self.runtime.spawn_blocking(move || {
            if let Err(e) = pg.save_blob(&key, &value, now_ms) {
                tracing::error!(key, error = %e, "cannot save a shared state document");
            }
        });
        Ok(())
    }

    fn load_blob(&self, key: &str) -> Result<Option<Value>, StateError> {
        self.pg.load_blob(key)
    }
}

/// How long a replica remembers, in Redis, which agent opened an MCP session: as long as the
/// local session map keeps an idle one.
const SESSION_TTL_SECS: u64 = 24 * 3600;

/// MCP sessions known to every replica: an agent's client opens a session through one replica
/// and its next call may reach another (no sticky load balancing needed). Each replica keeps
/// its own map ([`super::mcp::McpState`]) and asks Redis only about a session it has not seen;
/// the binding never changes once made, so a local copy is never stale.
pub struct McpSessions {
    conn: RedisConn,
    prefix: String,
    runtime: tokio::runtime::Handle,
}

impl McpSessions {
    /// Must run on the shared runtime (the connection's tasks live there).
    fn new(opts: &RedisOptions, metrics: Arc<Metrics>) -> Result<McpSessions, String> {
        Ok(McpSessions {
            conn: RedisConn::new(opts, metrics, connection_info(&opts.url)?)?,
            prefix: opts.key_prefix.clone(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Names are length-prefixed: no upstream name or session id can forge another's key.
    fn key(&self, upstream: &str, id: &str) -> String {
        format!(
            "{}mcp:session:{}:{upstream}:{id}",
            self.prefix,
            upstream.len()
        )
    }

    /// `agent` opened session `id` on `upstream`: recorded in the background (the answer that
    /// carried the id is not held up). If Redis misses it, another replica answers the
    /// session's next call 404 and the client opens a new one.
    pub fn bind(&self, upstream: &str, id: &str, agent: &str) {
        let (conn, key, agent) = (self.conn.clone(), self.key(upstream, id), agent.to_string());
        self.runtime.spawn(async move {
            let set = conn
                .run("session_bind", |mut c| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(agent)
                        .arg("EX")
                        .arg(SESSION_TTL_SECS)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
            if let Err(e) = set {
                tracing::warn!(error = %e, "cannot share an MCP session binding; other replicas will ask its client to start a new session");
            }
        });
    }

    /// The session ended (`DELETE`): forgotten everywhere.
    pub fn end(&self, upstream: &str, id: &str) {
        let (conn, key) = (self.conn.clone(), self.key(upstream, id));
        self.runtime.spawn(async move {
            let _ = conn
                .run("session_end", |mut c| async move {
                    redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
                })
                .await;
        });
    }

    /// Whether `key` is seen for the first time by any replica (`SET NX`, remembered for
    /// `ttl_secs`): single-use values such as client assertion ids.
    pub async fn first_use(&self, key: &str, ttl_secs: u64) -> Result<bool, String> {
        let key = format!("{}once:{key}", self.prefix);
        self.conn
            .run("first_use", |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl_secs)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await
            .map(|set| set.is_some())
    }

    /// The agent that opened session `id` on `upstream` through any replica. `Err` when Redis
    /// cannot say: the caller treats the session as unknown (the client starts a new one).
    pub async fn owner(&self, upstream: &str, id: &str) -> Result<Option<String>, String> {
        let key = self.key(upstream, id);
        self.conn
            .run("session_get", |mut c| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await
    }
}

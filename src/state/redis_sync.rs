//! Propagation of agent-state changes (the kill switch) between replicas through Redis.
//!
//! Runtime agent state lives in PostgreSQL with a version number that only grows. Redis carries
//! that version so replicas learn of a change at once instead of at their next poll:
//!
//! - `{prefix}{channel}:version` holds the highest version announced. [`VersionChannel::publish`]
//!   raises it and publishes the new version on `{prefix}{channel}` in one script
//!   ([`PUBLISH_SCRIPT`]), so a slow replica announcing an old version can never lower it and
//!   no subscriber hears a version older than the stored one from a publish.
//! - Every replica keeps a subscription on `{prefix}{channel}` alive forever and reports each
//!   version it hears as [`VersionEvent::Changed`]. Pub/sub is fire-and-forget: messages sent
//!   while a replica is disconnected are lost. So after every (re)subscription the channel
//!   reports [`VersionEvent::Resubscribed`], and the caller resyncs from PostgreSQL.
//! - A Redis that restarts empty has no version: [`VersionChannel::get`] answers `None` and the
//!   caller publishes its own again.
//!
//! The subscription uses its own RESP3 connection (Redis 6 or later), whose disconnection is
//! reported by the client library; it is also pinged every [`PING_EVERY`] so a connection that
//! silently stopped answering is replaced. Reconnection waits 100 ms, doubling up to 1 s.
//! Timeouts, metrics (`op` = `publish`, `get`, `subscribe`) and password redaction are those of
//! [`super::redis_limits`].

use super::redis_limits::{connection_info, RedisConn, RedisOptions, MAX_BACKOFF};
use crate::observe::Metrics;
use redis::{Client, ProtocolVersion, PushKind};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often the subscription connection is pinged to prove it still answers.
pub const PING_EVERY: Duration = Duration::from_secs(1);

/// Events buffered for a slow consumer before the subscriber waits for it.
const EVENT_BUFFER: usize = 64;

/// Raise the stored version and announce it, atomically.
///
/// `KEYS[1]`: the version key. `ARGV[1]`: the new version (decimal, no leading zeros);
/// `ARGV[2]`: the channel. Versions are compared as decimal strings (length, then digits), so
/// the whole `u64` range is exact (Lua numbers are doubles). Returns 1 when stored and
/// published, 0 when the stored version is already as high (nothing written or published).
pub const PUBLISH_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
local new = ARGV[1]
if cur and (#new < #cur or (#new == #cur and new <= cur)) then
  return 0
end
redis.call('SET', KEYS[1], new)
redis.call('PUBLISH', ARGV[2], new)
return 1
"#;

/// What the subscription reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionEvent {
    /// A replica published this version.
    Changed(u64),
    /// The subscription was (re)established: messages may have been missed, resync.
    Resubscribed,
}

/// The version key and channel of one deployment (see the module docs).
pub struct VersionChannel {
    conn: Result<RedisConn, String>,
    channel: String,
    version_key: String,
    script: redis::Script,
    subscriber: Option<tokio::task::JoinHandle<()>>,
}

impl VersionChannel {
    /// Start the subscription on `{prefix}{channel_name}` and return the channel with the
    /// receiver of its events. Never fails: with Redis down the subscriber retries forever,
    /// and an invalid URL (which [`super::redis_limits::RedisLimits::connect`] reports first)
    /// is logged and makes every operation fail with the reason.
    ///
    /// Must run inside a tokio runtime: the subscriber is a task on it. It stops when the
    /// channel or the receiver is dropped.
    pub fn start(
        opts: RedisOptions,
        channel_name: &str,
        metrics: Arc<Metrics>,
    ) -> (VersionChannel, mpsc::Receiver<VersionEvent>) {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let channel = format!("{}{channel_name}", opts.key_prefix);
        let version_key = format!("{channel}:version");
        let setup = connection_info(&opts.url).and_then(|info| {
            let conn = RedisConn::new(&opts, metrics.clone(), info.clone())?;
            // A regular connection in RESP3 receives pushes and reports its own loss, which
            // RESP2's dedicated pub/sub connection does not make observable here.
            let resp3 = info.clone().set_redis_settings(
                info.redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3),
            );
            let client = Client::open(resp3)
                .map_err(|e| format!("invalid Redis settings: {}", conn.scrub(&e.to_string())))?;
            Ok((conn, client))
        });
        let (conn, subscriber) = match setup {
            Ok((conn, client)) => {
                let task = tokio::spawn(subscribe_forever(
                    client,
                    conn.clone(),
                    opts.clone(),
                    channel.clone(),
                    tx,
                    metrics,
                ));
                (Ok(conn), Some(task))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot use Redis for agent-state versions");
                (Err(e), None)
            }
        };
        (
            VersionChannel {
                conn,
                channel,
                version_key,
                script: redis::Script::new(PUBLISH_SCRIPT),
                subscriber,
            },
            rx,
        )
    }

    fn conn(&self) -> Result<&RedisConn, String> {
        self.conn.as_ref().map_err(Clone::clone)
    }

    /// Store `version` if it is higher than the stored one, and if so publish it (one script).
    /// `Ok` also when a higher version was stored already.
    pub async fn publish(&self, version: u64) -> Result<(), String> {
        let conn = self.conn()?;
        let mut inv = self.script.prepare_invoke();
        inv.key(&self.version_key)
            .arg(version.to_string())
            .arg(&self.channel);
        conn.run("publish", |mut c| async move {
            inv.invoke_async::<i64>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    /// The stored version; `None` when there is none (Redis restarted empty: publish again).
    pub async fn get(&self) -> Result<Option<u64>, String> {
        let conn = self.conn()?;
        let key = self.version_key.clone();
        let raw = conn
            .run("get", |mut c| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await?;
        raw.map(|s| {
            s.parse::<u64>()
                .map_err(|_| format!("`{}` holds `{s}`, not a version", self.version_key))
        })
        .transpose()
    }
}

impl Drop for VersionChannel {
    fn drop(&mut self) {
        if let Some(task) = self.subscriber.take() {
            task.abort();
        }
    }
}

/// Record one failed subscription step.
fn subscribe_failed(conn: &RedisConn, metrics: &Metrics, started: Instant, error: &str) {
    metrics
        .state_store_duration
        .with_label_values(&["redis", "subscribe"])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .state_store_errors
        .with_label_values(&["redis", "subscribe"])
        .inc();
    tracing::debug!(redis = %conn.display(), error = %conn.scrub(error), "Redis subscription lost; retrying");
}

/// Keep a subscription on `channel` alive until `events` is closed: connect, subscribe, report
/// [`VersionEvent::Resubscribed`], forward messages; on any loss wait (backoff ≤ 1 s) and
/// start again.
async fn subscribe_forever(
    client: Client,
    conn: RedisConn,
    opts: RedisOptions,
    channel: String,
    events: mpsc::Sender<VersionEvent>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let (push_tx, mut pushes) = mpsc::unbounded_channel();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(opts.op_timeout))
            .set_push_sender(push_tx);
        let connected = tokio::time::timeout(opts.connect_timeout + opts.op_timeout, async {
            let mut c = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            c.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(c)
        })
        .await;
        let mut sub = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                subscribe_failed(&conn, &metrics, started, &e.to_string());
                if wait_or_closed(&events, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                subscribe_failed(&conn, &metrics, started, "no subscription in time");
                if wait_or_closed(&events, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        metrics
            .state_store_duration
            .with_label_values(&["redis", "subscribe"])
            .observe(started.elapsed().as_secs_f64());
        backoff = Duration::from_millis(100);
        if events.send(VersionEvent::Resubscribed).await.is_err() {
            return;
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let lost = loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    None => break "the connection closed".to_string(),
                    Some(p) if p.kind == PushKind::Disconnection => {
                        break "the connection closed".to_string()
                    }
                    Some(p) if p.kind == PushKind::Message => {
                        // RESP3 `message` push: [channel, payload].
                        let version = p
                            .data
                            .last()
                            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                            .and_then(|s| s.parse::<u64>().ok());
                        match version {
                            Some(v) => {
                                if events.send(VersionEvent::Changed(v)).await.is_err() {
                                    return;
                                }
                            }
                            None => tracing::debug!("ignoring a malformed agent-state version message"),
                        }
                    }
                    Some(_) => {}
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        opts.op_timeout.max(Duration::from_millis(500)),
                        redis::cmd("PING").query_async::<()>(&mut sub),
                    )
                    .await;
                    match pong {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "no answer to PING".to_string(),
                    }
                }
                _ = events.closed() => return,
            }
        };
        subscribe_failed(&conn, &metrics, Instant::now(), &lost);
        if wait_or_closed(&events, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sleep `d`; true when the receiver went away meanwhile (stop).
async fn wait_or_closed(events: &mpsc::Sender<VersionEvent>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => events.is_closed(),
        _ = events.closed() => true,
    }
}

#[cfg(test)]
#[path = "redis_sync_tests.rs"]
mod tests;

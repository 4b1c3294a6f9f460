//! Rate and volume limits shared by replicas through Redis.
//!
//! Several replicas behind a load balancer hold one budget together: a limit of N per window
//! admits N calls whether they all land on one replica or are spread over many.
//!
//! # Rates: one atomic script, Redis's clock
//!
//! [`RedisLimits::acquire`] is the shared path for request rates:
//!
//! 1. **Local pre-check.** The same limits are kept in an [`InProcessLimitStore`]. If it refuses,
//!    this replica alone has tried more calls than the whole budget allows, so Redis could only
//!    refuse too: the call is refused without a round trip. (The local limiter counts every
//!    call this replica *sent to Redis*, including those Redis then refused, so a replica that
//!    keeps hammering a budget others used up can be refused locally slightly longer than Redis
//!    alone would: never longer than if it had been admitted each time.)
//! 2. **One `EVALSHA`** of a GCRA over every rate key of the call ([`RATE_SCRIPT`]). The script
//!    reads the time with `TIME`, so every replica uses Redis's clock and clock skew between
//!    hosts does not matter. It is all-or-nothing: it first checks every key, and only if all
//!    admit does it update them all; a refusal takes nothing from any limit (unlike the
//!    in-process [`super::limits::acquire`], where earlier limits stay taken).
//! 3. A timeout (`op_timeout`) or a connection error answers [`SharedOutcome::Unavailable`]. The
//!    caller applies the route's `store_unavailable` mode. When it fails open, the local
//!    pre-check of step 1 still holds each replica to the whole budget on its own, so R replicas
//!    admit at most R × the budget while Redis is away.
//!
//! The GCRA parameters are governor's for the same [`RateLimit`]: emission interval
//! `T = interval()`, tolerance `τ = T × (burst − 1)`; a call at time `t` is admitted when
//! `t ≥ TAT − τ`, which sets `TAT = max(TAT, t) + T`; the wait is `TAT − τ − t`. So `burst`
//! calls pass at once, then one per interval, exactly as in [`InProcessLimitStore`]. Time is
//! kept in microseconds (Lua numbers are doubles: nanoseconds since the epoch would not fit in
//! their 53 bits); an interval under 1 µs (over a million calls per second on one key) is
//! treated as 1 µs. Each key (`{prefix}rate:{storage_key}`) is written with `PX` = the time
//! until its TAT, when a fresh key would behave the same, so idle keys vanish on their own.
//!
//! # Volumes: decided locally, reconciled in the background
//!
//! Body chunks are charged from pingora's synchronous body filters, which cannot wait for
//! Redis. So [`LimitStore::charge_volume`] and [`VolumeView::volume_remaining`] decide on local
//! state: per key, the last global total Redis reported (and when its window ends) plus the
//! bytes this replica charged since (`pending`). A background task
//! ([`RedisLimits::start_flusher`], every [`FLUSH_INTERVAL`]) sends the pending bytes of every
//! key in one script ([`VOLUME_SCRIPT`]: fixed window; the first charge creates the key with
//! `PX` = window, then `INCRBY`; returns the total and `PTTL`) and learns the totals, including
//! those of keys this replica did not charge.
//!
//! **Tolerance.** A replica does not see the bytes other replicas moved since its last flush:
//! a budget can be passed by the bytes the *other* replicas moved within about one flush
//! interval (plus a round trip), on top of the one chunk per stream that the crossing rule
//! already allows. A replica that has never flushed a key yet (its first call on it) decides on
//! its own bytes alone until its first flush, at most [`FLUSH_INTERVAL`] later.
//!
//! **Redis unreachable.** Volumes keep counting locally: each replica enforces the budget on
//! what it knows (the last total it heard plus its own bytes), so R replicas can move up to
//! about R × what was left. Pending bytes are sent once Redis answers again (unless their
//! window ended meanwhile, then they no longer matter). Unlike the trait's general rule, this
//! store therefore never fails closed on volumes by itself; [`RedisLimits::available`] tells the
//! caller, which applies the route's `store_unavailable` mode.
//!
//! # What is supported
//!
//! - URLs `redis://[user:password@]host[:port][/db]` and `rediss://…` (TLS with rustls). TLS
//!   verifies the server's certificate against the system trust store, which honours
//!   `SSL_CERT_FILE` / `SSL_CERT_DIR` (for a private CA). `rediss://…#insecure` (no certificate
//!   verification) is refused, as is any other URL fragment; client certificates are not
//!   supported. Unix sockets and Redis Cluster are not supported (a multi-key script needs all
//!   keys on one node); one Redis (or a failover pair behind one address) is.
//! - Redis 6 or later (`HELLO 3` for the version channel, effect replication of scripts that
//!   read `TIME`).
//! - The password never appears in errors or logs: URLs are shown without their user info and
//!   error texts are scrubbed of the password.

use super::limits::{InProcessLimitStore, LimitStore};
use crate::observe::Metrics;
use crate::policy::limits::{Charge, LimitKey, RateLimit, Refused, VolumeLimit, VolumeView};
use crate::policy::snapshot::redact_url;
use crate::util::{lock, scrub, url_secrets};
use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionInfo, IntoConnectionInfo, RedisError};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often pending volume bytes are sent to Redis and global totals read back: the window
/// within which other replicas' bytes go unseen (see the module docs).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The `store` label of the state-store metrics.
const STORE: &str = "redis";

/// Volume keys per flush script: bounds the time one script holds Redis.
const FLUSH_BATCH: usize = 256;

/// First wait before reconnecting after a failed attempt; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait between two connection attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// GCRA over every key of one call, all-or-nothing, on Redis's clock.
///
/// `KEYS[i]`: rate keys. `ARGV[2i-1]`: emission interval `T` in µs; `ARGV[2i]`: tolerance `τ`
/// in µs. Returns `{0, 0}` when admitted (every key updated), else `{i, wait_µs}` for the first
/// key `i` (1-based) that refuses (nothing updated). A key listed twice is charged twice.
pub const RATE_SCRIPT: &str = r#"
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000000 + tonumber(now_t[2])
local tats = {}
local order = {}
for i = 1, #KEYS do
  local t = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local tat = tats[KEYS[i]]
  if tat == nil then
    tat = tonumber(redis.call('GET', KEYS[i]) or now) or now
    order[#order + 1] = KEYS[i]
  end
  if tat < now then tat = now end
  local earliest = tat - tau
  if now < earliest then
    return {i, math.ceil(earliest - now)}
  end
  tats[KEYS[i]] = tat + t
end
for _, k in ipairs(order) do
  local ttl = math.ceil((tats[k] - now) / 1000)
  if ttl < 1 then ttl = 1 end
  redis.call('SET', k, string.format('%.17g', tats[k]), 'PX', ttl)
end
return {0, 0}
"#;

/// Fixed-window volume counters, many keys per call.
///
/// `KEYS[i]`: volume keys. `ARGV[2i-1]`: bytes to add (decimal, may be `0`); `ARGV[2i]`: window
/// in ms. A key charged while missing starts a window of that length (`PEXPIRE` right after
/// the `INCRBY`, in the same script, so a counter never lives without expiry). A `0` only reads:
/// it must not start a window nobody charged. Returns `{total_1, pttl_1, total_2, …}` where
/// `pttl` is negative when the key does not exist (no window running).
pub const VOLUME_SCRIPT: &str = r#"
local out = {}
for i = 1, #KEYS do
  local total
  local ttl
  if ARGV[2 * i - 1] ~= '0' then
    total = redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
    ttl = redis.call('PTTL', KEYS[i])
    if ttl < 0 then
      redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
      ttl = tonumber(ARGV[2 * i])
    end
  else
    total = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
    ttl = redis.call('PTTL', KEYS[i])
  end
  out[2 * i - 1] = total
  out[2 * i] = ttl
end
return out
"#;

/// How to reach Redis. Cloned freely; its `Debug` hides the password.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` URL (see the module docs for what is supported).
    pub url: String,
    /// Prefix of every key and channel, so deployments can share one Redis.
    pub key_prefix: String,
    /// Longest wait for one operation (default 250 ms); past it the operation is unavailable.
    pub op_timeout: Duration,
    /// Longest wait for one connection attempt, TLS and `HELLO` included (default 2 s).
    pub connect_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            url: "redis://127.0.0.1:6379/".to_string(),
            key_prefix: "portcullis:".to_string(),
            op_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("op_timeout", &self.op_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Check a Redis URL the way [`RedisLimits::connect`] does (scheme, no fragment, parseable);
/// the error never contains the password. For config validation.
pub fn check_url(url: &str) -> Result<(), String> {
    connection_info(url).map(|_| ())
}

/// Parse `url` into connection settings, refusing what the module docs say is unsupported.
pub(super) fn connection_info(url: &str) -> Result<ConnectionInfo, String> {
    let shown = redact_url(url);
    let lower = url.get(..9).unwrap_or(url).to_ascii_lowercase();
    let tls = lower.starts_with("rediss://");
    if !tls && !lower.starts_with("redis://") {
        return Err(format!(
            "`{shown}` is not a redis:// or rediss:// URL (unix sockets and other schemes are not supported)"
        ));
    }
    if url.contains('#') {
        // The redis crate reads `#insecure` as "skip certificate verification"; a shared
        // budget is not worth a man in the middle, and silently ignoring it would be worse.
        return Err(format!(
            "`{}`: URL fragments are not supported; `#insecure` (TLS without certificate \
             verification) is refused: make the server's CA trusted (system store, or \
             SSL_CERT_FILE / SSL_CERT_DIR)",
            shown.split('#').next().unwrap_or_default()
        ));
    }
    let secret = url_secrets(url);
    let info = url.into_connection_info().map_err(|e| {
        format!(
            "invalid Redis URL `{shown}`: {}",
            scrub(&e.to_string(), &secret)
        )
    })?;
    if tls {
        // rustls 0.23 needs a process-wide provider once several are compiled in; pingora's
        // (ring) is the one the proxy uses. A no-op when one is installed already.
        pingora::tls::install_default_crypto_provider();
    }
    Ok(info)
}

/// Why an operation failed, before it is turned into text.
enum Failure {
    /// No connection (down, connecting, or backing off).
    NoConnection(String),
    /// Redis answered with an error, or the connection broke under the command.
    Redis(RedisError, Arc<MultiplexedConnection>),
    /// No answer within `op_timeout`.
    Timeout,
}

#[derive(Default)]
struct ConnState {
    connecting: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: String,
}

struct ConnInner {
    client: Client,
    config: AsyncConnectionConfig,
    secrets: Vec<String>,
    display: String,
    op_timeout: Duration,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    current: ArcSwapOption<MultiplexedConnection>,
    state: Mutex<ConnState>,
    connected: Notify,
    up: AtomicBool,
    last_ok: Mutex<Instant>,
}

/// One multiplexed connection to Redis that is re-established on demand.
///
/// Not `redis::aio::ConnectionManager`: that one stops reconnecting after an error that is not
/// an I/O error (a failed `AUTH`, a TLS error), and its connection attempt is abandoned when the
/// command that started it times out. Here one attempt at a time runs in its own task to its
/// end (`connect_timeout`), operations wait for it at most `op_timeout`, and after a failure
/// operations fail at once until the next attempt is due (backoff 100 ms doubling to 1 s), so a
/// Redis that is down costs the proxy no latency.
#[derive(Clone)]
pub(super) struct RedisConn {
    inner: Arc<ConnInner>,
}

impl RedisConn {
    /// Settings only; connects on first use. Needs a tokio runtime (its connection tasks run on
    /// the current one).
    pub(super) fn new(
        opts: &RedisOptions,
        metrics: Arc<Metrics>,
        info: ConnectionInfo,
    ) -> Result<RedisConn, String> {
        let secrets = url_secrets(&opts.url);
        let client = Client::open(info).map_err(|e| {
            format!(
                "invalid Redis settings: {}",
                scrub(&e.to_string(), &secrets)
            )
        })?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(opts.op_timeout));
        Ok(RedisConn {
            inner: Arc::new(ConnInner {
                client,
                config,
                secrets,
                display: redact_url(&opts.url),
                op_timeout: opts.op_timeout,
                connect_timeout: opts.connect_timeout,
                metrics,
                runtime: tokio::runtime::Handle::current(),
                current: ArcSwapOption::empty(),
                state: Mutex::new(ConnState {
                    backoff: MIN_BACKOFF,
                    last_error: "not connected yet".into(),
                    ..ConnState::default()
                }),
                connected: Notify::new(),
                up: AtomicBool::new(false),
                last_ok: Mutex::new(Instant::now()),
            }),
        })
    }

    /// Did the last operation succeed?
    pub(super) fn up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// The URL without credentials, for logs.
    pub(super) fn display(&self) -> &str {
        &self.inner.display
    }

    /// Scrub the password from an error text.
    pub(super) fn scrub(&self, text: &str) -> String {
        scrub(text, &self.inner.secrets)
    }

    /// Wait up to `connect_timeout` for a first connection, so `up()` is accurate at start.
    pub(super) async fn warm_up(&self) -> bool {
        let ok = matches!(
            tokio::time::timeout(self.inner.connect_timeout, self.connection()).await,
            Ok(Ok(_))
        );
        if ok {
            self.mark(true, None);
        }
        ok
    }

    /// The current connection, or wait (bounded by the caller) for the attempt under way.
    async fn connection(&self) -> Result<Arc<MultiplexedConnection>, String> {
        if let Some(c) = self.inner.current.load_full() {
            return Ok(c);
        }
        let notified = self.inner.connected.notified();
        tokio::pin!(notified);
        // Registered before looking at the state, so the attempt's wake-up cannot be missed.
        notified.as_mut().enable();
        {
            let mut st = lock(&self.inner.state);
            if let Some(c) = self.inner.current.load_full() {
                return Ok(c);
            }
            if !st.connecting {
                if st.retry_at.is_some_and(|at| Instant::now() < at) {
                    return Err(st.last_error.clone());
                }
                st.connecting = true;
                let inner = self.inner.clone();
                self.inner.runtime.spawn(connect(inner));
            }
        }
        notified.await;
        match self.inner.current.load_full() {
            Some(c) => Ok(c),
            None => Err(lock(&self.inner.state).last_error.clone()),
        }
    }

    /// Forget `conn` (if it is still the current one) so the next operation reconnects.
    fn discard(&self, conn: &Arc<MultiplexedConnection>) {
        let current = self.inner.current.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            self.inner.current.compare_and_swap(&*current, None);
        }
    }

    /// Record the state of Redis; log the transitions only (not every failed call).
    fn mark(&self, ok: bool, error: Option<&str>) {
        let was = self.inner.up.swap(ok, Ordering::AcqRel);
        self.inner
            .metrics
            .state_store_up
            .with_label_values(&[STORE])
            .set(i64::from(ok));
        if ok {
            *lock(&self.inner.last_ok) = Instant::now();
            if !was {
                tracing::info!(redis = %self.inner.display, "Redis answers");
            }
        } else if was {
            tracing::warn!(redis = %self.inner.display, error = error.unwrap_or_default(), "Redis does not answer");
        }
    }

    /// Run one operation with the timeout, metrics and error handling every operation shares.
    /// `op` labels the metrics. Errors are scrubbed of the password.
    pub(super) async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, String>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let started = Instant::now();
        let attempt = async {
            let conn = self.connection().await.map_err(Failure::NoConnection)?;
            f((*conn).clone())
                .await
                .map_err(|e| Failure::Redis(e, conn))
        };
        let out = match tokio::time::timeout(self.inner.op_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        };
        let m = &self.inner.metrics;
        m.state_store_duration
            .with_label_values(&[STORE, op])
            .observe(started.elapsed().as_secs_f64());
        match out {
            Ok(v) => {
                self.mark(true, None);
                Ok(v)
            }
            Err(failure) => {
                m.state_store_errors.with_label_values(&[STORE, op]).inc();
                let reason = match failure {
                    Failure::NoConnection(e) => format!("Redis unreachable: {e}"),
                    Failure::Timeout => {
                        // A connection that stopped answering altogether (no RST: a partition,
                        // a frozen host) only shows as timeouts: replace it once nothing has
                        // succeeded for a while, but not after one slow reply.
                        let quiet = lock(&self.inner.last_ok).elapsed();
                        if quiet > (self.inner.op_timeout * 4).max(Duration::from_secs(1)) {
                            if let Some(c) = self.inner.current.load_full() {
                                self.discard(&c);
                            }
                        }
                        format!("Redis did not answer within {:?}", self.inner.op_timeout)
                    }
                    Failure::Redis(e, conn) => {
                        if e.is_io_error()
                            || e.is_unrecoverable_error()
                            || e.is_connection_dropped()
                            || e.is_timeout()
                        {
                            self.discard(&conn);
                        }
                        format!("Redis error: {}", self.scrub(&e.to_string()))
                    }
                };
                self.mark(false, Some(&reason));
                Err(reason)
            }
        }
    }
}

/// One connection attempt, run to its end in its own task; wakes every waiting operation.
async fn connect(inner: Arc<ConnInner>) {
    let res = tokio::time::timeout(
        inner.connect_timeout,
        inner
            .client
            .get_multiplexed_async_connection_with_config(&inner.config),
    )
    .await;
    {
        let mut st = lock(&inner.state);
        match res {
            Ok(Ok(c)) => {
                inner.current.store(Some(Arc::new(c)));
                st.retry_at = None;
                st.backoff = MIN_BACKOFF;
            }
            Ok(Err(e)) => {
                st.last_error = scrub(&e.to_string(), &inner.secrets);
                st.retry_at = Some(Instant::now() + st.backoff);
                st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
            }
            Err(_) => {
                st.last_error = format!("no connection within {:?}", inner.connect_timeout);
                st.retry_at = Some(Instant::now() + st.backoff);
                st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
            }
        }
        st.connecting = false;
    }
    inner.connected.notify_waiters();
}

/// The answer of [`RedisLimits::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedOutcome {
    /// Every rate limit admitted the call (and counted it).
    Admitted,
    /// A limit refused it: locally (this replica alone used the budget) or in Redis. Boxed:
    /// refusals are the cold path and carry the whole limit.
    Refused(Box<Refused>),
    /// Redis did not answer in time or failed; the text says why (no credentials). The caller
    /// applies the route's `store_unavailable` mode.
    Unavailable(String),
}

/// One volume counter as this replica knows it.
struct VolumeEntry {
    limit: VolumeLimit,
    /// `{prefix}volume:{storage_key}`.
    redis_key: String,
    /// Charged here, not sent yet.
    pending: u64,
    /// Being sent by the flush under way.
    in_flight: u64,
    /// The global total Redis last reported (this replica's flushed bytes included).
    known_total: u64,
    /// When the window ends: from Redis's `PTTL` once known, else a local estimate.
    window_end: Instant,
    /// Bumped when the window rolls over locally, so a flush answer from before can tell.
    epoch: u64,
    /// Last charge or read, for the sweep.
    touched: Instant,
}

impl VolumeEntry {
    fn new(limit: &VolumeLimit, redis_key: String, now: Instant) -> Self {
        VolumeEntry {
            limit: *limit,
            redis_key,
            pending: 0,
            in_flight: 0,
            known_total: 0,
            window_end: now + limit.per,
            epoch: 0,
            touched: now,
        }
    }

    /// Start a new window when the known one has ended: its bytes no longer count. Bytes in
    /// flight keep counting until Redis answers (they may land in Redis's new window).
    fn roll(&mut self, now: Instant) {
        if now >= self.window_end {
            self.known_total = 0;
            self.pending = 0;
            self.window_end = now + self.limit.per;
            self.epoch += 1;
        }
    }

    fn used(&self) -> u64 {
        self.known_total
            .saturating_add(self.in_flight)
            .saturating_add(self.pending)
    }
}

/// Rate and volume limits shared by replicas through Redis (see the module docs).
pub struct RedisLimits {
    conn: RedisConn,
    prefix: String,
    local: InProcessLimitStore,
    rate_script: redis::Script,
    volume_script: redis::Script,
    volumes: Mutex<HashMap<LimitKey, VolumeEntry>>,
    /// One flush at a time (the background task and tests' explicit flushes).
    flushing: tokio::sync::Mutex<()>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimits")
            .field("redis", &self.conn.display())
            .field("prefix", &self.prefix)
            .field("available", &self.available())
            .finish()
    }
}

impl RedisLimits {
    /// Check the options and start connecting. Fails only on invalid options: a Redis that is
    /// down at start is reported unavailable ([`RedisLimits::available`], operations answer
    /// `Unavailable`) until it answers. Waits up to `connect_timeout` for a first connection.
    ///
    /// Must run inside a tokio runtime: connections are made by tasks on it.
    pub async fn connect(opts: RedisOptions, metrics: Arc<Metrics>) -> Result<Self, String> {
        let info = connection_info(&opts.url)?;
        let conn = RedisConn::new(&opts, metrics.clone(), info)?;
        metrics.state_store_up.with_label_values(&[STORE]).set(0);
        let limits = RedisLimits {
            conn,
            prefix: opts.key_prefix.clone(),
            local: InProcessLimitStore::new(),
            rate_script: redis::Script::new(RATE_SCRIPT),
            volume_script: redis::Script::new(VOLUME_SCRIPT),
            volumes: Mutex::new(HashMap::new()),
            flushing: tokio::sync::Mutex::new(()),
            flusher: Mutex::new(None),
        };
        if !limits.conn.warm_up().await {
            let why = lock(&limits.conn.inner.state).last_error.clone();
            tracing::warn!(redis = %limits.conn.display(), error = %why, "Redis unreachable at start; shared limits follow each route's store_unavailable until it answers");
        }
        Ok(limits)
    }

    /// Did the last Redis operation succeed? False from a failure until the next success.
    pub fn available(&self) -> bool {
        self.conn.up()
    }

    /// Round trip of one `PING`, for readiness.
    pub async fn ping(&self) -> Result<Duration, String> {
        let started = Instant::now();
        self.conn
            .run("ping", |mut c| async move {
                redis::cmd("PING").query_async::<()>(&mut c).await
            })
            .await?;
        Ok(started.elapsed())
    }

    /// The Redis key of a rate counter.
    fn rate_key(&self, key: &LimitKey) -> String {
        format!("{}rate:{}", self.prefix, key.storage_key())
    }

    /// The Redis key of a volume counter.
    fn volume_key(&self, key: &LimitKey) -> String {
        format!("{}volume:{}", self.prefix, key.storage_key())
    }

    /// Take one request from every rate limit of `charge`, shared with the other replicas
    /// (see the module docs: local pre-check, then one all-or-nothing script).
    pub async fn acquire(&self, charge: &Charge) -> SharedOutcome {
        if charge.rates.is_empty() {
            return SharedOutcome::Admitted;
        }
        if let Err(r) = super::limits::acquire(&self.local, charge) {
            return SharedOutcome::Refused(r);
        }
        let mut inv = self.rate_script.prepare_invoke();
        for (applied, rate) in &charge.rates {
            let (t, tau) = gcra_params(rate);
            inv.key(self.rate_key(&applied.key))
                .arg(format!("{t:.3}"))
                .arg(format!("{tau:.3}"));
        }
        let answer = self
            .conn
            .run("rate", |mut c| async move {
                inv.invoke_async::<(i64, i64)>(&mut c).await
            })
            .await;
        match answer {
            Ok((0, _)) => SharedOutcome::Admitted,
            Ok((i, wait_us)) => {
                let Some((applied, _)) = usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| charge.rates.get(i))
                else {
                    return SharedOutcome::Unavailable(format!(
                        "Redis rate script answered an unknown limit index {i}"
                    ));
                };
                SharedOutcome::Refused(Box::new(Refused {
                    applied: applied.clone(),
                    retry_after: Duration::from_micros(wait_us.max(1) as u64),
                    declared_bytes: None,
                    cut: false,
                }))
            }
            Err(reason) => SharedOutcome::Unavailable(reason),
        }
    }

    /// Start the background flush of volume counters (every [`FLUSH_INTERVAL`]) on the current
    /// tokio runtime. Idempotent. The task stops when `self` is dropped.
    pub fn start_flusher(self: &Arc<Self>) {
        let mut slot = lock(&self.flusher);
        if slot.is_some() {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        *slot = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.flush().await;
            }
        }));
    }

    /// Send every key's pending bytes to Redis and read back the global totals (keys with
    /// nothing pending are read only). On failure the bytes stay pending for the next flush.
    pub async fn flush(&self) {
        let _one = self.flushing.lock().await;
        // (key, redis key, bytes sent, window ms, epoch)
        let batch: Vec<(LimitKey, String, u64, u64, u64)> = {
            let mut volumes = lock(&self.volumes);
            let now = Instant::now();
            volumes
                .iter_mut()
                .map(|(k, e)| {
                    e.roll(now);
                    e.in_flight = e.in_flight.saturating_add(e.pending);
                    e.pending = 0;
                    let window_ms = u64::try_from(e.limit.per.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    (
                        k.clone(),
                        e.redis_key.clone(),
                        e.in_flight,
                        window_ms,
                        e.epoch,
                    )
                })
                .collect()
        };
        for chunk in batch.chunks(FLUSH_BATCH) {
            let mut inv = self.volume_script.prepare_invoke();
            for (_, rk, bytes, window_ms, _) in chunk {
                inv.key(rk)
                    .arg(bytes.to_string())
                    .arg(window_ms.to_string());
            }
            let answer = self
                .conn
                .run("volume", |mut c| async move {
                    inv.invoke_async::<Vec<i64>>(&mut c).await
                })
                .await;
            let now = Instant::now();
            let mut volumes = lock(&self.volumes);
            match answer {
                Ok(totals) if totals.len() == chunk.len() * 2 => {
                    for ((key, _, _, _, epoch), pair) in chunk.iter().zip(totals.chunks(2)) {
                        let Some(e) = volumes.get_mut(key) else {
                            continue;
                        };
                        let (total, pttl) = (pair[0], pair[1]);
                        e.in_flight = 0;
                        if pttl > 0 {
                            // Redis's window is the truth, whatever this replica guessed.
                            e.known_total = u64::try_from(total).unwrap_or(0);
                            e.window_end = now + Duration::from_millis(pttl as u64);
                        } else if e.epoch == *epoch {
                            // No window in Redis: nobody charged since it ended.
                            e.known_total = 0;
                        }
                    }
                }
                other => {
                    if let Ok(v) = other {
                        tracing::warn!(
                            got = v.len(),
                            "unexpected answer from the Redis volume script"
                        );
                    }
                    for (key, _, _, _, epoch) in chunk {
                        let Some(e) = volumes.get_mut(key) else {
                            continue;
                        };
                        if e.epoch == *epoch {
                            e.pending = e.pending.saturating_add(e.in_flight);
                        }
                        e.in_flight = 0;
                    }
                }
            }
        }
    }

    /// Run `f` on `key`'s entry (created if new), after rolling its window.
    fn with_entry<T>(
        &self,
        key: &LimitKey,
        limit: &VolumeLimit,
        f: impl FnOnce(&mut VolumeEntry, Instant) -> T,
    ) -> T {
        let now = Instant::now();
        let mut volumes = lock(&self.volumes);
        if !volumes.contains_key(key) {
            // Looked up first so the hot path (a known key) clones nothing.
            volumes.insert(
                key.clone(),
                VolumeEntry::new(limit, self.volume_key(key), now),
            );
        }
        let Some(e) = volumes.get_mut(key) else {
            unreachable!("inserted above under the same lock")
        };
        // Keys carry their limit, so this only matters for a hand-built key: the caller's
        // numbers win.
        e.limit = *limit;
        e.roll(now);
        e.touched = now;
        f(e, now)
    }
}

/// GCRA's emission interval `T` and tolerance `τ` for `rate`, in µs (see the module docs).
fn gcra_params(rate: &RateLimit) -> (f64, f64) {
    let t = (rate.interval().as_nanos() as f64 / 1000.0).max(1.0);
    let tau = t * f64::from(rate.burst.max(1) - 1);
    (t, tau)
}

impl Drop for RedisLimits {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.flusher).take() {
            task.abort();
        }
    }
}

impl VolumeView for RedisLimits {
    /// Bytes left as this replica knows it (last global total + its unflushed bytes). A key
    /// seen for the first time answers the whole budget and is read from Redis at the next
    /// flush. Never fails for want of Redis (see the module docs).
    fn volume_remaining(&self, key: &LimitKey, limit: &VolumeLimit) -> Result<u64, Duration> {
        self.with_entry(key, limit, |e, now| {
            let used = e.used();
            if used >= limit.bytes {
                Err(e.window_end.saturating_duration_since(now))
            } else {
                Ok(limit.bytes - used)
            }
        })
    }
}

impl LimitStore for RedisLimits {
    /// This replica's limiter only: the shared path for rates is the async
    /// [`RedisLimits::acquire`], which the proxy calls instead.
    fn try_acquire(&self, key: &LimitKey, limit: &RateLimit) -> Result<(), Duration> {
        self.local.try_acquire(key, limit)
    }

    /// Charge locally and decide on the last known global total plus this replica's unflushed
    /// bytes; the background flush sends them (see the module docs for the tolerance).
    fn charge_volume(
        &self,
        key: &LimitKey,
        limit: &VolumeLimit,
        bytes: u64,
    ) -> Result<u64, Duration> {
        self.with_entry(key, limit, |e, now| {
            e.pending = e.pending.saturating_add(bytes);
            let used = e.used();
            if used > limit.bytes {
                Err(e.window_end.saturating_duration_since(now))
            } else {
                Ok(limit.bytes - used)
            }
        })
    }

    /// Sweep the local rate limiter and forget volume counters idle for a whole window with
    /// nothing left to send (Redis expires its own keys).
    fn sweep(&self) {
        self.local.sweep();
        let now = Instant::now();
        let mut volumes = lock(&self.volumes);
        // The flush rolls and refreshes idle entries too, so idleness is judged on `touched`.
        volumes.retain(|_, e| {
            e.pending > 0
                || e.in_flight > 0
                || now.saturating_duration_since(e.touched) < e.limit.per
        });
        volumes.shrink_to_fit();
    }

    /// Local rate cells plus volume counters held.
    fn len(&self) -> usize {
        self.local.len() + lock(&self.volumes).len()
    }
}

#[cfg(test)]
#[path = "redis_limits_tests.rs"]
mod tests;

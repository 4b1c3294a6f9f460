//! Remote JWKS: the process-wide [`KeyStore`] and one background fetcher per URL.
//!
//! The fetchers run on a current-thread tokio runtime on a thread the store owns, so they keep
//! running whichever runtime (pingora's, a test's, none) the callers live on. Verification
//! threads only read the last good key set; a failed fetch never replaces it.

use std::collections::HashMap;

use crate::util::{error_chain, lock};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch, Notify};

use super::keys::{self, VerifyKey};

/// Receives one event per JWKS fetch attempt (for metrics).
pub type JwksEventSink = Arc<dyn Fn(JwksEvent) + Send + Sync>;

/// A JWKS body larger than this is refused: a key set is a few kilobytes.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// How one JWKS fetch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksOutcome {
    /// The key set was fetched and replaced the previous one.
    Ok,
    /// The fetch failed; the previous key set (if any) keeps serving.
    Error,
}

impl JwksOutcome {
    /// `ok` or `error`, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            JwksOutcome::Ok => "ok",
            JwksOutcome::Error => "error",
        }
    }
}

/// Reported after every JWKS fetch attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksEvent {
    /// The JWKS URL.
    pub url: String,
    /// How the fetch went.
    pub outcome: JwksOutcome,
    /// Keys serving after the attempt (the old count when it failed).
    pub key_count: usize,
}

/// The state of one JWKS URL, for `/readyz` and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksStatus {
    /// The JWKS URL.
    pub url: String,
    /// Keys currently serving.
    pub key_count: usize,
    /// When the last successful fetch completed.
    pub last_success: Option<SystemTime>,
    /// Why the last fetch failed, when it did (cleared by the next success).
    pub last_error: Option<String>,
}

/// Fetch timing of one JWKS URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub(crate) refresh: Duration,
    pub(crate) min_refetch: Duration,
    pub(crate) timeout: Duration,
}

/// Process-wide owner of the JWKS fetchers. It outlives config reloads: a new [`Verifier`]
/// that names a URL already registered reuses its fetcher and its keys.
///
/// [`Verifier`]: crate::identity::Verifier
pub struct KeyStore {
    // Weak: a URL no config uses any more is dropped with the last Verifier naming it, and its
    // fetcher then stops.
    entries: Mutex<HashMap<String, Weak<JwksEntry>>>,
    runtime: tokio::runtime::Handle,
    client: reqwest::Client,
    events: JwksEventSink,
    // Dropping the sender ends the runtime thread, which cancels every fetcher.
    _stop: oneshot::Sender<()>,
}

impl KeyStore {
    /// Start the store and its fetch thread; `events` is called after every fetch attempt.
    ///
    /// # Panics
    /// When the OS refuses a thread or the TLS client cannot be set up: there is no gateway
    /// without them.
    pub fn new(events: JwksEventSink) -> Arc<KeyStore> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("portcullis-jwks".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = handle_tx.send(Ok(runtime.handle().clone()));
                        runtime.block_on(async {
                            let _ = stop_rx.await;
                        });
                        // The runtime drops here, outside any async context.
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            })
            .expect("cannot spawn the JWKS fetch thread");
        let runtime = handle_rx
            .recv()
            .expect("the JWKS fetch thread exited at start")
            .expect("cannot build the JWKS fetch runtime");
        let client = reqwest::Client::builder()
            .user_agent("portcullis-jwks")
            .build()
            .expect("cannot build the JWKS HTTP client");
        Arc::new(KeyStore {
            entries: Mutex::new(HashMap::new()),
            runtime,
            client,
            events,
            _stop: stop_tx,
        })
    }

    /// Per URL: key count, last success, last error; sorted by URL.
    pub fn status(&self) -> Vec<JwksStatus> {
        let mut all: Vec<JwksStatus> = lock(&self.entries)
            .values()
            .filter_map(Weak::upgrade)
            .map(|entry| entry.status())
            .collect();
        all.sort_by(|a, b| a.url.cmp(&b.url));
        all
    }

    /// The entry for `url`, starting its fetcher if it has none yet.
    pub(crate) fn register(&self, url: &str, timing: Timing) -> Arc<JwksEntry> {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get(url).and_then(Weak::upgrade) {
            *lock(&entry.timing) = timing;
            return entry;
        }
        entries.retain(|_, entry| entry.strong_count() > 0);
        let entry = Arc::new(JwksEntry::new(url, timing));
        entries.insert(url.to_owned(), Arc::downgrade(&entry));
        self.runtime.spawn(run_fetcher(
            Arc::downgrade(&entry),
            entry.wake.clone(),
            self.client.clone(),
            self.events.clone(),
        ));
        entry
    }
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("urls", &lock(&self.entries).keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One JWKS URL: its last good keys and the coordination with its fetcher.
pub(crate) struct JwksEntry {
    url: String,
    timing: Mutex<Timing>,
    keys: RwLock<Arc<Vec<VerifyKey>>>,
    /// Bumped, after the new keys are stored, whenever a fetch drops or changes a key: tokens
    /// verified under an older generation may rest on a key that is gone and must be checked
    /// again (see the verified-token cache).
    generation: AtomicU64,
    status: Mutex<FetchStatus>,
    refetch: Mutex<RefetchState>,
    /// Bumped after every fetch attempt, under the `refetch` lock.
    fetched: watch::Sender<u64>,
    /// Wakes the fetcher early (unknown-kid refetch, or entry dropped).
    wake: Arc<Notify>,
}

#[derive(Default)]
struct FetchStatus {
    last_success: Option<SystemTime>,
    last_error: Option<String>,
}

struct RefetchState {
    in_flight: bool,
    last_on_demand: Option<Instant>,
}

impl JwksEntry {
    fn new(url: &str, timing: Timing) -> Self {
        JwksEntry {
            url: url.to_owned(),
            timing: Mutex::new(timing),
            keys: RwLock::new(Arc::new(Vec::new())),
            generation: AtomicU64::new(0),
            status: Mutex::new(FetchStatus::default()),
            // The fetcher starts at once: the first fetch is in flight from birth, so an early
            // request with a kid waits for it instead of starting another.
            refetch: Mutex::new(RefetchState {
                in_flight: true,
                last_on_demand: None,
            }),
            fetched: watch::Sender::new(0),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The last good key set (empty before the first successful fetch).
    pub(crate) fn keys(&self) -> Arc<Vec<VerifyKey>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The generation, then the key set: a token verified with these keys is cached with this
    /// generation. Read in this order, a concurrent refresh can only make the generation look
    /// older than the keys (an extra re-verification), never newer (a dropped key honoured).
    pub(crate) fn keys_with_generation(&self) -> (u64, Arc<Vec<VerifyKey>>) {
        let generation = self.generation();
        (generation, self.keys())
    }

    /// The current key-set generation (one atomic load: checked on every cache hit).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether a fetch has ever succeeded.
    pub(crate) fn is_ready(&self) -> bool {
        lock(&self.status).last_success.is_some()
    }

    /// A token names a kid we do not know: refetch, unless an on-demand refetch ran less than
    /// `min_refetch_interval` ago (kids are attacker-chosen; the IdP must not pay for them),
    /// and wait for the result, at most the fetch timeout. A fetch already running is waited
    /// for rather than duplicated.
    pub(crate) async fn refetch_for_unknown_kid(&self) {
        let timing = *lock(&self.timing);
        let mut fetched = {
            let mut state = lock(&self.refetch);
            // Subscribed under the lock that guards the bump, so the change we wait for is a
            // fetch that ends after this point.
            let fetched = self.fetched.subscribe();
            if !state.in_flight {
                let now = Instant::now();
                let recent = state
                    .last_on_demand
                    .is_some_and(|at| now.duration_since(at) < timing.min_refetch);
                if recent {
                    tracing::debug!(url = %self.url, "unknown kid: JWKS refetch rate-limited");
                    return;
                }
                state.last_on_demand = Some(now);
                state.in_flight = true;
                self.wake.notify_one();
            }
            fetched
        };
        let _ = tokio::time::timeout(timing.timeout, fetched.changed()).await;
    }

    fn status(&self) -> JwksStatus {
        let status = lock(&self.status);
        JwksStatus {
            url: self.url.clone(),
            key_count: self.keys().len(),
            last_success: status.last_success,
            last_error: status.last_error.clone(),
        }
    }

    /// Store the outcome of a fetch, release waiters; returns the event to report.
    fn record(&self, result: Result<Vec<VerifyKey>, String>) -> JwksEvent {
        let outcome = match result {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "JWKS fetched");
                let dropped = {
                    let mut current = self.keys.write().unwrap_or_else(PoisonError::into_inner);
                    let dropped = current
                        .iter()
                        .filter(|old| !keys.iter().any(|new| new.same_key(old)))
                        .count();
                    *current = Arc::new(keys);
                    dropped
                };
                if dropped > 0 {
                    // After the store: whoever sees the new generation also sees the new keys.
                    self.generation.fetch_add(1, Ordering::Release);
                    tracing::info!(url = %self.url, dropped, "JWKS refresh dropped or changed keys; cached tokens they verified are checked again");
                }
                let mut status = lock(&self.status);
                status.last_success = Some(SystemTime::now());
                status.last_error = None;
                JwksOutcome::Ok
            }
            Err(error) => {
                tracing::warn!(url = %self.url, %error, "JWKS fetch failed; the last good keys keep serving");
                lock(&self.status).last_error = Some(error);
                JwksOutcome::Error
            }
        };
        {
            let mut state = lock(&self.refetch);
            state.in_flight = false;
            self.fetched.send_modify(|n| *n = n.wrapping_add(1));
        }
        JwksEvent {
            url: self.url.clone(),
            outcome,
            key_count: self.keys().len(),
        }
    }
}

impl Drop for JwksEntry {
    fn drop(&mut self) {
        // Let the fetcher notice now rather than after its refresh sleep.
        self.wake.notify_one();
    }
}

/// First retry delay after a failed fetch.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Fetch, record, sleep until the refresh period (or the retry delay after a failure) or a
/// wake-up; until the entry is dropped.
async fn run_fetcher(
    entry: Weak<JwksEntry>,
    wake: Arc<Notify>,
    client: reqwest::Client,
    events: JwksEventSink,
) {
    // After a failure, retry sooner than the refresh period: 1s, doubling, capped at it. A
    // gateway that started while the IdP was down must become ready soon after the IdP is back,
    // not a whole refresh period later.
    let mut retry = FIRST_RETRY;
    loop {
        let (event, refresh) = {
            let Some(entry) = entry.upgrade() else { return };
            lock(&entry.refetch).in_flight = true;
            let timing = *lock(&entry.timing);
            let result = fetch(&client, &entry.url, timing.timeout).await;
            (entry.record(result), timing.refresh)
        };
        let pause = match event.outcome {
            JwksOutcome::Ok => {
                retry = FIRST_RETRY;
                refresh
            }
            JwksOutcome::Error => {
                let p = retry.min(refresh);
                retry = (retry * 2).min(refresh);
                p
            }
        };
        // The strong reference has ended: a sleeping fetcher keeps no entry alive, and whoever
        // reacts to the event sees the entry's true owners.
        events(event);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = wake.notified() => {}
        }
    }
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<Vec<VerifyKey>, String> {
    let mut response = client
        .get(url)
        .timeout(timeout)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let keys = keys::parse_jwks(&body, url)?;
    if keys.is_empty() {
        return Err("the JWKS holds no usable signing key".into());
    }
    Ok(keys)
}

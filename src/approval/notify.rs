//! Approval notifications: a webhook tells the humans that an agent's call waits for their
//! decision, or that one was decided.
//!
//! The request path only puts a notice in a bounded queue ([`Notifier::notify`]); a thread of
//! its own, with its own small tokio runtime, delivers it. Why its own: the gateway runs several
//! runtimes that come and go (pingora's services, the admin listener), and a notice queued just
//! before one of them shuts down must still go out. Why bounded: a receiver that is down must
//! cost the gateway a counter and a log line per notice, never memory without end.
//!
//! Delivery is an HTTP POST of the notice as JSON plus a Slack-compatible `text` line, retried
//! with exponential backoff on what may pass (connect errors, timeouts, 5xx, 429) and given up at
//! once on what will not (other 4xx).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Serialize;

use super::display::escape_line;
use crate::util::{error_chain, lock};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Semaphore};

/// How many notices may wait for delivery; past that, new ones are dropped and counted.
pub const QUEUE_CAPACITY: usize = 10_000;
/// How many deliveries run at once, so that one slow receiver does not hold up the rest.
pub const MAX_IN_FLIGHT: usize = 16;
/// The longest wait between two attempts, whatever the backoff or the receiver's Retry-After.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `event` of a notice sent when a call is held for approval.
pub const EVENT_REQUESTED: &str = "approval_requested";
/// `event` of a notice sent when a held call was approved, denied or expired.
pub const EVENT_DECIDED: &str = "approval_decided";

/// Where and how to notify; from gateway.yaml `approvals.webhook`.
///
/// `Debug` is written by hand so that header values, which are secrets (the receiver's auth
/// token, say), never reach a log line through `{:?}`.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The receiver's URL (http or https).
    pub url: String,
    /// Time limit of one attempt, from connect to response headers.
    pub timeout: Duration,
    /// Attempts per notice, the first included; 0 is taken as 1.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubled after each further one, up to [`MAX_BACKOFF`].
    pub initial_backoff: Duration,
    /// Extra request headers, such as an auth header for the receiver. Values are secrets.
    pub headers: Vec<(String, String)>,
}

impl WebhookConfig {
    /// A config for `url` with the defaults: 5 s per attempt, 5 attempts, 500 ms first backoff,
    /// no extra headers.
    pub fn new(url: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            timeout: Duration::from_secs(5),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            headers: Vec::new(),
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, _)| (name.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("WebhookConfig")
            .field("url", &redact_url(&self.url))
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("headers", &headers)
            .finish()
    }
}

/// What a notification says. Serialized as-is into the webhook body, next to a `text` line.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalNotice {
    /// [`EVENT_REQUESTED`] or [`EVENT_DECIDED`].
    pub event: &'static str,
    /// The pending approval's id, as the approvals API and console name it.
    pub approval_id: String,
    /// The agent whose call is held.
    pub agent: String,
    /// The agent's owner, as the config names them.
    pub owner: String,
    /// The route the call matched.
    pub route: String,
    /// HTTP method of the held call.
    pub method: String,
    /// Normalized path of the held call (what the upstream would receive).
    pub path: String,
    /// One human-readable sentence of what the call would do.
    pub summary: String,
    /// Who may decide.
    pub approvers: Vec<String>,
    /// Console URL for this approval.
    pub link: String,
    /// When the approval expires, RFC 3339.
    pub expires_at: String,
    /// The approval's status: pending, approved, denied, expired.
    pub status: String,
    /// Raw query string of the held call, if any.
    pub query: Option<String>,
}

/// What a webhook can carry: a JSON object (the notice's fields) plus a Slack-compatible `text`
/// line. Approval notices and monitoring alerts share this one sender.
pub trait Notice: Serialize + Send + Sync + 'static {
    /// What identifies the notice in log lines (an approval id, an alert id).
    fn log_id(&self) -> &str;
    /// The one-line Slack `text`.
    fn text(&self) -> String;
}

impl Notice for ApprovalNotice {
    fn log_id(&self) -> &str {
        &self.approval_id
    }
    fn text(&self) -> String {
        slack_text(self)
    }
}

/// Sends notices in the background, never blocking the request path.
///
/// Dropping it closes the queue: notices already queued are still delivered by its thread,
/// which then ends. Call [`Notifier::flush`] first to wait for them.
pub struct Notifier<N: Notice = ApprovalNotice> {
    state: State<N>,
    pending: Arc<Pending>,
    failures: IntCounter,
}

enum State<N: Notice> {
    /// No webhook configured: notices go nowhere, and that is not a failure.
    Disabled,
    /// A webhook is configured but cannot be used (bad URL or header, no thread): every notice
    /// is a failure, so that the counter shows it, not only the log line at start.
    Unavailable,
    /// The delivery thread's queue.
    Running(mpsc::Sender<Job<N>>),
}

impl<N: Notice> Notifier<N> {
    /// Spawns its delivery task on a dedicated thread with its own small tokio runtime (the
    /// gateway runs several runtimes that come and go; the notifier must not depend on the
    /// caller's). `failures`/`sent` are counters to increment.
    ///
    /// A config that cannot be used (invalid URL or header) is logged here, once, and each
    /// notice then counts as a failure; starting never fails and never panics.
    pub fn start(cfg: Option<WebhookConfig>, sent: IntCounter, failures: IntCounter) -> Self {
        let state = match cfg {
            None => State::Disabled,
            Some(cfg) => {
                let url = redact_url(&cfg.url);
                match spawn_worker(cfg, sent, failures.clone()) {
                    Ok(queue) => State::Running(queue),
                    Err(error) => {
                        tracing::error!(
                            url = %url,
                            error = %error,
                            "webhook unusable; notices will be counted as failures"
                        );
                        State::Unavailable
                    }
                }
            }
        };
        Notifier {
            state,
            pending: Arc::new(Pending::default()),
            failures,
        }
    }

    /// Queue a notice; returns immediately (bounded queue of [`QUEUE_CAPACITY`]; when full the
    /// notice is dropped, counted as a failure and logged).
    pub fn notify(&self, n: N) {
        let queue = match &self.state {
            State::Disabled => return,
            State::Unavailable => {
                self.failures.inc();
                tracing::warn!(
                    id = %n.log_id(),
                    "notice dropped: the webhook is unusable (see the error at start)"
                );
                return;
            }
            State::Running(queue) => queue,
        };
        // The job carries its own count, so whatever becomes of it (delivered, refused here,
        // dropped with the runtime) `flush` sees it gone exactly once.
        let job = Job {
            notice: n,
            _pending: self.pending.track(),
        };
        match queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                self.failures.inc();
                tracing::warn!(
                    id = %job.notice.log_id(),
                    capacity = QUEUE_CAPACITY,
                    "notice dropped: the notification queue is full"
                );
            }
            Err(TrySendError::Closed(job)) => {
                self.failures.inc();
                tracing::error!(
                    id = %job.notice.log_id(),
                    "notice dropped: the notification thread has stopped"
                );
            }
        }
    }

    /// For tests/shutdown: wait until the queue is empty and in-flight deliveries are done, at
    /// most `timeout`. True when everything queued before the call is done (delivered or given
    /// up); false when the time ran out first.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.pending.wait_idle(timeout)
    }
}

impl<N: Notice> fmt::Debug for Notifier<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Disabled => "disabled",
            State::Unavailable => "unavailable",
            State::Running(_) => "running",
        };
        f.debug_struct("Notifier")
            .field("state", &state)
            .field("pending", &*lock(&self.pending.count))
            .finish()
    }
}

/// A queued notice and its share of the pending count.
struct Job<N> {
    notice: N,
    _pending: PendingGuard,
}

/// Notices queued or in flight, for `flush`.
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Pending {
    fn track(self: &Arc<Self>) -> PendingGuard {
        *lock(&self.count) += 1;
        PendingGuard(Arc::clone(self))
    }

    fn wait_idle(&self, timeout: Duration) -> bool {
        // No deadline that far away is as good as none.
        let deadline = Instant::now().checked_add(timeout);
        let mut count = lock(&self.count);
        while *count > 0 {
            count = match deadline {
                None => self
                    .idle
                    .wait(count)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.idle
                        .wait_timeout(count, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        true
    }
}

struct PendingGuard(Arc<Pending>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut count = lock(&self.0.count);
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// Why a webhook config cannot be used. Header values are left out on purpose.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("invalid webhook URL: {0}")]
    Url(String),
    #[error("invalid webhook header {name:?} (name or value not allowed in HTTP)")]
    Header { name: String },
    #[error("cannot build the notification runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
    #[error("cannot spawn the notification thread: {0}")]
    Thread(std::io::Error),
}

fn spawn_worker<N: Notice>(
    cfg: WebhookConfig,
    sent: IntCounter,
    failures: IntCounter,
) -> Result<mpsc::Sender<Job<N>>, StartError> {
    // Built here rather than in the thread so that every error is reported by `start`.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let delivery = {
        // reqwest's client may look for a runtime while it is built.
        let _entered = runtime.enter();
        Arc::new(Delivery::new(cfg, sent, failures)?)
    };
    let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
    std::thread::Builder::new()
        .name("portcullis-notify".into())
        .spawn(move || runtime.block_on(run(jobs, delivery)))
        .map_err(StartError::Thread)?;
    Ok(queue)
}

/// The delivery thread's loop: until the Notifier is dropped, start each job as soon as one of
/// the [`MAX_IN_FLIGHT`] slots is free.
async fn run<N: Notice>(mut jobs: mpsc::Receiver<Job<N>>, delivery: Arc<Delivery>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        // A slot before a job: jobs that cannot start yet wait in the bounded queue, where
        // `notify` sees that it is full, not in an unbounded pile of spawned tasks.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let Some(job) = jobs.recv().await else {
            break;
        };
        let delivery = Arc::clone(&delivery);
        tokio::spawn(async move {
            delivery.deliver(&job.notice).await;
            drop(slot);
            // Dropped last, so `flush` returns only once this delivery is really over.
            drop(job);
        });
    }
    // The queue is closed and empty: let the deliveries under way finish before the runtime,
    // dropped with this thread, would cancel them.
    let _all = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// Everything one delivery needs, shared by all.
struct Delivery {
    client: reqwest::Client,
    url: Url,
    /// The URL as logs may show it (see [`redact_url`]).
    log_url: String,
    max_attempts: u32,
    initial_backoff: Duration,
    sent: IntCounter,
    failures: IntCounter,
}

impl Delivery {
    fn new(
        cfg: WebhookConfig,
        sent: IntCounter,
        failures: IntCounter,
    ) -> Result<Delivery, StartError> {
        let url = Url::parse(&cfg.url).map_err(|e| StartError::Url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(StartError::Url(format!(
                "scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let bad = || StartError::Header { name: name.clone() };
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            let mut value = HeaderValue::from_str(value).map_err(|_| bad())?;
            // Keeps it out of `Debug` output and out of HTTP/2 header compression tables.
            value.set_sensitive(true);
            headers.append(header, value);
        }
        // After the configured ones, so that the body is always declared as what it is.
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let client = reqwest::Client::builder()
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .timeout(cfg.timeout)
            // A redirect would carry the configured (secret) headers to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StartError::Client(error_chain(&e)))?;
        Ok(Delivery {
            client,
            log_url: redact_url(&cfg.url),
            url,
            max_attempts: cfg.max_attempts.max(1),
            initial_backoff: cfg.initial_backoff,
            sent,
            failures,
        })
    }

    /// Delivers one notice, retrying as the module doc says; counts and logs the outcome.
    async fn deliver<N: Notice>(&self, notice: &N) {
        let body = match serde_json::to_vec(&Body {
            notice,
            text: notice.text(),
        }) {
            Ok(body) => body,
            Err(error) => {
                self.failures.inc();
                tracing::warn!(id = %notice.log_id(), error = %error,
                    "notice not delivered: cannot encode it");
                return;
            }
        };
        let mut attempt = 0;
        let last_error = loop {
            attempt += 1;
            let error = match self.attempt(body.clone()).await {
                Ok(()) => {
                    self.sent.inc();
                    tracing::debug!(id = %notice.log_id(), attempt,
                        "notice delivered");
                    return;
                }
                Err(error) => error,
            };
            if !error.is_retryable() || attempt >= self.max_attempts {
                break error;
            }
            let wait = retry_delay(self.initial_backoff, attempt, error.retry_after());
            tracing::debug!(id = %notice.log_id(), attempt, error = %error,
                wait_ms = wait.as_millis() as u64, "notice attempt failed; will retry");
            tokio::time::sleep(wait).await;
        };
        self.failures.inc();
        tracing::warn!(
            id = %notice.log_id(),
            url = %self.log_url,
            attempts = attempt,
            error = %last_error,
            "notice not delivered"
        );
    }

    async fn attempt(&self, body: Vec<u8>) -> Result<(), AttemptError> {
        let response = self
            .client
            .post(self.url.clone())
            .body(body)
            .send()
            .await
            // The URL may hold a secret (see `redact_url`); the error must not carry it.
            .map_err(|e| AttemptError::from_reqwest(e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Err(AttemptError::Busy {
                status,
                retry_after: retry_after(response.headers()),
            })
        } else {
            // Other 4xx (and 3xx, since redirects are not followed): asking again will not help.
            Err(AttemptError::Refused { status })
        }
    }
}

/// What is POSTed: the notice's fields plus Slack's `text`.
#[derive(Serialize)]
struct Body<'a, N> {
    #[serde(flatten)]
    notice: &'a N,
    text: String,
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("receiver answered {status}")]
    Busy {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    #[error("receiver answered {status}")]
    Refused { status: StatusCode },
    /// Connect error, timeout, broken connection: the receiver may be back soon.
    #[error("{0}")]
    Transport(String),
    /// The request could not even be built: the same one will fail again.
    #[error("{0}")]
    Request(String),
}

impl AttemptError {
    fn from_reqwest(error: reqwest::Error) -> AttemptError {
        if error.is_builder() {
            AttemptError::Request(error_chain(&error))
        } else {
            AttemptError::Transport(error_chain(&error))
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            AttemptError::Busy { .. } | AttemptError::Transport(_) => true,
            AttemptError::Refused { .. } | AttemptError::Request(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Busy { retry_after, .. } => *retry_after,
            AttemptError::Refused { .. }
            | AttemptError::Transport(_)
            | AttemptError::Request(_) => None,
        }
    }
}

/// Retry-After in whole seconds (the HTTP-date form is ignored: the backoff applies then).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// The wait after failed attempt number `attempt` (1-based): `initial` doubled per attempt, or
/// the receiver's Retry-After when longer, capped at [`MAX_BACKOFF`], plus up to 10% jitter so
/// that notices failed together do not all come back together.
fn retry_delay(initial: Duration, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let wait = backoff(initial, attempt)
        .max(retry_after.unwrap_or(Duration::ZERO))
        .min(MAX_BACKOFF);
    wait + wait.mul_f64(random_fraction() / 10.0)
}

/// `initial * 2^(attempt-1)`, capped at [`MAX_BACKOFF`], without overflow.
fn backoff(initial: Duration, attempt: u32) -> Duration {
    let factor = 2u32
        .checked_pow(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(MAX_BACKOFF)
}

/// A number in [0, 1), good enough for jitter: each `RandomState` has fresh keys, and hashing
/// with them gives well-spread bits without a dependency on a random-number crate.
fn random_fraction() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// The Slack-compatible line: who wants what, and where to decide.
fn slack_text(n: &ApprovalNotice) -> String {
    let agent = slack_escape(&n.agent);
    let owner = slack_escape(&n.owner);
    let method = slack_escape(&n.method);
    let path = match &n.query {
        Some(q) => slack_escape(&format!("{}?{q}", n.path)),
        None => slack_escape(&n.path),
    };
    let route = slack_escape(&n.route);
    let link = slack_link(&n.link);
    if n.event == EVENT_DECIDED {
        format!(
            ":ballot_box_with_check: {agent} (owner {owner}): {method} {path} via route {route} \
             is {status}. Details: <{link}|approval {id}>",
            status = slack_escape(&n.status),
            id = slack_escape(&n.approval_id),
        )
    } else {
        format!(
            ":lock: {agent} (owner {owner}) wants {method} {path} via route {route}. \
             Approve or deny before {expires}: <{link}|{link}>",
            expires = slack_escape(&n.expires_at),
        )
    }
}

/// Slack's three control characters, escaped as Slack asks, and control, bidi and invisible
/// characters shown as visible escapes ([`escape_line`], shared with the CLI): the path and
/// agent name come from the agent, which must not be able to forge a link or a line, or make
/// text read differently from what it is, in a message that humans act on.
pub(crate) fn slack_escape(text: &str) -> String {
    let text = escape_line(text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The link inside `<url|label>`: the characters that would end it are percent-encoded, which
/// leaves the URL meaning the same.
fn slack_link(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for c in url.chars() {
        match c {
            '<' => out.push_str("%3C"),
            '>' => out.push_str("%3E"),
            '|' => out.push_str("%7C"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The webhook URL as logs show it: scheme, host and port only. Webhook URLs often carry their
/// secret in the path or query (Slack's incoming webhooks do), and user info is a password.
fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) => {
            let host = parsed.host_str().unwrap_or("");
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = if parsed.path() == "/" && parsed.query().is_none() {
                ""
            } else {
                "/…"
            };
            format!("{}://{host}{port}{rest}", parsed.scheme())
        }
        Err(_) => "<invalid URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    //! Against real receivers: axum on 127.0.0.1, answering as each test scripts it.

    use super::*;
    use axum::body::Bytes;
    use axum::extract::State as AxumState;
    use axum::response::{IntoResponse, Response};
    use std::net::SocketAddr;

    /// What the receiver saw of one request.
    struct Hit {
        headers: HeaderMap,
        body: Vec<u8>,
        at: Instant,
    }

    /// How the receiver answers: `statuses[i]` to the i-th request, the last one after that.
    #[derive(Clone)]
    struct Script {
        statuses: Vec<u16>,
        retry_after: Option<&'static str>,
        delay: Duration,
    }

    impl Script {
        fn statuses(statuses: &[u16]) -> Script {
            Script {
                statuses: statuses.to_vec(),
                retry_after: None,
                delay: Duration::ZERO,
            }
        }
    }

    struct Receiver {
        addr: SocketAddr,
        script: Script,
        hits: Mutex<Vec<Hit>>,
    }

    impl Receiver {
        fn url(&self) -> String {
            format!("http://{}/hook/secret-token", self.addr)
        }

        fn hit_count(&self) -> usize {
            lock(&self.hits).len()
        }
    }

    async fn receiver(script: Script) -> Arc<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let recv = Arc::new(Receiver {
            addr: listener.local_addr().unwrap(),
            script,
            hits: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/hook/secret-token", axum::routing::post(handle))
            .with_state(Arc::clone(&recv));
        tokio::spawn(async move { axum::serve(listener, app).await });
        recv
    }

    async fn handle(
        AxumState(recv): AxumState<Arc<Receiver>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let index = {
            let mut hits = lock(&recv.hits);
            hits.push(Hit {
                headers,
                body: body.to_vec(),
                at: Instant::now(),
            });
            hits.len() - 1
        };
        if !recv.script.delay.is_zero() {
            tokio::time::sleep(recv.script.delay).await;
        }
        let script = &recv.script;
        let code = script.statuses.get(index).or(script.statuses.last());
        let status = StatusCode::from_u16(*code.unwrap_or(&200)).unwrap();
        let mut response = (status, "ok").into_response();
        if let Some(seconds) = script.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }

    fn config(url: String, max_attempts: u32) -> WebhookConfig {
        WebhookConfig {
            url,
            timeout: Duration::from_secs(2),
            max_attempts,
            initial_backoff: Duration::from_millis(20),
            headers: Vec::new(),
        }
    }

    struct Counters {
        sent: IntCounter,
        failures: IntCounter,
    }

    fn start(cfg: Option<WebhookConfig>) -> (Notifier, Counters) {
        let sent = IntCounter::new("sent", "sent").unwrap();
        let failures = IntCounter::new("failures", "failures").unwrap();
        let counters = Counters {
            sent: sent.clone(),
            failures: failures.clone(),
        };
        (Notifier::start(cfg, sent, failures), counters)
    }

    /// `flush` blocks its thread; the receivers run on the test's runtime, so let it move.
    fn flush(notifier: &Notifier, timeout: Duration) -> bool {
        tokio::task::block_in_place(|| notifier.flush(timeout))
    }

    fn notice(id: &str) -> ApprovalNotice {
        ApprovalNotice {
            event: EVENT_REQUESTED,
            approval_id: id.into(),
            agent: "support-bot".into(),
            owner: "alice@example.com".into(),
            route: "tickets-delete".into(),
            method: "DELETE".into(),
            path: "/api/tickets/42".into(),
            summary: "Delete ticket 42".into(),
            approvers: vec!["alice@example.com".into(), "sre-oncall".into()],
            link: format!("https://gw.example.com/console/approvals/{id}"),
            expires_at: "2030-01-01T00:15:00Z".into(),
            status: "pending".into(),
            query: None,
        }
    }

    const FLUSH: Duration = Duration::from_secs(10);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_once_with_the_exact_json_and_a_readable_text() {
        let recv = receiver(Script::statuses(&[200])).await;
        let (notifier, counters) = start(Some(config(recv.url(), 3)));
        notifier.notify(notice("ap-1"));
        assert!(flush(&notifier, FLUSH));

        let hits = lock(&recv.hits);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].headers[CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(&hits[0].body).unwrap();
        let text = body["text"].as_str().unwrap().to_owned();
        let expected = serde_json::json!({
            "event": "approval_requested",
            "approval_id": "ap-1",
            "agent": "support-bot",
            "owner": "alice@example.com",
            "route": "tickets-delete",
            "method": "DELETE",
            "path": "/api/tickets/42",
            "summary": "Delete ticket 42",
            "approvers": ["alice@example.com", "sre-oncall"],
            "link": "https://gw.example.com/console/approvals/ap-1",
            "expires_at": "2030-01-01T00:15:00Z",
            "status": "pending",
            "query": null,
            "text": text,
        });
        assert_eq!(body, expected);
        for part in [
            "support-bot",
            "alice@example.com",
            "DELETE",
            "/api/tickets/42",
            "https://gw.example.com/console/approvals/ap-1",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text:?}");
        }
        assert!(!text.contains('\n'));
        assert_eq!((counters.sent.get(), counters.failures.get()), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sends_the_configured_headers() {
        let recv = receiver(Script::statuses(&[200])).await;
        let mut cfg = config(recv.url(), 1);
        cfg.headers = vec![
            ("Authorization".into(), "Bearer s3cret".into()),
            ("X-Portcullis-Env".into(), "staging".into()),
            // Must not turn the body into something else.
            ("Content-Type".into(), "text/plain".into()),
        ];
        let (notifier, counters) = start(Some(cfg));
        notifier.notify(notice("ap-h"));
        assert!(flush(&notifier, FLUSH));

        let hits = lock(&recv.hits);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].headers["authorization"], "Bearer s3cret");
        assert_eq!(hits[0].headers["x-portcullis-env"], "staging");
        assert_eq!(hits[0].headers[CONTENT_TYPE], "application/json");
        assert_eq!(counters.sent.get(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_server_errors_with_growing_backoff() {
        let recv = receiver(Script::statuses(&[500, 500, 200])).await;
        let (notifier, counters) = start(Some(config(recv.url(), 5)));
        notifier.notify(notice("ap-r"));
        assert!(flush(&notifier, FLUSH));

        let hits = lock(&recv.hits);
        assert_eq!(hits.len(), 3);
        // 20 ms, then 40 ms (jitter only adds).
        assert!(hits[1].at - hits[0].at >= Duration::from_millis(20));
        assert!(hits[2].at - hits[1].at >= Duration::from_millis(40));
        assert_eq!((counters.sent.get(), counters.failures.get()), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gives_up_after_max_attempts() {
        let recv = receiver(Script::statuses(&[500])).await;
        let (notifier, counters) = start(Some(config(recv.url(), 3)));
        notifier.notify(notice("ap-500"));
        assert!(flush(&notifier, FLUSH));

        assert_eq!(recv.hit_count(), 3);
        assert_eq!((counters.sent.get(), counters.failures.get()), (0, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_errors_are_not_retried() {
        let recv = receiver(Script::statuses(&[400])).await;
        let (notifier, counters) = start(Some(config(recv.url(), 5)));
        notifier.notify(notice("ap-400"));
        assert!(flush(&notifier, FLUSH));

        assert_eq!(recv.hit_count(), 1);
        assert_eq!((counters.sent.get(), counters.failures.get()), (0, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn too_many_requests_honours_retry_after() {
        let recv = receiver(Script {
            statuses: vec![429, 200],
            retry_after: Some("1"),
            delay: Duration::ZERO,
        })
        .await;
        let (notifier, counters) = start(Some(config(recv.url(), 3)));
        notifier.notify(notice("ap-429"));
        assert!(flush(&notifier, FLUSH));

        let hits = lock(&recv.hits);
        assert_eq!(hits.len(), 2);
        assert!(hits[1].at - hits[0].at >= Duration::from_secs(1));
        assert_eq!((counters.sent.get(), counters.failures.get()), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn receiver_down_is_a_failure_after_the_attempts() {
        // A port that was just free and is closed now: connections are refused.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (notifier, counters) = start(Some(config(format!("http://{addr}/hook"), 3)));
        let started = Instant::now();
        notifier.notify(notice("ap-down"));
        assert!(flush(&notifier, FLUSH));

        // Two waits between three attempts: 20 ms + 40 ms at least.
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert_eq!((counters.sent.get(), counters.failures.get()), (0, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notify_returns_at_once_when_the_receiver_hangs() {
        let recv = receiver(Script {
            statuses: vec![200],
            retry_after: None,
            delay: Duration::from_secs(60),
        })
        .await;
        let mut cfg = config(recv.url(), 1);
        cfg.timeout = Duration::from_millis(300);
        let (notifier, counters) = start(Some(cfg));
        // More than the in-flight slots, so some wait in the queue.
        for i in 0..(MAX_IN_FLIGHT * 2) {
            let n = notice(&format!("ap-hang-{i}"));
            let started = Instant::now();
            notifier.notify(n);
            let took = started.elapsed();
            assert!(took < Duration::from_millis(50), "notify took {took:?}");
        }
        // They all time out and count as failures; none is lost or hangs for good.
        assert!(flush(&notifier, FLUSH));
        assert_eq!(counters.failures.get(), (MAX_IN_FLIGHT * 2) as u64);
        assert!(recv.hit_count() >= MAX_IN_FLIGHT);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_waits_for_delivery() {
        let recv = receiver(Script {
            statuses: vec![200],
            retry_after: None,
            delay: Duration::from_millis(300),
        })
        .await;
        let (notifier, counters) = start(Some(config(recv.url(), 1)));
        notifier.notify(notice("ap-slow"));
        assert!(!flush(&notifier, Duration::from_millis(20)), "too early");
        assert_eq!(counters.sent.get(), 0);
        assert!(flush(&notifier, FLUSH));
        assert_eq!((counters.sent.get(), counters.failures.get()), (1, 0));
        assert_eq!(recv.hit_count(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_and_counts() {
        let recv = receiver(Script {
            statuses: vec![200],
            retry_after: None,
            delay: Duration::from_secs(60),
        })
        .await;
        let mut cfg = config(recv.url(), 1);
        cfg.timeout = Duration::from_secs(60);
        let (notifier, counters) = start(Some(cfg));
        let extra = 100;
        for i in 0..(QUEUE_CAPACITY + extra) {
            notifier.notify(notice(&format!("ap-full-{i}")));
        }
        // The delivery thread takes at most MAX_IN_FLIGHT out of the queue while all hang.
        let dropped = counters.failures.get();
        assert!(
            ((extra - MAX_IN_FLIGHT) as u64..=extra as u64).contains(&dropped),
            "dropped {dropped}"
        );
        assert_eq!(counters.sent.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_webhook_notify_does_nothing() {
        let (notifier, counters) = start(None);
        notifier.notify(notice("ap-none"));
        assert!(flush(&notifier, Duration::ZERO));
        assert_eq!((counters.sent.get(), counters.failures.get()), (0, 0));
    }

    #[test]
    fn an_unusable_webhook_counts_every_notice_as_a_failure() {
        let mut bad_header = WebhookConfig::new("http://127.0.0.1:9/hook");
        bad_header.headers = vec![("Authorization".into(), "Bearer a\nb".into())];
        for cfg in [
            WebhookConfig::new("not a url"),
            WebhookConfig::new("ftp://example.com/hook"),
            bad_header,
        ] {
            let (notifier, counters) = start(Some(cfg));
            notifier.notify(notice("ap-bad"));
            notifier.notify(notice("ap-bad-2"));
            assert!(notifier.flush(Duration::ZERO));
            assert_eq!((counters.sent.get(), counters.failures.get()), (0, 2));
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let initial = Duration::from_millis(500);
        let waits: Vec<u64> = (1..=8)
            .map(|a| backoff(initial, a).as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(backoff(initial, u32::MAX), MAX_BACKOFF);
        for attempt in 1..=10 {
            let wait = retry_delay(initial, attempt, None);
            let base = backoff(initial, attempt);
            assert!(wait >= base && wait <= base + base / 10, "{wait:?}");
        }
        // Retry-After wins when longer, within the cap.
        let wait = retry_delay(initial, 1, Some(Duration::from_secs(3)));
        assert!(wait >= Duration::from_secs(3) && wait < Duration::from_secs(4));
        let wait = retry_delay(initial, 1, Some(Duration::from_secs(3600)));
        assert!(wait >= MAX_BACKOFF && wait <= MAX_BACKOFF + MAX_BACKOFF / 10);
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let date = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        headers.insert(RETRY_AFTER, date);
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn text_cannot_be_forged_by_the_agent() {
        let mut n = notice("ap-x");
        n.agent = "bot <https://evil.example|click here> & co".into();
        n.path = "/a\nApproved by admin".into();
        n.link = "https://gw.example.com/console?id=1|x>".into();
        let text = slack_text(&n);
        assert!(
            text.contains("bot &lt;https://evil.example|click here&gt; &amp; co"),
            "{text}"
        );
        assert!(text.contains("/a\\nApproved by admin"), "{text}");
        assert!(text.contains("<https://gw.example.com/console?id=1%7Cx%3E|"));
        assert!(!text.contains('\n'));

        // Bidi overrides and invisible characters are shown, not obeyed.
        n.path = "/api/users/\u{202e}nimda".into();
        n.query = Some("to=\u{2066}evil\u{2069}&x=\u{200b}".into());
        let text = slack_text(&n);
        assert!(
            text.contains("/api/users/\\u{202e}nimda?to=\\u{2066}evil\\u{2069}&amp;x=\\u{200b}"),
            "{text}"
        );

        n.event = EVENT_DECIDED;
        n.status = "denied".into();
        let text = slack_text(&n);
        assert!(
            text.contains("is denied") && text.contains("approval ap-x"),
            "{text}"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_and_log_urls() {
        let mut cfg =
            WebhookConfig::new("https://user:pw@hooks.example.com:8443/services/T0/B0/XYZ");
        cfg.headers = vec![("Authorization".into(), "Bearer s3cret".into())];
        let debug = format!("{cfg:?}");
        assert!(debug.contains("Authorization") && debug.contains("<redacted>"));
        for secret in ["s3cret", "XYZ", "pw"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert_eq!(
            redact_url("https://user:pw@hooks.example.com:8443/services/T0/B0/XYZ?k=v"),
            "https://hooks.example.com:8443/…"
        );
        assert_eq!(redact_url("http://127.0.0.1:80/"), "http://127.0.0.1");
        assert_eq!(redact_url("::"), "<invalid URL>");
    }

    #[test]
    fn notifier_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Notifier>();
    }
}

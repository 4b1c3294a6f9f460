//! Process-wide state shared by the proxy, the admin listener and the reloaders: the current
//! [`Snapshot`] behind one `ArcSwap`, metrics, the access log, and the drain bookkeeping.
//! Runtime counters live in submodules behind traits ([`limits`]).

pub mod agent_state;
pub mod limits;
pub mod mcp;
pub mod pg_agent_state;
pub mod redis_limits;
pub mod redis_sync;
pub mod shared;

use crate::approval::executor::Executor;
use crate::approval::ApprovalService;
use crate::config::{load_file, ConfigError, LoadContext};
use crate::identity::{JwksEvent, JwksOutcome, KeyStore};
use crate::observe::{AccessLog, Metrics};
use crate::policy::Snapshot;
use crate::util::lock;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Everything the gateway's parts share.
pub struct GatewayState {
    /// The configuration in force. Each request loads it once and keeps that version.
    pub snapshot: ArcSwap<Snapshot>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Access log writer.
    pub access_log: Arc<AccessLog>,
    /// JWKS fetchers, shared across reloads.
    pub key_store: Arc<KeyStore>,
    /// The file the config came from.
    pub config_path: PathBuf,
    /// Requests in flight (for draining).
    pub in_flight: AtomicUsize,
    /// Set on SIGTERM: readiness fails and connections are not kept alive.
    pub draining: AtomicBool,
    /// The proxy addresses bound at start (a reload cannot rebind them).
    proxy_listen: Vec<SocketAddr>,
    /// Set once every proxy listener has accepted a probe connection; see
    /// [`GatewayState::probe_proxy_listeners`].
    proxy_accepting: AtomicBool,
    /// Human approvals, when configured.
    pub approvals: ArcSwapOption<ApprovalService>,
    /// Forwards approved calls.
    pub executor: Executor,
    /// Rate and volume counters. Outside the snapshot: a reload does not reset a budget.
    pub limits: Arc<dyn limits::LimitStore>,
    /// Runtime agent state (kill switch, interventions). Outside the snapshot: a reload never
    /// un-pauses an agent.
    pub agent_state: Arc<dyn agent_state::AgentStateStore>,
    /// Anomaly detection: the queue the proxy feeds and the detectors' state.
    pub monitor: crate::observe::monitor::MonitorHandle,
    /// MCP sessions (which agent opened each) and tool-definition pins.
    pub mcp: mcp::McpState,
    /// `state.backend: shared`: the stores shared with the other replicas.
    pub shared: Option<Arc<shared::SharedState>>,
    /// This process among the replicas (a random id per start): held approvals are recorded
    /// as its, so another replica can settle them if it dies.
    pub holder: String,
    /// `tracing:` the OpenTelemetry tracer (`None`: tracing off).
    pub tracer: Option<Arc<crate::observe::trace::CallTracer>>,
    next_version: AtomicU64,
    reload_lock: Mutex<()>,
    last_reload_error: Mutex<Option<String>>,
}

/// Build the process-wide key store, reporting JWKS outcomes into `metrics`.
pub fn new_key_store(metrics: &Arc<Metrics>) -> Arc<KeyStore> {
    let m = metrics.clone();
    KeyStore::new(Arc::new(move |ev: JwksEvent| {
        let outcome = match ev.outcome {
            JwksOutcome::Ok => "success",
            JwksOutcome::Error => "failure",
        };
        m.jwks_refresh.with_label_values(&[&ev.url, outcome]).inc();
        if matches!(ev.outcome, JwksOutcome::Ok) {
            m.jwks_keys
                .with_label_values(&[&ev.url])
                .set(ev.key_count as i64);
        }
    }))
}

impl GatewayState {
    /// Load `config_path` for the first time.
    pub fn load(
        config_path: &Path,
        metrics: Arc<Metrics>,
        key_store: Arc<KeyStore>,
        access_log: Arc<AccessLog>,
        first: Snapshot,
        agent_state: Arc<dyn agent_state::AgentStateStore>,
    ) -> GatewayState {
        metrics.config_version.set(first.version as i64);
        let next = first.version + 1;
        let baselines = match agent_state.load_blob(crate::observe::monitor::BASELINE_KEY) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read monitoring baselines; starting from scratch");
                None
            }
        };
        let monitor = crate::observe::monitor::MonitorHandle::new(
            first.monitoring.clone(),
            baselines.as_ref(),
        );
        // Validated as `ip:port` by the config compiler.
        let proxy_listen = first
            .settings
            .proxy_listen
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        GatewayState {
            snapshot: ArcSwap::from_pointee(first),
            metrics,
            access_log,
            key_store,
            config_path: config_path.to_path_buf(),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            proxy_listen,
            proxy_accepting: AtomicBool::new(false),
            approvals: ArcSwapOption::empty(),
            executor: Executor::new(),
            limits: Arc::new(limits::InProcessLimitStore::new()),
            mcp: mcp::McpState::load(agent_state.clone()),
            agent_state,
            shared: None,
            holder: uuid::Uuid::new_v4().to_string(),
            tracer: None,
            monitor,
            next_version: AtomicU64::new(next),
            reload_lock: Mutex::new(()),
            last_reload_error: Mutex::new(None),
        }
    }

    /// Use the replicas' shared stores: their limits, and approvals in PostgreSQL. (Agent
    /// state was given to [`GatewayState::load`] already: `shared.agents`.)
    pub fn with_shared(mut self, shared: Arc<shared::SharedState>, holder: String) -> Self {
        self.limits = shared.limits.clone();
        self.shared = Some(shared);
        self.holder = holder;
        self
    }

    /// Trace sampled calls with `tracer`.
    pub fn with_tracer(mut self, tracer: crate::observe::trace::CallTracer) -> Self {
        self.tracer = Some(Arc::new(tracer));
        self
    }

    /// What monitoring saw of `agent` (last seen, calls and denials in 24 h, anomalies), for
    /// the inventory; `None` when monitoring is off.
    pub fn agent_activity(&self, agent: &str) -> Option<serde_json::Value> {
        if !self.snapshot.load().monitoring.any_on() {
            return None;
        }
        self.monitor.activity(agent)
    }

    /// Parse → validate → compile → swap. On any error the old snapshot keeps serving, the
    /// error is logged and `portcullis_config_last_reload_success` drops to 0.
    ///
    /// Blocking (file I/O, DNS): call from a blocking context.
    pub fn reload(&self, trigger: &str) -> Result<Arc<Snapshot>, ConfigError> {
        // One reload at a time, so versions are assigned and swapped in order.
        let _g = lock(&self.reload_lock);
        let ctx = LoadContext::new(
            self.key_store.clone(),
            self.next_version.load(Ordering::SeqCst),
        );
        match load_file(&self.config_path, &ctx) {
            Ok(new) => {
                let old = self.snapshot.load();
                if new.settings.proxy_listen != old.settings.proxy_listen
                    || new.settings.admin_listen != old.settings.admin_listen
                    || new.settings.threads != old.settings.threads
                    || new.settings.work_stealing != old.settings.work_stealing
                    || new.settings.access_log != old.settings.access_log
                    || new.settings.state_store != old.settings.state_store
                    || new.settings.tracing != old.settings.tracing
                {
                    tracing::warn!(
                        "listeners, threads, work_stealing, access_log, state.store and tracing changed in the file; they take effect at the next restart"
                    );
                }
                if let Err(e) = self.ensure_approvals(&new) {
                    self.metrics
                        .config_reloads
                        .with_label_values(&["failure"])
                        .inc();
                    self.metrics.config_last_reload_ok.set(0);
                    let msg = format!("cannot open the approval store: {e}");
                    *lock(&self.last_reload_error) = Some(msg.clone());
                    tracing::error!(trigger, error = %msg, "configuration reload refused; the previous configuration keeps serving");
                    return Err(ConfigError::Invalid {
                        file: self.config_path.display().to_string(),
                        issues: vec![crate::config::Issue {
                            path: "approvals.store".into(),
                            line: None,
                            kind: crate::config::IssueKind::Invalid(msg),
                        }],
                    });
                }
                let new = Arc::new(new);
                self.next_version.fetch_add(1, Ordering::SeqCst);
                self.snapshot.store(new.clone());
                // Unlike the destination, the cap applies at once.
                self.access_log
                    .set_max_field_bytes(new.settings.access_log_max_field_bytes);
                self.metrics.config_version.set(new.version as i64);
                self.metrics
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                self.metrics.config_last_reload_ok.set(1);
                *lock(&self.last_reload_error) = None;
                tracing::info!(trigger, version = new.version, digest = %new.digest, "configuration reloaded");
                Ok(new)
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
                self.metrics.config_last_reload_ok.set(0);
                *lock(&self.last_reload_error) = Some(e.to_string());
                tracing::error!(trigger, error = %e, "configuration reload refused; the previous configuration keeps serving");
                Err(e)
            }
        }
    }

    /// Open the approval service when `snap` configures approvals and none is open for its
    /// store yet (first start, or approvals added / store moved by a reload).
    pub fn ensure_approvals(
        &self,
        snap: &Snapshot,
    ) -> Result<(), crate::approval::store::StoreError> {
        let Some(settings) = &snap.approvals else {
            return Ok(());
        };
        if let Some(cur) = self.approvals.load_full() {
            if cur.store_path() == settings.store_path {
                return Ok(());
            }
        }
        let pg = snap
            .settings
            .shared_state
            .as_ref()
            .filter(|_| self.shared.is_some())
            .map(|s| shared::approval_store_options(s, &self.holder));
        let svc = ApprovalService::open(
            settings,
            pg.as_ref(),
            self.metrics.clone(),
            self.access_log.clone(),
        )?;
        self.approvals.store(Some(Arc::new(svc)));
        Ok(())
    }

    /// The error of the last failed reload, if the last attempt failed.
    pub fn last_reload_error(&self) -> Option<String> {
        lock(&self.last_reload_error).clone()
    }

    /// Update scrape-time gauges (JWKS key age).
    pub fn refresh_gauges(&self) {
        let now = SystemTime::now();
        for s in self.key_store.status() {
            if let Some(t) = s.last_success {
                let age = now
                    .duration_since(t)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                self.metrics
                    .jwks_key_age
                    .with_label_values(&[&s.url])
                    .set(age);
            }
        }
    }

    /// Ready = every proxy listener accepting, keys loaded for every issuer, and not draining;
    /// `Err` says what is missing. Call [`GatewayState::probe_proxy_listeners`] first.
    ///
    /// The shared stores do not make a replica unready: an outage reaches every replica alike,
    /// and unready replicas everywhere would refuse even the routes that fail open. `/readyz`
    /// reports them instead ([`shared::SharedState::report`]).
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("draining: the gateway is shutting down".into());
        }
        if !self.proxy_accepting.load(Ordering::Acquire) {
            return Err("the proxy listener is not accepting connections yet".into());
        }
        let snap = self.snapshot.load();
        if !snap.verifier.is_ready() {
            return Err("signing keys are not loaded yet for every issuer".into());
        }
        Ok(())
    }

    /// Connect once to every proxy listener until all have answered, then remember it.
    ///
    /// pingora reports its listening service started before the service's task has bound the
    /// socket, so "process up" does not mean "proxy port open": a readiness probe (or an agent)
    /// arriving in that gap would be refused. The probe connection closes without sending a
    /// byte, which pingora treats as a quiet client hang-up. A wildcard address is probed on the
    /// loopback address of its family.
    pub async fn probe_proxy_listeners(&self) {
        if self.proxy_accepting.load(Ordering::Acquire) {
            return;
        }
        for addr in &self.proxy_listen {
            let mut target = *addr;
            if target.ip().is_unspecified() {
                target.set_ip(match target {
                    SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            let connect = tokio::net::TcpStream::connect(target);
            if !matches!(
                tokio::time::timeout(Duration::from_millis(500), connect).await,
                Ok(Ok(_))
            ) {
                return;
            }
        }
        self.proxy_accepting.store(true, Ordering::Release);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::load_str;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A state for unit tests: one agent `bot`, one catch-all route, proxy listeners `proxy`.
    pub(crate) fn state_listening_on(proxy: &[String]) -> GatewayState {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json");
        let yaml = format!(
            "listen:\n  proxy: {proxy:?}\n  admin: 127.0.0.1:{admin}\n\
             issuers:\n  - name: idp\n    issuer: https://idp.example.test\n    audiences: [tools]\n    algorithms: [ES256]\n    jwks_file: {keys}\n\
             agents:\n  - id: bot\n    owner: alice@example.com\n    scopes: [t:read]\n\
             upstreams:\n  - name: up\n    url: http://127.0.0.1:9/\n\
             routes:\n  - name: all\n    path: /**\n    upstream: up\n    scopes: [t:read]\n",
            admin = free_port(),
        );
        let metrics = Arc::new(Metrics::new());
        let key_store = new_key_store(&metrics);
        let ctx = LoadContext::new(key_store.clone(), 1);
        let first = load_str(&yaml, Path::new("."), "<test>", &ctx).expect("valid config");
        let log = Arc::new(AccessLog::start(None, metrics.clone()).unwrap());
        GatewayState::load(
            Path::new("gateway.yaml"),
            metrics,
            key_store,
            log,
            first,
            Arc::new(agent_state::SqliteAgentState::in_memory()),
        )
    }

    #[tokio::test]
    async fn not_ready_until_every_proxy_listener_accepts() {
        let (p1, p2) = (free_port(), free_port());
        let state = state_listening_on(&[format!("127.0.0.1:{p1}"), format!("0.0.0.0:{p2}")]);

        state.probe_proxy_listeners().await;
        let err = state.readiness().unwrap_err();
        assert!(err.contains("proxy listener"), "{err}");

        let _first = tokio::net::TcpListener::bind(("127.0.0.1", p1))
            .await
            .unwrap();
        state.probe_proxy_listeners().await;
        assert!(
            state.readiness().is_err(),
            "one of two listeners is not enough"
        );

        // The wildcard listener is probed on loopback.
        let _second = tokio::net::TcpListener::bind(("0.0.0.0", p2))
            .await
            .unwrap();
        state.probe_proxy_listeners().await;
        assert_eq!(state.readiness(), Ok(()));
    }
}

//! Assembles and runs the gateway process: pingora server, proxy and admin services, reload
//! triggers (SIGHUP, file changes) and the draining shutdown.

use crate::admin::AdminService;
use crate::config::{load_file, LoadContext};
use crate::observe::{AccessLog, Metrics};
use crate::policy::snapshot::redact_url;
use crate::policy::AccessLogTarget;
use crate::proxy::connections::ConnectionGuard;
use crate::proxy::Gateway;
use crate::state::agent_state::{AgentStateStore, SqliteAgentState};
use crate::state::shared::SharedState;
use crate::state::{new_key_store, GatewayState};
use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Read buffer per agent connection (see `run`).
const DOWNSTREAM_READ_BUFFER: usize = 8 * 1024;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration was refused.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The access log could not be opened.
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    /// The approval store could not be opened.
    #[error("cannot open the approval store: {0}")]
    Approvals(#[from] crate::approval::store::StoreError),
    /// The runtime agent state could not be opened.
    #[error("cannot open the agent state store: {0}")]
    AgentState(#[from] crate::state::agent_state::StateError),
    /// The shared stores (`state.backend: shared`) could not be opened.
    #[error("{0}")]
    Shared(String),
    /// The OpenTelemetry exporter could not be built.
    #[error("{0}")]
    Tracing(#[from] crate::observe::trace::TracingError),
}

/// Run until SIGTERM/SIGINT. Returns after the access log is flushed.
pub fn run(config_path: &Path) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let key_store = new_key_store(&metrics);
    let first = load_file(config_path, &LoadContext::new(key_store.clone(), 1))?;
    let settings = first.settings.clone();
    let ecs = settings.access_log_ecs;
    let access_log = Arc::new(
        match &settings.access_log {
            AccessLogTarget::Stdout => AccessLog::start_as(None, metrics.clone(), ecs),
            AccessLogTarget::File(p) => AccessLog::start_as(Some(p), metrics.clone(), ecs),
            AccessLogTarget::Syslog(t) => {
                tracing::info!(address = %t.address, transport = t.transport.name(), "access log: sent to a syslog server");
                AccessLog::start_syslog(t, metrics.clone(), ecs)
            }
        }
        .map_err(StartError::AccessLog)?,
    );
    access_log.set_max_field_bytes(settings.access_log_max_field_bytes);
    // Opened before serving: a pause recorded before a restart must hold from the first call.
    let holder = uuid::Uuid::new_v4().to_string();
    let (agent_state, shared): (Arc<dyn AgentStateStore>, _) = match &settings.shared_state {
        Some(s) => {
            let shared =
                SharedState::start(s, &holder, metrics.clone()).map_err(StartError::Shared)?;
            tracing::info!(postgres = %redact_url(&s.postgres_url), redis = %redact_url(&s.redis_url), "shared state: approvals and agent state in PostgreSQL, limits and propagation in Redis");
            (shared.agents.clone(), Some(shared))
        }
        None => (
            Arc::new(SqliteAgentState::open(&settings.state_store)?),
            None,
        ),
    };
    let mut state = GatewayState::load(
        config_path,
        metrics,
        key_store,
        access_log.clone(),
        first,
        agent_state,
    );
    if let Some(shared) = shared {
        state = state.with_shared(shared, holder);
    }
    if let Some(t) = &settings.tracing {
        let tracer = crate::observe::trace::CallTracer::start(t, &state.metrics)?;
        tracing::info!(endpoint = %redact_url(&t.endpoint), protocol = ?t.protocol, sample_ratio = t.sample_ratio, "tracing: exporting sampled calls over OTLP");
        state = state.with_tracer(tracer);
    }
    let state = Arc::new(state);

    state.ensure_approvals(&state.snapshot.load())?;

    let conf = ServerConf {
        threads: settings.threads,
        // Draining is done by `DrainOnTerm` before pingora is told to stop, so pingora's own
        // fixed grace sleep is not needed.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: settings.upstream_keepalive_pool,
        work_stealing: settings.work_stealing,
        pid_file: std::env::temp_dir()
            .join(format!("portcullis-{}.pid", std::process::id()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // The proxy application behind connection limits and header/idle deadlines.
    let mut app = HttpProxy::new(Gateway::new(state.clone()), server.configuration.clone());
    app.handle_init_modules();
    let mut proxy = Service::new(
        "portcullis proxy".to_string(),
        ConnectionGuard::new(app, state.clone()),
    );
    for addr in &settings.proxy_listen {
        // pingora's default 64 KiB read buffer is allocated (zeroed) per connection; with keepalive
        // agents and thousands of calls held for approval that dominated memory (~116 KiB per held
        // call). Agent calls are small; 8 KiB read-ahead costs nothing measurable for them.
        proxy.add_listener(
            ListenerConfig::tcp(addr.as_str()).l4_buffer(L4BufferSettings::new(
                DOWNSTREAM_READ_BUFFER,
                pingora::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE,
            )),
        );
    }
    let admin = background_service(
        "portcullis admin",
        AdminService::new(state.clone(), settings.admin_listen.clone()),
    );
    let sweeper = background_service(
        "portcullis approval sweeper",
        ApprovalSweeper {
            state: state.clone(),
        },
    );
    let monitor = background_service(
        "portcullis monitor",
        crate::observe::monitor::MonitorService {
            state: state.clone(),
        },
    );
    server.add_service(proxy);
    server.add_service(monitor);
    server.add_service(admin);
    if let Some(addr) = &settings.token_listen {
        server.add_service(background_service(
            "portcullis token service",
            crate::token_service::TokenEndpoints::new(state.clone(), addr.clone()),
        ));
    }
    server.add_service(sweeper);

    spawn_sighup_reloader(state.clone());
    let _watcher = if settings.watch_config {
        watch_config_file(state.clone(), config_path.to_path_buf())
    } else {
        None
    };
    tracing::info!(
        proxy = ?settings.proxy_listen,
        admin = %settings.admin_listen,
        threads = settings.threads,
        config_version = 1,
        "portcullis starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainOnTerm {
            state: state.clone(),
            grace: settings.grace_period,
        }),
    });
    if let Some(svc) = state.approvals.load_full() {
        svc.flush_notifications(Duration::from_secs(2));
    }
    // Every runtime has stopped: what the detectors learnt is saved for the next start.
    state.monitor.persist(&*state.agent_state);
    // Every runtime has stopped, so every request has ended its spans.
    if let Some(t) = &state.tracer {
        t.shutdown();
    }
    // Every runtime has stopped, so every request has handed its line to the log.
    access_log.close();
    tracing::info!("portcullis stopped");
    Ok(())
}

/// Moves approvals past their deadline to `expired`, once a second, and deletes decided ones
/// past `approvals.retention`.
struct ApprovalSweeper {
    state: Arc<GatewayState>,
}

#[async_trait]
impl pingora::services::background::BackgroundService for ApprovalSweeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    // Idle limit counters (and those of limits a reload changed) go away.
                    self.state.limits.sweep();
                    // Ended step-ups, throttles and revocations of expired tokens.
                    let st = self.state.clone();
                    let pruned = tokio::task::spawn_blocking(move || {
                        st.agent_state.prune(crate::approval::now_ms())
                    })
                    .await;
                    if let Ok(Err(e)) = pruned {
                        tracing::warn!(error = %e, "cannot prune the agent state store");
                    }
                    if let Some(svc) = self.state.approvals.load_full() {
                        svc.sweep().await;
                        let retention = self.state.snapshot.load().approvals.as_ref().map(|a| a.limits.retention);
                        if let Some(r) = retention {
                            svc.prune(r).await;
                        }
                    }
                }
            }
        }
    }
}

/// SIGTERM: stop being ready, let in-flight requests finish (bounded by the grace period), then
/// let pingora close listeners and exit. SIGINT: stop at once.
struct DrainOnTerm {
    state: Arc<GatewayState>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnTerm {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = int.recv() => return ShutdownSignal::FastShutdown,
            _ = term.recv() => {}
        }
        self.state.draining.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + self.grace;
        tracing::info!(in_flight = self.state.in_flight.load(Ordering::SeqCst), grace = ?self.grace, "SIGTERM: draining");
        loop {
            let n = self.state.in_flight.load(Ordering::SeqCst);
            if n == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    in_flight = n,
                    "grace period over; stopping with requests in flight"
                );
                break;
            }
            tokio::select! {
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        ShutdownSignal::GracefulTerminate
    }
}

fn spawn_sighup_reloader(state: Arc<GatewayState>) {
    let mut signals = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; reload with POST /reload");
            return;
        }
    };
    std::thread::Builder::new()
        .name("sighup-reload".into())
        .spawn(move || {
            for _ in signals.forever() {
                crate::admin::reload_and_audit(&state, "sighup");
            }
        })
        .expect("spawn reload thread");
}

/// Reload when the file changes. Watches the directory, because editors and config managers
/// replace files by rename, which a watch on the file itself would miss.
fn watch_config_file(
    state: Arc<GatewayState>,
    path: PathBuf,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path.file_name()?.to_os_string();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if ev.kind.is_access() {
                return;
            }
            if ev.paths.iter().any(|p| p.file_name() == Some(name.as_os_str())) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /reload"))
    .ok()?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(error = %e, "cannot watch the config directory"))
        .ok()?;
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // Debounce: a save is often several events (truncate, write, rename).
                std::thread::sleep(Duration::from_millis(200));
                while rx.try_recv().is_ok() {}
                crate::admin::reload_and_audit(&state, "file-change");
            }
        })
        .ok()?;
    Some(watcher)
}

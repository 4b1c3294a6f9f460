//! Approvals under load: hold HELD calls (default 10,000) for approval on real connections and,
//! in the same run, measure ordinary allowed traffic with nothing held and with all of them held;
//! the gateway's memory per held call; and how long an approval takes to reach the upstream.
//!
//! `scripts/bench-hold.sh [HELD] [SECONDS] [ROUNDS]`, or, after
//! `cargo build --release --bin portcullis`, `cargo bench --bench hold -- [HELD] [SECONDS] [ROUNDS]`
//! (defaults 10000, 10, 3). Needs `wrk` and an open-file limit above HELD (each side of every held
//! connection is a file descriptor, in this process and in the gateway).
//!
//! One round, on a fresh gateway process and approval store: wrk against an allowed route with
//! nothing held (baseline) → open HELD held calls (`DELETE`, `approval: {mode: hold}`) at a
//! bounded rate and wait until the gateway counts them pending → the same wrk run while they are
//! all held. Rounds repeat the pair so that drift on a shared machine hits both; the verdict is
//! the median of the per-round ratios, and each run also records the gateway's CPU time per
//! request and the load of everything else on the machine, which req/s alone cannot show.
//! The last round then approves a sample one at a time (approve call → arrival at the upstream,
//! → answer at the agent), hangs up on the rest, and runs wrk once more on the process that has
//! held and released them all (its memory is not given back, and ordinary calls cost more there).
//! A fresh process per round keeps that after-effect out of the baselines.
//!
//! Environment: `HOLD_THREADS` (gateway worker threads, 2), `HOLD_SAMPLE` (approvals timed, 500),
//! `HOLD_OPEN_CONCURRENCY` (held calls opened but not yet pending, at most; 1000), `HOLD_WRK_CONNECTIONS` (32),
//! `HOLD_TIMEOUT_SECS` (hard stop of the whole run), `HOLD_RUST_LOG` (the gateway's, `info`),
//! `HOLD_BODY_BYTES` (size of each held call's body; 0 = none; default a ~40-byte JSON),
//! `HOLD_SETTLE_SECS` (pause between "all pending" and the held run, 1), `HOLD_VERBOSE` (print
//! wrk's own output).
//! Everything listens on, and talks only to, 127.0.0.1.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// The throughput ordinary traffic must keep while calls are held.
const TARGET_RATIO: f64 = 0.90;
const ISS: &str = "https://portcullis.local";
const AUD: &str = "portcullis";
const KID: &str = "bench-1";
const AGENT: &str = "bench-agent";
/// Stop waiting for held calls to register once the pending count has not grown for this long.
const STALL: Duration = Duration::from_secs(20);
/// Longest wait for one round's held calls to register.
const OPEN_LIMIT: Duration = Duration::from_secs(240);
/// Longest wait for hung-up held calls to be settled (abandoned) between rounds.
const RELEASE_LIMIT: Duration = Duration::from_secs(120);
/// Longest wait for approved calls to reach the upstream and be answered.
const ANSWER_LIMIT: Duration = Duration::from_secs(60);
/// Pid of the gateway, for the watchdog.
static GATEWAY_PID: AtomicI32 = AtomicI32::new(0);

// ---------------------------------------------------------------------------------------------
// Parameters

struct Params {
    held: usize,
    secs: u64,
    rounds: usize,
    sample: usize,
    threads: usize,
    open_concurrency: usize,
    wrk_connections: usize,
    timeout: Duration,
    rust_log: String,
    body_bytes: Option<usize>,
    settle: Duration,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
}

impl Params {
    /// Positional `[HELD] [SECONDS] [ROUNDS]`; flags (cargo passes `--bench`) are skipped.
    fn parse(args: &[String]) -> Params {
        let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        let num = |i: usize, default: u64| -> u64 {
            pos.get(i).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("argument {} ({v}) is not a number", i + 1))
            })
        };
        let held = num(0, 10_000) as usize;
        let secs = num(1, 10).max(1);
        let rounds = num(2, 3).max(1) as usize;
        let timeout = env_or("HOLD_TIMEOUT_SECS", 300 + rounds as u64 * (2 * secs + 420));
        Params {
            held,
            secs,
            rounds,
            sample: env_or("HOLD_SAMPLE", 500usize).min(held),
            threads: env_or("HOLD_THREADS", 2usize),
            open_concurrency: env_or("HOLD_OPEN_CONCURRENCY", 1000usize).max(1),
            wrk_connections: env_or("HOLD_WRK_CONNECTIONS", 32usize),
            timeout: Duration::from_secs(timeout),
            rust_log: std::env::var("HOLD_RUST_LOG").unwrap_or_else(|_| "info".into()),
            settle: Duration::from_secs(env_or("HOLD_SETTLE_SECS", 1)),
            body_bytes: std::env::var("HOLD_BODY_BYTES")
                .ok()
                .map(|v| v.parse().expect("HOLD_BODY_BYTES is a number")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream: a real HTTP server in this process, on its own runtime

/// When each approved `DELETE /api/items/{id}` reached the upstream, by `id`.
#[derive(Default)]
struct UpstreamState {
    arrivals: Mutex<HashMap<String, Instant>>,
}

impl UpstreamState {
    fn arrival(&self, id: &str) -> Option<Instant> {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
    }
}

async fn read_item(UrlPath(id): UrlPath<String>) -> Json<Value> {
    Json(json!({"id": id, "name": "widget", "in_stock": true}))
}

async fn delete_item(
    State(s): State<Arc<UpstreamState>>,
    UrlPath(id): UrlPath<String>,
) -> Json<Value> {
    let at = Instant::now();
    s.arrivals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), at);
    Json(json!({"deleted": id}))
}

/// Serve the upstream on one worker thread of its own, for the life of the process.
fn start_upstream() -> (SocketAddr, Arc<UpstreamState>) {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind the upstream");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("upstream address");
    let state = Arc::new(UpstreamState::default());
    let s = state.clone();
    std::thread::Builder::new()
        .name("upstream".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("upstream-rt")
                .enable_all()
                .build()
                .expect("upstream runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).expect("upstream listener");
                let app = Router::new()
                    .route("/api/items/{id}", get(read_item).delete(delete_item))
                    .with_state(s);
                axum::serve(l, app).await.expect("upstream server");
            });
        })
        .expect("spawn the upstream thread");
    (addr, state)
}

// ---------------------------------------------------------------------------------------------
// Gateway: the release binary as a child process

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

const CONFIG: &str = r#"# portcullis hold benchmark (benches/hold.rs)
listen:
  proxy: ["@PROXY@"]
  admin: @ADMIN@
  threads: @THREADS@
server:
  grace_period: 1s
  watch_config: false
  # Every held call is its own connection from 127.0.0.1: above the per-client default.
  max_connections: 30000
  max_connections_per_client: 30000
issuers:
  - name: local
    issuer: @ISS@
    audiences: [@AUD@]
    algorithms: [ES256]
    signing_key_file: @KEY@
    signing_key_id: @KID@
agents:
  - id: @AGENT@
    owner: bench@example.com
    scopes: [items:read, items:delete]
upstreams:
  - name: items-api
    url: http://@UPSTREAM@
    connect_timeout: 2s
    read_timeout: 30s
    credential:
      header: x-api-key
      value: "bench-upstream-secret"
routes:
  - name: items-read
    methods: [GET]
    path: /api/items/{id}
    upstream: items-api
    scopes: [items:read]
  - name: items-delete
    methods: [DELETE]
    path: /api/items/{id}
    upstream: items-api
    scopes: [items:delete]
    approval:
      mode: hold
      timeout: 30m
approvals:
  store: @DIR@/approvals.db
  approvers:
    - name: bench-approver
      token_sha256: "@APPROVER_SHA256@"
access_log:
  path: @DIR@/access.log
"#;

struct Gateway {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
}

impl Gateway {
    fn spawn(
        dir: &Path,
        key: &Path,
        upstream: SocketAddr,
        approver_sha256: &str,
        p: &Params,
    ) -> Gateway {
        let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = CONFIG
            .replace("@PROXY@", &proxy.to_string())
            .replace("@ADMIN@", &admin.to_string())
            .replace("@THREADS@", &p.threads.to_string())
            .replace("@ISS@", ISS)
            .replace("@AUD@", AUD)
            .replace("@KID@", KID)
            .replace("@AGENT@", AGENT)
            .replace("@KEY@", &key.display().to_string())
            .replace("@DIR@", &dir.display().to_string())
            .replace("@UPSTREAM@", &upstream.to_string())
            .replace("@APPROVER_SHA256@", approver_sha256);
        let config_path = dir.join("gateway.yaml");
        std::fs::write(&config_path, config).expect("write gateway.yaml");
        let stdout = std::fs::File::create(dir.join("stdout.txt")).expect("stdout file");
        let stderr = std::fs::File::create(dir.join("stderr.txt")).expect("stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.arg("run")
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir)
            .env("RUST_LOG", &p.rust_log)
            .env_remove("PORTCULLIS_CONFIG")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for v in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            cmd.env_remove(v);
        }
        // SAFETY: prctl(2) is async-signal-safe and the closure allocates nothing. The gateway
        // dies with the thread that spawned it (this process's main thread), even on a panic.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}; build it with `cargo build --release --bin portcullis`",
                env!("CARGO_BIN_EXE_portcullis")
            )
        });
        GATEWAY_PID.store(child.id() as i32, Ordering::SeqCst);
        Gateway {
            child,
            proxy,
            admin,
            dir: dir.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.txt")).unwrap_or_default()
    }

    fn stderr_tail(&self, n: usize) -> String {
        let all = self.stderr();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    async fn wait_ready(&mut self, c: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = c.get(self.admin_url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if !self.alive() {
                panic!("portcullis exited at start; stderr:\n{}", self.stderr());
            }
            if Instant::now() > deadline {
                panic!(
                    "portcullis not ready within 30 s; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `portcullis_approvals_pending`, or `None` if /metrics did not answer.
    async fn pending(&self, c: &reqwest::Client) -> Option<usize> {
        let text = c
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("portcullis_approvals_pending "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as usize)
    }

    /// Stop at once (SIGINT is pingora's fast shutdown), killing it if it lingers.
    fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        GATEWAY_PID.store(0, Ordering::SeqCst);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resident memory (KiB) and thread count of a process, from /proc/<pid>/status.
fn rss(pid: u32) -> Mem {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    Mem {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
    }
}

#[derive(Clone, Copy, Default)]
struct Mem {
    rss_kib: u64,
    threads: u64,
    fds: usize,
}

// ---------------------------------------------------------------------------------------------
// Ordinary traffic: wrk

#[derive(Clone, Default)]
struct Wrk {
    rps: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: Option<String>,
    p50_ms: f64,
    /// wrk corrects for coordinated omission: one long stall raises p99 far above `max_ms`'s
    /// share of requests.
    p99_ms: f64,
    max_ms: f64,
    cpu: Cpu,
}

/// Where the CPU went during a wrk run (a shared machine: other load skews req/s, not this).
#[derive(Clone, Copy, Default)]
struct Cpu {
    /// Gateway CPU time per ordinary request, µs.
    gateway_us_per_req: f64,
    /// Cores the gateway used on average.
    gateway_cores: f64,
    /// Cores used by everything else on the machine (not the gateway, wrk, or this process).
    others_cores: f64,
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat).
fn proc_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: count fields after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// CPU time (s) of the reaped children of this process (wrk runs).
fn children_cpu_secs() -> f64 {
    // SAFETY: getrusage with a valid pointer to a zeroed local struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Busy ticks of the whole machine (first line of /proc/stat, without idle and iowait).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already in user)
    f.iter().take(8).sum::<u64>() - f.get(3).copied().unwrap_or(0) - f.get(4).copied().unwrap_or(0)
}

struct CpuMark {
    at: Instant,
    gateway: u64,
    me: u64,
    children: f64,
    machine: u64,
}

impl CpuMark {
    fn now(gateway_pid: u32) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            gateway: proc_ticks(&gateway_pid.to_string()),
            me: proc_ticks("self"),
            children: children_cpu_secs(),
            machine: machine_busy_ticks(),
        }
    }

    fn since(&self, gateway_pid: u32, requests: u64) -> Cpu {
        let end = CpuMark::now(gateway_pid);
        let hz = clock_ticks_per_sec();
        let wall = (end.at - self.at).as_secs_f64().max(1e-9);
        let gw = end.gateway.saturating_sub(self.gateway) as f64 / hz;
        let me = end.me.saturating_sub(self.me) as f64 / hz;
        let wrk = end.children - self.children;
        let machine = end.machine.saturating_sub(self.machine) as f64 / hz;
        Cpu {
            gateway_us_per_req: gw * 1e6 / (requests.max(1) as f64),
            gateway_cores: gw / wall,
            others_cores: ((machine - gw - me - wrk) / wall).max(0.0),
        }
    }
}

/// `270.00us`, `1.23ms`, `2.00s` → milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let (n, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    n.parse::<f64>().ok().map(|n| n * scale)
}

fn parse_wrk(out: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    let mut saw_rps = false;
    for line in out.lines().map(str::trim) {
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some("Requests/sec:"), Some(v)) => {
                w.rps = v.parse().ok()?;
                saw_rps = true;
            }
            (Some("50%"), Some(v)) => w.p50_ms = wrk_ms(v)?,
            (Some("99%"), Some(v)) => w.p99_ms = wrk_ms(v)?,
            // `Latency  avg  stdev  max  +/-stdev`
            (Some("Latency"), Some(v)) if v != "Distribution" => {
                w.max_ms = line.split_whitespace().nth(3).and_then(wrk_ms)?;
            }
            (Some(n), Some("requests")) => w.requests = n.parse().unwrap_or(0),
            _ => {}
        }
        if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = v.trim().parse().unwrap_or(0);
        }
        if line.starts_with("Socket errors:") {
            w.socket_errors = Some(line.to_string());
        }
    }
    saw_rps.then_some(w)
}

async fn wrk(url: &str, token: &str, secs: u64, connections: usize, gateway_pid: u32) -> Wrk {
    let mark = CpuMark::now(gateway_pid);
    let run = tokio::process::Command::new("wrk")
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(secs + 30), run).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("cannot run wrk: {e} (Debian: apt-get install -y wrk)"),
        Err(_) => panic!("wrk did not finish within {} s", secs + 30),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if std::env::var_os("HOLD_VERBOSE").is_some() {
        eprintln!("{text}");
    }
    match parse_wrk(&text) {
        Some(mut w) => {
            w.cpu = mark.since(gateway_pid, w.requests);
            w
        }
        None => panic!(
            "cannot read wrk's output:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Held calls: raw connections, one DELETE each

#[derive(Clone, Copy)]
struct Answer {
    status: u16,
    at: Instant,
}

type Slot = OnceLock<Result<Answer, String>>;

/// One round's held calls.
struct Holds {
    round: usize,
    slots: Arc<Vec<Slot>>,
    tasks: Vec<JoinHandle<()>>,
}

fn held_id(round: usize, i: usize) -> String {
    format!("held-{round}-{i}")
}

/// `DELETE /api/items/held-R-I` with a small JSON body, or one of exactly `body_bytes` (0: none).
fn held_request(
    gw: SocketAddr,
    token: &str,
    round: usize,
    i: usize,
    body_bytes: Option<usize>,
) -> Vec<u8> {
    let id = held_id(round, i);
    let mut body = format!(r#"{{"item":"{id}","reason":"cleanup"}}"#);
    match body_bytes {
        Some(0) => body.clear(),
        Some(n) => {
            // `{"item":"` + id + `","pad":"` + pad + `"}`
            let pad = n.saturating_sub(20 + id.len());
            body = format!(r#"{{"item":"{id}","pad":"{}"}}"#, "x".repeat(pad));
        }
        None => {}
    }
    format!(
        "DELETE /api/items/{id} HTTP/1.1\r\nHost: {gw}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Read a response's head; the status code and when its first bytes arrived.
async fn read_status(s: &mut TcpStream) -> Result<Answer, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let mut first = None;
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "closed without an answer".into()
            } else {
                "closed mid-answer".into()
            });
        }
        first.get_or_insert_with(Instant::now);
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 16 * 1024 {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", head.lines().next()))?;
    Ok(Answer {
        status,
        at: first.unwrap_or_else(Instant::now),
    })
}

async fn hold_one(
    addr: SocketAddr,
    request: Vec<u8>,
    slots: Arc<Vec<Slot>>,
    i: usize,
    permit: OwnedSemaphorePermit,
) {
    let out = async {
        let mut s =
            match tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("connect: {e}")),
                Err(_) => return Err("connect: timed out after 30 s".to_string()),
            };
        let _ = s.set_nodelay(true);
        s.write_all(&request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        drop(request);
        drop(permit);
        read_status(&mut s).await
    }
    .await;
    let _ = slots[i].set(out);
}

/// Open `n` held calls with at most `concurrency` in flight: being connected and sent, or sent
/// but not yet counted pending by the gateway. (A bound on connect + send alone would not do:
/// a send completes before the gateway accepts, and the listen backlog overflows into 1 s SYN
/// retries.)
async fn open_holds(
    gw: &Gateway,
    c: &reqwest::Client,
    token: &str,
    round: usize,
    n: usize,
    concurrency: usize,
    body_bytes: Option<usize>,
) -> Holds {
    let sem = Arc::new(Semaphore::new(concurrency));
    let slots: Arc<Vec<Slot>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());
    let mut tasks = Vec::with_capacity(n);
    let deadline = Instant::now() + OPEN_LIMIT;
    let mut registered = 0;
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        while i >= registered + concurrency && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            registered = gw.pending(c).await.unwrap_or(registered);
        }
        let req = held_request(gw.proxy, token, round, i, body_bytes);
        tasks.push(tokio::spawn(hold_one(
            gw.proxy,
            req,
            slots.clone(),
            i,
            permit,
        )));
    }
    Holds {
        round,
        slots,
        tasks,
    }
}

impl Holds {
    /// Calls that already ended (an error or an answer), grouped by what happened.
    fn ended(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in self.slots.iter() {
            let key = match s.get() {
                None => continue,
                Some(Ok(a)) => format!("answered {}", a.status),
                Some(Err(e)) => e.clone(),
            };
            *m.entry(key).or_insert(0) += 1;
        }
        m
    }

    /// Hang up on every call still held.
    fn hang_up(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

struct Opened {
    wanted: usize,
    held: usize,
    took: Duration,
    ended: BTreeMap<String, usize>,
}

/// Wait until the gateway counts `want` pending approvals (or stops making progress).
async fn wait_pending(
    gw: &mut Gateway,
    c: &reqwest::Client,
    want: usize,
    started: Instant,
) -> (usize, Duration) {
    let mut best = 0usize;
    let mut best_at = Instant::now();
    let mut said = Instant::now();
    loop {
        let now = gw.pending(c).await.unwrap_or(best);
        if now > best {
            best = now;
            best_at = Instant::now();
        }
        if best >= want {
            return (best, started.elapsed());
        }
        if !gw.alive() {
            eprintln!("  the gateway exited; stderr:\n{}", gw.stderr_tail(20));
            return (best, best_at - started);
        }
        if best_at.elapsed() > STALL || started.elapsed() > OPEN_LIMIT {
            eprintln!(
                "  stopped waiting: {best} of {want} pending, no progress for {:.0?}",
                best_at.elapsed()
            );
            return (best, best_at - started);
        }
        if said.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  … {best} of {want} pending after {:.1?}",
                started.elapsed()
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until nothing is pending any more (hung-up calls settled as abandoned).
async fn wait_released(gw: &mut Gateway, c: &reqwest::Client) -> Duration {
    let t0 = Instant::now();
    loop {
        match gw.pending(c).await {
            Some(0) => return t0.elapsed(),
            Some(n) if t0.elapsed() > RELEASE_LIMIT => {
                eprintln!("  {n} still pending {RELEASE_LIMIT:?} after hanging up");
                return t0.elapsed();
            }
            _ if !gw.alive() => return t0.elapsed(),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Approve → upstream

struct Approved {
    sampled: usize,
    approve_failures: BTreeMap<u16, usize>,
    to_upstream_ms: Vec<f64>,
    to_agent_ms: Vec<f64>,
    answered_200: usize,
    other_answers: BTreeMap<String, usize>,
    approve_call_ms: Vec<f64>,
}

async fn approve_sample(
    gw: &Gateway,
    c: &reqwest::Client,
    approver: &str,
    holds: &Holds,
    up: &UpstreamState,
    sample: usize,
) -> Approved {
    let list: Value = c
        .get(gw.admin_url(&format!("/api/approvals?status=pending&limit={sample}")))
        .bearer_auth(approver)
        .send()
        .await
        .expect("list approvals")
        .json()
        .await
        .expect("approvals JSON");
    let prefix = format!("/api/items/held-{}-", holds.round);
    let picked: Vec<(String, usize)> = list["approvals"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|a| {
            let i = a["path"].as_str()?.strip_prefix(&prefix)?.parse().ok()?;
            Some((a["id"].as_str()?.to_string(), i))
        })
        .collect();
    let mut out = Approved {
        sampled: picked.len(),
        approve_failures: BTreeMap::new(),
        to_upstream_ms: Vec::new(),
        to_agent_ms: Vec::new(),
        answered_200: 0,
        other_answers: BTreeMap::new(),
        approve_call_ms: Vec::new(),
    };
    let mut sent: Vec<(usize, Instant)> = Vec::with_capacity(picked.len());
    for (id, i) in &picked {
        let t = Instant::now();
        let r = c
            .post(gw.admin_url(&format!("/api/approvals/{id}/approve")))
            .bearer_auth(approver)
            .json(&json!({"reason": "hold benchmark"}))
            .send()
            .await;
        out.approve_call_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        match r {
            Ok(r) if r.status() == 200 => sent.push((*i, t)),
            Ok(r) => *out.approve_failures.entry(r.status().as_u16()).or_insert(0) += 1,
            Err(_) => *out.approve_failures.entry(0).or_insert(0) += 1,
        }
    }
    // Every approved call must reach the upstream and its agent must get the answer.
    let deadline = Instant::now() + ANSWER_LIMIT;
    loop {
        let done = sent.iter().all(|(i, _)| {
            holds.slots[*i].get().is_some() && up.arrival(&held_id(holds.round, *i)).is_some()
        });
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, t) in &sent {
        if let Some(at) = up.arrival(&held_id(holds.round, *i)) {
            out.to_upstream_ms.push((at - *t).as_secs_f64() * 1000.0);
        }
        match holds.slots[*i].get() {
            Some(Ok(a)) if a.status == 200 => {
                out.answered_200 += 1;
                out.to_agent_ms.push((a.at - *t).as_secs_f64() * 1000.0);
            }
            Some(Ok(a)) => {
                *out.other_answers
                    .entry(format!("{}", a.status))
                    .or_insert(0) += 1
            }
            Some(Err(e)) => *out.other_answers.entry(e.clone()).or_insert(0) += 1,
            None => *out.other_answers.entry("no answer".into()).or_insert(0) += 1,
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Statistics and report

/// Nearest-rank percentile of `v` (sorted in place).
fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// KiB per held call between two RSS readings.
fn per_held(from: u64, to: u64, held: usize) -> f64 {
    if held == 0 {
        return f64::NAN;
    }
    (to as f64 - from as f64) / held as f64
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (k, ch) in s.chars().enumerate() {
        if k > 0 && (s.len() - k) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

struct Round {
    baseline: Wrk,
    mem_base: Mem,
    opened: Opened,
    mem_held: Mem,
    held: Wrk,
    mem_held_after: Mem,
}

/// The last round again, after every held call hung up and the gateway settled them.
struct AfterRelease {
    settled_in: Duration,
    wrk: Wrk,
    mem: Mem,
    /// The same wrk run again after [`IDLE_AFTER_RELEASE`] of quiet: tells a transient
    /// after-effect of the hang-ups from a lasting one.
    wrk_later: Wrk,
}

/// Quiet time before the second after-release wrk run.
const IDLE_AFTER_RELEASE: Duration = Duration::from_secs(10);

/// Raise the soft open-file limit to the hard one if it is below what holding `held` needs.
fn raise_nofile(held: usize) -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let want = (held as u64 + 1024).min(lim.rlim_max);
        if lim.rlim_cur < want {
            lim.rlim_cur = want;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    (lim.rlim_cur, lim.rlim_max)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` runs bench targets without `--bench`: this one needs wrk and
        // thousands of sockets, so it only runs when asked for.
        println!("hold: skipped (run `cargo bench --bench hold` or scripts/bench-hold.sh)");
        return;
    }
    let p = Params::parse(&args);
    let (soft, hard) = raise_nofile(p.held);
    if (soft as usize) < p.held + 1024 {
        eprintln!(
            "warning: open-file limit is {soft} (hard {hard}); holding {} needs about {} in this \
             process and in the gateway; expect failures past that",
            p.held,
            p.held + 1024
        );
    }
    // Hard stop of the whole run, whatever happens.
    let limit = p.timeout;
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("hold: overall time limit of {limit:?} reached; stopping");
        let pid = GATEWAY_PID.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) on the gateway child's pid.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::process::exit(2);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ok = rt.block_on(run(&p, soft));
    // Held connections still open are dropped with the runtime.
    rt.shutdown_timeout(Duration::from_secs(2));
    if !ok {
        std::process::exit(1);
    }
}

async fn run(p: &Params, nofile: u64) -> bool {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = portcullis::identity::generate_signing_key().expect("signing key");
    let key_path = dir.path().join("signing-key.pem");
    std::fs::write(&key_path, &key).expect("write key");
    let approver = format!(
        "apv_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let approver_sha = hex::encode(Sha256::digest(approver.as_bytes()));
    let token = |scope: &str| {
        portcullis::identity::issue_token(
            key.as_bytes(),
            KID,
            ISS,
            AUD,
            AGENT,
            &[scope.to_string()],
            Duration::from_secs(55 * 60),
            Duration::ZERO,
            None,
        )
        .expect("issue token")
    };
    let (read_token, delete_token) = (token("items:read"), token("items:delete"));
    let (up_addr, up) = start_upstream();
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    println!(
        "hold bench: {} held calls, {} s wrk runs (1 thread, {} connections), {} round(s), \
         gateway {} worker thread(s), open-file limit {nofile}",
        thousands(p.held),
        p.secs,
        p.wrk_connections,
        p.rounds,
        p.threads
    );

    let mut rounds: Vec<Round> = Vec::new();
    let mut approved = None;
    let mut after = None;
    let mut ok = true;
    let mut log_lines = 0;
    // wrk hangs up mid-request when its time is up, and hung-up held calls are closed on
    // purpose: those `ConnectionClosed` lines are expected; anything else is shown.
    let (mut closed_lines, mut other_lines) = (0usize, Vec::<String>::new());
    for r in 1..=p.rounds {
        let last = r == p.rounds;
        // A fresh gateway (and store) per round: a process that has held and released calls
        // is not "nothing held" any more (its heap is not what it was; see AfterRelease).
        let rdir = dir.path().join(format!("round-{r}"));
        std::fs::create_dir_all(&rdir).expect("round dir");
        let mut gw = Gateway::spawn(&rdir, &key_path, up_addr, &approver_sha, p);
        gw.wait_ready(&c).await;
        let url = gw.url("/api/items/1");
        let check = c
            .get(&url)
            .bearer_auth(&read_token)
            .send()
            .await
            .expect("ordinary call");
        assert_eq!(
            check.status(),
            200,
            "the ordinary route did not answer 200: {}",
            check.text().await.unwrap_or_default()
        );
        eprintln!(
            "round {r}/{}: fresh gateway (pid {}); warm-up, then baseline wrk ({} s)",
            p.rounds,
            gw.pid(),
            p.secs
        );
        // Warm-up: connection pools, token cache, allocator.
        wrk(&url, &read_token, 2, p.wrk_connections, gw.pid()).await;
        let baseline = wrk(&url, &read_token, p.secs, p.wrk_connections, gw.pid()).await;
        let mem_base = rss(gw.pid());
        eprintln!(
            "  {:.0} req/s ({:.1} µs gateway CPU/req), RSS {}; opening {} held calls",
            baseline.rps,
            baseline.cpu.gateway_us_per_req,
            mib(mem_base.rss_kib),
            p.held
        );
        let t0 = Instant::now();
        let mut holds = open_holds(
            &gw,
            &c,
            &delete_token,
            r,
            p.held,
            p.open_concurrency,
            p.body_bytes,
        )
        .await;
        let (held, took) = wait_pending(&mut gw, &c, p.held, t0).await;
        let opened = Opened {
            wanted: p.held,
            held,
            took,
            ended: holds.ended(),
        };
        if held < p.held {
            ok = false;
            eprintln!(
                "  only {held} of {} held; calls that ended: {:?}; open-file limit {nofile}; gateway stderr tail:\n{}",
                p.held,
                opened.ended,
                gw.stderr_tail(10)
            );
        }
        if !gw.alive() {
            eprintln!("the gateway died; stopping");
            return false;
        }
        tokio::time::sleep(p.settle).await;
        let mem_held = rss(gw.pid());
        eprintln!(
            "  {held} held after {took:.1?}, RSS {}; held wrk ({} s)",
            mib(mem_held.rss_kib),
            p.secs
        );
        let held_wrk = wrk(&url, &read_token, p.secs, p.wrk_connections, gw.pid()).await;
        let mem_held_after = rss(gw.pid());
        eprintln!(
            "  {:.0} req/s while held ({:.1} µs gateway CPU/req), RSS {}",
            held_wrk.rps,
            held_wrk.cpu.gateway_us_per_req,
            mib(mem_held_after.rss_kib)
        );
        let ended_meanwhile = holds.ended();
        if !ended_meanwhile.is_empty() {
            ok = false;
            eprintln!("  held calls that ended before any approval: {ended_meanwhile:?}");
        }
        if last {
            eprintln!("  approving {} held calls one at a time", p.sample);
            let a = approve_sample(&gw, &c, &approver, &holds, &up, p.sample).await;
            if a.answered_200 != a.sampled || !a.approve_failures.is_empty() {
                ok = false;
            }
            approved = Some(a);
            holds.hang_up();
            let settled_in = wait_released(&mut gw, &c).await;
            eprintln!(
                "  hung up on the rest; settled in {settled_in:.1?}; wrk again ({} s)",
                p.secs
            );
            let w = wrk(&url, &read_token, p.secs, p.wrk_connections, gw.pid()).await;
            let mem = rss(gw.pid());
            eprintln!(
                "  {:.0} req/s after release ({:.1} µs gateway CPU/req), RSS {}",
                w.rps,
                w.cpu.gateway_us_per_req,
                mib(mem.rss_kib)
            );
            tokio::time::sleep(IDLE_AFTER_RELEASE).await;
            let later = wrk(&url, &read_token, p.secs, p.wrk_connections, gw.pid()).await;
            eprintln!(
                "  {:.0} req/s {IDLE_AFTER_RELEASE:?} later ({:.1} µs gateway CPU/req)",
                later.rps, later.cpu.gateway_us_per_req
            );
            after = Some(AfterRelease {
                settled_in,
                wrk: w,
                mem,
                wrk_later: later,
            });
        }
        for l in gw
            .stderr()
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        {
            if l.contains("ConnectionClosed") {
                closed_lines += 1;
            } else {
                other_lines.push(l.to_string());
            }
        }
        // Stop the gateway before hanging up, so that it does not settle calls it is about to
        // lose anyway; the held connections then see it close.
        gw.stop();
        holds.hang_up();
        log_lines += std::fs::read(rdir.join("access.log"))
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        rounds.push(Round {
            baseline,
            mem_base,
            opened,
            mem_held,
            held: held_wrk,
            mem_held_after,
        });
    }
    report(p, &rounds, approved, after, started.elapsed(), log_lines);
    println!(
        "\ngateway stderr: {closed_lines} WARN/ERROR line(s) about clients that hung up (wrk stopping, released holds), {} other(s)",
        other_lines.len()
    );
    for l in other_lines.iter().rev().take(5).rev() {
        println!("  {l}");
    }
    ok
}

fn report(
    p: &Params,
    rounds: &[Round],
    approved: Option<Approved>,
    after: Option<AfterRelease>,
    run_took: Duration,
    log_lines: usize,
) {
    println!(
        "\n### Per round (a fresh gateway each): ordinary traffic, wrk {} s\n",
        p.secs
    );
    println!(
        "| round | held | time to hold | req/s, nothing held | req/s, held | ratio | p50 / p99 / max ms, nothing held → held | gateway CPU µs/req, nothing held → held | gateway cores used | other load on the machine, cores |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (k, r) in rounds.iter().enumerate() {
        let (b, h) = (&r.baseline.cpu, &r.held.cpu);
        println!(
            "| {} | {} | {:.1} s | {:.0} | {:.0} | {:.3} | {:.2} / {:.1} / {:.0} → {:.2} / {:.1} / {:.0} | {:.1} → {:.1} | {:.2} → {:.2} | {:.2} / {:.2} |",
            k + 1,
            thousands(r.opened.held),
            r.opened.took.as_secs_f64(),
            r.baseline.rps,
            r.held.rps,
            r.held.rps / r.baseline.rps,
            r.baseline.p50_ms,
            r.baseline.p99_ms,
            r.baseline.max_ms,
            r.held.p50_ms,
            r.held.p99_ms,
            r.held.max_ms,
            b.gateway_us_per_req,
            h.gateway_us_per_req,
            b.gateway_cores,
            h.gateway_cores,
            b.others_cores,
            h.others_cores,
        );
    }
    println!("\n### Per round: gateway memory\n");
    println!(
        "| round | RSS, nothing held | RSS, held: just opened → after wrk | KiB per held: just opened / after wrk | threads: nothing held → held | fds held |"
    );
    println!("|---|---|---|---|---|---|");
    for (k, r) in rounds.iter().enumerate() {
        println!(
            "| {} | {} | {} → {} | {:.2} / {:.2} | {} → {} | {} |",
            k + 1,
            mib(r.mem_base.rss_kib),
            mib(r.mem_held.rss_kib),
            mib(r.mem_held_after.rss_kib),
            per_held(r.mem_base.rss_kib, r.mem_held.rss_kib, r.opened.held),
            per_held(r.mem_base.rss_kib, r.mem_held_after.rss_kib, r.opened.held),
            r.mem_base.threads,
            r.mem_held.threads,
            r.mem_held.fds,
        );
    }
    for (k, r) in rounds.iter().enumerate() {
        for (name, w) in [("nothing held", &r.baseline), ("held", &r.held)] {
            if w.non_2xx > 0 || w.socket_errors.is_some() {
                println!(
                    "\nround {} wrk ({name}): {} non-2xx of {}; {}",
                    k + 1,
                    w.non_2xx,
                    w.requests,
                    w.socket_errors.as_deref().unwrap_or("no socket errors")
                );
            }
        }
    }

    let base: Vec<f64> = rounds.iter().map(|r| r.baseline.rps).collect();
    let held: Vec<f64> = rounds.iter().map(|r| r.held.rps).collect();
    // Each round pairs two adjacent runs on the same process: drift on a shared machine hits
    // both, so the verdict uses the median of the per-round ratios.
    let ratios: Vec<f64> = rounds.iter().map(|r| r.held.rps / r.baseline.rps).collect();
    let ratio = median(&ratios);
    let (mb, mh) = (median(&base), median(&held));
    let n = rounds.len();
    let all_held = rounds.iter().all(|r| r.opened.held == r.opened.wanted);
    let min_held = rounds.iter().map(|r| r.opened.held).min().unwrap_or(0);
    let med = |f: &dyn Fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let range = |f: &dyn Fn(&Round) -> f64| {
        let v: Vec<f64> = rounds.iter().map(f).collect();
        (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    };
    println!("\n### Summary (medians of {n} round(s))\n");
    println!("| | |\n|---|---|");
    println!(
        "| held requests | {} of {} requested{} |",
        thousands(min_held),
        thousands(p.held),
        if all_held { "" } else { " (**not all held**)" }
    );
    let took = med(&|r| r.opened.took.as_secs_f64());
    println!(
        "| time to hold them (first connect → gateway counts all pending) | {took:.1} s ({:.0} holds/s) |",
        min_held as f64 / took.max(1e-9)
    );
    println!("| ordinary req/s, nothing held | {mb:.0} |");
    println!("| ordinary req/s, {} held | {mh:.0} |", thousands(min_held));
    println!(
        "| ratio held / nothing held (median of per-round ratios; ratio of medians) | {ratio:.3}; {:.3} |",
        mh / mb
    );
    println!(
        "| gateway CPU per ordinary request, nothing held → held | {:.1} → {:.1} µs |",
        med(&|r| r.baseline.cpu.gateway_us_per_req),
        med(&|r| r.held.cpu.gateway_us_per_req)
    );
    println!(
        "| ordinary latency p50 / p99 / max, nothing held (wrk) | {:.2} / {:.2} / {:.1} ms |",
        med(&|r| r.baseline.p50_ms),
        med(&|r| r.baseline.p99_ms),
        med(&|r| r.baseline.max_ms)
    );
    println!(
        "| ordinary latency p50 / p99 / max, held (wrk) | {:.2} / {:.2} / {:.1} ms |",
        med(&|r| r.held.p50_ms),
        med(&|r| r.held.p99_ms),
        med(&|r| r.held.max_ms)
    );
    println!(
        "| gateway RSS, nothing held (after the baseline run) | {} |",
        mib(med(&|r| r.mem_base.rss_kib as f64) as u64)
    );
    println!(
        "| gateway RSS, {} held (after the held run) | {} |",
        thousands(min_held),
        mib(med(&|r| r.mem_held_after.rss_kib as f64) as u64)
    );
    let kib = |r: &Round| per_held(r.mem_base.rss_kib, r.mem_held_after.rss_kib, r.opened.held);
    let (lo, hi) = range(&kib);
    println!(
        "| memory per held request (RSS held − RSS nothing held) / held | {:.1} KiB (rounds: {lo:.1}–{hi:.1}) |",
        med(&kib)
    );
    println!(
        "| gateway threads / fds while held (round 1) | {} / {} |",
        rounds[0].mem_held.threads, rounds[0].mem_held.fds
    );
    if let Some(mut a) = approved {
        let (n, sent) = (a.to_upstream_ms.len(), a.sampled);
        println!(
            "| approve → upstream p50 / p99 / max (n={n}, one approve at a time) | {:.2} / {:.2} / {:.2} ms |",
            pct(&mut a.to_upstream_ms, 50.0),
            pct(&mut a.to_upstream_ms, 99.0),
            pct(&mut a.to_upstream_ms, 100.0)
        );
        println!(
            "| approve → agent has the answer p50 / p99 | {:.2} / {:.2} ms |",
            pct(&mut a.to_agent_ms, 50.0),
            pct(&mut a.to_agent_ms, 99.0)
        );
        println!(
            "| approve API call p50 / p99 | {:.2} / {:.2} ms |",
            pct(&mut a.approve_call_ms, 50.0),
            pct(&mut a.approve_call_ms, 99.0)
        );
        println!(
            "| approved held calls answered 200 | {} of {sent}{}{} |",
            a.answered_200,
            if a.other_answers.is_empty() {
                String::new()
            } else {
                format!("; others: {:?}", a.other_answers)
            },
            if a.approve_failures.is_empty() {
                String::new()
            } else {
                format!("; approve calls refused: {:?}", a.approve_failures)
            },
        );
    }
    if let Some(a) = &after {
        let last = &rounds[n - 1];
        println!(
            "| after hanging up on all held calls (last round): settled in | {:.1} s |",
            a.settled_in.as_secs_f64()
        );
        println!(
            "| … then ordinary req/s (vs that round's nothing-held run) | {:.0} ({:.3}) |",
            a.wrk.rps,
            a.wrk.rps / last.baseline.rps
        );
        println!(
            "| … gateway CPU per ordinary request (vs nothing held) | {:.1} µs ({:.1} µs) |",
            a.wrk.cpu.gateway_us_per_req, last.baseline.cpu.gateway_us_per_req
        );
        println!(
            "| … gateway RSS (vs nothing held) | {} ({}) |",
            mib(a.mem.rss_kib),
            mib(last.mem_base.rss_kib)
        );
        println!(
            "| … {} s later: ordinary req/s; gateway CPU per request | {:.0} ({:.3}); {:.1} µs |",
            IDLE_AFTER_RELEASE.as_secs(),
            a.wrk_later.rps,
            a.wrk_later.rps / last.baseline.rps,
            a.wrk_later.cpu.gateway_us_per_req
        );
    }
    println!("| access-log lines | {} |", thousands(log_lines));
    let verdict = if !all_held {
        format!(
            "**NOT MET**: only {} of {} calls could be held",
            thousands(min_held),
            thousands(p.held)
        )
    } else if ratio >= TARGET_RATIO {
        format!(
            "**MET**: ordinary traffic kept {:.1}% (≥ {:.0}%)",
            ratio * 100.0,
            TARGET_RATIO * 100.0
        )
    } else {
        format!(
            "**NOT MET**: ordinary traffic kept {:.1}% (< {:.0}%)",
            ratio * 100.0,
            TARGET_RATIO * 100.0
        )
    };
    println!("| target: ordinary traffic keeps ≥ 90% of its throughput | {verdict} |");
    println!("\nbench run took {:.0} s", run_took.as_secs_f64());
}

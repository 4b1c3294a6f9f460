//! Integration-test harness: the real `portcullis` binary in front of a real upstream (and a
//! real JWKS server), all on loopback, each test with its own ports, temp dir and process.
//!
//! Included by each integration-test binary with `mod support;`; not every binary uses every
//! helper.
#![allow(dead_code)]

/// The headless Chromium of the console tests.
pub mod browser;
pub mod stores;
pub mod tls;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use axum::{Json, Router};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The upstream credential the gateway injects (`${env:TEST_UPSTREAM_KEY}` in the child).
pub const SECRET: &str = "upstream-secret-3f9c1e7a55";
/// `iss` of the issuer backed by `tests/fixtures/keys/jwks.json`.
pub const FIXTURE_ISS: &str = "https://idp.test";
/// `iss` of the issuer backed by the local JWKS server.
pub const JWKS_ISS: &str = "https://jwks.test";
/// `iss` of the local token service (`signing_key_file`).
pub const LOCAL_ISS: &str = "https://portcullis.local";
/// Audience of the fixture and JWKS issuers.
pub const AUD: &str = "portcullis-test";
/// Audience of the local issuer.
pub const LOCAL_AUD: &str = "portcullis";
/// How long the upstream's `/slow` paths sleep.
pub const SLOW: Duration = Duration::from_secs(3);
/// Generous bound for every poll: the machine may be loaded.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(20);
/// The operator token of the default `admin:` section ([`Setup::admin`]), name `ops`.
pub const ADMIN_TOKEN: &str = "pca_test_operator_token_7b1d0c94e2";

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

pub fn fixture(name: &str) -> String {
    let p = fixtures().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A loopback port nothing listens on right now (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// `N` distinct loopback ports nothing listens on right now: all are bound at once before any is
/// released, so two of them cannot be the same port (as two [`free_port`] calls can be).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// HTTP client that never goes through a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Upstream

/// What the upstream received for one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, exactly as on the wire.
    pub path: String,
    /// Every value of every header, names lowercase.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
}

impl Seen {
    /// The only value of `name`; panics if it was sent several times.
    pub fn header(&self, name: &str) -> Option<&str> {
        let v = self.headers.get(name)?;
        assert_eq!(v.len(), 1, "header {name} sent {} times: {v:?}", v.len());
        Some(&v[0])
    }
}

#[derive(Default)]
struct UpstreamState {
    hits: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// A real HTTP server on 127.0.0.1:0 that echoes each request back as JSON.
///
/// Special paths: any path ending in `/slow` (or `/slow` itself) sleeps [`SLOW`] before
/// answering; `/leak` answers with `x-api-key: <the value it received>`.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
}

async fn echo(
    State(s): State<Arc<UpstreamState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &headers {
        map.entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let seen = Seen {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        headers: map.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    s.seen.lock().unwrap().push(seen.clone());
    if uri.path() == "/slow" || uri.path().ends_with("/slow") {
        tokio::time::sleep(SLOW).await;
    }
    let out = json!({
        "method": seen.method,
        "path": seen.path,
        "headers": map,
        "body": seen.body,
    });
    let mut resp = Json(out).into_response();
    if uri.path() == "/leak" {
        if let Some(v) = headers.get("x-api-key") {
            resp.headers_mut().insert("x-api-key", v.clone());
        }
        resp.headers_mut()
            .insert("x-leak-probe", "1".parse().unwrap());
    }
    resp
}

impl Upstream {
    /// Start on the current tokio runtime.
    pub async fn start() -> Upstream {
        let state = Arc::new(UpstreamState::default());
        let app = Router::new().fallback(echo).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, state }
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The request the gateway forwarded with this `x-request-id`.
    pub fn seen_with_request_id(&self, id: &str) -> Seen {
        let all = self.seen();
        all.iter()
            .find(|s| {
                s.headers
                    .get("x-request-id")
                    .is_some_and(|v| v.iter().any(|v| v == id))
            })
            .cloned()
            .unwrap_or_else(|| panic!("upstream never saw x-request-id {id}; saw {all:#?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// JWKS server

struct JwksState {
    body: Mutex<Value>,
    failing: AtomicBool,
    hits: AtomicUsize,
    failures_served: AtomicUsize,
}

/// A real JWKS endpoint whose document can be swapped and which can be made to answer 500.
pub struct JwksServer {
    pub url: String,
    state: Arc<JwksState>,
}

async fn jwks_handler(State(s): State<Arc<JwksState>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if s.failing.load(Ordering::SeqCst) {
        s.failures_served.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::INTERNAL_SERVER_ERROR, "IdP down").into_response();
    }
    Json(s.body.lock().unwrap().clone()).into_response()
}

impl JwksServer {
    /// Serve the fixture `jwks_file`; answer 500 from the start when `failing`.
    pub async fn start(jwks_file: &str, failing: bool) -> JwksServer {
        let state = Arc::new(JwksState {
            body: Mutex::new(serde_json::from_str(&fixture(jwks_file)).unwrap()),
            failing: AtomicBool::new(failing),
            hits: AtomicUsize::new(0),
            failures_served: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/jwks.json", axum::routing::get(jwks_handler))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer { url, state }
    }

    /// Serve another fixture document from now on.
    pub fn serve(&self, jwks_file: &str) {
        *self.state.body.lock().unwrap() = serde_json::from_str(&fixture(jwks_file)).unwrap();
    }

    pub fn fail(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// How many 500s were served.
    pub fn failures_served(&self) -> usize {
        self.state.failures_served.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// Sign `claims` with the fixture private key `key_file` (e.g. `es256.key.pem`).
pub fn sign(alg: Algorithm, key_file: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = fixture(key_file);
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        other => panic!("no fixture key for {other:?}"),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Valid claims for `iss`: issued now, 10 minutes to live, a fresh `jti` (never a cache hit).
pub fn claims_for(iss: &str, sub: &str, scopes: &[&str]) -> Value {
    let now = now();
    json!({
        "iss": iss,
        "aud": AUD,
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid::Uuid::new_v4().to_string(),
        "scope": scopes.join(" "),
    })
}

/// A valid token from the fixture issuer (ES256, kid `es256-test`).
pub fn token(sub: &str, scopes: &[&str]) -> String {
    token_with(claims_for(FIXTURE_ISS, sub, scopes))
}

/// The fixture issuer's ES256 key signing arbitrary claims.
pub fn token_with(claims: Value) -> String {
    sign(
        Algorithm::ES256,
        "es256.key.pem",
        Some("es256-test"),
        &claims,
    )
}

/// An unsigned token (`alg: none`).
pub fn unsigned_token(claims: &Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    format!("{h}.{p}.")
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// An issuer backed by a JWKS URL.
#[derive(Clone)]
pub struct JwksIssuer {
    pub url: String,
    pub refresh_interval: &'static str,
    pub min_refetch_interval: &'static str,
}

/// What varies between test configurations.
#[derive(Clone)]
pub struct Setup {
    pub upstream: SocketAddr,
    pub watch_config: bool,
    pub jwks: Option<JwksIssuer>,
    /// YAML list items appended to `routes:` (indented by two spaces).
    pub extra_routes: String,
    /// `RUST_LOG` of the gateway.
    pub rust_log: &'static str,
    /// `server.grace_period`.
    pub grace_period: &'static str,
    /// YAML lines appended to `server:` (indented by two spaces).
    pub extra_server: String,
    /// YAML list items appended to `upstreams:` (indented by two spaces).
    pub extra_upstreams: String,
    /// The `admin:` section, at the end of the file ([`admin_section`] by default: operator
    /// `ops` with [`ADMIN_TOKEN`]); empty for none.
    pub admin: String,
    /// More environment variables of the gateway process.
    pub env: Vec<(String, String)>,
}

/// An `admin:` section with operator `ops` ([`ADMIN_TOKEN`]) and `extra` lines (indented by
/// two spaces).
pub fn admin_section(extra: &str) -> String {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(ADMIN_TOKEN.as_bytes()));
    format!("admin:\n  tokens:\n    - name: ops\n      token_sha256: \"{hash}\"\n{extra}")
}

impl Setup {
    pub fn new(upstream: &Upstream) -> Setup {
        Setup {
            upstream: upstream.addr,
            watch_config: false,
            jwks: None,
            extra_routes: String::new(),
            rust_log: "info",
            grace_period: "5s",
            extra_server: String::new(),
            extra_upstreams: String::new(),
            admin: admin_section(""),
            env: Vec::new(),
        }
    }
}

/// Ports and files of one gateway, fixed before it starts so that a config can be re-rendered.
#[derive(Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// A port nothing listens on: the `down-api` upstream.
    pub closed_port: u16,
}

impl Layout {
    /// Files in `dir`; proxy, admin and the closed upstream on three distinct free ports.
    pub fn with_free_ports(dir: PathBuf) -> Layout {
        let [proxy, admin, closed_port] = free_ports();
        Layout {
            dir,
            proxy: SocketAddr::from(([127, 0, 0, 1], proxy)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            closed_port,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("gateway.yaml")
    }
    pub fn access_log_path(&self) -> PathBuf {
        self.dir.join("access.log")
    }
    pub fn signing_key_path(&self) -> PathBuf {
        self.dir.join("signing-key.pem")
    }
}

const TEMPLATE: &str = r#"# portcullis integration test configuration
listen:
  proxy: ["@PROXY@"]
  admin: @ADMIN@
  threads: 1
server:
  grace_period: @GRACE@
  watch_config: @WATCH@
@EXTRA_SERVER@
identity:
  clock_skew: 30s
  max_token_ttl: 1h
issuers:
  - name: fixture-idp
    issuer: https://idp.test
    audiences: [portcullis-test]
    algorithms: [ES256, ES384, RS256, EdDSA]
    jwks_file: @FIXTURES@/jwks.json
  - name: local
    issuer: https://portcullis.local
    audiences: [portcullis]
    algorithms: [ES256]
    signing_key_file: @DIR@/signing-key.pem
    signing_key_id: local-1
@JWKS_ISSUER@
token_service:
  issuer: local
  default_ttl: 10m
agents:
  - id: support-bot
    owner: alice@example.com
    description: Answers and files customer tickets
    scopes: [tickets:read, tickets:write]
  - id: reporting-bot
    owner: bob@example.com
    scopes: [tickets:read]
  - id: retired-bot
    owner: carol@example.com
    scopes: [tickets:read]
    enabled: false
upstreams:
  - name: tickets-api
    url: http://@UPSTREAM@
    connect_timeout: 2s
    read_timeout: 10s
    credential:
      header: x-api-key
      value: "${env:TEST_UPSTREAM_KEY}"
  - name: impatient-api
    url: http://@UPSTREAM@
    read_timeout: 1s
    credential:
      header: x-api-key
      value: "${env:TEST_UPSTREAM_KEY}"
  - name: down-api
    url: http://127.0.0.1:@CLOSED@
    connect_timeout: 1s
@EXTRA_UPSTREAMS@
routes:
  - name: tickets-read
    methods: [GET]
    path: /api/tickets/{id}
    upstream: tickets-api
    scopes: [tickets:read]
  - name: tickets-create
    methods: [POST]
    path: /api/tickets
    upstream: tickets-api
    scopes: [tickets:write]
  - name: slow
    methods: [GET]
    path: /slow
    upstream: tickets-api
    scopes: [tickets:read]
  - name: leak
    methods: [GET]
    path: /leak
    upstream: tickets-api
    scopes: [tickets:read]
  - name: slow-timeout
    methods: [GET]
    path: /timeout/slow
    upstream: impatient-api
    scopes: [tickets:read]
  - name: down
    methods: [GET]
    path: /down
    upstream: down-api
    scopes: [tickets:read]
  - name: api-admin
    methods: [GET]
    path: /api/**
    upstream: tickets-api
    scopes: [admin:read]
@EXTRA_ROUTES@
access_log:
  path: @DIR@/access.log
@ADMIN_SECTION@
"#;

/// The configuration text for `setup` laid out in `layout`.
pub fn render(setup: &Setup, layout: &Layout) -> String {
    let jwks = match &setup.jwks {
        None => String::new(),
        Some(j) => format!(
            "  - name: corp-idp\n    issuer: {JWKS_ISS}\n    audiences: [{AUD}]\n    algorithms: [ES256]\n    jwks_url:\n      url: {}\n      refresh_interval: {}\n      min_refetch_interval: {}\n      timeout: 2s\n",
            j.url, j.refresh_interval, j.min_refetch_interval
        ),
    };
    TEMPLATE
        .replace("@PROXY@", &layout.proxy.to_string())
        .replace("@ADMIN@", &layout.admin.to_string())
        .replace("@GRACE@", setup.grace_period)
        .replace("@WATCH@", if setup.watch_config { "true" } else { "false" })
        .replace("@FIXTURES@", &fixtures().display().to_string())
        .replace("@DIR@", &layout.dir.display().to_string())
        .replace("@JWKS_ISSUER@\n", &jwks)
        .replace("@UPSTREAM@", &setup.upstream.to_string())
        .replace("@CLOSED@", &layout.closed_port.to_string())
        .replace("@EXTRA_ROUTES@\n", &setup.extra_routes)
        .replace("@EXTRA_SERVER@\n", &setup.extra_server)
        .replace("@EXTRA_UPSTREAMS@\n", &setup.extra_upstreams)
        .replace("@ADMIN_SECTION@\n", &setup.admin)
}

/// `POST /reload` on the admin listener with the operator token; the response.
pub async fn reload(gw: &Gateway) -> reqwest::Response {
    client()
        .post(gw.admin_url("/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
}

/// Replace a file the way editors and config managers do: write aside, then rename.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The gateway process

/// A running `portcullis run`, killed on drop.
pub struct Gateway {
    child: Child,
    exited: Option<ExitStatus>,
    pub layout: Layout,
    pub setup: Setup,
    // Last: the directory goes after the process is dead.
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Start and wait until `/readyz` answers 200.
    pub async fn start(setup: Setup) -> Gateway {
        let mut gw = Gateway::spawn(setup);
        gw.wait_ready().await;
        gw
    }

    /// Start and wait only until the admin listener answers `/healthz` (not necessarily ready).
    pub async fn start_unready(setup: Setup) -> Gateway {
        let gw = Gateway::spawn(setup);
        gw.poll_admin("/healthz", 200).await;
        gw
    }

    fn spawn(setup: Setup) -> Gateway {
        Gateway::spawn_edited(setup, |text| text)
    }

    /// Write the configuration (through `edit`) and a signing key into a fresh directory, and
    /// start the process there.
    fn spawn_edited(setup: Setup, edit: impl FnOnce(String) -> String) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::with_free_ports(dir.path().to_path_buf());
        let key = portcullis::identity::generate_signing_key().unwrap();
        std::fs::write(layout.signing_key_path(), key).unwrap();
        std::fs::write(layout.config_path(), edit(render(&setup, &layout))).unwrap();
        // A fresh directory: appending creates the output files.
        let child = spawn_in(&layout, &setup);
        Gateway {
            child,
            exited: None,
            layout,
            setup,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `http://<proxy><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.layout.proxy)
    }

    /// `http://<admin><path>`
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.layout.admin)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.layout.dir.join("stderr.txt")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.layout.dir.join("stdout.txt")).unwrap_or_default()
    }

    /// Panic with the gateway's stderr if it has exited.
    fn assert_alive(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("portcullis exited ({st}); stderr:\n{}", self.stderr());
        }
    }

    /// Poll an admin path until it answers `status` (within [`POLL_TIMEOUT`]).
    pub async fn poll_admin(&self, path: &str, status: u16) -> reqwest::Response {
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + POLL_TIMEOUT;
        let mut last;
        loop {
            match c.get(self.admin_url(path)).send().await {
                Ok(r) if r.status().as_u16() == status => return r,
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                panic!(
                    "{path} did not answer {status} within {POLL_TIMEOUT:?} (last: {last}); stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `/readyz` is 200, failing early if the process died.
    pub async fn wait_ready(&mut self) {
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            if let Ok(r) = c.get(self.admin_url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            self.assert_alive();
            if Instant::now() > deadline {
                panic!(
                    "portcullis not ready within {POLL_TIMEOUT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Wait for the process to exit on its own; `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.exited = Some(st);
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Poll `/metrics` until `name{labels}` (sum over matching series) equals `want`.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> String {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            let text = self.metrics().await;
            let got = metric(&text, name, labels);
            if got == Some(want) {
                return text;
            }
            if Instant::now() > deadline {
                panic!("{name}{labels:?} is {got:?}, expected {want}; /metrics:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Complete lines of the access log, parsed.
    pub fn access_log(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.layout.access_log_path()).unwrap_or_default();
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Poll until the access log holds `n` lines; panics if it holds more, or fewer in time.
    pub async fn wait_access_log(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            let lines = self.access_log();
            assert!(
                lines.len() <= n,
                "access log has {} lines, expected {n}: {lines:#?}",
                lines.len()
            );
            if lines.len() == n {
                return lines;
            }
            if Instant::now() > deadline {
                panic!(
                    "access log has {} lines after {POLL_TIMEOUT:?}, expected {n}: {lines:#?}",
                    lines.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Poll until some access-log line satisfies `pred`; returns that line and the whole log
    /// as read then. Lines are written asynchronously, so a test reading the log right after a
    /// call must wait for the line it needs rather than read once.
    pub async fn wait_log_line(
        &self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            let log = self.access_log();
            if let Some(l) = log.iter().find(|l| pred(l)) {
                return (l.clone(), log);
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line for {what} after {POLL_TIMEOUT:?}: {log:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The access-log line of a request id (waits for it to appear).
    pub async fn access_log_line(&self, request_id: &str) -> Value {
        self.wait_log_line(request_id, |l| l["request_id"] == request_id)
            .await
            .0
    }

    /// Replace the config file with `text` (atomically).
    pub fn write_config(&self, text: &str) {
        write_atomically(&self.layout.config_path(), text);
    }

    /// The config for another setup, in this gateway's layout.
    pub fn render(&self, setup: &Setup) -> String {
        render(setup, &self.layout)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Status, headers and JSON body of a response.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub async fn read(r: reqwest::Response) -> Answer {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn request_id(&self) -> &str {
        self.header("x-request-id").expect("x-request-id header")
    }

    /// Assert a gateway refusal: status, `error` code, and a `request_id` equal to the header.
    pub fn assert_refusal(&self, status: u16, error: &str) {
        assert_eq!(
            (self.status, self.body["error"].as_str()),
            (status, Some(error)),
            "body: {}",
            self.body
        );
        let id = self.body["request_id"]
            .as_str()
            .expect("request_id in body");
        assert!(!id.is_empty(), "empty request_id: {}", self.body);
        assert_eq!(Some(id), self.header("x-request-id"), "body: {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "refusal without message: {}",
            self.body
        );
    }
}

/// GET `path` with an optional bearer token.
pub async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> Answer {
    let mut rb = client().get(gw.url(path));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    Answer::read(rb.send().await.unwrap()).await
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send `GET <target>` byte for byte (no client-side normalization) and read the answer.
pub async fn raw_get(addr: SocketAddr, target: &str, token: Option<&str>) -> RawAnswer {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    raw_request(addr, req.as_bytes()).await
}

/// Write `request` on a fresh connection and read until the server closes it.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawAnswer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(POLL_TIMEOUT, s.read_to_end(&mut buf))
        .await
        .expect("server did not close the connection")
        .unwrap();
    parse_raw(&buf)
}

fn parse_raw(buf: &[u8]) -> RawAnswer {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut rest = buf[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        rest = dechunk(&rest);
    } else if let Some(n) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        rest.truncate(n);
    }
    let text = String::from_utf8_lossy(&rest).into_owned();
    RawAnswer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse the Prometheus text exposition (the subset the prometheus crate writes).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                // Values are quoted and may contain commas; walk `k="v"` pairs.
                let mut s = body;
                while !s.is_empty() {
                    let (k, after) = s.split_once("=\"").expect("label");
                    let mut end = 0;
                    let bytes = after.as_bytes();
                    while bytes[end] != b'"' {
                        end += if bytes[end] == b'\\' { 2 } else { 1 };
                    }
                    labels.insert(
                        k.trim_start_matches(',').to_string(),
                        after[..end].replace("\\\"", "\"").replace("\\\\", "\\"),
                    );
                    s = after[end + 1..].trim_start_matches(',');
                }
                (name.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Sum of the samples of `name` whose labels include all of `labels`; `None` if there is none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<Sample> = parse_metrics(text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    if matching.is_empty() {
        None
    } else {
        Some(matching.iter().map(|s| s.value).sum())
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI

/// Run `portcullis <args>` to completion with the test environment.
pub fn cli(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(cwd)
        .env("TEST_UPSTREAM_KEY", SECRET)
        .env_remove("PORTCULLIS_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis")
}

// ---------------------------------------------------------------------------------------------
// Edited configurations, restarts and the CLI with extra environment (approvals tests)

/// Start `portcullis run` in `layout` (config file already written); stdout/stderr are appended
/// to, so that the output of a restarted process follows that of the previous one.
fn spawn_in(layout: &Layout, setup: &Setup) -> Child {
    let open = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(layout.dir.join(name))
            .unwrap()
    };
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("run")
        .arg("-c")
        .arg(layout.config_path())
        .current_dir(&layout.dir)
        .env("TEST_UPSTREAM_KEY", SECRET)
        .env("RUST_LOG", setup.rust_log)
        .envs(setup.env.iter().map(|(k, v)| (k, v)))
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .stdin(Stdio::null())
        .stdout(open("stdout.txt"))
        .stderr(open("stderr.txt"))
        .spawn()
        .expect("spawn portcullis")
}

impl Gateway {
    /// Like [`Gateway::start`], with the rendered configuration passed through `edit` first (for
    /// settings the template has no placeholder for, such as extra agents).
    pub async fn start_edited(setup: Setup, edit: impl FnOnce(String) -> String) -> Gateway {
        let mut gw = Gateway::spawn_edited(setup, edit);
        gw.wait_ready().await;
        gw
    }

    /// SIGTERM, then wait (within [`POLL_TIMEOUT`]) for the process to exit.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(POLL_TIMEOUT).await {
            Some(st) => st,
            None => panic!(
                "portcullis still running {POLL_TIMEOUT:?} after SIGTERM; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Start a new process on the same directory, ports and configuration file as the one that
    /// exited (see [`Gateway::stop`]), and wait until it is ready.
    pub async fn restart(&mut self) {
        assert!(
            self.exited.is_some() || !self.is_running(),
            "restart() needs the previous process to have exited"
        );
        self.child = spawn_in(&self.layout, &self.setup);
        self.exited = None;
        self.wait_ready().await;
    }
}

/// [`cli`] with extra environment variables.
pub fn cli_env(args: &[&str], cwd: &Path, envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(cwd)
        .env("TEST_UPSTREAM_KEY", SECRET)
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_APPROVER_TOKEN")
        .env_remove("PORTCULLIS_ADMIN_TOKEN")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis")
}

// ---------------------------------------------------------------------------------------------
// Upstreams on other listeners (TLS tests)

impl Upstream {
    /// Like [`Upstream::start`], serving the same echo app on `listener` (e.g. one that speaks
    /// TLS).
    pub async fn start_on<L>(listener: L) -> Upstream
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        let state = Arc::new(UpstreamState::default());
        let app = Router::new().fallback(echo).with_state(state.clone());
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, state }
    }
}

/// A webhook receiver on loopback.
#[derive(Clone, Default)]
pub struct Hook {
    got: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    pub async fn start() -> (Hook, String) {
        let hook = Hook::default();
        async fn take(State(h): State<Hook>, Json(v): Json<Value>) -> &'static str {
            h.got.lock().unwrap().push(v);
            "ok"
        }
        let app = Router::new()
            .route("/hook", axum::routing::post(take))
            .with_state(hook.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (hook, url)
    }

    pub fn all(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.all().into_iter().find(|v| pred(v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no such alert; got {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

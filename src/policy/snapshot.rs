//! The compiled, immutable configuration every request is decided against.

use super::route::RouteTable;
use crate::identity::Verifier;
use http::{HeaderName, HeaderValue};
use pingora::protocols::tls::CaType;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Identity, as found in the token's subject claim.
    pub id: Arc<str>,
    /// The accountable human.
    pub owner: Arc<str>,
    /// `id` and `owner` as header values for the upstream, made once per load (a clone per
    /// call is a reference count; `None` when not valid in a header, then the value is built,
    /// and refused, per call as before).
    pub id_header: Option<http::HeaderValue>,
    /// See `id_header`.
    pub owner_header: Option<http::HeaderValue>,
    /// What it is for.
    pub description: String,
    /// Every scope it may ever hold; tokens are cut down to these.
    pub scopes: BTreeSet<String>,
    /// Disabled agents are refused.
    pub enabled: bool,
    /// `tier: supervised`: every write needs approval.
    pub supervised: bool,
    /// Rate and data-volume limits declared on this agent.
    pub limits: super::limits::Limits,
    /// Conditions every call of the agent must meet (empty: none).
    pub conditions: super::conditions::Conditions,
    /// The conditions of the agent's tier (`tiers.<tier>.conditions`), checked first.
    pub tier_conditions: super::conditions::Conditions,
    /// How it authenticates at the token endpoint (`None`: it cannot obtain tokens there).
    pub client: Option<AgentClient>,
    /// Whom it may act for through token exchange (`None`: nobody).
    pub delegation: Option<Delegation>,
}

/// An agent's token-endpoint credentials (`agents[].client`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentClient {
    /// SHA-256 of its client secret, when it may use one.
    pub secret_sha256: Option<[u8; 32]>,
    /// Whether it has keys for `private_key_jwt` (they live in the token service's assertion
    /// verifier, one issuer per agent).
    pub has_keys: bool,
    /// Longest lifetime of a token issued to it.
    pub max_token_ttl: Duration,
}

/// Whom an agent may act for (`agents[].delegation`).
#[derive(Debug, Clone)]
pub struct Delegation {
    /// Config names of the issuers whose tokens it may present as `subject_token`.
    pub issuers: Vec<String>,
    /// Principals it may act for (anchored patterns); empty = any.
    pub subjects: Vec<regex::Regex>,
    /// The subject token must name it in `may_act`.
    pub require_may_act: bool,
}

impl PartialEq for Delegation {
    fn eq(&self, other: &Delegation) -> bool {
        self.issuers == other.issuers
            && self.require_may_act == other.require_may_act
            && self.subjects.len() == other.subjects.len()
            && self
                .subjects
                .iter()
                .zip(&other.subjects)
                .all(|(a, b)| a.as_str() == b.as_str())
    }
}

impl Eq for Delegation {}

impl Agent {
    /// The agent's trust tier, as written in the config.
    pub fn tier(&self) -> &'static str {
        if self.supervised {
            "supervised"
        } else {
            "standard"
        }
    }
}

/// How a call that needs approval waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalMode {
    /// The agent's connection waits for the decision.
    Hold,
    /// 202 at once; the identical request passes once, after approval.
    Async,
}

/// Approval requirements of a route (or of supervised agents' writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// Hold or async.
    pub mode: ApprovalMode,
    /// How long the approval stays open.
    pub timeout: Duration,
    /// Who may decide; empty = any configured approver.
    pub approvers: Vec<String>,
    /// Distinct approving votes needed.
    pub quorum: u32,
}

/// A person who may approve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    /// Name in the audit trail.
    pub name: String,
    /// SHA-256 of their bearer token; `None` for people who sign in only through the IdP.
    pub token_sha256: Option<[u8; 32]>,
    /// Names an IdP token may carry for this person, besides `name`.
    pub idp_names: Vec<String>,
}

/// Webhook destination for approval notices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Receiver URL.
    pub url: String,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Attempts.
    pub max_attempts: u32,
    /// Extra headers (secrets resolved).
    pub headers: Vec<(String, String)>,
}

impl WebhookSettings {
    /// The sender's settings for these.
    pub fn to_config(&self) -> crate::approval::notify::WebhookConfig {
        let mut c = crate::approval::notify::WebhookConfig::new(self.url.clone());
        c.timeout = self.timeout;
        c.max_attempts = self.max_attempts;
        c.headers = self.headers.clone();
        c
    }
}

/// `monitoring.alerts`: where playbook alerts go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertSettings {
    /// The security team's channel: every alert.
    pub webhook: Option<WebhookSettings>,
    /// Each owner's channel, by the owner as agents name them: alerts about their agents.
    pub owners: HashMap<String, WebhookSettings>,
}

/// The `approvals:` section, compiled.
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    /// SQLite file.
    pub store_path: PathBuf,
    /// Body buffering cap.
    pub max_body_bytes: u64,
    /// Console base URL for links.
    pub console_url: String,
    /// People who may approve.
    pub approvers: Vec<Approver>,
    /// Notifications.
    pub webhook: Option<WebhookSettings>,
    /// Policy for supervised agents' writes.
    pub supervised: Arc<ApprovalPolicy>,
    /// People approving with IdP JWTs: (issuer config name, claim).
    pub jwt_approvers: Option<(String, String)>,
    /// Bounds that keep one agent from exhausting approvals.
    pub limits: ApprovalLimits,
}

/// What one agent may make the approval machinery keep (`approvals.max_*`, `retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalLimits {
    /// Pending approvals per agent.
    pub max_pending_per_agent: u32,
    /// Held connections per agent.
    pub max_held_per_agent: u32,
    /// Forwardable headers of a call needing approval.
    pub max_headers: u32,
    /// Their bytes (names + values).
    pub max_header_bytes: u64,
    /// How long decided approvals are kept.
    pub retention: Duration,
}

impl Default for ApprovalLimits {
    fn default() -> Self {
        ApprovalLimits {
            max_pending_per_agent: 20,
            max_held_per_agent: 5,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl ApprovalSettings {
    /// The approver whose token hashes to `sha256`, if any.
    pub fn approver_by_token_hash(&self, sha256: &[u8; 32]) -> Option<&Approver> {
        self.approvers
            .iter()
            .find(|a| a.token_sha256.as_ref() == Some(sha256))
    }

    /// The configured approver an IdP token's approver name belongs to: the one so named, or
    /// the one listing it in `idp_names`. Votes are recorded under that name, so a person
    /// signing in both ways still votes once.
    pub fn approver_by_idp_name(&self, idp_name: &str) -> Option<&Approver> {
        self.approvers
            .iter()
            .find(|a| a.name == idp_name)
            .or_else(|| {
                self.approvers
                    .iter()
                    .find(|a| a.idp_names.iter().any(|n| n == idp_name))
            })
    }
}

/// A secret value that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub HeaderValue);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Header the gateway injects towards an upstream.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Header name (lowercase).
    pub header: HeaderName,
    /// The same name as the bytes pingora keeps for the header's case on the wire: inserting it
    /// clones these (a reference count) instead of copying the name into a new buffer per call.
    pub header_case: bytes::Bytes,
    /// Where its value comes from.
    pub source: CredentialSource,
}

impl Credential {
    /// Inject `header` with the value `source` gives.
    pub fn new(header: HeaderName, source: CredentialSource) -> Credential {
        let header_case = bytes::Bytes::copy_from_slice(header.as_str().as_bytes());
        Credential {
            header,
            header_case,
            source,
        }
    }
}

/// Where an upstream credential's value comes from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// A fixed secret from the config.
    Static(Secret),
    /// A token the gateway signs for each call (`Bearer <jwt>`).
    Mint {
        /// Its `aud`.
        audience: String,
        /// Its lifetime (at most 60s).
        ttl: Duration,
    },
    /// A token obtained from an external token service by exchange, cached until shortly
    /// before it expires.
    Exchange(Arc<crate::token_service::upstream::Exchange>),
}

/// A named upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Name from the config; metric label.
    pub name: Arc<str>,
    /// Resolved address (resolved when the config is loaded).
    pub addr: SocketAddr,
    /// Speak TLS.
    pub tls: bool,
    /// SNI and certificate name for TLS.
    pub sni: String,
    /// Value of the Host header sent upstream (`host[:port]` from the URL).
    pub authority: String,
    /// `authority` as a header value, made once per load.
    pub authority_header: Option<http::HeaderValue>,
    /// Path prefix from the URL (no trailing slash; empty for none).
    pub base_path: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-read timeout.
    pub read_timeout: Duration,
    /// Per-write timeout.
    pub write_timeout: Duration,
    /// Idle keepalive timeout.
    pub idle_timeout: Duration,
    /// Injected credential.
    pub credential: Option<Credential>,
    /// Private trust anchors (`tls_ca_file`); `None` = the system roots.
    pub tls_ca: Option<UpstreamCa>,
    /// Request headers that get a call refused (400 `forbidden_header`): the default
    /// method-override and URL-rewrite families plus the upstream's `refuse_headers`.
    pub refused_headers: Vec<HeaderName>,
    /// Request headers removed before forwarding: client copies of forwarding headers
    /// (`X-Forwarded-Host` ...) plus the upstream's `strip_headers`.
    pub stripped_headers: Vec<HeaderName>,
    /// `path_parameters: allow`: `;` segment parameters may be forwarded; routes match the
    /// path without them.
    pub path_parameters: bool,
    /// `case_insensitive: true`: the upstream serves `/Admin` as `/admin`, so its routes
    /// match literal segments ignoring ASCII case.
    pub case_insensitive: bool,
    /// `kind: mcp`: an MCP server; its routes are judged per tool.
    pub mcp: bool,
}

/// The CA certificates of an upstream's `tls_ca_file`, parsed once per load into what each
/// TLS client needs.
#[derive(Clone)]
pub struct UpstreamCa {
    /// For pingora's per-peer root store (`PeerOptions::ca`).
    pub pingora: Arc<CaType>,
    /// The same certificates for the approval executor's reqwest client.
    pub reqwest: Vec<reqwest::Certificate>,
    /// Digest of the certificates. Pingora's connection pool and the executor's client cache
    /// are keyed without the roots; this keeps connections verified against different roots
    /// (another upstream, or the same one after the file changed) apart.
    pub id: u64,
}

impl fmt::Debug for UpstreamCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamCa")
            .field("certificates", &self.pingora.len())
            .field("id", &format_args!("{:016x}", self.id))
            .finish()
    }
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// Appended to this file.
    File(PathBuf),
    /// Sent to a syslog server (`access_log.syslog`).
    Syslog(crate::observe::syslog::SyslogTarget),
}

/// Settings that are read at start-up only (listeners, threads) or by several parts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Proxy listener addresses.
    pub proxy_listen: Vec<String>,
    /// Admin listener address.
    pub admin_listen: String,
    /// Token service listener address (`listen.token`), if served.
    pub token_listen: Option<String>,
    /// Proxy worker threads.
    pub threads: usize,
    /// SIGTERM drain bound.
    pub grace_period: Duration,
    /// Longest request path.
    pub max_path_length: usize,
    /// Reload when the file changes.
    pub watch_config: bool,
    /// Idle upstream connections kept.
    pub upstream_keepalive_pool: usize,
    /// pingora work-stealing runtime (see README: `server.work_stealing`).
    pub work_stealing: bool,
    /// Access log destination.
    pub access_log: AccessLogTarget,
    /// Bounds on agent connections (read per new connection, so a reload applies to new ones).
    pub connections: ConnectionLimits,
    /// Proxies whose `X-Forwarded-For` is believed about the client's address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Longest string field of an access-log line written whole (`access_log.max_field_bytes`).
    pub access_log_max_field_bytes: usize,
    /// `access_log.schema: ecs`: lines in Elastic Common Schema shape (read at start).
    pub access_log_ecs: bool,
    /// The runtime agent state file (`state.store`); read at start only.
    pub state_store: PathBuf,
    /// `state.backend: shared`: where replicas keep what they share; read at start only.
    pub shared_state: Option<SharedStateSettings>,
    /// `tracing:` OpenTelemetry export and sampling (`None`: off); read at start only.
    pub tracing: Option<crate::observe::trace::TracingSettings>,
}

/// `state.backend: shared`: PostgreSQL for approvals and the durable record of agent state,
/// Redis for shared limits and for telling replicas at once that agent state changed.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedStateSettings {
    /// PostgreSQL URL, secrets resolved.
    pub postgres_url: String,
    /// Pool size per replica.
    pub postgres_max_connections: u32,
    /// Longest wait for one PostgreSQL operation.
    pub postgres_timeout: Duration,
    /// Redis URL, secrets resolved.
    pub redis_url: String,
    /// Prefix of every Redis key and channel.
    pub redis_key_prefix: String,
    /// Longest wait for one Redis operation.
    pub redis_timeout: Duration,
}

/// `scheme://user:password@host/...` → `scheme://host/...`: URLs carry credentials, logs and
/// `Debug` output must not.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl fmt::Debug for SharedStateSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedStateSettings")
            .field("postgres_url", &redact_url(&self.postgres_url))
            .field("postgres_max_connections", &self.postgres_max_connections)
            .field("postgres_timeout", &self.postgres_timeout)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_key_prefix", &self.redis_key_prefix)
            .field("redis_timeout", &self.redis_timeout)
            .finish()
    }
}

/// What one client, or all of them, may hold open on the proxy listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From a request's first byte to the end of its headers.
    pub request_header_timeout: Duration,
    /// Idle time allowed between requests on one connection (and before the first).
    pub keepalive_timeout: Duration,
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_client: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            request_header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_client: 1_000,
        }
    }
}

/// An operator who may change the gateway's state through the admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Name in the audit trail.
    pub name: String,
    /// SHA-256 of their bearer token.
    pub token_sha256: [u8; 32],
}

/// Who may read `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsAccess {
    /// Anyone who reaches the admin listener (with an allowed `Host`).
    #[default]
    Open,
    /// A bearer token: an admin token or the metrics token.
    Token,
}

/// The `admin:` section, compiled.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// Operators (`POST /reload`).
    pub tokens: Vec<AdminToken>,
    /// Extra allowed `Host` values, lowercase: `name` (any port) or `name:port`.
    pub hosts: Vec<String>,
    /// Who may read `/metrics`.
    pub metrics: MetricsAccess,
    /// SHA-256 of a token that may read `/metrics` and nothing else.
    pub metrics_token_sha256: Option<[u8; 32]>,
}

impl AdminSettings {
    /// The operator whose token hashes to `sha256`, if any.
    pub fn token_by_hash(&self, sha256: &[u8; 32]) -> Option<&AdminToken> {
        self.tokens.iter().find(|t| &t.token_sha256 == sha256)
    }
}

/// The token service: `portcullis token issue`, the OAuth endpoints and per-call upstream
/// tokens.
#[derive(Debug, Clone)]
pub struct TokenService {
    /// `iss` of issued tokens.
    pub issuer: String,
    /// `aud` of issued tokens.
    pub audience: String,
    /// The ES256 PKCS#8 key file.
    pub signing_key_file: PathBuf,
    /// `kid` of issued tokens.
    pub kid: String,
    /// Default lifetime.
    pub default_ttl: Duration,
    /// Upper bound on lifetimes (identity.max_token_ttl).
    pub max_ttl: Duration,
    /// The keyring directory, when the issuer signs from one (`portcullis keys rotate`).
    pub keyring_dir: Option<PathBuf>,
    /// The parsed signing key (the active key of a keyring).
    pub signer: crate::identity::SigningKey,
    /// Public JWKs of every key that still verifies (the signer's, and retired keyring keys
    /// within their overlap): the JWKS document.
    pub published: Vec<serde_json::Value>,
    /// Base URL of the token listener (`token_service.public_url`).
    pub public_url: String,
    /// Audiences a token may be issued for; `audience` first.
    pub audiences: Vec<String>,
    /// Longest `act` chain a token exchange may build.
    pub max_delegation_depth: usize,
    /// Longest lifetime of a client assertion.
    pub max_assertion_ttl: Duration,
    /// Services that may introspect: name and SHA-256 of the secret.
    pub introspection_clients: Vec<(String, [u8; 32])>,
    /// Verifies agents' client assertions (one issuer per agent with keys); `None` when no
    /// agent has keys.
    pub assertions: Option<Arc<Verifier>>,
}

impl TokenService {
    /// The token endpoint's URL: what client assertions name as `aud`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/token", self.public_url)
    }
}

/// One compiled configuration. Immutable; a reload builds a new one.
pub struct Snapshot {
    /// Increases by one with every successful load in this process.
    pub version: u64,
    /// First 12 hex digits of the SHA-256 of the file, to tell versions apart across processes.
    pub digest: String,
    /// Digest of the policy sections only ([`crate::config::policy_digest`]): approvals are
    /// bound to it, so replicas whose files differ only in deployment settings honour each
    /// other's approvals.
    pub policy_digest: String,
    /// Process settings.
    pub settings: Settings,
    /// Agents by id.
    pub agents: HashMap<String, Arc<Agent>>,
    /// Upstreams, referenced by index from routes.
    pub upstreams: Vec<Arc<Upstream>>,
    /// The routes.
    pub routes: RouteTable,
    /// Token verification for this configuration.
    pub verifier: Arc<Verifier>,
    /// Local token issuing, if configured.
    pub token_service: Option<TokenService>,
    /// Human approval settings, if configured.
    pub approvals: Option<ApprovalSettings>,
    /// Admin listener credentials and allowed names.
    pub admin: AdminSettings,
    /// Anomaly detectors and playbooks (`monitoring:`; all off when absent).
    pub monitoring: Arc<crate::observe::anomaly::MonitoringConfig>,
    /// Where alerts go (`monitoring.alerts`).
    pub alerts: AlertSettings,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("digest", &self.digest)
            .field("agents", &self.agents.len())
            .field("upstreams", &self.upstreams.len())
            .field("routes", &self.routes.routes.len())
            .finish()
    }
}

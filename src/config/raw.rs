//! Raw configuration: serde structs that mirror `gateway.yaml` one to one.
//!
//! Nothing here is interpreted: durations, templates, secrets and references stay strings until
//! [`crate::config::compile`] turns them into the immutable [`crate::policy::Snapshot`]. Every
//! struct denies unknown fields so that a typo is an error, never a silently ignored setting.

use serde::Deserialize;

/// Listener addresses and worker threads.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// Address(es) agents connect to, e.g. `0.0.0.0:8080`.
    #[serde(default)]
    pub proxy: Vec<String>,
    /// Admin listener (metrics, health, reload); keep it on loopback or a private network.
    pub admin: Option<String>,
    /// Worker threads of the proxy service.
    pub threads: Option<usize>,
    /// The token service's OAuth endpoints (token, revocation, introspection, JWKS,
    /// metadata), for agents; absent = not served.
    pub token: Option<String>,
}

/// Process-level behaviour.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Longest time SIGTERM waits for in-flight requests before exiting.
    pub grace_period: Option<String>,
    /// Longest request path accepted (bytes), default 4096.
    pub max_path_length: Option<usize>,
    /// Watch the config file and reload it when it changes (default true).
    pub watch_config: Option<bool>,
    /// Pool of idle upstream connections kept per worker thread (default 128).
    pub upstream_keepalive_pool: Option<usize>,
    /// One shared work-stealing runtime or one runtime per thread (default: work stealing
    /// when there is more than one worker thread).
    pub work_stealing: Option<bool>,
    /// Longest time from a request's first byte to the end of its headers (default 10s).
    pub request_header_timeout: Option<String>,
    /// How long an idle agent connection is kept open between requests (default 60s).
    pub keepalive_timeout: Option<String>,
    /// Most open agent connections in all (default 10000).
    pub max_connections: Option<usize>,
    /// Most open agent connections from one client address (default 1000).
    pub max_connections_per_client: Option<usize>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` names the client for network conditions.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// Token rules shared by all issuers.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Tolerated clock difference for exp/nbf/iat (default 30s).
    pub clock_skew: Option<String>,
    /// Longest token lifetime (exp - iat) accepted (default 1h).
    pub max_token_ttl: Option<String>,
    /// Largest token accepted, in bytes (default 8192).
    pub max_token_bytes: Option<usize>,
    /// Claim naming the agent (default `sub`).
    pub subject_claim: Option<String>,
    /// Claims carrying scopes, first present wins (default `[scope, scp]`).
    pub scope_claims: Option<Vec<String>>,
    /// Verified tokens kept in memory (default 10000).
    pub cache_capacity: Option<u64>,
}

/// A JWKS URL, either as a bare string or with refresh settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawJwksUrl {
    /// Just the URL; refresh settings take their defaults.
    Url(String),
    /// URL with refresh settings.
    Detailed(RawJwksUrlDetailed),
}

/// JWKS URL with refresh settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwksUrlDetailed {
    /// `https://idp.example.com/.well-known/jwks.json`
    pub url: String,
    /// Background refresh period (default 5m).
    pub refresh_interval: Option<String>,
    /// Least time between re-fetches triggered by an unknown `kid` (default 30s).
    pub min_refetch_interval: Option<String>,
    /// Fetch timeout (default 5s).
    pub timeout: Option<String>,
}

/// One inline key of an issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// Optional key id; matched against the token header's `kid`.
    pub kid: Option<String>,
    /// Public key PEM text.
    pub pem: Option<String>,
    /// File holding a public key PEM.
    pub pem_file: Option<String>,
    /// One JWK, inline.
    pub jwk: Option<serde_json::Value>,
}

/// A trusted token issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// Name used in logs, metrics and by `token_service.issuer`.
    pub name: String,
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Algorithm allow-list, e.g. `[ES256, RS256]`.
    pub algorithms: Vec<String>,
    /// Inline public keys.
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// JWKS document on disk.
    pub jwks_file: Option<String>,
    /// JWKS served by the IdP.
    pub jwks_url: Option<RawJwksUrl>,
    /// Our own ES256 private key (PKCS#8 PEM): `portcullis token issue` signs with it.
    pub signing_key_file: Option<String>,
    /// `kid` written into tokens signed with `signing_key_file`.
    pub signing_key_id: Option<String>,
    /// Instead of `signing_key_file`: a keyring directory (`portcullis keys init|rotate`);
    /// its newest key signs, retired keys verify until their tokens have expired.
    pub signing_keyring: Option<String>,
    /// Shared HMAC secret, e.g. `${env:IDP_HS256_SECRET}`; needs `allow_hmac: true`.
    pub hmac_secret: Option<String>,
    /// HS256/384/512 are refused unless this is true.
    #[serde(default)]
    pub allow_hmac: bool,
}

/// Settings of `portcullis token issue`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenService {
    /// Name of an issuer with a `signing_key_file`.
    pub issuer: String,
    /// Audience written into issued tokens (default: the issuer's first audience).
    pub audience: Option<String>,
    /// Default lifetime of issued tokens (default 10m).
    pub default_ttl: Option<String>,
    /// Base URL agents reach the token listener at, for the metadata document and as the
    /// audience of client assertions (default `http://<listen.token>`).
    pub public_url: Option<String>,
    /// Audiences, besides `audience`, a token exchange may ask for (`audience`/`resource`).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Longest delegation chain a token exchange may build (default 2: agent for agent for
    /// a person).
    pub max_delegation_depth: Option<usize>,
    /// Longest lifetime accepted on a client assertion (`private_key_jwt`; default 1h, the bound
    /// common clients such as authlib and IdPs such as Okta use; each is single-use anyway).
    pub max_assertion_ttl: Option<String>,
    /// Services that may call the introspection endpoint (RFC 7662).
    #[serde(default)]
    pub introspection_clients: Vec<RawIntrospectionClient>,
}

/// A service allowed to introspect tokens: `{name, secret_sha256}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospectionClient {
    /// Its client id (HTTP Basic user name).
    pub name: String,
    /// SHA-256 (hex) of its secret (`portcullis client-secret`).
    pub secret_sha256: String,
}

/// How an agent authenticates at the token endpoint.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAgentClient {
    /// SHA-256 (hex) of a client secret made by `portcullis client-secret`.
    pub secret_sha256: Option<String>,
    /// Public keys its client assertions are signed with (`private_key_jwt`, RFC 7523).
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// Longest lifetime of a token issued to this agent (default `token_service.default_ttl`).
    pub max_token_ttl: Option<String>,
}

/// Whom an agent may act for (token exchange, RFC 8693).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelegation {
    /// Issuers (config names) whose users' tokens the agent may present as `subject_token`.
    pub issuers: Vec<String>,
    /// Only principals whose subject matches one of these (`*` wildcards); default any.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Accept a subject token only when its `may_act` claim names this agent.
    #[serde(default)]
    pub require_may_act: bool,
}

/// A registered agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// Identity as it appears in the token's subject claim.
    pub id: String,
    /// The accountable human.
    pub owner: String,
    /// What the agent is for.
    pub description: Option<String>,
    /// Every scope the agent may ever hold.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Disabled agents are refused (default true).
    pub enabled: Option<bool>,
    /// `standard` (default) or `supervised`: every write of a supervised agent needs approval.
    pub tier: Option<String>,
    /// Rate and data-volume limits of this agent (scope `agent` or `agent_route`); absent = the
    /// top-level `limits:`, `[]` = none.
    pub limits: Option<Vec<super::raw_limits::RawLimit>>,
    /// Conditions every call of this agent must meet, on any route.
    #[serde(default)]
    pub conditions: Vec<super::raw_conditions::RawCondition>,
    /// Token endpoint credentials (absent: the agent cannot obtain tokens there).
    pub client: Option<RawAgentClient>,
    /// Token exchange: whom the agent may act for (absent: nobody).
    pub delegation: Option<RawDelegation>,
}

/// What the gateway adds towards an upstream: a static header value, a token it mints per
/// call, or one it obtains from an external token service. Exactly one of `value`, `mint`,
/// `exchange`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    /// Header name (default `authorization`), e.g. `x-api-key`.
    pub header: Option<String>,
    /// Value with `${env:NAME}` / `${file:PATH}` references.
    pub value: Option<String>,
    /// A token the gateway signs for each call.
    pub mint: Option<RawMint>,
    /// A token obtained from an external token service and cached.
    pub exchange: Option<RawExchange>,
}

/// `credential.mint`: `{audience, ttl}`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMint {
    /// `aud` of the minted token (default the upstream's name).
    pub audience: Option<String>,
    /// Lifetime (default and maximum 60s).
    pub ttl: Option<String>,
}

/// `credential.exchange`: an OAuth token endpoint the gateway exchanges its per-call token at.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExchange {
    /// The token endpoint (`http(s)://`).
    pub token_url: String,
    /// The gateway's client id there.
    pub client_id: String,
    /// Its client secret (`${env:}` / `${file:}`), sent with HTTP Basic.
    pub client_secret: String,
    /// `audience` asked for (default the upstream's name).
    pub audience: Option<String>,
    /// Request timeout (default 5s).
    pub timeout: Option<String>,
}

/// A named upstream tool or API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Referenced by routes.
    pub name: String,
    /// `http://host:port[/base]` or `https://...`.
    pub url: String,
    /// TCP (and TLS) connect timeout (default 2s).
    pub connect_timeout: Option<String>,
    /// Longest wait for each read from the upstream (default 30s).
    pub read_timeout: Option<String>,
    /// Longest wait for each write to the upstream (default 30s).
    pub write_timeout: Option<String>,
    /// How long an idle keepalive connection is kept (default 60s).
    pub idle_timeout: Option<String>,
    /// SNI / certificate name override for https (default: the URL host).
    pub tls_server_name: Option<String>,
    /// PEM file of the CA certificates the upstream's certificate must chain to, instead of
    /// the system roots (https only; relative to the config file).
    pub tls_ca_file: Option<String>,
    /// Secret the gateway injects.
    pub credential: Option<RawCredential>,
    /// More request headers that get a call refused, besides the default method-override and
    /// URL-rewrite families.
    #[serde(default)]
    pub refuse_headers: Vec<String>,
    /// More request headers removed before forwarding, besides the default forwarding family.
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// `refuse` (default): paths with `;` segment parameters are refused; `allow`: they are
    /// forwarded and routes match the path without them.
    pub path_parameters: Option<String>,
    /// The upstream treats paths case-insensitively: its routes match ignoring ASCII case.
    #[serde(default)]
    pub case_insensitive: bool,
    /// `http` (default) or `mcp`: every route to it carries JSON-RPC (Model Context
    /// Protocol) and is judged per tool (`routes[].mcp`).
    pub kind: Option<String>,
}

/// A route that allows some calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Shown in refusals, logs and metrics.
    pub name: String,
    /// Allowed methods; empty or absent = any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path template: `/api/tickets/{id}`, trailing `/**`.
    pub path: Option<String>,
    /// Regex alternative to `path`, anchored.
    pub path_regex: Option<String>,
    /// Host (`tools.internal`, `*.internal`); absent = any host.
    pub host: Option<String>,
    /// Upstream name.
    pub upstream: String,
    /// Scopes all required.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// At least one of these is required as well.
    #[serde(default)]
    pub any_of: Vec<String>,
    /// Hold calls on this route until humans approve them.
    pub approval: Option<RawApprovalPolicy>,
    /// Allow WebSocket upgrades on this route (any other `Upgrade` is always refused).
    #[serde(default)]
    pub websocket: bool,
    /// `enforce` (default) or `shadow`: this route's shadowable policies only record what
    /// they would have refused, and the call goes ahead.
    pub mode: Option<String>,
    /// Shadow only these policies on this route (`scopes`, `conditions`, `limits`).
    #[serde(default)]
    pub shadow: Vec<String>,
    /// Rate and data-volume limits of this route (scope `route` or `agent_route`).
    #[serde(default)]
    pub limits: Vec<super::raw_limits::RawLimit>,
    /// Contextual conditions (time, network, claims, request facts, CEL); see README
    /// `## Conditions`.
    #[serde(default)]
    pub conditions: Vec<super::raw_conditions::RawCondition>,
    /// Labels for monitoring (`private_data`, `untrusted_input`, `egress`...): the sensitive
    /// sequence detector watches for an agent touching one tag and then another.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `http` (default) or `mcp` (also implied by an `mcp` upstream or an `mcp:` section).
    pub kind: Option<String>,
    /// MCP rules: which tools, prompts and resources, with what scopes, conditions, limits
    /// and approvals.
    pub mcp: Option<RawMcp>,
    /// `fail_closed` (default) or `fail_open`: what a call does when the shared state store
    /// (`state.backend: shared`) cannot be reached.
    pub store_unavailable: Option<String>,
}

/// A route's `mcp:` section.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    /// Rules naming tools (`name`, exact or glob).
    #[serde(default)]
    pub tools: Vec<RawMcpRule>,
    /// Rules naming prompts (`name`).
    #[serde(default)]
    pub prompts: Vec<RawMcpRule>,
    /// Rules naming resources (`uri` patterns).
    #[serde(default)]
    pub resources: Vec<RawMcpRule>,
    /// Largest JSON-RPC message read to decide (default 1 MiB).
    pub max_body_bytes: Option<u64>,
    /// How long a call needing approval waits for the decision before the agent is told it
    /// is pending (default 25s; below the ~60 s request timeout of common clients).
    pub approval_wait: Option<String>,
    /// `report` (default), `approve` or `deny`: what a changed tool definition does.
    pub tool_changes: Option<String>,
    /// Write tool-call arguments into the access log (default: only their SHA-256).
    #[serde(default)]
    pub log_arguments: bool,
}

/// One MCP rule.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMcpRule {
    /// Tool or prompt name, exact or glob (`search_*`).
    pub name: Option<String>,
    /// Resource URI pattern (`tickets://*`, `docs://**`).
    pub uri: Option<String>,
    /// Scopes all required (besides the route's).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// At least one of these too.
    #[serde(default)]
    pub any_of: Vec<String>,
    /// Human approval before the call runs.
    pub approval: Option<RawApprovalPolicy>,
    /// Limits of calls under this rule.
    #[serde(default)]
    pub limits: Vec<super::raw_limits::RawLimit>,
    /// Conditions of calls under this rule.
    #[serde(default)]
    pub conditions: Vec<super::raw_conditions::RawCondition>,
}

/// How calls needing approval are handled.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawApprovalPolicy {
    /// `hold` (the connection waits) or `async` (202 now, identical retry passes once approved).
    pub mode: Option<String>,
    /// How long the approval stays open (hold: how long the call waits).
    pub timeout: Option<String>,
    /// Approver names allowed to decide; empty = any configured approver.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Distinct approving votes needed (default 1).
    pub quorum: Option<u32>,
}

/// A person who may approve held calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprover {
    /// Shown in the audit trail.
    pub name: String,
    /// Hex SHA-256 of the approver's bearer token (`portcullis approver-token` makes a pair).
    /// May be left out for a person who signs in only with an IdP token (`jwt_approvers`).
    pub token_sha256: Option<String>,
    /// Names an IdP token may give this same person (`jwt_approvers`: the subject when the
    /// claim is `true`, else the claim's string), besides `name` itself: one person, one vote.
    #[serde(default)]
    pub idp_names: Vec<String>,
}

/// Where approval notifications go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Receiver URL (Slack incoming webhooks work: the body has a `text` field).
    pub url: String,
    /// Per-attempt timeout (default 5s).
    pub timeout: Option<String>,
    /// Attempts before giving up (default 5).
    pub max_attempts: Option<u32>,
    /// Extra headers, values may use `${env:..}` / `${file:..}`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// `approvals:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    /// SQLite file (created on first start); with `state.backend: shared` approvals live in
    /// PostgreSQL and this must be absent.
    pub store: Option<String>,
    /// Largest request body buffered for approval, bytes (default 1 MiB).
    pub max_body_bytes: Option<u64>,
    /// Base URL of the console for links in notifications (default: the admin listener).
    pub console_url: Option<String>,
    /// People who may approve.
    #[serde(default)]
    pub approvers: Vec<RawApprover>,
    /// Notifications.
    pub webhook: Option<RawWebhook>,
    /// Policy for writes of `tier: supervised` agents (default: async, 30m, quorum 1).
    pub supervised: Option<RawApprovalPolicy>,
    /// Also accept people's JWTs from an IdP that carry an approver claim.
    pub jwt_approvers: Option<RawJwtApprovers>,
    /// Pending approvals one agent may have at once (default 20); more → 429.
    pub max_pending_per_agent: Option<u32>,
    /// Calls of one agent held open waiting for a decision at once (default 5); more → 429.
    pub max_held_per_agent: Option<u32>,
    /// Forwardable request headers of a call needing approval (default 64); more → 431.
    pub max_headers: Option<u32>,
    /// Bytes of those headers, names and values (default 16384); more → 431.
    pub max_header_bytes: Option<u64>,
    /// How long decided approvals stay in the store before they are deleted (default 7d).
    pub retention: Option<String>,
}

/// People approving with IdP tokens instead of approver tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtApprovers {
    /// Name of an issuer in `issuers`.
    pub issuer: String,
    /// Claim that marks an approver: `true` (the subject approves) or the approver's name.
    pub claim: String,
}

/// `enforcement:` section: shadow mode for every route.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEnforcement {
    /// `enforce` (default) or `shadow` (every route's shadowable policies).
    pub mode: Option<String>,
    /// Shadow only these policies, on every route (`scopes`, `conditions`, `limits`).
    #[serde(default)]
    pub shadow: Vec<String>,
}

/// Access log settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `stdout` (default) or a file path (appended).
    pub path: Option<String>,
    /// Longest string field written whole, in bytes (default 1024); longer ones are cut with a
    /// marker.
    pub max_field_bytes: Option<usize>,
    /// `portcullis` (default) or `ecs`: Elastic Common Schema lines, the native fields under
    /// `portcullis`. Read at start.
    pub schema: Option<String>,
    /// Send each line to a syslog server instead (RFC 5424); excludes `path`. Read at start.
    pub syslog: Option<RawSyslog>,
}

/// `access_log.syslog:` each line as an RFC 5424 message to a syslog server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSyslog {
    /// `host:port` of the server (`[v6]:port`); a name is resolved at each connect.
    pub address: String,
    /// `udp`, `tcp` (default) or `tls`.
    pub transport: Option<String>,
    /// RFC 5424 facility name (default `local0`).
    pub facility: Option<String>,
    /// APP-NAME of every message (default `portcullis`).
    pub app_name: Option<String>,
    /// HOSTNAME of every message (default: the machine's host name).
    pub hostname: Option<String>,
    /// `tls` only: PEM certificates trusted besides the Mozilla roots.
    pub ca_file: Option<String>,
    /// `tls` only: the name the server's certificate must carry (default: the host of
    /// `address`).
    pub server_name: Option<String>,
}

/// An operator credential for the admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminToken {
    /// Shown in the audit trail (who reloaded).
    pub name: String,
    /// Hex SHA-256 of the bearer token (`portcullis approver-token` makes a pair).
    pub token_sha256: String,
}

/// `admin:` section: who may change state on the admin listener, and which names it answers to.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Operators allowed to `POST /reload` (approvers may too).
    #[serde(default)]
    pub tokens: Vec<RawAdminToken>,
    /// Extra `Host` values the admin listener answers to (`name` or `name:port`), besides its
    /// own address.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// `open` (default) or `token`: whether `/metrics` needs a bearer token.
    pub metrics: Option<String>,
    /// Hex SHA-256 of a token that may only read `/metrics` (with `metrics: token`).
    pub metrics_token_sha256: Option<String>,
}

/// The whole file. List items keep their index in the file, so that errors found after some
/// items failed to parse still name the right `routes[N]`.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    /// `listen:`
    pub listen: RawListen,
    /// `server:`
    pub server: RawServer,
    /// `identity:`
    pub identity: RawIdentity,
    /// `issuers:`
    pub issuers: Vec<(usize, RawIssuer)>,
    /// `token_service:`
    pub token_service: Option<RawTokenService>,
    /// `agents:`
    pub agents: Vec<(usize, RawAgent)>,
    /// `upstreams:`
    pub upstreams: Vec<(usize, RawUpstream)>,
    /// `routes:`
    pub routes: Vec<(usize, RawRoute)>,
    /// `access_log:`
    pub access_log: RawAccessLog,
    /// `approvals:`
    pub approvals: Option<RawApprovals>,
    /// `admin:`
    pub admin: RawAdmin,
    /// `enforcement:`
    pub enforcement: RawEnforcement,
    /// `limits:` the limits of every agent that declares no `limits` of its own.
    pub limits: Vec<(usize, super::raw_limits::RawLimit)>,
    /// `tiers:` what every agent of a trust tier must meet.
    pub tiers: RawTiers,
    /// `state:` where runtime agent state (pauses, revocations) is kept.
    pub state: RawState,
    /// `monitoring:` anomaly detectors, playbooks and alerts.
    pub monitoring: Option<super::raw_monitoring::RawMonitoring>,
    /// `tracing:` OpenTelemetry traces (off when absent).
    pub tracing: Option<RawTracing>,
}

/// `tracing:` section: a span per call, exported over OTLP.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The OTLP collector: `http://host:4318` for `http/protobuf` (`/v1/traces` is appended
    /// unless the path names it), `http://host:4317` for `grpc`; `https://` for TLS.
    pub endpoint: String,
    /// `http/protobuf` (default) or `grpc`, as `OTEL_EXPORTER_OTLP_PROTOCOL` names them.
    pub protocol: Option<String>,
    /// Headers sent with every export (a SaaS collector's API key); values may be
    /// `${env:NAME}`/`${file:PATH}`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Share of calls traced, 0 to 1 (default 0.01).
    pub sample_ratio: Option<f64>,
    /// Trace every call whose incoming `traceparent` says sampled (default false: an agent
    /// cannot make the gateway trace its calls by setting a flag).
    pub respect_parent_sampling: Option<bool>,
    /// `service.name` of the gateway's spans (default `portcullis`).
    pub service_name: Option<String>,
    /// Finished spans waiting for export; past this, spans are dropped and counted (default 2048).
    pub queue_size: Option<usize>,
    /// Spans per export request (default 512).
    pub batch_size: Option<usize>,
    /// Longest wait before a partial batch is sent (default 5s).
    pub export_interval: Option<String>,
    /// Longest time one export may take (default 10s).
    pub export_timeout: Option<String>,
}

/// `state:` section.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// `embedded` (default: SQLite files and in-process counters) or `shared` (PostgreSQL and
    /// Redis, for several replicas).
    pub backend: Option<String>,
    /// SQLite file for runtime agent state and monitoring baselines, relative to the config
    /// file (default `.portcullis/state.db`); `embedded` only.
    pub store: Option<String>,
    /// PostgreSQL: approvals and the durable record of agent state (`shared` only).
    pub postgres: Option<RawPostgres>,
    /// Redis: shared limits and kill-switch propagation (`shared` only).
    pub redis: Option<RawRedis>,
}

/// `state.postgres:`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    /// `postgres://user:password@host:port/db?sslmode=verify-full&sslrootcert=/ca.pem`; secrets
    /// via `${env:}`/`${file:}`.
    pub url: String,
    /// Pool size per replica (default 8).
    pub max_connections: Option<u32>,
    /// Longest wait for one operation (default 2s).
    pub timeout: Option<String>,
}

/// `state.redis:`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[:password@]host:port/db` or `rediss://` for TLS; secrets via `${env:}`/`${file:}`.
    pub url: String,
    /// Prefix of every key and channel (default `portcullis:`), so deployments can share a Redis.
    pub key_prefix: Option<String>,
    /// Longest wait for one operation (default 250ms): past it a route's `store_unavailable`
    /// decides.
    pub timeout: Option<String>,
}

/// `tiers:` section: policy shared by every agent of a trust tier.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTiers {
    /// Agents with `tier: standard` (or no tier).
    pub standard: Option<RawTier>,
    /// Agents with `tier: supervised`.
    pub supervised: Option<RawTier>,
}

/// One tier's policy.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    /// Conditions every call of every agent of the tier must meet, checked before the agent's
    /// own and the route's.
    #[serde(default)]
    pub conditions: Vec<super::raw_conditions::RawCondition>,
}

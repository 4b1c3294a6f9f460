//! Raw config → [`Snapshot`]: every reference checked, every string interpreted, every problem
//! collected. Expensive work (regexes, templates, key decoding, address resolution) happens
//! here, once per load, never per request.

use super::compile_conditions::compile_conditions;
use super::error::{ConfigError, Issue, IssueKind};
use super::locate::LineIndex;
use super::parse::parse;
use super::raw::*;
use super::raw_conditions::RawCondition;
use super::secret;
use crate::identity::{IdentitySettings, IssuerConfig, KeySource, KeyStore, Verifier};
use crate::policy::conditions::Conditions;
use crate::policy::snapshot::{ApprovalLimits, UpstreamCa};
use crate::policy::MetricsAccess;
use crate::policy::{
    AccessLogTarget, AdminSettings, AdminToken, Agent, ApprovalMode, ApprovalPolicy,
    ApprovalSettings, Approver, ConnectionLimits, Credential, HostPattern, PathPattern, Route,
    RouteTable, Secret, Settings, Snapshot, TokenService, Upstream, WebhookSettings,
};
use crate::proxy::headers::{DEFAULT_REFUSED_HEADERS, DEFAULT_STRIPPED_HEADERS};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderName, HeaderValue, Method, Uri};
use pingora::tls::{CertificateDer, RootCertStore};
use pingora::utils::tls::{parse_x509, WrappedX509};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What a load needs from the running process.
#[derive(Clone)]
pub struct LoadContext {
    /// Process-wide JWKS fetchers, shared across reloads.
    pub key_store: Arc<KeyStore>,
    /// Version number the new snapshot gets.
    pub version: u64,
    /// Resolve `${env:..}`/`${file:..}` in upstream credentials. Off for commands that never
    /// talk to upstreams (`token issue`), so they work without the gateway's secrets.
    pub resolve_upstream_secrets: bool,
}

impl LoadContext {
    /// A context for the gateway itself: everything resolved.
    pub fn new(key_store: Arc<KeyStore>, version: u64) -> LoadContext {
        LoadContext {
            key_store,
            version,
            resolve_upstream_secrets: true,
        }
    }
}

/// Read, parse, validate and compile a config file.
pub fn load_file(path: &Path, ctx: &LoadContext) -> Result<Snapshot, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, base, &path.display().to_string(), ctx)
}

/// Parse, validate and compile config text; relative paths are resolved against `base`.
pub fn load_str(
    text: &str,
    base: &Path,
    file: &str,
    ctx: &LoadContext,
) -> Result<Snapshot, ConfigError> {
    let index = LineIndex::build(text);
    let (raw, mut issues) = parse(text, &index);
    let mut c = Compiler {
        index: &index,
        issues: Vec::new(),
        resolve_secrets: ctx.resolve_upstream_secrets,
        base: if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base.to_path_buf()
        },
    };
    let snap = c.compile(raw, text, ctx);
    issues.append(&mut c.issues);
    if issues.is_empty() {
        if let Some(s) = snap {
            return Ok(s);
        }
    }
    issues.sort_by_key(|i| i.line.unwrap_or(usize::MAX));
    Err(ConfigError::Invalid {
        file: file.to_string(),
        issues,
    })
}

struct Compiler<'a> {
    index: &'a LineIndex,
    issues: Vec<Issue>,
    resolve_secrets: bool,
    base: PathBuf,
}

const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
/// Below this, request ids and times would be cut too.
const MIN_LOG_FIELD_BYTES: usize = 64;

impl Compiler<'_> {
    fn err(&mut self, path: impl Into<String>, kind: IssueKind) {
        let path = path.into();
        self.issues.push(Issue {
            line: self.index.line_of(&path),
            path,
            kind,
        });
    }

    fn invalid(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.err(path, IssueKind::Invalid(msg.into()));
    }

    fn duration(&mut self, path: &str, v: &Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.invalid(path, "duration must be greater than zero");
                    default
                }
                Err(e) => {
                    self.invalid(
                        path,
                        format!("`{s}` is not a duration ({e}); write e.g. `30s`, `5m`, `1h`"),
                    );
                    default
                }
            },
        }
    }

    fn file_path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    /// Report duplicates of `names` (path, name) and return the name → first index map.
    fn unique<'n>(
        &mut self,
        what: &'static str,
        names: impl Iterator<Item = (String, &'n str)>,
    ) -> HashMap<String, String> {
        let mut seen: HashMap<String, String> = HashMap::new();
        for (path, name) in names {
            if name.trim().is_empty() {
                self.invalid(path, format!("{what} name must not be empty"));
            } else if let Some(first) = seen.get(name) {
                let first = first.clone();
                self.err(
                    path,
                    IssueKind::Duplicate {
                        what,
                        name: name.to_string(),
                        first,
                    },
                );
            } else {
                seen.insert(name.to_string(), path);
            }
        }
        seen
    }

    fn compile(&mut self, raw: RawConfig, text: &str, ctx: &LoadContext) -> Option<Snapshot> {
        let settings = self.settings(&raw);
        let mut identity = self.identity(&raw.identity);
        let issuers = self.issuers(&raw.issuers);
        let token_service = self.token_service(&raw, &identity);
        let upstreams = self.upstreams(&raw.upstreams);
        let upstream_index: HashMap<String, usize> = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.to_string(), i))
            .collect();
        let approvals = raw
            .approvals
            .as_ref()
            .map(|a| self.approvals(a, &settings.admin_listen, &raw.issuers));
        let routes = self.routes(&raw.routes, &upstream_index, &upstreams, approvals.as_ref());
        identity.approver_claim = approvals
            .as_ref()
            .and_then(|a| a.jwt_approvers.as_ref())
            .map(|(_, claim)| claim.clone());
        let agents = self.agents(&raw.agents, &raw.routes, approvals.is_some());
        let admin = self.admin(&raw.admin);

        let verifier = if self.issues.is_empty() {
            match Verifier::new(issuers, identity, ctx.key_store.clone()) {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    self.invalid("issuers", e.to_string());
                    None
                }
            }
        } else {
            None
        };
        if !self.issues.is_empty() {
            return None;
        }
        let digest = hex::encode(Sha256::digest(text.as_bytes()));
        Some(Snapshot {
            version: ctx.version,
            digest: digest[..12].to_string(),
            settings,
            agents,
            upstreams,
            routes: RouteTable::new(routes),
            verifier: verifier?,
            token_service,
            approvals,
            admin,
        })
    }

    /// A hex SHA-256 (secrets allowed) at `path`, or an issue.
    fn sha256_hex(&mut self, path: &str, text: &str) -> Option<[u8; 32]> {
        let hex_text = match secret::resolve(text, &self.base) {
            Ok(t) => t,
            Err(e) => {
                self.invalid(path, e);
                return None;
            }
        };
        let mut h = [0u8; 32];
        match hex::decode_to_slice(hex_text.trim(), &mut h) {
            Ok(()) => Some(h),
            Err(_) => {
                self.invalid(
                    path,
                    "must be 64 hex digits (the SHA-256 of the token; `portcullis approver-token` prints a token and its hash)",
                );
                None
            }
        }
    }

    fn admin(&mut self, r: &RawAdmin) -> AdminSettings {
        let p = "admin";
        self.unique(
            "admin token",
            r.tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("{p}.tokens[{i}].name"), t.name.as_str())),
        );
        let tokens = r
            .tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let token_sha256 =
                    self.sha256_hex(&format!("{p}.tokens[{i}].token_sha256"), &t.token_sha256)?;
                Some(AdminToken {
                    name: t.name.clone(),
                    token_sha256,
                })
            })
            .collect::<Vec<_>>();
        let mut hosts = Vec::new();
        for (i, h) in r.hosts.iter().enumerate() {
            let host = h.trim().to_ascii_lowercase();
            // A bare authority: what a client puts in `Host`, nothing more.
            let valid = !host.is_empty()
                && !host.contains(['/', '@', '*', '?', '#', ' '])
                && host.parse::<http::uri::Authority>().is_ok();
            if valid {
                hosts.push(host);
            } else {
                self.invalid(
                    format!("{p}.hosts[{i}]"),
                    format!("`{h}` is not a host name or `host:port` (no scheme, path or wildcard), e.g. `portcullis-admin.internal`"),
                );
            }
        }
        let metrics = match r.metrics.as_deref() {
            None | Some("open") => MetricsAccess::Open,
            Some("token") => MetricsAccess::Token,
            Some(other) => {
                self.invalid(
                    format!("{p}.metrics"),
                    format!("`{other}` is not `open` or `token`"),
                );
                MetricsAccess::Open
            }
        };
        let metrics_token_sha256 = r
            .metrics_token_sha256
            .as_ref()
            .and_then(|h| self.sha256_hex(&format!("{p}.metrics_token_sha256"), h));
        if r.metrics_token_sha256.is_some() && metrics != MetricsAccess::Token {
            self.invalid(
                format!("{p}.metrics_token_sha256"),
                "only used with `metrics: token`; set it, or remove this token",
            );
        }
        if metrics == MetricsAccess::Token
            && r.tokens.is_empty()
            && r.metrics_token_sha256.is_none()
        {
            self.invalid(
                format!("{p}.metrics"),
                "`token` needs `admin.tokens` or `admin.metrics_token_sha256`: nobody could read /metrics",
            );
        }
        AdminSettings {
            tokens,
            hosts,
            metrics,
            metrics_token_sha256,
        }
    }

    fn listen_addr(&mut self, path: &str, a: &str) {
        if a.parse::<SocketAddr>().is_err() {
            self.invalid(
                path,
                format!("`{a}` is not an `ip:port` address (e.g. `127.0.0.1:8080`)"),
            );
        }
    }

    fn settings(&mut self, raw: &RawConfig) -> Settings {
        let l = &raw.listen;
        let proxy_listen = if l.proxy.is_empty() {
            vec!["127.0.0.1:8080".to_string()]
        } else {
            l.proxy.clone()
        };
        for (i, a) in proxy_listen.iter().enumerate() {
            if !l.proxy.is_empty() {
                self.listen_addr(&format!("listen.proxy[{i}]"), a);
            }
        }
        let admin_listen = l.admin.clone().unwrap_or_else(|| DEFAULT_ADMIN.into());
        self.listen_addr("listen.admin", &admin_listen);
        if proxy_listen.contains(&admin_listen) {
            self.invalid(
                "listen.admin",
                "the admin listener must differ from the proxy listener",
            );
        }
        let threads = l.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        if threads == 0 {
            self.invalid("listen.threads", "must be at least 1");
        }
        let s = &raw.server;
        let max_path_length = s.max_path_length.unwrap_or(4096);
        if max_path_length < 16 {
            self.invalid("server.max_path_length", "must be at least 16");
        }
        let access_log = match raw.access_log.path.as_deref() {
            None | Some("stdout") | Some("-") => AccessLogTarget::Stdout,
            Some(p) => AccessLogTarget::File(self.file_path(p)),
        };
        let access_log_max_field_bytes = raw
            .access_log
            .max_field_bytes
            .unwrap_or(crate::observe::access_log::DEFAULT_MAX_FIELD_BYTES);
        if access_log_max_field_bytes < MIN_LOG_FIELD_BYTES {
            self.invalid(
                "access_log.max_field_bytes",
                format!("must be at least {MIN_LOG_FIELD_BYTES}"),
            );
        }
        Settings {
            proxy_listen,
            admin_listen,
            threads: threads.max(1),
            grace_period: self.duration(
                "server.grace_period",
                &s.grace_period,
                Duration::from_secs(10),
            ),
            max_path_length,
            watch_config: s.watch_config.unwrap_or(true),
            upstream_keepalive_pool: s.upstream_keepalive_pool.unwrap_or(128),
            // With one worker there is nobody to steal from: a current-thread runtime does the
            // same work without the multi-thread scheduler's cross-thread bookkeeping (~20% more
            // requests per second measured here), and pingora's pooled-connection handoff cannot
            // race across threads.
            work_stealing: s.work_stealing.unwrap_or(threads > 1),
            access_log,
            connections: self.connection_limits(s),
            access_log_max_field_bytes,
        }
    }

    fn connection_limits(&mut self, s: &RawServer) -> ConnectionLimits {
        let d = ConnectionLimits::default();
        let limits = ConnectionLimits {
            request_header_timeout: self.duration(
                "server.request_header_timeout",
                &s.request_header_timeout,
                d.request_header_timeout,
            ),
            keepalive_timeout: self.duration(
                "server.keepalive_timeout",
                &s.keepalive_timeout,
                d.keepalive_timeout,
            ),
            max_connections: s.max_connections.unwrap_or(d.max_connections),
            max_connections_per_client: s
                .max_connections_per_client
                .unwrap_or(d.max_connections_per_client),
        };
        if limits.keepalive_timeout > crate::proxy::connections::PINGORA_KEEPALIVE {
            self.invalid(
                "server.keepalive_timeout",
                "must be at most 60s (pingora closes idle connections after 60s)",
            );
        }
        if limits.max_connections == 0 {
            self.invalid("server.max_connections", "must be at least 1");
        }
        if limits.max_connections_per_client == 0 {
            self.invalid("server.max_connections_per_client", "must be at least 1");
        }
        limits
    }

    fn identity(&mut self, r: &RawIdentity) -> IdentitySettings {
        let d = IdentitySettings::default();
        let subject_claim = r.subject_claim.clone().unwrap_or(d.subject_claim);
        if subject_claim.trim().is_empty() {
            self.invalid("identity.subject_claim", "must not be empty");
        }
        let scope_claims = r.scope_claims.clone().unwrap_or(d.scope_claims);
        if scope_claims.is_empty() {
            self.invalid(
                "identity.scope_claims",
                "list at least one claim, e.g. `[scope, scp]`",
            );
        }
        let max_token_bytes = r.max_token_bytes.unwrap_or(d.max_token_bytes);
        if max_token_bytes < 256 {
            self.invalid("identity.max_token_bytes", "must be at least 256");
        }
        IdentitySettings {
            clock_skew: self.duration("identity.clock_skew", &r.clock_skew, d.clock_skew),
            max_token_ttl: self.duration(
                "identity.max_token_ttl",
                &r.max_token_ttl,
                d.max_token_ttl,
            ),
            max_token_bytes,
            subject_claim,
            scope_claims,
            cache_capacity: r.cache_capacity.unwrap_or(d.cache_capacity),
            approver_claim: None,
        }
    }

    fn issuers(&mut self, raw: &[(usize, RawIssuer)]) -> Vec<IssuerConfig> {
        self.unique(
            "issuer",
            raw.iter()
                .map(|(i, r)| (format!("issuers[{i}].name"), r.name.as_str())),
        );
        if raw.is_empty() {
            self.invalid(
                "issuers",
                "no token issuer is configured, so every request would be refused; add one",
            );
        }
        raw.iter().map(|(i, r)| self.issuer(*i, r)).collect()
    }

    fn issuer(&mut self, i: usize, r: &RawIssuer) -> IssuerConfig {
        let p = format!("issuers[{i}]");
        if r.issuer.trim().is_empty() {
            self.invalid(format!("{p}.issuer"), "must not be empty");
        }
        if r.audiences.is_empty() {
            self.invalid(format!("{p}.audiences"), "list at least one audience");
        }
        let mut algorithms = Vec::new();
        for (j, a) in r.algorithms.iter().enumerate() {
            let ap = format!("{p}.algorithms[{j}]");
            let alg = match a.as_str() {
                "ES256" => jsonwebtoken::Algorithm::ES256,
                "ES384" => jsonwebtoken::Algorithm::ES384,
                "RS256" => jsonwebtoken::Algorithm::RS256,
                "PS256" => jsonwebtoken::Algorithm::PS256,
                "EdDSA" => jsonwebtoken::Algorithm::EdDSA,
                "HS256" | "HS384" | "HS512" => {
                    if !r.allow_hmac {
                        self.invalid(&ap, format!("{a} uses a shared secret; set `allow_hmac: true` on this issuer to accept it"));
                    }
                    a.parse().expect("HS names parse")
                }
                "none" | "None" | "NONE" => {
                    self.invalid(&ap, "unsigned tokens (`none`) are never accepted");
                    continue;
                }
                other => {
                    self.invalid(&ap, format!("unsupported algorithm `{other}`; use ES256, ES384, RS256, PS256, EdDSA (or HS256 with allow_hmac)"));
                    continue;
                }
            };
            algorithms.push(alg);
        }
        if r.algorithms.is_empty() {
            self.invalid(
                format!("{p}.algorithms"),
                "list the accepted algorithms explicitly, e.g. `[ES256]`",
            );
        }
        let hmac_alg = algorithms.iter().any(|a| {
            matches!(
                a,
                jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512
            )
        });

        let mut keys = Vec::new();
        for (j, k) in r.keys.iter().enumerate() {
            let kp = format!("{p}.keys[{j}]");
            let set = [k.pem.is_some(), k.pem_file.is_some(), k.jwk.is_some()];
            if set.iter().filter(|b| **b).count() != 1 {
                self.invalid(&kp, "set exactly one of `pem`, `pem_file`, `jwk`");
                continue;
            }
            if let Some(pem) = &k.pem {
                keys.push(KeySource::Pem {
                    pem: pem.clone(),
                    kid: k.kid.clone(),
                });
            } else if let Some(f) = &k.pem_file {
                match std::fs::read_to_string(self.file_path(f)) {
                    Ok(pem) => keys.push(KeySource::Pem {
                        pem,
                        kid: k.kid.clone(),
                    }),
                    Err(e) => {
                        self.invalid(format!("{kp}.pem_file"), format!("cannot read `{f}`: {e}"))
                    }
                }
            } else if let Some(jwk) = &k.jwk {
                let mut jwk = jwk.clone();
                if let (Some(kid), Some(obj)) = (&k.kid, jwk.as_object_mut()) {
                    obj.entry("kid")
                        .or_insert(serde_json::Value::String(kid.clone()));
                }
                keys.push(KeySource::Jwk(jwk));
            }
        }
        if let Some(f) = &r.jwks_file {
            keys.push(KeySource::JwksFile(self.file_path(f)));
        }
        if let Some(u) = &r.jwks_url {
            let (url, refresh, refetch, timeout) = match u {
                RawJwksUrl::Url(url) => (url.clone(), None, None, None),
                RawJwksUrl::Detailed(d) => (
                    d.url.clone(),
                    d.refresh_interval.clone(),
                    d.min_refetch_interval.clone(),
                    d.timeout.clone(),
                ),
            };
            let up = format!("{p}.jwks_url");
            match url.parse::<Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("http") | Some("https")) => {}
                _ => self.invalid(&up, format!("`{url}` is not an http(s) URL")),
            }
            keys.push(KeySource::JwksUrl {
                url,
                refresh_interval: self.duration(
                    &format!("{up}.refresh_interval"),
                    &refresh,
                    Duration::from_secs(300),
                ),
                min_refetch_interval: self.duration(
                    &format!("{up}.min_refetch_interval"),
                    &refetch,
                    Duration::from_secs(30),
                ),
                timeout: self.duration(&format!("{up}.timeout"), &timeout, Duration::from_secs(5)),
            });
        }
        if let Some(f) = &r.signing_key_file {
            if !algorithms.contains(&jsonwebtoken::Algorithm::ES256) {
                self.invalid(
                    format!("{p}.signing_key_file"),
                    "the signing key is ES256: add ES256 to `algorithms`",
                );
            }
            let path = self.file_path(f);
            if !path.exists() {
                self.invalid(
                    format!("{p}.signing_key_file"),
                    format!(
                        "`{}` does not exist; create it with `portcullis keygen --out {f}`",
                        path.display()
                    ),
                );
            }
            keys.push(KeySource::SigningKeyFile {
                path,
                kid: r.signing_key_id.clone().unwrap_or_else(|| r.name.clone()),
            });
        }
        match (&r.hmac_secret, hmac_alg) {
            (Some(s), true) => match secret::resolve(s, &self.base) {
                Ok(v) if v.len() >= 32 => keys.push(KeySource::HmacSecret {
                    secret: v.into_bytes(),
                    kid: None,
                }),
                Ok(_) => self.invalid(
                    format!("{p}.hmac_secret"),
                    "an HMAC secret must be at least 32 bytes",
                ),
                Err(e) => self.invalid(format!("{p}.hmac_secret"), e),
            },
            (Some(_), false) => self.invalid(
                format!("{p}.hmac_secret"),
                "an HMAC secret needs an HS algorithm in `algorithms`",
            ),
            (None, true) => self.invalid(
                format!("{p}.algorithms"),
                "HS algorithms need `hmac_secret`",
            ),
            (None, false) => {}
        }
        if keys.is_empty() {
            self.invalid(
                &p,
                "no keys: set `keys`, `jwks_file`, `jwks_url` or `signing_key_file`",
            );
        }
        IssuerConfig {
            name: r.name.clone(),
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            algorithms,
            keys,
        }
    }

    fn token_service(&mut self, raw: &RawConfig, id: &IdentitySettings) -> Option<TokenService> {
        let ts = raw.token_service.as_ref()?;
        let Some((_, iss)) = raw.issuers.iter().find(|(_, r)| r.name == ts.issuer) else {
            let names: Vec<&str> = raw.issuers.iter().map(|(_, r)| r.name.as_str()).collect();
            self.err(
                "token_service.issuer",
                IssueKind::UnknownReference {
                    what: "issuer",
                    name: ts.issuer.clone(),
                    hint: hint(&names),
                },
            );
            return None;
        };
        let Some(key) = &iss.signing_key_file else {
            self.invalid(
                "token_service.issuer",
                format!(
                    "issuer `{}` has no `signing_key_file` to sign with",
                    iss.name
                ),
            );
            return None;
        };
        let default_ttl = self.duration(
            "token_service.default_ttl",
            &ts.default_ttl,
            Duration::from_secs(600),
        );
        if default_ttl > id.max_token_ttl {
            self.invalid(
                "token_service.default_ttl",
                "must not exceed identity.max_token_ttl",
            );
        }
        let audience = match &ts.audience {
            Some(a) if !iss.audiences.contains(a) => {
                self.invalid(
                    "token_service.audience",
                    format!("`{a}` is not one of the issuer's audiences"),
                );
                a.clone()
            }
            Some(a) => a.clone(),
            None => iss.audiences.first().cloned().unwrap_or_default(),
        };
        Some(TokenService {
            issuer: iss.issuer.clone(),
            audience,
            signing_key_file: self.file_path(key),
            kid: iss
                .signing_key_id
                .clone()
                .unwrap_or_else(|| iss.name.clone()),
            default_ttl,
            max_ttl: id.max_token_ttl,
        })
    }

    fn upstreams(&mut self, raw: &[(usize, RawUpstream)]) -> Vec<Arc<Upstream>> {
        self.unique(
            "upstream",
            raw.iter()
                .map(|(i, r)| (format!("upstreams[{i}].name"), r.name.as_str())),
        );
        raw.iter()
            .filter_map(|(i, r)| self.upstream(*i, r))
            .map(Arc::new)
            .collect()
    }

    fn upstream(&mut self, i: usize, r: &RawUpstream) -> Option<Upstream> {
        let p = format!("upstreams[{i}]");
        let up = format!("{p}.url");
        let connect_timeout = self.duration(
            &format!("{p}.connect_timeout"),
            &r.connect_timeout,
            Duration::from_secs(2),
        );
        let read_timeout = self.duration(
            &format!("{p}.read_timeout"),
            &r.read_timeout,
            Duration::from_secs(30),
        );
        let write_timeout = self.duration(
            &format!("{p}.write_timeout"),
            &r.write_timeout,
            Duration::from_secs(30),
        );
        let idle_timeout = self.duration(
            &format!("{p}.idle_timeout"),
            &r.idle_timeout,
            Duration::from_secs(60),
        );
        let credential = r
            .credential
            .as_ref()
            .and_then(|c| self.credential(&format!("{p}.credential"), c));
        let uri: Uri = match r.url.parse() {
            Ok(u) => u,
            Err(e) => {
                self.invalid(&up, format!("`{}` is not a URL: {e}", r.url));
                return None;
            }
        };
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                self.invalid(&up, "the URL must start with http:// or https://");
                return None;
            }
        };
        let tls_ca = match &r.tls_ca_file {
            None => None,
            Some(_) if !tls => {
                self.invalid(
                    format!("{p}.tls_ca_file"),
                    "only valid with an https:// URL",
                );
                None
            }
            Some(f) => self.ca_file(&format!("{p}.tls_ca_file"), f),
        };
        let Some(auth) = uri.authority() else {
            self.invalid(&up, "the URL has no host");
            return None;
        };
        if auth.as_str().contains('@') || uri.query().is_some() {
            self.invalid(
                &up,
                "the URL must not carry user info or a query string; use `credential` for secrets",
            );
            return None;
        }
        let host = auth
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addr = match (host.as_str(), port)
            .to_socket_addrs()
            .map(|mut a| a.next())
        {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => {
                self.invalid(&up, format!("cannot resolve `{host}:{port}`"));
                return None;
            }
        };
        let sni = r.tls_server_name.clone().unwrap_or_else(|| host.clone());
        if tls && sni.is_empty() {
            // Pingora skips certificate verification altogether for an empty SNI.
            self.invalid(format!("{p}.tls_server_name"), "must not be empty");
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        let refused_headers = self.header_list(
            &format!("{p}.refuse_headers"),
            DEFAULT_REFUSED_HEADERS,
            &r.refuse_headers,
        );
        let stripped_headers = self.header_list(
            &format!("{p}.strip_headers"),
            DEFAULT_STRIPPED_HEADERS,
            &r.strip_headers,
        );
        let path_parameters = match r.path_parameters.as_deref() {
            None | Some("refuse") => false,
            Some("allow") => true,
            Some(other) => {
                self.invalid(
                    format!("{p}.path_parameters"),
                    format!("`{other}` is not `refuse` or `allow`"),
                );
                false
            }
        };
        Some(Upstream {
            name: r.name.as_str().into(),
            addr,
            tls,
            sni,
            authority: auth.as_str().to_string(),
            base_path,
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout,
            credential,
            tls_ca,
            refused_headers,
            stripped_headers,
            path_parameters,
            case_insensitive: r.case_insensitive,
        })
    }

    /// A default header list extended by an upstream's own names (`p` is the field path).
    fn header_list(
        &mut self,
        p: &str,
        defaults: &[&'static str],
        extra: &[String],
    ) -> Vec<HeaderName> {
        // Headers every call needs: refusing or stripping them would break all calls or the
        // gateway's own framing, never add safety.
        const PROTECTED: [&str; 5] = [
            "authorization",
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
        ];
        let mut out: Vec<HeaderName> = defaults
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect();
        for (j, h) in extra.iter().enumerate() {
            match HeaderName::from_bytes(h.trim().as_bytes()) {
                Ok(n) if PROTECTED.contains(&n.as_str()) => self.invalid(
                    format!("{p}[{j}]"),
                    format!("`{n}` is needed by every call and cannot be listed here"),
                ),
                Ok(n) => {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
                Err(_) => self.invalid(format!("{p}[{j}]"), format!("`{h}` is not a header name")),
            }
        }
        out
    }

    /// Read, check and convert the certificates of a `tls_ca_file` (`p` is its field path).
    fn ca_file(&mut self, p: &str, f: &str) -> Option<UpstreamCa> {
        // Bytes, not a string: a DER or binary file gets "no PEM certificate", not a UTF-8 error.
        let text = match std::fs::read(self.file_path(f)) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                self.invalid(p, format!("cannot read `{f}`: {e}"));
                return None;
            }
        };
        let ders = match pem_certificates(&text) {
            Ok(d) if d.is_empty() => {
                self.invalid(p, format!("`{f}` contains no PEM certificate"));
                return None;
            }
            Ok(d) => d,
            Err(e) => {
                self.invalid(p, format!("`{f}`: {e}"));
                return None;
            }
        };
        // Parse each one now as rustls will at connect time, so that a bad certificate is a
        // config error rather than a failed call (and pingora's own parser, which panics on
        // bad DER, only ever sees certificates that parse).
        let mut roots = RootCertStore::empty();
        for (n, der) in ders.iter().enumerate() {
            if let Err(e) = roots.add(CertificateDer::from(der.as_slice())) {
                self.invalid(
                    p,
                    format!("certificate {} in `{f}` is not usable: {e}", n + 1),
                );
                return None;
            }
        }
        let mut digest = Sha256::new();
        for der in &ders {
            digest.update(der);
        }
        let digest = digest.finalize();
        let reqwest = match ders
            .iter()
            .map(|d| reqwest::Certificate::from_der(d))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(c) => c,
            Err(e) => {
                self.invalid(p, format!("`{f}`: {e}"));
                return None;
            }
        };
        Some(UpstreamCa {
            pingora: ders
                .into_iter()
                .map(|d| WrappedX509::new(d, parse_x509))
                .collect(),
            reqwest,
            id: u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")),
        })
    }

    fn credential(&mut self, p: &str, c: &RawCredential) -> Option<Credential> {
        let header = match HeaderName::from_bytes(c.header.trim().as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                self.invalid(
                    format!("{p}.header"),
                    format!("`{}` is not a valid header name", c.header),
                );
                return None;
            }
        };
        if matches!(
            header.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding" | "te" | "upgrade"
        ) || header.as_str().starts_with("x-portcullis-")
        {
            self.invalid(
                format!("{p}.header"),
                format!("`{header}` is managed by the gateway and cannot carry a credential"),
            );
            return None;
        }
        if !self.resolve_secrets {
            return Some(Credential {
                header,
                value: Secret(HeaderValue::from_static("<not resolved>")),
            });
        }
        let value = match secret::resolve(&c.value, &self.base) {
            Ok(v) => v,
            Err(e) => {
                self.invalid(format!("{p}.value"), e);
                return None;
            }
        };
        match HeaderValue::from_str(&value) {
            Ok(mut v) => {
                v.set_sensitive(true);
                Some(Credential {
                    header,
                    value: Secret(v),
                })
            }
            Err(_) => {
                // Do not echo the value: it is a secret.
                self.invalid(format!("{p}.value"), "the resolved value is not a valid header value (control characters or newlines?)");
                None
            }
        }
    }

    /// Compile an approval policy; `approvals` is the section it draws approvers from.
    fn approval_policy(
        &mut self,
        p: &str,
        r: &RawApprovalPolicy,
        approvals: Option<&ApprovalSettings>,
        default_timeout: Duration,
    ) -> Option<ApprovalPolicy> {
        let Some(settings) = approvals else {
            self.invalid(p, "needs an `approvals:` section (store and approvers)");
            return None;
        };
        let mode = match r.mode.as_deref() {
            None | Some("hold") => ApprovalMode::Hold,
            Some("async") => ApprovalMode::Async,
            Some(other) => {
                self.invalid(
                    format!("{p}.mode"),
                    format!("`{other}` is not `hold` or `async`"),
                );
                ApprovalMode::Hold
            }
        };
        let timeout = self.duration(&format!("{p}.timeout"), &r.timeout, default_timeout);
        let known: Vec<&str> = settings.approvers.iter().map(|a| a.name.as_str()).collect();
        // IdP approvers are mapped onto these names when they sign in, so every approver a
        // route names must be one of them, with or without `jwt_approvers`.
        for (j, a) in r.approvers.iter().enumerate() {
            if !known.contains(&a.as_str()) {
                self.err(
                    format!("{p}.approvers[{j}]"),
                    IssueKind::UnknownReference {
                        what: "approver",
                        name: a.clone(),
                        hint: hint(&known),
                    },
                );
            }
        }
        let quorum = r.quorum.unwrap_or(1);
        let eligible = if r.approvers.is_empty() {
            known.len()
        } else {
            r.approvers.len()
        };
        if quorum == 0 {
            self.invalid(format!("{p}.quorum"), "must be at least 1");
        } else if quorum as usize > eligible {
            self.invalid(
                format!("{p}.quorum"),
                format!("{quorum} distinct approvals can never be reached: only {eligible} approver(s) may decide"),
            );
        }
        Some(ApprovalPolicy {
            mode,
            timeout,
            approvers: r.approvers.clone(),
            quorum,
        })
    }

    fn approvals(
        &mut self,
        r: &RawApprovals,
        admin_listen: &str,
        issuers: &[(usize, RawIssuer)],
    ) -> ApprovalSettings {
        let p = "approvals";
        // One person, one vote: an IdP name must lead to exactly one configured approver.
        self.unique(
            "approver",
            r.approvers.iter().enumerate().flat_map(|(i, a)| {
                std::iter::once((format!("{p}.approvers[{i}].name"), a.name.as_str())).chain(
                    a.idp_names.iter().enumerate().map(move |(j, n)| {
                        (format!("{p}.approvers[{i}].idp_names[{j}]"), n.as_str())
                    }),
                )
            }),
        );
        let mut approvers = Vec::new();
        for (i, a) in r.approvers.iter().enumerate() {
            if !a.idp_names.is_empty() && r.jwt_approvers.is_none() {
                self.invalid(
                    format!("{p}.approvers[{i}].idp_names"),
                    "only means something with `approvals.jwt_approvers`",
                );
            }
            let Some(raw_hash) = &a.token_sha256 else {
                if r.jwt_approvers.is_none() {
                    self.invalid(
                        format!("{p}.approvers[{i}].token_sha256"),
                        "required unless `jwt_approvers` is set: without it this approver could never sign in",
                    );
                }
                approvers.push(Approver {
                    name: a.name.clone(),
                    token_sha256: None,
                    idp_names: a.idp_names.clone(),
                });
                continue;
            };
            let mut h = [0u8; 32];
            let hex_text = match secret::resolve(raw_hash, &self.base) {
                Ok(t) => t,
                Err(e) => {
                    self.invalid(format!("{p}.approvers[{i}].token_sha256"), e);
                    continue;
                }
            };
            match hex::decode_to_slice(hex_text.trim(), &mut h) {
                Ok(()) => approvers.push(Approver {
                    name: a.name.clone(),
                    token_sha256: Some(h),
                    idp_names: a.idp_names.clone(),
                }),
                Err(_) => self.invalid(
                    format!("{p}.approvers[{i}].token_sha256"),
                    "must be 64 hex digits (the SHA-256 of the approver's token; `portcullis approver-token` prints one)",
                ),
            }
        }
        let jwt_approvers = r.jwt_approvers.as_ref().and_then(|j| {
            let names: Vec<&str> = issuers.iter().map(|(_, i)| i.name.as_str()).collect();
            if !names.contains(&j.issuer.as_str()) {
                self.err(
                    format!("{p}.jwt_approvers.issuer"),
                    IssueKind::UnknownReference {
                        what: "issuer",
                        name: j.issuer.clone(),
                        hint: hint(&names),
                    },
                );
                return None;
            }
            if j.claim.trim().is_empty() {
                self.invalid(format!("{p}.jwt_approvers.claim"), "must not be empty");
                return None;
            }
            Some((j.issuer.clone(), j.claim.trim().to_string()))
        });
        if r.approvers.is_empty() {
            self.invalid(
                format!("{p}.approvers"),
                "list at least one approver: held calls could never be decided (IdP approvers, too, must be listed, by `name` or `idp_names`, so that one person counts once toward a quorum)",
            );
        }
        let limits = self.approval_limits(r);
        let max_body_bytes = r.max_body_bytes.unwrap_or(1024 * 1024);
        if max_body_bytes == 0 {
            self.invalid(format!("{p}.max_body_bytes"), "must be at least 1");
        }
        let webhook = r.webhook.as_ref().map(|w| {
            let wp = format!("{p}.webhook");
            match w.url.parse::<Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http") | Some("https")) => {}
                _ => self.invalid(
                    format!("{wp}.url"),
                    format!("`{}` is not an http(s) URL", w.url),
                ),
            }
            let mut headers = Vec::new();
            for (k, v) in &w.headers {
                match secret::resolve(v, &self.base) {
                    Ok(v) => headers.push((k.clone(), v)),
                    Err(e) => self.invalid(format!("{wp}.headers.{k}"), e),
                }
            }
            WebhookSettings {
                url: w.url.clone(),
                timeout: self.duration(
                    &format!("{wp}.timeout"),
                    &w.timeout,
                    Duration::from_secs(5),
                ),
                max_attempts: w.max_attempts.unwrap_or(5).max(1),
                headers,
            }
        });
        let mut settings = ApprovalSettings {
            store_path: self.file_path(&r.store),
            max_body_bytes,
            console_url: r
                .console_url
                .clone()
                .unwrap_or_else(|| default_console_url(admin_listen))
                .trim_end_matches('/')
                .to_string(),
            approvers,
            webhook,
            jwt_approvers,
            limits,
            supervised: Arc::new(ApprovalPolicy {
                mode: ApprovalMode::Async,
                timeout: Duration::from_secs(1800),
                approvers: Vec::new(),
                quorum: 1,
            }),
        };
        let sup = r.supervised.clone().unwrap_or(RawApprovalPolicy {
            mode: Some("async".into()),
            ..Default::default()
        });
        if let Some(pol) = self.approval_policy(
            &format!("{p}.supervised"),
            &sup,
            Some(&settings),
            Duration::from_secs(1800),
        ) {
            settings.supervised = Arc::new(pol);
        }
        settings
    }

    /// `approvals.max_*` and `retention`: what one agent may make the gateway keep.
    fn approval_limits(&mut self, r: &RawApprovals) -> ApprovalLimits {
        let p = "approvals";
        let d = ApprovalLimits::default();
        let mut at_least_one = |field: &str, v: Option<u64>, default: u64| match v {
            Some(0) => {
                self.invalid(format!("{p}.{field}"), "must be at least 1");
                default
            }
            Some(n) => n,
            None => default,
        };
        let max_pending_per_agent = at_least_one(
            "max_pending_per_agent",
            r.max_pending_per_agent.map(u64::from),
            d.max_pending_per_agent.into(),
        ) as u32;
        let max_held_per_agent = at_least_one(
            "max_held_per_agent",
            r.max_held_per_agent.map(u64::from),
            d.max_held_per_agent.into(),
        ) as u32;
        let max_headers = at_least_one(
            "max_headers",
            r.max_headers.map(u64::from),
            d.max_headers.into(),
        ) as u32;
        let max_header_bytes =
            at_least_one("max_header_bytes", r.max_header_bytes, d.max_header_bytes);
        let retention = self.duration(&format!("{p}.retention"), &r.retention, d.retention);
        ApprovalLimits {
            max_pending_per_agent,
            max_held_per_agent,
            max_headers,
            max_header_bytes,
            retention,
        }
    }

    fn routes(
        &mut self,
        raw: &[(usize, RawRoute)],
        upstreams: &HashMap<String, usize>,
        compiled_upstreams: &[Arc<Upstream>],
        approvals: Option<&ApprovalSettings>,
    ) -> Vec<Route> {
        self.unique(
            "route",
            raw.iter()
                .map(|(i, r)| (format!("routes[{i}].name"), r.name.as_str())),
        );
        let mut names: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut out = Vec::new();
        for (i, r) in raw {
            let p = format!("routes[{i}]");
            let mut ok = true;
            let mut methods = Vec::new();
            for (j, m) in r.methods.iter().enumerate() {
                let valid = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
                if valid.contains(&m.as_str()) {
                    methods.push(Method::from_bytes(m.as_bytes()).expect("known method"));
                } else {
                    self.invalid(
                        format!("{p}.methods[{j}]"),
                        format!("`{m}` is not one of {}", valid.join(", ")),
                    );
                    ok = false;
                }
            }
            let upstream = upstreams.get(&r.upstream).copied();
            let case_insensitive = upstream.is_some_and(|u| compiled_upstreams[u].case_insensitive);
            let path = match (&r.path, &r.path_regex) {
                (Some(t), None) => PathPattern::template(t)
                    .map_err(|e| {
                        self.invalid(format!("{p}.path"), format!("invalid template `{t}`: {e}"))
                    })
                    .ok(),
                (None, Some(rx)) if case_insensitive => PathPattern::regex_case_insensitive(rx)
                    .map_err(|e| {
                        self.invalid(format!("{p}.path_regex"), format!("invalid regex: {e}"))
                    })
                    .ok(),
                (None, Some(rx)) => PathPattern::regex(rx)
                    .map_err(|e| {
                        self.invalid(format!("{p}.path_regex"), format!("invalid regex: {e}"))
                    })
                    .ok(),
                _ => {
                    self.invalid(&p, "set exactly one of `path` and `path_regex`");
                    None
                }
            };
            let host = HostPattern::parse(r.host.as_deref())
                .map_err(|e| self.invalid(format!("{p}.host"), e))
                .ok();
            if upstream.is_none() {
                self.err(
                    format!("{p}.upstream"),
                    IssueKind::UnknownReference {
                        what: "upstream",
                        name: r.upstream.clone(),
                        hint: hint(&names),
                    },
                );
            }
            if r.scopes.is_empty() && r.any_of.is_empty() {
                self.invalid(&p, "a route must require at least one scope (`scopes` or `any_of`): deny by default");
                ok = false;
            }
            for (field, list) in [("scopes", &r.scopes), ("any_of", &r.any_of)] {
                for (j, s) in list.iter().enumerate() {
                    if !valid_scope(s) {
                        self.invalid(
                            format!("{p}.{field}[{j}]"),
                            format!("`{s}` is not a scope (no spaces, not empty)"),
                        );
                        ok = false;
                    }
                }
            }
            if r.websocket && r.approval.is_some() {
                self.invalid(
                    format!("{p}.websocket"),
                    "a WebSocket route cannot need approval: an upgraded connection cannot be held or replayed",
                );
                ok = false;
            }
            let approval = r.approval.as_ref().map(|a| {
                self.approval_policy(
                    &format!("{p}.approval"),
                    a,
                    approvals,
                    Duration::from_secs(600),
                )
            });
            let conditions = self.conditions(
                &format!("{p}.conditions"),
                &r.conditions,
                approvals.is_some(),
            );
            if let (true, Some(path), Some(host), Some(upstream)) = (ok, path, host, upstream) {
                out.push(Route {
                    name: r.name.as_str().into(),
                    file_index: *i,
                    methods,
                    host,
                    path,
                    upstream,
                    scopes_all: r.scopes.clone(),
                    scopes_any: r.any_of.clone(),
                    approval: approval.flatten().map(Arc::new),
                    case_insensitive,
                    websocket: r.websocket,
                    conditions,
                });
            }
        }
        out
    }

    /// `routes` are the raw ones: a route that failed to compile still names its scopes, and
    /// judging agents against compiled routes only would report every scope of a broken route
    /// as a typo.
    fn agents(
        &mut self,
        raw: &[(usize, RawAgent)],
        routes: &[(usize, RawRoute)],
        has_approvals: bool,
    ) -> HashMap<String, Arc<Agent>> {
        self.unique(
            "agent",
            raw.iter()
                .map(|(i, r)| (format!("agents[{i}].id"), r.id.as_str())),
        );
        let known: BTreeSet<&str> = routes
            .iter()
            .flat_map(|(_, r)| r.scopes.iter().chain(&r.any_of))
            .map(String::as_str)
            .collect();
        let mut out = HashMap::new();
        for (i, r) in raw {
            let p = format!("agents[{i}]");
            let supervised = match r.tier.as_deref() {
                None | Some("standard") => false,
                Some("supervised") => {
                    if !has_approvals {
                        self.invalid(
                            format!("{p}.tier"),
                            "a supervised agent's writes need approval: add an `approvals:` section",
                        );
                    }
                    true
                }
                Some(other) => {
                    self.invalid(
                        format!("{p}.tier"),
                        format!("`{other}` is not `standard` or `supervised`"),
                    );
                    false
                }
            };
            if r.owner.trim().is_empty() {
                self.invalid(
                    format!("{p}.owner"),
                    "every agent needs a named human owner",
                );
            }
            for (j, s) in r.scopes.iter().enumerate() {
                if !valid_scope(s) {
                    self.invalid(
                        format!("{p}.scopes[{j}]"),
                        format!("`{s}` is not a scope (no spaces, not empty)"),
                    );
                } else if !known.contains(s.as_str()) {
                    self.invalid(
                        format!("{p}.scopes[{j}]"),
                        format!(
                            "scope `{s}` is not required by any route (a typo?); known scopes: {}",
                            known.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
            let conditions =
                self.conditions(&format!("{p}.conditions"), &r.conditions, has_approvals);
            out.entry(r.id.clone()).or_insert_with(|| {
                Arc::new(Agent {
                    id: r.id.as_str().into(),
                    owner: r.owner.as_str().into(),
                    description: r.description.clone().unwrap_or_default(),
                    scopes: r.scopes.iter().cloned().collect(),
                    enabled: r.enabled.unwrap_or(true),
                    supervised,
                    conditions,
                })
            });
        }
        out
    }

    /// A `conditions:` list; its problems become issues at their field paths.
    fn conditions(&mut self, base: &str, raw: &[RawCondition], has_approvals: bool) -> Conditions {
        let mut errors = Vec::new();
        let c = compile_conditions(base, raw, &mut errors);
        for (i, r) in raw.iter().enumerate() {
            if !has_approvals && r.on_fail.as_deref() == Some("approve") {
                errors.push((
                    format!("{base}[{i}].on_fail"),
                    "`approve` needs an `approvals:` section (store and approvers)".into(),
                ));
            }
        }
        for (path, msg) in errors {
            self.invalid(path, msg);
        }
        c
    }
}

/// `http://<admin>/console`; a wildcard bind (0.0.0.0, [::]) is no address a person can open,
/// so links then point at loopback (set `approvals.console_url` for links that work elsewhere).
fn default_console_url(admin_listen: &str) -> String {
    let addr = match admin_listen.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let lo: std::net::IpAddr = if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(lo, a.port()).to_string()
        }
        _ => admin_listen.to_string(),
    };
    format!("http://{addr}/console")
}

fn valid_scope(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn hint(names: &[&str]) -> String {
    if names.is_empty() {
        " (none are defined)".into()
    } else {
        format!("; defined: {}", names.join(", "))
    }
}

/// DER bytes of every `CERTIFICATE` block of a PEM text, in order. Text between blocks (as in
/// `openssl` bundles) and other blocks are skipped. (`identity::pem` reads one block only.)
fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let n = out.len() + 1;
        let block = &rest[start + BEGIN.len()..];
        let Some(end) = block.find(END) else {
            return Err(format!("certificate {n} has no `{END}` line"));
        };
        let b64: String = block[..end].split_whitespace().collect();
        let der = STANDARD
            .decode(b64)
            .map_err(|e| format!("certificate {n} is not valid base64: {e}"))?;
        out.push(der);
        rest = &block[end + END.len()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::default_console_url;

    #[test]
    fn console_links_never_point_at_a_wildcard_address() {
        assert_eq!(
            default_console_url("10.1.2.3:9901"),
            "http://10.1.2.3:9901/console"
        );
        assert_eq!(
            default_console_url("0.0.0.0:9901"),
            "http://127.0.0.1:9901/console"
        );
        assert_eq!(
            default_console_url("[::]:9901"),
            "http://[::1]:9901/console"
        );
    }
}

//! Raw config → [`Snapshot`]: every reference checked, every string interpreted, every problem
//! collected. Expensive work (regexes, templates, key decoding, address resolution) happens
//! here, once per load, never per request.
//!
//! One file per section (`settings`, `identity`, `upstreams`, `routes`, `agents`,
//! `approvals`, `admin`), each adding its methods to the one [`Compiler`] that collects every
//! problem; [`Compiler::compile`] below calls them in dependency order.

mod admin;
mod agents;
mod approvals;
mod identity;
mod mcp;
mod monitoring;
mod routes;
mod settings;
mod syslog;
mod token_service;
mod tracing;
mod upstreams;

use super::compile_conditions::compile_conditions;
use super::compile_limits::compile_limits;
use super::error::{ConfigError, Issue, IssueKind};
use super::locate::LineIndex;
use super::parse::parse;
use super::raw::*;
use super::raw_conditions::RawCondition;
use super::secret;
use crate::identity::{IdentitySettings, IssuerConfig, KeySource, KeyStore, Verifier};
use crate::policy::conditions::Conditions;
use crate::policy::limits::{Limits, Origin};
use crate::policy::snapshot::{
    redact_url, ApprovalLimits, CredentialSource, SharedStateSettings, UpstreamCa,
};
use crate::policy::MetricsAccess;
use crate::policy::{
    AccessLogTarget, AdminSettings, AdminToken, Agent, ApprovalMode, ApprovalPolicy,
    ApprovalSettings, Approver, ConnectionLimits, Credential, HostPattern, PathPattern, Route,
    RouteTable, Secret, Settings, Shadow, Snapshot, TokenService, Upstream, WebhookSettings,
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
        has_token_service: false,
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
    /// Whether `token_service` compiled (upstream `mint`/`exchange` credentials need it).
    has_token_service: bool,
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
}

/// What compiling an agent's `client` and `delegation` needs from the rest of the file.
pub(super) struct TokenContext {
    issuers: Vec<String>,
    default_ttl: Duration,
    max_ttl: Duration,
    has_service: bool,
}

impl Compiler<'_> {
    fn compile(&mut self, raw: RawConfig, text: &str, ctx: &LoadContext) -> Option<Snapshot> {
        let settings = self.settings(&raw);
        let mut identity = self.identity(&raw.identity);
        let issuers = self.issuers(&raw.issuers);
        let token_service = self.token_service(&raw, &identity, &settings, ctx);
        self.has_token_service = token_service.is_some();
        let upstreams = self.upstreams(&raw.upstreams);
        let upstream_index: HashMap<String, usize> = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.to_string(), i))
            .collect();
        let approvals = raw.approvals.as_ref().map(|a| {
            self.approvals(
                a,
                &settings.admin_listen,
                &raw.issuers,
                settings.shared_state.is_some(),
            )
        });
        let global_shadow = self.shadow(
            "enforcement",
            &raw.enforcement.mode,
            &raw.enforcement.shadow,
        );
        let routes = self.routes(
            &raw.routes,
            &upstream_index,
            &upstreams,
            approvals.as_ref(),
            global_shadow,
        );
        identity.approver_claim = approvals
            .as_ref()
            .and_then(|a| a.jwt_approvers.as_ref())
            .map(|(_, claim)| claim.clone());
        let default_limits = compile_limits(
            "limits",
            raw.limits.iter().map(|(i, l)| (*i, l)),
            Origin::Agent,
            &mut |path, msg| self.invalid(path, msg),
        );
        let tiers = self.tiers(&raw.tiers, approvals.is_some());
        let agents = self.agents(
            &raw.agents,
            &raw.routes,
            approvals.is_some(),
            &default_limits,
            &tiers,
            &TokenContext {
                issuers: raw.issuers.iter().map(|(_, r)| r.name.clone()).collect(),
                default_ttl: token_service
                    .as_ref()
                    .map_or(Duration::from_secs(600), |t| t.default_ttl),
                max_ttl: identity.max_token_ttl,
                has_service: token_service.is_some(),
            },
        );
        let admin = self.admin(&raw.admin);
        let (monitoring, alerts) = self.monitoring(&raw, approvals.is_some());

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
            policy_digest: crate::config::policy_digest::policy_digest(text)
                .unwrap_or_else(|| digest[..12].to_string()),
            settings,
            agents,
            upstreams,
            routes: RouteTable::new(routes),
            verifier: verifier?,
            token_service,
            approvals,
            admin,
            monitoring,
            alerts,
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

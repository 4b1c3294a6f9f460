//! Compiling `token_service:`, the agents' token-endpoint credentials (`agents[].client`) and
//! delegation rules (`agents[].delegation`).

use super::*;
use crate::config::raw::{RawAgentClient, RawDelegation};
use crate::identity::keyring::Keyring;
use crate::identity::{signing_key_jwk, SigningKey};
use crate::policy::snapshot::{AgentClient, Delegation};

/// Longest delegation chain accepted when `max_delegation_depth` is not set.
const DEFAULT_DELEGATION_DEPTH: usize = 2;

impl Compiler<'_> {
    pub(super) fn token_service(
        &mut self,
        raw: &RawConfig,
        id: &IdentitySettings,
        settings: &Settings,
        ctx: &LoadContext,
    ) -> Option<TokenService> {
        let Some(ts) = raw.token_service.as_ref() else {
            if settings.token_listen.is_some() {
                self.invalid("listen.token", "needs a `token_service` section");
            }
            return None;
        };
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
        // The signing key, and every key to publish.
        let (key_file, kid, published) = if let Some(dir) = &iss.signing_keyring {
            let ring = Keyring::load(&self.file_path(dir)).ok()?; // reported with the issuer
            let active = ring.active()?.clone();
            let mut published = Vec::new();
            for k in ring.keys() {
                match std::fs::read(ring.path_of(k))
                    .map_err(|e| e.to_string())
                    .and_then(|pem| signing_key_jwk(&pem, &k.kid).map_err(|e| e.to_string()))
                {
                    Ok(jwk) => published.push(jwk),
                    Err(e) => self.invalid(
                        "token_service.issuer",
                        format!("keyring key `{}`: {e}", k.kid),
                    ),
                }
            }
            (ring.path_of(&active), active.kid, published)
        } else if let Some(key) = &iss.signing_key_file {
            let kid = iss
                .signing_key_id
                .clone()
                .unwrap_or_else(|| iss.name.clone());
            (self.file_path(key), kid, Vec::new())
        } else {
            self.invalid(
                "token_service.issuer",
                format!(
                    "issuer `{}` has no `signing_key_file` or `signing_keyring` to sign with",
                    iss.name
                ),
            );
            return None;
        };
        let signer = match std::fs::read(&key_file)
            .map_err(|e| crate::identity::IdentityError::SigningKey(e.to_string()))
            .and_then(|pem| SigningKey::from_pem(&pem, &kid))
        {
            Ok(s) => s,
            // A missing file is already reported with the issuer.
            Err(e) => {
                if key_file.exists() {
                    self.invalid("token_service.issuer", e.to_string());
                }
                return None;
            }
        };
        let published = if published.is_empty() {
            vec![signer.jwk.clone()]
        } else {
            published
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
        let mut audiences = vec![audience.clone()];
        for (i, a) in ts.audiences.iter().enumerate() {
            if a.trim().is_empty() {
                self.invalid(format!("token_service.audiences[{i}]"), "must not be empty");
            } else if !audiences.contains(a) {
                audiences.push(a.clone());
            }
        }
        let public_url = match (&ts.public_url, &settings.token_listen) {
            (Some(u), _) => {
                let u = u.trim_end_matches('/').to_string();
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    self.invalid("token_service.public_url", "must be an http(s) URL");
                }
                u
            }
            (None, Some(l)) => format!("http://{l}"),
            (None, None) => String::new(),
        };
        let max_delegation_depth = ts.max_delegation_depth.unwrap_or(DEFAULT_DELEGATION_DEPTH);
        if !(1..=crate::identity::MAX_ACT_DEPTH).contains(&max_delegation_depth) {
            self.invalid(
                "token_service.max_delegation_depth",
                format!("must be 1 to {}", crate::identity::MAX_ACT_DEPTH),
            );
        }
        let max_assertion_ttl = self.duration(
            "token_service.max_assertion_ttl",
            &ts.max_assertion_ttl,
            Duration::from_secs(3600),
        );
        let mut introspection_clients = Vec::new();
        for (i, c) in ts.introspection_clients.iter().enumerate() {
            let p = format!("token_service.introspection_clients[{i}]");
            if c.name.trim().is_empty() || c.name.contains(':') {
                self.invalid(format!("{p}.name"), "must be non-empty, without `:`");
            }
            if raw.agents.iter().any(|(_, a)| a.id == c.name) {
                self.invalid(
                    format!("{p}.name"),
                    format!("`{}` is an agent; agents cannot introspect", c.name),
                );
            }
            if let Some(h) = self.sha256_hex(&format!("{p}.secret_sha256"), &c.secret_sha256) {
                introspection_clients.push((c.name.clone(), h));
            }
        }
        let assertions = self.assertion_verifier(raw, &public_url, &iss.issuer, id, ctx);
        Some(TokenService {
            issuer: iss.issuer.clone(),
            audience,
            signing_key_file: key_file,
            keyring_dir: iss.signing_keyring.as_ref().map(|d| self.file_path(d)),
            kid,
            default_ttl,
            max_ttl: id.max_token_ttl,
            signer,
            published,
            public_url,
            audiences,
            max_delegation_depth,
            max_assertion_ttl,
            introspection_clients,
            assertions,
        })
    }

    /// One verifier for every agent's client assertions (RFC 7523): each agent with keys is an
    /// "issuer" whose `iss` is its id, and whose assertions must name the token endpoint or
    /// our issuer as `aud`. The key handling (algorithm families, confusion checks) is the
    /// one agent tokens get.
    fn assertion_verifier(
        &mut self,
        raw: &RawConfig,
        public_url: &str,
        our_issuer: &str,
        id: &IdentitySettings,
        ctx: &LoadContext,
    ) -> Option<Arc<Verifier>> {
        let ts = raw.token_service.as_ref()?;
        let max_ttl = self.duration(
            "token_service.max_assertion_ttl",
            &ts.max_assertion_ttl,
            Duration::from_secs(3600),
        );
        let mut configs = Vec::new();
        for (i, a) in raw.agents.iter() {
            let Some(client) = &a.client else { continue };
            if client.keys.is_empty() {
                continue;
            }
            let p = format!("agents[{i}].client");
            let keys = self.inline_keys(&p, &client.keys);
            configs.push(IssuerConfig {
                name: a.id.clone(),
                issuer: a.id.clone(),
                audiences: vec![format!("{public_url}/oauth2/token"), our_issuer.to_string()],
                algorithms: vec![
                    jsonwebtoken::Algorithm::ES256,
                    jsonwebtoken::Algorithm::ES384,
                    jsonwebtoken::Algorithm::RS256,
                    jsonwebtoken::Algorithm::PS256,
                    jsonwebtoken::Algorithm::EdDSA,
                ],
                keys,
            });
        }
        if configs.is_empty() || !self.issues.is_empty() {
            return None;
        }
        let settings = IdentitySettings {
            max_token_ttl: max_ttl,
            // Assertions are verified once each (their `jti` is single-use): no cache needed
            // beyond a few.
            cache_capacity: 64,
            ..id.clone()
        };
        match Verifier::new(configs, settings, ctx.key_store.clone()) {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                self.invalid("agents", format!("client keys: {e}"));
                None
            }
        }
    }

    /// `agents[i].client`.
    pub(super) fn agent_client(
        &mut self,
        p: &str,
        c: &RawAgentClient,
        default_ttl: Duration,
        max_ttl: Duration,
    ) -> AgentClient {
        let secret_sha256 = c
            .secret_sha256
            .as_ref()
            .and_then(|h| self.sha256_hex(&format!("{p}.secret_sha256"), h));
        if c.secret_sha256.is_none() && c.keys.is_empty() {
            self.invalid(
                p,
                "set `secret_sha256` or `keys` (or both): how the agent proves who it is",
            );
        }
        let max_token_ttl =
            self.duration(&format!("{p}.max_token_ttl"), &c.max_token_ttl, default_ttl);
        if max_token_ttl > max_ttl {
            self.invalid(
                format!("{p}.max_token_ttl"),
                "must not exceed identity.max_token_ttl",
            );
        }
        AgentClient {
            secret_sha256,
            has_keys: !c.keys.is_empty(),
            max_token_ttl,
        }
    }

    /// `agents[i].delegation`.
    pub(super) fn delegation(
        &mut self,
        p: &str,
        d: &RawDelegation,
        issuers: &[String],
    ) -> Delegation {
        if d.issuers.is_empty() {
            self.invalid(format!("{p}.issuers"), "name at least one issuer");
        }
        for (i, name) in d.issuers.iter().enumerate() {
            if !issuers.contains(name) {
                let names: Vec<&str> = issuers.iter().map(String::as_str).collect();
                self.err(
                    format!("{p}.issuers[{i}]"),
                    IssueKind::UnknownReference {
                        what: "issuer",
                        name: name.clone(),
                        hint: hint(&names),
                    },
                );
            }
        }
        let subjects = d
            .subjects
            .iter()
            .filter_map(|s| {
                let pattern = format!("^{}$", regex::escape(s).replace(r"\*", ".*"));
                regex::Regex::new(&pattern).ok()
            })
            .collect();
        Delegation {
            issuers: d.issuers.clone(),
            subjects,
            require_may_act: d.require_may_act,
        }
    }
}

//! The [`Verifier`]: one per config snapshot, immutable, shared behind an `Arc`.
//!
//! Order of checks, cheapest and least trusting first: size, cache, shape and `alg` (no `none`,
//! no unknown names), issuer by `iss`, the issuer's algorithm allow-list, key selection by
//! `kid` and key family, signature, then the claims.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::cache::{CachedToken, Clock, KeyOrigin, TokenCache};
use super::claims::{self, Expect, VerifiedToken};
use super::error::{sanitize, IdentityError, TokenError};
use super::jwks::{JwksEntry, KeyStore, Timing};
use super::keys::{self, KeyKind, VerifyKey};
use super::settings::{IdentitySettings, IssuerConfig, KeySource};
use super::token::{self, RawToken};

/// Verifies bearer tokens against the trusted issuers of one config snapshot.
pub struct Verifier {
    issuers: HashMap<String, Issuer>,
    settings: IdentitySettings,
    cache: TokenCache,
    /// Every issuer's JWKS sources, numbered for [`KeyOrigin::Jwks`] (cache entries name their
    /// source by index: cloning an `Arc` per hit would cost a contended atomic increment).
    jwks_sources: Vec<Arc<JwksEntry>>,
    clock: Clock,
    signature_checks: AtomicU64,
    // Held so that the JWKS fetchers this verifier relies on outlive it.
    _store: Arc<KeyStore>,
}

/// One compiled issuer.
struct Issuer {
    name: Arc<str>,
    iss: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    static_keys: Arc<Vec<VerifyKey>>,
    jwks: Vec<Arc<JwksEntry>>,
    /// Index of `jwks[0]` in [`Verifier::jwks_sources`].
    first_source: usize,
}

impl Verifier {
    /// Compile the issuers: inline, file and signing keys are loaded now (failures are config
    /// errors naming the issuer and key source, all gathered); JWKS URLs are registered with
    /// `store`, which fetches them in the background.
    pub fn new(
        issuers: Vec<IssuerConfig>,
        settings: IdentitySettings,
        store: Arc<KeyStore>,
    ) -> Result<Verifier, IdentityError> {
        Self::with_clock(issuers, settings, store, Arc::new(claims::now_unix))
    }

    pub(crate) fn with_clock(
        configs: Vec<IssuerConfig>,
        settings: IdentitySettings,
        store: Arc<KeyStore>,
        clock: Clock,
    ) -> Result<Verifier, IdentityError> {
        let mut errors = Vec::new();
        let mut issuers = HashMap::new();
        for config in configs {
            match Issuer::compile(config, &store) {
                Ok(issuer) if issuers.contains_key(&issuer.iss) => {
                    errors.push(IdentityError::Issuer {
                        issuer: issuer.name.to_string(),
                        reason: format!("another issuer already trusts iss `{}`", issuer.iss),
                    });
                }
                Ok(issuer) => {
                    issuers.insert(issuer.iss.clone(), issuer);
                }
                Err(mut errs) => errors.append(&mut errs),
            }
        }
        IdentityError::from_many(errors)?;
        let mut jwks_sources = Vec::new();
        for issuer in issuers.values_mut() {
            issuer.first_source = jwks_sources.len();
            jwks_sources.extend(issuer.jwks.iter().cloned());
        }
        let cache = TokenCache::new(settings.cache_capacity, settings.clock_skew, clock.clone());
        Ok(Verifier {
            issuers,
            settings,
            cache,
            jwks_sources,
            clock,
            signature_checks: AtomicU64::new(0),
            _store: store,
        })
    }

    /// Verify a bearer token (without the `Bearer ` prefix).
    pub async fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        match self.verify_cached(token) {
            Some(answer) => answer,
            None => self.verify_uncached(token).await,
        }
    }

    /// The answer that needs no signature check: an empty or oversized token, or one found in
    /// the cache. `None`: [`Verifier::verify_uncached`] must decide (the caller can time it).
    pub fn verify_cached(&self, token: &str) -> Option<Result<Arc<VerifiedToken>, TokenError>> {
        if token.is_empty() {
            return Some(Err(TokenError::MissingToken));
        }
        // Before any parsing: decoding work per request stays bounded.
        if token.len() > self.settings.max_token_bytes {
            return Some(Err(TokenError::TooLarge {
                size: token.len(),
                max: self.settings.max_token_bytes,
            }));
        }
        let hash = TokenCache::hash(token);
        let hit = self.cache.get(&hash)?;
        let exp = hit.token.exp;
        if exp.saturating_add(self.settings.clock_skew.as_secs()) < (self.clock)() {
            self.cache.remove(&hash);
            return Some(Err(TokenError::Expired { exp }));
        }
        if self.key_still_current(hit.origin) {
            return Some(Ok(hit.token));
        }
        // The key set that verified it has lost or changed a key since (rotation after a
        // compromise): verify it again as if it were new, and forget it if that fails.
        self.cache.remove(&hash);
        None
    }

    /// Full verification (parse, signature, claims) of a token [`Verifier::verify_cached`]
    /// had no answer for; a valid one is cached.
    pub async fn verify_uncached(&self, token: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        let now = (self.clock)();
        let hash = TokenCache::hash(token);
        let raw = token::parse(token)?;
        let issuer = self.issuer_of(&raw)?;
        if !issuer.algorithms.contains(&raw.alg) {
            return Err(TokenError::AlgNotAllowed {
                alg: alg_name(raw.alg),
                allowed: issuer.algorithms.iter().map(|a| alg_name(*a)).collect(),
            });
        }
        let origin = self.check_signature(issuer, &raw).await?;
        let expect = Expect {
            issuer_name: &issuer.name,
            audiences: &issuer.audiences,
        };
        let verified = Arc::new(claims::check(&raw.claims, &expect, &self.settings, now)?);
        self.cache.insert(
            hash,
            CachedToken {
                token: verified.clone(),
                origin,
            },
        );
        Ok(verified)
    }

    /// Whether the key set that verified a cached token still holds every key it held then.
    /// One atomic load; no allocation.
    fn key_still_current(&self, origin: KeyOrigin) -> bool {
        match origin {
            KeyOrigin::Static => true,
            KeyOrigin::Jwks { source, generation } => self
                .jwks_sources
                .get(source)
                .is_some_and(|entry| entry.generation() == generation),
        }
    }

    /// Whether every issuer has at least one usable key (each JWKS URL fetched once).
    pub fn is_ready(&self) -> bool {
        self.issuers.values().all(Issuer::is_ready)
    }

    /// How many signature verifications this verifier ran (cache hits run none).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// The settings this verifier was built with.
    pub fn settings(&self) -> &IdentitySettings {
        &self.settings
    }

    /// The issuer is chosen by the untrusted `iss`; the signature check that follows is what
    /// makes it trusted.
    fn issuer_of(&self, raw: &RawToken<'_>) -> Result<&Issuer, TokenError> {
        let iss = match raw.claims.get("iss") {
            Some(Value::String(iss)) => iss,
            None | Some(Value::Null) => return Err(TokenError::missing("iss")),
            Some(_) => return Err(TokenError::invalid("iss", "it is not a string")),
        };
        self.issuers
            .get(iss)
            .ok_or_else(|| TokenError::WrongIssuer { iss: sanitize(iss) })
    }

    /// Check the signature; on success, which key set verified it.
    async fn check_signature(
        &self,
        issuer: &Issuer,
        raw: &RawToken<'_>,
    ) -> Result<KeyOrigin, TokenError> {
        let kid = raw.kid.as_deref();
        let mut sets = issuer.key_sets();
        if let Some(kid) = kid {
            let known = sets
                .iter()
                .flat_map(|(_, s)| s.iter())
                .any(|k| k.kid.as_deref() == Some(kid));
            if !known && !issuer.jwks.is_empty() {
                // The IdP may have rotated its keys since our last fetch.
                for entry in &issuer.jwks {
                    entry.refetch_for_unknown_kid().await;
                }
                sets = issuer.key_sets();
            }
        }
        match select_keys(&sets, raw.alg, kid) {
            Selection::Keys(candidates) => {
                for (origin, key) in candidates {
                    self.signature_checks.fetch_add(1, Ordering::Relaxed);
                    if key.verify(raw.alg, raw.signing_input, raw.signature) {
                        return Ok(origin);
                    }
                }
                Err(TokenError::BadSignature)
            }
            Selection::Mismatch(key) => Err(TokenError::KeyTypeMismatch {
                alg: alg_name(raw.alg),
                key: key.describe(),
            }),
            Selection::UnknownKid if issuer.is_ready() => Err(TokenError::UnknownKey {
                kid: sanitize(kid.unwrap_or_default()),
            }),
            Selection::UnknownKid | Selection::NoKeys => Err(TokenError::KeysUnavailable {
                issuer: issuer.iss.clone(),
            }),
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.issuers.values().map(|i| &*i.name).collect();
        names.sort_unstable();
        f.debug_struct("Verifier")
            .field("issuers", &names)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    fn compile(config: IssuerConfig, store: &KeyStore) -> Result<Issuer, Vec<IdentityError>> {
        let name = config.name;
        let mut errors = Vec::new();
        let issuer_error = |reason: &str| IdentityError::Issuer {
            issuer: name.clone(),
            reason: reason.to_owned(),
        };
        if config.algorithms.is_empty() {
            errors.push(issuer_error("no algorithms are allowed"));
        }
        if config.audiences.is_empty() {
            errors.push(issuer_error("no audiences are accepted"));
        }
        if config.keys.is_empty() {
            errors.push(issuer_error("no keys are configured"));
        }
        let mut static_keys = Vec::new();
        let mut jwks = Vec::new();
        for (index, source) in config.keys.iter().enumerate() {
            match load_source(source, &config.algorithms, store) {
                Ok(Loaded::Keys(keys)) => static_keys.extend(keys),
                Ok(Loaded::Jwks(entry)) => jwks.push(entry),
                Err(reason) => errors.push(IdentityError::KeyLoad {
                    issuer: name.clone(),
                    key: format!("#{} ({})", index + 1, source.describe()),
                    reason,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Issuer {
            name: Arc::from(name),
            iss: config.issuer,
            audiences: config.audiences,
            algorithms: config.algorithms,
            static_keys: Arc::new(static_keys),
            jwks,
            first_source: 0,
        })
    }

    fn is_ready(&self) -> bool {
        !self.static_keys.is_empty() || self.jwks.iter().any(|e| e.is_ready())
    }

    /// Every key set of the issuer, each with the origin a token it verifies is cached with.
    fn key_sets(&self) -> Vec<(KeyOrigin, Arc<Vec<VerifyKey>>)> {
        let mut sets = Vec::with_capacity(1 + self.jwks.len());
        sets.push((KeyOrigin::Static, self.static_keys.clone()));
        sets.extend(self.jwks.iter().enumerate().map(|(i, e)| {
            let (generation, keys) = e.keys_with_generation();
            let origin = KeyOrigin::Jwks {
                source: self.first_source + i,
                generation,
            };
            (origin, keys)
        }));
        sets
    }
}

enum Loaded {
    Keys(Vec<VerifyKey>),
    Jwks(Arc<JwksEntry>),
}

fn load_source(
    source: &KeySource,
    algorithms: &[Algorithm],
    store: &KeyStore,
) -> Result<Loaded, String> {
    let keys = match source {
        KeySource::Pem { pem, kid } => vec![keys::from_public_pem(pem, kid.clone())?],
        KeySource::Jwk(jwk) => vec![keys::from_jwk(jwk)?],
        KeySource::JwksFile(path) => {
            let body = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
            let keys = keys::parse_jwks(&body, &path.display().to_string())?;
            let usable: Vec<VerifyKey> = keys
                .into_iter()
                .filter(|k| algorithms.iter().any(|a| k.accepts(*a)))
                .collect();
            if usable.is_empty() {
                return Err(format!("no key in it can verify {}", alg_list(algorithms)));
            }
            return Ok(Loaded::Keys(usable));
        }
        KeySource::JwksUrl {
            url,
            refresh_interval,
            min_refetch_interval,
            timeout,
        } => {
            let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
            if !matches!(parsed.scheme(), "https" | "http") {
                return Err("the URL must be https:// (or http:// for a local IdP)".into());
            }
            // Zero would make the fetcher hammer the IdP, or never wait for it.
            if refresh_interval.is_zero() || timeout.is_zero() {
                return Err("refresh_interval and timeout must be above zero".into());
            }
            let timing = Timing {
                refresh: *refresh_interval,
                min_refetch: *min_refetch_interval,
                timeout: *timeout,
            };
            return Ok(Loaded::Jwks(store.register(url, timing)));
        }
        KeySource::SigningKeyFile { path, kid } => {
            let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
            vec![keys::from_signing_key_pem(&pem, kid)?]
        }
        KeySource::HmacSecret { secret, kid } => {
            if !algorithms.iter().any(|a| KeyKind::Hmac.accepts(*a)) {
                return Err(
                    "an HMAC secret needs HS256, HS384 or HS512 among the issuer's algorithms"
                        .into(),
                );
            }
            vec![keys::from_hmac_secret(secret, kid.clone())?]
        }
    };
    // A key that can verify none of the allowed algorithms is a configuration mistake.
    for key in &keys {
        if !algorithms.iter().any(|a| key.accepts(*a)) {
            return Err(format!(
                "this {} key cannot verify any of the issuer's algorithms ({})",
                key.kind.label(),
                alg_list(algorithms)
            ));
        }
    }
    Ok(Loaded::Keys(keys))
}

/// Which keys to try for a token.
enum Selection<'k> {
    /// Keys of the right family, with the set each is from; the signature must verify with one.
    Keys(Vec<(KeyOrigin, &'k VerifyKey)>),
    /// The token's kid names no key, and no kid-less key exists to fall back on.
    UnknownKid,
    /// Keys exist for the token, but none that fits its algorithm (family or pinned `alg`).
    Mismatch(&'k VerifyKey),
    /// The issuer has no keys at all (JWKS not fetched yet).
    NoKeys,
}

/// With a kid: the keys carrying it, or else the keys configured without a kid (a PEM with no
/// kid trusts any kid). Without a kid: every key. Then only keys whose family fits `alg`.
fn select_keys<'k>(
    sets: &'k [(KeyOrigin, Arc<Vec<VerifyKey>>)],
    alg: Algorithm,
    kid: Option<&str>,
) -> Selection<'k> {
    let all = || {
        sets.iter()
            .flat_map(|(origin, s)| s.iter().map(move |k| (*origin, k)))
    };
    let named: Vec<(KeyOrigin, &VerifyKey)> = match kid {
        Some(kid) => {
            let exact: Vec<_> = all()
                .filter(|(_, k)| k.kid.as_deref() == Some(kid))
                .collect();
            if exact.is_empty() {
                all().filter(|(_, k)| k.kid.is_none()).collect()
            } else {
                exact
            }
        }
        None => all().collect(),
    };
    let Some(&(_, first)) = named.first() else {
        return if kid.is_some() {
            Selection::UnknownKid
        } else {
            Selection::NoKeys
        };
    };
    let fitting: Vec<(KeyOrigin, &VerifyKey)> = named
        .iter()
        .copied()
        .filter(|(_, k)| k.accepts(alg))
        .collect();
    if fitting.is_empty() {
        Selection::Mismatch(first)
    } else {
        Selection::Keys(fitting)
    }
}

fn alg_name(alg: Algorithm) -> String {
    format!("{alg:?}")
}

fn alg_list(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|a| alg_name(*a))
        .collect::<Vec<_>>()
        .join(", ")
}

//! Cache of verified tokens, so that an agent's repeated requests cost one hash instead of a
//! signature verification.
//!
//! Keyed by the SHA-256 of the token bytes (the token itself is never kept). Each entry expires
//! from the cache at the token's `exp` plus clock skew; `exp` is also checked on every hit,
//! because cache eviction is lazy and not a security boundary.
//!
//! Each entry also remembers which key set verified it ([`KeyOrigin`]). A JWKS refresh that drops
//! a key (rotation after a compromise) bumps that set's generation, and a hit from an older
//! generation is verified again instead of being trusted until `exp`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

use super::claims::VerifiedToken;

/// Seconds since the epoch; injectable so that tests can move time.
pub(crate) type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// SHA-256 of a token.
pub(crate) type TokenHash = [u8; 32];

/// Which keys verified a cached token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyOrigin {
    /// Keys loaded with the config (inline, file, signing key, HMAC secret): they cannot change
    /// while this verifier, and so this cache, lives.
    Static,
    /// A key of the verifier's JWKS source number `source`, whose key set was at `generation`
    /// when the token was verified.
    Jwks { source: usize, generation: u64 },
}

/// A cache entry: the verified token and where its key came from. Cloned on every hit, so it
/// holds one `Arc` and plain numbers only.
#[derive(Debug, Clone)]
pub(crate) struct CachedToken {
    pub(crate) token: Arc<VerifiedToken>,
    pub(crate) origin: KeyOrigin,
}

pub(crate) struct TokenCache {
    entries: Cache<TokenHash, CachedToken>,
}

impl TokenCache {
    pub(crate) fn new(capacity: u64, clock_skew: Duration, clock: Clock) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity)
            .expire_after(UntilExpiry {
                skew: clock_skew.as_secs(),
                clock,
            })
            .build();
        TokenCache { entries }
    }

    pub(crate) fn hash(token: &str) -> TokenHash {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The cached verification of a token, which may have expired since, or rest on a key that
    /// is gone since (callers check `exp` and the origin's generation).
    pub(crate) fn get(&self, hash: &TokenHash) -> Option<CachedToken> {
        self.entries.get(hash)
    }

    pub(crate) fn insert(&self, hash: TokenHash, entry: CachedToken) {
        self.entries.insert(hash, entry);
    }

    pub(crate) fn remove(&self, hash: &TokenHash) {
        self.entries.invalidate(hash);
    }
}

struct UntilExpiry {
    skew: u64,
    clock: Clock,
}

impl Expiry<TokenHash, CachedToken> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        entry: &CachedToken,
        _created_at: Instant,
    ) -> Option<Duration> {
        let now = (self.clock)();
        let remaining = entry
            .token
            .exp
            .saturating_add(self.skew)
            .saturating_sub(now);
        Some(Duration::from_secs(remaining))
    }
}

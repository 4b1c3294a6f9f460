//! Cache of verified tokens, so that an agent's repeated requests cost one hash instead of a
//! signature verification.
//!
//! Keyed by the SHA-256 of the token bytes (the token itself is never kept). Each entry expires
//! from the cache at the token's `exp` plus clock skew; `exp` is also checked on every hit,
//! because cache eviction is lazy and not a security boundary.

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

pub(crate) struct TokenCache {
    entries: Cache<TokenHash, Arc<VerifiedToken>>,
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

    /// The cached verification of a token, which may have expired since (callers check `exp`).
    pub(crate) fn get(&self, hash: &TokenHash) -> Option<Arc<VerifiedToken>> {
        self.entries.get(hash)
    }

    pub(crate) fn insert(&self, hash: TokenHash, token: Arc<VerifiedToken>) {
        self.entries.insert(hash, token);
    }

    pub(crate) fn remove(&self, hash: &TokenHash) {
        self.entries.invalidate(hash);
    }
}

struct UntilExpiry {
    skew: u64,
    clock: Clock,
}

impl Expiry<TokenHash, Arc<VerifiedToken>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        token: &Arc<VerifiedToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let now = (self.clock)();
        let remaining = token.exp.saturating_add(self.skew).saturating_sub(now);
        Some(Duration::from_secs(remaining))
    }
}

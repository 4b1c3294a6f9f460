//! Limit counters: the [`LimitStore`] trait and its in-process implementation.
//!
//! The policy ([`crate::policy::limits`]) never sees which store is behind the trait: a shared
//! store (Redis) replaces [`InProcessLimitStore`] later by implementing the same four methods
//! over [`LimitKey::storage_key`]. The store reads its own clock (a shared store must use one
//! clock for all replicas, so callers pass no time).
//!
//! # In-process implementation
//!
//! - Rates: GCRA from the `governor` crate, one keyed limiter per distinct [`RateLimit`] (a
//!   governor limiter has one quota), each holding one cell per [`LimitKey`]. A take is one
//!   atomic compare-and-swap, so calls from many worker threads never over-admit.
//! - Volumes: a fixed window per key (starts at the first charge, lasts `per`), behind a mutex.
//!   A fixed window can let up to twice the budget through around a window boundary; that is the
//!   documented trade for a counter that a shared store can keep in one atomic increment.
//! - Memory: [`LimitStore::sweep`] drops rate cells that are indistinguishable from fresh ones
//!   and volume windows that have ended, so idle keys (including those of limits a reload
//!   changed or removed) cost nothing. Call it periodically (every few seconds).

use crate::policy::limits::{
    Charge, ChargeOutcome, Direction, LimitDef, LimitKey, RateLimit, Refused, VolumeLimit,
    VolumeView,
};
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

/// Counters behind the limits. Implementations must be safe to call from every worker thread
/// at once and must fail closed: when the counters cannot be reached, answer `Err` (refuse).
pub trait LimitStore: VolumeView + Send + Sync {
    /// Take one request from `key`'s rate: `Ok` if admitted (and counted), else
    /// `Err(time until a request would be admitted)`. Atomic: two callers never both get the
    /// last slot.
    fn try_acquire(&self, key: &LimitKey, limit: &RateLimit) -> Result<(), Duration>;

    /// Add `bytes` to `key`'s window. `Ok(bytes left)` while within the budget; once the total
    /// passes it, `Err(time until the window resets)`. The bytes are counted either way.
    fn charge_volume(
        &self,
        key: &LimitKey,
        limit: &VolumeLimit,
        bytes: u64,
    ) -> Result<u64, Duration>;

    /// Forget counters that hold nothing a fresh counter would not (bounded memory).
    fn sweep(&self);

    /// Keys currently held, for tests and a gauge.
    fn len(&self) -> usize;

    /// No keys held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Keyed<C> =
    RateLimiter<LimitKey, DashMapStateStore<LimitKey>, C, NoOpMiddleware<<C as Clock>::Instant>>;

struct Window<I> {
    start: I,
    used: u64,
}

/// In-process counters (one gateway process). `C` is the clock: the default in production,
/// `governor::clock::FakeRelativeClock` in tests.
pub struct InProcessLimitStore<C: Clock = DefaultClock> {
    clock: C,
    rates: RwLock<HashMap<RateLimit, Arc<Keyed<C>>>>,
    volumes: Mutex<HashMap<LimitKey, Window<C::Instant>>>,
}

impl InProcessLimitStore<DefaultClock> {
    /// A store on the process's monotonic clock.
    pub fn new() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl Default for InProcessLimitStore<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

fn quota(limit: &RateLimit) -> Quota {
    // Both are checked at compile time (requests >= 1, burst >= 1, per / requests >= 1 ns);
    // the fallbacks only keep a hand-built limit from panicking, and are the strictest quota.
    let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(limit.interval())
        .unwrap_or_else(|| Quota::per_hour(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl<C> InProcessLimitStore<C>
where
    C: Clock + Clone + Send + Sync,
    C::Instant: Send + Sync,
{
    /// A store reading time from `clock`.
    pub fn with_clock(clock: C) -> Self {
        InProcessLimitStore {
            clock,
            rates: RwLock::new(HashMap::new()),
            volumes: Mutex::new(HashMap::new()),
        }
    }

    fn limiter(&self, limit: &RateLimit) -> Arc<Keyed<C>> {
        if let Some(l) = self
            .rates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(limit)
        {
            return l.clone();
        }
        self.rates
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(*limit)
            .or_insert_with(|| {
                Arc::new(RateLimiter::dashmap_with_clock(
                    quota(limit),
                    self.clock.clone(),
                ))
            })
            .clone()
    }

    fn elapsed(&self, start: C::Instant, now: C::Instant) -> Duration {
        now.duration_since(start).into()
    }
}

impl<C> VolumeView for InProcessLimitStore<C>
where
    C: Clock + Clone + Send + Sync,
    C::Instant: Send + Sync,
{
    fn volume_remaining(&self, key: &LimitKey, limit: &VolumeLimit) -> Result<u64, Duration> {
        let now = self.clock.now();
        let volumes = self.volumes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(w) = volumes.get(key) else {
            return Ok(limit.bytes);
        };
        let elapsed = self.elapsed(w.start, now);
        if elapsed >= limit.per {
            return Ok(limit.bytes);
        }
        if w.used >= limit.bytes {
            return Err(limit.per - elapsed);
        }
        Ok(limit.bytes - w.used)
    }
}

impl<C> LimitStore for InProcessLimitStore<C>
where
    C: Clock + Clone + Send + Sync,
    C::Instant: Send + Sync,
{
    fn try_acquire(&self, key: &LimitKey, limit: &RateLimit) -> Result<(), Duration> {
        let limiter = self.limiter(limit);
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    fn charge_volume(
        &self,
        key: &LimitKey,
        limit: &VolumeLimit,
        bytes: u64,
    ) -> Result<u64, Duration> {
        let now = self.clock.now();
        let mut volumes = self.volumes.lock().unwrap_or_else(PoisonError::into_inner);
        let w = volumes.entry(key.clone()).or_insert(Window {
            start: now,
            used: 0,
        });
        let mut elapsed = self.elapsed(w.start, now);
        if elapsed >= limit.per {
            *w = Window {
                start: now,
                used: 0,
            };
            elapsed = Duration::ZERO;
        }
        w.used = w.used.saturating_add(bytes);
        if w.used > limit.bytes {
            Err(limit.per - elapsed)
        } else {
            Ok(limit.bytes - w.used)
        }
    }

    fn sweep(&self) {
        let now = self.clock.now();
        let mut rates = self.rates.write().unwrap_or_else(PoisonError::into_inner);
        for l in rates.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        // A limiter with no cells left is rebuilt on demand; dropping it forgets limits that a
        // reload removed. New callers need the read lock, which is held here exclusively.
        // Only when no call holds it: a call between `limiter()` and `check_key` would
        // otherwise count in a limiter nobody sees again (one extra admission).
        rates.retain(|_, l| !l.is_empty() || Arc::strong_count(l) > 1);
        drop(rates);
        let mut volumes = self.volumes.lock().unwrap_or_else(PoisonError::into_inner);
        volumes.retain(|k, w| match k.def {
            LimitDef::Volume(v) => Duration::from(now.duration_since(w.start)) < v.per,
            LimitDef::Rate(_) => false,
        });
        volumes.shrink_to_fit();
    }

    fn len(&self) -> usize {
        let rates: usize = self
            .rates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|l| l.len())
            .sum();
        rates
            + self
                .volumes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
    }
}

/// Carry out the rate part of a [`Charge`]: take one request from each rate limit in order.
/// On the first refusal the call is refused; requests already taken from earlier limits stay
/// taken (a refused call counting against a budget errs on the safe side). Boxed: refusals are
/// the cold path and `Refused` carries the whole limit.
pub fn acquire(store: &dyn LimitStore, charge: &Charge) -> Result<(), Box<Refused>> {
    for (applied, rate) in &charge.rates {
        if let Err(retry_after) = store.try_acquire(&applied.key, rate) {
            return Err(Box::new(Refused {
                applied: applied.clone(),
                retry_after,
                declared_bytes: None,
                cut: false,
            }));
        }
    }
    Ok(())
}

/// Charge one body chunk of `bytes` flowing in `flow` ([`Direction::Request`] or
/// [`Direction::Response`]) to every volume limit of the call that counts it. Every limit is
/// charged (so all budgets see the bytes); if any budget is passed the chunk must not be
/// forwarded and the stream is cut (the crossing rule in [`crate::policy::limits`]).
pub fn charge_chunk(
    store: &dyn LimitStore,
    charge: &Charge,
    flow: Direction,
    bytes: u64,
) -> ChargeOutcome {
    let mut cut = None;
    for (applied, v) in &charge.volumes {
        if !v.direction.counts(flow) {
            continue;
        }
        if let Err(retry_after) = store.charge_volume(&applied.key, v, bytes) {
            cut.get_or_insert_with(|| Refused {
                applied: applied.clone(),
                retry_after,
                declared_bytes: None,
                cut: true,
            });
        }
    }
    match cut {
        Some(r) => ChargeOutcome::Cut(r),
        None => ChargeOutcome::Continue,
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;

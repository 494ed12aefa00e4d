//! The auth stage's decision cache: positive and negative entries with
//! their own lifetimes, stale positive entries kept for `stale_on_error_s`,
//! one call in flight per key (single-flight), and a bounded size.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

/// Entries one node keeps at most, per auth object.
pub const DEFAULT_CACHE_ENTRIES: usize = 100_000;

/// A cache key: 128 bits of keyed hashes of the decision's inputs.
pub type CacheKey = u128;

/// Lifetimes of cached outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub positive: Duration,
    pub negative: Duration,
    pub stale_on_error: Duration,
    pub max_entries: usize,
}

/// What the cache holds about a key.
#[derive(Debug, Clone)]
struct Entry<D> {
    decision: D,
    allowed: bool,
    expires: Instant,
}

/// Where an answer came from, for the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A fresh call to the auth service (this request's, or one it joined).
    Called,
    Cached,
    /// The service failed; a positive decision past its TTL was used.
    Stale,
}

/// One call to the service that requests with the same key wait on.
type Flight<D> = Arc<OnceCell<Result<(D, bool), ()>>>;

pub struct DecisionCache<D> {
    policy: CachePolicy,
    entries: Mutex<HashMap<CacheKey, Entry<D>>>,
    in_flight: Mutex<HashMap<CacheKey, Flight<D>>>,
}

impl<D: Clone> DecisionCache<D> {
    pub fn new(policy: CachePolicy) -> Self {
        DecisionCache {
            policy,
            entries: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The decision for `key`: cached, or from `call` (run once however
    /// many requests ask at the same time). `call` answers the decision and
    /// whether it allows; `Err` is a failed service, for which a stale
    /// positive decision is used when allowed, else `None`.
    pub async fn get_or_call<F, Fut>(&self, key: CacheKey, call: F) -> Option<(D, bool, Source)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(D, bool), ()>>,
    {
        if let Some(found) = self.fresh(key) {
            return Some(found);
        }
        let cell = lock(&self.in_flight).entry(key).or_default().clone();
        let _left = LeaveFlight {
            in_flight: &self.in_flight,
            key,
            cell: &cell,
        };
        let mut ran = false;
        let outcome = cell
            .get_or_init(|| {
                ran = true;
                call()
            })
            .await
            .clone();
        if ran {
            // Stored before the flight is left: a request arriving in
            // between finds the entry instead of starting a second call.
            if let Ok((d, allowed)) = &outcome {
                self.store(key, d.clone(), *allowed);
            }
            lock(&self.in_flight).remove(&key);
        }
        match outcome {
            Ok((d, allowed)) => Some((d, allowed, Source::Called)),
            Err(()) => self.stale(key),
        }
    }

    /// The decision for `key` if one is cached and within its TTL: the
    /// path of almost every request, so it takes no timer and no call.
    pub fn fresh(&self, key: CacheKey) -> Option<(D, bool, Source)> {
        let now = Instant::now();
        let entries = lock(&self.entries);
        let e = entries.get(&key)?;
        (e.expires > now).then(|| (e.decision.clone(), e.allowed, Source::Cached))
    }

    /// A positive decision past its TTL but within `stale_on_error`, for
    /// a request whose call failed (or ran out of time while waiting).
    pub fn stale(&self, key: CacheKey) -> Option<(D, bool, Source)> {
        let now = Instant::now();
        let entries = lock(&self.entries);
        let e = entries.get(&key)?;
        (e.allowed && e.expires + self.policy.stale_on_error > now)
            .then(|| (e.decision.clone(), true, Source::Stale))
    }

    fn store(&self, key: CacheKey, decision: D, allowed: bool) {
        let ttl = if allowed {
            self.policy.positive
        } else {
            self.policy.negative
        };
        if ttl.is_zero() && self.policy.stale_on_error.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        if entries.len() >= self.policy.max_entries && !entries.contains_key(&key) {
            let keep = self.policy.stale_on_error;
            entries.retain(|_, e| e.expires + keep > now);
            let target = self.policy.max_entries - self.policy.max_entries.div_ceil(8);
            if entries.len() > target {
                let victims: Vec<_> = entries
                    .keys()
                    .take(entries.len() - target)
                    .copied()
                    .collect();
                for k in victims {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(
            key,
            Entry {
                decision,
                allowed,
                expires: now + ttl,
            },
        );
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request dropped while its flight is in the air (its client went, or
/// its own deadline fired first) must not leave an empty flight behind for
/// ever: the last one out of an unfinished flight removes it. A waiter
/// still there takes the call over instead (tokio's `OnceCell`).
struct LeaveFlight<'a, D> {
    in_flight: &'a Mutex<HashMap<CacheKey, Flight<D>>>,
    key: CacheKey,
    cell: &'a Flight<D>,
}

impl<D> Drop for LeaveFlight<'_, D> {
    fn drop(&mut self) {
        if self.cell.initialized() {
            // Finished: its caller removes it once the entry is stored.
            return;
        }
        let mut flights = lock(self.in_flight);
        // The map's reference and ours: nobody else waits on it.
        let alone = Arc::strong_count(self.cell) == 2;
        if alone
            && flights
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, self.cell))
        {
            flights.remove(&self.key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cache(positive: u64, negative: u64, stale: u64) -> Arc<DecisionCache<&'static str>> {
        Arc::new(DecisionCache::new(CachePolicy {
            positive: Duration::from_secs(positive),
            negative: Duration::from_secs(negative),
            stale_on_error: Duration::from_secs(stale),
            max_entries: 1000,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_concurrent_requests_make_one_call() {
        let c = cache(30, 5, 0);
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (c, calls) = (c.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_call(7, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(("token", true))
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().0, "token");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn positive_and_negative_entries_expire_at_their_own_ttl() {
        let c = cache(30, 5, 0);
        let ok = || async { Ok(("yes", true)) };
        let no = || async { Ok(("no", false)) };
        assert_eq!(c.get_or_call(1, ok).await.unwrap().2, Source::Called);
        assert_eq!(c.get_or_call(2, no).await.unwrap().2, Source::Called);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(c.get_or_call(1, ok).await.unwrap().2, Source::Cached);
        assert_eq!(c.get_or_call(2, no).await.unwrap().2, Source::Called);
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(c.get_or_call(1, ok).await.unwrap().2, Source::Called);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_service_is_bridged_by_stale_positive_entries_only() {
        let c = cache(30, 5, 60);
        let fail = || async { Err(()) };
        c.get_or_call(1, || async { Ok(("yes", true)) }).await;
        c.get_or_call(2, || async { Ok(("no", false)) }).await;
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(c.get_or_call(1, fail).await.unwrap().2, Source::Stale);
        assert!(c.get_or_call(2, fail).await.is_none());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(c.get_or_call(1, fail).await.is_none());
        assert!(c.get_or_call(3, fail).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_call_leaves_no_flight_behind() {
        let c = cache(30, 5, 0);
        let call = c.get_or_call(9, || async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(("late", true))
        });
        assert!(tokio::time::timeout(Duration::from_millis(10), call)
            .await
            .is_err());
        assert!(lock(&c.in_flight).is_empty());
        let again = c.get_or_call(9, || async { Ok(("now", true)) }).await;
        assert_eq!(again.unwrap().0, "now");
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_stays_within_its_size() {
        let c = Arc::new(DecisionCache::new(CachePolicy {
            positive: Duration::from_secs(30),
            negative: Duration::from_secs(5),
            stale_on_error: Duration::ZERO,
            max_entries: 64,
        }));
        for k in 0..10_000u128 {
            c.get_or_call(k, || async { Ok(((), true)) }).await;
        }
        assert!(c.len() <= 64, "{}", c.len());
    }
}

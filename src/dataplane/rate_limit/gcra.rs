//! The rate-limit stage's arithmetic and its local store: GCRA (the
//! generic cell rate algorithm) in exact integer time, and a bounded,
//! sharded table of per-key states that a flood of distinct keys cannot
//! grow past its capacity.
//!
//! Time is kept in units of `1 / threshold` nanoseconds, so the emission
//! interval (`period / threshold`) is an integer and `Retry-After` is exact.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys one limit tracks at most (per node).
pub const DEFAULT_CAPACITY: usize = 100_000;
const SHARDS: usize = 16;

/// What a limit allows: `threshold` units per `period`, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    period_ns: u128,
    threshold: u128,
    burst: u128,
}

/// The answer to one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow {
        /// Units still available right now.
        remaining: u64,
        /// Until the whole burst is available again.
        reset: Duration,
    },
    Deny {
        /// The earliest moment the same request would pass.
        retry_after: Duration,
        reset: Duration,
    },
}

impl Gcra {
    pub fn new(period: Duration, threshold: u64, burst: u64) -> Gcra {
        Gcra {
            period_ns: period.as_nanos().max(1),
            threshold: u128::from(threshold.max(1)),
            burst: u128::from(burst.max(1)),
        }
    }

    /// Scaled time of `elapsed` since the store's epoch.
    fn scaled(&self, elapsed: Duration) -> u128 {
        elapsed.as_nanos() * self.threshold
    }

    fn unscaled(&self, t: u128) -> Duration {
        let ns = t.div_ceil(self.threshold);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Decides a request costing `cost` units at `now`, given the key's
    /// theoretical arrival time `tat` (scaled); returns the new `tat`.
    pub fn decide(&self, tat: Option<u128>, now: Duration, cost: u64) -> (Decision, Option<u128>) {
        let now = self.scaled(now);
        // The emission interval is `period_ns` in scaled units.
        let interval = self.period_ns;
        let capacity = self.burst * interval;
        let cost = u128::from(cost.max(1));
        let tat = tat.unwrap_or(now).max(now);
        let new_tat = tat + cost * interval;
        if new_tat - now <= capacity {
            let used = new_tat - now;
            let decision = Decision::Allow {
                remaining: u64::try_from((capacity - used) / interval).unwrap_or(u64::MAX),
                reset: self.unscaled(used),
            };
            return (decision, Some(new_tat));
        }
        // Passes once `new_tat - t <= capacity`; a cost over the burst never does,
        // and then a whole period is the honest answer.
        let retry_after = if cost > self.burst {
            self.unscaled(self.period_ns * self.threshold)
        } else {
            self.unscaled(new_tat - now - capacity)
        };
        let reset = self.unscaled(tat - now);
        (Decision::Deny { retry_after, reset }, Some(tat))
    }
}

/// Per-key GCRA states of one limit, bounded to `capacity` keys.
pub struct LocalLimiter {
    epoch: Instant,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

/// One shard's keys and the limit they are counted against. Each shard
/// holds its own copy of the limit so that changing it (and rescaling the
/// stored times to the new units) is atomic with respect to every check.
struct Shard {
    gcra: Gcra,
    tats: HashMap<u64, u128>,
}

impl LocalLimiter {
    pub fn new(gcra: Gcra, capacity: usize) -> LocalLimiter {
        LocalLimiter {
            epoch: Instant::now(),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        gcra,
                        tats: HashMap::new(),
                    })
                })
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// Changes the limit in place (a new node share, or an edited limit),
    /// keeping the keys' states: what each key has used so far stays used,
    /// counted in units of the new limit (2 of 5 used become 2 of 3).
    pub fn set_gcra(&self, gcra: Gcra) {
        self.set_gcra_at(gcra, self.epoch.elapsed());
    }

    fn set_gcra_at(&self, gcra: Gcra, now: Duration) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let old = shard.gcra;
            let (old_now, new_now) = (old.scaled(now), gcra.scaled(now));
            for tat in shard.tats.values_mut() {
                // Scaled, one unit is `period_ns` long in either limit.
                let used = tat.saturating_sub(old_now);
                *tat = new_now + (used * gcra.period_ns).div_ceil(old.period_ns);
            }
            shard.gcra = gcra;
        }
    }

    /// The limit keys are counted against now.
    pub fn gcra(&self) -> Gcra {
        self.shards[0]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .gcra
    }

    pub fn check(&self, key: &[u8], cost: u64) -> Decision {
        self.check_at(key, cost, self.epoch.elapsed())
    }

    fn check_at(&self, key: &[u8], cost: u64, now: Duration) -> Decision {
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shards[hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let gcra = shard.gcra;
        let (decision, tat) = gcra.decide(shard.tats.get(&hash).copied(), now, cost);
        if let Some(tat) = tat {
            if shard.tats.len() >= self.per_shard && !shard.tats.contains_key(&hash) {
                make_room(&mut shard.tats, gcra.scaled(now));
            }
            shard.tats.insert(hash, tat);
        }
        decision
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).tats.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frees room in a full shard. Keys whose budget is whole again go first
/// (forgetting them changes nothing); when too few are, an eighth of the
/// shard goes in hash order (random per process), so a flood of new keys
/// costs O(1) per insert on average instead of a scan each.
fn make_room(shard: &mut HashMap<u64, u128>, now: u128) {
    let full = shard.len();
    shard.retain(|_, tat| *tat > now);
    let target = full - full.div_ceil(8);
    if shard.len() > target {
        let victims: Vec<u64> = shard.keys().take(shard.len() - target).copied().collect();
        for k in victims {
            shard.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn allowed(d: Decision) -> bool {
        matches!(d, Decision::Allow { .. })
    }

    #[test]
    fn five_per_ten_seconds_lets_five_through_then_says_exactly_when() {
        let l = LocalLimiter::new(Gcra::new(10 * S, 5, 5), 100);
        let t0 = Duration::from_secs(100);
        for i in 0..5 {
            let d = l.check_at(b"k", 1, t0);
            assert!(allowed(d), "request {i}: {d:?}");
        }
        let Decision::Deny { retry_after, reset } = l.check_at(b"k", 1, t0) else {
            panic!("the 6th passed")
        };
        // One unit comes back every 2 s; the whole burst after 10 s.
        assert_eq!(retry_after, 2 * S);
        assert_eq!(reset, 10 * S);
        assert!(!allowed(l.check_at(
            b"k",
            1,
            t0 + 2 * S - Duration::from_nanos(1)
        )));
        assert!(allowed(l.check_at(b"k", 1, t0 + 2 * S)));
    }

    #[test]
    fn another_key_is_not_limited() {
        let l = LocalLimiter::new(Gcra::new(10 * S, 1, 1), 100);
        assert!(allowed(l.check_at(b"a", 1, S)));
        assert!(!allowed(l.check_at(b"a", 1, S)));
        assert!(allowed(l.check_at(b"b", 1, S)));
    }

    #[test]
    fn remaining_counts_down_and_bytes_cost_their_size() {
        let l = LocalLimiter::new(Gcra::new(60 * S, 1000, 1000), 100);
        let Decision::Allow { remaining, .. } = l.check_at(b"k", 300, S) else {
            panic!()
        };
        assert_eq!(remaining, 700);
        assert!(!allowed(l.check_at(b"k", 701, S)));
        assert!(allowed(l.check_at(b"k", 700, S)));
        // Larger than the burst: never passes, and says a whole period.
        let Decision::Deny { retry_after, .. } = l.check_at(b"x", 1001, S) else {
            panic!()
        };
        assert_eq!(retry_after, 60 * S);
    }

    #[test]
    fn exact_even_when_the_interval_is_not_whole_nanoseconds() {
        // 3 per second: an interval of 333,333,333.3 ns.
        let g = Gcra::new(S, 3, 1);
        let (_, tat) = g.decide(None, S, 1);
        let (d, _) = g.decide(tat, S, 1);
        let Decision::Deny { retry_after, .. } = d else {
            panic!()
        };
        assert_eq!(retry_after, Duration::from_nanos(333_333_334));
    }

    #[test]
    fn a_million_distinct_keys_stay_within_capacity() {
        let l = LocalLimiter::new(Gcra::new(60 * S, 10, 10), 10_000);
        for i in 0u32..1_000_000 {
            l.check_at(&i.to_le_bytes(), 1, S);
        }
        assert!(l.len() <= 10_000 + SHARDS, "{}", l.len());
        // Keys whose budget is whole again are the first to go.
        let l = LocalLimiter::new(Gcra::new(S, 1, 1), 16 * 8);
        for i in 0u32..1000 {
            l.check_at(&i.to_le_bytes(), 1, S * (i + 2));
        }
        assert!(l.len() <= 16 * 8 + SHARDS);
    }

    #[test]
    fn a_new_share_keeps_what_each_key_used() {
        let l = LocalLimiter::new(Gcra::new(10 * S, 5, 5), 100);
        let t0 = Duration::from_secs(100);
        for _ in 0..3 {
            assert!(allowed(l.check_at(b"k", 1, t0)));
        }
        // 3 used, and the new share allows only 2 at once (one per 5 s):
        // the next one passes once 2 units have come back.
        l.set_gcra_at(Gcra::new(10 * S, 2, 2), t0);
        assert_eq!(l.gcra(), Gcra::new(10 * S, 2, 2));
        let Decision::Deny { retry_after, .. } = l.check_at(b"k", 1, t0) else {
            panic!("passed after the share shrank")
        };
        assert_eq!(retry_after, 10 * S);
        assert!(allowed(l.check_at(b"k", 1, t0 + 10 * S)));
        // A bigger share: 2 of 2 used leave 3 of 5.
        l.set_gcra_at(Gcra::new(10 * S, 5, 5), t0 + 10 * S);
        let Decision::Allow { remaining, .. } = l.check_at(b"k", 1, t0 + 10 * S) else {
            panic!()
        };
        assert_eq!(remaining, 2);
        // An untouched key gets the new burst.
        assert!(allowed(l.check_at(b"j", 5, t0)));
    }
}

//! Counters of a node and of each member (relaxed atomics, read by `/status`),
//! and a sliding-window latency histogram.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::node::{Percentiles, PolicyStats, StatusClasses};
use crate::model::{HealthStreak, NodeStats};

#[derive(Default)]
pub struct NodeCounters {
    pub requests_total: AtomicU64,
    pub active_connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub refused_connections: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub backend_errors: AtomicU64,
    /// Responses by status class, index 0 for 1xx .. 4 for 5xx.
    pub classes: [AtomicU64; 5],
    pub latency: LatencyWindow,
    pub fail_open: AtomicBool,
    pub policy: PolicyCounters,
}

/// The auth and rate limit stages' outcomes (`PolicyStats` on the wire).
#[derive(Default)]
pub struct PolicyCounters {
    pub auth_allowed: AtomicU64,
    pub auth_denied: AtomicU64,
    pub auth_error: AtomicU64,
    pub auth_cached: AtomicU64,
    pub auth_stale: AtomicU64,
    pub auth_failure_allowed: AtomicU64,
    pub rate_limited: AtomicU64,
    pub rate_limit_store_down: AtomicU64,
}

impl PolicyCounters {
    pub fn snapshot(&self) -> PolicyStats {
        let l = |c: &AtomicU64| c.load(Relaxed);
        PolicyStats {
            auth_allowed: l(&self.auth_allowed),
            auth_denied: l(&self.auth_denied),
            auth_error: l(&self.auth_error),
            auth_cached: l(&self.auth_cached),
            auth_stale: l(&self.auth_stale),
            auth_failure_allowed: l(&self.auth_failure_allowed),
            rate_limited: l(&self.rate_limited),
            rate_limit_store_down: l(&self.rate_limit_store_down),
        }
    }
}

impl NodeCounters {
    pub fn snapshot(&self) -> NodeStats {
        let c = |i: usize| self.classes[i].load(Relaxed);
        NodeStats {
            requests_total: self.requests_total.load(Relaxed),
            active_connections: self.active_connections.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            refused_connections: self.refused_connections.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            backend_errors: self.backend_errors.load(Relaxed),
            responses: StatusClasses {
                c1xx: c(0),
                c2xx: c(1),
                c3xx: c(2),
                c4xx: c(3),
                c5xx: c(4),
            },
            latency_ms: self.latency.percentiles(),
            fail_open: self.fail_open.load(Relaxed),
            members: Vec::new(),
            policy: self.policy.snapshot(),
            managed: Vec::new(),
            names: Vec::new(),
        }
    }

    /// Counts a client connection for as long as the guard lives, unless the
    /// node is at `limit` already (then `None`: refuse it).
    pub fn admit(&self, limit: u64) -> Option<ConnectionGuard<'_>> {
        let prev = self.active_connections.fetch_add(1, Relaxed);
        if prev >= limit {
            self.active_connections.fetch_sub(1, Relaxed);
            self.refused_connections.fetch_add(1, Relaxed);
            return None;
        }
        self.connections_total.fetch_add(1, Relaxed);
        Some(ConnectionGuard(&self.active_connections))
    }

    pub fn response(&self, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.classes[class].fetch_add(1, Relaxed);
        self.latency.record(elapsed);
    }
}

pub struct ConnectionGuard<'a>(&'a AtomicU64);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Per-member counters and health, kept across config changes (by address).
pub struct MemberCounters {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub active: AtomicU64,
    /// Active health: false once the member failed `unhealth-threshold` checks.
    pub healthy: AtomicBool,
    /// The run of passing or failing active checks. Under a lock rather than
    /// in atomics so that counting and flipping `healthy` are one step, even
    /// while the checks of a replaced config are still winding down.
    pub checks: Mutex<HealthStreak>,
    /// Passive health: consecutive failed requests, and until when (ms on the
    /// node's clock) the member is ejected.
    pub consecutive_errors: AtomicU64,
    pub ejected_until_ms: AtomicU64,
    pub ejections: AtomicU64,
    /// Requests until their response body ends, upgraded tunnels and TCP
    /// relays open to the member now (lbd's idle decisions).
    pub open: AtomicU64,
    /// When (`now_ms` + 1; 0: never) the member last had nothing open.
    pub last_open_ms: AtomicU64,
}

/// One thing open to a member (a response body, a tunnel, a relay) while it
/// lives: the member is not idle.
pub struct OpenGuard(std::sync::Arc<MemberCounters>);

impl OpenGuard {
    pub fn new(counters: std::sync::Arc<MemberCounters>) -> OpenGuard {
        counters.open.fetch_add(1, Relaxed);
        OpenGuard(counters)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        // Stamped before the count drops, so a reader that sees 0 open
        // sees this end's time too.
        self.0.last_open_ms.store(now_ms() + 1, Relaxed);
        self.0.open.fetch_sub(1, Relaxed);
    }
}

impl MemberCounters {
    /// `(open_connections, idle_ms)` of `MemberStats`.
    pub fn activity(&self) -> (u64, Option<u64>) {
        let open = self.open.load(Relaxed);
        if open > 0 {
            return (open, Some(0));
        }
        let last = self.last_open_ms.load(Relaxed);
        (0, last.checked_sub(1).map(|t| now_ms().saturating_sub(t)))
    }
}

impl Default for MemberCounters {
    fn default() -> Self {
        MemberCounters {
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            active: AtomicU64::new(0),
            // Members start up, so a new LB serves at once; checks take them down.
            healthy: AtomicBool::new(true),
            checks: Mutex::default(),
            consecutive_errors: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            open: AtomicU64::new(0),
            last_open_ms: AtomicU64::new(0),
        }
    }
}

/// Milliseconds since the first call: a cheap monotonic clock for ejections.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

// === latency ===

/// Buckets grow by 2^(1/4) from 10 µs: 96 of them reach past 100 s.
const BUCKETS: usize = 96;
/// Six slots of ten seconds: percentiles cover the last minute.
const SLOTS: usize = 6;
const SLOT_SECS: u64 = 10;

pub struct LatencyWindow {
    slots: [Slot; SLOTS],
}

struct Slot {
    /// Which ten-second period this slot holds (seconds / SLOT_SECS).
    period: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            slots: std::array::from_fn(|_| Slot {
                period: AtomicU64::new(0),
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
        }
    }
}

fn bucket_of(d: Duration) -> usize {
    let us = d.as_micros().max(10) as f64 / 10.0;
    ((us.log2() * 4.0) as usize).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in milliseconds.
fn bucket_ms(i: usize) -> f64 {
    10.0 * 2f64.powf((i + 1) as f64 / 4.0) / 1000.0
}

impl LatencyWindow {
    pub fn record(&self, d: Duration) {
        self.record_at(d, now_ms() / 1000)
    }

    fn record_at(&self, d: Duration, secs: u64) {
        let period = secs / SLOT_SECS + 1;
        let slot = &self.slots[(period as usize) % SLOTS];
        let seen = slot.period.load(Relaxed);
        // The first recorder of a new period clears the slot; a sample that
        // races with the clearing may be lost, which a histogram can afford.
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Relaxed, Relaxed)
                .is_ok()
        {
            for b in &slot.buckets {
                b.store(0, Relaxed);
            }
        }
        slot.buckets[bucket_of(d)].fetch_add(1, Relaxed);
    }

    pub fn percentiles(&self) -> Percentiles {
        self.percentiles_at(now_ms() / 1000)
    }

    fn percentiles_at(&self, secs: u64) -> Percentiles {
        let current = secs / SLOT_SECS + 1;
        let mut sum = [0u64; BUCKETS];
        for slot in &self.slots {
            let p = slot.period.load(Relaxed);
            if p != 0 && p + (SLOTS as u64) > current {
                for (s, b) in sum.iter_mut().zip(&slot.buckets) {
                    *s += b.load(Relaxed);
                }
            }
        }
        let count: u64 = sum.iter().sum();
        let at = |q: f64| {
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in sum.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return bucket_ms(i);
                }
            }
            0.0
        };
        if count == 0 {
            return Percentiles::default();
        }
        Percentiles {
            count,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_bucket() {
        let w = LatencyWindow::default();
        for ms in 1..=100u64 {
            w.record_at(Duration::from_millis(ms), 5);
        }
        let p = w.percentiles_at(5);
        assert_eq!(p.count, 100);
        // A bucket is 19% wide, so the estimate is within that of the truth.
        for (got, want) in [(p.p50, 50.0), (p.p90, 90.0), (p.p99, 99.0)] {
            assert!(got >= want && got <= want * 1.2, "{got} vs {want}");
        }
    }

    #[test]
    fn old_samples_leave_the_window() {
        let w = LatencyWindow::default();
        w.record_at(Duration::from_millis(5), 0);
        assert_eq!(w.percentiles_at(30).count, 1);
        assert_eq!(w.percentiles_at(70).count, 0, "a minute later it is gone");
        w.record_at(Duration::from_millis(5), 70);
        assert_eq!(w.percentiles_at(70).count, 1, "a reused slot starts empty");
    }

    #[test]
    fn a_member_is_busy_while_anything_is_open() {
        let c = std::sync::Arc::new(MemberCounters::default());
        assert_eq!(c.activity(), (0, None), "never used");
        let a = OpenGuard::new(c.clone());
        let b = OpenGuard::new(c.clone());
        assert_eq!(c.activity(), (2, Some(0)));
        drop(a);
        assert_eq!(c.activity(), (1, Some(0)));
        drop(b);
        let (open, idle) = c.activity();
        assert_eq!(open, 0);
        assert!(idle.is_some());
    }

    #[test]
    fn admission_stops_at_the_limit() {
        let c = NodeCounters::default();
        let a = c.admit(2).unwrap();
        let _b = c.admit(2).unwrap();
        assert!(c.admit(2).is_none());
        drop(a);
        assert!(c.admit(2).is_some());
        assert_eq!(c.refused_connections.load(Relaxed), 1);
    }
}

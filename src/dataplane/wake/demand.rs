//! When a target asks lbd for (more) backends: at once for the first
//! request held, then at most every `MIN_INTERVAL_MS` while the demand
//! lasts, so a burst of 50 requests is one `Wake`, not 50.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The shortest time between two `Wake` events of one target.
pub const MIN_INTERVAL_MS: u64 = 100;

/// The last time (node clock, ms + 1; 0: never) a `Wake` was sent.
#[derive(Default)]
pub struct Throttle {
    last_ms: AtomicU64,
}

impl Throttle {
    /// Whether a `Wake` may go now; `urgent` (the queue was empty, so this
    /// request is the first held) skips the interval. Claims the slot.
    pub fn due(&self, now_ms: u64, urgent: bool) -> bool {
        let last = self.last_ms.load(Relaxed);
        if !urgent && last != 0 && now_ms + 1 < last + MIN_INTERVAL_MS {
            return false;
        }
        // One caller of several racing wins the slot.
        self.last_ms
            .compare_exchange(last, now_ms + 1, Relaxed, Relaxed)
            .is_ok()
    }
}

/// Scale-up: in-flight requests (held ones included) over what the ready
/// members are meant to carry. With no member any request is demand.
pub fn over_target(in_flight: u32, ready: u32, target_in_flight: u32) -> bool {
    u64::from(in_flight) > u64::from(target_in_flight) * u64::from(ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_goes_at_most_every_interval_unless_urgent() {
        let t = Throttle::default();
        assert!(t.due(1000, false), "the first is due");
        assert!(!t.due(1050, false), "too soon");
        assert!(t.due(1060, true), "the first held request goes at once");
        assert!(!t.due(1100, false));
        assert!(t.due(1160, false), "an interval later");
    }

    #[test]
    fn demand_counts_held_requests_over_ready_capacity() {
        assert!(over_target(1, 0, 10));
        assert!(!over_target(10, 1, 10));
        assert!(over_target(11, 1, 10));
        assert!(!over_target(20, 2, 10));
    }
}

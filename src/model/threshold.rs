//! Counting health checks against the seed's `health-threshold` and
//! `unhealth-threshold`. The controller's node checks and lb-node's member
//! checks count the same way, so they share this one type.

use crate::model::instance::HealthCriteria;

/// The current run of passed or missed checks of one thing (a node, a
/// member). A pass ends a run of misses and a miss ends a run of passes, so
/// at most one of the two counts is non-zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthStreak {
    passes: u32,
    misses: u32,
}

impl HealthStreak {
    /// Counts a passed check; returns the passes in a row, this one included.
    pub fn pass(&mut self) -> u32 {
        self.misses = 0;
        self.passes = self.passes.saturating_add(1);
        self.passes
    }

    /// Counts a missed (failed) check; returns the misses in a row, this one included.
    pub fn miss(&mut self) -> u32 {
        self.passes = 0;
        self.misses = self.misses.saturating_add(1);
        self.misses
    }

    /// `pass()` or `miss()`.
    pub fn record(&mut self, passed: bool) -> u32 {
        if passed {
            self.pass()
        } else {
            self.miss()
        }
    }

    pub fn consecutive_passes(&self) -> u32 {
        self.passes
    }

    pub fn consecutive_misses(&self) -> u32 {
        self.misses
    }

    /// What the streak says about something that is `up` now: `Some(true)`
    /// when it is down and has passed `health-threshold` checks in a row,
    /// `Some(false)` when it is up and has missed `unhealth-threshold` in a
    /// row, `None` when it stays as it is.
    ///
    /// It compares with `>=`, not `==`: a flip that the caller could not
    /// carry out (the controller's circuit breaker holds failovers back) is
    /// reported again on the next check.
    pub fn verdict(&self, up: bool, criteria: &HealthCriteria) -> Option<bool> {
        if up && self.misses >= criteria.unhealth_threshold {
            Some(false)
        } else if !up && self.passes >= criteria.health_threshold {
            Some(true)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn criteria(health: u32, unhealth: u32) -> HealthCriteria {
        HealthCriteria {
            interval: 1,
            timeout: 1,
            health_threshold: health,
            unhealth_threshold: unhealth,
        }
    }

    #[test]
    fn a_pass_ends_a_run_of_misses_and_back() {
        let mut s = HealthStreak::default();
        assert_eq!((s.consecutive_passes(), s.consecutive_misses()), (0, 0));
        assert_eq!(s.miss(), 1);
        assert_eq!(s.miss(), 2);
        assert_eq!(s.consecutive_misses(), 2);
        assert_eq!(s.pass(), 1, "a pass starts a new run");
        assert_eq!(s.consecutive_misses(), 0, "and ends the misses");
        assert_eq!(s.record(true), 2);
        assert_eq!(s.record(false), 1);
        assert_eq!((s.consecutive_passes(), s.consecutive_misses()), (0, 1));
    }

    #[test]
    fn counts_saturate() {
        let mut s = HealthStreak {
            passes: u32::MAX,
            misses: 0,
        };
        assert_eq!(s.pass(), u32::MAX);
    }

    #[test]
    fn the_verdict_follows_the_thresholds() {
        let c = criteria(2, 3);
        let mut s = HealthStreak::default();
        // Up: only unhealth-threshold misses in a row take it down.
        s.miss();
        s.miss();
        assert_eq!(s.verdict(true, &c), None);
        s.pass();
        s.miss();
        s.miss();
        assert_eq!(s.verdict(true, &c), None, "the pass reset the misses");
        s.miss();
        assert_eq!(s.verdict(true, &c), Some(false));
        // Not carried out (still up): the next miss says so again.
        s.miss();
        assert_eq!(s.verdict(true, &c), Some(false));
        // Down: misses change nothing, health-threshold passes bring it back.
        assert_eq!(s.verdict(false, &c), None);
        s.pass();
        assert_eq!(s.verdict(false, &c), None);
        s.pass();
        assert_eq!(s.verdict(false, &c), Some(true));
        assert_eq!(s.verdict(true, &c), None, "up and passing stays up");
    }

    #[test]
    fn a_threshold_of_one_flips_on_the_first_check() {
        let c = criteria(1, 1);
        let mut s = HealthStreak::default();
        s.miss();
        assert_eq!(s.verdict(true, &c), Some(false));
        s.pass();
        assert_eq!(s.verdict(false, &c), Some(true));
    }
}

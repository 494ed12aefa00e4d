//! The API's own rate limit: GCRA (the `governor` crate) per user for
//! authenticated calls, reads and writes counted apart, and per client
//! address for calls without a valid token, so guessing tokens is slow.
//! One caller's burst never limits another: every key has its own cell.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// A sustained rate and the burst allowed on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    pub fn new(per_second: u32, burst: u32) -> Option<Rate> {
        Some(Rate {
            per_second: NonZeroU32::new(per_second)?,
            burst: NonZeroU32::new(burst)?,
        })
    }

    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

/// The limits of lbd's API, from its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRates {
    pub writes: Rate,
    pub reads: Rate,
    /// Calls without a valid token, per client address.
    pub anonymous: Rate,
}

impl Default for ApiRates {
    /// 20 writes/s (burst 40) and 100 reads/s (burst 200) per token, 10/s
    /// (burst 20) per address without one.
    fn default() -> Self {
        let rate = |per_second, burst| Rate::new(per_second, burst).expect("non-zero");
        ApiRates {
            writes: rate(20, 40),
            reads: rate(100, 200),
            anonymous: rate(10, 20),
        }
    }
}

/// Which budget a call spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClass {
    Read,
    Write,
}

/// A refused call: when the caller may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header, rounded up and at least
    /// 1, so a client that waits that long is let in.
    pub fn header_seconds(self) -> u64 {
        let d = self.0;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

pub struct ApiRateLimiter {
    writes: DefaultKeyedRateLimiter<String>,
    reads: DefaultKeyedRateLimiter<String>,
    anonymous: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl ApiRateLimiter {
    pub fn new(rates: ApiRates) -> ApiRateLimiter {
        ApiRateLimiter {
            writes: DefaultKeyedRateLimiter::keyed(rates.writes.quota()),
            reads: DefaultKeyedRateLimiter::keyed(rates.reads.quota()),
            anonymous: DefaultKeyedRateLimiter::keyed(rates.anonymous.quota()),
            clock: DefaultClock::default(),
        }
    }

    /// Spends one call of `user`'s `class` budget.
    pub fn check_user(&self, user: &str, class: CallClass) -> Result<(), RetryAfter> {
        let limiter = match class {
            CallClass::Read => &self.reads,
            CallClass::Write => &self.writes,
        };
        limiter
            .check_key(&user.to_string())
            .map_err(|denied| RetryAfter(denied.wait_time_from(self.clock.now())))
    }

    /// Spends one call of `client`'s budget for calls without a valid token.
    pub fn check_anonymous(&self, client: IpAddr) -> Result<(), RetryAfter> {
        self.anonymous
            .check_key(&client)
            .map_err(|denied| RetryAfter(denied.wait_time_from(self.clock.now())))
    }

    /// Drops the cells of keys whose budget is full again, so addresses
    /// seen once do not stay in memory; call it now and then.
    pub fn forget_idle(&self) {
        for limiter in [&self.writes, &self.reads] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.anonymous.retain_recent();
        self.anonymous.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refills so slowly that no test sees a refill.
    fn slow(burst: u32) -> Rate {
        Rate {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn limiter(writes: u32, reads: u32, anonymous: u32) -> ApiRateLimiter {
        ApiRateLimiter::new(ApiRates {
            writes: slow(writes),
            reads: slow(reads),
            anonymous: slow(anonymous),
        })
    }

    #[test]
    fn a_burst_passes_and_the_next_call_is_told_when_to_retry() {
        let l = limiter(3, 100, 1);
        for _ in 0..3 {
            assert_eq!(l.check_user("alice", CallClass::Write), Ok(()));
        }
        let RetryAfter(wait) = l.check_user("alice", CallClass::Write).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[test]
    fn one_users_burst_never_limits_another_and_reads_count_apart() {
        let l = limiter(2, 2, 1);
        for _ in 0..2 {
            l.check_user("alice", CallClass::Write).unwrap();
        }
        assert!(l.check_user("alice", CallClass::Write).is_err());
        assert_eq!(l.check_user("bob", CallClass::Write), Ok(()));
        assert_eq!(l.check_user("alice", CallClass::Read), Ok(()));
    }

    #[test]
    fn calls_without_a_token_are_limited_per_address() {
        let l = limiter(10, 10, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        l.check_anonymous(a).unwrap();
        l.check_anonymous(a).unwrap();
        assert!(l.check_anonymous(a).is_err());
        assert_eq!(l.check_anonymous(b), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).header_seconds(), 1);
        assert_eq!(RetryAfter(Duration::ZERO).header_seconds(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(2001)).header_seconds(), 3);
        assert_eq!(RetryAfter(Duration::from_secs(2)).header_seconds(), 2);
    }

    #[test]
    fn defaults_are_the_issues_figures() {
        let d = ApiRates::default();
        assert_eq!((d.writes.per_second.get(), d.writes.burst.get()), (20, 40));
        assert_eq!((d.reads.per_second.get(), d.reads.burst.get()), (100, 200));
        assert_eq!(d.anonymous.per_second.get(), 10);
    }
}

//! Rate limits for repeated warnings: a failing backend would otherwise log
//! one line per request. Each kind of warning about each member logs at most
//! once per window; the next line it logs says how many were left out.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// At most one line per key per window.
const WINDOW: Duration = Duration::from_secs(1);
/// Keys kept before old ones are dropped (a node sees few distinct keys;
/// this bounds memory against many distinct ones).
const MAX_KEYS: usize = 4096;

/// (kind of warning, what it is about, e.g. a member address).
type Key = (&'static str, String);

pub struct LogLimit {
    window: Duration,
    /// Per key: when it last logged, and how many were left out since.
    keys: Mutex<HashMap<Key, (Instant, u64)>>,
}

impl LogLimit {
    pub fn new(window: Duration) -> Self {
        LogLimit {
            window,
            keys: Mutex::default(),
        }
    }

    /// `Some(left_out)` when a line for (`what`, `about`) may be logged now,
    /// with the number of lines left out since the last one; `None` when
    /// this one is to be left out.
    pub fn allow(&self, what: &'static str, about: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= MAX_KEYS {
            let window = self.window;
            keys.retain(|_, (at, _)| now.duration_since(*at) < window);
        }
        match keys.get_mut(&(what, about.to_string())) {
            Some((at, left_out)) if now.duration_since(*at) < self.window => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                *at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                keys.insert((what, about.to_string()), (now, 0));
                Some(0)
            }
        }
    }
}

static WARNINGS: LazyLock<LogLimit> = LazyLock::new(|| LogLimit::new(WINDOW));

/// The node-wide limiter for warnings.
pub fn allow(what: &'static str, about: &str) -> Option<u64> {
    WARNINGS.allow(what, about, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_and_the_next_counts_what_was_left_out() {
        let limit = LogLimit::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limit.allow("connect", "127.0.0.1:1", t0), Some(0));
        for k in 1..=99 {
            let at = t0 + Duration::from_millis(k * 5);
            assert_eq!(limit.allow("connect", "127.0.0.1:1", at), None);
        }
        // Another member, or another kind of warning, has its own window.
        assert_eq!(limit.allow("connect", "127.0.0.1:2", t0), Some(0));
        assert_eq!(limit.allow("timeout", "127.0.0.1:1", t0), Some(0));
        let later = t0 + Duration::from_secs(1);
        assert_eq!(limit.allow("connect", "127.0.0.1:1", later), Some(99));
        assert_eq!(limit.allow("connect", "127.0.0.1:1", later), None);
    }
}

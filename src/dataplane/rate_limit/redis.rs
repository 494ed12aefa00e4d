//! `global`-scope counters in Redis: one atomic Lua script per check (GCRA
//! over the key's theoretical arrival time, in microseconds of Redis's own
//! clock so that every node agrees on "now").
//!
//! The store never sits on the request path longer than the caller's
//! deadline, and never when it is known to be down: a failed or late call
//! marks the link down, requests then skip Redis (the caller falls back to
//! its node share) until a backoff expires, and the reconnection runs in a
//! spawned task, not in a request. That task is started by the first
//! request after the backoff, so a node without traffic keeps no timer and
//! no task for a Redis it does not need.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::time::Instant;

use super::gcra::Decision;

/// The first wait after a failure; doubled per failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A (re)connection runs in the background, so it may take longer than a
/// request's deadline; a hung Redis still only costs this one task.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// KEYS[1]: the key's theoretical arrival time (µs, Redis's clock).
/// ARGV: period (µs), threshold, burst, cost. Returns
/// {1, remaining, reset_us} or {0, retry_after_us, reset_us}.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local threshold = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local capacity = math.ceil(burst * period / threshold)
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + math.ceil(cost * period / threshold)
local used = new_tat - now
if used <= capacity then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat))
  redis.call('PEXPIRE', KEYS[1], math.ceil(used / 1000) + 1)
  return {1, math.floor((capacity - used) * threshold / period), used}
end
local retry = used - capacity
if cost > burst then retry = period end
return {0, retry, tat - now}
";

/// What one global limit allows, as the script takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalGcra {
    pub period: Duration,
    pub threshold: u64,
    pub burst: u64,
}

enum Link {
    /// Connected; the number tells this connection from later ones.
    Up(MultiplexedConnection, u64),
    /// A connection attempt runs in the background.
    Connecting,
    /// Skip Redis until then.
    Down { retry_at: Instant },
}

struct LinkState {
    link: Link,
    /// The wait after the next failure.
    backoff: Duration,
    generation: u64,
    /// Until the first connection attempt ends: requests may wait for it.
    starting: bool,
}

/// The Redis of `global` limits and the node's link to it.
pub struct RedisStore {
    url: String,
    client: redis::Client,
    script: redis::Script,
    state: Mutex<LinkState>,
    /// Becomes true when the first connection attempt has ended.
    started: watch::Sender<bool>,
}

impl RedisStore {
    /// A store for `url`; starts connecting at once when called on a runtime.
    pub fn new(url: &str) -> Result<Arc<RedisStore>, redis::RedisError> {
        let store = Arc::new(RedisStore {
            url: url.to_string(),
            client: redis::Client::open(url)?,
            script: redis::Script::new(GCRA_SCRIPT),
            state: Mutex::new(LinkState {
                link: Link::Down {
                    retry_at: Instant::now(),
                },
                backoff: FIRST_BACKOFF,
                generation: 0,
                starting: true,
            }),
            started: watch::Sender::new(false),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            store.state().link = Link::Connecting;
            tokio::spawn(store.clone().connect());
        }
        Ok(store)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn state(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides one request in Redis by `deadline`; `None` when Redis is
    /// down, failed or late (the caller then uses its node share).
    pub async fn check(
        self: &Arc<Self>,
        key: &str,
        gcra: GlobalGcra,
        cost: u64,
        deadline: Instant,
    ) -> Option<Decision> {
        let (mut conn, generation) = match self.connection() {
            Some(c) => c,
            None => self.first_connection(deadline).await?,
        };
        let mut call = self.script.key(key);
        call.arg(gcra.period.as_micros() as u64)
            .arg(gcra.threshold.max(1))
            .arg(gcra.burst.max(1))
            .arg(cost.max(1));
        match tokio::time::timeout_at(deadline, call.invoke_async::<Vec<i64>>(&mut conn)).await {
            Ok(Ok(answer)) => match decision(&answer) {
                Some(d) => {
                    self.state().backoff = FIRST_BACKOFF;
                    Some(d)
                }
                None => {
                    tracing::warn!(?answer, "redis rate limit script: unexpected answer");
                    self.failed(generation);
                    None
                }
            },
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis rate limit check failed; using the node share");
                self.failed(generation);
                None
            }
            Err(_) => {
                tracing::warn!("redis rate limit check missed its deadline; using the node share");
                self.failed(generation);
                None
            }
        }
    }

    /// The connection when the link is up; otherwise starts a reconnection
    /// once the backoff has expired.
    fn connection(self: &Arc<Self>) -> Option<(MultiplexedConnection, u64)> {
        let mut state = self.state();
        match &state.link {
            Link::Up(conn, generation) => Some((conn.clone(), *generation)),
            Link::Connecting => None,
            Link::Down { retry_at } => {
                if Instant::now() >= *retry_at {
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        state.link = Link::Connecting;
                        rt.spawn(self.clone().connect());
                    }
                }
                None
            }
        }
    }

    /// Before the node's first connection, a request waits for it (within
    /// its deadline) rather than count as a store failure at start-up.
    async fn first_connection(
        self: &Arc<Self>,
        deadline: Instant,
    ) -> Option<(MultiplexedConnection, u64)> {
        if !self.state().starting {
            return None;
        }
        let mut rx = self.started.subscribe();
        tokio::time::timeout_at(deadline, rx.wait_for(|started| *started))
            .await
            .ok()?
            .ok()?;
        self.connection()
    }

    /// Marks connection `generation` failed, unless a newer one replaced it.
    fn failed(&self, generation: u64) {
        let mut state = self.state();
        if matches!(state.link, Link::Up(_, g) if g == generation) {
            back_off(&mut state);
        }
    }

    async fn connect(self: Arc<Self>) {
        let attempt = async {
            let mut conn = self.client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let result = tokio::time::timeout(CONNECT_TIMEOUT, attempt).await;
        let mut state = self.state();
        state.starting = false;
        match result {
            Ok(Ok(conn)) => {
                state.generation += 1;
                let generation = state.generation;
                state.link = Link::Up(conn, generation);
                tracing::info!("redis for global rate limits connected");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, backoff_ms = state.backoff.as_millis() as u64,
                    "redis for global rate limits unreachable");
                back_off(&mut state);
            }
            Err(_) => {
                tracing::warn!(
                    backoff_ms = state.backoff.as_millis() as u64,
                    "redis for global rate limits: connecting timed out"
                );
                back_off(&mut state);
            }
        }
        drop(state);
        self.started.send_replace(true);
    }
}

fn back_off(state: &mut LinkState) {
    state.link = Link::Down {
        retry_at: Instant::now() + state.backoff,
    };
    state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
}

fn micros(n: i64) -> Duration {
    Duration::from_micros(u64::try_from(n).unwrap_or(0))
}

/// The script's answer as a decision.
fn decision(answer: &[i64]) -> Option<Decision> {
    match *answer {
        [1, remaining, reset] => Some(Decision::Allow {
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: micros(reset),
        }),
        [0, retry_after, reset] => Some(Decision::Deny {
            retry_after: micros(retry_after),
            reset: micros(reset),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_answers_become_decisions() {
        assert_eq!(
            decision(&[1, 4, 2_000_000]),
            Some(Decision::Allow {
                remaining: 4,
                reset: Duration::from_secs(2)
            })
        );
        assert_eq!(
            decision(&[0, 1_500_000, 10_000_000]),
            Some(Decision::Deny {
                retry_after: Duration::from_millis(1500),
                reset: Duration::from_secs(10)
            })
        );
        assert_eq!(decision(&[2, 0, 0]), None);
        assert_eq!(decision(&[1, 0]), None);
    }

    #[test]
    fn a_bad_url_is_refused() {
        assert!(RedisStore::new("not a url").is_err());
    }

    #[tokio::test]
    async fn an_unreachable_redis_answers_none_within_the_deadline_and_backs_off() {
        // Port 1 on loopback: nothing listens, connecting is refused at once.
        let store = RedisStore::new("redis://127.0.0.1:1").unwrap();
        let g = GlobalGcra {
            period: Duration::from_secs(10),
            threshold: 5,
            burst: 5,
        };
        let start = std::time::Instant::now();
        let deadline = Instant::now() + Duration::from_millis(50);
        assert_eq!(store.check("k", g, 1, deadline).await, None);
        assert!(start.elapsed() < Duration::from_secs(1));
        // The failed connection leaves the link down with a longer backoff.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let backoff = {
                let state = store.state();
                matches!(state.link, Link::Down { .. }).then_some(state.backoff)
            };
            if let Some(backoff) = backoff {
                assert_eq!(backoff, FIRST_BACKOFF * 2);
                break;
            }
            assert!(std::time::Instant::now() < until, "still connecting");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // While down, a check does not wait at all.
        let deadline = Instant::now() + Duration::from_secs(5);
        let start = std::time::Instant::now();
        assert_eq!(store.check("k", g, 1, deadline).await, None);
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}

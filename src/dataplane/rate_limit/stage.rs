//! The rate-limit stage as the request pipeline calls it: one
//! `RateLimitStage` per config, asked once per request after auth.
//!
//! A request is checked against every limit whose `method`/`path_prefix`
//! filters select it and whose key it carries (a request without the header,
//! cookie or auth token a limit is keyed by is not counted by that limit), in
//! the policy's order; the first limit that refuses answers 429. Limits
//! before it have counted the request (as separate counters do), the
//! refusing one has not.
//!
//! `node` scope: each node enforces `threshold / serving_nodes` and
//! `burst / serving_nodes` (at least 1), an approximation that is exact only
//! when clients spread evenly over the nodes. `global` scope: Redis decides
//! against the whole threshold; when Redis is absent, down or late, the
//! node share decides instead (and `rate_limit_store_down` counts it).
//! A 429 and a passing response carry the policy they were decided under:
//! the whole threshold from Redis, the node share otherwise.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response};
use sha2::{Digest, Sha256};

use super::gcra::{Decision, Gcra, LocalLimiter, DEFAULT_CAPACITY};
use super::headers;
use super::keys;
use super::redis::{GlobalGcra, RedisStore};
use crate::dataplane::pool::ProxyBody;
use crate::dataplane::stats::PolicyCounters;
use crate::model::node::RedisTarget;
use crate::model::policy::rate_limit::LimitScope;
use crate::model::policy::{Policy, RateLimit};

/// What the limits look at in a request.
pub struct LimitRequest<'a> {
    pub method: &'a Method,
    /// The path without the query, as the client sent it.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// The auth service's `auth_token`, when the auth stage got one.
    pub auth_token: Option<&'a str>,
    /// The request body's length when known (Content-Length).
    pub body_bytes: Option<u64>,
}

/// What the pipeline does next.
pub enum LimitOutcome {
    /// Go on; add these fields (`RateLimit`, `RateLimit-Policy`) to the response.
    Pass {
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// Answer the client with this 429.
    Limited(Response<ProxyBody>),
}

/// A `global` limit without `config.redis` is said once per process.
static WARNED_NO_REDIS: AtomicBool = AtomicBool::new(false);

/// One limit of the config and its counters.
struct Limit {
    spec: RateLimit,
    /// The node share's per-key states (also the fallback of a global limit);
    /// shared with the previous config's stage when the limit is unchanged.
    local: Arc<LocalLimiter>,
    local_burst: u64,
    local_policy: HeaderValue,
    /// Set for a `global` limit when the node has a Redis.
    global: Option<Global>,
}

struct Global {
    gcra: GlobalGcra,
    policy: HeaderValue,
    /// Key names start with this: the limit's name and a digest of its
    /// parameters, so a changed limit starts from fresh counters.
    namespace: String,
}

/// The rate limits of one config and their counters.
#[derive(Default)]
pub struct RateLimitStage {
    limits: Vec<Limit>,
    redis: Option<Arc<RedisStore>>,
    redis_timeout: Duration,
}

impl RateLimitStage {
    /// `serving_nodes`: how many nodes share a `node`-scope threshold.
    /// `previous`: the stage of the config before, whose counters carry over
    /// for limits that did not change.
    pub fn new(
        policy: &Policy,
        serving_nodes: u32,
        redis: Option<&RedisTarget>,
        previous: Option<&RateLimitStage>,
    ) -> RateLimitStage {
        let wants_redis = policy
            .rate_limits
            .iter()
            .any(|l| l.scope == LimitScope::Global);
        let store = match redis {
            Some(target) if wants_redis => reuse_or_open(target, previous),
            None if wants_redis && !WARNED_NO_REDIS.swap(true, Relaxed) => {
                tracing::warn!("global rate limits without a redis: each node enforces its share");
                None
            }
            _ => None,
        };
        let limits = policy
            .rate_limits
            .iter()
            .map(|spec| limit(spec, serving_nodes, store.is_some(), previous))
            .collect();
        RateLimitStage {
            limits,
            redis: store,
            redis_timeout: Duration::from_millis(u64::from(redis.map_or(5, |r| r.timeout_ms))),
        }
    }

    /// No limit in the policy: the pipeline skips the stage.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    pub async fn check(&self, req: &LimitRequest<'_>, counters: &PolicyCounters) -> LimitOutcome {
        // One deadline for all of the request's Redis calls together.
        let deadline = tokio::time::Instant::now() + self.redis_timeout;
        // The fields of a passing response describe the limit closest to
        // refusing: the least remaining as a share of its burst, so limits
        // in requests and in bytes compare.
        let mut tightest: Option<(f64, &HeaderValue, HeaderValue)> = None;
        for limit in &self.limits {
            if !keys::applies(&limit.spec, req) {
                continue;
            }
            let (Some(key), Some(cost)) = (
                keys::key(&limit.spec.key, req),
                keys::cost(&limit.spec, req),
            ) else {
                continue;
            };
            let (decision, policy, burst) =
                self.decide(limit, &key, cost, deadline, counters).await;
            match decision {
                Decision::Deny { retry_after, reset } => {
                    counters.rate_limited.fetch_add(1, Relaxed);
                    let resp = headers::too_many_requests(
                        &limit.spec.name,
                        policy.clone(),
                        retry_after,
                        reset,
                    );
                    return LimitOutcome::Limited(resp);
                }
                Decision::Allow { remaining, reset } => {
                    let share = remaining as f64 / burst as f64;
                    if tightest.as_ref().is_none_or(|(s, ..)| share < *s) {
                        let state = headers::state(&limit.spec.name, remaining, reset);
                        tightest = Some((share, policy, state));
                    }
                }
            }
        }
        let headers = match tightest {
            Some((_, policy, state)) => vec![
                (headers::RATELIMIT_POLICY, policy.clone()),
                (headers::RATELIMIT, state),
            ],
            None => Vec::new(),
        };
        LimitOutcome::Pass { headers }
    }

    /// The decision for one limit, the policy it was taken under, and that
    /// policy's burst.
    async fn decide<'s>(
        &'s self,
        limit: &'s Limit,
        key: &[u8],
        cost: u64,
        deadline: tokio::time::Instant,
        counters: &PolicyCounters,
    ) -> (Decision, &'s HeaderValue, u64) {
        if let (Some(global), Some(store)) = (&limit.global, &self.redis) {
            let name = format!("{}:{}", global.namespace, key_digest(key));
            if let Some(d) = store.check(&name, global.gcra, cost, deadline).await {
                return (d, &global.policy, global.gcra.burst);
            }
            counters.rate_limit_store_down.fetch_add(1, Relaxed);
        }
        (
            limit.local.check(key, cost),
            &limit.local_policy,
            limit.local_burst,
        )
    }
}

fn reuse_or_open(
    target: &RedisTarget,
    previous: Option<&RateLimitStage>,
) -> Option<Arc<RedisStore>> {
    if let Some(store) = previous
        .and_then(|p| p.redis.as_ref())
        .filter(|s| s.url() == target.url)
    {
        return Some(store.clone());
    }
    match RedisStore::new(&target.url) {
        Ok(store) => Some(store),
        Err(e) => {
            // The URL is lbd's flag; it is not a secret, but it may carry a
            // password, so only the error is logged.
            tracing::error!(error = %e, "redis url unusable: global rate limits use the node share");
            None
        }
    }
}

/// One limit of a new config, keeping the previous config's per-key states
/// when the same limit was there.
fn limit(
    spec: &RateLimit,
    serving_nodes: u32,
    has_redis: bool,
    previous: Option<&RateLimitStage>,
) -> Limit {
    let nodes = u64::from(serving_nodes.max(1));
    let share = spec.node_share(serving_nodes);
    let burst_share = (spec.burst / nodes).max(1);
    let period = Duration::from_secs(u64::from(spec.period));
    let gcra = Gcra::new(period, share, burst_share);
    let local = match previous.and_then(|p| p.limits.iter().find(|l| l.spec == *spec)) {
        Some(old) => {
            if old.local.gcra() != gcra {
                old.local.set_gcra(gcra);
            }
            old.local.clone()
        }
        None => Arc::new(LocalLimiter::new(gcra, DEFAULT_CAPACITY)),
    };
    let global = (spec.scope == LimitScope::Global && has_redis).then(|| Global {
        gcra: GlobalGcra {
            period,
            threshold: spec.threshold,
            burst: spec.burst,
        },
        policy: headers::policy(&spec.name, spec.threshold, spec.period, spec.unit),
        namespace: namespace(spec),
    });
    Limit {
        local_policy: headers::policy(&spec.name, share, spec.period, spec.unit),
        spec: spec.clone(),
        local,
        local_burst: burst_share,
        global,
    }
}

/// `lbaas:rl:<name>:<digest of the limit>`.
fn namespace(spec: &RateLimit) -> String {
    let params = serde_json::to_vec(spec).unwrap_or_default();
    let digest = Sha256::digest(&params);
    format!("lbaas:rl:{}:{}", spec.name, hex(&digest[..8]))
}

/// Keys (tokens, cookies) go to Redis as digests: key names are visible to
/// anyone who can list them, and a digest is also short.
fn key_digest(key: &[u8]) -> String {
    hex(&Sha256::digest(key)[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::RateLimitSpec;

    fn policy(limits: &[&str]) -> Policy {
        Policy {
            rate_limits: limits
                .iter()
                .map(|j| {
                    serde_json::from_str::<RateLimitSpec>(j)
                        .unwrap()
                        .validate()
                        .unwrap()
                })
                .collect(),
            ..Policy::default()
        }
    }

    const FIVE_PER_TEN: &str = r#"{"name":"five","key":"header:X-User","period":10,"threshold":5}"#;

    struct Req {
        method: Method,
        headers: HeaderMap,
        token: Option<&'static str>,
    }

    impl Req {
        fn user(user: &'static str) -> Req {
            let mut headers = HeaderMap::new();
            headers.insert("x-user", HeaderValue::from_static(user));
            Req {
                method: Method::GET,
                headers,
                token: None,
            }
        }

        fn facts(&self) -> LimitRequest<'_> {
            LimitRequest {
                method: &self.method,
                path: "/",
                headers: &self.headers,
                client_ip: "127.0.0.1".parse().unwrap(),
                auth_token: self.token,
                body_bytes: None,
            }
        }
    }

    /// How many requests of `req` pass in a row, at most 100.
    async fn passes(stage: &RateLimitStage, req: &Req, counters: &PolicyCounters) -> usize {
        for n in 0..100 {
            if let LimitOutcome::Limited(_) = stage.check(&req.facts(), counters).await {
                return n;
            }
        }
        100
    }

    #[tokio::test]
    async fn the_sixth_request_is_refused_with_the_fields_and_another_key_passes() {
        let stage = RateLimitStage::new(&policy(&[FIVE_PER_TEN]), 1, None, None);
        assert!(!stage.is_empty());
        let counters = PolicyCounters::default();
        let alice = Req::user("alice");
        for i in 0..5u64 {
            let LimitOutcome::Pass { headers } = stage.check(&alice.facts(), &counters).await
            else {
                panic!("request {i} refused")
            };
            assert_eq!(
                headers[0],
                (
                    headers::RATELIMIT_POLICY,
                    HeaderValue::from_static("\"five\";q=5;w=10")
                )
            );
            let state = format!("\"five\";r={};t={}", 4 - i, 2 * (i + 1));
            assert_eq!(headers[1].1, state.as_str());
        }
        let LimitOutcome::Limited(resp) = stage.check(&alice.facts(), &counters).await else {
            panic!("the 6th passed")
        };
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()["x-ratelimit-name"], "five");
        assert_eq!(resp.headers()["ratelimit"], "\"five\";r=0;t=10");
        assert_eq!(counters.rate_limited.load(Relaxed), 1);
        assert_eq!(passes(&stage, &Req::user("bob"), &counters).await, 5);
        // Without the header the limit does not count the request.
        let anonymous = Req {
            headers: HeaderMap::new(),
            ..Req::user("x")
        };
        assert_eq!(passes(&stage, &anonymous, &counters).await, 100);
    }

    #[tokio::test]
    async fn the_tightest_limit_names_the_fields_on_a_pass() {
        let loose = r#"{"name":"loose","key":"header:X-User","period":10,"threshold":100}"#;
        let tight = r#"{"name":"tight","key":"header:X-User","period":10,"threshold":4}"#;
        let stage = RateLimitStage::new(&policy(&[loose, tight]), 1, None, None);
        let LimitOutcome::Pass { headers } = stage
            .check(&Req::user("a").facts(), &PolicyCounters::default())
            .await
        else {
            panic!()
        };
        assert_eq!(headers[1].1, "\"tight\";r=3;t=3");
    }

    #[tokio::test]
    async fn the_node_share_splits_threshold_and_burst_and_state_carries_over() {
        let counters = PolicyCounters::default();
        let p = policy(&[FIVE_PER_TEN]);
        let two = RateLimitStage::new(&p, 2, None, None);
        let alice = Req::user("alice");
        assert_eq!(passes(&two, &alice, &counters).await, 2);
        // Same limit, one node now: alice's 2 requests stay counted.
        let one = RateLimitStage::new(&p, 1, None, Some(&two));
        assert_eq!(passes(&one, &alice, &counters).await, 3);
        // Same again: nothing resets.
        let same = RateLimitStage::new(&p, 1, None, Some(&one));
        assert_eq!(passes(&same, &alice, &counters).await, 0);
        // A changed limit starts fresh.
        let six = policy(&[r#"{"name":"five","key":"header:X-User","period":10,"threshold":6}"#]);
        let changed = RateLimitStage::new(&six, 1, None, Some(&same));
        assert_eq!(passes(&changed, &alice, &counters).await, 6);
    }

    #[tokio::test]
    async fn auth_token_limits_count_per_token_and_skip_requests_without_one() {
        let by_token = r#"{"name":"tok","key":"auth_token","period":60,"threshold":1}"#;
        let stage = RateLimitStage::new(&policy(&[by_token]), 1, None, None);
        let counters = PolicyCounters::default();
        let mut req = Req::user("u");
        assert_eq!(passes(&stage, &req, &counters).await, 100);
        req.token = Some("qwerty123");
        assert_eq!(passes(&stage, &req, &counters).await, 1);
        req.token = Some("other");
        assert_eq!(passes(&stage, &req, &counters).await, 1);
    }

    #[tokio::test]
    async fn a_global_limit_falls_back_to_the_share_without_a_redis_or_when_it_is_down() {
        let global =
            r#"{"name":"g","key":"header:X-User","period":10,"threshold":4,"scope":"global"}"#;
        let p = policy(&[global]);
        let counters = PolicyCounters::default();
        let without = RateLimitStage::new(&p, 2, None, None);
        assert_eq!(passes(&without, &Req::user("a"), &counters).await, 2);
        assert_eq!(counters.rate_limit_store_down.load(Relaxed), 0);
        // Nothing listens on port 1: every check falls back, and says so.
        let dead = RedisTarget {
            url: "redis://127.0.0.1:1".into(),
            timeout_ms: 20,
        };
        let down = RateLimitStage::new(&p, 2, Some(&dead), None);
        let start = std::time::Instant::now();
        assert_eq!(passes(&down, &Req::user("a"), &counters).await, 2);
        assert_eq!(counters.rate_limit_store_down.load(Relaxed), 3);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn redis_keys_are_namespaced_by_the_limit_and_its_parameters() {
        let a = policy(&[FIVE_PER_TEN]).rate_limits.remove(0);
        let mut b = a.clone();
        b.threshold = 6;
        assert!(namespace(&a).starts_with("lbaas:rl:five:"));
        assert_ne!(namespace(&a), namespace(&b));
        assert_eq!(key_digest(b"secret-token").len(), 32);
        assert!(!key_digest(b"secret-token").contains("secret"));
    }
}

//! The rate-limit stage of lb-node end to end (issue 15 §3): real lb-node
//! processes with `policy.rate_limits` in their config, real backends,
//! raw-socket clients, and a real redis-server for `global` limits.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::backends::HttpBackend;
use common::node::{config_with, free_addr, wait_status, LbNode};
use common::redis::RedisServer;
use lbaas::model::policy::RateLimitSpec;
use serde_json::{json, Value};

/// What the client saw of one response.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    took: Duration,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection, with extra header lines
/// (`"X-User: a\r\n"`) and a body; the time is from connect to the end of
/// the response.
fn request(addr: SocketAddr, method: &str, path: &str, extra: &str, body: &str) -> Answer {
    let start = Instant::now();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_nodelay(true).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let length = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    // One write: in pieces, Nagle would hold the rest back for the
    // server's delayed ACK and add 40 ms to the measured latency.
    let text = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{length}{extra}Connection: close\r\n\r\n{body}"
    );
    conn.write_all(text.as_bytes()).unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let took = start.elapsed();
    let (status, headers, _) = common::backends::parse_response(&text);
    Answer {
        status,
        headers,
        took,
    }
}

fn get_as(addr: SocketAddr, path: &str, user: &str) -> Answer {
    request(addr, "GET", path, &format!("X-User: {user}\r\n"), "")
}

/// Rate limits as a client writes them, validated as lbd does, in the
/// form a `NodeConfig` carries.
fn validated(specs: &Value) -> Value {
    let specs: Vec<RateLimitSpec> = serde_json::from_value(specs.clone()).unwrap();
    let limits: Vec<_> = specs.iter().map(|s| s.validate().unwrap()).collect();
    serde_json::to_value(limits).unwrap()
}

/// A node serving `backend` with these rate limits (and more config).
fn start_node(backend: &HttpBackend, limits: Value, extra: Value) -> (LbNode, SocketAddr) {
    let node = LbNode::start();
    let listen = free_addr();
    let mut more = json!({"policy": {"rate_limits": validated(&limits)}});
    for (k, v) in extra.as_object().unwrap() {
        more[k] = v.clone();
    }
    let (s, v) = node.put_config(&config_with(1, "http", listen, &[backend.addr()], more));
    assert_eq!(s, 200, "{v}");
    (node, listen)
}

fn policy_stat(node: &LbNode, name: &str) -> u64 {
    node.status()["stats"]["policy"][name].as_u64().unwrap()
}

#[test]
fn the_sixth_request_of_five_per_ten_seconds_is_429_with_the_fields() {
    let backend = HttpBackend::start("b");
    let limit = json!([{"name": "five", "key": "header:X-User", "period": 10, "threshold": 5}]);
    let (node, listen) = start_node(&backend, limit, json!({}));
    for i in 0..5 {
        let a = get_as(listen, "/", "alice");
        assert_eq!(a.status, 200, "request {i}");
        assert_eq!(a.header("RateLimit-Policy"), Some("\"five\";q=5;w=10"));
        let state = a.header("RateLimit").unwrap();
        assert!(
            state.starts_with(&format!("\"five\";r={};t=", 4 - i)),
            "{state}"
        );
    }
    let denied = get_as(listen, "/", "alice");
    assert_eq!(denied.status, 429);
    let retry: u64 = denied.header("Retry-After").unwrap().parse().unwrap();
    // One request comes back every 2 s; rounded up, at least 1.
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(denied.header("X-RateLimit-Name"), Some("five"));
    assert_eq!(denied.header("RateLimit-Policy"), Some("\"five\";q=5;w=10"));
    let state = denied.header("RateLimit").unwrap();
    assert!(state.starts_with("\"five\";r=0;t="), "{state}");
    assert_eq!(
        backend.hits(),
        5,
        "the refused request never reached the backend"
    );
    // Another key has its own budget; no key, no limit.
    for _ in 0..5 {
        assert_eq!(get_as(listen, "/", "bob").status, 200);
    }
    for _ in 0..7 {
        assert_eq!(request(listen, "GET", "/", "", "").status, 200);
    }
    assert_eq!(policy_stat(&node, "rate_limited"), 1);
}

#[test]
fn a_bytes_limit_counts_request_body_bytes() {
    let backend = HttpBackend::start("b");
    let limit = json!([{"name": "upload", "key": "client_ip", "unit": "bytes",
        "method": ["POST"], "period": 60, "threshold": 1000}]);
    let (_node, listen) = start_node(&backend, limit, json!({}));
    let body = |n: usize| "x".repeat(n);
    let first = request(listen, "POST", "/", "", &body(600));
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("RateLimit-Policy"),
        Some("\"upload\";q=1000;w=60;qu=\"content-bytes\"")
    );
    assert!(first
        .header("RateLimit")
        .unwrap()
        .starts_with("\"upload\";r=400;"));
    assert_eq!(request(listen, "POST", "/", "", &body(300)).status, 200);
    let over = request(listen, "POST", "/", "", &body(200));
    assert_eq!(over.status, 429, "900 of 1000 bytes used, 200 more is over");
    assert_eq!(over.header("X-RateLimit-Name"), Some("upload"));
    assert_eq!(request(listen, "POST", "/", "", &body(100)).status, 200);
    // GETs are outside the limit's filter.
    assert_eq!(request(listen, "GET", "/", "", "").status, 200);
}

#[test]
fn a_chunked_body_under_a_bytes_limit_costs_the_whole_burst() {
    let backend = HttpBackend::start("b");
    let limit = json!([{"name": "up", "key": "client_ip", "unit": "bytes",
        "period": 60, "threshold": 1000}]);
    let (_node, listen) = start_node(&backend, limit, json!({}));
    let chunked_post = || {
        let mut conn = TcpStream::connect(listen).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            conn,
            "POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    assert_eq!(chunked_post(), 200, "a full budget lets one through");
    assert_eq!(chunked_post(), 429, "and then the budget is gone");
}

#[test]
fn the_node_scope_splits_the_threshold_over_the_serving_nodes() {
    let backend = HttpBackend::start("b");
    let limit = json!([{"name": "six", "key": "header:X-User", "period": 60, "threshold": 6}]);
    let (a, listen_a) = start_node(&backend, limit.clone(), json!({"serving_nodes": 2}));
    let (_b, listen_b) = start_node(&backend, limit.clone(), json!({"serving_nodes": 2}));
    for listen in [listen_a, listen_b] {
        for i in 0..3 {
            let ok = get_as(listen, "/", "carol");
            assert_eq!(ok.status, 200, "request {i}");
            assert_eq!(ok.header("RateLimit-Policy"), Some("\"six\";q=3;w=60"));
        }
        assert_eq!(
            get_as(listen, "/", "carol").status,
            429,
            "each node allows 6 / 2"
        );
    }
    // One node serves alone now: it gets the whole threshold, and carol's
    // use so far carries over (3 of 6 used, and one minute to refill).
    let (s, v) = a.put_config(&config_with(
        2,
        "http",
        listen_a,
        &[backend.addr()],
        json!({"policy": {"rate_limits": validated(&limit)}, "serving_nodes": 1}),
    ));
    assert_eq!(s, 200, "{v}");
    let passed = (0..6)
        .filter(|_| get_as(listen_a, "/", "carol").status == 200)
        .count();
    assert_eq!(passed, 3);
}

/// Two nodes counting one `global` limit in one Redis.
struct GlobalSetup {
    redis: RedisServer,
    _backend: HttpBackend,
    nodes: Vec<(LbNode, SocketAddr)>,
}

const REDIS_TIMEOUT_MS: u64 = 100;

fn global_setup() -> Option<GlobalSetup> {
    if !common::require("redis-server", RedisServer::available()) {
        return None;
    }
    let redis = RedisServer::start();
    let backend = HttpBackend::start("b");
    let limit = json!([{"name": "shared", "key": "header:X-User", "path_prefix": "/limited/",
        "period": 60, "threshold": 6, "scope": "global"}]);
    let extra = json!({"serving_nodes": 2,
        "redis": {"url": redis.url(), "timeout_ms": REDIS_TIMEOUT_MS}});
    let nodes = (0..2)
        .map(|_| start_node(&backend, limit.clone(), extra.clone()))
        .collect();
    Some(GlobalSetup {
        redis,
        _backend: backend,
        nodes,
    })
}

impl GlobalSetup {
    fn listen(&self, i: usize) -> SocketAddr {
        self.nodes[i].1
    }

    fn store_down(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|(n, _)| policy_stat(n, "rate_limit_store_down"))
            .collect()
    }

    /// Six requests of `user` at node 0 use the whole global threshold: the
    /// next one is refused at node 1 too, which alone would allow 3.
    fn assert_the_count_is_shared(&self, user: &str) {
        for i in 0..6 {
            let a = get_as(self.listen(0), "/limited/x", user);
            assert_eq!(a.status, 200, "request {i} of {user}");
            assert_eq!(a.header("RateLimit-Policy"), Some("\"shared\";q=6;w=60"));
        }
        let other = get_as(self.listen(1), "/limited/x", user);
        assert_eq!(other.status, 429, "the other node saw the shared count");
        assert_eq!(other.header("X-RateLimit-Name"), Some("shared"));
    }
}

#[test]
fn a_global_limit_holds_across_two_nodes() {
    let Some(setup) = global_setup() else { return };
    setup.assert_the_count_is_shared("dave");
    assert_eq!(setup.store_down(), vec![0, 0]);
    assert!(
        setup.redis.command("DBSIZE").is_some_and(|r| r == ":1"),
        "one key for one user"
    );
}

#[test]
fn a_dead_redis_falls_back_to_local_limits_without_delay_and_recovers() {
    let Some(mut setup) = global_setup() else {
        return;
    };
    setup.assert_the_count_is_shared("erin");

    // The baseline: the same requests outside the limit's path, so no
    // limit (and no Redis) is involved; its 95th percentile, so one stall
    // of a loaded machine does not widen the bound.
    let mut base: Vec<Duration> = (0..40)
        .map(|i| {
            let a = get_as(setup.listen(i % 2), "/free", &format!("base-{i}"));
            assert_eq!(a.status, 200);
            a.took
        })
        .collect();
    base.sort();
    let baseline = base[37];

    let pid = setup.redis.pid().unwrap();
    setup.redis.kill();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            // A zombie is reaped by kill(); the pid must not answer any more.
            !setup.redis.answers_ping()
        }
    );

    // Requests keep flowing: each user gets the node share (3) on each
    // node, nothing is 5xx, and no request waits longer than the deadline
    // (plus a generous margin for a loaded machine) over the baseline.
    let bound = baseline + Duration::from_millis(REDIS_TIMEOUT_MS + 50);
    let mut slowest = Duration::ZERO;
    for round in 0..10 {
        for node in 0..2 {
            let user = format!("fallback-{round}-{node}");
            let answers: Vec<Answer> = (0..4)
                .map(|_| get_as(setup.listen(node), "/limited/x", &user))
                .collect();
            for a in &answers {
                assert!(a.status < 500, "status {}", a.status);
                slowest = slowest.max(a.took);
                assert!(
                    a.took <= bound,
                    "a request took {:?} with Redis dead; baseline {baseline:?}",
                    a.took
                );
            }
            let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
            assert_eq!(statuses, [200, 200, 200, 429], "local share of 6 / 2 nodes");
        }
    }
    eprintln!("baseline p95 {baseline:?}, slowest with Redis dead {slowest:?}, bound {bound:?}");
    let down = setup.store_down();
    assert!(
        down.iter().all(|d| *d > 0),
        "rate_limit_store_down rises: {down:?}"
    );

    // Redis back on the same port (empty): the nodes reconnect after their
    // backoff and count globally again.
    setup.redis.restart();
    common::wait_for("both nodes back on Redis", Duration::from_secs(20), || {
        let before = setup.store_down();
        for node in 0..2 {
            get_as(
                setup.listen(node),
                "/limited/x",
                &format!("probe-{}", rand_tag()),
            );
        }
        (setup.store_down() == before).then_some(())
    });
    setup.assert_the_count_is_shared("frank");
}

/// A tag unique within this test process.
fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

#[test]
fn a_hung_redis_costs_at_most_the_deadline_once() {
    let Some(setup) = global_setup() else { return };
    setup.assert_the_count_is_shared("gina");
    let pid = setup.redis.pid().unwrap();
    common::signal(pid, libc::SIGSTOP);
    // SIGCONT even when the test fails, so the Drop's SIGKILL ends it
    // (a stopped process takes SIGKILL too, but leave it runnable).
    struct Resume(u32);
    impl Drop for Resume {
        fn drop(&mut self) {
            common::signal(self.0, libc::SIGCONT);
        }
    }
    let _resume = Resume(pid);
    let bound = Duration::from_millis(REDIS_TIMEOUT_MS + 250);
    let mut waited = 0;
    for i in 0..20 {
        let a = get_as(setup.listen(0), "/limited/x", &format!("hung-{i}"));
        assert_eq!(a.status, 200);
        assert!(a.took <= bound, "request {i} took {:?}", a.took);
        if a.took >= Duration::from_millis(REDIS_TIMEOUT_MS) {
            waited += 1;
        }
    }
    // The first request pays the deadline; the backoff spares the others
    // (a reconnection may cost one more when its backoff expires).
    assert!(waited <= 3, "{waited} requests waited for the hung Redis");
    let down = wait_status(&setup.nodes[0].0, "store_down counted", |s| {
        s["stats"]["policy"]["rate_limit_store_down"].as_u64() >= Some(20)
    });
    assert!(down["stats"]["policy"]["rate_limit_store_down"].as_u64() >= Some(20));
}

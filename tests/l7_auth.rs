//! The auth stage of lb-node (issue 15, section 2) against real processes:
//! an lb-node, HTTP backends recording what they saw, and a Python auth
//! service implementing the contract (`tests/fixtures/auth_service.py`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::auth_service::{header, request, AuthService};
use common::backends::HttpBackend;
use common::node::{config_with, free_addr, LbNode};
use common::wait_for;
use lbaas::model::policy::PolicySpec;
use lbaas::model::TrafficType;
use lbaas::password::Argon2Hasher;
use serde_json::{json, Value};

/// An lb-node serving `listen` in front of `backend` with `policy`.
struct Proxy {
    node: LbNode,
    listen: SocketAddr,
}

impl Proxy {
    fn start(backend: &HttpBackend, policy: Value) -> Proxy {
        let proxy = Proxy {
            node: LbNode::start(),
            listen: free_addr(),
        };
        proxy.configure(1, &[backend.addr()], policy);
        wait_for("the listener", Duration::from_secs(10), || {
            std::net::TcpStream::connect(proxy.listen).ok()
        });
        proxy
    }

    /// Pushes config `version`: `backends` and `policy` (a `PolicySpec`,
    /// validated and hashed here as lbd would).
    fn configure(&self, version: u64, backends: &[SocketAddr], policy: Value) {
        let spec: PolicySpec = serde_json::from_value(policy).unwrap();
        let policy = spec
            .validate(TrafficType::Http, 80, &Argon2Hasher)
            .expect("a valid policy");
        let config = config_with(
            version,
            "http",
            self.listen,
            backends,
            json!({"policy": serde_json::to_value(&policy).unwrap()}),
        );
        let (status, answer) = self.node.put_config(&config);
        assert_eq!(status, 200, "{answer}");
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
        request(self.listen, "GET", path, headers)
    }

    fn policy_stats(&self) -> Value {
        self.node.status()["stats"]["policy"].clone()
    }
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {stats}"))
}

fn last_seen(backend: &HttpBackend) -> common::backends::Seen {
    backend
        .seen
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("a request")
}

fn service_policy(service: &AuthService, extra: Value) -> Value {
    let mut auth = json!({"mode": "service", "url": service.url()});
    for (k, v) in extra.as_object().unwrap() {
        auth[k] = v.clone();
    }
    json!({"auth": auth})
}

#[test]
fn the_service_refuses_or_grants_and_the_backend_sees_only_the_auth_token() {
    let Some(service) = AuthService::start() else {
        return;
    };
    let backend = HttpBackend::start("app");
    let proxy = Proxy::start(
        &backend,
        service_policy(&service, json!({"token_header": "X-Token"})),
    );

    let (status, headers, _) = proxy.get("/a", &[]);
    assert_eq!(status, 401, "no credentials");
    assert_eq!(
        header(&headers, "www-authenticate"),
        Some("Bearer realm=\"test\"")
    );
    let (status, _, body) = proxy.get("/a", &[("Authorization", "Bearer wrong")]);
    assert_eq!(status, 403);
    assert_eq!(body, "forbidden by the test auth service\n");
    assert_eq!(backend.hits(), 0, "a refused request reached the backend");
    // Refusals are cached too (negative_ttl_s).
    let calls = service.total();
    assert_eq!(proxy.get("/a", &[("Authorization", "Bearer wrong")]).0, 403);
    assert_eq!(service.total(), calls);

    let (status, _, body) = proxy.get(
        "/path?q=1",
        &[("Authorization", "Bearer ok-1"), ("X-Auth-Token", "forged")],
    );
    assert_eq!((status, body.as_str()), (200, "app"));
    let seen = last_seen(&backend);
    assert_eq!(seen.header("x-auth-token"), Some("tok-ok-1"));
    assert_eq!(seen.header("authorization"), None, "credentials forwarded");
    let query = &service.calls()["last"];
    assert_eq!(query["token"], "ok-1");
    assert_eq!(query["username"], Value::Null);
    assert_eq!(query["password"], Value::Null);
    assert_eq!(query["uri"], "/path?q=1");
    assert_eq!(query["method"], "GET");
    assert_eq!(query["protocol"], "http");
    assert_eq!(query["client_ip"], "127.0.0.1");
    assert_eq!(query["length"], 0);

    // The token header, and HTTP Basic.
    let (status, _, _) = proxy.get("/b", &[("X-Token", "ok-2")]);
    assert_eq!(status, 200);
    let seen = last_seen(&backend);
    assert_eq!(seen.header("x-auth-token"), Some("tok-ok-2"));
    assert_eq!(seen.header("x-token"), None);
    // "alice:wonderland"
    let (status, _, _) = proxy.get("/c", &[("Authorization", "Basic YWxpY2U6d29uZGVybGFuZA==")]);
    assert_eq!(status, 200);
    assert_eq!(service.calls()["last"]["username"], "alice");
    assert_eq!(
        last_seen(&backend).header("x-auth-token"),
        Some("tok-alice")
    );

    // A 5xx from the service is a failure: 503 under `failure: deny`.
    let (status, _, body) = proxy.get("/d", &[("Authorization", "Bearer boom")]);
    assert_eq!(status, 503, "{body}");

    let stats = proxy.policy_stats();
    assert_eq!(counter(&stats, "auth_allowed"), 3, "{stats}");
    assert_eq!(counter(&stats, "auth_denied"), 3, "{stats}");
    assert_eq!(counter(&stats, "auth_cached"), 1, "{stats}");
    assert_eq!(counter(&stats, "auth_error"), 1, "{stats}");
}

#[test]
fn an_unchanged_auth_object_keeps_its_cache_across_config_updates() {
    let Some(service) = AuthService::start() else {
        return;
    };
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let policy = |ttl: u32| service_policy(&service, json!({"cache_ttl_s": ttl}));
    let proxy = Proxy::start(&a, policy(30));
    let token = [("Authorization", "Bearer ok-1")];
    assert_eq!(proxy.get("/", &token).0, 200);
    assert_eq!(service.total(), 1);
    // Another backend, the same auth: the decision is still cached. (A
    // PUT answers once the config is in force.)
    proxy.configure(2, &[a.addr(), b.addr()], policy(30));
    assert_eq!(proxy.get("/", &token).0, 200);
    assert_eq!(
        service.total(),
        1,
        "the cache was dropped by an unrelated change"
    );
    // A changed auth object starts afresh.
    proxy.configure(3, &[a.addr(), b.addr()], policy(31));
    assert_eq!(proxy.get("/", &token).0, 200);
    assert_eq!(service.total(), 2);
}

#[test]
fn concurrent_identical_requests_make_one_call_until_the_ttl_expires() {
    let Some(service) = AuthService::start() else {
        return;
    };
    let backend = HttpBackend::start("app");
    let proxy = Proxy::start(
        &backend,
        service_policy(&service, json!({"cache_ttl_s": 2, "timeout_ms": 3000})),
    );
    let listen = proxy.listen;
    // The service takes 300 ms for "slow-" tokens: the requests overlap the call.
    let clients: Vec<_> = (0..100)
        .map(|_| {
            std::thread::spawn(move || {
                request(
                    listen,
                    "GET",
                    "/same",
                    &[("Authorization", "Bearer slow-1")],
                )
                .0
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    assert_eq!(service.total(), 1, "single-flight");
    let (status, _, _) = proxy.get("/same", &[("Authorization", "Bearer slow-1")]);
    assert_eq!(status, 200);
    assert_eq!(service.total(), 1, "cached");
    // Another uri is another decision.
    proxy.get("/other", &[("Authorization", "Bearer slow-1")]);
    assert_eq!(service.total(), 2);
    // Past the TTL the service is asked again.
    wait_for("a call after the TTL", Duration::from_secs(10), || {
        let (status, _, _) = proxy.get("/same", &[("Authorization", "Bearer slow-1")]);
        assert_eq!(status, 200);
        (service.total() == 3).then_some(())
    });
    // The 99 that joined the call are not "cached": they waited for it.
    let stats = proxy.policy_stats();
    assert!(counter(&stats, "auth_cached") >= 1, "{stats}");
    assert!(counter(&stats, "auth_allowed") >= 103, "{stats}");
}

#[test]
fn a_dead_or_frozen_service_gets_503_within_the_timeout_under_deny() {
    let Some(mut service) = AuthService::start() else {
        return;
    };
    let backend = HttpBackend::start("app");
    let proxy = Proxy::start(
        &backend,
        service_policy(&service, json!({"timeout_ms": 200})),
    );
    assert_eq!(proxy.get("/", &[("Authorization", "Bearer ok-1")]).0, 200);

    // Frozen: connections are accepted by the kernel, nothing answers.
    common::signal(service.pid(), libc::SIGSTOP);
    let start = Instant::now();
    let (status, _, body) = proxy.get("/", &[("Authorization", "Bearer ok-2")]);
    let took = start.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(
        took < Duration::from_millis(300),
        "503 after {took:?}, timeout_ms is 200"
    );
    // Dead: connections are refused.
    service.kill();
    let start = Instant::now();
    let (status, _, _) = proxy.get("/", &[("Authorization", "Bearer ok-3")]);
    assert_eq!(status, 503);
    assert!(start.elapsed() < Duration::from_millis(300));
    assert_eq!(backend.hits(), 1);
    let stats = proxy.policy_stats();
    assert_eq!(counter(&stats, "auth_error"), 2, "{stats}");
    assert_eq!(counter(&stats, "auth_failure_allowed"), 0, "{stats}");
}

#[test]
fn failure_allow_passes_with_the_failure_header_and_no_token() {
    let Some(mut service) = AuthService::start() else {
        return;
    };
    let backend = HttpBackend::start("app");
    let proxy = Proxy::start(
        &backend,
        service_policy(&service, json!({"failure": "allow"})),
    );
    service.kill();
    let (status, _, body) = proxy.get(
        "/",
        &[("Authorization", "Bearer ok-1"), ("X-Auth-Token", "forged")],
    );
    assert_eq!((status, body.as_str()), (200, "app"));
    let seen = last_seen(&backend);
    assert_eq!(seen.header("x-auth-failure-mode-allowed"), Some("true"));
    assert_eq!(seen.header("x-auth-token"), None);
    assert_eq!(seen.header("authorization"), None);
    let stats = proxy.policy_stats();
    assert_eq!(counter(&stats, "auth_failure_allowed"), 1, "{stats}");
    assert_eq!(counter(&stats, "auth_error"), 1, "{stats}");
}

#[test]
fn stale_positive_decisions_bridge_a_dead_service() {
    let Some(mut service) = AuthService::start() else {
        return;
    };
    let backend = HttpBackend::start("app");
    let proxy = Proxy::start(
        &backend,
        service_policy(&service, json!({"cache_ttl_s": 1, "stale_on_error_s": 60})),
    );
    let known = [("Authorization", "Bearer ok-1")];
    assert_eq!(proxy.get("/", &known).0, 200);
    service.kill();
    // Cached first, then stale once the TTL is over: never refused.
    wait_for("a stale decision", Duration::from_secs(10), || {
        let (status, _, body) = proxy.get("/", &known);
        assert_eq!(status, 200, "{body}");
        (counter(&proxy.policy_stats(), "auth_stale") > 0).then_some(())
    });
    assert_eq!(last_seen(&backend).header("x-auth-token"), Some("tok-ok-1"));
    // Nothing cached for another caller: deny.
    assert_eq!(proxy.get("/", &[("Authorization", "Bearer ok-2")]).0, 503);
}

#[test]
fn the_upstream_named_by_the_service_gets_the_request() {
    let Some(service) = AuthService::start() else {
        return;
    };
    let pool = HttpBackend::start("pool");
    let named = HttpBackend::start("named");
    let proxy = Proxy::start(&pool, service_policy(&service, json!({})));
    let token = format!("Bearer up:{}", named.addr());
    let (status, _, body) = proxy.get("/", &[("Authorization", &token)]);
    assert_eq!((status, body.as_str()), (200, "named"));
    assert_eq!(pool.hits(), 0);
    assert_eq!(last_seen(&named).header("x-auth-token"), Some("tok-up"));
}

const BASIC_ANN: &str = "Basic YW5uOmFubi1wYXNzd29yZA=="; // ann:ann-password
const BASIC_BOB: &str = "Basic Ym9iOmJvYi1wYXNzd29yZA=="; // bob:bob-password
const BASIC_ANN_WRONG: &str = "Basic YW5uOndyb25nLXBhc3N3b3Jk"; // ann:wrong-password

fn basic_users() -> Value {
    json!({"mode": "basic", "realm": "shop", "users": [
        {"name": "ann", "password": "ann-password", "groups": ["admins", "ops"]},
        {"name": "bob", "password": "bob-password", "groups": ["ops"]}]})
}

#[test]
fn basic_users_are_checked_by_the_node_and_verified_once() {
    let backend = HttpBackend::start("app");
    let proxy = Proxy::start(&backend, json!({"auth": basic_users()}));
    let (status, headers, _) = proxy.get("/", &[]);
    assert_eq!(status, 401);
    assert_eq!(
        header(&headers, "www-authenticate"),
        Some("Basic realm=\"shop\"")
    );
    assert_eq!(proxy.get("/", &[("Authorization", BASIC_ANN_WRONG)]).0, 401);
    for _ in 0..3 {
        assert_eq!(proxy.get("/", &[("Authorization", BASIC_ANN)]).0, 200);
    }
    assert_eq!(last_seen(&backend).header("authorization"), None);
    let stats = proxy.policy_stats();
    assert_eq!(counter(&stats, "auth_allowed"), 3, "{stats}");
    assert_eq!(counter(&stats, "auth_denied"), 2, "{stats}");
    // Verified once: the next two came from the cache.
    assert_eq!(counter(&stats, "auth_cached"), 2, "{stats}");
}

#[test]
fn api_keys_are_checked_by_the_node() {
    let backend = HttpBackend::start("app");
    let proxy = Proxy::start(
        &backend,
        json!({"auth": {"mode": "api_key", "header": "X-Api-Key",
            "keys": [{"name": "ci", "key": "key-of-ci-0001", "groups": ["deploy"]}]}}),
    );
    assert_eq!(proxy.get("/", &[]).0, 401);
    assert_eq!(proxy.get("/", &[("X-Api-Key", "not-the-key")]).0, 401);
    assert_eq!(proxy.get("/", &[("X-Api-Key", "key-of-ci-0001")]).0, 200);
    assert_eq!(last_seen(&backend).header("x-api-key"), None);
}

#[test]
fn require_groups_lets_members_in_and_keeps_others_out() {
    let backend = HttpBackend::start("app");
    let proxy = Proxy::start(
        &backend,
        json!({"auth": basic_users(), "rules": [
            {"name": "public", "match": {"path_prefix": "/public/"}, "auth": "none",
             "action": {"pool": "default"}},
            {"name": "admin", "match": {"path_prefix": "/admin/"}, "require_groups": ["admins"],
             "action": {"pool": "default"}},
            {"name": "deploy", "match": {"path_prefix": "/deploy/"}, "require_groups": ["deploy"],
             "auth": {"mode": "api_key", "keys": [
                 {"name": "ci", "key": "key-of-ci-0001", "groups": ["deploy"]},
                 {"name": "ro", "key": "key-of-ro-0002"}]},
             "action": {"pool": "default"}}]}),
    );
    assert_eq!(proxy.get("/public/x", &[]).0, 200);
    assert_eq!(
        proxy.get("/admin/x", &[("Authorization", BASIC_ANN)]).0,
        200
    );
    assert_eq!(
        proxy.get("/admin/x", &[("Authorization", BASIC_BOB)]).0,
        403
    );
    assert_eq!(proxy.get("/admin/x", &[]).0, 401);
    assert_eq!(
        proxy.get("/deploy/x", &[("X-Api-Key", "key-of-ci-0001")]).0,
        200
    );
    assert_eq!(
        proxy.get("/deploy/x", &[("X-Api-Key", "key-of-ro-0002")]).0,
        403
    );
    // Groups come from the decision only, never from the request.
    assert_eq!(
        proxy
            .get(
                "/admin/x",
                &[("Authorization", BASIC_BOB), ("X-Groups", "admins")]
            )
            .0,
        403
    );
}

//! L7 routing in a real lb-node (issue 15, section 1): named pools and
//! rules, pushed as a `NodeConfig` with its `policy`, exercised by raw-socket
//! clients against real HTTP backends that record what they saw.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use common::backends::HttpBackend;
use common::l7::{get, policy, send, wrk_requests, Wrk};
use common::node::{config_with, free_addr, wait_status, LbNode};

/// Pushes version `version` with `default` as the backends and `spec` (a
/// policy as a client writes it); the listener is bound when it returns.
fn push(node: &LbNode, version: u64, listen: SocketAddr, default: &[SocketAddr], spec: Value) {
    let config = config_with(
        version,
        "http",
        listen,
        default,
        json!({ "policy": policy(spec) }),
    );
    let (status, answer) = node.put_config(&config);
    assert_eq!(status, 200, "config {version} refused: {answer}");
}

fn pool(members: &[&HttpBackend]) -> Value {
    json!({ "entities": members.iter().map(|b| b.addr().to_string()).collect::<Vec<_>>() })
}

/// The name of the backend that answered `target` with `headers`.
fn reached(listen: SocketAddr, target: &str, headers: &[(&str, &str)]) -> String {
    let reply = get(listen, target, headers);
    assert_eq!(reply.status, 200, "{target} {headers:?}: {reply:?}");
    reply.body
}

#[test]
fn host_and_path_rules_reach_their_pools_and_the_rest_the_default_pool() {
    let (default, api, web) = (
        HttpBackend::start("default"),
        HttpBackend::start("api"),
        HttpBackend::start("web"),
    );
    let node = LbNode::start();
    let listen = free_addr();
    push(
        &node,
        1,
        listen,
        &[default.addr()],
        json!({
            "pools": {"api": pool(&[&api]), "web": pool(&[&web])},
            "rules": [
                {"name": "api-host", "match": {"host": "api.example.com"}, "action": {"pool": "api"}},
                {"name": "web-hosts", "match": {"host": "*.web.test"}, "action": {"pool": "web"}},
                {"name": "static", "match": {"path_prefix": "/static/"}, "action": {"pool": "web"}},
            ]
        }),
    );
    let host = |h: &'static str| [("Host", h)];
    assert_eq!(reached(listen, "/", &host("api.example.com")), "api");
    assert_eq!(
        reached(listen, "/x", &host("API.Example.com:8080")),
        "api",
        "hosts compare without case and port"
    );
    assert_eq!(reached(listen, "/", &host("a.web.test")), "web");
    assert_eq!(reached(listen, "/", &host("deep.a.web.test")), "web");
    assert_eq!(
        reached(listen, "/", &host("web.test")),
        "default",
        "*.web.test is a suffix: the bare domain is not in it"
    );
    assert_eq!(reached(listen, "/static/app.js", &host("other")), "web");
    assert_eq!(reached(listen, "/staticx", &host("other")), "default");
    assert_eq!(reached(listen, "/", &host("other")), "default");
}

#[test]
fn strip_prefix_sends_the_rest_of_the_path_and_the_query() {
    let (default, api) = (HttpBackend::start("default"), HttpBackend::start("api"));
    let node = LbNode::start();
    let listen = free_addr();
    push(
        &node,
        1,
        listen,
        &[default.addr()],
        json!({
            "pools": {"api": pool(&[&api])},
            "rules": [
                {"name": "api", "match": {"path_prefix": "/api/"}, "action": {"pool": "api", "strip_prefix": true}},
                {"name": "keep", "match": {"path_prefix": "/keep/"}, "action": {"pool": "api"}},
            ]
        }),
    );
    assert_eq!(reached(listen, "/api/users?x=1", &[]), "api");
    assert_eq!(reached(listen, "/api/", &[]), "api");
    assert_eq!(reached(listen, "/keep/a?b", &[]), "api");
    let paths: Vec<String> = api
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(paths, ["/users?x=1", "/", "/keep/a?b"]);
    assert_eq!(default.hits(), 0);
}

#[test]
fn redirect_reject_and_respond_are_answered_by_the_node() {
    let default = HttpBackend::start("default");
    let node = LbNode::start();
    let listen = free_addr();
    push(
        &node,
        1,
        listen,
        &[default.addr()],
        json!({
            "rules": [
                {"name": "moved", "match": {"path_prefix": "/old/"}, "action": {"redirect": "https://new.example/", "code": 301}},
                {"name": "temp", "match": {"path_prefix": "/temp"}, "action": {"redirect": "https://temp.example/x"}},
                {"name": "admin", "match": {"path_prefix": "/admin"}, "action": {"reject": 403}},
                {"name": "gone", "match": {"path_prefix": "/gone"}, "action": {"reject": 410}},
                {"name": "ping", "match": {"path_prefix": "/ping"},
                 "action": {"respond": {"status": 200, "body": "{\"pong\":true}", "content_type": "application/json"}}},
            ]
        }),
    );
    let moved = get(listen, "/old/page", &[]);
    assert_eq!(moved.status, 301, "{moved:?}");
    assert_eq!(moved.header("location"), Some("https://new.example/"));
    let temp = get(listen, "/temp", &[]);
    assert_eq!(temp.status, 302, "302 is the default code: {temp:?}");
    assert_eq!(temp.header("location"), Some("https://temp.example/x"));
    assert_eq!(get(listen, "/admin/users", &[]).status, 403);
    assert_eq!(send(listen, "DELETE", "/gone", &[]).status, 410);
    let ping = get(listen, "/ping", &[]);
    assert_eq!(ping.status, 200);
    assert_eq!(ping.body, "{\"pong\":true}");
    assert_eq!(ping.header("content-type"), Some("application/json"));
    assert_eq!(default.hits(), 0, "no node answer reaches a backend");
    assert_eq!(reached(listen, "/other", &[]), "default");
}

#[test]
fn set_and_remove_headers_are_seen_at_the_backend() {
    let (default, api) = (HttpBackend::start("default"), HttpBackend::start("api"));
    let node = LbNode::start();
    let listen = free_addr();
    push(
        &node,
        1,
        listen,
        &[default.addr()],
        json!({
            "pools": {"api": pool(&[&api])},
            "rules": [{"name": "api", "match": {"path_prefix": "/api/"},
                       "action": {"pool": "api", "strip_prefix": true,
                                  "set_headers": {"X-Pool": "api", "X-Env": "prod"},
                                  "remove_headers": ["X-Secret"]}}]
        }),
    );
    let sent = [
        ("X-Secret", "hunter2"),
        ("X-Env", "dev"),
        ("X-Other", "kept"),
    ];
    assert_eq!(reached(listen, "/api/a", &sent), "api");
    let seen = api.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.path, "/a");
    assert_eq!(seen.header("x-pool"), Some("api"));
    assert_eq!(
        seen.header("x-env"),
        Some("prod"),
        "set replaces the client's value"
    );
    assert_eq!(seen.header("x-secret"), None);
    assert_eq!(seen.header("x-other"), Some("kept"));
    assert!(
        seen.header("x-forwarded-for").is_some(),
        "the proxy's own headers stay"
    );
    // Requests of no rule are not edited.
    assert_eq!(reached(listen, "/", &sent), "default");
    let plain = default.seen.lock().unwrap()[0].clone();
    assert_eq!(plain.header("x-secret"), Some("hunter2"));
    assert_eq!(plain.header("x-pool"), None);
}

#[test]
fn header_cookie_method_and_source_cidr_conditions_match() {
    let names = ["default", "beta", "debug", "canary", "writes", "local"];
    let backends: Vec<HttpBackend> = names.iter().map(|n| HttpBackend::start(n)).collect();
    let by = |name: &str| &backends[names.iter().position(|n| *n == name).unwrap()];
    let node = LbNode::start();
    let listen = free_addr();
    push(
        &node,
        1,
        listen,
        &[by("default").addr()],
        json!({
            "pools": {
                "beta": pool(&[by("beta")]), "debug": pool(&[by("debug")]),
                "canary": pool(&[by("canary")]), "writes": pool(&[by("writes")]),
                "local": pool(&[by("local")]),
            },
            "rules": [
                {"name": "elsewhere", "match": {"source_cidr": "10.0.0.0/8"}, "action": {"reject": 403}},
                {"name": "beta", "match": {"header": {"X-Env": "beta"}}, "action": {"pool": "beta"}},
                {"name": "debug", "match": {"header": {"X-Debug": "*"}}, "action": {"pool": "debug"}},
                {"name": "canary", "match": {"cookie": {"canary": "1"}}, "action": {"pool": "canary"}},
                {"name": "writes", "match": {"method": ["POST", "PUT"]}, "action": {"pool": "writes"}},
                {"name": "local", "match": {"path_prefix": "/local", "source_cidr": ["192.168.0.0/16", "127.0.0.0/8"]},
                 "action": {"pool": "local"}},
            ]
        }),
    );
    let check = |method: &str, target: &str, headers: &[(&str, &str)], want: &str| {
        let reply = send(listen, method, target, headers);
        assert_eq!(
            reply.status, 200,
            "{method} {target} {headers:?}: {reply:?}"
        );
        assert_eq!(reply.body, want, "{method} {target} {headers:?}");
    };
    check("GET", "/", &[("X-Env", "beta")], "beta");
    check("GET", "/", &[("X-Env", "prod")], "default");
    check("GET", "/", &[("X-Debug", "")], "debug");
    check("GET", "/", &[("X-Debug", "anything")], "debug");
    check("GET", "/", &[("Cookie", "a=b; canary=1")], "canary");
    check("GET", "/", &[("Cookie", "canary=0")], "default");
    check("GET", "/", &[("Cookie", "notcanary=1")], "default");
    check("POST", "/", &[], "writes");
    check("PUT", "/", &[], "writes");
    check("DELETE", "/", &[], "default");
    check("GET", "/local/x", &[], "local");
    assert_eq!(by("default").hits(), 4, "what no rule matched");
}

#[test]
fn a_pools_own_health_check_takes_its_dead_member_down_and_no_other_pools() {
    let (default, alive) = (HttpBackend::start("default"), HttpBackend::start("alive"));
    let dead = free_addr();
    let node = LbNode::start();
    let listen = free_addr();
    let fast = json!({"protocol": "TCP", "criteria": {"interval": 1, "timeout": 1, "health-threshold": 1, "unhealth-threshold": 1}});
    let slow = json!({"protocol": "TCP", "criteria": {"interval": 3600, "timeout": 5}});
    let entities = json!([alive.addr().to_string(), dead.to_string()]);
    push(
        &node,
        1,
        listen,
        &[default.addr()],
        json!({
            "pools": {
                "api": {"entities": entities, "health-check": fast},
                "other": {"entities": entities, "health-check": slow},
            },
            "rules": [{"name": "api", "match": {"path_prefix": "/api/"}, "action": {"pool": "api"}}]
        }),
    );
    let member = |status: &Value, pool: &str, addr: SocketAddr| -> Option<String> {
        status["stats"]["members"]
            .as_array()?
            .iter()
            .find(|m| m["pool"] == pool && m["address"] == addr.to_string())
            .map(|m| m["state"].as_str().unwrap_or_default().to_string())
    };
    let status = wait_status(&node, "api's dead member down", |s| {
        member(s, "api", dead).as_deref() == Some("down")
    });
    assert_eq!(member(&status, "api", alive.addr()).as_deref(), Some("up"));
    assert_eq!(
        member(&status, "other", dead).as_deref(),
        Some("up"),
        "the same address in another pool has its own health: {status}"
    );
    let default_member = status["stats"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["address"] == default.addr().to_string())
        .cloned()
        .unwrap();
    assert!(default_member.get("pool").is_none(), "{default_member}");
    assert_eq!(default_member["state"], "up");
    for _ in 0..6 {
        assert_eq!(reached(listen, "/api/x", &[]), "alive");
    }
    // A new config keeps the pool's verdict (counters are kept per pool and address).
    push(
        &node,
        2,
        listen,
        &[default.addr()],
        json!({
            "pools": {"api": {"entities": entities, "health-check": fast}},
            "rules": [{"name": "api2", "match": {"path_prefix": "/api/"}, "action": {"pool": "api"}}]
        }),
    );
    let status = node.status();
    assert_eq!(
        member(&status, "api", dead).as_deref(),
        Some("down"),
        "{status}"
    );
    assert_eq!(member(&status, "other", dead), None, "pool other is gone");
}

#[test]
fn a_live_rule_and_pool_change_under_wrk_load_fails_no_request() {
    let names = ["default", "a", "b", "c"];
    let backends: Vec<HttpBackend> = names.iter().map(|n| HttpBackend::start(n)).collect();
    let [default, a, b, c] = [&backends[0], &backends[1], &backends[2], &backends[3]];
    let node = LbNode::start();
    let listen = free_addr();
    let to = |p: &str| json!({"name": format!("api-{p}"), "match": {"path_prefix": "/api/"}, "action": {"pool": p, "strip_prefix": true}});
    let configs = [
        json!({"pools": {"p1": pool(&[a]), "p2": pool(&[b])}, "rules": [to("p1")]}),
        json!({"pools": {"p1": pool(&[a]), "p2": pool(&[b])}, "rules": [to("p2")]}),
        json!({"pools": {"p1": pool(&[c]), "p2": pool(&[b])}, "rules": [to("p1")]}),
        json!({"pools": {"p1": pool(&[c, a]), "p3": pool(&[b])},
               "rules": [{"name": "ping", "match": {"path_prefix": "/ping"}, "action": {"reject": 403}}, to("p3")]}),
        json!({"pools": {"p1": pool(&[a])}, "rules": [to("p1")]}),
        json!({"pools": {"p2": pool(&[c])}, "rules": [to("p2")]}),
    ];
    push(&node, 1, listen, &[default.addr()], configs[0].clone());
    let wrk = Wrk::start(&["-t1", "-c8", "-d4s"], &format!("http://{listen}/api/x"));
    // Wait until the load is on (a readiness signal, not a guess), then
    // change the config every 400 ms while it runs.
    common::wait_for("wrk's first requests", Duration::from_secs(5), || {
        (a.hits() > 0).then_some(())
    });
    for (i, spec) in configs.iter().enumerate().skip(1) {
        std::thread::sleep(Duration::from_millis(400));
        push(&node, i as u64 + 1, listen, &[default.addr()], spec.clone());
    }
    let mut wrk = wrk;
    assert!(wrk.running(), "the changes ran while wrk did");
    let report = wrk.finish();
    eprintln!("{report}");
    assert!(
        !report.contains("Non-2xx or 3xx responses"),
        "requests failed during the changes:\n{report}"
    );
    assert!(
        !report.contains("Socket errors"),
        "connections failed:\n{report}"
    );
    assert!(wrk_requests(&report) > 100, "{report}");
    for backend in [a, b, c] {
        assert!(
            backend.hits() > 0,
            "{} got no request: the changes took effect",
            backend.name
        );
    }
    assert_eq!(default.hits(), 0, "every request matched a rule");
    assert!(b.seen.lock().unwrap().iter().all(|s| s.path == "/x"));
    assert_eq!(node.status()["config_version"], configs.len() as u64);
}

#[test]
fn a_policy_the_node_cannot_compile_is_refused_and_the_old_config_serves() {
    let (default, api) = (HttpBackend::start("default"), HttpBackend::start("api"));
    let node = LbNode::start();
    let listen = free_addr();
    let spec = json!({
        "pools": {"api": pool(&[&api])},
        "rules": [{"name": "api", "match": {"path_prefix": "/api/"}, "action": {"pool": "api"}}]
    });
    push(&node, 1, listen, &[default.addr()], spec.clone());
    // A controller of another version could send a rule naming a pool this
    // node does not have: the node says so and keeps serving version 1.
    let mut bad = policy(spec);
    bad["pools"] = json!({});
    let config = config_with(
        2,
        "http",
        listen,
        &[default.addr()],
        json!({ "policy": bad }),
    );
    let (status, answer) = node.put_config(&config);
    assert_eq!(status, 500, "{answer}");
    assert!(answer.to_string().contains("api"), "{answer}");
    let now = node.status();
    assert_eq!(now["config_version"], 1, "{now}");
    assert!(
        now["error"].as_str().is_some_and(|e| e.contains("policy")),
        "{now}"
    );
    assert_eq!(reached(listen, "/api/x", &[]), "api");
}

/// One HTTP/2 (prior knowledge) GET of `uri` (its authority is `:authority`,
/// with no `Host` header); the response's status.
fn h2_get(listen: SocketAddr, uri: &str) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::get(uri).body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .expect("no answer within 10 s")
            .expect("an h2 response");
        resp.status().as_u16()
    })
}

#[test]
fn an_h2_request_is_routed_by_its_authority() {
    let (default, api) = (HttpBackend::start("default"), HttpBackend::start("api"));
    let node = LbNode::start();
    let listen = free_addr();
    push(
        &node,
        1,
        listen,
        &[default.addr()],
        json!({
            "pools": {"api": pool(&[&api])},
            "rules": [{"name": "api", "match": {"host": "api.example.com", "path_prefix": "/api/"},
                       "action": {"pool": "api", "strip_prefix": true}}]
        }),
    );
    assert_eq!(h2_get(listen, "http://api.example.com/api/x?y=1"), 200);
    assert_eq!(h2_get(listen, "http://www.example.com/api/x"), 200);
    let seen = api.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/x?y=1");
    assert_eq!(seen[0].header("host"), Some("api.example.com"));
    assert_eq!(default.hits(), 1);
}

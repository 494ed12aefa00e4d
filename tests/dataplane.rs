//! `lb-node` on its own: the admin API contract and the proxy's behaviour,
//! against the real binary and real backends on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::backends::{http_get, HttpBackend};
use common::node::{config, free_addr, LbNode};
use serde_json::{json, Value};

/// Sends `n` requests on one keep-alive connection; returns the bodies.
fn keepalive_gets(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut bodies = Vec::new();
    for _ in 0..n {
        write!(conn, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut len = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        bodies.push(String::from_utf8(body).unwrap());
    }
    bodies
}

#[test]
fn admin_api_needs_the_secret() {
    let node = LbNode::start();
    for token in [None, Some("wrong")] {
        let mut get = node.http.get(format!("http://{}/status", node.admin));
        let mut put = node
            .http
            .put(format!("http://{}/config", node.admin))
            .body("{}");
        if let Some(t) = token {
            get = get.bearer_auth(t);
            put = put.bearer_auth(t);
        }
        assert_eq!(get.send().unwrap().status(), 401);
        assert_eq!(put.send().unwrap().status(), 401);
    }
    assert_eq!(node.status()["config_version"], Value::Null);
    let resp = node
        .http
        .put(format!("http://{}/config", node.admin))
        .bearer_auth(&node.secret)
        .body("{nope")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[test]
fn live_update_keeps_the_connection_and_switches_backends() {
    let (a, b, c) = (
        HttpBackend::start("a"),
        HttpBackend::start("b"),
        HttpBackend::start("c"),
    );
    let node = LbNode::start();
    let listen = free_addr();
    let (s, v) = node.put_config(&config(1, "http", listen, &[a.addr(), b.addr()]));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["config_version"], 1);
    assert_eq!(v["listening"], listen.to_string());

    // One client connection, kept alive across the change.
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut get = || {
        write!(conn, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut body = [0u8; 1];
        reader.read_exact(&mut body).unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    };
    let before: Vec<String> = (0..4).map(|_| get()).collect();
    assert_eq!(before, ["a", "b", "a", "b"]);

    let (s, v) = node.put_config(&config(2, "http", listen, &[c.addr()]));
    assert_eq!((s, &v["config_version"]), (200, &json!(2)));
    let after: Vec<String> = (0..3).map(|_| get()).collect();
    assert_eq!(after, ["c", "c", "c"], "same connection, new backends");

    let stats = node.status()["stats"].clone();
    assert!(stats["requests_total"].as_u64().unwrap() >= 7, "{stats}");
    assert_eq!(stats["members"][0]["address"], c.addr().to_string());
    assert_eq!(stats["members"][0]["requests"], 3);
}

#[test]
fn keep_alive_round_robin_is_even() {
    let (a, b, c) = (
        HttpBackend::start("a"),
        HttpBackend::start("b"),
        HttpBackend::start("c"),
    );
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &[a.addr(), b.addr(), c.addr()]));
    let bodies = keepalive_gets(listen, 30);
    for name in ["a", "b", "c"] {
        assert_eq!(
            bodies.iter().filter(|b| *b == name).count(),
            10,
            "{bodies:?}"
        );
    }
}

#[test]
fn dead_member_gives_502_and_gets_routed_around() {
    let live = HttpBackend::start("live");
    let dead = free_addr();
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &[dead]));
    let (status, body) = http_get(listen, "/").unwrap();
    assert_eq!(status, 502);
    assert!(
        body.starts_with("lb-node: no backend answered") && body.contains(&dead.to_string()),
        "{body}"
    );
    assert_eq!(node.status()["stats"]["backend_errors"], 1);

    // With a live member too, every GET succeeds: a refused connect is retried elsewhere.
    node.put_config(&config(2, "http", listen, &[dead, live.addr()]));
    for _ in 0..6 {
        assert_eq!(http_get(listen, "/").unwrap(), (200, "live".to_string()));
    }
}

#[test]
fn a_failed_bind_keeps_the_old_config_serving() {
    let a = HttpBackend::start("a");
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &[a.addr()]));
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    let (s, v) = node.put_config(&config(2, "http", taken, &[a.addr()]));
    assert_eq!(s, 500);
    assert!(
        v["error"].as_str().unwrap().contains(&taken.to_string()),
        "{v}"
    );
    let status = node.status();
    assert_eq!(status["config_version"], 1);
    assert!(
        status["error"].as_str().unwrap().contains("bind"),
        "{status}"
    );
    assert_eq!(http_get(listen, "/").unwrap(), (200, "a".to_string()));
}

/// PUT /config with `patch` merged into the health check of a valid config.
fn with_health_check(mut c: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        c["health_check"][k] = v.clone();
    }
    c
}

#[test]
fn a_config_the_node_cannot_read_is_refused_and_the_old_one_serves() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let node = LbNode::start();
    let listen = free_addr();
    let good = with_health_check(
        config(1, "http", listen, &[a.addr()]),
        json!({"expected-codes": "200,204-206"}),
    );
    let (s, v) = node.put_config(&good);
    assert_eq!(s, 200, "{v}");
    // expected-codes is parsed on arrival: a bad one never reaches the checks.
    let bad_codes = with_health_check(
        config(2, "http", listen, &[b.addr()]),
        json!({"expected-codes": "2xx"}),
    );
    let (s, v) = node.put_config(&bad_codes);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("expected-codes"),
        "{v}"
    );
    // The tuning fields are flattened into the config; an unknown field
    // next to them is still refused, not ignored.
    for (key, value) in [("colour", json!("red")), ("max_conections", json!(1))] {
        let mut unknown = config(3, "http", listen, &[b.addr()]);
        unknown[key] = value;
        let (s, v) = node.put_config(&unknown);
        assert_eq!(s, 400, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains(&format!("unknown field `{key}`")),
            "{v}"
        );
    }
    assert_eq!(node.status()["config_version"], 1);
    assert_eq!(http_get(listen, "/").unwrap(), (200, "a".to_string()));
}

#[test]
fn tcp_proxy_passes_half_close() {
    let echo = common::backends::EchoBackend::start();
    let node = LbNode::start();
    let listen = free_addr();
    let (s, v) = node.put_config(&config(1, "tcp", listen, &[echo.addr()]));
    assert_eq!(s, 200, "{v}");
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"hello, half-closed world").unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    conn.read_to_string(&mut back).unwrap();
    assert_eq!(back, "hello, half-closed world");
    // Counted when the proxied connection ends, just after the client saw EOF.
    common::wait_for("bytes counted", Duration::from_secs(10), || {
        (node.status()["stats"]["bytes_in"] == 24).then_some(())
    });
}

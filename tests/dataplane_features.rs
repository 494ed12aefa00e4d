//! The data plane's production behaviour, against the real lb-node binary:
//! algorithms, active and passive health, retries, drain, timeouts,
//! upgrades, h2c, PROXY protocol, the connection cap, and 100 config changes
//! under load without a failed request.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backends::{http_get, http_request, HttpBackend};
use common::node::{config, config_with, free_addr, wait_status, LbNode};
use serde_json::{json, Value};

fn fast_checks() -> Value {
    json!({"protocol": "HTTP", "port": 0, "request-path": "/health", "expected-codes": "200-399",
           "criteria": {"interval": 1, "timeout": 1, "health-threshold": 2, "unhealth-threshold": 2}})
}

fn member(status: &Value, addr: SocketAddr) -> &Value {
    status["stats"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["address"] == addr.to_string())
        .unwrap()
}

#[test]
fn active_checks_take_a_member_down_and_back_up() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let node = LbNode::start();
    let listen = free_addr();
    let (s, v) = node.put_config(&config_with(
        1,
        "http",
        listen,
        &[a.addr(), b.addr()],
        json!({"health_check": fast_checks()}),
    ));
    assert_eq!(s, 200, "{v}");
    a.healthy.store(false, Ordering::SeqCst);
    wait_status(&node, "a down", |st| {
        member(st, a.addr())["state"] == "down"
    });
    for _ in 0..6 {
        assert_eq!(
            http_get(listen, "/").unwrap(),
            (200, "b".to_string()),
            "down members get no traffic"
        );
    }
    // Every member down: fail open, and say so.
    b.healthy.store(false, Ordering::SeqCst);
    wait_status(&node, "b down", |st| {
        member(st, b.addr())["state"] == "down"
    });
    let (status, _) = http_get(listen, "/").unwrap();
    assert_eq!(status, 503, "the request still reaches a (sick) member");
    assert_eq!(node.status()["stats"]["fail_open"], true);
    a.healthy.store(true, Ordering::SeqCst);
    b.healthy.store(true, Ordering::SeqCst);
    wait_status(&node, "both up", |st| {
        member(st, a.addr())["state"] == "up" && member(st, b.addr())["state"] == "up"
    });
    let bodies: Vec<String> = (0..4).map(|_| http_get(listen, "/").unwrap().1).collect();
    assert!(
        bodies.contains(&"a".to_string()) && bodies.contains(&"b".to_string()),
        "{bodies:?}"
    );
}

#[test]
fn retry_once_for_idempotent_requests_never_for_post() {
    let live = HttpBackend::start("live");
    let dead = free_addr();
    let node = LbNode::start();
    let listen = free_addr();
    // Round robin starts at the dead member.
    node.put_config(&config(1, "http", listen, &[dead, live.addr()]));
    let (status, body) = http_request(listen, "POST", "/orders", "{\"n\": 1}").unwrap();
    assert_eq!(status, 502, "a POST is not retried: {body}");
    assert!(body.contains(&dead.to_string()));
    assert_eq!(live.hits(), 0);
    for _ in 0..4 {
        assert_eq!(
            http_get(listen, "/").unwrap(),
            (200, "live".to_string()),
            "GET is retried elsewhere"
        );
    }
}

#[test]
fn passive_health_ejects_a_failing_member() {
    let live = HttpBackend::start("live");
    let dead = free_addr();
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &[dead, live.addr()]));
    for _ in 0..8 {
        assert_eq!(http_get(listen, "/").unwrap().0, 200);
    }
    let st = node.status();
    assert_eq!(member(&st, dead)["state"], "ejected", "{st}");
    assert_eq!(member(&st, dead)["ejections"], 1);
    assert_eq!(
        member(&st, live.addr())["state"],
        "up",
        "never more than half are ejected"
    );
}

#[test]
fn weight_zero_drains_in_flight_requests_finish() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &[a.addr()]));
    let slow = std::thread::spawn(move || http_get(listen, "/slow").unwrap());
    common::wait_for("slow request at a", Duration::from_secs(10), || {
        (a.hits() == 1).then_some(())
    });
    let mut drain = config(2, "http", listen, &[a.addr(), b.addr()]);
    drain["backends"][0]["weight"] = json!(0);
    assert_eq!(node.put_config(&drain).0, 200);
    for _ in 0..4 {
        assert_eq!(http_get(listen, "/").unwrap(), (200, "b".to_string()));
    }
    assert_eq!(
        slow.join().unwrap(),
        (200, "a".to_string()),
        "the in-flight request finished"
    );
    assert_eq!(member(&node.status(), a.addr())["state"], "draining");
}

#[test]
fn sigterm_lets_the_request_in_flight_finish() {
    let a = HttpBackend::start("a");
    let mut node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &[a.addr()]));
    let slow = std::thread::spawn(move || http_get(listen, "/slow").unwrap());
    common::wait_for("slow request at a", Duration::from_secs(10), || {
        (a.hits() == 1).then_some(())
    });
    assert!(node.terminate().success(), "lb-node exits cleanly");
    assert_eq!(
        slow.join().unwrap(),
        (200, "a".to_string()),
        "the request in flight at SIGTERM was answered"
    );
    assert!(
        http_get(listen, "/").is_err(),
        "after SIGTERM nothing listens"
    );
}

#[test]
fn first_byte_timeout_answers_504_and_idle_clients_are_closed() {
    let a = HttpBackend::start("a");
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config_with(
        1,
        "http",
        listen,
        &[a.addr()],
        json!({"timeouts": {
        "connect_ms": 1000, "first_byte_ms": 200, "client_idle_ms": 300, "backend_idle_ms": 1000}}),
    ));
    let (status, body) = http_get(listen, "/slow").unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("200 ms"), "{body}");
    // An idle keep-alive client is closed: the read ends with EOF, not the test's timeout.
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let n = conn.read_to_end(&mut buf);
    assert!(n.is_ok(), "closed by the node, not timed out: {n:?}");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

#[test]
fn consistent_hash_on_a_header_keeps_a_user_on_one_member() {
    let backends: Vec<HttpBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| HttpBackend::start(n))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(HttpBackend::addr).collect();
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config_with(
        1,
        "http",
        listen,
        &addrs,
        json!({"algorithm": "consistent_hash", "hash_on": "header:x-user"}),
    ));
    let get_as = |user: &str| {
        let mut conn = TcpStream::connect(listen).unwrap();
        write!(
            conn,
            "GET / HTTP/1.1\r\nHost: t\r\nX-User: {user}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text.rsplit("\r\n\r\n").next().unwrap().to_string()
    };
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let first = get_as(&format!("user-{user}"));
        for _ in 0..3 {
            assert_eq!(get_as(&format!("user-{user}")), first);
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "users spread over every member");
}

#[test]
fn least_connections_avoids_the_busy_member() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config_with(
        1,
        "http",
        listen,
        &[a.addr(), b.addr()],
        json!({"algorithm": "least_connections"}),
    ));
    // One slow request keeps a member busy; while it lasts, every new request
    // goes to the idle member (round robin would alternate).
    let slow = std::thread::spawn(move || http_get(listen, "/slow").unwrap());
    common::wait_for("slow request in flight", Duration::from_secs(10), || {
        (a.hits() + b.hits() == 1).then_some(())
    });
    let idle = if a.hits() == 1 { "b" } else { "a" };
    for _ in 0..3 {
        assert_eq!(http_get(listen, "/").unwrap(), (200, idle.to_string()));
    }
    assert_eq!(slow.join().unwrap().0, 200);
}

#[test]
fn websocket_upgrade_is_passed_through() {
    // A backend that accepts any upgrade and then echoes raw bytes.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let server = std::thread::spawn(move || loop {
        // Health checks may connect too; serve the first connection that asks to upgrade.
        let (conn, _) = backend.accept().unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut conn = conn;
        let mut upgrade = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if line.to_ascii_lowercase().starts_with("upgrade:") {
                upgrade = line.trim().to_string();
            }
            if line == "\r\n" {
                break;
            }
        }
        if upgrade.is_empty() {
            continue;
        }
        write!(
            conn,
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 5];
        reader.read_exact(&mut buf).unwrap();
        conn.write_all(&buf).unwrap();
        return upgrade;
    });
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &[backend_addr]));
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    conn.write_all(b"hello").unwrap();
    let mut echo = [0u8; 5];
    reader.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello");
    assert_eq!(
        server.join().unwrap().to_ascii_lowercase(),
        "upgrade: websocket"
    );
}

#[test]
fn h2c_prior_knowledge_clients_are_served() {
    let a = HttpBackend::start("a");
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &[a.addr()]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = rt.block_on(async {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(listen).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri(format!("http://web.demo:{}/", listen.port()))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    });
    assert_eq!((status, &body[..]), (200, &b"a"[..]));
    let seen = a.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        seen.header("host"),
        Some(format!("web.demo:{}", listen.port()).as_str()),
        "authority becomes Host"
    );
    assert_eq!(seen.header("via"), Some("2 lb-node"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(format!("web.demo:{}", listen.port()).as_str())
    );
}

#[test]
fn proxy_protocol_headers_reach_the_backend() {
    for (kind, check) in [
        ("v1", b"PROXY TCP4 127.0.0.1 ".to_vec()),
        ("v2", b"\r\n\r\n\0\r\nQUIT\n".to_vec()),
    ] {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend_addr = backend.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = backend.accept().unwrap();
            let mut got = vec![0u8; 21];
            conn.read_exact(&mut got).unwrap();
            got
        });
        let node = LbNode::start();
        let listen = free_addr();
        let (s, v) = node.put_config(&config_with(
            1,
            "tcp",
            listen,
            &[backend_addr],
            json!({"proxy_protocol": kind}),
        ));
        assert_eq!(s, 200, "{v}");
        let _client = TcpStream::connect(listen).unwrap();
        let got = server.join().unwrap();
        assert_eq!(
            &got[..check.len()],
            &check[..],
            "{kind}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn connections_over_the_cap_are_refused_politely() {
    let a = HttpBackend::start("a");
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config_with(
        1,
        "http",
        listen,
        &[a.addr()],
        json!({"max_connections": 2}),
    ));
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(listen).unwrap())
        .collect();
    wait_status(&node, "two connections held", |st| {
        st["stats"]["active_connections"] == 2
    });
    let (status, body) = http_get(listen, "/").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("too many connections"), "{body}");
    assert!(
        node.status()["stats"]["refused_connections"]
            .as_u64()
            .unwrap()
            >= 1
    );
    drop(held);
    wait_status(&node, "connections released", |st| {
        st["stats"]["active_connections"] == 0
    });
    assert_eq!(http_get(listen, "/").unwrap().0, 200);
}

#[test]
fn stats_count_status_classes_and_latency() {
    let a = HttpBackend::start("a");
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &[a.addr()]));
    for path in ["/", "/", "/status/404", "/status/500"] {
        http_get(listen, path).unwrap();
    }
    let st = node.status()["stats"].clone();
    assert_eq!(st["responses"]["2xx"], 2, "{st}");
    assert_eq!(st["responses"]["4xx"], 1);
    assert_eq!(st["responses"]["5xx"], 1);
    assert_eq!(st["latency_ms"]["count"], 4);
    let (p50, p99) = (
        st["latency_ms"]["p50"].as_f64().unwrap(),
        st["latency_ms"]["p99"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{st}");
}

#[test]
fn a_hundred_config_changes_under_load_fail_no_request() {
    let backends: Vec<HttpBackend> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| HttpBackend::start(n))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(HttpBackend::addr).collect();
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &addrs[..2]));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                // Keep-alive connections, reopened if the node closes one.
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut conn) = TcpStream::connect(listen) else {
                        failed.fetch_add(1, Ordering::SeqCst);
                        continue;
                    };
                    conn.set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    for _ in 0..50 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let mut status = String::new();
                        let sent = write!(conn, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").is_ok();
                        if !sent
                            || reader.read_line(&mut status).is_err()
                            || !status.starts_with("HTTP/1.1 200")
                        {
                            failed.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        let mut len = 0;
                        loop {
                            let mut line = String::new();
                            reader.read_line(&mut line).unwrap();
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; len];
                        reader.read_exact(&mut body).unwrap();
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let algorithms = [
        "round_robin",
        "least_connections",
        "power_of_two",
        "consistent_hash",
    ];
    for version in 2..=101u64 {
        let i = version as usize;
        // Members come and go, weights change, the algorithm changes.
        let set: Vec<SocketAddr> = (0..2).map(|k| addrs[(i + k) % addrs.len()]).collect();
        let mut c = config_with(
            version,
            "http",
            listen,
            &set,
            json!({"algorithm": algorithms[i % 4]}),
        );
        c["backends"][0]["weight"] = json!(1 + i % 3);
        let (s, v) = node.put_config(&c);
        assert_eq!(s, 200, "{v}");
        let before = ok.load(Ordering::SeqCst);
        common::wait_for("traffic after a change", Duration::from_secs(10), || {
            (ok.load(Ordering::SeqCst) > before).then_some(())
        });
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "{} requests succeeded",
        ok.load(Ordering::SeqCst)
    );
    assert!(ok.load(Ordering::SeqCst) >= 100);
    assert_eq!(node.status()["config_version"], 101);
}

/// A backend that reads each request and closes the connection without answering.
fn hang_up_backend() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (seen2, stop2) = (seen.clone(), stop.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop2.load(Ordering::SeqCst) {
                return;
            }
            let Ok(conn) = conn else { continue };
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            // Read the request head, then drop the connection: a reset before any response byte.
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            seen2.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, seen, stop)
}

#[test]
fn a_hang_up_before_the_response_is_retried_for_get_not_for_post() {
    let live = HttpBackend::start("live");
    let (flaky, hits, stop) = hang_up_backend();
    let node = LbNode::start();
    let listen = free_addr();
    // Round robin starts at the flaky member; the health check interval is long.
    node.put_config(&config(1, "http", listen, &[flaky, live.addr()]));
    assert_eq!(
        http_get(listen, "/").unwrap(),
        (200, "live".to_string()),
        "GET retried on the other member"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the flaky member saw the GET first"
    );
    let (status, body) = http_request(listen, "POST", "/orders", "{}").unwrap();
    assert_eq!(
        status, 502,
        "a POST that reached a member is not sent again: {body}"
    );
    assert_eq!(live.hits(), 1, "only the GET reached the live member");
    stop.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(flaky);
}

/// `PUT /config` that must answer within `deadline`: lb-node applies a config
/// on the thread that also serves its admin API, so a config that stalls the
/// apply takes `/status` down with it.
fn put_config_within(node: &LbNode, config: &Value, deadline: Duration) -> (u16, Value) {
    let start = Instant::now();
    let resp = node
        .http
        .put(format!("http://{}/config", node.admin))
        .bearer_auth(&node.secret)
        .timeout(deadline)
        .json(config)
        .send()
        .unwrap_or_else(|e| panic!("PUT /config did not answer within {deadline:?}: {e}"));
    assert!(
        start.elapsed() < deadline,
        "PUT /config took {:?}",
        start.elapsed()
    );
    (resp.status().as_u16(), resp.json().unwrap())
}

#[test]
fn consistent_hash_with_every_member_at_weight_zero_answers_503_and_the_node_stays_up() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let node = LbNode::start();
    let deadline = Duration::from_secs(5);
    let drained = |version: u64, traffic: &str, listen: SocketAddr| {
        let mut c = config_with(
            version,
            traffic,
            listen,
            &[a.addr(), b.addr()],
            json!({"algorithm": "consistent_hash"}),
        );
        for m in c["backends"].as_array_mut().unwrap() {
            m["weight"] = json!(0);
        }
        c
    };
    // A valid config ("drain everything") that used to spin forever building
    // the Maglev table, on this node and on every node that replaced it.
    let listen = free_addr();
    let (s, v) = put_config_within(&node, &drained(1, "http", listen), deadline);
    assert_eq!(s, 200, "{v}");
    let st = node.status();
    assert_eq!(st["config_version"], 1, "{st}");
    for m in [a.addr(), b.addr()] {
        assert_eq!(member(&st, m)["state"], "draining", "{st}");
    }
    let (status, body) = http_get(listen, "/").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("weight 0"), "the reason is given: {body}");
    assert_eq!(a.hits() + b.hits(), 0, "no drained member got the request");

    // TCP has no way to say 503: the client's connection is closed.
    let tcp_listen = free_addr();
    let (s, v) = put_config_within(&node, &drained(2, "tcp", tcp_listen), deadline);
    assert_eq!(s, 200, "{v}");
    let mut conn = TcpStream::connect(tcp_listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let read = conn.read_to_end(&mut buf);
    assert!(
        matches!(&read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "closed by the node, not left open: {read:?}"
    );
    let st = node.status();
    for m in [a.addr(), b.addr()] {
        assert_eq!(member(&st, m)["requests"], 0, "never connected to: {st}");
    }

    // The node is still fully usable: weights back, traffic flows.
    let listen = free_addr();
    let (s, v) = put_config_within(
        &node,
        &config_with(
            3,
            "http",
            listen,
            &[a.addr(), b.addr()],
            json!({"algorithm": "consistent_hash"}),
        ),
        deadline,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(http_get(listen, "/").unwrap().0, 200);
    assert_eq!(node.status()["config_version"], 3);
}

//! lb-node's wake path with a real node, where the test plays lbd: it
//! reads `GET /events`, starts real backend processes on `Wake`, and pushes
//! them with `PUT /managed`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use common::node::{free_addr, wait_status, LbNode};
use common::wake::{
    get, header, managed_config, pool_stats, put_managed, Backend, EventStream, ECHO_SERVER,
    SLOW_SERVER,
};

const LONG: Duration = Duration::from_secs(30);

fn node_with(traffic: &str, queue: serde_json::Value) -> (LbNode, std::net::SocketAddr) {
    let node = LbNode::start();
    let listen = free_addr();
    let (code, body) = node.put_config(&managed_config(listen, traffic, queue));
    assert_eq!(code, 200, "{body}");
    (node, listen)
}

fn default_queue() -> serde_json::Value {
    json!({"max_requests": 1000, "max_wait_ms": 30000})
}

/// Waits until the node holds `n` requests for the default pool.
fn wait_queued(node: &LbNode, n: u64) {
    wait_status(node, &format!("{n} held"), |s| pool_stats(s)["queued"] == n);
}

#[test]
fn the_first_request_is_held_until_a_member_is_pushed_and_says_so() {
    let (node, listen) = node_with("http", default_queue());
    let events = EventStream::open(&node);
    let client = thread::spawn(move || get(listen, "/", LONG));
    let wake = events.next_kind("wake", LONG);
    assert_eq!(wake["pool"], "default");
    assert_eq!(wake["ready"], 0);
    assert_eq!(wake["queued"], 1, "{wake}");
    let backend = Backend::http_server(free_addr());
    let status = put_managed(&node, 3, &[backend.addr], 0, None);
    assert_eq!(status["managed_version"], 3);
    let (code, headers, _) = client.join().unwrap();
    assert_eq!(code, 200);
    let ms: u64 = header(&headers, "x-lbaas-cold-start")
        .expect("a cold-start header")
        .parse()
        .unwrap();
    let stats = pool_stats(&node.status());
    assert_eq!(stats["cold_starts"], 1, "{stats}");
    assert_eq!(stats["ready"], 1);
    assert_eq!(stats["last_cold_start_ms"], ms);
    // Awake now: the next request goes straight through, without the header.
    let (code, headers, _) = get(listen, "/", LONG);
    assert_eq!(code, 200);
    assert!(header(&headers, "x-lbaas-cold-start").is_none());
}

#[test]
fn fifty_concurrent_first_requests_are_served_by_one_start() {
    let (node, listen) = node_with("http", default_queue());
    let events = EventStream::open(&node);
    let clients: Vec<_> = (0..50)
        .map(|_| thread::spawn(move || get(listen, "/", LONG)))
        .collect();
    // Like lbd, the test starts one backend for the demand and pushes it.
    events.next_kind("wake", LONG);
    let backend = Backend::http_server(free_addr());
    wait_queued(&node, 50);
    put_managed(&node, 1, &[backend.addr], 0, None);
    for c in clients {
        let (code, headers, _) = c.join().unwrap();
        assert_eq!(code, 200);
        assert!(header(&headers, "x-lbaas-cold-start").is_some());
    }
    let stats = pool_stats(&node.status());
    assert_eq!(stats["cold_starts"], 50, "{stats}");
    assert_eq!(stats["queued"], 0);
    // The 50 arrivals asked for one backend, not fifty: they were one demand.
    let wakes = events.drain_kind("wake");
    assert!(wakes.len() < 50, "{} wakes", wakes.len());
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let (node, listen) = node_with("http", json!({"max_requests": 2, "max_wait_ms": 30000}));
    let held: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || get(listen, "/", LONG)))
        .collect();
    wait_queued(&node, 2);
    let (code, headers, _) = get(listen, "/", LONG);
    assert_eq!(code, 503);
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert_eq!(pool_stats(&node.status())["queue_full"], 1);
    // Release the two held ones with a failure, so nothing is left waiting.
    put_managed(&node, 1, &[], 1, Some("test over"));
    for h in held {
        assert_eq!(h.join().unwrap().0, 503);
    }
}

#[test]
fn a_request_held_past_max_wait_gets_504() {
    let (node, listen) = node_with("http", json!({"max_requests": 10, "max_wait_ms": 300}));
    let (code, _, _) = get(listen, "/", LONG);
    assert_eq!(code, 504);
    let stats = pool_stats(&node.status());
    assert_eq!(stats["wait_timeouts"], 1, "{stats}");
    assert_eq!(stats["queued"], 0);
}

#[test]
fn a_start_failure_fails_every_held_request_at_once() {
    let (node, listen) = node_with("http", default_queue());
    let held: Vec<_> = (0..5)
        .map(|_| {
            thread::spawn(move || {
                let r = get(listen, "/", LONG);
                (r, Instant::now())
            })
        })
        .collect();
    wait_queued(&node, 5);
    let pushed = Instant::now();
    put_managed(&node, 2, &[], 1, Some("exit status 1:\nTraceback: boom"));
    for h in held {
        let ((code, headers, _), answered) = h.join().unwrap();
        assert_eq!(code, 503);
        assert_eq!(
            header(&headers, "x-lbaas-wake-error"),
            Some("exit status 1: Traceback: boom")
        );
        assert!(
            answered.saturating_duration_since(pushed) < Duration::from_secs(1),
            "answered {:?} after the failure",
            answered - pushed
        );
    }
    assert_eq!(pool_stats(&node.status())["start_failures"], 5);
}

#[test]
fn a_slow_download_keeps_its_member_open_for_its_whole_length() {
    let (node, listen) = node_with("http", default_queue());
    let backend = Backend::python(SLOW_SERVER, free_addr());
    put_managed(&node, 1, &[backend.addr], 0, None);
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(LONG)).unwrap();
    write!(
        conn,
        "GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let member = |s: &serde_json::Value| s["stats"]["members"][0].clone();
    // Read the download in pieces; between them the member must count as open.
    let mut got = 0;
    let mut checks = 0;
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n;
        if got < 16 * 1024 && got > 1024 {
            let m = member(&node.status());
            assert!(m["open_connections"].as_u64() >= Some(1), "{m}");
            assert_eq!(m["idle_ms"], 0, "{m}");
            checks += 1;
        }
    }
    assert!(got >= 20 * 1024, "{got} bytes");
    assert!(checks >= 3, "checked only {checks} times");
    let after = wait_status(&node, "the download closed", |s| {
        member(s)["open_connections"] == 0
    });
    assert!(member(&after)["idle_ms"].is_u64(), "{after}");
}

#[test]
fn a_tcp_connection_is_held_unread_until_a_member_is_pushed() {
    let (node, listen) = node_with("tcp", default_queue());
    let events = EventStream::open(&node);
    let mut client = TcpStream::connect(listen).unwrap();
    client.set_read_timeout(Some(LONG)).unwrap();
    client.write_all(b"hello before the wake").unwrap();
    events.next_kind("wake", LONG);
    wait_queued(&node, 1);
    let backend = Backend::python(ECHO_SERVER, free_addr());
    put_managed(&node, 1, &[backend.addr], 0, None);
    let mut buf = [0u8; 21];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello before the wake");
    let stats = pool_stats(&node.status());
    assert_eq!(stats["cold_starts"], 1, "{stats}");
    let m = &node.status()["stats"]["members"][0];
    assert_eq!(m["open_connections"], 1, "the relay is open: {m}");
}

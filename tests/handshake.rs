//! Handshake limits on lbd's API and lb-node's admin API: a client that
//! never sends a request head is closed after the header timeout, an idle
//! keep-alive connection too, and past the connection cap new connections
//! get a 503 while the server answers again once the others are gone.
//! Raw sockets against the real binaries; every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::node::LbNode;
use common::{wait_for, Lbd};

/// Longest any single read here may block: a server that never closes fails
/// the test instead of hanging it.
const READ_BOUND: Duration = Duration::from_secs(10);

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(READ_BOUND)).unwrap();
    s
}

/// Reads until the server closes; what it sent, and how long that took.
/// Panics if the server keeps the connection open past `READ_BOUND`.
fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    common::backends::read_until_closed(s, READ_BOUND)
}

/// A silent client is closed after about `timeout`, with nothing sent.
fn assert_silent_client_closed(addr: SocketAddr, timeout: Duration) {
    let mut s = connect(addr);
    let (got, took) = read_until_closed(&mut s);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(
        took >= timeout.mul_f32(0.8),
        "closed after {took:?}, before the header timeout {timeout:?}"
    );
}

/// After one answered request, the idle keep-alive connection is closed too.
fn assert_idle_keep_alive_closed(addr: SocketAddr, path: &str, timeout: Duration) {
    let mut s = connect(addr);
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert!(head.starts_with(b"HTTP/1.1 "), "{head:?}");
    let (_, took) = read_until_closed(&mut s);
    assert!(
        took >= timeout.mul_f32(0.5),
        "closed after {took:?}, well before the timeout {timeout:?}"
    );
}

/// With `cap` silent clients open, one more gets a 503 and is closed; once
/// the silent ones are gone, `ok` answers again.
fn assert_cap(addr: SocketAddr, cap: usize, path: &str, ok: impl Fn() -> bool) {
    // The server accepts in order, so these hold every permit.
    let silent: Vec<TcpStream> = (0..cap).map(|_| connect(addr)).collect();
    let mut extra = connect(addr);
    write!(extra, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (got, _) = read_until_closed(&mut extra);
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 503"), "over the cap got {got:?}");
    drop(silent);
    // Each permit comes back when the server sees its client's EOF.
    wait_for("the server to answer again", Duration::from_secs(5), || {
        ok().then_some(())
    });
}

#[test]
fn lbd_api_closes_silent_and_idle_clients() {
    let timeout = Duration::from_millis(400);
    let lbd = Lbd::start_with(&["--api-header-timeout-ms", "400"]);
    assert_silent_client_closed(lbd.api, timeout);
    assert_idle_keep_alive_closed(lbd.api, "/healthz", timeout);
    // Still serving.
    let resp = lbd
        .http
        .get(format!("{}/healthz", lbd.url()))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn lbd_api_refuses_past_the_connection_cap_and_stops_cleanly() {
    let mut lbd = Lbd::start_with(&["--api-max-connections", "3"]);
    let healthz = || {
        // A fresh client each time: a pooled connection would not test admission.
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        client
            .get(format!("{}/healthz", lbd.url()))
            .send()
            .is_ok_and(|r| r.status() == 200)
    };
    assert_cap(lbd.api, 3, "/healthz", healthz);
    // SIGTERM with a silent client connected: it is closed at once and lbd exits cleanly.
    let _silent = connect(lbd.api);
    let start = Instant::now();
    let status = lbd.stop();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn lb_node_admin_closes_silent_and_idle_clients() {
    let timeout = Duration::from_millis(400);
    let node = LbNode::start_with(&["--admin-header-timeout-ms", "400"]);
    assert_silent_client_closed(node.admin, timeout);
    assert_idle_keep_alive_closed(node.admin, "/status", timeout);
    assert_eq!(node.status()["config_version"], serde_json::Value::Null);
}

#[test]
fn lb_node_admin_refuses_past_the_connection_cap_and_drains() {
    let mut node = LbNode::start_with(&["--admin-max-connections", "2"]);
    let status_ok = || {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        client
            .get(format!("http://{}/status", node.admin))
            .bearer_auth(&node.secret)
            .send()
            .is_ok_and(|r| r.status() == 200)
    };
    assert_cap(node.admin, 2, "/status", status_ok);
    let _silent = connect(node.admin);
    let start = Instant::now();
    let status = node.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

//! What lb-node does with clients that misbehave at the connection level,
//! against the real binary with raw sockets: oversized request heads, a
//! missing Host, connections that never speak or go quiet, and the
//! connection cap with upgraded tunnels.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::backends::{http_get, read_until_closed, EchoBackend, HttpBackend};
use common::node::{config_with, free_addr, wait_status, LbNode};
use serde_json::{json, Value};

/// An HTTP node in front of `backend` with `extra` merged into its config.
fn http_node(backend: SocketAddr, extra: Value) -> (LbNode, SocketAddr) {
    let node = LbNode::start();
    let listen = free_addr();
    let (s, v) = node.put_config(&config_with(1, "http", listen, &[backend], extra));
    assert_eq!(s, 200, "{v}");
    (node, listen)
}

/// Sends `request` on a fresh connection (from a thread, ignoring write
/// errors: the node may answer and close before it has read everything) and
/// returns everything the node sent back before closing.
fn exchange(listen: SocketAddr, request: Vec<u8>) -> String {
    let mut conn = TcpStream::connect(listen).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    // A reset after the answer counts as the close (the node closed with
    // request bytes unread).
    let (got, _) = read_until_closed(&mut conn, Duration::from_secs(10));
    sending.join().unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

fn get_with_header(header_bytes: usize) -> Vec<u8> {
    let mut req = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', header_bytes));
    req.extend_from_slice(b"\r\n\r\n");
    req
}

#[test]
fn a_100kb_header_gets_431_and_never_reaches_the_backend() {
    let a = HttpBackend::start("a");
    let (_node, listen) = http_node(a.addr(), json!({}));
    let answer = exchange(listen, get_with_header(100 * 1024));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert_eq!(a.hits(), 0, "the backend saw the request");
    // A large but allowed head still passes.
    let answer = exchange(listen, get_with_header(32 * 1024));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(a.hits(), 1);
}

#[test]
fn max_header_bytes_is_configurable() {
    let a = HttpBackend::start("a");
    let (_node, listen) = http_node(a.addr(), json!({"max_header_bytes": 16384}));
    let answer = exchange(listen, get_with_header(20 * 1024));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let answer = exchange(listen, get_with_header(8 * 1024));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(a.hits(), 1);
}

#[test]
fn an_http11_request_without_host_gets_400() {
    let a = HttpBackend::start("a");
    let (_node, listen) = http_node(a.addr(), json!({}));
    let answer = exchange(
        listen,
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(answer.contains("Host"), "{answer:?}");
    let answer = exchange(
        listen,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n".to_vec(),
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(a.hits(), 0, "the backend saw a request without Host");
    // HTTP/1.0 has no Host requirement, and a normal request passes.
    let answer = exchange(listen, b"GET / HTTP/1.0\r\n\r\n".to_vec());
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer:?}");
    assert_eq!(http_get(listen, "/").unwrap(), (200, "a".to_string()));
}
/// Reads until the node closes the connection; how long that took. Panics
/// if it is still open after `limit` (the test's bound, not the node's).
/// How long until the node closes `conn` (at most `limit`).
fn closed_within(conn: &mut TcpStream, limit: Duration) -> Duration {
    read_until_closed(conn, limit).1
}

/// Short deadlines, so the tests take well under a second each.
fn quick(handshake_ms: u32, client_idle_ms: u32) -> Value {
    json!({"timeouts": {"connect_ms": 1000, "first_byte_ms": 5000, "backend_idle_ms": 5000,
        "client_idle_ms": client_idle_ms, "handshake_ms": handshake_ms}})
}

#[test]
fn a_client_that_sends_nothing_is_closed_after_handshake_ms() {
    let a = HttpBackend::start("a");
    let (node, listen) = http_node(a.addr(), quick(300, 60_000));
    let mut conn = TcpStream::connect(listen).unwrap();
    wait_status(&node, "the silent client is counted", |st| {
        st["stats"]["active_connections"] == 1
    });
    let took = closed_within(&mut conn, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(200),
        "closed too early: {took:?}"
    );
    wait_status(&node, "its slot is free again", |st| {
        st["stats"]["active_connections"] == 0
    });
}

#[test]
fn half_an_http2_preface_is_closed_after_handshake_ms() {
    let a = HttpBackend::start("a");
    let (_node, listen) = http_node(a.addr(), quick(300, 60_000));
    let mut conn = TcpStream::connect(listen).unwrap();
    // 16 of the preface's 24 bytes: the auto builder waits for the rest.
    conn.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let took = closed_within(&mut conn, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(200),
        "closed too early: {took:?}"
    );
    // A half-sent HTTP/1 head likewise (hyper's own timer would allow client_idle_ms).
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    closed_within(&mut conn, Duration::from_secs(5));
    assert_eq!(http_get(listen, "/").unwrap(), (200, "a".to_string()));
}

#[test]
fn a_silent_tcp_relay_is_closed_after_client_idle_ms() {
    let echo = EchoBackend::start();
    let node = LbNode::start();
    let listen = free_addr();
    let (s, v) = node.put_config(&config_with(
        1,
        "tcp",
        listen,
        &[echo.addr()],
        quick(60_000, 300),
    ));
    assert_eq!(s, 200, "{v}");
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    let took = closed_within(&mut conn, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(200),
        "closed too early: {took:?}"
    );
    wait_status(&node, "its slot is free again", |st| {
        st["stats"]["active_connections"] == 0
    });
}

#[test]
fn an_idle_http11_keep_alive_connection_is_closed_after_client_idle_ms() {
    let a = HttpBackend::start("a");
    let (node, listen) = http_node(a.addr(), quick(60_000, 300));
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
    // The rest of the head, then the one-byte body ("a").
    while line != "\r\n" {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    let mut body = [0u8; 1];
    reader.read_exact(&mut body).unwrap();
    let took = closed_within(&mut conn, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(200),
        "closed too early: {took:?}"
    );
    wait_status(&node, "its slot is free again", |st| {
        st["stats"]["active_connections"] == 0
    });
}

/// A backend that switches any `Upgrade` request to an echo of raw bytes
/// and answers anything else (health checks) with an empty 200.
fn upgrade_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut upgrade = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    upgrade |= line.to_ascii_lowercase().starts_with("upgrade:");
                    if line == "\r\n" {
                        break;
                    }
                }
                if !upgrade {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                );
                let mut buf = [0u8; 1024];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A WebSocket tunnel through the node, checked to echo.
fn open_tunnel(listen: SocketAddr) -> TcpStream {
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(
        b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    conn.write_all(b"hello").unwrap();
    let mut echo = [0u8; 5];
    conn.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello");
    conn
}

#[test]
fn an_idle_websocket_tunnel_is_closed_after_client_idle_ms() {
    let backend = upgrade_backend();
    let (node, listen) = http_node(backend, quick(5_000, 300));
    let mut conn = open_tunnel(listen);
    let took = closed_within(&mut conn, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(200),
        "closed too early: {took:?}"
    );
    wait_status(&node, "its slot is free again", |st| {
        st["stats"]["active_connections"] == 0
    });
}

#[test]
fn upgraded_tunnels_count_against_max_connections() {
    let backend = upgrade_backend();
    let (node, listen) = http_node(backend, json!({"max_connections": 2}));
    let tunnels: Vec<TcpStream> = (0..2).map(|_| open_tunnel(listen)).collect();
    wait_status(&node, "two tunnels counted", |st| {
        st["stats"]["active_connections"] == 2
    });
    let (status, body) = http_get(listen, "/").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many connections"), "{body}");
    drop(tunnels);
    wait_status(&node, "tunnels released", |st| {
        st["stats"]["active_connections"] == 0
    });
    assert_eq!(http_get(listen, "/").unwrap().0, 200);
}

/// Raises this test process's soft `RLIMIT_NOFILE` to its hard limit (the
/// clients and the echo backend need two fds a connection); the soft limit after.
#[allow(unsafe_code)]
fn raise_own_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

#[test]
fn two_thousand_concurrent_tcp_connections_are_all_served() {
    const N: usize = 2_000;
    let limit = raise_own_nofile();
    // lb-node needs up to 6 fds a relayed connection: 12,000 plus its own.
    if !common::require(
        &format!("a hard RLIMIT_NOFILE of 13000 (it is {limit})"),
        limit >= 13_000,
    ) {
        return;
    }
    let echo = EchoBackend::start();
    // Started with the usual default soft limit: lb-node must raise it itself.
    let node = LbNode::start_with_nofile("-Sn", 1024);
    let listen = free_addr();
    let (s, v) = node.put_config(&config_with(1, "tcp", listen, &[echo.addr()], json!({})));
    assert_eq!(s, 200, "{v}");
    let mut conns: Vec<TcpStream> = (0..N)
        .map(|i| {
            let c = TcpStream::connect(listen).unwrap_or_else(|e| panic!("connect {i}: {e}"));
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c
        })
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!("{i:05}").as_bytes()).unwrap();
    }
    let mut served = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        let mut back = [0u8; 5];
        if c.read_exact(&mut back).is_ok() && back == format!("{i:05}").as_bytes() {
            served += 1;
        }
    }
    assert_eq!(served, N, "connections served");
    let st = node.status();
    assert_eq!(st["stats"]["active_connections"], N, "{st}");
}

#[test]
fn max_connections_is_capped_to_the_fd_limit() {
    let a = HttpBackend::start("a");
    // A hard limit of 400 fds: (400 - 64 reserved) / 6 = 56 connections,
    // though the config asks for the default 10,000.
    let node = LbNode::start_with_nofile("-n", 400);
    let listen = free_addr();
    let (s, v) = node.put_config(&config_with(1, "http", listen, &[a.addr()], json!({})));
    assert_eq!(s, 200, "{v}");
    let held: Vec<TcpStream> = (0..56)
        .map(|_| TcpStream::connect(listen).unwrap())
        .collect();
    wait_status(&node, "56 connections held", |st| {
        st["stats"]["active_connections"] == 56
    });
    let (status, body) = http_get(listen, "/").unwrap();
    assert_eq!(status, 503, "refused politely, not by EMFILE: {body}");
    assert!(body.contains("too many connections"), "{body}");
    drop(held);
}

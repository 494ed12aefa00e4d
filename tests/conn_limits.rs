//! What lb-node does with clients that misbehave at the connection level,
//! against the real binary with raw sockets: oversized request heads, a
//! missing Host, connections that never speak or go quiet, and the
//! connection cap with upgraded tunnels.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::backends::{http_get, HttpBackend};
use common::node::{config_with, free_addr, LbNode};
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
    let conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let mut got = Vec::new();
    let mut conn = conn;
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset after the answer (the node closed with request bytes unread).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no answer from the node: {e}; got {got:?}"),
        }
    }
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

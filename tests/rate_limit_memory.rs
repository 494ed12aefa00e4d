//! The rate-limit stage's memory stays bounded under a flood of distinct
//! keys (issue 15 §3 "Memory"). Its own test binary, because it measures
//! the resident set of whole processes; the two tests take turns.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

use common::backends::HttpBackend;
use common::node::{config_with, free_addr, LbNode};
use http::{HeaderMap, HeaderValue, Method};
use lbaas::dataplane::rate_limit::{LimitOutcome, LimitRequest, RateLimitStage};
use lbaas::dataplane::stats::PolicyCounters;
use lbaas::model::policy::{Policy, RateLimitSpec};
use serde_json::json;

/// Each test measures a process's RSS; one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const MIB: u64 = 1024 * 1024;

/// `VmRSS` of a process, in bytes.
fn rss(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

fn limit_policy() -> Policy {
    let spec: RateLimitSpec = serde_json::from_value(json!(
        {"name": "per-user", "key": "header:X-User", "period": 60, "threshold": 10}
    ))
    .unwrap();
    Policy {
        rate_limits: vec![spec.validate().unwrap()],
        ..Policy::default()
    }
}

/// A million distinct keys through one limit keep the process's RSS growth
/// under 24 MiB. The limit keeps at most 100,000 keys (about 3.2 MB of
/// entries, 5 MB with the hash tables' slack); kept unbounded, a million
/// keys would need a table of 2^21 slots of 32 bytes and more, 64 MiB.
#[test]
fn a_million_distinct_keys_keep_rss_bounded() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const BOUND: u64 = 24 * MIB;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let stage = RateLimitStage::new(&limit_policy(), 1, None, None);
    let counters = PolicyCounters::default();
    let before = rss("self");
    let method = Method::GET;
    let mut headers = HeaderMap::new();
    runtime.block_on(async {
        for i in 0u32..1_000_000 {
            headers.insert("x-user", HeaderValue::from(i));
            let req = LimitRequest {
                method: &method,
                path: "/",
                headers: &headers,
                client_ip: "127.0.0.1".parse().unwrap(),
                auth_token: None,
                body_bytes: None,
            };
            let outcome = stage.check(&req, &counters).await;
            assert!(matches!(outcome, LimitOutcome::Pass { .. }), "key {i}");
        }
    });
    let grown = rss("self").saturating_sub(before);
    eprintln!("RSS grew by {} KiB for 1,000,000 keys", grown / 1024);
    assert!(grown < BOUND, "RSS grew by {grown} bytes, bound {BOUND}");
}

/// The PID of the one lb-node this test process started.
fn our_lb_node() -> String {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let parent = status.lines().find_map(|l| l.strip_prefix("PPid:"));
        if parent.map(str::trim) == Some(me.as_str()) && common::is_lb_node(pid.parse().unwrap()) {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "lb-node children: {found:?}");
    found.remove(0)
}

/// 20,000 distinct `header:` keys through a real lb-node keep its RSS
/// growth under 16 MiB: their states are a few hundred KB; the rest is the
/// margin for allocator and connection buffers.
#[test]
fn an_lb_node_flooded_with_distinct_keys_stays_bounded() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const BOUND: u64 = 16 * MIB;
    let backend = HttpBackend::start("b");
    let node = LbNode::start();
    let listen = free_addr();
    let limits = json!({"policy": {"rate_limits": limit_policy().rate_limits}});
    let (s, v) = node.put_config(&config_with(1, "http", listen, &[backend.addr()], limits));
    assert_eq!(s, 200, "{v}");
    let pid = our_lb_node();
    // Warm up the connection paths, so the measurement is of the keys.
    let mut conn = KeepAlive::open(listen);
    for i in 0..500 {
        assert_eq!(conn.get(&format!("warm-{i}")), 200);
    }
    let before = rss(&pid);
    for i in 0..20_000 {
        assert_eq!(conn.get(&format!("user-{i}")), 200, "key {i}");
    }
    let grown = rss(&pid).saturating_sub(before);
    eprintln!("lb-node RSS grew by {} KiB for 20,000 keys", grown / 1024);
    assert!(
        grown < BOUND,
        "lb-node RSS grew by {grown} bytes, bound {BOUND}"
    );
    assert_eq!(node.status()["stats"]["policy"]["rate_limited"], 0);
}

/// One keep-alive HTTP/1.1 connection (the backend answers with a length).
struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    fn open(addr: std::net::SocketAddr) -> KeepAlive {
        let writer = TcpStream::connect(addr).unwrap();
        writer.set_nodelay(true).unwrap();
        writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        KeepAlive {
            reader: BufReader::new(writer.try_clone().unwrap()),
            writer,
        }
    }

    /// One GET as user `user`; the status.
    fn get(&mut self, user: &str) -> u16 {
        // One write: split into several, Nagle would hold back the rest
        // for a delayed ACK (40 ms a request).
        let head = format!("GET / HTTP/1.1\r\nHost: test\r\nX-User: {user}\r\n\r\n");
        self.writer.write_all(head.as_bytes()).unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        std::io::Read::read_exact(&mut self.reader, &mut body).unwrap();
        status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

//! A node's log stays bounded: repeated warnings (a backend that refuses
//! every connection) are rate-limited, and the log file rotates at its size
//! keeping two old files. Real lbd, real lb-node, real TCP clients.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{wait_for, Lbd};
use serde_json::json;

/// A port on 127.0.0.1 that nothing listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn log_files(lbd: &Lbd, node_id: u64) -> Vec<PathBuf> {
    let base = lbd
        .state
        .0
        .join("nodes")
        .join(format!("node-{node_id}.log"));
    let mut files = vec![base.clone()];
    for n in 1..=3 {
        files.push(PathBuf::from(format!("{}.{n}", base.display())));
    }
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// One TCP client through the node; the node closes it (no backend).
fn connect_once(node: SocketAddr) {
    if let Ok(mut s) = TcpStream::connect_timeout(&node, Duration::from_secs(2)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.read(&mut [0u8; 16]);
    }
}

#[test]
fn repeated_warnings_are_rate_limited_and_the_log_rotates() {
    const MAX: u64 = 600;
    let lbd = Lbd::start_with(&["--node-log-max-bytes", &MAX.to_string()]);
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "logs"}}));
    assert_eq!(s, 200, "{v}");
    let dead = closed_port();
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "tcp", "project": "logs", "traffic_type": "tcp", "port": 8093,
        "backend": {"entities": [dead.to_string()]}}}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("logs", "tcp");
    let node_id = info["nodes"][0]["id"].as_u64().unwrap();
    let node: SocketAddr = format!("{}:8093", info["nodes"][0]["address"].as_str().unwrap())
        .parse()
        .unwrap();
    let files = log_files(&lbd, node_id);

    // A burst of 300 connections, each of which fails to reach the backend.
    for _ in 0..300 {
        connect_once(node);
    }
    let all: String = files.iter().map(|f| read(f)).collect();
    let connect_lines = all
        .lines()
        .filter(|l| l.contains(&format!("connect {dead}")))
        .count();
    assert!(connect_lines >= 1, "the failure is logged: {all}");
    assert!(
        connect_lines <= 20,
        "{connect_lines} lines for 300 identical failures: not rate-limited"
    );

    // Keep failing until the log has rotated twice over: it never keeps more
    // than two old files, and none grows past its size by more than a line.
    wait_for("the log rotated twice", Duration::from_secs(60), || {
        connect_once(node);
        files[2].exists().then_some(())
    });
    for _ in 0..2 {
        let before = read(&files[2]);
        wait_for("another rotation", Duration::from_secs(60), || {
            connect_once(node);
            (read(&files[2]) != before).then_some(())
        });
    }
    assert!(!files[3].exists(), "a third old file was kept");
    for f in &files[..3] {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(size <= MAX + 300, "{} is {size} bytes", f.display());
    }
    assert!(
        files.iter().any(|f| read(f).contains("left_out=")),
        "the next line says how many were left out"
    );
}

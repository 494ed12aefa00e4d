//! Helpers for the L7 routing tests: a policy written as a client writes it
//! (validated by the library, as lbd does), a raw HTTP/1.1 client that sends
//! any header and reads the whole answer, and `wrk` as a child process
//! that is killed if the test fails first.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use lbaas::model::policy::{PolicySpec, SecretHasher};
use lbaas::model::TrafficType;

/// The routing tests carry no credentials: nothing needs hashing.
struct NoSecrets;

impl SecretHasher for NoSecrets {
    fn hash(&self, s: &str) -> String {
        s.to_string()
    }
}

/// The `policy` of a `NodeConfig`, from a policy as a client writes it
/// (backends on `port` unless they name one).
pub fn policy(spec: Value) -> Value {
    let spec: PolicySpec = serde_json::from_value(spec).expect("a policy spec");
    let policy = spec
        .validate(TrafficType::Http, 80, &NoSecrets)
        .expect("a valid policy");
    serde_json::to_value(policy).unwrap()
}

/// One answer, as read off the socket.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection, `Host: test` unless
/// `headers` names one; the answer read until the node closes.
pub fn send(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    let mut conn = TcpStream::connect(addr).expect("connect to lb-node");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("Host: test\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).expect("read the answer");
    let (status, headers, body) = super::backends::parse_response(&String::from_utf8_lossy(&raw));
    Reply {
        status,
        headers,
        body,
    }
}

/// A plain GET with extra headers.
pub fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, "GET", target, headers)
}

/// `wrk` running against a URL; killed (by its PID) on drop.
pub struct Wrk {
    child: Option<Child>,
}

impl Wrk {
    pub fn start(args: &[&str], url: &str) -> Wrk {
        let child = Command::new("wrk")
            .args(args)
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wrk is installed (.ci/run installs it)");
        Wrk { child: Some(child) }
    }

    /// Whether wrk is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits for wrk to finish; its report (stdout and stderr).
    pub fn finish(mut self) -> String {
        let out = self
            .child
            .take()
            .unwrap()
            .wait_with_output()
            .expect("wrk ran");
        assert!(out.status.success(), "wrk failed: {out:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The request count of a wrk report ("N requests in ...").
pub fn wrk_requests(report: &str) -> u64 {
    report
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"))
}

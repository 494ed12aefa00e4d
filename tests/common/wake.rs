//! The test plays lbd for a real lb-node's managed pools: it reads the
//! node's `GET /events`, starts real backend processes, and pushes their
//! members with `PUT /managed`. Every process is killed (by its PID) on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

use super::node::{config_with, LbNode};

/// `GET /events` of a node, read on a thread; each NDJSON line arrives on
/// `events`. Dropping it closes the stream.
pub struct EventStream {
    conn: TcpStream,
    pub events: mpsc::Receiver<Value>,
}

impl EventStream {
    pub fn open(node: &LbNode) -> EventStream {
        let mut conn = TcpStream::connect(node.admin).unwrap();
        write!(
            conn,
            "GET /events HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {}\r\n\r\n",
            node.secret
        )
        .unwrap();
        let reader = conn.try_clone().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            // Chunked NDJSON: each event is one chunk of one line; the
            // chunk-size lines and the head do not start with '{'.
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if line.starts_with('{') {
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let stream = EventStream { conn, events };
        let hello = stream.next_kind("hello", Duration::from_secs(10));
        assert_eq!(hello["node_id"], "7", "{hello}");
        stream
    }

    /// The next event of `kind` (others are skipped), or a panic after `timeout`.
    pub fn next_kind(&self, kind: &str, timeout: Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if v["kind"] == kind => return v,
                Ok(_) => continue,
                Err(e) => panic!("no {kind} event within {timeout:?}: {e}"),
            }
        }
    }

    /// Events of `kind` that arrived so far (without waiting).
    pub fn drain_kind(&self, kind: &str) -> Vec<Value> {
        self.events
            .try_iter()
            .filter(|v| v["kind"] == kind)
            .collect()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.conn.shutdown(Shutdown::Both);
    }
}

/// A backend process the test started for a Wake, killed on drop.
pub struct Backend {
    child: Child,
    pub addr: SocketAddr,
}

impl Backend {
    /// `python3 -c <script> <port>`, listening on 127.0.0.1:port; returns
    /// once the port accepts connections.
    pub fn python(script: &str, addr: SocketAddr) -> Backend {
        let child = Command::new("python3")
            .args(["-u", "-c", script, &addr.port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let backend = Backend { child, addr };
        super::wait_for("the backend's port", Duration::from_secs(20), || {
            TcpStream::connect(addr).ok()
        });
        backend
    }

    /// `python3 -m http.server` on `addr`.
    pub fn http_server(addr: SocketAddr) -> Backend {
        Backend::python(HTTP_SERVER, addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stock http.server (threaded), from a script so the port is argv[1].
pub const HTTP_SERVER: &str = r#"
import sys, http.server
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"#;

/// An HTTP server whose `/slow` sends 20 chunks of 1 KiB, one each
/// `SLOW_CHUNK_MS`, and `/` a short 200.
pub const SLOW_SERVER: &str = r#"
import sys, time, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        n = 20 if self.path == "/slow" else 1
        self.send_response(200)
        self.send_header("Content-Length", str(1024 * n))
        self.end_headers()
        for i in range(n):
            self.wfile.write(b"x" * 1024)
            self.wfile.flush()
            if n > 1:
                time.sleep(0.15)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// A TCP echo server.
pub const ECHO_SERVER: &str = r#"
import sys, socketserver
class H(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                break
            self.request.sendall(data)
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// A node config whose default pool is managed and has no members.
pub fn managed_config(listen: SocketAddr, traffic: &str, queue: Value) -> Value {
    config_with(
        1,
        traffic,
        listen,
        &[],
        json!({
            "health_check": {"protocol": "TCP", "port": 0,
                "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}},
            "managed": {"default": {"queue": queue, "target_in_flight": 10, "max": 2}}
        }),
    )
}

/// `PUT /managed` with the default pool's state; the node's answer.
pub fn put_managed(
    node: &LbNode,
    version: u64,
    members: &[SocketAddr],
    failures: u64,
    last_failure: Option<&str>,
) -> Value {
    let mut target = json!({
        "pool": "default",
        "members": members.iter().map(|m| json!({"address": m.to_string(), "weight": 1})).collect::<Vec<_>>(),
        "starting": 0,
        "failures": failures,
    });
    if let Some(reason) = last_failure {
        target["last_failure"] = json!(reason);
    }
    let resp = node
        .http
        .put(format!("http://{}/managed", node.admin))
        .bearer_auth(&node.secret)
        .json(&json!({"version": version, "targets": [target]}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().unwrap()
}

/// The default pool's `ManagedPoolStats` in `/status`.
pub fn pool_stats(status: &Value) -> Value {
    status["stats"]["managed"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["pool"] == "default"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// One GET on a fresh connection: status, headers and body.
pub fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::Read;
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(timeout)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut bytes = Vec::new();
    let _ = conn.read_to_end(&mut bytes);
    super::backends::parse_response(&String::from_utf8_lossy(&bytes))
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

//! Helpers for managed-backend tests: a real backend script (python), the
//! backend processes of an lbd found by their environment marker, a guard
//! that ends them, and raw HTTP with headers.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{signal, Lbd, TempDir};

/// A tiny HTTP backend: prints `listening` once bound; `GET /sleep/<s>`
/// answers after s seconds, `GET /slow/<n>` sends n bytes one a second;
/// every answer names the pid. With `DELAY` set it waits that many seconds
/// before binding. (No braces: lbd fills `{...}` placeholders in commands.)
const BACKEND_PY: &str = r#"
import os, sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        parts = self.path.split("/")
        if len(parts) > 2 and parts[1] == "slow":
            n = int(parts[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            for _ in range(n):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(1)
            return
        if len(parts) > 2 and parts[1] == "sleep":
            time.sleep(float(parts[2]))
        body = ("pid %d\n" % os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

time.sleep(float(os.environ.get("DELAY", "0")))
server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("listening on %s:%s" % (sys.argv[1], sys.argv[2]), flush=True)
server.serve_forever()
"#;

/// The backend script in a temp dir (removed on drop).
pub struct Script {
    _dir: TempDir,
    pub path: PathBuf,
}

impl Script {
    pub fn write() -> Script {
        let dir = TempDir::new("managed-script");
        let path = dir.0.join("backend.py");
        fs::write(&path, BACKEND_PY).unwrap();
        Script { _dir: dir, path }
    }

    /// The `process.command` running this script.
    pub fn command(&self) -> Value {
        json!([
            "python3",
            self.path.to_str().unwrap(),
            "{address}",
            "{port}"
        ])
    }
}

/// The value of lbd's backend marker for this lbd (its backends dir).
fn owner(lbd: &Lbd) -> String {
    fs::canonicalize(lbd.state.0.join("backends"))
        .unwrap_or_else(|_| lbd.state.0.join("backends"))
        .display()
        .to_string()
}

/// PIDs of the live backend processes this lbd started (found by scanning
/// /proc for the marker, so a process without a pid file is found too).
/// Only group leaders (the backend itself, not its children).
pub fn backend_pids(lbd: &Lbd) -> Vec<u32> {
    pids_with_owner(&owner(lbd))
}

fn pids_with_owner(owner: &str) -> Vec<u32> {
    let want = format!("LBAAS_BACKEND_OWNER={owner}");
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|b| *b == 0).any(|v| v == want.as_bytes()) && !is_zombie(*pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

pub fn alive(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok() && !is_zombie(pid)
}

/// Ends every backend process of an lbd when dropped (the test's own
/// cleanup, whatever lbd did), by PID.
pub struct Reaper(String);

impl Reaper {
    pub fn new(lbd: &Lbd) -> Reaper {
        Reaper(owner(lbd))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in pids_with_owner(&self.0) {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// When a process started, as unix seconds (from /proc/<pid>/stat and btime).
pub fn started_at(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let ticks: f64 = rest.split_whitespace().nth(19).unwrap().parse().unwrap();
    let btime: f64 = fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    #[allow(unsafe_code)]
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    btime + ticks / hz
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One GET on a fresh connection: (status, headers, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    super::backends::parse_response(&text)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Creates project `demo` and an HTTP instance whose default pool is `managed`;
/// returns the address of its (first) node's listener.
pub fn managed_instance(lbd: &Lbd, name: &str, managed: Value) -> SocketAddr {
    http_instance(lbd, name, json!({"managed": managed}))
}

/// Creates project `demo` (unless it is there) and an HTTP instance on port
/// 8080 with `backend`; returns the address of its (first) node's listener.
pub fn http_instance(lbd: &Lbd, name: &str, backend: Value) -> SocketAddr {
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert!(s == 200 || v.to_string().contains("exists"), "{v}");
    let info = json!({"name": name, "project": "demo", "traffic_type": "http", "port": 8080,
                      "backend": backend});
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": info}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("demo", name);
    let address = info["nodes"][0]["address"]
        .as_str()
        .expect("a node address");
    format!("{address}:8080").parse().unwrap()
}

/// The instance's managed backends as `info instance` shows them.
pub fn backends(lbd: &Lbd, name: &str) -> Vec<Value> {
    lbd.instance("demo", name)["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The instance's events of `kind` (newest first).
pub fn events_of(lbd: &Lbd, name: &str, kind: &str) -> Vec<String> {
    lbd.instance("demo", name)["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == kind)
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect()
}

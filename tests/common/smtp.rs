//! For the SMTP tests: an HTTP backend that records every POST it gets
//! (path, headers, the exact body bytes) and answers with a status the test
//! sets; an smtp instance made through lbd; Python's smtplib as the client
//! (`tests/fixtures/smtp_client.py`) and a raw SMTP connection.
//! lb-node's health checks (GET) get 200 and are not recorded. Dropped, it
//! closes its listener and every open connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Lbd, TempDir};

/// One delivery as the backend got it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub method: String,
    pub path: String,
    /// Names lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Delivery>>,
    arrived: Condvar,
    status: AtomicU16,
    stop: AtomicBool,
    /// Open connections, shut down on drop: a dropped sink is a backend
    /// that is gone, kept-alive connections included.
    conns: Mutex<Vec<TcpStream>>,
}

pub struct MailSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl MailSink {
    pub fn start() -> MailSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        shared.status.store(200, Ordering::SeqCst);
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(c) = conn.try_clone() {
                    s.conns.lock().unwrap().push(c);
                }
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        MailSink {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The status POSTs get from now on.
    pub fn answer(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Waits (on the backend's own signal) until `n` deliveries arrived.
    pub fn wait_for(&self, n: usize) -> Vec<Delivery> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = self.shared.seen.lock().unwrap();
        while seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{} deliveries, wanted {n}", seen.len());
            seen = self.shared.arrived.wait_timeout(seen, left).unwrap().0;
        }
        seen.clone()
    }
}

impl Drop for MailSink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn serve(conn: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    length = v.trim().parse().unwrap_or(0);
                }
                headers.push((k, v.trim().to_string()));
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = if method == "POST" {
            let status = shared.status.load(Ordering::SeqCst);
            shared.seen.lock().unwrap().push(Delivery {
                method,
                path,
                headers,
                body,
            });
            shared.arrived.notify_all();
            status
        } else {
            200
        };
        let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok");
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

pub const PORT: u16 = 2525;

/// A message with a line holding a single `.` and one starting with one,
/// CRLF line ends: what the backend must get byte for byte.
pub const MESSAGE: &[u8] = b"From: ann@sender.test\r\nTo: bob@rcpt.test\r\nSubject: dots\r\n\r\nfirst line\r\n.\r\n..two dots\r\n.leading dot\r\nlast line\r\n";

pub fn python() -> bool {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    super::require("python3", ok)
}

/// Creates project `demo` (once) and smtp instance `name` with `extra`
/// fields; returns its node's listener.
pub fn smtp_instance(lbd: &Lbd, name: &str, backend: SocketAddr, extra: Value) -> SocketAddr {
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert!(s == 200 || v.to_string().contains("exists"), "{v}");
    let mut info = json!({"name": name, "project": "demo", "traffic_type": "smtp", "port": PORT,
                          "backend": {"entities": [backend.to_string()]}});
    for (k, v) in extra.as_object().unwrap() {
        info[k] = v.clone();
    }
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": info}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("demo", name);
    let address = info["nodes"][0]["address"].as_str().unwrap();
    format!("{address}:{PORT}").parse().unwrap()
}

/// smtplib sends `message` `count` times; its JSON report.
pub fn send(
    addr: SocketAddr,
    message: &[u8],
    to: &[&str],
    login: Option<(&str, &str)>,
    count: u32,
) -> Value {
    let dir = TempDir::new("smtp-msg");
    let file = dir.0.join("message.eml");
    std::fs::write(&file, message).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smtp_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(&file)
        .args(["--from", "ann@sender.test", "--count", &count.to_string()]);
    for t in to {
        cmd.args(["--to", t]);
    }
    if let Some((user, password)) = login {
        cmd.args(["--user", user, "--password", password]);
    }
    let out = cmd.output().expect("running smtp_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "smtp_client.py: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The failing step and its code, or `("", 0)` when everything passed.
pub fn failure(report: &Value) -> (String, u64) {
    (
        report["failed"].as_str().unwrap_or("").to_string(),
        report["code"].as_u64().unwrap_or(0),
    )
}

/// A raw SMTP connection: the test writes lines and reads reply lines.
pub struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut raw = Raw {
            reader: BufReader::new(conn.try_clone().unwrap()),
            writer: conn,
        };
        assert_eq!(raw.reply().0, 220, "banner");
        raw
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// One whole reply: its code and its lines' texts (0 at EOF).
    pub fn reply(&mut self) -> (u16, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return (0, lines);
            }
            let code = line[..3].parse().expect("a reply code");
            let last = line.as_bytes()[3] == b' ';
            lines.push(line[4..].trim_end().to_string());
            if last {
                return (code, lines);
            }
        }
    }

    pub fn codes(&mut self, n: usize) -> Vec<u16> {
        (0..n).map(|_| self.reply().0).collect()
    }

    /// Whether the node closed the connection (EOF, nothing more).
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }
}

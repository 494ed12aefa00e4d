//! Small real backends on 127.0.0.1 for the tests: an HTTP server that answers
//! with its name and remembers what it saw, and a TCP echo server. Each stops
//! (and joins its threads) when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    fn start(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Server {
        Server::start_on("127.0.0.1:0".parse().unwrap(), handler)
    }

    fn start_on(bind: SocketAddr, handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let stop2 = stop.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let handler = handler.clone();
                // Connection threads end when the peer closes; the proxy's pool
                // closes them when the test's lb-node is stopped.
                std::thread::spawn(move || handler(conn));
            }
        });
        Server {
            addr,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag. If the address is gone
        // (a project gateway removed by the test), the listener cannot get
        // a connection any more: leave its thread, it ends with the process.
        let woken = TcpStream::connect_timeout(&self.addr, std::time::Duration::from_secs(2));
        if let (Ok(_), Some(h)) = (woken, self.accept.take()) {
            let _ = h.join();
        }
    }
}

/// What an HTTP backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 backend (keep-alive) that answers `200 <name>`. `hits` and
/// `seen` leave out lb-node's health checks.
/// Paths: `/slow` answers after 700 ms, `/sleep/MS` after MS ms; `/drip/N`
/// sends its body in N chunks 300 ms apart; `/status/NNN` answers NNN; while
/// `healthy` is false every request gets 503.
pub struct HttpBackend {
    server: Server,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub healthy: Arc<AtomicBool>,
}

impl HttpBackend {
    pub fn start(name: &str) -> HttpBackend {
        HttpBackend::start_on("127.0.0.1:0".parse().unwrap(), name)
    }

    /// An HTTP backend listening on `bind` (e.g. a project's gateway address).
    pub fn start_on(bind: SocketAddr, name: &str) -> HttpBackend {
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let healthy = Arc::new(AtomicBool::new(true));
        let (h, s, ok, body) = (
            hits.clone(),
            seen.clone(),
            healthy.clone(),
            name.to_string(),
        );
        let server = Server::start_on(bind, move |conn| serve_http(conn, &body, &h, &s, &ok));
        HttpBackend {
            server,
            name: name.to_string(),
            hits,
            seen,
            healthy,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn serve_http(
    conn: TcpStream,
    body: &str,
    hits: &AtomicUsize,
    seen: &Mutex<Vec<Seen>>,
    healthy: &AtomicBool,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let mut headers = Vec::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut discard = vec![0; content_length];
        if reader.read_exact(&mut discard).is_err() {
            return;
        }
        // lb-node's own health checks are not traffic: they are not counted.
        let is_check = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("user-agent") && v == "lb-node-health");
        if !is_check {
            hits.fetch_add(1, Ordering::SeqCst);
        }
        let mut status = 200;
        let drip = path.strip_prefix("/drip/").and_then(|n| n.parse().ok());
        if path == "/slow" {
            std::thread::sleep(std::time::Duration::from_millis(700));
        } else if let Some(ms) = path.strip_prefix("/sleep/").and_then(|n| n.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        } else if let Some(code) = path.strip_prefix("/status/") {
            status = code.parse().unwrap_or(500);
        }
        if !healthy.load(Ordering::SeqCst) {
            status = 503;
        }
        if !is_check {
            seen.lock().unwrap().push(Seen { path, headers });
        }
        if let Some(chunks) = drip {
            if send_dripping(&mut writer, status, body, chunks).is_err() {
                return;
            }
            continue;
        }
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A chunked response whose body (`body` per chunk) comes in `chunks`
/// pieces 300 ms apart: a response in progress for that long.
fn send_dripping(
    writer: &mut TcpStream,
    status: u16,
    body: &str,
    chunks: usize,
) -> std::io::Result<()> {
    write!(
        writer,
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    for i in 0..chunks {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        write!(writer, "{:x}\r\n{body}\r\n", body.len())?;
        writer.flush()?;
    }
    write!(writer, "0\r\n\r\n")
}

/// A TCP server that echoes what it reads until the peer half-closes, then
/// closes its side.
pub struct EchoBackend {
    server: Server,
}

impl EchoBackend {
    pub fn start() -> EchoBackend {
        let server = Server::start(|mut conn| {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = conn.shutdown(Shutdown::Write);
        });
        EchoBackend { server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

/// Reads from `conn` until the peer closes it (FIN or reset): what it
/// sent, and how long that took. Panics if it is still open after `limit`.
pub fn read_until_closed(
    conn: &mut TcpStream,
    limit: std::time::Duration,
) -> (Vec<u8>, std::time::Duration) {
    let start = std::time::Instant::now();
    conn.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "still open after {:?} ({e}); got {:?}",
                start.elapsed(),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (got, start.elapsed())
}

/// An HTTP/1.x response as read off a socket: its status (0 when there is
/// none), its header fields as sent, and its body.
pub fn parse_response(text: &str) -> (u16, Vec<(String, String)>, String) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// A plain HTTP/1.1 GET on a fresh connection; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, "")
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

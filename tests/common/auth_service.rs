//! A real auth service for the L7 auth tests: `tests/fixtures/auth_service.py`
//! (the contract of docs/API.md) in its own process on a free port, killed
//! by PID on drop; and a raw HTTP/1.1 client that sends chosen headers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The Python auth service, stopped (SIGKILL, by PID) on drop.
pub struct AuthService {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Where `GET /calls` is asked in plain HTTP: `addr`, or the second
    /// port of a TLS service.
    control: SocketAddr,
    tls: bool,
}

impl AuthService {
    /// `None` when python3 is missing outside CI (the test then skips).
    pub fn start() -> Option<AuthService> {
        Self::spawn(&[])
    }

    /// The service over HTTPS with this certificate chain and key (PEM files).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Option<AuthService> {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        Self::spawn(&["--tls-cert", cert, "--tls-key", key])
    }

    fn spawn(args: &[&str]) -> Option<AuthService> {
        let python = Command::new("python3").arg("--version").output();
        if !super::require("python3", python.is_ok_and(|o| o.status.success())) {
            return None;
        }
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/auth_service.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the auth service");
        let stdout = child.stdout.take().unwrap();
        let mut service = AuthService {
            child: Some(child),
            addr: "127.0.0.1:0".parse().unwrap(),
            control: "127.0.0.1:0".parse().unwrap(),
            tls: !args.is_empty(),
        };
        let line = super::ready_line(stdout, Duration::from_secs(20))
            .expect("the auth service's ready line");
        let ports = line
            .strip_prefix("ready port=")
            .unwrap_or_else(|| panic!("bad ready line {line:?}"));
        // "N" or, for TLS, "N plain=M".
        let (main, plain) = ports.split_once(" plain=").unwrap_or((ports, ports));
        let parse = |p: &str| -> u16 {
            p.parse()
                .unwrap_or_else(|_| panic!("bad ready line {line:?}"))
        };
        service.addr.set_port(parse(main));
        service.control.set_port(parse(plain));
        Some(service)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/auth", self.addr)
    }

    /// `{"total": n, "last": query}`: what the service was asked.
    pub fn calls(&self) -> Value {
        let (status, _, body) = request(self.control, "GET", "/calls", &[]);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn total(&self) -> u64 {
        self.calls()["total"].as_u64().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the service (SIGKILL) and waits for it: its port refuses.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.1 request on a fresh connection with `headers`; returns
/// the status, the response headers (names lower case) and the body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut conn = TcpStream::connect(addr).expect("connecting");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("Content-Length: 0\r\n\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("reading the answer");
    let (status, headers, body) = super::backends::parse_response(&text);
    // Lower case, so callers look fields up by one spelling.
    let headers = headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    (status, headers, body)
}

/// The value of `name` (lower case) among `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

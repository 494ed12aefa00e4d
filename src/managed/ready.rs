//! A starting backend's `ready` check: a TCP connect, or an HTTP GET whose
//! status is one of the expected codes. One attempt per call, bounded.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::model::managed::ReadyCheck;

/// How long one attempt may take (the caller retries every ~10 ms).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the backend at `addr` passes `check` now.
pub async fn passes(addr: SocketAddr, check: &ReadyCheck) -> bool {
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt(addr, check))
        .await
        .unwrap_or(false)
}

async fn attempt(addr: SocketAddr, check: &ReadyCheck) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let (path, codes) = match check {
        ReadyCheck::Tcp => return true,
        ReadyCheck::Http {
            request_path,
            expected_codes,
        } => (request_path, expected_codes),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: lbd-ready\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    status_of(&head).is_some_and(|s| codes.contains(s))
}

/// The status code of an HTTP/1 status line.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(status_of(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(
            status_of(b"HTTP/1.1 503 Service Unavailable\r\nx: y"),
            Some(503)
        );
        assert_eq!(status_of(b"garbage"), None);
    }

    #[tokio::test]
    async fn tcp_and_http_checks_against_real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            }
        });
        assert!(passes(addr, &ReadyCheck::Tcp).await);
        let http = |codes: &str| ReadyCheck::Http {
            request_path: "/healthz".into(),
            expected_codes: codes.parse().unwrap(),
        };
        assert!(passes(addr, &http("200-299")).await);
        assert!(!passes(addr, &http("200")).await);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(!passes(closed, &ReadyCheck::Tcp).await);
    }
}

//! `tls.redirect_http_port`: a plain HTTP listener beside the TLS one that
//! answers every request with 308 to the same path on the https URL.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::dataplane::pool::{full_body, ProxyBody};
use crate::dataplane::Node;

/// A running redirect listener; dropping the sender stops its accept loop.
pub struct Redirect {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Redirect {
    /// Binds `addr` (so a failure is reported before the config is taken).
    pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        let socket = std::net::TcpListener::bind(addr)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    /// Starts serving on `socket`, redirecting to https port `https_port`.
    pub fn start(
        node: Arc<Node>,
        socket: std::net::TcpListener,
        https_port: u16,
    ) -> std::io::Result<Redirect> {
        let addr = socket.local_addr()?;
        let listener = Arc::new(TcpListener::from_std(socket)?);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(crate::dataplane::accept_loop(
            listener,
            stop_rx,
            move |stream, _| {
                let node = node.clone();
                async move {
                    let Some(_conn) = node.counters.admit(node.max_connections.load(Relaxed))
                    else {
                        return;
                    };
                    let (timeouts, _) = crate::dataplane::http::client_settings(&node);
                    let idle = Duration::from_millis(u64::from(timeouts.client_idle_ms));
                    let service = service_fn(move |req| async move {
                        Ok::<_, Infallible>(redirect(&req, https_port))
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(idle)
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = conn.await {
                        tracing::debug!("redirect: {e}");
                    }
                }
            },
        ));
        Ok(Redirect { addr, stop })
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// The 308 for one request: same host (without its port), the https port
/// unless it is 443, same path and query.
fn redirect(req: &Request<Incoming>, https_port: u16) -> Response<ProxyBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .map(strip_port);
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        let mut resp = Response::new(full_body("lb-node: a redirect needs a Host header\n"));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = https_url(host, https_port, path);
    let mut resp = Response::new(full_body(format!("redirecting to {location}\n")));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn https_url(host: &str, port: u16, path: &str) -> String {
    if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_keeps_host_and_path_and_names_the_https_port() {
        assert_eq!(
            https_url(strip_port("web.example:8080"), 8443, "/a?b=1"),
            "https://web.example:8443/a?b=1"
        );
        assert_eq!(
            https_url(strip_port("web.example"), 443, "/"),
            "https://web.example/"
        );
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}

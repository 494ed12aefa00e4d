//! The HTTP reverse proxy: HTTP/1.1 with keep-alive, and HTTP/2 with prior
//! knowledge (h2c), from clients; pooled HTTP/1.1 keep-alive connections to
//! members. Adds `X-Forwarded-For/-Proto/-Host` and `Via`, removes hop-by-hop
//! headers, streams bodies, passes `Upgrade` (WebSocket) through. A body-less
//! idempotent request whose member refused or reset the connection before
//! answering is retried once on another member. Failures answer 502/503/504
//! with the reason in a short body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::balance::{fnv1a, Member};
use super::health::record_outcome;
use super::pool::{BackendPool, ProxyBody, SendError};
use super::{ActiveConfig, Node};
use crate::model::{Algorithm, HashOn, Timeouts};

/// How to reach the members: connection pooling and timeouts.
#[derive(Clone)]
pub struct BackendClient {
    pool: BackendPool,
    first_byte: Duration,
}

impl BackendClient {
    /// `source`: the node's own address, which backend connections leave from.
    pub fn new(timeouts: &Timeouts, source: std::net::IpAddr) -> Self {
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        BackendClient {
            pool: BackendPool::new(
                ms(timeouts.connect_ms),
                ms(timeouts.backend_idle_ms),
                source,
            ),
            first_byte: ms(timeouts.first_byte_ms),
        }
    }
}

/// Serves HTTP clients until `stop` turns true.
pub async fn serve(node: Arc<Node>, listener: Arc<TcpListener>, stop: watch::Receiver<bool>) {
    let stop_conns = stop.clone();
    super::accept_loop(listener, stop, move |stream, peer| {
        let node = node.clone();
        let mut stop = stop_conns.clone();
        async move {
            let Some(_conn) = node.counters.admit(node.max_connections.load(Relaxed)) else {
                return refuse(stream).await;
            };
            let _ = stream.set_nodelay(true);
            let idle = node
                .active
                .load()
                .as_ref()
                .map_or(Timeouts::default().client_idle_ms, |a| {
                    a.config.tuning.timeouts.client_idle_ms
                });
            let service = service_fn(|req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(proxy(&node, req, peer).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(u64::from(idle)));
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(256);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            // On stop, the request in flight finishes and the connection
            // closes after it instead of waiting for the client's next one.
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = async { drop(stop.wait_for(|s| *s).await) } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!("client {peer}: {e}");
            }
        }
    })
    .await
}

/// Over `max_connections`: a short 503 instead of a silent close.
async fn refuse(mut stream: TcpStream) {
    let body = "lb-node: too many connections, try again\n";
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Lingering close: closing with the client's request still unread would
    // send a reset that can destroy the 503 before the client reads it. So
    // read and drop what comes (bounded in bytes and time) until the client closes.
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

async fn proxy(node: &Node, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    let start = Instant::now();
    node.counters.requests_total.fetch_add(1, Relaxed);
    if let Some(len) = content_length(req.headers()) {
        node.counters.bytes_in.fetch_add(len, Relaxed);
    }
    let resp = route(node, req, peer).await;
    if let Some(len) = content_length(resp.headers()) {
        node.counters.bytes_out.fetch_add(len, Relaxed);
    }
    node.counters
        .response(resp.status().as_u16(), start.elapsed());
    resp
}

async fn route(node: &Node, mut req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    let Some(active) = node.active.load_full() else {
        return short(
            StatusCode::SERVICE_UNAVAILABLE,
            "lb-node: not configured yet\n".into(),
        );
    };
    let key = match active.balancer.algorithm() {
        Algorithm::ConsistentHash => hash_key(&active.config.tuning.hash_on, &req, peer),
        _ => 0,
    };
    let Some(pick) = active.balancer.pick(key) else {
        node.counters.backend_errors.fetch_add(1, Relaxed);
        // Nothing to pick is also every member drained on purpose; the
        // reason must not send an operator looking for a missing backend.
        let reason = if active.balancer.members().is_empty() {
            "lb-node: no backend is configured\n"
        } else {
            "lb-node: every backend has weight 0 (draining)\n"
        };
        return short(StatusCode::SERVICE_UNAVAILABLE, reason.into());
    };
    node.counters.fail_open.store(pick.fail_open, Relaxed);
    let upgrade = upgrade_protocol(req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let retryable = upgrade.is_none() && idempotent_without_body(&req);
    let client_version = req.version();
    let (mut parts, body) = req.into_parts();
    let authority = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    add_forwarded(&mut parts.headers, peer, authority.as_ref(), client_version);
    if let Some(host) = authority {
        // HTTP/2 clients send :authority, not Host; members speak HTTP/1.1.
        parts.headers.insert(header::HOST, host);
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.version = http::Version::HTTP_11;
    let method = parts.method.clone();
    // Only a retryable request needs a second copy of its head.
    let mut spare = retryable.then(|| parts.clone());
    let mut attempt = Some((parts, body.boxed()));
    let mut member = pick.member;
    loop {
        let (mut head, body) = attempt.take().expect("one attempt at a time");
        // Origin form (`/path?query`) on the wire; the member is the connection's peer.
        head.uri = Uri::from(path_and_query.clone());
        if !head.headers.contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(member.authority.as_str()) {
                head.headers.insert(header::HOST, host);
            }
        }
        match forward(&active, member, Request::from_parts(head, body)).await {
            Ok(mut resp) => {
                record_outcome(&active.balancer, member, resp.status().as_u16() < 500);
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_side) = client_upgrade {
                        let backend_side = hyper::upgrade::on(&mut resp);
                        tokio::spawn(tunnel(client_side, backend_side));
                        return resp.map(|b| b.boxed());
                    }
                }
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                return Response::from_parts(parts, body.boxed());
            }
            Err(ForwardError::Timeout(after)) => {
                record_outcome(&active.balancer, member, false);
                node.counters.backend_errors.fetch_add(1, Relaxed);
                let reason = format!(
                    "backend {} sent no response within {} ms",
                    member.address,
                    after.as_millis()
                );
                tracing::warn!("{method} {path_and_query}: {reason}");
                return short(StatusCode::GATEWAY_TIMEOUT, format!("lb-node: {reason}\n"));
            }
            Err(ForwardError::Failed { unanswered, reason }) => {
                record_outcome(&active.balancer, member, false);
                if unanswered {
                    if let (Some(head), Some(other)) =
                        (spare.take(), active.balancer.retry_member(member))
                    {
                        tracing::debug!(
                            "{method} {path_and_query}: retrying on {} after: {reason}",
                            other.address
                        );
                        member = other;
                        attempt = Some((head, Empty::new().map_err(|e| match e {}).boxed()));
                        continue;
                    }
                }
                node.counters.backend_errors.fetch_add(1, Relaxed);
                tracing::warn!(
                    "{method} {path_and_query}: no backend answered: {reason} ({})",
                    member.address
                );
                return short(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "lb-node: no backend answered (last error: {reason} ({}))\n",
                        member.address
                    ),
                );
            }
        }
    }
}

enum ForwardError {
    Timeout(Duration),
    /// `unanswered`: the member refused or dropped the connection before any
    /// response byte, so an idempotent request may be sent elsewhere.
    Failed {
        unanswered: bool,
        reason: String,
    },
}

async fn forward(
    active: &ActiveConfig,
    member: &Member,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, ForwardError> {
    let c = &member.counters;
    c.requests.fetch_add(1, Relaxed);
    c.active.fetch_add(1, Relaxed);
    let result = tokio::time::timeout(
        active.client.first_byte,
        active.client.pool.send(member.address, req),
    )
    .await;
    c.active.fetch_sub(1, Relaxed);
    let (unanswered, reason) = match result {
        Ok(Ok(resp)) => {
            if resp.status().is_server_error() {
                c.failures.fetch_add(1, Relaxed);
            }
            return Ok(resp);
        }
        Ok(Err(SendError::Unanswered(reason))) => (true, reason),
        Ok(Err(SendError::Failed(reason))) => (false, reason),
        Err(_) => {
            c.failures.fetch_add(1, Relaxed);
            return Err(ForwardError::Timeout(active.client.first_byte));
        }
    };
    c.failures.fetch_add(1, Relaxed);
    Err(ForwardError::Failed { unanswered, reason })
}

/// Copies bytes both ways between an upgraded client and member connection.
async fn tunnel(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, backend) {
        Ok((c, b)) => {
            let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
                tracing::debug!("upgraded connection: {e}");
            }
        }
        Err(e) => tracing::debug!("upgrade failed: {e}"),
    }
}

fn short(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Only a request without a body can be sent twice: its bytes were not consumed.
fn idempotent_without_body<B>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) && content_length(req.headers()).is_none_or(|n| n == 0)
        && !req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// The protocol of an HTTP/1.1 `Connection: upgrade` request.
fn upgrade_protocol(h: &HeaderMap) -> Option<HeaderValue> {
    let asks = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if asks {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

fn hash_key<B>(on: &HashOn, req: &Request<B>, peer: SocketAddr) -> u64 {
    if let HashOn::Header(name) = on {
        if let Some(v) = req.headers().get(name.as_str()) {
            return fnv1a(v.as_bytes());
        }
    }
    match peer.ip() {
        std::net::IpAddr::V4(ip) => fnv1a(&ip.octets()),
        std::net::IpAddr::V6(ip) => fnv1a(&ip.octets()),
    }
}

/// Headers that describe one hop (RFC 9110 §7.6.1) and must not be forwarded,
/// including any that `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

fn add_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    host: Option<&HeaderValue>,
    version: http::Version,
) {
    let client = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {client}"),
        None => client,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = host {
        if !headers.contains_key("x-forwarded-host") {
            headers.insert("x-forwarded-host", host.clone());
        }
    }
    let hop = if version == http::Version::HTTP_2 {
        "2 lb-node"
    } else {
        "1.1 lb-node"
    };
    let via = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {hop}"),
        None => hop.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&via) {
        headers.insert(header::VIA, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::HOST, HeaderValue::from_static("web"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::HOST));
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::VIA, HeaderValue::from_static("1.0 edge"));
        let host = HeaderValue::from_static("web.demo");
        add_forwarded(
            &mut h,
            "127.0.0.9:5555".parse().unwrap(),
            Some(&host),
            http::Version::HTTP_11,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "web.demo");
        assert_eq!(h[header::VIA], "1.0 edge, 1.1 lb-node");
    }

    #[test]
    fn only_body_less_idempotent_requests_are_retryable() {
        let req = |m: Method, len: Option<&str>| {
            let mut r = Request::builder().method(m);
            if let Some(l) = len {
                r = r.header(header::CONTENT_LENGTH, l);
            }
            r.body(()).unwrap()
        };
        assert!(idempotent_without_body(&req(Method::GET, None)));
        assert!(idempotent_without_body(&req(Method::DELETE, Some("0"))));
        assert!(!idempotent_without_body(&req(Method::PUT, Some("5"))));
        assert!(!idempotent_without_body(&req(Method::POST, None)));
    }

    #[test]
    fn upgrade_needs_connection_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(upgrade_protocol(&h).is_none());
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
    }
}

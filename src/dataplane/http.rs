//! The HTTP reverse proxy, client side: HTTP/1.1 with keep-alive, and
//! HTTP/2 with prior knowledge (h2c), from clients. Each request goes through
//! the stages of `pipeline.rs` (rules, auth, rate limit, pool, upstream);
//! here are the connection's life and the pieces of a response: the
//! member's with hop-by-hop headers removed, an `Upgrade` (WebSocket)
//! tunnelled, or a failure as 502/504 with the reason in a short body.

use super::log_limit;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::forward::{strip_hop_by_hop, Failure, ForwardError};
use super::idle::{timed_out, Activity, Counted, OwnWakes, Streams, Tracked};
use super::pool::{full_body, ProxyBody};
use super::stats::OpenGuard;
use super::wake::activity::OpenBody;
use super::{ActiveConfig, Node};
use crate::model::{tuning, Timeouts};

/// Serves HTTP clients until `stop` turns true.
pub async fn serve(node: Arc<Node>, listener: Arc<TcpListener>, stop: watch::Receiver<bool>) {
    let stop_conns = stop.clone();
    super::accept_loop(listener, stop, move |stream, peer| {
        serve_client(node.clone(), stream, peer, stop_conns.clone())
    })
    .await
}

/// One client connection, from admission to close.
async fn serve_client(
    node: Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let Some(_conn) = node.counters.admit(node.max_connections.load(Relaxed)) else {
        return refuse(stream).await;
    };
    let _ = stream.set_nodelay(true);
    serve_connection(node.clone(), stream, peer, stop, None).await
}

/// The settings a client connection starts with: its timeouts and head limit.
pub(super) fn client_settings(node: &Node) -> (Timeouts, u32) {
    node.active.load().as_ref().map_or(
        (Timeouts::default(), tuning::DEFAULT_MAX_HEADER_BYTES),
        |a| (a.config.tuning.timeouts, a.config.tuning.max_header_bytes),
    )
}

/// Serves HTTP/1.1 or HTTP/2 on an admitted connection, plain or (`tls`,
/// marking each request for `X-Forwarded-Proto: https`) decrypted.
pub(super) async fn serve_connection<IO>(
    node: Arc<Node>,
    stream: IO,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    tls: Option<super::tls::Terminated>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (timeouts, max_head) = client_settings(&node);
    let idle = Duration::from_millis(u64::from(timeouts.client_idle_ms));
    let handshake = Duration::from_millis(u64::from(timeouts.handshake_ms));
    // The connection's open requests, for the idle close below. A request
    // clones the Arc into its guard.
    let streams = Arc::new(Streams::default());
    let service = service_fn(|mut req: Request<Incoming>| {
        let open = streams.open();
        let node = node.clone();
        if let Some(t) = tls {
            req.extensions_mut().insert(t);
        }
        async move {
            let resp = proxy(&node, req, peer).await;
            Ok::<_, Infallible>(resp.map(|body| Counted::new(body, open)))
        }
    });
    let builder = connection_builder(idle, max_head);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let watch = watchdog(&streams, handshake, idle, &mut stop);
    tokio::pin!(watch);
    // Biased, and the deadlines polled only when they fire: a wake of the
    // connection costs no timer poll and no random branch order.
    let result = tokio::select! {
        biased;
        r = conn.as_mut() => r,
        ending = OwnWakes::new(watch.as_mut()) => match ending {
            Ending::NoRequest => {
                tracing::debug!("client {peer}: no request within {} ms", handshake.as_millis());
                return;
            }
            // GOAWAY (HTTP/2) and close: the client knows no request was lost.
            Ending::Quiet | Ending::Stop => {
                if ending == Ending::Quiet {
                    tracing::debug!("client {peer}: no request open for {} ms", idle.as_millis());
                }
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        },
    };
    if let Err(e) = result {
        tracing::debug!("client {peer}: {e}");
    }
}

/// Why a client connection is ended before it ends itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// No request started within `handshake_ms` (dropped, closed).
    NoRequest,
    /// No request open for `client_idle_ms`.
    Quiet,
    /// The listener stops: the request in flight finishes, then the
    /// connection closes instead of waiting for the client's next one.
    Stop,
}

/// A client connection's deadlines. hyper-util's auto builder starts no
/// timer while it detects the protocol, and hyper's h1 header timer only
/// starts after that: a client that sends nothing or half an HTTP/2 preface
/// would hold its slot for ever, so the first request must have started by
/// `handshake`. hyper closes an HTTP/1 connection idle between requests
/// itself (its header timer), but has nothing for an HTTP/2 one without
/// streams whose client answers the keep-alive pings: that is `Quiet`.
async fn watchdog(
    streams: &Streams,
    handshake: Duration,
    idle: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Ending {
    let first_request = async {
        tokio::time::sleep(handshake).await;
        if streams.any_opened() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => Ending::Stop,
        () = first_request => Ending::NoRequest,
        () = streams.quiet_for(idle) => Ending::Quiet,
    }
}

/// hyper's settings for a client connection, both protocols.
fn connection_builder(
    idle: Duration,
    max_head: u32,
) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Heads after the first: the keep-alive idle time.
        .header_read_timeout(idle)
        // A head that does not fit the read buffer is answered 431 by
        // hyper itself and never reaches a member; hyper needs at
        // least 8 KiB, which the API already enforces.
        .max_buf_size(max_head.max(tuning::MIN_MAX_HEADER_BYTES) as usize);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        // The same limit for HTTP/2 (h2 answers 431 to a larger header list).
        .max_header_list_size(max_head)
        // A peer that stops answering pings (gone without a FIN) is
        // closed even while a stream waits for a slow member.
        .keep_alive_interval(Some(idle))
        .keep_alive_timeout(idle.min(Duration::from_secs(20)));
    builder
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

async fn proxy(node: &Arc<Node>, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    let start = Instant::now();
    node.counters.requests_total.fetch_add(1, Relaxed);
    if let Some(len) = content_length(req.headers()) {
        node.counters.bytes_in.fetch_add(len, Relaxed);
    }
    let resp = super::pipeline::route(node, req, peer).await;
    if let Some(len) = content_length(resp.headers()) {
        node.counters.bytes_out.fetch_add(len, Relaxed);
    }
    node.counters
        .response(resp.status().as_u16(), start.elapsed());
    resp
}

// === Pieces of the request pipeline (`pipeline.rs` orders them) ===

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or any HTTP/1.x
/// request with more than one, is answered 400 instead of being guessed at.
/// (HTTP/2 carries the authority in `:authority`.) Looks at the headers only:
/// no allocation on the request path.
pub(super) fn bad_host<B>(req: &Request<B>) -> Option<&'static str> {
    let version = req.version();
    if version != Version::HTTP_11 && version != Version::HTTP_10 {
        return None;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => {
            Some("lb-node: an HTTP/1.1 request needs a Host header\n")
        }
        (Some(_), Some(_)) => Some("lb-node: more than one Host header\n"),
        _ => None,
    }
}

/// The member's response as the client gets it. A `101` to a client that
/// asked to upgrade keeps its headers, which the client needs to switch too.
pub(super) fn client_response(
    node: &Arc<Node>,
    active: &ActiveConfig,
    mut resp: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    open: Option<OpenGuard>,
) -> Response<ProxyBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_upgrade {
            let backend_side = hyper::upgrade::on(&mut resp);
            // Taken before hyper hands the socket over (and the connection's
            // own admission guard drops), so the count never dips.
            let slot = TunnelSlot::take(node);
            let idle =
                Duration::from_millis(u64::from(active.config.tuning.timeouts.client_idle_ms));
            tokio::spawn(tunnel(slot, client_side, backend_side, idle, open));
            return resp.map(|b| b.boxed());
        }
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = match open {
        // A managed member: open until the body's last byte.
        Some(open) => OpenBody::new(body, open).boxed(),
        None => body.boxed(),
    };
    Response::from_parts(parts, body)
}

/// No member answered in time (504) or at all (502): the reason goes to the
/// client and to the node's log.
pub(super) fn failure_response(node: &Node, failure: Failure<'_>) -> Response<ProxyBody> {
    node.counters.backend_errors.fetch_add(1, Relaxed);
    let Failure {
        member,
        error,
        method,
        target,
    } = failure;
    match error {
        ForwardError::Timeout(after) => {
            let reason = format!(
                "backend {} sent no response within {} ms",
                member.address,
                after.as_millis()
            );
            if let Some(left_out) = log_limit::allow("timeout", &member.address.to_string()) {
                tracing::warn!(left_out, "{method} {target}: {reason}");
            }
            short(StatusCode::GATEWAY_TIMEOUT, format!("lb-node: {reason}\n"))
        }
        ForwardError::Failed { reason, .. } => {
            if let Some(left_out) = log_limit::allow("failed", &member.address.to_string()) {
                tracing::warn!(
                    left_out,
                    "{method} {target}: no backend answered: {reason} ({})",
                    member.address
                );
            }
            short(
                StatusCode::BAD_GATEWAY,
                format!(
                    "lb-node: no backend answered (last error: {reason} ({}))\n",
                    member.address
                ),
            )
        }
    }
}

/// An upgraded tunnel's place under `max_connections`: a tunnel is a client
/// connection like any other, though hyper no longer owns its socket.
struct TunnelSlot(Arc<Node>);

impl TunnelSlot {
    fn take(node: &Arc<Node>) -> TunnelSlot {
        // No limit check: the client's connection was admitted already.
        node.counters.active_connections.fetch_add(1, Relaxed);
        TunnelSlot(node.clone())
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.0.counters.active_connections.fetch_sub(1, Relaxed);
    }
}

/// Copies bytes both ways between an upgraded client and member connection,
/// until both ends close or nothing moved for `idle`.
async fn tunnel(
    _slot: TunnelSlot,
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    idle: Duration,
    // A managed member stays open (not idle) while the tunnel is.
    _open: Option<OpenGuard>,
) {
    let activity = Activity::default();
    let upgraded = async {
        let (c, b) = match tokio::try_join!(client, backend) {
            Ok(both) => both,
            Err(e) => return tracing::debug!("upgrade failed: {e}"),
        };
        let mut c = Tracked {
            inner: TokioIo::new(c),
            activity: &activity,
        };
        let mut b = Tracked {
            inner: TokioIo::new(b),
            activity: &activity,
        };
        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
            tracing::debug!("upgraded connection: {e}");
        }
    };
    tokio::select! {
        () = upgraded => {}
        () = activity.expired(idle) => tracing::debug!("upgraded connection: {}", timed_out(idle)),
    }
}

/// A short text/plain answer of the node's own.
pub(super) fn short(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(full_body(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

pub(super) fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Only a request without a body can be sent twice: its bytes were not consumed.
pub(super) fn idempotent_without_body<B>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) && content_length(req.headers()).is_none_or(|n| n == 0)
        && !req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// The protocol of an HTTP/1.1 `Connection: upgrade` request.
pub(super) fn upgrade_protocol(h: &HeaderMap) -> Option<HeaderValue> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn http11_needs_exactly_one_host() {
        let req = |v: Version, hosts: &[&str]| {
            let mut r = Request::builder().version(v);
            for h in hosts {
                r = r.header(header::HOST, *h);
            }
            r.body(()).unwrap()
        };
        assert!(bad_host(&req(Version::HTTP_11, &["a"])).is_none());
        assert!(bad_host(&req(Version::HTTP_11, &[])).is_some());
        assert!(bad_host(&req(Version::HTTP_11, &["a", "b"])).is_some());
        assert!(bad_host(&req(Version::HTTP_10, &[])).is_none());
        assert!(bad_host(&req(Version::HTTP_2, &[])).is_none());
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

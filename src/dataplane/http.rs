//! The HTTP/1.1 reverse proxy: keep-alive to clients, pooled keep-alive
//! connections to members, `X-Forwarded-*`, hop-by-hop headers removed, bodies
//! streamed. A connect failure of a body-less idempotent request is retried on
//! the other members; when no member answers the client gets a 502 that says why.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::balance::Member;
use super::Node;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Pooled keep-alive connections to the members.
#[derive(Clone)]
pub struct BackendClient {
    client: Client<HttpConnector, ProxyBody>,
}

impl BackendClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .build(connector);
        BackendClient { client }
    }
}

impl Default for BackendClient {
    fn default() -> Self {
        Self::new()
    }
}

/// Accepts client connections until `stop` turns true.
pub async fn serve(node: Arc<Node>, listener: Arc<TcpListener>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        tokio::spawn(async move {
            let _conn = node.counters.connection();
            let service = service_fn(|req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(proxy(&node, req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("client {peer}: {e}");
            }
        });
    }
}

async fn proxy(node: &Node, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    node.counters.requests_total.fetch_add(1, Relaxed);
    let Some(active) = node.active.load_full() else {
        return short(
            StatusCode::SERVICE_UNAVAILABLE,
            "lb-node: not configured yet\n".into(),
        );
    };
    let Some(first) = active.balancer.pick() else {
        node.counters.backend_errors.fetch_add(1, Relaxed);
        return short(
            StatusCode::SERVICE_UNAVAILABLE,
            "lb-node: no backend is configured\n".into(),
        );
    };
    // Only a request without a body can be sent again: its bytes are not consumed.
    let retryable = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v == "0")
        && !req.headers().contains_key(header::TRANSFER_ENCODING);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded(&mut parts.headers, peer);
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    parts.version = http::Version::HTTP_11;

    let mut body = Some(body.boxed());
    let mut last_error = String::new();
    for member in std::iter::once(first).chain(active.balancer.others(first).filter(|_| retryable))
    {
        let mut out = Request::from_parts(parts.clone(), ());
        *out.uri_mut() = match Uri::try_from(format!("http://{}{path}", member.address)) {
            Ok(u) => u,
            Err(e) => {
                return short(
                    StatusCode::BAD_REQUEST,
                    format!("lb-node: bad request target: {e}\n"),
                )
            }
        };
        let out_body = body
            .take()
            .unwrap_or_else(|| Empty::new().map_err(|e| match e {}).boxed());
        match forward(node, member, out.map(|()| out_body)).await {
            Ok(resp) => return resp,
            Err(ForwardError { connect, reason }) => {
                last_error = format!("{reason} ({})", member.address);
                if !connect || !retryable {
                    break;
                }
            }
        }
    }
    node.counters.backend_errors.fetch_add(1, Relaxed);
    tracing::warn!("{} {path}: no backend answered: {last_error}", parts.method);
    short(
        StatusCode::BAD_GATEWAY,
        format!("lb-node: no backend answered (last error: {last_error})\n"),
    )
}

struct ForwardError {
    connect: bool,
    reason: String,
}

async fn forward(
    node: &Node,
    member: &Member,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ForwardError> {
    member.counters.requests.fetch_add(1, Relaxed);
    member.counters.active.fetch_add(1, Relaxed);
    let result = node.http_client.client.request(req).await;
    member.counters.active.fetch_sub(1, Relaxed);
    match result {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, body.boxed()))
        }
        Err(e) => {
            member.counters.failures.fetch_add(1, Relaxed);
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = format!("{reason}: {s}");
                source = s.source();
            }
            Err(ForwardError {
                connect: e.is_connect(),
                reason,
            })
        }
    }
}

fn short(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
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

fn add_forwarded(headers: &mut HeaderMap, peer: SocketAddr) {
    let client = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {client}"),
        None => client,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
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
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut h, "127.0.0.9:5555".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}

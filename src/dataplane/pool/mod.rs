//! Keep-alive connections to members, pooled per thread. lb-node serves each
//! client connection on one single-threaded runtime (see `Node`), so a
//! thread-local pool finds a backend connection without a lock, a key hash
//! of a URI, or a hop to another thread. Members of an h2c pool get one
//! multiplexed connection per thread instead (`h2c`).

mod h2c;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::model::upstream::BackendProtocol;
use tls::MemberTls;

/// The body of a proxied request or response: what a client or a member
/// sent, streamed through, or a short body of the node's own. Defined here,
/// below the HTTP proxy, so the pool depends on nothing of the proxy's.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A body of the node's own (an error text, a 429, a `respond` action),
/// whole in memory.
pub fn full_body(bytes: impl Into<Bytes>) -> ProxyBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed()
}

/// Connections kept per member per thread.
const MAX_POOLED: usize = 512;

type Pooled = (SendRequest<ProxyBody>, Instant);

/// A member and how it is reached: its address, and the `MemberTls::id`
/// (0: plain TCP), so pools of different TLS never share a connection.
type PoolKey = (SocketAddr, u64);

thread_local! {
    static POOL: RefCell<HashMap<PoolKey, Vec<Pooled>>> = RefCell::new(HashMap::new());
    static SWEEPER: Cell<bool> = const { Cell::new(false) };
}

/// Why a request got no response.
pub enum SendError {
    /// Nothing reached the member or it answered nothing: the connection was
    /// refused, timed out, or closed before any response byte.
    Unanswered(String),
    /// A kept-alive connection closed or was reset under the request before
    /// any response byte: the member most likely closed it as idle (or
    /// died) as the request went out. An idempotent request may be sent
    /// again, on a new connection (RFC 9110 §9.2.2).
    Stale(String),
    Failed(String),
}

#[derive(Clone, Copy, Debug)]
pub struct BackendPool {
    connect: Duration,
    idle: Duration,
    source: std::net::IpAddr,
}

impl BackendPool {
    pub fn new(connect: Duration, idle: Duration, source: std::net::IpAddr) -> Self {
        BackendPool {
            connect,
            idle,
            source,
        }
    }

    /// Sends in `protocol` (over `tls` when the pool has it) on a
    /// kept-alive connection to `addr` (unless `fresh`), or a new one. The
    /// request's URI and version must be those of `protocol` (origin form
    /// for HTTP/1.1, absolute for h2c, which lbd never pairs with TLS).
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: Request<ProxyBody>,
        fresh: bool,
        protocol: BackendProtocol,
        tls: Option<&MemberTls>,
    ) -> Result<Response<Incoming>, SendError> {
        match protocol {
            BackendProtocol::Http1 => self.send_http1(addr, req, fresh, tls).await,
            BackendProtocol::H2c => self.send_h2c(addr, req, fresh).await,
        }
    }

    async fn send_http1(
        &self,
        addr: SocketAddr,
        mut req: Request<ProxyBody>,
        fresh: bool,
        tls: Option<&MemberTls>,
    ) -> Result<Response<Incoming>, SendError> {
        self.start_sweeper();
        let key = (addr, MemberTls::key(tls));
        while let Some(mut sender) = (!fresh).then(|| self.checkout(key)).flatten() {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    checkin(key, sender);
                    return Ok(resp);
                }
                // Not written: the pooled connection was closing; try another.
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(classify_reused(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(addr, tls).await?;
        match sender.send_request(req).await {
            Ok(resp) => {
                checkin(key, sender);
                Ok(resp)
            }
            Err(e) => Err(classify(e)),
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        tls: Option<&MemberTls>,
    ) -> Result<SendRequest<ProxyBody>, SendError> {
        let stream = self.connect_tcp(addr).await?;
        let Some(tls) = tls else {
            return http1_handshake(addr, TokioIo::new(stream)).await;
        };
        // Within the connect timeout too: a member that takes the TCP
        // connection but never finishes the handshake is unanswered.
        let stream = tokio::time::timeout(self.connect, tls.connect(addr, stream))
            .await
            .map_err(|_| SendError::Unanswered("TLS handshake: no answer in time".into()))?
            .map_err(|e| SendError::Unanswered(format!("TLS handshake: {e}")))?;
        http1_handshake(addr, TokioIo::new(stream)).await
    }

    /// A TCP connection to `addr` from the node's address, within the
    /// connect timeout.
    async fn connect_tcp(&self, addr: SocketAddr) -> Result<tokio::net::TcpStream, SendError> {
        let connecting = super::connect_from(Some(self.source), addr);
        let stream = match tokio::time::timeout(self.connect, connecting).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::Unanswered(format!("connect: {e}"))),
            Err(_) => {
                return Err(SendError::Unanswered(format!(
                    "connect: no answer within {} ms",
                    self.connect.as_millis()
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A pooled connection to `addr` that is ready for a request; closed and
    /// expired ones are dropped on the way.
    fn checkout(&self, addr: PoolKey) -> Option<SendRequest<ProxyBody>> {
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let list = pool.get_mut(&addr)?;
            let now = Instant::now();
            while let Some(pos) = list
                .iter()
                .rposition(|(s, _)| s.is_ready() || s.is_closed())
            {
                let (sender, used) = list.swap_remove(pos);
                if !sender.is_closed() && now.duration_since(used) < self.idle {
                    return Some(sender);
                }
            }
            None
        })
    }

    /// Once a second, drops connections idle past the backend idle timeout
    /// (dropping the sender closes the connection).
    fn start_sweeper(&self) {
        if SWEEPER.with(|s| s.replace(true)) {
            return;
        }
        let idle = self.idle;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = Instant::now();
                POOL.with(|pool| {
                    for list in pool.borrow_mut().values_mut() {
                        list.retain(|(s, used)| {
                            !s.is_closed() && (!s.is_ready() || now.duration_since(*used) < idle)
                        });
                    }
                });
                h2c::sweep(now, idle);
            }
        });
    }
}

/// Returns a connection to the pool as soon as the response head is in: it
/// becomes ready for the next request when this response's body is done.
fn checkin(addr: PoolKey, sender: SendRequest<ProxyBody>) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let list = pool.entry(addr).or_default();
        if list.len() < MAX_POOLED {
            list.push((sender, Instant::now()));
        }
    });
}

async fn http1_handshake<I>(addr: SocketAddr, io: I) -> Result<SendRequest<ProxyBody>, SendError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| SendError::Unanswered(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("backend connection to {addr}: {e}");
        }
    });
    Ok(sender)
}

fn classify(e: hyper::Error) -> SendError {
    let reason = reason(&e);
    if e.is_incomplete_message() || e.is_canceled() {
        SendError::Unanswered(reason)
    } else {
        SendError::Failed(reason)
    }
}

/// A failure on a kept-alive connection: a close or reset before any
/// response byte is `Stale`, whatever hyper calls it.
fn classify_reused(e: hyper::Error) -> SendError {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    let reset = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted));
    if reset || e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        SendError::Stale(reason(&e))
    } else {
        classify(e)
    }
}

/// The error with its chain of causes, for the log and the 502's reason.
fn reason(e: &hyper::Error) -> String {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason = format!("{reason}: {s}");
        source = s.source();
    }
    reason
}

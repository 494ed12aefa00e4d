//! Over `max_connections`, a TLS client gets a 503 it can read: the
//! handshake, then `503` with `Retry-After: 1` to its requests, over
//! http/1.1 or h2 as ALPN chose. The plain listener's early 503 would be a
//! garbled record to a TLS client, and a silent close looks like a network
//! fault. Refusing costs a handshake, so only [`MAX_REFUSING`] refusals run
//! at once and each ends within [`REFUSAL_DEADLINE`]; beyond that the
//! connection is closed, so an overload cannot buy unbounded work.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Refusals being answered at once, on the whole node.
pub const MAX_REFUSING: usize = 16;
/// A refused connection's whole life: handshake, requests, close.
pub const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);

static REFUSING: Semaphore = Semaphore::const_new(MAX_REFUSING);

/// Answers 503 on `stream`, a connection that was not admitted.
pub(super) async fn refuse(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    handshake: Duration,
) {
    let Ok(_slot) = REFUSING.try_acquire() else {
        return tracing::debug!("client {peer}: over max_connections, closed");
    };
    let answer = async {
        let tls = match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            _ => return,
        };
        let service =
            hyper::service::service_fn(|_| async { Ok::<_, Infallible>(too_many_connections()) });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
            tracing::debug!("client {peer}: refusal: {e}");
        }
    };
    let _ = tokio::time::timeout(REFUSAL_DEADLINE, answer).await;
}

/// The plain listener's refusal, over TLS. `Connection: close` ends an
/// HTTP/1.1 connection after it (hyper drops the header for h2).
fn too_many_connections() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(
        b"lb-node: too many connections, try again\n",
    )));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = resp.headers_mut();
    headers.insert("content-type", "text/plain".parse().unwrap());
    headers.insert("retry-after", "1".parse().unwrap());
    headers.insert("connection", "close".parse().unwrap());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_retryable_503_that_closes() {
        let resp = too_many_connections();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(resp.headers()["connection"], "close");
    }
}

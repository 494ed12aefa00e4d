//! Serves an axum router over HTTP/1.1 with limits on the handshake, for
//! lbd's API and lb-node's admin API: `axum::serve` has neither a deadline
//! for the request head nor a cap on connections, so one client that connects
//! and never sends a request would hold a socket (and a task) forever, and
//! any number of them could be opened.
//!
//! - The request head must arrive within `header_timeout`. hyper starts that
//!   timer whenever it waits for a head, also between requests on a
//!   keep-alive connection, so an idle keep-alive connection is closed after
//!   the same time.
//! - At most `max_connections` are open at once. One more gets a short 503
//!   and is closed; only a bounded number of such refusals (each bounded in
//!   time) are in progress at once, and beyond that a connection is just
//!   closed, so a flood costs bounded work.
//! - On shutdown the listener is closed, idle connections close at once, a
//!   request in flight finishes and its connection closes after it; what is
//!   still open after `shutdown_grace` is cut.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Refusals (503 then a lingering close) in progress at once; past this an
/// over-cap connection is closed without an answer, so refusing costs bounded work.
const MAX_REFUSALS: usize = 32;
/// How long a refused client gets to read the 503 before its socket is closed.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// The handshake limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The request head must be complete within this (also: the idle time
    /// allowed between requests on a keep-alive connection).
    pub header_timeout: Duration,
    /// Connections open at once; more are refused.
    pub max_connections: usize,
    /// On shutdown, how long open connections get to finish.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains (see the
/// module doc). Returns once every connection is closed or cut.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let conn = connection(stream, peer, app.clone(), limits.header_timeout, stop_rx.clone(), permit);
                        connections.spawn(conn);
                    }
                    Err(_) => {
                        tracing::debug!("refusing {peer}: {} connections open", limits.max_connections);
                        if let Ok(slot) = refusals.clone().try_acquire_owned() {
                            connections.spawn(refuse(stream, slot));
                        }
                    }
                },
                Err(e) => {
                    // E.g. out of file descriptors: pause instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set stays as small as what is open.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::info!(
            "cutting {} connections still open after {:?}",
            connections.len(),
            limits.shutdown_grace
        );
        connections.shutdown().await;
    }
}

/// Serves one connection while it holds `_permit`.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    // Handlers see the client's address (the API's audit log records it).
    let app = app.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { drop(stop.wait_for(|s| *s).await) } => {
            // Closes an idle connection now, a busy one after its response.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("client {peer}: {e}");
    }
}

/// Over the cap: a short 503 and a close, all within `REFUSAL_LINGER`.
async fn refuse(mut stream: TcpStream, _slot: OwnedSemaphorePermit) {
    let body = "too many connections, try again\n";
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        stream.write_all(resp.as_bytes()).await?;
        stream.shutdown().await?;
        // Lingering close: closing with the client's request unread would
        // send a reset that can destroy the 503 before the client reads it.
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => total += n,
            }
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, answer).await;
}

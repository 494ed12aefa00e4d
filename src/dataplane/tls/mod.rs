//! TLS termination for `https` instances: the acceptor (`serve`), whose
//! rustls config comes from the config in force at each handshake, so a
//! certificate change takes effect for new handshakes without touching the
//! listener or any open connection; `config.rs` builds that config (SNI,
//! ALPN, versions), `redirect.rs` is the optional plain port answering 308.
//! Other protocols that speak TLS (SMTP STARTTLS) take the same config
//! through [`acceptor`].

pub mod config;
pub mod redirect;
mod refuse;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Node;

/// Marks a request that came over TLS (a request extension), for
/// `X-Forwarded-Proto: https` and `X-Forwarded-Port` toward members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminated {
    /// The port the client connected to.
    pub port: u16,
}

/// The acceptor of the config in force now (`None`: no `tls` in it). Each
/// handshake should take it afresh: that is how a rotation reaches it.
pub fn acceptor(node: &Node) -> Option<tokio_rustls::TlsAcceptor> {
    let active = node.active.load();
    let config = active.as_ref()?.tls.clone()?;
    Some(tokio_rustls::TlsAcceptor::from(config))
}

/// Serves TLS clients until `stop` turns true.
pub async fn serve(node: Arc<Node>, listener: Arc<TcpListener>, stop: watch::Receiver<bool>) {
    let stop_conns = stop.clone();
    let port = listener.local_addr().map_or(443, |a| a.port());
    super::accept_loop(listener, stop, move |stream, peer| {
        serve_client(node.clone(), stream, peer, stop_conns.clone(), port)
    })
    .await
}

/// One client: admission, the handshake within `handshake_ms`, then HTTP
/// (h2 or http/1.1, as ALPN chose) into the usual pipeline.
async fn serve_client(
    node: Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    port: u16,
) {
    let Some(acceptor) = acceptor(&node) else {
        return tracing::debug!("client {peer}: no tls config yet");
    };
    let (timeouts, _) = super::http::client_settings(&node);
    let handshake = Duration::from_millis(u64::from(timeouts.handshake_ms));
    // Over the limit a TLS client cannot read a plain 503: it gets one
    // after the handshake (`refuse.rs`).
    let Some(_conn) = node.counters.admit(node.max_connections.load(Relaxed)) else {
        return refuse::refuse(acceptor, stream, peer, handshake).await;
    };
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!("client {peer}: tls handshake: {e}"),
        Err(_) => return tracing::debug!("client {peer}: no tls handshake within {handshake:?}"),
    };
    super::http::serve_connection(node.clone(), tls, peer, stop, Some(Terminated { port })).await
}

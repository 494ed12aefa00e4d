//! The TCP proxy: one backend connection per client connection, bytes copied
//! both ways; EOF on one side is passed on as a half-close to the other.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Node;

/// Accepts client connections until `stop` turns true.
pub async fn serve(node: Arc<Node>, listener: Arc<TcpListener>, mut stop: watch::Receiver<bool>) {
    loop {
        let (client, peer) = tokio::select! {
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
        let node = node.clone();
        tokio::spawn(async move {
            let _conn = node.counters.connection();
            node.counters.requests_total.fetch_add(1, Relaxed);
            let Some(mut backend) = connect(&node).await else {
                node.counters.backend_errors.fetch_add(1, Relaxed);
                tracing::warn!("tcp client {peer}: no backend answered");
                return;
            };
            let mut client = client;
            let _ = client.set_nodelay(true);
            match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                Ok((up, down)) => {
                    node.counters.bytes_in.fetch_add(up, Relaxed);
                    node.counters.bytes_out.fetch_add(down, Relaxed);
                }
                Err(e) => tracing::debug!("tcp client {peer}: {e}"),
            }
        });
    }
}

/// Connects to the scheduled member, or failing that to each other member once.
async fn connect(node: &Node) -> Option<TcpStream> {
    let active = node.active.load_full()?;
    let first = active.balancer.pick()?;
    for member in std::iter::once(first).chain(active.balancer.others(first)) {
        member.counters.requests.fetch_add(1, Relaxed);
        match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(member.address)).await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Some(stream);
            }
            Ok(Err(e)) => tracing::warn!("connect {}: {e}", member.address),
            Err(_) => tracing::warn!("connect {}: timed out", member.address),
        }
        member.counters.failures.fetch_add(1, Relaxed);
    }
    None
}

//! The TCP proxy: one member connection per client connection (with an
//! optional PROXY protocol header first), bytes copied both ways; EOF on one
//! side is passed on as a half-close to the other.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::balance::fnv1a;
use super::health::record_outcome;
use super::idle::{timed_out, Activity, Tracked};
use super::pools::PoolRef;
use super::stats::OpenGuard;
use super::wake::TargetRef;
use super::Node;
use crate::model::Timeouts;

const COPY_BUF: usize = 64 * 1024;

/// Relays TCP clients until `stop` turns true.
pub async fn serve(node: Arc<Node>, listener: Arc<TcpListener>, stop: watch::Receiver<bool>) {
    super::accept_loop(listener, stop, move |client, peer| {
        let node = node.clone();
        async move {
            // Over the limit the connection is closed at once: TCP has no way to say why.
            let Some(_conn) = node.counters.admit(node.max_connections.load(Relaxed)) else {
                return;
            };
            node.counters.requests_total.fetch_add(1, Relaxed);
            let local = client.local_addr().unwrap_or(peer);
            // A managed default pool with no member: the connection waits,
            // unread, for lbd to push one (a slower connect to the client);
            // on a timeout or a failed start it is closed.
            let target = wake_target(&node);
            let _in_flight = target.as_ref().map(|t| t.in_flight());
            if let Some(t) = target.as_deref() {
                if asleep(&node) {
                    if let Err(e) = t.hold().await {
                        tracing::debug!("tcp client {peer}: not woken: {e:?}");
                        return;
                    }
                }
            }
            let Some((backend, _open)) = connect(&node, peer, local).await else {
                node.counters.backend_errors.fetch_add(1, Relaxed);
                if let Some(left_out) = super::log_limit::allow("tcp_no_backend", "") {
                    tracing::warn!(left_out, "tcp client {peer}: no backend answered");
                }
                return;
            };
            let _ = client.set_nodelay(true);
            let idle = Duration::from_millis(u64::from(
                node.active
                    .load()
                    .as_ref()
                    .map_or(Timeouts::default().client_idle_ms, |a| {
                        a.config.tuning.timeouts.client_idle_ms
                    }),
            ));
            // No byte either way for `client_idle_ms` closes the relay: a
            // silent peer would otherwise hold its connection slot for ever.
            let activity = Activity::default();
            let (mut client, mut backend) = (client, backend);
            let relay = async {
                // splice(2) keeps the bytes in the kernel; a plain copy is the
                // fallback where splice is not available.
                match super::splice::relay(&client, &backend, &activity).await {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        let mut c = Tracked {
                            inner: &mut client,
                            activity: &activity,
                        };
                        let mut b = Tracked {
                            inner: &mut backend,
                            activity: &activity,
                        };
                        tokio::io::copy_bidirectional_with_sizes(&mut c, &mut b, COPY_BUF, COPY_BUF)
                            .await
                    }
                    other => other,
                }
            };
            let moved = tokio::select! {
                moved = relay => moved,
                _ = activity.expired(idle) => Err(timed_out(idle)),
            };
            match moved {
                Ok((up, down)) => {
                    node.counters.bytes_in.fetch_add(up, Relaxed);
                    node.counters.bytes_out.fetch_add(down, Relaxed);
                }
                Err(e) => tracing::debug!("tcp client {peer}: {e}"),
            }
        }
    })
    .await
}

/// The wake target of the default pool, if it is managed.
fn wake_target(node: &Node) -> Option<TargetRef> {
    let active = node.active.load();
    let active = active.as_ref()?;
    if active.wake.is_empty() {
        return None;
    }
    active.wake.target(PoolRef::Default).cloned()
}

fn asleep(node: &Node) -> bool {
    node.active
        .load()
        .as_ref()
        .is_none_or(|a| a.balancer.members().is_empty())
}

/// Connects to the chosen member or, if that fails, one other member, and
/// sends the PROXY protocol header when configured. The member is open (not
/// idle) while the guard that comes with the stream lives.
async fn connect(
    node: &Node,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<(TcpStream, OpenGuard)> {
    let active = node.active.load_full()?;
    let key = match peer.ip() {
        std::net::IpAddr::V4(ip) => fnv1a(&ip.octets()),
        std::net::IpAddr::V6(ip) => fnv1a(&ip.octets()),
    };
    let pick = active.balancer.pick(key)?;
    node.counters.fail_open.store(pick.fail_open, Relaxed);
    let timeout = Duration::from_millis(u64::from(active.config.tuning.timeouts.connect_ms));
    let header = super::proxy_protocol::header(active.config.tuning.proxy_protocol, peer, local);
    let mut member = pick.member;
    for attempt in 0..2 {
        member.counters.requests.fetch_add(1, Relaxed);
        let connecting = super::connect_from(Some(active.config.listen.ip()), member.address);
        let result = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(mut stream)) => {
                let _ = stream.set_nodelay(true);
                match stream.write_all(&header).await {
                    Ok(()) => Ok(stream),
                    Err(e) => Err(e.to_string()),
                }
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {} ms", timeout.as_millis())),
        };
        match result {
            Ok(stream) => {
                record_outcome(&active.balancer, member, true);
                return Some((stream, OpenGuard::new(member.counters.clone())));
            }
            Err(e) => {
                if let Some(left_out) =
                    super::log_limit::allow("connect", &member.address.to_string())
                {
                    tracing::warn!(left_out, "connect {}: {e}", member.address);
                }
                member.counters.failures.fetch_add(1, Relaxed);
                record_outcome(&active.balancer, member, false);
            }
        }
        if attempt == 0 {
            member = active.balancer.retry_member(member)?;
        }
    }
    None
}

//! HTTP/2 with prior knowledge to members of an h2c pool. One connection
//! per member per node thread carries every request of that thread at once
//! (streams), so there is nothing to check out or in: the sender is cloned.
//! A connection that closed (GOAWAY, idle timeout of the member, reset) is
//! replaced on the next request. Requests that find no connection share
//! one connect: a burst of concurrent first requests opens one connection,
//! not one each.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{reason, BackendPool, ProxyBody, SendError};

type Connecting = Shared<BoxFuture<'static, Result<SendRequest<ProxyBody>, String>>>;

/// This thread's connection to one member.
enum Slot {
    /// Open, and when a request last went on it.
    Open(SendRequest<ProxyBody>, Instant),
    /// Being opened; requests meanwhile wait for the same connect.
    Connecting(Connecting),
}

thread_local! {
    static CONNECTIONS: RefCell<HashMap<SocketAddr, Slot>> = RefCell::new(HashMap::new());
}

impl BackendPool {
    /// Sends on this thread's connection to `addr` (a new one if `fresh` or
    /// if it closed).
    pub(super) async fn send_h2c(
        &self,
        addr: SocketAddr,
        req: Request<ProxyBody>,
        fresh: bool,
    ) -> Result<Response<Incoming>, SendError> {
        self.start_sweeper();
        let (mut sender, reused) = match self.open_or_connecting(addr, fresh) {
            Ok(open) => (open, true),
            Err(connecting) => {
                let connected = connecting.await;
                settle(addr, &connected);
                (connected.map_err(SendError::Unanswered)?, false)
            }
        };
        match sender.send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(e) => Err(classify(&e, reused)),
        }
    }

    /// The open connection to `addr` (marked as used now), unless `fresh`;
    /// else the connect in progress, started here if there was none.
    fn open_or_connecting(
        &self,
        addr: SocketAddr,
        fresh: bool,
    ) -> Result<SendRequest<ProxyBody>, Connecting> {
        CONNECTIONS.with(|c| {
            let mut c = c.borrow_mut();
            let now = Instant::now();
            match c.get_mut(&addr) {
                Some(Slot::Open(sender, used))
                    if !fresh && !sender.is_closed() && now.duration_since(*used) < self.idle =>
                {
                    *used = now;
                    return Ok(sender.clone());
                }
                Some(Slot::Connecting(connecting)) => return Err(connecting.clone()),
                _ => {}
            }
            let pool = *self;
            let connecting = async move { pool.connect_h2c(addr).await }.boxed().shared();
            c.insert(addr, Slot::Connecting(connecting.clone()));
            Err(connecting)
        })
    }

    async fn connect_h2c(self, addr: SocketAddr) -> Result<SendRequest<ProxyBody>, String> {
        let stream = self.connect_tcp(addr).await.map_err(|e| match e {
            SendError::Unanswered(r) | SendError::Stale(r) | SendError::Failed(r) => r,
        })?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("h2c handshake: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("h2c connection to {addr}: {e}");
            }
        });
        Ok(sender)
    }
}

/// The first waiter back from a connect puts its outcome in the slot: the
/// connection, or nothing, so the next request tries again.
fn settle(addr: SocketAddr, connected: &Result<SendRequest<ProxyBody>, String>) {
    CONNECTIONS.with(|c| {
        let mut c = c.borrow_mut();
        if !matches!(c.get(&addr), Some(Slot::Connecting(_))) {
            return;
        }
        match connected {
            Ok(sender) => c.insert(addr, Slot::Open(sender.clone(), Instant::now())),
            Err(_) => c.remove(&addr),
        };
    })
}

/// Drops connections closed or unused past `idle`; a request still in
/// flight on one keeps it open through its own clone of the sender.
pub(super) fn sweep(now: Instant, idle: Duration) {
    CONNECTIONS.with(|c| {
        c.borrow_mut().retain(|_, slot| match slot {
            Slot::Open(s, used) => !s.is_closed() && now.duration_since(*used) < idle,
            Slot::Connecting(_) => true,
        })
    });
}

/// A stream the member refused (`REFUSED_STREAM`, or one past a GOAWAY's
/// last stream) was surely not processed (RFC 9113 §8.7), and a reused
/// connection that closed under the request is stale: both may be sent
/// again. Anything else is classified as for HTTP/1.
fn classify(e: &hyper::Error, reused: bool) -> SendError {
    let h2 = h2_cause(e);
    let refused = h2.is_some_and(|h2| {
        h2.reason() == Some(h2::Reason::REFUSED_STREAM)
            || (h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR))
    });
    let closed = e.is_closed()
        || e.is_canceled()
        || e.is_incomplete_message()
        || h2.is_some_and(|h2| h2.is_io());
    if refused || (reused && closed) {
        SendError::Stale(reason(e))
    } else if closed {
        SendError::Unanswered(reason(e))
    } else {
        SendError::Failed(reason(e))
    }
}

fn h2_cause(e: &hyper::Error) -> Option<&h2::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = s.source();
    }
    None
}

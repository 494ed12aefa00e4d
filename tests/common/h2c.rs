//! A real HTTP/2-only backend (h2c, prior knowledge) on 127.0.0.1: hyper's
//! HTTP/2 server, which refuses HTTP/1.1 at the preface. It answers
//! `200 <name>` and remembers each request's version, authority and headers,
//! and how many connections it accepted. It stops (and joins its thread)
//! when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the backend saw of one request.
#[derive(Debug, Clone)]
pub struct H2cSeen {
    pub version: http::Version,
    pub authority: Option<String>,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct Record {
    seen: Mutex<Vec<H2cSeen>>,
    health: AtomicUsize,
    connections: AtomicUsize,
}

pub struct H2cBackend {
    addr: SocketAddr,
    record: Arc<Record>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl H2cBackend {
    pub fn start(name: &str) -> H2cBackend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind h2c backend");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Record::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (r, body) = (record.clone(), Bytes::from(name.to_string()));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listener, r, body, stopped));
        });
        H2cBackend {
            addr,
            record,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests other than lb-node's health checks.
    pub fn seen(&self) -> Vec<H2cSeen> {
        self.record.seen.lock().unwrap().clone()
    }

    /// Health-check requests (User-Agent `lb-node-health`).
    pub fn health_checks(&self) -> usize {
        self.record.health.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.record.connections.load(Ordering::SeqCst)
    }
}

impl Drop for H2cBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    record: Arc<Record>,
    body: Bytes,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = &mut stopped => break,
        };
        record.connections.fetch_add(1, Ordering::SeqCst);
        let (record, body) = (record.clone(), body.clone());
        conns.spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (record, body) = (record.clone(), body.clone());
                async move {
                    let health = req
                        .headers()
                        .get(http::header::USER_AGENT)
                        .is_some_and(|v| v == "lb-node-health");
                    if health {
                        record.health.fetch_add(1, Ordering::SeqCst);
                    } else {
                        let (head, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        record.seen.lock().unwrap().push(H2cSeen {
                            version: head.version,
                            authority: head.uri.authority().map(|a| a.to_string()),
                            path: head.uri.path().to_string(),
                            headers: head.headers,
                            body,
                        });
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(body)))
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    conns.abort_all();
}

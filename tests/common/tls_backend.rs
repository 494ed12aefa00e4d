//! A real HTTPS-only backend on 127.0.0.1 (tokio-rustls with a test CA's
//! leaf, hyper's HTTP/1.1 server behind it): it answers `200 <name>` and
//! counts requests and lb-node's health checks. Anything that is not TLS
//! fails the handshake, so every answer it gives came over TLS. It stops
//! (and joins its thread) when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::tls::Leaf;

#[derive(Default)]
struct Counts {
    requests: AtomicUsize,
    health: AtomicUsize,
}

pub struct TlsBackend {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsBackend {
    pub fn start(name: &str, leaf: &Leaf) -> TlsBackend {
        let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (c, body) = (counts.clone(), Bytes::from(name.to_string()));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let tcp = tokio::select! {
                        a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
                        _ = &mut stopped => break,
                    };
                    let (acceptor, c, body) = (acceptor.clone(), c.clone(), body.clone());
                    conns.spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service =
                            service_fn(move |req: http::Request<hyper::body::Incoming>| {
                                let health = req
                                    .headers()
                                    .get(http::header::USER_AGENT)
                                    .is_some_and(|v| v == "lb-node-health");
                                let counter = if health { &c.health } else { &c.requests };
                                counter.fetch_add(1, Ordering::SeqCst);
                                let body = body.clone();
                                async move {
                                    Ok::<_, std::convert::Infallible>(http::Response::new(
                                        Full::new(body),
                                    ))
                                }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
                conns.abort_all();
            });
        });
        TlsBackend {
            addr,
            counts,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests other than health checks, answered over TLS.
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    pub fn health_checks(&self) -> usize {
        self.counts.health.load(Ordering::SeqCst)
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

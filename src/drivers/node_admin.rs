//! The controller's client for an LB node's admin API (see `model::node`):
//! push a config, managed members and federation mappings, read the
//! status, follow the events. Every call has a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::dns::BoxFuture;
use crate::model::wake::{ManagedMembers, NodeEvent};
use crate::model::{NodeConfig, NodeStatus};

#[derive(Debug, Error)]
pub enum NodeAdminError {
    #[error("node admin API at {addr} is unreachable: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("node admin API at {addr} did not answer within {secs}s")]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error("node at {addr} refused the request ({status}): {message}")]
    Refused {
        addr: SocketAddr,
        status: u16,
        message: String,
    },
    #[error("node at {addr} sent an unreadable answer: {reason}")]
    BadAnswer { addr: SocketAddr, reason: String },
}

/// How the reconciler talks to a node's admin API; a trait so that logic
/// tests can stand in a fake node.
pub trait NodeAdmin: Send + Sync {
    fn status<'a>(
        &'a self,
        addr: SocketAddr,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<NodeStatus, NodeAdminError>>;
    fn put_config<'a>(
        &'a self,
        addr: SocketAddr,
        secret: &'a str,
        config: &'a NodeConfig,
    ) -> BoxFuture<'a, Result<NodeStatus, NodeAdminError>>;
}

impl NodeAdmin for NodeAdminClient {
    fn status<'a>(
        &'a self,
        addr: SocketAddr,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<NodeStatus, NodeAdminError>> {
        Box::pin(self.call(addr, secret, http::Method::GET, "/status", Bytes::new()))
    }

    fn put_config<'a>(
        &'a self,
        addr: SocketAddr,
        secret: &'a str,
        config: &'a NodeConfig,
    ) -> BoxFuture<'a, Result<NodeStatus, NodeAdminError>> {
        let body = serde_json::to_vec(config).expect("a NodeConfig always serializes");
        Box::pin(self.call(addr, secret, http::Method::PUT, "/config", body.into()))
    }
}

/// The real client: HTTP/1.1 with a small keep-alive pool.
#[derive(Clone)]
pub struct NodeAdminClient {
    http: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl NodeAdminClient {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(2)
            // Under the node's idle limit (`--admin-header-timeout-ms`,
            // 10 s): a connection the node may be closing is never reused.
            .pool_idle_timeout(Duration::from_secs(5))
            .build(connector);
        NodeAdminClient { http, timeout }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        secret: &str,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, NodeAdminError> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(http::header::AUTHORIZATION, format!("Bearer {secret}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| NodeAdminError::BadAnswer {
                addr,
                reason: e.to_string(),
            })?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| NodeAdminError::Unreachable {
                    addr,
                    reason: error_chain(&e),
                })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| NodeAdminError::Unreachable {
                    addr,
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok::<_, NodeAdminError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| NodeAdminError::Timeout {
                addr,
                secs: self.timeout.as_secs(),
            })??;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(NodeAdminError::Refused {
                addr,
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| NodeAdminError::BadAnswer {
            addr,
            reason: e.to_string(),
        })
    }
}

impl NodeAdminClient {
    /// `PUT /managed`: the instance's whole managed state (idempotent).
    pub async fn put_managed(
        &self,
        addr: SocketAddr,
        secret: &str,
        members: &ManagedMembers,
    ) -> Result<serde_json::Value, NodeAdminError> {
        let body = serde_json::to_vec(members).expect("ManagedMembers always serializes");
        match self
            .call::<serde_json::Value>(addr, secret, http::Method::PUT, "/managed", body.into())
            .await
        {
            // Accepted (2xx) with an empty or non-JSON body: still accepted.
            Err(NodeAdminError::BadAnswer { .. }) => Ok(serde_json::Value::Null),
            other => other,
        }
    }

    /// `PUT /mappings` (issue 18): every federation mapping lbd knows for
    /// the instance (idempotent; a node ignores a version older than the
    /// one it has). Answers the `mappings_version` the node reports in
    /// force, if it says; any 2xx is accepted. The body holds remote
    /// tokens: it is never logged.
    pub async fn put_mappings(
        &self,
        addr: SocketAddr,
        secret: &str,
        mappings: &crate::model::federation::NodeMappings,
    ) -> Result<Option<u64>, NodeAdminError> {
        let body = serde_json::to_vec(mappings).expect("NodeMappings always serializes");
        match self
            .call::<serde_json::Value>(addr, secret, http::Method::PUT, "/mappings", body.into())
            .await
        {
            Ok(v) => Ok(v
                .get("mappings_version")
                .and_then(serde_json::Value::as_u64)),
            Err(NodeAdminError::BadAnswer { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens `GET /events`: the node's NDJSON stream of [`NodeEvent`]s.
    /// Only the answer's head has the client's deadline; the stream stays
    /// open until either side drops it.
    pub async fn events(
        &self,
        addr: SocketAddr,
        secret: &str,
    ) -> Result<EventStream, NodeAdminError> {
        let req = http::Request::builder()
            .method(http::Method::GET)
            .uri(format!("http://{addr}/events"))
            .header(http::header::AUTHORIZATION, format!("Bearer {secret}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| NodeAdminError::BadAnswer {
                addr,
                reason: e.to_string(),
            })?;
        let resp = tokio::time::timeout(self.timeout, self.http.request(req))
            .await
            .map_err(|_| NodeAdminError::Timeout {
                addr,
                secs: self.timeout.as_secs(),
            })?
            .map_err(|e| NodeAdminError::Unreachable {
                addr,
                reason: error_chain(&e),
            })?;
        if !resp.status().is_success() {
            return Err(NodeAdminError::Refused {
                addr,
                status: resp.status().as_u16(),
                message: "GET /events refused".into(),
            });
        }
        Ok(EventStream {
            addr,
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }
}

/// An open `GET /events`, read line by line.
pub struct EventStream {
    addr: SocketAddr,
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl EventStream {
    /// The next event; `None` once the node closed the stream. A line that
    /// is not an event this lbd knows is skipped (a newer node may say more).
    pub async fn next(&mut self) -> Option<Result<NodeEvent, NodeAdminError>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<NodeEvent>(line) {
                    Ok(e) => return Some(Ok(e)),
                    Err(e) => {
                        tracing::debug!("node {}: skipping an unknown event line: {e}", self.addr);
                        continue;
                    }
                }
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Err(e) => {
                    return Some(Err(NodeAdminError::Unreachable {
                        addr: self.addr,
                        reason: e.to_string(),
                    }))
                }
            }
        }
    }
}

/// hyper's errors hide the cause (e.g. "connection refused") in the source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{admin, Node};

    /// A real node admin API on 127.0.0.1, served in-process.
    async fn serve_node(secret: &str) -> SocketAddr {
        let node = Node::new("1".into(), secret.into(), Vec::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, admin::router(node)).await });
        addr
    }

    #[tokio::test]
    async fn the_client_speaks_through_the_trait() {
        let addr = serve_node("abc123").await;
        let client: &dyn NodeAdmin = &NodeAdminClient::new(Duration::from_secs(5));
        let status = client.status(addr, "abc123").await.unwrap();
        assert_eq!(
            (status.node_id.as_str(), status.config_version),
            ("1", None)
        );
        match client.status(addr, "wrong").await {
            Err(NodeAdminError::Refused { status: 401, .. }) => {}
            other => panic!("expected a 401 refusal, got {other:?}"),
        }
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen_addr = listen.local_addr().unwrap();
        drop(listen);
        let config: NodeConfig = serde_json::from_value(serde_json::json!({
            "version": 4, "traffic_type": "tcp", "listen": listen_addr.to_string(),
            "algorithm": "round_robin",
            "backends": [{"address": "127.0.0.1:9", "weight": 1}],
            "health_check": {"protocol": "TCP", "port": 0, "request-path": "/",
                "criteria": {"interval": 60, "timeout": 1, "health-threshold": 2, "unhealth-threshold": 2}}
        }))
        .unwrap();
        let applied = client.put_config(addr, "abc123", &config).await.unwrap();
        assert_eq!(applied.config_version, Some(4));
        assert_eq!(applied.listening, Some(listen_addr));
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let client = NodeAdminClient::new(Duration::from_secs(5));
        match NodeAdmin::status(&client, closed, "s").await {
            Err(NodeAdminError::Unreachable { addr, .. }) => assert_eq!(addr, closed),
            other => panic!("expected unreachable, got {other:?}"),
        }
    }
}

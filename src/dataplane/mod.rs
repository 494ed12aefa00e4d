//! The data plane, `lb-node`: one process per LB node. It serves the admin
//! API (config in, status out) and proxies HTTP or TCP to the instance's
//! backends. Config changes swap an `Arc` (no lock on the request path), so
//! backends and algorithm change under load without a restart.

pub mod admin;
pub mod balance;
pub mod http;
pub mod stats;
pub mod tcp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::model::{NodeConfig, NodeStats, NodeStatus, TrafficType};
use balance::Balancer;
use stats::{MemberCounters, NodeCounters};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The config in force, with everything the request path needs precomputed.
pub struct ActiveConfig {
    pub config: NodeConfig,
    pub balancer: Balancer,
}

/// The listener that serves traffic, and the switch that stops its accept loop.
struct Listener {
    addr: SocketAddr,
    traffic: TrafficType,
    socket: Arc<TcpListener>,
    stop: watch::Sender<bool>,
}

/// One LB node's state, shared by the admin API and the proxies.
pub struct Node {
    pub node_id: String,
    pub secret: String,
    pub active: ArcSwapOption<ActiveConfig>,
    pub counters: NodeCounters,
    /// Per-member counters survive config changes, keyed by address.
    members: Mutex<HashMap<SocketAddr, Arc<MemberCounters>>>,
    listener: tokio::sync::Mutex<Option<Listener>>,
    last_error: Mutex<Option<String>>,
    http_client: http::BackendClient,
}

impl Node {
    pub fn new(node_id: String, secret: String) -> Arc<Node> {
        Arc::new(Node {
            node_id,
            secret,
            active: ArcSwapOption::empty(),
            counters: NodeCounters::default(),
            members: Mutex::default(),
            listener: tokio::sync::Mutex::new(None),
            last_error: Mutex::default(),
            http_client: http::BackendClient::new(),
        })
    }

    /// Applies a config: binds a new listener first when the address changes
    /// (on failure the old config keeps serving), then swaps the config in.
    pub async fn apply(self: &Arc<Self>, config: NodeConfig) -> Result<NodeStatus, ConfigError> {
        let mut listener = self.listener.lock().await;
        let rebind = listener.as_ref().is_none_or(|l| l.addr != config.listen);
        let restart = rebind
            || listener
                .as_ref()
                .is_some_and(|l| l.traffic != config.traffic_type);
        let socket = if rebind {
            match TcpListener::bind(config.listen).await {
                Ok(s) => Arc::new(s),
                Err(source) => {
                    let err = ConfigError::Bind {
                        addr: config.listen,
                        source,
                    };
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(err.to_string());
                    return Err(err);
                }
            }
        } else {
            listener.as_ref().expect("not rebinding").socket.clone()
        };
        self.active
            .store(Some(Arc::new(self.prepare(config.clone()))));
        if restart {
            if let Some(old) = listener.take() {
                let _ = old.stop.send(true);
            }
            let (stop, stop_rx) = watch::channel(false);
            let node = self.clone();
            let accept_socket = socket.clone();
            match config.traffic_type {
                TrafficType::Http => tokio::spawn(http::serve(node, accept_socket, stop_rx)),
                TrafficType::Tcp => tokio::spawn(tcp::serve(node, accept_socket, stop_rx)),
            };
            *listener = Some(Listener {
                addr: config.listen,
                traffic: config.traffic_type,
                socket,
                stop,
            });
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!(version = config.version, listen = %config.listen, backends = config.backends.len(), "config applied");
        drop(listener);
        Ok(self.status().await)
    }

    fn prepare(&self, config: NodeConfig) -> ActiveConfig {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let counters: Vec<Arc<MemberCounters>> = config
            .backends
            .iter()
            .map(|m| members.entry(m.address).or_default().clone())
            .collect();
        members.retain(|addr, _| config.backends.iter().any(|m| m.address == *addr));
        ActiveConfig {
            balancer: Balancer::new(&config.backends, counters),
            config,
        }
    }

    pub async fn status(&self) -> NodeStatus {
        let listening = self
            .listener
            .lock()
            .await
            .as_ref()
            .and_then(|l| l.socket.local_addr().ok());
        let active = self.active.load_full();
        let members = active
            .as_ref()
            .map(|a| a.balancer.member_stats())
            .unwrap_or_default();
        NodeStatus {
            node_id: self.node_id.clone(),
            config_version: active.as_ref().map(|a| a.config.version),
            listening,
            error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            stats: NodeStats {
                members,
                ..self.counters.snapshot()
            },
        }
    }

    /// Stops accepting traffic (in-flight connections finish on their own).
    pub async fn stop_listening(&self) {
        if let Some(l) = self.listener.lock().await.take() {
            let _ = l.stop.send(true);
        }
    }
}

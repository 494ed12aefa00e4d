//! The data plane, `lb-node`: one process per LB node. It serves the admin
//! API (config in, status out) and proxies HTTP or TCP to the instance's
//! backends. A config change swaps an `Arc` (no lock on the request path), so
//! members, weights, algorithm and health checks change under load without a
//! restart; requests in flight keep the config they started with, which is
//! how removed members drain.

pub mod admin;
pub mod balance;
pub mod health;
pub mod http;
pub mod proxy_protocol;
pub mod stats;
pub mod tcp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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
    pub client: http::BackendClient,
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
    /// `max_connections` of the config in force.
    pub max_connections: AtomicU64,
    /// Per-member counters and health survive config changes, keyed by address.
    members: Mutex<HashMap<SocketAddr, Arc<MemberCounters>>>,
    listener: tokio::sync::Mutex<Option<Listener>>,
    /// Stops the active health checks of the previous config.
    health_stop: Mutex<Option<watch::Sender<bool>>>,
    last_error: Mutex<Option<String>>,
}

impl Node {
    pub fn new(node_id: String, secret: String) -> Arc<Node> {
        Arc::new(Node {
            node_id,
            secret,
            active: ArcSwapOption::empty(),
            counters: NodeCounters::default(),
            max_connections: AtomicU64::new(u64::from(
                crate::model::tuning::DEFAULT_MAX_CONNECTIONS,
            )),
            members: Mutex::default(),
            listener: tokio::sync::Mutex::new(None),
            health_stop: Mutex::default(),
            last_error: Mutex::default(),
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
        self.max_connections
            .store(u64::from(config.max_connections), Relaxed);
        let active = Arc::new(self.prepare(config.clone()));
        self.start_health_checks(&active);
        self.active.store(Some(active));
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
        tracing::info!(version = config.version, listen = %config.listen, backends = config.backends.len(), algorithm = ?config.algorithm, "config applied");
        drop(listener);
        Ok(self.status().await)
    }

    fn prepare(&self, config: NodeConfig) -> ActiveConfig {
        let counters: Vec<Arc<MemberCounters>> = {
            let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
            let counters = config
                .backends
                .iter()
                .map(|m| members.entry(m.address).or_default().clone())
                .collect();
            members.retain(|addr, _| config.backends.iter().any(|m| m.address == *addr));
            counters
        };
        // Keep the pooled backend connections unless the timeouts changed.
        let client = match self.active.load_full() {
            Some(prev) if prev.config.timeouts == config.timeouts => prev.client.clone(),
            _ => http::BackendClient::new(&config.timeouts),
        };
        ActiveConfig {
            balancer: Balancer::new(config.algorithm, &config.backends, counters),
            client,
            config,
        }
    }

    /// Replaces the active health checks with those of `active`.
    fn start_health_checks(&self, active: &ActiveConfig) {
        let (stop, stop_rx) = watch::channel(false);
        if let Some(old) = self
            .health_stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(stop)
        {
            let _ = old.send(true);
        }
        let members = active
            .balancer
            .members()
            .iter()
            .map(|m| (m.address, m.counters.clone()))
            .collect();
        tokio::spawn(health::run_checks(
            members,
            active.config.health_check.clone(),
            stop_rx,
        ));
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

//! The data plane, `lb-node`: one process per LB node. It serves the admin
//! API (config in, status out) and proxies HTTP or TCP to the instance's
//! backends. A config change swaps an `Arc` (no lock on the request path), so
//! members, weights, algorithm and health checks change under load without a
//! restart; requests in flight keep the config they started with, which is
//! how removed members drain.

pub mod actions;
pub mod admin;
pub mod auth;
pub mod balance;
pub mod fdlimit;
pub mod federation;
pub mod forward;
pub mod health;
pub mod http;
pub mod idle;
pub mod log_limit;
pub mod logfile;
pub mod names;
pub mod pipeline;
pub mod pool;
pub mod pools;
pub mod privilege;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod rules;
pub mod smtp;
pub mod splice;
pub mod stats;
pub mod sticky;
pub mod tcp;
pub mod tls;
pub mod wake;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::model::policy::DEFAULT_POOL;
use crate::model::{NodeConfig, NodeStats, NodeStatus, TrafficType};
use balance::Balancer;
use pools::{MemberRegistry, NamedPools, PoolRef, UpstreamSets};
use stats::NodeCounters;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The old config keeps serving.
    #[error("policy: {0}")]
    Policy(#[from] rules::RuleError),
    /// The old config keeps serving.
    #[error("{0}")]
    Tls(#[from] tls::config::TlsConfigError),
    /// The old config keeps serving.
    #[error("backend_tls: {0}")]
    BackendTls(String),
    /// The old config keeps serving.
    #[error("federation: {0}")]
    Federation(String),
}

impl ActiveConfig {
    /// The balancer of a pool a rule resolved to.
    pub fn pool(&self, pool: PoolRef) -> &Balancer {
        match pool {
            PoolRef::Default => &self.balancer,
            PoolRef::Named(i) => &self.pools.get(i).balancer,
        }
    }
}

/// The config in force, with everything the request path needs precomputed.
pub struct ActiveConfig {
    pub config: NodeConfig,
    /// The default pool (the seed's `backends`; TCP instances have only it).
    pub balancer: Balancer,
    /// The policy's named pools.
    pub pools: NamedPools,
    /// The policy's rules, compiled; empty without rules.
    pub rules: rules::RuleTable,
    /// Balancers over auth-service `upstream` lists, carried across configs.
    pub upstreams: Arc<UpstreamSets>,
    pub client: forward::BackendClient,
    /// The pipeline's auth stage (`auth::stage`); empty without auth.
    pub auth: auth::AuthStage,
    /// The pipeline's rate limit stage; empty without limits.
    pub limits: rate_limit::RateLimitStage,
    /// The wake queues of managed pools; empty without managed pools.
    pub wake: wake::WakeStage,
    /// Sticky routing per pool; empty without `sticky`.
    pub sticky: sticky::StickyStage,
    /// The TLS server config (`https`): certificates, ALPN, versions.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Federation routing; `None` without `federation`.
    pub federation: Option<federation::FederationStage>,
}

/// The listening sockets that serve traffic (one per worker runtime, or one
/// on the node's own runtime), and the switch that stops their accept loops.
struct Listener {
    addr: SocketAddr,
    traffic: TrafficType,
    sockets: Vec<(Option<Handle>, Arc<TcpListener>)>,
    stop: watch::Sender<bool>,
}

/// Accepts connections until `stop` turns true, handing each to `handle` on
/// its own task. An accept error (e.g. out of file descriptors) pauses briefly
/// instead of spinning.
pub(crate) async fn accept_loop<F, Fut>(
    listener: Arc<TcpListener>,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => drop(tokio::spawn(handle(stream, peer))),
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Connects to a member from the node's own address `source` (its listen
/// address), so a connection never depends on another address that happens
/// to be the interface's primary one (nodes of a project share a bridge).
pub(crate) async fn connect_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let source = source.filter(|s| !s.is_unspecified() && s.is_ipv4() == addr.is_ipv4());
    let Some(source) = source else {
        return tokio::net::TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// One LB node's state, shared by the admin API and the proxies.
pub struct Node {
    pub node_id: String,
    pub secret: String,
    pub active: ArcSwapOption<ActiveConfig>,
    pub counters: NodeCounters,
    /// `max_connections` of the config in force, capped by `fd_cap`.
    pub max_connections: AtomicU64,
    /// The most connections the file descriptor limit allows (see `fdlimit`).
    fd_cap: AtomicU64,
    /// The cap was logged already: it is said once, not on every config.
    fd_cap_logged: std::sync::atomic::AtomicBool,
    /// Per-member counters and health survive config changes, keyed by
    /// pool and address (`pools.rs` says why per pool).
    members: MemberRegistry,
    /// The rustls client configs of the pools' `backend_tls`.
    member_tls: pool::tls::MemberTlsCache,
    /// Managed pools: the pushed members, the wake queues, the events.
    pub wake: wake::Wake,
    /// Federation mappings and exchanged tokens (`federation`).
    pub federation: federation::FederationState,
    /// Host-name backends and what they resolved to.
    names: Arc<names::Names>,
    /// The last config applied as lbd sent it, before the pushed managed
    /// members are merged in (a `PUT /managed` is merged into it).
    sent: Mutex<Option<NodeConfig>>,
    listener: tokio::sync::Mutex<Option<Listener>>,
    /// `tls.redirect_http_port`'s plain listener (changed under `listener`'s lock).
    redirect: Mutex<Option<tls::redirect::Redirect>>,
    /// Stops the active health checks of the previous config.
    health_stop: Mutex<Option<watch::Sender<bool>>>,
    last_error: Mutex<Option<String>>,
    /// Thread-per-core mode: one single-threaded runtime per worker, each with
    /// its own `SO_REUSEPORT` listener, so the kernel spreads connections and
    /// no task moves between threads. Empty: serve on the node's own runtime.
    workers: Vec<Handle>,
}

impl Node {
    /// A node serving traffic on the runtime it is used from, or on `workers`.
    pub fn new(node_id: String, secret: String, workers: Vec<Handle>) -> Arc<Node> {
        Arc::new(Node {
            node_id,
            secret,
            active: ArcSwapOption::empty(),
            counters: NodeCounters::default(),
            max_connections: AtomicU64::new(u64::from(
                crate::model::tuning::DEFAULT_MAX_CONNECTIONS,
            )),
            fd_cap: AtomicU64::new(u64::MAX),
            fd_cap_logged: Default::default(),
            members: MemberRegistry::default(),
            member_tls: Default::default(),
            wake: wake::Wake::default(),
            federation: Default::default(),
            names: Arc::default(),
            sent: Mutex::default(),
            listener: tokio::sync::Mutex::new(None),
            redirect: Mutex::default(),
            health_stop: Mutex::default(),
            last_error: Mutex::default(),
            workers,
        })
    }

    /// Caps `max_connections` to what a soft `RLIMIT_NOFILE` of
    /// `soft_limit` fds allows (lb-node calls it at start).
    pub fn limit_fds(&self, soft_limit: u64) {
        self.fd_cap
            .store(fdlimit::connection_cap(soft_limit), Relaxed);
    }

    /// Applies a config: binds a new listener first when the address changes
    /// (on failure the old config keeps serving), then swaps the config in.
    pub async fn apply(self: &Arc<Self>, config: NodeConfig) -> Result<NodeStatus, ConfigError> {
        // New host names are resolved first, before the lock that `status`
        // takes too: a slow DNS server never delays a heartbeat.
        self.names.sync(&config, self.on_names_changed()).await;
        let mut listener = self.listener.lock().await;
        let rebind = listener.as_ref().is_none_or(|l| l.addr != config.listen);
        let restart = rebind
            || listener
                .as_ref()
                .is_some_and(|l| l.traffic != config.traffic_type);
        let sockets = if rebind {
            match self.bind(config.listen) {
                Ok(s) => s,
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
            listener.as_ref().expect("not rebinding").sockets.clone()
        };
        let wanted = u64::from(config.tuning.max_connections);
        let cap = self.fd_cap.load(Relaxed);
        if wanted > cap && !self.fd_cap_logged.swap(true, Relaxed) {
            tracing::warn!(
                "max_connections {wanted} capped to {cap}: the file descriptor limit allows no more ({} fds a connection)",
                fdlimit::FDS_PER_CONNECTION
            );
        }
        let prepared = self
            .prepare(self.merged(config.clone()))
            .and_then(|active| Ok((active, self.bind_redirect(&config)?)));
        let (active, redirect) = match prepared {
            Ok((active, redirect)) => (Arc::new(active), redirect),
            Err(err) => {
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(err.to_string());
                return Err(err);
            }
        };
        self.max_connections.store(wanted.min(cap), Relaxed);
        self.start_health_checks(&active);
        self.active.store(Some(active));
        if let Some(socket) = redirect {
            self.start_redirect(socket, &config);
        }
        self.wake.settle();
        if let Some(f) = &config.federation {
            self.federation.mappings.apply(&f.mappings);
        }
        *self.sent.lock().unwrap_or_else(|p| p.into_inner()) = Some(config.clone());
        if restart {
            if let Some(old) = listener.take() {
                let _ = old.stop.send(true);
            }
            let (stop, stop_rx) = watch::channel(false);
            for (handle, socket) in &sockets {
                let (node, socket, stop_rx) = (self.clone(), socket.clone(), stop_rx.clone());
                let traffic = config.traffic_type;
                let serve = async move {
                    match traffic {
                        TrafficType::Http => http::serve(node, socket, stop_rx).await,
                        TrafficType::Https => tls::serve(node, socket, stop_rx).await,
                        TrafficType::Tcp => tcp::serve(node, socket, stop_rx).await,
                        TrafficType::Smtp => smtp::serve(node, socket, stop_rx).await,
                    }
                };
                match handle {
                    Some(h) => drop(h.spawn(serve)),
                    None => drop(tokio::spawn(serve)),
                }
            }
            *listener = Some(Listener {
                addr: config.listen,
                traffic: config.traffic_type,
                sockets,
                stop,
            });
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!(version = config.version, listen = %config.listen, backends = config.backends.len(), algorithm = ?config.tuning.algorithm, pools = config.policy.pools.len(), rules = config.policy.rules.len(), "config applied");
        drop(listener);
        Ok(self.status().await)
    }

    /// Applies a `PUT /managed`: the managed pools' members change, the
    /// rest of the config in force stays; held requests of a target that
    /// got a member are released once its balancer has it.
    pub async fn apply_managed(
        self: &Arc<Self>,
        members: crate::model::wake::ManagedMembers,
    ) -> Result<NodeStatus, ConfigError> {
        // The listener lock orders this with `apply`.
        let listener = self.listener.lock().await;
        self.wake.store_members(members);
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(config) = sent {
            let active = Arc::new(self.prepare(self.merged(config))?);
            self.start_health_checks(&active);
            self.active.store(Some(active));
        }
        self.wake.settle();
        drop(listener);
        Ok(self.status().await)
    }

    /// Applies a `PUT /mappings`: lbd's whole set of federation mappings
    /// (an older set than the one in force is ignored). The config stays.
    pub async fn apply_mappings(
        &self,
        mappings: crate::model::federation::NodeMappings,
    ) -> NodeStatus {
        if !self.federation.mappings.apply(&mappings) {
            tracing::debug!(
                "mappings version {} is older than the one in force",
                mappings.version
            );
        }
        self.status().await
    }

    /// Binds `tls.redirect_http_port` when it is wanted and not bound yet;
    /// stops the current one when it is no longer wanted.
    fn bind_redirect(
        &self,
        config: &NodeConfig,
    ) -> Result<Option<std::net::TcpListener>, ConfigError> {
        let wanted = config
            .tls
            .as_ref()
            .and_then(|t| t.redirect_http_port)
            .filter(|_| config.traffic_type == TrafficType::Https)
            .map(|p| SocketAddr::new(config.listen.ip(), p));
        let mut current = self.redirect.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().map(|r| r.addr) == wanted {
            return Ok(None);
        }
        if let Some(old) = current.take() {
            old.stop();
        }
        let Some(addr) = wanted else { return Ok(None) };
        tls::redirect::Redirect::bind(addr)
            .map(Some)
            .map_err(|source| ConfigError::Bind { addr, source })
    }

    fn start_redirect(self: &Arc<Self>, socket: std::net::TcpListener, config: &NodeConfig) {
        match tls::redirect::Redirect::start(self.clone(), socket, config.listen.port()) {
            Ok(r) => *self.redirect.lock().unwrap_or_else(|p| p.into_inner()) = Some(r),
            Err(e) => tracing::warn!("redirect listener: {e}"),
        }
    }

    /// The config as sent with the managed pools' pushed members and the
    /// resolved addresses of the host-name backends merged in.
    fn merged(&self, config: NodeConfig) -> NodeConfig {
        self.names.merge(self.wake.merge(config))
    }

    /// What a host name's changed answer does: the config in force is
    /// prepared again with the new members (as a `PUT /managed` does).
    fn on_names_changed(self: &Arc<Self>) -> names::OnChange {
        let node = Arc::downgrade(self);
        Arc::new(move || {
            let node = node.clone();
            Box::pin(async move {
                if let Some(node) = node.upgrade() {
                    node.reprepare().await;
                }
            })
        })
    }

    /// Prepares the last config sent again (its merged members changed).
    async fn reprepare(self: &Arc<Self>) {
        // The listener lock orders this with `apply` and `apply_managed`.
        let listener = self.listener.lock().await;
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(config) = sent {
            match self.prepare(self.merged(config)) {
                Ok(active) => {
                    let active = Arc::new(active);
                    self.start_health_checks(&active);
                    self.active.store(Some(active));
                    self.wake.settle();
                }
                Err(e) => tracing::warn!("re-preparing the config: {e}"),
            }
        }
        drop(listener);
    }

    /// Binds the listener: one socket, or one `SO_REUSEPORT` socket per worker,
    /// registered with that worker's reactor.
    fn bind(&self, addr: SocketAddr) -> std::io::Result<Vec<(Option<Handle>, Arc<TcpListener>)>> {
        if self.workers.is_empty() {
            let socket = std::net::TcpListener::bind(addr)?;
            socket.set_nonblocking(true)?;
            return Ok(vec![(None, Arc::new(TcpListener::from_std(socket)?))]);
        }
        self.workers
            .iter()
            .map(|h| {
                let _runtime = h.enter();
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                socket.set_reuseport(true)?;
                socket.bind(addr)?;
                Ok((Some(h.clone()), Arc::new(socket.listen(1024)?)))
            })
            .collect()
    }

    /// Everything a config needs on the request path; a policy that does
    /// not compile (a controller of another version) is refused.
    fn prepare(&self, config: NodeConfig) -> Result<ActiveConfig, ConfigError> {
        let algorithm = sticky::algorithm(config.tuning.algorithm, config.sticky.as_ref());
        let protocol = config.tuning.backend_protocol;
        let tls = self
            .member_tls
            .get(config.backend_tls.as_ref())
            .map_err(ConfigError::BackendTls)?;
        let balancer = self
            .members
            .balancer(DEFAULT_POOL, algorithm, protocol, &config.backends)
            .with_tls(tls);
        let pools = NamedPools::new(&config.policy, protocol, &self.members, &self.member_tls)
            .map_err(ConfigError::BackendTls)?;
        let sticky = sticky::StickyStage::new(&config, &balancer, &pools);
        let rules = rules::RuleTable::compile(&config.policy, &pools)?;
        let federation = config
            .federation
            .as_ref()
            .map(|f| federation::FederationStage::new(&f.federation, &pools))
            .transpose()
            .map_err(ConfigError::Federation)?;
        let wake = self.wake.stage(&config, &balancer, &pools, &self.members);
        self.members.retain(&config.backends, &config.policy);
        let previous = self.active.load_full();
        // Keep the pooled backend connections unless the timeouts changed.
        let client = match &previous {
            Some(prev)
                if prev.config.tuning.timeouts == config.tuning.timeouts
                    && prev.config.listen.ip() == config.listen.ip() =>
            {
                prev.client.clone()
            }
            _ => forward::BackendClient::new(&config.tuning.timeouts, config.listen.ip()),
        };
        let previous = previous.as_deref();
        // Built again only when the certificates or versions change.
        let tls = match (previous, &config.tls) {
            (_, None) => None,
            (Some(p), Some(t)) if p.config.tls.as_ref() == Some(t) && p.tls.is_some() => {
                p.tls.clone()
            }
            (_, Some(t)) => Some(tls::config::build(t)?),
        };
        Ok(ActiveConfig {
            tls,
            balancer,
            pools,
            rules,
            upstreams: previous.map_or_else(Default::default, |p| p.upstreams.clone()),
            client,
            auth: auth::AuthStage::new(&config.policy, previous.map(|p| &p.auth)),
            limits: rate_limit::RateLimitStage::new(
                &config.policy,
                config.serving_nodes,
                config.redis.as_ref(),
                previous.map(|p| &p.limits),
            ),
            wake,
            sticky,
            federation,
            config,
        })
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
        let members = |b: &Balancer| -> Vec<(SocketAddr, Arc<stats::MemberCounters>)> {
            b.members()
                .iter()
                .map(|m| (m.address, m.counters.clone()))
                .collect()
        };
        // Each pool runs its own checks: a dead member of one pool is taken
        // down by that pool's health check only.
        tokio::spawn(health::run_checks(
            members(&active.balancer),
            active.config.health_check.clone(),
            active.balancer.protocol(),
            active.balancer.tls().cloned(),
            stop_rx.clone(),
        ));
        for pool in active.pools.iter() {
            tokio::spawn(health::run_checks(
                members(&pool.balancer),
                pool.health_check.clone(),
                pool.balancer.protocol(),
                pool.balancer.tls().cloned(),
                stop_rx.clone(),
            ));
        }
    }

    pub async fn status(&self) -> NodeStatus {
        let listening = self
            .listener
            .lock()
            .await
            .as_ref()
            .and_then(|l| l.sockets.first())
            .and_then(|(_, s)| s.local_addr().ok());
        let active = self.active.load_full();
        let members = active
            .as_ref()
            .map(|a| {
                let mut members = a.balancer.member_stats();
                members.extend(a.pools.member_stats());
                self.wake.label_members(&mut members);
                members
            })
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
                managed: self.wake.stats(),
                names: self.names.status(),
                ..self.counters.snapshot()
            },
            managed_version: self.wake.version(),
            mappings_version: self.federation.mappings.version(),
        }
    }

    /// Stops accepting traffic (in-flight connections finish on their own).
    pub async fn stop_listening(&self) {
        if let Some(l) = self.listener.lock().await.take() {
            let _ = l.stop.send(true);
        }
        if let Some(r) = self
            .redirect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            r.stop();
        }
    }

    /// Stops accepting, then waits up to `grace` for open connections to
    /// finish: HTTP connections close after their request in flight, TCP
    /// relays when either side ends. Returns how many were still open.
    pub async fn drain(&self, grace: std::time::Duration) -> u64 {
        self.stop_listening().await;
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let open = self.counters.active_connections.load(Relaxed);
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

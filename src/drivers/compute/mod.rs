//! Compute drivers: where an LB node runs (a local process now, a VM later).

#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod process;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use thiserror::Error;

use crate::model::{NodeId, Warning};

#[derive(Debug, Error)]
pub enum ComputeError {
    #[error("cannot start node {node_id}: {reason}")]
    Start { node_id: NodeId, reason: String },
    #[error("cannot stop node {node_id}: {reason}")]
    Stop { node_id: NodeId, reason: String },
    #[error("compute driver I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("compute driver task failed: {0}")]
    Task(String),
}

/// What a compute driver found wrong with the host, shared with the API,
/// which shows it with each instance. Written rarely (once, by the libvirt
/// driver's KVM probe), read on every `info`.
#[derive(Debug, Clone, Default)]
pub struct ComputeWarnings(Arc<Mutex<Vec<Warning>>>);

impl ComputeWarnings {
    pub fn add(&self, warning: Warning) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(warning);
    }

    pub fn list(&self) -> Vec<Warning> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What a node needs to boot: who it is, where its admin API listens, its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub node_id: NodeId,
    pub admin_addr: SocketAddr,
    pub secret: String,
    /// The network namespace the node runs in (netns driver), if any.
    pub netns: Option<std::path::PathBuf>,
    /// `<project>-<instance>`: DNS labels, so safe in a VM's name.
    pub name: String,
    /// Prefix length of the node's subnet (for a VM's own interface).
    pub prefix_len: u8,
}

/// What the driver sees of a node right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeObservation {
    Running {
        pid: u32,
    },
    /// It ran and stopped; `reason` says how (exit code or signal).
    Exited {
        reason: String,
    },
    Absent,
}

/// A node that ended by itself, as its driver saw it at once (the process
/// driver's reaper): lbd did not stop it. The health checker fails such a
/// node over without waiting for missed checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeExit {
    pub node_id: NodeId,
    /// The process that ended, so a notice about an earlier process of the
    /// same node is told apart.
    pub pid: u32,
    /// How it ended ("killed by signal 9"), for the event log.
    pub reason: String,
}

/// Where a driver reports [`NodeExit`]s. Unbounded: one message per exit,
/// sent from the driver's own (blocking) threads without waiting.
pub type ExitSink = tokio::sync::mpsc::UnboundedSender<NodeExit>;

/// A node implementation. Every call is idempotent and quick: readiness is
/// awaited by the reconciler through the node's admin API, not here.
pub trait ComputeDriver: Send + Sync {
    fn name(&self) -> &'static str;
    /// Starts the node unless it already runs.
    fn ensure_node(&self, spec: &NodeSpec) -> Result<NodeObservation, ComputeError>;
    fn observe_node(&self, node_id: NodeId) -> NodeObservation;
    /// Stops and forgets the node; nothing to do when it is already gone.
    fn destroy_node(&self, node_id: NodeId) -> Result<(), ComputeError>;
    /// Every node this driver runs, to find orphans that have no row.
    fn list_nodes(&self) -> Vec<NodeId>;
    /// The last lines of the node's log, for error messages.
    fn log_tail(&self, node_id: NodeId) -> String;
    /// How long a started node may take to answer its admin API (a VM boots
    /// far slower than a process starts); `None`: the reconciler's default.
    fn ready_timeout(&self) -> Option<std::time::Duration> {
        None
    }
    /// Whether the node runs in the host's (or project namespace's) network
    /// stack and needs its address there (processes), rather than bringing
    /// its own interface (VMs).
    fn node_address_on_host(&self) -> bool {
        true
    }
    /// Called once when lbd stops, to end the driver's own background work
    /// (the libvirt driver's KVM probe VM); nodes keep running.
    fn shutdown(&self) {}
    /// From now on, report every node that ends by itself (not through
    /// [`ComputeDriver::destroy_node`]) to `sink` as soon as it does. A
    /// driver that cannot tell ignores this; missed health checks then find
    /// such nodes. Quick: only keeps the sink.
    fn report_exits(&self, _sink: ExitSink) {}
}

/// The one way async code calls a [`ComputeDriver`]: drivers block (they
/// wait on processes, on libvirt, on the file system), so every call runs on
/// a blocking thread and the runtime's workers stay free for DNS, the API and
/// health checks.
#[derive(Clone)]
pub struct Compute(Arc<dyn ComputeDriver>);

impl Compute {
    pub fn new(driver: Arc<dyn ComputeDriver>) -> Self {
        Compute(driver)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn ComputeDriver) -> T + Send + 'static,
    ) -> Result<T, ComputeError> {
        let driver = self.0.clone();
        tokio::task::spawn_blocking(move || call(driver.as_ref()))
            .await
            .map_err(|e| ComputeError::Task(e.to_string()))
    }

    pub async fn ensure_node(&self, spec: NodeSpec) -> Result<NodeObservation, ComputeError> {
        self.blocking(move |d| d.ensure_node(&spec)).await?
    }

    /// An error here means the driver could not be asked (its task
    /// failed), not that the node is gone: callers must not act on it.
    pub async fn observe_node(&self, node_id: NodeId) -> Result<NodeObservation, ComputeError> {
        self.blocking(move |d| d.observe_node(node_id)).await
    }

    /// [`Compute::observe_node`] for many nodes in one blocking call: the
    /// reconciler's check of settled instances on every pass.
    pub async fn observe_nodes(
        &self,
        node_ids: Vec<NodeId>,
    ) -> Result<Vec<(NodeId, NodeObservation)>, ComputeError> {
        self.blocking(move |d| {
            node_ids
                .into_iter()
                .map(|id| (id, d.observe_node(id)))
                .collect()
        })
        .await
    }

    pub async fn destroy_node(&self, node_id: NodeId) -> Result<(), ComputeError> {
        self.blocking(move |d| d.destroy_node(node_id)).await?
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeId>, ComputeError> {
        self.blocking(|d| d.list_nodes()).await
    }

    pub async fn log_tail(&self, node_id: NodeId) -> String {
        self.blocking(move |d| d.log_tail(node_id))
            .await
            .unwrap_or_default()
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    pub fn ready_timeout(&self) -> Option<Duration> {
        self.0.ready_timeout()
    }

    pub fn node_address_on_host(&self) -> bool {
        self.0.node_address_on_host()
    }

    /// See [`ComputeDriver::report_exits`] (it only keeps the sink, so it
    /// runs here, not on a blocking thread).
    pub fn report_exits(&self, sink: ExitSink) {
        self.0.report_exits(sink)
    }

    pub async fn shutdown(&self) {
        let _ = self.blocking(|d| d.shutdown()).await;
    }
}

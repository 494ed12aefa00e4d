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

    pub async fn shutdown(&self) {
        let _ = self.blocking(|d| d.shutdown()).await;
    }
}

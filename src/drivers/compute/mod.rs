//! Compute drivers: where an LB node runs (a local process now, a VM later).

#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod process;

use std::net::SocketAddr;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ComputeError {
    #[error("cannot start node {node_id}: {reason}")]
    Start { node_id: i64, reason: String },
    #[error("cannot stop node {node_id}: {reason}")]
    Stop { node_id: i64, reason: String },
    #[error("compute driver I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// What a node needs to boot: who it is, where its admin API listens, its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub node_id: i64,
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
    fn observe_node(&self, node_id: i64) -> NodeObservation;
    /// Stops and forgets the node; nothing to do when it is already gone.
    fn destroy_node(&self, node_id: i64) -> Result<(), ComputeError>;
    /// Every node this driver runs, to find orphans that have no row.
    fn list_nodes(&self) -> Vec<i64>;
    /// The last lines of the node's log, for error messages.
    fn log_tail(&self, node_id: i64) -> String;
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
}

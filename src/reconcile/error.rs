//! What can stop a reconcile step. The message of each is what the instance
//! shows as its `status_reason` when it goes to ERROR.

use std::net::IpAddr;

use thiserror::Error;

use crate::dns::DnsError;
use crate::drivers::compute::{ComputeError, NodeObservation};
use crate::drivers::network::NetworkError;
use crate::drivers::node_admin::NodeAdminError;
use crate::model::NodeId;
use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Compute(#[from] ComputeError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    NodeAdmin(#[from] NodeAdminError),
    #[error("DNS: {0}")]
    Dns(#[from] DnsError),
    #[error("the project is gone")]
    ProjectGone,
    #[error("subnet {0} has no free address for another node")]
    SubnetFull(ipnet::Ipv4Net),
    #[error("IPv6 node addresses are not supported")]
    Ipv6Unsupported,
    #[error("node did not start: {0:?}")]
    NotStarted(NodeObservation),
    #[error("{reason}; log: {log}")]
    NodeExited { reason: String, log: String },
    #[error("not ready after {secs}s: {last_error}; log: {log}")]
    NotReady {
        secs: u64,
        last_error: NodeAdminError,
        log: String,
    },
    #[error("{task} task failed: {reason}")]
    Task { task: &'static str, reason: String },
    #[error("node {id} ({addr}): {source}")]
    Node {
        id: NodeId,
        addr: IpAddr,
        source: Box<ReconcileError>,
    },
    /// Several steps of one instance failed in the same pass.
    #[error("{}", join(.0))]
    Several(Vec<ReconcileError>),
}

fn join(errors: &[ReconcileError]) -> String {
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    all.join("; ")
}

impl ReconcileError {
    /// The store was locked or busy: the step is retried, but it does not
    /// count as a failure of the instance (it is not the instance's fault).
    pub fn is_store_unavailable(&self) -> bool {
        match self {
            ReconcileError::Store(e) => e.is_unavailable(),
            ReconcileError::Node { source, .. } => source.is_store_unavailable(),
            ReconcileError::Several(all) => all.iter().all(ReconcileError::is_store_unavailable),
            _ => false,
        }
    }
}

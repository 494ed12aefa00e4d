//! Network drivers: where a project's subnet lives and how its nodes get addresses.

pub mod claims;
pub mod loopback;
mod netlink;
pub mod netns;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use thiserror::Error;

use crate::model::ProjectId;

#[derive(Debug, Error)]
pub enum NetworkError {
    /// The subnet cannot be used with this driver.
    #[error("subnet {subnet} cannot be used: {reason}")]
    Unusable { subnet: Ipv4Net, reason: String },
    #[error("subnet {subnet} overlaps project {project:?} ({other})")]
    Overlap {
        subnet: Ipv4Net,
        project: String,
        other: Ipv4Net,
    },
    /// Another lbd on this host holds the subnet (or part of it).
    #[error("subnet {subnet} is in use on this host: {reason}")]
    InUse { subnet: Ipv4Net, reason: String },
    #[error("the subnet pool {pool} has no free /{prefix} left")]
    PoolExhausted { pool: Ipv4Net, prefix: u8 },
    #[error("network setup failed: {0}")]
    Setup(String),
    #[error("backend {backend} cannot be reached from the project network: {reason}")]
    Backend { backend: SocketAddr, reason: String },
}

/// A project network implementation. Calls are idempotent (`*_ensure` style):
/// calling one twice is the same as calling it once.
pub trait NetworkDriver: Send + Sync {
    /// The driver's name, as given to `--network`.
    fn name(&self) -> &'static str;
    /// Where subnets are allocated from, and the prefix each project gets.
    fn pool(&self) -> (Ipv4Net, u8);
    /// Checks a subnet given by a user (overlap with other projects is checked by the caller).
    fn check_subnet(&self, subnet: &Ipv4Net) -> Result<(), NetworkError>;
    /// Addresses no project may use (e.g. 127.0.0.0/16 on loopback).
    fn reserved(&self) -> Vec<Ipv4Net>;
    /// Claims `subnet`, given by a user, on this host for a new project of
    /// this lbd; [`NetworkError::InUse`] when another lbd holds (part of) it.
    fn claim_subnet(&self, _subnet: &Ipv4Net) -> Result<(), NetworkError> {
        Ok(())
    }
    /// Claims the first of `candidates` no other lbd on this host holds,
    /// for a new project; `None` when all are taken.
    fn claim_free_subnet(
        &self,
        candidates: &mut dyn Iterator<Item = Ipv4Net>,
    ) -> Result<Option<Ipv4Net>, NetworkError> {
        Ok(candidates.next())
    }
    /// Takes the claim of a stored project's subnet again (at start);
    /// [`NetworkError::InUse`] when another lbd took it meanwhile.
    fn reclaim_subnet(&self, _subnet: &Ipv4Net) -> Result<(), NetworkError> {
        Ok(())
    }
    /// Gives back the claim of a subnet no project of this lbd has (any more).
    fn release_subnet(&self, _subnet: &Ipv4Net) {}
    /// Makes the project's network exist (and holds its subnet's claim).
    fn ensure_project_network(
        &self,
        project_id: ProjectId,
        subnet: &Ipv4Net,
    ) -> Result<(), NetworkError>;
    /// Removes the project's network; nothing to do when it is already gone.
    fn remove_project_network(&self, project_id: ProjectId) -> Result<(), NetworkError>;
    /// Checks that LB nodes of a project can reach `backend`.
    fn check_backend(&self, _backend: SocketAddr) -> Result<(), NetworkError> {
        Ok(())
    }
    /// Ids of the projects whose networks exist, to find orphans.
    fn project_networks(&self) -> Vec<ProjectId> {
        Vec::new()
    }
    /// The network namespace a project's node processes run in, if any.
    fn node_netns(&self, _project_id: ProjectId) -> Option<PathBuf> {
        None
    }
    /// Puts the node addresses `wanted` on the project network; with `exact`,
    /// also removes the addresses of nodes that are gone.
    fn set_node_addresses(
        &self,
        _project_id: ProjectId,
        _subnet: &Ipv4Net,
        _wanted: &[Ipv4Addr],
        _exact: bool,
    ) -> Result<(), NetworkError> {
        Ok(())
    }
}

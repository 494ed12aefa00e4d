//! Network drivers: where a project's subnet lives and how its nodes get addresses.

pub mod loopback;

use ipnet::Ipv4Net;
use thiserror::Error;

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
    #[error("the subnet pool {pool} has no free /{prefix} left")]
    PoolExhausted { pool: Ipv4Net, prefix: u8 },
    #[error("network setup failed: {0}")]
    Setup(String),
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
    /// Makes the project's network exist.
    fn ensure_project_network(&self, project_id: i64, subnet: &Ipv4Net)
        -> Result<(), NetworkError>;
    /// Removes the project's network; nothing to do when it is already gone.
    fn remove_project_network(&self, project_id: i64) -> Result<(), NetworkError>;
}

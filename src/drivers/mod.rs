//! Drivers turn desired state into real resources. Each kind sits behind a
//! small trait with one file per implementation, so the reconciler never
//! knows whether a node is a process or a VM.

pub mod backend;
pub mod compute;
pub mod network;
pub mod node_admin;

#[cfg(test)]
pub mod fake;

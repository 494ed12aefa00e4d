//! Managed backends' compute (issue 16): what runs one backend of a managed
//! pool. A small trait, one file per kind (`process`, and `vm` with the
//! `libvirt` feature), and [`Backends`], which sends each call to the
//! driver of the backend's kind.
//!
//! Every call blocks (fork/exec, /proc reads, waiting out a stop grace):
//! callers on the async runtime go through `spawn_blocking`.

mod dispatch;
pub mod process;
mod process_identity;
#[cfg(feature = "libvirt")]
pub mod vm;

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use dispatch::Backends;

use thiserror::Error;

use crate::model::managed::BackendTemplate;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("backend {id}: {what} backends are not supported by this lbd")]
    Unsupported { id: i64, what: &'static str },
    #[error("backend {id} did not start: {reason}")]
    Start { id: i64, reason: String },
    #[error("backend {id} did not stop: {reason}")]
    Stop { id: i64, reason: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One backend to start.
#[derive(Debug, Clone)]
pub struct BackendLaunch {
    pub id: i64,
    pub instance: String,
    pub address: Ipv4Addr,
    pub port: u16,
    /// The project subnet's prefix length (the address's netmask).
    pub prefix_len: u8,
    pub resource: Option<String>,
    pub template: BackendTemplate,
    /// Under `--network netns`: the project's namespace to join.
    pub netns: Option<PathBuf>,
}

/// What a backend's process is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendObservation {
    Running {
        pid: u32,
    },
    Exited {
        reason: String,
    },
    /// No process and no trace of one.
    Absent,
}

pub trait BackendDriver: Send + Sync {
    /// Starts the backend; returns its pid.
    fn start(&self, launch: &BackendLaunch) -> Result<u32, BackendError>;
    fn observe(&self, id: i64) -> BackendObservation;
    /// Stops it (SIGTERM, SIGKILL after a grace) and forgets its files.
    fn stop(&self, id: i64) -> Result<(), BackendError>;
    /// Every live backend process of this lbd, as (backend id, pid), found
    /// from the processes themselves (so one whose pid file was never
    /// written is found too).
    fn live(&self) -> Vec<(i64, u32)>;
    /// Ends one process found by [`BackendDriver::live`] that has no row.
    fn kill_orphan(&self, id: i64, pid: u32);
    /// The last lines of its output (for `backend_start_failed`).
    fn output_tail(&self, id: i64) -> String;
}

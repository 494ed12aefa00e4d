//! lbaas: a load-balancer-as-a-service control plane.
//!
//! - [`model`]: the API's types and validation (no I/O; shared with `lbctl`).
//! - with the `server` feature: the daemon `lbd` (store, API, reconciler,
//!   health checker, drivers, DNS, [`federation`] mappings sync) and the
//!   data plane `lb-node` ([`dataplane`]).

pub mod model;
pub mod paths;

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod daemon;
#[cfg(feature = "server")]
pub mod dataplane;
#[cfg(feature = "server")]
pub mod dns;
#[cfg(feature = "server")]
pub mod drivers;
#[cfg(feature = "server")]
pub mod federation;
#[cfg(feature = "server")]
pub mod health;
#[cfg(feature = "server")]
pub mod managed;
#[cfg(feature = "server")]
pub mod password;
#[cfg(feature = "server")]
pub mod reconcile;
#[cfg(feature = "server")]
pub mod serve;
#[cfg(feature = "server")]
pub mod signals;
#[cfg(feature = "server")]
pub mod store;

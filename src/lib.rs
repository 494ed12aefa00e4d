//! lbaas: a load-balancer-as-a-service control plane.
//!
//! - [`model`]: the API's types and validation (no I/O; shared with `lbctl`).
//! - with the `server` feature: the daemon `lbd` (store, API, reconciler,
//!   drivers, DNS) and the data plane `lb-node` ([`dataplane`]).

pub mod model;
pub mod paths;

#[cfg(feature = "server")]
pub mod dataplane;

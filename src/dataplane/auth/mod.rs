//! The auth stage of lb-node's request pipeline (issue 15): who the caller
//! is, by an auth service (`service`), HTTP Basic users or API keys
//! (`secrets`), and the groups a rule may require (`groups`).

pub mod cache;
mod groups;
mod headers;
mod key;
mod secrets;
pub mod service;
mod service_auth;
pub mod stage;
pub mod tls;

pub use stage::{AuthOutcome, AuthStage, Caller};

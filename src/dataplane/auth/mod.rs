//! The auth stage of lb-node's request pipeline (issue 15): who the caller
//! is, by an auth service (`service`), HTTP Basic users (`basic`) or API
//! keys (`api_key`), and the groups a rule may require.

pub mod cache;
pub mod service;
pub mod stage;

pub use stage::{AuthOutcome, AuthStage, Caller};

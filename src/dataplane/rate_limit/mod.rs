//! The rate-limit stage of lb-node's request pipeline (issue 15): GCRA per
//! key, counted on the node (`node` scope, a share of the threshold) or in
//! Redis (`global` scope, with the node share as the fallback).

pub mod gcra;
mod headers;
mod keys;
mod redis;
pub mod stage;

pub use gcra::{Decision, Gcra, LocalLimiter};
pub use stage::{LimitOutcome, LimitRequest, RateLimitStage};

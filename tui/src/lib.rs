//! `lbaas-tui`: the ratatui dashboard behind `lbctl top`.
//!
//! Not built yet (issue 7). It will read everything through the same API as
//! `lbctl`, with the types of [`lbaas::model`], so client and server never disagree.

pub use lbaas::model;

//! The data plane (lb-node).

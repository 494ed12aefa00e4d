//! Rows as read from the database, decoded into model types.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use rusqlite::Row;

use super::StoreError;
use crate::model::{
    EventKind, InstanceId, InstanceSpec, NodeId, NodeState, OperatingStatus, ProjectId,
    ProvisioningStatus,
};

#[derive(Debug, Clone, PartialEq)]
pub struct ProjectRow {
    pub id: ProjectId,
    pub name: String,
    pub user: String,
    pub subnet: ipnet::Ipv4Net,
    pub provisioning_status: ProvisioningStatus,
    pub status_reason: Option<String>,
    pub created_at: i64,
    /// A delete was requested; it stays requested (and is retried) even
    /// while the object shows ERROR because a step of it failed.
    pub deleting: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    pub id: InstanceId,
    pub project_id: ProjectId,
    pub project_name: String,
    pub name: String,
    pub spec: InstanceSpec,
    /// Bumped by every update; nodes run the config whose version equals it.
    pub generation: u64,
    pub provisioning_status: ProvisioningStatus,
    pub operating_status: OperatingStatus,
    pub status_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The autoscaler's node count; `None` until it first decides.
    pub desired_nodes: Option<u32>,
    /// When the autoscaler last acted (Unix seconds).
    pub scaled_at: Option<i64>,
    /// A delete was requested (see [`ProjectRow::deleting`]).
    pub deleting: bool,
    /// The node count the current config was built for (0: not counted yet).
    pub serving_nodes: u32,
}

impl InstanceRow {
    /// How many active nodes the instance should have now.
    /// How many nodes should serve (be in DNS) now.
    pub fn target_nodes(&self) -> u32 {
        self.spec
            .target_nodes(self.desired_nodes.unwrap_or(self.spec.min_nodes))
    }

    /// How many active nodes the instance should have now: the serving
    /// target and the standbys.
    pub fn target_active_nodes(&self) -> u32 {
        self.target_nodes() + self.spec.standby_nodes
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub id: NodeId,
    pub instance_id: InstanceId,
    pub address: std::net::IpAddr,
    pub secret: String,
    pub state: NodeState,
    pub pid: Option<u32>,
    pub operating_status: OperatingStatus,
    /// When `state` last changed (Unix seconds): a failed node's failure time,
    /// a retiring node's start of drain.
    pub state_changed_at: i64,
    /// The instance generation whose config the node last accepted.
    pub applied_generation: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub ts: i64,
    pub node_id: Option<NodeId>,
    pub kind: EventKind,
    pub message: String,
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("bad {what}: {value:?}"))
}

// Decoding returns a nested Result: the outer one is SQLite's, the inner ours,
// because rusqlite's row mapper can only fail with its own error type.
impl ProjectRow {
    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<Self, StoreError>> {
        let subnet: String = r.get(3)?;
        let provisioning_status = r.get(4)?;
        Ok((|| {
            Ok(ProjectRow {
                id: r.get(0)?,
                name: r.get(1)?,
                user: r.get(2)?,
                subnet: subnet.parse().map_err(|_| corrupt("subnet", &subnet))?,
                provisioning_status,
                status_reason: r.get(5)?,
                created_at: r.get(6)?,
                deleting: r.get(7)?,
            })
        })())
    }
}

impl InstanceRow {
    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<Self, StoreError>> {
        let spec: String = r.get(4)?;
        let provisioning_status = r.get(6)?;
        let operating_status = r.get(7)?;
        let generation: i64 = r.get(5)?;
        Ok((|| {
            Ok(InstanceRow {
                id: r.get(0)?,
                project_id: r.get(1)?,
                project_name: r.get(2)?,
                name: r.get(3)?,
                spec: parse_spec(spec)?,
                generation: generation as u64,
                provisioning_status,
                operating_status,
                status_reason: r.get(8)?,
                created_at: r.get(9)?,
                updated_at: r.get(10)?,
                desired_nodes: r.get::<_, Option<i64>>(11)?.map(|n| n.max(0) as u32),
                scaled_at: r.get(12)?,
                deleting: r.get(13)?,
                serving_nodes: r.get::<_, i64>(14)?.clamp(0, i64::from(u32::MAX)) as u32,
            })
        })())
    }
}

/// How many distinct spec texts [`parse_spec`] remembers before it starts over.
const SPEC_MEMO_MAX: usize = 4096;

/// An instance spec decoded from its stored JSON, remembered by that JSON.
/// The health checker and the reconciler read instance rows thousands of
/// times a second at scale, and decoding the spec was most of that cost;
/// a clone is several times cheaper. It memoizes a pure function keyed by
/// its whole input, so one memo serves every store in the process.
fn parse_spec(json: String) -> Result<InstanceSpec, StoreError> {
    static MEMO: LazyLock<Mutex<HashMap<String, InstanceSpec>>> = LazyLock::new(Mutex::default);
    let memo = || MEMO.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(spec) = memo().get(&json) {
        return Ok(spec.clone());
    }
    let spec: InstanceSpec = serde_json::from_str(&json)
        .map_err(|e| StoreError::Corrupt(format!("instance spec: {e}")))?;
    let mut memo = memo();
    if memo.len() >= SPEC_MEMO_MAX {
        memo.clear();
    }
    memo.insert(json, spec.clone());
    Ok(spec)
}

impl NodeRow {
    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<Self, StoreError>> {
        let address: String = r.get(2)?;
        let operating_status = r.get(6)?;
        let state = r.get(4)?;
        let applied: Option<i64> = r.get(8)?;
        Ok((|| {
            Ok(NodeRow {
                id: r.get(0)?,
                instance_id: r.get(1)?,
                address: address
                    .parse()
                    .map_err(|_| corrupt("node address", &address))?,
                secret: r.get(3)?,
                state,
                pid: r.get(5)?,
                operating_status,
                state_changed_at: r.get::<_, Option<i64>>(7)?.unwrap_or(0),
                applied_generation: applied.map(|g| g as u64),
            })
        })())
    }
}

//! A tick's check results, read and written together: one read of the
//! rows they are about, one transaction for all their samples.

use std::collections::HashMap;

use crate::model::{InstanceId, NodeId, NodeStats, OperatingStatus, SampleInfo};
use crate::store::{self, InstanceRow, NodeRow, StoreError};

/// One running node's answer, to be written with the others of its tick.
pub(super) struct SampleWrite {
    pub(super) node_id: NodeId,
    pub(super) instance_id: InstanceId,
    pub(super) sample: SampleInfo,
    pub(super) stats: NodeStats,
    pub(super) operating: OperatingStatus,
    pub(super) stale_config: bool,
}

/// The rows of the nodes a tick's results are about, and their instances.
pub(super) struct CheckedRows {
    nodes: HashMap<NodeId, NodeRow>,
    instances: HashMap<InstanceId, InstanceRow>,
}

impl CheckedRows {
    pub(super) fn node(&self, id: NodeId) -> Option<(&NodeRow, &InstanceRow)> {
        let node = self.nodes.get(&id)?;
        Some((node, self.instances.get(&node.instance_id)?))
    }
}

pub(super) fn rows_of(
    c: &rusqlite::Connection,
    ids: Vec<NodeId>,
) -> Result<CheckedRows, StoreError> {
    let mut rows = CheckedRows {
        nodes: HashMap::new(),
        instances: HashMap::new(),
    };
    for id in ids {
        let Some(node) = store::node_by_id(c, id)? else {
            continue;
        };
        if !rows.instances.contains_key(&node.instance_id) {
            if let Some(inst) = store::instance_by_id(c, node.instance_id)? {
                rows.instances.insert(inst.id, inst);
            }
        }
        rows.nodes.insert(id, node);
    }
    Ok(rows)
}

/// Every running node's sample and operating status (and a config to push
/// again where the node runs another), then the operating status of every
/// instance the results were about.
pub(super) fn write(
    c: &rusqlite::Connection,
    samples: &[SampleWrite],
    instances: &[InstanceRow],
) -> Result<(), StoreError> {
    for s in samples {
        store::add_sample(c, s.instance_id, &s.sample, &s.stats)?;
        store::set_node_operating(c, s.node_id, s.operating)?;
        if s.stale_config {
            store::set_node_applied(c, s.node_id, None)?;
        }
    }
    for inst in instances {
        store::refresh_instance_operating(c, inst)?;
    }
    Ok(())
}

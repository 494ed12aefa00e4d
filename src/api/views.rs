//! Builds what the API shows (`ProjectInfo`, `InstanceInfo`) from stored rows.

use rusqlite::Connection;

use crate::model::instance::BackendView;
use crate::model::{EventInfo, InstanceInfo, NodeInfo, ProjectInfo, TrafficType};
use crate::store::{self, InstanceRow, ProjectRow, StoreError};

/// How many events `info instance` shows.
const RECENT_EVENTS: u32 = 10;

pub fn project_info(c: &Connection, p: &ProjectRow, zone: &str) -> Result<ProjectInfo, StoreError> {
    let instances = store::list_instances(c, p.id)?
        .iter()
        .map(|i| instance_info(c, i, p, zone))
        .collect::<Result<_, _>>()?;
    Ok(ProjectInfo {
        id: p.id,
        object_type: "project".into(),
        name: p.name.clone(),
        user: p.user.clone(),
        subnet: p.subnet.to_string(),
        provisioning_status: p.provisioning_status,
        status_reason: p.status_reason.clone(),
        instances,
        created_at: p.created_at,
    })
}

pub fn instance_info(
    c: &Connection,
    i: &InstanceRow,
    p: &ProjectRow,
    zone: &str,
) -> Result<InstanceInfo, StoreError> {
    let nodes = store::list_nodes(c, i.id)?
        .into_iter()
        .map(|n| {
            let sample = store::latest_node_sample(c, n.id)?;
            Ok(NodeInfo {
                id: n.id,
                name: format!("node-{}", n.id),
                address: n.address.to_string(),
                state: n.state,
                pid: n.pid,
                operating_status: n.operating_status,
                sampled_at: sample.as_ref().map(|(ts, _)| *ts),
                stats: sample.map(|(_, s)| s),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let dns_name = format!("{}.{}.{}", i.name, p.name, zone.trim_end_matches('.'));
    let url = match i.spec.traffic_type {
        TrafficType::Http => format!("http://{dns_name}:{}/", i.spec.port),
        TrafficType::Tcp => format!("tcp://{dns_name}:{}", i.spec.port),
    };
    Ok(InstanceInfo {
        id: i.id,
        object_type: "instance".into(),
        name: i.name.clone(),
        project: p.name.clone(),
        traffic_type: i.spec.traffic_type,
        port: i.spec.port,
        algorithm: i.spec.algorithm,
        subnet: i.spec.subnet.unwrap_or(p.subnet).to_string(),
        backend: BackendView {
            entities: i.spec.backends.clone(),
            health_check: i.spec.health_check.clone(),
            auto_scaling: i.spec.auto_scaling,
        },
        min_nodes: i.spec.min_nodes,
        hash_on: i.spec.hash_on.clone(),
        timeouts: i.spec.timeouts,
        max_connections: i.spec.max_connections,
        proxy_protocol: i.spec.proxy_protocol,
        dns_name,
        url,
        provisioning_status: i.provisioning_status,
        operating_status: i.operating_status,
        status_reason: i.status_reason.clone(),
        nodes,
        events: store::recent_events(c, i.id, RECENT_EVENTS)?
            .into_iter()
            .map(|e| EventInfo {
                ts: e.ts,
                kind: e.kind,
                message: e.message,
                node_id: e.node_id,
            })
            .collect(),
        created_at: i.created_at,
        updated_at: i.updated_at,
    })
}

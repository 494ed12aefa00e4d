//! Builds what the API shows (`ProjectInfo`, `InstanceInfo`) from stored rows.

use rusqlite::Connection;

use crate::model::instance::BackendView;
use crate::model::managed::ManagedSpec;
use crate::model::{EventInfo, InstanceInfo, NodeInfo, ProjectInfo, TrafficType, Warning};
use crate::store::{self, InstanceRow, ProjectRow, StoreError};

/// What views need besides the rows: the DNS zone and the host's warnings
/// (the same for every instance of this lbd).
pub struct ViewContext<'a> {
    pub zone: &'a str,
    pub warnings: Vec<Warning>,
}

/// How many events `info instance` shows.
const RECENT_EVENTS: u32 = 10;
/// How many samples `info instance` shows.
const RECENT_SAMPLES: u32 = 20;

pub fn project_info(
    c: &Connection,
    p: &ProjectRow,
    view: &ViewContext<'_>,
) -> Result<ProjectInfo, StoreError> {
    let instances = store::list_instances(c, p.id)?
        .iter()
        .map(|i| instance_info(c, i, p, view))
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

/// The most rows of each kind a `history` request returns.
const HISTORY_LIMIT: u32 = 1000;

/// What part of the monitor log `info instance` includes.
#[derive(Debug, Clone, Copy, Default)]
pub enum History {
    /// The few most recent events and samples.
    #[default]
    Recent,
    /// Everything of the last this many seconds (bounded).
    LastSecs(i64),
}

pub fn instance_info(
    c: &Connection,
    i: &InstanceRow,
    p: &ProjectRow,
    view: &ViewContext<'_>,
) -> Result<InstanceInfo, StoreError> {
    instance_info_with(c, i, p, view, History::Recent)
}

pub fn instance_info_with(
    c: &Connection,
    i: &InstanceRow,
    p: &ProjectRow,
    view: &ViewContext<'_>,
    history: History,
) -> Result<InstanceInfo, StoreError> {
    let (since, events_limit, samples_limit) = match history {
        History::Recent => (0, RECENT_EVENTS, RECENT_SAMPLES),
        History::LastSecs(secs) => (store::now() - secs, HISTORY_LIMIT, HISTORY_LIMIT),
    };
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
    let dns_name = format!("{}.{}.{}", i.name, p.name, view.zone.trim_end_matches('.'));
    let url = match i.spec.traffic_type {
        TrafficType::Http => format!("http://{dns_name}:{}/", i.spec.port),
        TrafficType::Tcp => format!("tcp://{dns_name}:{}", i.spec.port),
        TrafficType::Smtp => format!("smtp://{dns_name}:{}", i.spec.port),
        TrafficType::Https => format!("https://{dns_name}:{}/", i.spec.port),
    };
    let policy = i.spec.policy.to_spec();
    Ok(InstanceInfo {
        id: i.id,
        object_type: "instance".into(),
        name: i.name.clone(),
        project: p.name.clone(),
        traffic_type: i.spec.traffic_type,
        port: i.spec.port,
        algorithm: i.spec.tuning.algorithm,
        subnet: i.spec.subnet.unwrap_or(p.subnet).to_string(),
        backend: BackendView {
            entities: i.spec.backends.clone(),
            names: i.spec.named_backends.clone(),
            health_check: i.spec.health_check.clone(),
            auto_scaling: i.spec.auto_scaling,
            managed: i.spec.managed.as_ref().map(|m| redacted(m.to_spec())),
            sticky: i.spec.sticky.as_ref().map(|s| s.to_spec()),
            backend_protocol: i.spec.default_pool_protocol,
            backend_tls: i.spec.default_pool_tls.as_ref().map(|t| t.to_spec()),
        },
        min_nodes: i.spec.min_nodes,
        standby_nodes: i.spec.standby_nodes,
        max_nodes: i.spec.max_nodes,
        scaling: i.spec.scaling,
        desired_nodes: i.target_nodes(),
        hash_on: i.spec.tuning.hash_on.clone(),
        timeouts: i.spec.tuning.timeouts,
        max_connections: i.spec.tuning.max_connections,
        max_header_bytes: i.spec.tuning.max_header_bytes,
        backend_protocol: i.spec.tuning.backend_protocol,
        proxy_protocol: i.spec.tuning.proxy_protocol,
        pools: policy
            .pools
            .unwrap_or_default()
            .into_iter()
            .map(|(name, mut pool)| {
                pool.managed = pool.managed.map(redacted);
                (name, pool)
            })
            .collect(),
        rules: policy.rules.unwrap_or_default(),
        auth: policy.auth,
        rate_limits: policy.rate_limits.unwrap_or_default(),
        smtp: i.spec.smtp.as_ref().map(|s| s.to_spec()),
        dns_name,
        tls: i.spec.tls.as_ref().map(crate::model::tls::Tls::view),
        federation: i
            .spec
            .federation
            .as_ref()
            .map(crate::model::instance::federation_spec),
        url,
        provisioning_status: i.provisioning_status,
        operating_status: i.operating_status,
        status_reason: i.status_reason.clone(),
        nodes,
        events: events(c, i.id, since, events_limit)?,
        samples: store::recent_samples(c, i.id, since, samples_limit)?,
        warnings: view.warnings.clone(),
        backends: store::backends_of_instance(c, i.id)?,
        created_at: i.created_at,
        updated_at: i.updated_at,
    })
}

/// What a managed env value shows as: it may hold a secret.
pub const REDACTED: &str = "***";

/// A managed spec as `info` shows it: env names stay, their values (and the
/// per-resource envs) do not.
fn redacted(mut spec: ManagedSpec) -> ManagedSpec {
    if let Some(p) = spec.process.as_mut() {
        p.env.values_mut().for_each(|v| *v = REDACTED.to_string());
    }
    let resources = spec
        .per_resource
        .as_mut()
        .and_then(|r| r.resources.as_mut());
    for r in resources.into_iter().flat_map(|r| r.values_mut()) {
        r.env.values_mut().for_each(|v| *v = REDACTED.to_string());
    }
    spec
}

/// An instance's events since `since`, newest first.
pub fn events(
    c: &Connection,
    instance_id: crate::model::InstanceId,
    since: i64,
    limit: u32,
) -> Result<Vec<EventInfo>, StoreError> {
    Ok(store::recent_events(c, instance_id, since, limit)?
        .into_iter()
        .map(|e| EventInfo {
            ts: e.ts,
            kind: e.kind,
            message: e.message,
            node_id: e.node_id,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::instance::TrafficType;
    use serde_json::json;

    #[test]
    fn env_values_are_redacted_names_and_the_rest_stay() {
        let spec: ManagedSpec = serde_json::from_value(json!({
            "compute": "process",
            "process": {"command": ["app", "{port}"], "env": {"TOKEN": "s3cret", "MODE": "prod"}},
            "port": 8000,
            "per_resource": {"path_segment": 1,
                             "resources": {"r1": {"env": {"KEY": "k1"}, "require_groups": ["g"]}}}
        }))
        .unwrap();
        let shown = redacted(spec.validate(TrafficType::Http).unwrap().to_spec());
        let text = serde_json::to_string(&shown).unwrap();
        assert!(!text.contains("s3cret") && !text.contains("prod") && !text.contains("k1"));
        let process = shown.process.unwrap();
        assert_eq!(process.env["TOKEN"], REDACTED);
        assert_eq!(process.command, ["app", "{port}"]);
        let resources = shown.per_resource.unwrap().resources.unwrap();
        assert_eq!(resources["r1"].env["KEY"], REDACTED);
        assert_eq!(resources["r1"].require_groups, ["g"]);
    }
}

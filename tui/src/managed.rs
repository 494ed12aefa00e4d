//! The managed pools of an instance as the dashboard shows them (issue 16):
//! backends ready and starting from `InstanceInfo.backends`, the wake queue
//! and the last cold start from the nodes' latest stats. No terminal here.

use lbaas::model::managed::BackendState;
use lbaas::model::InstanceInfo;

/// One managed pool (or per-resource target) of an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManagedPoolRow {
    /// `pool`, or `pool/resource` for a per-resource target.
    pub pool: String,
    pub ready: usize,
    pub starting: usize,
    /// Held now, over the instance's nodes.
    pub queued: u64,
    pub cold_starts: u64,
    /// The most recent cold start any node reported, in ms.
    pub last_cold_start_ms: Option<u64>,
}

/// The instance's managed pools in pool order (`default` first): every
/// pool its spec makes managed, and any target a node or backend names.
pub fn pools(info: &InstanceInfo) -> Vec<ManagedPoolRow> {
    let mut rows: Vec<ManagedPoolRow> = Vec::new();
    if info.backend.managed.is_some() {
        row(&mut rows, "default".into());
    }
    for (name, p) in &info.pools {
        if p.managed.is_some() {
            row(&mut rows, name.clone());
        }
    }
    for b in &info.backends {
        let i = row(&mut rows, target(&b.pool, b.resource.as_deref()));
        match b.state {
            BackendState::Ready => rows[i].ready += 1,
            BackendState::Starting => rows[i].starting += 1,
            BackendState::Stopping => {}
        }
    }
    let stats = info.nodes.iter().filter_map(|n| n.stats.as_ref());
    for m in stats.flat_map(|s| &s.managed) {
        let i = row(&mut rows, target(&m.pool, m.resource.as_deref()));
        rows[i].queued += u64::from(m.queued);
        rows[i].cold_starts += m.cold_starts;
        rows[i].last_cold_start_ms = m.last_cold_start_ms.or(rows[i].last_cold_start_ms);
    }
    rows
}

/// The index of `pool`'s row, added at the end when new.
fn row(rows: &mut Vec<ManagedPoolRow>, pool: String) -> usize {
    match rows.iter().position(|r| r.pool == pool) {
        Some(i) => i,
        None => {
            rows.push(ManagedPoolRow {
                pool,
                ..ManagedPoolRow::default()
            });
            rows.len() - 1
        }
    }
}

fn target(pool: &str, resource: Option<&str>) -> String {
    match resource {
        Some(r) => format!("{pool}/{r}"),
        None => pool.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::app::tests::snapshot;
    use lbaas::model::ProjectInfo;
    use serde_json::json;

    /// `snapshot(["web"])` with a managed default pool: one backend ready,
    /// one starting, and a node that holds 4 requests.
    pub fn managed_snapshot() -> Vec<ProjectInfo> {
        let mut s = snapshot(&["web"]);
        let i = &mut s[0].instances[0];
        i.backend.entities.clear();
        i.backend.managed = Some(
            serde_json::from_value(json!({"compute": "process",
                "process": {"command": ["app"]}, "port": 8000}))
            .unwrap(),
        );
        let backend = |id: i64, state: &str| {
            serde_json::from_value(json!({"id": id, "pool": "default", "state": state,
                "compute": "process", "address": "127.100.0.9:8000", "started_at_ms": 1}))
            .unwrap()
        };
        i.backends = vec![backend(1, "ready"), backend(2, "starting")];
        let stats = i.nodes[0].stats.as_mut().unwrap();
        stats.managed = vec![serde_json::from_value(json!({"pool": "default", "ready": 1,
            "queued": 4, "cold_starts": 7, "queue_full": 0, "wait_timeouts": 0,
            "start_failures": 0, "last_cold_start_ms": 840,
            "cold_start_ms": {"bounds_ms": [], "counts": [0], "count": 0, "sum_ms": 0}}))
        .unwrap()];
        s
    }

    #[test]
    fn counts_come_from_backends_and_the_queue_from_nodes() {
        let s = managed_snapshot();
        assert_eq!(
            pools(&s[0].instances[0]),
            [ManagedPoolRow {
                pool: "default".into(),
                ready: 1,
                starting: 1,
                queued: 4,
                cold_starts: 7,
                last_cold_start_ms: Some(840),
            }]
        );
        assert!(pools(&snapshot(&["web"])[0].instances[0]).is_empty());
    }
}

//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of the stored
//! state and each node's latest stats sample. Authenticated like `/api`.
//!
//! Two steps, so the store lock is held only for the reads: [`gather`] takes
//! a [`MetricsSnapshot`] in a fixed number of queries, whatever the number of
//! instances and nodes, and [`render`] turns it into text with
//! prometheus-client, without touching the store.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;
use rusqlite::Connection;

use crate::model::instance::TrafficType;
use crate::model::{
    InstanceId, MemberState, NodeId, NodeState, NodeStats, OperatingStatus, ProvisioningStatus,
};
use crate::store::{self, StoreError};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Everything `/metrics` shows, read from the store at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub projects: u64,
    /// Ordered by project name, then instance name.
    pub instances: Vec<InstanceMetrics>,
    /// Events ever recorded per kind (see [`store::count_event`]), by kind.
    pub events: Vec<(String, u64)>,
    /// Managed backends' accounted running time, per project, instance and pool.
    pub backend_seconds: Vec<super::managed_metrics::BackendSeconds>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceMetrics {
    pub project: String,
    pub name: String,
    pub traffic_type: TrafficType,
    pub provisioning_status: ProvisioningStatus,
    pub operating_status: OperatingStatus,
    pub desired_nodes: u32,
    /// Ordered by node id.
    pub nodes: Vec<NodeMetrics>,
    /// `https`: per certificate (fingerprint, subject), the seconds until
    /// it expires, as of the snapshot (negative once expired).
    pub certificates: Vec<(String, String, i64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeMetrics {
    pub id: NodeId,
    pub address: IpAddr,
    pub state: NodeState,
    /// The counters of the node's latest sample; `None` before the first one.
    pub stats: Option<NodeStats>,
}

/// Reads the snapshot in five queries (the project count, all instances, all
/// nodes, the latest stats of every node, and the event counts) plus one
/// usage report per project.
pub fn gather(c: &Connection) -> Result<MetricsSnapshot, StoreError> {
    let projects: i64 = c.query_row("SELECT COUNT(*) FROM projects", [], |r| r.get(0))?;
    let mut stats = latest_stats(c)?;
    let mut nodes: HashMap<InstanceId, Vec<NodeMetrics>> = HashMap::new();
    for n in store::all_nodes(c)? {
        nodes.entry(n.instance_id).or_default().push(NodeMetrics {
            id: n.id,
            address: n.address,
            state: n.state,
            stats: stats.remove(&n.id),
        });
    }
    let now = crate::model::tls::unix_now();
    let instances = store::all_instances(c)?
        .into_iter()
        .map(|i| InstanceMetrics {
            certificates: i
                .spec
                .tls
                .iter()
                .flat_map(|t| &t.certificates)
                .map(|c| {
                    let c = &c.info;
                    (c.fingerprint.clone(), c.subject.clone(), c.not_after - now)
                })
                .collect(),
            desired_nodes: i.target_nodes(),
            nodes: nodes.remove(&i.id).unwrap_or_default(),
            project: i.project_name,
            name: i.name,
            traffic_type: i.spec.traffic_type,
            provisioning_status: i.provisioning_status,
            operating_status: i.operating_status,
        })
        .collect();
    Ok(MetricsSnapshot {
        projects: projects.max(0) as u64,
        instances,
        events: store::event_counts(c)?,
        backend_seconds: super::managed_metrics::gather_backend_seconds(c)?,
    })
}

/// Each node's latest whole status (one row per node).
fn latest_stats(c: &Connection) -> Result<HashMap<NodeId, NodeStats>, StoreError> {
    let mut stmt = c.prepare("SELECT node_id, stats FROM node_latest")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, NodeId>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = HashMap::new();
    for row in rows {
        let (node_id, json) = row?;
        let stats = serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("node sample: {e}")))?;
        out.insert(node_id, stats);
    }
    Ok(out)
}

/// The Prometheus text of a snapshot. Series names and labels are a
/// contract with dashboards: counters are registered without their `_total`,
/// which the encoder appends.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(snapshot.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail, and nothing in `Snapshot::encode`
    // fails on its own.
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("encoding metrics into a String");
    out
}

/// The answer to `GET /metrics`: the rendered text, with its content type.
pub fn response(snapshot: &MetricsSnapshot) -> axum::response::Response {
    use axum::response::IntoResponse;
    let content_type = [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)];
    (content_type, render(snapshot)).into_response()
}

/// A collector, rather than registered metrics, because the values are
/// read, not updated here, and because it writes series in the snapshot's
/// order (a metric `Family` is a hash map).
#[derive(Debug)]
struct Snapshot(MetricsSnapshot);

pub(super) type Labels = Vec<(&'static str, String)>;

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let projects = ConstGauge::new(s.projects);
        projects.encode(enc.encode_descriptor(
            "lbaas_projects",
            "Projects in the store.",
            None,
            projects.metric_type(),
        )?)?;
        encode_instances(&mut enc, &s.instances)?;
        let nodes: Vec<(Labels, &NodeStats)> = s
            .instances
            .iter()
            .flat_map(|i| i.nodes.iter().map(move |n| (i, n)))
            .filter_map(|(i, n)| Some((node_labels(i, n), n.stats.as_ref()?)))
            .collect();
        encode_node_stats(&mut enc, &nodes)?;
        encode_members(&mut enc, &nodes)?;
        super::managed_metrics::encode_managed(&mut enc, &nodes)?;
        super::managed_metrics::encode_backend_seconds(&mut enc, &s.backend_seconds)?;
        family(
            &mut enc,
            "lbaas_events",
            "Events recorded in the monitor log, by kind (failover, node_failed, scale_out, \
             scale_in, ...); retention pruning old events does not lower it.",
            s.events
                .iter()
                .map(|(kind, n)| ([("kind", kind.as_str())], ConstCounter::new(*n))),
        )
    }
}

/// Writes one metric family: its HELP and TYPE lines, then a series per item.
pub(super) fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn instance_labels(i: &InstanceMetrics) -> Labels {
    vec![("project", i.project.clone()), ("instance", i.name.clone())]
}

fn node_labels(i: &InstanceMetrics, n: &NodeMetrics) -> Labels {
    let mut labels = instance_labels(i);
    labels.push(("node", format!("node-{}", n.id)));
    labels
}

fn encode_instances(enc: &mut DescriptorEncoder<'_>, instances: &[InstanceMetrics]) -> fmt::Result {
    family(
        enc,
        "lbaas_instance_info",
        "One series per instance, with its statuses.",
        instances.iter().map(|i| {
            let mut labels = instance_labels(i);
            labels.extend([
                ("traffic_type", i.traffic_type.as_str().to_string()),
                ("provisioning_status", i.provisioning_status.as_str().into()),
                ("operating_status", i.operating_status.as_str().into()),
            ]);
            (labels, ConstGauge::new(1i64))
        }),
    )?;
    family(
        enc,
        "lbaas_instance_desired_nodes",
        "Nodes an instance should have now (min_nodes, or the autoscaler's count).",
        instances
            .iter()
            .map(|i| (instance_labels(i), ConstGauge::new(i.desired_nodes))),
    )?;
    family(
        enc,
        "lbaas_certificate_expiry_seconds",
        "Seconds until an https instance's certificate expires (negative: expired).",
        instances.iter().flat_map(|i| {
            i.certificates
                .iter()
                .map(move |(fingerprint, subject, left)| {
                    let mut labels = instance_labels(i);
                    labels.push(("fingerprint", fingerprint.clone()));
                    labels.push(("subject", subject.clone()));
                    (labels, ConstGauge::new(*left))
                })
        }),
    )?;
    family(
        enc,
        "lbaas_node_info",
        "One series per LB node, with its state.",
        instances.iter().flat_map(|i| {
            i.nodes.iter().map(move |n| {
                let mut labels = node_labels(i, n);
                labels.push(("address", n.address.to_string()));
                labels.push(("state", n.state.as_str().into()));
                (labels, ConstGauge::new(1i64))
            })
        }),
    )
}

/// The node-wide numbers of each node's latest sample.
fn encode_node_stats(
    enc: &mut DescriptorEncoder<'_>,
    nodes: &[(Labels, &NodeStats)],
) -> fmt::Result {
    let counter = |name, help, value: fn(&NodeStats) -> u64, enc: &mut DescriptorEncoder<'_>| {
        family(
            enc,
            name,
            help,
            nodes
                .iter()
                .map(|(l, s)| (l.as_slice(), ConstCounter::new(value(s)))),
        )
    };
    counter(
        "lbaas_node_requests",
        "Requests (HTTP) or connections (TCP) a node served.",
        |s| s.requests_total,
        enc,
    )?;
    family(
        enc,
        "lbaas_node_active_connections",
        "Client connections open at a node.",
        nodes
            .iter()
            .map(|(l, s)| (l.as_slice(), ConstGauge::new(s.active_connections))),
    )?;
    counter(
        "lbaas_node_bytes_in",
        "Bytes from clients.",
        |s| s.bytes_in,
        enc,
    )?;
    counter(
        "lbaas_node_bytes_out",
        "Bytes to clients.",
        |s| s.bytes_out,
        enc,
    )?;
    counter(
        "lbaas_node_backend_errors",
        "Requests no backend could take.",
        |s| s.backend_errors,
        enc,
    )?;
    family(
        enc,
        "lbaas_node_responses",
        "HTTP responses by status class.",
        nodes.iter().flat_map(|(l, s)| {
            let r = s.responses;
            [
                ("1xx", r.c1xx),
                ("2xx", r.c2xx),
                ("3xx", r.c3xx),
                ("4xx", r.c4xx),
                ("5xx", r.c5xx),
            ]
            .map(|(class, v)| ((l.as_slice(), [("class", class)]), ConstCounter::new(v)))
        }),
    )?;
    family(
        enc,
        "lbaas_node_latency_ms",
        "Request latency percentiles over the last minute.",
        nodes.iter().flat_map(|(l, s)| {
            let p = s.latency_ms;
            [("0.5", p.p50), ("0.9", p.p90), ("0.99", p.p99)]
                .map(|(q, v)| ((l.as_slice(), [("quantile", q)]), ConstGauge::new(v)))
        }),
    )
}

/// Per backend member of each node's latest sample.
fn encode_members(enc: &mut DescriptorEncoder<'_>, nodes: &[(Labels, &NodeStats)]) -> fmt::Result {
    let members: Vec<_> = nodes
        .iter()
        .flat_map(|(l, s)| {
            s.members.iter().map(move |m| {
                let mut labels = l.clone();
                labels.push(("member", m.address.to_string()));
                (labels, m)
            })
        })
        .collect();
    family(
        enc,
        "lbaas_member_up",
        "1 when a backend member takes traffic.",
        members.iter().map(|(l, m)| {
            (
                l.as_slice(),
                ConstGauge::new(i64::from(m.state == MemberState::Up)),
            )
        }),
    )?;
    family(
        enc,
        "lbaas_member_requests",
        "Requests sent to a backend member.",
        members
            .iter()
            .map(|(l, m)| (l.as_slice(), ConstCounter::new(m.requests))),
    )?;
    family(
        enc,
        "lbaas_member_failures",
        "Failed requests to a backend member.",
        members
            .iter()
            .map(|(l, m)| (l.as_slice(), ConstCounter::new(m.failures))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, InstanceCreate, MemberStats, SampleInfo};
    use crate::store::{EventSubject, Retention, Store};

    fn member(address: &str, state: MemberState, requests: u64, failures: u64) -> MemberStats {
        MemberStats {
            address: address.parse().unwrap(),
            state,
            weight: 1,
            requests,
            failures,
            active: 0,
            ejections: 0,
            pool: None,
            open_connections: 0,
            idle_ms: None,
            resource: None,
        }
    }

    fn hand_made() -> MetricsSnapshot {
        let mut stats = NodeStats {
            requests_total: 12,
            active_connections: 3,
            bytes_in: 100,
            bytes_out: 2000,
            backend_errors: 1,
            members: vec![
                member("127.0.0.1:9001", MemberState::Up, 7, 0),
                member("127.0.0.1:9002", MemberState::Ejected, 5, 4),
            ],
            ..NodeStats::default()
        };
        stats.responses.c2xx = 11;
        stats.responses.c5xx = 1;
        stats.latency_ms.p50 = 1.5;
        stats.latency_ms.p90 = 4.0;
        stats.latency_ms.p99 = 9.25;
        MetricsSnapshot {
            projects: 2,
            instances: vec![InstanceMetrics {
                project: "demo".into(),
                name: "web".into(),
                traffic_type: TrafficType::Http,
                provisioning_status: ProvisioningStatus::Active,
                operating_status: OperatingStatus::Degraded,
                desired_nodes: 2,
                certificates: vec![("ab".repeat(32), "CN=web".into(), 86_400)],
                nodes: vec![
                    NodeMetrics {
                        id: NodeId(4),
                        address: "127.5.0.2".parse().unwrap(),
                        state: NodeState::Running,
                        stats: Some(stats),
                    },
                    NodeMetrics {
                        id: NodeId(5),
                        address: "127.5.0.3".parse().unwrap(),
                        state: NodeState::Starting,
                        stats: None,
                    },
                ],
            }],
            events: vec![("failover".into(), 3), ("node_ready".into(), 2)],
            backend_seconds: Vec::new(),
        }
    }

    #[test]
    fn render_writes_every_series_in_the_prometheus_text_format() {
        let expected = r#"# HELP lbaas_projects Projects in the store.
# TYPE lbaas_projects gauge
lbaas_projects 2
# HELP lbaas_instance_info One series per instance, with its statuses.
# TYPE lbaas_instance_info gauge
lbaas_instance_info{project="demo",instance="web",traffic_type="http",provisioning_status="ACTIVE",operating_status="DEGRADED"} 1
# HELP lbaas_instance_desired_nodes Nodes an instance should have now (min_nodes, or the autoscaler's count).
# TYPE lbaas_instance_desired_nodes gauge
lbaas_instance_desired_nodes{project="demo",instance="web"} 2
# HELP lbaas_certificate_expiry_seconds Seconds until an https instance's certificate expires (negative: expired).
# TYPE lbaas_certificate_expiry_seconds gauge
lbaas_certificate_expiry_seconds{project="demo",instance="web",fingerprint="abababababababababababababababababababababababababababababababab",subject="CN=web"} 86400
# HELP lbaas_node_info One series per LB node, with its state.
# TYPE lbaas_node_info gauge
lbaas_node_info{project="demo",instance="web",node="node-4",address="127.5.0.2",state="running"} 1
lbaas_node_info{project="demo",instance="web",node="node-5",address="127.5.0.3",state="starting"} 1
# HELP lbaas_node_requests_total Requests (HTTP) or connections (TCP) a node served.
# TYPE lbaas_node_requests_total counter
lbaas_node_requests_total{project="demo",instance="web",node="node-4"} 12
# HELP lbaas_node_active_connections Client connections open at a node.
# TYPE lbaas_node_active_connections gauge
lbaas_node_active_connections{project="demo",instance="web",node="node-4"} 3
# HELP lbaas_node_bytes_in_total Bytes from clients.
# TYPE lbaas_node_bytes_in_total counter
lbaas_node_bytes_in_total{project="demo",instance="web",node="node-4"} 100
# HELP lbaas_node_bytes_out_total Bytes to clients.
# TYPE lbaas_node_bytes_out_total counter
lbaas_node_bytes_out_total{project="demo",instance="web",node="node-4"} 2000
# HELP lbaas_node_backend_errors_total Requests no backend could take.
# TYPE lbaas_node_backend_errors_total counter
lbaas_node_backend_errors_total{project="demo",instance="web",node="node-4"} 1
# HELP lbaas_node_responses_total HTTP responses by status class.
# TYPE lbaas_node_responses_total counter
lbaas_node_responses_total{project="demo",instance="web",node="node-4",class="1xx"} 0
lbaas_node_responses_total{project="demo",instance="web",node="node-4",class="2xx"} 11
lbaas_node_responses_total{project="demo",instance="web",node="node-4",class="3xx"} 0
lbaas_node_responses_total{project="demo",instance="web",node="node-4",class="4xx"} 0
lbaas_node_responses_total{project="demo",instance="web",node="node-4",class="5xx"} 1
# HELP lbaas_node_latency_ms Request latency percentiles over the last minute.
# TYPE lbaas_node_latency_ms gauge
lbaas_node_latency_ms{project="demo",instance="web",node="node-4",quantile="0.5"} 1.5
lbaas_node_latency_ms{project="demo",instance="web",node="node-4",quantile="0.9"} 4.0
lbaas_node_latency_ms{project="demo",instance="web",node="node-4",quantile="0.99"} 9.25
# HELP lbaas_member_up 1 when a backend member takes traffic.
# TYPE lbaas_member_up gauge
lbaas_member_up{project="demo",instance="web",node="node-4",member="127.0.0.1:9001"} 1
lbaas_member_up{project="demo",instance="web",node="node-4",member="127.0.0.1:9002"} 0
# HELP lbaas_member_requests_total Requests sent to a backend member.
# TYPE lbaas_member_requests_total counter
lbaas_member_requests_total{project="demo",instance="web",node="node-4",member="127.0.0.1:9001"} 7
lbaas_member_requests_total{project="demo",instance="web",node="node-4",member="127.0.0.1:9002"} 5
# HELP lbaas_member_failures_total Failed requests to a backend member.
# TYPE lbaas_member_failures_total counter
lbaas_member_failures_total{project="demo",instance="web",node="node-4",member="127.0.0.1:9001"} 0
lbaas_member_failures_total{project="demo",instance="web",node="node-4",member="127.0.0.1:9002"} 4
# HELP lbaas_events_total Events recorded in the monitor log, by kind (failover, node_failed, scale_out, scale_in, ...); retention pruning old events does not lower it.
# TYPE lbaas_events_total counter
lbaas_events_total{kind="failover"} 3
lbaas_events_total{kind="node_ready"} 2
"#;
        let text = render(&hand_made());
        for (got, want) in text.lines().zip(expected.lines()) {
            assert_eq!(got, want);
        }
        assert_eq!(text, expected);
    }

    #[test]
    fn an_empty_store_still_describes_every_family() {
        let text = render(&MetricsSnapshot::default());
        assert_eq!(text.matches("# TYPE ").count(), 16, "{text}");
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples, vec!["lbaas_projects 0"]);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = hand_made();
        s.instances[0].project = "a\"b\\c\nd".into();
        let text = render(&s);
        assert!(
            text.contains(r#"lbaas_instance_desired_nodes{project="a\"b\\c\nd",instance="web"} 2"#),
            "{text}"
        );
    }

    /// A state database in its own directory, removed on drop.
    struct TempDb(std::path::PathBuf);

    impl TempDb {
        fn new(tag: &str) -> (TempDb, Store) {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let dir = std::env::temp_dir()
                .join(format!("lbaas-metrics-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let store = Store::open(&dir.join("lbaas.db")).unwrap();
            (TempDb(dir), store)
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn event(store: &Store, kind: EventKind) {
        store
            .transaction_blocking(|tx| store::add_event(tx, EventSubject::default(), kind, "x"))
            .unwrap();
    }

    #[test]
    fn events_total_does_not_decrease_when_retention_prunes_the_events() {
        let (_dir, store) = TempDb::new("retention");
        for kind in [
            EventKind::Failover,
            EventKind::NodeFailed,
            EventKind::Failover,
        ] {
            event(&store, kind);
        }
        let before = store.read_blocking(gather).unwrap().events;
        assert_eq!(
            before,
            vec![("failover".to_string(), 2), ("node_failed".to_string(), 1)]
        );
        let far_future = store::now() + 365 * 86_400;
        let report = store
            .transaction_blocking(|tx| store::apply_retention(tx, Retention::default(), far_future))
            .unwrap();
        assert_eq!(report.events_dropped, 3);
        assert_eq!(store.read_blocking(store::monitor_log_size).unwrap().2, 0);
        assert_eq!(store.read_blocking(gather).unwrap().events, before);
        event(&store, EventKind::Failover);
        assert_eq!(
            store.read_blocking(gather).unwrap().events[0],
            ("failover".to_string(), 3)
        );
    }

    fn stats(requests_total: u64) -> NodeStats {
        NodeStats {
            requests_total,
            members: vec![member("127.0.0.1:9001", MemberState::Up, requests_total, 0)],
            ..NodeStats::default()
        }
    }

    fn sample(node_id: NodeId) -> SampleInfo {
        SampleInfo {
            ts: store::now(),
            resolution: 0,
            node_id,
            requests_per_s: 0.0,
            active_connections: 0.0,
            bytes_in_per_s: 0.0,
            bytes_out_per_s: 0.0,
            p50_ms: None,
            p90_ms: None,
            p99_ms: None,
            members_up: 1,
            members_down: 0,
        }
    }

    fn spec(name: &str) -> crate::model::InstanceSpec {
        let spec: InstanceCreate = serde_json::from_value(serde_json::json!({
            "name": name, "project": "demo", "traffic_type": "tcp", "port": 8080, "min_nodes": 2,
            "backend": {"entities": ["127.0.0.1:9001"]}
        }))
        .unwrap();
        spec.validate(&crate::password::Argon2Hasher).unwrap()
    }

    #[test]
    fn gather_takes_each_nodes_latest_stats() {
        let (_dir, store) = TempDb::new("gather");
        let spec = spec("web");
        let (first, second) = store
            .transaction_blocking(|tx| {
                let p = store::insert_project(tx, "demo", "admin", "127.5.0.0/16")?;
                store::insert_project(tx, "empty", "admin", "127.6.0.0/16")?;
                let i = store::insert_instance(tx, p.id, &spec)?;
                let a = store::insert_node(tx, i.id, "127.5.0.2", "s")?;
                let b = store::insert_node(tx, i.id, "127.5.0.3", "s")?;
                store::add_sample(tx, i.id, &sample(a.id), &stats(3))?;
                store::add_sample(tx, i.id, &sample(a.id), &stats(7))?;
                // A newer 1-minute average carries no stats and is skipped.
                tx.execute(
                    "INSERT INTO samples (ts, resolution, node_id, instance_id, requests_per_s,
                         active_connections, bytes_in_per_s, bytes_out_per_s, members_up,
                         members_down, stats) VALUES (0, 60, ?1, ?2, 0, 0, 0, 0, 0, 0, NULL)",
                    rusqlite::params![a.id, i.id],
                )?;
                Ok::<_, StoreError>((a.id, b.id))
            })
            .unwrap();
        let s = store.read_blocking(gather).unwrap();
        assert_eq!(s.projects, 2);
        assert_eq!(s.instances.len(), 1);
        let i = &s.instances[0];
        assert_eq!((i.project.as_str(), i.name.as_str()), ("demo", "web"));
        assert_eq!(i.traffic_type, TrafficType::Tcp);
        assert_eq!(i.desired_nodes, 2);
        let ids: Vec<NodeId> = i.nodes.iter().map(|n| n.id).collect();
        assert_eq!(ids, vec![first, second]);
        assert_eq!(i.nodes[0].stats, Some(stats(7)));
        assert_eq!(i.nodes[1].stats, None);
    }

    /// Adds instances (two nodes with a sample each) to project `demo`,
    /// creating it first.
    fn add_instances(store: &Store, names: std::ops::Range<u32>) {
        store
            .transaction_blocking(|tx| {
                let p = match store::project_by_name(tx, "demo")? {
                    Some(p) => p,
                    None => store::insert_project(tx, "demo", "admin", "127.5.0.0/16")?,
                };
                for k in names {
                    let i = store::insert_instance(tx, p.id, &spec(&format!("web{k}")))?;
                    for n in 0..2 {
                        let node =
                            store::insert_node(tx, i.id, &format!("127.5.{k}.{}", n + 2), "s")?;
                        store::add_sample(tx, i.id, &sample(node.id), &stats(k.into()))?;
                    }
                    store::add_event(tx, EventSubject::default(), EventKind::NodeReady, "x")?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    /// Statements `gather` runs on the database at `path`, and its snapshot.
    fn statements_of_gather(path: &std::path::Path) -> (usize, MetricsSnapshot) {
        use rusqlite::trace::{TraceEvent, TraceEventCodes};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let mut conn = Connection::open(path).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        conn.trace_v2(
            TraceEventCodes::SQLITE_TRACE_STMT,
            Some(move |e: TraceEvent<'_>| {
                if let TraceEvent::Stmt(..) = e {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }),
        )
        .unwrap();
        let snapshot = gather(&conn).unwrap();
        (count.load(Ordering::SeqCst), snapshot)
    }

    #[test]
    fn gather_runs_as_many_queries_for_twenty_instances_as_for_one() {
        let (dir, store) = TempDb::new("queries");
        let path = dir.0.join("lbaas.db");
        add_instances(&store, 0..1);
        let (one, snapshot) = statements_of_gather(&path);
        assert_eq!(snapshot.instances.len(), 1);
        add_instances(&store, 1..20);
        let (twenty, snapshot) = statements_of_gather(&path);
        assert_eq!(snapshot.instances.len(), 20);
        assert!(snapshot
            .instances
            .iter()
            .all(|i| i.nodes.len() == 2 && i.nodes.iter().all(|n| n.stats.is_some())));
        // Five, plus the projects and each project's usage report: the
        // same for one instance as for twenty.
        assert_eq!(one, twenty);
        assert!(one >= 6, "{one} statements");
    }
}

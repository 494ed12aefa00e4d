//! The managed-pool part of `/metrics` (issue 16): backend-seconds from the
//! store's accounting, and from each node's latest stats the wake queue,
//! its refusals and the cold-start histogram, per pool (and resource).
//! A family with no series is left out, so instances without managed pools
//! add nothing to the exposition.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use rusqlite::Connection;

use super::metrics::{family, Labels};
use crate::model::wake::{ManagedPoolStats, MsHistogram};
use crate::model::NodeStats;
use crate::store::{self, StoreError};

/// Running time of one pool's managed backends, as accounted.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSeconds {
    pub project: String,
    pub instance: String,
    pub pool: String,
    pub seconds: f64,
}

/// Every project's backend-seconds since the first record, one usage
/// report per project (ordered by project, instance, pool).
pub fn gather_backend_seconds(c: &Connection) -> Result<Vec<BackendSeconds>, StoreError> {
    let mut out = Vec::new();
    for p in store::list_projects(c)? {
        let report = store::usage_report(c, p.id, &p.name, None, None)?;
        for i in report.instances {
            out.extend(i.pools.into_iter().map(|pool| BackendSeconds {
                project: p.name.clone(),
                instance: i.instance.clone(),
                pool: pool.pool,
                seconds: pool.figures.backend_seconds,
            }));
        }
    }
    Ok(out)
}

/// A histogram whose buckets were counted elsewhere (a node's sample).
#[derive(Debug)]
struct ConstHistogram<'a>(&'a MsHistogram);

impl TypedMetric for ConstHistogram<'_> {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ConstHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let h = self.0;
        // Per-bucket counts; the encoder makes them cumulative.
        let buckets: Vec<(f64, u64)> = h
            .bounds_ms
            .iter()
            .map(|b| *b as f64)
            .chain([f64::INFINITY])
            .zip(h.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(h.sum_ms as f64, h.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Writes a family only when it has series.
fn some_family<M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: Vec<(Labels, M)>,
) -> fmt::Result {
    if series.is_empty() {
        return Ok(());
    }
    family(enc, name, help, series)
}

pub(super) fn encode_backend_seconds(
    enc: &mut DescriptorEncoder<'_>,
    usage: &[BackendSeconds],
) -> fmt::Result {
    let series = usage
        .iter()
        .map(|u| {
            let labels = vec![
                ("project", u.project.clone()),
                ("instance", u.instance.clone()),
                ("pool", u.pool.clone()),
            ];
            (labels, ConstCounter::new(u.seconds))
        })
        .collect();
    some_family(
        enc,
        "lbaas_backend_seconds",
        "Running time of managed backends, start to stop, in seconds.",
        series,
    )
}

/// Per managed pool (and resource) of each node's latest sample.
pub(super) fn encode_managed(
    enc: &mut DescriptorEncoder<'_>,
    nodes: &[(Labels, &NodeStats)],
) -> fmt::Result {
    let pools: Vec<(Labels, &ManagedPoolStats)> = nodes
        .iter()
        .flat_map(|(l, s)| {
            s.managed.iter().map(move |m| {
                let mut labels = l.clone();
                labels.push(("pool", m.pool.clone()));
                if let Some(r) = &m.resource {
                    labels.push(("resource", r.clone()));
                }
                (labels, m)
            })
        })
        .collect();
    let gauge = |f: fn(&ManagedPoolStats) -> u32| {
        pools
            .iter()
            .map(|(l, m)| (l.clone(), ConstGauge::new(i64::from(f(m)))))
            .collect::<Vec<_>>()
    };
    let counter = |f: fn(&ManagedPoolStats) -> u64| {
        pools
            .iter()
            .map(|(l, m)| (l.clone(), ConstCounter::new(f(m))))
            .collect::<Vec<_>>()
    };
    some_family(
        enc,
        "lbaas_managed_queued",
        "Requests (or connections) a node holds now for a managed pool with no ready member.",
        gauge(|m| m.queued),
    )?;
    some_family(
        enc,
        "lbaas_managed_ready",
        "Ready members a node sends a managed pool's requests to.",
        gauge(|m| m.ready),
    )?;
    some_family(
        enc,
        "lbaas_managed_cold_starts",
        "Held requests that were then served.",
        counter(|m| m.cold_starts),
    )?;
    some_family(
        enc,
        "lbaas_managed_queue_full",
        "Requests answered 503 because the wake queue was full.",
        counter(|m| m.queue_full),
    )?;
    some_family(
        enc,
        "lbaas_managed_wait_timeouts",
        "Requests answered 504 after the queue's max_wait_ms.",
        counter(|m| m.wait_timeouts),
    )?;
    some_family(
        enc,
        "lbaas_managed_start_failures",
        "Held requests answered 503 because their backend failed to start.",
        counter(|m| m.start_failures),
    )?;
    some_family(
        enc,
        "lbaas_cold_start_ms",
        "How long held requests waited for a managed backend, in ms.",
        pools
            .iter()
            .map(|(l, m)| (l.clone(), ConstHistogram(&m.cold_start_ms)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::collector::Collector;
    use prometheus_client::registry::Registry;

    #[derive(Debug)]
    struct Only(Vec<(Labels, NodeStats)>, Vec<BackendSeconds>);

    impl Collector for Only {
        fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
            let nodes: Vec<_> = self.0.iter().map(|(l, s)| (l.clone(), s)).collect();
            encode_backend_seconds(&mut enc, &self.1)?;
            encode_managed(&mut enc, &nodes)
        }
    }

    fn text(c: Only) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(c));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn pools_show_queue_refusals_and_a_cumulative_histogram() {
        let mut hist = MsHistogram::cold_start();
        for ms in [5, 40, 40, 70_000] {
            hist.observe(ms);
        }
        let stats = NodeStats {
            managed: vec![ManagedPoolStats {
                pool: "default".into(),
                queued: 3,
                queue_full: 2,
                wait_timeouts: 1,
                start_failures: 4,
                cold_starts: 4,
                cold_start_ms: hist,
                ..ManagedPoolStats::default()
            }],
            ..NodeStats::default()
        };
        let labels = vec![("project", "demo".to_string()), ("node", "node-1".into())];
        let usage = vec![BackendSeconds {
            project: "demo".into(),
            instance: "web".into(),
            pool: "default".into(),
            seconds: 12.5,
        }];
        let out = text(Only(vec![(labels, stats)], usage));
        let l = r#"project="demo",node="node-1",pool="default""#;
        for line in [
            r#"lbaas_backend_seconds_total{project="demo",instance="web",pool="default"} 12.5"#,
            &format!("lbaas_managed_queued{{{l}}} 3"),
            &format!("lbaas_managed_queue_full_total{{{l}}} 2"),
            &format!("lbaas_managed_wait_timeouts_total{{{l}}} 1"),
            &format!("lbaas_managed_start_failures_total{{{l}}} 4"),
            &format!("lbaas_cold_start_ms_bucket{{{l},le=\"10\"}} 1"),
            &format!("lbaas_cold_start_ms_bucket{{{l},le=\"50\"}} 3"),
            &format!("lbaas_cold_start_ms_bucket{{{l},le=\"60000\"}} 3"),
            &format!("lbaas_cold_start_ms_bucket{{{l},le=\"+Inf\"}} 4"),
            &format!("lbaas_cold_start_ms_count{{{l}}} 4"),
            &format!("lbaas_cold_start_ms_sum{{{l}}} 70085.0"),
        ] {
            assert!(out.lines().any(|x| x == line), "{line} missing in\n{out}");
        }
    }

    #[test]
    fn nothing_managed_writes_nothing() {
        let out = text(Only(vec![(vec![], NodeStats::default())], vec![]));
        assert_eq!(out.trim(), "");
    }
}

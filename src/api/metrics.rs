//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of the stored
//! state and each node's latest stats sample. Authenticated like `/api`.

use std::fmt::Write;

use rusqlite::Connection;

use crate::model::MemberState;
use crate::store::{self, StoreError};

/// Escapes a label value: backslash, double quote and newline.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &str, value: f64) {
        self.samples.push((labels.to_string(), value));
    }
}

pub fn render(c: &Connection) -> Result<String, StoreError> {
    let mut projects = Family::new("lbaas_projects", "gauge", "Projects in the store.");
    let mut instances = Family::new(
        "lbaas_instance_info",
        "gauge",
        "One series per instance, with its statuses.",
    );
    let mut desired = Family::new(
        "lbaas_instance_desired_nodes",
        "gauge",
        "Nodes an instance should have now (min_nodes, or the autoscaler's count).",
    );
    let mut nodes = Family::new(
        "lbaas_node_info",
        "gauge",
        "One series per LB node, with its state.",
    );
    let mut requests = Family::new(
        "lbaas_node_requests_total",
        "counter",
        "Requests (HTTP) or connections (TCP) a node served.",
    );
    let mut active = Family::new(
        "lbaas_node_active_connections",
        "gauge",
        "Client connections open at a node.",
    );
    let mut bytes_in = Family::new(
        "lbaas_node_bytes_in_total",
        "counter",
        "Bytes from clients.",
    );
    let mut bytes_out = Family::new("lbaas_node_bytes_out_total", "counter", "Bytes to clients.");
    let mut errors = Family::new(
        "lbaas_node_backend_errors_total",
        "counter",
        "Requests no backend could take.",
    );
    let mut responses = Family::new(
        "lbaas_node_responses_total",
        "counter",
        "HTTP responses by status class.",
    );
    let mut latency = Family::new(
        "lbaas_node_latency_ms",
        "gauge",
        "Request latency percentiles over the last minute.",
    );
    let mut member_up = Family::new(
        "lbaas_member_up",
        "gauge",
        "1 when a backend member takes traffic.",
    );
    let mut member_requests = Family::new(
        "lbaas_member_requests_total",
        "counter",
        "Requests sent to a backend member.",
    );
    let mut member_failures = Family::new(
        "lbaas_member_failures_total",
        "counter",
        "Failed requests to a backend member.",
    );
    let mut events = Family::new(
        "lbaas_events_total",
        "counter",
        "Events in the monitor log by kind (failover, node_failed, scale_out, scale_in, ...), \
         over the events retention window.",
    );

    projects.add("", store::list_projects(c)?.len() as f64);
    for i in store::all_instances(c)? {
        let base = format!(
            "project=\"{}\",instance=\"{}\"",
            esc(&i.project_name),
            esc(&i.name)
        );
        instances.add(
            &format!(
                "{base},traffic_type=\"{}\",provisioning_status=\"{}\",operating_status=\"{}\"",
                i.spec.traffic_type.as_str(),
                i.provisioning_status.as_str(),
                i.operating_status.as_str()
            ),
            1.0,
        );
        desired.add(&base, f64::from(i.target_nodes()));
        for n in store::list_nodes(c, i.id)? {
            let node = format!("{base},node=\"node-{}\"", n.id);
            nodes.add(
                &format!(
                    "{node},address=\"{}\",state=\"{}\"",
                    n.address,
                    n.state.as_str()
                ),
                1.0,
            );
            let Some((_, s)) = store::latest_node_sample(c, n.id)? else {
                continue;
            };
            requests.add(&node, s.requests_total as f64);
            active.add(&node, s.active_connections as f64);
            bytes_in.add(&node, s.bytes_in as f64);
            bytes_out.add(&node, s.bytes_out as f64);
            errors.add(&node, s.backend_errors as f64);
            let r = s.responses;
            for (class, v) in [
                ("1xx", r.c1xx),
                ("2xx", r.c2xx),
                ("3xx", r.c3xx),
                ("4xx", r.c4xx),
                ("5xx", r.c5xx),
            ] {
                responses.add(&format!("{node},class=\"{class}\""), v as f64);
            }
            for (q, v) in [
                ("0.5", s.latency_ms.p50),
                ("0.9", s.latency_ms.p90),
                ("0.99", s.latency_ms.p99),
            ] {
                latency.add(&format!("{node},quantile=\"{q}\""), v);
            }
            for m in &s.members {
                let member = format!("{node},member=\"{}\"", m.address);
                member_up.add(&member, if m.state == MemberState::Up { 1.0 } else { 0.0 });
                member_requests.add(&member, m.requests as f64);
                member_failures.add(&member, m.failures as f64);
            }
        }
    }
    let mut stmt = c.prepare("SELECT kind, COUNT(*) FROM events GROUP BY kind ORDER BY kind")?;
    let counts = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in counts {
        let (kind, n) = row?;
        events.add(&format!("kind=\"{}\"", esc(&kind)), n as f64);
    }

    let mut out = String::new();
    for f in [
        projects,
        instances,
        desired,
        nodes,
        requests,
        active,
        bytes_in,
        bytes_out,
        errors,
        responses,
        latency,
        member_up,
        member_requests,
        member_failures,
        events,
    ] {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, value) in f.samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{} {value}", f.name);
            } else {
                let _ = writeln!(out, "{}{{{labels}}} {value}", f.name);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

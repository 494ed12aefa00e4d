//! A node's status answer turned into a monitor-log sample: counters since
//! the previous answer become rates.

// tokio's clock, so logic tests can pause and advance it.
use tokio::time::Instant;

use crate::model::{NodeStats, SampleInfo};

pub(super) fn from_status(
    node_id: crate::model::NodeId,
    stats: &NodeStats,
    previous: Option<(Instant, NodeStats)>,
) -> SampleInfo {
    let (requests_per_s, bytes_in_per_s, bytes_out_per_s) = match previous {
        Some((at, prev)) => {
            let secs = at.elapsed().as_secs_f64().max(0.001);
            // A counter that went down means the node restarted: no rate this time.
            let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
            (
                rate(stats.requests_total, prev.requests_total),
                rate(stats.bytes_in, prev.bytes_in),
                rate(stats.bytes_out, prev.bytes_out),
            )
        }
        None => (0.0, 0.0, 0.0),
    };
    let latency = stats.latency_ms;
    let with_data = |v: f64| (latency.count > 0).then_some(v);
    let members_down = stats
        .members
        .iter()
        .filter(|m| m.state.is_failing())
        .count() as u32;
    // A host name that resolves to nothing is a member down too: the
    // node is DEGRADED while DNS is late.
    let names_down = stats
        .names
        .iter()
        .filter(|n| n.addresses.is_empty())
        .count() as u32;
    SampleInfo {
        ts: crate::store::now(),
        resolution: 0,
        node_id,
        requests_per_s,
        active_connections: stats.active_connections as f64,
        bytes_in_per_s,
        bytes_out_per_s,
        p50_ms: with_data(latency.p50),
        p90_ms: with_data(latency.p90),
        p99_ms: with_data(latency.p99),
        members_up: stats.members.len() as u32 - members_down,
        members_down: members_down + names_down,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MemberState, MemberStats};

    #[test]
    fn rates_from_counters_and_members_down() {
        let member = |state: MemberState| MemberStats {
            address: "127.0.0.1:1".parse().unwrap(),
            state,
            weight: 1,
            requests: 0,
            failures: 0,
            active: 0,
            ejections: 0,
            pool: None,
            open_connections: 0,
            idle_ms: None,
            resource: None,
        };
        let before = NodeStats {
            requests_total: 100,
            ..Default::default()
        };
        let now = NodeStats {
            requests_total: 300,
            active_connections: 4,
            members: vec![
                member(MemberState::Up),
                member(MemberState::Down),
                member(MemberState::Draining),
            ],
            ..Default::default()
        };
        let at = Instant::now() - std::time::Duration::from_secs(2);
        let s = from_status(crate::model::NodeId(3), &now, Some((at, before)));
        assert!(
            (90.0..=100.0).contains(&s.requests_per_s),
            "{}",
            s.requests_per_s
        );
        assert_eq!((s.members_up, s.members_down), (2, 1));
        assert_eq!(s.active_connections, 4.0);
        assert_eq!(s.p99_ms, None, "no latency without requests");
        let first = from_status(crate::model::NodeId(3), &now, None);
        assert_eq!(first.requests_per_s, 0.0);
    }
}

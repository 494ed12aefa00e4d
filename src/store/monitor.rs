//! The monitor log (the seed's "data structure to store the monitor log"):
//! load samples per node per health-check interval, and events. Retention
//! keeps the file bounded: raw samples for an hour, then 1-minute averages
//! for a day; events for a week (all configurable).

use rusqlite::{params, Connection, OptionalExtension};

use super::{now, EventRow, StoreError};
use crate::model::{EventKind, InstanceId, NodeId, NodeStats, ProjectId, SampleInfo};

// === samples ===

/// Stores one raw sample; `stats` is the node's whole status, kept so
/// `info` can show the latest counters as the node reported them.
pub fn add_sample(
    c: &Connection,
    instance_id: InstanceId,
    sample: &SampleInfo,
    stats: &NodeStats,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(stats).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    c.execute(
        "INSERT INTO samples (ts, resolution, node_id, instance_id, requests_per_s, active_connections,
                              bytes_in_per_s, bytes_out_per_s, p50_ms, p90_ms, p99_ms,
                              members_up, members_down, stats)
         VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            sample.ts,
            sample.node_id,
            instance_id,
            sample.requests_per_s,
            sample.active_connections,
            sample.bytes_in_per_s,
            sample.bytes_out_per_s,
            sample.p50_ms,
            sample.p90_ms,
            sample.p99_ms,
            sample.members_up,
            sample.members_down,
            json
        ],
    )?;
    Ok(())
}

/// The newest counters a node reported, and when.
pub fn latest_node_sample(
    c: &Connection,
    node_id: NodeId,
) -> Result<Option<(i64, NodeStats)>, StoreError> {
    let row: Option<(i64, String)> = c
        .query_row(
            "SELECT ts, stats FROM samples WHERE node_id = ?1 AND stats IS NOT NULL
             ORDER BY id DESC LIMIT 1",
            [node_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    row.map(|(ts, json)| {
        serde_json::from_str(&json)
            .map(|s| (ts, s))
            .map_err(|e| StoreError::Corrupt(format!("node sample: {e}")))
    })
    .transpose()
}

/// An instance's samples since `since` (Unix seconds), newest first, at most `limit`.
pub fn recent_samples(
    c: &Connection,
    instance_id: InstanceId,
    since: i64,
    limit: u32,
) -> Result<Vec<SampleInfo>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT ts, resolution, node_id, requests_per_s, active_connections, bytes_in_per_s,
                bytes_out_per_s, p50_ms, p90_ms, p99_ms, members_up, members_down
         FROM samples WHERE instance_id = ?1 AND ts >= ?2 ORDER BY ts DESC, id DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![instance_id, since, limit], |r| {
        Ok(SampleInfo {
            ts: r.get(0)?,
            resolution: r.get(1)?,
            node_id: r.get(2)?,
            requests_per_s: r.get(3)?,
            active_connections: r.get(4)?,
            bytes_in_per_s: r.get(5)?,
            bytes_out_per_s: r.get(6)?,
            p50_ms: r.get(7)?,
            p90_ms: r.get(8)?,
            p99_ms: r.get(9)?,
            members_up: r.get(10)?,
            members_down: r.get(11)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How long each kind of row is kept, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw_samples: i64,
    pub minute_samples: i64,
    pub events: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw_samples: 3600,
            minute_samples: 86_400,
            events: 7 * 86_400,
        }
    }
}

/// Rows removed or folded by one retention pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub raw_folded: usize,
    pub minutes_added: usize,
    pub minutes_dropped: usize,
    pub events_dropped: usize,
}

/// One retention pass at time `at`: raw samples of whole minutes older than
/// the raw retention become one average row per node per minute; averages
/// and events past their retention are deleted. Run it in a transaction.
pub fn apply_retention(
    c: &Connection,
    keep: Retention,
    at: i64,
) -> Result<RetentionReport, StoreError> {
    // Only whole minutes are folded, so a minute never gets two average rows.
    let fold_before = (at - keep.raw_samples).div_euclid(60) * 60;
    let minutes_added = c.execute(
        "INSERT INTO samples (ts, resolution, node_id, instance_id, requests_per_s, active_connections,
                              bytes_in_per_s, bytes_out_per_s, p50_ms, p90_ms, p99_ms,
                              members_up, members_down, stats)
         SELECT (ts / 60) * 60, 60, node_id, instance_id, AVG(requests_per_s), AVG(active_connections),
                AVG(bytes_in_per_s), AVG(bytes_out_per_s), AVG(p50_ms), AVG(p90_ms), AVG(p99_ms),
                CAST(ROUND(AVG(members_up)) AS INTEGER), CAST(ROUND(AVG(members_down)) AS INTEGER), NULL
         FROM samples WHERE resolution = 0 AND ts < ?1
         GROUP BY node_id, instance_id, ts / 60",
        [fold_before],
    )?;
    let raw_folded = c.execute(
        "DELETE FROM samples WHERE resolution = 0 AND ts < ?1",
        [fold_before],
    )?;
    let minutes_dropped = c.execute(
        "DELETE FROM samples WHERE resolution = 60 AND ts < ?1",
        [at - keep.minute_samples],
    )?;
    let events_dropped = c.execute("DELETE FROM events WHERE ts < ?1", [at - keep.events])?;
    Ok(RetentionReport {
        raw_folded,
        minutes_added,
        minutes_dropped,
        events_dropped,
    })
}

/// Row counts of the monitor log: (raw samples, minute samples, events).
pub fn monitor_log_size(c: &Connection) -> Result<(i64, i64, i64), StoreError> {
    Ok(c.query_row(
        "SELECT (SELECT COUNT(*) FROM samples WHERE resolution = 0),
                (SELECT COUNT(*) FROM samples WHERE resolution = 60),
                (SELECT COUNT(*) FROM events)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?)
}

// === events ===

/// What an event is about; ids are kept even after the object is gone.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventSubject {
    pub project_id: Option<ProjectId>,
    pub instance_id: Option<InstanceId>,
    pub node_id: Option<NodeId>,
}

impl EventSubject {
    pub fn project(project_id: ProjectId) -> Self {
        EventSubject {
            project_id: Some(project_id),
            ..Default::default()
        }
    }

    pub fn instance(project_id: ProjectId, instance_id: InstanceId) -> Self {
        EventSubject {
            project_id: Some(project_id),
            instance_id: Some(instance_id),
            node_id: None,
        }
    }

    pub fn node(project_id: ProjectId, instance_id: InstanceId, node_id: NodeId) -> Self {
        EventSubject {
            project_id: Some(project_id),
            instance_id: Some(instance_id),
            node_id: Some(node_id),
        }
    }
}

pub fn add_event(
    c: &Connection,
    subject: EventSubject,
    kind: EventKind,
    message: &str,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO events (ts, project_id, instance_id, node_id, kind, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![now(), subject.project_id, subject.instance_id, subject.node_id, kind, message],
    )?;
    super::counters::count_event(c, kind)?;
    Ok(())
}

/// An instance's events since `since` (Unix seconds), newest first, at most `limit`.
pub fn recent_events(
    c: &Connection,
    instance_id: InstanceId,
    since: i64,
    limit: u32,
) -> Result<Vec<EventRow>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT ts, node_id, kind, message FROM events WHERE instance_id = ?1 AND ts >= ?2
         ORDER BY id DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![instance_id, since, limit], |r| {
        Ok(EventRow {
            ts: r.get(0)?,
            node_id: r.get(1)?,
            kind: r.get(2)?,
            message: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ts: i64, node_id: NodeId, rps: f64) -> SampleInfo {
        SampleInfo {
            ts,
            resolution: 0,
            node_id,
            requests_per_s: rps,
            active_connections: 1.0,
            bytes_in_per_s: 0.0,
            bytes_out_per_s: 0.0,
            p50_ms: Some(1.0),
            p90_ms: None,
            p99_ms: Some(rps),
            members_up: 2,
            members_down: 0,
        }
    }

    #[test]
    fn retention_folds_old_minutes_and_keeps_the_log_bounded() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrations::migrate(&mut conn).unwrap();
        let keep = Retention {
            raw_samples: 3600,
            minute_samples: 86_400,
            events: 86_400,
        };
        let start = 1_000_000 * 60;
        let stats = NodeStats::default();
        // Two days of a sample every 5 s for one node, with retention running
        // every simulated minute, as lbd does.
        let mut largest = (0, 0, 0);
        for minute in 0..(2 * 24 * 60) {
            let t0 = start + minute * 60;
            for k in 0..12 {
                let rps = if k % 2 == 0 { 10.0 } else { 20.0 };
                add_sample(
                    &conn,
                    InstanceId(1),
                    &sample(t0 + k * 5, NodeId(7), rps),
                    &stats,
                )
                .unwrap();
            }
            add_event(&conn, EventSubject::default(), EventKind::NodeReady, "x").unwrap();
            let tx = conn.transaction().unwrap();
            apply_retention(&tx, keep, t0 + 60).unwrap();
            tx.commit().unwrap();
            let size = monitor_log_size(&conn).unwrap();
            largest = (
                largest.0.max(size.0),
                largest.1.max(size.1),
                largest.2.max(size.2),
            );
        }
        // An hour of raw rows (720) plus the minute being filled; a day of minutes.
        assert!(largest.0 <= 720 + 12, "raw rows {}", largest.0);
        assert!(largest.1 <= 24 * 60 + 1, "minute rows {}", largest.1);
        let (raw, minutes, _) = monitor_log_size(&conn).unwrap();
        assert!(raw >= 700, "the last hour stays raw: {raw}");
        assert!(minutes >= 24 * 60 - 61, "a day of minutes: {minutes}");
        let oldest_minute = recent_samples(&conn, InstanceId(1), 0, 100_000)
            .unwrap()
            .into_iter()
            .rfind(|s| s.resolution == 60)
            .unwrap();
        assert_eq!(oldest_minute.ts % 60, 0);
        assert_eq!(
            oldest_minute.requests_per_s, 15.0,
            "the average of 10 and 20"
        );
        assert_eq!(oldest_minute.p99_ms, Some(15.0));
        assert_eq!(oldest_minute.members_up, 2);
    }
}

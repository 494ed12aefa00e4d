//! The monitor log (the seed's "data structure to store the monitor log"):
//! load samples per node per health-check interval, and events. Retention
//! keeps the file bounded: raw samples for an hour, then 1-minute averages
//! for a day; events for a week (all configurable).

use std::collections::HashMap;
use std::net::SocketAddr;

use rusqlite::{params, Connection, OptionalExtension};

use super::{now, EventRow, StoreError};
use crate::model::{EventKind, InstanceId, MemberState, NodeId, NodeStats, ProjectId, SampleInfo};

// === samples ===

/// Stores one raw sample: its numbers as a row of `samples`; the node's
/// whole status (so `info` can show the latest counters as the node
/// reported them) replaces the node's one row in `node_latest`; and each
/// member whose state differs from the previous status gets a row in
/// `member_states`. So a node with 256 members checked every second adds
/// one small row a second, not its whole status.
pub fn add_sample(
    c: &Connection,
    instance_id: InstanceId,
    sample: &SampleInfo,
    stats: &NodeStats,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(stats).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let previous = latest_node_sample(c, sample.node_id)?.map(|(_, s)| s);
    c.prepare_cached(
        "INSERT INTO node_latest (node_id, ts, stats) VALUES (?1, ?2, ?3)
         ON CONFLICT (node_id) DO UPDATE SET ts = excluded.ts, stats = excluded.stats",
    )?
    .execute(params![sample.node_id, sample.ts, json])?;
    record_member_changes(c, instance_id, sample, previous.as_ref(), stats)?;
    c.prepare_cached(
        "INSERT INTO samples (ts, resolution, node_id, instance_id, requests_per_s, active_connections,
                              bytes_in_per_s, bytes_out_per_s, p50_ms, p90_ms, p99_ms,
                              members_up, members_down)
         VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
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
        ],
    )?;
    Ok(())
}

/// A member's state changes within this many seconds of its last logged
/// change update that row instead of adding one: a flapping member costs at
/// most one row a minute, and the row still ends with its latest state.
const MEMBER_CHANGE_COALESCE_SECS: i64 = 60;

/// Logs the members whose state is new or changed since `previous`.
fn record_member_changes(
    c: &Connection,
    instance_id: InstanceId,
    sample: &SampleInfo,
    previous: Option<&NodeStats>,
    stats: &NodeStats,
) -> Result<(), StoreError> {
    let before: HashMap<SocketAddr, MemberState> = previous
        .map(|p| p.members.iter().map(|m| (m.address, m.state)).collect())
        .unwrap_or_default();
    for m in &stats.members {
        if before.get(&m.address) == Some(&m.state) {
            continue;
        }
        let address = m.address.to_string();
        let last: Option<(i64, i64)> = c
            .query_row(
                "SELECT id, ts FROM member_states WHERE node_id = ?1 AND address = ?2
                 ORDER BY id DESC LIMIT 1",
                params![sample.node_id, address],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match last {
            Some((id, ts)) if sample.ts - ts < MEMBER_CHANGE_COALESCE_SECS => {
                c.execute(
                    "UPDATE member_states SET state = ?2 WHERE id = ?1",
                    params![id, m.state.as_str()],
                )?;
            }
            _ => {
                c.execute(
                    "INSERT INTO member_states (ts, node_id, instance_id, address, state)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        sample.ts,
                        sample.node_id,
                        instance_id,
                        address,
                        m.state.as_str()
                    ],
                )?;
            }
        }
    }
    Ok(())
}

/// A node's logged member state changes, oldest first: (time, member, state).
pub fn member_state_changes(
    c: &Connection,
    node_id: NodeId,
) -> Result<Vec<(i64, String, String)>, StoreError> {
    let mut stmt =
        c.prepare("SELECT ts, address, state FROM member_states WHERE node_id = ?1 ORDER BY id")?;
    let rows = stmt.query_map([node_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest counters a node reported, and when.
pub fn latest_node_sample(
    c: &Connection,
    node_id: NodeId,
) -> Result<Option<(i64, NodeStats)>, StoreError> {
    let row: Option<(i64, String)> = c
        .prepare_cached("SELECT ts, stats FROM node_latest WHERE node_id = ?1")?
        .query_row([node_id], |r| Ok((r.get(0)?, r.get(1)?)))
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
    /// Seconds audit log entries are kept.
    pub audit: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw_samples: 3600,
            minute_samples: 86_400,
            events: 7 * 86_400,
            audit: 30 * 86_400,
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
    pub member_changes_dropped: usize,
    pub audit_dropped: usize,
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
    // Member state changes are kept as long as events: they are events of members.
    let member_changes_dropped = c.execute(
        "DELETE FROM member_states WHERE ts < ?1",
        [at - keep.events],
    )?;
    // The audit log is not the monitor log, but it is pruned on the same pass.
    let audit_dropped = c.execute("DELETE FROM audit WHERE ts < ?1", [at - keep.audit])?;
    Ok(RetentionReport {
        raw_folded,
        minutes_added,
        minutes_dropped,
        events_dropped,
        member_changes_dropped,
        audit_dropped,
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
    #[test]
    fn audit_entries_past_their_retention_are_dropped() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrations::migrate(&mut conn).unwrap();
        for ts in [100, 5_000] {
            let entry = crate::model::AuditEntry {
                ts,
                user: Some("alice".into()),
                client: "127.0.0.1".into(),
                action: Some("create".into()),
                object_type: Some("project".into()),
                name: Some("p".into()),
                status: 200,
                code: None,
            };
            super::super::add_audit(&conn, &entry).unwrap();
        }
        let keep = Retention {
            audit: 1_000,
            ..Retention::default()
        };
        let report = apply_retention(&conn, keep, 5_500).unwrap();
        assert_eq!(report.audit_dropped, 1);
        let left = super::super::query_audit(&conn, &Default::default()).unwrap();
        assert_eq!(left.iter().map(|e| e.ts).collect::<Vec<_>>(), vec![5_000]);
    }

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
            audit: 86_400,
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

    fn members(n: u16, down: Option<u16>) -> NodeStats {
        let members = (0..n)
            .map(|k| crate::model::MemberStats {
                address: SocketAddr::from(([127, 0, 0, 1], 10_000 + k)),
                state: if Some(k) == down {
                    MemberState::Down
                } else {
                    MemberState::Up
                },
                weight: 1,
                requests: u64::from(k),
                failures: 0,
                active: 0,
                ejections: 0,
                pool: None,
                open_connections: 0,
                idle_ms: None,
                resource: None,
            })
            .collect();
        NodeStats {
            members,
            ..NodeStats::default()
        }
    }

    #[test]
    fn samples_keep_numbers_and_member_states_only_when_they_change() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrations::migrate(&mut conn).unwrap();
        let (inst, node) = (InstanceId(1), NodeId(7));
        // Checks every second of a node with 256 members, one of which goes
        // down at second 100, comes back at 110 (within a minute of going
        // down: that row is updated), and goes down again at 200.
        for t in 0..240 {
            let down = ((100..110).contains(&t) || t >= 200).then_some(5);
            add_sample(
                &conn,
                inst,
                &sample(1000 + t, node, 1.0),
                &members(256, down),
            )
            .unwrap();
        }
        let with_status: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM samples WHERE stats IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(with_status, 0, "no sample row carries the whole status");
        let latest: i64 = conn
            .query_row("SELECT COUNT(*) FROM node_latest", [], |r| r.get(0))
            .unwrap();
        assert_eq!(latest, 1, "one status row per node, overwritten");
        let changes = member_state_changes(&conn, node).unwrap();
        assert_eq!(
            changes.len(),
            256 + 2,
            "every member once, then two changes"
        );
        assert_eq!(
            changes[256],
            (1100, "127.0.0.1:10005".into(), "up".into()),
            "down and back up within a minute: one row, ending in its latest state"
        );
        assert_eq!(
            changes[257],
            (1200, "127.0.0.1:10005".into(), "down".into())
        );
        let (ts, stats) = latest_node_sample(&conn, node).unwrap().unwrap();
        assert_eq!((ts, stats.members.len()), (1239, 256));
    }
}

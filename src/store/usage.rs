//! Accounting of managed backends and LB nodes (issue 16): daily totals per
//! (project, instance, pool, UTC day), kept a year. Pool `''` holds the
//! instance's LB node time. Running time is split at midnight UTC so a
//! window of days gets exactly its share.

use rusqlite::{params, Connection};

use super::backends::BackendRow;
use super::StoreError;
use crate::model::time::rfc3339_ms;
use crate::model::usage::{InstanceUsage, PoolUsage, UsageFigures, UsageReport};
use crate::model::{InstanceId, ProjectId};

const DAY_MS: i64 = 86_400_000;
/// Daily totals are kept this long (the accounting promise of issue 16).
pub const DAILY_RETENTION_DAYS: i64 = 366;
/// The pool name under which an instance's node time is counted.
const NODE_POOL: &str = "";

/// Whose figures a daily row holds.
#[derive(Debug, Clone)]
pub struct UsageKey<'a> {
    pub project_id: ProjectId,
    pub instance_id: InstanceId,
    pub instance_name: &'a str,
    pub pool: &'a str,
}

impl<'a> UsageKey<'a> {
    pub fn of(b: &'a BackendRow, instance_name: &'a str) -> Self {
        UsageKey {
            project_id: b.project_id,
            instance_id: b.instance_id,
            instance_name,
            pool: &b.pool,
        }
    }
}

/// The UTC day (days since the epoch) of a unix-ms time.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// The daily figures that can be added to (a fixed set: the column name is
/// never caller text).
const FIELDS: [&str; 6] = [
    "backend_seconds",
    "node_seconds",
    "starts",
    "cold_starts",
    "requests",
    "cold_start_ms_sum",
];

/// Adds `amount` to `field` of the key's row for `day`.
pub(super) fn add_to_day(
    c: &Connection,
    key: &UsageKey<'_>,
    day: i64,
    field: &str,
    amount: f64,
) -> Result<(), StoreError> {
    let field = FIELDS
        .iter()
        .find(|f| **f == field)
        .ok_or_else(|| StoreError::Corrupt(format!("no usage field {field}")))?;
    c.execute(
        &format!(
            "INSERT INTO usage_daily (project_id, instance_id, instance_name, pool, day, {field})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (project_id, instance_id, pool, day)
             DO UPDATE SET {field} = {field} + excluded.{field}, instance_name = excluded.instance_name"
        ),
        params![
            key.project_id,
            key.instance_id,
            key.instance_name,
            key.pool,
            day,
            amount
        ],
    )?;
    Ok(())
}

/// Adds the running time from `start_ms` to `end_ms` to `field` (seconds),
/// split over the UTC days it covers.
pub(super) fn add_span(
    c: &Connection,
    key: &UsageKey<'_>,
    field: &str,
    start_ms: i64,
    end_ms: i64,
) -> Result<(), StoreError> {
    for (day, ms) in split_by_day(start_ms, end_ms) {
        add_to_day(c, key, day, field, ms as f64 / 1000.0)?;
    }
    Ok(())
}

fn split_by_day(start_ms: i64, end_ms: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut at = start_ms;
    while at < end_ms {
        let day = day_of(at);
        let next = ((day + 1) * DAY_MS).min(end_ms);
        out.push((day, next - at));
        at = next;
    }
    out
}

/// An LB node ran from `created_ms` to `deleted_ms`: its instance's node time.
pub(super) fn add_node_span(
    c: &Connection,
    instance_id: InstanceId,
    created_ms: i64,
    deleted_ms: i64,
) -> Result<(), StoreError> {
    let row: Option<(ProjectId, String)> = c
        .query_row(
            "SELECT project_id, name FROM instances WHERE id = ?1",
            [instance_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    let Some((project_id, name)) = row else {
        return Ok(());
    };
    let key = UsageKey {
        project_id,
        instance_id,
        instance_name: &name,
        pool: NODE_POOL,
    };
    add_span(c, &key, "node_seconds", created_ms, deleted_ms)
}

/// Drops daily totals older than a year and backend lifetimes older than
/// `lifetime_retention_s` (the monitor log's event retention).
pub fn prune_usage(
    c: &Connection,
    lifetime_retention_s: i64,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let days = c.execute(
        "DELETE FROM usage_daily WHERE day < ?1",
        [day_of(now_ms) - DAILY_RETENTION_DAYS],
    )?;
    let lives = c.execute(
        "DELETE FROM backend_lifetimes WHERE stopped_at_ms < ?1",
        [now_ms - lifetime_retention_s.saturating_mul(1000)],
    )?;
    Ok(days + lives)
}

/// Per instance (id, name): the sums of each pool.
type ByInstance = Vec<(i64, String, Vec<(String, Sums)>)>;

#[derive(Default)]
struct Sums {
    figures: UsageFigures,
    cold_ms_sum: f64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        let (f, g) = (&mut self.figures, &o.figures);
        f.backend_seconds += g.backend_seconds;
        f.node_seconds += g.node_seconds;
        f.starts += g.starts;
        f.cold_starts += g.cold_starts;
        f.requests += g.requests;
        self.cold_ms_sum += o.cold_ms_sum;
    }

    fn done(mut self) -> UsageFigures {
        self.figures.cold_start_ms_mean = (self.figures.cold_starts > 0)
            .then(|| self.cold_ms_sum / self.figures.cold_starts as f64);
        self.figures
    }
}

/// A project's usage between `since` and `until` (unix ms; `None`: open),
/// by whole UTC days. With an open end, backends and nodes running now
/// count up to now. `project` is the name the report carries.
pub fn usage_report(
    c: &Connection,
    project_id: ProjectId,
    project: &str,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
) -> Result<UsageReport, StoreError> {
    let first = since_ms.map(day_of).unwrap_or(i64::MIN);
    let last = until_ms.map(|u| day_of(u - 1)).unwrap_or(i64::MAX);
    let mut stmt = c.prepare(
        "SELECT instance_id, MAX(instance_name), pool, SUM(backend_seconds), SUM(node_seconds),
                SUM(starts), SUM(cold_starts), SUM(requests), SUM(cold_start_ms_sum)
         FROM usage_daily WHERE project_id = ?1 AND day BETWEEN ?2 AND ?3
         GROUP BY instance_id, pool ORDER BY instance_id, pool",
    )?;
    let rows = stmt.query_map(params![project_id, first, last], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            Sums {
                figures: UsageFigures {
                    backend_seconds: r.get(3)?,
                    node_seconds: r.get(4)?,
                    starts: r.get::<_, i64>(5)?.max(0) as u64,
                    cold_starts: r.get::<_, i64>(6)?.max(0) as u64,
                    requests: r.get::<_, i64>(7)?.max(0) as u64,
                    cold_start_ms_mean: None,
                },
                cold_ms_sum: r.get::<_, i64>(8)? as f64,
            },
        ))
    })?;
    // (instance id, name) → pool → sums
    let mut by_instance: ByInstance = Vec::new();
    for row in rows {
        let (id, name, pool, sums) = row?;
        match by_instance.last_mut() {
            Some((last_id, _, pools)) if *last_id == id => pools.push((pool, sums)),
            _ => by_instance.push((id, name, vec![(pool, sums)])),
        }
    }
    if until_ms.is_none() {
        add_running(c, project_id, &mut by_instance)?;
    }
    let mut totals = Sums::default();
    let instances = by_instance
        .into_iter()
        .map(|(_, instance, pools)| {
            let mut sum = Sums::default();
            for (_, s) in &pools {
                sum.add(s);
            }
            totals.add(&sum);
            InstanceUsage {
                instance,
                figures: sum.done(),
                pools: pools
                    .into_iter()
                    .filter(|(p, _)| p != NODE_POOL)
                    .map(|(pool, s)| PoolUsage {
                        pool,
                        figures: s.done(),
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(UsageReport {
        project: project.to_string(),
        since: since_ms.map(rfc3339_ms),
        until: until_ms.map(rfc3339_ms),
        instances,
        totals: totals.done(),
    })
}

/// Adds what runs now (backends and nodes) up to now.
fn add_running(
    c: &Connection,
    project_id: ProjectId,
    by_instance: &mut ByInstance,
) -> Result<(), StoreError> {
    let now_ms = super::now_ms();
    let mut stmt = c.prepare(
        "SELECT b.instance_id, i.name, b.pool, b.started_at_ms, b.requests
         FROM backends b JOIN instances i ON i.id = b.instance_id WHERE b.project_id = ?1
         UNION ALL
         SELECT n.instance_id, i.name, '', n.created_at * 1000, 0
         FROM nodes n JOIN instances i ON i.id = n.instance_id WHERE i.project_id = ?1",
    )?;
    let rows = stmt.query_map([project_id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (id, name, pool, started, requests) = row?;
        let secs = (now_ms - started).max(0) as f64 / 1000.0;
        let mut s = Sums::default();
        if pool == NODE_POOL {
            s.figures.node_seconds = secs;
        } else {
            s.figures.backend_seconds = secs;
            s.figures.requests = requests.max(0) as u64;
        }
        let pools = match by_instance.iter_mut().find(|(i, _, _)| *i == id) {
            Some((_, _, pools)) => pools,
            None => {
                by_instance.push((id, name, Vec::new()));
                &mut by_instance.last_mut().expect("just pushed").2
            }
        };
        match pools.iter_mut().find(|(p, _)| *p == pool) {
            Some((_, sums)) => sums.add(&s),
            None => pools.push((pool, s)),
        }
    }
    Ok(())
}

/// The managed backends of an instance, as the API shows them, oldest first.
pub fn backends_of_instance(
    c: &Connection,
    instance_id: InstanceId,
) -> Result<Vec<crate::model::managed::ManagedBackendInfo>, StoreError> {
    Ok(super::backends::backends_of(c, instance_id)?
        .iter()
        .map(BackendRow::info)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_split_at_midnight() {
        assert_eq!(
            split_by_day(DAY_MS - 500, DAY_MS + 250),
            vec![(0, 500), (1, 250)]
        );
        assert!(split_by_day(5, 5).is_empty());
    }
}

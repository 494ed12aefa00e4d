//! Counters that only go up: how many events of each kind were ever
//! recorded. They live apart from `events`, which retention prunes, so that
//! `lbaas_events_total` behaves as a Prometheus counter and never decreases.

use rusqlite::Connection;

use super::StoreError;
use crate::model::EventKind;

/// Counts one event of `kind`. `add_event` calls it in the transaction it
/// inserted the event with (every write is one), so both commit or neither does.
pub fn count_event(c: &Connection, kind: EventKind) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO event_counts (kind, count) VALUES (?1, 1)
         ON CONFLICT (kind) DO UPDATE SET count = count + 1",
        [kind],
    )?;
    Ok(())
}

/// Events ever recorded, per kind, ordered by kind.
pub fn event_counts(c: &Connection) -> Result<Vec<(String, u64)>, StoreError> {
    let mut stmt = c.prepare("SELECT kind, count FROM event_counts ORDER BY kind")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::super::{add_event, apply_retention, EventSubject, Retention};
    use super::*;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrations::migrate(&mut conn).unwrap();
        conn
    }

    #[test]
    fn add_event_counts_each_kind_and_retention_leaves_the_counts_alone() {
        let conn = db();
        for kind in [
            EventKind::Failover,
            EventKind::NodeFailed,
            EventKind::Failover,
        ] {
            add_event(&conn, EventSubject::default(), kind, "x").unwrap();
        }
        let expected = vec![("failover".to_string(), 2), ("node_failed".to_string(), 1)];
        assert_eq!(event_counts(&conn).unwrap(), expected);
        let report = apply_retention(
            &conn,
            Retention::default(),
            super::super::now() + 30 * 86_400,
        )
        .unwrap();
        assert_eq!(report.events_dropped, 3);
        assert_eq!(event_counts(&conn).unwrap(), expected);
    }

    #[test]
    fn a_rolled_back_event_is_not_counted() {
        let mut conn = db();
        {
            let tx = conn.transaction().unwrap();
            add_event(&tx, EventSubject::default(), EventKind::Failover, "x").unwrap();
            tx.rollback().unwrap();
        }
        assert_eq!(event_counts(&conn).unwrap(), vec![]);
    }
}

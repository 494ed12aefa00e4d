//! Schema migrations, tracked with SQLite's `user_version`. Append only: a
//! released migration is never edited, a change is a new entry.

use rusqlite::Connection;

use super::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: projects, instances, nodes, events.
    "CREATE TABLE projects (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        user TEXT NOT NULL,
        subnet TEXT NOT NULL,
        provisioning_status TEXT NOT NULL,
        status_reason TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        generation INTEGER NOT NULL,
        provisioning_status TEXT NOT NULL,
        operating_status TEXT NOT NULL,
        status_reason TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (project_id, name)
    );
    CREATE TABLE nodes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_id INTEGER NOT NULL REFERENCES instances(id),
        address TEXT NOT NULL UNIQUE,
        secret TEXT NOT NULL,
        state TEXT NOT NULL,
        pid INTEGER,
        operating_status TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        project_id INTEGER,
        instance_id INTEGER,
        node_id INTEGER,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_by_instance ON events (instance_id, ts);",
    // 2: node stats samples (the monitor log's numbers).
    "CREATE TABLE node_samples (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        node_id INTEGER NOT NULL,
        instance_id INTEGER NOT NULL,
        stats TEXT NOT NULL
    );
    CREATE INDEX node_samples_by_node ON node_samples (node_id, ts);
    CREATE INDEX node_samples_by_instance ON node_samples (instance_id, ts);",
    // 3: failover, autoscaling and the monitor log with retention: node
    // lifecycle columns, the autoscaler's node count, samples with their
    // numbers as columns (raw, and 1-minute averages after downsampling).
    "ALTER TABLE nodes ADD COLUMN state_changed_at INTEGER;
    ALTER TABLE nodes ADD COLUMN applied_generation INTEGER;
    UPDATE nodes SET state = 'starting', state_changed_at = created_at
        WHERE state NOT IN ('starting', 'running', 'failed', 'retiring');
    UPDATE nodes SET state_changed_at = created_at WHERE state_changed_at IS NULL;
    ALTER TABLE instances ADD COLUMN desired_nodes INTEGER;
    ALTER TABLE instances ADD COLUMN scaled_at INTEGER;
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        resolution INTEGER NOT NULL,
        node_id INTEGER NOT NULL,
        instance_id INTEGER NOT NULL,
        requests_per_s REAL NOT NULL,
        active_connections REAL NOT NULL,
        bytes_in_per_s REAL NOT NULL,
        bytes_out_per_s REAL NOT NULL,
        p50_ms REAL,
        p90_ms REAL,
        p99_ms REAL,
        members_up INTEGER NOT NULL,
        members_down INTEGER NOT NULL,
        stats TEXT
    );
    INSERT INTO samples (ts, resolution, node_id, instance_id, requests_per_s, active_connections,
                         bytes_in_per_s, bytes_out_per_s, members_up, members_down, stats)
        SELECT ts, 0, node_id, instance_id, 0, 0, 0, 0, 0, 0, stats FROM node_samples;
    DROP TABLE node_samples;
    CREATE INDEX samples_by_instance ON samples (instance_id, ts);
    CREATE INDEX samples_by_node ON samples (node_id, ts);
    CREATE INDEX samples_by_age ON samples (resolution, ts);
    CREATE INDEX events_by_age ON events (ts);",
    // 4: a delete stays requested while it fails (the object may show ERROR
    // meanwhile), so it is retried and never turns back into a live object.
    "ALTER TABLE projects ADD COLUMN deleting INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE instances ADD COLUMN deleting INTEGER NOT NULL DEFAULT 0;
    UPDATE projects SET deleting = 1 WHERE provisioning_status = 'PENDING_DELETE';
    UPDATE instances SET deleting = 1 WHERE provisioning_status = 'PENDING_DELETE';",
    // 5: events ever recorded per kind, which retention never touches (a
    // Prometheus counter must not go down), seeded from the events kept so far.
    "CREATE TABLE event_counts (kind TEXT PRIMARY KEY, count INTEGER NOT NULL);
    INSERT INTO event_counts (kind, count) SELECT kind, COUNT(*) FROM events GROUP BY kind;",
    // 6: samples keep only their numbers; each node's latest whole status
    // is one row (overwritten), and member states are logged when they change.
    "CREATE TABLE node_latest (
        node_id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        stats TEXT NOT NULL
    );
    INSERT INTO node_latest (node_id, ts, stats)
        SELECT s.node_id, s.ts, s.stats FROM samples s
        JOIN (SELECT MAX(id) AS id FROM samples WHERE stats IS NOT NULL GROUP BY node_id) l
          ON l.id = s.id;
    UPDATE samples SET stats = NULL WHERE stats IS NOT NULL;
    CREATE TABLE member_states (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        node_id INTEGER NOT NULL,
        instance_id INTEGER NOT NULL,
        address TEXT NOT NULL,
        state TEXT NOT NULL
    );
    CREATE INDEX member_states_by_member ON member_states (node_id, address, id);
    CREATE INDEX member_states_by_ts ON member_states (ts);",
    // 7: tenants. Users with a role, the SHA-256 of their token and quota
    // limits (NULL: lbd's defaults); one user per project owner named so
    // far (a member, or the admin for `admin`; no token until an admin
    // rotates one). The audit log.
    "CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        token_hash BLOB UNIQUE,
        max_projects INTEGER,
        max_instances INTEGER,
        max_nodes INTEGER,
        created_at INTEGER NOT NULL
    );
    INSERT INTO users (name, role, created_at) VALUES ('admin', 'admin', unixepoch());
    INSERT OR IGNORE INTO users (name, role, created_at)
        SELECT DISTINCT user, 'member', unixepoch() FROM projects;
    CREATE INDEX projects_by_user ON projects (user);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        user TEXT,
        client TEXT NOT NULL,
        action TEXT,
        type TEXT,
        name TEXT,
        status INTEGER NOT NULL,
        code TEXT
    );
    CREATE INDEX audit_by_ts ON audit (ts);
    CREATE INDEX audit_by_user ON audit (user, ts);",
    // 8: how many nodes the instance's current config was built for (node
    // rate limits enforce threshold / serving nodes); 0: not yet counted.
    "ALTER TABLE instances ADD COLUMN serving_nodes INTEGER NOT NULL DEFAULT 0;",
    // 9: managed backends (issue 16). A row per live backend (deleted when
    // it stops); its lifetime row stays for accounting (as long as the
    // monitor log); daily totals per project, instance and pool stay a year
    // (pool '' holds the instance's LB node time). Names are copied so the
    // figures outlive the instance.
    "CREATE TABLE backends (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_id INTEGER NOT NULL,
        project_id INTEGER NOT NULL,
        pool TEXT NOT NULL,
        resource TEXT,
        state TEXT NOT NULL,
        compute TEXT NOT NULL,
        address TEXT NOT NULL,
        port INTEGER NOT NULL,
        pid INTEGER,
        started_at_ms INTEGER NOT NULL,
        ready_at_ms INTEGER,
        stopped_at_ms INTEGER,
        requests INTEGER NOT NULL DEFAULT 0,
        cold INTEGER NOT NULL DEFAULT 0,
        cold_start_ms INTEGER,
        last_active_ms INTEGER,
        failure TEXT
    );
    CREATE INDEX backends_by_instance ON backends (instance_id, pool);
    CREATE TABLE backend_lifetimes (
        backend_id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL,
        instance_id INTEGER NOT NULL,
        instance_name TEXT NOT NULL,
        pool TEXT NOT NULL,
        resource TEXT,
        address TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        ready_at_ms INTEGER,
        stopped_at_ms INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        cold INTEGER NOT NULL,
        cold_start_ms INTEGER,
        failure TEXT
    );
    CREATE INDEX backend_lifetimes_by_stop ON backend_lifetimes (stopped_at_ms);
    CREATE TABLE usage_daily (
        project_id INTEGER NOT NULL,
        instance_id INTEGER NOT NULL,
        instance_name TEXT NOT NULL,
        pool TEXT NOT NULL,
        day INTEGER NOT NULL,
        backend_seconds REAL NOT NULL DEFAULT 0,
        node_seconds REAL NOT NULL DEFAULT 0,
        starts INTEGER NOT NULL DEFAULT 0,
        cold_starts INTEGER NOT NULL DEFAULT 0,
        requests INTEGER NOT NULL DEFAULT 0,
        cold_start_ms_sum INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (project_id, instance_id, pool, day)
    );",
    // What each managed backend was started from (a digest of its pool's
    // template), so a changed template replaces running backends.
    "ALTER TABLE backends ADD COLUMN template TEXT;",
    // 11: federation mappings (issue 18). Resource mappings (where a
    // resource lives), token mappings (the local token only as its
    // SHA-256; the remote token is a secret, in a 0600 file named by
    // `secret_id`, see `federation_tokens.rs`), and per instance a version
    // that grows with every change (nodes report the one in force).
    "CREATE TABLE resource_mappings (
        instance_id INTEGER NOT NULL,
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        provider TEXT NOT NULL,
        source TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (instance_id, type, id)
    ) WITHOUT ROWID;
    CREATE TABLE token_mappings (
        instance_id INTEGER NOT NULL,
        local_token_sha256 TEXT NOT NULL,
        local_project TEXT NOT NULL,
        provider TEXT NOT NULL,
        remote_project TEXT NOT NULL,
        expires_at INTEGER,
        secret_id TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (instance_id, local_token_sha256, local_project, provider)
    ) WITHOUT ROWID;
    ALTER TABLE instances ADD COLUMN mappings_version INTEGER NOT NULL DEFAULT 0;",
    // 12: an instance's nodes by index (issue 19, part 4): the health
    // checker and the reconciler list them thousands of times a second at
    // scale, which without it scanned every node each time.
    "CREATE INDEX nodes_by_instance ON nodes (instance_id, id);",
];

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op_and_newer_schemas_are_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn project_owners_become_users() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..6] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 6).unwrap();
        conn.execute_batch(
            "INSERT INTO projects (name, user, subnet, provisioning_status, created_at, updated_at)
             VALUES ('a', 'john', '127.1.0.0/24', 'ACTIVE', 1, 1),
                    ('b', 'john', '127.1.1.0/24', 'ACTIVE', 1, 1),
                    ('c', 'admin', '127.1.2.0/24', 'ACTIVE', 1, 1);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let users: Vec<(String, String, bool)> = conn
            .prepare("SELECT name, role, token_hash IS NULL FROM users ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            users,
            vec![
                ("admin".to_string(), "admin".to_string(), true),
                ("john".to_string(), "member".to_string(), true),
            ]
        );
    }

    #[test]
    fn instances_from_before_the_serving_count_start_uncounted() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..7] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 7).unwrap();
        conn.execute_batch(
            "INSERT INTO projects (name, user, subnet, provisioning_status, created_at, updated_at)
                VALUES ('p', 'admin', '127.1.0.0/24', 'ACTIVE', 1, 1);
             INSERT INTO instances (project_id, name, spec, generation, provisioning_status,
                                    operating_status, created_at, updated_at)
             VALUES (1, 'web', '{}', 4, 'ACTIVE', 'ONLINE', 1, 1);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let (count, generation): (i64, i64) = conn
            .query_row("SELECT serving_nodes, generation FROM instances", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        // 0: the first count goes into the next config without a bump.
        assert_eq!((count, generation), (0, 4));
    }

    #[test]
    fn event_counts_start_from_the_events_already_stored() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..4] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        conn.execute_batch(
            "INSERT INTO events (ts, kind, message) VALUES
                (1, 'failover', ''), (2, 'failover', ''), (3, 'scale_out', '');",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(
            super::super::counters::event_counts(&conn).unwrap(),
            vec![("failover".to_string(), 2), ("scale_out".to_string(), 1)]
        );
    }
}

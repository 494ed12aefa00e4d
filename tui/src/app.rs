//! The dashboard's state and what keys do to it. No terminal here, so every
//! behaviour is testable without one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use lbaas::model::{EventInfo, InstanceInfo, NodeId, ProjectInfo};

/// How many points the sparklines keep (one per refresh).
pub const HISTORY: usize = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Every instance of every project.
    List,
    /// One instance: nodes, members, sparklines, events.
    Detail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Table,
    Events,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Name,
    Status,
    Load,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            SortBy::Name => SortBy::Status,
            SortBy::Status => SortBy::Load,
            SortBy::Load => SortBy::Name,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortBy::Name => "name",
            SortBy::Status => "status",
            SortBy::Load => "req/s",
        }
    }
}

/// A key, as the dashboard understands it (terminal-independent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    Enter,
    Esc,
    Tab,
    Backspace,
    Char(char),
    CtrlC,
}

/// One instance as a row of the list, with what the view needs precomputed.
#[derive(Debug, Clone)]
pub struct InstanceRow {
    pub project: String,
    pub info: InstanceInfo,
    /// Requests/s over its serving nodes (latest sample of each).
    pub requests_per_s: f64,
    pub p99_ms: Option<f64>,
}

impl InstanceRow {
    pub fn key(&self) -> (String, String) {
        (self.project.clone(), self.info.name.clone())
    }
}

/// Per member per node: requests/s from the counters of two node samples.
#[derive(Debug, Clone, Default)]
pub struct MemberRate {
    /// The node's `sampled_at` (Unix seconds) and the member's request count then.
    last: Option<(i64, u64)>,
    pub requests_per_s: f64,
}

impl MemberRate {
    /// Counts the requests between the previous sample and this one over
    /// the seconds between them, as lbd measured them. The counters only
    /// change when lbd samples the node (every health-check interval), not
    /// on every refresh: the refresh clock would read an unchanged sample
    /// as no traffic, and the next one as several intervals' worth.
    fn observe(&mut self, sampled_at: i64, requests: u64) {
        match self.last {
            // The same sample again (or one within the same second): keep
            // the rate and the older base, so no request goes uncounted.
            Some((at, _)) if sampled_at == at => return,
            Some((at, before)) if sampled_at > at => {
                // A restarted node counts from zero: start again from its new count.
                if let Some(delta) = requests.checked_sub(before) {
                    self.requests_per_s = delta as f64 / (sampled_at - at) as f64;
                }
            }
            _ => {}
        }
        self.last = Some((sampled_at, requests));
    }
}

pub struct App {
    pub url: String,
    pub view: View,
    pub pane: Pane,
    pub sort: SortBy,
    pub filter: String,
    pub editing_filter: bool,
    pub show_help: bool,
    pub quit: bool,
    /// `None` while connected; the last error while the daemon is away.
    pub disconnected: Option<String>,
    pub last_update: Option<Instant>,
    rows: Vec<InstanceRow>,
    /// Index into `visible()` of the selected instance.
    pub selected: usize,
    /// The instance open in the detail view.
    pub open: Option<(String, String)>,
    pub event_scroll: usize,
    /// Requests/s and p99 per instance, one point per refresh.
    pub history: HashMap<(String, String), VecDeque<(f64, f64)>>,
    pub member_rates: HashMap<(NodeId, String), MemberRate>,
}

impl App {
    pub fn new(url: impl Into<String>) -> Self {
        App {
            url: url.into(),
            view: View::List,
            pane: Pane::Table,
            sort: SortBy::Name,
            filter: String::new(),
            editing_filter: false,
            show_help: false,
            quit: false,
            disconnected: None,
            last_update: None,
            rows: Vec::new(),
            selected: 0,
            open: None,
            event_scroll: 0,
            history: HashMap::new(),
            member_rates: HashMap::new(),
        }
    }

    /// Takes a fresh snapshot of every project from the API.
    pub fn update(&mut self, projects: Vec<ProjectInfo>, now: Instant) {
        let keep = self.visible().get(self.selected).map(InstanceRow::key);
        self.disconnected = None;
        self.last_update = Some(now);
        self.rows = projects
            .into_iter()
            .flat_map(|p| {
                let project = p.name.clone();
                p.instances.into_iter().map(move |i| row(&project, i))
            })
            .collect();
        self.record_history();
        self.record_member_rates();
        // Keep the same instance selected when rows move.
        if let Some(key) = keep {
            if let Some(i) = self.visible().iter().position(|r| r.key() == key) {
                self.selected = i;
            }
        }
        self.clamp_selection();
    }

    /// One sparkline point per instance; instances that are gone lose theirs.
    fn record_history(&mut self) {
        let keys: HashSet<(String, String)> = self.rows.iter().map(InstanceRow::key).collect();
        self.history.retain(|k, _| keys.contains(k));
        for r in &self.rows {
            let h = self.history.entry(r.key()).or_default();
            h.push_back((r.requests_per_s, r.p99_ms.unwrap_or(0.0)));
            while h.len() > HISTORY {
                h.pop_front();
            }
        }
    }

    fn record_member_rates(&mut self) {
        let mut seen = HashSet::new();
        for node in self.rows.iter().flat_map(|r| &r.info.nodes) {
            let (Some(stats), Some(sampled_at)) = (&node.stats, node.sampled_at) else {
                continue;
            };
            for m in &stats.members {
                let key = (node.id, m.address.to_string());
                self.member_rates
                    .entry(key.clone())
                    .or_default()
                    .observe(sampled_at, m.requests);
                seen.insert(key);
            }
        }
        self.member_rates.retain(|k, _| seen.contains(k));
    }

    /// The daemon did not answer; the last data stays on screen.
    pub fn disconnect(&mut self, error: String) {
        self.disconnected = Some(error);
    }

    /// The instances that pass the filter, in the chosen order.
    pub fn visible(&self) -> Vec<InstanceRow> {
        let filter = self.filter.to_lowercase();
        let mut rows: Vec<InstanceRow> = self
            .rows
            .iter()
            .filter(|r| {
                filter.is_empty() || r.info.name.contains(&filter) || r.project.contains(&filter)
            })
            .cloned()
            .collect();
        match self.sort {
            SortBy::Name => rows.sort_by_key(InstanceRow::key),
            SortBy::Status => rows.sort_by_key(|r| {
                (
                    status_rank(
                        r.info.provisioning_status.as_str(),
                        r.info.operating_status.as_str(),
                    ),
                    r.key(),
                )
            }),
            SortBy::Load => rows.sort_by(|a, b| {
                b.requests_per_s
                    .total_cmp(&a.requests_per_s)
                    .then_with(|| a.key().cmp(&b.key()))
            }),
        }
        rows
    }

    /// The instance of the detail view, as of the last refresh.
    pub fn open_instance(&self) -> Option<InstanceRow> {
        let key = self.open.as_ref()?;
        self.rows.iter().find(|r| &r.key() == key).cloned()
    }

    /// Events to show: the open instance's, or all instances' newest first.
    pub fn events(&self) -> Vec<(String, EventInfo)> {
        let mut out: Vec<(String, EventInfo)> = match (self.view, self.open_instance()) {
            (View::Detail, Some(r)) => r
                .info
                .events
                .iter()
                .map(|e| (format!("{}.{}", r.info.name, r.project), e.clone()))
                .collect(),
            _ => self
                .rows
                .iter()
                .flat_map(|r| {
                    r.info
                        .events
                        .iter()
                        .map(move |e| (format!("{}.{}", r.info.name, r.project), e.clone()))
                })
                .collect(),
        };
        out.sort_by_key(|e| std::cmp::Reverse(e.1.ts));
        out
    }

    pub fn on_key(&mut self, key: Key) {
        if key == Key::CtrlC {
            self.quit = true;
            return;
        }
        if self.editing_filter {
            match key {
                Key::Enter | Key::Esc => self.editing_filter = false,
                Key::Backspace => drop(self.filter.pop()),
                Key::Char(c) if c.is_ascii_alphanumeric() || c == '-' => {
                    self.filter.push(c.to_ascii_lowercase());
                    self.selected = 0;
                }
                _ => {}
            }
            return;
        }
        if self.show_help {
            // Any key closes the help.
            self.show_help = false;
            if key != Key::Char('q') {
                return;
            }
        }
        match key {
            Key::Char('q') => self.quit = true,
            Key::Char('?') => self.show_help = true,
            Key::Char('/') => self.editing_filter = true,
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Tab => {
                self.pane = match self.pane {
                    Pane::Table => Pane::Events,
                    Pane::Events => Pane::Table,
                }
            }
            Key::Up | Key::Char('k') => self.move_by(-1),
            Key::Down | Key::Char('j') => self.move_by(1),
            Key::Enter if self.view == View::List => {
                if let Some(r) = self.visible().get(self.selected) {
                    self.open = Some(r.key());
                    self.view = View::Detail;
                    self.event_scroll = 0;
                }
            }
            Key::Esc if self.view == View::Detail => {
                self.view = View::List;
                self.open = None;
                self.event_scroll = 0;
            }
            Key::Esc if !self.filter.is_empty() => self.filter.clear(),
            _ => {}
        }
    }

    fn move_by(&mut self, delta: isize) {
        if self.pane == Pane::Events {
            self.event_scroll = self.event_scroll.saturating_add_signed(delta);
            let max = self.events().len().saturating_sub(1);
            self.event_scroll = self.event_scroll.min(max);
            return;
        }
        if self.view == View::List {
            self.selected = self.selected.saturating_add_signed(delta);
            self.clamp_selection();
        }
    }

    fn clamp_selection(&mut self) {
        let n = self.visible().len();
        self.selected = self.selected.min(n.saturating_sub(1));
    }
}

/// Problems first: ERROR, then OFFLINE, DEGRADED, pending, healthy.
fn status_rank(provisioning: &str, operating: &str) -> u8 {
    match (provisioning, operating) {
        ("ERROR", _) => 0,
        (_, "OFFLINE") => 1,
        (_, "DEGRADED") => 2,
        (p, _) if p.starts_with("PENDING") => 3,
        _ => 4,
    }
}

fn row(project: &str, info: InstanceInfo) -> InstanceRow {
    // The latest sample of each node.
    let mut latest: HashMap<NodeId, (i64, f64, Option<f64>)> = HashMap::new();
    for s in &info.samples {
        let entry = latest
            .entry(s.node_id)
            .or_insert((s.ts, s.requests_per_s, s.p99_ms));
        if s.ts > entry.0 {
            *entry = (s.ts, s.requests_per_s, s.p99_ms);
        }
    }
    let requests_per_s = latest.values().map(|(_, r, _)| r).sum();
    let p99_ms = latest
        .values()
        .filter_map(|(_, _, p)| *p)
        .fold(None, |acc: Option<f64>, p| {
            Some(acc.map_or(p, |a| a.max(p)))
        });
    InstanceRow {
        project: project.to_string(),
        info,
        requests_per_s,
        p99_ms,
    }
}

/// Latest sample values of one node: (requests/s, p50, p99).
pub fn node_load(info: &InstanceInfo, node_id: NodeId) -> (f64, Option<f64>, Option<f64>) {
    info.samples
        .iter()
        .filter(|s| s.node_id == node_id)
        .max_by_key(|s| s.ts)
        .map_or((0.0, None, None), |s| {
            (s.requests_per_s, s.p50_ms, s.p99_ms)
        })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A project with instances `names`, the first with a node and samples.
    pub fn snapshot(names: &[&str]) -> Vec<ProjectInfo> {
        let instances: Vec<serde_json::Value> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                serde_json::json!({
                    "id": i + 1, "type": "instance", "name": name, "project": "demo",
                    "traffic_type": "http", "port": 8080, "algorithm": "round_robin",
                    "subnet": "127.100.0.0/24",
                    "backend": {"entities": [{"address": "127.0.0.1:9001", "weight": 1}],
                        "health-check": {"protocol": "HTTP", "port": 0, "request-path": "/",
                            "expected-codes": "200-399",
                            "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}},
                        "auto-scaling": false},
                    "min_nodes": 1, "max_nodes": 4, "desired_nodes": 1,
                    "scaling": {"target_requests_per_s": 1000, "target_connections": 1000, "scale_out_after": 3,
                                "scale_in_after": 12, "low_water_percent": 50, "cooldown": 60},
                    "hash_on": "client_ip",
                    "timeouts": {"connect_ms": 3000, "first_byte_ms": 30000, "client_idle_ms": 60000, "backend_idle_ms": 30000},
                    "max_connections": 10000, "proxy_protocol": "none",
                    "dns_name": format!("{name}.demo.lbaas.internal"),
                    "url": format!("http://{name}.demo.lbaas.internal:8080/"),
                    "provisioning_status": if i == 1 { "ERROR" } else { "ACTIVE" },
                    "operating_status": "ONLINE",
                    "nodes": [{"id": 10 + i, "name": format!("node-{}", 10 + i), "address": format!("127.100.0.{}", 2 + i),
                               "state": "running", "pid": 100, "operating_status": "ONLINE",
                               "stats": {"requests_total": 50, "active_connections": 3, "connections_total": 9,
                                         "bytes_in": 0, "bytes_out": 0, "backend_errors": 0,
                                         "members": [{"address": "127.0.0.1:9001", "state": "up", "weight": 1,
                                                      "requests": 50, "failures": 1, "active": 0}]},
                               "sampled_at": 1000}],
                    "events": [{"ts": 1000 + i as i64, "kind": "node_ready", "message": format!("node of {name} serving"), "node_id": 10 + i}],
                    "samples": [{"ts": 1000, "resolution": 0, "node_id": 10 + i, "requests_per_s": 12.5 * (i + 1) as f64,
                                 "active_connections": 3.0, "bytes_in_per_s": 0.0, "bytes_out_per_s": 0.0,
                                 "p50_ms": 1.5, "p90_ms": 2.0, "p99_ms": 4.25, "members_up": 1, "members_down": 0}],
                    "created_at": 1, "updated_at": 1
                })
            })
            .collect();
        vec![serde_json::from_value(serde_json::json!({
            "id": 1, "type": "project", "name": "demo", "user": "admin", "subnet": "127.100.0.0/16",
            "provisioning_status": "ACTIVE", "instances": instances, "created_at": 1
        }))
        .unwrap()]
    }

    #[test]
    fn keys_move_open_filter_sort_and_quit() {
        let mut app = App::new("http://x");
        app.update(snapshot(&["api", "web", "db"]), Instant::now());
        let names = |app: &App| -> Vec<String> {
            app.visible().iter().map(|r| r.info.name.clone()).collect()
        };
        assert_eq!(names(&app), ["api", "db", "web"]);
        app.on_key(Key::Char('j'));
        app.on_key(Key::Down);
        app.on_key(Key::Down);
        assert_eq!(app.selected, 2, "stops at the last row");
        app.on_key(Key::Enter);
        assert_eq!(app.view, View::Detail);
        assert_eq!(app.open_instance().unwrap().info.name, "web");
        app.on_key(Key::Esc);
        assert_eq!(app.view, View::List);
        app.on_key(Key::Char('s'));
        assert_eq!(names(&app)[0], "web", "by status: the ERROR one first");
        app.on_key(Key::Char('s'));
        assert_eq!(names(&app)[0], "db", "by load: the busiest first");
        app.on_key(Key::Char('/'));
        for c in "ap".chars() {
            app.on_key(Key::Char(c));
        }
        app.on_key(Key::Enter);
        assert_eq!(names(&app), ["api"]);
        app.on_key(Key::Char('?'));
        assert!(app.show_help);
        app.on_key(Key::Char('x'));
        assert!(!app.show_help && !app.quit);
        app.on_key(Key::Char('q'));
        assert!(app.quit);
    }

    #[test]
    fn member_rates_come_from_two_node_samples() {
        let mut app = App::new("http://x");
        let t0 = Instant::now();
        app.update(snapshot(&["web"]), t0);
        let mut later = snapshot(&["web"]);
        let node = &mut later[0].instances[0].nodes[0];
        node.sampled_at = Some(1002);
        node.stats.as_mut().unwrap().members[0].requests = 150;
        app.update(later.clone(), t0 + std::time::Duration::from_secs(1));
        assert_eq!(
            app.member_rates[&(NodeId(10), "127.0.0.1:9001".to_string())].requests_per_s,
            50.0,
            "100 requests over the 2 s between the samples, whenever they are fetched"
        );
        app.update(later, t0 + std::time::Duration::from_secs(2));
        let rate = &app.member_rates[&(NodeId(10), "127.0.0.1:9001".to_string())];
        assert_eq!(
            rate.requests_per_s, 50.0,
            "the same sample again keeps the rate"
        );
        assert_eq!(app.history[&("demo".into(), "web".into())].len(), 3);
        app.update(Vec::new(), t0 + std::time::Duration::from_secs(3));
        assert!(app.member_rates.is_empty() && app.history.is_empty());
    }
}

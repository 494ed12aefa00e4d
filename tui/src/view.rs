//! Drawing the dashboard from an [`App`]: a list of instances, or one
//! instance's nodes, members, sparklines and events. Narrow terminals get
//! fewer columns, never overlapping text.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState};
use ratatui::Frame;

use lbaas::model::InstanceInfo;

use crate::app::{node_load, App, InstanceRow, Pane, View};

pub fn render(f: &mut Frame, app: &App) {
    let area = f.area();
    let [header, body, events, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(if area.height >= 20 { 8 } else { 4 }),
        Constraint::Length(1),
    ])
    .areas(area);
    render_header(f, app, header);
    match (app.view, app.open_instance()) {
        (View::Detail, Some(row)) => render_detail(f, app, &row, body),
        _ => render_list(f, app, body),
    }
    render_events(f, app, events);
    render_footer(f, app, footer);
    if app.show_help {
        render_help(f, area);
    }
}

fn status_style(s: &str) -> Style {
    let color = match s {
        "ACTIVE" | "ONLINE" | "running" | "up" => Color::Green,
        "ERROR" | "OFFLINE" | "failed" | "down" | "ejected" => Color::Red,
        _ => Color::Yellow,
    };
    Style::default().fg(color)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn pane_block(title: String, focused: bool) -> Block<'static> {
    let style = if focused {
        Style::default().fg(Color::Cyan)
    } else {
        Style::default()
    };
    Block::default()
        .borders(Borders::ALL)
        .border_style(style)
        .title(title)
}

fn render_header(f: &mut Frame, app: &App, area: Rect) {
    let state = match &app.disconnected {
        Some(e) => Span::styled(
            format!(" disconnected, retrying ({e}) "),
            Style::default().fg(Color::Black).bg(Color::Red),
        ),
        None if app.last_update.is_none() => Span::raw(" connecting... "),
        None => Span::styled(" connected ", Style::default().fg(Color::Green)),
    };
    let line = Line::from(vec![
        Span::styled(" lbctl top ", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(app.url.clone()),
        state,
    ]);
    f.render_widget(Paragraph::new(line), area);
}

// === The list of instances ===

fn render_list(f: &mut Frame, app: &App, area: Rect) {
    let rows = app.visible();
    let columns = ListColumns::for_width(area.width);
    let body: Vec<Row> = rows.iter().map(|r| instance_row(r, columns)).collect();
    let table = Table::new(body, columns.widths())
        .header(Row::new(columns.header()).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(pane_block(
            list_title(app, rows.len()),
            app.pane == Pane::Table,
        ))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(Some(app.selected));
    f.render_stateful_widget(table, area, &mut state);
    if rows.is_empty() {
        render_empty_list(f, app, area);
    }
}

/// The list's columns that fit the terminal's width: name and status always,
/// load from 60 columns, the URL from 100.
#[derive(Clone, Copy)]
struct ListColumns {
    medium: bool,
    wide: bool,
}

impl ListColumns {
    fn for_width(width: u16) -> Self {
        ListColumns {
            medium: width >= 60,
            wide: width >= 100,
        }
    }

    fn header(self) -> Vec<&'static str> {
        let mut header = vec!["PROJECT", "INSTANCE", "STATUS"];
        if self.medium {
            header.extend(["OPER", "NODES", "REQ/S", "P99 MS"]);
        }
        if self.wide {
            header.push("URL");
        }
        header
    }

    fn widths(self) -> Vec<Constraint> {
        let mut widths = vec![
            Constraint::Length(14),
            Constraint::Length(16),
            Constraint::Length(15),
        ];
        if self.medium {
            widths.extend([
                Constraint::Length(9),
                Constraint::Length(6),
                Constraint::Length(9),
                Constraint::Length(7),
            ]);
        }
        if self.wide {
            widths.push(Constraint::Min(10));
        }
        widths
    }
}

fn instance_row(r: &InstanceRow, columns: ListColumns) -> Row<'static> {
    let mut cells = vec![
        Cell::from(r.project.clone()),
        Cell::from(r.info.name.clone()),
        Cell::from(r.info.provisioning_status.as_str())
            .style(status_style(r.info.provisioning_status.as_str())),
    ];
    if columns.medium {
        let running = r
            .info
            .nodes
            .iter()
            .filter(|n| n.state == lbaas::model::NodeState::Running)
            .count();
        cells.extend([
            Cell::from(r.info.operating_status.as_str())
                .style(status_style(r.info.operating_status.as_str())),
            Cell::from(format!("{running}/{}", r.info.desired_nodes)),
            Cell::from(format!("{:.1}", r.requests_per_s)),
            Cell::from(ms(r.p99_ms)),
        ]);
    }
    if columns.wide {
        cells.push(Cell::from(r.info.url.clone()));
    }
    Row::new(cells)
}

fn list_title(app: &App, count: usize) -> String {
    format!(
        " instances ({count}){} sort: {} ",
        if app.filter.is_empty() {
            String::new()
        } else {
            format!(" filter: {}", app.filter)
        },
        app.sort.label()
    )
}

/// Says why the list is empty, inside the table's borders.
fn render_empty_list(f: &mut Frame, app: &App, area: Rect) {
    let msg = if app.last_update.is_none() {
        "waiting for lbd..."
    } else {
        "no instances (lbctl instance create ...)"
    };
    let inner = area.inner(ratatui::layout::Margin::new(2, 2));
    f.render_widget(Paragraph::new(msg), inner);
}

// === One instance ===

fn render_detail(f: &mut Frame, app: &App, row: &InstanceRow, area: Rect) {
    let managed = crate::managed::pools(&row.info);
    // Header and borders around the pools' rows, when there are any.
    let managed_height = if managed.is_empty() {
        0
    } else {
        managed.len() as u16 + 3
    };
    let [summary, tables, managed_area, sparks] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(4),
        Constraint::Length(managed_height),
        Constraint::Length(if area.height >= 16 { 5 } else { 0 }),
    ])
    .areas(area);
    render_summary(f, row, summary);
    if managed_area.height > 0 {
        render_managed(f, &managed, managed_area);
    }
    let [nodes_area, members_area] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(tables);
    render_nodes(f, app, &row.info, nodes_area);
    render_members(f, app, &row.info, members_area);
    if sparks.height > 0 {
        render_sparklines(f, app, row, sparks);
    }
}

/// Two lines: name, statuses, type and URL; then DNS, algorithm and node count.
fn render_summary(f: &mut Frame, row: &InstanceRow, area: Rect) {
    let info = &row.info;
    let lines = vec![
        Line::from(vec![
            Span::styled(
                format!("{}.{} ", info.name, row.project),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::styled(
                info.provisioning_status.as_str(),
                status_style(info.provisioning_status.as_str()),
            ),
            Span::raw(" "),
            Span::styled(
                info.operating_status.as_str(),
                status_style(info.operating_status.as_str()),
            ),
            Span::raw(format!("  {} {}", info.traffic_type.as_str(), info.url)),
        ]),
        Line::from(format!(
            "dns {}  algorithm {}  nodes {} wanted{}",
            info.dns_name,
            serde_json::to_value(info.algorithm)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            info.desired_nodes,
            if info.backend.auto_scaling {
                format!(" (auto-scaling {}..{})", info.min_nodes, info.max_nodes)
            } else {
                String::new()
            }
        )),
    ];
    f.render_widget(Paragraph::new(lines), area);
}

fn render_nodes(f: &mut Frame, app: &App, info: &InstanceInfo, area: Rect) {
    let node_rows: Vec<Row> = info
        .nodes
        .iter()
        .map(|n| {
            let (rps, p50, p99) = node_load(info, n.id);
            let conns = n.stats.as_ref().map_or(0, |s| s.active_connections);
            Row::new(vec![
                Cell::from(n.address.clone()),
                Cell::from(n.state.as_str()).style(status_style(n.state.as_str())),
                Cell::from(format!("{rps:.1}")),
                Cell::from(conns.to_string()),
                Cell::from(ms(p50)),
                Cell::from(ms(p99)),
            ])
        })
        .collect();
    let nodes = Table::new(
        node_rows,
        [
            Constraint::Length(16),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(7),
        ],
    )
    .header(
        Row::new(["NODE", "STATE", "REQ/S", "CONNS", "P50 MS", "P99 MS"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(pane_block(" nodes ".into(), app.pane == Pane::Table));
    f.render_widget(nodes, area);
}

/// Every node's view of every member: a member appears once per node.
fn render_members(f: &mut Frame, app: &App, info: &InstanceInfo, area: Rect) {
    let member_rows: Vec<Row> = info
        .nodes
        .iter()
        .flat_map(|n| {
            n.stats
                .iter()
                .flat_map(|s| s.members.iter())
                .map(move |m| (n.id, m))
        })
        .map(|(node_id, m)| {
            let rate = app
                .member_rates
                .get(&(node_id, m.address.to_string()))
                .map_or(0.0, |r| r.requests_per_s);
            Row::new(vec![
                Cell::from(m.address.to_string()),
                Cell::from(m.state.as_str()).style(status_style(m.state.as_str())),
                Cell::from(m.weight.to_string()),
                Cell::from(format!("{rate:.1}")),
                Cell::from(m.failures.to_string()),
            ])
        })
        .collect();
    let members = Table::new(
        member_rows,
        [
            Constraint::Length(21),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(5),
        ],
    )
    .header(
        Row::new(["MEMBER", "STATE", "WEIGHT", "REQ/S", "FAIL"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(pane_block(" members ".into(), false));
    f.render_widget(members, area);
}

/// Managed pools: backends ready and starting, requests held, cold starts.
fn render_managed(f: &mut Frame, pools: &[crate::managed::ManagedPoolRow], area: Rect) {
    let rows: Vec<Row> = pools
        .iter()
        .map(|p| {
            let queued_style = if p.queued > 0 {
                Style::default().fg(Color::Yellow)
            } else {
                Style::default()
            };
            Row::new(vec![
                Cell::from(p.pool.clone()),
                Cell::from(p.ready.to_string()),
                Cell::from(p.starting.to_string()),
                Cell::from(p.queued.to_string()).style(queued_style),
                Cell::from(p.cold_starts.to_string()),
                Cell::from(
                    p.last_cold_start_ms
                        .map_or("-".into(), |m| format!("{m} ms")),
                ),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(20),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(12),
            Constraint::Length(16),
        ],
    )
    .header(
        Row::new([
            "MANAGED POOL",
            "READY",
            "STARTING",
            "QUEUED",
            "COLD STARTS",
            "LAST COLD START",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(pane_block(" managed pools ".into(), false));
    f.render_widget(table, area);
}

/// Requests/s and p99 over the instance's recent refreshes, side by side;
/// each gets as much history as its half of the width shows.
fn render_sparklines(f: &mut Frame, app: &App, row: &InstanceRow, area: Rect) {
    let history = app.history.get(&row.key()).cloned().unwrap_or_default();
    let width = area.width as usize / 2;
    let skip = history.len().saturating_sub(width.saturating_sub(2));
    let rps: Vec<u64> = history
        .iter()
        .skip(skip)
        .map(|(r, _)| r.round() as u64)
        .collect();
    // Tenths of a millisecond, so that sub-millisecond latencies still show.
    let p99: Vec<u64> = history
        .iter()
        .skip(skip)
        .map(|(_, p)| (p * 10.0).round() as u64)
        .collect();
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let rps_title = format!(" req/s {:.1} ", row.requests_per_s);
    f.render_widget(sparkline(rps_title, &rps, Color::Green), left);
    let p99_title = format!(" p99 ms {} ", ms(row.p99_ms));
    f.render_widget(sparkline(p99_title, &p99, Color::Yellow), right);
}

fn sparkline(title: String, data: &[u64], color: Color) -> Sparkline<'_> {
    Sparkline::default()
        .block(Block::default().borders(Borders::ALL).title(title))
        .data(data)
        .style(Style::default().fg(color))
}

// === Events, footer, help ===

fn render_events(f: &mut Frame, app: &App, area: Rect) {
    let events = app.events();
    let visible = area.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = events
        .iter()
        .skip(app.event_scroll)
        .take(visible)
        .map(|(who, e)| {
            let day = e.ts.rem_euclid(86_400);
            let kind_style = if e.kind.is_trouble() {
                Style::default().fg(Color::Red)
            } else if e.kind.is_scaling() {
                Style::default().fg(Color::Cyan)
            } else {
                Style::default()
            };
            Line::from(vec![
                Span::raw(format!(
                    "{:02}:{:02}:{:02} ",
                    day / 3600,
                    day % 3600 / 60,
                    day % 60
                )),
                Span::styled(format!("{:<16} ", e.kind), kind_style),
                Span::raw(format!("{who}: {}", e.message)),
            ])
        })
        .collect();
    let title = format!(" events ({}) ", events.len());
    f.render_widget(
        Paragraph::new(lines).block(pane_block(title, app.pane == Pane::Events)),
        area,
    );
}

fn render_footer(f: &mut Frame, app: &App, area: Rect) {
    let text = if app.editing_filter {
        format!(
            " filter: {}_   (Enter to apply, Esc to stop editing)",
            app.filter
        )
    } else if area.width < 60 {
        " q quit  ? help".to_string()
    } else {
        " ↑↓/jk move  Enter open  Esc back  Tab pane  / filter  s sort  ? help  q quit".to_string()
    };
    f.render_widget(
        Paragraph::new(text).style(Style::default().add_modifier(Modifier::DIM)),
        area,
    );
}

fn render_help(f: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("lbctl top: live view of lbd, refreshed every second"),
        Line::from(""),
        Line::from("↑ ↓ j k   move (or scroll the events pane)"),
        Line::from("Enter     open the selected instance"),
        Line::from("Esc       back to the list (or clear the filter)"),
        Line::from("Tab       switch between the table and the events"),
        Line::from("/         filter by project or instance name"),
        Line::from("s         sort by name, status or requests/s"),
        Line::from("?         this help (any key closes it)"),
        Line::from("q Ctrl-C  quit"),
    ];
    let w = area.width.min(60);
    let h = area.height.min(text.len() as u16 + 2);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(" help ")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::*;
    use crate::app::tests::snapshot;
    use crate::app::Key;

    fn screen(app: &App, w: u16, h: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| render(f, app)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        buffer
            .content()
            .chunks(w as usize)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_list_shows_every_instance_with_status_load_and_url() {
        let mut app = App::new("http://127.0.0.1:7070");
        app.update(snapshot(&["web", "api"]), Instant::now());
        let s = screen(&app, 120, 30);
        assert!(s.contains("connected"), "{s}");
        for text in [
            "instances (2)",
            "web",
            "api",
            "ACTIVE",
            "ERROR",
            "12.5",
            "4.2",
            "http://web.demo.lbaas.internal:8080",
            "node_ready",
        ] {
            assert!(s.contains(text), "{text} missing:\n{s}");
        }
    }

    #[test]
    fn the_detail_view_shows_nodes_members_and_sparklines() {
        let mut app = App::new("http://x");
        app.update(snapshot(&["web"]), Instant::now());
        app.on_key(Key::Enter);
        let s = screen(&app, 120, 30);
        for text in [
            "web.demo",
            "127.100.0.2",
            "running",
            "127.0.0.1:9001",
            "req/s 12.5",
            "p99 ms 4.2",
            "MEMBER",
        ] {
            assert!(s.contains(text), "{text} missing:\n{s}");
        }
    }

    /// The snapshot of `web` whose node was sampled at `sampled_at` (Unix
    /// seconds) with `requests` answered by its member so far.
    fn sampled(sampled_at: i64, requests: u64) -> Vec<lbaas::model::ProjectInfo> {
        let mut s = snapshot(&["web"]);
        let node = &mut s[0].instances[0].nodes[0];
        node.sampled_at = Some(sampled_at);
        node.stats.as_mut().unwrap().members[0].requests = requests;
        s
    }

    #[test]
    fn member_req_s_is_counted_over_the_nodes_sample_interval() {
        // lbd samples a node every health-check interval (5 s here) while top
        // refreshes every second, so most refreshes bring the same sample.
        let mut app = App::new("http://x");
        let t0 = Instant::now();
        app.update(sampled(1000, 50), t0);
        app.update(sampled(1005, 5050), t0 + Duration::from_secs(1));
        app.update(sampled(1005, 5050), t0 + Duration::from_secs(2));
        app.on_key(Key::Enter);
        let s = screen(&app, 120, 30);
        let member = s
            .lines()
            .find(|l| l.contains("127.0.0.1:9001"))
            .unwrap_or_else(|| panic!("no member row:\n{s}"));
        assert!(
            member.contains(" 1000.0 "),
            "5000 requests in the 5 s between two samples:\n{s}"
        );
    }

    #[test]
    fn the_detail_view_shows_managed_pools_only_when_there_are_some() {
        let mut app = App::new("http://x");
        app.update(crate::managed::tests::managed_snapshot(), Instant::now());
        app.on_key(Key::Enter);
        let s = screen(&app, 120, 34);
        let row = s
            .lines()
            .find(|l| l.contains("MANAGED POOL"))
            .and_then(|_| s.lines().find(|l| l.contains("default")))
            .unwrap_or_else(|| panic!("no managed pool row:\n{s}"));
        for cell in ["default", " 1 ", " 4 ", " 7 ", "840 ms"] {
            assert!(row.contains(cell), "{cell} missing in {row:?}:\n{s}");
        }
        let mut plain = App::new("http://x");
        plain.update(snapshot(&["web"]), Instant::now());
        plain.on_key(Key::Enter);
        assert!(!screen(&plain, 120, 34).contains("MANAGED POOL"));
    }

    #[test]
    fn many_instances_scroll_with_the_selection() {
        let names: Vec<String> = (0..60).map(|i| format!("web{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut app = App::new("http://x");
        app.update(snapshot(&refs), Instant::now());
        assert!(screen(&app, 100, 24).contains("web00"));
        for _ in 0..59 {
            app.on_key(Key::Down);
        }
        let s = screen(&app, 100, 24);
        assert!(s.contains("web59"), "the last one is in view:\n{s}");
        assert!(!s.contains("web00"), "the first scrolled away:\n{s}");
    }

    #[test]
    fn a_small_terminal_gets_fewer_columns_and_disconnection_is_shown() {
        let mut app = App::new("http://x");
        app.update(snapshot(&["web"]), Instant::now());
        app.disconnect("connection refused".into());
        let s = screen(&app, 40, 10);
        assert!(s.contains("web"), "{s}");
        assert!(!s.contains("URL"), "no URL column at 40 columns:\n{s}");
        assert!(screen(&app, 120, 30).contains("disconnected, retrying"));
        // Tiny and help: no panic.
        app.on_key(Key::Char('?'));
        let _ = screen(&app, 20, 5);
    }
}

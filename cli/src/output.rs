//! Human output: aligned tables and key/value blocks, from the typed
//! answers; YAML from the answer as lbd sent it.

use lbaas::model::{InstanceInfo, ProjectInfo};
use serde_json::Value;

pub mod managed;

/// Renders rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Colors status words (ANSI), for a terminal. Alignment is unchanged:
/// escape codes take no columns.
pub fn colorize(text: &str) -> String {
    let color = |word: &str| match word {
        "ACTIVE" | "ONLINE" | "running" | "up" => Some("32"),
        "ERROR" | "OFFLINE" | "failed" | "down" | "ejected" => Some("31"),
        "DEGRADED" | "PENDING_CREATE" | "PENDING_UPDATE" | "PENDING_DELETE" | "starting"
        | "retiring" | "draining" => Some("33"),
        _ => None,
    };
    text.split('\n')
        .map(|line| {
            line.split(' ')
                .map(|w| match color(w) {
                    Some(c) => format!("\x1b[{c}m{w}\x1b[0m"),
                    None => w.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// YAML for an API answer (block style; strings quoted when YAML would
/// read them as something else).
pub fn yaml(v: &Value) -> String {
    let mut out = String::new();
    yaml_into(v, 0, &mut out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
                && !s.starts_with(['-', '.'])
                && s.parse::<f64>().is_err()
                && !["true", "false", "null", "yes", "no", "on", "off", "~"]
                    .contains(&s.to_lowercase().as_str());
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).expect("a string serializes")
            }
        }
        _ => unreachable!("containers are not scalars"),
    }
}

fn yaml_into(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, item) in map {
                let key = yaml_scalar(&Value::String(k.clone()));
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        yaml_into(item, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        yaml_into(item, indent, out);
                    }
                    _ => out.push_str(&format!("{pad}{key}: {}\n", yaml_inline(item))),
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        let mut inner = String::new();
                        yaml_into(item, indent + 2, &mut inner);
                        // The first key goes on the dash's line.
                        let inner = inner.replacen(&" ".repeat(indent + 2), "", 1);
                        out.push_str(&format!("{pad}- {inner}"));
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}-\n"));
                        yaml_into(item, indent + 2, out);
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", yaml_inline(item))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", yaml_inline(other))),
    }
}

fn yaml_inline(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        scalar => yaml_scalar(scalar),
    }
}

/// A model enum as the API spells it (`round_robin`, `none`).
fn wire(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "-".into(),
    }
}

/// The instance's backend protocol, with the pools that name another.
fn backend_protocol(i: &InstanceInfo) -> String {
    let instance = i.backend_protocol;
    let own = std::iter::once(("default", i.backend.backend_protocol))
        .chain(
            i.pools
                .iter()
                .map(|(n, p)| (n.as_str(), p.backend_protocol)),
        )
        .filter_map(|(name, p)| p.filter(|p| *p != instance).map(|p| format!("{name} {p}")));
    let own: Vec<String> = own.collect();
    if own.is_empty() {
        instance.to_string()
    } else {
        format!("{instance} ({})", own.join(", "))
    }
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn projects(list: &[ProjectInfo]) -> String {
    let rows = list
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.user.clone(),
                p.subnet.clone(),
                p.provisioning_status.as_str().to_string(),
                p.instances.len().to_string(),
            ]
        })
        .collect::<Vec<_>>();
    table(&["NAME", "USER", "SUBNET", "STATUS", "INSTANCES"], &rows)
}

pub fn instances(list: &[InstanceInfo]) -> String {
    let rows = list
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.traffic_type.as_str().to_string(),
                i.port.to_string(),
                i.url.clone(),
                i.provisioning_status.as_str().to_string(),
                i.operating_status.as_str().to_string(),
                i.nodes.len().to_string(),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &[
            "NAME",
            "TYPE",
            "PORT",
            "URL",
            "PROVISIONING",
            "OPERATING",
            "NODES",
        ],
        &rows,
    )
}

pub fn project(p: &ProjectInfo) -> String {
    let mut out = format!(
        "name:    {}\nuser:    {}\nsubnet:  {}\nstatus:  {}\n",
        p.name,
        p.user,
        p.subnet,
        p.provisioning_status.as_str()
    );
    if !p.instances.is_empty() {
        out.push('\n');
        out.push_str(&instances(&p.instances));
    }
    out
}

/// A load balancer that serves: its URL and node addresses.
pub fn serving(i: &InstanceInfo) -> String {
    let nodes: Vec<&str> = i.nodes.iter().map(|n| n.address.as_str()).collect();
    let mut out = format!("{}\nnodes: {}\n", i.url, nodes.join(", "));
    for w in &i.warnings {
        out.push_str(&format!("warning: {}\n", warning(w)));
    }
    out
}

/// A host warning: its message and its stable code.
fn warning(w: &lbaas::model::Warning) -> String {
    format!("{} [{}]", w.message, w.code.as_str())
}

pub fn instance(i: &InstanceInfo) -> String {
    let t = &i.timeouts;
    let mut fields = vec![
        ("name", i.name.clone()),
        ("project", i.project.clone()),
        ("type", i.traffic_type.as_str().to_string()),
        ("port", i.port.to_string()),
        ("algorithm", wire(&i.algorithm)),
        ("dns name", i.dns_name.clone()),
        ("url", i.url.clone()),
        ("provisioning", i.provisioning_status.as_str().to_string()),
        ("operating", i.operating_status.as_str().to_string()),
    ];
    if let Some(reason) = &i.status_reason {
        fields.push(("reason", reason.clone()));
    }
    fields.extend(i.warnings.iter().map(|w| ("warning", warning(w))));
    if let Some(tls) = &i.tls {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let w = crate::commands::tls::expiry_warnings(tls, now);
        fields.extend(w.into_iter().map(|w| ("warning", w)));
        for c in &tls.certificates {
            let when = lbaas::model::time::rfc3339_secs(c.not_after);
            fields.push((
                "certificate",
                format!("{} until {when} ({})", c.sans.join(","), c.fingerprint),
            ));
        }
        fields.push(("tls", format!("min version {}", tls.min_version.as_str())));
    }
    let scaling = if i.backend.auto_scaling {
        format!("auto-scaling {} to {}", i.min_nodes, i.max_nodes)
    } else {
        "fixed".to_string()
    };
    let standby = match i.standby_nodes {
        0 => String::new(),
        n => format!(", {n} standby"),
    };
    fields.extend([
        (
            "nodes wanted",
            format!("{} ({scaling}){standby}", i.desired_nodes),
        ),
        ("hash on", i.hash_on.to_string()),
        (
            "timeouts",
            format!(
                "connect {} ms, first byte {} ms, client idle {} ms, backend idle {} ms",
                t.connect_ms, t.first_byte_ms, t.client_idle_ms, t.backend_idle_ms
            ),
        ),
        ("max conns", i.max_connections.to_string()),
        ("proxy proto", wire(&i.proxy_protocol)),
        ("backend proto", backend_protocol(i)),
    ]);
    if let Some(s) = &i.backend.sticky {
        fields.push(("sticky", sticky(s)));
    }
    if let Some(s) = &i.smtp {
        fields.push(("smtp", smtp(s)));
    }
    if !i.pools.is_empty() || !i.rules.is_empty() || i.auth.is_some() || !i.rate_limits.is_empty() {
        let auth = i
            .auth
            .as_ref()
            .and_then(|a| a.mode)
            .map_or("none".to_string(), |m| wire(&m));
        fields.push((
            "policy",
            format!(
                "{} pools, {} rules, auth {auth}, {} rate limits (lbctl instance policy show)",
                i.pools.len(),
                i.rules.len(),
                i.rate_limits.len()
            ),
        ));
    }
    if let Some(f) = &i.federation {
        let providers: Vec<&str> = f.providers.keys().map(String::as_str).collect();
        fields.push((
            "federation",
            format!(
                "providers {}; {} resource paths, {} aggregates (lbctl instance mapping list)",
                providers.join(", "),
                f.resource_paths.len(),
                f.aggregate.len()
            ),
        ));
    }
    let mut out = String::new();
    for (label, value) in fields {
        out.push_str(&format!("{:<13} {value}\n", format!("{label}:")));
    }
    let nodes: Vec<Vec<String>> = i
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.address.clone(),
                n.state.as_str().to_string(),
                or_dash(n.pid),
                n.operating_status.as_str().to_string(),
            ]
        })
        .collect();
    out.push_str("\nNodes:\n");
    out.push_str(&table(
        &["NAME", "ADDRESS", "STATE", "PID", "STATUS"],
        &nodes,
    ));
    let backends: Vec<Vec<String>> = i
        .backend
        .entities
        .iter()
        .map(|b| vec![b.address.to_string(), b.weight.to_string()])
        // Host names as written: each node resolves them (`stats.names`).
        .chain(
            i.backend
                .names
                .iter()
                .map(|n| vec![n.address.to_string(), n.weight.to_string()]),
        )
        .collect();
    out.push_str("\nBackends:\n");
    out.push_str(&table(&["ADDRESS", "WEIGHT"], &backends));
    out.push_str(&managed::pools(i));
    if !i.events.is_empty() {
        out.push_str("\nRecent events:\n");
        let rows: Vec<Vec<String>> = i
            .events
            .iter()
            .map(|e| vec![clock(e.ts), e.kind.to_string(), e.message.clone()])
            .collect();
        out.push_str(&table(&["TIME", "KIND", "MESSAGE"], &rows));
    }
    out
}

/// `cookie NAME (ttl Ns)`, `hash KEY` or `none`.
/// `POST /messages, 10485760 bytes, 100 rcpt, idle 300s, line 4096, 10 bad`.
fn smtp(s: &lbaas::model::smtp::SmtpSpec) -> String {
    let n = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    format!(
        "POST {}, {} bytes, {} rcpt, idle {}s, line {}, {} bad commands",
        s.deliver_path.as_deref().unwrap_or("-"),
        n(s.max_message_bytes),
        n(s.max_recipients),
        n(s.idle_timeout),
        n(s.max_line_length),
        n(s.max_bad_commands)
    )
}

fn sticky(s: &lbaas::model::sticky::StickySpec) -> String {
    use lbaas::model::sticky::StickySpec;
    match s {
        StickySpec::Off(_) => "none".into(),
        StickySpec::On(r) => match (&r.cookie, &r.hash) {
            (Some(name), _) => format!("cookie {name} (ttl {}s)", r.ttl.unwrap_or(3600)),
            (None, Some(on)) => format!("hash {on}"),
            (None, None) => "none".into(),
        },
    }
}

/// An instance's monitor log, oldest first.
pub fn events(i: &InstanceInfo) -> String {
    if i.events.is_empty() {
        return "no events in this window\n".into();
    }
    let rows: Vec<Vec<String>> = i
        .events
        .iter()
        .rev()
        .map(|e| {
            vec![
                clock(e.ts),
                e.kind.to_string(),
                e.node_id.map_or("-".into(), |n| format!("node-{n}")),
                e.message.clone(),
            ]
        })
        .collect();
    table(&["TIME", "KIND", "NODE", "MESSAGE"], &rows)
}

/// Unix seconds as a UTC time of day, `HH:MM:SSZ`: events are recent, so the date adds little.
fn clock(ts: i64) -> String {
    let day = ts.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}Z", day / 3600, day % 3600 / 60, day % 60)
}

/// Unix seconds as a UTC date and time, `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339),
/// for what may be days old (audit entries, a user's creation). One word,
/// so a table cell stays one cell for `cut`/`awk`.
pub fn datetime(ts: i64) -> String {
    lbaas::model::time::rfc3339_secs(ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(86_400 + 3 * 3600 + 4 * 60 + 5), "03:04:05Z");
    }

    #[test]
    fn datetime_is_utc_rfc3339() {
        assert_eq!(datetime(0), "1970-01-01T00:00:00Z");
        assert_eq!(datetime(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(datetime(1_796_170_000), "2026-12-02T00:06:40Z");
        assert_eq!(datetime(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn columns_align() {
        let t = table(
            &["NAME", "X"],
            &[
                vec!["a".into(), "1".into()],
                vec!["longer".into(), "2".into()],
            ],
        );
        assert_eq!(t, "NAME    X\na       1\nlonger  2\n");
    }

    #[test]
    fn yaml_of_nested_answers() {
        let v = json!({"name": "web", "port": 8080, "ok": true, "none": null, "empty": [],
            "nodes": [{"address": "127.0.0.2", "state": "running"}],
            "tags": ["a", "yes", "1.5", "x: y"]});
        assert_eq!(
            yaml(&v),
            "empty: []\nname: web\nnodes:\n- address: 127.0.0.2\n  state: running\nnone: null\nok: true\nport: 8080\ntags:\n- a\n- \"yes\"\n- \"1.5\"\n- \"x: y\"\n"
        );
    }

    #[test]
    fn colors_only_status_words() {
        let c = colorize("web  ACTIVE  ONLINE\nx  ERRORS");
        assert!(c.contains("\x1b[32mACTIVE\x1b[0m"));
        assert!(c.contains("ERRORS") && !c.contains("\x1b[31m"));
    }

    /// An instance as lbd shows it, with one node (no pid yet) and one backend.
    fn web() -> InstanceInfo {
        serde_json::from_value(json!({
            "id": 1, "type": "instance", "name": "web", "project": "demo",
            "traffic_type": "http", "port": 8080, "algorithm": "consistent_hash",
            "subnet": "127.100.0.0/24",
            "backend": {"entities": [{"address": "127.0.0.1:9001", "weight": 3}],
                "health-check": {"protocol": "HTTP", "port": 0, "request-path": "/",
                    "expected-codes": "200-399",
                    "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}},
                "auto-scaling": true},
            "min_nodes": 1, "max_nodes": 4, "desired_nodes": 2,
            "scaling": {"target_requests_per_s": 1000, "target_connections": 1000, "scale_out_after": 3,
                        "scale_in_after": 12, "low_water_percent": 50, "cooldown": 60},
            "hash_on": "header:x-user",
            "timeouts": {"connect_ms": 3000, "first_byte_ms": 30000, "client_idle_ms": 60000, "backend_idle_ms": 30000},
            "max_connections": 10000, "proxy_protocol": "none",
            "dns_name": "web.demo.lbaas.internal", "url": "http://web.demo.lbaas.internal:8080/",
            "provisioning_status": "ACTIVE", "operating_status": "ONLINE",
            "nodes": [{"id": 7, "name": "node-7", "address": "127.100.0.2", "state": "starting",
                       "operating_status": "OFFLINE"}],
            "events": [], "samples": [], "created_at": 1, "updated_at": 1
        }))
        .unwrap()
    }

    #[test]
    fn instance_shows_every_setting_nodes_and_backends() {
        let text = instance(&web());
        for line in [
            "algorithm:    consistent_hash\n",
            "nodes wanted: 2 (auto-scaling 1 to 4)\n",
            "hash on:      header:x-user\n",
            "timeouts:     connect 3000 ms, first byte 30000 ms, client idle 60000 ms, backend idle 30000 ms\n",
            "max conns:    10000\n",
            "proxy proto:  none\n",
            "node-7  127.100.0.2  starting  -    OFFLINE\n",
            "127.0.0.1:9001  3\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("reason:"), "{text}");
        assert!(!text.contains("warning:"), "{text}");
        assert_eq!(
            serving(&web()),
            "http://web.demo.lbaas.internal:8080/\nnodes: 127.100.0.2\n"
        );
    }

    #[test]
    fn a_federation_is_summed_up() {
        let mut i = web();
        assert!(!instance(&i).contains("federation:"));
        i.federation = Some(
            serde_json::from_value(serde_json::json!({
                "providers": {"sp1": {"entities": ["10.0.0.5:8776"]},
                              "sp2": {"entities": ["10.0.0.6:8776"]}},
                "resource_paths": ["/{project}/{type}/{id}"]}))
            .unwrap(),
        );
        let text = instance(&i);
        assert!(
            text.contains("federation:   providers sp1, sp2; 1 resource paths, 0 aggregates"),
            "{text}"
        );
    }

    #[test]
    fn host_name_backends_are_listed_as_written() {
        let mut i = web();
        i.backend.names = vec![lbaas::model::NamedMember {
            address: "app.internal:8000".parse().unwrap(),
            weight: 2,
        }];
        let text = instance(&i);
        assert!(text.contains("127.0.0.1:9001     3\n"), "{text}");
        assert!(text.contains("app.internal:8000  2\n"), "{text}");
    }

    #[test]
    fn host_warnings_are_shown_with_their_code() {
        let mut i = web();
        i.warnings = serde_json::from_value(json!([
            {"code": "vm_tcg_fallback", "message": "KVM guests do not run; VMs run under TCG"}
        ]))
        .unwrap();
        let want = "KVM guests do not run; VMs run under TCG [vm_tcg_fallback]\n";
        let text = instance(&i);
        assert!(text.contains(&format!("warning:      {want}")), "{text}");
        assert!(serving(&i).ends_with(&format!("warning: {want}")));
    }

    #[test]
    fn events_print_oldest_first() {
        let mut i = web();
        i.events = serde_json::from_value(json!([
            {"ts": 7200, "kind": "failover", "message": "node 2 replaces node 1", "node_id": 2},
            {"ts": 3600, "kind": "node_failed", "message": "node 1 missed 2 checks", "node_id": 1}
        ]))
        .unwrap();
        let text = events(&i);
        let failed = text.find("node_failed").unwrap();
        let failover = text.find("failover").unwrap();
        assert!(failed < failover, "{text}");
        assert!(
            text.contains("01:00:00Z") && text.contains("node-2"),
            "{text}"
        );
        assert_eq!(events(&web()), "no events in this window\n");
    }

    #[test]
    fn project_list_counts_instances() {
        let p: ProjectInfo = serde_json::from_value(json!({
            "id": 1, "type": "project", "name": "demo", "user": "john", "subnet": "127.1.0.0/16",
            "provisioning_status": "ACTIVE", "instances": [web(), web()], "created_at": 1
        }))
        .unwrap();
        let out = projects(&[p]);
        assert!(out.lines().nth(1).unwrap().ends_with("ACTIVE  2"), "{out}");
    }
}

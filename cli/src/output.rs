//! Human output: aligned tables and key/value blocks.

use serde_json::Value;

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

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn projects(list: &[Value]) -> String {
    let rows = list
        .iter()
        .map(|p| {
            vec![
                s(&p["name"]),
                s(&p["user"]),
                s(&p["subnet"]),
                s(&p["provisioning_status"]),
                p["instances"].as_array().map_or(0, Vec::len).to_string(),
            ]
        })
        .collect::<Vec<_>>();
    table(&["NAME", "USER", "SUBNET", "STATUS", "INSTANCES"], &rows)
}

pub fn instances(list: &[Value]) -> String {
    let rows = list
        .iter()
        .map(|i| {
            vec![
                s(&i["name"]),
                s(&i["traffic_type"]),
                s(&i["port"]),
                s(&i["url"]),
                s(&i["provisioning_status"]),
                s(&i["operating_status"]),
                i["nodes"].as_array().map_or(0, Vec::len).to_string(),
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

pub fn project(p: &Value) -> String {
    let mut out = format!(
        "name:    {}\nuser:    {}\nsubnet:  {}\nstatus:  {}\n",
        s(&p["name"]),
        s(&p["user"]),
        s(&p["subnet"]),
        s(&p["provisioning_status"])
    );
    if let Some(list) = p["instances"].as_array().filter(|l| !l.is_empty()) {
        out.push('\n');
        out.push_str(&instances(list));
    }
    out
}

pub fn instance(i: &Value) -> String {
    let mut out = String::new();
    for (label, key) in [
        ("name", "name"),
        ("project", "project"),
        ("type", "traffic_type"),
        ("port", "port"),
        ("algorithm", "algorithm"),
        ("dns name", "dns_name"),
        ("url", "url"),
        ("provisioning", "provisioning_status"),
        ("operating", "operating_status"),
    ] {
        out.push_str(&format!("{:<13} {}\n", format!("{label}:"), s(&i[key])));
    }
    if !i["status_reason"].is_null() {
        out.push_str(&format!("{:<13} {}\n", "reason:", s(&i["status_reason"])));
    }
    let scaling = if i["backend"]["auto-scaling"] == true {
        format!(
            "auto-scaling {} to {}",
            s(&i["min_nodes"]),
            s(&i["max_nodes"])
        )
    } else {
        "fixed".to_string()
    };
    out.push_str(&format!(
        "{:<13} {} ({scaling})\n",
        "nodes wanted:",
        s(&i["desired_nodes"])
    ));
    let nodes: Vec<Vec<String>> = i["nodes"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|n| {
                    vec![
                        s(&n["name"]),
                        s(&n["address"]),
                        s(&n["state"]),
                        s(&n["pid"]),
                        s(&n["operating_status"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str("\nNodes:\n");
    out.push_str(&table(
        &["NAME", "ADDRESS", "STATE", "PID", "STATUS"],
        &nodes,
    ));
    let backends: Vec<Vec<String>> = i["backend"]["entities"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|b| vec![s(&b["address"]), s(&b["weight"])])
                .collect()
        })
        .unwrap_or_default();
    out.push_str("\nBackends:\n");
    out.push_str(&table(&["ADDRESS", "WEIGHT"], &backends));
    if let Some(events) = i["events"].as_array().filter(|e| !e.is_empty()) {
        out.push_str("\nRecent events:\n");
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| vec![clock(&e["ts"]), s(&e["kind"]), s(&e["message"])])
            .collect();
        out.push_str(&table(&["TIME", "KIND", "MESSAGE"], &rows));
    }
    out
}

/// An instance's monitor log, oldest first: events, then the latest load.
pub fn events(i: &Value) -> String {
    let empty = Vec::new();
    let list = i["events"].as_array().unwrap_or(&empty);
    if list.is_empty() {
        return "no events in this window\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .rev()
        .map(|e| {
            vec![
                clock(&e["ts"]),
                s(&e["kind"]),
                e["node_id"]
                    .as_i64()
                    .map_or("-".into(), |n| format!("node-{n}")),
                s(&e["message"]),
            ]
        })
        .collect();
    table(&["TIME", "KIND", "NODE", "MESSAGE"], &rows)
}

/// Unix seconds as a UTC time of day, `HH:MM:SSZ`: events are recent, so the date adds little.
fn clock(ts: &Value) -> String {
    match ts.as_i64() {
        Some(t) => {
            let day = t.rem_euclid(86_400);
            format!("{:02}:{:02}:{:02}Z", day / 3600, day % 3600 / 60, day % 60)
        }
        None => s(ts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(&json!(86_400 + 3 * 3600 + 4 * 60 + 5)), "03:04:05Z");
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

    #[test]
    fn events_print_oldest_first() {
        let i = json!({"events": [
            {"ts": 7200, "kind": "failover", "message": "node 2 replaces node 1", "node_id": 2},
            {"ts": 3600, "kind": "node_failed", "message": "node 1 missed 2 checks", "node_id": 1}
        ]});
        let text = events(&i);
        let failed = text.find("node_failed").unwrap();
        let failover = text.find("failover").unwrap();
        assert!(failed < failover, "{text}");
        assert!(
            text.contains("01:00:00Z") && text.contains("node-2"),
            "{text}"
        );
        assert_eq!(events(&json!({"events": []})), "no events in this window\n");
    }

    #[test]
    fn project_list_counts_instances() {
        let out = projects(&[
            json!({"name": "demo", "user": "john", "subnet": "127.1.0.0/16",
                                    "provisioning_status": "ACTIVE", "instances": [{}, {}]}),
        ]);
        assert!(out.lines().nth(1).unwrap().ends_with("ACTIVE  2"), "{out}");
    }
}

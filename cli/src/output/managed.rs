//! Tables of managed backends (issue 16): the managed pools of `instance
//! info` with their cold-start summary, `instance backends`, `project usage`.

use std::collections::BTreeMap;

use lbaas::model::managed::{BackendState, ManagedSpec};
use lbaas::model::usage::{UsageFigures, UsageReport};
use lbaas::model::wake::{ManagedPoolStats, MsHistogram};
use lbaas::model::InstanceInfo;

use super::table;

/// A target's numbers summed over the instance's nodes.
#[derive(Debug, Default)]
struct Summed {
    queued: u64,
    cold_starts: u64,
    last_cold_start_ms: Option<u64>,
    hist: Option<MsHistogram>,
}

fn summed(i: &InstanceInfo) -> BTreeMap<String, Summed> {
    let mut out: BTreeMap<String, Summed> = BTreeMap::new();
    let stats = i.nodes.iter().filter_map(|n| n.stats.as_ref());
    for m in stats.flat_map(|s| &s.managed) {
        let s = out.entry(target_name(m)).or_default();
        s.queued += u64::from(m.queued);
        s.cold_starts += m.cold_starts;
        s.last_cold_start_ms = m.last_cold_start_ms.or(s.last_cold_start_ms);
        s.hist = Some(match s.hist.take() {
            None => m.cold_start_ms.clone(),
            Some(h) => add(h, &m.cold_start_ms),
        });
    }
    out
}

fn target_name(m: &ManagedPoolStats) -> String {
    match &m.resource {
        Some(r) => format!("{}/{r}", m.pool),
        None => m.pool.clone(),
    }
}

/// Two nodes' histograms; bounds that differ (another node version) keep the first's.
fn add(mut a: MsHistogram, b: &MsHistogram) -> MsHistogram {
    if a.bounds_ms == b.bounds_ms {
        a.counts
            .iter_mut()
            .zip(&b.counts)
            .for_each(|(x, y)| *x += y);
        a.count += b.count;
        a.sum_ms += b.sum_ms;
    }
    a
}

/// The `q` quantile estimated from the buckets (linear within one);
/// beyond the last bound it is shown as `>BOUND`.
pub fn quantile(h: &MsHistogram, q: f64) -> Option<String> {
    if h.count == 0 {
        return None;
    }
    let rank = q * h.count as f64;
    let mut seen = 0u64;
    for (i, c) in h.counts.iter().enumerate() {
        if *c > 0 && (seen + c) as f64 >= rank {
            let Some(upper) = h.bounds_ms.get(i) else {
                return Some(format!(">{}", h.bounds_ms.last().copied().unwrap_or(0)));
            };
            let lower = if i == 0 { 0 } else { h.bounds_ms[i - 1] };
            let within = ((rank - seen as f64) / *c as f64).clamp(0.0, 1.0);
            return Some(format!(
                "{:.0}",
                lower as f64 + within * (upper - lower) as f64
            ));
        }
        seen += c;
    }
    None
}

fn template(m: &ManagedSpec) -> String {
    match (&m.process, &m.vm) {
        (Some(p), _) => p.command.join(" "),
        (None, Some(vm)) => format!("vm {}", vm.kernel),
        (None, None) => "-".into(),
    }
}

/// The "Managed pools" block of `instance info`; empty without any.
pub fn pools(i: &InstanceInfo) -> String {
    let specs = i
        .backend
        .managed
        .iter()
        .map(|m| ("default".to_string(), m))
        .chain(
            i.pools
                .iter()
                .filter_map(|(name, p)| Some((name.clone(), p.managed.as_ref()?))),
        );
    let stats = summed(i);
    let count = |pool: &str, state: BackendState| {
        let n = i
            .backends
            .iter()
            .filter(|b| b.pool == pool && b.state == state);
        n.count().to_string()
    };
    let rows: Vec<Vec<String>> = specs
        .map(|(pool, m)| {
            let s = stats.get(&pool);
            let hist = s.and_then(|s| s.hist.as_ref());
            let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            vec![
                pool.clone(),
                template(m),
                m.port.map_or("-".into(), |p| p.to_string()),
                format!("{}-{}", m.min.unwrap_or(0), m.max.unwrap_or(1)),
                count(&pool, BackendState::Ready),
                count(&pool, BackendState::Starting),
                s.map_or(0, |s| s.queued).to_string(),
                s.map_or(0, |s| s.cold_starts).to_string(),
                dash(
                    hist.and_then(MsHistogram::mean_ms)
                        .map(|m| format!("{m:.0}")),
                ),
                dash(hist.and_then(|h| quantile(h, 0.5))),
                dash(hist.and_then(|h| quantile(h, 0.99))),
                dash(s.and_then(|s| s.last_cold_start_ms).map(|m| m.to_string())),
            ]
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let header = [
        "POOL",
        "RUNS",
        "PORT",
        "MIN-MAX",
        "READY",
        "STARTING",
        "QUEUED",
        "COLD STARTS",
        "MEAN MS",
        "P50 MS",
        "P99 MS",
        "LAST MS",
    ];
    format!("\nManaged pools:\n{}", table(&header, &rows))
}

/// Seconds as `1h02m`, `3m05s` or `42s`.
fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `instance backends`: one row per managed backend, oldest first.
pub fn backends(i: &InstanceInfo, now_ms: i64) -> String {
    if i.backends.is_empty() {
        return format!("instance {} runs no managed backends now\n", i.name);
    }
    let rows: Vec<Vec<String>> = i
        .backends
        .iter()
        .map(|b| {
            let pool = match &b.resource {
                Some(r) => format!("{}/{r}", b.pool),
                None => b.pool.clone(),
            };
            vec![
                b.id.to_string(),
                pool,
                b.state.as_str().to_string(),
                b.address.clone(),
                b.pid.map_or("-".into(), |p| p.to_string()),
                duration(now_ms - b.started_at_ms),
                b.last_active_ms
                    .map_or("-".into(), |t| format!("{} ago", duration(now_ms - t))),
                b.requests.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "POOL",
            "STATE",
            "ADDRESS",
            "PID",
            "UPTIME",
            "LAST ACTIVE",
            "REQUESTS",
        ],
        &rows,
    )
}

fn figures(f: &UsageFigures) -> [String; 6] {
    [
        format!("{:.1}", f.backend_seconds),
        format!("{:.1}", f.node_seconds),
        f.starts.to_string(),
        f.cold_starts.to_string(),
        f.requests.to_string(),
        f.cold_start_ms_mean
            .map_or("-".into(), |m| format!("{m:.0}")),
    ]
}

/// `project usage`: a row per instance and pool, then the totals.
pub fn usage(r: &UsageReport) -> String {
    let mut rows = Vec::new();
    for i in &r.instances {
        let mut row = vec![i.instance.clone(), "(all)".into()];
        row.extend(figures(&i.figures));
        rows.push(row);
        for p in &i.pools {
            let mut row = vec![i.instance.clone(), p.pool.clone()];
            row.extend(figures(&p.figures));
            rows.push(row);
        }
    }
    let mut total = vec!["TOTAL".to_string(), String::new()];
    total.extend(figures(&r.totals));
    rows.push(total);
    let window = format!(
        "project {}: from {} to {}\n",
        r.project,
        r.since.as_deref().unwrap_or("the first record"),
        r.until.as_deref().unwrap_or("now")
    );
    let header = [
        "INSTANCE",
        "POOL",
        "BACKEND-S",
        "NODE-S",
        "STARTS",
        "COLD STARTS",
        "REQUESTS",
        "MEAN COLD MS",
    ];
    window + &table(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> MsHistogram {
        let mut h = MsHistogram::cold_start();
        values.iter().for_each(|v| h.observe(*v));
        h
    }

    #[test]
    fn quantiles_are_estimated_within_buckets() {
        assert_eq!(quantile(&hist(&[]), 0.5), None);
        // Two in (25, 50], two in (100, 250].
        let h = hist(&[30, 40, 120, 200]);
        assert_eq!(quantile(&h, 0.5).as_deref(), Some("50"));
        assert_eq!(quantile(&h, 0.99).as_deref(), Some("247"));
        assert_eq!(quantile(&hist(&[90_000]), 0.99).as_deref(), Some(">60000"));
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(duration(42_000), "42s");
        assert_eq!(duration(185_000), "3m05s");
        assert_eq!(duration(3_720_000), "1h02m");
        assert_eq!(duration(-5), "0s");
    }

    #[test]
    fn usage_has_a_row_per_pool_and_totals() {
        let report: UsageReport = serde_json::from_value(serde_json::json!({
            "project": "demo", "since": "2026-12-01T00:00:00.000Z",
            "instances": [{"instance": "web", "backend_seconds": 12.0, "node_seconds": 60.0,
                "starts": 2, "cold_starts": 1, "requests": 9, "cold_start_ms_mean": 350.0,
                "pools": [{"pool": "default", "backend_seconds": 12.0, "node_seconds": 0.0,
                    "starts": 2, "cold_starts": 1, "requests": 9, "cold_start_ms_mean": 350.0}]}],
            "totals": {"backend_seconds": 12.0, "node_seconds": 60.0, "starts": 2,
                "cold_starts": 1, "requests": 9, "cold_start_ms_mean": 350.0}
        }))
        .unwrap();
        let text = usage(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "project demo: from 2026-12-01T00:00:00.000Z to now"
        );
        assert!(lines[1].starts_with("INSTANCE"));
        assert!(lines[3]
            .split_whitespace()
            .eq(["web", "default", "12.0", "0.0", "2", "1", "9", "350"]));
        assert!(lines[4]
            .split_whitespace()
            .eq(["TOTAL", "12.0", "60.0", "2", "1", "9", "350"]));
    }
}

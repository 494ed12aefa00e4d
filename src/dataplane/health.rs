//! Member health. Active: a task per member checks it every `interval` (TCP
//! connect, or an HTTP GET whose status must be in `expected-codes`) and
//! flips it down after `unhealth-threshold` failures, up after
//! `health-threshold` passes. Passive: consecutive request errors eject a
//! member for a period that doubles with each ejection, never more than half
//! of the members at once (Envoy-style outlier detection).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use hyper_util::rt::{TokioExecutor, TokioIo};

use super::balance::{Balancer, Member};
use super::pool::tls::MemberTls;
use super::stats::{now_ms, MemberCounters};
use crate::model::instance::{HealthCheck, HealthProtocol};
use crate::model::upstream::BackendProtocol;

/// Consecutive failed requests that eject a member.
pub const EJECT_AFTER_ERRORS: u64 = 3;
/// First ejection period; it doubles with each ejection, up to 64 times this.
pub const BASE_EJECTION_MS: u64 = 5_000;
/// A member that has served well this long after an ejection starts over at the base period.
const EJECTION_MEMORY_MS: u64 = 60_000;

/// Runs the active checks of every member until `stop` turns true.
/// `protocol` and `tls`: the pool's, which an HTTP check speaks too.
pub async fn run_checks(
    members: Vec<(SocketAddr, Arc<MemberCounters>)>,
    check: HealthCheck,
    protocol: BackendProtocol,
    tls: Option<Arc<MemberTls>>,
    stop: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for (addr, counters) in members {
        let check = check.clone();
        let tls = tls.clone();
        let mut stop = stop.clone();
        tasks.spawn(async move {
            let interval = Duration::from_secs(u64::from(check.criteria.interval));
            // The first check comes one interval after the config: members start
            // up, as a new LB must serve at once, and checks then confirm or take them down.
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => return,
                }
                let result = check_member(addr, &check, protocol, tls.as_deref()).await;
                if let Some(up) = record_check(&counters, result.is_ok(), &check) {
                    match &result {
                        Ok(()) => tracing::info!(member = %addr, "member is up: {} checks passed", check.criteria.health_threshold),
                        Err(e) => tracing::warn!(member = %addr, "member is down after {} failed checks: {e}", check.criteria.unhealth_threshold),
                    }
                    debug_assert_eq!(up, result.is_ok());
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Counts a check result; returns the new state when the member flips.
pub fn record_check(c: &MemberCounters, passed: bool, check: &HealthCheck) -> Option<bool> {
    let mut streak = c.checks.lock().unwrap_or_else(|p| p.into_inner());
    streak.record(passed);
    let up = streak.verdict(c.healthy.load(Relaxed), &check.criteria)?;
    c.healthy.store(up, Relaxed);
    Some(up)
}

/// One check of one member, within the check's timeout.
pub async fn check_member(
    member: SocketAddr,
    check: &HealthCheck,
    protocol: BackendProtocol,
    tls: Option<&MemberTls>,
) -> Result<(), String> {
    let target = if check.port == 0 {
        member
    } else {
        SocketAddr::new(member.ip(), check.port)
    };
    let timeout = Duration::from_secs(u64::from(check.criteria.timeout));
    let attempt = async {
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect {target}: {e}"))?;
        if check.protocol == HealthProtocol::Tcp {
            return Ok(());
        }
        let path = &check.request_path;
        let status = match (protocol, tls) {
            (BackendProtocol::H2c, _) => h2c_status(stream, target, path).await?,
            (BackendProtocol::Http1, None) => http1_status(stream, target, path).await?,
            (BackendProtocol::Http1, Some(tls)) => {
                let stream = tls
                    .connect(target, stream)
                    .await
                    .map_err(|e| format!("TLS to {target}: {e}"))?;
                http1_status(stream, target, path).await?
            }
        };
        if check.expected_codes.contains(status) {
            Ok(())
        } else {
            Err(format!(
                "{target}{} answered {status}, expected {}",
                check.request_path, check.expected_codes
            ))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("{target}: no answer within {}s", timeout.as_secs()))?
}

/// The status of `GET path` over HTTP/1.1; the status line is all it reads.
async fn http1_status<S>(mut stream: S, target: SocketAddr, path: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: lb-node-health\r\nConnection: close\r\n\r\n",
        );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send to {target}: {e}"))?;
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream
            .read(&mut head[len..])
            .await
            .map_err(|e| format!("read from {target}: {e}"))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{target} did not answer HTTP: {line:?}"))
}

/// The status of `GET path` over HTTP/2 with prior knowledge, on a
/// connection of its own that closes after the answer.
async fn h2c_status(stream: TcpStream, target: SocketAddr, path: &str) -> Result<u16, String> {
    use http_body_util::Empty;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("{target} did not answer h2c: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{target}{path}"))
        .version(http::Version::HTTP_2)
        .header(http::header::USER_AGENT, "lb-node-health")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("{target}{path}: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{target}{path} over h2c: {e}"))?;
    Ok(resp.status().as_u16())
}

/// Passive health: counts the outcome of a request to `member`, and ejects it
/// after repeated errors while at most half of the members are out.
pub fn record_outcome(balancer: &Balancer, member: &Member, ok: bool) {
    let c = &member.counters;
    let now = now_ms();
    if ok {
        c.consecutive_errors.store(0, Relaxed);
        if c.ejections.load(Relaxed) > 0
            && now > c.ejected_until_ms.load(Relaxed) + EJECTION_MEMORY_MS
        {
            c.ejections.store(0, Relaxed);
        }
        return;
    }
    let errors = c.consecutive_errors.fetch_add(1, Relaxed) + 1;
    if errors < EJECT_AFTER_ERRORS {
        return;
    }
    let members = balancer.members();
    let out = members
        .iter()
        .filter(|m| m.counters.ejected_until_ms.load(Relaxed) > now)
        .count();
    if (out + 1) * 2 > members.len() {
        return;
    }
    let n = c.ejections.fetch_add(1, Relaxed);
    let period = BASE_EJECTION_MS << n.min(6);
    c.ejected_until_ms.store(now + period, Relaxed);
    c.consecutive_errors.store(0, Relaxed);
    tracing::warn!(member = %member.address, "ejected for {}s after {errors} consecutive errors", period / 1000);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::instance::HealthCriteria;
    use crate::model::{Algorithm, BackendMember};

    fn check(up: u32, down: u32) -> HealthCheck {
        HealthCheck {
            protocol: HealthProtocol::Http,
            port: 0,
            request_path: "/".into(),
            expected_codes: Default::default(),
            criteria: HealthCriteria {
                interval: 1,
                timeout: 1,
                health_threshold: up,
                unhealth_threshold: down,
            },
        }
    }

    #[test]
    fn thresholds_decide_transitions() {
        let c = MemberCounters::default();
        let hc = check(2, 3);
        assert_eq!(record_check(&c, false, &hc), None);
        assert_eq!(record_check(&c, false, &hc), None);
        assert_eq!(
            record_check(&c, true, &hc),
            None,
            "a pass resets the failure streak"
        );
        assert_eq!(record_check(&c, false, &hc), None);
        assert_eq!(record_check(&c, false, &hc), None);
        assert_eq!(record_check(&c, false, &hc), Some(false));
        assert_eq!(record_check(&c, true, &hc), None);
        assert_eq!(record_check(&c, true, &hc), Some(true));
    }

    fn balancer(n: usize) -> Balancer {
        let backends: Vec<BackendMember> = (0..n)
            .map(|i| BackendMember {
                address: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                weight: 1,
            })
            .collect();
        Balancer::new(
            Algorithm::RoundRobin,
            &backends,
            backends.iter().map(|_| Arc::default()).collect(),
        )
    }

    #[test]
    fn errors_eject_with_a_growing_period() {
        let b = balancer(2);
        let m = &b.members()[0];
        for _ in 0..EJECT_AFTER_ERRORS {
            record_outcome(&b, m, false);
        }
        let first = m.counters.ejected_until_ms.load(Relaxed) - now_ms();
        assert!(
            first > BASE_EJECTION_MS - 100 && first <= BASE_EJECTION_MS,
            "{first}"
        );
        m.counters.ejected_until_ms.store(0, Relaxed);
        for _ in 0..EJECT_AFTER_ERRORS {
            record_outcome(&b, m, false);
        }
        let second = m.counters.ejected_until_ms.load(Relaxed) - now_ms();
        assert!(second > 2 * BASE_EJECTION_MS - 100, "doubles: {second}");
    }

    #[test]
    fn never_more_than_half_are_ejected() {
        let b = balancer(4);
        for m in b.members() {
            for _ in 0..EJECT_AFTER_ERRORS {
                record_outcome(&b, m, false);
            }
        }
        let now = now_ms();
        let out = b
            .members()
            .iter()
            .filter(|m| m.counters.ejected_until_ms.load(Relaxed) > now)
            .count();
        assert_eq!(out, 2);
        // A single member is never ejected: there would be nothing left.
        let one = balancer(1);
        for _ in 0..10 {
            record_outcome(&one, &one.members()[0], false);
        }
        assert_eq!(one.members()[0].counters.ejected_until_ms.load(Relaxed), 0);
    }

    #[test]
    fn a_success_resets_the_streak() {
        let b = balancer(2);
        let m = &b.members()[0];
        record_outcome(&b, m, false);
        record_outcome(&b, m, false);
        record_outcome(&b, m, true);
        record_outcome(&b, m, false);
        assert_eq!(m.counters.ejected_until_ms.load(Relaxed), 0);
    }
}

//! A backend's life: a row `starting` (in the caller's turn, so the next
//! wake already counts it), the process, the ready check every ~10 ms, then
//! `ready` and a push, or a failure (stopped, recorded with its output, the
//! target's `failures` bumped and pushed so held requests get 503 at once).
//! Stopping: out of the nodes first (push), then SIGTERM, then the lifetime.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::decide::{self, Counts};
use super::{lock, push, ready, Shared};
use crate::drivers::backend::{BackendLaunch, BackendObservation};
use crate::model::managed::{BackendState, Managed};
use crate::model::wake::{ManagedTarget, WakeDemand};
use crate::model::{EventKind, InstanceId, ProjectId};
use crate::store::{self, BackendRow, EventSubject, InstanceRow, NewBackend, StoreError};

/// How often a starting backend's ready check and process are looked at.
const READY_POLL: Duration = Duration::from_millis(10);

/// The instance, its managed pool `pool`, and that pool's backend counts.
pub(crate) fn counts(backends: &[BackendRow], pool: &str) -> Counts {
    let mut c = Counts::default();
    for b in backends.iter().filter(|b| b.pool == pool) {
        match b.state {
            BackendState::Ready => c.ready += 1,
            BackendState::Starting => c.starting += 1,
            BackendState::Stopping => {}
        }
    }
    c
}

pub(crate) fn managed_of<'a>(inst: &'a InstanceRow, pool: &str) -> Option<&'a Managed> {
    inst.spec
        .managed_pools()
        .find(|(name, _)| *name == pool)
        .map(|(_, m)| m)
}

/// A node asked for a backend: start one if the decision says so.
pub(crate) async fn on_wake(shared: &Arc<Shared>, instance: InstanceId, demand: WakeDemand) {
    if demand.target.resource.is_some() {
        // per_resource routing is not served by this lbd yet.
        return;
    }
    let read = shared
        .store
        .read(move |c| {
            let inst = store::instance_by_id(c, instance)?;
            Ok::<_, StoreError>(inst.map(|i| (store::backends_of(c, instance), i)))
        })
        .await;
    let (backends, inst) = match read {
        Ok(Some((Ok(b), i))) => (b, i),
        Ok(_) => return,
        Err(e) => {
            tracing::warn!("wake for instance {instance}: {e}");
            return;
        }
    };
    if inst.deleting {
        return;
    }
    let Some(m) = managed_of(&inst, &demand.target.pool) else {
        return;
    };
    if decide::wake_starts_one(m, &demand, counts(&backends, &demand.target.pool)) {
        start(shared, &inst, &demand.target.pool, demand.queued > 0).await;
    }
}

/// Inserts a `starting` row (checked against `max` in the same
/// transaction) and launches the rest of the start in the background.
pub(crate) async fn start(shared: &Arc<Shared>, inst: &InstanceRow, pool: &str, cold: bool) {
    let Some(m) = managed_of(inst, pool).cloned() else {
        return;
    };
    let (inst_id, project_id, name, pool_name) = (
        inst.id,
        inst.project_id,
        inst.name.clone(),
        pool.to_string(),
    );
    let subnet_override = inst.spec.subnet;
    let compute = m.template.compute();
    let port = m.port;
    let max = m.max;
    let inserted = shared
        .store
        .transaction(move |tx| {
            let live = store::backends_of(tx, inst_id)?
                .iter()
                .filter(|b| b.pool == pool_name && b.state != BackendState::Stopping)
                .count() as u32;
            if live >= max {
                return Ok(None);
            }
            let Some(address) = free_address(tx, project_id, subnet_override)? else {
                return Ok(None);
            };
            let row = store::insert_backend(
                tx,
                &NewBackend {
                    instance_id: inst_id,
                    project_id,
                    instance_name: &name,
                    pool: &pool_name,
                    resource: None,
                    compute,
                    address,
                    port,
                    cold,
                    started_at_ms: store::now_ms(),
                },
            )?;
            Ok::<_, StoreError>(Some(row))
        })
        .await;
    let row = match inserted {
        Ok(Some(row)) => row,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("instance {}: cannot record a new backend: {e}", inst.name);
            return;
        }
    };
    let (shared, inst) = (shared.clone(), inst.clone());
    tokio::spawn(async move { launch(&shared, &inst, row, m).await });
}

/// An address in the project's subnet no node and no backend holds.
fn free_address(
    c: &rusqlite::Connection,
    project: ProjectId,
    subnet_override: Option<ipnet::Ipv4Net>,
) -> Result<Option<Ipv4Addr>, StoreError> {
    let subnet = match subnet_override {
        Some(s) => s,
        None => match store::project_by_id(c, project)? {
            Some(p) => p.subnet,
            None => return Ok(None),
        },
    };
    let mut taken: HashSet<Ipv4Addr> = store::backend_addresses(c)?.into_iter().collect();
    taken.extend(store::all_nodes(c)?.iter().filter_map(|n| match n.address {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }));
    Ok(decide::backend_address(&subnet, &taken))
}

/// The netmask of the subnet backends of `inst` get addresses from (as in
/// `free_address`); /32 stands in if the project is gone.
async fn prefix_len(shared: &Arc<Shared>, inst: &InstanceRow) -> u8 {
    if let Some(s) = inst.spec.subnet {
        return s.prefix_len();
    }
    let project = inst.project_id;
    match shared
        .store
        .read(move |c| store::project_by_id(c, project))
        .await
    {
        Ok(Some(p)) => p.subnet.prefix_len(),
        _ => 32,
    }
}

async fn launch(shared: &Arc<Shared>, inst: &InstanceRow, row: BackendRow, m: Managed) {
    let spec = BackendLaunch {
        id: row.id,
        instance: inst.name.clone(),
        address: row.address,
        port: row.port,
        prefix_len: prefix_len(shared, inst).await,
        resource: row.resource.clone(),
        template: m.template.clone(),
        netns: shared.network.node_netns(inst.project_id),
    };
    let driver = shared.driver.clone();
    let started = tokio::task::spawn_blocking(move || driver.start(&spec)).await;
    let pid = match started {
        Ok(Ok(pid)) => pid,
        Ok(Err(e)) => return failed(shared, inst, &row, e.to_string(), String::new()).await,
        Err(e) => return failed(shared, inst, &row, e.to_string(), String::new()).await,
    };
    let id = row.id;
    let _ = shared
        .store
        .transaction(move |tx| store::set_backend_pid(tx, id, pid))
        .await;
    let message = format!(
        "backend {id} of pool {} starting at {}:{} (pid {pid}){}",
        row.pool,
        row.address,
        row.port,
        if row.cold {
            ", a request waits for it"
        } else {
            ""
        }
    );
    tracing::info!(kind = %EventKind::BackendStarting, "{message}");
    record(shared, inst, EventKind::BackendStarting, message).await;
    push::push(shared, inst.id).await;
    let deadline = Instant::now() + Duration::from_secs(u64::from(m.start_timeout_s));
    watch_until_ready(shared, inst, &row, &m, deadline).await;
}

/// Polls `ready` until it passes, the process exits or `deadline` passes.
pub(crate) async fn watch_until_ready(
    shared: &Arc<Shared>,
    inst: &InstanceRow,
    row: &BackendRow,
    m: &Managed,
    deadline: Instant,
) {
    let addr = SocketAddr::new(IpAddr::V4(row.address), row.port);
    loop {
        if ready::passes(addr, &m.ready).await {
            return became_ready(shared, inst, row).await;
        }
        let (driver, id) = (shared.driver.clone(), row.id);
        let seen = tokio::task::spawn_blocking(move || driver.observe(id))
            .await
            .unwrap_or(BackendObservation::Absent);
        match seen {
            BackendObservation::Running { .. } => {}
            BackendObservation::Exited { reason } => {
                let output = output_of(shared, row.id).await;
                return failed(shared, inst, row, reason, output).await;
            }
            BackendObservation::Absent => {
                return failed(
                    shared,
                    inst,
                    row,
                    "the process is gone".into(),
                    String::new(),
                )
                .await
            }
        }
        if Instant::now() >= deadline {
            let output = output_of(shared, row.id).await;
            let reason = format!("not ready within {} s", m.start_timeout_s);
            return failed(shared, inst, row, reason, output).await;
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

async fn output_of(shared: &Arc<Shared>, id: i64) -> String {
    let driver = shared.driver.clone();
    tokio::task::spawn_blocking(move || driver.output_tail(id))
        .await
        .unwrap_or_default()
}

async fn became_ready(shared: &Arc<Shared>, inst: &InstanceRow, row: &BackendRow) {
    let (id, name) = (row.id, inst.name.clone());
    let now = store::now_ms();
    let moved = shared
        .store
        .transaction(move |tx| store::mark_backend_ready(tx, id, &name, now))
        .await;
    if !matches!(moved, Ok(true)) {
        return;
    }
    let message = format!(
        "backend {id} of pool {} ready at {}:{} after {} ms",
        row.pool,
        row.address,
        row.port,
        now - row.started_at_ms
    );
    tracing::info!(kind = %EventKind::BackendReady, "{message}");
    record(shared, inst, EventKind::BackendReady, message).await;
    push::push(shared, inst.id).await;
}

/// A start failed: stop what is left, record it with the output, bump the
/// target's failures and push at once.
async fn failed(
    shared: &Arc<Shared>,
    inst: &InstanceRow,
    row: &BackendRow,
    reason: String,
    output: String,
) {
    let (driver, id) = (shared.driver.clone(), row.id);
    let _ = tokio::task::spawn_blocking(move || driver.stop(id)).await;
    let last_line = output.lines().last().unwrap_or("").trim().to_string();
    let failure = if last_line.is_empty() {
        format!("backend {id} {reason}")
    } else {
        format!("backend {id} {reason}: {last_line}")
    };
    {
        let mut failures = lock(&shared.failures);
        let target = ManagedTarget {
            pool: row.pool.clone(),
            resource: row.resource.clone(),
        };
        let f = failures.entry((inst.id, target)).or_default();
        f.count += 1;
        f.last = Some(failure.clone());
    }
    push::push(shared, inst.id).await;
    let (name, why) = (inst.name.clone(), failure.clone());
    let _ = shared
        .store
        .transaction(move |tx| store::finish_backend(tx, id, &name, store::now_ms(), Some(&why)))
        .await;
    let message = if output.is_empty() {
        format!("{failure} (pool {})", row.pool)
    } else {
        format!("{failure} (pool {}); its output ends:\n{output}", row.pool)
    };
    tracing::warn!(kind = %EventKind::BackendStartFailed, "backend {id} of pool {} failed to start: {reason}", row.pool);
    record(shared, inst, EventKind::BackendStartFailed, message).await;
}

/// Why a backend is stopped (its event kind and message).
pub(crate) enum StopReason {
    Idle { idle_s: u64 },
    NotWanted,
    Exited(String),
}

/// Out of the nodes first, then the process, then its lifetime.
pub(crate) async fn stop(
    shared: &Arc<Shared>,
    inst_name: &str,
    project: ProjectId,
    row: BackendRow,
    why: StopReason,
) {
    let id = row.id;
    let from = row.state;
    if from != BackendState::Stopping {
        let moved = shared
            .store
            .transaction(move |tx| store::move_backend(tx, id, from, BackendState::Stopping))
            .await;
        if !matches!(moved, Ok(true)) {
            return;
        }
        push::push(shared, row.instance_id).await;
    }
    let driver = shared.driver.clone();
    let _ = tokio::task::spawn_blocking(move || driver.stop(id)).await;
    let (name, stopped_at) = (inst_name.to_string(), store::now_ms());
    let failure = match &why {
        StopReason::Exited(reason) => Some(reason.clone()),
        _ => None,
    };
    let _ = shared
        .store
        .transaction(move |tx| store::finish_backend(tx, id, &name, stopped_at, failure.as_deref()))
        .await;
    let lived = (stopped_at - row.started_at_ms) as f64 / 1000.0;
    let (kind, message) = match why {
        StopReason::Idle { idle_s } => (
            EventKind::BackendStopped,
            format!("backend {id} of pool {} stopped after {idle_s} s idle; it ran {lived:.1} s and served {} requests", row.pool, row.requests),
        ),
        StopReason::NotWanted => (
            EventKind::BackendStopped,
            format!("backend {id} of pool {} stopped: no longer wanted; it ran {lived:.1} s", row.pool),
        ),
        StopReason::Exited(reason) => (
            EventKind::BackendExited,
            format!("backend {id} of pool {} {reason}; it ran {lived:.1} s", row.pool),
        ),
    };
    tracing::info!(kind = %kind, "{message}");
    shared
        .store
        .record_event(
            EventSubject::instance(project, row.instance_id),
            kind,
            message,
        )
        .await;
}

async fn record(shared: &Arc<Shared>, inst: &InstanceRow, kind: EventKind, message: String) {
    shared
        .store
        .record_event(
            EventSubject::instance(inst.project_id, inst.id),
            kind,
            message,
        )
        .await;
}

//! A backend's life: a row `starting` (in the caller's turn, so the next
//! wake already counts it), the process, the ready check every ~10 ms, then
//! `ready` and a push, or a failure (stopped, recorded with its output, the
//! target's `failures` bumped and pushed so held requests get 503 at once).
//! Stopping: out of the nodes first (push), then SIGTERM, then the lifetime.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::decide::{self, Counts, TargetRefusal};
use super::{lock, push, ready, Shared};
use crate::drivers::backend::{BackendLaunch, BackendObservation};
use crate::model::managed::{BackendState, Managed};
use crate::model::wake::{ManagedTarget, WakeDemand};
use crate::model::{EventKind, InstanceId, ProjectId};
use crate::store::{self, BackendRow, EventSubject, InstanceRow, NewBackend, StoreError};

/// How often a starting backend's ready check and process are looked at.
const READY_POLL: Duration = Duration::from_millis(10);

/// The backend counts of one target (a pool, or one resource of it).
pub(crate) fn counts(backends: &[BackendRow], target: &ManagedTarget) -> Counts {
    let mut c = Counts::default();
    for b in backends.iter().filter(|b| is_of(b, target)) {
        match b.state {
            BackendState::Ready => c.ready += 1,
            BackendState::Starting => c.starting += 1,
            BackendState::Stopping => {}
        }
    }
    c
}

pub(crate) fn is_of(b: &BackendRow, target: &ManagedTarget) -> bool {
    b.pool == target.pool && b.resource == target.resource
}

pub(crate) fn target_of(b: &BackendRow) -> ManagedTarget {
    ManagedTarget {
        pool: b.pool.clone(),
        resource: b.resource.clone(),
    }
}

/// The distinct targets of `pool` among `backends` (in id order), those
/// with a live (starting or ready) backend only if `live`.
pub(crate) fn targets_of(backends: &[BackendRow], pool: &str, live: bool) -> Vec<ManagedTarget> {
    let mut out: Vec<ManagedTarget> = Vec::new();
    for b in backends.iter().filter(|b| b.pool == pool) {
        if live && b.state == BackendState::Stopping {
            continue;
        }
        let t = target_of(b);
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// "pool p" or "pool p, resource r", for messages.
pub(crate) fn describe(pool: &str, resource: Option<&str>) -> String {
    match resource {
        Some(r) => format!("pool {pool}, resource {r}"),
        None => format!("pool {pool}"),
    }
}

pub(crate) fn managed_of<'a>(inst: &'a InstanceRow, pool: &str) -> Option<&'a Managed> {
    inst.spec
        .managed_pools()
        .find(|(name, _)| *name == pool)
        .map(|(_, m)| m)
}

/// A node asked for a backend: start one if the decision says so.
pub(crate) async fn on_wake(shared: &Arc<Shared>, instance: InstanceId, demand: WakeDemand) {
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
    let target = &demand.target;
    let Some(m) = managed_of(&inst, &target.pool) else {
        return;
    };
    let live: HashSet<&str> = backends
        .iter()
        .filter(|b| b.pool == target.pool && b.state != BackendState::Stopping)
        .filter_map(|b| b.resource.as_deref())
        .collect();
    match decide::check_target(m, target, &live) {
        Ok(()) => {}
        Err(TargetRefusal::NotRouted) => {
            tracing::debug!(
                "instance {}: a wake for {target:?} does not fit its pool",
                inst.name
            );
            return;
        }
        Err(TargetRefusal::TooManyResources(max)) => {
            let why = format!(
                "{max} resources (max_resources) have backends already; resource {} must wait for one to stop",
                target.resource.as_deref().unwrap_or("")
            );
            return refuse(shared, &inst, target, why).await;
        }
    }
    if decide::wake_starts_one(m, &demand, counts(&backends, target)) {
        start(shared, &inst, target, demand.queued > 0).await;
    }
}

/// A target that may not start gets a failure, so the requests the nodes
/// hold for it are answered 503 with the reason at once.
async fn refuse(shared: &Arc<Shared>, inst: &InstanceRow, target: &ManagedTarget, why: String) {
    tracing::warn!("instance {}: {why}", inst.name);
    {
        let mut failures = lock(&shared.failures);
        let f = failures.entry((inst.id, target.clone())).or_default();
        f.count += 1;
        f.last = Some(why);
    }
    push::push(shared, inst.id).await;
}

/// Inserts a `starting` row (checked against `max`, and `max_resources`
/// for a new resource, in the same transaction) and launches the rest of
/// the start in the background.
pub(crate) async fn start(
    shared: &Arc<Shared>,
    inst: &InstanceRow,
    target: &ManagedTarget,
    cold: bool,
) {
    let Some(m) = managed_of(inst, &target.pool).cloned() else {
        return;
    };
    let (inst_id, project_id, name, target) =
        (inst.id, inst.project_id, inst.name.clone(), target.clone());
    let subnet_override = inst.spec.subnet;
    let compute = m.template.compute();
    let port = m.port;
    let max = m.max;
    let max_resources = m.per_resource.as_ref().map(|p| p.max_resources);
    let template = decide::template_digest(&m);
    let inserted = shared
        .store
        .transaction(move |tx| {
            let rows = store::backends_of(tx, inst_id)?;
            let live_of_pool = || {
                rows.iter()
                    .filter(|b| b.pool == target.pool && b.state != BackendState::Stopping)
            };
            // Backends on an old template are being replaced: their
            // replacements may start beside them.
            let live = live_of_pool()
                .filter(|b| b.resource == target.resource)
                .filter(|b| decide::is_current(b.template.as_deref(), &template))
                .count() as u32;
            if live >= max {
                return Ok(None);
            }
            if let (Some(max_resources), 0) = (max_resources, live) {
                let resources: HashSet<&str> = live_of_pool()
                    .filter_map(|b| b.resource.as_deref())
                    .collect();
                if resources.len() >= max_resources as usize {
                    return Ok(None);
                }
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
                    pool: &target.pool,
                    resource: target.resource.as_deref(),
                    compute,
                    address,
                    port,
                    cold,
                    started_at_ms: store::now_ms(),
                    template: &template,
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
        template: decide::template_for(&m, row.resource.as_deref()),
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
        "backend {id} of {} starting at {}:{} (pid {pid}){}",
        describe(&row.pool, row.resource.as_deref()),
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
        "backend {id} of {} ready at {}:{} after {} ms",
        describe(&row.pool, row.resource.as_deref()),
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
    Idle {
        idle_s: u64,
    },
    NotWanted,
    /// Its pool's template changed and a replacement serves.
    Replaced,
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
    lock(&shared.replaced_at).remove(&id);
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
    let what = describe(&row.pool, row.resource.as_deref());
    let (kind, message) = match why {
        StopReason::Idle { idle_s } => (
            EventKind::BackendStopped,
            format!("backend {id} of {what} stopped after {idle_s} s idle; it ran {lived:.1} s and served {} requests", row.requests),
        ),
        StopReason::NotWanted => (
            EventKind::BackendStopped,
            format!("backend {id} of {what} stopped: no longer wanted; it ran {lived:.1} s"),
        ),
        StopReason::Replaced => (
            EventKind::BackendStopped,
            format!("backend {id} of {what} stopped: replaced by one on the changed template; it ran {lived:.1} s and served {} requests", row.requests),
        ),
        StopReason::Exited(reason) => (
            EventKind::BackendExited,
            format!("backend {id} of {what} {reason}; it ran {lived:.1} s"),
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

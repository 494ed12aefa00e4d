//! The once-a-second pass: follow the right nodes' event streams (of
//! managed and of federation instances), catch lagging nodes up on their
//! federation mappings, stop
//! backends nobody wants (instance deleted, pool no longer managed) or that
//! exited, read the nodes' member activity (idle stops, request counts),
//! re-push to nodes whose managed version is behind, and keep `min` running.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::decide::{self, Activity};
use super::events::{StreamTarget, Streams};
use super::lifecycle::{self, counts, is_of, managed_of, targets_of, StopReason};
use super::{lock, push, Shared, Signal};
use crate::drivers::backend::BackendObservation;
use crate::drivers::node_admin::NodeAdmin;
use crate::model::managed::BackendState;
use crate::model::wake::{ManagedTarget, WakeDemand};
use crate::model::NodeStatus;
use crate::store::{self, BackendRow, InstanceRow, NodeRow, StoreError};

/// How often lifetime rows and old daily totals are pruned.
const PRUNE_EVERY_TICKS: u64 = 3600;

type Snapshot = (Vec<InstanceRow>, Vec<NodeRow>, Vec<BackendRow>);

pub(crate) async fn tick(shared: &Arc<Shared>, streams: &mut Streams) {
    let snapshot = shared
        .store
        .read(|c| {
            Ok::<_, StoreError>((
                store::all_instances(c)?,
                store::all_nodes(c)?,
                store::all_backends(c)?,
            ))
        })
        .await;
    let (instances, nodes, backends): Snapshot = match snapshot {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("managed backends: cannot read the store: {e}");
            return;
        }
    };
    // Federation instances' streams carry their nodes' learned mappings;
    // everything else here is for managed instances only.
    let followed: Vec<&InstanceRow> = instances
        .iter()
        .filter(|i| !i.deleting)
        .filter(|i| i.spec.managed_pools().next().is_some() || i.spec.federation.is_some())
        .collect();
    streams.sync(shared, stream_targets(shared, &followed, &nodes));
    if let Some(sync) = &shared.mappings {
        sync.catch_up();
    }
    let managed: Vec<InstanceRow> = instances
        .into_iter()
        .filter(|i| !i.deleting && i.spec.managed_pools().next().is_some())
        .collect();
    stop_unwanted(shared, &managed, &backends);
    // Passes never pile up behind a slow node.
    if shared.busy.swap(true, Ordering::AcqRel) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        check_exits(&shared, &managed, &backends).await;
        for inst in &managed {
            let of_instance: Vec<&NodeRow> =
                nodes.iter().filter(|n| n.instance_id == inst.id).collect();
            let mine: Vec<BackendRow> = backends
                .iter()
                .filter(|b| b.instance_id == inst.id)
                .cloned()
                .collect();
            activity(&shared, inst, &of_instance, &mine).await;
            top_up_min(&shared, inst, &mine).await;
        }
        prune(&shared).await;
        shared.busy.store(false, Ordering::Release);
    });
}

fn stream_targets(
    shared: &Shared,
    followed: &[&InstanceRow],
    nodes: &[NodeRow],
) -> Vec<StreamTarget> {
    followed
        .iter()
        .flat_map(|inst| {
            let managed = inst.spec.managed_pools().next().is_some();
            push::configured(nodes)
                .filter(move |n| n.instance_id == inst.id)
                .map(move |n| StreamTarget {
                    node: n.id,
                    instance: inst.id,
                    addr: SocketAddr::new(n.address, shared.settings.node_admin_port),
                    secret: n.secret.clone(),
                    managed,
                })
        })
        .collect()
}

/// Backends of deleted instances, of pools no longer managed, or of
/// resources the pool no longer routes, stop. (Starting ones finish their
/// start first; stopping ones are under way.)
fn stop_unwanted(shared: &Arc<Shared>, managed: &[InstanceRow], backends: &[BackendRow]) {
    for b in backends.iter().filter(|b| b.state == BackendState::Ready) {
        let inst = managed.iter().find(|i| i.id == b.instance_id);
        let wanted = inst
            .and_then(|i| managed_of(i, &b.pool))
            .is_some_and(|m| decide::resource_fits(m, b.resource.as_deref()));
        if wanted {
            continue;
        }
        let name = inst.map(|i| i.name.clone()).unwrap_or_default();
        let (shared, b) = (shared.clone(), b.clone());
        tokio::spawn(async move {
            let project = b.project_id;
            lifecycle::stop(&shared, &name, project, b, StopReason::NotWanted).await
        });
    }
}

/// Ready backends whose process ended leave the nodes at once.
async fn check_exits(shared: &Arc<Shared>, managed: &[InstanceRow], backends: &[BackendRow]) {
    let ready: Vec<i64> = backends
        .iter()
        .filter(|b| b.state == BackendState::Ready)
        .map(|b| b.id)
        .collect();
    let driver = shared.driver.clone();
    let seen = tokio::task::spawn_blocking(move || {
        ready
            .into_iter()
            .map(|id| (id, driver.observe(id)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for (id, obs) in seen {
        let reason = match obs {
            BackendObservation::Running { .. } => continue,
            BackendObservation::Exited { reason } => reason,
            BackendObservation::Absent => "the process is gone".to_string(),
        };
        let Some(b) = backends.iter().find(|b| b.id == id).cloned() else {
            continue;
        };
        let name = managed
            .iter()
            .find(|i| i.id == b.instance_id)
            .map(|i| i.name.clone())
            .unwrap_or_default();
        let project = b.project_id;
        lifecycle::stop(shared, &name, project, b, StopReason::Exited(reason)).await;
    }
}

/// Reads every running node's status: re-pushes where the managed version
/// is behind, records request counts, stops idle backends.
async fn activity(
    shared: &Arc<Shared>,
    inst: &InstanceRow,
    nodes: &[&NodeRow],
    mine: &[BackendRow],
) {
    let running: Vec<&NodeRow> = nodes
        .iter()
        .copied()
        .filter(|n| n.state.is_configured())
        .collect();
    let statuses: Vec<Option<NodeStatus>> =
        futures_util::future::join_all(running.iter().map(|n| {
            let addr = SocketAddr::new(n.address, shared.settings.node_admin_port);
            let admin = &shared.admin;
            async move { NodeAdmin::status(admin, addr, &n.secret).await.ok() }
        }))
        .await;
    let pushed = lock(&shared.versions).get(&inst.id).copied();
    let behind = statuses
        .iter()
        .flatten()
        .any(|s| pushed.is_none() || s.managed_version != pushed);
    if behind && !running.is_empty() {
        push::push(shared, inst.id).await;
    }
    missed_wakes(shared, inst, &statuses).await;
    let complete = statuses.iter().all(Option::is_some);
    let now = store::now_ms();
    let ready: Vec<&BackendRow> = mine
        .iter()
        .filter(|b| b.state == BackendState::Ready)
        .collect();
    let acts: Vec<(Activity, u64)> = ready
        .iter()
        .map(|b| summed(b, &statuses, complete))
        .collect();
    record_activity(shared, &acts, now).await;
    for (pool, m) in inst.spec.managed_pools() {
        let template = decide::template_digest(m);
        // Idle stop and `min` apply per target: each resource on its own.
        for target in targets_of(mine, pool, false) {
            let of_target: Vec<Activity> = acts
                .iter()
                .filter(|(a, _)| ready.iter().any(|b| b.id == a.id && is_of(b, &target)))
                .map(|(a, _)| *a)
                .collect();
            let starting = counts(mine, &target).starting;
            replace_stale(shared, inst, &template, mine, &target, now).await;
            for id in decide::idle_victims(m, &of_target, starting, now) {
                let Some(b) = ready.iter().find(|b| b.id == id).map(|b| (*b).clone()) else {
                    continue;
                };
                let idle_s = of_target
                    .iter()
                    .find(|a| a.id == id)
                    .and_then(|a| a.idle_ms)
                    .unwrap_or((now - b.ready_at_ms.unwrap_or(now)).max(0) as u64)
                    / 1000;
                let (shared, name, project) = (shared.clone(), inst.name.clone(), inst.project_id);
                tokio::spawn(async move {
                    lifecycle::stop(&shared, &name, project, b, StopReason::Idle { idle_s }).await
                });
            }
        }
    }
}

/// Make before break for a changed template: while a target has ready
/// backends on an old template and none ready on the current one, one
/// replacement starts; once it serves, the old ones get no new requests
/// (`push::target_state`) and are stopped after `replace_drain`.
/// `current`: the pool's `decide::template_digest`.
async fn replace_stale(
    shared: &Arc<Shared>,
    inst: &InstanceRow,
    current: &str,
    mine: &[BackendRow],
    target: &ManagedTarget,
    now: i64,
) {
    let fresh = |b: &&BackendRow| decide::is_current(b.template.as_deref(), current);
    let of_target: Vec<&BackendRow> = mine.iter().filter(|b| is_of(b, target)).collect();
    let stale: Vec<&BackendRow> = of_target
        .iter()
        .copied()
        .filter(|b| b.state == BackendState::Ready && !fresh(b))
        .collect();
    if stale.is_empty() {
        return;
    }
    let fresh_ready = of_target
        .iter()
        .filter(|b| fresh(b))
        .any(|b| b.state == BackendState::Ready);
    if !fresh_ready {
        let starting = of_target
            .iter()
            .filter(|b| fresh(b))
            .any(|b| b.state == BackendState::Starting);
        if !starting {
            lifecycle::start(shared, inst, target, false).await;
        }
        return;
    }
    let drain_ms = shared.settings.replace_drain.as_millis() as i64;
    for b in stale {
        let since = *lock(&shared.replaced_at).entry(b.id).or_insert(now);
        if now - since < drain_ms {
            continue;
        }
        lock(&shared.replaced_at).remove(&b.id);
        let (shared, name, project, b) = (
            shared.clone(),
            inst.name.clone(),
            inst.project_id,
            b.clone(),
        );
        tokio::spawn(async move {
            lifecycle::stop(&shared, &name, project, b, StopReason::Replaced).await
        });
    }
}

/// Requests a node holds are demand even if its `Wake` went out while no
/// stream was open (a node sends it once per hold): each pass asks again.
async fn missed_wakes(shared: &Arc<Shared>, inst: &InstanceRow, statuses: &[Option<NodeStatus>]) {
    for pool in statuses
        .iter()
        .flatten()
        .flat_map(|s| s.stats.managed.iter())
    {
        if pool.queued == 0 {
            continue;
        }
        let demand = WakeDemand {
            target: ManagedTarget {
                pool: pool.pool.clone(),
                resource: pool.resource.clone(),
            },
            queued: pool.queued,
            in_flight: pool.queued,
            ready: pool.ready,
        };
        if shared
            .signals
            .send(Signal::Wake(inst.id, demand))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A backend's activity summed over the nodes' member stats, and its requests.
fn summed(b: &BackendRow, statuses: &[Option<NodeStatus>], complete: bool) -> (Activity, u64) {
    let addr = SocketAddr::new(IpAddr::V4(b.address), b.port);
    let mut a = Activity {
        id: b.id,
        ready_at_ms: b.ready_at_ms.unwrap_or(b.started_at_ms),
        open_connections: 0,
        idle_ms: None,
        complete,
    };
    let mut requests = 0;
    for m in statuses
        .iter()
        .flatten()
        .flat_map(|s| s.stats.members.iter())
        .filter(|m| m.address == addr)
    {
        a.open_connections += m.open_connections;
        requests += m.requests;
        a.idle_ms = match (a.idle_ms, m.idle_ms) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
    }
    (a, requests)
}

async fn record_activity(shared: &Arc<Shared>, acts: &[(Activity, u64)], now: i64) {
    let updates: Vec<(i64, u64, Option<i64>)> = acts
        .iter()
        .map(|(a, requests)| {
            let last = if a.open_connections > 0 {
                Some(now)
            } else {
                a.idle_ms.map(|ms| now - ms as i64)
            };
            (a.id, *requests, last)
        })
        .collect();
    if updates.is_empty() {
        return;
    }
    let result = shared
        .store
        .transaction(move |tx| {
            for (id, requests, last) in &updates {
                store::set_backend_activity(tx, *id, *requests, *last)?;
            }
            Ok::<_, StoreError>(())
        })
        .await;
    if let Err(e) = result {
        tracing::warn!("managed backends: cannot record activity: {e}");
    }
}

/// Keeps `min` running per target. A `per_resource` pool's `min` applies to
/// the resources that were woken (have a live backend): listed resources
/// are not started before their first request.
async fn top_up_min(shared: &Arc<Shared>, inst: &InstanceRow, mine: &[BackendRow]) {
    let mut wanted: Vec<(ManagedTarget, u32)> = Vec::new();
    for (pool, m) in inst.spec.managed_pools() {
        let targets = match m.per_resource {
            None => vec![ManagedTarget {
                pool: pool.to_string(),
                resource: None,
            }],
            Some(_) => targets_of(mine, pool, true),
        };
        for t in targets
            .into_iter()
            .filter(|t| decide::resource_fits(m, t.resource.as_deref()))
        {
            let missing = decide::missing_for_min(m, counts(mine, &t));
            wanted.push((t, missing));
        }
    }
    for (target, missing) in wanted {
        for _ in 0..missing {
            lifecycle::start(shared, inst, &target, false).await;
        }
    }
}

async fn prune(shared: &Arc<Shared>) {
    if !shared
        .ticks
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(PRUNE_EVERY_TICKS)
    {
        return;
    }
    let keep = shared.settings.lifetime_retention_s;
    let result = shared
        .store
        .transaction(move |tx| store::prune_usage(tx, keep, store::now_ms()))
        .await;
    if let Err(e) = result {
        tracing::warn!("managed backends: pruning accounting: {e}");
    }
}

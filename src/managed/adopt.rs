//! What a restarted lbd (even after kill -9) finds: backend rows, and the
//! backend processes alive (found by their environment marker). A `ready`
//! row with its process alive is kept (the first pass pushes it); a
//! `starting` one with its process alive is watched on until ready or its
//! start timeout; rows whose process is gone are closed; `stopping` rows
//! are stopped; live processes with no row are orphans and are killed.
//! So no backend runs twice and none is left behind. A row keeps its
//! resource, so an adopted backend serves the same resource as before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::decide::resource_fits;
use super::lifecycle::{self, managed_of, StopReason};
use super::Shared;
use crate::drivers::backend::BackendObservation;
use crate::model::managed::BackendState;
use crate::store::{self, BackendRow, InstanceRow, StoreError};

pub(crate) async fn adopt(shared: &Arc<Shared>) {
    let read = shared
        .store
        .read(|c| Ok::<_, StoreError>((store::all_backends(c)?, store::all_instances(c)?)))
        .await;
    let (rows, instances) = match read {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!("managed backends: cannot read the store at start: {e}");
            return;
        }
    };
    let driver = shared.driver.clone();
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let (live, seen) = tokio::task::spawn_blocking(move || {
        let seen: Vec<BackendObservation> = ids.iter().map(|id| driver.observe(*id)).collect();
        (driver.live(), seen)
    })
    .await
    .unwrap_or_default();
    kill_orphans(shared, &rows, live).await;
    for (row, obs) in rows.into_iter().zip(seen) {
        let inst = instances.iter().find(|i| i.id == row.instance_id).cloned();
        adopt_one(shared, inst, row, obs).await;
    }
}

async fn kill_orphans(shared: &Arc<Shared>, rows: &[BackendRow], live: Vec<(i64, u32)>) {
    let orphans: Vec<(i64, u32)> = live
        .into_iter()
        .filter(|(id, _)| !rows.iter().any(|r| r.id == *id))
        .collect();
    if orphans.is_empty() {
        return;
    }
    for (id, pid) in &orphans {
        tracing::warn!("backend process {pid} (backend {id}) has no row: stopping it");
    }
    let driver = shared.driver.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for (id, pid) in orphans {
            driver.kill_orphan(id, pid);
        }
    })
    .await;
}

async fn adopt_one(
    shared: &Arc<Shared>,
    inst: Option<InstanceRow>,
    row: BackendRow,
    obs: BackendObservation,
) {
    let name = inst.as_ref().map(|i| i.name.clone()).unwrap_or_default();
    let project = row.project_id;
    let alive = matches!(obs, BackendObservation::Running { .. });
    match (row.state, alive) {
        (BackendState::Ready, true) => {
            tracing::info!("backend {} at {}:{} adopted", row.id, row.address, row.port);
        }
        (BackendState::Starting, true) => {
            let Some((inst, m)) = inst
                .and_then(|i| managed_of(&i, &row.pool).cloned().map(|m| (i, m)))
                .filter(|(_, m)| resource_fits(m, row.resource.as_deref()))
            else {
                return lifecycle::stop(shared, &name, project, row, StopReason::NotWanted).await;
            };
            let waited = (store::now_ms() - row.started_at_ms).max(0) as u64;
            let left = (u64::from(m.start_timeout_s) * 1000).saturating_sub(waited);
            let deadline = Instant::now() + Duration::from_millis(left);
            let shared = shared.clone();
            tokio::spawn(async move {
                lifecycle::watch_until_ready(&shared, &inst, &row, &m, deadline).await
            });
        }
        (BackendState::Stopping, _) => {
            lifecycle::stop(shared, &name, project, row, StopReason::NotWanted).await
        }
        (_, false) => {
            let reason = match obs {
                BackendObservation::Exited { reason } => reason,
                _ => "was gone when lbd started".to_string(),
            };
            lifecycle::stop(shared, &name, project, row, StopReason::Exited(reason)).await
        }
    }
}

//! One function per request kind. A write runs in one store transaction: it
//! either commits the whole change or leaves the store as it was. Reads use
//! the store's reader, so they work while another process holds the lock.

use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use rusqlite::Connection;
use serde_json::Value;

use super::backend_guard::OwnListener;
use super::views::{instance_info, instance_info_with, project_info, History};
use super::{ApiError, AppState};
use crate::drivers::network::NetworkError;
use crate::model::allocator::{free_subnets, overlaps};
use crate::model::envelope::ApiRequest;
use crate::model::{
    EventKind, InstanceCreate, InstanceDelete, InstanceRef, InstanceUpdate, ProjectCreate,
    ProjectDelete, ProjectRef, ProjectUpdate, ProvisioningStatus, ValidationError,
};
use crate::store::{self, EventSubject, ProjectRow};

pub(super) async fn handle(state: &AppState, req: ApiRequest) -> Result<Value, ApiError> {
    let st = state.clone();
    // The subnet a new project claimed on the host, given back if its row
    // does not commit (an error in the transaction or at its commit).
    let claimed = Arc::new(Mutex::new(None));
    let claim = claimed.clone();
    match req {
        ApiRequest::ProjectInfo(r) => {
            return st
                .store
                .clone()
                .read(move |c| project_info_or_list(&st, c, r))
                .await
        }
        ApiRequest::InstanceInfo(r) => {
            return st
                .store
                .clone()
                .read(move |c| instance_info_or_list(&st, c, r))
                .await
        }
        _ => {}
    }
    let info = state
        .store
        .transaction(move |tx| match req {
            ApiRequest::CreateProject(r) => create_project(&st, tx, r, &claim),
            ApiRequest::UpdateProject(r) => update_project(&st, tx, r),
            ApiRequest::DeleteProject(r) => delete_project(&st, tx, r),
            ApiRequest::CreateInstance(r) => create_instance(&st, tx, r),
            ApiRequest::UpdateInstance(r) => update_instance(&st, tx, r),
            ApiRequest::DeleteInstance(r) => delete_instance(&st, tx, r),
            ApiRequest::ProjectInfo(_) | ApiRequest::InstanceInfo(_) => {
                unreachable!("reads are answered above")
            }
        })
        .await;
    if info.is_err() {
        let subnet = claimed.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(subnet) = subnet {
            let network = state.network.clone();
            // File locks: off the runtime, like the transaction.
            let _ = tokio::task::spawn_blocking(move || network.release_subnet(&subnet)).await;
        }
    }
    let info = info?;
    state.wake.notify_one();
    Ok(info)
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("API views always serialize")
}

fn project(tx: &Connection, name: &str) -> Result<ProjectRow, ApiError> {
    store::project_by_name(tx, name)?.ok_or_else(|| ApiError::ProjectNotFound(name.to_string()))
}

fn instance(tx: &Connection, p: &ProjectRow, name: &str) -> Result<store::InstanceRow, ApiError> {
    store::instance_by_name(tx, p.id, name)?.ok_or_else(|| ApiError::InstanceNotFound {
        project: p.name.clone(),
        name: name.to_string(),
    })
}

// === projects ===

fn create_project(
    state: &AppState,
    tx: &Connection,
    req: ProjectCreate,
    claimed: &Mutex<Option<Ipv4Net>>,
) -> Result<Value, ApiError> {
    let spec = req.validate()?;
    if store::project_by_name(tx, &spec.name)?.is_some() {
        return Err(ApiError::ProjectExists(spec.name));
    }
    let others = store::list_projects(tx)?;
    let subnet = match spec.subnet {
        Some(subnet) => {
            state.network.check_subnet(&subnet)?;
            if let Some(other) = others.iter().find(|p| overlaps(&p.subnet, &subnet)) {
                return Err(NetworkError::Overlap {
                    subnet,
                    project: other.name.clone(),
                    other: other.subnet,
                }
                .into());
            }
            // Last, so a request refused for another reason claims nothing.
            state.network.claim_subnet(&subnet)?;
            subnet
        }
        None => {
            let (pool, prefix) = state.network.pool();
            let mut taken: Vec<_> = others.iter().map(|p| p.subnet).collect();
            taken.extend(state.network.reserved());
            let mut candidates = free_subnets(pool, prefix, &taken);
            let free = state.network.claim_free_subnet(&mut candidates)?;
            free.ok_or(NetworkError::PoolExhausted { pool, prefix })?
        }
    };
    *claimed.lock().unwrap_or_else(|p| p.into_inner()) = Some(subnet);
    let row = store::insert_project(tx, &spec.name, &spec.user, &subnet.to_string())?;
    store::add_event(
        tx,
        EventSubject::project(row.id),
        EventKind::ProjectCreated,
        &format!("project {} created with subnet {subnet}", row.name),
    )?;
    Ok(to_value(project_info(tx, &row, &state.view())?))
}

fn project_info_or_list(
    state: &AppState,
    tx: &Connection,
    req: ProjectRef,
) -> Result<Value, ApiError> {
    match req.name {
        Some(name) => Ok(to_value(project_info(
            tx,
            &project(tx, &name)?,
            &state.view(),
        )?)),
        None => {
            let list = store::list_projects(tx)?
                .iter()
                .map(|p| project_info(tx, p, &state.view()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(to_value(list))
        }
    }
}

fn update_project(
    state: &AppState,
    tx: &Connection,
    req: ProjectUpdate,
) -> Result<Value, ApiError> {
    req.validate()?;
    let p = project(tx, &req.name)?;
    ApiError::check_not_pending(format!("project {:?}", p.name), p.provisioning_status)?;
    if let Some(user) = &req.user {
        store::set_project_user(tx, p.id, user)?;
    }
    let p = project(tx, &req.name)?;
    Ok(to_value(project_info(tx, &p, &state.view())?))
}

fn delete_project(
    state: &AppState,
    tx: &Connection,
    req: ProjectDelete,
) -> Result<Value, ApiError> {
    let p = project(tx, &req.name)?;
    ApiError::check_not_pending(format!("project {:?}", p.name), p.provisioning_status)?;
    let instances = store::list_instances(tx, p.id)?;
    if !instances.is_empty() && !req.force {
        return Err(ApiError::ProjectNotEmpty {
            name: p.name,
            count: instances.len(),
        });
    }
    for i in &instances {
        if i.provisioning_status != ProvisioningStatus::PendingDelete {
            ApiError::check_not_pending(format!("instance {:?}", i.name), i.provisioning_status)?;
            store::set_instance_provisioning(tx, i.id, ProvisioningStatus::PendingDelete, None)?;
        }
    }
    store::set_project_status(tx, p.id, ProvisioningStatus::PendingDelete, None)?;
    let p = project(tx, &req.name)?;
    Ok(to_value(project_info(tx, &p, &state.view())?))
}

// === instances ===

fn create_instance(
    state: &AppState,
    tx: &Connection,
    req: InstanceCreate,
) -> Result<Value, ApiError> {
    let spec = req.clone().validate()?;
    let p = project(tx, &req.project)?;
    if p.deleting {
        return Err(ApiError::Pending {
            what: format!("project {:?}", p.name),
            status: p.provisioning_status.as_str(),
        });
    }
    if spec.port == state.node_admin_port {
        return Err(ApiError::PortReserved(spec.port));
    }
    check_backends(state, &spec, &p, &[])?;
    if let Some(subnet) = spec.subnet {
        if !p.subnet.contains(&subnet) {
            return Err(ApiError::SubnetMismatch {
                subnet: subnet.to_string(),
                project_subnet: p.subnet.to_string(),
            });
        }
    }
    if store::instance_by_name(tx, p.id, &spec.name)?.is_some() {
        return Err(ApiError::InstanceExists {
            project: p.name,
            name: spec.name,
        });
    }
    let row = store::insert_instance(tx, p.id, &spec)?;
    store::add_event(
        tx,
        EventSubject::instance(p.id, row.id),
        EventKind::InstanceCreated,
        &format!("instance {}.{} requested", row.name, p.name),
    )?;
    Ok(to_value(instance_info(tx, &row, &p, &state.view())?))
}

fn instance_info_or_list(
    state: &AppState,
    tx: &Connection,
    req: InstanceRef,
) -> Result<Value, ApiError> {
    let p = project(tx, &req.project)?;
    let history = match req.history {
        None => History::Recent,
        Some(secs) if (1..=366 * 86_400).contains(&secs) => History::LastSecs(secs),
        Some(secs) => {
            return Err(ApiError::from(ValidationError::InvalidField(format!(
                "history must be 1 to 31622400 seconds, got {secs}"
            ))))
        }
    };
    match req.name {
        Some(name) => {
            let row = instance(tx, &p, &name)?;
            Ok(to_value(instance_info_with(
                tx,
                &row,
                &p,
                &state.view(),
                history,
            )?))
        }
        None => {
            let list = store::list_instances(tx, p.id)?
                .iter()
                .map(|i| instance_info(tx, i, &p, &state.view()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(to_value(list))
        }
    }
}

fn update_instance(
    state: &AppState,
    tx: &Connection,
    req: InstanceUpdate,
) -> Result<Value, ApiError> {
    let p = project(tx, &req.project)?;
    let row = instance(tx, &p, &req.name)?;
    ApiError::check_not_pending(format!("instance {:?}", row.name), row.provisioning_status)?;
    if row.deleting {
        return Err(ApiError::Pending {
            what: format!("instance {:?} (being deleted)", row.name),
            status: row.provisioning_status.as_str(),
        });
    }
    let next = req.apply_to(&row.spec)?;
    let nodes: Vec<_> = store::list_nodes(tx, row.id)?
        .iter()
        .map(|n| n.address)
        .collect();
    check_backends(state, &next, &p, &nodes)?;
    if next.port == state.node_admin_port {
        return Err(ApiError::PortReserved(next.port));
    }
    if next != row.spec {
        store::update_instance_spec(tx, row.id, &next)?;
        store::add_event(
            tx,
            EventSubject::instance(p.id, row.id),
            EventKind::InstanceUpdated,
            &format!("instance {}.{} update requested", row.name, p.name),
        )?;
    }
    let row = store::instance_by_id(tx, row.id)?.expect("updated in this transaction");
    Ok(to_value(instance_info(tx, &row, &p, &state.view())?))
}

fn delete_instance(
    state: &AppState,
    tx: &Connection,
    req: InstanceDelete,
) -> Result<Value, ApiError> {
    let p = project(tx, &req.project)?;
    let row = instance(tx, &p, &req.name)?;
    ApiError::check_not_pending(format!("instance {:?}", row.name), row.provisioning_status)?;
    store::set_instance_provisioning(tx, row.id, ProvisioningStatus::PendingDelete, None)?;
    let row = store::instance_by_id(tx, row.id)?.expect("updated in this transaction");
    Ok(to_value(instance_info(tx, &row, &p, &state.view())?))
}

/// Refuses backends that point into the control plane or back at the
/// instance (`nodes`: the addresses its nodes have now), then asks the
/// network driver whether the nodes can reach each one.
fn check_backends(
    state: &AppState,
    spec: &crate::model::InstanceSpec,
    project: &ProjectRow,
    nodes: &[std::net::IpAddr],
) -> Result<(), ApiError> {
    let own = OwnListener {
        port: spec.port,
        subnet: project.subnet,
        nodes,
    };
    for member in &spec.backends {
        state.backends.check(member.address, &own)?;
        state.network.check_backend(member.address)?;
    }
    Ok(())
}

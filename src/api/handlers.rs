//! One function per request kind. A write runs in one store transaction: it
//! either commits the whole change or leaves the store as it was. Reads use
//! the store's reader, so they work while another process holds the lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use rusqlite::Connection;
use serde_json::Value;

use super::auth::Caller;
use super::backend_guard::OwnListener;
use super::views::{instance_info, instance_info_with, project_info, History};
use super::{quota, users, ApiError, AppState};
use crate::drivers::network::NetworkError;
use crate::model::allocator::{free_subnets, overlaps};
use crate::model::envelope::ApiRequest;
use crate::model::policy::auth::MAX_SECRETS_PER_REQUEST;
use crate::model::policy::{PolicyError, SecretHasher};
use crate::model::{
    EventKind, InstanceCreate, InstanceDelete, InstanceRef, InstanceUpdate, ProjectCreate,
    ProjectDelete, ProjectRef, ProjectUpdate, ProvisioningStatus, QuotaUsage, ValidationError,
    WhoAmI,
};
use crate::password::Argon2Hasher;
use crate::store::{self, EventSubject, ProjectRow};

pub(super) async fn handle(
    state: &AppState,
    caller: &Caller,
    req: ApiRequest,
) -> Result<Value, ApiError> {
    let st = state.clone();
    let who = caller.clone();
    // The subnet a new project claimed on the host, given back if its row
    // does not commit (an error in the transaction or at its commit).
    let claimed = Arc::new(Mutex::new(None));
    let claim = claimed.clone();
    // Hashed before the write transaction: argon2 is slow and the writer
    // lock is shared by every API write (see `Prehashed`).
    let hashes = match &req {
        ApiRequest::CreateInstance(r) => Prehashed::of(r.policy_spec().secrets()).await?,
        ApiRequest::UpdateInstance(r) => Prehashed::of(r.secrets()).await?,
        _ => Prehashed::default(),
    };
    // File checks (a VM kernel) before the transaction, off the runtime.
    super::managed_check::check(&req, st.runs_vm_backends, &st.backend_image_dirs).await?;
    match req {
        ApiRequest::ProjectInfo(r) => {
            return st
                .store
                .clone()
                .read(move |c| project_info_or_list(&st, &who, c, r))
                .await
        }
        ApiRequest::InstanceInfo(r) => {
            return st
                .store
                .clone()
                .read(move |c| instance_info_or_list(&st, &who, c, r))
                .await
        }
        ApiRequest::WhoAmI => {
            return Ok(to_value(WhoAmI {
                user: caller.user.clone(),
                role: caller.role,
            }))
        }
        ApiRequest::CreateUser(_)
        | ApiRequest::UserInfo(_)
        | ApiRequest::UpdateUser(_)
        | ApiRequest::DeleteUser(_)
        | ApiRequest::AuditInfo(_) => return users::handle(state, req).await,
        ApiRequest::UsageInfo(q) => return super::usage::usage_info(state, caller, q).await,
        ApiRequest::CreateMapping(_)
        | ApiRequest::MappingInfo(_)
        | ApiRequest::DeleteMapping(_) => return super::mappings::handle(state, caller, req).await,
        _ => {}
    }
    let info = state
        .store
        .transaction(move |tx| match req {
            ApiRequest::CreateProject(r) => create_project(&st, &who, tx, r, &claim),
            ApiRequest::UpdateProject(r) => update_project(&st, &who, tx, r),
            ApiRequest::DeleteProject(r) => delete_project(&st, &who, tx, r),
            ApiRequest::CreateInstance(r) => create_instance(&st, &who, tx, *r, &hashes),
            ApiRequest::UpdateInstance(r) => update_instance(&st, &who, tx, *r, &hashes),
            ApiRequest::DeleteInstance(r) => delete_instance(&st, &who, tx, r),
            _ => {
                unreachable!("reads and tenant requests are answered above")
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

/// The argon2 hashes of a request's passwords and keys, made on a blocking
/// thread before its transaction; validation inside the transaction then
/// only takes them. One hash (one salt) per occurrence: two users with the
/// same password get different hashes, so the store does not tell.
#[derive(Default)]
pub(super) struct Prehashed(Mutex<HashMap<String, Vec<String>>>);

impl Prehashed {
    async fn of(secrets: Vec<&str>) -> Result<Prehashed, ApiError> {
        if secrets.is_empty() {
            return Ok(Prehashed::default());
        }
        if secrets.len() > MAX_SECRETS_PER_REQUEST {
            return Err(ValidationError::from(PolicyError::InvalidAuth(format!(
                "at most {MAX_SECRETS_PER_REQUEST} passwords and keys per request"
            )))
            .into());
        }
        let secrets: Vec<String> = secrets.into_iter().map(str::to_string).collect();
        let hashed = tokio::task::spawn_blocking(move || {
            let mut hashed: HashMap<String, Vec<String>> = HashMap::new();
            for s in secrets {
                let h = Argon2Hasher.hash(&s);
                hashed.entry(s).or_default().push(h);
            }
            hashed
        })
        .await
        .map_err(|e| ApiError::Store(store::StoreError::Worker(e.to_string())))?;
        Ok(Prehashed(Mutex::new(hashed)))
    }
}

impl SecretHasher for Prehashed {
    fn hash(&self, secret: &str) -> String {
        let ahead = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(secret)
            .and_then(Vec::pop);
        // Every secret of the request was hashed ahead; the fallback is
        // correct but slow.
        ahead.unwrap_or_else(|| Argon2Hasher.hash(secret))
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("API views always serialize")
}

/// The project named `name` if the caller may see it. Another tenant's
/// project answers exactly like a missing one, so names do not leak.
pub(super) fn project(
    tx: &Connection,
    caller: &Caller,
    name: &str,
) -> Result<ProjectRow, ApiError> {
    store::project_by_name(tx, name)?
        .filter(|p| caller.owns(&p.user))
        .ok_or_else(|| ApiError::ProjectNotFound(name.to_string()))
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
    caller: &Caller,
    tx: &Connection,
    mut req: ProjectCreate,
    claimed: &Mutex<Option<Ipv4Net>>,
) -> Result<Value, ApiError> {
    // A member's project is its own; an admin's defaults to `admin`.
    req.user.get_or_insert_with(|| caller.user.clone());
    let spec = req.validate()?;
    ensure_owner(tx, &spec.user)?;
    // Project names are global (they are DNS labels): a taken name is
    // refused whoever holds it.
    if store::project_by_name(tx, &spec.name)?.is_some() {
        return Err(ApiError::ProjectExists(spec.name));
    }
    quota::check(tx, &spec.user, state.default_quota, quota::PROJECT)?;
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
    caller: &Caller,
    tx: &Connection,
    req: ProjectRef,
) -> Result<Value, ApiError> {
    match req.name {
        Some(name) => Ok(to_value(project_info(
            tx,
            &project(tx, caller, &name)?,
            &state.view(),
        )?)),
        None => {
            let list = store::list_projects(tx)?
                .iter()
                .filter(|p| caller.owns(&p.user))
                .map(|p| project_info(tx, p, &state.view()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(to_value(list))
        }
    }
}

fn update_project(
    state: &AppState,
    caller: &Caller,
    tx: &Connection,
    req: ProjectUpdate,
) -> Result<Value, ApiError> {
    req.validate()?;
    let p = project(tx, caller, &req.name)?;
    ApiError::check_not_pending(format!("project {:?}", p.name), p.provisioning_status)?;
    if let Some(user) = req.user.as_ref().filter(|u| **u != p.user) {
        give_project(state, tx, &p, user)?;
    }
    let p = project(tx, caller, &req.name)?;
    Ok(to_value(project_info(tx, &p, &state.view())?))
}

/// Makes sure the owner a request names exists. Only an admin can name
/// another user (see `auth`); one that does not exist yet is created as a
/// member without a token, so seed 003's `"user": "john"` keeps working.
fn ensure_owner(tx: &Connection, user: &str) -> Result<(), ApiError> {
    if !store::user_exists(tx, user)? {
        store::insert_tokenless_member(tx, user)?;
    }
    Ok(())
}

/// A new owner for `p` (admin only, see `auth`): it must exist, and the
/// project with its instances must fit in the new owner's quota.
fn give_project(
    state: &AppState,
    tx: &Connection,
    p: &ProjectRow,
    user: &str,
) -> Result<(), ApiError> {
    ensure_owner(tx, user)?;
    let instances = store::list_instances(tx, p.id)?;
    let live = instances.iter().filter(|i| !i.deleting).map(|i| &i.spec);
    let moving = QuotaUsage::count(1, live);
    quota::check(tx, user, state.default_quota, moving)?;
    store::set_project_user(tx, p.id, user)?;
    Ok(())
}

fn delete_project(
    state: &AppState,
    caller: &Caller,
    tx: &Connection,
    req: ProjectDelete,
) -> Result<Value, ApiError> {
    let p = project(tx, caller, &req.name)?;
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
    let p = project(tx, caller, &req.name)?;
    Ok(to_value(project_info(tx, &p, &state.view())?))
}

// === instances ===

fn create_instance(
    state: &AppState,
    caller: &Caller,
    tx: &Connection,
    req: InstanceCreate,
    hasher: &Prehashed,
) -> Result<Value, ApiError> {
    let spec = req.clone().validate(hasher)?;
    let p = project(tx, caller, &req.project)?;
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
    let cost = quota::instance(spec.quota_nodes());
    quota::check(tx, &p.user, state.default_quota, cost)?;
    save_tls_keys(state, &spec)?;
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
    caller: &Caller,
    tx: &Connection,
    req: InstanceRef,
) -> Result<Value, ApiError> {
    let p = project(tx, caller, &req.project)?;
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
    caller: &Caller,
    tx: &Connection,
    req: InstanceUpdate,
    hasher: &Prehashed,
) -> Result<Value, ApiError> {
    let p = project(tx, caller, &req.project)?;
    let row = instance(tx, &p, &req.name)?;
    ApiError::check_not_pending(format!("instance {:?}", row.name), row.provisioning_status)?;
    if row.deleting {
        return Err(ApiError::Pending {
            what: format!("instance {:?} (being deleted)", row.name),
            status: row.provisioning_status.as_str(),
        });
    }
    let next = req.apply_to(&row.spec, hasher)?;
    let nodes: Vec<_> = store::list_nodes(tx, row.id)?
        .iter()
        .map(|n| n.address)
        .collect();
    check_backends(state, &next, &p, &nodes)?;
    if next.port == state.node_admin_port {
        return Err(ApiError::PortReserved(next.port));
    }
    if next != row.spec {
        let cost = quota::more_nodes(row.spec.quota_nodes(), next.quota_nodes());
        quota::check(tx, &p.user, state.default_quota, cost)?;
        save_tls_keys(state, &next)?;
        // Mappings of providers the federation no longer has go (all of
        // them with the federation); the new config carries the rest.
        store::retain_providers(tx, row.id, &next.federation_providers())?;
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

/// Writes the private keys of the spec's new certificates to their own
/// 0600 files before the spec (which has none) is stored: a node pushed
/// the spec finds them. On a blocking thread, as every transaction is.
fn save_tls_keys(state: &AppState, spec: &crate::model::InstanceSpec) -> Result<(), ApiError> {
    if let Some(tls) = &spec.tls {
        state.tls_keys.put_all(&tls.keys())?;
    }
    Ok(())
}

fn delete_instance(
    state: &AppState,
    caller: &Caller,
    tx: &Connection,
    req: InstanceDelete,
) -> Result<Value, ApiError> {
    let p = project(tx, caller, &req.project)?;
    let row = instance(tx, &p, &req.name)?;
    ApiError::check_not_pending(format!("instance {:?}", row.name), row.provisioning_status)?;
    store::set_instance_provisioning(tx, row.id, ProvisioningStatus::PendingDelete, None)?;
    let row = store::instance_by_id(tx, row.id)?.expect("updated in this transaction");
    Ok(to_value(instance_info(tx, &row, &p, &state.view())?))
}

/// Refuses backends (of every pool) that point into the control plane or back at the
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
    let pools = spec.policy.pools.values().flat_map(|p| &p.members);
    // Federation providers are pools on the node, with the same guard.
    let providers = spec
        .federation
        .iter()
        .flat_map(|f| f.providers.values())
        .flat_map(|p| &p.pool.members);
    for member in spec.backends.iter().chain(pools).chain(providers) {
        state.backends.check(member.address, &own)?;
        state.network.check_backend(member.address)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secrets_are_hashed_ahead_once_per_occurrence() {
        let h = Prehashed::of(vec!["pw-1234567", "pw-1234567"])
            .await
            .unwrap();
        let (first, second) = (h.hash("pw-1234567"), h.hash("pw-1234567"));
        assert_ne!(first, second, "each occurrence has its own salt");
        assert!(crate::password::verify(&first, "pw-1234567"));
        assert!(crate::password::verify(&second, "pw-1234567"));
        let many: Vec<String> = (0..=MAX_SECRETS_PER_REQUEST)
            .map(|i| format!("secret-{i}"))
            .collect();
        let refused = Prehashed::of(many.iter().map(String::as_str).collect()).await;
        assert_eq!(refused.err().map(|e| e.code()), Some("invalid_auth"));
    }
}

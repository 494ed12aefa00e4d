//! `mapping` requests (issue 18): federation mappings injected, listed and
//! removed by admins and the instance's owner (readers list them). As for
//! instances, another tenant's instance answers like a missing one. A
//! write commits first (a token mapping's remote token into its own 0600
//! file, never into SQLite), then goes to every running node of the
//! instance before the answer (`pushed_to` of `nodes`; the others catch up
//! within seconds). No answer, log line or audit entry holds a token.

use rusqlite::Connection;
use serde_json::Value;

use super::auth::Caller;
use super::handlers::project;
use super::{ApiError, AppState};
use crate::model::envelope::ApiRequest;
use crate::model::mapping::{
    MappingChange, MappingCreate, MappingDelete, MappingKind, MappingRequest, MappingSource,
    MappingsInfo, NodeMappingsVersion, MAX_RESOURCE_MAPPINGS, MAX_TOKEN_MAPPINGS,
};
use crate::model::{InstanceId, ValidationError};
use crate::store::{self, InstanceRow, ProjectRow};

pub(super) async fn handle(
    state: &AppState,
    caller: &Caller,
    req: ApiRequest,
) -> Result<Value, ApiError> {
    match req {
        ApiRequest::CreateMapping(r) => create(state, caller, r).await,
        ApiRequest::MappingInfo(r) => info(state, caller, r).await,
        ApiRequest::DeleteMapping(r) => delete(state, caller, r).await,
        _ => unreachable!("only mapping requests come here"),
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("API views always serialize")
}

/// The instance a request names, if the caller may see it and it has a
/// federation.
fn federated(
    c: &Connection,
    caller: &Caller,
    r: &MappingRequest,
) -> Result<(ProjectRow, InstanceRow), ApiError> {
    let p = project(c, caller, &r.project)?;
    let i = store::instance_by_name(c, p.id, &r.instance)?.ok_or_else(|| {
        ApiError::InstanceNotFound {
            project: p.name.clone(),
            name: r.instance.clone(),
        }
    })?;
    if i.spec.federation.is_none() {
        return Err(ApiError::FederationNotConfigured {
            project: p.name,
            name: i.name,
        });
    }
    Ok((p, i))
}

/// [`federated`], for a write: not while the instance is being deleted.
fn writable(
    c: &Connection,
    caller: &Caller,
    r: &MappingRequest,
) -> Result<(ProjectRow, InstanceRow), ApiError> {
    let (p, i) = federated(c, caller, r)?;
    if i.deleting {
        return Err(ApiError::Pending {
            what: format!("instance {:?} (being deleted)", i.name),
            status: i.provisioning_status.as_str(),
        });
    }
    Ok((p, i))
}

fn change(p: &ProjectRow, i: &InstanceRow, kind: MappingKind, version: u64) -> MappingChange {
    MappingChange {
        project: p.name.clone(),
        instance: i.name.clone(),
        kind,
        version,
        resource: None,
        token: None,
        pushed_to: 0,
        nodes: 0,
    }
}

/// After the commit: the replaced or removed token file goes (else the
/// sweep takes it), and the new set goes to the instance's running nodes.
async fn finish(
    state: &AppState,
    instance: InstanceId,
    stale_secret: Option<String>,
    mut answer: MappingChange,
) -> Result<Value, ApiError> {
    if let Some(secret) = stale_secret {
        let tokens = state.mappings.tokens().clone();
        let removed = tokio::task::spawn_blocking(move || tokens.remove(instance, &secret)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!("instance {instance}: {e}; the sweep removes it later");
        }
    }
    let pushed = state.mappings.push(instance).await;
    answer.pushed_to = pushed.pushed_to;
    answer.nodes = pushed.nodes;
    Ok(to_value(answer))
}

async fn create(state: &AppState, caller: &Caller, r: MappingRequest) -> Result<Value, ApiError> {
    let mapping = r.validate_create()?;
    if let MappingCreate::Token(t) = &mapping {
        if t.expires_at
            .is_some_and(|at| at <= store::now().max(0) as u64)
        {
            return Err(ValidationError::InvalidField(
                "`expires_at` is in the past: the mapping would never be used".into(),
            )
            .into());
        }
    }
    let (who, tokens) = (caller.clone(), state.mappings.tokens().clone());
    let (instance, stale, answer) = state
        .store
        .transaction(move |tx| {
            let (p, i) = writable(tx, &who, &r)?;
            i.spec
                .check_provider(mapping.provider())
                .map_err(ValidationError::from)?;
            let (resources, token_count) = store::count_mappings(tx, i.id)?;
            let now = store::now();
            match mapping {
                MappingCreate::Resource(m) => {
                    let known = store::resource_mapping(tx, i.id, &m.key)?.is_some();
                    if !known && resources >= MAX_RESOURCE_MAPPINGS {
                        return Err(ApiError::TooManyMappings {
                            instance: i.name,
                            kind: "resource",
                            limit: MAX_RESOURCE_MAPPINGS,
                        });
                    }
                    let w =
                        store::put_resource_mapping(tx, i.id, &m, MappingSource::Injected, now)?;
                    let mut answer = change(&p, &i, MappingKind::Resource, w.version);
                    answer.resource = store::resource_mapping(tx, i.id, &m.key)?;
                    Ok((i.id, None, answer))
                }
                MappingCreate::Token(t) => {
                    if token_count >= MAX_TOKEN_MAPPINGS {
                        return Err(ApiError::TooManyMappings {
                            instance: i.name,
                            kind: "token",
                            limit: MAX_TOKEN_MAPPINGS,
                        });
                    }
                    let w = store::put_token_mapping(tx, &tokens, i.id, &t, now)?;
                    let mut answer = change(&p, &i, MappingKind::Token, w.write.version);
                    answer.token = Some(w.view);
                    Ok((i.id, w.replaced_secret, answer))
                }
            }
        })
        .await?;
    finish(state, instance, stale, answer).await
}

async fn delete(state: &AppState, caller: &Caller, r: MappingRequest) -> Result<Value, ApiError> {
    let which = r.validate_delete()?;
    let who = caller.clone();
    let (instance, stale, answer) = state
        .store
        .transaction(move |tx| {
            let (p, i) = writable(tx, &who, &r)?;
            if let Some(provider) = &r.provider {
                i.spec
                    .check_provider(provider)
                    .map_err(ValidationError::from)?;
            }
            let missing = |what: String| ApiError::MappingNotFound {
                instance: i.name.clone(),
                what,
            };
            match which {
                MappingDelete::Resource(key) => {
                    let what = format!("resource mapping {}/{}", key.resource_type, key.id);
                    // A provider named must be the mapping's.
                    let stored = store::resource_mapping(tx, i.id, &key)?;
                    if stored.is_none_or(|s| r.provider.as_ref().is_some_and(|p| *p != s.provider))
                    {
                        return Err(missing(what));
                    }
                    let (view, w) = store::delete_resource_mapping(tx, i.id, &key)?
                        .ok_or_else(|| missing(what))?;
                    let mut answer = change(&p, &i, MappingKind::Resource, w.version);
                    answer.resource = Some(view);
                    Ok((i.id, None, answer))
                }
                MappingDelete::Token(t) => {
                    let what = format!(
                        "token mapping of project {:?} on provider {:?} for that token",
                        t.local_project, t.provider
                    );
                    let (view, secret, w) =
                        store::delete_token_mapping(tx, i.id, &t)?.ok_or_else(|| missing(what))?;
                    let mut answer = change(&p, &i, MappingKind::Token, w.version);
                    answer.token = Some(view);
                    Ok((i.id, Some(secret), answer))
                }
            }
        })
        .await?;
    finish(state, instance, stale, answer).await
}

async fn info(state: &AppState, caller: &Caller, r: MappingRequest) -> Result<Value, ApiError> {
    let kind = r.validate_info()?;
    let who = caller.clone();
    state
        .store
        .read(move |c| {
            let (p, i) = federated(c, &who, &r)?;
            let (version, resources, tokens) = store::mappings_info(c, i.id, kind, store::now())?;
            let nodes = store::list_nodes(c, i.id)?;
            Ok((p, i, version, resources, tokens, nodes))
        })
        .await
        .map(|(p, i, version, resources, tokens, nodes)| {
            let nodes = nodes
                .into_iter()
                .filter(|n| n.state.is_configured())
                .map(|n| NodeMappingsVersion {
                    node_id: n.id,
                    address: n.address,
                    mappings_version: state.mappings.accepted(n.id),
                })
                .collect();
            to_value(MappingsInfo {
                project: p.name,
                instance: i.name,
                version,
                resources,
                tokens,
                nodes,
            })
        })
}

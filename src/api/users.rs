//! `{"type": "user"}` and `{"type": "audit"}`: admin only (see `auth`).
//! A token is shown once, in the answer that made it; lbd keeps its hash.

use rusqlite::Connection;
use serde_json::Value;

use super::auth::{hash_token, is_builtin, new_token};
use super::{quota, ApiError, AppState};
use crate::model::envelope::ApiRequest;
use crate::model::{
    AuditQuery, Quota, Role, UserCreate, UserDelete, UserInfo, UserRef, UserUpdate,
};
use crate::store::{self, UserRow};

pub(super) async fn handle(state: &AppState, req: ApiRequest) -> Result<Value, ApiError> {
    let defaults = state.default_quota;
    let store = &state.store;
    let info = match req {
        ApiRequest::UserInfo(r) => store.read(move |c| user_info(c, defaults, r)).await?,
        ApiRequest::AuditInfo(q) => return audit_info(state, q).await,
        ApiRequest::CreateUser(r) => {
            store
                .transaction(move |tx| create_user(tx, defaults, r))
                .await?
        }
        ApiRequest::UpdateUser(r) => {
            store
                .transaction(move |tx| update_user(tx, defaults, r))
                .await?
        }
        ApiRequest::DeleteUser(r) => {
            store
                .transaction(move |tx| delete_user(tx, defaults, r))
                .await?
        }
        _ => unreachable!("only user and audit requests come here"),
    };
    Ok(info)
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("API views always serialize")
}

fn view(c: &Connection, u: &UserRow, defaults: Quota) -> Result<UserInfo, ApiError> {
    Ok(UserInfo {
        name: u.name.clone(),
        role: u.role,
        quota: quota::effective(u, defaults),
        usage: store::user_usage(c, &u.name)?,
        created_at: u.created_at,
        has_token: u.token_hash.is_some(),
        token: None,
    })
}

fn user(c: &Connection, name: &str) -> Result<UserRow, ApiError> {
    store::user_by_name(c, name)?.ok_or_else(|| ApiError::UserNotFound(name.to_string()))
}

fn create_user(tx: &Connection, defaults: Quota, req: UserCreate) -> Result<Value, ApiError> {
    req.validate()?;
    if store::user_exists(tx, &req.name)? {
        return Err(ApiError::UserExists(req.name));
    }
    let token = new_token();
    let role = req.role.unwrap_or(Role::Member);
    let row = store::insert_user(
        tx,
        &req.name,
        role,
        req.quota.unwrap_or_default(),
        &hash_token(&token),
    )?;
    let mut info = view(tx, &row, defaults)?;
    info.token = Some(token);
    Ok(to_value(info))
}

fn user_info(c: &Connection, defaults: Quota, req: UserRef) -> Result<Value, ApiError> {
    match req.name {
        Some(name) => Ok(to_value(view(c, &user(c, &name)?, defaults)?)),
        None => {
            let list = store::list_users(c)?
                .iter()
                .map(|u| view(c, u, defaults))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(to_value(list))
        }
    }
}

fn update_user(tx: &Connection, defaults: Quota, req: UserUpdate) -> Result<Value, ApiError> {
    req.validate()?;
    let row = user(tx, &req.name)?;
    let changes = req.role.is_some_and(|r| r != row.role)
        || req.quota.is_some_and(|q| q != Default::default())
        || req.rotate_token;
    if is_builtin(&row.name) && changes {
        return Err(ApiError::BuiltinUser);
    }
    if let Some(role) = req.role {
        store::set_user_role(tx, &row.name, role)?;
    }
    if let Some(q) = req.quota {
        // A quota under the current use is allowed: it refuses growth only.
        store::set_user_quota(tx, &row.name, q)?;
    }
    let token = req.rotate_token.then(new_token);
    if let Some(token) = &token {
        // The old hash is gone with this commit: the old token fails at once.
        store::set_user_token_hash(tx, &row.name, &hash_token(token))?;
    }
    let mut info = view(tx, &user(tx, &row.name)?, defaults)?;
    info.token = token;
    Ok(to_value(info))
}

fn delete_user(tx: &Connection, defaults: Quota, req: UserDelete) -> Result<Value, ApiError> {
    let row = user(tx, &req.name)?;
    if is_builtin(&row.name) {
        return Err(ApiError::BuiltinUser);
    }
    let count = store::count_projects_of(tx, &row.name)?;
    if count > 0 {
        return Err(ApiError::UserOwnsProjects {
            name: row.name,
            count,
        });
    }
    let info = view(tx, &row, defaults)?;
    store::delete_user(tx, &row.name)?;
    Ok(to_value(info))
}

async fn audit_info(state: &AppState, q: AuditQuery) -> Result<Value, ApiError> {
    q.validate()?;
    let entries = state.store.read(move |c| store::query_audit(c, &q)).await?;
    Ok(to_value(entries))
}

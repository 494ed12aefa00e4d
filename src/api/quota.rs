//! Quota checks, run inside the write transaction of the request that
//! would grow a user's use, so two concurrent creates cannot both pass.

use rusqlite::Connection;

use super::ApiError;
use crate::model::{Quota, QuotaUsage, Role};
use crate::store::{self, UserRow};

/// The limits in force for `user`: none for admins, else what the user
/// row sets and lbd's defaults for the rest.
pub fn effective(user: &UserRow, defaults: Quota) -> Quota {
    match user.role {
        Role::Admin => Quota::UNLIMITED,
        _ => Quota::with_defaults(user.quota, defaults),
    }
}

/// Refuses (403 `quota_exceeded`) when `adding` would take `owner` past
/// one of their limits; the message names the limit, its value and the use.
pub fn check(
    tx: &Connection,
    owner: &str,
    defaults: Quota,
    adding: QuotaUsage,
) -> Result<(), ApiError> {
    let user =
        store::user_by_name(tx, owner)?.ok_or_else(|| ApiError::UserNotFound(owner.into()))?;
    let quota = effective(&user, defaults);
    if quota == Quota::UNLIMITED {
        return Ok(());
    }
    let used = store::user_usage(tx, owner)?;
    match quota.first_exceeded(used, adding) {
        None => Ok(()),
        Some(kind) => Err(ApiError::QuotaExceeded {
            kind,
            limit: quota.limit(kind),
            user: owner.to_string(),
            used: used.used(kind),
        }),
    }
}

/// What one more project costs.
pub const PROJECT: QuotaUsage = QuotaUsage {
    projects: 1,
    instances: 0,
    nodes: 0,
};

/// What a new instance costs.
pub fn instance(nodes: u32) -> QuotaUsage {
    QuotaUsage {
        projects: 0,
        instances: 1,
        nodes: u64::from(nodes),
    }
}

/// What growing an instance from `old` to `new` nodes costs (nothing when it shrinks).
pub fn more_nodes(old: u32, new: u32) -> QuotaUsage {
    QuotaUsage {
        nodes: u64::from(new.saturating_sub(old)),
        ..Default::default()
    }
}

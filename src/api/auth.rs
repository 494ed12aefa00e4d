//! Who is calling, and what they may do.
//!
//! A bearer token names its user: lbd keeps only the SHA-256 of each token,
//! looks the hash up and compares it again in constant time. What a role
//! may do per action and type is [`authorize`] (docs/API.md shows it as a
//! table); whether an object belongs to the caller is [`Caller::owns`],
//! which the handlers ask with the object in hand, answering a member's
//! request for another tenant's object exactly like one for a missing
//! object (404), so names do not leak.

use axum::http::{header, HeaderMap};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::model::envelope::ApiRequest;
use crate::model::user::ADMIN_USER;
use crate::model::Role;
use crate::store::{self, Store};

/// The user a request's token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub role: Role,
}

impl Caller {
    /// Whether the caller sees and changes objects owned by `owner`:
    /// admins and (for reading) readers every one, members their own.
    pub fn owns(&self, owner: &str) -> bool {
        self.role != Role::Member || self.user == owner
    }
}

/// A new token: 256 random bits, as hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What lbd stores of a token.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Compares without an early exit, so timing does not reveal the value.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

/// The caller named by the request's token: 401 `unauthorized` without a
/// token or with one no user has.
pub async fn caller(store: &Store, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let hash = hash_token(bearer(headers).ok_or(ApiError::Unauthorized)?);
    let row = {
        let hash = hash.clone();
        store
            .read(move |c| store::user_by_token_hash(c, &hash))
            .await?
    };
    match row {
        Some(u)
            if u.token_hash
                .as_deref()
                .is_some_and(|h| constant_time_eq(h, &hash)) =>
        {
            Ok(Caller {
                user: u.name,
                role: u.role,
            })
        }
        _ => Err(ApiError::Unauthorized),
    }
}

fn forbidden(what: &str) -> ApiError {
    ApiError::Forbidden(what.to_string())
}

/// What a role may do, by action and type (before any object is looked
/// up). Ownership of the object itself is checked by the handlers.
pub fn authorize(caller: &Caller, req: &ApiRequest) -> Result<(), ApiError> {
    use ApiRequest as R;
    match (caller.role, req) {
        (_, R::WhoAmI) => Ok(()),
        (Role::Admin, _) => Ok(()),
        (_, R::CreateUser(_) | R::UserInfo(_) | R::UpdateUser(_) | R::DeleteUser(_)) => {
            Err(forbidden("only an admin manages users"))
        }
        (_, R::AuditInfo(_)) => Err(forbidden("only an admin reads the audit log")),
        (Role::Reader, r) if r.is_write() => Err(forbidden("a reader cannot write")),
        (Role::Member, R::CreateProject(p))
            if p.user.as_ref().is_some_and(|u| *u != caller.user) =>
        {
            Err(forbidden("a member creates projects only for itself"))
        }
        (Role::Member, R::UpdateProject(p))
            if p.user.as_ref().is_some_and(|u| *u != caller.user) =>
        {
            Err(forbidden("only an admin changes a project's owner"))
        }
        _ => Ok(()),
    }
}

/// Who may read `/metrics`: admins and readers (it shows every project).
pub fn may_read_metrics(caller: &Caller) -> Result<(), ApiError> {
    match caller.role {
        Role::Admin | Role::Reader => Ok(()),
        Role::Member => Err(forbidden("only an admin or a reader reads /metrics")),
    }
}

/// Whether `name` is the built-in admin user.
pub fn is_builtin(name: &str) -> bool {
    name == ADMIN_USER
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProjectCreate, ProjectRef, ProjectUpdate, UserRef};

    fn caller(role: Role) -> Caller {
        Caller {
            user: "alice".into(),
            role,
        }
    }

    fn code(role: Role, req: &ApiRequest) -> Option<&'static str> {
        authorize(&caller(role), req).err().map(|e| e.code())
    }

    #[test]
    fn roles_by_action_and_type() {
        let create = |user: Option<&str>| {
            let p: ProjectCreate =
                serde_json::from_value(serde_json::json!({"name": "p", "user": user})).unwrap();
            ApiRequest::CreateProject(p)
        };
        let list = ApiRequest::ProjectInfo(ProjectRef { name: None });
        let users = ApiRequest::UserInfo(UserRef::default());
        let chown = ApiRequest::UpdateProject(ProjectUpdate {
            name: "p".into(),
            user: Some("bob".into()),
        });
        for role in [Role::Admin, Role::Member, Role::Reader] {
            assert_eq!(code(role, &ApiRequest::WhoAmI), None);
            assert_eq!(code(role, &list), None);
        }
        assert_eq!(code(Role::Admin, &users), None);
        assert_eq!(code(Role::Member, &users), Some("forbidden"));
        assert_eq!(code(Role::Reader, &users), Some("forbidden"));
        assert_eq!(code(Role::Member, &create(None)), None);
        assert_eq!(code(Role::Member, &create(Some("alice"))), None);
        assert_eq!(code(Role::Member, &create(Some("bob"))), Some("forbidden"));
        assert_eq!(code(Role::Admin, &create(Some("bob"))), None);
        assert_eq!(code(Role::Reader, &create(None)), Some("forbidden"));
        assert_eq!(code(Role::Member, &chown), Some("forbidden"));
        assert_eq!(code(Role::Admin, &chown), None);
    }

    #[test]
    fn members_own_only_their_own_objects() {
        assert!(caller(Role::Member).owns("alice"));
        assert!(!caller(Role::Member).owns("bob"));
        assert!(caller(Role::Reader).owns("bob"));
        assert!(caller(Role::Admin).owns("bob"));
    }

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(hash_token(&a).len(), 32);
        assert_ne!(hash_token(&a), hash_token(&b));
        assert!(!hash_token(&a)
            .windows(4)
            .any(|w| a.as_bytes().windows(4).any(|t| t == w)));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

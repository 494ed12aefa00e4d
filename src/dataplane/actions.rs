//! What a matched rule does, compiled once per config: the node's own
//! answer (`redirect`, `reject`, `respond`), or a pool to send to, with the
//! path and header edits the request gets on its way to the backend.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Response, StatusCode, Uri};

use super::pool::{full_body, ProxyBody};
use super::pools::{NamedPools, PoolRef};
use super::rules::strip_prefix;
use crate::model::policy::RuleAction;

/// A rule's action, ready for the request path: status codes and header
/// values parsed, the pool resolved to a reference.
#[derive(Debug, Clone)]
pub enum Action {
    Pool {
        pool: PoolRef,
        /// The matched `path_prefix`, cut off the path (`strip_prefix`).
        strip: Option<String>,
    },
    Redirect {
        code: StatusCode,
        location: HeaderValue,
    },
    Reject(StatusCode),
    Respond {
        status: StatusCode,
        body: Bytes,
        content_type: HeaderValue,
    },
}

impl Action {
    /// `path_prefix`: the rule's prefix match, which `strip_prefix` cuts.
    pub fn compile(
        action: &RuleAction,
        path_prefix: Option<&str>,
        pools: &NamedPools,
    ) -> Result<Action, String> {
        let status = |code: u16| StatusCode::from_u16(code).map_err(|e| e.to_string());
        let value = |v: &str| HeaderValue::from_str(v).map_err(|e| e.to_string());
        Ok(match action {
            RuleAction::Pool { pool, strip_prefix } => Action::Pool {
                pool: pools
                    .resolve(pool)
                    .ok_or_else(|| format!("pool {pool:?} is not defined"))?,
                strip: strip_prefix
                    .then(|| path_prefix.map(str::to_string))
                    .flatten(),
            },
            RuleAction::Redirect { location, code } => Action::Redirect {
                code: status(*code)?,
                location: value(location)?,
            },
            RuleAction::Reject { status: code } => Action::Reject(status(*code)?),
            RuleAction::Respond {
                status: code,
                body,
                content_type,
            } => Action::Respond {
                status: status(*code)?,
                body: Bytes::from(body.clone()),
                content_type: value(content_type)?,
            },
        })
    }

    /// The node's own answer, for every action but `pool`.
    pub fn answer(&self) -> Option<Response<ProxyBody>> {
        let (status, body) = match self {
            Action::Pool { .. } => return None,
            Action::Redirect { code, .. } | Action::Reject(code) => (*code, Bytes::new()),
            Action::Respond { status, body, .. } => (*status, body.clone()),
        };
        let mut resp = Response::new(full_body(body));
        *resp.status_mut() = status;
        match self {
            Action::Redirect { location, .. } => {
                resp.headers_mut()
                    .insert(header::LOCATION, location.clone());
            }
            Action::Respond { content_type, .. } => {
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, content_type.clone());
            }
            _ => {}
        }
        Some(resp)
    }
}

/// The target the backend gets with `prefix` cut off the path: the query is
/// kept and the path always starts with `/`.
pub fn stripped_target(uri: &Uri, prefix: &str) -> PathAndQuery {
    let original = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let stripped = strip_prefix(original, prefix);
    // From a prefix of a valid target and a `/`: still valid.
    PathAndQuery::from_maybe_shared(Bytes::from(stripped))
        .unwrap_or_else(|_| PathAndQuery::from_static("/"))
}

/// A rule's header edits toward the backend: removals first, so a rule
/// that removes and sets one name ends up with its value.
pub fn edit_headers(
    headers: &mut HeaderMap,
    set: &[(HeaderName, HeaderValue)],
    remove: &[HeaderName],
) {
    for name in remove {
        headers.remove(name);
    }
    for (name, value) in set {
        headers.insert(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> NamedPools {
        NamedPools::default()
    }

    #[test]
    fn node_answers_carry_their_status_and_fields() {
        let redirect = Action::compile(
            &RuleAction::Redirect {
                location: "https://example.com/".into(),
                code: 308,
            },
            None,
            &pools(),
        )
        .unwrap();
        let resp = redirect.answer().unwrap();
        assert_eq!(resp.status(), 308);
        assert_eq!(resp.headers()[header::LOCATION], "https://example.com/");

        let respond = Action::compile(
            &RuleAction::Respond {
                status: 200,
                body: "ok".into(),
                content_type: "application/json".into(),
            },
            None,
            &pools(),
        )
        .unwrap();
        let resp = respond.answer().unwrap();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");

        let reject = Action::compile(&RuleAction::Reject { status: 451 }, None, &pools()).unwrap();
        assert_eq!(reject.answer().unwrap().status(), 451);
    }

    #[test]
    fn a_pool_action_resolves_its_pool_and_prefix() {
        let pool = |strip_prefix| RuleAction::Pool {
            pool: "default".into(),
            strip_prefix,
        };
        let a = Action::compile(&pool(true), Some("/api/"), &pools()).unwrap();
        assert!(
            matches!(&a, Action::Pool { pool: PoolRef::Default, strip: Some(p) } if p == "/api/")
        );
        assert!(a.answer().is_none());
        let b = Action::compile(&pool(false), Some("/api/"), &pools()).unwrap();
        assert!(matches!(b, Action::Pool { strip: None, .. }));
        let unknown = RuleAction::Pool {
            pool: "nope".into(),
            strip_prefix: false,
        };
        assert!(Action::compile(&unknown, None, &pools()).is_err());
    }

    #[test]
    fn the_stripped_target_keeps_the_query_and_a_leading_slash() {
        let uri: Uri = "/api/users?x=1".parse().unwrap();
        assert_eq!(stripped_target(&uri, "/api/"), "/users?x=1");
        let h2: Uri = "http://web.demo/api?x=1".parse().unwrap();
        assert_eq!(stripped_target(&h2, "/api"), "/?x=1");
    }

    #[test]
    fn header_edits_remove_then_set() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        let name = |n: &'static str| HeaderName::from_static(n);
        edit_headers(
            &mut h,
            &[(name("x-a"), HeaderValue::from_static("new"))],
            &[name("x-a"), name("x-b")],
        );
        assert_eq!(h["x-a"], "new");
        assert!(!h.contains_key("x-b"));
    }
}

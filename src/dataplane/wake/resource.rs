//! Per-resource routing of a managed pool (seed 000): the resource id is a
//! path segment (1-based), the groups segment is stripped but never
//! trusted (groups come from the auth stage only), and the backend gets the
//! rest of the path with the query kept:
//!
//! ```text
//! path_segment 2, groups_segment 3:
//!   /smart_proxy/r1/g1,g2/rest/of/path?q=1  →  resource r1, /rest/of/path?q=1
//! ```
//!
//! Pure functions; the wake stage (`super::Wake::route`) applies them.

use http::uri::PathAndQuery;

use crate::model::managed::{is_resource_id, NodeResourceRouting};

/// Why a request for a per-resource pool gets the node's own answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceRefusal {
    /// No valid resource id in the path, or one `resources` does not list (404).
    NotFound,
    /// The caller lacks a group the resource requires (403).
    MissingGroup,
    /// `max_resources` resources are active on this node and none is free (503).
    TooMany(u32),
}

/// The resource a request names and the target the backend gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRoute {
    pub id: String,
    pub target: PathAndQuery,
}

/// The resource of `uri_target` (a request's path and query) under
/// `routing`, checked against `resources` and the caller's `groups`.
pub fn route(
    routing: &NodeResourceRouting,
    uri_target: &str,
    groups: &[String],
) -> Result<ResourceRoute, ResourceRefusal> {
    let (path, query) = match uri_target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (uri_target, None),
    };
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let id = segments
        .get(usize::from(routing.path_segment).saturating_sub(1))
        .copied()
        .filter(|id| is_resource_id(id))
        .ok_or(ResourceRefusal::NotFound)?;
    if let Some(resources) = &routing.resources {
        let required = resources.get(id).ok_or(ResourceRefusal::NotFound)?;
        if !required.iter().all(|g| groups.contains(g)) {
            return Err(ResourceRefusal::MissingGroup);
        }
    }
    // Everything through the later of the two segments goes: the groups
    // segment is the client's claim and must not reach the backend either.
    let strip = usize::from(
        routing
            .groups_segment
            .map_or(routing.path_segment, |g| g.max(routing.path_segment)),
    );
    let rest = segments.get(strip..).unwrap_or_default().join("/");
    let target = match query {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    // Built from parts of a valid target: still valid.
    let target = PathAndQuery::try_from(target).unwrap_or_else(|_| PathAndQuery::from_static("/"));
    Ok(ResourceRoute {
        id: id.to_string(),
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn routing(groups_segment: Option<u16>, listed: bool) -> NodeResourceRouting {
        let resources: BTreeMap<String, Vec<String>> = [
            ("r1".to_string(), vec!["g1".to_string()]),
            ("r2".to_string(), vec![]),
        ]
        .into();
        NodeResourceRouting {
            path_segment: 2,
            groups_segment,
            resources: listed.then_some(resources),
            max_resources: 10,
        }
    }

    fn groups(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_seeds_example_reaches_r1_with_the_rest_of_the_path() {
        let r = route(
            &routing(Some(3), true),
            "/smart_proxy/r1/g1,g2/rest/of/path?q=1&x",
            &groups(&["g1"]),
        )
        .unwrap();
        assert_eq!(r.id, "r1");
        assert_eq!(r.target.as_str(), "/rest/of/path?q=1&x");
    }

    #[test]
    fn without_a_groups_segment_the_path_is_stripped_through_the_resource() {
        let r = route(&routing(None, false), "/p/any-id/a/b/", &[]).unwrap();
        assert_eq!((r.id.as_str(), r.target.as_str()), ("any-id", "/a/b/"));
        let r = route(&routing(None, false), "/p/x9", &[]).unwrap();
        assert_eq!(r.target.as_str(), "/");
        let r = route(&routing(Some(3), false), "/p/x9?k=v", &[]).unwrap();
        assert_eq!(
            r.target.as_str(),
            "/?k=v",
            "a missing groups segment is fine"
        );
    }

    #[test]
    fn a_groups_segment_before_the_resource_is_stripped_too() {
        let mut r = routing(Some(1), false);
        r.path_segment = 2;
        let got = route(&r, "/g1/r2/x", &[]).unwrap();
        assert_eq!((got.id.as_str(), got.target.as_str()), ("r2", "/x"));
    }

    #[test]
    fn bad_or_unlisted_ids_are_not_found() {
        let open = routing(None, false);
        for path in [
            "/p/R1/x",
            "/p//x",
            "/p",
            "/",
            "/p/r%31",
            &format!("/p/{}", "a".repeat(64)),
        ] {
            assert_eq!(
                route(&open, path, &[]),
                Err(ResourceRefusal::NotFound),
                "{path}"
            );
        }
        assert_eq!(
            route(&routing(None, true), "/p/r3/x", &[]),
            Err(ResourceRefusal::NotFound)
        );
    }

    #[test]
    fn groups_come_from_the_caller_never_from_the_url() {
        let r = routing(Some(3), true);
        assert_eq!(
            route(&r, "/p/r1/g1/x", &[]),
            Err(ResourceRefusal::MissingGroup),
            "the URL's groups segment grants nothing"
        );
        assert_eq!(
            route(&r, "/p/r1/x", &groups(&["other"])),
            Err(ResourceRefusal::MissingGroup)
        );
        assert!(route(&r, "/p/r1/g/x", &groups(&["other", "g1"])).is_ok());
        assert!(route(&r, "/p/r2/g/x", &[]).is_ok(), "r2 requires nothing");
    }
}

//! Federation routing (issue 18, seed 004): one endpoint in front of
//! several providers, each a named pool of the config.
//!
//! - [`FederationStage`]: the config's federation, compiled once per
//!   config (patterns, aggregates, providers resolved to pools);
//! - [`mappings`]: where resources live, and injected tokens, kept across
//!   configs (lbd's set plus what this node learned);
//! - [`tokens`]: the token mapping and exchange;
//! - [`search`]: an unknown resource asked of every provider at once;
//! - [`aggregate`]: list calls merged across providers, with markers;
//! - [`route`]: one request's way through all of it.

pub mod aggregate;
pub mod mappings;
mod route;
mod search;
pub mod tokens;

use std::time::Duration;

use http::header::HeaderName;
use http::{request, Method, Uri};

use super::pools::{NamedPools, PoolRef};
use crate::model::federation::{Aggregate, Federation, PathPattern, ResourceKey};

pub(super) use route::{serve, Federated};

/// The node's federation state that outlives a config.
#[derive(Default)]
pub struct FederationState {
    pub mappings: mappings::Mappings,
    pub tokens: tokens::TokenExchange,
}

/// A provider as the request path sees it.
pub struct ProviderRoute {
    pub name: String,
    pub pool: PoolRef,
    pub token_url: Option<Uri>,
}

/// The config's federation, ready for the request path.
pub struct FederationStage {
    resource_paths: Vec<PathPattern>,
    aggregates: Vec<Aggregate>,
    /// In name order.
    pub providers: Vec<ProviderRoute>,
    pub token_header: HeaderName,
    pub search_timeout: Duration,
    pub negative_ttl: Duration,
}

/// What a request is, for the federation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matched {
    /// A resource path: routed by the resource's mapping.
    Resource {
        pattern: usize,
        key: ResourceKey,
        project: Option<String>,
    },
    /// An aggregated list.
    List {
        aggregate: usize,
        resource_type: String,
        list_key: String,
        project: Option<String>,
    },
}

impl FederationStage {
    /// Fails when a provider has no pool in the config (lbd adds one per
    /// provider; a config without it comes from a mismatched controller).
    pub fn new(f: &Federation, pools: &NamedPools) -> Result<FederationStage, String> {
        let providers = f
            .providers
            .iter()
            .map(|(name, p)| {
                let pool = pools
                    .resolve(name)
                    .filter(|r| *r != PoolRef::Default)
                    .ok_or_else(|| format!("federation provider {name:?} has no pool"))?;
                let token_url = p
                    .token_url
                    .as_deref()
                    .map(|u| {
                        u.parse::<Uri>()
                            .map_err(|e| format!("provider {name:?} token_url: {e}"))
                    })
                    .transpose()?;
                Ok(ProviderRoute {
                    name: name.clone(),
                    pool,
                    token_url,
                })
            })
            .collect::<Result<_, String>>()?;
        let token_header = HeaderName::from_bytes(f.token_header.as_bytes())
            .map_err(|e| format!("token_header: {e}"))?;
        Ok(FederationStage {
            resource_paths: f.resource_paths.clone(),
            aggregates: f.aggregate.clone(),
            providers,
            token_header,
            search_timeout: Duration::from_millis(u64::from(f.search_timeout_ms)),
            negative_ttl: Duration::from_secs(u64::from(f.negative_ttl_s)),
        })
    }

    /// Whether the federation takes the request, and how: an aggregated
    /// list (by method and path) or a resource. Anything else goes the
    /// instance's usual way.
    pub fn classify(&self, head: &request::Parts) -> Option<Matched> {
        let path = head.uri.path();
        let reading = head.method == Method::GET || head.method == Method::HEAD;
        if reading {
            for (i, a) in self.aggregates.iter().enumerate() {
                if let Some(m) = a.path.matches(path) {
                    let list_key = a.list_key_for(&m);
                    return Some(Matched::List {
                        aggregate: i,
                        resource_type: m.resource_type.unwrap_or(&list_key).to_string(),
                        list_key,
                        project: m.project.map(str::to_string),
                    });
                }
            }
        }
        self.resource_paths.iter().enumerate().find_map(|(i, p)| {
            let m = p.matches(path)?;
            Some(Matched::Resource {
                pattern: i,
                key: ResourceKey {
                    resource_type: m.resource_type?.to_string(),
                    id: m.id?.to_string(),
                },
                project: m.project.map(str::to_string),
            })
        })
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderRoute> {
        self.providers.iter().find(|p| p.name == name)
    }

    fn pattern(&self, matched: &Matched) -> &PathPattern {
        match matched {
            Matched::Resource { pattern, .. } => &self.resource_paths[*pattern],
            Matched::List { aggregate, .. } => &self.aggregates[*aggregate].path,
        }
    }

    fn aggregate(&self, index: usize) -> &Aggregate {
        &self.aggregates[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::federation::FederationSpec;
    use crate::model::TrafficType;

    fn stage() -> FederationStage {
        let spec: FederationSpec = serde_json::from_value(serde_json::json!({
            "providers": {"sp1": {"entities": ["127.0.0.1:1"]}, "sp2": {"entities": ["127.0.0.1:2"]}},
            "resource_paths": ["/{project}/{type}/{id}", "/{project}/{type}/{id}/action"],
            "aggregate": [{"path": "/{project}/{type}", "list_key": "{type}"}]
        }))
        .unwrap();
        let f = spec.validate(TrafficType::Http, 80, &[]).unwrap();
        let mut policy = crate::model::policy::Policy::default();
        for (name, p) in &f.providers {
            policy.pools.insert(name.clone(), p.pool.clone());
        }
        let pools = NamedPools::new(
            &policy,
            Default::default(),
            &Default::default(),
            &Default::default(),
        )
        .unwrap();
        FederationStage::new(&f, &pools).unwrap()
    }

    fn head(method: &str, uri: &str) -> request::Parts {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn lists_resources_and_the_rest_are_told_apart() {
        let s = stage();
        assert_eq!(s.providers.len(), 2);
        match s.classify(&head("GET", "/alice/volumes?limit=2")) {
            Some(Matched::List {
                list_key, project, ..
            }) => assert_eq!(
                (list_key.as_str(), project.as_deref()),
                ("volumes", Some("alice"))
            ),
            other => panic!("{other:?}"),
        }
        match s.classify(&head("POST", "/alice/volumes/v1/action")) {
            Some(Matched::Resource { pattern, key, .. }) => {
                assert_eq!((pattern, key.id.as_str()), (1, "v1"))
            }
            other => panic!("{other:?}"),
        }
        assert!(s.classify(&head("POST", "/alice/volumes")).is_none());
        assert!(s.classify(&head("GET", "/")).is_none());
    }

    #[test]
    fn a_provider_without_its_pool_is_refused() {
        let spec: FederationSpec = serde_json::from_value(
            serde_json::json!({"providers": {"sp1": {"entities": ["127.0.0.1:1"]}}}),
        )
        .unwrap();
        let f = spec.validate(TrafficType::Http, 80, &[]).unwrap();
        assert!(FederationStage::new(&f, &NamedPools::default()).is_err());
    }
}

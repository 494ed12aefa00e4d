//! An instance's `federation` (issue 18): validated on create and update
//! against the instance's traffic type, port and pool names, and shown by
//! `info` in the shape `create` takes. The federation itself (providers,
//! paths, aggregates) is `model::federation`.

use super::*;
use crate::model::federation::{
    AggregateSpec, Federation, FederationError, FederationSpec, ProviderSpec,
};

/// `federation` on `update instance`: a whole new one (replaces the stored
/// one) or `"none"` (removes it). Absent: kept, and checked again against
/// the pools and port the update ends with.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum FederationUpdate {
    Off(NoFederation),
    On(Box<FederationSpec>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoFederation {
    None,
}

// By hand rather than `untagged`, as `backend_tls`: a typo inside the
// object is `unknown_field`, not "did not match any variant".
impl<'de> Deserialize<'de> for FederationUpdate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "none" => Ok(Self::Off(NoFederation::None)),
            v @ serde_json::Value::Object(_) => FederationSpec::deserialize(v)
                .map(|f| Self::On(Box::new(f)))
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "federation: expected \"none\" or an object, got {other}"
            ))),
        }
    }
}

/// Validates `spec` for an instance with `traffic`, `port` and the named
/// pools of `policy` (a provider is a pool on the node, so names must not
/// collide).
pub(crate) fn validate_federation(
    spec: &FederationSpec,
    traffic: TrafficType,
    port: u16,
    policy: &crate::model::policy::Policy,
) -> Result<Federation, ValidationError> {
    let pools: Vec<&str> = policy.pools.keys().map(String::as_str).collect();
    Ok(spec.validate(traffic, port, &pools)?)
}

impl InstanceSpec {
    /// The federation's provider names (none without one).
    pub fn federation_providers(&self) -> Vec<&str> {
        self.federation
            .iter()
            .flat_map(|f| f.providers.keys().map(String::as_str))
            .collect()
    }

    /// Refuses `provider` unless the instance's federation has it.
    pub fn check_provider(&self, provider: &str) -> Result<(), FederationError> {
        let known = self.federation_providers();
        if known.contains(&provider) {
            return Ok(());
        }
        Err(FederationError::UnknownProvider {
            provider: provider.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        })
    }
}

/// A stored federation back in the shape clients write (`info`, and the
/// base an update is checked again from). Validating it gives it back.
pub fn federation_spec(f: &Federation) -> FederationSpec {
    FederationSpec {
        providers: f
            .providers
            .iter()
            .map(|(name, p)| {
                let pool = p.pool.to_spec();
                (
                    name.clone(),
                    ProviderSpec {
                        entities: pool.entities,
                        health_check: pool.health_check,
                        algorithm: pool.algorithm,
                        token_url: p.token_url.clone(),
                    },
                )
            })
            .collect(),
        resource_paths: f
            .resource_paths
            .iter()
            .map(|p| p.as_str().to_string())
            .collect(),
        aggregate: f
            .aggregate
            .iter()
            .map(|a| AggregateSpec {
                path: a.path.as_str().to_string(),
                method: Some(a.method.clone()),
                list_key: Some(a.list_key.clone()),
                id_key: Some(a.id_key.clone()),
                sort_key: Some(a.sort_key.clone()),
            })
            .collect(),
        token_header: Some(f.token_header.clone()),
        search_timeout_ms: Some(i64::from(f.search_timeout_ms)),
        negative_ttl_s: Some(i64::from(f.negative_ttl_s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(v: serde_json::Value) -> Result<InstanceSpec, ValidationError> {
        serde_json::from_value::<InstanceCreate>(v)
            .map_err(|e| ValidationError::from_serde(&e))?
            .validate(&crate::password::Argon2Hasher)
    }

    fn update(spec: &InstanceSpec, v: serde_json::Value) -> Result<InstanceSpec, ValidationError> {
        let mut v = v;
        v["project"] = json!("demo");
        v["name"] = json!("web");
        serde_json::from_value::<InstanceUpdate>(v)
            .map_err(|e| ValidationError::from_serde(&e))?
            .apply_to(spec, &crate::password::Argon2Hasher)
    }

    fn federation() -> serde_json::Value {
        json!({
            "providers": {"sp1": {"entities": ["127.0.0.1:9001"], "token_url": "http://127.0.0.1:9001/token"},
                          "sp2": {"entities": ["127.0.0.1:9002"], "algorithm": "least_connections"}},
            "resource_paths": ["/{project}/{type}/{id}"],
            "aggregate": [{"path": "/{project}/{type}", "list_key": "{type}"}]
        })
    }

    fn base(traffic: &str) -> serde_json::Value {
        json!({"name": "web", "project": "demo", "traffic_type": traffic, "port": 8080,
               "backend": {"entities": ["127.0.0.1:8000"]}, "federation": federation()})
    }

    #[test]
    fn create_takes_a_federation_on_http_only_with_its_own_codes() {
        let spec = create(base("http")).unwrap();
        let f = spec.federation.as_ref().unwrap();
        assert_eq!(f.providers.len(), 2);
        assert_eq!(spec.federation_providers(), ["sp1", "sp2"]);
        assert!(spec.check_provider("sp2").is_ok());
        assert_eq!(
            spec.check_provider("sp9").unwrap_err().code(),
            "unknown_provider"
        );
        let cases = [
            (json!({"traffic_type": "tcp"}), "federation_needs_http"),
            (
                json!({"federation": {"providers": {"a": {"entities": ["127.0.0.1:1"]}},
                                      "resource_paths": ["/{project}/volumes"]}}),
                "invalid_resource_path",
            ),
            (
                json!({"federation": {"providers": {"a": {"entities": ["127.0.0.1:1"]}},
                                      "aggregate": [{"path": "/{project}/volumes"}]}}),
                "invalid_aggregate",
            ),
            (json!({"federation": {"providers": {}}}), "invalid_provider"),
            (
                json!({"federation": {"providers": {"a": {"entities": ["127.0.0.1:1"]}},
                                      "search_timeout_ms": 0}}),
                "invalid_federation",
            ),
            (
                json!({"pools": {"sp1": {"entities": ["127.0.0.1:7000"]}}}),
                "invalid_provider",
            ),
            (
                json!({"federation": {"providers": {"a": {"entities": ["127.0.0.1:1"]}},
                                      "resoure_paths": []}}),
                "unknown_field",
            ),
        ];
        for (patch, code) in cases {
            let mut v = base("http");
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let err = create(v).unwrap_err();
            assert_eq!(err.code(), code, "{patch}: {err}");
        }
        let mut tls_less = base("https");
        tls_less["port"] = json!(8443);
        assert_eq!(create(tls_less).unwrap_err().code(), "missing_tls");
        // Stored specs from before federation still read.
        let mut stored = serde_json::to_value(&spec).unwrap();
        stored.as_object_mut().unwrap().remove("federation");
        let old: InstanceSpec = serde_json::from_value(stored).unwrap();
        assert!(old.federation.is_none());
        let back: InstanceSpec =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn the_node_config_has_each_provider_as_a_pool_and_the_federation() {
        let spec = create(base("http")).unwrap();
        let config = spec.node_config(3, "127.1.0.2".parse().unwrap());
        let sp2 = &config.policy.pools["sp2"];
        assert_eq!(sp2.members[0].address.to_string(), "127.0.0.1:9002");
        assert_eq!(sp2.algorithm, Algorithm::LeastConnections);
        assert!(sp2.backend_protocol.is_some(), "resolved like any pool");
        let nf = config.federation.as_ref().unwrap();
        assert_eq!(nf.federation, *spec.federation.as_ref().unwrap());
        assert_eq!(nf.mappings.version, 0);
        assert!(spec.policy.pools.is_empty(), "the spec itself is unchanged");
        let plain = create(
            json!({"name": "web", "project": "demo", "traffic_type": "http",
            "backend": {"entities": ["127.0.0.1:8000"]}}),
        )
        .unwrap();
        assert!(plain
            .node_config(1, "127.1.0.2".parse().unwrap())
            .federation
            .is_none());
    }

    #[test]
    fn update_replaces_removes_or_rechecks_the_federation() {
        let spec = create(base("http")).unwrap();
        // Untouched, it comes back the same (no needless new generation).
        assert_eq!(update(&spec, json!({})).unwrap(), spec);
        assert_eq!(
            update(&spec, json!({"port": 8081})).unwrap().federation,
            spec.federation
        );
        let spec_again = federation_spec(spec.federation.as_ref().unwrap());
        let revalidated = spec_again.validate(TrafficType::Http, 1, &[]).unwrap();
        assert_eq!(Some(revalidated), spec.federation);
        let gone = update(&spec, json!({"federation": "none"})).unwrap();
        assert!(gone.federation.is_none());
        let one = update(
            &spec,
            json!({"federation": {"providers": {"sp3": {"entities": ["127.0.0.1:9003"]}}}}),
        )
        .unwrap();
        assert_eq!(one.federation_providers(), ["sp3"]);
        // A new pool may not take a provider's name, though the federation is untouched.
        let err = update(
            &spec,
            json!({"pools": {"sp2": {"entities": ["127.0.0.1:7000"]}}}),
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_provider", "{err}");
        let err = update(
            &spec,
            json!({"federation": {"providers": {"a": {"entities": ["127.0.0.1:1"]}},
                                  "resource_paths": ["/{project}/{type}"]}}),
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_resource_path");
        for bad in [json!("off"), json!(true)] {
            let err = update(&spec, json!({ "federation": bad })).unwrap_err();
            assert_eq!(err.code(), "invalid_field", "{bad}: {err}");
        }
        let typo = json!({"federation": {"providers": {}, "x": 1}});
        assert_eq!(update(&spec, typo).unwrap_err().code(), "unknown_field");
    }
}

//! How a node speaks to a pool's members.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The HTTP version a pool's members are spoken to in (`backend_protocol`).
/// Whatever the client spoke (HTTP/1.1, h2 over TLS, h2c), the request
/// reaches the members in this one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum BackendProtocol {
    /// HTTP/1.1, a request per kept-alive connection at a time.
    #[default]
    #[serde(rename = "http1", alias = "http/1.1", alias = "http1.1")]
    Http1,
    /// HTTP/2 over plain TCP with prior knowledge (RFC 9113 §3.3): one
    /// multiplexed connection per member per node thread.
    #[serde(rename = "h2c")]
    H2c,
}

impl BackendProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2c => "h2c",
        }
    }

    /// Stored specs leave the default out.
    pub fn is_default(&self) -> bool {
        *self == Self::Http1
    }
}

impl std::fmt::Display for BackendProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("invalid backend protocol {s:?}: expected http1 or h2c"))
    }
}

/// The protocol of one pool: its own, else the instance's.
pub fn resolve(own: Option<BackendProtocol>, instance: BackendProtocol) -> BackendProtocol {
    own.unwrap_or(instance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_clients_write_parse_and_others_are_refused() {
        for (text, want) in [
            ("h2c", BackendProtocol::H2c),
            ("http1", BackendProtocol::Http1),
            ("http/1.1", BackendProtocol::Http1),
        ] {
            assert_eq!(text.parse::<BackendProtocol>().unwrap(), want);
        }
        let err = "h2".parse::<BackendProtocol>().unwrap_err();
        assert!(err.contains("http1 or h2c"), "{err}");
        assert_eq!(
            serde_json::to_string(&BackendProtocol::H2c).unwrap(),
            "\"h2c\""
        );
    }

    #[test]
    fn a_pool_of_its_own_protocol_keeps_it() {
        use BackendProtocol::*;
        assert_eq!(resolve(None, H2c), H2c);
        assert_eq!(resolve(Some(Http1), H2c), Http1);
        assert_eq!(resolve(Some(H2c), Http1), H2c);
    }

    /// What a node gets: the default pool's and each named pool's
    /// protocol resolved, the more specific one winning.
    mod through_an_instance {
        use super::*;
        use crate::model::instance::{InstanceCreate, InstanceSpec, InstanceUpdate};
        use crate::model::policy::SecretHasher;
        use serde_json::json;

        struct Plain;
        impl SecretHasher for Plain {
            fn hash(&self, s: &str) -> String {
                s.to_string()
            }
        }

        fn create(v: serde_json::Value) -> InstanceSpec {
            serde_json::from_value::<InstanceCreate>(v)
                .unwrap()
                .validate(&Plain)
                .unwrap()
        }

        fn web(extra: serde_json::Value) -> serde_json::Value {
            let mut v = json!({"name": "web", "project": "demo", "traffic_type": "http",
                "port": 8080, "backend": {"entities": ["127.0.0.1:9001"]},
                "pools": {"api": {"entities": ["127.0.0.1:9002"]},
                          "old": {"entities": ["127.0.0.1:9003"], "backend_protocol": "http1"}}});
            for (k, val) in extra.as_object().unwrap() {
                v[k] = val.clone();
            }
            v
        }

        fn protocols(spec: &InstanceSpec) -> (BackendProtocol, Vec<Option<BackendProtocol>>) {
            let config = spec.node_config(1, "127.0.0.1".parse().unwrap());
            let pools = config.policy.pools.values().map(|p| p.backend_protocol);
            (config.tuning.backend_protocol, pools.collect())
        }

        #[test]
        fn the_instance_protocol_reaches_pools_that_name_none() {
            use BackendProtocol::*;
            let spec = create(web(json!({"backend_protocol": "h2c"})));
            assert_eq!(protocols(&spec), (H2c, vec![Some(H2c), Some(Http1)]));
            let plain = create(web(json!({})));
            assert_eq!(protocols(&plain), (Http1, vec![Some(Http1), Some(Http1)]));
        }

        #[test]
        fn the_default_pool_may_name_its_own() {
            let mut v = web(json!({"backend_protocol": "h2c"}));
            v["backend"]["backend_protocol"] = json!("http1");
            let spec = create(v);
            let (default, pools) = protocols(&spec);
            assert_eq!(default, BackendProtocol::Http1);
            assert_eq!(pools[0], Some(BackendProtocol::H2c), "api inherits h2c");
        }

        #[test]
        fn an_update_without_it_keeps_it_and_tcp_refuses_it() {
            let spec = create(web(json!({"backend_protocol": "h2c"})));
            let update: InstanceUpdate =
                serde_json::from_value(json!({"project": "demo", "name": "web", "port": 8081}))
                    .unwrap();
            let next = update.apply_to(&spec, &Plain).unwrap();
            assert_eq!(next.tuning.backend_protocol, BackendProtocol::H2c);

            let tcp = json!({"name": "raw", "project": "demo", "traffic_type": "tcp", "port": 9000,
                "backend": {"entities": ["127.0.0.1:9001"]}, "backend_protocol": "h2c"});
            let err = serde_json::from_value::<InstanceCreate>(tcp)
                .unwrap()
                .validate(&Plain)
                .unwrap_err();
            assert_eq!(err.code(), "invalid_field", "{err}");
        }
    }
}

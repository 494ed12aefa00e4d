//! Backend entities as clients write them (seed 003's `entities`): the
//! accepted forms, a refusal that names them, and host names (named
//! backends), which the nodes resolve.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::model::BackendEntity;

/// What an entity may be, for refusals (serde's untagged message named
/// neither the field nor the forms).
pub const ENTITY_FORMS: &str = "a backend entity in `entities`: \"IP\", \"IP:PORT\", \
    \"HOST:PORT\", \"http://HOST[:PORT]/\", {\"address\": \"...\", \"weight\": N}, \
    or the seed's one-element list of one of these, like [\"10.0.0.1:80\"]";

/// The object form, with its fields checked (a typo is `unknown_field`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityObject {
    address: String,
    #[serde(default)]
    weight: Option<i64>,
}

/// Reads one entity; `listed` is true inside the seed's one-element list,
/// where another list is refused.
struct EntityVisitor {
    listed: bool,
}

impl<'de> Visitor<'de> for EntityVisitor {
    type Value = BackendEntity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ENTITY_FORMS)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(BackendEntity::Text(s.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let o = EntityObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(BackendEntity::Object {
            address: o.address,
            weight: o.weight,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        if self.listed {
            return Err(de::Error::custom(format!(
                "a list inside a list is not {ENTITY_FORMS}"
            )));
        }
        let Some(first) = seq.next_element_seed(EntitySeed)? else {
            return Err(de::Error::custom(format!(
                "an empty list [] is not {ENTITY_FORMS}"
            )));
        };
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "a list entity holds exactly one entity (write [\"10.0.0.1:80\"], [\"10.0.0.2:80\"], \
                 not [\"10.0.0.1:80\", \"10.0.0.2:80\"]): {ENTITY_FORMS}"
            )));
        }
        Ok(first)
    }
}

/// The element of a one-element list.
struct EntitySeed;

impl<'de> de::DeserializeSeed<'de> for EntitySeed {
    type Value = BackendEntity;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(EntityVisitor { listed: true })
    }
}

impl<'de> Deserialize<'de> for BackendEntity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EntityVisitor { listed: false })
    }
}

// The schema of what `BackendEntity` reads (it writes only the first two forms).
/// One backend as a client may write it: `"10.1.0.5:80"`, `"10.1.0.5"` (the
/// listener port), `"http://10.1.0.5:80/"`, `"app.internal:8000"` (a host
/// name, resolved by the LB nodes), `{"address": "...", "weight": 2}`, or the
/// seed's one-element list of one of these.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum EntityForms {
    /// `IP`, `IP:PORT`, `[V6]:PORT`, `HOST:PORT` or `http://HOST[:PORT]/`.
    Text(String),
    Object {
        address: String,
        #[serde(default)]
        weight: Option<i64>,
    },
    /// The seed's shape: `["10.0.0.1:80"]`, the same as the entity alone.
    Listed([EntityOne; 1]),
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum EntityOne {
    Text(String),
    Object {
        address: String,
        #[serde(default)]
        weight: Option<i64>,
    },
}

impl JsonSchema for BackendEntity {
    fn schema_name() -> Cow<'static, str> {
        "BackendEntity".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        EntityForms::json_schema(generator)
    }
}

/// A host name and port, `app.internal:8000`: a backend the nodes resolve,
/// each A/AAAA answer a member. The name is lowercase, without a final dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// `host` checked as a DNS name (RFC 1123 labels); `port` not 0.
    pub fn new(host: &str, port: u16) -> Result<Self, &'static str> {
        if port == 0 {
            return Err("port 0 is not a valid backend port");
        }
        Ok(HostPort {
            host: host_name(host)?,
            port,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for HostPort {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s.rsplit_once(':').ok_or("expected HOST:PORT")?;
        let port = port.parse().map_err(|_| "the port must be 1-65535")?;
        HostPort::new(host, port)
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl JsonSchema for HostPort {
    fn schema_name() -> Cow<'static, str> {
        "HostPort".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        String::json_schema(generator)
    }
}

/// A host-name backend of the default pool, validated: what is stored and
/// what the nodes get, next to the address members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedMember {
    /// `HOST:PORT`.
    pub address: HostPort,
    /// The weight of each member the name resolves to.
    pub weight: u32,
}

/// What lbd refuses as a backend, for the nodes to apply to what a host
/// name resolves to (lbd checks IP entities itself; a name's addresses
/// are only known to the nodes, and change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameGuard {
    /// lbd's own bound listeners (API, DNS); a wildcard one stands for
    /// every address of the node's host on its port.
    #[schemars(with = "Vec<String>")]
    pub control_plane: Vec<std::net::SocketAddr>,
    /// The nodes' admin port, refused on any address.
    pub node_admin_port: u16,
    /// `--allow-backend-cidr`: addresses the operator allowed anyway.
    #[schemars(with = "Vec<String>")]
    pub allowed: Vec<ipnet::IpNet>,
    /// Where the instance's own nodes listen: an answer there is a loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_nodes: Option<OwnNodes>,
}

/// The project subnet and listener port of an instance's nodes. Any address
/// of the subnet may become a node's (a replacement, a scale-out), except
/// the gateway, which nodes never get (under netns it is the host, where
/// backends of the project live): lbd's check of IP entities, for names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnNodes {
    #[schemars(with = "String")]
    pub subnet: ipnet::Ipv4Net,
    pub port: u16,
}

impl OwnNodes {
    fn refusal(&self, addr: std::net::SocketAddr) -> Option<String> {
        let std::net::IpAddr::V4(v4) = addr.ip().to_canonical() else {
            return None;
        };
        let gateway = crate::model::allocator::gateway(&self.subnet);
        (addr.port() == self.port && self.subnet.contains(&v4) && v4 != gateway).then(|| {
            format!(
                "{addr} is inside the project subnet {}, where its nodes listen on port {} (a loop)",
                self.subnet, self.port
            )
        })
    }
}

impl NameGuard {
    /// Why `addr` may not be a member, if it may not; `is_local` tells
    /// which addresses are the host's own (what a wildcard listener takes).
    pub fn refusal(
        &self,
        addr: std::net::SocketAddr,
        is_local: impl Fn(std::net::IpAddr) -> bool,
    ) -> Option<String> {
        // A loop is refused even inside `--allow-backend-cidr`, as lbd does.
        if let Some(loop_) = self.own_nodes.as_ref().and_then(|o| o.refusal(addr)) {
            return Some(loop_);
        }
        let ip = addr.ip().to_canonical();
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        if addr.port() == self.node_admin_port {
            return Some(format!("{addr} is on the LB nodes' admin port"));
        }

        let on = |l: &std::net::SocketAddr| {
            l.port() == addr.port()
                && (l.ip().to_canonical() == ip || (l.ip().is_unspecified() && is_local(ip)))
        };
        self.control_plane
            .iter()
            .find(|l| on(l))
            .map(|l| format!("{addr} is lbd's own listener {l}"))
    }
}

/// Checks a DNS host name: 1 to 253 characters of labels of 1 to 63
/// letters, digits and inner `-`, the last one not all digits (so a
/// mistyped IP address is not taken for a name). Returns it lowercase.
fn host_name(host: &str) -> Result<String, &'static str> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.is_empty() || host.len() > 253 {
        return Err("a host name is 1 to 253 characters");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !host.split('.').all(label_ok) {
        return Err(
            "expected IP, IP:PORT, HOST:PORT or http://HOST[:PORT]/ (a host name is labels of \
             letters, digits and '-', separated by dots)",
        );
    }
    let last = host.rsplit('.').next().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a valid IP address, and a host name does not end in a number");
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entity(v: serde_json::Value) -> Result<BackendEntity, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn the_seed_one_element_list_is_the_entity_itself() {
        assert_eq!(
            entity(json!(["10.0.0.1:80"])).unwrap(),
            BackendEntity::Text("10.0.0.1:80".into())
        );
        assert_eq!(
            entity(json!([{"address": "10.0.0.1", "weight": 2}])).unwrap(),
            BackendEntity::Object {
                address: "10.0.0.1".into(),
                weight: Some(2)
            }
        );
        assert_eq!(
            entity(json!("http://app:8000")).unwrap(),
            BackendEntity::Text("http://app:8000".into())
        );
    }

    #[test]
    fn refusals_name_the_field_and_the_forms() {
        for (bad, says) in [
            (json!(5), "invalid type: integer `5`"),
            (json!(null), "invalid type: null"),
            (json!([]), "an empty list"),
            (json!(["a:1", "b:2"]), "exactly one entity"),
            (json!([["a:1"]]), "a list inside a list"),
            (json!(true), "invalid type: boolean"),
        ] {
            let err = entity(bad.clone()).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(err.contains("`entities`"), "{bad}: {err}");
            assert!(err.contains("HOST:PORT"), "{bad}: {err}");
            assert!(!err.contains("untagged"), "{bad}: {err}");
        }
        let err = entity(json!({"adress": "10.0.0.1"})).unwrap_err();
        assert!(err.starts_with("unknown field `adress`"), "{err}");
        let err = entity(json!({"weight": 1})).unwrap_err();
        assert!(err.starts_with("missing field `address`"), "{err}");
    }

    #[test]
    fn the_name_guard_refuses_the_control_plane_unless_allowed() {
        let mut g = NameGuard {
            control_plane: vec![
                "127.0.0.1:7070".parse().unwrap(),
                "0.0.0.0:5353".parse().unwrap(),
            ],
            node_admin_port: 9901,
            allowed: Vec::new(),
            own_nodes: None,
        };
        let local = |ip: std::net::IpAddr| ip.is_loopback();
        let r = |g: &NameGuard, a: &str| g.refusal(a.parse().unwrap(), local);
        assert!(r(&g, "127.0.0.1:7070")
            .unwrap()
            .contains("lbd's own listener"));
        assert!(r(&g, "[::ffff:127.0.0.1]:7070").is_some());
        assert!(r(&g, "127.9.9.9:5353").is_some(), "a wildcard listener");
        assert!(r(&g, "10.0.0.1:5353").is_none(), "not this host");
        assert!(r(&g, "10.0.0.1:9901").unwrap().contains("admin port"));
        assert!(r(&g, "127.0.0.2:7070").is_none());
        g.allowed = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(r(&g, "127.0.0.1:7070").is_none());
    }

    #[test]
    fn the_name_guard_refuses_the_instances_own_nodes_as_lbd_does() {
        let g = NameGuard {
            control_plane: Vec::new(),
            node_admin_port: 9901,
            // Allowed: a loop is refused all the same.
            allowed: vec!["127.0.0.0/8".parse().unwrap()],
            own_nodes: Some(OwnNodes {
                subnet: "127.214.3.0/24".parse().unwrap(),
                port: 8080,
            }),
        };
        let r = |a: &str| g.refusal(a.parse().unwrap(), |_| false);
        assert!(r("127.214.3.7:8080").unwrap().contains("a loop"));
        assert!(r("[::ffff:127.214.3.7]:8080").is_some());
        assert!(r("127.214.3.1:8080").is_none(), "the gateway is the host's");
        assert!(r("127.214.3.7:8081").is_none(), "another port");
        assert!(r("127.214.4.7:8080").is_none(), "another subnet");
    }

    #[test]
    fn host_ports() {
        let h: HostPort = "App.Internal.:8000".parse().unwrap();
        assert_eq!((h.host(), h.port()), ("app.internal", 8000));
        assert_eq!(h.to_string(), "app.internal:8000");
        assert_eq!(
            serde_json::to_value(&h).unwrap(),
            json!("app.internal:8000")
        );
        let back: HostPort = serde_json::from_value(json!("app.internal:8000")).unwrap();
        assert_eq!(back, h);
        "localhost:1".parse::<HostPort>().unwrap();
        for bad in [
            "app:0",
            "app:x",
            "app",
            "a_b:80",
            "-a:80",
            "a..b:80",
            "1.2.3.4.5:80",
            "10.0.0.300:80",
            ":80",
        ] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
        let long = format!("{}.x:1", "a".repeat(64));
        assert!(long.parse::<HostPort>().is_err());
    }
}

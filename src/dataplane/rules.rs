//! The rules stage of lb-node's request pipeline: the instance's routing
//! rules compiled once per config (regexes, header names), then matched in
//! order against each request's head; the first match wins.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, COOKIE};
use http::Method;
use ipnet::IpNet;
use regex::Regex;
use thiserror::Error;

use super::actions::Action;
use super::pools::NamedPools;
use crate::model::policy::rules::{HostMatch, Match, MAX_REGEX_LEN, REGEX_SIZE_LIMIT};
use crate::model::policy::Policy;

/// A stored policy that does not compile: lbd validated it, so this means a
/// controller and a node of different versions.
#[derive(Debug, Error)]
pub enum RuleError {
    #[error("rule {rule:?}: {reason}")]
    Invalid { rule: String, reason: String },
}

/// What the rules look at in a request.
pub struct RequestFacts<'a> {
    /// The `Host` header or the URI's authority, as sent.
    pub host: Option<&'a str>,
    /// The path without the query.
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
}

impl<'a> RequestFacts<'a> {
    /// The facts of a request head, borrowed from it (nothing is copied).
    pub fn of(head: &'a http::request::Parts, client_ip: IpAddr) -> RequestFacts<'a> {
        let host = head
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| head.uri.authority().map(|a| a.as_str()));
        RequestFacts {
            host,
            path: head.uri.path(),
            method: &head.method,
            headers: &head.headers,
            client_ip,
        }
    }
}

struct CompiledMatch {
    host: Option<HostMatch>,
    path_prefix: Option<String>,
    path_regex: Option<Regex>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
    cookies: Vec<(String, Option<String>)>,
    source_cidr: Vec<IpNet>,
}

/// A rule ready for the request path.
pub struct CompiledRule {
    pub name: String,
    matches: CompiledMatch,
    pub action: Action,
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_headers: Vec<HeaderName>,
    pub require_groups: Vec<String>,
}

/// The rules of a config, in order.
#[derive(Default)]
pub struct RuleTable {
    rules: Vec<CompiledRule>,
}

impl RuleTable {
    /// `pools`: the config's named pools, which `pool` actions resolve to.
    pub fn compile(policy: &Policy, pools: &NamedPools) -> Result<RuleTable, RuleError> {
        let rules = policy
            .rules
            .iter()
            .map(|r| {
                let invalid = |reason: String| RuleError::Invalid {
                    rule: r.rule.name.clone(),
                    reason,
                };
                let header = |n: &str| {
                    HeaderName::from_bytes(n.as_bytes()).map_err(|e| invalid(e.to_string()))
                };
                let value = |v: &str| HeaderValue::from_str(v).map_err(|e| invalid(e.to_string()));
                let edits = &r.rule.headers;
                Ok(CompiledRule {
                    name: r.rule.name.clone(),
                    matches: compile_match(&r.rule.matches).map_err(invalid)?,
                    action: Action::compile(
                        &r.rule.action,
                        r.rule.matches.path_prefix.as_deref(),
                        pools,
                    )
                    .map_err(invalid)?,
                    set_headers: edits
                        .set
                        .iter()
                        .map(|(n, v)| Ok((header(n)?, value(v)?)))
                        .collect::<Result<_, RuleError>>()?,
                    remove_headers: edits
                        .remove
                        .iter()
                        .map(|n| header(n))
                        .collect::<Result<_, _>>()?,
                    require_groups: r.rule.require_groups.clone(),
                })
            })
            .collect::<Result<_, RuleError>>()?;
        Ok(RuleTable { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule whose every condition holds, with its index in the
    /// policy's `rules` (which the auth stage takes).
    pub fn first_match(&self, facts: &RequestFacts<'_>) -> Option<(usize, &CompiledRule)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches.holds(facts))
    }
}

fn compile_match(m: &Match) -> Result<CompiledMatch, String> {
    let path_regex = m
        .path_regex
        .as_deref()
        .map(|re| {
            if re.len() > MAX_REGEX_LEN {
                return Err("path_regex too long".to_string());
            }
            regex::RegexBuilder::new(re)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| e.to_string())
        })
        .transpose()?;
    let methods = m
        .method
        .iter()
        .map(|s| Method::from_bytes(s.as_bytes()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let headers = m
        .header
        .iter()
        .map(|(n, v)| {
            let name = HeaderName::from_bytes(n.as_bytes()).map_err(|e| e.to_string())?;
            let value = v
                .as_deref()
                .map(HeaderValue::from_str)
                .transpose()
                .map_err(|e| e.to_string())?;
            Ok((name, value))
        })
        .collect::<Result<_, String>>()?;
    Ok(CompiledMatch {
        host: m.host.clone(),
        path_prefix: m.path_prefix.clone(),
        path_regex,
        methods,
        headers,
        cookies: m.cookie.clone(),
        source_cidr: m.source_cidr.clone(),
    })
}

impl CompiledMatch {
    fn holds(&self, f: &RequestFacts<'_>) -> bool {
        // Cheapest checks first: a rule usually fails on host or path.
        if let Some(host) = &self.host {
            if !f.host.is_some_and(|h| host.matches(h)) {
                return false;
            }
        }
        if let Some(prefix) = &self.path_prefix {
            if !f.path.starts_with(prefix.as_str()) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(f.method) {
            return false;
        }
        if !self.source_cidr.is_empty()
            && !self
                .source_cidr
                .iter()
                .any(|n| n.contains(&canonical(f.client_ip)))
        {
            return false;
        }
        let headers_hold = self.headers.iter().all(|(name, want)| match want {
            None => f.headers.contains_key(name),
            Some(v) => f.headers.get_all(name).iter().any(|got| got == v),
        });
        if !headers_hold {
            return false;
        }
        if !self
            .cookies
            .iter()
            .all(|(name, want)| cookie_matches(f.headers, name, want.as_deref()))
        {
            return false;
        }
        self.path_regex
            .as_ref()
            .is_none_or(|re| re.is_match(f.path))
    }
}

/// An IPv4 client seen through a dual-stack socket matches IPv4 CIDRs.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a `Cookie` header holds `name` (with `want`'s value, if given).
fn cookie_matches(headers: &HeaderMap, name: &str, want: Option<&str>) -> bool {
    cookie(headers, name).is_some_and(|got| want.is_none_or(|w| got == w))
}

/// The value of cookie `name`, from any `Cookie` header (RFC 6265 §5.4).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// `path_and_query` with `prefix` cut off; the result always starts with `/`.
pub fn strip_prefix(path_and_query: &str, prefix: &str) -> String {
    let rest = path_and_query
        .strip_prefix(prefix)
        .unwrap_or(path_and_query);
    if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::{PolicySpec, SecretHasher};
    use crate::model::TrafficType;

    struct NoHash;
    impl SecretHasher for NoHash {
        fn hash(&self, s: &str) -> String {
            s.to_string()
        }
    }

    fn table(rules: &str) -> RuleTable {
        let spec: PolicySpec = serde_json::from_str(&format!(
            r#"{{"pools":{{"api":{{"entities":["127.0.0.1:9"]}}}},"rules":{rules}}}"#
        ))
        .unwrap();
        let policy = spec.validate(TrafficType::Http, 80, &NoHash).unwrap();
        let pools = NamedPools::new(
            &policy,
            Default::default(),
            &Default::default(),
            &Default::default(),
        )
        .unwrap();
        RuleTable::compile(&policy, &pools).unwrap()
    }

    fn first<'t>(
        t: &'t RuleTable,
        host: &str,
        path: &str,
        method: Method,
        headers: &[(&str, &str)],
        ip: &str,
    ) -> Option<&'t str> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let facts = RequestFacts {
            host: Some(host),
            path,
            method: &method,
            headers: &map,
            client_ip: ip.parse().unwrap(),
        };
        t.first_match(&facts).map(|(_, r)| r.name.as_str())
    }

    #[test]
    fn the_first_matching_rule_wins_in_order() {
        let t = table(
            r#"[{"name":"api","match":{"host":"*.example.com","path_prefix":"/api/"},"action":{"pool":"api"}},
                {"name":"beta","match":{"header":{"X-Env":"beta"}},"action":{"reject":403}},
                {"name":"all","action":{"pool":"default"}}]"#,
        );
        assert_eq!(
            first(&t, "a.example.com", "/api/x", Method::GET, &[], "10.0.0.1"),
            Some("api")
        );
        assert_eq!(
            first(
                &t,
                "example.com",
                "/api/x",
                Method::GET,
                &[("x-env", "beta")],
                "10.0.0.1"
            ),
            Some("beta")
        );
        assert_eq!(
            first(
                &t,
                "a.example.com:8080",
                "/other",
                Method::GET,
                &[],
                "10.0.0.1"
            ),
            Some("all")
        );
    }

    #[test]
    fn every_condition_must_hold() {
        let t = table(
            r#"[{"name":"r","match":{"method":["POST"],"path_regex":"^/v[0-9]+/","source_cidr":["10.0.0.0/8"],
                 "cookie":{"session":"*"},"header":{"X-A":"1"}},"action":{"reject":403}}]"#,
        );
        let ok = [("x-a", "1"), ("cookie", "a=b; session=xyz")];
        assert_eq!(
            first(&t, "h", "/v2/x", Method::POST, &ok, "10.9.9.9"),
            Some("r")
        );
        assert_eq!(
            first(&t, "h", "/v2/x", Method::POST, &ok, "::ffff:10.9.9.9"),
            Some("r")
        );
        assert_eq!(first(&t, "h", "/v2/x", Method::GET, &ok, "10.9.9.9"), None);
        assert_eq!(first(&t, "h", "/vx/x", Method::POST, &ok, "10.9.9.9"), None);
        assert_eq!(
            first(&t, "h", "/v2/x", Method::POST, &ok, "192.168.0.1"),
            None
        );
        assert_eq!(
            first(
                &t,
                "h",
                "/v2/x",
                Method::POST,
                &[("x-a", "1"), ("cookie", "sess=1")],
                "10.9.9.9"
            ),
            None
        );
        assert_eq!(
            first(
                &t,
                "h",
                "/v2/x",
                Method::POST,
                &[("x-a", "2"), ("cookie", "session=1")],
                "10.9.9.9"
            ),
            None
        );
    }

    #[test]
    fn the_match_gives_its_index_and_resolved_action() {
        let t = table(
            r#"[{"name":"a","match":{"path_prefix":"/a/"},"action":{"reject":403}},
                {"name":"b","match":{"path_prefix":"/api/"},"action":{"pool":"api","strip_prefix":true}}]"#,
        );
        let head = http::Request::builder()
            .uri("/api/x")
            .header("host", "web")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let (index, rule) = t
            .first_match(&RequestFacts::of(&head, "127.0.0.1".parse().unwrap()))
            .unwrap();
        assert_eq!(index, 1);
        assert!(matches!(
            &rule.action,
            Action::Pool { pool: crate::dataplane::pools::PoolRef::Named(0), strip: Some(p) } if p == "/api/"
        ));
    }

    #[test]
    fn facts_take_the_host_from_the_authority_without_a_host_header() {
        let head = http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri("http://api.example.com/x?y=1")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let facts = RequestFacts::of(&head, "127.0.0.1".parse().unwrap());
        assert_eq!(facts.host, Some("api.example.com"));
        assert_eq!(facts.path, "/x");
    }

    #[test]
    fn strip_prefix_always_leaves_a_leading_slash() {
        assert_eq!(strip_prefix("/api/users?id=1", "/api/"), "/users?id=1");
        assert_eq!(strip_prefix("/api/", "/api/"), "/");
        assert_eq!(strip_prefix("/apix", "/api"), "/x");
        assert_eq!(strip_prefix("/api/users", "/api"), "/users");
    }

    #[test]
    fn cookies_are_read_from_every_cookie_header() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static("b=\"2\"; c=3"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(cookie(&h, "d"), None);
    }
}

//! Routing rules of an http instance, evaluated in order, first match wins:
//! what a rule matches on and what it does. Matching itself lives in
//! lb-node (`dataplane::rules`); here are the shapes and their validation.

use std::collections::BTreeMap;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::auth::RuleAuthSpec;
use super::{check_header_name, check_policy_name, PolicyError};

/// The longest `path_regex`, and the compiled size it may reach.
pub const MAX_REGEX_LEN: usize = 1024;
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The longest body of a `respond` action.
pub const MAX_RESPOND_BODY: usize = 64 * 1024;

/// `match` as a client writes it: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Exact (`api.example.com`) or a suffix (`*.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Vec<String>>,
    /// Exact values; `"*"` means present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<BTreeMap<String, String>>,
    /// Exact values; `"*"` means present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<BTreeMap<String, String>>,
    /// A CIDR, or a list of them: the client address is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_cidr: Option<OneOrMany>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `action` as a client writes it: exactly one of `pool`, `redirect`,
/// `reject`, `respond`, plus header edits toward the backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// With `pool` and a `path_prefix` match: the prefix is cut off (the
    /// path the pool sees always starts with `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<String>,
    /// The redirect's status: 301, 302 (default), 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// A status (400-599) answered without reaching a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<RespondSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_headers: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_headers: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_content_type() -> String {
    "text/plain; charset=utf-8".into()
}

/// One rule as a client writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: MatchSpec,
    pub action: Option<ActionSpec>,
    /// Overrides the instance's `auth`: `"none"` for a public path, or an
    /// auth object of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RuleAuthSpec>,
    /// The caller must be in every one of these groups (from the auth
    /// decision, never from the request), else 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_groups: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` holds `example.com` here: a host ending in `.example.com`.
    Suffix(String),
}

impl HostMatch {
    pub fn matches(&self, host: &str) -> bool {
        // Host comparison ignores case and a port.
        let host = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        match self {
            Self::Exact(h) => host.eq_ignore_ascii_case(h),
            Self::Suffix(s) => {
                host.len() > s.len() + 1
                    && host.as_bytes()[host.len() - s.len() - 1] == b'.'
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

/// What must match (header names lower case, methods upper case).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub method: Vec<String>,
    /// `None` as the value means "present".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header: Vec<(String, Option<String>)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookie: Vec<(String, Option<String>)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub source_cidr: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Pool {
        pool: String,
        strip_prefix: bool,
    },
    Redirect {
        location: String,
        code: u16,
    },
    Reject {
        status: u16,
    },
    Respond {
        status: u16,
        body: String,
        content_type: String,
    },
}

/// Header edits toward the backend (names lower case).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A validated rule. Its `auth` is resolved by [`super::Policy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: Match,
    pub action: RuleAction,
    #[serde(default)]
    pub headers: HeaderEdits,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_groups: Vec<String>,
}

impl RuleSpec {
    /// Validates what a rule says on its own; pool names are checked
    /// against the pools by the policy.
    pub fn validate(&self) -> Result<Rule, PolicyError> {
        check_policy_name("rule", &self.name)?;
        let action = self
            .action
            .as_ref()
            .ok_or_else(|| PolicyError::MissingRuleAction(self.name.clone()))?;
        let matches = self.matches.validate(&self.name)?;
        let rule_action = action.validate(&self.name)?;
        if let RuleAction::Pool {
            strip_prefix: true, ..
        } = rule_action
        {
            if matches.path_prefix.is_none() {
                return Err(PolicyError::InvalidRule {
                    rule: self.name.clone(),
                    reason: "strip_prefix needs a path_prefix match".into(),
                });
            }
        }
        let require_groups = self.require_groups.clone().unwrap_or_default();
        for g in &require_groups {
            check_policy_name("group", g)?;
        }
        Ok(Rule {
            name: self.name.clone(),
            matches,
            action: rule_action,
            headers: action.header_edits(&self.name)?,
            require_groups,
        })
    }
}

impl MatchSpec {
    fn validate(&self, rule: &str) -> Result<Match, PolicyError> {
        let invalid = |reason: String| PolicyError::InvalidRule {
            rule: rule.to_string(),
            reason,
        };
        let host = self
            .host
            .as_deref()
            .map(|h| parse_host(h).map_err(invalid))
            .transpose()?;
        if let Some(p) = &self.path_prefix {
            check_path(p)?;
        }
        if let Some(re) = &self.path_regex {
            check_regex(rule, re)?;
        }
        let pairs = |map: &Option<BTreeMap<String, String>>, header: bool| {
            map.iter()
                .flatten()
                .map(|(name, value)| {
                    check_header_name(name)?;
                    let name = if header {
                        name.to_ascii_lowercase()
                    } else {
                        name.clone()
                    };
                    Ok((name, (value != "*").then(|| value.clone())))
                })
                .collect::<Result<Vec<_>, PolicyError>>()
        };
        let source_cidr = match &self.source_cidr {
            None => Vec::new(),
            Some(OneOrMany::One(c)) => vec![parse_cidr(rule, c)?],
            Some(OneOrMany::Many(list)) => list
                .iter()
                .map(|c| parse_cidr(rule, c))
                .collect::<Result<_, _>>()?,
        };
        Ok(Match {
            host,
            path_prefix: self.path_prefix.clone(),
            path_regex: self.path_regex.clone(),
            method: methods(self.method.as_deref().unwrap_or_default())?,
            header: pairs(&self.header, true)?,
            cookie: pairs(&self.cookie, false)?,
            source_cidr,
        })
    }
}

impl ActionSpec {
    fn validate(&self, rule: &str) -> Result<RuleAction, PolicyError> {
        let invalid = |reason: &str| PolicyError::InvalidRule {
            rule: rule.to_string(),
            reason: reason.to_string(),
        };
        let given = [
            self.pool.is_some(),
            self.redirect.is_some(),
            self.reject.is_some(),
            self.respond.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => return Err(PolicyError::MissingRuleAction(rule.to_string())),
            1 => {}
            _ => {
                return Err(invalid(
                    "an action is exactly one of pool, redirect, reject, respond",
                ))
            }
        }
        if self.strip_prefix.is_some() && self.pool.is_none() {
            return Err(invalid("strip_prefix goes with pool"));
        }
        if self.code.is_some() && self.redirect.is_none() {
            return Err(invalid("code goes with redirect"));
        }
        if let Some(pool) = &self.pool {
            return Ok(RuleAction::Pool {
                pool: pool.clone(),
                strip_prefix: self.strip_prefix.unwrap_or(false),
            });
        }
        if let Some(location) = &self.redirect {
            let ok_target = location.starts_with("https://")
                || location.starts_with("http://")
                || location.starts_with('/');
            if !ok_target || location.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err(invalid(
                    "redirect must be an http(s) URL or a path starting with /",
                ));
            }
            let code = self.code.unwrap_or(302);
            if ![301, 302, 307, 308].contains(&code) {
                return Err(invalid("a redirect code is 301, 302, 307 or 308"));
            }
            return Ok(RuleAction::Redirect {
                location: location.clone(),
                code,
            });
        }
        if let Some(status) = self.reject {
            if !(400..=599).contains(&status) {
                return Err(invalid("reject takes a status from 400 to 599"));
            }
            return Ok(RuleAction::Reject { status });
        }
        let r = self.respond.as_ref().expect("one action is given");
        if !(200..=599).contains(&r.status) || (300..400).contains(&r.status) {
            return Err(invalid(
                "respond takes a status 200-299 or 400-599 (redirects use redirect)",
            ));
        }
        if r.body.len() > MAX_RESPOND_BODY {
            return Err(invalid("respond's body is at most 64 KiB"));
        }
        if r.content_type.bytes().any(|b| b.is_ascii_control()) || r.content_type.is_empty() {
            return Err(invalid("respond's content_type must be a header value"));
        }
        Ok(RuleAction::Respond {
            status: r.status,
            body: r.body.clone(),
            content_type: r.content_type.clone(),
        })
    }

    fn header_edits(&self, rule: &str) -> Result<HeaderEdits, PolicyError> {
        let mut set = Vec::new();
        for (name, value) in self.set_headers.iter().flatten() {
            check_header_name(name)?;
            if value
                .bytes()
                .any(|b| (b.is_ascii_control() && b != b'\t') || b == 0x7f)
            {
                return Err(PolicyError::InvalidRule {
                    rule: rule.to_string(),
                    reason: format!("set_headers {name}: a value may not hold control characters"),
                });
            }
            set.push((name.to_ascii_lowercase(), value.clone()));
        }
        let mut remove = Vec::new();
        for name in self.remove_headers.iter().flatten() {
            check_header_name(name)?;
            remove.push(name.to_ascii_lowercase());
        }
        Ok(HeaderEdits { set, remove })
    }
}

fn parse_host(h: &str) -> Result<HostMatch, String> {
    let (suffix, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h),
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(format!("host {h:?}: expected a host name or *.suffix"));
    }
    let name = name.to_ascii_lowercase();
    Ok(if suffix {
        HostMatch::Suffix(name)
    } else {
        HostMatch::Exact(name)
    })
}

fn parse_cidr(rule: &str, c: &str) -> Result<IpNet, PolicyError> {
    c.parse::<IpNet>()
        .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| PolicyError::InvalidRule {
            rule: rule.to_string(),
            reason: format!("source_cidr {c:?}: expected a CIDR such as 10.0.0.0/8"),
        })
}

pub(super) fn check_path(p: &str) -> Result<(), PolicyError> {
    if !p.starts_with('/')
        || p.bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'#' || b == b'?')
    {
        return Err(PolicyError::InvalidPath(p.to_string()));
    }
    Ok(())
}

fn check_regex(rule: &str, re: &str) -> Result<(), PolicyError> {
    let bad = |reason: String| PolicyError::InvalidRegex {
        rule: rule.to_string(),
        reason,
    };
    if re.len() > MAX_REGEX_LEN {
        return Err(bad(format!("longer than {MAX_REGEX_LEN} bytes")));
    }
    regex::RegexBuilder::new(re)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(drop)
        .map_err(|e| bad(e.to_string()))
}

/// Methods, upper-cased; each an HTTP token.
pub(super) fn methods(list: &[String]) -> Result<Vec<String>, PolicyError> {
    list.iter()
        .map(|m| {
            if m.is_empty() || !m.bytes().all(is_token_byte) {
                return Err(PolicyError::InvalidMethod(m.clone()));
            }
            Ok(m.to_ascii_uppercase())
        })
        .collect()
}

/// RFC 9110 `tchar`.
pub(super) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: &str) -> Result<Rule, PolicyError> {
        serde_json::from_str::<RuleSpec>(json).unwrap().validate()
    }

    #[test]
    fn a_rule_reads_every_match_and_normalises_names() {
        let r = rule(
            r#"{"name":"api","match":{"host":"*.Example.com","path_prefix":"/api/",
                "method":["get","POST"],"header":{"X-Env":"beta","X-Any":"*"},
                "source_cidr":"10.1.2.3/8"},
               "action":{"pool":"api","strip_prefix":true,"set_headers":{"X-A":"1"},"remove_headers":["Cookie"]}}"#,
        )
        .unwrap();
        assert_eq!(
            r.matches.host,
            Some(HostMatch::Suffix("example.com".into()))
        );
        assert_eq!(r.matches.method, ["GET", "POST"]);
        assert_eq!(
            r.matches.header,
            [
                ("x-any".into(), None),
                ("x-env".into(), Some("beta".into()))
            ]
        );
        assert_eq!(
            r.matches.source_cidr,
            ["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            r.action,
            RuleAction::Pool {
                pool: "api".into(),
                strip_prefix: true
            }
        );
        assert_eq!(r.headers.set, [("x-a".to_string(), "1".to_string())]);
        assert_eq!(r.headers.remove, ["cookie"]);
    }

    #[test]
    fn bad_rules_get_their_own_codes() {
        let code = |j: &str| rule(j).unwrap_err().code();
        assert_eq!(code(r#"{"name":"a","match":{}}"#), "missing_rule_action");
        assert_eq!(code(r#"{"name":"a","action":{}}"#), "missing_rule_action");
        assert_eq!(
            code(r#"{"name":"a","match":{"path_regex":"(unclosed"},"action":{"reject":403}}"#),
            "invalid_regex"
        );
        assert_eq!(
            code(r#"{"name":"a","action":{"reject":403,"pool":"x"}}"#),
            "invalid_rule"
        );
        assert_eq!(
            code(r#"{"name":"a","action":{"reject":200}}"#),
            "invalid_rule"
        );
        assert_eq!(
            code(r#"{"name":"a","action":{"redirect":"ftp://x","code":301}}"#),
            "invalid_rule"
        );
        assert_eq!(
            code(r#"{"name":"a","action":{"redirect":"https://x","code":303}}"#),
            "invalid_rule"
        );
        assert_eq!(
            code(r#"{"name":"a","action":{"pool":"p","strip_prefix":true}}"#),
            "invalid_rule"
        );
        assert_eq!(
            code(r#"{"name":"a","match":{"path_prefix":"api"},"action":{"reject":403}}"#),
            "invalid_path"
        );
        assert_eq!(
            code(r#"{"name":"a","match":{"method":["G T"]},"action":{"reject":403}}"#),
            "invalid_method"
        );
        assert_eq!(
            code(r#"{"name":"a b","action":{"reject":403}}"#),
            "invalid_name"
        );
    }

    #[test]
    fn a_huge_regex_is_refused_not_compiled_forever() {
        let re = r#"{"name":"a","match":{"path_regex":"(a{1000}){1000}"},"action":{"reject":403}}"#;
        assert_eq!(rule(re).unwrap_err().code(), "invalid_regex");
    }

    #[test]
    fn hosts_match_exactly_or_by_suffix_ignoring_case_and_port() {
        let exact = HostMatch::Exact("api.example.com".into());
        assert!(exact.matches("API.example.com:8080"));
        assert!(!exact.matches("xapi.example.com"));
        let suffix = HostMatch::Suffix("example.com".into());
        assert!(suffix.matches("a.b.example.com"));
        assert!(!suffix.matches("example.com"));
        assert!(!suffix.matches("badexample.com"));
        assert!(!suffix.matches("[::1]"));
    }
}

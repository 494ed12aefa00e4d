//! The L7 policy commands (`instance pool|rule|policy|apply`): each reads
//! the instance (`info`), changes the field it is about, and sends an
//! `update` carrying that whole field, so lbd validates the result as a
//! whole. Users and keys come back from `info` without secrets; lbd keeps
//! their stored hashes by name.

use std::collections::BTreeMap;

use lbaas::model::policy::auth::NoAuth;
use lbaas::model::policy::rules::{ActionSpec, MatchSpec, OneOrMany, RespondSpec};
use lbaas::model::policy::{PolicySpec, PoolSpec, RuleAuthSpec, RuleSpec};
use lbaas::model::{Action, InstanceInfo, InstanceUpdate, ObjectType};

use super::{entities, envelope, health_check, instance_info, wait_until_active, Answer, Typed};
use crate::args::{
    ApplyArgs, InstanceArgs, InstanceCmd, PolicyCmd, PoolAddArgs, PoolCmd, RuleAddArgs, RuleCmd,
    WaitArgs,
};
use crate::client::ApiClient;

/// What a policy edit cannot do, said before anything is sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("pool {0:?} exists already (remove it first)")]
    PoolExists(String),
    #[error("no pool {0:?}")]
    NoPool(String),
    #[error("rule {0:?} exists already")]
    RuleExists(String),
    #[error("no rule {0:?}")]
    NoRule(String),
    #[error("a rule cannot move before itself")]
    BeforeItself,
}

/// The instance's policy as `info` shows it, every part present, so it can
/// be printed and applied again.
pub fn policy_of(i: &InstanceInfo) -> PolicySpec {
    PolicySpec {
        pools: Some(i.pools.clone()),
        rules: Some(i.rules.clone()),
        auth: i.auth.clone(),
        rate_limits: Some(i.rate_limits.clone()),
    }
}

/// An update replacing all four policy fields with `policy`'s: a part
/// left out is removed (auth as `"none"`).
pub fn apply_update(target: &InstanceArgs, policy: PolicySpec) -> InstanceUpdate {
    InstanceUpdate {
        pools: Some(policy.pools.unwrap_or_default()),
        rules: Some(policy.rules.unwrap_or_default()),
        auth: Some(match policy.auth {
            Some(a) => RuleAuthSpec::Own(Box::new(a)),
            None => RuleAuthSpec::None(NoAuth::None),
        }),
        rate_limits: Some(policy.rate_limits.unwrap_or_default()),
        ..update_of(target)
    }
}

fn update_of(target: &InstanceArgs) -> InstanceUpdate {
    InstanceUpdate {
        project: target.project.clone(),
        name: target.instance.clone(),
        ..InstanceUpdate::default()
    }
}

pub fn add_pool(
    pools: &mut BTreeMap<String, PoolSpec>,
    name: &str,
    pool: PoolSpec,
) -> Result<(), EditError> {
    if pools.contains_key(name) {
        return Err(EditError::PoolExists(name.to_string()));
    }
    pools.insert(name.to_string(), pool);
    Ok(())
}

pub fn remove_pool(pools: &mut BTreeMap<String, PoolSpec>, name: &str) -> Result<(), EditError> {
    pools
        .remove(name)
        .map(drop)
        .ok_or_else(|| EditError::NoPool(name.to_string()))
}

fn position(rules: &[RuleSpec], name: &str) -> Result<usize, EditError> {
    rules
        .iter()
        .position(|r| r.name == name)
        .ok_or_else(|| EditError::NoRule(name.to_string()))
}

/// Inserts `rule` before the rule named `before`, or at the end.
pub fn add_rule(
    rules: &mut Vec<RuleSpec>,
    rule: RuleSpec,
    before: Option<&str>,
) -> Result<(), EditError> {
    if rules.iter().any(|r| r.name == rule.name) {
        return Err(EditError::RuleExists(rule.name));
    }
    let at = match before {
        Some(b) => position(rules, b)?,
        None => rules.len(),
    };
    rules.insert(at, rule);
    Ok(())
}

pub fn remove_rule(rules: &mut Vec<RuleSpec>, name: &str) -> Result<(), EditError> {
    let at = position(rules, name)?;
    rules.remove(at);
    Ok(())
}

/// Moves the rule `name` before the rule `before`, or to the end.
pub fn move_rule(
    rules: &mut Vec<RuleSpec>,
    name: &str,
    before: Option<&str>,
) -> Result<(), EditError> {
    if before == Some(name) {
        return Err(EditError::BeforeItself);
    }
    if let Some(b) = before {
        position(rules, b)?;
    }
    let rule = rules.remove(position(rules, name)?);
    add_rule(rules, rule, before)
}

pub fn pool_spec(args: &PoolAddArgs) -> PoolSpec {
    PoolSpec {
        entities: entities(&args.backends),
        health_check: health_check(&args.health),
        algorithm: args.algorithm,
        managed: None,
        sticky: args.sticky.spec(),
        backend_protocol: args.backend_protocol,
        backend_tls: args.backend_tls.spec(),
    }
}

/// The rule `rule add` describes; lbd checks it (one action, known pool).
pub fn rule_spec(a: &RuleAddArgs) -> RuleSpec {
    let map = |pairs: &[(String, String)]| {
        (!pairs.is_empty()).then(|| pairs.iter().cloned().collect::<BTreeMap<_, _>>())
    };
    let list = |v: &[String]| (!v.is_empty()).then(|| v.to_vec());
    RuleSpec {
        name: a.name.clone(),
        matches: MatchSpec {
            host: a.host.clone(),
            path_prefix: a.path_prefix.clone(),
            path_regex: a.path_regex.clone(),
            method: list(&a.method),
            header: map(&a.header),
            cookie: map(&a.cookie),
            source_cidr: list(&a.source_cidr).map(OneOrMany::Many),
        },
        action: Some(ActionSpec {
            pool: a.to.clone(),
            strip_prefix: a.strip_prefix.then_some(true),
            redirect: a.redirect.clone(),
            code: a.code,
            reject: a.reject,
            respond: a.respond_status.map(|status| RespondSpec {
                status,
                body: a.respond_body.clone().unwrap_or_default(),
                content_type: a
                    .respond_content_type
                    .clone()
                    .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
            }),
            set_headers: map(&a.set_header),
            remove_headers: list(&a.remove_header),
        }),
        auth: a.public.then_some(RuleAuthSpec::None(NoAuth::None)),
        require_groups: list(&a.require_groups),
    }
}

/// Runs a policy command; `None` for every other command.
pub fn run(client: &ApiClient, cmd: &InstanceCmd) -> Option<anyhow::Result<Answer>> {
    let answer = match cmd {
        InstanceCmd::Pool(PoolCmd::List { target })
        | InstanceCmd::Rule(RuleCmd::List { target })
        | InstanceCmd::Policy(PolicyCmd::Show { target }) => {
            read(client, target).map(|i| answer(&i))
        }
        InstanceCmd::Pool(PoolCmd::Add(a)) => edit(client, &a.target, &a.wait, |i| {
            let mut pools = i.pools.clone();
            add_pool(&mut pools, &a.name, pool_spec(a))?;
            Ok(pools_update(&a.target, pools))
        }),
        InstanceCmd::Pool(PoolCmd::Remove { name, target, wait }) => {
            edit(client, target, wait, |i| {
                let mut pools = i.pools.clone();
                remove_pool(&mut pools, name)?;
                Ok(pools_update(target, pools))
            })
        }
        InstanceCmd::Rule(RuleCmd::Add(a)) => edit(client, &a.target, &a.wait, |i| {
            let mut rules = i.rules.clone();
            add_rule(&mut rules, rule_spec(a), a.before.as_deref())?;
            Ok(rules_update(&a.target, rules))
        }),
        InstanceCmd::Rule(RuleCmd::Remove { name, target, wait }) => {
            edit(client, target, wait, |i| {
                let mut rules = i.rules.clone();
                remove_rule(&mut rules, name)?;
                Ok(rules_update(target, rules))
            })
        }
        InstanceCmd::Rule(RuleCmd::Move {
            name,
            before,
            last: _,
            target,
            wait,
        }) => edit(client, target, wait, |i| {
            let mut rules = i.rules.clone();
            move_rule(&mut rules, name, before.as_deref())?;
            Ok(rules_update(target, rules))
        }),
        InstanceCmd::Apply(a) => apply(client, a),
        _ => return None,
    };
    Some(answer)
}

fn pools_update(target: &InstanceArgs, pools: BTreeMap<String, PoolSpec>) -> InstanceUpdate {
    InstanceUpdate {
        pools: Some(pools),
        ..update_of(target)
    }
}

fn rules_update(target: &InstanceArgs, rules: Vec<RuleSpec>) -> InstanceUpdate {
    InstanceUpdate {
        rules: Some(rules),
        ..update_of(target)
    }
}

fn read(client: &ApiClient, target: &InstanceArgs) -> anyhow::Result<InstanceInfo> {
    let request = instance_info(&target.project, &target.instance);
    Ok(client.call::<InstanceInfo>(&request)?.value)
}

/// The policy as the answer: typed for tables, all four parts for `-o json`.
fn answer(i: &InstanceInfo) -> Answer {
    let policy = policy_of(i);
    Answer {
        raw: serde_json::to_value(&policy).expect("a policy always serializes"),
        typed: Typed::Policy(Box::new(policy)),
    }
}

/// info → `change` → update, then (unless --no-wait) until it serves.
fn edit(
    client: &ApiClient,
    target: &InstanceArgs,
    wait: &WaitArgs,
    change: impl FnOnce(&InstanceInfo) -> Result<InstanceUpdate, EditError>,
) -> anyhow::Result<Answer> {
    let current = read(client, target)?;
    send_update(client, wait, &change(&current)?)
}

fn send_update(
    client: &ApiClient,
    wait: &WaitArgs,
    update: &InstanceUpdate,
) -> anyhow::Result<Answer> {
    let request = envelope(Action::Update, ObjectType::Instance, update);
    let updated = client.call::<InstanceInfo>(&request)?.value;
    if wait.no_wait {
        return Ok(answer(&updated));
    }
    let done = wait_until_active(client, &updated, wait, |_| {})?;
    Ok(answer(&done.value))
}

fn apply(client: &ApiClient, a: &ApplyArgs) -> anyhow::Result<Answer> {
    let text = if a.file == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&a.file).map_err(|e| anyhow::anyhow!("reading {}: {e}", a.file))?
    };
    let policy: PolicySpec = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a policy (pools, rules, auth, rate_limits): {e}",
            a.file
        )
    })?;
    send_update(client, &a.wait, &apply_update(&a.target, policy))
}

/// `pool list`'s table.
pub fn pools_text(p: &PolicySpec) -> String {
    let rows: Vec<Vec<String>> = p
        .pools
        .iter()
        .flatten()
        .map(|(name, pool)| {
            let members: Vec<String> = pool
                .entities
                .iter()
                .map(|e| match e {
                    lbaas::model::BackendEntity::Text(t) => t.clone(),
                    lbaas::model::BackendEntity::Object { address, weight } => match weight {
                        Some(w) => format!("{address}={w}"),
                        None => address.clone(),
                    },
                })
                .collect();
            let algorithm = wire(&pool.algorithm.unwrap_or_default());
            vec![name.clone(), algorithm, members.join(",")]
        })
        .collect();
    if rows.is_empty() {
        return "no pools besides default (the backends)\n".into();
    }
    crate::output::table(&["POOL", "ALGORITHM", "MEMBERS"], &rows)
}

/// `rule list`'s table, in the order rules are tried.
pub fn rules_text(p: &PolicySpec) -> String {
    let rows: Vec<Vec<String>> = p
        .rules
        .iter()
        .flatten()
        .enumerate()
        .map(|(n, r)| {
            vec![
                (n + 1).to_string(),
                r.name.clone(),
                matches(&r.matches),
                action(r),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no rules: every request goes to the default pool\n".into();
    }
    crate::output::table(&["#", "RULE", "MATCH", "ACTION"], &rows)
}

/// `policy show`'s text: both tables, the auth mode and the limits.
pub fn policy_text(p: &PolicySpec) -> String {
    let mut out = format!("{}\n{}", pools_text(p), rules_text(p));
    match &p.auth {
        Some(a) => {
            let mode = a
                .mode
                .map_or("?".into(), |m| format!("{m:?}").to_lowercase());
            out.push_str(&format!("auth: {mode}\n"));
        }
        None => out.push_str("auth: none\n"),
    }
    for l in p.rate_limits.iter().flatten() {
        out.push_str(&format!(
            "rate limit {}: {} per {} s by {}\n",
            l.name, l.threshold, l.period, l.key
        ));
    }
    out
}

/// A model enum as the API spells it.
fn wire(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "-".into(),
    }
}

fn matches(m: &MatchSpec) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &m.host {
        parts.push(format!("host={h}"));
    }
    if let Some(p) = &m.path_prefix {
        parts.push(format!("prefix={p}"));
    }
    if let Some(r) = &m.path_regex {
        parts.push(format!("regex={r}"));
    }
    if let Some(list) = &m.method {
        parts.push(format!("method={}", list.join(",")));
    }
    for (k, v) in m.header.iter().flatten() {
        parts.push(format!("header {k}={v}"));
    }
    for (k, v) in m.cookie.iter().flatten() {
        parts.push(format!("cookie {k}={v}"));
    }
    match &m.source_cidr {
        Some(OneOrMany::One(c)) => parts.push(format!("from={c}")),
        Some(OneOrMany::Many(list)) => parts.push(format!("from={}", list.join(","))),
        None => {}
    }
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(" ")
    }
}

fn action(r: &RuleSpec) -> String {
    let Some(a) = &r.action else {
        return "-".into();
    };
    if let Some(pool) = &a.pool {
        let strip = if a.strip_prefix == Some(true) {
            " (strip prefix)"
        } else {
            ""
        };
        return format!("pool {pool}{strip}");
    }
    if let Some(url) = &a.redirect {
        return format!("redirect {} {url}", a.code.unwrap_or(302));
    }
    if let Some(status) = a.reject {
        return format!("reject {status}");
    }
    a.respond
        .as_ref()
        .map_or("-".into(), |r| format!("respond {}", r.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            matches: MatchSpec::default(),
            action: Some(ActionSpec {
                reject: Some(403),
                ..ActionSpec::default()
            }),
            auth: None,
            require_groups: None,
        }
    }

    fn names(rules: &[RuleSpec]) -> Vec<&str> {
        rules.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn rules_are_added_removed_and_moved_by_name() {
        let mut rules = vec![rule("a"), rule("b")];
        add_rule(&mut rules, rule("c"), Some("a")).unwrap();
        assert_eq!(names(&rules), ["c", "a", "b"]);
        assert_eq!(
            add_rule(&mut rules, rule("a"), None),
            Err(EditError::RuleExists("a".into()))
        );
        move_rule(&mut rules, "b", Some("c")).unwrap();
        assert_eq!(names(&rules), ["b", "c", "a"]);
        move_rule(&mut rules, "b", None).unwrap();
        assert_eq!(names(&rules), ["c", "a", "b"]);
        assert_eq!(
            move_rule(&mut rules, "a", Some("nope")),
            Err(EditError::NoRule("nope".into()))
        );
        assert_eq!(
            names(&rules),
            ["c", "a", "b"],
            "a failed move changes nothing"
        );
        assert_eq!(
            move_rule(&mut rules, "a", Some("a")),
            Err(EditError::BeforeItself)
        );
        remove_rule(&mut rules, "c").unwrap();
        assert_eq!(names(&rules), ["a", "b"]);
        assert_eq!(
            remove_rule(&mut rules, "c"),
            Err(EditError::NoRule("c".into()))
        );
    }

    #[test]
    fn pools_are_added_once_and_removed_by_name() {
        let mut pools = BTreeMap::new();
        let pool = PoolSpec {
            entities: vec![lbaas::model::BackendEntity::Text("10.0.0.1:80".into())],
            health_check: None,
            algorithm: None,
            managed: None,
            sticky: None,
            backend_protocol: None,
            backend_tls: None,
        };
        add_pool(&mut pools, "api", pool.clone()).unwrap();
        assert_eq!(
            add_pool(&mut pools, "api", pool),
            Err(EditError::PoolExists("api".into()))
        );
        remove_pool(&mut pools, "api").unwrap();
        assert_eq!(
            remove_pool(&mut pools, "api"),
            Err(EditError::NoPool("api".into()))
        );
    }

    #[test]
    fn apply_sends_all_four_fields_and_removes_what_the_file_leaves_out() {
        let target = InstanceArgs {
            instance: "web".into(),
            project: "demo".into(),
        };
        let u = apply_update(&target, PolicySpec::default());
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(v["pools"], serde_json::json!({}));
        assert_eq!(v["rules"], serde_json::json!([]));
        assert_eq!(v["auth"], "none");
        assert_eq!(v["rate_limits"], serde_json::json!([]));
        assert_eq!((u.project.as_str(), u.name.as_str()), ("demo", "web"));
    }
}

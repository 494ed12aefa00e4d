//! `lbctl user ...` and `lbctl whoami`: their requests, and how their
//! answers read as text. A token is printed only by [`token_notice`], on
//! create and rotate-token: lbd shows it that one time.

use std::path::Path;

use lbaas::model::{
    Action, Limit, ObjectType, QuotaSpec, RequestEnvelope, UserCreate, UserDelete, UserInfo,
    UserRef, UserUpdate, WhoAmI,
};

use super::{envelope, Shape};
use crate::args::{QuotaArgs, UserCmd};
use crate::output::{datetime, table};

/// The request of a `user` subcommand. Fields are spelled out, so a field
/// added to the model does not compile until a flag sets it.
pub fn request(cmd: &UserCmd) -> (RequestEnvelope, Shape) {
    use {Action as A, ObjectType::User as U};
    match cmd {
        UserCmd::Create { name, role, quota } => (
            envelope(
                A::Create,
                U,
                &UserCreate {
                    name: name.clone(),
                    role: *role,
                    quota: quota_spec(quota),
                },
            ),
            Shape::User,
        ),
        UserCmd::List => (envelope(A::Info, U, &UserRef { name: None }), Shape::Users),
        UserCmd::Info { name } => (
            envelope(
                A::Info,
                U,
                &UserRef {
                    name: Some(name.clone()),
                },
            ),
            Shape::User,
        ),
        UserCmd::Update { name, role, quota } => (
            envelope(
                A::Update,
                U,
                &UserUpdate {
                    name: name.clone(),
                    role: *role,
                    quota: quota_spec(quota),
                    rotate_token: false,
                },
            ),
            Shape::User,
        ),
        UserCmd::RotateToken { name } => (
            envelope(
                A::Update,
                U,
                &UserUpdate {
                    name: name.clone(),
                    role: None,
                    quota: None,
                    rotate_token: true,
                },
            ),
            Shape::User,
        ),
        // What lbd answers a delete with is not read: the name says it all.
        UserCmd::Delete { name } => (
            envelope(A::Delete, U, &UserDelete { name: name.clone() }),
            Shape::Done,
        ),
    }
}

/// `whoami`'s request.
pub fn whoami() -> (RequestEnvelope, Shape) {
    (
        RequestEnvelope {
            action: Action::Info,
            object_type: ObjectType::Whoami,
            info: serde_json::Value::Object(Default::default()),
        },
        Shape::WhoAmI,
    )
}

/// The quota flags given, or nothing (so an update without them keeps the quota).
fn quota_spec(q: &QuotaArgs) -> Option<QuotaSpec> {
    let QuotaArgs {
        max_projects,
        max_instances,
        max_nodes,
    } = q;
    let spec = QuotaSpec {
        max_projects: *max_projects,
        max_instances: *max_instances,
        max_nodes: *max_nodes,
    };
    (spec != QuotaSpec::default()).then_some(spec)
}

/// How tables show a limit; the one place that spells "unlimited" short.
pub fn limit_text(l: Limit) -> String {
    match l {
        Limit::Unlimited => "∞".into(),
        Limit::AtMost(n) => n.to_string(),
    }
}

/// `USED/LIMIT`, e.g. `1/5` or `3/∞`.
fn usage(used: u64, limit: Limit) -> String {
    format!("{used}/{}", limit_text(limit))
}

pub fn list(users: &[UserInfo]) -> String {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.role.to_string(),
                usage(u.usage.projects, u.quota.max_projects),
                usage(u.usage.instances, u.quota.max_instances),
                usage(u.usage.nodes, u.quota.max_nodes),
            ]
        })
        .collect();
    table(&["NAME", "ROLE", "PROJECTS", "INSTANCES", "NODES"], &rows)
}

/// One user as key/values; whether it has a token, never the token.
pub fn info(u: &UserInfo) -> String {
    let fields = [
        ("name", u.name.clone()),
        ("role", u.role.to_string()),
        ("projects", usage(u.usage.projects, u.quota.max_projects)),
        ("instances", usage(u.usage.instances, u.quota.max_instances)),
        ("nodes", usage(u.usage.nodes, u.quota.max_nodes)),
        ("created", datetime(u.created_at)),
        (
            "token",
            if u.has_token { "set" } else { "none" }.to_string(),
        ),
    ];
    fields
        .iter()
        .map(|(label, value)| format!("{:<10} {value}\n", format!("{label}:")))
        .collect()
}

pub fn whoami_text(w: &WhoAmI) -> String {
    format!("{} ({})\n", w.user, w.role)
}

/// A new token: the token alone on stdout's line (scripts capture it), and
/// on stderr how to keep it. The hint names the token, it does not repeat it.
pub struct TokenNotice {
    pub stdout: String,
    pub stderr: String,
}

pub fn token_notice(user: &str, token: &str, url: &str, config: &Path) -> TokenNotice {
    TokenNotice {
        stdout: format!("{token}\n"),
        stderr: format!(
            "the token of {user} is above; save it: it is not shown again. In {}:\n\
             [context.{user}]\nurl = \"{url}\"\ntoken = \"<the token above>\"\n\
             then use it with `lbctl --context {user} ...` or current = \"{user}\"\n",
            config.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alice() -> UserInfo {
        serde_json::from_value(json!({
            "name": "alice", "role": "member",
            "quota": {"max_projects": 5, "max_instances": -1, "max_nodes": 8},
            "usage": {"projects": 1, "instances": 3, "nodes": 4},
            "created_at": 86_400 * 366, "has_token": true, "token": "secret-token"
        }))
        .unwrap()
    }

    /// The envelope a command line sends, checked against lbd's own parser.
    fn env_of(args: &[&str]) -> serde_json::Value {
        use clap::Parser;
        let cli =
            crate::args::Cli::try_parse_from(std::iter::once("lbctl").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let envelope = crate::commands::request(&cli.command).unwrap().envelope;
        let body = serde_json::to_vec(&envelope).unwrap();
        let (_, parsed) = lbaas::model::envelope::ApiRequest::parse(&body);
        parsed.unwrap_or_else(|e| panic!("lbd refuses {args:?}: {e}"));
        serde_json::to_value(envelope).unwrap()
    }

    #[test]
    fn user_commands_send_the_models_requests() {
        assert_eq!(
            env_of(&["user", "create", "alice", "--max-projects", "2"]),
            json!({"action": "create", "type": "user",
                   "info": {"name": "alice", "quota": {"max_projects": 2}}})
        );
        assert_eq!(
            env_of(&["user", "create", "bob", "--role", "reader"])["info"],
            json!({"name": "bob", "role": "reader"})
        );
        assert_eq!(
            env_of(&["user", "list"]),
            json!({"action": "info", "type": "user", "info": {}})
        );
        assert_eq!(
            env_of(&["user", "info", "alice"])["info"],
            json!({"name": "alice"})
        );
        assert_eq!(
            env_of(&[
                "user",
                "update",
                "alice",
                "--max-nodes",
                "-1",
                "--role",
                "admin"
            ]),
            json!({"action": "update", "type": "user",
                   "info": {"name": "alice", "role": "admin", "quota": {"max_nodes": -1}}})
        );
        assert_eq!(
            env_of(&["user", "rotate-token", "alice"]),
            json!({"action": "update", "type": "user",
                   "info": {"name": "alice", "rotate_token": true}})
        );
        assert_eq!(
            env_of(&["user", "delete", "alice"]),
            json!({"action": "delete", "type": "user", "info": {"name": "alice"}})
        );
        assert_eq!(
            env_of(&["whoami"]),
            json!({"action": "info", "type": "whoami", "info": {}})
        );
        assert_eq!(
            env_of(&["audit", "--user", "alice", "--limit", "5"])["info"],
            json!({"user": "alice", "limit": 5})
        );
    }

    #[test]
    fn bad_values_are_usage_errors() {
        use clap::Parser;
        for bad in [
            &["user", "create", "a", "--role", "root"][..],
            &["user", "create", "a", "--max-projects", "-2"],
            &["user", "update", "a", "--max-nodes", "many"],
            &["audit", "--limit", "0"],
            &["audit", "--limit", "10001"],
            &["audit", "--minutes", "0"],
        ] {
            let err = crate::args::Cli::try_parse_from(
                std::iter::once("lbctl").chain(bad.iter().copied()),
            )
            .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn list_shows_usage_over_limits() {
        let text = list(&[alice()]);
        assert_eq!(
            text,
            "NAME   ROLE    PROJECTS  INSTANCES  NODES\nalice  member  1/5       3/∞        4/8\n"
        );
    }

    #[test]
    fn info_never_shows_the_token() {
        let text = info(&alice());
        assert!(!text.contains("secret-token"), "{text}");
        for line in [
            "name:      alice\n",
            "role:      member\n",
            "instances: 3/∞\n",
            "created:   1971-01-02T00:00:00Z\n",
            "token:     set\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn the_token_is_alone_on_stdout_and_the_hint_does_not_repeat_it() {
        let n = token_notice(
            "alice",
            "tok123",
            "http://127.0.0.1:7070",
            Path::new("/h/.config/lbaas/config.toml"),
        );
        assert_eq!(n.stdout, "tok123\n");
        assert!(!n.stderr.contains("tok123"), "{}", n.stderr);
        assert!(
            n.stderr
                .contains("[context.alice]\nurl = \"http://127.0.0.1:7070\"\n"),
            "{}",
            n.stderr
        );
        assert!(n.stderr.contains("not shown again"), "{}", n.stderr);
    }
}

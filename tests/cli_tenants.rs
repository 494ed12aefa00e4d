//! `lbctl` with tenants against a real lbd: users and their tokens,
//! contexts in the config file, what a member sees, token rotation, the
//! audit log and quotas.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{lbctl_bin, Lbd, TempDir};
use serde_json::Value;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `lbctl ARGS` with only the config file under `home` to go by (no
/// --url/--token, none from the environment).
fn lbctl_in(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(lbctl_bin());
    cmd.args(args)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("LBAAS_URL")
        .env_remove("LBAAS_TOKEN")
        .env_remove("LBAAS_CONTEXT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running lbctl")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// `lbctl user create NAME ARGS` as admin; returns the token it printed.
fn create_user(lbd: &Lbd, name: &str, args: &[&str]) -> String {
    let out = lbd.lbctl(&[&["user", "create", name][..], args].concat());
    let text = ok(out.clone(), "user create");
    // The token alone on stdout; the hint on stderr, without the token.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "only the token on stdout: {text:?}");
    let token = lines[0].trim().to_string();
    assert!(!token.is_empty() && !token.contains(' '), "{text:?}");
    let hint = stderr(&out);
    assert!(
        hint.contains("not shown again") && hint.contains(&format!("[context.{name}]")),
        "{hint}"
    );
    assert!(!hint.contains(&token), "the hint repeats the token: {hint}");
    token
}

/// A config file with a context per user, plus the top level as admin.
fn write_config(home: &TempDir, lbd: &Lbd, extra: &str, users: &[(&str, &str)]) {
    let mut text = format!(
        "url = \"{}\"\ntoken = \"{}\"\n{extra}\n",
        lbd.url(),
        lbd.token
    );
    for (name, token) in users {
        text.push_str(&format!(
            "[context.{name}]\nurl = \"{}\"\ntoken = \"{token}\"\n\n",
            lbd.url()
        ));
    }
    std::fs::create_dir_all(home.0.join("lbaas")).unwrap();
    std::fs::write(home.0.join("lbaas/config.toml"), text).unwrap();
}

#[test]
fn users_contexts_visibility_rotation_and_audit() {
    let lbd = Lbd::start();
    let alice = create_user(&lbd, "alice", &[]);
    let bob = create_user(&lbd, "bob", &["--role", "member"]);

    // The token is never shown again: not by info, not in its JSON.
    let info = lbd.lbctl_ok(&["user", "info", "alice"]);
    assert!(info.contains("member") && !info.contains(&alice), "{info}");
    let json: Value =
        serde_json::from_str(&lbd.lbctl_ok(&["-o", "json", "user", "info", "alice"])).unwrap();
    assert!(json.get("token").is_none(), "{json}");
    let list = lbd.lbctl_ok(&["user", "list"]);
    assert!(
        list.starts_with("NAME") && list.contains("alice") && list.contains("bob"),
        "{list}"
    );

    // Contexts: --context, LBAAS_CONTEXT, `current`; the top level without.
    let home = TempDir::new("lbctl-contexts");
    write_config(&home, &lbd, "", &[("alice", &alice), ("bob", &bob)]);
    let h = &home.0;
    let whoami = |args: &[&str], env: &[(&str, &str)]| {
        ok(lbctl_in(h, &[args, &["whoami"]].concat(), env), "whoami")
    };
    assert_eq!(whoami(&["--context", "alice"], &[]), "alice (member)\n");
    assert_eq!(whoami(&[], &[("LBAAS_CONTEXT", "bob")]), "bob (member)\n");
    assert!(
        whoami(&[], &[]).starts_with("admin ("),
        "the top level is admin"
    );
    let out = lbctl_in(h, &["--context", "carol", "whoami"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("carol") && stderr(&out).contains("alice, bob"),
        "{}",
        stderr(&out)
    );
    write_config(
        &home,
        &lbd,
        "current = \"alice\"",
        &[("alice", &alice), ("bob", &bob)],
    );
    assert_eq!(whoami(&[], &[]), "alice (member)\n");

    // What alice creates, bob does not see; admin does.
    ok(
        lbctl_in(h, &["project", "create", "ap"], &[]),
        "alice's project",
    );
    let bobs = ok(
        lbctl_in(h, &["--context", "bob", "project", "list"], &[]),
        "bob's list",
    );
    assert!(!bobs.contains("ap"), "bob sees alice's project:\n{bobs}");
    let all = lbd.lbctl_ok(&["project", "list"]);
    assert!(all.contains("ap"), "{all}");

    // The audit log has her create.
    let audit = lbd.lbctl_ok(&["audit", "--user", "alice", "--minutes", "10"]);
    let line = audit
        .lines()
        .find(|l| l.contains(" create ") && l.contains(" project ") && l.contains(" ap "))
        .unwrap_or_else(|| panic!("no create of ap in:\n{audit}"));
    assert!(line.contains("alice"), "{line}");
    let entries: Value = serde_json::from_str(
        &lbd.lbctl_ok(&["-o", "json", "audit", "--user", "alice", "--limit", "50"]),
    )
    .unwrap();
    let entries = entries.as_array().expect("a list");
    assert!(
        entries
            .iter()
            .all(|e| e["user"] == "alice" && !e.to_string().contains(&alice)),
        "{entries:?}"
    );

    // A new token: the old one stops working at once, the new one works.
    let out = lbd.lbctl(&["user", "rotate-token", "alice"]);
    let rotated = ok(out, "rotate-token").trim().to_string();
    assert!(!rotated.is_empty() && rotated != alice);
    let out = lbctl_in(h, &["whoami"], &[]);
    assert_eq!(out.status.code(), Some(1), "the old token still works");
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    let out = lbctl_in(h, &["--token", &rotated, "whoami"], &[]);
    assert_eq!(ok(out, "whoami with the new token"), "alice (member)\n");
}

#[test]
fn quotas_refuse_with_their_message() {
    let lbd = Lbd::start();
    let carol = create_user(&lbd, "carol", &["--max-projects", "1"]);
    let info = lbd.lbctl_ok(&["user", "info", "carol"]);
    assert!(info.contains("0/1"), "{info}");
    let run = |args: &[&str]| {
        Command::new(lbctl_bin())
            .args(["--url", &lbd.url(), "--token", &carol])
            .args(args)
            .output()
            .unwrap()
    };
    ok(run(&["project", "create", "c1"]), "carol's first project");
    let out = run(&["project", "create", "c2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("quota_exceeded"), "{}", stderr(&out));

    // -1 lifts the limit.
    lbd.lbctl_ok(&["user", "update", "carol", "--max-projects", "-1"]);
    ok(
        run(&["project", "create", "c2"]),
        "after the limit is lifted",
    );
    let list = lbd.lbctl_ok(&["user", "list"]);
    let row = list.lines().find(|l| l.starts_with("carol")).unwrap();
    assert!(row.contains("2/∞"), "{list}");

    // A member may not manage users.
    let out = run(&["user", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));

    // Deleting a user that owns projects is refused; without them it goes.
    let out = lbd.lbctl(&["user", "delete", "carol"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("user_owns_projects"),
        "{}",
        stderr(&out)
    );
    create_user(&lbd, "dave", &[]);
    assert_eq!(
        lbd.lbctl_ok(&["user", "delete", "dave"]),
        "user dave deleted\n"
    );
    let out = lbd.lbctl(&["user", "info", "dave"]);
    assert!(stderr(&out).contains("user_not_found"), "{}", stderr(&out));
}

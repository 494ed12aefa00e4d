//! `lbctl` against a real lbd: output formats, `raw`, and the exit codes
//! scripts rely on (0 ok, 1 API error, 2 usage, 3 cannot connect).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::backends::HttpBackend;
use common::{lbctl_bin, wait_for, Lbd};
use serde_json::Value;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn output_formats_and_exit_codes() {
    let lbd = Lbd::start();

    // -o json prints the API's info.
    let json: Value = serde_json::from_str(
        &lbd.lbctl_ok(&["-o", "json", "project", "create", "demo", "--user", "ann"]),
    )
    .unwrap();
    assert_eq!(
        (json["name"].as_str(), json["user"].as_str()),
        (Some("demo"), Some("ann"))
    );

    // Tables are aligned, with a header.
    let table = lbd.lbctl_ok(&["project", "list"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("SUBNET"),
        "{table}"
    );
    let row = lines.next().unwrap();
    assert_eq!(
        header.find("USER"),
        row.find("ann"),
        "columns align:\n{table}"
    );

    // An API error: exit 1 with the message and the code.
    let out = lbd.lbctl(&["project", "info", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("project_not_found"),
        "{}",
        stderr(&out)
    );

    // A wrong token is an API error too.
    let out = Command::new(lbctl_bin())
        .args(["--url", &lbd.url(), "--token", "wrong", "project", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unauthorized"));

    // Usage errors: exit 2.
    let out = lbd.lbctl(&["instance", "create", "web", "--project", "demo"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // Nothing listening: exit 3.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(lbctl_bin())
        .args([
            "--url",
            &format!("http://{closed}"),
            "--token",
            "x",
            "project",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach lbd"));

    // The token is found in the state dir when none is given.
    let out = Command::new(lbctl_bin())
        .args(["--url", &lbd.url(), "project", "list"])
        .env("LBAAS_STATE_DIR", &lbd.state.0)
        .env_remove("LBAAS_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn raw_sends_the_envelope_as_is() {
    let lbd = Lbd::start();
    let run = |input: &str| {
        let mut child = Command::new(lbctl_bin())
            .args(["--url", &lbd.url(), "--token", &lbd.token, "raw", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out =
        run(r#"{"action": "create", "type": "project", "info": {"name": "raw", "user": "john"}}"#);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], "successful");
    assert_eq!(answer["info"]["user"], "john");
    let out = run(r#"{"action": "create", "type": "project", "info": {"name": "raw"}}"#);
    assert_eq!(out.status.code(), Some(1));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["error"]["code"], "project_exists");
}

#[test]
fn create_waits_and_reports_failure_with_the_reason() {
    let a = HttpBackend::start("a");
    let lbd = Lbd::start();
    lbd.lbctl_ok(&["project", "create", "demo"]);

    // --no-wait answers at once, before the node serves.
    let out = lbd.lbctl_ok(&[
        "-o",
        "json",
        "instance",
        "create",
        "quick",
        "--project",
        "demo",
        "--type",
        "http",
        "--port",
        "8090",
        "--backend",
        &a.addr().to_string(),
        "--no-wait",
    ]);
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["provisioning_status"], "PENDING_CREATE");
    lbd.wait_active("demo", "quick");

    // A node that cannot bind: create waits, then fails with the reason (exit 1).
    let subnet: ipnet::Ipv4Net = lbd.instance("demo", "quick")["subnet"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let next_node = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 3);
    let _squatter = std::net::TcpListener::bind((next_node, 8091)).unwrap();
    let out = lbd.lbctl(&[
        "instance",
        "create",
        "web",
        "--project",
        "demo",
        "--type",
        "http",
        "--port",
        "8091",
        "--backend",
        &a.addr().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("8091"),
        "the reason names the bind: {}",
        stderr(&out)
    );

    // The failed instance is shown with its reason, and can be deleted.
    let info = lbd.lbctl_ok(&["instance", "info", "web", "--project", "demo"]);
    assert!(info.contains("ERROR") && info.contains("reason:"), "{info}");
    lbd.lbctl_ok(&["instance", "delete", "web", "--project", "demo"]);
    wait_for("failed instance deleted", Duration::from_secs(20), || {
        (lbd.lbctl(&["instance", "info", "web", "--project", "demo"])
            .status
            .code()
            == Some(1))
        .then_some(())
    });
}

#[test]
fn yaml_quiet_config_file_and_completions() {
    let lbd = Lbd::start();
    // --quiet: nothing on stdout, exit 0.
    let out = lbd.lbctl(&["-q", "project", "create", "quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // -o yaml: the same answer as JSON, as YAML.
    let yaml = lbd.lbctl_ok(&["-o", "yaml", "project", "info", "quiet"]);
    assert!(yaml.contains("name: quiet\n"), "{yaml}");
    assert!(yaml.contains("provisioning_status: "), "{yaml}");
    assert!(yaml.contains("instances: []\n"), "{yaml}");
    // Piped output has no colors.
    let table = lbd.lbctl_ok(&["project", "list"]);
    assert!(!table.contains('\x1b'), "{table:?}");

    // The config file gives url and token; the environment and flags win over it.
    let home = common::TempDir::new("lbctl-config");
    std::fs::create_dir_all(home.0.join("lbaas")).unwrap();
    std::fs::write(
        home.0.join("lbaas/config.toml"),
        format!("url = \"{}\"\ntoken = \"{}\"\n", lbd.url(), lbd.token),
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(lbctl_bin());
        cmd.args(args)
            .env("XDG_CONFIG_HOME", &home.0)
            .env_remove("LBAAS_URL")
            .env_remove("LBAAS_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&["project", "list"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("quiet"));
    let out = run(&["project", "list"], &[("LBAAS_TOKEN", "wrong")]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the environment wins: {}",
        stderr(&out)
    );
    let out = run(&["--token", "wrong", "project", "list"], &[]);
    assert_eq!(out.status.code(), Some(1), "the flag wins");
    std::fs::write(home.0.join("lbaas/config.toml"), "tokn = \"x\"\n").unwrap();
    let out = run(&["project", "list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("config.toml"), "{}", stderr(&out));

    // Completions for each shell.
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("lbctl") && script.contains("instance"),
            "{shell}"
        );
    }
    // top refuses without a terminal, clearly.
    let out = lbd.lbctl(&["top"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("needs a terminal"),
        "{}",
        stderr(&out)
    );
}

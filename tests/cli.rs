//! `lbctl` against a real lbd: output formats, `raw`, and the exit codes
//! scripts rely on (0 ok, 1 API error, 2 usage, 3 cannot connect).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::backends::HttpBackend;
use common::{lbctl_bin, wait_for, Lbd};
use serde_json::{json, Value};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn output_formats_and_exit_codes() {
    let lbd = Lbd::start();
    // A project's user must exist (tenants).
    lbd.add_user("ann", "member");

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
    lbd.add_user("john", "member");
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

/// `lbctl -o json instance info NAME --project demo`, parsed.
fn info_json(lbd: &Lbd, name: &str) -> Value {
    let out = lbd.lbctl_ok(&["-o", "json", "instance", "info", name, "--project", "demo"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn instance_create_stores_the_tuning_flags() {
    let a = HttpBackend::start("a");
    let b = HttpBackend::start("b");
    let lbd = Lbd::start();
    lbd.lbctl_ok(&["project", "create", "demo"]);
    let backends = format!("{},{}=3", a.addr(), b.addr());
    lbd.lbctl_ok(&[
        "instance",
        "create",
        "web",
        "--project",
        "demo",
        "--type",
        "http",
        "--port",
        "8093",
        "--backend",
        &backends,
        "--algorithm",
        "consistent_hash",
        "--hash-on",
        "header:X-User",
        "--connect-timeout-ms",
        "1500",
        "--first-byte-timeout-ms",
        "20000",
        "--client-idle-timeout-ms",
        "45000",
        "--backend-idle-timeout-ms",
        "25000",
        "--handshake-timeout-ms",
        "5000",
        "--max-connections",
        "500",
        "--max-header-bytes",
        "32768",
        "--expected-codes",
        "200-299",
        "--scale-out-after",
        "2",
        "--scale-in-after",
        "20",
        "--low-water-percent",
        "30",
    ]);
    let web = info_json(&lbd, "web");
    assert_eq!(web["hash_on"], "header:x-user", "{web}");
    assert_eq!(
        web["timeouts"],
        json!({"connect_ms": 1500, "first_byte_ms": 20000, "client_idle_ms": 45000,
               "backend_idle_ms": 25000, "handshake_ms": 5000})
    );
    assert_eq!(web["max_connections"], 500);
    assert_eq!(web["max_header_bytes"], 32768);
    assert_eq!(web["proxy_protocol"], "none");
    assert_eq!(
        web["backend"]["entities"],
        json!([{"address": a.addr().to_string(), "weight": 1}, {"address": b.addr().to_string(), "weight": 3}])
    );
    assert_eq!(web["backend"]["health-check"]["expected-codes"], "200-299");
    assert_eq!(
        (
            &web["scaling"]["scale_out_after"],
            &web["scaling"]["scale_in_after"],
            &web["scaling"]["low_water_percent"]
        ),
        (&json!(2), &json!(20), &json!(30))
    );
    // -o json prints the server's answer: what the API itself says.
    let api = lbd.instance("demo", "web");
    for key in [
        "id",
        "url",
        "hash_on",
        "timeouts",
        "max_connections",
        "backend",
        "scaling",
    ] {
        assert_eq!(web[key], api[key], "{key}");
    }

    lbd.lbctl_ok(&[
        "instance",
        "create",
        "db",
        "--project",
        "demo",
        "--type",
        "tcp",
        "--port",
        "8094",
        "--backend",
        &a.addr().to_string(),
        "--proxy-protocol",
        "v2",
    ]);
    assert_eq!(info_json(&lbd, "db")["proxy_protocol"], "v2");
}

#[test]
fn instance_update_changes_the_tuning_flags() {
    let a = HttpBackend::start("a");
    let b = HttpBackend::start("b");
    let lbd = Lbd::start();
    lbd.lbctl_ok(&["project", "create", "demo"]);
    let (a_addr, b_addr) = (a.addr().to_string(), b.addr().to_string());
    let create = |name: &str, kind: &str, port: &str| {
        lbd.lbctl_ok(&[
            "instance",
            "create",
            name,
            "--project",
            "demo",
            "--type",
            kind,
            "--port",
            port,
            "--backend",
            &a_addr,
        ]);
    };
    create("web", "http", "8095");
    create("db", "tcp", "8096");
    let before = info_json(&lbd, "web");
    assert_eq!(before["hash_on"], "client_ip");

    let backends = format!("{a_addr}=0,{b_addr}");
    lbd.lbctl_ok(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--backend",
        &backends,
        "--algorithm",
        "consistent_hash",
        "--hash-on",
        "header:X-Tenant",
        "--connect-timeout-ms",
        "900",
        "--first-byte-timeout-ms",
        "9000",
        "--client-idle-timeout-ms",
        "9500",
        "--backend-idle-timeout-ms",
        "8000",
        "--max-connections",
        "700",
    ]);
    let web = info_json(&lbd, "web");
    assert_eq!(web["hash_on"], "header:x-tenant", "{web}");
    assert_eq!(
        web["timeouts"],
        json!({"connect_ms": 900, "first_byte_ms": 9000, "client_idle_ms": 9500,
               "backend_idle_ms": 8000, "handshake_ms": 10000})
    );
    assert_eq!(web["max_connections"], 700);
    assert_eq!(
        web["backend"]["entities"],
        json!([{"address": a_addr, "weight": 0}, {"address": b_addr, "weight": 1}])
    );
    assert_eq!(web["port"], before["port"], "what was not given stays");

    // One timeout alone replaces only itself.
    lbd.lbctl_ok(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--connect-timeout-ms",
        "1200",
    ]);
    let web = info_json(&lbd, "web");
    assert_eq!(
        (
            &web["timeouts"]["connect_ms"],
            &web["timeouts"]["first_byte_ms"]
        ),
        (&json!(1200), &json!(9000))
    );
    assert_eq!(web["max_connections"], 700);

    for version in ["v1", "none"] {
        lbd.lbctl_ok(&[
            "instance",
            "update",
            "db",
            "--project",
            "demo",
            "--proxy-protocol",
            version,
        ]);
        assert_eq!(info_json(&lbd, "db")["proxy_protocol"], version);
    }
}

//! lbd's state files are its owner's alone: the state dir 0700 (also when it
//! already existed), `lbaas.db` and its WAL files 0600, and an admin token
//! that others can read is refused at start.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_for, Lbd, TempDir};
use serde_json::json;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_state_dir_and_database_files_are_private() {
    // The test helper creates the state dir before lbd starts (mode 0755).
    let lbd = Lbd::start();
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "p"}}));
    assert_eq!(s, 200, "{v}");
    let dir = &lbd.state.0;
    assert_eq!(mode(dir), 0o700, "state dir");
    assert_eq!(mode(&dir.join("admin.token")), 0o600);
    for name in ["lbaas.db", "lbaas.db-wal", "lbaas.db-shm"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
}

#[test]
fn an_admin_token_others_can_read_is_refused_at_start() {
    let dir = TempDir::new("token-mode");
    let token = dir.0.join("admin.token");
    std::fs::write(&token, "0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lbd"))
        .args(["--listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = wait_for("lbd to refuse to start", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    if !status.success() {
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(
            err.contains("admin.token") && err.contains("chmod 600"),
            "{err}"
        );
    } else {
        panic!("lbd (pid {pid}) started with a world-readable admin token");
    }
}

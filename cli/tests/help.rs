//! The built `lbctl` binary explains itself. (Also, this test makes
//! `cargo test --workspace` build the binary that the end-to-end tests in the
//! root `tests/` drive.)

use std::process::Command;

#[test]
fn help_lists_commands_examples_and_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "project",
        "instance",
        "raw",
        "Examples:",
        "Exit codes: 0 ok, 1",
        "3 cannot reach lbd",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["instance", "frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn instance_create_help_lists_the_tuning_flags_and_the_models_values() {
    let out = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["instance", "create", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--hash-on",
        "--connect-timeout-ms",
        "--max-connections",
        "--proxy-protocol",
        "consistent_hash",
        "none, v1, v2",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn user_help_lists_the_quota_flags_and_the_roles() {
    let out = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["user", "create", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--role",
        "--max-projects",
        "--max-instances",
        "--max-nodes",
        "-1: unlimited",
        "member",
        "reader",
        "--context",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

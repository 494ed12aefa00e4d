//! `lbctl instance mapping` against a stand-in for lbd (one canned answer
//! per run, on loopback): the envelope it sends, what it prints, its exit
//! codes, and that no token shows on stdout or stderr.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

/// Runs lbctl with `args` and `stdin` against a server that answers
/// `answer` once; returns its output and the body lbd would have got.
fn run(args: &[&str], stdin: &str, answer: Value) -> (Output, Option<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().ok()?;
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        let text = answer.to_string();
        let mut stream = reader.into_inner();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        )
        .ok()?;
        serde_json::from_slice::<Value>(&body).ok()
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["--url", &url, "--token", "API-TOKEN"])
        .args(args)
        .env_remove("LBAAS_CONTEXT")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // When lbctl sent nothing (a usage error), this lets the server go; it
    // answers no one then (once it has answered lbctl, nothing listens).
    drop(std::net::TcpStream::connect(
        url.trim_start_matches("http://"),
    ));
    (out, server.join().unwrap())
}

fn ok(info: Value) -> Value {
    json!({"status": "successful", "action": "create", "type": "mapping", "info": info})
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const WEB: &[&str] = &["--instance", "web", "--project", "demo"];

#[test]
fn add_token_reads_stdin_and_a_file_and_shows_neither() {
    let dir = std::env::temp_dir().join(format!("lbctl-mapping-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let remote = dir.join("remote.token");
    std::fs::write(&remote, "REMOTE-SECRET\n").unwrap();
    let args = [
        &["instance", "mapping", "add", "--kind", "token"][..],
        &[
            "--local-token-file",
            "-",
            "--local-project",
            "alice",
            "--provider",
            "sp1",
        ],
        &[
            "--remote-token-file",
            remote.to_str().unwrap(),
            "--remote-project",
            "sp1-alice",
        ],
        WEB,
    ]
    .concat();
    let (out, sent) = run(
        &args,
        "LOCAL-SECRET\n",
        ok(json!({"project": "demo", "instance": "web", "version": 4})),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        sent.unwrap(),
        json!({"action": "create", "type": "mapping", "info": {
            "project": "demo", "instance": "web", "kind": "token",
            "local_token": "LOCAL-SECRET", "local_project": "alice", "provider": "sp1",
            "remote_token": "REMOTE-SECRET", "remote_project": "sp1-alice"}})
    );
    assert_eq!(
        stdout,
        "added token mapping of project alice -> sp1 project sp1-alice (mappings version 4)\n"
    );
    assert!(!stdout.contains("SECRET") && !stderr.contains("SECRET"));
}

#[test]
fn list_prints_tables_and_json_as_lbd_sent_it() {
    let info = json!({"project": "demo", "instance": "web", "version": 9,
        "resources": [{"type": "volumes", "id": "v1", "provider": "sp2", "source": "injected",
                       "updated_at": "2026-12-01T10:00:00Z"}],
        "tokens": [{"local_token_sha256_prefix": "3f2a9c0d1e4b", "local_project": "alice",
                    "provider": "sp1", "remote_project": "sp1-alice"}]});
    let list = [&["instance", "mapping", "list"][..], WEB].concat();
    let (out, sent) = run(&list, "", ok(info.clone()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        sent.unwrap(),
        json!({"action": "info", "type": "mapping", "info": {"project": "demo", "instance": "web"}})
    );
    let stdout = text(&out.stdout);
    for needle in [
        "mappings of web (version 9)",
        "volumes  v1  sp2       injected",
        "sha256:3f2a9c0d1e4b  alice",
        "never",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
    let (out, _) = run(&[&list[..], &["-o", "json"]].concat(), "", ok(info.clone()));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), info);
}

#[test]
fn lbd_refusals_exit_1_and_usage_errors_exit_2_sending_nothing() {
    let refusal = json!({"status": "fail", "action": "create", "type": "mapping",
        "error": {"code": "unknown_provider", "message": "no provider sp9 in the federation"}});
    let add = [
        &[
            "instance", "mapping", "add", "--kind", "resource", "--type", "volumes",
        ][..],
        &["--id", "v1", "--provider", "sp9"],
        WEB,
    ]
    .concat();
    let (out, sent) = run(&add, "", refusal);
    assert_eq!(out.status.code(), Some(1));
    assert!(sent.is_some());
    assert_eq!(
        text(&out.stderr),
        "error: no provider sp9 in the federation (unknown_provider)\n"
    );
    let no_id = [
        &[
            "instance", "mapping", "add", "--kind", "resource", "--type", "volumes",
        ][..],
        &["--provider", "sp2"],
        WEB,
    ]
    .concat();
    let (out, sent) = run(&no_id, "", json!({}));
    assert_eq!(out.status.code(), Some(2));
    assert!(sent.is_none(), "a usage error sent {sent:?}");
    assert!(
        text(&out.stderr).starts_with("error: --kind resource needs --id\n"),
        "{}",
        text(&out.stderr)
    );
    let foreign = [&add[..], &["--remote-token", "REMOTE-SECRET"]].concat();
    let (out, sent) = run(&foreign, "", json!({}));
    assert_eq!(out.status.code(), Some(2));
    assert!(sent.is_none());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--remote-token does not apply to --kind resource"),
        "{stderr}"
    );
    assert!(!stderr.contains("SECRET"), "{stderr}");
}

#[test]
fn remove_prints_the_change_whatever_lbd_echoes() {
    let remove = [
        &["instance", "mapping", "remove", "--kind", "resource"][..],
        &["--type", "volumes", "--id", "v1"],
        WEB,
    ]
    .concat();
    let (out, sent) = run(&remove, "", ok(json!({})));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sent.unwrap()["action"], "delete");
    assert_eq!(text(&out.stdout), "removed resource mapping volumes/v1\n");
    let (out, _) = run(
        &[&remove[..], &["-q"]].concat(),
        "",
        ok(json!({"version": 3})),
    );
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "");
}

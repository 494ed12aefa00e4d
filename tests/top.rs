//! `lbctl top` in a real terminal: tmux runs it against a real lbd with an
//! instance; the test reads the screen, presses keys, and checks that the
//! terminal is restored after `q` and after SIGTERM.

mod common;

use std::process::Command;
use std::time::Duration;

use common::backends::HttpBackend;
use common::{lbctl_bin, require, signal, wait_for, Lbd};
use serde_json::{json, Value};

/// A detached tmux session, killed on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    /// `tmux` on this session's own server (socket named after the
    /// session): ending one session's server never races another's start.
    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.name]);
        c
    }

    fn start(name: &str, command: &str) -> Tmux {
        let status = Command::new("tmux")
            .args(["-L", name])
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "120",
                "-y",
                "32",
                command,
            ])
            .status()
            .unwrap();
        assert!(status.success());
        Tmux {
            name: name.to_string(),
        }
    }

    fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.tmux()
                .args(["send-keys", "-t", &self.name, k])
                .status()
                .unwrap();
        }
    }

    fn wait_screen(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        wait_for(what, Duration::from_secs(20), || {
            let s = self.screen();
            f(&s).then_some(s)
        })
    }

    /// The pid of the program the pane's shell runs (lbctl).
    fn program_pid(&self) -> u32 {
        let out = self
            .tmux()
            .args(["list-panes", "-t", &self.name, "-F", "#{pane_pid}"])
            .output()
            .unwrap();
        let shell: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default();
        children
            .split_whitespace()
            .next()
            .expect("the shell runs lbctl")
            .parse()
            .unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn top_shows_the_instance_drills_in_and_restores_the_terminal() {
    if !require("tmux (apt-get install tmux; .ci/run does)", have_tmux()) {
        return;
    }
    let a = HttpBackend::start("a");
    let lbd = Lbd::start();
    lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8087,
        "backend": {"entities": [a.addr().to_string()],
                    "health-check": {"criteria": {"interval": 1, "timeout": 1}}}}}));
    let info = lbd.wait_active("demo", "web");
    let node = info["nodes"][0]["address"].as_str().unwrap().to_string();
    let top = format!(
        "{} --url {} --token {} top --interval 0.5",
        lbctl_bin().display(),
        lbd.url(),
        lbd.token
    );
    // After lbctl: its exit code and whether the terminal is back in canonical mode.
    let script = format!(
        "{top}; echo EXITED $?; stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon'; echo DONE; sleep 120"
    );
    let name = format!("lbaas-top-{}-{}", std::process::id(), lbd.slot.index);
    let tmux = Tmux::start(&name, &script);

    // The events pane shows the instance becoming active (recorded just
    // after its status).
    let s = tmux.wait_screen("the instance listed, with its events", |s| {
        s.contains("connected")
            && s.contains("web")
            && s.contains("ACTIVE")
            && s.contains("instance_active")
    });
    assert!(s.contains("http://web.demo.lbaas.internal:8087"), "{s}");

    tmux.keys(&["Enter"]);
    let member = a.addr().to_string();
    tmux.wait_screen("the instance's nodes and members", |s| {
        s.contains(&node) && s.contains("MEMBER") && s.contains(&member)
    });

    tmux.keys(&["?"]);
    tmux.wait_screen("help", |s| s.contains("this help"));
    // One key at a time, each awaited on screen: an Esc followed at once
    // by another key reads as Alt+key in any terminal.
    tmux.keys(&["x"]);
    tmux.wait_screen("help closed", |s| !s.contains("this help"));
    tmux.keys(&["Escape"]);
    tmux.wait_screen("back to the list", |s| s.contains("instances (1)"));
    tmux.keys(&["/"]);
    tmux.wait_screen("editing the filter", |s| s.contains("filter: _"));
    tmux.keys(&["z", "z", "Enter"]);
    tmux.wait_screen("filtered to nothing", |s| s.contains("instances (0)"));
    tmux.keys(&["Escape"]);
    tmux.wait_screen("filter cleared", |s| s.contains("instances (1)"));

    tmux.keys(&["q"]);
    let s = tmux.wait_screen("lbctl exited", |s| s.contains("DONE"));
    assert!(s.contains("EXITED 0"), "{s}");
    assert!(
        !s.contains("instances ("),
        "the alternate screen is gone: {s}"
    );
    assert!(
        s.lines().any(|l| l.trim() == "icanon"),
        "the terminal is back in canonical mode: {s}"
    );
    drop(tmux);

    // SIGTERM restores the terminal too.
    let tmux = Tmux::start(&format!("{name}-term"), &script);
    tmux.wait_screen("running", |s| s.contains("instances (1)"));
    signal(tmux.program_pid(), libc::SIGTERM);
    let s = tmux.wait_screen("lbctl exited on SIGTERM", |s| s.contains("DONE"));
    assert!(s.contains("EXITED 0"), "{s}");
    assert!(s.lines().any(|l| l.trim() == "icanon"), "{s}");
}

#[test]
fn top_says_disconnected_and_recovers_when_lbd_comes_back() {
    if !require("tmux (apt-get install tmux; .ci/run does)", have_tmux()) {
        return;
    }
    let mut lbd = Lbd::start();
    lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    let script = format!(
        "{} --url {} --token {} top --interval 0.3; sleep 120",
        lbctl_bin().display(),
        lbd.url(),
        lbd.token
    );
    let name = format!("lbaas-top-dc-{}-{}", std::process::id(), lbd.slot.index);
    let tmux = Tmux::start(&name, &script);
    tmux.wait_screen("connected", |s| s.contains(" connected"));
    let api = lbd.api;
    lbd.stop();
    tmux.wait_screen("disconnected", |s| s.contains("disconnected, retrying"));
    // lbd comes back on the same address: the dashboard recovers by itself.
    lbd.start_again_on(api);
    tmux.wait_screen("connected again", |s| {
        s.contains(" connected") && !s.contains("disconnected")
    });
    // The terminal goes away (hang-up): lbctl exits instead of spinning on a dead tty.
    let pid = tmux.program_pid();
    drop(tmux);
    wait_for(
        "lbctl gone after the hang-up",
        Duration::from_secs(10),
        || {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| !s.contains("State:\tZ"));
            (!alive).then_some(())
        },
    );
}

#[test]
fn top_reads_keys_and_quits_while_lbd_does_not_answer() {
    if !have_tmux() {
        eprintln!("skipped: tmux is not installed");
        return;
    }
    // A listener that never accepts: the kernel completes the handshake and
    // the request waits for an answer that never comes (lbctl gives up after
    // 30 s, longer than any wait below).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let script = format!(
        "{} --url http://{} --token x top --interval 0.3; echo EXITED $?; sleep 120",
        lbctl_bin().display(),
        silent.local_addr().unwrap()
    );
    let tmux = Tmux::start(&format!("lbaas-top-silent-{}", std::process::id()), &script);
    tmux.wait_screen("the dashboard, waiting for its first answer", |s| {
        s.contains("connecting...")
    });
    tmux.keys(&["?"]);
    tmux.wait_screen("the help, while the fetch hangs", |s| {
        s.contains("this help")
    });
    tmux.keys(&["q"]);
    let s = tmux.wait_screen("lbctl exited, the fetch still hanging", |s| {
        s.contains("EXITED")
    });
    assert!(s.contains("EXITED 0"), "{s}");
}

#[test]
fn top_with_a_members_token_shows_only_what_it_may_see() {
    if !require("tmux (apt-get install tmux; .ci/run does)", have_tmux()) {
        return;
    }
    let lbd = Lbd::start();
    let alice = lbd.add_user("alice", "member");
    let instance = |project: &str, name: &str, port: u16| {
        json!({"action": "create", "type": "instance", "info": {
            "name": name, "project": project, "traffic_type": "http", "port": port,
            "backend": {"entities": ["127.0.0.1:9"]}}})
    };
    let as_alice = |body: Value| lbd.api_raw(serde_json::to_vec(&body).unwrap(), Some(&alice));
    let (s, v) =
        as_alice(json!({"action": "create", "type": "project", "info": {"name": "alices"}}));
    assert_eq!(s, 200, "{v}");
    let (s, v) = as_alice(instance("alices", "mine", 8091));
    assert_eq!(s, 200, "{v}");
    lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "admins"}}));
    let (s, v) = lbd.api(&instance("admins", "theirs", 8092));
    assert_eq!(s, 200, "{v}");
    let top = format!(
        "{} --url {} --token {alice} top --interval 0.5",
        lbctl_bin().display(),
        lbd.url(),
    );
    let name = format!("lbaas-top-member-{}-{}", std::process::id(), lbd.slot.index);
    let tmux = Tmux::start(&name, &format!("{top}; sleep 120"));
    let s = tmux.wait_screen("alice's instance listed", |s| {
        s.contains("connected") && s.contains("mine")
    });
    assert!(s.contains("instances (1)"), "{s}");
    assert!(!s.contains("theirs") && !s.contains("admins"), "{s}");
    tmux.keys(&["q"]);
}

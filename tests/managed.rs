//! Managed backends through a real lbd and its real lb-node: a python
//! backend lbd starts when the first request is held, stops when idle and
//! starts again; a command that exits 1 fails held requests fast; scale-up
//! under load; a long download keeps its backend; accounting matches the
//! process's real lifetime; kill -9 of lbd mid-start leaves one process.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::managed::{
    alive, backend_pids, backends, events_of, get, header, managed_instance, started_at, unix_now,
    Reaper, Script,
};
use common::{wait_for, Lbd};
use serde_json::{json, Value};

fn managed(script: &Script, extra: Value) -> Value {
    let mut m = json!({"compute": "process", "port": 8000, "min": 0, "max": 1,
                       "idle_timeout": 3, "start_timeout": 20,
                       "process": {"command": script.command()}});
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    m
}

fn pid_in(body: &str) -> u32 {
    body.trim()
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {body:?}"))
}

/// A cold request: held, then served with the cold-start header. Returns the backend's pid.
fn cold_request(lb: SocketAddr) -> u32 {
    let (status, headers, body) = get(lb, "/");
    assert_eq!(status, 200, "{headers:?} {body}");
    let cold: u64 = header(&headers, "x-lbaas-cold-start")
        .expect("X-Lbaas-Cold-Start on a held request")
        .parse()
        .unwrap();
    assert!(cold < 20_000, "cold start {cold} ms");
    pid_in(&body)
}

#[test]
fn a_held_request_wakes_the_backend_idle_stops_it_and_the_next_wakes_it_again() {
    let script = Script::write();
    let lbd = Lbd::start();
    let _reaper = Reaper::new(&lbd);
    let lb = managed_instance(&lbd, "web", managed(&script, json!({})));
    assert!(
        backend_pids(&lbd).is_empty(),
        "min 0: nothing runs before traffic"
    );

    let first = cold_request(lb);
    assert_eq!(backend_pids(&lbd), vec![first]);
    let born = started_at(first);
    let listed = backends(&lbd, "web");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "ready");
    assert_eq!(listed[0]["pid"], first);
    // A warm request is not held.
    let (status, headers, _) = get(lb, "/");
    assert_eq!(status, 200);
    assert!(header(&headers, "x-lbaas-cold-start").is_none());

    // Idle for 3 s: stopped, its process gone by PID.
    wait_for("the idle backend to stop", Duration::from_secs(30), || {
        (!alive(first)).then_some(())
    });
    let died = unix_now();
    wait_for("the backend row to go", Duration::from_secs(10), || {
        backends(&lbd, "web").is_empty().then_some(())
    });
    assert!(!events_of(&lbd, "web", "backend_stopped").is_empty());

    // Accounting: backend_seconds is the process's real lifetime (within 1 s).
    let (s, usage) =
        lbd.api(&json!({"action": "info", "type": "usage", "info": {"project": "demo"}}));
    assert_eq!(s, 200, "{usage}");
    let counted = usage["info"]["totals"]["backend_seconds"].as_f64().unwrap();
    let lived = died - born;
    assert!(
        (counted - lived).abs() < 1.0,
        "counted {counted} s, lived {lived} s: {usage}"
    );
    assert_eq!(usage["info"]["totals"]["starts"], 1, "{usage}");
    assert_eq!(usage["info"]["totals"]["cold_starts"], 1, "{usage}");

    let second = cold_request(lb);
    assert_ne!(second, first);
    assert_eq!(backend_pids(&lbd), vec![second]);
}

#[test]
fn fifty_concurrent_first_requests_are_served_by_exactly_one_start() {
    let script = Script::write();
    let lbd = Lbd::start();
    let _reaper = Reaper::new(&lbd);
    // Room for three: one start is lbd's answer to one demand, not a cap.
    let lb = managed_instance(
        &lbd,
        "burst",
        managed(&script, json!({"max": 3, "idle_timeout": 60})),
    );
    let clients: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || get(lb, "/")))
        .collect();
    let pids: Vec<u32> = clients
        .into_iter()
        .map(|c| {
            let (status, headers, body) = c.join().unwrap();
            assert_eq!(status, 200, "{headers:?} {body}");
            pid_in(&body)
        })
        .collect();
    assert!(
        pids.iter().all(|p| *p == pids[0]),
        "one backend served all: {pids:?}"
    );
    assert_eq!(
        backend_pids(&lbd),
        vec![pids[0]],
        "exactly one process started"
    );
    let (s, usage) =
        lbd.api(&json!({"action": "info", "type": "usage", "info": {"project": "demo"}}));
    assert_eq!(s, 200, "{usage}");
    assert_eq!(usage["info"]["totals"]["starts"], 1, "{usage}");
}

#[test]
fn a_backend_that_exits_fails_held_requests_at_once_with_its_output() {
    let lbd = Lbd::start();
    let _reaper = Reaper::new(&lbd);
    let failing = json!({"compute": "process", "port": 8000, "min": 0, "max": 1,
        "start_timeout": 20,
        "process": {"command": ["sh", "-c", "echo cannot open the model file >&2; sleep 0.5; exit 1"]}});
    let lb = managed_instance(&lbd, "broken", failing);
    let asked = Instant::now();
    let (status, headers, _) = get(lb, "/");
    let took = asked.elapsed();
    assert_eq!(status, 503, "{headers:?}\n{}", lbd.stderr());
    let why = header(&headers, "x-lbaas-wake-error").expect("X-Lbaas-Wake-Error");
    assert!(why.contains("exited with code 1"), "{why}");
    // The process lives 0.5 s; the answer comes within 1 s of its exit
    // (generous: well under the 30 s queue wait it would otherwise get).
    assert!(took < Duration::from_secs(5), "503 after {took:?}");
    let failed = wait_for("backend_start_failed", Duration::from_secs(10), || {
        events_of(&lbd, "broken", "backend_start_failed").pop()
    });
    assert!(failed.contains("cannot open the model file"), "{failed}");
    assert!(backend_pids(&lbd).is_empty());
}

#[test]
fn concurrent_load_scales_up_to_max() {
    let script = Script::write();
    let lbd = Lbd::start();
    let _reaper = Reaper::new(&lbd);
    let lb = managed_instance(
        &lbd,
        "busy",
        managed(
            &script,
            json!({"max": 2, "target_in_flight": 1, "idle_timeout": 30}),
        ),
    );
    cold_request(lb);
    let load: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || get(lb, "/sleep/3")))
        .collect();
    wait_for("a second backend", Duration::from_secs(20), || {
        (backend_pids(&lbd).len() == 2).then_some(())
    });
    for t in load {
        assert_eq!(t.join().unwrap().0, 200);
    }
    let listed = backends(&lbd, "busy");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|b| b["state"] == "ready"), "{listed:?}");
}

#[test]
fn an_open_download_keeps_its_backend_past_the_idle_timeout() {
    let script = Script::write();
    let lbd = Lbd::start();
    let _reaper = Reaper::new(&lbd);
    let lb = managed_instance(&lbd, "dl", managed(&script, json!({"idle_timeout": 5})));
    let pid = cold_request(lb);
    let download = std::thread::spawn(move || get(lb, "/slow/30"));
    // Well past idle_timeout with the download open: still running.
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        assert!(alive(pid), "the backend stopped under an open download");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _, body) = download.join().unwrap();
    assert_eq!((status, body.len()), (200, 30));
    wait_for(
        "the backend to stop once idle",
        Duration::from_secs(30),
        || (!alive(pid)).then_some(()),
    );
}

#[test]
fn kill_9_of_lbd_while_a_backend_starts_leaves_no_duplicate_or_orphan() {
    let script = Script::write();
    let mut lbd = Lbd::start();
    let _reaper = Reaper::new(&lbd);
    let m = managed(
        &script,
        json!({"idle_timeout": 60, "process": {"command": script.command(), "env": {"DELAY": "4"}}}),
    );
    let lb = managed_instance(&lbd, "crashy", m);
    let held = std::thread::spawn(move || get(lb, "/"));
    let pid = wait_for("the backend process", Duration::from_secs(10), || {
        backend_pids(&lbd).first().copied()
    });
    lbd.crash();
    lbd.start_again();
    let (status, _, body) = held.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        pid_in(&body),
        pid,
        "the process started before the crash serves"
    );
    assert_eq!(backend_pids(&lbd), vec![pid], "one backend, no duplicate");
    let listed = wait_for("the adopted backend ready", Duration::from_secs(10), || {
        let b = backends(&lbd, "crashy");
        (b.len() == 1 && b[0]["state"] == "ready").then_some(b)
    });
    assert_eq!(listed[0]["pid"], pid);
}

#[test]
fn a_changed_template_replaces_the_running_backend_without_a_failed_request() {
    let script = Script::write();
    // A replaced backend keeps its open requests for 1 s after its successor serves.
    let lbd = Lbd::start_with(&["--drain-timeout", "1"]);
    let _reaper = Reaper::new(&lbd);
    let template = |version: &str| {
        managed(
            &script,
            json!({"min": 1, "idle_timeout": 300,
                   "process": {"command": script.command(), "env": {"APP_VERSION": version}}}),
        )
    };
    let lb = managed_instance(&lbd, "web", template("v1"));
    let old = wait_for("min 1 to start a backend", Duration::from_secs(30), || {
        let (status, _, body) = get(lb, "/");
        (status == 200).then(|| pid_in(&body))
    });

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let (mut served, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get(lb, "/") {
                    (200, _, _) => served += 1,
                    (status, _, body) => failed.push(format!("{status} {body}")),
                }
            }
            (served, failed)
        }
    });
    let (s, v) = lbd.api(&json!({"action": "update", "type": "instance", "info": {
        "project": "demo", "name": "web", "backend": {"managed": template("v2")}}}));
    assert_eq!(s, 200, "{v}");
    let new = wait_for(
        "a backend on the new template",
        Duration::from_secs(30),
        || {
            let (status, _, body) = get(lb, "/");
            (status == 200 && pid_in(&body) != old).then(|| pid_in(&body))
        },
    );
    wait_for("the old backend to stop", Duration::from_secs(30), || {
        (!alive(old)).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failed) = load.join().unwrap();
    assert!(failed.is_empty(), "{failed:?} (served {served})");
    assert!(served > 0);
    assert_eq!(backend_pids(&lbd), vec![new], "one backend, the new one");
    // The event is written after the process is gone: wait for it.
    wait_for("the replaced event", Duration::from_secs(10), || {
        events_of(&lbd, "web", "backend_stopped")
            .iter()
            .any(|e| e.contains("replaced"))
            .then_some(())
    });
}

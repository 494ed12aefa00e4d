//! Crash safety: `kill -9 lbd` at random points of a burst of 50 mixed
//! creates, updates and deletes, then restart, and check that the real world
//! matches what was acknowledged: every surviving project and instance is
//! ACTIVE and serving, nothing deleted comes back, and no node process, DNS
//! record or namespace is left without a row. As root the projects are real
//! network namespaces (the netns driver); otherwise loopback.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::backends::{http_get, HttpBackend};
use common::{dig, is_root, require, wait_for, Lbd};
use serde_json::{json, Value};

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// What lbd acknowledged: projects and their instances; and what was deleted.
#[derive(Default, Debug)]
struct World {
    projects: BTreeMap<String, BTreeSet<String>>,
    deleted_instances: BTreeSet<(String, String)>,
    deleted_projects: BTreeSet<String>,
}

const PORT: u16 = 8080;

fn backend_for(lbd: &Lbd, project: &str, backend: &HttpBackend) -> String {
    if !lbd.netns() {
        return backend.addr().to_string();
    }
    // Inside a namespace the host is the project's gateway address.
    let (_, v) = lbd.api(&json!({"action": "info", "type": "project", "info": {"name": project}}));
    let subnet: ipnet::Ipv4Net = v["info"]["subnet"].as_str().unwrap().parse().unwrap();
    format!(
        "{}:{}",
        subnet.hosts().next().unwrap(),
        backend.addr().port()
    )
}

/// How the acknowledged world changes when an operation succeeds.
type Apply = Box<dyn Fn(&mut World)>;

fn next_op(rng: &mut Lcg, world: &World, n: usize) -> Option<(Value, Apply)> {
    let projects: Vec<String> = world.projects.keys().cloned().collect();
    let instances: Vec<(String, String)> = world
        .projects
        .iter()
        .flat_map(|(p, is)| is.iter().map(move |i| (p.clone(), i.clone())))
        .collect();
    let roll = rng.below(100);
    if projects.is_empty() || roll < 25 {
        let name = format!("p{n}");
        let req = json!({"action": "create", "type": "project", "info": {"name": name}});
        return Some((
            req,
            Box::new(move |w: &mut World| drop(w.projects.insert(name.clone(), BTreeSet::new()))),
        ));
    }
    if instances.is_empty() || roll < 60 {
        let project = projects[rng.below(projects.len() as u64) as usize].clone();
        let name = format!("i{n}");
        let req = json!({"action": "create", "type": "instance", "info": {
            "name": name, "project": project, "traffic_type": "http", "port": PORT,
            "backend": {"entities": ["BACKEND"]}}});
        return Some((
            req,
            Box::new(move |w: &mut World| {
                w.projects.get_mut(&project).unwrap().insert(name.clone());
            }),
        ));
    }
    let (project, instance) = instances[rng.below(instances.len() as u64) as usize].clone();
    if roll < 75 {
        let algorithm = ["round_robin", "least_connections", "power_of_two"][rng.below(3) as usize];
        let req = json!({"action": "update", "type": "instance",
            "info": {"project": project, "name": instance, "algorithm": algorithm}});
        return Some((req, Box::new(|_: &mut World| {})));
    }
    if roll < 92 {
        let req = json!({"action": "delete", "type": "instance",
            "info": {"project": project, "name": instance}});
        return Some((
            req,
            Box::new(move |w: &mut World| {
                w.projects.get_mut(&project).unwrap().remove(&instance);
                w.deleted_instances
                    .insert((project.clone(), instance.clone()));
            }),
        ));
    }
    let project = projects[rng.below(projects.len() as u64) as usize].clone();
    let req =
        json!({"action": "delete", "type": "project", "info": {"name": project, "force": true}});
    Some((
        req,
        Box::new(move |w: &mut World| {
            for i in w.projects.remove(&project).unwrap_or_default() {
                w.deleted_instances.insert((project.clone(), i));
            }
            w.deleted_projects.insert(project.clone());
        }),
    ))
}

/// What is wrong with the world lbd shows, compared to what it acknowledged;
/// empty once they match.
fn differences(lbd: &Lbd, world: &World) -> Vec<String> {
    let mut wrong = Vec::new();
    let (_, v) = lbd.api(&json!({"action": "info", "type": "project", "info": {}}));
    let listed = v["info"].as_array().cloned().unwrap_or_default();
    let names: BTreeSet<String> = listed
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = world.projects.keys().cloned().collect();
    if names != expected {
        wrong.push(format!("projects {names:?}, expected {expected:?}"));
    }
    let mut node_pids = BTreeSet::new();
    let mut project_ids = BTreeSet::new();
    for p in &listed {
        let pname = p["name"].as_str().unwrap();
        project_ids.insert(p["id"].as_i64().unwrap());
        if p["provisioning_status"] != "ACTIVE" {
            wrong.push(format!("project {pname} is {}", p["provisioning_status"]));
        }
        let got: BTreeSet<String> = p["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
        let want = world.projects.get(pname).cloned().unwrap_or_default();
        if got != want {
            wrong.push(format!(
                "project {pname}: instances {got:?}, expected {want:?}"
            ));
        }
        for i in p["instances"].as_array().unwrap() {
            let iname = i["name"].as_str().unwrap();
            if i["provisioning_status"] != "ACTIVE" {
                wrong.push(format!("{iname}.{pname} is {}", i["provisioning_status"]));
                continue;
            }
            let nodes = i["nodes"].as_array().unwrap();
            let mut addrs = Vec::new();
            for n in nodes {
                if let Some(pid) = n["pid"].as_u64() {
                    node_pids.insert(pid as u32);
                }
                let addr: SocketAddr = format!("{}:{PORT}", n["address"].as_str().unwrap())
                    .parse()
                    .unwrap();
                addrs.push(addr.ip().to_string());
                match http_get(addr, "/") {
                    Ok((200, _)) => {}
                    other => wrong.push(format!("{iname}.{pname} at {addr}: {other:?}")),
                }
            }
            let name = format!("{iname}.{pname}.lbaas.internal");
            let (mut answers, _) = dig(lbd.dns, &name, false);
            answers.sort();
            addrs.sort();
            if answers != addrs {
                wrong.push(format!("DNS {name}: {answers:?}, nodes {addrs:?}"));
            }
        }
    }
    for (p, i) in &world.deleted_instances {
        if world.projects.get(p).is_some_and(|is| is.contains(i)) {
            continue; // deleted, then created again under the same name
        }
        let name = format!("{i}.{p}.lbaas.internal");
        let (answers, status) = dig(lbd.dns, &name, false);
        if !answers.is_empty() || status != "NXDOMAIN" {
            wrong.push(format!(
                "deleted {name} still answers {answers:?} ({status})"
            ));
        }
    }
    let running: BTreeSet<u32> = lbd.node_processes().into_iter().collect();
    if running != node_pids {
        wrong.push(format!("node processes {running:?}, rows {node_pids:?}"));
    }
    if lbd.netns() {
        let prefix = format!("{}-", lbd.slot.netns_prefix());
        let namespaces: BTreeSet<i64> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix(&prefix)?
                    .parse()
                    .ok()
            })
            .collect();
        if namespaces != project_ids {
            wrong.push(format!(
                "namespaces {namespaces:?}, projects {project_ids:?}"
            ));
        }
    }
    wrong
}

#[test]
fn kill_9_in_a_burst_on_loopback_loses_nothing_and_leaves_no_orphan() {
    let backend = HttpBackend::start("b");
    crash_burst(Lbd::start(), &backend);
}

#[test]
fn kill_9_in_a_burst_with_namespaces_loses_nothing_and_leaves_no_orphan() {
    if !require("root (for the netns driver)", is_root()) {
        return;
    }
    // Reached from the namespaces at each project's gateway address.
    let backend = HttpBackend::start_on("0.0.0.0:0".parse().unwrap(), "b");
    crash_burst(Lbd::start_with(&["--network", "netns"]), &backend);
}

fn crash_burst(mut lbd: Lbd, backend: &HttpBackend) {
    let seed = std::env::var("LBAAS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_123);
    eprintln!("seed {seed} (set LBAAS_CRASH_SEED to replay)");
    let mut rng = Lcg(seed);
    let mut world = World::default();
    let mut crashes = 0;
    for n in 0..50 {
        let Some((mut req, apply)) = next_op(&mut rng, &world, n) else {
            continue;
        };
        if req["type"] == "instance" && req["action"] == "create" {
            let project = req["info"]["project"].as_str().unwrap().to_string();
            req["info"]["backend"]["entities"] = json!([backend_for(&lbd, &project, backend)]);
        }
        let (status, answer) = lbd.api(&req);
        match status {
            200 => apply(&mut world),
            // The object is being changed (e.g. its project is being deleted):
            // refused, nothing changed.
            409 => {}
            _ => panic!("{req} -> {status} {answer}"),
        }
        // Now and then, crash lbd while the reconciler is busy with the burst.
        if rng.below(5) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(40)));
            lbd.crash();
            crashes += 1;
            lbd.start_again();
            let started = std::time::Instant::now();
            let wrong = wait_for_world(&lbd, &world);
            eprintln!(
                "crash {crashes} after op {n}: converged in {:?}",
                started.elapsed()
            );
            assert!(
                wrong.is_empty(),
                "after crash {crashes} (op {n}): {wrong:#?}\nlbd: {}",
                lbd.stderr()
            );
        }
    }
    assert!(crashes >= 5, "the seed crashed lbd only {crashes} times");
    let wrong = wait_for_world(&lbd, &world);
    assert!(wrong.is_empty(), "at the end: {wrong:#?}");
    // Everything goes away with its rows.
    for p in world.projects.keys() {
        lbd.api(
            &json!({"action": "delete", "type": "project", "info": {"name": p, "force": true}}),
        );
    }
    wait_for("all deleted", Duration::from_secs(60), || {
        (lbd.node_pids().is_empty() && differences(&lbd, &World::default()).is_empty())
            .then_some(())
    });
}

/// Waits (with a deadline) until lbd's world matches; returns what still differs.
fn wait_for_world(lbd: &Lbd, world: &World) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let wrong = differences(lbd, world);
        if wrong.is_empty() || std::time::Instant::now() > deadline {
            return wrong;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

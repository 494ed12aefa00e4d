//! Test harness: a real `lbd` on free ports with its own state dir and its own
//! slice of 127/8, real backends on 127.0.0.1, and guards that clean up every
//! process and file they made, also when a test fails.
#![allow(dead_code)]

pub mod auth_service;
pub mod backends;
pub mod federation;
pub mod h2c;
pub mod l7;
pub mod managed;
pub mod node;
pub mod redis;
pub mod smtp;
pub mod tls;
pub mod tls_backend;
pub mod wake;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The first line a child prints: its readiness signal. Read on a thread (which
/// then drains the rest), so a hung child fails the test instead of hanging it.
pub fn ready_line(stdout: std::process::ChildStdout, timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    rx.recv_timeout(timeout).ok()
}

/// Waits until `f` returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A slice of 127/8 reserved for one test across processes (test binaries and
/// nextest run in parallel), held with a file lock until dropped.
pub struct TestSlot {
    pub index: u32,
    _lock: fs::File,
}

impl TestSlot {
    pub fn acquire() -> TestSlot {
        let dir = std::env::temp_dir().join("lbaas-test-slots");
        fs::create_dir_all(&dir).unwrap();
        for index in 0..150 {
            let file = fs::File::create(dir.join(format!("slot-{index}.lock"))).unwrap();
            if file.try_lock().is_ok() {
                return TestSlot { index, _lock: file };
            }
        }
        panic!("no free test slot");
    }

    /// The project subnet pool of this slot: 127.(100+index).0.0/16.
    pub fn pool(&self) -> String {
        format!("127.{}.0.0/16", 100 + self.index)
    }

    /// The pool for the netns driver: 100.(64+index).0.0/16, inside 100.64.0.0/10.
    pub fn netns_pool(&self) -> String {
        format!("100.{}.0.0/16", 64 + self.index % 64)
    }

    /// Namespace and interface names of this slot start with this.
    pub fn netns_prefix(&self) -> String {
        format!("t{}", self.index)
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("lbaas-test-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_lbd"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `lbctl` binary, built by `cargo test --workspace` (or `cargo build -p lbctl`).
pub fn lbctl_bin() -> PathBuf {
    let path = bin_dir().join("lbctl");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// A running `lbd`. Dropping it stops lbd and every LB node it started, and
/// removes its state dir.
pub struct Lbd {
    child: Option<Child>,
    pub api: SocketAddr,
    pub dns: SocketAddr,
    pub token: String,
    pub state: TempDir,
    pub slot: TestSlot,
    pub http: reqwest::blocking::Client,
    /// Flags added to every start (e.g. short failover windows).
    extra_args: Vec<String>,
    /// Environment added to every start. Unless it names one, each lbd
    /// gets its own subnet lock dir in its state dir, so tests stay apart
    /// (their pools do too) and leave nothing in /run.
    envs: Vec<(String, String)>,
    /// The API address to bind instead of a free port.
    listen: Option<SocketAddr>,
    /// libvirt: the VMs' secret disks (`--vm-secret-dir`), so tests leave
    /// nothing in /run.
    pub vm_secrets: Option<TempDir>,
}

impl Lbd {
    pub fn start() -> Lbd {
        Lbd::start_with(&[])
    }

    /// Starts lbd with extra flags, kept for restarts.
    pub fn start_with(extra_args: &[&str]) -> Lbd {
        Lbd::start_with_env(extra_args, &[])
    }

    /// Starts lbd with extra flags and environment variables, kept for
    /// restarts. A `--subnet-pool` among the flags replaces the slot's pool
    /// (e.g. to make two lbds share one on purpose).
    pub fn start_with_env(extra_args: &[&str], envs: &[(&str, &str)]) -> Lbd {
        let mut lbd = Lbd {
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            listen: None,
            vm_secrets: None,
            child: None,
            api: "0.0.0.0:0".parse().unwrap(),
            dns: "0.0.0.0:0".parse().unwrap(),
            token: String::new(),
            state: TempDir::new("lbd"),
            slot: TestSlot::acquire(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        if lbd.libvirt() {
            lbd.vm_secrets = Some(TempDir::new("vm-secrets"));
        }
        lbd.spawn();
        lbd
    }

    /// Starts the lbd process on this state dir and waits for its ready line.
    fn spawn(&mut self) {
        let network_args = if self.netns() {
            vec![
                "--subnet-pool".to_string(),
                self.slot.netns_pool(),
                "--netns-prefix".to_string(),
                self.slot.netns_prefix(),
            ]
        } else if self.extra_args.iter().any(|a| a == "--subnet-pool") {
            Vec::new()
        } else {
            vec!["--subnet-pool".to_string(), self.slot.pool()]
        };
        let mut network_args = network_args;
        if self.libvirt() {
            network_args.extend(["--vm-prefix".to_string(), self.slot.netns_prefix()]);
            if let Some(dir) = &self.vm_secrets {
                network_args.extend([
                    "--vm-secret-dir".to_string(),
                    dir.0.to_string_lossy().into_owned(),
                ]);
            }
        }
        let listen = self
            .listen
            .map_or("127.0.0.1:0".to_string(), |a| a.to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_lbd"))
            .args([
                "--listen",
                &listen,
                "--dns-listen",
                "127.0.0.1:0",
                "--subnet-prefix",
                "24",
            ])
            .args(&network_args)
            .arg("--state-dir")
            .arg(&self.state.0)
            .args(&self.extra_args)
            .env("RUST_LOG", "info,hickory_server=warn")
            .env("LBAAS_SUBNET_LOCK_DIR", self.state.0.join("subnet-locks"))
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.state.0.join("lbd.stderr"))
                    .unwrap(),
            )
            .spawn()
            .expect("starting lbd");
        let stdout = child.stdout.take().unwrap();
        self.child = Some(child);
        let line = ready_line(stdout, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("lbd did not become ready; stderr:\n{}", self.stderr()));
        let field = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in ready line {line:?}"))
                .parse()
                .unwrap()
        };
        self.api = field("api=");
        self.dns = field("dns=");
        self.token = fs::read_to_string(self.state.0.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
    }

    /// Whether this lbd runs its nodes as libvirt VMs.
    pub fn libvirt(&self) -> bool {
        self.extra_args
            .windows(2)
            .any(|w| w[0] == "--compute" && w[1] == "libvirt")
    }

    /// Names of this lbd's libvirt domains (running or defined).
    pub fn domains(&self) -> Vec<String> {
        let out = Command::new("virsh")
            .args(["-c", "qemu:///system", "list", "--all", "--name"])
            .output();
        let prefix = format!("{}-", self.slot.netns_prefix());
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with(&prefix))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
    }

    /// Whether this lbd runs the netns network driver.
    pub fn netns(&self) -> bool {
        self.extra_args
            .windows(2)
            .any(|w| w[0] == "--network" && w[1] == "netns")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.state.0.join("lbd.stderr")).unwrap_or_default()
    }

    /// Sends an envelope; returns the HTTP status and the answer.
    pub fn api(&self, body: &Value) -> (u16, Value) {
        self.api_raw(serde_json::to_vec(body).unwrap(), Some(&self.token))
    }

    pub fn api_raw(&self, body: Vec<u8>, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(format!("{}/api", self.url())).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().expect("API request");
        let status = resp.status().as_u16();
        (status, resp.json().expect("API answers JSON"))
    }

    /// Runs `lbctl` against this daemon.
    pub fn lbctl(&self, args: &[&str]) -> Output {
        Command::new(lbctl_bin())
            .args(["--url", &self.url(), "--token", &self.token])
            .args(args)
            .output()
            .expect("running lbctl")
    }

    /// Runs `lbctl` and panics with its output unless it succeeds.
    pub fn lbctl_ok(&self, args: &[&str]) -> String {
        let out = self.lbctl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "lbctl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}\nlbd: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.stderr()
        );
        stdout
    }

    /// Creates a user (as admin); returns its token.
    pub fn add_user(&self, name: &str, role: &str) -> String {
        let (status, v) = self.api(&serde_json::json!({"action": "create", "type": "user",
            "info": {"name": name, "role": role}}));
        assert_eq!(status, 200, "{v}");
        v["info"]["token"]
            .as_str()
            .expect("a new user's token")
            .to_string()
    }

    pub fn instance(&self, project: &str, name: &str) -> Value {
        let (status, v) = self.api(&serde_json::json!({"action": "info", "type": "instance", "info": {"project": project, "name": name}}));
        assert_eq!(status, 200, "{v}");
        v["info"].clone()
    }

    /// The instance as `info` shows it, without what the controller observes
    /// on its own (status, nodes, samples, events): what a refused request
    /// must leave exactly as it was.
    pub fn desired_instance(&self, project: &str, name: &str) -> Value {
        desired_part(self.instance(project, name))
    }

    /// Waits until the instance is ACTIVE and every node runs.
    pub fn wait_active(&self, project: &str, name: &str) -> Value {
        wait_for(
            &format!("{name}.{project} ACTIVE"),
            Duration::from_secs(30),
            || {
                let info = self.instance(project, name);
                assert_ne!(
                    info["provisioning_status"],
                    "ERROR",
                    "instance failed: {info}\nlbd: {}",
                    self.stderr()
                );
                (info["provisioning_status"] == "ACTIVE").then_some(info)
            },
        )
    }

    /// Stops lbd with SIGTERM and waits (killing it after 10 s); LB nodes
    /// keep running. Returns how lbd exited, if it was running.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Kills lbd with SIGKILL (a crash); LB nodes keep running.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops lbd (SIGTERM) and starts it again on the same state dir and slice of 127/8.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.is_some_and(|s| s.success()),
            "lbd did not exit cleanly on SIGTERM: {status:?}"
        );
        self.spawn();
    }

    /// Starts lbd again, its API on `api` (e.g. the address it had before).
    pub fn start_again_on(&mut self, api: SocketAddr) {
        self.listen = Some(api);
        self.start_again();
    }

    /// Starts lbd again after [`Lbd::crash`] or [`Lbd::stop`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "lbd is still running");
        self.spawn();
    }

    /// PIDs of every running lb-node whose pid file is in this daemon's
    /// state dir, found by scanning /proc: it also finds a node whose pid
    /// file was lost or overwritten.
    pub fn node_processes(&self) -> Vec<u32> {
        let dir = self.state.0.join("nodes");
        let dir = dir.to_string_lossy();
        let mut pids = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let ours = args.first().is_some_and(|a| a.ends_with("lb-node"))
                && args
                    .windows(2)
                    .any(|w| w[0] == "--pid-file" && w[1].starts_with(dir.as_ref()));
            if ours {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids
    }

    /// PIDs of the LB node processes of this daemon, from their pid files.
    pub fn node_pids(&self) -> Vec<u32> {
        let Ok(entries) = fs::read_dir(self.state.0.join("nodes")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let path = e.ok()?.path();
                if path.extension()? != "pid" {
                    return None;
                }
                let pid: u32 = fs::read_to_string(&path).ok()?.trim().parse().ok()?;
                is_lb_node(pid).then_some(pid)
            })
            .collect()
    }
}

/// Whether `pid` is a live lb-node process (not a recycled pid).
pub fn is_lb_node(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .next()
                .is_some_and(|a| a.ends_with(b"lb-node"))
        })
        .unwrap_or(false)
}

#[allow(unsafe_code)]
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

impl Drop for Lbd {
    fn drop(&mut self) {
        self.stop();
        for pid in self.node_pids().into_iter().chain(self.node_processes()) {
            signal(pid, libc::SIGKILL);
        }
        if self.libvirt() {
            for domain in self.domains() {
                let _ = Command::new("virsh")
                    .args(["-c", "qemu:///system", "destroy", &domain])
                    .output();
                let _ = Command::new("virsh")
                    .args(["-c", "qemu:///system", "undefine", &domain])
                    .output();
            }
        }
        if self.netns() {
            remove_netns_leftovers(&self.slot);
        }
    }
}

/// Removes what a netns lbd of this slot made, whether or not it cleaned up:
/// namespaces `t<slot>-*`, host veths `t<slot>h*`, the pool's unreachable route.
pub fn remove_netns_leftovers(slot: &TestSlot) {
    let prefix = slot.netns_prefix();
    for ns in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = ns.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{prefix}-")) {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
    for link in fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = link.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{prefix}h")) {
            let _ = Command::new("ip").args(["link", "del", &name]).status();
        }
    }
    let _ = Command::new("ip")
        .args(["route", "del", "unreachable", &slot.netns_pool()])
        .status();
}

/// Whether this is a CI run (`CI=true`, which `.ci/run` sets), where every
/// requirement of every test is installed.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A test's requirement: true when `present`. When it is missing the test
/// fails under CI, so a broken setup cannot pass as skips; elsewhere it
/// prints `skipped: <what>` and the caller returns.
#[track_caller]
pub fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    assert!(
        !under_ci(),
        "missing requirement under CI (CI=true): {what}"
    );
    eprintln!("skipped: needs {what}");
    false
}

/// Whether the tests run as root (netns tests need it).
/// A directory of the build's `target/` (VM images live there).
pub fn target_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name)
}

/// Root, a libvirtd that answers, and the LB-node image: what every VM test
/// needs; each missing one is reported by `require`.
pub fn vm_prerequisites_present() -> bool {
    let libvirtd = || {
        Command::new("virsh")
            .args(["-c", "qemu:///system", "list"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    require("root (VMs attach to the netns driver's bridges)", is_root())
        && require("a running libvirtd (virtlogd -d; libvirtd -d)", libvirtd())
        && require(
            "the node image (run scripts/build-image.sh)",
            target_dir("image").join("initramfs.cpio.gz").exists(),
        )
}

pub fn is_root() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) has no preconditions.
    unsafe {
        libc::geteuid() == 0
    }
}

/// Runs `dig` against lbd's DNS server; returns the A records and the status.
pub fn dig(dns: SocketAddr, name: &str, tcp: bool) -> (Vec<String>, String) {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", dns.ip())).args([
        "-p",
        &dns.port().to_string(),
        name,
        "A",
        "+tries=1",
        "+time=2",
    ]);
    if tcp {
        cmd.arg("+tcp");
    }
    let out = cmd.output().expect("running dig (install bind9-dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_string();
    let mut answers: Vec<String> = text
        .split(";; ANSWER SECTION:")
        .nth(1)
        .map(|sec| {
            // The first line is the rest of the section header line.
            sec.lines()
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .filter_map(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    (cols.len() == 5 && cols[3] == "A").then(|| cols[4].to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    answers.sort();
    (answers, status)
}

/// Fields of an instance's `info` that move without any request: health,
/// samples and status transitions (which also stamp `updated_at`).
pub const OBSERVED_INSTANCE_FIELDS: [&str; 8] = [
    "operating_status",
    "nodes",
    "events",
    "samples",
    "desired_nodes",
    "updated_at",
    "provisioning_status",
    "status_reason",
];

/// `instance` without its observed fields.
pub fn desired_part(mut instance: Value) -> Value {
    if let Some(fields) = instance.as_object_mut() {
        for key in OBSERVED_INSTANCE_FIELDS {
            fields.remove(key);
        }
    }
    instance
}

//! A real `lb-node` process for data plane tests, killed on drop, and the
//! config documents it takes.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A running lb-node, killed on drop.
pub struct LbNode {
    child: Child,
    pub admin: SocketAddr,
    pub secret: String,
    pub http: reqwest::blocking::Client,
}

impl LbNode {
    pub fn start() -> LbNode {
        LbNode::start_with(&[])
    }

    /// Starts lb-node with extra flags.
    pub fn start_with(extra_args: &[&str]) -> LbNode {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb-node"));
        cmd.args(["--node-id", "7", "--admin-listen", "127.0.0.1:0"])
            .args(extra_args);
        LbNode::spawn(cmd)
    }

    /// An lb-node started under `ulimit <flag> <n>` (`-Sn`: the soft
    /// `RLIMIT_NOFILE` only; `-n`: soft and hard), through
    /// `sh -c 'ulimit ...; exec lb-node'`: the child keeps the shell's PID.
    pub fn start_with_nofile(flag: &str, n: u64) -> LbNode {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!("ulimit {flag} {n} && exec \"$0\" --node-id 7 --admin-listen 127.0.0.1:0"),
            env!("CARGO_BIN_EXE_lb-node"),
        ]);
        LbNode::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> LbNode {
        let secret = "s3cret-for-tests".to_string();
        let mut child = cmd
            .env("LB_NODE_SECRET", &secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = super::ready_line(stdout, Duration::from_secs(20)).expect("lb-node ready line");
        let admin = line
            .strip_prefix("lb-node ready admin=")
            .expect(&line)
            .parse()
            .unwrap();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        LbNode {
            child,
            admin,
            secret,
            http,
        }
    }

    /// Sends SIGTERM and waits for the process to exit; its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        super::signal(self.child.id(), libc::SIGTERM);
        self.child.wait().unwrap()
    }

    pub fn put_config(&self, config: &Value) -> (u16, Value) {
        let resp = self
            .http
            .put(format!("http://{}/config", self.admin))
            .bearer_auth(&self.secret)
            .json(config)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json().unwrap())
    }

    pub fn status(&self) -> Value {
        let resp = self
            .http
            .get(format!("http://{}/status", self.admin))
            .bearer_auth(&self.secret)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().unwrap()
    }
}

impl Drop for LbNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address with a port nothing listens on, for a listener a
/// process under test will bind later.
///
/// The port comes from below the kernel's ephemeral range: a port the kernel
/// hands out for `bind(:0)` is also one it hands to outgoing connections, so
/// a test opening thousands of client sockets in parallel could take it
/// between this check and the node's bind. A process-wide counter keeps two
/// callers from getting the same port.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const LAST: u16 = 32_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Spread concurrent test binaries (and reruns) over the range.
    let start = (std::process::id() % u32::from(LAST - FIRST)) as u16;
    let _ = NEXT.compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..(LAST - FIRST) {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % (LAST - FIRST);
        let addr = SocketAddr::from(([127, 0, 0, 1], FIRST + offset));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port in 127.0.0.1:{FIRST}-{LAST}");
}

pub fn config(version: u64, traffic: &str, listen: SocketAddr, backends: &[SocketAddr]) -> Value {
    json!({
        "version": version, "traffic_type": traffic, "listen": listen.to_string(), "algorithm": "round_robin",
        "backends": backends.iter().map(|b| json!({"address": b.to_string(), "weight": 1})).collect::<Vec<_>>(),
        "health_check": {"protocol": "HTTP", "port": 0, "request-path": "/",
            "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}}
    })
}

/// A config with `extra` merged over it (e.g. `{"algorithm": "power_of_two"}`).
pub fn config_with(
    version: u64,
    traffic: &str,
    listen: SocketAddr,
    backends: &[SocketAddr],
    extra: Value,
) -> Value {
    let mut c = config(version, traffic, listen, backends);
    for (k, v) in extra.as_object().expect("extra is an object") {
        c[k] = v.clone();
    }
    c
}

/// Waits until `/status` satisfies `f`, or panics with the last status.
pub fn wait_status(node: &LbNode, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = node.status();
        if f(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! The embedded default compute driver: each LB node is an `lb-node` child
//! process. Nodes run in their own process group and outlive `lbd`: a pid file
//! per node lets a restarted `lbd` adopt them instead of interrupting traffic.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{ComputeDriver, ComputeError, NodeObservation, NodeSpec};
use crate::dataplane::privilege::RunAs;
use crate::model::NodeId;

pub struct ProcessCompute {
    binary: PathBuf,
    dir: PathBuf,
    /// Exit reasons of children this lbd started and reaped, by node id.
    children: Arc<Children>,
    /// Where a node rotates its log, and how many old files it keeps.
    log_max_bytes: u64,
    log_keep: u32,
    /// Under netns (nodes start as root there): the user nodes become
    /// once their admin socket is bound (`lb-node --run-as`).
    node_user: Option<String>,
}

impl ProcessCompute {
    /// `binary` is the `lb-node` executable; `dir` holds pid and log files.
    pub fn new(binary: PathBuf, dir: PathBuf) -> Result<Self, ComputeError> {
        fs::create_dir_all(&dir)?;
        Ok(ProcessCompute {
            binary,
            dir,
            children: Arc::default(),
            log_max_bytes: crate::dataplane::logfile::DEFAULT_MAX_BYTES,
            log_keep: crate::dataplane::logfile::DEFAULT_KEEP,
            node_user: None,
        })
    }

    /// Nodes started in a network namespace drop to `user`.
    pub fn with_node_user(mut self, user: Option<String>) -> Self {
        self.node_user = user;
        self
    }

    /// Node logs rotate at `max_bytes`, keeping `keep` old files.
    pub fn with_node_log(mut self, max_bytes: u64, keep: u32) -> Self {
        self.log_max_bytes = max_bytes;
        self.log_keep = keep;
        self
    }

    fn pid_file(&self, node_id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{node_id}.pid"))
    }

    fn log_file(&self, node_id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{node_id}.log"))
    }

    /// The pid of the live `lb-node` for this node, checked against
    /// /proc/<pid>/cmdline so a recycled pid is never mistaken for ours.
    fn live_pid(&self, node_id: NodeId) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_file(node_id))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_our_node(pid, node_id).then_some(pid)
    }
}

/// Makes the child join the network namespace pinned at `netns` before it
/// runs its program, so it binds its address on the project's bridge; with
/// `become_user`, it then (setns needs root) drops to that user, so the
/// program never runs as root. lb-node drops by itself (`--run-as`, after
/// binding its admin socket); managed backends are dropped here.
pub(crate) fn enter_netns_on_exec(
    command: &mut Command,
    netns: &Path,
    become_user: Option<RunAs>,
) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, OwnedFd};
    let fd: OwnedFd = fs::File::open(netns)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", netns.display())))?
        .into();
    let raw = fd.as_raw_fd();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setns, setgroups, setgid and setuid, which are async-signal-safe; `fd`
    // stays open (moved into the closure) until the child has used it.
    unsafe {
        command.pre_exec(move || {
            let _keep = &fd;
            if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(who) = become_user {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(who.gid) != 0
                    || libc::setuid(who.uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// The node processes this lbd started, by node id: `None` while running,
/// then how each one ended (for the event log).
#[derive(Default)]
struct Children {
    ended: Mutex<HashMap<NodeId, Option<String>>>,
    changed: Condvar,
}

impl Children {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Option<String>>> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn started(&self, node_id: NodeId) {
        self.lock().insert(node_id, None);
    }

    fn ended(&self, node_id: NodeId, reason: String) {
        self.lock().insert(node_id, Some(reason));
        self.changed.notify_all();
    }

    fn forget(&self, node_id: NodeId) {
        self.lock().remove(&node_id);
    }

    /// `None`: not started by this lbd; `Some(None)`: running.
    fn state(&self, node_id: NodeId) -> Option<Option<String>> {
        self.lock().get(&node_id).cloned()
    }

    /// How our child `node_id` ended, once its reaper has recorded it; `None`
    /// for a process this lbd did not start (adopted), which it cannot reap.
    fn wait_for_end(&self, node_id: NodeId) -> Option<String> {
        let (ended, _) = self
            .changed
            .wait_timeout_while(self.lock(), Duration::from_secs(1), |m| {
                matches!(m.get(&node_id), Some(None))
            })
            .unwrap_or_else(|p| p.into_inner());
        ended.get(&node_id).cloned().flatten()
    }
}

fn is_our_node(pid: u32, node_id: NodeId) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty cmdline: it is not running.
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let id = node_id.to_string();
    args.first().is_some_and(|a| a.ends_with(b"lb-node"))
        && args
            .windows(2)
            .any(|w| w[0] == b"--node-id" && w[1] == id.as_bytes())
}

/// Sends `signal` to `pid`.
#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions; pid was checked to
    // be one of our nodes just before.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl ComputeDriver for ProcessCompute {
    fn name(&self) -> &'static str {
        "process"
    }

    fn ensure_node(&self, spec: &NodeSpec) -> Result<NodeObservation, ComputeError> {
        if let Some(pid) = self.live_pid(spec.node_id) {
            return Ok(NodeObservation::Running { pid });
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(spec.node_id))?;
        let mut command = Command::new(&self.binary);
        if let Some(netns) = &spec.netns {
            enter_netns_on_exec(&mut command, netns, None)?;
            // Joining the namespace needs root; parsing traffic must not have it.
            if let Some(user) = &self.node_user {
                command.arg("--run-as").arg(user);
            }
        }
        let mut child = command
            .arg("--node-id")
            .arg(spec.node_id.to_string())
            .arg("--admin-listen")
            .arg(spec.admin_addr.to_string())
            // The node writes its own pid file, so a node started just
            // before lbd dies is still found (and adopted) by the next lbd.
            .arg("--pid-file")
            .arg(self.pid_file(spec.node_id))
            // The node rotates its own log (stdout/stderr below only catch
            // what it prints before its logger is up).
            .arg("--log-file")
            .arg(self.log_file(spec.node_id))
            .arg("--log-max-bytes")
            .arg(self.log_max_bytes.to_string())
            .arg("--log-keep")
            .arg(self.log_keep.to_string())
            .env("LB_NODE_SECRET", &spec.secret)
            // One-line errors in the node's log (its tail goes into status reasons).
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C to lbd's terminal must not take the data plane down.
            .process_group(0)
            .spawn()
            .map_err(|e| ComputeError::Start {
                node_id: spec.node_id,
                reason: format!("{}: {e}", self.binary.display()),
            })?;
        let pid = child.id();
        fs::write(self.pid_file(spec.node_id), format!("{pid}\n"))?;
        self.children.started(spec.node_id);
        // Reap the child when it exits, so it does not linger as a zombie, and
        // remember how it ended for the event log.
        let children = self.children.clone();
        let node_id = spec.node_id;
        std::thread::Builder::new()
            .name(format!("reap-node-{node_id}"))
            .spawn(move || {
                let reason = match child.wait() {
                    Ok(status) => match (status.code(), status.signal()) {
                        (Some(code), _) => format!("exited with code {code}"),
                        (_, Some(sig)) => format!("killed by signal {sig}"),
                        _ => "exited".to_string(),
                    },
                    Err(e) => format!("wait failed: {e}"),
                };
                children.ended(node_id, reason);
            })?;
        Ok(NodeObservation::Running { pid })
    }

    fn observe_node(&self, node_id: NodeId) -> NodeObservation {
        if let Some(Some(reason)) = self.children.state(node_id) {
            return NodeObservation::Exited { reason };
        }
        match self.live_pid(node_id) {
            Some(pid) => NodeObservation::Running { pid },
            None if self.pid_file(node_id).exists() => NodeObservation::Exited {
                // A child of ours that just exited is a zombie until its
                // reaper records how it ended: wait for that, not less.
                reason: self
                    .children
                    .wait_for_end(node_id)
                    .unwrap_or_else(|| "the process is gone".into()),
            },
            None => NodeObservation::Absent,
        }
    }

    fn destroy_node(&self, node_id: NodeId) -> Result<(), ComputeError> {
        if let Some(pid) = self.live_pid(node_id) {
            let stop = |sig| {
                send_signal(pid, sig).map_err(|e| ComputeError::Stop {
                    node_id,
                    reason: e.to_string(),
                })
            };
            stop(libc::SIGTERM)?;
            let deadline = Instant::now() + Duration::from_secs(3);
            while is_our_node(pid, node_id) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if is_our_node(pid, node_id) {
                stop(libc::SIGKILL)?;
            }
        }
        remove_if_exists(&self.pid_file(node_id))?;
        remove_if_exists(&self.log_file(node_id))?;
        self.children.forget(node_id);
        Ok(())
    }

    fn list_nodes(&self) -> Vec<NodeId> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<NodeId> = entries
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("node-")?
                    .strip_suffix(".pid")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    fn log_tail(&self, node_id: NodeId) -> String {
        tail(&self.log_file(node_id), 2048)
    }
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The last `max` bytes of a file, as text.
pub(super) fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_string()
}

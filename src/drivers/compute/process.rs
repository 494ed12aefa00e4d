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

use super::{ComputeDriver, ComputeError, ExitSink, NodeExit, NodeObservation, NodeSpec};
use crate::dataplane::privilege::RunAs;
use crate::model::NodeId;

pub struct ProcessCompute {
    binary: PathBuf,
    dir: PathBuf,
    /// The node processes this lbd watches (its children, and the nodes it
    /// adopted), how they ended, and where an end is reported.
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

    /// The pid of the live `lb-node` for this node: a child of ours until
    /// its reaper sees it end; else the pid file's, checked against
    /// /proc/<pid>/cmdline so a recycled pid is never mistaken for ours.
    fn live_pid(&self, node_id: NodeId) -> Option<u32> {
        // A child of ours runs until its reaper sees it end (and until then
        // its pid cannot be reused). Neither its cmdline nor its pid file
        // tells that reliably at first: right after the spawn the cmdline
        // was seen empty (the new program's arguments not in place yet),
        // and the node rewrites its pid file as it starts. Either made a just-started node look
        // gone for a second (its start failed and was retried on a later pass).
        if let Some(pid) = self.children.child_pid(node_id) {
            return Some(pid);
        }
        let pid: u32 = fs::read_to_string(self.pid_file(node_id))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_our_node(pid, node_id).then_some(pid)
    }

    /// Makes sure a thread watches the live node `pid`: a child of ours has
    /// its reaper already; a node this lbd adopted (started by an earlier
    /// lbd) gets a pidfd watcher, so its exit is reported at once too.
    /// Without pidfds (Linux before 5.3) it is not watched, and missed
    /// health checks find its end.
    fn watch(&self, node_id: NodeId, pid: u32) {
        if self.children.watching(node_id, pid) {
            return;
        }
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => return tracing::debug!("node {node_id}: pidfd_open({pid}): {e}"),
        };
        // The fd is for whatever had that pid when it was opened: check
        // again that it is our node, not a process that reused the pid.
        if !is_our_node(pid, node_id) || !self.children.adopt(node_id, pid) {
            return;
        }
        let children = self.children.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("watch-node-{node_id}"))
            .stack_size(WATCHER_STACK)
            .spawn(move || match wait_pidfd(&pidfd) {
                Ok(()) => children.ended(
                    node_id,
                    pid,
                    "is gone (exit status unknown: an earlier lbd started it)".into(),
                ),
                // Not known to be gone: nothing is reported.
                Err(e) => {
                    tracing::warn!("node {node_id}: cannot watch pid {pid}: {e}");
                    children.unwatch(node_id, pid);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("node {node_id}: no watcher thread: {e}");
            self.children.unwatch(node_id, pid);
        }
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

/// What this lbd knows of a node's process, by node id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Child {
    /// Running as `pid`, watched by a thread of ours: the reaper of a child
    /// we started (`child`), or a pidfd watcher of one we adopted;
    /// `stopping` once lbd itself stops it, so its end is no failover.
    Running {
        pid: u32,
        child: bool,
        stopping: bool,
    },
    /// It ended; how (for the event log).
    Ended(String),
}

/// The node processes this lbd watches, and where their ends are reported.
#[derive(Default)]
struct Children {
    nodes: Mutex<HashMap<NodeId, Child>>,
    changed: Condvar,
    /// The health checker's inbox ([`ComputeDriver::report_exits`]).
    sink: Mutex<Option<ExitSink>>,
}

impl Children {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Child>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A child we just started as `pid`; its reaper watches it.
    fn started(&self, node_id: NodeId, pid: u32) {
        self.lock().insert(
            node_id,
            Child::Running {
                pid,
                child: true,
                stopping: false,
            },
        );
    }

    /// The pid of `node_id`'s process if it is a child of ours that its
    /// reaper has not seen end.
    fn child_pid(&self, node_id: NodeId) -> Option<u32> {
        match self.lock().get(&node_id) {
            Some(Child::Running {
                pid, child: true, ..
            }) => Some(*pid),
            _ => None,
        }
    }

    /// Whether a thread watches `pid` as the process of `node_id`.
    fn watching(&self, node_id: NodeId, pid: u32) -> bool {
        matches!(self.lock().get(&node_id), Some(Child::Running { pid: p, .. }) if *p == pid)
    }

    /// Records that a thread is about to watch `pid`, unless one does
    /// already; whether the caller is to start that thread.
    fn adopt(&self, node_id: NodeId, pid: u32) -> bool {
        let mut nodes = self.lock();
        if matches!(nodes.get(&node_id), Some(Child::Running { pid: p, .. }) if *p == pid) {
            return false;
        }
        nodes.insert(
            node_id,
            Child::Running {
                pid,
                child: false,
                stopping: false,
            },
        );
        true
    }

    /// No thread watches `pid` after all.
    fn unwatch(&self, node_id: NodeId, pid: u32) {
        let mut nodes = self.lock();
        if matches!(nodes.get(&node_id), Some(Child::Running { pid: p, .. }) if *p == pid) {
            nodes.remove(&node_id);
        }
        drop(nodes);
        self.changed.notify_all();
    }

    /// lbd itself stops the node now: its end is not reported.
    fn stopping(&self, node_id: NodeId) {
        if let Some(Child::Running { stopping, .. }) = self.lock().get_mut(&node_id) {
            *stopping = true;
        }
    }

    /// The watcher of `pid` saw it end. Reported to the sink unless lbd
    /// stopped it, or it is no longer the node's process we know (forgotten
    /// by `destroy_node`, or the node was started again since).
    fn ended(&self, node_id: NodeId, pid: u32, reason: String) {
        let report = {
            let mut nodes = self.lock();
            match nodes.get(&node_id) {
                Some(Child::Running {
                    pid: p, stopping, ..
                }) if *p == pid => {
                    let report = !*stopping;
                    nodes.insert(node_id, Child::Ended(reason.clone()));
                    report
                }
                _ => false,
            }
        };
        self.changed.notify_all();
        if !report {
            return;
        }
        let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sink) = sink.as_ref() {
            // A closed sink: lbd is stopping; there is no one to tell.
            let _ = sink.send(NodeExit {
                node_id,
                pid,
                reason,
            });
        }
    }

    fn forget(&self, node_id: NodeId) {
        self.lock().remove(&node_id);
    }

    /// How the node's process ended, once its watcher recorded it.
    fn ended_reason(&self, node_id: NodeId) -> Option<String> {
        match self.lock().get(&node_id) {
            Some(Child::Ended(reason)) => Some(reason.clone()),
            _ => None,
        }
    }

    /// How `node_id`'s process ended, once its watcher has recorded it
    /// (waiting at most a second); `None` for a process no thread of ours
    /// watches.
    fn wait_for_end(&self, node_id: NodeId) -> Option<String> {
        let (nodes, _) = self
            .changed
            .wait_timeout_while(self.lock(), Duration::from_secs(1), |m| {
                matches!(m.get(&node_id), Some(Child::Running { .. }))
            })
            .unwrap_or_else(|p| p.into_inner());
        match nodes.get(&node_id) {
            Some(Child::Ended(reason)) => Some(reason.clone()),
            _ => None,
        }
    }
}

/// Watcher threads only wait (and format one line): a small stack each.
const WATCHER_STACK: usize = 128 * 1024;

/// How a child ended, as the event log says it.
fn exit_reason(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => "exited".to_string(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

/// A pidfd for `pid` (pidfd_open(2)): it refers to that one process even if
/// the pid is reused later, and turns readable when the process ends.
#[allow(unsafe_code)]
fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Blocks (on a watcher thread) until the process behind `pidfd` ends.
#[allow(unsafe_code)]
fn wait_pidfd(pidfd: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, owned by this frame, for the call's length.
        if unsafe { libc::poll(&mut poll, 1, -1) } > 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
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
            self.watch(spec.node_id, pid);
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
        self.children.started(spec.node_id, pid);
        // Reap the child when it exits, so it does not linger as a zombie;
        // remember how it ended for the event log, and report an end lbd
        // did not cause at once (the health checker fails the node over).
        let children = self.children.clone();
        let node_id = spec.node_id;
        std::thread::Builder::new()
            .name(format!("reap-node-{node_id}"))
            .stack_size(WATCHER_STACK)
            .spawn(move || {
                let reason = exit_reason(child.wait());
                children.ended(node_id, pid, reason);
            })?;
        Ok(NodeObservation::Running { pid })
    }

    fn observe_node(&self, node_id: NodeId) -> NodeObservation {
        if let Some(reason) = self.children.ended_reason(node_id) {
            return NodeObservation::Exited { reason };
        }
        match self.live_pid(node_id) {
            Some(pid) => {
                self.watch(node_id, pid);
                NodeObservation::Running { pid }
            }
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
        // Before any signal: this end is lbd's doing, not a failure.
        self.children.stopping(node_id);
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

    fn report_exits(&self, sink: ExitSink) {
        *self.children.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn watched() -> (Children, tokio::sync::mpsc::UnboundedReceiver<NodeExit>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let children = Children::default();
        *children.sink.lock().unwrap() = Some(tx);
        (children, rx)
    }

    #[test]
    fn an_end_lbd_did_not_cause_is_reported_once_with_how() {
        let (children, mut rx) = watched();
        children.started(NodeId(1), 100);
        children.ended(NodeId(1), 100, "killed by signal 9".into());
        assert_eq!(
            rx.try_recv().unwrap(),
            NodeExit {
                node_id: NodeId(1),
                pid: 100,
                reason: "killed by signal 9".into()
            }
        );
        assert_eq!(
            children.ended_reason(NodeId(1)).as_deref(),
            Some("killed by signal 9")
        );
        // The same end again (a second watcher) is not a second report.
        children.ended(NodeId(1), 100, "killed by signal 9".into());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn ends_lbd_caused_or_of_other_processes_are_not_reported() {
        let (children, mut rx) = watched();
        // Stopped by lbd (destroy_node marks it before the signal).
        children.started(NodeId(1), 100);
        children.stopping(NodeId(1));
        children.ended(NodeId(1), 100, "exited with code 0".into());
        // Forgotten by destroy_node before its reaper ran.
        children.started(NodeId(2), 200);
        children.stopping(NodeId(2));
        children.forget(NodeId(2));
        children.ended(NodeId(2), 200, "exited with code 0".into());
        // An earlier process of a node started again since.
        children.started(NodeId(3), 300);
        children.started(NodeId(3), 301);
        children.ended(NodeId(3), 300, "exited with code 1".into());
        assert!(rx.try_recv().is_err());
        assert!(
            children.watching(NodeId(3), 301),
            "the new one is still watched"
        );
        // A process nobody watches: adopted once, then not again.
        assert!(children.adopt(NodeId(4), 400));
        assert!(!children.adopt(NodeId(4), 400));
        children.unwatch(NodeId(4), 400);
        assert!(!children.watching(NodeId(4), 400));
    }

    #[test]
    fn an_adopted_process_is_watched_through_its_pidfd() {
        // A child of the test itself stands in for a node an earlier lbd
        // started: the pidfd turns readable when it ends.
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pidfd = pidfd_open(child.id()).unwrap();
        let waiter = std::thread::spawn(move || wait_pidfd(&pidfd));
        child.kill().unwrap();
        waiter.join().unwrap().unwrap();
        child.wait().unwrap();
    }
}

//! Process backends: each managed backend is a child process in its own
//! process group, so it outlives lbd (a kill -9 of lbd leaves it serving
//! and the next lbd adopts it). A pid is ours only while its start time
//! matches its pid file, or its environment carries our marker
//! (`process_identity.rs`), so a recycled pid is never adopted or signalled,
//! and a process started just before lbd died (its pid file not yet written)
//! is still found.

use std::collections::HashMap;
use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::process_identity::{backend_of, PidRecord, ID_VAR, OWNER_VAR};
use super::{BackendDriver, BackendError, BackendLaunch, BackendObservation};
use crate::dataplane::privilege::RunAs;
use crate::drivers::compute::process::enter_netns_on_exec;
use crate::model::managed::{BackendTemplate, Placeholders, ProcessTemplate};

/// How long a backend gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How much of its output a start failure quotes.
const TAIL_BYTES: u64 = 2048;

pub struct ProcessBackends {
    dir: PathBuf,
    /// Marks this lbd's backends (two lbds on one host never touch each other's).
    owner: String,
    /// Under netns: the unprivileged user backends run as.
    user: Option<String>,
    /// Each backend's child this lbd started, and how it ended.
    children: Arc<Mutex<HashMap<i64, ChildState>>>,
}

/// A child of ours: its pid, so a reaper of an earlier child of the same
/// backend writes nothing, and how it ended (`None` while it runs).
#[derive(Debug, Clone)]
struct ChildState {
    pid: u32,
    ended: Option<String>,
}

impl ProcessBackends {
    /// `dir` holds the pid and output files.
    pub fn new(dir: PathBuf, user: Option<String>) -> std::io::Result<Self> {
        fs::create_dir_all(dir.join("empty"))?;
        let owner = fs::canonicalize(&dir)?.display().to_string();
        Ok(ProcessBackends {
            dir,
            owner,
            user,
            children: Arc::default(),
        })
    }

    fn pid_file(&self, id: i64) -> PathBuf {
        self.dir.join(format!("backend-{id}.pid"))
    }

    fn log_file(&self, id: i64) -> PathBuf {
        self.dir.join(format!("backend-{id}.log"))
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<i64, ChildState>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How the backend's child ended, once its reaper saw it.
    fn ended(&self, id: i64) -> Option<String> {
        self.children().get(&id).and_then(|c| c.ended.clone())
    }

    /// The backend's pid if the pid file names a live process of ours.
    /// Without a pid file (lbd was killed between the spawn and writing
    /// it) the process is looked for by its marker, and the file written:
    /// otherwise a restarted lbd would take a live backend for a dead one,
    /// start a second, and never stop the first.
    fn live_pid(&self, id: i64) -> Option<u32> {
        match PidRecord::read(&self.pid_file(id)) {
            Some(record) => record.is_backend(id, &self.owner).then_some(record.pid),
            None => {
                let pid = self.marked().into_iter().find(|(b, _)| *b == id)?.1;
                let _ = PidRecord::of(pid).write(&self.pid_file(id));
                Some(pid)
            }
        }
    }

    /// Every live process whose environment carries our marker.
    fn marked(&self) -> Vec<(i64, u32)> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                Some((backend_of(pid, &self.owner)?, pid))
            })
            .collect()
    }

    /// Every backend a pid file names that is still running.
    fn recorded(&self) -> Vec<(i64, u32)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                let id: i64 = name
                    .to_str()?
                    .strip_prefix("backend-")?
                    .strip_suffix(".pid")?
                    .parse()
                    .ok()?;
                let record = PidRecord::read(&self.pid_file(id))?;
                record
                    .is_backend(id, &self.owner)
                    .then_some((id, record.pid))
            })
            .collect()
    }

    /// Whether `pid` is still backend `id`, for a stop's grace loop.
    fn still_ours(&self, id: i64, pid: u32) -> impl Fn() -> bool {
        let record = PidRecord::read(&self.pid_file(id))
            .filter(|r| r.pid == pid)
            .unwrap_or(PidRecord {
                pid,
                start_time: None,
            });
        let owner = self.owner.clone();
        move || record.is_backend(id, &owner)
    }

    fn command(
        &self,
        launch: &BackendLaunch,
        p: &ProcessTemplate,
    ) -> Result<Command, BackendError> {
        let address = launch.address.to_string();
        let fill = Placeholders {
            address: &address,
            port: launch.port,
            resource: launch.resource.as_deref().unwrap_or(""),
            instance: &launch.instance,
        };
        let args: Vec<String> = p.command.iter().map(|a| fill.fill(a)).collect();
        let mut command = Command::new(&args[0]);
        command.args(&args[1..]);
        // A clean environment: lbd's own (tokens, node secrets) is not the backend's.
        command.env_clear();
        command.env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        );
        for (k, v) in &p.env {
            command.env(k, fill.fill(v));
        }
        command.env(ID_VAR, launch.id.to_string());
        command.env(OWNER_VAR, &self.owner);
        let cwd = match &p.cwd {
            Some(c) => PathBuf::from(fill.fill(c)),
            // Never lbd's state dir: a file server there would serve the database.
            None if launch.netns.is_some() => PathBuf::from("/"),
            None => self.dir.join("empty"),
        };
        command.current_dir(cwd);
        if let Some(netns) = &launch.netns {
            let user = self
                .user
                .as_deref()
                .map(RunAs::resolve)
                .transpose()
                .map_err(|e| BackendError::Start {
                    id: launch.id,
                    reason: e.to_string(),
                })?;
            enter_netns_on_exec(&mut command, netns, user)?;
        }
        Ok(command)
    }
}

/// Sends `signal` to the process group `pid` leads (a backend's children go too).
fn signal_group(pid: u32, signal: libc::c_int) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions; the pid was just
    // verified to be one of our backends, which lead their own group.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// SIGTERM, then SIGKILL once the grace is over, while `pid` is still ours.
fn terminate(pid: u32, still_ours: impl Fn() -> bool) {
    signal_group(pid, libc::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while still_ours() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if still_ours() {
        signal_group(pid, libc::SIGKILL);
    }
}

/// The last `max` bytes of a file, as text (the node driver's helper is private to it).
pub(super) fn tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_string()
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl BackendDriver for ProcessBackends {
    fn start(&self, launch: &BackendLaunch) -> Result<u32, BackendError> {
        let p = match &launch.template {
            BackendTemplate::Process(p) => p,
            BackendTemplate::Vm(_) => {
                return Err(BackendError::Unsupported {
                    id: launch.id,
                    what: "vm",
                })
            }
        };
        let id = launch.id;
        if let Some(netns) = &launch.netns {
            // Its address is its own, on the project bridge: without it the
            // bind fails (EADDRNOTAVAIL) and nothing else would add it.
            crate::drivers::network::netns::add_bridge_address(
                netns,
                launch.address,
                launch.prefix_len,
            )
            .map_err(|e| BackendError::Start {
                id,
                reason: e.to_string(),
            })?;
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(self.log_file(id))?;
        let mut child = self
            .command(launch, p)?
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own group: it survives lbd's end, and stops with its children.
            .process_group(0)
            .spawn()
            .map_err(|e| BackendError::Start {
                id,
                reason: format!("{}: {e}", p.command[0]),
            })?;
        let pid = child.id();
        // Not reaped before the reaper below waits: the start time is the child's.
        PidRecord::of(pid).write(&self.pid_file(id))?;
        self.children().insert(id, ChildState { pid, ended: None });
        let children = self.children.clone();
        std::thread::Builder::new()
            .name(format!("reap-backend-{id}"))
            .spawn(move || {
                let reason = match child.wait() {
                    Ok(status) => match (status.code(), status.signal()) {
                        (Some(code), _) => format!("exited with code {code}"),
                        (_, Some(sig)) => format!("killed by signal {sig}"),
                        _ => "exited".to_string(),
                    },
                    Err(e) => format!("wait failed: {e}"),
                };
                // Only while the backend is still this child: after `stop`
                // (which forgets it) or a new start of the same id, the
                // end is no news.
                let mut children = children.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(ChildState { pid: p, ended }) = children.get_mut(&id) {
                    if *p == pid {
                        *ended = Some(reason);
                    }
                }
            })?;
        Ok(pid)
    }

    fn observe(&self, id: i64) -> BackendObservation {
        if let Some(reason) = self.ended(id) {
            return BackendObservation::Exited { reason };
        }
        match self.live_pid(id) {
            Some(pid) => BackendObservation::Running { pid },
            // Our child has not exec'd yet (its environ is still lbd's), or
            // just exited and its reaper records how in a moment.
            None if self.children().get(&id).is_some_and(|c| c.ended.is_none()) => {
                let deadline = Instant::now() + Duration::from_secs(1);
                loop {
                    if let Some(reason) = self.ended(id) {
                        return BackendObservation::Exited { reason };
                    }
                    if let Some(pid) = self.live_pid(id) {
                        return BackendObservation::Running { pid };
                    }
                    if Instant::now() >= deadline {
                        return BackendObservation::Exited {
                            reason: "the process is gone".into(),
                        };
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            None if self.pid_file(id).exists() => BackendObservation::Exited {
                reason: "the process is gone".into(),
            },
            None => BackendObservation::Absent,
        }
    }

    fn stop(&self, id: i64) -> Result<(), BackendError> {
        if let Some(pid) = self.live_pid(id) {
            terminate(pid, self.still_ours(id, pid));
        }
        remove_if_exists(&self.pid_file(id))?;
        remove_if_exists(&self.log_file(id))?;
        self.children().remove(&id);
        Ok(())
    }

    fn live(&self) -> Vec<(i64, u32)> {
        let mut found = self.recorded();
        found.extend(self.marked());
        found.sort_unstable();
        found.dedup();
        found
    }

    fn kill_orphan(&self, id: i64, pid: u32) {
        terminate(pid, self.still_ours(id, pid));
        let _ = remove_if_exists(&self.pid_file(id));
        let _ = remove_if_exists(&self.log_file(id));
    }

    fn output_tail(&self, id: i64) -> String {
        tail(&self.log_file(id), TAIL_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn launch(id: i64, command: &[&str]) -> BackendLaunch {
        BackendLaunch {
            id,
            instance: "web".into(),
            address: "127.0.0.1".parse().unwrap(),
            port: 9,
            prefix_len: 8,
            resource: None,
            template: BackendTemplate::Process(ProcessTemplate {
                command: command.iter().map(|s| s.to_string()).collect(),
                env: BTreeMap::from([("GREETING".into(), "on {address}:{port}".into())]),
                cwd: None,
            }),
            netns: None,
        }
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_backend_runs_is_found_by_its_marker_and_stops() {
        let dir = Dir(std::env::temp_dir().join(format!("lbaas-bk-{}", std::process::id())));
        let d = ProcessBackends::new(dir.0.clone(), None).unwrap();
        let pid = d
            .start(&launch(
                5,
                &["sh", "-c", "echo \"$GREETING\"; exec sleep 30"],
            ))
            .unwrap();
        // Until it has exec'd, the child's environ is still its parent's.
        wait_until("the marker", || d.live().contains(&(5, pid)));
        assert_eq!(d.observe(5), BackendObservation::Running { pid });
        wait_until("output", || d.output_tail(5).contains("on 127.0.0.1:9"));
        // Another owner's marker is not ours.
        assert_eq!(backend_of(pid, "/elsewhere"), None);
        d.stop(5).unwrap();
        wait_until("the process to go", || backend_of(pid, &d.owner).is_none());
        assert_eq!(d.observe(5), BackendObservation::Absent);
    }

    #[test]
    fn a_backend_that_drops_its_environment_is_still_ours() {
        let dir = Dir(std::env::temp_dir().join(format!("lbaas-bk-e-{}", std::process::id())));
        let d = ProcessBackends::new(dir.0.clone(), None).unwrap();
        // Like nginx writing its process title over its environment.
        let pid = d
            .start(&launch(7, &["sh", "-c", "exec env -i sleep 30"]))
            .unwrap();
        wait_until("the exec", || {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
        });
        assert_eq!(backend_of(pid, &d.owner), None, "the marker is gone");
        assert_eq!(d.observe(7), BackendObservation::Running { pid });
        assert!(d.live().contains(&(7, pid)));
        d.stop(7).unwrap();
        // Stopped, then reaped by its reaper thread.
        wait_until("the process to go", || is_gone(pid));
        assert_eq!(d.observe(7), BackendObservation::Absent);
    }

    fn is_gone(pid: u32) -> bool {
        !Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn an_exit_is_observed_with_its_reason() {
        let dir = Dir(std::env::temp_dir().join(format!("lbaas-bk-x-{}", std::process::id())));
        let d = ProcessBackends::new(dir.0.clone(), None).unwrap();
        d.start(&launch(6, &["sh", "-c", "echo boom >&2; exit 1"]))
            .unwrap();
        wait_until("the exit", || {
            matches!(d.observe(6), BackendObservation::Exited { .. })
        });
        assert_eq!(
            d.observe(6),
            BackendObservation::Exited {
                reason: "exited with code 1".into()
            }
        );
        assert!(d.output_tail(6).contains("boom"));
        d.stop(6).unwrap();
    }
}

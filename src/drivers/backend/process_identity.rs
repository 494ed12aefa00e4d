//! Whether a pid is still one of our process backends. The pid file records
//! the pid with its start time (`/proc/<pid>/stat` field 22, set at fork and
//! kept across exec): a recycled pid has another start time, and a backend
//! that rewrites its own environment (nginx's process title, `exec env -i`)
//! is still recognised. The environment marker (`LBAAS_BACKEND_ID`,
//! `LBAAS_BACKEND_OWNER`) stays for the one case the file cannot cover: lbd
//! killed between the spawn and writing the file.

use std::fs;
use std::path::Path;

pub(super) const ID_VAR: &str = "LBAAS_BACKEND_ID";
pub(super) const OWNER_VAR: &str = "LBAAS_BACKEND_OWNER";

/// What a pid file says: `"<pid> <start time>"`, or `"<pid>"` as written
/// by earlier versions (trusted only with the environment marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PidRecord {
    pub pid: u32,
    pub start_time: Option<u64>,
}

impl PidRecord {
    /// The record of a live `pid`, taken now.
    pub fn of(pid: u32) -> Self {
        PidRecord {
            pid,
            start_time: start_time(pid),
        }
    }

    pub fn read(path: &Path) -> Option<Self> {
        Self::parse(&fs::read_to_string(path).ok()?)
    }

    fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let start_time = words.next().and_then(|w| w.parse().ok());
        Some(PidRecord { pid, start_time })
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = match self.start_time {
            Some(t) => format!("{} {t}\n", self.pid),
            None => format!("{}\n", self.pid),
        };
        fs::write(path, text)
    }

    /// Whether the process it names is still backend `id` of `owner`, and running.
    pub fn is_backend(&self, id: i64, owner: &str) -> bool {
        match self.start_time {
            Some(t) => start_time(self.pid) == Some(t) && !is_zombie(self.pid),
            None => backend_of(self.pid, owner) == Some(id),
        }
    }
}

/// A process's start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and ')': count from its end.
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state); the start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The backend id a live process carries in its environment, if it is one of `owner`'s.
pub(super) fn backend_of(pid: u32, owner: &str) -> Option<i64> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut id = None;
    let mut ours = false;
    for var in environ.split(|b| *b == 0) {
        let var = std::str::from_utf8(var).ok()?;
        if let Some(v) = var.strip_prefix(ID_VAR).and_then(|v| v.strip_prefix('=')) {
            id = v.parse().ok();
        } else if let Some(v) = var
            .strip_prefix(OWNER_VAR)
            .and_then(|v| v.strip_prefix('='))
        {
            ours = v == owner;
        }
    }
    // A zombie's environ is empty: it is not running.
    id.filter(|_| ours && !is_zombie(pid))
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_old_files_parse() {
        assert_eq!(
            PidRecord::parse("12 345\n"),
            Some(PidRecord {
                pid: 12,
                start_time: Some(345)
            })
        );
        assert_eq!(
            PidRecord::parse("12\n"),
            Some(PidRecord {
                pid: 12,
                start_time: None
            })
        );
        assert_eq!(PidRecord::parse("x"), None);
    }

    #[test]
    fn our_own_process_matches_its_start_time_and_not_another() {
        let me = PidRecord::of(std::process::id());
        assert!(me.start_time.is_some());
        assert!(me.is_backend(1, "nobody"));
        let recycled = PidRecord {
            start_time: me.start_time.map(|t| t + 1),
            ..me
        };
        assert!(!recycled.is_backend(1, "nobody"));
        // Without a start time only the marker counts, and we carry none.
        let old = PidRecord {
            start_time: None,
            ..me
        };
        assert!(!old.is_backend(1, "nobody"));
    }
}

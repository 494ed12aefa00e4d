//! lb-node's own log file, rotated at a size so a node that logs a line per
//! failing request cannot fill the disk: `node-N.log` grows to `max_bytes`,
//! then becomes `node-N.log.1` (and `.1` becomes `.2`, up to `keep`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;
pub const DEFAULT_KEEP: u32 = 2;

pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    written: u64,
    /// The last byte written ended a line: only then may the file rotate.
    at_line_start: bool,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl RotatingLog {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<RotatingLog> {
        let file = open_append(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep,
            file,
            written,
            at_line_start: true,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.keep).rev() {
                match fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            fs::rename(&self.path, numbered(&self.path, 1))?;
            self.file = open_append(&self.path)?;
        }
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A line is never split across two files, however it is written.
        if self.at_line_start
            && self.written > 0
            && self.written + buf.len() as u64 > self.max_bytes
        {
            if let Err(e) = self.rotate() {
                // E.g. a node that dropped privileges cannot rename files in
                // lbd's directory: start the file over so it stays bounded and
                // the node keeps logging.
                self.file.set_len(0)?;
                self.written = 0;
                let _ = writeln!(self.file, "log rotation failed ({e}); file truncated");
            }
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if n > 0 {
            self.at_line_start = buf[n - 1] == b'\n';
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_size_and_keeps_only_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("lbaas-logfile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node-1.log");
        let mut log = RotatingLog::open(&path, 100, 2).unwrap();
        for i in 0..50 {
            writeln!(log, "line {i:03} of a failing backend").unwrap();
        }
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        // A file may pass the size by the line that crossed it, no more.
        let line = "line 000 of a failing backend\n".len() as u64;
        assert!(size(&path) <= 100 + line);
        assert!(size(&numbered(&path, 1)) <= 100 + line && size(&numbered(&path, 1)) > 0);
        assert!(size(&numbered(&path, 2)) > 0);
        assert!(!numbered(&path, 3).exists(), "only two old files are kept");
        let newest = fs::read_to_string(&path).unwrap();
        assert!(
            newest.ends_with("line 049 of a failing backend\n"),
            "{newest}"
        );
        assert!(
            newest.starts_with("line "),
            "lines are never split: {newest}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_rotation_truncates_and_keeps_logging() {
        let dir = std::env::temp_dir().join(format!("lbaas-logfile-fail-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("node-1.log");
        // `.1` is a non-empty directory, so renaming the log onto it fails
        // (as it does, for lack of permission, for a node that dropped root).
        fs::create_dir_all(numbered(&path, 1).join("x")).unwrap();
        let mut log = RotatingLog::open(&path, 100, 1).unwrap();
        for i in 0..50 {
            writeln!(log, "line {i:03} of a failing backend").unwrap();
        }
        let newest = fs::read_to_string(&path).unwrap();
        assert!(newest.len() <= 200, "bounded: {} bytes", newest.len());
        assert!(newest.contains("log rotation failed"), "{newest}");
        assert!(
            newest.ends_with("line 049 of a failing backend\n"),
            "{newest}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

//! A real `redis-server` for the tests: on a free loopback port, with no
//! persistence (`--save '' --appendonly no`, so it writes no file), ready
//! once it answers PING, and stopped by its PID when dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl RedisServer {
    /// Whether `redis-server` can be run here (`.ci/run` installs it).
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            child: None,
            addr: super::node::free_addr(),
        };
        server.spawn();
        server
    }

    /// The URL lb-node takes (`NodeConfig.redis.url`).
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", &self.addr.ip().to_string()])
            .args(["--port", &self.addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no"])
            // No dump file on shutdown either, and nothing in the cwd.
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .args([
                "--dbfilename",
                &format!("lbaas-test-{}.rdb", self.addr.port()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server on {} exited: {status}", self.addr);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} never answered PING",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One PING on a fresh connection.
    pub fn answers_ping(&self) -> bool {
        self.command("PING").is_some_and(|r| r == "+PONG")
    }

    /// Sends one inline command; its first reply line.
    pub fn command(&self, cmd: &str) -> Option<String> {
        let mut conn = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        conn.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(conn).read_line(&mut line).ok()?;
        Some(line.trim_end().to_string())
    }

    /// Kills the server (SIGKILL, by PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
